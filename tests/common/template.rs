//! The gateway config every integration test starts from, so a test writes only the sections
//! it is about.

use std::path::Path;

/// A config template for [`Gateway::start`](super::Gateway::start): both listeners and the
/// upstream as the placeholders [`render`](super::render) fills, a server that stops at once
/// and never watches its file, Keycloak at one base URL with the `qa-platform-backend`
/// audience, no access log; then the test's own sections.
pub struct TestConfig {
    threads: u8,
    listen: String,
    upstream: String,
    keycloak: Vec<String>,
}

impl TestConfig {
    /// Keycloak at `base` (a mock's [`base`](super::idp::MockKeycloak::base), or an address
    /// nothing listens on).
    pub fn new(base: &str) -> Self {
        Self {
            threads: 2,
            listen: String::new(),
            upstream: String::new(),
            keycloak: vec![
                format!("base_url: \"{base}\""),
                "audiences: [qa-platform-backend]".into(),
            ],
        }
    }

    /// Proxy worker threads (default 2).
    pub fn threads(mut self, n: u8) -> Self {
        self.threads = n;
        self
    }

    /// Terminate TLS on the proxy port with these PEM files.
    pub fn tls(mut self, cert: &Path, key: &Path) -> Self {
        self.listen = format!(
            ", tls: {{cert: \"{}\", key: \"{}\"}}",
            cert.display(),
            key.display()
        );
        self
    }

    /// More `upstream:` settings, flow style: `read_timeout: 5s`.
    pub fn upstream(mut self, settings: &str) -> Self {
        self.upstream.push_str(", ");
        self.upstream.push_str(settings);
        self
    }

    /// More `keycloak:` settings, one `key: value` a line (lines after the first indented by
    /// two spaces); an empty string adds nothing.
    pub fn keycloak(mut self, settings: &str) -> Self {
        if !settings.is_empty() {
            self.keycloak.push(settings.to_owned());
        }
        self
    }

    /// The template: the shared sections, then `sections` (tenants, routes, redis, ...).
    pub fn with(&self, sections: &str) -> String {
        format!(
            r#"
listen: {{proxy: "{{PROXY}}", admin: "{{ADMIN}}"{listen}}}
server: {{threads: {threads}, grace_period: 0s, graceful_shutdown_timeout: 1s, watch_config: false}}
upstream: {{default: "{{UPSTREAM}}"{upstream}}}
keycloak:
  {keycloak}
logging: {{access_log: false}}
{sections}"#,
            listen = self.listen,
            threads = self.threads,
            upstream = self.upstream,
            keycloak = self.keycloak.join("\n  "),
        )
    }
}
