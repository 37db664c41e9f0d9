//! Config validation names the field and the problem; every shipped config is valid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use realmgate::config;

const BASE: &str = r#"
listen: {proxy: "127.0.0.1:18080", admin: "127.0.0.1:19090"}
upstream: {default: "127.0.0.1:8000"}
keycloak: {base_url: "http://keycloak:8080", audiences: [qa-platform-backend]}
tenants:
  - {id: default, realm: qa-default, hosts: [qa.example.com]}
  - {id: acme, realm: tenant-acme, hosts: [acme.qa.example.com, app.acmecorp.com]}
"#;

fn errors_of(yaml: &str) -> Vec<String> {
    match config::from_str(yaml, &HashMap::new()) {
        Ok(_) => panic!("config unexpectedly valid:\n{yaml}"),
        Err(e) => e.errors,
    }
}

fn assert_error(yaml: &str, needle: &str) {
    let errs = errors_of(yaml);
    assert!(
        errs.iter().any(|e| e.contains(needle)),
        "expected an error containing {needle:?}, got {errs:#?}"
    );
}

#[test]
fn base_config_is_valid() {
    let cfg = config::from_str(BASE, &HashMap::new()).unwrap();
    assert!(cfg.summary().contains("tenants: 2"));
}

#[test]
fn invalid_host_names_the_field() {
    let yaml = BASE.replace("app.acmecorp.com", "Acme..com");
    assert_error(&yaml, "tenants[1].hosts[1]");
    assert_error(&yaml, "Acme..com");
}

#[test]
fn unknown_fields_are_errors() {
    let yaml = BASE.replace("hosts: [qa.example.com]", "hostz: [qa.example.com]");
    assert_error(&yaml, "tenants[0]");
    assert_error(&yaml, "unknown field `hostz`");
    assert_error(
        &format!("{BASE}\nlisten_typo: 1\n"),
        "unknown field `listen_typo`",
    );
}

#[test]
fn wrong_types_and_values_name_the_field() {
    assert_error(
        &BASE.replace("{id: acme,", "{id: acme, status: paused,"),
        "tenants[1].status",
    );
    assert_error(
        &BASE.replace(
            "default: \"127.0.0.1:8000\"",
            "default: \"127.0.0.1:8000\", connect_timeout: soon",
        ),
        "upstream.connect_timeout",
    );
    assert_error(&BASE.replace("127.0.0.1:18080", "nowhere"), "listen.proxy");
    assert_error(
        &BASE.replace("audiences: [qa-platform-backend]", "audiences: []"),
        "keycloak.audiences",
    );
    assert_error(
        &BASE.replace("http://keycloak:8080", "keycloak"),
        "keycloak.base_url",
    );
    assert_error(
        &BASE.replace(
            "audiences: [qa-platform-backend]",
            "audiences: [a], algorithms: [HS256]",
        ),
        "keycloak.algorithms[0]",
    );
}

#[test]
fn duplicate_hosts_and_ids_are_reported() {
    let yaml = BASE.replace("app.acmecorp.com", "qa.example.com");
    assert_error(&yaml, "tenants[1].hosts[1]");
    let yaml = BASE.replace("{id: acme,", "{id: default,");
    assert_error(&yaml, "tenants[1].id");
}

#[test]
fn all_problems_are_reported_at_once() {
    let yaml = BASE
        .replace("127.0.0.1:18080", "nowhere")
        .replace("app.acmecorp.com", "bad host")
        .replace("audiences: [qa-platform-backend]", "audiences: []");
    let errs = errors_of(&yaml);
    assert!(errs.len() >= 3, "{errs:#?}");
}

#[test]
fn environment_variables_expand() {
    let yaml = BASE.replace("http://keycloak:8080", "${KC_URL:-http://fallback:8080}");
    let cfg = config::from_str(&yaml, &HashMap::new()).unwrap();
    assert_eq!(cfg.jwks.base_url, "http://fallback:8080");
    let env = HashMap::from([("KC_URL".to_string(), "https://kc.internal".to_string())]);
    let cfg = config::from_str(&yaml, &env).unwrap();
    assert_eq!(cfg.jwks.base_url, "https://kc.internal");
    let missing = BASE.replace("http://keycloak:8080", "${KC_URL}");
    let err = config::from_str(&missing, &HashMap::new()).err().unwrap();
    assert!(
        err.errors[0].starts_with("keycloak.base_url: environment variable KC_URL"),
        "{err}"
    );
}

