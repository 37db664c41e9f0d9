//! The `keycloak` section: algorithms, issuers, URLs and per-realm overrides, compiled into
//! the JWKS and verification settings.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::errors::Errors;
use super::raw::{self, RawConfig};
use crate::jwks::{Alg, JwksSettings, RealmOverride};
use crate::verify::VerifySettings;

fn parse_algs(algs: &[String]) -> Vec<Alg> {
    algs.iter().filter_map(|a| Alg::from_name(a)).collect()
}

/// JWKS and token-verification settings from the `keycloak` section.
pub(super) fn jwt_settings(raw: &RawConfig, e: &mut Errors) -> (JwksSettings, VerifySettings) {
    let k = &raw.keycloak;
    let mut overrides = std::collections::HashMap::new();
    for (realm, o) in &k.realms {
        if !crate::jwks::valid_realm_name(realm) {
            e.push(
                format!("keycloak.realms.{realm}"),
                "is not a valid realm name",
            );
        }
        overrides.insert(
            realm.clone(),
            RealmOverride {
                issuer: o.issuer.clone(),
                jwks_uri: o.jwks_uri.clone(),
                jwks_file: o.jwks_file.as_ref().map(PathBuf::from),
                algorithms: o.algorithms.as_deref().map(parse_algs),
                allow_missing_kid: o.allow_missing_kid,
                allow_missing_typ: o.allow_missing_typ,
            },
        );
    }
    let jwks = JwksSettings {
        base_url: k.base_url.trim_end_matches('/').to_string(),
        algorithms: parse_algs(&k.algorithms),
        refresh: k.jwks_refresh,
        min_refetch_interval: k.jwks_min_refetch_interval,
        max_stale: k.jwks_max_stale,
        fetch_timeout: k.fetch_timeout,
        refetch_wait: k.refetch_wait,
        load_wait: k.refetch_wait.max(Duration::from_secs(1)),
        negative_ttl: k.dynamic_realms.negative_ttl,
        max_dynamic_realms: k.dynamic_realms.max,
        new_realms_per_second: k.dynamic_realms.per_second,
        refetches_per_second: k.jwks_refetches_per_second,
        realm_overrides: Arc::new(overrides),
        ..JwksSettings::default()
    };
    let verify = VerifySettings {
        audiences: k.audiences.clone(),
        accept_azp_as_audience: k.accept_azp_as_audience,
        leeway: k.leeway,
        max_token_bytes: k.max_token_bytes,
        cookie_name: k.token_cookie.clone(),
        allow_query_token: false,
        client_role_clients: k
            .client_roles
            .clone()
            .unwrap_or_else(|| k.audiences.clone()),
        permissions_claim: k.permissions_claim.clone(),
        claim_headers: raw
            .headers
            .claims
            .iter()
            .map(|(c, h)| (c.clone(), h.clone()))
            .collect(),
        max_header_value_len: raw.headers.max_value_len,
        token_cache_capacity: k.token_cache_size,
    };
    (jwks, verify)
}

const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn validate_algorithms(path: &str, algs: &[String], e: &mut Errors) {
    if algs.is_empty() {
        e.push(path, "must list at least one algorithm");
    }
    for (i, a) in algs.iter().enumerate() {
        if !ALGORITHMS.contains(&a.as_str()) {
            e.push(
                format!("{path}[{i}]"),
                format!(
                    "\"{a}\" is not an allowed algorithm (one of {})",
                    ALGORITHMS.join(", ")
                ),
            );
        }
    }
}

fn validate_url(path: &str, s: &str, e: &mut Errors) {
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && s.split_once("://")
            .map(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'))
            .unwrap_or(false)
        && !s.contains(char::is_whitespace);
    if !ok {
        e.push(path, format!("\"{}\" is not an http(s) URL", mask_url(s)));
    }
}

/// A URL for messages and summaries: userinfo (`user:password@`) and the values of
/// password-like query parameters (`unix:///redis.sock?pass=...`) become `***`, because
/// `realmgate check` output and logs are read by more people than the config.
pub fn mask_url(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match rest[..authority_len].rfind('@') {
        Some(at) => {
            out.push_str("***");
            out.push_str(&rest[at..authority_len]);
        }
        None => out.push_str(&rest[..authority_len]),
    }
    let tail = &rest[authority_len..];
    let (before_query, query) = match tail.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (tail, None),
    };
    out.push_str(before_query);
    if let Some(q) = query {
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _))
                    if ["pass", "password", "token", "secret"]
                        .contains(&k.to_ascii_lowercase().as_str()) =>
                {
                    out.push_str(k);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    if out == url {
        Cow::Borrowed(url)
    } else {
        Cow::Owned(out)
    }
}

