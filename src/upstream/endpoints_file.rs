//! File service discovery for `discovery = "file"` clusters: a JSON list of
//! endpoints that another process (an operator, a ConfigMap, a controller)
//! rewrites, and Remora picks up without a reload, like an EDS push.
//!
//! ```json
//! [{"address": "10.0.0.1:8080", "weight": 3,
//!   "locality": "us-east1/us-east1-b/rack1", "health": "HEALTHY"}]
//! ```
//!
//! - `address` (required): `IP:port` (`[v6]:port`). No host names: a cluster
//!   that needs them uses `discovery = "dns"`. Port 0, the unspecified address
//!   and multicast addresses are rejected, and so is an address listed twice.
//! - `weight` (default 1): 1..=128 ([`MAX_WEIGHT`]).
//! - `locality` (default empty): Envoy's `region/zone/sub_zone`, kept as text.
//! - `health` (default `HEALTHY`): Envoy's `HealthStatus` names. `HEALTHY`,
//!   `DEGRADED` and `UNKNOWN` endpoints take traffic; `UNHEALTHY`, `DRAINING`
//!   and `TIMEOUT` ones are delivered with `healthy = false` and take none.
//!   (Envoy treats UNKNOWN as healthy and uses DEGRADED hosts, though only
//!   when too few healthy ones remain: with a bool, degraded is usable.)
//!
//! `[]` is valid (a cluster with no endpoints). Unknown fields are errors, as
//! in the TOML config, and every error names file:line:column.
//!
//! [`FileWatcher`] watches the files' directories with inotify on its own
//! thread; a file that fails to parse is logged and counted, and the last good
//! set keeps serving.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{error, info, warn};

use super::discovery::{DiscoveredEndpoint, DEFAULT_WEIGHT, MAX_WEIGHT};

/// Larger files are refused unread: a runaway writer must not exhaust memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Envoy's `config.core.v3.HealthStatus`, by its JSON names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum HealthStatus {
    Unknown,
    Healthy,
    Unhealthy,
    Draining,
    Timeout,
    Degraded,
}

impl HealthStatus {
    const ALL: [(&'static str, HealthStatus); 6] = [
        ("UNKNOWN", HealthStatus::Unknown),
        ("HEALTHY", HealthStatus::Healthy),
        ("UNHEALTHY", HealthStatus::Unhealthy),
        ("DRAINING", HealthStatus::Draining),
        ("TIMEOUT", HealthStatus::Timeout),
        ("DEGRADED", HealthStatus::Degraded),
    ];

    fn parse(s: &str) -> Option<HealthStatus> {
        HealthStatus::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, h)| *h)
    }

    /// Whether the endpoint may take traffic (see the module doc).
    pub fn is_usable(self) -> bool {
        matches!(
            self,
            HealthStatus::Healthy | HealthStatus::Degraded | HealthStatus::Unknown
        )
    }
}

/// One entry of an endpoints file, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileEndpoint {
    pub addr: SocketAddr,
    pub weight: u32,
    pub locality: String,
    pub health: HealthStatus,
}

impl FileEndpoint {
    pub fn to_discovered(&self) -> DiscoveredEndpoint {
        DiscoveredEndpoint {
            addr: self.addr,
            weight: self.weight,
            locality: self.locality.clone(),
            healthy: self.health.is_usable(),
        }
    }
}

/// One problem in an endpoints file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based; 0 when the problem has no position.
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Why an endpoints file was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    #[error("{}: cannot read endpoints file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Every problem found, one per line as `file:line:col: reason`.
    #[error("{}", Render(file, problems))]
    Invalid {
        file: PathBuf,
        problems: Vec<Problem>,
    },
}

struct Render<'a>(&'a Path, &'a [Problem]);

impl fmt::Display for Render<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.1.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if p.line == 0 {
                write!(f, "{}: {}", self.0.display(), p.message)?;
            } else {
                write!(
                    f,
                    "{}:{}:{}: {}",
                    self.0.display(),
                    p.line,
                    p.column,
                    p.message
                )?;
            }
        }
        Ok(())
    }
}

