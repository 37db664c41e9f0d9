//! Unit tests of the grant store (no Redis: the Redis paths are in tests/grants_redis.rs).
#![allow(clippy::unwrap_used)]

use super::keys::{role_key, user_key};
use super::link::{backoff, members};
use super::settings::redact_url;
use super::*;
use futures::FutureExt;
use redis::Value;
use std::sync::atomic::AtomicUsize;
use tokio::sync::watch;

fn roles(names: &[&str]) -> Vec<Arc<str>> {
    names.iter().map(|r| Arc::from(*r)).collect()
}

fn store(ttl: Duration) -> Arc<GrantStore<usize>> {
    GrantStore::new(None)
        .map(|s| {
            // Same construction path, shorter TTL for the tests.
            let mut s = Arc::try_unwrap(s).ok().unwrap();
            s.ttl = ttl;
            Arc::new(s)
        })
        .unwrap()
}

/// Effective value for an identity plus whether compile ran. Uses now_or_never: without
/// Redis nothing ever awaits, so the future must complete on its first poll.
fn get(s: &GrantStore<usize>, t: &str, u: &str, r: &[Arc<str>], calls: &AtomicUsize) -> usize {
    let n = calls.load(Ordering::SeqCst);
    *s.effective(&GrantKey::new(t, u, r), |src| {
        assert_eq!(*src, GrantSource::Disabled);
        calls.fetch_add(1, Ordering::SeqCst);
        n + 1
    })
    .now_or_never()
    .expect("no await without redis")
}

