//! One core's share of the proxy: its listeners, its connections, its counters.
//!
//! Everything here runs on one pinned glommio executor and is `!Send`: state is
//! `Rc`/`Cell`, never locked. The only thing read from outside the core is the
//! config snapshot (`ConfigHandle`), loaded once per accepted connection.
//!
//! One connection, top to bottom ([`serve`]):
//! accept → original destination → [`decide`] (pure) → connect upstream → `l4::forward`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream, UnixStream};
use glommio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::access_log::{self, CoreLog};
use crate::config::{Config, ConfigHandle, Forwarding, Protocol};
use crate::l4::{self, Ending};
use crate::net::{self, socket};
use crate::stats::{CoreReport, CoreStats, EndpointStats, Histograms, StatsHub};

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

/// Where a connection goes, decided before any I/O.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Forward(Forward),
    /// Close the connection; counted, never forwarded.
    Refuse(Refusal),
}

/// The plan for one forwarded connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub target: Target,
    /// Source address to bind before connecting (inbound passthrough).
    pub source: Option<IpAddr>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub forwarding: Forwarding,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The connection's original destination (or its local rewrite).
    Addr(SocketAddr),
    /// A configured cluster, by index: endpoints are tried round-robin.
    Cluster(usize),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The original destination is one of Remora's own listeners: the connection
    /// was not redirected (someone dialled the port directly) or would loop.
    SelfLoop(SocketAddr),
    /// A capture port got a connection whose original destination is unknown.
    NoOriginalDst,
    /// The listener that accepted it is no longer in the config.
    NoListener(SocketAddr),
}

/// Facts about the host that `decide` needs but cannot look up itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostFacts {
    /// The configured IPv6 passthrough source (::6) exists and can be bound.
    pub v6_source_usable: bool,
}

/// The routing decision for one accepted connection: a pure function of the
/// listener, the addresses and the config, so it is tested as a table.
pub fn decide(
    origin: Origin,
    orig_dst: Option<SocketAddr>,
    local: SocketAddr,
    config: &Config,
    host: HostFacts,
) -> Decision {
    let capture = match origin {
        Origin::Listener(addr) => {
            // A listener removed by a reload may still accept a last connection.
            let Some(l) = config.listeners.iter().find(|l| l.address == addr) else {
                return Decision::Refuse(Refusal::NoListener(addr));
            };
            return Decision::Forward(Forward {
                target: Target::Cluster(l.cluster),
                source: None,
                connect_timeout: config.clusters[l.cluster].connect_timeout,
                idle_timeout: l.idle_timeout,
                forwarding: l.forwarding,
            });
        }
        Origin::Outbound | Origin::Inbound => match &config.capture {
            Some(c) => c,
            None => return Decision::Refuse(Refusal::NoOriginalDst),
        },
    };
    let Some(dst) = orig_dst else {
        return Decision::Refuse(Refusal::NoOriginalDst);
    };
    let own_port = config.own_ports().contains(&dst.port());
    let local_ip = dst.ip().is_loopback() || dst.ip().is_unspecified() || dst.ip() == local.ip();
    // In REDIRECT mode an unredirected connection reports its own local address.
    // In TPROXY mode the local address *is* the original destination, so only the
    // port check applies.
    if (!capture.transparent && dst == local) || (own_port && local_ip) {
        return Decision::Refuse(Refusal::SelfLoop(dst));
    }
    let (target, source) = match origin {
        Origin::Inbound => match dst {
            SocketAddr::V4(_) => (dst, Some(IpAddr::V4(capture.inbound_source_v4))),
            SocketAddr::V6(_) if host.v6_source_usable => {
                (dst, Some(IpAddr::V6(capture.inbound_source_v6)))
            }
            // No ::6 on lo: reach the app on [::1], which Istio's rules let through.
            SocketAddr::V6(_) => (
                SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), dst.port()),
                None,
            ),
        },
        // Outbound goes where it was headed (listeners returned above).
        Origin::Outbound | Origin::Listener(_) => (dst, None),
    };
    Decision::Forward(Forward {
        target: Target::Addr(target),
        source,
        connect_timeout: capture.connect_timeout,
        idle_timeout: capture.idle_timeout,
        forwarding: capture.forwarding,
    })
}

