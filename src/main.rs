//! The `realmgate` binary: a thin CLI over the library.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use realmgate::config::{self, ProcessEnv};
use realmgate::server::{build_server, ProcessOptions};

/// Exit code for an invalid configuration (BSD `EX_CONFIG`).
const EX_CONFIG: u8 = 78;

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config, &ProcessEnv) {
            Ok(cfg) => {
                println!("{}", cfg.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::from(EX_CONFIG)
            }
        },
        Command::Run {
            config,
            upgrade,
            daemon,
        } => {
            let cfg = match config::load(&config, &ProcessEnv) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}: {e}", config.display());
                    return ExitCode::from(EX_CONFIG);
                }
            };
            realmgate::telemetry::init(&cfg.raw.logging);
            tracing::info!(
                config = %config.display(),
                proxy = %cfg.proxy_addr,
                admin = %cfg.admin_addr,
                "starting realmgate {}",
                env!("CARGO_PKG_VERSION")
            );
            match build_server(cfg, &ProcessOptions { upgrade, daemon }) {
                Ok((server, _shared)) => server.run_forever(),
                Err(e) => {
                    eprintln!("cannot start: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
