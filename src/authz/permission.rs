//! The `resource.action.scope` permission model.
//!
//! Names are interned once at config load into a [`Catalog`], so that the per-request check is
//! a few integer-keyed lookups. Two kinds of permission exist:
//!
//! * [`RequiredPermission`]: what a route demands. Always concrete (no `*`): a route that
//!   accepts "any scope" requires the *narrowest* scope, which every grant of a wider scope
//!   implies.
//! * [`Grant`]: what a user holds. May use `*` in any segment; scope `*` means the widest scope.
//!   A grant at a wider scope implies every narrower scope for the same resource and action.
//!
//! Grants loaded at run time (Redis, token claims) may name resources or actions no route or
//! role mentions. They cannot satisfy any required permission (every required name is in the
//! catalog), so they are kept as "unknown" rather than growing the shared catalog per request.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::BuildError;

/// Longest permission string accepted. Run-time grants come from Redis and tokens; the cap keeps
/// a garbage value from being copied around in errors and logs.
pub const MAX_PERMISSION_LEN: usize = 200;

/// Most scopes a configuration may declare (ranks are stored in a `u8`).
pub const MAX_SCOPES: usize = 32;

/// Which of the three segments a message is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    Resource,
    Action,
    Scope,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Resource => "resource",
            Part::Action => "action",
            Part::Scope => "scope",
        })
    }
}

/// Why a permission string was refused. Messages quote the input with `{:?}` so control
/// characters from untrusted sources are escaped in logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PermissionError {
    #[error("permission is empty")]
    Empty,
    #[error("permission {prefix:?}... is too long ({len} bytes, at most {MAX_PERMISSION_LEN})")]
    TooLong { prefix: String, len: usize },
    #[error(
        "permission {input:?} must have 3 dot-separated segments resource.action.scope, found {found}"
    )]
    SegmentCount { input: String, found: usize },
    #[error("permission {input:?}: the {part} segment is empty")]
    EmptySegment { input: String, part: Part },
    #[error(
        "permission {input:?}: the {part} segment {segment:?} may contain only a-z, 0-9, '_' and '-', or be exactly '*'"
    )]
    InvalidSegment {
        input: String,
        part: Part,
        segment: String,
    },
    #[error("permission {input:?}: unknown scope {scope:?} (configured scopes: {known})")]
    UnknownScope {
        input: String,
        scope: String,
        known: String,
    },
    #[error(
        "permission {input:?}: a required permission must be concrete, '*' is not allowed in the {part} segment (to accept any scope, require the narrowest one)"
    )]
    WildcardInRequired { input: String, part: Part },
    #[error("permission {input:?}: {part} {name:?} is not used by any route or role")]
    NotInCatalog {
        input: String,
        part: Part,
        name: String,
    },
}

impl PermissionError {
    /// Stable snake_case code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            PermissionError::Empty => "empty",
            PermissionError::TooLong { .. } => "too_long",
            PermissionError::SegmentCount { .. } => "segment_count",
            PermissionError::EmptySegment { .. } => "empty_segment",
            PermissionError::InvalidSegment { .. } => "invalid_segment",
            PermissionError::UnknownScope { .. } => "unknown_scope",
            PermissionError::WildcardInRequired { .. } => "wildcard_in_required",
            PermissionError::NotInCatalog { .. } => "not_in_catalog",
        }
    }
}

/// One syntactically valid segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment<'a> {
    Any,
    Name(&'a str),
}

