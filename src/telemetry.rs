//! Logging setup: `tracing` with text or JSON output on stderr (stdout stays clean for the
//! CLI's own output), `RUST_LOG` overriding the configured
//! level, and Pingora's `log` records bridged in (without the bridge they are discarded).
//!
//! Audit and access lines are written per request, so the server buffers them: a line is
//! appended to memory under an uncontended lock, and a flusher thread writes the buffer to
//! stderr every [`FLUSH_EVERY`], or sooner when it passes [`FLUSH_BYTES`]. The flusher swaps
//! the buffer out and writes outside the append lock, so a proxy worker never waits on
//! stderr; only when the flusher falls [`BACKPRESSURE_BYTES`] behind (a stalled log reader)
//! does the logging thread write itself, which bounds memory without dropping lines. One
//! `write(2)` per line cost more than the rest of a guarded request (measured in
//! BENCHMARKS.md); a channel to a writer thread still cost a wake-up per burst. Lines are
//! never dropped; shutdown flushes what is left.
//!
//! The per-request lines themselves (audit decisions, access log) skip `tracing`'s formatter:
//! [`emit`] writes the same line, in the configured text or JSON shape, straight into that
//! buffer. `tracing`'s field visitors and `fmt` machinery cost ~15 000 instructions per line,
//! more than the rest of a cached-token decision; the direct writer costs a tenth of that. The
//! caller still asks `tracing::enabled!` first, so `RUST_LOG` and `logging.level` filter these
//! lines exactly as before.

use std::cell::RefCell;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;
use std::time::SystemTime;

use parking_lot::{Mutex, MutexGuard};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriter};
use tracing_subscriber::EnvFilter;

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffer size at which the flusher is woken before its period is up.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Buffer size at which the logging thread writes the buffer itself: the flusher is stuck
/// behind a slow stderr, and memory stays bounded without losing lines.
pub const BACKPRESSURE_BYTES: usize = 8 * 1024 * 1024;

/// How log lines reach stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    /// Each line written by the thread that logs it (CLI commands; daemon mode, where the
    /// flusher thread would not survive the fork).
    Direct,
    /// Lines buffered and flushed in batches (the server).
    Buffered,
}

/// Keeps the flusher running; dropping it stops the flusher and writes what is buffered.
#[must_use = "dropping the guard stops the log flusher"]
pub struct LogGuard(Option<Flusher>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f.stop.store(true, Ordering::Release);
            f.thread.thread().unpark();
            let _ = f.thread.join();
            f.buffer.drain();
        }
    }
}

struct Flusher {
    buffer: LineBuffer,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// Where drained bytes go (stderr, or a capture in tests).
type Sink = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Log lines waiting for stderr.
#[derive(Clone)]
struct LineBuffer {
    /// Where lines are appended; held only for a copy.
    lines: Arc<Mutex<Vec<u8>>>,
    /// The batch being written; its lock orders writers, so batches reach the sink in order.
    out: Arc<Mutex<Vec<u8>>>,
    sink: Sink,
    /// The flusher to wake when the buffer fills (unset without one: the logging thread writes).
    flusher: Arc<OnceLock<Thread>>,
    /// Set when the flusher was woken for a full buffer, so it is woken once, not per line.
    woken: Arc<AtomicBool>,
}

impl LineBuffer {
    fn new(sink: Sink) -> Self {
        Self {
            lines: Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES))),
            out: Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES))),
            sink,
            flusher: Arc::new(OnceLock::new()),
            woken: Arc::new(AtomicBool::new(false)),
        }
    }

    fn stderr() -> Self {
        Self::new(Arc::new(|bytes: &[u8]| {
            let mut err = io::stderr().lock();
            let _ = err.write_all(bytes);
            let _ = err.flush();
        }))
    }

    /// Writes out whatever is buffered. The buffer is swapped with the (empty) batch under the
    /// append lock and written after releasing it, so appends never wait for the write; both
    /// vectors keep their capacity.
    fn drain(&self) {
        let mut out = self.out.lock();
        // Re-armed before the swap: a buffer that fills after it wakes the flusher again.
        self.woken.store(false, Ordering::Release);
        {
            let mut lines = self.lines.lock();
            if lines.is_empty() {
                return;
            }
            std::mem::swap(&mut *lines, &mut *out);
        }
        (self.sink)(&out);
        out.clear();
    }

    /// After an append left `len` bytes buffered: wake the flusher early, or write here when
    /// there is no flusher or it has fallen too far behind.
    fn after_append(&self, len: usize) {
        if len < FLUSH_BYTES {
            return;
        }
        match self.flusher.get() {
            Some(t) if len < BACKPRESSURE_BYTES => {
                if !self.woken.swap(true, Ordering::AcqRel) {
                    t.unpark();
                }
            }
            _ => self.drain(),
        }
    }
}

