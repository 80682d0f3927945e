//! The `hexmirror` command line: parses arguments, loads the configuration, sets up logging and
//! calls into the library. A bad configuration exits with status 64 and one line per mistake.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "hexmirror", version, about = "A verifying, caching mirror for the Hex package repository")]
struct Cli {
    /// Configuration file (TOML). Environment variables HEXMIRROR_* override it.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mirror.
    Serve {
        /// Never contact an upstream; serve only what the store holds.
        #[arg(long)]
        offline: bool,
    },
}

const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match hexmirror::config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("hexmirror: invalid configuration:\n{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for repo in config.repos.values() {
        let upstreams: Vec<String> = repo.upstreams.iter().map(hexmirror::upstream::base_url).collect();
        tracing::info!(
            repo = %repo.name,
            upstreams = %upstreams.join(", "),
            repository = %repo.repository,
            trusted = repo.trusted,
            own_credentials = repo.auth_key.is_some(),
            "repository configured"
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("hexmirror: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { offline } => {
            config.offline |= offline;
            runtime.block_on(async move {
                match hexmirror::start(config, shutdown_signal()).await {
                    Ok(running) => {
                        let _ = running.done.await;
                        tracing::info!("stopped");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("hexmirror: {e}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("SIGINT received"),
        _ = term => tracing::info!("SIGTERM received"),
    }
}
