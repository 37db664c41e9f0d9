//! GrantStore against a real Redis: 127.0.0.1:6379 (override with REALMGATE_TEST_REDIS_URL),
//! plus private `redis-server` children for the failure tests. Never mocked, never skipped:
//! without Redis these tests fail and say why.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use realmgate::grants::{
    GrantKey, GrantSettings, GrantSource, GrantStore, InvalidationPreference, MAX_MEMBERS_PER_KEY,
};
use realmgate::metrics::metrics;
use tokio::sync::watch;

const CONFIG_GRANT: &str = "config.read.all";

fn shared_url() -> String {
    std::env::var("REALMGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A synchronous admin connection for arranging data; panics with instructions if Redis is absent.
fn admin(url: &str) -> redis::Connection {
    let client = redis::Client::open(url).unwrap();
    client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap_or_else(|e| {
            panic!(
                "these tests need a real Redis at {url} (start `redis-server`, or set \
                 REALMGATE_TEST_REDIS_URL); connecting failed: {e}"
            )
        })
}

fn cmd(con: &mut redis::Connection, args: &[&[u8]]) -> redis::Value {
    let mut c = redis::cmd(std::str::from_utf8(args[0]).unwrap());
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(con).unwrap()
}

fn sadd(con: &mut redis::Connection, key: &str, members: &[&str]) {
    let mut args: Vec<&[u8]> = vec![b"SADD", key.as_bytes()];
    args.extend(members.iter().map(|m| m.as_bytes()));
    cmd(con, &args);
}

fn srem(con: &mut redis::Connection, key: &str, member: &str) {
    cmd(con, &[b"SREM", key.as_bytes(), member.as_bytes()]);
}

fn publish(con: &mut redis::Connection, channel: &str, msg: &str) {
    cmd(con, &[b"PUBLISH", channel.as_bytes(), msg.as_bytes()]);
}

/// A tenant id no other test (or run) uses; its keys are deleted on drop.
struct Tenant {
    id: String,
    url: String,
    prefix: String,
}

impl Tenant {
    fn new(url: &str) -> Self {
        Self::with_prefix(url, "")
    }
    fn with_prefix(url: &str, prefix: &str) -> Self {
        Self {
            id: format!("rgtest{:016x}", rand::random::<u64>()),
            url: url.into(),
            prefix: prefix.into(),
        }
    }
    fn user_key(&self, sub: &str) -> String {
        format!("{}tenant:{}:user:{sub}:permissions", self.prefix, self.id)
    }
    fn role_key(&self, role: &str) -> String {
        format!("{}tenant:{}:role:{role}:permissions", self.prefix, self.id)
    }
    fn channel(&self) -> String {
        format!("realmgate:test:{}:invalidate", self.id)
    }
    /// Channel messages only: the tests of explicit invalidation must not be overtaken by a
    /// tracking push (the tracking tests use [`Tenant::settings_with`]).
    fn settings(&self) -> GrantSettings {
        self.settings_with(InvalidationPreference::Pubsub)
    }
    fn settings_with(&self, invalidation: InvalidationPreference) -> GrantSettings {
        GrantSettings {
            url: self.url.clone(),
            channel: self.channel(),
            key_prefix: self.prefix.clone(),
            invalidation,
            ..GrantSettings::default()
        }
    }
}

impl Drop for Tenant {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(500)) else {
            return;
        };
        let pattern = format!("{}tenant:{}:*", self.prefix, self.id);
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut con)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut con);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
struct Perms {
    source: &'static str,
    grants: BTreeSet<String>,
}

impl Perms {
    fn has(&self, g: &str) -> bool {
        self.grants.contains(g)
    }
}

/// Stand-in for the permission compiler: config grants plus whatever Redis contributed.
fn compile(src: &GrantSource) -> Perms {
    let mut grants = BTreeSet::from([CONFIG_GRANT.to_owned()]);
    let source = match src {
        GrantSource::Redis(raw) => {
            grants.extend(raw.user.iter().cloned());
            for (_, g) in &raw.roles {
                grants.extend(g.iter().cloned());
            }
            "redis"
        }
        GrantSource::Unavailable => "unavailable",
        GrantSource::Disabled => "disabled",
    };
    Perms { source, grants }
}

fn roles(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|r| Arc::from(*r)).collect()
}

