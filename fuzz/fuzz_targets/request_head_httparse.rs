//! Differential: Remora's request head parser against `httparse`'s verdict.
//!
//! Remora parses with httparse and then adds the RFC 9112 checks httparse
//! leaves to its user, so the two may disagree only in one direction: Remora
//! may reject what httparse accepts, never the reverse. The cases where Remora
//! is intentionally stricter (see `src/http/head.rs`'s module doc):
//! - a bare LF as a line terminator (RFC 9112 §2.2: a proxy must not accept
//!   what the next hop may frame differently);
//! - a head over `max_head_bytes` (431), even while httparse still says Partial;
//! - request-target form and bytes (RFC 9112 §3.2: no fragment, no raw
//!   non-ASCII, CONNECT needs authority-form with a port, `*` only for OPTIONS,
//!   a valid authority in absolute-form);
//! - Host: missing in HTTP/1.1, repeated, or not a valid authority (§3.2);
//! - framing: Content-Length with Transfer-Encoding, a malformed or differing
//!   Content-Length, TE other than a single final `chunked`, TE in HTTP/1.0
//!   (§6.1–§6.3);
//! - more than `max_headers` fields (httparse's TooManyHeaders is an error too,
//!   given the same number of slots, so that one must agree).
//!
//! What must agree, asserted here: anything httparse rejects Remora rejects;
//! whenever Remora accepts, httparse accepts the same length with the same
//! method, target, version and header fields in order; whenever Remora says
//! Partial, so does httparse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::http::head::{parse_request, Limits, Parsed, Version};

fuzz_target!(|data: &[u8]| {
    let limits = Limits::default();
    let remora = parse_request(data, &limits);
    let mut slots = [httparse::EMPTY_HEADER; 100];
    assert_eq!(limits.max_headers, slots.len());
    let mut req = httparse::Request::new(&mut slots);
    let reference = req.parse(data);
    match (&reference, &remora) {
        // httparse rejects: so must Remora.
        (Err(e), Ok(verdict)) => panic!("httparse: {e:?}, Remora: {verdict:?}"),
        (Err(_), Err(_)) => {}
        // httparse wants more: Remora too, unless the head is already too large.
        (Ok(httparse::Status::Partial), Ok(Parsed::Partial)) => {}
        (Ok(httparse::Status::Partial), Err(e)) => {
            assert!(
                data.len() > limits.max_head_bytes,
                "httparse Partial, Remora: {e:?}"
            );
        }
        (Ok(httparse::Status::Partial), Ok(c)) => panic!("httparse Partial, Remora: {c:?}"),
        // httparse has a complete head: Remora may reject it (stricter), never
        // wait for more, and when it accepts, it read the same head.
        (Ok(httparse::Status::Complete(_)), Ok(Parsed::Partial)) => {
            panic!("httparse Complete, Remora Partial")
        }
        (Ok(httparse::Status::Complete(_)), Err(_)) => {}
        (Ok(httparse::Status::Complete(n)), Ok(Parsed::Complete { head, len })) => {
            assert_eq!(n, len);
            let v = head.view(data);
            assert_eq!(req.method.map(str::as_bytes), Some(v.method()));
            assert_eq!(req.path.map(str::as_bytes), Some(v.target()));
            let minor = match head.version {
                Version::Http10 => 0,
                Version::Http11 => 1,
            };
            assert_eq!(req.version, Some(minor));
            let ours: Vec<(&[u8], &[u8])> = v.headers().iter().collect();
            let theirs: Vec<(&[u8], &[u8])> = req
                .headers
                .iter()
                .map(|h| (h.name.as_bytes(), h.value))
                .collect();
            assert_eq!(ours.len(), theirs.len());
            for ((on, ov), (tn, tv)) in ours.iter().zip(&theirs) {
                assert!(on.eq_ignore_ascii_case(tn), "{on:?} vs {tn:?}");
                assert_eq!(ov, tv);
            }
        }
    }
});
