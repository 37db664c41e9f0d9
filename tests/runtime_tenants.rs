//! Tenants provisioned at run time through the Redis hash + invalidation message serve within
//! a second, bad entries are skipped, and removal takes effect the same way. Real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli must be installed (it ships with redis-server)");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn status(gw: &Gateway, host: &str) -> u16 {
    client()
        .get(gw.url("/public/x"))
        .header("host", host)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn eventually(gw: &Gateway, host: &str, want: u16) -> Duration {
    let start = Instant::now();
    loop {
        let s = status(gw, host).await;
        if s == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{host}: still {s}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tenants_added_and_removed_through_redis_serve_within_a_second() {
    assert_eq!(
        redis_cli(&["PING"]),
        "PONG",
        "Redis must run on 127.0.0.1:6379"
    );
    let tag = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let key = format!("rgtest:{tag}:tenants");
    let channel = format!("rgtest:{tag}:invalidate");
    let up = Upstream::start().await;
    let template = TestConfig::new("http://127.0.0.1:9")
        .threads(1)
        .keycloak("require_keys_for_ready: false")
        .with(&format!(
            r#"
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}}
host_patterns:
  - {{pattern: "{{tenant}}.dyn.example.com", realm: "tenant-{{tenant}}"}}
routes:
  - {{path: "/public/**", public: true}}
redis: {{url: "redis://127.0.0.1:6379", channel: "{channel}", tenants_key: "{key}"}}
"#
        ));
    let gw = Gateway::start(&template, up.addr);
    assert_eq!(status(&gw, "initech.example.com").await, 404);

    redis_cli(&[
        "HSET",
        &key,
        "initech",
        r#"{"id":"initech","realm":"tenant-initech","hosts":["initech.example.com"]}"#,
    ]);
    redis_cli(&["HSET", &key, "broken", "{not json"]);
    redis_cli(&[
        "HSET",
        &key,
        "badhost",
        r#"{"id":"badhost","realm":"tenant-b","hosts":["bad..host"]}"#,
    ]);
    redis_cli(&[
        "HSET",
        &key,
        "acme",
        r#"{"id":"acme","realm":"tenant-evil","hosts":["evil.example.com"]}"#,
    ]);
    // A realm serves one tenant: a run-time tenant on the file tenant's realm is refused
    // (the others still load).
    redis_cli(&[
        "HSET",
        &key,
        "copycat",
        r#"{"id":"copycat","realm":"tenant-acme","hosts":["copycat.example.com"]}"#,
    ]);
    // Its realm is the one the pattern derives for "pied": pied.dyn.example.com is hooli.
    redis_cli(&[
        "HSET",
        &key,
        "hooli",
        r#"{"id":"hooli","realm":"tenant-pied","hosts":[]}"#,
    ]);
    redis_cli(&["PUBLISH", &channel, "tenants"]);
    let took = eventually(&gw, "initech.example.com", 200).await;
    assert!(took < Duration::from_secs(1));
    assert_eq!(up.last().header("x-tenant-id"), Some("initech"));
    assert_eq!(up.last().header("x-realm"), Some("tenant-initech"));
    // The file's tenant wins over a Redis entry with the same id; bad entries are skipped.
    assert_eq!(status(&gw, "evil.example.com").await, 404);
    assert_eq!(status(&gw, "acme.qa.example.com").await, 200);
    assert_eq!(up.last().header("x-realm"), Some("tenant-acme"));
    assert_eq!(status(&gw, "copycat.example.com").await, 404);
    assert_eq!(status(&gw, "pied.dyn.example.com").await, 200);
    assert_eq!(up.last().header("x-tenant-id"), Some("hooli"));
    assert_eq!(up.last().header("x-realm"), Some("tenant-pied"));
    assert_eq!(status(&gw, "hooli.dyn.example.com").await, 404);
    // Through the pattern, the run-time tenant is the same tenant, with its status.
    assert_eq!(status(&gw, "initech.dyn.example.com").await, 200);
    assert_eq!(up.last().header("x-tenant-id"), Some("initech"));

    // An unchanged set is not applied again (no recompile, no permission-cache flush): a
    // message with nothing new, then one with a change; messages are handled in order, so
    // once the change serves, exactly one apply happened.
    let applied = || {
        realmgate::metrics::metrics()
            .config_reload_total
            .with_label_values(&["ok"])
            .get()
    };
    let before = applied();
    let config_before = gw.shared.config.load_full();
    redis_cli(&["PUBLISH", &channel, "tenants"]);
    redis_cli(&[
        "HSET",
        &key,
        "globex",
        r#"{"id":"globex","realm":"tenant-globex","hosts":["globex.example.com"]}"#,
    ]);
    redis_cli(&["PUBLISH", &channel, "tenants"]);
    eventually(&gw, "globex.example.com", 200).await;
    assert_eq!(applied(), before + 1, "the unchanged set was applied again");
    assert!(!std::sync::Arc::ptr_eq(
        &config_before,
        &gw.shared.config.load_full()
    ));
    redis_cli(&["HDEL", &key, "globex"]);

    // Suspension and removal go through the same path.
    redis_cli(&[
        "HSET",
        &key,
        "initech",
        r#"{"id":"initech","realm":"tenant-initech","hosts":["initech.example.com"],"status":"suspended"}"#,
    ]);
    redis_cli(&["PUBLISH", &channel, "tenants:initech"]);
    eventually(&gw, "initech.example.com", 403).await;
    assert_eq!(status(&gw, "initech.dyn.example.com").await, 403);
    redis_cli(&["HDEL", &key, "initech"]);
    redis_cli(&["PUBLISH", &channel, "tenants"]);
    eventually(&gw, "initech.example.com", 404).await;
    redis_cli(&["DEL", &key]);
}
