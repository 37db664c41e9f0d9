//! The one writer: every [`Answer`] the gateway gives leaves through here, to one of the three
//! places answers go — a Pingora proxy session, the admin listener, or the raw HTTP/1 bytes of a
//! connection refused before any session exists. The low-level writers (Pingora's
//! `write_response_header`, `ResponseHeader::build`, `http::Response::builder`, raw socket writes)
//! are banned everywhere else by `.clippy.toml`; this module alone is allowed to call them.
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::Stream;
use pingora::proxy::Session;
use tokio::io::AsyncWriteExt;

pub use super::answer::{Answer, Body, Cache, Challenge, ExtraHeaders, RateLimitFields};

/// What every answer on a tenant host is stamped with besides its own headers.
#[derive(Clone, Copy)]
pub struct Stamp<'a> {
    /// The configured request-id header and this request's id.
    pub request_id_header: &'a HeaderName,
    pub request_id: Option<&'a HeaderValue>,
    /// The configured header for `ExtraHeaders::sign_in`.
    pub sign_in_header: Option<&'a HeaderName>,
}

impl Stamp<'_> {
    fn request_id_str(&self) -> Option<&str> {
        self.request_id.and_then(|v| v.to_str().ok())
    }
}

/// Whether the request announced a body (which, unread, would poison a reused connection).
pub fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// Every header of `answer` in writing order, as (name, value) pairs.
fn for_each_header(
    answer: &Answer,
    stamp: Option<&Stamp<'_>>,
    body_len: usize,
    mut put: impl FnMut(HeaderName, HeaderValue) -> pingora::Result<()>,
) -> pingora::Result<()> {
    if let Some(ct) = answer.content_type() {
        put(http::header::CONTENT_TYPE, HeaderValue::from_static(ct))?;
    }
    put(http::header::CONTENT_LENGTH, HeaderValue::from(body_len))?;
    if let Some(cc) = answer.cache_control() {
        put(http::header::CACHE_CONTROL, value(&cc))?;
    }
    if let Some(s) = stamp {
        if let Some(id) = s.request_id {
            put(s.request_id_header.clone(), id.clone())?;
        }
    }
    if let Some(c) = &answer.challenge {
        put(http::header::WWW_AUTHENTICATE, value(&c.header_value()))?;
    }
    if let Some(s) = answer.retry_after {
        put(http::header::RETRY_AFTER, HeaderValue::from(s))?;
    }
    if let Some(x) = &answer.extra {
        if let Some(a) = x.allow {
            put(http::header::ALLOW, HeaderValue::from_static(a))?;
        }
        if let Some(l) = &x.location {
            put(http::header::LOCATION, l.clone())?;
        }
        for c in &x.set_cookie {
            put(http::header::SET_COOKIE, c.clone())?;
        }
        if let Some(r) = &x.rate_limit {
            put(
                HeaderName::from_static("ratelimit-policy"),
                r.policy.clone(),
            )?;
            put(HeaderName::from_static("ratelimit"), r.limit.clone())?;
        }
        if let (Some(url), Some(name)) = (&x.sign_in, stamp.and_then(|s| s.sign_in_header)) {
            put(name.clone(), url.clone())?;
        }
    }
    Ok(())
}

/// A header value from text the gateway chose itself (never request data); invalid bytes
/// cannot occur, an empty value stands in if they ever did.
fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The complete Pingora response head for `answer`.
pub fn head(
    answer: &Answer,
    stamp: &Stamp<'_>,
    body_len: usize,
) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(answer.status, Some(8))?;
    for_each_header(answer, Some(stamp), body_len, |n, v| {
        h.append_header(n, v).map(|_| ())
    })?;
    Ok(h)
}