/// Per-core state shared by this core's tasks.
pub struct Shard {
    pub id: usize,
    pub config: Arc<ConfigHandle>,
    pub stats: CoreStats,
    pub histograms: RefCell<Histograms>,
    pub host: HostFacts,
    /// Round-robin position per cluster name.
    pub(crate) rr: RefCell<HashMap<String, usize>>,
    /// Listeners this core accepts on right now.
    listeners: RefCell<Vec<Active>>,
    /// Set by a drain: reconcile must not open listeners again.
    pub(crate) draining: Cell<bool>,
    /// When the drain began (see [`Shard::drain_close`]).
    drain_started: Cell<Option<Instant>>,
    /// Closed when the core stops: wakes idle HTTP keep-alive connections so
    /// they close now instead of holding the drain until its deadline.
    pub(crate) stopping: Semaphore,
    /// Per cluster endpoint counters (pruned to the config on reconcile).
    pub(crate) endpoints: RefCell<HashMap<SocketAddr, EndpointStats>>,
    /// This core's access-log buffer, if the access log is on.
    pub access_log: Option<CoreLog>,
    /// Counts by Envoy response flag (names are static: the set is bounded).
    response_flags: RefCell<HashMap<&'static str, u64>>,
    /// HTTP path: upstream keep-alive pool, request ids, RNG.
    pub l7: crate::l7::CoreState,
}

/// Whether anything reads a finished request's details (method, path,
/// authority, request id, route and cluster names): the access log, or the
/// debug line of [`log_request`]. When nothing does, the L7 path leaves those
/// fields of its `RequestLog` empty instead of building strings per request.
pub fn request_details_wanted(shard: &Shard) -> bool {
    // Same module as the `debug!` below, so the same filter answers.
    shard.access_log.is_some() || tracing::enabled!(tracing::Level::DEBUG)
}

/// The one sink for finished HTTP requests: per-core counters, the latency
/// histogram and a debug line. (The access log plugs in here.)
pub fn log_request(shard: &Shard, log: &crate::l7::RequestLog) {
    let s = &shard.stats;
    CoreStats::inc(&s.rq_total);
    s.upstream_rq_total
        .set(s.upstream_rq_total.get() + u64::from(log.attempts));
    match log.status {
        100..=199 => CoreStats::inc(&s.rq_1xx),
        200..=299 => CoreStats::inc(&s.rq_2xx),
        300..=399 => CoreStats::inc(&s.rq_3xx),
        400..=499 => CoreStats::inc(&s.rq_4xx),
        500..=599 => CoreStats::inc(&s.rq_5xx),
        _ => {}
    }
    shard
        .histograms
        .borrow_mut()
        .rq_time_us
        .saturating_record((log.duration.as_micros() as u64).max(1));
    for flag in log.flags.names() {
        shard.count_flag(flag);
    }
    debug!(
        method = %log.method,
        path = %log.path,
        status = log.status,
        flags = %log.flags,
        listener = %log.listener,
        upstream = ?log.upstream_host,
        attempts = log.attempts,
        bytes_sent = log.bytes_sent,
        duration_us = log.duration.as_micros() as u64,
        request_id = log.request_id.as_deref().unwrap_or("-"),
        "request"
    );
    if let Some(al) = &shard.access_log {
        let flags = log.flags.to_string();
        al.record(&access_log::Entry {
            start_time: Some(log.start_time),
            protocol: log.protocol,
            method: Some(&log.method),
            path: Some(&log.path),
            response_code: log.status,
            response_flags: &flags,
            bytes_received: log.bytes_received,
            bytes_sent: log.bytes_sent,
            duration: log.duration,
            upstream_host: log.upstream_host,
            downstream_remote: log.downstream_remote_address,
            downstream_local: log.downstream_local_address,
            listener: &log.listener,
            request_id: log.request_id.as_deref(),
            authority: Some(&log.authority),
            ..Default::default()
        });
    }
}