/// One event's writer: the event is formatted first, then written with one `write_all`.
struct Append<'a> {
    buffer: &'a LineBuffer,
    guard: Option<MutexGuard<'a, Vec<u8>>>,
}

impl Write for Append<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let guard = self.guard.get_or_insert_with(|| self.buffer.lines.lock());
        guard.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Append<'_> {
    fn drop(&mut self) {
        if let Some(len) = self.guard.take().map(|g| g.len()) {
            self.buffer.after_append(len);
        }
    }
}

impl<'a> MakeWriter<'a> for LineBuffer {
    type Writer = Append<'a>;
    fn make_writer(&'a self) -> Self::Writer {
        Append {
            buffer: self,
            guard: None,
        }
    }
}

/// Starts the thread that drains `buffer` every `period`, or when woken for a full buffer.
fn start_flusher(buffer: LineBuffer, period: Duration) -> io::Result<Flusher> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (buffer, stop) = (buffer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("log flusher".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(period);
                    buffer.drain();
                }
            })?
    };
    let _ = buffer.flusher.set(thread.thread().clone());
    Ok(Flusher {
        buffer,
        stop,
        thread,
    })
}

/// A field value of a directly written event.
#[derive(Debug, Clone, Copy)]
pub enum Field<'a> {
    Str(&'a str),
    Num(u64),
}

impl<'a> From<&'a str> for Field<'a> {
    fn from(s: &'a str) -> Self {
        Field::Str(s)
    }
}

impl From<u64> for Field<'_> {
    fn from(n: u64) -> Self {
        Field::Num(n)
    }
}

