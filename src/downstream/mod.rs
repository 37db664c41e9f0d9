//! How realmgate treats client connections: a cap on open connections, the idle and
//! request-head deadlines ([`stream`]), and the per-connection and HTTP/2 limits Pingora
//! takes as options. Everything here is at the transport edge; the decision never sees it.

mod stream;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerOptions, ServerApp};
use pingora::protocols::http::v2::server::{default_h2_options, H2Options};
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;

use crate::http::respond::{self, Answer};
use crate::metrics::metrics;

pub use stream::{mark_head_read, mark_request_done, GuardedStream, Timeouts};

/// Compiled from the `downstream` section (and `limits.max_header_bytes` for HTTP/2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamSettings {
    /// Wait for the next request on a keep-alive connection (and for the first one).
    pub idle_timeout: Duration,
    /// The whole request head, from its first byte.
    pub head_timeout: Duration,
    /// One write to a client that does not read.
    pub write_timeout: Duration,
    /// Open client connections; past it a new one is answered 503 and closed.
    pub max_connections: usize,
    /// Requests served on one HTTP/1.1 connection before it is closed (start-only).
    pub max_requests_per_connection: u32,
    /// HTTP/2 concurrent streams per connection (start-only).
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 decoded header-list bytes (start-only; = `limits.max_header_bytes`).
    pub h2_max_header_list_bytes: u32,
}

impl DownstreamSettings {
    /// Pingora's per-service HTTP options (fixed when the service starts).
    pub fn server_options(&self) -> HttpServerOptions {
        let mut o = HttpServerOptions::default();
        // Pingora's limit counts reuses: the first request plus this many.
        o.keepalive_request_limit = Some(self.max_requests_per_connection.saturating_sub(1));
        o.h2_idle_timeout = Some(self.idle_timeout);
        o
    }

    /// HTTP/2 limits: Pingora's bounded defaults with ours applied.
    pub fn h2_options(&self) -> H2Options {
        let mut o = default_h2_options();
        o.max_concurrent_streams(self.h2_max_concurrent_streams);
        o.max_header_list_size(self.h2_max_header_list_bytes);
        o
    }
}

/// Wraps the proxy application: counts connections against the cap and gives each HTTP/1
/// connection its request clock.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    /// The current settings (read once per connection, so a reload applies to new ones).
    /// A function rather than the shared state, so this edge module depends on nothing above it.
    settings: Box<dyn Fn() -> DownstreamSettings + Send + Sync>,
    /// The answer to an HTTP/1 connection over the cap (from the refusal table).
    over_cap: Answer,
    open: AtomicUsize,
}

impl<A> GuardedApp<A> {
    pub fn new(
        inner: A,
        settings: impl Fn() -> DownstreamSettings + Send + Sync + 'static,
        over_cap: Answer,
    ) -> Self {
        Self {
            inner: Arc::new(inner),
            settings: Box::new(settings),
            over_cap,
            open: AtomicUsize::new(0),
        }
    }

    /// Takes a connection slot, or `None` when `max` are open.
    fn admit(&self, max: usize) -> Option<Slot<'_>> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before >= max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        metrics().downstream_connections.inc();
        Some(Slot(&self.open))
    }
}

/// One open connection; gives its slot back when dropped.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        metrics().downstream_connections.dec();
    }
}

/// Answers a connection over the cap: `answer` (a 503) for HTTP/1 clients (best effort,
/// bounded), then close. HTTP/2 clients just see the close (no session exists to answer on).
async fn refuse(mut stream: Stream, answer: &Answer) {
    metrics()
        .downstream_closed_total
        .with_label_values(&["connection_limit"])
        .inc();
    if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        respond::to_raw_connection(&mut stream, answer).await;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        pingora::protocols::Shutdown::shutdown(&mut *stream),
    )
    .await;
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for GuardedApp<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let s = (self.settings)();
        let Some(_slot) = self.admit(s.max_connections) else {
            refuse(stream, &self.over_cap).await;
            return None;
        };
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let timeouts = (!h2).then_some(Timeouts {
            idle: s.idle_timeout,
            head: s.head_timeout,
        });
        let mut stream: Stream = Box::new(GuardedStream::new(stream, timeouts));
        // The slot is held for as long as the connection is, reuses included.
        loop {
            stream = self.inner.process_new(stream, shutdown).await?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