/// Writes `answer` on a proxy session. `body_read` says whether the request's body was
/// consumed; if it was not (or the answer asks to close), the connection is not reused.
/// Nothing is written when a response head already went out (nothing more can be said then).
pub async fn to_session(
    session: &mut Session,
    answer: &Answer,
    stamp: &Stamp<'_>,
    body_read: bool,
) -> pingora::Result<()> {
    if session.response_written().is_some() {
        return Ok(());
    }
    if answer.close || (!body_read && has_body(session.req_header())) {
        session.set_keepalive(None);
    }
    let body = answer.body_bytes(stamp.request_id_str());
    let header = head(answer, stamp, body.len())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// `answer` as the admin listener's response.
pub fn to_admin(answer: &Answer) -> http::Response<Vec<u8>> {
    let body = answer.body_bytes(None);
    let mut b = http::Response::builder().status(answer.status);
    let _ = for_each_header(answer, None, body.len(), |n, v| {
        b = std::mem::take(&mut b).header(n, v);
        Ok(())
    });
    b.body(body.to_vec()).unwrap_or_default()
}

/// `answer` as complete HTTP/1.1 bytes that close the connection: for a connection refused
/// before any request was parsed (over the connection cap), where no session exists.
pub fn to_http1_close(answer: &Answer) -> Vec<u8> {
    let body: Bytes = answer.body_bytes(None);
    let reason = http::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!("HTTP/1.1 {} {reason}\r\n", answer.status);
    let _ = for_each_header(answer, None, body.len(), |n, v| {
        let _ = write!(out, "{}: {}\r\n", n.as_str(), v.to_str().unwrap_or(""));
        Ok(())
    });
    out.push_str("connection: close\r\n");
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// Writes [`to_http1_close`] bytes on a raw connection, bounded in time, and shuts it.
pub async fn to_raw_connection(stream: &mut Stream, answer: &Answer) {
    let bytes = to_http1_close(answer);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(&bytes).await;
        let _ = stream.flush().await;
    })
    .await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn stamp(name: &HeaderName, id: Option<&HeaderValue>) -> Stamp<'static> {
        let name: &'static HeaderName = Box::leak(Box::new(name.clone()));
        let id: Option<&'static HeaderValue> = id.map(|v| &*Box::leak(Box::new(v.clone())));
        Stamp {
            request_id_header: name,
            request_id: id,
            sign_in_header: None,
        }
    }

    #[test]
    fn http1_close_is_a_complete_response() {
        let r = Answer::error(503, "too_many_connections", "busy").with_retry_after(1);
        let raw = String::from_utf8(to_http1_close(&r)).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        assert_eq!(
            head,
            format!(
                "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nretry-after: 1\r\nconnection: close",
                body.len()
            )
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(body).unwrap()["error"],
            "too_many_connections"
        );
    }

    #[test]
    fn session_head_carries_every_header() {
        let name = HeaderName::from_static("x-request-id");
        let rid = HeaderValue::from_static("rid");
        let r = Answer::error(403, "forbidden", "missing permission")
            .with_required(Some("users.delete.tenant".into()));
        let body = r.body_bytes(Some("rid"));
        let h = head(&r, &stamp(&name, Some(&rid)), body.len()).unwrap();
        assert_eq!(h.status, 403);
        assert_eq!(h.headers["x-request-id"], "rid");
        assert_eq!(h.headers["content-length"], body.len().to_string().as_str());
        assert_eq!(h.headers["cache-control"], "no-store");
        assert!(h.headers.get("www-authenticate").is_none());
        let u = Answer::error(503, "realm_unavailable", "x").with_retry_after(5);
        assert_eq!(
            head(&u, &stamp(&name, None), 1).unwrap().headers["retry-after"],
            "5"
        );
        let mut redirect = Answer::empty(302).with_allow("POST");
        let x = redirect.extra_mut();
        x.location = Some(HeaderValue::from_static("/after"));
        x.set_cookie = vec![
            HeaderValue::from_static("a=1"),
            HeaderValue::from_static("b=2"),
        ];
        let h = head(&redirect, &stamp(&name, None), 0).unwrap();
        assert_eq!(h.headers["location"], "/after");
        assert_eq!(h.headers["allow"], "POST");
        assert_eq!(h.headers.get_all("set-cookie").iter().count(), 2);
        assert!(h.headers.get("content-type").is_none());
    }

    #[test]
    fn admin_documents_keep_their_headers() {
        let doc =
            Answer::document(200, "text/plain; version=0.0.4", "m 1\n").with_cache(Cache::Unset);
        let r = to_admin(&doc);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4");
        assert!(r.headers().get("cache-control").is_none());
        assert_eq!(r.body(), b"m 1\n");
        let jwks = Answer::json(200, "", &serde_json::json!({"keys": []}))
            .with_cache(Cache::Public { max_age: 300 });
        assert_eq!(
            to_admin(&jwks).headers()["cache-control"],
            "public, max-age=300"
        );
    }
}
