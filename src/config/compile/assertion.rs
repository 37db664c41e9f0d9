//! The `assertion` section: the signed identity assertion sent upstream.

use std::path::PathBuf;

use super::check::{at_most, HOUR};
use crate::assertion::{AssertionKey, AssertionSettings};
use crate::config::raw::AssertionSection;
use crate::config_error::ConfigError;

/// `None` when disabled. A configured key file is parsed here so `realmgate check` catches a
/// bad key before a start.
pub(super) fn compile(a: &AssertionSection, e: &mut ConfigError) -> Option<AssertionSettings> {
    let AssertionSection {
        enabled,
        header,
        ttl,
        issuer,
        audience,
        key_file,
    } = a;
    // Bounded even when disabled, like every duration. Assertions are short-lived: within
    // the ttl one could be replayed.
    at_most(e, &[("assertion.ttl", *ttl, HOUR)]);
    if !enabled {
        return None;
    }
    let header = crate::http::headers::parse_header_name(header)
        .map_err(|m| e.push("assertion.header", m))
        .ok();
    if ttl.as_secs() == 0 || ttl.subsec_nanos() != 0 {
        e.push(
            "assertion.ttl",
            "must be a whole number of seconds, at least 1s",
        );
    }
    if issuer.trim().is_empty() {
        e.push("assertion.issuer", "must not be empty");
    }
    if audience.trim().is_empty() {
        e.push("assertion.audience", "must not be empty");
    }
    let key_file = key_file.as_ref().map(PathBuf::from);
    if let Some(path) = &key_file {
        if let Err(err) = AssertionKey::from_file(path) {
            e.push("assertion.key_file", err);
        }
    }
    Some(AssertionSettings {
        header: header?,
        ttl_secs: ttl.as_secs(),
        issuer: issuer.clone(),
        audience: audience.clone(),
        key_file,
    })
}
