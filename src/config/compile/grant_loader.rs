//! `redis.loader`: the grant loader's settings (the source of truth asked when a grant key is
//! absent from Redis), with every problem reported under its field name.

use std::time::Duration;

use crate::config::raw::{HttpSection, LoaderSection, PostgresSection, WriteBackSection};
use crate::config_error::ConfigError;
use crate::grants::{HttpSettings, LoaderSettings, PostgresSettings, SourceSettings, WriteBack};

/// The loader's settings; `None` when no source is set (the problem is reported).
pub(super) fn compile(l: &LoaderSection, e: &mut ConfigError) -> Option<LoaderSettings> {
    let LoaderSection {
        timeout,
        negative_ttl,
        cache_size,
        max_in_flight,
        write_back,
        http,
        postgres,
    } = l;
    let mut push = |f: &str, m: &str| {
        if f.is_empty() {
            e.push("redis.loader", m);
        } else {
            e.push(format_args!("redis.loader.{f}"), m);
        }
    };
    if timeout.is_zero() || *timeout > Duration::from_secs(10) {
        push("timeout", "must be between 1ms and 10s");
    }
    if *negative_ttl > Duration::from_secs(3600) {
        push("negative_ttl", "must be at most 1h");
    }
    if *cache_size == 0 {
        push("cache_size", "must be at least 1");
    }
    if *max_in_flight == 0 {
        push("max_in_flight", "must be at least 1");
    }
    let WriteBackSection {
        enabled,
        user_ttl,
        role_ttl,
    } = write_back;
    if *enabled {
        for (f, v) in [("user_ttl", user_ttl), ("role_ttl", role_ttl)] {
            if *v < Duration::from_secs(1) || *v > Duration::from_secs(7 * 86_400) {
                push(&format!("write_back.{f}"), "must be between 1s and 7 days");
            }
        }
    }
    let source = match (http, postgres) {
        (Some(h), None) => http_source(h, &mut push),
        (None, Some(p)) => postgres_source(p),
        _ => {
            push("", "set exactly one of http or postgres");
            return None;
        }
    };
    let settings = LoaderSettings {
        source,
        timeout: *timeout,
        negative_ttl: *negative_ttl,
        cache_size: *cache_size,
        max_in_flight: *max_in_flight,
        write_back: enabled.then_some(WriteBack {
            user_ttl: *user_ttl,
            role_ttl: *role_ttl,
        }),
    };
    // The source's own checks (templates, queries, certificate files): same code as at start.
    if let Err((f, m)) = crate::grants::check_loader(&settings) {
        push(&f, &m);
    }
    Some(settings)
}

fn http_source(h: &HttpSection, push: &mut impl FnMut(&str, &str)) -> SourceSettings {
    let HttpSection {
        user_url,
        role_url,
        max_body_bytes,
        secret,
        secret_header,
        ca_file,
        client_cert,
        client_key,
    } = h;
    if *max_body_bytes == 0 || *max_body_bytes > 16 * 1024 * 1024 {
        push("http.max_body_bytes", "must be between 1 and 16 MiB");
    }
    if secret.as_deref() == Some("") {
        push("http.secret", "must not be empty (omit it instead)");
    }
    SourceSettings::Http(HttpSettings {
        user_url: user_url.clone(),
        role_url: role_url.clone(),
        max_body_bytes: *max_body_bytes,
        secret: secret.clone(),
        secret_header: secret_header.clone(),
        ca_file: ca_file.clone(),
        client_cert: client_cert.clone(),
        client_key: client_key.clone(),
    })
}

fn postgres_source(p: &PostgresSection) -> SourceSettings {
    let PostgresSection {
        url,
        user_query,
        role_query,
        pool_size,
    } = p;
    SourceSettings::Postgres(PostgresSettings {
        url: url.clone(),
        user_query: user_query.clone(),
        role_query: role_query.clone(),
        pool_size: *pool_size,
    })
}