/// The shape of one entry; values stay raw so that each can be checked with
/// its own position (serde_json reports positions only for syntax errors).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint<'a> {
    #[serde(borrow)]
    address: &'a RawValue,
    #[serde(borrow, default)]
    weight: Option<&'a RawValue>,
    #[serde(borrow, default)]
    locality: Option<&'a RawValue>,
    #[serde(borrow, default)]
    health: Option<&'a RawValue>,
}

/// Reads and parses an endpoints file (at most [`MAX_FILE_BYTES`]).
pub fn load_endpoints(path: &Path) -> Result<Vec<FileEndpoint>, EndpointsError> {
    let text = read_limited(path).map_err(|source| EndpointsError::Read {
        file: path.to_path_buf(),
        source,
    })?;
    parse_endpoints(&text, path)
}

fn read_limited(path: &Path) -> io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_FILE_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    Ok(text)
}

/// Parses the JSON text of an endpoints file; `file` is only used in errors.
/// Syntax errors stop at the first; otherwise every problem is reported.
pub fn parse_endpoints(text: &str, file: &Path) -> Result<Vec<FileEndpoint>, EndpointsError> {
    let invalid = |problems| EndpointsError::Invalid {
        file: file.to_path_buf(),
        problems,
    };
    // Editors on some systems write a byte-order mark; JSON (RFC 8259 §8.1)
    // lets a parser ignore it.
    let bom = text.starts_with('\u{feff}');
    let body = if bom { &text[3..] } else { text };
    if body.trim().is_empty() {
        return Err(invalid(vec![Problem {
            line: 1,
            column: 1,
            message: "file is empty (caught mid-write?); write endpoint files atomically: a temporary file, then rename it".into(),
        }]));
    }
    let raw: Vec<RawEndpoint> = serde_json::from_str(body).map_err(|e| {
        let full = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let message = full.strip_suffix(&suffix).unwrap_or(&full).to_string();
        // serde_json says column 0 for some errors found before the first
        // byte of a value is consumed; columns here are 1-based.
        let column = e.column().max(1) + usize::from(bom && e.line() == 1);
        invalid(vec![Problem {
            line: e.line(),
            column,
            message,
        }])
    })?;
    let mut problems = Vec::new();
    let mut endpoints: Vec<FileEndpoint> = Vec::with_capacity(raw.len());
    let mut first_seen: HashMap<SocketAddr, (usize, usize)> = HashMap::new();
    for r in &raw {
        let mut problem = |v: &RawValue, message: String| {
            let (line, column) = position(text, v);
            problems.push(Problem {
                line,
                column,
                message,
            });
        };
        let addr = match parse_address(r.address) {
            Ok(a) => Some(a),
            Err(m) => {
                problem(r.address, m);
                None
            }
        };
        let weight = match r.weight {
            None => DEFAULT_WEIGHT,
            Some(v) => match serde_json::from_str::<u64>(v.get()) {
                Ok(w) if (1..=u64::from(MAX_WEIGHT)).contains(&w) => w as u32,
                _ => {
                    problem(
                        v,
                        format!(
                            "`weight` must be an integer from 1 to {MAX_WEIGHT}, not {}",
                            v.get()
                        ),
                    );
                    DEFAULT_WEIGHT
                }
            },
        };
        let locality = match r.locality {
            None => String::new(),
            Some(v) => serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| {
                problem(
                    v,
                    format!(
                        "`locality` must be a string like \"region/zone/sub_zone\", not {}",
                        v.get()
                    ),
                );
                String::new()
            }),
        };
        let health = match r.health {
            None => HealthStatus::Healthy,
            Some(v) => serde_json::from_str::<String>(v.get())
                .ok()
                .and_then(|s| HealthStatus::parse(&s))
                .unwrap_or_else(|| {
                    let names: Vec<&str> = HealthStatus::ALL.iter().map(|(n, _)| *n).collect();
                    problem(
                        v,
                        format!(
                            "`health` must be one of {}, not {}",
                            names.join(", "),
                            v.get()
                        ),
                    );
                    HealthStatus::Healthy
                }),
        };
        let Some(addr) = addr else { continue };
        let here = position(text, r.address);
        if let Some((line, column)) = first_seen.get(&addr) {
            problem(
                r.address,
                format!("address {addr} is listed twice (first at line {line}, column {column})"),
            );
            continue;
        }
        first_seen.insert(addr, here);
        endpoints.push(FileEndpoint {
            addr,
            weight,
            locality,
            health,
        });
    }
    if problems.is_empty() {
        Ok(endpoints)
    } else {
        Err(invalid(problems))
    }
}

