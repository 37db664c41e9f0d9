//! Logging setup: `tracing` with text or JSON output on stderr (stdout stays clean for the
//! CLI's own output), `RUST_LOG` overriding the configured
//! level, and Pingora's `log` records bridged in (without the bridge they are discarded).
//!
//! Audit and access lines are written per request, so the server buffers them: a line is
//! appended to memory under an uncontended lock, and the buffer goes to stderr every
//! [`FLUSH_EVERY`] from a flusher thread, or at once when it reaches [`FLUSH_BYTES`]. One
//! `write(2)` per line cost more than the rest of a guarded request (measured in
//! BENCHMARKS.md); a channel to a writer thread still cost a wake-up per burst. Lines are
//! never dropped; shutdown flushes what is left.

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};
use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriter};
use tracing_subscriber::EnvFilter;

use crate::config::raw::{LogFormatSection, LoggingSection};

/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffer size that triggers an immediate write by the logging thread.
pub const FLUSH_BYTES: usize = 64 * 1024;

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
    lines: Arc<Mutex<Vec<u8>>>,
    sink: Sink,
}

impl LineBuffer {
    fn new(sink: Sink) -> Self {
        Self {
            lines: Arc::new(Mutex::new(Vec::with_capacity(FLUSH_BYTES))),
            sink,
        }
    }

    fn stderr() -> Self {
        Self::new(Arc::new(|bytes: &[u8]| {
            let mut err = io::stderr().lock();
            let _ = err.write_all(bytes);
            let _ = err.flush();
        }))
    }

    /// Writes out whatever is buffered. The lock is held while writing, so lines keep their
    /// order and the buffer's capacity is reused.
    fn drain(&self) {
        let mut lines = self.lines.lock();
        if !lines.is_empty() {
            (self.sink)(&lines);
            lines.clear();
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
        let full = self.guard.take().is_some_and(|g| g.len() >= FLUSH_BYTES);
        if full {
            self.buffer.drain();
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

fn start_flusher(buffer: LineBuffer) -> io::Result<Flusher> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread = {
        let (buffer, stop) = (buffer.clone(), stop.clone());
        std::thread::Builder::new()
            .name("log flusher".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::park_timeout(FLUSH_EVERY);
                    buffer.drain();
                }
            })?
    };
    Ok(Flusher {
        buffer,
        stop,
        thread,
    })
}

/// Installs the global subscriber once; later calls (tests, reloads) are no-ops.
pub fn init(cfg: &LoggingSection, writer: Writer) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let (make_writer, flusher) = match writer {
        Writer::Buffered => {
            let buffer = LineBuffer::stderr();
            match start_flusher(buffer.clone()) {
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
        LogFormatSection::Json => builder.json().flatten_event(true).try_init(),
        LogFormatSection::Text => builder.try_init(),
    };
    if result.is_ok() {
        let _ = tracing_log::LogTracer::init();
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
    fn a_full_buffer_is_written_by_the_logging_thread() {
        let (b, out) = captured();
        b.make_writer().write_all(&vec![b'x'; FLUSH_BYTES]).unwrap();
        assert_eq!(out.lock().len(), FLUSH_BYTES);
    }

    #[test]
    fn the_flusher_drains_on_its_own_and_on_shutdown() {
        let (b, out) = captured();
        let guard = LogGuard(Some(start_flusher(b.clone()).unwrap()));
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
