//! Size bounds on the request: the head, checked before anything else is looked at, and the
//! body, checked against the matched route's bound (declared length in the decision, the
//! streamed bytes in the proxy).
//!
//! Pingora accepts up to 1 MiB of headers; nginx (8 KiB lines), HAProxy (16 KiB buffer) and
//! Envoy (60 KiB) all refuse far less. A huge header costs every later step (and the
//! backend) memory and parse time, so realmgate answers 414/431 itself.

mod bucket;

pub(crate) use bucket::TokenBucket;

use pingora::http::RequestHeader;

use crate::http::respond::Rejection;

/// Compiled from the `limits` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_uri_bytes: usize,
    pub max_header_line_bytes: usize,
    pub max_header_bytes: usize,
    /// Request body bound unless the route sets its own.
    pub max_body_bytes: u64,
}

/// The bytes one header line takes on the wire (`name: value\r\n`).
fn line_len(name: &http::HeaderName, value: &http::HeaderValue) -> usize {
    name.as_str().len() + 2 + value.len() + 2
}

impl RequestLimits {
    /// `Err` with 414 (target) or 431 (a line, or all lines together).
    pub fn check(&self, req: &RequestHeader) -> Result<(), Rejection> {
        if req.raw_path().len() > self.max_uri_bytes {
            return Err(Rejection::new(
                414,
                "uri_too_long",
                "the request target is longer than this gateway accepts",
            ));
        }
        let mut total = 0usize;
        for (name, value) in &req.headers {
            let n = line_len(name, value);
            if n > self.max_header_line_bytes {
                return Err(too_large());
            }
            total += n;
        }
        if total > self.max_header_bytes {
            return Err(too_large());
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

/// `Err` with 413 when the request declares a body longer than `limit`. A chunked body
/// declares nothing; the proxy counts it as it streams ([`body_too_large`] then).
pub fn check_declared_body(req: &RequestHeader, limit: u64) -> Result<(), Rejection> {
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| std::str::from_utf8(v.as_bytes()).ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(body_too_large()),
        _ => Ok(()),
    }
}

/// 413: the body is larger than the route accepts.
pub fn body_too_large() -> Rejection {
    Rejection::new(
        413,
        "body_too_large",
        "the request body is larger than this route accepts",
    )
}

fn too_large() -> Rejection {
    Rejection::new(
        431,
        "headers_too_large",
        "the request headers are larger than this gateway accepts",
    )
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
            check_declared_body(&cl("1001"), 1000).unwrap_err().status,
            413
        );
        assert_eq!(
            check_declared_body(&cl("11"), LIMITS.body_limit(Some(10)))
                .unwrap_err()
                .code,
            "body_too_large"
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
        assert_eq!(LIMITS.check(&r).unwrap_err().status, 414);
        let r = req(&format!("/{}", "a".repeat(63)), &[]);
        assert!(LIMITS.check(&r).is_ok(), "64 bytes exactly is allowed");
    }

    #[test]
    fn one_long_line_is_431() {
        // "x-a: " + 34 + CRLF = 41 > 40
        let r = req("/", &[("x-a", "b".repeat(34))]);
        let e = LIMITS.check(&r).unwrap_err();
        assert_eq!((e.status, e.code), (431, "headers_too_large"));
        assert!(LIMITS.check(&req("/", &[("x-a", "b".repeat(33))])).is_ok());
    }

    #[test]
    fn many_short_lines_add_up_to_431() {
        let lines: Vec<(&str, String)> = (0..4).map(|_| ("x-a", "b".repeat(25))).collect();
        assert_eq!(LIMITS.check(&req("/", &lines)).unwrap_err().status, 431);
        assert!(LIMITS.check(&req("/", &lines[..3])).is_ok());
    }
}
