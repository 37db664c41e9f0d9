//! The JOSE header (parsed once, borrowing from the decoded buffer), the header policy, and
//! bounded base64url decoding of the token's segments.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use serde::de::{self, Deserializer, IgnoredAny, Visitor};
use serde::Deserialize;

use super::error::AuthError;

/// A string that borrows from the input when it has no escapes.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct BStr<'a>(pub(super) Cow<'a, str>);

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
pub(super) struct JoseHeader<'a> {
    #[serde(borrow)]
    pub(super) alg: Option<BStr<'a>>,
    #[serde(borrow, default)]
    pub(super) kid: Option<BStr<'a>>,
    /// RFC 9068 §2.1: `at+jwt` types an access token in the header.
    #[serde(borrow, default)]
    pub(super) typ: Option<BStr<'a>>,
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
    pub(super) fn forbidden(&self) -> bool {
        self.jku.0 || self.x5u.0 || self.jwk.0 || self.x5c.0 || self.crit.0
    }
}

/// Largest decoded JOSE header accepted (Keycloak's is ~100 bytes).
pub(super) const MAX_HEADER_BYTES: usize = 512;
/// Room for an RSA-8192 signature (1024 bytes) plus base64's decode slack.
pub(super) const MAX_SIGNATURE_BYTES: usize = 1024 + 8;

pub(super) fn b64_decode_into<'b>(s: &str, buf: &'b mut [u8]) -> Result<&'b [u8], AuthError> {
    if s.len() / 4 * 3 + 3 > buf.len() {
        return Err(AuthError::MalformedToken);
    }
    let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode_slice(s, buf)
        .map_err(|_| AuthError::MalformedToken)?;
    buf.get(..n).ok_or(AuthError::MalformedToken)
}

pub(super) fn b64_decode(s: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| AuthError::MalformedToken)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use crate::verify::testkit::*;
    use serde_json::json;

    #[test]
    fn header_policy_and_bounded_decoding() {
        let h: JoseHeader<'_> = serde_json::from_str(r#"{"alg":"RS256","kid":"k1"}"#).unwrap();
        assert!(!h.forbidden());
        assert_eq!(h.kid.as_ref().map(|k| &*k.0), Some("k1"));
        for p in ["jku", "x5u", "jwk", "x5c", "crit"] {
            let doc = format!(r#"{{"alg":"RS256","{p}":null}}"#);
            let h: JoseHeader<'_> = serde_json::from_str(&doc).unwrap();
            assert!(h.forbidden(), "{p}");
        }
        let mut buf = [0u8; 8];
        assert_eq!(b64_decode_into("YWJj", &mut buf).unwrap(), b"abc");
        assert_eq!(
            b64_decode_into(&"A".repeat(16), &mut buf),
            Err(AuthError::MalformedToken),
            "longer than the buffer"
        );
        assert_eq!(b64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(b64_decode("YWJj=").unwrap_err(), AuthError::MalformedToken);
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
}
