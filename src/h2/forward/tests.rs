use super::*;
use crate::h2::client_conn::ClientConn;
use crate::h2::conn::Conn as ServerConn;
use crate::h2::hpack::Decoder;
use crate::h2::link::Settings;
use crate::h2::request::HeadBuilder;
use crate::http::head::BodyFraming;
use crate::http::rewrite::{HeaderField, RequestIdGenerator};

fn head(fields: &[(&str, &str, bool)]) -> RequestHead {
    let mut b = HeadBuilder::new(16 * 1024);
    for (n, v) in [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "client.example"),
        (":path", "/in"),
    ] {
        b.field(n.as_bytes(), v.as_bytes());
    }
    for (n, v, never) in fields {
        b.field_marked(n.as_bytes(), v.as_bytes(), *never);
    }
    b.finish().unwrap()
}

fn rewrite<'a>(ids: &'a RequestIdGenerator, ops: Option<&'a HeaderOps>) -> RequestRewrite<'a> {
    RequestRewrite {
        path: None,
        host: None,
        client_addr: Some("192.0.2.7".parse().unwrap()),
        forwarded_proto: Some("http"),
        forwarded_proto_if_absent: false,
        request_id: Some(ids),
        client_cert: Some("By=spiffe://a;URI=spiffe://b"),
        ops,
        framing: BodyFraming::None,
        upgrade: false,
    }
}

/// What a header block decodes to: (name, value, never indexed).
fn decoded(block: &[u8]) -> Vec<(String, String, bool)> {
    let mut d = Decoder::new(4096);
    let mut v = Vec::new();
    d.decode_marked(block, |n, val, never| {
        v.push((
            String::from_utf8_lossy(n).into_owned(),
            String::from_utf8_lossy(val).into_owned(),
            never,
        ));
        Ok::<(), ()>(())
    })
    .unwrap();
    v
}

fn s(n: &str, v: &str) -> (String, String, bool) {
    (n.to_string(), v.to_string(), false)
}

#[test]
fn the_rewrite_is_applied_once_and_encoded_per_attempt() {
    let h = head(&[
        ("host", "ignored", false),
        ("authorization", "Bearer x", true),
        ("te", "trailers", false),
        ("x-forwarded-for", "198.51.100.1", false),
        ("x-forwarded-proto", "https", false),
        ("x-forwarded-client-cert", "By=forged", false),
        ("x-drop", "1", false),
        ("x-keep", "2", false),
        ("content-length", "3", false),
    ]);
    let ops = HeaderOps {
        remove: vec![b"x-drop".to_vec().into()],
        set: vec![HeaderField::new(b"x-keep", b"set")],
        add: vec![HeaderField::new(b"x-added", b"a")],
    };
    let ids = RequestIdGenerator::with_seed(1);
    let (r, id) = UpRequest::from_h2(&h, &rewrite(&ids, Some(&ops)), b"up.svc:81", b"/out?q");
    let id = id.expect("an id was generated");
    assert!(!r.is_head());
    assert_eq!(r.header(b"x-request-id"), Some(id.as_bytes()));
    let mut block = Vec::new();
    r.encode(&mut Encoder::new(), &mut block);
    assert_eq!(
        decoded(&block),
        vec![
            s(":method", "POST"),
            s(":scheme", "http"),
            s(":authority", "up.svc:81"),
            s(":path", "/out?q"),
            ("authorization".into(), "Bearer x".into(), true),
            s("te", "trailers"),
            s("content-length", "3"),
            s("x-forwarded-for", "198.51.100.1, 192.0.2.7"),
            s("x-forwarded-proto", "http"),
            // With this hop's verified element, earlier ones are kept
            // before it (XFCC's APPEND_FORWARD, as for HTTP/1).
            s(
                "x-forwarded-client-cert",
                "By=forged,By=spiffe://a;URI=spiffe://b"
            ),
            s("x-request-id", id.as_str()),
            s("x-keep", "set"),
            s("x-added", "a"),
        ]
    );
    // A second attempt on another connection encodes the same fields,
    // and no second id is made.
    let mut again = Vec::new();
    r.encode(&mut Encoder::new(), &mut again);
    assert_eq!(block, again);
}

