//! examples/l4floor on epoll readiness: the same forwarder, with glommio as
//! the executor only. The question it answers (perf/README.md, "Session 29"):
//! is the system time Remora pays over nginx glommio's readiness model (a
//! ring POLL_ADD per read, woken through io_uring task work) or the work
//! around it?
//!
//! Per core: one epoll fd; every socket (the listener, each client and
//! upstream) is registered once, edge-triggered, with a slot holding its
//! readiness and its tasks' wakers; reads and writes are raw non-blocking
//! `recv`/`send`, made only while the slot says the socket may be ready. A
//! reactor task calls `epoll_wait(0)` once per pass of glommio's loop while
//! events keep coming; after two empty passes it waits the way the park
//! module does (src/net/park.rs): a POLL_ADD on the epoll fd, linked to a
//! one-byte SEND on a socketpair, in a small ring of its own, and a glommio
//! read of the socketpair's other end, so that glommio can sleep.
//!
//! Measured (session 29, 8 alternated rounds of `perf/l4cost stat LABEL floor
//! BIN` against examples/l4floor): user time -1.28 [-2.06, -0.49] µs per
//! request (glommio's bookkeeping of each I/O operation is gone), system time
//! +4.27 [+1.09, +7.45] (an `epoll_wait` per pass, glommio's own ring entries
//! per pass still there, the chain to sleep), CPU +3.00 [+0.21, +5.79]: worse.
//! Readiness of our own under glommio's loop does not close the gap to nginx;
//! glommio's loop is the rest of it.
//!
//!     cargo build --release --example l4epoll
//!     target/release/examples/l4epoll LISTEN UPSTREAM CPU
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll, Waker};

use futures_lite::future;
use futures_lite::AsyncReadExt;
use glommio::net::UnixStream;
use glommio::{LocalExecutorBuilder, Placement};
use io_uring::{opcode, squeue, types, IoUring};
use socket2::{Domain, Socket, Type};

#[derive(Default)]
struct Slot {
    readable: bool,
    writable: bool,
    reader: Option<Waker>,
    writer: Option<Waker>,
}

struct Reactor {
    epfd: OwnedFd,
    slots: Vec<Slot>,
    free: Vec<usize>,
}

thread_local! {
    static R: RefCell<Option<Reactor>> = const { RefCell::new(None) };
}

fn with<T>(f: impl FnOnce(&mut Reactor) -> T) -> T {
    R.with(|r| f(r.borrow_mut().as_mut().expect("reactor")))
}

fn check(r: i32) -> io::Result<i32> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A non-blocking socket registered in the core's epoll fd.
struct Sock {
    fd: OwnedFd,
    token: usize,
}

impl Sock {
    fn register(fd: OwnedFd) -> io::Result<Sock> {
        let token = with(|r| {
            let t = r.free.pop().unwrap_or_else(|| {
                r.slots.push(Slot::default());
                r.slots.len() - 1
            });
            r.slots[t] = Slot {
                readable: true,
                writable: true,
                ..Slot::default()
            };
            t
        });
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token as u64,
        };
        let epfd = with(|r| r.epfd.as_raw_fd());
        // SAFETY: both fds are open; `ev` lives across the call.
        check(unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) })?;
        Ok(Sock { fd, token })
    }

    fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// One non-blocking call while the slot says the socket may be ready;
    /// on EAGAIN the slot is cleared and the task waits for the next edge.
    fn poll_io(
        &self,
        cx: &mut Context<'_>,
        write: bool,
        want: usize,
        mut call: impl FnMut() -> isize,
    ) -> Poll<io::Result<usize>> {
        loop {
            let ready = with(|r| {
                let s = &mut r.slots[self.token];
                let ready = if write { s.writable } else { s.readable };
                if !ready {
                    let w = if write { &mut s.writer } else { &mut s.reader };
                    *w = Some(cx.waker().clone());
                }
                ready
            });
            if !ready {
                return Poll::Pending;
            }
            let n = call();
            if n >= 0 {
                // Less than asked for: the socket is drained (nginx's rule);
                // the next bytes bring a new edge.
                if (n as usize) < want && want > 0 {
                    with(|r| {
                        let s = &mut r.slots[self.token];
                        if write {
                            s.writable = false;
                        } else {
                            s.readable = false;
                        }
                    });
                }
                return Poll::Ready(Ok(n as usize));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => with(|r| {
                    let s = &mut r.slots[self.token];
                    if write {
                        s.writable = false;
                    } else {
                        s.readable = false;
                    }
                }),
                _ => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        let fd = self.raw();
        // SAFETY: `buf` is valid for its length for the call.
        self.poll_io(cx, false, buf.len(), || unsafe {
            libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0)
        })
    }

    fn poll_write(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let fd = self.raw();
        // SAFETY: `buf` is valid for its length for the call.
        self.poll_io(cx, true, buf.len(), || unsafe {
            libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL)
        })
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        with(|r| {
            // SAFETY: deregisters an fd we still own.
            unsafe {
                libc::epoll_ctl(
                    r.epfd.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
            r.slots[self.token] = Slot::default();
            r.free.push(self.token);
        });
    }
}

/// Runs once per pass while events come; sleeps through the chain after two
/// empty passes.
async fn reactor(mut rx: UnixStream, tx: OwnedFd) {
    let mut ring = IoUring::builder()
        .setup_coop_taskrun()
        .build(4)
        .or_else(|_| IoUring::new(4))
        .expect("ring");
    static BYTE: u8 = 1;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut wake = Vec::new();
    let mut empty = 0;
    let epfd = with(|r| r.epfd.as_raw_fd());
    loop {
        // SAFETY: `events` has room for its length.
        let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as i32, 0) };
        if n > 0 {
            with(|r| {
                for ev in &events[..n as usize] {
                    let s = &mut r.slots[ev.u64 as usize];
                    let bits = ev.events as i32;
                    if bits & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR)
                        != 0
                    {
                        s.readable = true;
                        wake.extend(s.reader.take());
                    }
                    if bits & (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) != 0 {
                        s.writable = true;
                        wake.extend(s.writer.take());
                    }
                }
            });
            for w in wake.drain(..) {
                w.wake();
            }
            empty = 0;
            future::yield_now().await;
            continue;
        }
        empty += 1;
        if empty < 2 {
            future::yield_now().await;
            continue;
        }
        // Nothing for two passes: wait in the chain so that glommio can sleep.
        let poll = opcode::PollAdd::new(types::Fd(epfd), libc::POLLIN as u32)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let send = opcode::Send::new(types::Fd(tx.as_raw_fd()), &BYTE, 1)
            .build()
            .user_data(2);
        // SAFETY: the SEND's buffer is a static.
        unsafe {
            let mut sq = ring.submission();
            sq.push(&poll).expect("sq");
            sq.push(&send).expect("sq");
        }
        ring.submit().expect("submit");
        let mut b = [0u8; 16];
        if rx.read(&mut b).await.unwrap_or(0) == 0 {
            return;
        }
        ring.completion().for_each(drop);
        empty = 0;
    }
}

