//! Per-core multiplexed HTTP/2 connections to upstream endpoints, on the
//! codec's own client side ([`super::client_conn`]).
//!
//! A request takes a stream on an open connection to its endpoint (same
//! source and TLS profile: [`pool::Key`]) that has room under the peer's
//! SETTINGS_MAX_CONCURRENT_STREAMS, or a new connection is made (within the
//! cluster's `max_connections`). Each connection's socket is driven by a
//! task of its own on this core ([`drive`]): it feeds what it reads to the
//! codec, wakes the streams that concern, and writes what the streams
//! queued. It ends when the peer closes or breaks the protocol, after a
//! GOAWAY once the streams it allowed have finished, or once the pool has
//! let go of the connection and its last stream is gone. Cores never share
//! connections.
//!
//! ```text
//!  request's task                 connection task (drive)
//!   Conn::open ──HEADERS──► out ──────────write──────► socket
//!   UpStream::send_data ──► out         │
//!   UpStream::poll_head ◄── codec ◄──read── socket
//!   UpStream::poll_read ◄── codec  (streams touched: their wakers woken)
//! ```
//!
//! The codec is in a `RefCell` borrowed only inside a call, never across
//! an await. While a connection to an endpoint is being made, other
//! requests for it wait for that one ([`Connecting`]) instead of each
//! making its own: a burst of requests opens one connection, not one per
//! request.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::AsyncWrite;

use super::client_conn::{ClientConn, NotOpened, ResponseHead};
use super::frame::ErrorCode;
use super::hpack::Encoder;
use super::link::{Read, Reset, Settings};
use super::wire::{self, Core};
use crate::deadline::until;
use crate::net::batch::Multiplexed;
use crate::net::buf::poll_read_via_scratch;
use crate::net::Stream;
use crate::upstream::pool;

/// Bytes queued for the upstream past which request bodies wait.
const HIGH_WATER: usize = 64 * 1024;

/// How long closing the socket may take (a TLS close_notify to a peer that
/// does not read).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Reads per poll of the connection task before it lets other tasks run.
const READS_PER_POLL: usize = 16;

/// What the connection's task, its pool entry and its streams share: the
/// codec and the output's state ([`Core`]), and the task's own.
struct Shared {
    core: Core<ClientConn>,
    /// The connection's task, to write what a stream queued.
    driver: RefCell<Option<Waker>>,
    /// The pool let go of the connection: it ends with its last stream.
    released: Cell<bool>,
    /// Streams whose handles are alive (requests whose answers are not
    /// yet relayed): the connection is idle at 0.
    handles: Cell<usize>,
}

impl std::ops::Deref for Shared {
    type Target = Core<ClientConn>;
    fn deref(&self) -> &Core<ClientConn> {
        &self.core
    }
}

impl Shared {
    fn wake_driver(&self) {
        if let Some(w) = self.driver.borrow().as_ref() {
            w.wake_by_ref();
        }
    }
}

/// One upstream HTTP/2 connection, as the pool holds it.
pub struct Conn {
    shared: Rc<Shared>,
    /// A stream could not be opened on it (refused, or broken).
    unusable: Cell<bool>,
    /// When the last stream ended (for the idle timeout).
    idle_since: Cell<Instant>,
    /// Its place under the cluster's `max_connections`, and its use count.
    lease: RefCell<pool::Lease>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.shared.released.set(true);
        self.shared.wake_driver();
    }
}

impl Conn {
    fn usable(&self) -> bool {
        !self.shared.dead.get() && !self.unusable.get() && !self.shared.conn.borrow().is_closing()
    }

    /// It can take one more stream now.
    pub fn available(&self) -> bool {
        self.usable() && self.has_room()
    }

    fn has_room(&self) -> bool {
        self.shared.conn.borrow().can_open().is_ok()
    }

    /// No new stream goes on this connection (it refused one, or went away).
    pub fn retire(&self) {
        self.unusable.set(true);
    }

    /// Opens a stream: `fields` encodes the request's pseudo-headers and
    /// fields. `head_request`: the method is HEAD.
    pub fn open(
        self: &Rc<Conn>,
        end_stream: bool,
        head_request: bool,
        fields: impl FnOnce(&mut Encoder, &mut Vec<u8>),
    ) -> Result<UpStream, NotOpened> {
        let shared = &self.shared;
        if shared.dead.get() {
            return Err(NotOpened::Closing);
        }
        let id = shared
            .conn
            .borrow_mut()
            .open(end_stream, head_request, fields)?;
        shared.handles.set(shared.handles.get() + 1);
        self.lease.borrow_mut().uses += 1;
        shared.wake_driver();
        Ok(UpStream(Rc::new(Handle {
            id,
            conn: self.clone(),
            _batch: Multiplexed::open(),
        })))
    }
}

