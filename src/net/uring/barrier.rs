//! glommio's barrier before each sleep, as a fence instead of a system call.
//!
//! Before it sleeps, glommio 0.9 marks its executor as sleeping
//! (`SleepNotifier::prepare_to_sleep`, a relaxed store), issues a "heavy"
//! barrier, and looks once more at its cross-executor channels and foreign
//! wakers before it waits in the ring. The other side of that handshake (a
//! thread that queues a waker or a channel message and then notifies)
//! queues first and then takes the flag with a compare-and-swap
//! (`SleepNotifier::notify`). The barrier only has to keep the sleeper's
//! store from being ordered after its loads (Dekker's pattern); glommio's
//! heavy barrier is `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which
//! also serialises every other CPU running a thread of the process, for the
//! sake of a notifier side that has no fence of its own (glommio's "light"
//! barrier, a compiler fence, which it never calls).
//!
//! On x86-64 that side needs none: its compare-and-swap is a `lock`ed
//! instruction, a full barrier, between its queueing stores and its load of
//! the flag. So a full fence on the sleeper's side is all the handshake
//! needs, and it is what glommio's own fallback strategy uses. The system
//! call was the dearer part of every sleep: 343 ns here against 167 ns for
//! `getppid` (perf/README.md, "Session 40"), 0.65-0.78 per L4 request at a
//! paced 20,000 req/s, and an inter-processor interrupt to every other core
//! running a shard at that moment, each time any shard goes to sleep.
//!
//! glommio makes the call through libc's `syscall`; build.rs links with
//! `--wrap=syscall` on x86-64, so every `syscall` call of the process lands
//! in `__wrap_syscall` (barrier.c, linked into every binary of the
//! package), which answers `MEMBARRIER_CMD_PRIVATE_EXPEDITED` with a fence
//! and passes everything else (std's futexes, liburing's enters, glommio's
//! barrier registration) to libc's. Remora itself wakes
//! no executor from another thread; the handshake is kept sound anyway, and
//! `tests/uring_shim.rs` checks both that the wrapper answers the sleeps'
//! barriers and that wake-ups across executors are not lost.

/// How many of glommio's sleep barriers this thread had answered with a
/// fence (0 where the wrapper is not linked in: other architectures).
pub fn barriers_answered_on_this_thread() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        extern "C" {
            fn remora_barriers_answered() -> u64;
        }
        // SAFETY: reads this thread's counter in barrier.c, which build.rs
        // links into every binary on x86-64.
        unsafe { remora_barriers_answered() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    0
}
