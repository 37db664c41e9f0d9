//! `realmgate explain`: the gateway's decision for one request, step by step, without
//! contacting the upstream.
//!
//! It builds the request as an HTTP/1.1 client would send it (origin-form target, `Host`
//! header from the URL's authority, the raw bytes untouched), calls the proxy's own
//! [`decide`] and prints the [`Trace`] it records. So its answer is the gateway's answer by
//! construction; only the key store and grant store are its own (fetched and read now).

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use pingora::http::RequestHeader;
use serde_json::Value;

use crate::authz::{DefaultPolicy, PermissionSet};
use crate::config::RuntimeConfig;
use crate::decision::{
    decide, Asked, Decision, Deps, Detail, Input, Outcome, Stage, Step, Trace, Verdict,
};
use crate::grants::{GrantSource, GrantStore};
use crate::http::request_target::{absolute_form_authority, origin_form, request_host};
use crate::jwks::key_store;
use crate::tenant::TenantSource;
use crate::verify::Verifier;

/// Where the caller's identity comes from.
pub enum Credentials {
    None,
    /// A real token: verified against the realm's JWKS (fetched now).
    Token(String),
    /// Claims only: signed here with a throwaway key that only this run trusts, so every
    /// check but the signature is the gateway's own.
    Claims(Value),
}

/// The outcome and the narrative.
pub struct Explanation {
    /// Forwarded upstream (shadow passes included).
    pub allowed: bool,
    /// The gateway's own endpoint that answers it (its answer depends on the body).
    pub endpoint: Option<&'static str>,
    /// The gateway's status; 200 stands for "forwarded".
    pub status: u16,
    /// The refusal's (or the shadow pass's would-be) stable error code.
    pub code: Option<&'static str>,
    pub text: String,
}

/// Explains `method url` under `cfg`.
pub async fn explain(
    cfg: Arc<RuntimeConfig>,
    method: &str,
    url: &str,
    creds: Credentials,
) -> Explanation {
    let mut out = Narrative::new(&cfg);
    let token = match creds {
        Credentials::None => None,
        Credentials::Token(t) => Some(t.trim().to_owned()),
        Credentials::Claims(claims) => {
            let signed = crate::jwks::LocalSigner::generate_rsa("realmgate-explain")
                .and_then(|k| Ok((k.sign(&claims)?, k)));
            match signed {
                Ok((token, key)) => {
                    out.claims_key = Some(key);
                    Some(token)
                }
                Err(e) => return out.usage(format!("cannot sign the claims: {e}")),
            }
        }
    };
    // Credentials can also come in the query or a cookie, so the keys are fetched whenever
    // they are not the throwaway one.
    let fetch = out.claims_key.is_none();
    let req = match build_request(method, url, token.as_deref()) {
        Ok(r) => r,
        Err(why) => return out.usage(why),
    };

    // The keys this run trusts: the tenant's realm as the gateway would fetch it, or for
    // `--claims` one throwaway key. Which realm is only a question of what to fetch; the
    // decision below resolves the host again, as the proxy does.
    let realm = request_host(&req, false)
        .ok()
        .and_then(|h| cfg.tenants.resolve_raw(h).ok())
        .map(|t| t.realm.to_string());
    let preload = realm.iter().filter(|_| fetch).cloned().collect();
    let (keys, refresher) = key_store(cfg.jwks.clone(), preload);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let task = fetch.then(|| tokio::spawn(refresher.run(stop_rx)));
    if fetch {
        // Give the refresher its first load (bounded) before judging the token.
        let deadline = tokio::time::Instant::now() + cfg.jwks.fetch_timeout;
        while !keys.static_realms_ready() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    if let (Some(key), Some(realm)) = (&out.claims_key, &realm) {
        let jwks = serde_json::json!({ "keys": [key.jwk.clone()] }).to_string();
        if let Err(e) = keys.install_jwks(realm, jwks.as_bytes()) {
            out.line(format!("the throwaway key was refused: {e}"));
        }
    }
    let verifier = Verifier::new(keys, cfg.verify.clone());
    let grants: Arc<GrantStore<PermissionSet>> = match GrantStore::new(cfg.grants.clone()) {
        Ok(s) => s,
        Err(e) => return out.usage(format!("redis settings: {e}")),
    };
    // A fresh process knows no revocations (explain answers from the config, not a replica).
    let revocations = crate::revocation::RevocationList::new(1);
    let deps = Deps {
        verifier: &verifier,
        grants: &grants,
        revocations: &revocations,
    };
    let input = Input {
        req: &req,
        is_h2: false,
        peer: None,
    };
    let decided = tokio::time::timeout(
        cfg.jwks.fetch_timeout + Duration::from_secs(2),
        decide(&cfg, deps, &input, &mut out),
    )
    .await;
    let _ = stop_tx.send(true);
    if let Some(t) = task {
        t.abort();
    }
    match decided {
        Ok(d) => out.finish(&d),
        Err(_) => {
            out.line("the realm's keys could not be fetched in time");
            out.end(false, 503, Some("realm_unavailable"), "realm_unavailable")
        }
    }
}

/// The request a client would send for `url`: `Host` is the URL's authority as written,
/// the target its origin-form rest, byte for byte.
fn build_request(method: &str, url: &str, token: Option<&str>) -> Result<RequestHeader, String> {
    let raw = url.as_bytes();
    let Some(authority) = absolute_form_authority(raw) else {
        return Err(format!("{url:?} names no host (use http://host/path)"));
    };
    let target = origin_form(raw);
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("{method:?} is not an HTTP method"))?;
    let mut req = RequestHeader::build(method, target, None)
        .map_err(|_| format!("{url:?} is not a request target a client could send"))?;
    req.append_header(http::header::HOST, authority)
        .map_err(|_| format!("{url:?} has a host no client could send"))?;
    if let Some(t) = token {
        req.append_header(http::header::AUTHORIZATION, format!("Bearer {t}"))
            .map_err(|_| "the token is not a valid header value".to_string())?;
    }
    Ok(req)
}

