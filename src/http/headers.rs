//! Identity-header hygiene and forwarding headers.
//!
//! realmgate owns a set of request headers (tenant, realm, user id, roles, ...). A client must
//! never be able to set any of them, on any route, so every one is removed before the request
//! is looked at further, and only verified values are written back. Names are compared after
//! folding case and treating `_` like `-`: WSGI/ASGI servers map `X_Tenant_ID` and
//! `X-Tenant-ID` to the same variable, and that gap gave oauth2-proxy GHSA-vjrc-mh2v-45x6.

use std::net::IpAddr;

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use http::header::FORWARDED;
use http::{HeaderMap, HeaderName, HeaderValue};
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
    /// Marks shadow-mode passes (value: the refusal enforcement would have given).
    pub shadow: HeaderName,
    /// Verified claim -> upstream header.
    pub claims: Vec<(String, HeaderName)>,
    pub max_value_len: usize,
    trusted_proxies: Vec<IpNet>,
    /// Remove `Authorization` before forwarding (`keycloak.strip_authorization`).
    pub strip_authorization: bool,
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
    pub shadow: &'a str,
    pub strip: &'a [String],
    pub strip_prefixes: &'a [String],
    pub claims: Vec<(String, String)>,
    pub max_value_len: usize,
    pub trusted_proxies: Vec<IpNet>,
    pub strip_authorization: bool,
}

/// Request headers that carry credentials, routing, client addresses or message framing
/// (folded). realmgate writes its identity and claim headers over whatever the client sent,
/// so a configured name from this list would let a token claim (or the tenant id) replace the
/// `Host`, the credentials, the forwarding chain or the body length the backend sees.
const PROTOCOL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "via",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "expect",
    "content-length",
    "content-type",
    "content-encoding",
];

