//! Active health checking of upstream endpoints (Envoy's `HealthCheck`): one
//! thread per proxy probes every endpoint, and the cores read the verdicts from
//! an atomically published immutable view, the way they read the config.
//!
//! ```text
//! config reload / discovery ─ HealthChecker::update(targets) ─┐
//!                                                             ▼
//! "remora-health" thread: epoll loop, one probe in flight per endpoint (checker)
//!   probe (TCP connect, or HTTP GET + status line) ─ Outcome ─ Tracker (thresholds)
//!     └─ some verdict changed? ─► HealthView { generation+1, unhealthy set } (ArcSwap)
//! cores:  HealthHandle::current() ─ generation changed? ─ is_healthy(cluster, addr)
//! admin:  HealthHandle::stats() ─ per-endpoint counts and last failure (a Mutex no core touches)
//! ```
//!
//! Why a plain thread with epoll and non-blocking sockets, not another glommio
//! executor: an endpoint is probed once per proxy, not once per core, so the
//! checker is no data-plane shard; an executor would take at least 512 KiB of
//! RLIMIT_MEMLOCK from the budget the cores need (FACTS.md: below it glommio
//! fails without a word), and its loop re-arms preemption timers on every pass
//! on a thread that sleeps nearly all the time. Probing is a few hundred
//! connects a second at most, which epoll serves with one thread that sleeps
//! until a probe is due or a socket is ready; probes of all endpoints run
//! concurrently, so a round takes one timeout, not one per endpoint.
//!
//! Semantics follow Envoy's `HealthCheckerImplBase`:
//! - Each endpoint has its own schedule: probed when added, then `interval`
//!   (plus a random part of `interval_jitter`) after each probe completes.
//! - `timeout` bounds the whole probe (connect, request, status line).
//! - `unhealthy_threshold` consecutive failures eject an endpoint,
//!   `healthy_threshold` consecutive passes bring it back; an HTTP status outside
//!   the expected (and retriable) ranges ejects at once ([`Outcome::Reject`]).
//! - New endpoints start healthy (see [`Tracker`] for why Remora differs from
//!   Envoy there); removed ones are forgotten.
//!
//! A checker that stops, or dies, publishes an empty view: no checker means no
//! ejections, rather than ejections frozen in place.

mod checker;
pub mod probe;
pub mod tracker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;
use thiserror::Error;

pub use probe::ProbeFailure;
pub use tracker::{Outcome, Tracker, Verdict};

/// Envoy's default for `expected_statuses`: 200 only.
pub const DEFAULT_EXPECTED_STATUSES: &[(u16, u16)] = &[(200, 201)];

/// One cluster's health-check settings, validated by [`HealthCheckConfig::validate`]
/// before they are handed to the checker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: HealthCheckKind,
    /// Time from the end of one probe to the start of the next (Envoy's `interval`).
    pub interval: Duration,
    /// Time allowed for a whole probe; longer is a failure.
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy endpoint back.
    pub healthy_threshold: u32,
    /// Consecutive failures that eject a healthy endpoint.
    pub unhealthy_threshold: u32,
    /// Up to this much is added at random to each interval, so that many
    /// proxies do not probe an endpoint in lockstep (Envoy's `interval_jitter`).
    pub interval_jitter: Duration,
}

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthCheckKind {
    /// `GET {path}` and judge the status line.
    Http {
        /// Request target; must start with `/`.
        path: String,
        /// `Host` header; the cluster name when `None` (as Envoy does).
        host: Option<String>,
        /// Healthy statuses as half-open `[start, end)` ranges; empty means
        /// [`DEFAULT_EXPECTED_STATUSES`].
        expected_statuses: Vec<(u16, u16)>,
        /// Statuses that count as an ordinary failure toward
        /// `unhealthy_threshold` instead of ejecting at once (Envoy's
        /// `retriable_statuses`; empty by default).
        retriable_statuses: Vec<(u16, u16)>,
    },
    /// Healthy if a TCP connection is established.
    Tcp,
}

impl HealthCheckKind {
    /// An HTTP check of `path` with Envoy's defaults.
    pub fn http(path: impl Into<String>) -> HealthCheckKind {
        HealthCheckKind::Http {
            path: path.into(),
            host: None,
            expected_statuses: DEFAULT_EXPECTED_STATUSES.to_vec(),
            retriable_statuses: Vec::new(),
        }
    }
}

/// A health-check setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HealthConfigError {
    #[error("health check interval must be at least 1ms")]
    Interval,
    #[error("health check timeout must be at least 1ms")]
    Timeout,
    #[error("health check {which} must be at least 1")]
    Threshold { which: &'static str },
    #[error("health check path {0:?} must start with '/' and contain only visible ASCII (percent-encode the rest)")]
    Path(String),
    #[error("health check host {0:?} must be non-empty visible ASCII with no spaces")]
    Host(String),
    #[error("health check status range [{0}, {1}) is invalid: write [start, end) with 100 <= start < end <= 600")]
    StatusRange(u16, u16),
}

