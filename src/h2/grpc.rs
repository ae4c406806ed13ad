//! gRPC's conventions over HTTP/2 that a proxy must keep: `grpc-timeout`,
//! `grpc-status` in a trailers-only answer, and the mapping of the proxy's
//! own HTTP errors to gRPC statuses.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};

/// A gRPC request: `content-type: application/grpc` or `application/grpc+...`.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    is_grpc_content_type(
        headers
            .get(http::header::CONTENT_TYPE)
            .map(HeaderValue::as_bytes),
    )
}

/// The same, from the content-type's value.
pub fn is_grpc_content_type(v: Option<&[u8]>) -> bool {
    v.is_some_and(|v| {
        v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// `grpc-timeout` (gRPC over HTTP/2: 1 to 8 digits and a unit H, M, S, m, u
/// or n); None when absent or malformed.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    parse_timeout(headers.get("grpc-timeout")?.as_bytes())
}

pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` in a head (a trailers-only answer) or in trailers.
pub fn status(headers: &HeaderMap) -> Option<u8> {
    status_of(headers.get("grpc-status").map(HeaderValue::as_bytes))
}

/// The same, from grpc-status's value.
pub fn status_of(v: Option<&[u8]>) -> Option<u8> {
    let v = std::str::from_utf8(v?).ok()?;
    v.parse::<u8>().ok().filter(|s| *s <= 16)
}

/// The gRPC status of a proxy's own HTTP error, as Envoy's local replies
/// carry it: 503 UNAVAILABLE (14), 504 DEADLINE_EXCEEDED (4), 429
/// RESOURCE_EXHAUSTED (8), 403 PERMISSION_DENIED (7), 401 UNAUTHENTICATED
/// (16), 404 UNIMPLEMENTED (12), 400 INTERNAL (13), other 5xx UNAVAILABLE or
/// UNKNOWN.
pub fn status_for_http(status: u16) -> u8 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 => 8,
        502 | 503 => 14,
        504 => 4,
        _ => 2,
    }
}

/// The head of a trailers-only gRPC answer for a local reply: HTTP 200,
/// the gRPC status and message, and nothing after it (END_STREAM).
pub fn local_reply_headers(http_status: u16, message: &str, headers: &mut HeaderMap) {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(
        "grpc-status",
        HeaderValue::from(u16::from(status_for_http(http_status))),
    );
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", v);
    }
}

/// `grpc-message` is percent-encoded (gRPC over HTTP/2): bytes outside
/// 0x20-0x7E and '%' itself.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        for (v, want) in [
            (&b"100m"[..], Some(Duration::from_millis(100))),
            (b"5S", Some(Duration::from_secs(5))),
            (b"1H", Some(Duration::from_secs(3600))),
            (b"2M", Some(Duration::from_secs(120))),
            (b"250u", Some(Duration::from_micros(250))),
            (b"99999999n", Some(Duration::from_nanos(99_999_999))),
            (b"123456789S", None),
            (b"S", None),
            (b"10", None),
            (b"10x", None),
            (b"-1S", None),
            (b"", None),
        ] {
            assert_eq!(parse_timeout(v), want, "{}", String::from_utf8_lossy(v));
        }
    }

    #[test]
    fn grpc_detection_and_status() {
        let mut h = HeaderMap::new();
        assert!(!is_grpc(&h));
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            h.insert("content-type", HeaderValue::from_static(ct));
            assert_eq!(is_grpc(&h), want, "{ct}");
        }
        h.insert("grpc-status", HeaderValue::from_static("14"));
        assert_eq!(status(&h), Some(14));
        h.insert("grpc-status", HeaderValue::from_static("99"));
        assert_eq!(status(&h), None);
        let mut r = HeaderMap::new();
        local_reply_headers(503, "no healthy upstream", &mut r);
        assert_eq!(r["grpc-status"], "14");
        assert_eq!(r["grpc-message"], "no healthy upstream");
        for (s, g) in [(504, 4), (429, 8), (403, 7), (404, 12), (500, 2)] {
            assert_eq!(status_for_http(s), g, "{s}");
        }
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}
