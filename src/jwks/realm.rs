//! One realm: its issuer, key source, current keys, load state and fetch gate.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::keys::{KeySet, PreparedKey};
use super::settings::{Expectation, RealmSpec};

pub(super) const NOT_LOADED: u8 = 0;
pub(super) const LOADED: u8 = 1;
pub(super) const FAILED: u8 = 2;
pub(super) const NOT_FOUND: u8 = 3;
pub(super) const REFUSED: u8 = 4;

pub(super) fn state_name(s: u8) -> &'static str {
    match s {
        NOT_LOADED => "not_loaded",
        LOADED => "loaded",
        FAILED => "failed",
        NOT_FOUND => "not_found",
        _ => "refused",
    }
}

/// Single-flight state of a realm's fetches.
pub(super) struct Gate {
    pub(super) in_flight: bool,
    pub(super) last_started: Option<Instant>,
}

/// Refresher-private memory of a realm (never touched by the request path).
#[derive(Default)]
pub(super) struct FetchMemo {
    pub(super) jwks_uri: Option<String>,
    pub(super) doc_digest: Option<[u8; 32]>,
    pub(super) last_error: Option<String>,
}

/// One realm: its issuer, key source and current keys.
pub(crate) struct Realm {
    pub(super) name: Arc<str>,
    pub(super) spec: RealmSpec,
    pub(super) is_static: AtomicBool,
    pub(super) keys: ArcSwap<KeySet>,
    pub(super) state: AtomicU8,
    /// Clock seconds of the last successful fetch; 0 = never.
    pub(super) loaded_at: AtomicU64,
    /// Clock seconds of the last use (for dynamic-realm LRU eviction).
    pub(super) last_used: AtomicU64,
    /// Evicted or removed: keys installed later are retired at once.
    pub(super) dropped: AtomicBool,
    pub(super) gate: Mutex<Gate>,
    /// Notified after every fetch attempt, success or not; request-path waiters wait on it.
    /// A `Notify` (a few words) rather than a `watch` channel (hundreds of bytes): 10 000
    /// static realms each carry one.
    pub(super) done: Notify,
    pub(super) memo: Mutex<FetchMemo>,
}

impl Realm {
    pub(super) fn new(name: &str, spec: RealmSpec, is_static: bool, now: u64) -> Self {
        Self {
            name: name.into(),
            spec,
            is_static: AtomicBool::new(is_static),
            keys: ArcSwap::from_pointee(KeySet::default()),
            state: AtomicU8::new(NOT_LOADED),
            loaded_at: AtomicU64::new(0),
            last_used: AtomicU64::new(now),
            dropped: AtomicBool::new(false),
            gate: Mutex::new(Gate {
                in_flight: false,
                last_started: None,
            }),
            done: Notify::new(),
            memo: Mutex::new(FetchMemo::default()),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn issuer(&self) -> &Arc<str> {
        &self.spec.issuer
    }

    /// The issuer and token policy tokens of this realm must match.
    pub(crate) fn expectation(&self) -> Expectation {
        Expectation {
            issuer: self.spec.issuer.clone(),
            algs: self.spec.algs,
            allow_missing_kid: self.spec.allow_missing_kid,
            allow_missing_typ: self.spec.allow_missing_typ,
        }
    }

    pub(super) fn is_static(&self) -> bool {
        self.is_static.load(Ordering::Relaxed)
    }

    pub(super) fn state(&self) -> u8 {
        self.state.load(Ordering::Acquire)
    }

    /// Loaded and within `max_stale` of its last successful fetch.
    pub(crate) fn usable_at(&self, now: u64, max_stale: u64) -> bool {
        self.state() == LOADED
            && now.saturating_sub(self.loaded_at.load(Ordering::Acquire)) <= max_stale
    }

    /// Records use for LRU; writes at most once per second so hot realms don't bounce a
    /// cache line between cores on every request.
    pub(crate) fn touch(&self, now: u64) {
        if self.last_used.load(Ordering::Relaxed) != now {
            self.last_used.store(now, Ordering::Relaxed);
        }
    }

    pub(crate) fn find_key(&self, kid: Option<&str>) -> Option<Arc<PreparedKey>> {
        self.keys.load().find(kid).cloned()
    }

    pub(super) fn drop_keys(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        self.keys.load().retire_all();
    }
}

impl std::fmt::Debug for Realm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realm")
            .field("name", &self.name)
            .field("issuer", &self.spec.issuer)
            .field("state", &state_name(self.state()))
            .finish()
    }
}

/// Clears the realm's in-flight flag and wakes waiters when a fetch ends, even by panic.
pub(super) struct FetchGuard(pub(super) Arc<Realm>);

impl Drop for FetchGuard {
    fn drop(&mut self) {
        self.0.gate.lock().in_flight = false;
        self.0.done.notify_waiters();
    }
}
