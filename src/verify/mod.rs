//! Access-token verification: extraction, JOSE header policy, claims, signature, the
//! forwarded [`Identity`], and the verified-token cache.
//!
//! Every check fails closed and maps to a stable [`AuthError::code`]. Cheap checks run before
//! anything that costs: header policy and `alg` before the realm is resolved; issuer, times,
//! token type, audience and subject before the key lookup (so only a plausible token can make
//! an unknown `kid` trigger a JWKS refetch) and before RSA.
//!
//! Why signatures are verified with aws-lc-rs directly instead of `jsonwebtoken::decode`:
//! `decode` parses the header into a general struct, clones the key and re-parses the RSA
//! modulus on every call, and deserialises the claims twice (once for validation, once for
//! the caller), and we need a third pass for the identity. Keys here are parsed once into
//! `ParsedPublicKey`s ([`crate::jwks`]), the claims are read once with a seed that keeps only
//! what the policy uses, and the uncached path stays within a few microseconds of the raw RSA
//! verification (see `benches/verify.rs`, which also measures `jsonwebtoken::decode`).
//! `jsonwebtoken` remains the signer in tests and the reference in the bench.
//!
//! Empty audience list: the config layer must require at least one audience. A [`Verifier`]
//! built with none refuses every token with `audience_mismatch` (fail closed) rather than
//! accepting tokens minted for any client of the realm.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::{Histogram, IntCounter};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, error};

use crate::jwks::{Alg, KeyError, KeyRefusal, KeyStore, PreparedKey};
use crate::metrics::metrics;

/// Default cap on a token's size; bigger ones are `token_too_large` (401), never a 500.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request was not authenticated. Codes are stable (metrics, logs, JSON bodies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no access token")]
    MissingToken,
    #[error("malformed access token")]
    MalformedToken,
    #[error("access token too large")]
    TokenTooLarge,
    #[error("token expired")]
    TokenExpired,
    #[error("token not yet valid")]
    TokenNotYetValid,
    #[error("token issued in the future")]
    TokenIssuedInFuture,
    #[error("token issuer does not match the tenant's realm")]
    IssuerMismatch,
    #[error("token audience not accepted")]
    AudienceMismatch,
    #[error("not an access token")]
    WrongTokenType,
    #[error("token algorithm not allowed")]
    AlgNotAllowed,
    #[error("forbidden token header")]
    ForbiddenHeader,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad token signature")]
    BadSignature,
    #[error("token has no usable subject")]
    MissingSubject,
    #[error("realm keys unavailable")]
    RealmUnavailable { retry_after_secs: u64 },
    #[error("unknown tenant")]
    UnknownTenant,
}

impl AuthError {
    /// Stable snake_case reason code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedToken => "malformed_token",
            AuthError::TokenTooLarge => "token_too_large",
            AuthError::TokenExpired => "token_expired",
            AuthError::TokenNotYetValid => "token_not_yet_valid",
            AuthError::TokenIssuedInFuture => "token_issued_in_future",
            AuthError::IssuerMismatch => "issuer_mismatch",
            AuthError::AudienceMismatch => "audience_mismatch",
            AuthError::WrongTokenType => "wrong_token_type",
            AuthError::AlgNotAllowed => "alg_not_allowed",
            AuthError::ForbiddenHeader => "forbidden_header",
            AuthError::UnknownKey => "unknown_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::MissingSubject => "missing_subject",
            AuthError::RealmUnavailable { .. } => "realm_unavailable",
            AuthError::UnknownTenant => "unknown_tenant",
        }
    }

    /// 401 for token problems, 503 when keys can't be had, 404 for unknown tenants.
    pub fn http_status(&self) -> u16 {
        match self {
            AuthError::RealmUnavailable { .. } => 503,
            AuthError::UnknownTenant => 404,
            _ => 401,
        }
    }

    /// Short human text for `error_description`: no internals, never the token.
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "Authentication required",
            AuthError::MalformedToken => "The access token is malformed",
            AuthError::TokenTooLarge => "The access token is too large",
            AuthError::TokenExpired => "The access token expired",
            AuthError::TokenNotYetValid => "The access token is not valid yet",
            AuthError::TokenIssuedInFuture => "The access token was issued in the future",
            AuthError::IssuerMismatch => "The access token was issued for another tenant",
            AuthError::AudienceMismatch => "The access token is not intended for this service",
            AuthError::WrongTokenType => "Only access tokens are accepted",
            AuthError::AlgNotAllowed => "The access token's signature algorithm is not allowed",
            AuthError::ForbiddenHeader => "The access token's header is not accepted",
            AuthError::UnknownKey => "The access token was signed with an unknown key",
            AuthError::BadSignature => "The access token's signature is invalid",
            AuthError::MissingSubject => "The access token has no subject",
            AuthError::RealmUnavailable { .. } => {
                "The identity provider is unavailable, try again later"
            }
            AuthError::UnknownTenant => "Unknown tenant",
        }
    }

    /// RFC 6750 §3.1: when the request simply lacks a token, the challenge carries no
    /// `error` attribute.
    pub fn is_missing(&self) -> bool {
        matches!(self, AuthError::MissingToken)
    }

    /// The `error` attribute for `WWW-Authenticate: Bearer` (None: omit it, or not a 401).
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self.http_status() {
            401 if !self.is_missing() => Some("invalid_token"),
            _ => None,
        }
    }

    /// Seconds for a `Retry-After` header (503 only).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            AuthError::RealmUnavailable { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// The key store's refusals, under the codes and statuses defined here (the store does not
/// know `AuthError`; see [`KeyError`]).
impl From<KeyError> for AuthError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::UnknownTenant => AuthError::UnknownTenant,
            KeyError::RealmUnavailable { retry_after_secs } => {
                AuthError::RealmUnavailable { retry_after_secs }
            }
            KeyError::UnknownKey => AuthError::UnknownKey,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

/// Finds the request's access token: `Authorization: Bearer <t>` (scheme case-insensitive,
/// exactly one Authorization header), else the configured cookie, else the `access_token`
/// query parameter when `allow_query`. A header (or cookie) token together with a query token
/// is malformed (RFC 6750 §2: one method per request). Tokens over `max_token_bytes` are
/// `token_too_large`. `Ok(None)`: no token at all.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    cookie: Option<&str>,
    query: Option<&'a str>,
    allow_query: bool,
    max_token_bytes: usize,
) -> Result<Option<&'a str>, AuthError> {
    let sized = |t: &'a str| -> Result<Option<&'a str>, AuthError> {
        if t.len() > max_token_bytes {
            Err(AuthError::TokenTooLarge)
        } else if t.is_empty() {
            Err(AuthError::MalformedToken)
        } else {
            Ok(Some(t))
        }
    };
    let query_token = match (allow_query, query) {
        (true, Some(q)) => query_param(q, "access_token")?,
        _ => None,
    };
    let mut auth = headers.get_all(http::header::AUTHORIZATION).iter();
    let from_header = match (auth.next(), auth.next()) {
        (None, _) => None,
        (Some(_), Some(_)) => return Err(AuthError::MalformedToken),
        (Some(v), None) => {
            if v.len() > max_token_bytes + 64 {
                return Err(AuthError::TokenTooLarge);
            }
            // UTF-8 rather than `to_str`'s visible-ASCII walk: anything but base64url and
            // dots fails decoding anyway, and this check is vectorised.
            let s = std::str::from_utf8(v.as_bytes()).map_err(|_| AuthError::MalformedToken)?;
            let (scheme, rest) = s
                .trim_start()
                .split_once(' ')
                .ok_or(AuthError::MalformedToken)?;
            if !scheme.eq_ignore_ascii_case("bearer") {
                return Err(AuthError::MalformedToken);
            }
            let t = rest.trim_matches(|c| c == ' ' || c == '\t');
            // memchr: a char-set `contains` walks a ~1 KiB token a char at a time.
            if memchr::memchr2(b' ', b'\t', t.as_bytes()).is_some() {
                return Err(AuthError::MalformedToken);
            }
            Some(t)
        }
    };
    let from_cookie = match (from_header, cookie) {
        (None, Some(name)) => cookie_value(headers, name)?,
        _ => None,
    };
    match (from_header.or(from_cookie), query_token) {
        (Some(_), Some(_)) => Err(AuthError::MalformedToken),
        (Some(t), None) | (None, Some(t)) => sized(t),
        (None, None) => Ok(None),
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            if found.is_some() {
                return Err(AuthError::MalformedToken);
            }
            found = Some(v);
        }
    }
    Ok(found)
}

fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = None;
    for h in headers.get_all(http::header::COOKIE) {
        let Ok(s) = h.to_str() else { continue };
        for pair in s.split(';') {
            let Some((k, v)) = pair.trim().split_once('=') else {
                continue;
            };
            if k.trim() == name {
                if found.is_some() {
                    // Two cookies of that name (e.g. one planted from a sibling domain):
                    // ambiguous, so refuse rather than guess.
                    return Err(AuthError::MalformedToken);
                }
                let v = v.trim();
                found = Some(
                    v.strip_prefix('"')
                        .and_then(|x| x.strip_suffix('"'))
                        .unwrap_or(v),
                );
            }
        }
    }
    Ok(found)
}

// ---------------------------------------------------------------------------------------------
// Settings and policy
// ---------------------------------------------------------------------------------------------

/// Token policy; compiled into the verifier, replaced on reload with [`Verifier::update_settings`].
#[derive(Clone, Debug, PartialEq)]
pub struct VerifySettings {
    /// Accepted audiences: `aud` (string or array) or `azp` must contain one. Required.
    pub audiences: Vec<String>,
    /// Clock skew tolerance for `exp`, `nbf`, `iat` (default 30 s).
    pub leeway: std::time::Duration,
    /// Larger tokens are `token_too_large` (default 16 KiB).
    pub max_token_bytes: usize,
    /// Cookie that may carry the token when there is no Authorization header.
    pub cookie_name: Option<String>,
    /// Accept `?access_token=` (RFC 6750 §2.3; off by default: URLs end up in logs).
    pub allow_query_token: bool,
    /// Clients whose `resource_access.{client}.roles` become client roles (empty: audiences).
    pub client_role_clients: Vec<String>,
    /// Claim holding permissions (array of strings or space-separated string).
    pub permissions_claim: Option<String>,
    /// `(claim, header)` pairs forwarded as extra headers; dotted claims walk objects
    /// (`address.country`) unless a top-level claim has that exact name.
    pub claim_headers: Vec<(String, String)>,
    /// Cap on any value destined for a header (default 1024 bytes).
    pub max_header_value_len: usize,
    /// Verified-token cache entries (default 100 000; 0 disables the cache).
    pub token_cache_capacity: usize,
}

impl Default for VerifySettings {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            leeway: std::time::Duration::from_secs(30),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            cookie_name: None,
            allow_query_token: false,
            client_role_clients: Vec::new(),
            permissions_claim: None,
            claim_headers: Vec::new(),
            max_header_value_len: 1024,
            token_cache_capacity: 100_000,
        }
    }
}

