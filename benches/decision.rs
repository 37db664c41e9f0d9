//! The whole per-request decision without I/O, on realistic inputs.
//!
//! `decision_cached` calls the gateway's own `realmgate::decision::decide` (the function
//! `request_filter` calls) from the config snapshot load to the allow decision, on a real
//! Pingora request head: Host -> tenant (10 000 tenants), path canonicalisation, layered
//! route match (500 routes), token extraction from a real header map, verification of a
//! Keycloak-shaped ~1 KiB RS256 token with 20 roles (verified-token cache hit), the effective
//! permission set (grant-cache hit; 50 roles x 20 grants = 1 000 grants configured), the
//! route's requirement against it, and the per-decision metric the proxy's audit step records.
//! It leaves out what is not a decision: request-id generation, identity-header stripping, the
//! audit `tracing` event (no subscriber is installed here, so it would cost ~nothing and mean
//! nothing) and writing the upstream headers.
//!
//! Both caches answer without awaiting on a hit, so every iteration polls the decision future
//! once with `now_or_never` and panics if it ever pends: the number is the synchronous cost of
//! a hit, with no executor overhead added or hidden. The warm-up call (an uncached RSA
//! verification and a permission-set compile) runs on a current-thread tokio runtime.
//!
//! Companion functions time the steps alone, so a regression can be located:
//! `decision_step_limits`, `decision_step_tenant`, `decision_step_route`,
//! `decision_step_verify_hit`, `decision_step_grants_hit`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use http::{HeaderMap, HeaderValue, Method};
use pingora::http::RequestHeader;
use realmgate::authz::{canonicalize, match_layered, PermissionSet, RouteRule};
use realmgate::config::{self, RuntimeConfig};
use realmgate::decision::{self, grant_key, Deps, Input, NoTrace, Outcome, Verdict};
use realmgate::grants::GrantStore;
use realmgate::jwks::LocalSigner;
use realmgate::jwks::{key_store, KeyStore};
use realmgate::metrics::metrics;
use realmgate::verify::{extract_token, Verifier};
use serde_json::json;

/// The allocator the realmgate binary ships with, so allocation costs match production.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const TENANTS: usize = 10_000;
const RESOURCES: usize = 100; // x 5 routes each = 500 routes
const ROLES: usize = 50; // x 20 grants each = 1 000 grants
const GRANTS_PER_ROLE: usize = 20;
/// The tenant the benchmarked request belongs to (somewhere in the middle of the table).
const TENANT: usize = 4242;
const BASE: &str = "http://127.0.0.1:18080";
const AUDIENCE: &str = "qa-platform-backend";

fn tenant_id(i: usize) -> String {
    format!("t{i:05}")
}

/// Config text: 10 000 tenants (realm per tenant), 500 routes over 100 resources, 50 roles of
/// 20 grants.
fn config_yaml() -> String {
    let mut y = String::with_capacity(1 << 20);
    y.push_str(&format!(
        "listen: {{proxy: \"127.0.0.1:18443\", admin: \"127.0.0.1:18444\"}}\n\
         server: {{threads: 1, watch_config: false}}\n\
         upstream: {{default: \"127.0.0.1:18000\"}}\n\
         keycloak:\n  base_url: \"{BASE}\"\n  audiences: [{AUDIENCE}]\n\
         default_policy: deny\n\
         logging: {{access_log: false}}\n\
         tenants:\n"
    ));
    for i in 0..TENANTS {
        let id = tenant_id(i);
        writeln!(
            y,
            "  - {{id: {id}, realm: tenant-{id}, hosts: [{id}.qa.example.test]}}"
        )
        .unwrap();
    }
    y.push_str("roles:\n");
    let actions = ["read", "write", "delete", "*"];
    let scopes = ["own", "team", "tenant"];
    for k in 0..ROLES {
        let mut grants = Vec::with_capacity(GRANTS_PER_ROLE);
        for j in 0..GRANTS_PER_ROLE {
            let r = (k * 2 + j * 5) % RESOURCES;
            grants.push(format!(
                "\"r{r:03}.{}.{}\"",
                actions[(k + j) % 4],
                scopes[(k + j) % 3]
            ));
        }
        // The benchmarked route needs r042.read.own; one of the token's roles grants it wider.
        if k == 7 {
            grants[0] = "\"r042.*.team\"".into();
        }
        writeln!(y, "  role_{k:03}: [{}]", grants.join(", ")).unwrap();
    }
    y.push_str("routes:\n  - {path: \"/health\", public: true}\n");
    for r in 0..RESOURCES {
        let p = format!("/api/v1/r{r:03}");
        let rs = format!("r{r:03}");
        writeln!(
            y,
            "  - {{path: \"{p}\", methods: [GET], permission: {rs}.read.own}}\n\
             \x20 - {{path: \"{p}\", methods: [POST], permission: {rs}.write.tenant}}\n\
             \x20 - {{path: \"{p}/{{id}}\", methods: [GET], permission: {rs}.read.own}}\n\
             \x20 - {{path: \"{p}/{{id}}\", methods: [PUT, PATCH, DELETE], permission: {rs}.write.own}}\n\
             \x20 - {{path: \"{p}/{{id}}/**\", methods: [GET], permission: {rs}.read.team}}"
        )
        .unwrap();
    }
    y
}

