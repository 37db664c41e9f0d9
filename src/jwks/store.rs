//! The key store: per-realm key sets read lock-free by the request path, dynamic-realm
//! admission, bounded request-path waits on fetches, and applying fetch results.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, info, warn};

use super::error::KeyError;
use super::fetch::{FetchError, Fetched};
use super::keys::{build_key_set, PreparedKey};
use super::realm::{state_name, Realm, FAILED, LOADED, NOT_FOUND, REFUSED};
use super::settings::{expectation_for, spec_for, valid_realm_name, Expectation, JwksSettings};
use crate::limits::TokenBucket;
use crate::metrics::{metrics, OTHER};

/// Seconds since the Unix epoch; injectable so expiry and staleness tests are deterministic.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    })
}

/// Negative-cache bound: distinct unknown realm names remembered (CLOCK-Pro eviction).
pub const NEGATIVE_CACHE_CAPACITY: usize = 10_000;
const CMD_QUEUE: usize = 1024;

#[derive(Clone, Default)]
struct RealmMap {
    map: HashMap<Arc<str>, Arc<Realm>, ahash::RandomState>,
    dynamic: usize,
}

impl RealmMap {
    /// Removes least recently used dynamic realms until at most `max` remain, and returns
    /// them (the caller forgets their keys).
    fn evict_lru(&mut self, max: usize) -> Vec<Arc<Realm>> {
        let mut evicted = Vec::new();
        while self.dynamic > max {
            let victim = self
                .map
                .values()
                .filter(|r| !r.is_static())
                .min_by_key(|r| r.last_used.load(Ordering::Relaxed))
                .cloned();
            let Some(victim) = victim else { break };
            self.map.remove(victim.name());
            self.dynamic -= 1;
            evicted.push(victim);
        }
        evicted
    }
}

/// Work for the refresher.
pub(crate) enum Cmd {
    /// Fetch this realm now (its gate is already marked in flight by the sender).
    Fetch(Arc<Realm>),
}

/// What a fetch result did to the realm ([`KeyStore::apply`]), for the refresher's schedule.
pub(super) enum Outcome {
    Ok { max_age: Option<Duration> },
    NotFound,
    Failed,
}

/// What a request-path wait on a realm fetch turned into.
enum Waited {
    /// A fetch ran (or was already running) and has finished, or the wait timed out.
    Done,
    /// No fetch allowed yet: retry in this many seconds.
    Denied(u64),
}

/// Facts about one realm, for `/readyz`, the admin API and `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealmInfo {
    pub name: String,
    pub issuer: String,
    pub is_static: bool,
    /// `not_loaded`, `loaded`, `failed`, `not_found` or `refused`.
    pub state: &'static str,
    pub kids: Vec<String>,
    /// Seconds since the last successful fetch.
    pub age_secs: Option<u64>,
    pub last_error: Option<String>,
}

