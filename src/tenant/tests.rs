//! Tenant table and host-name tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::borrow::Cow;

use super::def::{derived_label, validate_realm, validate_realm_template, validate_tenant_id};
use super::*;

// ---- normalisation -----------------------------------------------------------------

#[test]
fn normalize_valid_table() {
    // (raw, expected host, expected port, borrowed?)
    let cases: &[(&str, &str, Option<u16>, bool)] = &[
        ("acme.example.com", "acme.example.com", None, true),
        ("ACME.Example.COM", "acme.example.com", None, false),
        (
            "acme.example.com:8080",
            "acme.example.com",
            Some(8080),
            true,
        ),
        ("acme.example.com.", "acme.example.com", None, true),
        ("acme.example.com.:443", "acme.example.com", Some(443), true),
        ("Acme.Example.com.:1", "acme.example.com", Some(1), false),
        ("localhost", "localhost", None, true),
        ("localhost:65535", "localhost", Some(65535), true),
        ("a", "a", None, true),
        ("xn--bcher-kva.example", "xn--bcher-kva.example", None, true),
        ("a-b.c-d.e", "a-b.c-d.e", None, true),
        ("127.0.0.1", "127.0.0.1", None, true),
        ("127.0.0.1:8080", "127.0.0.1", Some(8080), true),
        ("host:00080", "host", Some(80), true),
        ("[::1]", "[::1]", None, true),
        ("[::1]:8080", "[::1]", Some(8080), true),
        ("[2001:DB8::1]", "[2001:db8::1]", None, false),
        ("[0:0:0:0:0:0:0:1]:443", "[::1]", Some(443), false),
        ("[::ffff:1.2.3.4]", "[::ffff:1.2.3.4]", None, true),
    ];
    for &(raw, host, port, borrowed) in cases {
        let n = normalize_host(raw.as_bytes()).unwrap_or_else(|e| panic!("{raw:?}: {e}"));
        assert_eq!(n.as_str(), host, "{raw:?}");
        assert_eq!(n.port, port, "{raw:?}");
        assert_eq!(
            matches!(n.host, Cow::Borrowed(_)),
            borrowed,
            "{raw:?} borrowed"
        );
        // The allocation-free path must agree with the public one.
        let via_buf = with_normalized_host(raw.as_bytes(), <[u8]>::to_vec).unwrap();
        assert_eq!(via_buf, host.as_bytes(), "{raw:?} via buffer");
    }
}

