//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B): a nibble-at-a-time
//! decoder over a state table computed at compile time from the code table,
//! and a bit-accumulator encoder.
//!
//! The decoder's states are the 256 internal nodes of the code tree; one
//! table row per state gives, for each of the 16 nibbles, the node reached,
//! the symbol completed on the way if any (codes are at least 5 bits, so a
//! nibble completes at most one) and whether that node is a valid place to
//! stop. This is the shape nghttp2 and the `h2` crate use: two lookups per
//! input byte, 12 KiB of table, no branch per bit.

/// Appendix B: (code, length in bits) for symbols 0-255 and EOS (256).
/// Written out from the RFC's table; `decode_table()` checks it forms a
/// complete prefix code (exactly 256 internal nodes) at compile time.
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
];

const EOS: u16 = 256;

/// A tree child: an internal node's number, or `LEAF | symbol`.
const LEAF: u16 = 0x8000;

/// The node reached is where a string may end: the bits since the last
/// symbol are all ones (a prefix of EOS) and at most 7 (§5.2).
const ACCEPT: u8 = 1;
/// A symbol was completed in this nibble (`sym`).
const EMIT: u8 = 2;
/// The nibble completed EOS, which a string must not contain (§5.2).
const FAIL: u8 = 4;

#[derive(Clone, Copy)]
struct Step {
    next: u8,
    sym: u8,
    flags: u8,
}

/// The decoder's table and, per state, whether the bits since the last
/// symbol are all ones (to tell the two padding errors apart).
struct Tables {
    steps: [[Step; 16]; 256],
    all_ones: [bool; 256],
}

const fn decode_table() -> Tables {
    // The code tree: node 0 is the root; children[n][bit].
    let mut children = [[0u16; 2]; 256];
    let mut depth = [0u8; 256];
    let mut all_ones = [false; 256];
    all_ones[0] = true;
    let mut nodes = 1usize;
    let mut sym = 0;
    while sym < 257 {
        let (code, len) = CODES[sym];
        let mut node = 0usize;
        let mut i = len;
        while i > 0 {
            i -= 1;
            let bit = ((code >> i) & 1) as usize;
            if i == 0 {
                assert!(children[node][bit] == 0, "a code is a prefix of another");
                children[node][bit] = LEAF | sym as u16;
            } else {
                if children[node][bit] == 0 {
                    assert!(nodes < 256, "more than 256 internal nodes");
                    children[node][bit] = nodes as u16;
                    depth[nodes] = depth[node] + 1;
                    all_ones[nodes] = all_ones[node] && bit == 1;
                    nodes += 1;
                }
                let c = children[node][bit];
                assert!(c & LEAF == 0, "a code is a prefix of another");
                node = c as usize;
            }
        }
        sym += 1;
    }
    assert!(nodes == 256, "the code is not complete");

    let mut steps = [[Step {
        next: 0,
        sym: 0,
        flags: 0,
    }; 16]; 256];
    let mut state = 0;
    while state < 256 {
        let mut nibble = 0;
        while nibble < 16 {
            let mut node = state;
            let mut step = Step {
                next: 0,
                sym: 0,
                flags: 0,
            };
            let mut i = 4;
            while i > 0 {
                i -= 1;
                let c = children[node][(nibble >> i) & 1];
                if c & LEAF != 0 {
                    if c & !LEAF == EOS {
                        step.flags = FAIL;
                        break;
                    }
                    step.sym = (c & 0xff) as u8;
                    step.flags |= EMIT;
                    node = 0;
                } else {
                    node = c as usize;
                }
            }
            if step.flags & FAIL == 0 {
                step.next = node as u8;
                if all_ones[node] && depth[node] <= 7 {
                    step.flags |= ACCEPT;
                }
            }
            steps[state][nibble] = step;
            nibble += 1;
        }
        state += 1;
    }
    Tables { steps, all_ones }
}

static TABLES: Tables = decode_table();

/// Why a Huffman string was rejected (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// The string contains the EOS symbol.
    Eos,
    /// The padding is longer than 7 bits.
    PaddingTooLong,
    /// The padding is not the most significant bits of EOS (all ones).
    PaddingNotOnes,
}

