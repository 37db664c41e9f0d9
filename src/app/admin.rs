//! The admin listener (`listen.admin`): liveness, readiness, metrics and the identity-assertion
//! JWKS on their own port, never on the proxy port (they must not be reachable by tenants'
//! clients). Read-only: backends, Prometheus and kubelet reach it, so nothing here changes
//! state; the operator's writes have their own listener (`operator.rs`).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::downstream::{mark_head_read, mark_request_done};
use crate::http::respond::{self, Answer, Cache};
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
    pub fn handle(&self, method: &http::Method, path: &str) -> Answer {
        if method != http::Method::GET && method != http::Method::HEAD {
            let mut body = json!({"error": "method_not_allowed"});
            if path == "/revoke" || path == "/not-before" {
                body["message"] =
                    "admin writes are served on the admin.writes.listen listener only".into();
            }
            return doc(405, "method_not_allowed", body).with_allow("GET, HEAD");
        }
        match path {
            "/healthz" => doc(200, "", json!({"status": "ok"})),
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
                let replica = self.shared.revocation_replica.lock().clone();
                let revocation = json!({
                    "entries": self.shared.revoker.list.len(),
                    "replicated": replica.is_some(),
                    "subscribed": replica.is_some_and(|r| r.subscribed()),
                });
                if reasons.is_empty() {
                    doc(
                        200,
                        "",
                        json!({"status": "ready", "realms": realms, "grants": grants, "revocation": revocation}),
                    )
                } else {
                    doc(
                        503,
                        "not_ready",
                        json!({"status": "not_ready", "reasons": reasons, "realms": realms, "grants": grants, "revocation": revocation}),
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
                Answer::document(200, "text/plain; version=0.0.4", metrics().encode())
                    .with_cache(Cache::Unset)
            }
            // realmgate's identity-assertion key, for backends that verify the assertion.
            "/.well-known/jwks.json" => match &self.shared.assertion {
                Some(key) => {
                    let mut a = Answer::document(200, "application/json", key.jwks_json().to_vec());
                    a.cache = Cache::Public { max_age: 300 };
                    a
                }
                None => doc(404, "not_found", json!({"error": "not_found"})),
            },
            _ => doc(404, "not_found", json!({"error": "not_found"})),
        }
    }
}

/// A JSON document, never cached.
fn doc(status: u16, code: &'static str, v: serde_json::Value) -> Answer {
    Answer::json(status, code, &v)
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        mark_head_read(session);
        let req = session.req_header();
        let answer = self.handle(&req.method, req.uri.path());
        mark_request_done(session);
        respond::to_admin(&answer)
    }
}
