//! The refresher: the one task that talks to the IdP. It loads the static realms before
//! reporting ready, runs request-triggered fetches, and refreshes loaded realms on a
//! jittered schedule with backoff on failure.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::fetch::{build_client, fetch_keys};
use super::realm::{FetchGuard, Realm, LOADED};
use super::slots::{FetchKind, FetchSlots};
use super::store::{Cmd, KeyStore, Outcome};

/// First retry delay after a failed refresh; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Longest delay between retries of a failing realm.
pub const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// `Cache-Control: max-age` never makes a realm refresh more often than this (nor less often
/// than `refresh`): the IdP may ask us to come back sooner, not to hammer it or to hold keys
/// longer than the operator allows.
pub const MIN_MAX_AGE: Duration = Duration::from_secs(60);

/// Time until the next refresh of a realm that just loaded: `refresh`, shortened to the
/// response's `max-age` when that is sooner, but never below `min(MIN_MAX_AGE, refresh)`.
/// Jitter is applied by the caller. Pure.
pub fn next_refresh_interval(max_age: Option<Duration>, refresh: Duration) -> Duration {
    match max_age {
        Some(m) => m.min(refresh).max(MIN_MAX_AGE.min(refresh)),
        None => refresh,
    }
}

fn jittered(d: Duration) -> Duration {
    use rand::Rng;
    d.mul_f64(rand::rng().random_range(0.9..=1.1))
}

/// The only task that talks to the IdP. Run it once: as a Pingora background service, or
/// with [`JwksRefresher::run`] on any runtime.
pub struct JwksRefresher {
    store: Arc<KeyStore>,
    rx: Mutex<Option<mpsc::Receiver<Cmd>>>,
}

struct SchedEntry {
    realm: Weak<Realm>,
    due: Instant,
    backoff: Duration,
}

/// When each loaded realm is next refreshed. Bound: one entry per realm held by the store;
/// entries of realms no longer held are dropped when they come due or on reconcile.
#[derive(Default)]
struct Schedule {
    entries: HashMap<Arc<str>, SchedEntry>,
}

impl Schedule {
    fn next_due(&self, now: Instant) -> Instant {
        self.entries
            .values()
            .map(|e| e.due)
            .min()
            .unwrap_or(now + Duration::from_secs(3600))
    }
}

type Tasks = JoinSet<(Arc<Realm>, Outcome)>;

fn spawn(
    tasks: &mut Tasks,
    store: &Arc<KeyStore>,
    client: &Option<reqwest::Client>,
    realm: Arc<Realm>,
    slots: &Arc<FetchSlots>,
    kind: FetchKind,
) {
    tasks.spawn(fetch_task(
        store.clone(),
        client.clone(),
        realm,
        slots.clone(),
        kind,
    ));
}

/// Marks a realm's fetch as started by the refresher itself; false if one is in flight.
fn claim(realm: &Realm) -> bool {
    let mut gate = realm.gate.lock();
    if gate.in_flight {
        return false;
    }
    gate.in_flight = true;
    gate.last_started = Some(Instant::now());
    true
}

/// One fetch: waits for a slot of its kind, fetches, applies the result. A panic anywhere in
/// it is caught and reported as a failed fetch of the same realm, so the refresher still
/// reschedules the realm (with backoff) instead of leaving it unrefreshed.
pub(super) async fn fetch_task(
    store: Arc<KeyStore>,
    client: Option<reqwest::Client>,
    realm: Arc<Realm>,
    slots: Arc<FetchSlots>,
    kind: FetchKind,
) -> (Arc<Realm>, Outcome) {
    let r = realm.clone();
    let run = async move {
        let _guard = FetchGuard(realm.clone());
        let _slot = slots.acquire(kind).await;
        #[cfg(test)]
        testkit_panic::maybe_panic(realm.name());
        let settings = store.settings();
        let res = fetch_keys(client.as_ref(), &settings, &realm).await;
        store.apply(&realm, res)
    };
    match std::panic::AssertUnwindSafe(run).catch_unwind().await {
        Ok(outcome) => (r, outcome),
        Err(_) => {
            error!(realm = %r.name, "JWKS fetch task panicked; retrying with backoff");
            (r, Outcome::Failed)
        }
    }
}

/// Test hook: make the next fetch of a realm panic.
#[cfg(test)]
pub(crate) mod testkit_panic {
    use parking_lot::Mutex;
    use std::collections::HashSet;

    static ARMED: Mutex<Option<HashSet<String>>> = Mutex::new(None);

    pub(crate) fn panic_next_fetch(realm: &str) {
        ARMED
            .lock()
            .get_or_insert_with(HashSet::new)
            .insert(realm.into());
    }

    pub(super) fn maybe_panic(realm: &str) {
        let armed = ARMED.lock().as_mut().is_some_and(|s| s.remove(realm));
        if armed {
            panic!("injected fetch panic for {realm}");
        }
    }
}

