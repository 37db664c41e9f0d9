//! Signed identity assertion: a short-lived ES256 JWT that proves the identity headers came
//! from realmgate.
//!
//! The `X-*` identity headers are only trustworthy while nothing but realmgate can reach the
//! backend. The assertion removes that assumption: it binds tenant, realm, subject, roles and
//! the exact method and path that were authorised to a signature made with realmgate's own
//! key, published as a JWKS on the admin port. A caller that bypasses the gateway cannot mint
//! one, and one copied from another request names a different path and expires within `ttl`.
//!
//! Cost: one ES256 signature per forwarded request with a verified identity (P-256 via
//! aws-lc-rs, tens of microseconds) plus a small JSON encode. When the feature is off the
//! request path pays one `Option` check and nothing else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use http::{HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::json;

/// The compiled `assertion` section (present only when the feature is enabled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionSettings {
    pub header: HeaderName,
    /// Lifetime in whole seconds (`exp - iat`).
    pub ttl_secs: u64,
    pub issuer: String,
    pub audience: String,
    /// PKCS#8 (or SEC1) PEM P-256 private key; `None` = a fresh key per process.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("signing key: {0}")]
    Key(String),
    #[error("could not sign the identity assertion")]
    Sign,
}

impl AssertionError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Key(_) => "assertion_key_invalid",
            Self::Sign => "assertion_sign_failed",
        }
    }
}

/// What one assertion says about one request.
#[derive(Debug, Clone, Copy)]
pub struct Assertion<'a> {
    pub tenant: &'a str,
    pub realm: &'a str,
    pub sub: &'a str,
    pub roles: &'a [Arc<str>],
    pub scope: Option<&'a str>,
    pub method: &'a str,
    /// The path and query exactly as forwarded upstream.
    pub path: &'a str,
    pub request_id: Option<&'a str>,
    /// Set on a shadow-mode pass: the refusal enforcement would have given.
    pub shadow: Option<&'a str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    tenant: &'a str,
    realm: &'a str,
    sub: &'a str,
    roles: &'a [Arc<str>],
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    method: &'a str,
    path: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shadow: Option<&'a str>,
}

/// realmgate's assertion signing key. Chosen once at start (loaded or generated) and kept for
/// the life of the process, so the published JWKS does not change under a reload.
pub struct AssertionKey {
    pair: EcdsaKeyPair,
    kid: String,
    /// base64url of the constant JWS header, precomputed so a signature only encodes claims.
    header_b64: String,
    /// The JWKS document served on the admin port.
    jwks: Vec<u8>,
    source: Option<PathBuf>,
}

impl std::fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionKey")
            .field("kid", &self.kid)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn key_err(e: impl std::fmt::Display) -> AssertionError {
    AssertionError::Key(e.to_string())
}

/// The DER inside an unencrypted `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY` (SEC1) PEM block.
fn pem_der(text: &str) -> Result<Vec<u8>, AssertionError> {
    const LABELS: [&str; 2] = ["PRIVATE KEY", "EC PRIVATE KEY"];
    let label = LABELS
        .iter()
        .find(|l| text.contains(&format!("-----BEGIN {l}-----")))
        .ok_or_else(|| {
            key_err("expected an unencrypted \"PRIVATE KEY\" or \"EC PRIVATE KEY\" PEM block")
        })?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text
        .split_once(&begin)
        .and_then(|(_, rest)| rest.split_once(&end))
        .map(|(body, _)| body)
        .ok_or_else(|| key_err(format!("unterminated {label} PEM block")))?;
    if body.contains(':') {
        return Err(key_err("encrypted PEM keys are not supported"));
    }
    let b64: String = body.split_whitespace().collect();
    STANDARD
        .decode(b64)
        .map_err(|e| key_err(format!("bad PEM base64: {e}")))
}

