//! Hot reload: read, validate, check, publish, tell the cores.
//!
//! The new file is parsed and validated completely, and every listener address
//! that is new in it is test-bound, before anything is published. Only then is
//! one immutable snapshot with the next version swapped in (atomically, for all
//! cores at once) and the cores told to reconcile their listeners. A file that
//! fails keeps the running config serving; the error (file, line, reason) is
//! logged, counted and shown on the admin API.
//!
//! Triggers: SIGHUP and file changes (see `watch`), and the admin API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Socket, Type};
use tracing::{error, info, warn};

use crate::config::{Config, ConfigHandle};
use crate::listener;
use crate::runtime::Proxy;
use crate::shard::Command;
use crate::upstream::control::UpstreamControl;

/// Why a reload was asked for (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChange,
    Admin,
}

/// Owns the reload procedure and its counters.
pub struct Reloader {
    path: Option<PathBuf>,
    handle: Arc<ConfigHandle>,
    proxy: Arc<Proxy>,
    /// Discovery and health checks follow the clusters of each new config.
    upstream: Arc<UpstreamControl>,
    /// `--cores`, when given: it decides over `runtime.cores` in any file.
    cores_flag: Option<usize>,
    /// Serialises reloads: two triggers at once must not interleave.
    lock: Mutex<()>,
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

impl Reloader {
    pub fn new(
        path: Option<PathBuf>,
        handle: Arc<ConfigHandle>,
        proxy: Arc<Proxy>,
        upstream: Arc<UpstreamControl>,
        cores_flag: Option<usize>,
    ) -> Reloader {
        Reloader {
            path,
            handle,
            proxy,
            upstream,
            cores_flag,
            lock: Mutex::new(()),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Reloads the config file; returns the new version or why it was rejected.
    pub fn reload(&self, trigger: Trigger) -> Result<u64, String> {
        let _serial = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = &self.path else {
            return Err("running on the built-in default: there is no config file to reload (start with --config FILE)".into());
        };
        // An empty file (a write caught half-way, usually) is refused by
        // `Config::load`, as at start-up.
        let result = Config::load(path)
            .map_err(|e| e.to_string())
            .and_then(|next| {
                let current = self.handle.current();
                check_new_listeners(&current.config, &next)?;
                warn_restart_only(&current.config, &next, self.cores_flag);
                if next == current.config {
                    return Ok(None);
                }
                Ok(Some(next))
            });
        match result {
            Ok(None) => {
                let v = self.handle.current().version;
                info!(
                    ?trigger,
                    version = v,
                    "config unchanged; nothing to publish"
                );
                Ok(v)
            }
            Ok(Some(next)) => {
                // Endpoint sets first, so every cluster the new config names
                // has one when the cores see it.
                self.upstream.apply(&next);
                let version = self.handle.publish(next);
                self.proxy.send(Command::Reconcile);
                self.ok.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
                info!(?trigger, version, "config reloaded");
                Ok(version)
            }
            Err(e) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                error!(?trigger, error = %e, "config rejected; the running config keeps serving");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.clone());
                Err(e)
            }
        }
    }
}

/// Test-binds every address `next` listens on that `current` does not, so a
/// port taken by another process rejects the file instead of half-applying it.
/// (SO_REUSEPORT, like the real listeners: our own sockets do not conflict.)
fn check_new_listeners(current: &Config, next: &Config) -> Result<(), String> {
    let have: Vec<SocketAddr> = listener::listen_keys(current)
        .iter()
        .map(|k| k.addr)
        .collect();
    for key in listener::listen_keys(next) {
        if have.contains(&key.addr) {
            continue;
        }
        let domain = if key.addr.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let probe = Socket::new(domain, Type::STREAM, None).and_then(|s| {
            s.set_reuse_address(true)?;
            s.set_reuse_port(true)?;
            if key.addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&key.addr.into())
        });
        if let Err(e) = probe {
            return Err(format!("cannot listen on {}: {e}", key.addr));
        }
    }
    Ok(())
}

/// Settings fixed at start-up: a change is accepted but only takes effect on restart.
fn warn_restart_only(current: &Config, next: &Config, cores_flag: Option<usize>) {
    if current.runtime.cores != next.runtime.cores {
        match cores_flag {
            // The file's value has no effect now or after a restart with the
            // same command line: say so instead of promising a change.
            Some(n) => {
                info!("runtime.cores changed in the file; --cores {n} on the command line decides")
            }
            None => warn!("runtime.cores changed: takes effect at the next restart"),
        }
    }
    if current.admin != next.admin {
        warn!("[admin] changed: takes effect at the next restart");
    }
    if current.access_log != next.access_log {
        warn!("[access_log] changed: takes effect at the next restart");
    }
    if current.tls.cert_dir != next.tls.cert_dir
        || current.tls.trust_domain != next.tls.trust_domain
    {
        // The certificates themselves rotate live (the watcher reloads the
        // files); only where they are is fixed for the process.
        warn!("[tls] cert_dir / trust_domain changed: takes effect at the next restart");
    }
    if current.log_level != next.log_level {
        warn!("log.level changed: use the admin API (/logging) to change it at run time");
    }
}

/// Watches the config file and sends `()` on `tx` after it changed (debounced).
///
/// Watches the directory rather than the file: editors and Kubernetes ConfigMap
/// updates replace the file (rename or symlink swap), which a watch on the old
/// inode would miss.
pub fn watch(path: &Path, tx: Sender<()>) -> std::io::Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let name = path.file_name().map(|n| n.to_os_string());
    let ino = Inotify::init(InitFlags::IN_CLOEXEC).map_err(std::io::Error::from)?;
    ino.add_watch(
        &dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE,
    )
    .map_err(std::io::Error::from)?;
    std::thread::Builder::new()
        .name("remora-watch".into())
        .spawn(move || loop {
            let Ok(events) = ino.read_events() else {
                return;
            };
            // Kubernetes swaps a `..data` symlink, so any change in the
            // directory may be a change of the file.
            let relevant = events.iter().any(|e| {
                e.name.is_none()
                    || e.name.as_deref() == name.as_deref()
                    || e.name
                        .as_ref()
                        .is_some_and(|n| n.to_string_lossy().starts_with(".."))
            });
            if relevant {
                // Let a burst of events (write, then rename) settle.
                std::thread::sleep(Duration::from_millis(50));
                if tx.send(()).is_err() {
                    return;
                }
            }
        })?;
    Ok(())
}
