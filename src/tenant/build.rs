//! The table build: validates every definition, indexes the static tenants and the host
//! patterns, and checks the rules that relate them (one realm per tenant, one template for every
//! pattern, no pattern deriving a static tenant's id for another realm, no two patterns
//! matching one host). Every error is collected, so an operator sees all of them at once.

use std::collections::hash_map::Entry;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use quick_cache::sync::Cache;

use super::def::{
    compile_regex, derived_label, parse_wildcard, validate_realm, validate_realm_template,
    validate_tenant_id, validate_upstream,
};
use super::host_name::normalize_config_host;
use super::overlap::{check_overlaps, HostShape};
use super::{
    AHashMap, BuildError, CompiledPattern, HostPatternDef, Tenant, TenantDef, TenantSource,
    TenantTable, NEXT_TABLE_ID,
};

impl TenantTable {
    /// Validates and compiles the tenancy configuration, collecting ALL errors. Hosts and
    /// wildcard suffixes are normalised here (lowercase, one trailing dot stripped), so
    /// duplicates are detected across spellings.
    pub fn build(
        tenants: Vec<TenantDef>,
        patterns: Vec<HostPatternDef>,
        dynamic_cache_capacity: usize,
    ) -> Result<Self, Vec<BuildError>> {
        let mut errors = Vec::new();
        let statics = Statics::build(tenants, &mut errors);
        let compiled = Patterns::build(patterns, &mut errors);
        check_overlaps(&compiled.shapes, &mut errors);
        if let Some((_, template)) = &compiled.first_template {
            check_derived_ids(template, &statics.tenants, &statics.by_id, &mut errors);
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            tenants: statics.tenants,
            by_id: statics
                .by_id
                .into_iter()
                .map(|(k, (_, t))| (k, t))
                .collect(),
            by_realm: statics
                .by_realm
                .into_iter()
                .map(|(k, (_, t))| (k, t))
                .collect(),
            exact: statics
                .exact
                .into_iter()
                .map(|(k, (_, t))| (k, t))
                .collect(),
            wildcards: compiled
                .wildcards
                .into_iter()
                .map(|(k, (p, _))| (k, p))
                .collect(),
            regexes: compiled.regexes,
            patterns: compiled.compiled,
            static_realms: statics.realms,
            dynamic: Cache::new(dynamic_cache_capacity),
        })
    }
}

/// The static tenants while they are indexed; each entry remembers where it was defined, for
/// the duplicate messages.
struct Statics {
    /// In configuration order.
    tenants: Vec<Arc<Tenant>>,
    by_id: AHashMap<Box<str>, (usize, Arc<Tenant>)>,
    by_realm: AHashMap<Box<str>, (usize, Arc<Tenant>)>,
    /// Normalised host -> (config path, tenant).
    exact: AHashMap<Box<[u8]>, (String, Arc<Tenant>)>,
    /// Distinct realms in configuration order.
    realms: Vec<Arc<str>>,
}

impl Statics {
    fn build(defs: Vec<TenantDef>, errors: &mut Vec<BuildError>) -> Self {
        let host_total = defs.iter().map(|t| t.hosts.len()).sum();
        let map = |n| AHashMap::with_capacity_and_hasher(n, ahash::RandomState::new());
        let mut statics = Statics {
            tenants: Vec::with_capacity(defs.len()),
            by_id: map(defs.len()),
            by_realm: map(defs.len()),
            exact: AHashMap::with_capacity_and_hasher(host_total, ahash::RandomState::new()),
            realms: Vec::new(),
        };
        for (i, def) in defs.into_iter().enumerate() {
            statics.add(i, def, errors);
        }
        statics
    }

