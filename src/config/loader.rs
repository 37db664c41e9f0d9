//! `redis.loader`: the YAML shape of a grant loader and its translation into
//! [`LoaderSettings`], with every problem reported under its field name.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::grants::{HttpSettings, LoaderSettings, PostgresSettings, SourceSettings, WriteBack};

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
fn dur_5s() -> Duration {
    Duration::from_secs(5)
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

/// The settings, or the problems as `(field, message)` pairs.
pub fn loader_settings(l: &LoaderSection) -> Result<LoaderSettings, Vec<(String, String)>> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let mut push = |f: &str, m: String| {
        let name = if f.is_empty() {
            "redis.loader".to_owned()
        } else {
            format!("redis.loader.{f}")
        };
        errs.push((name, m));
    };
    if l.timeout.is_zero() || l.timeout > Duration::from_secs(10) {
        push("timeout", "must be between 1ms and 10s".into());
    }
    if l.negative_ttl > Duration::from_secs(3600) {
        push("negative_ttl", "must be at most 1h".into());
    }
    if l.cache_size == 0 {
        push("cache_size", "must be at least 1".into());
    }
    if l.max_in_flight == 0 {
        push("max_in_flight", "must be at least 1".into());
    }
    let wb = &l.write_back;
    if wb.enabled {
        for (f, v) in [("user_ttl", wb.user_ttl), ("role_ttl", wb.role_ttl)] {
            if v < Duration::from_secs(1) || v > Duration::from_secs(7 * 86_400) {
                push(
                    &format!("write_back.{f}"),
                    "must be between 1s and 7 days".into(),
                );
            }
        }
    }
    let source = match (&l.http, &l.postgres) {
        (Some(h), None) => {
            if h.max_body_bytes == 0 || h.max_body_bytes > 16 * 1024 * 1024 {
                push("http.max_body_bytes", "must be between 1 and 16 MiB".into());
            }
            if h.secret.as_deref() == Some("") {
                push("http.secret", "must not be empty (omit it instead)".into());
            }
            Some(SourceSettings::Http(HttpSettings {
                user_url: h.user_url.clone(),
                role_url: h.role_url.clone(),
                max_body_bytes: h.max_body_bytes,
                secret: h.secret.clone(),
                secret_header: h.secret_header.clone(),
                ca_file: h.ca_file.clone(),
                client_cert: h.client_cert.clone(),
                client_key: h.client_key.clone(),
            }))
        }
        (None, Some(p)) => Some(SourceSettings::Postgres(PostgresSettings {
            url: p.url.clone(),
            user_query: p.user_query.clone(),
            role_query: p.role_query.clone(),
            pool_size: p.pool_size,
        })),
        _ => {
            push("", "set exactly one of http or postgres".into());
            None
        }
    };
    let Some(source) = source else {
        return Err(errs);
    };
    let settings = LoaderSettings {
        source,
        timeout: l.timeout,
        negative_ttl: l.negative_ttl,
        cache_size: l.cache_size,
        max_in_flight: l.max_in_flight,
        write_back: wb.enabled.then_some(WriteBack {
            user_ttl: wb.user_ttl,
            role_ttl: wb.role_ttl,
        }),
    };
    // The source's own checks (templates, queries, certificate files): same code as at start.
    if let Err((f, m)) = crate::grants::check_loader(&settings) {
        push(&f, m);
    }
    if errs.is_empty() {
        Ok(settings)
    } else {
        Err(errs)
    }
}