fn copy_dir(
    cx: &mut Context<'_>,
    buf: &mut [u8],
    span: &mut (usize, usize),
    from: &Sock,
    to: &Sock,
) -> Poll<io::Result<()>> {
    loop {
        if span.0 == span.1 {
            match from.poll_read(cx, buf) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(n)) => *span = (0, n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        while span.0 < span.1 {
            match to.poll_write(cx, &buf[span.0..span.1]) {
                Poll::Ready(Ok(n)) => span.0 += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

async fn forward(down: Sock, upstream: SocketAddr) -> io::Result<()> {
    let s = Socket::new(
        Domain::for_address(upstream),
        Type::STREAM.nonblocking(),
        None,
    )?;
    s.set_nodelay(true)?;
    match s.connect(&upstream.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: we own the socket's fd.
    let up = Sock::register(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) })?;
    // The connect completes when the socket first turns writable; the
    // first send then either goes or reports the connect's error.
    let (mut a, mut b) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
    let (mut sa, mut sb) = ((0, 0), (0, 0));
    future::poll_fn(|cx| {
        if copy_dir(cx, &mut a, &mut sa, &down, &up).is_ready()
            || copy_dir(cx, &mut b, &mut sb, &up, &down).is_ready()
        {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: l4epoll LISTEN UPSTREAM CPU");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN: an address:port");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM: an address:port");
    let cpu: usize = args[3].parse().expect("CPU: a number");
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(64 * 1024)
        .ring_depth(256)
        .spawn(move || async move {
            eprintln!("l4epoll: {:?}", remora::net::uring::ring_counts());
            // SAFETY: plain syscalls; each fd is owned at once.
            let epfd = unsafe {
                OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC)).unwrap())
            };
            R.with(|r| {
                *r.borrow_mut() = Some(Reactor {
                    epfd,
                    slots: Vec::new(),
                    free: Vec::new(),
                })
            });
            let mut pair = [0; 2];
            // SAFETY: `pair` has room for two fds.
            check(unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                    pair.as_mut_ptr(),
                )
            })
            .unwrap();
            // SAFETY: both fds were just made.
            let (tx, rx) = unsafe {
                (
                    OwnedFd::from_raw_fd(pair[0]),
                    UnixStream::from_raw_fd(pair[1]),
                )
            };
            glommio::spawn_local(reactor(rx, tx)).detach();
            let l = Socket::new(
                Domain::for_address(listen),
                Type::STREAM.nonblocking(),
                None,
            )
            .unwrap();
            l.set_reuse_address(true).unwrap();
            l.set_nodelay(true).unwrap();
            l.bind(&listen.into()).unwrap();
            l.listen(1024).unwrap();
            // SAFETY: we own the listener's fd.
            let listener =
                Sock::register(unsafe { OwnedFd::from_raw_fd(l.into_raw_fd()) }).unwrap();
            loop {
                let accepted = future::poll_fn(|cx| {
                    listener.poll_io(cx, false, 0, || unsafe {
                        libc::accept4(
                            listener.raw(),
                            std::ptr::null_mut(),
                            std::ptr::null_mut(),
                            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        ) as isize
                    })
                })
                .await;
                match accepted {
                    // SAFETY: accept4 returned this fd; nothing else owns it.
                    Ok(fd) => match Sock::register(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }) {
                        Ok(down) => {
                            glommio::spawn_local(async move {
                                let _ = forward(down, upstream).await;
                            })
                            .detach();
                        }
                        Err(e) => eprintln!("register: {e}"),
                    },
                    Err(e) => eprintln!("accept: {e}"),
                }
            }
        })
        .expect("executor")
        .join()
        .expect("join");
}