fn pem_wrap(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

impl AssertionKey {
    /// Loads the configured key file, or generates a fresh key when there is none.
    pub fn for_settings(s: &AssertionSettings) -> Result<Self, AssertionError> {
        match &s.key_file {
            Some(path) => Self::from_file(path),
            None => Self::generate(),
        }
    }

    /// A fresh P-256 key (published JWKS changes at every start: backends must refetch on an
    /// unknown `kid`).
    pub fn generate() -> Result<Self, AssertionError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|_| key_err("P-256 key generation failed"))?;
        Self::from_pair(pair, None)
    }

    pub fn from_file(path: &Path) -> Result<Self, AssertionError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| key_err(format!("cannot read {}: {e}", path.display())))?;
        let mut key = Self::from_pem(&text)?;
        key.source = Some(path.to_path_buf());
        Ok(key)
    }

    pub fn from_pem(text: &str) -> Result<Self, AssertionError> {
        let der = pem_der(text)?;
        let pair = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| key_err(format!("not an EC P-256 private key: {e}")))?;
        Self::from_pair(pair, None)
    }

    fn from_pair(pair: EcdsaKeyPair, source: Option<PathBuf>) -> Result<Self, AssertionError> {
        let point = pair.public_key().as_ref();
        // Uncompressed SEC1 point: 0x04 || X (32 bytes) || Y (32 bytes).
        if point.len() != 65 || point[0] != 0x04 {
            return Err(key_err("unexpected public key encoding"));
        }
        let x = URL_SAFE_NO_PAD.encode(&point[1..33]);
        let y = URL_SAFE_NO_PAD.encode(&point[33..65]);
        // RFC 7638 thumbprint: stable for the key, whoever computes it.
        let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(digest(&SHA256, thumb_input.as_bytes()));
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        let jwks = json!({"keys": [{
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        }]})
        .to_string()
        .into_bytes();
        Ok(Self {
            pair,
            kid,
            header_b64,
            jwks,
            source,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key file it was loaded from (`None` = generated at start).
    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    /// `{"keys":[{"kty":"EC","crv":"P-256",...}]}`, served at `/.well-known/jwks.json`.
    pub fn jwks_json(&self) -> &[u8] {
        &self.jwks
    }

    /// The private key as PKCS#8 PEM (for `key_file` provisioning and tests).
    pub fn private_pem(&self) -> Result<String, AssertionError> {
        let doc = self
            .pair
            .to_pkcs8v1()
            .map_err(|_| key_err("PKCS#8 export failed"))?;
        Ok(pem_wrap(doc.as_ref()))
    }

    /// Signs one assertion issued at `now` (Unix seconds) as a compact ES256 JWS.
    pub fn sign(
        &self,
        s: &AssertionSettings,
        a: &Assertion<'_>,
        now: u64,
    ) -> Result<HeaderValue, AssertionError> {
        let mut jti_buf = [0u8; 22];
        let n = URL_SAFE_NO_PAD
            .encode_slice(rand::random::<[u8; 16]>(), &mut jti_buf)
            .map_err(|_| AssertionError::Sign)?;
        let jti = std::str::from_utf8(&jti_buf[..n]).map_err(|_| AssertionError::Sign)?;
        let claims = Claims {
            iss: &s.issuer,
            aud: &s.audience,
            iat: now,
            exp: now.saturating_add(s.ttl_secs),
            jti,
            tenant: a.tenant,
            realm: a.realm,
            sub: a.sub,
            roles: a.roles,
            scope: a.scope,
            method: a.method,
            path: a.path,
            request_id: a.request_id,
            shadow: a.shadow,
        };
        let payload = serde_json::to_vec(&claims).map_err(|_| AssertionError::Sign)?;
        // header . payload . signature (64-byte r||s -> 86 chars)
        let mut token =
            String::with_capacity(self.header_b64.len() + payload.len().div_ceil(3) * 4 + 90);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = self
            .pair
            .sign(&SystemRandom::new(), token.as_bytes())
            .map_err(|_| AssertionError::Sign)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
        HeaderValue::try_from(token).map_err(|_| AssertionError::Sign)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
    use serde_json::Value;

    fn settings() -> AssertionSettings {
        AssertionSettings {
            header: HeaderName::from_static("x-identity-assertion"),
            ttl_secs: 60,
            issuer: "realmgate".into(),
            audience: "backend".into(),
            key_file: None,
        }
    }

    fn sample<'a>(roles: &'a [Arc<str>]) -> Assertion<'a> {
        Assertion {
            tenant: "acme",
            realm: "tenant-acme",
            sub: "u-1",
            roles,
            scope: Some("team"),
            method: "POST",
            path: "/api/v1/tickets?x=1",
            request_id: Some("rid-1"),
            shadow: None,
        }
    }

    fn verify(key: &AssertionKey, token: &str, aud: &str) -> jsonwebtoken::errors::Result<Value> {
        let set: JwkSet = serde_json::from_slice(key.jwks_json()).unwrap();
        let kid = decode_header(token)?.kid.unwrap();
        let jwk = set.find(&kid).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[aud]);
        v.set_issuer(&["realmgate"]);
        v.leeway = 0;
        decode::<Value>(token, &DecodingKey::from_jwk(jwk)?, &v).map(|d| d.claims)
    }

    #[test]
    fn sign_verify_round_trip() {
        let key = AssertionKey::generate().unwrap();
        let roles: Vec<Arc<str>> = vec!["viewer".into(), "agent".into()];
        let now = unix_now();
        let token = key.sign(&settings(), &sample(&roles), now).unwrap();
        let c = verify(&key, token.to_str().unwrap(), "backend").unwrap();
        assert_eq!(c["tenant"], "acme");
        assert_eq!(c["realm"], "tenant-acme");
        assert_eq!(c["sub"], "u-1");
        assert_eq!(c["roles"], json!(["viewer", "agent"]));
        assert_eq!(c["scope"], "team");
        assert_eq!(c["method"], "POST");
        assert_eq!(c["path"], "/api/v1/tickets?x=1");
        assert_eq!(c["request_id"], "rid-1");
        assert_eq!(c["iat"], now);
        assert_eq!(c["exp"], now + 60);
        assert_eq!(c["jti"].as_str().unwrap().len(), 22);
        let header = decode_header(token.to_str().unwrap()).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(key.kid()));
    }

    #[test]
    fn every_assertion_has_its_own_jti_and_optional_claims_are_omitted() {
        let key = AssertionKey::generate().unwrap();
        let roles: Vec<Arc<str>> = Vec::new();
        let a = Assertion {
            scope: None,
            request_id: None,
            shadow: Some("forbidden"),
            ..sample(&roles)
        };
        let t1 = key.sign(&settings(), &a, unix_now()).unwrap();
        let t2 = key.sign(&settings(), &a, unix_now()).unwrap();
        let c1 = verify(&key, t1.to_str().unwrap(), "backend").unwrap();
        let c2 = verify(&key, t2.to_str().unwrap(), "backend").unwrap();
        assert_ne!(c1["jti"], c2["jti"]);
        assert!(c1.get("scope").is_none() && c1.get("request_id").is_none());
        assert_eq!(
            c1["shadow"], "forbidden",
            "a shadow pass says so in the signed claims"
        );
        assert_eq!(c1["roles"], json!([]));
    }

    #[test]
    fn refused_for_wrong_audience_other_key_tampering_or_expiry() {
        let key = AssertionKey::generate().unwrap();
        let other = AssertionKey::generate().unwrap();
        let roles: Vec<Arc<str>> = vec!["viewer".into()];
        let token = key.sign(&settings(), &sample(&roles), unix_now()).unwrap();
        let token = token.to_str().unwrap();
        assert!(verify(&key, token, "someone-else").is_err());
        // Same kid lookup is impossible with the other key's JWKS; verify the signature directly.
        let other_jwk: JwkSet = serde_json::from_slice(other.jwks_json()).unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&["backend"]);
        assert!(decode::<Value>(
            token,
            &DecodingKey::from_jwk(&other_jwk.keys[0]).unwrap(),
            &v
        )
        .is_err());
        // A payload swapped in from another assertion breaks the signature.
        let (head, rest) = token.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let forged_payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"admin"}"#);
        assert!(verify(&key, &format!("{head}.{forged_payload}.{sig}"), "backend").is_err());
        let old = key
            .sign(&settings(), &sample(&roles), unix_now() - 120)
            .unwrap();
        assert!(verify(&key, old.to_str().unwrap(), "backend").is_err());
    }

    #[test]
    fn jwks_shape() {
        let key = AssertionKey::generate().unwrap();
        let v: Value = serde_json::from_slice(key.jwks_json()).unwrap();
        let keys = v["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let k = &keys[0];
        for (field, want) in [
            ("kty", "EC"),
            ("crv", "P-256"),
            ("use", "sig"),
            ("alg", "ES256"),
        ] {
            assert_eq!(k[field], want, "{field}");
        }
        assert_eq!(k["kid"], key.kid());
        for c in ["x", "y"] {
            let bytes = URL_SAFE_NO_PAD.decode(k[c].as_str().unwrap()).unwrap();
            assert_eq!(bytes.len(), 32, "{c}");
        }
        // RFC 7638 thumbprint: 32-byte SHA-256, base64url.
        assert_eq!(key.kid().len(), 43);
        assert_ne!(key.kid(), AssertionKey::generate().unwrap().kid());
    }

    #[test]
    fn pem_round_trip_keeps_the_kid() {
        let key = AssertionKey::generate().unwrap();
        let pem = key.private_pem().unwrap();
        let again = AssertionKey::from_pem(&pem).unwrap();
        assert_eq!(again.kid(), key.kid());
        assert_eq!(again.jwks_json(), key.jwks_json());
        // Signed by the reloaded key, verified with the original JWKS.
        let roles: Vec<Arc<str>> = Vec::new();
        let t = again
            .sign(&settings(), &sample(&roles), unix_now())
            .unwrap();
        assert!(verify(&key, t.to_str().unwrap(), "backend").is_ok());
    }

    #[test]
    fn bad_key_files_are_refused() {
        let rsa = crate::jwks::LocalSigner::generate_rsa("r")
            .unwrap()
            .private_pem;
        let cases = [
            ("", "PEM block"),
            ("-----BEGIN PRIVATE KEY-----\nAAAA\n", "unterminated"),
            (
                "-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n",
                "base64",
            ),
            (
                "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAAA\n-----END EC PRIVATE KEY-----\n",
                "encrypted",
            ),
            (rsa.as_str(), "P-256"),
        ];
        for (pem, want) in cases {
            let err = AssertionKey::from_pem(pem).unwrap_err();
            assert_eq!(err.code(), "assertion_key_invalid");
            assert!(err.to_string().contains(want), "{want}: {err}");
        }
    }
}