impl VerifySettings {
    /// Every problem the config layer should refuse at load time.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.audiences.is_empty() {
            errs.push("at least one audience is required".to_string());
        }
        if self.audiences.iter().any(|a| a.is_empty()) {
            errs.push("audiences must not be empty strings".into());
        }
        if self.max_token_bytes < 256 {
            errs.push("max_token_bytes must be at least 256".into());
        }
        if self.max_header_value_len < 16 {
            errs.push("max_header_value_len must be at least 16".into());
        }
        for (claim, header) in &self.claim_headers {
            if claim.is_empty() {
                errs.push(format!("claim header {header:?}: empty claim name"));
            }
            if HeaderName::from_bytes(header.as_bytes()).is_err() {
                errs.push(format!("claim header {header:?}: not a valid header name"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

struct ClaimPath {
    full: Box<str>,
    segments: Box<[Box<str>]>,
}

impl ClaimPath {
    fn new(s: &str) -> Self {
        Self {
            full: s.into(),
            segments: s.split('.').map(Box::from).collect(),
        }
    }

    fn resolve<'v>(&self, captured: &'v [(BStr<'_>, Value)]) -> Option<&'v Value> {
        if let Some((_, v)) = captured.iter().find(|(k, _)| *k.0 == *self.full) {
            return Some(v);
        }
        let (first, rest) = self.segments.split_first()?;
        if rest.is_empty() {
            return None;
        }
        let mut v = captured
            .iter()
            .find(|(k, _)| *k.0 == **first)
            .map(|(_, v)| v)?;
        for seg in rest {
            v = v.get(&**seg)?;
        }
        Some(v)
    }
}

/// Verified identities by token hash; each carries its [`Proof`]. Bound: the cache's capacity;
/// eviction: quick_cache CLOCK-Pro.
type TokenCache = quick_cache::sync::Cache<u64, Arc<Identity>>;

/// Signature characters a cache entry pins: 24 base64url characters are 144 bits of the
/// signature (every supported signature is at least 86 characters, so the tail never reaches
/// the payload).
const SIG_TAIL: usize = 24;

/// The last [`SIG_TAIL`] bytes of `token`, zero-padded on the left if it is shorter.
fn sig_tail(token: &str) -> [u8; SIG_TAIL] {
    let b = token.as_bytes();
    let n = b.len().min(SIG_TAIL);
    let mut t = [0u8; SIG_TAIL];
    t[SIG_TAIL - n..].copy_from_slice(&b[b.len() - n..]);
    t
}

/// Compiled [`VerifySettings`].
struct Policy {
    generation: u64,
    settings: VerifySettings,
    audiences: Box<[Box<str>]>,
    clients: Box<[Box<str>]>,
    leeway: u64,
    max_token_bytes: usize,
    max_value_len: usize,
    permissions: Option<ClaimPath>,
    extras: Box<[(ClaimPath, HeaderName)]>,
    /// Top-level claim names kept as JSON values for `permissions`/`extras`.
    capture: Box<[Box<str>]>,
    cache: Option<Arc<TokenCache>>,
}

impl Policy {
    fn compile(settings: VerifySettings, generation: u64, cache: Option<Arc<TokenCache>>) -> Self {
        let clients = if settings.client_role_clients.is_empty() {
            &settings.audiences
        } else {
            &settings.client_role_clients
        };
        let mut extras = Vec::new();
        for (claim, header) in &settings.claim_headers {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) if !claim.is_empty() => extras.push((ClaimPath::new(claim), h)),
                _ => {
                    error!(claim = %claim, header = %header, "invalid claim header mapping ignored")
                }
            }
        }
        let permissions = settings.permissions_claim.as_deref().map(ClaimPath::new);
        let mut capture: Vec<Box<str>> = Vec::new();
        for p in permissions.iter().chain(extras.iter().map(|(p, _)| p)) {
            for name in [&p.full, &p.segments[0]] {
                if !capture.contains(name) {
                    capture.push(name.clone());
                }
            }
        }
        Self {
            generation,
            audiences: settings
                .audiences
                .iter()
                .map(|s| Box::from(s.as_str()))
                .collect(),
            clients: clients.iter().map(|s| Box::from(s.as_str())).collect(),
            leeway: settings.leeway.as_secs(),
            max_token_bytes: settings.max_token_bytes,
            max_value_len: settings.max_header_value_len.max(1),
            permissions,
            extras: extras.into_boxed_slice(),
            capture: capture.into_boxed_slice(),
            cache,
            settings,
        }
    }

    fn captures(&self, name: &str) -> bool {
        self.capture.iter().any(|c| **c == *name)
    }
}

// ---------------------------------------------------------------------------------------------
// Identity
// ---------------------------------------------------------------------------------------------

/// Names already taken, for deduplication without allocating: quick hashes compared first,
/// bytes on a hash match, in a fixed inline array; a hash set past that, so a token with
/// thousands of roles stays linear.
struct Seen<'a> {
    small: [(u64, &'a str); SEEN_INLINE],
    len: usize,
    big: Option<std::collections::HashSet<&'a str, ahash::RandomState>>,
}

const SEEN_INLINE: usize = 32;

impl<'a> Seen<'a> {
    fn new() -> Self {
        Self {
            small: [(0, ""); SEEN_INLINE],
            len: 0,
            big: None,
        }
    }

    fn contains(&self, name: &str) -> bool {
        match &self.big {
            Some(set) => set.contains(name),
            None => {
                let h = quick_hash(name);
                self.small[..self.len]
                    .iter()
                    .any(|(x, s)| *x == h && *s == name)
            }
        }
    }

    /// False if `name` was already there.
    fn insert(&mut self, name: &'a str) -> bool {
        if let Some(set) = &mut self.big {
            return set.insert(name);
        }
        if self.contains(name) {
            return false;
        }
        if self.len == SEEN_INLINE {
            let mut set: std::collections::HashSet<&'a str, ahash::RandomState> =
                self.small.iter().map(|(_, s)| *s).collect();
            set.insert(name);
            self.big = Some(set);
            return true;
        }
        self.small[self.len] = (quick_hash(name), name);
        self.len += 1;
        true
    }
}

/// A fast non-cryptographic hash (FxHash-style, 8 bytes per step) for deduplication only;
/// equal hashes are always confirmed by comparing the strings.
fn quick_hash(s: &str) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut chunks = s.as_bytes().chunks_exact(8);
    let mut h = s.len() as u64;
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
    }
    let mut w = [0u8; 8];
    let rest = chunks.remainder();
    w[..rest.len()].copy_from_slice(rest);
    (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K)
}

/// Role and client names shared by every identity that carries them: a realm has a few dozen
/// roles and the verified-token cache may hold 100 000 identities, so one `Arc<str>` per
/// distinct name instead of one allocation per role per token (and no malloc on the miss
/// path once warm).
/// Bound: [`ROLE_NAMES_CAPACITY`] names, quick_cache CLOCK-Pro eviction; an evicted name is
/// simply allocated again on next sight (identities keep their `Arc`s).
static ROLE_NAMES: std::sync::LazyLock<quick_cache::sync::Cache<Box<str>, Arc<str>>> =
    std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(ROLE_NAMES_CAPACITY));

/// Bound of the role-name interner.
pub const ROLE_NAMES_CAPACITY: usize = 16_384;

fn intern_name(name: &str) -> Arc<str> {
    if let Some(a) = ROLE_NAMES.get(name) {
        return a;
    }
    let a: Arc<str> = Arc::from(name);
    ROLE_NAMES.insert(name.into(), a.clone());
    a
}

/// Distinct role combinations, shared by every identity that carries one: 100 000 cached
/// tokens of a realm with a few dozen role combinations hold a few dozen [`RoleSet`]s.
/// Bound: [`ROLE_SETS_CAPACITY`], quick_cache CLOCK-Pro eviction; an evicted combination is
/// built again on next sight (identities keep their `Arc`s).
static ROLE_SETS: std::sync::LazyLock<quick_cache::sync::Cache<u64, Arc<RoleSet>>> =
    std::sync::LazyLock::new(|| quick_cache::sync::Cache::new(ROLE_SETS_CAPACITY));
static ROLE_SET_HASHER: std::sync::LazyLock<ahash::RandomState> =
    std::sync::LazyLock::new(ahash::RandomState::new);

/// Bound of the role-combination interner.
pub const ROLE_SETS_CAPACITY: usize = 4_096;

/// Realm, client and combined role lists, each deduplicated; header-unsafe names and names
/// containing a comma (they would read as two roles in the joined header) are dropped.
fn build_roles<'a>(
    realm: impl Iterator<Item = &'a str>,
    client: impl Iterator<Item = &'a str>,
    max: usize,
) -> Arc<RoleSet> {
    let usable = move |r: &'a str| exact_clean(r, max).filter(|r| !r.contains(','));
    let mut in_realm = Seen::new();
    let realm_roles: Vec<&str> = realm
        .filter_map(usable)
        .filter(|r| in_realm.insert(r))
        .collect();
    let mut in_client = Seen::new();
    let client_roles: Vec<&str> = client
        .filter_map(usable)
        .filter(|r| in_client.insert(r))
        .collect();
    // Looked up by the names as they are in the token: a known combination costs no name
    // interning (a cache lookup and a reference count per role).
    let key = ROLE_SET_HASHER.hash_one((&realm_roles, &client_roles, max));
    if let Some(set) = ROLE_SETS.get(&key) {
        let same =
            |held: &[Arc<str>], seen: &[&str]| held.iter().map(|h| &**h).eq(seen.iter().copied());
        if set.max == max && same(&set.realm, &realm_roles) && same(&set.client, &client_roles) {
            return set;
        }
    }
    let realm_roles: Vec<Arc<str>> = realm_roles.into_iter().map(intern_name).collect();
    let client_roles: Vec<Arc<str>> = client_roles.into_iter().map(intern_name).collect();
    let mut all = Vec::with_capacity(realm_roles.len() + client_roles.len());
    all.extend(realm_roles.iter().cloned());
    all.extend(
        client_roles
            .iter()
            .filter(|r| !in_realm.contains(r))
            .cloned(),
    );
    let joined = join_capped(all.iter().map(|r| &**r), max);
    let set = Arc::new(RoleSet {
        realm: realm_roles.into_boxed_slice(),
        client: client_roles.into_boxed_slice(),
        all: all.into_boxed_slice(),
        header: HeaderValue::from_str(&joined).unwrap_or(HeaderValue::from_static("")),
        max,
    });
    ROLE_SETS.insert(key, set.clone());
    set
}

/// The verified caller, as the proxy forwards it. Every string is safe for an HTTP header
/// value: no control characters, trimmed, at most `max_header_value_len` bytes.
///
/// Compact on purpose: the verified-token cache holds up to 100 000 of these. The subject,
/// username and email share one buffer whose slices are the forwarded header values (a
/// reference-count bump and a byte check of the slice per request, no copy); roles are one
/// shared [`RoleSet`] per distinct combination.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// `sub`, then `preferred_username`, then `email`, back to back (UTF-8, header-safe).
    text: Bytes,
    sub_len: u32,
    username_len: u32,
    email_len: u32,
    /// Realm and client roles, shared by every identity that carries the same ones.
    pub role_set: Arc<RoleSet>,
    /// From the configured permissions claim.
    pub permissions: Box<[Box<str>]>,
    pub exp: u64,
    pub issuer: Arc<str>,
    /// `azp`: the client the token was issued to (interned: a realm has few clients).
    pub azp: Option<Arc<str>>,
    /// Configured claim -> header mappings that resolved to a value, in config order.
    pub extra: Box<[(HeaderName, HeaderValue)]>,
    /// How the token was verified, re-checked on every cache hit; None outside the cache.
    proof: Option<Proof>,
}

/// What a cache hit must still match: the token's last [`SIG_TAIL`] bytes and length, the
/// key that verified it (not retired since) and the policy generation.
#[derive(Clone)]
struct Proof {
    sig_tail: [u8; SIG_TAIL],
    len: u32,
    generation: u64,
    key: Arc<PreparedKey>,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof")
            .field("generation", &self.generation)
            .field("key", &self.key.kid())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Proof {
    fn eq(&self, o: &Self) -> bool {
        self.sig_tail == o.sig_tail
            && self.len == o.len
            && self.generation == o.generation
            && Arc::ptr_eq(&self.key, &o.key)
    }
}

/// A token's roles: realm roles, client roles (`resource_access.{client}.roles` over the
/// configured clients, in config order), each deduplicated, and their union.
#[derive(Debug, PartialEq)]
pub struct RoleSet {
    pub realm: Box<[Arc<str>]>,
    pub client: Box<[Arc<str>]>,
    /// Realm then client roles, each once: the permission-cache key and Redis role lookups.
    pub all: Box<[Arc<str>]>,
    /// `all` comma-joined; whole roles only (a role that would overflow the cap is left out,
    /// never cut).
    pub header: HeaderValue,
    /// The cap `header` was built with (part of the interning key).
    max: usize,
}

impl Identity {
    fn part(&self, start: u32, len: u32) -> &str {
        let (a, b) = (start as usize, (start + len) as usize);
        self.text
            .get(a..b)
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("")
    }

