//! The user-facing YAML schema.
//!
//! These types are the stable contract with operators: every field is documented in README,
//! unknown fields are errors (typos must not silently change security behaviour), and
//! defaults live here. Nothing on the request path reads these types;
//! [`RuntimeConfig::compile`](super::RuntimeConfig::compile) turns them into the validated
//! runtime form, one section at a time.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

mod redis;
pub use redis::{
    HttpSection, InvalidationSection, LoaderSection, PostgresSection, RedisSection,
    WriteBackSection,
};

fn d(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Listen,
    #[serde(default)]
    pub server: ServerSection,
    pub upstream: UpstreamSection,
    pub keycloak: KeycloakSection,
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
    #[serde(default)]
    pub host_patterns: Vec<HostPatternSection>,
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    #[serde(default)]
    pub default_policy: DefaultPolicySection,
    #[serde(default)]
    pub paths: PathsSection,
    #[serde(default)]
    pub authz: AuthzSection,
    #[serde(default)]
    pub redis: Option<RedisSection>,
    #[serde(default)]
    pub headers: HeadersSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub downstream: DownstreamSection,
    #[serde(default)]
    pub logging: LoggingSection,
    #[serde(default)]
    pub metrics: MetricsSection,
    #[serde(default)]
    pub assertion: AssertionSection,
    #[serde(default)]
    pub revocation: RevocationSection,
    #[serde(default)]
    pub admin: AdminSection,
}

fn default_scopes() -> Vec<String> {
    vec!["own".into(), "team".into(), "tenant".into()]
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub proxy: String,
    pub admin: String,
    #[serde(default)]
    pub tls: Option<TlsSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// After SIGTERM the listeners close at once and in-flight requests get this long to
    /// finish (Pingora's grace period); keep it below Kubernetes' terminationGracePeriodSeconds.
    #[serde(with = "humantime_serde")]
    pub grace_period: Duration,
    /// Then the runtimes get this long to stop.
    #[serde(with = "humantime_serde")]
    pub graceful_shutdown_timeout: Duration,
    /// Unix socket for Pingora's zero-downtime binary upgrade.
    pub upgrade_sock: String,
    pub pid_file: String,
    /// Reload the config when the file changes (SIGHUP always reloads).
    pub watch_config: bool,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            threads: 2,
            grace_period: d(10),
            graceful_shutdown_timeout: d(5),
            upgrade_sock: "/tmp/realmgate_upgrade.sock".into(),
            pid_file: "/tmp/realmgate.pid".into(),
            watch_config: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// `host:port` of the backend used by tenants without their own upstream.
    pub default: String,
    #[serde(default = "dur_2s", with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(default = "dur_60s", with = "humantime_serde")]
    pub read_timeout: Duration,
    #[serde(default = "dur_60s", with = "humantime_serde")]
    pub write_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "dur_60s", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Speak TLS to upstreams.
    #[serde(default)]
    pub tls: bool,
    /// SNI / verified name for upstream TLS (default: the upstream host).
    #[serde(default)]
    pub sni: Option<String>,
}