impl JwksRefresher {
    /// The refresher of `store`, fed by the store's command channel.
    pub(super) fn new(store: Arc<KeyStore>, rx: mpsc::Receiver<Cmd>) -> Self {
        Self {
            store,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Loads the static realms, then refreshes until `shutdown` changes (or its sender drops).
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        self.run_inner(shutdown, None).await;
    }

    async fn run_inner(
        &self,
        mut shutdown: watch::Receiver<bool>,
        ready: Option<pingora::services::ServiceReadyNotifier>,
    ) {
        let Some(mut rx) = self.rx.lock().take() else {
            error!("JWKS refresher started twice; the second start does nothing");
            if let Some(r) = ready {
                r.notify_ready();
            }
            return;
        };
        let store = self.store.clone();
        let client = match build_client(&store.settings()) {
            Ok(c) => Some(c),
            Err(e) => {
                error!(error = %e, "JWKS fetching disabled");
                None
            }
        };
        let mut tasks: Tasks = JoinSet::new();
        let slots = Arc::new(FetchSlots::default());
        let mut sched = Schedule::default();
        let statics = store.static_list();
        info!(realms = statics.len(), "loading static realms");
        for realm in statics {
            if claim(&realm) {
                spawn(
                    &mut tasks,
                    &store,
                    &client,
                    realm,
                    &slots,
                    FetchKind::Scheduled,
                );
            }
        }
        while !tasks.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(res) = tasks.join_next() => self.finished(res, &mut sched),
            }
        }
        let not_ready = store.not_ready_realms();
        if not_ready.is_empty() {
            info!("all static realms loaded");
        } else {
            warn!(
                ?not_ready,
                "static realms without keys at start; retrying in the background"
            );
        }
        if let Some(r) = ready {
            r.notify_ready();
        }
        loop {
            let now = Instant::now();
            let next = sched.next_due(now);
            tokio::select! {
                _ = shutdown.changed() => break,
                cmd = rx.recv() => match cmd {
                    Some(Cmd::Fetch(realm)) => {
                        spawn(&mut tasks, &store, &client, realm, &slots, FetchKind::OnDemand);
                    }
                    None => break,
                },
                _ = store.reconcile.notified() => {
                    sched.entries.retain(|_, e| e.realm.upgrade().is_some_and(|r| store.is_current(&r)));
                    for realm in store.all_realms() {
                        if realm.is_static() && realm.state() != LOADED
                            && !sched.entries.contains_key(realm.name()) && claim(&realm)
                        {
                            spawn(&mut tasks, &store, &client, realm, &slots, FetchKind::Scheduled);
                        }
                    }
                }
                Some(res) = tasks.join_next(), if !tasks.is_empty() => self.finished(res, &mut sched),
                _ = tokio::time::sleep_until(next.into()) => {
                    let now = Instant::now();
                    let due: Vec<Arc<str>> = sched.entries.iter()
                        .filter(|(_, e)| e.due <= now).map(|(k, _)| k.clone()).collect();
                    for name in due {
                        let realm = sched.entries.get(&name).and_then(|e| e.realm.upgrade());
                        match realm {
                            Some(realm) if store.is_current(&realm) => {
                                if let Some(e) = sched.entries.get_mut(&name) {
                                    // Rescheduled when the fetch finishes.
                                    e.due = now + Duration::from_secs(3600);
                                }
                                if claim(&realm) {
                                    spawn(&mut tasks, &store, &client, realm, &slots, FetchKind::Scheduled);
                                }
                            }
                            _ => { sched.entries.remove(&name); }
                        }
                    }
                }
            }
        }
        info!("JWKS refresher stopped");
    }

    fn finished(
        &self,
        res: Result<(Arc<Realm>, Outcome), tokio::task::JoinError>,
        sched: &mut Schedule,
    ) {
        let (realm, outcome) = match res {
            Ok(r) => r,
            Err(e) => {
                // Only cancellation gets here: `fetch_task` turns its own panics into a failed
                // outcome for its realm, which is rescheduled below like any failure.
                error!(error = %e, "JWKS fetch task cancelled");
                return;
            }
        };
        if !self.store.is_current(&realm) {
            sched.entries.remove(realm.name());
            return;
        }
        let settings = self.store.settings();
        let now = Instant::now();
        match outcome {
            Outcome::Ok { max_age } => {
                let due = now + jittered(next_refresh_interval(max_age, settings.refresh));
                sched.entries.insert(
                    realm.name.clone(),
                    SchedEntry {
                        realm: Arc::downgrade(&realm),
                        due,
                        backoff: BACKOFF_START,
                    },
                );
            }
            Outcome::NotFound | Outcome::Failed => {
                let ever_loaded = realm.loaded_at.load(Ordering::Acquire) > 0;
                if !(ever_loaded || realm.is_static()) {
                    // A dynamic realm that never loaded is retried on demand only.
                    sched.entries.remove(realm.name());
                    return;
                }
                let backoff = sched
                    .entries
                    .get(realm.name())
                    .map_or(BACKOFF_START, |e| e.backoff);
                sched.entries.insert(
                    realm.name.clone(),
                    SchedEntry {
                        realm: Arc::downgrade(&realm),
                        due: now + jittered(backoff),
                        backoff: (backoff * 2).min(BACKOFF_MAX),
                    },
                );
            }
        }
    }
}

