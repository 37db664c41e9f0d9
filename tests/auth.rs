//! End-to-end JWT verification through the gateway against a real (mock) Keycloak over HTTP:
//! per-realm JWKS, rotation, kid-miss storms, IdP outages, and every refusal path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::idp::{claims, now, MockKeycloak, Mode, SigningKey};
use common::*;
use serde_json::{json, Value};

fn config(kc: &MockKeycloak, extra_keycloak: &str) -> String {
    let refresh = if extra_keycloak.contains("jwks_refresh") {
        ""
    } else {
        "jwks_refresh: 1h"
    };
    TestConfig::new(&kc.base())
        .keycloak("leeway: 0s")
        .keycloak(refresh)
        .keycloak("refetch_wait: 3s")
        .keycloak(extra_keycloak)
        .with(
            r#"
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}
  - {id: globex, realm: tenant-globex, hosts: [globex.qa.example.com]}
host_patterns:
  - {pattern: "{tenant}.dyn.example.com", realm: "tenant-{tenant}"}
routes:
  - {path: "/public/**", public: true}
  - {path: "/**", authenticated: true}
"#,
        )
}

struct Env {
    kc: MockKeycloak,
    acme: SigningKey,
    globex: SigningKey,
    up: Upstream,
    gw: Gateway,
}

async fn env_with(extra: &str) -> Env {
    let kc = MockKeycloak::start().await;
    let acme = SigningKey::rsa("acme-1");
    let globex = SigningKey::rsa("globex-1");
    kc.set_keys("tenant-acme", &[&acme]);
    kc.set_keys("tenant-globex", &[&globex]);
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&kc, extra), up.addr);
    wait_ready(&gw).await;
    Env {
        kc,
        acme,
        globex,
        up,
        gw,
    }
}

async fn env() -> Env {
    env_with("").await
}

