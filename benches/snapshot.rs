//! Config snapshot access on the hot path.
//!
//! Every new connection calls `ConfigHandle::current()` (an `ArcSwap::load_full`:
//! an atomic load plus a reference-count increment on a cache line all cores
//! share). This measures that cost with no contention, next to arc-swap's
//! cheaper `load()` guard and a plain `Arc::clone`, and the cost of `publish()`
//! (which clones the config and swaps it in with `rcu`). Single-threaded: the
//! numbers are the uncontended floor, not what many cores see at once.
//!
//! Run: `cargo bench --bench snapshot`.

use std::hint::black_box;
use std::sync::Arc;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use remora::config::{Config, ConfigHandle};

fn snapshot(c: &mut Criterion) {
    let handle = ConfigHandle::new(Config::builtin());
    let mut g = c.benchmark_group("snapshot");

    g.bench_function("ConfigHandle::current", |b| {
        b.iter(|| black_box(handle.current()).version)
    });

    g.bench_function("ConfigHandle::publish", |b| {
        // The caller hands over an owned Config; building it is not publish's cost.
        let next = Config::builtin();
        b.iter_batched(
            || next.clone(),
            |config| handle.publish(config),
            BatchSize::SmallInput,
        )
    });

    // The primitives underneath, for scale.
    let swap = ArcSwap::from_pointee(Config::builtin());
    g.bench_function("arc_swap::load (guard)", |b| {
        b.iter(|| {
            let guard = swap.load();
            black_box(&*guard);
        })
    });
    g.bench_function("arc_swap::load_full", |b| {
        b.iter(|| black_box(swap.load_full()))
    });
    let arc = Arc::new(Config::builtin());
    g.bench_function("Arc::clone", |b| b.iter(|| black_box(Arc::clone(&arc))));
    g.finish();
}

criterion_group!(benches, snapshot);
criterion_main!(benches);
