//! The downstream HTTP/2 codec's own cost per request, `h2` (the crate that
//! served until session 11, driven as `l7::h2` drove it, with `http`'s
//! types) against `h2::conn` (the codec of our own), on the same bytes: an h2load-like client's
//! batch of 10 GETs on one connection (HPACK's dynamic table warm, as on a
//! kept-alive connection), each answered from the same HTTP/1 response head
//! (nginx's for a 612-byte file) with a 612-byte body. Per request: the
//! head decoded and read the way routing reads it (method, :authority,
//! :path), the answer's head translated from HTTP/1 and encoded, the body
//! framed, the output taken. No upstream, no sockets: `h2` runs over
//! tokio's in-memory duplex (a lock and a copy per read and write, which
//! a socket costs too), the codec of our own on the bytes directly.
//!
//! `cargo bench --bench h2codec` (add `-- --quick` for a fast pass).

use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use remora::h2::conn::Conn;
use remora::h2::frame;
use remora::h2::headers::encode_h1_response;
use remora::h2::hpack::Encoder;
use remora::h2::link::Settings;
use remora::h2::PREFACE;
use remora::http::head::{parse_response, Limits, Method, Parsed, ResponseHead};
use remora::http::rewrite::is_hop_by_hop;
use remora::http::RequestParts;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};

const BATCH: usize = 10;
const BODY: usize = 612;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx/1.22.1\r\n\
Date: Mon, 30 Nov 2026 17:00:00 GMT\r\n\
Content-Type: application/octet-stream\r\n\
Content-Length: 612\r\n\
Last-Modified: Mon, 30 Nov 2026 09:00:00 GMT\r\n\
Connection: keep-alive\r\n\
ETag: \"692b0a90-264\"\r\n\
Accept-Ranges: bytes\r\n\r\n";

fn response_head() -> ResponseHead {
    match parse_response(RESPONSE, &Limits::default(), Method::Get) {
        Ok(Parsed::Complete { head, .. }) => head,
        _ => panic!("the bench's response head does not parse"),
    }
}

/// The client's bytes: the preface and SETTINGS, then `batches` batches of
/// 10 GETs on streams 1, 3, 5, ... (one HPACK encoder: later requests are
/// mostly indexed, as h2load's are).
fn client_bytes(batches: usize) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut start = PREFACE.to_vec();
    frame::write_settings(&mut start, &[]);
    let mut enc = Encoder::new();
    let mut id = 1;
    let mut out = Vec::new();
    for _ in 0..batches {
        let mut b = Vec::new();
        // What a client reading the answers gives back: the connection
        // window of a batch's bodies (each stream has a fresh window).
        frame::write_window_update(&mut b, 0, (BATCH * BODY) as u32);
        for _ in 0..BATCH {
            let mut block = Vec::new();
            enc.begin(&mut block);
            for (n, v) in [
                (&b":method"[..], &b"GET"[..]),
                (b":path", b"/small"),
                (b":scheme", b"http"),
                (b":authority", b"127.0.0.1:47801"),
                (b"user-agent", b"h2load nghttp2/1.64.0"),
            ] {
                enc.field(n, v, &mut block);
            }
            frame::write_headers(&mut b, id, &block, true, frame::DEFAULT_MAX_FRAME_SIZE);
            id += 2;
        }
        out.push(b);
    }
    (start, out)
}

const BATCHES: usize = 20_000;

fn ours(c: &mut Criterion, head: &ResponseHead, body: &[u8]) {
    let (start, batches) = client_bytes(BATCHES);
    let mut conn = Conn::new(Settings::default());
    conn.recv(&start).unwrap();
    conn.out().clear();
    let mut i = 0;
    let mut g = c.benchmark_group("h2codec");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("ours_10_requests", |b| {
        b.iter(|| {
            if i == batches.len() {
                // A fresh connection (stream ids are used up).
                conn = Conn::new(Settings::default());
                conn.recv(&start).unwrap();
                conn.out().clear();
                i = 0;
            }
            let used = conn.recv(&batches[i]).unwrap();
            assert_eq!(conn.active(), BATCH as u32);
            debug_assert_eq!(used, batches[i].len());
            i += 1;
            while let Some(id) = conn.accept() {
                let Some(Ok(req)) = conn.take_head(id) else {
                    panic!("request refused")
                };
                black_box((
                    req.method(),
                    RequestParts::authority(&req),
                    req.path_and_query(),
                ));
                conn.send_head(id, false, |enc, out| {
                    encode_h1_response(&head.view(RESPONSE), None, enc, out)
                });
                assert_eq!(conn.send_data(id, body, true), body.len());
                conn.close(id);
            }
            black_box(conn.out().len());
            conn.out().clear();
            conn.written();
        })
    });
    g.finish();
}

