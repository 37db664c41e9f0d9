//! Why a request was not authenticated, and how each reason is reported: stable code, HTTP
//! status, `error_description` and `WWW-Authenticate` attribute.

use crate::jwks::KeyError;

/// Why a request was not authenticated. Codes are stable (metrics, logs, JSON bodies).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no access token")]
    MissingToken,
    #[error("malformed access token")]
    MalformedToken,
    #[error("access token names no key")]
    MissingKeyId,
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
    #[error("token revoked")]
    TokenRevoked,
}

impl AuthError {
    /// Stable snake_case reason code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedToken => "malformed_token",
            AuthError::MissingKeyId => "missing_kid",
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
            AuthError::TokenRevoked => "token_revoked",
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
            AuthError::MissingKeyId => "The access token's header names no key (kid)",
            AuthError::TokenTooLarge => "The access token is too large",
            AuthError::TokenExpired => "The access token expired",
            AuthError::TokenNotYetValid => "The access token is not valid yet",
            AuthError::TokenIssuedInFuture => "The access token was issued in the future",
            AuthError::IssuerMismatch => "The access token was issued for another tenant",
            AuthError::AudienceMismatch => {
                "The token's aud does not name this service (Keycloak: add an Audience mapper)"
            }
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
            AuthError::TokenRevoked => "The session behind the access token ended",
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_statuses_and_descriptions() {
        use AuthError::*;
        let all = [
            (MissingToken, "missing_token", 401),
            (MalformedToken, "malformed_token", 401),
            (MissingKeyId, "missing_kid", 401),
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
}
