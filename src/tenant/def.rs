//! What the operator writes: tenant and host-pattern definitions, and the rules each one must
//! pass on its own (ids, realm names, realm templates, wildcard suffixes, host regexes). The
//! rules that relate definitions to each other are the table build's (`build.rs`).

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use super::host_name::{is_dns_label, normalize_config_host, MAX_LABEL_LEN};
use super::TenantStatus;

/// Longest realm name accepted; realms end up in URL paths and metric labels.
pub const MAX_REALM_LEN: usize = 255;
/// The placeholder in wildcard patterns and realm templates.
pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// A statically configured tenant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantDef {
    /// `[a-z0-9][a-z0-9_-]{0,62}`.
    pub id: String,
    pub realm: String,
    /// Exact hosts (subdomains and custom domains); may be empty for a tenant that is only
    /// reached through a pattern that derives this tenant's realm.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Defaults to `active`: listing a tenant is the intent to serve it.
    #[serde(default)]
    pub status: TenantStatus,
    #[serde(default)]
    pub upstream: Option<String>,
}

/// A host pattern yielding dynamic tenants. `realm` is a template containing `{tenant}`.
/// In configuration it is an object with exactly one of `pattern` or `regex`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawHostPatternDef")]
pub enum HostPatternDef {
    /// `{tenant}.suffix`: `{tenant}` is exactly the first label.
    Wildcard {
        pattern: String,
        realm: String,
        upstream: Option<String>,
    },
    /// Anchored regex with a named group `tenant` over the normalised (lowercase) host.
    Regex {
        regex: String,
        realm: String,
        upstream: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostPatternDef {
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    regex: Option<String>,
    realm: String,
    #[serde(default)]
    upstream: Option<String>,
}

impl TryFrom<RawHostPatternDef> for HostPatternDef {
    type Error = String;

    fn try_from(raw: RawHostPatternDef) -> Result<Self, Self::Error> {
        match (raw.pattern, raw.regex) {
            (Some(pattern), None) => Ok(HostPatternDef::Wildcard {
                pattern,
                realm: raw.realm,
                upstream: raw.upstream,
            }),
            (None, Some(regex)) => Ok(HostPatternDef::Regex {
                regex,
                realm: raw.realm,
                upstream: raw.upstream,
            }),
            _ => Err("a host pattern needs exactly one of `pattern` or `regex`".to_owned()),
        }
    }
}

/// `[a-z0-9][a-z0-9_-]{0,62}`: safe in headers, Redis keys, SQL settings and metric labels.
pub(super) fn validate_tenant_id(id: &str) -> Result<(), String> {
    let b = id.as_bytes();
    let first_ok = b
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = b
        .iter()
        .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
    if first_ok && rest_ok && b.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "{id:?} is not a valid tenant id (expected [a-z0-9][a-z0-9_-]{{0,62}})"
        ))
    }
}

/// Realm names go into Keycloak URL paths (`/realms/{realm}/...`) and metric labels, so on top
/// of the basic rules (non-empty, <= 255, no `/`, whitespace or control characters) the URL
/// delimiters `? # % \` and the dot segments `.`/`..` are refused.
fn realm_problem(realm: &str) -> Option<&'static str> {
    if realm.is_empty() {
        return Some("is empty");
    }
    if realm.len() > MAX_REALM_LEN {
        return Some("is longer than 255 bytes");
    }
    if realm == "." || realm == ".." {
        return Some("is a dot segment");
    }
    if realm
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#' | '%' | '\\'))
    {
        return Some("contains whitespace, a control character or one of / ? # % \\");
    }
    None
}

pub(super) fn validate_realm(realm: &str) -> Result<(), String> {
    match realm_problem(realm) {
        None => Ok(()),
        Some(p) => Err(format!("{realm:?} is not a valid realm name: it {p}")),
    }
}