/// Decodes `src`, appending to `dst`.
pub fn decode(src: &[u8], dst: &mut Vec<u8>) -> Result<(), HuffmanError> {
    // The shortest code is 5 bits: at most 8/5 symbols per input byte.
    dst.reserve(src.len().saturating_mul(8) / 5 + 1);
    let steps = &TABLES.steps;
    let mut state = 0u8;
    let mut accept = true;
    for &b in src {
        for nibble in [b >> 4, b & 0x0f] {
            let step = steps[state as usize][nibble as usize];
            if step.flags & FAIL != 0 {
                return Err(HuffmanError::Eos);
            }
            if step.flags & EMIT != 0 {
                dst.push(step.sym);
            }
            state = step.next;
            accept = step.flags & ACCEPT != 0;
        }
    }
    if accept {
        Ok(())
    } else if TABLES.all_ones[state as usize] {
        Err(HuffmanError::PaddingTooLong)
    } else {
        Err(HuffmanError::PaddingNotOnes)
    }
}

/// The length of `src` Huffman-encoded, in bytes.
#[inline]
pub fn encoded_len(src: &[u8]) -> usize {
    let bits: usize = src.iter().map(|&b| CODES[b as usize].1 as usize).sum();
    bits.div_ceil(8)
}

/// Appends `src` Huffman-encoded to `dst` (`encoded_len(src)` bytes),
/// padded with the most significant bits of EOS. The caller reserves the
/// room it expects (`dst` grows if that was too little).
pub fn encode(src: &[u8], dst: &mut Vec<u8>) {
    // Bits not yet written are the low `pending` bits of `acc`; flushing
    // whenever 32 or more are pending keeps them below 32 + 30.
    let mut acc: u64 = 0;
    let mut pending: u32 = 0;
    for &b in src {
        let (code, len) = CODES[b as usize];
        acc = (acc << len) | code as u64;
        pending += len as u32;
        if pending >= 32 {
            pending -= 32;
            dst.extend_from_slice(&((acc >> pending) as u32).to_be_bytes());
        }
    }
    while pending >= 8 {
        pending -= 8;
        dst.push((acc >> pending) as u8);
    }
    if pending > 0 {
        dst.push(((acc << (8 - pending)) as u8) | (0xff >> pending));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 7541 Appendix C's Huffman strings (C.4, C.6).
    const RFC: &[(&str, &str)] = &[
        ("www.example.com", "f1e3 c2e5 f23a 6ba0 ab90 f4ff"),
        ("no-cache", "a8eb 1064 9cbf"),
        ("custom-key", "25a8 49e9 5ba9 7d7f"),
        ("custom-value", "25a8 49e9 5bb8 e8b4 bf"),
        ("302", "6402"),
        ("private", "aec3 771a 4b"),
        (
            "Mon, 21 Oct 2013 20:13:21 GMT",
            "d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff",
        ),
        (
            "https://www.example.com",
            "9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3",
        ),
        ("gzip", "9bd9 ab"),
        (
            "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
            "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 \
             0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ),
    ];

    #[test]
    fn rfc_strings_both_ways() {
        for (text, code) in RFC {
            let code = hex(code);
            let mut out = Vec::new();
            encode(text.as_bytes(), &mut out);
            assert_eq!(out, code, "{text}");
            assert_eq!(encoded_len(text.as_bytes()), code.len(), "{text}");
            let mut back = Vec::new();
            decode(&code, &mut back).unwrap();
            assert_eq!(back, text.as_bytes());
        }
    }

    #[test]
    fn every_byte_value_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 2, 3, 7, 31, 256] {
            for start in 0..256 {
                let s: Vec<u8> = all.iter().cycle().skip(start).take(len).copied().collect();
                let mut code = Vec::new();
                encode(&s, &mut code);
                assert_eq!(code.len(), encoded_len(&s));
                let mut back = Vec::new();
                decode(&code, &mut back).unwrap();
                assert_eq!(back, s);
            }
        }
    }

    #[test]
    fn rejects_eos_and_bad_padding() {
        // EOS is 30 ones: four bytes of ones contain it.
        assert_eq!(decode(&[0xff; 4], &mut Vec::new()), Err(HuffmanError::Eos));
        // 'a' (00011, 5 bits) then 3 bits of padding that are not ones.
        assert_eq!(
            decode(&[0x18], &mut Vec::new()),
            Err(HuffmanError::PaddingNotOnes)
        );
        // 'a' padded with 111, then a whole byte of ones: 11 bits of padding.
        assert_eq!(
            decode(&[0x1f, 0xff], &mut Vec::new()),
            Err(HuffmanError::PaddingTooLong)
        );
        // A lone byte of ones: 8 bits of padding and no symbol.
        assert_eq!(
            decode(&[0xff], &mut Vec::new()),
            Err(HuffmanError::PaddingTooLong)
        );
        // 'a' padded with 111 is fine; so is the empty string.
        let mut out = Vec::new();
        decode(&[0x1f], &mut out).unwrap();
        assert_eq!(out, b"a");
        decode(&[], &mut Vec::new()).unwrap();
    }
}
