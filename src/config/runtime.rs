//! The validated, compiled configuration the request path reads.

use std::borrow::Cow;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::errors::Errors;
pub use super::keycloak::mask_url;
use super::keycloak::{jwt_settings, validate_keycloak};
use super::raw::{self, RawConfig};
use super::ConfigError;
use crate::assertion::{AssertionKey, AssertionSettings};
use crate::authz::path::{DoubleEncoding, PathRules};
use crate::authz::{
    Catalog, DefaultPolicy, MatchMode, RoleMap, RoleSource, RouteRule, RouteSpec, RouteTable,
    Scopes, SlashPolicy,
};
use crate::downstream::DownstreamSettings;
use crate::grants::{GrantSettings, InvalidationPreference};
use crate::http::headers::{HeaderNames, HeaderPolicy};
use crate::jwks::JwksSettings;
use crate::limits::RequestLimits;
use crate::revocation::RevocationSettings;
use crate::tenant::{HostPatternDef, Tenant, TenantDef, TenantSource, TenantStatus, TenantTable};
use crate::verify::VerifySettings;

/// Where and how to reach one upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTarget {
    /// As written in the config (`host:port`), for logs.
    pub name: String,
    /// Resolved once at load: the request path never does DNS.
    pub addr: SocketAddr,
    pub tls: bool,
    pub sni: String,
}

#[derive(Debug, Clone)]
pub struct UpstreamTimeouts {
    pub connect: Duration,
    pub read: Duration,
    pub write: Duration,
    pub idle: Duration,
}

/// The validated configuration. Built once per load/reload and shared through `ArcSwap`.
pub struct RuntimeConfig {
    /// The schema as loaded (summaries, diffs on reload). Shared with the reload base in
    /// `state::Shared` rather than copied: with 10 000 tenants it is megabytes.
    pub raw: Arc<RawConfig>,
    pub source: Option<PathBuf>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub default_upstream: UpstreamTarget,
    pub timeouts: UpstreamTimeouts,
    pub headers: HeaderPolicy,
    pub tenants: TenantTable,
    /// Upstream of each static tenant (by config index) and host pattern (by index); `None`
    /// means the default upstream.
    /// Boxed: most tenants have none, and 10 000 inline `None`s would cost ~1 MiB each list.
    tenant_upstreams: Vec<Option<Box<UpstreamTarget>>>,
    pattern_upstreams: Vec<Option<Box<UpstreamTarget>>>,
    /// Interned resources/actions/scopes; permission ids only mean something with it.
    pub catalog: Catalog,
    pub roles: RoleMap,
    /// Per static tenant (by config index): its overlaid role map, if it has overlays.
    tenant_roles: Vec<Option<Box<RoleMap>>>,
    pub routes: RouteTable,
    /// Per static tenant: its own rules, checked before the global ones.
    tenant_routes: Vec<Option<Box<RouteTable>>>,
    /// Per static tenant: `false` = shadow mode.
    tenant_enforce: Vec<bool>,
    pub default_policy: DefaultPolicy,
    /// Every canonicalisation rule (`paths.slashes`, `paths.double_encoding`), passed whole
    /// to `canonicalize`.
    pub paths: PathRules,
    /// Settings that are valid but weaken a default protection, for `realmgate check` and
    /// the log (see [`RuntimeConfig::log_warnings`]).
    pub warnings: Vec<String>,
    /// Size bounds on the request head and body.
    pub limits: RequestLimits,
    /// Client-connection bounds (deadlines, caps, HTTP/2 limits).
    pub downstream: DownstreamSettings,
    pub jwks: JwksSettings,
    pub verify: VerifySettings,
    pub grants: Option<GrantSettings>,
    /// Realms of statically configured tenants (preloaded; readiness waits for them).
    pub static_realms: Vec<String>,
    /// Signed identity assertion; `None` when disabled (the request path's only check).
    pub assertion: Option<AssertionSettings>,
    /// Back-channel logout, not-before and their replication.
    pub revocation: RevocationSettings,
}

