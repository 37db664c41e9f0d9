//! Host -> tenant resolution.
//!
//! Every request is attributed to exactly one tenant (and so one Keycloak realm) from its `Host`
//! header, before any token is looked at: the tenant decides which realm's keys may sign the
//! token, so a wrong or defaulted tenant would be a cross-tenant hole. Hence there is no fallback:
//! a host that matches nothing is [`TenantError::UnknownHost`].
//!
//! Lookup order (first hit wins):
//! 1. exact host (platform subdomains and custom domains alike), one hash lookup;
//! 2. wildcard patterns `{tenant}.suffix`: the host is split at its first `.`, the suffix is
//!    looked up in a hash map and the first label becomes the tenant id, so
//!    `a.b.qa.example.com` never matches `{tenant}.qa.example.com`;
//! 3. regex patterns (anchored, config order) with a named group `tenant`.
//!
//! Tenant ids and realms map one to one (backends key row-level security on the tenant id
//! alone): a realm has one static tenant, a pattern host resolves to the static tenant owning
//! the realm it derives and is refused when it derives a static tenant's id with another
//! realm, all patterns share one realm template, and no two patterns match one host.
//!
//! Everything is compiled once by [`TenantTable::build`]; a lookup costs O(1) hash probes plus a
//! pass over the host bytes, independent of the number of tenants, and allocates nothing on the
//! exact and cached-pattern paths.

//!
//! # Layout
//! `host_name` turns a raw `Host` into its one normalised form; this file maps that form to a
//! tenant.

mod host_name;
#[cfg(test)]
mod tests;

pub use self::host_name::*;
use self::host_name::{is_dns_label, with_normalized_host};

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use quick_cache::sync::Cache;
use quick_cache::Equivalent;
use regex::bytes::{CaptureLocations, Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// Longest realm name accepted; realms end up in URL paths and metric labels.
pub const MAX_REALM_LEN: usize = 255;
/// Default bound of the dynamic (pattern-derived) tenant cache.
pub const DEFAULT_DYNAMIC_CACHE_CAPACITY: usize = 10_000;
/// The placeholder in wildcard patterns and realm templates.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

type AHashMap<K, V> = HashMap<K, V, ahash::RandomState>;

// ---------------------------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------------------------

/// Lifecycle state of a tenant (the seed platform's `tenants.status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatus {
    #[default]
    Active,
    Suspended,
    /// Provisioned but not yet live; served like `Suspended`.
    Pending,
    Disabled,
}

impl TenantStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Pending => "pending",
            TenantStatus::Disabled => "disabled",
        }
    }
}

impl fmt::Display for TenantStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a resolved tenant came from: its index in the configuration, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TenantSource {
    /// `tenants[index]`.
    Static { index: usize },
    /// Derived at request time from `host_patterns[index]`.
    Pattern { index: usize },
}

/// A resolved tenant. Shared behind `Arc` so resolving never copies strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: Arc<str>,
    pub realm: Arc<str>,
    pub status: TenantStatus,
    /// Upstream name/address override; `None` means the gateway's default upstream.
    pub upstream: Option<Arc<str>>,
    pub source: TenantSource,
    /// `id` and `realm` as upstream header values, built once. `None` only for a name that
    /// is not a valid header value, which validation refuses; the proxy fails closed on it.
    #[serde(skip)]
    pub id_value: Option<HeaderValue>,
    #[serde(skip)]
    pub realm_value: Option<HeaderValue>,
}

impl Tenant {
    pub fn new(
        id: Arc<str>,
        realm: Arc<str>,
        status: TenantStatus,
        upstream: Option<Arc<str>>,
        source: TenantSource,
    ) -> Self {
        Self {
            id_value: HeaderValue::from_str(&id).ok(),
            realm_value: HeaderValue::from_str(&realm).ok(),
            id,
            realm,
            status,
            upstream,
            source,
        }
    }

    /// Only active tenants get traffic; pending is treated like suspended.
    pub fn is_serving(&self) -> bool {
        self.status == TenantStatus::Active
    }
}

/// A statically configured tenant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDef {
    /// `[a-z0-9][a-z0-9_-]{0,62}`.
    pub id: String,
    pub realm: String,
    /// Exact hosts (subdomains and custom domains); may be empty for a tenant that is only
    /// reached through a pattern that derives this tenant's realm.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Defaults to `active`: listing a tenant is the intent to serve it.
    #[serde(default)]
    pub status: TenantStatus,
    #[serde(default)]
    pub upstream: Option<String>,
}

