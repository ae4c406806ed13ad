//! L4 forwarding: moves bytes both ways between two connected sockets.
//!
//! Shape of one connection (both directions run in one task):
//!
//! ```text
//!   down ──readable?──► recv into per-core scratch ─ send ──► up      (copy)
//!                    └► splice into a pooled pipe ── splice ─► up     (splice)
//!   up   ──────────────────── same, mirrored ─────────────────► down
//! ```
//!
//! Memory: an idle connection owns no buffer and no pipe. glommio's read path
//! tries `recv` and, on EAGAIN, arms a POLL_ADD through the ring and returns
//! Pending without keeping the caller's buffer; so the copy path reads straight
//! into the core's scratch buffer when data is there, and an idle direction
//! costs only the pending poll (no kernel worker thread: FACTS.md). Splice mode
//! waits the same way with a one-byte read, then splices the rest through a pipe
//! borrowed from the core's pool. If the destination cannot take everything at
//! once (its send buffer is full), the remainder moves into a buffer owned by
//! the connection until the destination drains it: only connections under
//! back-pressure hold memory. Measured: ~3.3 KiB of RSS per idle connection.
//!
//! Fairness: one readiness event moves at most [`BUDGET`] bytes, and between
//! events the pump calls `glommio::yield_if_needed`, which yields when the
//! executor's preemption timer has fired. Without the two, a fast sender and a
//! fast receiver on loopback kept one connection's loop running for a whole
//! multi-GiB transfer without ever returning to the executor, and every other
//! connection on the core (and its control channel, drain and timers) waited.
//! Other work on the core now waits at most about one preemption period
//! (glommio's default is 100 ms) per turn.
//!
//! Half-close: EOF from one side becomes `shutdown(SHUT_WR)` on the other and the
//! opposite direction keeps flowing. A reset on either side becomes a reset on
//! the other (SO_LINGER 0 then close). No bytes in either direction for
//! `idle_timeout` closes both.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::{pin, Pin};
use std::task::Poll;
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::config::Forwarding;
use crate::net::socket::{self, Pipe, Xfer};

/// Size of the per-core copy buffer and of one splice step.
pub const CHUNK: usize = 64 * 1024;
/// Most bytes one readiness event moves before the pump lets the executor
/// decide whether other tasks are owed a turn (see the module doc).
pub const BUDGET: usize = 512 * 1024;
/// Pipes a core keeps for reuse; more are created on demand and closed after use.
const PIPE_POOL_MAX: usize = 64;

thread_local! {
    /// Per-core copy buffer; borrowed only between two awaits.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; CHUNK].into_boxed_slice());
    /// Per-core pool of empty pipes for splice mode.
    static PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// How a forwarded connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Both sides closed cleanly.
    Closed,
    /// One side reset (or failed); the other was reset too.
    Reset(Side),
    /// No bytes either way for the idle timeout.
    IdleTimeout,
}

/// Which socket of the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// What one forwarded connection did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Bytes from downstream to upstream.
    pub bytes_up: u64,
    /// Bytes from upstream to downstream.
    pub bytes_down: u64,
    pub ending: Ending,
}

/// Forwards until both directions are closed, one side resets, or the
/// connection idles out. Both sockets must be non-blocking.
pub async fn forward(
    down: &mut TcpStream,
    up: &mut TcpStream,
    mode: Forwarding,
    idle_timeout: Duration,
) -> Report {
    let (down_fd, up_fd) = (down.as_raw_fd(), up.as_raw_fd());
    let up_bytes = Cell::new(0u64);
    let down_bytes = Cell::new(0u64);
    let pumps = async {
        let mut a = pin!(pump(down, up_fd, mode, &up_bytes));
        let mut b = pin!(pump(up, down_fd, mode, &down_bytes));
        let (mut ra, mut rb) = (None, None);
        // Run both directions; stop at the first error, or when both are done.
        future::poll_fn(|cx| {
            if ra.is_none() {
                if let Poll::Ready(r) = a.as_mut().poll(cx) {
                    ra = Some(r);
                }
            }
            if rb.is_none() {
                if let Poll::Ready(r) = b.as_mut().poll(cx) {
                    rb = Some(r);
                }
            }
            match (&ra, &rb) {
                (Some(Err(_)), _) | (_, Some(Err(_))) | (Some(_), Some(_)) => Poll::Ready(()),
                _ => Poll::Pending,
            }
        })
        .await;
        let ending = match (ra, rb) {
            (Some(Err(PumpError::Read(_))), _) => Ending::Reset(Side::Downstream),
            (Some(Err(PumpError::Write(_))), _) => Ending::Reset(Side::Upstream),
            (_, Some(Err(PumpError::Read(_)))) => Ending::Reset(Side::Upstream),
            (_, Some(Err(PumpError::Write(_)))) => Ending::Reset(Side::Downstream),
            _ => Ending::Closed,
        };
        if ending != Ending::Closed {
            // Pass the reset on: close both with RST rather than FIN.
            socket::set_linger_zero(up_fd);
            socket::set_linger_zero(down_fd);
        }
        ending
    };
    // Idle detection without reading the clock on the data path: a watchdog
    // wakes four times per idle period and compares the byte counters. The
    // connection closes after between 1 and 1.25 idle periods of silence.
    let idle = async {
        let tick = (idle_timeout / 4).max(Duration::from_millis(1));
        let mut seen = up_bytes.get() + down_bytes.get();
        let mut quiet = Duration::ZERO;
        loop {
            glommio::timer::sleep(tick).await;
            let now = up_bytes.get() + down_bytes.get();
            if now != seen {
                seen = now;
                quiet = Duration::ZERO;
            } else {
                quiet += tick;
                if quiet >= idle_timeout {
                    return Ending::IdleTimeout;
                }
            }
        }
    };
    let ending = future::or(pumps, idle).await;
    Report {
        bytes_up: up_bytes.get(),
        bytes_down: down_bytes.get(),
        ending,
    }
}

