//! The request path: one `ProxyHttp` impl that reads top to bottom.
//!
//! `request_filter` strips the client's copies of realmgate's headers, asks
//! [`crate::decision::decide`] what to do, and then forwards, answers a refusal, or hands the
//! request to one of the gateway's own endpoints (`endpoints/`); every answer goes through
//! `http::respond`, the one writer. `upstream_peer` picks the tenant's upstream;
//! `upstream_request_filter` is one call into `forward` (identity headers, assertion,
//! forwarding headers); `logging` records metrics and the access line.

mod audit;
mod endpoints;
mod forward;

use endpoints::revocation;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::HeaderValue;
use pingora::prelude::*;
use pingora::protocols::Digest;
use pingora::proxy::FailToProxy;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorSource, ErrorType};

use crate::config::RuntimeConfig;
use crate::decision::refusal::{self, FailureCounter, UpstreamFailure};
use crate::decision::{decide, Decision, Deps, Endpoint, Forward, Input, NoTrace, Outcome};
use crate::downstream::{mark_head_read, mark_request_done};
use crate::http::headers::{is_valid_request_id, new_request_id};
use crate::http::request_target::request_host;
use crate::http::respond::{self, Answer, Stamp};
use crate::metrics::metrics;
use crate::state::Shared;
use crate::telemetry::log_line;
use crate::tenant::Tenant;
use crate::verify::Identity;

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
    /// The `Host` as received (for `X-Forwarded-Host` / `Forwarded`).
    host: Option<HeaderValue>,
    /// What `decide` said: tenant, route, identity and, when forwarded, scope, canonical
    /// target, body bound and verdict.
    decision: Option<Decision>,
    /// Set when the gateway answered instead of the upstream: the answer's stable code.
    rejected: Option<&'static str>,
    status: u16,
    upstream_started: Option<Instant>,
    /// The body bytes streamed so far (against the route's bound).
    body_seen: u64,
}

impl RequestCtx {
    fn tenant(&self) -> Option<&Arc<Tenant>> {
        self.decision.as_ref()?.tenant.as_ref()
    }

    fn identity(&self) -> Option<&Arc<Identity>> {
        self.decision.as_ref()?.identity.as_ref()
    }

    fn forward(&self) -> Option<&Forward> {
        self.decision.as_ref()?.forward_ref()
    }

    /// The matched rule, in the snapshot the request was decided with.
    fn rule(&self) -> Option<&crate::authz::RouteRule> {
        let (Some(d), Some(cfg)) = (&self.decision, &self.config) else {
            return None;
        };
        d.route?.rule(cfg, d.tenant.as_deref()?)
    }

    /// The matched rule's id (`routes[3]`, `tenants[1].routes[0]`) for logs, or "".
    fn route_id(&self) -> &str {
        self.rule().map_or("", |r| r.id())
    }

