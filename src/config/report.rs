//! What operators read about a config: the summary `realmgate check` prints, the warnings
//! about weakened protections, and URLs with their secrets masked.

use std::borrow::Cow;

use super::raw::{self, RawConfig};
use super::runtime::RuntimeConfig;

impl RuntimeConfig {
    /// One paragraph for `realmgate check` and the startup log.
    pub fn summary(&self) -> String {
        let raw = &self.raw;
        let mut realms: Vec<&str> = raw.tenants.iter().map(|t| t.realm.as_str()).collect();
        realms.sort_unstable();
        realms.dedup();
        let hosts: usize = raw.tenants.iter().map(|t| t.hosts.len()).sum();
        let tenant_routes: usize = raw.tenants.iter().map(|t| t.routes.len()).sum();
        let mut out = format!(
            "configuration OK{}\n  listen: proxy {} admin {}\n  tenants: {} ({} suspended/disabled/pending)\n  realms: {} static{}\n  hosts: {} exact, {} patterns\n  routes: {} global, {} tenant-specific; default policy {:?}\n  roles: {}; scopes: {}\n  upstream: {}\n  redis: {}",
            self.source.as_ref().map(|p| format!(" ({})", p.display())).unwrap_or_default(),
            self.proxy_addr,
            self.admin_addr,
            raw.tenants.len(),
            raw.tenants.iter().filter(|t| t.status != raw::StatusSection::Active).count(),
            realms.len(),
            if raw.host_patterns.is_empty() { String::new() } else { ", plus dynamic realms from host patterns".to_string() },
            hosts,
            raw.host_patterns.len(),
            raw.routes.len(),
            tenant_routes,
            raw.default_policy,
            raw.roles.len(),
            raw.scopes.join(" < "),
            self.default_upstream.name,
            raw.redis.as_ref().map(|r| mask_url(&r.url)).unwrap_or(Cow::Borrowed("not configured")),
        );
        for t in &raw.tenants {
            out.push_str(&format!(
                "\n    - {} (realm {}, {:?}): {}",
                t.id,
                t.realm,
                t.status,
                t.hosts.join(", ")
            ));
        }
        for p in &raw.host_patterns {
            out.push_str(&format!(
                "\n    - pattern {} -> realm {}",
                p.pattern.as_deref().or(p.regex.as_deref()).unwrap_or("?"),
                p.realm
            ));
        }
        out
    }

    /// Logs the warnings that the previously installed config did not already have, so a
    /// switch turned on by a reload is reported once, not again at every tenant sync.
    pub fn log_warnings(&self) {
        static LAST: parking_lot::Mutex<Vec<String>> = parking_lot::Mutex::new(Vec::new());
        let mut last = LAST.lock();
        for w in self.warnings.iter().filter(|w| !last.contains(w)) {
            tracing::warn!("{w}");
        }
        last.clone_from(&self.warnings);
    }
}

/// Valid settings that switch off a default protection: printed by `realmgate check` and
/// logged when a config with them is installed.
pub(super) fn load_warnings(raw: &RawConfig) -> Vec<String> {
    let mut w = Vec::new();
    if raw.paths.double_encoding == raw::DoubleEncodingSection::Allow {
        w.push(
            "paths.double_encoding: allow forwards %25 followed by two hex digits (%252F); safe \
             only if the backend and everything in front of it decode the path exactly once"
                .to_string(),
        );
    }
    if raw.keycloak.accept_azp_as_audience {
        w.push(
            "keycloak.accept_azp_as_audience: true accepts tokens whose azp, not aud, names this \
             service, so a token issued to the same client for another resource server is \
             accepted here (RFC 9068 section 4 requires aud); add Keycloak's Audience mapper \
             to the client scope and turn this off"
                .to_string(),
        );
    }
    if raw.headers.strip_overrides.is_empty() {
        w.push(
            "headers.strip_overrides is empty: method/path override and client-address headers \
             (X-HTTP-Method-Override, X-Original-URL, X-Real-IP, ...) reach the backend"
                .to_string(),
        );
    }
    w
}

/// A URL for messages and summaries: userinfo (`user:password@`) and the values of
/// password-like query parameters (`unix:///redis.sock?pass=...`) become `***`, because
/// `realmgate check` output and logs are read by more people than the config.
pub fn mask_url(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let rest_start = scheme_end + 3;
    let rest = &url[rest_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..rest_start]);
    match rest[..authority_len].rfind('@') {
        Some(at) => {
            out.push_str("***");
            out.push_str(&rest[at..authority_len]);
        }
        None => out.push_str(&rest[..authority_len]),
    }
    let tail = &rest[authority_len..];
    let (before_query, query) = match tail.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (tail, None),
    };
    out.push_str(before_query);
    if let Some(q) = query {
        out.push('?');
        for (i, pair) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _))
                    if ["pass", "password", "token", "secret"]
                        .contains(&k.to_ascii_lowercase().as_str()) =>
                {
                    out.push_str(k);
                    out.push_str("=***");
                }
                _ => out.push_str(pair),
            }
        }
    }
    if out == url {
        Cow::Borrowed(url)
    } else {
        Cow::Owned(out)
    }
}
