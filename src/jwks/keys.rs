//! Prepared keys: JWKs parsed once into aws-lc-rs verification keys, and a realm's key set
//! built from a JWKS document under the usable-key and kid rules of the module docs.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine;
use serde::Deserialize;

use super::alg::{Alg, AlgSet};

/// Usable keys kept per realm; a JWKS with more is truncated (logged). Bounds per-realm memory.
pub const MAX_KEYS_PER_REALM: usize = 64;

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

    pub(super) fn retire(&self) {
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
    pub(crate) all: Vec<Arc<PreparedKey>>,
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

    pub(super) fn kids(&self) -> Vec<String> {
        self.all
            .iter()
            .map(|k| k.kid().unwrap_or("<none>").to_string())
            .collect()
    }

    pub(super) fn retire_all(&self) {
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
            // An empty modulus is 0 bits (and refused below), never an underflow.
            let bits =
                (n.len() * 8).saturating_sub(n.first().map_or(0, |b| b.leading_zeros() as usize));
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use serde_json::json;

    fn rs256() -> AlgSet {
        AlgSet::from_slice(&[Alg::RS256])
    }

    /// Hostile JWKS documents are skipped key by key, never a panic.
    #[test]
    fn empty_or_zero_rsa_components_are_refused_not_a_panic() {
        for (n, e) in [("", "AQAB"), ("AA", "AQAB"), ("AAAA", ""), ("", "")] {
            let doc = json!({ "keys": [{ "kty": "RSA", "kid": "k", "n": n, "e": e }] });
            // Either "no usable key" or an empty set; what matters is no panic and no key.
            if let Ok(built) =
                build_key_set(doc.to_string().as_bytes(), rs256(), &KeySet::default())
            {
                assert_eq!(built.set.len(), 0, "n={n:?} e={e:?}");
            }
        }
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
        let docs = jwks_doc(vec![
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
            &jwks_doc(vec![rsa_no_alg, ec().jwk("e"), ed().jwk("d")]),
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
            &jwks_doc(vec![a.jwk("k"), b.jwk("k"), a.jwk("other")]),
            rs256(),
            &KeySet::default(),
        )
        .unwrap();
        assert_eq!(built.set.kids(), vec!["other".to_string()]);
        // A kid-less key in a multi-key set is unreachable, so skipped.
        let mut bare = b.jwk("x");
        bare.as_object_mut().unwrap().remove("kid");
        let built = build_key_set(
            &jwks_doc(vec![a.jwk("k"), bare.clone()]),
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
        let built = build_key_set(&jwks_doc(vec![bare]), rs256(), &KeySet::default()).unwrap();
        assert!(built.set.find(None).is_some());
        assert!(built.set.find(Some("x")).is_none());
        // Two keys: a kid-less token matches nothing.
        let built = build_key_set(
            &jwks_doc(vec![a.jwk("k1"), b.jwk("k2")]),
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
            &jwks_doc(vec![a.jwk("a"), b.jwk("b")]),
            rs256(),
            &KeySet::default(),
        )
        .unwrap();
        let old_a = first.set.find(Some("a")).unwrap().clone();
        let old_b = first.set.find(Some("b")).unwrap().clone();
        // "a" unchanged, "b" gone, "c" new, and "a"'s kid reused for other material is new.
        let second =
            build_key_set(&jwks_doc(vec![a.jwk("a"), c.jwk("c")]), rs256(), &first.set).unwrap();
        assert!(Arc::ptr_eq(second.set.find(Some("a")).unwrap(), &old_a));
        assert_eq!(second.dropped.len(), 1);
        assert!(Arc::ptr_eq(&second.dropped[0], &old_b));
        let third = build_key_set(&jwks_doc(vec![b.jwk("a")]), rs256(), &second.set).unwrap();
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
        let built = build_key_set(&jwks_doc(vec![j]), rs256(), &KeySet::default()).unwrap();
        assert_eq!(built.set.len(), 1, "{:?}", built.skipped);
    }
}