    /// Validates `tenants[i]` and indexes it by id, realm and each host.
    fn add(&mut self, i: usize, def: TenantDef, errors: &mut Vec<BuildError>) {
        if let Err(m) = validate_tenant_id(&def.id) {
            errors.push(BuildError::new(format!("tenants[{i}].id"), m));
        }
        if let Err(m) = validate_realm(&def.realm) {
            errors.push(BuildError::new(format!("tenants[{i}].realm"), m));
        }
        if let Err(m) = validate_upstream(def.upstream.as_deref()) {
            errors.push(BuildError::new(format!("tenants[{i}].upstream"), m));
        }
        let realm: Arc<str> = def.realm.into();
        let tenant = Arc::new(Tenant::new(
            def.id.as_str().into(),
            realm.clone(),
            def.status,
            def.upstream.map(Into::into),
            TenantSource::Static { index: i },
        ));
        match self.by_id.entry(def.id.into_boxed_str()) {
            Entry::Occupied(o) => errors.push(BuildError::new(
                format!("tenants[{i}].id"),
                format!(
                    "duplicate tenant id {:?} (already used by tenants[{}])",
                    o.key(),
                    o.get().0
                ),
            )),
            Entry::Vacant(v) => {
                v.insert((i, tenant.clone()));
            }
        }
        // One realm, one tenant: with two, a token of the realm would open both tenants,
        // and the backend would see two X-Tenant-IDs for one set of users.
        match self.by_realm.entry(Box::from(&*realm)) {
            Entry::Occupied(o) => errors.push(BuildError::new(
                format!("tenants[{i}].realm"),
                format!(
                    "realm {:?} already belongs to tenants[{}] ({:?}); a realm serves exactly one tenant",
                    o.key(),
                    o.get().0,
                    &*o.get().1.id
                ),
            )),
            Entry::Vacant(v) => {
                v.insert((i, tenant.clone()));
                self.realms.push(realm);
            }
        }
        for (j, host) in def.hosts.iter().enumerate() {
            let path = format!("tenants[{i}].hosts[{j}]");
            match normalize_config_host(host) {
                Err(e) => errors.push(BuildError::new(
                    path,
                    format!("{host:?} is not a valid host name ({e})"),
                )),
                Ok(n) => match self.exact.entry(n.into_bytes().into_boxed_slice()) {
                    Entry::Occupied(o) => {
                        let msg = format!("{host:?} is already used by {}", o.get().0);
                        errors.push(BuildError::new(path, msg));
                    }
                    Entry::Vacant(v) => {
                        v.insert((path, tenant.clone()));
                    }
                },
            }
        }
        self.tenants.push(tenant);
    }
}

/// The host patterns while they are compiled.
struct Patterns {
    /// Every pattern, in configuration order (a failed one too, so positions stay stable).
    compiled: Vec<CompiledPattern>,
    /// Wildcard suffix -> (position in `compiled`, config index).
    wildcards: AHashMap<Box<[u8]>, (usize, usize)>,
    /// Positions in `compiled` of regex patterns, in configuration order.
    regexes: Vec<usize>,
    /// (config index, template) of the first pattern: every pattern must use the same.
    first_template: Option<(usize, String)>,
    /// Host languages of the patterns that parsed, for the overlap check.
    shapes: Vec<(usize, HostShape)>,
}

impl Patterns {
    fn build(defs: Vec<HostPatternDef>, errors: &mut Vec<BuildError>) -> Self {
        let mut patterns = Patterns {
            compiled: Vec::with_capacity(defs.len()),
            wildcards: AHashMap::default(),
            regexes: Vec::new(),
            first_template: None,
            shapes: Vec::with_capacity(defs.len()),
        };
        for (i, def) in defs.into_iter().enumerate() {
            patterns.add(i, def, errors);
        }
        patterns
    }

