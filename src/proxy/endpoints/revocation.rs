//! The revocation endpoints on the proxy listener: OIDC back-channel logout and Keycloak's
//! not-before push, at the reserved paths of `revocation:` on every tenant host. The decision
//! has already bounded the head, resolved the host to its tenant and checked the method
//! (`decision::Endpoint`); this module reads the body (bounded), verifies and revokes. The
//! host names the realm: a logout token is verified with that realm's keys and must be issued
//! by exactly that realm.
//!
//! Answers (the OAuth error shape, `http::answer::Body::OAuth`): 200 (empty body) on success;
//! 400 `{"error": "invalid_request", "reason": ...}` for anything invalid (nothing is revoked
//! then); 429 over the rate; 503 when the realm's keys cannot be had (Keycloak may retry).
//! Always `Cache-Control: no-store`.

use std::time::Instant;

use pingora::prelude::*;

use crate::config::RuntimeConfig;
use crate::decision::Endpoint;
use crate::http::respond::Answer;
use crate::revocation::logout_token::{self, Expect, LogoutError};
use crate::revocation::not_before;
use crate::revocation::replay::Seen;
use crate::revocation::{Kind, RevocationSettings, Source};
use crate::state::Shared;
use crate::tenant::Tenant;
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

fn bad(reason: &'static str, description: &'static str) -> Answer {
    Answer::oauth(400, reason, description)
}

fn logout_refused(e: LogoutError) -> Answer {
    bad(e.code(), logout_description(e))
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
        AuthError::RealmUnavailable { .. } => Answer::oauth(
            503,
            "realm_unavailable",
            "the realm's keys are unavailable, try again later",
        )
        .with_retry_after(1),
        e => bad(e.code(), "the token's signature or header is not accepted"),
    }
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

/// Answers one request the decision handed to `endpoint` on `tenant`'s host. Returns the
/// answer and whether the request body was read (an unread one ends keep-alive).
pub(crate) async fn serve(
    shared: &Shared,
    rate: &EndpointRate,
    session: &mut Session,
    tenant: &Tenant,
    endpoint: Endpoint,
    cfg: &RuntimeConfig,
) -> Result<(Answer, bool)> {
    let s = &cfg.revocation;
    if !rate.admit(s.rate_per_second) {
        let a = Answer::oauth(
            429,
            "rate_limited",
            "too many logout requests, try again later",
        );
        return Ok((a.with_retry_after(1), false));
    }
    let backchannel = endpoint == Endpoint::BackchannelLogout;
    if backchannel && !is_form(session) {
        let a = bad(
            "wrong_content_type",
            "the body must be application/x-www-form-urlencoded",
        );
        return Ok((a, false));
    }
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let too_large = || bad("body_too_large", "the request body is too large");
    if declared.is_some_and(|n| n > s.max_body_bytes as u64) {
        return Ok((too_large(), false));
    }
    let Some(body) = read_body(session, s.max_body_bytes).await? else {
        return Ok((too_large(), false));
    };
    let now = shared.keys.now();
    let answer = if backchannel {
        logout(shared, s, &tenant.id, &tenant.realm, &body, now).await
    } else {
        push_not_before(shared, s, &tenant.id, &tenant.realm, &body, now).await
    };
    Ok((answer, true))
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
        return bad(
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
        Err(e) => return logout_refused(e),
    };
    if let Err(a) = verified(shared, &jws).await {
        return a;
    }
    let r = &shared.revoker;
    match r.replay.remember(&jws.issuer, &t.jti, t.fresh_until, now) {
        Seen::Replayed => return logout_refused(LogoutError::Replayed),
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
    Answer::empty(200)
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
        return bad("malformed", "the body must be the signed not-before action");
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
        Ok(0) => Answer::empty(200),
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
            Answer::empty(200)
        }
        Err(e) => bad(e.code(), "the not-before push is not valid"),
    }
}
