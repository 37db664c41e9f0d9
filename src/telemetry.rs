//! Logging setup: `tracing` with text or JSON output on stderr (stdout stays clean for the
//! CLI's own output), `RUST_LOG` overriding the configured
//! level, and Pingora's `log` records bridged in (without the bridge they are discarded).

use tracing_subscriber::EnvFilter;

use crate::config::raw::{LogFormatSection, LoggingSection};

/// Installs the global subscriber once; later calls (tests, reloads) are no-ops.
pub fn init(cfg: &LoggingSection) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true)
        .with_writer(std::io::stderr);
    let result = match cfg.format {
        LogFormatSection::Json => builder.json().flatten_event(true).try_init(),
        LogFormatSection::Text => builder.try_init(),
    };
    if result.is_ok() {
        let _ = tracing_log::LogTracer::init();
    }
}
