//! Realm signing keys: OIDC discovery, JWKS fetching, prepared verification keys, refresh.
//!
//! Why it is shaped like this:
//! - **One fetcher.** Pingora runs every service on its own tokio runtime, and a reqwest
//!   client's pooled connections belong to the runtime that created them ("dispatch dropped").
//!   So all discovery/JWKS HTTP happens in the [`JwksRefresher`] task. The request path only
//!   sends it a [`Cmd`] over a channel and waits, bounded, on the realm's `Notify`.
//! - **Lock-free reads.** The request path reads [`KeyStore`] through `arc-swap` snapshots: the
//!   realm map, and per realm a [`KeySet`] of keys parsed once into aws-lc-rs
//!   `ParsedPublicKey`s (never per request).
//! - **No amplification.** Request-triggered fetches (unknown kid, realm not loaded yet) are
//!   single-flight per realm and at most one per `min_refetch_interval`; never-seen dynamic
//!   realms are admitted through a global token bucket and IdP 404s are negatively cached. A
//!   flood of random kids or random subdomains therefore costs the IdP a bounded number of
//!   requests per second, whatever the attacker's request rate.
//! - **Fail closed, degrade gracefully.** A failed refresh keeps the last-good keys for up to
//!   `max_stale`; beyond that, or for a realm never loaded, requests get `realm_unavailable`
//!   (503), never a pass.
//!
//! Key selection rules (documented contract):
//! - A JWK is usable only if `kty` is RSA (>= 2048 bit), EC (P-256/P-384) or OKP (Ed25519);
//!   `use` is absent or `sig`; `key_ops`, when present, contains `verify`; and `alg` is absent
//!   or is one of the realm's allowed algorithms and fits the key type. Symmetric (`oct`) keys
//!   are never usable. Unusable keys are skipped with a log line.
//! - Keys without `kid`: a token without `kid` is verified only when the realm's set holds
//!   exactly one usable key (whatever that key's kid). A token with a `kid` only ever matches a
//!   key with the same `kid`. A kid-less key in a multi-key set is therefore unreachable and is
//!   skipped. Two usable keys sharing a `kid` are both skipped (ambiguous).
//! - Keys belong to their realm: each realm has its own key set, so the same `kid` in two
//!   realms names two unrelated keys.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::metrics::{metrics, OTHER};

/// Seconds since the Unix epoch; injectable so expiry and staleness tests are deterministic.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// First retry delay after a failed refresh; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest delay between retries of a failing realm.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// `Cache-Control: max-age` never makes a realm refresh more often than this (nor less often
/// than `refresh`): the IdP may ask us to come back sooner, not to hammer it or to hold keys
/// longer than the operator allows.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);
/// Usable keys kept per realm; a JWKS with more is truncated (logged). Bounds per-realm memory.
pub const MAX_KEYS_PER_REALM: usize = 64;
/// Negative-cache bound: distinct unknown realm names remembered (CLOCK-Pro eviction).
pub const NEGATIVE_CACHE_CAPACITY: usize = 10_000;
const CMD_QUEUE: usize = 1024;

/// Why the store could not hand out a realm or a key.
///
/// Its own type, not `verify::AuthError`: the key store is a lower layer than token
/// verification and must not import it (the two modules used to import each other).
/// `verify` maps it into `AuthError` with a `From` impl, so the stable codes and HTTP statuses
/// stay defined in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// Not a valid realm name, a realm the IdP does not know, or no dynamic realms allowed.
    #[error("unknown tenant")]
    UnknownTenant,
    /// Keys cannot be had in time, or are older than `max_stale`; retry after this long.
    #[error("realm keys unavailable")]
    RealmUnavailable { retry_after_secs: u64 },
    /// No key of the realm matches the token's `kid` (after at most one refetch).
    #[error("unknown signing key")]
    UnknownKey,
}

/// Signature algorithms realmgate accepts. HMAC and `none` are deliberately absent: a
/// realm's public key must never double as an HMAC secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// Parses a JOSE `alg` name (exact, case-sensitive as RFC 7518 requires).
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "RS256" => Alg::RS256,
            "RS384" => Alg::RS384,
            "RS512" => Alg::RS512,
            "PS256" => Alg::PS256,
            "PS384" => Alg::PS384,
            "PS512" => Alg::PS512,
            "ES256" => Alg::ES256,
            "ES384" => Alg::ES384,
            "EdDSA" => Alg::EdDSA,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn rsa_params(self) -> Option<&'static sig::RsaParameters> {
        Some(match self {
            Alg::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Alg::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Alg::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Alg::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
            Alg::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
            Alg::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return None,
        })
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Alg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Alg::from_name(s).ok_or_else(|| {
            format!("unsupported algorithm {s:?} (allowed: RS256/384/512, PS256/384/512, ES256/384, EdDSA)")
        })
    }
}

/// A set of [`Alg`]s as a bit mask (copy, no allocation on the request path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AlgSet(u16);

impl AlgSet {
    pub fn from_slice(algs: &[Alg]) -> Self {
        AlgSet(algs.iter().fold(0, |m, a| m | a.bit()))
    }
    pub fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Alg> {
        Alg::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

/// Per-realm settings for IdPs that are not Keycloak-shaped, or for air-gapped setups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RealmOverride {
    /// Expected `iss` (default `{base_url}/realms/{realm}`); discovery runs against it.
    pub issuer: Option<String>,
    /// JWKS URL; when set, discovery is skipped.
    pub jwks_uri: Option<String>,
    /// A JWKS document on disk, read at start and on every refresh (takes precedence over
    /// `jwks_uri`; the config layer should refuse both being set).
    pub jwks_file: Option<PathBuf>,
    /// Allowed algorithms for this realm (default: [`JwksSettings::algorithms`]).
    pub algorithms: Option<Vec<Alg>>,
}

/// Everything the key store and its refresher need; cheap to clone, compared on reload.
#[derive(Clone, Debug, PartialEq)]
pub struct JwksSettings {
    /// Keycloak base URL, e.g. `https://kc.example.com` (a trailing `/` is ignored).
    pub base_url: String,
    /// Default allowed algorithms (default `[RS256]`).
    pub algorithms: Vec<Alg>,
    /// Refresh period of a loaded realm (default 5 min, jittered by ±10 %).
    pub refresh: Duration,
    /// Minimum spacing of request-triggered fetches per realm (default 10 s).
    pub min_refetch_interval: Duration,
    /// How long last-good keys stay usable while the IdP fails (default 24 h).
    pub max_stale: Duration,
    /// TCP+TLS connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included (default 5 s).
    pub fetch_timeout: Duration,
    /// Largest discovery/JWKS document accepted (default 1 MiB).
    pub max_document_bytes: usize,
    /// How long a request waits for an unknown-kid refetch (default 2 s).
    pub refetch_wait: Duration,
    /// How long a request waits for the first load of a realm (default 3 s).
    pub load_wait: Duration,
    /// How long an IdP 404 for a dynamic realm is remembered (default 60 s).
    pub negative_ttl: Duration,
    /// Dynamic realms held at once; least recently used is evicted (default 1000).
    pub max_dynamic_realms: usize,
    /// Never-seen dynamic realms that may be fetched per second, process-wide (default 20,
    /// burst 2x). This, not the attacker's request rate, bounds what random subdomains cost
    /// the IdP.
    pub new_realms_per_second: u32,
    /// Shared: the config and the key store hold the same map (10 000 realms, ~2 MiB).
    pub realm_overrides: Arc<HashMap<String, RealmOverride>>,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            algorithms: vec![Alg::RS256],
            refresh: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(10),
            max_stale: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
            max_document_bytes: 1 << 20,
            refetch_wait: Duration::from_secs(2),
            load_wait: Duration::from_secs(3),
            negative_ttl: Duration::from_secs(60),
            max_dynamic_realms: 1000,
            new_realms_per_second: 20,
            realm_overrides: Arc::default(),
        }
    }
}

/// Realm names are put in URL paths and metric labels: only `[A-Za-z0-9._-]`, 1..=255 bytes,
/// not `.`/`..`. Anything else is an unknown tenant, never a fetch.
pub fn valid_realm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

// ---------------------------------------------------------------------------------------------
// Prepared keys
// ---------------------------------------------------------------------------------------------

/// A JWK parsed once into verification keys, one per algorithm it may be used with.
///
/// `retired` is set when a refresh drops the key (or its realm is evicted/removed); cached
/// verified tokens hold an `Arc` to their key and check it on every hit, so revocation by
/// rotation applies to the cache too. An unchanged key keeps its `Arc` across refreshes.
pub struct PreparedKey {
    kid: Option<Box<str>>,
    /// Canonical key material (kty, curve, components, alg): decides "unchanged".
    material: Box<[u8]>,
    verifiers: Box<[(Alg, ParsedPublicKey)]>,
    retired: AtomicBool,
}

/// Why a prepared key refused a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyRefusal {
    /// The key is not usable with the token's algorithm.
    WrongAlg,
    BadSignature,
}

impl PreparedKey {
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.retired.store(true, Ordering::Release);
    }

    /// Algorithms this key verifies.
    pub fn algorithms(&self) -> impl Iterator<Item = Alg> + '_ {
        self.verifiers.iter().map(|(a, _)| *a)
    }

    pub(crate) fn verify(
        &self,
        alg: Alg,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), KeyRefusal> {
        let (_, key) = self
            .verifiers
            .iter()
            .find(|(a, _)| *a == alg)
            .ok_or(KeyRefusal::WrongAlg)?;
        key.verify_sig(message, signature)
            .map_err(|_| KeyRefusal::BadSignature)
    }
}

impl std::fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms().collect::<Vec<_>>())
            .field("retired", &self.is_retired())
            .finish()
    }
}

/// One realm's usable keys at one point in time (immutable; replaced wholesale).
#[derive(Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<Box<str>, Arc<PreparedKey>, ahash::RandomState>,
    all: Vec<Arc<PreparedKey>>,
}

impl KeySet {
    /// The key for a token's `kid`; see the module docs for the kid-less rule.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<&Arc<PreparedKey>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None if self.all.len() == 1 => self.all.first(),
            None => None,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.all.len()
    }

    fn kids(&self) -> Vec<String> {
        self.all
            .iter()
            .map(|k| k.kid().unwrap_or("<none>").to_string())
            .collect()
    }

    fn retire_all(&self) {
        for k in &self.all {
            k.retire();
        }
    }
}

