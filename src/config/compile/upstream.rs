//! The `upstream` section: the default backend, how to reach backends, and their timeouts.

use std::net::ToSocketAddrs;

use super::check::{at_most, DAY, MINUTE};
use crate::config::raw::UpstreamSection;
use crate::config::runtime::{UpstreamTarget, UpstreamTimeouts};
use crate::config_error::ConfigError;

/// The compiled `upstream` section; tenants and host patterns resolve their own upstreams
/// with its TLS settings.
pub(super) struct Upstreams {
    /// `None` when it does not resolve (the problem is reported).
    pub default: Option<UpstreamTarget>,
    pub timeouts: UpstreamTimeouts,
    tls: bool,
    sni: Option<String>,
}

impl Upstreams {
    /// Resolves `host:port` once, at load: the request path never does DNS.
    pub fn resolve(&self, s: &str) -> Result<UpstreamTarget, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("\"{s}\" must be host:port"))?;
        if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!(
                "\"{s}\" must be host:port with a port in 1..=65535"
            ));
        }
        let addr = s
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve \"{s}\": {e}"))?
            .next()
            .ok_or_else(|| format!("\"{s}\" resolves to no address"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(UpstreamTarget {
            name: s.to_string(),
            addr,
            tls: self.tls,
            sni: self.sni.as_deref().unwrap_or(host).to_string(),
        })
    }
}

pub(super) fn compile(u: &UpstreamSection, e: &mut ConfigError) -> Upstreams {
    let UpstreamSection {
        default,
        connect_timeout,
        read_timeout,
        write_timeout,
        idle_timeout,
        tls,
        sni,
    } = u;
    let mut upstreams = Upstreams {
        default: None,
        timeouts: UpstreamTimeouts {
            connect: *connect_timeout,
            read: *read_timeout,
            write: *write_timeout,
            idle: *idle_timeout,
        },
        tls: *tls,
        sni: sni.clone(),
    };
    upstreams.default = upstreams
        .resolve(default)
        .map_err(|m| e.push("upstream.default", m))
        .ok();
    for (name, v) in [
        ("upstream.connect_timeout", connect_timeout),
        ("upstream.read_timeout", read_timeout),
        ("upstream.write_timeout", write_timeout),
    ] {
        if v.is_zero() {
            e.push(name, "must be greater than zero");
        }
    }
    at_most(
        e,
        &[
            ("upstream.connect_timeout", *connect_timeout, 5 * MINUTE),
            ("upstream.read_timeout", *read_timeout, DAY),
            ("upstream.write_timeout", *write_timeout, DAY),
            ("upstream.idle_timeout", *idle_timeout, DAY),
        ],
    );
    upstreams
}
