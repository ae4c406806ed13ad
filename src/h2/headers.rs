//! Heads between HTTP/1 and HTTP/2 (RFC 9113 §8.2): connection-specific
//! fields dropped, `te` only as `trailers`, lowercase names, `:authority`
//! for Host, cookies split or joined (§8.2.3); and the proxy's request
//! rewrite (X-Forwarded-*, X-Request-Id, XFCC, route header operations) on
//! an HTTP/2 header map, with the same rules `http::rewrite::write_request`
//! applies to HTTP/1 bytes.

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::h2::client_conn::ResponseHead;
use crate::h2::hpack::Encoder;
use crate::http::head::{parse_request, BodyFraming, Limits, Parsed, ResponseView};
use crate::http::rewrite::{
    is_hop_by_hop, named_in_connection, push_forwarded, push_framing, push_header,
    push_request_id_and_ops, H1Fields, HeaderOps, RequestId, RequestRewrite,
};
use crate::http::RequestParts;

/// An HTTP/2 request's head as routing and policy read it.
pub struct H2Parts<'a>(pub &'a http::request::Parts);

impl RequestParts for H2Parts<'_> {
    fn method(&self) -> &[u8] {
        self.0.method.as_str().as_bytes()
    }
    fn authority(&self) -> Option<&[u8]> {
        match self.0.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => self.0.headers.get(HOST).map(HeaderValue::as_bytes),
        }
    }
    fn path_and_query(&self) -> &[u8] {
        self.0
            .uri
            .path_and_query()
            .map_or(&b"/"[..], |p| p.as_str().as_bytes())
    }
    fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
        std::str::from_utf8(name)
            .ok()
            .into_iter()
            .flat_map(move |n| self.0.headers.get_all(n).iter().map(HeaderValue::as_bytes))
    }
    fn header_fields<'s>(&'s self) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's {
        self.0
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
    }
}

fn name(n: &[u8]) -> Option<HeaderName> {
    HeaderName::from_bytes(n).ok()
}

/// Route header operations on a header map: remove, then set (replace),
/// then add (append), as `HeaderOps` orders them.
pub fn apply_ops(h: &mut HeaderMap, ops: &HeaderOps) {
    for n in ops.remove.iter().chain(ops.set.iter().map(|f| &f.name)) {
        if let Some(n) = name(n) {
            h.remove(n);
        }
    }
    for f in ops.set.iter().chain(&ops.add) {
        if let (Some(n), Ok(v)) = (name(&f.name), HeaderValue::from_bytes(&f.value)) {
            h.append(n, v);
        }
    }
}

