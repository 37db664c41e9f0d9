//! The refusals the decision can end in, as HTTP answers. Pure: `respond.rs` writes them.

use crate::authz::PathError;
use crate::http::respond::{Challenge, Rejection};
use crate::tenant::{Tenant, TenantError};
use crate::verify::AuthError;

/// A host that maps to no tenant (404) or is not a host name (400).
pub fn unknown_tenant(e: &TenantError) -> Rejection {
    match e.code() {
        "unknown_host" => {
            Rejection::new(404, "unknown_host", "no tenant is configured for this host")
        }
        code => Rejection::new(400, code, "the Host header is not a valid host name"),
    }
}

pub fn tenant_suspended() -> Rejection {
    Rejection::new(403, "tenant_suspended", "this tenant is not active")
}

pub fn bad_method() -> Rejection {
    Rejection::new(
        400,
        "invalid_method",
        "the request method must be written in upper case",
    )
}

pub fn bad_path(e: &PathError) -> Rejection {
    Rejection::new(400, e.code(), "the request path is not acceptable")
}

pub fn route_denied() -> Rejection {
    Rejection::new(403, "route_denied", "no route allows this request")
}

/// 403 for a missing permission; `required` names it only when exposure is configured.
pub fn forbidden(required: Option<&str>) -> Rejection {
    Rejection::new(
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
pub fn unauthenticated(e: &AuthError, tenant: &Tenant) -> Rejection {
    let e = match e {
        AuthError::UnknownTenant => &AuthError::UnknownKey,
        other => other,
    };
    match e.http_status() {
        401 => Rejection::new(401, e.code(), e.description()).with_challenge(Challenge {
            realm: tenant.id.to_string(),
            error: e.bearer_error(),
            description: (!e.is_missing()).then(|| e.description().into()),
        }),
        503 => Rejection::new(503, e.code(), e.description())
            .with_retry_after(e.retry_after_secs().unwrap_or(5).min(u64::from(u32::MAX)) as u32),
        status => Rejection::new(status, e.code(), e.description()),
    }
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

    #[test]
    fn missing_token_challenge_has_no_error() {
        let r = unauthenticated(&AuthError::MissingToken, &tenant());
        assert_eq!((r.status, r.code), (401, "missing_token"));
        let c = r.challenge.as_deref().map(Challenge::header_value);
        assert_eq!(c.as_deref(), Some("Bearer realm=\"acme\""));
    }

    #[test]
    fn expired_token_challenge_says_invalid_token() {
        let r = unauthenticated(&AuthError::TokenExpired, &tenant());
        assert_eq!(r.status, 401);
        let c = r.challenge.as_deref().map(Challenge::header_value);
        assert!(c.is_some_and(|c| c.contains("error=\"invalid_token\"")));
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
        assert_eq!(forbidden(None).required, None);
        assert_eq!(
            forbidden(Some("users.read.own")).required.as_deref(),
            Some("users.read.own")
        );
    }
}
