//! The FastAPI + RLS example (`examples/fastapi`) end to end: the real uvicorn app on a fresh
//! database of the real PostgreSQL (127.0.0.1:5432, trust auth), connecting as the non-owner
//! role `qa_app`, behind the real gateway running the example's own `realmgate.yaml`, with
//! tokens from a Keycloak stand-in. Proves that tenant isolation holds end to end: forged
//! identity headers never reach the app, a token from another realm never reaches it, `own`
//! scope narrows to the caller's rows, and the database itself refuses to show or write rows
//! without the tenant set.
//!
//! Needs `python3 -m pip install -r examples/fastapi/requirements.txt` and `psql`; it fails
//! (never skips) without them. `PYTHON`, `PGHOST` and `PGPORT` override the defaults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::idp::{claims, MockKeycloak, SigningKey};
use common::*;
use serde_json::{json, Value};

const APP_ROLE: &str = "qa_app";
const ACME: &str = "acme.qa.example.com";
const GLOBEX: &str = "globex.qa.example.com";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/fastapi")
}

fn pg_host() -> String {
    std::env::var("PGHOST").unwrap_or_else(|_| "127.0.0.1".into())
}

fn pg_port() -> String {
    std::env::var("PGPORT").unwrap_or_else(|_| "5432".into())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs psql; `Err` carries stderr. `-X` ignores any ~/.psqlrc, `-At` prints bare values.
fn psql(db: &str, user: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", &pg_host(), "-p", &pg_port(), "-U", user, "-d", db])
        .args(args)
        .env_remove("PGPASSWORD")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e} (install postgresql-client)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn sql(db: &str, user: &str, query: &str) -> Result<String, String> {
    psql(db, user, &["-c", query])
}

/// A fresh database, dropped (with its connections) when the test ends, also on panic.
struct Db {
    name: String,
    /// A cluster-wide role this test created, dropped after the database.
    role: Option<String>,
}

impl Db {
    fn create() -> Self {
        sql("postgres", "postgres", "SELECT 1").unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable as user postgres on {}:{}: {e}",
                pg_host(),
                pg_port()
            )
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("rg_fastapi_rls_{}_{nanos}", std::process::id());
        sql("postgres", "postgres", &format!("CREATE DATABASE {name}")).unwrap();
        let db = Self { name, role: None };
        let dir = example_dir();
        for file in ["schema.sql", "seed.sql"] {
            let path = dir.join(file);
            psql(&db.name, "postgres", &["-f", path.to_str().unwrap()])
                .unwrap_or_else(|e| panic!("{file}: {e}"));
        }
        db
    }

    fn url(&self, user: &str) -> String {
        format!(
            "postgresql://{user}@{}:{}/{}",
            pg_host(),
            pg_port(),
            self.name
        )
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = sql(
            "postgres",
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
        if let Some(role) = &self.role {
            let _ = sql(
                "postgres",
                "postgres",
                &format!("DROP ROLE IF EXISTS {role}"),
            );
        }
    }
}

/// Fails (never skips) when the example's Python dependencies are missing.
fn require_python_deps() {
    let check = Command::new(python())
        .args(["-c", "import fastapi, uvicorn, psycopg, psycopg_pool"])
        .output();
    match check {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import fastapi/uvicorn/psycopg/psycopg_pool:\n{}\n\
             install them with: python3 -m pip install -r examples/fastapi/requirements.txt",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "cannot run {}: {e}; install Python 3 and then \
             python3 -m pip install -r examples/fastapi/requirements.txt",
            python()
        ),
    }
}