/// A syntactically valid permission, not yet resolved against scopes or the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedPermission<'a> {
    pub resource: Segment<'a>,
    pub action: Segment<'a>,
    pub scope: Segment<'a>,
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// Checks the grammar only: three segments, each `[a-z0-9_-]+` or exactly `*`.
pub fn parse_permission(input: &str) -> Result<ParsedPermission<'_>, PermissionError> {
    if input.is_empty() {
        return Err(PermissionError::Empty);
    }
    if input.len() > MAX_PERMISSION_LEN {
        let mut cut = 40;
        while !input.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(PermissionError::TooLong {
            prefix: input[..cut].to_owned(),
            len: input.len(),
        });
    }
    let mut it = input.split('.');
    let parts = [
        (Part::Resource, it.next()),
        (Part::Action, it.next()),
        (Part::Scope, it.next()),
    ];
    let extra = it.count();
    let found = parts.iter().filter(|(_, s)| s.is_some()).count() + extra;
    if found != 3 {
        return Err(PermissionError::SegmentCount {
            input: input.to_owned(),
            found,
        });
    }
    let mut segs = [Segment::Any; 3];
    for (slot, (part, seg)) in segs.iter_mut().zip(parts) {
        let seg = seg.unwrap_or_default();
        *slot = if seg == "*" {
            Segment::Any
        } else if seg.is_empty() {
            return Err(PermissionError::EmptySegment {
                input: input.to_owned(),
                part,
            });
        } else if valid_name(seg) {
            Segment::Name(seg)
        } else {
            return Err(PermissionError::InvalidSegment {
                input: input.to_owned(),
                part,
                segment: seg.to_owned(),
            });
        };
    }
    Ok(ParsedPermission {
        resource: segs[0],
        action: segs[1],
        scope: segs[2],
    })
}

/// A scope's rank in the configured order: higher is wider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScopeId(u8);

impl ScopeId {
    pub fn rank(self) -> u8 {
        self.0
    }
}

/// The configured scopes, narrowest first (`[own, team, tenant]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scopes {
    names: Box<[Box<str>]>,
    /// The names as header values (`X-Auth-Scope` is forwarded on every allowed request).
    values: Box<[http::HeaderValue]>,
}