/// Per-realm key sets shared by the request path (readers) and the refresher (writer).
pub struct KeyStore {
    settings: ArcSwap<JwksSettings>,
    /// Cached `max_stale` seconds for the cache-hit path.
    max_stale_secs: AtomicU64,
    realms: ArcSwap<RealmMap>,
    /// Serialises realm-map writers (never held across `.await`).
    write: Mutex<()>,
    /// Realms the IdP said it doesn't know: name -> clock second until which that holds.
    /// Bound: [`NEGATIVE_CACHE_CAPACITY`] names, CLOCK-Pro eviction; TTL checked on read.
    negative: quick_cache::sync::Cache<Box<str>, u64>,
    /// Never-seen dynamic realms admitted (`new_realms_per_second`).
    admissions: Mutex<TokenBucket>,
    /// Request-triggered repeat fetches of held realms (`refetches_per_second`): per-realm
    /// spacing alone lets forged-but-plausible tokens refetch every realm once per interval.
    refetches: Mutex<TokenBucket>,
    cmd: mpsc::Sender<Cmd>,
    pub(super) reconcile: Notify,
    clock: Clock,
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl KeyStore {
    /// A store holding `static_realms` (none loaded yet), and the receiving end of its command
    /// channel for the refresher (`jwks::key_store` builds both).
    pub(super) fn new(
        settings: JwksSettings,
        static_realms: Vec<String>,
        clock: Clock,
    ) -> (Arc<KeyStore>, mpsc::Receiver<Cmd>) {
        let (tx, rx) = mpsc::channel(CMD_QUEUE);
        let now = clock();
        let mut map = RealmMap::default();
        for name in &static_realms {
            if !valid_realm_name(name) {
                error!(realm = %name, "invalid realm name in configuration; ignored");
                continue;
            }
            let realm = Realm::new(name, spec_for(&settings, name), true, now);
            map.map.insert(realm.name.clone(), Arc::new(realm));
        }
        let store = Arc::new(KeyStore {
            max_stale_secs: AtomicU64::new(settings.max_stale.as_secs()),
            admissions: Mutex::new(TokenBucket::new(
                settings.new_realms_per_second,
                Instant::now(),
            )),
            refetches: Mutex::new(TokenBucket::new(
                settings.refetches_per_second,
                Instant::now(),
            )),
            settings: ArcSwap::from_pointee(settings),
            realms: ArcSwap::from_pointee(map),
            write: Mutex::new(()),
            negative: quick_cache::sync::Cache::new(NEGATIVE_CACHE_CAPACITY),
            cmd: tx,
            reconcile: Notify::new(),
            clock,
        });
        (store, rx)
    }

    /// The store's clock (seconds since the epoch).
    pub fn now(&self) -> u64 {
        (self.clock)()
    }

    pub fn settings(&self) -> Arc<JwksSettings> {
        self.settings.load_full()
    }

    pub(crate) fn max_stale_secs(&self) -> u64 {
        self.max_stale_secs.load(Ordering::Relaxed)
    }

    /// The issuer tokens of `realm` must carry (override or `{base_url}/realms/{realm}`).
    pub fn issuer_for(&self, realm: &str) -> Arc<str> {
        self.expectation(realm).issuer
    }

    /// What a token for `name` must match: the held realm's issuer and policy, or what a
    /// never-seen realm of that name would be admitted with. Admits nothing.
    pub(crate) fn expectation(&self, name: &str) -> Expectation {
        if let Some(r) = self.realms.load().map.get(name) {
            return r.expectation();
        }
        expectation_for(&self.settings.load(), name)
    }

    /// Runs `f` on the realm's current entry without cloning anything (cache-hit path).
    pub(crate) fn with_realm<T>(&self, name: &str, f: impl FnOnce(&Realm) -> T) -> Option<T> {
        self.realms.load().map.get(name).map(|r| f(r))
    }

    pub(super) fn lookup(&self, name: &str) -> Option<Arc<Realm>> {
        self.realms.load().map.get(name).cloned()
    }

    pub(super) fn is_current(&self, realm: &Arc<Realm>) -> bool {
        self.realms
            .load()
            .map
            .get(realm.name())
            .is_some_and(|r| Arc::ptr_eq(r, realm))
    }

    /// Resolves a realm with usable keys, loading it (bounded wait) if needed.
    ///
    /// Errors: [`KeyError::UnknownTenant`] for names the IdP does not know (negatively cached)
    /// or that are not valid realm names; [`KeyError::RealmUnavailable`] when keys cannot be had
    /// in time or are older than `max_stale`.
    pub(crate) async fn realm(&self, name: &str) -> Result<Arc<Realm>, KeyError> {
        let now = self.now();
        let realm = match self.lookup(name) {
            Some(r) => r,
            None => self.admit_dynamic(name, now)?,
        };
        realm.touch(now);
        if realm.usable_at(now, self.max_stale_secs()) {
            return Ok(realm);
        }
        let settings = self.settings.load_full();
        if realm.state() == LOADED {
            // Loaded but stale beyond max_stale: the refresher keeps retrying with backoff;
            // one request-triggered attempt per interval can help it along.
            let _ = self.await_fetch(&realm, Duration::ZERO, &settings).await;
            return Err(KeyError::RealmUnavailable {
                retry_after_secs: secs_ceil(settings.min_refetch_interval).max(1),
            });
        }
        let waited = self
            .await_fetch(&realm, settings.load_wait, &settings)
            .await;
        let now = self.now();
        if realm.usable_at(now, self.max_stale_secs()) {
            return Ok(realm);
        }
        if realm.state() == NOT_FOUND && !realm.is_static() {
            return Err(KeyError::UnknownTenant);
        }
        let retry = match waited {
            Waited::Denied(s) => s,
            Waited::Done => secs_ceil(settings.min_refetch_interval),
        };
        Err(KeyError::RealmUnavailable {
            retry_after_secs: retry.max(1),
        })
    }

    /// First sight of a dynamic realm: validate, consult the negative cache and the global
    /// admission bucket, then insert it (evicting the least recently used dynamic realm).
    fn admit_dynamic(&self, name: &str, now: u64) -> Result<Arc<Realm>, KeyError> {
        if !valid_realm_name(name) {
            return Err(KeyError::UnknownTenant);
        }
        if let Some(until) = self.negative.get(name) {
            if now < until {
                return Err(KeyError::UnknownTenant);
            }
            self.negative.remove(name);
        }
        let settings = self.settings.load();
        if settings.max_dynamic_realms == 0 {
            return Err(KeyError::UnknownTenant);
        }
        if !self.admissions.lock().try_take(Instant::now()) {
            metrics()
                .jwks_fetch_denied_total
                .with_label_values(&["admission_rate"])
                .inc();
            debug!(realm = %name, "dynamic realm admission rate exceeded");
            return Err(KeyError::RealmUnavailable {
                retry_after_secs: 1,
            });
        }
        let _w = self.write.lock();
        let cur = self.realms.load_full();
        if let Some(r) = cur.map.get(name) {
            return Ok(r.clone());
        }
        let mut next = (*cur).clone();
        // Room for one more (`max_dynamic_realms` is at least 1 here).
        for victim in next.evict_lru(settings.max_dynamic_realms - 1) {
            info!(realm = %victim.name, "evicting least recently used dynamic realm");
            self.forget(&victim);
        }
        let realm = Arc::new(Realm::new(name, spec_for(&settings, name), false, now));
        next.map.insert(realm.name.clone(), realm.clone());
        next.dynamic += 1;
        self.realms.store(Arc::new(next));
        Ok(realm)
    }

    /// Drops a realm's keys (cached tokens verified with them die too) and its gauges.
    fn forget(&self, realm: &Realm) {
        realm.drop_keys();
        let label = metrics().realms.label(realm.name());
        if label != OTHER {
            let _ = metrics().jwks_keys.remove_label_values(&[label]);
            let _ = metrics().jwks_age_seconds.remove_label_values(&[label]);
        }
    }

    /// Removes a dynamic realm the IdP does not know and remembers that for `negative_ttl`.
    fn forget_not_found(&self, realm: &Arc<Realm>) {
        let ttl = self.settings.load().negative_ttl;
        self.negative.insert(
            realm.name().into(),
            self.now().saturating_add(secs_ceil(ttl)),
        );
        let _w = self.write.lock();
        let cur = self.realms.load_full();
        if cur
            .map
            .get(realm.name())
            .is_some_and(|r| Arc::ptr_eq(r, realm))
        {
            let mut next = (*cur).clone();
            next.map.remove(realm.name());
            next.dynamic = next.dynamic.saturating_sub(1);
            self.realms.store(Arc::new(next));
        }
        self.forget(realm);
    }

    /// Starts (or joins) a fetch of `realm` and waits for it, at most `wait`.
    async fn await_fetch(
        &self,
        realm: &Arc<Realm>,
        wait: Duration,
        settings: &JwksSettings,
    ) -> Waited {
        // Registered under the gate lock, before the fetch can end: `notify_waiters` reaches
        // a `Notified` from the moment it is created, polled or not.
        let done = {
            let mut gate = realm.gate.lock();
            if !gate.in_flight {
                if let Some(started) = gate.last_started {
                    let since = started.elapsed();
                    if since < settings.min_refetch_interval {
                        return Waited::Denied(secs_ceil(settings.min_refetch_interval - since));
                    }
                    // A repeat fetch (not the realm's first): bounded process-wide too.
                    if !self.refetches.lock().try_take(Instant::now()) {
                        metrics()
                            .jwks_fetch_denied_total
                            .with_label_values(&["refetch_rate"])
                            .inc();
                        debug!(realm = %realm.name, "request-triggered refetch rate exceeded");
                        return Waited::Denied(1);
                    }
                }
                if self.cmd.try_send(Cmd::Fetch(realm.clone())).is_err() {
                    warn!(realm = %realm.name, "JWKS refresher queue full or refresher not running");
                    return Waited::Denied(1);
                }
                gate.in_flight = true;
                gate.last_started = Some(Instant::now());
            }
            realm.done.notified()
        };
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, done).await;
        }
        Waited::Done
    }

    /// The verification key for `kid`, refetching the realm's JWKS once (single-flight, at
    /// most once per `min_refetch_interval`) when the kid is unknown. Callers must have done
    /// the cheap checks first (issuer, algorithm), so only plausible tokens can cause a fetch.
    pub(crate) async fn key(
        &self,
        realm: &Arc<Realm>,
        kid: Option<&str>,
    ) -> Result<Arc<PreparedKey>, KeyError> {
        if let Some(k) = realm.find_key(kid) {
            return Ok(k);
        }
        if kid.is_none() {
            return Err(KeyError::UnknownKey);
        }
        let settings = self.settings.load_full();
        match self
            .await_fetch(realm, settings.refetch_wait, &settings)
            .await
        {
            Waited::Denied(_) => Err(KeyError::UnknownKey),
            Waited::Done => realm.find_key(kid).ok_or(KeyError::UnknownKey),
        }
    }

    /// Applies a configuration reload. Realms whose issuer, key source and algorithms are
    /// unchanged keep their keys (and so their cached tokens); new static realms are loaded by
    /// the refresher; static realms no longer configured are dropped.
    pub fn update_config(&self, settings: JwksSettings, static_realms: Vec<String>) {
        let statics: HashSet<&str> = static_realms
            .iter()
            .map(String::as_str)
            .filter(|n| {
                let ok = valid_realm_name(n);
                if !ok {
                    error!(realm = %n, "invalid realm name in configuration; ignored");
                }
                ok
            })
            .collect();
        let now = self.now();
        let _w = self.write.lock();
        let cur = self.realms.load_full();
        let mut next = RealmMap::default();
        for (name, realm) in &cur.map {
            let is_static = statics.contains(&**name);
            if realm.is_static() && !is_static {
                info!(realm = %name, "realm removed from configuration; dropping its keys");
                self.forget(realm);
                continue;
            }
            let spec = spec_for(&settings, name);
            if spec == realm.spec {
                realm.is_static.store(is_static, Ordering::Relaxed);
                next.map.insert(name.clone(), realm.clone());
            } else {
                info!(realm = %name, "realm key source changed; reloading");
                self.forget(realm);
                next.map.insert(
                    name.clone(),
                    Arc::new(Realm::new(name, spec, is_static, now)),
                );
            }
            if !is_static {
                next.dynamic += 1;
            }
        }
        for name in statics {
            if !next.map.contains_key(name) {
                let realm = Realm::new(name, spec_for(&settings, name), true, now);
                next.map.insert(realm.name.clone(), Arc::new(realm));
            }
        }
        for victim in next.evict_lru(settings.max_dynamic_realms) {
            self.forget(&victim);
        }
        self.realms.store(Arc::new(next));
        // Only what changed: the negative cache holds the IdP's answers for realm names under
        // this base URL and these overrides; the buckets keep their state unless their rate
        // changed (a tenant-sync or file reload must not hand out a fresh burst).
        let old = self.settings.load();
        if old.base_url != settings.base_url || old.realm_overrides != settings.realm_overrides {
            self.negative.clear();
        }
        if old.new_realms_per_second != settings.new_realms_per_second {
            *self.admissions.lock() =
                TokenBucket::new(settings.new_realms_per_second, Instant::now());
        }
        if old.refetches_per_second != settings.refetches_per_second {
            *self.refetches.lock() =
                TokenBucket::new(settings.refetches_per_second, Instant::now());
        }
        drop(old);
        self.max_stale_secs
            .store(settings.max_stale.as_secs(), Ordering::Relaxed);
        self.settings.store(Arc::new(settings));
        self.reconcile.notify_one();
    }

    /// True when every static realm has usable keys (for `/readyz`).
    pub fn static_realms_ready(&self) -> bool {
        let now = self.now();
        let stale = self.max_stale_secs();
        self.realms
            .load()
            .map
            .values()
            .filter(|r| r.is_static())
            .all(|r| r.usable_at(now, stale) && r.keys.load().len() > 0)
    }

    /// Static realms by health, for readiness and `/readyz` details: how many have usable
    /// keys, how many await their first load, and the names of the unusable ones (sorted).
    pub fn static_realm_health(&self) -> RealmHealth {
        let now = self.now();
        let stale = self.max_stale_secs();
        let mut h = RealmHealth::default();
        for r in self.realms.load().map.values().filter(|r| r.is_static()) {
            if r.usable_at(now, stale) && r.keys.load().len() > 0 {
                h.usable += 1;
            } else if r.state() == super::realm::NOT_LOADED {
                h.loading += 1;
            } else {
                h.unusable.push(r.name.to_string());
            }
        }
        h.unusable.sort();
        h
    }

    /// Static realms without usable keys, sorted (for `/readyz` output).
    pub fn not_ready_realms(&self) -> Vec<String> {
        let now = self.now();
        let stale = self.max_stale_secs();
        let mut out: Vec<String> = self
            .realms
            .load()
            .map
            .values()
            .filter(|r| r.is_static() && !(r.usable_at(now, stale) && r.keys.load().len() > 0))
            .map(|r| r.name.to_string())
            .collect();
        out.sort();
        out
    }

    /// Sets `jwks_age_seconds` for every loaded realm; call before encoding `/metrics`.
    pub fn refresh_age_gauges(&self) {
        let now = self.now();
        for realm in self.realms.load().map.values() {
            let at = realm.loaded_at.load(Ordering::Acquire);
            let label = metrics().realms.label(realm.name());
            if at > 0 && label != OTHER {
                let age = i64::try_from(now.saturating_sub(at)).unwrap_or(i64::MAX);
                metrics()
                    .jwks_age_seconds
                    .with_label_values(&[label])
                    .set(age);
            }
        }
    }

    /// Every realm currently held, sorted by name.
    pub fn describe(&self) -> Vec<RealmInfo> {
        let now = self.now();
        let mut out: Vec<RealmInfo> = self
            .realms
            .load()
            .map
            .values()
            .map(|r| {
                let at = r.loaded_at.load(Ordering::Acquire);
                RealmInfo {
                    name: r.name.to_string(),
                    issuer: r.issuer().to_string(),
                    is_static: r.is_static(),
                    state: state_name(r.state()),
                    kids: r.keys.load().kids(),
                    age_secs: (at > 0).then(|| now.saturating_sub(at)),
                    last_error: r.memo.lock().last_error.clone(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Installs a JWKS document for `realm` directly, as if just fetched (benches, tools and
    /// tests that need no network). Creates the realm as static if it is not held yet.
    pub fn install_jwks(&self, realm: &str, jwks: &[u8]) -> Result<usize, String> {
        if !valid_realm_name(realm) {
            return Err(format!("invalid realm name {realm:?}"));
        }
        let entry = match self.lookup(realm) {
            Some(r) => r,
            None => {
                let _w = self.write.lock();
                let cur = self.realms.load_full();
                let mut next = (*cur).clone();
                let r = Arc::new(Realm::new(
                    realm,
                    spec_for(&self.settings.load(), realm),
                    true,
                    self.now(),
                ));
                next.map.insert(r.name.clone(), r.clone());
                self.realms.store(Arc::new(next));
                r
            }
        };
        match self.apply(
            &entry,
            Ok(Fetched {
                doc: jwks.to_vec(),
                max_age: None,
            }),
        ) {
            Outcome::Ok { .. } => Ok(entry.keys.load().len()),
            _ => Err(entry
                .memo
                .lock()
                .last_error
                .clone()
                .unwrap_or_else(|| "not loaded".into())),
        }
    }

    pub(super) fn static_list(&self) -> Vec<Arc<Realm>> {
        self.realms
            .load()
            .map
            .values()
            .filter(|r| r.is_static())
            .cloned()
            .collect()
    }

    pub(super) fn all_realms(&self) -> Vec<Arc<Realm>> {
        self.realms.load().map.values().cloned().collect()
    }

    /// Records a fetch result on the realm: keys, state, metrics, logs. Returns the outcome
    /// for scheduling.
    pub(super) fn apply(&self, realm: &Arc<Realm>, res: Result<Fetched, FetchError>) -> Outcome {
        let label = metrics().realms.label(realm.name()).to_owned();
        let now = self.now();
        let ever_loaded = realm.loaded_at.load(Ordering::Acquire) > 0;
        let fail = |kind: &'static str, state: u8, msg: String| -> Outcome {
            metrics()
                .jwks_fetch_total
                .with_label_values(&[&label, kind])
                .inc();
            if ever_loaded {
                let age = now.saturating_sub(realm.loaded_at.load(Ordering::Acquire));
                warn!(realm = %realm.name, error = %msg, age_secs = age, "JWKS refresh failed; keeping last-good keys");
            } else {
                realm.state.store(state, Ordering::Release);
                warn!(realm = %realm.name, error = %msg, "JWKS load failed");
            }
            realm.memo.lock().last_error = Some(msg);
            Outcome::Failed
        };
        let fetched = match res {
            Ok(f) => f,
            Err(FetchError::NotFound(msg)) => {
                if !ever_loaded && !realm.is_static() {
                    metrics()
                        .jwks_fetch_total
                        .with_label_values(&[&label, "not_found"])
                        .inc();
                    info!(realm = %realm.name, error = %msg, "IdP does not know this realm; remembering");
                    realm.memo.lock().last_error = Some(msg);
                    realm.state.store(NOT_FOUND, Ordering::Release);
                    self.forget_not_found(realm);
                    return Outcome::NotFound;
                }
                return fail("error", NOT_FOUND, msg);
            }
            Err(FetchError::Refused(msg)) => {
                error!(realm = %realm.name, error = %msg, "IdP document refused");
                return fail("invalid", REFUSED, msg);
            }
            Err(FetchError::Failed(msg)) => return fail("error", FAILED, msg),
        };
        let digest = sha256(&fetched.doc);
        let unchanged = ever_loaded && realm.memo.lock().doc_digest == Some(digest);
        if !unchanged {
            let previous = realm.keys.load_full();
            let built = match build_key_set(&fetched.doc, realm.spec.algs, &previous) {
                Ok(b) => b,
                Err(msg) => return fail("invalid", FAILED, msg),
            };
            for why in &built.skipped {
                warn!(realm = %realm.name, "JWKS key skipped: {why}");
            }
            if built.set.len() == 0 {
                return fail("invalid", FAILED, "JWKS has no usable key".into());
            }
            let added: Vec<String> = built
                .set
                .all
                .iter()
                .filter(|k| !previous.all.iter().any(|o| Arc::ptr_eq(o, k)))
                .map(|k| k.kid().unwrap_or("<none>").to_string())
                .collect();
            let removed: Vec<String> = built
                .dropped
                .iter()
                .map(|k| k.kid().unwrap_or("<none>").to_string())
                .collect();
            let count = built.set.len();
            realm.keys.store(Arc::new(built.set));
            for k in &built.dropped {
                k.retire();
            }
            if realm.dropped.load(Ordering::SeqCst) {
                realm.keys.load().retire_all();
            }
            realm.memo.lock().doc_digest = Some(digest);
            if label != OTHER {
                metrics()
                    .jwks_keys
                    .with_label_values(&[&label])
                    .set(i64::try_from(count).unwrap_or(i64::MAX));
            }
            info!(realm = %realm.name, keys = count, ?added, ?removed, "JWKS loaded");
        }
        realm.loaded_at.store(now.max(1), Ordering::Release);
        realm.state.store(LOADED, Ordering::Release);
        realm.memo.lock().last_error = None;
        metrics()
            .jwks_fetch_total
            .with_label_values(&[&label, "ok"])
            .inc();
        Outcome::Ok {
            max_age: fetched.max_age,
        }
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// See [`KeyStore::static_realm_health`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RealmHealth {
    pub usable: usize,
    pub loading: usize,
    pub unusable: Vec<String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use crate::jwks::{key_store, Alg, RealmOverride};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idp_failure_keeps_last_good_keys_and_counts_errors() {
        let idp = Idp::start().await;
        idp.set_keys("r-flaky", vec![rsa_a().jwk("k1")]);
        let mut settings = test_settings(&idp.base);
        settings.refresh = Duration::from_millis(100);
        let (store, _stop) = start_store(settings, &["r-flaky"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let label = metrics().realms.label("r-flaky").to_string();
        let errors = || {
            metrics()
                .jwks_fetch_total
                .with_label_values(&[&label, "error"])
                .get()
        };
        let before = errors();
        idp.set_mode("r-flaky", Mode::Fail);
        assert!(
            wait_until(|| async { errors() > before }).await,
            "failure shows in metrics"
        );
        let info = state_of(&store, "r-flaky").unwrap();
        assert_eq!(info.state, "loaded");
        assert_eq!(info.kids, vec!["k1".to_string()]);
        assert!(info.last_error.unwrap().contains("500"));
        assert!(store.static_realms_ready(), "within max_stale, still ready");
        store.refresh_age_gauges();
        if label != OTHER {
            let text = String::from_utf8(metrics().encode()).unwrap();
            assert!(text.contains(&format!("realmgate_jwks_age_seconds{{realm=\"{label}\"}}")));
            assert!(text.contains(&format!("realmgate_jwks_keys{{realm=\"{label}\"}} 1")));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_config_keeps_unchanged_realms_adds_and_drops() {
        let idp = Idp::start().await;
        for r in ["cfg-a", "cfg-b", "cfg-c"] {
            idp.set_keys(r, vec![rsa_a().jwk(&format!("{r}-k"))]);
        }
        let settings = test_settings(&idp.base);
        let (store, _stop) = start_store(settings.clone(), &["cfg-a", "cfg-b"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let a_key = store
            .lookup("cfg-a")
            .unwrap()
            .find_key(Some("cfg-a-k"))
            .unwrap();
        let b_key = store
            .lookup("cfg-b")
            .unwrap()
            .find_key(Some("cfg-b-k"))
            .unwrap();
        let hits_a = idp.hits("certs", "cfg-a");
        store.update_config(settings.clone(), vec!["cfg-a".into(), "cfg-c".into()]);
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let names: Vec<String> = store.describe().into_iter().map(|r| r.name).collect();
        assert_eq!(names, vec!["cfg-a".to_string(), "cfg-c".to_string()]);
        assert!(Arc::ptr_eq(
            &store
                .lookup("cfg-a")
                .unwrap()
                .find_key(Some("cfg-a-k"))
                .unwrap(),
            &a_key
        ));
        assert_eq!(
            idp.hits("certs", "cfg-a"),
            hits_a,
            "unchanged realm not refetched"
        );
        assert!(b_key.is_retired(), "removed realm's keys are dropped");
        // Changing a realm's key source replaces it (and retires its keys).
        let mut changed = settings.clone();
        Arc::make_mut(&mut changed.realm_overrides).insert(
            "cfg-a".into(),
            RealmOverride {
                algorithms: Some(vec![Alg::RS256, Alg::PS256]),
                ..RealmOverride::default()
            },
        );
        store.update_config(changed, vec!["cfg-a".into(), "cfg-c".into()]);
        assert!(a_key.is_retired());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dynamic_realms_load_lazily_404_is_negatively_cached_and_lru_bounded() {
        let idp = Idp::start().await;
        for r in ["dyn-1", "dyn-2", "dyn-3"] {
            idp.set_keys(r, vec![rsa_a().jwk("k")]);
        }
        let mut settings = test_settings(&idp.base);
        settings.max_dynamic_realms = 2;
        let (store, _stop) = start_store(settings, &[], system_clock());
        assert_eq!(idp.total_hits(), 0, "nothing loads before first use");
        let r1 = store.realm("dyn-1").await.unwrap();
        assert_eq!(r1.name(), "dyn-1");
        store.realm("dyn-2").await.unwrap();
        let k1 = r1.find_key(Some("k")).unwrap();
        // Make dyn-1 the least recently used, then admit a third: dyn-1 is evicted.
        r1.last_used.store(0, Ordering::Relaxed);
        store.realm("dyn-3").await.unwrap();
        let names: Vec<String> = store.describe().into_iter().map(|r| r.name).collect();
        assert_eq!(names, vec!["dyn-2".to_string(), "dyn-3".to_string()]);
        assert!(
            k1.is_retired(),
            "evicting a realm drops its keys (and so its cached tokens)"
        );
        // Unknown realm: 404 -> unknown_tenant, remembered.
        assert_eq!(
            store.realm("nope").await.unwrap_err(),
            KeyError::UnknownTenant
        );
        let disco = idp.hits("disco", "nope");
        assert_eq!(disco, 1);
        for _ in 0..5 {
            assert_eq!(
                store.realm("nope").await.unwrap_err(),
                KeyError::UnknownTenant
            );
        }
        assert_eq!(
            idp.hits("disco", "nope"),
            1,
            "negative cache: no second fetch"
        );
        assert!(state_of(&store, "nope").is_none(), "not held as a realm");
        // Invalid names never reach the IdP.
        assert_eq!(
            store.realm("../admin").await.unwrap_err(),
            KeyError::UnknownTenant
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_seen_realms_are_rate_limited() {
        let idp = Idp::start().await;
        let mut settings = test_settings(&idp.base);
        settings.new_realms_per_second = 1;
        let (store, _stop) = start_store(settings, &[], system_clock());
        let mut results = Vec::new();
        for i in 0..6 {
            results.push(store.realm(&format!("rnd-{i}")).await.unwrap_err());
        }
        let limited = results
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    KeyError::RealmUnavailable {
                        retry_after_secs: 1
                    }
                )
            })
            .count();
        assert_eq!(limited, 4, "burst of 2, then 1/s: {results:?}");
        assert_eq!(idp.total_hits(), 2, "only admitted realms reach the IdP");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unchanged_reload_keeps_the_admission_budget_and_the_negative_cache() {
        // Fails before the fix: every apply (tenant sync, once a minute) reset both, handing
        // a flood of random subdomains a fresh burst and forgetting the IdP's 404s.
        let idp = Idp::start().await;
        let mut settings = test_settings(&idp.base);
        settings.new_realms_per_second = 1;
        let (store, _stop) = start_store(settings.clone(), &[], system_clock());
        for i in 0..2 {
            assert_eq!(
                store.realm(&format!("gone-{i}")).await.unwrap_err(),
                KeyError::UnknownTenant,
                "the IdP does not know it"
            );
        }
        let hits = idp.total_hits();
        store.update_config(settings.clone(), vec![]);
        assert!(
            matches!(
                store.realm("gone-9").await.unwrap_err(),
                KeyError::RealmUnavailable { .. }
            ),
            "the budget was spent and an unchanged reload does not refill it"
        );
        assert_eq!(
            store.realm("gone-0").await.unwrap_err(),
            KeyError::UnknownTenant
        );
        assert_eq!(idp.total_hits(), hits, "the 404 is still remembered");
        // A changed rate, or a changed base URL, does start afresh.
        let mut faster = settings.clone();
        faster.new_realms_per_second = 50;
        store.update_config(faster.clone(), vec![]);
        assert_eq!(
            store.realm("gone-9").await.unwrap_err(),
            KeyError::UnknownTenant
        );
        let hits = idp.total_hits();
        faster.base_url = format!("{}/", faster.base_url);
        store.update_config(faster, vec![]);
        assert_eq!(
            store.realm("gone-0").await.unwrap_err(),
            KeyError::UnknownTenant
        );
        assert!(idp.total_hits() > hits, "a new base URL asks the IdP again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_loaded_realm_while_idp_down_is_unavailable_with_retry_hint() {
        let idp = Idp::start().await;
        idp.set_keys("r-off", vec![rsa_a().jwk("k")]);
        idp.set_mode("r-off", Mode::Fail);
        let mut settings = test_settings(&idp.base);
        settings.min_refetch_interval = Duration::from_secs(10);
        let (store, _stop) = start_store(settings, &[], system_clock());
        let err = store.realm("r-off").await.unwrap_err();
        // 503 `realm_unavailable` once mapped: `verify`'s key_errors_map_to_auth_errors.
        assert!(matches!(err, KeyError::RealmUnavailable { .. }), "{err:?}");
        // A second request within the interval does not fetch again and says when to retry.
        let hits = idp.total_hits();
        match store.realm("r-off").await.unwrap_err() {
            KeyError::RealmUnavailable { retry_after_secs } => {
                assert!((1..=10).contains(&retry_after_secs))
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(idp.total_hits(), hits);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn install_jwks_needs_no_network() {
        let (store, _r) = key_store(JwksSettings::default(), vec![]);
        let n = store
            .install_jwks(
                "bench",
                &jwks_doc(vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")]),
            )
            .unwrap();
        assert_eq!(n, 2);
        assert!(store.static_realms_ready());
        assert!(store.install_jwks("bench", b"{}").is_err());
        assert!(store.install_jwks("a/b", b"{}").is_err());
    }
}
