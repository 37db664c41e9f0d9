//! Redis and cache settings, and the errors a setting can cause.

use std::fmt;
use std::time::Duration;

/// Redis and cache settings for the grant store.
#[derive(Clone)]
pub struct GrantSettings {
    /// `redis://[user:password@]host:port[/db]` (or `unix://`).
    pub url: String,
    /// Upper bound for a cache miss's Redis work (waiting for a connection included).
    pub command_timeout: Duration,
    /// Upper bound for establishing a connection (runs in the background; requests wait at most
    /// `command_timeout` for it).
    pub connect_timeout: Duration,
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
    /// How long a set compiled WITHOUT Redis (Redis down or slow) is cached.
    pub degraded_ttl: Duration,
    /// Pub/sub channel carrying invalidation messages.
    pub channel: String,
    /// Prepended to every key (not to messages), for a Redis shared with other applications.
    pub key_prefix: String,
    /// How often the subscriber pings its connection, so a silently dead link is noticed.
    pub ping_interval: Duration,
    /// How changes written straight to Redis are noticed (see `subscriber`).
    pub invalidation: InvalidationPreference,
    /// Asked for keys absent from Redis (see `loader`).
    pub loader: Option<super::LoaderSettings>,
}

/// `redis.invalidation`: which server-side change feed the subscriber uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvalidationPreference {
    /// Client tracking if the server speaks RESP3, else keyspace notifications if the server
    /// has them enabled, else only `redis.channel` messages and `cache_ttl`.
    #[default]
    Auto,
    /// Client tracking only (retry while unavailable).
    Tracking,
    /// Keyspace notifications only (the server must have them enabled).
    Keyspace,
    /// Only `redis.channel` messages and `cache_ttl`.
    Pubsub,
}

impl Default for GrantSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 100_000,
            degraded_ttl: Duration::from_secs(5),
            channel: "realmgate:invalidate".into(),
            key_prefix: String::new(),
            ping_interval: Duration::from_secs(10),
            invalidation: InvalidationPreference::Auto,
            loader: None,
        }
    }
}

impl fmt::Debug for GrantSettings {
    /// Redacts credentials in the URL: settings get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantSettings")
            .field("url", &redact_url(&self.url))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_capacity", &self.cache_capacity)
            .field("degraded_ttl", &self.degraded_ttl)
            .field("channel", &self.channel)
            .field("key_prefix", &self.key_prefix)
            .field("ping_interval", &self.ping_interval)
            .field("invalidation", &self.invalidation)
            .field("loader", &self.loader)
            .finish()
    }
}

pub(super) fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Makes aws-lc-rs the process-wide rustls provider, which the redis crate's `rediss://`
/// connections use: with both aws-lc-rs and ring in the dependency tree rustls cannot choose
/// one itself and would panic at the first TLS connect. Pingora and reqwest pass their
/// providers explicitly, so they are unaffected. A provider installed earlier is kept.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Settings that cannot work; reported at config load, never on the request path.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("grants.redis.url is not a valid Redis URL ({0})")]
    InvalidUrl(String),
    #[error("redis.loader: {0}")]
    Loader(String),
    #[error("grants.{field}: {reason}")]
    InvalidSetting {
        field: &'static str,
        reason: &'static str,
    },
}

impl GrantError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) => "grants_invalid_url",
            Self::InvalidSetting { .. } => "grants_invalid_setting",
            Self::Loader(_) => "grants_invalid_loader",
        }
    }
}
