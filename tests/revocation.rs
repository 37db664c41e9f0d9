//! Revocation end to end, real processes: the gateway (Pingora, real sockets), the test IdP
//! signing real logout tokens and not-before pushes with the realm key, a real upstream and
//! real Redis (127.0.0.1:6379; per-test key prefixes). Every "within a second" is measured
//! from the logout's answer, polling, never sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::idp::{
    claims, logout_claims, now, push_not_before, unsigned, MockKeycloak, SigningKey,
};
use common::*;
use serde_json::{json, Value};

const HOST: &str = "acme.qa.example.com";
const LOGOUT: &str = "/.realmgate/backchannel-logout";
const NOT_BEFORE: &str = "/.realmgate/k_push_not_before";
const REDIS_PORT: u16 = 6379;

fn config(kc: &MockKeycloak, extra: &str) -> String {
    config_from(TestConfig::new(&kc.base()), extra)
}

/// The revocation tests' config on a shared template (one worker thread), then `extra`.
fn config_from(template: TestConfig, extra: &str) -> String {
    template.threads(1).with(&format!(
        r#"
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [{HOST}]}}
  - {{id: other, realm: tenant-other, hosts: [other.qa.example.com]}}
routes:
  - {{path: "/api/**", authenticated: true}}
default_policy: deny
{writes}
{extra}
"#,
        writes = common::admin_writes_yaml(),
    ))
}

/// A Redis section shared by every replica started with the same `prefix`.
fn redis_section(port: u16, prefix: &str) -> String {
    format!(
        r#"
redis:
  url: "redis://127.0.0.1:{port}"
  command_timeout: 200ms
  key_prefix: "{prefix}"
  channel: "{prefix}invalidate"
revocation:
  redis: {{channel: "{prefix}revocations", key: "{prefix}revocations"}}
"#
    )
}

fn prefix() -> String {
    format!("realmgate:revoke:{:016x}:", rand::random::<u64>())
}

struct Env {
    kc: MockKeycloak,
    key: SigningKey,
    other_key: SigningKey,
    up: Upstream,
}

impl Env {
    async fn new() -> Self {
        let kc = MockKeycloak::start().await;
        let key = SigningKey::rsa("acme-1");
        let other_key = SigningKey::rsa("other-1");
        kc.set_keys("tenant-acme", &[&key]);
        kc.set_keys("tenant-other", &[&other_key]);
        let up = Upstream::start().await;
        Self {
            kc,
            key,
            other_key,
            up,
        }
    }

    fn gateway(&self, extra: &str) -> Gateway {
        Gateway::start(&config(&self.kc, extra), self.up.addr)
    }

    /// An access token of `sub` in session `sid`, issued at `iat`.
    fn token(&self, sub: &str, sid: Option<&str>, iat: u64) -> String {
        let mut c = claims(&self.kc.base(), "tenant-acme", sub, &["viewer"]);
        c["iat"] = json!(iat);
        if let Some(sid) = sid {
            c["sid"] = json!(sid);
        }
        self.key.sign(&c)
    }

    fn logout_token(&self, sub: Option<&str>, sid: Option<&str>) -> String {
        self.key
            .sign_logout(&logout_claims(&self.kc.base(), "tenant-acme", sub, sid))
    }
}

/// GET /api/x with `token`; the status and the JSON body.
async fn call(gw: &Gateway, token: &str) -> (u16, Value, Option<String>) {
    let r = client()
        .get(gw.url("/api/x"))
        .header("host", HOST)
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let challenge = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    (status, r.json().await.unwrap_or(Value::Null), challenge)
}

async fn status(gw: &Gateway, token: &str) -> u16 {
    call(gw, token).await.0
}

/// POSTs a back-channel logout form body; status, body, Cache-Control.
async fn post_form(gw: &Gateway, host: &str, body: String) -> (u16, Value, String) {
    let r = client()
        .post(gw.url(LOGOUT))
        .header("host", host)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let cc = r
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, r.json().await.unwrap_or(Value::Null), cc)
}

async fn logout(gw: &Gateway, token: &str) -> (u16, Value) {
    let (s, b, cc) = post_form(gw, HOST, format!("logout_token={token}")).await;
    assert_eq!(cc, "no-store");
    (s, b)
}

