//! One accepted connection, top to bottom: the listener's connection rate
//! limit → original destination → [`decide`] (pure) → protocol (tcp / http /
//! detected) → L4 forwarding through the upstream layer, or the L7 path
//! (`l7::serve`), or a refusal.

use std::borrow::Cow;
use std::future::Future;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::tcp::Tcp;
use tracing::{debug, warn};

use crate::access_log;
use crate::config::MtlsMode;
use crate::config::{Config, Direction, Forwarding, HashPolicy, Listener, Protocol, Snapshot};
use crate::l4::{self, Ending};
use crate::l7::detect::Detected;
use crate::net::stream::HandshakeError;
use crate::net::{self, socket, DownstreamTls, Stream};
use crate::recycle::FutureBox;
use crate::shard::{HostFacts, Origin, Shard};
use crate::stats::CoreStats;
use crate::tls::hello::{self, ClientHello, Inspect};
use crate::upstream::balance::hash_key;
use crate::upstream::breaker::{Permit, Resource};
use crate::upstream::tls;
use crate::upstream::ConnectError;

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
    /// Append the client's address to X-Forwarded-For on the L7 path
    /// (Envoy's `use_remote_address`).
    pub use_remote_address: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The connection's original destination (or its local rewrite).
    Addr(SocketAddr),
    /// A configured cluster, by index: endpoints are tried round-robin.
    Cluster(usize),
    /// An `http` listener without a cluster: each request goes where the
    /// routes say, and there is no L4 target.
    Routes,
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
            let (target, connect_timeout) = match l.cluster {
                Some(i) => (Target::Cluster(i), config.clusters[i].connect_timeout),
                None => (Target::Routes, Duration::ZERO),
            };
            return Decision::Forward(Forward {
                target,
                source: None,
                connect_timeout,
                idle_timeout: l.idle_timeout,
                forwarding: l.forwarding,
                use_remote_address: l.use_remote_address,
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
        use_remote_address: capture.use_remote_address,
    })
}

/// One accepted connection, start to finish: the task spawned per accepted
/// connection. Owns a clone of the core's `Rc` so the L7 path can hand it to
/// tasks that outlive the connection (request mirrors).
///
/// Two tasks, one after the other: this one runs `setup` (the decision,
/// detection, the TLS handshake, a ~1 KiB frame) and ends once the
/// connection's path is known; the path (`l7::serve`, `h2::serve`, or
/// `forward_l4`) runs in a task of its own that owns all it needs
/// ([`start_path`]). A task is as large as its largest await point, so with
/// the setup in the same task every connection, idle ones included, kept
/// its frame for its whole life; a boxed path beside a small task cost an
/// allocation and a task frame more per idle connection than a second task
/// does (perf/README.md, "Memory per idle connection").
pub fn serve(
    shard: Rc<Shard>,
    down: Tcp,
    origin: Origin,
    ipv6: bool,
    peer: Option<SocketAddr>,
) -> impl Future<Output = ()> {
    let started = Instant::now();
    async move {
        // The setup's frame (~1.1 KB) lives in a block of the core's free
        // list, built in place: the task then holds only the arguments and
        // the box's pointer (~200 B). Inline, the task was 1.3 KB, past
        // glibc's per-thread cache (1 KiB), so every connection paid
        // malloc's and free's slow paths for it, and spawning copied the
        // whole frame four times (perf/README.md, "Session 22").
        let setup = FutureBox::new_in_place(|| setup(&shard, down, origin, ipv6, peer, started));
        if setup.await.is_none() {
            shard.count_connection(false);
        }
    }
}

/// Proof that [`setup`] started the connection's path in its own task
/// (which counts the connection's end).
struct PathStarted;

/// Runs a connection's path in a task of its own, the future inline in the
/// task (no box), and counts the connection's end and length after it.
fn start_path<F: Future<Output = ()> + 'static>(
    shard: &Rc<Shard>,
    started: Instant,
    path: F,
) -> PathStarted {
    glommio::spawn_local(Counted {
        path,
        shard: shard.clone(),
        started,
    })
    .detach();
    PathStarted
}

pin_project_lite::pin_project! {
    /// A connection's path, then its end counted: hand-written, because an
    /// `async move` block awaiting a captured future keeps it twice (the
    /// capture and the awaited copy).
    struct Counted<F> {
        #[pin]
        path: F,
        shard: Rc<Shard>,
        started: Instant,
    }
}

impl<F: Future<Output = ()>> Future for Counted<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let this = self.project();
        std::task::ready!(this.path.poll(cx));
        record_cx_length(this.shard, *this.started);
        this.shard.count_connection(false);
        std::task::Poll::Ready(())
    }
}

