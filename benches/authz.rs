//! Authorisation hot-path benches.
//!
//! `permission_check` and `route_match` time ONE call per iteration, cycling through a fixed
//! array of inputs (mixed hits and misses), so criterion's numbers are per call. With `--bench`
//! a short per-call timing loop also prints p50/p99 for `permission_check` (those include the
//! `Instant::now()` pair, whose own cost is printed beside them).
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use realmgate::authz::{canonicalize, SlashPolicy};
use realmgate::testkit::authz::{permission_fixture, route_fixture};

/// The allocator the realmgate binary ships with, so allocation costs match production.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn permission_check(c: &mut Criterion) {
    let f = permission_fixture();
    let n = f.required.len();
    assert!(n.is_power_of_two());
    let mut i = 0usize;
    c.bench_function("permission_check", |b| {
        b.iter(|| {
            i = (i + 1) & (n - 1);
            f.set.allows(black_box(&f.required[i]))
        })
    });

    let mut i = 0usize;
    c.bench_function("permission_widest_scope", |b| {
        b.iter(|| {
            i = (i + 1) & (n - 1);
            let p = black_box(&f.required[i]);
            f.set.widest_scope(p.resource(), p.action())
        })
    });

    c.bench_function("permission_compile_200_roles_1000_grants", |b| {
        b.iter(|| {
            f.roles.compile(
                &f.catalog,
                f.role_names.iter().map(String::as_str),
                ["res1.read.own", "res2.*.team", "bogus"],
            )
        })
    });

    if std::env::args().any(|a| a == "--bench") {
        percentiles(&f.set, &f.required);
        batches("permission_check", |k| {
            black_box(f.set.allows(black_box(&f.required[k & (n - 1)])));
        });
    }
}

/// Per-call time from short batches of 256 calls: a batch (a few microseconds) is rarely
/// preempted, so the median batch stays close to the uncontended cost even when other builds
/// share the machine, unlike criterion's ~10 ms samples.
fn batches(name: &str, mut call: impl FnMut(usize)) {
    const BATCH: usize = 256;
    const RUNS: usize = 20_000;
    let mut per_call = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t0 = Instant::now();
        for k in 0..BATCH {
            call(k);
        }
        per_call.push(t0.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    per_call.sort_by(f64::total_cmp);
    eprintln!(
        "{name} batch-of-{BATCH} per-call: min {:.1} ns, median {:.1} ns, p90 {:.1} ns",
        per_call[0],
        per_call[RUNS / 2],
        per_call[RUNS * 9 / 10]
    );
}

fn percentiles(
    set: &realmgate::authz::PermissionSet,
    req: &[realmgate::authz::RequiredPermission],
) {
    const N: usize = 400_000;
    let mut calls = Vec::with_capacity(N);
    let mut empty = Vec::with_capacity(N);
    for k in 0..N {
        let p = &req[k % req.len()];
        let t0 = Instant::now();
        black_box(set.allows(black_box(p)));
        calls.push(t0.elapsed().as_nanos() as u64);
        let t0 = Instant::now();
        black_box(p);
        empty.push(t0.elapsed().as_nanos() as u64);
    }
    calls.sort_unstable();
    empty.sort_unstable();
    let q = |v: &[u64], f: f64| v[((v.len() as f64 - 1.0) * f) as usize];
    eprintln!(
        "permission_check per-call (incl. timer): p50 {} ns, p99 {} ns, p99.9 {} ns, max {} ns; \
         timer alone: p50 {} ns, p99 {} ns",
        q(&calls, 0.5),
        q(&calls, 0.99),
        q(&calls, 0.999),
        calls[N - 1],
        q(&empty, 0.5),
        q(&empty, 0.99)
    );
}

fn route_match(c: &mut Criterion) {
    let f = route_fixture();
    let n = f.requests.len();
    assert!(n.is_power_of_two());
    let mut i = 0usize;
    c.bench_function("route_match", |b| {
        b.iter(|| {
            i = (i + 1) & (n - 1);
            let (m, p) = black_box(&f.requests[i]);
            f.table.match_route(m, p).map(|r| r.index())
        })
    });

    if std::env::args().any(|a| a == "--bench") {
        batches("route_match", |k| {
            let (m, p) = black_box(&f.requests[k & (n - 1)]);
            black_box(f.table.match_route(m, p).map(|r| r.index()));
        });
    }

    let targets: [&[u8]; 4] = [
        b"/api/v1/users/12345/sub?x=1",
        b"/api/v2/calls/9f8e7d6c",
        b"//api/v1/%7ejohn/items%3abatch",
        b"/static/js/app.1234567890.js",
    ];
    let mut i = 0usize;
    c.bench_function("path_canonicalize", |b| {
        b.iter(|| {
            i = (i + 1) & 3;
            canonicalize(black_box(targets[i]), SlashPolicy::Merge)
                .map(|c| c.path().len())
                .unwrap_or(0)
        })
    });
    if std::env::args().any(|a| a == "--bench") {
        batches("path_canonicalize", |k| {
            let r = canonicalize(black_box(targets[k & 3]), SlashPolicy::Merge);
            black_box(r.map(|c| c.path().len()).unwrap_or(0));
        });
    }
}

criterion_group!(benches, permission_check, route_match);
criterion_main!(benches);
