//! One core's share of the proxy: its listeners, its connections, its counters.
//!
//! Everything here runs on one pinned glommio executor and is `!Send`: state is
//! `Rc`/`Cell`, never locked. The only thing read from outside the core is the
//! config snapshot (`ConfigHandle`), loaded once per accepted connection.
//!
//! One connection, top to bottom ([`serve`]):
//! accept → original destination → [`decide`] (pure) → connect upstream → `l4::forward`.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::config::{Config, ConfigHandle, Forwarding};
use crate::l4::{self, Ending};
use crate::net::{self, socket};
use crate::stats::{CoreStats, Counters};

/// Which listener accepted a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Capture port for the pod's outbound traffic (15001).
    Outbound,
    /// Capture port for traffic to the pod (15006).
    Inbound,
    /// An explicit `[[listener]]`, by index.
    Listener(usize),
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
        Origin::Listener(i) => {
            let l = &config.listeners[i];
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
        Origin::Outbound => (dst, None),
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
        Origin::Listener(_) => unreachable!("handled above"),
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
    pub host: HostFacts,
    /// Round-robin position per cluster index (grown on demand).
    rr: std::cell::RefCell<Vec<usize>>,
}

/// One bound listener of this core.
pub struct BoundListener {
    pub origin: Origin,
    pub listener: TcpListener,
    pub ipv6: bool,
}

/// What a shard needs to know to start.
pub struct ShardSpec {
    pub id: usize,
    pub config: Arc<ConfigHandle>,
    pub shutdown: Arc<AtomicBool>,
    pub host: HostFacts,
}

/// Addresses a config asks the shards to listen on, with their origin.
pub fn listen_addrs(config: &Config) -> Vec<(Origin, SocketAddr)> {
    let mut v = Vec::new();
    if let Some(c) = &config.capture {
        for (origin, port) in [
            (Origin::Outbound, c.outbound_port),
            (Origin::Inbound, c.inbound_port),
        ] {
            if c.ipv4 {
                v.push((origin, SocketAddr::from(([0, 0, 0, 0], port))));
            }
            if c.ipv6 {
                v.push((origin, SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))));
            }
        }
    }
    for (i, l) in config.listeners.iter().enumerate() {
        v.push((Origin::Listener(i), l.address));
    }
    v
}

/// Binds this core's listeners. Called on the executor thread.
pub fn bind_all(config: &Config) -> Result<Vec<BoundListener>, (SocketAddr, io::Error)> {
    let transparent = config.capture.as_ref().is_some_and(|c| c.transparent);
    listen_addrs(config)
        .into_iter()
        .map(|(origin, addr)| {
            let t = transparent && !matches!(origin, Origin::Listener(_));
            socket::listen(addr, t)
                .map(|listener| BoundListener {
                    origin,
                    listener,
                    ipv6: addr.is_ipv6(),
                })
                .map_err(|e| (addr, e))
        })
        .collect()
}

/// Runs one core until shutdown and drain complete; returns its counters.
pub async fn run(spec: ShardSpec, listeners: Vec<BoundListener>) -> Counters {
    let shard = Rc::new(Shard {
        id: spec.id,
        config: spec.config,
        stats: CoreStats::default(),
        host: spec.host,
        rr: Default::default(),
    });
    // Closed when shutdown is requested; every accept loop races against it.
    let stop = Rc::new(Semaphore::new(0));
    let watcher = {
        let stop = stop.clone();
        let flag = spec.shutdown.clone();
        glommio::spawn_local(async move {
            while !flag.load(Ordering::Acquire) {
                glommio::timer::sleep(Duration::from_millis(25)).await;
            }
            stop.close();
        })
    };
    let loops: Vec<_> = listeners
        .into_iter()
        .map(|l| {
            let shard = shard.clone();
            let stop = stop.clone();
            glommio::spawn_local(async move {
                future::or(accept_loop(shard, l), async move {
                    let _ = stop.acquire(1).await;
                })
                .await
            })
        })
        .collect();
    for l in loops {
        l.await;
    }
    watcher.await;
    // Listeners are closed now: drain what is open, up to the deadline.
    let drain = shard.config.current().config.runtime.drain_timeout;
    let deadline = Instant::now() + drain;
    let open = shard.stats.downstream_cx_active.get();
    if open > 0 {
        info!(core = shard.id, open, ?drain, "draining");
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
    shard.stats.snapshot()
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
                let (origin, ipv6) = (l.origin, l.ipv6);
                glommio::spawn_local(async move {
                    serve(&shard, stream, origin, ipv6).await;
                    CoreStats::dec(&shard.stats.downstream_cx_active);
                })
                .detach();
            }
            Err(e) => {
                let e: io::Error = e.into();
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
    let snapshot = shard.config.current();
    let config = &snapshot.config;
    let fd = down.as_raw_fd();
    let Ok(local) = down.local_addr() else { return };
    let peer = down.peer_addr().ok();
    let transparent = config.capture.as_ref().is_some_and(|c| c.transparent);
    let orig_dst = match origin {
        Origin::Listener(_) => None,
        // TPROXY mode still gets REDIRECTed connections: Istio's TPROXY rule set
        // captures only inbound with TPROXY; outbound (and the pod calling itself
        // through ISTIO_IN_REDIRECT) stays nat REDIRECT. Conntrack knows the
        // pre-NAT address for those; for a TPROXY'd connection it reports the
        // local address, which is then the original destination.
        _ if transparent => Some(net::original_dst(fd, ipv6).unwrap_or(local)),
        _ => net::original_dst(fd, ipv6).ok(),
    };
    let plan = match decide(origin, orig_dst, local, config, shard.host) {
        Decision::Forward(f) => f,
        Decision::Refuse(why) => {
            CoreStats::inc(&shard.stats.downstream_cx_loop_refused);
            warn!(?peer, %local, ?why, "refusing connection: it would reach Remora itself");
            return;
        }
    };
    if let Err(e) = socket::set_nonblocking(fd) {
        warn!(error = %e, "cannot make downstream socket non-blocking");
        return;
    }
    let _ = down.set_nodelay(true);
    let up = match connect(shard, &plan).await {
        Ok(up) => up,
        Err(_) => {
            // Tell the client the way a closed port would: a reset.
            socket::set_linger_zero(fd);
            return;
        }
    };
    CoreStats::inc(&shard.stats.upstream_cx_total);
    let report = l4::forward(&down, &up, plan.forwarding, plan.idle_timeout).await;
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
    debug!(?peer, ?origin, up = report.bytes_up, down = report.bytes_down, ending = ?report.ending, "connection closed");
}

/// Connects to the plan's target; for a cluster, tries each endpoint once,
/// starting at this core's round-robin position.
async fn connect(shard: &Shard, plan: &Forward) -> io::Result<TcpStream> {
    let snapshot = shard.config.current();
    let endpoints: Vec<SocketAddr> = match &plan.target {
        Target::Addr(a) => vec![*a],
        Target::Cluster(i) => {
            let eps = &snapshot.config.clusters[*i].endpoints;
            let mut rr = shard.rr.borrow_mut();
            if rr.len() <= *i {
                rr.resize(*i + 1, 0);
            }
            let start = rr[*i] % eps.len();
            rr[*i] = rr[*i].wrapping_add(1);
            eps[start..].iter().chain(&eps[..start]).copied().collect()
        }
    };
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no endpoints");
    for ep in endpoints {
        match socket::connect(ep, plan.source, plan.connect_timeout).await {
            Ok(s) => return Ok(s),
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
            Origin::Listener(0),
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
