//! Loaders end to end through the gateway: a grant key absent from Redis is a cache miss
//! answered by the platform's source of truth — a real PostgreSQL (127.0.0.1:5432, trust) or a
//! real HTTP endpoint — with write-back, single flight, and fail-closed failures. Redis is the
//! real one on 127.0.0.1:6379, invalidation is client tracking, nothing is published.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::idp::{claims, MockKeycloak, SigningKey};
use common::*;
use serde_json::Value;

fn unique() -> String {
    format!("{:016x}", rand::random::<u64>())
}

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli must be installed (it ships with redis-server)");
    assert_eq!(
        String::from_utf8_lossy(
            &Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", "6379", "PING"])
                .output()
                .unwrap()
                .stdout
        )
        .trim(),
        "PONG",
        "Redis must run on 127.0.0.1:6379"
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database of its own on the real PostgreSQL, with the platform's two permission tables;
/// dropped at the end.
struct Db {
    name: String,
    client: tokio_postgres::Client,
}

const PG: &str = "host=127.0.0.1 port=5432 user=postgres";

async fn connect(db: &str) -> tokio_postgres::Client {
    let (client, conn) =
        tokio_postgres::connect(&format!("{PG} dbname={db}"), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|e| {
                panic!("PostgreSQL must accept user postgres on 127.0.0.1:5432 (trust): {e}")
            });
    tokio::spawn(conn);
    client
}

impl Db {
    async fn new() -> Self {
        let name = format!("rgloader_{}", unique());
        connect("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let client = connect(&name).await;
        client
            .batch_execute(
                "CREATE TABLE user_permissions (tenant_id text, user_id text, code text);
                 CREATE TABLE role_permissions (tenant_id text, role_id text, code text);",
            )
            .await
            .unwrap();
        Self { name, client }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    async fn grant_user(&self, tenant: &str, user: &str, code: &str) {
        self.client
            .execute(
                "INSERT INTO user_permissions VALUES ($1, $2, $3)",
                &[&tenant, &user, &code],
            )
            .await
            .unwrap();
    }

    async fn revoke_user(&self, tenant: &str, user: &str) {
        self.client
            .execute(
                "DELETE FROM user_permissions WHERE tenant_id = $1 AND user_id = $2",
                &[&tenant, &user],
            )
            .await
            .unwrap();
    }

    async fn grant_role(&self, tenant: &str, role: &str, code: &str) {
        self.client
            .execute(
                "INSERT INTO role_permissions VALUES ($1, $2, $3)",
                &[&tenant, &role, &code],
            )
            .await
            .unwrap();
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                "-X",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
            ])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

fn config(kc: &MockKeycloak, prefix: &str, loader: &str) -> String {
    TestConfig::new(&kc.base()).with(&format!(
        r#"
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}}
roles:
  viewer: ["users.read.own"]
scopes: [own, team, tenant]
routes:
  - {{path: "/api/v1/users", methods: [GET], permission: users.read.own}}
  - {{path: "/api/v1/users/{{id}}", methods: [DELETE], permission: users.delete.tenant}}
  - {{path: "/api/v1/reports/**", methods: [GET], permission: reports.read.team}}
default_policy: deny
redis:
  url: "redis://127.0.0.1:6379"
  cache_ttl: 30s
  degraded_ttl: 1s
  command_timeout: 200ms
  key_prefix: "{prefix}"
  channel: "{prefix}invalidate"
  invalidation: tracking
  loader:
{loader}
"#
    ))
}

struct Env {
    kc: MockKeycloak,
    key: SigningKey,
    _up: Upstream,
    gw: Gateway,
    prefix: String,
}

impl Env {
    async fn start(loader: &str) -> Self {
        let kc = MockKeycloak::start().await;
        let key = SigningKey::rsa("acme-1");
        kc.set_keys("tenant-acme", &[&key]);
        let up = Upstream::start().await;
        let prefix = format!("rgl{}:", unique());
        let gw = Gateway::start(&config(&kc, &prefix, loader), up.addr);
        let env = Self {
            kc,
            key,
            _up: up,
            gw,
            prefix,
        };
        let grants = &env.gw.shared.grants;
        until(
            || grants.invalidation_mode() == "tracking",
            "tracking is up",
        )
        .await;
        env
    }

    fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.key
            .sign(&claims(&self.kc.base(), "tenant-acme", sub, roles))
    }

    async fn call(&self, method: &str, path: &str, token: &str) -> u16 {
        let r = client()
            .request(method.parse().unwrap(), self.gw.url(path))
            .header("host", "acme.qa.example.com")
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        assert!(status < 500, "never a 5xx: {status}");
        status
    }

    /// Polls until the call answers `want`, for at most a second; returns how long it took.
    async fn eventually(&self, method: &str, path: &str, token: &str, want: u16) -> Duration {
        let start = Instant::now();
        loop {
            let status = self.call(method, path, token).await;
            if status == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "still {status} after 1 s (wanted {want})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn user_key(&self, sub: &str) -> String {
        format!("{}tenant:acme:user:{sub}:permissions", self.prefix)
    }

    fn role_key(&self, role: &str) -> String {
        format!("{}tenant:acme:role:{role}:permissions", self.prefix)
    }

    async fn metric(&self, line_start: &str) -> u64 {
        let text = self.gw.metrics_text().await;
        text.lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let keys = redis_cli(&["--scan", "--pattern", &format!("{}*", self.prefix)]);
        for k in keys.lines().filter(|k| !k.is_empty()) {
            redis_cli(&["DEL", k]);
        }
    }
}

async fn wait_for_key(key: &str) -> (Vec<String>, i64) {
    let start = Instant::now();
    loop {
        let members = redis_cli(&["SMEMBERS", key]);
        if !members.is_empty() {
            let ttl: i64 = redis_cli(&["TTL", key]).parse().unwrap();
            return (members.lines().map(str::to_owned).collect(), ttl);
        }
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{key} was not written back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn postgres_loader(db: &Db, write_back: bool) -> String {
    format!(
        r#"    timeout: 500ms
    negative_ttl: 2s
    write_back: {{enabled: {write_back}}}
    postgres:
      url: "{url}"
      user_query: "SELECT code FROM user_permissions WHERE tenant_id = $1 AND user_id = $2"
      role_query: "SELECT code FROM role_permissions WHERE tenant_id = $1 AND role_id = $2"
      pool_size: 2"#,
        url = db.url()
    )
}

/// The seed platform's cache-aside life cycle: the key is absent (never filled, deleted on
/// change, or expired) and the gateway asks PostgreSQL, refills Redis with the seed's TTLs,
/// and follows a row deleted in the database plus the application's `DEL`.
#[tokio::test]
async fn postgres_loader_answers_misses_and_writes_back_with_the_seed_ttls() {
    let db = Db::new().await;
    let e = Env::start(&postgres_loader(&db, true)).await;
    db.grant_user("acme", "u-db", "users.delete.tenant").await;
    db.grant_role("acme", "auditor", "reports.read.team").await;
    let t = e.token("u-db", &["auditor"]);
    let key = e.user_key("u-db");

    // Never cached: the database answers, and the key is back in Redis with its TTL.
    assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 200);
    assert_eq!(e.call("GET", "/api/v1/reports/q1", &t).await, 200);
    let (members, ttl) = wait_for_key(&key).await;
    assert_eq!(members, ["users.delete.tenant"]);
    assert!((1..=300).contains(&ttl), "user ttl {ttl}");
    let (members, ttl) = wait_for_key(&e.role_key("auditor")).await;
    assert_eq!(members, ["reports.read.team"]);
    assert!((301..=3600).contains(&ttl), "role ttl {ttl}");

    // The application deletes its cache entry: still allowed (from the database), refilled.
    redis_cli(&["DEL", &key]);
    for _ in 0..20 {
        assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 200);
    }
    wait_for_key(&key).await;

    // The entry expires: still allowed, refilled.
    redis_cli(&["PEXPIRE", &key, "30"]);
    let start = Instant::now();
    while redis_cli(&["EXISTS", &key]) != "0" {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "key did not expire"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 200);
    wait_for_key(&key).await;

    // The grant is revoked in the database and the application deletes its copy: refused.
    // (After the last refill has landed: a refill racing the DEL is the cache-aside race
    // every filler of this layout has, the application included.)
    tokio::time::sleep(Duration::from_millis(100)).await;
    db.revoke_user("acme", "u-db").await;
    redis_cli(&["DEL", &key]);
    let took = e.eventually("DELETE", "/api/v1/users/1", &t, 403).await;
    println!("row deleted + DEL -> refused after {took:?}");
    // The role grant is untouched, and the empty answer was not written back.
    assert_eq!(e.call("GET", "/api/v1/reports/q1", &t).await, 200);
    assert_eq!(redis_cli(&["EXISTS", &key]), "0");
    assert!(
        e.metric("realmgate_grant_loader_calls_total{loader=\"postgres\",result=\"found\"}")
            .await
            >= 4
    );
    assert!(e.metric("realmgate_grant_age_seconds_count").await >= 1);
    assert!(
        e.metric("realmgate_grant_write_backs_total{result=\"ok\"}")
            .await
            >= 3
    );
}

/// Without write-back the gateway never writes into the application's Redis; a present key
/// is the truth (the loader is not asked), and an absent one is answered every time the
/// compiled set is rebuilt (after the negative TTL for empty answers).
#[tokio::test]
async fn without_write_back_redis_is_left_alone_and_present_keys_win() {
    let db = Db::new().await;
    let e = Env::start(&postgres_loader(&db, false)).await;
    db.grant_user("acme", "u-ro", "users.delete.tenant").await;
    let t = e.token("u-ro", &[]);
    assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(redis_cli(&["EXISTS", &e.user_key("u-ro")]), "0");
    // A present key is what the application cached: it wins over the database.
    redis_cli(&["SADD", &e.user_key("u-ro"), "users.read.own"]);
    e.eventually("DELETE", "/api/v1/users/1", &t, 403).await;
    assert_eq!(e.call("GET", "/api/v1/users", &t).await, 200);
}

/// Loader down: grants only the database holds are refused, config and Redis-held grants still
/// work, nothing answers 5xx, and a backing-off loader is not called on every request.
#[tokio::test]
async fn loader_down_fails_closed_without_a_5xx() {
    let dead = free_port();
    let loader = format!(
        r#"    timeout: 300ms
    postgres:
      url: "postgres://postgres@127.0.0.1:{dead}/nothing"
      user_query: "SELECT code FROM user_permissions WHERE tenant_id = $1 AND user_id = $2""#
    );
    let e = Env::start(&loader).await;
    let t = e.token("u-down", &["viewer"]);
    let start = Instant::now();
    for _ in 0..50 {
        // Database-only grant: refused (fail closed), never a 5xx.
        assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 403);
        // Config grant (role viewer): still allowed.
        assert_eq!(e.call("GET", "/api/v1/users", &t).await, 200);
    }
    assert!(start.elapsed() < Duration::from_secs(10), "no hang");
    // A grant Redis holds needs no loader: it applies.
    redis_cli(&["SADD", &e.user_key("u-down"), "users.delete.tenant"]);
    e.eventually("DELETE", "/api/v1/users/1", &t, 200).await;
    let errors = e
        .metric("realmgate_grant_loader_calls_total{loader=\"postgres\",result=\"error\"}")
        .await
        + e.metric("realmgate_grant_loader_calls_total{loader=\"postgres\",result=\"timeout\"}")
            .await;
    assert!(errors >= 1, "the failure is counted");
    // 100 requests, 1 s degraded TTL, backoff: far fewer calls than requests.
    assert!(
        errors < 20,
        "a failing loader is backed off ({errors} calls)"
    );
}

