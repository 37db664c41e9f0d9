//! Access-token verification: extraction, JOSE header policy, claims, signature, the
//! forwarded [`Identity`], and the verified-token cache.
//!
//! Every check fails closed and maps to a stable [`AuthError::code`]. Cheap checks run before
//! anything that costs: header policy and `alg` before the realm is resolved; issuer, times,
//! token type, audience and subject before the key lookup (so only a plausible token can make
//! an unknown `kid` trigger a JWKS refetch) and before RSA.
//!
//! Why signatures are verified with aws-lc-rs directly instead of `jsonwebtoken::decode`:
//! `decode` parses the header into a general struct, clones the key and re-parses the RSA
//! modulus on every call, and deserialises the claims twice (once for validation, once for
//! the caller), and we need a third pass for the identity. Keys here are parsed once into
//! `ParsedPublicKey`s ([`crate::jwks`]), the claims are read once with a seed that keeps only
//! what the policy uses, and the uncached path stays within a few microseconds of the raw RSA
//! verification (see `benches/verify.rs`, which also measures `jsonwebtoken::decode`).
//! `jsonwebtoken` remains the signer in tests and the reference in the bench.
//!
//! Empty audience list: the config layer must require at least one audience. A [`Verifier`]
//! built with none refuses every token with `audience_mismatch` (fail closed) rather than
//! accepting tokens minted for any client of the realm.
//!
//! Layout, each file importing only files listed before it: `error` (the reasons and their
//! codes), `extract` (finding the token), `jose` (header policy, base64url), `settings` (the
//! operator's settings and the policy compiled from them), `claims` (claims and their
//! checks), `identity` (the forwarded identity and the proof a cached one carries), `cache`
//! (the verified-token cache and the policy it is read under); the [`Verifier`] here runs them
//! in order. Key-store refusals arrive as `crate::jwks::KeyError` and become [`AuthError`]s
//! through `From`.

mod cache;
mod claims;
mod error;
mod extract;
mod identity;
mod jose;
mod settings;
#[cfg(test)]
mod testkit;

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use http::HeaderMap;
use prometheus::{Histogram, IntCounter};
use serde::de::DeserializeSeed;
use tracing::debug;

use self::cache::{remember, Active, Cached, Lookup};
use self::claims::{check_claims, Claims, ClaimsSeed};
use self::identity::build_identity;
use self::jose::{b64_decode, b64_decode_into, JoseHeader, MAX_HEADER_BYTES, MAX_SIGNATURE_BYTES};
use self::settings::Policy;
use crate::jwks::{Alg, Expectation, KeyRefusal, KeyStore};
use crate::metrics::metrics;

pub use self::error::AuthError;
pub use self::extract::{extract_token, DEFAULT_MAX_TOKEN_BYTES};
pub use self::identity::{Identity, RoleSet, ROLE_NAMES_CAPACITY, ROLE_SETS_CAPACITY};
pub use self::settings::VerifySettings;

/// Verifies access tokens for realms held by a [`KeyStore`]. `Send + Sync`; share one.
///
/// The verified-token cache (bound: `token_cache_capacity` entries, quick_cache CLOCK-Pro
/// eviction) is keyed by a randomly seeded 64-bit ahash of the whole token, and an entry
/// stores the token's length and the last 24 characters of its signature (144 bits), which a
/// hit must match exactly. A hit therefore requires the same signature bytes, which only a
/// holder of the original token has, and it yields
/// that original token's verified identity: no hash collision can ever grant anything beyond
/// what presenting the original token would. SHA-256 of the whole token (the first design)
/// costs ~1.2 µs per KiB on this deployment class of CPU (Zen 1, 856 MB/s measured with
/// `openssl speed`), more than the whole 1 µs budget of a hit; ahash is ~10x faster. Raw
/// tokens are never stored. Every hit also re-checks: expiry (same rule and leeway as the
/// uncached path), that the realm's issuer still equals the entry's, that the realm's keys are
/// usable (not beyond `max_stale`), that the signing key was not retired by a refresh, and
/// that the policy generation (bumped on settings reload) is unchanged.
pub struct Verifier {
    keys: Arc<KeyStore>,
    active: ArcSwap<Active>,
    cache: Lookup,
    duration_hit: Histogram,
    duration_miss: Histogram,
    /// `token_verify_total{tenant,result="ok"}` handles, so a cache hit costs one map lookup
    /// instead of label hashing. Bound: [`TENANT_COUNTERS`] tenants; beyond that the
    /// (slower) labelled lookup is used. Never evicted (tenants are few and long-lived).
    tenant_ok: dashmap::DashMap<Box<str>, IntCounter, ahash::RandomState>,
}

/// Bound of the per-tenant "ok" counter handle map.
const TENANT_COUNTERS: usize = 10_000;

