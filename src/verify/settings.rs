//! Token policy: the operator's [`VerifySettings`] and the [`Policy`] compiled from them.

use http::HeaderName;
use serde_json::Value;
use tracing::error;

use super::extract::DEFAULT_MAX_TOKEN_BYTES;
use super::jose::BStr;

/// Token policy; compiled into the verifier, replaced on reload with
/// [`Verifier::update_settings`](super::Verifier::update_settings).
#[derive(Clone, Debug, PartialEq)]
pub struct VerifySettings {
    /// Accepted audiences: `aud` (string or array) must contain one (RFC 9068 §4). Required.
    pub audiences: Vec<String>,
    /// Also accept a token whose `azp` (not `aud`) names an audience: Keycloak without an
    /// audience mapper. Off by default: then any resource server that received a token from
    /// the same client could replay it here.
    pub accept_azp_as_audience: bool,
    /// Clock skew tolerance for `exp`, `nbf`, `iat` (default 30 s).
    pub leeway: std::time::Duration,
    /// Larger tokens are `token_too_large` (default 16 KiB).
    pub max_token_bytes: usize,
    /// Cookie that may carry the token when there is no Authorization header.
    pub cookie_name: Option<String>,
    /// Accept `?access_token=` (RFC 6750 §2.3; off by default: URLs end up in logs).
    pub allow_query_token: bool,
    /// Clients whose `resource_access.{client}.roles` become client roles (empty: audiences).
    pub client_role_clients: Vec<String>,
    /// Claim holding permissions (array of strings or space-separated string).
    pub permissions_claim: Option<String>,
    /// `(claim, header)` pairs forwarded as extra headers; dotted claims walk objects
    /// (`address.country`) unless a top-level claim has that exact name.
    pub claim_headers: Vec<(String, String)>,
    /// Cap on any value destined for a header (default 1024 bytes).
    pub max_header_value_len: usize,
    /// Verified-token cache entries (default 100 000; 0 disables the cache).
    pub token_cache_capacity: usize,
}

impl Default for VerifySettings {
    fn default() -> Self {
        Self {
            audiences: Vec::new(),
            accept_azp_as_audience: false,
            leeway: std::time::Duration::from_secs(30),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            cookie_name: None,
            allow_query_token: false,
            client_role_clients: Vec::new(),
            permissions_claim: None,
            claim_headers: Vec::new(),
            max_header_value_len: 1024,
            token_cache_capacity: 100_000,
        }
    }
}

impl VerifySettings {
    /// Every problem the config layer should refuse at load time.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errs = Vec::new();
        if self.audiences.is_empty() {
            errs.push("at least one audience is required".to_string());
        }
        if self.audiences.iter().any(|a| a.is_empty()) {
            errs.push("audiences must not be empty strings".into());
        }
        if self.max_token_bytes < 256 {
            errs.push("max_token_bytes must be at least 256".into());
        }
        if self.max_header_value_len < 16 {
            errs.push("max_header_value_len must be at least 16".into());
        }
        for (claim, header) in &self.claim_headers {
            if claim.is_empty() {
                errs.push(format!("claim header {header:?}: empty claim name"));
            }
            if HeaderName::from_bytes(header.as_bytes()).is_err() {
                errs.push(format!("claim header {header:?}: not a valid header name"));
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

pub(super) struct ClaimPath {
    full: Box<str>,
    segments: Box<[Box<str>]>,
}

impl ClaimPath {
    fn new(s: &str) -> Self {
        Self {
            full: s.into(),
            segments: s.split('.').map(Box::from).collect(),
        }
    }

    pub(super) fn resolve<'v>(&self, captured: &'v [(BStr<'_>, Value)]) -> Option<&'v Value> {
        if let Some((_, v)) = captured.iter().find(|(k, _)| *k.0 == *self.full) {
            return Some(v);
        }
        let (first, rest) = self.segments.split_first()?;
        if rest.is_empty() {
            return None;
        }
        let mut v = captured
            .iter()
            .find(|(k, _)| *k.0 == **first)
            .map(|(_, v)| v)?;
        for seg in rest {
            v = v.get(&**seg)?;
        }
        Some(v)
    }
}

/// Compiled [`VerifySettings`].
pub(super) struct Policy {
    pub(super) generation: u64,
    pub(super) settings: VerifySettings,
    pub(super) audiences: Box<[Box<str>]>,
    pub(super) accept_azp: bool,
    pub(super) clients: Box<[Box<str>]>,
    pub(super) leeway: u64,
    pub(super) max_token_bytes: usize,
    pub(super) max_value_len: usize,
    pub(super) permissions: Option<ClaimPath>,
    pub(super) extras: Box<[(ClaimPath, HeaderName)]>,
    /// Top-level claim names kept as JSON values for `permissions`/`extras`.
    pub(super) capture: Box<[Box<str>]>,
}

impl Policy {
    pub(super) fn compile(settings: VerifySettings, generation: u64) -> Self {
        let clients = if settings.client_role_clients.is_empty() {
            &settings.audiences
        } else {
            &settings.client_role_clients
        };
        let mut extras = Vec::new();
        for (claim, header) in &settings.claim_headers {
            match HeaderName::from_bytes(header.as_bytes()) {
                Ok(h) if !claim.is_empty() => extras.push((ClaimPath::new(claim), h)),
                _ => {
                    error!(claim = %claim, header = %header, "invalid claim header mapping ignored")
                }
            }
        }
        let permissions = settings.permissions_claim.as_deref().map(ClaimPath::new);
        let mut capture: Vec<Box<str>> = Vec::new();
        for p in permissions.iter().chain(extras.iter().map(|(p, _)| p)) {
            for name in [&p.full, &p.segments[0]] {
                if !capture.contains(name) {
                    capture.push(name.clone());
                }
            }
        }
        Self {
            generation,
            audiences: settings
                .audiences
                .iter()
                .map(|s| Box::from(s.as_str()))
                .collect(),
            accept_azp: settings.accept_azp_as_audience,
            clients: clients.iter().map(|s| Box::from(s.as_str())).collect(),
            leeway: settings.leeway.as_secs(),
            max_token_bytes: settings.max_token_bytes,
            max_value_len: settings.max_header_value_len.max(1),
            permissions,
            extras: extras.into_boxed_slice(),
            capture: capture.into_boxed_slice(),
            settings,
        }
    }

    pub(super) fn captures(&self, name: &str) -> bool {
        self.capture.iter().any(|c| **c == *name)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::verify::testkit::*;

    #[test]
    fn settings_validation() {
        assert!(vs().validate().is_ok());
        let errs = VerifySettings {
            claim_headers: vec![
                ("email".into(), "bad header".into()),
                ("".into(), "x-a".into()),
            ],
            max_token_bytes: 10,
            ..VerifySettings::default()
        }
        .validate()
        .unwrap_err();
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].contains("audience"));
    }
}