/// A running accept loop and the switch that stops it.
struct Active {
    key: ListenKey,
    stop: Rc<Semaphore>,
    fd: RawFd,
}

/// What identifies a listener across config versions: if any part changes,
/// the old socket is closed and a new one bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenKey {
    pub origin: Origin,
    pub addr: SocketAddr,
    pub transparent: bool,
}

/// One bound listener of this core.
pub struct BoundListener {
    pub key: ListenKey,
    pub listener: TcpListener,
    /// glommio's listener exposes no fd; kept to shut it down on drain.
    pub fd: RawFd,
}

/// What a shard needs to know to start.
pub struct ShardSpec {
    pub id: usize,
    pub config: Arc<ConfigHandle>,
    pub hub: Arc<StatsHub>,
    pub host: HostFacts,
    pub access_log: Option<CoreLog>,
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
}

impl Command {
    pub fn encode(self) -> [u8; 9] {
        let (c, arg) = match self {
            Command::Report(g) => (b'r', g),
            Command::Reconcile => (b'c', 0),
            Command::DrainListeners => (b'd', 0),
            Command::Stop => (b's', 0),
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
            _ => None,
        }
    }
}

/// Addresses a config asks the shards to listen on.
pub fn listen_keys(config: &Config) -> Vec<ListenKey> {
    let mut v = Vec::new();
    if let Some(c) = &config.capture {
        for (origin, port) in [
            (Origin::Outbound, c.outbound_port),
            (Origin::Inbound, c.inbound_port),
        ] {
            if c.ipv4 {
                v.push(ListenKey {
                    origin,
                    addr: SocketAddr::from(([0, 0, 0, 0], port)),
                    transparent: c.transparent,
                });
            }
            if c.ipv6 {
                v.push(ListenKey {
                    origin,
                    addr: SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                    transparent: c.transparent,
                });
            }
        }
    }
    for l in &config.listeners {
        v.push(ListenKey {
            origin: Origin::Listener(l.address),
            addr: l.address,
            transparent: false,
        });
    }
    v
}

/// Binds one listener. Called on the executor thread that will accept on it.
pub fn bind(key: &ListenKey) -> io::Result<BoundListener> {
    let (listener, fd) = socket::listen(key.addr, key.transparent)?;
    Ok(BoundListener {
        key: key.clone(),
        listener,
        fd,
    })
}

/// Binds every listener a config asks for.
pub fn bind_all(config: &Config) -> Result<Vec<BoundListener>, (SocketAddr, io::Error)> {
    listen_keys(config)
        .iter()
        .map(|k| bind(k).map_err(|e| (k.addr, e)))
        .collect()
}

impl Shard {
    /// Counts one occurrence of an Envoy response flag.
    pub(crate) fn count_flag(&self, flag: &'static str) {
        *self.response_flags.borrow_mut().entry(flag).or_default() += 1;
    }

