//! L4 forwarding: moves bytes both ways between two connected sockets.
//!
//! Shape of one connection (both directions run in one task):
//!
//! ```text
//!   down ──readable?──► recv into per-core scratch ─ send ──► up         (both modes)
//!                        └ filled it? bulk under way:
//!                             splice ─ pooled pipe ─ splice ──► up       (splice mode)
//!                             or recv again ─ send ───────────► up       (copy mode)
//!   up   ──────────────────── same, mirrored ─────────────────► down
//! ```
//!
//! Both modes start every readiness event the same way: one `recv` into the
//! core's scratch buffer and one `send`. A read that does not fill the buffer
//! means the socket is drained, which is the common case of small messages, and
//! the event ends there (2 syscalls per message and direction). Only a read that
//! fills the buffer (a bulk transfer is under way) goes on: copy mode with more
//! recv/send pairs, splice mode by splicing the rest through a pipe borrowed
//! from the core's pool, which saves the two user-space copies per byte, in
//! steps of up to 256 KiB. Measured (perf/README.md): splice mode makes 4
//! syscalls per small request/response like copy mode (it made 12 when every
//! event spliced), and ~16 per 1 MiB response (it made ~46).
//!
//! Fairness: one readiness event moves at most [`BUDGET`] bytes, and a pump
//! that has moved that much without waiting gives the core back through the
//! reactor ([`crate::turn`]): the executor then polls the ring and runs the
//! core's other connections before the pump goes on. Without it, a fast sender
//! and a fast receiver on loopback kept one connection's loop running for a
//! whole multi-GiB transfer; with glommio's `yield_if_needed`, others waited a
//! preemption period (100 ms) per hop. Now they wait about one budget's work
//! (~0.1 ms) per hop.
//!
//! Memory: an idle connection owns no buffer and no pipe. The read
//! ([`crate::net::tcp`]) tries `recv` and, on EAGAIN, arms a POLL_ADD on the
//! ring and returns Pending without keeping the caller's buffer; so the read goes straight into
//! the core's scratch buffer when data is there, and an idle direction costs
//! only the pending poll (no kernel worker thread: FACTS.md). A pipe is borrowed
//! only within one readiness event and goes back to the pool empty. If the
//! destination cannot take everything at once (its send buffer is full), the
//! remainder moves into a buffer owned by the connection until the destination
//! drains it: only connections under back-pressure hold memory. Measured:
//! ~2.7 KiB of RSS per idle connection (perf/README.md, "Memory per idle
//! connection"), glommio's two pending polls included.
//!
//! Half-close: EOF from one side becomes `shutdown(SHUT_WR)` on the other and the
//! opposite direction keeps flowing. A reset on either side becomes a reset on
//! the other (SO_LINGER 0 then close). No bytes in either direction for
//! `idle_timeout` closes both.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future;

use crate::config::Forwarding;
use crate::deadline::Slot;
use crate::net::socket::{self, Pipe, Xfer};
use crate::net::tcp::Tcp;
use crate::net::Stream;
use crate::turn::Turn;

mod relay;

/// Size of the per-core copy buffer.
pub const CHUNK: usize = 64 * 1024;
/// Most bytes one splice call moves. Larger than CHUNK: a spliced byte costs
/// no copy, so fewer, larger calls are cheaper (4 pairs per MiB instead of 16).
/// The pipe holds four steps (1 MiB, the unprivileged limit by default).
const SPLICE_STEP: usize = 256 * 1024;
/// Most bytes one readiness event moves; also the most a pump moves without
/// waiting before it gives the core back ([`crate::turn::BUDGET`]). 128 KiB
/// and 512 KiB cost the same with 1 MiB responses and with an endless bulk
/// transfer (perf/README.md, "Fairness: the give-back that slept").
pub const BUDGET: usize = crate::turn::BUDGET;
/// Pipes a core keeps for reuse; more are created on demand and closed after
/// use. A pipe is borrowed only within one synchronous event, so a core uses
/// one at a time: a few are plenty.
const PIPE_POOL_MAX: usize = 4;

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
    down: &mut Tcp,
    up: &mut Tcp,
    mode: Forwarding,
    idle_timeout: Duration,
) -> Report {
    let (down_fd, up_fd) = (down.as_raw_fd(), up.as_raw_fd());
    let up_bytes = Cell::new(0u64);
    let down_bytes = Cell::new(0u64);
    let a = pump(down, up_fd, mode, &up_bytes);
    let b = pump(up, down_fd, mode, &down_bytes);
    let ending = join(
        a,
        b,
        (down_fd, up_fd),
        (&up_bytes, &down_bytes),
        idle_timeout,
    )
    .await;
    Report {
        bytes_up: up_bytes.get(),
        bytes_down: down_bytes.get(),
        ending,
    }
}

