//! Route rules: which access a request path needs.
//!
//! Rules are ordered and the first match wins. A pattern is made of literal segments, `{name}`
//! (exactly one non-empty segment) and a final `**` (zero or more segments). Rules compile at
//! load into a segment trie that, for a method and path, returns the matching rule with the
//! LOWEST index, exploring both the literal and the `{param}` branch where both exist, so the
//! trie keeps exact first-match-wins semantics. No regex and no allocation per match.
//!
//! Matching rules, all decided here so the proxy cannot get them subtly different:
//! * Input is a [`CanonicalPath`]; the query never takes part.
//! * Literal segments compare by their percent-decoded bytes, the value a decoding backend
//!   (Starlette, most frameworks) routes on: `/items%3Abatch` matches the literal
//!   `/items:batch`, so an encoding variant cannot slip past a rule.
//! * A single trailing slash is not significant: `/api/users/` matches the rules of
//!   `/api/users`. Frameworks commonly route or redirect both forms to one handler; authorising
//!   them differently would open a gap. Patterns may not end in `/` (use `/api/**`).
//! * `methods: [GET]` also covers `HEAD`: frameworks answer HEAD with the GET handler, so a
//!   HEAD request must not fall through to a weaker later rule.
//! * Unmatched requests get the caller's [`DefaultPolicy`].

use std::cmp::Ordering;

use http::Method;
use serde::Deserialize;

use super::path::{decoded, literal_segment, CanonicalPath};
use super::permission::{Catalog, PermissionSet, RequiredPermission, ScopeId};
use super::BuildError;

/// What an unmatched request gets (applied by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultPolicy {
    #[default]
    Deny,
    Authenticated,
    Allow,
}

/// How a `permissions: [...]` list combines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MatchMode {
    #[default]
    Any,
    All,
}

const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
/// Extension methods: only rules without `methods` cover them.
const OTHER_BIT: u16 = 1 << 9;

/// A set of HTTP methods as a bitmask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSet(u16);

impl MethodSet {
    pub const ALL: MethodSet = MethodSet((1 << 10) - 1);

    fn bit_of_name(name: &str) -> Option<u16> {
        STANDARD_METHODS
            .iter()
            .position(|m| *m == name)
            .map(|i| 1 << i)
    }

    #[inline]
    fn bit(m: &Method) -> u16 {
        let b = match m.as_str() {
            "GET" => 0,
            "HEAD" => 1,
            "POST" => 2,
            "PUT" => 3,
            "DELETE" => 4,
            "CONNECT" => 5,
            "OPTIONS" => 6,
            "TRACE" => 7,
            "PATCH" => 8,
            _ => return OTHER_BIT,
        };
        1 << b
    }

    #[inline]
    pub fn contains(&self, m: &Method) -> bool {
        self.0 & Self::bit(m) != 0
    }

    pub fn is_all(&self) -> bool {
        *self == Self::ALL
    }
}

/// One rule as written in config (borrowed from the caller's config types).
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteSpec<'a> {
    pub path: &'a str,
    /// `None` = all methods. Uppercase standard method names.
    pub methods: Option<&'a [String]>,
    pub public: bool,
    pub authenticated: bool,
    pub permission: Option<&'a str>,
    pub permissions: Option<&'a [String]>,
    pub match_mode: MatchMode,
    pub enforce: Option<bool>,
    pub allow_query_token: bool,
    /// The rule's own request-body bound, bytes (`None`: the global one).
    pub max_body_bytes: Option<u64>,
}

/// Permissions a rule demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    perms: Box<[RequiredPermission]>,
    mode: MatchMode,
    label: Box<str>,
}

impl Requirement {
    #[inline]
    pub fn allows(&self, set: &PermissionSet) -> bool {
        match self.mode {
            MatchMode::Any => self.perms.iter().any(|p| set.allows(p)),
            MatchMode::All => self.perms.iter().all(|p| set.allows(p)),
        }
    }

    /// `Some(scope)` when allowed, where scope is the widest the user holds for the first
    /// listed permission they satisfy (forwarded as `X-Auth-Scope`); `None` when denied.
    #[inline]
    pub fn authorize(&self, set: &PermissionSet) -> Option<ScopeId> {
        if !self.allows(set) {
            return None;
        }
        self.perms
            .iter()
            .find(|p| set.allows(p))
            .and_then(|p| set.widest_scope(p.resource(), p.action()))
    }

    pub fn permissions(&self) -> &[RequiredPermission] {
        &self.perms
    }

    pub fn mode(&self) -> MatchMode {
        self.mode
    }

