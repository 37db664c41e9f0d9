//! `realmgate explain`: walks one request through every decision the gateway would take and
//! says why, without contacting the upstream. Uses the same modules as the proxy (tenant
//! table, canonicaliser, route tables, verifier, role maps, Redis grants), so its answer is the
//! gateway's answer.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::authz::{canonicalize, match_layered, Access, DefaultPolicy, PermissionSet};
use crate::config::RuntimeConfig;
use crate::grants::{GrantSource, GrantStore};
use crate::jwks::key_store;
use crate::proxy::origin_form;
use crate::verify::Verifier;

/// Where the caller's identity comes from.
pub enum Credentials {
    None,
    /// A real token: verified against the realm's JWKS (fetched now).
    Token(String),
    /// Claims only: the signature is NOT checked; for "what if" questions.
    Claims(Value),
}

/// The outcome and the narrative.
pub struct Explanation {
    pub allowed: bool,
    pub status: u16,
    pub text: String,
}

struct Out {
    text: String,
    step: usize,
}

impl Out {
    fn step(&mut self, title: &str, detail: impl AsRef<str>) {
        self.step += 1;
        let _ = writeln!(self.text, "{}. {title}: {}", self.step, detail.as_ref());
    }
    fn note(&mut self, detail: impl AsRef<str>) {
        let _ = writeln!(self.text, "     {}", detail.as_ref());
    }
    fn finish(mut self, allowed: bool, status: u16, why: impl AsRef<str>) -> Explanation {
        let verdict = if allowed { "ALLOW" } else { "DENY" };
        let _ = writeln!(self.text, "=> {verdict} ({status}): {}", why.as_ref());
        Explanation {
            allowed,
            status,
            text: self.text,
        }
    }
}

/// The caller as the permission step needs it.
struct Caller {
    sub: String,
    roles: Vec<Arc<str>>,
    permissions: Vec<String>,
}

fn roles_from_claims(c: &Value, clients: &[String]) -> Vec<Arc<str>> {
    let mut roles: Vec<Arc<str>> = Vec::new();
    let mut push = |r: &str| {
        if !roles.iter().any(|x| &**x == r) {
            roles.push(Arc::from(r));
        }
    };
    if let Some(list) = c.pointer("/realm_access/roles").and_then(Value::as_array) {
        list.iter().filter_map(Value::as_str).for_each(&mut push);
    }
    for client in clients {
        if let Some(list) = c
            .get("resource_access")
            .and_then(|r| r.get(client))
            .and_then(|r| r.get("roles"))
            .and_then(Value::as_array)
        {
            list.iter().filter_map(Value::as_str).for_each(&mut push);
        }
    }
    roles
}

