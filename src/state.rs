//! State shared by the proxy, the admin listener and the background services.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::RuntimeConfig;

/// Everything that outlives one request. The config is an `ArcSwap` snapshot: a request
/// loads it once and finishes on it, a reload swaps it atomically.
pub struct Shared {
    pub config: ArcSwap<RuntimeConfig>,
    /// Set when graceful shutdown starts, so `/readyz` turns away new traffic first.
    draining: AtomicBool,
}

impl Shared {
    pub fn new(config: RuntimeConfig) -> Arc<Self> {
        Arc::new(Self {
            config: ArcSwap::from_pointee(config),
            draining: AtomicBool::new(false),
        })
    }

    /// Swaps in a new validated config. Settings that only take effect at start (listen
    /// addresses, thread count) are reported, not silently ignored.
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
        crate::metrics::metrics()
            .tenants
            .set_cap(new.raw.metrics.tenant_label_cap);
        self.config.store(Arc::new(new));
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
        reasons
    }
}