/// A Keycloak-shaped access token: 17 realm roles of the role map, the three Keycloak
/// defaults, client roles for the audience and `account`, and the usual profile claims.
fn keycloak_claims(realm: &str, now: u64) -> serde_json::Value {
    let mut roles: Vec<String> = (0..17).map(|k| format!("role_{k:03}")).collect();
    roles.extend([
        format!("default-roles-{realm}"),
        "offline_access".into(),
        "uma_authorization".into(),
    ]);
    json!({
        "exp": now + 3600,
        "iat": now,
        "auth_time": now - 60,
        "jti": "onrtac:1b0e4a5c-7d3e-4f0a-9c61-2f8b7e6d5a41",
        "iss": format!("{BASE}/realms/{realm}"),
        "aud": [AUDIENCE, "account"],
        "sub": "f47ac10b-58cc-4372-a567-0e02b2c3d479",
        "typ": "Bearer",
        "azp": AUDIENCE,
        "sid": "8a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "acr": "1",
        "allowed-origins": ["https://app.example.test"],
        "realm_access": {"roles": roles},
        "resource_access": {
            AUDIENCE: {"roles": ["api-user"]},
            "account": {"roles": ["manage-account", "view-profile"]}
        },
        "scope": "openid profile email",
        "email_verified": true,
        "name": "Alice Example",
        "preferred_username": "alice",
        "given_name": "Alice",
        "family_name": "Example",
        "email": "alice@example.test"
    })
}

struct Fixture {
    config: ArcSwap<RuntimeConfig>,
    verifier: Verifier,
    grants: Arc<GrantStore<PermissionSet>>,
    revocations: realmgate::revocation::RevocationList,
    host: &'static [u8],
    target: &'static [u8],
    method: Method,
    headers: HeaderMap,
    /// The request head as Pingora hands it to `request_filter`.
    req: RequestHeader,
    token_len: usize,
}

fn fixture(rt: &tokio::runtime::Runtime) -> Fixture {
    let cfg = config::from_str(&config_yaml(), &HashMap::new()).expect("bench config is valid");
    assert_eq!(cfg.tenants.tenants().count(), TENANTS);
    assert_eq!(cfg.routes.len(), RESOURCES * 5 + 1);
    let id = tenant_id(TENANT);
    let realm = format!("tenant-{id}");

    let key = LocalSigner::generate_rsa("bench-key-1").unwrap();
    let (keys, _refresher): (Arc<KeyStore>, _) = key_store(cfg.jwks.clone(), vec![]);
    let jwks = serde_json::to_vec(&json!({"keys": [key.jwk.clone()]})).unwrap();
    assert_eq!(keys.install_jwks(&realm, &jwks).unwrap(), 1);
    let verifier = Verifier::new(keys, cfg.verify.clone());
    let grants = GrantStore::<PermissionSet>::new(None).unwrap();

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = key.sign(&keycloak_claims(&realm, now)).unwrap();
    let token_len = token.len();

    let mut headers = HeaderMap::new();
    let host: &'static str = Box::leak(format!("{id}.qa.example.test").into_boxed_str());
    headers.insert(http::header::HOST, HeaderValue::from_static(host));
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64) bench/1.0"),
    );
    headers.insert(
        http::header::ACCEPT,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::ACCEPT_ENCODING,
        HeaderValue::from_static("gzip, deflate, br"),
    );
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers.insert(
        "x-request-id",
        HeaderValue::from_static("0b8d4a8e-0000-4000-8000-00000000a001"),
    );

    let target: &'static [u8] = b"/api/v1/r042/98765?expand=owner";
    let mut req = RequestHeader::build(Method::GET, target, Some(headers.len())).unwrap();
    for (name, value) in &headers {
        req.append_header(name.clone(), value.clone()).unwrap();
    }
    let f = Fixture {
        config: ArcSwap::from_pointee(cfg),
        verifier,
        grants,
        revocations: realmgate::revocation::RevocationList::new(100_000),
        host: host.as_bytes(),
        target,
        method: Method::GET,
        headers,
        req,
        token_len,
    };
    // Warm both caches (RSA verification, permission-set compile) and check the answer.
    let first = rt.block_on(decide(&f)).expect("first decision allows");
    assert_eq!(first, "team");
    f
}