/// Everything before the bytes flow: the rate limit, the original
/// destination, [`decide`], the inbound chain, protocol detection, the TLS
/// handshake. `None` when the connection was refused or failed here (logged
/// and counted).
async fn setup(
    shard: &Rc<Shard>,
    mut down: Tcp,
    origin: Origin,
    ipv6: bool,
    peer: Option<SocketAddr>,
    started: Instant,
) -> Option<PathStarted> {
    let snapshot = shard.config.current();
    let config = &snapshot.config;
    let fd = down.as_raw_fd();
    // The [[listener]] that accepted it, looked up once (None for the
    // capture ports, or a listener a reload removed).
    let configured = configured_listener(config, origin);
    // Before anything else (even the address lookups): a refused connection
    // should cost as little as possible, which is the point of the limit.
    if !connection_allowed(shard, origin, configured) {
        CoreStats::inc(&shard.stats.downstream_cx_rate_limited);
        // A reset, as Envoy's network local_ratelimit filter closes with
        // NoFlush: the client learns at once, and no TIME_WAIT stays here.
        socket::set_linger_zero(fd);
        shard.count_flag("RL");
        if let Some(l) = &shard.access_log {
            l.record(&access_log::Entry {
                start_time: Some(std::time::SystemTime::now() - started.elapsed()),
                protocol: "TCP",
                response_flags: "RL",
                duration: started.elapsed(),
                downstream_remote: peer.or_else(|| down.peer_addr().ok()),
                downstream_local: down.local_addr().ok(),
                listener: origin.name(),
                ..Default::default()
            });
        }
        debug!(?origin, "connection rate limit: closing new connection");
        return None;
    }
    // An explicit listener's own address is every connection's local one,
    // unless it is a wildcard: no getsockname for it. The accept usually
    // brought the peer's (no getpeername).
    let local = match origin {
        Origin::Listener(addr) if !addr.ip().is_unspecified() && addr.port() != 0 => addr,
        _ => down.local_addr().ok()?,
    };
    let peer = peer.or_else(|| down.peer_addr().ok());
    // REDIRECTed connections (always the case for outbound, also in Istio's
    // TPROXY mode) carry their original destination in conntrack. Without a NAT
    // entry (a TPROXYed connection, or one that was not redirected at all) the
    // kernel answers with the local address, or ENOENT when conntrack is not
    // loaded: both mean "the local address is the destination".
    let orig_dst = match origin {
        Origin::Listener(_) => None,
        _ => Some(net::original_dst(fd, ipv6).unwrap_or(local)),
    };
    let listener = listener_name(origin, configured);
    let tcp = TcpLog {
        shard,
        started,
        peer,
        local,
        listener: &listener,
    };
    let log = |flags: &'static str, up: Option<SocketAddr>, rx: u64, tx: u64| {
        tcp.log(flags, up, rx, tx, None, None)
    };
    let plan = match decide(origin, orig_dst, local, config, shard.host) {
        Decision::Forward(f) => f,
        Decision::Refuse(Refusal::SelfLoop(dst)) => {
            CoreStats::inc(&shard.stats.downstream_cx_loop_refused);
            warn!(?peer, %local, %dst, "refusing connection: its destination is Remora itself (not redirected, or a loop)");
            log("NR", None, 0, 0);
            return None;
        }
        Decision::Refuse(why) => {
            CoreStats::inc(&shard.stats.downstream_cx_no_route);
            debug!(?peer, %local, ?why, "refusing connection: no route");
            log("NR", None, 0, 0);
            return None;
        }
    };
    let protocol = match (origin, &config.capture, &plan.target) {
        (Origin::Listener(_), _, _) => configured.map_or(Protocol::Tcp, |l| l.protocol),
        (_, Some(c), Target::Addr(dst)) => c.protocol_for(orig_dst.unwrap_or(*dst).port()),
        _ => Protocol::Tcp,
    };
    let detect_timeout = match (origin, configured, &config.capture) {
        (Origin::Listener(_), Some(l), _) => l.detect_timeout,
        (_, _, Some(c)) => c.detect_timeout,
        _ => crate::config::DEFAULT_DETECT_TIMEOUT,
    };
    // Inbound mTLS (Istio's virtualInbound filter chains): the ClientHello,
    // peeked like Envoy's tls_inspector, picks the chain before anything is
    // read. Peeks go through the ring, which waits only on a blocking-mode
    // socket; so they run before the switch to O_NONBLOCK.
    // Where authorization policies apply: the workload's own inbound.
    // The capture port's original destination, or an inbound listener's
    // own address (an Istio Sidecar ingress listener).
    let inbound_dst = match (origin, &plan.target) {
        (Origin::Inbound, Target::Addr(dst)) => Some(orig_dst.unwrap_or(*dst)),
        (Origin::Listener(_), _) => configured
            .filter(|l| l.direction == Direction::Inbound)
            .map(|_| local),
        _ => None,
    };
    let chain = match inbound_dst {
        // Boxed, like the TLS steps below: rare and large, they would
        // otherwise grow every connection's task (plain L4 ones too).
        Some(dst) => {
            Box::pin(inbound_chain(
                shard,
                config,
                dst.port(),
                &mut down,
                detect_timeout,
                protocol,
            ))
            .await
        }
        None => Chain::Plain,
    };
    let (mut http, terminate) = match chain {
        Chain::Plain => {
            let http = match protocol {
                // An HTTP listener: the HTTP/1 reader hands a connection that
                // starts with the HTTP/2 preface over to HTTP/2 (no peek).
                Protocol::Http => L7::Http1,
                Protocol::Tcp => L7::No,
                Protocol::Auto => match crate::l7::detect(&mut down, detect_timeout).await {
                    Detected::Http1 => L7::Http1,
                    Detected::Http2 => L7::Http2,
                    Detected::Other => L7::No,
                },
            };
            (http, None)
        }
        // An app's own TLS on a PERMISSIVE port: its bytes, untouched.
        Chain::Passthrough => {
            shard.count_tls("downstream", "passthrough", "");
            (L7::No, None)
        }
        Chain::TimedOut => {
            shard.count_tls("downstream", "failure", "handshake_timeout");
            debug!(
                ?peer,
                "STRICT mTLS: no whole ClientHello within the handshake timeout; closing"
            );
            return None;
        }
        Chain::Refuse(why) => {
            shard.count_tls("downstream", "plaintext_refused", "");
            debug!(
                ?peer,
                why, "STRICT mTLS: closing a connection that is not mTLS"
            );
            socket::set_linger_zero(fd);
            log("NR", None, 0, 0);
            return None;
        }
        Chain::Terminate { contexts, hello } => {
            // The HTTP chain: the codec is the one ALPN settles on.
            let http = hello
                .alpn
                .iter()
                .any(|p| HTTP1_ALPN.contains(&p) || HTTP2_ALPN.contains(&p))
                || (hello.alpn.is_empty() && protocol == Protocol::Http);
            (
                if http { L7::Http1 } else { L7::No },
                Some((contexts, hello)),
            )
        }
    };
    // Non-blocking from its accept (socket::accept_queued); TCP_NODELAY is
    // the listener's, inherited (socket::listen).
    let (down, tls) = match terminate {
        None => (Stream::from(down), None),
        Some((contexts, hello)) => {
            let timeout = config.tls.handshake_timeout;
            let server = if http == L7::No {
                contexts.server_config()
            } else {
                contexts.server_config_http()
            };
            match Box::pin(Stream::accept_tls(down, server, timeout)).await {
                Ok(s) => {
                    let h2 = s.tls().is_some_and(|t| {
                        t.with_state(|st| {
                            st.alpn_protocol().is_some_and(|p| HTTP2_ALPN.contains(&p))
                        })
                    });
                    if h2 {
                        http = L7::Http2;
                    }
                    let info = downstream_tls(shard, &s, &contexts, hello.sni);
                    (s, Some(Rc::new(info)))
                }
                Err((e, _tcp)) => {
                    let reason = match &e {
                        HandshakeError::Tls(e) => crate::tls::classify(e).as_str(),
                        HandshakeError::Timeout(_) => "handshake_timeout",
                        HandshakeError::Io(_) => "connection_error",
                    };
                    shard.count_tls("downstream", "failure", reason);
                    debug!(?peer, error = %e, reason, "inbound mTLS handshake failed");
                    return None;
                }
            }
        }
    };
    if http != L7::No {
        let fallback = match &plan.target {
            Target::Addr(dst) => crate::l7::Fallback::Passthrough {
                dst: *dst,
                source: plan.source,
                connect_timeout: plan.connect_timeout,
            },
            Target::Cluster(_) | Target::Routes => crate::l7::Fallback::NotFound,
        };
        let ctx = crate::l7::Context {
            listener: Rc::from(&*listener),
            peer,
            local: Some(local),
            fallback,
            forwarding: plan.forwarding,
            tunnel_idle_timeout: plan.idle_timeout,
            tls,
            inbound_dst,
            use_remote_address: plan.use_remote_address,
        };
        // The L7 state machine in its own task, owning the socket, so that
        // this setup's frame is freed while it runs.
        return Some(if http == L7::Http2 {
            let core = shard.clone();
            let h2 = async move {
                crate::l7::h2::serve(&core, down, None, snapshot, ctx).await;
            };
            start_path(shard, started, h2)
        } else {
            let l7 = crate::l7::serve(shard.clone(), down, snapshot, ctx);
            start_path(shard, started, l7)
        });
    }
    // The L4 path's state (connect, TLS origination, the two pumps) in its
    // own task (perf/README.md, idle).
    let l4 = L4Conn {
        plan,
        origin,
        peer,
        local,
        started,
        inbound_dst,
    };
    let l4 = forward_l4(shard.clone(), snapshot, down, tls, l4);
    Some(start_path(shard, started, l4))
}