/// Records the trace as numbered lines.
struct Narrative<'c> {
    cfg: &'c RuntimeConfig,
    text: String,
    step: usize,
    claims_key: Option<crate::jwks::LocalSigner>,
    /// The tenant the host resolved to (for its role map).
    tenant: Option<crate::tenant::Tenant>,
}

impl<'c> Narrative<'c> {
    fn new(cfg: &'c RuntimeConfig) -> Self {
        Self {
            cfg,
            text: String::new(),
            step: 0,
            claims_key: None,
            tenant: None,
        }
    }

    fn numbered(&mut self, title: &str, detail: impl AsRef<str>) {
        self.step += 1;
        let _ = writeln!(self.text, "{}. {title}: {}", self.step, detail.as_ref());
    }

    fn line(&mut self, detail: impl AsRef<str>) {
        let _ = writeln!(self.text, "     {}", detail.as_ref());
    }

    fn usage(self, why: impl AsRef<str>) -> Explanation {
        self.end(false, 400, None, why)
    }

    fn end(
        mut self,
        allowed: bool,
        status: u16,
        code: Option<&'static str>,
        why: impl AsRef<str>,
    ) -> Explanation {
        let verdict = if allowed { "ALLOW" } else { "DENY" };
        let _ = writeln!(self.text, "=> {verdict} ({status}): {}", why.as_ref());
        Explanation {
            allowed,
            endpoint: None,
            status,
            code,
            text: self.text,
        }
    }

