//! The header fields the proxy acts on, recognised once per field.
//!
//! Parsing a head classifies each field name ([`Field::of`], kept in its
//! [`HeaderSpan`](super::head::HeaderSpan)); framing, connection handling and
//! rewriting then read that instead of comparing every name against a dozen
//! literals, case-insensitively, again and again. The comparison itself
//! ([`eq_lower`]) is a word at a time, not a byte: a name compared with
//! `eq_ignore_ascii_case` costs ~10 instructions per byte, and on a request
//! and its response the names compared add up to ~40 bytes.

/// A header field name Remora handles itself (everything else is [`Field::Other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Field {
    #[default]
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Upgrade,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XForwardedClientCert,
    XRequestId,
}

impl Field {
    /// What `name` is, ignoring ASCII case.
    pub fn of(name: &[u8]) -> Field {
        match name.len() {
            2 if eq_lower(name, b"te") => Field::Te,
            4 if eq_lower(name, b"host") => Field::Host,
            6 if eq_lower(name, b"expect") => Field::Expect,
            7 if eq_lower(name, b"upgrade") => Field::Upgrade,
            10 if eq_lower(name, b"connection") => Field::Connection,
            10 if eq_lower(name, b"keep-alive") => Field::KeepAlive,
            12 if eq_lower(name, b"x-request-id") => Field::XRequestId,
            14 if eq_lower(name, b"content-length") => Field::ContentLength,
            15 if eq_lower(name, b"x-forwarded-for") => Field::XForwardedFor,
            16 if eq_lower(name, b"proxy-connection") => Field::ProxyConnection,
            17 if eq_lower(name, b"transfer-encoding") => Field::TransferEncoding,
            17 if eq_lower(name, b"x-forwarded-proto") => Field::XForwardedProto,
            23 if eq_lower(name, b"x-forwarded-client-cert") => Field::XForwardedClientCert,
            _ => Field::Other,
        }
    }

    /// Connection-specific (RFC 9110 §7.6.1, RFC 9113 §8.2.2): never
    /// forwarded as received. `proxy-connection` and `keep-alive` are not
    /// standard but are sent by old clients, and every proxy drops them.
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Field::Connection
                | Field::KeepAlive
                | Field::ProxyConnection
                | Field::Te
                | Field::TransferEncoding
                | Field::Upgrade
        )
    }
}

/// Whether `name` is `lower` ignoring ASCII case, where `lower` is ASCII
/// with no uppercase letter (a literal such as `b"content-length"`).
///
/// Eight bytes at a time: each byte of `name` where `lower` has a letter gets
/// its 0x20 bit set (which maps `A`-`Z` onto `a`-`z` and nothing else onto a
/// letter), the others are compared as they are. So it is exact for any
/// `name`, not only valid tokens: `\r` (0x0D) never matches `-` (0x2D).
#[inline(always)]
pub fn eq_lower(name: &[u8], lower: &[u8]) -> bool {
    debug_assert!(lower
        .iter()
        .all(|b| b.is_ascii() && !b.is_ascii_uppercase()));
    let n = lower.len();
    if name.len() != n {
        return false;
    }
    match n {
        0..=3 => name.eq_ignore_ascii_case(lower),
        4..=7 => eq_at::<4>(name, lower, 0) && eq_at::<4>(name, lower, n - 4),
        _ => {
            let mut i = 0;
            while i + 8 < n {
                if !eq_at::<8>(name, lower, i) {
                    return false;
                }
                i += 8;
            }
            eq_at::<8>(name, lower, n - 8)
        }
    }
}

/// `W` bytes (4 or 8) of `name` and `lower` from `at`, compared as in [`eq_lower`].
#[inline(always)]
fn eq_at<const W: usize>(name: &[u8], lower: &[u8], at: usize) -> bool {
    let word = |s: &[u8]| {
        let mut w = [0u8; 8];
        match s.get(at..).and_then(|s| s.first_chunk::<W>()) {
            Some(c) => {
                w[..W].copy_from_slice(c);
                Some(u64::from_le_bytes(w))
            }
            None => None,
        }
    };
    match (word(name), word(lower)) {
        (Some(a), Some(b)) => a | case_bits(b) == b,
        _ => false,
    }
}

