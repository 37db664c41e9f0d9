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
//! `host_name` turns a raw `Host` into its one normalised form; `def` holds what the operator
//! writes and the rules each definition passes alone; `build` compiles the definitions into a
//! [`TenantTable`] and checks the rules between them, with `overlap` proving that no two host
//! patterns match one host; this file holds the types and the lookup.

mod build;
mod def;
mod host_name;
mod overlap;
#[cfg(test)]
mod tests;

pub use self::def::{HostPatternDef, TenantDef, MAX_REALM_LEN, TENANT_PLACEHOLDER};
pub use self::host_name::*;
use self::host_name::{is_dns_label, with_normalized_host};

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::HeaderValue;
use quick_cache::sync::Cache;
use quick_cache::Equivalent;
use regex::bytes::{CaptureLocations, Regex};
use serde::{Deserialize, Serialize};

/// Default bound of the dynamic (pattern-derived) tenant cache.
pub const DEFAULT_DYNAMIC_CACHE_CAPACITY: usize = 10_000;

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