/// A host pattern yielding dynamic tenants. `realm` is a template containing `{tenant}`.
/// In configuration it is an object with exactly one of `pattern` or `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawHostPatternDef")]
pub enum HostPatternDef {
    /// `{tenant}.suffix`: `{tenant}` is exactly the first label.
    Wildcard {
        pattern: String,
        realm: String,
        upstream: Option<String>,
    },
    /// Anchored regex with a named group `tenant` over the normalised (lowercase) host.
    Regex {
        regex: String,
        realm: String,
        upstream: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostPatternDef {
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    realm: String,
    #[serde(default)]
    upstream: Option<String>,
}

impl TryFrom<RawHostPatternDef> for HostPatternDef {
    type Error = String;

    fn try_from(raw: RawHostPatternDef) -> Result<Self, Self::Error> {
        match (raw.pattern, raw.regex) {
            (Some(pattern), None) => Ok(HostPatternDef::Wildcard {
                pattern,
                realm: raw.realm,
                upstream: raw.upstream,
            }),
            (None, Some(regex)) => Ok(HostPatternDef::Regex {
                regex,
                realm: raw.realm,
                upstream: raw.upstream,
            }),
            _ => Err("a host pattern needs exactly one of `pattern` or `regex`".to_owned()),
        }
    }
}

/// A configuration error found by [`TenantTable::build`]; `path` is relative to the tenancy
/// section, e.g. `tenants[3].hosts[1]` or `host_patterns[0].pattern`.
pub use crate::config_error::BuildError;

/// Why a request could not be attributed to a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    #[error("invalid Host header: {0}")]
    InvalidHost(#[from] HostError),
    #[error("no tenant is configured for this host")]
    UnknownHost,
}

impl TenantError {
    /// Stable snake_case code for error bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TenantError::InvalidHost(_) => "invalid_host",
            TenantError::UnknownHost => "unknown_host",
        }
    }

    pub fn status(&self) -> http::StatusCode {
        match self {
            TenantError::InvalidHost(_) => http::StatusCode::BAD_REQUEST,
            TenantError::UnknownHost => http::StatusCode::NOT_FOUND,
        }
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: safe in headers, Redis keys, SQL settings and metric labels.
fn validate_tenant_id(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if first_ok && rest_ok && b.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid tenant id (expected [a-z0-9][a-z0-9_-]{{0,62}})"
        ))
    }
}

/// Realm names go into Keycloak URL paths (`/realms/{realm}/...`) and metric labels, so on top
/// of the basic rules (non-empty, <= 255, no `/`, whitespace or control characters) the URL
/// delimiters `? # % \` and the dot segments `.`/`..` are refused.
fn realm_problem(realm: &str) -> Option<&'static str> {
    if realm.is_empty() {
        return Some("is empty");
    }
    if realm.len() > MAX_REALM_LEN {
        return Some("is longer than 255 bytes");
    }
    if realm == "." || realm == ".." {
        return Some("is a dot segment");
    }
    if realm
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%' | '\\'))
    {
        return Some("contains whitespace, a control character or one of / ? # % \\");
    }
    None
}

fn validate_realm(realm: &str) -> Result<(), String> {
    match realm_problem(realm) {
        None => Ok(()),
        Some(p) => Err(format!("{realm:?} is not a valid realm name: it {p}")),
    }
}

fn validate_realm_template(template: &str) -> Result<(), String> {
    let placeholders = template.matches(TENANT_PLACEHOLDER).count();
    if placeholders == 0 {
        return Err(format!(
            "realm template {template:?} must contain {TENANT_PLACEHOLDER}, e.g. \"tenant-{TENANT_PLACEHOLDER}\""
        ));
    }
    let sample = template.replace(TENANT_PLACEHOLDER, "x");
    if let Some(p) = realm_problem(&sample) {
        return Err(format!("realm template {template:?} is not valid: it {p}"));
    }
    let longest = template.len() + placeholders * (MAX_LABEL_LEN - TENANT_PLACEHOLDER.len());
    if longest > MAX_REALM_LEN {
        return Err(format!(
            "realm template {template:?} can expand to {longest} bytes with a 63-character tenant (max {MAX_REALM_LEN})"
        ));
    }
    Ok(())
}

fn validate_upstream(upstream: Option<&str>) -> Result<(), String> {
    match upstream {
        Some(u) if u.trim().is_empty() => Err("upstream must not be empty".to_owned()),
        _ => Ok(()),
    }
}

