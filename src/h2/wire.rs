//! The socket side both HTTP/2 drivers share, the server's
//! ([`super::server`]) and the upstream client's ([`super::client`]): bytes
//! read are fed to the codec whole frames at a time (a frame a read cut
//! short waits in `partial` for the rest), and what the codec queued is
//! written from where the last write stopped.

use std::cell::{Cell, RefCell};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_lite::io::AsyncWrite;

use std::ops::DerefMut;

use super::client_conn::{self, ClientConn};
use super::conn::{self, Conn};
use super::link::{ConnError, Link, StreamMap};
use crate::net::Stream;

/// A connection's codec without I/O, either side: its [`Link`] (output,
/// windows, touched streams) and how it reads frames.
pub(super) trait Codec: DerefMut<Target = Link<Self::Part>> {
    /// What the side keeps of a stream beyond the link.
    type Part;
    /// Reads whole frames from `input`; returns the bytes used.
    fn recv(&mut self, input: &[u8]) -> Result<usize, ConnError>;
}

impl Codec for Conn {
    type Part = conn::ServerStream;
    fn recv(&mut self, input: &[u8]) -> Result<usize, ConnError> {
        Conn::recv(self, input)
    }
}

impl Codec for ClientConn {
    type Part = client_conn::ClientStream;
    fn recv(&mut self, input: &[u8]) -> Result<usize, ConnError> {
        ClientConn::recv(self, input)
    }
}

/// What a connection's driver and its streams share, either side: the
/// codec (in a `RefCell` borrowed only inside a call, never across an
/// await), a waker per waiting stream, and the output's state.
pub(super) struct Core<C> {
    pub conn: RefCell<C>,
    /// One waker per stream waiting on the connection.
    wakers: RefCell<StreamMap<Waker>>,
    /// How much of the codec's output is on the wire already.
    pub written: Cell<usize>,
    /// A writer waits for room in the output.
    out_blocked: Cell<bool>,
    /// The connection is over (EOF, I/O error, connection error): every
    /// stream is as good as reset.
    pub dead: Cell<bool>,
}

impl<C: Codec> Core<C> {
    pub(super) fn new(conn: C) -> Core<C> {
        Core {
            conn: RefCell::new(conn),
            wakers: RefCell::new(StreamMap::default()),
            written: Cell::new(0),
            out_blocked: Cell::new(false),
            dead: Cell::new(false),
        }
    }

    /// Output queued and not written yet.
    pub(super) fn queued(&self, conn: &mut C) -> usize {
        conn.out().len().saturating_sub(self.written.get())
    }

    /// `cx`'s task waits on stream `id` (a clone only when it changed).
    pub(super) fn register(&self, id: u32, cx: &Context<'_>) {
        let mut w = self.wakers.borrow_mut();
        match w.get_mut(&id) {
            Some(old) if old.will_wake(cx.waker()) => {}
            Some(old) => old.clone_from(cx.waker()),
            None => {
                w.insert(id, cx.waker().clone());
            }
        }
    }

    pub(super) fn wake_all(&self) {
        for w in self.wakers.borrow().values() {
            w.wake_by_ref();
        }
    }

    /// Wakes the streams the codec touched.
    pub(super) fn wake_touched(&self, conn: &mut C) {
        let wakers = self.wakers.borrow();
        let all = conn.drain_touched(|id| {
            if let Some(w) = wakers.get(&id) {
                w.wake_by_ref();
            }
        });
        if all {
            for w in wakers.values() {
                w.wake_by_ref();
            }
        }
    }

    /// The stream is gone.
    pub(super) fn forget(&self, id: u32) {
        self.wakers.borrow_mut().remove(&id);
    }

    /// Gives back what a burst of streams grew.
    pub(super) fn shrink_wakers(&self) {
        self.wakers.borrow_mut().shrink_to(8);
    }

    /// Room to send DATA on stream `id` now: the windows, and the output's
    /// room under `high_water`. Err when the stream can send no more
    /// (reset, ended, connection gone).
    pub(super) fn poll_capacity(
        &self,
        id: u32,
        high_water: usize,
        cx: &Context<'_>,
    ) -> Poll<Result<usize, ()>> {
        if self.dead.get() {
            return Poll::Ready(Err(()));
        }
        let mut conn = self.conn.borrow_mut();
        if !conn.can_send(id) {
            return Poll::Ready(Err(()));
        }
        let room = high_water.saturating_sub(self.queued(&mut conn));
        let n = conn.capacity(id).min(room);
        if n > 0 {
            return Poll::Ready(Ok(n));
        }
        if room == 0 {
            self.out_blocked.set(true);
        } else {
            conn.wait_for_window(id);
        }
        drop(conn);
        self.register(id, cx);
        Poll::Pending
    }

    /// Writes what the codec queued ([`poll_flush`]); writers that waited
    /// for room in the output are woken once it is under `high_water`.
    pub(super) fn poll_write(
        &self,
        io: &mut Stream,
        high_water: usize,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let mut conn = self.conn.borrow_mut();
        let r = poll_flush(&mut *conn, &self.written, io, cx);
        if self.out_blocked.get() && self.queued(&mut conn) < high_water {
            self.out_blocked.set(false);
            drop(conn);
            self.wake_all();
        }
        r
    }
}

/// Hands `bytes` (after what `partial` kept) to the codec, keeping a frame
/// cut short for the next read.
pub(super) fn feed(
    conn: &mut impl Codec,
    partial: &mut Vec<u8>,
    bytes: &[u8],
) -> Result<(), ConnError> {
    if partial.is_empty() {
        let used = conn.recv(bytes)?;
        partial.extend_from_slice(&bytes[used..]);
    } else {
        partial.extend_from_slice(bytes);
        let used = conn.recv(partial)?;
        partial.drain(..used);
    }
    Ok(())
}

/// Output past this much written is moved down when a write stalls, so the
/// buffer does not grow at the front for ever.
const COMPACT_AT: usize = 64 * 1024;

/// Writes what the codec queued, from `written` on. Ready(Ok) once all of
/// it is written (the buffer is then cleared).
pub(super) fn poll_flush(
    conn: &mut impl Codec,
    written: &Cell<usize>,
    io: &mut Stream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        let at = written.get();
        let out = conn.out();
        if at >= out.len() {
            out.clear();
            written.set(0);
            conn.written();
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut *io).poll_write(cx, &out[at..]) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => written.set(at + n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {
                if at >= COMPACT_AT {
                    out.drain(..at);
                    written.set(0);
                }
                return Poll::Pending;
            }
        }
    }
}
