//! The invalidation subscription: how a change in Redis reaches the cache.
//!
//! Three feeds, chosen by `redis.invalidation` (`auto` tries them in this order):
//!
//! - **tracking** (Redis 6+): one RESP3 connection that subscribes to `redis.channel` and
//!   turns on `CLIENT TRACKING ON BCAST PREFIX {prefix}tenant:`. The server then pushes an
//!   `invalidate` for every key under the prefix that any client changes — `SADD`, `SREM`,
//!   `DEL`, `RENAME`, expiry and eviction alike — and one with no keys on `FLUSHDB` /
//!   `FLUSHALL`. Broadcast mode rather than default mode because our reads run on another
//!   connection (default mode would need `REDIRECT` plumbing between the two), because it
//!   also reports keys we read while they did not exist yet (a first `SADD` for a user), and
//!   because it costs the server no per-key tracking table. The price is a push for the
//!   application's other `tenant:` keys; those are recognised and ignored in O(1).
//! - **keyspace**: Redis without RESP3, or a proxy that strips it, but with keyspace
//!   notifications enabled (`notify-keyspace-events` holding `K` and `A`, or `K` with `g`,
//!   `s` and `x`): `PSUBSCRIBE __keyspace@{db}__:{prefix}tenant:*` on the pub/sub connection.
//!   realmgate never changes the server's configuration itself.
//! - **ttl**: neither is available: only `redis.channel` messages and `cache_ttl` bound how
//!   long a change written straight to Redis takes.
//!
//! Every feed keeps `redis.channel` (other replicas, tenant-wide and `*` messages). Each
//! notification is the same O(1) generation bump a channel message is. Every (re)connection
//! clears the cache: whatever changed while we were not listening is forgotten. The active
//! mode is logged, exported as `realmgate_grant_invalidation_mode{mode}` and reported in
//! `/readyz`.

use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use redis::{AsyncConnectionConfig, ProtocolVersion, PushKind, RedisError, RedisResult, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::counters::counters;
use super::invalidation::Invalidation;
use super::link::{backoff, Link};
use super::settings::InvalidationPreference;
use super::GrantStore;
use crate::metrics::metrics;

pub(super) const MODE_NONE: u8 = 0;
pub(super) const MODE_TRACKING: u8 = 1;
pub(super) const MODE_KEYSPACE: u8 = 2;
pub(super) const MODE_TTL: u8 = 3;
const MODES: [&str; 4] = ["none", "tracking", "keyspace", "ttl"];

pub(super) fn mode_name(mode: u8) -> &'static str {
    MODES.get(usize::from(mode)).copied().unwrap_or("none")
}

/// How a subscription ended.
enum Session {
    Shutdown,
    Failed {
        was_subscribed: bool,
    },
    /// The server cannot do what this feed needs (no RESP3, no tracking): try the next one.
    Unsupported(String),
}

/// Whether the pub/sub session also listens to keyspace events.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Keyspace {
    No,
    IfEnabled,
    Required,
}

/// A server error that means "this Redis cannot do that", not "Redis is down".
fn unsupported(e: &RedisError) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("unknown command")
        || text.contains("unknown subcommand")
        || text.contains("noproto")
        || text.contains("unsupported protocol")
}

