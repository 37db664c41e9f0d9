//! A throwaway RSA signing key and its public JWK: tokens that only this process trusts. The
//! demo IdP and `realmgate explain --claims` sign with it, and tests mint tokens with it. Its
//! key is generated in memory and never written anywhere. Pure (no server, no config).

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RsaKeyPair};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An RSA signing key and its public JWK.
#[derive(Clone)]
pub struct LocalSigner {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
    /// PKCS#8 private key, PEM (for tools and tests).
    pub private_pem: String,
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl LocalSigner {
    /// A fresh 2048-bit RSA key for RS256.
    pub fn generate_rsa(kid: &str) -> Result<Self, String> {
        let pair =
            RsaKeyPair::generate(KeySize::Rsa2048).map_err(|e| format!("RSA keygen: {e}"))?;
        let pkcs8 = pair.as_der().map_err(|e| format!("RSA export: {e}"))?;
        let private_pem = pem_wrap("PRIVATE KEY", pkcs8.as_ref());
        let encoding =
            EncodingKey::from_rsa_pem(private_pem.as_bytes()).map_err(|e| e.to_string())?;
        let public = pair.public_key();
        let n = URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero());
        let e = URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero());
        Ok(Self {
            kid: kid.to_string(),
            encoding,
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": n, "e": e}),
            private_pem,
        })
    }

    /// Signs claims as an RS256 JWT carrying this key's `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&h, claims, &self.encoding).map_err(|e| e.to_string())
    }
}
