//! The reserved paths: endpoints the gateway answers itself on every tenant host. The decision
//! recognises them (step 1b, after host -> tenant) and returns `Outcome::Endpoint`; the
//! modules under `proxy/endpoints/` only do their I/O. A new endpoint is a variant here, a line
//! in [`reserved`], and a module there.

use crate::config::RuntimeConfig;

/// An endpoint of the gateway's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// OIDC Back-Channel Logout (`revocation.backchannel_path`).
    BackchannelLogout,
    /// Keycloak's not-before push (`revocation.not_before_path`).
    NotBeforePush,
}

impl Endpoint {
    /// Stable name (explain, logs).
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::BackchannelLogout => "backchannel_logout",
            Endpoint::NotBeforePush => "not_before_push",
        }
    }

    /// The methods it answers (`Allow` on a 405).
    pub fn allow(self) -> &'static str {
        "POST"
    }

    pub fn accepts(self, method: &http::Method) -> bool {
        method == http::Method::POST
    }

    /// The `decision` field of access lines for requests to it (refusals included).
    pub fn log_label(self) -> &'static str {
        match self {
            Endpoint::BackchannelLogout | Endpoint::NotBeforePush => "revocation",
        }
    }

    /// What the endpoint expects, for `explain`.
    pub fn describe(self) -> &'static str {
        match self {
            Endpoint::BackchannelLogout => {
                "OIDC back-channel logout: POST application/x-www-form-urlencoded logout_token=<JWS signed by the host's realm>"
            }
            Endpoint::NotBeforePush => {
                "Keycloak not-before push: POST the signed PUSH_NOT_BEFORE action of the host's realm"
            }
        }
    }
}

/// The endpoint a raw request target names (an exact match on the path, query ignored).
/// One length compare per reserved path on every request.
pub fn reserved(cfg: &RuntimeConfig, raw_target: &[u8]) -> Option<Endpoint> {
    let target = crate::http::request_target::origin_form(raw_target);
    let path = match memchr::memchr(b'?', target) {
        Some(i) => &target[..i],
        None => target,
    };
    let r = &cfg.revocation;
    if !r.enabled {
        return None;
    }
    if path == r.backchannel_path.as_bytes() {
        Some(Endpoint::BackchannelLogout)
    } else if path == r.not_before_path.as_bytes() {
        Some(Endpoint::NotBeforePush)
    } else {
        None
    }
}