    /// The permission(s) as written, for logs, metrics and 403 bodies: `users.read.own`, or
    /// `a.b.own|c.d.own` (any) / `a.b.own+c.d.own` (all).
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// What a matched rule demands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Public,
    Authenticated,
    Permission(Requirement),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRule {
    index: usize,
    id: Box<str>,
    pattern: Box<str>,
    methods: MethodSet,
    access: Access,
    enforce: Option<bool>,
    allow_query_token: bool,
    max_body_bytes: Option<u64>,
}

impl RouteRule {
    /// Position in its own table.
    pub fn index(&self) -> usize {
        self.index
    }
    /// `routes[3]` or `tenants[1].routes[0]`: a bounded label for logs and metrics.
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
    pub fn methods(&self) -> MethodSet {
        self.methods
    }
    pub fn access(&self) -> &Access {
        &self.access
    }
    /// Per-route shadow-mode override (`None` = inherit).
    pub fn enforce(&self) -> Option<bool> {
        self.enforce
    }
    pub fn allow_query_token(&self) -> bool {
        self.allow_query_token
    }
    /// The rule's own request-body bound, if it sets one.
    pub fn max_body_bytes(&self) -> Option<u64> {
        self.max_body_bytes
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Terminal {
    rule: u32,
    methods: u16,
}

#[derive(Debug, Clone, Default)]
struct Node {
    /// Sorted by key (see [`key_order`]): decoded bytes, ASCII-lowercased when matching is
    /// case-insensitive.
    /// A sorted Vec (not a hash map) so case-insensitive and decoded comparison need no
    /// per-request buffer; fan-out per node is small.
    literals: Vec<(Box<[u8]>, Node)>,
    param: Option<Box<Node>>,
    /// Rules whose pattern ends here.
    exact: Vec<Terminal>,
    /// Rules whose pattern ends with `**` here.
    rest: Vec<Terminal>,
    /// Lowest rule index anywhere in this subtree, for pruning.
    min_rule: u32,
}

enum PatSeg {
    Literal(Vec<u8>),
    Param,
    Rest,
}

fn valid_param_name(n: &str) -> bool {
    let mut b = n.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn parse_pattern(p: &str, case_sensitive: bool) -> Result<Vec<PatSeg>, String> {
    let Some(body) = p.strip_prefix('/') else {
        return Err("must start with '/'".into());
    };
    if body.is_empty() {
        return Ok(Vec::new());
    }
    if body.ends_with('/') {
        return Err(format!(
            "must not end with '/' (a trailing slash is ignored when matching; use \"{}/**\" to match everything below)",
            p.trim_end_matches('/')
        ));
    }
    let parts: Vec<&str> = body.split('/').collect();
    let mut out = Vec::with_capacity(parts.len());
    let mut params: Vec<&str> = Vec::new();
    for (i, seg) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if seg.is_empty() {
            return Err("empty segment ('//')".into());
        }
        if *seg == "**" {
            if !last {
                return Err("'**' is only allowed as the last segment".into());
            }
            out.push(PatSeg::Rest);
        } else if let Some(inner) = seg.strip_prefix('{') {
            let Some(name) = inner.strip_suffix('}') else {
                return Err(if inner.contains('}') {
                    format!("'{{...}}' must be a whole segment, found {seg:?}")
                } else {
                    "unclosed '{'".into()
                });
            };
            if !valid_param_name(name) {
                return Err(format!("invalid parameter name {name:?}"));
            }
            if params.contains(&name) {
                return Err(format!("duplicate parameter {{{name}}}"));
            }
            params.push(name);
            out.push(PatSeg::Param);
        } else if seg.contains('{') || seg.contains('}') {
            return Err(format!(
                "'{{' and '}}' are only allowed around a whole segment like {{id}}, found {seg:?}"
            ));
        } else if seg.contains('*') {
            return Err(format!(
                "'*' is only allowed as a final '**' segment, found {seg:?} (use {{name}} for one segment)"
            ));
        } else {
            let mut key = literal_segment(seg).map_err(|e| format!("segment {seg:?}: {e}"))?;
            if !case_sensitive {
                key.make_ascii_lowercase();
            }
            out.push(PatSeg::Literal(key));
        }
    }
    Ok(out)
}

fn parse_methods(path: &str, methods: &[String], errors: &mut Vec<BuildError>) -> u16 {
    if methods.is_empty() {
        errors.push(BuildError::new(
            path,
            "must not be empty (omit it to match all methods)",
        ));
        return 0;
    }
    let mut bits = 0u16;
    for (j, m) in methods.iter().enumerate() {
        match MethodSet::bit_of_name(m) {
            Some(b) => bits |= b,
            None => {
                let upper = m.to_ascii_uppercase();
                let msg = if MethodSet::bit_of_name(&upper).is_some() {
                    format!("method {m:?} must be uppercase ({upper})")
                } else {
                    format!(
                        "unknown method {m:?} (expected one of {})",
                        STANDARD_METHODS.join(", ")
                    )
                };
                errors.push(BuildError::new(format!("{path}[{j}]"), msg));
            }
        }
    }
    // GET implies HEAD (see the module docs).
    if bits & 1 != 0 {
        bits |= 1 << 1;
    }
    bits
}

/// Compiled, ordered route rules for one scope (global, or one tenant's extension).
#[derive(Debug, Clone)]
pub struct RouteTable {
    rules: Box<[RouteRule]>,
    root: Node,
    case_sensitive: bool,
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable {
            rules: Box::new([]),
            root: Node {
                min_rule: u32::MAX,
                ..Node::default()
            },
            case_sensitive: true,
        }
    }
}

impl RouteTable {
    /// Compiles `specs` in order. `path` is the config field holding them (`routes`,
    /// `tenants[2].routes`); every problem is reported with its field path.
    ///
    /// `case_sensitive = false` makes literal segments match ignoring ASCII case (the forwarded
    /// path is not rewritten). That is only safe in the stricter direction: it stops `/ADMIN`
    /// from slipping past an `/admin` rule on a case-insensitive backend, but it also lets
    /// `/PUBLIC` match a `public: true` rule for `/public`, which is wrong if a case-sensitive
    /// backend serves something else at `/PUBLIC`. Use it only when the backend ignores case
    /// too, or when no two backend routes differ only by case.
    pub fn build<'a, I>(
        catalog: &mut Catalog,
        specs: I,
        path: &str,
        case_sensitive: bool,
    ) -> Result<Self, Vec<BuildError>>
    where
        I: IntoIterator<Item = RouteSpec<'a>>,
    {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut patterns = Vec::new();
        for (i, spec) in specs.into_iter().enumerate() {
            let at = format!("{path}[{i}]");
            let before = errors.len();
            let pattern = match parse_pattern(spec.path, case_sensitive) {
                Ok(p) => Some(p),
                Err(why) => {
                    errors.push(BuildError::new(
                        format!("{at}.path"),
                        format!("{:?} is not a valid pattern: {why}", spec.path),
                    ));
                    None
                }
            };
            let methods = match spec.methods {
                None => MethodSet::ALL.0,
                Some(m) => parse_methods(&format!("{at}.methods"), m, &mut errors),
            };
            let set = [
                spec.public,
                spec.authenticated,
                spec.permission.is_some(),
                spec.permissions.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            let access = if set != 1 {
                errors.push(BuildError::new(
                    at.clone(),
                    "exactly one of public, authenticated, permission, permissions must be set",
                ));
                None
            } else if spec.public {
                Some(Access::Public)
            } else if spec.authenticated {
                Some(Access::Authenticated)
            } else {
                let (list, field): (Vec<&str>, String) = match (spec.permission, spec.permissions) {
                    (Some(p), _) => (vec![p], format!("{at}.permission")),
                    (None, Some(ps)) => (
                        ps.iter().map(String::as_str).collect(),
                        format!("{at}.permissions"),
                    ),
                    (None, None) => (Vec::new(), at.clone()),
                };
                if list.is_empty() {
                    errors.push(BuildError::new(field.clone(), "must not be empty"));
                }
                let single = spec.permission.is_some();
                let mut perms = Vec::with_capacity(list.len());
                for (j, p) in list.iter().enumerate() {
                    match catalog.intern_required(p) {
                        Ok(r) => perms.push(r),
                        Err(e) => {
                            let f = if single {
                                field.clone()
                            } else {
                                format!("{field}[{j}]")
                            };
                            errors.push(BuildError::new(f, e.to_string()));
                        }
                    }
                }
                let sep = match spec.match_mode {
                    MatchMode::Any => "|",
                    MatchMode::All => "+",
                };
                Some(Access::Permission(Requirement {
                    perms: perms.into(),
                    mode: spec.match_mode,
                    label: list.join(sep).into(),
                }))
            };
            if errors.len() != before {
                continue;
            }
            if let (Some(pattern), Some(access)) = (pattern, access) {
                patterns.push((pattern, methods));
                rules.push(RouteRule {
                    index: i,
                    id: at.into(),
                    pattern: spec.path.into(),
                    methods: MethodSet(methods),
                    access,
                    enforce: spec.enforce,
                    allow_query_token: spec.allow_query_token,
                    max_body_bytes: spec.max_body_bytes,
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut table = RouteTable {
            rules: rules.into(),
            case_sensitive,
            ..RouteTable::default()
        };
        for (i, (segs, methods)) in patterns.into_iter().enumerate() {
            let Ok(rule) = u32::try_from(i) else {
                return Err(vec![BuildError::new(path, "too many rules")]);
            };
            table.insert(&segs, Terminal { rule, methods });
        }
        Ok(table)
    }

    fn insert(&mut self, segs: &[PatSeg], t: Terminal) {
        let mut node = &mut self.root;
        node.min_rule = node.min_rule.min(t.rule);
        for seg in segs {
            node = match seg {
                PatSeg::Rest => {
                    node.rest.push(t);
                    return;
                }
                PatSeg::Param => node.param.get_or_insert_with(|| {
                    Box::new(Node {
                        min_rule: u32::MAX,
                        ..Node::default()
                    })
                }),
                PatSeg::Literal(key) => {
                    let at = match node.literals.binary_search_by(|(k, _)| key_order(k, key)) {
                        Ok(at) => at,
                        Err(at) => {
                            node.literals.insert(
                                at,
                                (
                                    key.clone().into_boxed_slice(),
                                    Node {
                                        min_rule: u32::MAX,
                                        ..Node::default()
                                    },
                                ),
                            );
                            at
                        }
                    };
                    &mut node.literals[at].1
                }
            };
            node.min_rule = node.min_rule.min(t.rule);
        }
        node.exact.push(t);
    }

    /// The first rule (lowest index) matching `method` and `path`.
    pub fn match_route(&self, method: &Method, path: &CanonicalPath<'_>) -> Option<&RouteRule> {
        let p = path.path();
        let body = p.strip_prefix('/').unwrap_or(p);
        let body = body.strip_suffix('/').unwrap_or(body);
        let rest = if body.is_empty() { None } else { Some(body) };
        let mut best = u32::MAX;
        self.walk(&self.root, rest, MethodSet::bit(method), &mut best);
        self.rules.get(best as usize)
    }

    fn walk(&self, node: &Node, rest: Option<&str>, bit: u16, best: &mut u32) {
        if node.min_rule >= *best {
            return;
        }
        first_terminal(&node.rest, bit, best);
        let Some(rest) = rest else {
            first_terminal(&node.exact, bit, best);
            return;
        };
        let (seg, next) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if !node.literals.is_empty() {
            if let Some(child) = find_literal(&node.literals, seg.as_bytes(), self.case_sensitive) {
                self.walk(child, next, bit, best);
            }
        }
        if let Some(param) = &node.param {
            if !seg.is_empty() {
                self.walk(param, next, bit, best);
            }
        }
    }

    pub fn rules(&self) -> &[RouteRule] {
        &self.rules
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// Tenant rules take precedence: the tenant table is consulted first and, only when none of
/// its rules match, the global table.
pub fn match_layered<'t>(
    tenant: Option<&'t RouteTable>,
    global: &'t RouteTable,
    method: &Method,
    path: &CanonicalPath<'_>,
) -> Option<&'t RouteRule> {
    tenant
        .and_then(|t| t.match_route(method, path))
        .or_else(|| global.match_route(method, path))
}

#[inline]
fn first_terminal(list: &[Terminal], bit: u16, best: &mut u32) {
    // Sorted by rule index (inserted in order): the first hit is the lowest.
    for t in list {
        if t.rule >= *best {
            return;
        }
        if t.methods & bit != 0 {
            *best = t.rule;
            return;
        }
    }
}

/// Literal children are ordered by (length, bytes): most binary-search steps then compare
/// only lengths.
fn key_order(a: &[u8], b: &[u8]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn find_literal<'n>(lits: &'n [(Box<[u8]>, Node)], seg: &[u8], cs: bool) -> Option<&'n Node> {
    if cs && !seg.contains(&b'%') {
        return lits
            .binary_search_by(|(k, _)| key_order(k, seg))
            .ok()
            .map(|i| &lits[i].1);
    }
    let len = decoded(seg).count();
    lits.binary_search_by(|(k, _)| k.len().cmp(&len).then_with(|| cmp_decoded(k, seg, cs)))
        .ok()
        .map(|i| &lits[i].1)
}

/// Orders a stored key against the decoded (and, when case-insensitive, lowercased) segment of
/// the same length, consistently with byte order on keys.
fn cmp_decoded(key: &[u8], seg: &[u8], cs: bool) -> Ordering {
    let it = decoded(seg).map(|b| if cs { b } else { b.to_ascii_lowercase() });
    key.iter().copied().cmp(it)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::authz::path::{canonicalize, SlashPolicy};
    use crate::authz::permission::Scopes;
    use proptest::prelude::*;

    fn catalog() -> Catalog {
        Catalog::new(Scopes::new(&["own", "team", "tenant"]).unwrap())
    }

    fn perm<'a>(path: &'a str, p: &'static str) -> RouteSpec<'a> {
        RouteSpec {
            path,
            permission: Some(p),
            ..RouteSpec::default()
        }
    }

    fn auth(path: &str) -> RouteSpec<'_> {
        RouteSpec {
            path,
            authenticated: true,
            ..RouteSpec::default()
        }
    }

    fn public(path: &str) -> RouteSpec<'_> {
        RouteSpec {
            path,
            public: true,
            ..RouteSpec::default()
        }
    }

    fn table(specs: Vec<RouteSpec<'_>>, cs: bool) -> RouteTable {
        RouteTable::build(&mut catalog(), specs, "routes", cs).unwrap()
    }

    fn hit(t: &RouteTable, method: Method, path: &str) -> Option<usize> {
        let c = canonicalize(path.as_bytes(), SlashPolicy::Merge).unwrap();
        t.match_route(&method, &c).map(|r| r.index())
    }

    #[test]
    fn first_match_wins_across_branches() {
        let get = vec!["GET".to_string()];
        let t = table(
            vec![
                public("/health"),
                perm("/api/v1/users/{id}", "users.read.own"),
                perm("/api/v1/users/me", "users.read.team"),
                auth("/api/v1/{resource}/{id}/sub"),
                perm("/api/v1/users/{id}/sub", "users.write.own"),
                RouteSpec {
                    methods: Some(&get),
                    ..perm("/api/v1/reports/**", "reports.read.own")
                },
                perm("/api/**", "api.any.own"),
                auth("/"),
            ],
            true,
        );
        let cases: &[(Method, &str, Option<usize>)] = &[
            (Method::GET, "/health", Some(0)),
            (Method::GET, "/health/", Some(0)),
            (Method::GET, "/healthz", None),
            // `{id}` (rule 1) comes before the literal `me` (rule 2): rule 1 wins.
            (Method::GET, "/api/v1/users/me", Some(1)),
            (Method::GET, "/api/v1/users/42", Some(1)),
            // Both `{resource}` (3) and the literal `users` branch (4) match: 3 wins.
            (Method::GET, "/api/v1/users/42/sub", Some(3)),
            (Method::GET, "/api/v1/calls/7/sub", Some(3)),
            (Method::GET, "/api/v1/reports", Some(5)),
            (Method::GET, "/api/v1/reports/", Some(5)),
            (Method::GET, "/api/v1/reports/a/b/c", Some(5)),
            (Method::HEAD, "/api/v1/reports/x", Some(5)),
            (Method::POST, "/api/v1/reports/x", Some(6)),
            (Method::GET, "/api/v1/users/42/other", Some(6)),
            (Method::GET, "/api", Some(6)),
            (Method::GET, "/", Some(7)),
            (Method::GET, "//", Some(7)),
            (Method::GET, "/other", None),
            (Method::GET, "/api/v1/users/42?x=/health", Some(1)),
        ];
        for (m, p, want) in cases {
            assert_eq!(hit(&t, m.clone(), p), *want, "{m} {p}");
        }
        let r = &t.rules()[6];
        assert_eq!(
            (r.id(), r.pattern(), r.index()),
            ("routes[6]", "/api/**", 6)
        );
    }

    #[test]
    fn methods_filter_and_fall_through() {
        let get = vec!["GET".to_string()];
        let write = vec!["POST".to_string(), "PUT".to_string(), "PATCH".to_string()];
        let t = table(
            vec![
                RouteSpec {
                    methods: Some(&get),
                    ..perm("/items/{id}", "items.read.own")
                },
                RouteSpec {
                    methods: Some(&write),
                    ..perm("/items/{id}", "items.write.own")
                },
                auth("/items/{id}"),
            ],
            true,
        );
        let ext = Method::from_bytes(b"PROPFIND").unwrap();
        for (m, want) in [
            (Method::GET, 0),
            (Method::HEAD, 0),
            (Method::POST, 1),
            (Method::PUT, 1),
            (Method::PATCH, 1),
            (Method::DELETE, 2),
            (Method::OPTIONS, 2),
            (ext, 2),
        ] {
            assert_eq!(hit(&t, m.clone(), "/items/9"), Some(want), "{m}");
        }
        assert!(!t.rules()[0].methods().is_all());
        assert!(t.rules()[2].methods().is_all());
    }

    #[test]
    fn params_need_a_non_empty_segment_and_rest_matches_zero() {
        let t = table(
            vec![auth("/a/{x}"), public("/b/**"), perm("/{x}/{y}", "p.q.own")],
            true,
        );
        assert_eq!(hit(&t, Method::GET, "/a"), None);
        assert_eq!(hit(&t, Method::GET, "/a/"), None);
        assert_eq!(hit(&t, Method::GET, "/a/1"), Some(0));
        assert_eq!(hit(&t, Method::GET, "/a/1/2"), None);
        assert_eq!(hit(&t, Method::GET, "/b"), Some(1));
        assert_eq!(hit(&t, Method::GET, "/b/c/d/e/f/g"), Some(1));
        assert_eq!(hit(&t, Method::GET, "/bb"), None);
        assert_eq!(hit(&t, Method::GET, "/c/d"), Some(2));
        assert_eq!(hit(&t, Method::GET, "/a/1"), Some(0));
    }

    #[test]
    fn literals_match_by_decoded_value() {
        let t = table(
            vec![perm("/items:batch", "items.write.own"), auth("/**")],
            true,
        );
        assert_eq!(hit(&t, Method::POST, "/items:batch"), Some(0));
        assert_eq!(hit(&t, Method::POST, "/items%3Abatch"), Some(0));
        assert_eq!(hit(&t, Method::POST, "/items%3abatch"), Some(0));
        assert_eq!(hit(&t, Method::POST, "/%69tems:batch"), Some(0));
        assert_eq!(hit(&t, Method::POST, "/items:batcH"), Some(1));
        let t = table(vec![perm("/a%20b", "x.y.own")], true);
        assert_eq!(hit(&t, Method::GET, "/a%20b"), Some(0));
        assert_eq!(hit(&t, Method::GET, "/a%20c"), None);
    }

    #[test]
    fn case_insensitive_matching() {
        let t = table(
            vec![perm("/Admin/{id}", "admin.read.own"), public("/pub/X")],
            false,
        );
        for p in ["/admin/1", "/ADMIN/1", "/aDmIn/1", "/%41dmin/1"] {
            assert_eq!(hit(&t, Method::GET, p), Some(0), "{p}");
        }
        assert_eq!(hit(&t, Method::GET, "/PUB/x"), Some(1));
        let cs = table(vec![perm("/Admin/{id}", "admin.read.own")], true);
        assert_eq!(hit(&cs, Method::GET, "/Admin/1"), Some(0));
        assert_eq!(hit(&cs, Method::GET, "/admin/1"), None);
    }

    #[test]
    fn tenant_rules_take_precedence() {
        let mut c = catalog();
        let global = RouteTable::build(
            &mut c,
            vec![perm("/api/reports/{id}", "reports.read.own"), auth("/**")],
            "routes",
            true,
        )
        .unwrap();
        let tenant = RouteTable::build(
            &mut c,
            vec![perm("/api/reports/**", "reports.read.tenant")],
            "tenants[1].routes",
            true,
        )
        .unwrap();
        let p = canonicalize(b"/api/reports/7", SlashPolicy::Merge).unwrap();
        let r = match_layered(Some(&tenant), &global, &Method::GET, &p).unwrap();
        assert_eq!(r.id(), "tenants[1].routes[0]");
        let r = match_layered(None, &global, &Method::GET, &p).unwrap();
        assert_eq!(r.id(), "routes[0]");
        let other = canonicalize(b"/x", SlashPolicy::Merge).unwrap();
        let r = match_layered(Some(&tenant), &global, &Method::GET, &other).unwrap();
        assert_eq!(r.id(), "routes[1]");
        let empty = RouteTable::default();
        assert!(empty.is_empty());
        assert!(match_layered(Some(&empty), &empty, &Method::GET, &other).is_none());
    }

    #[test]
    fn requirement_any_all_and_scope() {
        let mut c = catalog();
        let any = vec!["users.read.team".to_string(), "calls.read.own".to_string()];
        let t = RouteTable::build(
            &mut c,
            vec![
                RouteSpec {
                    permissions: Some(&any),
                    ..RouteSpec::default().with_path("/any")
                },
                RouteSpec {
                    permissions: Some(&any),
                    match_mode: MatchMode::All,
                    ..RouteSpec::default().with_path("/all")
                },
                perm("/one", "users.read.own"),
            ],
            "routes",
            true,
        )
        .unwrap();
        let req = |i: usize| match t.rules()[i].access() {
            Access::Permission(r) => r.clone(),
            other => panic!("{other:?}"),
        };
        let (any_r, all_r, one_r) = (req(0), req(1), req(2));
        assert_eq!(any_r.label(), "users.read.team|calls.read.own");
        assert_eq!(all_r.label(), "users.read.team+calls.read.own");
        assert_eq!(one_r.label(), "users.read.own");
        assert_eq!(all_r.mode(), MatchMode::All);
        assert_eq!(any_r.permissions().len(), 2);

        let set =
            |gs: &[&str]| PermissionSet::from_grants(&c, gs.iter().map(|g| c.grant(g).unwrap()));
        let sc = c.scopes();
        let calls_only = set(&["calls.read.tenant"]);
        assert!(any_r.allows(&calls_only));
        assert!(!all_r.allows(&calls_only));
        assert_eq!(any_r.authorize(&calls_only), sc.get("tenant"));
        assert_eq!(all_r.authorize(&calls_only), None);
        let both = set(&["calls.read.own", "users.*.tenant"]);
        assert_eq!(all_r.authorize(&both), sc.get("tenant"));
        assert_eq!(one_r.authorize(&both), sc.get("tenant"));
        assert_eq!(one_r.authorize(&set(&["users.read.own"])), sc.get("own"));
        assert_eq!(one_r.authorize(&set(&[])), None);
    }

    impl<'a> RouteSpec<'a> {
        fn with_path(self, path: &'a str) -> Self {
            RouteSpec { path, ..self }
        }
    }

    #[test]
    fn build_errors_name_fields() {
        let lower = vec!["get".to_string()];
        let unknown = vec!["GET".to_string(), "FETCH".to_string()];
        let empty: Vec<String> = vec![];
        let bad_list = vec!["a.b.own".to_string(), "a.*.own".to_string()];
        let specs = vec![
            perm("/ok/{id}", "x.read.own"),
            RouteSpec {
                public: true,
                authenticated: true,
                ..RouteSpec::default().with_path("/x")
            },
            RouteSpec::default().with_path("/y"),
            perm("/api/{id", "x.read.own"),
            RouteSpec {
                methods: Some(&lower),
                ..auth("/m")
            },
            RouteSpec {
                methods: Some(&unknown),
                ..auth("/m")
            },
            RouteSpec {
                methods: Some(&empty),
                ..auth("/m")
            },
            perm("/p", "x.read"),
            RouteSpec {
                permissions: Some(&bad_list),
                ..RouteSpec::default().with_path("/q")
            },
            RouteSpec {
                permissions: Some(&empty),
                ..RouteSpec::default().with_path("/r")
            },
            perm("/s", "x.read.*"),
        ];
        let errs = RouteTable::build(&mut catalog(), specs, "routes", true).unwrap_err();
        let got: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        let want_prefixes = [
            "routes[1]: exactly one of public, authenticated, permission, permissions must be set",
            "routes[2]: exactly one of public, authenticated, permission, permissions must be set",
            "routes[3].path: \"/api/{id\" is not a valid pattern: unclosed '{'",
            "routes[4].methods[0]: method \"get\" must be uppercase (GET)",
            "routes[5].methods[1]: unknown method \"FETCH\"",
            "routes[6].methods: must not be empty",
            "routes[7].permission: permission \"x.read\" must have 3",
            "routes[8].permissions[1]: permission \"a.*.own\": a required permission must be concrete",
            "routes[9].permissions: must not be empty",
            "routes[10].permission: permission \"x.read.*\": a required permission must be concrete",
        ];
        assert_eq!(got.len(), want_prefixes.len(), "{got:#?}");
        for (g, w) in got.iter().zip(want_prefixes) {
            assert!(g.starts_with(w), "got {g:?}\nwant prefix {w:?}");
        }
    }

    #[test]
    fn pattern_errors() {
        let cases = [
            ("api", "must start with '/'"),
            ("", "must start with '/'"),
            ("/api/", "use \"/api/**\""),
            ("/a//b", "empty segment"),
            ("/**/a", "'**' is only allowed as the last segment"),
            ("/a/{}", "invalid parameter name \"\""),
            ("/a/{1x}", "invalid parameter name"),
            ("/a/{id}x", "must be a whole segment"),
            ("/a/x{id}", "only allowed around a whole segment"),
            ("/a/{id}/b/{id}", "duplicate parameter {id}"),
            ("/a/*", "'*' is only allowed as a final '**'"),
            ("/a/*.json", "'*' is only allowed"),
            ("/a/../b", "segment \"..\": '.' or '..' segment"),
            ("/a/%2e", "'.' or '..' segment"),
            ("/a%2Fb", "encoded '/'"),
            ("/a;b", "path parameter"),
            ("/a b", "raw space"),
            ("/a/%zz", "malformed percent-escape"),
        ];
        for (p, want) in cases {
            let errs =
                RouteTable::build(&mut catalog(), vec![auth(p)], "routes", true).unwrap_err();
            assert_eq!(errs.len(), 1, "{p}");
            assert_eq!(errs[0].path, "routes[0].path");
            assert!(errs[0].message.contains(want), "{p}: {}", errs[0].message);
        }
        for p in ["/", "/**", "/a/{id}/**", "/a:b/{_x1}", "/%7Bx%7D", "/~user"] {
            assert!(
                RouteTable::build(&mut catalog(), vec![auth(p)], "routes", true).is_ok(),
                "{p}"
            );
        }
    }

    /// Reference matcher: linear scan, straight from the rule definitions.
    fn naive(rules: &[(String, u16)], bit: u16, path: &str, cs: bool) -> Option<usize> {
        let body = path.strip_prefix('/').unwrap();
        let body = body.strip_suffix('/').unwrap_or(body);
        let segs: Vec<&str> = if body.is_empty() {
            vec![]
        } else {
            body.split('/').collect()
        };
        rules.iter().position(|(pat, m)| {
            if m & bit == 0 {
                return false;
            }
            let pb = pat.strip_prefix('/').unwrap();
            let ps: Vec<&str> = if pb.is_empty() {
                vec![]
            } else {
                pb.split('/').collect()
            };
            let mut i = 0;
            for p in &ps {
                if *p == "**" {
                    return true;
                }
                let Some(s) = segs.get(i) else { return false };
                let same = if cs {
                    p == s
                } else {
                    p.eq_ignore_ascii_case(s)
                };
                if !(p.starts_with('{') || same) {
                    return false;
                }
                i += 1;
            }
            i == segs.len()
        })
    }

    fn pat_seg() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec!["a", "b", "ab", "bb", "ccc", "Ab", "{p}", "{q}"])
    }

