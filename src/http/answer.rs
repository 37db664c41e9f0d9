//! What the gateway answers itself: refusals, endpoint answers, redirects, upstream failures
//! and the admin listener's documents are all one [`Answer`]. Pure: `respond.rs` is the only
//! writer that turns one into bytes on a connection.
//!
//! An answer is a status, a stable `code` (logs, metrics, the JSON `error`), a typed header
//! set and a body kind. Messages are fixed strings chosen by the refusal table: nothing from
//! the request, no internals, never a token.

use std::borrow::Cow;
use std::fmt::Write as _;

use bytes::Bytes;
use http::HeaderValue;
use serde::Serialize;

/// One answer of the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Stable, documented, snake_case: clients and dashboards key on it ("" when the answer
    /// is not an error, e.g. an endpoint's 200 or a redirect).
    pub code: &'static str,
    /// For 401: the RFC 6750 `WWW-Authenticate` challenge.
    pub challenge: Option<Box<Challenge>>,
    /// For 429/503: seconds after which a retry may succeed.
    pub retry_after: Option<u32>,
    /// `Cache-Control`: refusals and endpoint answers are never cached.
    pub cache: Cache,
    /// `Connection: close` after this answer.
    pub close: bool,
    /// The rarer headers (redirects, cookies, rate-limit fields, `Allow`), boxed so the common
    /// refusal stays small where decisions are moved around.
    pub extra: Option<Box<ExtraHeaders>>,
    pub body: Body,
}

/// Headers few answers carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraHeaders {
    /// `Location` of a redirect.
    pub location: Option<HeaderValue>,
    /// `Set-Cookie` lines, in order.
    pub set_cookie: Vec<HeaderValue>,
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), pre-rendered.
    pub rate_limit: Option<RateLimitFields>,
    /// `Allow` on a 405.
    pub allow: Option<&'static str>,
    /// Where a browser can sign in (an API client's hint on a 401 of a sign-in route), under the
    /// header name the caller gives the writer.
    pub sign_in: Option<HeaderValue>,
}

/// The IETF rate-limit fields of one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitFields {
    pub policy: HeaderValue,
    pub limit: HeaderValue,
}

/// `Cache-Control` of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    NoStore,
    /// `public, max-age=N` (documents meant to be cached, e.g. a JWKS).
    Public {
        max_age: u32,
    },
    /// No `Cache-Control` header.
    Unset,
}

/// What follows the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Empty,
    /// The gateway's error: `{"error": code, "message", "required"?, "request_id"?}`.
    Error {
        message: Cow<'static, str>,
        /// For 403: the permission that was missing (when exposure is enabled).
        required: Option<String>,
    },
    /// The OAuth error shape (RFC 6749 §5.2) that OIDC Back-Channel Logout §2.8 asks of its
    /// endpoint: `{"error", "error_description", "reason", "request_id"?}`.
    OAuth {
        error: &'static str,
        description: &'static str,
    },
    /// A JSON document (the admin listener's answers), serialised by the caller.
    Json(Bytes),
    /// Any other document with its content type (metrics text).
    Document {
        content_type: &'static str,
        bytes: Bytes,
    },
}

/// RFC 6750 §3 challenge. `error` is omitted when the request simply carried no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub error: Option<&'static str>,
    pub description: Option<Cow<'static, str>>,
}

impl Challenge {
    pub fn header_value(&self) -> String {
        let mut v = String::with_capacity(32 + self.realm.len());
        let _ = write!(v, "Bearer realm=\"{}\"", quote_safe(&self.realm));
        if let Some(e) = self.error {
            let _ = write!(v, ", error=\"{e}\"");
        }
        if let Some(d) = &self.description {
            let _ = write!(v, ", error_description=\"{}\"", quote_safe(d));
        }
        v
    }
}

