//! Deterministic authorization fixtures shared by `benches/authz.rs` and tests.

use std::collections::BTreeMap;

use http::Method;

use crate::authz::*;

/// Small deterministic generator (no `rand` seeding differences between runs).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const ACTIONS: [&str; 8] = [
    "read", "write", "create", "update", "delete", "list", "export", "approve",
];
const SCOPES: [&str; 3] = ["own", "team", "tenant"];

pub struct PermissionFixture {
    pub catalog: Catalog,
    pub roles: RoleMap,
    pub role_names: Vec<String>,
    pub set: PermissionSet,
    /// Mixed hits, misses (including resources nobody holds) and wildcard-only hits.
    pub required: Vec<RequiredPermission>,
    /// Expected `allows` result for each entry of `required`.
    pub expected: Vec<bool>,
}

/// 200 roles x 5 grants = 1 000 grants over 100 granted resources (routes name 150), with
/// about 1 in 12 grants using a wildcard; the user holds all 200 roles.
pub fn permission_fixture() -> PermissionFixture {
    let mut rng = Lcg(0x5eed);
    let scopes = Scopes::new(&SCOPES).unwrap_or_else(|_| unreachable!());
    let mut catalog = Catalog::new(scopes);
    let mut role_cfg: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in 0..200 {
        let grants = (0..5)
            .map(|_| {
                let res = format!("res{}", rng.below(100));
                let act = ACTIONS[rng.below(ACTIONS.len())];
                let sc = SCOPES[rng.below(3)];
                match rng.below(24) {
                    0 => format!("{res}.*.{sc}"),
                    1 => format!("*.{act}.own"),
                    _ => format!("{res}.{act}.{sc}"),
                }
            })
            .collect();
        role_cfg.insert(format!("role{r}"), grants);
    }
    let roles = RoleMap::build(
        &mut catalog,
        RoleSource {
            path: "roles",
            roles: &role_cfg,
        },
    )
    .unwrap_or_else(|e| panic!("fixture roles: {e:?}"));
    let mut required = Vec::new();
    for _ in 0..256 {
        let res = format!("res{}", rng.below(150));
        let act = ACTIONS[rng.below(ACTIONS.len())];
        let sc = SCOPES[rng.below(3)];
        let p = catalog
            .intern_required(&format!("{res}.{act}.{sc}"))
            .unwrap_or_else(|e| panic!("fixture required: {e}"));
        required.push(p);
    }
    let role_names: Vec<String> = role_cfg.keys().cloned().collect();
    let (set, rejected) = roles.compile(
        &catalog,
        role_names.iter().map(String::as_str),
        std::iter::empty::<&str>(),
    );
    assert!(rejected.is_empty());
    let expected = required.iter().map(|p| set.allows(p)).collect();
    PermissionFixture {
        catalog,
        roles,
        role_names,
        set,
        required,
        expected,
    }
}

const RESOURCES: [&str; 25] = [
    "users",
    "teams",
    "calls",
    "recordings",
    "transcripts",
    "scorecards",
    "evaluations",
    "reports",
    "dashboards",
    "alerts",
    "agents",
    "queues",
    "campaigns",
    "contacts",
    "tags",
    "notes",
    "comments",
    "exports",
    "imports",
    "webhooks",
    "integrations",
    "audits",
    "settings",
    "billing",
    "invoices",
];
const SUBS: [&str; 4] = ["sub", "history", "members", "attachments"];

