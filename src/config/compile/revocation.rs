//! The `revocation:` section, compiled into [`RevocationSettings`].

use std::time::Duration;

use crate::config::raw::{
    BackchannelSection, NotBeforeSection, RedisSection, RevocationRedisSection, RevocationSection,
};
use crate::config_error::ConfigError;
use crate::revocation::settings::{ReplicaSettings, RevocationSettings};

/// `keycloak_audiences` are the back-channel default; `leeway` extends how long a revocation
/// is held; `redis` is where replicas share revocations.
pub(super) fn compile(
    r: &RevocationSection,
    keycloak_audiences: &[String],
    leeway: Duration,
    redis: Option<&RedisSection>,
    e: &mut ConfigError,
) -> RevocationSettings {
    let RevocationSection {
        enabled,
        max_token_lifetime,
        max_entries,
        backchannel,
        not_before,
        redis: shared,
    } = r;
    let BackchannelSection {
        path,
        audiences,
        max_age,
        revoke_subject,
        max_body_bytes,
        rate_per_second,
    } = backchannel;
    let NotBeforeSection {
        path: not_before_path,
    } = not_before;
    let RevocationRedisSection { channel, key } = shared;
    if *max_token_lifetime < Duration::from_secs(1)
        || *max_token_lifetime > Duration::from_secs(30 * 86_400)
    {
        e.push(
            "revocation.max_token_lifetime",
            "must be between 1s and 30d",
        );
    }
    if *max_entries == 0 || *max_entries > 10_000_000 {
        e.push("revocation.max_entries", "must be between 1 and 10000000");
    }
    for (field, path) in [
        ("revocation.backchannel.path", path),
        ("revocation.not_before.path", not_before_path),
    ] {
        let ok = path.starts_with('/')
            && path.len() > 1
            && path
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"/-._~".contains(&c));
        if !ok {
            e.push(
                field,
                format!("\"{path}\" must be an absolute path of letters, digits and - . _ ~"),
            );
        }
    }
    if path == not_before_path {
        e.push(
            "revocation.not_before.path",
            "must differ from revocation.backchannel.path",
        );
    }
    let audiences: Vec<Box<str>> = audiences
        .as_deref()
        .unwrap_or(keycloak_audiences)
        .iter()
        .map(|a| a.as_str().into())
        .collect();
    if *enabled && (audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty())) {
        e.push(
            "revocation.backchannel.audiences",
            "must name at least one client (defaults to keycloak.audiences)",
        );
    }
    if *max_age < Duration::from_secs(1) || *max_age > Duration::from_secs(3600) {
        e.push(
            "revocation.backchannel.max_age",
            "must be between 1s and 1h",
        );
    }
    if !(256..=1 << 20).contains(max_body_bytes) {
        e.push(
            "revocation.backchannel.max_body_bytes",
            "must be between 256 and 1048576",
        );
    }
    if *rate_per_second == 0 {
        e.push(
            "revocation.backchannel.rate_per_second",
            "must be at least 1",
        );
    }
    for (field, v) in [
        ("revocation.redis.channel", channel),
        ("revocation.redis.key", key),
    ] {
        if v.trim().is_empty() {
            e.push(field, "must not be empty");
        }
    }
    let leeway_secs = leeway.as_secs();
    RevocationSettings {
        enabled: *enabled,
        hold_secs: max_token_lifetime.as_secs().saturating_add(leeway_secs),
        max_entries: *max_entries,
        leeway_secs,
        backchannel_path: path.clone(),
        not_before_path: not_before_path.clone(),
        audiences,
        max_age_secs: max_age.as_secs(),
        revoke_subject: *revoke_subject,
        max_body_bytes: *max_body_bytes,
        rate_per_second: *rate_per_second,
        replica: redis.filter(|_| *enabled).map(|redis| ReplicaSettings {
            url: redis.url.clone(),
            channel: channel.clone(),
            key: key.clone(),
            command_timeout: redis.command_timeout,
        }),
    }
}
