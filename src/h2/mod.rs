//! HTTP/2 for the L7 path, both sides on a codec of Remora's own, built
//! bottom up, each layer complete and tested before the next: [`frame`]
//! (frame heads and payloads, checked as RFC 9113 requires of a receiver),
//! [`hpack`] (RFC 7541 with no `h2` or `http` types: fields decoded as
//! borrowed slices, encoded straight from bytes), [`request`] (a request
//! head as spans in one buffer, checked as §8.2-8.3 require), the
//! connection without I/O: [`link`] for what both ends do alike (stream
//! states, both flow controls, SETTINGS, CONTINUATION, the abuse limits),
//! [`conn`] for the server side (client streams, request heads,
//! `max_concurrent_streams`, GOAWAY) and [`client_conn`] for the client
//! side (the peer's stream limit, response heads checked as §8.3.2
//! requires, GOAWAY's unprocessed streams), and
//! their glommio drivers over [`wire`]: [`server`] (one task per
//! connection, a `StreamRef` per stream) and [`client`] (the per-core pool
//! of multiplexed upstream connections, a task per connection, an
//! `UpStream` per stream). Between them: header conversion between HTTP/1
//! and HTTP/2 (RFC 9113 §8.2, [`headers`]) and gRPC's conventions
//! ([`grpc`]). The request path itself (routing, policy, attempts) is
//! `l7::h2`, shared with HTTP/1 through `l7::plan` and `l7::attempt`.
//!
//! Why our own codec, where the issue preferred a crate: downstream, `h2`
//! and `http`'s per-stream header maps were a third of the user-space CPU
//! of a proxied HTTP/2 request (perf/H2.md, "Session 9" and "Session 10"),
//! enough to keep Remora behind HAProxy on `h2-keepalive`; on the same bytes
//! ours costs 0.65 µs per request against `h2`'s 2.38 (benches/h2codec.rs).
//! Upstream, `h2` served until session 24: it was 18,500 of a gRPC call's
//! 92,000 user-space instructions, with `http`'s types and the ~40
//! allocations they made as much again; the client side of our own codec
//! took the call to 64,000 (perf/README.md, "Session 24"). The risk a
//! hand-written HTTP/2 codec carries (its state machine is where proxies
//! have had their CVEs) is met with the RFC's rules checked frame by frame,
//! the published floods bounded (rapid reset, CONTINUATION, control
//! frames, empty frames, HPACK, zero windows), fuzz targets (`h2_codec` on
//! the layers, `h2_frames` and `h2_client_frames` on the whole server and
//! client connections), Python `hpack`
//! as a cross-check, and raw-frame tests with real peers (tests/h2_abuse.rs,
//! tests/h2_conformance.rs) and real upstreams (nginx, grpcio, Python `h2`:
//! tests/h2_proxy.rs, tests/grpc.rs).

pub mod client;
pub mod client_conn;
pub mod conn;
pub mod forward;
pub mod frame;
pub mod grpc;
pub mod headers;
pub mod hpack;
pub mod link;
pub mod request;
pub mod server;
mod wire;

/// The HTTP/2 connection preface a prior-knowledge client starts with
/// (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A field's place in a head's buffer: the heads of the codec
/// ([`request::RequestHead`], [`client_conn::ResponseHead`],
/// [`forward::UpRequest`]) keep their fields as spans of one buffer, not
/// an allocation each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// `bytes` appended to `buf`, and where they went.
    fn push(buf: &mut Vec<u8>, bytes: &[u8]) -> Span {
        let start = buf.len() as u32;
        buf.extend_from_slice(bytes);
        Span {
            start,
            end: buf.len() as u32,
        }
    }

    /// What `append` adds to `buf`, and where it went.
    fn push_with(buf: &mut Vec<u8>, append: impl FnOnce(&mut Vec<u8>)) -> Span {
        let start = buf.len() as u32;
        append(buf);
        Span {
            start,
            end: buf.len() as u32,
        }
    }

    fn get<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        buf.get(self.range()).unwrap_or_default()
    }

    fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}
