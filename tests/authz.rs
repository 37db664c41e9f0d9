//! End-to-end authorization through the gateway with real Redis: the role matrix, per-user
//! grants added and revoked live over pub/sub, Redis dying mid-test, and path-canonicalisation
//! attacks that must be refused and never forwarded.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::idp::{claims, MockKeycloak, SigningKey};
use common::*;
use serde_json::Value;

fn config(kc: &MockKeycloak, redis_port: u16, prefix: &str) -> String {
    TestConfig::new(&kc.base()).with(&format!(
        r#"
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}}
roles:
  tenant_admin: ["users.*.tenant", "reports.read.tenant"]
  manager: ["users.read.team", "reports.read.team"]
  viewer: ["users.read.own"]
scopes: [own, team, tenant]
routes:
  - {{path: "/public/**", public: true}}
  - {{path: "/api/v1/users", methods: [GET], permission: users.read.own}}
  - {{path: "/api/v1/users/{{id}}", methods: [DELETE], permission: users.delete.tenant}}
  - {{path: "/api/v1/reports/**", methods: [GET], permission: reports.read.team}}
  - {{path: "/api/v1/admin/**", permissions: [admin.manage.tenant, users.delete.tenant], match: all}}
default_policy: deny
redis:
  url: "redis://127.0.0.1:{redis_port}"
  cache_ttl: 2s
  degraded_ttl: 1s
  command_timeout: 200ms
  key_prefix: "{prefix}"
  channel: "{prefix}invalidate"
"#
    ))
}

