//! Every bound on what a client may make the gateway do: the request's size (this file: the
//! head, checked before anything else is looked at, and the body against the matched route's
//! bound — declared length in the decision, the streamed bytes in the proxy) and rates
//! (`bucket`). Refusals are typed here and mapped to HTTP once, in `decision::refusal`.
//!
//! Pingora accepts up to 1 MiB of headers; nginx (8 KiB lines), HAProxy (16 KiB buffer) and
//! Envoy (60 KiB) all refuse far less. A huge header costs every later step (and the
//! backend) memory and parse time, so realmgate answers 414/431 itself.

mod bucket;

pub(crate) use bucket::TokenBucket;

use pingora::http::RequestHeader;

/// Compiled from the `limits` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_uri_bytes: usize,
    pub max_header_line_bytes: usize,
    pub max_header_bytes: usize,
    /// Request body bound unless the route sets its own.
    pub max_body_bytes: u64,
}

/// A size bound the request broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("the request target is longer than this gateway accepts")]
    UriTooLong,
    #[error("the request headers are larger than this gateway accepts")]
    HeadersTooLarge,
    #[error("the request body is larger than this route accepts")]
    BodyTooLarge,
}

/// The bytes one header line takes on the wire (`name: value\r\n`).
fn line_len(name: &http::HeaderName, value: &http::HeaderValue) -> usize {
    name.as_str().len() + 2 + value.len() + 2
}

impl RequestLimits {
    /// `Err` for a target (414) or a line, or all lines together (431), over the bound.
    pub fn check(&self, req: &RequestHeader) -> Result<(), SizeError> {
        if req.raw_path().len() > self.max_uri_bytes {
            return Err(SizeError::UriTooLong);
        }
        let mut total = 0usize;
        for (name, value) in &req.headers {
            let n = line_len(name, value);
            if n > self.max_header_line_bytes {
                return Err(SizeError::HeadersTooLarge);
            }
            total += n;
        }
        if total > self.max_header_bytes {
            return Err(SizeError::HeadersTooLarge);
        }
        Ok(())
    }
}

impl RequestLimits {
    /// The body bound for a request matched to a rule with `route` as its own bound.
    pub fn body_limit(&self, route: Option<u64>) -> u64 {
        route.unwrap_or(self.max_body_bytes)
    }
}

/// `Err` when the request declares a body longer than `limit`. A chunked body declares
/// nothing; the proxy counts it as it streams.
pub fn check_declared_body(req: &RequestHeader, limit: u64) -> Result<(), SizeError> {
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(SizeError::BodyTooLarge),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const LIMITS: RequestLimits = RequestLimits {
        max_uri_bytes: 64,
        max_header_line_bytes: 40,
        max_header_bytes: 100,
        max_body_bytes: 1000,
    };

    fn req(target: &str, headers: &[(&str, String)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), v.as_str()).unwrap();
        }
        r
    }

    #[test]
    fn declared_bodies_over_the_bound_are_413() {
        let cl = |n: &str| req("/a", &[("content-length", n.into())]);
        assert_eq!(LIMITS.body_limit(None), 1000);
        assert_eq!(LIMITS.body_limit(Some(10)), 10);
        assert!(check_declared_body(&cl("1000"), 1000).is_ok());
        assert_eq!(
            check_declared_body(&cl("1001"), 1000).unwrap_err(),
            SizeError::BodyTooLarge
        );
        assert_eq!(
            check_declared_body(&cl("11"), LIMITS.body_limit(Some(10))).unwrap_err(),
            SizeError::BodyTooLarge
        );
        assert!(
            check_declared_body(&req("/a", &[]), 0).is_ok(),
            "no body declared"
        );
    }

    #[test]
    fn within_bounds_passes() {
        let r = req("/a", &[("host", "a.test".into()), ("x-a", "b".repeat(30))]);
        assert!(LIMITS.check(&r).is_ok());
    }

    #[test]
    fn a_long_target_is_414() {
        let r = req(&format!("/{}", "a".repeat(64)), &[]);
        assert_eq!(LIMITS.check(&r).unwrap_err(), SizeError::UriTooLong);
        let r = req(&format!("/{}", "a".repeat(63)), &[]);
        assert!(LIMITS.check(&r).is_ok(), "64 bytes exactly is allowed");
    }

    #[test]
    fn one_long_line_is_431() {
        // "x-a: " + 34 + CRLF = 41 > 40
        let r = req("/", &[("x-a", "b".repeat(34))]);
        assert_eq!(LIMITS.check(&r).unwrap_err(), SizeError::HeadersTooLarge);
        assert!(LIMITS.check(&req("/", &[("x-a", "b".repeat(33))])).is_ok());
    }

    #[test]
    fn many_short_lines_add_up_to_431() {
        let lines: Vec<(&str, String)> = (0..4).map(|_| ("x-a", "b".repeat(25))).collect();
        assert_eq!(
            LIMITS.check(&req("/", &lines)).unwrap_err(),
            SizeError::HeadersTooLarge
        );
        assert!(LIMITS.check(&req("/", &lines[..3])).is_ok());
    }
}