fn parse_address(v: &RawValue) -> Result<SocketAddr, String> {
    let Ok(s) = serde_json::from_str::<String>(v.get()) else {
        return Err(format!(
            "`address` must be a string like \"10.0.0.1:8080\", not {}",
            v.get()
        ));
    };
    let addr: SocketAddr = s.parse().map_err(|_| {
        format!("`address` \"{s}\" is not IP:port (like 10.0.0.1:8080 or [fd00::1]:8080); file discovery takes no host names, use discovery = \"dns\" for those")
    })?;
    if addr.port() == 0 {
        return Err(format!("`address` \"{s}\": port 0 cannot be connected to"));
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err(format!(
            "`address` \"{s}\": an unspecified or multicast address is not an endpoint"
        ));
    }
    Ok(addr)
}

/// 1-based line and column (in characters) of a raw value inside `text`.
/// serde_json hands out `RawValue`s that borrow from the input, so the
/// value's offset is its pointer distance from the start of `text`.
fn position(text: &str, v: &RawValue) -> (usize, usize) {
    let offset = (v.get().as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
    if offset > text.len() || !text.is_char_boundary(offset) {
        return (0, 0);
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// A cluster whose endpoints come from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchedFile {
    pub cluster: String,
    pub path: PathBuf,
}

/// Counters over all watched files, readable from any thread.
#[derive(Debug, Default)]
pub struct FileWatchStats {
    /// Callbacks delivered (a file's endpoint set changed).
    pub updates: AtomicU64,
    /// Reads that were rejected (unreadable, malformed); the last good set
    /// kept serving.
    pub rejected: AtomicU64,
}

type Callback = Box<dyn Fn(&str, Vec<DiscoveredEndpoint>) + Send>;

struct Control {
    stop: bool,
    files: Vec<WatchedFile>,
    version: u64,
}

struct Shared {
    control: Mutex<Control>,
    stats: Arc<FileWatchStats>,
    /// Cluster -> the last rejection, until a good read.
    last_errors: Mutex<BTreeMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches endpoints files on its own thread (`remora-eds-file`) and calls
/// back with a cluster's endpoints when its file's content changes.
///
/// Each file's directory is watched (and, for a symlink, its target's), for
/// IN_CLOSE_WRITE, IN_MOVED_TO and symlink IN_CREATE: a rewrite in place, an
/// atomic rename over the file, and Kubernetes' ConfigMap update (a `..data`
/// symlink swapped by rename) all arrive, while a watch on the file's own
/// inode would miss the last two. An event re-reads the file; identical
/// bytes are ignored, a file that fails to parse is logged with
/// file:line:col, counted, and the last good set stays.
///
/// The callback runs on the watcher thread with no lock held, and must not
/// panic (that would end the thread and all watching). Each file is
/// read at once when it starts being watched, and its first good set is
/// delivered even when empty. Dropping the watcher stops and joins the thread.
pub struct FileWatcher {
    shared: Arc<Shared>,
    wake: UnixStream,
    thread: Option<JoinHandle<()>>,
}

impl FileWatcher {
    pub fn start<F>(files: Vec<WatchedFile>, on_change: F) -> io::Result<FileWatcher>
    where
        F: Fn(&str, Vec<DiscoveredEndpoint>) + Send + 'static,
    {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let (wake, wake_rx) = UnixStream::pair()?;
        wake.set_nonblocking(true)?;
        wake_rx.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                stop: false,
                files,
                version: 1,
            }),
            stats: Arc::new(FileWatchStats::default()),
            last_errors: Mutex::new(BTreeMap::new()),
        });
        let worker = Watcher {
            inotify,
            wake_rx,
            shared: shared.clone(),
            on_change: Box::new(on_change),
            dirs: HashMap::new(),
            files: Vec::new(),
            seen_version: 0,
        };
        let thread = std::thread::Builder::new()
            .name("remora-eds-file".into())
            .spawn(move || worker.run())?;
        Ok(FileWatcher {
            shared,
            wake,
            thread: Some(thread),
        })
    }

    /// Replaces the set of watched files (config reload). A cluster whose
    /// path is unchanged keeps its state (no callback unless the content
    /// changes); a new cluster or a new path is read at once.
    pub fn update(&self, files: Vec<WatchedFile>) {
        let mut c = lock(&self.shared.control);
        c.files = files;
        c.version += 1;
        drop(c);
        self.poke();
    }

    pub fn stats(&self) -> Arc<FileWatchStats> {
        self.shared.stats.clone()
    }

    /// Cluster -> why its file was last rejected (cleared by a good read).
    pub fn last_errors(&self) -> BTreeMap<String, String> {
        lock(&self.shared.last_errors).clone()
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn poke(&self) {
        // Non-blocking: a full socket buffer already means a wake-up is pending.
        let _ = (&self.wake).write(&[1]);
    }

    fn shutdown(&mut self) {
        lock(&self.shared.control).stop = true;
        self.poke();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for FileWatcher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// One watched file as the watcher thread tracks it.
struct FileState {
    watched: WatchedFile,
    /// The directories whose events concern this file: its own, and its
    /// symlink target's (recomputed after each read: a swap moves it).
    dirs: Vec<PathBuf>,
    /// Hash of the bytes last read, good or bad: unchanged bytes are skipped
    /// (a busy directory must not re-log the same rejection).
    last_read: Option<u64>,
    /// The last read failed (reported once, not at every event).
    unreadable: bool,
    delivered: Option<Vec<DiscoveredEndpoint>>,
}

struct Watcher {
    inotify: Inotify,
    wake_rx: UnixStream,
    shared: Arc<Shared>,
    on_change: Callback,
    /// Watched directory -> its watch.
    dirs: HashMap<PathBuf, WatchDescriptor>,
    files: Vec<FileState>,
    seen_version: u64,
}

const EVENTS: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_CREATE);

impl Watcher {
    fn run(mut self) {
        loop {
            {
                let control = lock(&self.shared.control);
                if control.stop {
                    return;
                }
                if control.version != self.seen_version {
                    self.seen_version = control.version;
                    let files = control.files.clone();
                    drop(control);
                    self.reconcile(files);
                }
            }
            self.sync_watches();
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
            // SAFETY: `fds` is a valid array of two pollfd for the call's duration.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                error!(error = %e, "endpoints file watcher: poll failed; stopping");
                return;
            }
            if fds[1].revents != 0 {
                let mut buf = [0u8; 64];
                while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
                // An update (or stop) first: once `update` has returned, no
                // event is delivered for a file it removed.
                continue;
            }
            if fds[0].revents != 0 {
                self.handle_events();
            }
        }
    }

    fn reconcile(&mut self, files: Vec<WatchedFile>) {
        let mut old: Vec<FileState> = std::mem::take(&mut self.files);
        let mut fresh = Vec::new();
        for w in files {
            match old.iter().position(|s| s.watched == w) {
                Some(i) => self.files.push(old.swap_remove(i)),
                None => {
                    fresh.push(self.files.len());
                    self.files.push(FileState {
                        watched: w,
                        dirs: Vec::new(),
                        last_read: None,
                        unreadable: false,
                        delivered: None,
                    });
                }
            }
        }
        {
            let mut errors = lock(&self.shared.last_errors);
            errors.retain(|cluster, _| self.files.iter().any(|f| &f.watched.cluster == cluster));
        }
        // Watch first, then read: a write between the two is then seen
        // (at worst read twice), never lost.
        self.sync_watches();
        for i in fresh {
            self.load(i);
        }
    }

    /// Adds watches for directories that files need and removes the rest.
    fn sync_watches(&mut self) {
        let wanted: HashSet<PathBuf> = self
            .files
            .iter_mut()
            .flat_map(|f| {
                f.dirs = dirs_of(&f.watched.path);
                f.dirs.clone()
            })
            .collect();
        self.dirs.retain(|dir, wd| {
            let keep = wanted.contains(dir);
            if !keep {
                let _ = self.inotify.rm_watch(*wd);
            }
            keep
        });
        for dir in wanted {
            if self.dirs.contains_key(&dir) {
                continue;
            }
            match self.inotify.add_watch(&dir, EVENTS) {
                Ok(wd) => {
                    self.dirs.insert(dir, wd);
                }
                Err(e) => {
                    // Retried at the next event or update.
                    error!(dir = %dir.display(), error = %e, "cannot watch endpoints file directory");
                }
            }
        }
    }

    fn handle_events(&mut self) {
        let mut touched: HashSet<PathBuf> = HashSet::new();
        let mut overflow = false;
        loop {
            let events = match self.inotify.read_events() {
                Ok(events) => events,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    error!(error = %e, "endpoints file watcher: cannot read inotify events");
                    break;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    overflow = true;
                    continue;
                }
                let Some(dir) = self
                    .dirs
                    .iter()
                    .find(|(_, wd)| **wd == ev.wd)
                    .map(|(d, _)| d.clone())
                else {
                    continue;
                };
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // The directory went away; sync_watches adds it back if it returns.
                    self.dirs.remove(&dir);
                    continue;
                }
                // A new regular file is empty until its writer closes it
                // (IN_CLOSE_WRITE follows); only a new symlink is complete.
                if ev.mask == AddWatchFlags::IN_CREATE {
                    let created = ev.name.as_ref().map(|n| dir.join(n));
                    if !created.is_some_and(|p| p.is_symlink()) {
                        continue;
                    }
                }
                touched.insert(dir);
            }
        }
        for i in 0..self.files.len() {
            if overflow || self.files[i].dirs.iter().any(|d| touched.contains(d)) {
                self.load(i);
            }
        }
    }

    /// Reads file `i`; delivers its endpoints if they changed.
    fn load(&mut self, i: usize) {
        let f = &mut self.files[i];
        let path = f.watched.path.clone();
        let cluster = f.watched.cluster.clone();
        let text = match read_limited(&path) {
            Ok(t) => t,
            Err(e) => {
                // Forget the bytes, so that the same content coming back is
                // parsed again and clears the error; report the failure once.
                f.last_read = None;
                if !std::mem::replace(&mut f.unreadable, true) {
                    let message = format!("{}: cannot read endpoints file: {e}", path.display());
                    self.reject(&cluster, message);
                }
                return;
            }
        };
        f.unreadable = false;
        let hash = {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            text.hash(&mut h);
            h.finish()
        };
        if f.last_read == Some(hash) {
            return;
        }
        f.last_read = Some(hash);
        match parse_endpoints(&text, &path) {
            Ok(endpoints) => {
                lock(&self.shared.last_errors).remove(&cluster);
                let mut set: Vec<DiscoveredEndpoint> =
                    endpoints.iter().map(FileEndpoint::to_discovered).collect();
                set.sort();
                if f.delivered.as_ref() == Some(&set) {
                    return;
                }
                info!(cluster = %cluster, file = %path.display(), endpoints = set.len(), "endpoints file loaded");
                f.delivered = Some(set.clone());
                self.shared.stats.updates.fetch_add(1, Ordering::Relaxed);
                (self.on_change)(&cluster, set);
            }
            Err(e) => self.reject(&cluster, e.to_string()),
        }
    }

    fn reject(&self, cluster: &str, message: String) {
        self.shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
        warn!(cluster = %cluster, "endpoints file rejected; the last good endpoints keep serving: {message}");
        lock(&self.shared.last_errors).insert(cluster.to_string(), message);
    }
}

