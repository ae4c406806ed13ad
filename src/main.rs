//! The `remora` command: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

use remora::config::{Config, ConfigHandle};
use remora::runtime;

#[derive(Parser)]
#[command(
    name = "remora",
    version,
    about = "A thread-per-core service-mesh sidecar proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (with no --config: Istio-style passthrough on 15001/15006).
    Run {
        /// TOML config file (see config/remora.toml).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Number of cores (executors) to use; default: every CPU this process may use.
        #[arg(long)]
        cores: Option<usize>,
        /// Log level or RUST_LOG-style filter (overrides RUST_LOG and the config).
        #[arg(long)]
        log_level: Option<String>,
    },
    /// Check a config file: prints OK, or every error with line and column.
    Validate {
        /// The file to check.
        file: PathBuf,
    },
    /// Install Istio's capture rules in this network namespace (istio-iptables flags).
    Iptables(remora::intercept::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { file } => match Config::load(&file) {
            Ok(_) => {
                println!("OK");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Iptables(args) => remora::intercept::main(args),
        Command::Run {
            config,
            cores,
            log_level,
        } => run(config, cores, log_level),
    }
}

fn run(path: Option<PathBuf>, cores: Option<usize>, log_level: Option<String>) -> ExitCode {
    let config = match &path {
        Some(p) => match Config::load(p) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(1);
            }
        },
        None => Config::builtin(),
    };
    let filter = log_level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new(&config.log_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    // Block the stop signals before any executor thread exists, so they inherit
    // the mask and only this thread ever receives them (in sigwait below).
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("cannot block signals: {e}");
        return ExitCode::from(1);
    }

    let handle = Arc::new(ConfigHandle::new(config));
    let proxy = match runtime::start(handle, cores) {
        Ok(p) => p,
        Err(e) => {
            error!("{e}");
            eprintln!("remora: {e}");
            return ExitCode::from(1);
        }
    };
    info!(
        startup_ms = format!("{:.2}", proxy.startup.as_secs_f64() * 1000.0),
        source = path
            .as_ref()
            .map_or("built-in default".to_string(), |p| p.display().to_string()),
        "ready"
    );
    let sig = signals.wait();
    info!(signal = ?sig.ok(), "stopping: no new connections; draining open ones");
    proxy.shutdown();
    let totals = proxy.join().counters;
    info!(%totals, "stopped");
    ExitCode::SUCCESS
}
