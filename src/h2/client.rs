//! Per-core multiplexed HTTP/2 connections to upstream endpoints.
//!
//! A request takes a stream on an open connection to its endpoint (same
//! source and TLS profile: [`pool::Key`]) that has room under the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS, or a new connection is made (within the
//! cluster's `max_connections`). Each connection's frames are driven by a
//! task of its own on this core; it ends when the peer closes, after a
//! GOAWAY once the streams it allowed have finished, or when the pool lets
//! go of an idle connection. Cores never share connections.
//!
//! While a connection to an endpoint is being made, other requests for it
//! wait for that one ([`Connecting`]) instead of each making its own: a
//! burst of requests opens one connection, not one per request.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

use crate::net::Stream;
use crate::upstream::pool;

use super::Io;

/// One upstream HTTP/2 connection.
pub struct Conn {
    send: SendRequest<Bytes>,
    /// Streams open on it (requests whose answers are not yet relayed).
    in_flight: Cell<usize>,
    /// The driver task has ended: the connection is gone.
    closed: Rc<Cell<bool>>,
    /// A stream could not be opened on it (GOAWAY received, or broken).
    unusable: Cell<bool>,
    /// When the last stream ended (for the idle timeout).
    idle_since: Cell<Instant>,
    /// Its place under the cluster's `max_connections`, and its use count.
    lease: RefCell<pool::Lease>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.closed.get() && !self.unusable.get()
    }

    /// It can take one more stream now.
    pub fn available(&self) -> bool {
        self.usable() && self.has_room()
    }

    fn has_room(&self) -> bool {
        self.in_flight.get() < self.send.current_max_send_streams().max(1)
    }

    /// The handle to open a stream with.
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.send.clone()
    }

    /// No new stream goes on this connection (it refused one, or went away).
    pub fn retire(&self) {
        self.unusable.set(true);
    }
}

/// A stream's hold on its connection: counted in flight while it lives.
pub struct InFlight(Rc<Conn>);

impl InFlight {
    pub fn conn(&self) -> &Rc<Conn> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let n = self.0.in_flight.get().saturating_sub(1);
        self.0.in_flight.set(n);
        if n == 0 {
            self.0.idle_since.set(Instant::now());
        }
    }
}

/// Starts a stream's hold on `conn`, counting one more use of it.
pub fn hold(conn: &Rc<Conn>) -> InFlight {
    conn.in_flight.set(conn.in_flight.get() + 1);
    conn.lease.borrow_mut().uses += 1;
    InFlight(conn.clone())
}

/// Settings for upstream connections.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    pub max_header_list_size: u32,
}

/// The HTTP/2 handshake on a new upstream connection; its frames are then
/// driven by a task of this core's executor.
pub async fn handshake(
    stream: Stream,
    lease: pool::Lease,
    settings: ClientSettings,
) -> Result<Rc<Conn>, h2::Error> {
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(settings.initial_stream_window_size)
        .initial_connection_window_size(settings.initial_connection_window_size)
        .max_header_list_size(settings.max_header_list_size)
        .handshake::<_, Bytes>(Io::new(stream, None))
        .await?;
    let closed = Rc::new(Cell::new(false));
    let done = closed.clone();
    glommio::spawn_local(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "upstream HTTP/2 connection ended");
        }
        done.set(true);
    })
    .detach();
    Ok(Rc::new(Conn {
        send,
        in_flight: Cell::new(0),
        closed,
        unusable: Cell::new(false),
        idle_since: Cell::new(Instant::now()),
        lease: RefCell::new(lease),
    }))
}

/// A connection being made: requests for the same endpoint wait for it.
#[derive(Default)]
pub struct Connecting {
    done: Cell<bool>,
    conn: RefCell<Option<Rc<Conn>>>,
    waiters: RefCell<Vec<Waker>>,
}

impl Connecting {
    /// The connection once made (None: it failed or was given up).
    pub async fn wait(&self) -> Option<Rc<Conn>> {
        poll_fn(|cx| {
            if self.done.get() {
                Poll::Ready(self.conn.borrow().clone())
            } else {
                self.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    fn finish(&self, conn: Option<Rc<Conn>>) {
        if self.done.replace(true) {
            return;
        }
        *self.conn.borrow_mut() = conn;
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }
}

/// The making of a connection, announced in the pool while it lasts;
/// dropped unfinished (failed, or cancelled by a timeout), it lets the
/// waiters go.
pub struct Making<'p> {
    pool: &'p Pool,
    key: pool::Key,
    connecting: Rc<Connecting>,
}

impl Making<'_> {
    /// The connection is made: into the pool, and to the waiters.
    pub fn done(self, conn: &Rc<Conn>) {
        self.pool.insert(self.key, conn.clone());
        self.connecting.finish(Some(conn.clone()));
    }
}

impl Drop for Making<'_> {
    fn drop(&mut self) {
        self.connecting.finish(None);
        let mut c = self.pool.connecting.borrow_mut();
        if c.get(&self.key)
            .is_some_and(|x| Rc::ptr_eq(x, &self.connecting))
        {
            c.remove(&self.key);
        }
    }
}

/// Open connections, per endpoint, source and TLS profile.
#[derive(Default)]
pub struct Pool {
    conns: RefCell<pool::KeyMap<Vec<Rc<Conn>>>>,
    connecting: RefCell<pool::KeyMap<Rc<Connecting>>>,
}

impl Pool {
    /// A connection to `key` with room for one more stream, under
    /// `max_uses` requests per connection (0: unlimited). Dead ones, and
    /// ones idle longer than `max_idle`, are let go on the way.
    pub fn get(&self, key: pool::Key, max_uses: u32, max_idle: Duration) -> Option<Rc<Conn>> {
        let mut conns = self.conns.borrow_mut();
        let list = conns.get_mut(&key)?;
        let now = Instant::now();
        list.retain(|c| {
            c.usable()
                && (c.in_flight.get() > 0
                    || now.saturating_duration_since(c.idle_since.get()) < max_idle)
        });
        let found = list
            .iter()
            .find(|c| c.has_room() && (max_uses == 0 || c.lease.borrow().uses < max_uses))
            .cloned();
        if list.is_empty() {
            conns.remove(&key);
        }
        found
    }

    /// The connection being made to `key`, if one is.
    pub fn connecting(&self, key: pool::Key) -> Option<Rc<Connecting>> {
        self.connecting.borrow().get(&key).cloned()
    }

    /// Announces that a connection to `key` is being made.
    pub fn making(&self, key: pool::Key) -> Making<'_> {
        let connecting = Rc::new(Connecting::default());
        self.connecting.borrow_mut().insert(key, connecting.clone());
        Making {
            pool: self,
            key,
            connecting,
        }
    }

    pub fn insert(&self, key: pool::Key, conn: Rc<Conn>) {
        self.conns.borrow_mut().entry(key).or_default().push(conn);
    }

    /// Open connections (for stats and tests).
    pub fn len(&self) -> usize {
        self.conns.borrow().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
