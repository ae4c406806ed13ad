//! HPACK (`h2::hpack`): decode and encode of three header sets, each as the
//! first block on a connection (empty dynamic table; a new decoder or
//! encoder per iteration) and as a repeat (the table warm from the same set):
//! an h2load-like request and its response, a gRPC unary call (request,
//! response head, trailers), and a browser-like request of 24 fields. Also
//! the encoder with Huffman off and the Huffman length pass alone, to weigh
//! what choosing Huffman costs against the bytes it saves (printed once).
//!
//! `cargo bench --bench hpack` (add `-- --quick` for a fast pass).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};

use remora::h2::hpack::bench_support::{huffman_decode, huffman_encode, huffman_len};
use remora::h2::hpack::{Decoder, Encoder};

type Set = &'static [(&'static str, &'static str)];

const H2LOAD_REQUEST: Set = &[
    (":method", "GET"),
    (":path", "/"),
    (":scheme", "http"),
    (":authority", "127.0.0.1:15006"),
    ("user-agent", "h2load nghttp2/1.59.0"),
    ("accept", "*/*"),
];

const H2LOAD_RESPONSE: Set = &[
    (":status", "200"),
    ("server", "remora"),
    ("date", "Mon, 30 Nov 2026 16:45:28 GMT"),
    ("content-type", "text/plain"),
    ("content-length", "13"),
];

const GRPC_REQUEST: Set = &[
    (":method", "POST"),
    (":scheme", "http"),
    (":path", "/helloworld.Greeter/SayHello"),
    (":authority", "greeter.default.svc.cluster.local:50051"),
    ("te", "trailers"),
    ("content-type", "application/grpc"),
    (
        "user-agent",
        "grpc-python/1.60.0 grpc-c/37.0.0 (linux; chttp2)",
    ),
    ("grpc-accept-encoding", "identity,deflate,gzip"),
    ("accept-encoding", "identity,gzip"),
    ("grpc-timeout", "999952u"),
];

const GRPC_RESPONSE: Set = &[
    (":status", "200"),
    ("content-type", "application/grpc"),
    ("grpc-accept-encoding", "identity,deflate,gzip"),
    ("grpc-status", "0"),
    ("grpc-message", ""),
];

const BROWSER: Set = &[
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "www.example.com"),
    (":path", "/static/app/main.3f9a1c.js?v=20240101"),
    (
        "sec-ch-ua",
        "\"Chromium\";v=\"120\", \"Google Chrome\";v=\"120\", \"Not?A_Brand\";v=\"99\"",
    ),
    ("sec-ch-ua-mobile", "?0"),
    ("sec-ch-ua-platform", "\"Linux\""),
    ("upgrade-insecure-requests", "1"),
    (
        "user-agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) \
         Chrome/120.0.0.0 Safari/537.36",
    ),
    (
        "accept",
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,\
         image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
    ),
    ("sec-fetch-site", "same-origin"),
    ("sec-fetch-mode", "navigate"),
    ("sec-fetch-user", "?1"),
    ("sec-fetch-dest", "document"),
    (
        "referer",
        "https://www.example.com/products/widgets?page=2&sort=price",
    ),
    ("accept-encoding", "gzip, deflate, br"),
    ("accept-language", "en-US,en;q=0.9,fr;q=0.8,de;q=0.7"),
    (
        "cookie",
        "session=8c1f2e3d4a5b6c7d8e9f0a1b2c3d4e5f; theme=dark; \
         _ga=GA1.2.123456789.1700000000; _gid=GA1.2.987654321.1700000000",
    ),
    ("cookie", "consent=yes; region=eu-west-1; ab=variant-b"),
    ("cache-control", "max-age=0"),
    ("if-none-match", "W/\"5e15153d-120f\""),
    ("if-modified-since", "Mon, 30 Nov 2026 10:00:00 GMT"),
    ("priority", "u=0, i"),
    ("dnt", "1"),
];

fn encode(e: &mut Encoder, set: Set, out: &mut Vec<u8>) {
    out.clear();
    e.begin(out);
    for (n, v) in set {
        e.field(n.as_bytes(), v.as_bytes(), out);
    }
}

/// Decodes into a sum, as a codec that only looks at the fields would.
fn decode(d: &mut Decoder, block: &[u8]) -> usize {
    let mut sum = 0;
    d.decode(block, |n, v| {
        sum += n.len() + v.len();
        Ok::<(), ()>(())
    })
    .unwrap();
    sum
}

