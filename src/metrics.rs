//! Prometheus metrics: one owned registry, typed handles, bounded label sets.
//!
//! The registry is process-global (not the `prometheus` default registry) so every module can
//! record without threading a handle through, and so the admin listener exposes exactly
//! realmgate's series. Label values that come from the outside world (tenants, realms) go
//! through [`BoundedLabels`], so 10 000 tenants or a flood of random subdomains cannot explode
//! cardinality: the first `cap` distinct values get their own series, the rest count as `other`.

use std::sync::LazyLock;

use dashmap::DashSet;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets from 10 µs: the gateway's own decisions live in the microsecond range, upstream
/// latency in milliseconds to seconds.
/// Grant age: from "just read" to the longest sensible `cache_ttl`.
pub const GRANT_AGE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label value used once a bounded label set is full.
pub const OTHER: &str = "other";

/// A set of label values admitted to their own series, capped at `cap` entries.
///
/// Bound: at most `cap` distinct values are remembered; every later value maps to `other`.
/// Nothing is evicted (a series, once exported, keeps its name for the life of the process,
/// which is what Prometheus expects).
pub struct BoundedLabels {
    seen: DashSet<Box<str>, ahash::RandomState>,
    cap: std::sync::atomic::AtomicUsize,
}

impl BoundedLabels {
    pub fn new(cap: usize) -> Self {
        Self {
            seen: DashSet::with_hasher(ahash::RandomState::new()),
            cap: std::sync::atomic::AtomicUsize::new(cap),
        }
    }

    /// Changes the cap (config reload). Values already admitted stay admitted.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, std::sync::atomic::Ordering::Relaxed);
    }

    /// Returns `value` if it has (or can get) its own series, else [`OTHER`].
    pub fn label<'a>(&self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            return value;
        }
        if self.seen.len() < self.cap.load(std::sync::atomic::Ordering::Relaxed) {
            self.seen.insert(value.into());
            return value;
        }
        OTHER
    }

    /// `value` if it already has its own series, else [`OTHER`]; never admits. For values a
    /// client can choose (a random subdomain under a host pattern), so unverified traffic
    /// cannot take the labels that real tenants need.
    pub fn known<'a>(&self, value: &'a str) -> &'a str {
        if self.seen.contains(value) {
            value
        } else {
            OTHER
        }
    }
}

/// Every series realmgate exports. Names follow Prometheus conventions: `realmgate_` prefix,
/// `_total` counters, `_seconds` histograms.
pub struct Metrics {
    pub registry: Registry,
    /// Tenant label admission (cap configurable via `metrics.tenant_label_cap`).
    pub tenants: BoundedLabels,
    /// Realm label admission (dynamic realms are unbounded in principle).
    pub realms: BoundedLabels,

    pub requests_total: IntCounterVec,
    pub request_duration: Histogram,
    pub upstream_duration: Histogram,
    pub upstream_errors_total: IntCounterVec,
    pub rejections_total: IntCounterVec,

    pub jwks_fetch_total: IntCounterVec,
    /// Request-caused fetches refused by a process-wide rate bound, by `reason`
    /// (`admission_rate`, `refetch_rate`): bounded labels.
    pub jwks_fetch_denied_total: IntCounterVec,
    pub jwks_keys: IntGaugeVec,
    pub jwks_age_seconds: IntGaugeVec,
    /// Static realms by health (`usable`, `loading`, `unusable`): bounded labels.
    pub static_realms: IntGaugeVec,
    pub token_verify_total: IntCounterVec,
    pub token_cache_total: IntCounterVec,
    pub token_verify_duration: HistogramVec,

    pub permission_cache_total: IntCounterVec,
    pub redis_errors_total: IntCounterVec,
    pub invalid_grants_total: IntCounterVec,
    /// Grant loader calls, by `loader` (`http`, `postgres`) and `result`.
    pub grant_loader_calls_total: IntCounterVec,
    /// Loader answers written back into Redis, by `result` (`ok`, `error`, `skipped`).
    pub grant_write_backs_total: IntCounterVec,
    /// Age of the grant data a request was decided with: time since its sets were read
    /// (one use in 16 per thread is sampled: see `grants::counters`).
    pub grant_age_seconds: Histogram,
    pub decisions_total: IntCounterVec,
    pub shadow_decisions_total: IntCounterVec,

