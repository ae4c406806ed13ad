//! One core's state: what its tasks (accept loops, connections) borrow.
//!
//! Everything here lives on one pinned glommio executor and is `!Send`: state
//! is `Rc`/`Cell`, never locked. The only things read from outside the core
//! are atomically published immutable values (the config snapshot through
//! `ConfigHandle`). The core's control loop is `runtime::run_shard`, its
//! listeners are `listener`, one connection is `connection`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use glommio::sync::Semaphore;

use crate::access_log::CoreLog;
use crate::config::{Config, ConfigHandle};
use crate::http::rewrite::RequestIdGenerator;
use crate::net::socket::ListenOptions;
use crate::overload::{Actions, OverloadHandle};
use crate::policy::ratelimit::CoreBuckets;
use crate::stats::{CoreReport, CoreStats, Histograms, StatsHub};
use crate::upstream::control::UpstreamView;
use crate::upstream::locality::Locality;
use crate::upstream::Upstreams;

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Capture port for the pod's outbound traffic (15001).
    Outbound,
    /// Capture port for traffic to the pod (15006).
    Inbound,
    /// An explicit `[[listener]]`, by its address (stable across reloads,
    /// unlike its position in the file).
    Listener(SocketAddr),
}

impl Origin {
    /// The listener's name as logs show it (Istio's names for the capture ports).
    pub fn name(&self) -> &'static str {
        match self {
            Origin::Outbound => "virtualOutbound",
            Origin::Inbound => "virtualInbound",
            Origin::Listener(_) => "listener",
        }
    }
}

/// Facts about the host that `decide` needs but cannot look up itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// The configured IPv6 passthrough source (::6) exists and can be bound.
    pub v6_source_usable: bool,
}

/// Per-core state shared by this core's tasks.
pub struct Shard {
    pub id: usize,
    pub config: Arc<ConfigHandle>,
    pub stats: CoreStats,
    pub histograms: RefCell<Histograms>,
    pub host: HostFacts,
    /// Listeners this core accepts on right now (see `listener`).
    pub(crate) listeners: RefCell<Vec<Active>>,
    /// Set by a drain: reconcile must not open listeners again.
    pub(crate) draining: Cell<bool>,
    /// Accept loops still running (a closed listener's loop runs until its
    /// in-flight accept has come back): the drain waits for them, since
    /// such an accept may bring one more connection to serve.
    pub(crate) accept_loops: Cell<usize>,
    /// When the drain began (see [`Shard::drain_close`]).
    drain_started: Cell<Option<Instant>>,
    /// Closed when the core stops: wakes idle HTTP keep-alive connections so
    /// they close now instead of holding the drain until its deadline.
    pub(crate) stopping: Semaphore,
    /// This core's access-log buffer, if the access log is on.
    pub access_log: Option<CoreLog>,
    /// Counts by Envoy response flag (names are static: the set is bounded).
    response_flags: RefCell<HashMap<&'static str, u64>>,
    /// TLS events (see [`crate::stats::TlsStat`]).
    tls_stats: RefCell<HashMap<crate::stats::TlsStat, u64>>,
    /// Authorization decisions by policy name: allowed, denied, audited.
    rbac_stats: RefCell<HashMap<String, [u64; 3]>>,
    /// How many cores run (per-core shares of cluster-wide limits).
    pub cores: usize,
    /// The workload certificate's TLS contexts, loaded per handshake
    /// (empty without `[tls] cert_dir`).
    pub tls: crate::tls::TlsHandle,
    /// Clusters, endpoints and the keep-alive pool, as this core sees them.
    pub upstreams: Upstreams,
    /// X-Request-Id generator (L7).
    pub request_ids: RequestIdGenerator,
    /// This core's RNG state (see [`Shard::next_u64`]).
    rng: Cell<u64>,
    /// This core's local rate-limit buckets (requests per route / virtual
    /// host, connections per listener), by name or address so that they
    /// survive reloads; pruned by `Shard::prune_buckets`. Borrowed only
    /// between awaits.
    pub buckets: RefCell<CoreBuckets>,
    /// The overload manager's published state, and this core's connection
    /// count slot (see `crate::overload`).
    pub overload: OverloadHandle,
    /// The overload actions this core applies now ([`Shard::apply_overload`]).
    pub overload_actions: Cell<Actions>,
    /// Closed (and replaced) when idle connections are to be shed: idle HTTP
    /// connections wait on a clone of the current one.
    pub(crate) shed: RefCell<Rc<Semaphore>>,
    /// Why idle HTTP/1 keep-alive connections stop waiting: shedding
    /// began, or the core stops (both wake them through the deadline
    /// registry, where their idle deadlines are).
    pub(crate) idle: Rc<crate::idle::IdleSet>,
    /// Closed (and replaced) when accepting resumes after an overload.
    pub(crate) resume: RefCell<Rc<Semaphore>>,
    /// Upstream writes wait here for the work of the pass (`crate::pass`).
    pub pass: crate::pass::Pass,
}

