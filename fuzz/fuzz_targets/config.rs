//! The config loader on arbitrary text: no panic, and every error it reports
//! carries a line and column, so the operator is told where to look.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remora::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::from_toml(text, None) {
        assert!(!e.errors.is_empty(), "an error without a diagnostic");
        for d in &e.errors {
            assert!(
                d.line >= 1 && d.column >= 1,
                "no position: {d:?}\n--- text:\n{text}"
            );
        }
        let _ = e.to_string();
    }
});