/// The facts [`forward_l4`] needs from [`setup`] besides the socket.
struct L4Conn {
    plan: Forward,
    origin: Origin,
    peer: Option<SocketAddr>,
    local: SocketAddr,
    started: Instant,
    inbound_dst: Option<SocketAddr>,
}

/// An upstream connection [`open_upstream`] made for an L4 connection.
struct Upstream {
    stream: Stream,
    addr: Option<SocketAddr>,
    /// The cluster endpoint, for [`crate::upstream::Upstreams::released`].
    endpoint: Option<SocketAddr>,
    /// The cluster's `max_connections` share, held for the connection's life.
    _permit: Option<Permit>,
}

/// An L4 connection from the authorization check to its close: the
/// upstream ([`open_upstream`]), then the bytes both ways until either side
/// closes or it idles out.
///
/// A plain `fn` around an `async move` block that uses its captures in
/// place, and the opening boxed apart: this future is what an idle L4
/// connection keeps, so it holds only the sockets, the pumps and what the
/// closing log line needs. (An `async fn` keeps its arguments beside the
/// locals they move into; the connect and TLS futures inline would size it
/// for their largest state: 1,896 B against 1,304 B now, perf/README.md.)
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn forward_l4(
    shard: Rc<Shard>,
    snapshot: Arc<Snapshot>,
    mut down: Stream,
    tls: Option<Rc<DownstreamTls>>,
    conn: L4Conn,
) -> impl Future<Output = ()> {
    async move {
        let shard = &shard;
        let config = &snapshot.config;
        let listener = listener_name(conn.origin, configured_listener(config, conn.origin));
        let tcp = TcpLog {
            shard,
            started: conn.started,
            peer: conn.peer,
            local: conn.local,
            listener: &listener,
        };
        let opened = Box::pin(open_upstream(
            shard,
            config,
            &conn,
            &down,
            tls.as_deref(),
            &tcp,
        ));
        let Some(mut up) = opened.await else {
            return;
        };
        let plan = &conn.plan;
        let report = l4::forward_streams(
            &mut down,
            &mut up.stream,
            plan.forwarding,
            plan.idle_timeout,
        )
        .await;
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
        if let Some(ep) = up.endpoint {
            shard.upstreams.released(ep);
        }
        let flags = match report.ending {
            Ending::Closed => "-",
            Ending::Reset(l4::Side::Downstream) => "DC",
            Ending::Reset(l4::Side::Upstream) => "UC",
            Ending::IdleTimeout => "SI",
        };
        let (rx, tx) = (report.bytes_up, report.bytes_down);
        tcp.log(flags, up.addr, rx, tx, tls.as_deref(), None);
        debug!(peer = ?conn.peer, origin = ?conn.origin, up = rx, down = tx, ending = ?report.ending, "connection closed");
    }
}