pub struct RouteFixture {
    pub table: RouteTable,
    pub requests: Vec<(Method, CanonicalPath<'static>)>,
}

/// 500 rules shaped like `/api/v{n}/{resource}/{id}/sub`, plus a few catch-alls, and a
/// request mix of hits on early, middle and late rules and misses.
pub fn route_fixture() -> RouteFixture {
    let mut rng = Lcg(0xf00d);
    let scopes = Scopes::new(&SCOPES).unwrap_or_else(|_| unreachable!());
    let mut catalog = Catalog::new(scopes);
    let mut specs: Vec<(String, Option<Vec<String>>, String)> = Vec::new();
    'outer: for v in 1..=4 {
        for res in RESOURCES {
            let base = format!("/api/v{v}/{res}");
            let shapes = [
                (base.clone(), "GET", "read"),
                (base.clone(), "POST", "create"),
                (format!("{base}/{{id}}"), "GET", "read"),
                (format!("{base}/{{id}}"), "PUT", "update"),
                (format!("{base}/{{id}}"), "DELETE", "delete"),
            ];
            for (path, m, act) in shapes {
                specs.push((path, Some(vec![m.to_string()]), format!("{res}.{act}.own")));
            }
            for sub in SUBS {
                specs.push((
                    format!("{base}/{{id}}/{sub}"),
                    Some(vec!["GET".into()]),
                    format!("{res}.read.team"),
                ));
            }
            if specs.len() >= 490 {
                break 'outer;
            }
        }
    }
    let mut more = 0;
    while specs.len() < 496 {
        specs.push((
            format!("/internal/tools/t{more}/{{id}}"),
            None,
            "tools.use.own".into(),
        ));
        more += 1;
    }
    specs.push((
        "/api/{version}/{resource}/{id}/sub".into(),
        None,
        "api.read.own".into(),
    ));
    specs.push(("/api/**".into(), None, "api.any.tenant".into()));
    specs.push(("/static/**".into(), None, String::new()));
    specs.push(("/health".into(), None, String::new()));
    let route_specs: Vec<RouteSpec<'_>> = specs
        .iter()
        .map(|(path, methods, perm)| RouteSpec {
            path,
            methods: methods.as_deref(),
            public: perm.is_empty(),
            permission: (!perm.is_empty()).then_some(perm.as_str()),
            ..RouteSpec::default()
        })
        .collect();
    let table = RouteTable::build(&mut catalog, route_specs, "routes", true)
        .unwrap_or_else(|e| panic!("fixture routes: {e:?}"));
    let methods = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
    let mut requests = Vec::new();
    for _ in 0..256 {
        let res = if rng.below(8) == 0 {
            "unknown"
        } else {
            RESOURCES[rng.below(RESOURCES.len())]
        };
        let v = 1 + rng.below(5);
        let id = rng.next();
        let path = match rng.below(6) {
            0 => format!("/api/v{v}/{res}"),
            1 | 2 => format!("/api/v{v}/{res}/{id}"),
            3 => format!("/api/v{v}/{res}/{id}/{}", SUBS[rng.below(SUBS.len())]),
            4 => format!("/static/js/app.{id}.js"),
            _ => format!("/nope/{res}/{id}"),
        };
        // Leaked: a few KiB, once per bench process, so requests can borrow 'static.
        let bytes: &'static [u8] = Box::leak(path.into_bytes().into_boxed_slice());
        let c =
            canonicalize(bytes, SlashPolicy::Merge).unwrap_or_else(|e| panic!("fixture path: {e}"));
        requests.push((methods[rng.below(methods.len())].clone(), c));
    }
    RouteFixture { table, requests }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fixtures_are_mixed() {
        let f = permission_fixture();
        let hits = f.expected.iter().filter(|b| **b).count();
        assert!(
            hits > 20 && hits < 236,
            "hits {hits} of {}",
            f.expected.len()
        );
        let (again, _) = f.roles.compile(
            &f.catalog,
            f.role_names.iter().map(String::as_str),
            std::iter::empty::<&str>(),
        );
        for (p, want) in f.required.iter().zip(&f.expected) {
            assert_eq!(again.allows(p), *want);
        }

        let r = route_fixture();
        assert_eq!(r.table.len(), 500);
        let matched = r
            .requests
            .iter()
            .filter(|(m, p)| r.table.match_route(m, p).is_some())
            .count();
        assert!(matched > 100 && matched < 250, "matched {matched}");
    }
}
