//! The fuzz-target entry surface, not an API.
//!
//! Each function here is what one `fuzz/fuzz_targets/*.rs` target calls with libFuzzer's
//! bytes. They only call the gateway's own code, in the order the gateway calls it, and then
//! assert the invariants that must hold for every input (a failed assertion is a finding).
//! Errors are expected and fine; a panic anywhere is a bug. Fixtures are built once per
//! process (`OnceLock`) so an execution costs only the code under test.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use base64::Engine;
use http::Method;
use pingora::http::RequestHeader;

use super::fixture::config_yaml;
use crate::authz::permission::MAX_PERMISSION_LEN;
use crate::authz::{
    canonicalize, match_layered, parse_permission, Catalog, PermissionSet, RouteRule, Scopes,
};
use crate::config::RuntimeConfig;
use crate::http::request_target::{absolute_form_authority, origin_form, request_host};
use crate::jwks::{build_key_set, key_store_with_clock, Alg, AlgSet, KeySet, MAX_KEYS_PER_REALM};
use crate::tenant::{normalize_host, Tenant};
use crate::verify::Verifier;

/// The fixed clock of the token target: seed tokens expire at `FIXED_NOW + 10 years`, so they
/// keep verifying (and reaching the signature and identity code) whenever the corpus is run.
pub const FIXED_NOW: u64 = 1_800_000_000;

/// The public half of `testdata/jwt/rsa_a.pem` (kid `k1`), installed for realm `tenant-acme`.
const RSA_A_JWK: &str = include_str!("../../testdata/jwt/rsa_a.jwk.json");

fn fixture_yaml(paths: &str) -> String {
    config_yaml(&format!(
        r#"tenants:
  - id: acme
    realm: tenant-acme
    hosts: [acme.test, app.acme-corp.test]
    routes:
      - {{path: "/api/v1/users/me", authenticated: true}}
      - {{path: "/public/**", public: true}}
  - {{id: frozen, realm: tenant-frozen, hosts: [frozen.test], status: suspended}}
host_patterns:
  - {{pattern: "{{tenant}}.apps.test", realm: "tenant-{{tenant}}"}}
  - {{regex: "(?P<tenant>[a-z]+)\\.eu\\.test", realm: "tenant-{{tenant}}"}}
roles: {{admin: ["users.*.tenant"], viewer: ["users.read.own"]}}
routes:
  - {{path: "/health", public: true}}
  - {{path: "/docs/**", public: true}}
  - {{path: "/static/**", public: true}}
  - {{path: "/api/v1/me", authenticated: true}}
  - {{path: "/api/v1/users", methods: [GET], permission: users.read.own}}
  - {{path: "/api/v1/users/{{id}}", methods: [GET], permission: users.read.own}}
  - {{path: "/api/v1/users/{{id}}", methods: [DELETE], permission: users.delete.tenant}}
  - {{path: "/api/v1/items:batch", methods: [POST], permission: items.write.own}}
  - {{path: "/api/v1/files/a%20b", permission: files.read.own}}
  - {{path: "/api/v1/pct/a%25b", permission: files.read.own}}
  - {{path: "/api/v1/caf%C3%A9", permission: files.read.own}}
  - {{path: "/Admin/panel", permission: admin.manage.tenant}}
  - {{path: "/~admin/**", permission: admin.manage.tenant}}
  - {{path: "/api/{{version}}/admin/**", permission: admin.manage.tenant}}
  - {{path: "/api/v1/calls/**", methods: [GET, POST], permission: calls.read.own}}
paths: {paths}
"#
    ))
}

/// Two snapshots of one config that differ only in `paths:`: the defaults, and every
/// non-default switch (reject `//`, case-insensitive literals, `%25xx` allowed).
struct PathFixture {
    cfg: RuntimeConfig,
    tenant: Arc<Tenant>,
    case_sensitive: bool,
}