/// The upstream side of an L4 connection: the authorization check (the
/// policies' TCP view, HTTP-only fields handled as Istio does), connecting
/// through the upstream layer, and TLS toward a cluster with `tls` or an
/// outbound mesh destination. `None` when any of them refused or failed
/// (logged, and the client reset where a closed port would have been).
async fn open_upstream(
    shard: &Shard,
    config: &Config,
    conn: &L4Conn,
    down: &Stream,
    tls: Option<&DownstreamTls>,
    tcp: &TcpLog<'_>,
) -> Option<Upstream> {
    let (plan, peer) = (&conn.plan, conn.peer);
    let fd = down.as_raw_fd();
    let log = |flags: &'static str, up: Option<SocketAddr>| tcp.log(flags, up, 0, 0, tls, None);
    if let Some(dst) = conn
        .inbound_dst
        .filter(|_| !config.authorization.is_empty())
    {
        let denied = crate::l7::check_policies(shard, &config.authorization, tls, peer, dst, None);
        if let Some(policy) = denied {
            CoreStats::inc(&shard.stats.downstream_cx_rbac_denied);
            debug!(?peer, %policy, "connection denied by an authorization policy");
            tcp.log("RBAC", None, 0, 0, tls, Some(&policy));
            return None;
        }
    }
    let (up, endpoint, permit) = match connect(shard, config, plan, peer).await {
        Ok(up) => up,
        Err(e) => {
            // Tell the client the way a closed port would: a reset.
            socket::set_linger_zero(fd);
            log(e.flag, None);
            return None;
        }
    };
    let upstream_addr = up.peer_addr().ok();
    let secure = match (&plan.target, conn.origin) {
        (Target::Cluster(i), _) => config.clusters.get(*i).and_then(|c| {
            c.tls.as_ref().map(|t| {
                let o =
                    shard
                        .upstreams
                        .tls
                        .for_cluster(&c.name, t, &shard.tls, tls::AppProtocol::Tcp);
                (o, tls::is_mesh(t), Some(c.name.as_str()))
            })
        }),
        (Target::Addr(a), Origin::Outbound) => config.mesh_destination_for(*a).map(|d| {
            let o = shard
                .upstreams
                .tls
                .for_mesh(d, &shard.tls, tls::AppProtocol::Tcp);
            (o, true, None)
        }),
        _ => None,
    };
    let stream = match secure {
        None => Stream::from(up),
        Some((o, mesh, host)) => {
            let r = match o {
                Ok(o) => {
                    let addr = upstream_addr.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                    let timeout = config.tls.handshake_timeout;
                    Box::pin(tls::originate(up, &o, mesh, host, addr, timeout)).await
                }
                Err(e) => Err(e),
            };
            match shard.upstream_handshake(r) {
                Some(s) => s,
                None => {
                    socket::set_linger_zero(fd);
                    log("UF", upstream_addr);
                    return None;
                }
            }
        }
    };
    Some(Upstream {
        stream,
        addr: upstream_addr,
        endpoint,
        _permit: permit,
    })
}