    pub config_reload_total: IntCounterVec,
    /// Open client connections.
    pub downstream_connections: IntGauge,
    /// Client connections the gateway closed, by `reason` (`idle_timeout`, `head_timeout`,
    /// `connection_limit`): bounded labels.
    pub downstream_closed_total: IntCounterVec,
    pub invalidations_total: IntCounter,
    /// Grant invalidations applied, by `source` (`pubsub`, `tracking`, `keyspace`).
    pub grant_invalidations_total: IntCounterVec,
    /// 1 for the active grant invalidation mode (`tracking`, `keyspace`, `ttl`, `none`).
    pub grant_invalidation_mode: IntGaugeVec,
    /// Revocations taken, by `source` (`backchannel`, `not_before`, `admin`, `replica`).
    pub revocations_total: IntCounterVec,
    /// Revocation entries held (sid, sub and not-before).
    pub revocation_entries: IntGauge,
    /// Back-channel logout and not-before requests refused, by `reason`: bounded labels.
    pub revocation_requests_refused_total: IntCounterVec,
    /// Operator writes (`admin.writes`) by result: applied, refused, unauthorized, rate_limited.
    pub admin_writes_total: IntCounterVec,
}

/// One series: its name, help text and label names (empty for a single series). Every series
/// realmgate exports is one constant in the catalog at the end of this file.
struct Series {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

/// Registers a collector built from a static definition: neither step can fail for a
/// well-formed, once-registered catalog entry (`exposition_has_conventional_names` and every
/// test that records a metric build the whole registry).
fn register<C: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    built: prometheus::Result<C>,
) -> C {
    let c = built.expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn opts(s: &Series) -> Opts {
    Opts::new(s.name, s.help)
}

fn counter_vec(r: &Registry, s: &Series) -> IntCounterVec {
    register(r, IntCounterVec::new(opts(s), s.labels))
}

fn gauge_vec(r: &Registry, s: &Series) -> IntGaugeVec {
    register(r, IntGaugeVec::new(opts(s), s.labels))
}

fn counter(r: &Registry, s: &Series) -> IntCounter {
    register(r, IntCounter::with_opts(opts(s)))
}

fn gauge(r: &Registry, s: &Series) -> IntGauge {
    register(r, IntGauge::with_opts(opts(s)))
}

fn histogram_opts(s: &Series, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(s.name, s.help).buckets(buckets.to_vec())
}

/// A latency histogram ([`LATENCY_BUCKETS`]).
fn histogram(r: &Registry, s: &Series) -> Histogram {
    register(r, Histogram::with_opts(histogram_opts(s, LATENCY_BUCKETS)))
}

fn histogram_vec(r: &Registry, s: &Series) -> HistogramVec {
    register(
        r,
        HistogramVec::new(histogram_opts(s, LATENCY_BUCKETS), s.labels),
    )
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Self {
            tenants: BoundedLabels::new(100),
            realms: BoundedLabels::new(100),
            requests_total: counter_vec(r, &REQUESTS_TOTAL),
            request_duration: histogram(r, &REQUEST_DURATION),
            upstream_duration: histogram(r, &UPSTREAM_DURATION),
            upstream_errors_total: counter_vec(r, &UPSTREAM_ERRORS_TOTAL),
            rejections_total: counter_vec(r, &REJECTIONS_TOTAL),
            jwks_fetch_total: counter_vec(r, &JWKS_FETCH_TOTAL),
            jwks_fetch_denied_total: counter_vec(r, &JWKS_FETCH_DENIED_TOTAL),
            jwks_keys: gauge_vec(r, &JWKS_KEYS),
            jwks_age_seconds: gauge_vec(r, &JWKS_AGE_SECONDS),
            static_realms: gauge_vec(r, &STATIC_REALMS),
            token_verify_total: counter_vec(r, &TOKEN_VERIFY_TOTAL),
            token_cache_total: counter_vec(r, &TOKEN_CACHE_TOTAL),
            token_verify_duration: histogram_vec(r, &TOKEN_VERIFY_DURATION),
            permission_cache_total: counter_vec(r, &PERMISSION_CACHE_TOTAL),
            redis_errors_total: counter_vec(r, &REDIS_ERRORS_TOTAL),
            invalid_grants_total: counter_vec(r, &INVALID_GRANTS_TOTAL),
            grant_loader_calls_total: counter_vec(r, &GRANT_LOADER_CALLS_TOTAL),
            grant_write_backs_total: counter_vec(r, &GRANT_WRITE_BACKS_TOTAL),
            grant_age_seconds: register(
                r,
                Histogram::with_opts(histogram_opts(&GRANT_AGE_SECONDS, GRANT_AGE_BUCKETS)),
            ),
            decisions_total: counter_vec(r, &DECISIONS_TOTAL),
            shadow_decisions_total: counter_vec(r, &SHADOW_DECISIONS_TOTAL),
            config_reload_total: counter_vec(r, &CONFIG_RELOAD_TOTAL),
            downstream_connections: gauge(r, &DOWNSTREAM_CONNECTIONS),
            downstream_closed_total: counter_vec(r, &DOWNSTREAM_CLOSED_TOTAL),
            invalidations_total: counter(r, &INVALIDATIONS_TOTAL),
            grant_invalidations_total: counter_vec(r, &GRANT_INVALIDATIONS_TOTAL),
            grant_invalidation_mode: gauge_vec(r, &GRANT_INVALIDATION_MODE),
            revocations_total: counter_vec(r, &REVOCATIONS_TOTAL),
            revocation_entries: gauge(r, &REVOCATION_ENTRIES),
            revocation_requests_refused_total: counter_vec(r, &REVOCATION_REQUESTS_REFUSED_TOTAL),
            admin_writes_total: counter_vec(r, &ADMIN_WRITES_TOTAL),
            registry,
        }
    }

    /// Prometheus text exposition of every realmgate series.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding our own registry cannot fail short of an I/O error on a Vec, which cannot happen.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Shorthand for [`METRICS`].
pub fn metrics() -> &'static Metrics {
    &METRICS
}

