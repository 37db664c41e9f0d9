//! The decision: what realmgate does with one request, in one place.
//!
//! [`decide`] is the whole order, top to bottom, each step one call into a pure module:
//!
//! 0. size bounds on the request head (414/431 before anything is parsed further)
//! 1. host -> tenant (exactly one host; unknown hosts refused)
//!    1b. a reserved path is one of the gateway's own endpoints: `Outcome::Endpoint`, which
//!    `proxy/endpoints` answers (its refusals up to here take the endpoint's answer shape)
//! 2. tenant status (a suspended tenant is refused before anything else is looked at)
//! 3. canonical method and path (what is matched is what is authorised is what is forwarded)
//! 4. route (tenant rules, then global rules, then `default_policy`; shadow mode per rule),
//!    and the route's body bound against a declared `Content-Length` (413)
//! 5. credentials -> verified token of the tenant's own realm (shadow mode included: it
//!    relaxes authorization, never authentication), then not revoked (its session or
//!    subject logged out, or issued before the realm's not-before: 401 `token_revoked`)
//! 6. effective permission set (config roles, token claim, Redis grants; cached)
//! 7. the route's permission against it
//!
//! The proxy (`Gateway::request_filter`) and `realmgate explain` both call it, so explain's
//! answer is the gateway's answer by construction. It writes no response and logs no audit
//! line: the caller does that from the returned [`Decision`]; every answer it carries is an
//! [`Answer`] for `http::respond`, the one writer. It awaits only where a step
//! needs I/O (a JWKS load on a verified-token-cache miss, Redis on a grant-cache miss).

mod endpoint;
mod permissions;
pub mod refusal;
pub mod trace;

use std::net::IpAddr;
use std::sync::Arc;

use pingora::http::RequestHeader;

use crate::authz::{
    canonicalize, match_layered, Access, DefaultPolicy, PermissionSet, RouteRule, ScopeId,
};
use crate::config::RuntimeConfig;
use crate::grants::GrantStore;
use crate::http::request_target::{origin_form, request_host};
use crate::http::respond::Answer;
use crate::limits::check_declared_body;
use crate::revocation::RevocationList;
use crate::tenant::Tenant;
use crate::verify::{extract_token, AuthError, Identity, Verifier};

pub use endpoint::{reserved, Endpoint};
pub use permissions::{grant_key, grant_key_sub, permission_set};
pub use trace::{Asked, Detail, NoTrace, Recorded, Stage, Step, Trace};

/// What the request says. `req` is the request as received, after the client's copies of
/// realmgate's own headers were removed.
pub struct Input<'a> {
    pub req: &'a RequestHeader,
    /// HTTP/2 names its host in `:authority`.
    pub is_h2: bool,
    /// The downstream peer (for steps that key on the client).
    pub peer: Option<IpAddr>,
}

/// The long-lived parts a decision consults.
#[derive(Clone, Copy)]
pub struct Deps<'a> {
    pub verifier: &'a Verifier,
    pub grants: &'a GrantStore<PermissionSet>,
    pub revocations: &'a RevocationList,
}

/// The decision and what it was made about (for forwarding, logs and audit).
#[derive(Debug)]
pub struct Decision {
    /// Absent when the host named no tenant.
    pub tenant: Option<Arc<Tenant>>,
    /// The matched rule; absent when none matched (default policy) or before routing.
    pub route: Option<RouteRef>,
    /// The verified caller (absent on public routes and before authentication).
    pub identity: Option<Arc<Identity>>,
    /// The reserved path the request named, also when it was refused before that step.
    pub endpoint: Option<Endpoint>,
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Send it upstream.
    Forward(Forward),
    /// Answer with this refusal (boxed: the forwarded outcome, the common one, stays small
    /// where the decision is moved around).
    Refuse { answer: Box<Answer>, stage: Stage },
    /// One of the gateway's own endpoints answers it (`proxy/endpoints`).
    Endpoint(Endpoint),
}

#[derive(Debug)]
pub struct Forward {
    /// Widest scope held for the route's permission, forwarded as `X-Auth-Scope`.
    pub scope: Option<ScopeId>,
    /// The canonical request target, when it differs from what the client sent.
    pub target: Option<Vec<u8>>,
    /// The body bound the proxy enforces on the bytes it streams (a chunked body declares no
    /// length to check up front).
    pub body_limit: u64,
    pub verdict: Verdict,
}

/// Why a request is forwarded.
#[derive(Debug)]
pub enum Verdict {
    Public,
    Authenticated,
    Allow,
    /// Shadow mode: enforcement would have refused with `would_be` at `stage`.
    Shadow {
        would_be: Box<Answer>,
        stage: Stage,
    },
}

