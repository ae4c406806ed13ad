//! Parking: how a plain HTTP/1 keep-alive connection that has been idle for a
//! while ([`PARK_AFTER`]) waits for its next bytes without a glommio `Source`.
//!
//! Why: glommio waits for a socket to become readable with a `POLL_ADD` whose
//! `Source` (~435 B with its bookkeeping) it allocates whenever a read would
//! block, and also right after any read that did not fill the buffer (its
//! "early poll"), so every idle connection holds one: about 40 % of an idle
//! HTTP/1 connection's RSS (perf/README.md, "Memory per idle connection").
//! glommio has no public readiness wait for a raw fd and no way to drop the
//! pending poll of a live stream.
//!
//! Since session 39 a plain connection's read waits on readiness of
//! Remora's own, and since session 40 its socket is Remora's own too
//! ([`crate::net::tcp`]: a descriptor and two slab slots, no glommio stream
//! and no glommio poll). Parking no longer saves memory: with 10,000 idle
//! HTTP connections, 720 B per connection parked against 678 B never parked
//! (perf/README.md, "Session 40"), and CPU was level with 1,000 clients
//! each sending every 250 ms. It is a candidate for removal.
//!
//! How, per core, with no thread and nothing shared between cores:
//! - A parked connection is its socket's descriptor, registered in the
//!   core's epoll fd (`EPOLLIN | EPOLLRDHUP | EPOLLONESHOT`, the data is its
//!   waiter's index and generation); its readiness wait, if armed, is
//!   cancelled (by request, not by fd number).
//! - glommio cannot wait on an epoll fd (its socket read `recv`s first), so a
//!   small io_uring of our own (4 entries) holds one `POLL_ADD` on the epoll
//!   fd linked to a `SEND` of one byte on a socketpair. One pump task per core
//!   reads the other end as a glommio `UnixStream`: when a byte comes it
//!   reaps the ring, takes the ready waiters with a zero-timeout
//!   `epoll_wait`, wakes them and re-arms the pair. A poll on the epoll fd
//!   is level-checked when armed, so readiness that came in between is not
//!   lost. One chain per core however many connections are parked.
//! - Woken, the connection reads once with a raw non-blocking `recv` into a
//!   pooled buffer ([`crate::net::buf::recv_fresh`]), then
//!   [`Parked::resume`] deletes the epoll registration and makes a [`Tcp`]
//!   of the fd again.
//! - Cancellation is synchronous: dropping a [`Parked`] (the connection
//!   closed, idled out, was shed or drained) deletes its registration with
//!   `EPOLL_CTL_DEL` before closing its fd, so no readiness of a reused fd
//!   number can reach a new owner, and bumps its waiter's generation, so an
//!   event already taken for it is ignored.
//!
//! What it costs: nothing on the hot path (a keep-alive connection whose
//! next request comes within [`PARK_AFTER`] never parks). A park and its
//! resume (before session 40: dup, close and glommio's cancel, two
//! `epoll_ctl`s, the chain and the pump's pass, a `recv`, a new glommio
//! stream) measured ~40 µs of CPU
//! per request with 1,000 clients each sending every 250 ms (perf/README.md,
//! fourth pass): the L7 path backs a connection's delay off when it is
//! woken soon after parking (`l7::park_backoff`). The kernel keeps an epoll
//! item per parked connection (not in the process's RSS; neither is
//! glommio's io_uring request it replaces).
//!
//! Why the delay is short: the ~435 B freed by a park are holes between a
//! connection's other allocations, so the RSS falls only when later
//! allocations reuse them. With 100 ms, a burst of connections reuses the
//! memory of those that parked before them; parked after 1 s, 10,000 idle
//! connections measured the same RSS as without parking.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::task::{Poll, Waker};
use std::time::Duration;

use glommio::net::UnixStream;
use io_uring::{opcode, squeue, types, IoUring};

use crate::net::buf::{recv_fresh, Buf};
use crate::net::tcp::Tcp;

/// How long a keep-alive connection waits the ordinary way (a glommio read,
/// whose pending poll it already holds from its last request) before it
/// parks, at the least (the L7 path doubles it for a connection that keeps
/// being woken soon after parking). Short enough that the connections of a
/// burst give their polls' memory to the ones that follow (module doc), long
/// enough that a client sending a request every few milliseconds never pays
/// a park.
pub const PARK_AFTER: Duration = Duration::from_millis(100);

/// user_data of the chain's two requests.
const POLL_EPOLL: u64 = 1;
const SEND_BYTE: u64 = 2;
/// The byte the chain sends (its address must stay valid while the SEND is
/// in flight).
static BYTE: u8 = 1;

