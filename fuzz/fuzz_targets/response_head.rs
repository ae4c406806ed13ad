//! The response head parser on arbitrary bytes, after each kind of request
//! (HEAD and CONNECT change the framing): no panic, spans inside the buffer,
//! and the same head when it arrives in two reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::http::head::{parse_response, Limits, Method, Parsed};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, data)) = data.split_first() else {
        return;
    };
    let method = match selector % 4 {
        0 => Method::Get,
        1 => Method::Head,
        2 => Method::Connect,
        _ => Method::Post,
    };
    let limits = if selector & 0x80 != 0 {
        Limits {
            max_head_bytes: 256,
            max_headers: 8,
        }
    } else {
        Limits::default()
    };
    let Ok(Parsed::Complete { head, len }) = parse_response(data, &limits, method) else {
        return;
    };
    assert!(len <= data.len() && len <= limits.max_head_bytes);
    assert_eq!(head.head_len, len);
    let v = head.view(data);
    let _ = (v.reason(), v.upgrade(), v.is_interim());
    for (name, _value) in v.headers().iter() {
        assert!(!name.is_empty());
    }
    match parse_response(&data[..len], &limits, method) {
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
        parse_response(&data[..len - 1], &limits, method),
        Ok(Parsed::Partial)
    );
});
