//! The admin listener: liveness, readiness and metrics on their own port, never on the
//! proxy port (they must not be reachable by tenants' clients).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::metrics::metrics;
use crate::state::Shared;

pub struct AdminApp {
    shared: Arc<Shared>,
}

impl AdminApp {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// Routes one admin request; split out so it is testable without a socket.
    pub fn handle(&self, method: &http::Method, path: &str) -> Response<Vec<u8>> {
        if method != http::Method::GET && method != http::Method::HEAD {
            return json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method_not_allowed"}),
            );
        }
        match path {
            "/healthz" => json_response(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" => {
                let reasons = self.shared.not_ready_reasons();
                let h = self.shared.keys.static_realm_health();
                // Per-realm health is a detail, not a verdict; the list is capped.
                let realms = json!({
                    "usable": h.usable,
                    "loading": h.loading,
                    "unusable": h.unusable.len(),
                    "unusable_names": h.unusable.iter().take(100).collect::<Vec<_>>(),
                });
                let g = &self.shared.grants;
                let grants = g.has_user_grants().then(|| {
                    json!({
                        "invalidation": g.invalidation_mode(),
                        "subscribed": g.subscriber_connected(),
                        "loader": g.loader_name(),
                    })
                });
                if reasons.is_empty() {
                    json_response(
                        StatusCode::OK,
                        json!({"status": "ready", "realms": realms, "grants": grants}),
                    )
                } else {
                    json_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        json!({"status": "not_ready", "reasons": reasons, "realms": realms, "grants": grants}),
                    )
                }
            }
            "/metrics" => {
                self.shared.keys.refresh_age_gauges();
                let h = self.shared.keys.static_realm_health();
                let g = &metrics().static_realms;
                let n = |x: usize| i64::try_from(x).unwrap_or(i64::MAX);
                g.with_label_values(&["usable"]).set(n(h.usable));
                g.with_label_values(&["loading"]).set(n(h.loading));
                g.with_label_values(&["unusable"]).set(n(h.unusable.len()));
                let body = metrics().encode();
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                    .header(http::header::CONTENT_LENGTH, body.len())
                    .body(body)
                    .unwrap_or_default()
            }
            // realmgate's identity-assertion key, for backends that verify the assertion.
            "/.well-known/jwks.json" => match &self.shared.assertion {
                Some(key) => {
                    let body = key.jwks_json().to_vec();
                    Response::builder()
                        .status(StatusCode::OK)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .header(http::header::CONTENT_LENGTH, body.len())
                        .header(http::header::CACHE_CONTROL, "public, max-age=300")
                        .body(body)
                        .unwrap_or_default()
                }
                None => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
            },
            _ => json_response(StatusCode::NOT_FOUND, json!({"error": "not_found"})),
        }
    }
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    let body = v.to_string().into_bytes();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        self.handle(&method, &path)
    }
}
