//! Rotation: the published TLS contexts and the thread that follows the
//! certificate files.
//!
//! ```text
//! cert_dir ─ inotify (thread remora-tls-watch) ─ debounce ─ read ─ validate ─┬─ good: Contexts::rotate ─► TlsHandle (ArcSwapOption) ─► cores, per handshake
//!                                                                           └─ bad: warn! + rotations_failed; the old contexts keep serving
//! ```
//!
//! The directory is watched, not the files: a rename over a file, a rewrite
//! in place and Kubernetes' secret update (the `..data` symlink swapped by
//! rename) all show up as events in it, while a watch on a file's inode
//! misses the last two. Any event schedules a re-read once the directory has
//! been quiet for [`DEBOUNCE`]; bytes identical to the published or to the
//! last rejected files are ignored. Certificate writers (istio-agent) write
//! the files one after another, so a set that fails is read once more after
//! [`SETTLE`] before it is reported: a half-written rotation is not an error.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tracing::{info, warn};

use super::config::Contexts;
use super::error::{CertError, CertErrorKind};
use super::identity::{Identity, IdentityFiles};
use super::spiffe::SpiffeId;
use super::x509::rfc3339;

/// Quiet time after the last event before the files are read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// How long a failing set of files is given to become consistent.
pub const SETTLE: Duration = Duration::from_millis(500);
/// A directory that is busy without pause is read at least this often.
const MAX_DELAY: Duration = Duration::from_secs(1);
/// How often a missing directory is looked for again.
const RETRY_WATCH: Duration = Duration::from_secs(1);

const EVENTS: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_CREATE)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF);

/// What the cores hold: the current contexts, loaded once per handshake
/// without a lock. Empty (`default()`) when TLS is not configured.
#[derive(Clone, Default)]
pub struct TlsHandle(Arc<ArcSwapOption<Contexts>>);

impl TlsHandle {
    pub fn load(&self) -> Option<Arc<Contexts>> {
        self.0.load_full()
    }

    /// The current contexts' generation (see `Contexts::generation`),
    /// without taking a reference to them.
    pub fn generation(&self) -> Option<u64> {
        self.0.load().as_ref().map(|c| c.generation())
    }
}

/// Rotation counters and the identity in use, for `/stats` and `/certs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsStatus {
    pub rotations_ok: u64,
    pub rotations_failed: u64,
    /// The last rejection (`file: reason`), cleared by a good rotation.
    pub last_error: Option<String>,
    pub spiffe_id: Option<SpiffeId>,
    pub serial: Option<String>,
    /// Unix seconds.
    pub not_after: Option<i64>,
}

struct Shared {
    handle: TlsHandle,
    rotations_ok: AtomicU64,
    rotations_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
    stop: AtomicBool,
}

