//! The verified-token cache: what an entry pins ([`Proof`]) and the lookup that re-checks it on
//! every hit. See [`Verifier`] for why a hit can never grant more than the original token.

use std::fmt;
use std::sync::Arc;

use super::claims::unexpired;
use super::error::AuthError;
use super::identity::Identity;
use super::Verifier;
use crate::jwks::PreparedKey;

/// Verified identities by token hash; each carries its [`Proof`]. Bound: the cache's capacity;
/// eviction: quick_cache CLOCK-Pro.
pub(super) type TokenCache = quick_cache::sync::Cache<u64, Arc<Identity>>;

/// Signature characters a cache entry pins: 24 base64url characters are 144 bits of the
/// signature (every supported signature is at least 86 characters, so the tail never reaches
/// the payload).
const SIG_TAIL: usize = 24;

/// The last [`SIG_TAIL`] bytes of `token`, zero-padded on the left if it is shorter.
pub(super) fn sig_tail(token: &str) -> [u8; SIG_TAIL] {
    let b = token.as_bytes();
    let n = b.len().min(SIG_TAIL);
    let mut t = [0u8; SIG_TAIL];
    t[SIG_TAIL - n..].copy_from_slice(&b[b.len() - n..]);
    t
}

/// What a cache hit must still match: the token's last [`SIG_TAIL`] bytes and length, the
/// key that verified it (not retired since) and the policy generation.
#[derive(Clone)]
pub(super) struct Proof {
    pub(super) sig_tail: [u8; SIG_TAIL],
    pub(super) len: u32,
    pub(super) generation: u64,
    pub(super) key: Arc<PreparedKey>,
}

impl fmt::Debug for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proof")
            .field("generation", &self.generation)
            .field("key", &self.key.kid())
            .finish_non_exhaustive()
    }
}

impl PartialEq for Proof {
    fn eq(&self, o: &Self) -> bool {
        self.sig_tail == o.sig_tail
            && self.len == o.len
            && self.generation == o.generation
            && Arc::ptr_eq(&self.key, &o.key)
    }
}

/// What the cache says about a token before any parsing.
pub(super) enum Cached {
    Hit(Arc<Identity>),
    /// Verify afresh; the token's cache key, None when the cache is disabled.
    Miss(Option<u64>),
    Reject(AuthError),
}

impl Verifier {
    /// Looks `token` up and re-checks the entry's [`Proof`], expiry and realm (see [`Verifier`]).
    pub(super) fn cached(&self, realm: &str, token: &str) -> Cached {
        let policy = self.policy.load();
        if token.len() > policy.max_token_bytes {
            return Cached::Reject(AuthError::TokenTooLarge);
        }
        let Some(cache) = &policy.cache else {
            return Cached::Miss(None);
        };
        let key = self.hasher.hash_one(token.as_bytes());
        let Some(identity) = cache.get(&key) else {
            self.cache_miss.inc();
            return Cached::Miss(Some(key));
        };
        let now = self.keys.now();
        let max_stale = self.keys.max_stale_secs();
        let fresh = identity.proof.as_ref().is_some_and(|p| {
            p.len as usize == token.len()
                && p.sig_tail == sig_tail(token)
                && p.generation == policy.generation
                && !p.key.is_retired()
        }) && unexpired(identity.exp, policy.leeway, now)
            && self
                .keys
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
            self.cache_hit.inc();
            Cached::Hit(identity)
        } else {
            self.cache_stale.inc();
            Cached::Miss(Some(key))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::jwks::testkit::*;
    use crate::verify::testkit::*;
    use crate::verify::VerifySettings;
    use std::time::Duration;

    #[test]
    fn sig_tail_pins_the_last_bytes_left_padded() {
        let long = format!("{}{}", "h.p.", "s".repeat(10) + "abcdefghijklmnopqrstuvwx");
        assert_eq!(&sig_tail(&long), b"abcdefghijklmnopqrstuvwx");
        let mut want = [0u8; SIG_TAIL];
        want[SIG_TAIL - 3..].copy_from_slice(b"a.b");
        assert_eq!(sig_tail("a.b"), want);
        assert_eq!(sig_tail(""), [0u8; SIG_TAIL]);
    }

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