impl<T: Send + Sync + 'static> GrantStore<T> {
    /// Listens for invalidations until `shutdown` turns true (or its sender is dropped), with
    /// the feed `redis.invalidation` selects (see the module docs). Reconnects with backoff;
    /// clears the cache on every successful (re)subscription because changes may have been
    /// missed. Returns at once without Redis. Run it on its own (background) runtime: its
    /// connections are made here.
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
            let session = match link.invalidation {
                InvalidationPreference::Auto => {
                    match self.tracking_session(&link, &mut shutdown).await {
                        Session::Unsupported(why) => {
                            info!(reason = %why, "redis client tracking unavailable; trying keyspace notifications");
                            self.pubsub_session(&link, &mut shutdown, Keyspace::IfEnabled)
                                .await
                        }
                        s => s,
                    }
                }
                InvalidationPreference::Tracking => {
                    match self.tracking_session(&link, &mut shutdown).await {
                        Session::Unsupported(why) => {
                            warn!(reason = %why, "redis.invalidation is tracking but this Redis cannot track; retrying");
                            Session::Failed {
                                was_subscribed: false,
                            }
                        }
                        s => s,
                    }
                }
                InvalidationPreference::Keyspace => {
                    self.pubsub_session(&link, &mut shutdown, Keyspace::Required)
                        .await
                }
                InvalidationPreference::Pubsub => {
                    self.pubsub_session(&link, &mut shutdown, Keyspace::No)
                        .await
                }
            };
            let was_subscribed = match session {
                Session::Shutdown => break,
                Session::Failed { was_subscribed } => was_subscribed,
                Session::Unsupported(_) => false,
            };
            self.subscribed.store(false, Ordering::Release);
            if was_subscribed {
                failures = 0;
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = tokio::time::sleep(backoff(failures)) => {}
                changed = shutdown.changed() => if changed.is_err() || *shutdown.borrow() { break },
            }
        }
        self.subscribed.store(false, Ordering::Release);
        debug!("grant invalidation subscriber stopped");
    }

    fn set_mode(&self, mode: u8) {
        let old = self.mode.swap(mode, Ordering::AcqRel);
        let g = &metrics().grant_invalidation_mode;
        g.with_label_values(&[mode_name(old)]).set(0);
        g.with_label_values(&[mode_name(mode)]).set(1);
    }

    /// The subscription is up: say so, and forget everything cached before it.
    fn subscribed_now(&self, link: &Link, mode: u8) {
        self.subscribed.store(true, Ordering::Release);
        self.set_mode(mode);
        // Redis answers again: let the next miss reconnect instead of degrading (and caching
        // that) until the command link's backoff runs out.
        link.retry_now();
        self.clear();
        info!(
            channel = %link.channel,
            mode = mode_name(mode),
            "listening for grant invalidations; grant cache cleared"
        );
    }

    /// RESP3 connection: `redis.channel` and client-tracking pushes on one socket.
    async fn tracking_session(&self, link: &Link, shutdown: &mut watch::Receiver<bool>) -> Session {
        let c = counters();
        let failed = |what: &str, err: &dyn fmt::Display| {
            c.err_subscribe.inc();
            warn!(error = %err, "grant invalidation subscriber: {what} failed");
            Session::Failed {
                was_subscribed: false,
            }
        };
        let info = link.client.get_connection_info().clone();
        let resp3 = info.clone().set_redis_settings(
            info.redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3),
        );
        let client = match redis::Client::open(resp3) {
            Ok(c) => c,
            Err(e) => return failed("connect", &e),
        };
        // Pushes arrive faster than we apply them only if Redis writes grant keys faster than
        // a generation bump (nanoseconds) takes: the queue stays short.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(link.connect_timeout))
            .set_response_timeout(Some(link.connect_timeout))
            .set_push_sender(tx);
        let mut conn = match tokio::time::timeout(
            link.connect_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) if unsupported(&e) => return Session::Unsupported(e.to_string()),
            Ok(Err(e)) => return failed("connect", &e),
            Err(_) => return failed("connect", &"timed out"),
        };
        match tokio::time::timeout(link.connect_timeout, conn.subscribe(&link.channel)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return failed("subscribe", &e),
            Err(_) => return failed("subscribe", &"timed out"),
        }
        let prefix = format!("{}tenant:", link.key_prefix);
        let mut tracking = redis::cmd("CLIENT");
        tracking
            .arg("TRACKING")
            .arg("ON")
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&prefix);
        match tokio::time::timeout(
            link.connect_timeout,
            tracking.query_async::<Value>(&mut conn),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if unsupported(&e) => return Session::Unsupported(e.to_string()),
            Ok(Err(e)) => return failed("client tracking", &e),
            Err(_) => return failed("client tracking", &"timed out"),
        }
        self.subscribed_now(link, MODE_TRACKING);

        let mut ping = ping_interval(link);
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => if stopping(changed, shutdown) {
                    return Session::Shutdown;
                },
                push = rx.recv() => match push {
                    None => return lost(&"connection closed"),
                    Some(p) => match p.kind {
                        PushKind::Invalidate => self.tracking_push(p.data),
                        PushKind::Message => {
                            if let Some(Value::BulkString(payload)) = p.data.get(1) {
                                self.invalidate_bytes(payload);
                            }
                        }
                        PushKind::Disconnection => return lost(&"connection closed"),
                        _ => {}
                    },
                },
                _ = ping.tick() => {
                    let ping = redis::cmd("PING");
                    if let Some(s) = pinged(link, ping.query_async::<Value>(&mut conn)).await {
                        return s;
                    }
                }
            }
        }
    }

    /// One `invalidate` push: the changed keys, or nil for a flush of the whole database.
    fn tracking_push(&self, data: Vec<Value>) {
        let c = counters();
        match data.into_iter().next() {
            Some(Value::Array(keys)) | Some(Value::Set(keys)) => {
                for key in keys {
                    if let Value::BulkString(k) = key {
                        c.from_tracking.inc();
                        self.invalidate_key(&k);
                    }
                }
            }
            _ => {
                c.from_tracking.inc();
                self.clear();
                info!("redis flushed the database; grant cache cleared");
            }
        }
    }

    /// RESP2 pub/sub connection: `redis.channel`, and keyspace events when wanted and enabled.
    async fn pubsub_session(
        &self,
        link: &Link,
        shutdown: &mut watch::Receiver<bool>,
        keyspace: Keyspace,
    ) -> Session {
        let c = counters();
        let failed = |what: &str, err: &dyn fmt::Display| {
            c.err_subscribe.inc();
            warn!(error = %err, "grant invalidation subscriber: {what} failed");
            Session::Failed {
                was_subscribed: false,
            }
        };
        let events = match keyspace {
            Keyspace::No => false,
            Keyspace::IfEnabled | Keyspace::Required => match keyspace_events_enabled(link).await {
                Ok(true) => true,
                Ok(false) if keyspace == Keyspace::Required => {
                    warn!("redis.invalidation is keyspace but the server's notify-keyspace-events lacks K and A (or K, g, s and x); only redis.channel and cache_ttl apply");
                    false
                }
                Ok(false) => false,
                Err(e) => return failed("config get", &e),
            },
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
        if events {
            let db = link.client.get_connection_info().redis_settings().db();
            let pattern = format!("__keyspace@{db}__:{}tenant:*", link.key_prefix);
            match tokio::time::timeout(link.connect_timeout, sink.psubscribe(&pattern)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return failed("psubscribe", &e),
                Err(_) => return failed("psubscribe", &"timed out"),
            }
        }
        self.subscribed_now(link, if events { MODE_KEYSPACE } else { MODE_TTL });

        let mut ping = ping_interval(link);
        loop {
            tokio::select! {
                biased;
                changed = shutdown.changed() => if stopping(changed, shutdown) {
                    return Session::Shutdown;
                },
                msg = stream.next() => match msg {
                    Some(msg) => {
                        let channel = msg.get_channel_name();
                        match Invalidation::keyspace_key(channel) {
                            Some(key) if msg.from_pattern() => {
                                c.from_keyspace.inc();
                                self.invalidate_key(key.as_bytes());
                            }
                            _ => self.invalidate_bytes(msg.get_payload_bytes()),
                        }
                    }
                    None => return lost(&"connection closed"),
                },
                _ = ping.tick() => {
                    if let Some(s) = pinged(link, sink.ping::<Value>()).await {
                        return s;
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

fn lost(why: &dyn fmt::Display) -> Session {
    counters().err_subscribe.inc();
    warn!(reason = %why, "grant invalidation subscription lost; will reconnect");
    Session::Failed {
        was_subscribed: true,
    }
}

/// Whether a change of the shutdown watch means stop (it turned true, or its sender is gone).
fn stopping(
    changed: Result<(), watch::error::RecvError>,
    shutdown: &watch::Receiver<bool>,
) -> bool {
    changed.is_err() || *shutdown.borrow()
}

/// A health ping's outcome: `None` when the server answered in time, else the lost session.
async fn pinged(
    link: &Link,
    ping: impl std::future::Future<Output = RedisResult<Value>>,
) -> Option<Session> {
    match tokio::time::timeout(link.connect_timeout, ping).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(lost(&e)),
        Err(_) => Some(lost(&"ping timed out")),
    }
}

fn ping_interval(link: &Link) -> tokio::time::Interval {
    let mut ping = tokio::time::interval_at(
        tokio::time::Instant::now() + link.ping_interval,
        link.ping_interval,
    );
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ping
}

/// Whether the server publishes the keyspace events a grant change produces: `K` (keyspace
/// channel) with `A` (all classes) or with `g` (DEL, RENAME, EXPIRE), `s` (set commands) and
/// `x` (expiry). A server that refuses `CONFIG` (managed Redis) counts as not enabled.
async fn keyspace_events_enabled(link: &Link) -> Result<bool, RedisError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(link.connect_timeout))
        .set_response_timeout(Some(link.connect_timeout));
    let mut conn = link
        .client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let reply: RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query_async(&mut conn)
        .await;
    let flags = match reply {
        Ok(v) => v.get(1).cloned().unwrap_or_default(),
        Err(e) if e.code().is_some() => return Ok(false),
        Err(e) => return Err(e),
    };
    Ok(keyspace_flags_suffice(&flags))
}

/// Pure: see [`keyspace_events_enabled`].
fn keyspace_flags_suffice(flags: &str) -> bool {
    let has = |c: char| flags.contains(c);
    has('K') && (has('A') || (has('g') && has('s') && has('x')))
}

/// Runs [`GrantStore::run_subscriber`] as a Pingora background service, so its connections
/// live on that service's runtime.
pub struct GrantSubscriber<T>(pub Arc<GrantStore<T>>);

#[async_trait]
impl<T: Send + Sync + 'static> BackgroundService for GrantSubscriber<T> {
    async fn start(&self, shutdown: ShutdownWatch) {
        Arc::clone(&self.0).run_subscriber(shutdown).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyspace_flags() {
        for (flags, ok) in [
            ("KA", true),
            ("AK", true),
            ("Kgsx", true),
            ("Kgxs$", true),
            ("Kgs", false),
            ("EA", false),
            ("", false),
            ("Ex", false),
        ] {
            assert_eq!(keyspace_flags_suffice(flags), ok, "{flags:?}");
        }
        assert_eq!(mode_name(MODE_TRACKING), "tracking");
        assert_eq!(mode_name(MODE_KEYSPACE), "keyspace");
        assert_eq!(mode_name(MODE_TTL), "ttl");
        assert_eq!(mode_name(99), "none");
    }
}
