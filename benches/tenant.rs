//! Host -> tenant resolution through the raw-bytes path a proxy uses (`resolve_raw`), over a
//! 10 000-tenant table, plus a 10-tenant table to show lookup cost does not grow with size.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use realmgate::tenant::{
    HostPatternDef, TenantDef, TenantStatus, TenantTable, DEFAULT_DYNAMIC_CACHE_CAPACITY,
};

/// The allocator the realmgate binary ships with, so allocation costs match production.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn table(n: usize) -> TenantTable {
    let mut tenants: Vec<TenantDef> = (0..n)
        .map(|i| {
            let id = format!("t{i:05}");
            TenantDef {
                realm: format!("tenant-{id}"),
                hosts: vec![format!("{id}.example.com")],
                id,
                status: TenantStatus::Active,
                upstream: None,
            }
        })
        .collect();
    for (i, domain) in ["app.acmecorp.com", "portal.globex.io", "www.initech.net"]
        .into_iter()
        .enumerate()
    {
        tenants.push(TenantDef {
            id: format!("custom{i}"),
            realm: format!("tenant-custom{i}"),
            hosts: vec![domain.to_owned()],
            status: TenantStatus::Active,
            upstream: Some("custom-pool".to_owned()),
        });
    }
    let patterns = vec![
        HostPatternDef::Wildcard {
            pattern: "{tenant}.qa.example.com".into(),
            realm: "tenant-{tenant}".into(),
            upstream: None,
        },
        HostPatternDef::Wildcard {
            pattern: "{tenant}.apps.example.net".into(),
            realm: "tenant-{tenant}".into(),
            upstream: Some("apps-pool".into()),
        },
        HostPatternDef::Regex {
            regex: r"(?P<tenant>[a-z0-9-]+)\.eu\.example\.org".into(),
            realm: "tenant-{tenant}".into(),
            upstream: None,
        },
    ];
    match TenantTable::build(tenants, patterns, DEFAULT_DYNAMIC_CACHE_CAPACITY) {
        Ok(t) => t,
        Err(e) => panic!("bench table: {e:?}"),
    }
}

fn host_resolve(c: &mut Criterion) {
    let big = table(10_000);
    let small = table(10);
    let mut g = c.benchmark_group("host_resolve");
    let cases: [(&str, &TenantTable, &[u8], bool); 10] = [
        ("exact_hit", &big, b"t04242.example.com", true),
        ("exact_hit_port", &big, b"t04242.example.com:8443", true),
        ("exact_hit_upper_dot", &big, b"T04242.Example.COM.", true),
        ("exact_hit_custom_domain", &big, b"app.acmecorp.com", true),
        ("exact_hit_10_tenants", &small, b"t00004.example.com", true),
        ("wildcard_hit", &big, b"beta.qa.example.com", true),
        (
            "wildcard_hit_static_override",
            &big,
            b"t00042.apps.example.net",
            true,
        ),
        ("regex_hit", &big, b"zeta.eu.example.org", true),
        ("miss", &big, b"nobody.example.com", false),
        ("wildcard_miss", &big, b"a.b.qa.example.com", false),
    ];
    for (name, t, host, hit) in cases {
        // Warm the dynamic cache and check the case does what its name says.
        assert_eq!(t.resolve_raw(host).is_ok(), hit, "{name}");
        g.bench_function(name, |b| b.iter(|| t.resolve_raw(black_box(host))));
    }
    g.bench_function("invalid", |b| {
        b.iter(|| big.resolve_raw(black_box(b"acme..example.com")))
    });
    g.finish();
}

criterion_group!(benches, host_resolve);
criterion_main!(benches);