impl RuntimeConfig {
    /// Where a tenant's requests go.
    pub fn upstream_for(&self, tenant: &Tenant) -> &UpstreamTarget {
        let specific = match tenant.source {
            TenantSource::Static { index } => self.tenant_upstreams.get(index),
            TenantSource::Pattern { index } => self.pattern_upstreams.get(index),
        };
        specific
            .and_then(|u| u.as_deref())
            .unwrap_or(&self.default_upstream)
    }

    fn static_index(tenant: &Tenant) -> Option<usize> {
        match tenant.source {
            TenantSource::Static { index } => Some(index),
            TenantSource::Pattern { .. } => None,
        }
    }

    /// The tenant's own route table, consulted before the global one.
    pub fn tenant_routes(&self, tenant: &Tenant) -> Option<&RouteTable> {
        Self::static_index(tenant).and_then(|i| self.tenant_routes.get(i)?.as_deref())
    }

    /// The role map that applies to a tenant (global, or its overlay).
    pub fn roles_for(&self, tenant: &Tenant) -> &RoleMap {
        Self::static_index(tenant)
            .and_then(|i| self.tenant_roles.get(i)?.as_deref())
            .unwrap_or(&self.roles)
    }

    /// Whether decisions are enforced for this tenant and rule (shadow mode otherwise).
    pub fn enforce(&self, tenant: &Tenant, rule: Option<&RouteRule>) -> bool {
        if let Some(e) = rule.and_then(RouteRule::enforce) {
            return e;
        }
        Self::static_index(tenant)
            .and_then(|i| self.tenant_enforce.get(i).copied())
            .unwrap_or(true)
    }

    /// One paragraph for `realmgate check` and the startup log.
    pub fn summary(&self) -> String {
        let raw = &self.raw;
        let mut realms: Vec<&str> = raw.tenants.iter().map(|t| t.realm.as_str()).collect();
        realms.sort_unstable();
        realms.dedup();
        let hosts: usize = raw.tenants.iter().map(|t| t.hosts.len()).sum();
        let tenant_routes: usize = raw.tenants.iter().map(|t| t.routes.len()).sum();
        let mut out = format!(
            "configuration OK{}\n  listen: proxy {} admin {}\n  tenants: {} ({} suspended/disabled/pending)\n  realms: {} static{}\n  hosts: {} exact, {} patterns\n  routes: {} global, {} tenant-specific; default policy {:?}\n  roles: {}; scopes: {}\n  upstream: {}\n  redis: {}",
            self.source.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default(),
            self.proxy_addr,
            self.admin_addr,
            raw.tenants.len(),
            raw.tenants.iter().filter(|t| t.status != raw::StatusSection::Active).count(),
            realms.len(),
            if raw.host_patterns.is_empty() { String::new() } else { ", plus dynamic realms from host patterns".to_string() },
            hosts,
            raw.host_patterns.len(),
            raw.routes.len(),
            tenant_routes,
            raw.default_policy,
            raw.roles.len(),
            raw.scopes.join(" < "),
            self.default_upstream.name,
            raw.redis.as_ref().map(|r| mask_url(&r.url)).unwrap_or(Cow::Borrowed("not configured")),
        );
        for t in &raw.tenants {
            out.push_str(&format!(
                "\n    - {} (realm {}, {:?}): {}",
                t.id,
                t.realm,
                t.status,
                t.hosts.join(", ")
            ));
        }
        for p in &raw.host_patterns {
            out.push_str(&format!(
                "\n    - pattern {} -> realm {}",
                p.pattern.as_deref().or(p.regex.as_deref()).unwrap_or("?"),
                p.realm
            ));
        }
        out
    }
}

pub(crate) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("\"{s}\" is not an ip:port address"))
}

/// Resolves `host:port` once at load time.
pub(crate) fn resolve_upstream(
    s: &str,
    tls: bool,
    sni: Option<&str>,
) -> Result<UpstreamTarget, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{s}\" must be host:port"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!(
            "\"{s}\" must be host:port with a port in 1..=65535"
        ));
    }
    let addr = s
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve \"{s}\": {e}"))?
        .next()
        .ok_or_else(|| format!("\"{s}\" resolves to no address"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(UpstreamTarget {
        name: s.to_string(),
        addr,
        tls,
        sni: sni.unwrap_or(host).to_string(),
    })
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("\"{s}\" is not an IP address or CIDR range"))
}