impl Verifier {
    pub fn new(keys: Arc<KeyStore>, settings: VerifySettings) -> Self {
        let m = metrics();
        Self {
            keys,
            active: ArcSwap::from_pointee(Active::new(settings, 1, None)),
            cache: Lookup::new(),
            duration_hit: m.token_verify_duration.with_label_values(&["hit"]),
            duration_miss: m.token_verify_duration.with_label_values(&["miss"]),
            tenant_ok: dashmap::DashMap::with_hasher(ahash::RandomState::new()),
        }
    }

    /// Applies reloaded settings. Unchanged settings keep everything; changed ones bump the
    /// policy generation so every cached verification is redone under the new policy.
    pub fn update_settings(&self, settings: VerifySettings) {
        let cur = self.active.load_full();
        if cur.policy.settings == settings {
            return;
        }
        let next = Active::new(settings, cur.policy.generation + 1, Some(&cur));
        self.active.store(Arc::new(next));
    }

    pub fn key_store(&self) -> &Arc<KeyStore> {
        &self.keys
    }

    pub fn max_token_bytes(&self) -> usize {
        self.active.load().policy.max_token_bytes
    }

    /// The issuer tokens for `realm` must carry.
    pub fn issuer_for(&self, realm: &str) -> Arc<str> {
        self.keys.issuer_for(realm)
    }

