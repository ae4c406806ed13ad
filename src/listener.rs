//! A core's listeners: which addresses a config asks for, binding them on the
//! core that accepts, the accept loop, and reconciling them after a reload.

use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use glommio::sync::Semaphore;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::net::socket::{self, ListenOptions};
use crate::net::tcp::Tcp;
use crate::shard::{Active, BoundListener, ListenKey, Origin, Shard};
use crate::stats::CoreStats;

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
                    options: capture_options(c),
                });
            }
            if c.ipv6 {
                v.push(ListenKey {
                    origin,
                    addr: SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
                    options: capture_options(c),
                });
            }
        }
    }
    for l in &config.listeners {
        v.push(ListenKey {
            origin: Origin::Listener(l.address),
            addr: l.address,
            options: ListenOptions {
                transparent: false,
                defer_accept: l.defer_accept,
            },
        });
    }
    v
}

/// The capture ports take any TCP, server-first protocols included, so they
/// never defer the accept (Envoy's and Istio's listeners do not either).
fn capture_options(c: &crate::config::Capture) -> ListenOptions {
    ListenOptions {
        transparent: c.transparent,
        defer_accept: false,
    }
}

/// Logs each address the config listens on, once at start (Envoy logs every
/// listener it adds), so an operator sees what is open before any traffic.
pub fn log_added(config: &Config) {
    for key in listen_keys(config) {
        let listener = match key.origin {
            Origin::Listener(addr) => config.listeners.iter().find(|l| l.address == addr),
            _ => None,
        };
        match listener {
            Some(l) => info!(
                name = %l.name,
                addr = %key.addr,
                protocol = l.protocol.as_str(),
                direction = l.direction.as_str(),
                defer_accept = l.defer_accept,
                "listener added"
            ),
            None => info!(
                name = key.origin.name(),
                addr = %key.addr,
                transparent = key.options.transparent,
                "listener added"
            ),
        }
    }
}

