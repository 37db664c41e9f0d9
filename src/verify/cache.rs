//! The verified-token cache: the entry type, the policy it is read under, and the lookup that
//! re-checks an entry's [`Proof`] on every hit. See
//! [`Verifier`](super::Verifier) for why a hit can never grant more than the original token.

use std::sync::Arc;

use prometheus::IntCounter;

use super::claims::unexpired;
use super::error::AuthError;
use super::identity::{Identity, Proof};
use super::settings::{Policy, VerifySettings};
use crate::jwks::{KeyStore, PreparedKey};
use crate::metrics::metrics;

/// Verified identities by token hash; each carries its [`Proof`]. Bound: the cache's capacity;
/// eviction: quick_cache CLOCK-Pro.
pub(super) type TokenCache = quick_cache::sync::Cache<u64, Arc<Identity>>;

/// The policy in force and the cache of tokens verified under it, swapped together on reload
/// so a request reads both with one load.
pub(super) struct Active {
    pub(super) policy: Policy,
    /// `None` when the cache is disabled (capacity 0).
    pub(super) cache: Option<Arc<TokenCache>>,
}

impl Active {
    /// Compiles `settings` as policy `generation`, with a cache of the configured capacity:
    /// `previous`'s when its capacity is unchanged (its entries die by the generation check),
    /// else a new one.
    pub(super) fn new(
        settings: VerifySettings,
        generation: u64,
        previous: Option<&Active>,
    ) -> Self {
        let capacity = settings.token_cache_capacity;
        let kept = previous
            .filter(|p| p.policy.settings.token_cache_capacity == capacity)
            .and_then(|p| p.cache.clone());
        let cache =
            (capacity > 0).then(|| kept.unwrap_or_else(|| Arc::new(TokenCache::new(capacity))));
        Self {
            policy: Policy::compile(settings, generation),
            cache,
        }
    }
}

/// What the cache says about a token before any parsing.
pub(super) enum Cached {
    Hit(Arc<Identity>),
    /// Verify afresh; the token's cache key, None when the cache is disabled.
    Miss(Option<u64>),
    Reject(AuthError),
}

/// The verifier's side of the cache: the randomly seeded key hasher and the hit, miss and
/// stale counters (handles resolved once, so a lookup hashes no labels).
pub(super) struct Lookup {
    hasher: ahash::RandomState,
    hit: IntCounter,
    miss: IntCounter,
    stale: IntCounter,
}

impl Lookup {
    pub(super) fn new() -> Self {
        let m = metrics();
        Self {
            hasher: ahash::RandomState::new(),
            hit: m.token_cache_total.with_label_values(&["hit"]),
            miss: m.token_cache_total.with_label_values(&["miss"]),
            stale: m.token_cache_total.with_label_values(&["stale"]),
        }
    }

    /// Looks `token` up and re-checks the entry's [`Proof`], expiry and realm (see
    /// [`Verifier`](super::Verifier)).
    pub(super) fn cached(
        &self,
        active: &Active,
        keys: &KeyStore,
        realm: &str,
        token: &str,
    ) -> Cached {
        let policy = &active.policy;
        if token.len() > policy.max_token_bytes {
            return Cached::Reject(AuthError::TokenTooLarge);
        }
        let Some(cache) = &active.cache else {
            return Cached::Miss(None);
        };
        let key = self.hasher.hash_one(token.as_bytes());
        let Some(identity) = cache.get(&key) else {
            self.miss.inc();
            return Cached::Miss(Some(key));
        };
        let now = keys.now();
        let max_stale = keys.max_stale_secs();
        let fresh = identity
            .proof
            .as_ref()
            .is_some_and(|p| p.holds_for(token, policy.generation))
            && unexpired(identity.exp, policy.leeway, now)
            && keys
                .with_realm(realm, |r| {
                    let ok = (Arc::ptr_eq(r.issuer(), &identity.issuer)
                        || *r.issuer() == identity.issuer)
                        && r.usable_at(now, max_stale);
                    if ok {
                        r.touch(now);
                    }
                    ok
                })
                .unwrap_or(false);
        if fresh {
            self.hit.inc();
            Cached::Hit(identity)
        } else {
            self.stale.inc();
            Cached::Miss(Some(key))
        }
    }
}