impl Scopes {
    /// Errors name `scopes[i]`; all problems are reported.
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, Vec<BuildError>> {
        let mut errors = Vec::new();
        if names.is_empty() {
            errors.push(BuildError::new("scopes", "at least one scope is required"));
        }
        if names.len() > MAX_SCOPES {
            errors.push(BuildError::new(
                "scopes",
                format!("at most {MAX_SCOPES} scopes are supported"),
            ));
        }
        for (i, n) in names.iter().enumerate() {
            let n = n.as_ref();
            if !valid_name(n) {
                errors.push(BuildError::new(
                    format!("scopes[{i}]"),
                    format!(
                        "{n:?} is not a valid scope name (a-z, 0-9, '_' and '-'; '*' is reserved)"
                    ),
                ));
            } else if names[..i].iter().any(|m| m.as_ref() == n) {
                errors.push(BuildError::new(
                    format!("scopes[{i}]"),
                    format!("duplicate scope {n:?}"),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Scopes {
            names: names.iter().map(|n| n.as_ref().into()).collect(),
            // Validated above: a-z, 0-9, '_' and '-' are always valid header values.
            values: names
                .iter()
                .map(|n| {
                    http::HeaderValue::from_str(n.as_ref())
                        .unwrap_or(http::HeaderValue::from_static("?"))
                })
                .collect(),
        })
    }

    pub fn get(&self, name: &str) -> Option<ScopeId> {
        self.names
            .iter()
            .position(|n| &**n == name)
            .and_then(|i| u8::try_from(i).ok())
            .map(ScopeId)
    }

    /// The scope's name; ids come from this list so the lookup cannot miss in practice, but a
    /// foreign id yields `"?"` rather than a panic.
    pub fn name(&self, id: ScopeId) -> &str {
        self.names.get(usize::from(id.0)).map_or("?", |n| n)
    }

    /// [`Self::name`] as a header value; `None` for a foreign id.
    pub fn value(&self, id: ScopeId) -> Option<&http::HeaderValue> {
        self.values.get(usize::from(id.0))
    }

    pub fn narrowest(&self) -> ScopeId {
        ScopeId(0)
    }

    pub fn widest(&self) -> ScopeId {
        ScopeId(u8::try_from(self.names.len().saturating_sub(1)).unwrap_or(u8::MAX))
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Narrowest first.
    pub fn iter(&self) -> impl Iterator<Item = (ScopeId, &str)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (ScopeId(u8::try_from(i).unwrap_or(u8::MAX)), &**n))
    }

    fn known(&self) -> String {
        self.names.join(", ")
    }

    fn resolve(&self, input: &str, seg: Segment<'_>) -> Result<ScopeId, PermissionError> {
        match seg {
            Segment::Any => Ok(self.widest()),
            Segment::Name(n) => self.get(n).ok_or_else(|| PermissionError::UnknownScope {
                input: input.to_owned(),
                scope: n.to_owned(),
                known: self.known(),
            }),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActionId(u32);

/// A concrete permission a route requires. Only a [`Catalog`] makes these, so every id is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequiredPermission {
    resource: ResourceId,
    action: ActionId,
    scope: ScopeId,
}

impl RequiredPermission {
    pub fn resource(&self) -> ResourceId {
        self.resource
    }
    pub fn action(&self) -> ActionId {
        self.action
    }
    pub fn scope(&self) -> ScopeId {
        self.scope
    }
}

/// One grant segment after interning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Term {
    Any,
    Id(u32),
    /// Named something the catalog does not know: can never match.
    Unknown,
}

/// A permission a user holds (wildcards allowed), resolved against a [`Catalog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant {
    resource: Term,
    action: Term,
    scope: ScopeId,
}

impl Grant {
    /// True when a segment named something outside the catalog: valid, but it matches nothing.
    pub fn is_inert(&self) -> bool {
        self.resource == Term::Unknown || self.action == Term::Unknown
    }

    pub fn scope(&self) -> ScopeId {
        self.scope
    }
}

/// Append-only string -> id table. Bounded by the configuration (it never grows at run time).
#[derive(Debug, Clone, Default)]
struct Interner {
    ids: HashMap<Box<str>, u32, ahash::RandomState>,
    names: Vec<Box<str>>,
}

impl Interner {
    fn intern(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        // Config-bounded: a catalog with 4 billion names is not a configuration we accept.
        let id = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.into());
        self.ids.insert(name.into(), id);
        id
    }

    fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    fn name(&self, id: u32) -> &str {
        self.names.get(id as usize).map_or("?", |n| n)
    }
}

static NEXT_EPOCH: AtomicU64 = AtomicU64::new(1);

/// Scopes plus every resource and action named in the configuration (routes and roles).
///
/// Build it mutably while loading config ([`Catalog::intern_required`], [`Catalog::intern_grant`],
/// or indirectly through `RoleMap::build` / `RouteTable::build`), then share it read-only.
/// Ids are only meaningful with the catalog that issued them: a config reload builds a new
/// catalog with a new [`Catalog::epoch`], and compiled [`PermissionSet`]s from the old one must
/// be dropped (they carry the epoch so a cache can check).
#[derive(Debug, Clone)]
pub struct Catalog {
    scopes: Scopes,
    resources: Interner,
    actions: Interner,
    epoch: u64,
}

impl Catalog {
    pub fn new(scopes: Scopes) -> Self {
        Catalog {
            scopes,
            resources: Interner::default(),
            actions: Interner::default(),
            epoch: NEXT_EPOCH.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn scopes(&self) -> &Scopes {
        &self.scopes
    }

    /// Unique per catalog instance in this process.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A hash of what the ids mean: the scopes and every interned resource and action, in id
    /// order. Two catalogs with one fingerprint give every grant string the same compiled
    /// form, so sets compiled with either are interchangeable (a reload that changed nothing
    /// here need not drop them). Deterministic within a build, not a security boundary.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        self.scopes.names.hash(&mut h);
        self.resources.names.hash(&mut h);
        self.actions.names.hash(&mut h);
        h.finish()
    }

    /// Config load: a route's permission. Must be concrete.
    pub fn intern_required(&mut self, input: &str) -> Result<RequiredPermission, PermissionError> {
        let (r, a, scope) = self.required_parts(input)?;
        Ok(RequiredPermission {
            resource: ResourceId(self.resources.intern(r)),
            action: ActionId(self.actions.intern(a)),
            scope,
        })
    }

    /// Config load: a role's grant. Interns its names.
    pub fn intern_grant(&mut self, input: &str) -> Result<Grant, PermissionError> {
        let p = parse_permission(input)?;
        let scope = self.scopes.resolve(input, p.scope)?;
        let resource = match p.resource {
            Segment::Any => Term::Any,
            Segment::Name(n) => Term::Id(self.resources.intern(n)),
        };
        let action = match p.action {
            Segment::Any => Term::Any,
            Segment::Name(n) => Term::Id(self.actions.intern(n)),
        };
        Ok(Grant {
            resource,
            action,
            scope,
        })
    }

    /// Run time: a grant from Redis or a token. Names outside the catalog become inert.
    pub fn grant(&self, input: &str) -> Result<Grant, PermissionError> {
        let p = parse_permission(input)?;
        let scope = self.scopes.resolve(input, p.scope)?;
        let term = |seg: Segment<'_>, table: &Interner| match seg {
            Segment::Any => Term::Any,
            Segment::Name(n) => table.get(n).map_or(Term::Unknown, Term::Id),
        };
        Ok(Grant {
            resource: term(p.resource, &self.resources),
            action: term(p.action, &self.actions),
            scope,
        })
    }