    fn start_drain(&self) {
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
        let roll = (self.l7.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        roll < elapsed / window
    }

    fn report(&self) -> CoreReport {
        if let Some(log) = &self.access_log {
            self.stats.access_log_dropped.set(log.dropped.get());
        }
        CoreReport {
            counters: self.stats.snapshot(),
            histograms: self.histograms.borrow().clone(),
            endpoints: self
                .endpoints
                .borrow()
                .iter()
                .map(|(a, e)| (*a, *e))
                .collect(),
            response_flags: self
                .response_flags
                .borrow()
                .iter()
                .map(|(f, n)| (*f, *n))
                .collect(),
        }
    }

    /// Starts an accept loop for `l`; it runs until its stop switch is closed.
    fn start_listener(self: &Rc<Self>, l: BoundListener) {
        let stop = Rc::new(Semaphore::new(0));
        self.listeners.borrow_mut().push(Active {
            key: l.key.clone(),
            stop: stop.clone(),
            fd: l.fd,
        });
        let shard = self.clone();
        glommio::spawn_local(async move {
            future::or(accept_loop(shard, l), async move {
                let _ = stop.acquire(1).await;
            })
            .await
        })
        .detach();
    }

    fn close_listeners(&self, keep: impl Fn(&ListenKey) -> bool) {
        self.listeners.borrow_mut().retain(|a| {
            if keep(&a.key) {
                true
            } else {
                // Closing the fd is not enough: the in-flight ring ACCEPT holds a
                // reference and the kernel would keep completing handshakes.
                // shutdown() on a listening socket stops listening at once, before
                // this returns. SAFETY: the accept loop still owns the listener.
                unsafe { libc::shutdown(a.fd, libc::SHUT_RDWR) };
                a.stop.close();
                info!(core = self.id, addr = %a.key.addr, origin = ?a.key.origin, "listener closed");
                false
            }
        });
    }

    /// Makes this core's listeners match the current snapshot. New addresses
    /// are bound, removed ones closed; connections already accepted carry on.
    fn reconcile(self: &Rc<Self>) {
        if self.draining.get() {
            return;
        }
        let snapshot = self.config.current();
        let configured: Vec<SocketAddr> = snapshot
            .config
            .clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().copied())
            .collect();
        self.endpoints
            .borrow_mut()
            .retain(|a, e| e.cx_active > 0 || configured.contains(a));
        let want = listen_keys(&snapshot.config);
        self.close_listeners(|k| want.contains(k));
        let have: Vec<ListenKey> = self
            .listeners
            .borrow()
            .iter()
            .map(|a| a.key.clone())
            .collect();
        for key in want.iter().filter(|k| !have.contains(k)) {
            match bind(key) {
                Ok(l) => {
                    info!(core = self.id, addr = %key.addr, origin = ?key.origin, "listener opened");
                    self.start_listener(l);
                }
                // The reload path test-binds new addresses before publishing, so
                // this is a race with another process taking the port.
                Err(e) => {
                    error!(core = self.id, addr = %key.addr, error = %e, "cannot open listener")
                }
            }
        }
    }
}

/// Runs one core until told to stop and its connections have drained;
/// returns its final report.
pub async fn run(
    spec: ShardSpec,
    listeners: Vec<BoundListener>,
    control: UnixStream,
) -> CoreReport {
    let shard = Rc::new(Shard {
        id: spec.id,
        config: spec.config,
        stats: CoreStats::default(),
        histograms: RefCell::new(Histograms::default()),
        host: spec.host,
        rr: Default::default(),
        listeners: RefCell::new(Vec::new()),
        draining: Cell::new(false),
        drain_started: Cell::new(None),
        stopping: Semaphore::new(0),
        endpoints: RefCell::new(HashMap::new()),
        access_log: spec.access_log,
        response_flags: RefCell::new(HashMap::new()),
        l7: Default::default(),
    });
    if shard.access_log.is_some() {
        // Envoy flushes access logs on a timer too; this wakes the core once a
        // second only when the access log is on.
        let s = shard.clone();
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(Duration::from_secs(1)).await;
                if let Some(log) = &s.access_log {
                    log.flush();
                }
            }
        })
        .detach();
    }
    for l in listeners {
        shard.start_listener(l);
    }
    let mut control = control;
    loop {
        let mut frame = [0u8; 9];
        // EOF or an error on the control socket means the process is going away.
        let cmd = match control.read_exact(&mut frame).await {
            Ok(()) => Command::decode(frame),
            Err(_) => Some(Command::Stop),
        };
        match cmd {
            Some(Command::Report(generation)) => {
                spec.hub.deposit(shard.id, generation, shard.report())
            }
            Some(Command::Reconcile) => shard.reconcile(),
            Some(Command::DrainListeners) => {
                shard.start_drain();
                shard.close_listeners(|_| false);
            }
            Some(Command::Stop) => break,
            None => warn!(core = shard.id, "unknown control frame ignored"),
        }
    }
    shard.start_drain();
    shard.close_listeners(|_| false);
    shard.stopping.close();
    // Listeners are closed now: drain what is open, up to the deadline.
    let drain = shard.config.current().config.runtime.drain_timeout;
    let deadline = Instant::now() + drain;
    let open = shard.stats.downstream_cx_active.get();
    if open > 0 {
        info!(
            core = shard.id,
            open,
            ?drain,
            "listeners closed; draining open connections"
        );
    }
    while shard.stats.downstream_cx_active.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let left = shard.stats.downstream_cx_active.get();
    if left > 0 {
        warn!(
            core = shard.id,
            left, "drain timeout reached; closing open connections"
        );
    }
    if let Some(log) = &shard.access_log {
        log.flush();
    }
    shard.report()
}

