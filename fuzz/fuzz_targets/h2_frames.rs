//! The HTTP/2 server connection as the proxy drives it: `h2::conn::Conn`
//! with Remora's `[http2]` defaults (as `l7::h2::serve` builds it), fed the
//! client preface and then the input, in pieces whose sizes the input's
//! first byte picks (a frame split across reads must read like a whole
//! one). Every accepted request is translated to the HTTP/1.1 head Remora
//! would send upstream, its rewrite included
//! (`h2::headers::write_h1_request`), which must parse back as exactly one
//! head of its length: no field the codec accepts may smuggle a second
//! request or leave the head open. Bodies are read (windows credited back),
//! some streams answered whole, some reset, every one closed; the output
//! must keep growing only by whole frames. No panic anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::config::Http2;
use remora::h2::conn::Conn;
use remora::h2::link::{Read, Settings};
use remora::h2::frame::{ErrorCode, Head, HEAD_LEN};
use remora::h2::headers::write_h1_request;
use remora::h2::PREFACE;
use remora::http::head::{parse_request, BodyFraming, Limits, Parsed};
use remora::http::rewrite::{RequestIdGenerator, RequestRewrite};
use remora::http::RequestParts;

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece % 64) + 1;
    let s = Http2::default();
    let mut conn = Conn::new(Settings {
        max_concurrent_streams: s.max_concurrent_streams,
        initial_stream_window: s.initial_stream_window_size,
        initial_connection_window: s.initial_connection_window_size,
        max_header_list_size: s.max_header_list_size,
        ..Settings::default()
    });
    let ids = RequestIdGenerator::with_seed(1);
    let mut input = PREFACE.to_vec();
    let mut fed = 0;
    let mut open = Vec::new();
    let mut body = Vec::new();
    for chunk in data.chunks(piece) {
        input.extend_from_slice(chunk);
        match conn.recv(&input[fed..]) {
            Ok(used) => fed += used,
            Err(_) => break,
        }
        while let Some(id) = conn.accept() {
            if let Some(Ok(head)) = conn.take_head(id) {
                translate(&head, &ids);
            }
            open.push(id);
        }
        // Read every open stream; answer the even-numbered turns, reset
        // every third, close what is done.
        let mut keep = Vec::new();
        for (turn, id) in open.drain(..).enumerate() {
            body.clear();
            let r = conn.read(id, &mut body);
            match r {
                Read::End => {
                    let _ = conn.take_trailers(id);
                    conn.send_head(id, false, |enc, out| {
                        enc.status(200, out);
                        enc.field(b"content-type", b"text/plain", out);
                    });
                    let sent = conn.send_data(id, b"ok", true);
                    assert!(sent <= 2);
                    conn.close(id);
                }
                Read::Reset(_) => conn.close(id),
                Read::Data(_) | Read::Pending if turn % 3 == 2 => {
                    conn.reset(id, ErrorCode::CANCEL);
                    conn.close(id);
                }
                Read::Data(_) | Read::Pending => keep.push(id),
            }
        }
        open = keep;
        whole_frames(conn.out());
        conn.out().clear();
        conn.written();
    }
    for id in open {
        conn.close(id);
    }
    whole_frames(conn.out());
});

/// The output is a sequence of whole frames.
fn whole_frames(mut out: &[u8]) {
    while !out.is_empty() {
        let head = Head::peek(out).expect("a frame head");
        let len = HEAD_LEN + head.len as usize;
        assert!(out.len() >= len, "a frame cut short in the output");
        out = &out[len..];
    }
}

fn translate(head: &remora::h2::request::RequestHead, ids: &RequestIdGenerator) {
    let mut out = Vec::new();
    let rewrite = RequestRewrite {
        path: Some(head.path_and_query()),
        host: RequestParts::authority(head),
        client_addr: Some("192.0.2.1".parse().unwrap()),
        forwarded_proto: Some("http"),
        forwarded_proto_if_absent: true,
        request_id: Some(ids),
        client_cert: None,
        ops: None,
        framing: BodyFraming::Chunked,
        upgrade: false,
    };
    write_h1_request(head, &rewrite, &mut out);
    let limits = Limits {
        max_head_bytes: usize::MAX,
        ..Limits::default()
    };
    match parse_request(&out, &limits) {
        Ok(Parsed::Complete { len, .. }) => {
            assert_eq!(len, out.len(), "{:?}", String::from_utf8_lossy(&out))
        }
        Ok(Parsed::Partial) => panic!(
            "translated head left open: {:?}",
            String::from_utf8_lossy(&out)
        ),
        // Stricter than HTTP/2 (e.g. a field value HTTP/1 does not allow):
        // the proxy would answer 400, nothing is forwarded.
        Err(_) => {}
    }
}
