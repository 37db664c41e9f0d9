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
    assert_eq!(cfg.raw.keycloak.base_url, "http://fallback:8080");
    let env = HashMap::from([("KC_URL".to_string(), "https://kc.internal".to_string())]);
    let cfg = config::from_str(&yaml, &env).unwrap();
    assert_eq!(cfg.raw.keycloak.base_url, "https://kc.internal");
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
    assert_eq!(cfg.slashes.double_encoding, DoubleEncoding::Reject);
    assert!(cfg.warnings.is_empty(), "{:?}", cfg.warnings);
    let on = format!("{BASE}paths: {{double_encoding: allow}}\n");
    let cfg = config::from_str(&on, &HashMap::new()).unwrap();
    assert_eq!(cfg.slashes.double_encoding, DoubleEncoding::Allow);
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
