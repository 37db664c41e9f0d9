//! Run-time permission grants from Redis, compiled once per identity and cached.
//!
//! The effective permission set of `(tenant, sub, roles)` is the union of config role maps,
//! token claims and two Redis sets in the layout the backends already use:
//!
//! - `{prefix}tenant:{tenant}:user:{sub}:permissions` (per-user grants)
//! - `{prefix}tenant:{tenant}:role:{role}:permissions` (run-time role grants, one per role)
//!
//! This module knows nothing about the permission grammar: the caller passes a `compile`
//! function that turns a [`GrantSource`] (plus whatever it captures from config and the token)
//! into its compiled value `T`, and gets back a shared `Arc<T>`.
//!
//! # Cache
//! Bound: at most `cache_capacity` identities (entries, not bytes: size `T` accordingly).
//! Eviction: quick_cache's S3-FIFO when full; an entry is never served past its TTL
//! (`cache_ttl`, or `degraded_ttl` if it was compiled while Redis was unavailable), nor after an
//! invalidation that covers it. Invalidation is O(1): every entry records the sum of the
//! generation counters of its tenant, user and roles (16 384 hashed slots plus one global
//! counter); a message bumps one counter and every entry that includes it stops matching.
//! Slot collisions only cause extra reloads. Invalidated entries stay in memory until evicted
//! or replaced, so [`GrantStore::len`] counts them.
//!
//! # Invalidation
//! [`GrantStore::run_subscriber`] subscribes to `channel` and applies each message at once:
//! `tenant:{t}:user:{sub}`, `tenant:{t}:role:{role}`, `tenant:{t}` or `*`. Publishers must
//! write Redis *before* publishing. A load that raced with an invalidation is never served
//! again, because the generation snapshot is taken before Redis is read. Every time the
//! subscription is (re-)established the whole cache is cleared: messages published while we
//! were not subscribed are lost, and clearing also drops sets compiled while Redis was down.
//! While the subscriber is disconnected, staleness is bounded by `cache_ttl`.
//!
//! # Redis failures
//! Redis never causes an error for the caller. A miss waits at most `command_timeout` (connect
//! wait included); on failure the set is compiled from [`GrantSource::Unavailable`] (Redis-only
//! grants fail closed) and cached for `degraded_ttl`. After a failure the link is marked down
//! with jittered exponential backoff (100 ms .. 5 s); until it elapses misses do not touch
//! Redis at all, so a dead Redis costs requests nothing. Then one miss probes (connect + PING)
//! while the others keep degrading; the backoff only resets after a successful read (or when
//! the subscriber reaches Redis again). A healthy connection that drops (idle timeout, failover)
//! is replaced at once, within the same request's timeout. Connections are created lazily on the
//! runtime that first needs them (the command connection on the request runtime, the pub/sub
//! connection inside [`GrantStore::run_subscriber`]), never at construction.
//!
//! Cached sets also embed what the caller's `compile` captured from config: call
//! [`GrantStore::clear`] after a config reload that changes role maps.
//!
//! # Metrics
//! `permission_cache_total{result}`: `hit`, `miss`, `expired` partition lookups; `degraded`
//! counts sets compiled without Redis. `redis_errors_total{op}`: `connect`, `load`, `smembers`
//! (a key that is not a set), `subscribe`. `invalid_grants_total{source="redis"}`: members
//! dropped before `compile` (non-UTF-8 or over [`MAX_MEMBER_LEN`]). `invalidations_total`:
//! messages received, understood or not.

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prometheus::IntCounter;
use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::UnitWeighter;
use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::metrics::metrics;

/// Members accepted per Redis set; the rest are ignored (and logged). A permission set this
/// large is an operator error, not something to compile on the request path.
pub const MAX_MEMBERS_PER_KEY: usize = 10_000;
/// Longest grant string accepted from Redis, in bytes; longer members are skipped.
pub const MAX_MEMBER_LEN: usize = 1024;
/// Longest tenant / sub / role accepted in a Redis key, in bytes.
pub const MAX_KEY_PART_LEN: usize = 512;
/// Role keys read per identity; roles beyond this get no Redis grants (fail closed).
pub const MAX_ROLE_KEYS: usize = 256;

const GENERATION_SLOTS: usize = 16_384;
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Redis and cache settings for the grant store.
#[derive(Clone)]
pub struct GrantSettings {
    /// `redis://[user:password@]host:port[/db]` (or `unix://`).
    pub url: String,
    /// Upper bound for a cache miss's Redis work (waiting for a connection included).
    pub command_timeout: Duration,
    /// Upper bound for establishing a connection (runs in the background; requests wait at most
    /// `command_timeout` for it).
    pub connect_timeout: Duration,
    pub cache_ttl: Duration,
    pub cache_capacity: usize,
    /// How long a set compiled WITHOUT Redis (Redis down or slow) is cached.
    pub degraded_ttl: Duration,
    /// Pub/sub channel carrying invalidation messages.
    pub channel: String,
    /// Prepended to every key (not to messages), for a Redis shared with other applications.
    pub key_prefix: String,
    /// How often the subscriber pings its connection, so a silently dead link is noticed.
    pub ping_interval: Duration,
}