    fn value(&self, start: u32, len: u32) -> Option<HeaderValue> {
        let (a, b) = (start as usize, (start + len) as usize);
        (len > 0 && b <= self.text.len())
            .then(|| HeaderValue::from_maybe_shared(self.text.slice(a..b)).ok())
            .flatten()
    }

    pub fn sub(&self) -> &str {
        self.part(0, self.sub_len)
    }

    pub fn preferred_username(&self) -> Option<&str> {
        (self.username_len > 0).then(|| self.part(self.sub_len, self.username_len))
    }

    pub fn email(&self) -> Option<&str> {
        (self.email_len > 0).then(|| self.part(self.sub_len + self.username_len, self.email_len))
    }

    /// The user-id header value; None never happens for an identity this module built.
    pub fn sub_value(&self) -> Option<HeaderValue> {
        self.value(0, self.sub_len)
    }

    pub fn preferred_username_value(&self) -> Option<HeaderValue> {
        self.value(self.sub_len, self.username_len)
    }

    pub fn email_value(&self) -> Option<HeaderValue> {
        self.value(self.sub_len + self.username_len, self.email_len)
    }

    /// Realm roles then client roles, each once.
    pub fn all_roles(&self) -> &[Arc<str>] {
        &self.role_set.all
    }

    pub fn roles(&self) -> impl Iterator<Item = &str> {
        self.role_set.all.iter().map(|r| &**r)
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles().any(|r| r == role)
    }
}

/// `s` unchanged if it is already header-safe (non-empty, no control characters, no edge
/// whitespace, at most `max` bytes); else None. For values whose meaning must not shift
/// (subject, roles, permissions): altering them could forge a different name.
fn exact_clean(s: &str, max: usize) -> Option<&str> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= max
        && b[0] != b' '
        && b[b.len() - 1] != b' '
        && if b.iter().all(|c| (0x21..0x7f).contains(c) || *c == b' ') {
            true
        } else {
            !s.chars().any(char::is_control) && s.trim() == s
        };
    ok.then_some(s)
}

/// Informational values: control characters dropped, trimmed, cut to `max` bytes on a char
/// boundary. None if nothing remains.
fn sanitize(s: &str, max: usize) -> Option<String> {
    if let Some(clean) = exact_clean(s, max) {
        return Some(clean.to_owned());
    }
    let mut out: String = s.chars().filter(|c| !c.is_control()).collect();
    let trimmed_len = out.trim_end().len();
    out.truncate(trimmed_len);
    let lead = out.len() - out.trim_start().len();
    out.drain(..lead);
    if out.len() > max {
        let mut cut = max;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
        let t = out.trim_end().len();
        out.truncate(t);
    }
    (!out.is_empty()).then_some(out)
}

/// Joins items with `,` keeping whole items only, within `max` bytes. Items containing a
/// comma are skipped (they would read as two values downstream).
fn join_capped<'a>(items: impl Iterator<Item = &'a str> + Clone, max: usize) -> String {
    let total: usize = items.clone().map(|i| i.len() + 1).sum();
    let mut out = String::with_capacity(total.min(max));
    for item in items {
        if item.contains(',') {
            continue;
        }
        let extra = item.len() + usize::from(!out.is_empty());
        if out.len() + extra > max {
            continue;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(item);
    }
    out
}

fn render_scalar(v: &Value, max: usize) -> Option<String> {
    match v {
        Value::String(s) => sanitize(s, max),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn render_claim(v: &Value, max: usize) -> Option<String> {
    match v {
        Value::Array(items) => {
            let rendered: Vec<String> =
                items.iter().filter_map(|i| render_scalar(i, max)).collect();
            let joined = join_capped(rendered.iter().map(String::as_str), max);
            (!joined.is_empty()).then_some(joined)
        }
        other => render_scalar(other, max),
    }
}

fn build_identity(
    c: &Claims<'_>,
    policy: &Policy,
    issuer: Arc<str>,
) -> Result<Identity, AuthError> {
    let max = policy.max_value_len;
    let sub = c
        .sub
        .as_ref()
        .and_then(|s| exact_clean(&s.0, max))
        .ok_or(AuthError::MissingSubject)?;
    let role_set = build_roles(
        c.realm_roles.iter().map(|r| &*r.0),
        c.client_roles.iter().map(|r| &*r.0),
        max,
    );
    let mut permissions = Vec::new();
    if let Some(path) = &policy.permissions {
        match path.resolve(&c.captured) {
            Some(Value::Array(items)) => {
                for p in items.iter().filter_map(Value::as_str) {
                    if let Some(p) = exact_clean(p, max) {
                        permissions.push(Box::from(p));
                    }
                }
            }
            Some(Value::String(s)) => {
                for p in s.split_ascii_whitespace() {
                    if let Some(p) = exact_clean(p, max) {
                        permissions.push(Box::from(p));
                    }
                }
            }
            _ => {}
        }
    }
    let mut extra = Vec::new();
    for (path, header) in policy.extras.iter() {
        let Some(v) = path.resolve(&c.captured) else {
            continue;
        };
        if let Some(s) = render_claim(v, max) {
            if let Ok(hv) = HeaderValue::from_str(&s) {
                extra.push((header.clone(), hv));
            }
        }
    }
    // Only values that are valid header values are kept, so the slices served later always
    // convert (a sanitized string is, unless it holds bytes HTTP forbids).
    let header_safe = |s: &str| HeaderValue::from_str(s).is_ok();
    if !header_safe(sub) {
        return Err(AuthError::MissingSubject);
    }
    let username = c
        .preferred_username
        .as_ref()
        .and_then(|s| sanitize(&s.0, max))
        .filter(|s| header_safe(s));
    let email = c
        .email
        .as_ref()
        .and_then(|s| sanitize(&s.0, max))
        .filter(|s| header_safe(s));
    let (username, email) = (
        username.as_deref().unwrap_or(""),
        email.as_deref().unwrap_or(""),
    );
    let mut text = Vec::with_capacity(sub.len() + username.len() + email.len());
    text.extend_from_slice(sub.as_bytes());
    text.extend_from_slice(username.as_bytes());
    text.extend_from_slice(email.as_bytes());
    let len = |s: &str| u32::try_from(s.len()).map_err(|_| AuthError::MalformedToken);
    Ok(Identity {
        sub_len: len(sub)?,
        username_len: len(username)?,
        email_len: len(email)?,
        text: Bytes::from(text),
        role_set,
        permissions: permissions.into_boxed_slice(),
        exp: c.exp.unwrap_or(0),
        issuer,
        azp: c
            .azp
            .as_ref()
            .and_then(|s| sanitize(&s.0, max))
            .map(|s| intern_name(&s)),
        extra: extra.into_boxed_slice(),
        proof: None,
    })
}

// ---------------------------------------------------------------------------------------------
// JOSE header and claims (parsed once, borrowing from the decoded buffers)
// ---------------------------------------------------------------------------------------------

/// A string that borrows from the input when it has no escapes.
#[derive(Debug, Clone, PartialEq)]
struct BStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for BStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(BStr(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Set when a header parameter is present at all (even `null`).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d).map(|_| Present(true))
    }
}

#[derive(Deserialize)]
struct JoseHeader<'a> {
    #[serde(borrow)]
    alg: Option<BStr<'a>>,
    #[serde(borrow, default)]
    kid: Option<BStr<'a>>,
    #[serde(default)]
    jku: Present,
    #[serde(default)]
    x5u: Present,
    #[serde(default)]
    jwk: Present,
    #[serde(default)]
    x5c: Present,
    #[serde(default)]
    crit: Present,
}

impl JoseHeader<'_> {
    /// Key-in-token and key-by-URL parameters would let the token choose its own key; `crit`
    /// names extensions we do not implement (RFC 7515 §4.1.11 says: reject).
    fn forbidden(&self) -> bool {
        self.jku.0 || self.x5u.0 || self.jwk.0 || self.x5c.0 || self.crit.0
    }
}