#[test]
fn normalize_invalid_table() {
    let label64 = "a".repeat(64);
    let long_label = format!("{label64}.com");
    let label63 = "a".repeat(63);
    let too_long = [label63.as_str(); 4].join("."); // 255 chars
    let huge = "a".repeat(10_000);
    let cases: Vec<(&[u8], HostError)> = vec![
        (b"", HostError::Empty),
        (b".", HostError::Empty),
        (b":8080", HostError::Empty),
        (b"acme.com..", HostError::EmptyLabel),
        (b"acme..com", HostError::EmptyLabel),
        (b".acme.com", HostError::EmptyLabel),
        (b"..", HostError::EmptyLabel),
        (b"-acme.com", HostError::LabelHyphen),
        (b"acme-.com", HostError::LabelHyphen),
        (b"acme.com-", HostError::LabelHyphen),
        (b"ac_me.com", HostError::InvalidCharacter),
        (b"acme com", HostError::InvalidCharacter),
        (b"user@acme.com", HostError::InvalidCharacter),
        (b"acme.com/x", HostError::InvalidCharacter),
        ("bücher.de".as_bytes(), HostError::InvalidCharacter),
        (b"\xff\xfe", HostError::InvalidCharacter),
        (b"acme.com\0", HostError::InvalidCharacter),
        (b"a:b:80", HostError::InvalidPort),
        (b"::1", HostError::InvalidPort),
        (b".:80", HostError::Empty),
        (b"a.-b", HostError::LabelHyphen),
        (b"a-.b:80", HostError::LabelHyphen),
        (b"a.b-:80", HostError::LabelHyphen),
        (b"a..:80", HostError::EmptyLabel),
        (b"acme.com:", HostError::InvalidPort),
        (b"acme.com:0", HostError::InvalidPort),
        (b"acme.com:65536", HostError::InvalidPort),
        (b"acme.com:99999", HostError::InvalidPort),
        (b"acme.com:123456", HostError::InvalidPort),
        (b"acme.com:8o", HostError::InvalidPort),
        (b"acme.com:-1", HostError::InvalidPort),
        (b"acme.com:80.", HostError::InvalidPort),
        (long_label.as_bytes(), HostError::LabelTooLong),
        (too_long.as_bytes(), HostError::TooLong),
        (huge.as_bytes(), HostError::TooLong),
        (b"[::1", HostError::InvalidIpLiteral),
        (b"[::1]x", HostError::InvalidIpLiteral),
        (b"[::1]:", HostError::InvalidPort),
        (b"[::1]:70000", HostError::InvalidPort),
        (b"[fe80::1%25eth0]", HostError::InvalidIpLiteral),
        (b"[1.2.3.4]", HostError::InvalidIpLiteral),
        (b"[]", HostError::InvalidIpLiteral),
        (b"[v1.x]", HostError::InvalidIpLiteral),
    ];
    for (raw, err) in cases {
        assert_eq!(
            normalize_host(raw),
            Err(err),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(with_normalized_host(raw, |_| ()), Err(err));
    }
}

#[test]
fn length_limits_are_exact() {
    let l63 = "a".repeat(63);
    let l61 = "a".repeat(61);
    let max = format!("{l63}.{l63}.{l63}.{l61}"); // 253
    assert_eq!(max.len(), 253);
    assert!(normalize_host(max.as_bytes()).is_ok());
    let with_dot_and_port = format!("{max}.:65535");
    assert_eq!(
        normalize_host(with_dot_and_port.as_bytes())
            .unwrap()
            .as_str(),
        max
    );
    let over = format!("{max}a");
    assert_eq!(normalize_host(over.as_bytes()), Err(HostError::TooLong));
    let upper = max.to_ascii_uppercase();
    assert_eq!(
        with_normalized_host(upper.as_bytes(), <[u8]>::to_vec).unwrap(),
        max.as_bytes()
    );
}

#[test]
fn config_hosts() {
    assert_eq!(
        normalize_config_host("App.AcmeCorp.com.").unwrap(),
        "app.acmecorp.com"
    );
    assert_eq!(
        normalize_config_host("acme.com:8080"),
        Err(HostError::PortNotAllowed)
    );
    assert_eq!(normalize_config_host("[0::1]").unwrap(), "[::1]");
    assert!(validate_host_name("acme.example.com").is_ok());
    assert_eq!(validate_host_name("Acme..com"), Err(HostError::EmptyLabel));
    assert_eq!(
        validate_host_name("a_b.com"),
        Err(HostError::InvalidCharacter)
    );
}

#[test]
fn same_authority_rule() {
    let cases = [
        ("acme.example.com", "acme.example.com", true),
        ("ACME.example.com.", "acme.example.com", true),
        ("acme.example.com:8080", "acme.example.com:8080", true),
        ("acme.example.com:8080", "acme.example.com", true),
        ("acme.example.com", "acme.example.com:443", true),
        ("acme.example.com:8080", "acme.example.com:9090", false),
        ("evil.example.com", "acme.example.com", false),
        ("evil.example.com:443", "acme.example.com:443", false),
        ("user@acme.example.com", "acme.example.com", false),
        ("acme.example.com", "", false),
        ("", "", false),
        ("[::1]:80", "[0::1]:80", true),
    ];
    for (a, h, want) in cases {
        assert_eq!(same_authority(a, h), want, "{a:?} vs {h:?}");
    }
}

#[test]
fn error_codes() {
    assert_eq!(TenantError::UnknownHost.code(), "unknown_host");
    assert_eq!(
        TenantError::InvalidHost(HostError::Empty).code(),
        "invalid_host"
    );
    assert_eq!(
        TenantError::UnknownHost.status(),
        http::StatusCode::NOT_FOUND
    );
    assert_eq!(
        TenantError::InvalidHost(HostError::Empty).status(),
        http::StatusCode::BAD_REQUEST
    );
    assert_eq!(HostError::InvalidPort.code(), "invalid_port");
}

// ---- table -------------------------------------------------------------------------

fn tenant(id: &str, realm: &str, hosts: &[&str]) -> TenantDef {
    TenantDef {
        id: id.into(),
        realm: realm.into(),
        hosts: hosts.iter().map(|h| (*h).into()).collect(),
        status: TenantStatus::Active,
        upstream: None,
    }
}

fn wildcard(pattern: &str, realm: &str) -> HostPatternDef {
    HostPatternDef::Wildcard {
        pattern: pattern.into(),
        realm: realm.into(),
        upstream: None,
    }
}

fn regex(re: &str, realm: &str) -> HostPatternDef {
    HostPatternDef::Regex {
        regex: re.into(),
        realm: realm.into(),
        upstream: None,
    }
}

fn sample_table() -> TenantTable {
    let mut suspended = tenant("globex", "tenant-globex", &["globex.qa.example.com"]);
    suspended.status = TenantStatus::Suspended;
    let mut pending = tenant("initech", "tenant-initech", &[]);
    pending.status = TenantStatus::Pending;
    let mut with_upstream = tenant(
        "acme",
        "tenant-acme",
        &["acme.qa.example.com", "App.AcmeCorp.com."],
    );
    with_upstream.upstream = Some("acme-backend".into());
    // Its id differs from the id patterns derive from its realm ("umbrella-corp").
    let mut alias = tenant("umbrella", "tenant-umbrella-corp", &[]);
    alias.status = TenantStatus::Suspended;
    TenantTable::build(
        vec![
            tenant("default", "qa-default", &["qa.example.com"]),
            with_upstream,
            suspended,
            pending,
            tenant("ipv6", "tenant-ipv6", &["[::1]", "127.0.0.1"]),
            alias,
        ],
        vec![
            HostPatternDef::Wildcard {
                pattern: "{tenant}.qa.example.com".into(),
                realm: "tenant-{tenant}".into(),
                upstream: Some("qa-pool".into()),
            },
            wildcard("{tenant}.Apps.Example.NET.", "tenant-{tenant}"),
            regex(
                r"(?P<tenant>[a-z0-9-]+)\.eu\.example\.org",
                "tenant-{tenant}",
            ),
            regex(
                r"(?P<tenant>[a-z0-9.-]+)\.any\.example\.org",
                "tenant-{tenant}",
            ),
            regex(
                r"(?P<tenant>[a-z0-9-]+)-shop\.example\.org",
                "tenant-{tenant}",
            ),
        ],
        DEFAULT_DYNAMIC_CACHE_CAPACITY,
    )
    .unwrap()
}

#[test]
fn resolve_table() {
    let t = sample_table();
    // (raw Host, Ok((id, realm, source, upstream)) | Err(code))
    type Want = Result<
        (
            &'static str,
            &'static str,
            TenantSource,
            Option<&'static str>,
        ),
        &'static str,
    >;
    let st = |index| TenantSource::Static { index };
    let pat = |index| TenantSource::Pattern { index };
    let cases: Vec<(&str, Want)> = vec![
        ("qa.example.com", Ok(("default", "qa-default", st(0), None))),
        (
            "acme.qa.example.com",
            Ok(("acme", "tenant-acme", st(1), Some("acme-backend"))),
        ),
        (
            "app.acmecorp.com",
            Ok(("acme", "tenant-acme", st(1), Some("acme-backend"))),
        ),
        (
            "APP.AcmeCorp.com.:8443",
            Ok(("acme", "tenant-acme", st(1), Some("acme-backend"))),
        ),
        (
            "beta.qa.example.com",
            Ok(("beta", "tenant-beta", pat(0), Some("qa-pool"))),
        ),
        (
            "Beta.QA.example.com.:80",
            Ok(("beta", "tenant-beta", pat(0), Some("qa-pool"))),
        ),
        ("x1.apps.example.net", Ok(("x1", "tenant-x1", pat(1), None))),
        // pattern-derived realm owned by a static tenant -> that static tenant
        (
            "initech.qa.example.com",
            Ok(("initech", "tenant-initech", st(3), None)),
        ),
        (
            "umbrella-corp.qa.example.com",
            Ok(("umbrella", "tenant-umbrella-corp", st(5), None)),
        ),
        (
            "umbrella-corp.eu.example.org",
            Ok(("umbrella", "tenant-umbrella-corp", st(5), None)),
        ),
        // pattern-derived id owned by a static tenant with another realm -> refused
        ("default.apps.example.net", Err("unknown_host")),
        ("umbrella.qa.example.com", Err("unknown_host")),
        ("umbrella.eu.example.org", Err("unknown_host")),
        (
            "zeta.eu.example.org",
            Ok(("zeta", "tenant-zeta", pat(2), None)),
        ),
        (
            "acme.eu.example.org",
            Ok(("acme", "tenant-acme", st(1), Some("acme-backend"))),
        ),
        (
            "foo-shop.example.org",
            Ok(("foo", "tenant-foo", pat(4), None)),
        ),
        ("[::1]:8080", Ok(("ipv6", "tenant-ipv6", st(4), None))),
        ("[0:0::1]", Ok(("ipv6", "tenant-ipv6", st(4), None))),
        ("127.0.0.1:80", Ok(("ipv6", "tenant-ipv6", st(4), None))),
        // misses
        ("a.b.qa.example.com", Err("unknown_host")),
        ("example.com", Err("unknown_host")),
        ("other.example.com", Err("unknown_host")),
        ("qa.example.com.evil.com", Err("unknown_host")),
        ("apps.example.net", Err("unknown_host")),
        ("a.b.eu.example.org", Err("unknown_host")),
        // regex captured "a.b": not a DNS label, so no tenant
        ("a.b.any.example.org", Err("unknown_host")),
        ("[::2]", Err("unknown_host")),
        ("10.0.0.1", Err("unknown_host")),
        // invalid
        ("", Err("invalid_host")),
        ("acme.qa.example.com..", Err("invalid_host")),
        ("ac_me.qa.example.com", Err("invalid_host")),
        ("acme.qa.example.com:99999", Err("invalid_host")),
    ];
    for (raw, want) in cases {
        // Twice: the second hit comes from the dynamic cache and must be identical.
        for round in 0..2 {
            let got = t.resolve_raw(raw.as_bytes());
            match (&got, &want) {
                (Ok(g), Ok((id, realm, source, upstream))) => {
                    assert_eq!(&*g.id, *id, "{raw:?} round {round}");
                    assert_eq!(&*g.realm, *realm, "{raw:?}");
                    assert_eq!(g.source, *source, "{raw:?}");
                    assert_eq!(g.upstream.as_deref(), *upstream, "{raw:?}");
                }
                (Err(e), Err(code)) => assert_eq!(e.code(), *code, "{raw:?}"),
                _ => panic!("{raw:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}

#[test]
fn static_override_shares_the_static_arc() {
    let t = sample_table();
    let via_pattern = t.resolve("initech.qa.example.com").unwrap();
    let static_t = t.tenant_by_id("initech").unwrap();
    assert!(Arc::ptr_eq(&via_pattern, static_t));
    assert!(!via_pattern.is_serving());
    // A suspended tenant whose id is not its realm's derived id stays suspended when
    // reached through a pattern: it is never a fresh active tenant on the same realm.
    let alias = t.resolve("umbrella-corp.qa.example.com").unwrap();
    assert!(Arc::ptr_eq(&alias, t.tenant_by_id("umbrella").unwrap()));
    assert_eq!(alias.status, TenantStatus::Suspended);
}

#[test]
fn dynamic_tenants_are_cached() {
    let t = sample_table();
    assert_eq!(t.dynamic_cache_len(), 0);
    let a = t.resolve("beta.qa.example.com").unwrap();
    let b = t.resolve("beta.qa.example.com").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    let r1 = t.resolve("zeta.eu.example.org").unwrap();
    let r2 = t.resolve("zeta.eu.example.org").unwrap();
    assert!(Arc::ptr_eq(&r1, &r2));
    assert_eq!(t.dynamic_cache_len(), 2);
    // misses and invalid labels are not cached
    assert!(t.resolve("a.b.any.example.org").is_err());
    assert!(t.resolve("x.y.qa.example.com").is_err());
    assert_eq!(t.dynamic_cache_len(), 2);
}

#[test]
fn dynamic_cache_is_bounded() {
    let t = TenantTable::build(
        vec![],
        vec![wildcard("{tenant}.example.com", "t-{tenant}")],
        64,
    )
    .unwrap();
    for i in 0..5_000 {
        let host = format!("t{i}.example.com");
        assert_eq!(&*t.resolve(&host).unwrap().id, &host[..host.len() - 12]);
    }
    let len = t.dynamic_cache_len();
    assert!(len > 0 && len <= 128, "{len}");
    // capacity 0 disables caching but resolution still works
    let t0 = TenantTable::build(
        vec![],
        vec![wildcard("{tenant}.example.com", "t-{tenant}")],
        0,
    )
    .unwrap();
    assert_eq!(&*t0.resolve("a.example.com").unwrap().realm, "t-a");
    assert_eq!(&*t0.resolve("a.example.com").unwrap().realm, "t-a");
}

#[test]
fn resolve_expects_normalised_input() {
    let t = sample_table();
    assert_eq!(
        t.resolve("ACME.qa.example.com"),
        Err(TenantError::UnknownHost)
    );
    // A non-label first "label" never becomes a tenant even through `resolve`.
    assert_eq!(
        t.resolve("A_B.qa.example.com"),
        Err(TenantError::UnknownHost)
    );
    assert_eq!(
        t.resolve("-x.qa.example.com"),
        Err(TenantError::UnknownHost)
    );
}

#[test]
fn status_and_serving() {
    let t = sample_table();
    let serving: Vec<(&str, bool)> = t.tenants().map(|t| (&*t.id, t.is_serving())).collect();
    assert_eq!(
        serving,
        vec![
            ("default", true),
            ("acme", true),
            ("globex", false),
            ("initech", false),
            ("ipv6", true),
            ("umbrella", false)
        ]
    );
    let globex = t.resolve("globex.qa.example.com").unwrap();
    assert_eq!(globex.status, TenantStatus::Suspended);
    for (status, serving) in [
        (TenantStatus::Active, true),
        (TenantStatus::Suspended, false),
        (TenantStatus::Pending, false),
        (TenantStatus::Disabled, false),
    ] {
        let mut x = (*globex).clone();
        x.status = status;
        assert_eq!(x.is_serving(), serving, "{status}");
    }
}

#[test]
fn summaries() {
    let t = sample_table();
    assert_eq!(t.host_count(), 6);
    assert_eq!(t.pattern_count(), 5);
    assert_eq!(t.tenants().count(), 6);
    let realms: Vec<&str> = t.static_realms().collect();
    assert_eq!(
        realms,
        [
            "qa-default",
            "tenant-acme",
            "tenant-globex",
            "tenant-initech",
            "tenant-ipv6",
            "tenant-umbrella-corp"
        ]
    );
}

#[test]
fn a_realm_belongs_to_one_tenant() {
    let errors = build_errors(
        vec![
            tenant("a", "shared", &[]),
            tenant("b", "shared", &[]),
            tenant("c", "other", &[]),
        ],
        vec![],
    );
    assert_eq!(
        errors,
        [
            r#"tenants[1].realm: realm "shared" already belongs to tenants[0] ("a"); a realm serves exactly one tenant"#
        ]
    );
}

#[test]
fn patterns_share_one_realm_template() {
    let errors = build_errors(
        vec![],
        vec![
            wildcard("{tenant}.eu.example.com", "eu-{tenant}"),
            wildcard("{tenant}.us.example.com", "us-{tenant}"),
            wildcard("{tenant}.asia.example.com", "eu-{tenant}"),
        ],
    );
    assert_eq!(
        errors,
        [
            r#"host_patterns[1].realm: realm template "us-{tenant}" differs from host_patterns[0]'s "eu-{tenant}"; patterns derive the tenant id from the host label, so every pattern must map an id to the same realm"#
        ]
    );
}

#[test]
fn a_static_id_must_not_be_another_realms_derived_id() {
    let pattern = || vec![wildcard("{tenant}.qa.example.com", "tenant-{tenant}")];
    // The id holder comes second: it is the one named.
    let errors = build_errors(
        vec![
            tenant("hooli", "tenant-pied", &[]),
            tenant("pied", "pied-realm", &[]),
        ],
        pattern(),
    );
    assert_eq!(
        errors,
        [
            r#"tenants[1].id: "pied" is the tenant id host patterns derive (template "tenant-{tenant}") for realm "tenant-pied" of tenants[0] ("hooli"), but this tenant's realm is "pied-realm"; a tenant id must name one realm"#
        ]
    );
    // The realm holder comes second.
    let errors = build_errors(
        vec![
            tenant("pied", "pied-realm", &[]),
            tenant("hooli", "tenant-pied", &[]),
        ],
        pattern(),
    );
    assert_eq!(
        errors,
        [
            r#"tenants[1].realm: host patterns derive tenant id "pied" from realm "tenant-pied" (template "tenant-{tenant}"), and "pied" is the id of tenants[0] with realm "pied-realm"; a tenant id must name one realm"#
        ]
    );
    // Without patterns no id is derived, and a realm that no template produces is free.
    assert!(TenantTable::build(
        vec![
            tenant("hooli", "tenant-pied", &[]),
            tenant("pied", "pied-realm", &[]),
        ],
        vec![],
        4
    )
    .is_ok());
    let t = TenantTable::build(
        vec![
            tenant("hooli", "tenant-pied", &[]),
            tenant("piper", "tenant-pied-piper", &[]),
        ],
        pattern(),
        4,
    )
    .unwrap();
    // Each host names exactly one (id, realm) pair.
    let id = |h: &str| t.resolve(h).map(|t| t.id.to_string());
    assert_eq!(id("pied.qa.example.com").as_deref(), Ok("hooli"));
    assert_eq!(id("pied-piper.qa.example.com").as_deref(), Ok("piper"));
    assert_eq!(id("hooli.qa.example.com"), Err(TenantError::UnknownHost));
    assert_eq!(id("piper.qa.example.com"), Err(TenantError::UnknownHost));
    assert_eq!(id("other.qa.example.com").as_deref(), Ok("other"));
}

#[test]
fn derived_labels_invert_templates() {
    assert_eq!(
        derived_label("tenant-{tenant}", "tenant-acme"),
        Some("acme")
    );
    assert_eq!(derived_label("{tenant}", "acme"), Some("acme"));
    assert_eq!(derived_label("r-{tenant}-x", "r-a-b-x"), Some("a-b"));
    assert_eq!(derived_label("{tenant}-{tenant}", "ab-ab"), Some("ab"));
    assert_eq!(derived_label("{tenant}-{tenant}", "ab-ac"), None);
    assert_eq!(derived_label("tenant-{tenant}", "tenant-"), None);
    assert_eq!(derived_label("tenant-{tenant}", "qa-default"), None);
    assert_eq!(derived_label("tenant-{tenant}", "tenant-Acme"), None);
    assert_eq!(derived_label("tenant-{tenant}", "tenant-a.b"), None);
}

#[test]
fn overlapping_patterns_are_refused() {
    // (patterns, expected error)
    let cases: Vec<(Vec<HostPatternDef>, &str)> = vec![
        (
            vec![
                regex(r"(?P<tenant>[a-z0-9-]+)\.example\.org", "r-{tenant}"),
                regex(r"(?P<tenant>[a-z0-9-]+)\.example\.(org|com)", "r-{tenant}"),
            ],
            r#"host_patterns[1]: matches the same hosts as host_patterns[0] (e.g. "a.example.org"); host patterns must not overlap"#,
        ),
        (
            vec![
                wildcard("{tenant}.qa.example.com", "r-{tenant}"),
                regex(r"(?P<tenant>[a-z]+)-x\.qa\.example\.com", "r-{tenant}"),
            ],
            r#"host_patterns[1]: matches the same hosts as host_patterns[0] (e.g. "a-x.qa.example.com"); host patterns must not overlap"#,
        ),
        (
            vec![
                regex(r"(?P<tenant>.+)", "r-{tenant}"),
                wildcard("{tenant}.qa.example.com", "r-{tenant}"),
            ],
            r#"host_patterns[1]: matches the same hosts as host_patterns[0] (e.g. "a.qa.example.com"); host patterns must not overlap"#,
        ),
        (
            vec![
                regex(r"(?i)(?P<tenant>[A-Z]+)\.EU\.x\.org", "r-{tenant}"),
                regex(r"(?P<tenant>\w+)\.eu\.x\.org", "r-{tenant}"),
            ],
            r#"host_patterns[1]: matches the same hosts as host_patterns[0] (e.g. "a.eu.x.org"); host patterns must not overlap"#,
        ),
    ];
    for (patterns, want) in cases {
        assert_eq!(build_errors(vec![], patterns), [want]);
    }
    // Disjoint patterns (and Unicode-only syntax) are fine.
    assert!(TenantTable::build(
        vec![],
        vec![
            wildcard("{tenant}.qa.example.com", "r-{tenant}"),
            wildcard("{tenant}.a.qa.example.com", "r-{tenant}"),
            regex(r"(?P<tenant>[a-z]+)\.eu\.x\.org", "r-{tenant}"),
            regex(r"(?P<tenant>[a-z]+)\.us\.x\.org", "r-{tenant}"),
            regex(r"(?P<tenant>\p{Ll}+)\.u\.x\.org", "r-{tenant}"),
            regex(r"(?P<tenant>[a-z]+)\.\.x\.org", "r-{tenant}"),
        ],
        4,
    )
    .is_ok());
}

fn build_errors(tenants: Vec<TenantDef>, patterns: Vec<HostPatternDef>) -> Vec<String> {
    TenantTable::build(tenants, patterns, 16)
        .unwrap_err()
        .into_iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn build_errors_have_exact_paths() {
    let mut bad_upstream = tenant("up", "r-up", &[]);
    bad_upstream.upstream = Some(" ".into());
    let errors = build_errors(
        vec![
            tenant(
                "acme",
                "tenant-acme",
                &["acme.example.com", "ACME.example.com."],
            ),
            tenant("acme", "tenant-acme2", &["beta.example.com"]),
            tenant(
                "globex",
                "tenant-globex",
                &["Acme..com", "acme.example.com", "a.com:80"],
            ),
            tenant("Bad Id", "realm/with/slash", &[]),
            tenant("-x", "", &[]),
            tenant("ok", "..", &["ok_host.com"]),
            bad_upstream,
        ],
        vec![
            wildcard("{tenant}.qa.example.com", "tenant-{tenant}"),
            wildcard("{tenant}.QA.example.com.", "tenant-{tenant}"),
            wildcard("app-{tenant}.example.com", "tenant-{tenant}"),
            wildcard("{tenant}.{tenant}.example.com", "tenant-{tenant}"),
            wildcard("*.example.com", "fixed"),
            wildcard("{tenant}", "tenant-{tenant}"),
            wildcard("{tenant}.10.0.0.1", "tenant-{tenant}"),
            regex(r"(?P<slug>[a-z]+)\.x\.com", "tenant-{tenant}"),
            regex(r"(?P<tenant>[a-z+\.x\.com", "t {tenant}"),
            regex(
                r"(?P<tenant>[a-z]+)\.y\.com",
                &format!("{}{{tenant}}", "r".repeat(200)),
            ),
        ],
    );
    let expected = [
        r#"tenants[0].hosts[1]: "ACME.example.com." is already used by tenants[0].hosts[0]"#,
        r#"tenants[1].id: duplicate tenant id "acme" (already used by tenants[0])"#,
        r#"tenants[2].hosts[0]: "Acme..com" is not a valid host name (empty label)"#,
        r#"tenants[2].hosts[1]: "acme.example.com" is already used by tenants[0].hosts[0]"#,
        r#"tenants[2].hosts[2]: "a.com:80" is not a valid host name (a port is not allowed here)"#,
        r#"tenants[3].id: "Bad Id" is not a valid tenant id (expected [a-z0-9][a-z0-9_-]{0,62})"#,
        r#"tenants[3].realm: "realm/with/slash" is not a valid realm name: it contains whitespace, a control character or one of / ? # % \"#,
        r#"tenants[4].id: "-x" is not a valid tenant id (expected [a-z0-9][a-z0-9_-]{0,62})"#,
        r#"tenants[4].realm: "" is not a valid realm name: it is empty"#,
        r#"tenants[5].realm: ".." is not a valid realm name: it is a dot segment"#,
        r#"tenants[5].hosts[0]: "ok_host.com" is not a valid host name (invalid character (only a-z, 0-9, '-' and '.' are allowed))"#,
        r#"tenants[6].upstream: upstream must not be empty"#,
        r#"host_patterns[1].pattern: "{tenant}.QA.example.com.": suffix "qa.example.com" is already used by host_patterns[0]"#,
        r#"host_patterns[2].pattern: "app-{tenant}.example.com": {tenant} must be the whole first label, followed by a domain (e.g. "{tenant}.example.com")"#,
        r#"host_patterns[3].pattern: "{tenant}.{tenant}.example.com" contains {tenant} more than once; it may only be the whole first label"#,
        r#"host_patterns[4].realm: realm template "fixed" must contain {tenant}, e.g. "tenant-{tenant}""#,
        r#"host_patterns[4].pattern: "*.example.com" does not contain {tenant} (expected "{tenant}.example.com")"#,
        r#"host_patterns[5].pattern: "{tenant}": {tenant} must be the whole first label, followed by a domain (e.g. "{tenant}.example.com")"#,
        r#"host_patterns[6].pattern: "{tenant}.10.0.0.1": suffix must be a domain name, not an IP address"#,
        r#"host_patterns[7].regex: "(?P<slug>[a-z]+)\\.x\\.com" has no named group `tenant`, e.g. (?P<tenant>[a-z0-9-]+)"#,
        r#"host_patterns[8].realm: realm template "t {tenant}" is not valid: it contains whitespace, a control character or one of / ? # % \"#,
    ];
    for (i, want) in expected.iter().enumerate() {
        assert_eq!(
            errors.get(i).map(String::as_str),
            Some(*want),
            "error #{i}; all: {errors:#?}"
        );
    }
    // the broken regex and the over-long realm template follow
    assert!(
        errors[expected.len()].starts_with(
            "host_patterns[8].regex: \"(?P<tenant>[a-z+\\\\.x\\\\.com\" is not a valid regex"
        ),
        "{errors:#?}"
    );
    assert!(
        errors[expected.len() + 1].starts_with("host_patterns[9].realm: realm template \"rrr"),
        "{errors:#?}"
    );
    assert!(
        errors[expected.len() + 1]
            .ends_with("can expand to 263 bytes with a 63-character tenant (max 255)"),
        "{errors:#?}"
    );
    assert_eq!(errors.len(), expected.len() + 2, "{errors:#?}");
}

#[test]
fn valid_ids_and_realms() {
    for id in ["a", "0", "acme", "acme_corp", "acme-corp", &"a".repeat(63)] {
        assert!(validate_tenant_id(id).is_ok(), "{id}");
    }
    for id in ["", "_a", "-a", "Acme", "a.b", "a b", &"a".repeat(64)] {
        assert!(validate_tenant_id(id).is_err(), "{id}");
    }
    for realm in [
        "master",
        "tenant-acme",
        "Qa Default".replace(' ', "_").as_str(),
        &"r".repeat(255),
    ] {
        assert!(validate_realm(realm).is_ok(), "{realm}");
    }
    for realm in [
        "",
        "a/b",
        "a b",
        "a\tb",
        "a\u{7f}",
        "a?b",
        "a#b",
        "a%2fb",
        ".",
        "..",
        &"r".repeat(256),
    ] {
        assert!(validate_realm(realm).is_err(), "{realm}");
    }
    // a 200-byte template expands to 200 - 8 + 63 = 255 bytes at most: the longest allowed
    assert!(validate_realm_template(&format!("{}{{tenant}}", "r".repeat(192))).is_ok());
    assert!(validate_realm_template(&format!("{}{{tenant}}", "r".repeat(193))).is_err());
}

#[test]
fn regex_is_anchored() {
    let t = TenantTable::build(
        vec![],
        vec![
            regex(r"(?P<tenant>[a-z0-9-]+)\.example\.org", "r-{tenant}"),
            regex(r"(?P<tenant>[a-z0-9-]+)\.example\.com", "r-{tenant}"),
            regex(r"(x)?(?P<tenant>[a-z]+)?\.opt\.io", "r-{tenant}"),
        ],
        16,
    )
    .unwrap();
    assert_eq!(&*t.resolve("foo.example.org").unwrap().realm, "r-foo");
    assert_eq!(&*t.resolve("bar.example.com").unwrap().realm, "r-bar");
    // anchored: no match inside a longer host
    assert!(t.resolve("foo.example.org.evil.com").is_err());
    assert!(t.resolve("evil.foo.example.org").is_err());
    // non-participating optional group -> no tenant
    assert!(t.resolve("x.opt.io").is_err());
    assert_eq!(&*t.resolve("bar.opt.io").unwrap().realm, "r-bar");
    // Another table on the same thread swaps the per-thread scratch space safely.
    let other =
        TenantTable::build(vec![], vec![regex(r"(?P<tenant>[a-z]+)", "o-{tenant}")], 4).unwrap();
    assert_eq!(&*other.resolve("single").unwrap().realm, "o-single");
    assert_eq!(&*t.resolve("foo.example.org").unwrap().realm, "r-foo");
}

#[test]
fn ten_thousand_tenants() {
    let n = 10_000;
    let tenants: Vec<TenantDef> = (0..n)
        .map(|i| {
            let id = format!("t{i:05}");
            let hosts = vec![format!("{id}.example.com"), format!("www.{id}-corp.com")];
            TenantDef {
                realm: format!("tenant-{id}"),
                id,
                hosts,
                status: TenantStatus::Active,
                upstream: None,
            }
        })
        .collect();
    let t = TenantTable::build(
        tenants,
        vec![wildcard("{tenant}.qa.example.com", "tenant-{tenant}")],
        DEFAULT_DYNAMIC_CACHE_CAPACITY,
    )
    .unwrap();
    assert_eq!(t.host_count(), 2 * n);
    assert_eq!(t.static_realms().count(), n);
    for i in (0..n).step_by(97) {
        let id = format!("t{i:05}");
        let a = t
            .resolve_raw(format!("{id}.example.com").as_bytes())
            .unwrap();
        assert_eq!(&*a.id, id);
        let b = t
            .resolve_raw(format!("WWW.{id}-corp.com:443").as_bytes())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let c = t
            .resolve_raw(format!("{id}.qa.example.com").as_bytes())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &c));
    }
    assert_eq!(
        t.resolve_raw(b"t99999.example.com"),
        Err(TenantError::UnknownHost)
    );
}

#[test]
fn deserialize_defs() {
    let tenants: Vec<TenantDef> = serde_json::from_str(
        r#"[{"id":"acme","realm":"tenant-acme","hosts":["acme.example.com"],"status":"pending"},
            {"id":"b","realm":"r"}]"#,
    )
    .unwrap();
    assert_eq!(tenants[0].status, TenantStatus::Pending);
    assert_eq!(tenants[1].status, TenantStatus::Active);
    assert!(tenants[1].hosts.is_empty());
    assert!(
        serde_json::from_str::<TenantDef>(r#"{"id":"a","realm":"r","statu":"active"}"#).is_err()
    );
    assert!(
        serde_json::from_str::<TenantDef>(r#"{"id":"a","realm":"r","status":"paused"}"#).is_err()
    );

    let patterns: Vec<HostPatternDef> = serde_json::from_str(
        r#"[{"pattern":"{tenant}.qa.example.com","realm":"tenant-{tenant}"},
            {"regex":"(?P<tenant>[a-z]+)\\.x\\.com","realm":"x-{tenant}","upstream":"pool"}]"#,
    )
    .unwrap();
    assert_eq!(
        patterns[0],
        wildcard("{tenant}.qa.example.com", "tenant-{tenant}")
    );
    assert_eq!(
        patterns[1],
        HostPatternDef::Regex {
            regex: r"(?P<tenant>[a-z]+)\.x\.com".into(),
            realm: "x-{tenant}".into(),
            upstream: Some("pool".into())
        }
    );
    for bad in [
        r#"{"pattern":"{tenant}.a.com","regex":"x","realm":"r-{tenant}"}"#,
        r#"{"realm":"r-{tenant}"}"#,
        r#"{"pattern":"{tenant}.a.com","realm":"r-{tenant}","extra":1}"#,
    ] {
        assert!(
            serde_json::from_str::<HostPatternDef>(bad).is_err(),
            "{bad}"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2_000))]

    /// Never panics; both normalisation paths agree; output is a fixed point; accepted
    /// names are valid config hosts.
    #[test]
    fn normalisation_properties(raw in "[a-zA-Z0-9.:_\\[\\]-]{0,40}|\\PC{0,12}") {
        let public = normalize_host(raw.as_bytes());
        let buffered = with_normalized_host(raw.as_bytes(), <[u8]>::to_vec);
        match (&public, &buffered) {
            (Ok(n), Ok(b)) => {
                proptest::prop_assert_eq!(n.as_str().as_bytes(), b.as_slice());
                let again = normalize_host(n.as_str().as_bytes()).unwrap();
                proptest::prop_assert_eq!(again.as_str(), n.as_str());
                proptest::prop_assert!(matches!(again.host, Cow::Borrowed(_)));
                proptest::prop_assert_eq!(normalize_config_host(n.as_str()).unwrap(), n.as_str());
            }
            (Err(a), Err(b)) => proptest::prop_assert_eq!(a, b),
            _ => proptest::prop_assert!(false, "paths disagree: {:?} vs {:?}", public, buffered),
        }
    }
}

#[test]
fn table_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TenantTable>();
    assert_send_sync::<Tenant>();
}