/// The uvicorn process, killed when the test ends, also on panic. Its output goes to a log
/// file that failures print.
struct App {
    child: Child,
    addr: std::net::SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl App {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn start(db: &Db) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("uvicorn.log");
        let out = std::fs::File::create(&log).unwrap();
        let port = free_port();
        let child = Command::new(python())
            .args(["-m", "uvicorn", "app:app", "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .current_dir(example_dir())
            .env("DATABASE_URL", db.url(APP_ROLE))
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn uvicorn");
        let mut app = Self {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = app.child.try_wait().unwrap() {
                panic!("uvicorn exited with {status}:\n{}", app.log());
            }
            if let Ok(r) = client()
                .get(format!("http://{}/health", app.addr))
                .send()
                .await
            {
                if r.status() == 200 {
                    return app;
                }
            }
            assert!(
                Instant::now() < deadline,
                "uvicorn never became healthy:\n{}",
                app.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- uvicorn log ---\n{}", self.log());
        }
    }
}

/// The gateway on the example's own config file, pointed at uvicorn and the mock Keycloak.
fn start_gateway(kc: &MockKeycloak, app: &App) -> Gateway {
    let text = std::fs::read_to_string(example_dir().join("realmgate.yaml")).unwrap();
    let env: HashMap<String, String> = [
        ("REALMGATE_PROXY_ADDR", format!("127.0.0.1:{}", free_port())),
        ("REALMGATE_ADMIN_ADDR", format!("127.0.0.1:{}", free_port())),
        ("APP_UPSTREAM", app.addr.to_string()),
        ("KEYCLOAK_URL", kc.base()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let cfg = realmgate::config::from_str(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    Gateway::start_config(cfg)
}

async fn wait_ready(gw: &Gateway) {
    for _ in 0..400 {
        if let Ok(r) = client().get(gw.admin_url("/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway never became ready");
}

struct Resp {
    status: u16,
    www_authenticate: Option<String>,
    body: Value,
}

async fn send(
    gw: &Gateway,
    method: reqwest::Method,
    host: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
    body: Option<Value>,
) -> Resp {
    let mut req = client().request(method, gw.url(path)).header("host", host);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let www_authenticate = r
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Resp {
        status,
        www_authenticate,
        body,
    }
}

async fn get(
    gw: &Gateway,
    host: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Resp {
    send(gw, reqwest::Method::GET, host, path, token, extra, None).await
}

/// `(tenant_id, owner_id, subject)` of the listed calls.
fn rows(body: &Value) -> Vec<(String, String, String)> {
    body["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("no calls in {body}"))
        .iter()
        .map(|c| {
            (
                c["tenant_id"].as_str().unwrap().to_string(),
                c["owner_id"].as_str().unwrap().to_string(),
                c["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn row(tenant: &str, owner: &str, subject: &str) -> (String, String, String) {
    (tenant.into(), owner.into(), subject.into())
}

/// Client headers that try to speak for realmgate, in both spellings an ASGI server may map.
const FORGED: &[(&str, &str)] = &[
    ("X-Tenant-ID", "globex"),
    ("X_Tenant_ID", "globex"),
    ("X-User-ID", "gina"),
    ("X-Auth-Scope", "tenant"),
    ("X-User-Roles", "tenant_admin"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastapi_rls_example_isolates_tenants_end_to_end() {
    // Declared in this order so they drop in reverse: gateway, app, then the database.
    require_python_deps();
    let mut db = Db::create();
    let app = App::start(&db).await;
    let kc = MockKeycloak::start().await;
    let acme_key = SigningKey::rsa("acme-1");
    let globex_key = SigningKey::rsa("globex-1");
    kc.set_keys("tenant-acme", &[&acme_key]);
    kc.set_keys("tenant-globex", &[&globex_key]);
    let gw = start_gateway(&kc, &app);
    wait_ready(&gw).await;
    let base = kc.base();

    let acme_admin = acme_key.sign(&claims(&base, "tenant-acme", "carol", &["tenant_admin"]));
    let acme_viewer = acme_key.sign(&claims(&base, "tenant-acme", "alice", &["viewer"]));
    let globex_admin = globex_key.sign(&claims(&base, "tenant-globex", "gina", &["tenant_admin"]));

    let acme_rows = vec![
        row("acme", "alice", "acme: alice onboarding call"),
        row("acme", "alice", "acme: alice renewal call"),
        row("acme", "bob", "acme: bob support call"),
    ];
    let globex_rows = vec![
        row("globex", "alice", "globex: alice escalation call"),
        row("globex", "gina", "globex: gina sales call"),
    ];

    // The public health route reaches the app without a token.
    let r = get(&gw, ACME, "/health", None, &[]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["database"], "up");

    // The app itself never falls back to a default tenant (reached directly, bypassing the
    // gateway, as nothing but the gateway should).
    let direct = client()
        .get(format!("http://{}/api/v1/calls", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 401);
    assert_eq!(
        direct.json::<Value>().await.unwrap()["error"],
        "missing_tenant"
    );

    // An acme tenant_admin sees exactly acme's rows, although the client claims globex.
    let r = get(&gw, ACME, "/api/v1/calls", Some(&acme_admin), FORGED).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["tenant"], "acme");
    assert_eq!(r.body["scope"], "tenant");
    assert_eq!(rows(&r.body), acme_rows);

    // What the app was told: one verified identity, no forged header in any spelling.
    let r = get(&gw, ACME, "/api/v1/me", Some(&acme_admin), FORGED).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["tenant"], "acme");
    assert_eq!(r.body["realm"], "tenant-acme");
    assert_eq!(r.body["user"], "carol");
    let roles: Vec<&str> = r.body["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(roles.contains(&"tenant_admin"), "{roles:?}");
    let seen = r.body["identity_headers"].as_array().unwrap();
    let tenant_headers: Vec<&Value> = seen
        .iter()
        .filter(|h| {
            h[0].as_str()
                .unwrap()
                .to_ascii_lowercase()
                .replace('_', "-")
                == "x-tenant-id"
        })
        .collect();
    assert_eq!(
        tenant_headers,
        vec![&json!(["x-tenant-id", "acme"])],
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|h| h[1] == "globex" || h[1] == "gina"),
        "a forged identity header reached the app: {seen:?}"
    );

    // A valid globex token works on globex's host (so the refusal below is about the realm)...
    let r = get(
        &gw,
        GLOBEX,
        "/api/v1/calls?probe=globex-ok",
        Some(&globex_admin),
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(rows(&r.body), globex_rows);
    // ...and is refused on acme's host before the app is involved: the answer is the
    // gateway's (WWW-Authenticate, request id), and uvicorn never logged the request.
    let r = get(
        &gw,
        ACME,
        "/api/v1/calls?probe=cross-realm",
        Some(&globex_admin),
        &[("X-Tenant-ID", "globex")],
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(r.www_authenticate.is_some(), "{}", r.body);
    assert!(r.body["request_id"].is_string(), "{}", r.body);
    let log = app.log();
    assert!(
        log.contains("probe=globex-ok"),
        "uvicorn logs requests:\n{log}"
    );
    assert!(
        !log.contains("probe=cross-realm"),
        "reached the app:\n{log}"
    );

    // An acme viewer gets scope `own`: only their acme rows, not globex's alice row.
    let r = get(&gw, ACME, "/api/v1/calls", Some(&acme_viewer), FORGED).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["scope"], "own");
    assert_eq!(rows(&r.body), acme_rows[..2].to_vec());
    // ...and may not write (calls.write.own is not a viewer grant): refused by the gateway.
    let r = send(
        &gw,
        reqwest::Method::POST,
        ACME,
        "/api/v1/calls",
        Some(&acme_viewer),
        &[],
        Some(json!({"subject": "viewer write"})),
    )
    .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // A tenant_admin write lands in acme, owned by the verified user, whatever the client says.
    let r = send(
        &gw,
        reqwest::Method::POST,
        ACME,
        "/api/v1/calls",
        Some(&acme_admin),
        FORGED,
        Some(json!({"subject": "admin write"})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["call"]["tenant_id"], "acme");
    assert_eq!(r.body["call"]["owner_id"], "carol");
    // The body cannot name a tenant either.
    let r = send(
        &gw,
        reqwest::Method::POST,
        ACME,
        "/api/v1/calls",
        Some(&acme_admin),
        &[],
        Some(json!({"subject": "x", "tenant_id": "globex"})),
    )
    .await;
    assert_eq!(r.status, 422, "{}", r.body);
    // As the superuser (exempt from RLS): the write is acme's, globex is untouched.
    assert_eq!(
        sql(
            &db.name,
            "postgres",
            "SELECT tenant_id || '/' || owner_id FROM calls WHERE subject = 'admin write'"
        )
        .unwrap(),
        "acme/carol"
    );
    assert_eq!(
        sql(
            &db.name,
            "postgres",
            "SELECT count(*) FROM calls WHERE tenant_id = 'globex'"
        )
        .unwrap(),
        "2"
    );

    // The database enforces the tenant on its own, for the app's role: nothing without the
    // setting, only the tenant's rows with it, and no writes into another tenant.
    assert_eq!(
        sql(&db.name, "postgres", "SELECT count(*) FROM calls").unwrap(),
        "6"
    );
    assert_eq!(
        sql(&db.name, APP_ROLE, "SELECT count(*) FROM calls").unwrap(),
        "0"
    );
    let with_tenant = sql(
        &db.name,
        APP_ROLE,
        "BEGIN; SELECT set_config('app.current_tenant', 'acme', true); \
         SELECT count(*) FROM calls; COMMIT;",
    )
    .unwrap();
    assert_eq!(with_tenant.lines().last(), Some("4"), "{with_tenant}");
    let err = sql(
        &db.name,
        APP_ROLE,
        "BEGIN; SELECT set_config('app.current_tenant', 'acme', true); \
         INSERT INTO calls (tenant_id, owner_id, subject) VALUES ('globex', 'x', 'y'); COMMIT;",
    )
    .unwrap_err();
    assert!(err.contains("row-level security"), "{err}");
    let err = sql(&db.name, APP_ROLE, "DELETE FROM calls").unwrap_err();
    assert!(err.contains("permission denied"), "{err}");

    // FORCE: even a (non-superuser) owner of the table sees nothing without the setting.
    // The schema was applied by the superuser, who is exempt, so hand the table to a
    // throwaway owner role and look through its eyes.
    let owner = format!("{}_owner", db.name);
    sql(
        "postgres",
        "postgres",
        &format!("CREATE ROLE {owner} NOLOGIN"),
    )
    .unwrap();
    db.role = Some(owner.clone());
    sql(
        &db.name,
        "postgres",
        &format!("ALTER TABLE calls OWNER TO {owner}"),
    )
    .unwrap();
    let as_owner = sql(
        &db.name,
        "postgres",
        &format!("SET ROLE {owner}; SELECT count(*) FROM calls;"),
    )
    .unwrap();
    assert_eq!(as_owner.lines().last(), Some("0"), "{as_owner}");
}
