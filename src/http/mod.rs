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
pub mod head;
pub mod rewrite;
pub mod route;
pub mod route_config;