/// A stream on an upstream connection: its request body to send and its
/// answer to read. Clones share it; the last one dropped closes it (a
/// stream still open either way is reset).
#[derive(Clone)]
pub struct UpStream(Rc<Handle>);

struct Handle {
    id: u32,
    conn: Rc<Conn>,
    /// Counted for the core's loop batching (`net::batch`).
    _batch: Multiplexed,
}

impl Drop for Handle {
    fn drop(&mut self) {
        let conn = &self.conn;
        let shared = &conn.shared;
        shared.forget(self.id);
        let reset = {
            let mut c = shared.conn.borrow_mut();
            let before = c.out().len();
            c.close(self.id);
            c.out().len() > before
        };
        let handles = shared.handles.get().saturating_sub(1);
        shared.handles.set(handles);
        if handles == 0 {
            conn.idle_since.set(Instant::now());
        }
        // A RST_STREAM to write, or the last stream gone (the connection
        // may end now).
        if reset || handles == 0 {
            shared.wake_driver();
        }
    }
}

/// How a stream ends when its connection is gone.
const CONNECTION_GONE: Reset = Reset {
    code: ErrorCode::CANCEL,
    remote: false,
    unprocessed: false,
};

impl UpStream {
    fn shared(&self) -> &Shared {
        &self.0.conn.shared
    }

    fn with<R>(&self, f: impl FnOnce(&mut ClientConn, u32) -> R) -> R {
        f(&mut self.shared().conn.borrow_mut(), self.0.id)
    }

    /// Like [`UpStream::with`], for a call that may queue output: the
    /// connection's task is woken to write it if it did (only then: each
    /// needless pass of that task is a read attempt and a loop pass more).
    fn queue<R>(&self, f: impl FnOnce(&mut ClientConn, u32) -> R) -> R {
        let shared = self.shared();
        let (r, grew) = {
            let mut c = shared.conn.borrow_mut();
            let before = c.out().len();
            let r = f(&mut c, self.0.id);
            (r, c.out().len() > before)
        };
        if grew {
            shared.wake_driver();
        }
        r
    }

    /// The connection this stream is on.
    pub fn conn(&self) -> &Rc<Conn> {
        &self.0.conn
    }

    /// The final response head, once it came; Err if the stream ended
    /// first.
    pub fn poll_head(&self, cx: &Context<'_>) -> Poll<Result<ResponseHead, Reset>> {
        let r = self.with(|c, id| match c.take_head(id) {
            Some(h) => Some(Ok(h)),
            None => c.reset_of(id).map(Err),
        });
        match r {
            Some(r) => Poll::Ready(r),
            None if self.shared().dead.get() => Poll::Ready(Err(CONNECTION_GONE)),
            None => {
                self.shared().register(self.0.id, cx);
                Poll::Pending
            }
        }
    }

    /// Moves received body data into `buf` (its window credited back).
    pub fn poll_read(&self, cx: &Context<'_>, buf: &mut Vec<u8>) -> Poll<Read> {
        let r = self.queue(|c, id| c.read(id, buf));
        match r {
            Read::Pending if self.shared().dead.get() => {
                Poll::Ready(Read::Reset(ErrorCode::CANCEL))
            }
            Read::Pending => {
                self.shared().register(self.0.id, cx);
                Poll::Pending
            }
            r => Poll::Ready(r),
        }
    }

    /// The answer's trailers, once its body has ended.
    pub fn take_trailers(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with(|c, id| c.take_trailers(id))
    }

    /// Nothing more to read (END_STREAM came, no data or trailers left).
    pub fn recv_done(&self) -> bool {
        self.with(|c, id| c.recv_done(id))
    }

    /// Room to send DATA now: the windows, and the output's room. Err when
    /// the stream can send no more (reset, ended, connection gone).
    pub fn poll_capacity(&self, cx: &Context<'_>) -> Poll<Result<usize, ()>> {
        self.shared().poll_capacity(self.0.id, HIGH_WATER, cx)
    }

    /// Whether the stream can still send (not reset or ended, connection
    /// alive).
    pub fn can_send(&self) -> bool {
        !self.shared().dead.get() && self.with(|c, id| c.can_send(id))
    }

