//! Identity-header hygiene and forwarding headers.
//!
//! realmgate owns a set of request headers (tenant, realm, user id, roles, ...). A client must
//! never be able to set any of them, on any route, so every one is removed before the request
//! is looked at further, and only verified values are written back. Names are compared after
//! folding case and treating `_` like `-`: WSGI/ASGI servers map `X_Tenant_ID` and
//! `X-Tenant-ID` to the same variable, and that gap gave oauth2-proxy GHSA-vjrc-mh2v-45x6.

use std::borrow::Cow;
use std::net::IpAddr;

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;
use pingora::http::RequestHeader;

/// Folds one header-name byte: ASCII lowercase, `_` -> `-`.
#[inline]
fn fold(b: u8) -> u8 {
    if b == b'_' {
        b'-'
    } else {
        b.to_ascii_lowercase()
    }
}

/// Folds a configured name for comparison.
pub fn fold_name(name: &str) -> String {
    name.bytes().map(|b| fold(b) as char).collect()
}

fn folded_eq(name: &[u8], folded: &[u8]) -> bool {
    name.len() == folded.len() && name.iter().zip(folded).all(|(a, b)| fold(*a) == *b)
}

fn folded_starts_with(name: &[u8], folded_prefix: &[u8]) -> bool {
    name.len() >= folded_prefix.len() && folded_eq(&name[..folded_prefix.len()], folded_prefix)
}

/// The compiled header contract: which client headers are removed and which names realmgate
/// writes upstream.
#[derive(Debug, Clone)]
pub struct HeaderPolicy {
    /// Folded exact names removed from every client request.
    owned: Vec<Box<[u8]>>,
    /// Folded prefixes removed from every client request.
    prefixes: Vec<Box<[u8]>>,
    pub tenant: HeaderName,
    pub realm: HeaderName,
    pub user_id: HeaderName,
    pub user_name: HeaderName,
    pub user_email: HeaderName,
    pub roles: HeaderName,
    pub scope: HeaderName,
    pub request_id: HeaderName,
    /// Verified claim -> upstream header.
    pub claims: Vec<(String, HeaderName)>,
    pub max_value_len: usize,
    trusted_proxies: Vec<IpNet>,
}

/// Input for [`HeaderPolicy::new`], already checked for syntax by the config layer.
pub struct HeaderNames<'a> {
    pub tenant: &'a str,
    pub realm: &'a str,
    pub user_id: &'a str,
    pub user_name: &'a str,
    pub user_email: &'a str,
    pub roles: &'a str,
    pub scope: &'a str,
    pub request_id: &'a str,
    pub strip: &'a [String],
    pub strip_prefixes: &'a [String],
    pub claims: Vec<(String, String)>,
    pub max_value_len: usize,
    pub trusted_proxies: Vec<IpNet>,
}

/// Checks a configured header name.
pub fn parse_header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("\"{name}\" is not a valid header name"))
}

impl HeaderPolicy {
    pub fn new(n: HeaderNames<'_>) -> Result<Self, String> {
        let h = parse_header_name;
        let identity = [
            n.tenant,
            n.realm,
            n.user_id,
            n.user_name,
            n.user_email,
            n.roles,
            n.scope,
        ];
        let mut owned: Vec<Box<[u8]>> = identity
            .iter()
            .copied()
            .chain(n.strip.iter().map(String::as_str))
            .chain(n.claims.iter().map(|(_, hdr)| hdr.as_str()))
            // Always ours: a forged assertion must never reach a backend that verifies it.
            .chain(["X-Identity-Assertion"])
            .map(|s| fold_name(s).into_bytes().into_boxed_slice())
            .collect();
        owned.sort();
        owned.dedup();
        let claims = n
            .claims
            .iter()
            .map(|(c, hdr)| Ok((c.clone(), h(hdr)?)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            owned,
            prefixes: n
                .strip_prefixes
                .iter()
                .map(|p| fold_name(p).into_bytes().into_boxed_slice())
                .collect(),
            tenant: h(n.tenant)?,
            realm: h(n.realm)?,
            user_id: h(n.user_id)?,
            user_name: h(n.user_name)?,
            user_email: h(n.user_email)?,
            roles: h(n.roles)?,
            scope: h(n.scope)?,
            request_id: h(n.request_id)?,
            claims,
            max_value_len: n.max_value_len,
            trusted_proxies: n.trusted_proxies,
        })
    }

