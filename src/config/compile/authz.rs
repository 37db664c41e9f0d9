//! Who may do what: `scopes`, `roles`, `routes` (global and each tenant's), `default_policy`,
//! `paths` and `authz`, compiled into one permission catalog and its route tables.

use std::collections::BTreeMap;

use crate::authz::path::{DoubleEncoding, PathRules};
use crate::authz::{
    Catalog, DefaultPolicy, MatchMode, RoleMap, RoleSource, RouteSpec, RouteTable, Scopes,
    SlashPolicy,
};
use crate::config::raw::{
    AuthzSection, DefaultPolicySection, DoubleEncodingSection, MatchSection, PathsSection,
    RouteSection, SlashesSection, TenantSection,
};
use crate::config_error::ConfigError;

/// The schema's sections this compiler reads (tenants for their routes and roles only).
pub(super) struct Sections<'a> {
    pub scopes: &'a [String],
    pub roles: &'a BTreeMap<String, Vec<String>>,
    pub routes: &'a [RouteSection],
    pub tenants: &'a [TenantSection],
    pub default_policy: DefaultPolicySection,
    pub paths: &'a PathsSection,
    pub authz: &'a AuthzSection,
}

/// The compiled authorization rules.
pub(super) struct Authz {
    pub catalog: Catalog,
    pub roles: RoleMap,
    /// By tenant config index: its overlaid role map, if it has overlays.
    pub tenant_roles: Vec<Option<Box<RoleMap>>>,
    pub routes: RouteTable,
    /// By tenant config index: its own rules, if any.
    pub tenant_routes: Vec<Option<Box<RouteTable>>>,
    pub default_policy: DefaultPolicy,
    pub expose_required: bool,
    pub paths: PathRules,
}

/// `None` when a scope, role or route is invalid (the problems are reported).
pub(super) fn compile(s: Sections<'_>, e: &mut ConfigError) -> Option<Authz> {
    let PathsSection {
        slashes,
        case_sensitive,
        double_encoding,
    } = *s.paths;
    let AuthzSection { expose_required } = *s.authz;
    let scopes = match Scopes::new(s.scopes) {
        Ok(scopes) => scopes,
        Err(errs) => {
            e.extend(errs);
            return None;
        }
    };
    let mut catalog = Catalog::new(scopes);
    let roles = RoleMap::build(
        &mut catalog,
        RoleSource {
            path: "roles",
            roles: s.roles,
        },
    )
    .map_err(|errs| e.extend(errs))
    .ok();
    let routes = RouteTable::build(
        &mut catalog,
        s.routes.iter().map(route_spec),
        "routes",
        case_sensitive,
    )
    .map_err(|errs| e.extend(errs))
    .ok();
    let mut tenant_routes = Vec::with_capacity(s.tenants.len());
    let mut tenant_roles = Vec::with_capacity(s.tenants.len());
    for (i, t) in s.tenants.iter().enumerate() {
        tenant_routes.push(if t.routes.is_empty() {
            None
        } else {
            RouteTable::build(
                &mut catalog,
                t.routes.iter().map(route_spec),
                &format!("tenants[{i}].routes"),
                case_sensitive,
            )
            .map_err(|errs| e.extend(errs))
            .ok()
            .map(Box::new)
        });
        let overlay = match &roles {
            Some(global) if !(t.roles.is_empty() && t.role_overrides.is_empty()) => global
                .overlay(
                    &mut catalog,
                    RoleSource {
                        path: &format!("tenants[{i}].roles"),
                        roles: &t.roles,
                    },
                    RoleSource {
                        path: &format!("tenants[{i}].role_overrides"),
                        roles: &t.role_overrides,
                    },
                )
                .map_err(|errs| e.extend(errs))
                .ok(),
            _ => None,
        };
        tenant_roles.push(overlay.map(Box::new));
    }
    let mut roles = roles?;
    roles.seal(&catalog);
    for t in tenant_roles.iter_mut().flatten() {
        t.seal(&catalog);
    }
    Some(Authz {
        catalog,
        roles,
        tenant_roles,
        routes: routes?,
        tenant_routes,
        default_policy: match s.default_policy {
            DefaultPolicySection::Deny => DefaultPolicy::Deny,
            DefaultPolicySection::Authenticated => DefaultPolicy::Authenticated,
            DefaultPolicySection::Allow => DefaultPolicy::Allow,
        },
        expose_required,
        paths: PathRules {
            slashes: match slashes {
                SlashesSection::Merge => SlashPolicy::Merge,
                SlashesSection::Reject => SlashPolicy::Reject,
            },
            double_encoding: match double_encoding {
                DoubleEncodingSection::Reject => DoubleEncoding::Reject,
                DoubleEncodingSection::Allow => DoubleEncoding::Allow,
            },
        },
    })
}

fn route_spec(r: &RouteSection) -> RouteSpec<'_> {
    let RouteSection {
        path,
        methods,
        public,
        authenticated,
        permission,
        permissions,
        match_mode,
        enforce,
        allow_query_token,
        max_body_bytes,
    } = r;
    RouteSpec {
        path,
        methods: methods.as_deref(),
        public: *public,
        authenticated: *authenticated,
        permission: permission.as_deref(),
        permissions: permissions.as_deref(),
        match_mode: match match_mode {
            MatchSection::Any => MatchMode::Any,
            MatchSection::All => MatchMode::All,
        },
        enforce: *enforce,
        allow_query_token: *allow_query_token,
        max_body_bytes: *max_body_bytes,
    }
}
