//! Loaders: the platform's source of truth, asked when a grant key is absent from Redis.
//!
//! In the seed platforms `tenant:{t}:user:{u}:permissions` and `…:role:{r}:permissions` are a
//! cache-aside copy of PostgreSQL tables, filled by the application on its own reads and
//! deleted on change. A key that is absent therefore means "not cached", not "no grants":
//! with a loader configured it is a miss, answered by the `http` or `postgres` source.
//!
//! # Per key
//! - **Single flight**: concurrent misses for one key share one call, whatever identity
//!   (token, roles, claim) asked; waiters take the leader's answer.
//! - **Negative caching**: an empty answer is believed for `negative_ttl`, unless an
//!   invalidation for that key (or its tenant, or a clear) arrives first. A found set is not
//!   held here: it lives in the compiled-set cache and, with write-back, in Redis.
//! - **Bound and eviction**: at most `cache_size` keys (answers and in-flight calls), S3-FIFO.
//!
//! # Failures
//! A call that errors, times out (`timeout`, waiting for a slot or a connection included) or
//! is refused by a backing-off loader makes the whole identity's grant source
//! [`super::GrantSource::Unavailable`]: loader-only grants fail closed, config and token grants
//! still apply, and the set is cached for `degraded_ttl`. After a failure the loader backs off
//! (100 ms .. 5 s, jittered) and misses do not call it until then: a dead database costs
//! requests nothing. At most `max_in_flight` calls run at once.
//!
//! # Write-back
//! With `write_back`, a found set is written into Redis as the application would do it itself:
//! `SADD` + `EXPIRE` in one `MULTI`, user sets for `user_ttl`, role sets for `role_ttl`, off
//! the request path. It is skipped when the key was invalidated while the loader ran (the
//! answer may predate that change), and for empty answers (Redis has no empty sets).
//!
//! # Metrics
//! `realmgate_grant_loader_calls_total{loader,result}`: `found`, `empty`, `error`, `timeout`,
//! `skipped` (backing off or no slot). `realmgate_grant_write_backs_total{result}`.

mod http;
mod postgres;
mod settings;
mod template;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use quick_cache::sync::Cache;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

pub use self::settings::{
    HttpSettings, LoaderSettings, PostgresSettings, SourceSettings, WriteBack,
};

use self::http::HttpSource;
use self::postgres::PostgresSource;
use super::link::backoff;
use super::{MAX_MEMBERS_PER_KEY, MAX_MEMBER_LEN};
use crate::metrics::metrics;

/// Which set a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Subject<'a> {
    User(&'a str),
    Role(&'a str),
}

/// A source's setting per kind of key (the http loader's URL templates, the postgres loader's
/// queries). Either may be absent: a deployment may load only users or only roles, and a key
/// of a kind without a setting is answered empty without a call.
pub(super) struct PerSubject<T> {
    pub(super) user: Option<T>,
    pub(super) role: Option<T>,
}

impl<T> PerSubject<T> {
    /// The setting for `subject`'s kind, with the name the key is asked for.
    pub(super) fn get<'s>(&self, subject: &Subject<'s>) -> Option<(&T, &'s str)> {
        match *subject {
            Subject::User(u) => Some((self.user.as_ref()?, u)),
            Subject::Role(r) => Some((self.role.as_ref()?, r)),
        }
    }

    /// Whether keys of `subject`'s kind are loaded at all.
    pub(super) fn loads(&self, subject: &Subject<'_>) -> bool {
        self.get(subject).is_some()
    }
}

/// Why a loader gave no answer. Logged (without user ids), never shown to clients.
#[derive(Debug, thiserror::Error)]
pub(super) enum LoadError {
    #[error("timed out")]
    Timeout,
    #[error("backing off after a failure, or no call slot free")]
    Skipped,
    #[error("answered HTTP {0}")]
    Status(u16),
    #[error("response body over the limit")]
    TooLarge,
    #[error("response body is not a JSON list of permission codes")]
    BadBody,
    #[error("transport: {0}")]
    Transport(String),
    #[error("query: {0}")]
    Query(String),
}

/// A setting that cannot work: `(field under redis.loader, what is wrong)`.
pub type FieldError = (String, String);

