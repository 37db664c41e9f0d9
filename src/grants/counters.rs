//! Pre-resolved metric handles for the grant store.

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::Instant;

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

/// One use in this many (per thread) is observed in the grant-age histogram.
pub(super) const AGE_SAMPLE_EVERY: u32 = 16;

thread_local! {
    static AGE_TICK: Cell<u32> = const { Cell::new(0) };
}

/// Records the age of the grant data a request is decided with, for one use in
/// [`AGE_SAMPLE_EVERY`]. Observing every use cost ~20 ns per cache hit (atomic bucket, count
/// and a CAS loop on the f64 sum; a thread-local histogram was no cheaper, measured), a fifth
/// of the hit; a systematic sample of uses keeps the distribution and costs ~1 ns. Use
/// `permission_cache_total{result="hit"}` for counts.
pub(super) fn observe_age(now: Instant, loaded: Instant) {
    let sampled = AGE_TICK.with(|t| {
        let n = t.get().wrapping_add(1);
        t.set(n);
        // The first use of each thread is sampled, then every 16th.
        n % AGE_SAMPLE_EVERY == 1
    });
    if sampled {
        metrics()
            .grant_age_seconds
            .observe(now.saturating_duration_since(loaded).as_secs_f64());
    }
}
