//! HTTP/1.1 for the L7 path: head parsing, body framing, rewriting, routing.
//!
//! Pure library code: no sockets, no runtime. The proxy loop (per connection) is
//! expected to drive it like this:
//!
//! ```text
//! read buf ─ head::parse_request_into ─► RequestHead (spans into buf) ─┐  Err(e) → local reply e.status(), close
//!                                                                      │
//!   route::RouteTable::match_request(head.view(buf)) ─► Matched { virtual_host, route }
//!        ├─ DirectResponse / Redirect ─► rewrite::write_local_response
//!        └─ Forward ─ pick cluster ─ rewrite::write_request(view, RequestRewrite{..}) ─► upstream
//!               │   expect_continue → rewrite::CONTINUE_100 (or let upstream answer)
//!               │   CONNECT / Upgrade → byte tunnel after 2xx / 101
//!               └─ body::BodyDecoder(head.framing) ─ Data ranges ─► body::encode_chunk / raw
//! upstream buf ─ head::parse_response_into(method) ─► ResponseHead ─ rewrite::write_response ─► client
//!               └─ body::BodyDecoder(resp.framing) … keep_alive = request && response keep-alive
//! ```
//!
//! Everything that could make two parties disagree about where a message ends is
//! refused (RFC 9112 §6.3, §7.1, §11.2): see the tables in `head` and `body` tests.

pub mod body;
pub mod field;
pub mod head;
pub mod rewrite;
pub mod route;
pub mod route_config;

/// The parts of a request that routing, planning and policy read, whatever the
/// HTTP version carried them: HTTP/1's request line and Host, or HTTP/2's
/// pseudo-headers (`:method`, `:authority`, `:path`). The router and
/// `l7::plan` take this instead of an HTTP/1 head (ztunnel's
/// `RequestParts`), so an HTTP/2 driver reuses them unchanged.
pub trait RequestParts {
    fn method(&self) -> &[u8];
    /// `host[:port]` as sent (HTTP/1: absolute-form target or Host; HTTP/2:
    /// `:authority`).
    fn authority(&self) -> Option<&[u8]>;
    /// Path and query in origin-form.
    fn path_and_query(&self) -> &[u8];
    /// Every value of header `name` (lower-case), in order.
    fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's;
    /// Every field, in order (names lower-case for HTTP/2, as sent for HTTP/1).
    fn header_fields<'s>(&'s self) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's;

    /// The path without the query.
    fn path(&self) -> &[u8] {
        let pq = self.path_and_query();
        let end = memchr::memchr(b'?', pq).unwrap_or(pq.len());
        &pq[..end]
    }

    /// The query without "?", if there is one.
    fn query(&self) -> Option<&[u8]> {
        let pq = self.path_and_query();
        memchr::memchr(b'?', pq).map(|i| &pq[i + 1..])
    }

    /// The authority without its port, e.g. for virtual-host matching.
    fn host(&self) -> Option<&[u8]> {
        self.authority().map(head::strip_port)
    }

    /// The first value of header `name`.
    fn header<'s>(&'s self, name: &'s [u8]) -> Option<&'s [u8]> {
        self.header_values(name).next()
    }
}

impl RequestParts for head::RequestView<'_> {
    fn method(&self) -> &[u8] {
        head::RequestView::method(self)
    }
    fn authority(&self) -> Option<&[u8]> {
        head::RequestView::authority(self)
    }
    fn path_and_query(&self) -> &[u8] {
        head::RequestView::path_and_query(self)
    }
    fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.headers().get_all(name)
    }
    fn header_fields<'s>(&'s self) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's {
        self.headers().iter()
    }
}