/// Accepts forever. Resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) is
/// counted and backed off from, so the loop neither spins nor dies.
async fn accept_loop(shard: Rc<Shard>, l: BoundListener) {
    let mut backoff = Duration::ZERO;
    let mut last_warn: Option<Instant> = None;
    loop {
        match l.listener.accept().await {
            Ok(stream) => {
                backoff = Duration::ZERO;
                CoreStats::inc(&shard.stats.downstream_cx_total);
                let limit = shard
                    .config
                    .current()
                    .config
                    .runtime
                    .max_connections_per_core;
                if shard.stats.downstream_cx_active.get() as usize >= limit {
                    CoreStats::inc(&shard.stats.downstream_cx_overflow);
                    debug!(
                        core = shard.id,
                        limit, "connection limit reached; closing new connection"
                    );
                    continue;
                }
                CoreStats::inc(&shard.stats.downstream_cx_active);
                let shard = shard.clone();
                let (origin, ipv6) = (l.key.origin, l.key.addr.is_ipv6());
                glommio::spawn_local(async move {
                    serve(&shard, stream, origin, ipv6).await;
                    CoreStats::dec(&shard.stats.downstream_cx_active);
                })
                .detach();
            }
            Err(e) => {
                let e: io::Error = e.into();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    // The listener was shut down (drain, or a reload removed
                    // it) and its stop switch is closing this loop: not an
                    // error, and nothing more will be accepted here.
                    future::pending::<()>().await;
                }
                CoreStats::inc(&shard.stats.accept_errors);
                let exhausted = matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                backoff = if exhausted {
                    (backoff * 2).clamp(Duration::from_millis(5), Duration::from_secs(1))
                } else {
                    Duration::from_millis(1)
                };
                if last_warn.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    warn!(core = shard.id, error = %e, ?backoff, "accept failed; backing off");
                    last_warn = Some(Instant::now());
                }
                glommio::timer::sleep(backoff).await;
            }
        }
    }
}