/// The client's X-Request-Id is kept, and what a route sets replaces it.
#[test]
fn request_ids_kept_or_set_by_the_route() {
    let ids = RequestIdGenerator::with_seed(1);
    let h = head(&[("x-request-id", "client-id", false)]);
    let (r, id) = UpRequest::from_h2(&h, &rewrite(&ids, None), b"a", b"/");
    assert!(id.is_none());
    assert_eq!(r.header(b"x-request-id"), Some(&b"client-id"[..]));
    let ops = HeaderOps {
        set: vec![HeaderField::new(b"x-request-id", b"route-id")],
        ..HeaderOps::default()
    };
    let (r, id) = UpRequest::from_h2(&h, &rewrite(&ids, Some(&ops)), b"a", b"/");
    assert!(id.is_none());
    assert_eq!(
        r.header_values(b"x-request-id").collect::<Vec<_>>(),
        vec![&b"route-id"[..]]
    );
}

/// An HTTP/1 head as the HTTP/1 writer wrote it, restated for HTTP/2.
#[test]
fn an_http1_request_restated() {
    let r = UpRequest::from_h1(
        b"HEAD /p?x=1 HTTP/1.1\r\nHost: svc:8080\r\nConnection: close\r\nTE: gzip\r\nContent-Length: 0\r\nX-A: 1\r\n\r\n",
    )
    .unwrap();
    assert!(r.is_head());
    let mut block = Vec::new();
    r.encode(&mut Encoder::new(), &mut block);
    assert_eq!(
        decoded(&block),
        vec![
            s(":method", "HEAD"),
            s(":scheme", "http"),
            s(":authority", "svc:8080"),
            s(":path", "/p?x=1"),
            s("x-a", "1"),
        ]
    );
    let encoded = |head: &[u8]| {
        let mut block = Vec::new();
        UpRequest::from_h1(head)
            .unwrap()
            .encode(&mut Encoder::new(), &mut block);
        decoded(&block)
    };
    assert_eq!(
        encoded(b"CONNECT svc:443 HTTP/1.1\r\nHost: svc:443\r\n\r\n"),
        vec![s(":method", "CONNECT"), s(":authority", "svc:443")]
    );
    // te: trailers is the one te an HTTP/2 request carries (§8.2.2).
    assert!(
        encoded(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
            .contains(&s("te", "trailers"))
    );
    // HTTP/1.0 without Host: no :authority.
    assert_eq!(
        encoded(b"GET / HTTP/1.0\r\n\r\n"),
        vec![s(":method", "GET"), s(":scheme", "http"), s(":path", "/")]
    );
    assert!(UpRequest::from_h1(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n").is_none());
    assert!(UpRequest::from_h1(b"GET / HTTP/1.1\r\nHost: a\r\n").is_none());
}

/// An answer as our client side decodes it, re-encoded for an HTTP/2
/// client with the route's response operations.
#[test]
fn a_response_head_passed_on_with_the_routes_operations() {
    let mut c = ClientConn::new(Settings::default());
    let id = c
        .open(true, false, |enc, out| {
            enc.field(b":method", b"GET", out);
            enc.field(b":scheme", b"http", out);
            enc.field(b":authority", b"a", out);
            enc.field(b":path", b"/", out);
        })
        .unwrap();
    let mut srv = ServerConn::new(Settings::default());
    srv.recv(c.out()).unwrap();
    let sid = srv.accept().unwrap();
    srv.send_head(sid, true, |enc, out| {
        enc.status(201, out);
        enc.field(b"server", b"up", out);
        enc.field_sensitive(b"set-cookie", b"s=1", out);
        enc.field(b"x-internal", b"1", out);
    });
    let out = std::mem::take(srv.out());
    c.recv(&out).unwrap();
    let h = c.take_head(id).unwrap();
    let ops = HeaderOps {
        remove: vec![b"x-internal".to_vec().into()],
        set: vec![HeaderField::new(b"server", b"remora")],
        add: vec![HeaderField::new(b"x-via", b"1")],
    };
    let mut block = Vec::new();
    encode_response(&h, Some(&ops), &mut Encoder::new(), &mut block);
    assert_eq!(
        decoded(&block),
        vec![
            s(":status", "201"),
            ("set-cookie".into(), "s=1".into(), true),
            s("server", "remora"),
            s("x-via", "1"),
        ]
    );
}
