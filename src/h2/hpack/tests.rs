//! The RFC 7541 Appendix C examples, each error by a crafted block, the
//! encoder's choices, and a mutation loop.

use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn fields(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

fn decode(d: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError<()>> {
    let mut out = Vec::new();
    d.decode(block, |n, v| {
        out.push((n.to_vec(), v.to_vec()));
        Ok::<(), ()>(())
    })?;
    Ok(out)
}

fn table(d: &Decoder) -> (Fields, usize) {
    let entries = d
        .table_entries()
        .map(|(n, v)| (n.to_vec(), v.to_vec()))
        .collect();
    (entries, d.table_size())
}

/// One step of an Appendix C sequence: the block, the list it decodes to,
/// and the dynamic table (newest first) and its size after it.
struct Step<'a> {
    block: &'a str,
    list: &'a [(&'a str, &'a str)],
    table: &'a [(&'a str, &'a str)],
    size: usize,
}

fn run(table_size: usize, steps: &[Step]) {
    let mut d = Decoder::new(table_size);
    for (i, s) in steps.iter().enumerate() {
        let got = decode(&mut d, &hex(s.block)).unwrap();
        assert_eq!(got, fields(s.list), "step {i}");
        assert_eq!(table(&d), (fields(s.table), s.size), "step {i}");
    }
}

#[test]
fn c2_field_representations() {
    // C.2.1 literal with indexing, C.2.2 without, C.2.3 never indexed, C.2.4
    // indexed; each on a fresh decoder, as the RFC prints them.
    run(
        4096,
        &[Step {
            block: "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
            list: &[("custom-key", "custom-header")],
            table: &[("custom-key", "custom-header")],
            size: 55,
        }],
    );
    run(
        4096,
        &[Step {
            block: "040c 2f73 616d 706c 652f 7061 7468",
            list: &[(":path", "/sample/path")],
            table: &[],
            size: 0,
        }],
    );
    run(
        4096,
        &[Step {
            block: "1008 7061 7373 776f 7264 0673 6563 7265 74",
            list: &[("password", "secret")],
            table: &[],
            size: 0,
        }],
    );
    run(
        4096,
        &[Step {
            block: "82",
            list: &[(":method", "GET")],
            table: &[],
            size: 0,
        }],
    );
}

const REQ1: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
];
const REQ2: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/"),
    (":authority", "www.example.com"),
    ("cache-control", "no-cache"),
];
const REQ3: &[(&str, &str)] = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
];
const REQ_T1: &[(&str, &str)] = &[(":authority", "www.example.com")];
const REQ_T2: &[(&str, &str)] = &[
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];
const REQ_T3: &[(&str, &str)] = &[
    ("custom-key", "custom-value"),
    ("cache-control", "no-cache"),
    (":authority", "www.example.com"),
];

const C3: [&str; 3] = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
];
const C4: [&str; 3] = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
];

fn requests(blocks: [&str; 3]) -> [Step<'_>; 3] {
    [
        Step {
            block: blocks[0],
            list: REQ1,
            table: REQ_T1,
            size: 57,
        },
        Step {
            block: blocks[1],
            list: REQ2,
            table: REQ_T2,
            size: 110,
        },
        Step {
            block: blocks[2],
            list: REQ3,
            table: REQ_T3,
            size: 164,
        },
    ]
}

#[test]
fn c3_requests_without_huffman() {
    run(4096, &requests(C3));
}

#[test]
fn c4_requests_with_huffman() {
    run(4096, &requests(C4));
}

const DATE1: &str = "Mon, 21 Oct 2013 20:13:21 GMT";
const DATE2: &str = "Mon, 21 Oct 2013 20:13:22 GMT";
const LOC: &str = "https://www.example.com";
const COOKIE: &str = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

