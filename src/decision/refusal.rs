//! The refusal table: every typed failure the gateway answers itself, mapped once to its HTTP
//! answer. Pure: `http::respond` writes them.

use pingora::{ErrorSource, ErrorType};

use crate::authz::PathError;
use crate::http::request_target::HostError;
use crate::http::respond::{Answer, Challenge};
use crate::limits::SizeError;
use crate::tenant::{Tenant, TenantError};
use crate::verify::AuthError;

/// 414, 431 or 413 for a request over a size bound.
pub fn too_large(e: SizeError) -> Answer {
    let (status, code) = match e {
        SizeError::UriTooLong => (414, "uri_too_long"),
        SizeError::HeadersTooLarge => (431, "headers_too_large"),
        SizeError::BodyTooLarge => (413, "body_too_large"),
    };
    Answer::error(status, code, e.to_string())
}

/// 400 for a request that names no single host.
pub fn bad_host(e: HostError) -> Answer {
    Answer::error(400, e.code(), e.to_string())
}

/// A host that maps to no tenant (404) or is not a host name (400).
pub fn unknown_tenant(e: &TenantError) -> Answer {
    match e.code() {
        "unknown_host" => {
            Answer::error(404, "unknown_host", "no tenant is configured for this host")
        }
        code => Answer::error(400, code, "the Host header is not a valid host name"),
    }
}

pub fn tenant_suspended() -> Answer {
    Answer::error(403, "tenant_suspended", "this tenant is not active")
}

pub fn bad_method() -> Answer {
    Answer::error(
        400,
        "invalid_method",
        "the request method must be written in upper case",
    )
}

pub fn bad_path(e: &PathError) -> Answer {
    Answer::error(400, e.code(), "the request path is not acceptable")
}

pub fn route_denied() -> Answer {
    Answer::error(403, "route_denied", "no route allows this request")
}

/// 403 for a missing permission; `required` names it only when exposure is configured.
pub fn forbidden(required: Option<&str>) -> Answer {
    Answer::error(
        403,
        "forbidden",
        "the token does not grant the permission this route requires",
    )
    .with_required(required.map(str::to_owned))
}

/// The one mapping from token failures to HTTP answers (RFC 6750 challenge on 401).
///
/// A host-pattern realm the IdP does not know is answered exactly like a token signed by a
/// key the realm does not have: a distinct 404 would tell a prober which tenants exist.
pub fn unauthenticated(e: &AuthError, tenant: &Tenant) -> Answer {
    let e = match e {
        AuthError::UnknownTenant => &AuthError::UnknownKey,
        other => other,
    };
    match e.http_status() {
        401 => Answer::error(401, e.code(), e.description()).with_challenge(Challenge {
            realm: tenant.id.to_string(),
            error: e.bearer_error(),
            description: (!e.is_missing()).then(|| e.description().into()),
        }),
        503 => Answer::error(503, e.code(), e.description())
            .with_retry_after(e.retry_after_secs().unwrap_or(5).min(u64::from(u32::MAX)) as u32),
        status => Answer::error(status, e.code(), e.description()),
    }
}

/// A reserved path's refusal before its own step (head too large, no such host), in the shape
/// its callers read: the OAuth error of OIDC Back-Channel Logout §2.8. Every host failure reads
/// as an unknown host there.
pub fn at_endpoint(before: &Answer) -> Answer {
    match before.status {
        414 | 431 => Answer::oauth(400, "request_too_large", "the request head is too large"),
        _ => Answer::oauth(404, "unknown_host", "no tenant is configured for this host"),
    }
}

/// 405 from a reserved path for a method it does not answer.
pub fn endpoint_method(allow: &'static str) -> Answer {
    Answer::oauth(405, "method_not_allowed", "only POST is accepted here").with_allow(allow)
}

/// 503 to a connection over `downstream.max_connections` (before any request is read).
pub fn too_many_connections() -> Answer {
    Answer::error(
        503,
        "too_many_connections",
        "the gateway is at its connection limit; retry shortly",
    )
    .with_retry_after(1)
}

/// How a proxying failure is answered, and which counter it moves.
#[derive(Debug)]
pub enum UpstreamFailure {
    /// The client went away: nothing to answer.
    ClientGone,
    Answer(Answer, FailureCounter),
}

/// The metric a proxying failure counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCounter {
    /// `realmgate_rejections_total{code}`.
    Rejection,
    /// `realmgate_upstream_errors_total{kind}`.
    Upstream(&'static str),
    None,
}

