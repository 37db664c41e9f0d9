//! The `keycloak` section: algorithms, issuers, URLs and per-realm overrides, compiled into
//! the JWKS and verification settings.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::check::{at_most, DAY, HOUR, MINUTE};
use crate::config::raw::{self, DynamicRealmsSection, HeadersSection, KeycloakSection};
use crate::config::report::mask_url;
use crate::config_error::ConfigError;
use crate::jwks::{Alg, JwksSettings, RealmOverride};
use crate::verify::VerifySettings;

/// The compiled `keycloak` section.
pub(super) struct Keycloak {
    pub jwks: JwksSettings,
    pub verify: VerifySettings,
    pub strip_authorization: bool,
    pub require_keys_for_ready: bool,
}

/// Validates the section and compiles it. The verify settings also take the claim headers
/// and the header value cap from the `headers` section.
pub(super) fn compile(k: &KeycloakSection, h: &HeadersSection, e: &mut ConfigError) -> Keycloak {
    validate_keycloak(k, e);
    let KeycloakSection {
        base_url,
        audiences,
        accept_azp_as_audience,
        client_roles,
        leeway,
        algorithms,
        jwks_refresh,
        jwks_min_refetch_interval,
        jwks_refetches_per_second,
        jwks_max_stale,
        fetch_timeout,
        refetch_wait,
        max_token_bytes,
        token_cookie,
        permissions_claim,
        strip_authorization,
        token_cache_size,
        dynamic_realms,
        require_keys_for_ready,
        realms,
    } = k;
    let DynamicRealmsSection {
        max: max_dynamic_realms,
        negative_ttl,
        per_second,
    } = dynamic_realms;
    at_most(
        e,
        &[
            // Every second of leeway accepts an expired token for one more second.
            ("keycloak.leeway", *leeway, 10 * MINUTE),
            ("keycloak.jwks_refresh", *jwks_refresh, DAY),
            (
                "keycloak.jwks_min_refetch_interval",
                *jwks_min_refetch_interval,
                HOUR,
            ),
            ("keycloak.jwks_max_stale", *jwks_max_stale, 30 * DAY),
            ("keycloak.fetch_timeout", *fetch_timeout, 5 * MINUTE),
            // A request waits this long.
            ("keycloak.refetch_wait", *refetch_wait, MINUTE),
            ("keycloak.dynamic_realms.negative_ttl", *negative_ttl, DAY),
        ],
    );
    let jwks = JwksSettings {
        base_url: base_url.trim_end_matches('/').to_string(),
        algorithms: parse_algs(algorithms),
        refresh: *jwks_refresh,
        min_refetch_interval: *jwks_min_refetch_interval,
        max_stale: *jwks_max_stale,
        fetch_timeout: *fetch_timeout,
        refetch_wait: *refetch_wait,
        load_wait: (*refetch_wait).max(Duration::from_secs(1)),
        negative_ttl: *negative_ttl,
        max_dynamic_realms: *max_dynamic_realms,
        new_realms_per_second: *per_second,
        refetches_per_second: *jwks_refetches_per_second,
        realm_overrides: Arc::new(realm_overrides(realms, e)),
        ..JwksSettings::default()
    };
    let verify = VerifySettings {
        audiences: audiences.clone(),
        accept_azp_as_audience: *accept_azp_as_audience,
        leeway: *leeway,
        max_token_bytes: *max_token_bytes,
        cookie_name: token_cookie.clone(),
        allow_query_token: false,
        client_role_clients: client_roles.clone().unwrap_or_else(|| audiences.clone()),
        permissions_claim: permissions_claim.clone(),
        claim_headers: h
            .claims
            .iter()
            .map(|(c, hdr)| (c.clone(), hdr.clone()))
            .collect(),
        max_header_value_len: h.max_value_len,
        token_cache_capacity: *token_cache_size,
    };
    Keycloak {
        jwks,
        verify,
        strip_authorization: *strip_authorization,
        require_keys_for_ready: *require_keys_for_ready,
    }
}

/// Per-realm overrides for non-Keycloak IdPs; a realm name that cannot be one is reported.
fn realm_overrides(
    realms: &std::collections::BTreeMap<String, raw::RealmOverrideSection>,
    e: &mut ConfigError,
) -> HashMap<String, RealmOverride> {
    let mut overrides = HashMap::new();
    for (realm, o) in realms {
        if !crate::jwks::valid_realm_name(realm) {
            e.push(
                format_args!("keycloak.realms.{realm}"),
                "is not a valid realm name",
            );
        }
        let raw::RealmOverrideSection {
            issuer,
            jwks_uri,
            jwks_file,
            algorithms,
            allow_missing_kid,
            allow_missing_typ,
        } = o;
        overrides.insert(
            realm.clone(),
            RealmOverride {
                issuer: issuer.clone(),
                jwks_uri: jwks_uri.clone(),
                jwks_file: jwks_file.as_ref().map(PathBuf::from),
                algorithms: algorithms.as_deref().map(parse_algs),
                allow_missing_kid: *allow_missing_kid,
                allow_missing_typ: *allow_missing_typ,
            },
        );
    }
    overrides
}

fn parse_algs(algs: &[String]) -> Vec<Alg> {
    algs.iter().filter_map(|a| Alg::from_name(a)).collect()
}

const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn validate_algorithms(path: &str, algs: &[String], e: &mut ConfigError) {
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

fn validate_url(path: &str, s: &str, e: &mut ConfigError) {
    let ok = (s.starts_with("http://") || s.starts_with("https://"))
        && s.split_once("://")
            .map(|(_, rest)| !rest.is_empty() && !rest.starts_with('/'))
            .unwrap_or(false)
        && !s.contains(char::is_whitespace);
    if !ok {
        e.push(path, format!("\"{}\" is not an http(s) URL", mask_url(s)));
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
fn validate_issuers(k: &raw::KeycloakSection, e: &mut ConfigError) {
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

fn validate_keycloak(k: &raw::KeycloakSection, e: &mut ConfigError) {
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
