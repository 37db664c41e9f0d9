//! Role -> grants mapping, with per-tenant overlays, and the compile step that turns a user's
//! roles and direct grants into a [`PermissionSet`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::permission::{Catalog, Grant, PermissionError, PermissionSet, PermissionSetBuilder};
use super::BuildError;

/// One config map of `role -> [grant, ...]` and the field path it lives at (`roles`,
/// `tenants[2].roles`, `tenants[2].role_overrides`), used to name errors.
#[derive(Debug, Clone, Copy)]
pub struct RoleSource<'a> {
    pub path: &'a str,
    pub roles: &'a BTreeMap<String, Vec<String>>,
}

/// A grant string from a token or Redis that could not be used. The caller logs and counts
/// these; they never fail the request on their own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedGrant {
    pub grant: String,
    pub error: PermissionError,
}

/// Role name -> compiled grants. Each role's list is an `Arc` so tenant overlays share the
/// unchanged global lists.
#[derive(Debug, Clone, Default)]
pub struct RoleMap {
    roles: HashMap<Box<str>, Arc<[Grant]>, ahash::RandomState>,
    /// Epoch of the catalog whose ids the grants use (0 for the empty default map).
    epoch: u64,
    /// Hash of the finished catalog's fingerprint and this map's contents ([`RoleMap::seal`]):
    /// what a set compiled from this map depends on besides the caller's own inputs.
    content_epoch: u64,
}

/// `roles.viewer` for plain names, `roles."odd.name"` when the name would make the path
/// ambiguous.
fn role_path(prefix: &str, role: &str) -> String {
    let plain = !role.is_empty()
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        format!("{prefix}.{role}")
    } else {
        format!("{prefix}.{role:?}")
    }
}

fn compile_source(
    catalog: &mut Catalog,
    src: RoleSource<'_>,
    errors: &mut Vec<BuildError>,
) -> Vec<(Box<str>, Vec<Grant>)> {
    let mut out = Vec::with_capacity(src.roles.len());
    for (role, grants) in src.roles {
        if role.is_empty() {
            errors.push(BuildError::new(
                format!("{}.\"\"", src.path),
                "role name must not be empty",
            ));
            continue;
        }
        let path = role_path(src.path, role);
        let mut compiled = Vec::with_capacity(grants.len());
        for (i, g) in grants.iter().enumerate() {
            match catalog.intern_grant(g) {
                Ok(g) => compiled.push(g),
                Err(e) => errors.push(BuildError::new(format!("{path}[{i}]"), e.to_string())),
            }
        }
        out.push((role.as_str().into(), compiled));
    }
    out
}