/// The [[listener]] that accepted a connection from `origin`: None for the
/// capture ports, or a listener a reload removed.
fn configured_listener(config: &Config, origin: Origin) -> Option<&Listener> {
    match origin {
        Origin::Listener(addr) => config.listeners.iter().find(|l| l.address == addr),
        _ => None,
    }
}

/// The listener's name for logs, L4 and L7 alike: Istio's names for the
/// capture ports, the configured name for a [[listener]]. Borrowed: only the
/// L7 path keeps a copy.
fn listener_name(origin: Origin, configured: Option<&Listener>) -> Cow<'_, str> {
    match (origin, configured) {
        (_, Some(l)) => Cow::Borrowed(l.name.as_str()),
        (Origin::Listener(addr), None) => Cow::Owned(addr.to_string()),
        _ => Cow::Borrowed(origin.name()),
    }
}

/// What an L4 access-log line says about the connection besides its outcome.
struct TcpLog<'a> {
    shard: &'a Shard,
    started: Instant,
    peer: Option<SocketAddr>,
    local: SocketAddr,
    listener: &'a str,
}

impl TcpLog<'_> {
    /// One L4 access-log line (and the flag's counter). `tls` and `policy`
    /// exist only once the handshake and the authorization check have run:
    /// without them an mTLS connection, and a denied one, would be logged
    /// without the caller's identity or the denying policy (which the L7
    /// path logs).
    fn log(
        &self,
        flags: &'static str,
        up: Option<SocketAddr>,
        rx: u64,
        tx: u64,
        tls: Option<&DownstreamTls>,
        policy: Option<&str>,
    ) {
        let shard = self.shard;
        if flags != "-" {
            shard.count_flag(flags);
        }
        if let Some(l) = &shard.access_log {
            l.record(&access_log::Entry {
                start_time: Some(std::time::SystemTime::now() - self.started.elapsed()),
                protocol: "TCP",
                response_flags: flags,
                bytes_received: rx,
                bytes_sent: tx,
                duration: self.started.elapsed(),
                upstream_host: up,
                downstream_remote: self.peer,
                downstream_local: Some(self.local),
                listener: self.listener,
                peer_uri_san: tls.and_then(|t| t.peer_uri.as_deref()),
                tls_version: tls.map(|t| t.info.version),
                tls_cipher: tls.map(|t| t.info.cipher),
                requested_server_name: tls.and_then(|t| t.sni.as_deref()),
                authz_policy: policy,
                ..Default::default()
            });
        }
    }
}

/// ALPN values that send a terminated connection down the HTTP/1 path:
/// Istio's (`istio-http/1.0`, `istio-http/1.1`, which its inbound matches
/// for the HTTP filter chain) and plain `http/1.1` from non-mesh mTLS
/// clients.
const HTTP1_ALPN: [&[u8]; 3] = [b"istio-http/1.1", b"istio-http/1.0", b"http/1.1"];
/// ALPN values of HTTP/2: Istio's `istio-h2` (offered with `istio`, `h2`
/// by its outbound sidecars) and `h2`. The HTTP chain's server config
/// negotiates `h2` when offered, as Istio's inbound does.
const HTTP2_ALPN: [&[u8]; 2] = [b"h2", b"istio-h2"];

/// Which L7 codec a connection takes, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum L7 {
    No,
    Http1,
    Http2,
}

/// ALPN values by which Istio's sidecars mark mesh mTLS
/// (`istio-peer-exchange`, `istio` for TCP, `istio-http/*`, `istio-h2`).
fn is_istio_alpn(p: &[u8]) -> bool {
    p.starts_with(b"istio")
}