pub(super) fn field(name: impl Into<String>, message: impl Into<String>) -> FieldError {
    (name.into(), message.into())
}

enum Source {
    Http(HttpSource),
    Postgres(PostgresSource),
}

/// What the loader said about one key.
struct Answer {
    tenant: Box<str>,
    /// The key's kind and name, owned: the answer outlives the request.
    role: bool,
    name: Box<str>,
    /// `None`: the call failed.
    codes: Option<Arc<[String]>>,
    done: Instant,
    /// Held (and served to later callers) until then; a found set or a failure only reaches
    /// the callers that waited for it.
    expires: Instant,
    generation: u64,
}

impl Answer {
    fn is(&self, tenant: &str, subject: &Subject<'_>) -> bool {
        let (role, name) = subject.parts();
        *self.tenant == *tenant && self.role == role && *self.name == *name
    }
}

struct Counters {
    found: IntCounter,
    empty: IntCounter,
    error: IntCounter,
    timeout: IntCounter,
    skipped: IntCounter,
    wb_ok: IntCounter,
    wb_error: IntCounter,
    wb_skipped: IntCounter,
}

/// The loader of one deployment. Shared by all requests.
pub(super) struct Loader {
    source: Source,
    name: &'static str,
    timeout: Duration,
    negative_ttl: Duration,
    pub(super) write_back: Option<WriteBack>,
    answers: Cache<u64, Arc<Answer>>,
    hasher: ahash::RandomState,
    slots: Semaphore,
    health: parking_lot::Mutex<Health>,
    counters: Counters,
}

#[derive(Default)]
struct Health {
    failures: u32,
    retry_at: Option<Instant>,
}

impl Loader {
    pub(super) fn new(s: &LoaderSettings) -> Result<Self, FieldError> {
        if s.timeout.is_zero() {
            return Err(field("timeout", "must be positive"));
        }
        if s.cache_size == 0 || s.max_in_flight == 0 {
            return Err(field(
                "cache_size",
                "cache_size and max_in_flight must be at least 1",
            ));
        }
        let source = Source::new(s)?;
        let name = s.source.name();
        let m = metrics();
        let call = |r: &str| m.grant_loader_calls_total.with_label_values(&[name, r]);
        let wb = |r: &str| m.grant_write_backs_total.with_label_values(&[r]);
        Ok(Self {
            source,
            name,
            timeout: s.timeout,
            negative_ttl: s.negative_ttl,
            write_back: s.write_back,
            answers: Cache::new(s.cache_size),
            hasher: ahash::RandomState::new(),
            slots: Semaphore::new(s.max_in_flight),
            health: parking_lot::Mutex::new(Health::default()),
            counters: Counters {
                found: call("found"),
                empty: call("empty"),
                error: call("error"),
                timeout: call("timeout"),
                skipped: call("skipped"),
                wb_ok: wb("ok"),
                wb_error: wb("error"),
                wb_skipped: wb("skipped"),
            },
        })
    }

