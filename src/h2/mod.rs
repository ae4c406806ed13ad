//! HTTP/2 for the L7 path: the framing, HPACK and stream state machine are
//! the `h2` crate's (hyper's, used by linkerd2-proxy and Pingora), driven on
//! this core's glommio executor through [`Io`]; what this module adds is
//! the proxy's side of it: header conversion between HTTP/1 and HTTP/2
//! (RFC 9113 §8.2), gRPC's conventions, and the per-core pool of
//! multiplexed upstream connections ([`client`]). The request path itself
//! (routing, policy, attempts) is `l7::h2`, shared with HTTP/1 through
//! `l7::plan` and `l7::attempt`.
//!
//! Why a crate and not a codec of our own: HTTP/2's state machine (stream
//! states, flow control, HPACK's dynamic table, SETTINGS acknowledgement,
//! the published attacks it must resist) is where hand-written proxies have
//! had their CVEs; `h2` is fuzzed, maintained, and carries fixes for rapid
//! reset and CONTINUATION floods. It needs no tokio runtime, only tokio's
//! I/O traits, which [`Io`] provides over `net::Stream`.
//!
//! [`hpack`] is the first piece of a codec of our own that would replace it
//! (perf/H2.md, "Session 9": `h2` and `http` run a third of the user-space
//! instructions of a proxied request): HPACK with no `h2` or `http` types,
//! fields decoded as borrowed slices and encoded straight from bytes. It is
//! not on the request path yet.

pub mod client;
pub mod grpc;
pub mod headers;
pub mod hpack;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use crate::net::buf::{poll_read_via_scratch, Buf};
use crate::net::Stream;

/// The HTTP/2 connection preface a prior-knowledge client starts with
/// (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `net::Stream` with tokio's I/O traits, which `h2` is written against;
/// bytes already read from it (the preface an HTTP/1 reader found) are
/// read first.
pub struct Io {
    stream: Stream,
    read: Option<Buf>,
}

impl Io {
    pub fn new(stream: Stream, read: Option<Buf>) -> Io {
        Io { stream, read }
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let Some(b) = self.read.take() {
            b.release();
        }
    }
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut b) = self.read.take() {
            let n = b.len().min(buf.remaining());
            buf.put_slice(&b.bytes()[..n]);
            b.consume(n);
            if b.is_empty() {
                b.release();
            } else {
                self.read = Some(b);
            }
            return Poll::Ready(Ok(()));
        }
        // Not `buf.initialize_unfilled()`: `h2` hands a fresh `ReadBuf` over
        // its whole spare capacity to every read, so that zeroed 8-16 KiB
        // per read (the largest single item in an instruction profile of
        // h2-keepalive); the scratch read copies only what arrived.
        let max = buf.remaining();
        poll_read_via_scratch(&mut self.stream, cx, max, |b| buf.put_slice(b)).map_ok(|_| ())
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_close(cx)
    }
}

/// Whether `Stream` implements the futures traits this adapter relies on.
#[allow(dead_code)]
fn _assert_stream_io(s: Stream) -> impl AsyncRead + AsyncWrite {
    s
}