    /// Whether a client header name belongs to realmgate (and must be removed).
    pub fn is_owned(&self, name: &str) -> bool {
        let b = name.as_bytes();
        self.owned.iter().any(|o| folded_eq(b, o))
            || self.prefixes.iter().any(|p| folded_starts_with(b, p))
    }

    /// Removes every owned header from a client request. Allocates only when there is
    /// something to remove.
    pub fn strip_owned(&self, req: &mut RequestHeader) -> usize {
        let doomed: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|k| self.is_owned(k.as_str()))
            .cloned()
            .collect();
        for name in &doomed {
            // `remove_header` drops every value of the name.
            let _ = req.remove_header(name);
        }
        doomed.len()
    }

    /// Whether forwarding headers from this peer are believed.
    pub fn is_trusted_proxy(&self, peer: Option<IpAddr>) -> bool {
        match peer {
            Some(ip) => self.trusted_proxies.iter().any(|n| n.contains(&ip)),
            None => false,
        }
    }

    /// Sets `X-Forwarded-For/-Proto/-Host` and RFC 7239 `Forwarded` for the upstream request.
    /// Incoming values are extended only when the direct peer is a trusted proxy; otherwise
    /// they are replaced, so a client cannot forge its address or scheme.
    pub fn set_forwarding(
        &self,
        req: &mut RequestHeader,
        peer: Option<IpAddr>,
        proto: &str,
        host: &str,
    ) {
        let trusted = self.is_trusted_proxy(peer);
        let peer_s = peer
            .map(|p| p.to_string())
            .unwrap_or_else(|| "unknown".into());
        let prior_xff = if trusted {
            joined(req, "x-forwarded-for")
        } else {
            None
        };
        let xff = match prior_xff {
            Some(p) => format!("{p}, {peer_s}"),
            None => peer_s.clone(),
        };
        let node = match peer {
            Some(IpAddr::V6(v6)) => format!("\"[{v6}]\""),
            Some(IpAddr::V4(v4)) => v4.to_string(),
            None => "unknown".into(),
        };
        let this_hop = format!("for={node};proto={proto};host=\"{host}\"");
        let forwarded = match trusted.then(|| joined(req, "forwarded")).flatten() {
            Some(p) => format!("{p}, {this_hop}"),
            None => this_hop,
        };
        let keep_proto_host = trusted && req.headers.contains_key("x-forwarded-proto");
        let _ = req.insert_header("x-forwarded-for", xff);
        let _ = req.insert_header("forwarded", forwarded);
        if !keep_proto_host {
            let _ = req.insert_header("x-forwarded-proto", proto);
            let _ = req.insert_header("x-forwarded-host", host);
        }
    }
}

fn joined(req: &RequestHeader, name: &str) -> Option<String> {
    let mut out: Option<String> = None;
    for v in req.headers.get_all(name) {
        let s = v.to_str().ok()?;
        match &mut out {
            Some(o) => {
                o.push_str(", ");
                o.push_str(s);
            }
            None => out = Some(s.to_string()),
        }
    }
    out
}

/// Keeps an incoming request id only when it is short and made of safe characters, so it can
/// be logged and echoed without escaping.
pub fn is_valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 128
        && v.iter().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'+' | b'=')
        })
}

/// A fresh 128-bit random request id (32 hex characters).
pub fn new_request_id() -> String {
    let v: u128 = rand::random();
    format!("{v:032x}")
}

/// Makes a claim value safe as a header value: control characters dropped, length capped at
/// a character boundary. Borrowed when already clean.
pub fn sanitize_value(v: &str, max: usize) -> Cow<'_, str> {
    let clean = !v.chars().any(char::is_control) && v.len() <= max;
    if clean {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len().min(max));
    for c in v.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// A header value from sanitised text (non-ASCII is allowed by `HeaderValue` as opaque bytes).