impl RuntimeConfig {
    /// Validates every field (collecting all problems) and compiles the lookup structures. An
    /// `Arc` schema is kept as is: the reload base shares it, no copy.
    pub fn compile(
        raw: impl Into<Arc<RawConfig>>,
        source: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let raw: Arc<RawConfig> = raw.into();
        let mut e = Errors::default();

        let proxy_addr = parse_socket_addr(&raw.listen.proxy)
            .map_err(|m| e.push("listen.proxy", m))
            .ok();
        let admin_addr = parse_socket_addr(&raw.listen.admin)
            .map_err(|m| e.push("listen.admin", m))
            .ok();
        if proxy_addr.is_some() && proxy_addr == admin_addr {
            e.push("listen.admin", "must differ from listen.proxy");
        }
        if let Some(t) = &raw.listen.tls {
            for (field, path) in [("listen.tls.cert", &t.cert), ("listen.tls.key", &t.key)] {
                if !std::path::Path::new(path).is_file() {
                    e.push(field, format!("\"{path}\" is not a readable file"));
                }
            }
        }
        if raw.server.threads == 0 {
            e.push("server.threads", "must be at least 1");
        }

        let up = &raw.upstream;
        let default_upstream = resolve_upstream(&up.default, up.tls, up.sni.as_deref())
            .map_err(|m| e.push("upstream.default", m))
            .ok();
        for (name, v) in [
            ("upstream.connect_timeout", up.connect_timeout),
            ("upstream.read_timeout", up.read_timeout),
            ("upstream.write_timeout", up.write_timeout),
        ] {
            if v.is_zero() {
                e.push(name, "must be greater than zero");
            }
        }

        validate_keycloak(&raw.keycloak, &mut e);
        validate_durations(&raw, &mut e);
        validate_header_names(&raw, &mut e);

        let h = &raw.headers;
        let trusted: Vec<IpNet> = h
            .trusted_proxies
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                parse_cidr(s)
                    .map_err(|m| e.push(format!("headers.trusted_proxies[{i}]"), m))
                    .ok()
            })
            .collect();
        for (i, p) in h.strip_prefixes.iter().enumerate() {
            if p.len() < 3 {
                e.push(
                    format!("headers.strip_prefixes[{i}]"),
                    format!("\"{p}\" is too short to be a safe prefix (it would strip unrelated headers)"),
                );
            }
        }
        if h.max_value_len < 16 {
            e.push("headers.max_value_len", "must be at least 16");
        }
        check_limits(&raw.limits, raw.keycloak.max_token_bytes, &mut e);
        check_downstream(&raw.downstream, &mut e);
        if crate::http::headers::parse_header_name(&h.shadow).is_err() {
            e.push(
                "headers.shadow",
                format!("\"{}\" is not a valid header name", h.shadow),
            );
        }
        for (i, name) in h.strip_overrides.iter().enumerate() {
            if let Err(m) = crate::http::headers::parse_header_name(name) {
                e.push(format!("headers.strip_overrides[{i}]"), m);
            }
        }
        let assertion = compile_assertion(&raw.assertion, &mut e);
        // The assertion header is always realmgate's: a configured name is stripped like the
        // default one, so a client can never inject an assertion.
        let strip: Vec<String> = h
            .strip
            .iter()
            .chain(&h.strip_overrides)
            .chain(std::iter::once(&raw.assertion.header))
            .cloned()
            .collect();
        let headers = HeaderPolicy::new(HeaderNames {
            tenant: &h.tenant,
            realm: &h.realm,
            user_id: &h.user_id,
            user_name: &h.user_name,
            user_email: &h.user_email,
            roles: &h.roles,
            scope: &h.scope,
            request_id: &h.request_id,
            shadow: &h.shadow,
            strip: &strip,
            strip_prefixes: &h.strip_prefixes,
            claims: h
                .claims
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            max_value_len: h.max_value_len,
            trusted_proxies: trusted,
        })
        .map_err(|m| e.push("headers", m))
        .ok();

        if let Some(r) = &raw.redis {
            if !(r.url.starts_with("redis://")
                || r.url.starts_with("rediss://")
                || r.url.starts_with("unix://"))
            {
                e.push(
                    "redis.url",
                    format!(
                        "\"{}\" must start with redis://, rediss:// or unix://",
                        mask_url(&r.url)
                    ),
                );
            }
            if r.command_timeout.is_zero() {
                e.push("redis.command_timeout", "must be greater than zero");
            }
            if r.channel.is_empty() {
                e.push("redis.channel", "must not be empty");
            }
        }
        let loader = raw
            .redis
            .as_ref()
            .and_then(|r| r.loader.as_ref())
            .and_then(|l| {
                super::loader::loader_settings(l)
                    .map_err(|errs| {
                        for (f, m) in errs {
                            e.push(f, m);
                        }
                    })
                    .ok()
            });

        let mut tenant_upstreams = Vec::with_capacity(raw.tenants.len());
        let mut defs = Vec::with_capacity(raw.tenants.len());
        for (i, t) in raw.tenants.iter().enumerate() {
            tenant_upstreams.push(t.upstream.as_deref().and_then(|u| {
                resolve_upstream(u, up.tls, up.sni.as_deref())
                    .map_err(|m| e.push(format!("tenants[{i}].upstream"), m))
                    .ok()
                    .map(Box::new)
            }));
            defs.push(TenantDef {
                id: t.id.clone(),
                realm: t.realm.clone(),
                hosts: t.hosts.clone(),
                status: match t.status {
                    raw::StatusSection::Active => TenantStatus::Active,
                    raw::StatusSection::Suspended => TenantStatus::Suspended,
                    raw::StatusSection::Pending => TenantStatus::Pending,
                    raw::StatusSection::Disabled => TenantStatus::Disabled,
                },
                upstream: t.upstream.clone(),
            });
        }
        let mut pattern_upstreams = Vec::with_capacity(raw.host_patterns.len());
        let mut patterns = Vec::with_capacity(raw.host_patterns.len());
        for (i, p) in raw.host_patterns.iter().enumerate() {
            pattern_upstreams.push(p.upstream.as_deref().and_then(|u| {
                resolve_upstream(u, up.tls, up.sni.as_deref())
                    .map_err(|m| e.push(format!("host_patterns[{i}].upstream"), m))
                    .ok()
                    .map(Box::new)
            }));
            match (&p.pattern, &p.regex) {
                (Some(pattern), None) => patterns.push(HostPatternDef::Wildcard {
                    pattern: pattern.clone(),
                    realm: p.realm.clone(),
                    upstream: p.upstream.clone(),
                }),
                (None, Some(regex)) => patterns.push(HostPatternDef::Regex {
                    regex: regex.clone(),
                    realm: p.realm.clone(),
                    upstream: p.upstream.clone(),
                }),
                _ => e.push(
                    format!("host_patterns[{i}]"),
                    "set exactly one of pattern or regex",
                ),
            }
        }
        let tenants = if patterns.len() == raw.host_patterns.len() {
            TenantTable::build(defs, patterns, raw.keycloak.dynamic_realms.max.max(1000))
                .map_err(|errs| {
                    for b in errs {
                        e.0.push(b.to_string());
                    }
                })
                .ok()
        } else {
            None
        };

        let authz = compile_authz(&raw, &mut e);
        let (jwks, verify) = jwt_settings(&raw, &mut e);
        let grants = raw.redis.as_ref().map(|r| GrantSettings {
            url: r.url.clone(),
            command_timeout: r.command_timeout,
            cache_ttl: r.cache_ttl,
            cache_capacity: r.cache_size,
            degraded_ttl: r.degraded_ttl,
            channel: r.channel.clone(),
            key_prefix: r.key_prefix.clone(),
            invalidation: match r.invalidation {
                raw::InvalidationSection::Auto => InvalidationPreference::Auto,
                raw::InvalidationSection::Tracking => InvalidationPreference::Tracking,
                raw::InvalidationSection::Keyspace => InvalidationPreference::Keyspace,
                raw::InvalidationSection::Pubsub => InvalidationPreference::Pubsub,
            },
            loader,
            ..GrantSettings::default()
        });
        let revocation = super::revocation::compile(&raw, &mut e);
        let warnings = load_warnings(&raw);
        let mut static_realms: Vec<String> = raw.tenants.iter().map(|t| t.realm.clone()).collect();
        static_realms.sort();
        static_realms.dedup();

        match (
            proxy_addr,
            admin_addr,
            default_upstream,
            headers,
            tenants,
            authz,
        ) {
            (
                Some(proxy_addr),
                Some(admin_addr),
                Some(default_upstream),
                Some(headers),
                Some(tenants),
                Some(authz),
            ) if e.0.is_empty() => {
                let Authz {
                    catalog,
                    roles,
                    tenant_roles,
                    routes,
                    tenant_routes,
                } = authz;
                let timeouts = UpstreamTimeouts {
                    connect: up.connect_timeout,
                    read: up.read_timeout,
                    write: up.write_timeout,
                    idle: up.idle_timeout,
                };
                Ok(Self {
                    proxy_addr,
                    admin_addr,
                    default_upstream,
                    timeouts,
                    headers,
                    tenants,
                    tenant_upstreams,
                    pattern_upstreams,
                    catalog,
                    roles,
                    tenant_roles,
                    routes,
                    tenant_routes,
                    tenant_enforce: raw.tenants.iter().map(|t| t.enforce).collect(),
                    default_policy: match raw.default_policy {
                        raw::DefaultPolicySection::Deny => DefaultPolicy::Deny,
                        raw::DefaultPolicySection::Authenticated => DefaultPolicy::Authenticated,
                        raw::DefaultPolicySection::Allow => DefaultPolicy::Allow,
                    },
                    paths: PathRules {
                        slashes: match raw.paths.slashes {
                            raw::SlashesSection::Merge => SlashPolicy::Merge,
                            raw::SlashesSection::Reject => SlashPolicy::Reject,
                        },
                        double_encoding: match raw.paths.double_encoding {
                            raw::DoubleEncodingSection::Reject => DoubleEncoding::Reject,
                            raw::DoubleEncodingSection::Allow => DoubleEncoding::Allow,
                        },
                    },
                    warnings,
                    limits: RequestLimits {
                        max_uri_bytes: raw.limits.max_uri_bytes,
                        max_header_line_bytes: raw.limits.max_header_line_bytes,
                        max_header_bytes: raw.limits.max_header_bytes,
                        max_body_bytes: raw.limits.max_body_bytes,
                    },
                    downstream: DownstreamSettings {
                        idle_timeout: raw.downstream.idle_timeout,
                        head_timeout: raw.downstream.head_timeout,
                        write_timeout: raw.downstream.write_timeout,
                        max_connections: raw.downstream.max_connections,
                        max_requests_per_connection: raw.downstream.max_requests_per_connection,
                        h2_max_concurrent_streams: raw.downstream.h2_max_concurrent_streams,
                        h2_max_header_list_bytes: u32::try_from(raw.limits.max_header_bytes)
                            .unwrap_or(u32::MAX),
                    },
                    jwks,
                    verify,
                    grants,
                    static_realms,
                    assertion,
                    revocation,
                    raw,
                    source,
                })
            }
            _ => Err(ConfigError { errors: e.0 }),
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// Every duration in the schema with its upper bound. A bound keeps `Instant + d` and timer
/// arithmetic far from overflow (a panic on the request path or in a background task) and
/// catches typos such as `60d` for `60s`; the bounds are generous for each field's purpose.
fn duration_bounds(raw: &RawConfig) -> Vec<(&'static str, Duration, Duration)> {
    let (s, u, k) = (&raw.server, &raw.upstream, &raw.keycloak);
    let mut v = vec![
        ("server.grace_period", s.grace_period, HOUR),
        (
            "server.graceful_shutdown_timeout",
            s.graceful_shutdown_timeout,
            HOUR,
        ),
        ("upstream.connect_timeout", u.connect_timeout, 5 * MINUTE),
        ("upstream.read_timeout", u.read_timeout, DAY),
        ("upstream.write_timeout", u.write_timeout, DAY),
        ("upstream.idle_timeout", u.idle_timeout, DAY),
        ("downstream.idle_timeout", raw.downstream.idle_timeout, HOUR),
        (
            "downstream.head_timeout",
            raw.downstream.head_timeout,
            10 * MINUTE,
        ),
        (
            "downstream.write_timeout",
            raw.downstream.write_timeout,
            HOUR,
        ),
        // Every second of leeway accepts an expired token for one more second.
        ("keycloak.leeway", k.leeway, 10 * MINUTE),
        ("keycloak.jwks_refresh", k.jwks_refresh, DAY),
        (
            "keycloak.jwks_min_refetch_interval",
            k.jwks_min_refetch_interval,
            HOUR,
        ),
        ("keycloak.jwks_max_stale", k.jwks_max_stale, 30 * DAY),
        ("keycloak.fetch_timeout", k.fetch_timeout, 5 * MINUTE),
        // A request waits this long.
        ("keycloak.refetch_wait", k.refetch_wait, MINUTE),
        (
            "keycloak.dynamic_realms.negative_ttl",
            k.dynamic_realms.negative_ttl,
            DAY,
        ),
        // Assertions are short-lived: within the ttl one could be replayed.
        ("assertion.ttl", raw.assertion.ttl, HOUR),
    ];
    if let Some(r) = &raw.redis {
        v.extend([
            // A permission-cache miss waits this long.
            ("redis.command_timeout", r.command_timeout, MINUTE),
            // Revocation without a pub/sub message takes up to this long.
            ("redis.cache_ttl", r.cache_ttl, DAY),
            ("redis.degraded_ttl", r.degraded_ttl, DAY),
        ]);
    }
    v
}

fn validate_durations(raw: &RawConfig, e: &mut Errors) {
    for (field, value, max) in duration_bounds(raw) {
        if value > max {
            e.push(
                field,
                format!(
                    "{} is too long (at most {})",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ),
            );
        }
    }
}

/// realmgate's own header names (identity, request id, assertion, claims) must be distinct
/// from each other and from protocol headers: each is written over the client's value, so a
/// claim named `X-Tenant-ID` would let a token choose its tenant for the backend, and one
/// named `Host` or `Content-Length` would let it rewrite routing or framing.
fn validate_header_names(raw: &RawConfig, e: &mut Errors) {
    /// Refuses `name` for `field` if it is a protocol header or already taken.
    fn check(e: &mut Errors, seen: &mut Vec<(String, String)>, field: String, name: &str) {
        if let Some(p) = crate::http::headers::protocol_header(name) {
            e.push(
                &field,
                format!(
                    "\"{name}\" is a protocol header ({p}); realmgate must not write its own values into it"
                ),
            );
            return;
        }
        let folded = crate::http::headers::fold_name(name);
        match seen.iter().find(|(f, _)| *f == folded) {
            Some((_, other)) => e.push(
                &field,
                format!(
                    "\"{name}\" is already used by {other} (names are compared ignoring case and _ vs -)"
                ),
            ),
            None => seen.push((folded, field)),
        }
    }
    let h = &raw.headers;
    let mut seen: Vec<(String, String)> = Vec::new();
    for (field, name) in [
        ("headers.tenant", &h.tenant),
        ("headers.realm", &h.realm),
        ("headers.user_id", &h.user_id),
        ("headers.user_name", &h.user_name),
        ("headers.user_email", &h.user_email),
        ("headers.roles", &h.roles),
        ("headers.scope", &h.scope),
        ("headers.request_id", &h.request_id),
        ("assertion.header", &raw.assertion.header),
    ] {
        check(e, &mut seen, field.to_string(), name);
    }
    // Stripped from every request whatever `assertion.header` says.
    let builtin = crate::http::headers::fold_name("X-Identity-Assertion");
    if !seen.iter().any(|(f, _)| *f == builtin) {
        seen.push((builtin, "the built-in assertion header".to_string()));
    }
    for (claim, name) in &h.claims {
        check(e, &mut seen, format!("headers.claims.{claim}"), name);
    }
}

/// Valid settings that switch off a default protection: printed by `realmgate check` and
/// logged when a config with them is installed.
fn load_warnings(raw: &RawConfig) -> Vec<String> {
    let mut w = Vec::new();
    if raw.paths.double_encoding == raw::DoubleEncodingSection::Allow {
        w.push(
            "paths.double_encoding: allow forwards %25 followed by two hex digits (%252F); safe \
             only if the backend and everything in front of it decode the path exactly once"
                .to_string(),
        );
    }
    if raw.keycloak.accept_azp_as_audience {
        w.push(
            "keycloak.accept_azp_as_audience: true accepts tokens whose azp, not aud, names this \
             service, so a token issued to the same client for another resource server is \
             accepted here (RFC 9068 section 4 requires aud); add Keycloak's Audience mapper \
             to the client scope and turn this off"
                .to_string(),
        );
    }
    if raw.headers.strip_overrides.is_empty() {
        w.push(
            "headers.strip_overrides is empty: method/path override and client-address headers \
             (X-HTTP-Method-Override, X-Original-URL, X-Real-IP, ...) reach the backend"
                .to_string(),
        );
    }
    w
}

impl RuntimeConfig {
    /// Logs the warnings that the previously installed config did not already have, so a
    /// switch turned on by a reload is reported once, not again at every tenant sync.
    pub fn log_warnings(&self) {
        static LAST: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
        let mut last = LAST.lock();
        for w in self.warnings.iter().filter(|w| !last.contains(w)) {
            tracing::warn!("{w}");
        }
        last.clone_from(&self.warnings);
    }
}

/// The request-size bounds must be sane and must leave room for the largest token accepted.
fn check_downstream(d: &raw::DownstreamSection, e: &mut Errors) {
    // Upper bounds are in `duration_bounds`; a zero deadline would close every connection.
    for (field, v) in [
        ("downstream.idle_timeout", d.idle_timeout),
        ("downstream.head_timeout", d.head_timeout),
        ("downstream.write_timeout", d.write_timeout),
    ] {
        if v < Duration::from_millis(100) {
            e.push(field, "must be at least 100ms");
        }
    }
    if !(1..=1_000_000).contains(&d.max_connections) {
        e.push(
            "downstream.max_connections",
            "must be between 1 and 1000000",
        );
    }
    if d.max_requests_per_connection == 0 {
        e.push(
            "downstream.max_requests_per_connection",
            "must be at least 1",
        );
    }
    if !(1..=10_000).contains(&d.h2_max_concurrent_streams) {
        e.push(
            "downstream.h2_max_concurrent_streams",
            "must be between 1 and 10000",
        );
    }
}

fn check_limits(l: &raw::LimitsSection, max_token_bytes: usize, e: &mut Errors) {
    if !(256..=1 << 20).contains(&l.max_uri_bytes) {
        e.push("limits.max_uri_bytes", "must be between 256 and 1048576");
    }
    // `authorization: Bearer <token>\r\n`
    let token_line = "authorization: Bearer ".len() + max_token_bytes + 2;
    if l.max_header_line_bytes < token_line {
        e.push(
            "limits.max_header_line_bytes",
            format!("must be at least {token_line} so a token of keycloak.max_token_bytes ({max_token_bytes}) fits"),
        );
    }
    if l.max_header_bytes < l.max_header_line_bytes || l.max_header_bytes > 1 << 20 {
        e.push(
            "limits.max_header_bytes",
            "must be at least limits.max_header_line_bytes and at most 1048576 (Pingora's own bound)",
        );
    }
}

/// Validates the `assertion` section; `None` when disabled. A configured key file is parsed
/// here so `realmgate check` catches a bad key before a start.
fn compile_assertion(a: &raw::AssertionSection, e: &mut Errors) -> Option<AssertionSettings> {
    if !a.enabled {
        return None;
    }
    let header = crate::http::headers::parse_header_name(&a.header)
        .map_err(|m| e.push("assertion.header", m))
        .ok();
    if a.ttl.as_secs() == 0 || a.ttl.subsec_nanos() != 0 {
        e.push(
            "assertion.ttl",
            "must be a whole number of seconds, at least 1s",
        );
    }
    if a.issuer.trim().is_empty() {
        e.push("assertion.issuer", "must not be empty");
    }
    if a.audience.trim().is_empty() {
        e.push("assertion.audience", "must not be empty");
    }
    let key_file = a.key_file.as_ref().map(PathBuf::from);
    if let Some(path) = &key_file {
        if let Err(err) = AssertionKey::from_file(path) {
            e.push("assertion.key_file", err);
        }
    }
    Some(AssertionSettings {
        header: header?,
        ttl_secs: a.ttl.as_secs(),
        issuer: a.issuer.clone(),
        audience: a.audience.clone(),
        key_file,
    })
}

struct Authz {
    catalog: Catalog,
    roles: RoleMap,
    tenant_roles: Vec<Option<Box<RoleMap>>>,
    routes: RouteTable,
    tenant_routes: Vec<Option<Box<RouteTable>>>,
}

fn route_spec(r: &raw::RouteSection) -> RouteSpec<'_> {
    RouteSpec {
        path: &r.path,
        methods: r.methods.as_deref(),
        public: r.public,
        authenticated: r.authenticated,
        permission: r.permission.as_deref(),
        permissions: r.permissions.as_deref(),
        match_mode: match r.match_mode {
            raw::MatchSection::Any => MatchMode::Any,
            raw::MatchSection::All => MatchMode::All,
        },
        enforce: r.enforce,
        allow_query_token: r.allow_query_token,
        max_body_bytes: r.max_body_bytes,
    }
}

