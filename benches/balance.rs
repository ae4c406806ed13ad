//! Load-balancing picks and table builds (`upstream::balance`).
//!
//! A pick runs once per request (and per retry) on the core's hot path; the
//! targets are under 50 ns for round robin, least request and random, under
//! 100 ns for ring hash and Maglev, at 10, 100 and 1,000 endpoints. Each pick
//! is measured with every endpoint eligible and with every tenth one not
//! (`/some_out`), which exercises the skip paths. The RNG step that feeds
//! `rand` and `hash` (a xorshift, as each core has) is inside the loop, so
//! the numbers include ~1 ns for it. Table builds run on the control thread
//! once per endpoint-set change; they are measured at 1,000 endpoints.
//!
//! Hot caches: a real pick may miss on the table and the heap; these are the
//! floor. Run: `cargo bench --bench balance`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use remora::upstream::balance::{LbPolicy, LbTable, PickRequest, Picker};

const SIZES: [usize; 3] = [10, 100, 1000];

fn addrs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.{}.{}.{}:8080", i / 65536, i / 256 % 256, i % 256))
        .collect()
}

/// Equal weights, or 1..=10 repeating.
fn weights(n: usize, weighted: bool) -> Vec<u32> {
    (0..n)
        .map(|i| if weighted { (i % 10) as u32 + 1 } else { 1 })
        .collect()
}

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

fn picks(c: &mut Criterion) {
    let cases: [(&str, LbPolicy, bool); 8] = [
        ("round_robin", LbPolicy::RoundRobin, false),
        ("round_robin_weighted", LbPolicy::RoundRobin, true),
        ("least_request", LbPolicy::LEAST_REQUEST, false),
        ("least_request_weighted", LbPolicy::LEAST_REQUEST, true),
        ("random", LbPolicy::Random, false),
        ("random_weighted", LbPolicy::Random, true),
        ("ring_hash", LbPolicy::RING_HASH, false),
        ("maglev", LbPolicy::MAGLEV, false),
    ];
    let mut g = c.benchmark_group("pick");
    for (name, policy, weighted) in cases {
        for n in SIZES {
            let addrs = addrs(n);
            let keys: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
            let table = LbTable::build(&policy, &weights(n, weighted), &keys);
            // Per-core active requests: a spread of small counts.
            let active: Vec<u32> = (0..n as u32).map(|i| i * 7 % 13).collect();
            for some_out in [false, true] {
                let id = BenchmarkId::new(
                    format!("{name}{}", if some_out { "/some_out" } else { "" }),
                    n,
                );
                let mut picker = Picker::new(12345);
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                g.bench_function(id, |b| {
                    b.iter(|| {
                        let r = xorshift(&mut x);
                        let req = PickRequest {
                            hash: Some(r.rotate_left(32)),
                            eligible: |i: usize| !some_out || i % 10 != 3,
                            active: &active,
                            rand: r,
                        };
                        // One usize out, not the Option's two words: criterion's
                        // black_box of a 16-byte value costs a store-forwarding
                        // stall (a quarter of a 30 ns pick in perf annotate).
                        black_box(picker.pick(black_box(&table), &req).unwrap_or(usize::MAX))
                    })
                });
            }
        }
    }
    g.finish();
}

fn builds(c: &mut Criterion) {
    let n = 1000;
    let addrs = addrs(n);
    let keys: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
    let mut g = c.benchmark_group("build_1000");
    g.sample_size(10);
    let cases: [(&str, LbPolicy, bool); 5] = [
        ("ring_hash", LbPolicy::RING_HASH, false),
        (
            "ring_hash_min_ring_100k",
            LbPolicy::RingHash {
                minimum_ring_size: 100_000,
                maximum_ring_size: 8 << 20,
            },
            false,
        ),
        ("maglev", LbPolicy::MAGLEV, false),
        ("maglev_weighted", LbPolicy::MAGLEV, true),
        ("round_robin_weighted", LbPolicy::RoundRobin, true),
    ];
    for (name, policy, weighted) in cases {
        let w = weights(n, weighted);
        g.bench_function(name, |b| {
            b.iter(|| black_box(LbTable::build(&policy, black_box(&w), &keys)))
        });
    }
    g.finish();
}

criterion_group!(benches, picks, builds);
criterion_main!(benches);
