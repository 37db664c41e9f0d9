//! The `redis:` section's schema, with its `loader:` (the source of truth asked when a
//! grant key is absent from Redis).

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::grants::WriteBack;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: String,
    #[serde(default = "dur_100ms", with = "humantime_serde")]
    pub command_timeout: Duration,
    #[serde(default = "dur_60s", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default = "default_grant_cache")]
    pub cache_size: usize,
    #[serde(default = "dur_5s", with = "humantime_serde")]
    pub degraded_ttl: Duration,
    #[serde(default = "default_channel")]
    pub channel: String,
    #[serde(default)]
    pub key_prefix: String,
    /// Optional hash of run-time tenants (`id` -> tenant JSON).
    #[serde(default)]
    pub tenants_key: Option<String>,
    /// How changes written straight to Redis are noticed.
    #[serde(default)]
    pub invalidation: InvalidationSection,
    /// The source of truth asked when a grant key is absent from Redis.
    #[serde(default)]
    pub loader: Option<LoaderSection>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum InvalidationSection {
    /// Client tracking, else keyspace notifications, else `channel` + `cache_ttl`.
    #[default]
    Auto,
    Tracking,
    Keyspace,
    Pubsub,
}

fn dur_100ms() -> Duration {
    Duration::from_millis(100)
}
fn default_channel() -> String {
    "realmgate:invalidate".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderSection {
    /// Upper bound for one loader answer (slot and connection waits included).
    #[serde(default = "dur_250ms", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an empty answer is believed.
    #[serde(default = "dur_5s", with = "humantime_serde")]
    pub negative_ttl: Duration,
    #[serde(default = "default_cache_size")]
    pub cache_size: usize,
    #[serde(default = "default_in_flight")]
    pub max_in_flight: usize,
    #[serde(default)]
    pub write_back: WriteBackSection,
    #[serde(default)]
    pub http: Option<HttpSection>,
    #[serde(default)]
    pub postgres: Option<PostgresSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WriteBackSection {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub user_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub role_ttl: Duration,
}

impl Default for WriteBackSection {
    fn default() -> Self {
        let d = WriteBack::default();
        Self {
            enabled: false,
            user_ttl: d.user_ttl,
            role_ttl: d.role_ttl,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    #[serde(default)]
    pub user_url: Option<String>,
    #[serde(default)]
    pub role_url: Option<String>,
    #[serde(default = "default_body")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default = "default_secret_header")]
    pub secret_header: String,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    pub url: String,
    #[serde(default)]
    pub user_query: Option<String>,
    #[serde(default)]
    pub role_query: Option<String>,
    #[serde(default = "default_pool")]
    pub pool_size: usize,
}

fn dur_250ms() -> Duration {
    Duration::from_millis(250)
}
fn default_cache_size() -> usize {
    10_000
}
fn default_in_flight() -> usize {
    64
}
fn default_body() -> usize {
    64 * 1024
}
fn default_secret_header() -> String {
    "X-Realmgate-Loader-Secret".into()
}
fn default_pool() -> usize {
    4
}
fn dur_60s() -> Duration {
    Duration::from_secs(60)
}
fn dur_5s() -> Duration {
    Duration::from_secs(5)
}
fn default_grant_cache() -> usize {
    100_000
}
