//! HTTP/2 for the L7 path. Downstream (clients of the proxy) it is a codec
//! of Remora's own, built bottom up, each layer complete and tested before
//! the next: [`frame`] (frame heads and payloads, checked as RFC 9113
//! requires of a receiver), [`hpack`] (RFC 7541 with no `h2` or `http`
//! types: fields decoded as borrowed slices, encoded straight from bytes),
//! [`request`] (a request head as spans in one buffer, checked as §8.2-8.3
//! require), [`conn`] (the connection without I/O: stream states, both flow
//! controls, SETTINGS, GOAWAY, the abuse limits) and [`server`] (its glommio
//! driver: one task per connection, a `StreamRef` per stream). Upstream it
//! is the `h2` crate (hyper's, used by linkerd2-proxy and Pingora), driven
//! on the core's executor through [`Io`], in the per-core pool of
//! multiplexed connections ([`client`]). Between them: header conversion
//! between HTTP/1 and HTTP/2 (RFC 9113 §8.2, [`headers`]) and gRPC's
//! conventions ([`grpc`]). The request path itself (routing, policy,
//! attempts) is `l7::h2`, shared with HTTP/1 through `l7::plan` and
//! `l7::attempt`.
//!
//! Why our own codec downstream, where the issue preferred a crate: `h2`
//! and `http`'s per-stream header maps were a third of the user-space CPU
//! of a proxied HTTP/2 request (perf/H2.md, "Session 9" and "Session 10"),
//! enough to keep Remora behind HAProxy on `h2-keepalive`; on the same bytes
//! ours costs 0.65 µs per request against `h2`'s 2.38 (benches/h2codec.rs).
//! The risk a hand-written HTTP/2 server carries (its state machine is
//! where proxies have had their CVEs) is met with the RFC's rules checked
//! frame by frame, the published floods bounded (rapid reset, CONTINUATION,
//! control frames, empty frames, HPACK, zero windows), two fuzz targets
//! (`h2_codec` on the layers, `h2_frames` on the whole connection), Python
//! `hpack` as a cross-check, and raw-frame tests with real peers
//! (tests/h2_abuse.rs, tests/h2_conformance.rs). Upstream the cost is
//! smaller (a proxy's own requests, fewer per connection) and `h2` stays.

pub mod client;
pub mod client_conn;
pub mod conn;
pub mod frame;
pub mod grpc;
pub mod headers;
pub mod hpack;
pub mod request;
pub mod server;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

use crate::net::buf::{poll_read_via_scratch, Buf};
use crate::net::Stream;

/// The HTTP/2 connection preface a prior-knowledge client starts with
/// (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// `net::Stream` with tokio's I/O traits, which `h2` (the upstream codec)
/// is written against;
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
