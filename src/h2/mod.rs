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
//! That choice has a measured price on the downstream side (perf/H2.md,
//! "Session 9" and "Session 10"): `h2` and `http`'s header maps are a third
//! of the user-space CPU of a proxied HTTP/2 request, enough to keep
//! Remora behind HAProxy on `h2-keepalive`. A server codec of Remora's own
//! is being built beside it, bottom up, each layer complete and tested
//! before the next, none on the request path yet: [`frame`] (frame heads
//! and payloads, checked as RFC 9113 requires of a receiver), [`hpack`]
//! (RFC 7541 with no `h2` or `http` types: fields decoded as borrowed
//! slices, encoded straight from bytes) and [`request`] (a request head as
//! spans in one buffer, checked as §8.2-8.3 require), and [`conn`], the
//! connection without I/O (stream states, both flow controls, SETTINGS,
//! GOAWAY, the abuse limits). Its glommio driver and the switch of `l7::h2`
//! to it follow. Until that switch `h2` serves every
//! connection, and it stays the upstream (client) codec either way.

pub mod client;
pub mod conn;
pub mod frame;
pub mod grpc;
pub mod headers;
pub mod hpack;
pub mod request;

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
