//! What each step of [`super::decide`] decided, for whoever wants the narrative.
//!
//! The proxy passes [`NoTrace`]: every `step` call is an empty inlined function and the
//! [`Step`] values it would have received are never built (they only borrow what the step
//! already holds). `realmgate explain` passes a recorder that prints them.

use http::Method;

use crate::authz::{CanonicalPath, DefaultPolicy, Requirement, RouteRule, ScopeId};
use crate::grants::GrantSource;
use crate::http::respond::Answer;

use super::Endpoint;
use crate::tenant::Tenant;
use crate::verify::{AuthError, Identity};

/// One step's result, borrowed from the decision in progress.
#[derive(Debug)]
pub enum Step<'a> {
    /// The host the request names resolved to this tenant.
    Tenant { host: &'a [u8], tenant: &'a Tenant },
    /// The path that is matched, authorised and forwarded.
    Path { canonical: &'a CanonicalPath<'a> },
    /// The request names one of the gateway's own endpoints: it answers it itself.
    Endpoint { endpoint: Endpoint },
    /// The rule that matched, or none (then `default_policy` applies). `enforce: false` is
    /// shadow mode.
    Route {
        method: &'a Method,
        rule: Option<&'a RouteRule>,
        default_policy: DefaultPolicy,
        enforce: bool,
    },
    /// What the route (or the default policy) asks of the caller.
    Access { asked: Asked<'a> },
    /// The token was verified for the tenant's realm.
    Token { identity: &'a Identity },
    /// What Redis contributed to a permission-set compile (only on a grant-cache miss).
    Grants { source: &'a GrantSource },
    /// The route's requirement against the caller's set: the widest scope held, or none.
    Permission {
        requirement: &'a Requirement,
        granted: Option<ScopeId>,
    },
    /// The decision ends in a refusal at this step.
    Refused {
        stage: Stage,
        answer: &'a Answer,
        detail: Detail<'a>,
    },
    /// Shadow mode let through what enforcement would refuse.
    ShadowPass { would_be: &'a Answer },
}

/// What a request must show: the matched rule's access, or the default policy's.
#[derive(Debug, Clone, Copy)]
pub enum Asked<'a> {
    Public,
    Authenticated,
    Permission(&'a Requirement),
    /// No rule matched and `default_policy` is `deny`.
    Denied,
}

/// Where in the order a refusal happened (audit, logs, explain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The request's shape: size bounds, method spelling.
    Request,
    Host,
    /// A reserved path (method not answered there).
    Endpoint,
    Tenant,
    Path,
    Route,
    Token,
    Permission,
}

/// The cause behind a refusal, for the narrative.
#[derive(Debug, Clone, Copy)]
pub enum Detail<'a> {
    None,
    /// A fixed reason from a pure module (path canonicaliser, host parser).
    Reason(&'static str),
    Auth(&'a AuthError),
}

/// Receives every step. Implementations must not change the decision.
pub trait Trace {
    fn step(&mut self, step: Step<'_>);
}

/// The proxy's trace: records nothing, costs nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    #[inline(always)]
    fn step(&mut self, _step: Step<'_>) {}
}

/// Keeps every step's debug form (tests).
#[derive(Default)]
pub struct Recorded(pub Vec<String>);

impl Trace for Recorded {
    fn step(&mut self, step: Step<'_>) {
        self.0.push(format!("{step:?}"));
    }
}
