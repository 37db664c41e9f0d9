//! The `limits` and `downstream` sections: every bound a client meets, on a request's size
//! and on its connection.

use std::time::Duration;

use super::check::{at_most, HOUR, MINUTE};
use crate::config::raw::{DownstreamSection, LimitsSection};
use crate::config_error::ConfigError;
use crate::downstream::DownstreamSettings;
use crate::limits::RequestLimits;

/// The request-size bounds must be sane and must leave room for the largest token accepted
/// (`max_token_bytes`).
pub(super) fn compile_limits(
    l: &LimitsSection,
    max_token_bytes: usize,
    e: &mut ConfigError,
) -> RequestLimits {
    let LimitsSection {
        max_uri_bytes,
        max_header_line_bytes,
        max_header_bytes,
        max_body_bytes,
    } = *l;
    if !(256..=1 << 20).contains(&max_uri_bytes) {
        e.push("limits.max_uri_bytes", "must be between 256 and 1048576");
    }
    // `authorization: Bearer <token>\r\n`
    let token_line = "authorization: Bearer ".len() + max_token_bytes + 2;
    if max_header_line_bytes < token_line {
        e.push(
            "limits.max_header_line_bytes",
            format_args!("must be at least {token_line} so a token of keycloak.max_token_bytes ({max_token_bytes}) fits"),
        );
    }
    if max_header_bytes < max_header_line_bytes || max_header_bytes > 1 << 20 {
        e.push(
            "limits.max_header_bytes",
            "must be at least limits.max_header_line_bytes and at most 1048576 (Pingora's own bound)",
        );
    }
    RequestLimits {
        max_uri_bytes,
        max_header_line_bytes,
        max_header_bytes,
        max_body_bytes,
    }
}

/// Client-connection bounds; HTTP/2's header-list bound is the request's (`max_header_bytes`).
pub(super) fn compile_downstream(
    d: &DownstreamSection,
    max_header_bytes: usize,
    e: &mut ConfigError,
) -> DownstreamSettings {
    let DownstreamSection {
        idle_timeout,
        head_timeout,
        write_timeout,
        max_connections,
        max_requests_per_connection,
        h2_max_concurrent_streams,
    } = *d;
    at_most(
        e,
        &[
            ("downstream.idle_timeout", idle_timeout, HOUR),
            ("downstream.head_timeout", head_timeout, 10 * MINUTE),
            ("downstream.write_timeout", write_timeout, HOUR),
        ],
    );
    // A zero deadline would close every connection.
    for (field, v) in [
        ("downstream.idle_timeout", idle_timeout),
        ("downstream.head_timeout", head_timeout),
        ("downstream.write_timeout", write_timeout),
    ] {
        if v < Duration::from_millis(100) {
            e.push(field, "must be at least 100ms");
        }
    }
    if !(1..=1_000_000).contains(&max_connections) {
        e.push(
            "downstream.max_connections",
            "must be between 1 and 1000000",
        );
    }
    if max_requests_per_connection == 0 {
        e.push(
            "downstream.max_requests_per_connection",
            "must be at least 1",
        );
    }
    if !(1..=10_000).contains(&h2_max_concurrent_streams) {
        e.push(
            "downstream.h2_max_concurrent_streams",
            "must be between 1 and 10000",
        );
    }
    DownstreamSettings {
        idle_timeout,
        head_timeout,
        write_timeout,
        max_connections,
        max_requests_per_connection,
        h2_max_concurrent_streams,
        h2_max_header_list_bytes: u32::try_from(max_header_bytes).unwrap_or(u32::MAX),
    }
}