/// A connection waiting in the core's epoll fd instead of a glommio read.
/// Dropping it deletes the registration and closes the socket.
#[derive(Debug)]
pub struct Parked {
    fd: RawFd,
    index: u32,
    gen: u32,
}

#[derive(Default)]
struct Waiter {
    /// Bumped when the waiter is freed: a key with an older one is stale.
    gen: u32,
    waker: Option<Waker>,
    /// Its one-shot registration fired and has not been read since.
    fired: bool,
}

struct Parker {
    /// The executor it belongs to (a thread may run one after another, as
    /// tests do).
    executor: usize,
    epoll: OwnedFd,
    ring: IoUring,
    /// The chain's end of the socketpair; the pump reads the other.
    tx: OwnedFd,
    /// The POLL_ADD + SEND chain is in flight.
    armed: bool,
    waiters: Vec<Waiter>,
    free: Vec<u32>,
}

enum State {
    None,
    Ready(Box<Parker>),
    /// Set-up failed on this executor: connections wait the ordinary way.
    Failed(usize),
}

thread_local! {
    static PARKER: RefCell<State> = const { RefCell::new(State::None) };
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl Parker {
    /// The core's epoll fd, ring and socketpair, and its pump task.
    fn new(executor: usize) -> io::Result<Parker> {
        // SAFETY: plain syscalls; every fd returned is owned at once.
        let epoll =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let mut pair = [0; 2];
        // SAFETY: `pair` has room for the two fds.
        check(unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
                pair.as_mut_ptr(),
            )
        })?;
        // SAFETY: both fds were just created and are owned here.
        let (tx, rx) = unsafe { (OwnedFd::from_raw_fd(pair[0]), OwnedFd::from_raw_fd(pair[1])) };
        // COOP_TASKRUN for the same reason as glommio's rings (net/uring.rs);
        // a sleeping executor is still woken for its task work.
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(4)
            .or_else(|_| IoUring::new(4))?;
        // SAFETY: `rx` is a connected, non-blocking stream socket we own.
        let rx = unsafe { UnixStream::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(rx)) };
        glommio::spawn_local(pump(executor, rx)).detach();
        Ok(Parker {
            executor,
            epoll,
            ring,
            tx,
            armed: false,
            waiters: Vec::new(),
            free: Vec::new(),
        })
    }

    /// Puts the POLL_ADD + SEND pair in flight unless it is.
    fn arm(&mut self) -> io::Result<()> {
        self.reap();
        if self.armed {
            return Ok(());
        }
        let poll = opcode::PollAdd::new(types::Fd(self.epoll.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(POLL_EPOLL);
        let send = opcode::Send::new(types::Fd(self.tx.as_raw_fd()), &BYTE, 1)
            .build()
            .user_data(SEND_BYTE);
        // SAFETY: the SEND's buffer is a static; the kernel holds its own
        // references to the files of requests in flight.
        unsafe {
            let mut sq = self.ring.submission();
            if sq.capacity() - sq.len() < 2 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            sq.push(&poll).map_err(|_| io::ErrorKind::WouldBlock)?;
            sq.push(&send).map_err(|_| io::ErrorKind::WouldBlock)?;
        }
        self.ring.submit()?;
        self.armed = true;
        Ok(())
    }

    /// Empties the completion queue. A chain whose poll failed sends no
    /// byte: it is no longer armed.
    fn reap(&mut self) {
        for cqe in self.ring.completion() {
            if cqe.user_data() == POLL_EPOLL && cqe.result() < 0 {
                tracing::warn!(
                    error = %io::Error::from_raw_os_error(-cqe.result()),
                    "parked connections' poll failed; re-arming"
                );
                self.armed = false;
            }
        }
    }

    /// The waiters whose registration fired: marked, their wakers taken.
    fn ready(&mut self, wake: &mut Vec<Waker>) {
        const BATCH: usize = 64;
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: `events` has room for BATCH entries.
            let n = unsafe {
                libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, 0)
            };
            if n <= 0 {
                return;
            }
            for e in &events[..n as usize] {
                let (index, gen) = (e.u64 as u32, (e.u64 >> 32) as u32);
                if let Some(w) = self.waiters.get_mut(index as usize) {
                    if w.gen == gen {
                        w.fired = true;
                        wake.extend(w.waker.take());
                    }
                }
            }
            if (n as usize) < BATCH {
                return;
            }
        }
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, key: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: key,
        };
        // SAFETY: `ev` is valid for the call; a bad fd is an error, not UB.
        check(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), op, fd, &mut ev) }).map(|_| ())
    }
}

fn key(index: u32, gen: u32) -> u64 {
    index as u64 | (gen as u64) << 32
}

