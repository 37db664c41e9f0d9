//! What a forwarded request carries upstream: the verified identity (or, when nothing was
//! verified, no client credential), the optional signed assertion, the shadow mark, the
//! request id, the forwarding headers and the canonical target. One call from
//! `upstream_request_filter`.
//!
//! Pingora's header API re-parses the name and keeps a second, case-preserving map on every
//! insert; that was most of the gateway's per-request cost. So the headers are edited as plain
//! `http` parts (one reservation, pre-built names and values) and the request is rebuilt
//! without the case map: names go upstream in lowercase, as HAProxy and Envoy send them (HTTP
//! field names are case-insensitive, RFC 9110 section 5.1). Client copies of these headers
//! were removed in `request_filter`, so a missing value can never let a forged one through.

use std::borrow::Cow;

use http::request::Parts;
use http::HeaderValue;
use pingora::prelude::*;
use pingora::ErrorType;

use crate::assertion::{unix_now, Assertion, AssertionKey};
use crate::config::RuntimeConfig;
use crate::http::headers::HeaderPolicy;
use crate::tenant::Tenant;
use crate::verify::Identity;

use super::RequestCtx;

fn fail_closed() -> Box<Error> {
    Error::explain(ErrorType::InternalError, "forwarded header value")
}

/// Rewrites `upstream` for the request decided in `ctx`.
pub(super) fn rewrite(
    assertion_key: Option<&AssertionKey>,
    session: &Session,
    upstream: &mut RequestHeader,
    ctx: &mut RequestCtx,
) -> Result<()> {
    let raw_target = canonical_target(upstream, ctx);
    let (Some(cfg), Some(tenant)) = (&ctx.config, ctx.tenant()) else {
        return Err(Error::explain(
            ErrorType::InternalError,
            "no routing decision",
        ));
    };
    let end_stream = upstream.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = Parts::from(std::mem::replace(upstream, placeholder));
    parts.headers.reserve(16);

    let h = &cfg.headers;
    parts.headers.insert(
        h.tenant.clone(),
        tenant.id_value.clone().ok_or_else(fail_closed)?,
    );
    parts.headers.insert(
        h.realm.clone(),
        tenant.realm_value.clone().ok_or_else(fail_closed)?,
    );
    match ctx.identity() {
        Some(id) => {
            identity_headers(cfg, ctx, id, &mut parts)?;
            if let (Some(a), Some(key)) = (&cfg.assertion, assertion_key) {
                let token = sign_assertion(ctx, tenant, id, key, a, &parts, raw_target.as_deref())?;
                parts.headers.insert(a.header.clone(), token);
            }
        }
        // Public routes, `default_policy: allow`: nothing was verified, so nothing the client
        // presented as a credential goes on.
        None => HeaderPolicy::strip_unverified_credentials(
            &mut parts.headers,
            cfg.verify.cookie_name.as_deref(),
        ),
    }
    if let Some(code) = ctx.shadow() {
        parts
            .headers
            .insert(h.shadow.clone(), HeaderValue::from_static(code));
    }
    if let Some(id) = &ctx.request_id {
        parts.headers.insert(h.request_id.clone(), id.clone());
    }
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let tls = session
        .digest()
        .and_then(|d| d.ssl_digest.as_ref())
        .is_some();
    let no_host = HeaderValue::from_static("");
    let host = ctx.host.as_ref().unwrap_or(&no_host);
    h.set_forwarding(
        &mut parts.headers,
        peer,
        if tls { "https" } else { "http" },
        host,
    );

    *upstream = RequestHeader::from(parts);
    if let Some(t) = &raw_target {
        upstream.set_raw_path(t)?;
    }
    if let Some(end) = end_stream {
        upstream.set_send_end_stream(end);
    }
    Ok(())
}

/// The target to send: the canonical one when it differs from what the client sent, else the
/// raw bytes when Pingora's parsed URI would not reproduce them.
fn canonical_target(upstream: &RequestHeader, ctx: &mut RequestCtx) -> Option<Vec<u8>> {
    let decided = ctx.decision.as_mut().and_then(|d| match &mut d.outcome {
        crate::decision::Outcome::Forward(f) => f.target.take(),
        _ => None,
    });
    decided.or_else(|| {
        let raw = upstream.raw_path();
        let via_uri = upstream
            .uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes());
        (raw != via_uri).then(|| raw.to_vec())
    })
}

/// The verified caller's headers: user, name, e-mail, roles, configured claims, scope.
fn identity_headers(
    cfg: &RuntimeConfig,
    ctx: &RequestCtx,
    id: &Identity,
    parts: &mut Parts,
) -> Result<()> {
    let h = &cfg.headers;
    let headers = &mut parts.headers;
    headers.insert(h.user_id.clone(), id.sub_value().ok_or_else(fail_closed)?);
    if let Some(name) = id.preferred_username_value() {
        headers.insert(h.user_name.clone(), name);
    }
    if let Some(email) = id.email_value() {
        headers.insert(h.user_email.clone(), email);
    }
    headers.insert(h.roles.clone(), id.role_set.header.clone());
    for (name, value) in &id.extra {
        headers.insert(name.clone(), value.clone());
    }
    let scope = ctx.forward().and_then(|f| f.scope);
    if let Some(scope) = scope.and_then(|s| cfg.catalog.scopes().value(s)) {
        headers.insert(h.scope.clone(), scope.clone());
    }
    if cfg.headers.strip_authorization {
        headers.remove(http::header::AUTHORIZATION);
    }
    Ok(())
}

/// The signed identity assertion: one ES256 signature when on.
fn sign_assertion(
    ctx: &RequestCtx,
    tenant: &Tenant,
    id: &Identity,
    key: &AssertionKey,
    settings: &crate::assertion::AssertionSettings,
    parts: &Parts,
    raw_target: Option<&[u8]>,
) -> Result<HeaderValue> {
    let path = match raw_target {
        Some(t) => String::from_utf8_lossy(t),
        None => parts
            .uri
            .path_and_query()
            .map_or(Cow::Borrowed("/"), |p| Cow::Borrowed(p.as_str())),
    };
    let scope = ctx.forward().and_then(|f| f.scope);
    let claims = Assertion {
        tenant: &tenant.id,
        realm: &tenant.realm,
        sub: id.sub(),
        roles: id.all_roles(),
        scope: scope.and_then(|s| Some(ctx.config.as_ref()?.catalog.scopes().name(s))),
        method: parts.method.as_str(),
        path: &path,
        request_id: ctx.request_id_str(),
        shadow: ctx.shadow(),
    };
    key.sign(settings, &claims, unix_now())
        .map_err(|e| Error::because(ErrorType::InternalError, "identity assertion", e))
}