    /// Lookup without interning (admin "check" endpoints, tests).
    pub fn required(&self, input: &str) -> Result<RequiredPermission, PermissionError> {
        let (r, a, scope) = self.required_parts(input)?;
        let missing = |part, name: &str| PermissionError::NotInCatalog {
            input: input.to_owned(),
            part,
            name: name.to_owned(),
        };
        Ok(RequiredPermission {
            resource: ResourceId(
                self.resources
                    .get(r)
                    .ok_or_else(|| missing(Part::Resource, r))?,
            ),
            action: ActionId(
                self.actions
                    .get(a)
                    .ok_or_else(|| missing(Part::Action, a))?,
            ),
            scope,
        })
    }

    /// A required permission's resource and action names and its resolved scope: parsed, and
    /// refused unless every part is concrete (a route asks for one thing; a wildcard is a
    /// grant's).
    fn required_parts<'i>(
        &self,
        input: &'i str,
    ) -> Result<(&'i str, &'i str, ScopeId), PermissionError> {
        let p = parse_permission(input)?;
        let wild = |part| PermissionError::WildcardInRequired {
            input: input.to_owned(),
            part,
        };
        let Segment::Name(r) = p.resource else {
            return Err(wild(Part::Resource));
        };
        let Segment::Name(a) = p.action else {
            return Err(wild(Part::Action));
        };
        if p.scope == Segment::Any {
            return Err(wild(Part::Scope));
        }
        Ok((r, a, self.scopes.resolve(input, p.scope)?))
    }

    pub fn resource_id(&self, name: &str) -> Option<ResourceId> {
        self.resources.get(name).map(ResourceId)
    }

    pub fn action_id(&self, name: &str) -> Option<ActionId> {
        self.actions.get(name).map(ActionId)
    }

    pub fn resource_name(&self, id: ResourceId) -> &str {
        self.resources.name(id.0)
    }

    pub fn action_name(&self, id: ActionId) -> &str {
        self.actions.name(id.0)
    }

    /// `resource.action.scope` for logs and 403 bodies.
    pub fn describe(&self, p: RequiredPermission) -> String {
        format!(
            "{}.{}.{}",
            self.resource_name(p.resource),
            self.action_name(p.action),
            self.scopes.name(p.scope)
        )
    }

    pub fn resource_count(&self) -> usize {
        self.resources.names.len()
    }

    pub fn action_count(&self) -> usize {
        self.actions.names.len()
    }
}

/// Keys are catalog ids. Measured on 1 000 entries: ahash ~13 ns per lookup, a multiplicative
/// identity hasher ~15 ns, a sorted `Vec` with binary search ~38 ns.
type IdMap<K> = HashMap<K, u8, ahash::RandomState>;

