//! `decide` without sockets: the orders that matter, on a real config, a real verifier with
//! installed keys and a grant store without Redis.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::*;
use crate::jwks::key_store;
use crate::jwks::LocalSigner;
use crate::testkit::fixture::{config_yaml as fixture_yaml, BASE};

fn config() -> RuntimeConfig {
    config_with("viewer: [\"users.read.own\"]")
}

/// The test config with another definition of the `viewer` role.
fn config_with(viewer: &str) -> RuntimeConfig {
    crate::config::from_str(&config_yaml(viewer), &HashMap::new()).unwrap()
}

fn config_yaml(viewer: &str) -> String {
    fixture_yaml(&format!(
        r#"tenants:
  - {{id: acme, realm: tenant-acme, hosts: [acme.test]}}
  - {{id: frozen, realm: tenant-frozen, hosts: [frozen.test], status: suspended}}
  - {{id: shadowco, realm: tenant-shadow, hosts: [shadow.test], enforce: false}}
roles: {{admin: ["users.*.tenant"], {viewer}}}
routes:
  - {{path: "/public/**", public: true}}
  - {{path: "/me", authenticated: true}}
  - {{path: "/users/{{id}}", methods: [GET], permission: users.read.own}}
  - {{path: "/users/{{id}}", methods: [DELETE], permission: users.delete.tenant}}
"#
    ))
}

struct Fixture {
    cfg: RuntimeConfig,
    verifier: Verifier,
    grants: Arc<GrantStore<PermissionSet>>,
    revocations: crate::revocation::RevocationList,
    key: LocalSigner,
}

fn fixture() -> Fixture {
    let cfg = config();
    let key = LocalSigner::generate_rsa("k1").unwrap();
    let (keys, _refresher) = key_store(cfg.jwks.clone(), vec![]);
    let jwks = json!({"keys": [key.jwk.clone()]}).to_string();
    for realm in ["tenant-acme", "tenant-frozen", "tenant-shadow"] {
        keys.install_jwks(realm, jwks.as_bytes()).unwrap();
    }
    let verifier = Verifier::new(keys, cfg.verify.clone());
    let grants = GrantStore::new(None).unwrap();
    Fixture {
        cfg,
        verifier,
        grants,
        revocations: crate::revocation::RevocationList::new(100),
        key,
    }
}

fn now() -> u64 {
    crate::assertion::unix_now()
}

fn claims(realm: &str, roles: &[&str]) -> Value {
    json!({
        "iss": format!("{BASE}/realms/{realm}"),
        "sub": "u-1",
        "aud": "backend",
        "typ": "Bearer",
        "exp": now() + 300,
        "iat": now(),
        "realm_access": {"roles": roles},
    })
}

fn request(method: &str, host: &str, target: &str, token: Option<&str>) -> RequestHeader {
    let mut r = RequestHeader::build(method, target.as_bytes(), None).unwrap();
    r.append_header("Host", host).unwrap();
    if let Some(t) = token {
        r.append_header("Authorization", format!("Bearer {t}"))
            .unwrap();
    }
    r
}

impl Fixture {
    async fn decide_traced(&self, req: &RequestHeader) -> (Decision, Vec<String>) {
        self.decide_on(&self.cfg, req).await
    }

    /// Decides on another snapshot than the fixture's (a reload), with the same caches.
    async fn decide_on(&self, cfg: &RuntimeConfig, req: &RequestHeader) -> (Decision, Vec<String>) {
        let deps = Deps {
            verifier: &self.verifier,
            grants: &self.grants,
            revocations: &self.revocations,
        };
        let input = Input {
            req,
            is_h2: false,
            peer: None,
        };
        let mut trace = Recorded::default();
        let d = decide(cfg, deps, &input, &mut trace).await;
        (d, trace.0)
    }

    async fn decide(&self, req: &RequestHeader) -> Decision {
        self.decide_traced(req).await.0
    }

    fn token(&self, realm: &str, roles: &[&str]) -> String {
        self.key.sign(&claims(realm, roles)).unwrap()
    }
}