#[derive(Default, Debug)]
enum Aud<'a> {
    #[default]
    None,
    One(BStr<'a>),
    Many(Vec<BStr<'a>>),
}

impl<'a> Aud<'a> {
    fn any(&self, mut f: impl FnMut(&str) -> bool) -> bool {
        match self {
            Aud::None => false,
            Aud::One(s) => f(&s.0),
            Aud::Many(v) => v.iter().any(|s| f(&s.0)),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Aud<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Aud<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Aud::One(BStr(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Aud::One(BStr(Cow::Owned(v.to_owned()))))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(Aud::None)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<BStr<'de>>()? {
                    out.push(s);
                }
                Ok(Aud::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// NumericDate (RFC 7519 §2): non-negative integer or fraction (floored).
struct NumericDate(u64);

impl<'de> Deserialize<'de> for NumericDate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumericDate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a NumericDate")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(NumericDate(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u64::try_from(v)
                    .map(NumericDate)
                    .map_err(|_| E::custom("negative date"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if (0.0..1.8e19).contains(&v) {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    Ok(NumericDate(v.floor() as u64))
                } else {
                    Err(E::custom("bad date"))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct Access<'a> {
    #[serde(borrow, default)]
    roles: Roles<'a>,
}

/// A role array, pre-sized (JSON gives no length hint; Keycloak tokens carry dozens).
#[derive(Default)]
struct Roles<'a>(Vec<BStr<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for Roles<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Roles<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of role names")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(16).min(256));
                while let Some(s) = seq.next_element::<BStr<'de>>()? {
                    out.push(s);
                }
                Ok(Roles(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `resource_access`, keeping only the configured clients' roles.
struct ResourceAccessSeed<'p, 'c, 'a> {
    clients: &'p [Box<str>],
    out: &'c mut Vec<BStr<'a>>,
}

impl<'de: 'a, 'a> DeserializeSeed<'de> for ResourceAccessSeed<'_, '_, 'a> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> Visitor<'de> for ResourceAccessSeed<'_, '_, 'a> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("resource_access object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Roles come out in configured-client order, whatever the document order.
        let mut seen: u64 = 0;
        let mut parts: Vec<(usize, Vec<BStr<'a>>)> = Vec::new();
        while let Some(client) = map.next_key::<BStr<'de>>()? {
            match self.clients.iter().position(|c| **c == *client.0) {
                Some(i) => {
                    let dup = if i < 64 {
                        let d = seen & (1 << i) != 0;
                        seen |= 1 << i;
                        d
                    } else {
                        parts.iter().any(|(j, _)| *j == i)
                    };
                    if dup {
                        return Err(de::Error::custom("duplicate client in resource_access"));
                    }
                    let access: Access<'de> = map.next_value()?;
                    if self.clients.len() == 1 {
                        // The common case: one client, nothing to order, no extra Vec.
                        *self.out = access.roles.0;
                    } else {
                        parts.push((i, access.roles.0));
                    }
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        parts.sort_by_key(|(i, _)| *i);
        for (_, roles) in parts {
            if self.out.is_empty() {
                *self.out = roles;
            } else {
                self.out.extend(roles);
            }
        }
        Ok(())
    }
}

/// The claims realmgate reads. Known claims are typed; the policy's extra claims are kept as
/// JSON values; everything else is skipped without allocating.
#[derive(Default, Debug)]
struct Claims<'a> {
    iss: Option<BStr<'a>>,
    sub: Option<BStr<'a>>,
    azp: Option<BStr<'a>>,
    typ: Option<BStr<'a>>,
    preferred_username: Option<BStr<'a>>,
    email: Option<BStr<'a>>,
    aud: Aud<'a>,
    exp: Option<u64>,
    nbf: Option<u64>,
    iat: Option<u64>,
    realm_roles: Vec<BStr<'a>>,
    client_roles: Vec<BStr<'a>>,
    captured: Vec<(BStr<'a>, Value)>,
}

struct ClaimsSeed<'p> {
    policy: &'p Policy,
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Claims<'de>, D::Error> {
        d.deserialize_map(self)
    }
}

fn once<T, E: de::Error>(slot: &mut Option<T>, v: T, name: &str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::custom(format_args!("duplicate claim {name}")));
    }
    *slot = Some(v);
    Ok(())
}

/// Fills a typed claim from its JSON value (for claims that are also captured).
fn fill_known<E: de::Error>(
    c: &mut Claims<'_>,
    key: &str,
    v: &Value,
    clients: &[Box<str>],
) -> Result<(), E> {
    let string = |v: &Value| -> Result<Option<BStr<'static>>, E> {
        match v {
            Value::Null => Ok(None),
            Value::String(s) => Ok(Some(BStr(Cow::Owned(s.clone())))),
            _ => Err(E::custom("claim is not a string")),
        }
    };
    let roles = |v: Option<&Value>| -> Vec<BStr<'static>> {
        v.and_then(|r| r.get("roles"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| BStr(Cow::Owned(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let date = |v: &Value| -> Result<u64, E> {
        NumericDate::deserialize(v)
            .map(|d| d.0)
            .map_err(|_| E::custom("bad date"))
    };
    match key {
        "iss" | "sub" | "azp" | "typ" | "preferred_username" | "email" => {
            if let Some(s) = string(v)? {
                let slot = match key {
                    "iss" => &mut c.iss,
                    "sub" => &mut c.sub,
                    "azp" => &mut c.azp,
                    "typ" => &mut c.typ,
                    "preferred_username" => &mut c.preferred_username,
                    _ => &mut c.email,
                };
                once(slot, s, key)?;
            }
        }
        "aud" => {
            c.aud = match v {
                Value::Null => Aud::None,
                Value::String(s) => Aud::One(BStr(Cow::Owned(s.clone()))),
                Value::Array(a) => Aud::Many(
                    a.iter()
                        .map(|x| {
                            x.as_str()
                                .map(|s| BStr(Cow::Owned(s.to_owned())))
                                .ok_or_else(|| E::custom("aud element is not a string"))
                        })
                        .collect::<Result<_, E>>()?,
                ),
                _ => return Err(E::custom("bad aud")),
            }
        }
        "exp" => once(&mut c.exp, date(v)?, key)?,
        "nbf" => once(&mut c.nbf, date(v)?, key)?,
        "iat" => once(&mut c.iat, date(v)?, key)?,
        "realm_access" => c.realm_roles = roles(Some(v)),
        "resource_access" => {
            for client in clients {
                c.client_roles.extend(roles(v.get(&**client)));
            }
        }
        _ => {}
    }
    Ok(())
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Claims<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claims object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims<'de>, A::Error> {
        let mut c = Claims::default();
        let mut seen_aud = false;
        let mut seen_roles = false;
        let mut seen_clients = false;
        while let Some(key) = map.next_key::<BStr<'de>>()? {
            let k: &str = &key.0;
            if self.policy.captures(k) {
                let v: Value = map.next_value()?;
                if c.captured.iter().any(|(x, _)| *x.0 == *k) {
                    return Err(de::Error::custom("duplicate claim"));
                }
                fill_known(&mut c, k, &v, &self.policy.clients)?;
                c.captured.push((key, v));
                continue;
            }
            match k {
                "iss" => {
                    let v = map.next_value::<Option<BStr<'de>>>()?;
                    if let Some(v) = v {
                        once(&mut c.iss, v, k)?;
                    }
                }
                "sub" | "azp" | "typ" | "preferred_username" | "email" => {
                    let v = map.next_value::<Option<BStr<'de>>>()?;
                    if let Some(v) = v {
                        let slot = match k {
                            "sub" => &mut c.sub,
                            "azp" => &mut c.azp,
                            "typ" => &mut c.typ,
                            "preferred_username" => &mut c.preferred_username,
                            _ => &mut c.email,
                        };
                        once(slot, v, k)?;
                    }
                }
                "aud" => {
                    if std::mem::replace(&mut seen_aud, true) {
                        return Err(de::Error::custom("duplicate claim aud"));
                    }
                    c.aud = map.next_value()?;
                }
                "exp" => once(&mut c.exp, map.next_value::<NumericDate>()?.0, k)?,
                "nbf" => once(&mut c.nbf, map.next_value::<NumericDate>()?.0, k)?,
                "iat" => once(&mut c.iat, map.next_value::<NumericDate>()?.0, k)?,
                "realm_access" => {
                    if std::mem::replace(&mut seen_roles, true) {
                        return Err(de::Error::custom("duplicate claim realm_access"));
                    }
                    let access: Option<Access<'de>> = map.next_value()?;
                    c.realm_roles = access.map(|a| a.roles.0).unwrap_or_default();
                }
                "resource_access" => {
                    if std::mem::replace(&mut seen_clients, true) {
                        return Err(de::Error::custom("duplicate claim resource_access"));
                    }
                    map.next_value_seed(ResourceAccessSeed {
                        clients: &self.policy.clients,
                        out: &mut c.client_roles,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(c)
    }
}

/// Largest decoded JOSE header accepted (Keycloak's is ~100 bytes).
const MAX_HEADER_BYTES: usize = 512;
/// Room for an RSA-8192 signature (1024 bytes) plus base64's decode slack.
const MAX_SIGNATURE_BYTES: usize = 1024 + 8;

fn b64_decode_into<'b>(s: &str, buf: &'b mut [u8]) -> Result<&'b [u8], AuthError> {
    if s.len() / 4 * 3 + 3 > buf.len() {
        return Err(AuthError::MalformedToken);
    }
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(s, buf)
        .map_err(|_| AuthError::MalformedToken)?;
    buf.get(..n).ok_or(AuthError::MalformedToken)
}

fn b64_decode(s: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AuthError::MalformedToken)
}

/// Issuer, time, type, audience and subject checks. Pure; shared by tests and `explain`.
fn check_claims(c: &Claims<'_>, policy: &Policy, issuer: &str, now: u64) -> Result<(), AuthError> {
    match &c.iss {
        Some(iss) if *iss.0 == *issuer => {}
        _ => return Err(AuthError::IssuerMismatch),
    }
    let exp = c.exp.ok_or(AuthError::MalformedToken)?;
    if !unexpired(exp, policy.leeway, now) {
        return Err(AuthError::TokenExpired);
    }
    if c.nbf
        .is_some_and(|nbf| nbf > now.saturating_add(policy.leeway))
    {
        return Err(AuthError::TokenNotYetValid);
    }
    if c.iat
        .is_some_and(|iat| iat > now.saturating_add(policy.leeway))
    {
        return Err(AuthError::TokenIssuedInFuture);
    }
    if let Some(typ) = &c.typ {
        if !typ.0.eq_ignore_ascii_case("Bearer") {
            return Err(AuthError::WrongTokenType);
        }
    }
    let accepted = |a: &str| policy.audiences.iter().any(|x| **x == *a);
    if !(c.aud.any(accepted) || c.azp.as_ref().is_some_and(|azp| accepted(&azp.0))) {
        return Err(AuthError::AudienceMismatch);
    }
    if c.sub.as_ref().is_none_or(|s| s.0.is_empty()) {
        return Err(AuthError::MissingSubject);
    }
    Ok(())
}

/// RFC 7519 §4.1.4: valid strictly before `exp`, plus leeway. The cache uses the same rule.
fn unexpired(exp: u64, leeway: u64, now: u64) -> bool {
    now < exp.saturating_add(leeway)
}

// ---------------------------------------------------------------------------------------------
// Verifier
// ---------------------------------------------------------------------------------------------

enum Cached {
    Hit(Arc<Identity>),
    Miss(Option<u64>),
    Reject(AuthError),
}

/// Verifies access tokens for realms held by a [`KeyStore`]. `Send + Sync`; share one.
///
/// The verified-token cache (bound: `token_cache_capacity` entries, quick_cache CLOCK-Pro
/// eviction) is keyed by a randomly seeded 64-bit ahash of the whole token, and an entry
/// stores the token's length and the last 24 characters of its signature (144 bits), which a
/// hit must match exactly. A hit therefore requires the same signature bytes, which only a
/// holder of the original token has, and it yields
/// that original token's verified identity: no hash collision can ever grant anything beyond
/// what presenting the original token would. SHA-256 of the whole token (the first design)
/// costs ~1.2 µs per KiB on this deployment class of CPU (Zen 1, 856 MB/s measured with
/// `openssl speed`), more than the whole 1 µs budget of a hit; ahash is ~10x faster. Raw
/// tokens are never stored. Every hit also re-checks: expiry (same rule and leeway as the
/// uncached path), that the realm's issuer still equals the entry's, that the realm's keys are
/// usable (not beyond `max_stale`), that the signing key was not retired by a refresh, and
/// that the policy generation (bumped on settings reload) is unchanged.
pub struct Verifier {
    keys: Arc<KeyStore>,
    policy: ArcSwap<Policy>,
    hasher: ahash::RandomState,
    cache_hit: IntCounter,
    cache_miss: IntCounter,
    cache_stale: IntCounter,
    duration_hit: Histogram,
    duration_miss: Histogram,
    /// `token_verify_total{tenant,result="ok"}` handles, so a cache hit costs one map lookup
    /// instead of label hashing. Bound: [`TENANT_COUNTERS`] tenants; beyond that the
    /// (slower) labelled lookup is used. Never evicted (tenants are few and long-lived).
    tenant_ok: dashmap::DashMap<Box<str>, IntCounter, ahash::RandomState>,
}

/// Bound of the per-tenant "ok" counter handle map.
const TENANT_COUNTERS: usize = 10_000;

impl Verifier {
    pub fn new(keys: Arc<KeyStore>, settings: VerifySettings) -> Self {
        let cache = (settings.token_cache_capacity > 0)
            .then(|| Arc::new(TokenCache::new(settings.token_cache_capacity)));
        let m = metrics();
        Self {
            keys,
            policy: ArcSwap::from_pointee(Policy::compile(settings, 1, cache)),
            hasher: ahash::RandomState::new(),
            cache_hit: m.token_cache_total.with_label_values(&["hit"]),
            cache_miss: m.token_cache_total.with_label_values(&["miss"]),
            cache_stale: m.token_cache_total.with_label_values(&["stale"]),
            duration_hit: m.token_verify_duration.with_label_values(&["hit"]),
            duration_miss: m.token_verify_duration.with_label_values(&["miss"]),
            tenant_ok: dashmap::DashMap::with_hasher(ahash::RandomState::new()),
        }
    }

    /// Applies reloaded settings. Unchanged settings keep everything; changed ones bump the
    /// policy generation so every cached verification is redone under the new policy.
    pub fn update_settings(&self, settings: VerifySettings) {
        let cur = self.policy.load_full();
        if cur.settings == settings {
            return;
        }
        let cache = match (&cur.cache, settings.token_cache_capacity) {
            (_, 0) => None,
            (Some(c), n) if cur.settings.token_cache_capacity == n => Some(c.clone()),
            (_, n) => Some(Arc::new(TokenCache::new(n))),
        };
        self.policy.store(Arc::new(Policy::compile(
            settings,
            cur.generation + 1,
            cache,
        )));
    }

    pub fn key_store(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    pub fn max_token_bytes(&self) -> usize {
        self.policy.load().max_token_bytes
    }

    /// The issuer tokens for `realm` must carry.
    pub fn issuer_for(&self, realm: &str) -> Arc<str> {
        self.keys.issuer_for(realm)
    }

    /// [`extract_token`] with this verifier's cookie, query and size settings.
    pub fn extract_token<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Result<Option<&'a str>, AuthError> {
        let p = self.policy.load();
        extract_token(
            headers,
            p.settings.cookie_name.as_deref(),
            query,
            p.settings.allow_query_token,
            p.max_token_bytes,
        )
    }

    /// Verifies `token` for `realm` (the realm the request's host maps to). A cache hit
    /// completes without awaiting anything.
    pub async fn verify(
        &self,
        tenant_id: &str,
        realm: &str,
        token: &str,
    ) -> Result<Arc<Identity>, AuthError> {
        let started = Instant::now();
        let (res, hit) = match self.cached(realm, token) {
            Cached::Hit(id) => (Ok(id), true),
            Cached::Reject(e) => (Err(e), false),
            Cached::Miss(key) => (self.verify_uncached(realm, token, key).await, false),
        };
        match &res {
            Ok(_) => self.count_ok(tenant_id),
            Err(e) => {
                debug!(tenant = %tenant_id, realm = %realm, code = e.code(), "token refused");
                metrics()
                    .token_verify_total
                    .with_label_values(&[metrics().tenants.label(tenant_id), e.code()])
                    .inc();
            }
        }
        let h = if hit {
            &self.duration_hit
        } else {
            &self.duration_miss
        };
        h.observe(started.elapsed().as_secs_f64());
        res
    }

    fn count_ok(&self, tenant_id: &str) {
        if let Some(c) = self.tenant_ok.get(tenant_id) {
            c.inc();
            return;
        }
        let c = metrics()
            .token_verify_total
            .with_label_values(&[metrics().tenants.label(tenant_id), "ok"]);
        c.inc();
        if self.tenant_ok.len() < TENANT_COUNTERS {
            self.tenant_ok.insert(tenant_id.into(), c);
        }
    }

    fn cached(&self, realm: &str, token: &str) -> Cached {
        let policy = self.policy.load();
        if token.len() > policy.max_token_bytes {
            return Cached::Reject(AuthError::TokenTooLarge);
        }
        let Some(cache) = &policy.cache else {
            return Cached::Miss(None);
        };
        let key = self.hasher.hash_one(token.as_bytes());
        let Some(identity) = cache.get(&key) else {
            self.cache_miss.inc();
            return Cached::Miss(Some(key));
        };
        let now = self.keys.now();
        let max_stale = self.keys.max_stale_secs();
        let fresh = identity.proof.as_ref().is_some_and(|p| {
            p.len as usize == token.len()
                && p.sig_tail == sig_tail(token)
                && p.generation == policy.generation
                && !p.key.is_retired()
        }) && unexpired(identity.exp, policy.leeway, now)
            && self
                .keys
                .with_realm(realm, |r| {
                    let ok = (Arc::ptr_eq(r.issuer(), &identity.issuer)
                        || *r.issuer() == identity.issuer)
                        && r.usable_at(now, max_stale);
                    if ok {
                        r.touch(now);
                    }
                    ok
                })
                .unwrap_or(false);
        if fresh {
            self.cache_hit.inc();
            Cached::Hit(identity)
        } else {
            self.cache_stale.inc();
            Cached::Miss(Some(key))
        }
    }

    async fn verify_uncached(
        &self,
        realm_name: &str,
        token: &str,
        cache_key: Option<u64>,
    ) -> Result<Arc<Identity>, AuthError> {
        let policy = self.policy.load_full();
        if token.len() > policy.max_token_bytes {
            return Err(AuthError::TokenTooLarge);
        }
        // Exactly three segments: the header has no '.', and a '.' left in the payload
        // segment (JWE, or junk) fails base64url decoding below.
        let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(AuthError::MalformedToken)?;
        let (header_b64, payload_b64) = signing_input
            .split_once('.')
            .ok_or(AuthError::MalformedToken)?;
        let mut header_buf = [0u8; MAX_HEADER_BYTES];
        let header_bytes = b64_decode_into(header_b64, &mut header_buf)?;
        let header: JoseHeader<'_> =
            serde_json::from_slice(header_bytes).map_err(|_| AuthError::MalformedToken)?;
        if header.forbidden() {
            return Err(AuthError::ForbiddenHeader);
        }
        let alg_name = header.alg.as_ref().ok_or(AuthError::MalformedToken)?;
        // `none`, HS*, and anything unknown end here, before any key is looked at.
        let alg = Alg::from_name(&alg_name.0).ok_or(AuthError::AlgNotAllowed)?;

        let realm = self.keys.realm(realm_name).await?;
        if !realm.allows(alg) {
            return Err(AuthError::AlgNotAllowed);
        }
        let payload = b64_decode(payload_b64)?;
        // One fast UTF-8 pass here lets serde_json skip validating every string it borrows.
        let payload = std::str::from_utf8(&payload).map_err(|_| AuthError::MalformedToken)?;
        let mut de = serde_json::Deserializer::from_str(payload);
        let claims = ClaimsSeed { policy: &policy }
            .deserialize(&mut de)
            .and_then(|c| de.end().map(|()| c))
            .map_err(|_| AuthError::MalformedToken)?;
        check_claims(&claims, &policy, realm.issuer(), self.keys.now())?;

        let kid = header.kid.as_ref().map(|k| &*k.0);
        let key = self.keys.key(&realm, kid).await?;
        if sig_b64.is_empty() {
            return Err(AuthError::BadSignature);
        }
        let mut sig_buf = [0u8; MAX_SIGNATURE_BYTES];
        let sig = b64_decode_into(sig_b64, &mut sig_buf)?;
        key.verify(alg, signing_input.as_bytes(), sig)
            .map_err(|r| match r {
                KeyRefusal::WrongAlg => AuthError::AlgNotAllowed,
                KeyRefusal::BadSignature => AuthError::BadSignature,
            })?;
        let mut identity = build_identity(&claims, &policy, realm.issuer().clone())?;
        if let (Some(cache), Some(k)) = (&policy.cache, cache_key) {
            identity.proof = Some(Proof {
                sig_tail: sig_tail(token),
                len: u32::try_from(token.len()).unwrap_or(u32::MAX),
                generation: policy.generation,
                key,
            });
            let identity = Arc::new(identity);
            cache.insert(k, identity.clone());
            return Ok(identity);
        }
        Ok(Arc::new(identity))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use crate::jwks::{key_store_with_clock, JwksSettings, KeyStore};
    use serde_json::json;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;
    use tokio::sync::watch;

    const AUD: &str = "qa-platform-backend";

    fn vs() -> VerifySettings {
        VerifySettings {
            audiences: vec![AUD.into()],
            ..VerifySettings::default()
        }
    }

    fn parse<'a>(p: &Policy, json: &'a str) -> Result<Claims<'a>, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(json);
        let c = ClaimsSeed { policy: p }.deserialize(&mut de)?;
        de.end()?;
        Ok(c)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    // ------------------------------------------------------------------ pure: extraction

    #[test]
    fn extraction_table() {
        use AuthError::*;
        let big = "a".repeat(64 * 1024);
        let bearer_big = format!("Bearer {big}");
        let big_header = [("authorization", bearer_big.as_str())];
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            Option<&'a str>,
            Option<&'a str>,
            bool,
            Result<Option<&'a str>, AuthError>,
        );
        let cases: Vec<Case<'_>> = vec![
            (&[], None, None, false, Ok(None)),
            (
                &[("authorization", "Bearer abc.def.ghi")],
                None,
                None,
                false,
                Ok(Some("abc.def.ghi")),
            ),
            (
                &[("authorization", "bearer abc")],
                None,
                None,
                false,
                Ok(Some("abc")),
            ),
            (
                &[("authorization", "BEARER   abc  ")],
                None,
                None,
                false,
                Ok(Some("abc")),
            ),
            (
                &[("authorization", "Bearer")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer ")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer a b")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Basic dXNlcjpwYXNz")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer a"), ("authorization", "Bearer b")],
                None,
                None,
                false,
                Err(MalformedToken),
            ),
            (&big_header, None, None, false, Err(TokenTooLarge)),
            // Cookie: used only without an Authorization header; duplicates are refused.
            (
                &[("cookie", "a=1; rg_token=tok; b=2")],
                Some("rg_token"),
                None,
                false,
                Ok(Some("tok")),
            ),
            (
                &[("cookie", "rg_token=\"tok\"")],
                Some("rg_token"),
                None,
                false,
                Ok(Some("tok")),
            ),
            (
                &[("cookie", "rg_token=tok"), ("authorization", "Bearer hdr")],
                Some("rg_token"),
                None,
                false,
                Ok(Some("hdr")),
            ),
            (
                &[("cookie", "rg_token=a"), ("cookie", "rg_token=b")],
                Some("rg_token"),
                None,
                false,
                Err(MalformedToken),
            ),
            (&[("cookie", "rg_token=tok")], None, None, false, Ok(None)),
            (
                &[("cookie", "other=tok")],
                Some("rg_token"),
                None,
                false,
                Ok(None),
            ),
            // Query: only when allowed; never together with a header token.
            (&[], None, Some("x=1&access_token=q"), false, Ok(None)),
            (&[], None, Some("x=1&access_token=q"), true, Ok(Some("q"))),
            (
                &[],
                None,
                Some("access_token=a&access_token=b"),
                true,
                Err(MalformedToken),
            ),
            (&[], None, Some("access_token="), true, Err(MalformedToken)),
            (
                &[("authorization", "Bearer h")],
                None,
                Some("access_token=q"),
                true,
                Err(MalformedToken),
            ),
            (
                &[("authorization", "Bearer h")],
                None,
                Some("access_token=q"),
                false,
                Ok(Some("h")),
            ),
        ];
        for (i, (hs, cookie, query, allow, want)) in cases.into_iter().enumerate() {
            let h = headers(hs);
            assert_eq!(
                extract_token(&h, cookie, query, allow, 16 * 1024),
                want,
                "case {i}"
            );
        }
        let q = format!("access_token={big}");
        assert_eq!(
            extract_token(&HeaderMap::new(), None, Some(&q), true, 16 * 1024),
            Err(TokenTooLarge)
        );
        let h = headers(&[("cookie", &format!("t={big}"))]);
        assert_eq!(
            extract_token(&h, Some("t"), None, false, 16 * 1024),
            Err(TokenTooLarge)
        );
    }

    #[test]
    fn error_codes_statuses_and_descriptions() {
        use AuthError::*;
        let all = [
            (MissingToken, "missing_token", 401),
            (MalformedToken, "malformed_token", 401),
            (TokenTooLarge, "token_too_large", 401),
            (TokenExpired, "token_expired", 401),
            (TokenNotYetValid, "token_not_yet_valid", 401),
            (TokenIssuedInFuture, "token_issued_in_future", 401),
            (IssuerMismatch, "issuer_mismatch", 401),
            (AudienceMismatch, "audience_mismatch", 401),
            (WrongTokenType, "wrong_token_type", 401),
            (AlgNotAllowed, "alg_not_allowed", 401),
            (ForbiddenHeader, "forbidden_header", 401),
            (UnknownKey, "unknown_key", 401),
            (BadSignature, "bad_signature", 401),
            (MissingSubject, "missing_subject", 401),
            (
                RealmUnavailable {
                    retry_after_secs: 7,
                },
                "realm_unavailable",
                503,
            ),
            (UnknownTenant, "unknown_tenant", 404),
        ];
        let mut codes = std::collections::HashSet::new();
        for (e, code, status) in all {
            assert_eq!(e.code(), code);
            assert!(codes.insert(code), "codes are unique");
            assert_eq!(e.http_status(), status, "{code}");
            let d = e.description();
            assert!(
                !d.is_empty() && d.len() < 80 && !d.contains('"'),
                "{code}: {d}"
            );
            assert_eq!(e.is_missing(), code == "missing_token");
            match status {
                401 if code != "missing_token" => {
                    assert_eq!(e.bearer_error(), Some("invalid_token"))
                }
                _ => assert_eq!(e.bearer_error(), None),
            }
        }
        assert_eq!(
            RealmUnavailable {
                retry_after_secs: 7
            }
            .retry_after_secs(),
            Some(7)
        );
        assert_eq!(BadSignature.retry_after_secs(), None);
    }

    #[test]
    fn key_errors_map_to_auth_errors() {
        for (e, want, code, status) in [
            (
                KeyError::UnknownTenant,
                AuthError::UnknownTenant,
                "unknown_tenant",
                404,
            ),
            (
                KeyError::RealmUnavailable {
                    retry_after_secs: 7,
                },
                AuthError::RealmUnavailable {
                    retry_after_secs: 7,
                },
                "realm_unavailable",
                503,
            ),
            (
                KeyError::UnknownKey,
                AuthError::UnknownKey,
                "unknown_key",
                401,
            ),
        ] {
            let got = AuthError::from(e);
            assert_eq!(got, want);
            assert_eq!((got.code(), got.http_status()), (code, status));
            assert_eq!(got.to_string(), e.to_string(), "same wording");
        }
        assert_eq!(
            AuthError::from(KeyError::RealmUnavailable {
                retry_after_secs: 7
            })
            .retry_after_secs(),
            Some(7)
        );
    }

    #[test]
    fn settings_validation() {
        assert!(vs().validate().is_ok());
        let errs = VerifySettings {
            claim_headers: vec![
                ("email".into(), "bad header".into()),
                ("".into(), "x-a".into()),
            ],
            max_token_bytes: 10,
            ..VerifySettings::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("audience"));
    }

    // ------------------------------------------------------------------ pure: claims

    #[test]
    fn claim_checks_table() {
        use AuthError::*;
        let p = Policy::compile(vs(), 1, None);
        let iss = "https://kc/realms/acme";
        let now = 1_000_000u64;
        let base = json!({
            "iss": iss, "sub": "u1", "aud": "account", "azp": AUD, "typ": "Bearer",
            "exp": now + 60, "iat": now, "nbf": now
        });
        let with = |patch: serde_json::Value| {
            let mut v = base.clone();
            for (k, val) in patch.as_object().unwrap() {
                if val.is_null() {
                    v.as_object_mut().unwrap().remove(k);
                } else {
                    v[k] = val.clone();
                }
            }
            v.to_string()
        };
        let cases: Vec<(serde_json::Value, Result<(), AuthError>)> = vec![
            (json!({}), Ok(())),
            (
                json!({ "iss": "https://kc/realms/other" }),
                Err(IssuerMismatch),
            ),
            (
                json!({ "iss": "https://kc/realms/acme/" }),
                Err(IssuerMismatch),
            ),
            (json!({ "iss": null }), Err(IssuerMismatch)),
            (json!({ "exp": null }), Err(MalformedToken)),
            (json!({ "exp": now - 31 }), Err(TokenExpired)),
            (json!({ "exp": now - 30 }), Err(TokenExpired)),
            (json!({ "exp": now - 29 }), Ok(())),
            (json!({ "exp": (now + 60) as f64 + 0.5 }), Ok(())),
            (json!({ "nbf": now + 31 }), Err(TokenNotYetValid)),
            (json!({ "nbf": now + 30 }), Ok(())),
            (json!({ "iat": now + 31 }), Err(TokenIssuedInFuture)),
            (json!({ "iat": now + 30 }), Ok(())),
            (json!({ "typ": "ID" }), Err(WrongTokenType)),
            (json!({ "typ": "Refresh" }), Err(WrongTokenType)),
            (json!({ "typ": "bearer" }), Ok(())),
            (json!({ "typ": null }), Ok(())),
            (
                json!({ "aud": "other", "azp": "other" }),
                Err(AudienceMismatch),
            ),
            (json!({ "aud": ["x", AUD], "azp": "other" }), Ok(())),
            (json!({ "aud": AUD, "azp": null }), Ok(())),
            (json!({ "aud": null }), Ok(())),
            (json!({ "aud": null, "azp": null }), Err(AudienceMismatch)),
            (json!({ "sub": null }), Err(MissingSubject)),
            (json!({ "sub": "" }), Err(MissingSubject)),
        ];
        for (i, (patch, want)) in cases.into_iter().enumerate() {
            let doc = with(patch.clone());
            let c = parse(&p, &doc).unwrap();
            assert_eq!(check_claims(&c, &p, iss, now), want, "case {i}: {patch}");
        }
        // No audience configured: fail closed.
        let empty = Policy::compile(VerifySettings::default(), 1, None);
        let doc = with(json!({}));
        assert_eq!(
            check_claims(&parse(&empty, &doc).unwrap(), &empty, iss, now),
            Err(AudienceMismatch)
        );
    }

    #[test]
    fn claim_parsing_is_strict_where_it_matters() {
        let p = Policy::compile(vs(), 1, None);
        for bad in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"iss":"a","iss":"b"}"#,
            r#"{"exp":1,"exp":2}"#,
            r#"{"exp":-1}"#,
            r#"{"exp":"1700000000"}"#,
            r#"{"aud":"a","aud":"b"}"#,
            r#"{"aud":[1]}"#,
            r#"{"sub":5}"#,
            r#"{"realm_access":{"roles":"admin"}}"#,
            r#"[]"#,
            r#"{"sub":"a"} trailing"#,
        ] {
            assert!(parse(&p, bad).is_err(), "{bad}");
        }
        let c = parse(
            &p,
            r#"{"exp":1.9e9,"aud":["a","b"],"email":null,"x":{"deep":[1,{"y":2}]}}"#,
        )
        .unwrap();
        assert_eq!(c.exp, Some(1_900_000_000));
        assert!(c.aud.any(|a| a == "b"));
        assert!(c.email.is_none());
        // Escaped strings are decoded (owned), plain ones borrowed.
        let c = parse(&p, r#"{"sub":"a\u0041","iss":"plain"}"#).unwrap();
        assert_eq!(&*c.sub.unwrap().0, "aA");
        assert!(matches!(c.iss.unwrap().0, Cow::Borrowed("plain")));
    }

    // ------------------------------------------------------------------ pure: identity

    #[test]
    fn header_value_helpers() {
        for (input, max, want) in [
            ("alice", 10, Some("alice")),
            ("  alice ", 10, Some("alice")),
            ("al\r\nice", 10, Some("alice")),
            ("al\u{0}i\u{7f}ce\u{85}", 10, Some("alice")),
            ("\t\n", 10, None),
            ("ünïcödé", 5, Some("ünï")),
            ("abcdef", 3, Some("abc")),
        ] {
            assert_eq!(sanitize(input, max).as_deref(), want, "{input:?}");
            if let Some(v) = sanitize(input, max) {
                assert!(HeaderValue::from_str(&v).is_ok());
            }
        }
        for (input, ok) in [
            ("admin", true),
            (" admin", false),
            ("ad\nmin", false),
            ("ädmin", true),
            ("", false),
            ("x".repeat(11).as_str(), false),
        ] {
            assert_eq!(exact_clean(input, 10).is_some(), ok, "{input:?}");
        }
        assert_eq!(
            join_capped(["a", "bb", "c,d", "eee", "f"].into_iter(), 8),
            "a,bb,eee"
        );
    }

    #[test]
    fn identity_roles_are_clean_deduplicated_and_capped() {
        let mut s = vs();
        s.max_header_value_len = 40;
        s.client_role_clients = vec![AUD.into(), "other-client".into()];
        let p = Policy::compile(s, 1, None);
        let doc = json!({
            "sub": "u1",
            "realm_access": { "roles": ["viewer", "viewer", "adm\u{0}in", "a,b", " lead", "tenant_admin", "x".repeat(41)] },
            "resource_access": {
                AUD: { "roles": ["agent", "viewer", "manager"] },
                "other-client": { "roles": ["agent", "auditor"] },
                "ignored-client": { "roles": ["root"] }
            }
        })
        .to_string();
        let c = parse(&p, &doc).unwrap();
        let id = build_identity(&c, &p, Arc::from("iss")).unwrap();
        assert_eq!(
            id.role_set.realm.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["viewer", "tenant_admin"]
        );
        assert_eq!(
            id.role_set.client.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["agent", "viewer", "manager", "auditor"]
        );
        assert_eq!(
            id.all_roles().iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["viewer", "tenant_admin", "agent", "manager", "auditor"]
        );
        // 40-byte cap: whole roles only.
        assert_eq!(id.role_set.header, "viewer,tenant_admin,agent,manager");
        assert!(id.has_role("auditor") && !id.has_role("root") && !id.has_role("admin"));
        assert!(!id.roles().any(|r| r == "a" || r == "b"));
        // Many roles: still deduplicated (hash-set path).
        let many: Vec<String> = (0..200).map(|i| format!("r{}", i % 100)).collect();
        let doc = json!({ "sub": "u", "realm_access": { "roles": many } }).to_string();
        let id = build_identity(&parse(&p, &doc).unwrap(), &p, Arc::from("i")).unwrap();
        assert_eq!(id.role_set.realm.len(), 100);
        assert_eq!(id.all_roles().len(), 100);
    }

    #[test]
    fn identity_extras_and_permissions() {
        let mut s = vs();
        s.permissions_claim = Some("permissions".into());
        s.claim_headers = vec![
            ("email".into(), "x-user-email".into()),
            ("tenant_no".into(), "x-tenant-no".into()),
            ("verified".into(), "x-verified".into()),
            ("groups".into(), "x-groups".into()),
            ("address.country".into(), "x-country".into()),
            ("https://example.com/org".into(), "x-org".into()),
            ("missing".into(), "x-missing".into()),
            ("obj".into(), "x-obj".into()),
            ("evil".into(), "x-evil".into()),
        ];
        let p = Policy::compile(s, 1, None);
        let doc = json!({
            "sub": "u1", "email": "ada@example.com", "tenant_no": 42, "verified": true,
            "groups": ["/a", "/b,c", "/d"], "address": { "country": "NZ" },
            "https://example.com/org": "acme", "obj": { "k": 1 }, "evil": "x\r\nSet-Cookie: a=b",
            "permissions": ["users.read.own", "bad perm\n", "users.write.team"]
        })
        .to_string();
        let c = parse(&p, &doc).unwrap();
        assert_eq!(
            c.email.as_ref().map(|e| &*e.0),
            Some("ada@example.com"),
            "captured and typed"
        );
        let id = build_identity(&c, &p, Arc::from("iss")).unwrap();
        let extra: Vec<(String, String)> = id
            .extra
            .iter()
            .map(|(h, v)| (h.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let want = [
            ("x-user-email", "ada@example.com"),
            ("x-tenant-no", "42"),
            ("x-verified", "true"),
            ("x-groups", "/a,/d"),
            ("x-country", "NZ"),
            ("x-org", "acme"),
            ("x-evil", "xSet-Cookie: a=b"),
        ];
        assert_eq!(
            extra,
            want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
        );
        assert_eq!(
            &*id.permissions,
            ["users.read.own", "users.write.team"].map(Box::from)
        );
        assert_eq!(id.email(), Some("ada@example.com"));
        // Space-separated permissions (scope-style) work too.
        let mut s = vs();
        s.permissions_claim = Some("scope".into());
        let p = Policy::compile(s, 1, None);
        let doc = json!({ "sub": "u", "scope": "openid users.read.own  admin.*.*" }).to_string();
        let id = build_identity(&parse(&p, &doc).unwrap(), &p, Arc::from("i")).unwrap();
        assert_eq!(
            &*id.permissions,
            ["openid", "users.read.own", "admin.*.*"].map(Box::from)
        );
        // A subject that would need altering is refused, not rewritten.
        let doc = json!({ "sub": "u\n1" }).to_string();
        assert_eq!(
            build_identity(&parse(&p, &doc).unwrap(), &p, Arc::from("i")).unwrap_err(),
            AuthError::MissingSubject
        );
    }

    // ------------------------------------------------------------------ integration

    struct Env {
        idp: Idp,
        keys: Arc<KeyStore>,
        verifier: Arc<Verifier>,
        clock: Arc<AtomicU64>,
        _stop: watch::Sender<bool>,
    }

    impl Env {
        fn iss(&self, realm: &str) -> String {
            self.idp.issuer(realm)
        }
        fn now(&self) -> u64 {
            self.clock.load(Ordering::SeqCst)
        }
        fn advance(&self, secs: u64) {
            self.clock.fetch_add(secs, Ordering::SeqCst);
        }
        fn claims(&self, realm: &str) -> serde_json::Value {
            let mut c = claims(&self.iss(realm), self.now());
            c["aud"] = json!(["account", AUD]);
            c
        }
        async fn verify(&self, realm: &str, token: &str) -> Result<Arc<Identity>, AuthError> {
            self.verifier.verify("t-test", realm, token).await
        }
    }

    async fn env_with(
        realms: &[(&str, Vec<serde_json::Value>)],
        statics: &[&str],
        tweak: impl FnOnce(&mut JwksSettings),
        verify: VerifySettings,
    ) -> Env {
        let idp = Idp::start().await;
        for (r, keys) in realms {
            idp.set_keys(r, keys.clone());
        }
        let mut settings = test_settings(&idp.base);
        tweak(&mut settings);
        let (clock, handle) = manual_clock(wall());
        let (keys, refresher) = key_store_with_clock(
            settings,
            statics.iter().map(|s| s.to_string()).collect(),
            clock,
        );
        let (tx, rx) = watch::channel(false);
        tokio::spawn(refresher.run(rx));
        let verifier = Arc::new(Verifier::new(keys.clone(), verify));
        let env = Env {
            idp,
            keys,
            verifier,
            clock: handle,
            _stop: tx,
        };
        assert!(
            wait_until(|| async { env.keys.describe().iter().all(|r| r.state != "not_loaded") })
                .await
        );
        env
    }

    async fn env(realms: &[(&str, Vec<serde_json::Value>)]) -> Env {
        let statics: Vec<&str> = realms.iter().map(|(r, _)| *r).collect();
        env_with(realms, &statics, |_| {}, vs()).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn valid_token_yields_identity_and_hits_the_cache() {
        let e = env(&[("v-ok", vec![rsa_a().jwk("k1")])]).await;
        let t = mint(&rsa_a(), Some("k1"), &e.claims("v-ok"));
        let id = e.verify("v-ok", &t).await.unwrap();
        assert_eq!(id.sub(), "f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
        assert_eq!(id.preferred_username(), Some("ada"));
        assert_eq!(id.email(), Some("ada@acme.example.com"));
        assert_eq!(
            id.role_set.realm.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["offline_access", "tenant_admin"]
        );
        assert_eq!(
            id.role_set.client.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["agent", "viewer"]
        );
        assert_eq!(
            id.role_set.header,
            "offline_access,tenant_admin,agent,viewer"
        );
        assert_eq!(&*id.issuer, e.iss("v-ok"));
        assert_eq!(id.azp.as_deref(), Some(AUD));
        assert_eq!(id.exp, e.now() + 300);
        // Forwarded values are slices of the identity's one text buffer.
        assert_eq!(
            id.sub_value().unwrap(),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
        assert_eq!(id.preferred_username_value().unwrap(), "ada");
        assert_eq!(id.email_value().unwrap(), "ada@acme.example.com");
        let again = e.verify("v-ok", &t).await.unwrap();
        assert!(
            Arc::ptr_eq(&id, &again),
            "second verification is a cache hit"
        );
        // Another user with the same roles shares the role set; different roles do not.
        let mut other = e.claims("v-ok");
        other["sub"] = json!("another-user");
        other["email"] = json!(null);
        let o = e
            .verify("v-ok", &mint(&rsa_a(), Some("k1"), &other))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&id.role_set, &o.role_set));
        assert_eq!(
            (o.sub(), o.email(), o.email_value()),
            ("another-user", None, None)
        );
        other["realm_access"] = json!({ "roles": ["viewer"] });
        let v = e
            .verify("v-ok", &mint(&rsa_a(), Some("k1"), &other))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&id.role_set, &v.role_set));
        assert_eq!(v.role_set.header, "viewer,agent");
        // A tampered copy of a cached token never hits.
        let (head, sig) = t.rsplit_once('.').unwrap();
        let (h, payload) = head.split_once('.').unwrap();
        let mut claims = e.claims("v-ok");
        claims["sub"] = json!("someone-else");
        let forged = format!("{h}.{}.{sig}", b64(claims.to_string().as_bytes()));
        assert_eq!(
            e.verify("v-ok", &forged).await.unwrap_err(),
            AuthError::BadSignature
        );
        let _ = payload;
        // Garbage never panics.
        for junk in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d.e",
            &format!("{h}.%%%.{sig}"),
            &format!("{h}..{sig}"),
        ] {
            assert_eq!(
                e.verify("v-ok", junk).await.unwrap_err(),
                AuthError::MalformedToken,
                "{junk}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expiry_nbf_iat_and_cached_expiry() {
        let e = env_with(
            &[("v-time", vec![rsa_a().jwk("k1")])],
            &["v-time"],
            |_| {},
            VerifySettings {
                leeway: Duration::ZERO,
                ..vs()
            },
        )
        .await;
        let now = e.now();
        let mut c = e.claims("v-time");
        c["exp"] = json!(now - 1);
        assert_eq!(
            e.verify("v-time", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenExpired
        );
        let mut c = e.claims("v-time");
        c["nbf"] = json!(now + 5);
        assert_eq!(
            e.verify("v-time", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenNotYetValid
        );
        let mut c = e.claims("v-time");
        c["iat"] = json!(now + 5);
        assert_eq!(
            e.verify("v-time", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenIssuedInFuture
        );
        // A cached token stops working at exp, exactly like an uncached one.
        let mut c = e.claims("v-time");
        c["exp"] = json!(now + 10);
        let t = mint(&rsa_a(), Some("k1"), &c);
        let id = e.verify("v-time", &t).await.unwrap();
        e.advance(9);
        assert!(Arc::ptr_eq(&id, &e.verify("v-time", &t).await.unwrap()));
        e.advance(1);
        assert_eq!(
            e.verify("v-time", &t).await.unwrap_err(),
            AuthError::TokenExpired
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn realms_never_share_tokens_or_keys() {
        // Same kid in both realms, different keys.
        let e = env(&[
            ("x-a", vec![rsa_a().jwk("k1")]),
            ("x-b", vec![rsa_b().jwk("k1")]),
        ])
        .await;
        tokio::time::sleep(Duration::from_millis(350)).await; // past min_refetch_interval
        let token_a = mint(&rsa_a(), Some("k1"), &e.claims("x-a"));
        let id = e.verify("x-a", &token_a).await.unwrap();
        assert_eq!(&*id.issuer, e.iss("x-a"));
        // Realm A's (cached) token on realm B's host.
        assert_eq!(
            e.verify("x-b", &token_a).await.unwrap_err(),
            AuthError::IssuerMismatch
        );
        // A token claiming realm B but signed with realm A's key under the shared kid.
        let hits = e.idp.hits("certs", "x-b");
        let forged = mint(&rsa_a(), Some("k1"), &e.claims("x-b"));
        assert_eq!(
            e.verify("x-b", &forged).await.unwrap_err(),
            AuthError::BadSignature
        );
        assert_eq!(
            e.idp.hits("certs", "x-b"),
            hits,
            "a known kid with a bad signature never refetches"
        );
        let real_b = mint(&rsa_b(), Some("k1"), &e.claims("x-b"));
        assert!(e.verify("x-b", &real_b).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn algorithm_confusion_and_forbidden_headers_are_refused() {
        let e = env(&[("v-alg", vec![rsa_a().jwk("k1")])]).await;
        let c = e.claims("v-alg");
        let body = b64(c.to_string().as_bytes());
        // alg none, with and without a signature segment.
        for h in [
            json!({ "alg": "none", "kid": "k1" }),
            json!({ "alg": "None" }),
            json!({ "kid": "k1" }),
        ] {
            let t = format!("{}.{body}.", b64(h.to_string().as_bytes()));
            let err = e.verify("v-alg", &t).await.unwrap_err();
            assert!(
                matches!(err, AuthError::AlgNotAllowed | AuthError::MalformedToken),
                "{h}: {err:?}"
            );
        }
        // HS256 keyed with the realm's public key (PEM, and the raw modulus bytes).
        let pem = rsa_a().public_pem;
        for secret in [pem.as_bytes().to_vec(), pem.trim().as_bytes().to_vec()] {
            let hs = TestKey {
                enc: jsonwebtoken::EncodingKey::from_secret(&secret),
                alg: jsonwebtoken::Algorithm::HS256,
                public_pem: pem,
            };
            let t = mint(&hs, Some("k1"), &c);
            assert_eq!(
                e.verify("v-alg", &t).await.unwrap_err(),
                AuthError::AlgNotAllowed
            );
        }
        // Allowed family, not allowed for this realm (RS256 only): PS256, ES256.
        let ps = mint_with_header(&rsa_a(), &json!({ "alg": "PS256", "kid": "k1" }), &c);
        assert_eq!(
            e.verify("v-alg", &ps).await.unwrap_err(),
            AuthError::AlgNotAllowed
        );
        let es = mint(&ec(), Some("k1"), &c);
        assert_eq!(
            e.verify("v-alg", &es).await.unwrap_err(),
            AuthError::AlgNotAllowed
        );
        // Key-in-token and critical extensions.
        for extra in [
            json!({ "jku": "https://evil.example/jwks" }),
            json!({ "x5u": "https://evil.example/cert" }),
            json!({ "jwk": rsa_b().jwk("k1") }),
            json!({ "x5c": ["MIIB"] }),
            json!({ "crit": ["exp"], "exp": 1 }),
            json!({ "jku": null }),
        ] {
            let mut h = json!({ "alg": "RS256", "kid": "k1" });
            for (k, v) in extra.as_object().unwrap() {
                h[k] = v.clone();
            }
            let t = mint_with_header(&rsa_a(), &h, &c);
            assert_eq!(
                e.verify("v-alg", &t).await.unwrap_err(),
                AuthError::ForbiddenHeader,
                "{extra}"
            );
        }
        // And the same realm with a plain header verifies.
        assert!(e
            .verify("v-alg", &mint(&rsa_a(), Some("k1"), &c))
            .await
            .is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ec_and_eddsa_tokens_verify_when_allowed() {
        let e = env_with(
            &[(
                "v-ec",
                vec![ec().jwk("e1"), ed().jwk("d1"), rsa_a().jwk("r1")],
            )],
            &["v-ec"],
            |s| {
                s.algorithms = vec![
                    crate::jwks::Alg::ES256,
                    crate::jwks::Alg::EdDSA,
                    crate::jwks::Alg::RS256,
                ]
            },
            vs(),
        )
        .await;
        let c = e.claims("v-ec");
        assert!(e.verify("v-ec", &mint(&ec(), Some("e1"), &c)).await.is_ok());
        assert!(e.verify("v-ec", &mint(&ed(), Some("d1"), &c)).await.is_ok());
        assert!(e
            .verify("v-ec", &mint(&rsa_a(), Some("r1"), &c))
            .await
            .is_ok());
        // The right alg with the wrong key type.
        let t = mint_with_header(&rsa_a(), &json!({ "alg": "RS256", "kid": "e1" }), &c);
        assert_eq!(
            e.verify("v-ec", &t).await.unwrap_err(),
            AuthError::AlgNotAllowed
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_types_sizes_and_subjects() {
        let e = env(&[("v-typ", vec![rsa_a().jwk("k1")])]).await;
        for (typ, want) in [
            ("ID", Err(AuthError::WrongTokenType)),
            ("Refresh", Err(AuthError::WrongTokenType)),
            ("Bearer", Ok(())),
        ] {
            let mut c = e.claims("v-typ");
            c["typ"] = json!(typ);
            let got = e
                .verify("v-typ", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .map(|_| ());
            assert_eq!(got, want, "{typ}");
        }
        let mut c = e.claims("v-typ");
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            e.verify("v-typ", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::MissingSubject
        );
        let mut c = e.claims("v-typ");
        c["aud"] = json!("account");
        c["azp"] = json!("another-app");
        assert_eq!(
            e.verify("v-typ", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::AudienceMismatch
        );
        let huge = format!(
            "{}.{}.{}",
            "a".repeat(22 * 1024),
            "b".repeat(22 * 1024),
            "c".repeat(22 * 1024)
        );
        assert_eq!(
            e.verify("v-typ", &huge).await.unwrap_err(),
            AuthError::TokenTooLarge
        );
        assert_eq!(e.verifier.extract_token(&HeaderMap::new(), None), Ok(None));
        let h = headers(&[("authorization", &format!("Bearer {huge}"))]);
        assert_eq!(
            e.verifier.extract_token(&h, None),
            Err(AuthError::TokenTooLarge)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_kid_refetches_once_and_then_verifies() {
        let e = env(&[("v-rot", vec![rsa_a().jwk("k1")])]).await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        let before = e.idp.hits("certs", "v-rot");
        e.idp
            .set_keys("v-rot", vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")]);
        let t = mint(&rsa_b(), Some("k2"), &e.claims("v-rot"));
        assert!(e.verify("v-rot", &t).await.is_ok());
        assert_eq!(e.idp.hits("certs", "v-rot"), before + 1);
        // Cheap checks gate refetches: a wrong-issuer or expired token with an unknown kid
        // never reaches the IdP.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let mut c = e.claims("v-rot");
        c["iss"] = json!("https://elsewhere/realms/v-rot");
        let t = mint(&rsa_c(), Some("k9"), &c);
        assert_eq!(
            e.verify("v-rot", &t).await.unwrap_err(),
            AuthError::IssuerMismatch
        );
        let mut c = e.claims("v-rot");
        c["exp"] = json!(e.now() - 3600);
        assert_eq!(
            e.verify("v-rot", &mint(&rsa_c(), Some("k9"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenExpired
        );
        assert_eq!(e.idp.hits("certs", "v-rot"), before + 1);
        // A kid-less token never triggers a fetch either.
        let t = mint(&rsa_c(), None, &e.claims("v-rot"));
        assert_eq!(
            e.verify("v-rot", &t).await.unwrap_err(),
            AuthError::UnknownKey
        );
        assert_eq!(e.idp.hits("certs", "v-rot"), before + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kid_miss_storm_causes_at_most_one_fetch() {
        let e = env_with(
            &[("v-storm", vec![rsa_a().jwk("k1")])],
            &["v-storm"],
            |s| s.min_refetch_interval = Duration::from_secs(2),
            vs(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2100)).await; // a refetch is allowed now
        let before = e.idp.hits("certs", "v-storm");
        let body = b64(e.claims("v-storm").to_string().as_bytes());
        let mut tasks = Vec::new();
        for i in 0..2000u32 {
            let kid = format!("rnd-{i}-{}", rand::random::<u64>());
            let h = b64(json!({ "alg": "RS256", "kid": kid }).to_string().as_bytes());
            let t = format!("{h}.{body}.c2ln");
            let v = e.verifier.clone();
            tasks.push(tokio::spawn(async move {
                v.verify("t-storm", "v-storm", &t).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err(), AuthError::UnknownKey);
        }
        assert_eq!(
            e.idp.hits("certs", "v-storm"),
            before + 1,
            "exactly one fetch for the whole storm"
        );
        // Within the interval, more misses cost nothing at the IdP.
        let h = b64(json!({ "alg": "RS256", "kid": "late" })
            .to_string()
            .as_bytes());
        let started = std::time::Instant::now();
        assert_eq!(
            e.verify("v-storm", &format!("{h}.{body}.c2ln"))
                .await
                .unwrap_err(),
            AuthError::UnknownKey
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "denied without waiting"
        );
        assert_eq!(e.idp.hits("certs", "v-storm"), before + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idp_down_known_keys_keep_working_until_max_stale() {
        let e = env_with(
            &[("v-down", vec![rsa_a().jwk("k1")])],
            &["v-down"],
            |s| {
                s.refresh = Duration::from_millis(100);
                s.max_stale = Duration::from_secs(3600);
            },
            vs(),
        )
        .await;
        let cached = mint(&rsa_a(), Some("k1"), &e.claims("v-down"));
        e.verify("v-down", &cached).await.unwrap();
        e.idp.set_mode("v-down", Mode::Fail);
        assert!(
            wait_until(|| async {
                crate::jwks::testkit::state_of(&e.keys, "v-down")
                    .unwrap()
                    .last_error
                    .is_some()
            })
            .await
        );
        let mut c = e.claims("v-down");
        c["jti"] = json!("fresh");
        let fresh = mint(&rsa_a(), Some("k1"), &c);
        assert!(
            e.verify("v-down", &fresh).await.is_ok(),
            "last-good keys still verify"
        );
        assert!(e.verify("v-down", &cached).await.is_ok());
        // Past max_stale the realm's keys are unusable: 503, cached tokens included.
        e.advance(3601);
        for t in [&cached, &fresh] {
            let err = e.verify("v-down", t).await.unwrap_err();
            assert_eq!(err.code(), "realm_unavailable");
            assert_eq!(err.http_status(), 503);
            assert!(err.retry_after_secs().unwrap() >= 1);
        }
        assert!(!e.keys.static_realms_ready());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unavailable_and_unknown_realms() {
        let idp = Idp::start().await;
        for r in ["v-off", "v-dyn"] {
            idp.set_keys(r, vec![rsa_a().jwk("k1")]);
        }
        idp.set_mode("v-off", Mode::Fail);
        let (keys, _stop) = start_store(
            test_settings(&idp.base),
            &["v-off"],
            crate::jwks::system_clock(),
        );
        let v = Verifier::new(keys, vs());
        let t = |realm: &str| {
            let mut c = claims(&idp.issuer(realm), wall());
            c["aud"] = json!(AUD);
            mint(&rsa_a(), Some("k1"), &c)
        };
        // Never loaded + IdP down -> 503 with a retry hint, not 401.
        let err = v.verify("t", "v-off", &t("v-off")).await.unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("realm_unavailable", 503));
        assert!(err.retry_after_secs().is_some());
        // Dynamic realm the IdP knows: loads lazily on first use and verifies.
        assert!(v.verify("t", "v-dyn", &t("v-dyn")).await.is_ok());
        // Dynamic realm the IdP doesn't know: 404 unknown_tenant, negatively cached.
        let err = v.verify("t", "v-ghost", &t("v-ghost")).await.unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("unknown_tenant", 404));
        let hits = idp.total_hits();
        assert_eq!(
            v.verify("t", "v-ghost", &t("v-ghost")).await.unwrap_err(),
            AuthError::UnknownTenant
        );
        assert_eq!(idp.total_hits(), hits, "negative cache: no second fetch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovery_issuer_mismatch_makes_the_realm_unavailable() {
        let idp = Idp::start().await;
        idp.set_keys("v-evil", vec![rsa_a().jwk("k1")]);
        idp.set_mode("v-evil", Mode::WrongIssuer);
        let (keys, _stop) = start_store(
            test_settings(&idp.base),
            &["v-evil"],
            crate::jwks::system_clock(),
        );
        let v = Verifier::new(keys, vs());
        let t = mint(&rsa_a(), Some("k1"), &claims(&idp.issuer("v-evil"), wall()));
        let mut t_claims = claims(&idp.issuer("v-evil"), wall());
        t_claims["aud"] = json!(AUD);
        let t2 = mint(&rsa_a(), Some("k1"), &t_claims);
        for tok in [t, t2] {
            assert_eq!(
                v.verify("t", "v-evil", &tok).await.unwrap_err().code(),
                "realm_unavailable"
            );
        }
        assert_eq!(idp.hits("certs", "v-evil"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_kid_revokes_cached_tokens() {
        let e = env_with(
            &[("v-rev", vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")])],
            &["v-rev"],
            |s| s.refresh = Duration::from_millis(100),
            vs(),
        )
        .await;
        let t1 = mint(&rsa_a(), Some("k1"), &e.claims("v-rev"));
        let t2 = mint(&rsa_b(), Some("k2"), &e.claims("v-rev"));
        let id1 = e.verify("v-rev", &t1).await.unwrap();
        e.verify("v-rev", &t2).await.unwrap();
        e.idp.set_keys("v-rev", vec![rsa_a().jwk("k1")]);
        assert!(
            wait_until(|| async {
                crate::jwks::testkit::state_of(&e.keys, "v-rev")
                    .unwrap()
                    .kids
                    == vec!["k1".to_string()]
            })
            .await
        );
        assert_eq!(
            e.verify("v-rev", &t2).await.unwrap_err(),
            AuthError::UnknownKey
        );
        let again = e.verify("v-rev", &t1).await.unwrap();
        assert!(
            Arc::ptr_eq(&id1, &again),
            "routine refreshes keep unchanged keys' cached tokens"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evicted_realm_and_policy_reload_invalidate_the_cache() {
        let e = env_with(
            &[
                ("d-1", vec![rsa_a().jwk("k1")]),
                ("d-2", vec![rsa_a().jwk("k1")]),
            ],
            &[],
            |s| s.max_dynamic_realms = 1,
            vs(),
        )
        .await;
        let t1 = mint(&rsa_a(), Some("k1"), &e.claims("d-1"));
        let id = e.verify("d-1", &t1).await.unwrap();
        assert!(Arc::ptr_eq(&id, &e.verify("d-1", &t1).await.unwrap()));
        e.verify("d-2", &mint(&rsa_a(), Some("k1"), &e.claims("d-2")))
            .await
            .unwrap(); // evicts d-1
        let reloaded = e.verify("d-1", &t1).await.unwrap();
        assert!(
            !Arc::ptr_eq(&id, &reloaded),
            "eviction dropped the cached verification"
        );
        // Unchanged settings keep the cache; changed ones re-verify under the new policy.
        e.verifier.update_settings(vs());
        assert!(Arc::ptr_eq(&reloaded, &e.verify("d-1", &t1).await.unwrap()));
        e.verifier.update_settings(VerifySettings {
            audiences: vec!["some-other-api".into()],
            ..vs()
        });
        assert_eq!(
            e.verify("d-1", &t1).await.unwrap_err(),
            AuthError::AudienceMismatch
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kidless_tokens_and_disabled_cache() {
        let mut bare = rsa_a().jwk("x");
        bare.as_object_mut().unwrap().remove("kid");
        let e = env_with(
            &[("v-nokid", vec![bare])],
            &["v-nokid"],
            |_| {},
            VerifySettings {
                token_cache_capacity: 0,
                ..vs()
            },
        )
        .await;
        let t = mint(&rsa_a(), None, &e.claims("v-nokid"));
        let a = e.verify("v-nokid", &t).await.unwrap();
        let b = e.verify("v-nokid", &t).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "no cache: verified afresh");
        assert_eq!(*a, *b);
        assert_eq!(
            e.verify("v-nokid", &mint(&rsa_b(), None, &e.claims("v-nokid")))
                .await
                .unwrap_err(),
            AuthError::BadSignature
        );
    }

    #[test]
    fn verifier_is_send_and_sync_and_futures_are_send() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Verifier>();
        send_sync::<KeyStore>();
        fn send<T: Send>(_: &T) {}
        let (keys, _r) = crate::jwks::key_store(JwksSettings::default(), vec![]);
        let v = Verifier::new(keys, vs());
        let fut = v.verify("t", "r", "x.y.z");
        send(&fut);
    }
}
