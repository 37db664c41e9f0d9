//! State shared by the proxy, the admin listener and the background services: the live
//! config (`Shared`) and the syncs that rewrite it (`reload` from the file, `tenant_sync`
//! from Redis). A sync that feeds one domain's store lives in that domain's folder instead
//! (`jwks/refresher`, `grants/subscriber`, `revocation/replica`).

pub mod reload;
pub mod tenant_sync;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::assertion::AssertionKey;
use crate::authz::PermissionSet;
use crate::config::raw::{RawConfig, TenantSection};
use crate::config::{ConfigError, RuntimeConfig};
use crate::grants::GrantStore;
use crate::jwks::{key_store, JwksRefresher, KeyStore};
use crate::revocation::replica::ReplicaStatus;
use crate::revocation::{Revocation, Revoker};
use crate::verify::Verifier;

/// Everything that outlives one request. The config is an `ArcSwap` snapshot: a request
/// loads it once and finishes on it, a reload swaps it atomically. Key sets, verified tokens
/// and permission sets live outside the config so they survive reloads.
pub struct Shared {
    pub config: ArcSwap<RuntimeConfig>,
    pub keys: Arc<KeyStore>,
    pub verifier: Verifier,
    pub grants: Arc<GrantStore<PermissionSet>>,
    /// The identity-assertion signing key, chosen at start (loaded or generated) so the
    /// published JWKS survives reloads; `None` when the feature was off at start.
    pub assertion: Option<AssertionKey>,
    /// Revoked sessions, subjects and realm not-befores (outlive reloads).
    pub revoker: Arc<Revoker>,
    /// Revocations for the Redis replica link, taken by `server` when Redis is configured.
    pub revocation_outbox: Mutex<Option<tokio::sync::mpsc::Receiver<Revocation>>>,
    /// Whether the replica link is subscribed (stays false without Redis).
    pub revocation_replica: Mutex<Option<ReplicaStatus>>,
    /// Set when graceful shutdown starts, so `/readyz` turns away new traffic first.
    draining: AtomicBool,
    /// The file's config (before run-time tenants are merged in) and where it came from.
    base: Mutex<(Arc<RawConfig>, Option<PathBuf>)>,
    /// Tenants provisioned at run time through Redis (see `tenant_sync`).
    runtime_tenants: Mutex<Vec<TenantSection>>,
    /// Serialises the two config writers (file reload, tenant sync): each reads the other's
    /// input, compiles and stores, so interleaved they could store a config that drops the
    /// other's change.
    writer: Mutex<()>,
}

impl Shared {
    /// Builds the shared state; the returned refresher must run as a background service (it
    /// does every JWKS fetch, on its own runtime).
    pub fn new(config: RuntimeConfig) -> Result<(Arc<Self>, JwksRefresher), String> {
        config.log_warnings();
        let (keys, refresher) = key_store(config.jwks.clone(), config.static_realms.clone());
        let verifier = Verifier::new(keys.clone(), config.verify.clone());
        let grants = GrantStore::new(config.grants.clone()).map_err(|e| format!("redis: {e}"))?;
        let base = Mutex::new((config.raw.clone(), config.source.clone()));
        let assertion = config
            .assertion
            .as_ref()
            .map(AssertionKey::for_settings)
            .transpose()
            .map_err(|e| format!("assertion: {e}"))?;
        let (revoker, revocation_outbox) = Revoker::new(
            config.revocation.max_entries,
            config.revocation.replica.is_some(),
        );
        let shared = Arc::new(Self {
            revoker: Arc::new(revoker),
            revocation_outbox: Mutex::new(revocation_outbox),
            revocation_replica: Mutex::new(None),
            base,
            runtime_tenants: Mutex::new(Vec::new()),
            writer: Mutex::new(()),
            config: ArcSwap::from_pointee(config),
            keys,
            verifier,
            grants,
            assertion,
            draining: AtomicBool::new(false),
        });
        Ok((shared, refresher))
    }

    /// Swaps in a new validated config. JWKS key sets of unchanged realms, verified tokens and
    /// the permission sets of tenants whose catalog and roles are unchanged stay warm (their
    /// cache key carries a content epoch, so a changed tenant never meets an old set); when
    /// the catalog itself changed, every set is dropped to free the space.
    /// Settings that only take effect at start (listen addresses, threads, Redis) are
    /// reported, not silently ignored.
    pub fn apply(&self, new: RuntimeConfig) {
        let old = self.config.load();
        let writes = |c: &RuntimeConfig| c.admin.writes.as_ref().map(|w| w.addr);
        if old.proxy_addr != new.proxy_addr
            || old.admin_addr != new.admin_addr
            || writes(&old) != writes(&new)
        {
            tracing::warn!(
                "listen addresses changed: they take effect at the next restart or upgrade"
            );
        }
        if old.server.threads != new.server.threads {
            tracing::warn!(
                "server.threads changed: it takes effect at the next restart or upgrade"
            );
        }
        let redis = |c: &RuntimeConfig| {
            c.grants.as_ref().map(|g| {
                (
                    g.url.clone(),
                    g.channel.clone(),
                    g.key_prefix.clone(),
                    g.invalidation,
                    format!("{:?}", g.loader),
                )
            })
        };
        if redis(&old) != redis(&new)
            || old.revocation.replica != new.revocation.replica
            || old.revocation.max_entries != new.revocation.max_entries
        {
            tracing::warn!(
                "redis settings (url, channel, key_prefix, invalidation, loader) changed: they take effect at the next restart or upgrade"
            );
        }
        if let Some(a) = &new.assertion {
            match &self.assertion {
                None => tracing::warn!(
                    "assertion enabled: the signing key is created at start, so the header is added after the next restart"
                ),
                Some(k) if k.source() != a.key_file.as_deref() => tracing::warn!(
                    "assertion.key_file changed: the signing key changes at the next restart"
                ),
                Some(_) => {}
            }
        }
        new.log_warnings();
        crate::metrics::metrics()
            .tenants
            .set_cap(new.tenant_label_cap);
        self.keys
            .update_config(new.jwks.clone(), new.static_realms.clone());
        self.verifier.update_settings(new.verify.clone());
        let catalog_changed = old.catalog.fingerprint() != new.catalog.fingerprint();
        drop(old);
        self.config.store(Arc::new(new));
        if catalog_changed {
            self.grants.clear();
        }
    }

