//! The request path: one `ProxyHttp` impl that reads top to bottom.
//!
//! `request_filter` strips the client's copies of realmgate's headers, asks
//! [`crate::decision::decide`] what to do, and either answers itself (`Ok(true)`) or lets the
//! request through; `upstream_peer` picks the tenant's upstream; `upstream_request_filter`
//! writes the verified identity; `logging` records metrics and the access line.

mod audit;
mod endpoints;

use endpoints::revocation;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::authz::ScopeId;
use crate::config::RuntimeConfig;
use crate::decision::{decide, Deps, Input, NoTrace, Outcome, RouteRef};
use crate::downstream::{mark_head_read, mark_request_done};
use crate::http::headers::{is_valid_request_id, new_request_id, HeaderPolicy};
use crate::metrics::metrics;
use crate::http::respond::Rejection;
use crate::state::Shared;
use crate::telemetry::log_line;
use crate::tenant::Tenant;
use crate::verify::Identity;

pub use crate::http::request_target::{absolute_form_authority, origin_form, request_host};

/// The Pingora proxy application.
pub struct Gateway {
    shared: Arc<Shared>,
    /// The rate bound of the back-channel logout and not-before endpoints.
    revocation_rate: revocation::EndpointRate,
}

impl Gateway {
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            revocation_rate: revocation::EndpointRate::new(),
        }
    }
}

/// Per-request state. Created for every request (also on keep-alive reuse), so it is cheap:
/// no allocation until a field is filled.
#[derive(Default)]
pub struct RequestCtx {
    started: Option<Instant>,
    /// The config snapshot this request was decided with; it finishes on it even if a reload
    /// swaps the config meanwhile.
    config: Option<Arc<RuntimeConfig>>,
    request_id: Option<HeaderValue>,
    tenant: Option<Arc<Tenant>>,
    /// The `Host` as received (for `X-Forwarded-Host` / `Forwarded`).
    host: Option<HeaderValue>,
    /// The verified caller (absent on public routes).
    identity: Option<Arc<Identity>>,
    /// Widest scope held for the route's permission, forwarded as `X-Auth-Scope`.
    scope: Option<ScopeId>,
    /// The canonical request target, when it differs from what the client sent.
    forward_target: Option<Vec<u8>>,
    /// Route id (`routes[3]`) for logs.
    route: Option<RouteRef>,
    /// allow, deny, public, shadow_deny, ...
    decision: &'static str,
    /// On a shadow pass: the refusal enforcement would have given (sent upstream as a mark).
    shadow: Option<&'static str>,
    /// Set when the gateway answered instead of the upstream.
    rejected: Option<&'static str>,
    status: u16,
    upstream_started: Option<Instant>,
    /// The route's body bound and the body bytes streamed so far.
    body_limit: u64,
    body_seen: u64,
}

impl RequestCtx {
    /// The matched rule, in the snapshot the request was decided with.
    fn rule(&self) -> Option<&crate::authz::RouteRule> {
        let (Some(r), Some(cfg), Some(t)) = (self.route, &self.config, &self.tenant) else {
            return None;
        };
        r.rule(cfg, t)
    }

    /// The matched rule's id (`routes[3]`, `tenants[1].routes[0]`) for logs, or "".
    fn route_id(&self) -> &str {
        self.rule().map_or("", |r| r.id())
    }

    fn scope_name(&self) -> Option<&str> {
        Some(self.config.as_ref()?.catalog.scopes().name(self.scope?))
    }

    fn request_id_str(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl Gateway {
    /// Writes a refusal and marks the request as answered.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        r: Rejection,
    ) -> Result<bool> {
        let cfg = self.shared.config.load();
        let cfg = ctx.config.as_deref().unwrap_or(&cfg);
        let rid = ctx.request_id_str();
        let body = r.body(rid);
        let header = r.header(&cfg.headers.request_id, rid, body.len())?;
        // A request body we will not read would poison a reused connection.
        if has_body(session.req_header()) {
            session.set_keepalive(None);
        }
        ctx.rejected = Some(r.code);
        ctx.status = r.status;
        metrics()
            .rejections_total
            .with_label_values(&[r.code])
            .inc();
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }
}

pub(crate) fn has_body(req: &RequestHeader) -> bool {
    req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::default()
    }

