//! The proxy and `realmgate explain` give the same answer: one table of requests, each sent
//! once through the real gateway over a socket and once through explain's entry point, both
//! checked against the expected status and error code. Both paths call `decision::decide`;
//! this test fails if either stops doing so, or changes on its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use common::idp::{claims, now, MockKeycloak, SigningKey};
use common::{json_body, raw_request, status_of, Gateway, Upstream};
use realmgate::app::explain::{explain, Credentials};
use serde_json::{json, Value};

const CONFIG: &str = r#"
listen: {proxy: "{PROXY}", admin: "{ADMIN}"}
upstream: {default: "{UPSTREAM}"}
keycloak:
  base_url: "{BASE}"
  audiences: [qa-platform-backend]
  require_keys_for_ready: false
  permissions_claim: perms
default_policy: {DEFAULT}
logging: {access_log: false}
tenants:
  - {id: acme, realm: tenant-acme, hosts: [acme.test]}
  - {id: frozen, realm: tenant-frozen, hosts: [frozen.test], status: suspended}
  - {id: waiting, realm: tenant-waiting, hosts: [waiting.test], status: pending}
  - {id: shadowco, realm: tenant-shadow, hosts: [shadow.test], enforce: false}
  - id: beta
    realm: tenant-beta
    hosts: [beta.test]
    routes: [{path: "/beta-only", public: true}]
    roles: {viewer: ["users.delete.tenant"]}
host_patterns:
  - {pattern: "{tenant}.dyn.test", realm: "tenant-{tenant}"}
roles:
  admin: ["users.*.tenant", "reports.read.tenant"]
  viewer: ["users.read.own"]
  auditor: ["reports.read.tenant"]
routes:
  - {path: "/public/**", public: true}
  - {path: "/me", authenticated: true}
  - {path: "/users/{id}", methods: [GET], permission: users.read.own}
  - {path: "/users/{id}", methods: [DELETE], permission: users.delete.tenant}
  - {path: "/reports", permissions: [reports.read.tenant, users.delete.tenant], match: any}
  - {path: "/audit", permissions: [reports.read.tenant, users.delete.tenant], match: all}
  - {path: "/soft/**", permission: users.delete.tenant, enforce: false}
  - {path: "/stream", authenticated: true, allow_query_token: true}
"#;

