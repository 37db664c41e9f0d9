//! The `redis` section: grants (cache, invalidation, loader) and run-time tenants.

use super::check::{at_most, DAY, MINUTE};
use crate::config::raw::{InvalidationSection, RedisSection};
use crate::config::report::mask_url;
use crate::config::runtime::TenantSyncSettings;
use crate::config_error::ConfigError;
use crate::grants::{GrantSettings, InvalidationPreference};

/// The compiled `redis` section; both `None` without Redis.
pub(super) struct Redis {
    pub grants: Option<GrantSettings>,
    pub tenant_sync: Option<TenantSyncSettings>,
}

pub(super) fn compile(redis: Option<&RedisSection>, e: &mut ConfigError) -> Redis {
    let Some(r) = redis else {
        return Redis {
            grants: None,
            tenant_sync: None,
        };
    };
    let RedisSection {
        url,
        command_timeout,
        cache_ttl,
        cache_size,
        degraded_ttl,
        channel,
        key_prefix,
        tenants_key,
        invalidation,
        loader,
    } = r;
    at_most(
        e,
        &[
            // A permission-cache miss waits this long.
            ("redis.command_timeout", *command_timeout, MINUTE),
            // Revocation without a pub/sub message takes up to this long.
            ("redis.cache_ttl", *cache_ttl, DAY),
            ("redis.degraded_ttl", *degraded_ttl, DAY),
        ],
    );
    if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://"))
    {
        e.push(
            "redis.url",
            format_args!(
                "\"{}\" must start with redis://, rediss:// or unix://",
                mask_url(url)
            ),
        );
    }
    if command_timeout.is_zero() {
        e.push("redis.command_timeout", "must be greater than zero");
    }
    if channel.is_empty() {
        e.push("redis.channel", "must not be empty");
    }
    let loader = loader
        .as_ref()
        .and_then(|l| super::grant_loader::compile(l, e));
    let grants = GrantSettings {
        url: url.clone(),
        command_timeout: *command_timeout,
        cache_ttl: *cache_ttl,
        cache_capacity: *cache_size,
        degraded_ttl: *degraded_ttl,
        channel: channel.clone(),
        key_prefix: key_prefix.clone(),
        invalidation: match invalidation {
            InvalidationSection::Auto => InvalidationPreference::Auto,
            InvalidationSection::Tracking => InvalidationPreference::Tracking,
            InvalidationSection::Keyspace => InvalidationPreference::Keyspace,
            InvalidationSection::Pubsub => InvalidationPreference::Pubsub,
        },
        loader,
        ..GrantSettings::default()
    };
    let tenant_sync = tenants_key.as_ref().map(|key| TenantSyncSettings {
        url: url.clone(),
        key: key.clone(),
        channel: channel.clone(),
    });
    Redis {
        grants: Some(grants),
        tenant_sync,
    }
}