/// Parses `{tenant}.suffix` into the normalised suffix.
fn parse_wildcard(pattern: &str) -> Result<String, String> {
    let count = pattern.matches(TENANT_PLACEHOLDER).count();
    if count == 0 {
        return Err(format!(
            "{pattern:?} does not contain {TENANT_PLACEHOLDER} (expected \"{TENANT_PLACEHOLDER}.example.com\")"
        ));
    }
    if count > 1 {
        return Err(format!(
            "{pattern:?} contains {TENANT_PLACEHOLDER} more than once; it may only be the whole first label"
        ));
    }
    let Some(suffix) = pattern.strip_prefix("{tenant}.") else {
        return Err(format!(
            "{pattern:?}: {TENANT_PLACEHOLDER} must be the whole first label, followed by a domain (e.g. \"{TENANT_PLACEHOLDER}.example.com\")"
        ));
    };
    let suffix = normalize_config_host(suffix)
        .map_err(|e| format!("{pattern:?}: suffix {suffix:?} is not a valid host name ({e})"))?;
    if suffix.starts_with('[')
        || suffix
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "{pattern:?}: suffix must be a domain name, not an IP address"
        ));
    }
    Ok(suffix)
}

/// A compiled host pattern.
struct CompiledPattern {
    /// Position in `host_patterns`, reported as [`TenantSource::Pattern`].
    index: usize,
    realm_template: Box<str>,
    upstream: Option<Arc<str>>,
    /// Compiled regex and the group index of `tenant`; `None` for wildcards.
    regex: Option<(Regex, usize)>,
}

/// Cache key of a dynamic tenant: (compiled pattern position, label).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct DynKey {
    pattern: usize,
    label: Box<[u8]>,
}

/// Borrowed form of [`DynKey`]; hashes identically (same field order and types' `Hash`).
#[derive(Hash)]
struct DynKeyRef<'a> {
    pattern: usize,
    label: &'a [u8],
}

impl Equivalent<DynKey> for DynKeyRef<'_> {
    fn equivalent(&self, key: &DynKey) -> bool {
        self.pattern == key.pattern && self.label == &*key.label
    }
}

/// Distinguishes table generations so per-thread regex scratch space is never reused with a
/// different table's regexes (that would be a logic error inside `regex`).
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// Per-thread reusable capture slots for the regex fallback, so matching does not allocate per
/// request. Bounded by the regex count of the most recent table used on this thread; replaced
/// wholesale when a different table is used.
struct RegexScratch {
    table_id: u64,
    locs: Vec<CaptureLocations>,
}

thread_local! {
    static REGEX_SCRATCH: RefCell<RegexScratch> = const {
        RefCell::new(RegexScratch { table_id: 0, locs: Vec::new() })
    };
}

/// The precompiled Host -> tenant table. Immutable after [`TenantTable::build`] except for the
/// dynamic cache; publish it through an `ArcSwap` and rebuild on configuration reload.
pub struct TenantTable {
    id: u64,
    /// Static tenants in configuration order.
    tenants: Vec<Arc<Tenant>>,
    by_id: AHashMap<Box<str>, Arc<Tenant>>,
    /// Static tenants by realm (one tenant per realm, checked at build): a pattern whose realm
    /// is a static tenant's resolves to that tenant.
    by_realm: AHashMap<Box<str>, Arc<Tenant>>,
    /// Byte keys: the request path works on bytes and never re-checks UTF-8.
    exact: AHashMap<Box<[u8]>, Arc<Tenant>>,
    /// Wildcard suffix -> position in `patterns`.
    wildcards: AHashMap<Box<[u8]>, usize>,
    /// Positions in `patterns` of regex patterns, in configuration order.
    regexes: Vec<usize>,
    patterns: Vec<CompiledPattern>,
    static_realms: Vec<Arc<str>>,
    /// Dynamic tenants by (pattern, label), so a pattern hit allocates only on first sight.
    /// Bound: `dynamic_cache_capacity` entries (approximate, per quick_cache's sharding);
    /// eviction: quick_cache's S3-FIFO policy (scan resistant: a flood of one-off labels does
    /// not flush the hot tenants). Capacity 0 disables caching (every pattern hit allocates).
    /// Dropped with the table, so a reload never serves a stale dynamic tenant.
    dynamic: Cache<DynKey, Arc<Tenant>>,
}

impl fmt::Debug for TenantTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantTable")
            .field("tenants", &self.tenants.len())
            .field("hosts", &self.exact.len())
            .field("patterns", &self.patterns.len())
            .field("dynamic_cached", &self.dynamic.len())
            .finish()
    }
}

