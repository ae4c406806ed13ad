//! The request head parser on arbitrary bytes: no panic, every span inside the
//! buffer, and a complete head is parsed the same when it arrives in two reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::http::head::{parse_request, Limits, Parsed};
use remora::http::RequestParts;

fuzz_target!(|data: &[u8]| {
    // A small limit too, so that 431 paths are reached with short inputs.
    let small = Limits {
        max_head_bytes: 256,
        max_headers: 8,
    };
    for limits in [Limits::default(), small] {
        let Ok(Parsed::Complete { head, len }) = parse_request(data, &limits) else {
            continue;
        };
        assert!(len <= data.len() && len <= limits.max_head_bytes);
        assert_eq!(head.head_len, len);
        let v = head.view(data);
        // Every accessor reads spans of the buffer: any span out of range panics here.
        let _ = (
            v.method(),
            v.target(),
            v.path_and_query(),
            v.path(),
            v.query(),
        );
        let _ = (
            v.authority(),
            v.host(),
            v.upgrade(),
            v.is_websocket(),
            v.is_connect(),
        );
        for (name, value) in v.headers().iter() {
            assert!(!name.is_empty());
            let _ = value;
        }
        let _ = RequestParts::header(&v, b"host");
        // The head is self-delimiting: the bytes after it do not change it, and
        // a read that stops one byte short is Partial (never an error), so a
        // head split across reads parses like a whole one.
        match parse_request(&data[..len], &limits) {
            Ok(Parsed::Complete {
                head: again,
                len: l,
            }) => {
                assert_eq!(l, len);
                assert_eq!(again, head);
            }
            other => panic!("head alone: {other:?}"),
        }
        assert_eq!(
            parse_request(&data[..len - 1], &limits),
            Ok(Parsed::Partial)
        );
    }
});