/// An HTTP/1.1 request head for an HTTP/2 request, with the proxy's
/// rewrite applied as it is written (the same fields `forward::UpRequest`
/// gives an HTTP/2 upstream): the request line
/// with `rw.path`, Host from `rw.host` (the `:authority`), the fields
/// (cookies joined into one with "; ", RFC 9113 §8.2.3; connection-specific
/// ones and `te` dropped), X-Forwarded-*, XFCC, X-Request-Id, the route's
/// operations and the framing the body goes with (`rw.framing`). Returns the
/// request id generated, if one was.
pub fn write_h1_request<R: RequestParts + ?Sized>(
    req: &R,
    rw: &RequestRewrite<'_>,
    out: &mut Vec<u8>,
) -> Option<RequestId> {
    let ops = rw.ops.filter(|o| !o.is_empty());
    out.extend_from_slice(req.method());
    out.push(b' ');
    out.extend_from_slice(rw.path.unwrap_or(b"/"));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = rw.host.or_else(|| req.header(b"host"));
    push_header(out, b"host", host.unwrap_or_default());
    if !ops.is_some_and(|o| o.drops(b"cookie")) {
        let mut cookies = req.header_values(b"cookie");
        if let Some(first) = cookies.next() {
            out.extend_from_slice(b"cookie: ");
            out.extend_from_slice(first);
            for c in cookies {
                out.extend_from_slice(b"; ");
                out.extend_from_slice(c);
            }
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut had_request_id = false;
    let replaces_proto = rw.replaces_proto(|| req.header(b"x-forwarded-proto").is_some());
    for (n, v) in req.header_fields() {
        // HTTP/2 names are lowercase (a map's, and h2::request checks).
        if matches!(
            n,
            b"host" | b"cookie" | b"content-length" | b"x-forwarded-client-cert"
        ) || is_hop_by_hop(n)
            || (rw.client_addr.is_some() && n == b"x-forwarded-for")
            || (replaces_proto && n == b"x-forwarded-proto")
            || ops.is_some_and(|o| o.drops(n))
        {
            continue;
        }
        had_request_id |= n == b"x-request-id";
        push_header(out, n, v);
    }
    // XFCC: what the client sent is dropped unless this hop appends its
    // verified element (Envoy's SANITIZE / APPEND_FORWARD).
    let mut added = H1Fields(out);
    push_forwarded(&mut added, rw, replaces_proto, |n| {
        req.header_values(n.as_bytes())
    });
    let generated = push_request_id_and_ops(&mut added, rw, ops, had_request_id);
    push_framing(out, rw.framing);
    out.extend_from_slice(b"\r\n");
    generated
}

/// An HTTP/2 upstream's response head as `http`'s parts (fields checked
/// by the codec already: lowercase tokens, valid values), never-indexed
/// marks kept as sensitive values.
pub fn response_parts(head: &ResponseHead) -> http::response::Parts {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = http::StatusCode::from_u16(head.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    parts.headers.reserve(head.marked_fields().count());
    for (n, v, never) in head.marked_fields() {
        if let (Some(n), Ok(mut v)) = (name(n), HeaderValue::from_bytes(v)) {
            v.set_sensitive(never);
            parts.headers.append(n, v);
        }
    }
    parts
}

/// Trailers as the codec hands them over, into a header block.
pub fn encode_field_list(fields: &[(Vec<u8>, Vec<u8>)], enc: &mut Encoder, out: &mut Vec<u8>) {
    for (n, v) in fields {
        enc.field(n, v, out);
    }
}

/// A response head from a header map (an HTTP/2 upstream's answer, or a
/// local reply) as an HTTP/2 header block.
pub fn encode_map(status: u16, h: &HeaderMap, enc: &mut Encoder, out: &mut Vec<u8>) {
    enc.status(status, out);
    encode_fields(h, enc, out);
}

/// A map's fields (trailers, or after the status) into a header block.
pub fn encode_fields(h: &HeaderMap, enc: &mut Encoder, out: &mut Vec<u8>) {
    for (n, v) in h {
        if v.is_sensitive() {
            enc.field_sensitive(n.as_str().as_bytes(), v.as_bytes(), out);
        } else {
            enc.field(n.as_str().as_bytes(), v.as_bytes(), out);
        }
    }
}

/// Trailers as the codec of our own hands them over, as a map (for
/// `h2` upstream or an HTTP/1 chunked trailer section).
pub fn trailers_map(fields: &[(Vec<u8>, Vec<u8>)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in fields {
        if let (Some(n), Ok(v)) = (name(n), HeaderValue::from_bytes(v)) {
            h.append(n, v);
        }
    }
    h
}

/// An HTTP/1 response head as HTTP/2 fields: connection-specific ones and
/// those the Connection field names dropped, names lowercased, then the
/// route's response operations.
pub fn response_from_h1(view: &ResponseView<'_>, ops: Option<&HeaderOps>) -> http::Response<()> {
    let headers = view.headers();
    let mut r = http::Response::new(());
    *r.status_mut() =
        http::StatusCode::from_u16(view.head.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let check_connection = view.head.connection.other;
    // One copy of the fields for all the values to share (a slice each)
    // rather than an allocation per value.
    let spans = headers.spans();
    let end = spans.last().map_or(0, |s| s.value.end as usize);
    let raw = Bytes::copy_from_slice(view.buf.get(..end).unwrap_or_default());
    let h = r.headers_mut();
    h.reserve(spans.len());
    for s in spans {
        let n = s.name.get(view.buf);
        if is_hop_by_hop(n)
            || (check_connection && named_in_connection(headers.get_all(b"connection"), n))
        {
            continue;
        }
        let (start, stop) = (s.value.start as usize, s.value.end as usize);
        if start > stop || stop > raw.len() {
            continue;
        }
        let v = HeaderValue::from_maybe_shared(raw.slice(start..stop));
        if let (Some(n), Ok(v)) = (name(n), v) {
            h.append(n, v);
        }
    }
    if let Some(ops) = ops.filter(|o| !o.is_empty()) {
        apply_ops(h, ops);
    }
    r
}

/// An HTTP/1 response head as an HTTP/2 header block, for the codec of our
/// own: the fields `response_from_h1` keeps (connection-specific ones and
/// those the Connection field names dropped, the route's operations
/// applied), encoded straight from the head's bytes with no header map.
pub fn encode_h1_response(
    view: &ResponseView<'_>,
    ops: Option<&HeaderOps>,
    enc: &mut Encoder,
    out: &mut Vec<u8>,
) {
    let headers = view.headers();
    let check_connection = view.head.connection.other;
    let ops = ops.filter(|o| !o.is_empty());
    enc.status(view.head.status, out);
    for s in headers.spans() {
        let n = s.name.get(view.buf);
        if is_hop_by_hop(n)
            || (check_connection && named_in_connection(headers.get_all(b"connection"), n))
            || ops.is_some_and(|o| o.drops(n))
        {
            continue;
        }
        let v = view
            .buf
            .get(s.value.start as usize..s.value.end as usize)
            .unwrap_or_default();
        lowercase(n, |n| enc.field(n, v, out));
    }
    for f in ops.iter().flat_map(|o| o.set.iter().chain(&o.add)) {
        lowercase(&f.name, |n| enc.field(n, &f.value, out));
    }
}

/// `f` of `name` in lowercase (RFC 9113 §8.2.1), without an allocation for
/// names up to 64 bytes.
fn lowercase<R>(name: &[u8], f: impl FnOnce(&[u8]) -> R) -> R {
    if !name.iter().any(u8::is_ascii_uppercase) {
        return f(name);
    }
    let mut small = [0u8; 64];
    match small.get_mut(..name.len()) {
        Some(buf) => {
            for (d, s) in buf.iter_mut().zip(name) {
                *d = s.to_ascii_lowercase();
            }
            f(buf)
        }
        None => f(&name.to_ascii_lowercase()),
    }
}

/// An HTTP/2 response head (status and fields) for an HTTP/1 client;
/// `framing` is how the body will go (`None` keeps the upstream's
/// Content-Length, which for HEAD and 304 describes another body).
/// Cookies stay one line each (Set-Cookie cannot be joined).
pub fn write_h1_response(
    parts: &http::response::Parts,
    framing: BodyFraming,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (n, v) in &parts.headers {
        let n = n.as_str().as_bytes();
        if (n == b"content-length" && framing != BodyFraming::None) || is_hop_by_hop(n) {
            continue;
        }
        push_header(out, n, v.as_bytes());
    }
    push_framing(out, framing);
    if !keep_alive {
        push_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// An HTTP/1.1 request head as `write_request` wrote it, restated as an
/// HTTP/2 request: `:method`, `:scheme` http, `:authority` from Host,
/// `:path`; connection-specific fields and the framing dropped. None if it
/// does not parse or its authority or path is not valid in a URI.
pub fn request_from_h1(head: &[u8]) -> Option<http::Request<()>> {
    let Ok(Parsed::Complete { head: parsed, .. }) = parse_request(head, &Limits::default()) else {
        return None;
    };
    let view = parsed.view(head);
    let headers = view.headers();
    let authority = headers.get(b"host").unwrap_or_default();
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(view.path_and_query())
        .build()
        .ok()?;
    let mut r = http::Request::new(());
    *r.method_mut() = http::Method::from_bytes(view.method()).ok()?;
    *r.uri_mut() = uri;
    let h = r.headers_mut();
    h.reserve(headers.len());
    for (n, v) in headers.iter() {
        if n.eq_ignore_ascii_case(b"host")
            || n.eq_ignore_ascii_case(b"content-length")
            || is_hop_by_hop(n)
        {
            continue;
        }
        if let (Some(n), Ok(v)) = (name(n), HeaderValue::from_bytes(v)) {
            h.append(n, v);
        }
    }
    Some(r)
}

/// Chunked trailers (`name: value\r\n` lines, as the chunked decoder keeps
/// them) as HTTP/2 trailers; forbidden and malformed fields dropped.
pub fn trailers_from_h1(lines: &[u8]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (n, v) = (&line[..colon], line[colon + 1..].trim_ascii());
        if is_hop_by_hop(n) {
            continue;
        }
        if let (Some(n), Ok(v)) = (name(n), HeaderValue::from_bytes(v)) {
            h.append(n, v);
        }
    }
    h
}

/// HTTP/2 trailers as the lines of a chunked body's trailer section.
pub fn write_h1_trailers(h: &HeaderMap, out: &mut Vec<u8>) {
    for (n, v) in h {
        push_header(out, n.as_str().as_bytes(), v.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::forward::UpRequest;
    use crate::h2::request::RequestHead;
    use crate::http::head::{parse_response, Method};
    use crate::http::rewrite::{write_request, HeaderField, RequestIdGenerator};

    fn h2_request(fields: &[(&str, &str)]) -> http::request::Parts {
        let mut b = http::Request::builder()
            .method("POST")
            .uri("http://svc.example:8080/a/b?x=1");
        for (n, v) in fields {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    /// The same request as the HTTP/2 codec of our own reads it.
    fn h2_request_head(fields: &[(&str, &str)]) -> RequestHead {
        let mut b = h2_head(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "svc.example:8080"),
            (":path", "/a/b?x=1"),
        ]);
        for (n, v) in fields {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b.finish().unwrap()
    }

    /// An HTTP/1 request head's fields but Host and Content-Length.
    fn fields_but_host_and_length(head: &[u8]) -> Vec<(String, String)> {
        let Ok(Parsed::Complete { head: up, .. }) = parse_request(head, &Limits::default()) else {
            panic!("reparse {:?}", String::from_utf8_lossy(head))
        };
        up.view(head)
            .headers()
            .iter()
            .filter(|(n, _)| !matches!(*n, b"host" | b"content-length"))
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    /// The same rewrite of the same request gives the same fields in HTTP/1
    /// (`write_request`, bytes) and HTTP/2 (`forward::UpRequest`).
    #[test]
    fn rewrite_agrees_with_the_http1_writer() {
        let fields = [
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-client-cert", "By=spoofed"),
            ("x-drop", "1"),
            ("x-keep", "k"),
            ("content-type", "text/plain"),
        ];
        let ops = HeaderOps {
            remove: vec![b"x-drop".to_vec().into()],
            set: vec![HeaderField::new(b"x-set", b"s")],
            add: vec![HeaderField::new(b"x-keep", b"k2")],
        };
        let rw = |gen| RequestRewrite {
            path: None,
            host: None,
            client_addr: Some("192.0.2.7".parse().unwrap()),
            forwarded_proto: Some("http"),
            forwarded_proto_if_absent: false,
            request_id: Some(gen),
            client_cert: Some("By=spiffe://a;URI=spiffe://b"),
            ops: Some(&ops),
            framing: BodyFraming::Length(0),
            upgrade: false,
        };
        let g1 = RequestIdGenerator::with_seed(7);
        let g2 = RequestIdGenerator::with_seed(7);
        let g3 = RequestIdGenerator::with_seed(7);
        // HTTP/1
        let mut raw =
            b"POST /a/b?x=1 HTTP/1.1\r\nhost: svc.example:8080\r\ncontent-length: 0\r\n".to_vec();
        for (n, v) in fields {
            raw.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let Ok(Parsed::Complete { head, .. }) = parse_request(&raw, &Limits::default()) else {
            panic!("parse")
        };
        let mut out = Vec::new();
        write_request(&head.view(&raw), &rw(&g1), &mut out);
        let mut h1 = fields_but_host_and_length(&out);
        // HTTP/2
        let (up, _) = UpRequest::from_h2(&h2_request_head(&fields), &rw(&g2), b"svc", b"/");
        let mut h2: Vec<(String, String)> = up
            .header_fields()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect();
        // HTTP/2 to an HTTP/1 upstream: written as it is rewritten.
        let parts = h2_request(&fields);
        let mut out = Vec::new();
        let id = write_h1_request(&H2Parts(&parts), &rw(&g3), &mut out);
        assert!(id.is_some());
        let mut h3 = fields_but_host_and_length(&out);
        h1.sort();
        h2.sort();
        h3.sort();
        assert_eq!(h1, h2);
        assert_eq!(h1, h3);
        assert!(h2.contains(&("x-forwarded-for".into(), "10.0.0.1, 192.0.2.7".into())));
        assert!(h2.contains(&(
            "x-forwarded-client-cert".into(),
            "By=spoofed,By=spiffe://a;URI=spiffe://b".into()
        )));
        assert_eq!(head.method, Method::Post);
    }

    /// Without use_remote_address a client's X-Forwarded-Proto goes on as
    /// sent, both to an HTTP/2 upstream (the map) and an HTTP/1 one (the
    /// head); one is added where the client sent none.
    #[test]
    fn a_clients_forwarded_proto_is_kept_in_transparent_mode() {
        let rw = |path| RequestRewrite {
            path,
            host: None,
            client_addr: None,
            forwarded_proto: Some("http"),
            forwarded_proto_if_absent: true,
            request_id: None,
            client_cert: None,
            ops: None,
            framing: BodyFraming::None,
            upgrade: false,
        };
        let parts = h2_request(&[("x-forwarded-proto", "https")]);
        let mut out = Vec::new();
        write_h1_request(&H2Parts(&parts), &rw(None), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("x-forwarded-proto: https\r\n"), "{text}");
        assert_eq!(text.matches("x-forwarded-proto").count(), 1, "{text}");
        let head = h2_request_head(&[("x-forwarded-proto", "https")]);
        let (up, _) = UpRequest::from_h2(&head, &rw(None), b"a", b"/");
        let v: Vec<_> = up.header_values(b"x-forwarded-proto").collect();
        assert_eq!(v, [b"https"]);
        let parts = h2_request(&[]);
        let mut out = Vec::new();
        write_h1_request(&H2Parts(&parts), &rw(None), &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("x-forwarded-proto: http\r\n"));
        let (up, _) = UpRequest::from_h2(&h2_request_head(&[]), &rw(None), b"a", b"/");
        assert_eq!(up.header(b"x-forwarded-proto"), Some(&b"http"[..]));
    }

    #[test]
    fn h2_to_h1_head() {
        let mut parts = h2_request(&[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers")]);
        parts
            .headers
            .insert("content-length", HeaderValue::from_static("3"));
        let plain = |path, host, framing| RequestRewrite {
            path,
            host,
            client_addr: None,
            forwarded_proto: None,
            forwarded_proto_if_absent: false,
            request_id: None,
            client_cert: None,
            ops: None,
            framing,
            upgrade: false,
        };
        let mut out = Vec::new();
        let rw = plain(
            Some(&b"/a/b?x=1"[..]),
            Some(&b"svc.example:8080"[..]),
            BodyFraming::Length(3),
        );
        assert!(write_h1_request(&H2Parts(&parts), &rw, &mut out).is_none());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /a/b?x=1 HTTP/1.1\r\nhost: svc.example:8080\r\ncookie: a=1; b=2\r\ncontent-length: 3\r\n\r\n"
        );
        let mut out = Vec::new();
        let rw = plain(None, None, BodyFraming::Chunked);
        write_h1_request(&H2Parts(&h2_request(&[])), &rw, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("POST / HTTP/1.1\r\nhost: \r\n"), "{text}");
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        // A route that removes the cookies removes them all.
        let ops = HeaderOps {
            remove: vec![b"cookie".to_vec().into()],
            ..HeaderOps::default()
        };
        let rw = RequestRewrite {
            ops: Some(&ops),
            ..plain(None, None, BodyFraming::None)
        };
        let mut out = Vec::new();
        write_h1_request(&H2Parts(&parts), &rw, &mut out);
        assert!(!String::from_utf8(out).unwrap().contains("cookie"));
    }

    /// A header block's builder with `fields` decoded into it.
    fn h2_head(fields: &[(&str, &str)]) -> crate::h2::request::HeadBuilder {
        let mut b = crate::h2::request::HeadBuilder::new(16 * 1024);
        for (n, v) in fields {
            b.field(n.as_bytes(), v.as_bytes());
        }
        b
    }

    #[test]
    fn h1_response_to_h2_and_back() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-App: v\r\n\r\n";
        let Ok(Parsed::Complete { head, .. }) =
            parse_response(raw, &Limits::default(), Method::Get)
        else {
            panic!("parse")
        };
        let r = response_from_h1(&head.view(raw), None);
        let names: Vec<&str> = r.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["set-cookie", "x-app"]);
        assert_eq!(r.headers().get_all("set-cookie").iter().count(), 2);
        let (parts, ()) = r.into_parts();
        let mut out = Vec::new();
        write_h1_response(&parts, BodyFraming::Chunked, true, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nx-app: v\r\ntransfer-encoding: chunked\r\n\r\n"
        );
    }

    /// The codec of our own's encoding keeps exactly the fields the header
    /// map path keeps, in order, names lowercased, route operations applied.
    #[test]
    fn encoded_h1_response_matches_the_header_map() {
        use crate::h2::hpack::{Decoder, Encoder};
        let raw = b"HTTP/1.1 201 Created\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nServer: nginx\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Drop: 1\r\nX-Set: old\r\nX-A-Very-Long-Header-Name-That-Is-Longer-Than-Sixty-Four-Bytes-Ok: v\r\n\r\n";
        let Ok(Parsed::Complete { head, .. }) =
            parse_response(raw, &Limits::default(), Method::Get)
        else {
            panic!("parse")
        };
        let field = |n: &str, v: &str| HeaderField {
            name: n.as_bytes().into(),
            value: v.as_bytes().into(),
        };
        let ops = HeaderOps {
            remove: vec![b"x-drop".to_vec().into_boxed_slice()],
            set: vec![field("X-Set", "new")],
            add: vec![field("x-added", "1")],
        };
        for ops in [None, Some(&ops)] {
            let view = head.view(raw);
            let map = response_from_h1(&view, ops);
            let mut want = vec![(b":status".to_vec(), b"201".to_vec())];
            want.extend(
                map.headers()
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes().to_vec(), v.as_bytes().to_vec())),
            );
            let mut enc = Encoder::new();
            let mut block = Vec::new();
            enc.begin(&mut block);
            encode_h1_response(&view, ops, &mut enc, &mut block);
            let mut got = Vec::new();
            Decoder::new(4096)
                .decode(&block, |n, v| {
                    got.push((n.to_vec(), v.to_vec()));
                    Ok::<(), ()>(())
                })
                .unwrap();
            // The map groups a name's values together; compare as multisets
            // of fields, and the order of each name's values.
            let sorted = |v: &mut Vec<(Vec<u8>, Vec<u8>)>| v.sort();
            let (mut g, mut w) = (got.clone(), want.clone());
            sorted(&mut g);
            sorted(&mut w);
            assert_eq!(g, w);
            let cookies = |v: &[(Vec<u8>, Vec<u8>)]| {
                v.iter()
                    .filter(|(n, _)| n == b"set-cookie")
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(cookies(&got), cookies(&want));
        }
    }

    #[test]
    fn trailers_both_ways() {
        let h = trailers_from_h1(
            b"grpc-status: 0\r\ngrpc-message: ok\r\nbad line\r\ntransfer-encoding: x\r\n",
        );
        assert_eq!(h["grpc-status"], "0");
        assert_eq!(h["grpc-message"], "ok");
        assert_eq!(h.len(), 2);
        let mut out = Vec::new();
        write_h1_trailers(&h, &mut out);
        assert_eq!(out, b"grpc-status: 0\r\ngrpc-message: ok\r\n");
    }
}
