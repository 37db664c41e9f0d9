//! What an invalidation names: a `redis.channel` message (`*`, `tenant:{t}`,
//! `tenant:{t}:user:{sub}`, `tenant:{t}:role:{role}`), or a changed grant key as Redis
//! reports it (a client-tracking push or a keyspace event:
//! `{prefix}tenant:{t}:user:{sub}:permissions`, `{prefix}tenant:{t}:role:{role}:permissions`).

use super::keys::{valid_part, valid_tenant};

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Invalidation<'a> {
    All,
    Tenant(&'a str),
    User(&'a str, &'a str),
    Role(&'a str, &'a str),
}

impl<'a> Invalidation<'a> {
    pub(super) fn parse(msg: &'a str) -> Option<Self> {
        let msg = msg.trim();
        if msg == "*" {
            return Some(Self::All);
        }
        let rest = msg.strip_prefix("tenant:")?;
        let (tenant, rest) = match rest.split_once(':') {
            None => return valid_tenant(rest).then_some(Self::Tenant(rest)),
            Some(parts) => parts,
        };
        if !valid_tenant(tenant) {
            return None;
        }
        if let Some(sub) = rest.strip_prefix("user:") {
            return valid_part(sub).then_some(Self::User(tenant, sub));
        }
        if let Some(role) = rest.strip_prefix("role:") {
            return valid_part(role).then_some(Self::Role(tenant, role));
        }
        None
    }

    /// The invalidation a write to `key` implies; `None` for keys that are not grant sets
    /// (tracking by prefix also reports the application's other `tenant:` keys).
    pub(super) fn for_key(prefix: &str, key: &'a str) -> Option<Self> {
        let rest = key.strip_prefix(prefix)?.strip_suffix(":permissions")?;
        match Self::parse(rest)? {
            inv @ (Self::User(..) | Self::Role(..)) => Some(inv),
            _ => None,
        }
    }

    /// The key of a keyspace-notification channel (`__keyspace@{db}__:{key}`).
    pub(super) fn keyspace_key(channel: &str) -> Option<&str> {
        channel
            .strip_prefix("__keyspace@")?
            .split_once("__:")
            .map(|(_, key)| key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_keys_map_to_their_invalidation() {
        for (prefix, key, want) in [
            (
                "",
                "tenant:acme:user:u-1:permissions",
                Some(Invalidation::User("acme", "u-1")),
            ),
            (
                "rg:",
                "rg:tenant:acme:role:admin:permissions",
                Some(Invalidation::Role("acme", "admin")),
            ),
            (
                "",
                "tenant:acme:user:a:b:permissions",
                Some(Invalidation::User("acme", "a:b")),
            ),
            ("", "tenant:acme:permissions", None),
            ("", "tenant:acme:session:x", None),
            ("rg:", "tenant:acme:user:u-1:permissions", None),
            ("", "tenant:acme:user::permissions", None),
        ] {
            assert_eq!(Invalidation::for_key(prefix, key), want, "{key}");
        }
        assert_eq!(
            Invalidation::keyspace_key("__keyspace@0__:tenant:a:user:u:permissions"),
            Some("tenant:a:user:u:permissions")
        );
        assert_eq!(Invalidation::keyspace_key("tenant:a"), None);
    }
}
