//! Test harness: the real gateway on ephemeral ports (Pingora on its own thread, stopped
//! through a channel), a real recording upstream, and helpers for raw HTTP.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
// The harness plays a client: it writes raw bytes on its own sockets.
#![allow(clippy::disallowed_methods)]

pub mod idp;
mod template;

// Not every test binary builds its config from the template.
#[allow(unused_imports)]
pub use template::TestConfig;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures::StreamExt;
use parking_lot::Mutex;
use pingora::server::ShutdownSignal;
use realmgate::app::server::{build_server, run_with_channel, ProcessOptions};
use realmgate::config::{self, RuntimeConfig};
use realmgate::state::Shared;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Polls `cond` every 5 ms until it holds; fails the test after 10 s naming `what`.
pub async fn until(mut cond: impl FnMut() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not within 10s: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A port that was free a moment ago (Pingora cannot report what it bound for `:0`).
/// A port nothing listens on. Never the same port twice in one test process: the kernel may
/// hand an ephemeral port out again once its probe socket is closed, and two parallel tests
/// (or a gateway's proxy and admin ports) must not collide.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock();
    loop {
        let port = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn wait_port(addr: SocketAddr) {
    for _ in 0..500 {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{addr} never accepted connections");
}

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The body arrived whole (false: the stream broke off, as when the gateway cuts it).
    pub body_complete: bool,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP upstream that records what reached it.
/// Routes: `/echo` sends the request body back once read; `/stall` never reads it;
/// `/big/{n}` returns n bytes; `/sleep/{ms}` answers late; `/ws` is a WebSocket echo;
/// anything else answers JSON describing the request.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Upstream {
    pub async fn start() -> Self {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rec = seen.clone();
        let app = Router::new()
            .route(
                "/ws",
                any(|ws: WebSocketUpgrade| async move {
                    ws.on_upgrade(|mut socket| async move {
                        while let Some(Ok(msg)) = socket.recv().await {
                            if let Message::Text(_) | Message::Binary(_) = msg {
                                if socket.send(msg).await.is_err() {
                                    break;
                                }
                            }
                        }
                    })
                }),
            )
            .fallback(move |req: Request| {
                let rec = rec.clone();
                async move { record(rec, req).await }
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, seen }
    }

    pub fn take(&self) -> Vec<Seen> {
        std::mem::take(&mut *self.seen.lock())
    }

    pub fn count(&self) -> usize {
        self.seen.lock().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .last()
            .cloned()
            .expect("the upstream saw no request")
    }
}

async fn record(rec: Arc<Mutex<Vec<Seen>>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts.uri.path().to_string();
    if path == "/echo" {
        rec.lock().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers,
            body_len: 0,
            body_complete: true,
        });
        // Read the whole body, then send it back, as an HTTP/1.1 application does. Echoing
        // while still reading would be full duplex, which Pingora's HTTP/1 upstream session
        // cannot carry once both socket buffers fill (README, "Known limitations").
        return match axum::body::to_bytes(body, usize::MAX).await {
            Ok(bytes) => Response::new(Body::from(bytes)),
            Err(_) => axum::http::StatusCode::BAD_REQUEST.into_response(),
        };
    }
    if path == "/stall" {
        // Sends its head and one chunk, then neither reads the request body nor finishes the
        // response: an upload to it stalls once the socket buffers fill.
        let first = futures::stream::once(async {
            Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"started"))
        });
        return Response::new(Body::from_stream(first.chain(futures::stream::pending())));
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        return "slept".into_response();
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        rec.lock().push(Seen {
            method: parts.method.to_string(),
            uri: parts.uri.to_string(),
            headers,
            body_len: 0,
            body_complete: true,
        });
        let chunk = bytes::Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = n / chunk.len();
        let stream =
            futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        return Response::new(Body::from_stream(stream));
    }
    let mut len = 0;
    let mut complete = true;
    let mut stream = body.into_data_stream();
    while let Some(c) = stream.next().await {
        match c {
            Ok(c) => len += c.len(),
            Err(_) => {
                complete = false;
                break;
            }
        }
    }
    let seen = Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: headers.clone(),
        body_len: len,
        body_complete: complete,
    };
    rec.lock().push(seen);
    axum::Json(json!({"method": parts.method.as_str(), "uri": parts.uri.to_string(), "headers": headers, "body_len": len}))
        .into_response()
}

/// The real gateway, on its own thread, on ephemeral ports.
pub struct Gateway {
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The operator's write listener, when the config turns it on (`{WRITES}`).
    pub writes: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    stop: Option<tokio::sync::mpsc::Sender<ShutdownSignal>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Replaces `{PROXY}`, `{ADMIN}`, `{UPSTREAM}` and (with a free port) `{WRITES}` in a YAML
/// template.
pub fn render(
    template: &str,
    proxy: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
) -> String {
    template
        .replace("{PROXY}", &proxy.to_string())
        .replace("{ADMIN}", &admin.to_string())
        .replace("{UPSTREAM}", &upstream.to_string())
        .replace("{WRITES}", &format!("127.0.0.1:{}", free_port()))
}

/// The admin bearer secret the tests' write listeners accept.
pub const ADMIN_TOKEN: &str = "test-admin-secret-0123456789abcdef0123456789";

/// A file holding [`ADMIN_TOKEN`] (written once per test process).
pub fn admin_token_file() -> std::path::PathBuf {
    static FILE: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let p =
            std::env::temp_dir().join(format!("realmgate-test-admin-token-{}", std::process::id()));
        std::fs::write(&p, format!("{ADMIN_TOKEN}\n")).unwrap();
        p
    })
    .clone()
}

/// The `admin:` section that turns the write listener on (its port from `render`).
pub fn admin_writes_yaml() -> String {
    format!(
        "admin:\n  writes: {{listen: \"{{WRITES}}\", token_file: \"{}\"}}\n",
        admin_token_file().display()
    )
}

impl Gateway {
    /// Starts the gateway on a config template (see [`render`]).
    pub fn start(template: &str, upstream: SocketAddr) -> Self {
        let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let yaml = render(template, proxy, admin, upstream);
        let cfg = config::from_str(&yaml, &std::collections::HashMap::new())
            .unwrap_or_else(|e| panic!("{e}"));
        Self::start_config(cfg)
    }

    pub fn start_config(cfg: RuntimeConfig) -> Self {
        let (proxy, admin) = (cfg.proxy_addr, cfg.admin_addr);
        let writes = cfg.admin.writes.as_ref().map(|w| w.addr);
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let (shared_tx, shared_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let (server, shared) =
                build_server(cfg, &ProcessOptions::default()).expect("server builds");
            shared_tx.send(shared).unwrap();
            run_with_channel(server, rx);
        });
        let shared = shared_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server started");
        wait_port(proxy);
        wait_port(admin);
        if let Some(w) = writes {
            wait_port(w);
        }
        Self {
            proxy,
            admin,
            writes,
            shared,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.proxy, path)
    }

    /// The `/metrics` exposition text.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.admin, path)
    }

    /// A URL on the operator's write listener (the config must turn it on).
    pub fn writes_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.writes.expect("admin.writes configured"),
            path
        )
    }

    /// Stops with a graceful or fast signal and waits for the server thread.
    pub fn stop_with(&mut self, signal: ShutdownSignal) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.try_send(signal);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop_with(ShutdownSignal::FastShutdown);
    }
}

/// A client that never pools (each test request is independent) and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Sends raw bytes and returns the raw response head and body as text.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

pub fn status_of(raw: &str) -> u16 {
    raw.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn json_body(raw: &str) -> Value {
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}
