//! The `realmgate` binary: a thin CLI over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use pingora::server::RunArgs;
use realmgate::app::explain::{explain, Credentials};
use realmgate::app::server::{build_server, ProcessOptions};
use realmgate::config::raw::LoggingSection;
use realmgate::config::{self, ProcessEnv};
use realmgate::telemetry::{LogSettings, Writer};

/// jemalloc rather than glibc malloc: it hands freed pages back to the OS (the config parse of
/// a 10 000-tenant file peaks at ~45 MiB of transient YAML values that glibc kept resident),
/// and its size classes pack the small objects of the token cache tighter. Measured in
/// BENCHMARKS.md: 100 000 cached tokens with 10 000 tenants, 101 MiB with glibc, 90 with
/// jemalloc.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit code for an invalid configuration (BSD `EX_CONFIG`).
const EX_CONFIG: u8 = 78;
/// Exit code for bad command-line input (BSD `EX_USAGE`).
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "realmgate",
    version,
    about = "Multi-tenant authentication gateway on Pingora"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the gateway.
    Run {
        #[arg(short, long, default_value = "/etc/realmgate/realmgate.yaml")]
        config: PathBuf,
        /// Take over the listening sockets of a running realmgate (zero-downtime upgrade).
        #[arg(short, long)]
        upgrade: bool,
        /// Detach from the terminal.
        #[arg(short, long)]
        daemon: bool,
    },
    /// Validate a config file and print a summary; exits non-zero on error.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Walk one request through every decision and say why; never contacts the upstream.
    /// Exit code: 0 allowed, 1 refused.
    Explain {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(short, long, default_value = "GET")]
        method: String,
        /// e.g. http://acme.qa.example.com/api/v1/users/7
        #[arg(short, long)]
        url: String,
        /// A file holding a real access token (verified against the realm's JWKS).
        #[arg(long, conflicts_with = "claims")]
        token: Option<PathBuf>,
        /// Token claims as JSON, for "what if" questions (the signature is not checked).
        #[arg(long)]
        claims: Option<String>,
    },
    /// Cut a user or a session off now, on every replica: `POST /revoke` on the admin
    /// listener. Exit code: 0 revoked, 1 refused or unreachable.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["sub", "sid"])))]
    Revoke {
        /// The admin write listener (`admin.writes.listen`), e.g. http://127.0.0.1:9091
        #[arg(long)]
        admin: String,
        /// A file holding the admin bearer secret; without it, the secret is read from the
        /// REALMGATE_ADMIN_TOKEN environment variable.
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
        /// The tenant id (its realm is revoked in).
        #[arg(long)]
        tenant: String,
        /// Every session of this subject (`sub` claim).
        #[arg(long)]
        sub: Option<String>,
        /// This one session (`sid` claim).
        #[arg(long)]
        sid: Option<String>,
    },
    /// Run a self-contained demo: gateway, demo identity provider and echo upstream.
    Demo {
        /// Proxy listen address (default: a free port on 127.0.0.1).
        #[arg(long)]
        proxy: Option<std::net::SocketAddr>,
        /// Admin listen address (default: a free port on 127.0.0.1).
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
}

/// Loads and validates a config file, printing every problem on failure.
fn load_config(path: &std::path::Path) -> Result<config::RuntimeConfig, ExitCode> {
    config::load(path, &ProcessEnv).map_err(|e| {
        eprintln!("{}: {e}", path.display());
        ExitCode::from(EX_CONFIG)
    })
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check(&config),
        Command::Explain {
            config,
            method,
            url,
            token,
            claims,
        } => explain_request(&config, &method, &url, token, claims),
        Command::Revoke {
            admin,
            token_file,
            tenant,
            sub,
            sid,
        } => revoke(&admin, token_file.as_deref(), &tenant, sub, sid),
        Command::Demo { proxy, admin } => demo(proxy, admin),
        Command::Run {
            config,
            upgrade,
            daemon,
        } => run(&config, upgrade, daemon),
    }
}

