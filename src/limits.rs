//! Size bounds on the request head, checked before anything else is looked at.
//!
//! Pingora accepts up to 1 MiB of headers; nginx (8 KiB lines), HAProxy (16 KiB buffer) and
//! Envoy (60 KiB) all refuse far less. A huge header costs every later step (and the
//! backend) memory and parse time, so realmgate answers 414/431 itself.

use pingora::http::RequestHeader;

use crate::respond::Rejection;

/// Compiled from the `limits` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_uri_bytes: usize,
    pub max_header_line_bytes: usize,
    pub max_header_bytes: usize,
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
    };

    fn req(target: &str, headers: &[(&str, String)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), v.as_str()).unwrap();
        }
        r
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