/// Which inbound filter chain a connection takes (Istio's virtualInbound:
/// chains matched on transport protocol and ALPN, per PeerAuthentication).
enum Chain {
    /// Not TLS, or mTLS off here: the plaintext path.
    Plain,
    /// TLS that is not Istio mTLS, on a PERMISSIVE port: forwarded untouched.
    Passthrough,
    /// Terminate with the workload certificate.
    Terminate {
        contexts: std::sync::Arc<crate::tls::Contexts>,
        hello: ClientHello,
    },
    /// STRICT and not TLS (or unreadable TLS): closed, never forwarded.
    Refuse(&'static str),
    /// STRICT and no whole ClientHello within the handshake timeout (a
    /// silent or stalled client): closed and counted as a handshake
    /// timeout, as a stall after the hello is, not as plaintext.
    TimedOut,
}

/// Picks the chain for an inbound connection to `port` from the mode in
/// force there and what the ClientHello says.
async fn inbound_chain(
    shard: &Shard,
    config: &Config,
    port: u16,
    down: &mut Tcp,
    detect_timeout: Duration,
    protocol: Protocol,
) -> Chain {
    let mode = config.peer_authentication.mode_for_port(port);
    if mode == MtlsMode::Disable {
        return Chain::Plain;
    }
    // PERMISSIVE without certificates is plaintext only (validation
    // refuses STRICT without them).
    let Some(contexts) = shard.tls.load() else {
        return match mode {
            MtlsMode::Strict => Chain::Refuse("no workload certificate loaded"),
            _ => Chain::Plain,
        };
    };
    // A TLS client speaks first, so STRICT may wait as long as a handshake
    // may take. So may PERMISSIVE on an HTTP port: its plaintext clients
    // speak first too, and a window shorter than a descheduled client's
    // pause between connect and ClientHello sent its mTLS to the plaintext
    // chain (Envoy's tls_inspector under Istio's default
    // protocolDetectionTimeout of 0s waits for the first bytes without a
    // limit). Elsewhere PERMISSIVE waits only the detection window, so
    // that the banner of a server-first protocol still flows.
    let window = match (mode, protocol) {
        (MtlsMode::Strict, _) | (_, Protocol::Http) => config.tls.handshake_timeout,
        _ => detect_timeout,
    };
    // The window passing is not plaintext: a client that says nothing (or
    // stops inside its hello) on STRICT is a handshake that did not finish
    // in time, and is counted as one (`listener.ssl.handshake_timeout`).
    let Some(inspected) = peek_hello(down, window).await else {
        return match mode {
            MtlsMode::Strict => Chain::TimedOut,
            _ => Chain::Plain,
        };
    };
    match inspected {
        Inspect::Hello(hello) => {
            if mode == MtlsMode::Strict || hello.alpn.iter().any(is_istio_alpn) {
                Chain::Terminate { contexts, hello }
            } else {
                Chain::Passthrough
            }
        }
        _ if mode == MtlsMode::Strict => Chain::Refuse("not a TLS ClientHello"),
        // Envoy's tls_inspector on a broken hello: no transport protocol
        // detected, so the plaintext chains, which forward it as bytes.
        Inspect::Invalid(why) => {
            debug!(
                why,
                "malformed ClientHello on a PERMISSIVE port: forwarded as bytes"
            );
            Chain::Passthrough
        }
        _ => Chain::Plain,
    }
}

/// Peeks (without consuming) until the bytes are a whole ClientHello, not
/// TLS, or malformed. `None` when `window` passes first; `NeedMore` when the
/// client closed (or the socket failed) before a whole hello.
async fn peek_hello(down: &mut Tcp, window: Duration) -> Option<Inspect> {
    let deadline = Instant::now() + window;
    // Most connections decide on the first bytes; the 16 KiB buffer is
    // allocated only for one that starts like TLS.
    let mut first = [0u8; 8];
    let n = match crate::deadline::until(Some(deadline), down.peek(&mut first)).await? {
        Ok(n) if n > 0 => n,
        _ => return Some(Inspect::NeedMore),
    };
    match hello::inspect(&first[..n]) {
        Inspect::NeedMore => {}
        other => return Some(other),
    }
    let mut buf = vec![0u8; hello::MAX_CLIENT_HELLO];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = match crate::deadline::until(Some(deadline), down.peek(&mut buf)).await? {
            Ok(n) if n > 0 => n,
            _ => return Some(Inspect::NeedMore),
        };
        match hello::inspect(&buf[..n]) {
            // The client has sent its FIN: the hello can never be completed.
            // Without this check the loop would peek at the same bytes until
            // the window closes (15 s on STRICT), waking every millisecond.
            Inspect::NeedMore if socket::peer_closed(down.as_raw_fd()) => {
                return Some(Inspect::Invalid(
                    "the client closed before its ClientHello was complete",
                ));
            }
            Inspect::NeedMore if Instant::now() < deadline => {
                // A hello split across segments: the bytes stay readable, so
                // peek would return at once; pause instead of spinning. The
                // pause doubles (1 ms to 64 ms): a real client's next segment
                // is a round trip away, while a client that stalls on purpose
                // must not cost a wake-up per millisecond until the timeout.
                glommio::timer::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(64));
            }
            Inspect::NeedMore => return None,
            other => return Some(other),
        }
    }
}