    proptest! {
        #[test]
        fn trie_agrees_with_linear_scan(
            pats in proptest::collection::vec(
                (proptest::collection::vec(pat_seg(), 0..4), any::<bool>(), 0u8..3), 1..12),
            paths in proptest::collection::vec(
                proptest::collection::vec(proptest::sample::select(
                    vec!["a", "b", "ab", "AB", "bb", "ccc", "cCc", "d", "%61"]), 0..5), 1..8),
            get in any::<bool>(),
            cs in any::<bool>(),
        ) {
            let method_lists = [vec!["GET".to_string()], vec!["POST".to_string()]];
            let mut specs = Vec::new();
            let mut model = Vec::new();
            let texts: Vec<String> = pats.iter().map(|(segs, rest, _)| {
                // Make parameter names unique within a pattern.
                let mut parts: Vec<String> = segs.iter().enumerate()
                    .map(|(i, s)| if s.starts_with('{') { format!("{{p{i}}}") } else { s.to_string() })
                    .collect();
                if *rest { parts.push("**".into()); }
                format!("/{}", parts.join("/"))
            }).collect();
            for ((_, _, m), text) in pats.iter().zip(&texts) {
                let (methods, bits) = match m {
                    0 => (None, MethodSet::ALL.0),
                    1 => (Some(method_lists[0].as_slice()), 0b11),
                    _ => (Some(method_lists[1].as_slice()), 0b100),
                };
                specs.push(RouteSpec { methods, ..auth(text) });
                model.push((text.clone(), bits));
            }
            let t = table(specs, cs);
            let (method, bit) = if get { (Method::GET, 1) } else { (Method::POST, 4) };
            for p in paths {
                let path = format!("/{}", p.join("/"));
                let c = canonicalize(path.as_bytes(), SlashPolicy::Merge).unwrap();
                let got = t.match_route(&method, &c).map(|r| r.index());
                prop_assert_eq!(got, naive(&model, bit, c.path(), cs), "{} {:?}", path, texts);
            }
        }
    }
}