    /// Validates and compiles `host_patterns[i]`.
    fn add(&mut self, i: usize, def: HostPatternDef, errors: &mut Vec<BuildError>) {
        let (realm, upstream) = match &def {
            HostPatternDef::Wildcard {
                realm, upstream, ..
            }
            | HostPatternDef::Regex {
                realm, upstream, ..
            } => (realm, upstream),
        };
        if let Err(m) = validate_realm_template(realm) {
            errors.push(BuildError::new(format!("host_patterns[{i}].realm"), m));
        }
        // Every pattern turns a host label into the tenant id, so two templates would give
        // one X-Tenant-ID two realms (`{tenant}.eu...` -> eu-x and `{tenant}.us...` -> us-x
        // are both tenant x to a backend that keys row-level security on the header).
        match &self.first_template {
            _ if validate_realm_template(realm).is_err() => {}
            None => self.first_template = Some((i, realm.clone())),
            Some((f, t)) if t != realm => errors.push(BuildError::new(
                format!("host_patterns[{i}].realm"),
                format!(
                    "realm template {realm:?} differs from host_patterns[{f}]'s {t:?}; patterns derive the tenant id from the host label, so every pattern must map an id to the same realm"
                ),
            )),
            Some(_) => {}
        }
        if let Err(m) = validate_upstream(upstream.as_deref()) {
            errors.push(BuildError::new(format!("host_patterns[{i}].upstream"), m));
        }
        let mut pattern = CompiledPattern {
            index: i,
            realm_template: realm.as_str().into(),
            upstream: upstream.as_deref().map(Into::into),
            regex: None,
        };
        let position = self.compiled.len();
        match &def {
            HostPatternDef::Wildcard { pattern: p, .. } => match parse_wildcard(p) {
                Err(m) => {
                    errors.push(BuildError::new(format!("host_patterns[{i}].pattern"), m));
                }
                Ok(suffix) => match self.wildcards.entry(suffix.clone().into_bytes().into()) {
                    Entry::Vacant(v) => {
                        v.insert((position, i));
                        self.shapes.push((i, HostShape::Wildcard(suffix)));
                    }
                    Entry::Occupied(o) => errors.push(BuildError::new(
                        format!("host_patterns[{i}].pattern"),
                        format!(
                            "{p:?}: suffix {suffix:?} is already used by host_patterns[{}]",
                            o.get().1
                        ),
                    )),
                },
            },
            HostPatternDef::Regex { regex, .. } => match compile_regex(regex) {
                Err(m) => {
                    errors.push(BuildError::new(format!("host_patterns[{i}].regex"), m));
                }
                Ok(r) => {
                    pattern.regex = Some(r);
                    self.regexes.push(position);
                    self.shapes.push((i, HostShape::Regex(regex.clone())));
                }
            },
        }
        self.compiled.push(pattern);
    }
}

/// A static tenant's realm may be one a host pattern derives, for label `x`; then `x` must
/// not be another static tenant's id, or the host `x.suffix` would name one tenant by realm
/// and another by id. Reported on the later of the two tenants, so a run-time tenant (merged
/// after the file's) is the one refused.
fn check_derived_ids(
    template: &str,
    tenants: &[Arc<Tenant>],
    by_id: &AHashMap<Box<str>, (usize, Arc<Tenant>)>,
    errors: &mut Vec<BuildError>,
) {
    for (i, t) in tenants.iter().enumerate() {
        let Some(label) = derived_label(template, &t.realm) else {
            continue;
        };
        if label == &*t.id {
            continue;
        }
        let Some((j, other)) = by_id.get(label) else {
            continue;
        };
        let (j, other) = (*j, other);
        if other.realm == t.realm {
            continue;
        }
        let error = if j > i {
            BuildError::new(
                format!("tenants[{j}].id"),
                format!(
                    "{label:?} is the tenant id host patterns derive (template {template:?}) for realm {:?} of tenants[{i}] ({:?}), but this tenant's realm is {:?}; a tenant id must name one realm",
                    &*t.realm, &*t.id, &*other.realm
                ),
            )
        } else {
            BuildError::new(
                format!("tenants[{i}].realm"),
                format!(
                    "host patterns derive tenant id {label:?} from realm {:?} (template {template:?}), and {label:?} is the id of tenants[{j}] with realm {:?}; a tenant id must name one realm",
                    &*t.realm, &*other.realm
                ),
            )
        };
        errors.push(error);
    }
}