impl TenantTable {
    /// Validates and compiles the tenancy configuration, collecting ALL errors. Hosts and
    /// wildcard suffixes are normalised here (lowercase, one trailing dot stripped), so
    /// duplicates are detected across spellings.
    pub fn build(
        tenants: Vec<TenantDef>,
        patterns: Vec<HostPatternDef>,
        dynamic_cache_capacity: usize,
    ) -> Result<Self, Vec<BuildError>> {
        let mut errors = Vec::new();
        let mut static_tenants = Vec::with_capacity(tenants.len());
        let mut by_id: AHashMap<Box<str>, (usize, Arc<Tenant>)> =
            AHashMap::with_capacity_and_hasher(tenants.len(), ahash::RandomState::new());
        let host_total = tenants.iter().map(|t| t.hosts.len()).sum();
        let mut exact: AHashMap<Box<[u8]>, (String, Arc<Tenant>)> =
            AHashMap::with_capacity_and_hasher(host_total, ahash::RandomState::new());
        let mut static_realms: Vec<Arc<str>> = Vec::new();
        let mut by_realm: AHashMap<Box<str>, (usize, Arc<Tenant>)> =
            AHashMap::with_capacity_and_hasher(tenants.len(), ahash::RandomState::new());

        for (i, def) in tenants.into_iter().enumerate() {
            if let Err(m) = validate_tenant_id(&def.id) {
                errors.push(BuildError::new(format!("tenants[{i}].id"), m));
            }
            if let Err(m) = validate_realm(&def.realm) {
                errors.push(BuildError::new(format!("tenants[{i}].realm"), m));
            }
            if let Err(m) = validate_upstream(def.upstream.as_deref()) {
                errors.push(BuildError::new(format!("tenants[{i}].upstream"), m));
            }
            let realm: Arc<str> = def.realm.into();
            let tenant = Arc::new(Tenant::new(
                def.id.as_str().into(),
                realm.clone(),
                def.status,
                def.upstream.map(Into::into),
                TenantSource::Static { index: i },
            ));
            match by_id.entry(def.id.into_boxed_str()) {
                Entry::Occupied(o) => errors.push(BuildError::new(
                    format!("tenants[{i}].id"),
                    format!(
                        "duplicate tenant id {:?} (already used by tenants[{}])",
                        o.key(),
                        o.get().0
                    ),
                )),
                Entry::Vacant(v) => {
                    v.insert((i, tenant.clone()));
                }
            }
            // One realm, one tenant: with two, a token of the realm would open both tenants,
            // and the backend would see two X-Tenant-IDs for one set of users.
            match by_realm.entry(Box::from(&*realm)) {
                Entry::Occupied(o) => errors.push(BuildError::new(
                    format!("tenants[{i}].realm"),
                    format!(
                        "realm {:?} already belongs to tenants[{}] ({:?}); a realm serves exactly one tenant",
                        o.key(),
                        o.get().0,
                        &*o.get().1.id
                    ),
                )),
                Entry::Vacant(v) => {
                    v.insert((i, tenant.clone()));
                    static_realms.push(realm);
                }
            }
            for (j, host) in def.hosts.iter().enumerate() {
                let path = format!("tenants[{i}].hosts[{j}]");
                match normalize_config_host(host) {
                    Err(e) => errors.push(BuildError::new(
                        path,
                        format!("{host:?} is not a valid host name ({e})"),
                    )),
                    Ok(n) => match exact.entry(n.into_bytes().into_boxed_slice()) {
                        Entry::Occupied(o) => {
                            let msg = format!("{host:?} is already used by {}", o.get().0);
                            errors.push(BuildError::new(path, msg));
                        }
                        Entry::Vacant(v) => {
                            v.insert((path, tenant.clone()));
                        }
                    },
                }
            }
            static_tenants.push(tenant);
        }

        let mut compiled = Vec::with_capacity(patterns.len());
        let mut wildcards: AHashMap<Box<[u8]>, (usize, usize)> = AHashMap::default();
        let mut regexes = Vec::new();
        // (config index, template) of the first pattern: every pattern must use the same.
        let mut first_template: Option<(usize, String)> = None;
        // Host languages of the patterns that parsed, for the overlap check.
        let mut shapes: Vec<(usize, HostShape)> = Vec::with_capacity(patterns.len());
        for (i, def) in patterns.into_iter().enumerate() {
            let (realm, upstream) = match &def {
                HostPatternDef::Wildcard {
                    realm, upstream, ..
                }
                | HostPatternDef::Regex {
                    realm, upstream, ..
                } => (realm, upstream),
            };
            if let Err(m) = validate_realm_template(realm) {
                errors.push(BuildError::new(format!("host_patterns[{i}].realm"), m));
            }
            // Every pattern turns a host label into the tenant id, so two templates would give
            // one X-Tenant-ID two realms (`{tenant}.eu...` -> eu-x and `{tenant}.us...` -> us-x
            // are both tenant x to a backend that keys row-level security on the header).
            match &first_template {
                _ if validate_realm_template(realm).is_err() => {}
                None => first_template = Some((i, realm.clone())),
                Some((f, t)) if t != realm => errors.push(BuildError::new(
                    format!("host_patterns[{i}].realm"),
                    format!(
                        "realm template {realm:?} differs from host_patterns[{f}]'s {t:?}; patterns derive the tenant id from the host label, so every pattern must map an id to the same realm"
                    ),
                )),
                Some(_) => {}
            }
            if let Err(m) = validate_upstream(upstream.as_deref()) {
                errors.push(BuildError::new(format!("host_patterns[{i}].upstream"), m));
            }
            let mut pattern = CompiledPattern {
                index: i,
                realm_template: realm.as_str().into(),
                upstream: upstream.as_deref().map(Into::into),
                regex: None,
            };
            let position = compiled.len();
            match &def {
                HostPatternDef::Wildcard { pattern: p, .. } => match parse_wildcard(p) {
                    Err(m) => {
                        errors.push(BuildError::new(format!("host_patterns[{i}].pattern"), m));
                    }
                    Ok(suffix) => match wildcards.entry(suffix.clone().into_bytes().into()) {
                        Entry::Vacant(v) => {
                            v.insert((position, i));
                            shapes.push((i, HostShape::Wildcard(suffix)));
                        }
                        Entry::Occupied(o) => errors.push(BuildError::new(
                            format!("host_patterns[{i}].pattern"),
                            format!(
                                "{p:?}: suffix {suffix:?} is already used by host_patterns[{}]",
                                o.get().1
                            ),
                        )),
                    },
                },
                HostPatternDef::Regex { regex, .. } => match compile_regex(regex) {
                    Err(m) => {
                        errors.push(BuildError::new(format!("host_patterns[{i}].regex"), m));
                    }
                    Ok(r) => {
                        pattern.regex = Some(r);
                        regexes.push(position);
                        shapes.push((i, HostShape::Regex(regex.clone())));
                    }
                },
            }
            compiled.push(pattern);
        }

        check_overlaps(&shapes, &mut errors);
        if let Some((_, template)) = &first_template {
            check_derived_ids(template, &static_tenants, &by_id, &mut errors);
        }

        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            tenants: static_tenants,
            by_id: by_id.into_iter().map(|(k, (_, t))| (k, t)).collect(),
            by_realm: by_realm.into_iter().map(|(k, (_, t))| (k, t)).collect(),
            exact: exact.into_iter().map(|(k, (_, t))| (k, t)).collect(),
            wildcards: wildcards.into_iter().map(|(k, (p, _))| (k, p)).collect(),
            regexes,
            patterns: compiled,
            static_realms,
            dynamic: Cache::new(dynamic_cache_capacity),
        })
    }

    /// Resolves an already normalised host (see [`normalize_host`]); a non-normalised host
    /// simply fails to match. Exact hosts win over wildcards, wildcards over regexes.
    ///
    /// A pattern hit derives (id = label, realm = the template with `{tenant}` substituted).
    /// If a static tenant owns that realm, that static tenant is returned, so its id, status
    /// and upstream apply (a suspended tenant stays suspended under every host). Otherwise, if
    /// a static tenant owns the id (with another realm), the host is refused: one id never
    /// names two realms. Otherwise it is a dynamic tenant (status active, the pattern's
    /// upstream).
    pub fn resolve(&self, host: &str) -> Result<Arc<Tenant>, TenantError> {
        self.resolve_bytes(host.as_bytes())
    }

    /// Normalises a raw `Host` value and resolves it, without allocating on the exact and
    /// cached-pattern paths.
    pub fn resolve_raw(&self, raw_host: &[u8]) -> Result<Arc<Tenant>, TenantError> {
        with_normalized_host(raw_host, |host| self.resolve_bytes(host))?
    }

    fn resolve_bytes(&self, host: &[u8]) -> Result<Arc<Tenant>, TenantError> {
        if let Some(t) = self.exact.get(host) {
            return Ok(t.clone());
        }
        if let Some(dot) = host.iter().position(|&c| c == b'.') {
            let (label, suffix) = (host.get(..dot), host.get(dot + 1..));
            if let (Some(label), Some(suffix)) = (label, suffix) {
                if let Some(&position) = self.wildcards.get(suffix) {
                    if let Some(t) = self.dynamic_tenant(position, label) {
                        return Ok(t);
                    }
                }
            }
        }
        self.match_regexes(host).ok_or(TenantError::UnknownHost)
    }

    /// Static tenants in configuration order.
    pub fn tenants(&self) -> impl Iterator<Item = &Arc<Tenant>> {
        self.tenants.iter()
    }

    /// The static tenant with this id.
    pub fn tenant_by_id(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.by_id.get(id)
    }

    /// Number of exact hosts.
    pub fn host_count(&self) -> usize {
        self.exact.len()
    }

    /// Number of host patterns (wildcard and regex).
    pub fn pattern_count(&self) -> usize {
        self.patterns.len()
    }

    /// Distinct realms of static tenants, in configuration order (JWKS preloading).
    pub fn static_realms(&self) -> impl Iterator<Item = &str> {
        self.static_realms.iter().map(|r| &**r)
    }

    /// Current number of cached dynamic tenants (a gauge for metrics).
    pub fn dynamic_cache_len(&self) -> usize {
        self.dynamic.len()
    }

    fn dynamic_tenant(&self, position: usize, label: &[u8]) -> Option<Arc<Tenant>> {
        let key = DynKeyRef {
            pattern: position,
            label,
        };
        if let Some(t) = self.dynamic.get(&key) {
            return Some(t);
        }
        // Only validated labels are ever cached, so a cache hit needs no re-check.
        if !is_dns_label(label) {
            return None;
        }
        let label_str = std::str::from_utf8(label).ok()?;
        let pattern = self.patterns.get(position)?;
        let realm = pattern
            .realm_template
            .replace(TENANT_PLACEHOLDER, label_str);
        let tenant = if let Some(t) = self.by_realm.get(realm.as_str()) {
            t.clone()
        } else if self.by_id.contains_key(label_str) {
            // The id is a static tenant's, with another realm: not cached, so a reload that
            // fixes the conflict needs nothing else.
            return None;
        } else {
            Arc::new(Tenant::new(
                label_str.into(),
                realm.into(),
                TenantStatus::Active,
                pattern.upstream.clone(),
                TenantSource::Pattern {
                    index: pattern.index,
                },
            ))
        };
        self.dynamic.insert(
            DynKey {
                pattern: position,
                label: label.into(),
            },
            tenant.clone(),
        );
        Some(tenant)
    }

    fn match_regexes(&self, host: &[u8]) -> Option<Arc<Tenant>> {
        if self.regexes.is_empty() {
            return None;
        }
        let run = |locs: &mut [CaptureLocations]| {
            for (&position, loc) in self.regexes.iter().zip(locs.iter_mut()) {
                let Some((re, group)) = self.patterns.get(position).and_then(|p| p.regex.as_ref())
                else {
                    continue;
                };
                if re.captures_read(loc, host).is_none() {
                    continue;
                }
                let Some(label) = loc.get(*group).and_then(|(s, e)| host.get(s..e)) else {
                    continue;
                };
                if let Some(t) = self.dynamic_tenant(position, label) {
                    return Some(t);
                }
            }
            None
        };
        let fresh = || -> Vec<CaptureLocations> {
            self.regexes
                .iter()
                .filter_map(|&p| self.patterns.get(p)?.regex.as_ref())
                .map(|(re, _)| re.capture_locations())
                .collect()
        };
        REGEX_SCRATCH
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => {
                    if scratch.table_id != self.id {
                        scratch.locs = fresh();
                        scratch.table_id = self.id;
                    }
                    run(&mut scratch.locs)
                }
                Err(_) => run(&mut fresh()),
            })
            .unwrap_or_else(|_| run(&mut fresh()))
    }
}

