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

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::net::Ipv6Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use quick_cache::sync::Cache;
use quick_cache::Equivalent;
use regex::bytes::{CaptureLocations, Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

/// Longest host name, without the optional trailing dot (RFC 1035 wire limit of 255 octets).
pub const MAX_HOST_LEN: usize = 253;
/// Longest DNS label (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;
/// Longest realm name accepted; realms end up in URL paths and metric labels.
pub const MAX_REALM_LEN: usize = 255;
/// Default bound of the dynamic (pattern-derived) tenant cache.
pub const DEFAULT_DYNAMIC_CACHE_CAPACITY: usize = 10_000;
/// The placeholder in wildcard patterns and realm templates.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Longest raw `Host` value that can still be valid: name, trailing dot, `:` and a 5-digit port.
/// Checked first so a hostile 8 KiB header costs nothing to refuse.
const MAX_RAW_HOST_LEN: usize = MAX_HOST_LEN + 1 + 1 + 5;
/// `[` + longest textual IPv6 address (45) + `]`.
const MAX_IPV6_LITERAL_LEN: usize = 47;

type AHashMap<K, V> = HashMap<K, V, ahash::RandomState>;

// ---------------------------------------------------------------------------------------------
// Host normalisation
// ---------------------------------------------------------------------------------------------

/// Why a host is not acceptable. Reaches clients only wrapped in [`TenantError::InvalidHost`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("host is empty")]
    Empty,
    #[error("host is longer than 253 characters")]
    TooLong,
    #[error("a label is longer than 63 characters")]
    LabelTooLong,
    #[error("empty label")]
    EmptyLabel,
    #[error("a label starts or ends with '-'")]
    LabelHyphen,
    #[error("invalid character (only a-z, 0-9, '-' and '.' are allowed)")]
    InvalidCharacter,
    #[error("invalid port (must be 1..=65535)")]
    InvalidPort,
    #[error("invalid IPv6 literal")]
    InvalidIpLiteral,
    #[error("a port is not allowed here")]
    PortNotAllowed,
}

impl HostError {
    /// Stable snake_case code, for logs and error bodies that want the detail.
    pub fn code(&self) -> &'static str {
        match self {
            HostError::Empty => "host_empty",
            HostError::TooLong => "host_too_long",
            HostError::LabelTooLong => "label_too_long",
            HostError::EmptyLabel => "empty_label",
            HostError::LabelHyphen => "label_hyphen",
            HostError::InvalidCharacter => "invalid_character",
            HostError::InvalidPort => "invalid_port",
            HostError::InvalidIpLiteral => "invalid_ip_literal",
            HostError::PortNotAllowed => "port_not_allowed",
        }
    }
}

/// A normalised host: lowercase, no port, no trailing dot; IPv6 literals in canonical
/// (RFC 5952) form inside brackets, e.g. `[::1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalizedHost<'a> {
    /// Borrowed from the input unless lowercasing or IPv6 canonicalisation changed it.
    pub host: Cow<'a, str>,
    /// The port, if the input carried one.
    pub port: Option<u16>,
}

impl NormalizedHost<'_> {
    pub fn as_str(&self) -> &str {
        &self.host
    }
}

enum HostKind {
    Name { has_upper: bool },
    Ipv6(Ipv6Addr),
}

/// A syntactically valid host, split from its port but not yet lowercased. Bytes, because the
/// request path never needs `&str`: skipping a UTF-8 re-check is measurable at this scale.
struct Parsed<'a> {
    host: &'a [u8],
    port: Option<u16>,
    kind: HostKind,
}

fn parse_port(digits: &[u8]) -> Result<u16, HostError> {
    if digits.is_empty() || digits.len() > 5 {
        return Err(HostError::InvalidPort);
    }
    let mut value: u32 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(HostError::InvalidPort);
        }
        value = value * 10 + u32::from(d - b'0');
    }
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(HostError::InvalidPort),
    }
}

const C_INVALID: u8 = 0;
const C_LOWER: u8 = 1; // a-z, 0-9
const C_UPPER: u8 = 2;
const C_HYPHEN: u8 = 3;
const C_DOT: u8 = 4;
const C_COLON: u8 = 5;

/// Byte classes for the single-pass host scanner (a table beats a chain of range checks).
static CLASS: [u8; 256] = {
    let mut t = [C_INVALID; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'a'..=b'z' | b'0'..=b'9' => C_LOWER,
            b'A'..=b'Z' => C_UPPER,
            b'-' => C_HYPHEN,
            b'.' => C_DOT,
            b':' => C_COLON,
            _ => C_INVALID,
        };
        i += 1;
    }
    t
};