/// Calls `effective` and counts compiles (i.e. loads) in `loads`.
async fn eff(
    store: &GrantStore<Perms>,
    t: &Tenant,
    sub: &str,
    r: &[Arc<str>],
    loads: &AtomicUsize,
) -> Arc<Perms> {
    store
        .effective(&GrantKey::new(&t.id, sub, r), |src| {
            loads.fetch_add(1, Ordering::SeqCst);
            compile(src)
        })
        .await
}

async fn wait_for<F: FnMut() -> Fut, Fut: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut cond: F,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn start_subscriber(store: &Arc<GrantStore<Perms>>) -> watch::Sender<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(Arc::clone(store).run_subscriber(rx));
    tx
}

async fn wait_subscribed(store: &GrantStore<Perms>) {
    wait_for(Duration::from_secs(5), "subscriber connected", || async {
        store.subscriber_connected()
    })
    .await;
}

#[tokio::test]
async fn user_role_and_union_grants_are_loaded() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    sadd(
        &mut con,
        &t.user_key("alice"),
        &["users.read.own", "orders.read.own"],
    );
    sadd(&mut con, &t.role_key("editor"), &["docs.write.all"]);
    sadd(&mut con, &t.role_key("viewer"), &["docs.read.all"]);
    sadd(&mut con, &t.role_key("admin"), &["everything.delete.all"]);
    let store = GrantStore::new(Some(t.settings())).unwrap();
    let loads = AtomicUsize::new(0);

    let user_only = eff(&store, &t, "alice", &[], &loads).await;
    assert_eq!(user_only.source, "redis");
    assert!(user_only.has("users.read.own") && user_only.has("orders.read.own"));
    assert!(user_only.has(CONFIG_GRANT));
    assert!(!user_only.has("docs.write.all"));

    let role_only = eff(&store, &t, "bob", &roles(&["editor"]), &loads).await;
    assert_eq!(
        role_only.grants,
        BTreeSet::from([CONFIG_GRANT.into(), "docs.write.all".into()])
    );

    let union = eff(&store, &t, "alice", &roles(&["editor", "viewer"]), &loads).await;
    let want: BTreeSet<String> = [
        CONFIG_GRANT,
        "users.read.own",
        "orders.read.own",
        "docs.write.all",
        "docs.read.all",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(union.grants, want, "admin is not among the token's roles");

    let raw_store = GrantStore::new(Some(t.settings())).unwrap();
    let raw = raw_store
        .effective(
            &GrantKey::new(&t.id, "alice", &roles(&["editor", "editor", "nobody"])),
            |src| {
                let GrantSource::Redis(raw) = src else {
                    panic!("{src:?}")
                };
                let mut raw = raw.clone();
                raw.user.sort();
                raw
            },
        )
        .await;
    assert_eq!(raw.user, ["orders.read.own", "users.read.own"]);
    assert_eq!(
        raw.roles,
        [
            ("editor".to_owned(), vec!["docs.write.all".to_owned()]),
            ("nobody".to_owned(), vec![])
        ],
        "duplicate roles read once, missing role sets are empty"
    );
}

