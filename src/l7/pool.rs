//! Per-core keep-alive pool of upstream connections, per endpoint.
//!
//! No background task: an entry is checked when it is taken (its age, and,
//! unless it came back moments ago, a non-blocking `MSG_PEEK` that sees a FIN,
//! a reset or stray bytes from a server that closed it; see [`Liveness`]) and
//! expired entries are dropped when new ones are put back. Cores never share
//! connections.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

/// Where a pooled connection goes: the endpoint and the bound source address.
pub type Key = (SocketAddr, Option<IpAddr>);

/// How [`Pool::take`] makes sure a pooled connection is still open.
///
/// The check is a one-byte non-blocking `MSG_PEEK` (a `recvfrom`): a third of
/// the receive syscalls of a keep-alive request. It cannot make reuse safe
/// on its own: the server may close the connection right after it looked.
/// What does is in `l7::Conn::attempts`: a reused connection that fails
/// before any response byte arrives sends the request once more on a fresh
/// connection. The peek only saves that round trip, and only when the server
/// closed the connection while it sat idle, which servers do after their
/// keep-alive timeout counted from the response we read last, i.e. from when
/// the connection came back to the pool (nginx 75 s, Apache httpd and
/// Node.js 5 s, gunicorn 2 s by default). A connection that came back less
/// than [`TRUST_IDLE_UNDER`] ago is therefore reused unchecked when the
/// request can be sent again; under load every reuse is that case (the pool
/// hands out the most recently returned connection, microseconds old), and a
/// connection idle for longer, when one more syscall per request costs
/// nothing, is still checked.
///
/// The others: nginx's keepalive module gives each cached connection a read
/// handler, so any readability (FIN, reset, stray bytes) closes it at once;
/// that costs nothing with epoll, where the descriptor is registered anyway.
/// An error on a cached connection then does not use up a try
/// (`ngx_http_upstream_next`), but POST, PATCH and LOCK are not retried once
/// sent. Envoy reads idle pooled connections too and drops one on a remote
/// close; the race left over surfaces as a 503 (UC) unless a retry policy
/// covers resets. HAProxy (`http-reuse safe`) sends a client connection's
/// first request on a connection of its own and reuses idle ones only for
/// later requests, which the client itself may retry after a close. With
/// glommio's io_uring, watching an idle connection would take an armed recv
/// per put and a cancel per take, more ring traffic than the syscall saved,
/// so Remora checks when it takes, and only where the check can pay off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Peek unless the connection came back under [`TRUST_IDLE_UNDER`] ago:
    /// for requests that go once more on a fresh connection if it was dead.
    TrustRecent,
    /// Always peek: for requests that cannot be sent again (a streamed body),
    /// and for non-idempotent methods. Those are sent again too when their
    /// body is buffered, but a reused connection that dies before answering
    /// cannot tell "closed while idle" from "took the request and failed"
    /// (RFC 9112 §9.3.1 forbids proxies to retry them automatically), so
    /// finding a dead connection before sending, which keeps that resend
    /// rare, is worth a syscall.
    Always,
}

/// How recently a pooled connection must have come back to be reused without
/// the peek (see [`Liveness`]): below every common server keep-alive timeout.
pub const TRUST_IDLE_UNDER: Duration = Duration::from_secs(1);

/// An idle upstream connection.
pub struct Idle {
    pub stream: TcpStream,
    since: Instant,
}

#[derive(Default)]
pub struct Pool {
    idle: HashMap<Key, Vec<Idle>>,
}

impl Pool {
    /// The most recently used live connection to `key`, checked as
    /// `liveness` says. Dead or expired ones met on the way are returned in
    /// `dropped` for the caller to account.
    pub fn take(
        &mut self,
        key: Key,
        max_age: Duration,
        liveness: Liveness,
        dropped: &mut Vec<TcpStream>,
    ) -> Option<TcpStream> {
        let list = self.idle.get_mut(&key)?;
        let now = Instant::now();
        while let Some(c) = list.pop() {
            let idle = now.saturating_duration_since(c.since);
            let fresh = liveness == Liveness::TrustRecent && idle < TRUST_IDLE_UNDER;
            if idle < max_age && (fresh || still_open(&c.stream)) {
                return Some(c.stream);
            }
            dropped.push(c.stream);
        }
        None
    }

    /// Keeps `stream` unless the endpoint already has `max_idle` idle ones
    /// (then it comes back in `dropped`), dropping expired entries too.
    pub fn put(
        &mut self,
        key: Key,
        stream: TcpStream,
        max_idle: usize,
        max_age: Duration,
        dropped: &mut Vec<TcpStream>,
    ) {
        let list = self.idle.entry(key).or_default();
        let mut i = 0;
        while i < list.len() {
            if list[i].since.elapsed() >= max_age {
                dropped.push(list.remove(i).stream);
            } else {
                i += 1;
            }
        }
        if list.len() < max_idle {
            list.push(Idle {
                stream,
                since: Instant::now(),
            });
        } else {
            dropped.push(stream);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }
}

/// A pooled connection is reusable only if reading it would block: EOF means
/// the server closed it, bytes mean it sent something unasked, an error means
/// it reset.
fn still_open(stream: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: valid buffer of one byte; MSG_PEEK leaves the socket unchanged.
    let rc = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}