impl Default for GrantSettings {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".into(),
            command_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(1),
            cache_ttl: Duration::from_secs(60),
            cache_capacity: 100_000,
            degraded_ttl: Duration::from_secs(5),
            channel: "realmgate:invalidate".into(),
            key_prefix: String::new(),
            ping_interval: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for GrantSettings {
    /// Redacts credentials in the URL: settings get logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantSettings")
            .field("url", &redact_url(&self.url))
            .field("command_timeout", &self.command_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_capacity", &self.cache_capacity)
            .field("degraded_ttl", &self.degraded_ttl)
            .field("channel", &self.channel)
            .field("key_prefix", &self.key_prefix)
            .field("ping_interval", &self.ping_interval)
            .finish()
    }
}

fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme + 3 => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Makes aws-lc-rs the process-wide rustls provider, which the redis crate's `rediss://`
/// connections use: with both aws-lc-rs and ring in the dependency tree rustls cannot choose
/// one itself and would panic at the first TLS connect. Pingora and reqwest pass their
/// providers explicitly, so they are unaffected. A provider installed earlier is kept.
pub fn install_tls_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Settings that cannot work; reported at config load, never on the request path.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("grants.redis.url is not a valid Redis URL ({0})")]
    InvalidUrl(String),
    #[error("grants.{field}: {reason}")]
    InvalidSetting {
        field: &'static str,
        reason: &'static str,
    },
}

impl GrantError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidUrl(_) => "grants_invalid_url",
            Self::InvalidSetting { .. } => "grants_invalid_setting",
        }
    }
}

/// Grant strings as stored in Redis, unvalidated: the compile function owns the grammar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawGrants {
    /// Members of the user's set.
    pub user: Vec<String>,
    /// Members of each role's set, for every (distinct, well-formed) role that was looked up.
    pub roles: Vec<(String, Vec<String>)>,
}

/// What Redis contributed to a compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantSource {
    /// Redis answered (sets may be empty).
    Redis(RawGrants),
    /// Redis is down or slow: compile from config and token only. The result is cached for
    /// `degraded_ttl` only.
    Unavailable,
    /// No Redis configured.
    Disabled,
}

/// Pre-resolved counter handles: `with_label_values` hashes and locks, too slow per request.
struct Counters {
    hit: IntCounter,
    miss: IntCounter,
    expired: IntCounter,
    degraded: IntCounter,
    err_connect: IntCounter,
    err_load: IntCounter,
    err_smembers: IntCounter,
    err_subscribe: IntCounter,
    invalid_redis: IntCounter,
    invalidations: IntCounter,
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
    }
});

fn counters() -> &'static Counters {
    &COUNTERS
}

/// The cache key is already a keyed 64-bit hash; hashing it again would only cost time.
#[derive(Clone, Copy, Default)]
struct PreHashed;

struct PreHasher(u64);

impl BuildHasher for PreHashed {
    type Hasher = PreHasher;
    fn build_hasher(&self) -> PreHasher {
        PreHasher(0)
    }
}

impl Hasher for PreHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Entry<T> {
    tenant: Box<str>,
    sub: Box<str>,
    roles: Box<[Arc<str>]>,
    epoch: u64,
    claim: Box<[Box<str>]>,
    value: Arc<T>,
    expires: Instant,
    /// Generation slots of tenant, user and each role, in that order.
    slots: Box<[u16]>,
    /// Sum of the global and slot generations when Redis was about to be read.
    generation: u64,
}

impl<T> Entry<T> {
    fn matches(&self, k: &GrantKey<'_>) -> bool {
        self.epoch == k.epoch
            && *self.tenant == *k.tenant
            && *self.sub == *k.sub
            && self.roles.len() == k.roles.len()
            && self
                .roles
                .iter()
                .zip(k.roles)
                .all(|(a, b)| Arc::ptr_eq(a, b) || **a == **b)
            && *self.claim == *k.claim
    }
}

type EntryCache<T> =
    Cache<u64, Arc<Entry<T>>, UnitWeighter, PreHashed, DefaultLifecycle<u64, Arc<Entry<T>>>>;

/// Effective permission sets per `(tenant, sub, roles)`, loaded from Redis and cached.
/// Shared via `Arc`; see the module docs for bounds, invalidation and failure behaviour.
pub struct GrantStore<T> {
    cache: EntryCache<T>,
    hasher: ahash::RandomState,
    generations: Box<[AtomicU64]>,
    global: AtomicU64,
    ttl: Duration,
    degraded_ttl: Duration,
    redis: Option<Arc<Link>>,
    subscribed: AtomicBool,
}

/// What a compiled value depends on, and so what it is cached under.
#[derive(Debug, Clone, Copy)]
pub struct GrantKey<'a> {
    pub tenant: &'a str,
    /// Empty when the value does not depend on the user (see [`GrantStore::has_user_grants`]).
    pub sub: &'a str,
    /// Order is part of the key (same token, same order).
    pub roles: &'a [Arc<str>],
    /// The catalog epoch of the config the value is compiled with: a value compiled from a
    /// snapshot a reload replaced is never served to a request on the new one (its ids mean
    /// other permissions there), whatever order the reload's clear and the insert ran in.
    pub epoch: u64,
    /// The token's permission claim: a down-scoped token never shares a set with a wider one.
    pub claim: &'a [Box<str>],
}

impl<'a> GrantKey<'a> {
    /// A key with no epoch and no claim (callers whose values do not depend on them).
    pub fn new(tenant: &'a str, sub: &'a str, roles: &'a [Arc<str>]) -> Self {
        Self {
            tenant,
            sub,
            roles,
            epoch: 0,
            claim: &[],
        }
    }
}

impl<T> fmt::Debug for GrantStore<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrantStore")
            .field("entries", &self.cache.len())
            .field("redis", &self.redis.is_some())
            .finish_non_exhaustive()
    }
}

