//! Raw schema -> [`RuntimeConfig`], one section at a time. Each section's compiler
//! destructures its schema type with no `..`, so a field added to the schema does not build
//! until a compiler handles it, and reports every problem under its field path.

mod admin;
mod assertion;
mod authz;
mod check;
mod grant_loader;
mod headers;
mod keycloak;
mod limits;
mod listen;
mod logging;
mod redis;
mod revocation;
mod tenants;
mod upstream;

use std::path::PathBuf;
use std::sync::Arc;

use super::raw::RawConfig;
use super::report::load_warnings;
use super::runtime::RuntimeConfig;
use crate::config_error::ConfigError;
use crate::telemetry::LogSettings;

impl RuntimeConfig {
    /// Validates every field (collecting all problems, section by section) and compiles the
    /// lookup structures. An `Arc` schema is kept as is: the reload base shares it, no copy.
    pub fn compile(
        raw: impl Into<Arc<RawConfig>>,
        source: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let raw: Arc<RawConfig> = raw.into();
        let mut e = ConfigError::default();
        let RawConfig {
            listen,
            server,
            upstream,
            keycloak,
            tenants,
            host_patterns,
            roles,
            scopes,
            routes,
            default_policy,
            paths,
            authz,
            redis,
            headers,
            limits,
            downstream,
            logging,
            metrics,
            assertion,
            revocation,
            admin,
        } = &*raw;

        let listeners = listen::compile(listen, server, &mut e);
        let upstreams = upstream::compile(upstream, &mut e);
        let kc = keycloak::compile(keycloak, headers, &mut e);
        let header_policy =
            headers::compile(headers, &assertion.header, kc.strip_authorization, &mut e);
        let request_limits = limits::compile_limits(limits, kc.verify.max_token_bytes, &mut e);
        let downstream = limits::compile_downstream(downstream, limits.max_header_bytes, &mut e);
        let assertion = assertion::compile(assertion, &mut e);
        let redis_settings = redis::compile(redis.as_ref(), &mut e);
        let tenant_set = tenants::compile(
            tenants,
            host_patterns,
            &upstreams,
            kc.jwks.max_dynamic_realms,
            &mut e,
        );
        let rules = authz::compile(
            authz::Sections {
                scopes,
                roles,
                routes,
                tenants,
                default_policy: *default_policy,
                paths,
                authz,
            },
            &mut e,
        );
        let revocation = revocation::compile(
            revocation,
            &keycloak.audiences,
            keycloak.leeway,
            redis.as_ref(),
            &mut e,
        );
        let taken: Vec<_> = listeners
            .iter()
            .flat_map(|l| [l.proxy_addr, l.admin_addr])
            .collect();
        let admin = admin::compile(admin, &taken, &mut e);
        let logging = LogSettings::from(logging);
        let tenant_label_cap = logging::tenant_label_cap(metrics);
        let warnings = load_warnings(&raw);

        let (Some(listeners), Some(default_upstream), Some(headers), Some(table), Some(rules)) = (
            listeners,
            upstreams.default,
            header_policy,
            tenant_set.table,
            rules,
        ) else {
            return Err(e);
        };
        if !e.is_empty() {
            return Err(e);
        }
        Ok(Self {
            proxy_addr: listeners.proxy_addr,
            admin_addr: listeners.admin_addr,
            proxy_tls: listeners.proxy_tls,
            server: listeners.server,
            default_upstream,
            timeouts: upstreams.timeouts,
            headers,
            tenants: table,
            tenant_upstreams: tenant_set.tenant_upstreams,
            pattern_upstreams: tenant_set.pattern_upstreams,
            catalog: rules.catalog,
            roles: rules.roles,
            tenant_roles: rules.tenant_roles,
            routes: rules.routes,
            tenant_routes: rules.tenant_routes,
            tenant_enforce: tenant_set.enforce,
            default_policy: rules.default_policy,
            expose_required: rules.expose_required,
            paths: rules.paths,
            warnings,
            limits: request_limits,
            downstream,
            jwks: kc.jwks,
            verify: kc.verify,
            require_keys_for_ready: kc.require_keys_for_ready,
            grants: redis_settings.grants,
            tenant_sync: redis_settings.tenant_sync,
            static_realms: tenant_set.static_realms,
            assertion,
            revocation,
            logging,
            tenant_label_cap,
            admin,
            raw,
            source,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use crate::config::{self, ServerSettings, TenantSyncSettings};
    use crate::telemetry::LogFormat;

    const BASE: &str = r#"
listen: {proxy: "127.0.0.1:1", admin: "127.0.0.1:2"}
upstream: {default: "127.0.0.1:3"}
keycloak: {base_url: "http://127.0.0.1:4", audiences: [api]}
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.example.test]}
"#;

    /// The settings the rest of the gateway used to read from the schema come through
    /// compiled, with the schema's defaults when left out.
    #[test]
    fn settings_read_outside_config_are_compiled() {
        let d = config::from_str(BASE, &config::ProcessEnv).unwrap();
        assert_eq!(d.server.threads, 2);
        assert!(d.server.watch_config);
        assert_eq!(d.proxy_tls, None);
        assert!(!d.headers.strip_authorization);
        assert!(d.expose_required);
        assert!(d.require_keys_for_ready);
        assert!(d.logging.access_log);
        assert_eq!(d.logging.format, LogFormat::Text);
        assert_eq!(d.tenant_label_cap, 100);
        assert_eq!(d.verify.cookie_name, None);
        assert_eq!(d.tenant_sync, None);

        let yaml = BASE.replace(
            "audiences: [api]}",
            "audiences: [api], token_cookie: at, max_token_bytes: 4096, strip_authorization: true, require_keys_for_ready: false}",
        ) + r#"
server: {threads: 3, grace_period: 1s, graceful_shutdown_timeout: 2s, upgrade_sock: /u.sock, pid_file: /p.pid, watch_config: false}
authz: {expose_required: false}
logging: {format: json, level: debug, access_log: false}
metrics: {tenant_label_cap: 7}
redis: {url: "redis://127.0.0.1:6379", channel: ch, tenants_key: rt}
"#;
        let c = config::from_str(&yaml, &config::ProcessEnv).unwrap();
        assert_eq!(
            c.server,
            ServerSettings {
                threads: 3,
                grace_period: Duration::from_secs(1),
                graceful_shutdown_timeout: Duration::from_secs(2),
                upgrade_sock: "/u.sock".into(),
                pid_file: "/p.pid".into(),
                watch_config: false,
            }
        );
        assert!(c.headers.strip_authorization);
        assert!(!c.expose_required);
        assert!(!c.require_keys_for_ready);
        assert_eq!(c.verify.cookie_name.as_deref(), Some("at"));
        assert_eq!(c.verify.max_token_bytes, 4096);
        assert!(!c.logging.access_log);
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(c.logging.level, "debug");
        assert_eq!(c.tenant_label_cap, 7);
        assert_eq!(
            c.tenant_sync,
            Some(TenantSyncSettings {
                url: "redis://127.0.0.1:6379".into(),
                key: "rt".into(),
                channel: "ch".into(),
            })
        );
    }
}