    /// Sends what the windows allow of `data`; returns how much.
    pub fn send_data(&self, data: &[u8], end: bool) -> usize {
        self.queue(|c, id| c.send_data(id, data, end))
    }

    /// Trailers, ending the request.
    pub fn send_trailers(&self, fields: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        self.queue(|c, id| c.send_trailers(id, fields))
    }

    /// Gives up on the stream (RST_STREAM).
    pub fn reset(&self, code: ErrorCode) {
        self.queue(|c, id| c.reset(id, code))
    }
}

/// A new upstream connection: the client preface and SETTINGS are queued,
/// and a task of this core's executor drives the socket. Requests may be
/// sent at once (§3.4: a client need not wait for the server's SETTINGS).
pub fn connect(stream: Stream, lease: pool::Lease, settings: Settings) -> Rc<Conn> {
    let shared = Rc::new(Shared {
        core: Core::new(ClientConn::new(settings)),
        driver: RefCell::new(None),
        released: Cell::new(false),
        handles: Cell::new(0),
    });
    glommio::spawn_local(drive(shared.clone(), stream)).detach();
    Rc::new(Conn {
        shared,
        unusable: Cell::new(false),
        idle_since: Cell::new(Instant::now()),
        lease: RefCell::new(lease),
    })
}

/// The connection's task: reads into the codec, writes what it queued,
/// until the connection is over or nobody needs it any more.
async fn drive(shared: Rc<Shared>, mut io: Stream) {
    let mut partial = Vec::new();
    let mut read_open = true;
    poll_fn(|cx| {
        {
            let mut d = shared.driver.borrow_mut();
            if !d.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *d = Some(cx.waker().clone());
            }
        }
        if read_open {
            match poll_reads(&shared, &mut io, &mut partial, cx) {
                Poll::Ready(why) => {
                    tracing::debug!(why, "upstream HTTP/2 connection ended");
                    read_open = false;
                    shared.dead.set(true);
                    shared.wake_all();
                }
                Poll::Pending => {}
            }
        }
        let flushed = shared.poll_write(&mut io, HIGH_WATER, cx);
        let flushed = match flushed {
            Poll::Ready(Ok(())) => true,
            Poll::Ready(Err(e)) => {
                tracing::debug!(error = %e, "upstream HTTP/2 connection: write failed");
                return Poll::Ready(());
            }
            Poll::Pending => false,
        };
        let mut conn = shared.conn.borrow_mut();
        let idle = shared.handles.get() == 0;
        // The last words (a connection error's GOAWAY, or ours when the
        // pool let go) get the write just tried, not a wait: a peer that
        // does not read must not hold the task and its socket for ever.
        if shared.dead.get() || conn.failed().is_some() {
            return Poll::Ready(());
        }
        if idle && (shared.released.get() || conn.goaway_received().is_some()) {
            if shared.released.get() && !conn.is_closing() {
                // A polite end: GOAWAY, written on the next pass.
                conn.goaway();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(());
        }
        if idle && flushed {
            conn.shrink();
        }
        Poll::Pending
    })
    .await;
    shared.dead.set(true);
    shared.wake_all();
    // Bounded too: closing TLS writes a close_notify.
    let close = poll_fn(|cx| Pin::new(&mut io).poll_close(cx));
    let _ = until(Some(Instant::now() + CLOSE_GRACE), close).await;
}

/// Reads what the socket has into the codec, waking the streams it
/// concerns; Ready (with why) once the read side is over.
fn poll_reads(
    shared: &Shared,
    io: &mut Stream,
    partial: &mut Vec<u8>,
    cx: &mut Context<'_>,
) -> Poll<&'static str> {
    for _ in 0..READS_PER_POLL {
        if shared.queued(&mut shared.conn.borrow_mut()) > 4 * HIGH_WATER {
            // A peer that does not read is not read from either.
            return Poll::Pending;
        }
        let mut fed = Ok(());
        let r = poll_read_via_scratch(io, cx, usize::MAX, |b| {
            let mut conn = shared.conn.borrow_mut();
            fed = wire::feed(&mut *conn, partial, b);
            shared.wake_touched(&mut conn);
        });
        match r {
            Poll::Ready(Ok(0)) => return Poll::Ready("closed by the peer"),
            Poll::Ready(Ok(_)) => {
                if let Err(e) = fed {
                    return Poll::Ready(e.reason);
                }
            }
            Poll::Ready(Err(_)) => return Poll::Ready("read failed"),
            Poll::Pending => return Poll::Pending,
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
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
                && (c.shared.handles.get() > 0
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
