//! The one place that turns a refusal into HTTP bytes.
//!
//! Every error realmgate itself answers is JSON `{"error": "<stable_code>", "message": "..."}`
//! with the right status, `X-Request-ID`, `Cache-Control: no-store`, and for 401 an RFC 6750
//! `WWW-Authenticate` challenge. Messages are fixed strings chosen here: nothing from the
//! request, no internals, never a token.

use std::borrow::Cow;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use serde::Serialize;

/// Why the gateway answered instead of the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    /// Stable, documented, snake_case: clients and dashboards key on it.
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// For 401: the RFC 6750 challenge parameters.
    pub challenge: Option<Box<Challenge>>,
    /// For 503: seconds after which a retry may succeed.
    pub retry_after: Option<u32>,
    /// For 403: the permission that was missing (when exposure is enabled).
    pub required: Option<String>,
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
        let mut v = format!("Bearer realm=\"{}\"", quote_safe(&self.realm));
        if let Some(e) = self.error {
            v.push_str(&format!(", error=\"{e}\""));
        }
        if let Some(d) = &self.description {
            v.push_str(&format!(", error_description=\"{}\"", quote_safe(d)));
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
struct Body<'a> {
    error: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    required: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            challenge: None,
            retry_after: None,
            required: None,
        }
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
        self.required = required;
        self
    }

    pub fn bad_request(code: &'static str, message: &'static str) -> Self {
        Self::new(400, code, message)
    }

    pub fn body(&self, request_id: Option<&str>) -> Bytes {
        let b = Body {
            error: self.code,
            message: &self.message,
            required: self.required.as_deref(),
            request_id,
        };
        // Serialising plain strings cannot fail.
        Bytes::from(serde_json::to_vec(&b).unwrap_or_default())
    }

    /// The complete response head for this refusal.
    pub fn header(
        &self,
        request_id_header: &http::HeaderName,
        request_id: Option<&str>,
        body_len: usize,
    ) -> pingora::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(self.status, Some(6))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        if let Some(id) = request_id {
            h.insert_header(request_id_header.clone(), id)?;
        }
        if let Some(c) = &self.challenge {
            h.insert_header(http::header::WWW_AUTHENTICATE, c.header_value())?;
        }
        if let Some(s) = self.retry_after {
            h.insert_header(http::header::RETRY_AFTER, s.to_string())?;
        }
        Ok(h)
    }

    /// The whole refusal as HTTP/1.1 bytes, closing the connection: for answers given before
    /// any request was parsed (a connection over the cap), where no session exists.
    pub fn http1_close(&self) -> Vec<u8> {
        let body = self.body(None);
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
            self.status,
            body.len()
        );
        if let Some(s) = self.retry_after {
            out.push_str(&format!("retry-after: {s}\r\n"));
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&body);
        bytes
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
    fn http1_close_is_a_complete_response() {
        let r = Rejection::new(503, "too_many_connections", "busy").with_retry_after(1);
        let raw = String::from_utf8(r.http1_close()).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close") && head.contains("retry-after: 1"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["error"],
            "too_many_connections"
        );
    }

    #[test]
    fn body_and_header() {
        let r = Rejection::new(403, "forbidden", "missing permission")
            .with_required(Some("users.delete.tenant".into()));
        let body = r.body(Some("rid"));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "forbidden");
        assert_eq!(v["required"], "users.delete.tenant");
        assert_eq!(v["request_id"], "rid");
        let name = http::HeaderName::from_static("x-request-id");
        let h = r.header(&name, Some("rid"), body.len()).unwrap();
        assert_eq!(h.status, 403);
        assert_eq!(h.headers["x-request-id"], "rid");
        assert_eq!(h.headers["content-length"], body.len().to_string().as_str());
        assert!(h.headers.get("www-authenticate").is_none());
        let u = Rejection::new(503, "realm_unavailable", "x").with_retry_after(5);
        assert_eq!(
            u.header(&name, None, 1).unwrap().headers["retry-after"],
            "5"
        );
    }
}
