//! The `logging` and `metrics` sections: what the process tells its operators.

use crate::config::raw::{LogFormatSection, LoggingSection, MetricsSection};
use crate::telemetry::{LogFormat, LogSettings};

impl From<&LoggingSection> for LogSettings {
    /// Also used by the CLI commands that log without a config file (their defaults are the
    /// schema's).
    fn from(l: &LoggingSection) -> Self {
        let LoggingSection {
            format,
            level,
            access_log,
        } = l;
        LogSettings {
            format: match format {
                LogFormatSection::Text => LogFormat::Text,
                LogFormatSection::Json => LogFormat::Json,
            },
            level: level.clone(),
            access_log: *access_log,
        }
    }
}

/// Distinct tenants that get their own metrics label.
pub(super) fn tenant_label_cap(m: &MetricsSection) -> usize {
    let MetricsSection { tenant_label_cap } = m;
    *tenant_label_cap
}