fn key(r: u32, a: u32) -> u64 {
    (u64::from(r) << 32) | u64::from(a)
}

/// Collects grants; [`PermissionSetBuilder::build`] folds wildcards into the concrete entries.
#[derive(Debug, Clone)]
pub struct PermissionSetBuilder {
    exact: IdMap<u64>,
    by_resource: IdMap<u32>,
    by_action: IdMap<u32>,
    any: Option<u8>,
    inert: u32,
    epoch: u64,
}

fn raise<K: std::hash::Hash + Eq>(map: &mut IdMap<K>, k: K, rank: u8) {
    let e = map.entry(k).or_insert(rank);
    *e = (*e).max(rank);
}

impl PermissionSetBuilder {
    pub fn new(catalog: &Catalog) -> Self {
        PermissionSetBuilder {
            exact: IdMap::default(),
            by_resource: IdMap::default(),
            by_action: IdMap::default(),
            any: None,
            inert: 0,
            epoch: catalog.epoch,
        }
    }

    pub fn insert(&mut self, g: Grant) {
        let rank = g.scope.0;
        match (g.resource, g.action) {
            (Term::Unknown, _) | (_, Term::Unknown) => self.inert = self.inert.saturating_add(1),
            (Term::Id(r), Term::Id(a)) => raise(&mut self.exact, key(r, a), rank),
            (Term::Id(r), Term::Any) => raise(&mut self.by_resource, r, rank),
            (Term::Any, Term::Id(a)) => raise(&mut self.by_action, a, rank),
            (Term::Any, Term::Any) => self.any = Some(self.any.map_or(rank, |v| v.max(rank))),
        }
    }

    pub fn build(mut self) -> PermissionSet {
        // Fold so that an exact hit alone answers, and a miss needs only the wildcard slots.
        if let Some(any) = self.any {
            for v in self
                .by_resource
                .values_mut()
                .chain(self.by_action.values_mut())
            {
                *v = (*v).max(any);
            }
        }
        for (k, v) in self.exact.iter_mut() {
            let r = (k >> 32) as u32;
            let a = (k & 0xFFFF_FFFF) as u32;
            let mut best = *v;
            if let Some(&x) = self.by_resource.get(&r) {
                best = best.max(x);
            }
            if let Some(&x) = self.by_action.get(&a) {
                best = best.max(x);
            }
            if let Some(x) = self.any {
                best = best.max(x);
            }
            *v = best;
        }
        self.exact.shrink_to_fit();
        self.by_resource.shrink_to_fit();
        self.by_action.shrink_to_fit();
        PermissionSet {
            exact: self.exact,
            by_resource: self.by_resource,
            by_action: self.by_action,
            any: self.any,
            inert: self.inert,
            epoch: self.epoch,
        }
    }
}

/// One user's effective permissions, compiled once (on a permission-cache miss) and queried
/// per request without allocation.
///
/// Layout: the widest scope rank per concrete `(resource, action)` with all applicable
/// wildcards already folded in, plus the `(resource, *)`, `(*, action)` and `(*, *)` slots for
/// pairs the user holds only through wildcards. A check is one hash lookup on a hit and at most
/// three on a miss.
#[derive(Debug, Clone)]
pub struct PermissionSet {
    exact: IdMap<u64>,
    by_resource: IdMap<u32>,
    by_action: IdMap<u32>,
    any: Option<u8>,
    inert: u32,
    epoch: u64,
}

impl PermissionSet {
    pub fn from_grants<I: IntoIterator<Item = Grant>>(catalog: &Catalog, grants: I) -> Self {
        let mut b = PermissionSetBuilder::new(catalog);
        for g in grants {
            b.insert(g);
        }
        b.build()
    }

    /// Holds nothing; useful for anonymous requests.
    pub fn empty(catalog: &Catalog) -> Self {
        PermissionSetBuilder::new(catalog).build()
    }

