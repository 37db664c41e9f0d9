//! `realmgate demo`: the gateway, a throwaway identity provider and an echo upstream in one
//! process, with no external services.
//!
//! The demo IdP publishes discovery and JWKS documents on Keycloak's paths for two realms,
//! with RSA keys generated at start and never written anywhere. It is only ever added to the
//! server by [`run`]; `realmgate run` has no way to start it, and its keys die with the process.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::services::listening::Service;
use serde_json::{json, Value};

use crate::app::server::{build_server, ProcessOptions};
use crate::config::{self, ProcessEnv};
use crate::http::respond::{self, Answer, Cache};

use crate::jwks::LocalSigner;

/// Serves `/realms/{realm}/.well-known/openid-configuration` and `/protocol/openid-connect/certs`.
struct DemoIdp {
    base: String,
    jwks: HashMap<String, Value>,
}

#[async_trait]
impl ServeHttp for DemoIdp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        let found = path.strip_prefix("/realms/").and_then(|rest| {
            let (realm, tail) = rest.split_once('/')?;
            let jwks = self.jwks.get(realm)?;
            let issuer = format!("{}/realms/{realm}", self.base);
            match tail {
                ".well-known/openid-configuration" => Some(json!({
                    "issuer": issuer,
                    "jwks_uri": format!("{issuer}/protocol/openid-connect/certs"),
                })),
                "protocol/openid-connect/certs" => Some(jwks.clone()),
                _ => None,
            }
        });
        match found {
            Some(v) => json_response(200, &v),
            None => json_response(404, &json!({"error": "Realm does not exist"})),
        }
    }
}

/// Answers every request with what it received, so the forwarded identity is visible.
struct Echo;

#[async_trait]
impl ServeHttp for Echo {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let mut headers: Vec<(String, String)> = req
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        headers.sort();
        let v = json!({
            "upstream": "realmgate demo echo",
            "method": req.method.as_str(),
            "path": req.uri.to_string(),
            "headers": headers.into_iter().map(|(k, v)| (k, Value::String(v))).collect::<serde_json::Map<String, Value>>(),
        });
        json_response(200, &v)
    }
}