#[test]
fn parse_invalidation_messages() {
    use Invalidation::*;
    let cases: &[(&str, Option<Invalidation<'_>>)] = &[
        ("*", Some(All)),
        (" * \n", Some(All)),
        ("tenant:acme", Some(Tenant("acme"))),
        ("tenant:acme:user:42", Some(User("acme", "42"))),
        ("tenant:acme:user:a:b", Some(User("acme", "a:b"))),
        ("tenant:acme:role:editor", Some(Role("acme", "editor"))),
        (
            "tenant:acme:role:client:admin",
            Some(Role("acme", "client:admin")),
        ),
        ("tenant:", None),
        ("tenant::user:1", None),
        ("tenant:acme:user:", None),
        ("tenant:acme:role:", None),
        ("tenant:acme:group:x", None),
        ("tenant:ac me", None),
        ("tenant:acme:user:a b", None),
        ("user:1", None),
        ("", None),
        ("**", None),
    ];
    for (msg, want) in cases {
        assert_eq!(Invalidation::parse(msg), *want, "{msg:?}");
    }
}

#[test]
fn key_hygiene() {
    assert_eq!(
        user_key("p:", "acme", "u-1").as_deref(),
        Some("p:tenant:acme:user:u-1:permissions")
    );
    assert_eq!(
        role_key("", "acme", "client:admin").as_deref(),
        Some("tenant:acme:role:client:admin:permissions")
    );
    let long = "x".repeat(MAX_KEY_PART_LEN + 1);
    for bad in [
        "",
        "a b",
        "a\tb",
        "a\nb",
        "a\u{0}b",
        "a\u{7f}",
        "a\u{a0}b",
        long.as_str(),
    ] {
        assert_eq!(user_key("", "acme", bad), None, "{bad:?}");
        assert_eq!(role_key("", "acme", bad), None, "{bad:?}");
        assert_eq!(user_key("", bad, "u"), None, "{bad:?}");
    }
    assert_eq!(user_key("", "a:b", "u"), None, "colon in tenant");
}

#[test]
fn members_skip_binary_and_oversized_and_cap() {
    let reply = Value::Array(vec![
        Value::BulkString(b"users.read.own".to_vec()),
        Value::BulkString(vec![0xff, 0xfe]),
        Value::BulkString(vec![b'a'; MAX_MEMBER_LEN + 1]),
        Value::Int(3),
        Value::BulkString(b"not a permission".to_vec()),
    ]);
    assert_eq!(
        members(reply, "k"),
        vec!["users.read.own", "not a permission"]
    );
    let huge = Value::Set(
        (0..MAX_MEMBERS_PER_KEY + 5)
            .map(|i| Value::BulkString(format!("p{i}").into_bytes()))
            .collect(),
    );
    assert_eq!(members(huge, "k").len(), MAX_MEMBERS_PER_KEY);
    assert!(members(Value::Nil, "k").is_empty());
    assert!(members(Value::Int(1), "k").is_empty());
}

#[test]
fn cache_hits_and_ttl() {
    let s = store(Duration::from_millis(50));
    let calls = AtomicUsize::new(0);
    let r = roles(&["a"]);
    assert_eq!(get(&s, "t", "u", &r, &calls), 1);
    assert_eq!(get(&s, "t", "u", &r, &calls), 1, "hit");
    assert_eq!(
        get(&s, "t", "u", &roles(&["a"]), &calls),
        1,
        "equal roles, other Arcs"
    );
    assert_eq!(
        get(&s, "t", "u", &roles(&["a", "b"]), &calls),
        2,
        "other roles"
    );
    assert_eq!(get(&s, "t", "v", &r, &calls), 3, "other user");
    assert_eq!(get(&s, "t2", "u", &r, &calls), 4, "other tenant");
    assert_eq!(get(&s, "t", "u", &[], &calls), 5, "no roles");
    // Prefix ambiguity must not alias: ("t","u",["ab"]) vs ("t","ua",["b"]).
    assert_eq!(get(&s, "t", "ua", &roles(&["b"]), &calls), 6);
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(get(&s, "t", "u", &r, &calls), 7, "expired");
    assert_eq!(get(&s, "t", "u", &r, &calls), 7);
}

#[test]
fn invalidation_scopes() {
    let s = store(Duration::from_secs(60));
    let calls = AtomicUsize::new(0);
    let (ed, vw) = (roles(&["editor"]), roles(&["viewer", "editor"]));
    let plain = roles(&["viewer"]);
    // Loads: 1 t/alice/editor, 2 t/alice/viewer+editor, 3 t/bob/viewer, 4 other/alice/editor.
    assert_eq!(get(&s, "t", "alice", &ed, &calls), 1);
    assert_eq!(get(&s, "t", "alice", &vw, &calls), 2);
    assert_eq!(get(&s, "t", "bob", &plain, &calls), 3);
    assert_eq!(get(&s, "o", "alice", &ed, &calls), 4);

    assert!(s.invalidate("tenant:t:user:alice"));
    assert_eq!(
        get(&s, "t", "alice", &ed, &calls),
        5,
        "user: every role combination"
    );
    assert_eq!(get(&s, "t", "alice", &vw, &calls), 6);
    assert_eq!(get(&s, "t", "bob", &plain, &calls), 3, "other user kept");
    assert_eq!(
        get(&s, "o", "alice", &ed, &calls),
        4,
        "same sub, other tenant kept"
    );

    assert!(s.invalidate("tenant:t:role:editor"));
    assert_eq!(get(&s, "t", "alice", &ed, &calls), 7, "role");
    assert_eq!(
        get(&s, "t", "alice", &vw, &calls),
        8,
        "role anywhere in the list"
    );
    assert_eq!(
        get(&s, "t", "bob", &plain, &calls),
        3,
        "without the role kept"
    );
    assert_eq!(
        get(&s, "o", "alice", &ed, &calls),
        4,
        "role in other tenant kept"
    );

    assert!(s.invalidate("tenant:t"));
    assert_eq!(get(&s, "t", "alice", &ed, &calls), 9, "tenant");
    assert_eq!(get(&s, "t", "bob", &plain, &calls), 10, "tenant");
    assert_eq!(get(&s, "o", "alice", &ed, &calls), 4, "other tenant kept");

    assert!(s.invalidate("*"));
    assert_eq!(s.len(), 0);
    assert_eq!(get(&s, "o", "alice", &ed, &calls), 11, "all");

    assert!(!s.invalidate("tenant:t:bogus:x"));
    assert_eq!(
        get(&s, "o", "alice", &ed, &calls),
        11,
        "unknown message ignored"
    );
}

#[test]
fn load_racing_an_invalidation_is_not_served_again() {
    let s = store(Duration::from_secs(60));
    let calls = AtomicUsize::new(0);
    let r = roles(&["editor"]);
    // The compile runs after the generation snapshot, like a Redis read would.
    let v = s
        .effective(&GrantKey::new("t", "u", &r), |_| {
            s.invalidate("tenant:t:role:editor");
            calls.fetch_add(1, Ordering::SeqCst);
            1
        })
        .now_or_never()
        .unwrap();
    assert_eq!(*v, 1);
    assert_eq!(get(&s, "t", "u", &r, &calls), 2, "raced load was not kept");
    assert_eq!(get(&s, "t", "u", &r, &calls), 2);
}

#[test]
fn capacity_is_bounded() {
    let s = GrantStore::<usize>::new(Some(GrantSettings {
        cache_capacity: 100,
        ..GrantSettings::default()
    }))
    .unwrap();
    let mut s = Arc::try_unwrap(s).ok().unwrap();
    s.redis = None; // exercise the cache only
    let calls = AtomicUsize::new(0);
    for i in 0..1000 {
        get(&s, "t", &format!("u{i}"), &[], &calls);
    }
    assert!(s.len() <= 110, "len {}", s.len());
}

#[test]
fn settings_validation_and_redaction() {
    let bad = |f: fn(&mut GrantSettings)| {
        let mut s = GrantSettings::default();
        f(&mut s);
        GrantStore::<()>::new(Some(s)).unwrap_err().code()
    };
    assert_eq!(bad(|s| s.url = "http://x".into()), "grants_invalid_url");
    assert_eq!(bad(|s| s.cache_capacity = 0), "grants_invalid_setting");
    assert_eq!(
        bad(|s| s.command_timeout = Duration::ZERO),
        "grants_invalid_setting"
    );
    assert_eq!(bad(|s| s.channel.clear()), "grants_invalid_setting");
    assert_eq!(
        bad(|s| s.key_prefix = "a b".into()),
        "grants_invalid_setting"
    );
    assert!(GrantStore::<()>::new(Some(GrantSettings::default())).is_ok());

    let s = GrantSettings {
        url: "redis://user:s3cret@redis.internal:6379/2".into(),
        ..GrantSettings::default()
    };
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("s3cret"), "{dbg}");
    assert!(dbg.contains("redis://***@redis.internal:6379/2"), "{dbg}");
    assert_eq!(redact_url("redis://h:1"), "redis://h:1");
}

#[test]
fn backoff_grows_and_caps() {
    let ms = |f| backoff(f).as_millis();
    assert!((80..=120).contains(&ms(1)), "{}", ms(1));
    assert!((160..=240).contains(&ms(2)));
    assert!((4000..=6000).contains(&ms(30)));
    assert!((4000..=6000).contains(&ms(u32::MAX)));
}

#[test]
fn futures_are_send() {
    fn send<F: Send>(_: F) {}
    let s = store(Duration::from_secs(1));
    let r = roles(&[]);
    send(s.effective(&GrantKey::new("t", "u", &r), |_| 0));
    let (_tx, rx) = watch::channel(false);
    send(Arc::clone(&s).run_subscriber(rx));
}

#[tokio::test]
async fn subscriber_without_redis_returns() {
    let s = store(Duration::from_secs(1));
    let (_tx, rx) = watch::channel(false);
    tokio::time::timeout(Duration::from_secs(1), s.clone().run_subscriber(rx))
        .await
        .unwrap();
    assert!(!s.subscriber_connected());
}