/// `request_filter`'s decision: the gateway's `decide`, plus the decision metric its audit
/// step records. Returns the forwarded scope on allow.
async fn decide(f: &Fixture) -> Option<&'static str> {
    let cfg = f.config.load_full();
    let deps = Deps {
        verifier: &f.verifier,
        grants: &f.grants,
        revocations: &f.revocations,
    };
    let input = Input {
        req: &f.req,
        is_h2: false,
        peer: None,
    };
    let d = decision::decide(&cfg, deps, &input, &mut NoTrace).await;
    let Outcome::Forward(fwd) = &d.outcome else {
        return None;
    };
    if !matches!(fwd.verdict, Verdict::Allow) {
        return None;
    }
    let tenant = d.tenant.as_ref()?;
    metrics()
        .decisions_total
        .with_label_values(&[metrics().tenants.label(&tenant.id), "allow"])
        .inc();
    match cfg.catalog.scopes().name(fwd.scope?) {
        "own" => Some("own"),
        "team" => Some("team"),
        "tenant" => Some("tenant"),
        _ => Some("other"),
    }
}

fn decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let f = fixture(&rt);
    let _guard = rt.enter();
    eprintln!(
        "decision fixture: {TENANTS} tenants, {} routes, {} grants in {ROLES} roles, token {} bytes",
        f.config.load().routes.len(),
        ROLES * GRANTS_PER_ROLE,
        f.token_len
    );

    c.bench_function("decision_cached", |b| {
        b.iter(|| {
            decide(black_box(&f))
                .now_or_never()
                .expect("a cached decision completes without awaiting")
        })
    });

    // The steps alone.
    let cfg = f.config.load_full();
    c.bench_function("decision_step_tenant", |b| {
        b.iter(|| cfg.tenants.resolve_raw(black_box(f.host)).is_ok())
    });
    // The head-size bounds (step 0): one pass over the header map.
    c.bench_function("decision_step_limits", |b| {
        b.iter(|| cfg.limits.check(black_box(&f.req)).is_ok())
    });
    let tenant = cfg.tenants.resolve_raw(f.host).unwrap();
    c.bench_function("decision_step_route", |b| {
        b.iter(|| {
            let canon = canonicalize(black_box(f.target), cfg.paths).unwrap();
            match_layered(cfg.tenant_routes(&tenant), &cfg.routes, &f.method, &canon)
                .map(RouteRule::index)
        })
    });
    let token = extract_token(&f.headers, None, None, false, 16 * 1024)
        .unwrap()
        .unwrap();
    c.bench_function("decision_step_verify_hit", |b| {
        b.iter(|| {
            f.verifier
                .verify(&tenant.id, &tenant.realm, black_box(token))
                .now_or_never()
                .expect("cache hit")
                .is_ok()
        })
    });
    let identity = f
        .verifier
        .verify(&tenant.id, &tenant.realm, token)
        .now_or_never()
        .unwrap()
        .unwrap();
    // The set compiled at warm-up lives `cache_ttl` (60 s): compile it again so the step
    // below measures hits, not an expiry that a long run would reach.
    rt.block_on(decide(&f)).expect("the decision allows");
    c.bench_function("decision_step_grants_hit", |b| {
        b.iter(|| {
            f.grants
                .effective(&grant_key(&f.grants, &cfg, &tenant, &identity), |_| {
                    unreachable!("grant-cache hit expected")
                })
                .now_or_never()
                .expect("cache hit")
                .len()
        })
    });
}

criterion_group!(benches, decision);
criterion_main!(benches);
