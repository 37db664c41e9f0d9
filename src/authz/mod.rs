//! Authorisation: `resource.action.scope` permissions, roles, route rules, and the request-path
//! canonicalisation they depend on. Pure code: no I/O.
//!
//! Lifecycle, per configuration load:
//! 1. [`Scopes::new`] from `scopes:`, then one mutable [`Catalog`].
//! 2. [`RoleMap::build`] for global `roles:`, [`RoleMap::overlay`] per tenant;
//!    [`RouteTable::build`] for global `routes:` and each tenant's `routes:`. Each returns every
//!    problem as a [`BuildError`] naming its field.
//! 3. Freeze: share the catalog, role maps and route tables read-only in one snapshot (ids are
//!    only meaningful with the catalog that issued them, see [`Catalog::epoch`]).
//!
//! Per request: [`canonicalize`] the raw request-target (400 `invalid_path` on error), pick the
//! rule with [`match_layered`] (tenant table first), apply [`DefaultPolicy`] when none matches,
//! and for [`Access::Permission`] check [`Requirement::authorize`] against the user's
//! [`PermissionSet`] (from [`RoleMap::compile`], cached by the caller). Forward
//! [`CanonicalPath::request_target`], the same path that was authorised.

pub mod path;
pub mod permission;
pub mod roles;
pub mod routes;

pub use path::{canonicalize, CanonicalPath, PathError, PathOptions, SlashPolicy};
pub use permission::{
    parse_permission, ActionId, Catalog, Grant, PermissionError, PermissionSet,
    PermissionSetBuilder, RequiredPermission, ResourceId, ScopeId, Scopes,
};
pub use roles::{RejectedGrant, RoleMap, RoleSource};
pub use routes::{
    match_layered, Access, DefaultPolicy, MatchMode, MethodSet, Requirement, RouteRule, RouteSpec,
    RouteTable,
};

pub use crate::config_error::BuildError;
