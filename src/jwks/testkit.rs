//! Test kit: an in-process Keycloak-shaped IdP and token minting (shared with verify tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

use super::{key_store_with_clock, system_clock, Clock, JwksSettings, KeyStore, RealmInfo};

/// A signing key from `testdata/jwt` (generated once with openssl; test-only).
pub struct TestKey {
    pub enc: EncodingKey,
    pub alg: Algorithm,
    pub public_pem: &'static str,
}

macro_rules! key {
    ($name:literal, $ctor:ident, $alg:expr) => {
        TestKey {
            enc: EncodingKey::$ctor(include_bytes!(concat!(
                "../../testdata/jwt/",
                $name,
                ".pem"
            )))
            .unwrap(),
            alg: $alg,
            public_pem: include_str!(concat!("../../testdata/jwt/", $name, ".pub.pem")),
        }
    };
}

pub fn rsa_a() -> TestKey {
    key!("rsa_a", from_rsa_pem, Algorithm::RS256)
}
pub fn rsa_b() -> TestKey {
    key!("rsa_b", from_rsa_pem, Algorithm::RS256)
}
pub fn rsa_c() -> TestKey {
    key!("rsa_c", from_rsa_pem, Algorithm::RS256)
}
/// The public JWK of a 1024-bit RSA key (kid "small"); its private half is not kept.
pub fn rsa_small_jwk() -> Value {
    serde_json::from_str(include_str!("../../testdata/jwt/rsa_small.jwk.json")).unwrap()
}
pub fn ec() -> TestKey {
    key!("ec_p256", from_ec_pem, Algorithm::ES256)
}
pub fn ed() -> TestKey {
    key!("ed25519", from_ed_pem, Algorithm::EdDSA)
}

