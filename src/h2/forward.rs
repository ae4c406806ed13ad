//! Heads on their way through an HTTP/2 upstream, in the codec's own form:
//! no `http` types, no map, no allocation per field.
//!
//! - [`UpRequest`]: the request as it goes upstream, the proxy's rewrite
//!   applied once (X-Forwarded-*, XFCC, X-Request-Id, the route's
//!   operations: the rules `write_h1_request` writes for an HTTP/1
//!   upstream), pseudo-headers and fields in one buffer, HPACK-encoded anew
//!   for each attempt (each connection has its own tables).
//! - [`encode_response`]: an upstream's answer ([`ResponseHead`]) encoded
//!   for an HTTP/2 client with the route's response operations applied on
//!   the way.

use super::Span;
use crate::h2::client_conn::ResponseHead;
use crate::h2::hpack::Encoder;
use crate::h2::request::RequestHead;
use crate::http::head::{parse_request, Limits, Method, Parsed};
use crate::http::rewrite::{
    is_hop_by_hop, push_forwarded, push_request_id_and_ops, FieldSink, HeaderOps, RequestId,
    RequestRewrite,
};
use crate::http::RequestParts;

/// A request head for an HTTP/2 upstream.
#[derive(Debug, Default)]
pub struct UpRequest {
    buf: Vec<u8>,
    method: Span,
    scheme: Span,
    authority: Option<Span>,
    path: Option<Span>,
    /// Name, value, never indexed (HPACK §7.1.3, kept from the client).
    fields: Vec<(Span, Span, bool)>,
}

/// The fields the rewrite adds, in order after the client's.
impl FieldSink for UpRequest {
    fn field_with(&mut self, name: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        let n = self.push(name);
        let v = Span::push_with(&mut self.buf, value);
        self.fields.push((n, v, false));
    }
}

impl UpRequest {
    fn with_capacity(bytes: usize, fields: usize) -> UpRequest {
        UpRequest {
            buf: Vec::with_capacity(bytes),
            fields: Vec::with_capacity(fields),
            ..UpRequest::default()
        }
    }

    fn push(&mut self, bytes: &[u8]) -> Span {
        Span::push(&mut self.buf, bytes)
    }

    fn field(&mut self, name: &[u8], value: &[u8], never_indexed: bool) {
        let n = self.push(name);
        let v = self.push(value);
        self.fields.push((n, v, never_indexed));
    }

    /// An HTTP/2 client's request with the proxy's rewrite: `authority`
    /// and `path` as routed, the client's fields (connection-specific ones,
    /// Host and those the rewrite replaces left out; `te: trailers` kept;
    /// never-indexed marks kept), then X-Forwarded-For, -Proto, XFCC,
    /// X-Request-Id if the client sent none, and the route's set and add
    /// fields, as `write_h1_request` writes them for an HTTP/1 upstream.
    /// Returns the request id generated, if one was.
    pub fn from_h2(
        head: &RequestHead,
        rw: &RequestRewrite<'_>,
        authority: &[u8],
        path: &[u8],
    ) -> (UpRequest, Option<RequestId>) {
        let raw = head.bytes();
        let mut r = UpRequest::with_capacity(raw.len() + authority.len() + path.len() + 160, 16);
        r.method = r.push(head.method());
        r.scheme = r.push(b"http");
        r.authority = Some(r.push(authority));
        r.path = Some(r.push(path));
        let ops = rw.ops.filter(|o| !o.is_empty());
        let replaces_proto = rw.replaces_proto(|| head.header(b"x-forwarded-proto").is_some());
        let mut had_request_id = false;
        for (n, v, never) in head.field_ranges() {
            let (Some(n), Some(v)) = (raw.get(n), raw.get(v)) else {
                continue;
            };
            let te_trailers = n == b"te" && v == b"trailers";
            if matches!(n, b"host" | b"x-forwarded-client-cert")
                || (is_hop_by_hop(n) && !te_trailers)
                || (rw.client_addr.is_some() && n == b"x-forwarded-for")
                || (replaces_proto && n == b"x-forwarded-proto")
                || ops.is_some_and(|o| o.drops(n))
            {
                continue;
            }
            had_request_id |= n == b"x-request-id";
            r.field(n, v, never);
        }
        push_forwarded(&mut r, rw, replaces_proto, |n| head.values(n.as_bytes()));
        let generated = push_request_id_and_ops(&mut r, rw, ops, had_request_id);
        (r, generated)
    }