impl RoleMap {
    /// The global role map. All invalid grants are reported, each with its field path.
    pub fn build(catalog: &mut Catalog, source: RoleSource<'_>) -> Result<Self, Vec<BuildError>> {
        let mut errors = Vec::new();
        let compiled = compile_source(catalog, source, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(RoleMap {
            roles: compiled
                .into_iter()
                .map(|(name, grants)| (name, Arc::from(grants)))
                .collect(),
            epoch: catalog.epoch(),
            content_epoch: 0,
        })
    }

    /// A tenant's effective map: `overrides` replace the global list of a role, then
    /// `additions` are added to it (a role may appear in both: override first, then add).
    /// Roles unknown globally may be introduced by either.
    pub fn overlay(
        &self,
        catalog: &mut Catalog,
        additions: RoleSource<'_>,
        overrides: RoleSource<'_>,
    ) -> Result<Self, Vec<BuildError>> {
        debug_assert!(self.same_catalog(catalog), "overlay with a foreign catalog");
        let mut errors = Vec::new();
        let over = compile_source(catalog, overrides, &mut errors);
        let add = compile_source(catalog, additions, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut roles = self.roles.clone();
        for (name, grants) in over {
            roles.insert(name, Arc::from(grants));
        }
        for (name, grants) in add {
            let merged: Vec<Grant> = roles
                .get(&name)
                .map(|g| g.iter().copied())
                .into_iter()
                .flatten()
                .chain(grants)
                .collect();
            roles.insert(name, Arc::from(merged));
        }
        Ok(RoleMap {
            roles,
            epoch: catalog.epoch(),
            content_epoch: 0,
        })
    }

    /// Fixes [`RoleMap::content_epoch`] once `catalog` is complete (config load interns
    /// tenant routes after the role maps, so it cannot be done at build).
    pub fn seal(&mut self, catalog: &Catalog) {
        use std::hash::{Hash, Hasher};
        debug_assert!(self.same_catalog(catalog), "seal with a foreign catalog");
        let mut entries: Vec<(&str, &[Grant])> =
            self.roles.iter().map(|(n, g)| (&**n, &**g)).collect();
        entries.sort_unstable_by_key(|(n, _)| *n);
        let mut h = std::hash::DefaultHasher::new();
        catalog.fingerprint().hash(&mut h);
        entries.hash(&mut h);
        // Never 0, so a sealed map is told apart from the unsealed default.
        self.content_epoch = h.finish() | 1;
    }

    /// The permission-cache epoch of sets compiled from this map: equal across reloads
    /// exactly when the catalog and this map's contents are, so an unchanged reload keeps its
    /// cached sets and a changed one can never be served a set from before it (whichever
    /// snapshot the compiling request held).
    pub fn content_epoch(&self) -> u64 {
        self.content_epoch
    }

    fn same_catalog(&self, catalog: &Catalog) -> bool {
        self.epoch == 0 || self.epoch == catalog.epoch()
    }

    pub fn get(&self, role: &str) -> Option<&[Grant]> {
        self.roles.get(role).map(|g| &**g)
    }

    pub fn contains(&self, role: &str) -> bool {
        self.roles.contains_key(role)
    }

    pub fn len(&self) -> usize {
        self.roles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }

    /// A user's effective permissions: the grants of every known role in `roles` (realm roles
    /// and client roles from the token, chained by the caller; unknown role names such as
    /// Keycloak's `offline_access` are ignored) plus `extra` grant strings (token claim,
    /// Redis per-user and per-role sets). Invalid extra grants are returned, not fatal.
    ///
    /// `catalog` must be the one this map was built with.
    pub fn compile<'r, R, G, S>(
        &self,
        catalog: &Catalog,
        roles: R,
        extra: G,
    ) -> (PermissionSet, Vec<RejectedGrant>)
    where
        R: IntoIterator<Item = &'r str>,
        G: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        debug_assert!(self.same_catalog(catalog), "compile with a foreign catalog");
        let mut b = PermissionSetBuilder::new(catalog);
        for role in roles {
            if let Some(grants) = self.roles.get(role) {
                for g in grants.iter() {
                    b.insert(*g);
                }
            }
        }
        let mut rejected = Vec::new();
        for s in extra {
            let s = s.as_ref();
            match catalog.grant(s) {
                Ok(g) => b.insert(g),
                Err(error) => rejected.push(RejectedGrant {
                    // The error already carries a bounded copy; avoid storing megabytes here.
                    grant: s
                        .chars()
                        .take(super::permission::MAX_PERMISSION_LEN)
                        .collect(),
                    error,
                }),
            }
        }
        (b.build(), rejected)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::authz::permission::Scopes;

    fn map(entries: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::new(Scopes::new(&["own", "team", "tenant"]).unwrap());
        for p in [
            "users.read.own",
            "users.write.own",
            "calls.read.own",
            "reports.read.own",
        ] {
            c.intern_required(p).unwrap();
        }
        c
    }

    fn global() -> BTreeMap<String, Vec<String>> {
        map(&[
            ("tenant_admin", &["users.*.tenant", "calls.*.tenant"]),
            ("viewer", &["calls.read.own", "users.read.own"]),
            ("super_admin", &["*.*.*"]),
        ])
    }

    fn allows(c: &Catalog, set: &PermissionSet, p: &str) -> bool {
        set.allows(&c.required(p).unwrap())
    }

    #[test]
    fn compile_unions_roles_and_extra_grants() {
        let mut c = catalog();
        let g = global();
        let roles = RoleMap::build(
            &mut c,
            RoleSource {
                path: "roles",
                roles: &g,
            },
        )
        .unwrap();
        assert_eq!(roles.len(), 3);
        let (set, rejected) = roles.compile(
            &c,
            ["viewer", "offline_access", "default-roles-acme"],
            [
                "reports.read.team",
                "bogus",
                "users.write.galaxy",
                "unknown.read.own",
            ],
        );
        assert!(allows(&c, &set, "calls.read.own"));
        assert!(allows(&c, &set, "users.read.own"));
        assert!(!allows(&c, &set, "users.write.own"));
        assert!(allows(&c, &set, "reports.read.team"));
        assert_eq!(set.inert_grants(), 1);
        let codes: Vec<_> = rejected
            .iter()
            .map(|r| (r.grant.as_str(), r.error.code()))
            .collect();
        assert_eq!(
            codes,
            [
                ("bogus", "segment_count"),
                ("users.write.galaxy", "unknown_scope")
            ]
        );

        let (admin, _) = roles.compile(&c, ["super_admin"], std::iter::empty::<&str>());
        assert!(allows(&c, &admin, "reports.read.tenant"));
        let (none, rej) = roles.compile(&c, std::iter::empty(), std::iter::empty::<String>());
        assert!(none.is_empty() && rej.is_empty());
    }

    #[test]
    fn tenant_overlay_adds_and_overrides() {
        let mut c = catalog();
        let g = global();
        let global_map = RoleMap::build(
            &mut c,
            RoleSource {
                path: "roles",
                roles: &g,
            },
        )
        .unwrap();
        let additions = map(&[
            ("viewer", &["reports.read.own"]),
            ("auditor", &["*.read.team"]),
        ]);
        let overrides = map(&[("tenant_admin", &["users.read.tenant"]), ("viewer", &[])]);
        let t = global_map
            .overlay(
                &mut c,
                RoleSource {
                    path: "tenants[0].roles",
                    roles: &additions,
                },
                RoleSource {
                    path: "tenants[0].role_overrides",
                    roles: &overrides,
                },
            )
            .unwrap();

        let (admin, _) = t.compile(&c, ["tenant_admin"], std::iter::empty::<&str>());
        assert!(allows(&c, &admin, "users.read.tenant"));
        assert!(
            !allows(&c, &admin, "users.write.own"),
            "override replaced the global list"
        );
        assert!(!allows(&c, &admin, "calls.read.own"));

        // viewer: overridden to nothing, then the addition applies.
        let (viewer, _) = t.compile(&c, ["viewer"], std::iter::empty::<&str>());
        assert!(allows(&c, &viewer, "reports.read.own"));
        assert!(!allows(&c, &viewer, "calls.read.own"));

        let (auditor, _) = t.compile(&c, ["auditor"], std::iter::empty::<&str>());
        assert!(allows(&c, &auditor, "users.read.team"));

        // The global map is unchanged.
        let (gv, _) = global_map.compile(&c, ["viewer", "auditor"], std::iter::empty::<&str>());
        assert!(allows(&c, &gv, "calls.read.own"));
        assert!(!allows(&c, &gv, "reports.read.own"));
        assert!(!global_map.contains("auditor"));
    }

    #[test]
    fn build_errors_name_every_field() {
        let mut c = catalog();
        let bad = map(&[
            (
                "viewer",
                &["calls.read.own", "calls.read", "Users.read.own"],
            ),
            ("odd.name", &["x.y.nowhere"]),
            ("ok", &["*.*.*"]),
        ]);
        let errs = RoleMap::build(
            &mut c,
            RoleSource {
                path: "roles",
                roles: &bad,
            },
        )
        .unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "roles.\"odd.name\"[0]",
                "roles.viewer[1]",
                "roles.viewer[2]"
            ]
        );
        assert!(errs[1]
            .to_string()
            .starts_with("roles.viewer[1]: permission \"calls.read\""));

