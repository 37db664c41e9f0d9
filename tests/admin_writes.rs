//! Security review T3-H1: the operator's writes (`POST /revoke`, `POST /not-before`) are not on
//! the listener backends, Prometheus and kubelet reach. They have their own listener, off
//! unless a bearer secret is configured, and every write needs the secret, JSON, a rate bound
//! and a realm that is configured or loaded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::idp::{claims, MockKeycloak, SigningKey};
use common::{admin_writes_yaml, client, Gateway, Upstream, ADMIN_TOKEN};
use serde_json::{json, Value};

const HOST: &str = "acme.qa.example.com";

fn config(kc: &MockKeycloak, admin: &str) -> String {
    format!(
        r#"
listen: {{proxy: "{{PROXY}}", admin: "{{ADMIN}}"}}
server: {{threads: 1, grace_period: 0s, graceful_shutdown_timeout: 1s, watch_config: false}}
upstream: {{default: "{{UPSTREAM}}"}}
keycloak: {{base_url: "{base}", audiences: [qa-platform-backend]}}
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [{HOST}]}}
routes:
  - {{path: "/api/**", authenticated: true}}
default_policy: deny
logging: {{access_log: false}}
{admin}
"#,
        base = kc.base()
    )
}

struct Env {
    kc: MockKeycloak,
    key: SigningKey,
    up: Upstream,
}

impl Env {
    async fn new() -> Self {
        let kc = MockKeycloak::start().await;
        let key = SigningKey::rsa("acme-1");
        kc.set_keys("tenant-acme", &[&key]);
        let up = Upstream::start().await;
        Self { kc, key, up }
    }

    fn gateway(&self, admin: &str) -> Gateway {
        Gateway::start(&config(&self.kc, admin), self.up.addr)
    }

    fn token(&self, sub: &str) -> String {
        self.key
            .sign(&claims(&self.kc.base(), "tenant-acme", sub, &["viewer"]))
    }
}