    /// [`extract_token`] with this verifier's cookie, query and size settings.
    pub fn extract_token<'a>(
        &self,
        headers: &'a HeaderMap,
        query: Option<&'a str>,
    ) -> Result<Option<&'a str>, AuthError> {
        let active = self.active.load();
        let p = &active.policy;
        extract_token(
            headers,
            p.settings.cookie_name.as_deref(),
            query,
            p.settings.allow_query_token,
            p.max_token_bytes,
        )
    }

    /// Verifies `token` for `realm` (the realm the request's host maps to). A cache hit
    /// completes without awaiting anything.
    pub async fn verify(
        &self,
        tenant_id: &str,
        realm: &str,
        token: &str,
    ) -> Result<Arc<Identity>, AuthError> {
        let started = Instant::now();
        let cached = self
            .cache
            .cached(&self.active.load(), &self.keys, realm, token);
        let (res, hit) = match cached {
            Cached::Hit(id) => (Ok(id), true),
            Cached::Reject(e) => (Err(e), false),
            Cached::Miss(key) => (self.verify_uncached(realm, token, key).await, false),
        };
        match &res {
            Ok(_) => self.count_ok(tenant_id),
            Err(e) => {
                debug!(tenant = %tenant_id, realm = %realm, code = e.code(), "token refused");
                metrics()
                    .token_verify_total
                    // A refusal admits no label: only verified tenants get their own series.
                    .with_label_values(&[metrics().tenants.known(tenant_id), e.code()])
                    .inc();
            }
        }
        let h = if hit {
            &self.duration_hit
        } else {
            &self.duration_miss
        };
        h.observe(started.elapsed().as_secs_f64());
        res
    }

    fn count_ok(&self, tenant_id: &str) {
        if let Some(c) = self.tenant_ok.get(tenant_id) {
            c.inc();
            return;
        }
        let c = metrics()
            .token_verify_total
            .with_label_values(&[metrics().tenants.label(tenant_id), "ok"]);
        c.inc();
        if self.tenant_ok.len() < TENANT_COUNTERS {
            self.tenant_ok.insert(tenant_id.into(), c);
        }
    }

    async fn verify_uncached(
        &self,
        realm_name: &str,
        token: &str,
        cache_key: Option<u64>,
    ) -> Result<Arc<Identity>, AuthError> {
        let active = self.active.load_full();
        let policy = &active.policy;
        if token.len() > policy.max_token_bytes {
            return Err(AuthError::TokenTooLarge);
        }
        let (signing_input, header_b64, payload_b64, sig_b64) = split_jws(token)?;
        let mut header_buf = [0u8; MAX_HEADER_BYTES];
        let (header, alg) = parse_header(header_b64, &mut header_buf)?;

        let payload = b64_decode(payload_b64)?;
        // One fast UTF-8 pass here lets serde_json skip validating every string it borrows.
        let payload = std::str::from_utf8(&payload).map_err(|_| AuthError::MalformedToken)?;
        let mut de = serde_json::Deserializer::from_str(payload);
        let claims = ClaimsSeed { policy }
            .deserialize(&mut de)
            .and_then(|c| de.end().map(|()| c))
            .map_err(|_| AuthError::MalformedToken)?;
        // Every check that needs no key runs before the realm is touched: a token that could
        // not verify never admits a never-seen realm nor queues a fetch.
        let now = self.keys.now();
        let expected = self.keys.expectation(realm_name);
        pre_key_checks(&header, alg, &claims, policy, &expected, now)?;
        let realm = self.keys.realm(realm_name).await?;
        if !Arc::ptr_eq(realm.issuer(), &expected.issuer) {
            // Admitted just now, or replaced by a reload meanwhile: check against what is held.
            pre_key_checks(&header, alg, &claims, policy, &realm.expectation(), now)?;
        }

        let key = self
            .check_signature(
                &realm,
                header.kid.as_ref().map(|k| &*k.0),
                alg,
                signing_input,
                sig_b64,
            )
            .await?;
        let identity = build_identity(&claims, policy, realm.issuer().clone())?;
        Ok(remember(&active, cache_key, token, key, identity))
    }

    /// Verifies the signature of `signing_input` with `realm`'s key the header names, under
    /// the access-token key rules (known kid, the key's own algorithm).
    async fn check_signature(
        &self,
        realm: &Arc<crate::jwks::Realm>,
        kid: Option<&str>,
        alg: Alg,
        signing_input: &str,
        sig_b64: &str,
    ) -> Result<Arc<crate::jwks::PreparedKey>, AuthError> {
        // A signature that cannot be one is refused before an unknown kid can cause a fetch.
        if sig_b64.is_empty() {
            return Err(AuthError::BadSignature);
        }
        let mut sig_buf = [0u8; MAX_SIGNATURE_BYTES];
        let sig = b64_decode_into(sig_b64, &mut sig_buf)?;
        let key = self.keys.key(realm, kid).await?;
        key.verify(alg, signing_input.as_bytes(), sig)
            .map_err(|r| match r {
                KeyRefusal::WrongAlg => AuthError::AlgNotAllowed,
                KeyRefusal::BadSignature => AuthError::BadSignature,
            })?;
        Ok(key)
    }

    /// Reads a compact JWS other than an access token (a back-channel logout token, a
    /// not-before push) for `realm` under exactly the access-token header rules: no
    /// key-in-token parameters, no `crit`, `alg` allowed for the realm (never `none` or HS*),
    /// `kid` required unless the realm allows its absence. Nothing is looked up or fetched:
    /// the caller checks the claims first (cheap, pure), then [`Self::verify_jws`] checks
    /// the signature, so only a plausible token can make an unknown `kid` cause a refetch.
    pub fn read_jws<'t>(
        &self,
        realm: &'t str,
        token: &'t str,
        max_bytes: usize,
    ) -> Result<UnverifiedJws<'t>, AuthError> {
        if token.len() > max_bytes {
            return Err(AuthError::TokenTooLarge);
        }
        let (signing_input, header_b64, payload_b64, sig_b64) = split_jws(token)?;
        let mut header_buf = [0u8; MAX_HEADER_BYTES];
        let (header, alg) = parse_header(header_b64, &mut header_buf)?;
        let expected = self.keys.expectation(realm);
        if !expected.allows(alg) {
            return Err(AuthError::AlgNotAllowed);
        }
        if header.kid.is_none() && !expected.allow_missing_kid {
            return Err(AuthError::MissingKeyId);
        }
        Ok(UnverifiedJws {
            realm,
            signing_input,
            sig_b64,
            alg,
            kid: header.kid.as_ref().map(|k| k.0.to_string()),
            typ: header.typ.as_ref().map(|t| t.0.to_string()),
            payload: b64_decode(payload_b64)?,
            issuer: expected.issuer,
        })
    }

    /// Verifies the signature of a JWS [`Self::read_jws`] read with a current key of its
    /// realm (the access-token key rules); refused if the realm's issuer changed meanwhile.
    pub async fn verify_jws(&self, jws: &UnverifiedJws<'_>) -> Result<(), AuthError> {
        let realm = self.keys.realm(jws.realm).await?;
        if **realm.issuer() != *jws.issuer {
            return Err(AuthError::IssuerMismatch);
        }
        if !realm.expectation().allows(jws.alg) {
            return Err(AuthError::AlgNotAllowed);
        }
        self.check_signature(
            &realm,
            jws.kid.as_deref(),
            jws.alg,
            jws.signing_input,
            jws.sig_b64,
        )
        .await?;
        Ok(())
    }
}

/// A JWS [`Verifier::read_jws`] read; its signature is not verified yet.
#[derive(Debug)]
pub struct UnverifiedJws<'t> {
    realm: &'t str,
    signing_input: &'t str,
    sig_b64: &'t str,
    alg: Alg,
    kid: Option<String>,
    /// The header's `typ`.
    pub typ: Option<String>,
    /// The decoded payload, unread.
    pub payload: Vec<u8>,
    /// The issuer of the realm it is read for (what its claims must name).
    pub issuer: Arc<str>,
}

