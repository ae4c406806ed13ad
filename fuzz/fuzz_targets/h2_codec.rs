//! The layers of the HTTP/2 server codec of our own (`h2::frame`,
//! `h2::request`) on arbitrary bytes.
//!
//! Frames: the input read as a sequence of frames (each payload cut at what
//! is left); `parse` must not panic, and what it returns lies inside the
//! payload (DATA within its flow-controlled length).
//!
//! Request heads: the input read as fields (a length byte and bytes for the
//! name, the same for the value) fed to `HeadBuilder`. What it accepts,
//! written as an HTTP/1.1 request the way a translation would (request line
//! from :method and :path, Host from :authority, the fields as they came),
//! must parse back with Remora's HTTP/1 parser as one complete head of
//! exactly its length with the same method, target and fields: nothing the
//! HTTP/2 side accepts can smuggle a second request or a field upstream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::h2::frame::{self, Frame, Head, HEAD_LEN};
use remora::h2::request::HeadBuilder;
use remora::http::head::{parse_request, Limits, Parsed};
use remora::http::RequestParts;

fuzz_target!(|data: &[u8]| {
    frames(data);
    request(data);
});

fn frames(mut rest: &[u8]) {
    while let Some(head) = Head::peek(rest) {
        rest = &rest[HEAD_LEN..];
        let n = (head.len as usize).min(rest.len());
        let head = Head { len: n as u32, ..head };
        let (payload, after) = rest.split_at(n);
        rest = after;
        let inside = |s: &[u8]| {
            let (p, q) = (payload.as_ptr() as usize, s.as_ptr() as usize);
            s.is_empty() || (q >= p && q + s.len() <= p + payload.len())
        };
        match frame::parse(head, payload) {
            Ok(Frame::Data { data, flow_len, .. }) => {
                assert!(inside(data) && data.len() as u64 <= u64::from(flow_len));
                assert_eq!(flow_len, head.len);
            }
            Ok(Frame::Headers { fragment, .. }) | Ok(Frame::Continuation { fragment, .. }) => {
                assert!(inside(fragment))
            }
            Ok(Frame::Settings { params, .. }) => {
                assert!(inside(params));
                assert_eq!(frame::settings(params).count(), params.len() / 6);
            }
            Ok(Frame::GoAway { debug, .. }) => assert!(inside(debug)),
            Ok(_) | Err(_) => {}
        }
    }
}

fn request(data: &[u8]) {
    let mut b = HeadBuilder::new(16 * 1024);
    let mut rest = data;
    let take = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let (&n, r) = rest.split_first()?;
        let n = usize::from(n).min(r.len());
        let (s, r) = r.split_at(n);
        *rest = r;
        Some(s.to_vec())
    };
    while let (Some(n), Some(v)) = (take(&mut rest), take(&mut rest)) {
        b.field(&n, &v);
    }
    let Ok(h) = b.finish() else {
        return;
    };
    let mut out = Vec::new();
    out.extend_from_slice(h.method());
    out.push(b' ');
    let target = h.path().or(h.authority()).unwrap_or(b"/");
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host = RequestParts::authority(&h);
    let mut fields = 0;
    if let Some(a) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
        fields += 1;
    }
    for (n, v) in h.fields().filter(|(n, _)| *n != b"host") {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
        fields += 1;
    }
    out.extend_from_slice(b"\r\n");
    let limits = Limits {
        max_head_bytes: 1 << 20,
        max_headers: 1024,
    };
    match parse_request(&out, &limits) {
        Ok(Parsed::Complete { head, len }) => {
            assert_eq!(len, out.len(), "the head ended early: {:?}", String::from_utf8_lossy(&out));
            let v = head.view(&out);
            assert_eq!(v.method(), h.method());
            assert_eq!(v.target(), target);
            assert_eq!(v.headers().iter().count(), fields);
        }
        // The HTTP/1 parser is stricter in places (e.g. duplicate Host, a
        // Content-Length it cannot read): refused upstream-side, not smuggled.
        Ok(Parsed::Partial) => panic!("an accepted head is incomplete as HTTP/1: {:?}", String::from_utf8_lossy(&out)),
        Err(_) => {}
    }
}