/// A running accept loop and the switch that stops it.
pub(crate) struct Active {
    pub(crate) key: ListenKey,
    pub(crate) stop: Rc<Semaphore>,
    pub(crate) fd: RawFd,
}

/// What identifies a listener across config versions: if any part changes,
/// the old socket is closed and a new one bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenKey {
    pub origin: Origin,
    pub addr: SocketAddr,
    /// How the socket is made; a reload that changes them makes a new one.
    pub options: ListenOptions,
}

/// One bound listener of this core.
pub struct BoundListener {
    pub key: ListenKey,
    /// Owns the socket.
    pub listener: socket2::Socket,
    /// Its fd, for the accept loop and the shutdown on drain.
    pub fd: RawFd,
}

/// What a shard needs to know to start.
pub struct ShardSpec {
    pub id: usize,
    pub config: Arc<ConfigHandle>,
    pub hub: Arc<StatsHub>,
    pub host: HostFacts,
    pub access_log: Option<CoreLog>,
    /// Endpoint sets and health verdicts, from the upstream control plane.
    pub upstream: UpstreamView,
    /// How many cores run (per-core shares of cluster-wide limits).
    pub cores: usize,
    /// The workload certificate's TLS contexts (empty without `[tls]`).
    pub tls: crate::tls::TlsHandle,
    /// The overload manager's state (see `crate::overload`).
    pub overload: OverloadHandle,
}

/// Commands to a shard, sent over its control socket as 9-byte frames
/// (command byte + little-endian u64 argument). A socket rather than a shared
/// flag so an idle core sleeps in the kernel instead of polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Deposit counters and histograms in the stats hub under this generation.
    Report(u64),
    /// A new config snapshot was published: open/close listeners to match.
    Reconcile,
    /// Stop accepting; keep serving open connections.
    DrainListeners,
    /// Stop accepting, drain open connections (up to drain_timeout), exit.
    Stop,
    /// The overload manager's actions changed: apply the published ones.
    Overload,
}

impl Command {
    pub fn encode(self) -> [u8; 9] {
        let (c, arg) = match self {
            Command::Report(g) => (b'r', g),
            Command::Reconcile => (b'c', 0),
            Command::DrainListeners => (b'd', 0),
            Command::Stop => (b's', 0),
            Command::Overload => (b'o', 0),
        };
        let mut f = [0u8; 9];
        f[0] = c;
        f[1..].copy_from_slice(&arg.to_le_bytes());
        f
    }

    pub fn decode(f: [u8; 9]) -> Option<Command> {
        let mut arg = [0u8; 8];
        arg.copy_from_slice(&f[1..]);
        let arg = u64::from_le_bytes(arg);
        match f[0] {
            b'r' => Some(Command::Report(arg)),
            b'c' => Some(Command::Reconcile),
            b'd' => Some(Command::DrainListeners),
            b's' => Some(Command::Stop),
            b'o' => Some(Command::Overload),
            _ => None,
        }
    }
}

