//! What reaches the backend, end to end: unverified credentials are dropped, method/path
//! override and client-address headers are stripped, non-canonical methods and oversized
//! heads are refused before anything else, and shadow mode keeps authentication and marks
//! its passes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::idp::{claims, MockKeycloak, SigningKey};
use common::{json_body, raw_request, status_of, Gateway, Upstream};

const CONFIG: &str = r#"
listen: {proxy: "{PROXY}", admin: "{ADMIN}"}
upstream: {default: "{UPSTREAM}"}
keycloak: {base_url: "{BASE}", audiences: [qa-platform-backend], require_keys_for_ready: false, token_cookie: kc_token}
logging: {access_log: false}
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.test]}
  - {id: shadowco, realm: tenant-shadow, hosts: [shadow.test], enforce: false}
roles: {viewer: ["users.read.own"]}
routes:
  - {path: "/public/**", public: true}
  - {path: "/me", authenticated: true}
  - {path: "/users/{id}", methods: [DELETE], permission: users.delete.tenant}
"#;

struct World {
    _kc: MockKeycloak,
    up: Upstream,
    gw: Gateway,
    acme: String,
    shadow: String,
}

async fn world() -> World {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("k1");
    kc.set_keys("tenant-acme", &[&key]);
    kc.set_keys("tenant-shadow", &[&key]);
    let up = Upstream::start().await;
    let gw = Gateway::start(&CONFIG.replace("{BASE}", &kc.base()), up.addr);
    let acme = key.sign(&claims(&kc.base(), "tenant-acme", "u-1", &["viewer"]));
    let shadow = key.sign(&claims(&kc.base(), "tenant-shadow", "u-2", &["viewer"]));
    World {
        _kc: kc,
        up,
        gw,
        acme,
        shadow,
    }
}

impl World {
    async fn send(&self, method: &str, host: &str, target: &str, headers: &str) -> String {
        raw_request(
            self.gw.proxy,
            format!(
                "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
    }
}

// Fails before the fix: the upstream received `Authorization: Bearer junk` and `kc_token=junk`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_credentials_never_reach_the_backend() {
    let w = world().await;
    let raw = w
        .send(
            "GET",
            "acme.test",
            "/public/x",
            "Authorization: Bearer junk\r\nCookie: theme=dark; kc_token=junk; lang=en\r\n",
        )
        .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = w.up.last();
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("cookie"), Some("theme=dark; lang=en"));

    // A verified token is forwarded as today (legacy backends read it).
    let raw = w
        .send(
            "GET",
            "acme.test",
            "/me",
            &format!("Authorization: Bearer {}\r\n", w.acme),
        )
        .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert!(w.up.last().header("authorization").is_some());
}

// Fails before the fix: every one of these headers reached the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_and_client_address_headers_are_stripped() {
    let w = world().await;
    let spoof = [
        "X-HTTP-Method-Override: DELETE",
        "X-HTTP-Method: DELETE",
        "X-Method-Override: DELETE",
        "X-Original-URL: /admin",
        "X-Rewrite-URL: /admin",
        "x_original_url: /admin",
        "X-Real-IP: 10.0.0.1",
        "True-Client-IP: 10.0.0.1",
        "X-Forwarded-Port: 1",
        "X-Forwarded-Prefix: /admin",
    ];
    let headers: String = spoof.iter().map(|h| format!("{h}\r\n")).collect();
    let raw = w
        .send(
            "GET",
            "acme.test",
            "/me",
            &format!("Authorization: Bearer {}\r\n{headers}", w.acme),
        )
        .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = w.up.last();
    for h in spoof {
        let name = h.split(':').next().unwrap();
        assert_eq!(seen.header(name), None, "{name} reached the backend");
    }
}

// Fails before the fix: `delete` fell through the DELETE-scoped rule to 403/route default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lower_case_methods_are_refused() {
    let w = world().await;
    for m in ["delete", "Get", "pOST"] {
        let raw = w
            .send(
                m,
                "acme.test",
                "/public/x",
                &format!("Authorization: Bearer {}\r\n", w.acme),
            )
            .await;
        assert_eq!(status_of(&raw), 400, "{m}: {raw}");
        assert_eq!(json_body(&raw)["error"], "invalid_method");
    }
    assert_eq!(w.up.count(), 0);
    let raw = w.send("PROPFIND", "acme.test", "/public/x", "").await;
    assert_eq!(
        status_of(&raw),
        200,
        "upper-case extension methods pass: {raw}"
    );
}

// Fails before the fix: all three were forwarded (Pingora accepts 1 MiB of headers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_before_anything_else() {
    let w = world().await;
    let long = format!("/public/{}", "a".repeat(8 * 1024));
    let raw = w.send("GET", "acme.test", &long, "").await;
    assert_eq!(status_of(&raw), 414, "{raw}");
    assert_eq!(json_body(&raw)["error"], "uri_too_long");

    let line = format!("X-Big: {}\r\n", "b".repeat(21 * 1024));
    let raw = w.send("GET", "acme.test", "/public/x", &line).await;
    assert_eq!(status_of(&raw), 431, "{raw}");
    assert_eq!(json_body(&raw)["error"], "headers_too_large");

    let many: String = (0..8)
        .map(|i| format!("X-Part-{i}: {}\r\n", "c".repeat(9 * 1024)))
        .collect();
    let raw = w.send("GET", "nobody.test", "/public/x", &many).await;
    assert_eq!(
        status_of(&raw),
        431,
        "refused before the host is resolved: {raw}"
    );
    assert_eq!(w.up.count(), 0, "nothing reached the upstream");

    // Just under the bounds still passes.
    let fits = format!("/public/{}", "a".repeat(8 * 1024 - 9));
    let raw = w.send("GET", "acme.test", &fits, "").await;
    assert_eq!(status_of(&raw), 200, "{raw}");
}

// Fails before the fix: the unrouted request passed without a token, and no pass was marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_keeps_authentication_and_marks_its_passes() {
    let w = world().await;
    let raw = w.send("GET", "shadow.test", "/nowhere", "").await;
    assert_eq!(status_of(&raw), 401, "{raw}");
    assert_eq!(w.up.count(), 0);

    let auth = format!("Authorization: Bearer {}\r\n", w.shadow);
    let raw = w.send("GET", "shadow.test", "/nowhere", &auth).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = w.up.last();
    assert_eq!(seen.header("x-auth-shadow"), Some("route_denied"));
    assert_eq!(seen.header("x-user-id"), Some("u-2"));

    let raw = w.send("DELETE", "shadow.test", "/users/7", &auth).await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(w.up.last().header("x-auth-shadow"), Some("forbidden"));

    // An enforced request carries no mark, and a client cannot forge one.
    let raw = w
        .send(
            "GET",
            "acme.test",
            "/me",
            &format!(
                "Authorization: Bearer {}\r\nX-Auth-Shadow: forbidden\r\n",
                w.acme
            ),
        )
        .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(w.up.last().header("x-auth-shadow"), None);
}