/// Runs `f` on this executor's parker, creating it on first use; `None`
/// when it cannot be set up here (or while the thread's locals are torn down).
fn with_parker<R>(f: impl FnOnce(&mut Parker) -> R) -> Option<R> {
    let id = glommio::executor().id();
    PARKER
        .try_with(|state| {
            let mut state = state.try_borrow_mut().ok()?;
            let stale = match &*state {
                State::Ready(p) => p.executor != id,
                State::Failed(e) => *e != id,
                State::None => true,
            };
            if stale {
                // Whatever an ended executor left is dropped here; nothing of
                // it runs any more.
                *state = match Parker::new(id) {
                    Ok(p) => State::Ready(Box::new(p)),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot park idle connections on this core; they wait the ordinary way");
                        State::Failed(id)
                    }
                };
            }
            match &mut *state {
                State::Ready(p) => Some(f(p)),
                _ => None,
            }
        })
        .ok()
        .flatten()
}

/// Like [`with_parker`] but never creates one (for a drop).
fn with_existing<R>(f: impl FnOnce(&mut Parker) -> R) -> Option<R> {
    PARKER
        .try_with(|state| match &mut *state.try_borrow_mut().ok()? {
            State::Ready(p) => Some(f(p)),
            _ => None,
        })
        .ok()
        .flatten()
}

/// Parks `stream` until it is readable, waking `waker` then. Gives the
/// stream back when parking is not possible here (the connection then
/// waits the ordinary way).
pub fn park(stream: Tcp, waker: &Waker) -> Result<Parked, Tcp> {
    // Its readiness waits are cancelled (by request, not by descriptor).
    let fd = stream.into_raw_fd();
    let registered = with_parker(|p| {
        let index = match p.free.pop() {
            Some(i) => i,
            None => {
                p.waiters.push(Waiter::default());
                (p.waiters.len() - 1) as u32
            }
        };
        let w = &mut p.waiters[index as usize];
        w.waker = Some(waker.clone());
        w.fired = false;
        let gen = w.gen;
        let ok = p
            .ctl(libc::EPOLL_CTL_ADD, fd, key(index, gen))
            .and_then(|()| p.arm());
        match ok {
            Ok(()) => Ok(Parked { fd, index, gen }),
            Err(e) => {
                // Nothing refers to the waiter: free it (a registration
                // that took is deleted below).
                let w = &mut p.waiters[index as usize];
                w.gen = w.gen.wrapping_add(1);
                let old = w.waker.take();
                p.free.push(index);
                Err((e, old))
            }
        }
    });
    match registered {
        Some(Ok(parked)) => Ok(parked),
        failed => {
            if let Some(Err((e, _old))) = failed {
                tracing::debug!(error = %e, "parking an idle connection failed");
                with_existing(|p| p.ctl(libc::EPOLL_CTL_DEL, fd, 0));
            }
            // SAFETY: `fd` came from the stream above and nothing else owns it.
            Err(unsafe { Tcp::from_raw_fd(fd) })
        }
    }
}

