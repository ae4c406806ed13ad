//! gRPC's conventions over HTTP/2 that a proxy must keep: `grpc-timeout`,
//! `grpc-status` in a trailers-only answer, and the mapping of the proxy's
//! own HTTP errors to gRPC statuses.

use std::time::Duration;

/// A gRPC request: its content-type is `application/grpc` or
/// `application/grpc+...`.
pub fn is_grpc_content_type(v: Option<&[u8]>) -> bool {
    v.is_some_and(|v| {
        v.starts_with(b"application/grpc") && matches!(v.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// `grpc-timeout`'s value (gRPC over HTTP/2: 1 to 8 digits and a unit H,
/// M, S, m, u or n); None when malformed.
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

/// The `grpc-status` of a head (a trailers-only answer) or of trailers,
/// from its value.
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

/// `grpc-message` is percent-encoded (gRPC over HTTP/2): bytes outside
/// 0x20-0x7E and '%' itself.
pub fn percent_encode(s: &str) -> String {
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
        assert!(!is_grpc_content_type(None));
        for (ct, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("application/grpc;charset=x", true),
            ("application/grpc-web", false),
            ("application/json", false),
        ] {
            assert_eq!(is_grpc_content_type(Some(ct.as_bytes())), want, "{ct}");
        }
        assert_eq!(status_of(Some(b"14")), Some(14));
        assert_eq!(status_of(Some(b"99")), None);
        assert_eq!(status_of(None), None);
        assert_eq!(status_for_http(503), 14);
        for (s, g) in [(504, 4), (429, 8), (403, 7), (404, 12), (500, 2)] {
            assert_eq!(status_for_http(s), g, "{s}");
        }
        assert_eq!(percent_encode("a%b\n"), "a%25b%0A");
    }
}
