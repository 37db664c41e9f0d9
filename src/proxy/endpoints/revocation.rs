//! The revocation endpoints on the proxy listener: OIDC back-channel logout and Keycloak's
//! not-before push, at the reserved paths of `revocation:` on every tenant host. Answered by
//! the gateway itself (never forwarded, no bearer token needed), rate-limited process-wide,
//! bodies bounded. The host names the realm: a logout token is verified with that realm's
//! keys and must be issued by exactly that realm.
//!
//! Answers: 200 (empty body) on success; 400 `{"error": "invalid_request", "reason": ...}`
//! for anything invalid (nothing is revoked then); 405 for another method; 429 over the rate;
//! 503 when the realm's keys cannot be had (Keycloak may retry). Always `Cache-Control:
//! no-store`.

use std::time::Instant;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use serde_json::json;

use crate::http::request_target::{origin_form, request_host};
use crate::proxy::{has_body, RequestCtx};
use crate::config::RuntimeConfig;
use crate::metrics::metrics;
use crate::revocation::logout_token::{self, Expect, LogoutError};
use crate::revocation::not_before;
use crate::revocation::replay::Seen;
use crate::revocation::{Kind, RevocationSettings, Source};
use crate::state::Shared;
use crate::verify::{AuthError, UnverifiedJws};

/// The process-wide rate bound of the endpoints (rebuilt when the configured rate changes).
pub(crate) struct EndpointRate(parking_lot::Mutex<(u32, crate::limits::TokenBucket)>);

impl EndpointRate {
    pub(crate) fn new() -> Self {
        Self(parking_lot::Mutex::new((
            0,
            crate::limits::TokenBucket::new(0, Instant::now()),
        )))
    }

    fn admit(&self, rate: u32) -> bool {
        let now = Instant::now();
        let mut g = self.0.lock();
        if g.0 != rate {
            *g = (rate, crate::limits::TokenBucket::new(rate, now));
        }
        g.1.try_take(now)
    }
}

/// An answer of the endpoints.
struct Answer {
    status: u16,
    reason: &'static str,
    description: &'static str,
}

impl Answer {
    fn ok() -> Self {
        Self {
            status: 200,
            reason: "",
            description: "",
        }
    }

    fn bad(reason: &'static str, description: &'static str) -> Self {
        Self {
            status: 400,
            reason,
            description,
        }
    }

    fn logout(e: LogoutError) -> Self {
        Self::bad(e.code(), logout_description(e))
    }
}

fn logout_description(e: LogoutError) -> &'static str {
    match e {
        LogoutError::Malformed => "the logout token is malformed",
        LogoutError::WrongType => "the logout token's typ is not logout+jwt",
        LogoutError::Issuer => "the logout token was not issued by this host's realm",
        LogoutError::Audience => "the logout token's aud names no configured client",
        LogoutError::Time => "the logout token's iat is missing, in the future or too old",
        LogoutError::Expired => "the logout token expired",
        LogoutError::MissingJti => "the logout token has no jti",
        LogoutError::Events => "the logout token has no back-channel logout event",
        LogoutError::NoSubject => "the logout token names neither sid nor sub",
        LogoutError::Nonce => "a logout token must not carry a nonce",
        LogoutError::Replayed => "the logout token was already used",
    }
}

/// `token` read for the realm (header rules), or the answer saying why not.
fn read<'t>(
    shared: &Shared,
    s: &RevocationSettings,
    realm: &'t str,
    token: &'t str,
) -> std::result::Result<UnverifiedJws<'t>, Answer> {
    shared
        .verifier
        .read_jws(realm, token, s.max_body_bytes)
        .map_err(|e| unverified(&e))
}

/// The signature of `jws` checked with the realm's keys, or the answer saying why not.
async fn verified(shared: &Shared, jws: &UnverifiedJws<'_>) -> std::result::Result<(), Answer> {
    shared
        .verifier
        .verify_jws(jws)
        .await
        .map_err(|e| unverified(&e))
}