/// Checks the label `raw[start..end]` once it is complete (per label, not per byte: this
/// keeps the scanner's per-byte loop to one well-predicted branch).
fn check_label(raw: &[u8], start: usize, end: usize) -> Result<(), HostError> {
    let len = end.saturating_sub(start);
    if len == 0 {
        return Err(HostError::EmptyLabel);
    }
    if len > MAX_LABEL_LEN {
        return Err(HostError::LabelTooLong);
    }
    if end.checked_sub(1).and_then(|last| raw.get(last)) == Some(&b'-') {
        return Err(HostError::LabelHyphen);
    }
    Ok(())
}

/// Scans a host name with optional `:port` in one pass: DNS syntax (RFC 1123 labels of
/// `a-z0-9-`, no leading/trailing `-`; underscores refused), the port, and one trailing dot.
fn parse_name(raw: &[u8]) -> Result<Parsed<'_>, HostError> {
    let mut has_upper = false;
    let mut label_start = 0usize;
    let mut end = raw.len();
    let mut port = None;
    for (i, &c) in raw.iter().enumerate() {
        let class = CLASS[usize::from(c)];
        if class == C_LOWER {
            continue;
        }
        match class {
            C_UPPER => has_upper = true,
            C_HYPHEN => {
                if i == label_start {
                    return Err(HostError::LabelHyphen);
                }
            }
            C_DOT => {
                if i == 0 && matches!(raw.get(1), None | Some(b':')) {
                    // A lone "." is the root: empty once the trailing dot is stripped.
                    return Err(HostError::Empty);
                }
                check_label(raw, label_start, i)?;
                label_start = i + 1;
            }
            C_COLON => {
                port = Some(parse_port(raw.get(i + 1..).unwrap_or_default())?);
                end = i;
                break;
            }
            _ => return Err(HostError::InvalidCharacter),
        }
    }
    let mut name = raw.get(..end).unwrap_or_default();
    if name.is_empty() {
        return Err(HostError::Empty);
    }
    if label_start == end {
        // Ends in a dot whose label was checked above: strip exactly one.
        name = name.get(..end - 1).unwrap_or_default();
    } else {
        check_label(raw, label_start, end)?;
    }
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    Ok(Parsed {
        host: name,
        port,
        kind: HostKind::Name { has_upper },
    })
}

fn parse_host(raw: &[u8]) -> Result<Parsed<'_>, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if raw.len() > MAX_RAW_HOST_LEN {
        return Err(HostError::TooLong);
    }
    let Some(after_open) = raw.strip_prefix(b"[") else {
        return parse_name(raw);
    };
    let close = after_open
        .iter()
        .position(|&c| c == b']')
        .ok_or(HostError::InvalidIpLiteral)?;
    let (inner, rest) = after_open.split_at(close);
    let port = match rest {
        [b']'] => None,
        [b']', b':', digits @ ..] => Some(parse_port(digits)?),
        _ => return Err(HostError::InvalidIpLiteral),
    };
    let inner = std::str::from_utf8(inner).map_err(|_| HostError::InvalidIpLiteral)?;
    let addr: Ipv6Addr = inner.parse().map_err(|_| HostError::InvalidIpLiteral)?;
    Ok(Parsed {
        host: raw.get(..close + 2).ok_or(HostError::InvalidIpLiteral)?,
        port,
        kind: HostKind::Ipv6(addr),
    })
}

/// Writes `[addr]` in canonical form into `buf`; the caller's buffer keeps this allocation-free.
fn write_ipv6<'b>(addr: &Ipv6Addr, buf: &'b mut [u8; MAX_IPV6_LITERAL_LEN]) -> Option<&'b [u8]> {
    let mut cursor: &mut [u8] = &mut buf[..];
    write!(cursor, "[{addr}]").ok()?;
    let len = MAX_IPV6_LITERAL_LEN - cursor.len();
    buf.get(..len)
}

/// Hosts are ASCII once parsed, so this never fails; it exists to avoid `unsafe`/`unwrap`.
fn ascii_str(b: &[u8]) -> Result<&str, HostError> {
    std::str::from_utf8(b).map_err(|_| HostError::InvalidCharacter)
}