/// A compact JWS's signing input and its three segments. Exactly three segments: the header
/// has no '.', and a '.' left in the payload segment (JWE, or junk) fails base64url decoding.
fn split_jws(token: &str) -> Result<(&str, &str, &str, &str), AuthError> {
    let (signing_input, sig_b64) = token.rsplit_once('.').ok_or(AuthError::MalformedToken)?;
    let (header_b64, payload_b64) = signing_input
        .split_once('.')
        .ok_or(AuthError::MalformedToken)?;
    Ok((signing_input, header_b64, payload_b64, sig_b64))
}

/// The JOSE header, refused if it carries a forbidden parameter; its algorithm, refused if
/// it is not one realmgate implements (`none`, HS*, anything unknown end here, before any key
/// is looked at).
fn parse_header<'b>(
    header_b64: &str,
    buf: &'b mut [u8; MAX_HEADER_BYTES],
) -> Result<(JoseHeader<'b>, Alg), AuthError> {
    let header_bytes = b64_decode_into(header_b64, buf)?;
    let header: JoseHeader<'_> =
        serde_json::from_slice(header_bytes).map_err(|_| AuthError::MalformedToken)?;
    if header.forbidden() {
        return Err(AuthError::ForbiddenHeader);
    }
    let alg_name = header.alg.as_ref().ok_or(AuthError::MalformedToken)?;
    let alg = Alg::from_name(&alg_name.0).ok_or(AuthError::AlgNotAllowed)?;
    Ok((header, alg))
}