impl Shard {
    /// A per-core fresh shard for `spec` (no listeners yet); takes its
    /// access-log buffer.
    pub fn new(spec: &mut ShardSpec) -> Shard {
        let mut seed = [0u8; 8];
        let seed = match getrandom::getrandom(&mut seed) {
            Ok(()) => u64::from_ne_bytes(seed),
            Err(_) => 0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()),
        };
        Shard {
            id: spec.id,
            config: spec.config.clone(),
            stats: CoreStats::default(),
            histograms: RefCell::new(Histograms::default()),
            host: spec.host,
            listeners: RefCell::new(Vec::new()),
            draining: Cell::new(false),
            accept_loops: Cell::new(0),
            drain_started: Cell::new(None),
            stopping: Semaphore::new(0),
            access_log: spec.access_log.take(),
            response_flags: RefCell::new(HashMap::new()),
            tls_stats: RefCell::new(HashMap::new()),
            rbac_stats: RefCell::new(HashMap::new()),
            upstreams: Upstreams::new(
                spec.upstream.clone(),
                Locality::parse(&spec.config.current().config.runtime.locality),
                seed,
            ),
            cores: spec.cores,
            tls: spec.tls.clone(),
            request_ids: RequestIdGenerator::new(),
            rng: Cell::new(seed | (1 + spec.id as u64)),
            buckets: RefCell::default(),
            overload: spec.overload.clone(),
            overload_actions: Cell::new(Actions::default()),
            shed: RefCell::new(Rc::new(Semaphore::new(0))),
            idle: Default::default(),
            resume: RefCell::new(Rc::new(Semaphore::new(0))),
            pass: crate::pass::Pass::new(),
        }
    }

    /// Takes the overload manager's published actions: wakes idle
    /// connections to close when shedding begins, and the accept loops when
    /// accepting may resume.
    pub(crate) fn apply_overload(&self) {
        let new = self.overload.current().actions;
        let old = self.overload_actions.replace(new);
        if new.shed_idle_connections && !old.shed_idle_connections {
            self.shed.replace(Rc::new(Semaphore::new(0))).close();
            self.idle.shed();
        }
        if old.stop_accepting_connections && !new.stop_accepting_connections {
            self.resume.replace(Rc::new(Semaphore::new(0))).close();
        }
        if new != old {
            tracing::info!(core = self.id, actions = ?new, "overload actions changed");
        }
    }

    /// A connection opened or closed: the count, and this core's slot of it
    /// for the overload manager.
    pub(crate) fn count_connection(&self, opened: bool) {
        if opened {
            CoreStats::inc(&self.stats.downstream_cx_active);
        } else {
            CoreStats::dec(&self.stats.downstream_cx_active);
        }
        self.overload
            .set_connections(self.id, self.stats.downstream_cx_active.get());
    }

    /// Drops the rate-limit buckets of limits that `config` no longer has
    /// (a bucket whose limit changed is replaced on its next use instead).
    pub(crate) fn prune_buckets(&self, config: &Config) {
        let mut b = self.buckets.borrow_mut();
        b.connections.retain(|addr| {
            config
                .listeners
                .iter()
                .any(|l| l.address == *addr && l.connection_rate_limit.is_some())
        });
        let hosts = &config.routes.table.virtual_hosts;
        b.requests.retain(|vh, route| {
            hosts
                .iter()
                .filter(|h| *h.name == *vh)
                .any(|h| match route {
                    None => h.rate_limit.is_some(),
                    Some(r) => h
                        .routes
                        .iter()
                        .any(|x| *x.name == *r && x.rate_limit.is_some()),
                })
        });
    }

    /// A random number from this core's generator.
    pub fn next_u64(&self) -> u64 {
        let (x, out) = xorshift64star(self.rng.get());
        self.rng.set(x);
        out
    }

    /// Counts one occurrence of an Envoy response flag.
    pub(crate) fn count_flag(&self, flag: &'static str) {
        *self.response_flags.borrow_mut().entry(flag).or_default() += 1;
    }

    /// Counts one TLS event (see [`crate::stats::TlsStat`]).
    pub(crate) fn count_tls(&self, side: &'static str, kind: &'static str, value: &'static str) {
        *self
            .tls_stats
            .borrow_mut()
            .entry((side, kind, value))
            .or_default() += 1;
    }

    /// Counts an upstream TLS handshake's outcome; the stream if it succeeded.
    pub(crate) fn upstream_handshake(
        &self,
        r: Result<
            (crate::net::Stream, crate::net::stream::TlsInfo),
            crate::upstream::tls::OriginateError,
        >,
    ) -> Option<crate::net::Stream> {
        match r {
            Ok((s, info)) => {
                self.count_tls("upstream", "handshake", "");
                self.count_tls("upstream", "version", info.version);
                self.count_tls("upstream", "cipher", info.cipher);
                if info.resumed {
                    self.count_tls("upstream", "session_reused", "");
                }
                Some(s)
            }
            Err(e) => {
                self.count_tls("upstream", "failure", e.reason());
                tracing::debug!(error = %e, "upstream TLS handshake failed");
                None
            }
        }
    }

    /// Counts one authorization decision of `policy`.
    pub(crate) fn count_rbac(&self, policy: &str, result: RbacResult) {
        let mut m = self.rbac_stats.borrow_mut();
        // Look up before inserting: the name is copied once per policy.
        match m.get_mut(policy) {
            Some(n) => n[result as usize] += 1,
            None => {
                let mut n = [0; 3];
                n[result as usize] = 1;
                m.insert(policy.to_string(), n);
            }
        }
    }

    pub(crate) fn start_drain(&self) {
        self.draining.set(true);
        if self.drain_started.get().is_none() {
            self.drain_started.set(Some(Instant::now()));
        }
    }

    /// During a drain, whether the HTTP response being sent should carry
    /// `connection: close`. The chance rises linearly from 0 when the drain
    /// starts to 1 at 90% of `drain_timeout`, so busy keep-alive clients are
    /// sent away spread over the drain period rather than all at once (Envoy's
    /// gradual drain), and all of them before the deadline.
    pub(crate) fn drain_close(&self) -> bool {
        let Some(start) = self.drain_started.get() else {
            return false;
        };
        let window = self
            .config
            .current()
            .config
            .runtime
            .drain_timeout
            .mul_f64(0.9)
            .as_secs_f64();
        let elapsed = start.elapsed().as_secs_f64();
        if elapsed >= window {
            return true;
        }
        let roll = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        roll < elapsed / window
    }

    pub(crate) fn report(&self) -> CoreReport {
        if let Some(log) = &self.access_log {
            self.stats.access_log_dropped.set(log.dropped.get());
        }
        // Counted by the ring shim on this core's thread (`net::batch`).
        self.stats
            .loop_batch_waits
            .set(crate::net::batch::waits().0);
        self.stats
            .loop_sleep_batches
            .set(crate::net::batch::sleep_batches());
        CoreReport {
            counters: self.stats.snapshot(),
            histograms: self.histograms.borrow().clone(),
            endpoints: self.upstreams.endpoint_stats().into_iter().collect(),
            clusters: self.upstreams.cluster_reports(),
            response_flags: self
                .response_flags
                .borrow()
                .iter()
                .map(|(f, n)| (*f, *n))
                .collect(),
            tls: self
                .tls_stats
                .borrow()
                .iter()
                .map(|(k, n)| (*k, *n))
                .collect(),
            rbac: self
                .rbac_stats
                .borrow()
                .iter()
                .flat_map(|(p, n)| {
                    RbacResult::ALL
                        .iter()
                        .filter(|r| n[**r as usize] > 0)
                        .map(|r| ((p.clone(), r.as_str()), n[*r as usize]))
                })
                .collect(),
        }
    }
}

/// An authorization decision, as counted per policy (Envoy's rbac filter
/// stats: `allowed`, `denied`, and `shadow_*` for AUDIT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RbacResult {
    Allowed = 0,
    Denied = 1,
    Audited = 2,
}

impl RbacResult {
    const ALL: [RbacResult; 3] = [RbacResult::Allowed, RbacResult::Denied, RbacResult::Audited];

    pub fn as_str(self) -> &'static str {
        match self {
            RbacResult::Allowed => "allowed",
            RbacResult::Denied => "denied",
            RbacResult::Audited => "audited",
        }
    }
}

/// One step of xorshift64*: fast, per core, good enough for weights,
/// sampling and jitter (not for secrets). Returns (new state, output).
fn xorshift64star(mut x: u64) -> (u64, u64) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    (x, x.wrapping_mul(0x2545_f491_4f6c_dd1d))
}

#[cfg(test)]
mod tests {
    #[test]
    fn rng_is_not_constant() {
        let mut x = 1u64;
        let outs: Vec<u64> = (0..4)
            .map(|_| {
                let (s, o) = super::xorshift64star(x);
                x = s;
                o
            })
            .collect();
        assert!(outs.windows(2).all(|w| w[0] != w[1]));
    }
}