/// One accepted connection, start to finish.
async fn serve(shard: &Shard, down: TcpStream, origin: Origin, ipv6: bool) {
    let started = Instant::now();
    let snapshot = shard.config.current();
    let config = &snapshot.config;
    let fd = down.as_raw_fd();
    let Ok(local) = down.local_addr() else { return };
    let peer = down.peer_addr().ok();
    // REDIRECTed connections (always the case for outbound, also in Istio's
    // TPROXY mode) carry their original destination in conntrack. Without a NAT
    // entry (a TPROXYed connection, or one that was not redirected at all) the
    // kernel answers with the local address, or ENOENT when conntrack is not
    // loaded: both mean "the local address is the destination".
    let orig_dst = match origin {
        Origin::Listener(_) => None,
        _ => Some(net::original_dst(fd, ipv6).unwrap_or(local)),
    };
    let log = |flags: &'static str, up: Option<SocketAddr>, rx: u64, tx: u64| {
        if flags != "-" {
            shard.count_flag(flags);
        }
        if let Some(l) = &shard.access_log {
            l.record(&access_log::Entry {
                start_time: Some(std::time::SystemTime::now() - started.elapsed()),
                protocol: "TCP",
                response_flags: flags,
                bytes_received: rx,
                bytes_sent: tx,
                duration: started.elapsed(),
                upstream_host: up,
                downstream_remote: peer,
                downstream_local: Some(local),
                listener: origin.name(),
                ..Default::default()
            });
        }
    };
    let plan = match decide(origin, orig_dst, local, config, shard.host) {
        Decision::Forward(f) => f,
        Decision::Refuse(Refusal::SelfLoop(dst)) => {
            CoreStats::inc(&shard.stats.downstream_cx_loop_refused);
            warn!(?peer, %local, %dst, "refusing connection: its destination is Remora itself (not redirected, or a loop)");
            log("NR", None, 0, 0);
            return;
        }
        Decision::Refuse(why) => {
            CoreStats::inc(&shard.stats.downstream_cx_no_route);
            debug!(?peer, %local, ?why, "refusing connection: no route");
            log("NR", None, 0, 0);
            return;
        }
    };
    let protocol = match (origin, &config.capture, &plan.target) {
        (Origin::Listener(addr), _, _) => config
            .listeners
            .iter()
            .find(|l| l.address == addr)
            .map_or(Protocol::Tcp, |l| l.protocol),
        (_, Some(c), Target::Addr(dst)) => c.protocol_for(orig_dst.unwrap_or(*dst).port()),
        _ => Protocol::Tcp,
    };
    let detect_timeout = config
        .capture
        .as_ref()
        .map_or(Duration::from_millis(100), |c| c.detect_timeout);
    // Detection peeks through the ring, which waits only on a blocking-mode
    // socket; so it runs before the switch to O_NONBLOCK.
    let http = match protocol {
        Protocol::Http => true,
        Protocol::Tcp => false,
        Protocol::Auto => crate::l7::detect(&down, detect_timeout).await,
    };
    if let Err(e) = socket::set_nonblocking(fd) {
        warn!(error = %e, "cannot make downstream socket non-blocking");
        return;
    }
    let _ = down.set_nodelay(true);
    if http {
        let fallback = match &plan.target {
            Target::Addr(dst) => crate::l7::Fallback::Passthrough {
                dst: *dst,
                source: plan.source,
                connect_timeout: plan.connect_timeout,
            },
            Target::Cluster(_) => crate::l7::Fallback::NotFound,
        };
        let listener: Rc<str> = match origin {
            Origin::Outbound => "outbound".into(),
            Origin::Inbound => "inbound".into(),
            Origin::Listener(addr) => config
                .listeners
                .iter()
                .find(|l| l.address == addr)
                .map_or_else(|| addr.to_string().into(), |l| l.name.as_str().into()),
        };
        let ctx = crate::l7::Context {
            listener,
            peer,
            local: Some(local),
            fallback,
            forwarding: plan.forwarding,
            tunnel_idle_timeout: plan.idle_timeout,
        };
        // Boxed: the L7 state machine is large, and inlined it would make every
        // connection's task (L4 ones too) that large.
        Box::pin(crate::l7::serve(shard, down, snapshot.clone(), ctx)).await;
        let micros = started.elapsed().as_micros() as u64;
        shard
            .histograms
            .borrow_mut()
            .downstream_cx_length_us
            .saturating_record(micros.max(1));
        return;
    }
    let mut down = down;
    let (mut up, endpoint) = match connect(shard, &snapshot.config, &plan).await {
        Ok(up) => up,
        Err(_) => {
            // Tell the client the way a closed port would: a reset.
            socket::set_linger_zero(fd);
            log("UF", None, 0, 0);
            return;
        }
    };
    CoreStats::inc(&shard.stats.upstream_cx_total);
    let upstream_addr = up.peer_addr().ok();
    let report = l4::forward(&mut down, &mut up, plan.forwarding, plan.idle_timeout).await;
    let s = &shard.stats;
    s.bytes_upstream
        .set(s.bytes_upstream.get() + report.bytes_up);
    s.bytes_downstream
        .set(s.bytes_downstream.get() + report.bytes_down);
    match report.ending {
        Ending::Closed => {}
        Ending::Reset(_) => CoreStats::inc(&s.cx_reset),
        Ending::IdleTimeout => CoreStats::inc(&s.cx_idle_timeout),
    }
    if let Some(ep) = endpoint {
        if let Some(e) = shard.endpoints.borrow_mut().get_mut(&ep) {
            e.cx_active = e.cx_active.saturating_sub(1);
        }
    }
    let micros = started.elapsed().as_micros() as u64;
    shard
        .histograms
        .borrow_mut()
        .downstream_cx_length_us
        .saturating_record(micros.max(1));
    let flags = match report.ending {
        Ending::Closed => "-",
        Ending::Reset(l4::Side::Downstream) => "DC",
        Ending::Reset(l4::Side::Upstream) => "UC",
        Ending::IdleTimeout => "SI",
    };
    log(flags, upstream_addr, report.bytes_up, report.bytes_down);
    debug!(?peer, ?origin, up = report.bytes_up, down = report.bytes_down, ending = ?report.ending, "connection closed");
}