/// Counts a finished inbound handshake and computes what the layers above
/// need from it: the peer's SPIFFE ID and the X-Forwarded-Client-Cert element.
fn downstream_tls(
    shard: &Shard,
    s: &Stream,
    contexts: &crate::tls::Contexts,
    sni: Option<String>,
) -> DownstreamTls {
    let Some(t) = s.tls() else {
        return DownstreamTls::default();
    };
    let info = t.info();
    shard.count_tls("downstream", "handshake", "");
    shard.count_tls("downstream", "version", info.version);
    shard.count_tls("downstream", "cipher", info.cipher);
    if info.resumed {
        shard.count_tls("downstream", "session_reused", "");
    }
    let (peer_uri, leaf) = t.with_state(|st| {
        (
            crate::tls::peer_uri_san(st),
            st.peer_certificates().and_then(|c| c.first().cloned()),
        )
    });
    let xfcc = leaf.map(|leaf| {
        crate::tls::xfcc_element(
            &contexts.identity().spiffe_id().to_string(),
            &leaf,
            peer_uri.as_deref(),
        )
    });
    DownstreamTls {
        info,
        peer_uri,
        sni,
        xfcc,
    }
}

/// Whether the listener's `connection_rate_limit` (if any) lets one more
/// connection in on this core: one token from the core's bucket for the
/// listener (Envoy's network `local_ratelimit`). Capture ports have no limit.
fn connection_allowed(shard: &Shard, origin: Origin, configured: Option<&Listener>) -> bool {
    let (Origin::Listener(addr), Some(cfg)) = (
        origin,
        configured.and_then(|l| l.connection_rate_limit.as_ref()),
    ) else {
        return true;
    };
    shard
        .buckets
        .borrow_mut()
        .connections
        .try_take(&addr, cfg, shard.cores, Instant::now())
        .allowed
}

/// Why an L4 connection got no upstream, as its response flag (Envoy's
/// tcp_proxy sets the same three).
struct NoUpstream {
    /// `UO`: the cluster's max_connections was reached; `UH`: the cluster
    /// has no endpoint that may be used (all unhealthy or ejected, or none
    /// discovered); `UF`: connecting failed.
    flag: &'static str,
}

/// Connects to the plan's target: the address itself, or an endpoint of the
/// cluster through the upstream layer (balanced; each tried at most once
/// until one answers), within the cluster's `max_connections` (the permit
/// is held for the connection's life). `config` must be the snapshot `plan`
/// was decided from: a cluster index means nothing in another version.
/// Returns the cluster endpoint, if any, for
/// [`crate::upstream::Upstreams::released`].
async fn connect(
    shard: &Shard,
    config: &Config,
    plan: &Forward,
    peer: Option<SocketAddr>,
) -> Result<(Tcp, Option<SocketAddr>, Option<Permit>), NoUpstream> {
    let failed = |e: ConnectError| {
        debug!(error = %e, "no upstream connection");
        let flag = match e {
            ConnectError::NoEndpoint(_) => "UH",
            ConnectError::Timeout { .. } | ConnectError::Failed { .. } => "UF",
        };
        NoUpstream { flag }
    };
    match &plan.target {
        // Only an `http` listener has no L4 target, and its connections take
        // the L7 path; a config cannot make one reach here.
        Target::Routes => Err(NoUpstream { flag: "NR" }),
        Target::Addr(a) => shard
            .upstreams
            .connect(&shard.stats, *a, plan.source, plan.connect_timeout, false)
            .await
            .map(|s| (s, None, None))
            .map_err(failed),
        Target::Cluster(i) => {
            let Some(cluster) = config.clusters.get(*i) else {
                return Err(NoUpstream { flag: "UF" });
            };
            let limits = cluster.circuit_breakers.per_core(shard.cores);
            let permit = shard
                .upstreams
                .cluster(cluster)
                .breakers
                .try_acquire(Resource::Connections, &limits)
                .ok_or(NoUpstream { flag: "UO" })?;
            // L4 knows only addresses: a source_ip hash policy applies.
            let hash = cluster
                .hash_policy
                .contains(&HashPolicy::SourceIp)
                .then_some(peer)
                .flatten()
                // As text, as Envoy hashes it (and as the L7 path does).
                .map(|p| hash_key(p.ip().to_string().as_bytes()));
            shard
                .upstreams
                .connect_cluster(&shard.stats, cluster, hash, shard.next_u64())
                .await
                .map(|(s, ep)| (s, Some(ep), Some(permit)))
                .map_err(failed)
        }
    }
}

