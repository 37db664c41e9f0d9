//! Which host and target a request names: exactly one host, or a refusal. Pure: the proxy
//! and the decision both read requests through it (and neither imports the other for it).

use pingora::http::RequestHeader;

/// Why a request names no single host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error("the request carries more than one Host header")]
    Duplicate,
    #[error("the request target's authority does not match the Host header")]
    Mismatch,
    #[error("the request names no host")]
    Missing,
}

impl HostError {
    /// Stable code (the JSON `error`).
    pub fn code(self) -> &'static str {
        match self {
            HostError::Duplicate => "duplicate_host",
            HostError::Mismatch => "host_mismatch",
            HostError::Missing => "missing_host",
        }
    }
}

/// The raw authority a request names, after the checks that keep "one request, one tenant":
/// a single `Host` header; for HTTP/2 the `:authority` (or `Host` when absent); for an HTTP/1.1
/// absolute-form target, its authority must equal `Host`.
pub fn request_host(req: &RequestHeader, is_h2: bool) -> Result<&[u8], HostError> {
    let mut hosts = req.headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let authority = match req.uri.authority() {
        Some(a) => Some(a.as_str().as_bytes()),
        None => absolute_form_authority(req.raw_path()),
    };
    match (authority, host) {
        (Some(a), Some(h)) => {
            if !same_authority(a, h.as_bytes()) {
                return Err(HostError::Mismatch);
            }
            Ok(if is_h2 { a } else { h.as_bytes() })
        }
        (Some(a), None) => Ok(a),
        (None, Some(h)) => Ok(h.as_bytes()),
        (None, None) => Err(HostError::Missing),
    }
}

/// The authority of an absolute-form request target (`http://host:port/path`), which Pingora
/// keeps verbatim in the raw path rather than in the URI.
pub fn absolute_form_authority(raw: &[u8]) -> Option<&[u8]> {
    if raw.first().is_none_or(|b| *b == b'/' || *b == b'*') {
        return None;
    }
    let start = raw.windows(3).position(|w| w == b"://")? + 3;
    let rest = &raw[start..];
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// The origin-form part (`/path?query`) of a request target in any form.
pub fn origin_form(raw: &[u8]) -> &[u8] {
    match absolute_form_authority(raw) {
        Some(a) => {
            // The authority is a sub-slice of `raw`: everything after it is the origin form.
            let offset = a.as_ptr() as usize - raw.as_ptr() as usize + a.len();
            match &raw[offset..] {
                [] => b"/",
                rest => rest,
            }
        }
        None => raw,
    }
}

/// Compares two authorities case-insensitively, ignoring one trailing dot on the host, and the
/// port only when both carry one. Userinfo in an authority is never acceptable.
fn same_authority(a: &[u8], b: &[u8]) -> bool {
    if a.contains(&b'@') || b.contains(&b'@') {
        return false;
    }
    let (ha, pa) = split_port(a);
    let (hb, pb) = split_port(b);
    let strip = |h: &[u8]| -> Vec<u8> {
        let h = h.strip_suffix(b".").unwrap_or(h);
        h.to_ascii_lowercase()
    };
    if strip(ha) != strip(hb) {
        return false;
    }
    match (pa, pb) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

fn split_port(a: &[u8]) -> (&[u8], Option<&[u8]>) {
    // `[v6]:port` or `host:port`; a bare IPv6 literal always comes bracketed in an authority.
    let search_from = a.iter().rposition(|b| *b == b']').unwrap_or(0);
    match a[search_from..].iter().rposition(|b| *b == b':') {
        Some(i) => (&a[..search_from + i], Some(&a[search_from + i + 1..])),
        None => (a, None),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn req(target: &[u8], hosts: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target, None).unwrap();
        for h in hosts {
            r.append_header("Host", *h).unwrap();
        }
        r
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            request_host(&req(b"/", &["acme.example.com"]), false).unwrap(),
            b"acme.example.com"
        );
        assert_eq!(
            request_host(&req(b"/", &["a.example.com", "b.example.com"]), false)
                .unwrap_err()
                .code(),
            "duplicate_host"
        );
        assert_eq!(
            request_host(&req(b"/", &[]), false).unwrap_err().code(),
            "missing_host"
        );
        assert_eq!(
            request_host(
                &req(b"http://acme.example.com/x", &["ACME.example.com.:80"]),
                false
            )
            .unwrap(),
            b"ACME.example.com.:80"
        );
        assert_eq!(
            request_host(
                &req(b"http://other.example.com/x", &["acme.example.com"]),
                false
            )
            .unwrap_err()
            .code(),
            "host_mismatch"
        );
        assert_eq!(
            request_host(
                &req(b"http://acme.example.com:81/x", &["acme.example.com:80"]),
                false
            )
            .unwrap_err()
            .code(),
            "host_mismatch"
        );
        assert_eq!(
            request_host(&req(b"http://acme.example.com/x", &[]), false).unwrap(),
            b"acme.example.com"
        );
    }

    #[test]
    fn absolute_form() {
        assert_eq!(absolute_form_authority(b"/x"), None);
        assert_eq!(
            absolute_form_authority(b"http://a.com:8/x?y"),
            Some(&b"a.com:8"[..])
        );
        assert_eq!(
            absolute_form_authority(b"https://a.com"),
            Some(&b"a.com"[..])
        );
        assert_eq!(origin_form(b"http://a.com:8/x?y"), b"/x?y");
        assert_eq!(origin_form(b"http://a.com"), b"/");
        assert_eq!(origin_form(b"/p?q"), b"/p?q");
    }

    #[test]
    fn authority_comparison() {
        assert!(same_authority(b"[::1]:8080", b"[::1]"));
        assert!(!same_authority(b"[::1]:8080", b"[::2]:8080"));
        assert!(!same_authority(b"user@acme.com", b"acme.com"));
    }
}
