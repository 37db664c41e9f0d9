//! End to end: hostile and merely careless clients. Idle keep-alive connections, slowloris
//! heads, the connection cap, the per-route body bound, requests per connection and HTTP/1.1
//! pipelining, over real sockets against the real gateway and upstream.
#![allow(clippy::disallowed_methods, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::idp::{claims, MockKeycloak, SigningKey};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ACME: &str = "acme.qa.example.com";
const SHADOW: &str = "other.qa.example.com";

fn config(kc: &str, downstream: &str) -> String {
    TestConfig::new(kc)
        .upstream("read_timeout: 5s")
        .keycloak("require_keys_for_ready: false")
        .with(&format!(
            r#"
downstream: {{{downstream}}}
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [{ACME}]}}
  - {{id: other, realm: tenant-other, hosts: [{SHADOW}]}}
roles: {{viewer: ["users.read.own"]}}
routes:
  - {{path: "/public/**", public: true}}
  - {{path: "/upload/**", public: true, max_body_bytes: 1024}}
  - {{path: "/**", authenticated: true}}
"#
        ))
}

struct Env {
    kc: MockKeycloak,
    key: SigningKey,
    up: Upstream,
    gw: Gateway,
}

async fn env(downstream: &str) -> Env {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("k1");
    kc.set_keys("tenant-acme", &[&key]);
    kc.set_keys("tenant-other", &[&key]);
    let up = Upstream::start().await;
    let gw = Gateway::start(&config(&kc.base(), downstream), up.addr);
    Env { kc, key, up, gw }
}

impl Env {
    fn token(&self, realm: &str) -> String {
        self.key
            .sign(&claims(&self.kc.base(), realm, "u-1", &["viewer"]))
    }

    /// `/readyz` answers 200: the gateway stayed in service throughout.
    async fn assert_ready(&self) {
        let r = client()
            .get(self.gw.admin_url("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }
}

fn get(host: &str, path: &str, token: Option<&str>) -> String {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n{auth}\r\n")
}

/// Reads one HTTP/1.1 response (head and `Content-Length` body); `None` at end of stream.
async fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(u16, String)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (n, v) = l.split_once(':')?;
                    n.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let mut chunk = [0u8; 4096];
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            buf.drain(..end + 4 + len);
            return Some((status_of(&head), body));
        }
        let mut chunk = [0u8; 4096];
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A new connection with one public request written on it.
async fn connect_and_send(gw: &Gateway, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw.proxy).await.unwrap();
    s.write_all(get(ACME, path, None).as_bytes()).await.unwrap();
    s
}

/// True when the peer closed the connection (end of stream or reset) within `within`.
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(within, s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_after_the_idle_timeout() {
    let e = env("idle_timeout: 1s").await;
    let mut conns = Vec::new();
    for _ in 0..1000 {
        conns.push(connect_and_send(&e.gw, "/public/a").await);
    }
    let served = Instant::now();
    for s in &mut conns {
        let mut buf = Vec::new();
        assert_eq!(read_response(s, &mut buf).await.unwrap().0, 200);
    }
    let mut closed = 0;
    for s in &mut conns {
        if closed_within(s, Duration::from_secs(5)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 1000, "every idle connection was closed");
    let took = served.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "not before the timeout: {took:?}"
    );
    e.assert_ready().await;
}

#[tokio::test]
async fn a_slowloris_head_is_cut_at_the_head_deadline() {
    let e = env("idle_timeout: 10s, head_timeout: 2s").await;
    let mut s = TcpStream::connect(e.gw.proxy).await.unwrap();
    let head = get(ACME, "/public/a", None);
    let start = Instant::now();
    let mut sent = 0;
    let mut cut = false;
    // One byte a second: each well within the idle timeout, the head never complete.
    for b in head.as_bytes().iter().take(head.len() - 1) {
        if s.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        sent += 1;
        if closed_within(&mut s, Duration::from_secs(1)).await {
            cut = true;
            break;
        }
    }
    let took = start.elapsed();
    assert!(cut, "the connection was cut after {sent} bytes");
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "cut at the 2 s head deadline, not per byte: {took:?} after {sent} bytes"
    );
    assert_eq!(e.up.count(), 0, "nothing reached the upstream");
    e.assert_ready().await;
}

#[tokio::test]
async fn connections_past_the_cap_are_refused_while_open_ones_are_served() {
    let e = env("max_connections: 20").await;
    let mut open = Vec::new();
    for _ in 0..20 {
        let mut s = connect_and_send(&e.gw, "/public/a").await;
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf).await.unwrap().0, 200);
        open.push(s);
    }
    // The 21st is answered 503 and closed.
    let mut extra = TcpStream::connect(e.gw.proxy).await.unwrap();
    let mut buf = Vec::new();
    let (status, body) = read_response(&mut extra, &mut buf).await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("too_many_connections"), "{body}");
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    // The open ones keep being served.
    for s in open.iter_mut().take(3) {
        s.write_all(get(ACME, "/public/b", None).as_bytes())
            .await
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(s, &mut buf).await.unwrap().0, 200);
    }
    // A closed one frees its slot.
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        let mut s = connect_and_send(&e.gw, "/public/c").await;
        let mut buf = Vec::new();
        if let Some((200, _)) = read_response(&mut s, &mut buf).await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a slot came free");
    let metrics = e.gw.metrics_text().await;
    assert!(
        metrics.contains("realmgate_downstream_closed_total{reason=\"connection_limit\"}"),
        "{metrics}"
    );
    e.assert_ready().await;
}