/// The directories whose changes may change what `path` reads: its parent,
/// and its symlink target's parent when that differs.
fn dirs_of(path: &Path) -> Vec<PathBuf> {
    let parent = |p: &Path| {
        p.parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf()
    };
    let mut dirs = vec![parent(path)];
    if let Ok(real) = std::fs::canonicalize(path) {
        let d = parent(&real);
        if std::fs::canonicalize(&dirs[0]).ok().as_ref() != Some(&d) {
            dirs.push(d);
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const WAIT: Duration = Duration::from_secs(10);

    fn p() -> &'static Path {
        Path::new("eds.json")
    }

    fn problems(text: &str) -> Vec<String> {
        match parse_endpoints(text, p()) {
            Err(EndpointsError::Invalid { problems, .. }) => problems
                .iter()
                .map(|p| format!("{}:{}: {}", p.line, p.column, p.message))
                .collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn parses_every_field_and_defaults() {
        let text = r#"[
  {"address": "10.0.0.1:8080", "weight": 3, "locality": "us-east1/us-east1-b/rack1", "health": "HEALTHY"},
  {"address": "[fd00::1]:80"},
  {"address": "10.0.0.2:8080", "health": "DRAINING", "weight": null},
  {"address": "10.0.0.3:8080", "health": "DEGRADED"}
]"#;
        let e = parse_endpoints(text, p()).unwrap();
        assert_eq!(e.len(), 4);
        assert_eq!(
            e[0],
            FileEndpoint {
                addr: "10.0.0.1:8080".parse().unwrap(),
                weight: 3,
                locality: "us-east1/us-east1-b/rack1".into(),
                health: HealthStatus::Healthy,
            }
        );
        assert_eq!(
            (e[1].weight, e[1].locality.as_str(), e[1].health),
            (1, "", HealthStatus::Healthy)
        );
        assert_eq!(e[2].weight, 1);
        let usable: Vec<bool> = e.iter().map(|e| e.to_discovered().healthy).collect();
        assert_eq!(usable, [true, true, false, true]);
        assert_eq!(parse_endpoints(" [ ] ", p()).unwrap(), vec![]);
        assert_eq!(parse_endpoints("\u{feff}[]", p()).unwrap(), vec![]);
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let text = "[\n  {\"address\": \"10.0.0.1:8080\"},\n  {\"address\": \"reviews:8080\", \"weight\": 0},\n  {\"address\": \"10.0.0.1:8080\", \"health\": \"SICK\"},\n  {\"address\": \"10.0.0.5:0\", \"locality\": 5}\n]";
        let got = problems(text);
        assert_eq!(got.len(), 6, "{got:#?}");
        assert!(
            got[0].starts_with("3:15: `address` \"reviews:8080\" is not IP:port"),
            "{}",
            got[0]
        );
        assert!(got[0].contains("discovery = \"dns\""));
        assert_eq!(
            got[1],
            "3:41: `weight` must be an integer from 1 to 128, not 0"
        );
        assert!(
            got[2].starts_with("4:42: `health` must be one of UNKNOWN, HEALTHY"),
            "{}",
            got[2]
        );
        assert_eq!(
            got[3],
            "4:15: address 10.0.0.1:8080 is listed twice (first at line 2, column 15)"
        );
        assert_eq!(
            got[4],
            "5:15: `address` \"10.0.0.5:0\": port 0 cannot be connected to"
        );
        assert!(
            got[5].starts_with("5:41: `locality` must be a string"),
            "{}",
            got[5]
        );
        let e = parse_endpoints(text, Path::new("/etc/eds/x.json"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/eds/x.json:3:15: `address`"), "{e}");
        assert_eq!(e.lines().count(), 6);
    }

    #[test]
    fn syntax_and_shape_errors_have_positions() {
        assert_eq!(
            problems("[{\"address\": \"10.0.0.1:1\",}]"),
            ["1:27: trailing comma"]
        );
        assert_eq!(
            problems("[\n {\"address\": \"10.0.0.1:1\", \"wieght\": 2}]"),
            ["2:35: unknown field `wieght`, expected one of `address`, `weight`, `locality`, `health`"]
        );
        assert_eq!(
            problems("[{\"weight\": 2}]"),
            ["1:14: missing field `address`"]
        );
        assert_eq!(
            problems("{}"),
            ["1:1: invalid type: map, expected a sequence"]
        );
        assert!(problems("  \n")[0].starts_with("1:1: file is empty"));
        assert!(problems("[{\"address\": 10}]")[0].starts_with("1:14: `address` must be a string"));
        assert!(problems("[{\"address\": \"0.0.0.0:80\"}]")[0].contains("unspecified"));
        assert!(problems("[{\"address\": \"10.0.0.1:80\", \"weight\": 129}]")[0].contains("129"));
        assert!(problems("[{\"address\": \"10.0.0.1:80\", \"weight\": 1.5}]")[0].contains("1.5"));
        assert!(
            problems("[{\"address\": \"10.0.0.1:80\", \"address\": \"10.0.0.2:80\"}]")[0]
                .contains("duplicate field `address`")
        );
    }

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!(
                "remora-eds-{tag}-{}-{:?}",
                std::process::id(),
                Instant::now()
            ));
            std::fs::create_dir_all(&d).unwrap();
            TempDir(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    type Updates = mpsc::Receiver<(String, Vec<DiscoveredEndpoint>)>;

    fn watch(files: Vec<WatchedFile>) -> (FileWatcher, Updates) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let w = FileWatcher::start(files, move |c, set| {
            let _ = lock(&tx).send((c.to_string(), set));
        })
        .unwrap();
        (w, rx)
    }

    fn addrs(set: &[DiscoveredEndpoint]) -> Vec<String> {
        set.iter().map(|e| e.addr.to_string()).collect()
    }

    fn wait_for(what: impl Fn() -> bool) {
        let end = Instant::now() + WAIT;
        while !what() {
            assert!(
                Instant::now() < end,
                "condition not reached within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn json(addrs: &[&str]) -> String {
        let items: Vec<String> = addrs
            .iter()
            .map(|a| format!("{{\"address\": \"{a}\"}}"))
            .collect();
        format!("[{}]", items.join(","))
    }

    #[test]
    fn watcher_sees_rewrite_rename_and_rejects_malformed() {
        let dir = TempDir::new("watch");
        let path = dir.0.join("eds.json");
        std::fs::write(&path, json(&["10.0.0.1:80"])).unwrap();
        let (w, rx) = watch(vec![WatchedFile {
            cluster: "c".into(),
            path: path.clone(),
        }]);
        let (c, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (c.as_str(), addrs(&set)),
            ("c", vec!["10.0.0.1:80".to_string()])
        );

        // Rewrite in place.
        std::fs::write(&path, json(&["10.0.0.2:80", "10.0.0.1:80"])).unwrap();
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.2:80"]);

        // Atomic replacement by rename.
        let tmp = dir.0.join(".eds.json.tmp");
        std::fs::write(&tmp, json(&["10.0.0.3:80"])).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(addrs(&set), ["10.0.0.3:80"]);

        // Malformed: rejected, counted, nothing delivered.
        std::fs::write(&path, "[{\"address\": \"10.0.0.4:80\",]").unwrap();
        wait_for(|| w.stats().rejected.load(Ordering::Relaxed) == 1);
        let err = w.last_errors()["c"].clone();
        assert!(err.contains("eds.json:1:"), "{err}");
        // The same bytes again are not re-rejected (events are handled in
        // order, so by the next callback this one has been seen); a good
        // file recovers.
        // (The good file is renamed into place: the watcher may still be
        // reading for the first write, and must not catch the second half-done.)
        std::fs::write(&path, "[{\"address\": \"10.0.0.4:80\",]").unwrap();
        std::fs::write(&tmp, json(&["10.0.0.3:80", "10.0.0.5:80"])).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(addrs(&set), ["10.0.0.3:80", "10.0.0.5:80"]);
        assert!(w.last_errors().is_empty());
        assert_eq!(w.stats().rejected.load(Ordering::Relaxed), 1);
        assert_eq!(w.stats().updates.load(Ordering::Relaxed), 4);
        w.stop();
    }

    #[test]
    fn watcher_follows_a_configmap_symlink_swap() {
        // Kubernetes' layout: eds.json -> ..data/eds.json, ..data -> ..v1.
        let dir = TempDir::new("configmap");
        let v1 = dir.0.join("..v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("eds.json"), json(&["10.0.1.1:80"])).unwrap();
        std::os::unix::fs::symlink("..v1", dir.0.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/eds.json", dir.0.join("eds.json")).unwrap();
        let (w, rx) = watch(vec![WatchedFile {
            cluster: "cm".into(),
            path: dir.0.join("eds.json"),
        }]);
        assert_eq!(addrs(&rx.recv_timeout(WAIT).unwrap().1), ["10.0.1.1:80"]);

        let v2 = dir.0.join("..v2");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("eds.json"), json(&["10.0.1.2:80"])).unwrap();
        std::os::unix::fs::symlink("..v2", dir.0.join("..data_tmp")).unwrap();
        std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
        assert_eq!(addrs(&rx.recv_timeout(WAIT).unwrap().1), ["10.0.1.2:80"]);
        drop(w);
    }

    #[test]
    fn watcher_update_adds_and_drops_files() {
        let dir = TempDir::new("update");
        let a = dir.0.join("a.json");
        let b = dir.0.join("b.json");
        std::fs::write(&a, json(&["10.0.2.1:80"])).unwrap();
        std::fs::write(&b, "not json").unwrap();
        let wf = |c: &str, p: &Path| WatchedFile {
            cluster: c.into(),
            path: p.to_path_buf(),
        };
        let (w, rx) = watch(vec![wf("a", &a)]);
        assert_eq!(rx.recv_timeout(WAIT).unwrap().0, "a");
        // b starts malformed: rejected at once, no callback.
        w.update(vec![wf("a", &a), wf("b", &b)]);
        wait_for(|| w.last_errors().contains_key("b"));
        std::fs::write(&b, json(&["10.0.2.2:80"])).unwrap();
        let (c, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (c.as_str(), addrs(&set)),
            ("b", vec!["10.0.2.2:80".to_string()])
        );
        // a dropped: its changes are no longer delivered.
        w.update(vec![wf("b", &b)]);
        std::fs::write(&a, json(&["10.0.2.9:80"])).unwrap();
        std::fs::write(&b, json(&["10.0.2.3:80"])).unwrap();
        let (c, _) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(c, "b");
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn missing_file_at_start_is_reported_then_picked_up() {
        let dir = TempDir::new("missing");
        let path = dir.0.join("later.json");
        let (w, rx) = watch(vec![WatchedFile {
            cluster: "l".into(),
            path: path.clone(),
        }]);
        wait_for(|| {
            w.last_errors()
                .get("l")
                .is_some_and(|e| e.contains("cannot read"))
        });
        let tmp = dir.0.join("later.tmp");
        std::fs::write(&tmp, json(&["10.0.3.1:80"])).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(addrs(&rx.recv_timeout(WAIT).unwrap().1), ["10.0.3.1:80"]);
    }
}
