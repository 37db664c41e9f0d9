//! Pre-resolved metric handles for the grant store.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use prometheus::local::LocalHistogram;
use prometheus::IntCounter;

use crate::metrics::metrics;

/// Pre-resolved counter handles: `with_label_values` hashes and locks, too slow per request.
pub(super) struct Counters {
    pub(super) hit: IntCounter,
    pub(super) miss: IntCounter,
    pub(super) expired: IntCounter,
    pub(super) degraded: IntCounter,
    pub(super) err_connect: IntCounter,
    pub(super) err_load: IntCounter,
    pub(super) err_smembers: IntCounter,
    pub(super) err_subscribe: IntCounter,
    pub(super) invalid_redis: IntCounter,
    pub(super) invalidations: IntCounter,
    /// Invalidations applied, by source.
    pub(super) from_pubsub: IntCounter,
    pub(super) from_tracking: IntCounter,
    pub(super) from_keyspace: IntCounter,
    /// Cached sets dropped because their TTL ran out.
    pub(super) from_ttl: IntCounter,
}

static COUNTERS: LazyLock<Counters> = LazyLock::new(|| {
    let m = metrics();
    let cache = |r: &str| m.permission_cache_total.with_label_values(&[r]);
    let err = |op: &str| m.redis_errors_total.with_label_values(&[op]);
    Counters {
        hit: cache("hit"),
        miss: cache("miss"),
        expired: cache("expired"),
        degraded: cache("degraded"),
        err_connect: err("connect"),
        err_load: err("load"),
        err_smembers: err("smembers"),
        err_subscribe: err("subscribe"),
        invalid_redis: m.invalid_grants_total.with_label_values(&["redis"]),
        invalidations: m.invalidations_total.clone(),
        from_pubsub: m.grant_invalidations_total.with_label_values(&["pubsub"]),
        from_tracking: m.grant_invalidations_total.with_label_values(&["tracking"]),
        from_keyspace: m.grant_invalidations_total.with_label_values(&["keyspace"]),
        from_ttl: m.grant_invalidations_total.with_label_values(&["ttl"]),
    }
});

pub(super) fn counters() -> &'static Counters {
    &COUNTERS
}

/// Observations a worker thread buffers before flushing them into the shared histogram.
const AGE_FLUSH_EVERY: u32 = 64;
const AGE_FLUSH_AFTER: Duration = Duration::from_secs(1);

struct LocalAge {
    histogram: LocalHistogram,
    pending: Cell<u32>,
    flushed: Cell<Instant>,
}

thread_local! {
    static AGE: LocalAge = LocalAge {
        histogram: metrics().grant_age_seconds.local(),
        pending: Cell::new(0),
        // The first use flushes at once.
        flushed: Cell::new(Instant::now().checked_sub(AGE_FLUSH_AFTER).unwrap_or_else(Instant::now)),
    };
}

/// Records the age of the grant data a request is decided with. A shared histogram costs
/// ~23 ns per observation (atomic bucket, count and a CAS loop on the f64 sum), a fifth of a
/// cache hit; a thread-local one costs a few ns and is flushed every 64 uses or every second
/// of traffic, so a scrape may miss the last few uses of a thread that went idle.
pub(super) fn observe_age(now: Instant, loaded: Instant) {
    AGE.with(|a| {
        a.histogram
            .observe(now.saturating_duration_since(loaded).as_secs_f64());
        let pending = a.pending.get() + 1;
        if pending >= AGE_FLUSH_EVERY
            || now.saturating_duration_since(a.flushed.get()) >= AGE_FLUSH_AFTER
        {
            a.histogram.flush();
            a.pending.set(0);
            a.flushed.set(now);
        } else {
            a.pending.set(pending);
        }
    });
}
