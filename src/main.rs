//! The `remora` command: a thin shell over the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use tracing::{info, warn};
use tracing_subscriber::prelude::*;
use tracing_subscriber::{fmt, reload, EnvFilter};

use remora::admin::{self, AdminState, Role};
use remora::config::{Config, ConfigHandle};
use remora::reload::{Reloader, Trigger};
use remora::runtime;
use remora::tls::TlsStore;
use remora::upstream::control::UpstreamControl;

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
    // Before any thread exists: see the function's doc (start-up time).
    remora::runtime::register_membarrier_early();
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

/// What the main thread waits for once the shards run.
enum Event {
    Stop(&'static str),
    Reload(Trigger),
}

fn run(path: Option<PathBuf>, cores: Option<usize>, log_level: Option<String>) -> ExitCode {
    let exec_started = Instant::now();
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
    let initial_filter = log_level
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| config.log_level.clone());
    let (filter, filter_handle) = reload::Layer::new(EnvFilter::new(&initial_filter));
    // Colour only on a terminal: a file or a pipe (a pod's log) gets plain
    // text. NO_COLOR (https://no-color.org) turns it off on a terminal too.
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt::layer().with_writer(std::io::stderr).with_ansi(ansi))
        .init();

    // Block the signals before any other thread exists, so they all inherit the
    // mask and only the signal thread below ever receives them.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        eprintln!("cannot block signals: {e}");
        return ExitCode::from(1);
    }

    let admin_config = config.admin.clone();
    let upstream = match UpstreamControl::start(&config) {
        Ok(u) => Arc::new(u),
        Err(e) => {
            eprintln!("remora: cannot start discovery and health checking: {e}");
            return ExitCode::from(1);
        }
    };
    // The workload certificate (mTLS): loaded and checked before any core
    // starts, then watched for rotation by its own thread.
    let tls = match &config.tls.cert_dir {
        Some(dir) => match TlsStore::start(dir, &config.tls.trust_domain) {
            Ok(store) => {
                if let Some(c) = store.current() {
                    info!(identity = %c.identity().spiffe_id(), serial = c.identity().serial(), "workload certificate loaded");
                }
                Some(Arc::new(store))
            }
            Err(e) => {
                eprintln!("remora: [tls] cert_dir: {e}");
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    let tls_handle = tls.as_ref().map(|t| t.handle()).unwrap_or_default();
    let handle = Arc::new(ConfigHandle::new(config));
    let proxy = match runtime::start(handle.clone(), upstream.view(), tls_handle, cores) {
        Ok(p) => Arc::new(p),
        Err(e) => {
            // Printed, not logged: a fatal error must show even with
            // --log-level off, and once.
            eprintln!("remora: {e}");
            return ExitCode::from(1);
        }
    };

    let (events, inbox) = mpsc::channel::<Event>();
    {
        let events = events.clone();
        std::thread::Builder::new()
            .name("remora-signals".into())
            .spawn(move || loop {
                match signals.wait() {
                    Ok(Signal::SIGHUP) => {
                        let _ = events.send(Event::Reload(Trigger::Signal));
                    }
                    Ok(_) => {
                        let _ = events.send(Event::Stop("signal"));
                        return;
                    }
                    Err(_) => return,
                }
            })
            .expect("spawn signal thread");
    }
    let reloader = Arc::new(Reloader::new(
        path.clone(),
        handle.clone(),
        proxy.clone(),
        upstream.clone(),
        cores,
    ));
    let mut admin_state = None;
    if let Some(admin) = &admin_config {
        let quit = events.clone();
        let state = Arc::new(AdminState {
            handle: handle.clone(),
            proxy: proxy.clone(),
            upstream: upstream.clone(),
            tls: tls.clone(),
            reloader: reloader.clone(),
            set_log_level: Box::new(move |level: &str| {
                let f = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
                filter_handle.reload(f).map_err(|e| e.to_string())
            }),
            log_level: Mutex::new(initial_filter.clone()),
            started: exec_started,
            startup: exec_started.elapsed(),
            draining: AtomicBool::new(false),
            quit: Box::new(move || {
                let _ = quit.send(Event::Stop("admin /quitquitquit"));
            }),
        });
        let endpoints = [
            (Some(admin.address), Role::Admin),
            (admin.prometheus_address, Role::Prometheus),
            (admin.readiness_address, Role::Readiness),
        ];
        for (addr, role) in endpoints {
            let Some(addr) = addr else { continue };
            match admin::serve(addr, role, state.clone()) {
                Ok(bound) => info!(%bound, ?role, "admin endpoint listening"),
                Err(e) => {
                    eprintln!("remora: {e}");
                    proxy.shutdown();
                    proxy.join();
                    return ExitCode::from(1);
                }
            }
        }
        if let (true, Some(p)) = (admin.watch_config, &path) {
            let (tx, rx) = mpsc::channel();
            match remora::reload::watch(p, tx) {
                Ok(()) => {
                    let events = events.clone();
                    std::thread::spawn(move || {
                        while rx.recv().is_ok() {
                            if events.send(Event::Reload(Trigger::FileChange)).is_err() {
                                return;
                            }
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "cannot watch the config file; reload with SIGHUP or POST /reload")
                }
            }
        }
        admin_state = Some(state);
    }
    info!(
        startup_ms = format!("{:.2}", exec_started.elapsed().as_secs_f64() * 1000.0),
        source = path
            .as_ref()
            .map_or("built-in default".to_string(), |p| p.display().to_string()),
        "ready"
    );
    let why = loop {
        match inbox.recv() {
            Ok(Event::Reload(trigger)) => {
                let _ = reloader.reload(trigger);
            }
            Ok(Event::Stop(why)) => break why,
            Err(_) => break "event channel closed",
        }
    };
    info!(why, "stopping: no new connections; draining open ones");
    if let Some(s) = &admin_state {
        s.draining.store(true, Ordering::Relaxed);
    }
    proxy.shutdown();
    let totals = proxy.join().counters;
    info!(%totals, "stopped");
    ExitCode::SUCCESS
}
