//! `h2::hpack` against a real peer: the Python `hpack` package (the one
//! under python-hyper's h2; tests/run installs it) encodes and decodes in one
//! process (tests/h2/hpack_peer.py) over stdin/stdout. Deterministic
//! pseudo-random header lists (names and values of many lengths and of every
//! byte value, fields that repeat so that the dynamic tables fill and evict,
//! values larger than a table, table size changes both ways) go each way
//! and must come back the same, field by field and in order.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use remora::h2::hpack::{Decoder, Encoder};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/hpack_peer.py");

/// name, value, never indexed.
type Field = (Vec<u8>, Vec<u8>, bool);

struct Peer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Peer {
    fn start() -> Peer {
        let mut child = Command::new("python3")
            .arg(PEER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Peer {
            child,
            stdin,
            stdout,
        }
    }

    fn ask(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let mut answer = String::new();
        self.stdout.read_line(&mut answer).unwrap();
        assert!(
            !answer.is_empty(),
            "hpack_peer.py ended (is the Python hpack package installed? pip install hpack)"
        );
        let answer = answer.trim_end().to_string();
        assert!(
            !answer.starts_with("error"),
            "peer: {answer} (for {line:.200})"
        );
        answer
    }

    fn encode(&mut self, list: &[Field], huffman: bool) -> Vec<u8> {
        let h = if huffman { 1 } else { 0 };
        unhex(&self.ask(&format!("E {h} {}", fields_line(list))))
    }

    fn decode(&mut self, block: &[u8]) -> Vec<Field> {
        parse_fields(&self.ask(&format!("D {}", hex(block))))
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn fields_line(list: &[Field]) -> String {
    let f: Vec<String> = list
        .iter()
        .map(|(n, v, s)| format!("{}:{}:{}", hex(n), hex(v), *s as u8))
        .collect();
    f.join(",")
}

fn parse_fields(line: &str) -> Vec<Field> {
    if line.is_empty() {
        return Vec::new();
    }
    line.split(',')
        .map(|f| {
            let mut p = f.split(':');
            let n = unhex(p.next().unwrap());
            let v = unhex(p.next().unwrap());
            (n, v, p.next() == Some("1"))
        })
        .collect()
}

/// xorshift64*.
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
    fn bytes(&mut self, len: usize, alphabet: &dyn Fn(u8) -> u8) -> Vec<u8> {
        (0..len).map(|_| alphabet(self.next() as u8)).collect()
    }
}

/// A length: mostly short, sometimes up to a few hundred, rarely larger
/// than a 4096-byte table.
fn length(rng: &mut Rng) -> usize {
    match rng.below(20) {
        0 => 1000 + rng.below(4000),
        1..=4 => rng.below(300),
        _ => rng.below(24),
    }
}

/// Field lists as a proxy sees them: common fields that repeat (so the
/// tables index, hit and evict), and random ones. `lowercase` keeps names
/// free of A-Z (what our encoder is given); values take every byte value.
fn lists(seed: u64, count: usize, lowercase: bool) -> Vec<Vec<Field>> {
    const COMMON: &[(&str, &str)] = &[
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/api/v1/items?id=42"),
        (":scheme", "https"),
        (":authority", "svc.default.svc.cluster.local:8080"),
        (":status", "200"),
        (":status", "503"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        (
            "user-agent",
            "grpc-python/1.60.0 grpc-c/37.0.0 (linux; chttp2)",
        ),
        ("server", "remora"),
        ("date", "Mon, 30 Nov 2026 16:45:28 GMT"),
        ("accept-encoding", "gzip, deflate"),
        ("cookie", "session=0123456789abcdef"),
        ("x-request-id", "6f1c0a2e-8d51-4c1a-9d7e-2b3f4a5c6d7e"),
    ];
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(count);
    // A few random fields that recur, as custom headers do.
    let recurring: Vec<Field> = (0..8)
        .map(|_| {
            let nlen = 1 + rng.below(20);
            let n = rng.bytes(nlen, &|b| b'a' + b % 26);
            let vlen = length(&mut rng);
            let v = rng.bytes(vlen, &|b| b);
            (n, v, false)
        })
        .collect();
    for _ in 0..count {
        let mut list = Vec::new();
        for _ in 0..rng.below(20) {
            let f = match rng.below(10) {
                0..=4 => {
                    let (n, v) = COMMON[rng.below(COMMON.len())];
                    (n.as_bytes().to_vec(), v.as_bytes().to_vec(), false)
                }
                5 | 6 => recurring[rng.below(recurring.len())].clone(),
                _ => {
                    let nlen = length(&mut rng).min(64);
                    let n = if lowercase {
                        rng.bytes(nlen, &|b| if b.is_ascii_uppercase() { b | 0x20 } else { b })
                    } else {
                        rng.bytes(nlen, &|b| b)
                    };
                    let vlen = length(&mut rng);
                    let v = rng.bytes(vlen, &|b| b);
                    (n, v, false)
                }
            };
            let sensitive = rng.below(10) == 0;
            list.push((f.0, f.1, sensitive));
        }
        out.push(list);
    }
    out
}

/// Python encodes, we decode: the same lists, with table size changes
/// (Python's encoder signals them as the RFC says).
#[test]
fn python_encodes_we_decode() {
    let mut peer = Peer::start();
    let mut d = Decoder::new(4096);
    let mut rng = Rng(7);
    let mut table_sizes_seen = 0;
    for (i, list) in lists(1, 1500, false).into_iter().enumerate() {
        if rng.below(25) == 0 {
            let size = [0, 64, 256, 1024, 4096][rng.below(5)];
            peer.ask(&format!("T {size}"));
            table_sizes_seen += 1;
        }
        let block = peer.encode(&list, rng.below(2) == 0);
        let mut got = Vec::new();
        d.decode(&block, |n, v| {
            got.push((n.to_vec(), v.to_vec()));
            Ok::<(), ()>(())
        })
        .unwrap_or_else(|e| panic!("block {i}: {e:?}: {}", hex(&block)));
        let want: Vec<_> = list.into_iter().map(|(n, v, _)| (n, v)).collect();
        assert_eq!(got, want, "block {i}");
    }
    assert!(table_sizes_seen > 20);
}

/// We encode, Python decodes: the same lists, never-indexed fields arriving
/// as such, through changes of the peer's SETTINGS_HEADER_TABLE_SIZE (some
/// down and up again between two blocks).
#[test]
fn we_encode_python_decodes() {
    let mut peer = Peer::start();
    let mut e = Encoder::new();
    let mut rng = Rng(11);
    let mut bytes = (0usize, 0usize);
    for (i, list) in lists(2, 1500, true).into_iter().enumerate() {
        if rng.below(25) == 0 {
            let sizes = [0, 100, 256, 4096, 8192, 65536];
            let mut last = 0;
            for _ in 0..=rng.below(2) {
                last = sizes[rng.below(sizes.len())];
                e.set_max_table_size(last);
            }
            // The decoder accepts what we advertised last; updates to
            // smaller sizes before it are fine.
            peer.ask(&format!("M {last}"));
        }
        let mut block = Vec::new();
        e.begin(&mut block);
        for (n, v, sensitive) in &list {
            if *sensitive {
                e.field_sensitive(n, v, &mut block);
            } else {
                e.field(n, v, &mut block);
            }
        }
        let got = peer.decode(&block);
        assert_eq!(got, list, "block {i}: {}", hex(&block));
        bytes.0 += block.len();
        bytes.1 += list
            .iter()
            .map(|(n, v, _)| n.len() + v.len())
            .sum::<usize>();
    }
    // Compression happened (the lists are mostly random bytes, which
    // Huffman makes longer, so the gain is the table's).
    assert!(bytes.0 < bytes.1, "{bytes:?}");
}