#[derive(Debug)]
enum PumpError {
    /// Reading the source failed (it reset).
    Read(#[allow(dead_code)] io::Error),
    /// Writing the destination failed (it reset or went away).
    Write(#[allow(dead_code)] io::Error),
}

/// One direction: `src` → `dst` until EOF (then half-close `dst`) or error.
///
/// Only the source is borrowed mutably (glommio's read path needs it); the
/// destination is written through its raw fd, so the two directions of one
/// connection never borrow the same stream.
async fn pump(
    src: &mut TcpStream,
    dfd: RawFd,
    mode: Forwarding,
    total: &Cell<u64>,
) -> Result<(), PumpError> {
    let sfd = src.as_raw_fd();
    loop {
        let step = match mode {
            Forwarding::Copy => {
                // glommio's read tries recv() and, on EAGAIN, arms a POLL_ADD
                // through the ring and returns Pending *without keeping the
                // buffer*: so an idle connection holds no buffer, and a ready one
                // reads straight into the core's scratch buffer. `copy_ready` runs
                // in the same poll as the read completes, before any other task
                // can touch the scratch buffer.
                let n = future::poll_fn(|cx| {
                    SCRATCH.with(|b| Pin::new(&mut *src).poll_read(cx, &mut b.borrow_mut()[..]))
                })
                .await
                .map_err(PumpError::Read)?;
                if n == 0 {
                    socket::shutdown_write(dfd);
                    return Ok(());
                }
                copy_ready(n, sfd, dfd)?
            }
            Forwarding::Splice => {
                let step = splice_ready(None, sfd, dfd)?;
                if step.moved > 0 || step.eof || step.backlog.is_some() {
                    step
                } else {
                    // Nothing to splice: wait for readability the same way as
                    // copy mode. The one byte that wakes us goes into the pipe
                    // ahead of the spliced rest, so order is kept.
                    let mut first = [0u8; 1];
                    let n = src.read(&mut first).await.map_err(PumpError::Read)?;
                    if n == 0 {
                        socket::shutdown_write(dfd);
                        return Ok(());
                    }
                    splice_ready(Some(first[0]), sfd, dfd)?
                }
            }
        };
        if step.moved > 0 {
            total.set(total.get() + step.moved as u64);
        }
        if let Some(rest) = step.backlog {
            let len = rest.len() as u64;
            write_all_when_writable(dfd, rest)
                .await
                .map_err(PumpError::Write)?;
            total.set(total.get() + len);
        }
        if step.eof {
            socket::shutdown_write(dfd);
            return Ok(());
        }
        // Give the core back if its preemption timer says others are owed a
        // turn (two loads and a compare otherwise). Without this, a source
        // that always has data keeps this loop going without an await that
        // ever returns Pending.
        glommio::yield_if_needed().await;
    }
}

/// The synchronous part of one readable event.
struct Step {
    /// Bytes fully handed to the destination's socket.
    moved: usize,
    /// Bytes read but not yet accepted by the destination (it pushed back).
    backlog: Option<Vec<u8>>,
    /// The source reached EOF after the bytes above.
    eof: bool,
}

impl Step {
    fn new(moved: usize) -> Step {
        Step {
            moved,
            backlog: None,
            eof: false,
        }
    }
}

/// Copy mode: `first` bytes are already in the scratch buffer. Send them, and
/// keep reading while the source fills whole buffers, up to the budget.
fn copy_ready(first: usize, sfd: RawFd, dfd: RawFd) -> Result<Step, PumpError> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let mut moved = 0;
        let mut n = first;
        loop {
            let mut sent = 0;
            while sent < n {
                match socket::send(dfd, &buf[sent..n]).map_err(PumpError::Write)? {
                    Xfer::Done(m) => sent += m,
                    Xfer::Eof | Xfer::WouldBlock => {
                        let mut step = Step::new(moved + sent);
                        step.backlog = Some(buf[sent..n].to_vec());
                        return Ok(step);
                    }
                }
            }
            moved += n;
            if n < buf.len() {
                // A short read means the socket is drained: go back to waiting
                // instead of paying for a recv that returns EAGAIN.
                return Ok(Step::new(moved));
            }
            if moved >= BUDGET {
                return Ok(Step::new(moved));
            }
            n = match socket::recv(sfd, &mut buf).map_err(PumpError::Read)? {
                Xfer::Done(n) => n,
                Xfer::WouldBlock => return Ok(Step::new(moved)),
                Xfer::Eof => {
                    let mut step = Step::new(moved);
                    step.eof = true;
                    return Ok(step);
                }
            };
        }
    })
}