fn path_fixtures() -> &'static [PathFixture; 2] {
    static F: OnceLock<[PathFixture; 2]> = OnceLock::new();
    F.get_or_init(|| {
        let build = |paths: &str, case_sensitive: bool| {
            let cfg = crate::config::from_str(&fixture_yaml(paths), &HashMap::new())
                .unwrap_or_else(|e| panic!("fuzz fixture config: {e}"));
            let tenant = cfg
                .tenants
                .resolve("acme.test")
                .unwrap_or_else(|e| panic!("fuzz fixture tenant: {e:?}"));
            PathFixture {
                cfg,
                tenant,
                case_sensitive,
            }
        };
        [
            build(
                "{slashes: merge, case_sensitive: true, double_encoding: reject}",
                true,
            ),
            build(
                "{slashes: reject, case_sensitive: false, double_encoding: allow}",
                false,
            ),
        ]
    })
}

/// Splits `data` at the first `n - 1` newlines (the last part keeps the rest).
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == b'\n').collect()
}

// ---------------------------------------------------------------------------------------------
// host

/// `request_host` on a request built from `flags\nmethod\ntarget\nhost\nhost...`, then the
/// tenant lookup on its answer.
///
/// Invariants: no panic; `absolute_form_authority` and `origin_form` return sub-slices of the
/// target; an origin form that starts with `/` is a fixed point; an accepted host is one of the
/// request's own authority or `Host` bytes; and when the request carries both an authority and
/// a `Host` and is accepted, the two never resolve to two different tenants (one request, one
/// tenant, whichever of the two a later step would look at).
pub fn host(data: &[u8]) {
    let f = fields(data, 4);
    let (flags, method, target) = match f.as_slice() {
        [flags, method, target, ..] => (*flags, *method, *target),
        _ => return,
    };
    let hosts: Vec<&[u8]> = match f.get(3) {
        Some(rest) => rest.split(|b| *b == b'\n').collect(),
        None => Vec::new(),
    };
    let is_h2 = flags.first().is_some_and(|b| b & 1 == 1);

    // The pure helpers on any bytes at all, not only targets Pingora would accept.
    check_target_helpers(target);
    for h in &hosts {
        let _ = normalize_host(h);
    }

    let Ok(method) = std::str::from_utf8(method) else {
        return;
    };
    let Ok(mut req) = RequestHeader::build(method, target, None) else {
        return;
    };
    for h in &hosts {
        let Ok(v) = http::HeaderValue::from_bytes(h) else {
            return;
        };
        if req.append_header("Host", v).is_err() {
            return;
        }
    }
    check_target_helpers(req.raw_path());
    let Ok(chosen) = request_host(&req, is_h2) else {
        return;
    };
    let authority = match req.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => absolute_form_authority(req.raw_path()),
    };
    let header = req.headers.get(http::header::HOST).map(|h| h.as_bytes());
    assert!(
        Some(chosen) == authority || Some(chosen) == header,
        "request_host returned bytes that are neither the authority nor the Host header"
    );
    let tenants = &path_fixtures()[0].cfg.tenants;
    let chosen_tenant = tenants.resolve_raw(chosen);
    if let (Some(a), Some(h)) = (authority, header) {
        if let (Ok(ta), Ok(th)) = (tenants.resolve_raw(a), tenants.resolve_raw(h)) {
            assert_eq!(
                ta.id, th.id,
                "accepted request names two tenants: authority {a:?} vs Host {h:?}"
            );
        }
    }
    // Lookup depends only on the normalised host: resolving the normal form agrees.
    if let Ok(n) = normalize_host(chosen) {
        let again = normalize_host(n.host.as_bytes())
            .unwrap_or_else(|e| panic!("normal form {:?} does not normalise: {e:?}", n.host));
        assert_eq!(again.host, n.host, "host normalisation is not idempotent");
        let by_normal = tenants.resolve_raw(n.host.as_bytes());
        assert_eq!(
            chosen_tenant.as_ref().ok().map(|t| t.id.clone()),
            by_normal.as_ref().ok().map(|t| t.id.clone()),
            "{chosen:?} and its normal form {:?} resolve differently",
            n.host
        );
    }
}

fn is_subslice(inner: &[u8], outer: &[u8]) -> bool {
    let (o, i) = (outer.as_ptr() as usize, inner.as_ptr() as usize);
    i >= o && i + inner.len() <= o + outer.len()
}