/// Connects to the plan's target; for a cluster, tries each endpoint once,
/// starting at this core's round-robin position.
/// `config` must be the snapshot `plan` was decided from: a cluster index
/// means nothing in another version.
async fn connect(
    shard: &Shard,
    config: &Config,
    plan: &Forward,
) -> io::Result<(TcpStream, Option<SocketAddr>)> {
    let tracked = matches!(plan.target, Target::Cluster(_));
    let endpoints: Vec<SocketAddr> = match &plan.target {
        Target::Addr(a) => vec![*a],
        Target::Cluster(i) => {
            let cluster = &config.clusters[*i];
            let eps = &cluster.endpoints;
            let mut rr = shard.rr.borrow_mut();
            let pos = match rr.get_mut(&cluster.name) {
                Some(p) => p,
                None => rr.entry(cluster.name.clone()).or_insert(0),
            };
            let start = *pos % eps.len().max(1);
            *pos = pos.wrapping_add(1);
            eps[start..].iter().chain(&eps[..start]).copied().collect()
        }
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no endpoints");
    for ep in endpoints {
        let result = socket::connect(ep, plan.source, plan.connect_timeout).await;
        if tracked {
            let mut eps = shard.endpoints.borrow_mut();
            let e = eps.entry(ep).or_default();
            match &result {
                Ok(_) => {
                    e.cx_total += 1;
                    e.cx_active += 1;
                }
                Err(_) => e.cx_connect_fail += 1,
            }
        }
        match result {
            Ok(s) => return Ok((s, tracked.then_some(ep))),
            Err(e) => {
                if e.kind() == io::ErrorKind::TimedOut {
                    CoreStats::inc(&shard.stats.upstream_cx_connect_timeout);
                } else {
                    CoreStats::inc(&shard.stats.upstream_cx_connect_fail);
                }
                debug!(endpoint = %ep, error = %e, "upstream connect failed");
                last = e;
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn cfg(extra: &str) -> Config {
        Config::from_toml(extra, None).unwrap()
    }

    const FACTS: HostFacts = HostFacts {
        v6_source_usable: true,
    };

    fn fwd(d: Decision) -> Forward {
        match d {
            Decision::Forward(f) => f,
            other => panic!("expected forward, got {other:?}"),
        }
    }

    #[test]
    fn decision_table() {
        let c = cfg("");
        let l15001: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        let l15006: SocketAddr = "10.0.0.5:15006".parse().unwrap();
        let app: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let remote: SocketAddr = "10.0.0.9:80".parse().unwrap();

        // Outbound: to the original destination, no source binding.
        let f = fwd(decide(Origin::Outbound, Some(remote), l15001, &c, FACTS));
        assert_eq!((f.target, f.source), (Target::Addr(remote), None));

        // Inbound: to the app, from 127.0.0.6.
        let f = fwd(decide(Origin::Inbound, Some(app), l15006, &c, FACTS));
        assert_eq!(f.target, Target::Addr(app));
        assert_eq!(f.source, Some("127.0.0.6".parse().unwrap()));

        // Inbound IPv6 with and without ::6.
        let app6: SocketAddr = "[fd00::5]:8080".parse().unwrap();
        let l6: SocketAddr = "[fd00::5]:15006".parse().unwrap();
        let f = fwd(decide(Origin::Inbound, Some(app6), l6, &c, FACTS));
        assert_eq!(f.source, Some("::6".parse().unwrap()));
        let f = fwd(decide(
            Origin::Inbound,
            Some(app6),
            l6,
            &c,
            HostFacts {
                v6_source_usable: false,
            },
        ));
        assert_eq!(
            (f.target, f.source),
            (Target::Addr("[::1]:8080".parse().unwrap()), None)
        );

        // Not redirected: SO_ORIGINAL_DST echoes the local address.
        assert_eq!(
            decide(Origin::Outbound, Some(l15001), l15001, &c, FACTS),
            Decision::Refuse(Refusal::SelfLoop(l15001))
        );
        // Redirected to one of our own ports on a local address: a loop.
        let own: SocketAddr = "127.0.0.1:15006".parse().unwrap();
        assert_eq!(
            decide(Origin::Outbound, Some(own), l15001, &c, FACTS),
            Decision::Refuse(Refusal::SelfLoop(own))
        );
        // Our port number on a *remote* host is fine.
        let remote15006: SocketAddr = "10.0.0.9:15006".parse().unwrap();
        fwd(decide(
            Origin::Outbound,
            Some(remote15006),
            l15001,
            &c,
            FACTS,
        ));
        // No original destination at all.
        assert_eq!(
            decide(Origin::Outbound, None, l15001, &c, FACTS),
            Decision::Refuse(Refusal::NoOriginalDst)
        );
    }

    #[test]
    fn tproxy_uses_local_address_as_destination() {
        let c = cfg("[capture]\ntransparent = true\n");
        let app: SocketAddr = "10.0.0.9:80".parse().unwrap();
        let f = fwd(decide(Origin::Outbound, Some(app), app, &c, FACTS));
        assert_eq!(f.target, Target::Addr(app));
        let direct: SocketAddr = "10.0.0.5:15001".parse().unwrap();
        assert!(matches!(
            decide(Origin::Outbound, Some(direct), direct, &c, FACTS),
            Decision::Refuse(Refusal::SelfLoop(_))
        ));
    }

    #[test]
    fn explicit_listener_goes_to_its_cluster() {
        let c = cfg(
            "[capture]\nenabled = false\n[[cluster]]\nname = \"b\"\nendpoints = [\"127.0.0.1:9\"]\nconnect_timeout = \"1s\"\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:7000\"\ncluster = \"b\"\nforwarding = \"splice\"\n",
        );
        let f = fwd(decide(
            Origin::Listener("127.0.0.1:7000".parse().unwrap()),
            None,
            "127.0.0.1:7000".parse().unwrap(),
            &c,
            FACTS,
        ));
        assert_eq!(f.target, Target::Cluster(0));
        assert_eq!(f.forwarding, Forwarding::Splice);
        assert_eq!(f.connect_timeout, Duration::from_secs(1));
    }
}