impl From<u16> for Field<'_> {
    fn from(n: u16) -> Self {
        Field::Num(u64::from(n))
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The compiled `logging` section (its schema is `config::raw::LoggingSection`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Default filter when `RUST_LOG` is unset.
    pub level: String,
    /// One access line per request (read by the proxy's `logging` phase).
    pub access_log: bool,
}

/// One per-request log line: `log_line!(INFO, "realmgate::audit", "message", k = v, ...)` with
/// `&str`, `u16` or `u64` values. Filtered by `tracing` like any event, written by [`emit`], or
/// by `tracing` itself when the direct writer is not installed.
macro_rules! log_line {
    ($lvl:ident, $target:literal, $msg:literal, $($k:ident = $v:expr),+ $(,)?) => {{
        if tracing::enabled!(target: $target, tracing::Level::$lvl) {
            // All values first, then the names: a value may read a variable a name shadows.
            let ($($k,)+) = ($($v,)+);
            let fields = [$((stringify!($k), $crate::telemetry::Field::from($k))),+];
            if !$crate::telemetry::emit(stringify!($lvl), $target, $msg, &fields) {
                tracing::event!(target: $target, tracing::Level::$lvl, $($k),+, $msg);
            }
        }
    }};
}
pub(crate) use log_line;

/// Where [`emit`] writes, fixed by [`init`].
struct Direct {
    json: bool,
    buffer: Option<LineBuffer>,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// Writes one event as `tracing`'s formatter would (same timestamp, level, target, field
/// order and quoting; no colour), without going through it. Returns false when [`init`] did
/// not install the server's logging (tests, library use): the caller then logs with `tracing`.
/// The caller checks `tracing::enabled!` for `target` first.
pub fn emit(level: &str, target: &str, message: &str, fields: &[(&str, Field<'_>)]) -> bool {
    let Some(d) = DIRECT.get() else {
        return false;
    };
    LINE.with(|line| {
        let Ok(mut buf) = line.try_borrow_mut() else {
            return false;
        };
        buf.clear();
        format_line(
            &mut buf,
            d.json,
            SystemTime::now(),
            level,
            target,
            message,
            fields,
        );
        match &d.buffer {
            Some(b) => {
                let mut w = b.make_writer();
                let _ = w.write_all(&buf);
            }
            None => {
                let _ = io::stderr().lock().write_all(&buf);
            }
        }
        true
    })
}

fn format_line(
    buf: &mut Vec<u8>,
    json: bool,
    at: SystemTime,
    level: &str,
    target: &str,
    message: &str,
    fields: &[(&str, Field<'_>)],
) {
    let ts = humantime::format_rfc3339_micros(at);
    if json {
        let _ = write!(
            buf,
            "{{\"timestamp\":\"{ts}\",\"level\":\"{level}\",\"message\":"
        );
        json_str(buf, message);
        for (name, value) in fields {
            buf.push(b',');
            json_str(buf, name);
            buf.push(b':');
            match value {
                Field::Str(s) => json_str(buf, s),
                Field::Num(n) => buf.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            }
        }
        buf.extend_from_slice(b",\"target\":");
        json_str(buf, target);
        buf.extend_from_slice(b"}\n");
    } else {
        let _ = write!(buf, "{ts} {level:>5} {target}: {message}");
        for (name, value) in fields {
            buf.push(b' ');
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'=');
            match value {
                Field::Str(s) => debug_str(buf, s),
                Field::Num(n) => buf.extend_from_slice(itoa::Buffer::new().format(*n).as_bytes()),
            }
        }
        buf.push(b'\n');
    }
}

fn json_str(buf: &mut Vec<u8>, s: &str) {
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// `{:?}` of a string, with a fast path for the common all-printable-ASCII case.
fn debug_str(buf: &mut Vec<u8>, s: &str) {
    if s.bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        buf.push(b'"');
        buf.extend_from_slice(s.as_bytes());
        buf.push(b'"');
    } else {
        let _ = write!(buf, "{s:?}");
    }
}

/// Installs the global subscriber once; later calls (tests, reloads) are no-ops.
pub fn init(cfg: &LogSettings, writer: Writer) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let (make_writer, flusher) = match writer {
        Writer::Buffered => {
            let buffer = LineBuffer::stderr();
            match start_flusher(buffer.clone(), FLUSH_EVERY) {
                Ok(f) => (BoxMakeWriter::new(buffer), Some(f)),
                Err(_) => (BoxMakeWriter::new(io::stderr), None),
            }
        }
        Writer::Direct => (BoxMakeWriter::new(io::stderr), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        // Colour codes only for a person at a terminal, never into files or collectors.
        .with_ansi(io::stderr().is_terminal())
        .with_writer(make_writer);
    let result = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if result.is_ok() {
        let _ = tracing_log::LogTracer::init();
        let _ = DIRECT.set(Direct {
            json: matches!(cfg.format, LogFormat::Json),
            buffer: flusher.as_ref().map(|f| f.buffer.clone()),
        });
        LogGuard(flusher)
    } else {
        LogGuard(None)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn captured() -> (LineBuffer, Arc<Mutex<Vec<u8>>>) {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let sink: Sink = Arc::new(move |b: &[u8]| o.lock().extend_from_slice(b));
        (LineBuffer::new(sink), out)
    }

    /// The direct writer's lines equal what `tracing`'s formatter writes for the same event
    /// (timestamps aside), in both shapes, including values that need escaping.
    #[test]
    fn direct_lines_match_the_tracing_formatter() {
        let fields: [(&str, Field<'_>); 4] = [
            ("request_id", Field::Str("abc")),
            ("path", Field::Str("/a \"b\"\\c\u{1}é")),
            ("status", Field::Num(403)),
            ("empty", Field::Str("")),
        ];
        for json in [false, true] {
            let out = Arc::new(Mutex::new(Vec::new()));
            let o = out.clone();
            let make = move || Capture(o.clone());
            let builder = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_target(true)
                .with_writer(make);
            let dispatch = if json {
                tracing::Dispatch::new(builder.json().flatten_event(true).finish())
            } else {
                tracing::Dispatch::new(builder.finish())
            };
            tracing::dispatcher::with_default(&dispatch, || {
                tracing::info!(
                    target: "realmgate::audit",
                    request_id = "abc",
                    path = "/a \"b\"\\c\u{1}é",
                    status = 403u64,
                    empty = "",
                    "authorization decision"
                );
            });
            let theirs = String::from_utf8(out.lock().clone()).unwrap();
            let mut ours = Vec::new();
            format_line(
                &mut ours,
                json,
                SystemTime::now(),
                "INFO",
                "realmgate::audit",
                "authorization decision",
                &fields,
            );
            let ours = String::from_utf8(ours).unwrap();
            // Everything after the timestamp, byte for byte (key order and escaping included).
            let strip = |l: &str| -> String {
                let cut = if json { "\",\"level\"" } else { "Z " };
                l.split_once(cut).unwrap().1.to_string()
            };
            assert_eq!(strip(&ours), strip(&theirs), "json={json}\n{ours}{theirs}");
            assert_eq!(ours.len(), theirs.len(), "same timestamp width");
        }
    }

    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_kept_whole_and_in_order_until_drained() {
        let (b, out) = captured();
        for i in 0..3 {
            let mut w = b.make_writer();
            write!(w, "line {i}").unwrap();
            w.write_all(b"\n").unwrap();
        }
        assert!(out.lock().is_empty(), "nothing is written per line");
        b.drain();
        assert_eq!(&*out.lock(), b"line 0\nline 1\nline 2\n");
        assert!(b.lines.lock().is_empty());
    }

    #[test]
    fn without_a_flusher_a_full_buffer_is_written_by_the_logging_thread() {
        let (b, out) = captured();
        b.make_writer().write_all(&vec![b'x'; FLUSH_BYTES]).unwrap();
        assert_eq!(out.lock().len(), FLUSH_BYTES);
    }

    /// A full buffer wakes the flusher instead of writing on the logging (proxy) thread; only
    /// past the backpressure bound does the logging thread write, and nothing is lost.
    #[test]
    fn a_full_buffer_wakes_the_flusher_and_backpressure_writes_inline() {
        let (b, out) = captured();
        // A stand-in flusher that never drains: the logging thread must not write below the
        // backpressure bound.
        let idle = std::thread::spawn(|| std::thread::park_timeout(Duration::from_secs(30)));
        b.flusher.set(idle.thread().clone()).unwrap();
        b.make_writer().write_all(&vec![b'x'; FLUSH_BYTES]).unwrap();
        assert!(out.lock().is_empty(), "written on the logging thread");
        assert!(b.woken.load(Ordering::Acquire), "flusher not woken");
        b.make_writer()
            .write_all(&vec![b'y'; BACKPRESSURE_BYTES])
            .unwrap();
        assert_eq!(out.lock().len(), FLUSH_BYTES + BACKPRESSURE_BYTES);
        assert!(b.lines.lock().is_empty());
        assert!(
            !b.woken.load(Ordering::Acquire),
            "drain re-arms the wake-up"
        );
        idle.thread().unpark();
        idle.join().unwrap();
    }

    #[test]
    fn the_flusher_writes_a_full_buffer_before_its_period() {
        let (b, out) = captured();
        // A period far longer than the wait below: only the wake-up can explain a write.
        let guard = LogGuard(Some(
            start_flusher(b.clone(), Duration::from_secs(3600)).unwrap(),
        ));
        b.make_writer().write_all(b"small\n").unwrap();
        b.make_writer().write_all(&vec![b'x'; FLUSH_BYTES]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while out.lock().is_empty() {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.lock().len(), 6 + FLUSH_BYTES);
        drop(guard);
    }

    #[test]
    fn the_flusher_drains_on_its_own_and_on_shutdown() {
        let (b, out) = captured();
        let guard = LogGuard(Some(start_flusher(b.clone(), FLUSH_EVERY).unwrap()));
        b.make_writer().write_all(b"by the flusher\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.lock().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the flusher never ran"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        b.make_writer().write_all(b"at shutdown\n").unwrap();
        drop(guard);
        assert_eq!(&*out.lock(), b"by the flusher\nat shutdown\n");
    }
}
