//! Audit lines and decision metrics for a decided request. One call per request, after
//! [`crate::decision::decide`]: the decision itself stays free of logging.

use crate::authz::Access;
use crate::decision::{Outcome, Stage, Verdict};
use crate::metrics::metrics;
use crate::telemetry::log_line;

use super::RequestCtx;

/// Records what the decision in `ctx` says about the request.
pub(super) fn record(ctx: &RequestCtx) {
    let Some(d) = &ctx.decision else { return };
    match &d.outcome {
        Outcome::Refuse {
            answer,
            stage: Stage::Token,
        } => token_refused(ctx, answer.code),
        Outcome::Refuse {
            stage: Stage::Permission,
            ..
        } => decision(ctx, "deny"),
        Outcome::Refuse { .. } | Outcome::Endpoint(_) => {}
        Outcome::Forward(f) => match &f.verdict {
            Verdict::Allow => decision(ctx, "allow"),
            Verdict::Shadow { would_be, stage } => {
                if *stage == Stage::Permission {
                    decision(ctx, "shadow_deny");
                }
                shadow_pass(ctx, would_be.code);
            }
            Verdict::Public | Verdict::Authenticated => {}
        },
    }
}

fn token_refused(ctx: &RequestCtx, reason: &str) {
    let Some(tenant) = ctx.tenant() else { return };
    log_line!(
        INFO,
        "realmgate::audit",
        "token refused",
        request_id = ctx.request_id_str().unwrap_or(""),
        tenant = &*tenant.id,
        realm = &*tenant.realm,
        route = ctx.route_id(),
        decision = "unauthenticated",
        reason = reason,
    );
}

fn decision(ctx: &RequestCtx, decision: &str) {
    let (Some(tenant), Some(identity)) = (ctx.tenant(), ctx.identity()) else {
        return;
    };
    let required = match ctx.rule().map(|r| r.access()) {
        Some(Access::Permission(req)) => req.label(),
        _ => "",
    };
    log_line!(
        INFO,
        "realmgate::audit",
        "authorization decision",
        request_id = ctx.request_id_str().unwrap_or(""),
        tenant = &*tenant.id,
        realm = &*tenant.realm,
        sub = identity.sub(),
        route = ctx.route_id(),
        required = required,
        decision = decision,
    );
    metrics()
        .decisions_total
        .with_label_values(&[metrics().tenants.label(&tenant.id), decision])
        .inc();
}

fn shadow_pass(ctx: &RequestCtx, would_be: &str) {
    metrics()
        .shadow_decisions_total
        .with_label_values(&["deny"])
        .inc();
    tracing::warn!(
        target: "realmgate::audit",
        request_id = ctx.request_id_str().unwrap_or(""),
        tenant = ctx.tenant().map(|t| &*t.id).unwrap_or(""),
        route = ctx.route_id(),
        would_be = would_be,
        "shadow mode: request passed that enforcement would refuse"
    );
}