impl Verdict {
    /// The `decision` field of access and audit lines.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Public => "public",
            Verdict::Authenticated => "authenticated",
            Verdict::Allow => "allow",
            Verdict::Shadow { .. } => "shadow_deny",
        }
    }
}

/// Which rule matched, by position, so a decision holds no copy of its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteRef {
    pub tenant_table: bool,
    pub index: usize,
}

impl RouteRef {
    fn of(cfg: &RuntimeConfig, tenant: &Tenant, rule: &RouteRule) -> Self {
        let own = cfg.tenant_routes(tenant);
        Self {
            tenant_table: own.is_some_and(|t| {
                t.rules()
                    .get(rule.index())
                    .is_some_and(|x| std::ptr::eq(x, rule))
            }),
            index: rule.index(),
        }
    }

    /// The rule in `cfg` (the snapshot the decision was made with).
    pub fn rule<'c>(&self, cfg: &'c RuntimeConfig, tenant: &Tenant) -> Option<&'c RouteRule> {
        let table = if self.tenant_table {
            cfg.tenant_routes(tenant)?
        } else {
            &cfg.routes
        };
        table.rules().get(self.index)
    }
}

impl Decision {
    fn refuse(tenant: Option<Arc<Tenant>>, answer: Answer, stage: Stage) -> Self {
        Self {
            tenant,
            route: None,
            identity: None,
            endpoint: None,
            outcome: Outcome::Refuse {
                answer: Box::new(answer),
                stage,
            },
        }
    }

    /// Forwarded unless a later step says otherwise.
    fn forward(route: Option<RouteRef>, target: Option<Vec<u8>>, body_limit: u64) -> Self {
        Self {
            tenant: None,
            route,
            identity: None,
            endpoint: None,
            outcome: Outcome::Forward(Forward {
                scope: None,
                target,
                body_limit,
                verdict: Verdict::Public,
            }),
        }
    }

    /// The HTTP status the client gets from the gateway (200 stands for "forwarded" and for
    /// an endpoint, whose answer depends on its body).
    pub fn status(&self) -> u16 {
        match &self.outcome {
            Outcome::Forward(_) | Outcome::Endpoint(_) => 200,
            Outcome::Refuse { answer, .. } => answer.status,
        }
    }

    /// The forwarding part, when the request goes upstream.
    pub fn forward_ref(&self) -> Option<&Forward> {
        match &self.outcome {
            Outcome::Forward(f) => Some(f),
            _ => None,
        }
    }

    /// The `decision` field of access and audit lines.
    pub fn label(&self) -> &'static str {
        match (&self.outcome, self.endpoint) {
            (_, Some(e)) => e.log_label(),
            (Outcome::Forward(f), None) => f.verdict.label(),
            _ => "",
        }
    }
}