/// Records a downstream connection's length (the `downstream_cx_length` histogram).
fn record_cx_length(shard: &Shard, started: Instant) {
    let micros = started.elapsed().as_micros() as u64;
    shard
        .histograms
        .borrow_mut()
        .downstream_cx_length_us
        .saturating_record(micros.max(1));
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

    /// X-Forwarded-For (Envoy's `use_remote_address`): off on the capture
    /// ports as Istio configures its sidecars, on for an explicit listener
    /// as before the key existed; both configurable.
    #[test]
    fn use_remote_address_defaults() {
        let listener = "[[cluster]]\nname = \"b\"\nendpoints = [\"127.0.0.1:9\"]\n\
                        [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:7000\"\ncluster = \"b\"\n";
        let l7000: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        let l15006: SocketAddr = "10.0.0.5:15006".parse().unwrap();
        let app: SocketAddr = "10.0.0.5:8080".parse().unwrap();
        let remote: SocketAddr = "10.0.0.9:80".parse().unwrap();
        let l15001: SocketAddr = "127.0.0.1:15001".parse().unwrap();
        for (text, capture, explicit) in [
            (listener.to_string(), false, true),
            (
                format!(
                    "[capture]\nuse_remote_address = true\n{listener}use_remote_address = false\n"
                ),
                true,
                false,
            ),
        ] {
            let c = cfg(&text);
            let inbound = fwd(decide(Origin::Inbound, Some(app), l15006, &c, FACTS));
            let outbound = fwd(decide(Origin::Outbound, Some(remote), l15001, &c, FACTS));
            let listed = fwd(decide(Origin::Listener(l7000), None, l7000, &c, FACTS));
            assert_eq!(inbound.use_remote_address, capture, "{text}");
            assert_eq!(outbound.use_remote_address, capture, "{text}");
            assert_eq!(listed.use_remote_address, explicit, "{text}");
        }
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

/// What an idle connection's futures weigh (`size_of` of each future type;
/// perf/README.md, "Memory per idle connection"). Printed with
/// `cargo test --lib idle_sizes -- --nocapture`.
#[cfg(test)]
mod idle_sizes {
    use super::*;

    fn serve_size<F: Future>(
        _: impl FnOnce(Rc<Shard>, Tcp, Origin, bool, Option<SocketAddr>) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    fn setup_size<'a, F: Future>(
        _: impl FnOnce(&'a Rc<Shard>, Tcp, Origin, bool, Option<SocketAddr>, Instant) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    /// The HTTP/1 path's task future: `l7::serve`'s with the end counted.
    fn l7_task_size<F: Future>(
        _: impl FnOnce(Rc<Shard>, Stream, Arc<Snapshot>, crate::l7::Context) -> F,
    ) -> usize {
        std::mem::size_of::<Counted<F>>()
    }

    #[allow(clippy::type_complexity)]
    fn forward_l4_size<F: Future>(
        _: fn(Rc<Shard>, Arc<Snapshot>, Stream, Option<Rc<DownstreamTls>>, L4Conn) -> F,
    ) -> usize {
        std::mem::size_of::<Counted<F>>()
    }

    fn l4_size<'a, F: Future>(
        _: impl FnOnce(&'a mut Stream, &'a mut Stream, Forwarding, Duration) -> F,
    ) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn idle_sizes() {
        let serve = serve_size(serve);
        let setup = setup_size(setup);
        let l7 = l7_task_size(crate::l7::serve);
        let forward = forward_l4_size(forward_l4);
        let l4 = l4_size(l4::forward_streams);
        eprintln!("connection::serve future (the setup task, until the path starts): {serve} B");
        eprintln!("connection::setup future (in it): {setup} B");
        eprintln!("l7::serve path task future (counted): {l7} B");
        eprintln!("connection::forward_l4 path task future (counted): {forward} B");
        eprintln!("l4::forward_streams future (inline): {l4} B");
        eprintln!("Tcp: {} B", std::mem::size_of::<Tcp>());
        eprintln!("Stream: {} B", std::mem::size_of::<Stream>());
        eprintln!(
            "glommio Timer: {} B",
            std::mem::size_of::<glommio::timer::Timer>()
        );
        // What an idle connection keeps, as measured when these were last cut
        // (perf/README.md, "Memory per idle connection", third pass): a layout
        // change that grows them should be a decision, not an accident. The
        // HTTP/1 one grew from 232 to 248 B with parking (the `Down` tag and
        // the wait's `parks` flag), which saves a glommio poll of ~435 B
        // (fourth pass). Both paths grew by 8 B for the read side's readiness
        // slot (`net::tcp`, session 39), which replaces the glommio poll of
        // ~435 B that a waiting read allocated. Session 40: the HTTP/1 one
        // 256 -> 128 B and the L4 one 1,312 -> 1,088 B, the sockets a
        // descriptor and two slots each instead of glommio's stream, and
        // parking gone.
        assert!(l7 <= 128, "the HTTP/1 path's task future grew to {l7} B");
        // Spawned for every connection: under glibc's per-thread cache
        // (1,032 B with the task's header), the setup frame boxed apart.
        assert!(serve <= 512, "the setup task's future grew to {serve} B");
        assert!(
            forward <= 1088,
            "the L4 path's task future grew to {forward} B"
        );
        assert!(l4 <= 552, "l4::forward_streams grew to {l4} B");
    }
}