async fn status(gw: &Gateway, token: &str) -> u16 {
    client()
        .get(gw.url("/api/x"))
        .header("host", HOST)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// POSTs `body` as JSON to `url` with an optional bearer secret: status, body, headers.
async fn post(
    url: &str,
    secret: Option<&str>,
    body: Value,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut r = client().post(url).json(&body);
    if let Some(s) = secret {
        r = r.bearer_auth(s);
    }
    let r = r.send().await.unwrap();
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_credential_nothing_anywhere_accepts_writes() {
    let env = Env::new().await;
    let gw = env.gateway("");
    assert!(
        gw.writes.is_none(),
        "no write listener without admin.writes"
    );
    let tok = env.token("olga");
    assert_eq!(status(&gw, &tok).await, 200);
    // The read listener (backends, Prometheus, kubelet reach it) changes nothing.
    for path in ["/revoke", "/not-before"] {
        let (s, body, headers) = post(
            &gw.admin_url(path),
            None,
            json!({"tenant": "acme", "sub": "olga"}),
        )
        .await;
        assert_eq!(s, 405, "{path}: {body}");
        assert_eq!(headers["allow"], "GET, HEAD");
        assert_eq!(body["error"], "method_not_allowed");
    }
    assert!(gw.shared.revoker.list.is_empty());
    assert_eq!(status(&gw, &tok).await, 200);
    // Reads stay where they were.
    let r = client().get(gw.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_need_the_secret_json_a_known_realm_and_stay_within_the_rate() {
    let env = Env::new().await;
    let admin = admin_writes_yaml().replace("token_file", "rate_per_second: 2, token_file");
    let gw = env.gateway(&admin);
    let url = gw.writes_url("/revoke");
    let tok = env.token("pia");
    assert_eq!(status(&gw, &tok).await, 200);
    let target = json!({"tenant": "acme", "sub": "pia"});

    // No secret, a wrong one, a prefix of the right one: 401 with a challenge.
    for secret in [
        None,
        Some("wrong-secret-wrong-secret-wrong-secret"),
        Some(&ADMIN_TOKEN[..20]),
    ] {
        let (s, body, headers) = post(&url, secret, target.clone()).await;
        assert_eq!(s, 401, "{secret:?}: {body}");
        assert!(headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
    // Not JSON.
    let r = client()
        .post(&url)
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "text/plain")
        .body(target.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert!(gw.shared.revoker.list.is_empty(), "nothing revoked so far");

    // A realm nobody configured and nothing loaded: refused, nothing held (an attacker cannot
    // fill the list with invented realms).
    let rate_wait = || tokio::time::sleep(Duration::from_millis(600));
    rate_wait().await;
    let (s, body, _) = post(
        &url,
        Some(ADMIN_TOKEN),
        json!({"realm": "tenant-invented", "sub": "x"}),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (404, Some("unknown_realm")),
        "{body}"
    );
    assert!(gw.shared.revoker.list.is_empty());

    // The real thing.
    rate_wait().await;
    let (s, body, _) = post(&url, Some(ADMIN_TOKEN), target.clone()).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["revoked"]["kind"], "sub");
    assert_eq!(status(&gw, &tok).await, 401);

    // The rate bound: 2/s with a burst of 4; a tight loop runs into 429 with Retry-After.
    let mut limited = None;
    for i in 0..20 {
        let (s, _, headers) = post(
            &url,
            Some(ADMIN_TOKEN),
            json!({"tenant": "acme", "sub": format!("u{i}")}),
        )
        .await;
        if s == 429 {
            limited = Some(headers["retry-after"].to_str().unwrap().to_string());
            break;
        }
        assert_eq!(s, 200);
    }
    assert_eq!(limited.as_deref(), Some("1"), "a write loop is rate-bound");
    let m = client()
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("realmgate_admin_writes_total{result=\"unauthorized\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("realmgate_admin_writes_total{result=\"rate_limited\"}"),
        "{m}"
    );

    // The write listener serves nothing else (the assertion JWKS and metrics stay on reads).
    for path in ["/metrics", "/.well-known/jwks.json", "/readyz"] {
        let r = client()
            .get(gw.writes_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_body_has_a_total_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let env = Env::new().await;
    let gw = env.gateway(&admin_writes_yaml());
    let mut s = tokio::net::TcpStream::connect(gw.writes.unwrap())
        .await
        .unwrap();
    let head = format!(
        "POST /revoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    #[allow(clippy::disallowed_methods)] // the test plays a slow client
    s.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not ended by the deadline");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
}

#[test]
fn write_settings_are_validated_with_field_names() {
    let base = |admin: &str| {
        format!(
            "listen: {{proxy: \"127.0.0.1:1\", admin: \"127.0.0.1:2\"}}\nupstream: {{default: \"127.0.0.1:3\"}}\nkeycloak: {{base_url: \"http://127.0.0.1:4\", audiences: [a]}}\n{admin}"
        )
    };
    let err = |admin: &str| {
        realmgate::config::from_str(&base(admin), &HashMap::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    let short = std::env::temp_dir().join(format!("realmgate-short-token-{}", std::process::id()));
    std::fs::write(&short, "too-short").unwrap();
    let cases = [
        (
            "admin: {writes: {listen: \"127.0.0.1:9\"}}",
            "admin.writes: name exactly one of token_file or token_env",
        ),
        (
            "admin: {writes: {listen: \"127.0.0.1:2\", token_env: REALMGATE_TEST_UNSET_VAR}}",
            "admin.writes.listen: must differ",
        ),
        (
            "admin: {writes: {listen: \"127.0.0.1:9\", token_env: REALMGATE_TEST_UNSET_VAR}}",
            "admin.writes: environment variable REALMGATE_TEST_UNSET_VAR is not set",
        ),
        (
            &format!(
                "admin: {{writes: {{listen: \"127.0.0.1:9\", token_file: \"{}\"}}}}",
                short.display()
            ),
            "admin.writes.token_file: the secret must be one line of at least 32 characters",
        ),
        (
            "admin: {max_connections: 0}",
            "admin.max_connections: must be between 1 and 100000",
        ),
    ];
    for (admin, want) in cases {
        let e = err(admin);
        assert!(e.contains(want), "{admin}\n  -> {e}");
    }
    let ok = realmgate::config::from_str(
        &base(&common::admin_writes_yaml().replace("{WRITES}", "127.0.0.1:9")),
        &HashMap::new(),
    )
    .unwrap();
    let w = ok.admin.writes.unwrap();
    assert!(w.token.matches(ADMIN_TOKEN.as_bytes()));
    assert!(!w.token.matches(b"nope"));
    assert_eq!(
        format!("{:?}", w.token),
        "AdminToken(***)",
        "the secret never prints"
    );
}