/// The folded protocol header a configured name would collide with, if any (compared like
/// client headers: case folded, `_` as `-`).
pub fn protocol_header(name: &str) -> Option<&'static str> {
    let folded = fold_name(name);
    PROTOCOL_HEADERS.iter().copied().find(|p| *p == folded)
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
            n.shadow,
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
            shadow: h(n.shadow)?,
            claims,
            max_value_len: n.max_value_len,
            trusted_proxies: n.trusted_proxies,
            strip_authorization: n.strip_authorization,
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

    /// Removes the credentials a request carried but did not verify: `Authorization` and the
    /// token cookie (other cookies are kept byte for byte). A legacy backend that decodes
    /// the JWT itself must only ever see a token the gateway checked.
    pub fn strip_unverified_credentials(headers: &mut HeaderMap, token_cookie: Option<&str>) {
        headers.remove(http::header::AUTHORIZATION);
        if let Some(name) = token_cookie {
            remove_cookie(headers, name);
        }
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
    ///
    /// Runs per request: names are constants and each value is built in one buffer.
    pub fn set_forwarding(
        &self,
        headers: &mut HeaderMap,
        peer: Option<IpAddr>,
        proto: &'static str,
        host: &HeaderValue,
    ) {
        let trusted = self.is_trusted_proxy(peer);
        let host_s = host.as_bytes();
        let prior_xff = trusted.then(|| joined(headers, &X_FORWARDED_FOR)).flatten();
        let prior_fwd = trusted.then(|| joined(headers, &FORWARDED)).flatten();
        let prior_len =
            prior_xff.as_ref().map_or(0, String::len) + prior_fwd.as_ref().map_or(0, String::len);
        // Both values share one buffer: one allocation for the pair.
        let mut buf = BytesMut::with_capacity(prior_len + 2 * 48 + 32 + host_s.len());
        if let Some(p) = &prior_xff {
            buf.extend_from_slice(p.as_bytes());
            buf.extend_from_slice(b", ");
        }
        push_ip(&mut buf, peer, false);
        let xff = buf.split().freeze();
        if let Some(p) = &prior_fwd {
            buf.extend_from_slice(p.as_bytes());
            buf.extend_from_slice(b", ");
        }
        buf.extend_from_slice(b"for=");
        push_ip(&mut buf, peer, true);
        buf.extend_from_slice(b";proto=");
        buf.extend_from_slice(proto.as_bytes());
        buf.extend_from_slice(b";host=\"");
        buf.extend_from_slice(host_s);
        buf.extend_from_slice(b"\"");
        let fwd = buf.freeze();

        let keep_proto_host = trusted && headers.contains_key(&X_FORWARDED_PROTO);
        if let Ok(v) = HeaderValue::from_maybe_shared(xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        if let Ok(v) = HeaderValue::from_maybe_shared(fwd) {
            headers.insert(FORWARDED, v);
        }
        if !keep_proto_host {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Appends a peer address: IPv4 dotted, IPv6 bracketed and quoted in `Forwarded` (RFC 7239
/// section 6), `unknown` without a peer. IPv4 avoids `fmt` (this runs on every request).
fn push_ip(out: &mut BytesMut, peer: Option<IpAddr>, forwarded: bool) {
    match peer {
        Some(IpAddr::V4(v4)) => {
            let mut buf = itoa::Buffer::new();
            for (i, o) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.extend_from_slice(b".");
                }
                out.extend_from_slice(buf.format(*o).as_bytes());
            }
        }
        Some(IpAddr::V6(v6)) if forwarded => {
            let _ = write!(out, "\"[{v6}]\"");
        }
        Some(IpAddr::V6(v6)) => {
            let _ = write!(out, "{v6}");
        }
        None => out.extend_from_slice(b"unknown"),
    }
}

fn joined(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut out: Option<String> = None;
    for v in headers.get_all(name) {
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
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v: u128 = rand::random();
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = HEX[((v >> ((31 - i) * 4)) & 0xf) as usize];
    }
    // Owned by a shared allocation from the start, so the copies forwarded upstream and
    // echoed to the client are reference counts.
    HeaderValue::from_maybe_shared(Bytes::from_owner(out))
        .unwrap_or(HeaderValue::from_static("invalid"))
}

/// Drops every `name=...` pair from the `Cookie` headers, keeping the others' bytes as sent
/// (RFC 6265 5.4: pairs separated by `;`). Allocates only when the cookie is present.
pub fn remove_cookie(headers: &mut HeaderMap, name: &str) {
    let is_it = |pair: &str| pair.split_once('=').is_some_and(|(k, _)| k.trim() == name);
    let present = headers
        .get_all(http::header::COOKIE)
        .iter()
        .any(|v| v.to_str().is_ok_and(|s| s.split(';').any(is_it)));
    if !present {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| {
            // A value that is not text cannot be split safely: drop it rather than forward
            // a token inside it.
            let s = v.to_str().ok()?;
            let rest: Vec<&str> = s
                .split(';')
                .map(str::trim)
                .filter(|p| !p.is_empty() && !is_it(p))
                .collect();
            (!rest.is_empty()).then(|| HeaderValue::from_str(&rest.join("; ")).ok())?
        })
        .collect();
    headers.remove(http::header::COOKIE);
    for v in kept {
        headers.append(http::header::COOKIE, v);
    }
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
            shadow: "X-Shadow-Pass",
            strip: &["X-Internal-Admin".to_string()],
            strip_prefixes: &["X-Auth-".to_string(), "X-User-".to_string()],
            claims: vec![("department".into(), "X-Department".into())],
            max_value_len: 16,
            trusted_proxies: trusted,
            strip_authorization: false,
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
    fn protocol_headers_are_recognised_in_any_spelling() {
        for name in [
            "Authorization",
            "HOST",
            "x_forwarded_for",
            "Transfer-Encoding",
            "Cookie",
        ] {
            assert!(protocol_header(name).is_some(), "{name}");
        }
        for name in ["X-Tenant-ID", "X-Department", "Hosts", "X-Forwarded"] {
            assert_eq!(protocol_header(name), None, "{name}");
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
        let mut req = http::request::Parts::from(req);
        p.set_forwarding(
            &mut req.headers,
            Some("10.0.0.5".parse().unwrap()),
            "http",
            &HeaderValue::from_static("acme.example.com"),
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
        req.append_header("Forwarded", "for=1.2.3.4").unwrap();
        let mut req = http::request::Parts::from(req);
        p.set_forwarding(
            &mut req.headers,
            Some("10.0.0.5".parse().unwrap()),
            "http",
            &HeaderValue::from_static("app.acmecorp.com"),
        );
        assert_eq!(req.headers["x-forwarded-for"], "1.2.3.4, 10.0.0.5");
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert_eq!(req.headers["x-forwarded-host"], "app.acmecorp.com");
        assert_eq!(
            req.headers["forwarded"],
            "for=1.2.3.4, for=10.0.0.5;proto=http;host=\"app.acmecorp.com\""
        );
        let mut v6 = HeaderMap::new();
        let h = HeaderValue::from_static("h");
        p.set_forwarding(&mut v6, Some("::1".parse().unwrap()), "http", &h);
        assert_eq!(v6["forwarded"], "for=\"[::1]\";proto=http;host=\"h\"");
        assert_eq!(v6["x-forwarded-for"], "::1");
        let mut none = HeaderMap::new();
        p.set_forwarding(&mut none, None, "https", &h);
        assert_eq!(none["x-forwarded-for"], "unknown");
        assert_eq!(none["forwarded"], "for=unknown;proto=https;host=\"h\"");
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
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn only_the_token_cookie_is_removed() {
        let mut h = HeaderMap::new();
        h.append(
            "cookie",
            HeaderValue::from_static("a=1; kc_token=eyJ.x.y; b=2"),
        );
        h.append("cookie", HeaderValue::from_static("kc_token=other"));
        h.append("cookie", HeaderValue::from_static("c=3"));
        remove_cookie(&mut h, "kc_token");
        let left: Vec<&str> = h
            .get_all("cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(left, ["a=1; b=2", "c=3"]);
        let mut none = HeaderMap::new();
        none.append("cookie", HeaderValue::from_static("kc_token_x=1; a=2"));
        remove_cookie(&mut none, "kc_token");
        assert_eq!(none["cookie"], "kc_token_x=1; a=2", "untouched when absent");
    }

    #[test]
    fn unverified_credentials_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer junk"));
        h.insert("cookie", HeaderValue::from_static("t=junk; keep=1"));
        HeaderPolicy::strip_unverified_credentials(&mut h, Some("t"));
        assert!(h.get("authorization").is_none());
        assert_eq!(h["cookie"], "keep=1");
    }
}
