//! A Keycloak stand-in on real HTTP (discovery + JWKS per realm, Keycloak's paths) whose keys
//! can be rotated or removed and which can fail, hang or serve garbage; it counts requests.
//! Plus RSA signing keys and a token minter.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use jsonwebtoken::{Algorithm, Header};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// An RSA signing key with its public JWK (the demo's key type, with test conveniences).
#[derive(Clone)]
pub struct SigningKey {
    inner: realmgate::jwks::LocalSigner,
    pub kid: String,
    pub jwk: Value,
}

impl SigningKey {
    pub fn rsa(kid: &str) -> Self {
        let inner = realmgate::jwks::LocalSigner::generate_rsa(kid).unwrap();
        Self {
            kid: inner.kid.clone(),
            jwk: inner.jwk.clone(),
            inner,
        }
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.inner.sign(claims).unwrap()
    }

    /// Signs with no kid in the header (realmgate refuses these unless the realm allows it).
    pub fn sign_without_kid(&self, claims: &Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &self.inner.encoding).unwrap()
    }

    /// Signs with a different kid in the header (unknown-key and confusion tests).
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, claims, &self.inner.encoding).unwrap()
    }
}

impl SigningKey {
    /// Signs with this key's kid and the given header `typ` (logout tokens: `logout+jwt`).
    pub fn sign_typed(&self, typ: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(self.kid.clone());
        h.typ = typ.map(str::to_string);
        jsonwebtoken::encode(&h, claims, &self.inner.encoding).unwrap()
    }

    /// A back-channel logout token as Keycloak sends it (header `typ: logout+jwt`).
    pub fn sign_logout(&self, claims: &Value) -> String {
        self.sign_typed(Some("logout+jwt"), claims)
    }
}

/// An unsecured JWS (`alg: none`, empty signature) of `claims`.
pub fn unsigned(claims: &Value) -> String {
    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "logout+jwt"})),
        b64(claims)
    )
}

/// A unique id (jti, sid).
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

/// Keycloak-shaped back-channel logout token claims for `realm` at `base` (OIDC
/// Back-Channel Logout 1.0 §2.4): `sid` and/or `sub`, a fresh `jti`, exp = iat + 2 min.
pub fn logout_claims(base: &str, realm: &str, sub: Option<&str>, sid: Option<&str>) -> Value {
    let now = now();
    let mut c = json!({
        "iss": format!("{base}/realms/{realm}"),
        "aud": "qa-platform-backend",
        "iat": now,
        "exp": now + 120,
        "jti": unique_id("jti"),
        "typ": "Logout",
        "events": {"http://schemas.openid.net/event/backchannel-logout": {"revoke_offline_access": true}},
    });
    if let Some(sub) = sub {
        c["sub"] = json!(sub);
    }
    if let Some(sid) = sid {
        c["sid"] = json!(sid);
    }
    c
}

