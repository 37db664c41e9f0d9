//! The `listen` and `server` sections: where the gateway listens and how the process runs.

use std::net::SocketAddr;

use super::check::{at_most, HOUR};
use crate::config::raw::{Listen, ServerSection, TlsSection};
use crate::config::runtime::{ServerSettings, TlsFiles};
use crate::config_error::ConfigError;

/// The compiled `listen` and `server` sections.
pub(super) struct Listeners {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub proxy_tls: Option<TlsFiles>,
    pub server: ServerSettings,
}

/// `None` when an address is not usable (the problem is reported).
pub(super) fn compile(
    listen: &Listen,
    server: &ServerSection,
    e: &mut ConfigError,
) -> Option<Listeners> {
    let Listen { proxy, admin, tls } = listen;
    let proxy_addr = parse_socket_addr(proxy)
        .map_err(|m| e.push("listen.proxy", m))
        .ok();
    let admin_addr = parse_socket_addr(admin)
        .map_err(|m| e.push("listen.admin", m))
        .ok();
    if proxy_addr.is_some() && proxy_addr == admin_addr {
        e.push("listen.admin", "must differ from listen.proxy");
    }
    let proxy_tls = tls.as_ref().map(|t| {
        let TlsSection { cert, key } = t;
        for (field, path) in [("listen.tls.cert", cert), ("listen.tls.key", key)] {
            if !std::path::Path::new(path).is_file() {
                e.push(field, format_args!("\"{path}\" is not a readable file"));
            }
        }
        TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }
    });
    let server = compile_server(server, e);
    Some(Listeners {
        proxy_addr: proxy_addr?,
        admin_addr: admin_addr?,
        proxy_tls,
        server,
    })
}

fn compile_server(s: &ServerSection, e: &mut ConfigError) -> ServerSettings {
    let ServerSection {
        threads,
        grace_period,
        graceful_shutdown_timeout,
        upgrade_sock,
        pid_file,
        watch_config,
    } = s;
    if *threads == 0 {
        e.push("server.threads", "must be at least 1");
    }
    at_most(
        e,
        &[
            ("server.grace_period", *grace_period, HOUR),
            (
                "server.graceful_shutdown_timeout",
                *graceful_shutdown_timeout,
                HOUR,
            ),
        ],
    );
    ServerSettings {
        threads: *threads,
        grace_period: *grace_period,
        graceful_shutdown_timeout: *graceful_shutdown_timeout,
        upgrade_sock: upgrade_sock.clone(),
        pid_file: pid_file.clone(),
        watch_config: *watch_config,
    }
}

pub(super) fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("\"{s}\" is not an ip:port address"))
}