/// Shares a freshly verified `identity`, remembering it under `cache_key` with the proof of
/// how `token` was verified (by `key`, under `active`'s policy) when the cache is on.
pub(super) fn remember(
    active: &Active,
    cache_key: Option<u64>,
    token: &str,
    key: Arc<PreparedKey>,
    mut identity: Identity,
) -> Arc<Identity> {
    let (Some(cache), Some(k)) = (&active.cache, cache_key) else {
        return Arc::new(identity);
    };
    identity.proof = Some(Proof::new(token, active.policy.generation, key));
    let identity = Arc::new(identity);
    cache.insert(k, identity.clone());
    identity
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use crate::verify::testkit::*;
    use crate::verify::VerifySettings;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_kid_revokes_cached_tokens() {
        let e = env_with(
            &[("v-rev", vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")])],
            &["v-rev"],
            |s| s.refresh = Duration::from_millis(100),
            vs(),
        )
        .await;
        let t1 = mint(&rsa_a(), Some("k1"), &e.claims("v-rev"));
        let t2 = mint(&rsa_b(), Some("k2"), &e.claims("v-rev"));
        let id1 = e.verify("v-rev", &t1).await.unwrap();
        e.verify("v-rev", &t2).await.unwrap();
        e.idp.set_keys("v-rev", vec![rsa_a().jwk("k1")]);
        assert!(
            wait_until(|| async {
                crate::jwks::testkit::state_of(&e.keys, "v-rev")
                    .unwrap()
                    .kids
                    == vec!["k1".to_string()]
            })
            .await
        );
        assert_eq!(
            e.verify("v-rev", &t2).await.unwrap_err(),
            AuthError::UnknownKey
        );
        let again = e.verify("v-rev", &t1).await.unwrap();
        assert!(
            Arc::ptr_eq(&id1, &again),
            "routine refreshes keep unchanged keys' cached tokens"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn evicted_realm_and_policy_reload_invalidate_the_cache() {
        let e = env_with(
            &[
                ("d-1", vec![rsa_a().jwk("k1")]),
                ("d-2", vec![rsa_a().jwk("k1")]),
            ],
            &[],
            |s| s.max_dynamic_realms = 1,
            vs(),
        )
        .await;
        let t1 = mint(&rsa_a(), Some("k1"), &e.claims("d-1"));
        let id = e.verify("d-1", &t1).await.unwrap();
        assert!(Arc::ptr_eq(&id, &e.verify("d-1", &t1).await.unwrap()));
        e.verify("d-2", &mint(&rsa_a(), Some("k1"), &e.claims("d-2")))
            .await
            .unwrap(); // evicts d-1
        let reloaded = e.verify("d-1", &t1).await.unwrap();
        assert!(
            !Arc::ptr_eq(&id, &reloaded),
            "eviction dropped the cached verification"
        );
        // Unchanged settings keep the cache; changed ones re-verify under the new policy.
        e.verifier.update_settings(vs());
        assert!(Arc::ptr_eq(&reloaded, &e.verify("d-1", &t1).await.unwrap()));
        e.verifier.update_settings(VerifySettings {
            audiences: vec!["some-other-api".into()],
            ..vs()
        });
        assert_eq!(
            e.verify("d-1", &t1).await.unwrap_err(),
            AuthError::AudienceMismatch
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kidless_tokens_and_disabled_cache() {
        let mut bare = rsa_a().jwk("x");
        bare.as_object_mut().unwrap().remove("kid");
        let e = env_with(
            &[("v-nokid", vec![bare])],
            &["v-nokid"],
            |s| {
                // A non-Keycloak issuer with one key and no kids: the documented switch.
                Arc::make_mut(&mut s.realm_overrides).insert(
                    "v-nokid".into(),
                    crate::jwks::RealmOverride {
                        allow_missing_kid: true,
                        ..Default::default()
                    },
                );
            },
            VerifySettings {
                token_cache_capacity: 0,
                ..vs()
            },
        )
        .await;
        let t = mint(&rsa_a(), None, &e.claims("v-nokid"));
        let a = e.verify("v-nokid", &t).await.unwrap();
        let b = e.verify("v-nokid", &t).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "no cache: verified afresh");
        assert_eq!(*a, *b);
        assert_eq!(
            e.verify("v-nokid", &mint(&rsa_b(), None, &e.claims("v-nokid")))
                .await
                .unwrap_err(),
            AuthError::BadSignature
        );
    }
}