impl TestKey {
    /// The public JWK, with `kid` and `use: sig`.
    pub fn jwk(&self, kid: &str) -> Value {
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.enc, self.alg).unwrap();
        let mut v = serde_json::to_value(jwk).unwrap();
        v["kid"] = json!(kid);
        v["use"] = json!("sig");
        v
    }
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` under an arbitrary JOSE header (so tests can add jku, crit, ...).
pub fn mint_with_header(key: &TestKey, header: &Value, claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let alg = serde_json::from_value::<Algorithm>(header["alg"].clone()).unwrap_or(key.alg);
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key.enc, alg).unwrap();
    format!("{input}.{sig}")
}

pub fn mint(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({ "alg": key.alg, "typ": "JWT" });
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    mint_with_header(key, &header, claims)
}

/// A Keycloak-shaped access token's claims.
pub fn claims(iss: &str, now: u64) -> Value {
    json!({
        "exp": now + 300, "iat": now, "jti": "2f0c7d4e", "iss": iss,
        "aud": ["qa-platform-backend", "account"], "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6",
        "typ": "Bearer", "azp": "qa-platform-backend",
        "realm_access": { "roles": ["offline_access", "tenant_admin"] },
        "resource_access": {
            "qa-platform-backend": { "roles": ["agent", "viewer"] },
            "account": { "roles": ["manage-account"] }
        },
        "scope": "openid profile email", "preferred_username": "ada",
        "email": "ada@acme.example.com"
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Ok,
    Fail,
    Hang,
    Garbage,
    Huge,
    WrongIssuer,
    RedirectSameHost,
    RedirectOtherHost,
}

struct RealmDoc {
    keys: Vec<Value>,
    mode: Mode,
    cache_control: Option<String>,
}

#[derive(Default)]
pub struct IdpState {
    realms: Mutex<HashMap<String, RealmDoc>>,
    hits: Mutex<HashMap<String, usize>>,
    base: Mutex<String>,
    pub total: AtomicUsize,
}

/// A Keycloak-shaped IdP on 127.0.0.1:0: discovery and certs per realm; unknown realms are
/// 404 like Keycloak. Keys can be rotated, realms made to fail, hang or send garbage.
pub struct Idp {
    pub base: String,
    state: Arc<IdpState>,
}

fn count(st: &IdpState, what: &str, realm: &str) {
    *st.hits.lock().entry(format!("{what}:{realm}")).or_default() += 1;
    st.total.fetch_add(1, Ordering::SeqCst);
}

fn mode_of(st: &IdpState, realm: &str) -> Option<Mode> {
    st.realms.lock().get(realm).map(|r| r.mode)
}

async fn misbehave(mode: Mode) -> Option<Response> {
    match mode {
        Mode::Fail => Some(StatusCode::INTERNAL_SERVER_ERROR.into_response()),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Some(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Mode::Garbage => Some(
            (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"keys\": [oops",
            )
                .into_response(),
        ),
        Mode::Huge => {
            let pad = "x".repeat(64 * 1024);
            Some(Json(json!({ "keys": [], "pad": pad })).into_response())
        }
        _ => None,
    }
}

use axum::Json;

async fn disco(State(st): State<Arc<IdpState>>, Path(realm): Path<String>) -> Response {
    count(&st, "disco", &realm);
    let Some(mode) = mode_of(&st, &realm) else {
        return (StatusCode::NOT_FOUND, "Realm does not exist").into_response();
    };
    if let Some(r) = misbehave(mode).await {
        return r;
    }
    let base = st.base.lock().clone();
    let issuer = if mode == Mode::WrongIssuer {
        format!("{base}/realms/evil")
    } else {
        format!("{base}/realms/{realm}")
    };
    Json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{base}/realms/{realm}/protocol/openid-connect/certs"),
        "token_endpoint": format!("{base}/realms/{realm}/protocol/openid-connect/token"),
    }))
    .into_response()
}

async fn certs(State(st): State<Arc<IdpState>>, Path(realm): Path<String>) -> Response {
    count(&st, "certs", &realm);
    let Some(mode) = mode_of(&st, &realm) else {
        return (StatusCode::NOT_FOUND, "Realm does not exist").into_response();
    };
    if let Some(r) = misbehave(mode).await {
        return r;
    }
    let base = st.base.lock().clone();
    let port = base.rsplit(':').next().unwrap_or("").to_string();
    match mode {
        Mode::RedirectSameHost => {
            let to = format!("{base}/realms/{realm}/protocol/openid-connect/certs-real");
            return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
        }
        Mode::RedirectOtherHost => {
            let to = format!(
                "http://localhost:{port}/realms/{realm}/protocol/openid-connect/certs-real"
            );
            return (StatusCode::FOUND, [(header::LOCATION, to)]).into_response();
        }
        _ => {}
    }
    keys_response(&st, &realm)
}

fn keys_response(st: &IdpState, realm: &str) -> Response {
    let realms = st.realms.lock();
    let Some(doc) = realms.get(realm) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut resp = Json(json!({ "keys": doc.keys })).into_response();
    if let Some(cc) = &doc.cache_control {
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, cc.parse().unwrap());
    }
    resp
}

async fn certs_real(State(st): State<Arc<IdpState>>, Path(realm): Path<String>) -> Response {
    count(&st, "certs-real", &realm);
    keys_response(&st, &realm)
}

async fn custom(State(st): State<Arc<IdpState>>, Path(name): Path<String>) -> Response {
    count(&st, "custom", &name);
    keys_response(&st, &name)
}

impl Idp {
    pub async fn start() -> Idp {
        let state = Arc::new(IdpState::default());
        let app = Router::new()
            .route(
                "/realms/{realm}/.well-known/openid-configuration",
                get(disco),
            )
            .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
            .route(
                "/realms/{realm}/protocol/openid-connect/certs-real",
                get(certs_real),
            )
            .route("/custom/{name}/jwks.json", get(custom))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        *state.base.lock() = base.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Idp { base, state }
    }

    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.base)
    }

    pub fn set_keys(&self, realm: &str, keys: Vec<Value>) {
        let mut realms = self.state.realms.lock();
        let doc = realms.entry(realm.to_string()).or_insert(RealmDoc {
            keys: Vec::new(),
            mode: Mode::Ok,
            cache_control: None,
        });
        doc.keys = keys;
    }

    pub fn set_mode(&self, realm: &str, mode: Mode) {
        if let Some(doc) = self.state.realms.lock().get_mut(realm) {
            doc.mode = mode;
        }
    }

    pub fn set_cache_control(&self, realm: &str, cc: &str) {
        if let Some(doc) = self.state.realms.lock().get_mut(realm) {
            doc.cache_control = Some(cc.to_string());
        }
    }

    pub fn hits(&self, what: &str, realm: &str) -> usize {
        self.state
            .hits
            .lock()
            .get(&format!("{what}:{realm}"))
            .copied()
            .unwrap_or(0)
    }

    pub fn total_hits(&self) -> usize {
        self.state.total.load(Ordering::SeqCst)
    }
}

/// A settable clock; returns the clock and its handle.
pub fn manual_clock(start: u64) -> (Clock, Arc<AtomicU64>) {
    let t = Arc::new(AtomicU64::new(start));
    let h = t.clone();
    (Arc::new(move || h.load(Ordering::SeqCst)), t)
}

pub fn wall() -> u64 {
    (system_clock())()
}

/// Short timeouts so failure tests finish fast.
pub fn test_settings(base: &str) -> JwksSettings {
    JwksSettings {
        base_url: base.to_string(),
        refresh: Duration::from_secs(60),
        min_refetch_interval: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        fetch_timeout: Duration::from_millis(500),
        refetch_wait: Duration::from_secs(2),
        load_wait: Duration::from_secs(2),
        ..JwksSettings::default()
    }
}

/// Builds the store and runs its refresher on the current runtime until the returned
/// sender is dropped.
pub fn start_store(
    settings: JwksSettings,
    statics: &[&str],
    clock: Clock,
) -> (Arc<KeyStore>, watch::Sender<bool>) {
    let (store, refresher) = key_store_with_clock(
        settings,
        statics.iter().map(|s| s.to_string()).collect(),
        clock,
    );
    let (tx, rx) = watch::channel(false);
    tokio::spawn(refresher.run(rx));
    (store, tx)
}

/// Polls `cond` every 10 ms for up to 5 s.
pub async fn wait_until<F: Future<Output = bool>>(mut cond: impl FnMut() -> F) -> bool {
    for _ in 0..500 {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

pub fn state_of(store: &KeyStore, realm: &str) -> Option<RealmInfo> {
    store.describe().into_iter().find(|r| r.name == realm)
}

/// A JWKS document holding `keys`.
pub fn jwks_doc(keys: Vec<Value>) -> Vec<u8> {
    json!({ "keys": keys }).to_string().into_bytes()
}