#[tokio::test]
async fn cache_hit_does_not_query_redis_and_ttl_reloads() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    sadd(&mut con, &t.user_key("alice"), &["users.read.own"]);
    let ttl = Duration::from_millis(400);
    let store = GrantStore::new(Some(GrantSettings {
        cache_ttl: ttl,
        ..t.settings()
    }))
    .unwrap();
    let loads = AtomicUsize::new(0);
    let r = roles(&["viewer"]);

    let loaded_at = Instant::now();
    assert!(eff(&store, &t, "alice", &r, &loads)
        .await
        .has("users.read.own"));
    srem(&mut con, &t.user_key("alice"), "users.read.own");
    sadd(&mut con, &t.user_key("alice"), &["users.write.own"]);
    let again = eff(&store, &t, "alice", &r, &loads).await;
    assert!(
        again.has("users.read.own") && !again.has("users.write.own"),
        "served from cache"
    );
    assert_eq!(loads.load(Ordering::SeqCst), 1);

    wait_for(Duration::from_secs(3), "reload after TTL", || async {
        eff(&store, &t, "alice", &r, &loads)
            .await
            .has("users.write.own")
    })
    .await;
    assert!(loaded_at.elapsed() >= ttl, "reloaded before the TTL");
    let now = eff(&store, &t, "alice", &r, &loads).await;
    assert!(!now.has("users.read.own"));
    assert_eq!(loads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_invalidation_revokes_within_one_second() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    let store = GrantStore::new(Some(t.settings())).unwrap();
    let _stop = start_subscriber(&store);
    wait_subscribed(&store).await;
    let loads = AtomicUsize::new(0);
    let (editor, viewer) = (roles(&["viewer", "editor"]), roles(&["viewer"]));
    sadd(&mut con, &t.user_key("alice"), &["u.a.own"]);
    sadd(&mut con, &t.user_key("bob"), &["u.b.own"]);
    sadd(&mut con, &t.role_key("editor"), &["docs.write.all"]);
    sadd(&mut con, &t.role_key("viewer"), &["docs.read.all"]);

    // Revokes `grant` from `key`, publishes `msg`, and waits until `sub` with `r` no longer has it.
    async fn revoke(
        con: &mut redis::Connection,
        store: &GrantStore<Perms>,
        t: &Tenant,
        loads: &AtomicUsize,
        (key, grant, msg): (&str, &str, &str),
        (sub, r): (&str, &[Arc<str>]),
    ) {
        assert!(
            eff(store, t, sub, r, loads).await.has(grant),
            "{grant} before"
        );
        srem(con, key, grant);
        assert!(
            eff(store, t, sub, r, loads).await.has(grant),
            "cached until invalidated"
        );
        publish(con, &t.channel(), msg);
        let took = wait_for(Duration::from_secs(1), msg, || async {
            !eff(store, t, sub, r, loads).await.has(grant)
        })
        .await;
        eprintln!("{msg}: revoked after {took:?}");
    }

    // user: every role combination of that user, nobody else.
    eff(&store, &t, "alice", &viewer, &loads).await;
    eff(&store, &t, "bob", &viewer, &loads).await;
    let before = loads.load(Ordering::SeqCst);
    let msg = format!("tenant:{}:user:alice", t.id);
    revoke(
        &mut con,
        &store,
        &t,
        &loads,
        (&t.user_key("alice"), "u.a.own", &msg),
        ("alice", &editor),
    )
    .await;
    assert!(
        !eff(&store, &t, "alice", &viewer, &loads)
            .await
            .has("u.a.own"),
        "other role set too"
    );
    let after_user = loads.load(Ordering::SeqCst);
    eff(&store, &t, "bob", &viewer, &loads).await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        after_user,
        "bob stayed cached"
    );
    assert!(after_user > before);

    // A message we don't understand changes nothing (ordering: processed before the next one).
    publish(&mut con, &t.channel(), "tenant:whatever:group:x");

    // role: every set that includes the role; sets without it stay cached.
    let msg = format!("tenant:{}:role:editor", t.id);
    revoke(
        &mut con,
        &store,
        &t,
        &loads,
        (&t.role_key("editor"), "docs.write.all", &msg),
        ("bob", &editor),
    )
    .await;
    let n = loads.load(Ordering::SeqCst);
    eff(&store, &t, "bob", &viewer, &loads).await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        n,
        "bob/viewer does not include editor"
    );

    // tenant: everything in the tenant.
    let msg = format!("tenant:{}", t.id);
    revoke(
        &mut con,
        &store,
        &t,
        &loads,
        (&t.role_key("viewer"), "docs.read.all", &msg),
        ("bob", &viewer),
    )
    .await;

    // *: everything.
    revoke(
        &mut con,
        &store,
        &t,
        &loads,
        (&t.user_key("bob"), "u.b.own", "*"),
        ("bob", &editor),
    )
    .await;
}

