//! The revocation check on the cache-hit path (issue 16: <= 30 ns with 10 000 entries held),
//! and `verify_cached` with and without it.
//!
//! `revocation_check_10k`: a token that is not revoked, with 10 000 sid and sub entries of
//! its realm held plus the realm's not-before (every probe the check makes: sid, sub and
//! not-before). `revocation_check_10k_revoked`: a revoked one. `revocation_check_empty`: the
//! fast path (nothing revoked anywhere). `_sub_only`, `_sub_and_not_before`, `_nb_only`,
//! `_nb_covered`: the probes one by one (they found that comparing a not-before's empty value
//! cost ~90 ns). `verify_cached` / `verify_cached_then_check_10k`: the verified-token cache
//! hit, then the same plus the check, as `decide` runs them.

use std::time::{SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use realmgate::jwks::{key_store, JwksSettings};
use realmgate::revocation::{Kind, Probe, Revocation, RevocationKeys, RevocationList};
use realmgate::verify::{Verifier, VerifySettings};
use serde_json::json;

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const PEM: &str = include_str!("../testdata/jwt/rsa_a.pem");
const BASE: &str = "https://kc.example.com";
const REALM: &str = "tenant-acme";
const KID: &str = "kc-2026-rs256";
const SUB: &str = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6";
const SID: &str = "0d8b3f4a-1c7e-4b5a-9d2e-6f1a2b3c4d5e";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

fn issuer() -> String {
    format!("{BASE}/realms/{REALM}")
}

/// 10 000 sid and sub entries of the realm, and its not-before.
fn list_10k(t: u64) -> RevocationList {
    let list = RevocationList::new(100_000);
    let iss: std::sync::Arc<str> = issuer().into();
    for i in 0..10_000u32 {
        let kind = if i % 2 == 0 { Kind::Sid } else { Kind::Sub };
        list.apply(
            Revocation {
                kind,
                issuer: iss.clone(),
                value: format!("{i:08x}-7dec-11d0-a765-00a0c91e6bf6").into(),
                at: t,
                expires: t + 3600,
            },
            t,
        );
    }
    list.apply(
        Revocation {
            kind: Kind::NotBefore,
            issuer: iss,
            value: "".into(),
            at: t - 600,
            expires: t + 3600,
        },
        t,
    );
    assert_eq!(list.len(), 10_001);
    list
}

fn verifier(t: u64) -> (Verifier, String) {
    let key = EncodingKey::from_rsa_pem(PEM.as_bytes()).expect("test key");
    let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
    let mut jwk = serde_json::to_value(jwk).expect("jwk json");
    jwk["kid"] = json!(KID);
    let roles: Vec<String> = (0..16).map(|i| format!("qa-role-{i:02}")).collect();
    let claims = json!({
        "exp": t + 3600, "iat": t, "jti": "5c1b1f0e-8a8e-4f55-9e5b-2f1b7d3a9c41",
        "iss": issuer(), "aud": ["qa-platform-backend", "account"], "sub": SUB,
        "typ": "Bearer", "azp": "qa-platform-backend", "sid": SID,
        "realm_access": { "roles": ["offline_access", "uma_authorization", "manager", "tenant_admin"] },
        "resource_access": { "qa-platform-backend": { "roles": roles } },
        "preferred_username": "ada", "email": "ada@acme.example.com"
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(KID.into());
    let token = jsonwebtoken::encode(&header, &claims, &key).expect("sign");
    let (keys, _refresher) = key_store(
        JwksSettings {
            base_url: BASE.into(),
            ..JwksSettings::default()
        },
        vec![REALM.into()],
    );
    keys.install_jwks(REALM, json!({ "keys": [jwk] }).to_string().as_bytes())
        .expect("jwks");
    let v = Verifier::new(
        keys,
        VerifySettings {
            audiences: vec!["qa-platform-backend".into()],
            token_cache_capacity: 100_000,
            ..VerifySettings::default()
        },
    );
    (v, token)
}

fn benches(c: &mut Criterion) {
    let t = now();
    let iss = issuer();
    let list = list_10k(t);
    let keys = RevocationKeys::new(&iss, SUB, Some(SID));
    let probe = Probe {
        keys: &keys,
        issuer: &iss,
        sub: SUB,
        sid: Some(SID),
        iat: t,
    };
    assert!(!list.is_revoked(&probe));
    c.bench_function("revocation_check_10k", |b| {
        b.iter(|| list.is_revoked(std::hint::black_box(&probe)))
    });

    let revoked_sub = "00000001-7dec-11d0-a765-00a0c91e6bf6";
    let rkeys = RevocationKeys::new(&iss, revoked_sub, Some(SID));
    let rprobe = Probe {
        keys: &rkeys,
        sub: revoked_sub,
        ..probe
    };
    assert!(list.is_revoked(&rprobe));
    c.bench_function("revocation_check_10k_revoked", |b| {
        b.iter(|| list.is_revoked(std::hint::black_box(&rprobe)))
    });

    // Isolation: the sub probe alone (no sid, a realm without not-before).
    let other_iss = format!("{BASE}/realms/tenant-other");
    let okeys = RevocationKeys::new(&other_iss, SUB, None);
    let oprobe = Probe {
        keys: &okeys,
        issuer: &other_iss,
        sub: SUB,
        sid: None,
        iat: t,
    };
    c.bench_function("revocation_check_10k_sub_only", |b| {
        b.iter(|| list.is_revoked(std::hint::black_box(&oprobe)))
    });
    let nkeys = RevocationKeys::new(&iss, SUB, None);
    let nprobe = Probe {
        keys: &nkeys,
        sid: None,
        ..probe
    };
    c.bench_function("revocation_check_10k_sub_and_not_before", |b| {
        b.iter(|| list.is_revoked(std::hint::black_box(&nprobe)))
    });

    let nb_only = RevocationList::new(100_000);
    nb_only.apply(
        Revocation {
            kind: Kind::NotBefore,
            issuer: iss.clone().into(),
            value: "".into(),
            at: t - 600,
            expires: t + 3600,
        },
        t,
    );
    c.bench_function("revocation_check_nb_only", |b| {
        b.iter(|| nb_only.is_revoked(std::hint::black_box(&nprobe)))
    });
    let old = Probe {
        iat: t - 700,
        ..nprobe
    };
    c.bench_function("revocation_check_10k_nb_covered", |b| {
        b.iter(|| list.is_revoked(std::hint::black_box(&old)))
    });

    let empty = RevocationList::new(100_000);
    c.bench_function("revocation_check_empty", |b| {
        b.iter(|| empty.is_revoked(std::hint::black_box(&probe)))
    });

    let (v, token) = verifier(t);
    let verify = |token: &str| {
        v.verify("acme", REALM, token)
            .now_or_never()
            .expect("no await on a loaded realm")
            .expect("valid token")
    };
    verify(&token);
    c.bench_function("verify_cached", |b| {
        b.iter(|| verify(std::hint::black_box(&token)).role_set.all.len())
    });
    c.bench_function("verify_cached_then_check_10k", |b| {
        b.iter(|| {
            let id = verify(std::hint::black_box(&token));
            list.is_revoked(&id.revocation_probe())
        })
    });
}

criterion_group!(all, benches);
criterion_main!(all);