    /// Widest scope rank held for the pair, from any matching grant.
    #[inline]
    fn rank(&self, r: u32, a: u32) -> Option<u8> {
        if !self.exact.is_empty() {
            if let Some(&v) = self.exact.get(&key(r, a)) {
                return Some(v);
            }
        }
        let mut best = self.any;
        if !self.by_resource.is_empty() {
            if let Some(&v) = self.by_resource.get(&r) {
                best = Some(best.map_or(v, |b| b.max(v)));
            }
        }
        if !self.by_action.is_empty() {
            if let Some(&v) = self.by_action.get(&a) {
                best = Some(best.map_or(v, |b| b.max(v)));
            }
        }
        best
    }

    #[inline]
    pub fn allows(&self, p: &RequiredPermission) -> bool {
        self.rank(p.resource.0, p.action.0)
            .is_some_and(|v| v >= p.scope.0)
    }

    /// The widest scope the user holds for `resource.action` (forwarded as `X-Auth-Scope`).
    #[inline]
    pub fn widest_scope(&self, resource: ResourceId, action: ActionId) -> Option<ScopeId> {
        self.rank(resource.0, action.0).map(ScopeId)
    }

    /// The epoch of the catalog whose ids this set uses.
    pub fn catalog_epoch(&self) -> u64 {
        self.epoch
    }

    /// Valid grants that named resources/actions outside the catalog (they match nothing).
    pub fn inert_grants(&self) -> u32 {
        self.inert
    }

    /// Number of stored entries (concrete pairs plus wildcard slots).
    pub fn len(&self) -> usize {
        self.exact.len()
            + self.by_resource.len()
            + self.by_action.len()
            + usize::from(self.any.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rough heap footprint, for a cache weigher.
    pub fn approx_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.exact.capacity() * (8 + 1 + 1)
            + (self.by_resource.capacity() + self.by_action.capacity()) * (4 + 1 + 1)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scopes() -> Scopes {
        Scopes::new(&["own", "team", "tenant"]).unwrap()
    }

    #[test]
    fn grammar_valid() {
        for s in [
            "users.read.own",
            "admin.*.*",
            "*.read.own",
            "*.*.*",
            "a_b-c.x1.team",
            "0.9.tenant",
        ] {
            assert!(parse_permission(s).is_ok(), "{s}");
        }
        assert_eq!(
            parse_permission("admin.*.own").unwrap(),
            ParsedPermission {
                resource: Segment::Name("admin"),
                action: Segment::Any,
                scope: Segment::Name("own")
            }
        );
    }

    #[test]
    fn grammar_invalid() {
        let long = "a".repeat(MAX_PERMISSION_LEN + 1);
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("users", "segment_count"),
            ("users.read", "segment_count"),
            ("users.read.own.x", "segment_count"),
            ("users..own", "empty_segment"),
            (".read.own", "empty_segment"),
            ("users.read.", "empty_segment"),
            ("Users.read.own", "invalid_segment"),
            ("users.re ad.own", "invalid_segment"),
            ("users.read*.own", "invalid_segment"),
            ("users.**.own", "invalid_segment"),
            ("users.read.own\n", "invalid_segment"),
            ("usérs.read.own", "invalid_segment"),
            (&long, "too_long"),
        ];
        for (input, code) in cases {
            let err = parse_permission(input).unwrap_err();
            assert_eq!(err.code(), *code, "{input:?}: {err}");
        }
        let msg = parse_permission("users.read").unwrap_err().to_string();
        assert!(msg.contains("found 2"), "{msg}");
        let msg = parse_permission("users.Read.own").unwrap_err().to_string();
        assert!(
            msg.contains("action segment \"Read\""),
            "message names the segment: {msg}"
        );
    }

    #[test]
    fn scopes_config() {
        let s = scopes();
        assert_eq!(s.get("own"), Some(s.narrowest()));
        assert_eq!(s.get("tenant"), Some(s.widest()));
        assert!(s.get("team").unwrap() > s.get("own").unwrap());
        assert_eq!(s.name(s.get("team").unwrap()), "team");
        let errs = Scopes::new(&["own", "own", "*", "Bad"]).unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["scopes[1]", "scopes[2]", "scopes[3]"]);
        assert_eq!(Scopes::new::<&str>(&[]).unwrap_err()[0].path, "scopes");
    }