/// A pretty-printed JSON document (read by people trying the demo), through the one writer.
fn json_response(status: u16, v: &Value) -> Response<Vec<u8>> {
    let body = serde_json::to_vec_pretty(v).unwrap_or_default();
    let answer = Answer::document(status, "application/json", body).with_cache(Cache::Unset);
    respond::to_admin(&answer)
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// The embedded demo configuration.
pub fn demo_config(
    proxy: SocketAddr,
    admin: SocketAddr,
    idp: SocketAddr,
    echo: SocketAddr,
) -> String {
    format!(
        r#"
listen: {{proxy: "{proxy}", admin: "{admin}"}}
server: {{threads: 2, watch_config: false, grace_period: 0s, graceful_shutdown_timeout: 2s}}
upstream: {{default: "{echo}"}}
keycloak:
  base_url: "http://{idp}"
  audiences: [demo-backend]
tenants:
  - {{id: acme, realm: tenant-acme, hosts: [acme.localhost]}}
  - {{id: globex, realm: tenant-globex, hosts: [globex.localhost]}}
roles:
  tenant_admin: ["users.*.tenant", "calls.*.tenant"]
  viewer: ["users.read.own", "calls.read.own"]
  user: ["users.read.own", "calls.*.own"]
routes:
  - {{path: "/health", public: true}}
  - {{path: "/api/v1/me", authenticated: true}}
  - {{path: "/api/v1/users", methods: [GET], permission: users.read.own}}
  - {{path: "/api/v1/users/{{id}}", methods: [GET], permission: users.read.own}}
  - {{path: "/api/v1/users/{{id}}", methods: [DELETE], permission: users.delete.tenant}}
  - {{path: "/api/v1/calls/**", permission: calls.read.own}}
default_policy: deny
logging: {{access_log: true}}
"#
    )
}

/// Demo options (ports are picked free when absent).
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    pub proxy: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// The demo users: (label, realm, sub, roles).
const USERS: &[(&str, &str, &str, &[&str])] = &[
    ("ACME_ADMIN", "tenant-acme", "alice", &["tenant_admin"]),
    ("ACME_VIEWER", "tenant-acme", "bob", &["viewer"]),
    ("GLOBEX_USER", "tenant-globex", "carol", &["user"]),
];

/// Builds everything and prints the walkthrough; returns the server ready to run.
pub fn prepare(opts: &DemoOptions) -> Result<(pingora::server::Server, String), String> {
    let addr = |p: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], p)) };
    let proxy = match opts.proxy {
        Some(a) => a,
        None => addr(free_port()?),
    };
    let admin = match opts.admin {
        Some(a) => a,
        None => addr(free_port()?),
    };
    let idp = addr(free_port()?);
    let echo = addr(free_port()?);
    let base = format!("http://{idp}");

    let mut keys = HashMap::new();
    let mut jwks = HashMap::new();
    for realm in ["tenant-acme", "tenant-globex"] {
        let key = LocalSigner::generate_rsa(&format!("{realm}-demo-key"))?;
        jwks.insert(realm.to_string(), json!({"keys": [key.jwk.clone()]}));
        keys.insert(realm, key);
    }

    let yaml = demo_config(proxy, admin, idp, echo);
    let cfg = config::from_str(&yaml, &ProcessEnv).map_err(|e| e.to_string())?;
    let (mut server, _shared) =
        build_server(cfg, &ProcessOptions::default()).map_err(|e| e.to_string())?;

    let mut idp_svc = Service::new(
        "demo idp".into(),
        HttpServer::new_app(DemoIdp {
            base: base.clone(),
            jwks,
        }),
    );
    idp_svc.threads = Some(1);
    idp_svc.add_tcp(&idp.to_string());
    server.add_service(idp_svc);
    let mut echo_svc = Service::new("demo echo upstream".into(), HttpServer::new_app(Echo));
    echo_svc.threads = Some(1);
    echo_svc.add_tcp(&echo.to_string());
    server.add_service(echo_svc);

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut tokens = Vec::new();
    for (label, realm, sub, roles) in USERS {
        let claims = json!({
            "iss": format!("{base}/realms/{realm}"),
            "sub": sub,
            "aud": ["demo-backend", "account"],
            "azp": "demo-backend",
            "typ": "Bearer",
            "iat": now,
            "exp": now + 3600,
            "preferred_username": sub,
            "email": format!("{sub}@{}.example", realm.trim_start_matches("tenant-")),
            "realm_access": {"roles": roles},
        });
        let key = keys.get(realm).ok_or("demo key missing")?;
        tokens.push((label, key.sign(&claims)?));
    }

    let p = proxy;
    let mut out = String::new();
    out.push_str(&format!(
        "realmgate demo\n  proxy  http://{proxy}\n  admin  http://{admin}  (/healthz /readyz /metrics)\n  demo IdP (Keycloak paths) {base}  upstream echo http://{echo}\n\nTokens (valid 1 h):\n"
    ));
    for (label, token) in &tokens {
        out.push_str(&format!("export {label}='{token}'\n"));
    }
    out.push_str(&format!(
        r#"
# 1. allow: acme's admin deletes a user (users.delete.tenant via tenant_admin)   expect 200
curl -s -o /dev/null -w '%{{http_code}}\n' -X DELETE -H 'Host: acme.localhost' -H "Authorization: Bearer $ACME_ADMIN" http://{p}/api/v1/users/7
# 2. forbid: acme's viewer may read but not delete                               expect 403
curl -s -w '\n%{{http_code}}\n' -X DELETE -H 'Host: acme.localhost' -H "Authorization: Bearer $ACME_VIEWER" http://{p}/api/v1/users/7
# 3. cross-tenant: a globex token on acme's host is refused (issuer_mismatch)     expect 401
curl -s -w '\n%{{http_code}}\n' -H 'Host: acme.localhost' -H "Authorization: Bearer $GLOBEX_USER" http://{p}/api/v1/users
# 4. no token on a guarded route                                                  expect 401
curl -s -w '\n%{{http_code}}\n' -H 'Host: acme.localhost' http://{p}/api/v1/users
# 5. forwarded headers: spoofed X-Tenant-ID is replaced, identity comes from the token   expect 200
curl -s -w '\n%{{http_code}}\n' -H 'Host: acme.localhost' -H 'X-Tenant-ID: globex' -H 'X-User-Roles: super_admin' -H "Authorization: Bearer $ACME_VIEWER" http://{p}/api/v1/me
"#
    ));
    Ok((server, out))
}
