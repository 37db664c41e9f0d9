//! The fixture config the crate's own unit tests and the fuzz targets share.

/// Issuer base of the fixture configs (`{BASE}/realms/{realm}`); nothing listens there, so
/// keys are installed directly (`KeyStore::install_jwks`).
pub const BASE: &str = "http://127.0.0.1:9";

/// A fixture config: the head every fixture shares, then `sections` (tenants, host patterns,
/// roles, routes, ...). The head: listeners and an upstream nothing connects to, Keycloak at
/// [`BASE`] with audience `backend` and the permissions claim `perms`, and
/// `default_policy: deny`.
pub fn config_yaml(sections: &str) -> String {
    format!(
        r#"
listen: {{proxy: "127.0.0.1:1", admin: "127.0.0.1:2"}}
upstream: {{default: "127.0.0.1:3"}}
keycloak: {{base_url: "{BASE}", audiences: [backend], permissions_claim: perms}}
default_policy: deny
{sections}"#
    )
}