/// Splice mode: socket → pooled pipe → socket, no user-space copy. `first` is a
/// byte already read from the source (it goes into the pipe first). If the
/// destination pushes back, whatever sits in the pipe is read out into an owned
/// buffer so the pipe can go back to the pool empty (a rare, bounded copy).
fn splice_ready(first: Option<u8>, sfd: RawFd, dfd: RawFd) -> Result<Step, PumpError> {
    let pipe = match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => p,
        None => Pipe::new().map_err(PumpError::Read)?,
    };
    let result = splice_through(&pipe, first, sfd, dfd);
    match &result {
        // splice_through leaves the pipe empty whenever it returns Ok.
        Ok(_) => PIPES.with(|p| {
            let mut p = p.borrow_mut();
            if p.len() < PIPE_POOL_MAX {
                p.push(pipe);
            }
        }),
        // On error the pipe may hold bytes: close it rather than reuse it.
        Err(_) => drop(pipe),
    }
    result
}

fn splice_through(
    pipe: &Pipe,
    mut first: Option<u8>,
    sfd: RawFd,
    dfd: RawFd,
) -> Result<Step, PumpError> {
    let mut moved = 0;
    loop {
        let mut in_pipe = 0;
        if let Some(b) = first.take() {
            match socket::write(pipe.write, &[b]).map_err(PumpError::Read)? {
                Xfer::Done(1) => in_pipe = 1,
                _ => {
                    return Err(PumpError::Read(io::Error::other(
                        "empty pipe refused a byte",
                    )))
                }
            }
        }
        let mut eof = false;
        match socket::splice(sfd, pipe.write, CHUNK).map_err(PumpError::Read)? {
            Xfer::Done(n) => in_pipe += n,
            Xfer::Eof => eof = true,
            Xfer::WouldBlock => {}
        }
        let got = in_pipe;
        // GRO can put more in a pipe than its nominal size; we only ever move
        // what splice reported, so the count stays exact.
        while in_pipe > 0 {
            match socket::splice(pipe.read, dfd, in_pipe).map_err(PumpError::Write)? {
                Xfer::Done(m) => in_pipe -= m,
                Xfer::Eof | Xfer::WouldBlock => {
                    let mut rest = vec![0u8; in_pipe];
                    let mut filled = 0;
                    while filled < in_pipe {
                        match socket::read(pipe.read, &mut rest[filled..])
                            .map_err(PumpError::Read)?
                        {
                            Xfer::Done(k) => filled += k,
                            Xfer::Eof | Xfer::WouldBlock => break,
                        }
                    }
                    rest.truncate(filled);
                    let mut step = Step::new(moved + got - in_pipe);
                    step.backlog = Some(rest);
                    step.eof = eof;
                    return Ok(step);
                }
            }
        }
        moved += got;
        if eof || got < CHUNK || moved >= BUDGET {
            let mut step = Step::new(moved);
            step.eof = eof;
            return Ok(step);
        }
    }
}

/// Writes `data` to `fd`, waiting for writability through glommio.
///
/// glommio has no public "wait until writable" for a raw fd, but its own
/// `TcpStream` write path does exactly that (send, and on EAGAIN a POLLOUT
/// through the ring). So we wrap a `dup` of the fd for the duration of the
/// write; closing the dup leaves the connection open. This only runs under
/// back-pressure, never on the fast path.
async fn write_all_when_writable(fd: RawFd, data: Vec<u8>) -> io::Result<()> {
    // SAFETY: dup of a valid fd; the new fd is owned by the TcpStream below.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stream = unsafe { TcpStream::from_raw_fd(dup) };
    stream.write_all(&data).await
}