impl HealthCheckConfig {
    /// Checks everything the checker relies on; the config layer calls it
    /// before publishing, and [`HealthChecker::update`] again.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        if self.interval < Duration::from_millis(1) {
            return Err(HealthConfigError::Interval);
        }
        if self.timeout < Duration::from_millis(1) {
            return Err(HealthConfigError::Timeout);
        }
        if self.healthy_threshold == 0 {
            return Err(HealthConfigError::Threshold {
                which: "healthy_threshold",
            });
        }
        if self.unhealthy_threshold == 0 {
            return Err(HealthConfigError::Threshold {
                which: "unhealthy_threshold",
            });
        }
        if let HealthCheckKind::Http {
            path,
            host,
            expected_statuses,
            retriable_statuses,
        } = &self.kind
        {
            // Both go into the request line and a header verbatim: no spaces,
            // no control bytes, so no request splitting (RFC 9112 §3.2).
            if !path.starts_with('/') || !token_like(path) {
                return Err(HealthConfigError::Path(path.clone()));
            }
            if let Some(h) = host {
                if !token_like(h) {
                    return Err(HealthConfigError::Host(h.clone()));
                }
            }
            // Envoy: "Only statuses in the range [100, 600) are allowed."
            for &(lo, hi) in expected_statuses.iter().chain(retriable_statuses) {
                if !(100 <= lo && lo < hi && hi <= 600) {
                    return Err(HealthConfigError::StatusRange(lo, hi));
                }
            }
        }
        Ok(())
    }
}

/// Non-empty, visible ASCII without spaces.
fn token_like(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic())
}

/// One endpoint to probe: the checker's unit of state is (cluster, address),
/// so an address in two clusters is probed for each, with each one's settings.
#[derive(Debug, Clone)]
pub struct HealthTarget {
    pub cluster: String,
    pub addr: SocketAddr,
    pub config: Arc<HealthCheckConfig>,
}

impl HealthTarget {
    fn validate(&self) -> Result<(), HealthConfigError> {
        self.config.validate()?;
        if let HealthCheckKind::Http { host: None, .. } = &self.config.kind {
            // The cluster name becomes the Host header.
            if !token_like(&self.cluster) {
                return Err(HealthConfigError::Host(self.cluster.clone()));
            }
        }
        Ok(())
    }
}

/// Health checker failures.
#[derive(Debug, Error)]
pub enum HealthError {
    #[error("cluster {cluster}: {source}")]
    Config {
        cluster: String,
        source: HealthConfigError,
    },
    #[error("cannot start the health-check thread: {0}")]
    Start(std::io::Error),
    #[error("the health-check thread has stopped; start a new checker")]
    Stopped,
    #[error("the health-check thread panicked ({0}); it had marked every endpoint healthy before exiting. This is a bug: please report it")]
    Panicked(String),
}

/// The verdicts the cores read: an immutable value, replaced as a whole.
///
/// Only unhealthy endpoints are listed, so the common case (nothing ejected)
/// answers without hashing. An endpoint the checker does not know (its cluster
/// has no health check, or it was just added) is healthy.
#[derive(Debug, Default)]
pub struct HealthView {
    generation: u64,
    unhealthy: HashMap<String, HashSet<SocketAddr>>,
}

impl HealthView {
    /// Increases by one with every published change; a core that cached
    /// answers for generation G need not look again while it stays G.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn is_healthy(&self, cluster: &str, addr: SocketAddr) -> bool {
        if self.unhealthy.is_empty() {
            return true;
        }
        self.unhealthy
            .get(cluster)
            .is_none_or(|set| !set.contains(&addr))
    }

    /// The ejected endpoints of `cluster`, for a core rebuilding its cache.
    pub fn unhealthy(&self, cluster: &str) -> impl Iterator<Item = SocketAddr> + '_ {
        self.unhealthy.get(cluster).into_iter().flatten().copied()
    }

    /// How many endpoints are ejected, over all clusters.
    pub fn unhealthy_count(&self) -> usize {
        self.unhealthy.values().map(HashSet::len).sum()
    }
}

/// Per-endpoint details for the admin `/clusters` output (Envoy shows
/// `health_flags::/failed_active_hc` there; these add the counts behind it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EndpointHealthStats {
    pub cluster: String,
    pub addr: SocketAddr,
    pub healthy: bool,
    /// Whether a probe has completed since the endpoint was added.
    pub checked: bool,
    pub consecutive_successes: u32,
    pub consecutive_failures: u32,
    /// Probes started.
    pub attempts: u64,
    pub successes: u64,
    /// Failed probes, timeouts included.
    pub failures: u64,
    /// Probes that failed by running out of `timeout` (a subset of `failures`).
    pub timeouts: u64,
    /// Why the last failed probe failed.
    pub last_failure: Option<String>,
}

