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
//! [`GrantStore::run_subscriber`] (see `subscriber`) listens for changes: client-tracking
//! pushes or keyspace events for writes made straight to Redis (no PUBLISH needed), and
//! `redis.channel` messages — `tenant:{t}:user:{sub}`, `tenant:{t}:role:{role}`, `tenant:{t}`
//! or `*` — applied at once. Publishers must write Redis *before* publishing. A load that
//! raced with an invalidation is never served again, because the generation snapshot is
//! taken before Redis is read. Every time the subscription is (re-)established the whole
//! cache is cleared: changes made while we were not listening are lost, and clearing also
//! drops sets compiled while Redis was down. While the subscriber is disconnected (or the
//! server offers neither tracking nor keyspace events), staleness is bounded by `cache_ttl`.
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
//! Cached sets also embed what the caller's `compile` captured from config: the caller keys
//! them by a content epoch of that config ([`GrantKey::epoch`]), so a reload that changes
//! role maps never meets an old set.
//!
//! # Layout
//! This file holds the cache and its generations; `link` the command connection and grant
//! reads, `subscriber` the invalidation subscription, `invalidation` the message grammar,
//! `keys` the Redis key layout, `settings` the configuration, `counters` the metric handles.
//!
//! # Metrics
//! `permission_cache_total{result}`: `hit`, `miss`, `expired` partition lookups; `degraded`
//! counts sets compiled without Redis. `redis_errors_total{op}`: `connect`, `load`, `smembers`
//! (a key that is not a set), `subscribe`. `invalid_grants_total{source="redis"}`: members
//! dropped before `compile` (non-UTF-8 or over [`MAX_MEMBER_LEN`]). `invalidations_total`:
//! messages received, understood or not.

mod counters;
mod fill;
mod invalidation;
mod keys;
mod link;
mod loader;
mod settings;
mod subscriber;
#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_cache::sync::{Cache, DefaultLifecycle};
use quick_cache::UnitWeighter;
use tracing::{debug, warn};

use self::counters::counters;
use self::invalidation::Invalidation;
use self::link::Link;
use self::loader::Loader;
pub use self::loader::{
    check_loader, FieldError, HttpSettings, LoaderSettings, PostgresSettings, SourceSettings,
    WriteBack,
};
pub use self::settings::{install_tls_provider, GrantError, GrantSettings, InvalidationPreference};
pub use self::subscriber::GrantSubscriber;

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

/// Grant strings as stored in Redis, unvalidated: the compile function owns the grammar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawGrants {
    /// Members of the user's set.
    pub user: Vec<String>,
    /// Members of each role's set, for every (distinct, well-formed) role that was looked up.
    pub roles: Vec<(String, Vec<String>)>,
}

/// What Redis (and the loader, for keys absent from Redis) contributed to a compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantSource {
    /// Redis answered (sets may be empty); keys it did not hold were answered by the loader
    /// when one is configured.
    Redis(RawGrants),
    /// Redis, or the loader asked for an absent key, is down or slow: compile from config and
    /// token only. The result is cached for `degraded_ttl` only.
    Unavailable,
    /// No Redis configured.
    Disabled,
}
/// What a cache hit pays for the grant-age histogram (for the criterion bench).
#[cfg(feature = "testkit")]
pub fn observe_grant_age(now: Instant, loaded: Instant) {
    counters::observe_age(now, loaded);
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
    /// When its sets were read (for the grant-age histogram).
    loaded: Instant,
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
    /// Asked for keys absent from Redis (only with Redis).
    loader: Option<Arc<Loader>>,
    subscribed: AtomicBool,
    /// The active [`GrantStore::invalidation_mode`] (see `subscriber`).
    mode: std::sync::atomic::AtomicU8,
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
        let (s, redis, loader) = match settings {
            None => (GrantSettings::default(), None, None),
            Some(s) => {
                let link = Link::new(&s)?;
                let loader = s
                    .loader
                    .as_ref()
                    .map(|l| Loader::new(l).map(Arc::new))
                    .transpose()
                    .map_err(|(f, m)| GrantError::Loader(format!("{f}: {m}")))?;
                (s, Some(Arc::new(link)), loader)
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
            loader,
            subscribed: AtomicBool::new(false),
            mode: std::sync::atomic::AtomicU8::new(subscriber::MODE_NONE),
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
                let now = Instant::now();
                if self.is_fresh(&e, now) {
                    c.hit.inc();
                    counters::observe_age(now, e.loaded);
                    return Arc::clone(&e.value);
                }
                if now >= e.expires {
                    c.from_ttl.inc();
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
            Some(link) => {
                let raw = match link.load(tenant, sub, roles).await {
                    Some(fetched) => self.fill(link, tenant, sub, fetched, &slots).await,
                    None => None,
                };
                match raw {
                    Some(raw) => (GrantSource::Redis(raw), self.ttl),
                    None => {
                        counters().degraded.inc();
                        (GrantSource::Unavailable, self.degraded_ttl)
                    }
                }
            }
        };
        let value = Arc::new(compile(&source));
        let loaded = Instant::now();
        Arc::new(Entry {
            tenant: tenant.into(),
            sub: sub.into(),
            roles: roles.into(),
            epoch,
            claim: claim.into(),
            value,
            loaded,
            expires: loaded + ttl,
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
            Some(inv) => {
                counters().from_pubsub.inc();
                self.apply(inv);
            }
            None => {
                warn!(message = %msg.escape_debug(), "ignoring unknown grant invalidation message");
                return false;
            }
        }
        debug!(message = %msg.escape_debug(), "grant invalidation applied");
        true
    }

    /// One generation bump (or a clear for `*`): O(1), whatever the source.
    fn apply(&self, inv: Invalidation<'_>) {
        match inv {
            Invalidation::All => self.clear(),
            Invalidation::Tenant(t) => self.bump(self.tenant_slot(t)),
            Invalidation::User(t, sub) => self.bump(self.user_slot(t, sub)),
            Invalidation::Role(t, role) => self.bump(self.role_slot(t, role)),
        }
    }

    /// Applies a change Redis reported for `key` (client tracking or a keyspace event);
    /// keys that are not grant sets are ignored. O(1).
    pub fn invalidate_key(&self, key: &[u8]) {
        let Some(link) = &self.redis else { return };
        let inv = std::str::from_utf8(key)
            .ok()
            .and_then(|k| Invalidation::for_key(&link.key_prefix, k));
        if let Some(inv) = inv {
            self.apply(inv);
        }
    }

    /// How changes written straight to Redis reach the cache now: `tracking`, `keyspace`,
    /// or `ttl` (only `redis.channel` messages and `cache_ttl`); `none` before the first
    /// subscription or without Redis.
    pub fn invalidation_mode(&self) -> &'static str {
        subscriber::mode_name(self.mode.load(Ordering::Acquire))
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

    /// The loader asked for keys absent from Redis (`http`, `postgres`), if any.
    pub fn loader_name(&self) -> Option<&'static str> {
        self.loader.as_ref().map(|l| l.name())
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
}
