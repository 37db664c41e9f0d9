//! Realm signing keys: OIDC discovery, JWKS fetching, prepared verification keys, refresh.
//!
//! Why it is shaped like this:
//! - **One fetcher.** Pingora runs every service on its own tokio runtime, and a reqwest
//!   client's pooled connections belong to the runtime that created them ("dispatch dropped").
//!   So all discovery/JWKS HTTP happens in the [`JwksRefresher`] task. The request path only
//!   sends it a [`Cmd`] over a channel and waits, bounded, on the realm's `watch` channel.
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
use crate::verify::AuthError;

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
    pub realm_overrides: HashMap<String, RealmOverride>,
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
            realm_overrides: HashMap::new(),
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
    /// Bumped after every fetch attempt, success or not; request-path waiters watch it.
    done: watch::Sender<u64>,
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
            done: watch::channel(0).0,
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

/// Clears the realm's in-flight flag and wakes waiters when a fetch ends, even by panic.
struct FetchGuard(Arc<Realm>);

impl Drop for FetchGuard {
    fn drop(&mut self) {
        self.0.gate.lock().in_flight = false;
        self.0.done.send_modify(|v| *v = v.wrapping_add(1));
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
    /// Errors: `unknown_tenant` for names the IdP does not know (negatively cached) or that
    /// are not valid realm names; `realm_unavailable` when keys cannot be had in time or are
    /// older than `max_stale`.
    pub(crate) async fn realm(&self, name: &str) -> Result<Arc<Realm>, AuthError> {
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
            return Err(AuthError::RealmUnavailable {
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
            return Err(AuthError::UnknownTenant);
        }
        let retry = match waited {
            Waited::Denied(s) => s,
            Waited::Done => secs_ceil(settings.min_refetch_interval),
        };
        Err(AuthError::RealmUnavailable {
            retry_after_secs: retry.max(1),
        })
    }

    /// First sight of a dynamic realm: validate, consult the negative cache and the global
    /// admission bucket, then insert it (evicting the least recently used dynamic realm).
    fn admit_dynamic(&self, name: &str, now: u64) -> Result<Arc<Realm>, AuthError> {
        if !valid_realm_name(name) {
            return Err(AuthError::UnknownTenant);
        }
        if let Some(until) = self.negative.get(name) {
            if now < until {
                return Err(AuthError::UnknownTenant);
            }
            self.negative.remove(name);
        }
        let settings = self.settings.load();
        if settings.max_dynamic_realms == 0 {
            return Err(AuthError::UnknownTenant);
        }
        if !self.limiter.lock().try_take(Instant::now()) {
            debug!(realm = %name, "dynamic realm admission rate exceeded");
            return Err(AuthError::RealmUnavailable {
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
        let mut rx = {
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
            realm.done.subscribe()
        };
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, rx.changed()).await;
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
    ) -> Result<Arc<PreparedKey>, AuthError> {
        if let Some(k) = realm.find_key(kid) {
            return Ok(k);
        }
        if kid.is_none() {
            return Err(AuthError::UnknownKey);
        }
        let settings = self.settings.load_full();
        match self
            .await_fetch(realm, settings.refetch_wait, &settings)
            .await
        {
            Waited::Denied(_) => Err(AuthError::UnknownKey),
            Waited::Done => realm.find_key(kid).ok_or(AuthError::UnknownKey),
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

async fn fetch_task(
    store: Arc<KeyStore>,
    client: Option<reqwest::Client>,
    realm: Arc<Realm>,
) -> (Arc<Realm>, Outcome) {
    let _guard = FetchGuard(realm.clone());
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
        let mut sched = Schedule::default();
        let statics = store.static_list();
        info!(realms = statics.len(), "loading static realms");
        for realm in statics {
            if claim(&realm) {
                tasks.spawn(fetch_task(store.clone(), client.clone(), realm));
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
                        tasks.spawn(fetch_task(store.clone(), client.clone(), realm));
                    }
                    None => break,
                },
                _ = store.reconcile.notified() => {
                    sched.entries.retain(|_, e| e.realm.upgrade().is_some_and(|r| store.is_current(&r)));
                    for realm in store.all_realms() {
                        if realm.is_static() && realm.state() != LOADED
                            && !sched.entries.contains_key(realm.name()) && claim(&realm)
                        {
                            tasks.spawn(fetch_task(store.clone(), client.clone(), realm));
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
                                    tasks.spawn(fetch_task(store.clone(), client.clone(), realm));
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