/// Compiles scopes, roles and routes (global and per tenant) into one catalog.
fn compile_authz(raw: &RawConfig, e: &mut Errors) -> Option<Authz> {
    let push_all = |e: &mut Errors, errs: Vec<crate::authz::BuildError>| {
        for b in errs {
            e.0.push(b.to_string());
        }
    };
    let scopes = match Scopes::new(&raw.scopes) {
        Ok(s) => s,
        Err(errs) => {
            push_all(e, errs);
            return None;
        }
    };
    let mut catalog = Catalog::new(scopes);
    let roles = RoleMap::build(
        &mut catalog,
        RoleSource {
            path: "roles",
            roles: &raw.roles,
        },
    )
    .map_err(|errs| push_all(e, errs))
    .ok();
    let cs = raw.paths.case_sensitive;
    let routes = RouteTable::build(
        &mut catalog,
        raw.routes.iter().map(route_spec),
        "routes",
        cs,
    )
    .map_err(|errs| push_all(e, errs))
    .ok();
    let mut tenant_routes = Vec::with_capacity(raw.tenants.len());
    let mut tenant_roles = Vec::with_capacity(raw.tenants.len());
    for (i, t) in raw.tenants.iter().enumerate() {
        tenant_routes.push(if t.routes.is_empty() {
            None
        } else {
            RouteTable::build(
                &mut catalog,
                t.routes.iter().map(route_spec),
                &format!("tenants[{i}].routes"),
                cs,
            )
            .map_err(|errs| push_all(e, errs))
            .ok()
            .map(Box::new)
        });
        let overlay = match &roles {
            Some(global) if !(t.roles.is_empty() && t.role_overrides.is_empty()) => global
                .overlay(
                    &mut catalog,
                    RoleSource {
                        path: &format!("tenants[{i}].roles"),
                        roles: &t.roles,
                    },
                    RoleSource {
                        path: &format!("tenants[{i}].role_overrides"),
                        roles: &t.role_overrides,
                    },
                )
                .map_err(|errs| push_all(e, errs))
                .ok(),
            _ => None,
        };
        tenant_roles.push(overlay.map(Box::new));
    }
    let mut roles = roles?;
    roles.seal(&catalog);
    for t in tenant_roles.iter_mut().flatten() {
        t.seal(&catalog);
    }
    Some(Authz {
        catalog,
        roles,
        tenant_roles,
        routes: routes?,
        tenant_routes,
    })
}
