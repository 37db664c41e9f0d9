//! The `headers` section: the names realmgate writes upstream, what it strips from clients,
//! and whose forwarding headers it trusts.

use ipnet::IpNet;

use crate::config::raw::HeadersSection;
use crate::config_error::ConfigError;
use crate::http::headers::{fold_name, parse_header_name, protocol_header};
use crate::http::headers::{HeaderNames, HeaderPolicy};

/// `assertion_header` is realmgate's too (stripped from clients, checked for clashes);
/// `strip_authorization` is `keycloak.strip_authorization`. `None` when a name does not
/// parse (the problem is reported).
pub(super) fn compile(
    h: &HeadersSection,
    assertion_header: &str,
    strip_authorization: bool,
    e: &mut ConfigError,
) -> Option<HeaderPolicy> {
    let HeadersSection {
        tenant,
        realm,
        user_id,
        user_name,
        user_email,
        roles,
        scope,
        request_id,
        strip_prefixes,
        strip,
        strip_overrides,
        shadow,
        claims,
        max_value_len,
        trusted_proxies,
    } = h;
    check_names(
        &[
            ("headers.tenant", tenant),
            ("headers.realm", realm),
            ("headers.user_id", user_id),
            ("headers.user_name", user_name),
            ("headers.user_email", user_email),
            ("headers.roles", roles),
            ("headers.scope", scope),
            ("headers.request_id", request_id),
            ("assertion.header", assertion_header),
        ],
        claims.iter(),
        e,
    );
    let trusted: Vec<IpNet> = trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            parse_cidr(s)
                .map_err(|m| e.push(format_args!("headers.trusted_proxies[{i}]"), m))
                .ok()
        })
        .collect();
    for (i, p) in strip_prefixes.iter().enumerate() {
        if p.len() < 3 {
            e.push(
                format_args!("headers.strip_prefixes[{i}]"),
                format_args!(
                    "\"{p}\" is too short to be a safe prefix (it would strip unrelated headers)"
                ),
            );
        }
    }
    if *max_value_len < 16 {
        e.push("headers.max_value_len", "must be at least 16");
    }
    if parse_header_name(shadow).is_err() {
        e.push(
            "headers.shadow",
            format_args!("\"{shadow}\" is not a valid header name"),
        );
    }
    for (i, name) in strip_overrides.iter().enumerate() {
        if let Err(m) = parse_header_name(name) {
            e.push(format_args!("headers.strip_overrides[{i}]"), m);
        }
    }
    // The assertion header is always realmgate's: a configured name is stripped like the
    // default one, so a client can never inject an assertion.
    let strip: Vec<String> = strip
        .iter()
        .chain(strip_overrides)
        .map(String::as_str)
        .chain(std::iter::once(assertion_header))
        .map(str::to_owned)
        .collect();
    HeaderPolicy::new(HeaderNames {
        tenant,
        realm,
        user_id,
        user_name,
        user_email,
        roles,
        scope,
        request_id,
        shadow,
        strip: &strip,
        strip_prefixes,
        claims: claims.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        max_value_len: *max_value_len,
        trusted_proxies: trusted,
        strip_authorization,
    })
    .map_err(|m| e.push("headers", m))
    .ok()
}

/// realmgate's own header names (identity, request id, assertion, claims) must be distinct
/// from each other and from protocol headers: each is written over the client's value, so a
/// claim named `X-Tenant-ID` would let a token choose its tenant for the backend, and one
/// named `Host` or `Content-Length` would let it rewrite routing or framing.
fn check_names<'a>(
    fixed: &[(&str, &str)],
    claims: impl Iterator<Item = (&'a String, &'a String)>,
    e: &mut ConfigError,
) {
    /// Refuses `name` for `field` if it is a protocol header or already taken.
    fn check(e: &mut ConfigError, seen: &mut Vec<(String, String)>, field: String, name: &str) {
        if let Some(p) = protocol_header(name) {
            e.push(
                &field,
                format_args!(
                    "\"{name}\" is a protocol header ({p}); realmgate must not write its own values into it"
                ),
            );
            return;
        }
        let folded = fold_name(name);
        match seen.iter().find(|(f, _)| *f == folded) {
            Some((_, other)) => e.push(
                &field,
                format_args!(
                    "\"{name}\" is already used by {other} (names are compared ignoring case and _ vs -)"
                ),
            ),
            None => seen.push((folded, field)),
        }
    }
    let mut seen: Vec<(String, String)> = Vec::new();
    for (field, name) in fixed {
        check(e, &mut seen, field.to_string(), name);
    }
    // Stripped from every request whatever `assertion.header` says.
    let builtin = fold_name("X-Identity-Assertion");
    if !seen.iter().any(|(f, _)| *f == builtin) {
        seen.push((builtin, "the built-in assertion header".to_string()));
    }
    for (claim, name) in claims {
        check(e, &mut seen, format!("headers.claims.{claim}"), name);
    }
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(n) = s.parse::<IpNet>() {
        return Ok(n);
    }
    s.parse::<std::net::IpAddr>()
        .map(IpNet::from)
        .map_err(|_| format!("\"{s}\" is not an IP address or CIDR range"))
}