    /// Installs a new file config, merged with the run-time tenants, and swaps it in.
    pub fn install(&self, raw: RawConfig, source: Option<PathBuf>) -> Result<(), ConfigError> {
        let _writer = self.writer.lock();
        let extra = self.runtime_tenants.lock().clone();
        let raw = Arc::new(raw);
        let cfg = merged(&raw, source.clone(), &extra)?;
        *self.base.lock() = (raw, source);
        self.apply(cfg);
        Ok(())
    }

    /// Replaces the run-time tenants. Ids already in the file are skipped (the file wins);
    /// tenants that fail validation are dropped with a log line so one bad entry cannot
    /// block the rest. Returns how many were kept.
    pub fn set_runtime_tenants(
        &self,
        mut tenants: Vec<TenantSection>,
    ) -> Result<usize, ConfigError> {
        let _writer = self.writer.lock();
        let (raw, source) = self.base.lock().clone();
        tenants.retain(|t| {
            let clash = raw.tenants.iter().any(|f| f.id == t.id);
            if clash {
                tracing::warn!(id = %t.id, "runtime tenant skipped: the config file defines this id");
            }
            !clash
        });
        let base_len = raw.tenants.len();
        let cfg = match merged(&raw, source.clone(), &tenants) {
            Ok(cfg) => cfg,
            Err(e) => {
                // Drop every run-time tenant an error names, then try once more.
                let bad: Vec<usize> = e
                    .errors
                    .iter()
                    .filter_map(|m| {
                        m.strip_prefix("tenants[")?
                            .split(']')
                            .next()?
                            .parse::<usize>()
                            .ok()
                    })
                    .filter(|i| *i >= base_len)
                    .map(|i| i - base_len)
                    .collect();
                if bad.is_empty() {
                    return Err(e);
                }
                for m in &e.errors {
                    tracing::warn!(error = %m, "runtime tenant skipped");
                }
                let mut i = 0;
                tenants.retain(|_| {
                    let keep = !bad.contains(&i);
                    i += 1;
                    keep
                });
                merged(&raw, source, &tenants)?
            }
        };
        let kept = tenants.len();
        *self.runtime_tenants.lock() = tenants;
        self.apply(cfg);
        Ok(kept)
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Why the gateway should not receive traffic now; empty when ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.is_draining() {
            reasons.push("shutting down".to_string());
        }
        // Whether this replica can serve, not whether every tenant can: one deleted realm or a
        // realm whose IdP is down must not take every replica out of service at once (those
        // tenants get 503/401 answers; the rest are served). Until every static realm has had
        // its first load, though, traffic would only meet 503s.
        if self.config.load().require_keys_for_ready {
            let h = self.keys.static_realm_health();
            if h.loading > 0 {
                reasons.push(format!("{} static realm(s) not loaded yet", h.loading));
            } else if h.usable == 0 && !h.unusable.is_empty() {
                reasons.push("no static realm has usable keys".to_string());
            }
        }
        reasons
    }
}

/// The file's schema plus run-time tenants, compiled. Without run-time tenants the compiled
/// config shares the base schema (10 000 tenants are megabytes; no copy).
fn merged(
    base: &Arc<RawConfig>,
    source: Option<PathBuf>,
    extra: &[TenantSection],
) -> Result<RuntimeConfig, ConfigError> {
    if extra.is_empty() {
        return RuntimeConfig::compile(base.clone(), source);
    }
    let mut raw = RawConfig::clone(base);
    raw.tenants.extend(extra.iter().cloned());
    RuntimeConfig::compile(raw, source)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::{self, ProcessEnv};

    /// With no run-time tenants the compiled config and the reload base are one schema (with
    /// 10 000 tenants a copy is megabytes), after start, a reload and a tenant sync alike.
    #[test]
    fn the_schema_is_held_once() {
        let yaml = r#"
listen: {proxy: "127.0.0.1:1", admin: "127.0.0.1:2"}
upstream: {default: "127.0.0.1:3"}
keycloak: {base_url: "http://127.0.0.1:4", audiences: [qa-platform-backend]}
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.example.test]}
"#;
        let (shared, _refresher) =
            Shared::new(config::from_str(yaml, &ProcessEnv).unwrap()).unwrap();
        let one = |s: &Shared| Arc::ptr_eq(&s.base.lock().0, &s.config.load().raw);
        assert!(one(&shared), "at start");
        shared
            .install(config::parse_str(yaml, &ProcessEnv).unwrap(), None)
            .unwrap();
        assert!(one(&shared), "after a reload");
        assert_eq!(shared.set_runtime_tenants(Vec::new()).unwrap(), 0);
        assert!(one(&shared), "after an empty tenant sync");
    }
}