/// Issuers compared the cautious way: ASCII case and trailing slashes ignored.
fn issuer_key(s: &str) -> String {
    s.trim_end_matches('/').to_ascii_lowercase()
}

/// Two realms with one issuer would accept each other's tokens, and a token verified for one
/// would be a verified-cache hit for the other (the cache checks the issuer). So an issuer
/// override must differ from every other override and must not be another realm's default
/// issuer `{base_url}/realms/{realm}`: any realm can appear later, through a host pattern or
/// a run-time tenant.
fn validate_issuers(k: &raw::KeycloakSection, e: &mut Errors) {
    let realms_prefix = format!("{}/realms/", issuer_key(&k.base_url));
    let mut seen: Vec<(String, &str)> = Vec::new();
    for (realm, o) in &k.realms {
        let Some(iss) = &o.issuer else { continue };
        let key = issuer_key(iss);
        let field = format!("keycloak.realms.{realm}.issuer");
        let default_of = key
            .strip_prefix(&realms_prefix)
            .filter(|r| !r.is_empty() && !r.contains('/') && *r != realm.to_ascii_lowercase())
            .and_then(|_| iss.trim_end_matches('/').get(realms_prefix.len()..));
        if let Some(other) = default_of {
            e.push(
                field,
                format!(
                    "\"{}\" is the default issuer of realm \"{other}\"; realms must not share an issuer (their tokens and cached verifications would cross)",
                    mask_url(iss)
                ),
            );
        } else if let Some((_, prev)) = seen.iter().find(|(k2, _)| *k2 == key) {
            e.push(
                field,
                format!(
                    "\"{}\" is also the issuer of keycloak.realms.{prev}; realms must not share an issuer (their tokens and cached verifications would cross)",
                    mask_url(iss)
                ),
            );
        }
        seen.push((key, realm));
    }
}

pub(super) fn validate_keycloak(k: &raw::KeycloakSection, e: &mut Errors) {
    validate_issuers(k, e);
    validate_url("keycloak.base_url", &k.base_url, e);
    if k.audiences.is_empty() {
        e.push(
            "keycloak.audiences",
            "must list at least one audience (a token's aud must contain one)",
        );
    }
    for (i, a) in k.audiences.iter().enumerate() {
        if a.trim().is_empty() {
            e.push(format!("keycloak.audiences[{i}]"), "must not be empty");
        }
    }
    validate_algorithms("keycloak.algorithms", &k.algorithms, e);
    if k.max_token_bytes < 512 || k.max_token_bytes > 1024 * 1024 {
        e.push(
            "keycloak.max_token_bytes",
            "must be between 512 and 1048576",
        );
    }
    if k.jwks_min_refetch_interval.is_zero() {
        e.push(
            "keycloak.jwks_min_refetch_interval",
            "must be greater than zero",
        );
    }
    if k.jwks_refresh < Duration::from_secs(1) {
        e.push("keycloak.jwks_refresh", "must be at least 1s");
    }
    if k.jwks_max_stale < k.jwks_refresh {
        e.push(
            "keycloak.jwks_max_stale",
            "must be at least keycloak.jwks_refresh",
        );
    }
    if k.fetch_timeout.is_zero() {
        e.push("keycloak.fetch_timeout", "must be greater than zero");
    }
    if k.dynamic_realms.max == 0 {
        e.push("keycloak.dynamic_realms.max", "must be at least 1");
    }
    for (field, v) in [
        (
            "keycloak.dynamic_realms.per_second",
            k.dynamic_realms.per_second,
        ),
        (
            "keycloak.jwks_refetches_per_second",
            k.jwks_refetches_per_second,
        ),
    ] {
        if !(1..=10_000).contains(&v) {
            e.push(field, "must be between 1 and 10000");
        }
    }
    for (realm, o) in &k.realms {
        let p = format!("keycloak.realms.{realm}");
        if let Some(i) = &o.issuer {
            validate_url(&format!("{p}.issuer"), i, e);
        }
        if let Some(u) = &o.jwks_uri {
            validate_url(&format!("{p}.jwks_uri"), u, e);
        }
        if o.jwks_uri.is_some() && o.jwks_file.is_some() {
            e.push(&p, "set jwks_uri or jwks_file, not both");
        }
        if let Some(f) = &o.jwks_file {
            if !std::path::Path::new(f).is_file() {
                e.push(
                    format!("{p}.jwks_file"),
                    format!("\"{f}\" is not a readable file"),
                );
            }
        }
        if let Some(a) = &o.algorithms {
            validate_algorithms(&format!("{p}.algorithms"), a, e);
        }
    }
}