/// `realmgate check`.
fn check(config: &std::path::Path) -> ExitCode {
    match load_config(config) {
        Ok(cfg) => {
            println!("{}", cfg.summary());
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// `realmgate explain`.
fn explain_request(
    config: &std::path::Path,
    method: &str,
    url: &str,
    token: Option<PathBuf>,
    claims: Option<String>,
) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let _log = realmgate::telemetry::init(
        &LogSettings::from(&LoggingSection {
            level: "warn".into(),
            ..Default::default()
        }),
        Writer::Direct,
    );
    let creds = match (token, claims) {
        (Some(path), _) => match std::fs::read_to_string(&path) {
            Ok(t) => Credentials::Token(t),
            Err(e) => {
                eprintln!("cannot read {}: {e}", path.display());
                return ExitCode::from(EX_USAGE);
            }
        },
        (None, Some(json)) => match serde_json::from_str(&json) {
            Ok(v) => Credentials::Claims(v),
            Err(e) => {
                eprintln!("--claims is not JSON: {e}");
                return ExitCode::from(EX_USAGE);
            }
        },
        (None, None) => Credentials::None,
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = rt.block_on(explain(std::sync::Arc::new(cfg), method, url, creds));
    print!("{}", result.text);
    if result.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `realmgate demo`.
fn demo(proxy: Option<std::net::SocketAddr>, admin: Option<std::net::SocketAddr>) -> ExitCode {
    let log = realmgate::telemetry::init(
        &LogSettings::from(&LoggingSection::default()),
        Writer::Buffered,
    );
    match realmgate::app::demo::prepare(&realmgate::app::demo::DemoOptions { proxy, admin }) {
        Ok((server, walkthrough)) => {
            println!("{walkthrough}");
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            server.run(RunArgs::default());
            drop(log);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot start the demo: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `realmgate run`.
fn run(config: &std::path::Path, upgrade: bool, daemon: bool) -> ExitCode {
    let cfg = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // A writer thread would not survive daemonizing (fork), so daemons log directly.
    let log = realmgate::telemetry::init(
        &cfg.logging,
        if daemon {
            Writer::Direct
        } else {
            Writer::Buffered
        },
    );
    tracing::info!(
        config = %config.display(),
        proxy = %cfg.proxy_addr,
        admin = %cfg.admin_addr,
        "starting realmgate {}",
        env!("CARGO_PKG_VERSION")
    );
    match build_server(cfg, &ProcessOptions { upgrade, daemon }) {
        Ok((server, _shared)) => {
            // `run` returns after a graceful shutdown (`run_forever` would exit
            // without flushing the log queue).
            server.run(RunArgs::default());
            drop(log);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot start: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("cannot start a runtime: {e}");
            ExitCode::FAILURE
        })
}

/// `realmgate revoke`: one `POST /revoke` to the admin listener.
fn revoke(
    admin: &str,
    token_file: Option<&std::path::Path>,
    tenant: &str,
    sub: Option<String>,
    sid: Option<String>,
) -> ExitCode {
    let url = format!("{}/revoke", admin.trim_end_matches('/'));
    let token = match token_file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("{}: {e}", p.display())),
        None => std::env::var("REALMGATE_ADMIN_TOKEN")
            .map_err(|_| "give --token-file or set REALMGATE_ADMIN_TOKEN".to_string()),
    };
    let token = match token {
        Ok(t) => t.trim().to_string(),
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(EX_USAGE);
        }
    };
    let mut body = serde_json::json!({ "tenant": tenant });
    if let Some(sub) = sub {
        body["sub"] = sub.into();
    }
    if let Some(sid) = sid {
        body["sid"] = sid.into();
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let sent = rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let r = client
            .post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        Ok::<_, reqwest::Error>((status, r.text().await?))
    });
    match sent {
        Ok((status, text)) => {
            println!("{text}");
            if status.is_success() {
                ExitCode::SUCCESS
            } else {
                eprintln!("{url}: {status}");
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("{url}: {e}");
            ExitCode::from(1)
        }
    }
}