/// Keeps a quoted-string parameter well-formed.
fn quote_safe(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '"' && *c != '\\')
        .collect()
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    required: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct OAuthBody<'a> {
    error: &'a str,
    error_description: &'a str,
    reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl Answer {
    fn with_body(status: u16, code: &'static str, body: Body) -> Self {
        Self {
            status,
            code,
            challenge: None,
            retry_after: None,
            cache: Cache::NoStore,
            close: false,
            extra: None,
            body,
        }
    }

    /// The gateway's JSON error.
    pub fn error(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        let body = Body::Error {
            message: message.into(),
            required: None,
        };
        Self::with_body(status, code, body)
    }

    /// The OAuth error shape: `error` is `invalid_request` for a 400 and the reason otherwise,
    /// `reason` always the stable code.
    pub fn oauth(status: u16, reason: &'static str, description: &'static str) -> Self {
        let error = if status == 400 {
            "invalid_request"
        } else {
            reason
        };
        Self::with_body(status, reason, Body::OAuth { error, description })
    }

    /// An answer with no body (an endpoint's 200, a redirect).
    pub fn empty(status: u16) -> Self {
        Self::with_body(status, "", Body::Empty)
    }

    /// A JSON document.
    pub fn json(status: u16, code: &'static str, doc: &serde_json::Value) -> Self {
        Self::with_body(status, code, Body::Json(Bytes::from(doc.to_string())))
    }

    /// A document of another type.
    pub fn document(status: u16, content_type: &'static str, bytes: impl Into<Bytes>) -> Self {
        let body = Body::Document {
            content_type,
            bytes: bytes.into(),
        };
        Self::with_body(status, "", body)
    }

    pub fn with_challenge(mut self, c: Challenge) -> Self {
        self.challenge = Some(Box::new(c));
        self
    }

    pub fn with_retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with_required(mut self, required: Option<String>) -> Self {
        if let Body::Error { required: r, .. } = &mut self.body {
            *r = required;
        }
        self
    }

    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = cache;
        self
    }

    pub fn with_allow(mut self, methods: &'static str) -> Self {
        self.extra_mut().allow = Some(methods);
        self
    }

    /// The rarer headers, created on first use.
    pub fn extra_mut(&mut self) -> &mut ExtraHeaders {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The human message of an error body ("" for other bodies).
    pub fn message(&self) -> &str {
        match &self.body {
            Body::Error { message, .. } => message,
            Body::OAuth { description, .. } => description,
            _ => "",
        }
    }

    /// The missing permission a 403 names, if exposure is on.
    pub fn required(&self) -> Option<&str> {
        match &self.body {
            Body::Error { required, .. } => required.as_deref(),
            _ => None,
        }
    }

    /// The body's bytes, with the request id in error bodies.
    pub fn body_bytes(&self, request_id: Option<&str>) -> Bytes {
        // Serialising plain strings cannot fail.
        match &self.body {
            Body::Empty => Bytes::new(),
            Body::Error { message, required } => Bytes::from(
                serde_json::to_vec(&ErrorBody {
                    error: self.code,
                    message,
                    required: required.as_deref(),
                    request_id,
                })
                .unwrap_or_default(),
            ),
            Body::OAuth { error, description } => Bytes::from(
                serde_json::to_vec(&OAuthBody {
                    error,
                    error_description: description,
                    reason: self.code,
                    request_id,
                })
                .unwrap_or_default(),
            ),
            Body::Json(b) | Body::Document { bytes: b, .. } => b.clone(),
        }
    }

    /// The `Content-Type` of the body, if it has one.
    pub fn content_type(&self) -> Option<&'static str> {
        match &self.body {
            Body::Empty => None,
            Body::Error { .. } | Body::OAuth { .. } | Body::Json(_) => Some("application/json"),
            Body::Document { content_type, .. } => Some(content_type),
        }
    }

    /// The `Cache-Control` value, if any.
    pub fn cache_control(&self) -> Option<Cow<'static, str>> {
        match self.cache {
            Cache::NoStore => Some(Cow::Borrowed("no-store")),
            Cache::Public { max_age } => Some(Cow::Owned(format!("public, max-age={max_age}"))),
            Cache::Unset => None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn challenge_formats() {
        let missing = Challenge {
            realm: "acme".into(),
            error: None,
            description: None,
        };
        assert_eq!(missing.header_value(), "Bearer realm=\"acme\"");
        let bad = Challenge {
            realm: "acme".into(),
            error: Some("invalid_token"),
            description: Some("The token \"expired\"\r\n".into()),
        };
        assert_eq!(
            bad.header_value(),
            "Bearer realm=\"acme\", error=\"invalid_token\", error_description=\"The token expired\""
        );
    }

    #[test]
    fn error_bodies_keep_their_shape() {
        let r = Answer::error(403, "forbidden", "missing permission")
            .with_required(Some("users.delete.tenant".into()));
        let v: serde_json::Value = serde_json::from_slice(&r.body_bytes(Some("rid"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "forbidden", "message": "missing permission",
                "required": "users.delete.tenant", "request_id": "rid"})
        );
        let v: serde_json::Value = serde_json::from_slice(&r.body_bytes(None)).unwrap();
        assert!(v.get("request_id").is_none());
        assert_eq!(r.required(), Some("users.delete.tenant"));
    }

    #[test]
    fn oauth_bodies_say_invalid_request_on_400_and_the_reason_otherwise() {
        let bad = Answer::oauth(400, "missing_logout_token", "no token");
        let v: serde_json::Value = serde_json::from_slice(&bad.body_bytes(Some("r"))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error": "invalid_request", "error_description": "no token",
                "reason": "missing_logout_token", "request_id": "r"})
        );
        let limited = Answer::oauth(429, "rate_limited", "slow down");
        let v: serde_json::Value = serde_json::from_slice(&limited.body_bytes(None)).unwrap();
        assert_eq!(v["error"], "rate_limited");
        assert_eq!(limited.code, "rate_limited");
    }

    #[test]
    fn the_common_refusal_stays_small() {
        // Decisions move answers around by value; the rare headers live behind one box.
        assert!(
            std::mem::size_of::<Answer>() <= 112,
            "{}",
            std::mem::size_of::<Answer>()
        );
    }
}