impl Parked {
    /// Polls for the connection's first bytes: `Ok(None)` is EOF; `Pending`
    /// with `cx`'s waker registered until the socket is readable.
    pub fn poll_read(&mut self, cx: &mut std::task::Context<'_>) -> Poll<io::Result<Option<Buf>>> {
        let mut old = None;
        let fired = with_existing(|p| match p.waiters.get_mut(self.index as usize) {
            Some(w) if w.gen == self.gen => {
                if w.fired {
                    w.fired = false;
                    true
                } else {
                    if !w.waker.as_ref().is_some_and(|o| o.will_wake(cx.waker())) {
                        old = w.waker.replace(cx.waker().clone());
                    }
                    false
                }
            }
            _ => false,
        });
        drop(old);
        match fired {
            Some(true) => {}
            Some(false) => return Poll::Pending,
            // The parker is gone (the core stops): read what there is.
            None => {}
        }
        match recv_fresh(self.fd) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return Poll::Ready(other),
        }
        // Woken for nothing (readiness that a previous read consumed):
        // re-arm the one-shot registration.
        let rearmed = with_existing(|p| {
            let w = &mut p.waiters[self.index as usize];
            let old = w.waker.replace(cx.waker().clone());
            let r = p
                .ctl(libc::EPOLL_CTL_MOD, self.fd, key(self.index, self.gen))
                .and_then(|()| p.arm());
            (r, old)
        });
        match rearmed {
            Some((Ok(()), _old)) => Poll::Pending,
            Some((Err(e), _old)) => Poll::Ready(Err(e)),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    /// The connection as a live stream again (after its first bytes were
    /// read): the registration is deleted first.
    pub fn resume(self) -> Tcp {
        let me = std::mem::ManuallyDrop::new(self);
        me.unregister();
        // SAFETY: the fd is ours and, with `me` not dropped, passes to the stream.
        unsafe { Tcp::from_raw_fd(me.fd) }
    }

    fn unregister(&self) {
        let old = with_existing(|p| {
            let _ = p.ctl(libc::EPOLL_CTL_DEL, self.fd, 0);
            match p.waiters.get_mut(self.index as usize) {
                Some(w) if w.gen == self.gen => {
                    w.gen = w.gen.wrapping_add(1);
                    w.fired = false;
                    let old = w.waker.take();
                    p.free.push(self.index);
                    old
                }
                _ => None,
            }
        });
        // A waker dropped outside the borrow: it may drop a task.
        drop(old);
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        self.unregister();
        // SAFETY: the fd is ours; after the DEL nothing refers to it.
        unsafe { libc::close(self.fd) };
    }
}

/// How many connections are parked on this core (tests and stats).
pub fn parked_now() -> usize {
    with_existing(|p| p.waiters.len() - p.free.len()).unwrap_or(0)
}

/// The core's pump: wakes parked connections when the epoll fd is readable.
async fn pump(executor: usize, mut rx: UnixStream) {
    use futures_lite::AsyncReadExt;
    let mut bytes = [0u8; 16];
    let mut wake = Vec::new();
    loop {
        match rx.read(&mut bytes).await {
            Ok(n) if n > 0 => {}
            // The parker (and its end of the pair) was dropped.
            _ => return,
        }
        let ours = with_existing(|p| {
            if p.executor != executor {
                return false;
            }
            // One chain in flight at a time, so this byte was its byte.
            p.armed = false;
            p.ready(&mut wake);
            if p.waiters.len() > p.free.len() {
                if let Err(e) = p.arm() {
                    tracing::warn!(error = %e, "cannot re-arm the parked connections' poll");
                }
            }
            true
        });
        for w in wake.drain(..) {
            w.wake();
        }
        if ours != Some(true) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::{poll_fn, poll_once};
    use futures_lite::AsyncReadExt;
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    /// A connected pair: the client's std socket and the server side as a
    /// non-blocking [`Tcp`].
    fn pair(listener: &std::net::TcpListener) -> (std::net::TcpStream, Tcp) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        // SAFETY: the fd passes from the std socket to the Tcp.
        (client, unsafe { Tcp::from_raw_fd(server.into_raw_fd()) })
    }

    async fn settle() {
        glommio::timer::sleep(Duration::from_millis(50)).await;
    }

    /// A parked connection waits without a glommio stream, wakes on bytes,
    /// resumes as a stream that reads the rest; dropping a parked one frees
    /// its waiter, and a new connection on its reused fd number is not woken
    /// by anything of the old one.
    #[test]
    fn parked_wakes_on_bytes_and_frees_its_waiter() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let waker = poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;

                let (mut a_client, a) = pair(&listener);
                let mut a = park(a, &waker).expect("parks");
                assert_eq!(parked_now(), 1);
                settle().await;
                assert!(poll_once(poll_fn(|cx| a.poll_read(cx))).await.is_none());
                a_client.write_all(b"hi").unwrap();
                let got = poll_fn(|cx| a.poll_read(cx)).await.unwrap().unwrap();
                assert_eq!(got.bytes(), b"hi");
                got.release();
                let mut a = a.resume();
                assert_eq!(parked_now(), 0);
                a_client.write_all(b"more").unwrap();
                let mut buf = [0u8; 8];
                let n = a.read(&mut buf).await.unwrap();
                assert_eq!(&buf[..n], b"more");

                // Closed while parked: its waiter is freed, and a new
                // connection (likely on the same fd number) is woken only
                // by its own bytes.
                let (mut b_client, b) = pair(&listener);
                let b = park(b, &waker).unwrap();
                assert_eq!(parked_now(), 1);
                drop(b);
                assert_eq!(parked_now(), 0);
                let (mut c_client, c) = pair(&listener);
                let mut c = park(c, &waker).unwrap();
                let _ = b_client.write_all(b"old");
                settle().await;
                assert!(poll_once(poll_fn(|cx| c.poll_read(cx))).await.is_none());
                c_client.write_all(b"new").unwrap();
                let got = poll_fn(|cx| c.poll_read(cx)).await.unwrap().unwrap();
                assert_eq!(got.bytes(), b"new");
                got.release();

                // EOF while parked reads as `None`.
                drop(c_client);
                let (d_client, d) = pair(&listener);
                let mut d = park(d, &waker).unwrap();
                drop(d_client);
                assert!(poll_fn(|cx| d.poll_read(cx)).await.unwrap().is_none());
                drop((c, d));
                assert_eq!(parked_now(), 0);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