fn responses(blocks: [&str; 3]) -> [Step<'_>; 3] {
    let r1: &'static [(&str, &str)] = &[
        (":status", "302"),
        ("cache-control", "private"),
        ("date", DATE1),
        ("location", LOC),
    ];
    [
        Step {
            block: blocks[0],
            list: r1,
            table: &[
                ("location", LOC),
                ("date", DATE1),
                ("cache-control", "private"),
                (":status", "302"),
            ],
            size: 222,
        },
        Step {
            block: blocks[1],
            list: &[
                (":status", "307"),
                ("cache-control", "private"),
                ("date", DATE1),
                ("location", LOC),
            ],
            table: &[
                (":status", "307"),
                ("location", LOC),
                ("date", DATE1),
                ("cache-control", "private"),
            ],
            size: 222,
        },
        Step {
            block: blocks[2],
            list: &[
                (":status", "200"),
                ("cache-control", "private"),
                ("date", DATE2),
                ("location", LOC),
                ("content-encoding", "gzip"),
                ("set-cookie", COOKIE),
            ],
            table: &[
                ("set-cookie", COOKIE),
                ("content-encoding", "gzip"),
                ("date", DATE2),
            ],
            size: 215,
        },
    ]
}

const C5: [&str; 3] = [
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
     2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
     6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
     54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
     5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
     3d31",
];
const C6: [&str; 3] = [
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
     2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
     77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
     9587 3160 65c0 03ed 4ee5 b106 3d50 07",
];

#[test]
fn c5_responses_without_huffman() {
    run(256, &responses(C5));
}

#[test]
fn c6_responses_with_huffman() {
    run(256, &responses(C6));
}

fn encode(e: &mut Encoder, list: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    e.begin(&mut out);
    for (n, v) in list {
        e.field(n.as_bytes(), v.as_bytes(), &mut out);
    }
    out
}

/// The RFC's request examples are what our encoder writes too.
#[test]
fn encoder_writes_c3_and_c4() {
    let mut e = Encoder::new();
    e.set_huffman(false);
    for (list, block) in [REQ1, REQ2, REQ3].into_iter().zip(C3) {
        assert_eq!(encode(&mut e, list), hex(block));
    }
    let mut e = Encoder::new();
    for (list, block) in [REQ1, REQ2, REQ3].into_iter().zip(C4) {
        assert_eq!(encode(&mut e, list), hex(block));
    }
}

/// What the encoder writes for a response, decoded, is the response; a
/// repeat is one byte per field.
#[test]
fn encoder_indexes_what_repeats() {
    let list = [
        ("server", "remora"),
        ("content-type", "application/json"),
        ("date", DATE1),
        ("content-length", "1234"),
        ("x-custom", "a"),
    ];
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let mut first = Vec::new();
    e.begin(&mut first);
    e.status(200, &mut first);
    e.status(201, &mut first);
    for (n, v) in list {
        e.field(n.as_bytes(), v.as_bytes(), &mut first);
    }
    let mut want = fields(&[(":status", "200"), (":status", "201")]);
    want.extend(fields(&list));
    assert_eq!(decode(&mut d, &first).unwrap(), want);

    let mut second = Vec::new();
    e.begin(&mut second);
    e.status(200, &mut second);
    e.status(201, &mut second);
    for (n, v) in list {
        e.field(n.as_bytes(), v.as_bytes(), &mut second);
    }
    assert_eq!(decode(&mut d, &second).unwrap(), want);
    // Everything indexed but content-length: without indexing, name index
    // 28 (0f 0d), "1234" Huffman-coded (83 + 3 bytes).
    assert_eq!(second.len(), 5 + 2 + 4 + 1, "{second:02x?}");
    assert_eq!(&second[5..7], &[0x0f, 0x0d]);
}