    /// The `decision` field of the access line.
    fn decision_label(&self) -> &'static str {
        self.decision.as_ref().map_or("", Decision::label)
    }

    /// On a shadow pass: the refusal enforcement would have given (sent upstream as a mark).
    fn shadow(&self) -> Option<&'static str> {
        match &self.forward()?.verdict {
            crate::decision::Verdict::Shadow { would_be, .. } => Some(would_be.code),
            _ => None,
        }
    }

    fn request_id_str(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl Gateway {
    /// Writes `answer` through the one writer, stamped with the request id.
    async fn write(
        &self,
        session: &mut Session,
        ctx: &RequestCtx,
        answer: &Answer,
        body_read: bool,
    ) -> Result<()> {
        let live = self.shared.config.load();
        let cfg = ctx.config.as_deref().unwrap_or(&live);
        let stamp = Stamp {
            request_id_header: &cfg.headers.request_id,
            request_id: ctx.request_id.as_ref(),
            sign_in_header: None,
        };
        respond::to_session(session, answer, &stamp, body_read).await
    }

    /// Hands the request to one of the gateway's own endpoints and writes its answer.
    async fn serve_endpoint(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        endpoint: Endpoint,
    ) -> Result<bool> {
        let (Some(tenant), Some(cfg)) = (ctx.tenant(), &ctx.config) else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "endpoint without tenant",
            ));
        };
        let (answer, body_read) = match endpoint {
            Endpoint::BackchannelLogout | Endpoint::NotBeforePush => {
                revocation::serve(
                    &self.shared,
                    &self.revocation_rate,
                    session,
                    tenant,
                    endpoint,
                    cfg,
                )
                .await?
            }
        };
        Self::answered(ctx, answer.status, answer.code, true);
        self.write(session, ctx, &answer, body_read).await?;
        Ok(true)
    }

    /// Records what the gateway answered: status and code for logs, and the refusal counter
    /// (a reserved path counts in the revocation endpoints' own, as their refusals).
    fn answered(ctx: &mut RequestCtx, status: u16, code: &'static str, on_endpoint: bool) {
        ctx.status = status;
        let m = metrics();
        if on_endpoint {
            if status != 200 {
                ctx.rejected = Some(code);
                m.revocation_requests_refused_total
                    .with_label_values(&[code])
                    .inc();
            }
        } else {
            ctx.rejected = Some(code);
            m.rejections_total.with_label_values(&[code]).inc();
        }
    }
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

    /// Decides the request. `Ok(true)` means realmgate has answered (a refusal or one of its
    /// own endpoints); `Ok(false)` lets it through to the upstream. Expected refusals never
    /// surface as `Err`, so they are not logged as proxy errors.
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
        ctx.config = Some(cfg);
        ctx.decision = Some(d);
        audit::record(ctx);
        let Some(d) = &ctx.decision else {
            return Ok(false);
        };
        let (status, code, on_endpoint) = match &d.outcome {
            Outcome::Forward(_) => return Ok(false),
            Outcome::Endpoint(e) => return self.serve_endpoint(session, ctx, *e).await,
            Outcome::Refuse { answer, .. } => (answer.status, answer.code, d.endpoint.is_some()),
        };
        Self::answered(ctx, status, code, on_endpoint);
        if let Some(Decision {
            outcome: Outcome::Refuse { answer, .. },
            ..
        }) = &ctx.decision
        {
            self.write(session, ctx, answer, false).await?;
        }
        Ok(true)
    }

    /// The tenant's upstream (or the default), with the configured timeouts. Addresses were
    /// resolved at config load, so no DNS happens here.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let (Some(cfg), Some(tenant)) = (&ctx.config, ctx.tenant()) else {
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

    /// Writes the verified identity onto the upstream request (`forward`).
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        forward::rewrite(self.shared.assertion.as_ref(), session, upstream, ctx)
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
            if ctx.body_seen > ctx.forward().map_or(0, |f| f.body_limit) {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route's limit",
                );
            }
        }
        Ok(())
    }

    /// Upstream failures become JSON 502/504 answers (`refusal::upstream_failure`); nothing
    /// internal leaks.
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (mut answer, counter) = match refusal::upstream_failure(e.esource(), e.etype()) {
            UpstreamFailure::ClientGone => {
                ctx.status = 499;
                return FailToProxy {
                    error_code: 0,
                    can_reuse_downstream: false,
                };
            }
            UpstreamFailure::Answer(a, c) => (a, c),
        };
        let m = metrics();
        match counter {
            FailureCounter::Rejection => m.rejections_total.with_label_values(&[answer.code]).inc(),
            FailureCounter::Upstream(kind) => {
                m.upstream_errors_total.with_label_values(&[kind]).inc()
            }
            FailureCounter::None => {}
        }
        answer.close = true;
        let _ = self.write(session, ctx, &answer, false).await;
        ctx.status = answer.status;
        ctx.rejected = Some(answer.code);
        FailToProxy {
            error_code: answer.status,
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
            .tenant()
            .map(|t| tenant_label(t, ctx.identity().is_some()))
            .unwrap_or("none");
        m.requests_total
            .with_label_values(&[tenant, status_label(status)])
            .inc();
        m.request_duration.observe(elapsed.as_secs_f64());
        let upstream_us = ctx.upstream_started.map(|s| s.elapsed().as_micros() as u64);
        if let Some(us) = upstream_us {
            m.upstream_duration.observe(us as f64 / 1e6);
        }
        let log_access = ctx.config.as_ref().is_some_and(|c| c.logging.access_log);
        if log_access {
            let req = session.req_header();
            log_line!(
                INFO,
                "realmgate::access",
                "request",
                request_id = ctx.request_id_str().unwrap_or(""),
                tenant = ctx.tenant().map(|t| &*t.id).unwrap_or(""),
                realm = ctx.tenant().map(|t| &*t.realm).unwrap_or(""),
                sub = ctx.identity().map(|i| i.sub()).unwrap_or(""),
                route = ctx.route_id(),
                decision = ctx.decision_label(),
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
        ctx.tenant().map(|t| &*t.id).unwrap_or("-"),
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