fn check_target_helpers(raw: &[u8]) {
    if let Some(a) = absolute_form_authority(raw) {
        assert!(is_subslice(a, raw), "authority is not part of the target");
    }
    let o = origin_form(raw);
    assert!(
        o == b"/" || is_subslice(o, raw),
        "origin form is not part of the target"
    );
    if o.first() == Some(&b'/') {
        assert_eq!(origin_form(o), o, "origin form is not a fixed point");
    }
}

// ---------------------------------------------------------------------------------------------
// path_route

const METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::PATCH,
];

fn same_rule(a: Option<&RouteRule>, b: Option<&RouteRule>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        _ => false,
    }
}

/// Canonicalise and route a request-target exactly as `decision::decide` does
/// (`origin_form`, `canonicalize` with the snapshot's `paths`, `match_layered` tenant first).
/// Byte 0 picks the `paths:` variant, byte 1 the method, the rest is the raw target.
///
/// Invariants: no panic; the canonical path is ASCII and starts with `/`; canonicalising it
/// again, or the forwarded request-target, yields the same path unchanged (idempotent, and the
/// query survives); the rule matched for the request is the rule matched for its canonical
/// form and for the forwarded target (what is authorised is what is forwarded); and spellings
/// the matcher promises to treat alike (one trailing slash; ASCII case when case-insensitive;
/// HEAD and GET) get the same rule.
pub fn path_route(data: &[u8]) {
    let [variant, method, raw @ ..] = data else {
        return;
    };
    let fx = &path_fixtures()[usize::from(*variant & 1)];
    let method = &METHODS[usize::from(*method) % METHODS.len()];
    let cfg = &fx.cfg;
    let target = origin_form(raw);
    let Ok(canon) = canonicalize(target, cfg.paths) else {
        return;
    };
    let p = canon.path();
    assert!(p.starts_with('/') && p.is_ascii(), "canonical path {p:?}");
    let rule = match_layered(cfg.tenant_routes(&fx.tenant), &cfg.routes, method, &canon);

    let again = canonicalize(p.as_bytes(), cfg.paths)
        .unwrap_or_else(|e| panic!("canonical path {p:?} is refused: {e}"));
    assert_eq!(again.path(), p, "canonicalisation is not idempotent");
    assert!(
        !again.is_rewritten(),
        "canonical path {p:?} is rewritten again"
    );
    let rule_again = match_layered(cfg.tenant_routes(&fx.tenant), &cfg.routes, method, &again);
    assert!(
        same_rule(rule, rule_again),
        "{p:?}: request matched {:?}, its canonical form {:?}",
        rule.map(RouteRule::id),
        rule_again.map(RouteRule::id)
    );

    let forwarded = canon.request_target();
    let fwd = canonicalize(&forwarded, cfg.paths)
        .unwrap_or_else(|e| panic!("forwarded target {forwarded:?} is refused: {e}"));
    assert_eq!(fwd.path(), p, "forwarded target canonicalises differently");
    assert_eq!(
        fwd.query(),
        canon.query(),
        "forwarded target changes the query"
    );
    let rule_fwd = match_layered(cfg.tenant_routes(&fx.tenant), &cfg.routes, method, &fwd);
    assert!(
        same_rule(rule, rule_fwd),
        "{p:?}: authorised {:?}, forwarded target matches {:?}",
        rule.map(RouteRule::id),
        rule_fwd.map(RouteRule::id)
    );

    // Spellings a backend treats as the same resource get the same rule.
    let route = |t: &[u8]| {
        canonicalize(t, cfg.paths)
            .ok()
            .map(|c| match_layered(cfg.tenant_routes(&fx.tenant), &cfg.routes, method, &c))
    };
    // A single trailing slash is not significant.
    if p != "/" && !p.ends_with('/') {
        let slashed = format!("{p}/");
        let r = route(slashed.as_bytes())
            .unwrap_or_else(|| panic!("{slashed:?} is refused but {p:?} is not"));
        assert!(
            same_rule(rule, r),
            "{p:?} matched {:?}, {slashed:?} {:?}",
            rule.map(RouteRule::id),
            r.map(RouteRule::id)
        );
    }
    // `paths.case_sensitive: false`: ASCII case never changes the rule.
    if !fx.case_sensitive {
        let lower = p.to_ascii_lowercase();
        let r = route(lower.as_bytes())
            .unwrap_or_else(|| panic!("{lower:?} is refused but {p:?} is not"));
        assert!(
            same_rule(rule, r),
            "case-insensitive: {p:?} matched {:?}, {lower:?} {:?}",
            rule.map(RouteRule::id),
            r.map(RouteRule::id)
        );
    }
    // No fixture rule names HEAD alone: HEAD gets GET's rule (frameworks answer HEAD with the
    // GET handler, so it must not fall through to a weaker rule).
    if *method == Method::HEAD {
        let get = match_layered(
            cfg.tenant_routes(&fx.tenant),
            &cfg.routes,
            &Method::GET,
            &canon,
        );
        assert!(
            same_rule(rule, get),
            "{p:?}: HEAD matched {:?}, GET {:?}",
            rule.map(RouteRule::id),
            get.map(RouteRule::id)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// token

struct TokenFixture {
    rt: tokio::runtime::Runtime,
    verifier: Verifier,
}

fn token_fixture() -> &'static TokenFixture {
    static F: OnceLock<TokenFixture> = OnceLock::new();
    F.get_or_init(|| {
        let cfg = &path_fixtures()[0].cfg;
        // The refresher is dropped at once: a request-path fetch (unknown kid) is then
        // refused immediately instead of waiting for an IdP that is not there.
        let (keys, _refresher) =
            key_store_with_clock(cfg.jwks.clone(), vec![], Arc::new(|| FIXED_NOW));
        let jwks = format!("{{\"keys\": [{RSA_A_JWK}]}}");
        keys.install_jwks("tenant-acme", jwks.as_bytes())
            .unwrap_or_else(|e| panic!("fuzz fixture JWKS: {e}"));
        let mut settings = cfg.verify.clone();
        settings.claim_headers = vec![
            ("address.country".into(), "x-country".into()),
            ("tenant_tier".into(), "x-tier".into()),
        ];
        settings.client_role_clients = vec!["backend".into(), "admin-ui".into()];
        settings.token_cache_capacity = 64;
        let verifier = Verifier::new(keys, settings);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("fuzz runtime: {e}"));
        TokenFixture { rt, verifier }
    })
}

/// Builds a token from the input and verifies it for tenant `acme` (realm `tenant-acme`,
/// key `k1` of `testdata/jwt/rsa_a`, clock fixed at [`FIXED_NOW`]). Byte 0 picks the shape:
/// even, the rest is the token text itself; odd, the rest is `header JSON \xff claims JSON
/// \xff signature bytes`, each base64url-encoded here, so the fuzzer works on the JSON that
/// the JOSE header and claims parsers see.
///
/// Invariants: no panic, and a second verification of the same token (now possibly a cache
/// hit) gives the same answer: the same error code, or the same subject.
pub fn token(data: &[u8]) {
    let [shape, rest @ ..] = data else {
        return;
    };
    let token = if shape & 1 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let mut parts = rest.splitn(3, |b| *b == 0xff);
        let h = parts.next().unwrap_or_default();
        let c = parts.next().unwrap_or_default();
        let s = parts.next().unwrap_or_default();
        format!("{}.{}.{}", b64.encode(h), b64.encode(c), b64.encode(s))
    };
    let fx = token_fixture();
    let outcome = |t: &str| {
        fx.rt
            .block_on(fx.verifier.verify("acme", "tenant-acme", t))
            .map(|id| id.sub().to_owned())
            .map_err(|e| e.code())
    };
    let first = outcome(&token);
    let second = outcome(&token);
    assert_eq!(first, second, "verifying the same token twice disagrees");
}