fn dur_2s() -> Duration {
    d(2)
}
fn dur_60s() -> Duration {
    d(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeycloakSection {
    /// Keycloak base URL; a realm's issuer is `{base_url}/realms/{realm}`.
    pub base_url: String,
    /// Accepted audiences: a token's `aud` must contain one.
    pub audiences: Vec<String>,
    /// Also accept `azp` as the audience (Keycloak without an audience mapper); warned about.
    #[serde(default)]
    pub accept_azp_as_audience: bool,
    /// Clients whose `resource_access.{client}.roles` count as roles (default: `audiences`).
    #[serde(default)]
    pub client_roles: Option<Vec<String>>,
    #[serde(default = "dur_30s", with = "humantime_serde")]
    pub leeway: Duration,
    #[serde(default = "default_algs")]
    pub algorithms: Vec<String>,
    #[serde(default = "dur_5m", with = "humantime_serde")]
    pub jwks_refresh: Duration,
    #[serde(default = "dur_10s", with = "humantime_serde")]
    pub jwks_min_refetch_interval: Duration,
    /// Request-triggered repeat JWKS fetches (unknown `kid`, stale keys) per second, all
    /// realms together (burst 2x).
    #[serde(default = "default_refetches")]
    pub jwks_refetches_per_second: u32,
    #[serde(default = "dur_24h", with = "humantime_serde")]
    pub jwks_max_stale: Duration,
    #[serde(default = "dur_5s", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    /// How long a request waits for a lazy realm load or an unknown-kid refetch.
    #[serde(default = "dur_2s", with = "humantime_serde")]
    pub refetch_wait: Duration,
    #[serde(default = "default_max_token")]
    pub max_token_bytes: usize,
    /// Also accept the access token from this cookie.
    #[serde(default)]
    pub token_cookie: Option<String>,
    /// A claim carrying `resource.action.scope` permissions.
    #[serde(default)]
    pub permissions_claim: Option<String>,
    /// Remove `Authorization` before forwarding (legacy backends still read it).
    #[serde(default)]
    pub strip_authorization: bool,
    #[serde(default = "default_token_cache")]
    pub token_cache_size: usize,
    #[serde(default)]
    pub dynamic_realms: DynamicRealmsSection,
    /// `/readyz` waits until every statically configured realm has keys.
    #[serde(default = "yes")]
    pub require_keys_for_ready: bool,
    /// Per-realm overrides for non-Keycloak IdPs and air-gapped setups.
    #[serde(default)]
    pub realms: BTreeMap<String, RealmOverrideSection>,
}

fn dur_30s() -> Duration {
    d(30)
}
fn dur_5m() -> Duration {
    d(300)
}
fn dur_10s() -> Duration {
    d(10)
}
fn dur_24h() -> Duration {
    d(86_400)
}
fn dur_5s() -> Duration {
    d(5)
}
fn default_refetches() -> u32 {
    20
}
fn default_algs() -> Vec<String> {
    vec!["RS256".into()]
}
fn default_max_token() -> usize {
    16 * 1024
}
fn default_token_cache() -> usize {
    100_000
}
fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DynamicRealmsSection {
    /// Most dynamic (host-pattern) realms held at once (LRU beyond).
    pub max: usize,
    /// How long a realm the IdP does not know stays refused without asking again.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Never-seen dynamic realms admitted (and fetched) per second, process-wide (burst 2x).
    pub per_second: u32,
}

impl Default for DynamicRealmsSection {
    fn default() -> Self {
        Self {
            max: 1000,
            negative_ttl: d(60),
            per_second: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RealmOverrideSection {
    #[serde(default)]
    pub issuer: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    #[serde(default)]
    pub jwks_file: Option<String>,
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Accept tokens without `kid` (non-Keycloak issuers with one key).
    #[serde(default)]
    pub allow_missing_kid: bool,
    /// Accept tokens with no `typ` claim and no `at+jwt` header type.
    #[serde(default)]
    pub allow_missing_typ: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StatusSection {
    #[default]
    Active,
    Suspended,
    Pending,
    Disabled,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub id: String,
    pub realm: String,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub status: StatusSection,
    #[serde(default)]
    pub upstream: Option<String>,
    /// Routes checked before the global list for this tenant.
    #[serde(default)]
    pub routes: Vec<RouteSection>,
    /// Role grants added to the global ones for this tenant.
    #[serde(default)]
    pub roles: BTreeMap<String, Vec<String>>,
    /// Role grants that replace the global ones for this tenant.
    #[serde(default)]
    pub role_overrides: BTreeMap<String, Vec<String>>,
    /// `false` = shadow mode: decisions are logged and counted, not enforced.
    #[serde(default = "yes")]
    pub enforce: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPatternSection {
    /// `{tenant}.suffix`, where `{tenant}` is exactly one DNS label.
    #[serde(default)]
    pub pattern: Option<String>,
    /// A regex with a named group `tenant` (anchored for you).
    #[serde(default)]
    pub regex: Option<String>,
    /// Realm template, e.g. `tenant-{tenant}`.
    pub realm: String,
    #[serde(default)]
    pub upstream: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum MatchSection {
    #[default]
    Any,
    All,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub path: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub authenticated: bool,
    #[serde(default)]
    pub permission: Option<String>,
    #[serde(default)]
    pub permissions: Option<Vec<String>>,
    #[serde(default, rename = "match")]
    pub match_mode: MatchSection,
    /// `false` = shadow mode for this route.
    #[serde(default)]
    pub enforce: Option<bool>,
    /// Accept `?access_token=` on this route (off by default: tokens in URLs leak to logs).
    #[serde(default)]
    pub allow_query_token: bool,
    /// This route's request-body bound, bytes (default `limits.max_body_bytes`).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicySection {
    #[default]
    Deny,
    Authenticated,
    Allow,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SlashesSection {
    #[default]
    Merge,
    Reject,
}

/// `paths.double_encoding`: an escaped `%` followed by two hex digits (`%252F`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum DoubleEncodingSection {
    /// 400 `invalid_path`: a backend that decodes twice would read `%252F` as `/`.
    #[default]
    Reject,
    /// Forward as is, for backends that need a literal `%xx` and decode exactly once.
    Allow,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathsSection {
    pub slashes: SlashesSection,
    pub case_sensitive: bool,
    pub double_encoding: DoubleEncodingSection,
}

impl Default for PathsSection {
    fn default() -> Self {
        Self {
            slashes: SlashesSection::Merge,
            case_sensitive: true,
            double_encoding: DoubleEncodingSection::Reject,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthzSection {
    /// Include the missing permission in 403 bodies.
    pub expose_required: bool,
}

impl Default for AuthzSection {
    fn default() -> Self {
        Self {
            expose_required: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeadersSection {
    pub tenant: String,
    pub realm: String,
    pub user_id: String,
    pub user_name: String,
    pub user_email: String,
    pub roles: String,
    pub scope: String,
    pub request_id: String,
    /// Every client header starting with one of these is removed.
    pub strip_prefixes: Vec<String>,
    /// More client headers to remove.
    pub strip: Vec<String>,
    /// Headers that make frameworks run another method or path than the one authorised, or
    /// claim a client address: removed from every request unless set to `[]`.
    pub strip_overrides: Vec<String>,
    /// Set on requests that shadow mode let through although enforcement would refuse them;
    /// the value is the refusal's code. Owned: a client's copy is always removed.
    pub shadow: String,
    /// Verified claim -> upstream header.
    pub claims: BTreeMap<String, String>,
    pub max_value_len: usize,
    /// Peers whose X-Forwarded-*/Forwarded headers are kept (CIDR or IP).
    pub trusted_proxies: Vec<String>,
}

impl Default for HeadersSection {
    fn default() -> Self {
        Self {
            tenant: "X-Tenant-ID".into(),
            realm: "X-Realm".into(),
            user_id: "X-User-ID".into(),
            user_name: "X-User-Name".into(),
            user_email: "X-User-Email".into(),
            roles: "X-User-Roles".into(),
            scope: "X-Auth-Scope".into(),
            request_id: "X-Request-ID".into(),
            strip_prefixes: vec!["X-Auth-".into(), "X-User-".into()],
            strip: Vec::new(),
            strip_overrides: DEFAULT_STRIP_OVERRIDES
                .iter()
                .map(|s| s.to_string())
                .collect(),
            shadow: "X-Auth-Shadow".into(),
            claims: BTreeMap::new(),
            max_value_len: 1024,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Method and path overrides that Express, Symfony, Laravel, Rails, IIS and Spring honour,
/// and client-address headers that proxies and frameworks believe.
pub const DEFAULT_STRIP_OVERRIDES: &[&str] = &[
    "X-HTTP-Method-Override",
    "X-HTTP-Method",
    "X-Method-Override",
    "X-Original-URL",
    "X-Original-Method",
    "X-Rewrite-URL",
    "X-Real-IP",
    "True-Client-IP",
    "X-Client-IP",
    "X-Cluster-Client-IP",
    "X-Forwarded-Port",
    "X-Forwarded-Prefix",
    "X-Forwarded-Server",
];

/// Size bounds on what a client sends, checked before anything else is looked at.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// The request target (path and query), bytes; longer is 414.
    pub max_uri_bytes: usize,
    /// One header line (name + value), bytes; longer is 431.
    pub max_header_line_bytes: usize,
    /// All header lines together, bytes; more is 431.
    pub max_header_bytes: usize,
    /// A request body, bytes, unless the route sets its own `max_body_bytes`; more is 413.
    pub max_body_bytes: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8 * 1024,
            // A 16 KiB token (keycloak.max_token_bytes) in `Authorization: Bearer` fits.
            max_header_line_bytes: 20 * 1024,
            max_header_bytes: 64 * 1024,
            max_body_bytes: 64 << 20,
        }
    }
}

/// Client connections: how long they may idle or dawdle, and how many there may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DownstreamSection {
    /// Wait for the next request on a keep-alive connection (and for the first one).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// The whole request head, from its first byte (slowloris bound).
    #[serde(with = "humantime_serde")]
    pub head_timeout: Duration,
    /// One write to a client that is not reading.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Open client connections; past it, new ones get 503 and are closed.
    pub max_connections: usize,
    /// Requests on one HTTP/1.1 connection before it is closed (start-only).
    pub max_requests_per_connection: u32,
    /// HTTP/2 concurrent streams per connection (start-only).
    pub h2_max_concurrent_streams: u32,
}

impl Default for DownstreamSection {
    fn default() -> Self {
        Self {
            idle_timeout: d(60),
            head_timeout: d(10),
            write_timeout: d(30),
            max_connections: 10_000,
            max_requests_per_connection: 1000,
            h2_max_concurrent_streams: 100,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatSection {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    pub format: LogFormatSection,
    /// Default filter when `RUST_LOG` is unset.
    pub level: String,
    /// One access line per request.
    pub access_log: bool,
}

impl Default for LoggingSection {
    fn default() -> Self {
        Self {
            format: LogFormatSection::Text,
            level: "info".into(),
            access_log: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Distinct tenants with their own `tenant` label; the rest count as `other`.
    pub tenant_label_cap: usize,
}

impl Default for MetricsSection {
    fn default() -> Self {
        Self {
            tenant_label_cap: 100,
        }
    }
}

/// Signed identity assertion (off by default): a short-lived ES256 JWT header that lets a
/// backend prove the identity headers came from realmgate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssertionSection {
    pub enabled: bool,
    pub header: String,
    /// Lifetime of each assertion (`exp - iat`), whole seconds.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    pub issuer: String,
    pub audience: String,
    /// PKCS#8 PEM EC P-256 private key; without it a fresh key is generated at start.
    pub key_file: Option<String>,
}

impl Default for AssertionSection {
    fn default() -> Self {
        Self {
            enabled: false,
            header: "X-Identity-Assertion".into(),
            ttl: d(60),
            issuer: "realmgate".into(),
            audience: "backend".into(),
            key_file: None,
        }
    }
}

/// `revocation:`: back-channel logout, not-before and their replication (README,
/// "Revocation").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationSection {
    /// Answer the back-channel logout and not-before endpoints and check revocations.
    pub enabled: bool,
    /// The longest access-token lifetime of any realm: a revocation is held this long (plus
    /// `keycloak.leeway`) after its time, then no token it covers can still be valid.
    #[serde(with = "humantime_serde")]
    pub max_token_lifetime: Duration,
    /// sid and sub entries held at most; past it a revocation becomes its realm's not-before.
    pub max_entries: usize,
    pub backchannel: BackchannelSection,
    pub not_before: NotBeforeSection,
    /// Redis channel and sorted set shared by replicas (with `redis.url`).
    pub redis: RevocationRedisSection,
}

impl Default for RevocationSection {
    fn default() -> Self {
        Self {
            enabled: true,
            max_token_lifetime: d(3600),
            max_entries: 100_000,
            backchannel: BackchannelSection::default(),
            not_before: NotBeforeSection::default(),
            redis: RevocationRedisSection::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackchannelSection {
    /// Reserved path on every tenant host (POST, form field `logout_token`).
    pub path: String,
    /// Clients a logout token's `aud` must name one of (default: `keycloak.audiences`).
    pub audiences: Option<Vec<String>>,
    /// A logout token whose `iat` is older than this is refused.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// A token with both `sid` and `sub` also ends every session of the `sub`.
    pub revoke_subject: bool,
    /// Largest request body read.
    pub max_body_bytes: usize,
    /// Logout and not-before requests per second, all hosts together (burst 2x).
    pub rate_per_second: u32,
}

impl Default for BackchannelSection {
    fn default() -> Self {
        Self {
            path: "/.realmgate/backchannel-logout".into(),
            audiences: None,
            max_age: d(120),
            revoke_subject: true,
            max_body_bytes: 16 * 1024,
            rate_per_second: 50,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotBeforeSection {
    /// Reserved path of Keycloak's `k_push_not_before` action (the client's Admin URL is this
    /// path without `/k_push_not_before`).
    pub path: String,
}

impl Default for NotBeforeSection {
    fn default() -> Self {
        Self {
            path: "/.realmgate/k_push_not_before".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RevocationRedisSection {
    /// Pub/sub channel revocations are announced on.
    pub channel: String,
    /// Sorted set holding every live revocation (score: its expiry), read at start and after
    /// every reconnect.
    pub key: String,
}

impl Default for RevocationRedisSection {
    fn default() -> Self {
        Self {
            channel: "realmgate:revocations".into(),
            key: "realmgate:revocations".into(),
        }
    }
}

/// The admin listeners (README, "Admin endpoints and metrics"): `listen.admin` serves reads
/// (health, readiness, metrics, the assertion JWKS); the operator's writes have their own
/// listener and are off unless a credential is configured.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Open connections per admin listener; past it a new one is answered 503 and closed.
    pub max_connections: usize,
    /// `POST /revoke` and `POST /not-before`; absent: off.
    pub writes: Option<AdminWritesSection>,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            max_connections: 128,
            writes: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminWritesSection {
    /// Its own `ip:port`, never one of the read or proxy listeners' (loopback by default in
    /// the examples: operators reach it with `kubectl exec` / port-forward).
    pub listen: String,
    /// A file holding the bearer secret (one line, at least 32 characters).
    #[serde(default)]
    pub token_file: Option<String>,
    /// An environment variable holding the bearer secret.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Authenticated writes per second (burst: twice that).
    #[serde(default = "default_admin_write_rate")]
    pub rate_per_second: u32,
}

fn default_admin_write_rate() -> u32 {
    5
}
