//! Tenants added at run time through Redis, without touching the config file.
//!
//! Contract (documented in README): a provisioning script writes one JSON value per tenant
//! into the hash `redis.tenants_key` (same fields as a `tenants[]` entry of the file) and then
//! publishes `tenants` on `redis.channel`:
//!
//! ```text
//! HSET realmgate:tenants acme '{"id":"acme","realm":"tenant-acme","hosts":["acme.example.com"]}'
//! PUBLISH realmgate:invalidate tenants
//! ```
//!
//! realmgate re-reads the whole hash, merges it after the file's tenants and swaps the
//! compiled config (the same path as a file reload). File tenants win on id conflicts; an
//! entry that does not parse or validate is skipped with a log line and never blocks the
//! others. The hash is also re-read after every (re)connection and every `resync` interval, so
//! a missed message costs at most that long.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::raw::TenantSection;
use crate::metrics::metrics;
use crate::state::Shared;

/// Parses hash entries; bad ones are reported and skipped.
pub fn parse_entries(entries: Vec<(String, String)>) -> Vec<TenantSection> {
    let mut out = Vec::with_capacity(entries.len());
    for (field, json) in entries {
        match serde_json::from_str::<TenantSection>(&json) {
            Ok(t) if t.id == field => out.push(t),
            Ok(t) => {
                tracing::warn!(field, id = %t.id, "runtime tenant skipped: the hash field must equal the tenant id")
            }
            Err(e) => {
                tracing::warn!(field, error = %e, "runtime tenant skipped: not a valid tenant JSON")
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// Background service that keeps the run-time tenants in sync with Redis.
pub struct TenantSync {
    pub shared: Arc<Shared>,
    pub url: String,
    pub key: String,
    pub channel: String,
    pub resync: Duration,
    /// The `HGETALL` answer last applied (sorted). The periodic resync sends the same answer
    /// almost every time; applying it again would recompile the whole config and flush the
    /// permission cache (a Redis miss storm every minute) for nothing.
    pub last_applied: parking_lot::Mutex<Option<Vec<(String, String)>>>,
}

impl TenantSync {
    async fn load(&self, client: &redis::Client) -> redis::RedisResult<usize> {
        let mut conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        let mut entries: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(&self.key)
            .query_async(&mut conn)
            .await?;
        // Hash order is arbitrary: sorted, the same set compares (and compiles) the same.
        entries.sort_unstable();
        let n = entries.len();
        if self.last_applied.lock().as_ref() == Some(&entries) {
            tracing::debug!(tenants = n, "runtime tenants unchanged");
            return Ok(n);
        }
        let tenants = parse_entries(entries.clone());
        // Compiling the config (10 000 tenants, upstream DNS) is blocking work: off the
        // runtime's worker threads.
        let shared = Arc::clone(&self.shared);
        let applied = tokio::task::spawn_blocking(move || shared.set_runtime_tenants(tenants))
            .await
            .map_err(|e| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "tenant compile task failed",
                    e.to_string(),
                ))
            })?;
        match applied {
            Ok(kept) => {
                *self.last_applied.lock() = Some(entries);
                metrics()
                    .config_reload_total
                    .with_label_values(&["ok"])
                    .inc();
                tracing::info!(tenants = kept, "runtime tenants loaded from redis");
            }
            Err(e) => {
                metrics()
                    .config_reload_total
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "runtime tenants rejected; the previous set stays in force");
            }
        }
        Ok(n)
    }

    /// One connection's lifetime: subscribe, load, then follow messages until an error.
    async fn session(
        &self,
        client: &redis::Client,
        shutdown: &mut ShutdownWatch,
    ) -> redis::RedisResult<()> {
        let pubsub = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        let (mut sink, mut stream) = pubsub.split();
        sink.subscribe(&self.channel).await?;
        // Subscribed first, then loaded: a change published in between is not lost.
        self.load(client).await?;
        let mut tick = tokio::time::interval(self.resync);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tick.tick() => { self.load(client).await?; }
                msg = stream.next() => match msg {
                    Some(m) => {
                        let payload = m.get_payload_bytes();
                        if payload == b"tenants" || payload.starts_with(b"tenants:") || payload == b"*" {
                            self.load(client).await?;
                        }
                    }
                    None => return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed"))),
                }
            }
        }
    }
}

#[async_trait]
impl BackgroundService for TenantSync {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let client = match redis::Client::open(self.url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "runtime tenants disabled: bad redis url");
                return;
            }
        };
        let mut backoff = Duration::from_millis(200);
        loop {
            match self.session(&client, &mut shutdown).await {
                Ok(()) => return,
                Err(e) => {
                    metrics()
                        .redis_errors_total
                        .with_label_values(&["tenants"])
                        .inc();
                    tracing::warn!(error = %e, retry_in = ?backoff, "runtime tenant sync lost redis");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_parsed_and_bad_ones_skipped() {
        let got = parse_entries(vec![
            (
                "b".into(),
                r#"{"id":"b","realm":"tenant-b","hosts":["b.example.com"]}"#.into(),
            ),
            (
                "a".into(),
                r#"{"id":"a","realm":"tenant-a","hosts":["a.example.com"],"status":"suspended"}"#
                    .into(),
            ),
            ("c".into(), r#"{"id":"other","realm":"r"}"#.into()),
            ("d".into(), r#"{"id":"d","realm":"r","hostz":[]}"#.into()),
            ("e".into(), "not json".into()),
        ]);
        let ids: Vec<&str> = got.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }
}
