//! The `tenants` and `host_patterns` sections: which host is which tenant and realm, and
//! where its requests go. (A tenant's routes and roles are the authz compiler's.)

use super::upstream::Upstreams;
use crate::config::raw::{HostPatternSection, StatusSection, TenantSection};
use crate::config::runtime::UpstreamTarget;
use crate::config_error::ConfigError;
use crate::tenant::{HostPatternDef, TenantDef, TenantStatus, TenantTable};

/// The compiled tenants and host patterns.
pub(super) struct Tenants {
    /// `None` when a tenant or pattern is invalid (the problems are reported).
    pub table: Option<TenantTable>,
    /// By config index; `None` = the default upstream.
    pub tenant_upstreams: Vec<Option<Box<UpstreamTarget>>>,
    pub pattern_upstreams: Vec<Option<Box<UpstreamTarget>>>,
    /// By config index: `false` = shadow mode.
    pub enforce: Vec<bool>,
    /// Realms of the static tenants, sorted, once each.
    pub static_realms: Vec<String>,
}

/// `max_dynamic_realms` is `keycloak.dynamic_realms.max`.
pub(super) fn compile(
    tenants: &[TenantSection],
    host_patterns: &[HostPatternSection],
    upstreams: &Upstreams,
    max_dynamic_realms: usize,
    e: &mut ConfigError,
) -> Tenants {
    let mut tenant_upstreams = Vec::with_capacity(tenants.len());
    let mut defs = Vec::with_capacity(tenants.len());
    let mut enforce = Vec::with_capacity(tenants.len());
    for (i, t) in tenants.iter().enumerate() {
        let TenantSection {
            id,
            realm,
            hosts,
            status,
            upstream,
            routes: _,
            roles: _,
            role_overrides: _,
            enforce: enforced,
        } = t;
        tenant_upstreams.push(resolve(upstreams, upstream.as_deref(), "tenants", i, e));
        defs.push(TenantDef {
            id: id.clone(),
            realm: realm.clone(),
            hosts: hosts.clone(),
            status: match status {
                StatusSection::Active => TenantStatus::Active,
                StatusSection::Suspended => TenantStatus::Suspended,
                StatusSection::Pending => TenantStatus::Pending,
                StatusSection::Disabled => TenantStatus::Disabled,
            },
            upstream: upstream.clone(),
        });
        enforce.push(*enforced);
    }
    let mut pattern_upstreams = Vec::with_capacity(host_patterns.len());
    let mut patterns = Vec::with_capacity(host_patterns.len());
    for (i, p) in host_patterns.iter().enumerate() {
        let HostPatternSection {
            pattern,
            regex,
            realm,
            upstream,
        } = p;
        pattern_upstreams.push(resolve(
            upstreams,
            upstream.as_deref(),
            "host_patterns",
            i,
            e,
        ));
        match (pattern, regex) {
            (Some(pattern), None) => patterns.push(HostPatternDef::Wildcard {
                pattern: pattern.clone(),
                realm: realm.clone(),
                upstream: upstream.clone(),
            }),
            (None, Some(regex)) => patterns.push(HostPatternDef::Regex {
                regex: regex.clone(),
                realm: realm.clone(),
                upstream: upstream.clone(),
            }),
            _ => e.push(
                format_args!("host_patterns[{i}]"),
                "set exactly one of pattern or regex",
            ),
        }
    }
    let table = if patterns.len() == host_patterns.len() {
        TenantTable::build(defs, patterns, max_dynamic_realms.max(1000))
            .map_err(|errs| e.extend(errs))
            .ok()
    } else {
        None
    };
    let mut static_realms: Vec<String> = tenants.iter().map(|t| t.realm.clone()).collect();
    static_realms.sort();
    static_realms.dedup();
    Tenants {
        table,
        tenant_upstreams,
        pattern_upstreams,
        enforce,
        static_realms,
    }
}

/// A tenant's or pattern's own upstream, resolved at load; `None` = the default one.
fn resolve(
    upstreams: &Upstreams,
    upstream: Option<&str>,
    list: &str,
    i: usize,
    e: &mut ConfigError,
) -> Option<Box<UpstreamTarget>> {
    upstreams
        .resolve(upstream?)
        .map_err(|m| e.push(format_args!("{list}[{i}].upstream"), m))
        .ok()
        .map(Box::new)
}
