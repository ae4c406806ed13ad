//! Heads between HTTP/1 and HTTP/2 (RFC 9113 §8.2): connection-specific
//! fields dropped, `te` only as `trailers`, lowercase names, `:authority`
//! for Host, cookies split or joined (§8.2.3), trailers both ways; and the
//! proxy's request rewrite (X-Forwarded-*, X-Request-Id, XFCC, route header
//! operations) for an HTTP/2 client's request to an HTTP/1 upstream, with
//! the rules `http::rewrite::write_request` applies to HTTP/1 bytes. All on
//! bytes and the codec's spans: no header map.

use crate::h2::client_conn::ResponseHead;
use crate::h2::hpack::Encoder;
use crate::h2::link::Fields;
use crate::http::head::{BodyFraming, ResponseView};
use crate::http::rewrite::{
    is_hop_by_hop, is_valid_header_name, is_valid_header_value, named_in_connection,
    push_forwarded, push_framing, push_header, push_request_id_and_ops, push_status_line,
    reason_phrase, H1Fields, HeaderOps, RequestId, RequestRewrite,
};
use crate::http::RequestParts;

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

/// Trailers (as the codec hands them over, or from an HTTP/1 chunked
/// body) into a header block.
pub fn encode_fields(fields: &[(Vec<u8>, Vec<u8>)], enc: &mut Encoder, out: &mut Vec<u8>) {
    for (n, v) in fields {
        enc.field(n, v, out);
    }
}

/// An HTTP/1 response head as an HTTP/2 header block: connection-specific
/// fields and those the Connection field names dropped, names lowercased,
/// the route's operations applied, encoded straight from the head's bytes.
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

/// An HTTP/2 upstream's answer for an HTTP/1 client: the status line, the
/// fields (connection-specific ones, those the route's operations drop, and
/// Content-Length unless `framing` is `None`, left out), the operations'
/// set and add fields, then the framing the body goes with (`None` keeps the upstream's Content-Length, which for
/// HEAD and 304 describes another body). Cookies stay one line each
/// (Set-Cookie cannot be joined).
pub fn write_h1_response(
    head: &ResponseHead,
    ops: Option<&HeaderOps>,
    framing: BodyFraming,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    let ops = ops.filter(|o| !o.is_empty());
    let ours =
        |n: &[u8]| (n == b"content-length" && framing != BodyFraming::None) || is_hop_by_hop(n);
    push_status_line(out, head.status, reason_phrase(head.status).as_bytes());
    for (n, v) in head.fields() {
        if ours(n) || ops.is_some_and(|o| o.drops(n)) {
            continue;
        }
        push_header(out, n, v);
    }
    let added = ops.iter().flat_map(|o| o.set.iter().chain(&o.add));
    for f in added.filter(|f| !ours(&f.name)) {
        push_header(out, &f.name, &f.value);
    }
    push_framing(out, framing);
    if !keep_alive {
        push_header(out, b"connection", b"close");
    }
    out.extend_from_slice(b"\r\n");
}

/// Chunked trailers (`name: value\r\n` lines, as the chunked decoder keeps
/// them) as HTTP/2 trailers: names lowercased (§8.2.1); connection-specific,
/// malformed and invalid fields dropped.
pub fn trailers_from_h1(lines: &[u8]) -> Fields {
    let mut fields = Vec::new();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (n, v) = (&line[..colon], line[colon + 1..].trim_ascii());
        if is_hop_by_hop(n) || !is_valid_header_name(n) || !is_valid_header_value(v) {
            continue;
        }
        fields.push((n.to_ascii_lowercase(), v.to_vec()));
    }
    fields
}