    fn finish(self, d: &Decision) -> Explanation {
        if let Outcome::Endpoint(e) = d.outcome {
            // Not forwarded and not refused: the gateway answers it, depending on the body.
            let mut text = self.text;
            let _ = writeln!(
                text,
                "=> ENDPOINT: answered by the gateway itself ({}), never forwarded",
                e.name()
            );
            return Explanation {
                allowed: false,
                endpoint: Some(e.name()),
                status: 200,
                code: None,
                text,
            };
        }
        let (Some(tenant), identity) = (&d.tenant, &d.identity) else {
            return match &d.outcome {
                Outcome::Refuse { answer, .. } => {
                    let why = answer.code;
                    self.end(false, answer.status, Some(why), why)
                }
                Outcome::Forward(_) | Outcome::Endpoint(_) => {
                    self.end(true, 200, None, "forwarded")
                }
            };
        };
        match &d.outcome {
            Outcome::Endpoint(_) => self.end(false, 200, None, "endpoint"),
            Outcome::Refuse { answer, stage } => {
                let why = match (stage, answer.required()) {
                    (Stage::Permission, _) => {
                        let label = d
                            .route
                            .and_then(|r| r.rule(self.cfg, tenant))
                            .and_then(|r| match r.access() {
                                crate::authz::Access::Permission(p) => Some(p.label()),
                                _ => None,
                            })
                            .unwrap_or("");
                        format!("{}: requires {label}", answer.code)
                    }
                    _ => format!("{}: {}", answer.code, answer.message()),
                };
                self.end(false, answer.status, Some(answer.code), why)
            }
            Outcome::Forward(f) => {
                let who = identity
                    .as_ref()
                    .map_or(String::new(), |i| format!(" X-User-ID {}", i.sub()));
                let why = match &f.verdict {
                    Verdict::Public => "public route".to_string(),
                    Verdict::Authenticated => {
                        "authenticated route and the token is valid".to_string()
                    }
                    Verdict::Allow => {
                        format!("allowed; upstream receives X-Tenant-ID {}{who}", tenant.id)
                    }
                    Verdict::Shadow { would_be, .. } => {
                        format!(
                            "shadow mode: would be {} ({})",
                            would_be.status, would_be.code
                        )
                    }
                };
                let code = match &f.verdict {
                    Verdict::Shadow { would_be, .. } => Some(would_be.code),
                    _ => None,
                };
                self.end(true, 200, code, why)
            }
        }
    }
}

impl Trace for Narrative<'_> {
    fn step(&mut self, step: Step<'_>) {
        match step {
            Step::Tenant { host, tenant } => self.tenant(host, tenant),
            Step::Path { canonical } => {
                let rewritten = if canonical.is_rewritten() {
                    format!(
                        " (canonical form, forwarded as {})",
                        String::from_utf8_lossy(&canonical.request_target())
                    )
                } else {
                    String::new()
                };
                self.numbered("path", format!("{}{rewritten}", canonical.path()));
            }
            Step::Route {
                method,
                rule,
                default_policy,
                enforce,
            } => self.route(method, rule, default_policy, enforce),
            Step::Access { asked } => self.numbered("access", access(asked)),
            Step::Token { identity } => self.token(identity),
            Step::Grants { source } => self.numbered("grants", grants(source)),
            Step::Permission {
                requirement,
                granted,
            } => {
                let text = match granted {
                    Some(scope) => format!(
                        "{} granted; widest scope held: {} (forwarded as X-Auth-Scope)",
                        requirement.label(),
                        self.cfg.catalog.scopes().name(scope)
                    ),
                    None => format!(
                        "{} not granted by any role, claim or Redis grant",
                        requirement.label()
                    ),
                };
                self.numbered("permission", text);
            }
            Step::Endpoint { endpoint } => self.numbered(
                "endpoint",
                format!(
                    "reserved path: the gateway's own {} endpoint answers it, never the upstream ({})",
                    endpoint.name(),
                    endpoint.describe()
                ),
            ),
            Step::Refused {
                stage,
                answer,
                detail,
            } => {
                let why = match detail {
                    Detail::None => answer.message().to_string(),
                    Detail::Reason(r) => format!("{} ({r})", answer.message()),
                    Detail::Auth(e) => format!("refused: {}", e.description()),
                };
                let text = format!("{why} -> {} {}", answer.status, answer.code);
                self.numbered(stage_title(stage), text);
            }
            Step::ShadowPass { would_be } => self.line(format!(
                "shadow mode: {} {} is logged and counted, the request passes",
                would_be.status, would_be.code
            )),
        }
    }
}