#[tokio::test]
async fn concurrent_misses_share_one_load() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    sadd(&mut con, &t.user_key("alice"), &["users.read.own"]);
    let store = GrantStore::new(Some(t.settings())).unwrap();
    let loads = AtomicUsize::new(0);
    let r = roles(&["a", "b"]);
    let all =
        futures::future::join_all((0..32).map(|_| eff(&store, &t, "alice", &r, &loads))).await;
    assert!(all.iter().all(|p| p.has("users.read.own")));
    assert_eq!(loads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn odd_data_does_not_crash_and_is_capped() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    let user = t.user_key("alice");
    cmd(
        &mut con,
        &[
            b"SADD",
            user.as_bytes(),
            b"users.read.own",
            b"\xff\xfe\x00binary",
            b"not a grant",
        ],
    );
    let long = "x".repeat(5000);
    sadd(&mut con, &user, &[&long]);
    let huge = t.role_key("huge");
    for chunk in (0..MAX_MEMBERS_PER_KEY + 2000)
        .collect::<Vec<_>>()
        .chunks(1000)
    {
        let members: Vec<String> = chunk.iter().map(|i| format!("bulk.read.{i}")).collect();
        let refs: Vec<&str> = members.iter().map(String::as_str).collect();
        sadd(&mut con, &huge, &refs);
    }
    cmd(
        &mut con,
        &[
            b"SET",
            t.role_key("wrong").as_bytes(),
            b"a string, not a set",
        ],
    );
    sadd(&mut con, &t.role_key("fine"), &["docs.read.all"]);
    let invalid_before = metrics()
        .invalid_grants_total
        .with_label_values(&["redis"])
        .get();

    // Generous timeout: this test is about data, and 12k members in a debug build are slow.
    let store = GrantStore::new(Some(GrantSettings {
        command_timeout: Duration::from_secs(5),
        ..t.settings()
    }))
    .unwrap();
    let raw = store
        .effective(
            &GrantKey::new(&t.id, "alice", &roles(&["huge", "wrong", "fine"])),
            |src| match src {
                GrantSource::Redis(raw) => raw.clone(),
                other => panic!("{other:?}"),
            },
        )
        .await;
    let mut user_grants = raw.user.clone();
    user_grants.sort();
    assert_eq!(
        user_grants,
        ["not a grant", "users.read.own"],
        "passed through unvalidated"
    );
    assert_eq!(raw.roles[0].0, "huge");
    assert_eq!(raw.roles[0].1.len(), MAX_MEMBERS_PER_KEY);
    assert_eq!(
        raw.roles[1],
        ("wrong".to_owned(), vec![]),
        "WRONGTYPE key grants nothing"
    );
    assert_eq!(
        raw.roles[2],
        ("fine".to_owned(), vec!["docs.read.all".to_owned()])
    );
    let invalid_after = metrics()
        .invalid_grants_total
        .with_label_values(&["redis"])
        .get();
    assert!(
        invalid_after >= invalid_before + 2,
        "binary and oversized members counted"
    );
}

#[tokio::test]
async fn bad_key_parts_get_no_redis_grants_and_prefix_is_used() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::with_prefix(&url, "rgprefix:");
    sadd(&mut con, &t.user_key("bad sub"), &["stolen.read.all"]);
    sadd(&mut con, &t.role_key("bad\trole"), &["stolen.write.all"]);
    sadd(&mut con, &t.user_key("alice"), &["users.read.own"]);
    // Same data without the prefix must not be seen.
    let unprefixed = Tenant {
        id: t.id.clone(),
        url: url.clone(),
        prefix: String::new(),
    };
    sadd(
        &mut con,
        &unprefixed.user_key("alice"),
        &["unprefixed.read.all"],
    );

    let store = GrantStore::new(Some(t.settings())).unwrap();
    let loads = AtomicUsize::new(0);
    let bad = eff(&store, &t, "bad sub", &roles(&["bad\trole"]), &loads).await;
    assert_eq!(bad.source, "redis");
    assert_eq!(bad.grants, BTreeSet::from([CONFIG_GRANT.to_owned()]));
    let alice = eff(&store, &t, "alice", &roles(&["bad\u{1}role"]), &loads).await;
    assert!(alice.has("users.read.own"));
    assert!(!alice.has("unprefixed.read.all"));
}

// ---------------------------------------------------------------------------------------------
// Failure tests: a private redis-server we can kill, stop and restart.

struct Server {
    port: u16,
    child: Child,
}

impl Server {
    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn start(port: u16) -> Self {
        Self::start_with(port, &[])
    }