    /// An HTTP/1.1 request head as `http::rewrite::write_request` wrote it
    /// (the proxy's rewrite applied), restated for HTTP/2 (RFC 9113 §8.2):
    /// `:method`, `:scheme` http, `:authority` from Host, `:path` (neither
    /// for CONNECT, whose authority is its target); names lowercased, Host,
    /// Content-Length and connection-specific fields left out, `te:
    /// trailers` kept. None if it does not parse or its authority is not
    /// one (RFC 3986 §3.2).
    pub fn from_h1(head: &[u8]) -> Option<UpRequest> {
        let Ok(Parsed::Complete { head: parsed, .. }) = parse_request(head, &Limits::default())
        else {
            return None;
        };
        let view = parsed.view(head);
        let headers = view.headers();
        let mut r = UpRequest::with_capacity(head.len(), headers.len());
        r.method = r.push(view.method());
        r.scheme = r.push(b"http");
        let connect = parsed.method == Method::Connect;
        let authority = if connect {
            view.target()
        } else {
            headers.get(b"host").unwrap_or_default()
        };
        if !valid_authority(authority) || (connect && authority.is_empty()) {
            return None;
        }
        // No Host (HTTP/1.0): no `:authority` either (§8.3.1).
        r.authority = (!authority.is_empty()).then(|| r.push(authority));
        if !connect {
            r.path = Some(r.push(view.path_and_query()));
        }
        for (n, v) in headers.iter() {
            let te_trailers = n.eq_ignore_ascii_case(b"te") && v == b"trailers";
            if n.eq_ignore_ascii_case(b"host")
                || n.eq_ignore_ascii_case(b"content-length")
                || (is_hop_by_hop(n) && !te_trailers)
            {
                continue;
            }
            let name = r.push(n);
            r.buf[name.range()].make_ascii_lowercase();
            let value = r.push(v);
            r.fields.push((name, value, false));
        }
        Some(r)
    }

    /// The method is HEAD (its answer has no body).
    pub fn is_head(&self) -> bool {
        self.method.get(&self.buf) == b"HEAD"
    }

    /// The head as a header block: pseudo-headers first (CONNECT without
    /// `:scheme` and `:path`), then the fields, never-indexed ones so.
    pub fn encode(&self, enc: &mut Encoder, out: &mut Vec<u8>) {
        let b = &self.buf;
        let method = self.method.get(b);
        enc.field(b":method", method, out);
        let connect = method == b"CONNECT";
        if !connect {
            enc.field(b":scheme", self.scheme.get(b), out);
        }
        if let Some(a) = self.authority {
            enc.field(b":authority", a.get(b), out);
        }
        if let Some(p) = self.path.filter(|_| !connect) {
            enc.field(b":path", p.get(b), out);
        }
        for (n, v, never) in &self.fields {
            if *never {
                enc.field_sensitive(n.get(b), v.get(b), out);
            } else {
                enc.field(n.get(b), v.get(b), out);
            }
        }
    }
}

/// An authority as `:authority` may carry it (RFC 3986 §3.2: userinfo,
/// host, port): unreserved and sub-delimiter characters, '%', ':', '@',
/// '[' and ']'.
fn valid_authority(a: &[u8]) -> bool {
    a.iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%:@[]".contains(&b))
}

/// What routing, policy and the access log read of the request sent.
impl RequestParts for UpRequest {
    fn method(&self) -> &[u8] {
        self.method.get(&self.buf)
    }
    fn authority(&self) -> Option<&[u8]> {
        self.authority.map(|a| a.get(&self.buf))
    }
    fn path_and_query(&self) -> &[u8] {
        self.path.map_or(&b"/"[..], |p| p.get(&self.buf))
    }
    fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        self.header_fields()
            .filter(move |(n, _)| *n == name)
            .map(|(_, v)| v)
    }
    fn header_fields<'s>(&'s self) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's {
        self.fields
            .iter()
            .map(|(n, v, _)| (n.get(&self.buf), v.get(&self.buf)))
    }
}

/// An HTTP/2 upstream's answer as a header block for an HTTP/2 client:
/// the status, the fields the route's operations do not drop (never-indexed
/// marks kept), then the operations' set and add fields.
pub fn encode_response(
    head: &ResponseHead,
    ops: Option<&HeaderOps>,
    enc: &mut Encoder,
    out: &mut Vec<u8>,
) {
    enc.status(head.status, out);
    let ops = ops.filter(|o| !o.is_empty());
    for (n, v, never) in head.marked_fields() {
        if ops.is_some_and(|o| o.drops(n)) {
            continue;
        }
        if never {
            enc.field_sensitive(n, v, out);
        } else {
            enc.field(n, v, out);
        }
    }
    if let Some(ops) = ops {
        for f in ops.set.iter().chain(&ops.add) {
            enc.field(&f.name, &f.value, out);
        }
    }
}

#[cfg(test)]
mod tests;