/// The label a realm template turns into `realm`, if one exists: the tenant id a host
/// pattern derives for that realm.
fn derived_label<'r>(template: &str, realm: &'r str) -> Option<&'r str> {
    let k = template.matches(TENANT_PLACEHOLDER).count();
    if k == 0 {
        return None;
    }
    let fixed = template.len() - k * TENANT_PLACEHOLDER.len();
    let extra = realm.len().checked_sub(fixed)?;
    if extra == 0 || extra % k != 0 {
        return None;
    }
    let start = template.find(TENANT_PLACEHOLDER)?;
    let label = realm.get(start..start + extra / k)?;
    (is_dns_label(label.as_bytes()) && template.replace(TENANT_PLACEHOLDER, label) == realm)
        .then_some(label)
}

/// A static tenant's realm may be one a host pattern derives, for label `x`; then `x` must
/// not be another static tenant's id, or the host `x.suffix` would name one tenant by realm
/// and another by id. Reported on the later of the two tenants, so a run-time tenant (merged
/// after the file's) is the one refused.
fn check_derived_ids(
    template: &str,
    tenants: &[Arc<Tenant>],
    by_id: &AHashMap<Box<str>, (usize, Arc<Tenant>)>,
    errors: &mut Vec<BuildError>,
) {
    for (i, t) in tenants.iter().enumerate() {
        let Some(label) = derived_label(template, &t.realm) else {
            continue;
        };
        if label == &*t.id {
            continue;
        }
        let Some((j, other)) = by_id.get(label) else {
            continue;
        };
        let (j, other) = (*j, other);
        if other.realm == t.realm {
            continue;
        }
        let error = if j > i {
            BuildError::new(
                format!("tenants[{j}].id"),
                format!(
                    "{label:?} is the tenant id host patterns derive (template {template:?}) for realm {:?} of tenants[{i}] ({:?}), but this tenant's realm is {:?}; a tenant id must name one realm",
                    &*t.realm, &*t.id, &*other.realm
                ),
            )
        } else {
            BuildError::new(
                format!("tenants[{i}].realm"),
                format!(
                    "host patterns derive tenant id {label:?} from realm {:?} (template {template:?}), and {label:?} is the id of tenants[{j}] with realm {:?}; a tenant id must name one realm",
                    &*t.realm, &*other.realm
                ),
            )
        };
        errors.push(error);
    }
}