/// [`forward`] for connections where either side may be TLS: splice and
/// raw-fd copies need plain sockets on both ends, so a TLS side goes
/// through [`relay`]'s stream copy instead. Plain-to-plain keeps `forward`.
pub async fn forward_streams(
    down: &mut Stream,
    up: &mut Stream,
    mode: Forwarding,
    idle_timeout: Duration,
) -> Report {
    if let (Stream::Plain(d), Stream::Plain(u)) = (&mut *down, &mut *up) {
        return forward(d, u, mode, idle_timeout).await;
    }
    // Boxed: inline, the stream copy would make every L4 connection's task
    // (plain ones too) as large as the larger of the two paths.
    Box::pin(forward_tls(down, up, idle_timeout)).await
}

async fn forward_tls(down: &mut Stream, up: &mut Stream, idle_timeout: Duration) -> Report {
    let (down_fd, up_fd) = (down.as_raw_fd(), up.as_raw_fd());
    let (Ok(mut down_w), Ok(mut up_w)) = (down.writer(), up.writer()) else {
        return Report {
            bytes_up: 0,
            bytes_down: 0,
            ending: Ending::Reset(Side::Downstream),
        };
    };
    let up_bytes = Cell::new(0u64);
    let down_bytes = Cell::new(0u64);
    let a = relay::copy(down, &mut up_w, &up_bytes);
    let b = relay::copy(up, &mut down_w, &down_bytes);
    let ending = join(
        a,
        b,
        (down_fd, up_fd),
        (&up_bytes, &down_bytes),
        idle_timeout,
    )
    .await;
    Report {
        bytes_up: up_bytes.get(),
        bytes_down: down_bytes.get(),
        ending,
    }
}

/// Runs both directions (`a`: down → up, `b`: up → down) until both are
/// done, one fails, or nothing moved for `idle_timeout`.
///
/// A plain function that composes futures rather than an `async fn`: an
/// async fn keeps its arguments `a` and `b` for its whole life beside the
/// pinned copies it polls, so every idle L4 connection carried both pumps
/// twice (perf/README.md, "Memory per idle connection").
fn join<'c, A, B>(
    a: A,
    b: B,
    fds: (RawFd, RawFd),
    (up_bytes, down_bytes): (&'c Cell<u64>, &'c Cell<u64>),
    idle_timeout: Duration,
) -> impl Future<Output = Ending> + 'c
where
    A: Future<Output = Result<(), PumpError>> + 'c,
    B: Future<Output = Result<(), PumpError>> + 'c,
{
    let idle = IdleWatch {
        counters: (up_bytes, down_bytes),
        tick: (idle_timeout / 4).max(Duration::from_millis(1)),
        timeout: idle_timeout,
        seen: up_bytes.get() + down_bytes.get(),
        quiet: Duration::ZERO,
        slot: None,
    };
    let pumps = Pumps {
        a,
        b,
        ra: None,
        rb: None,
        fds,
    };
    future::or(pumps, idle)
}

