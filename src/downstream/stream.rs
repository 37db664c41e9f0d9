//! The downstream connection's own clock: a transport wrapper that bounds the wait for a
//! request (idle keep-alive) and the time a request head may take once it has started
//! (slowloris), measured from its first byte (more exactly: from the first read after it that
//! has to wait, microseconds later), not restarted by every byte.
//!
//! Pingora's HTTP/1 server applies its keep-alive timeout to each read of the head, so a
//! client sending one byte every few seconds holds a connection forever. Only the proxy
//! knows where a request head ends, so the gateway marks it ([`mark_head_read`] from
//! `early_request_filter`, [`mark_request_done`] from `logging`); everything else happens in
//! `poll_read`. A deadline that passes reads as end of stream, so Pingora closes the
//! connection quietly (no 5xx, no error log per attacker).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType, ALPN,
};
use pingora::protocols::{SocketDigest, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::metrics;

/// Waiting for the next request (or the first): `idle_timeout` applies.
const IDLE: u8 = 0;
/// A request head has started arriving: `head_timeout` applies, from its first byte.
const HEAD: u8 = 1;
/// The head is complete (body and response are the proxy's business); no deadline.
const BUSY: u8 = 2;

/// The two bounds, fixed when the connection is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub idle: Duration,
    pub head: Duration,
}

/// The deadline of `phase`, entered at `since`; `None` when no deadline applies. Pure.
fn deadline(phase: u8, since: Instant, t: Timeouts) -> Option<Instant> {
    match phase {
        IDLE => Some(since + t.idle),
        HEAD => Some(since + t.head),
        _ => None,
    }
}

/// A downstream stream with the connection's request clock. Wraps the stream Pingora hands
/// the application; every transport trait is delegated unchanged.
pub struct GuardedStream {
    inner: Stream,
    /// Written by the proxy (head done, request done), read by `poll_read`.
    phase: AtomicU8,
    timeouts: Timeouts,
    /// False for HTTP/2 connections: their streams have their own limits, and the proxy never
    /// marks phases on them.
    armed: bool,
    /// The phase `poll_read` last saw, and since when it has been waiting in it. The clock is
    /// read only when a read has to wait: a request whose head arrives in one read (nearly
    /// all of them) costs no clock read at all.
    seen: u8,
    since: Option<Instant>,
    /// Armed lazily, reused for the connection's life (one allocation per connection).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.phase.load(Ordering::Relaxed))
            .finish()
    }
}

impl GuardedStream {
    /// `timeouts: None` (HTTP/2, whose streams have their own limits) never arms a deadline.
    pub fn new(inner: Stream, timeouts: Option<Timeouts>) -> Self {
        let armed = timeouts.is_some();
        let phase = if armed { IDLE } else { BUSY };
        Self {
            inner,
            phase: AtomicU8::new(phase),
            timeouts: timeouts.unwrap_or(Timeouts {
                idle: Duration::ZERO,
                head: Duration::ZERO,
            }),
            armed,
            seen: phase,
            since: None,
            sleep: None,
        }
    }

    fn set_phase(&self, phase: u8) {
        if self.armed {
            self.phase.store(phase, Ordering::Relaxed);
        }
    }

    /// Ends the connection as if the client had closed it, counting why.
    fn expire(&mut self, phase: u8) -> Poll<std::io::Result<()>> {
        let reason = if phase == IDLE {
            "idle_timeout"
        } else {
            "head_timeout"
        };
        metrics()
            .downstream_closed_total
            .with_label_values(&[reason])
            .inc();
        self.phase.store(BUSY, Ordering::Relaxed);
        self.seen = BUSY;
        Poll::Ready(Ok(()))
    }
}

fn guarded(session: &ServerSession) -> Option<&GuardedStream> {
    session.stream()?.as_any().downcast_ref::<GuardedStream>()
}

impl GuardedStream {
    /// The request head is complete: the head deadline no longer applies.
    pub fn head_read(&self) {
        self.set_phase(BUSY);
    }

    /// The response is done: the connection waits for its next request (idle deadline).
    pub fn request_done(&self) {
        self.set_phase(IDLE);
    }
}

