//! The upstream layer's per-request work on one core, end to end: a
//! circuit-breaker check (acquire + release), and `Upstreams::pick` (member
//! set and health generation checks, panic and locality decisions, the
//! balancer, the pick counter) for 10, 100 and 1,000 endpoints, with and
//! without outlier detection (which adds a clock read and a per-candidate
//! ejection check). The balancer alone is `benches/balance.rs`.
//!
//! Run: `flock /tmp/bench.lock cargo bench --bench upstream`.

use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use remora::config::Config;
use remora::upstream::breaker::{BreakerConfig, Breakers, Resource};
use remora::upstream::Upstreams;

fn cluster_config(n: usize, policy: &str, extra: &str) -> Config {
    let eps: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "\"10.{}.{}.{}:8080\"",
                i / 62500,
                (i / 250) % 250,
                i % 250 + 1
            )
        })
        .collect();
    Config::from_toml(
        &format!(
            "[capture]\nenabled = false\n[[cluster]]\nname = \"c\"\nendpoints = [{}]\nlb_policy = \"{policy}\"\n{extra}",
            eps.join(", ")
        ),
        None,
    )
    .expect("bench config")
}

fn breaker(c: &mut Criterion) {
    let b = Rc::new(Breakers::default());
    let limits = BreakerConfig::default();
    c.bench_function("breaker/acquire+release", |bench| {
        bench.iter(|| black_box(b.try_acquire(Resource::Requests, &limits)))
    });
}

fn pick(c: &mut Criterion) {
    let mut g = c.benchmark_group("upstreams_pick");
    for n in [10usize, 100, 1000] {
        for (label, policy, extra) in [
            ("round_robin", "round_robin", ""),
            ("least_request", "least_request", ""),
            (
                "least_request+outlier",
                "least_request",
                "outlier_detection = { consecutive_5xx_errors = 5 }\n",
            ),
            (
                "ring_hash",
                "ring_hash",
                "hash_policy = [{ header = \"x-user\" }]\n",
            ),
            (
                "maglev",
                "maglev",
                "hash_policy = [{ header = \"x-user\" }]\n",
            ),
        ] {
            let config = cluster_config(n, policy, extra);
            let cluster = &config.clusters[0];
            let u = Upstreams::default();
            let mut x = 0x9e37_79b9_7f4a_7c15u64;
            g.bench_with_input(BenchmarkId::new(label, n), &n, |b, _| {
                b.iter(|| {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    let hash = matches!(policy, "ring_hash" | "maglev").then_some(x);
                    black_box(u.pick(cluster, hash, &[], x).map(|(_, p)| p.addr))
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, breaker, pick);
criterion_main!(benches);