/// Polls until `token` is refused with 401 token_revoked; fails unless within `limit`.
async fn refused_within(gw: &Gateway, token: &str, limit: Duration, what: &str) {
    let start = Instant::now();
    loop {
        let (s, body, challenge) = call(gw, token).await;
        if s == 401 {
            assert_eq!(body["error"], "token_revoked", "{what}: {body}");
            assert!(
                challenge.is_some_and(|c| c.contains("error=\"invalid_token\"")),
                "{what}: RFC 6750 challenge"
            );
            break;
        }
        assert_eq!(s, 200, "{what}: {body}");
        assert!(
            start.elapsed() < limit,
            "{what}: not refused within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        start.elapsed() < limit,
        "{what}: took {:?}",
        start.elapsed()
    );
}

async fn get_json(url: &str) -> Value {
    let r = client().get(url).send().await.unwrap();
    r.json().await.unwrap()
}

fn subscribed(gw: &Gateway) -> bool {
    gw.shared
        .revocation_replica
        .lock()
        .as_ref()
        .is_some_and(|r| r.subscribed())
}

fn cache_hits(text: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with("realmgate_token_cache_total{result=\"hit\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_token_is_refused_within_a_second_after_a_logout_of_its_session() {
    let env = Env::new().await;
    let gw = env.gateway("");
    let t = now();
    let ended = env.token("alice", Some("sess-1"), t);
    let kept = env.token("alice", Some("sess-2"), t);
    assert_eq!(status(&gw, &ended).await, 200);
    let hits = cache_hits(&gw.metrics_text().await);
    assert_eq!(status(&gw, &ended).await, 200);
    assert!(
        cache_hits(&gw.metrics_text().await) > hits,
        "the token is served from the verified-token cache"
    );
    assert_eq!(status(&gw, &kept).await, 200);

    // Keycloak with "Backchannel logout session required": sid only.
    let (s, body) = logout(&gw, &env.logout_token(None, Some("sess-1"))).await;
    assert_eq!(s, 200, "{body}");
    refused_within(&gw, &ended, Duration::from_secs(1), "the ended session").await;
    assert_eq!(status(&gw, &kept).await, 200, "another session of the user");
    assert_eq!(env.up.take().len(), 4, "the logout was never forwarded");

    let m = gw.metrics_text().await;
    assert!(m.contains("realmgate_revocations_total{source=\"backchannel\"}"));
    // The gauge is process-wide (tests share the process): the list says what this gateway holds.
    assert!(m.contains("realmgate_revocation_entries "), "{m}");
    assert_eq!(gw.shared.revoker.list.len(), 1);
    assert!(m.contains("realmgate_rejections_total{code=\"token_revoked\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_by_sub_ends_every_session_of_the_user_and_only_until_then() {
    let env = Env::new().await;
    let gw = env.gateway("");
    let t = now();
    let a = env.token("bob", Some("s-a"), t);
    let b = env.token("bob", None, t);
    let carol = env.token("carol", Some("s-c"), t);
    for tok in [&a, &b, &carol] {
        assert_eq!(status(&gw, tok).await, 200);
    }
    let (s, body) = logout(&gw, &env.logout_token(Some("bob"), None)).await;
    assert_eq!(s, 200, "{body}");
    refused_within(&gw, &a, Duration::from_secs(1), "bob's session a").await;
    refused_within(&gw, &b, Duration::from_secs(1), "bob's token without sid").await;
    assert_eq!(status(&gw, &carol).await, 200, "another user");
    // A login after the logout works.
    let fresh = env.token("bob", Some("s-new"), now() + 2);
    assert_eq!(status(&gw, &fresh).await, 200);

    // Keycloak's "log out all sessions" sends one session's sid with the sub (#22914): with
    // revoke_subject (the default) every session of the sub ends.
    let d1 = env.token("dave", Some("d-1"), t);
    let d2 = env.token("dave", Some("d-2"), t);
    assert_eq!(status(&gw, &d2).await, 200);
    let (s, _) = logout(&gw, &env.logout_token(Some("dave"), Some("d-1"))).await;
    assert_eq!(s, 200);
    refused_within(&gw, &d1, Duration::from_secs(1), "dave's named session").await;
    refused_within(&gw, &d2, Duration::from_secs(1), "dave's other session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_sharing_redis_refuses_within_a_second() {
    let env = Env::new().await;
    let p = prefix();
    let a = env.gateway(&redis_section(REDIS_PORT, &p));
    let b = env.gateway(&redis_section(REDIS_PORT, &p));
    until(
        || subscribed(&a) && subscribed(&b),
        "both replicas subscribed",
    )
    .await;
    let tok = env.token("erin", Some("e-1"), now());
    assert_eq!(status(&a, &tok).await, 200);
    assert_eq!(status(&b, &tok).await, 200);
    assert_eq!(status(&b, &tok).await, 200, "cached on b");

    let (s, body) = logout(&a, &env.logout_token(None, Some("e-1"))).await;
    assert_eq!(s, 200, "{body}");
    refused_within(&a, &tok, Duration::from_secs(1), "replica a").await;
    refused_within(&b, &tok, Duration::from_secs(1), "replica b").await;
    let m = b.metrics_text().await;
    assert!(
        m.contains("realmgate_revocations_total{source=\"replica\"}"),
        "{m}"
    );
    // The admin API reaches every replica the same way.
    let other = env.token("frank", None, now());
    assert_eq!(status(&a, &other).await, 200);
    let r = client()
        .post(b.writes_url("/revoke"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({"tenant": "acme", "sub": "frank"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    refused_within(
        &a,
        &other,
        Duration::from_secs(1),
        "admin revoke on b, seen on a",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_after_the_logout_refuses_the_token() {
    let env = Env::new().await;
    let p = prefix();
    let a = env.gateway(&redis_section(REDIS_PORT, &p));
    until(|| subscribed(&a), "replica a subscribed").await;
    let tok = env.token("gina", Some("g-1"), now());
    let (s, _) = logout(&a, &env.logout_token(Some("gina"), Some("g-1"))).await;
    assert_eq!(s, 200);
    // The record is in Redis before the late replica starts.
    until(
        || {
            std::process::Command::new("redis-cli")
                .args([
                    "-p",
                    &REDIS_PORT.to_string(),
                    "ZCARD",
                    &format!("{p}revocations"),
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim() != "0")
                .unwrap_or(false)
        },
        "the revocation stored in redis",
    )
    .await;
    drop(a);
    let late = env.gateway(&redis_section(REDIS_PORT, &p));
    until(|| subscribed(&late), "the late replica subscribed").await;
    let (s, body, _) = call(&late, &tok).await;
    assert_eq!(
        (s, &body["error"]),
        (401, &json!("token_revoked")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_logout_tokens_are_400_and_revoke_nothing() {
    let env = Env::new().await;
    let gw = env.gateway("");
    let tok = env.token("henry", Some("h-1"), now());
    assert_eq!(status(&gw, &tok).await, 200);
    let base = env.kc.base();
    let good = || logout_claims(&base, "tenant-acme", Some("henry"), Some("h-1"));
    let with = |k: &str, v: Value| {
        let mut c = good();
        c[k] = v;
        c
    };
    let mut no_events = good();
    no_events.as_object_mut().unwrap().remove("events");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nonce",
            env.key.sign_logout(&with("nonce", json!("n-1"))),
            "nonce_present",
        ),
        (
            "no events",
            env.key.sign_logout(&no_events),
            "missing_event",
        ),
        (
            "wrong aud",
            env.key.sign_logout(&with("aud", json!("someone-else"))),
            "audience_mismatch",
        ),
        (
            "foreign iss",
            env.key.sign_logout(&logout_claims(
                &base,
                "tenant-other",
                Some("henry"),
                Some("h-1"),
            )),
            "issuer_mismatch",
        ),
        (
            "foreign realm's key",
            env.other_key.sign_logout(&good()),
            "unknown_key",
        ),
        (
            "future iat",
            env.key.sign_logout(&with("iat", json!(now() + 3600))),
            "bad_iat",
        ),
        (
            "stale iat",
            env.key.sign_logout(&with("iat", json!(now() - 3600))),
            "bad_iat",
        ),
        ("alg none", unsigned(&good()), "alg_not_allowed"),
        (
            "access token typ",
            env.key.sign_typed(Some("at+jwt"), &good()),
            "wrong_type",
        ),
    ];
    for (what, token, reason) in &cases {
        let (s, body) = logout(&gw, token).await;
        assert_eq!(s, 400, "{what}: {body}");
        assert_eq!(body["error"], "invalid_request", "{what}");
        assert_eq!(body["reason"], *reason, "{what}: {body}");
    }
    // A body over the limit (16 KiB by default), though it carries a valid token.
    let padded = format!(
        "logout_token={}&pad={}",
        env.logout_token(Some("henry"), Some("h-1")),
        "x".repeat(20_000)
    );
    let (s, body, _) = post_form(&gw, HOST, padded).await;
    assert_eq!(
        (s, &body["reason"]),
        (400, &json!("body_too_large")),
        "{body}"
    );
    // Not a form, no field, two fields, another method.
    let (s, body, _) = post_form(&gw, HOST, "nothing=here".into()).await;
    assert_eq!((s, &body["reason"]), (400, &json!("missing_logout_token")));
    let t = env.logout_token(Some("henry"), Some("h-1"));
    let (s, _, _) = post_form(&gw, HOST, format!("logout_token={t}&logout_token={t}")).await;
    assert_eq!(s, 400);
    let r = client()
        .post(gw.url(LOGOUT))
        .header("host", HOST)
        .header("content-type", "application/json")
        .body(format!("{{\"logout_token\":\"{t}\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = client()
        .get(gw.url(LOGOUT))
        .header("host", HOST)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    assert!(gw.shared.revoker.list.is_empty(), "nothing was revoked");
    assert_eq!(status(&gw, &tok).await, 200);
    assert_eq!(env.up.take().len(), 2, "no logout request was forwarded");

    // A replayed jti: the first use revokes, the second is refused.
    let once = env
        .key
        .sign_logout(&logout_claims(&base, "tenant-acme", Some("ivy"), None));
    assert_eq!(logout(&gw, &once).await.0, 200);
    let (s, body) = logout(&gw, &once).await;
    assert_eq!(
        (s, &body["reason"]),
        (400, &json!("replayed_jti")),
        "{body}"
    );
    assert_eq!(gw.shared.revoker.list.len(), 1, "only ivy's logout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_before_push_revokes_older_tokens_and_keeps_newer_ones() {
    let env = Env::new().await;
    let gw = env.gateway("");
    let t = now();
    let older = env.token("jack", Some("j-1"), t - 5);
    let newer = env.token("kate", Some("k-1"), t + 1);
    assert_eq!(status(&gw, &older).await, 200);
    assert_eq!(status(&gw, &newer).await, 200);
    let push = |nb: u64, resource: &str| {
        let body = env
            .key
            .sign_typed(Some("JWT"), &push_not_before(resource, nb));
        client()
            .post(gw.url(NOT_BEFORE))
            .header("host", HOST)
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    assert_eq!(push(t, "someone-else").await.unwrap().status(), 400);
    assert_eq!(
        status(&gw, &older).await,
        200,
        "an invalid push changes nothing"
    );
    assert_eq!(push(t, "qa-platform-backend").await.unwrap().status(), 200);
    refused_within(
        &gw,
        &older,
        Duration::from_secs(1),
        "issued before not-before",
    )
    .await;
    assert_eq!(status(&gw, &newer).await, 200, "issued after not-before");
    // A push signed by another realm's key is refused.
    let forged = env
        .other_key
        .sign_typed(Some("JWT"), &push_not_before("qa-platform-backend", t + 1));
    let r = client()
        .post(gw.url(NOT_BEFORE))
        .header("host", HOST)
        .body(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(status(&gw, &newer).await, 200);
    // The admin listener sets it too.
    let r = client()
        .post(gw.writes_url("/not-before"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({"tenant": "acme", "not_before": t + 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    refused_within(&gw, &newer, Duration::from_secs(1), "admin not-before").await;
    let m = gw.metrics_text().await;
    assert!(m.contains("realmgate_revocations_total{source=\"not_before\"}"));
    assert!(m.contains("realmgate_revocations_total{source=\"admin\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_entries_expire_once_no_token_they_cover_can_be_valid() {
    let env = Env::new().await;
    // Tokens live at most 2 s here, and no leeway: an entry is held 2 s.
    let yaml = config_from(
        TestConfig::new(&env.kc.base()).keycloak("leeway: 0s"),
        "revocation: {max_token_lifetime: 2s}\n",
    );
    let gw = Gateway::start(&yaml, env.up.addr);
    assert_eq!(gw.shared.config.load().revocation.hold_secs, 2);
    let tok = env.token("liam", Some("l-1"), now());
    let (s, _) = logout(&gw, &env.logout_token(Some("liam"), Some("l-1"))).await;
    assert_eq!(s, 200);
    assert_eq!(gw.shared.revoker.list.len(), 2, "sid and sub");
    assert_eq!(status(&gw, &tok).await, 401);
    until(
        || gw.shared.revoker.list.is_empty(),
        "entries swept after 2 s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_revocation_still_applies_on_this_replica() {
    let env = Env::new().await;
    // Nothing listens there: the replica link keeps retrying.
    let dead = free_port();
    let p = prefix();
    let gw = env.gateway(&redis_section(dead, &p));
    let tok = env.token("mia", Some("m-1"), now());
    assert_eq!(status(&gw, &tok).await, 200);
    let (s, body) = logout(&gw, &env.logout_token(None, Some("m-1"))).await;
    assert_eq!(s, 200, "{body}");
    refused_within(&gw, &tok, Duration::from_secs(1), "local revocation").await;
    assert!(!subscribed(&gw));
    let ready: Value = get_json(&gw.admin_url("/readyz")).await;
    assert_eq!(ready["revocation"]["replicated"], true, "{ready}");
    assert_eq!(ready["revocation"]["subscribed"], false, "{ready}");

    // Redis comes back: the waiting revocation is written and published, so a replica
    // started now refuses the token too.
    let _redis = OwnRedis::start(dead);
    until(|| subscribed(&gw), "the replica link reconnected").await;
    let late = env.gateway(&redis_section(dead, &p));
    until(|| subscribed(&late), "a second replica subscribed").await;
    refused_within(
        &late,
        &tok,
        Duration::from_secs(1),
        "the revocation sent after the outage",
    )
    .await;
}

/// A redis-server of this test's own (killed on drop), for outages.
struct OwnRedis(std::process::Child);

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        Self(child)
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_cuts_a_user_off_through_the_admin_listener_only() {
    let env = Env::new().await;
    let gw = env.gateway("");
    let tok = env.token("noah", None, now());
    assert_eq!(status(&gw, &tok).await, 200);
    // The admin API is not on the proxy listener.
    let r = client()
        .post(gw.url("/revoke"))
        .header("host", HOST)
        .json(&json!({"tenant": "acme", "sub": "noah"}))
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200);
    assert!(gw.shared.revoker.list.is_empty());
    let bad = client()
        .post(gw.writes_url("/revoke"))
        .bearer_auth(common::ADMIN_TOKEN)
        .json(&json!({"tenant": "acme"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_realmgate"))
        .args([
            "revoke",
            "--admin",
            &format!("http://{}", gw.writes.unwrap()),
            "--token-file",
            common::admin_token_file().to_str().unwrap(),
            "--tenant",
            "acme",
            "--sub",
            "noah",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["revoked"]["kind"], "sub");
    refused_within(&gw, &tok, Duration::from_secs(1), "cli revoke").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoints_are_rate_limited() {
    let env = Env::new().await;
    let gw = env.gateway("revocation: {backchannel: {rate_per_second: 1}}\n");
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post_form(&gw, HOST, "logout_token=x".into()).await.0);
    }
    // Burst 2x the rate: two are read (and refused as junk), the third is not.
    assert_eq!(statuses, [400, 400, 429]);
}

#[test]
fn revocation_settings_are_validated_with_field_names() {
    let yaml = r#"
listen: {proxy: "127.0.0.1:1", admin: "127.0.0.1:2"}
upstream: {default: "127.0.0.1:3"}
keycloak: {base_url: "http://127.0.0.1:9", audiences: [backend]}
revocation:
  max_token_lifetime: 0s
  max_entries: 0
  backchannel: {path: "no-slash", max_age: 2h, max_body_bytes: 10, rate_per_second: 0, audiences: []}
  not_before: {path: "no-slash"}
  redis: {channel: "", key: ""}
"#;
    let err = realmgate::config::from_str(yaml, &std::collections::HashMap::new())
        .err()
        .expect("refused")
        .to_string();
    for field in [
        "revocation.max_token_lifetime",
        "revocation.max_entries",
        "revocation.backchannel.path",
        "revocation.backchannel.max_age",
        "revocation.backchannel.max_body_bytes",
        "revocation.backchannel.rate_per_second",
        "revocation.backchannel.audiences",
        "revocation.not_before.path",
        "revocation.redis.channel",
        "revocation.redis.key",
    ] {
        assert!(err.contains(field), "{field} in {err}");
    }
}