/// The first and the repeat block of `set` as our encoder writes them.
fn blocks(set: Set, huffman: bool) -> (Vec<u8>, Vec<u8>) {
    let mut e = Encoder::new();
    e.set_huffman(huffman);
    let (mut first, mut repeat) = (Vec::new(), Vec::new());
    encode(&mut e, set, &mut first);
    encode(&mut e, set, &mut repeat);
    (first, repeat)
}

const SETS: [(&str, Set); 5] = [
    ("h2load_request", H2LOAD_REQUEST),
    ("h2load_response", H2LOAD_RESPONSE),
    ("grpc_request", GRPC_REQUEST),
    ("grpc_response", GRPC_RESPONSE),
    ("browser", BROWSER),
];

fn sizes() {
    for (name, set) in SETS {
        let plain: usize = set.iter().map(|(n, v)| n.len() + v.len()).sum();
        let (h1, h2) = blocks(set, true);
        let (r1, r2) = blocks(set, false);
        eprintln!(
            "{name}: {} fields, {plain} bytes of names and values; block first/repeat: \
             Huffman {}/{}, raw {}/{}",
            set.len(),
            h1.len(),
            h2.len(),
            r1.len(),
            r2.len()
        );
    }
}

fn decoding(c: &mut Criterion) {
    sizes();
    let mut g = c.benchmark_group("hpack_decode");
    for (name, set) in SETS {
        let (first, repeat) = blocks(set, true);
        g.bench_function(format!("{name}/first"), |b| {
            b.iter_batched(
                || Decoder::new(4096),
                |mut d| black_box(decode(&mut d, black_box(&first))),
                BatchSize::SmallInput,
            )
        });
        let mut d = Decoder::new(4096);
        decode(&mut d, &first);
        g.bench_function(format!("{name}/repeat"), |b| {
            b.iter(|| black_box(decode(&mut d, black_box(&repeat))))
        });
    }
    g.finish();
}

fn encoding(c: &mut Criterion) {
    let mut g = c.benchmark_group("hpack_encode");
    let mut out = Vec::with_capacity(4096);
    for (name, set) in SETS {
        for huffman in [true, false] {
            let tag = if huffman { "" } else { "_raw" };
            g.bench_function(format!("{name}/first{tag}"), |b| {
                b.iter_batched(
                    || {
                        let mut e = Encoder::new();
                        e.set_huffman(huffman);
                        e
                    },
                    |mut e| {
                        encode(&mut e, black_box(set), &mut out);
                        black_box(out.len())
                    },
                    BatchSize::SmallInput,
                )
            });
        }
        let mut e = Encoder::new();
        encode(&mut e, set, &mut out);
        g.bench_function(format!("{name}/repeat"), |b| {
            b.iter(|| {
                encode(&mut e, black_box(set), &mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();

    // What deciding on Huffman costs by itself: the length pass over every
    // name and value of the browser set.
    c.bench_function("hpack_huffman_len/browser", |b| {
        b.iter(|| {
            BROWSER
                .iter()
                .map(|(n, v)| {
                    huffman_len(black_box(n.as_bytes())) + huffman_len(black_box(v.as_bytes()))
                })
                .sum::<usize>()
        })
    });
}

/// Huffman decoding by itself: every name and value of the browser set,
/// Huffman-coded, decoded into one reused buffer (what a peer that codes
/// every literal, as nginx does, costs per head).
fn huffman_decoding(c: &mut Criterion) {
    let coded: Vec<Vec<u8>> = BROWSER
        .iter()
        .flat_map(|(n, v)| [n.as_bytes(), v.as_bytes()])
        .map(|s| {
            let mut out = Vec::with_capacity(huffman_len(s));
            huffman_encode(s, &mut out);
            out
        })
        .collect();
    let mut dst = Vec::with_capacity(4096);
    c.bench_function("hpack_huffman_decode/browser", |b| {
        b.iter(|| {
            for s in &coded {
                dst.clear();
                huffman_decode(black_box(s), &mut dst).expect("valid");
            }
            black_box(dst.len())
        })
    });
}

criterion_group!(benches, decoding, encoding, huffman_decoding);
criterion_main!(benches);
