//! Protocol detection: does a connection start with an HTTP/1 request line,
//! or with the HTTP/2 connection preface (RFC 9113 §3.4, prior knowledge)?
//!
//! A pure function over the first bytes ([`sniff`]) plus a bounded peek
//! ([`detect`]). Silence for the detection window means a server-first
//! protocol (MySQL, SMTP greet before the client speaks): L4, so the banner flows.

use std::time::{Duration, Instant};

use crate::net::tcp::Tcp;

use crate::deadline::until;

/// Request methods whose token starts an HTTP/1 request line we proxy at L7.
const METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// A known method token followed by a space.
    Http1,
    /// The whole HTTP/2 connection preface.
    Http2,
    /// Cannot be an HTTP/1 request line we know.
    Other,
    /// A prefix of one: wait for more bytes.
    NeedMore,
}

pub fn sniff(first: &[u8]) -> Sniff {
    let preface = crate::h2::PREFACE;
    if first.len() >= preface.len() {
        if first.starts_with(preface) {
            return Sniff::Http2;
        }
    } else if preface.starts_with(first) && !first.is_empty() {
        return Sniff::NeedMore;
    }
    let mut need_more = false;
    for m in METHODS {
        if first.len() > m.len() {
            if first.starts_with(m) && first[m.len()] == b' ' {
                return Sniff::Http1;
            }
        } else if m.starts_with(first) {
            need_more = true;
        }
    }
    if need_more {
        Sniff::NeedMore
    } else {
        Sniff::Other
    }
}

/// What a connection's first bytes say it speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    /// Not HTTP, or silent for the whole window.
    Other,
}

/// Peeks (without consuming) for up to `window`.
pub async fn detect(stream: &mut Tcp, window: Duration) -> Detected {
    let deadline = Instant::now() + window;
    let mut first = [0u8; 24];
    loop {
        let n = match until(Some(deadline), stream.peek(&mut first)).await {
            None | Some(Err(_)) | Some(Ok(0)) => return Detected::Other,
            Some(Ok(n)) => n,
        };
        match sniff(&first[..n]) {
            Sniff::Http1 => return Detected::Http1,
            Sniff::Http2 => return Detected::Http2,
            Sniff::Other => return Detected::Other,
            // A request line split across segments: the bytes stay readable, so
            // peek would return at once; pause briefly instead of spinning.
            Sniff::NeedMore => {
                if Instant::now() >= deadline {
                    return Detected::Other;
                }
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_table() {
        for (input, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Sniff::Http1),
            (b"POST /x HTTP/1.0\r\n", Sniff::Http1),
            (b"OPTIONS * HTTP/1.1", Sniff::Http1),
            (b"CONNECT a:443 HTTP/1.1", Sniff::Http1),
            (b"DELETE ", Sniff::Http1),
            (b"", Sniff::NeedMore),
            (b"G", Sniff::NeedMore),
            (b"GET", Sniff::NeedMore),
            (b"CONNEC", Sniff::NeedMore),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Sniff::Http2),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00", Sniff::Http2),
            (b"PRI * HTTP/2", Sniff::NeedMore),
            (b"PRI * HTTP/1.1\r\n", Sniff::Other),
            (b"GETX / HTTP/1.1", Sniff::Other),
            (b"get / HTTP/1.1", Sniff::Other),
            (b"\x16\x03\x01\x02\x00", Sniff::Other),
            (b"SSH-2.0-OpenSSH", Sniff::Other),
            (b"\x00\x00\x00\x01", Sniff::Other),
            (b" GET / HTTP/1.1", Sniff::Other),
        ] {
            assert_eq!(sniff(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }
}
