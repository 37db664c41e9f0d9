//! The caller's effective permission set: config roles (tenant overlay included), the token's
//! permission claim and Redis grants, compiled once and cached in the [`GrantStore`].

use std::sync::Arc;

use crate::authz::PermissionSet;
use crate::config::RuntimeConfig;
use crate::grants::{GrantKey, GrantSource, GrantStore};
use crate::metrics::metrics;
use crate::tenant::Tenant;
use crate::verify::Identity;

use super::trace::{Step, Trace};

/// The user part of the permission-cache key. The set depends on the user only through Redis
/// grants; without them, users with the same roles and permission claim share one cached set
/// (empty user). The claim itself is always part of the key ([`GrantKey::claim`]).
pub fn grant_key_sub<'a>(grants: &GrantStore<PermissionSet>, identity: &'a Identity) -> &'a str {
    if grants.has_user_grants() {
        identity.sub()
    } else {
        ""
    }
}

/// Everything the caller's set depends on: tenant, user (when Redis holds user grants), roles,
/// the token's permission claim, and the catalog and role map it is compiled against (as one
/// content hash: [`crate::authz::RoleMap::content_epoch`]).
pub fn grant_key<'a>(
    grants: &GrantStore<PermissionSet>,
    cfg: &RuntimeConfig,
    tenant: &'a Tenant,
    identity: &'a Identity,
) -> GrantKey<'a> {
    GrantKey {
        tenant: &tenant.id,
        sub: grant_key_sub(grants, identity),
        roles: identity.all_roles(),
        epoch: cfg.roles_for(tenant).content_epoch(),
        claim: &identity.permissions,
    }
}

/// The effective set for `identity` in `tenant`; a cache hit never awaits.
pub async fn permission_set<T: Trace>(
    grants: &GrantStore<PermissionSet>,
    cfg: &RuntimeConfig,
    tenant: &Tenant,
    identity: &Identity,
    trace: &mut T,
) -> Arc<PermissionSet> {
    let roles = cfg.roles_for(tenant);
    grants
        .effective(&grant_key(grants, cfg, tenant, identity), |source| {
            trace.step(Step::Grants { source });
            let redis: Vec<&str> = match source {
                GrantSource::Redis(raw) => raw
                    .user
                    .iter()
                    .chain(raw.roles.iter().flat_map(|(_, g)| g.iter()))
                    .map(String::as_str)
                    .collect(),
                GrantSource::Unavailable | GrantSource::Disabled => Vec::new(),
            };
            let (set, rejected) = roles.compile(
                &cfg.catalog,
                identity.all_roles().iter().map(|r| &**r),
                identity.permissions.iter().map(|p| &**p).chain(redis),
            );
            for r in &rejected {
                metrics()
                    .invalid_grants_total
                    .with_label_values(&["redis_or_claim"])
                    .inc();
                tracing::warn!(tenant = &*tenant.id, grant = %r.grant, error = %r.error, "ignored an invalid grant");
            }
            set
        })
        .await
}