/// State published by the checker thread.
#[derive(Debug, Default)]
struct Shared {
    view: ArcSwap<HealthView>,
    /// Read by the admin only; written by the checker after each batch of
    /// completed probes. No core ever takes this lock.
    stats: Mutex<BTreeMap<(String, SocketAddr), EndpointHealthStats>>,
    /// The generation of `view`, stored after it: a core compares this one
    /// relaxed-cost load with what it saw last instead of loading the view.
    generation: AtomicU64,
}

impl Shared {
    /// Publishes `view` and then its generation.
    fn store(&self, view: HealthView) {
        let g = view.generation;
        self.view.store(Arc::new(view));
        self.generation.store(g, Ordering::Release);
    }

    /// Fail open: publish "nothing ejected" and forget the details.
    fn clear(&self) {
        let generation = self.view.load().generation + 1;
        self.store(HealthView {
            generation,
            unhealthy: HashMap::new(),
        });
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Read access to the checker's results, for the cores and the admin.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    shared: Arc<Shared>,
}

impl HealthHandle {
    /// A handle with no checker behind it: every endpoint reads as healthy
    /// (for tools and tests that run cores without the control plane).
    pub fn detached() -> HealthHandle {
        HealthHandle {
            shared: Arc::new(Shared::default()),
        }
    }

    /// The generation of the current view (one atomic load): when it equals
    /// the one a core saw last, nothing changed since.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// The current verdicts (one atomic load; never blocks).
    pub fn current(&self) -> Arc<HealthView> {
        self.shared.view.load_full()
    }

    /// The current verdicts without touching the shared reference count:
    /// for the cores' per-request check (no cache line bouncing between
    /// cores).
    pub fn load(&self) -> arc_swap::Guard<Arc<HealthView>> {
        self.shared.view.load()
    }

