//! The decision: what realmgate does with one request, in one place.
//!
//! [`decide`] is the whole order, top to bottom, each step one call into a pure module:
//!
//! 0. size bounds on the request head (414/431 before anything is parsed further)
//! 1. host -> tenant (exactly one host; unknown hosts refused)
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
//! line: the caller does that from the returned [`Decision`]. It awaits only where a step
//! needs I/O (a JWKS load on a verified-token-cache miss, Redis on a grant-cache miss).

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
use crate::limits::check_declared_body;
use crate::http::request_target::{origin_form, request_host};
use crate::http::respond::Rejection;
use crate::revocation::RevocationList;
use crate::tenant::Tenant;
use crate::verify::{extract_token, AuthError, Identity, Verifier};

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
    pub outcome: Outcome,
}

#[derive(Debug)]
pub enum Outcome {
    /// Send it upstream.
    Forward(Forward),
    /// Answer with this refusal.
    Refuse { rejection: Rejection, stage: Stage },
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
        would_be: Rejection,
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
    fn refuse(tenant: Option<Arc<Tenant>>, rejection: Rejection, stage: Stage) -> Self {
        Self {
            tenant,
            route: None,
            identity: None,
            outcome: Outcome::Refuse { rejection, stage },
        }
    }

    /// The HTTP status the client gets from the gateway (200 stands for "forwarded").
    pub fn status(&self) -> u16 {
        match &self.outcome {
            Outcome::Forward(_) => 200,
            Outcome::Refuse { rejection, .. } => rejection.status,
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

    // 0. size bounds
    if let Err(r) = cfg.limits.check(req) {
        return refused(trace, None, r, Stage::Request, Detail::None);
    }

    // 1. host -> tenant
    let host = match request_host(req, input.is_h2) {
        Ok(h) => h,
        Err(r) => return refused(trace, None, r, Stage::Host, Detail::None),
    };
    let tenant = match cfg.tenants.resolve_raw(host) {
        Ok(t) => t,
        Err(e) => {
            let r = refusal::unknown_tenant(&e);
            return refused(trace, None, r, Stage::Host, Detail::Reason(e.code()));
        }
    };
    trace.step(Step::Tenant {
        host,
        tenant: &tenant,
    });

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
            let r = refusal::bad_path(&e);
            return refused(
                trace,
                Some(tenant),
                r,
                Stage::Path,
                Detail::Reason(e.reason()),
            );
        }
    };
    trace.step(Step::Path { canonical: &canon });
    let forward_target = (canon.is_rewritten() || target.len() != req.raw_path().len())
        .then(|| canon.request_target().into_owned());

    // 4. route
    let rule = match_layered(cfg.tenant_routes(&tenant), &cfg.routes, &req.method, &canon);
    let enforce = cfg.enforce(&tenant, rule);
    trace.step(Step::Route {
        method: &req.method,
        rule,
        default_policy: cfg.default_policy,
        enforce,
    });
    let route = rule.map(|r| RouteRef::of(cfg, &tenant, r));
    let body_limit = cfg
        .limits
        .body_limit(rule.and_then(RouteRule::max_body_bytes));
    if let Err(r) = check_declared_body(req, body_limit) {
        return refused(trace, Some(tenant), r, Stage::Request, Detail::None);
    }
    let asked = match rule.map(RouteRule::access) {
        Some(Access::Public) => Asked::Public,
        Some(Access::Authenticated) => Asked::Authenticated,
        Some(Access::Permission(req)) => Asked::Permission(req),
        None => match cfg.default_policy {
            DefaultPolicy::Deny => Asked::Denied,
            DefaultPolicy::Authenticated => Asked::Authenticated,
            DefaultPolicy::Allow => Asked::Public,
        },
    };
    trace.step(Step::Access { asked });
    let mut done = Decision {
        tenant: None,
        route,
        identity: None,
        outcome: Outcome::Forward(Forward {
            scope: None,
            target: forward_target,
            body_limit,
            verdict: Verdict::Public,
        }),
    };
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

    // 5. credentials -> verified token of the host's own realm, nothing else
    let allow_query = rule.is_some_and(RouteRule::allow_query_token);
    let verified = match extract_token(
        &req.headers,
        cfg.raw.keycloak.token_cookie.as_deref(),
        canon.query_str(),
        allow_query,
        cfg.raw.keycloak.max_token_bytes,
    ) {
        Ok(Some(token)) => deps.verifier.verify(&tenant.id, &tenant.realm, token).await,
        Ok(None) => Err(AuthError::MissingToken),
        Err(e) => Err(e),
    }
    .and_then(|i| {
        // The cache-hit path included: a revocation outlives no cached verification.
        if deps.revocations.is_revoked(&i.revocation_probe()) {
            Err(AuthError::TokenRevoked)
        } else {
            Ok(i)
        }
    });
    let identity = match verified {
        Ok(i) => i,
        Err(e) => {
            let rejection = refusal::unauthenticated(&e, &tenant);
            trace.step(Step::Refused {
                stage: Stage::Token,
                rejection: &rejection,
                detail: Detail::Auth(&e),
            });
            done.outcome = Outcome::Refuse {
                rejection,
                stage: Stage::Token,
            };
            return done.with_tenant(tenant);
        }
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
            let exposed = cfg.raw.authz.expose_required.then(|| requirement.label());
            let r = refusal::forbidden(exposed);
            done.deny(trace, tenant, r, Stage::Permission, enforce)
        }
    }
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
        rejection: Rejection,
        stage: Stage,
        enforce: bool,
    ) -> Self {
        if enforce {
            trace.step(Step::Refused {
                stage,
                rejection: &rejection,
                detail: Detail::None,
            });
            self.outcome = Outcome::Refuse { rejection, stage };
        } else {
            trace.step(Step::ShadowPass {
                would_be: &rejection,
            });
            self.set_verdict(Verdict::Shadow {
                would_be: rejection,
                stage,
            });
        }
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
    rejection: Rejection,
    stage: Stage,
    detail: Detail<'_>,
) -> Decision {
    trace.step(Step::Refused {
        stage,
        rejection: &rejection,
        detail,
    });
    Decision::refuse(tenant, rejection, stage)
}

#[cfg(test)]
mod tests;