#[tokio::test]
async fn a_body_over_the_route_bound_is_413_and_never_reaches_the_upstream() {
    let e = env("").await;
    // Declared: refused before anything is forwarded.
    let big = "x".repeat(2048);
    let raw = raw_request(
        e.gw.proxy,
        format!(
            "POST /upload/a HTTP/1.1\r\nhost: {ACME}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{big}",
            big.len()
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(status_of(&raw), 413, "{raw}");
    assert_eq!(json_body(&raw)["error"], "body_too_large");
    // Chunked: cut while streaming; the upstream never gets a complete request.
    let chunked = format!(
        "POST /upload/b HTTP/1.1\r\nhost: {ACME}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
        "y".repeat(1024),
        "z".repeat(1024)
    );
    let raw = raw_request(e.gw.proxy, chunked.as_bytes()).await;
    assert_eq!(status_of(&raw), 413, "{raw}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Its head may have gone ahead (bodies stream), but the body broke off: the backend
    // never sees a complete request.
    let seen = e.up.take();
    assert!(
        seen.iter().all(|r| !r.body_complete && r.body_len <= 1024),
        "nothing complete reached the upstream: {:?}",
        seen.iter()
            .map(|r| (r.uri.clone(), r.body_len, r.body_complete))
            .collect::<Vec<_>>()
    );
    // Within the bound it streams through; other routes have the generous global bound.
    let ok = client()
        .post(e.gw.url("/upload/c"))
        .header("host", ACME)
        .body("x".repeat(1024))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let ok = client()
        .post(e.gw.url("/public/d"))
        .header("host", ACME)
        .body("x".repeat(100_000))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(e.up.count(), 2);
    e.assert_ready().await;
}

#[tokio::test]
async fn a_connection_serves_at_most_max_requests_per_connection() {
    let e = env("max_requests_per_connection: 3").await;
    let mut s = TcpStream::connect(e.gw.proxy).await.unwrap();
    let mut buf = Vec::new();
    let mut served = 0;
    for _ in 0..10 {
        if s.write_all(get(ACME, "/public/a", None).as_bytes())
            .await
            .is_err()
        {
            break;
        }
        match read_response(&mut s, &mut buf).await {
            Some((200, _)) => served += 1,
            _ => break,
        }
    }
    assert_eq!(served, 3);
    e.assert_ready().await;
}

#[tokio::test]
async fn pipelined_requests_are_each_decided_and_answered_in_order() {
    let e = env("").await;
    let acme = e.token("tenant-acme");
    let other = e.token("tenant-other");
    let mut s = TcpStream::connect(e.gw.proxy).await.unwrap();
    // Three requests in one write: a verified one, one without a token, one for another
    // tenant with that tenant's token, and the acme token again on the other tenant.
    let batch = [
        get(ACME, "/api/1", Some(&acme)),
        get(ACME, "/api/2", None),
        get(SHADOW, "/api/3", Some(&other)),
        get(SHADOW, "/api/4", Some(&acme)),
    ]
    .concat();
    s.write_all(batch.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(read_response(&mut s, &mut buf).await.unwrap().0);
    }
    assert_eq!(statuses, vec![200, 401, 200, 401]);
    let seen = e.up.take();
    let paths: Vec<(String, Option<String>)> = seen
        .iter()
        .map(|r| (r.uri.clone(), r.header("x-tenant-id").map(str::to_string)))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("/api/1".to_string(), Some("acme".to_string())),
            ("/api/3".to_string(), Some("other".to_string())),
        ]
    );
    e.assert_ready().await;
}

#[tokio::test]
async fn a_refused_request_with_an_unread_body_closes_the_connection() {
    let e = env("").await;
    // The refused request's body looks like a request; it must never be run as one, and
    // the request pipelined after it must not be answered on this connection.
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nhost: {ACME}\r\n\r\n");
    let batch = format!(
        "POST /api/x HTTP/1.1\r\nhost: {ACME}\r\ncontent-length: {}\r\n\r\n{smuggled}{}",
        smuggled.len(),
        get(ACME, "/public/after", None)
    );
    let mut s = TcpStream::connect(e.gw.proxy).await.unwrap();
    s.write_all(batch.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut s, &mut buf).await.unwrap().0, 401);
    assert!(
        read_response(&mut s, &mut buf).await.is_none(),
        "nothing more is answered on this connection"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        e.up.take().iter().all(|r| r.uri != "/smuggled"),
        "the body was never run as a request"
    );
    e.assert_ready().await;
}