/// The workload's TLS contexts, kept current with `cert_dir` by a watcher
/// thread (`remora-tls-watch`). Dropping or [`stop`](Self::stop)ping the
/// store ends and joins the thread; handles keep the last contexts.
pub struct TlsStore {
    shared: Arc<Shared>,
    dir: PathBuf,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl TlsStore {
    /// Loads `dir` once (an error is returned, nothing is started), then
    /// watches it for rotations.
    pub fn start(dir: &Path, trust_domain: &str) -> Result<TlsStore, CertError> {
        let io = |e: std::io::Error| {
            CertError::new(
                dir,
                CertErrorKind::Other(format!("cannot watch the certificate directory: {e}")),
            )
        };
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(|e| io(e.into()))?;
        // Watch before the first read: a rotation between the two is then
        // seen (at worst read twice), never lost.
        let wd = inotify.add_watch(dir, EVENTS).ok();
        let files = IdentityFiles::read(dir)?;
        let contexts = Contexts::new(Identity::from_files(&files, trust_domain)?)?;
        log_published(&contexts, "in use");
        let shared = Arc::new(Shared {
            handle: TlsHandle::default(),
            rotations_ok: AtomicU64::new(0),
            rotations_failed: AtomicU64::new(0),
            last_error: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        shared.handle.0.store(Some(Arc::new(contexts)));
        let (wake, wake_rx) = UnixStream::pair().map_err(io)?;
        wake.set_nonblocking(true).map_err(io)?;
        wake_rx.set_nonblocking(true).map_err(io)?;
        let watcher = Watcher {
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.to_string(),
            inotify,
            wd,
            wake_rx,
            shared: shared.clone(),
            published: Some(hash(&files)),
            rejected: None,
            suspect: None,
        };
        let thread = std::thread::Builder::new()
            .name("remora-tls-watch".into())
            .spawn(move || watcher.run())
            .map_err(io)?;
        Ok(TlsStore {
            shared,
            dir: dir.to_path_buf(),
            wake,
            thread: Some(thread),
        })
    }

    /// For the cores: clone it into each.
    pub fn handle(&self) -> TlsHandle {
        self.shared.handle.clone()
    }

    pub fn current(&self) -> Option<Arc<Contexts>> {
        self.shared.handle.load()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn status(&self) -> TlsStatus {
        let current = self.current();
        let id = current.as_ref().map(|c| c.identity());
        TlsStatus {
            rotations_ok: self.shared.rotations_ok.load(Ordering::Relaxed),
            rotations_failed: self.shared.rotations_failed.load(Ordering::Relaxed),
            last_error: self
                .shared
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            spiffe_id: id.map(|i| i.spiffe_id().clone()),
            serial: id.map(|i| i.serial().to_string()),
            not_after: id.map(Identity::not_after),
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        // Non-blocking: a full buffer already means a wake-up is pending.
        let _ = (&self.wake).write(&[1]);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TlsStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn log_published(c: &Contexts, what: &str) {
    let id = c.identity();
    info!(
        identity = %id.spiffe_id(),
        serial = id.serial(),
        expires = %rfc3339(id.not_after()),
        "tls: workload certificate {what}"
    );
}

fn hash(f: &IdentityFiles) -> u64 {
    let mut h = DefaultHasher::new();
    f.hash(&mut h);
    h.finish()
}

struct Watcher {
    dir: PathBuf,
    trust_domain: String,
    inotify: Inotify,
    /// `None` while the directory is missing (looked for every RETRY_WATCH).
    wd: Option<WatchDescriptor>,
    wake_rx: UnixStream,
    shared: Arc<Shared>,
    /// Hash of the files in use, and of the last files reported bad: the
    /// same bytes again are not re-validated, re-counted or re-logged.
    published: Option<u64>,
    rejected: Option<u64>,
    /// Files that failed once and get one more read after SETTLE.
    suspect: Option<u64>,
}

/// When the next read is due.
#[derive(Clone, Copy)]
struct Pending {
    first: Instant,
    due: Instant,
}

impl Watcher {
    fn run(mut self) {
        let mut pending: Option<Pending> = None;
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            if self.wd.is_none() {
                if let Ok(wd) = self.inotify.add_watch(&self.dir, EVENTS) {
                    // The directory (re)appeared: whatever it holds is new.
                    self.wd = Some(wd);
                    pending = Some(schedule(pending, DEBOUNCE));
                }
            }
            let now = Instant::now();
            let timeout = match (pending, self.wd) {
                (Some(p), _) => p.due.saturating_duration_since(now),
                (None, None) => RETRY_WATCH,
                (None, Some(_)) => Duration::MAX,
            };
            if let Some(p) = pending {
                if p.due <= now {
                    pending = None;
                    if let Some(retry) = self.reload() {
                        pending = Some(schedule(None, retry));
                    }
                    continue;
                }
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.inotify.as_fd().as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.wake_rx.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            let ms = if timeout == Duration::MAX {
                -1
            } else {
                // Round up: waking a millisecond early would spin.
                i32::try_from(timeout.as_millis() + 1).unwrap_or(i32::MAX)
            };
            // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(error = %e, "tls: certificate watcher cannot poll; rotations are no longer followed");
                return;
            }
            if fds[1].revents != 0 {
                let mut buf = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
                continue;
            }
            if fds[0].revents != 0 && self.drain_events() {
                pending = Some(schedule(pending, DEBOUNCE));
            }
        }
    }

    /// Reads the queued events; true if any concerns the directory.
    fn drain_events(&mut self) -> bool {
        let mut any = false;
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EINTR) => continue,
                // EAGAIN: drained. Anything else: retried at the next event.
                Err(_) => return any,
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    any = true;
                } else if Some(ev.wd) == self.wd {
                    if ev.mask.intersects(
                        AddWatchFlags::IN_IGNORED
                            | AddWatchFlags::IN_DELETE_SELF
                            | AddWatchFlags::IN_MOVE_SELF,
                    ) {
                        // The directory is gone or moved: watch the path again.
                        if let Some(wd) = self.wd.take() {
                            let _ = self.inotify.rm_watch(wd);
                        }
                    }
                    any = true;
                }
            }
        }
    }

    /// Reads and, if new, validates and publishes the files. Returns the
    /// delay of a confirming re-read when a new set failed for the first time.
    fn reload(&mut self) -> Option<Duration> {
        let files = match IdentityFiles::read(&self.dir) {
            Ok(f) => f,
            Err(e) => return self.failed(None, e),
        };
        let h = hash(&files);
        if Some(h) == self.published || Some(h) == self.rejected {
            self.suspect = None;
            return None;
        }
        let next = Identity::from_files(&files, &self.trust_domain).and_then(|id| {
            match self.shared.handle.load() {
                Some(current) => current.rotate(id),
                None => Contexts::new(id),
            }
        });
        match next {
            Ok(next) => {
                log_published(&next, "rotated");
                self.shared.handle.0.store(Some(Arc::new(next)));
                self.published = Some(h);
                self.rejected = None;
                self.suspect = None;
                self.shared.rotations_ok.fetch_add(1, Ordering::Relaxed);
                *self
                    .shared
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                None
            }
            Err(e) => self.failed(Some(h), e),
        }
    }

    /// A new set of files (`h`; `None`: unreadable) was refused: re-read
    /// once after SETTLE, then report it once.
    fn failed(&mut self, h: Option<u64>, e: CertError) -> Option<Duration> {
        let message = e.to_string();
        let key = h.unwrap_or_else(|| {
            let mut hasher = DefaultHasher::new();
            message.hash(&mut hasher);
            hasher.finish()
        });
        if Some(key) == self.rejected {
            return None;
        }
        if self.suspect != Some(key) {
            self.suspect = Some(key);
            return Some(SETTLE);
        }
        self.suspect = None;
        self.rejected = Some(key);
        self.shared.rotations_failed.fetch_add(1, Ordering::Relaxed);
        warn!("tls: new certificate files rejected, the previous certificate keeps serving: {message}");
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(message);
        None
    }
}

fn schedule(pending: Option<Pending>, delay: Duration) -> Pending {
    let now = Instant::now();
    let first = pending.map_or(now, |p| p.first);
    Pending {
        first,
        due: (now + delay).min(first + MAX_DELAY),
    }
}