/// Polls with a waker that does nothing: everything is in memory.
fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

fn write_all(w: &mut DuplexStream, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match Pin::new(&mut *w).poll_write(&mut cx(), bytes) {
            Poll::Ready(Ok(n)) => bytes = &bytes[n..],
            _ => panic!("duplex write stalled"),
        }
    }
}

fn drain(r: &mut DuplexStream, sink: &mut [u8]) -> usize {
    let mut total = 0;
    loop {
        let mut rb = ReadBuf::new(sink);
        match Pin::new(&mut *r).poll_read(&mut cx(), &mut rb) {
            Poll::Ready(Ok(())) if !rb.filled().is_empty() => total += rb.filled().len(),
            _ => return total,
        }
    }
}

/// The answer's head in `http`'s types, as serving with `h2` took it: the
/// HTTP/1 head's fields but the connection-specific ones.
fn h2_response(head: &ResponseHead) -> http::Response<()> {
    let view = head.view(RESPONSE);
    let mut r = http::Response::new(());
    *r.status_mut() = http::StatusCode::from_u16(view.head.status).expect("a status");
    for (n, v) in view.headers().iter() {
        if is_hop_by_hop(n) {
            continue;
        }
        let n = http::HeaderName::from_bytes(n).expect("a name");
        let v = http::HeaderValue::from_bytes(v).expect("a value");
        r.headers_mut().append(n, v);
    }
    r
}

fn crate_h2(c: &mut Criterion, head: &ResponseHead, body: &[u8]) {
    let (start, batches) = client_bytes(BATCHES);
    let s = remora::config::Http2::default();
    let mut sink = vec![0u8; 1 << 16];
    let connect = |sink: &mut [u8]| {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        write_all(&mut client, &start);
        let mut hs = Box::pin(
            h2::server::Builder::new()
                .max_concurrent_streams(s.max_concurrent_streams)
                .initial_window_size(s.initial_stream_window_size)
                .initial_connection_window_size(s.initial_connection_window_size)
                .max_header_list_size(s.max_header_list_size)
                .handshake::<_, Bytes>(server),
        );
        let conn = loop {
            if let Poll::Ready(r) = hs.as_mut().poll(&mut cx()) {
                break r.expect("handshake");
            }
        };
        drain(&mut client, sink);
        (client, conn)
    };
    let (mut client, mut conn) = connect(&mut sink);
    let mut i = 0;
    let mut g = c.benchmark_group("h2codec");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("h2_crate_10_requests", |b| {
        b.iter(|| {
            if i == batches.len() {
                (client, conn) = connect(&mut sink);
                i = 0;
            }
            write_all(&mut client, &batches[i]);
            i += 1;
            let mut answered = 0;
            // Bounded: a stall (a window never opened, a stream never
            // released) fails the bench instead of spinning.
            for _ in 0..1_000 {
                if answered == BATCH {
                    break;
                }
                match conn.poll_accept(&mut cx()) {
                    Poll::Ready(Some(Ok((req, mut respond)))) => {
                        let (parts, _body) = req.into_parts();
                        let uri = &parts.uri;
                        black_box((&parts.method, uri.authority(), uri.path_and_query()));
                        let r = h2_response(head);
                        let mut tx = respond.send_response(r, false).expect("send_response");
                        tx.send_data(Bytes::copy_from_slice(body), true)
                            .expect("send_data");
                        answered += 1;
                    }
                    Poll::Pending => {}
                    _ => panic!("the h2 connection ended"),
                }
            }
            assert_eq!(answered, BATCH, "h2 stalled");
            // Flush what the streams queued (h2 writes in poll_accept).
            let _ = conn.poll_accept(&mut cx());
            let n = drain(&mut client, &mut sink);
            assert!(n >= BATCH * BODY, "h2 wrote {n} bytes for a batch");
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let head = response_head();
    let body = vec![b'x'; BODY];
    ours(c, &head, &body);
    crate_h2(c, &head, &body);
}

criterion_group!(h2codec, benches);
criterion_main!(h2codec);