fn unique() -> String {
    format!("rgtest{:x}:", rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish()
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be installed (it ships with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn require_redis(port: u16) {
    assert_eq!(
        redis_cli(port, &["PING"]),
        "PONG",
        "Redis must run on 127.0.0.1:{port} (see README: redis-server is part of the test setup)"
    );
}

struct Env {
    kc: MockKeycloak,
    key: SigningKey,
    up: Upstream,
    gw: Gateway,
    prefix: String,
    redis_port: u16,
}

async fn env_on(redis_port: u16) -> Env {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("acme-1");
    kc.set_keys("tenant-acme", &[&key]);
    let up = Upstream::start().await;
    let prefix = unique();
    let gw = Gateway::start(&config(&kc, redis_port, &prefix), up.addr);
    Env {
        kc,
        key,
        up,
        gw,
        prefix,
        redis_port,
    }
}

impl Env {
    fn token(&self, sub: &str, roles: &[&str]) -> String {
        self.key
            .sign(&claims(&self.kc.base(), "tenant-acme", sub, roles))
    }

    async fn call(&self, method: &str, path: &str, token: &str) -> (u16, Value) {
        let r = client()
            .request(method.parse().unwrap(), self.gw.url(path))
            .header("host", "acme.qa.example.com")
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn user_key(&self, sub: &str) -> String {
        format!("{}tenant:acme:user:{sub}:permissions", self.prefix)
    }

    fn publish(&self, msg: &str) {
        redis_cli(
            self.redis_port,
            &["PUBLISH", &format!("{}invalidate", self.prefix), msg],
        );
    }

    /// Polls until `method path` answers `want`, for at most `within`.
    async fn eventually(
        &self,
        method: &str,
        path: &str,
        token: &str,
        want: u16,
        within: Duration,
    ) -> Duration {
        let start = Instant::now();
        loop {
            let (status, body) = self.call(method, path, token).await;
            if status == want {
                return start.elapsed();
            }
            assert!(status < 500, "never a 5xx: {status} {body}");
            assert!(
                start.elapsed() < within,
                "still {status} after {within:?}: {body}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let keys = redis_cli(
            self.redis_port,
            &["--scan", "--pattern", &format!("{}*", self.prefix)],
        );
        for k in keys.lines().filter(|k| !k.is_empty()) {
            redis_cli(self.redis_port, &["DEL", k]);
        }
    }
}

#[tokio::test]
async fn role_matrix_and_forwarded_scope() {
    require_redis(6379);
    let e = env_on(6379).await;
    let viewer = e.token("v-1", &["viewer"]);
    let manager = e.token("m-1", &["manager"]);
    let admin = e.token("a-1", &["tenant_admin"]);

    let (s, _) = e.call("GET", "/api/v1/users", &viewer).await;
    assert_eq!(s, 200);
    assert_eq!(e.up.last().header("x-auth-scope"), Some("own"));
    assert_eq!(e.up.last().header("x-user-id"), Some("v-1"));

    let (s, body) = e.call("DELETE", "/api/v1/users/7", &viewer).await;
    assert_eq!(s, 403);
    assert_eq!(body["error"], "forbidden");
    assert_eq!(body["required"], "users.delete.tenant");

    let (s, _) = e.call("DELETE", "/api/v1/users/7", &admin).await;
    assert_eq!(s, 200);
    assert_eq!(e.up.last().header("x-auth-scope"), Some("tenant"));
    let (s, _) = e.call("GET", "/api/v1/users", &admin).await;
    assert_eq!(s, 200);
    assert_eq!(
        e.up.last().header("x-auth-scope"),
        Some("tenant"),
        "widest scope held"
    );

    let (s, _) = e.call("GET", "/api/v1/reports/weekly", &manager).await;
    assert_eq!(s, 200);
    assert_eq!(e.up.last().header("x-auth-scope"), Some("team"));
    let (s, _) = e.call("GET", "/api/v1/reports/weekly", &viewer).await;
    assert_eq!(s, 403);
    let (s, _) = e.call("GET", "/api/v1/users", &manager).await;
    assert_eq!(s, 200, "team implies own");

    // `match: all` needs both permissions.
    let (s, body) = e.call("GET", "/api/v1/admin/settings", &admin).await;
    assert_eq!(s, 403, "{body}");
    // Unmatched routes fall to default_policy: deny.
    let (s, body) = e.call("GET", "/api/v2/anything", &admin).await;
    assert_eq!(s, 403);
    assert_eq!(body["error"], "route_denied");
    // Methods are part of the rule.
    let (s, _) = e.call("POST", "/api/v1/users", &admin).await;
    assert_eq!(s, 403);
    let before = e.up.count();
    let (s, _) = e.call("DELETE", "/api/v1/users/7", &manager).await;
    assert_eq!(s, 403);
    assert_eq!(
        e.up.count(),
        before,
        "denied requests never reach the upstream"
    );
}

#[tokio::test]
async fn per_user_grant_is_added_and_revoked_live_within_a_second() {
    require_redis(6379);
    let e = env_on(6379).await;
    let t = e.token("u-grant", &["viewer"]);
    assert_eq!(e.call("DELETE", "/api/v1/users/9", &t).await.0, 403);

    redis_cli(
        6379,
        &[
            "SADD",
            &e.user_key("u-grant"),
            "users.delete.tenant",
            "not a permission",
        ],
    );
    e.publish("tenant:acme:user:u-grant");
    let took = e
        .eventually("DELETE", "/api/v1/users/9", &t, 200, Duration::from_secs(1))
        .await;
    assert!(took < Duration::from_secs(1));

    redis_cli(
        6379,
        &["SREM", &e.user_key("u-grant"), "users.delete.tenant"],
    );
    e.publish("tenant:acme:user:u-grant");
    e.eventually("DELETE", "/api/v1/users/9", &t, 403, Duration::from_secs(1))
        .await;

    // Run-time role grants, invalidated per role.
    let role_key = format!("{}tenant:acme:role:viewer:permissions", e.prefix);
    redis_cli(6379, &["SADD", &role_key, "reports.read.tenant"]);
    e.publish("tenant:acme:role:viewer");
    e.eventually("GET", "/api/v1/reports/q1", &t, 200, Duration::from_secs(1))
        .await;
    redis_cli(6379, &["DEL", &role_key]);
    e.publish("tenant:acme");
    e.eventually("GET", "/api/v1/reports/q1", &t, 403, Duration::from_secs(1))
        .await;
}

/// End to end, no PUBLISH: a grant written straight to Redis (as the platform's own cache
/// fill or revocation does) opens and closes the route through client tracking. The time
/// from write to effect is measured over 20 grant/revoke cycles and printed.
#[tokio::test]
async fn grants_written_straight_to_redis_apply_without_a_publish() {
    require_redis(6379);
    let e = env_on(6379).await;
    let t = e.token("u-track", &["viewer"]);
    let admin = client()
        .get(e.gw.admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    let ready: Value = admin.json().await.unwrap();
    assert_eq!(ready["grants"]["subscribed"], true, "{ready}");
    let start = Instant::now();
    while e.gw.shared.grants.invalidation_mode() != "tracking" {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "tracking never came up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(e.call("DELETE", "/api/v1/users/9", &t).await.0, 403);
    // Polled every millisecond, from the moment the write returned.
    let until = |want: u16| {
        let e = &e;
        let t = &t;
        async move {
            let start = Instant::now();
            let mut polls = 0u32;
            loop {
                let (status, body) = e.call("DELETE", "/api/v1/users/9", t).await;
                polls += 1;
                assert!(status < 500, "never a 5xx: {status} {body}");
                if status == want {
                    return (start.elapsed(), polls);
                }
                assert!(start.elapsed() < Duration::from_secs(1), "still {status}");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    let mut con = redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let key = e.user_key("u-track");
    let tracked = || {
        realmgate::metrics::metrics()
            .grant_invalidations_total
            .with_label_values(&["tracking"])
            .get()
    };
    let tracked_before = tracked();
    let mut took: Vec<(Duration, u32)> = Vec::new();
    for _ in 0..20 {
        let _: () = redis::cmd("SADD")
            .arg(&key)
            .arg("users.delete.tenant")
            .query_async(&mut con)
            .await
            .unwrap();
        took.push(until(200).await);
        let _: () = redis::cmd("SREM")
            .arg(&key)
            .arg("users.delete.tenant")
            .query_async(&mut con)
            .await
            .unwrap();
        took.push(until(403).await);
    }
    let polls: Vec<u32> = took.iter().map(|t| t.1).collect();
    let mut took: Vec<Duration> = took.into_iter().map(|t| t.0).collect();
    took.sort();
    println!("requests until the change showed (1 = the first request after the write): {polls:?}");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "write to an answer reflecting it, without PUBLISH, over {} changes (the round trip included): min {:.1} ms, p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        took.len(),
        ms(took[0]),
        ms(took[took.len() / 2]),
        ms(took[took.len() * 9 / 10]),
        ms(took[took.len() - 1])
    );
    // Each change showed within a second (`until`), inside cache_ttl (2 s here), and Redis's
    // own tracking pushes carried them: at least one per write.
    assert!(
        tracked() - tracked_before >= 40,
        "tracking pushes: {}",
        tracked() - tracked_before
    );
    assert!(
        polls.iter().filter(|p| **p > 3).count() <= 2,
        "nearly every change shows at once: {polls:?}"
    );
}

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(port: u16) -> RedisServer {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let server = RedisServer(child);
    for _ in 0..100 {
        if redis_cli(port, &["PING"]) == "PONG" {
            return server;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on {port} did not start");
}

#[tokio::test]
async fn redis_dying_never_causes_5xx_and_redis_only_grants_fail_closed_after_ttl() {
    let port = free_port();
    let redis = start_redis(port);
    let e = env_on(port).await;
    let t = e.token("u-r", &["viewer"]);
    redis_cli(port, &["SADD", &e.user_key("u-r"), "users.delete.tenant"]);
    assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await.0, 200);

    drop(redis); // Redis is gone.
    let died = Instant::now();
    // Within the TTL the cached set still answers.
    assert_eq!(e.call("DELETE", "/api/v1/users/1", &t).await.0, 200);
    // After the TTL: the Redis-only grant fails closed, config grants keep working, no 5xx.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(died.elapsed())).await;
    let mut saw_forbidden = false;
    for _ in 0..20 {
        let start = Instant::now();
        let (s, body) = e.call("DELETE", "/api/v1/users/1", &t).await;
        assert!(s < 500, "{s} {body}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "a dead Redis must not stall requests"
        );
        if s == 403 {
            saw_forbidden = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_forbidden,
        "the Redis-only grant must stop working once its TTL passed"
    );
    assert_eq!(
        e.call("GET", "/api/v1/users", &t).await.0,
        200,
        "role grants still work"
    );
    let text = e.gw.metrics_text().await;
    assert!(text.contains("realmgate_redis_errors_total"), "{text}");
    assert!(text.contains("realmgate_permission_cache_total"), "{text}");
}

#[tokio::test]
async fn path_canonicalisation_attacks_are_refused_and_never_forwarded() {
    require_redis(6379);
    let e = env_on(6379).await;
    let viewer = e.token("v-2", &["viewer"]);
    for path in [
        "/public/..%2Fapi/v1/admin/x",
        "/public/%2e%2e/api/v1/admin/x",
        "/public/../api/v1/admin/x",
        "/public/./x",
        "/public/.%2E/api/v1/admin/x",
        "/api/v1/admin%2Fx",
        "/public;/../api/v1/admin/x",
        "/public/x;jsessionid=1",
        "/public/%3B",
        "/public\\..\\api",
        "/public/%5c",
        "/public/%00",
        "/public/%23/../x",
        "/public/%zz",
    ] {
        let raw = format!(
            "GET {path} HTTP/1.1\r\nHost: acme.qa.example.com\r\nAuthorization: Bearer {viewer}\r\nConnection: close\r\n\r\n"
        );
        let resp = raw_request(e.gw.proxy, raw.as_bytes()).await;
        assert_eq!(status_of(&resp), 400, "{path}: {resp}");
    }
    assert_eq!(e.up.count(), 0, "nothing may reach the upstream");

    // Repeated slashes are merged, and the merged path is what is forwarded.
    let resp = raw_request(
        e.gw.proxy,
        b"GET //public///x?y=/../z HTTP/1.1\r\nHost: acme.qa.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(
        e.up.last().uri,
        "/public/x?y=/../z",
        "query passes untouched"
    );
    // Unreserved escapes are decoded before matching and forwarding.
    let resp = raw_request(
        e.gw.proxy,
        b"GET /%70ublic/%7Euser HTTP/1.1\r\nHost: acme.qa.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(e.up.last().uri, "/public/~user");
    // The query never takes part in matching.
    let (s, _) = e
        .call("GET", "/api/v1/admin/x?next=/public/", &viewer)
        .await;
    assert_eq!(s, 403);
    // Encoded path to a guarded route is still guarded.
    let (s, _) = e.call("DELETE", "/api/v1/%75sers/7", &viewer).await;
    assert_eq!(s, 403);
}