    /// No downstream modules. Pingora's default registers a response-compression module at
    /// level 0 (disabled) that every request still builds and consults; realmgate never
    /// compresses (the backend decides its encoding), so it is pure per-request cost.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    /// The head is in: the connection's head deadline stops, and this request's connection
    /// settings are applied (pipelined requests are each decided and answered in order).
    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        mark_head_read(session.as_downstream());
        let d = self.shared.config.load().downstream;
        session.set_pipelining_enabled(true);
        session.set_write_timeout(Some(d.write_timeout));
        // Only while keep-alive is on: a client's `Connection: close` or a shutdown turned it
        // off, and that must stand. Pingora's per-read timeout stays a backstop just past ours.
        let idle = d.idle_timeout.as_secs() + 1;
        if session.get_keepalive().is_some_and(|k| k != idle) {
            session.set_keepalive(Some(idle));
        }
        Ok(())
    }

    /// Decides the request. `Ok(true)` means realmgate has answered (a refusal); `Ok(false)`
    /// lets it through to the upstream. Expected refusals never surface as `Err`, so they are
    /// not logged as proxy errors.
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.started = Some(Instant::now());
        let cfg = self.shared.config.load_full();
        let is_h2 = session.is_http2();
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let req = session.req_header_mut();

        // Request id first, so every answer (refusals included) carries one.
        ctx.request_id = Some(match req.headers.get(&cfg.headers.request_id) {
            Some(v) if is_valid_request_id(v.as_bytes()) => v.clone(),
            _ => new_request_id(),
        });

        // Before anything else: the client never speaks for realmgate.
        cfg.headers.strip_owned(req);

        // The reserved revocation paths are the gateway's own, on every tenant host.
        if revocation::is_endpoint(&cfg, session.req_header().raw_path()) {
            ctx.config = Some(cfg.clone());
            return revocation::serve(&self.shared, &self.revocation_rate, session, ctx, &cfg)
                .await;
        }

        let req = session.req_header();
        let deps = Deps {
            verifier: &self.shared.verifier,
            grants: &self.shared.grants,
            revocations: &self.shared.revoker.list,
        };
        let d = decide(&cfg, deps, &Input { req, is_h2, peer }, &mut NoTrace).await;

        if d.tenant.is_some() {
            // Shares the received header's buffer when there is one (no copy).
            ctx.host = req.headers.get(http::header::HOST).cloned().or_else(|| {
                request_host(req, is_h2)
                    .ok()
                    .and_then(|h| HeaderValue::from_bytes(h).ok())
            });
        }
        ctx.tenant = d.tenant;
        ctx.route = d.route;
        ctx.identity = d.identity;
        ctx.config = Some(cfg);
        audit::record(ctx, &d.outcome);
        match d.outcome {
            Outcome::Refuse { rejection, .. } => self.reject(session, ctx, rejection).await,
            Outcome::Forward(f) => {
                ctx.scope = f.scope;
                ctx.forward_target = f.target;
                ctx.body_limit = f.body_limit;
                ctx.decision = f.verdict.label();
                if let crate::decision::Verdict::Shadow { would_be, .. } = &f.verdict {
                    ctx.shadow = Some(would_be.code);
                }
                Ok(false)
            }
        }
    }

    /// The tenant's upstream (or the default), with the configured timeouts. Addresses were
    /// resolved at config load, so no DNS happens here.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(cfg), Some(tenant)) = (&ctx.config, &ctx.tenant) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no routing decision",
            ));
        };
        let target = cfg.upstream_for(tenant);
        let mut peer = HttpPeer::new(target.addr, target.tls, target.sni.clone());
        let t = &cfg.timeouts;
        peer.options.connection_timeout = Some(t.connect);
        peer.options.read_timeout = Some(t.read);
        peer.options.write_timeout = Some(t.write);
        peer.options.idle_timeout = Some(t.idle);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    /// Writes the verified identity onto the upstream request. Client copies of these headers
    /// were removed in `request_filter`, so a missing value can never let a forged one through.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let (Some(cfg), Some(tenant)) = (&ctx.config, &ctx.tenant) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "no routing decision",
            ));
        };
        // Pingora's header API re-parses the name and keeps a second, case-preserving map on
        // every insert; that was most of the gateway's per-request cost. So the headers are
        // edited as plain `http` parts (one reservation, pre-built names and values) and the
        // request is rebuilt without the case map: names go upstream in lowercase, as HAProxy
        // and Envoy send them (HTTP field names are case-insensitive, RFC 9110 section 5.1).
        let raw_target = ctx.forward_target.take().or_else(|| {
            let raw = upstream.raw_path();
            let via_uri = upstream
                .uri
                .path_and_query()
                .map_or(&b"/"[..], |p| p.as_str().as_bytes());
            (raw != via_uri).then(|| raw.to_vec())
        });
        let end_stream = upstream.send_end_stream();
        let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
        let mut parts = http::request::Parts::from(std::mem::replace(upstream, placeholder));
        let headers = &mut parts.headers;
        headers.reserve(16);

        let h = &cfg.headers;
        let fail_closed = || Error::explain(ErrorType::InternalError, "forwarded header value");
        headers.insert(
            h.tenant.clone(),
            tenant.id_value.clone().ok_or_else(fail_closed)?,
        );
        headers.insert(
            h.realm.clone(),
            tenant.realm_value.clone().ok_or_else(fail_closed)?,
        );
        if let Some(id) = &ctx.identity {
            headers.insert(h.user_id.clone(), id.sub_value().ok_or_else(fail_closed)?);
            if let Some(name) = id.preferred_username_value() {
                headers.insert(h.user_name.clone(), name);
            }
            if let Some(email) = id.email_value() {
                headers.insert(h.user_email.clone(), email);
            }
            headers.insert(h.roles.clone(), id.role_set.header.clone());
            for (name, value) in &id.extra {
                headers.insert(name.clone(), value.clone());
            }
            if let Some(scope) = ctx.scope.and_then(|s| cfg.catalog.scopes().value(s)) {
                headers.insert(h.scope.clone(), scope.clone());
            }
            if cfg.raw.keycloak.strip_authorization {
                headers.remove(http::header::AUTHORIZATION);
            }
            // Signed identity assertion: one ES256 signature when on, one `Option` check when off.
            if let (Some(a), Some(key)) = (&cfg.assertion, &self.shared.assertion) {
                let path = match &raw_target {
                    Some(t) => String::from_utf8_lossy(t),
                    None => parts
                        .uri
                        .path_and_query()
                        .map_or(Cow::Borrowed("/"), |p| Cow::Borrowed(p.as_str())),
                };
                let claims = crate::assertion::Assertion {
                    tenant: &tenant.id,
                    realm: &tenant.realm,
                    sub: id.sub(),
                    roles: id.all_roles(),
                    scope: ctx.scope_name(),
                    method: parts.method.as_str(),
                    path: &path,
                    request_id: ctx.request_id_str(),
                    shadow: ctx.shadow,
                };
                let token = key
                    .sign(a, &claims, crate::assertion::unix_now())
                    .map_err(|e| {
                        Error::because(ErrorType::InternalError, "identity assertion", e)
                    })?;
                parts.headers.insert(a.header.clone(), token);
            }
        } else {
            // Public routes, `default_policy: allow`: nothing was verified, so nothing the
            // client presented as a credential goes on.
            HeaderPolicy::strip_unverified_credentials(
                &mut parts.headers,
                cfg.raw.keycloak.token_cookie.as_deref(),
            );
        }
        let headers = &mut parts.headers;
        if let Some(code) = ctx.shadow {
            headers.insert(h.shadow.clone(), HeaderValue::from_static(code));
        }
        if let Some(id) = &ctx.request_id {
            headers.insert(h.request_id.clone(), id.clone());
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let proto = if session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .is_some()
        {
            "https"
        } else {
            "http"
        };
        let no_host = HeaderValue::from_static("");
        h.set_forwarding(headers, peer, proto, ctx.host.as_ref().unwrap_or(&no_host));

        *upstream = RequestHeader::from(parts);
        if let Some(t) = &raw_target {
            upstream.set_raw_path(t)?;
        }
        if let Some(end) = end_stream {
            upstream.set_send_end_stream(end);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.status = resp.status.as_u16();
        if let (Some(cfg), Some(id)) = (&ctx.config, &ctx.request_id) {
            // As upstream: plain `http` parts, no case map (names go out lowercase, as from
            // HAProxy; HTTP/2 clients only ever see lowercase). The reason phrase is kept.
            // Only a non-standard phrase needs carrying over (no copy for "200 OK").
            let reason = resp
                .get_reason_phrase()
                .filter(|r| Some(*r) != resp.status.canonical_reason())
                .map(str::to_owned);
            let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
            let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
            parts
                .headers
                .insert(cfg.headers.request_id.clone(), id.clone());
            *resp = ResponseHeader::from(parts);
            if reason.is_some() {
                resp.set_reason_phrase(reason.as_deref())?;
            }
        }
        Ok(())
    }

    /// Counts the streamed body against the route's bound: a chunked body over it ends the
    /// request with 413 (the upstream gets an incomplete body, never a complete request).
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(b) = body {
            ctx.body_seen = ctx.body_seen.saturating_add(b.len() as u64);
            if ctx.body_seen > ctx.body_limit {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route's limit",
                );
            }
        }
        Ok(())
    }

    /// Upstream failures become JSON 502/504 answers; nothing internal leaks.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let r = match (e.esource(), e.etype()) {
            (_, ErrorType::HTTPStatus(413)) => {
                metrics()
                    .rejections_total
                    .with_label_values(&["body_too_large"])
                    .inc();
                crate::limits::body_too_large()
            }
            (_, ErrorType::HTTPStatus(code)) if *code >= 400 => {
                Rejection::new(*code, "bad_request", "the request could not be processed")
            }
            (
                ErrorSource::Downstream,
                ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed,
            ) => {
                ctx.status = 499;
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            (ErrorSource::Downstream, _) => {
                Rejection::new(400, "bad_request", "the request could not be read")
            }
            (
                _,
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ) => {
                metrics()
                    .upstream_errors_total
                    .with_label_values(&["timeout"])
                    .inc();
                Rejection::new(
                    504,
                    "upstream_timeout",
                    "the upstream did not answer in time",
                )
            }
            (
                ErrorSource::Upstream,
                ErrorType::ConnectRefused | ErrorType::ConnectError | ErrorType::ConnectNoRoute,
            ) => {
                metrics()
                    .upstream_errors_total
                    .with_label_values(&["connect"])
                    .inc();
                Rejection::new(502, "upstream_unavailable", "the upstream is not reachable")
            }
            (ErrorSource::Upstream, _) => {
                metrics()
                    .upstream_errors_total
                    .with_label_values(&["other"])
                    .inc();
                Rejection::new(502, "upstream_error", "the upstream failed to answer")
            }
            _ => Rejection::new(
                500,
                "internal_error",
                "the gateway failed to process the request",
            ),
        };
        ctx.status = r.status;
        ctx.rejected = Some(r.code);
        let code = r.status;
        let rid = ctx.request_id_str();
        let body = r.body(rid);
        let cfg = self.shared.config.load();
        // If the response head already went out, nothing more can be said to the client.
        if session.response_written().is_none() {
            if let Ok(header) = r.header(&cfg.headers.request_id, rid, body.len()) {
                session.set_keepalive(None);
                if session
                    .write_response_header(Box::new(header), false)
                    .await
                    .is_ok()
                {
                    let _ = session.write_response_body(Some(body), true).await;
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// Always called last: metrics and the access line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        mark_request_done(session.as_downstream());
        let elapsed = ctx.started.map(|s| s.elapsed()).unwrap_or(Duration::ZERO);
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(ctx.status);
        let m = metrics();
        let tenant = ctx
            .tenant
            .as_ref()
            .map(|t| tenant_label(t, ctx.identity.is_some()))
            .unwrap_or("none");
        m.requests_total
            .with_label_values(&[tenant, status_label(status)])
            .inc();
        m.request_duration.observe(elapsed.as_secs_f64());
        let upstream_us = ctx.upstream_started.map(|s| s.elapsed().as_micros() as u64);
        if let Some(us) = upstream_us {
            m.upstream_duration.observe(us as f64 / 1e6);
        }
        let log_access = ctx
            .config
            .as_ref()
            .is_some_and(|c| c.raw.logging.access_log);
        if log_access {
            let req = session.req_header();
            log_line!(
                INFO,
                "realmgate::access",
                "request",
                request_id = ctx.request_id_str().unwrap_or(""),
                tenant = ctx.tenant.as_ref().map(|t| &*t.id).unwrap_or(""),
                realm = ctx.tenant.as_ref().map(|t| &*t.realm).unwrap_or(""),
                sub = ctx.identity.as_ref().map(|i| i.sub()).unwrap_or(""),
                route = ctx.route_id(),
                decision = ctx.decision,
                method = req.method.as_str(),
                path = req.uri.path(),
                status = status,
                reason = ctx.rejected.unwrap_or(""),
                latency_us = elapsed.as_micros() as u64,
                upstream_latency_us = upstream_us.unwrap_or(0),
            );
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, error: &Error) -> bool {
        // Clients going away mid-response are not gateway errors.
        matches!(error.esource(), ErrorSource::Downstream)
            && matches!(
                error.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError | ErrorType::WriteError
            )
    }

    /// What Pingora's error log says about a request. Pingora's own summary prints the whole
    /// URI, and a query can carry a token (`?access_token=`), so only the path is named.
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        summary(session.req_header(), ctx)
    }
}

/// The `tenant` label of a request's metrics. Configured tenants and tenants whose token
/// verified may take a label of their own; a pattern tenant nobody authenticated for (any
/// random subdomain) only reuses one it already has, else counts as `other`.
fn tenant_label(tenant: &Tenant, verified: bool) -> &str {
    let labels = &metrics().tenants;
    match tenant.source {
        crate::tenant::TenantSource::Static { .. } => labels.label(&tenant.id),
        crate::tenant::TenantSource::Pattern { .. } if verified => labels.label(&tenant.id),
        crate::tenant::TenantSource::Pattern { .. } => labels.known(&tenant.id),
    }
}

fn summary(req: &RequestHeader, ctx: &RequestCtx) -> String {
    let host = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-");
    format!(
        "{} {} host={host} tenant={} request_id={}",
        req.method,
        req.uri.path(),
        ctx.tenant.as_ref().map(|t| &*t.id).unwrap_or("-"),
        ctx.request_id_str().unwrap_or("-")
    )
}

/// Status codes as static label values (no allocation per request).
fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        201 => "201",
        204 => "204",
        101 => "101",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        c if c < 200 => "1xx",
        c if c < 300 => "2xx",
        c if c < 400 => "3xx",
        c if c < 500 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn random_subdomains_do_not_take_tenant_labels() {
        use crate::tenant::{TenantSource, TenantStatus};
        let pattern = |id: &str| {
            Tenant::new(
                id.into(),
                format!("tenant-{id}").into(),
                TenantStatus::Active,
                None,
                TenantSource::Pattern { index: 0 },
            )
        };
        let junk = pattern("zz-random-7f3a");
        assert_eq!(tenant_label(&junk, false), crate::metrics::OTHER);
        assert_eq!(
            tenant_label(&junk, false),
            crate::metrics::OTHER,
            "still not admitted"
        );
        let real = pattern("zz-verified-tenant");
        assert_eq!(tenant_label(&real, true), "zz-verified-tenant");
        assert_eq!(
            tenant_label(&real, false),
            "zz-verified-tenant",
            "kept once admitted"
        );
    }

    #[test]
    fn the_error_log_summary_never_carries_the_query() {
        let mut req =
            RequestHeader::build("GET", b"/ws?access_token=eyJ.secret.sig", None).unwrap();
        req.append_header("Host", "acme.test").unwrap();
        let s = summary(&req, &RequestCtx::default());
        assert_eq!(s, "GET /ws host=acme.test tenant=- request_id=-");
    }
}
