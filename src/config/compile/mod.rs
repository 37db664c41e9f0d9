//! Raw schema -> [`RuntimeConfig`], one section at a time. Each section's compiler
//! destructures its schema type with no `..`, so a field added to the schema does not build
//! until a compiler handles it, and reports every problem under its field path.

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
            raw,
            source,
        })
    }
}
