//! The `admin:` section: the admin listeners' connection cap and the operator's write
//! listener, whose bearer secret is read here, at load (a reload re-reads it, so a rotated
//! secret applies without a restart).

use std::net::SocketAddr;

use super::listen::parse_socket_addr;
use crate::config::raw::{AdminSection, AdminWritesSection};
use crate::config::runtime::{AdminSettings, AdminToken, AdminWrites};
use crate::config_error::ConfigError;

/// The shortest secret accepted: 32 characters (e.g. `openssl rand -hex 16` gives 32).
const MIN_TOKEN_LEN: usize = 32;

/// `taken` are the other listeners' addresses (`proxy`, `admin`).
pub(super) fn compile(
    a: &AdminSection,
    taken: &[SocketAddr],
    e: &mut ConfigError,
) -> AdminSettings {
    let AdminSection {
        max_connections,
        writes,
    } = a;
    if *max_connections == 0 || *max_connections > 100_000 {
        e.push("admin.max_connections", "must be between 1 and 100000");
    }
    AdminSettings {
        max_connections: *max_connections,
        writes: writes.as_ref().and_then(|w| compile_writes(w, taken, e)),
    }
}

fn compile_writes(
    w: &AdminWritesSection,
    taken: &[SocketAddr],
    e: &mut ConfigError,
) -> Option<AdminWrites> {
    let AdminWritesSection {
        listen,
        token_file,
        token_env,
        rate_per_second,
    } = w;
    let addr = parse_socket_addr(listen)
        .map_err(|m| e.push("admin.writes.listen", m))
        .ok();
    if addr.is_some_and(|a| taken.contains(&a)) {
        e.push(
            "admin.writes.listen",
            "must differ from listen.proxy and listen.admin (writes never share a read listener)",
        );
    }
    if *rate_per_second == 0 || *rate_per_second > 10_000 {
        e.push(
            "admin.writes.rate_per_second",
            "must be between 1 and 10000",
        );
    }
    let secret = match (token_file, token_env) {
        (Some(path), None) => std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read \"{path}\": {err}"))
            .map(|s| ("admin.writes.token_file", s)),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| format!("environment variable {var} is not set"))
            .map(|s| ("admin.writes.token_env", s)),
        _ => Err("name exactly one of token_file or token_env: writes need a credential".into()),
    };
    let token = match secret {
        Ok((field, s)) => {
            let s = s.trim();
            if s.len() < MIN_TOKEN_LEN || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                e.push(
                    field,
                    format_args!(
                        "the secret must be one line of at least {MIN_TOKEN_LEN} characters without spaces"
                    ),
                );
                None
            } else {
                Some(AdminToken::new(s))
            }
        }
        Err(m) => {
            e.push("admin.writes", m);
            None
        }
    };
    Some(AdminWrites {
        addr: addr?,
        token: token?,
        rate_per_second: *rate_per_second,
    })
}