/// The hosts one pattern can match, for the overlap check.
enum HostShape {
    /// `{tenant}.suffix` (normalised suffix).
    Wildcard(String),
    /// The configured regex source (anchored when compiled).
    Regex(String),
}

/// No two patterns may match one host: otherwise which tenant (and realm) a host names would
/// depend on the lookup order, and two patterns could derive different ids for one host.
/// Wildcards with distinct suffixes never overlap (the first label is the whole difference),
/// so only pairs with a regex are checked, by searching their product automaton for a common
/// well-formed host.
fn check_overlaps(shapes: &[(usize, HostShape)], errors: &mut Vec<BuildError>) {
    if !shapes.iter().any(|(_, s)| matches!(s, HostShape::Regex(_))) {
        return;
    }
    let Ok(valid_host) = overlap::Language::valid_host() else {
        errors.push(BuildError::new(
            "host_patterns",
            "internal error: the host automaton does not build",
        ));
        return;
    };
    let mut langs = Vec::with_capacity(shapes.len());
    for (i, shape) in shapes {
        let built = match shape {
            HostShape::Wildcard(suffix) => overlap::Language::wildcard(suffix),
            HostShape::Regex(source) => overlap::Language::regex(source),
        };
        match built {
            Ok(l) => langs.push((*i, shape, l)),
            Err(m) => errors.push(BuildError::new(
                format!("host_patterns[{i}]"),
                format!("cannot be checked against the other host patterns: {m}"),
            )),
        }
    }
    for (b, (j, shape_j, lang_j)) in langs.iter().enumerate() {
        for (i, shape_i, lang_i) in langs.iter().take(b) {
            if matches!(
                (shape_i, shape_j),
                (HostShape::Wildcard(_), HostShape::Wildcard(_))
            ) {
                continue;
            }
            match overlap::common_host(lang_i, lang_j, &valid_host) {
                Ok(None) => {}
                Ok(Some(host)) => errors.push(BuildError::new(
                    format!("host_patterns[{j}]"),
                    format!(
                        "matches the same hosts as host_patterns[{i}] (e.g. {host:?}); host patterns must not overlap"
                    ),
                )),
                Err(m) => errors.push(BuildError::new(
                    format!("host_patterns[{j}]"),
                    format!("cannot be proven disjoint from host_patterns[{i}]: {m}"),
                )),
            }
        }
    }
}