async fn wait_ready(gw: &Gateway) {
    for _ in 0..200 {
        if let Ok(r) = client().get(gw.admin_url("/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway never became ready");
}

async fn call(
    gw: &Gateway,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut req = client().get(gw.url(path)).header("host", host);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let www = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    (status, www, body)
}

fn acme_claims(e: &Env) -> Value {
    claims(&e.kc.base(), "tenant-acme", "u-1", &["viewer", "agent"])
}

async fn expect_401(e: &Env, token: &str, code: &str) {
    let (status, www, body) = call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(token)).await;
    assert_eq!(status, 401, "{code}: {body}");
    assert_eq!(body["error"], code, "{body}");
    let www = www.expect("401 carries WWW-Authenticate");
    assert!(www.starts_with("Bearer realm=\"acme\""), "{www}");
    assert!(www.contains("error=\"invalid_token\""), "{www}");
    assert!(
        !body.to_string().contains(token),
        "the token must not be echoed"
    );
}

#[tokio::test]
async fn valid_token_forwards_verified_identity() {
    let e = env().await;
    let token = e.acme.sign(&acme_claims(&e));
    let raw = format!(
        "GET /api/v1/me HTTP/1.1\r\nHost: acme.qa.example.com\r\nAuthorization: bearer {token}\r\n\
X-User-ID: admin\r\nX_User_Roles: super_admin\r\nConnection: close\r\n\r\n"
    );
    let resp = raw_request(e.gw.proxy, raw.as_bytes()).await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let seen = e.up.last();
    assert_eq!(seen.headers_named("x-user-id"), vec!["u-1"]);
    assert_eq!(seen.header("x-user-name"), Some("user-u-1"));
    assert_eq!(seen.header("x-user-email"), Some("u-1@example.com"));
    let roles = seen.header("x-user-roles").unwrap();
    for r in ["viewer", "agent", "client-reader"] {
        assert!(roles.split(',').any(|x| x == r), "{roles}");
    }
    assert!(
        !roles.contains("super_admin") && !roles.contains("ignored"),
        "{roles}"
    );
    assert_eq!(seen.header("x-tenant-id"), Some("acme"));
    // Legacy backends still read the token: kept by default.
    assert!(seen.header("authorization").is_some());
}

#[tokio::test]
async fn missing_token_is_401_without_error_attribute() {
    let e = env().await;
    let (status, www, body) = call(&e.gw, "acme.qa.example.com", "/api/v1/me", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"], "missing_token");
    assert_eq!(www.as_deref(), Some("Bearer realm=\"acme\""));
    // Public routes need no token.
    let (status, _, _) = call(&e.gw, "acme.qa.example.com", "/public/x", None).await;
    assert_eq!(status, 200);
    assert_eq!(e.up.count(), 1);
}

#[tokio::test]
async fn time_claims_are_enforced() {
    let e = env().await;
    let mut c = acme_claims(&e);
    c["exp"] = json!(now() - 10);
    expect_401(&e, &e.acme.sign(&c), "token_expired").await;
    let mut c = acme_claims(&e);
    c["nbf"] = json!(now() + 600);
    expect_401(&e, &e.acme.sign(&c), "token_not_yet_valid").await;
    let mut c = acme_claims(&e);
    c["iat"] = json!(now() + 600);
    expect_401(&e, &e.acme.sign(&c), "token_issued_in_future").await;
    let mut c = acme_claims(&e);
    c.as_object_mut().unwrap().remove("exp");
    expect_401(&e, &e.acme.sign(&c), "malformed_token").await;
    assert_eq!(e.up.count(), 0);
}

#[tokio::test]
async fn issuer_audience_and_type_are_enforced() {
    let e = env().await;
    let mut c = acme_claims(&e);
    c["iss"] = json!("https://evil.example.com/realms/tenant-acme");
    expect_401(&e, &e.acme.sign(&c), "issuer_mismatch").await;

    // A globex token (its own realm, its own key) on acme's host.
    let g = claims(&e.kc.base(), "tenant-globex", "g-1", &["tenant_admin"]);
    let gt = e.globex.sign(&g);
    expect_401(&e, &gt, "issuer_mismatch").await;
    let (status, _, _) = call(&e.gw, "globex.qa.example.com", "/api/v1/me", Some(&gt)).await;
    assert_eq!(status, 200, "the same token is fine on its own tenant");

    // acme's issuer but signed with globex's key under acme's kid: the key belongs to acme.
    let forged = e.globex.sign_as("acme-1", &acme_claims(&e));
    expect_401(&e, &forged, "bad_signature").await;

    let mut c = acme_claims(&e);
    c["aud"] = json!("account");
    c["azp"] = json!("some-other-client");
    expect_401(&e, &e.acme.sign(&c), "audience_mismatch").await;
    // RFC 9068 §4: `azp` naming this service is not enough (a token issued to the same client
    // for another resource server would replay here); `keycloak.accept_azp_as_audience` is off.
    let mut c = acme_claims(&e);
    c["aud"] = json!("account");
    c["azp"] = json!("qa-platform-backend");
    expect_401(&e, &e.acme.sign(&c), "audience_mismatch").await;
    let mut c = acme_claims(&e);
    c["aud"] = json!(["account", "qa-platform-backend"]);
    c["azp"] = json!("some-other-client");
    let (status, _, _) = call(
        &e.gw,
        "acme.qa.example.com",
        "/api/v1/me",
        Some(&e.acme.sign(&c)),
    )
    .await;
    assert_eq!(status, 200, "aud array containing the audience is accepted");

    for typ in ["ID", "Refresh"] {
        let mut c = acme_claims(&e);
        c["typ"] = json!(typ);
        expect_401(&e, &e.acme.sign(&c), "wrong_token_type").await;
    }
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
}

#[tokio::test]
async fn algorithm_attacks_are_refused() {
    let e = env().await;
    let c = acme_claims(&e);
    // alg none
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "kid": "acme-1"})),
        b64(&c)
    );
    expect_401(&e, &none, "alg_not_allowed").await;
    // HS256 "signed" with the realm's public key as the HMAC secret.
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("acme-1".into());
    let secret = e.acme.jwk.to_string();
    let hs = jsonwebtoken::encode(
        &h,
        &c,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap();
    expect_401(&e, &hs, "alg_not_allowed").await;
    // Header-embedded key material and critical extensions.
    let good = e.acme.sign(&c);
    let parts: Vec<&str> = good.split('.').collect();
    for hdr in [
        json!({"alg": "RS256", "kid": "acme-1", "jku": "https://evil/jwks"}),
        json!({"alg": "RS256", "kid": "acme-1", "x5u": "https://evil/cert"}),
        json!({"alg": "RS256", "kid": "acme-1", "jwk": e.globex.jwk}),
        json!({"alg": "RS256", "kid": "acme-1", "crit": ["exp"], "exp": 1}),
    ] {
        let t = format!("{}.{}.{}", b64(&hdr), parts[1], parts[2]);
        expect_401(&e, &t, "forbidden_header").await;
    }
    // Garbage and tampering.
    expect_401(&e, "not-a-jwt", "malformed_token").await;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&json!({"sub": "admin"})),
        parts[2]
    );
    let (status, _, _) = call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&tampered)).await;
    assert_eq!(status, 401);
    assert_eq!(e.up.count(), 0);
}