/// A real HTTP permission endpoint, as the FastAPI backend would serve it.
#[derive(Default)]
struct Endpoint {
    calls: AtomicUsize,
    /// Milliseconds each answer waits.
    delay_ms: AtomicU64,
    /// 0 ok, 1 oversized body, 2 not JSON, 3 500.
    mode: AtomicUsize,
}

async fn permissions(
    State(ep): State<Arc<Endpoint>>,
    Path((tenant, sub)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    ep.calls.fetch_add(1, Ordering::SeqCst);
    let delay = ep.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if headers
        .get("x-realmgate-loader-secret")
        .and_then(|v| v.to_str().ok())
        != Some("s3cret")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match ep.mode.load(Ordering::SeqCst) {
        1 => {
            let big: Vec<String> = (0..20_000).map(|i| format!("p{i}.read.own")).collect();
            axum::Json(big).into_response()
        }
        2 => "<html>oops</html>".into_response(),
        3 => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        _ if tenant == "acme" && sub == "u-http" => {
            axum::Json(serde_json::json!({"permissions": ["users.delete.tenant"]})).into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn endpoint() -> (Arc<Endpoint>, std::net::SocketAddr) {
    let ep = Arc::new(Endpoint::default());
    let app = axum::Router::new()
        .route("/internal/permissions/{tenant}/{sub}", get(permissions))
        .with_state(Arc::clone(&ep));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (ep, addr)
}

fn http_loader(addr: std::net::SocketAddr, timeout: &str) -> String {
    format!(
        r#"    timeout: {timeout}
    negative_ttl: 5s
    http:
      user_url: "http://{addr}/internal/permissions/{{tenant}}/{{sub}}"
      max_body_bytes: 65536
      secret: s3cret"#
    )
}

/// 1 000 concurrent misses for one user — different tokens, different role lists, so the
/// compiled-set cache cannot merge them — make one loader call; a 404 is an empty set, held
/// for the negative TTL.
#[tokio::test]
async fn concurrent_misses_for_one_user_make_one_http_call() {
    let (ep, addr) = endpoint().await;
    // The answer takes a second (well inside the 5 s timeout, on a loaded CI machine too), so
    // the first request of every token is certainly waiting before it comes.
    let e = Env::start(&http_loader(addr, "5s")).await;
    ep.delay_ms.store(1000, Ordering::SeqCst);
    let role_lists: [&[&str]; 4] = [&[], &["viewer"], &["viewer", "x"], &["y"]];
    let tokens: Vec<String> = role_lists.iter().map(|r| e.token("u-http", r)).collect();
    let client = client();
    let calls = (0..1000).map(|i| {
        let req = client
            .delete(e.gw.url("/api/v1/users/1"))
            .header("host", "acme.qa.example.com")
            .header("authorization", format!("Bearer {}", tokens[i % 4]));
        async move { req.send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(calls).await;
    let refused: Vec<&u16> = statuses.iter().filter(|&&s| s != 200).collect();
    assert!(refused.is_empty(), "all allowed; refused: {refused:?}");
    assert_eq!(ep.calls.load(Ordering::SeqCst), 1, "one loader call");

    // Unknown user: 404 = no grants, asked once, then believed for the negative TTL.
    ep.delay_ms.store(0, Ordering::SeqCst);
    let before = ep.calls.load(Ordering::SeqCst);
    let nobody: Vec<String> = role_lists.iter().map(|r| e.token("u-none", r)).collect();
    for t in &nobody {
        assert_eq!(e.call("DELETE", "/api/v1/users/1", t).await, 403);
    }
    assert_eq!(
        ep.calls.load(Ordering::SeqCst) - before,
        1,
        "negative answer held"
    );
    // ... unless that user is invalidated: the platform publishes after changing its tables.
    redis_cli(&[
        "PUBLISH",
        &format!("{}invalidate", e.prefix),
        "tenant:acme:user:u-none",
    ]);
    let start = Instant::now();
    while ep.calls.load(Ordering::SeqCst) - before < 2 {
        assert_eq!(e.call("DELETE", "/api/v1/users/1", &nobody[0]).await, 403);
        assert!(start.elapsed() < Duration::from_secs(1), "not asked again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bounded and fail closed: an oversized body, a body that is not JSON, a 500, or an answer
/// slower than the timeout all make the loader's grants unavailable (403, not 5xx, no hang).
#[tokio::test]
async fn http_loader_failures_fail_closed_and_bounded() {
    let (ep, addr) = endpoint().await;
    let e = Env::start(&http_loader(addr, "400ms")).await;
    for (i, mode) in [1usize, 2, 3].into_iter().enumerate() {
        ep.mode.store(mode, Ordering::SeqCst);
        let t = e.token("u-http", &[&format!("r{i}")]);
        assert_eq!(
            e.call("DELETE", "/api/v1/users/1", &t).await,
            403,
            "mode {mode}"
        );
        // Let the backoff and the degraded TTL pass before the next case.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    ep.mode.store(0, Ordering::SeqCst);
    ep.delay_ms.store(3000, Ordering::SeqCst);
    let t = e.token("u-http", &["slow"]);
    let start = Instant::now();
    assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 403);
    assert!(
        start.elapsed() < Duration::from_millis(1500),
        "bounded by the loader timeout: {:?}",
        start.elapsed()
    );
    let readyz: Value = client()
        .get(e.gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(readyz["grants"]["loader"], "http", "{readyz}");
    // Recovered: the endpoint answers again and the grant applies once the degraded set ages out.
    ep.delay_ms.store(0, Ordering::SeqCst);
    let t = e.token("u-http", &["later"]);
    let start = Instant::now();
    loop {
        if e.call("DELETE", "/api/v1/users/1", &t).await == 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(8), "never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A run-time role grant written with SADD (no PUBLISH) reaches every user holding the role,
/// and its SREM leaves them all.
#[tokio::test]
async fn a_role_set_change_reaches_every_user_with_the_role() {
    let db = Db::new().await;
    let e = Env::start(&postgres_loader(&db, false)).await;
    let tokens: Vec<String> = (0..5)
        .map(|i| e.token(&format!("u-role{i}"), &["support"]))
        .collect();
    let other = e.token("u-other", &["viewer"]);
    // The role key must exist for Redis to be the truth: give it one unrelated member.
    redis_cli(&["SADD", &e.role_key("support"), "tickets.read.own"]);
    for t in &tokens {
        assert_eq!(e.call("GET", "/api/v1/reports/q", t).await, 403);
    }
    redis_cli(&["SADD", &e.role_key("support"), "reports.read.team"]);
    for t in &tokens {
        e.eventually("GET", "/api/v1/reports/q", t, 200).await;
    }
    assert_eq!(e.call("GET", "/api/v1/reports/q", &other).await, 403);
    redis_cli(&["SREM", &e.role_key("support"), "reports.read.team"]);
    for t in &tokens {
        e.eventually("GET", "/api/v1/reports/q", t, 403).await;
    }
}

/// The http loader over mutual TLS, against a real TLS server (`openssl s_server -HTTP`, which
/// answers with a file holding the whole response, requiring a client certificate from the
/// test CA): with the client certificate the grant
/// loads; without it the handshake fails and the loader's grants fail closed.
#[tokio::test]
async fn http_loader_speaks_mtls() {
    let dir = tempfile::tempdir().unwrap();
    let script = r#"set -e
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=rg loader test CA" -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout $who.key -out $who.csr
done
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
printf 'extendedKeyUsage=clientAuth\n' > client.ext
for who in server client; do
  openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -extfile $who.ext -out $who.pem
done
mkdir -p www/internal/permissions/acme
printf 'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n["users.delete.tenant"]' > www/internal/permissions/acme/u-tls
"#;
    let out = Command::new("sh")
        .args(["-c", script])
        .current_dir(dir.path())
        .output()
        .expect("sh and openssl must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let d = dir.path().display();
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-HTTP", "-Verify", "1"])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .args([
            "-cert",
            &format!("{d}/server.pem"),
            "-key",
            &format!("{d}/server.key"),
        ])
        .args(["-CAfile", &format!("{d}/ca.pem")])
        .current_dir(dir.path().join("www"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    wait_port(format!("127.0.0.1:{port}").parse().unwrap());
    let loader = |client_cert: bool| {
        let mut l = format!(
            r#"    timeout: 2s
    http:
      user_url: "https://127.0.0.1:{port}/internal/permissions/{{tenant}}/{{sub}}"
      ca_file: "{d}/ca.pem""#
        );
        if client_cert {
            l.push_str(&format!(
                "\n      client_cert: \"{d}/client.pem\"\n      client_key: \"{d}/client.key\""
            ));
        }
        l
    };
    {
        let e = Env::start(&loader(true)).await;
        let t = e.token("u-tls", &[]);
        assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 200);
    }
    {
        let e = Env::start(&loader(false)).await;
        let t = e.token("u-tls", &[]);
        assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await, 403);
    }
    let _ = server.kill();
    let _ = server.wait();
}
