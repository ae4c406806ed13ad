//! io_uring set-up shim: turns on `IORING_SETUP_COOP_TASKRUN` for glommio's rings.
//!
//! Why: without the flag the kernel delivers each completion's task work with an
//! inter-processor interrupt to the executor thread. In a VM that interrupt is a
//! VM exit; on this machine kind it cut a one-core L4 forwarder from ~85k to ~36k
//! req/s (../shared/FACTS.md). With COOP_TASKRUN the work runs when the thread next
//! enters the kernel, which a thread-per-core executor does on every loop anyway.
//!
//! How: build.rs links with `--wrap=io_uring_queue_init_params`, so glommio's
//! call resolves to [`__wrap_io_uring_queue_init_params`] below, which adds the
//! flag and calls the real liburing function. Rings created with IOPOLL (glommio's
//! NVMe poll ring) are left alone. Kernels older than 5.19 reject the flag with
//! EINVAL; we then retry without it, so Remora still runs on 5.8+.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `IORING_SETUP_IOPOLL` (linux/io_uring.h).
const IORING_SETUP_IOPOLL: u32 = 1 << 0;
/// `IORING_SETUP_SQPOLL`.
const IORING_SETUP_SQPOLL: u32 = 1 << 1;
/// `IORING_SETUP_COOP_TASKRUN` (5.19+).
pub const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;

/// The leading part of liburing's `struct io_uring_params`; only `flags` is
/// touched, through a pointer the caller owns, so the rest need not be spelled out.
#[repr(C)]
pub struct IoUringParamsHead {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
}

static RINGS_WITH_COOP: AtomicUsize = AtomicUsize::new(0);
static RINGS_WITHOUT_COOP: AtomicUsize = AtomicUsize::new(0);

extern "C" {
    fn __real_io_uring_queue_init_params(
        entries: u32,
        ring: *mut libc::c_void,
        params: *mut IoUringParamsHead,
    ) -> libc::c_int;
}

/// Called instead of liburing's `io_uring_queue_init_params` (see module doc).
///
/// # Safety
/// Same contract as the liburing function: `ring` and `params` are valid pointers.
#[no_mangle]
pub unsafe extern "C" fn __wrap_io_uring_queue_init_params(
    entries: u32,
    ring: *mut libc::c_void,
    params: *mut IoUringParamsHead,
) -> libc::c_int {
    let original = (*params).flags;
    if original & (IORING_SETUP_IOPOLL | IORING_SETUP_SQPOLL) == 0 {
        (*params).flags = original | IORING_SETUP_COOP_TASKRUN;
        let rc = __real_io_uring_queue_init_params(entries, ring, params);
        if rc != -libc::EINVAL {
            if rc == 0 {
                RINGS_WITH_COOP.fetch_add(1, Ordering::Relaxed);
            }
            return rc;
        }
        // Pre-5.19 kernel: fall through and create the ring as glommio asked.
        (*params).flags = original;
    }
    let rc = __real_io_uring_queue_init_params(entries, ring, params);
    if rc == 0 {
        RINGS_WITHOUT_COOP.fetch_add(1, Ordering::Relaxed);
    }
    rc
}

/// How many rings were created with and without COOP_TASKRUN in this process.
/// Logged at start-up and checked by `tests/uring_shim.rs`.
pub fn ring_counts() -> (usize, usize) {
    (
        RINGS_WITH_COOP.load(Ordering::Relaxed),
        RINGS_WITHOUT_COOP.load(Ordering::Relaxed),
    )
}