    #[test]
    fn required_must_be_concrete_and_known_scope() {
        let mut c = Catalog::new(scopes());
        for (s, code) in [
            ("*.read.own", "wildcard_in_required"),
            ("users.*.own", "wildcard_in_required"),
            ("users.read.*", "wildcard_in_required"),
            ("users.read.global", "unknown_scope"),
        ] {
            assert_eq!(c.intern_required(s).unwrap_err().code(), code, "{s}");
        }
        let msg = c.intern_required("users.read.*").unwrap_err().to_string();
        assert!(msg.contains("narrowest"), "{msg}");
        assert!(c
            .intern_grant("users.read.global")
            .unwrap_err()
            .to_string()
            .contains("own, team, tenant"));
    }

    /// Builds a catalog knowing `users`/`calls`/`admin` x `read`/`write`/`delete`.
    fn catalog() -> Catalog {
        let mut c = Catalog::new(scopes());
        for r in ["users", "calls", "admin"] {
            for a in ["read", "write", "delete"] {
                c.intern_required(&format!("{r}.{a}.own")).unwrap();
            }
        }
        c
    }

    fn set(c: &Catalog, grants: &[&str]) -> PermissionSet {
        PermissionSet::from_grants(c, grants.iter().map(|g| c.grant(g).unwrap()))
    }

    #[test]
    fn scope_hierarchy_and_wildcards() {
        let c = catalog();
        // (grants, required, expected)
        let cases: &[(&[&str], &str, bool)] = &[
            (&["users.read.tenant"], "users.read.tenant", true),
            (&["users.read.tenant"], "users.read.team", true),
            (&["users.read.tenant"], "users.read.own", true),
            (&["users.read.team"], "users.read.tenant", false),
            (&["users.read.team"], "users.read.own", true),
            (&["users.read.own"], "users.read.team", false),
            (&["users.read.own"], "users.write.own", false),
            (&["users.read.own"], "calls.read.own", false),
            (&["users.read.*"], "users.read.tenant", true),
            (&["admin.*.*"], "admin.delete.tenant", true),
            (&["admin.*.*"], "users.delete.own", false),
            (&["admin.*.own"], "admin.delete.team", false),
            (&["*.read.own"], "calls.read.own", true),
            (&["*.read.own"], "calls.read.team", false),
            (&["*.read.own"], "calls.write.own", false),
            (&["*.*.*"], "calls.delete.tenant", true),
            (&["*.*.own"], "calls.delete.team", false),
            // Wildcard slots combine with exact entries: the widest applicable wins.
            (
                &["users.read.own", "users.*.tenant"],
                "users.read.tenant",
                true,
            ),
            (&["users.read.own", "*.read.team"], "users.read.team", true),
            (&["users.read.own", "*.*.tenant"], "users.read.tenant", true),
            (&["users.write.own", "*.read.team"], "users.read.team", true),
            (
                &["users.write.own", "users.*.team"],
                "users.read.team",
                true,
            ),
            (&[], "users.read.own", false),
            // Unknown names are inert, even with wildcards elsewhere in the grant.
            (&["reports.*.*"], "users.read.own", false),
            (&["*.export.*"], "users.read.own", false),
        ];
        for (grants, req, want) in cases {
            let s = set(&c, grants);
            let r = c.required(req).unwrap();
            assert_eq!(s.allows(&r), *want, "{grants:?} allows {req}");
        }
    }

