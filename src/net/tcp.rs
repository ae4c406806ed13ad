//! A glommio TCP stream read through Remora's own readiness waits
//! ([`crate::net::uring::Readiness`]): glommio's read path costs a `Source`
//! per wait; this one a slot in a per-core slab. Writes, connects and the
//! socket's life stay glommio's.
//!
//! The read is glommio's, step for step: a non-blocking `recv`; on
//! `EAGAIN`, a readiness wait armed to wake the task; after a read that
//! did not fill the buffer (the socket was drained), an early wait armed
//! with no waker, so that the next read knows without a `recv` whether
//! anything came. While a wait is armed and has not fired, nothing (no
//! byte, no FIN, no reset) has reached the socket since it was drained:
//! [`Tcp::quiet`] answers from that, with no system call, as the
//! upstream pool's check of an idle connection needs.
//!
//! Where no wait can be armed here (no main ring known on this thread yet,
//! or its submission queue full), the read falls back to glommio's.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::net::socket::{self, Xfer};
use crate::net::uring::{Check, Readiness};

/// A glommio stream and the readiness wait of its read side.
pub struct Tcp {
    io: TcpStream,
    ready: Readiness,
}

impl From<TcpStream> for Tcp {
    fn from(io: TcpStream) -> Tcp {
        Tcp {
            io,
            ready: Readiness::new(),
        }
    }
}

impl Tcp {
    /// The glommio stream (its wait, if armed, is cancelled).
    pub fn into_inner(self) -> TcpStream {
        self.io
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.io.peer_addr().map_err(Into::into)
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr().map_err(Into::into)
    }

    /// One read into `buf` (see the module doc).
    pub fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        poll_read(&mut self.io, &mut self.ready, cx, buf)
    }

    /// Whether nothing has arrived since the socket was last drained: an
    /// armed wait that has not fired says so without a system call;
    /// otherwise a one-byte `recv` that would block does (and arms the
    /// wait). A byte, EOF or an error is not quiet (the byte is consumed:
    /// the caller drops the connection). No task waits on an idle pooled
    /// connection, so the wait is armed and checked without a waker: one
    /// would count as a task woken and not yet run when the wait fires.
    pub fn quiet(&mut self) -> bool {
        if self.ready.check(None) == Check::Waiting {
            return true;
        }
        let mut b = [0u8; 1];
        if !crate::net::uring::readiness_available() {
            let mut cx = Context::from_waker(std::task::Waker::noop());
            return matches!(
                Pin::new(&mut self.io).poll_read(&mut cx, &mut b),
                Poll::Pending
            );
        }
        let fd = self.io.as_raw_fd();
        match socket::recv(fd, &mut b) {
            Ok(Xfer::WouldBlock) => {
                // If it cannot be armed, the next check recvs.
                self.ready.arm(fd, None);
                true
            }
            _ => false,
        }
    }
}

/// One read of `stream` into `buf`, waiting through `ready` (see the module
/// doc). `ready` must be used with this stream only.
fn poll_read(
    stream: &mut TcpStream,
    ready: &mut Readiness,
    cx: &mut Context<'_>,
    buf: &mut [u8],
) -> Poll<io::Result<usize>> {
    if ready.check(Some(cx)) == Check::Waiting {
        return Poll::Pending;
    }
    if !crate::net::uring::readiness_available() {
        return Pin::new(stream).poll_read(cx, buf);
    }
    let fd = stream.as_raw_fd();
    match socket::recv(fd, buf) {
        Ok(Xfer::Done(n)) => {
            if n < buf.len() {
                // Drained: the next read learns from the wait whether
                // anything came (if it cannot be armed, it will recv).
                ready.arm(fd, None);
            }
            Poll::Ready(Ok(n))
        }
        Ok(Xfer::Eof) => Poll::Ready(Ok(0)),
        Ok(Xfer::WouldBlock) => {
            if ready.arm(fd, Some(cx)) {
                Poll::Pending
            } else {
                Pin::new(stream).poll_read(cx, buf)
            }
        }
        Err(e) => Poll::Ready(Err(e)),
    }
}

impl AsRawFd for Tcp {
    fn as_raw_fd(&self) -> RawFd {
        self.io.as_raw_fd()
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
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_close(cx)
    }
}