fn refusal(d: &Decision) -> (u16, &'static str, Stage) {
    match &d.outcome {
        Outcome::Refuse { answer, stage } => (answer.status, answer.code, *stage),
        other => panic!("not refused: {other:?}"),
    }
}

fn forward(d: &Decision) -> &Forward {
    match &d.outcome {
        Outcome::Forward(f) => f,
        other => panic!("not forwarded: {other:?}"),
    }
}

#[tokio::test]
async fn suspended_tenant_is_refused_before_the_path_is_looked_at() {
    let f = fixture();
    let d = f
        .decide(&request("GET", "frozen.test", "/a/../b", None))
        .await;
    assert_eq!(refusal(&d), (403, "tenant_suspended", Stage::Tenant));
    assert_eq!(d.tenant.as_deref().map(|t| &*t.id), Some("frozen"));
}

#[tokio::test]
async fn a_refused_path_comes_before_the_token() {
    let f = fixture();
    let d = f
        .decide(&request("GET", "acme.test", "/users/%2e%2e/x", None))
        .await;
    assert_eq!(refusal(&d), (400, "invalid_path", Stage::Path));
    let garbage = f
        .decide(&request("GET", "acme.test", "/a//../b", Some("not-a-jwt")))
        .await;
    assert_eq!(refusal(&garbage).2, Stage::Path);
}

#[tokio::test]
async fn the_host_comes_first() {
    let f = fixture();
    let d = f
        .decide(&request("GET", "nobody.test", "/a/../b", None))
        .await;
    assert_eq!(refusal(&d), (404, "unknown_host", Stage::Host));
    assert!(d.tenant.is_none());
    let mut two = request("GET", "acme.test", "/me", None);
    two.append_header("Host", "frozen.test").unwrap();
    assert_eq!(refusal(&f.decide(&two).await).1, "duplicate_host");
}

/// Issuer and expiry are checked before the key: an unknown `kid` on an implausible token
/// cannot make the gateway wait on a JWKS refetch (the fixture runs no refresher, so a key
/// lookup for an unknown kid could only end in `unknown_key` or `realm_unavailable`).
#[tokio::test]
async fn cheap_token_checks_run_before_the_key_lookup() {
    let f = fixture();
    let stranger = LocalSigner::generate_rsa("unknown-kid").unwrap();
    let mut expired = claims("tenant-acme", &["admin"]);
    expired["exp"] = json!(now() - 3600);
    let t = stranger.sign(&expired).unwrap();
    let d = f
        .decide(&request("GET", "acme.test", "/me", Some(&t)))
        .await;
    assert_eq!(refusal(&d), (401, "token_expired", Stage::Token));

    let foreign = stranger.sign(&claims("tenant-frozen", &["admin"])).unwrap();
    let d = f
        .decide(&request("GET", "acme.test", "/me", Some(&foreign)))
        .await;
    assert_eq!(refusal(&d), (401, "issuer_mismatch", Stage::Token));
}

#[tokio::test]
async fn a_token_of_another_realm_never_opens_this_tenant() {
    let f = fixture();
    let t = f.token("tenant-shadow", &["admin"]);
    let d = f
        .decide(&request("DELETE", "acme.test", "/users/7", Some(&t)))
        .await;
    assert_eq!(refusal(&d), (401, "issuer_mismatch", Stage::Token));
    assert!(d.identity.is_none());
}

#[tokio::test]
async fn public_authenticated_and_permission_routes() {
    let f = fixture();
    let d = f
        .decide(&request("GET", "acme.test", "/public/x", Some("junk")))
        .await;
    assert!(matches!(forward(&d).verdict, Verdict::Public));
    assert!(d.identity.is_none(), "nothing verified on a public route");

    let d = f.decide(&request("GET", "acme.test", "/me", None)).await;
    assert_eq!(refusal(&d), (401, "missing_token", Stage::Token));

    let viewer = f.token("tenant-acme", &["viewer"]);
    let d = f
        .decide(&request("GET", "acme.test", "/me", Some(&viewer)))
        .await;
    assert!(matches!(forward(&d).verdict, Verdict::Authenticated));
    assert_eq!(d.identity.as_ref().map(|i| i.sub()), Some("u-1"));

    let d = f
        .decide(&request("GET", "acme.test", "/users/7", Some(&viewer)))
        .await;
    let fwd = forward(&d);
    assert!(matches!(fwd.verdict, Verdict::Allow));
    assert_eq!(
        fwd.scope.map(|s| f.cfg.catalog.scopes().name(s)),
        Some("own")
    );

    let d = f
        .decide(&request("DELETE", "acme.test", "/users/7", Some(&viewer)))
        .await;
    assert_eq!(refusal(&d), (403, "forbidden", Stage::Permission));
    assert!(d.identity.is_some(), "the refused caller is known (audit)");

    let d = f
        .decide(&request("GET", "acme.test", "/nowhere", Some(&viewer)))
        .await;
    assert_eq!(refusal(&d), (403, "route_denied", Stage::Route));
}

