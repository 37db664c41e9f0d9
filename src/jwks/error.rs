//! The key store's own error type.

/// Why the store could not hand out a realm or a key.
///
/// Its own type, not `verify::AuthError`: the key store is the lower layer and imports nothing
/// from token verification. `verify` maps it into `AuthError` with a `From` impl, so the
/// stable codes and HTTP statuses stay defined in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum KeyError {
    /// Not a valid realm name, a realm the IdP does not know, or no dynamic realms allowed.
    #[error("unknown tenant")]
    UnknownTenant,
    /// Keys cannot be had in time, or are older than `max_stale`; retry after this long.
    #[error("realm keys unavailable")]
    RealmUnavailable { retry_after_secs: u64 },
    /// No key of the realm matches the token's `kid` (after at most one refetch).
    #[error("unknown signing key")]
    UnknownKey,
}