/// Decides one request under `cfg`. See the module doc for the order.
pub async fn decide<T: Trace>(
    cfg: &RuntimeConfig,
    deps: Deps<'_>,
    input: &Input<'_>,
    trace: &mut T,
) -> Decision {
    let req = input.req;
    // A reserved path is answered by the gateway; its refusals take the endpoint's shape.
    let endpoint = endpoint::reserved(cfg, req.raw_path());

    // 0. size bounds
    if let Err(e) = cfg.limits.check(req) {
        let r = refusal::too_large(e);
        return refused_early(trace, endpoint, r, Stage::Request, Detail::None);
    }

    // 1. host -> tenant
    let tenant = match host_tenant(cfg, input, endpoint, trace) {
        Ok(t) => t,
        Err(refusal) => return refusal,
    };

    // 1b. reserved path: one of the gateway's own endpoints (`proxy/endpoints` answers it)
    if let Some(e) = endpoint {
        return at_endpoint(trace, tenant, e, &req.method);
    }

    // 2. tenant status
    if !tenant.is_serving() {
        let r = refusal::tenant_suspended();
        return refused(trace, Some(tenant), r, Stage::Tenant, Detail::None);
    }

    // 3. canonical method and path. Methods are case-sensitive (RFC 9110 9.1): `delete`
    // is not DELETE to a method-scoped rule, but lenient frameworks run it as one.
    if !is_canonical_method(&req.method) {
        let r = refusal::bad_method();
        return refused(trace, Some(tenant), r, Stage::Request, Detail::None);
    }
    let target = origin_form(req.raw_path());
    let canon = match canonicalize(target, cfg.paths) {
        Ok(c) => c,
        Err(e) => {
            let (r, why) = (refusal::bad_path(&e), Detail::Reason(e.reason()));
            return refused(trace, Some(tenant), r, Stage::Path, why);
        }
    };
    trace.step(Step::Path { canonical: &canon });
    let forward_target = (canon.is_rewritten() || target.len() != req.raw_path().len())
        .then(|| canon.request_target().into_owned());

    // 4. route, and the route's body bound against a declared length
    let rule = match_layered(cfg.tenant_routes(&tenant), &cfg.routes, &req.method, &canon);
    let enforce = cfg.enforce(&tenant, rule);
    trace.step(Step::Route {
        method: &req.method,
        rule,
        default_policy: cfg.default_policy,
        enforce,
    });
    let body_limit = cfg
        .limits
        .body_limit(rule.and_then(RouteRule::max_body_bytes));
    if let Err(e) = check_declared_body(req, body_limit) {
        let r = refusal::too_large(e);
        return refused(trace, Some(tenant), r, Stage::Request, Detail::None);
    }
    let asked = asked(cfg, rule);
    trace.step(Step::Access { asked });
    let route = rule.map(|r| RouteRef::of(cfg, &tenant, r));
    let mut done = Decision::forward(route, forward_target, body_limit);
    // In shadow mode an unrouted request still has to authenticate; its pass comes after.
    let (requirement, unrouted) = match asked {
        Asked::Public => return done.with_tenant(tenant),
        Asked::Denied if enforce => {
            let r = refusal::route_denied();
            return done.deny(trace, tenant, r, Stage::Route, true);
        }
        Asked::Denied => (None, true),
        Asked::Authenticated => (None, false),
        Asked::Permission(req) => (Some(req), false),
    };

    // 5. credentials -> verified, unrevoked token of the host's own realm, nothing else
    let identity = match authenticate(cfg, deps, req, &canon, rule, &tenant).await {
        Ok(i) => i,
        Err(e) => return done.unauthenticated(trace, tenant, &e),
    };
    trace.step(Step::Token {
        identity: &identity,
    });
    done.identity = Some(identity.clone());
    if unrouted {
        let r = refusal::route_denied();
        return done.deny(trace, tenant, r, Stage::Route, false);
    }

    // 6 and 7. the route's permission against the caller's effective set
    let Some(requirement) = requirement else {
        done.set_verdict(Verdict::Authenticated);
        return done.with_tenant(tenant);
    };
    let set = permission_set(deps.grants, cfg, &tenant, &identity, trace).await;
    let granted = requirement.authorize(&set);
    trace.step(Step::Permission {
        requirement,
        granted,
    });
    match granted {
        Some(scope) => {
            if let Outcome::Forward(f) = &mut done.outcome {
                f.scope = Some(scope);
            }
            done.set_verdict(Verdict::Allow);
            done.with_tenant(tenant)
        }
        None => {
            let exposed = cfg.expose_required.then(|| requirement.label());
            let r = refusal::forbidden(exposed);
            done.deny(trace, tenant, r, Stage::Permission, enforce)
        }
    }
}

/// Step 1: the one host the request names, and its tenant.
fn host_tenant<T: Trace>(
    cfg: &RuntimeConfig,
    input: &Input<'_>,
    endpoint: Option<Endpoint>,
    trace: &mut T,
) -> Result<Arc<Tenant>, Decision> {
    let host = request_host(input.req, input.is_h2).map_err(|e| {
        let r = refusal::bad_host(e);
        refused_early(trace, endpoint, r, Stage::Host, Detail::None)
    })?;
    let tenant = cfg.tenants.resolve_raw(host).map_err(|e| {
        let r = refusal::unknown_tenant(&e);
        let why = Detail::Reason(e.code());
        refused_early(trace, endpoint, r, Stage::Host, why)
    })?;
    trace.step(Step::Tenant {
        host,
        tenant: &tenant,
    });
    Ok(tenant)
}

/// Step 1b: a reserved path is the endpoint's to answer, for the methods it takes.
fn at_endpoint<T: Trace>(
    trace: &mut T,
    tenant: Arc<Tenant>,
    endpoint: Endpoint,
    method: &http::Method,
) -> Decision {
    trace.step(Step::Endpoint { endpoint });
    let mut d = if endpoint.accepts(method) {
        Decision {
            tenant: Some(tenant),
            route: None,
            identity: None,
            endpoint: None,
            outcome: Outcome::Endpoint(endpoint),
        }
    } else {
        let r = refusal::endpoint_method(endpoint.allow());
        refused(trace, Some(tenant), r, Stage::Endpoint, Detail::None)
    };
    d.endpoint = Some(endpoint);
    d
}

