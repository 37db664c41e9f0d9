//! The validated, compiled configuration the request path reads.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::raw::RawConfig;
use crate::assertion::AssertionSettings;
use crate::authz::path::PathRules;
use crate::authz::{Catalog, DefaultPolicy, RoleMap, RouteRule, RouteTable};
use crate::downstream::DownstreamSettings;
use crate::grants::GrantSettings;
use crate::http::headers::HeaderPolicy;
use crate::jwks::JwksSettings;
use crate::limits::RequestLimits;
use crate::revocation::RevocationSettings;
use crate::telemetry::LogSettings;
use crate::tenant::{Tenant, TenantSource, TenantTable};
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

/// PEM files for TLS termination on the proxy listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: String,
    pub key: String,
}

/// The process settings of the `server` section (start-only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// After SIGTERM, how long in-flight requests get to finish.
    pub grace_period: Duration,
    /// Then how long the runtimes get to stop.
    pub graceful_shutdown_timeout: Duration,
    /// Unix socket for Pingora's zero-downtime binary upgrade.
    pub upgrade_sock: String,
    pub pid_file: String,
    /// Reload the config when the file changes (SIGHUP always reloads).
    pub watch_config: bool,
}

/// Run-time tenants read from a Redis hash (`redis.tenants_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantSyncSettings {
    pub url: String,
    /// The hash: tenant id -> tenant JSON.
    pub key: String,
    /// The invalidation channel that announces a change to it.
    pub channel: String,
}

/// The validated configuration. Built once per load/reload and shared through `ArcSwap`.
pub struct RuntimeConfig {
    /// The schema as loaded: for the summary and for recompiling with run-time tenants, never
    /// for a setting (each has a compiled field). Shared with the reload base in
    /// `state::Shared` rather than copied: with 10 000 tenants it is megabytes.
    pub(crate) raw: Arc<RawConfig>,
    pub source: Option<PathBuf>,
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// TLS termination on the proxy listener; `None` = plain TCP.
    pub proxy_tls: Option<TlsFiles>,
    pub server: ServerSettings,
    pub default_upstream: UpstreamTarget,
    pub timeouts: UpstreamTimeouts,
    pub headers: HeaderPolicy,
    pub tenants: TenantTable,
    /// Upstream of each static tenant (by config index) and host pattern (by index); `None`
    /// means the default upstream.
    /// Boxed: most tenants have none, and 10 000 inline `None`s would cost ~1 MiB each list.
    pub(super) tenant_upstreams: Vec<Option<Box<UpstreamTarget>>>,
    pub(super) pattern_upstreams: Vec<Option<Box<UpstreamTarget>>>,
    /// Interned resources/actions/scopes; permission ids only mean something with it.
    pub catalog: Catalog,
    pub roles: RoleMap,
    /// Per static tenant (by config index): its overlaid role map, if it has overlays.
    pub(super) tenant_roles: Vec<Option<Box<RoleMap>>>,
    pub routes: RouteTable,
    /// Per static tenant: its own rules, checked before the global ones.
    pub(super) tenant_routes: Vec<Option<Box<RouteTable>>>,
    /// Per static tenant: `false` = shadow mode.
    pub(super) tenant_enforce: Vec<bool>,
    pub default_policy: DefaultPolicy,
    /// Name the missing permission in 403 bodies (`authz.expose_required`).
    pub expose_required: bool,
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
    /// Token policy, and the one home of the token cookie's name and the token size bound.
    pub verify: VerifySettings,
    /// `/readyz` waits for every static realm's first key load.
    pub require_keys_for_ready: bool,
    pub grants: Option<GrantSettings>,
    /// Run-time tenants from Redis; `None` without `redis.tenants_key`.
    pub tenant_sync: Option<TenantSyncSettings>,
    /// Realms of statically configured tenants (preloaded; readiness waits for them).
    pub static_realms: Vec<String>,
    /// Signed identity assertion; `None` when disabled (the request path's only check).
    pub assertion: Option<AssertionSettings>,
    /// Back-channel logout, not-before and their replication.
    pub revocation: RevocationSettings,
    pub logging: LogSettings,
    /// Distinct tenants with their own metrics label (`metrics.tenant_label_cap`).
    pub tenant_label_cap: usize,
    /// The admin listeners: their connection cap and the operator's write listener.
    pub admin: AdminSettings,
}

/// The compiled `admin:` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminSettings {
    pub max_connections: usize,
    /// `None`: `POST /revoke` and `/not-before` are not served anywhere.
    pub writes: Option<AdminWrites>,
}

/// The operator's write listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminWrites {
    /// Start-only (like every listener address).
    pub addr: SocketAddr,
    pub token: AdminToken,
    pub rate_per_second: u32,
}

/// The bearer secret of the write listener, held only as its SHA-256 digest: presented
/// secrets are hashed and compared in constant time, so neither the secret nor how much of it
/// matched leaks, and a memory dump holds no usable credential.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(secret: &str) -> Self {
        Self(sha256(secret.as_bytes()))
    }

    /// Whether `presented` is the secret.
    pub fn matches(&self, presented: &[u8]) -> bool {
        aws_lc_rs::constant_time::verify_slices_are_equal(&sha256(presented), &self.0).is_ok()
    }
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(***)")
    }
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
}
