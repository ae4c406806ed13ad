//! The HTTP/2 client connection as the upstream pool drives it:
//! `h2::client_conn::ClientConn` with Remora's `[http2]` defaults, three
//! streams opened at once (a GET, a POST whose body waits for windows, a
//! HEAD) and more as room allows, fed the input as the server's bytes in
//! pieces whose sizes the input's first byte picks. Heads, bodies and
//! trailers are read (windows credited back), request bodies sent as the
//! windows allow, some streams reset, every finished one closed; the
//! output must keep growing only by whole frames, and the open streams
//! never exceed what was opened. No panic anywhere.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::config::Http2;
use remora::h2::client_conn::ClientConn;
use remora::h2::link::{Read, Settings};
use remora::h2::frame::{ErrorCode, Head, HEAD_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    let piece = usize::from(piece % 64) + 1;
    let s = Http2::default();
    let mut conn = ClientConn::new(Settings {
        initial_stream_window: s.initial_stream_window_size,
        initial_connection_window: s.initial_connection_window_size,
        max_header_list_size: s.max_header_list_size,
        ..Settings::default()
    });
    let mut open = Vec::new();
    let mut opened = 0u32;
    let open_one = |conn: &mut ClientConn, kind: u32| {
        let (method, end): (&[u8], bool) = match kind % 3 {
            0 => (b"GET", true),
            1 => (b"POST", false),
            _ => (b"HEAD", true),
        };
        conn.open(end, method == b"HEAD", |enc, out| {
            enc.field(b":method", method, out);
            enc.field(b":scheme", b"http", out);
            enc.field(b":authority", b"upstream", out);
            enc.field(b":path", b"/", out);
        })
        .ok()
    };
    for k in 0..3 {
        if let Some(id) = open_one(&mut conn, k) {
            open.push(id);
            opened += 1;
        }
    }
    let mut input = Vec::new();
    let mut fed = 0;
    let mut body = Vec::new();
    let upload = [7u8; 40_000];
    for chunk in data.chunks(piece) {
        input.extend_from_slice(chunk);
        match conn.recv(&input[fed..]) {
            Ok(used) => fed += used,
            Err(_) => break,
        }
        let mut keep = Vec::new();
        for (turn, id) in open.drain(..).enumerate() {
            let _ = conn.take_head(id);
            if conn.can_send(id) {
                let n = conn.send_data(id, &upload, turn % 2 == 0);
                assert!(n <= upload.len());
                if turn % 2 == 1 && n == 0 {
                    conn.send_trailers(id, |enc, out| enc.field(b"x-t", b"1", out));
                }
            }
            body.clear();
            match conn.read(id, &mut body) {
                Read::End => {
                    let _ = conn.take_trailers(id);
                    conn.close(id);
                }
                Read::Reset(_) => conn.close(id),
                Read::Data(_) | Read::Pending if turn % 4 == 3 => {
                    conn.reset(id, ErrorCode::CANCEL);
                    conn.close(id);
                }
                Read::Data(_) | Read::Pending => keep.push(id),
            }
        }
        open = keep;
        if conn.can_open().is_ok() && opened < 64 {
            if let Some(id) = open_one(&mut conn, opened) {
                open.push(id);
                opened += 1;
            }
        }
        assert!(conn.active() as usize <= open.len());
        conn.drain_touched(|_| {});
        whole_frames(conn.out());
        conn.out().clear();
        conn.written();
    }
    for id in open {
        conn.close(id);
    }
    assert_eq!(conn.active(), 0);
    whole_frames(conn.out());
});

/// The output is a sequence of whole frames (after the preface, at first).
fn whole_frames(out: &[u8]) {
    let mut out = out.strip_prefix(remora::h2::PREFACE).unwrap_or(out);
    while !out.is_empty() {
        let head = Head::peek(out).expect("a frame head");
        let len = HEAD_LEN + head.len as usize;
        assert!(out.len() >= len, "a frame cut short in the output");
        out = &out[len..];
    }
}