impl Narrative<'_> {
    fn tenant(&mut self, host: &[u8], tenant: &crate::tenant::Tenant) {
        self.tenant = Some(tenant.clone());
        let source = match tenant.source {
            TenantSource::Static { index } => format!("tenants[{index}]"),
            TenantSource::Pattern { index } => {
                format!("host_patterns[{index}], realm loaded on demand")
            }
        };
        self.numbered(
            "host",
            format!(
                "{} -> tenant {} (realm {}, status {}, {source})",
                String::from_utf8_lossy(host),
                tenant.id,
                tenant.realm,
                tenant.status
            ),
        );
    }

    fn route(
        &mut self,
        method: &http::Method,
        rule: Option<&crate::authz::RouteRule>,
        default_policy: DefaultPolicy,
        enforce: bool,
    ) {
        let text = match rule {
            Some(r) => format!("{method} matched {} \"{}\"", r.id(), r.pattern()),
            None => format!(
                "{method} matched no rule; default_policy {}",
                match default_policy {
                    DefaultPolicy::Deny => "deny",
                    DefaultPolicy::Authenticated => "authenticated",
                    DefaultPolicy::Allow => "allow",
                }
            ),
        };
        self.numbered("route", text);
        if !enforce {
            self.line("shadow mode (enforce: false): a refusal below is logged and counted, the request passes");
        }
    }

    fn token(&mut self, identity: &crate::verify::Identity) {
        let how = match (&self.claims_key, &self.tenant) {
            (Some(_), _) => {
                "claims supplied with --claims: every check but the signature applied".to_string()
            }
            (None, Some(t)) => format!(
                "verified against realm {}'s keys (signature, alg, iss, aud, exp/nbf/iat, typ)",
                t.realm
            ),
            (None, None) => "verified".to_string(),
        };
        self.numbered("token", how);
        self.line(format!("sub {}", identity.sub()));
        let roles = self.cfg_roles(identity.all_roles());
        self.numbered("roles", roles);
        if !identity.permissions.is_empty() {
            let p: Vec<&str> = identity.permissions.iter().map(|p| &**p).collect();
            self.line(format!("token permissions claim: {}", p.join(", ")));
        }
    }
}

fn access(asked: Asked<'_>) -> String {
    match asked {
        Asked::Public => "public: no token needed, no identity forwarded".into(),
        Asked::Authenticated => "authenticated: any valid token of this realm".into(),
        Asked::Permission(req) => format!("requires {} ({:?})", req.label(), req.mode()),
        Asked::Denied => "no rule allows it (default_policy deny)".into(),
    }
}

fn grants(source: &GrantSource) -> String {
    match source {
        GrantSource::Redis(raw) => format!(
            "redis: {} user grant(s) [{}]; role grants: {}",
            raw.user.len(),
            raw.user.join(", "),
            raw.roles
                .iter()
                .map(|(r, g)| format!("{r}=[{}]", g.join(", ")))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        GrantSource::Unavailable => {
            "redis unavailable: Redis-only grants are not counted (fail closed)".into()
        }
        GrantSource::Disabled => "redis not configured".into(),
    }
}

fn stage_title(stage: Stage) -> &'static str {
    match stage {
        Stage::Request => "request",
        Stage::Host => "host",
        Stage::Endpoint => "endpoint",
        Stage::Tenant => "tenant",
        Stage::Path => "path",
        Stage::Route => "route",
        Stage::Token => "token",
        Stage::Permission => "permission",
    }
}

impl Narrative<'_> {
    fn cfg_roles(&self, roles: &[Arc<str>]) -> String {
        if roles.is_empty() {
            return "none".into();
        }
        let map = match &self.tenant {
            Some(t) => self.cfg.roles_for(t),
            None => &self.cfg.roles,
        };
        roles
            .iter()
            .map(|r| match map.get(r) {
                Some(g) => format!("{r} -> {} grant(s) from config", g.len()),
                None => format!("{r} -> no config grants"),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}
