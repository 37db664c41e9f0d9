//! Taking a revocation: the index, the jti replay set, metrics, the audit line and the
//! announcement to other replicas, in one place for every source.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use super::replay::ReplaySet;
use super::{Applied, Kind, Revocation, RevocationList};
use crate::metrics::metrics;
use crate::telemetry::log_line;

/// Where a revocation came from (the `source` label of `realmgate_revocations_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Backchannel,
    NotBefore,
    Admin,
    Replica,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Backchannel => "backchannel",
            Source::NotBefore => "not_before",
            Source::Admin => "admin",
            Source::Replica => "replica",
        }
    }
}

/// Revocations waiting for Redis at most (it is down); past it a new one holds on this
/// replica only (counted as `realmgate_redis_errors_total{op="revocation_outbox_full"}`).
pub const OUTBOX_CAPACITY: usize = 10_000;

/// The revocation state of one process. `Send + Sync`; share one.
pub struct Revoker {
    pub list: Arc<RevocationList>,
    pub replay: ReplaySet,
    /// To the replica service; None without Redis.
    outbox: Option<mpsc::Sender<Revocation>>,
    /// This process's id in announcements.
    pub origin: String,
}

impl Revoker {
    /// Without `replicated`, revocations stay in this process. With it, the receiver must be
    /// handed to [`super::replica::Replica`].
    pub fn new(max_entries: usize, replicated: bool) -> (Self, Option<mpsc::Receiver<Revocation>>) {
        let (outbox, rx) = if replicated {
            let (tx, rx) = mpsc::channel(OUTBOX_CAPACITY);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let revoker = Self {
            list: Arc::new(RevocationList::new(max_entries)),
            replay: ReplaySet::new(max_entries),
            outbox,
            origin: format!("{:016x}", rand::random::<u64>()),
        };
        (revoker, rx)
    }

    /// Takes a revocation of `kind` for `value` in the realm of `issuer`, at `at`, held for
    /// `hold_secs`: applied here at once, announced to other replicas when there are any.
    #[allow(clippy::too_many_arguments)]
    pub fn revoke(
        &self,
        kind: Kind,
        issuer: Arc<str>,
        value: &str,
        at: u64,
        hold_secs: u64,
        source: Source,
        tenant: &str,
        now: u64,
    ) -> Applied {
        let r = Revocation {
            kind,
            issuer,
            value: value.into(),
            at,
            expires: at.saturating_add(hold_secs),
        };
        self.take(r, source, tenant, now)
    }

    /// Applies `r` (from any source), counts, audits and (unless it came from a replica)
    /// announces it.
    pub fn take(&self, r: Revocation, source: Source, tenant: &str, now: u64) -> Applied {
        let applied = self.list.apply(r.clone(), now);
        metrics()
            .revocation_entries
            .set(i64::try_from(self.list.len()).unwrap_or(i64::MAX));
        if applied.changed() || source != Source::Replica {
            metrics()
                .revocations_total
                .with_label_values(&[source.as_str()])
                .inc();
            log_line!(
                INFO,
                "realmgate::audit",
                "revocation",
                source = source.as_str(),
                tenant = tenant,
                issuer = &*r.issuer,
                kind = r.kind.as_str(),
                value = &*r.value,
                at = r.at,
                expires = r.expires,
                result = match applied {
                    Applied::Added => "added",
                    Applied::Extended => "extended",
                    Applied::Unchanged => "unchanged",
                    Applied::Expired => "expired",
                    Applied::Overflowed => "overflowed_to_not_before",
                },
            );
        }
        if source != Source::Replica && applied != Applied::Expired {
            self.announce(r);
        }
        applied
    }

    /// Applies what a replica read from Redis at (re)connect: like [`Self::take`] from
    /// [`Source::Replica`] for each, but one audit line for the lot (a restart would otherwise
    /// repeat every revocation of the last hour in the audit log). Returns how many changed.
    pub fn take_loaded(&self, rs: impl IntoIterator<Item = Revocation>, now: u64) -> usize {
        let (mut read, mut changed) = (0u64, 0u64);
        for r in rs {
            read += 1;
            changed += u64::from(self.list.apply(r, now).changed());
        }
        metrics()
            .revocation_entries
            .set(i64::try_from(self.list.len()).unwrap_or(i64::MAX));
        metrics()
            .revocations_total
            .with_label_values(&[Source::Replica.as_str()])
            .inc_by(changed);
        if changed > 0 {
            log_line!(
                INFO,
                "realmgate::audit",
                "revocations read from redis",
                source = Source::Replica.as_str(),
                read = read,
                applied = changed,
            );
        }
        usize::try_from(changed).unwrap_or(usize::MAX)
    }

    fn announce(&self, r: Revocation) {
        let Some(tx) = &self.outbox else { return };
        if tx.try_send(r).is_err() {
            metrics()
                .redis_errors_total
                .with_label_values(&["revocation_outbox_full"])
                .inc();
            tracing::error!(
                capacity = OUTBOX_CAPACITY,
                "revocation outbox full (Redis unreachable for long): this revocation holds on this replica only"
            );
        }
    }

    /// Drops what expired (list and replay set) and updates the entries gauge.
    pub fn sweep(&self, now: u64) {
        self.list.sweep(now);
        self.replay.sweep(now);
        metrics()
            .revocation_entries
            .set(i64::try_from(self.list.len()).unwrap_or(i64::MAX));
    }
}

/// Sweeps expired revocations and jtis once a second (a background service).
pub struct Sweeper {
    pub revoker: Arc<Revoker>,
    pub clock: fn() -> u64,
}

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
                _ = tick.tick() => self.revoker.sweep((self.clock)()),
            }
        }
    }
}
