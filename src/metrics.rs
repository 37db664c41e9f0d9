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

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("static metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()))
        .expect("static metric definition");
    registry
        .register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        let token_verify_duration = HistogramVec::new(
            HistogramOpts::new(
                "realmgate_token_verify_duration_seconds",
                "Time to authenticate a token, by cache outcome.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["cache"],
        )
        .expect("static metric definition");
        registry
            .register(Box::new(token_verify_duration.clone()))
            .expect("metric registered once");
        Self {
            tenants: BoundedLabels::new(100),
            realms: BoundedLabels::new(100),
            requests_total: counter_vec(
                r,
                "realmgate_requests_total",
                "Requests answered, by tenant and HTTP status.",
                &["tenant", "status"],
            ),
            request_duration: histogram(
                r,
                "realmgate_request_duration_seconds",
                "Time from request head to the end of the response, gateway and upstream.",
            ),
            upstream_duration: histogram(
                r,
                "realmgate_upstream_duration_seconds",
                "Time from upstream connect to the end of the upstream response.",
            ),
            upstream_errors_total: counter_vec(
                r,
                "realmgate_upstream_errors_total",
                "Failed upstream exchanges, by kind (connect, timeout, other).",
                &["kind"],
            ),
            rejections_total: counter_vec(
                r,
                "realmgate_rejections_total",
                "Requests refused by the gateway itself, by stable error code.",
                &["code"],
            ),
            jwks_fetch_total: counter_vec(
                r,
                "realmgate_jwks_fetch_total",
                "JWKS/discovery fetches, by realm and result.",
                &["realm", "result"],
            ),
            jwks_fetch_denied_total: counter_vec(
                r,
                "realmgate_jwks_fetch_denied_total",
                "Request-caused JWKS fetches refused by a process-wide rate bound, by reason.",
                &["reason"],
            ),
            jwks_keys: gauge_vec(
                r,
                "realmgate_jwks_keys",
                "Usable signing keys held, by realm.",
                &["realm"],
            ),
            jwks_age_seconds: gauge_vec(
                r,
                "realmgate_jwks_age_seconds",
                "Seconds since the realm's keys were last fetched successfully.",
                &["realm"],
            ),
            static_realms: gauge_vec(
                r,
                "realmgate_static_realms",
                "Static realms by health: usable keys, first load pending, or unusable.",
                &["state"],
            ),
            token_verify_total: counter_vec(
                r,
                "realmgate_token_verify_total",
                "Token verifications, by tenant and result (ok or a reason code).",
                &["tenant", "result"],
            ),
            token_cache_total: counter_vec(
                r,
                "realmgate_token_cache_total",
                "Verified-token cache lookups, by result (hit, miss, stale).",
                &["result"],
            ),
            token_verify_duration,
            permission_cache_total: counter_vec(
                r,
                "realmgate_permission_cache_total",
                "Effective-permission cache lookups, by result (hit, miss, expired).",
                &["result"],
            ),
            redis_errors_total: counter_vec(
                r,
                "realmgate_redis_errors_total",
                "Redis failures, by operation.",
                &["op"],
            ),
            invalid_grants_total: counter_vec(
                r,
                "realmgate_invalid_grants_total",
                "Grants skipped because they are not valid resource.action.scope permissions, by source.",
                &["source"],
            ),
            grant_loader_calls_total: counter_vec(
                r,
                "realmgate_grant_loader_calls_total",
                "Grant loader calls (Redis key absent), by loader and result.",
                &["loader", "result"],
            ),
            grant_write_backs_total: counter_vec(
                r,
                "realmgate_grant_write_backs_total",
                "Loader answers written back into Redis, by result.",
                &["result"],
            ),
            grant_age_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "realmgate_grant_age_seconds",
                        "Age of the grant data a request was decided with (since its Redis or loader read); one use in 16 is sampled.",
                    )
                    .buckets(GRANT_AGE_BUCKETS.to_vec()),
                )
                .expect("static metric definition");
                r.register(Box::new(h.clone()))
                    .expect("metric registered once");
                h
            },
            decisions_total: counter_vec(
                r,
                "realmgate_decisions_total",
                "Authorization decisions, by tenant and decision.",
                &["tenant", "decision"],
            ),
            shadow_decisions_total: counter_vec(
                r,
                "realmgate_shadow_decisions_total",
                "Decisions taken in shadow mode (logged and counted, not enforced).",
                &["decision"],
            ),
            config_reload_total: counter_vec(
                r,
                "realmgate_config_reload_total",
                "Configuration reloads, by result.",
                &["result"],
            ),
            grant_invalidations_total: counter_vec(
                r,
                "realmgate_grant_invalidations_total",
                "Grant invalidations applied, by source.",
                &["source"],
            ),
            grant_invalidation_mode: gauge_vec(
                r,
                "realmgate_grant_invalidation_mode",
                "1 for the active grant invalidation mode.",
                &["mode"],
            ),
            downstream_connections: {
                let g = IntGauge::new(
                    "realmgate_downstream_connections",
                    "Open client connections.",
                )
                .expect("static metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            downstream_closed_total: counter_vec(
                r,
                "realmgate_downstream_closed_total",
                "Client connections closed by the gateway, by reason.",
                &["reason"],
            ),
            invalidations_total: {
                let c = IntCounter::new(
                    "realmgate_invalidations_total",
                    "Invalidation messages received on the Redis channel.",
                )
                .expect("static metric definition");
                registry
                    .register(Box::new(c.clone()))
                    .expect("metric registered once");
                c
            },
            revocations_total: counter_vec(
                r,
                "realmgate_revocations_total",
                "Revocations taken (sessions, subjects, not-before), by source.",
                &["source"],
            ),
            revocation_entries: {
                let g = IntGauge::new(
                    "realmgate_revocation_entries",
                    "Revocation entries held (sid, sub and not-before).",
                )
                .expect("static metric definition");
                registry
                    .register(Box::new(g.clone()))
                    .expect("metric registered once");
                g
            },
            revocation_requests_refused_total: counter_vec(
                r,
                "realmgate_revocation_requests_refused_total",
                "Back-channel logout and not-before requests refused, by reason.",
                &["reason"],
            ),
            admin_writes_total: counter_vec(
                r,
                "realmgate_admin_writes_total",
                "Operator writes on the admin write listener, by result.",
                &["result"],
            ),
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
