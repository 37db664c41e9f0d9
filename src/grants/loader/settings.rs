//! Loader settings (`redis.loader`), checked when the config is loaded.

use std::path::PathBuf;
use std::time::Duration;

/// How a Redis miss is answered from the platform's source of truth.
#[derive(Debug, Clone)]
pub struct LoaderSettings {
    pub source: SourceSettings,
    /// Upper bound for one loader answer, waiting for a connection or a slot included.
    pub timeout: Duration,
    /// How long an empty answer ("this user has no direct grants") is believed.
    pub negative_ttl: Duration,
    /// Loader answers (and in-flight calls) remembered at once.
    pub cache_size: usize,
    /// Loader calls running at once, across all keys; more wait (within `timeout`).
    pub max_in_flight: usize,
    /// Copy found sets into Redis with these TTLs, as the application does itself.
    pub write_back: Option<WriteBack>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteBack {
    /// TTL of a user set written back (the seed platform uses 5 minutes).
    pub user_ttl: Duration,
    /// TTL of a role set written back (the seed platform uses 1 hour).
    pub role_ttl: Duration,
}

impl Default for WriteBack {
    fn default() -> Self {
        Self {
            user_ttl: Duration::from_secs(300),
            role_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
pub enum SourceSettings {
    Http(HttpSettings),
    Postgres(PostgresSettings),
}

impl SourceSettings {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Http(_) => "http",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// `redis.loader.http`: the backend's own permission endpoint.
#[derive(Clone)]
pub struct HttpSettings {
    /// `http(s)://…/{tenant}/{sub}`; absent: user sets are not loaded.
    pub user_url: Option<String>,
    /// `http(s)://…/{tenant}/{role}`; absent: role sets are not loaded.
    pub role_url: Option<String>,
    /// Largest response body read.
    pub max_body_bytes: usize,
    /// Shared secret sent in `secret_header` on every call.
    pub secret: Option<String>,
    pub secret_header: String,
    /// PEM bundle to trust instead of the system roots (https only).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mTLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl std::fmt::Debug for HttpSettings {
    /// The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("user_url", &self.user_url)
            .field("role_url", &self.role_url)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("secret", &self.secret.as_ref().map(|_| "***"))
            .field("secret_header", &self.secret_header)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

/// `redis.loader.postgres`: the platform's own tables.
#[derive(Clone)]
pub struct PostgresSettings {
    /// `postgres://user[:password]@host[:port]/db` (or key=value form).
    pub url: String,
    /// `$1` = tenant id, `$2` = user id; first column = permission code.
    pub user_query: Option<String>,
    /// `$1` = tenant id, `$2` = role name; first column = permission code.
    pub role_query: Option<String>,
    /// Connections held at most.
    pub pool_size: usize,
}

impl std::fmt::Debug for PostgresSettings {
    /// The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSettings")
            .field("url", &super::super::settings::redact_url(&self.url))
            .field("user_query", &self.user_query)
            .field("role_query", &self.role_query)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}