#[tokio::test]
async fn oversized_token_is_401_not_500() {
    let e = env().await;
    // Over keycloak.max_token_bytes (16 KiB), within limits.max_header_line_bytes (20 KiB).
    let big = format!("{}.{}.sig", "e".repeat(10 * 1024), "p".repeat(8 * 1024));
    let (status, _, body) = call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&big)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "token_too_large");
    // Past the header-line bound the head is refused before the token is looked at.
    let huge = format!("{}.{}.sig", "e".repeat(40 * 1024), "p".repeat(24 * 1024));
    let (status, _, body) = call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&huge)).await;
    assert_eq!(status, 431, "{body}");
    assert_eq!(body["error"], "headers_too_large");
}

#[tokio::test]
async fn unknown_kid_refetches_after_rotation_once() {
    let e = env_with("jwks_min_refetch_interval: 3s").await;
    let ghost = SigningKey::rsa("acme-ghost");
    let rotated = SigningKey::rsa("acme-2");
    // The start-up load counts as this interval's fetch.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let before = e.kc.jwks_hits("tenant-acme");
    e.kc.set_keys("tenant-acme", &[&e.acme, &rotated]);
    let t = rotated.sign(&acme_claims(&e));
    let (status, _, body) = call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(e.kc.jwks_hits("tenant-acme"), before + 1);
    // A kid nobody publishes: refused, and within the refetch interval no new fetch.
    expect_401(&e, &ghost.sign(&acme_claims(&e)), "unknown_key").await;
    assert_eq!(e.kc.jwks_hits("tenant-acme"), before + 1);
    // A known kid with a bad signature never triggers a refetch.
    let forged = e.globex.sign_as("acme-2", &acme_claims(&e));
    expect_401(&e, &forged, "bad_signature").await;
    assert_eq!(e.kc.jwks_hits("tenant-acme"), before + 1);
}

#[tokio::test]
async fn kid_miss_storm_costs_at_most_one_fetch() {
    let e = env().await;
    let before = e.kc.total_hits();
    let c = acme_claims(&e);
    let mut tasks = Vec::new();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    for i in 0..1000 {
        let t = e.acme.sign_as(&format!("random-kid-{i}"), &c);
        let url = e.gw.url("/api/v1/me");
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .get(url)
                .header("host", "acme.qa.example.com")
                .header("authorization", format!("Bearer {t}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    for t in tasks {
        let status = t.await.unwrap().unwrap();
        assert_eq!(status, 401);
    }
    let fetches = e.kc.total_hits() - before;
    assert!(
        fetches <= 2,
        "{fetches} fetches (discovery + JWKS count as one refetch)"
    );
    assert_eq!(e.up.count(), 0);
}

#[tokio::test]
async fn idp_down_keeps_known_keys_working() {
    let e = env().await;
    let t = e.acme.sign(&acme_claims(&e));
    assert_eq!(
        call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t))
            .await
            .0,
        200
    );
    e.kc.set_mode(Mode::Fail500);
    let mut c = acme_claims(&e);
    c["sub"] = json!("u-2"); // a new token: not in the verified-token cache
    let t2 = e.acme.sign(&c);
    assert_eq!(
        call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t2))
            .await
            .0,
        200
    );
    // An unknown kid while the IdP is down is still only a 401.
    let ghost = SigningKey::rsa("acme-x");
    expect_401(&e, &ghost.sign(&acme_claims(&e)), "unknown_key").await;
}

#[tokio::test]
async fn stale_keys_expire_after_max_stale() {
    let e =
        env_with("jwks_refresh: 1s\n  jwks_max_stale: 2s\n  jwks_min_refetch_interval: 1s").await;
    let t = e.acme.sign(&acme_claims(&e));
    assert_eq!(
        call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t))
            .await
            .0,
        200
    );
    e.kc.set_mode(Mode::Fail500);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut c = acme_claims(&e);
    c["sub"] = json!("u-late");
    let (status, _, body) = call(
        &e.gw,
        "acme.qa.example.com",
        "/api/v1/me",
        Some(&e.acme.sign(&c)),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "realm_unavailable");
    let text = e.gw.metrics_text().await;
    assert!(
        text.contains("realmgate_jwks_fetch_total{realm=\"tenant-acme\",result=\"error\"}"),
        "{text}"
    );
}

