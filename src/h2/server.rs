//! `h2::conn` on a glommio socket: the connection's task reads into the
//! codec and writes what it queued; each stream is a [`StreamRef`] its
//! request's future reads its body from and answers through.
//!
//! ```text
//!  connection task (l7::h2::serve), one poll:
//!    socket ──read──► Conn::recv ──► streams touched: their wakers woken
//!    accept ─► a StreamRef per new stream, its future pushed to the set
//!    streams polled: read bodies, queue heads/DATA/trailers in Conn::out
//!    Conn::out ──write──► socket   (what one poll queued goes in one write)
//! ```
//!
//! Every stream future runs inside the connection task (a `FuturesUnordered`
//! there), so nothing here is shared across tasks: the codec is in a
//! `RefCell`, borrowed only inside a call and never across an await. A
//! stream waits with one waker (the set gives each future its own) for
//! whatever it waits on from the connection: data, the end of the body, a
//! reset, send window, or room in the output.
//!
//! Output is bounded: past [`HIGH_WATER`] bytes unwritten, writers wait
//! for the socket, and reading stops past four times that, so a client that
//! does not read its socket holds a bounded buffer (and its streams run into
//! stream_idle_timeout) rather than the proxy's memory.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures_lite::io::AsyncWrite;

use super::conn::Conn;
use super::frame::ErrorCode;
use super::hpack::Encoder;
use super::link::{ConnError, Read, Settings};
use super::request::{Malformed, RequestHead};
use super::wire::{self, Core};
use crate::net::batch::Multiplexed;
use crate::net::buf::{poll_read_via_scratch, Buf};
use crate::net::Stream;

/// Bytes queued for the client past which streams wait before sending more.
pub const HIGH_WATER: usize = 64 * 1024;

/// Reads per poll of the connection before it lets other tasks run.
const READS_PER_POLL: usize = 16;

/// What the connection task and its streams share: the codec and the
/// output's state ([`Core`]), and the streams still to answer.
struct Shared {
    core: Core<Conn>,
    /// Accepted streams that have not sent their response head yet.
    awaiting_head: Cell<u32>,
}

impl std::ops::Deref for Shared {
    type Target = Core<Conn>;
    fn deref(&self) -> &Core<Conn> {
        &self.core
    }
}

/// Why the connection's read side ended.
#[derive(Debug)]
pub enum Ended {
    /// The client closed its side.
    Eof,
    Io(io::Error),
    /// A connection error: GOAWAY with its code is queued.
    Protocol(ConnError),
}

/// The connection: the socket, the codec, and the bytes between them.
pub struct Server {
    shared: Rc<Shared>,
    io: Stream,
    /// The start of a frame the last read cut short.
    partial: Vec<u8>,
    /// Bytes read before the codec started (the preface an HTTP/1 reader
    /// found), fed first.
    first: Option<Buf>,
    /// The read side ended.
    ended: bool,
}

impl Server {
    pub fn new(io: Stream, first: Option<Buf>, settings: Settings) -> Server {
        Server {
            shared: Rc::new(Shared {
                core: Core::new(Conn::new(settings)),
                awaiting_head: Cell::new(0),
            }),
            io,
            partial: Vec::new(),
            first,
            ended: false,
        }
    }

    /// Hands `bytes` to the codec: Err on a connection error.
    fn feed(shared: &Shared, partial: &mut Vec<u8>, bytes: &[u8]) -> Result<(), ConnError> {
        let mut conn = shared.conn.borrow_mut();
        let r = wire::feed(&mut *conn, partial, bytes);
        shared.wake_touched(&mut conn);
        r
    }

