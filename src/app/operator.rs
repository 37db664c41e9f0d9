//! The operator's write listener (`admin.writes`): `POST /revoke` (`{"tenant": .., "sub": ..}`
//! or `"sid"`) and `POST /not-before` (`{"tenant": .., "not_before": unix seconds, default
//! now}`); a tenant may be named by `"realm"` instead (host-pattern tenants have no id).
//!
//! A write logs out users on every replica and persists in Redis, so the listener is its own
//! (never the one backends, Prometheus and kubelet reach), off unless a credential is
//! configured, and every request passes, in order: the route, the bearer secret (compared in
//! constant time), a rate bound, `Content-Type: application/json`, a bounded body read under
//! a total deadline, and a realm that is configured or loaded — never one a caller invents.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::Response;
use parking_lot::Mutex;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;

use crate::config::{AdminWrites, RuntimeConfig};
use crate::downstream::{mark_head_read, mark_request_done};
use crate::http::respond::{self, Answer, Challenge};
use crate::limits::TokenBucket;
use crate::metrics::metrics;
use crate::revocation::{Kind, Source};
use crate::state::Shared;

/// Largest request body read.
const MAX_BODY: usize = 16 * 1024;
/// The whole body must arrive within this.
const BODY_DEADLINE: Duration = Duration::from_secs(5);

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

pub struct OperatorApp {
    shared: Arc<Shared>,
    /// The write rate bound (rebuilt when the configured rate changes).
    rate: Mutex<(u32, TokenBucket)>,
}

impl OperatorApp {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            rate: Mutex::new((0, TokenBucket::new(0, Instant::now()))),
        }
    }

    fn admit(&self, per_second: u32) -> bool {
        let now = Instant::now();
        let mut g = self.rate.lock();
        if g.0 != per_second {
            *g = (per_second, TokenBucket::new(per_second, now));
        }
        g.1.try_take(now)
    }

    /// Everything before the body: route, credential, rate, content type. `Ok` with the
    /// write settings when the body may be read.
    fn admit_request(&self, cfg: &RuntimeConfig, session: &ServerSession) -> Result<(), Answer> {
        let req = session.req_header();
        let path = req.uri.path();
        if path != "/revoke" && path != "/not-before" {
            return Err(doc(404, "not_found", "no such endpoint"));
        }
        if req.method != http::Method::POST {
            return Err(
                doc(405, "method_not_allowed", "only POST is accepted here").with_allow("POST")
            );
        }
        let Some(w) = &cfg.admin.writes else {
            return Err(doc(404, "not_found", "admin writes are off"));
        };
        if !authorized(w, req) {
            return Err(result("unauthorized", unauthorized()));
        }
        if !self.admit(w.rate_per_second) {
            return Err(result(
                "rate_limited",
                doc(
                    429,
                    "rate_limited",
                    "too many admin writes, try again later",
                )
                .with_retry_after(1),
            ));
        }
        if !is_json(req) {
            return Err(doc(
                415,
                "unsupported_media_type",
                "the body must be application/json",
            ));
        }
        let declared = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return Err(doc(413, "body_too_large", "the body is larger than 16 KiB"));
        }
        Ok(())
    }

    /// `POST /revoke` and `POST /not-before` with an admitted body: the operator's revocation
    /// (source `admin`).
    pub fn revoke(&self, path: &str, body: &[u8]) -> Answer {
        let bad = |why: &'static str| doc(400, "invalid_request", why);
        let Ok(req) = serde_json::from_slice::<RevokeRequest>(body) else {
            return bad("the body must be a JSON object with tenant (or realm) and sub or sid");
        };
        let cfg = self.shared.config.load();
        let realm = match (&req.tenant, &req.realm) {
            (Some(id), None) => match cfg.tenants.tenant_by_id(id) {
                Some(t) => t.realm.to_string(),
                None => return doc(404, "unknown_tenant", "no tenant has this id"),
            },
            (None, Some(realm)) if self.realm_is_known(&cfg, realm) => realm.clone(),
            (None, Some(_)) => {
                return doc(
                    404,
                    "unknown_realm",
                    "no configured tenant or loaded realm has this name",
                )
            }
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
        let doc = json!({
            "revoked": {
                "kind": kind.as_str(),
                "realm": realm,
                "issuer": &*issuer,
                "value": value,
                "at": at,
                "expires": at.saturating_add(s.hold_secs),
                "result": format!("{applied:?}").to_ascii_lowercase(),
            }
        });
        Answer::json(200, "", &doc)
    }

    /// A realm named directly must belong to a configured tenant or be loaded now (a pattern
    /// tenant's realm that served a token): a caller cannot fill the revocation list with
    /// invented realms.
    fn realm_is_known(&self, cfg: &RuntimeConfig, realm: &str) -> bool {
        crate::jwks::valid_realm_name(realm)
            && (cfg.static_realms.iter().any(|r| r == realm)
                || self.shared.keys.with_realm(realm, |_| ()).is_some())
    }

    /// The body, bounded in size and in total time.
    async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Answer> {
        let read = async {
            let mut body = Vec::new();
            loop {
                match session.read_request_body().await {
                    Ok(Some(chunk)) if body.len() + chunk.len() <= MAX_BODY => {
                        body.extend_from_slice(&chunk)
                    }
                    Ok(Some(_)) => {
                        return Err(doc(413, "body_too_large", "the body is larger than 16 KiB"))
                    }
                    Ok(None) => return Ok(body),
                    Err(_) => return Err(doc(400, "bad_request", "the body could not be read")),
                }
            }
        };
        match tokio::time::timeout(BODY_DEADLINE, read).await {
            Ok(r) => r,
            Err(_) => {
                let mut a = doc(408, "body_timeout", "the body did not arrive in time");
                a.close = true;
                Err(a)
            }
        }
    }
}

/// `Authorization: Bearer <secret>`, the secret compared in constant time.
fn authorized(w: &AdminWrites, req: &pingora::http::RequestHeader) -> bool {
    req.headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .is_some_and(|t| w.token.matches(t))
}

fn is_json(req: &pingora::http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn unauthorized() -> Answer {
    doc(
        401,
        "unauthorized",
        "a valid admin bearer secret is required",
    )
    .with_challenge(Challenge {
        realm: "realmgate-admin".into(),
        error: Some("invalid_token"),
        description: None,
    })
}

/// The admin listeners' JSON error: `{"error": code, "message": ...}`, never cached.
fn doc(status: u16, code: &'static str, message: &'static str) -> Answer {
    Answer::error(status, code, message)
}

/// Counts a write attempt by its result (`realmgate_admin_writes_total{result}`).
fn result(label: &'static str, a: Answer) -> Answer {
    metrics()
        .admin_writes_total
        .with_label_values(&[label])
        .inc();
    a
}

#[async_trait]
impl ServeHttp for OperatorApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        mark_head_read(session);
        let cfg = self.shared.config.load_full();
        let answer = match self.admit_request(&cfg, session) {
            Err(a) => a,
            Ok(()) => match Self::read_body(session).await {
                Err(a) => a,
                Ok(body) => {
                    let path = session.req_header().uri.path().to_string();
                    let a = self.revoke(&path, &body);
                    let label = if a.status == 200 {
                        "applied"
                    } else {
                        "refused"
                    };
                    result(label, a)
                }
            },
        };
        if answer.close {
            // The rest of the body was never read.
            session.set_keepalive(None);
        }
        mark_request_done(session);
        respond::to_admin(&answer)
    }
}