#[tokio::test]
async fn shadow_mode_passes_what_enforcement_would_refuse() {
    let f = fixture();
    let viewer = f.token("tenant-shadow", &["viewer"]);
    let d = f
        .decide(&request("DELETE", "shadow.test", "/users/7", Some(&viewer)))
        .await;
    match &forward(&d).verdict {
        Verdict::Shadow { would_be, stage } => {
            assert_eq!((would_be.code, *stage), ("forbidden", Stage::Permission));
        }
        v => panic!("{v:?}"),
    }
}

#[tokio::test]
async fn a_rewritten_target_is_what_is_forwarded() {
    let f = fixture();
    let d = f
        .decide(&request("GET", "acme.test", "/public/%7Ex?q=1", None))
        .await;
    assert_eq!(forward(&d).target.as_deref(), Some(&b"/public/~x?q=1"[..]));
    let d = f
        .decide(&request("GET", "acme.test", "/public/x", None))
        .await;
    assert_eq!(forward(&d).target, None, "unchanged targets are not copied");
}

#[tokio::test]
async fn every_step_is_traced_in_order() {
    let f = fixture();
    let viewer = f.token("tenant-acme", &["viewer"]);
    let (d, steps) = f
        .decide_traced(&request("GET", "acme.test", "/users/7", Some(&viewer)))
        .await;
    assert!(matches!(forward(&d).verdict, Verdict::Allow));
    let kinds: Vec<&str> = steps
        .iter()
        .map(|s| s.split([' ', '(', '{']).next().unwrap_or(""))
        .collect();
    assert_eq!(
        kinds,
        [
            "Tenant",
            "Path",
            "Route",
            "Access",
            "Token",
            "Grants",
            "Permission"
        ]
    );
    let (_, steps) = f
        .decide_traced(&request("GET", "acme.test", "/me", None))
        .await;
    assert!(
        steps.last().is_some_and(|s| s.starts_with("Refused")),
        "{steps:?}"
    );
}

/// A request still on the snapshot a reload replaced compiles and caches its set after the
/// reload's clear; a request on the new snapshot must not be served that set (the reload
/// revoked the grant, and the old set's ids belong to the old catalog).
#[tokio::test]
async fn a_set_compiled_from_a_replaced_snapshot_is_never_served_on_the_new_one() {
    let f = fixture();
    let old = config();
    let new = config_with("viewer: [\"reports.read.own\"]");
    let viewer = f.token("tenant-acme", &["viewer"]);
    let req = request("GET", "acme.test", "/users/7", Some(&viewer));
    let deps = Deps {
        verifier: &f.verifier,
        grants: &f.grants,
        revocations: &f.revocations,
    };
    let input = Input {
        req: &req,
        is_h2: false,
        peer: None,
    };
    // The reload: new config in, permission cache cleared.
    f.grants.clear();
    // A straggler on the old snapshot decides (and caches) after the clear.
    let d = decide(&old, deps, &input, &mut NoTrace).await;
    assert!(matches!(forward(&d).verdict, Verdict::Allow));
    // The next request, on the new snapshot, is refused: the grant was revoked.
    let d = decide(&new, deps, &input, &mut NoTrace).await;
    assert_eq!(refusal(&d), (403, "forbidden", Stage::Permission));
}

