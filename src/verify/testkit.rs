//! Test support shared by the verify tests: settings, claim parsing, request headers, and an
//! environment of an in-process IdP, a key store on a settable clock and a verifier.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::DeserializeSeed;
use serde_json::json;
use tokio::sync::watch;

use super::claims::{Claims, ClaimsSeed};
use super::settings::Policy;
use super::{AuthError, Identity, Verifier, VerifySettings};
use crate::jwks::testkit::*;
use crate::jwks::{key_store_with_clock, JwksSettings, KeyStore};

pub const AUD: &str = "qa-platform-backend";

pub fn vs() -> VerifySettings {
    VerifySettings {
        audiences: vec![AUD.into()],
        ..VerifySettings::default()
    }
}

pub fn parse<'a>(p: &Policy, json: &'a str) -> Result<Claims<'a>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(json);
    let c = ClaimsSeed { policy: p }.deserialize(&mut de)?;
    de.end()?;
    Ok(c)
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

/// An IdP, a key store on a settable clock with its refresher running, and a verifier.
pub struct Env {
    pub idp: Idp,
    pub keys: Arc<KeyStore>,
    pub verifier: Arc<Verifier>,
    clock: Arc<AtomicU64>,
    _stop: watch::Sender<bool>,
}

impl Env {
    pub fn iss(&self, realm: &str) -> String {
        self.idp.issuer(realm)
    }
    pub fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }
    pub fn advance(&self, secs: u64) {
        self.clock.fetch_add(secs, Ordering::SeqCst);
    }
    pub fn claims(&self, realm: &str) -> serde_json::Value {
        let mut c = claims(&self.iss(realm), self.now());
        c["aud"] = json!(["account", AUD]);
        c
    }
    pub async fn verify(&self, realm: &str, token: &str) -> Result<Arc<Identity>, AuthError> {
        self.verifier.verify("t-test", realm, token).await
    }
}

pub async fn env_with(
    realms: &[(&str, Vec<serde_json::Value>)],
    statics: &[&str],
    tweak: impl FnOnce(&mut JwksSettings),
    verify: VerifySettings,
) -> Env {
    let idp = Idp::start().await;
    for (r, keys) in realms {
        idp.set_keys(r, keys.clone());
    }
    let mut settings = test_settings(&idp.base);
    tweak(&mut settings);
    let (clock, handle) = manual_clock(wall());
    let (keys, refresher) = key_store_with_clock(
        settings,
        statics.iter().map(|s| s.to_string()).collect(),
        clock,
    );
    let (tx, rx) = watch::channel(false);
    tokio::spawn(refresher.run(rx));
    let verifier = Arc::new(Verifier::new(keys.clone(), verify));
    let env = Env {
        idp,
        keys,
        verifier,
        clock: handle,
        _stop: tx,
    };
    assert!(
        wait_until(|| async { env.keys.describe().iter().all(|r| r.state != "not_loaded") }).await
    );
    env
}

pub async fn env(realms: &[(&str, Vec<serde_json::Value>)]) -> Env {
    let statics: Vec<&str> = realms.iter().map(|(r, _)| *r).collect();
    env_with(realms, &statics, |_| {}, vs()).await
}