#[derive(Deserialize)]
struct JwksDoc {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    kid: Option<String>,
    key_ops: Option<Vec<String>>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

fn b64url(field: &str, value: Option<&str>) -> Result<Vec<u8>, String> {
    let v = value.ok_or_else(|| format!("missing {field}"))?;
    // Some IdPs pad; RFC 7518 says they should not. Accept both, nothing else.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(v.trim_end_matches('='))
        .map_err(|_| format!("{field} is not base64url"))
}

fn strip_leading_zeros(mut b: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = b {
        b = rest;
    }
    b
}

/// Parses one JWK into a [`PreparedKey`], or says why it is unusable. Pure.
fn prepare_key(raw: &RawJwk, allowed: AlgSet) -> Result<PreparedKey, String> {
    match raw.use_.as_deref() {
        None | Some("sig") => {}
        Some(other) => return Err(format!("use {other:?} is not \"sig\"")),
    }
    if let Some(ops) = &raw.key_ops {
        if !ops.iter().any(|o| o == "verify") {
            return Err("key_ops lacks \"verify\"".into());
        }
    }
    let jwk_alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => {
            let alg =
                Alg::from_name(name).ok_or_else(|| format!("alg {name:?} is not supported"))?;
            if !allowed.contains(alg) {
                return Err(format!("alg {name} is not allowed for this realm"));
            }
            Some(alg)
        }
    };
    let fits = |alg: Alg| allowed.contains(alg) && jwk_alg.is_none_or(|a| a == alg);
    let mut material = Vec::with_capacity(600);
    material.extend_from_slice(raw.kty.as_bytes());
    material.push(0);
    material.extend_from_slice(raw.alg.as_deref().unwrap_or("").as_bytes());
    material.push(0);
    let mut verifiers = Vec::new();
    match raw.kty.as_str() {
        "RSA" => {
            let n_raw = b64url("n", raw.n.as_deref())?;
            let e_raw = b64url("e", raw.e.as_deref())?;
            let n = strip_leading_zeros(&n_raw);
            let e = strip_leading_zeros(&e_raw);
            let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
            if !(2048..=8192).contains(&bits) {
                return Err(format!("RSA modulus of {bits} bits (need 2048..=8192)"));
            }
            if e.is_empty() || e.len() > 4 {
                return Err("RSA exponent out of range".into());
            }
            material.extend_from_slice(n);
            material.push(0);
            material.extend_from_slice(e);
            let comps = RsaPublicKeyComponents { n, e };
            for alg in Alg::ALL.into_iter().filter(|a| fits(*a)) {
                if let Some(params) = alg.rsa_params() {
                    let key = comps
                        .to_parsed_public_key(params)
                        .map_err(|e| format!("RSA key rejected: {e}"))?;
                    verifiers.push((alg, key));
                }
            }
        }
        "EC" => {
            let (alg, len, valg): (Alg, usize, &'static dyn sig::VerificationAlgorithm) =
                match raw.crv.as_deref() {
                    Some("P-256") => (Alg::ES256, 32, &sig::ECDSA_P256_SHA256_FIXED),
                    Some("P-384") => (Alg::ES384, 48, &sig::ECDSA_P384_SHA384_FIXED),
                    other => return Err(format!("EC curve {other:?} is not supported")),
                };
            let x = b64url("x", raw.x.as_deref())?;
            let y = b64url("y", raw.y.as_deref())?;
            if x.len() != len || y.len() != len {
                return Err("EC coordinates have the wrong length".into());
            }
            if fits(alg) {
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let key = ParsedPublicKey::new(valg, &point)
                    .map_err(|e| format!("EC key rejected: {e}"))?;
                material.extend_from_slice(&point);
                verifiers.push((alg, key));
            }
        }
        "OKP" => {
            if raw.crv.as_deref() != Some("Ed25519") {
                return Err(format!("OKP curve {:?} is not supported", raw.crv));
            }
            let x = b64url("x", raw.x.as_deref())?;
            if fits(Alg::EdDSA) {
                let key = ParsedPublicKey::new(&sig::ED25519, &x)
                    .map_err(|e| format!("Ed25519 key rejected: {e}"))?;
                material.extend_from_slice(&x);
                verifiers.push((Alg::EdDSA, key));
            }
        }
        "oct" => return Err("symmetric (oct) keys are never used".into()),
        other => return Err(format!("kty {other:?} is not supported")),
    }
    if verifiers.is_empty() {
        return Err("no allowed algorithm fits this key".into());
    }
    Ok(PreparedKey {
        kid: raw.kid.as_deref().map(Box::from),
        material: material.into_boxed_slice(),
        verifiers: verifiers.into_boxed_slice(),
        retired: AtomicBool::new(false),
    })
}

/// The result of turning a JWKS document into a key set.
pub(crate) struct BuiltKeySet {
    pub(crate) set: KeySet,
    /// Keys of the previous set that are not in the new one (to be retired).
    pub(crate) dropped: Vec<Arc<PreparedKey>>,
    /// Human-readable reasons for skipped keys (logged by the caller).
    pub(crate) skipped: Vec<String>,
}

/// Builds a realm's key set from a JWKS document, reusing the previous set's `Arc`s for
/// unchanged keys (so cached tokens survive routine refreshes). Pure.
pub(crate) fn build_key_set(
    doc: &[u8],
    allowed: AlgSet,
    previous: &KeySet,
) -> Result<BuiltKeySet, String> {
    let doc: JwksDoc =
        serde_json::from_slice(doc).map_err(|e| format!("JWKS is not a JSON key set: {e}"))?;
    let mut skipped = Vec::new();
    let mut prepared: Vec<PreparedKey> = Vec::new();
    for (i, value) in doc.keys.into_iter().enumerate() {
        let raw: RawJwk = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                skipped.push(format!("key #{i}: not a JWK: {e}"));
                continue;
            }
        };
        let label = raw.kid.clone().unwrap_or_else(|| format!("#{i}"));
        match prepare_key(&raw, allowed) {
            Ok(k) => prepared.push(k),
            Err(why) => skipped.push(format!("key {label}: {why}")),
        }
    }
    // Ambiguity rules: duplicate kids and kid-less keys in a multi-key set are unusable.
    let mut kid_count: HashMap<&str, usize> = HashMap::new();
    for k in &prepared {
        if let Some(kid) = k.kid() {
            *kid_count.entry(kid).or_default() += 1;
        }
    }
    let dup: HashSet<String> = kid_count
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(k, _)| k.to_string())
        .collect();
    let multi = prepared.len() > 1;
    let mut usable = Vec::with_capacity(prepared.len());
    for k in prepared {
        match k.kid() {
            Some(kid) if dup.contains(kid) => skipped.push(format!("key {kid}: duplicate kid")),
            None if multi => skipped.push("a key without kid in a multi-key set".into()),
            _ => usable.push(k),
        }
    }
    if usable.len() > MAX_KEYS_PER_REALM {
        skipped.push(format!(
            "{} usable keys, keeping the first {MAX_KEYS_PER_REALM}",
            usable.len()
        ));
        usable.truncate(MAX_KEYS_PER_REALM);
    }
    let mut set = KeySet::default();
    for k in usable {
        let reuse = previous
            .find(k.kid())
            .filter(|old| old.material == k.material && old.kid == k.kid && !old.is_retired())
            .cloned();
        let key = reuse.unwrap_or_else(|| Arc::new(k));
        if let Some(kid) = key.kid() {
            set.by_kid.insert(kid.into(), key.clone());
        }
        set.all.push(key);
    }
    let dropped = previous
        .all
        .iter()
        .filter(|old| !set.all.iter().any(|new| Arc::ptr_eq(old, new)))
        .cloned()
        .collect();
    Ok(BuiltKeySet {
        set,
        dropped,
        skipped,
    })
}

// ---------------------------------------------------------------------------------------------
// Realms
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Source {
    Discovery(String),
    JwksUri(String),
    File(PathBuf),
}

/// What identifies a realm's key source; a reload that changes it replaces the realm.
#[derive(Clone, Debug, PartialEq)]
struct RealmSpec {
    issuer: Arc<str>,
    source: Source,
    algs: AlgSet,
}

fn default_issuer(base_url: &str, realm: &str) -> String {
    format!("{}/realms/{}", base_url.trim_end_matches('/'), realm)
}

fn spec_for(settings: &JwksSettings, realm: &str) -> RealmSpec {
    let ov = settings.realm_overrides.get(realm);
    let issuer = ov
        .and_then(|o| o.issuer.clone())
        .unwrap_or_else(|| default_issuer(&settings.base_url, realm));
    let source = match ov {
        Some(RealmOverride {
            jwks_file: Some(path),
            ..
        }) => Source::File(path.clone()),
        Some(RealmOverride {
            jwks_uri: Some(uri),
            ..
        }) => Source::JwksUri(uri.clone()),
        _ => Source::Discovery(format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        )),
    };
    let algs = AlgSet::from_slice(
        ov.and_then(|o| o.algorithms.as_deref())
            .unwrap_or(&settings.algorithms),
    );
    RealmSpec {
        issuer: issuer.into(),
        source,
        algs,
    }
}

const NOT_LOADED: u8 = 0;
const LOADED: u8 = 1;
const FAILED: u8 = 2;
const NOT_FOUND: u8 = 3;
const REFUSED: u8 = 4;

fn state_name(s: u8) -> &'static str {
    match s {
        NOT_LOADED => "not_loaded",
        LOADED => "loaded",
        FAILED => "failed",
        NOT_FOUND => "not_found",
        _ => "refused",
    }
}

/// Single-flight state of a realm's fetches.
struct Gate {
    in_flight: bool,
    last_started: Option<Instant>,
}

/// Refresher-private memory of a realm (never touched by the request path).
#[derive(Default)]
struct FetchMemo {
    jwks_uri: Option<String>,
    doc_digest: Option<[u8; 32]>,
    last_error: Option<String>,
}

/// One realm: its issuer, key source and current keys.
pub(crate) struct Realm {
    name: Arc<str>,
    spec: RealmSpec,
    is_static: AtomicBool,
    keys: ArcSwap<KeySet>,
    state: AtomicU8,
    /// Clock seconds of the last successful fetch; 0 = never.
    loaded_at: AtomicU64,
    /// Clock seconds of the last use (for dynamic-realm LRU eviction).
    last_used: AtomicU64,
    /// Evicted or removed: keys installed later are retired at once.
    dropped: AtomicBool,
    gate: Mutex<Gate>,
    /// Notified after every fetch attempt, success or not; request-path waiters wait on it.
    /// A `Notify` (a few words) rather than a `watch` channel (hundreds of bytes): 10 000
    /// static realms each carry one.
    done: Notify,
    memo: Mutex<FetchMemo>,
}