/// HTTP/2 trailers as the lines of a chunked body's trailer section.
pub fn write_h1_trailers(fields: &[(Vec<u8>, Vec<u8>)], out: &mut Vec<u8>) {
    for (n, v) in fields {
        push_header(out, n, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::forward::UpRequest;
    use crate::h2::request::RequestHead;
    use crate::http::head::{parse_request, parse_response, Limits, Method, Parsed};
    use crate::http::rewrite::{write_request, HeaderField, RequestIdGenerator};

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
        let mut out = Vec::new();
        let id = write_h1_request(&h2_request_head(&fields), &rw(&g3), &mut out);
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
        let head = h2_request_head(&[("x-forwarded-proto", "https")]);
        let mut out = Vec::new();
        write_h1_request(&head, &rw(None), &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("x-forwarded-proto: https\r\n"), "{text}");
        assert_eq!(text.matches("x-forwarded-proto").count(), 1, "{text}");
        let (up, _) = UpRequest::from_h2(&head, &rw(None), b"a", b"/");
        let v: Vec<_> = up.header_values(b"x-forwarded-proto").collect();
        assert_eq!(v, [b"https"]);
        let mut out = Vec::new();
        write_h1_request(&h2_request_head(&[]), &rw(None), &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("x-forwarded-proto: http\r\n"));
        let (up, _) = UpRequest::from_h2(&h2_request_head(&[]), &rw(None), b"a", b"/");
        assert_eq!(up.header(b"x-forwarded-proto"), Some(&b"http"[..]));
    }

    #[test]
    fn h2_to_h1_head() {
        let parts = h2_request_head(&[
            ("cookie", "a=1"),
            ("cookie", "b=2"),
            ("te", "trailers"),
            ("content-length", "3"),
        ]);
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
        assert!(write_h1_request(&parts, &rw, &mut out).is_none());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /a/b?x=1 HTTP/1.1\r\nhost: svc.example:8080\r\ncookie: a=1; b=2\r\ncontent-length: 3\r\n\r\n"
        );
        let mut out = Vec::new();
        let rw = plain(None, None, BodyFraming::Chunked);
        write_h1_request(&h2_request_head(&[]), &rw, &mut out);
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
        write_h1_request(&parts, &rw, &mut out);
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

    /// An HTTP/1 answer for an HTTP/2 client: connection-specific fields
    /// and those Connection names dropped, names lowercased, the route's
    /// operations applied, in order.
    #[test]
    fn an_h1_response_encoded_for_h2() {
        use crate::h2::hpack::{Decoder, Encoder};
        let raw = b"HTTP/1.1 201 Created\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\nServer: nginx\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Drop: 1\r\nX-Set: old\r\nX-A-Very-Long-Header-Name-That-Is-Longer-Than-Sixty-Four-Bytes-Ok: v\r\n\r\n";
        let Ok(Parsed::Complete { head, .. }) =
            parse_response(raw, &Limits::default(), Method::Get)
        else {
            panic!("parse")
        };
        let ops = HeaderOps {
            remove: vec![b"x-drop".to_vec().into_boxed_slice()],
            set: vec![HeaderField::new(b"x-set", b"new")],
            add: vec![HeaderField::new(b"x-added", b"1")],
        };
        let long = "x-a-very-long-header-name-that-is-longer-than-sixty-four-bytes-ok";
        for (ops, want) in [
            (
                None,
                vec![
                    (":status", "201"),
                    ("server", "nginx"),
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                    ("x-drop", "1"),
                    ("x-set", "old"),
                    (long, "v"),
                ],
            ),
            (
                Some(&ops),
                vec![
                    (":status", "201"),
                    ("server", "nginx"),
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                    (long, "v"),
                    ("x-set", "new"),
                    ("x-added", "1"),
                ],
            ),
        ] {
            let mut block = Vec::new();
            let mut enc = Encoder::new();
            enc.begin(&mut block);
            encode_h1_response(&head.view(raw), ops, &mut enc, &mut block);
            let mut got = Vec::new();
            Decoder::new(4096)
                .decode(&block, |n, v| {
                    got.push((
                        String::from_utf8_lossy(n).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    ));
                    Ok::<(), ()>(())
                })
                .unwrap();
            let want: Vec<(String, String)> = want
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect();
            assert_eq!(got, want);
        }
    }

    /// An HTTP/2 answer for an HTTP/1 client: the route's operations (the
    /// rate-limit fields among their additions, as `with_rate_headers` puts
    /// them), the framing.
    #[test]
    fn an_h2_response_written_for_h1() {
        let head = ResponseHead::for_test(
            404,
            &[
                ("server", "up"),
                ("content-length", "12"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("x-internal", "1"),
                ("x-ratelimit-limit", "9"),
            ],
        );
        let ops = HeaderOps {
            remove: vec![b"x-internal".to_vec().into()],
            set: vec![HeaderField::new(b"server", b"remora")],
            add: vec![HeaderField::new(b"x-ratelimit-limit", b"10")],
        };
        let mut out = Vec::new();
        write_h1_response(&head, Some(&ops), BodyFraming::Chunked, false, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 404 Not Found\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nx-ratelimit-limit: 9\r\nserver: remora\r\nx-ratelimit-limit: 10\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        let mut out = Vec::new();
        write_h1_response(&head, None, BodyFraming::None, true, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("content-length: 12\r\n"), "{text}");
        assert!(!text.contains("connection"), "{text}");
    }

    #[test]
    fn trailers_both_ways() {
        let h = trailers_from_h1(
            b"Grpc-Status: 0\r\ngrpc-message: ok\r\nbad line\r\ntransfer-encoding: x\r\nbad name: 1\r\nx-nul: a\0b\r\n",
        );
        let want: Fields = vec![
            (b"grpc-status".to_vec(), b"0".to_vec()),
            (b"grpc-message".to_vec(), b"ok".to_vec()),
        ];
        assert_eq!(h, want);
        let mut out = Vec::new();
        write_h1_trailers(&h, &mut out);
        assert_eq!(out, b"grpc-status: 0\r\ngrpc-message: ok\r\n");
    }
}
