//! The admin listener: liveness, readiness and metrics on their own port, never on the
//! proxy port (they must not be reachable by tenants' clients). Also the operator's
//! revocations: `POST /revoke` (`{"tenant": .., "sub": ..}` or `"sid"`) and
//! `POST /not-before` (`{"tenant": .., "not_before": unix seconds, default now}`); a tenant
//! may be named by `"realm"` instead (host-pattern tenants have no id).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::http::respond::{self, Answer, Cache};
use crate::metrics::metrics;
use crate::revocation::{Kind, Source};
use crate::state::Shared;

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 16 * 1024;

/// The body of `POST /revoke` and `POST /not-before`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    tenant: Option<String>,
    realm: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    not_before: Option<u64>,
}

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
            return doc(
                405,
                "method_not_allowed",
                json!({"error": "method_not_allowed"}),
            );
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

impl AdminApp {
    /// `POST /revoke` and `POST /not-before`: the operator's revocation (source `admin`).
    pub fn revoke(&self, path: &str, body: &[u8]) -> Answer {
        let bad = |why: &str| {
            doc(
                400,
                "invalid_request",
                json!({"error": "invalid_request", "message": why}),
            )
        };
        let Ok(req) = serde_json::from_slice::<RevokeRequest>(body) else {
            return bad("the body must be a JSON object with tenant (or realm) and sub or sid");
        };
        let cfg = self.shared.config.load();
        let realm = match (&req.tenant, &req.realm) {
            (Some(id), None) => match cfg.tenants.tenant_by_id(id) {
                Some(t) => t.realm.to_string(),
                None => {
                    return doc(
                        404,
                        "unknown_tenant",
                        json!({"error": "unknown_tenant", "message": "no tenant has this id"}),
                    )
                }
            },
            (None, Some(realm)) if crate::jwks::valid_realm_name(realm) => realm.clone(),
            _ => return bad("name exactly one of tenant or realm"),
        };
        let tenant = req.tenant.as_deref().unwrap_or("");
        let s = &cfg.revocation;
        let now = self.shared.keys.now();
        let issuer = self.shared.verifier.issuer_for(&realm);
        let value_ok = |v: &str| {
            !v.is_empty()
                && v.len() <= crate::revocation::logout_token::MAX_VALUE_LEN
                && !v.chars().any(char::is_control)
        };
        let (kind, value, at) = match (path, req.sub, req.sid, req.not_before) {
            ("/revoke", Some(sub), None, None) if value_ok(&sub) => (Kind::Sub, sub, now),
            ("/revoke", None, Some(sid), None) if value_ok(&sid) => (Kind::Sid, sid, now),
            ("/revoke", ..) => return bad("name exactly one of sub or sid"),
            ("/not-before", None, None, nb) => {
                let nb = nb.unwrap_or(now);
                if nb > now.saturating_add(s.leeway_secs) {
                    return bad("not_before must not be in the future");
                }
                (Kind::NotBefore, String::new(), nb)
            }
            _ => return bad("/not-before takes only tenant (or realm) and not_before"),
        };
        let applied = self.shared.revoker.revoke(
            kind,
            issuer.clone(),
            &value,
            at,
            s.hold_secs,
            Source::Admin,
            tenant,
            now,
        );
        doc(
            200,
            "",
            json!({
                "revoked": {
                    "kind": kind.as_str(),
                    "realm": realm,
                    "issuer": &*issuer,
                    "value": value,
                    "at": at,
                    "expires": at.saturating_add(s.hold_secs),
                    "result": format!("{applied:?}").to_ascii_lowercase(),
                }
            }),
        )
    }
}

/// A JSON document, never cached.
fn doc(status: u16, code: &'static str, v: serde_json::Value) -> Answer {
    Answer::json(status, code, &v)
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        if method == http::Method::POST && (path == "/revoke" || path == "/not-before") {
            let mut body = Vec::new();
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_ADMIN_BODY => {
                        body.extend_from_slice(&chunk)
                    }
                    Ok(Some(_)) => {
                        let a = doc(413, "body_too_large", json!({"error": "body_too_large"}));
                        return respond::to_admin(&a);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        let a = doc(400, "bad_request", json!({"error": "bad_request"}));
                        return respond::to_admin(&a);
                    }
                }
            }
            return respond::to_admin(&self.revoke(&path, &body));
        }
        respond::to_admin(&self.handle(&method, &path))
    }
}
