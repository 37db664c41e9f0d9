//! Signed identity assertion end to end: the upstream receives an ES256 JWT it can verify
//! against the JWKS on the admin port; clients can never inject one; public routes and a
//! disabled feature carry none.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::idp::{claims, MockKeycloak, SigningKey};
use common::*;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::Value;

fn config(kc: &MockKeycloak, assertion: &str) -> String {
    TestConfig::new(&kc.base())
        .keycloak("leeway: 0s")
        .keycloak("jwks_refresh: 1h")
        .with(&format!(
            r#"
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}}
roles:
  viewer: [tickets.read.team]
routes:
  - {{path: "/public/**", public: true}}
  - {{path: "/tickets/**", methods: [GET], permission: tickets.read.own}}
  - {{path: "/**", authenticated: true}}
{assertion}
"#
        ))
}

struct Env {
    kc: MockKeycloak,
    key: SigningKey,
    up: Upstream,
    gw: Gateway,
}

async fn env(assertion: &str) -> Env {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("acme-1");
    kc.set_keys("tenant-acme", &[&key]);
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&kc, assertion), up.addr);
    for _ in 0..200 {
        if let Ok(r) = client().get(gw.admin_url("/readyz")).send().await {
            if r.status() == 200 {
                return Env { kc, key, up, gw };
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway never became ready");
}

const ON: &str = "assertion: {enabled: true, ttl: 45s, audience: tickets-api}";

fn token(e: &Env) -> String {
    e.key.sign(&claims(
        &e.kc.base(),
        "tenant-acme",
        "u-1",
        &["viewer", "agent"],
    ))
}

async fn jwks(gw: &Gateway) -> (u16, Option<String>) {
    let r = client()
        .get(gw.admin_url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.ok())
}

/// Verifies as a backend would: key by `kid` from the admin JWKS, ES256 only, aud and iss.
fn verify(set: &JwkSet, token: &str, aud: &str) -> Value {
    let kid = decode_header(token)
        .unwrap()
        .kid
        .expect("assertion has a kid");
    let jwk = set.find(&kid).expect("kid is in the published JWKS");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[aud]);
    v.set_issuer(&["realmgate"]);
    v.leeway = 0;
    decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .expect("the assertion verifies")
        .claims
}

#[tokio::test]
async fn verified_request_carries_an_assertion_the_backend_can_verify() {
    let e = env(ON).await;
    let (status, body) = jwks(&e.gw).await;
    assert_eq!(status, 200);
    let set: JwkSet = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(set.keys.len(), 1);

    // A non-canonical path: the assertion names what was forwarded, not what was sent.
    let r = client()
        .get(e.gw.url("/tickets//42?expand=1"))
        .header("host", "acme.qa.example.com")
        .header("authorization", format!("Bearer {}", token(&e)))
        .header("x-request-id", "req-assert-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = e.up.last();
    assert_eq!(seen.uri, "/tickets/42?expand=1");
    let values = seen.headers_named("x-identity-assertion");
    assert_eq!(values.len(), 1, "exactly one assertion: {values:?}");
    let c = verify(&set, values[0], "tickets-api");
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["tenant"], seen.header("x-tenant-id").unwrap());
    assert_eq!(c["realm"], "tenant-acme");
    assert_eq!(c["sub"], "u-1");
    assert_eq!(c["sub"], seen.header("x-user-id").unwrap());
    assert_eq!(c["method"], "GET");
    assert_eq!(c["path"], "/tickets/42?expand=1");
    assert_eq!(c["scope"], "team");
    assert_eq!(c["request_id"], "req-assert-1");
    let roles: Vec<&str> = c["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    for want in ["viewer", "agent", "client-reader"] {
        assert!(roles.contains(&want), "{roles:?}");
    }
    assert_eq!(c["aud"], "tickets-api");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 45);

    // Another audience must not accept it.
    let kid = decode_header(values[0]).unwrap().kid.unwrap();
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&["backend"]);
    assert!(decode::<Value>(
        values[0],
        &DecodingKey::from_jwk(set.find(&kid).unwrap()).unwrap(),
        &v
    )
    .is_err());
}