/// A JWS the realm's keys refused.
fn unverified(e: &AuthError) -> Answer {
    match e {
        AuthError::RealmUnavailable { .. } => Answer {
            status: 503,
            reason: "realm_unavailable",
            description: "the realm's keys are unavailable, try again later",
        },
        e => Answer::bad(e.code(), "the token's signature or header is not accepted"),
    }
}

/// Whether the request targets a reserved revocation path (query ignored).
pub(crate) fn is_endpoint(cfg: &RuntimeConfig, raw_path: &[u8]) -> bool {
    let target = origin_form(raw_path);
    let path = target.split(|b| *b == b'?').next().unwrap_or(target);
    cfg.revocation.is_reserved(path)
}

/// Reads the body, up to `max` bytes; None when it is larger.
async fn read_body(session: &mut Session, max: usize) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The one form field `logout_token` (exactly once).
fn logout_token_field(body: &[u8]) -> Option<String> {
    let mut found = None;
    for (k, v) in form_urlencoded::parse(body) {
        if k == "logout_token" {
            if found.is_some() {
                return None;
            }
            found = Some(v.into_owned());
        }
    }
    found
}

fn is_form(session: &Session) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Answers one request to a reserved path (`is_endpoint` said so). Returns `Ok(true)`:
/// the gateway answered.
pub(crate) async fn serve(
    shared: &Shared,
    rate: &EndpointRate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    cfg: &RuntimeConfig,
) -> Result<bool> {
    let mut read = false;
    let answer = decide(shared, rate, session, ctx, cfg, &mut read).await?;
    // A request body we did not read would poison a reused connection.
    if !read && has_body(session.req_header()) {
        session.set_keepalive(None);
    }
    if answer.status != 200 {
        metrics()
            .revocation_requests_refused_total
            .with_label_values(&[answer.reason])
            .inc();
    }
    ctx.status = answer.status;
    ctx.decision = "revocation";
    if answer.status != 200 {
        ctx.rejected = Some(answer.reason);
    }
    let body = if answer.status == 200 {
        Bytes::new()
    } else {
        let mut v = json!({
            "error": if answer.status == 400 { "invalid_request" } else { answer.reason },
            "error_description": answer.description,
            "reason": answer.reason,
        });
        if let Some(id) = ctx.request_id_str() {
            v["request_id"] = json!(id);
        }
        Bytes::from(v.to_string())
    };
    let mut h = ResponseHeader::build(answer.status, Some(6))?;
    if !body.is_empty() {
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
    }
    h.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
    match answer.status {
        405 => h.insert_header(http::header::ALLOW, "POST")?,
        429 | 503 => h.insert_header(http::header::RETRY_AFTER, "1")?,
        _ => {}
    }
    if let Some(id) = &ctx.request_id {
        h.insert_header(cfg.headers.request_id.clone(), id.clone())?;
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

async fn decide(
    shared: &Shared,
    rate: &EndpointRate,
    session: &mut Session,
    ctx: &mut RequestCtx,
    cfg: &RuntimeConfig,
    read: &mut bool,
) -> Result<Answer> {
    let s = &cfg.revocation;
    let req = session.req_header();
    if cfg.limits.check(req).is_err() {
        return Ok(Answer::bad(
            "request_too_large",
            "the request head is too large",
        ));
    }
    let tenant = match request_host(req, session.is_http2())
        .ok()
        .and_then(|h| cfg.tenants.resolve_raw(h).ok())
    {
        Some(t) => t,
        None => {
            return Ok(Answer {
                status: 404,
                reason: "unknown_host",
                description: "no tenant is configured for this host",
            });
        }
    };
    ctx.tenant = Some(tenant.clone());
    if req.method != http::Method::POST {
        return Ok(Answer {
            status: 405,
            reason: "method_not_allowed",
            description: "only POST is accepted here",
        });
    }
    if !rate.admit(s.rate_per_second) {
        return Ok(Answer {
            status: 429,
            reason: "rate_limited",
            description: "too many logout requests, try again later",
        });
    }
    let path = origin_form(req.raw_path());
    let backchannel = path.starts_with(s.backchannel_path.as_bytes())
        && path
            .get(s.backchannel_path.len())
            .is_none_or(|b| *b == b'?');
    if backchannel && !is_form(session) {
        return Ok(Answer::bad(
            "wrong_content_type",
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let declared = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || Answer::bad("body_too_large", "the request body is too large");
    if declared.is_some_and(|n| n > s.max_body_bytes as u64) {
        return Ok(too_large());
    }
    let Some(body) = read_body(session, s.max_body_bytes).await? else {
        return Ok(too_large());
    };
    *read = true;
    let now = shared.keys.now();
    if backchannel {
        Ok(logout(shared, s, &tenant.id, &tenant.realm, &body, now).await)
    } else {
        Ok(push_not_before(shared, s, &tenant.id, &tenant.realm, &body, now).await)
    }
}

async fn logout(
    shared: &Shared,
    s: &RevocationSettings,
    tenant: &str,
    realm: &str,
    body: &[u8],
    now: u64,
) -> Answer {
    let Some(token) = logout_token_field(body) else {
        return Answer::bad(
            "missing_logout_token",
            "the body must carry exactly one logout_token field",
        );
    };
    // Header rules, then the claims (pure), then the signature: only a plausible token can
    // make an unknown kid cause a JWKS refetch.
    let jws = match read(shared, s, realm, &token) {
        Ok(j) => j,
        Err(a) => return a,
    };
    let x = Expect {
        issuer: &jws.issuer,
        audiences: &s.audiences,
        now,
        leeway: s.leeway_secs,
        max_age: s.max_age_secs,
    };
    let t = match logout_token::validate(jws.typ.as_deref(), &jws.payload, &x) {
        Ok(t) => t,
        Err(e) => return Answer::logout(e),
    };
    if let Err(a) = verified(shared, &jws).await {
        return a;
    }
    let r = &shared.revoker;
    match r.replay.remember(&jws.issuer, &t.jti, t.fresh_until, now) {
        Seen::Replayed => return Answer::logout(LogoutError::Replayed),
        Seen::Full => tracing::warn!("jti replay set full: logout token accepted unremembered"),
        Seen::New => {}
    }
    // Tokens of the session issued up to the logout, by either clock.
    let at = now.max(t.iat);
    if let Some(sid) = &t.sid {
        r.revoke(
            Kind::Sid,
            jws.issuer.clone(),
            sid,
            at,
            s.hold_secs,
            Source::Backchannel,
            tenant,
            now,
        );
    }
    if let Some(sub) = &t.sub {
        if t.sid.is_none() || s.revoke_subject {
            r.revoke(
                Kind::Sub,
                jws.issuer.clone(),
                sub,
                at,
                s.hold_secs,
                Source::Backchannel,
                tenant,
                now,
            );
        }
    }
    Answer::ok()
}

async fn push_not_before(
    shared: &Shared,
    s: &RevocationSettings,
    tenant: &str,
    realm: &str,
    body: &[u8],
    now: u64,
) -> Answer {
    let Some(token) = std::str::from_utf8(body).ok().map(str::trim) else {
        return Answer::bad("malformed", "the body must be the signed not-before action");
    };
    let jws = match read(shared, s, realm, token) {
        Ok(j) => j,
        Err(a) => return a,
    };
    let checked = not_before::validate(&jws.payload, &s.audiences, now, s.leeway_secs);
    if checked.is_ok() {
        if let Err(a) = verified(shared, &jws).await {
            return a;
        }
    }
    match checked {
        Ok(0) => Answer::ok(),
        Ok(nb) => {
            shared.revoker.revoke(
                Kind::NotBefore,
                jws.issuer.clone(),
                "",
                nb,
                s.hold_secs,
                Source::NotBefore,
                tenant,
                now,
            );
            Answer::ok()
        }
        Err(e) => Answer::bad(e.code(), "the not-before push is not valid"),
    }
}