// ---------------------------------------------------------------------------------------------
// permission

/// The narrowest-first scopes of the fixture configs.
const SCOPES: [&str; 3] = ["own", "team", "tenant"];

/// `requirement\ngrant\ngrant...`: every line goes through `parse_permission`; the
/// requirement's resource and action are then asked at each scope against the set compiled
/// from the grants, both as config grants (interned) and as run-time grants (Redis, claims).
///
/// Invariants: no panic; a set that grants `r.a` at scope S grants it at every narrower scope;
/// `widest_scope` agrees with `allows`; the config-time and run-time compilations agree; and
/// `allows` equals the model "some grant's resource and action are `*` or equal, and its scope
/// is at least as wide".
pub fn permission(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let Some(req_line) = lines.next() else {
        return;
    };
    let grants: Vec<&str> = lines.take(32).collect();
    for g in &grants {
        let _ = parse_permission(g);
    }
    let Ok(req) = parse_permission(req_line) else {
        return;
    };
    use crate::authz::permission::Segment;
    let (Segment::Name(res), Segment::Name(act)) = (req.resource, req.action) else {
        return;
    };
    // Asked at every scope below, so every spelling must fit the length cap.
    if SCOPES
        .iter()
        .any(|s| res.len() + act.len() + s.len() + 2 > MAX_PERMISSION_LEN)
    {
        return;
    }
    let scopes = Scopes::new(&SCOPES).unwrap_or_else(|_| unreachable!());

    // Config time: the routes' requirements and the roles' grants are interned.
    let mut config = Catalog::new(scopes.clone());
    let config_required = required_at_each_scope(&mut config, res, act);
    let interned: Vec<_> = grants
        .iter()
        .filter_map(|g| config.intern_grant(g).ok())
        .collect();
    let config_set = PermissionSet::from_grants(&config, interned);
    // Run time (Redis, token claims): the catalog is frozen with the routes' names only, so
    // grants naming anything else are inert.
    let mut frozen = Catalog::new(scopes);
    let runtime_required = required_at_each_scope(&mut frozen, res, act);
    let runtime_grants: Vec<_> = grants.iter().filter_map(|g| frozen.grant(g).ok()).collect();
    let runtime_set = PermissionSet::from_grants(&frozen, runtime_grants);

    let model = |rank: usize| {
        grants.iter().any(|g| {
            let Ok(p) = parse_permission(g) else {
                return false;
            };
            let fits = |seg: Segment<'_>, name: &str| match seg {
                Segment::Any => true,
                Segment::Name(n) => n == name,
            };
            let width = match p.scope {
                Segment::Any => Some(SCOPES.len() - 1),
                Segment::Name(n) => SCOPES.iter().position(|s| *s == n),
            };
            fits(p.resource, res) && fits(p.action, act) && width.is_some_and(|w| w >= rank)
        })
    };
    let mut answers = Vec::new();
    for (set, required) in [
        (&config_set, &config_required),
        (&runtime_set, &runtime_required),
    ] {
        let allowed: Vec<bool> = required.iter().map(|r| set.allows(r)).collect();
        for wide in 0..allowed.len() {
            for narrow in 0..wide {
                assert!(
                    !allowed[wide] || allowed[narrow],
                    "{grants:?} grant {res}.{act} at {} but not at {}",
                    SCOPES[wide],
                    SCOPES[narrow]
                );
            }
            assert_eq!(
                allowed[wide],
                model(wide),
                "{grants:?} vs {res}.{act}.{}",
                SCOPES[wide]
            );
        }
        let widest = set.widest_scope(required[0].resource(), required[0].action());
        let last_allowed = allowed.iter().rposition(|a| *a);
        assert_eq!(
            widest.map(|s| usize::from(s.rank())),
            last_allowed,
            "widest_scope disagrees with allows"
        );
        answers.push(allowed);
    }
    assert_eq!(
        answers[0], answers[1],
        "{grants:?}: config-time and run-time grants disagree on {res}.{act}"
    );
}