/// One request of the table and what the gateway must answer (200 = forwarded).
struct Case {
    name: &'static str,
    method: &'static str,
    host: &'static str,
    target: String,
    token: Option<String>,
    status: u16,
    code: Option<&'static str>,
    /// The gateway's own endpoint the decision hands the request to: explain must name it,
    /// and the proxy's answer (for an empty body) is `status`/`code`.
    endpoint: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: &'static str,
    host: &'static str,
    target: &str,
    token: Option<&str>,
    expect: (u16, Option<&'static str>),
) -> Case {
    Case {
        name,
        method,
        host,
        target: target.to_string(),
        token: token.map(str::to_string),
        status: expect.0,
        code: expect.1,
        endpoint: None,
    }
}

/// A request the decision hands to one of the gateway's own endpoints.
fn endpoint_case(
    name: &'static str,
    host: &'static str,
    target: &str,
    endpoint: &'static str,
    proxy: (u16, Option<&'static str>),
) -> Case {
    Case {
        endpoint: Some(endpoint),
        ..case(name, "POST", host, target, None, proxy)
    }
}

const LOGOUT: &str = "/.realmgate/backchannel-logout";
const NOT_BEFORE: &str = "/.realmgate/k_push_not_before";

/// The reserved paths: the decision names the endpoint (explain too); its early refusals take
/// the endpoint's OAuth error shape (`error` is `invalid_request` on a 400).
fn endpoint_table() -> Vec<Case> {
    vec![
        endpoint_case(
            "logout, empty POST",
            "acme.test",
            LOGOUT,
            "backchannel_logout",
            (400, Some("invalid_request")),
        ),
        endpoint_case(
            "logout, query ignored",
            "acme.test",
            &format!("{LOGOUT}?x=1"),
            "backchannel_logout",
            (400, Some("invalid_request")),
        ),
        endpoint_case(
            "logout on a suspended tenant's host",
            "frozen.test",
            LOGOUT,
            "backchannel_logout",
            (400, Some("invalid_request")),
        ),
        endpoint_case(
            "not-before push, empty POST",
            "acme.test",
            NOT_BEFORE,
            "not_before_push",
            (400, Some("invalid_request")),
        ),
        case(
            "logout, GET",
            "GET",
            "acme.test",
            LOGOUT,
            None,
            (405, Some("method_not_allowed")),
        ),
        case(
            "logout, unknown host",
            "POST",
            "nobody.test",
            LOGOUT,
            None,
            (404, Some("unknown_host")),
        ),
        case(
            "logout, host not a name",
            "POST",
            "acme_test!",
            LOGOUT,
            None,
            (404, Some("unknown_host")),
        ),
        case(
            "not the reserved path (trailing slash)",
            "POST",
            "acme.test",
            &format!("{LOGOUT}/"),
            None,
            (403, Some("route_denied")),
        ),
    ]
}

const OK: (u16, Option<&str>) = (200, None);

fn unsigned(header: Value, claims: &Value) -> String {
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    format!("{}.{}.", b(&header), b(claims))
}

struct Tokens {
    admin: String,
    viewer: String,
    auditor: String,
    beta_viewer: String,
    shadow_viewer: String,
    dyn_user: String,
    claim_grant: String,
    expired: String,
    not_yet: String,
    future_iat: String,
    wrong_aud: String,
    wrong_typ: String,
    no_sub: String,
    other_realm: String,
    forged: String,
    unknown_kid: String,
    alg_none: String,
    no_kid: String,
    untyped: String,
    /// Over keycloak.max_token_bytes, under limits.max_header_line_bytes.
    large: String,
    /// Over limits.max_header_line_bytes.
    huge: String,
}

fn tokens(kc: &MockKeycloak, key: &SigningKey) -> Tokens {
    let base = kc.base();
    let c = |realm: &str, roles: &[&str]| claims(&base, realm, "u-1", roles);
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut v = c("tenant-acme", &["viewer"]);
        edit(&mut v);
        key.sign(&v)
    };
    let mut grant = c("tenant-acme", &[]);
    grant["perms"] = json!(["users.delete.tenant"]);
    Tokens {
        admin: key.sign(&c("tenant-acme", &["admin"])),
        viewer: key.sign(&c("tenant-acme", &["viewer"])),
        auditor: key.sign(&c("tenant-acme", &["auditor"])),
        beta_viewer: key.sign(&c("tenant-beta", &["viewer"])),
        shadow_viewer: key.sign(&c("tenant-shadow", &["viewer"])),
        dyn_user: key.sign(&c("tenant-dynco", &["viewer"])),
        claim_grant: key.sign(&grant),
        expired: with(&|v| v["exp"] = json!(now() - 3600)),
        not_yet: with(&|v| v["nbf"] = json!(now() + 3600)),
        future_iat: with(&|v| v["iat"] = json!(now() + 3600)),
        wrong_aud: with(&|v| {
            v["aud"] = json!("someone-else");
            v["azp"] = json!("someone-else");
        }),
        wrong_typ: with(&|v| v["typ"] = json!("ID")),
        no_sub: with(&|v| {
            v.as_object_mut().unwrap().remove("sub");
        }),
        other_realm: key.sign(&c("tenant-beta", &["admin"])),
        forged: SigningKey::rsa("acme-1").sign(&c("tenant-acme", &["admin"])),
        unknown_kid: SigningKey::rsa("nobody-knows").sign(&c("tenant-acme", &["admin"])),
        no_kid: key.sign_without_kid(&c("tenant-acme", &["viewer"])),
        untyped: with(&|v| {
            v.as_object_mut().unwrap().remove("typ");
        }),
        alg_none: unsigned(
            json!({"alg": "none", "typ": "JWT", "kid": "acme-1"}),
            &c("tenant-acme", &["admin"]),
        ),
        large: with(&|v| v["pad"] = json!("x".repeat(13 * 1024))),
        huge: with(&|v| v["pad"] = json!("x".repeat(20 * 1024))),
    }
}

/// The table for `default_policy: deny`.
fn deny_table(t: &Tokens) -> Vec<Case> {
    let a = Some(t.admin.as_str());
    let v = Some(t.viewer.as_str());
    vec![
        // host -> tenant
        case(
            "unknown host",
            "GET",
            "nobody.test",
            "/public/x",
            None,
            (404, Some("unknown_host")),
        ),
        case(
            "host with port",
            "GET",
            "acme.test:8443",
            "/public/x",
            None,
            OK,
        ),
        case(
            "host in capitals",
            "GET",
            "ACME.TEST",
            "/public/x",
            None,
            OK,
        ),
        case(
            "host with trailing dot",
            "GET",
            "acme.test.",
            "/public/x",
            None,
            OK,
        ),
        case(
            "host not a name",
            "GET",
            "acme_test!",
            "/public/x",
            None,
            (400, Some("invalid_host")),
        ),
        case(
            "pattern host, known realm",
            "GET",
            "dynco.dyn.test",
            "/me",
            Some(&t.dyn_user),
            OK,
        ),
        case(
            "pattern host, token of a static realm",
            "GET",
            "dynco.dyn.test",
            "/me",
            a,
            (401, Some("issuer_mismatch")),
        ),
        // tenant status
        case(
            "suspended tenant",
            "GET",
            "frozen.test",
            "/public/x",
            None,
            (403, Some("tenant_suspended")),
        ),
        case(
            "suspended before path",
            "GET",
            "frozen.test",
            "/a/../b",
            None,
            (403, Some("tenant_suspended")),
        ),
        case(
            "pending tenant",
            "GET",
            "waiting.test",
            "/me",
            a,
            (403, Some("tenant_suspended")),
        ),
        // canonical path
        case(
            "dot segment",
            "GET",
            "acme.test",
            "/public/../me",
            None,
            (400, Some("invalid_path")),
        ),
        case(
            "encoded slash",
            "GET",
            "acme.test",
            "/public/a%2Fb",
            None,
            (400, Some("invalid_path")),
        ),
        case(
            "backslash",
            "GET",
            "acme.test",
            "/public/a\\b",
            None,
            (400, Some("invalid_path")),
        ),
        case(
            "path parameter",
            "GET",
            "acme.test",
            "/public/a;x=1",
            None,
            (400, Some("invalid_path")),
        ),
        case(
            "encoded dot segment",
            "GET",
            "acme.test",
            "/users/%2e%2e/me",
            v,
            (400, Some("invalid_path")),
        ),
        case(
            "path before token",
            "GET",
            "acme.test",
            "/me/../users/1",
            Some("junk"),
            (400, Some("invalid_path")),
        ),
        case(
            "rewritten escape",
            "GET",
            "acme.test",
            "/public/%7Ex",
            None,
            OK,
        ),
        // routes and default policy
        case(
            "public route",
            "GET",
            "acme.test",
            "/public/x?y=1",
            None,
            OK,
        ),
        case(
            "public route, junk token",
            "GET",
            "acme.test",
            "/public/x",
            Some("junk"),
            OK,
        ),
        case(
            "no route, default deny",
            "GET",
            "acme.test",
            "/nowhere",
            a,
            (403, Some("route_denied")),
        ),
        case(
            "no route, no token",
            "GET",
            "acme.test",
            "/nowhere",
            None,
            (403, Some("route_denied")),
        ),
        case(
            "method not routed",
            "POST",
            "acme.test",
            "/users/7",
            a,
            (403, Some("route_denied")),
        ),
        // authentication
        case(
            "authenticated, no token",
            "GET",
            "acme.test",
            "/me",
            None,
            (401, Some("missing_token")),
        ),
        case("authenticated, valid", "GET", "acme.test", "/me", v, OK),
        case(
            "expired",
            "GET",
            "acme.test",
            "/me",
            Some(&t.expired),
            (401, Some("token_expired")),
        ),
        case(
            "not yet valid",
            "GET",
            "acme.test",
            "/me",
            Some(&t.not_yet),
            (401, Some("token_not_yet_valid")),
        ),
        case(
            "issued in the future",
            "GET",
            "acme.test",
            "/me",
            Some(&t.future_iat),
            (401, Some("token_issued_in_future")),
        ),
        case(
            "wrong audience",
            "GET",
            "acme.test",
            "/me",
            Some(&t.wrong_aud),
            (401, Some("audience_mismatch")),
        ),
        case(
            "wrong type",
            "GET",
            "acme.test",
            "/me",
            Some(&t.wrong_typ),
            (401, Some("wrong_token_type")),
        ),
        case(
            "no subject",
            "GET",
            "acme.test",
            "/me",
            Some(&t.no_sub),
            (401, Some("missing_subject")),
        ),
        case(
            "another realm",
            "GET",
            "acme.test",
            "/me",
            Some(&t.other_realm),
            (401, Some("issuer_mismatch")),
        ),
        case(
            "forged signature",
            "GET",
            "acme.test",
            "/me",
            Some(&t.forged),
            (401, Some("bad_signature")),
        ),
        case(
            "unknown kid",
            "GET",
            "acme.test",
            "/me",
            Some(&t.unknown_kid),
            (401, Some("unknown_key")),
        ),
        case(
            "alg none",
            "GET",
            "acme.test",
            "/me",
            Some(&t.alg_none),
            (401, Some("alg_not_allowed")),
        ),
        case(
            "not a JWT",
            "GET",
            "acme.test",
            "/me",
            Some("abc.def"),
            (401, Some("malformed_token")),
        ),
        case(
            "token too large",
            "GET",
            "acme.test",
            "/me",
            Some(&t.large),
            (401, Some("token_too_large")),
        ),
        case(
            "no kid",
            "GET",
            "acme.test",
            "/me",
            Some(&t.no_kid),
            (401, Some("missing_kid")),
        ),
        case(
            "untyped token",
            "GET",
            "acme.test",
            "/me",
            Some(&t.untyped),
            (401, Some("wrong_token_type")),
        ),
        case(
            "header line too large",
            "GET",
            "acme.test",
            "/me",
            Some(&t.huge),
            (431, Some("headers_too_large")),
        ),
        case(
            "target too long",
            "GET",
            "acme.test",
            &format!("/public/{}", "a".repeat(8192)),
            None,
            (414, Some("uri_too_long")),
        ),
        case(
            "lower-case method",
            "delete",
            "acme.test",
            "/users/7",
            a,
            (400, Some("invalid_method")),
        ),
        case(
            "suspended before the method",
            "Get",
            "frozen.test",
            "/public/x",
            None,
            (403, Some("tenant_suspended")),
        ),
        case(
            "query token not allowed",
            "GET",
            "acme.test",
            &format!("/me?access_token={}", t.viewer),
            None,
            (401, Some("missing_token")),
        ),
        case(
            "query token allowed",
            "GET",
            "acme.test",
            &format!("/stream?access_token={}", t.viewer),
            None,
            OK,
        ),
        // permissions
        case("permission held", "GET", "acme.test", "/users/7", v, OK),
        case(
            "permission missing",
            "DELETE",
            "acme.test",
            "/users/7",
            v,
            (403, Some("forbidden")),
        ),
        case(
            "permission by wildcard",
            "DELETE",
            "acme.test",
            "/users/7",
            a,
            OK,
        ),
        case(
            "permission from the token claim",
            "DELETE",
            "acme.test",
            "/users/7",
            Some(&t.claim_grant),
            OK,
        ),
        case(
            "any-of, one held",
            "GET",
            "acme.test",
            "/reports",
            Some(&t.auditor),
            OK,
        ),
        case(
            "any-of, none held",
            "GET",
            "acme.test",
            "/reports",
            v,
            (403, Some("forbidden")),
        ),
        case(
            "all-of, one held",
            "GET",
            "acme.test",
            "/audit",
            Some(&t.auditor),
            (403, Some("forbidden")),
        ),
        case("all-of, all held", "GET", "acme.test", "/audit", a, OK),
        // tenant rules and role overlays
        case("tenant route", "GET", "beta.test", "/beta-only", None, OK),
        case(
            "tenant route elsewhere",
            "GET",
            "acme.test",
            "/beta-only",
            a,
            (403, Some("route_denied")),
        ),
        case(
            "tenant role overlay",
            "DELETE",
            "beta.test",
            "/users/7",
            Some(&t.beta_viewer),
            OK,
        ),
        // shadow mode
        case(
            "shadow tenant, forbidden passes",
            "DELETE",
            "shadow.test",
            "/users/7",
            Some(&t.shadow_viewer),
            OK,
        ),
        case(
            "shadow tenant, unrouted still authenticates",
            "GET",
            "shadow.test",
            "/nowhere",
            None,
            (401, Some("missing_token")),
        ),
        case(
            "shadow tenant, unrouted passes",
            "GET",
            "shadow.test",
            "/nowhere",
            Some(&t.shadow_viewer),
            OK,
        ),
        case(
            "shadow tenant, token still checked",
            "GET",
            "shadow.test",
            "/me",
            None,
            (401, Some("missing_token")),
        ),
        case(
            "shadow route, forbidden passes",
            "GET",
            "acme.test",
            "/soft/x",
            v,
            OK,
        ),
    ]
}

fn authenticated_table(t: &Tokens) -> Vec<Case> {
    vec![
        case(
            "default authenticated, no token",
            "GET",
            "acme.test",
            "/nowhere",
            None,
            (401, Some("missing_token")),
        ),
        case(
            "default authenticated, valid",
            "GET",
            "acme.test",
            "/nowhere",
            Some(&t.viewer),
            OK,
        ),
        case(
            "default authenticated, expired",
            "GET",
            "acme.test",
            "/nowhere",
            Some(&t.expired),
            (401, Some("token_expired")),
        ),
    ]
}

fn allow_table(t: &Tokens) -> Vec<Case> {
    vec![
        case(
            "default allow, no token",
            "GET",
            "acme.test",
            "/nowhere",
            None,
            OK,
        ),
        case(
            "default allow, junk token",
            "GET",
            "acme.test",
            "/nowhere",
            Some("junk"),
            OK,
        ),
        case(
            "default allow, routes still apply",
            "DELETE",
            "acme.test",
            "/users/7",
            Some(&t.viewer),
            (403, Some("forbidden")),
        ),
    ]
}

/// The gateway's answer over a socket: status and the JSON `error` code (none = forwarded).
async fn via_proxy(gw: &Gateway, c: &Case) -> (u16, Option<String>) {
    let auth = c
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let raw = raw_request(
        gw.proxy,
        format!(
            "{} {} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
            c.method, c.target, c.host
        )
        .as_bytes(),
    )
    .await;
    let status = status_of(&raw);
    let code = json_body(&raw)
        .get("error")
        .and_then(Value::as_str)
        .map(str::to_string);
    (status, code)
}

/// explain's answer for the same request, under the gateway's own config snapshot, and the
/// endpoint it names.
async fn via_explain(gw: &Gateway, c: &Case) -> ((u16, Option<String>), Option<&'static str>) {
    let creds = match &c.token {
        Some(t) => Credentials::Token(t.clone()),
        None => Credentials::None,
    };
    let url = format!("http://{}{}", c.host, c.target);
    let e = explain(gw.shared.config.load_full(), c.method, &url, creds).await;
    let answer = if e.allowed {
        (200, None)
    } else {
        (e.status, e.code.map(str::to_string))
    };
    (answer, e.endpoint)
}

async fn run_table(
    kc: &MockKeycloak,
    up: &Upstream,
    default_policy: &str,
    cases: Vec<Case>,
) -> usize {
    let template = CONFIG
        .replace("{BASE}", &kc.base())
        .replace("{DEFAULT}", default_policy);
    let gw = Gateway::start(&template, up.addr);
    let mut failures = Vec::new();
    for c in &cases {
        let expected = (c.status, c.code.map(str::to_string));
        let proxy = via_proxy(&gw, c).await;
        let (explained, endpoint) = via_explain(&gw, c).await;
        // An endpoint's answer depends on its body: explain names the endpoint instead.
        let explain_ok = match c.endpoint {
            Some(_) => endpoint == c.endpoint,
            None => explained == expected && endpoint.is_none(),
        };
        if proxy != expected || !explain_ok {
            failures.push(format!(
                "{} ({} {} {}): expected {expected:?} (endpoint {:?}), proxy {proxy:?}, explain {explained:?} (endpoint {endpoint:?})",
                c.name, c.method, c.host, c.target, c.endpoint
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

// Multi-threaded: the mock IdP and the upstream must answer while a case is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_explain_decide_alike() {
    let kc = MockKeycloak::start().await;
    let key = SigningKey::rsa("acme-1");
    for realm in [
        "tenant-acme",
        "tenant-frozen",
        "tenant-waiting",
        "tenant-shadow",
        "tenant-beta",
        "tenant-dynco",
    ] {
        kc.set_keys(realm, &[&key]);
    }
    let up = Upstream::start().await;
    let t = tokens(&kc, &key);
    let mut n = run_table(&kc, &up, "deny", deny_table(&t)).await;
    n += run_table(&kc, &up, "deny", endpoint_table()).await;
    n += run_table(&kc, &up, "authenticated", authenticated_table(&t)).await;
    n += run_table(&kc, &up, "allow", allow_table(&t)).await;
    assert!(n >= 40, "{n} cases");
}
