//! Pre-resolved metric handles for the grant store.

use std::sync::LazyLock;

use prometheus::{Histogram, IntCounter};

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
    pub(super) age: Histogram,
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
        age: m.grant_age_seconds.clone(),
    }
});

pub(super) fn counters() -> &'static Counters {
    &COUNTERS
}