/// Host patterns as deterministic automata over the bytes of a normalised host.
mod overlap {
    use std::collections::HashSet;

    use regex_automata::dfa::{dense, Automaton, StartKind};
    use regex_automata::util::primitives::StateID;
    use regex_automata::util::{start, syntax};
    use regex_automata::{Anchored, MatchKind};

    /// Every byte a normalised host can contain (names, IPv4 and bracketed IPv6 literals).
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-.[]:";
    const DNS_LABEL: &str = "[a-z0-9](?:[a-z0-9-]*[a-z0-9])?";
    /// Bounds on one automaton and on the product search: a config file is trusted, but a
    /// pathological regex must end in a clear error, not a stalled load.
    const SIZE_LIMIT: usize = 8 << 20;
    const MAX_PRODUCT_STATES: usize = 500_000;

    pub(super) struct Language(dense::DFA<Vec<u32>>);

    impl Language {
        fn build(pattern: &str) -> Result<Self, String> {
            let anchored = format!(r"\A(?:{pattern})\z");
            let mut b = dense::Builder::new();
            b.configure(
                dense::Config::new()
                    // Every match, not leftmost-first: the automaton must accept exactly the
                    // pattern's language.
                    .match_kind(MatchKind::All)
                    .start_kind(StartKind::Anchored)
                    .unicode_word_boundary(true)
                    .dfa_size_limit(Some(SIZE_LIMIT))
                    .determinize_size_limit(Some(SIZE_LIMIT)),
            );
            // ASCII semantics first: on ASCII hosts they agree with the Unicode semantics the
            // request path uses, and the automata are far smaller. Unicode-only syntax
            // (`\p{L}`) falls back to the full semantics.
            b.syntax(syntax::Config::new().unicode(false).utf8(false));
            match b.build(&anchored) {
                Ok(d) => Ok(Language(d)),
                Err(_) => {
                    b.syntax(syntax::Config::new());
                    b.build(&anchored).map(Language).map_err(|e| e.to_string())
                }
            }
        }