/// Whether deciding `req` on `cfg` compiled a permission set (a grant-cache miss).
async fn compiles(f: &Fixture, cfg: &RuntimeConfig, req: &RequestHeader) -> bool {
    let (d, steps) = f.decide_on(cfg, req).await;
    assert!(matches!(forward(&d).verdict, Verdict::Allow), "{steps:?}");
    steps.iter().any(|s| s.starts_with("Grants"))
}

/// A reload (or tenant sync) that leaves the catalog and a tenant's roles as they were keeps
/// that tenant's compiled sets: before, every apply flushed the whole cache (a Redis miss
/// storm each minute). A reload that changes the roles still never serves an old set.
#[tokio::test]
async fn an_unchanged_reload_keeps_compiled_sets_and_a_changed_one_does_not() {
    let f = fixture();
    let viewer = f.token("tenant-acme", &["viewer"]);
    let req = request("GET", "acme.test", "/users/7", Some(&viewer));
    assert!(compiles(&f, &f.cfg, &req).await, "first sight compiles");
    assert!(!compiles(&f, &f.cfg, &req).await, "then it is cached");
    let same = config();
    assert_ne!(same.catalog.epoch(), f.cfg.catalog.epoch(), "a new catalog");
    assert!(
        !compiles(&f, &same, &req).await,
        "an identical reload keeps the set"
    );
    let changed = config_with("viewer: [\"users.read.own\", \"reports.read.own\"]");
    assert!(
        compiles(&f, &changed, &req).await,
        "a changed role map compiles afresh"
    );
    // A new tenant (what a tenant sync adds) leaves the catalog and acme's roles alone.
    let yaml = config_yaml("viewer: [\"users.read.own\"]").replace(
        "tenants:\n",
        "tenants:\n  - {id: newco, realm: tenant-newco, hosts: [new.test]}\n",
    );
    let grown = crate::config::from_str(&yaml, &HashMap::new()).unwrap();
    assert!(
        !compiles(&f, &grown, &req).await,
        "a new tenant keeps the others' sets"
    );
}

/// Two tokens of one user with the same roles but different permission claims never share
/// a compiled set: the down-scoped token does not inherit the wider one's grants.
#[tokio::test]
async fn the_permission_claim_is_part_of_the_permission_cache_key() {
    let f = fixture();
    let mut wide = claims("tenant-acme", &["viewer"]);
    wide["perms"] = json!(["users.delete.tenant", "reports.read.own"]);
    let mut narrow = claims("tenant-acme", &["viewer"]);
    narrow["perms"] = json!(["reports.read.own"]);
    let (wide, narrow) = (f.key.sign(&wide).unwrap(), f.key.sign(&narrow).unwrap());
    let d = f
        .decide(&request("DELETE", "acme.test", "/users/7", Some(&wide)))
        .await;
    assert!(matches!(forward(&d).verdict, Verdict::Allow));
    let d = f
        .decide(&request("DELETE", "acme.test", "/users/7", Some(&narrow)))
        .await;
    assert_eq!(refusal(&d), (403, "forbidden", Stage::Permission));
}

#[tokio::test]
async fn a_revoked_token_is_refused_after_verification_even_from_the_cache() {
    use crate::revocation::{Kind, Revocation};
    let f = fixture();
    let viewer = f.token("tenant-acme", &["viewer"]);
    let req = request("GET", "acme.test", "/me", Some(&viewer));
    let first = f.decide(&req).await;
    assert!(matches!(forward(&first).verdict, Verdict::Authenticated));
    f.revocations.apply(
        Revocation {
            kind: Kind::Sub,
            issuer: format!("{BASE}/realms/tenant-acme").into(),
            value: "u-1".into(),
            at: now(),
            expires: now() + 60,
        },
        now(),
    );
    let (d, trace) = f.decide_traced(&req).await;
    assert_eq!(refusal(&d), (401, "token_revoked", Stage::Token));
    let challenge = match &d.outcome {
        Outcome::Refuse { answer, .. } => answer.challenge.as_deref().map(|c| c.header_value()),
        _ => None,
    };
    assert!(challenge.is_some_and(|c| c.contains("error=\"invalid_token\"")));
    assert!(
        trace.iter().any(|l| l.contains("token_revoked")),
        "{trace:?}"
    );
}