    #[test]
    fn widest_scope_reports_the_best_grant() {
        let c = catalog();
        let s = set(&c, &["users.read.own", "users.*.team", "calls.read.tenant"]);
        let sc = c.scopes();
        let u = c.resource_id("users").unwrap();
        let calls = c.resource_id("calls").unwrap();
        let read = c.action_id("read").unwrap();
        let write = c.action_id("write").unwrap();
        let admin = c.resource_id("admin").unwrap();
        assert_eq!(s.widest_scope(u, read), sc.get("team"));
        assert_eq!(s.widest_scope(u, write), sc.get("team"));
        assert_eq!(s.widest_scope(calls, read), sc.get("tenant"));
        assert_eq!(s.widest_scope(calls, write), None);
        assert_eq!(s.widest_scope(admin, read), None);
        let all = set(&c, &["*.*.*"]);
        assert_eq!(all.widest_scope(admin, write), Some(sc.widest()));
    }

    #[test]
    fn runtime_grants_never_grow_the_catalog() {
        let c = catalog();
        let before = (c.resource_count(), c.action_count());
        let g = c.grant("reports.export.own").unwrap();
        assert!(g.is_inert());
        let s = PermissionSet::from_grants(&c, [g]);
        assert_eq!(s.inert_grants(), 1);
        assert!(s.is_empty());
        assert_eq!((c.resource_count(), c.action_count()), before);
        assert_eq!(
            c.required("reports.export.own").unwrap_err().code(),
            "not_in_catalog"
        );
        assert_eq!(
            c.grant("users.read.nope").unwrap_err().code(),
            "unknown_scope"
        );
    }

    #[test]
    fn describe_and_epoch() {
        let c = catalog();
        let r = c.required("calls.write.own").unwrap();
        assert_eq!(c.describe(r), "calls.write.own");
        let other = Catalog::new(scopes());
        assert_ne!(c.epoch(), other.epoch());
        assert_eq!(PermissionSet::empty(&c).catalog_epoch(), c.epoch());
    }

    const RES: [&str; 4] = ["users", "calls", "admin", "zz"];
    const ACT: [&str; 4] = ["read", "write", "delete", "zz"];
    const SC: [&str; 3] = ["own", "team", "tenant"];

    fn seg(names: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
        prop_oneof![3 => proptest::sample::select(names), 1 => Just("*")]
    }

    fn grant_str() -> impl Strategy<Value = String> {
        (seg(&RES), seg(&ACT), seg(&SC)).prop_map(|(r, a, s)| format!("{r}.{a}.{s}"))
    }

    /// Reference semantics, straight from the spec.
    fn naive(grants: &[String], r: &str, a: &str, s: usize) -> bool {
        grants.iter().any(|g| {
            let p: Vec<&str> = g.split('.').collect();
            let scope_rank = if p[2] == "*" {
                2
            } else {
                SC.iter().position(|x| *x == p[2]).unwrap()
            };
            (p[0] == "*" || p[0] == r) && (p[1] == "*" || p[1] == a) && scope_rank >= s
        })
    }

    proptest! {
        #[test]
        fn matches_reference_model(grants in proptest::collection::vec(grant_str(), 0..12),
                                   r in 0usize..3, a in 0usize..3, s in 0usize..3) {
            let c = catalog();
            let set = PermissionSet::from_grants(&c, grants.iter().map(|g| c.grant(g).unwrap()));
            let req = c.required(&format!("{}.{}.{}", RES[r], ACT[a], SC[s])).unwrap();
            prop_assert_eq!(set.allows(&req), naive(&grants, RES[r], ACT[a], s));
        }

        #[test]
        fn wider_grant_implies_narrower(r in 0usize..3, a in 0usize..3, held in 0usize..3, asked in 0usize..3) {
            let c = catalog();
            let set = set(&c, &[&format!("{}.{}.{}", RES[r], ACT[a], SC[held])]);
            let req = c.required(&format!("{}.{}.{}", RES[r], ACT[a], SC[asked])).unwrap();
            prop_assert_eq!(set.allows(&req), asked <= held);
        }

        #[test]
        fn star_star_star_allows_everything(r in 0usize..3, a in 0usize..3, s in 0usize..3) {
            let c = catalog();
            let set = set(&c, &["*.*.*"]);
            let req = c.required(&format!("{}.{}.{}", RES[r], ACT[a], SC[s])).unwrap();
            prop_assert!(set.allows(&req));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = parse_permission(&s);
        }
    }
}
