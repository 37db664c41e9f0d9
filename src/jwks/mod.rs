//! Realm signing keys: OIDC discovery, JWKS fetching, prepared verification keys, refresh.
//!
//! Why it is shaped like this:
//! - **One fetcher.** Pingora runs every service on its own tokio runtime, and a reqwest
//!   client's pooled connections belong to the runtime that created them ("dispatch dropped").
//!   So all discovery/JWKS HTTP happens in the [`JwksRefresher`] task. The request path only
//!   sends it a [`Cmd`](store::Cmd) over a channel and waits, bounded, on the realm's `Notify`.
//! - **Lock-free reads.** The request path reads [`KeyStore`] through `arc-swap` snapshots: the
//!   realm map, and per realm a [`KeySet`](keys::KeySet) of keys parsed once into aws-lc-rs
//!   `ParsedPublicKey`s (never per request).
//! - **No amplification.** Request-triggered fetches (unknown kid, realm not loaded yet) are
//!   single-flight per realm and at most one per `min_refetch_interval`; never-seen dynamic
//!   realms are admitted through a global token bucket and IdP 404s are negatively cached. A
//!   flood of random kids or random subdomains therefore costs the IdP a bounded number of
//!   requests per second, whatever the attacker's request rate. Claims are checked against
//!   the realm's expected issuer before a never-seen realm is admitted, repeat fetches are
//!   capped process-wide (`refetches_per_second`), and of the 16 fetch slots 4 are reserved
//!   for the refresher's own schedule, so request-caused fetches never delay a rotation.
//! - **Fail closed, degrade gracefully.** A failed refresh keeps the last-good keys for up to
//!   `max_stale`; beyond that, or for a realm never loaded, requests get `realm_unavailable`
//!   (503), never a pass.
//!
//! Key selection rules (documented contract):
//! - A JWK is usable only if `kty` is RSA (>= 2048 bit), EC (P-256/P-384) or OKP (Ed25519);
//!   `use` is absent or `sig`; `key_ops`, when present, contains `verify`; and `alg` is absent
//!   or is one of the realm's allowed algorithms and fits the key type. Symmetric (`oct`) keys
//!   are never usable. Unusable keys are skipped with a log line.
//! - Keys without `kid`: a token without `kid` is verified only when the realm's set holds
//!   exactly one usable key (whatever that key's kid). A token with a `kid` only ever matches a
//!   key with the same `kid`. A kid-less key in a multi-key set is therefore unreachable and is
//!   skipped. Two usable keys sharing a `kid` are both skipped (ambiguous).
//! - Keys belong to their realm: each realm has its own key set, so the same `kid` in two
//!   realms names two unrelated keys.
//!
//! Layout, each file importing only files listed before it: `alg` (accepted algorithms),
//! `error` (the store's refusals), `settings` (configuration and each realm's key source),
//! `keys` (JWK parsing and key sets), `realm` (one realm's state), `slots` (fetch
//! concurrency), `fetch` (discovery, JWKS HTTP and key files: I/O only), `store` (the
//! [`KeyStore`] the request path reads, and applying fetch results), `refresher` (the fetching
//! task and its schedule), `local_signer` (a throwaway key for tokens only this process
//! trusts). This file builds a store with its refresher ([`key_store`]). The store reports its
//! refusals as its own `KeyError`; it imports nothing from `verify`.

mod alg;
mod error;
mod fetch;
mod keys;
pub mod local_signer;
mod realm;
mod refresher;
mod settings;
mod slots;
mod store;
#[cfg(test)]
pub(crate) mod testkit;

use std::sync::Arc;

pub use alg::{Alg, AlgSet};
pub(crate) use error::KeyError;
pub use fetch::parse_max_age;
pub(crate) use keys::KeyRefusal;
pub(crate) use realm::Realm;
// For `crate::testkit::fuzzing`: the JWKS parser on arbitrary documents.
#[cfg(feature = "testkit")]
pub(crate) use keys::{build_key_set, KeySet};
pub use keys::{PreparedKey, MAX_KEYS_PER_REALM};
pub use local_signer::LocalSigner;
pub use refresher::{
    next_refresh_interval, JwksRefresher, BACKOFF_MAX, BACKOFF_START, MIN_MAX_AGE,
};
pub(crate) use settings::Expectation;
pub use settings::{valid_realm_name, JwksSettings, RealmOverride};
pub use slots::{MAX_CONCURRENT_FETCHES, RESERVED_FOR_SCHEDULE};
pub use store::{system_clock, Clock, KeyStore, RealmHealth, RealmInfo, NEGATIVE_CACHE_CAPACITY};

/// Builds the key store and its refresher. Nothing is fetched until the refresher runs.
pub fn key_store(
    settings: JwksSettings,
    static_realms: Vec<String>,
) -> (Arc<KeyStore>, JwksRefresher) {
    key_store_with_clock(settings, static_realms, system_clock())
}

/// [`key_store`] with an injected clock (tests, replay tools). Built here, not in `store`, so
/// the store knows nothing of the refresher that feeds it.
pub fn key_store_with_clock(
    settings: JwksSettings,
    static_realms: Vec<String>,
    clock: Clock,
) -> (Arc<KeyStore>, JwksRefresher) {
    let (store, commands) = KeyStore::new(settings, static_realms, clock);
    let refresher = JwksRefresher::new(store.clone(), commands);
    (store, refresher)
}
