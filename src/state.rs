//! State shared by the proxy, the admin listener and the background services.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::assertion::AssertionKey;
use crate::authz::PermissionSet;
use crate::config::RuntimeConfig;
use crate::grants::GrantStore;
use crate::jwks::{key_store, JwksRefresher, KeyStore};
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
    /// Set when graceful shutdown starts, so `/readyz` turns away new traffic first.
    draining: AtomicBool,
}

impl Shared {
    /// Builds the shared state; the returned refresher must run as a background service (it
    /// does every JWKS fetch, on its own runtime).
    pub fn new(config: RuntimeConfig) -> Result<(Arc<Self>, JwksRefresher), String> {
        let (keys, refresher) = key_store(config.jwks.clone(), config.static_realms.clone());
        let verifier = Verifier::new(keys.clone(), config.verify.clone());
        let grants = GrantStore::new(config.grants.clone()).map_err(|e| format!("redis: {e}"))?;
        let assertion = config
            .assertion
            .as_ref()
            .map(AssertionKey::for_settings)
            .transpose()
            .map_err(|e| format!("assertion: {e}"))?;
        let shared = Arc::new(Self {
            config: ArcSwap::from_pointee(config),
            keys,
            verifier,
            grants,
            assertion,
            draining: AtomicBool::new(false),
        });
        Ok((shared, refresher))
    }

    /// Swaps in a new validated config. JWKS key sets of unchanged realms and verified tokens
    /// stay warm; compiled permission sets are dropped (their ids belong to the old catalog).
    /// Settings that only take effect at start (listen addresses, threads, Redis) are
    /// reported, not silently ignored.
    pub fn apply(&self, new: RuntimeConfig) {
        let old = self.config.load();
        if old.proxy_addr != new.proxy_addr || old.admin_addr != new.admin_addr {
            tracing::warn!(
                "listen addresses changed: they take effect at the next restart or upgrade"
            );
        }
        if old.raw.server.threads != new.raw.server.threads {
            tracing::warn!(
                "server.threads changed: it takes effect at the next restart or upgrade"
            );
        }
        let redis = |c: &RuntimeConfig| {
            c.grants
                .as_ref()
                .map(|g| (g.url.clone(), g.channel.clone(), g.key_prefix.clone()))
        };
        if redis(&old) != redis(&new) {
            tracing::warn!(
                "redis settings changed: they take effect at the next restart or upgrade"
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
        crate::metrics::metrics()
            .tenants
            .set_cap(new.raw.metrics.tenant_label_cap);
        self.keys
            .update_config(new.jwks.clone(), new.static_realms.clone());
        self.verifier.update_settings(new.verify.clone());
        self.config.store(Arc::new(new));
        self.grants.clear();
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
        if self.config.load().raw.keycloak.require_keys_for_ready {
            for realm in self.keys.not_ready_realms() {
                reasons.push(format!("realm {realm} has no usable keys"));
            }
        }
        reasons
    }
}
