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
//! Memory: an idle connection owns no buffer and no pipe. Readiness is awaited
//! with a one-byte `MSG_PEEK` through the ring (io_uring arms an internal poll, so
//! no kernel worker thread waits per idle connection). Once readable, the copy
//! path borrows the core's scratch buffer and the splice path a pipe from the
//! core's pool, both only for the synchronous part of the transfer. If the
//! destination cannot take everything at once (its send buffer is full), the
//! remainder moves into a buffer owned by the connection until the destination
//! drains it: only connections under back-pressure hold memory.
//!
//! Half-close: EOF from one side becomes `shutdown(SHUT_WR)` on the other and the
//! opposite direction keeps flowing. A reset on either side becomes a reset on
//! the other (SO_LINGER 0 then close). No bytes in either direction for
//! `idle_timeout` closes both.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future;
use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::config::Forwarding;
use crate::net::socket::{self, Pipe, Xfer};

/// Size of the per-core copy buffer and of one splice step.
pub const CHUNK: usize = 64 * 1024;
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
    down: &TcpStream,
    up: &TcpStream,
    mode: Forwarding,
    idle_timeout: Duration,
) -> Report {
    let last = Cell::new(Instant::now());
    let up_bytes = Cell::new(0u64);
    let down_bytes = Cell::new(0u64);
    let pumps = async {
        let mut a = pin!(pump(down, up, mode, &last, &up_bytes));
        let mut b = pin!(pump(up, down, mode, &last, &down_bytes));
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
            socket::set_linger_zero(up.as_raw_fd());
            socket::set_linger_zero(down.as_raw_fd());
        }
        ending
    };
    let idle = async {
        loop {
            let deadline = last.get() + idle_timeout;
            let now = Instant::now();
            if now >= deadline {
                return Ending::IdleTimeout;
            }
            glommio::timer::sleep(deadline - now).await;
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
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    mode: Forwarding,
    last: &Cell<Instant>,
    total: &Cell<u64>,
) -> Result<(), PumpError> {
    let (sfd, dfd) = (src.as_raw_fd(), dst.as_raw_fd());
    let mut probe = [0u8; 1];
    loop {
        // Wait for data, EOF or an error without holding any buffer.
        match src.peek(&mut probe).await {
            Ok(0) => {
                socket::shutdown_write(dfd);
                return Ok(());
            }
            Ok(_) => {}
            Err(e) => return Err(PumpError::Read(e.into())),
        }
        let step = match mode {
            Forwarding::Copy => copy_ready(sfd, dfd)?,
            Forwarding::Splice => splice_ready(sfd, dfd)?,
        };
        if step.moved > 0 {
            total.set(total.get() + step.moved as u64);
            last.set(Instant::now());
        }
        if let Some(rest) = step.backlog {
            write_all_when_writable(dfd, rest)
                .await
                .map_err(PumpError::Write)?;
            total.set(total.get() + step.backlog_len as u64);
            last.set(Instant::now());
        }
        if step.eof {
            socket::shutdown_write(dfd);
            return Ok(());
        }
    }
}

/// The synchronous part of one readable event.
struct Step {
    /// Bytes fully handed to the destination's socket.
    moved: usize,
    /// Bytes read but not yet accepted by the destination.
    backlog: Option<Vec<u8>>,
    backlog_len: usize,
    /// The source reached EOF after the bytes above.
    eof: bool,
}

/// Copy mode: recv into the core's scratch buffer and send it on, until the
/// source has nothing more or the destination pushes back.
fn copy_ready(sfd: RawFd, dfd: RawFd) -> Result<Step, PumpError> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let mut moved = 0;
        loop {
            let n = match socket::recv(sfd, &mut buf).map_err(PumpError::Read)? {
                Xfer::Done(n) => n,
                Xfer::Eof => {
                    return Ok(Step {
                        moved,
                        backlog: None,
                        backlog_len: 0,
                        eof: true,
                    })
                }
                Xfer::WouldBlock => {
                    return Ok(Step {
                        moved,
                        backlog: None,
                        backlog_len: 0,
                        eof: false,
                    })
                }
            };
            let mut sent = 0;
            while sent < n {
                match socket::send(dfd, &buf[sent..n]).map_err(PumpError::Write)? {
                    Xfer::Done(m) => sent += m,
                    Xfer::Eof | Xfer::WouldBlock => {
                        let rest = buf[sent..n].to_vec();
                        return Ok(Step {
                            moved: moved + sent,
                            backlog_len: rest.len(),
                            backlog: Some(rest),
                            eof: false,
                        });
                    }
                }
            }
            moved += n;
            if n < buf.len() {
                // A short read means the socket is drained: go back to waiting
                // instead of paying for a recv that returns EAGAIN.
                return Ok(Step {
                    moved,
                    backlog: None,
                    backlog_len: 0,
                    eof: false,
                });
            }
        }
    })
}

/// Splice mode: socket → pooled pipe → socket, no user-space copy. If the
/// destination pushes back, whatever sits in the pipe is read out into an owned
/// buffer so the pipe can go back to the pool (a rare, bounded copy).
fn splice_ready(sfd: RawFd, dfd: RawFd) -> Result<Step, PumpError> {
    let pipe = match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => p,
        None => Pipe::new().map_err(PumpError::Read)?,
    };
    let result = splice_through(&pipe, sfd, dfd);
    match &result {
        // The pipe is empty again in every Ok case (see splice_through).
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

fn splice_through(pipe: &Pipe, sfd: RawFd, dfd: RawFd) -> Result<Step, PumpError> {
    let mut moved = 0;
    loop {
        let n = match socket::splice(sfd, pipe.write, CHUNK).map_err(PumpError::Read)? {
            Xfer::Done(n) => n,
            Xfer::Eof => {
                return Ok(Step {
                    moved,
                    backlog: None,
                    backlog_len: 0,
                    eof: true,
                })
            }
            Xfer::WouldBlock => {
                return Ok(Step {
                    moved,
                    backlog: None,
                    backlog_len: 0,
                    eof: false,
                })
            }
        };
        // GRO can put more than `n`'s nominal chunk in the pipe; track what is
        // actually there by what splice reported.
        let mut in_pipe = n;
        while in_pipe > 0 {
            match socket::splice(pipe.read, dfd, in_pipe).map_err(PumpError::Write)? {
                Xfer::Done(m) => in_pipe -= m,
                Xfer::Eof | Xfer::WouldBlock => {
                    let mut rest = vec![0u8; in_pipe];
                    let mut got = 0;
                    while got < in_pipe {
                        match socket::read(pipe.read, &mut rest[got..]).map_err(PumpError::Read)? {
                            Xfer::Done(k) => got += k,
                            Xfer::Eof | Xfer::WouldBlock => break,
                        }
                    }
                    rest.truncate(got);
                    return Ok(Step {
                        moved: moved + n - in_pipe,
                        backlog_len: rest.len(),
                        backlog: Some(rest),
                        eof: false,
                    });
                }
            }
        }
        moved += n;
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
