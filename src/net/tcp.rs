//! A TCP socket of Remora's own: the descriptor and its two readiness waits
//! ([`crate::net::uring::Readiness`]), one per direction.
//!
//! Why not glommio's `TcpStream`: since session 39 every read waits on
//! readiness of Remora's own, and what glommio's stream still added was
//! cost. Its constructor arms a `POLL_ADD` through its request machinery
//! (a `Source` of ~435 B, kept after it fires until a glommio read takes
//! it), on every accepted and every connected socket: about 380 B of every
//! live idle connection and a request and a completion per connection. Its
//! write path reads the clock and touches two timer slots per write; its
//! peek is a ring `RECV`. Here a socket is its descriptor (4 B) and two
//! slab-slot numbers.
//!
//! The I/O is the kernel's non-blocking calls (`MSG_DONTWAIT`, so the file's
//! O_NONBLOCK flag does not matter to them):
//! - **Read**: `recv`; on `EAGAIN`, a readiness wait armed to wake the
//!   task; after a read that did not fill the buffer (the socket was
//!   drained), an early wait armed with no waker, so that the next read
//!   knows without a `recv` whether anything came. While a wait is armed
//!   and has not fired, nothing (no byte, no FIN, no reset) has reached the
//!   socket since it was drained: [`Tcp::quiet`] answers from that, with no
//!   system call, as the upstream pool's check of an idle connection needs.
//! - **Peek**: `recv(MSG_PEEK)`, waiting the same way.
//! - **Write**: `send`; on `EAGAIN`, a wait for `POLLOUT`.
//! - **Connect**: a non-blocking `connect`, then a wait for `POLLOUT`
//!   within the timeout, then `SO_ERROR`.
//!
//! Where no wait can be armed (no main ring known on this thread yet, or
//! its submission queue full), the task is woken after glommio's next
//! submission on the ring ([`crate::net::uring::wait_for_room`]) and
//! tries again.

use std::future::poll_fn;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncRead, AsyncWrite};
use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};

use crate::net::socket::{self, Xfer};
use crate::net::uring::{self, Check, Readiness};

/// A connected TCP socket and the readiness waits of its two directions.
#[derive(Debug)]
pub struct Tcp {
    fd: OwnedFd,
    read: Readiness,
    write: Readiness,
}

impl From<OwnedFd> for Tcp {
    fn from(fd: OwnedFd) -> Tcp {
        Tcp {
            fd,
            read: Readiness::new(),
            write: Readiness::new(),
        }
    }
}

impl FromRawFd for Tcp {
    /// # Safety
    /// `fd` is an open TCP socket that nothing else owns.
    unsafe fn from_raw_fd(fd: RawFd) -> Tcp {
        Tcp::from(OwnedFd::from_raw_fd(fd))
    }
}