        /// `{tenant}.suffix`: a DNS label, then the suffix.
        pub(super) fn wildcard(suffix: &str) -> Result<Self, String> {
            Self::build(&format!(r"{DNS_LABEL}\.{}", regex::escape(suffix)))
        }

        pub(super) fn regex(source: &str) -> Result<Self, String> {
            Self::build(source)
        }

        /// Well-formed normalised hosts, so that overlaps only on impossible hosts (`a..b`)
        /// are not reported.
        pub(super) fn valid_host() -> Result<Self, String> {
            Self::build(&format!(r"{DNS_LABEL}(?:\.{DNS_LABEL})*|\[[0-9a-f:.]+\]"))
        }
    }

    /// A shortest host that all three automata accept, found breadth-first over their product.
    pub(super) fn common_host(
        a: &Language,
        b: &Language,
        valid: &Language,
    ) -> Result<Option<String>, String> {
        let dfas = [&a.0, &b.0, &valid.0];
        let cfg = start::Config::new().anchored(Anchored::Yes);
        let mut first = [StateID::ZERO; 3];
        for (slot, d) in first.iter_mut().zip(dfas) {
            *slot = d.start_state(&cfg).map_err(|e| e.to_string())?;
        }
        // (states, parent node, byte that led here); BFS order is the vector order.
        let mut nodes: Vec<([StateID; 3], usize, u8)> = vec![(first, 0, 0)];
        let mut seen: HashSet<[StateID; 3]> = HashSet::from([first]);
        let mut next_node = 0;
        while let Some(&(states, _, _)) = nodes.get(next_node) {
            let accepts = dfas
                .iter()
                .zip(states)
                .all(|(d, s)| d.is_match_state(d.next_eoi_state(s)));
            if accepts {
                let mut host = Vec::new();
                let mut at = next_node;
                while at != 0 {
                    let (_, parent, byte) = nodes[at];
                    host.push(byte);
                    at = parent;
                }
                host.reverse();
                return Ok(Some(String::from_utf8_lossy(&host).into_owned()));
            }
            for &byte in ALPHABET {
                let mut next = states;
                let mut alive = true;
                for (slot, d) in next.iter_mut().zip(dfas) {
                    *slot = d.next_state(*slot, byte);
                    alive &= !(d.is_dead_state(*slot) || d.is_quit_state(*slot));
                }
                if alive && seen.insert(next) {
                    if nodes.len() >= MAX_PRODUCT_STATES {
                        return Err("the patterns are too complex to compare".to_string());
                    }
                    nodes.push((next, next_node, byte));
                }
            }
            next_node += 1;
        }
        Ok(None)
    }
}

/// Compiles an anchored host regex and finds its `tenant` group.
fn compile_regex(source: &str) -> Result<(Regex, usize), String> {
    let anchored = format!(r"\A(?:{source})\z");
    let re = RegexBuilder::new(&anchored)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{source:?} is not a valid regex: {e}"))?;
    let group = re
        .capture_names()
        .position(|n| n == Some("tenant"))
        .ok_or_else(|| {
            format!("{source:?} has no named group `tenant`, e.g. (?P<tenant>[a-z0-9-]+)")
        })?;
    Ok((re, group))
}