    /// Every endpoint's details, ordered by cluster and address.
    pub fn stats(&self) -> Vec<EndpointHealthStats> {
        let stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.values().cloned().collect()
    }
}

/// The running checker. Dropping it stops the thread too.
pub struct HealthChecker {
    control: mpsc::Sender<checker::Control>,
    waker: Arc<checker::Waker>,
    handle: HealthHandle,
    thread: Option<JoinHandle<()>>,
}

impl HealthChecker {
    /// Starts the "remora-health" thread with no endpoints; give it some with
    /// [`update`](Self::update).
    pub fn start() -> Result<HealthChecker, HealthError> {
        let shared = Arc::new(Shared::default());
        let (control, rx) = mpsc::channel();
        let waker = Arc::new(checker::Waker::new().map_err(HealthError::Start)?);
        let mut run =
            checker::Checker::new(shared.clone(), rx, waker.clone()).map_err(HealthError::Start)?;
        let published = shared.clone();
        let thread = std::thread::Builder::new()
            .name("remora-health".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run.run()));
                published.clear();
                match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "health checker stopped: epoll failed; every endpoint now counts as healthy"),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            })
            .map_err(HealthError::Start)?;
        Ok(HealthChecker {
            control,
            waker,
            handle: HealthHandle { shared },
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> HealthHandle {
        self.handle.clone()
    }

    /// Replaces the set of endpoints (on config reload or a discovery change).
    /// Endpoints that stay keep their verdict and counts; if their settings
    /// changed, the probe in flight is abandoned and a new one starts at once.
    /// New endpoints are probed at once. Nothing changes if a target is invalid.
    pub fn update(&self, targets: Vec<HealthTarget>) -> Result<(), HealthError> {
        for t in &targets {
            t.validate().map_err(|source| HealthError::Config {
                cluster: t.cluster.clone(),
                source,
            })?;
        }
        self.control
            .send(checker::Control::Update(targets))
            .map_err(|_| HealthError::Stopped)?;
        self.waker.wake();
        Ok(())
    }

    /// Stops the thread (abandoning probes in flight) and waits for it.
    pub fn stop(mut self) -> Result<(), HealthError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), HealthError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        let _ = self.control.send(checker::Control::Stop);
        self.waker.wake();
        thread.join().map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            HealthError::Panicked(what)
        })
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "health checker");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: HealthCheckKind) -> HealthCheckConfig {
        HealthCheckConfig {
            kind,
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            interval_jitter: Duration::ZERO,
        }
    }

    #[test]
    fn validation_table() {
        let ok = config(HealthCheckKind::http("/healthz"));
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(config(HealthCheckKind::Tcp).validate(), Ok(()));

        let with = |f: &dyn Fn(&mut HealthCheckConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c.validate()
        };
        let http =
            |path: &str, host: Option<&str>, expected: Vec<(u16, u16)>| HealthCheckKind::Http {
                path: path.into(),
                host: host.map(Into::into),
                expected_statuses: expected,
                retriable_statuses: vec![],
            };
        let cases: Vec<(&str, Result<(), HealthConfigError>)> = vec![
            ("zero interval", with(&|c| c.interval = Duration::ZERO)),
            (
                "zero timeout",
                with(&|c| c.timeout = Duration::from_micros(10)),
            ),
            ("zero healthy", with(&|c| c.healthy_threshold = 0)),
            ("zero unhealthy", with(&|c| c.unhealthy_threshold = 0)),
            (
                "relative path",
                with(&|c| c.kind = http("healthz", None, vec![])),
            ),
            (
                "path with space",
                with(&|c| c.kind = http("/a b", None, vec![])),
            ),
            (
                "path with CRLF",
                with(&|c| c.kind = http("/a\r\nX: y", None, vec![])),
            ),
            (
                "host with LF",
                with(&|c| c.kind = http("/", Some("a\nb"), vec![])),
            ),
            (
                "empty host",
                with(&|c| c.kind = http("/", Some(""), vec![])),
            ),
            (
                "empty range",
                with(&|c| c.kind = http("/", None, vec![(200, 200)])),
            ),
            (
                "range below 100",
                with(&|c| c.kind = http("/", None, vec![(99, 200)])),
            ),
            (
                "range past 600",
                with(&|c| c.kind = http("/", None, vec![(200, 601)])),
            ),
            (
                "fine ranges",
                with(&|c| c.kind = http("/", Some("a:1"), vec![(200, 400), (599, 600)])),
            ),
            (
                "no ranges means the default",
                with(&|c| c.kind = http("/h?x=1", None, vec![])),
            ),
        ];
        let want: &[(&str, Result<(), HealthConfigError>)] = &[
            ("zero interval", Err(HealthConfigError::Interval)),
            ("zero timeout", Err(HealthConfigError::Timeout)),
            (
                "zero healthy",
                Err(HealthConfigError::Threshold {
                    which: "healthy_threshold",
                }),
            ),
            (
                "zero unhealthy",
                Err(HealthConfigError::Threshold {
                    which: "unhealthy_threshold",
                }),
            ),
            (
                "relative path",
                Err(HealthConfigError::Path("healthz".into())),
            ),
            (
                "path with space",
                Err(HealthConfigError::Path("/a b".into())),
            ),
            (
                "path with CRLF",
                Err(HealthConfigError::Path("/a\r\nX: y".into())),
            ),
            ("host with LF", Err(HealthConfigError::Host("a\nb".into()))),
            ("empty host", Err(HealthConfigError::Host("".into()))),
            ("empty range", Err(HealthConfigError::StatusRange(200, 200))),
            (
                "range below 100",
                Err(HealthConfigError::StatusRange(99, 200)),
            ),
            (
                "range past 600",
                Err(HealthConfigError::StatusRange(200, 601)),
            ),
            ("fine ranges", Ok(())),
            ("no ranges means the default", Ok(())),
        ];
        assert_eq!(cases.len(), want.len());
        for ((name, got), (_, want)) in cases.iter().zip(want) {
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_cluster_name_that_cannot_be_a_host_header_is_refused() {
        let target = HealthTarget {
            cluster: "bad\r\nname".into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            config: Arc::new(config(HealthCheckKind::http("/"))),
        };
        assert!(matches!(target.validate(), Err(HealthConfigError::Host(_))));
        // TCP checks send no Host header.
        let tcp = HealthTarget {
            config: Arc::new(config(HealthCheckKind::Tcp)),
            ..target
        };
        assert_eq!(tcp.validate(), Ok(()));
        // Istio's cluster names are fine as they are.
        let istio = HealthTarget {
            cluster: "outbound|9080||reviews.default.svc.cluster.local".into(),
            config: Arc::new(config(HealthCheckKind::http("/"))),
            ..tcp
        };
        assert_eq!(istio.validate(), Ok(()));
    }

    #[test]
    fn view_answers_healthy_unless_listed() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let empty = HealthView::default();
        assert!(empty.is_healthy("c", a));
        let view = HealthView {
            generation: 3,
            unhealthy: HashMap::from([("c".to_string(), HashSet::from([a]))]),
        };
        assert!(!view.is_healthy("c", a));
        assert!(view.is_healthy("c", b));
        assert!(view.is_healthy("other", a));
        assert_eq!(view.unhealthy("c").collect::<Vec<_>>(), vec![a]);
        assert_eq!(view.unhealthy("other").count(), 0);
        assert_eq!(view.unhealthy_count(), 1);
        assert_eq!(view.generation(), 3);
    }
}