/// Normalises a raw `Host` header value (or URI authority): lowercase, strip `:port`
/// (1..=65535), strip ONE trailing dot, validate DNS syntax (labels of `a-z0-9-`, 1..=63 long,
/// no leading/trailing `-`, at most 253 in total). `[IPv6]` literals are accepted and
/// canonicalised; IPv4 literals pass as ordinary names. Borrows from `raw` unless the host had
/// uppercase letters or a non-canonical IPv6 spelling.
pub fn normalize_host(raw: &[u8]) -> Result<NormalizedHost<'_>, HostError> {
    let parsed = parse_host(raw)?;
    let host = match parsed.kind {
        HostKind::Name { has_upper: false } => Cow::Borrowed(ascii_str(parsed.host)?),
        HostKind::Name { has_upper: true } => {
            Cow::Owned(ascii_str(parsed.host)?.to_ascii_lowercase())
        }
        HostKind::Ipv6(addr) => {
            let mut buf = [0u8; MAX_IPV6_LITERAL_LEN];
            let canonical = write_ipv6(&addr, &mut buf).ok_or(HostError::InvalidIpLiteral)?;
            if canonical == parsed.host {
                Cow::Borrowed(ascii_str(parsed.host)?)
            } else {
                Cow::Owned(ascii_str(canonical)?.to_owned())
            }
        }
    };
    Ok(NormalizedHost {
        host,
        port: parsed.port,
    })
}

/// Normalises `raw` (into a stack buffer when it must change) and hands the normalised bytes to
/// `f`: the request path's allocation-free variant of [`normalize_host`].
fn with_normalized_host<R>(raw: &[u8], f: impl FnOnce(&[u8]) -> R) -> Result<R, HostError> {
    let parsed = parse_host(raw)?;
    match parsed.kind {
        HostKind::Name { has_upper: false } => Ok(f(parsed.host)),
        HostKind::Name { has_upper: true } => {
            let mut buf = [0u8; MAX_HOST_LEN];
            let src = parsed.host;
            let dst = buf.get_mut(..src.len()).ok_or(HostError::TooLong)?;
            for (d, s) in dst.iter_mut().zip(src) {
                *d = s.to_ascii_lowercase();
            }
            Ok(f(dst))
        }
        HostKind::Ipv6(addr) => {
            let mut buf = [0u8; MAX_IPV6_LITERAL_LEN];
            let canonical = write_ipv6(&addr, &mut buf).ok_or(HostError::InvalidIpLiteral)?;
            Ok(f(canonical))
        }
    }
}

/// Normalises a host name written in configuration: same rules as [`normalize_host`], but a
/// port is refused ([`HostError::PortNotAllowed`]) because request ports are ignored for tenant
/// lookup, so a configured port could never match.
pub fn normalize_config_host(s: &str) -> Result<String, HostError> {
    let n = normalize_host(s.as_bytes())?;
    if n.port.is_some() {
        return Err(HostError::PortNotAllowed);
    }
    Ok(n.host.into_owned())
}

/// Validates a host name for configuration (any case, optional single trailing dot, no port).
/// Store the output of [`normalize_config_host`], which applies the same rules.
pub fn validate_host_name(s: &str) -> Result<(), HostError> {
    normalize_config_host(s).map(|_| ())
}

/// Whether an absolute-form request target's authority and the `Host` header name the same
/// origin. Rule: both must be valid hosts and their normalised hosts equal (a host mismatch is
/// always a refusal); ports are compared only when BOTH carry one, because a missing port is
/// the scheme default and proxies and clients disagree about spelling it out.
pub fn same_authority(absolute_form_authority: &str, host_header: &str) -> bool {
    let (Ok(a), Ok(h)) = (
        normalize_host(absolute_form_authority.as_bytes()),
        normalize_host(host_header.as_bytes()),
    ) else {
        return false;
    };
    if a.host != h.host {
        return false;
    }
    match (a.port, h.port) {
        (Some(pa), Some(ph)) => pa == ph,
        _ => true,
    }
}

/// Whether `b` is one valid lowercase DNS label: what a pattern may turn into a tenant id.
fn is_dns_label(b: &[u8]) -> bool {
    !b.is_empty()
        && b.len() <= MAX_LABEL_LEN
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

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
pub use crate::error::BuildError;

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
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
        let other = TenantTable::build(vec![], vec![regex(r"(?P<tenant>[a-z]+)", "o-{tenant}")], 4)
            .unwrap();
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
            serde_json::from_str::<TenantDef>(r#"{"id":"a","realm":"r","statu":"active"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<TenantDef>(r#"{"id":"a","realm":"r","status":"paused"}"#)
                .is_err()
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
}