/// Pingora's proxying errors as answers: JSON 4xx for what the client sent, 502/504 for the
/// upstream, 500 otherwise. Nothing internal leaks.
pub fn upstream_failure(source: &ErrorSource, kind: &ErrorType) -> UpstreamFailure {
    use ErrorType::*;
    let (answer, counter) = match (source, kind) {
        (_, HTTPStatus(413)) => (
            too_large(SizeError::BodyTooLarge),
            FailureCounter::Rejection,
        ),
        (_, HTTPStatus(code)) if *code >= 400 => (
            Answer::error(*code, "bad_request", "the request could not be processed"),
            FailureCounter::None,
        ),
        (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => {
            return UpstreamFailure::ClientGone
        }
        (ErrorSource::Downstream, _) => (
            Answer::error(400, "bad_request", "the request could not be read"),
            FailureCounter::None,
        ),
        (_, ConnectTimedout | ReadTimedout | WriteTimedout) => (
            Answer::error(
                504,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            FailureCounter::Upstream("timeout"),
        ),
        (ErrorSource::Upstream, ConnectRefused | ConnectError | ConnectNoRoute) => (
            Answer::error(502, "upstream_unavailable", "the upstream is not reachable"),
            FailureCounter::Upstream("connect"),
        ),
        (ErrorSource::Upstream, _) => (
            Answer::error(502, "upstream_error", "the upstream failed to answer"),
            FailureCounter::Upstream("other"),
        ),
        _ => (
            Answer::error(
                500,
                "internal_error",
                "the gateway failed to process the request",
            ),
            FailureCounter::None,
        ),
    };
    UpstreamFailure::Answer(answer, counter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{TenantSource, TenantStatus};

    fn tenant() -> Tenant {
        Tenant::new(
            "acme".into(),
            "tenant-acme".into(),
            TenantStatus::Active,
            None,
            TenantSource::Static { index: 0 },
        )
    }

    fn challenge(a: &Answer) -> Option<String> {
        a.challenge.as_deref().map(Challenge::header_value)
    }

    #[test]
    fn missing_token_challenge_has_no_error() {
        let r = unauthenticated(&AuthError::MissingToken, &tenant());
        assert_eq!((r.status, r.code), (401, "missing_token"));
        assert_eq!(challenge(&r).as_deref(), Some("Bearer realm=\"acme\""));
    }

    #[test]
    fn expired_token_challenge_says_invalid_token() {
        let r = unauthenticated(&AuthError::TokenExpired, &tenant());
        assert_eq!(r.status, 401);
        assert!(challenge(&r).is_some_and(|c| c.contains("error=\"invalid_token\"")));
    }

    #[test]
    fn unavailable_realm_is_503_with_retry_after() {
        let r = unauthenticated(
            &AuthError::RealmUnavailable {
                retry_after_secs: 7,
            },
            &tenant(),
        );
        assert_eq!((r.status, r.retry_after), (503, Some(7)));
        assert!(r.challenge.is_none());
    }

    #[test]
    fn an_unknown_realm_reads_like_an_unknown_key() {
        let t = tenant();
        assert_eq!(
            unauthenticated(&AuthError::UnknownTenant, &t),
            unauthenticated(&AuthError::UnknownKey, &t)
        );
    }

    #[test]
    fn required_is_exposed_only_when_asked() {
        assert_eq!(forbidden(None).required(), None);
        assert_eq!(
            forbidden(Some("users.read.own")).required(),
            Some("users.read.own")
        );
    }

    #[test]
    fn size_and_host_refusals_keep_their_codes() {
        let codes = [
            (too_large(SizeError::UriTooLong), 414, "uri_too_long"),
            (
                too_large(SizeError::HeadersTooLarge),
                431,
                "headers_too_large",
            ),
            (too_large(SizeError::BodyTooLarge), 413, "body_too_large"),
            (bad_host(HostError::Duplicate), 400, "duplicate_host"),
            (bad_host(HostError::Mismatch), 400, "host_mismatch"),
            (bad_host(HostError::Missing), 400, "missing_host"),
        ];
        for (a, status, code) in codes {
            assert_eq!((a.status, a.code), (status, code));
        }
        assert_eq!(
            too_large(SizeError::BodyTooLarge).message(),
            "the request body is larger than this route accepts"
        );
    }

    #[test]
    fn reserved_paths_answer_early_refusals_in_the_oauth_shape() {
        let big = at_endpoint(&too_large(SizeError::HeadersTooLarge));
        assert_eq!((big.status, big.code), (400, "request_too_large"));
        let v: serde_json::Value =
            serde_json::from_slice(&big.body_bytes(None)).unwrap_or_default();
        assert_eq!(v["error"], "invalid_request");
        for host in [
            bad_host(HostError::Missing),
            Answer::error(404, "unknown_host", "x"),
        ] {
            let a = at_endpoint(&host);
            assert_eq!((a.status, a.code), (404, "unknown_host"));
        }
        let m = endpoint_method("POST");
        assert_eq!((m.status, m.code), (405, "method_not_allowed"));
        assert_eq!(m.extra.as_ref().and_then(|x| x.allow), Some("POST"));
    }

    #[test]
    fn upstream_failures_map_once() {
        let answer = |s, k| match upstream_failure(&s, &k) {
            UpstreamFailure::Answer(a, c) => Some((a.status, a.code, c)),
            UpstreamFailure::ClientGone => None,
        };
        use ErrorSource::*;
        use ErrorType::*;
        assert_eq!(
            answer(Upstream, ConnectRefused),
            Some((
                502,
                "upstream_unavailable",
                FailureCounter::Upstream("connect")
            ))
        );
        assert_eq!(
            answer(Upstream, ReadTimedout),
            Some((504, "upstream_timeout", FailureCounter::Upstream("timeout")))
        );
        assert_eq!(
            answer(Internal, HTTPStatus(413)),
            Some((413, "body_too_large", FailureCounter::Rejection))
        );
        assert_eq!(answer(Downstream, ConnectionClosed), None);
        assert_eq!(
            answer(Downstream, InvalidHTTPHeader),
            Some((400, "bad_request", FailureCounter::None))
        );
        assert_eq!(
            answer(Internal, InternalError),
            Some((500, "internal_error", FailureCounter::None))
        );
    }
}