/// Binds one listener. Called on the executor thread that will accept on it.
pub fn bind(key: &ListenKey) -> io::Result<BoundListener> {
    let (listener, fd) = socket::listen(key.addr, key.options)?;
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

/// Starts an accept loop for `l`; it runs until [`close`] shuts it down.
pub fn start(shard: &Rc<Shard>, l: BoundListener) {
    let stop = Rc::new(Semaphore::new(0));
    shard.listeners.borrow_mut().push(Active {
        key: l.key.clone(),
        stop: stop.clone(),
        fd: l.fd,
    });
    glommio::spawn_local(accept_loop(shard.clone(), l, stop)).detach();
}

/// How long a closing listener goes on accepting after it stopped taking
/// new handshakes ([`close`]): time for the handshakes already under way to
/// complete. Their last step, the client's ACK, comes one round trip after
/// the listener's SYN-ACK: microseconds in a pod or on a node, a few
/// milliseconds across a cluster.
pub const CLOSE_GRACE: Duration = Duration::from_millis(20);

/// Closes this core's listeners that `keep` rejects, in two steps, so that
/// no client whose connect succeeded is reset:
/// 1. now: the listener drops new SYNs ([`socket::drop_new_handshakes`]);
///    their clients send them again after a second, and by then find
///    another listener of the port (a new process) or are refused;
/// 2. after [`CLOSE_GRACE`], in which the accept loop goes on serving the
///    handshakes already under way: what is still queued is taken and
///    served, and the listener is shut down.
///
/// Shutting a listener down resets every connection in its accept queue,
/// whose client had seen its connect succeed; without step 1 a handshake
/// could complete between the last accept and the shutdown (tests/faults.rs,
/// restarting the sidecar under load, saw it about once in 80 runs).
pub fn close(shard: &Rc<Shard>, keep: impl Fn(&ListenKey) -> bool) {
    let closing: Vec<Active> = {
        let mut listeners = shard.listeners.borrow_mut();
        let (kept, closing) = std::mem::take(&mut *listeners)
            .into_iter()
            .partition(|a| keep(&a.key));
        *listeners = kept;
        closing
    };
    for a in closing {
        let grace = match socket::drop_new_handshakes(a.fd) {
            Ok(()) => CLOSE_GRACE,
            Err(e) => {
                warn!(core = shard.id, addr = %a.key.addr, error = %e,
                    "cannot stop new handshakes before closing the listener; closing it now");
                Duration::ZERO
            }
        };
        glommio::spawn_local(shut_down(shard.clone(), a, grace)).detach();
    }
}

/// Step 2 of [`close`]: after `grace`, takes and serves what is queued on
/// `a`, and shuts it down. Its accept loop, which ends then, keeps the
/// core's drain waiting until this is done.
async fn shut_down(shard: Rc<Shard>, a: Active, grace: Duration) {
    if !grace.is_zero() {
        glommio::timer::sleep(grace).await;
    }
    let mut queued = Vec::new();
    take_queued(a.fd, &mut queued, &a.key);
    // Closing the fd is not enough: the accept loop's readiness wait (a
    // ring POLL_ADD) holds a reference and the kernel would keep completing
    // handshakes.
    // shutdown() on a listening socket stops listening at once, before this
    // returns. SAFETY: the accept loop, which owns the listener, ends only
    // once `stop` is closed or its accept fails after this shutdown.
    unsafe { libc::shutdown(a.fd, libc::SHUT_RDWR) };
    a.stop.close();
    info!(core = shard.id, addr = %a.key.addr, origin = ?a.key.origin,
        queued = queued.len(), "listener closed");
    for (stream, peer, key) in queued {
        CoreStats::inc(&shard.stats.downstream_cx_total);
        serve_accepted(&shard, stream, Some(peer), &key);
    }
}

/// Accepts whatever is queued on listening socket `fd` ([`socket::listen`]
/// made it non-blocking, so an empty queue ends the loop instead of blocking
/// the core).
fn take_queued(
    fd: std::os::fd::RawFd,
    out: &mut Vec<(Tcp, SocketAddr, ListenKey)>,
    key: &ListenKey,
) {
    while let Ok(Some((stream, peer))) = socket::accept_queued(fd) {
        out.push((stream, peer, key.clone()));
    }
}

/// Starts serving one accepted connection on this core.
fn serve_accepted(shard: &Rc<Shard>, stream: Tcp, peer: Option<SocketAddr>, key: &ListenKey) {
    shard.count_connection(true);
    let (origin, ipv6) = (key.origin, key.addr.is_ipv6());
    // The connection's own future, spawned as it is (it, or the path's task
    // it starts, counts the connection's end): a wrapping block would keep
    // its captures (the socket) in the task.
    glommio::spawn_local(crate::connection::serve(
        shard.clone(),
        stream,
        origin,
        ipv6,
        peer,
    ))
    .detach();
}

/// Makes this core's listeners match the current snapshot. New addresses are
/// bound, removed ones closed; connections already accepted carry on. Per-core
/// upstream state for clusters that are gone is dropped, and so are rate-limit
/// buckets of limits that are gone.
pub fn reconcile(shard: &Rc<Shard>) {
    if shard.draining.get() {
        return;
    }
    let snapshot = shard.config.current();
    crate::net::batch::set_max_wait(snapshot.config.runtime.batch_wait);
    crate::net::batch::set_sleep_wait(snapshot.config.runtime.sleep_batch_wait);
    shard.upstreams.prune(&snapshot.config);
    shard.prune_buckets(&snapshot.config);
    let want = listen_keys(&snapshot.config);
    close(shard, |k| want.contains(k));
    let have: Vec<ListenKey> = shard
        .listeners
        .borrow()
        .iter()
        .map(|a| a.key.clone())
        .collect();
    for key in want.iter().filter(|k| !have.contains(k)) {
        match bind(key) {
            Ok(l) => {
                info!(core = shard.id, addr = %key.addr, origin = ?key.origin, "listener opened");
                start(shard, l);
            }
            // The reload path test-binds new addresses before publishing, so
            // this is a race with another process taking the port.
            Err(e) => {
                error!(core = shard.id, addr = %key.addr, error = %e, "cannot open listener")
            }
        }
    }
}

/// Accepts forever. Resource exhaustion (EMFILE, ENFILE, ENOBUFS, ENOMEM) is
/// counted and backed off from, so the loop neither spins nor dies.
///
/// The loop ends when the listener is shut down ([`close`]): its pending
/// accept then fails with EINVAL. It is not dropped while an accept is in
/// flight, because the ring may already have accepted a connection (the
/// accept runs as task work on the executor's next system call, which can
/// be one of `close`'s own): dropping the operation then would strand that
/// connection, unserved, until the process exits and the kernel resets it.
/// `stop` ends the waits that are not an accept (overload, back-off).
async fn accept_loop(shard: Rc<Shard>, l: BoundListener, stop: Rc<Semaphore>) {
    struct Running(Rc<Shard>);
    impl Drop for Running {
        fn drop(&mut self) {
            self.0.accept_loops.set(self.0.accept_loops.get() - 1);
        }
    }
    shard.accept_loops.set(shard.accept_loops.get() + 1);
    let _running = Running(shard.clone());
    let mut backoff = Duration::ZERO;
    let mut last_warn: Option<Instant> = None;
    let mut wait = crate::net::uring::Readiness::new();
    let stopped = || async {
        let _ = stop.acquire(1).await;
        true
    };
    loop {
        // What is already queued: one accept4 each, the peer included
        // (socket::accept_queued); once the queue is empty, a readiness
        // wait on the listener (a shutdown by `close` fires it too, and the
        // accept4 after it fails with EINVAL).
        let accepted = match socket::accept_queued(l.fd) {
            Ok(Some((stream, peer))) => {
                // A full backlog is taken without waiting: let the rest of
                // the core run when its preemption timer says so.
                glommio::yield_if_needed().await;
                Ok((stream, Some(peer)))
            }
            Ok(None) => {
                crate::net::tcp::ready(l.fd, libc::POLLIN, &mut wait).await;
                continue;
            }
            Err(e) => Err(e),
        };
        match accepted {
            Ok((stream, peer)) => {
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
                serve_accepted(&shard, stream, peer, &l.key);
                // Overloaded (stop_accepting_connections): accept nothing
                // more until the manager says so; new connections wait in
                // the listen backlog (Envoy's action of the same name).
                // The check comes after an accept because the loop sleeps
                // in its wait: the one connection that wakes it is served.
                while shard.overload_actions.get().stop_accepting_connections {
                    let resume = shard.resume.borrow().clone();
                    let resumed = async {
                        let _ = resume.acquire(1).await;
                        false
                    };
                    if future::or(resumed, stopped()).await {
                        return;
                    }
                }
            }
            Err(e) => {
                // try_acquire fails once the stop switch is closed.
                if e.raw_os_error() == Some(libc::EINVAL) || stop.try_acquire(1).is_err() {
                    // The listener was shut down (drain, or a reload removed
                    // it): not an error, and nothing more will be accepted
                    // here.
                    return;
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
                let slept = async {
                    glommio::timer::sleep(backoff).await;
                    false
                };
                if future::or(slept, stopped()).await {
                    return;
                }
            }
        }
    }
}