/// The checks that need no key: algorithm, `kid` presence, claims (issuer, time, audience,
/// subject) and explicit typing, against what the realm expects. Pure.
fn pre_key_checks(
    header: &JoseHeader<'_>,
    alg: Alg,
    claims: &Claims<'_>,
    policy: &Policy,
    expected: &Expectation,
    now: u64,
) -> Result<(), AuthError> {
    if !expected.allows(alg) {
        return Err(AuthError::AlgNotAllowed);
    }
    if header.kid.is_none() && !expected.allow_missing_kid {
        return Err(AuthError::MissingKeyId);
    }
    check_claims(claims, policy, &expected.issuer, now)?;
    let header_typed = header
        .typ
        .as_ref()
        .is_some_and(|t| t.0.eq_ignore_ascii_case("at+jwt"));
    if claims.typ.is_none() && !header_typed && !expected.allow_missing_typ {
        return Err(AuthError::WrongTokenType);
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::testkit::*;
    use super::*;
    use crate::jwks::testkit::*;
    use crate::jwks::{JwksSettings, KeyStore};
    use serde_json::json;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn valid_token_yields_identity_and_hits_the_cache() {
        let e = env(&[("v-ok", vec![rsa_a().jwk("k1")])]).await;
        let t = mint(&rsa_a(), Some("k1"), &e.claims("v-ok"));
        let id = e.verify("v-ok", &t).await.unwrap();
        assert_eq!(id.sub(), "f81d4fae-7dec-11d0-a765-00a0c91e6bf6");
        assert_eq!(id.preferred_username(), Some("ada"));
        assert_eq!(id.email(), Some("ada@acme.example.com"));
        assert_eq!(
            id.role_set.realm.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["offline_access", "tenant_admin"]
        );
        assert_eq!(
            id.role_set.client.iter().map(|r| &**r).collect::<Vec<_>>(),
            vec!["agent", "viewer"]
        );
        assert_eq!(
            id.role_set.header,
            "offline_access,tenant_admin,agent,viewer"
        );
        assert_eq!(&*id.issuer, e.iss("v-ok"));
        assert_eq!(id.azp.as_deref(), Some(AUD));
        assert_eq!(id.exp, e.now() + 300);
        // Forwarded values are slices of the identity's one text buffer.
        assert_eq!(
            id.sub_value().unwrap(),
            "f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
        );
        assert_eq!(id.preferred_username_value().unwrap(), "ada");
        assert_eq!(id.email_value().unwrap(), "ada@acme.example.com");
        let again = e.verify("v-ok", &t).await.unwrap();
        assert!(
            Arc::ptr_eq(&id, &again),
            "second verification is a cache hit"
        );
        // Another user with the same roles shares the role set; different roles do not.
        let mut other = e.claims("v-ok");
        other["sub"] = json!("another-user");
        other["email"] = json!(null);
        let o = e
            .verify("v-ok", &mint(&rsa_a(), Some("k1"), &other))
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&id.role_set, &o.role_set));
        assert_eq!(
            (o.sub(), o.email(), o.email_value()),
            ("another-user", None, None)
        );
        other["realm_access"] = json!({ "roles": ["viewer"] });
        let v = e
            .verify("v-ok", &mint(&rsa_a(), Some("k1"), &other))
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&id.role_set, &v.role_set));
        assert_eq!(v.role_set.header, "viewer,agent");
        // A tampered copy of a cached token never hits.
        let (head, sig) = t.rsplit_once('.').unwrap();
        let (h, payload) = head.split_once('.').unwrap();
        let mut claims = e.claims("v-ok");
        claims["sub"] = json!("someone-else");
        let forged = format!("{h}.{}.{sig}", b64(claims.to_string().as_bytes()));
        assert_eq!(
            e.verify("v-ok", &forged).await.unwrap_err(),
            AuthError::BadSignature
        );
        let _ = payload;
        // Garbage never panics.
        for junk in [
            "",
            ".",
            "..",
            "a.b.c",
            "a.b.c.d.e",
            &format!("{h}.%%%.{sig}"),
            &format!("{h}..{sig}"),
        ] {
            assert_eq!(
                e.verify("v-ok", junk).await.unwrap_err(),
                AuthError::MalformedToken,
                "{junk}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expiry_nbf_iat_and_cached_expiry() {
        let e = env_with(
            &[("v-time", vec![rsa_a().jwk("k1")])],
            &["v-time"],
            |_| {},
            VerifySettings {
                leeway: Duration::ZERO,
                ..vs()
            },
        )
        .await;
        let now = e.now();
        let mut c = e.claims("v-time");
        c["exp"] = json!(now - 1);
        assert_eq!(
            e.verify("v-time", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenExpired
        );
        let mut c = e.claims("v-time");
        c["nbf"] = json!(now + 5);
        assert_eq!(
            e.verify("v-time", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenNotYetValid
        );
        let mut c = e.claims("v-time");
        c["iat"] = json!(now + 5);
        assert_eq!(
            e.verify("v-time", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenIssuedInFuture
        );
        // A cached token stops working at exp, exactly like an uncached one.
        let mut c = e.claims("v-time");
        c["exp"] = json!(now + 10);
        let t = mint(&rsa_a(), Some("k1"), &c);
        let id = e.verify("v-time", &t).await.unwrap();
        e.advance(9);
        assert!(Arc::ptr_eq(&id, &e.verify("v-time", &t).await.unwrap()));
        e.advance(1);
        assert_eq!(
            e.verify("v-time", &t).await.unwrap_err(),
            AuthError::TokenExpired
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn realms_never_share_tokens_or_keys() {
        // Same kid in both realms, different keys.
        let e = env(&[
            ("x-a", vec![rsa_a().jwk("k1")]),
            ("x-b", vec![rsa_b().jwk("k1")]),
        ])
        .await;
        tokio::time::sleep(Duration::from_millis(350)).await; // past min_refetch_interval
        let token_a = mint(&rsa_a(), Some("k1"), &e.claims("x-a"));
        let id = e.verify("x-a", &token_a).await.unwrap();
        assert_eq!(&*id.issuer, e.iss("x-a"));
        // Realm A's (cached) token on realm B's host.
        assert_eq!(
            e.verify("x-b", &token_a).await.unwrap_err(),
            AuthError::IssuerMismatch
        );
        // A token claiming realm B but signed with realm A's key under the shared kid.
        let hits = e.idp.hits("certs", "x-b");
        let forged = mint(&rsa_a(), Some("k1"), &e.claims("x-b"));
        assert_eq!(
            e.verify("x-b", &forged).await.unwrap_err(),
            AuthError::BadSignature
        );
        assert_eq!(
            e.idp.hits("certs", "x-b"),
            hits,
            "a known kid with a bad signature never refetches"
        );
        let real_b = mint(&rsa_b(), Some("k1"), &e.claims("x-b"));
        assert!(e.verify("x-b", &real_b).await.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn ec_and_eddsa_tokens_verify_when_allowed() {
        let e = env_with(
            &[(
                "v-ec",
                vec![ec().jwk("e1"), ed().jwk("d1"), rsa_a().jwk("r1")],
            )],
            &["v-ec"],
            |s| {
                s.algorithms = vec![
                    crate::jwks::Alg::ES256,
                    crate::jwks::Alg::EdDSA,
                    crate::jwks::Alg::RS256,
                ]
            },
            vs(),
        )
        .await;
        let c = e.claims("v-ec");
        assert!(e.verify("v-ec", &mint(&ec(), Some("e1"), &c)).await.is_ok());
        assert!(e.verify("v-ec", &mint(&ed(), Some("d1"), &c)).await.is_ok());
        assert!(e
            .verify("v-ec", &mint(&rsa_a(), Some("r1"), &c))
            .await
            .is_ok());
        // The right alg with the wrong key type.
        let t = mint_with_header(&rsa_a(), &json!({ "alg": "RS256", "kid": "e1" }), &c);
        assert_eq!(
            e.verify("v-ec", &t).await.unwrap_err(),
            AuthError::AlgNotAllowed
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn token_types_sizes_and_subjects() {
        let e = env(&[("v-typ", vec![rsa_a().jwk("k1")])]).await;
        for (typ, want) in [
            ("ID", Err(AuthError::WrongTokenType)),
            ("Refresh", Err(AuthError::WrongTokenType)),
            ("Bearer", Ok(())),
        ] {
            let mut c = e.claims("v-typ");
            c["typ"] = json!(typ);
            let got = e
                .verify("v-typ", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .map(|_| ());
            assert_eq!(got, want, "{typ}");
        }
        let mut c = e.claims("v-typ");
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            e.verify("v-typ", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::MissingSubject
        );
        let mut c = e.claims("v-typ");
        c["aud"] = json!("account");
        c["azp"] = json!("another-app");
        assert_eq!(
            e.verify("v-typ", &mint(&rsa_a(), Some("k1"), &c))
                .await
                .unwrap_err(),
            AuthError::AudienceMismatch
        );
        let huge = format!(
            "{}.{}.{}",
            "a".repeat(22 * 1024),
            "b".repeat(22 * 1024),
            "c".repeat(22 * 1024)
        );
        assert_eq!(
            e.verify("v-typ", &huge).await.unwrap_err(),
            AuthError::TokenTooLarge
        );
        assert_eq!(e.verifier.extract_token(&HeaderMap::new(), None), Ok(None));
        let h = headers(&[("authorization", &format!("Bearer {huge}"))]);
        assert_eq!(
            e.verifier.extract_token(&h, None),
            Err(AuthError::TokenTooLarge)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_kid_refetches_once_and_then_verifies() {
        let e = env(&[("v-rot", vec![rsa_a().jwk("k1")])]).await;
        tokio::time::sleep(Duration::from_millis(350)).await;
        let before = e.idp.hits("certs", "v-rot");
        e.idp
            .set_keys("v-rot", vec![rsa_a().jwk("k1"), rsa_b().jwk("k2")]);
        let t = mint(&rsa_b(), Some("k2"), &e.claims("v-rot"));
        assert!(e.verify("v-rot", &t).await.is_ok());
        assert_eq!(e.idp.hits("certs", "v-rot"), before + 1);
        // Cheap checks gate refetches: a wrong-issuer or expired token with an unknown kid
        // never reaches the IdP.
        tokio::time::sleep(Duration::from_millis(350)).await;
        let mut c = e.claims("v-rot");
        c["iss"] = json!("https://elsewhere/realms/v-rot");
        let t = mint(&rsa_c(), Some("k9"), &c);
        assert_eq!(
            e.verify("v-rot", &t).await.unwrap_err(),
            AuthError::IssuerMismatch
        );
        let mut c = e.claims("v-rot");
        c["exp"] = json!(e.now() - 3600);
        assert_eq!(
            e.verify("v-rot", &mint(&rsa_c(), Some("k9"), &c))
                .await
                .unwrap_err(),
            AuthError::TokenExpired
        );
        assert_eq!(e.idp.hits("certs", "v-rot"), before + 1);
        // A kid-less token is refused before any key is looked at (never a fetch).
        let t = mint(&rsa_c(), None, &e.claims("v-rot"));
        assert_eq!(
            e.verify("v-rot", &t).await.unwrap_err(),
            AuthError::MissingKeyId
        );
        assert_eq!(e.idp.hits("certs", "v-rot"), before + 1);
    }

    /// Explicit typing (RFC 9068 §2.1, RFC 8725 §3.11): a `typ` claim of `Bearer` or a JOSE
    /// `typ` of `at+jwt`; an untyped token is refused unless the realm allows it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_must_be_explicitly_typed() {
        let e = env_with(
            &[
                ("v-typed", vec![rsa_a().jwk("k1")]),
                ("v-lax", vec![rsa_a().jwk("k1")]),
            ],
            &["v-typed", "v-lax"],
            |s| {
                Arc::make_mut(&mut s.realm_overrides).insert(
                    "v-lax".into(),
                    crate::jwks::RealmOverride {
                        allow_missing_typ: true,
                        ..Default::default()
                    },
                );
            },
            vs(),
        )
        .await;
        let mut untyped = e.claims("v-typed");
        untyped.as_object_mut().unwrap().remove("typ");
        assert_eq!(
            e.verify("v-typed", &mint(&rsa_a(), Some("k1"), &untyped))
                .await
                .unwrap_err(),
            AuthError::WrongTokenType
        );
        let at_jwt = mint_with_header(
            &rsa_a(),
            &json!({ "alg": "RS256", "kid": "k1", "typ": "at+jwt" }),
            &untyped,
        );
        assert!(
            e.verify("v-typed", &at_jwt).await.is_ok(),
            "header at+jwt types it"
        );
        let mut lax = e.claims("v-lax");
        lax.as_object_mut().unwrap().remove("typ");
        assert!(
            e.verify("v-lax", &mint(&rsa_a(), Some("k1"), &lax))
                .await
                .is_ok(),
            "allow_missing_typ"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kid_miss_storm_causes_at_most_one_fetch() {
        let e = env_with(
            &[("v-storm", vec![rsa_a().jwk("k1")])],
            &["v-storm"],
            |s| s.min_refetch_interval = Duration::from_secs(2),
            vs(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(2100)).await; // a refetch is allowed now
        let before = e.idp.hits("certs", "v-storm");
        let body = b64(e.claims("v-storm").to_string().as_bytes());
        let mut tasks = Vec::new();
        for i in 0..2000u32 {
            let kid = format!("rnd-{i}-{}", rand::random::<u64>());
            let h = b64(json!({ "alg": "RS256", "kid": kid }).to_string().as_bytes());
            let t = format!("{h}.{body}.c2ln");
            let v = e.verifier.clone();
            tasks.push(tokio::spawn(async move {
                v.verify("t-storm", "v-storm", &t).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap_err(), AuthError::UnknownKey);
        }
        assert_eq!(
            e.idp.hits("certs", "v-storm"),
            before + 1,
            "exactly one fetch for the whole storm"
        );
        // Within the interval, more misses cost nothing at the IdP.
        let h = b64(json!({ "alg": "RS256", "kid": "late" })
            .to_string()
            .as_bytes());
        let started = std::time::Instant::now();
        assert_eq!(
            e.verify("v-storm", &format!("{h}.{body}.c2ln"))
                .await
                .unwrap_err(),
            AuthError::UnknownKey
        );
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "denied without waiting"
        );
        assert_eq!(e.idp.hits("certs", "v-storm"), before + 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tokens_that_cannot_verify_never_admit_a_realm() {
        // Fails before the fix: the realm was admitted (and its first fetch queued) before
        // the claims were read, so junk tokens drained the admission budget.
        let e = env_with(
            &[("v-new", vec![rsa_a().jwk("k1")])],
            &[],
            |s| s.new_realms_per_second = 1,
            vs(),
        )
        .await;
        let good = e.claims("v-new");
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = json!(e.iss("v-other"));
        let mut expired = good.clone();
        expired["exp"] = json!(e.now() - 3600);
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("someone-else");
        let mut no_sub = good.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        let mut untyped = good.clone();
        untyped.as_object_mut().unwrap().remove("typ");
        for (c, want) in [
            (&wrong_iss, AuthError::IssuerMismatch),
            (&expired, AuthError::TokenExpired),
            (&wrong_aud, AuthError::AudienceMismatch),
            (&no_sub, AuthError::MissingSubject),
            (&untyped, AuthError::WrongTokenType),
        ] {
            for _ in 0..5 {
                let t = mint(&rsa_a(), Some("k1"), c);
                assert_eq!(e.verify("v-new", &t).await.unwrap_err(), want);
            }
        }
        let kidless = mint(&rsa_a(), None, &good);
        assert_eq!(
            e.verify("v-new", &kidless).await.unwrap_err(),
            AuthError::MissingKeyId
        );
        assert_eq!(e.idp.total_hits(), 0, "nothing reached the IdP");
        assert!(e.keys.describe().is_empty(), "no realm was admitted");
        // The admission budget (burst 2) is intact for the first plausible token.
        assert!(e
            .verify("v-new", &mint(&rsa_a(), Some("k1"), &good))
            .await
            .is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_kid_refetches_are_capped_across_realms() {
        // Per-realm spacing alone let plausible forged tokens refetch every realm once per
        // interval; the process-wide bucket (1/s, burst 2) stops the third realm's refetch.
        let realms: Vec<(&str, Vec<serde_json::Value>)> = ["v-c1", "v-c2", "v-c3"]
            .into_iter()
            .map(|r| (r, vec![rsa_a().jwk("k1")]))
            .collect();
        let e = env_with(
            &realms,
            &["v-c1", "v-c2", "v-c3"],
            |s| {
                s.refetches_per_second = 1;
                s.min_refetch_interval = Duration::from_millis(1);
            },
            vs(),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        let denied = || {
            metrics()
                .jwks_fetch_denied_total
                .with_label_values(&["refetch_rate"])
                .get()
        };
        let before = (e.idp.total_hits(), denied());
        for r in ["v-c1", "v-c2", "v-c3"] {
            let t = mint(&rsa_a(), Some("forged-kid"), &e.claims(r));
            assert_eq!(e.verify(r, &t).await.unwrap_err(), AuthError::UnknownKey);
        }
        assert_eq!(
            e.idp.hits("certs", "v-c1") + e.idp.hits("certs", "v-c2") + e.idp.hits("certs", "v-c3"),
            3 + 2,
            "the start-up loads, then two refetches: the third was refused"
        );
        assert!(denied() > before.1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idp_down_known_keys_keep_working_until_max_stale() {
        let e = env_with(
            &[("v-down", vec![rsa_a().jwk("k1")])],
            &["v-down"],
            |s| {
                s.refresh = Duration::from_millis(100);
                s.max_stale = Duration::from_secs(3600);
            },
            vs(),
        )
        .await;
        // Tokens that outlive max_stale, so only the keys' age can refuse them.
        let mut c = e.claims("v-down");
        c["exp"] = json!(e.now() + 7200);
        let cached = mint(&rsa_a(), Some("k1"), &c);
        e.verify("v-down", &cached).await.unwrap();
        e.idp.set_mode("v-down", Mode::Fail);
        assert!(
            wait_until(|| async {
                crate::jwks::testkit::state_of(&e.keys, "v-down")
                    .unwrap()
                    .last_error
                    .is_some()
            })
            .await
        );
        c["jti"] = json!("fresh");
        let fresh = mint(&rsa_a(), Some("k1"), &c);
        assert!(
            e.verify("v-down", &fresh).await.is_ok(),
            "last-good keys still verify"
        );
        assert!(e.verify("v-down", &cached).await.is_ok());
        // Past max_stale the realm's keys are unusable: 503, cached tokens included.
        e.advance(3601);
        for t in [&cached, &fresh] {
            let err = e.verify("v-down", t).await.unwrap_err();
            assert_eq!(err.code(), "realm_unavailable");
            assert_eq!(err.http_status(), 503);
            assert!(err.retry_after_secs().unwrap() >= 1);
        }
        assert!(!e.keys.static_realms_ready());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unavailable_and_unknown_realms() {
        let idp = Idp::start().await;
        for r in ["v-off", "v-dyn"] {
            idp.set_keys(r, vec![rsa_a().jwk("k1")]);
        }
        idp.set_mode("v-off", Mode::Fail);
        let (keys, _stop) = start_store(
            test_settings(&idp.base),
            &["v-off"],
            crate::jwks::system_clock(),
        );
        let v = Verifier::new(keys, vs());
        let t = |realm: &str| {
            let mut c = claims(&idp.issuer(realm), wall());
            c["aud"] = json!(AUD);
            mint(&rsa_a(), Some("k1"), &c)
        };
        // Never loaded + IdP down -> 503 with a retry hint, not 401.
        let err = v.verify("t", "v-off", &t("v-off")).await.unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("realm_unavailable", 503));
        assert!(err.retry_after_secs().is_some());
        // Dynamic realm the IdP knows: loads lazily on first use and verifies.
        assert!(v.verify("t", "v-dyn", &t("v-dyn")).await.is_ok());
        // Dynamic realm the IdP doesn't know: 404 unknown_tenant, negatively cached.
        let err = v.verify("t", "v-ghost", &t("v-ghost")).await.unwrap_err();
        assert_eq!((err.code(), err.http_status()), ("unknown_tenant", 404));
        let hits = idp.total_hits();
        assert_eq!(
            v.verify("t", "v-ghost", &t("v-ghost")).await.unwrap_err(),
            AuthError::UnknownTenant
        );
        assert_eq!(idp.total_hits(), hits, "negative cache: no second fetch");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn discovery_issuer_mismatch_makes_the_realm_unavailable() {
        let idp = Idp::start().await;
        idp.set_keys("v-evil", vec![rsa_a().jwk("k1")]);
        idp.set_mode("v-evil", Mode::WrongIssuer);
        let (keys, _stop) = start_store(
            test_settings(&idp.base),
            &["v-evil"],
            crate::jwks::system_clock(),
        );
        let v = Verifier::new(keys, vs());
        let t = mint(&rsa_a(), Some("k1"), &claims(&idp.issuer("v-evil"), wall()));
        let mut t_claims = claims(&idp.issuer("v-evil"), wall());
        t_claims["aud"] = json!(AUD);
        let t2 = mint(&rsa_a(), Some("k1"), &t_claims);
        for tok in [t, t2] {
            assert_eq!(
                v.verify("t", "v-evil", &tok).await.unwrap_err().code(),
                "realm_unavailable"
            );
        }
        assert_eq!(idp.hits("certs", "v-evil"), 0);
    }

    #[test]
    fn verifier_is_send_and_sync_and_futures_are_send() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Verifier>();
        send_sync::<KeyStore>();
        fn send<T: Send>(_: &T) {}
        let (keys, _r) = crate::jwks::key_store(JwksSettings::default(), vec![]);
        let v = Verifier::new(keys, vs());
        let fut = v.verify("t", "r", "x.y.z");
        send(&fut);
    }
}
