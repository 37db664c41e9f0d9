//! Revocations across replicas through Redis: the only I/O of this module.
//!
//! The contract (README, "Revocation"): every revocation a replica takes is written as one
//! JSON member ([`super::record`]) of the sorted set `revocation.redis.key`, scored by its
//! expiry (Unix seconds), and published on `revocation.redis.channel`. A replica subscribes,
//! then reads the whole set (after dropping expired members), on start and after every
//! reconnect, so one that was down or started later misses nothing still in force; while
//! subscribed, a message reaches it in milliseconds. Applying is idempotent, so a member read
//! twice or a message echoed back is harmless. Revocations taken while Redis is unreachable
//! apply locally at once and wait in a bounded outbox ([`super::revoker::OUTBOX_CAPACITY`])
//! until it is back.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisError, RedisResult};
use tokio::sync::mpsc;

use super::record::{decode, encode};
use super::revoker::{Revoker, Source};
use super::settings::ReplicaSettings;
use super::Revocation;
use crate::metrics::metrics;

/// Members read from the set at most (the list's own cap bounds what is kept).
const MAX_READ: isize = 1_000_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The replica link: a background service.
pub struct Replica {
    settings: ReplicaSettings,
    revoker: Arc<Revoker>,
    outbox: Mutex<Option<mpsc::Receiver<Revocation>>>,
    subscribed: Arc<AtomicBool>,
    clock: fn() -> u64,
}

/// Whether a replica link is subscribed now (for `/readyz` and tests).
#[derive(Clone, Default)]
pub struct ReplicaStatus(Arc<AtomicBool>);

impl ReplicaStatus {
    pub fn subscribed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

fn malformed() {
    metrics()
        .redis_errors_total
        .with_label_values(&["revocation_decode"])
        .inc();
    tracing::warn!("malformed revocation record in redis ignored");
}

fn io_error(what: &'static str) -> RedisError {
    RedisError::from((redis::ErrorKind::Io, what))
}

impl Replica {
    pub fn new(
        settings: ReplicaSettings,
        revoker: Arc<Revoker>,
        outbox: mpsc::Receiver<Revocation>,
        clock: fn() -> u64,
    ) -> (Self, ReplicaStatus) {
        let status = ReplicaStatus::default();
        (
            Self {
                settings,
                revoker,
                outbox: Mutex::new(Some(outbox)),
                subscribed: status.0.clone(),
                clock,
            },
            status,
        )
    }

    async fn command_conn(&self, client: &redis::Client) -> RedisResult<MultiplexedConnection> {
        let t = self
            .settings
            .command_timeout
            .max(Duration::from_millis(200));
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(t));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Reads every revocation still in force from the set.
    async fn load(&self, conn: &mut MultiplexedConnection) -> RedisResult<usize> {
        let now = (self.clock)();
        let key = &self.settings.key;
        let (members,): (Vec<Vec<u8>>,) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("ZRANGE")
            .arg(key)
            .arg(0)
            .arg(MAX_READ - 1)
            .query_async(conn)
            .await?;
        let mine = &self.revoker.origin;
        let theirs = members.iter().filter_map(|m| {
            let decoded = decode(m);
            if decoded.is_none() {
                malformed();
            }
            decoded.filter(|(_, origin)| origin != mine).map(|(r, _)| r)
        });
        Ok(self.revoker.take_loaded(theirs, now))
    }

    /// One member or message from another replica; true when it changed something.
    fn receive(&self, bytes: &[u8], now: u64) -> bool {
        match decode(bytes) {
            Some((r, origin)) if origin != self.revoker.origin => {
                self.revoker.take(r, Source::Replica, "", now).changed()
            }
            Some(_) => false,
            None => {
                malformed();
                false
            }
        }
    }

    /// Writes one revocation to the set and announces it.
    async fn send(&self, conn: &mut MultiplexedConnection, r: &Revocation) -> RedisResult<()> {
        let member = encode(r, &self.revoker.origin);
        let now = (self.clock)();
        redis::pipe()
            .cmd("ZADD")
            .arg(&self.settings.key)
            .arg(r.expires)
            .arg(&member)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&self.settings.key)
            .arg("-inf")
            .arg(now)
            .ignore()
            .cmd("PUBLISH")
            .arg(&self.settings.channel)
            .arg(&member)
            .ignore()
            .query_async::<()>(conn)
            .await
    }

    /// One connection's lifetime: subscribe, read the set, send what waits, then follow.
    async fn session(
        &self,
        client: &redis::Client,
        outbox: &mut mpsc::Receiver<Revocation>,
        pending: &mut VecDeque<Revocation>,
        shutdown: &mut ShutdownWatch,
    ) -> RedisResult<()> {
        let pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| io_error("connect timed out"))??;
        let (mut sink, mut stream) = pubsub.split();
        tokio::time::timeout(CONNECT_TIMEOUT, sink.subscribe(&self.settings.channel))
            .await
            .map_err(|_| io_error("subscribe timed out"))??;
        let mut conn = self.command_conn(client).await?;
        // Subscribed first, then read: a revocation published in between is not lost.
        let n = self.load(&mut conn).await?;
        while let Some(r) = pending.front() {
            self.send(&mut conn, r).await?;
            pending.pop_front();
        }
        self.subscribed.store(true, Ordering::Release);
        tracing::info!(
            channel = %self.settings.channel,
            applied = n,
            "revocations: subscribed and read from redis"
        );
        let mut ping = tokio::time::interval(Duration::from_secs(5));
        ping.tick().await;
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() {
                    return Ok(());
                },
                msg = stream.next() => match msg {
                    Some(m) => { self.receive(m.get_payload_bytes(), (self.clock)()); }
                    None => return Err(io_error("subscription closed")),
                },
                r = outbox.recv() => match r {
                    Some(r) => {
                        if let Err(e) = self.send(&mut conn, &r).await {
                            pending.push_back(r);
                            return Err(e);
                        }
                    }
                    None => return Ok(()),
                },
                _ = ping.tick() => {
                    redis::cmd("PING").query_async::<()>(&mut conn).await?;
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Replica {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut outbox) = self.outbox.lock().take() else {
            return;
        };
        if self.settings.url.starts_with("rediss://") {
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let client = match redis::Client::open(self.settings.url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "revocation replication disabled: bad redis url");
                return;
            }
        };
        let mut pending = VecDeque::new();
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self
                .session(&client, &mut outbox, &mut pending, &mut shutdown)
                .await;
            let was_up = self.subscribed.swap(false, Ordering::AcqRel);
            match result {
                Ok(()) => return,
                Err(e) => {
                    metrics()
                        .redis_errors_total
                        .with_label_values(&["revocations"])
                        .inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "revocations: redis unreachable; revocations apply on this replica and wait to be sent");
                }
            }
            if was_up {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { return },
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }
}
