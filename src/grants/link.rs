//! The command connection and its health, and the pipelined read of an identity's sets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::counters::counters;
use super::keys::{role_key, user_key};
use super::settings::{install_tls_provider, GrantError, GrantSettings};
use super::{MAX_MEMBERS_PER_KEY, MAX_MEMBER_LEN, MAX_ROLE_KEYS};

const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Converts an SMEMBERS reply, skipping what cannot be a grant string and capping the count.
pub(super) fn members(reply: Value, key: &str) -> Vec<String> {
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
/// An SMEMBERS reply as a key state: nothing at all means the key is absent.
pub(super) fn read(reply: Value, key: &str) -> Read {
    let empty = match &reply {
        Value::Nil => true,
        Value::Array(items) | Value::Set(items) => items.is_empty(),
        _ => false,
    };
    if empty {
        Read::Absent
    } else {
        Read::Members(members(reply, key))
    }
}

/// Jittered exponential backoff: 100 ms, 200 ms, ... capped at 5 s, each +-20 %.
pub(super) fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let base = BACKOFF_BASE.saturating_mul(1u32 << exp).min(BACKOFF_MAX);
    base.mul_f64(rand::rng().random_range(0.8..1.2))
}
/// The command connection and its health. The lock guards only state transitions and is never
/// held across `.await`.
pub(super) struct Link {
    pub(super) client: redis::Client,
    pub(super) channel: String,
    pub(super) key_prefix: String,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) ping_interval: Duration,
    pub(super) invalidation: super::settings::InvalidationPreference,
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
    pub(super) fn new(s: &GrantSettings) -> Result<Self, GrantError> {
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
            invalidation: s.invalidation,
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
    pub(super) fn retry_now(&self) {
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
    ///
    /// Absent is told from present in that same round trip without another command: Redis
    /// deletes a set with its last member and never stores an empty one, so an empty
    /// `SMEMBERS` reply *is* an absent key ([`Read::Absent`], a miss for the loader), and a
    /// key of another type answers `WRONGTYPE` (present, grants nothing, not a miss). An
    /// `EXISTS` per key would double the commands and tell nothing more.
    pub(super) async fn load(
        self: &Arc<Self>,
        tenant: &str,
        sub: &str,
        roles: &[Arc<str>],
    ) -> Option<Fetched> {
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
            return Some(Fetched::default());
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
        let mut take = |key: &str| -> Option<Read> {
            match replies.next()? {
                Ok(reply) => Some(read(reply, key)),
                // Data error on one key: that key grants nothing (fail closed), the rest stands.
                Err(e) if e.code() == Some("WRONGTYPE") => {
                    c.err_smembers.inc();
                    warn!(key, "grant key is not a set; ignored");
                    Some(Read::Members(Vec::new()))
                }
                // LOADING, NOAUTH, ...: Redis is not answering properly, treat as unavailable.
                Err(e) => {
                    c.err_load.inc();
                    warn!(key, error = %e, "redis refused a grant read");
                    None
                }
            }
        };
        let mut out = Fetched::default();
        if let Some(key) = &user_key {
            out.user = Some(take(key)?);
        }
        for (role, key) in &role_keys {
            let read = take(key)?;
            out.roles.push(((*role).to_owned(), read));
        }
        Some(out)
    }

    /// Writes a loader's answer into Redis the way the application fills its cache: `SADD`
    /// and `EXPIRE` in one `MULTI`, so the key never exists without its TTL. Bounded by
    /// `command_timeout`; false if it did not happen.
    pub(super) async fn write_back(
        self: &Arc<Self>,
        key: &str,
        codes: &[String],
        ttl: Duration,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + self.command_timeout;
        let Some((mut conn, _)) = self.connection(deadline).await else {
            return false;
        };
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SADD")
            .arg(key)
            .arg(codes)
            .ignore()
            .cmd("EXPIRE")
            .arg(key)
            .arg(ttl.as_secs().max(1))
            .ignore();
        match tokio::time::timeout_at(deadline, pipe.query_async::<()>(&mut conn)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                debug!(error = %e, "grant write-back failed");
                false
            }
            Err(_) => {
                debug!("grant write-back timed out");
                false
            }
        }
    }
}

/// One key's state in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Read {
    Members(Vec<String>),
    /// The key does not exist: an empty reply, since Redis holds no empty sets.
    Absent,
}

/// An identity's keys as read: `user` is None when the tenant or sub cannot form a key.
#[derive(Debug, Default)]
pub(super) struct Fetched {
    pub(super) user: Option<Read>,
    pub(super) roles: Vec<(String, Read)>,
}
