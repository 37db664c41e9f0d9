//! The duration bound every section applies to its own durations.

use std::time::Duration;

use crate::config_error::ConfigError;

pub(super) const MINUTE: Duration = Duration::from_secs(60);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(86_400);

/// Upper bounds on durations. A bound keeps `Instant + d` and timer arithmetic far from
/// overflow (a panic on the request path or in a background task) and catches typos such as
/// `60d` for `60s`; each section's bounds are generous for its fields' purpose.
pub(super) fn at_most(e: &mut ConfigError, bounds: &[(&str, Duration, Duration)]) {
    for &(field, value, max) in bounds {
        if value > max {
            e.push(
                field,
                format_args!(
                    "{} is too long (at most {})",
                    humantime::format_duration(value),
                    humantime::format_duration(max)
                ),
            );
        }
    }
}