#[async_trait]
impl pingora::services::background::BackgroundService for JwksRefresher {
    /// Loads every static realm, then reports ready (so the proxy starts with keys), then
    /// refreshes until shutdown.
    async fn start_with_ready_notifier(
        &self,
        shutdown: pingora::server::ShutdownWatch,
        ready: pingora::services::ServiceReadyNotifier,
    ) {
        self.run_inner(shutdown, Some(ready)).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use crate::jwks::{key_store, system_clock};

    #[test]
    fn refresh_interval_bounds() {
        let five = Duration::from_secs(300);
        let s = Duration::from_secs;
        for (max_age, refresh, want) in [
            (None, five, five),
            (Some(s(120)), five, s(120)),
            (Some(s(5)), five, s(60)),
            (Some(s(86_400)), five, five),
            (Some(s(5)), s(10), s(10)),
            (Some(s(1)), s(30), s(30)),
        ] {
            assert_eq!(
                next_refresh_interval(max_age, refresh),
                want,
                "{max_age:?} {refresh:?}"
            );
        }
        for _ in 0..100 {
            let j = jittered(five);
            assert!(j >= s(270) && j <= s(330), "{j:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn static_realms_load_before_ready_and_readiness_tracks_keys() {
        let idp = Idp::start().await;
        idp.set_keys("r-ready", vec![rsa_a().jwk("k1")]);
        idp.set_keys("r-down", vec![rsa_a().jwk("k1")]);
        idp.set_mode("r-down", Mode::Fail);
        let (store, refresher) = key_store(
            test_settings(&idp.base),
            vec!["r-ready".into(), "r-down".into()],
        );
        assert!(!store.static_realms_ready());
        let (ready_tx, mut ready_rx) = watch::channel(false);
        let (_stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            use pingora::services::background::BackgroundService;
            refresher
                .start_with_ready_notifier(
                    stop_rx,
                    pingora::services::ServiceReadyNotifier::new(ready_tx),
                )
                .await;
        });
        ready_rx.changed().await.unwrap();
        // At the moment of readiness the initial loads are done.
        assert_eq!(state_of(&store, "r-ready").unwrap().state, "loaded");
        assert_eq!(state_of(&store, "r-down").unwrap().state, "failed");
        assert!(!store.static_realms_ready());
        assert_eq!(store.not_ready_realms(), vec!["r-down".to_string()]);
        // The refresher retries a failing static realm with backoff (1 s first).
        idp.set_mode("r-down", Mode::Ok);
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        assert!(store.not_ready_realms().is_empty());
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_fetch_is_retried_with_backoff() {
        // Fails before the fix: the JoinError dropped the realm from the schedule, so a
        // static realm whose first fetch panicked stayed without keys.
        let idp = Idp::start().await;
        idp.set_keys("r-panic", vec![rsa_a().jwk("k1")]);
        crate::jwks::refresher::testkit_panic::panic_next_fetch("r-panic");
        let (store, _stop) = start_store(test_settings(&idp.base), &["r-panic"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        assert!(store
            .lookup("r-panic")
            .unwrap()
            .find_key(Some("k1"))
            .is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refresh_rotates_keys_and_retires_dropped_ones() {
        let idp = Idp::start().await;
        idp.set_keys("r-rot", vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")]);
        let mut settings = test_settings(&idp.base);
        settings.refresh = Duration::from_millis(300);
        let (store, _stop) = start_store(settings, &["r-rot"], system_clock());
        assert!(wait_until(|| async { store.static_realms_ready() }).await);
        let realm = store.lookup("r-rot").unwrap();
        let k1 = realm.find_key(Some("k1")).unwrap();
        let k2 = realm.find_key(Some("k2")).unwrap();
        idp.set_keys("r-rot", vec![rsa_a().jwk("k1"), rsa_c().jwk("k3")]);
        assert!(wait_until(|| async { realm.find_key(Some("k3")).is_some() }).await);
        assert!(k2.is_retired(), "a key that left the JWKS is retired");
        assert!(!k1.is_retired());
        assert!(
            Arc::ptr_eq(&realm.find_key(Some("k1")).unwrap(), &k1),
            "unchanged key keeps its Arc"
        );
        // Periodic refresh keeps going (every ~300 ms here).
        let before = idp.hits("certs", "r-rot");
        assert!(wait_until(|| async { idp.hits("certs", "r-rot") >= before + 2 }).await);
    }
}