#[test]
fn sensitive_fields_are_never_indexed() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    for _ in 0..2 {
        let mut out = Vec::new();
        e.begin(&mut out);
        e.field_sensitive(b"authorization", b"Bearer abc", &mut out);
        e.field_sensitive(b"x-secret", b"s", &mut out);
        // 0001xxxx: never indexed; name index 23 = 15 + 8.
        assert_eq!(&out[..2], &[0x1f, 0x08]);
        assert_eq!(
            decode(&mut d, &out).unwrap(),
            fields(&[("authorization", "Bearer abc"), ("x-secret", "s")])
        );
        assert_eq!(table(&d), (vec![], 0));
    }
    // The decoder reports the mark, and only for those two.
    {
        let mut out = Vec::new();
        e.begin(&mut out);
        e.field_sensitive(b"authorization", b"Bearer abc", &mut out);
        e.field_sensitive(b"x-secret", b"s", &mut out);
        e.field(b"x-plain", b"v", &mut out);
        let mut marks = Vec::new();
        d.decode_marked(&out, |n, _, never| {
            marks.push((n.to_vec(), never));
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(
            marks,
            [
                (b"authorization".to_vec(), true),
                (b"x-secret".to_vec(), true),
                (b"x-plain".to_vec(), false)
            ]
        );
    }
}

#[test]
fn large_values_are_not_indexed() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let big = "x".repeat(1000);
    let small = "x".repeat(900);
    let out = encode(&mut e, &[("x-big", &big), ("x-small", &small)]);
    decode(&mut d, &out).unwrap();
    let (entries, _) = table(&d);
    assert_eq!(entries, fields(&[("x-small", &small)]));
}

#[test]
fn table_size_updates_are_signalled() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let list = [("server", "remora"), ("x-a", "1")];
    decode(&mut d, &encode(&mut e, &list)).unwrap();
    assert_eq!(table(&d).0.len(), 2);

    // Down to 0 and up to 8192 between two blocks: 0 (clearing the
    // table), then the encoder's own limit.
    e.set_max_table_size(0);
    e.set_max_table_size(8192);
    let out = encode(&mut e, &list);
    assert_eq!(&out[..4], &[0x20, 0x3f, 0xe1, 0x1f]);
    assert_eq!(decode(&mut d, &out).unwrap(), fields(&list));
    assert_eq!(table(&d).1, 44 + 36);

    // Down to 100: one update; the table keeps what fits.
    e.set_max_table_size(100);
    let out = encode(&mut e, &list);
    assert_eq!(&out[..2], &[0x3f, 0x45]);
    assert_eq!(decode(&mut d, &out).unwrap(), fields(&list));
    // Up again to where it is: no update.
    e.set_max_table_size(100);
    let out = encode(&mut e, &[]);
    assert!(out.is_empty());
}

#[test]
fn dynamic_names_are_reused_and_copied_before_eviction() {
    // A table of 64: one entry of "x-name: aaaa" (42) fits; a second with
    // the same name evicts the first, whose name it references (§4.4).
    let mut d = Decoder::new(64);
    let block = hex("40 06 782d6e616d65 04 61616161  7e 04 62626262");
    assert_eq!(
        decode(&mut d, &block).unwrap(),
        fields(&[("x-name", "aaaa"), ("x-name", "bbbb")])
    );
    assert_eq!(table(&d), (fields(&[("x-name", "bbbb")]), 42));
}

fn err(d: &mut Decoder, block: &[u8]) -> DecodeError<()> {
    decode(d, block).unwrap_err()
}