impl<T: Send + Sync + 'static> GrantStore<T> {
    /// `None`: no Redis; compiles see [`GrantSource::Disabled`] and are cached with the default
    /// TTL and capacity. Does not connect (connections are made on first use).
    pub fn new(settings: Option<GrantSettings>) -> Result<Arc<Self>, GrantError> {
        let (s, redis) = match settings {
            None => (GrantSettings::default(), None),
            Some(s) => {
                let link = Link::new(&s)?;
                (s, Some(Arc::new(link)))
            }
        };
        if s.cache_capacity == 0 {
            return Err(GrantError::InvalidSetting {
                field: "cache_capacity",
                reason: "must be at least 1",
            });
        }
        if s.cache_ttl.is_zero() {
            return Err(GrantError::InvalidSetting {
                field: "cache_ttl",
                reason: "must be positive",
            });
        }
        let capacity = s.cache_capacity;
        Ok(Arc::new(Self {
            cache: Cache::with(
                capacity,
                capacity as u64,
                UnitWeighter,
                PreHashed,
                DefaultLifecycle::default(),
            ),
            hasher: ahash::RandomState::new(),
            generations: (0..GENERATION_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            global: AtomicU64::new(0),
            ttl: s.cache_ttl,
            degraded_ttl: s.degraded_ttl,
            redis,
            subscribed: AtomicBool::new(false),
        }))
    }

    /// The effective set for this identity: cached, or loaded from Redis (bounded by
    /// `command_timeout`) and compiled. Never fails because of Redis. Concurrent misses for the
    /// same key share one load.
    pub async fn effective<F>(&self, k: &GrantKey<'_>, compile: F) -> Arc<T>
    where
        F: FnOnce(&GrantSource) -> T,
    {
        let key = self
            .hasher
            .hash_one((k.epoch, k.tenant, k.sub, k.roles, k.claim));
        let c = counters();
        let stale = match self.cache.get(&key) {
            Some(e) if e.matches(k) => {
                if self.is_fresh(&e, Instant::now()) {
                    c.hit.inc();
                    return Arc::clone(&e.value);
                }
                c.expired.inc();
                Some(e)
            }
            // A different identity with the same 64-bit hash: replace it.
            other => {
                c.miss.inc();
                other
            }
        };
        self.load(key, stale, k, compile).await
    }

    async fn load<F>(
        &self,
        key: u64,
        mut stale: Option<Arc<Entry<T>>>,
        k: &GrantKey<'_>,
        compile: F,
    ) -> Arc<T>
    where
        F: FnOnce(&GrantSource) -> T,
    {
        // A few rounds only: each retry means an invalidation raced the load we waited for.
        for _ in 0..3 {
            if let Some(old) = stale.take() {
                self.cache.remove_if(&key, |cur| Arc::ptr_eq(cur, &old));
            }
            match self.cache.get_value_or_guard_async(&key).await {
                Ok(e) => {
                    if e.matches(k) && self.is_fresh(&e, Instant::now()) {
                        return Arc::clone(&e.value);
                    }
                    stale = Some(e);
                }
                Err(guard) => {
                    let entry = self.build(k, compile).await;
                    let value = Arc::clone(&entry.value);
                    // Err means clear() removed the placeholder meanwhile: serve, don't cache.
                    let _ = guard.insert(entry);
                    return value;
                }
            }
        }
        let entry = self.build(k, compile).await;
        Arc::clone(&entry.value)
    }

    async fn build<F>(&self, k: &GrantKey<'_>, compile: F) -> Arc<Entry<T>>
    where
        F: FnOnce(&GrantSource) -> T,
    {
        let &GrantKey {
            tenant,
            sub,
            roles,
            epoch,
            claim,
        } = k;
        let slots = self.slots(tenant, sub, roles);
        // Before reading Redis: an invalidation arriving during the read must make this stale.
        let generation = self.generation(&slots);
        let (source, ttl) = match &self.redis {
            None => (GrantSource::Disabled, self.ttl),
            Some(link) => match link.load(tenant, sub, roles).await {
                Some(raw) => (GrantSource::Redis(raw), self.ttl),
                None => {
                    counters().degraded.inc();
                    (GrantSource::Unavailable, self.degraded_ttl)
                }
            },
        };
        let value = Arc::new(compile(&source));
        Arc::new(Entry {
            tenant: tenant.into(),
            sub: sub.into(),
            roles: roles.into(),
            epoch,
            claim: claim.into(),
            value,
            expires: Instant::now() + ttl,
            slots,
            generation,
        })
    }

    fn is_fresh(&self, e: &Entry<T>, now: Instant) -> bool {
        now < e.expires && self.generation(&e.slots) == e.generation
    }

    fn generation(&self, slots: &[u16]) -> u64 {
        slots
            .iter()
            .fold(self.global.load(Ordering::Acquire), |acc, &s| {
                acc.wrapping_add(
                    self.generations
                        .get(usize::from(s))
                        .map_or(0, |g| g.load(Ordering::Acquire)),
                )
            })
    }

    fn slot_of<H: std::hash::Hash>(&self, what: H) -> u16 {
        // GENERATION_SLOTS is a power of two below 2^16, so the mask fits in u16.
        (self.hasher.hash_one(what) & (GENERATION_SLOTS as u64 - 1)) as u16
    }

    fn tenant_slot(&self, tenant: &str) -> u16 {
        self.slot_of((b't', tenant))
    }
    fn user_slot(&self, tenant: &str, sub: &str) -> u16 {
        self.slot_of((b'u', tenant, sub))
    }
    fn role_slot(&self, tenant: &str, role: &str) -> u16 {
        self.slot_of((b'r', tenant, role))
    }

    fn slots(&self, tenant: &str, sub: &str, roles: &[Arc<str>]) -> Box<[u16]> {
        let mut v = Vec::with_capacity(2 + roles.len());
        v.push(self.tenant_slot(tenant));
        v.push(self.user_slot(tenant, sub));
        v.extend(roles.iter().map(|r| self.role_slot(tenant, r)));
        v.into_boxed_slice()
    }

    fn bump(&self, slot: u16) {
        if let Some(g) = self.generations.get(usize::from(slot)) {
            g.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Applies one invalidation message (see module docs for the grammar). Returns false, and
    /// logs, for a message it does not understand. Every call counts in `invalidations_total`.
    pub fn invalidate(&self, msg: &str) -> bool {
        counters().invalidations.inc();
        match Invalidation::parse(msg) {
            Some(Invalidation::All) => self.clear(),
            Some(Invalidation::Tenant(t)) => self.bump(self.tenant_slot(t)),
            Some(Invalidation::User(t, sub)) => self.bump(self.user_slot(t, sub)),
            Some(Invalidation::Role(t, role)) => self.bump(self.role_slot(t, role)),
            None => {
                warn!(message = %msg.escape_debug(), "ignoring unknown grant invalidation message");
                return false;
            }
        }
        debug!(message = %msg.escape_debug(), "grant invalidation applied");
        true
    }

    /// Drops every cached set (and makes in-flight loads uncacheable).
    pub fn clear(&self) {
        self.global.fetch_add(1, Ordering::AcqRel);
        self.cache.clear();
    }

    /// Whether sets can differ between users with the same tenant and roles (Redis holds
    /// per-user grants). When not, callers pass an empty `sub` to [`GrantStore::effective`] so
    /// all such users share one compiled set: 100 000 cached tokens, a handful of sets.
    pub fn has_user_grants(&self) -> bool {
        self.redis.is_some()
    }

    /// Entries held, including invalidated ones not yet evicted or replaced.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Whether the invalidation subscription is currently established (for readiness/health).
    pub fn subscriber_connected(&self) -> bool {
        self.subscribed.load(Ordering::Acquire)
    }

    /// Subscribes to the invalidation channel and applies messages until `shutdown` turns true
    /// (or its sender is dropped). Reconnects with backoff; clears the cache on every
    /// successful (re)subscription because messages may have been missed. Returns at once
    /// without Redis. Run it on its own (background) runtime: the pub/sub connection is made here.
    pub async fn run_subscriber(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(link) = self.redis.clone() else {
            debug!("no redis configured; grant invalidation subscriber not started");
            return;
        };
        let mut failures = 0u32;
        loop {
            if *shutdown.borrow() {
                break;
            }
            match self.subscription(&link, &mut shutdown).await {
                Session::Shutdown => break,
                Session::Failed { was_subscribed } => {
                    self.subscribed.store(false, Ordering::Release);
                    if was_subscribed {
                        failures = 0;
                    }
                    failures = failures.saturating_add(1);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
            }
        }
        self.subscribed.store(false, Ordering::Release);
        debug!("grant invalidation subscriber stopped");
    }

    async fn subscription(&self, link: &Link, shutdown: &mut watch::Receiver<bool>) -> Session {
        let c = counters();
        let failed = |what: &str, err: &dyn fmt::Display| {
            c.err_subscribe.inc();
            warn!(error = %err, "grant invalidation subscriber: {what} failed");
            Session::Failed {
                was_subscribed: false,
            }
        };
        let pubsub = match tokio::time::timeout(
            link.connect_timeout,
            link.client.get_async_pubsub(),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return failed("connect", &e),
            Err(_) => return failed("connect", &"timed out"),
        };
        let (mut sink, mut stream) = pubsub.split();
        match tokio::time::timeout(link.connect_timeout, sink.subscribe(&link.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed("subscribe", &e),
            Err(_) => return failed("subscribe", &"timed out"),
        }
        self.subscribed.store(true, Ordering::Release);
        // Redis answers again: let the next miss reconnect instead of degrading (and caching
        // that) until the command link's backoff runs out.
        link.retry_now();
        self.clear();
        info!(channel = %link.channel, "subscribed to grant invalidations; grant cache cleared");

        let lost = |why: &dyn fmt::Display| {
            c.err_subscribe.inc();
            warn!(reason = %why, "grant invalidation subscription lost; will reconnect");
            Session::Failed {
                was_subscribed: true,
            }
        };
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + link.ping_interval,
            link.ping_interval,
        );
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Session::Shutdown;
                    }
                }
                msg = stream.next() => match msg {
                    Some(msg) => self.invalidate_bytes(msg.get_payload_bytes()),
                    None => return lost(&"connection closed"),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(link.connect_timeout, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return lost(&e),
                        Err(_) => return lost(&"ping timed out"),
                    }
                }
            }
        }
    }

    fn invalidate_bytes(&self, payload: &[u8]) {
        match std::str::from_utf8(payload) {
            Ok(msg) => {
                self.invalidate(msg);
            }
            Err(_) => {
                counters().invalidations.inc();
                warn!(
                    len = payload.len(),
                    "ignoring non-UTF-8 grant invalidation message"
                );
            }
        }
    }
}

enum Session {
    Shutdown,
    Failed { was_subscribed: bool },
}

/// Runs [`GrantStore::run_subscriber`] as a Pingora background service, so the pub/sub
/// connection lives on that service's runtime.
pub struct GrantSubscriber<T>(pub Arc<GrantStore<T>>);

#[async_trait]
impl<T: Send + Sync + 'static> BackgroundService for GrantSubscriber<T> {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.0).run_subscriber(shutdown).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Invalidation<'a> {
    All,
    Tenant(&'a str),
    User(&'a str, &'a str),
    Role(&'a str, &'a str),
}

impl<'a> Invalidation<'a> {
    fn parse(msg: &'a str) -> Option<Self> {
        let msg = msg.trim();
        if msg == "*" {
            return Some(Self::All);
        }
        let rest = msg.strip_prefix("tenant:")?;
        let (tenant, rest) = match rest.split_once(':') {
            None => return valid_tenant(rest).then_some(Self::Tenant(rest)),
            Some(parts) => parts,
        };
        if !valid_tenant(tenant) {
            return None;
        }
        if let Some(sub) = rest.strip_prefix("user:") {
            return valid_part(sub).then_some(Self::User(tenant, sub));
        }
        if let Some(role) = rest.strip_prefix("role:") {
            return valid_part(role).then_some(Self::Role(tenant, role));
        }
        None
    }
}

/// A value we are willing to put into a Redis key.
fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KEY_PART_LEN
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Tenants also exclude `:`, which keeps `tenant:{t}:user:` / `tenant:{t}:role:` unambiguous.
fn valid_tenant(s: &str) -> bool {
    valid_part(s) && !s.contains(':')
}

fn user_key(prefix: &str, tenant: &str, sub: &str) -> Option<String> {
    (valid_tenant(tenant) && valid_part(sub))
        .then(|| format!("{prefix}tenant:{tenant}:user:{sub}:permissions"))
}

fn role_key(prefix: &str, tenant: &str, role: &str) -> Option<String> {
    (valid_tenant(tenant) && valid_part(role))
        .then(|| format!("{prefix}tenant:{tenant}:role:{role}:permissions"))
}

/// Converts an SMEMBERS reply, skipping what cannot be a grant string and capping the count.
fn members(reply: Value, key: &str) -> Vec<String> {
    let items = match reply {
        Value::Array(items) | Value::Set(items) => items,
        Value::Nil => return Vec::new(),
        other => {
            warn!(key, reply = ?other, "unexpected SMEMBERS reply; no grants from this key");
            return Vec::new();
        }
    };
    let total = items.len();
    let mut out = Vec::with_capacity(total.min(MAX_MEMBERS_PER_KEY));
    let mut skipped = 0usize;
    for item in items {
        if out.len() == MAX_MEMBERS_PER_KEY {
            break;
        }
        let text = match item {
            Value::BulkString(bytes) if bytes.len() <= MAX_MEMBER_LEN => {
                String::from_utf8(bytes).ok()
            }
            Value::SimpleString(s) if s.len() <= MAX_MEMBER_LEN => Some(s),
            _ => None,
        };
        match text {
            Some(s) => out.push(s),
            None => skipped += 1,
        }
    }
    if skipped > 0 {
        counters().invalid_redis.inc_by(skipped as u64);
        warn!(key, skipped, "skipped non-UTF-8 or oversized grant members");
    }
    if total > MAX_MEMBERS_PER_KEY {
        warn!(
            key,
            total,
            cap = MAX_MEMBERS_PER_KEY,
            "grant set exceeds the member cap; the rest is ignored"
        );
    }
    out
}

/// Jittered exponential backoff: 100 ms, 200 ms, ... capped at 5 s, each +-20 %.
fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// The command connection and its health. The lock guards only state transitions and is never
/// held across `.await`.
struct Link {
    client: redis::Client,
    channel: String,
    key_prefix: String,
    command_timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    state: parking_lot::Mutex<LinkState>,
}

struct LinkState {
    conn: Conn,
    failures: u32,
    next_id: u64,
}

enum Conn {
    Idle,
    /// A connect task is running; it flips the flag when done.
    Connecting(watch::Receiver<bool>),
    Up {
        conn: MultiplexedConnection,
        id: u64,
    },
    /// Known down: no attempt before `retry_at`.
    Down {
        retry_at: Instant,
    },
}

impl LinkState {
    fn fail(&mut self) {
        self.failures = self.failures.saturating_add(1);
        self.conn = Conn::Down {
            retry_at: Instant::now() + backoff(self.failures),
        };
    }
}

enum Wait {
    Done,
    Timeout,
    Vanished,
}

impl Link {
    fn new(s: &GrantSettings) -> Result<Self, GrantError> {
        let positive = |d: Duration, field: &'static str| {
            if d.is_zero() {
                Err(GrantError::InvalidSetting {
                    field,
                    reason: "must be positive",
                })
            } else {
                Ok(())
            }
        };
        positive(s.command_timeout, "command_timeout")?;
        positive(s.connect_timeout, "connect_timeout")?;
        positive(s.degraded_ttl, "degraded_ttl")?;
        positive(s.ping_interval, "ping_interval")?;
        if s.channel.is_empty() {
            return Err(GrantError::InvalidSetting {
                field: "channel",
                reason: "must not be empty",
            });
        }
        if s.key_prefix
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(GrantError::InvalidSetting {
                field: "key_prefix",
                reason: "must not contain whitespace or control characters",
            });
        }
        if s.url.starts_with("rediss://") {
            install_tls_provider();
        }
        // The URL may carry a password: report the kind of problem, not the URL.
        let client = redis::Client::open(s.url.as_str())
            .map_err(|e| GrantError::InvalidUrl(e.category().to_owned()))?;
        Ok(Self {
            client,
            channel: s.channel.clone(),
            key_prefix: s.key_prefix.clone(),
            command_timeout: s.command_timeout,
            connect_timeout: s.connect_timeout,
            ping_interval: s.ping_interval,
            state: parking_lot::Mutex::new(LinkState {
                conn: Conn::Idle,
                failures: 0,
                next_id: 0,
            }),
        })
    }

    /// A live connection, or None if Redis is known down or does not connect by `deadline`.
    async fn connection(
        self: &Arc<Self>,
        deadline: tokio::time::Instant,
    ) -> Option<(MultiplexedConnection, u64)> {
        loop {
            let mut rx = {
                let mut st = self.state.lock();
                match &st.conn {
                    Conn::Up { conn, id } => return Some((conn.clone(), *id)),
                    Conn::Down { retry_at } if Instant::now() < *retry_at => return None,
                    // Probing a failed Redis: one request (the one that started the probe)
                    // waits for it; the rest degrade at once instead of each paying a timeout.
                    Conn::Connecting(_) if st.failures > 0 => return None,
                    Conn::Connecting(rx) => rx.clone(),
                    Conn::Idle | Conn::Down { .. } => {
                        // The connection's driver task lives on this (the caller's) runtime.
                        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                            return None;
                        };
                        let (tx, rx) = watch::channel(false);
                        st.conn = Conn::Connecting(rx.clone());
                        runtime.spawn(Arc::clone(self).connect(tx));
                        rx
                    }
                }
            };
            let wait = match tokio::time::timeout_at(deadline, rx.wait_for(|done| *done)).await {
                Ok(Ok(_)) => Wait::Done,
                Ok(Err(_)) => Wait::Vanished,
                Err(_) => Wait::Timeout,
            };
            match wait {
                Wait::Done => continue,
                Wait::Timeout => return None,
                Wait::Vanished => {
                    // The connect task was dropped with its runtime: don't wait for it again.
                    let mut st = self.state.lock();
                    if matches!(&st.conn, Conn::Connecting(cur) if cur.same_channel(&rx)) {
                        st.fail();
                    }
                    return None;
                }
            }
        }
    }

    /// Connects and proves the server answers (a stopped Redis still accepts TCP connections).
    /// `failures` is only reset by a successful load, so a Redis that accepts connections but
    /// does not answer reads keeps backing off.
    async fn connect(self: Arc<Self>, done: watch::Sender<bool>) {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.connect_timeout));
        let attempt = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<Value>(&mut conn).await?;
            RedisResult::Ok(conn)
        };
        let result = match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timed out".to_owned()),
        };
        let failure = {
            let mut st = self.state.lock();
            match result {
                Ok(conn) => {
                    st.next_id += 1;
                    let id = st.next_id;
                    st.conn = Conn::Up { conn, id };
                    None
                }
                Err(error) => {
                    st.fail();
                    Some((st.failures, error))
                }
            }
        };
        match failure {
            None => debug!("redis connected for grants"),
            Some((failures, error)) => {
                counters().err_connect.inc();
                if failures == 1 {
                    warn!(%error, "redis connect failed; grants degrade to config and token");
                } else {
                    debug!(%error, failures, "redis connect failed again");
                }
            }
        }
        let _ = done.send(true);
    }

    fn succeeded(&self) {
        let recovered = {
            let mut st = self.state.lock();
            std::mem::replace(&mut st.failures, 0) > 0
        };
        if recovered {
            info!("redis answers grant reads again");
        }
    }

    /// Ends a known-down period early (the subscriber just reached Redis).
    fn retry_now(&self) {
        let mut st = self.state.lock();
        st.failures = 0;
        if matches!(st.conn, Conn::Down { .. }) {
            st.conn = Conn::Idle;
        }
    }

    /// Drops connection `id` so the next caller connects afresh, without a backoff.
    fn reset(&self, id: u64) {
        let mut st = self.state.lock();
        if matches!(st.conn, Conn::Up { id: cur, .. } if cur == id) {
            st.conn = Conn::Idle;
        }
    }

    fn mark_down(&self, id: u64) {
        let mut st = self.state.lock();
        // Only the connection that failed: a newer one may already be up.
        if matches!(st.conn, Conn::Up { id: cur, .. } if cur == id) {
            st.fail();
        }
    }

    /// Reads the identity's sets with one pipelined round trip, or None if Redis is unavailable.
    async fn load(
        self: &Arc<Self>,
        tenant: &str,
        sub: &str,
        roles: &[Arc<str>],
    ) -> Option<RawGrants> {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let user_key = user_key(&self.key_prefix, tenant, sub);
        if user_key.is_none() {
            warn!(
                tenant = %tenant.escape_debug(),
                sub = %sub.escape_debug(),
                "tenant or sub unusable in a redis key; no redis grants for this identity"
            );
        }
        let mut role_keys: Vec<(&str, String)> = Vec::new();
        for (i, role) in roles.iter().enumerate() {
            if roles[..i].iter().any(|r| **r == **role) {
                continue;
            }
            if role_keys.len() == MAX_ROLE_KEYS {
                warn!(
                    tenant,
                    roles = roles.len(),
                    cap = MAX_ROLE_KEYS,
                    "too many roles; the rest get no redis grants"
                );
                break;
            }
            match role_key(&self.key_prefix, tenant, role) {
                Some(key) => role_keys.push((role, key)),
                None => warn!(
                    tenant = %tenant.escape_debug(),
                    role = %role.escape_debug(),
                    "role unusable in a redis key; no redis grants for it"
                ),
            }
        }
        if user_key.is_none() && role_keys.is_empty() {
            return Some(RawGrants::default());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for key in user_key.iter().chain(role_keys.iter().map(|(_, k)| k)) {
            pipe.cmd("SMEMBERS").arg(key);
        }
        let c = counters();
        let mut retried = false;
        let replies = loop {
            let (mut conn, id) = self.connection(deadline).await?;
            match tokio::time::timeout_at(
                deadline,
                pipe.query_async::<Vec<RedisResult<Value>>>(&mut conn),
            )
            .await
            {
                Ok(Ok(replies)) => {
                    self.succeeded();
                    break replies;
                }
                // A healthy link that just broke (idle timeout, failover, restart, its runtime
                // gone): reconnect once within the same deadline rather than degrade.
                Ok(Err(e)) if !retried => {
                    c.err_load.inc();
                    debug!(error = %e, "redis grant load failed; reconnecting once");
                    self.reset(id);
                    retried = true;
                }
                Ok(Err(e)) => {
                    c.err_load.inc();
                    self.mark_down(id);
                    warn!(error = %e, "redis grant load failed; marking redis down");
                    return None;
                }
                Err(_) => {
                    c.err_load.inc();
                    self.mark_down(id);
                    warn!(timeout = ?self.command_timeout, "redis grant load timed out; marking redis down");
                    return None;
                }
            }
        };
        if replies.len() != usize::from(user_key.is_some()) + role_keys.len() {
            c.err_load.inc();
            warn!("redis returned the wrong number of replies");
            return None;
        }
        let mut replies = replies.into_iter();
        let mut take = |key: &str| -> Option<Vec<String>> {
            match replies.next()? {
                Ok(reply) => Some(members(reply, key)),
                // Data error on one key: that key grants nothing (fail closed), the rest stands.
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    c.err_smembers.inc();
                    warn!(key, "grant key is not a set; ignored");
                    Some(Vec::new())
                }
                // LOADING, NOAUTH, ...: Redis is not answering properly, treat as unavailable.
                Err(e) => {
                    c.err_load.inc();
                    warn!(key, error = %e, "redis refused a grant read");
                    None
                }
            }
        };
        let mut raw = RawGrants::default();
        if let Some(key) = &user_key {
            raw.user = take(key)?;
        }
        for (role, key) in &role_keys {
            let grants = take(key)?;
            raw.roles.push(((*role).to_owned(), grants));
        }
        Some(raw)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::atomic::AtomicUsize;

    fn roles(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|r| Arc::from(*r)).collect()
    }

    fn store(ttl: Duration) -> Arc<GrantStore<usize>> {
        GrantStore::new(None)
            .map(|s| {
                // Same construction path, shorter TTL for the tests.
                let mut s = Arc::try_unwrap(s).ok().unwrap();
                s.ttl = ttl;
                Arc::new(s)
            })
            .unwrap()
    }

    /// Effective value for an identity plus whether compile ran. Uses now_or_never: without
    /// Redis nothing ever awaits, so the future must complete on its first poll.
    fn get(s: &GrantStore<usize>, t: &str, u: &str, r: &[Arc<str>], calls: &AtomicUsize) -> usize {
        let n = calls.load(Ordering::SeqCst);
        *s.effective(&GrantKey::new(t, u, r), |src| {
            assert_eq!(*src, GrantSource::Disabled);
            calls.fetch_add(1, Ordering::SeqCst);
            n + 1
        })
        .now_or_never()
        .expect("no await without redis")
    }

    #[test]
    fn parse_invalidation_messages() {
        use Invalidation::*;
        let cases: &[(&str, Option<Invalidation<'_>>)] = &[
            ("*", Some(All)),
            (" * \n", Some(All)),
            ("tenant:acme", Some(Tenant("acme"))),
            ("tenant:acme:user:42", Some(User("acme", "42"))),
            ("tenant:acme:user:a:b", Some(User("acme", "a:b"))),
            ("tenant:acme:role:editor", Some(Role("acme", "editor"))),
            (
                "tenant:acme:role:client:admin",
                Some(Role("acme", "client:admin")),
            ),
            ("tenant:", None),
            ("tenant::user:1", None),
            ("tenant:acme:user:", None),
            ("tenant:acme:role:", None),
            ("tenant:acme:group:x", None),
            ("tenant:ac me", None),
            ("tenant:acme:user:a b", None),
            ("user:1", None),
            ("", None),
            ("**", None),
        ];
        for (msg, want) in cases {
            assert_eq!(Invalidation::parse(msg), *want, "{msg:?}");
        }
    }

    #[test]
    fn key_hygiene() {
        assert_eq!(
            user_key("p:", "acme", "u-1").as_deref(),
            Some("p:tenant:acme:user:u-1:permissions")
        );
        assert_eq!(
            role_key("", "acme", "client:admin").as_deref(),
            Some("tenant:acme:role:client:admin:permissions")
        );
        let long = "x".repeat(MAX_KEY_PART_LEN + 1);
        for bad in [
            "",
            "a b",
            "a\tb",
            "a\nb",
            "a\u{0}b",
            "a\u{7f}",
            "a\u{a0}b",
            long.as_str(),
        ] {
            assert_eq!(user_key("", "acme", bad), None, "{bad:?}");
            assert_eq!(role_key("", "acme", bad), None, "{bad:?}");
            assert_eq!(user_key("", bad, "u"), None, "{bad:?}");
        }
        assert_eq!(user_key("", "a:b", "u"), None, "colon in tenant");
    }

    #[test]
    fn members_skip_binary_and_oversized_and_cap() {
        let reply = Value::Array(vec![
            Value::BulkString(b"users.read.own".to_vec()),
            Value::BulkString(vec![0xff, 0xfe]),
            Value::BulkString(vec![b'a'; MAX_MEMBER_LEN + 1]),
            Value::Int(3),
            Value::BulkString(b"not a permission".to_vec()),
        ]);
        assert_eq!(
            members(reply, "k"),
            vec!["users.read.own", "not a permission"]
        );
        let huge = Value::Set(
            (0..MAX_MEMBERS_PER_KEY + 5)
                .map(|i| Value::BulkString(format!("p{i}").into_bytes()))
                .collect(),
        );
        assert_eq!(members(huge, "k").len(), MAX_MEMBERS_PER_KEY);
        assert!(members(Value::Nil, "k").is_empty());
        assert!(members(Value::Int(1), "k").is_empty());
    }

    #[test]
    fn cache_hits_and_ttl() {
        let s = store(Duration::from_millis(50));
        let calls = AtomicUsize::new(0);
        let r = roles(&["a"]);
        assert_eq!(get(&s, "t", "u", &r, &calls), 1);
        assert_eq!(get(&s, "t", "u", &r, &calls), 1, "hit");
        assert_eq!(
            get(&s, "t", "u", &roles(&["a"]), &calls),
            1,
            "equal roles, other Arcs"
        );
        assert_eq!(
            get(&s, "t", "u", &roles(&["a", "b"]), &calls),
            2,
            "other roles"
        );
        assert_eq!(get(&s, "t", "v", &r, &calls), 3, "other user");
        assert_eq!(get(&s, "t2", "u", &r, &calls), 4, "other tenant");
        assert_eq!(get(&s, "t", "u", &[], &calls), 5, "no roles");
        // Prefix ambiguity must not alias: ("t","u",["ab"]) vs ("t","ua",["b"]).
        assert_eq!(get(&s, "t", "ua", &roles(&["b"]), &calls), 6);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(get(&s, "t", "u", &r, &calls), 7, "expired");
        assert_eq!(get(&s, "t", "u", &r, &calls), 7);
    }

    #[test]
    fn invalidation_scopes() {
        let s = store(Duration::from_secs(60));
        let calls = AtomicUsize::new(0);
        let (ed, vw) = (roles(&["editor"]), roles(&["viewer", "editor"]));
        let plain = roles(&["viewer"]);
        // Loads: 1 t/alice/editor, 2 t/alice/viewer+editor, 3 t/bob/viewer, 4 other/alice/editor.
        assert_eq!(get(&s, "t", "alice", &ed, &calls), 1);
        assert_eq!(get(&s, "t", "alice", &vw, &calls), 2);
        assert_eq!(get(&s, "t", "bob", &plain, &calls), 3);
        assert_eq!(get(&s, "o", "alice", &ed, &calls), 4);

        assert!(s.invalidate("tenant:t:user:alice"));
        assert_eq!(
            get(&s, "t", "alice", &ed, &calls),
            5,
            "user: every role combination"
        );
        assert_eq!(get(&s, "t", "alice", &vw, &calls), 6);
        assert_eq!(get(&s, "t", "bob", &plain, &calls), 3, "other user kept");
        assert_eq!(
            get(&s, "o", "alice", &ed, &calls),
            4,
            "same sub, other tenant kept"
        );

        assert!(s.invalidate("tenant:t:role:editor"));
        assert_eq!(get(&s, "t", "alice", &ed, &calls), 7, "role");
        assert_eq!(
            get(&s, "t", "alice", &vw, &calls),
            8,
            "role anywhere in the list"
        );
        assert_eq!(
            get(&s, "t", "bob", &plain, &calls),
            3,
            "without the role kept"
        );
        assert_eq!(
            get(&s, "o", "alice", &ed, &calls),
            4,
            "role in other tenant kept"
        );

        assert!(s.invalidate("tenant:t"));
        assert_eq!(get(&s, "t", "alice", &ed, &calls), 9, "tenant");
        assert_eq!(get(&s, "t", "bob", &plain, &calls), 10, "tenant");
        assert_eq!(get(&s, "o", "alice", &ed, &calls), 4, "other tenant kept");

        assert!(s.invalidate("*"));
        assert_eq!(s.len(), 0);
        assert_eq!(get(&s, "o", "alice", &ed, &calls), 11, "all");

        assert!(!s.invalidate("tenant:t:bogus:x"));
        assert_eq!(
            get(&s, "o", "alice", &ed, &calls),
            11,
            "unknown message ignored"
        );
    }

    #[test]
    fn load_racing_an_invalidation_is_not_served_again() {
        let s = store(Duration::from_secs(60));
        let calls = AtomicUsize::new(0);
        let r = roles(&["editor"]);
        // The compile runs after the generation snapshot, like a Redis read would.
        let v = s
            .effective(&GrantKey::new("t", "u", &r), |_| {
                s.invalidate("tenant:t:role:editor");
                calls.fetch_add(1, Ordering::SeqCst);
                1
            })
            .now_or_never()
            .unwrap();
        assert_eq!(*v, 1);
        assert_eq!(get(&s, "t", "u", &r, &calls), 2, "raced load was not kept");
        assert_eq!(get(&s, "t", "u", &r, &calls), 2);
    }

    #[test]
    fn capacity_is_bounded() {
        let s = GrantStore::<usize>::new(Some(GrantSettings {
            cache_capacity: 100,
            ..GrantSettings::default()
        }))
        .unwrap();
        let mut s = Arc::try_unwrap(s).ok().unwrap();
        s.redis = None; // exercise the cache only
        let calls = AtomicUsize::new(0);
        for i in 0..1000 {
            get(&s, "t", &format!("u{i}"), &[], &calls);
        }
        assert!(s.len() <= 110, "len {}", s.len());
    }

    #[test]
    fn settings_validation_and_redaction() {
        let bad = |f: fn(&mut GrantSettings)| {
            let mut s = GrantSettings::default();
            f(&mut s);
            GrantStore::<()>::new(Some(s)).unwrap_err().code()
        };
        assert_eq!(bad(|s| s.url = "http://x".into()), "grants_invalid_url");
        assert_eq!(bad(|s| s.cache_capacity = 0), "grants_invalid_setting");
        assert_eq!(
            bad(|s| s.command_timeout = Duration::ZERO),
            "grants_invalid_setting"
        );
        assert_eq!(bad(|s| s.channel.clear()), "grants_invalid_setting");
        assert_eq!(
            bad(|s| s.key_prefix = "a b".into()),
            "grants_invalid_setting"
        );
        assert!(GrantStore::<()>::new(Some(GrantSettings::default())).is_ok());

        let s = GrantSettings {
            url: "redis://user:s3cret@redis.internal:6379/2".into(),
            ..GrantSettings::default()
        };
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
        assert!(dbg.contains("redis://***@redis.internal:6379/2"), "{dbg}");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let ms = |f| backoff(f).as_millis();
        assert!((80..=120).contains(&ms(1)), "{}", ms(1));
        assert!((160..=240).contains(&ms(2)));
        assert!((4000..=6000).contains(&ms(30)));
        assert!((4000..=6000).contains(&ms(u32::MAX)));
    }

    #[test]
    fn futures_are_send() {
        fn send<F: Send>(_: F) {}
        let s = store(Duration::from_secs(1));
        let r = roles(&[]);
        send(s.effective(&GrantKey::new("t", "u", &r), |_| 0));
        let (_tx, rx) = watch::channel(false);
        send(Arc::clone(&s).run_subscriber(rx));
    }

    #[tokio::test]
    async fn subscriber_without_redis_returns() {
        let s = store(Duration::from_secs(1));
        let (_tx, rx) = watch::channel(false);
        tokio::time::timeout(Duration::from_secs(1), s.clone().run_subscriber(rx))
            .await
            .unwrap();
        assert!(!s.subscriber_connected());
    }
}
