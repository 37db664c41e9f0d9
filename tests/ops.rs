//! Operations end to end: the demo's printed commands, `explain`, live reload under load,
//! invalid reloads, graceful drain, shadow mode and the metrics contract.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::idp::{claims, MockKeycloak, SigningKey};
use common::*;
use pingora::server::ShutdownSignal;
use realmgate::config;
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_realmgate");

fn template(base: &str, extra_tenant: &str) -> String {
    format!(
        r#"
listen: {{proxy: "{{PROXY}}", admin: "{{ADMIN}}"}}
server: {{threads: 2, grace_period: 3s, graceful_shutdown_timeout: 2s, watch_config: true}}
upstream: {{default: "{{UPSTREAM}}", read_timeout: 10s}}
keycloak: {{base_url: "{base}", audiences: [qa-platform-backend], require_keys_for_ready: false}}
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}}
  - {{id: shadowco, realm: tenant-shadow, hosts: [shadow.qa.example.com], enforce: false}}
{extra_tenant}
roles: {{tenant_admin: ["users.*.tenant"], viewer: ["users.read.own"]}}
routes:
  - {{path: "/public/**", public: true}}
  - {{path: "/sleep/**", public: true}}
  - {{path: "/api/v1/users/{{id}}", methods: [DELETE], permission: users.delete.tenant}}
  - {{path: "/**", authenticated: true}}
logging: {{access_log: true}}
"#
    )
}

#[tokio::test]
async fn demo_commands_behave_as_printed() {
    let proxy = free_port();
    let admin = free_port();
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--proxy",
            &format!("127.0.0.1:{proxy}"),
            "--admin",
            &format!("127.0.0.1:{admin}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines
        .iter()
        .filter(|l: &&String| l.starts_with("curl "))
        .count()
        < 5
    {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("demo printed its walkthrough");
        lines.push(line);
    }
    wait_port(format!("127.0.0.1:{proxy}").parse().unwrap());
    let exports: Vec<&String> = lines.iter().filter(|l| l.starts_with("export ")).collect();
    assert_eq!(exports.len(), 3, "{lines:#?}");
    let prelude = exports
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        let Some(expect) = line
            .strip_prefix('#')
            .and_then(|l| l.split("expect ").nth(1))
        else {
            continue;
        };
        let want = expect.trim();
        let cmd = &lines[i + 1];
        assert!(cmd.starts_with("curl "), "{cmd}");
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{prelude}\n{cmd}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let status = text.trim().lines().last().unwrap_or("");
        assert_eq!(status, want, "{line}\n{cmd}\n{text}");
        if line.contains("forwarded headers") {
            assert!(text.contains("\"x-tenant-id\": \"acme\""), "{text}");
            assert!(text.contains("\"x-user-id\": \"bob\""), "{text}");
            assert!(!text.contains("super_admin"), "{text}");
        }
        checked += 1;
    }
    assert_eq!(checked, 5);
    let _ = child.kill();
    let _ = child.wait();
}