/// Readiness says whether this replica can serve, not whether every tenant can: a realm
/// deleted at the IdP is reported in the details and its tenant refused, while the replica
/// stays in service for the others. Fails before: /readyz was 503 for one missing realm.
#[tokio::test]
async fn one_missing_realm_does_not_take_the_replica_out_of_service() {
    let kc = MockKeycloak::start().await;
    let acme = SigningKey::rsa("acme-1");
    kc.set_keys("tenant-acme", &[&acme]);
    // tenant-globex does not exist at the IdP.
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&kc, ""), up.addr);
    wait_ready(&gw).await;
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["realms"]["usable"], 1, "{body}");
    assert_eq!(
        body["realms"]["unusable_names"],
        json!(["tenant-globex"]),
        "{body}"
    );
    let t = acme.sign(&claims(&kc.base(), "tenant-acme", "u", &[]));
    let (status, _, _) = call(&gw, "acme.qa.example.com", "/api/v1/me", Some(&t)).await;
    assert_eq!(status, 200);
    let metrics = gw.metrics_text().await;
    assert!(
        metrics.contains("realmgate_static_realms{state=\"unusable\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn never_loaded_realm_while_idp_down_is_503() {
    let kc = MockKeycloak::start().await;
    let acme = SigningKey::rsa("acme-1");
    kc.set_keys("tenant-acme", &[&acme]);
    kc.set_mode(Mode::Fail500);
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&kc, ""), up.addr);
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503, "not ready without keys");
    let t = acme.sign(&claims(&kc.base(), "tenant-acme", "u", &[]));
    let r = client()
        .get(gw.url("/api/v1/me"))
        .header("host", "acme.qa.example.com")
        .header("authorization", format!("Bearer {t}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "realm_unavailable");
    // The IdP comes back: the realm loads and the same token works.
    kc.set_mode(Mode::Normal);
    let mut ok = false;
    for _ in 0..100 {
        let r = client()
            .get(gw.url("/api/v1/me"))
            .header("host", "acme.qa.example.com")
            .header("authorization", format!("Bearer {t}"))
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "realm never recovered");
}

#[tokio::test]
async fn dynamic_realms_load_lazily_and_unknown_ones_are_negatively_cached() {
    let e = env().await;
    let initech = SigningKey::rsa("initech-1");
    e.kc.set_keys("tenant-initech", &[&initech]);
    let t = initech.sign(&claims(&e.kc.base(), "tenant-initech", "i-1", &["viewer"]));
    let (status, _, body) = call(&e.gw, "initech.dyn.example.com", "/api/v1/me", Some(&t)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(e.up.last().header("x-tenant-id"), Some("initech"));
    assert_eq!(e.up.last().header("x-realm"), Some("tenant-initech"));

    let before = e.kc.total_hits();
    let nobody = initech.sign(&claims(&e.kc.base(), "tenant-nobody", "n", &[]));
    let (status, _, body) =
        call(&e.gw, "nobody.dyn.example.com", "/api/v1/me", Some(&nobody)).await;
    // Answered like a token of an existing realm signed by a key it lacks: a distinct answer
    // would tell a prober which tenants exist.
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unknown_key");
    let stranger = SigningKey::rsa("nobody-knows");
    let foreign = stranger.sign(&claims(&e.kc.base(), "tenant-initech", "i-1", &["viewer"]));
    let (s2, _, b2) = call(
        &e.gw,
        "initech.dyn.example.com",
        "/api/v1/me",
        Some(&foreign),
    )
    .await;
    assert_eq!(
        (s2, &b2["error"], &b2["message"]),
        (status, &body["error"], &body["message"])
    );
    let after_first = e.kc.total_hits();
    assert!(after_first > before);
    let (status, _, _) = call(&e.gw, "nobody.dyn.example.com", "/api/v1/me", Some(&nobody)).await;
    assert_eq!(status, 401);
    assert_eq!(
        e.kc.total_hits(),
        after_first,
        "negative cache: no second fetch"
    );
}

#[tokio::test]
async fn cached_token_is_refused_once_expired() {
    let e = env().await;
    let mut c = acme_claims(&e);
    c["exp"] = json!(now() + 2);
    let t = e.acme.sign(&c);
    assert_eq!(
        call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t))
            .await
            .0,
        200
    );
    assert_eq!(
        call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t))
            .await
            .0,
        200
    );
    tokio::time::sleep(Duration::from_millis(3100)).await;
    expect_401(&e, &t, "token_expired").await;
}

#[tokio::test]
async fn removed_key_revokes_cached_tokens() {
    let e = env_with("jwks_min_refetch_interval: 1s").await;
    let t = e.acme.sign(&acme_claims(&e));
    assert_eq!(
        call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t))
            .await
            .0,
        200
    );
    // Rotate acme-1 out; a token with the new kid triggers the refetch that retires acme-1.
    let next = SigningKey::rsa("acme-3");
    e.kc.set_keys("tenant-acme", &[&next]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let t3 = next.sign(&acme_claims(&e));
    assert_eq!(
        call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t3))
            .await
            .0,
        200
    );
    let (status, _, body) = call(&e.gw, "acme.qa.example.com", "/api/v1/me", Some(&t)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unknown_key");
}
