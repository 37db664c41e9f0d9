//! Validation of the `revocation:` section into [`RevocationSettings`].

use std::time::Duration;

use super::errors::Errors;
use super::raw::RawConfig;
use crate::revocation::settings::{ReplicaSettings, RevocationSettings};

pub(crate) fn compile(raw: &RawConfig, e: &mut Errors) -> RevocationSettings {
    let r = &raw.revocation;
    let b = &r.backchannel;
    if r.max_token_lifetime < Duration::from_secs(1)
        || r.max_token_lifetime > Duration::from_secs(30 * 86_400)
    {
        e.push(
            "revocation.max_token_lifetime",
            "must be between 1s and 30d",
        );
    }
    if r.max_entries == 0 || r.max_entries > 10_000_000 {
        e.push("revocation.max_entries", "must be between 1 and 10000000");
    }
    for (field, path) in [
        ("revocation.backchannel.path", &b.path),
        ("revocation.not_before.path", &r.not_before.path),
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
    if b.path == r.not_before.path {
        e.push(
            "revocation.not_before.path",
            "must differ from revocation.backchannel.path",
        );
    }
    let audiences: Vec<Box<str>> = b
        .audiences
        .as_ref()
        .unwrap_or(&raw.keycloak.audiences)
        .iter()
        .map(|a| a.as_str().into())
        .collect();
    if r.enabled && (audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty())) {
        e.push(
            "revocation.backchannel.audiences",
            "must name at least one client (defaults to keycloak.audiences)",
        );
    }
    if b.max_age < Duration::from_secs(1) || b.max_age > Duration::from_secs(3600) {
        e.push(
            "revocation.backchannel.max_age",
            "must be between 1s and 1h",
        );
    }
    if !(256..=1 << 20).contains(&b.max_body_bytes) {
        e.push(
            "revocation.backchannel.max_body_bytes",
            "must be between 256 and 1048576",
        );
    }
    if b.rate_per_second == 0 {
        e.push(
            "revocation.backchannel.rate_per_second",
            "must be at least 1",
        );
    }
    for (field, v) in [
        ("revocation.redis.channel", &r.redis.channel),
        ("revocation.redis.key", &r.redis.key),
    ] {
        if v.trim().is_empty() {
            e.push(field, "must not be empty");
        }
    }
    let leeway_secs = raw.keycloak.leeway.as_secs();
    RevocationSettings {
        enabled: r.enabled,
        hold_secs: r.max_token_lifetime.as_secs().saturating_add(leeway_secs),
        max_entries: r.max_entries,
        leeway_secs,
        backchannel_path: b.path.clone(),
        not_before_path: r.not_before.path.clone(),
        audiences,
        max_age_secs: b.max_age.as_secs(),
        revoke_subject: b.revoke_subject,
        max_body_bytes: b.max_body_bytes,
        rate_per_second: b.rate_per_second,
        replica: raw
            .redis
            .as_ref()
            .filter(|_| r.enabled)
            .map(|redis| ReplicaSettings {
                url: redis.url.clone(),
                channel: r.redis.channel.clone(),
                key: r.redis.key.clone(),
                command_timeout: redis.command_timeout,
            }),
    }
}