#[test]
fn shipped_configs_are_valid() {
    let mut n = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            config::load(&path, &HashMap::new())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn double_encoding_switch_is_strict_by_default_and_warns_when_on() {
    use realmgate::authz::path::DoubleEncoding;
    let cfg = config::from_str(BASE, &HashMap::new()).unwrap();
    assert_eq!(cfg.paths.double_encoding, DoubleEncoding::Reject);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let on = format!("{BASE}paths: {{double_encoding: allow}}\n");
    let cfg = config::from_str(&on, &HashMap::new()).unwrap();
    assert_eq!(cfg.paths.double_encoding, DoubleEncoding::Allow);
    assert!(
        cfg.warnings
            .iter()
            .any(|w| w.starts_with("paths.double_encoding")),
        "{:?}",
        cfg.warnings
    );
    assert_error(
        &format!("{BASE}paths: {{double_encoding: sometimes}}\n"),
        "paths.double_encoding",
    );
}

#[test]
fn claim_headers_must_not_be_identity_or_protocol_headers() {
    for (claim_header, owner) in [
        ("X-Tenant-ID", "headers.tenant"),
        ("x_tenant_id", "headers.tenant"),
        ("X-User-ID", "headers.user_id"),
        ("X-User-Roles", "headers.roles"),
        ("X-Auth-Scope", "headers.scope"),
        ("X-Realm", "headers.realm"),
        ("X-Request-ID", "headers.request_id"),
        ("X-Identity-Assertion", "assertion.header"),
    ] {
        let yaml = format!("{BASE}headers: {{claims: {{tid: \"{claim_header}\"}}}}\n");
        let errs = errors_of(&yaml);
        assert!(
            errs.iter()
                .any(|e| e.starts_with("headers.claims.tid:") && e.contains(owner)),
            "{claim_header}: {errs:#?}"
        );
    }
    for protocol in [
        "Authorization",
        "Host",
        "X-Forwarded-For",
        "forwarded",
        "Content-Length",
        "Transfer_Encoding",
        "Cookie",
    ] {
        let yaml = format!("{BASE}headers: {{claims: {{c: \"{protocol}\"}}}}\n");
        assert_error(&yaml, "headers.claims.c: ");
        assert_error(&yaml, "is a protocol header");
    }
    // Two claims on one header, an identity header on another, a custom assertion header.
    assert_error(
        &format!("{BASE}headers: {{claims: {{a: X-Dept, b: x_dept}}}}\n"),
        "headers.claims.b: \"x_dept\" is already used by headers.claims.a",
    );
    assert_error(
        &format!("{BASE}headers: {{user_id: X-Tenant-ID}}\n"),
        "headers.user_id: \"X-Tenant-ID\" is already used by headers.tenant",
    );
    assert_error(
        &format!("{BASE}headers: {{tenant: Host}}\n"),
        "headers.tenant: \"Host\" is a protocol header",
    );
    assert_error(
        &format!("{BASE}assertion: {{header: X-Gw-Assertion}}\nheaders: {{claims: {{a: X-GW-Assertion}}}}\n"),
        "headers.claims.a: \"X-GW-Assertion\" is already used by assertion.header",
    );
    assert_error(
        &format!("{BASE}assertion: {{header: X-Gw-Assertion}}\nheaders: {{claims: {{a: X-Identity-Assertion}}}}\n"),
        "already used by the built-in assertion header",
    );
    // Ordinary claim headers stay valid.
    let ok =
        format!("{BASE}headers: {{claims: {{department: X-Department, tid: X-User-Tenant}}}}\n");
    config::from_str(&ok, &HashMap::new()).unwrap();
}

#[test]
fn realms_must_not_share_an_issuer() {
    let with = |realms: &str| {
        BASE.replace(
            "audiences: [qa-platform-backend]}",
            &format!("audiences: [qa-platform-backend], realms: {{{realms}}}}}"),
        )
    };
    // Two overrides equal (ignoring case and a trailing slash).
    assert_error(
        &with(r#"a: {issuer: "https://login.example.com/t1"}, b: {issuer: "https://LOGIN.example.com/t1/"}"#),
        "keycloak.realms.b.issuer: \"https://LOGIN.example.com/t1/\" is also the issuer of keycloak.realms.a",
    );
    // An override equal to another realm's default issuer, configured or not.
    assert_error(
        &with(r#"tenant-evil: {issuer: "http://keycloak:8080/realms/tenant-acme"}"#),
        "keycloak.realms.tenant-evil.issuer: \"http://keycloak:8080/realms/tenant-acme\" is the default issuer of realm \"tenant-acme\"",
    );
    assert_error(
        &with(r#"x: {issuer: "http://keycloak:8080/realms/tenant-anything/"}"#),
        "is the default issuer of realm \"tenant-anything\"",
    );
    // Distinct issuers, and an override equal to the realm's own default, are fine.
    config::from_str(
        &with(r#"a: {issuer: "https://login.example.com/t1"}, b: {issuer: "https://login.example.com/t2"}, tenant-acme: {issuer: "http://keycloak:8080/realms/tenant-acme"}"#),
        &HashMap::new(),
    )
    .unwrap();
}

#[test]
fn every_duration_has_an_upper_bound() {
    let base = format!("{BASE}redis: {{url: \"redis://127.0.0.1:6379\"}}\n");
    // (section text to replace, replacement, field) — 10 000 years: `Instant + d` would
    // overflow long before that.
    let huge = "87600000h";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{base}server: {{grace_period: {huge}}}\n"),
            "server.grace_period",
        ),
        (
            format!("{base}server: {{graceful_shutdown_timeout: {huge}}}\n"),
            "server.graceful_shutdown_timeout",
        ),
        (
            base.replace(
                "default: \"127.0.0.1:8000\"",
                &format!("default: \"127.0.0.1:8000\", connect_timeout: {huge}"),
            ),
            "upstream.connect_timeout",
        ),
        (
            base.replace(
                "default: \"127.0.0.1:8000\"",
                &format!("default: \"127.0.0.1:8000\", read_timeout: {huge}"),
            ),
            "upstream.read_timeout",
        ),
        (
            base.replace(
                "default: \"127.0.0.1:8000\"",
                &format!("default: \"127.0.0.1:8000\", write_timeout: {huge}"),
            ),
            "upstream.write_timeout",
        ),
        (
            base.replace(
                "default: \"127.0.0.1:8000\"",
                &format!("default: \"127.0.0.1:8000\", idle_timeout: {huge}"),
            ),
            "upstream.idle_timeout",
        ),
        (
            base.replace(
                "audiences: [qa-platform-backend]",
                &format!("audiences: [a], leeway: {huge}"),
            ),
            "keycloak.leeway",
        ),
        (
            base.replace(
                "audiences: [qa-platform-backend]",
                &format!("audiences: [a], jwks_refresh: {huge}, jwks_max_stale: {huge}"),
            ),
            "keycloak.jwks_refresh",
        ),
        (
            base.replace(
                "audiences: [qa-platform-backend]",
                &format!("audiences: [a], jwks_min_refetch_interval: {huge}"),
            ),
            "keycloak.jwks_min_refetch_interval",
        ),
        (
            base.replace(
                "audiences: [qa-platform-backend]",
                &format!("audiences: [a], jwks_max_stale: {huge}"),
            ),
            "keycloak.jwks_max_stale",
        ),
        (
            base.replace(
                "audiences: [qa-platform-backend]",
                &format!("audiences: [a], fetch_timeout: {huge}"),
            ),
            "keycloak.fetch_timeout",
        ),
        (
            base.replace(
                "audiences: [qa-platform-backend]",
                &format!("audiences: [a], refetch_wait: {huge}"),
            ),
            "keycloak.refetch_wait",
        ),
        (
            base.replace(
                "audiences: [qa-platform-backend]",
                &format!("audiences: [a], dynamic_realms: {{negative_ttl: {huge}}}"),
            ),
            "keycloak.dynamic_realms.negative_ttl",
        ),
        (
            base.replace(
                "url: \"redis://127.0.0.1:6379\"",
                &format!("url: \"redis://127.0.0.1:6379\", command_timeout: {huge}"),
            ),
            "redis.command_timeout",
        ),
        (
            base.replace(
                "url: \"redis://127.0.0.1:6379\"",
                &format!("url: \"redis://127.0.0.1:6379\", cache_ttl: {huge}"),
            ),
            "redis.cache_ttl",
        ),
        (
            base.replace(
                "url: \"redis://127.0.0.1:6379\"",
                &format!("url: \"redis://127.0.0.1:6379\", degraded_ttl: {huge}"),
            ),
            "redis.degraded_ttl",
        ),
        (
            format!("{base}assertion: {{ttl: {huge}}}\n"),
            "assertion.ttl",
        ),
        (
            format!("{base}downstream: {{idle_timeout: {huge}}}\n"),
            "downstream.idle_timeout",
        ),
        (
            format!("{base}downstream: {{head_timeout: {huge}}}\n"),
            "downstream.head_timeout",
        ),
        (
            format!("{base}downstream: {{write_timeout: {huge}}}\n"),
            "downstream.write_timeout",
        ),
    ];
    for (yaml, field) in &cases {
        let errs = errors_of(yaml);
        assert!(
            errs.iter().any(
                |e| e.starts_with(&format!("{field}: ")) && e.contains("is too long (at most ")
            ),
            "{field}: {errs:#?}"
        );
    }
    // Just below each bound is fine; one step above is not.
    config::from_str(
        &format!("{base}server: {{grace_period: 1h}}\n"),
        &HashMap::new(),
    )
    .unwrap();
    assert_error(
        &base.replace(
            "audiences: [qa-platform-backend]",
            "audiences: [a], leeway: 11m",
        ),
        "keycloak.leeway: 11m is too long (at most 10m)",
    );
}

#[test]
fn check_output_masks_credentials_in_urls() {
    let yaml = format!("{BASE}redis: {{url: \"redis://admin:s3cret@redis.internal:6379/2\"}}\n");
    let summary = config::from_str(&yaml, &HashMap::new()).unwrap().summary();
    assert!(
        !summary.contains("s3cret") && !summary.contains("admin:"),
        "{summary}"
    );
    assert!(
        summary.contains("redis://***@redis.internal:6379/2"),
        "{summary}"
    );
    let bad = format!("{BASE}redis: {{url: \"http://u:s3cret@redis.internal\"}}\n");
    let errs = errors_of(&bad).join("\n");
    assert!(
        errs.contains("redis.url") && !errs.contains("s3cret"),
        "{errs}"
    );
    let bad = BASE.replace("http://keycloak:8080", "ftp://kc:s3cret@keycloak");
    let errs = errors_of(&bad).join("\n");
    assert!(
        errs.contains("keycloak.base_url") && !errs.contains("s3cret"),
        "{errs}"
    );
    for (url, want) in [
        ("redis://h:1", "redis://h:1"),
        ("redis://:pw@h:1/0", "redis://***@h:1/0"),
        ("rediss://user:p@ss@h", "rediss://***@h"),
        (
            "unix:///run/redis.sock?db=1&pass=pw",
            "unix:///run/redis.sock?db=1&pass=***",
        ),
        ("https://kc/realms/x?a@b", "https://kc/realms/x?a@b"),
    ] {
        assert_eq!(config::mask_url(url), want);
    }
}

#[test]
fn overlapping_host_patterns_are_refused() {
    let yaml = format!(
        "{BASE}host_patterns:\n  - {{pattern: \"{{tenant}}.qa.example.com\", realm: \"tenant-{{tenant}}\"}}\n  - {{regex: \"(?P<tenant>[a-z]+)-eu\\\\.qa\\\\.example\\\\.com\", realm: \"tenant-{{tenant}}\"}}\n"
    );
    assert_error(
        &yaml,
        "host_patterns[1]: matches the same hosts as host_patterns[0] (e.g. \"a-eu.qa.example.com\")",
    );
    let disjoint = yaml.replace("-eu\\\\.qa", "\\\\.eu");
    config::from_str(&disjoint, &HashMap::new()).unwrap();
}

#[test]
fn downstream_and_rate_bounds_name_the_field() {
    for (section, field) in [
        (
            "downstream: {max_connections: 0}",
            "downstream.max_connections",
        ),
        ("downstream: {head_timeout: 0s}", "downstream.head_timeout"),
        (
            "downstream: {max_requests_per_connection: 0}",
            "downstream.max_requests_per_connection",
        ),
        (
            "downstream: {h2_max_concurrent_streams: 0}",
            "downstream.h2_max_concurrent_streams",
        ),
    ] {
        assert_error(&format!("{BASE}{section}\n"), field);
    }
    assert_error(
        &BASE.replace(
            "audiences: [qa-platform-backend]",
            "audiences: [a], jwks_refetches_per_second: 0",
        ),
        "keycloak.jwks_refetches_per_second",
    );
    assert_error(
        &BASE.replace(
            "audiences: [qa-platform-backend]",
            "audiences: [a], dynamic_realms: {per_second: 0}",
        ),
        "keycloak.dynamic_realms.per_second",
    );
}

fn with_loader(loader: &str) -> String {
    format!("{BASE}redis:\n  url: \"redis://127.0.0.1:6379\"\n  loader:\n{loader}\n")
}

#[test]
fn loader_problems_name_the_field() {
    assert_error(
        &with_loader("    timeout: 250ms"),
        "redis.loader: set exactly one of http or postgres",
    );
    assert_error(
        &with_loader(
            "    http: {user_url: \"http://app/{tenant}\"}\n    postgres: {url: \"postgres://x@h/db\", user_query: \"SELECT 1 WHERE $1 = $2\"}",
        ),
        "exactly one of http or postgres",
    );
    assert_error(
        &with_loader("    http: {user_url: \"http://app/internal/{tenant}\"}"),
        "redis.loader.http.user_url: must contain {tenant} and {sub}",
    );
    assert_error(
        &with_loader("    http: {role_url: \"http://{tenant}.app/{role}\"}"),
        "redis.loader.http.role_url: placeholders must be in the path",
    );
    assert_error(
        &with_loader(
            "    http: {user_url: \"http://app/{tenant}/{sub}\", client_cert: /nonexistent.pem}",
        ),
        "redis.loader.http.client_key",
    );
    assert_error(
        &with_loader(
            "    postgres: {url: \"postgres://x@h/db\", user_query: \"SELECT code FROM p WHERE tenant_id = $1\"}",
        ),
        "redis.loader.postgres.user_query: must use $1",
    );
    assert_error(
        &with_loader("    postgres: {url: \"postgres://x@h/db\"}"),
        "redis.loader.postgres: set user_query, role_query or both",
    );
    assert_error(
        &with_loader(
            "    timeout: 0s\n    postgres: {url: \"postgres://x@h/db\", role_query: \"SELECT c FROM r WHERE t = $1 AND r = $2\"}",
        ),
        "redis.loader.timeout",
    );
    assert_error(
        &with_loader(
            "    write_back: {enabled: true, user_ttl: 0s}\n    postgres: {url: \"postgres://x@h/db\", role_query: \"SELECT c FROM r WHERE t = $1 AND r = $2\"}",
        ),
        "redis.loader.write_back.user_ttl",
    );
    assert_error(
        &with_loader(
            "    postgres: {url: \"postgres://x@h/db?sslmode=require\", role_query: \"SELECT c FROM r WHERE t = $1 AND r = $2\"}",
        ),
        "redis.loader.postgres.url",
    );
    // A valid one loads.
    config::from_str(
        &with_loader(
            "    write_back: {enabled: true}\n    postgres: {url: \"postgres://x@h/db\", user_query: \"SELECT code FROM p WHERE tenant_id = $1::text AND user_id = $2\"}",
        ),
        &HashMap::new(),
    )
    .unwrap();
}
