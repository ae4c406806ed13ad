//! The TLS ClientHello inspector on arbitrary bytes: no panic; a hello's
//! records alone give the same hello and any shorter prefix of them is
//! NeedMore (so peeking more bytes never changes a verdict); NotTls is decided
//! by the first three bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::tls::hello::{inspect, Inspect, MAX_CLIENT_HELLO};

fuzz_target!(|data: &[u8]| {
    match inspect(data) {
        Inspect::Hello(hello) => {
            let n = hello.record_len;
            assert!(n <= data.len() && n <= MAX_CLIENT_HELLO);
            assert_eq!(inspect(&data[..n]), Inspect::Hello(hello.clone()));
            for cut in [n - 1, n / 2, 5.min(n - 1)] {
                assert_eq!(
                    inspect(&data[..cut]),
                    Inspect::NeedMore,
                    "prefix {cut} of {n}"
                );
            }
            let _ = hello.max_version();
            for name in hello.alpn.iter() {
                assert!(!name.is_empty());
            }
            if let Some(sni) = &hello.sni {
                assert!(sni.bytes().all(|b| b.is_ascii_graphic()));
            }
        }
        Inspect::NotTls => {
            let tls = data.len() >= 3 && data[0] == 22 && data[1] == 3 && data[2] <= 4;
            assert!(!tls);
            // Decided by the first three bytes at most: more bytes agree.
            assert_eq!(inspect(&data[..data.len().min(3)]), Inspect::NotTls);
        }
        Inspect::NeedMore => assert!(data.len() < MAX_CLIENT_HELLO),
        Inspect::Invalid(why) => assert!(!why.is_empty()),
    }
});