#[test]
fn each_malformation_has_its_error() {
    use DecodeError::*;
    let cases: &[(&str, DecodeError<()>)] = &[
        // 6 continuation bytes, and a 5-byte one over 32 bits.
        ("ff ff ff ff ff ff 01", IntegerOverflow),
        ("ff 80 80 80 80 7f", IntegerOverflow),
        // Indexed field's integer cut; a name length cut; a value short.
        ("ff", Truncated),
        ("40", Truncated),
        ("40 01 61", Truncated),
        ("40 01 61 05 61", Truncated),
        ("0f", Truncated),
        // Index 0; 62 with an empty table; a literal's name index 70.
        ("80", BadIndex),
        ("be", BadIndex),
        ("7f 07 00", BadIndex),
        ("0f 37 00", BadIndex),
        // Huffman names: EOS; 8 bits of padding; padding "000".
        ("00 84 ffffffff 00", HuffmanEos),
        ("00 81 ff 00", HuffmanPaddingTooLong),
        ("00 81 18 00", HuffmanPaddingNotOnes),
        // And in a value.
        ("01 82 1f ff", HuffmanPaddingTooLong),
        // 4097 > 4096; an update after a field.
        ("3f e2 1f", TableSizeUpdateTooLarge),
        ("82 20", TableSizeUpdateNotFirst),
    ];
    for (block, want) in cases {
        let mut d = Decoder::new(4096);
        assert_eq!(err(&mut d, &hex(block)), *want, "{block}");
        assert!(want.is_compression_error());
        // Never again, even for a valid block.
        assert_eq!(err(&mut d, &[0x82]), Failed, "{block}");
    }
    // The limits themselves are fine: 5 continuation bytes up to u32::MAX,
    // and an update to exactly the maximum (then down, then up, first).
    let mut d = Decoder::new(4096);
    assert_eq!(err(&mut d, &hex("ff 80 ff ff ff 0f")), BadIndex);
    let mut d = Decoder::new(4096);
    decode(&mut d, &hex("3f e1 1f 20 3f e1 1f 82")).unwrap();
}