    /// A private server with extra `redis-server` arguments.
    fn start_with(port: u16, extra: &[&str]) -> Self {
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
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH for the failure tests");
        let server = Self { port, child };
        let client = redis::Client::open(server.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(mut c) = client.get_connection_with_timeout(Duration::from_millis(200)) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return server;
                }
            }
            assert!(
                Instant::now() < deadline,
                "private redis-server on {port} did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the subscriber on its own runtime thread, like a Pingora background service.
fn background_subscriber(
    store: &Arc<GrantStore<Perms>>,
) -> (watch::Sender<bool>, std::thread::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let store = Arc::clone(store);
    let handle = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(store.run_subscriber(rx));
    });
    (tx, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_serves_cache_then_degrades_then_recovers() {
    let server = Server::start(Server::free_port());
    let port = server.port;
    let url = server.url();
    let t = Tenant::new(&url);
    let seed = |con: &mut redis::Connection| {
        sadd(con, &t.user_key("alice"), &["redis.only.grant"]);
        sadd(con, &t.user_key("bob"), &["redis.bob.grant"]);
    };
    seed(&mut admin(&url));
    let command_timeout = Duration::from_millis(100);
    let cache_ttl = Duration::from_millis(1500);
    let degraded_ttl = Duration::from_millis(300);
    let store = GrantStore::new(Some(GrantSettings {
        command_timeout,
        cache_ttl,
        degraded_ttl,
        ping_interval: Duration::from_millis(200),
        ..t.settings()
    }))
    .unwrap();
    let (stop, subscriber) = background_subscriber(&store);
    wait_subscribed(&store).await;
    let loads = AtomicUsize::new(0);
    let none: Vec<Arc<str>> = vec![];

    let alice = eff(&store, &t, "alice", &none, &loads).await;
    assert!(alice.has("redis.only.grant"));
    let cached_at = Instant::now();
    let degraded_before = metrics()
        .permission_cache_total
        .with_label_values(&["degraded"])
        .get();
    let errors_before = metrics()
        .redis_errors_total
        .with_label_values(&["load"])
        .get()
        + metrics()
            .redis_errors_total
            .with_label_values(&["connect"])
            .get();

    server.kill();
    wait_for(
        Duration::from_secs(3),
        "subscriber notices the dead server",
        || async { !store.subscriber_connected() },
    )
    .await;

    // Cached set still served while its TTL lasts.
    let t0 = Instant::now();
    let alice = eff(&store, &t, "alice", &none, &loads).await;
    assert!(alice.has("redis.only.grant") && alice.source == "redis");
    assert!(t0.elapsed() < Duration::from_millis(50));
    assert!(
        cached_at.elapsed() < cache_ttl,
        "test too slow to check the cached phase"
    );

    // A miss degrades: no Redis-only grants, no error, bounded time.
    for _ in 0..20 {
        let t0 = Instant::now();
        let bob = eff(&store, &t, "bob", &none, &loads).await;
        let took = t0.elapsed();
        assert_eq!(bob.source, "unavailable");
        assert!(!bob.has("redis.bob.grant") && bob.has(CONFIG_GRANT));
        assert!(
            took < command_timeout + Duration::from_millis(150),
            "miss took {took:?}"
        );
        tokio::time::sleep(Duration::from_millis(40)).await;
    }

    // After the TTL the cached set is recompiled without Redis: fail closed.
    wait_for(
        cache_ttl + Duration::from_secs(2),
        "alice degrades after TTL",
        || async { eff(&store, &t, "alice", &none, &loads).await.source == "unavailable" },
    )
    .await;
    assert!(!eff(&store, &t, "alice", &none, &loads)
        .await
        .has("redis.only.grant"));
    assert!(
        metrics()
            .permission_cache_total
            .with_label_values(&["degraded"])
            .get()
            > degraded_before
    );
    let errors_after = metrics()
        .redis_errors_total
        .with_label_values(&["load"])
        .get()
        + metrics()
            .redis_errors_total
            .with_label_values(&["connect"])
            .get();
    assert!(errors_after > errors_before);

    // Restart (empty: no persistence), re-seed: the command link and the subscriber recover.
    let server = Server::start(port);
    seed(&mut admin(&url));
    wait_subscribed(&store).await;
    let took = wait_for(
        Duration::from_secs(2),
        "alice recovers redis grants",
        || async {
            eff(&store, &t, "alice", &none, &loads)
                .await
                .has("redis.only.grant")
        },
    )
    .await;
    eprintln!("recovered {took:?} after restart");

    // The resumed subscriber applies invalidations again.
    let mut con = admin(&url);
    srem(&mut con, &t.user_key("alice"), "redis.only.grant");
    publish(
        &mut con,
        &t.channel(),
        &format!("tenant:{}:user:alice", t.id),
    );
    wait_for(
        Duration::from_secs(1),
        "invalidation after restart",
        || async {
            !eff(&store, &t, "alice", &none, &loads)
                .await
                .has("redis.only.grant")
        },
    )
    .await;

    stop.send(true).unwrap();
    subscriber.join().unwrap();
    assert!(!store.subscriber_connected());
    drop(t);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_redis_times_out_and_is_not_hammered() {
    let server = Server::start(Server::free_port());
    let url = server.url();
    let t = Tenant::new(&url);
    sadd(
        &mut admin(&url),
        &t.user_key("alice"),
        &["redis.only.grant"],
    );
    let command_timeout = Duration::from_millis(100);
    let store = GrantStore::new(Some(GrantSettings {
        command_timeout,
        degraded_ttl: Duration::from_millis(50),
        ..t.settings()
    }))
    .unwrap();
    let loads = AtomicUsize::new(0);
    let none: Vec<Arc<str>> = vec![];
    // Warm the connection with another identity.
    assert_eq!(eff(&store, &t, "warm", &none, &loads).await.source, "redis");

    server.signal("-STOP");
    let t0 = Instant::now();
    let alice = eff(&store, &t, "alice", &none, &loads).await;
    let took = t0.elapsed();
    assert_eq!(alice.source, "unavailable");
    assert!(!alice.has("redis.only.grant"));
    assert!(
        took >= command_timeout - Duration::from_millis(5),
        "{took:?}"
    );
    assert!(
        took < command_timeout + Duration::from_millis(150),
        "{took:?}"
    );

    // Known down: misses don't each wait for the timeout again. Over several backoff windows
    // only the request that starts a reconnect probe waits (the probe itself hangs for
    // connect_timeout against a stopped server, so there is one probe in this window).
    let mut slow = 0;
    for i in 0..30 {
        let t0 = Instant::now();
        let p = eff(&store, &t, &format!("other{i}"), &none, &loads).await;
        let took = t0.elapsed();
        assert_eq!(p.source, "unavailable");
        assert!(
            took < command_timeout + Duration::from_millis(150),
            "{took:?}"
        );
        if took >= Duration::from_millis(50) {
            slow += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{slow} of 30 misses waited on the stopped redis");
    assert!(
        slow <= 2,
        "{slow} of 30 misses waited on a known-down redis"
    );

    server.signal("-CONT");
    wait_for(Duration::from_secs(8), "recovers after SIGCONT", || async {
        eff(&store, &t, "alice", &none, &loads)
            .await
            .has("redis.only.grant")
    })
    .await;
    drop(t);
}

#[tokio::test]
async fn store_outlives_the_runtime_that_connected_it() {
    // Pingora runs several runtimes; a connection made on one keeps working on the others, and a
    // connection whose runtime died is replaced instead of wedging the store.
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    sadd(&mut con, &t.user_key("alice"), &["users.read.own"]);
    let store = GrantStore::new(Some(t.settings())).unwrap();
    {
        let store = Arc::clone(&store);
        let id = t.id.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let p = rt.block_on(store.effective(&GrantKey::new(&id, "first", &[]), compile));
            assert_eq!(p.source, "redis");
        })
        .join()
        .unwrap();
    }
    // The first connection's driver died with its runtime: reconnect at once, don't degrade.
    let loads = AtomicUsize::new(0);
    let alice = eff(&store, &t, "alice", &[], &loads).await;
    assert_eq!(alice.source, "redis");
    assert!(alice.has("users.read.own"));
}

#[tokio::test]
async fn dropped_connection_reconnects_without_degrading() {
    let server = Server::start(Server::free_port());
    let url = server.url();
    let t = Tenant::new(&url);
    let mut con = admin(&url);
    sadd(&mut con, &t.user_key("alice"), &["redis.only.grant"]);
    let store = GrantStore::new(Some(t.settings())).unwrap();
    let loads = AtomicUsize::new(0);
    assert_eq!(eff(&store, &t, "warm", &[], &loads).await.source, "redis");
    // Like an idle timeout or a failover: the server closes our command connection.
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "normal", "SKIPME", "yes"])
        .query(&mut con)
        .unwrap();
    assert!(killed >= 1, "no client killed");
    let alice = eff(&store, &t, "alice", &[], &loads).await;
    assert_eq!(alice.source, "redis");
    assert!(alice.has("redis.only.grant"));
    drop(t);
}

#[tokio::test]
async fn subscriber_health_pings_do_not_disturb_the_subscription() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    sadd(&mut con, &t.user_key("alice"), &["users.read.own"]);
    let store = GrantStore::new(Some(GrantSettings {
        ping_interval: Duration::from_millis(20),
        ..t.settings()
    }))
    .unwrap();
    let _stop = start_subscriber(&store);
    wait_subscribed(&store).await;
    let loads = AtomicUsize::new(0);
    eff(&store, &t, "alice", &[], &loads).await;
    // Many ping rounds: a failed ping would reconnect, which clears the cache (a reload here).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(store.subscriber_connected());
    eff(&store, &t, "alice", &[], &loads).await;
    assert_eq!(
        loads.load(Ordering::SeqCst),
        1,
        "cache was cleared: subscription restarted"
    );
    srem(&mut con, &t.user_key("alice"), "users.read.own");
    publish(
        &mut con,
        &t.channel(),
        &format!("tenant:{}:user:alice", t.id),
    );
    wait_for(
        Duration::from_secs(1),
        "invalidation between pings",
        || async {
            !eff(&store, &t, "alice", &[], &loads)
                .await
                .has("users.read.own")
        },
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Server-assisted invalidation: changes written straight to Redis, no PUBLISH.

/// Polls until `sub` in `t` holds (or lacks) `grant`; how long that took.
async fn until_grant(
    store: &GrantStore<Perms>,
    t: &Tenant,
    sub: &str,
    r: &[Arc<str>],
    grant: &str,
    want: bool,
) -> Duration {
    let loads = AtomicUsize::new(0);
    wait_for(
        Duration::from_secs(3),
        &format!("{sub} {} {grant}", if want { "gains" } else { "loses" }),
        || async { eff(store, t, sub, r, &loads).await.has(grant) == want },
    )
    .await
}

async fn wait_mode(store: &GrantStore<Perms>, mode: &str) {
    wait_for(
        Duration::from_secs(5),
        &format!("invalidation mode {mode}"),
        || async { store.subscriber_connected() && store.invalidation_mode() == mode },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_applies_writes_made_straight_to_redis() {
    let url = shared_url();
    let mut con = admin(&url);
    let t = Tenant::new(&url);
    let store = GrantStore::new(Some(t.settings_with(InvalidationPreference::Auto))).unwrap();
    let _stop = start_subscriber(&store);
    wait_mode(&store, "tracking").await;
    let none: Vec<Arc<str>> = Vec::new();
    let viewer = roles(&["viewer"]);
    let loads = AtomicUsize::new(0);
    // Cached as "nothing" first: the key does not exist yet.
    assert!(!eff(&store, &t, "alice", &none, &loads).await.has("a.b.own"));
    let mut took = Vec::new();
    sadd(&mut con, &t.user_key("alice"), &["a.b.own"]);
    took.push(until_grant(&store, &t, "alice", &none, "a.b.own", true).await);
    srem(&mut con, &t.user_key("alice"), "a.b.own");
    took.push(until_grant(&store, &t, "alice", &none, "a.b.own", false).await);
    // A role set: every user holding the role.
    assert!(!eff(&store, &t, "bob", &viewer, &loads)
        .await
        .has("docs.read.all"));
    assert!(!eff(&store, &t, "carol", &viewer, &loads)
        .await
        .has("docs.read.all"));
    sadd(&mut con, &t.role_key("viewer"), &["docs.read.all"]);
    took.push(until_grant(&store, &t, "bob", &viewer, "docs.read.all", true).await);
    took.push(until_grant(&store, &t, "carol", &viewer, "docs.read.all", true).await);
    // DEL, RENAME and expiry.
    sadd(&mut con, &t.user_key("dave"), &["d.x.own"]);
    took.push(until_grant(&store, &t, "dave", &none, "d.x.own", true).await);
    cmd(&mut con, &[b"DEL", t.user_key("dave").as_bytes()]);
    took.push(until_grant(&store, &t, "dave", &none, "d.x.own", false).await);
    sadd(&mut con, &t.user_key("erin"), &["e.x.own"]);
    took.push(until_grant(&store, &t, "erin", &none, "e.x.own", true).await);
    cmd(
        &mut con,
        &[
            b"RENAME",
            t.user_key("erin").as_bytes(),
            t.user_key("frank").as_bytes(),
        ],
    );
    took.push(until_grant(&store, &t, "erin", &none, "e.x.own", false).await);
    took.push(until_grant(&store, &t, "frank", &none, "e.x.own", true).await);
    cmd(
        &mut con,
        &[b"PEXPIRE", t.user_key("frank").as_bytes(), b"200"],
    );
    let expired = until_grant(&store, &t, "frank", &none, "e.x.own", false).await;
    assert!(expired >= Duration::from_millis(150), "{expired:?}");
    took.sort();
    println!("tracking: time from write to effect, sorted: {took:?}");
    assert!(*took.last().unwrap() < Duration::from_secs(1), "{took:?}");
    // The explicit channel still works alongside.
    sadd(&mut con, &t.user_key("gina"), &["g.x.own"]);
    until_grant(&store, &t, "gina", &none, "g.x.own", true).await;
    publish(&mut con, &t.channel(), &format!("tenant:{}", t.id));
    assert!(eff(&store, &t, "gina", &none, &loads).await.has("g.x.own"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_survives_a_flush_and_a_redis_restart() {
    let port = Server::free_port();
    let server = Server::start(port);
    let t = Tenant::new(&server.url());
    let mut con = admin(&server.url());
    let store = GrantStore::new(Some(t.settings_with(InvalidationPreference::Tracking))).unwrap();
    let (stop, handle) = background_subscriber(&store);
    wait_mode(&store, "tracking").await;
    let none: Vec<Arc<str>> = Vec::new();
    sadd(&mut con, &t.user_key("alice"), &["a.b.own"]);
    until_grant(&store, &t, "alice", &none, "a.b.own", true).await;
    cmd(&mut con, &[b"FLUSHDB"]);
    until_grant(&store, &t, "alice", &none, "a.b.own", false).await;
    // Restart: the subscription is re-established (and the cache cleared) on the new server.
    sadd(&mut con, &t.user_key("alice"), &["a.b.own"]);
    until_grant(&store, &t, "alice", &none, "a.b.own", true).await;
    drop(con);
    server.kill();
    wait_for(Duration::from_secs(5), "subscriber notices", || async {
        !store.subscriber_connected()
    })
    .await;
    let server = Server::start(port);
    let mut con = admin(&server.url());
    wait_mode(&store, "tracking").await;
    until_grant(&store, &t, "alice", &none, "a.b.own", false).await;
    sadd(&mut con, &t.user_key("alice"), &["a.c.own"]);
    until_grant(&store, &t, "alice", &none, "a.c.own", true).await;
    stop.send(true).unwrap();
    handle.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resp3_keyspace_notifications_take_over() {
    // A server that cannot speak RESP3 (as behind a proxy that strips it): HELLO is gone.
    let server = Server::start_with(
        Server::free_port(),
        &[
            "--rename-command",
            "HELLO",
            "",
            "--notify-keyspace-events",
            "KA",
        ],
    );
    let t = Tenant::new(&server.url());
    let mut con = admin(&server.url());
    let store = GrantStore::new(Some(t.settings_with(InvalidationPreference::Auto))).unwrap();
    let (stop, handle) = background_subscriber(&store);
    wait_mode(&store, "keyspace").await;
    let none: Vec<Arc<str>> = Vec::new();
    let loads = AtomicUsize::new(0);
    assert!(!eff(&store, &t, "alice", &none, &loads).await.has("a.b.own"));
    sadd(&mut con, &t.user_key("alice"), &["a.b.own"]);
    until_grant(&store, &t, "alice", &none, "a.b.own", true).await;
    srem(&mut con, &t.user_key("alice"), "a.b.own");
    until_grant(&store, &t, "alice", &none, "a.b.own", false).await;
    stop.send(true).unwrap();
    handle.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_neither_only_the_channel_and_the_ttl_apply() {
    let server = Server::start_with(Server::free_port(), &["--rename-command", "HELLO", ""]);
    let t = Tenant::new(&server.url());
    let mut con = admin(&server.url());
    let store = GrantStore::new(Some(t.settings_with(InvalidationPreference::Auto))).unwrap();
    let (stop, handle) = background_subscriber(&store);
    wait_mode(&store, "ttl").await;
    let none: Vec<Arc<str>> = Vec::new();
    let loads = AtomicUsize::new(0);
    assert!(!eff(&store, &t, "alice", &none, &loads).await.has("a.b.own"));
    sadd(&mut con, &t.user_key("alice"), &["a.b.own"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !eff(&store, &t, "alice", &none, &loads).await.has("a.b.own"),
        "no feed: the cached set stands until a message or the TTL"
    );
    publish(
        &mut con,
        &t.channel(),
        &format!("tenant:{}:user:alice", t.id),
    );
    until_grant(&store, &t, "alice", &none, "a.b.own", true).await;
    assert_eq!(store.invalidation_mode(), "ttl");
    stop.send(true).unwrap();
    handle.join().unwrap();
}