impl Realm {
    fn new(name: &str, spec: RealmSpec, is_static: bool, now: u64) -> Self {
        Self {
            name: name.into(),
            spec,
            is_static: AtomicBool::new(is_static),
            keys: ArcSwap::from_pointee(KeySet::default()),
            state: AtomicU8::new(NOT_LOADED),
            loaded_at: AtomicU64::new(0),
            last_used: AtomicU64::new(now),
            dropped: AtomicBool::new(false),
            gate: Mutex::new(Gate {
                in_flight: false,
                last_started: None,
            }),
            done: Notify::new(),
            memo: Mutex::new(FetchMemo::default()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn issuer(&self) -> &Arc<str> {
        &self.spec.issuer
    }

    pub(crate) fn allows(&self, alg: Alg) -> bool {
        self.spec.algs.contains(alg)
    }

    fn is_static(&self) -> bool {
        self.is_static.load(Ordering::Relaxed)
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Loaded and within `max_stale` of its last successful fetch.
    pub(crate) fn usable_at(&self, now: u64, max_stale: u64) -> bool {
        self.state() == LOADED
            && now.saturating_sub(self.loaded_at.load(Ordering::Acquire)) <= max_stale
    }

    /// Records use for LRU; writes at most once per second so hot realms don't bounce a
    /// cache line between cores on every request.
    pub(crate) fn touch(&self, now: u64) {
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    pub(crate) fn find_key(&self, kid: Option<&str>) -> Option<Arc<PreparedKey>> {
        self.keys.load().find(kid).cloned()
    }

    fn drop_keys(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.keys.load().retire_all();
    }
}

impl std::fmt::Debug for Realm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realm")
            .field("name", &self.name)
            .field("issuer", &self.spec.issuer)
            .field("state", &state_name(self.state()))
            .finish()
    }
}

/// Clears the realm's in-flight flag and wakes waiters when a fetch ends, even by panic.
struct FetchGuard(Arc<Realm>);

impl Drop for FetchGuard {
    fn drop(&mut self) {
        self.0.gate.lock().in_flight = false;
        self.0.done.notify_waiters();
    }
}

#[derive(Clone, Default)]
struct RealmMap {
    map: HashMap<Arc<str>, Arc<Realm>, ahash::RandomState>,
    dynamic: usize,
}

/// Token bucket for admitting never-seen dynamic realms.
struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        let burst = (rate * 2.0).max(1.0);
        Self {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Work for the refresher.
pub(crate) enum Cmd {
    /// Fetch this realm now (its gate is already marked in flight by the sender).
    Fetch(Arc<Realm>),
}

/// What a request-path wait on a realm fetch turned into.
enum Waited {
    /// A fetch ran (or was already running) and has finished, or the wait timed out.
    Done,
    /// No fetch allowed yet: retry in this many seconds.
    Denied(u64),
}

/// Facts about one realm, for `/readyz`, the admin API and `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealmInfo {
    pub name: String,
    pub issuer: String,
    pub is_static: bool,
    /// `not_loaded`, `loaded`, `failed`, `not_found` or `refused`.
    pub state: &'static str,
    pub kids: Vec<String>,
    /// Seconds since the last successful fetch.
    pub age_secs: Option<u64>,
    pub last_error: Option<String>,
}

/// Per-realm key sets shared by the request path (readers) and the refresher (writer).
pub struct KeyStore {
    settings: ArcSwap<JwksSettings>,
    /// Cached `max_stale` seconds for the cache-hit path.
    max_stale_secs: AtomicU64,
    realms: ArcSwap<RealmMap>,
    /// Serialises realm-map writers (never held across `.await`).
    write: Mutex<()>,
    /// Realms the IdP said it doesn't know: name -> clock second until which that holds.
    /// Bound: [`NEGATIVE_CACHE_CAPACITY`] names, CLOCK-Pro eviction; TTL checked on read.
    negative: quick_cache::sync::Cache<Box<str>, u64>,
    limiter: Mutex<TokenBucket>,
    cmd: mpsc::Sender<Cmd>,
    reconcile: Notify,
    clock: Clock,
}

/// Builds the key store and its refresher. Nothing is fetched until the refresher runs.
pub fn key_store(
    settings: JwksSettings,
    static_realms: Vec<String>,
) -> (Arc<KeyStore>, JwksRefresher) {
    key_store_with_clock(settings, static_realms, system_clock())
}

/// [`key_store`] with an injected clock (tests, replay tools).
pub fn key_store_with_clock(
    settings: JwksSettings,
    static_realms: Vec<String>,
    clock: Clock,
) -> (Arc<KeyStore>, JwksRefresher) {
    let (tx, rx) = mpsc::channel(CMD_QUEUE);
    let now = clock();
    let mut map = RealmMap::default();
    for name in &static_realms {
        if !valid_realm_name(name) {
            error!(realm = %name, "invalid realm name in configuration; ignored");
            continue;
        }
        let realm = Realm::new(name, spec_for(&settings, name), true, now);
        map.map.insert(realm.name.clone(), Arc::new(realm));
    }
    let store = Arc::new(KeyStore {
        max_stale_secs: AtomicU64::new(settings.max_stale.as_secs()),
        limiter: Mutex::new(TokenBucket::new(settings.new_realms_per_second)),
        settings: ArcSwap::from_pointee(settings),
        realms: ArcSwap::from_pointee(map),
        write: Mutex::new(()),
        negative: quick_cache::sync::Cache::new(NEGATIVE_CACHE_CAPACITY),
        cmd: tx,
        reconcile: Notify::new(),
        clock,
    });
    let refresher = JwksRefresher {
        store: store.clone(),
        rx: Mutex::new(Some(rx)),
    };
    (store, refresher)
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl KeyStore {
    /// The store's clock (seconds since the epoch).
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn settings(&self) -> Arc<JwksSettings> {
        self.settings.load_full()
    }

    pub(crate) fn max_stale_secs(&self) -> u64 {
        self.max_stale_secs.load(Ordering::Relaxed)
    }

    /// The issuer tokens of `realm` must carry (override or `{base_url}/realms/{realm}`).
    pub fn issuer_for(&self, realm: &str) -> Arc<str> {
        if let Some(r) = self.realms.load().map.get(realm) {
            return r.issuer().clone();
        }
        spec_for(&self.settings.load(), realm).issuer
    }

    /// Runs `f` on the realm's current entry without cloning anything (cache-hit path).
    pub(crate) fn with_realm<T>(&self, name: &str, f: impl FnOnce(&Realm) -> T) -> Option<T> {
        self.realms.load().map.get(name).map(|r| f(r))
    }

    fn lookup(&self, name: &str) -> Option<Arc<Realm>> {
        self.realms.load().map.get(name).cloned()
    }

    fn is_current(&self, realm: &Arc<Realm>) -> bool {
        self.realms
            .load()
            .map
            .get(realm.name())
            .is_some_and(|r| Arc::ptr_eq(r, realm))
    }

    /// Resolves a realm with usable keys, loading it (bounded wait) if needed.
    ///
    /// Errors: [`KeyError::UnknownTenant`] for names the IdP does not know (negatively cached)
    /// or that are not valid realm names; [`KeyError::RealmUnavailable`] when keys cannot be had
    /// in time or are older than `max_stale`.
    pub(crate) async fn realm(&self, name: &str) -> Result<Arc<Realm>, KeyError> {
        let now = self.now();
        let realm = match self.lookup(name) {
            Some(r) => r,
            None => self.admit_dynamic(name, now)?,
        };
        realm.touch(now);
        if realm.usable_at(now, self.max_stale_secs()) {
            return Ok(realm);
        }
        let settings = self.settings.load_full();
        if realm.state() == LOADED {
            // Loaded but stale beyond max_stale: the refresher keeps retrying with backoff;
            // one request-triggered attempt per interval can help it along.
            let _ = self.await_fetch(&realm, Duration::ZERO, &settings).await;
            return Err(KeyError::RealmUnavailable {
                retry_after_secs: secs_ceil(settings.min_refetch_interval).max(1),
            });
        }
        let waited = self
            .await_fetch(&realm, settings.load_wait, &settings)
            .await;
        let now = self.now();
        if realm.usable_at(now, self.max_stale_secs()) {
            return Ok(realm);
        }
        if realm.state() == NOT_FOUND && !realm.is_static() {
            return Err(KeyError::UnknownTenant);
        }
        let retry = match waited {
            Waited::Denied(s) => s,
            Waited::Done => secs_ceil(settings.min_refetch_interval),
        };
        Err(KeyError::RealmUnavailable {
            retry_after_secs: retry.max(1),
        })
    }

    /// First sight of a dynamic realm: validate, consult the negative cache and the global
    /// admission bucket, then insert it (evicting the least recently used dynamic realm).
    fn admit_dynamic(&self, name: &str, now: u64) -> Result<Arc<Realm>, KeyError> {
        if !valid_realm_name(name) {
            return Err(KeyError::UnknownTenant);
        }
        if let Some(until) = self.negative.get(name) {
            if now < until {
                return Err(KeyError::UnknownTenant);
            }
            self.negative.remove(name);
        }
        let settings = self.settings.load();
        if settings.max_dynamic_realms == 0 {
            return Err(KeyError::UnknownTenant);
        }
        if !self.limiter.lock().try_take(Instant::now()) {
            debug!(realm = %name, "dynamic realm admission rate exceeded");
            return Err(KeyError::RealmUnavailable {
                retry_after_secs: 1,
            });
        }
        let _w = self.write.lock();
        let cur = self.realms.load_full();
        if let Some(r) = cur.map.get(name) {
            return Ok(r.clone());
        }
        let mut next = (*cur).clone();
        while next.dynamic >= settings.max_dynamic_realms {
            let victim = next
                .map
                .values()
                .filter(|r| !r.is_static())
                .min_by_key(|r| r.last_used.load(Ordering::Relaxed))
                .cloned();
            let Some(victim) = victim else { break };
            info!(realm = %victim.name, "evicting least recently used dynamic realm");
            next.map.remove(victim.name());
            next.dynamic -= 1;
            self.forget(&victim);
        }
        let realm = Arc::new(Realm::new(name, spec_for(&settings, name), false, now));
        next.map.insert(realm.name.clone(), realm.clone());
        next.dynamic += 1;
        self.realms.store(Arc::new(next));
        Ok(realm)
    }

    /// Drops a realm's keys (cached tokens verified with them die too) and its gauges.
    fn forget(&self, realm: &Realm) {
        realm.drop_keys();
        let label = metrics().realms.label(realm.name());
        if label != OTHER {
            let _ = metrics().jwks_keys.remove_label_values(&[label]);
            let _ = metrics().jwks_age_seconds.remove_label_values(&[label]);
        }
    }

    /// Removes a dynamic realm the IdP does not know and remembers that for `negative_ttl`.
    fn forget_not_found(&self, realm: &Arc<Realm>) {
        let ttl = self.settings.load().negative_ttl;
        self.negative.insert(
            realm.name().into(),
            self.now().saturating_add(secs_ceil(ttl)),
        );
        let _w = self.write.lock();
        let cur = self.realms.load_full();
        if cur
            .map
            .get(realm.name())
            .is_some_and(|r| Arc::ptr_eq(r, realm))
        {
            let mut next = (*cur).clone();
            next.map.remove(realm.name());
            next.dynamic = next.dynamic.saturating_sub(1);
            self.realms.store(Arc::new(next));
        }
        self.forget(realm);
    }

    /// Starts (or joins) a fetch of `realm` and waits for it, at most `wait`.
    async fn await_fetch(
        &self,
        realm: &Arc<Realm>,
        wait: Duration,
        settings: &JwksSettings,
    ) -> Waited {
        // Registered under the gate lock, before the fetch can end: `notify_waiters` reaches
        // a `Notified` from the moment it is created, polled or not.
        let done = {
            let mut gate = realm.gate.lock();
            if !gate.in_flight {
                if let Some(started) = gate.last_started {
                    let since = started.elapsed();
                    if since < settings.min_refetch_interval {
                        return Waited::Denied(secs_ceil(settings.min_refetch_interval - since));
                    }
                }
                if self.cmd.try_send(Cmd::Fetch(realm.clone())).is_err() {
                    warn!(realm = %realm.name, "JWKS refresher queue full or refresher not running");
                    return Waited::Denied(1);
                }
                gate.in_flight = true;
                gate.last_started = Some(Instant::now());
            }
            realm.done.notified()
        };
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, done).await;
        }
        Waited::Done
    }

    /// The verification key for `kid`, refetching the realm's JWKS once (single-flight, at
    /// most once per `min_refetch_interval`) when the kid is unknown. Callers must have done
    /// the cheap checks first (issuer, algorithm), so only plausible tokens can cause a fetch.
    pub(crate) async fn key(
        &self,
        realm: &Arc<Realm>,
        kid: Option<&str>,
    ) -> Result<Arc<PreparedKey>, KeyError> {
        if let Some(k) = realm.find_key(kid) {
            return Ok(k);
        }
        if kid.is_none() {
            return Err(KeyError::UnknownKey);
        }
        let settings = self.settings.load_full();
        match self
            .await_fetch(realm, settings.refetch_wait, &settings)
            .await
        {
            Waited::Denied(_) => Err(KeyError::UnknownKey),
            Waited::Done => realm.find_key(kid).ok_or(KeyError::UnknownKey),
        }
    }

    /// Applies a configuration reload. Realms whose issuer, key source and algorithms are
    /// unchanged keep their keys (and so their cached tokens); new static realms are loaded by
    /// the refresher; static realms no longer configured are dropped.
    pub fn update_config(&self, settings: JwksSettings, static_realms: Vec<String>) {
        let statics: HashSet<&str> = static_realms
            .iter()
            .map(String::as_str)
            .filter(|n| {
                let ok = valid_realm_name(n);
                if !ok {
                    error!(realm = %n, "invalid realm name in configuration; ignored");
                }
                ok
            })
            .collect();
        let now = self.now();
        let _w = self.write.lock();
        let cur = self.realms.load_full();
        let mut next = RealmMap::default();
        for (name, realm) in &cur.map {
            let is_static = statics.contains(&**name);
            if realm.is_static() && !is_static {
                info!(realm = %name, "realm removed from configuration; dropping its keys");
                self.forget(realm);
                continue;
            }
            let spec = spec_for(&settings, name);
            if spec == realm.spec {
                realm.is_static.store(is_static, Ordering::Relaxed);
                next.map.insert(name.clone(), realm.clone());
            } else {
                info!(realm = %name, "realm key source changed; reloading");
                self.forget(realm);
                next.map.insert(
                    name.clone(),
                    Arc::new(Realm::new(name, spec, is_static, now)),
                );
            }
            if !is_static {
                next.dynamic += 1;
            }
        }
        for name in statics {
            if !next.map.contains_key(name) {
                let realm = Realm::new(name, spec_for(&settings, name), true, now);
                next.map.insert(realm.name.clone(), Arc::new(realm));
            }
        }
        while next.dynamic > settings.max_dynamic_realms {
            let victim = next
                .map
                .values()
                .filter(|r| !r.is_static())
                .min_by_key(|r| r.last_used.load(Ordering::Relaxed))
                .cloned();
            let Some(victim) = victim else { break };
            next.map.remove(victim.name());
            next.dynamic -= 1;
            self.forget(&victim);
        }
        self.realms.store(Arc::new(next));
        self.negative.clear();
        *self.limiter.lock() = TokenBucket::new(settings.new_realms_per_second);
        self.max_stale_secs
            .store(settings.max_stale.as_secs(), Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
        self.reconcile.notify_one();
    }

    /// True when every static realm has usable keys (for `/readyz`).
    pub fn static_realms_ready(&self) -> bool {
        let now = self.now();
        let stale = self.max_stale_secs();
        self.realms
            .load()
            .map
            .values()
            .filter(|r| r.is_static())
            .all(|r| r.usable_at(now, stale) && r.keys.load().len() > 0)
    }

    /// Static realms without usable keys, sorted (for `/readyz` output).
    pub fn not_ready_realms(&self) -> Vec<String> {
        let now = self.now();
        let stale = self.max_stale_secs();
        let mut out: Vec<String> = self
            .realms
            .load()
            .map
            .values()
            .filter(|r| r.is_static() && !(r.usable_at(now, stale) && r.keys.load().len() > 0))
            .map(|r| r.name.to_string())
            .collect();
        out.sort();
        out
    }

    /// Sets `jwks_age_seconds` for every loaded realm; call before encoding `/metrics`.
    pub fn refresh_age_gauges(&self) {
        let now = self.now();
        for realm in self.realms.load().map.values() {
            let at = realm.loaded_at.load(Ordering::Acquire);
            let label = metrics().realms.label(realm.name());
            if at > 0 && label != OTHER {
                let age = i64::try_from(now.saturating_sub(at)).unwrap_or(i64::MAX);
                metrics()
                    .jwks_age_seconds
                    .with_label_values(&[label])
                    .set(age);
            }
        }
    }

    /// Every realm currently held, sorted by name.
    pub fn describe(&self) -> Vec<RealmInfo> {
        let now = self.now();
        let mut out: Vec<RealmInfo> = self
            .realms
            .load()
            .map
            .values()
            .map(|r| {
                let at = r.loaded_at.load(Ordering::Acquire);
                RealmInfo {
                    name: r.name.to_string(),
                    issuer: r.issuer().to_string(),
                    is_static: r.is_static(),
                    state: state_name(r.state()),
                    kids: r.keys.load().kids(),
                    age_secs: (at > 0).then(|| now.saturating_sub(at)),
                    last_error: r.memo.lock().last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Installs a JWKS document for `realm` directly, as if just fetched (benches, tools and
    /// tests that need no network). Creates the realm as static if it is not held yet.
    #[doc(hidden)]
    pub fn install_jwks(&self, realm: &str, jwks: &[u8]) -> Result<usize, String> {
        if !valid_realm_name(realm) {
            return Err(format!("invalid realm name {realm:?}"));
        }
        let entry = match self.lookup(realm) {
            Some(r) => r,
            None => {
                let _w = self.write.lock();
                let cur = self.realms.load_full();
                let mut next = (*cur).clone();
                let r = Arc::new(Realm::new(
                    realm,
                    spec_for(&self.settings.load(), realm),
                    true,
                    self.now(),
                ));
                next.map.insert(r.name.clone(), r.clone());
                self.realms.store(Arc::new(next));
                r
            }
        };
        match self.apply(
            &entry,
            Ok(Fetched {
                doc: jwks.to_vec(),
                max_age: None,
            }),
        ) {
            Outcome::Ok { .. } => Ok(entry.keys.load().len()),
            _ => Err(entry
                .memo
                .lock()
                .last_error
                .clone()
                .unwrap_or_else(|| "not loaded".into())),
        }
    }

    fn static_list(&self) -> Vec<Arc<Realm>> {
        self.realms
            .load()
            .map
            .values()
            .filter(|r| r.is_static())
            .cloned()
            .collect()
    }

    fn all_realms(&self) -> Vec<Arc<Realm>> {
        self.realms.load().map.values().cloned().collect()
    }

    /// Records a fetch result on the realm: keys, state, metrics, logs. Returns the outcome
    /// for scheduling.
    fn apply(&self, realm: &Arc<Realm>, res: Result<Fetched, FetchError>) -> Outcome {
        let label = metrics().realms.label(realm.name()).to_owned();
        let now = self.now();
        let ever_loaded = realm.loaded_at.load(Ordering::Acquire) > 0;
        let fail = |kind: &'static str, state: u8, msg: String| -> Outcome {
            metrics()
                .jwks_fetch_total
                .with_label_values(&[&label, kind])
                .inc();
            if ever_loaded {
                let age = now.saturating_sub(realm.loaded_at.load(Ordering::Acquire));
                warn!(realm = %realm.name, error = %msg, age_secs = age, "JWKS refresh failed; keeping last-good keys");
            } else {
                realm.state.store(state, Ordering::Release);
                warn!(realm = %realm.name, error = %msg, "JWKS load failed");
            }
            realm.memo.lock().last_error = Some(msg);
            Outcome::Failed
        };
        let fetched = match res {
            Ok(f) => f,
            Err(FetchError::NotFound(msg)) => {
                if !ever_loaded && !realm.is_static() {
                    metrics()
                        .jwks_fetch_total
                        .with_label_values(&[&label, "not_found"])
                        .inc();
                    info!(realm = %realm.name, error = %msg, "IdP does not know this realm; remembering");
                    realm.memo.lock().last_error = Some(msg);
                    realm.state.store(NOT_FOUND, Ordering::Release);
                    self.forget_not_found(realm);
                    return Outcome::NotFound;
                }
                return fail("error", NOT_FOUND, msg);
            }
            Err(FetchError::Refused(msg)) => {
                error!(realm = %realm.name, error = %msg, "IdP document refused");
                return fail("invalid", REFUSED, msg);
            }
            Err(FetchError::Failed(msg)) => return fail("error", FAILED, msg),
        };
        let digest = sha256(&fetched.doc);
        let unchanged = ever_loaded && realm.memo.lock().doc_digest == Some(digest);
        if !unchanged {
            let previous = realm.keys.load_full();
            let built = match build_key_set(&fetched.doc, realm.spec.algs, &previous) {
                Ok(b) => b,
                Err(msg) => return fail("invalid", FAILED, msg),
            };
            for why in &built.skipped {
                warn!(realm = %realm.name, "JWKS key skipped: {why}");
            }
            if built.set.len() == 0 {
                return fail("invalid", FAILED, "JWKS has no usable key".into());
            }
            let added: Vec<String> = built
                .set
                .all
                .iter()
                .filter(|k| !previous.all.iter().any(|o| Arc::ptr_eq(o, k)))
                .map(|k| k.kid().unwrap_or("<none>").to_string())
                .collect();
            let removed: Vec<String> = built
                .dropped
                .iter()
                .map(|k| k.kid().unwrap_or("<none>").to_string())
                .collect();
            let count = built.set.len();
            realm.keys.store(Arc::new(built.set));
            for k in &built.dropped {
                k.retire();
            }
            if realm.dropped.load(Ordering::SeqCst) {
                realm.keys.load().retire_all();
            }
            realm.memo.lock().doc_digest = Some(digest);
            if label != OTHER {
                metrics()
                    .jwks_keys
                    .with_label_values(&[&label])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            info!(realm = %realm.name, keys = count, ?added, ?removed, "JWKS loaded");
        }
        realm.loaded_at.store(now.max(1), Ordering::Release);
        realm.state.store(LOADED, Ordering::Release);
        realm.memo.lock().last_error = None;
        metrics()
            .jwks_fetch_total
            .with_label_values(&[&label, "ok"])
            .inc();
        Outcome::Ok {
            max_age: fetched.max_age,
        }
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

// ---------------------------------------------------------------------------------------------
// Fetching (refresher side only)
// ---------------------------------------------------------------------------------------------

struct Fetched {
    doc: Vec<u8>,
    max_age: Option<Duration>,
}

#[derive(Debug)]
enum FetchError {
    /// The IdP answered 404: it does not know the realm.
    NotFound(String),
    /// A document arrived but must not be used (issuer mismatch, bad jwks_uri).
    Refused(String),
    /// Transport error, timeout, non-2xx, oversize, unreadable file.
    Failed(String),
}

enum Outcome {
    Ok { max_age: Option<Duration> },
    NotFound,
    Failed,
}

/// `max-age` from a `Cache-Control` value; `None` when absent or when the response forbids
/// caching (`no-store`, `no-cache`). Pure.
pub fn parse_max_age(cache_control: &str) -> Option<Duration> {
    let mut max_age = None;
    for directive in cache_control.split(',') {
        let d = directive.trim();
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return None;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    max_age
}

/// Time until the next refresh of a realm that just loaded: `refresh`, shortened to the
/// response's `max-age` when that is sooner, but never below `min(MIN_MAX_AGE, refresh)`.
/// Jitter is applied by the caller. Pure.
pub fn next_refresh_interval(max_age: Option<Duration>, refresh: Duration) -> Duration {
    match max_age {
        Some(m) => m.min(refresh).max(MIN_MAX_AGE.min(refresh)),
        None => refresh,
    }
}

fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

fn build_client(settings: &JwksSettings) -> Result<reqwest::Client, String> {
    // Redirects are followed only to the same scheme+host+port, at most 3 times: a JWKS
    // endpoint must not be able to send us to an attacker-chosen host.
    let policy = reqwest::redirect::Policy::custom(|attempt| {
        let same_origin = attempt.previous().first().is_some_and(|first| {
            first.scheme() == attempt.url().scheme()
                && first.host_str() == attempt.url().host_str()
                && first.port_or_known_default() == attempt.url().port_or_known_default()
        });
        if attempt.previous().len() > 3 || !same_origin {
            attempt.stop()
        } else {
            attempt.follow()
        }
    });
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.fetch_timeout)
        .redirect(policy)
        .user_agent(concat!("realmgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build HTTP client: {e}"))
}

fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad URL {url:?}: {e}"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!("URL scheme {other:?} is not http(s)")),
    }
}

/// GETs a JSON document, reading the body in chunks and stopping past `limit` bytes.
async fn get_doc(
    client: Option<&reqwest::Client>,
    url: &str,
    limit: usize,
) -> Result<Fetched, FetchError> {
    let client = client.ok_or_else(|| FetchError::Failed("no HTTP client".into()))?;
    check_http_url(url).map_err(FetchError::Refused)?;
    let mut resp = client
        .get(url)
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| FetchError::Failed(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if status == http::StatusCode::NOT_FOUND {
        return Err(FetchError::NotFound(format!("GET {url}: 404")));
    }
    if !status.is_success() {
        return Err(FetchError::Failed(format!(
            "GET {url}: HTTP {}",
            status.as_u16()
        )));
    }
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(FetchError::Failed(format!(
            "GET {url}: document larger than {limit} bytes"
        )));
    }
    let max_age = resp
        .headers()
        .get(http::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| FetchError::Failed(format!("GET {url}: {e}")))?
    {
        if body.len() + chunk.len() > limit {
            return Err(FetchError::Failed(format!(
                "GET {url}: document larger than {limit} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched { doc: body, max_age })
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

/// Runs OIDC discovery: the document's `issuer` must equal the expected issuer exactly.
async fn discover(
    client: Option<&reqwest::Client>,
    url: &str,
    issuer: &str,
    limit: usize,
) -> Result<String, FetchError> {
    let doc = get_doc(client, url, limit).await?;
    let d: Discovery = serde_json::from_slice(&doc.doc)
        .map_err(|e| FetchError::Failed(format!("discovery document at {url} unreadable: {e}")))?;
    if d.issuer != issuer {
        return Err(FetchError::Refused(format!(
            "discovery issuer {:?} differs from the expected {issuer:?}",
            d.issuer
        )));
    }
    check_http_url(&d.jwks_uri).map_err(FetchError::Refused)?;
    Ok(d.jwks_uri)
}

async fn read_file(path: PathBuf, limit: usize) -> Result<Fetched, FetchError> {
    let shown = path.display().to_string();
    let res = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use std::io::Read;
        let f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        f.take(limit as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(|e| e.to_string())?;
        if buf.len() > limit {
            return Err(format!("larger than {limit} bytes"));
        }
        Ok(buf)
    })
    .await
    .map_err(|e| FetchError::Failed(format!("reading {shown}: {e}")))?;
    res.map(|doc| Fetched { doc, max_age: None })
        .map_err(|e| FetchError::Failed(format!("reading {shown}: {e}")))
}

async fn fetch_keys(
    client: Option<&reqwest::Client>,
    settings: &JwksSettings,
    realm: &Realm,
) -> Result<Fetched, FetchError> {
    let limit = settings.max_document_bytes;
    match &realm.spec.source {
        Source::File(path) => read_file(path.clone(), limit).await,
        Source::JwksUri(uri) => get_doc(client, uri, limit).await,
        Source::Discovery(url) => {
            let cached = realm.memo.lock().jwks_uri.clone();
            let uri = match cached {
                Some(u) => u,
                None => {
                    let u = discover(client, url, realm.issuer(), limit).await?;
                    realm.memo.lock().jwks_uri = Some(u.clone());
                    u
                }
            };
            let res = get_doc(client, &uri, limit).await;
            if res.is_err() {
                // Rediscover next time: the IdP may have moved its JWKS.
                realm.memo.lock().jwks_uri = None;
            }
            res
        }
    }
}

/// Fetches (IdP requests or key-file reads) in flight at once. A gateway with 10 000 static
/// realms must not open 10 000 connections to Keycloak at start (nor park 10 000 reads on the
/// blocking pool, whose threads and malloc arenas outlive the burst); queued fetches wait here.
pub const MAX_CONCURRENT_FETCHES: usize = 16;

async fn fetch_task(
    store: Arc<KeyStore>,
    client: Option<reqwest::Client>,
    realm: Arc<Realm>,
    slots: Arc<tokio::sync::Semaphore>,
) -> (Arc<Realm>, Outcome) {
    let _guard = FetchGuard(realm.clone());
    // The semaphore is never closed; if it were, fetching unthrottled beats not fetching.
    let _slot = slots.acquire().await.ok();
    let settings = store.settings();
    let res = fetch_keys(client.as_ref(), &settings, &realm).await;
    let outcome = store.apply(&realm, res);
    (realm, outcome)
}

// ---------------------------------------------------------------------------------------------
// Refresher
// ---------------------------------------------------------------------------------------------

/// The only task that talks to the IdP. Run it once: as a Pingora background service, or
/// with [`JwksRefresher::run`] on any runtime.
pub struct JwksRefresher {
    store: Arc<KeyStore>,
    rx: Mutex<Option<mpsc::Receiver<Cmd>>>,
}

struct SchedEntry {
    realm: Weak<Realm>,
    due: Instant,
    backoff: Duration,
}

/// When each loaded realm is next refreshed. Bound: one entry per realm held by the store;
/// entries of realms no longer held are dropped when they come due or on reconcile.
#[derive(Default)]
struct Schedule {
    entries: HashMap<Arc<str>, SchedEntry>,
}

impl Schedule {
    fn next_due(&self, now: Instant) -> Instant {
        self.entries
            .values()
            .map(|e| e.due)
            .min()
            .unwrap_or(now + Duration::from_secs(3600))
    }
}

/// Marks a realm's fetch as started by the refresher itself; false if one is in flight.
fn claim(realm: &Realm) -> bool {
    let mut gate = realm.gate.lock();
    if gate.in_flight {
        return false;
    }
    gate.in_flight = true;
    gate.last_started = Some(Instant::now());
    true
}

impl JwksRefresher {
    /// Loads the static realms, then refreshes until `shutdown` changes (or its sender drops).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_inner(shutdown, None).await;
    }

    async fn run_inner(
        &self,
        mut shutdown: watch::Receiver<bool>,
        ready: Option<pingora::services::ServiceReadyNotifier>,
    ) {
        let Some(mut rx) = self.rx.lock().take() else {
            error!("JWKS refresher started twice; the second start does nothing");
            if let Some(r) = ready {
                r.notify_ready();
            }
            return;
        };
        let store = self.store.clone();
        let client = match build_client(&store.settings()) {
            Ok(c) => Some(c),
            Err(e) => {
                error!(error = %e, "JWKS fetching disabled");
                None
            }
        };
        let mut tasks: JoinSet<(Arc<Realm>, Outcome)> = JoinSet::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_FETCHES));
        let mut sched = Schedule::default();
        let statics = store.static_list();
        info!(realms = statics.len(), "loading static realms");
        for realm in statics {
            if claim(&realm) {
                tasks.spawn(fetch_task(
                    store.clone(),
                    client.clone(),
                    realm,
                    slots.clone(),
                ));
            }
        }
        while !tasks.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(res) = tasks.join_next() => self.finished(res, &mut sched),
            }
        }
        let not_ready = store.not_ready_realms();
        if not_ready.is_empty() {
            info!("all static realms loaded");
        } else {
            warn!(
                ?not_ready,
                "static realms without keys at start; retrying in the background"
            );
        }
        if let Some(r) = ready {
            r.notify_ready();
        }
        loop {
            let now = Instant::now();
            let next = sched.next_due(now);
            tokio::select! {
                _ = shutdown.changed() => break,
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Fetch(realm)) => {
                        tasks.spawn(fetch_task(store.clone(), client.clone(), realm, slots.clone()));
                    }
                    None => break,
                },
                _ = store.reconcile.notified() => {
                    sched.entries.retain(|_, e| e.realm.upgrade().is_some_and(|r| store.is_current(&r)));
                    for realm in store.all_realms() {
                        if realm.is_static() && realm.state() != LOADED
                            && !sched.entries.contains_key(realm.name()) && claim(&realm)
                        {
                            tasks.spawn(fetch_task(store.clone(), client.clone(), realm, slots.clone()));
                        }
                    }
                }
                Some(res) = tasks.join_next(), if !tasks.is_empty() => self.finished(res, &mut sched),
                _ = tokio::time::sleep_until(next.into()) => {
                    let now = Instant::now();
                    let due: Vec<Arc<str>> = sched.entries.iter()
                        .filter(|(_, e)| e.due <= now).map(|(k, _)| k.clone()).collect();
                    for name in due {
                        let realm = sched.entries.get(&name).and_then(|e| e.realm.upgrade());
                        match realm {
                            Some(realm) if store.is_current(&realm) => {
                                if let Some(e) = sched.entries.get_mut(&name) {
                                    // Rescheduled when the fetch finishes.
                                    e.due = now + Duration::from_secs(3600);
                                }
                                if claim(&realm) {
                                    tasks.spawn(fetch_task(store.clone(), client.clone(), realm, slots.clone()));
                                }
                            }
                            _ => { sched.entries.remove(&name); }
                        }
                    }
                }
            }
        }
        info!("JWKS refresher stopped");
    }

    fn finished(
        &self,
        res: Result<(Arc<Realm>, Outcome), tokio::task::JoinError>,
        sched: &mut Schedule,
    ) {
        let (realm, outcome) = match res {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "JWKS fetch task failed");
                return;
            }
        };
        if !self.store.is_current(&realm) {
            sched.entries.remove(realm.name());
            return;
        }
        let settings = self.store.settings();
        let now = Instant::now();
        match outcome {
            Outcome::Ok { max_age } => {
                let due = now + jittered(next_refresh_interval(max_age, settings.refresh));
                sched.entries.insert(
                    realm.name.clone(),
                    SchedEntry {
                        realm: Arc::downgrade(&realm),
                        due,
                        backoff: BACKOFF_START,
                    },
                );
            }
            Outcome::NotFound | Outcome::Failed => {
                let ever_loaded = realm.loaded_at.load(Ordering::Acquire) > 0;
                if !(ever_loaded || realm.is_static()) {
                    // A dynamic realm that never loaded is retried on demand only.
                    sched.entries.remove(realm.name());
                    return;
                }
                let backoff = sched
                    .entries
                    .get(realm.name())
                    .map_or(BACKOFF_START, |e| e.backoff);
                sched.entries.insert(
                    realm.name.clone(),
                    SchedEntry {
                        realm: Arc::downgrade(&realm),
                        due: now + jittered(backoff),
                        backoff: (backoff * 2).min(BACKOFF_MAX),
                    },
                );
            }
        }
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for JwksRefresher {
    /// Loads every static realm, then reports ready (so the proxy starts with keys), then
    /// refreshes until shutdown.
    async fn start_with_ready_notifier(
        &self,
        shutdown: pingora::server::ShutdownWatch,
        ready: pingora::services::ServiceReadyNotifier,
    ) {
        self.run_inner(shutdown, Some(ready)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Test kit: an in-process Keycloak-shaped IdP and token minting (shared with verify tests)
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
pub(crate) mod testkit {
    use super::*;
    use axum::extract::{Path, State};
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;
    use axum::Router;
    use base64::Engine;
    use jsonwebtoken::{Algorithm, EncodingKey};
    use serde_json::{json, Value};
    use std::future::Future;
    use std::sync::atomic::AtomicUsize;

    /// A signing key from `testdata/jwt` (generated once with openssl; test-only).
    pub struct TestKey {
        pub enc: EncodingKey,
        pub alg: Algorithm,
        pub public_pem: &'static str,
    }

    macro_rules! key {
        ($name:literal, $ctor:ident, $alg:expr) => {
            TestKey {
                enc: EncodingKey::$ctor(include_bytes!(concat!(
                    "../../testdata/jwt/",
                    $name,
                    ".pem"
                )))
                .unwrap(),
                alg: $alg,
                public_pem: include_str!(concat!("../../testdata/jwt/", $name, ".pub.pem")),
            }
        };
    }

    pub fn rsa_a() -> TestKey {
        key!("rsa_a", from_rsa_pem, Algorithm::RS256)
    }
    pub fn rsa_b() -> TestKey {
        key!("rsa_b", from_rsa_pem, Algorithm::RS256)
    }
    pub fn rsa_c() -> TestKey {
        key!("rsa_c", from_rsa_pem, Algorithm::RS256)
    }
    /// The public JWK of a 1024-bit RSA key (kid "small"); its private half is not kept.
    pub fn rsa_small_jwk() -> Value {
        serde_json::from_str(include_str!("../../testdata/jwt/rsa_small.jwk.json")).unwrap()
    }
    pub fn ec() -> TestKey {
        key!("ec_p256", from_ec_pem, Algorithm::ES256)
    }
    pub fn ed() -> TestKey {
        key!("ed25519", from_ed_pem, Algorithm::EdDSA)
    }

    impl TestKey {
        /// The public JWK, with `kid` and `use: sig`.
        pub fn jwk(&self, kid: &str) -> Value {
            let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.enc, self.alg).unwrap();
            let mut v = serde_json::to_value(jwk).unwrap();
            v["kid"] = json!(kid);
            v["use"] = json!("sig");
            v
        }
    }

    pub fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Signs `claims` under an arbitrary JOSE header (so tests can add jku, crit, ...).
    pub fn mint_with_header(key: &TestKey, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let alg = serde_json::from_value::<Algorithm>(header["alg"].clone()).unwrap_or(key.alg);
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.enc, alg).unwrap();
        format!("{input}.{sig}")
    }

    pub fn mint(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
        let mut header = json!({ "alg": key.alg, "typ": "JWT" });
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        mint_with_header(key, &header, claims)
    }

    /// A Keycloak-shaped access token's claims.
    pub fn claims(iss: &str, now: u64) -> Value {
        json!({
            "exp": now + 300, "iat": now, "jti": "2f0c7d4e", "iss": iss,
            "aud": "account", "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
            "typ": "Bearer", "azp": "qa-platform-backend",
            "realm_access": { "roles": ["offline_access", "tenant_admin"] },
            "resource_access": {
                "qa-platform-backend": { "roles": ["agent", "viewer"] },
                "account": { "roles": ["manage-account"] }
            },
            "scope": "openid profile email", "preferred_username": "ada",
            "email": "ada@acme.example.com"
        })
    }

    #[derive(Clone, Copy, Debug, PartialEq)]
    pub enum Mode {
        Ok,
        Fail,
        Hang,
        Garbage,
        Huge,
        WrongIssuer,
        RedirectSameHost,
        RedirectOtherHost,
    }

    struct RealmDoc {
        keys: Vec<Value>,
        mode: Mode,
        cache_control: Option<String>,
    }

    #[derive(Default)]
    pub struct IdpState {
        realms: Mutex<HashMap<String, RealmDoc>>,
        hits: Mutex<HashMap<String, usize>>,
        base: Mutex<String>,
        pub total: AtomicUsize,
    }

    /// A Keycloak-shaped IdP on 127.0.0.1:0: discovery and certs per realm; unknown realms are
    /// 404 like Keycloak. Keys can be rotated, realms made to fail, hang or send garbage.
    pub struct Idp {
        pub base: String,
        state: Arc<IdpState>,
    }

    fn count(st: &IdpState, what: &str, realm: &str) {
        *st.hits.lock().entry(format!("{what}:{realm}")).or_default() += 1;
        st.total.fetch_add(1, Ordering::SeqCst);
    }

    fn mode_of(st: &IdpState, realm: &str) -> Option<Mode> {
        st.realms.lock().get(realm).map(|r| r.mode)
    }

    async fn misbehave(mode: Mode) -> Option<Response> {
        match mode {
            Mode::Fail => Some(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
            Mode::Hang => {
                tokio::time::sleep(Duration::from_secs(30)).await;
                Some(StatusCode::GATEWAY_TIMEOUT.into_response())
            }
            Mode::Garbage => Some(
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    "{\"keys\": [oops",
                )
                    .into_response(),
            ),
            Mode::Huge => {
                let pad = "x".repeat(64 * 1024);
                Some(Json(json!({ "keys": [], "pad": pad })).into_response())
            }
            _ => None,
        }
    }

    use axum::Json;

    async fn disco(State(st): State<Arc<IdpState>>, Path(realm): Path<String>) -> Response {
        count(&st, "disco", &realm);
        let Some(mode) = mode_of(&st, &realm) else {
            return (StatusCode::NOT_FOUND, "Realm does not exist").into_response();
        };
        if let Some(r) = misbehave(mode).await {
            return r;
        }
        let base = st.base.lock().clone();
        let issuer = if mode == Mode::WrongIssuer {
            format!("{base}/realms/evil")
        } else {
            format!("{base}/realms/{realm}")
        };
        Json(json!({
            "issuer": issuer,
            "jwks_uri": format!("{base}/realms/{realm}/protocol/openid-connect/certs"),
            "token_endpoint": format!("{base}/realms/{realm}/protocol/openid-connect/token"),
        }))
        .into_response()
    }

    async fn certs(State(st): State<Arc<IdpState>>, Path(realm): Path<String>) -> Response {
        count(&st, "certs", &realm);
        let Some(mode) = mode_of(&st, &realm) else {
            return (StatusCode::NOT_FOUND, "Realm does not exist").into_response();
        };
        if let Some(r) = misbehave(mode).await {
            return r;
        }
        let base = st.base.lock().clone();
        let port = base.rsplit(':').next().unwrap_or("").to_string();
        match mode {
            Mode::RedirectSameHost => {
                let to = format!("{base}/realms/{realm}/protocol/openid-connect/certs-real");
                return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
            }
            Mode::RedirectOtherHost => {
                let to = format!(
                    "http://localhost:{port}/realms/{realm}/protocol/openid-connect/certs-real"
                );
                return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
            }
            _ => {}
        }
        keys_response(&st, &realm)
    }

    fn keys_response(st: &IdpState, realm: &str) -> Response {
        let realms = st.realms.lock();
        let Some(doc) = realms.get(realm) else {
            return StatusCode::NOT_FOUND.into_response();
        };
        let mut resp = Json(json!({ "keys": doc.keys })).into_response();
        if let Some(cc) = &doc.cache_control {
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, cc.parse().unwrap());
        }
        resp
    }

    async fn certs_real(State(st): State<Arc<IdpState>>, Path(realm): Path<String>) -> Response {
        count(&st, "certs-real", &realm);
        keys_response(&st, &realm)
    }

    async fn custom(State(st): State<Arc<IdpState>>, Path(name): Path<String>) -> Response {
        count(&st, "custom", &name);
        keys_response(&st, &name)
    }

    impl Idp {
        pub async fn start() -> Idp {
            let state = Arc::new(IdpState::default());
            let app = Router::new()
                .route(
                    "/realms/{realm}/.well-known/openid-configuration",
                    get(disco),
                )
                .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
                .route(
                    "/realms/{realm}/protocol/openid-connect/certs-real",
                    get(certs_real),
                )
                .route("/custom/{name}/jwks.json", get(custom))
                .with_state(state.clone());
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let base = format!("http://127.0.0.1:{port}");
            *state.base.lock() = base.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Idp { base, state }
        }

        pub fn issuer(&self, realm: &str) -> String {
            format!("{}/realms/{realm}", self.base)
        }

        pub fn set_keys(&self, realm: &str, keys: Vec<Value>) {
            let mut realms = self.state.realms.lock();
            let doc = realms.entry(realm.to_string()).or_insert(RealmDoc {
                keys: Vec::new(),
                mode: Mode::Ok,
                cache_control: None,
            });
            doc.keys = keys;
        }

        pub fn set_mode(&self, realm: &str, mode: Mode) {
            if let Some(doc) = self.state.realms.lock().get_mut(realm) {
                doc.mode = mode;
            }
        }

        pub fn set_cache_control(&self, realm: &str, cc: &str) {
            if let Some(doc) = self.state.realms.lock().get_mut(realm) {
                doc.cache_control = Some(cc.to_string());
            }
        }

        pub fn hits(&self, what: &str, realm: &str) -> usize {
            self.state
                .hits
                .lock()
                .get(&format!("{what}:{realm}"))
                .copied()
                .unwrap_or(0)
        }

        pub fn total_hits(&self) -> usize {
            self.state.total.load(Ordering::SeqCst)
        }
    }

    /// A settable clock; returns the clock and its handle.
    pub fn manual_clock(start: u64) -> (Clock, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(start));
        let h = t.clone();
        (Arc::new(move || h.load(Ordering::SeqCst)), t)
    }

    pub fn wall() -> u64 {
        (system_clock())()
    }

    /// Short timeouts so failure tests finish fast.
    pub fn test_settings(base: &str) -> JwksSettings {
        JwksSettings {
            base_url: base.to_string(),
            refresh: Duration::from_secs(60),
            min_refetch_interval: Duration::from_millis(300),
            connect_timeout: Duration::from_millis(500),
            fetch_timeout: Duration::from_millis(500),
            refetch_wait: Duration::from_secs(2),
            load_wait: Duration::from_secs(2),
            ..JwksSettings::default()
        }
    }

    /// Builds the store and runs its refresher on the current runtime until the returned
    /// sender is dropped.
    pub fn start_store(
        settings: JwksSettings,
        statics: &[&str],
        clock: Clock,
    ) -> (Arc<KeyStore>, watch::Sender<bool>) {
        let (store, refresher) = key_store_with_clock(
            settings,
            statics.iter().map(|s| s.to_string()).collect(),
            clock,
        );
        let (tx, rx) = watch::channel(false);
        tokio::spawn(refresher.run(rx));
        (store, tx)
    }

    /// Polls `cond` every 10 ms for up to 5 s.
    pub async fn wait_until<F: Future<Output = bool>>(mut cond: impl FnMut() -> F) -> bool {
        for _ in 0..500 {
            if cond().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    pub fn state_of(store: &KeyStore, realm: &str) -> Option<RealmInfo> {
        store.describe().into_iter().find(|r| r.name == realm)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::testkit::*;
    use super::*;
    use serde_json::json;

    fn set(keys: Vec<serde_json::Value>) -> Vec<u8> {
        json!({ "keys": keys }).to_string().into_bytes()
    }

    fn rs256() -> AlgSet {
        AlgSet::from_slice(&[Alg::RS256])
    }

    #[test]
    fn realm_names() {
        for (name, ok) in [
            ("tenant-acme", true),
            ("qa-default", true),
            ("a.b_c-9", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a%2fb", false),
            ("a b", false),
            ("a?b", false),
            ("ünï", false),
        ] {
            assert_eq!(valid_realm_name(name), ok, "{name:?}");
        }
        assert!(!valid_realm_name(&"a".repeat(256)));
    }

    #[test]
    fn alg_names_and_sets() {
        for a in Alg::ALL {
            assert_eq!(Alg::from_name(a.name()), Some(a));
            assert_eq!(a.name().parse::<Alg>().unwrap(), a);
        }
        for bad in ["none", "HS256", "rs256", "RSA-OAEP", ""] {
            assert_eq!(Alg::from_name(bad), None, "{bad}");
        }
        let s = AlgSet::from_slice(&[Alg::RS256, Alg::ES256]);
        assert!(s.contains(Alg::RS256) && s.contains(Alg::ES256) && !s.contains(Alg::PS256));
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![Alg::RS256, Alg::ES256]);
        assert!(AlgSet::default().is_empty());
    }

    #[test]
    fn cache_control_max_age() {
        for (v, want) in [
            ("max-age=120", Some(120)),
            ("public, max-age=3600, must-revalidate", Some(3600)),
            ("Max-Age=7", Some(7)),
            ("no-cache", None),
            ("max-age=60, no-store", None),
            ("max-age=abc", None),
            ("", None),
        ] {
            assert_eq!(parse_max_age(v), want.map(Duration::from_secs), "{v:?}");
        }
    }

    #[test]
    fn refresh_interval_bounds() {
        let five = Duration::from_secs(300);
        let s = Duration::from_secs;
        for (max_age, refresh, want) in [
            (None, five, five),
            (Some(s(120)), five, s(120)),
            (Some(s(5)), five, s(60)),
            (Some(s(86_400)), five, five),
            (Some(s(5)), s(10), s(10)),
            (Some(s(1)), s(30), s(30)),
        ] {
            assert_eq!(
                next_refresh_interval(max_age, refresh),
                want,
                "{max_age:?} {refresh:?}"
            );
        }
        for _ in 0..100 {
            let j = jittered(five);
            assert!(j >= s(270) && j <= s(330), "{j:?}");
        }
    }

    #[test]
    fn token_bucket_admits_rate_and_burst() {
        let mut b = TokenBucket::new(2);
        let t0 = Instant::now();
        assert_eq!(
            (0..10).filter(|_| b.try_take(t0)).count(),
            4,
            "burst is 2x rate"
        );
        assert!(!b.try_take(t0 + Duration::from_millis(100)));
        assert!(b.try_take(t0 + Duration::from_millis(700)));
        assert!(!b.try_take(t0 + Duration::from_millis(700)));
    }

    #[test]
    fn usable_key_rules() {
        let a = rsa_a();
        let mut enc = a.jwk("enc-key");
        enc["use"] = json!("enc");
        enc["alg"] = json!("RSA-OAEP");
        let mut oct = json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "hmac" });
        oct["alg"] = json!("HS256");
        let mut wrong_alg = rsa_b().jwk("es-labelled");
        wrong_alg["alg"] = json!("ES256");
        let mut no_verify = rsa_c().jwk("no-verify");
        no_verify["key_ops"] = json!(["encrypt"]);
        let small = rsa_small_jwk();
        let mut ec_key = ec().jwk("ec1");
        ec_key.as_object_mut().unwrap().remove("alg");
        let docs = set(vec![
            a.jwk("good"),
            enc,
            oct,
            json!({ "kty": "oct", "k": "c2VjcmV0", "kid": "bare-oct" }),
            wrong_alg,
            no_verify,
            small,
            ec_key,
            json!({ "kty": "RSA", "kid": "no-n", "e": "AQAB" }),
            json!("not an object"),
        ]);
        let built = build_key_set(&docs, rs256(), &KeySet::default()).unwrap();
        assert_eq!(built.set.kids(), vec!["good".to_string()]);
        let reasons = built.skipped.join("\n");
        for needle in [
            "enc-key: use",
            "hmac: alg \"HS256\" is not supported",
            "bare-oct: symmetric",
            "es-labelled: alg ES256 is not allowed",
            "no-verify: key_ops",
            "small: RSA modulus of 1024 bits",
            "ec1: no allowed algorithm",
            "no-n: missing n",
            "#9: not a JWK",
        ] {
            assert!(
                reasons.contains(needle),
                "missing {needle:?} in:\n{reasons}"
            );
        }
        // The same EC key is usable when the realm allows ES256; an RSA key without alg
        // then serves every allowed RSA algorithm.
        let mut rsa_no_alg = a.jwk("r");
        rsa_no_alg.as_object_mut().unwrap().remove("alg");
        let both = AlgSet::from_slice(&[Alg::RS256, Alg::PS256, Alg::ES256, Alg::EdDSA]);
        let built = build_key_set(
            &set(vec![rsa_no_alg, ec().jwk("e"), ed().jwk("d")]),
            both,
            &KeySet::default(),
        )
        .unwrap();
        assert_eq!(built.set.len(), 3);
        let r = built.set.find(Some("r")).unwrap();
        assert_eq!(
            r.algorithms().collect::<Vec<_>>(),
            vec![Alg::RS256, Alg::PS256]
        );
        assert_eq!(
            built
                .set
                .find(Some("e"))
                .unwrap()
                .algorithms()
                .collect::<Vec<_>>(),
            vec![Alg::ES256]
        );
        assert_eq!(
            built
                .set
                .find(Some("d"))
                .unwrap()
                .algorithms()
                .collect::<Vec<_>>(),
            vec![Alg::EdDSA]
        );
    }

    #[test]
    fn kid_rules() {
        let a = rsa_a();
        let b = rsa_b();
        // Duplicate kids: both unusable.
        let built = build_key_set(
            &set(vec![a.jwk("k"), b.jwk("k"), a.jwk("other")]),
            rs256(),
            &KeySet::default(),
        )
        .unwrap();
        assert_eq!(built.set.kids(), vec!["other".to_string()]);
        // A kid-less key in a multi-key set is unreachable, so skipped.
        let mut bare = b.jwk("x");
        bare.as_object_mut().unwrap().remove("kid");
        let built = build_key_set(
            &set(vec![a.jwk("k"), bare.clone()]),
            rs256(),
            &KeySet::default(),
        )
        .unwrap();
        assert_eq!(built.set.kids(), vec!["k".to_string()]);
        assert!(
            built.set.find(None).is_some(),
            "single key: a kid-less token may use it"
        );
        // A lone kid-less key serves kid-less tokens only.
        let built = build_key_set(&set(vec![bare]), rs256(), &KeySet::default()).unwrap();
        assert!(built.set.find(None).is_some());
        assert!(built.set.find(Some("x")).is_none());
        // Two keys: a kid-less token matches nothing.
        let built = build_key_set(
            &set(vec![a.jwk("k1"), b.jwk("k2")]),
            rs256(),
            &KeySet::default(),
        )
        .unwrap();
        assert!(built.set.find(None).is_none());
    }

    #[test]
    fn rebuild_reuses_unchanged_keys_and_reports_dropped() {
        let (a, b, c) = (rsa_a(), rsa_b(), rsa_c());
        let first = build_key_set(
            &set(vec![a.jwk("a"), b.jwk("b")]),
            rs256(),
            &KeySet::default(),
        )
        .unwrap();
        let old_a = first.set.find(Some("a")).unwrap().clone();
        let old_b = first.set.find(Some("b")).unwrap().clone();
        // "a" unchanged, "b" gone, "c" new, and "a"'s kid reused for other material is new.
        let second =
            build_key_set(&set(vec![a.jwk("a"), c.jwk("c")]), rs256(), &first.set).unwrap();
        assert!(Arc::ptr_eq(second.set.find(Some("a")).unwrap(), &old_a));
        assert_eq!(second.dropped.len(), 1);
        assert!(Arc::ptr_eq(&second.dropped[0], &old_b));
        let third = build_key_set(&set(vec![b.jwk("a")]), rs256(), &second.set).unwrap();
        assert!(!Arc::ptr_eq(third.set.find(Some("a")).unwrap(), &old_a));
        assert_eq!(third.dropped.len(), 2);
        assert!(build_key_set(b"{\"nokeys\":1}", rs256(), &KeySet::default()).is_err());
        assert!(build_key_set(b"garbage", rs256(), &KeySet::default()).is_err());
    }

    #[test]
    fn padded_and_leading_zero_components_are_accepted() {
        let mut j = rsa_a().jwk("p");
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(j["n"].as_str().unwrap())
            .unwrap();
        let mut padded = vec![0u8];
        padded.extend_from_slice(&n);
        j["n"] = json!(base64::engine::general_purpose::URL_SAFE.encode(&padded));
        let built = build_key_set(&set(vec![j]), rs256(), &KeySet::default()).unwrap();
        assert_eq!(built.set.len(), 1, "{:?}", built.skipped);
    }

    #[test]
    fn spec_and_issuer() {
        let mut s = JwksSettings {
            base_url: "https://kc.example.com/".into(),
            ..JwksSettings::default()
        };
        let spec = spec_for(&s, "tenant-acme");
        assert_eq!(&*spec.issuer, "https://kc.example.com/realms/tenant-acme");
        assert_eq!(
            spec.source,
            Source::Discovery(
                "https://kc.example.com/realms/tenant-acme/.well-known/openid-configuration".into()
            )
        );
        Arc::make_mut(&mut s.realm_overrides).insert(
            "azure".into(),
            RealmOverride {
                issuer: Some("https://login.example.com/tid/v2.0".into()),
                jwks_uri: Some("https://login.example.com/keys".into()),
                algorithms: Some(vec![Alg::RS256, Alg::PS256]),
                ..RealmOverride::default()
            },
        );
        let az = spec_for(&s, "azure");
        assert_eq!(&*az.issuer, "https://login.example.com/tid/v2.0");
        assert_eq!(
            az.source,
            Source::JwksUri("https://login.example.com/keys".into())
        );
        assert!(az.algs.contains(Alg::PS256));
        let (store, _r) = key_store(s, vec![]);
        assert_eq!(
            &*store.issuer_for("azure"),
            "https://login.example.com/tid/v2.0"
        );
        assert_eq!(&*store.issuer_for("x"), "https://kc.example.com/realms/x");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn static_realms_load_before_ready_and_readiness_tracks_keys() {
        let idp = Idp::start().await;
        idp.set_keys("r-ready", vec![rsa_a().jwk("k1")]);
        idp.set_keys("r-down", vec![rsa_a().jwk("k1")]);
        idp.set_mode("r-down", Mode::Fail);
        let (store, refresher) = key_store(
            test_settings(&idp.base),
            vec!["r-ready".into(), "r-down".into()],
        );
        assert!(!store.static_realms_ready());
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            use pingora::services::background::BackgroundService;
            refresher
                .start_with_ready_notifier(
                    stop_rx,
                    pingora::services::ServiceReadyNotifier::new(ready_tx),
                )
                .await;
        });
        ready_rx.changed().await.unwrap();
        // At the moment of readiness the initial loads are done.
        assert_eq!(state_of(&store, "r-ready").unwrap().state, "loaded");
        assert_eq!(state_of(&store, "r-down").unwrap().state, "failed");
        assert!(!store.static_realms_ready());
        assert_eq!(store.not_ready_realms(), vec!["r-down".to_string()]);
        // The refresher retries a failing static realm with backoff (1 s first).
        idp.set_mode("r-down", Mode::Ok);
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        assert!(store.not_ready_realms().is_empty());
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovery_issuer_mismatch_refuses_the_realm() {
        let idp = Idp::start().await;
        idp.set_keys("r-evil", vec![rsa_a().jwk("k1")]);
        idp.set_mode("r-evil", Mode::WrongIssuer);
        let (store, _stop) = start_store(test_settings(&idp.base), &["r-evil"], system_clock());
        assert!(
            wait_until(|| async { state_of(&store, "r-evil").unwrap().state != "not_loaded" })
                .await
        );
        let info = state_of(&store, "r-evil").unwrap();
        assert_eq!(info.state, "refused");
        assert!(info.last_error.unwrap().contains("discovery issuer"));
        assert!(info.kids.is_empty());
        assert_eq!(
            idp.hits("certs", "r-evil"),
            0,
            "keys are never fetched from a refused realm"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn document_size_limit_is_enforced() {
        let idp = Idp::start().await;
        idp.set_keys("r-huge", vec![rsa_a().jwk("k1")]);
        idp.set_mode("r-huge", Mode::Huge);
        let settings = JwksSettings {
            max_document_bytes: 16 * 1024,
            ..test_settings(&idp.base)
        };
        let (store, _stop) = start_store(settings, &["r-huge"], system_clock());
        assert!(
            wait_until(|| async { state_of(&store, "r-huge").unwrap().state != "not_loaded" })
                .await
        );
        let info = state_of(&store, "r-huge").unwrap();
        assert_eq!(info.state, "failed");
        assert!(info.last_error.unwrap().contains("larger than 16384 bytes"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_and_hanging_idps_fail_cleanly() {
        let idp = Idp::start().await;
        for r in ["r-garbage", "r-hang"] {
            idp.set_keys(r, vec![rsa_a().jwk("k1")]);
        }
        idp.set_mode("r-garbage", Mode::Garbage);
        idp.set_mode("r-hang", Mode::Hang);
        let started = Instant::now();
        let (store, _stop) = start_store(
            test_settings(&idp.base),
            &["r-garbage", "r-hang"],
            system_clock(),
        );
        assert!(
            wait_until(|| async { store.describe().iter().all(|r| r.state != "not_loaded") }).await
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "bounded by fetch_timeout"
        );
        for r in store.describe() {
            assert_eq!(r.state, "failed", "{r:?}");
        }
        let err = |r: &str| state_of(&store, r).unwrap().last_error.unwrap();
        assert!(
            err("r-garbage").contains("unreadable"),
            "{}",
            err("r-garbage")
        );
        assert!(err("r-hang").contains("GET"), "{}", err("r-hang"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redirects_only_within_the_same_origin() {
        let idp = Idp::start().await;
        for r in ["r-same", "r-other"] {
            idp.set_keys(r, vec![rsa_a().jwk("k1")]);
        }
        idp.set_mode("r-same", Mode::RedirectSameHost);
        idp.set_mode("r-other", Mode::RedirectOtherHost);
        let (store, _stop) = start_store(
            test_settings(&idp.base),
            &["r-same", "r-other"],
            system_clock(),
        );
        assert!(
            wait_until(|| async { store.describe().iter().all(|r| r.state != "not_loaded") }).await
        );
        assert_eq!(state_of(&store, "r-same").unwrap().state, "loaded");
        let other = state_of(&store, "r-other").unwrap();
        assert_eq!(other.state, "failed");
        assert!(other.last_error.unwrap().contains("302"));
        assert_eq!(idp.hits("certs-real", "r-other"), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jwks_uri_override_skips_discovery_and_jwks_file_reloads() {
        let idp = Idp::start().await;
        idp.set_keys("ext", vec![rsa_a().jwk("ext-1")]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, set(vec![rsa_b().jwk("file-1")])).unwrap();
        let mut settings = test_settings(&idp.base);
        settings.refresh = Duration::from_millis(200);
        Arc::make_mut(&mut settings.realm_overrides).insert(
            "ext".into(),
            RealmOverride {
                issuer: Some("https://issuer.example.com".into()),
                jwks_uri: Some(format!("{}/custom/ext/jwks.json", idp.base)),
                ..RealmOverride::default()
            },
        );
        Arc::make_mut(&mut settings.realm_overrides).insert(
            "airgap".into(),
            RealmOverride {
                jwks_file: Some(path.clone()),
                ..RealmOverride::default()
            },
        );
        let (store, _stop) = start_store(settings, &["ext", "airgap"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        assert_eq!(
            state_of(&store, "ext").unwrap().kids,
            vec!["ext-1".to_string()]
        );
        assert_eq!(idp.hits("disco", "ext"), 0);
        assert!(idp.hits("custom", "ext") >= 1);
        assert_eq!(&*store.issuer_for("ext"), "https://issuer.example.com");
        assert_eq!(
            state_of(&store, "airgap").unwrap().kids,
            vec!["file-1".to_string()]
        );
        std::fs::write(&path, set(vec![rsa_c().jwk("file-2")])).unwrap();
        assert!(
            wait_until(|| async {
                state_of(&store, "airgap").unwrap().kids == vec!["file-2".to_string()]
            })
            .await
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refresh_rotates_keys_and_retires_dropped_ones() {
        let idp = Idp::start().await;
        idp.set_keys("r-rot", vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")]);
        let mut settings = test_settings(&idp.base);
        settings.refresh = Duration::from_millis(300);
        let (store, _stop) = start_store(settings, &["r-rot"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let realm = store.lookup("r-rot").unwrap();
        let k1 = realm.find_key(Some("k1")).unwrap();
        let k2 = realm.find_key(Some("k2")).unwrap();
        idp.set_keys("r-rot", vec![rsa_a().jwk("k1"), rsa_c().jwk("k3")]);
        assert!(wait_until(|| async { realm.find_key(Some("k3")).is_some() }).await);
        assert!(k2.is_retired(), "a key that left the JWKS is retired");
        assert!(!k1.is_retired());
        assert!(
            Arc::ptr_eq(&realm.find_key(Some("k1")).unwrap(), &k1),
            "unchanged key keeps its Arc"
        );
        // Periodic refresh keeps going (every ~300 ms here).
        let before = idp.hits("certs", "r-rot");
        assert!(wait_until(|| async { idp.hits("certs", "r-rot") >= before + 2 }).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idp_failure_keeps_last_good_keys_and_counts_errors() {
        let idp = Idp::start().await;
        idp.set_keys("r-flaky", vec![rsa_a().jwk("k1")]);
        let mut settings = test_settings(&idp.base);
        settings.refresh = Duration::from_millis(100);
        let (store, _stop) = start_store(settings, &["r-flaky"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let label = metrics().realms.label("r-flaky").to_string();
        let errors = || {
            metrics()
                .jwks_fetch_total
                .with_label_values(&[&label, "error"])
                .get()
        };
        let before = errors();
        idp.set_mode("r-flaky", Mode::Fail);
        assert!(
            wait_until(|| async { errors() > before }).await,
            "failure shows in metrics"
        );
        let info = state_of(&store, "r-flaky").unwrap();
        assert_eq!(info.state, "loaded");
        assert_eq!(info.kids, vec!["k1".to_string()]);
        assert!(info.last_error.unwrap().contains("500"));
        assert!(store.static_realms_ready(), "within max_stale, still ready");
        store.refresh_age_gauges();
        if label != OTHER {
            let text = String::from_utf8(metrics().encode()).unwrap();
            assert!(text.contains(&format!("realmgate_jwks_age_seconds{{realm=\"{label}\"}}")));
            assert!(text.contains(&format!("realmgate_jwks_keys{{realm=\"{label}\"}} 1")));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_config_keeps_unchanged_realms_adds_and_drops() {
        let idp = Idp::start().await;
        for r in ["cfg-a", "cfg-b", "cfg-c"] {
            idp.set_keys(r, vec![rsa_a().jwk(&format!("{r}-k"))]);
        }
        let settings = test_settings(&idp.base);
        let (store, _stop) = start_store(settings.clone(), &["cfg-a", "cfg-b"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let a_key = store
            .lookup("cfg-a")
            .unwrap()
            .find_key(Some("cfg-a-k"))
            .unwrap();
        let b_key = store
            .lookup("cfg-b")
            .unwrap()
            .find_key(Some("cfg-b-k"))
            .unwrap();
        let hits_a = idp.hits("certs", "cfg-a");
        store.update_config(settings.clone(), vec!["cfg-a".into(), "cfg-c".into()]);
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let names: Vec<String> = store.describe().into_iter().map(|r| r.name).collect();
        assert_eq!(names, vec!["cfg-a".to_string(), "cfg-c".to_string()]);
        assert!(Arc::ptr_eq(
            &store
                .lookup("cfg-a")
                .unwrap()
                .find_key(Some("cfg-a-k"))
                .unwrap(),
            &a_key
        ));
        assert_eq!(
            idp.hits("certs", "cfg-a"),
            hits_a,
            "unchanged realm not refetched"
        );
        assert!(b_key.is_retired(), "removed realm's keys are dropped");
        // Changing a realm's key source replaces it (and retires its keys).
        let mut changed = settings.clone();
        Arc::make_mut(&mut changed.realm_overrides).insert(
            "cfg-a".into(),
            RealmOverride {
                algorithms: Some(vec![Alg::RS256, Alg::PS256]),
                ..RealmOverride::default()
            },
        );
        store.update_config(changed, vec!["cfg-a".into(), "cfg-c".into()]);
        assert!(a_key.is_retired());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dynamic_realms_load_lazily_404_is_negatively_cached_and_lru_bounded() {
        let idp = Idp::start().await;
        for r in ["dyn-1", "dyn-2", "dyn-3"] {
            idp.set_keys(r, vec![rsa_a().jwk("k")]);
        }
        let mut settings = test_settings(&idp.base);
        settings.max_dynamic_realms = 2;
        let (store, _stop) = start_store(settings, &[], system_clock());
        assert_eq!(idp.total_hits(), 0, "nothing loads before first use");
        let r1 = store.realm("dyn-1").await.unwrap();
        assert_eq!(r1.name(), "dyn-1");
        store.realm("dyn-2").await.unwrap();
        let k1 = r1.find_key(Some("k")).unwrap();
        // Make dyn-1 the least recently used, then admit a third: dyn-1 is evicted.
        r1.last_used.store(0, Ordering::Relaxed);
        store.realm("dyn-3").await.unwrap();
        let names: Vec<String> = store.describe().into_iter().map(|r| r.name).collect();
        assert_eq!(names, vec!["dyn-2".to_string(), "dyn-3".to_string()]);
        assert!(
            k1.is_retired(),
            "evicting a realm drops its keys (and so its cached tokens)"
        );
        // Unknown realm: 404 -> unknown_tenant, remembered.
        assert_eq!(
            store.realm("nope").await.unwrap_err(),
            KeyError::UnknownTenant
        );
        let disco = idp.hits("disco", "nope");
        assert_eq!(disco, 1);
        for _ in 0..5 {
            assert_eq!(
                store.realm("nope").await.unwrap_err(),
                KeyError::UnknownTenant
            );
        }
        assert_eq!(
            idp.hits("disco", "nope"),
            1,
            "negative cache: no second fetch"
        );
        assert!(state_of(&store, "nope").is_none(), "not held as a realm");
        // Invalid names never reach the IdP.
        assert_eq!(
            store.realm("../admin").await.unwrap_err(),
            KeyError::UnknownTenant
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_seen_realms_are_rate_limited() {
        let idp = Idp::start().await;
        let mut settings = test_settings(&idp.base);
        settings.new_realms_per_second = 1;
        let (store, _stop) = start_store(settings, &[], system_clock());
        let mut results = Vec::new();
        for i in 0..6 {
            results.push(store.realm(&format!("rnd-{i}")).await.unwrap_err());
        }
        let limited = results
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    KeyError::RealmUnavailable {
                        retry_after_secs: 1
                    }
                )
            })
            .count();
        assert_eq!(limited, 4, "burst of 2, then 1/s: {results:?}");
        assert_eq!(idp.total_hits(), 2, "only admitted realms reach the IdP");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_loaded_realm_while_idp_down_is_unavailable_with_retry_hint() {
        let idp = Idp::start().await;
        idp.set_keys("r-off", vec![rsa_a().jwk("k")]);
        idp.set_mode("r-off", Mode::Fail);
        let mut settings = test_settings(&idp.base);
        settings.min_refetch_interval = Duration::from_secs(10);
        let (store, _stop) = start_store(settings, &[], system_clock());
        let err = store.realm("r-off").await.unwrap_err();
        // 503 `realm_unavailable` once mapped: `verify`'s key_errors_map_to_auth_errors.
        assert!(matches!(err, KeyError::RealmUnavailable { .. }), "{err:?}");
        // A second request within the interval does not fetch again and says when to retry.
        let hits = idp.total_hits();
        match store.realm("r-off").await.unwrap_err() {
            KeyError::RealmUnavailable { retry_after_secs } => {
                assert!((1..=10).contains(&retry_after_secs))
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(idp.total_hits(), hits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetch_reads_max_age_and_classifies_404() {
        let idp = Idp::start().await;
        idp.set_keys("r-cc", vec![rsa_a().jwk("k1")]);
        idp.set_cache_control("r-cc", "public, max-age=120");
        let client = build_client(&test_settings(&idp.base)).unwrap();
        let url = format!("{}/realms/r-cc/protocol/openid-connect/certs", idp.base);
        let doc = get_doc(Some(&client), &url, 1 << 20).await.unwrap();
        assert_eq!(doc.max_age, Some(Duration::from_secs(120)));
        let missing = format!("{}/realms/r-none/protocol/openid-connect/certs", idp.base);
        assert!(matches!(
            get_doc(Some(&client), &missing, 1 << 20).await,
            Err(FetchError::NotFound(_))
        ));
        assert!(matches!(
            get_doc(Some(&client), "file:///etc/passwd", 1 << 20).await,
            Err(FetchError::Refused(_))
        ));
        assert!(matches!(
            get_doc(None, &url, 1 << 20).await,
            Err(FetchError::Failed(_))
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn install_jwks_needs_no_network() {
        let (store, _r) = key_store(JwksSettings::default(), vec![]);
        let n = store
            .install_jwks("bench", &set(vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")]))
            .unwrap();
        assert_eq!(n, 2);
        assert!(store.static_realms_ready());
        assert!(store.install_jwks("bench", b"{}").is_err());
        assert!(store.install_jwks("a/b", b"{}").is_err());
    }
}