impl Tcp {
    /// Connects to `dst` within `timeout`, from `source` (port chosen by the
    /// kernel at connect time) when given. The socket is non-blocking.
    pub async fn connect(
        dst: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
    ) -> io::Result<Tcp> {
        let domain = if dst.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let s = Socket::new(
            domain,
            Type::STREAM.cloexec().nonblocking(),
            Some(Protocol::TCP),
        )?;
        if let Some(src) = source {
            // Let connect() pick the port, so 4-tuples from 127.0.0.6 are not
            // limited to the ephemeral range once per source.
            socket::set_int(
                s.as_raw_fd(),
                libc::SOL_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                1,
            )?;
            s.bind(&SocketAddr::new(src, 0).into())?;
        }
        let mut tcp = Tcp::from(OwnedFd::from(s));
        match SockRef::from(&tcp.fd).connect(&SockAddr::from(dst)) {
            Ok(()) => return Ok(tcp),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let deadline = Instant::now() + timeout;
        let writable = crate::deadline::until(Some(deadline), tcp.writable()).await;
        if writable.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection timed out",
            ));
        }
        match SockRef::from(&tcp.fd).take_error()? {
            Some(e) => Err(e),
            None => Ok(tcp),
        }
    }

    /// Waits until the socket is writable (or has failed).
    async fn writable(&mut self) {
        poll_fn(|cx| {
            if self.write.check(Some(cx)) == Check::Waiting {
                return Poll::Pending;
            }
            if poll_out(self.fd.as_raw_fd()) {
                return Poll::Ready(());
            }
            arm(&mut self.write, self.fd.as_raw_fd(), libc::POLLOUT, cx);
            Poll::Pending
        })
        .await
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(&self.fd).peer_addr()?)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        socket_addr(SockRef::from(&self.fd).local_addr()?)
    }

    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        SockRef::from(&self.fd).set_nodelay(on)
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: std::net::Shutdown) -> io::Result<()> {
        SockRef::from(&self.fd).shutdown(how)
    }

    /// The descriptor (its waits, if armed, are cancelled).
    pub fn into_fd(self) -> OwnedFd {
        self.fd
    }

    /// One read into `buf` (see the module doc).
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_recv(cx, buf, 0)
    }

    /// Reads into `buf` without consuming: what has arrived, once anything
    /// has (0: the peer closed).
    pub fn poll_peek(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_recv(cx, buf, libc::MSG_PEEK)
    }

    /// A read or a peek (`flags`), waiting on the read side's wait.
    fn poll_recv(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
        flags: libc::c_int,
    ) -> Poll<io::Result<usize>> {
        if self.read.check(Some(cx)) == Check::Waiting {
            return Poll::Pending;
        }
        let fd = self.fd.as_raw_fd();
        match socket::recv_flags(fd, buf, flags) {
            Ok(Xfer::Done(n)) => {
                if n < buf.len() && flags & libc::MSG_PEEK == 0 {
                    // Drained: the next read learns from the wait whether
                    // anything came (if it cannot be armed, it will recv).
                    self.read.arm(fd, None);
                }
                Poll::Ready(Ok(n))
            }
            Ok(Xfer::Eof) => Poll::Ready(Ok(0)),
            Ok(Xfer::WouldBlock) => {
                arm(&mut self.read, fd, libc::POLLIN, cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// [`poll_peek`](Tcp::poll_peek) as a future.
    pub async fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| self.poll_peek(cx, buf)).await
    }

    /// One write of `buf` (see the module doc).
    pub fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.write.check(Some(cx)) == Check::Waiting {
            return Poll::Pending;
        }
        let fd = self.fd.as_raw_fd();
        match socket::send(fd, buf) {
            Ok(Xfer::Done(n)) => Poll::Ready(Ok(n)),
            Ok(Xfer::Eof) => Poll::Ready(Ok(0)),
            Ok(Xfer::WouldBlock) => {
                arm(&mut self.write, fd, libc::POLLOUT, cx);
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// Whether nothing has arrived since the socket was last drained: an
    /// armed wait that has not fired says so without a system call;
    /// otherwise a one-byte `recv` that would block does (and arms the
    /// wait). A byte, EOF or an error is not quiet (the byte is consumed:
    /// the caller drops the connection). No task waits on an idle pooled
    /// connection, so the wait is armed and checked without a waker: one
    /// would count as a task woken and not yet run when the wait fires.
    pub fn quiet(&mut self) -> bool {
        if self.read.check(None) == Check::Waiting {
            return true;
        }
        let fd = self.fd.as_raw_fd();
        let mut b = [0u8; 1];
        match socket::recv(fd, &mut b) {
            Ok(Xfer::WouldBlock) => {
                // If it cannot be armed, the next check recvs.
                self.read.arm(fd, None);
                true
            }
            _ => false,
        }
    }
}

/// Arms `wait` for `events` on `fd` to wake `cx`'s task; where it cannot be
/// armed (false), the task is woken after the ring's next submission to try
/// again.
fn arm(wait: &mut Readiness, fd: RawFd, events: i16, cx: &Context<'_>) -> bool {
    let armed = wait.arm_for(fd, events as u32, Some(cx));
    if !armed {
        uring::wait_for_room(cx);
    }
    armed
}

/// Waits until `fd` has one of `events` (or an error or hang-up), through
/// `wait`: for descriptors that are not a [`Tcp`] (a listener; the
/// destination a pump writes through its raw descriptor). A wait that could
/// not be armed (the ring's queue full) is armed again once there is room,
/// never taken for one that fired, so a caller may rely on the readiness.
pub async fn ready(fd: RawFd, events: i16, wait: &mut Readiness) {
    let mut armed = false;
    poll_fn(|cx| {
        if armed {
            return match wait.check(Some(cx)) {
                Check::Waiting => Poll::Pending,
                Check::Go => Poll::Ready(()),
            };
        }
        armed = arm(wait, fd, events, cx);
        Poll::Pending
    })
    .await
}

/// Whether `fd` is writable or has failed, now.
fn poll_out(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    unsafe { libc::poll(&mut p, 1, 0) > 0 }
}

fn socket_addr(a: SockAddr) -> io::Result<SocketAddr> {
    a.as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))
}

impl AsRawFd for Tcp {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl IntoRawFd for Tcp {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

impl AsyncRead for Tcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Tcp::poll_read(self.get_mut(), cx, buf)
    }
}

impl AsyncWrite for Tcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Tcp::poll_write(self.get_mut(), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Shuts the sending side down (a FIN), as glommio's stream did.
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.shutdown(std::net::Shutdown::Write))
    }
}
