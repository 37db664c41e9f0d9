//! The Redis key layout the backends use, and what may go into a key.

use super::MAX_KEY_PART_LEN;

/// A value we are willing to put into a Redis key.
pub(super) fn valid_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_KEY_PART_LEN
        && !s.chars().any(|c| c.is_control() || c.is_whitespace())
}

/// Tenants also exclude `:`, which keeps `tenant:{t}:user:` / `tenant:{t}:role:` unambiguous.
pub(super) fn valid_tenant(s: &str) -> bool {
    valid_part(s) && !s.contains(':')
}

pub(super) fn user_key(prefix: &str, tenant: &str, sub: &str) -> Option<String> {
    (valid_tenant(tenant) && valid_part(sub))
        .then(|| format!("{prefix}tenant:{tenant}:user:{sub}:permissions"))
}

pub(super) fn role_key(prefix: &str, tenant: &str, role: &str) -> Option<String> {
    (valid_tenant(tenant) && valid_part(role))
        .then(|| format!("{prefix}tenant:{tenant}:role:{role}:permissions"))
}