pub fn header_value(v: &str, max: usize) -> Option<HeaderValue> {
    HeaderValue::from_str(&sanitize_value(v, max)).ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy(trusted: Vec<IpNet>) -> HeaderPolicy {
        HeaderPolicy::new(HeaderNames {
            tenant: "X-Tenant-ID",
            realm: "X-Realm",
            user_id: "X-User-ID",
            user_name: "X-User-Name",
            user_email: "X-User-Email",
            roles: "X-User-Roles",
            scope: "X-Auth-Scope",
            request_id: "X-Request-ID",
            strip: &["X-Internal-Admin".to_string()],
            strip_prefixes: &["X-Auth-".to_string(), "X-User-".to_string()],
            claims: vec![("department".into(), "X-Department".into())],
            max_value_len: 16,
            trusted_proxies: trusted,
        })
        .unwrap()
    }

    #[test]
    fn owned_names_fold_case_and_underscores() {
        let p = policy(vec![]);
        for name in [
            "X-Tenant-ID",
            "x-tenant-id",
            "X_Tenant_ID",
            "x_tenant-id",
            "X-User-Roles",
            "x_user_anything",
            "X-Auth-Scope",
            "x-auth_whatever",
            "X-Internal-Admin",
            "X-Department",
            "x-identity-assertion",
            "X-Realm",
        ] {
            assert!(p.is_owned(name), "{name} must be stripped");
        }
        for name in [
            "Authorization",
            "X-Tenant",
            "X-Tenant-IDs",
            "Host",
            "X-Request-ID",
            "X-Users",
        ] {
            assert!(!p.is_owned(name), "{name} must be kept");
        }
    }

    #[test]
    fn strip_removes_all_values() {
        let p = policy(vec![]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Tenant-ID", "evil").unwrap();
        req.append_header("x_tenant_id", "evil2").unwrap();
        req.append_header("X-User-Roles", "admin").unwrap();
        req.append_header("Accept", "*/*").unwrap();
        assert_eq!(p.strip_owned(&mut req), 3);
        assert_eq!(req.headers.len(), 1);
        assert!(req.headers.contains_key("accept"));
    }

    #[test]
    fn forwarding_headers_untrusted_are_replaced() {
        let p = policy(vec![]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Forwarded-For", "6.6.6.6").unwrap();
        req.append_header("X-Forwarded-Proto", "https").unwrap();
        req.append_header("Forwarded", "for=6.6.6.6").unwrap();
        p.set_forwarding(
            &mut req,
            Some("10.0.0.5".parse().unwrap()),
            "http",
            "acme.example.com",
        );
        assert_eq!(req.headers["x-forwarded-for"], "10.0.0.5");
        assert_eq!(req.headers["x-forwarded-proto"], "http");
        assert_eq!(req.headers["x-forwarded-host"], "acme.example.com");
        assert_eq!(
            req.headers["forwarded"],
            "for=10.0.0.5;proto=http;host=\"acme.example.com\""
        );
    }

    #[test]
    fn forwarding_headers_trusted_are_extended() {
        let p = policy(vec!["10.0.0.0/8".parse().unwrap()]);
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("X-Forwarded-For", "1.2.3.4").unwrap();
        req.append_header("X-Forwarded-Proto", "https").unwrap();
        req.append_header("X-Forwarded-Host", "app.acmecorp.com")
            .unwrap();
        p.set_forwarding(
            &mut req,
            Some("10.0.0.5".parse().unwrap()),
            "http",
            "app.acmecorp.com",
        );
        assert_eq!(req.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.5");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        let mut v6 = RequestHeader::build("GET", b"/", None).unwrap();
        p.set_forwarding(&mut v6, Some("::1".parse().unwrap()), "http", "h");
        assert_eq!(
            v6.headers["forwarded"],
            "for=\"[::1]\";proto=http;host=\"h\""
        );
    }

    #[test]
    fn request_id_rules() {
        assert!(is_valid_request_id(b"abc-123_x.y:z"));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"a b"));
        assert!(!is_valid_request_id(b"a\"b"));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(is_valid_request_id(id.as_bytes()));
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn sanitize() {
        assert!(matches!(
            sanitize_value("alice", 16),
            Cow::Borrowed("alice")
        ));
        assert_eq!(sanitize_value("al\r\nice", 16), "alice");
        assert_eq!(sanitize_value("ééééééééééé", 5), "éé");
        assert!(header_value("a\u{0}b", 16).is_some());
    }
}