/// What the route (or, unrouted, the default policy) asks of the caller.
fn asked<'r>(cfg: &RuntimeConfig, rule: Option<&'r RouteRule>) -> Asked<'r> {
    match rule.map(RouteRule::access) {
        Some(Access::Public) => Asked::Public,
        Some(Access::Authenticated) => Asked::Authenticated,
        Some(Access::Permission(req)) => Asked::Permission(req),
        None => match cfg.default_policy {
            DefaultPolicy::Deny => Asked::Denied,
            DefaultPolicy::Authenticated => Asked::Authenticated,
            DefaultPolicy::Allow => Asked::Public,
        },
    }
}

/// Step 5: the request's one credential, verified for the tenant's realm and not revoked (the
/// cache-hit path included: a revocation outlives no cached verification).
async fn authenticate(
    cfg: &RuntimeConfig,
    deps: Deps<'_>,
    req: &RequestHeader,
    canon: &crate::authz::CanonicalPath<'_>,
    rule: Option<&RouteRule>,
    tenant: &Tenant,
) -> Result<Arc<Identity>, AuthError> {
    let allow_query = rule.is_some_and(RouteRule::allow_query_token);
    let token = extract_token(
        &req.headers,
        cfg.verify.cookie_name.as_deref(),
        canon.query_str(),
        allow_query,
        cfg.verify.max_token_bytes,
    )?
    .ok_or(AuthError::MissingToken)?;
    let identity = deps
        .verifier
        .verify(&tenant.id, &tenant.realm, token)
        .await?;
    if deps.revocations.is_revoked(&identity.revocation_probe()) {
        return Err(AuthError::TokenRevoked);
    }
    Ok(identity)
}

impl Decision {
    fn with_tenant(mut self, tenant: Arc<Tenant>) -> Self {
        self.tenant = Some(tenant);
        self
    }

    fn set_verdict(&mut self, verdict: Verdict) {
        if let Outcome::Forward(f) = &mut self.outcome {
            f.verdict = verdict;
        }
    }

    /// A refusal that shadow mode (`enforce: false`) turns into a marked pass.
    fn deny<T: Trace>(
        mut self,
        trace: &mut T,
        tenant: Arc<Tenant>,
        answer: Answer,
        stage: Stage,
        enforce: bool,
    ) -> Self {
        if enforce {
            trace.step(Step::Refused {
                stage,
                answer: &answer,
                detail: Detail::None,
            });
            self.outcome = Outcome::Refuse {
                answer: Box::new(answer),
                stage,
            };
        } else {
            trace.step(Step::ShadowPass { would_be: &answer });
            self.set_verdict(Verdict::Shadow {
                would_be: Box::new(answer),
                stage,
            });
        }
        self.with_tenant(tenant)
    }

    /// Step 5 failed: 401 (or 503 when the realm's keys cannot be had), never shadowed: shadow
    /// mode relaxes authorization, not authentication.
    fn unauthenticated<T: Trace>(
        mut self,
        trace: &mut T,
        tenant: Arc<Tenant>,
        e: &AuthError,
    ) -> Self {
        let answer = refusal::unauthenticated(e, &tenant);
        trace.step(Step::Refused {
            stage: Stage::Token,
            answer: &answer,
            detail: Detail::Auth(e),
        });
        self.outcome = Outcome::Refuse {
            answer: Box::new(answer),
            stage: Stage::Token,
        };
        self.with_tenant(tenant)
    }
}

/// Standard and extension methods are tokens; realmgate accepts them only in upper case.
fn is_canonical_method(m: &http::Method) -> bool {
    !m.as_str().bytes().any(|b| b.is_ascii_lowercase())
}

fn refused<T: Trace>(
    trace: &mut T,
    tenant: Option<Arc<Tenant>>,
    answer: Answer,
    stage: Stage,
    detail: Detail<'_>,
) -> Decision {
    trace.step(Step::Refused {
        stage,
        answer: &answer,
        detail,
    });
    Decision::refuse(tenant, answer, stage)
}

/// A refusal before the tenant is known; on a reserved path, in the endpoint's shape.
fn refused_early<T: Trace>(
    trace: &mut T,
    endpoint: Option<Endpoint>,
    answer: Answer,
    stage: Stage,
    detail: Detail<'_>,
) -> Decision {
    let answer = match endpoint {
        Some(_) => refusal::at_endpoint(&answer),
        None => answer,
    };
    let mut d = refused(trace, None, answer, stage, detail);
    d.endpoint = endpoint;
    d
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod size {
    #[test]
    fn a_decision_stays_small() {
        // It is moved into the request context on every request.
        let n = std::mem::size_of::<super::Decision>();
        assert!(n <= 96, "Decision is {n} bytes");
    }
}