    /// Reads what the socket has into the codec, waking the streams it
    /// concerns. Pending while the connection goes on; Ready once the read
    /// side has ended (then the streams are woken to find out).
    pub fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Ended> {
        if self.ended {
            return Poll::Pending;
        }
        if let Some(b) = self.first.take() {
            let r = Self::feed(&self.shared, &mut self.partial, b.bytes());
            b.release();
            if let Err(e) = r {
                return self.end(Ended::Protocol(e));
            }
        }
        for _ in 0..READS_PER_POLL {
            // A client that does not read what it asked for is not read
            // from either (the write side wakes this task when it drains).
            if self.shared.queued(&mut self.shared.conn.borrow_mut()) > 4 * HIGH_WATER {
                return Poll::Pending;
            }
            let (shared, partial) = (&self.shared, &mut self.partial);
            let mut fed = Ok(());
            match poll_read_via_scratch(&mut self.io, cx, usize::MAX, |b| {
                fed = Self::feed(shared, partial, b);
            }) {
                Poll::Ready(Ok(0)) => return self.end(Ended::Eof),
                Poll::Ready(Ok(_)) => {
                    if let Err(e) = fed {
                        return self.end(Ended::Protocol(e));
                    }
                }
                Poll::Ready(Err(e)) => return self.end(Ended::Io(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn end(&mut self, why: Ended) -> Poll<Ended> {
        self.ended = true;
        self.shared.dead.set(true);
        self.shared.wake_all();
        Poll::Ready(why)
    }

    /// Writes what the codec queued. Ready(Ok) once all of it is written.
    pub fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shared = &*self.shared;
        shared.poll_write(&mut self.io, HIGH_WATER, cx)
    }

    /// Bytes queued and not written yet.
    pub fn queued(&self) -> usize {
        self.shared.queued(&mut self.shared.conn.borrow_mut())
    }

    /// Gives back what a burst grew, once no stream is left and nothing is
    /// queued (an idle connection keeps small buffers).
    pub fn shrink(&mut self) {
        if self.queued() == 0 {
            self.shared.conn.borrow_mut().shrink();
            self.shared.shrink_wakers();
        }
        if self.partial.is_empty() && self.partial.capacity() > 16 * 1024 {
            self.partial = Vec::new();
        }
    }

    /// The next stream whose request head is in, with its head (Err: a
    /// head over the header list limit, to answer 431).
    pub fn accept(&self) -> Option<(StreamRef, Result<RequestHead, Malformed>)> {
        let mut conn = self.shared.conn.borrow_mut();
        let id = conn.accept()?;
        let head = conn.take_head(id)?;
        let shared = &self.shared;
        shared.awaiting_head.set(shared.awaiting_head.get() + 1);
        Some((
            StreamRef(Rc::new(Handle {
                id,
                shared: shared.clone(),
                head_sent: Cell::new(false),
                _batch: Multiplexed::open(),
            })),
            head,
        ))
    }

    /// Accepted streams that have not sent their response head yet (the
    /// connection's task holds a write back while some have not, briefly,
    /// so that answers that complete together leave together).
    pub fn awaiting_head(&self) -> u32 {
        self.shared.awaiting_head.get()
    }

    /// Streams the client reset before they were accepted (rapid reset).
    pub fn resets_before_accept(&self) -> u32 {
        self.shared.conn.borrow().resets_before_accept
    }

    /// GOAWAY: streams the client opened so far finish, later ones are
    /// not processed.
    pub fn goaway(&self, code: ErrorCode) {
        self.shared.conn.borrow_mut().goaway(code);
    }

    /// The read side ended or the codec failed.
    pub fn is_dead(&self) -> bool {
        self.shared.dead.get()
    }

    /// Closes the socket (after the last write).
    pub async fn close(mut self) {
        let _ = futures_lite::future::poll_fn(|cx| Pin::new(&mut self.io).poll_close(cx)).await;
    }
}

/// A stream of the connection: its request body to read and its answer
/// to send. Clones share it; the last one dropped closes it (a stream
/// still open either way is reset).
#[derive(Clone)]
pub struct StreamRef(Rc<Handle>);

struct Handle {
    id: u32,
    shared: Rc<Shared>,
    head_sent: Cell<bool>,
    /// Counted for the core's loop batching (`net::batch`).
    _batch: Multiplexed,
}

impl Handle {
    fn head_sent(&self) {
        if !self.head_sent.replace(true) {
            let n = &self.shared.awaiting_head;
            n.set(n.get().saturating_sub(1));
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.head_sent();
        self.shared.forget(self.id);
        self.shared.conn.borrow_mut().close(self.id);
    }
}

impl StreamRef {
    fn with<R>(&self, f: impl FnOnce(&mut Conn, u32) -> R) -> R {
        f(&mut self.0.shared.conn.borrow_mut(), self.0.id)
    }

    /// Moves received body data into `buf` (its window credited back).
    pub fn poll_read(&self, cx: &Context<'_>, buf: &mut Vec<u8>) -> Poll<Read> {
        if self.0.shared.dead.get() {
            return Poll::Ready(Read::Reset(ErrorCode::CANCEL));
        }
        match self.with(|c, id| c.read(id, buf)) {
            Read::Pending => {
                self.0.shared.register(self.0.id, cx);
                Poll::Pending
            }
            r => Poll::Ready(r),
        }
    }

    /// The request's trailers, once the body has ended.
    pub fn take_trailers(&self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        self.with(|c, id| c.take_trailers(id))
    }

    /// Ready once the stream is reset (by the client, or for a protocol
    /// error) or the connection is gone.
    pub fn poll_reset(&self, cx: &Context<'_>) -> Poll<()> {
        if self.0.shared.dead.get() || self.with(|c, id| c.is_reset(id)) {
            return Poll::Ready(());
        }
        self.0.shared.register(self.0.id, cx);
        Poll::Pending
    }

    /// Whether the stream was reset or the connection is gone.
    pub fn is_reset(&self) -> bool {
        self.0.shared.dead.get() || self.with(|c, id| c.is_reset(id))
    }

    /// Room to send DATA now: the windows, and the output's room. Err when
    /// the stream can send no more (reset, ended, connection gone).
    pub fn poll_capacity(&self, cx: &Context<'_>) -> Poll<Result<usize, ()>> {
        self.0.shared.poll_capacity(self.0.id, HIGH_WATER, cx)
    }

    /// The response head (`fields` encodes the status and fields).
    pub fn send_head(&self, end_stream: bool, fields: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        self.0.head_sent();
        self.with(|c, id| c.send_head(id, end_stream, fields))
    }

    /// Sends what the windows allow of `data`; returns how much.
    pub fn send_data(&self, data: &[u8], end: bool) -> usize {
        self.with(|c, id| c.send_data(id, data, end))
    }

    /// Trailers, ending the stream.
    pub fn send_trailers(&self, fields: impl FnOnce(&mut Encoder, &mut Vec<u8>)) {
        self.with(|c, id| c.send_trailers(id, fields))
    }

    pub fn reset(&self, code: ErrorCode) {
        self.with(|c, id| c.reset(id, code))
    }

    /// The request has no more body to read (END_STREAM on its head).
    pub fn recv_done(&self) -> bool {
        self.with(|c, id| c.recv_done(id))
    }

    /// Received data nobody read.
    pub fn unread(&self) -> usize {
        self.with(|c, id| c.unread(id))
    }
}
