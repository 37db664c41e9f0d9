//! End-to-end: Host -> tenant routing, identity-header hygiene, forwarding, streaming,
//! WebSocket, upstream failures and the admin listener, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const SECTIONS: &str = r#"
tenants:
  - {id: default, realm: qa-default, hosts: [qa.example.com]}
  - {id: acme, realm: tenant-acme, hosts: [acme.qa.example.com, app.acmecorp.com]}
  - {id: initech, realm: tenant-initech, hosts: [initech.qa.example.com], status: suspended}
host_patterns:
  - {pattern: "{tenant}.qa.example.com", realm: "tenant-{tenant}"}
routes:
  - {path: "/**", public: true}
"#;

fn base_config() -> String {
    TestConfig::new("http://127.0.0.1:9")
        .threads(1)
        .upstream("connect_timeout: 1s, read_timeout: 2s")
        .keycloak("require_keys_for_ready: false")
        .with(SECTIONS)
}

async fn setup() -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let gw = Gateway::start(&base_config(), up.addr);
    (up, gw)
}

async fn get(gw: &Gateway, host: &str, path: &str) -> reqwest::Response {
    client()
        .get(gw.url(path))
        .header("host", host)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn routes_exact_custom_and_wildcard_hosts() {
    let (up, gw) = setup().await;
    for (host, tenant, realm) in [
        ("acme.qa.example.com", "acme", "tenant-acme"),
        ("app.acmecorp.com", "acme", "tenant-acme"),
        ("qa.example.com", "default", "qa-default"),
        ("globex.qa.example.com", "globex", "tenant-globex"),
        ("ACME.QA.Example.COM", "acme", "tenant-acme"),
        ("acme.qa.example.com:8080", "acme", "tenant-acme"),
        ("acme.qa.example.com.", "acme", "tenant-acme"),
        ("Globex.QA.example.com.:443", "globex", "tenant-globex"),
    ] {
        let r = get(&gw, host, "/api/v1/things?x=1").await;
        assert_eq!(r.status(), 200, "{host}");
        let seen = up.last();
        assert_eq!(seen.header("x-tenant-id"), Some(tenant), "{host}");
        assert_eq!(seen.header("x-realm"), Some(realm), "{host}");
        assert_eq!(seen.uri, "/api/v1/things?x=1");
    }
}

#[tokio::test]
async fn unknown_and_invalid_hosts_are_refused() {
    let (up, gw) = setup().await;
    for host in [
        "evil.example.org",
        "a.b.qa.example.com",
        "example.com",
        "qa.example.com.evil.org",
    ] {
        let r = get(&gw, host, "/").await;
        assert_eq!(r.status(), 404, "{host}");
        assert!(r.headers().contains_key("x-request-id"));
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unknown_host", "{host}");
    }
    for host in [
        "acme..qa.example.com",
        "acme.qa.example.com..",
        "ac me.qa.example.com",
        "acme.qa.example.com:99999",
    ] {
        let raw = raw_request(
            gw.proxy,
            format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status_of(&raw), 400, "{host}: {raw}");
    }
    assert_eq!(up.count(), 0, "nothing may reach the upstream");
}

#[tokio::test]
async fn duplicate_host_and_absolute_form_mismatch_are_400() {
    let (up, gw) = setup().await;
    let raw = raw_request(
        gw.proxy,
        b"GET / HTTP/1.1\r\nHost: acme.qa.example.com\r\nHost: globex.qa.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    // Pingora's HTTP/1 parser already refuses a repeated Host before any filter runs; the
    // gateway's own check covers the paths where the parser lets one through.
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert!(
        json_body(&raw).is_null() || json_body(&raw)["error"] == "duplicate_host",
        "{raw}"
    );

    let raw = raw_request(
        gw.proxy,
        b"GET http://globex.qa.example.com/x HTTP/1.1\r\nHost: acme.qa.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 400, "{raw}");
    assert!(
        json_body(&raw).is_null() || json_body(&raw)["error"] == "host_mismatch",
        "{raw}"
    );

    // A matching absolute-form target is fine.
    let raw = raw_request(
        gw.proxy,
        b"GET http://acme.qa.example.com/x HTTP/1.1\r\nHost: acme.qa.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    assert_eq!(up.count(), 1);
    assert_eq!(up.last().header("x-tenant-id"), Some("acme"));
    assert_eq!(up.last().uri, "/x", "forwarded in origin form");
}

#[tokio::test]
async fn suspended_tenant_is_403_and_nothing_reaches_upstream() {
    let (up, gw) = setup().await;
    let r = get(&gw, "initech.qa.example.com", "/api/v1/users").await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "tenant_suspended");
    assert_eq!(up.count(), 0);
}

#[tokio::test]
async fn spoofed_identity_headers_never_reach_upstream() {
    let (up, gw) = setup().await;
    let raw = raw_request(
        gw.proxy,
        b"GET /x HTTP/1.1\r\nHost: acme.qa.example.com\r\nX-Tenant-ID: globex\r\nx-tenant-id: evil\r\n\
X_Tenant_ID: evil2\r\nX-Realm: tenant-globex\r\nX-User-Roles: super_admin\r\nX_User_ID: root\r\n\
X-Auth-Scope: tenant\r\nX-User-ID: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&raw), 200, "{raw}");
    let seen = up.last();
    assert_eq!(seen.headers_named("x-tenant-id"), vec!["acme"]);
    assert_eq!(seen.headers_named("x-realm"), vec!["tenant-acme"]);
    let mut tenant_headers = 0;
    for (name, _) in &seen.headers {
        let folded = name.to_ascii_lowercase().replace('_', "-");
        assert!(
            !folded.starts_with("x-user-") && !folded.starts_with("x-auth-"),
            "{name} reached the upstream"
        );
        if folded == "x-tenant-id" || folded == "x-realm" {
            tenant_headers += 1;
        }
    }
    assert_eq!(
        tenant_headers, 2,
        "only the gateway's X-Tenant-ID and X-Realm: {:?}",
        seen.headers
    );
    assert!(seen.header("x-user-roles").is_none());
    assert!(seen.header("x-user-id").is_none());
    assert!(seen.header("x-auth-scope").is_none());
}

#[tokio::test]
async fn request_id_is_kept_when_valid_and_generated_otherwise() {
    let (up, gw) = setup().await;
    let r = client()
        .get(gw.url("/"))
        .header("host", "acme.qa.example.com")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(up.last().header("x-request-id"), Some("abc-123"));

    let r = client()
        .get(gw.url("/"))
        .header("host", "acme.qa.example.com")
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32);
    assert_eq!(up.last().header("x-request-id"), Some(id.as_str()));

    let r = get(&gw, "nope.example.org", "/").await;
    assert_eq!(r.headers()["x-request-id"].len(), 32);
}

#[tokio::test]
async fn forwarding_headers_are_set_by_the_gateway() {
    let (up, gw) = setup().await;
    client()
        .get(gw.url("/"))
        .header("host", "app.acmecorp.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .send()
        .await
        .unwrap();
    let seen = up.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("app.acmecorp.com"));
    assert_eq!(
        seen.header("forwarded"),
        Some("for=127.0.0.1;proto=http;host=\"app.acmecorp.com\"")
    );
}

#[tokio::test]
async fn ten_mib_bodies_stream_both_ways() {
    let (_up, gw) = setup().await;
    let body: Vec<u8> = (0..10 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let r = client()
        .post(gw.url("/echo"))
        .header("host", "acme.qa.example.com")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let back = r.bytes().await.unwrap();
    assert_eq!(back.len(), body.len());
    assert!(back == body, "echoed body differs");

    let r = get(
        &gw,
        "acme.qa.example.com",
        &format!("/big/{}", 10 * 1024 * 1024),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), 10 * 1024 * 1024);
}

/// An upstream that stops reading the request body and stops sending: the gateway's upload
/// blocks once the socket buffers fill, and Pingora's HTTP/1 upstream session does not read
/// the response while a body write is blocked. The write timeout, then the read timeout, must
/// end the exchange; without them it would hang until the client's own 20 s timeout. The same
/// bounds end a full-duplex stall (README, "Known limitations").
#[tokio::test]
async fn stalled_upload_is_ended_by_the_upstream_timeouts() {
    let up = Upstream::start().await;
    let config = base_config().replace("read_timeout: 2s", "read_timeout: 2s, write_timeout: 1s");
    let gw = Gateway::start(&config, up.addr);
    let outcome = async {
        let r = client()
            .post(gw.url("/stall"))
            .header("host", "acme.qa.example.com")
            // Far more than loopback socket buffers hold, so the upstream write must block.
            .body(vec![b'u'; 64 * 1024 * 1024])
            .send()
            .await?;
        let status = r.status();
        r.bytes().await.map(|b| (status, b))
    }
    .await;
    match outcome {
        // The timeouts fired before the response head was forwarded.
        Ok((status, body)) => {
            assert_eq!(status, 504);
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(body["error"], "upstream_timeout");
        }
        // The head was already forwarded: the gateway cuts the connection.
        Err(e) => assert!(!e.is_timeout(), "the gateway held the stalled upload: {e}"),
    }
    // The gateway is unharmed.
    assert_eq!(get(&gw, "acme.qa.example.com", "/").await.status(), 200);
}

#[tokio::test]
async fn websocket_upgrade_passes_through() {
    let (up, gw) = setup().await;
    let mut req = format!("ws://{}/ws", gw.proxy)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("host", "acme.qa.example.com".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::Text(format!("hello {i}").into()))
            .await
            .unwrap();
        let msg = ws.next().await.unwrap().unwrap();
        assert_eq!(msg.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    ws.close(None).await.unwrap();
    drop(up);
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    let up = Upstream::start().await;
    // A port with nothing listening.
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = Gateway::start(&base_config(), dead);
    let r = get(&gw, "acme.qa.example.com", "/").await;
    assert_eq!(r.status(), 502);
    assert!(r.headers().contains_key("x-request-id"));
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable");
    drop(gw);

    let gw = Gateway::start(&base_config(), up.addr);
    let r = get(&gw, "acme.qa.example.com", "/sleep/4000").await;
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_timeout");
}

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_metrics() {
    let (up, gw) = setup().await;
    get(&gw, "acme.qa.example.com", "/").await;
    get(&gw, "unknown.example.org", "/").await;
    let c = client();
    assert_eq!(
        c.get(gw.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.get(gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let text = gw.metrics_text().await;
    assert!(
        text.contains("realmgate_requests_total{status=\"200\",tenant=\"acme\"}"),
        "{text}"
    );
    assert!(
        text.contains("realmgate_requests_total{status=\"404\",tenant=\"none\"}"),
        "{text}"
    );
    assert!(text.contains("realmgate_request_duration_seconds_bucket{le=\"0.00001\"}"));
    assert!(text.contains("realmgate_rejections_total{code=\"unknown_host\"}"));

    // The proxy port never answers admin paths itself: they are just upstream paths there.
    let before = up.count();
    let r = get(&gw, "acme.qa.example.com", "/metrics").await;
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["uri"], "/metrics");
    assert_eq!(up.count(), before + 1);
}

/// Double-encoded escapes and escapes that are not shortest-form UTF-8 are refused with
/// `invalid_path` before anything reaches the upstream; `paths.double_encoding: allow` lets a
/// literal `%25xx` through, unchanged.
#[tokio::test]
async fn double_encoding_and_invalid_utf8_escapes_are_refused() {
    let (up, gw) = setup().await;
    for path in [
        "/admin%252F..",
        "/public/%252e%252e/admin",
        "/a%25%32%46b",
        "/a%C0%AFb",
        "/a%E0%80%AF",
        "/a%80",
        "/a%C3",
        "/a%ED%A0%80",
    ] {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: acme.qa.example.com\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_request(gw.proxy, raw.as_bytes()).await;
        assert_eq!(status_of(&resp), 400, "{path}: {resp}");
        assert_eq!(json_body(&resp)["error"], "invalid_path", "{path}");
    }
    assert_eq!(up.count(), 0, "nothing may reach the upstream");

    let up = Upstream::start().await;
    let lenient = base_config().replace(
        "logging: {access_log: false}",
        "paths: {double_encoding: allow}\nlogging: {access_log: false}",
    );
    let gw = Gateway::start(&lenient, up.addr);
    let resp = raw_request(
        gw.proxy,
        b"GET /files/a%252Fb HTTP/1.1\r\nHost: acme.qa.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(up.last().uri, "/files/a%252Fb");
    let resp = raw_request(
        gw.proxy,
        b"GET /a%C0%AF HTTP/1.1\r\nHost: acme.qa.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 400, "UTF-8 is checked either way: {resp}");
}

/// A host pattern never turns a tenant into another one: a suspended tenant whose id differs
/// from the id its realm derives stays suspended when reached through the pattern (it used to
/// come back as a fresh, active tenant on the same realm), and a pattern host whose derived
/// id belongs to a tenant of another realm is refused.
#[tokio::test]
async fn host_patterns_resolve_to_the_tenant_owning_the_realm() {
    let up = Upstream::start().await;
    let config = base_config().replace(
        "host_patterns:",
        "  - {id: umbrella, realm: tenant-umbrella-corp, status: suspended}\nhost_patterns:",
    );
    let gw = Gateway::start(&config, up.addr);
    let r = get(&gw, "umbrella-corp.qa.example.com", "/api/v1/users").await;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "tenant_suspended");
    // "umbrella" and "default" are tenants of other realms than tenant-umbrella and
    // tenant-default: the pattern must not mint a second tenant with their ids.
    for host in ["umbrella.qa.example.com", "default.qa.example.com"] {
        let r = get(&gw, host, "/api/v1/users").await;
        assert_eq!(r.status(), 404, "{host}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"], "unknown_host", "{host}");
    }
    assert_eq!(up.count(), 0, "nothing may reach the upstream");
    // A realm that only the pattern knows is still a dynamic tenant.
    let r = get(&gw, "beta.qa.example.com", "/x").await;
    assert_eq!(r.status(), 200);
    assert_eq!(up.last().header("x-tenant-id"), Some("beta"));
}
