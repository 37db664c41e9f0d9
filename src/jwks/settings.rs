//! What the key store is configured with, and what each realm's key source resolves to.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::alg::{Alg, AlgSet};

/// Per-realm settings for IdPs that are not Keycloak-shaped, or for air-gapped setups.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RealmOverride {
    /// Expected `iss` (default `{base_url}/realms/{realm}`); discovery runs against it.
    pub issuer: Option<String>,
    /// JWKS URL; when set, discovery is skipped.
    pub jwks_uri: Option<String>,
    /// A JWKS document on disk, read at start and on every refresh (takes precedence over
    /// `jwks_uri`; the config layer should refuse both being set).
    pub jwks_file: Option<PathBuf>,
    /// Allowed algorithms for this realm (default: [`JwksSettings::algorithms`]).
    pub algorithms: Option<Vec<Alg>>,
    /// Accept tokens without a `kid` (then the realm's only key is tried). Off by default:
    /// Keycloak always sends one, and trying keys for kid-less tokens costs CPU per key.
    pub allow_missing_kid: bool,
    /// Accept tokens with neither a `typ` claim (`Bearer`) nor a JOSE `typ` of `at+jwt`
    /// (RFC 9068). Off by default: explicit typing keeps ID and refresh tokens out.
    pub allow_missing_typ: bool,
}

/// Everything the key store and its refresher need; cheap to clone, compared on reload.
#[derive(Clone, Debug, PartialEq)]
pub struct JwksSettings {
    /// Keycloak base URL, e.g. `https://kc.example.com` (a trailing `/` is ignored).
    pub base_url: String,
    /// Default allowed algorithms (default `[RS256]`).
    pub algorithms: Vec<Alg>,
    /// Refresh period of a loaded realm (default 5 min, jittered by ±10 %).
    pub refresh: Duration,
    /// Minimum spacing of request-triggered fetches per realm (default 10 s).
    pub min_refetch_interval: Duration,
    /// How long last-good keys stay usable while the IdP fails (default 24 h).
    pub max_stale: Duration,
    /// TCP+TLS connect timeout (default 5 s).
    pub connect_timeout: Duration,
    /// Whole-request timeout, body included (default 5 s).
    pub fetch_timeout: Duration,
    /// Largest discovery/JWKS document accepted (default 1 MiB).
    pub max_document_bytes: usize,
    /// How long a request waits for an unknown-kid refetch (default 2 s).
    pub refetch_wait: Duration,
    /// How long a request waits for the first load of a realm (default 3 s).
    pub load_wait: Duration,
    /// How long an IdP 404 for a dynamic realm is remembered (default 60 s).
    pub negative_ttl: Duration,
    /// Dynamic realms held at once; least recently used is evicted (default 1000).
    pub max_dynamic_realms: usize,
    /// Never-seen dynamic realms that may be fetched per second, process-wide (default 20,
    /// burst 2x). This, not the attacker's request rate, bounds what random subdomains cost
    /// the IdP.
    pub new_realms_per_second: u32,
    /// Request-triggered repeat fetches (unknown `kid`, stale keys) of held realms per second,
    /// process-wide (default 20, burst 2x). Per-realm spacing (`min_refetch_interval`) alone
    /// would let plausible forged tokens refetch every one of 10 000 realms each interval.
    pub refetches_per_second: u32,
    /// Shared: the config and the key store hold the same map (10 000 realms, ~2 MiB).
    pub realm_overrides: Arc<HashMap<String, RealmOverride>>,
}

impl Default for JwksSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            algorithms: vec![Alg::RS256],
            refresh: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(10),
            max_stale: Duration::from_secs(24 * 3600),
            connect_timeout: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(5),
            max_document_bytes: 1 << 20,
            refetch_wait: Duration::from_secs(2),
            load_wait: Duration::from_secs(3),
            negative_ttl: Duration::from_secs(60),
            max_dynamic_realms: 1000,
            new_realms_per_second: 20,
            refetches_per_second: 20,
            realm_overrides: Arc::default(),
        }
    }
}

/// Realm names are put in URL paths and metric labels: only `[A-Za-z0-9._-]`, 1..=255 bytes,
/// not `.`/`..`. Anything else is an unknown tenant, never a fetch.
pub fn valid_realm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

// ---------------------------------------------------------------------------------------------
// A realm's key source, as its settings resolve it
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Source {
    Discovery(String),
    JwksUri(String),
    File(PathBuf),
}