pub(super) fn validate_realm_template(template: &str) -> Result<(), String> {
    let placeholders = template.matches(TENANT_PLACEHOLDER).count();
    if placeholders == 0 {
        return Err(format!(
            "realm template {template:?} must contain {TENANT_PLACEHOLDER}, e.g. \"tenant-{TENANT_PLACEHOLDER}\""
        ));
    }
    let sample = template.replace(TENANT_PLACEHOLDER, "x");
    if let Some(p) = realm_problem(&sample) {
        return Err(format!("realm template {template:?} is not valid: it {p}"));
    }
    let longest = template.len() + placeholders * (MAX_LABEL_LEN - TENANT_PLACEHOLDER.len());
    if longest > MAX_REALM_LEN {
        return Err(format!(
            "realm template {template:?} can expand to {longest} bytes with a 63-character tenant (max {MAX_REALM_LEN})"
        ));
    }
    Ok(())
}

pub(super) fn validate_upstream(upstream: Option<&str>) -> Result<(), String> {
    match upstream {
        Some(u) if u.trim().is_empty() => Err("upstream must not be empty".to_owned()),
        _ => Ok(()),
    }
}

/// Parses `{tenant}.suffix` into the normalised suffix.
pub(super) fn parse_wildcard(pattern: &str) -> Result<String, String> {
    let count = pattern.matches(TENANT_PLACEHOLDER).count();
    if count == 0 {
        return Err(format!(
            "{pattern:?} does not contain {TENANT_PLACEHOLDER} (expected \"{TENANT_PLACEHOLDER}.example.com\")"
        ));
    }
    if count > 1 {
        return Err(format!(
            "{pattern:?} contains {TENANT_PLACEHOLDER} more than once; it may only be the whole first label"
        ));
    }
    let Some(suffix) = pattern.strip_prefix("{tenant}.") else {
        return Err(format!(
            "{pattern:?}: {TENANT_PLACEHOLDER} must be the whole first label, followed by a domain (e.g. \"{TENANT_PLACEHOLDER}.example.com\")"
        ));
    };
    let suffix = normalize_config_host(suffix)
        .map_err(|e| format!("{pattern:?}: suffix {suffix:?} is not a valid host name ({e})"))?;
    if suffix.starts_with('[')
        || suffix
            .rsplit('.')
            .next()
            .is_some_and(|l| l.bytes().all(|c| c.is_ascii_digit()))
    {
        return Err(format!(
            "{pattern:?}: suffix must be a domain name, not an IP address"
        ));
    }
    Ok(suffix)
}

/// Compiles an anchored host regex and finds its `tenant` group.
pub(super) fn compile_regex(source: &str) -> Result<(Regex, usize), String> {
    let anchored = format!(r"\A(?:{source})\z");
    let re = RegexBuilder::new(&anchored)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| format!("{source:?} is not a valid regex: {e}"))?;
    let group = re
        .capture_names()
        .position(|n| n == Some("tenant"))
        .ok_or_else(|| {
            format!("{source:?} has no named group `tenant`, e.g. (?P<tenant>[a-z0-9-]+)")
        })?;
    Ok((re, group))
}

/// The label a realm template turns into `realm`, if one exists: the tenant id a host
/// pattern derives for that realm.
pub(super) fn derived_label<'r>(template: &str, realm: &'r str) -> Option<&'r str> {
    let k = template.matches(TENANT_PLACEHOLDER).count();
    if k == 0 {
        return None;
    }
    let fixed = template.len() - k * TENANT_PLACEHOLDER.len();
    let extra = realm.len().checked_sub(fixed)?;
    if extra == 0 || extra % k != 0 {
        return None;
    }
    let start = template.find(TENANT_PLACEHOLDER)?;
    let label = realm.get(start..start + extra / k)?;
    (is_dns_label(label.as_bytes()) && template.replace(TENANT_PLACEHOLDER, label) == realm)
        .then_some(label)
}