#[test]
fn a_refusing_sink_keeps_the_table_in_step() {
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    let list = [("x-a", "1"), ("x-b", "2"), ("x-c", "3")];
    let block = encode(&mut e, &list);
    let mut seen = 0;
    let r = d.decode(&block, |_, _| {
        seen += 1;
        Err("too large")
    });
    assert_eq!(r, Err(DecodeError::Sink("too large")));
    assert!(!r.unwrap_err().is_compression_error());
    assert_eq!(seen, 1);
    // All three were inserted; the next block, all indexed, decodes.
    assert_eq!(table(&d).0.len(), 3);
    assert_eq!(
        decode(&mut d, &encode(&mut e, &list)).unwrap(),
        fields(&list)
    );
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Mutated valid blocks and random bytes, in sequences on one decoder (so
/// table state carries over): no panic, and after a compression error the
/// decoder refuses to run.
#[test]
fn mutations_never_panic() {
    let mut seeds: Vec<Vec<u8>> = C3
        .iter()
        .chain(&C4)
        .chain(&C5)
        .chain(&C6)
        .map(|b| hex(b))
        .collect();
    let mut e = Encoder::new();
    for list in [REQ1, REQ2, REQ3] {
        seeds.push(encode(&mut e, list));
    }
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut d = Decoder::new(256);
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..100_000 {
        let mut block = if rng.below(8) == 0 {
            (0..rng.below(40)).map(|_| rng.next() as u8).collect()
        } else {
            seeds[rng.below(seeds.len())].clone()
        };
        for _ in 0..=rng.below(4) {
            if block.is_empty() {
                break;
            }
            let at = rng.below(block.len());
            match rng.below(4) {
                0 => block[at] ^= 1 << rng.below(8),
                1 => block[at] = rng.next() as u8,
                2 => block.truncate(at),
                _ => block.insert(at, rng.next() as u8),
            }
        }
        let mut list_size = 0usize;
        let r = d.decode(&block, |n, v| {
            list_size += n.len() + v.len() + 32;
            if list_size > 16 << 10 {
                Err(())
            } else {
                Ok(())
            }
        });
        match r {
            Err(e) if e.is_compression_error() => {
                failed += 1;
                assert_eq!(
                    d.decode(&[0x82], |_, _| Ok::<(), ()>(())),
                    Err(DecodeError::Failed)
                );
                d = Decoder::new(256);
            }
            _ => ok += 1,
        }
    }
    // Both paths exercised.
    assert!(ok > 10_000 && failed > 10_000, "ok {ok}, failed {failed}");
}

/// Values that share length, first and last 16 bytes share a hash slot:
/// the index is a hint checked against the entry, so alternating them
/// costs literals, never a wrong field.
#[test]
fn hash_collisions_cost_only_compression() {
    let a = format!("{}{}{}", "p".repeat(16), "a".repeat(10), "s".repeat(16));
    let b = format!("{}{}{}", "p".repeat(16), "b".repeat(10), "s".repeat(16));
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    for i in 0..6 {
        let v = if i % 2 == 0 { &a } else { &b };
        let out = encode(&mut e, &[("x-v", v)]);
        assert_eq!(decode(&mut d, &out).unwrap(), fields(&[("x-v", v)]));
    }
}

/// Forty fields that all fit in the table repeat as one byte each: the
/// two-slot hash index keeps every one of them findable.
#[test]
fn a_repeated_list_is_all_indexed() {
    let owned: Vec<(String, String)> = (0..40)
        .map(|i| (format!("x-field-{i}"), format!("value number {i}")))
        .collect();
    let list: Vec<(&str, &str)> = owned.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    let mut e = Encoder::new();
    let mut d = Decoder::new(4096);
    decode(&mut d, &encode(&mut e, &list)).unwrap();
    let again = encode(&mut e, &list);
    assert_eq!(again.len(), 40, "{again:02x?}");
    assert_eq!(decode(&mut d, &again).unwrap(), fields(&list));
}

/// A literal with a new name, both strings Huffman-coded; `first`: 0x40
/// with incremental indexing, 0x00 without, 0x10 never indexed.
fn huffman_literal(first: u8, name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    out.push(first);
    for s in [name, value] {
        encoder::write_integer(huffman::encoded_len(s), 7, 0x80, out);
        huffman::encode(s, out);
    }
}

/// nginx's way (every literal Huffman-coded, the table never referred
/// to), message after message: the decoder's memo of such strings gives
/// what decoding gives,
/// with repeating strings, a value that changes every time, more strings
/// than the memo holds, strings too long for it, and never-indexed ones.
#[test]
fn repeated_literals_without_indexing_decode_the_same() {
    let mut d = Decoder::new(4096);
    for round in 0..200u32 {
        let mut block = Vec::new();
        let mut want: Fields = Vec::new();
        let date = format!(
            "Wed, 02 Dec 2026 17:{:02}:{:02} GMT",
            round / 60,
            round % 60
        );
        let long = "x".repeat(40 + (round as usize % 3) * 20);
        let mut list: Vec<(String, String)> = vec![
            ("server".into(), "nginx/1.22.1".into()),
            ("date".into(), date),
            ("content-type".into(), "application/grpc".into()),
            ("x-long".into(), long),
        ];
        // More distinct strings than the memo has slots, some every round,
        // some once.
        for i in 0..12 {
            list.push((format!("x-fixed-{i}"), format!("value {i}")));
        }
        list.push(("x-once".into(), format!("unique {round}")));
        // nginx's first four go with incremental indexing, the rest without.
        for (i, (n, v)) in list.iter().enumerate() {
            let first = if i < 4 { 0x40 } else { 0x00 };
            huffman_literal(first, n.as_bytes(), v.as_bytes(), &mut block);
            want.push((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        // A never-indexed literal: not remembered, decoded the same.
        huffman_literal(0x10, b"authorization", b"Bearer abc", &mut block);
        want.push((b"authorization".to_vec(), b"Bearer abc".to_vec()));
        assert_eq!(decode(&mut d, &block).unwrap(), want, "round {round}");
        // A fresh decoder agrees: the block holds only literals.
        assert_eq!(decode(&mut Decoder::new(4096), &block).unwrap(), want);
        // The indexed four are the table's newest, as decoded.
        let newest: Fields = table(&d).0.into_iter().take(4).collect();
        let mut indexed = want[..4].to_vec();
        indexed.reverse();
        assert_eq!(newest, indexed, "round {round}");
    }
}