        let g = global();
        let global_map = RoleMap::build(
            &mut c,
            RoleSource {
                path: "roles",
                roles: &g,
            },
        )
        .unwrap();
        let add = map(&[("viewer", &["calls.read.own", "nope"])]);
        let over = map(&[("", &[]), ("x", &["a.b.c"])]);
        let errs = global_map
            .overlay(
                &mut c,
                RoleSource {
                    path: "tenants[2].roles",
                    roles: &add,
                },
                RoleSource {
                    path: "tenants[2].role_overrides",
                    roles: &over,
                },
            )
            .unwrap_err();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "tenants[2].role_overrides.\"\"",
                "tenants[2].role_overrides.x[0]",
                "tenants[2].roles.viewer[1]"
            ]
        );
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "foreign catalog")]
    fn foreign_catalog_is_caught_in_debug_builds() {
        let mut c = catalog();
        let g = global();
        let roles = RoleMap::build(
            &mut c,
            RoleSource {
                path: "roles",
                roles: &g,
            },
        )
        .unwrap();
        let other = catalog();
        let _ = roles.compile(&other, ["viewer"], std::iter::empty::<&str>());
    }

    #[test]
    fn rejected_grant_copies_are_bounded() {
        let c = catalog();
        let roles = RoleMap::default();
        let huge = "a".repeat(100_000);
        let (_, rej) = roles.compile(&c, std::iter::empty(), [huge.as_str()]);
        assert_eq!(rej.len(), 1);
        assert!(rej[0].grant.len() <= crate::authz::permission::MAX_PERMISSION_LEN);
        assert!(rej[0].error.to_string().len() < 200);
    }
}