    pub(super) fn name(&self) -> &'static str {
        self.name
    }

    /// Whether this loader answers for this kind of key (a deployment may load only users).
    pub(super) fn loads(&self, subject: &Subject<'_>) -> bool {
        match &self.source {
            Source::Http(h) => h.loads(subject),
            Source::Postgres(p) => p.loads(subject),
        }
    }

    /// The codes for one absent key, or None when the loader could not answer. `generation`
    /// is the key's invalidation generation now; an answer remembered under another one is
    /// not used.
    pub(super) async fn codes(
        &self,
        tenant: &str,
        subject: Subject<'_>,
        generation: u64,
    ) -> Option<Arc<[String]>> {
        let key = self.hasher.hash_one((tenant, subject));
        let asked = Instant::now();
        for _ in 0..3 {
            match self.answers.get_value_or_guard_async(&key).await {
                Ok(a) if a.is(tenant, &subject) => {
                    let now = Instant::now();
                    // Either the call we waited for, or a negative answer still believed.
                    if a.done >= asked || (now < a.expires && a.generation == generation) {
                        return a.codes.clone();
                    }
                    self.answers.remove_if(&key, |cur| Arc::ptr_eq(cur, &a));
                }
                // Another key with the same 64-bit hash: ask without remembering.
                Ok(_) => return self.call(tenant, &subject).await.map(Arc::from),
                Err(guard) => {
                    let codes = self.call(tenant, &subject).await.map(Arc::<[String]>::from);
                    let done = Instant::now();
                    let negative = codes.as_ref().is_some_and(|c| c.is_empty());
                    let answer = Answer {
                        tenant: tenant.into(),
                        role: subject.parts().0,
                        name: subject.parts().1.into(),
                        codes: codes.clone(),
                        done,
                        expires: if negative {
                            done + self.negative_ttl
                        } else {
                            done
                        },
                        generation,
                    };
                    let _ = guard.insert(Arc::new(answer));
                    return codes;
                }
            }
        }
        self.call(tenant, &subject).await.map(Arc::from)
    }

    /// One call to the source, bounded by `timeout` (slot wait included), counted and logged.
    async fn call(&self, tenant: &str, subject: &Subject<'_>) -> Option<Vec<String>> {
        let c = &self.counters;
        if self
            .health
            .lock()
            .retry_at
            .is_some_and(|at| Instant::now() < at)
        {
            c.skipped.inc();
            return None;
        }
        let work = async {
            let _slot = self.slots.acquire().await.map_err(|_| LoadError::Skipped)?;
            match &self.source {
                Source::Http(h) => h.fetch(tenant, subject).await,
                Source::Postgres(p) => p.fetch(tenant, subject).await,
            }
        };
        let result = match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(LoadError::Timeout),
        };
        match result {
            Ok(mut codes) => {
                let total = codes.len();
                codes.retain(|c| !c.is_empty() && c.len() <= MAX_MEMBER_LEN);
                codes.truncate(MAX_MEMBERS_PER_KEY);
                if codes.len() != total {
                    counters_invalid(total - codes.len());
                    warn!(loader = self.name, tenant, total, kept = codes.len(), "loader answer had oversized codes or exceeded the member cap; the rest is ignored");
                }
                if codes.is_empty() {
                    c.empty.inc();
                } else {
                    c.found.inc();
                }
                let recovered = std::mem::take(&mut *self.health.lock()).failures > 0;
                if recovered {
                    warn!(loader = self.name, "grant loader answers again");
                }
                Some(codes)
            }
            Err(e) => {
                match e {
                    LoadError::Timeout => c.timeout.inc(),
                    LoadError::Skipped => c.skipped.inc(),
                    _ => c.error.inc(),
                }
                let failures = {
                    let mut h = self.health.lock();
                    h.failures = h.failures.saturating_add(1);
                    h.retry_at = Some(Instant::now() + backoff(h.failures));
                    h.failures
                };
                if failures == 1 {
                    warn!(loader = self.name, tenant, error = %e, "grant loader failed; its grants fail closed until it answers");
                } else {
                    debug!(loader = self.name, tenant, error = %e, failures, "grant loader failed again");
                }
                None
            }
        }
    }

    pub(super) fn wrote_back(&self, ok: bool) {
        if ok {
            self.counters.wb_ok.inc();
        } else {
            self.counters.wb_error.inc();
        }
    }

    pub(super) fn write_back_skipped(&self) {
        self.counters.wb_skipped.inc();
    }
}

impl Source {
    fn new(s: &LoaderSettings) -> Result<Self, FieldError> {
        Ok(match &s.source {
            SourceSettings::Http(h) => Source::Http(HttpSource::new(h, s.timeout)?),
            SourceSettings::Postgres(p) => Source::Postgres(PostgresSource::new(p, s.timeout)?),
        })
    }
}

/// Builds the source as the store would (templates, queries, certificate files, pool), without
/// connecting: config load reports what start would fail on.
pub fn check_loader(s: &LoaderSettings) -> Result<(), FieldError> {
    Source::new(s).map(drop)
}

impl<'a> Subject<'a> {
    fn parts(&self) -> (bool, &'a str) {
        match *self {
            Subject::User(u) => (false, u),
            Subject::Role(r) => (true, r),
        }
    }
}

fn counters_invalid(n: usize) {
    metrics()
        .invalid_grants_total
        .with_label_values(&["loader"])
        .inc_by(n as u64);
}