/// The payload of Keycloak's `k_push_not_before` admin action for client `resource`.
pub fn push_not_before(resource: &str, not_before: u64) -> Value {
    json!({
        "id": unique_id("push"),
        "expiration": now() + 30,
        "resource": resource,
        "action": "PUSH_NOT_BEFORE",
        "notBefore": not_before,
    })
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Keycloak-shaped access-token claims for `realm` at `base`.
pub fn claims(base: &str, realm: &str, sub: &str, roles: &[&str]) -> Value {
    let now = now();
    json!({
        "iss": format!("{base}/realms/{realm}"),
        "sub": sub,
        // As a Keycloak audience mapper issues it (RFC 9068 §4: aud names the service).
        "aud": ["qa-platform-backend", "account"],
        "azp": "qa-platform-backend",
        "typ": "Bearer",
        "exp": now + 300,
        "iat": now,
        "preferred_username": format!("user-{sub}"),
        "email": format!("{sub}@example.com"),
        "realm_access": {"roles": roles},
        "resource_access": {"qa-platform-backend": {"roles": ["client-reader"]}, "other-client": {"roles": ["ignored"]}},
        "scope": "openid profile email",
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Fail500,
    Hang,
    /// Answer normally, one second late.
    Slow,
    Garbage,
    NotFound,
}

#[derive(Default)]
struct RealmState {
    keys: Vec<Value>,
}

#[derive(Default)]
struct Inner {
    realms: Mutex<HashMap<String, RealmState>>,
    mode: Mutex<Option<Mode>>,
    discovery_hits: AtomicUsize,
    jwks_hits: Mutex<HashMap<String, usize>>,
    base: Mutex<String>,
}

/// The mock Keycloak.
#[derive(Clone)]
pub struct MockKeycloak {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl MockKeycloak {
    pub async fn start() -> Self {
        let inner: Arc<Inner> = Arc::default();
        let app = Router::new()
            .route(
                "/realms/{realm}/.well-known/openid-configuration",
                get(discovery),
            )
            .route("/realms/{realm}/protocol/openid-connect/certs", get(certs))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *inner.base.lock() = format!("http://{addr}");
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, inner }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn issuer(&self, realm: &str) -> String {
        format!("{}/realms/{realm}", self.base())
    }

    /// Publishes exactly these keys for a realm.
    pub fn set_keys(&self, realm: &str, keys: &[&SigningKey]) {
        self.inner.realms.lock().insert(
            realm.to_string(),
            RealmState {
                keys: keys.iter().map(|k| k.jwk.clone()).collect(),
            },
        );
    }

    pub fn remove_realm(&self, realm: &str) {
        self.inner.realms.lock().remove(realm);
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock() = Some(mode);
    }

    pub fn jwks_hits(&self, realm: &str) -> usize {
        self.inner.jwks_hits.lock().get(realm).copied().unwrap_or(0)
    }

    pub fn discovery_hits(&self) -> usize {
        self.inner.discovery_hits.load(Ordering::SeqCst)
    }

    pub fn total_hits(&self) -> usize {
        self.discovery_hits() + self.inner.jwks_hits.lock().values().sum::<usize>()
    }
}

async fn failure(inner: &Inner) -> Option<Response> {
    let mode = (*inner.mode.lock()).unwrap_or(Mode::Normal);
    match mode {
        Mode::Normal => None,
        Mode::Fail500 => Some((StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response()),
        Mode::NotFound => Some(
            (
                StatusCode::NOT_FOUND,
                "{\"error\":\"Realm does not exist\"}",
            )
                .into_response(),
        ),
        Mode::Garbage => Some((StatusCode::OK, "{not json at all").into_response()),
        Mode::Slow => {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            None
        }
        Mode::Hang => {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            Some((StatusCode::GATEWAY_TIMEOUT, "late").into_response())
        }
    }
}

async fn discovery(State(inner): State<Arc<Inner>>, Path(realm): Path<String>) -> Response {
    inner.discovery_hits.fetch_add(1, Ordering::SeqCst);
    if let Some(r) = failure(&inner).await {
        return r;
    }
    if !inner.realms.lock().contains_key(&realm) {
        return (
            StatusCode::NOT_FOUND,
            "{\"error\":\"Realm does not exist\"}",
        )
            .into_response();
    }
    let base = inner.base.lock().clone();
    axum::Json(json!({
        "issuer": format!("{base}/realms/{realm}"),
        "jwks_uri": format!("{base}/realms/{realm}/protocol/openid-connect/certs"),
        "authorization_endpoint": format!("{base}/realms/{realm}/protocol/openid-connect/auth"),
        "token_endpoint": format!("{base}/realms/{realm}/protocol/openid-connect/token"),
    }))
    .into_response()
}

async fn certs(State(inner): State<Arc<Inner>>, Path(realm): Path<String>) -> Response {
    *inner.jwks_hits.lock().entry(realm.clone()).or_default() += 1;
    if let Some(r) = failure(&inner).await {
        return r;
    }
    let keys = inner.realms.lock().get(&realm).map(|r| r.keys.clone());
    match keys {
        Some(keys) => axum::Json(json!({"keys": keys})).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "{\"error\":\"Realm does not exist\"}",
        )
            .into_response(),
    }
}