/// 0x20 in each byte of `w` that is a lowercase ASCII letter, 0 in the others
/// (for bytes below 0x80: neither subtraction borrows across bytes).
#[inline(always)]
const fn case_bits(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let at_least_a = (w | (0x80 * ONES)) - 0x61 * ONES;
    let at_most_z = 0xFA * ONES - w;
    (at_least_a & at_most_z & (0x80 * ONES)) >> 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [(&[u8], Field); 13] = [
        (b"te", Field::Te),
        (b"host", Field::Host),
        (b"expect", Field::Expect),
        (b"upgrade", Field::Upgrade),
        (b"connection", Field::Connection),
        (b"keep-alive", Field::KeepAlive),
        (b"x-request-id", Field::XRequestId),
        (b"content-length", Field::ContentLength),
        (b"x-forwarded-for", Field::XForwardedFor),
        (b"proxy-connection", Field::ProxyConnection),
        (b"transfer-encoding", Field::TransferEncoding),
        (b"x-forwarded-proto", Field::XForwardedProto),
        (b"x-forwarded-client-cert", Field::XForwardedClientCert),
    ];

    /// The word compare agrees with `eq_ignore_ascii_case` on every known
    /// name in every casing of each letter, and on every one-byte change
    /// of it (each position, all 256 values: CR for a dash, bytes with the
    /// high bit, the characters beside `a` and `z`).
    #[test]
    fn eq_lower_is_eq_ignore_ascii_case() {
        for (lower, _) in NAMES {
            // Each letter upper or lower on its own, and all upper.
            let mut cases = vec![lower.to_vec(), lower.to_ascii_uppercase()];
            for i in 0..lower.len() {
                let mut c = lower.to_vec();
                c[i] = c[i].to_ascii_uppercase();
                cases.push(c);
            }
            for c in &cases {
                assert!(eq_lower(c, lower), "{:?}", String::from_utf8_lossy(c));
                for i in 0..c.len() {
                    for b in 0..=255u8 {
                        let mut m = c.clone();
                        m[i] = b;
                        assert_eq!(
                            eq_lower(&m, lower),
                            m.eq_ignore_ascii_case(lower),
                            "{m:?} vs {lower:?}"
                        );
                    }
                }
            }
            assert!(!eq_lower(&lower[1..], lower));
            assert!(!eq_lower(&[lower, b"x"].concat(), lower));
        }
        // Every length up to 24 (each path of the match), letters and not.
        let alphabet = b"az-AZ09\r_{@`[";
        for n in 0..24 {
            let lower: Vec<u8> = (0..n).map(|i| b"a-z0`{@_"[i % 8]).collect();
            for i in 0..n {
                for &b in alphabet {
                    let mut m = lower.clone();
                    m[i] = b;
                    assert_eq!(eq_lower(&m, &lower), m.eq_ignore_ascii_case(&lower));
                }
            }
        }
    }

    #[test]
    fn field_of_names() {
        for (name, field) in NAMES {
            assert_eq!(Field::of(name), field);
            assert_eq!(Field::of(&name.to_ascii_uppercase()), field);
        }
        for other in [
            &b""[..],
            b"t",
            b"tf",
            b"hosts",
            b"date",
            b"content-type",
            b"x-forwarded-port",
        ] {
            assert_eq!(Field::of(other), Field::Other, "{other:?}");
        }
        let hop: Vec<Field> = NAMES
            .iter()
            .map(|n| n.1)
            .filter(|f| f.is_hop_by_hop())
            .collect();
        assert_eq!(
            hop,
            [
                Field::Te,
                Field::Upgrade,
                Field::Connection,
                Field::KeepAlive,
                Field::ProxyConnection,
                Field::TransferEncoding
            ]
        );
    }
}
