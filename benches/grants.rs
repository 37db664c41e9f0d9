//! Hit-path cost of `GrantStore::effective` (the per-request part). The hit path is the same
//! with or without Redis, so the store runs without it.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::FutureExt;
use realmgate::grants::{GrantKey, GrantSettings, GrantStore};

/// The allocator the realmgate binary ships with, so allocation costs match production.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn hit(c: &mut Criterion) {
    let store = GrantStore::<u64>::new(None).unwrap();
    let roles: Vec<Arc<str>> = [
        "offline_access",
        "uma_authorization",
        "default-roles-acme",
        "editor",
        "viewer",
    ]
    .into_iter()
    .map(Arc::from)
    .collect();
    // A populated cache, so lookups are not served from a trivially small table.
    for i in 0..50_000u64 {
        let sub = format!("user-{i:08}");
        store
            .effective(
                &GrantKey::new("acme", &sub, &roles[..(i % 6) as usize]),
                |_| i,
            )
            .now_or_never()
            .unwrap();
    }
    let sub = "f47ac10b-58cc-4372-a567-0e02b2c3d479";
    for n in [0usize, 2, 5] {
        store
            .effective(
                &GrantKey {
                    epoch: 7,
                    ..GrantKey::new("acme", sub, &roles[..n])
                },
                |_| 7,
            )
            .now_or_never()
            .unwrap();
        c.bench_function(&format!("grants_hit_{n}_roles"), |b| {
            b.iter(|| {
                let v = store
                    .effective(
                        &std::hint::black_box(GrantKey {
                            epoch: 7,
                            ..GrantKey::new("acme", sub, &roles[..n])
                        }),
                        |_| unreachable!("hit expected"),
                    )
                    .now_or_never()
                    .unwrap();
                std::hint::black_box(v)
            })
        });
    }
}

/// What one client-tracking push costs the subscriber: parse the key, bump one generation
/// (the store is configured for Redis but never connects: the push path touches no socket).
fn tracking_invalidation(c: &mut Criterion) {
    let store = GrantStore::<u64>::new(Some(GrantSettings {
        url: "redis://127.0.0.1:1".into(),
        key_prefix: "rg:".into(),
        ..GrantSettings::default()
    }))
    .unwrap();
    c.bench_function("grants_tracking_invalidate_user_key", |b| {
        b.iter(|| {
            store.invalidate_key(std::hint::black_box(
                b"rg:tenant:acme:user:f47ac10b-58cc-4372-a567-0e02b2c3d479:permissions",
            ))
        })
    });
    c.bench_function("grants_tracking_ignore_other_key", |b| {
        b.iter(|| store.invalidate_key(std::hint::black_box(b"rg:tenant:acme:session:abc")))
    });
}

/// Same-run references, to read the numbers above on a noisy machine: the two unavoidable
/// pieces of a hit (a clock read for the TTL, a concurrent-cache lookup of a u64 key), and the
/// grant-age observation each hit makes.
fn reference(c: &mut Criterion) {
    c.bench_function("reference_instant_now", |b| b.iter(std::time::Instant::now));
    let cache: quick_cache::sync::Cache<u64, Arc<u64>> = quick_cache::sync::Cache::new(100_000);
    for i in 0..50_000u64 {
        cache.insert(i, Arc::new(i));
    }
    c.bench_function("reference_quick_cache_get", |b| {
        b.iter(|| cache.get(&std::hint::black_box(777u64)))
    });
    // What a shared histogram observation costs (the grant-age histogram observes one
    // hit in 16 for that reason; its amortized cost is inside grants_hit_*).
    let age = &realmgate::metrics::metrics().grant_age_seconds;
    c.bench_function("reference_shared_histogram_observe", |b| {
        b.iter(|| age.observe(std::hint::black_box(1.5)))
    });
    let loaded = std::time::Instant::now();
    let now = loaded + std::time::Duration::from_secs(3);
    c.bench_function("grants_age_sampled_observe", |b| {
        b.iter(|| realmgate::grants::observe_grant_age(std::hint::black_box(now), loaded))
    });
}

criterion_group!(benches, hit, tracking_invalidation, reference);
criterion_main!(benches);
