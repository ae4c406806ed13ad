//! Build script: routes glommio's ring set-up through Remora's shim.
//!
//! glommio 0.9 creates its io_uring rings without `IORING_SETUP_COOP_TASKRUN`, so
//! every completion interrupts the executor thread with an IPI (see
//! `src/net/uring.rs` and ../shared/FACTS.md: 36k vs 85k req/s on one core).
//! glommio calls liburing's C function `io_uring_queue_init_params`; GNU ld's
//! `--wrap` makes that call land in `__wrap_io_uring_queue_init_params`
//! (defined in `src/net/uring.rs`), which adds the flag and calls the real one.
//! The main ring also defers its task work (DEFER_TASKRUN), which needs
//! glommio's completion peek (`__io_uring_get_cqe`) wrapped the same way,
//! and the shim forgets a ring's mapping when glommio tears the ring down
//! (`io_uring_queue_exit`). A saturated core's loop waits for company after
//! glommio's submission (`io_uring_submit`; `src/net/batch.rs`). The shim
//! keeps glommio's preemption timers armed across passes of its loop, which
//! needs its completion reads (`rust_io_uring_peek_cqe`, `_cqe_seen`,
//! `_cq_ready`, glommio's own C copies of liburing's inline functions)
//! wrapped too (`src/net/uring/keep.rs`).
//! On x86-64, libc's `syscall` is wrapped as well: glommio's barrier before
//! each sleep (`membarrier`) is answered with a fence
//! (`src/net/uring/barrier.rs` says why that is sound there).
//! `tests/uring_shim.rs` fails if this link step is lost.

fn main() {
    println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_queue_init_params");
    println!("cargo:rustc-link-arg=-Wl,--wrap=__io_uring_get_cqe");
    println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_queue_exit");
    println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_submit");
    println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_submit_and_wait");
    println!("cargo:rustc-link-arg=-Wl,--wrap=rust_io_uring_peek_cqe");
    println!("cargo:rustc-link-arg=-Wl,--wrap=rust_io_uring_cqe_seen");
    println!("cargo:rustc-link-arg=-Wl,--wrap=rust_io_uring_cq_ready");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") {
        // Every binary links the wrapper's object (not only those that use
        // the library: std calls `syscall` in all of them).
        let objects = cc::Build::new()
            .file("src/net/uring/barrier.c")
            .opt_level(2)
            .cargo_metadata(false)
            .compile_intermediates();
        for o in objects {
            println!("cargo:rustc-link-arg={}", o.display());
        }
        println!("cargo:rustc-link-arg=-Wl,--wrap=syscall");
        println!("cargo:rerun-if-changed=src/net/uring/barrier.c");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