/// Idle detection without reading the clock on the data path: a watchdog
/// wakes four times per idle period and compares the byte counters. The
/// connection closes after between 1 and 1.25 idle periods of silence.
///
/// A hand-written future on the core's deadline registry
/// ([`crate::deadline`]) rather than an `async` block around
/// `glommio::timer::sleep`: the connection's task polls it every time either
/// pump is woken, i.e. twice per request, and a glommio timer's poll reads the
/// clock and removes and re-inserts itself in the reactor's timer maps each
/// time (16% of the proxy's user-space instructions per request on
/// l4-keepalive, perf/README.md "L4 keep-alive against nginx stream"). A
/// registry slot's poll is a look-up in a per-core slab; the clock is read
/// once per tick.
struct IdleWatch<'c> {
    /// (bytes up, bytes down)
    counters: (&'c Cell<u64>, &'c Cell<u64>),
    tick: Duration,
    timeout: Duration,
    /// The counters' sum at the last tick.
    seen: u64,
    /// Silence so far, in whole ticks.
    quiet: Duration,
    /// The next tick, once armed.
    slot: Option<Slot>,
}

impl Future for IdleWatch<'_> {
    type Output = Ending;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Ending> {
        let this = &mut *self;
        loop {
            match &this.slot {
                None => {
                    this.slot = Some(Slot::at(Instant::now() + this.tick, cx.waker()));
                    return Poll::Pending;
                }
                Some(slot) if !slot.expired(cx.waker()) => return Poll::Pending,
                Some(_) => this.slot = None,
            }
            let now = this.counters.0.get() + this.counters.1.get();
            if now != this.seen {
                this.seen = now;
                this.quiet = Duration::ZERO;
            } else {
                this.quiet += this.tick;
                if this.quiet >= this.timeout {
                    return Poll::Ready(Ending::IdleTimeout);
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// Both directions of one connection, polled in place ([`join`]).
    struct Pumps<A, B> {
        #[pin]
        a: A,
        #[pin]
        b: B,
        ra: Option<Result<(), PumpError>>,
        rb: Option<Result<(), PumpError>>,
        // (down, up)
        fds: (RawFd, RawFd),
    }
}

impl<A, B> Future for Pumps<A, B>
where
    A: Future<Output = Result<(), PumpError>>,
    B: Future<Output = Result<(), PumpError>>,
{
    type Output = Ending;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Ending> {
        let this = self.project();
        // Run both directions; stop at the first error, or when both are done.
        if this.ra.is_none() {
            if let Poll::Ready(r) = this.a.poll(cx) {
                *this.ra = Some(r);
            }
        }
        if this.rb.is_none() {
            if let Poll::Ready(r) = this.b.poll(cx) {
                *this.rb = Some(r);
            }
        }
        let ending = match (&*this.ra, &*this.rb) {
            (Some(Err(PumpError::Read(_))), _) => Ending::Reset(Side::Downstream),
            (Some(Err(PumpError::Write(_))), _) => Ending::Reset(Side::Upstream),
            (_, Some(Err(PumpError::Read(_)))) => Ending::Reset(Side::Upstream),
            (_, Some(Err(PumpError::Write(_)))) => Ending::Reset(Side::Downstream),
            (Some(_), Some(_)) => Ending::Closed,
            _ => return Poll::Pending,
        };
        if ending != Ending::Closed {
            // Pass the reset on: close both with RST rather than FIN.
            let (down_fd, up_fd) = *this.fds;
            socket::set_linger_zero(up_fd);
            socket::set_linger_zero(down_fd);
        }
        Poll::Ready(ending)
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
/// Only the source is borrowed mutably (its read wait is its own); the
/// destination is written through its raw fd, so the two directions of one
/// connection never borrow the same stream.
async fn pump(
    src: &mut Tcp,
    dfd: RawFd,
    mode: Forwarding,
    total: &Cell<u64>,
) -> Result<(), PumpError> {
    let sfd = src.as_raw_fd();
    let mut next = Start::Read;
    let mut turn = Turn::new();
    loop {
        let step = match next {
            Start::Read => {
                // The read tries recv() and, on EAGAIN, arms a readiness
                // wait on the ring and returns Pending *without keeping the
                // buffer*: so an idle connection holds no buffer, and a ready
                // one reads straight into the core's scratch buffer. The code
                // below runs in the same poll as the read completes, before
                // any other task can touch the scratch buffer.
                let mut waited = false;
                let n = future::poll_fn(|cx| {
                    let r = SCRATCH.with(|b| src.poll_read(cx, &mut b.borrow_mut()[..]));
                    waited |= r.is_pending();
                    r
                })
                .await
                .map_err(PumpError::Read)?;
                if waited {
                    turn.waited();
                }
                if n == 0 {
                    socket::shutdown_write(dfd);
                    return Ok(());
                }
                match mode {
                    Forwarding::Copy => copy_ready(n, sfd, dfd)?,
                    Forwarding::Splice => splice_ready(n, sfd, dfd)?,
                }
            }
            Start::Splice => splice_ready(0, sfd, dfd)?,
        };
        next = if step.more && mode == Forwarding::Splice {
            Start::Splice
        } else {
            Start::Read
        };
        if step.moved > 0 {
            total.set(total.get() + step.moved as u64);
        }
        if let Some(rest) = step.backlog {
            let len = rest.len() as u64;
            // Boxed: back-pressure is the rare case, and inline its stream
            // and write future would sit in every idle connection's pumps.
            Box::pin(write_all_when_writable(dfd, rest))
                .await
                .map_err(PumpError::Write)?;
            total.set(total.get() + len);
            // The destination pushed back: this pump waited for it.
            turn.waited();
        }
        if step.eof {
            socket::shutdown_write(dfd);
            return Ok(());
        }
        // A source that always has data and a destination that always has
        // room never make this loop wait: give the core back every BUDGET
        // bytes (crate::turn).
        turn.moved(step.moved).await;
    }
}

/// How a direction's next readiness event starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Start {
    /// Wait for readability and read into the scratch buffer (both modes,
    /// every event but the one below).
    Read,
    /// Splice mode: the last event stopped at its budget with the source still
    /// full, so splice at once without waiting.
    Splice,
}

/// The synchronous part of one readable event.
#[derive(Debug, Default)]
struct Step {
    /// Bytes fully handed to the destination's socket.
    moved: usize,
    /// Bytes read but not yet accepted by the destination (it pushed back).
    backlog: Option<Vec<u8>>,
    /// The source reached EOF after the bytes above.
    eof: bool,
    /// The event stopped at [`BUDGET`] with the source still full.
    more: bool,
}

impl Step {
    fn new(moved: usize) -> Step {
        Step {
            moved,
            ..Step::default()
        }
    }
}

/// Sends `buf` to `dfd`. `Err(sent)` when the destination pushed back after
/// `sent` bytes.
fn send_all(dfd: RawFd, buf: &[u8]) -> Result<Result<(), usize>, PumpError> {
    let mut sent = 0;
    while sent < buf.len() {
        match socket::send(dfd, &buf[sent..]).map_err(PumpError::Write)? {
            Xfer::Done(m) => sent += m,
            Xfer::Eof | Xfer::WouldBlock => return Ok(Err(sent)),
        }
    }
    Ok(Ok(()))
}

/// Copy mode: `first` bytes are already in the scratch buffer. Send them, and
/// keep reading while the source fills whole buffers, up to the budget.
fn copy_ready(first: usize, sfd: RawFd, dfd: RawFd) -> Result<Step, PumpError> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        let mut moved = 0;
        let mut n = first;
        loop {
            if let Err(sent) = send_all(dfd, &buf[..n])? {
                let mut step = Step::new(moved + sent);
                step.backlog = Some(buf[sent..n].to_vec());
                return Ok(step);
            }
            moved += n;
            if n < buf.len() {
                // A short read means the socket is drained: go back to waiting
                // instead of paying for a recv that returns EAGAIN.
                return Ok(Step::new(moved));
            }
            if crate::turn::spent(moved) {
                let mut step = Step::new(moved);
                step.more = true;
                return Ok(step);
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

/// Splice mode: copy the small, splice the bulk. `scratch` bytes are already
/// in the scratch buffer (0 when an event continues a bulk transfer straight
/// from the last one, [`Start::Splice`]). They are sent as in copy mode; if
/// they did not fill the buffer the socket is drained and the event ends, as
/// cheap as copy mode. If they did, a bulk transfer is under way and the rest
/// goes socket → pooled pipe → socket without a user-space copy, until the
/// source runs dry, the destination pushes back or the budget is spent.
fn splice_ready(scratch: usize, sfd: RawFd, dfd: RawFd) -> Result<Step, PumpError> {
    if scratch > 0 {
        let sent = SCRATCH.with(|b| send_all(dfd, &b.borrow()[..scratch]))?;
        if let Err(sent) = sent {
            let rest = SCRATCH.with(|b| b.borrow()[sent..scratch].to_vec());
            let mut step = Step::new(sent);
            step.backlog = Some(rest);
            return Ok(step);
        }
        if scratch < CHUNK {
            return Ok(Step::new(scratch));
        }
    }
    let pipe = match PIPES.with(|p| p.borrow_mut().pop()) {
        Some(p) => p,
        None => Pipe::new(4 * SPLICE_STEP).map_err(PumpError::Read)?,
    };
    let result = splice_through(&pipe, sfd, dfd, BUDGET.saturating_sub(scratch));
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
    let mut step = result?;
    step.moved += scratch;
    Ok(step)
}

/// Splices `sfd` → `pipe` → `dfd` in steps of up to [`SPLICE_STEP`] until the source runs dry,
/// reaches EOF, the destination pushes back, or `budget` bytes have moved. If
/// the destination pushes back, whatever sits in the pipe is read out into an
/// owned buffer so the pipe can go back to the pool empty (a rare, bounded copy).
fn splice_through(pipe: &Pipe, sfd: RawFd, dfd: RawFd, budget: usize) -> Result<Step, PumpError> {
    // A pipe slot holds one page or less of one skb fragment, so a step can
    // need more slots than step / 4096: the pipe is made four times larger,
    // and a short splice then really means the socket had no more.
    let step = SPLICE_STEP.min(pipe.capacity / 4);
    let mut moved = 0;
    loop {
        let mut eof = false;
        let mut in_pipe = match socket::splice(sfd, pipe.write, step).map_err(PumpError::Read)? {
            Xfer::Done(n) => n,
            Xfer::Eof => {
                eof = true;
                0
            }
            Xfer::WouldBlock => 0,
        };
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
        if eof || got < step {
            let mut step = Step::new(moved);
            step.eof = eof;
            return Ok(step);
        }
        if moved >= budget {
            let mut step = Step::new(moved);
            step.more = true;
            return Ok(step);
        }
    }
}

/// Writes `data` to `fd`, waiting for writability on a readiness wait of
/// its own. This only runs under back-pressure, never on the fast path.
async fn write_all_when_writable(fd: RawFd, data: Vec<u8>) -> io::Result<()> {
    let mut wait = crate::net::uring::Readiness::new();
    let mut rest = &data[..];
    while !rest.is_empty() {
        match socket::send(fd, rest)? {
            Xfer::Done(n) => rest = &rest[n..],
            Xfer::Eof => return Err(io::ErrorKind::WriteZero.into()),
            Xfer::WouldBlock => crate::net::tcp::ready(fd, libc::POLLOUT, &mut wait).await,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle L4 connection's pumps weigh (printed with `cargo test
    /// --lib idle_ -- --nocapture`; perf/README.md, "Memory per idle
    /// connection").
    #[test]
    fn idle_pump_sizes() {
        fn pump_size<'a, F: Future>(
            _: impl FnOnce(&'a mut Tcp, RawFd, Forwarding, &'a Cell<u64>) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        fn forward_size<'a, F: Future>(
            _: impl FnOnce(&'a mut Tcp, &'a mut Tcp, Forwarding, Duration) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        eprintln!("l4 pump future: {} B", pump_size(pump));
        eprintln!("l4::forward future: {} B", forward_size(forward));
    }
}