/// What identifies a realm's key source; a reload that changes it replaces the realm.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RealmSpec {
    pub(super) issuer: Arc<str>,
    pub(super) source: Source,
    pub(super) algs: AlgSet,
    pub(super) allow_missing_kid: bool,
    pub(super) allow_missing_typ: bool,
}

fn default_issuer(base_url: &str, realm: &str) -> String {
    format!("{}/realms/{}", base_url.trim_end_matches('/'), realm)
}

/// What a token of a realm must match before any key is looked at: its issuer and token
/// policy. Derived without the key source, so the verifier can check a token's claims for a
/// realm that is not held yet (before it costs an admission or a fetch).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Expectation {
    pub(crate) issuer: Arc<str>,
    pub(crate) algs: AlgSet,
    pub(crate) allow_missing_kid: bool,
    pub(crate) allow_missing_typ: bool,
}

impl Expectation {
    pub(crate) fn allows(&self, alg: Alg) -> bool {
        self.algs.contains(alg)
    }
}

pub(super) fn expectation_for(settings: &JwksSettings, realm: &str) -> Expectation {
    let ov = settings.realm_overrides.get(realm);
    let issuer = ov
        .and_then(|o| o.issuer.clone())
        .unwrap_or_else(|| default_issuer(&settings.base_url, realm));
    Expectation {
        issuer: issuer.into(),
        algs: AlgSet::from_slice(
            ov.and_then(|o| o.algorithms.as_deref())
                .unwrap_or(&settings.algorithms),
        ),
        allow_missing_kid: ov.is_some_and(|o| o.allow_missing_kid),
        allow_missing_typ: ov.is_some_and(|o| o.allow_missing_typ),
    }
}

pub(super) fn spec_for(settings: &JwksSettings, realm: &str) -> RealmSpec {
    let e = expectation_for(settings, realm);
    let source = match settings.realm_overrides.get(realm) {
        Some(RealmOverride {
            jwks_file: Some(path),
            ..
        }) => Source::File(path.clone()),
        Some(RealmOverride {
            jwks_uri: Some(uri),
            ..
        }) => Source::JwksUri(uri.clone()),
        _ => Source::Discovery(format!(
            "{}/.well-known/openid-configuration",
            e.issuer.trim_end_matches('/')
        )),
    };
    RealmSpec {
        issuer: e.issuer,
        source,
        algs: e.algs,
        allow_missing_kid: e.allow_missing_kid,
        allow_missing_typ: e.allow_missing_typ,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::key_store;

    #[test]
    fn realm_names() {
        for (name, ok) in [
            ("tenant-acme", true),
            ("qa-default", true),
            ("a.b_c-9", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("a%2fb", false),
            ("a b", false),
            ("a?b", false),
            ("ünï", false),
        ] {
            assert_eq!(valid_realm_name(name), ok, "{name:?}");
        }
        assert!(!valid_realm_name(&"a".repeat(256)));
    }

    #[test]
    fn spec_and_issuer() {
        let mut s = JwksSettings {
            base_url: "https://kc.example.com/".into(),
            ..JwksSettings::default()
        };
        let spec = spec_for(&s, "tenant-acme");
        assert_eq!(&*spec.issuer, "https://kc.example.com/realms/tenant-acme");
        assert_eq!(
            spec.source,
            Source::Discovery(
                "https://kc.example.com/realms/tenant-acme/.well-known/openid-configuration".into()
            )
        );
        Arc::make_mut(&mut s.realm_overrides).insert(
            "azure".into(),
            RealmOverride {
                issuer: Some("https://login.example.com/tid/v2.0".into()),
                jwks_uri: Some("https://login.example.com/keys".into()),
                algorithms: Some(vec![Alg::RS256, Alg::PS256]),
                ..RealmOverride::default()
            },
        );
        let az = spec_for(&s, "azure");
        assert_eq!(&*az.issuer, "https://login.example.com/tid/v2.0");
        assert_eq!(
            az.source,
            Source::JwksUri("https://login.example.com/keys".into())
        );
        assert!(az.algs.contains(Alg::PS256));
        let (store, _r) = key_store(s, vec![]);
        assert_eq!(
            &*store.issuer_for("azure"),
            "https://login.example.com/tid/v2.0"
        );
        assert_eq!(&*store.issuer_for("x"), "https://kc.example.com/realms/x");
    }
}