fn write_config(dir: &std::path::Path, yaml: &str) -> std::path::PathBuf {
    let path = dir.join("realmgate.yaml");
    let tmp = dir.join(".realmgate.yaml.tmp");
    std::fs::write(&tmp, yaml).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

// Multi-threaded: the test blocks on the CLI while the mock IdP must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_why() {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("acme-1");
    kc.set_keys("tenant-acme", &[&key]);
    let dir = tempfile::tempdir().unwrap();
    let yaml = render(
        &template(&kc.base(), ""),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "127.0.0.1:3".parse().unwrap(),
    );
    let path = write_config(dir.path(), &yaml);
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["explain", "--config", path.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    let admin = claims(&kc.base(), "tenant-acme", "a-1", &["tenant_admin"]).to_string();
    let (code, text) = run(&[
        "--method",
        "DELETE",
        "--url",
        "http://acme.qa.example.com/api/v1/users/7",
        "--claims",
        &admin,
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("tenant acme (realm tenant-acme"), "{text}");
    assert!(text.contains("matched routes[2]"), "{text}");
    assert!(
        text.contains("users.delete.tenant granted; widest scope held: tenant"),
        "{text}"
    );
    assert!(text.contains("=> ALLOW"), "{text}");

    let viewer = claims(&kc.base(), "tenant-acme", "v-1", &["viewer"]).to_string();
    let (code, text) = run(&[
        "--method",
        "DELETE",
        "--url",
        "http://acme.qa.example.com/api/v1/users/7",
        "--claims",
        &viewer,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("=> DENY (403): forbidden: requires users.delete.tenant"),
        "{text}"
    );

    let other = claims(&kc.base(), "tenant-globex", "g-1", &["tenant_admin"]).to_string();
    let (code, text) = run(&[
        "--method",
        "DELETE",
        "--url",
        "http://acme.qa.example.com/api/v1/users/7",
        "--claims",
        &other,
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("issuer_mismatch"), "{text}");

    // A real token is verified against the realm's JWKS over HTTP.
    let good = dir.path().join("good.jwt");
    std::fs::write(
        &good,
        key.sign(&claims(&kc.base(), "tenant-acme", "a-2", &["tenant_admin"])),
    )
    .unwrap();
    let (code, text) = run(&[
        "--method",
        "DELETE",
        "--url",
        "http://acme.qa.example.com/api/v1/users/7",
        "--token",
        good.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verified against"), "{text}");
    let bad = dir.path().join("bad.jwt");
    let forged = SigningKey::rsa("acme-1").sign(&claims(
        &kc.base(),
        "tenant-acme",
        "a-2",
        &["tenant_admin"],
    ));
    std::fs::write(&bad, forged).unwrap();
    let (code, text) = run(&[
        "--method",
        "GET",
        "--url",
        "http://acme.qa.example.com/api/v1/me",
        "--token",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("bad_signature"), "{text}");

    let (code, text) = run(&["--url", "http://nobody.example.org/"]);
    assert_eq!(code, 1);
    assert!(text.contains("unknown_host"), "{text}");
    let (code, text) = run(&[
        "--url",
        "http://acme.qa.example.com/public/../api/v1/users/7",
    ]);
    assert_eq!(code, 1);
    assert!(text.contains("invalid_path"), "{text}");
}

#[tokio::test]
async fn reload_under_load_loses_nothing_and_invalid_reload_keeps_serving() {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("acme-1");
    kc.set_keys("tenant-acme", &[&key]);
    let up = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proxy = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let v1 = render(&template(&kc.base(), ""), proxy, admin, up.addr);
    let path = write_config(dir.path(), &v1);
    let gw = Gateway::start_config(config::load(&path, &std::collections::HashMap::new()).unwrap());
    let token = key.sign(&claims(&kc.base(), "tenant-acme", "u", &["viewer"]));

    // A bounded loop of requests while the file changes underneath.
    let url = gw.url("/api/v1/me");
    let load = {
        let token = token.clone();
        tokio::spawn(async move {
            let c = client();
            let mut codes = Vec::new();
            for _ in 0..400 {
                let r = c
                    .get(&url)
                    .header("host", "acme.qa.example.com")
                    .header("authorization", format!("Bearer {token}"))
                    .send()
                    .await;
                codes.push(r.map(|r| r.status().as_u16()).unwrap_or(0));
            }
            codes
        })
    };
    let v2 = render(
        &template(
            &kc.base(),
            "  - {id: globex, realm: tenant-globex, hosts: [globex.qa.example.com]}",
        ),
        proxy,
        admin,
        up.addr,
    );
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        write_config(dir.path(), if i % 2 == 0 { &v2 } else { &v1 });
    }
    write_config(dir.path(), &v2);
    let codes = load.await.unwrap();
    assert!(
        codes.iter().all(|c| *c == 200),
        "every request answered 200: {codes:?}"
    );

    // The new tenant serves once the watcher has swapped the config.
    let mut served = false;
    for _ in 0..100 {
        let r = client()
            .get(gw.url("/public/x"))
            .header("host", "globex.qa.example.com")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "reloaded tenant never served");

    // An invalid file: the old config keeps serving; the failure is counted.
    write_config(
        dir.path(),
        &v2.replace("tenant-acme, hosts: [acme", "tenant-acme, hostz: [acme"),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = client()
        .get(gw.url("/public/x"))
        .header("host", "globex.qa.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = gw.metrics_text().await;
    assert!(
        text.contains("realmgate_config_reload_total{result=\"error\"}"),
        "{text}"
    );
    assert!(
        text.contains("realmgate_config_reload_total{result=\"ok\"}"),
        "{text}"
    );
    // SIGHUP-equivalent explicit reload reports the problem with its field path.
    let err = realmgate::state::reload::reload_from(&gw.shared, &path)
        .err()
        .unwrap();
    assert!(err.to_string().contains("tenants[0]"), "{err}");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests() {
    let kc = MockKeycloak::start().await;
    let up = Upstream::start().await;
    let mut gw = Gateway::start(&template(&kc.base(), ""), up.addr);
    // A request that takes 1.5 s is in flight when SIGTERM arrives.
    let url = format!("http://{}/sleep/1500", gw.proxy);
    let inflight = tokio::spawn(async move {
        let r = client()
            .get(url)
            .header("host", "acme.qa.example.com")
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shared = gw.shared.clone();
    assert!(shared.not_ready_reasons().is_empty());
    let stopper = std::thread::spawn(move || {
        gw.stop_with(ShutdownSignal::GracefulTerminate);
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        shared.is_draining(),
        "readiness flips as soon as graceful termination starts"
    );
    assert!(shared
        .not_ready_reasons()
        .iter()
        .any(|r| r == "shutting down"));
    let (status, body) = inflight.await.unwrap();
    assert_eq!(status, 200, "the in-flight request finished: {body}");
    assert_eq!(body, "slept");
    stopper.join().unwrap();
}

/// A request waiting on a key refetch when SIGTERM arrives still gets its answer: the JWKS
/// refresher (and the Redis subscriber) run until the drain is over. Before, they stopped at
/// the signal, the refetch was cancelled and the request was refused `unknown_key`.
#[tokio::test]
async fn sigterm_keeps_the_refresher_until_the_drain_is_over() {
    let kc = MockKeycloak::start().await;
    let old = SigningKey::rsa("old-1");
    kc.set_keys("tenant-acme", &[&old]);
    let up = Upstream::start().await;
    let yaml = template(&kc.base(), "").replace(
        "require_keys_for_ready: false}",
        "require_keys_for_ready: false, jwks_min_refetch_interval: 100ms, refetch_wait: 5s}",
    );
    let mut gw = Gateway::start(&yaml, up.addr);
    until(|| gw.shared.not_ready_reasons().is_empty(), "keys loaded").await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The realm rotates; its IdP answers one second late.
    let new = SigningKey::rsa("new-1");
    kc.set_keys("tenant-acme", &[&old, &new]);
    kc.set_mode(common::idp::Mode::Slow);
    let hits = kc.jwks_hits("tenant-acme");
    let token = new.sign(&claims(&kc.base(), "tenant-acme", "u-1", &["tenant_admin"]));
    let url = gw.url("/api/v1/users/7");
    let waiting = tokio::spawn(async move { delete_status(&url, ACME, &token).await });
    // SIGTERM lands while the refetch the request waits on is at the IdP.
    until(
        || kc.jwks_hits("tenant-acme") > hits,
        "the refetch reached the IdP",
    )
    .await;
    let stopper = std::thread::spawn(move || gw.stop_with(ShutdownSignal::GracefulTerminate));
    assert_eq!(
        waiting.await.unwrap(),
        200,
        "the refetch finished during the drain"
    );
    stopper.join().unwrap();
}

#[tokio::test]
async fn shadow_mode_passes_and_counts() {
    let (kc, key, up, gw) = acme_gateway().await;
    let mut c = claims(&kc.base(), "tenant-acme", "v", &["viewer"]);
    c["sub"] = json!("v-shadow");
    let t = key.sign(&c);
    assert_eq!(
        delete_user(&gw, "acme.qa.example.com", &t).await,
        403,
        "enforced tenant"
    );
    // The shadow tenant has its own realm (a realm serves one tenant).
    let mut c = claims(&kc.base(), "tenant-shadow", "v", &["viewer"]);
    c["sub"] = json!("v-shadow");
    let t = key.sign(&c);
    assert_eq!(
        delete_user(&gw, "shadow.qa.example.com", &t).await,
        200,
        "shadow tenant passes"
    );
    assert_eq!(up.last().header("x-user-id"), Some("v-shadow"));
    // A missing token is never shadowed: identity is not optional.
    let r = client()
        .delete(gw.url("/api/v1/users/7"))
        .header("host", "shadow.qa.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = gw.metrics_text().await;
    assert!(
        text.contains("realmgate_shadow_decisions_total{decision=\"deny\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_have_conventional_names_and_bounded_labels() {
    let (kc, key, _up, gw) = acme_gateway().await;
    let t = key.sign(&claims(&kc.base(), "tenant-acme", "m", &["tenant_admin"]));
    for _ in 0..2 {
        delete_user(&gw, ACME, &t).await;
    }
    client()
        .get(gw.url("/x"))
        .header("host", "acme.qa.example.com")
        .send()
        .await
        .unwrap();
    let text = gw.metrics_text().await;
    for name in [
        "realmgate_requests_total{status=\"200\",tenant=\"acme\"}",
        "realmgate_requests_total{status=\"401\",tenant=\"acme\"}",
        "realmgate_request_duration_seconds_bucket{le=\"0.00001\"}",
        "realmgate_upstream_duration_seconds_count",
        "realmgate_token_verify_total{",
        "realmgate_token_cache_total{result=\"hit\"}",
        "realmgate_jwks_fetch_total{realm=\"tenant-acme\",result=\"ok\"}",
        "realmgate_jwks_keys{realm=\"tenant-acme\"} 1",
        "realmgate_jwks_age_seconds{realm=\"tenant-acme\"}",
        "realmgate_permission_cache_total{result=",
        "realmgate_decisions_total{decision=\"allow\",tenant=\"acme\"}",
        "realmgate_rejections_total{code=\"missing_token\"}",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("realmgate_") && l.contains("_total"))
    {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(name.ends_with("_total"), "{line}");
    }
}

/// Without Redis grants or a permissions claim, a user's permissions depend only on the
/// tenant and roles: users with the same roles share one compiled set (100 000 cached
/// tokens must not mean 100 000 sets).
#[tokio::test]
async fn users_with_the_same_roles_share_one_permission_set() {
    let (kc, key, _up, gw) = acme_gateway().await;
    let users = [
        ("u1", &["tenant_admin"][..]),
        ("u2", &["tenant_admin"][..]),
        ("u3", &["tenant_admin"][..]),
        ("u4", &["viewer"][..]),
    ];
    for (sub, roles) in users {
        let t = key.sign(&claims(&kc.base(), "tenant-acme", sub, roles));
        let want = if roles == ["viewer"] { 403 } else { 200 };
        assert_eq!(delete_user(&gw, ACME, &t).await, want, "{sub}");
    }
    // This gateway's own cache (the metrics are process-wide, shared with other tests).
    assert_eq!(gw.shared.grants.len(), 2, "one set per role combination");
}

/// The `template` gateway for tenant acme, its mock Keycloak with one RSA key, and upstream.
async fn acme_gateway() -> (MockKeycloak, SigningKey, Upstream, Gateway) {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("acme-1");
    kc.set_keys("tenant-acme", &[&key]);
    kc.set_keys("tenant-shadow", &[&key]);
    let up = Upstream::start().await;
    let gw = Gateway::start(&template(&kc.base(), ""), up.addr);
    (kc, key, up, gw)
}

const ACME: &str = "acme.qa.example.com";

/// `DELETE /api/v1/users/7` on `host` with `token`; the status.
async fn delete_user(gw: &Gateway, host: &str, token: &str) -> u16 {
    delete_status(&gw.url("/api/v1/users/7"), host, token).await
}

async fn delete_status(url: &str, host: &str, token: &str) -> u16 {
    client()
        .delete(url)
        .header("host", host)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `realmgate check` prints the summary without the Redis password, and warns about settings
/// that switch a protection off.
#[test]
fn check_masks_credentials_and_prints_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("realmgate.yaml");
    std::fs::write(
        &path,
        r#"
listen: {proxy: "127.0.0.1:18080", admin: "127.0.0.1:19090"}
upstream: {default: "127.0.0.1:8000"}
keycloak: {base_url: "http://keycloak:8080", audiences: [qa-platform-backend]}
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.qa.example.com]}
paths: {double_encoding: allow}
redis: {url: "redis://admin:s3cret-pw@redis.internal:6379/2"}
"#,
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        !stdout.contains("s3cret-pw") && !stderr.contains("s3cret-pw"),
        "{stdout}{stderr}"
    );
    assert!(
        stdout.contains("redis: redis://***@redis.internal:6379/2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("warning: paths.double_encoding: allow"),
        "{stderr}"
    );
}