/// Explains `method url` under `cfg`.
pub async fn explain(
    cfg: Arc<RuntimeConfig>,
    method: &str,
    url: &str,
    creds: Credentials,
) -> Explanation {
    let mut out = Out {
        text: String::new(),
        step: 0,
    };
    let method: http::Method = match method.to_ascii_uppercase().parse() {
        Ok(m) => m,
        Err(_) => return out.finish(false, 400, format!("{method:?} is not an HTTP method")),
    };
    let uri: http::Uri = match url.parse() {
        Ok(u) => u,
        Err(e) => return out.finish(false, 400, format!("{url:?} is not a URL: {e}")),
    };
    let Some(authority) = uri.authority() else {
        return out.finish(false, 400, "the URL names no host (use http://host/path)");
    };

    // 1. host -> tenant
    let tenant = match cfg.tenants.resolve_raw(authority.as_str().as_bytes()) {
        Ok(t) => t,
        Err(e) => {
            out.step("host", format!("{authority} -> no tenant ({})", e.code()));
            let status = if e.code() == "unknown_host" { 404 } else { 400 };
            return out.finish(false, status, e.code());
        }
    };
    out.step(
        "host",
        format!(
            "{authority} -> tenant {} (realm {}, status {}, {})",
            tenant.id,
            tenant.realm,
            tenant.status,
            match tenant.source {
                crate::tenant::TenantSource::Static { index } => format!("tenants[{index}]"),
                crate::tenant::TenantSource::Pattern { index } =>
                    format!("host_patterns[{index}], realm loaded on demand"),
            }
        ),
    );
    if !tenant.is_serving() {
        return out.finish(false, 403, "tenant_suspended: the tenant is not active");
    }

    // 2. path -> route
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let canon = match canonicalize(origin_form(target.as_bytes()), cfg.slashes) {
        Ok(c) => c,
        Err(e) => {
            out.step("path", format!("{target} refused: {}", e.reason()));
            return out.finish(false, 400, e.code());
        }
    };
    let rewritten = if canon.is_rewritten() {
        format!(
            " (canonical form, forwarded as {})",
            String::from_utf8_lossy(&canon.request_target())
        )
    } else {
        String::new()
    };
    out.step("path", format!("{}{rewritten}", canon.path()));
    let rule = match_layered(cfg.tenant_routes(&tenant), &cfg.routes, &method, &canon);
    let enforce = cfg.enforce(&tenant, rule);
    let access = match rule {
        Some(r) => {
            out.step(
                "route",
                format!("{method} matched {} \"{}\"", r.id(), r.pattern()),
            );
            r.access().clone()
        }
        None => {
            out.step(
                "route",
                format!(
                    "{method} matched no rule; default_policy {:?}",
                    cfg.default_policy
                ),
            );
            match cfg.default_policy {
                DefaultPolicy::Deny => {
                    return out.finish(
                        !enforce,
                        if enforce { 403 } else { 200 },
                        "route_denied: no route allows this request",
                    );
                }
                DefaultPolicy::Authenticated => Access::Authenticated,
                DefaultPolicy::Allow => Access::Public,
            }
        }
    };
    if !enforce {
        out.note("shadow mode (enforce: false): a refusal below is logged and counted, the request passes");
    }
    let requirement = match access {
        Access::Public => {
            out.step("access", "public: no token needed, no identity forwarded");
            return out.finish(true, 200, "public route");
        }
        Access::Authenticated => {
            out.step("access", "authenticated: any valid token of this realm");
            None
        }
        Access::Permission(req) => {
            out.step(
                "access",
                format!("requires {} ({:?})", req.label(), req.mode()),
            );
            Some(req)
        }
    };

    // 3. token
    let issuer = format!("{}/realms/{}", cfg.jwks.base_url, tenant.realm);
    let caller = match creds {
        Credentials::None => {
            out.step("token", "none supplied");
            return out.finish(false, 401, "missing_token");
        }
        Credentials::Claims(c) => {
            out.step(
                "token",
                "claims supplied with --claims: the signature is NOT checked",
            );
            let iss = c.get("iss").and_then(Value::as_str).unwrap_or("");
            if iss != issuer {
                out.note(format!("iss {iss:?} != expected {issuer:?}"));
                return out.finish(
                    false,
                    401,
                    "issuer_mismatch: a token from another realm never opens this tenant",
                );
            }
            out.note(format!("iss matches {issuer}"));
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            match c.get("exp").and_then(Value::as_u64) {
                Some(exp) if exp + cfg.raw.keycloak.leeway.as_secs() >= now => {
                    out.note(format!("exp in {}s", exp.saturating_sub(now)))
                }
                Some(_) => return out.finish(false, 401, "token_expired"),
                None => return out.finish(false, 401, "malformed_token: exp is required"),
            }
            let clients = cfg.verify.client_role_clients.clone();
            let permissions = cfg
                .verify
                .permissions_claim
                .as_deref()
                .and_then(|p| c.get(p))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            Caller {
                sub: c
                    .get("sub")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                roles: roles_from_claims(&c, &clients),
                permissions,
            }
        }
        Credentials::Token(token) => {
            let (keys, refresher) = key_store(cfg.jwks.clone(), vec![tenant.realm.to_string()]);
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            let task = tokio::spawn(refresher.run(stop_rx));
            // Give the refresher its first load (bounded) before judging the token.
            let deadline = tokio::time::Instant::now() + cfg.jwks.fetch_timeout;
            while !keys.static_realms_ready() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let verifier = Verifier::new(keys, cfg.verify.clone());
            let result = tokio::time::timeout(
                cfg.jwks.fetch_timeout + Duration::from_secs(2),
                verifier.verify(&tenant.id, &tenant.realm, token.trim()),
            )
            .await;
            let _ = stop_tx.send(true);
            task.abort();
            match result {
                Ok(Ok(id)) => {
                    out.step("token", format!("verified against {issuer} (signature, alg, iss, aud/azp, exp/nbf/iat, typ)"));
                    out.note(format!("sub {}", id.sub()));
                    Caller {
                        sub: id.sub().to_owned(),
                        roles: id.all_roles().to_vec(),
                        permissions: id.permissions.iter().map(|p| p.to_string()).collect(),
                    }
                }
                Ok(Err(e)) => {
                    out.step("token", format!("refused: {}", e.description()));
                    return out.finish(false, e.http_status(), e.code());
                }
                Err(_) => {
                    out.step("token", "the realm's keys could not be fetched in time");
                    return out.finish(false, 503, "realm_unavailable");
                }
            }
        }
    };

    // 4. roles and grants
    let role_map = cfg.roles_for(&tenant);
    let mut lines = Vec::new();
    for r in &caller.roles {
        match role_map.get(r) {
            Some(g) => lines.push(format!("{r} -> {} grant(s) from config", g.len())),
            None => lines.push(format!("{r} -> no config grants")),
        }
    }
    out.step(
        "roles",
        if lines.is_empty() {
            "none".to_string()
        } else {
            lines.join("; ")
        },
    );
    if !caller.permissions.is_empty() {
        out.note(format!(
            "token permissions claim: {}",
            caller.permissions.join(", ")
        ));
    }
    let Some(req) = requirement else {
        return out.finish(true, 200, "authenticated route and the token is valid");
    };
    let store: Arc<GrantStore<PermissionSet>> = match GrantStore::new(cfg.grants.clone()) {
        Ok(s) => s,
        Err(e) => return out.finish(false, 500, format!("redis settings: {e}")),
    };
    let mut redis_note = String::from("redis not configured");
    let set = store
        .effective(&tenant.id, &caller.sub, &caller.roles, |src| {
            let extra: Vec<&str> = match src {
                GrantSource::Redis(raw) => {
                    redis_note = format!(
                        "redis: {} user grant(s) [{}]; role grants: {}",
                        raw.user.len(),
                        raw.user.join(", "),
                        raw.roles
                            .iter()
                            .map(|(r, g)| format!("{r}=[{}]", g.join(", ")))
                            .collect::<Vec<_>>()
                            .join(" ")
                    );
                    raw.user
                        .iter()
                        .chain(raw.roles.iter().flat_map(|(_, g)| g.iter()))
                        .map(String::as_str)
                        .collect()
                }
                GrantSource::Unavailable => {
                    redis_note =
                        "redis unavailable: Redis-only grants are not counted (fail closed)".into();
                    Vec::new()
                }
                GrantSource::Disabled => Vec::new(),
            };
            role_map
                .compile(
                    &cfg.catalog,
                    caller.roles.iter().map(|r| &**r),
                    caller.permissions.iter().map(String::as_str).chain(extra),
                )
                .0
        })
        .await;
    out.step("grants", redis_note);

    // 5. decision
    match req.authorize(&set) {
        Some(scope) => {
            let scope = cfg.catalog.scopes().name(scope);
            out.step(
                "permission",
                format!(
                    "{} granted; widest scope held: {scope} (forwarded as X-Auth-Scope)",
                    req.label()
                ),
            );
            out.finish(
                true,
                200,
                format!(
                    "allowed; upstream receives X-Tenant-ID {} X-User-ID {}",
                    tenant.id, caller.sub
                ),
            )
        }
        None => {
            out.step(
                "permission",
                format!(
                    "{} not granted by any role, claim or Redis grant",
                    req.label()
                ),
            );
            if enforce {
                out.finish(false, 403, format!("forbidden: requires {}", req.label()))
            } else {
                out.finish(
                    true,
                    200,
                    format!("shadow mode: would be 403 (requires {})", req.label()),
                )
            }
        }
    }
}