#[tokio::test]
async fn client_supplied_assertion_never_reaches_the_upstream() {
    let e = env(ON).await;
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.";
    // Authenticated route: realmgate's own replaces it (also the `_` spelling is stripped).
    let raw = format!(
        "GET /api/me HTTP/1.1\r\nHost: acme.qa.example.com\r\nAuthorization: Bearer {}\r\n\
X-Identity-Assertion: {forged}\r\nX_Identity_Assertion: {forged}\r\nConnection: close\r\n\r\n",
        token(&e)
    );
    let resp = raw_request(e.gw.proxy, raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = e.up.last();
    let values: Vec<&str> = seen
        .headers
        .iter()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case("x-identity-assertion")
                || n.eq_ignore_ascii_case("x_identity_assertion")
        })
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(values.len(), 1, "{values:?}");
    assert_ne!(values[0], forged);

    // Public route: no identity, so no assertion at all, and the forged one is gone.
    let raw = format!(
        "GET /public/info HTTP/1.1\r\nHost: acme.qa.example.com\r\nX-Identity-Assertion: {forged}\r\n\
Connection: close\r\n\r\n"
    );
    let resp = raw_request(e.gw.proxy, raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = e.up.last();
    assert_eq!(seen.uri, "/public/info");
    assert!(seen.header("x-identity-assertion").is_none(), "{seen:?}");
}

#[tokio::test]
async fn custom_header_name_and_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let key = realmgate::assertion::AssertionKey::generate().unwrap();
    let path = dir.path().join("assertion.pem");
    std::fs::write(&path, key.private_pem().unwrap()).unwrap();
    let e = env(&format!(
        "assertion: {{enabled: true, header: X-Gateway-Proof, key_file: \"{}\"}}",
        path.display()
    ))
    .await;
    // The published key is the file's key (stable across restarts and replicas).
    let (_, body) = jwks(&e.gw).await;
    let set: JwkSet = serde_json::from_str(&body.unwrap()).unwrap();
    assert_eq!(set.keys[0].common.key_id.as_deref(), Some(key.kid()));

    let r = client()
        .post(e.gw.url("/api/orders"))
        .header("host", "acme.qa.example.com")
        .header("authorization", format!("Bearer {}", token(&e)))
        .header("x-gateway-proof", "forged")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = e.up.last();
    let values = seen.headers_named("x-gateway-proof");
    assert_eq!(values.len(), 1, "{values:?}");
    let c = verify(&set, values[0], "backend");
    assert_eq!(c["method"], "POST");
    assert_eq!(c["path"], "/api/orders");
    assert_eq!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap(), 60);
    assert!(c.get("scope").is_none(), "authenticated-only route: {c}");
    assert!(seen.header("x-identity-assertion").is_none());
}

#[tokio::test]
async fn disabled_by_default_no_header_and_no_jwks() {
    let e = env("").await;
    let (status, _) = jwks(&e.gw).await;
    assert_eq!(status, 404);
    let r = client()
        .get(e.gw.url("/api/me"))
        .header("host", "acme.qa.example.com")
        .header("authorization", format!("Bearer {}", token(&e)))
        .header("x-identity-assertion", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = e.up.last();
    assert_eq!(seen.header("x-user-id"), Some("u-1"));
    assert!(seen.header("x-identity-assertion").is_none(), "{seen:?}");
}

#[test]
fn config_errors_name_the_field() {
    let base = r#"
listen: {proxy: "127.0.0.1:1", admin: "127.0.0.1:2"}
upstream: {default: "127.0.0.1:3"}
keycloak: {base_url: "http://kc", audiences: [x]}
"#;
    let cases = [
        ("{enabled: true, ttl: 0s}", "assertion.ttl"),
        ("{enabled: true, ttl: 2h}", "assertion.ttl"),
        (
            "{enabled: true, header: \"bad header\"}",
            "assertion.header",
        ),
        ("{enabled: true, audience: \"\"}", "assertion.audience"),
        (
            "{enabled: true, key_file: /nonexistent/key.pem}",
            "assertion.key_file",
        ),
        ("{enabled: true, algorithm: HS256}", "unknown field"),
    ];
    for (section, want) in cases {
        let yaml = format!("{base}assertion: {section}\n");
        let err = match realmgate::config::from_str(&yaml, &std::collections::HashMap::new()) {
            Ok(_) => panic!("{section} should be refused"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(want), "{section}: {err}");
    }
    // Off: nothing is checked or loaded.
    let yaml = format!("{base}assertion: {{enabled: false, key_file: /nonexistent}}\n");
    let cfg = realmgate::config::from_str(&yaml, &std::collections::HashMap::new()).unwrap();
    assert!(cfg.assertion.is_none());
}