// ---------------------------------------------------------------------------------------------
// The catalog: every series, in the order of `Metrics`'s fields.
// ---------------------------------------------------------------------------------------------

const REQUESTS_TOTAL: Series = Series {
    name: "realmgate_requests_total",
    help: "Requests answered, by tenant and HTTP status.",
    labels: &["tenant", "status"],
};
const REQUEST_DURATION: Series = Series {
    name: "realmgate_request_duration_seconds",
    help: "Time from request head to the end of the response, gateway and upstream.",
    labels: &[],
};
const UPSTREAM_DURATION: Series = Series {
    name: "realmgate_upstream_duration_seconds",
    help: "Time from upstream connect to the end of the upstream response.",
    labels: &[],
};
const UPSTREAM_ERRORS_TOTAL: Series = Series {
    name: "realmgate_upstream_errors_total",
    help: "Failed upstream exchanges, by kind (connect, timeout, other).",
    labels: &["kind"],
};
const REJECTIONS_TOTAL: Series = Series {
    name: "realmgate_rejections_total",
    help: "Requests refused by the gateway itself, by stable error code.",
    labels: &["code"],
};
const JWKS_FETCH_TOTAL: Series = Series {
    name: "realmgate_jwks_fetch_total",
    help: "JWKS/discovery fetches, by realm and result.",
    labels: &["realm", "result"],
};
const JWKS_FETCH_DENIED_TOTAL: Series = Series {
    name: "realmgate_jwks_fetch_denied_total",
    help: "Request-caused JWKS fetches refused by a process-wide rate bound, by reason.",
    labels: &["reason"],
};
const JWKS_KEYS: Series = Series {
    name: "realmgate_jwks_keys",
    help: "Usable signing keys held, by realm.",
    labels: &["realm"],
};
const JWKS_AGE_SECONDS: Series = Series {
    name: "realmgate_jwks_age_seconds",
    help: "Seconds since the realm's keys were last fetched successfully.",
    labels: &["realm"],
};
const STATIC_REALMS: Series = Series {
    name: "realmgate_static_realms",
    help: "Static realms by health: usable keys, first load pending, or unusable.",
    labels: &["state"],
};
const TOKEN_VERIFY_TOTAL: Series = Series {
    name: "realmgate_token_verify_total",
    help: "Token verifications, by tenant and result (ok or a reason code).",
    labels: &["tenant", "result"],
};
const TOKEN_CACHE_TOTAL: Series = Series {
    name: "realmgate_token_cache_total",
    help: "Verified-token cache lookups, by result (hit, miss, stale).",
    labels: &["result"],
};
const TOKEN_VERIFY_DURATION: Series = Series {
    name: "realmgate_token_verify_duration_seconds",
    help: "Time to authenticate a token, by cache outcome.",
    labels: &["cache"],
};
const PERMISSION_CACHE_TOTAL: Series = Series {
    name: "realmgate_permission_cache_total",
    help: "Effective-permission cache lookups, by result (hit, miss, expired).",
    labels: &["result"],
};
const REDIS_ERRORS_TOTAL: Series = Series {
    name: "realmgate_redis_errors_total",
    help: "Redis failures, by operation.",
    labels: &["op"],
};
const INVALID_GRANTS_TOTAL: Series = Series {
    name: "realmgate_invalid_grants_total",
    help: "Grants skipped because they are not valid resource.action.scope permissions, by source.",
    labels: &["source"],
};
const GRANT_LOADER_CALLS_TOTAL: Series = Series {
    name: "realmgate_grant_loader_calls_total",
    help: "Grant loader calls (Redis key absent), by loader and result.",
    labels: &["loader", "result"],
};
const GRANT_WRITE_BACKS_TOTAL: Series = Series {
    name: "realmgate_grant_write_backs_total",
    help: "Loader answers written back into Redis, by result.",
    labels: &["result"],
};
const GRANT_AGE_SECONDS: Series = Series {
    name: "realmgate_grant_age_seconds",
    help: "Age of the grant data a request was decided with (since its Redis or loader read); one use in 16 is sampled.",
    labels: &[],
};
const DECISIONS_TOTAL: Series = Series {
    name: "realmgate_decisions_total",
    help: "Authorization decisions, by tenant and decision.",
    labels: &["tenant", "decision"],
};
const SHADOW_DECISIONS_TOTAL: Series = Series {
    name: "realmgate_shadow_decisions_total",
    help: "Decisions taken in shadow mode (logged and counted, not enforced).",
    labels: &["decision"],
};
const CONFIG_RELOAD_TOTAL: Series = Series {
    name: "realmgate_config_reload_total",
    help: "Configuration reloads, by result.",
    labels: &["result"],
};
const DOWNSTREAM_CONNECTIONS: Series = Series {
    name: "realmgate_downstream_connections",
    help: "Open client connections.",
    labels: &[],
};
const DOWNSTREAM_CLOSED_TOTAL: Series = Series {
    name: "realmgate_downstream_closed_total",
    help: "Client connections closed by the gateway, by reason.",
    labels: &["reason"],
};
const INVALIDATIONS_TOTAL: Series = Series {
    name: "realmgate_invalidations_total",
    help: "Invalidation messages received on the Redis channel.",
    labels: &[],
};
const GRANT_INVALIDATIONS_TOTAL: Series = Series {
    name: "realmgate_grant_invalidations_total",
    help: "Grant invalidations applied, by source.",
    labels: &["source"],
};
const GRANT_INVALIDATION_MODE: Series = Series {
    name: "realmgate_grant_invalidation_mode",
    help: "1 for the active grant invalidation mode.",
    labels: &["mode"],
};
const REVOCATIONS_TOTAL: Series = Series {
    name: "realmgate_revocations_total",
    help: "Revocations taken (sessions, subjects, not-before), by source.",
    labels: &["source"],
};
const REVOCATION_ENTRIES: Series = Series {
    name: "realmgate_revocation_entries",
    help: "Revocation entries held (sid, sub and not-before).",
    labels: &[],
};
const REVOCATION_REQUESTS_REFUSED_TOTAL: Series = Series {
    name: "realmgate_revocation_requests_refused_total",
    help: "Back-channel logout and not-before requests refused, by reason.",
    labels: &["reason"],
};
const ADMIN_WRITES_TOTAL: Series = Series {
    name: "realmgate_admin_writes_total",
    help: "Operator writes on the admin write listener, by result.",
    labels: &["result"],
};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn bounded_labels_cap() {
        let l = BoundedLabels::new(2);
        assert_eq!(l.label("a"), "a");
        assert_eq!(l.label("b"), "b");
        assert_eq!(l.label("c"), OTHER);
        assert_eq!(l.label("a"), "a");
        l.set_cap(3);
        assert_eq!(l.label("c"), "c");
    }

    #[test]
    fn exposition_has_conventional_names() {
        let m = metrics();
        m.requests_total.with_label_values(&["acme", "200"]).inc();
        m.request_duration.observe(0.000_02);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains("realmgate_requests_total{status=\"200\",tenant=\"acme\"}"));
        assert!(text.contains("realmgate_request_duration_seconds_bucket{le=\"0.00001\"}"));
    }
}