/// [`GuardedStream::head_read`] on the session's connection (a no-op for HTTP/2).
pub fn mark_head_read(session: &ServerSession) {
    if let Some(g) = guarded(session) {
        g.head_read();
    }
}

/// [`GuardedStream::request_done`] on the session's connection (a no-op for HTTP/2).
pub fn mark_request_done(session: &ServerSession) {
    if let Some(g) = guarded(session) {
        g.request_done();
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        let phase = this.phase.load(Ordering::Relaxed);
        if phase == BUSY {
            this.seen = BUSY;
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if phase != this.seen {
            this.seen = phase;
            this.since = None;
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if phase == IDLE && buf.filled().len() > before {
                    this.phase.store(HEAD, Ordering::Relaxed);
                    this.seen = HEAD;
                    this.since = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let since = *this.since.get_or_insert_with(Instant::now);
                let Some(at) = deadline(phase, since, this.timeouts) else {
                    return Poll::Pending;
                };
                if Instant::now() >= at {
                    return this.expire(phase);
                }
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if sleep.deadline() != at {
                    sleep.as_mut().reset(at);
                }
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.expire(phase),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

use std::future::Future;

impl AsyncWrite for GuardedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await;
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for GuardedStream {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::disallowed_methods)] // the tests play a client
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Timeouts = Timeouts {
        idle: Duration::from_millis(300),
        head: Duration::from_millis(200),
    };

    #[test]
    fn deadlines_by_phase() {
        let t0 = Instant::now();
        assert_eq!(deadline(IDLE, t0, T), Some(t0 + T.idle));
        assert_eq!(deadline(HEAD, t0, T), Some(t0 + T.head));
        assert_eq!(deadline(BUSY, t0, T), None);
    }

    fn pair(t: Option<Timeouts>) -> (GuardedStream, tokio::io::DuplexStream) {
        let (a, b) = tokio::io::duplex(1024);
        (GuardedStream::new(Box::new(a), t), b)
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_ends_at_the_idle_timeout() {
        let (mut g, _client) = pair(Some(T));
        let start = Instant::now();
        let mut buf = [0u8; 8];
        assert_eq!(g.read(&mut buf).await.unwrap(), 0, "reads as end of stream");
        assert!(start.elapsed() >= T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_ends_at_the_head_deadline_from_its_first_byte() {
        let (mut g, mut client) = pair(Some(T));
        let start = Instant::now();
        let mut buf = [0u8; 8];
        let mut got = 0;
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"G").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            client
        });
        loop {
            match g.read(&mut buf).await.unwrap() {
                0 => break,
                n => got += n,
            }
        }
        // Each byte came well within the idle timeout; the head as a whole did not.
        assert!(got >= 3, "{got}");
        let took = start.elapsed();
        assert!(
            took >= T.head && took < T.head + Duration::from_millis(60),
            "{took:?}"
        );
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_request_has_no_deadline_and_the_next_wait_is_idle_again() {
        let (mut g, mut client) = pair(Some(T));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 64];
        assert!(g.read(&mut buf).await.unwrap() > 0);
        g.set_phase(BUSY);
        // A slow body: far past both timeouts between bytes, yet never cut.
        let reader = async {
            let n = g.read(&mut buf).await.unwrap();
            (n, g)
        };
        let writer = async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            client.write_all(b"body").await.unwrap();
            client
        };
        let ((n, g2), _client) = tokio::join!(reader, writer);
        assert_eq!(n, 4);
        let mut g = g2;
        g.set_phase(IDLE);
        let start = Instant::now();
        assert_eq!(g.read(&mut buf).await.unwrap(), 0);
        assert!(start.elapsed() >= T.idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unarmed_stream_never_expires() {
        let (mut g, mut client) = pair(None);
        let mut buf = [0u8; 8];
        let writer = async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            client.write_all(b"x").await.unwrap();
            client
        };
        let (n, _c) = tokio::join!(g.read(&mut buf), writer);
        assert_eq!(n.unwrap(), 1);
        g.set_phase(IDLE);
        assert_eq!(
            g.phase.load(Ordering::Relaxed),
            BUSY,
            "HTTP/2 stays unarmed"
        );
    }
}