fn required_at_each_scope(
    catalog: &mut Catalog,
    res: &str,
    act: &str,
) -> Vec<crate::authz::RequiredPermission> {
    SCOPES
        .iter()
        .map(|s| {
            catalog
                .intern_required(&format!("{res}.{act}.{s}"))
                .unwrap_or_else(|e| panic!("{res}.{act}.{s} parsed but is refused: {e}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// jwks

/// `build_key_set` on the bytes as a JWKS document, all algorithms allowed; when it builds,
/// again with the result as the previous set (a routine refresh of an unchanged document).
///
/// Invariants: no panic; at most [`MAX_KEYS_PER_REALM`] keys; no two keys share a `kid`; every
/// key verifies at least one algorithm; rebuilding the same document reuses every key (none is
/// dropped, so cached tokens survive) and keeps the same kids in the same order.
pub fn jwks(data: &[u8]) {
    let all = AlgSet::from_slice(&Alg::ALL);
    let Ok(built) = build_key_set(data, all, &KeySet::default()) else {
        return;
    };
    let set = &built.set;
    assert!(set.len() <= MAX_KEYS_PER_REALM, "{} keys", set.len());
    let kids: Vec<Option<&str>> = set.all.iter().map(|k| k.kid()).collect();
    for (i, k) in kids.iter().enumerate() {
        if k.is_some() {
            assert!(!kids[..i].contains(k), "duplicate kid {k:?} kept");
        } else {
            assert_eq!(set.len(), 1, "a kid-less key in a multi-key set was kept");
        }
    }
    for k in &set.all {
        assert!(
            k.algorithms().next().is_some(),
            "key {:?} verifies nothing",
            k.kid()
        );
    }
    let again = build_key_set(data, all, set)
        .unwrap_or_else(|e| panic!("document built once, then refused: {e}"));
    assert!(
        again.dropped.is_empty(),
        "an unchanged refresh retired keys"
    );
    let kids_again: Vec<Option<&str>> = again.set.all.iter().map(|k| k.kid()).collect();
    assert_eq!(kids, kids_again, "an unchanged refresh changed the key set");
    for (old, new) in set.all.iter().zip(&again.set.all) {
        assert!(Arc::ptr_eq(old, new), "an unchanged key was not reused");
    }
}

// ---------------------------------------------------------------------------------------------
// config

/// `config::from_str` on the bytes as UTF-8 text, with an empty environment.
///
/// Invariant: no panic (an invalid config is an `Err` listing its problems, never a crash),
/// and a refused config says why.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::config::from_str(text, &HashMap::new()) {
        assert!(!e.errors.is_empty(), "config refused without a reason");
    }
}

#[cfg(test)]
mod tests {
    type Target = fn(&[u8]);

    /// The hand-made seeds (`fuzz/seeds/<target>/`) through each entry point on stable
    /// `cargo test`: keeps the fixtures and the targets' invariants checked without nightly.
    /// `fuzz/replay.sh` replays the minimised corpus too.
    #[test]
    fn seeds_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
        let targets: [(&str, Target); 6] = [
            ("host", super::host),
            ("path_route", super::path_route),
            ("token", super::token),
            ("permission", super::permission),
            ("jwks", super::jwks),
            ("config", super::config),
        ];
        for (name, run) in targets {
            let dir = std::fs::read_dir(root.join(name)).unwrap_or_else(|e| {
                panic!("fuzz/seeds/{name}: {e} (run fuzz/seeds/make_seeds.sh)")
            });
            let mut ran = 0;
            for entry in dir.flatten() {
                if entry.path().extension().is_some_and(|e| e == "bin") {
                    let data = std::fs::read(entry.path()).unwrap_or_default();
                    run(&data);
                    ran += 1;
                }
            }
            assert!(ran > 0, "no seeds for {name}");
        }
    }

    /// The valid seed token verifies under the fixture (clock, key, issuer, audience): without
    /// it the token target would never reach the signature and identity code.
    #[test]
    fn fixture_token_verifies() {
        let fx = super::token_fixture();
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/token/valid-text.bin"
        );
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let token = String::from_utf8_lossy(&data[1..]).into_owned();
        let id = fx
            .rt
            .block_on(fx.verifier.verify("acme", "tenant-acme", &token));
        assert_eq!(
            id.map(|i| i.sub().to_owned()).ok().as_deref(),
            Some("f81d4fae-7dec-11d0-a765-00a0c91e6bf6")
        );
    }
}
