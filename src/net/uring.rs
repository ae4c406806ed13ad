//! io_uring set-up shim: how glommio's rings deliver completions.
//!
//! glommio 0.9 makes three rings per executor: a *main* ring (sockets, its
//! sleep), an IOPOLL ring (NVMe polling, unused here) and a *latency* ring
//! (timers; glommio reads its completion queue from user space to decide when
//! a task must yield). It creates them without any task-run flag, so every
//! completion's task work is delivered with an inter-processor interrupt to
//! the executor thread. In a VM that interrupt is a VM exit; on this machine
//! kind it cut a one-core L4 forwarder from ~85k to ~36k req/s
//! (../shared/FACTS.md). The shim changes that in two steps:
//!
//! - **Every interrupt-driven ring gets `IORING_SETUP_COOP_TASKRUN`** (5.19+):
//!   the task work runs when the thread next enters the kernel, which a
//!   thread-per-core executor does on every loop anyway.
//! - **The main ring also gets `IORING_SETUP_DEFER_TASKRUN`** (6.1+, with the
//!   `SINGLE_ISSUER` it requires and `TASKRUN_FLAG`): its task work waits on
//!   a list until the thread enters the ring with `IORING_ENTER_GETEVENTS`,
//!   and then runs as one batch. A readiness event then costs an append to
//!   that list instead of `task_work_add`'s signalling, and no other system
//!   call runs io_uring's work on its way out. Measured: -3 to -4 % CPU per
//!   request on L4, L7 and the inbound sidecar, lower in every round
//!   (perf/EVENT_LOOP.md, "Session 15").
//!
//! Deferred work runs only on a `GETEVENTS` enter, which glommio 0.9 makes
//! only when it sleeps, so the shim supplies the other two:
//! - glommio peeks the main ring's completions through liburing's
//!   `__io_uring_get_cqe`; [`__wrap___io_uring_get_cqe`] enters with
//!   `GETEVENTS` first when the queue is empty and the kernel has flagged
//!   deferred work (`IORING_SQ_TASKRUN` in the shared flags word, one load).
//! - glommio submits through liburing's `io_uring_submit`, which adds
//!   `GETEVENTS` to its enter only for IOPOLL rings. The shim sets the IOPOLL
//!   bit in liburing's *own copy* of the set-up flags (`struct io_uring.flags`;
//!   the kernel's ring has no IOPOLL), which liburing 2.0 reads only there
//!   (`queue.c`, `__io_uring_submit`). So a submission also runs the work
//!   that is waiting, with no extra system call.
//!
//! The main ring's shared words also tell a busy task, without a system
//! call, whether another connection is ready: [`completions_waiting`] reads
//! the kernel's task-work flag and the completion queue's head and tail
//! (`crate::turn` gives the core back early on it). `io_uring_queue_exit` is
//! wrapped so that those words are forgotten before their mapping goes.
//!
//! The same shared words let the loop batch: a wrapper of liburing's
//! `io_uring_submit` (glommio's submission, once per pass of its loop) makes
//! a saturated core that carries HTTP/2 streams wait in the ring for more
//! completions when the pass found none (`net::batch`).
//!
//! The latency ring stays COOP only: glommio polls its file descriptor from
//! the main ring when it sleeps, and reads its completion queue directly; both
//! need its completions posted without a `GETEVENTS` enter.
//!
//! Which ring is the main one: glommio creates the main ring, then the IOPOLL
//! ring, then the latency ring, on the executor's own thread (liburing's
//! feature probe also makes a throw-away ring of 2 entries first). So on each
//! thread the 1st, 3rd, ... interrupt-driven ring of more than 2 entries is a
//! main ring. `tests/uring_shim.rs` checks the pattern on the glommio that
//! Cargo.lock names, and that a deferred ring delivers accepts, reads, timers
//! and cross-thread wake-ups.
//!
//! Two more things are done to what glommio submits. Its loop replaces its
//! two preemption timers on every pass; the shim keeps the armed ones
//! instead, answering the cancels in user space and letting each new timer
//! adopt the one it replaces ([`keep`]); likewise each sleep's poll of the
//! latency ring adopts the one an earlier sleep left armed. A cancel of a
//! timeout that does go to the kernel goes in as a timeout removal, which
//! the kernel finds without searching its other lists first
//! ([`cancels_as_removes`]).
//!
//! How the calls land here: build.rs links with `--wrap=io_uring_queue_init_params`,
//! `--wrap=__io_uring_get_cqe`, `--wrap=io_uring_queue_exit`,
//! `--wrap=io_uring_submit`, `--wrap=io_uring_submit_and_wait` and, for
//! glommio's completion reads, `--wrap=` its `rust_io_uring_peek_cqe`,
//! `rust_io_uring_cqe_seen` and `rust_io_uring_cq_ready`, so glommio's
//! calls resolve to the
//! `__wrap_` functions below, which call the real liburing ones. Rings
//! created with IOPOLL or SQPOLL are left alone. A kernel that rejects a flag
//! (EINVAL) gets the ring with fewer: DEFER falls back to COOP (5.19-6.0),
//! COOP to none (5.8-5.18). `REMORA_URING_DEFER_TASKRUN=0` in the environment
//! keeps the main ring on COOP only (an A/B switch for measurements).

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::batch;

mod barrier;
mod keep;
mod ready;
#[cfg(test)]
mod test_ring;
pub use barrier::barriers_answered_on_this_thread;
pub use keep::{
    keep_on_this_thread, link_polls_adopted_on_this_thread, orphans_removed_on_this_thread,
    timers_adopted_on_this_thread, Cqe,
};
pub use ready::{available as readiness_available, slots_in_use as readiness_slots_in_use};
pub use ready::{wait_for_room, Check, Readiness};

/// `IORING_SETUP_IOPOLL` (linux/io_uring.h).
const IORING_SETUP_IOPOLL: u32 = 1 << 0;
/// `IORING_SETUP_SQPOLL`.
const IORING_SETUP_SQPOLL: u32 = 1 << 1;
/// `IORING_SETUP_COOP_TASKRUN` (5.19+).
pub const IORING_SETUP_COOP_TASKRUN: u32 = 1 << 8;
/// `IORING_SETUP_TASKRUN_FLAG` (5.19+): the kernel sets `IORING_SQ_TASKRUN`
/// while task work waits.
const IORING_SETUP_TASKRUN_FLAG: u32 = 1 << 9;
/// `IORING_SETUP_SINGLE_ISSUER` (6.0+), required by DEFER_TASKRUN.
const IORING_SETUP_SINGLE_ISSUER: u32 = 1 << 12;
/// `IORING_SETUP_DEFER_TASKRUN` (6.1+).
pub const IORING_SETUP_DEFER_TASKRUN: u32 = 1 << 13;
/// `IORING_SQ_TASKRUN`, in the SQ ring's flags word.
const IORING_SQ_TASKRUN: u32 = 1 << 2;
/// `IORING_ENTER_GETEVENTS`.
const IORING_ENTER_GETEVENTS: u32 = 1 << 0;
/// `IORING_ENTER_EXT_ARG` (5.11+): the enter's argument is a
/// [`GeteventsArg`].
const IORING_ENTER_EXT_ARG: u32 = 1 << 3;

/// `struct io_uring_getevents_arg` (5.11+; `min_wait_usec` was padding
/// before 6.12: the batch wait leaves it 0, the sleep's moderation sets it).
#[repr(C)]
struct GeteventsArg {
    sigmask: u64,
    sigmask_sz: u32,
    min_wait_usec: u32,
    /// A pointer to a `struct __kernel_timespec`, relative.
    ts: u64,
}

/// The leading part of liburing's `struct io_uring_params`; only `flags` is
/// touched, through a pointer the caller owns, so the rest need not be spelled out.
#[repr(C)]
pub struct IoUringParamsHead {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    /// `IORING_FEAT_*`, written by the kernel.
    features: u32,
}

/// `IORING_FEAT_MIN_TIMEOUT` (6.12+): the getevents argument's
/// `min_wait_usec` is honoured.
const IORING_FEAT_MIN_TIMEOUT: u32 = 1 << 15;
/// `IORING_FEAT_EXT_ARG` (5.11+): liburing waits with a timeout through
/// the enter's argument, not with a timeout request of its own.
const IORING_FEAT_EXT_ARG: u32 = 1 << 8;
/// `IORING_SQ_CQ_OVERFLOW`: completions wait in the kernel for room in
/// the queue; a peek must enter to have them flushed.
const IORING_SQ_CQ_OVERFLOW: u32 = 1 << 1;

/// liburing 2.0's `struct io_uring` (the copy glommio 0.9 builds,
/// `liburing/src/include/liburing.h`): the shim reads the CQ's head and tail,
/// the SQ's flags word and the ring's fd, and sets a bit in `flags`.
#[repr(C)]
pub struct LibUring {
    sq: LibUringSq,
    cq: LibUringCq,
    flags: u32,
    ring_fd: i32,
    features: u32,
    pad: [u32; 3],
}

#[repr(C)]
struct LibUringSq {
    khead: *mut u32,
    ktail: *mut u32,
    kring_mask: *mut u32,
    kring_entries: *mut u32,
    kflags: *mut u32,
    kdropped: *mut u32,
    array: *mut u32,
    sqes: *mut libc::c_void,
    sqe_head: u32,
    sqe_tail: u32,
    ring_sz: usize,
    ring_ptr: *mut libc::c_void,
    pad: [u32; 4],
}

#[repr(C)]
struct LibUringCq {
    khead: *mut u32,
    ktail: *mut u32,
    kring_mask: *mut u32,
    kring_entries: *mut u32,
    kflags: *mut u32,
    koverflow: *mut u32,
    cqes: *mut libc::c_void,
    ring_sz: usize,
    ring_ptr: *mut libc::c_void,
    pad: [u32; 4],
}

// liburing 2.0 on x86-64/aarch64: sq 104 bytes, cq 88, then 24.
const _: () = assert!(std::mem::size_of::<LibUring>() == 216);

static RINGS_WITH_COOP: AtomicUsize = AtomicUsize::new(0);
static RINGS_DEFERRED: AtomicUsize = AtomicUsize::new(0);
static RINGS_WITHOUT_COOP: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Interrupt-driven rings of more than 2 entries made on this thread:
    /// even counts are glommio main rings (see the module doc).
    static RINGS_MADE: Cell<u32> = const { Cell::new(0) };
    /// This thread's latency ring's fd (-1: none): glommio's reactor peeks
    /// it first on each of its passes (`ready::new_pass`).
    static LATENCY_RING: Cell<i32> = const { Cell::new(-1) };
    /// GETEVENTS enters the peek wrapper made on this thread: proof that it
    /// recognises the ring (tests/uring_shim.rs). Touched only on that path.
    static PEEK_ENTERS: Cell<u64> = const { Cell::new(0) };
    /// This thread's main ring as the shim sees it: its fd, whether it defers
    /// its task work, and the words of its mapping that say whether work
    /// waits. By fd and mapping, not by liburing's struct: glommio moves that
    /// struct after set-up (it is returned by value), while the mapping stays
    /// put until `io_uring_queue_exit`, whose wrapper forgets the ring first.
    /// A ring is used only on the thread that made it, so one per thread.
    static MAIN_RING: Cell<Option<MainRing>> = const { Cell::new(None) };
    /// Nanoseconds this thread has spent asleep in its main ring (glommio's
    /// park): the core's idle time, for [`slept_nanos`].
    static SLEPT: Cell<u64> = const { Cell::new(0) };
    /// How long the latest of those sleeps lasted (nanoseconds): whether
    /// the keeping may leave an orphan armed through the next
    /// (`keep::Kept::stale`).
    static LAST_SLEPT: Cell<u64> = const { Cell::new(0) };
}

/// This thread's latency ring (glommio's timers), whose descriptor glommio
/// polls from the main ring before each sleep; -1 before it is made.
fn latency_ring_fd() -> i32 {
    LATENCY_RING.with(Cell::get)
}

/// How long this thread's executor's latest sleep in its main ring lasted
/// (nanoseconds).
fn last_slept_nanos() -> u64 {
    LAST_SLEPT.with(Cell::get)
}

/// How long this thread's executor has slept, waiting in its main ring for
/// work, since it started (nanoseconds; 0 on a thread without one). Idle
/// time over wall time is how much of the core is free: HTTP/2 answers wait
/// for company longer on a core that has almost none (`l7::h2`'s `Hold`).
pub fn slept_nanos() -> u64 {
    SLEPT.with(Cell::get)
}

/// Under this share of idle time the core counts as saturated.
const SATURATED_IDLE: f64 = 0.10;
/// How often the core's idle share is measured (the window it covers).
pub const LOAD_WINDOW: Duration = Duration::from_millis(2);

thread_local! {
    /// The core's last load measurement: when, its slept time then, and
    /// whether the window before it was saturated.
    static LOAD: Cell<(Option<Instant>, u64, bool)> = const { Cell::new((None, 0, false)) };
}

/// Whether this core slept less than [`SATURATED_IDLE`] of the last
/// [`LOAD_WINDOW`] or so ([`slept_nanos`]); measured again at most once per
/// window, by whichever task asks first.
pub fn saturated(now: Instant) -> bool {
    LOAD.with(|load| {
        let (since, slept_then, saturated) = load.get();
        let elapsed = since.map(|t| now.saturating_duration_since(t));
        if elapsed.is_some_and(|e| e < LOAD_WINDOW) {
            return saturated;
        }
        let slept = slept_nanos();
        let saturated = match elapsed {
            Some(e) => ((slept - slept_then) as f64) < SATURATED_IDLE * e.as_nanos() as f64,
            None => false,
        };
        load.set((Some(now), slept, saturated));
        saturated
    })
}

#[derive(Clone, Copy)]
struct MainRing {
    fd: i32,
    deferred: bool,
    /// The kernel honours `min_wait_usec` (sleep moderation may be used).
    min_timeout: bool,
    sq_flags: *const u32,
    cq_head: *const u32,
    cq_tail: *const u32,
}

impl MainRing {
    fn remember(r: &LibUring, deferred: bool, features: u32) {
        let ring = MainRing {
            fd: r.ring_fd,
            deferred,
            min_timeout: features & IORING_FEAT_MIN_TIMEOUT != 0,
            sq_flags: r.sq.kflags as *const u32,
            cq_head: r.cq.khead as *const u32,
            cq_tail: r.cq.ktail as *const u32,
        };
        MAIN_RING.with(|m| m.set(Some(ring)));
    }

    /// The kernel holds task work for this ring (IORING_SQ_TASKRUN; set only
    /// with TASKRUN_FLAG, i.e. on a deferred ring).
    ///
    /// # Safety
    /// The ring is still mapped (see `MAIN_RING`).
    unsafe fn work_flagged(&self) -> bool {
        // The kernel writes the word; read it as it publishes it.
        (*(self.sq_flags as *const AtomicU32)).load(Ordering::Relaxed) & IORING_SQ_TASKRUN != 0
    }

    /// # Safety
    /// As `work_flagged`.
    unsafe fn completions_queued(&self) -> bool {
        let tail = (*(self.cq_tail as *const AtomicU32)).load(Ordering::Acquire);
        tail != std::ptr::read_volatile(self.cq_head)
    }
}

/// Whether this thread's main ring holds work for the executor:
/// completions in its queue, or task work the kernel flagged and has not run
/// yet (another socket became ready; deferred rings only). Three loads;
/// false on a thread whose executor has no main ring (yet, or any more). A
/// task that moves bulk data asks this to give the core back as soon as
/// another connection is ready rather than at the end of its budget
/// (`crate::turn`).
pub fn completions_waiting() -> bool {
    match MAIN_RING.with(Cell::get) {
        None => false,
        // SAFETY: the ring stays mapped until io_uring_queue_exit, whose
        // wrapper forgets it first.
        Some(r) => unsafe { r.work_flagged() || r.completions_queued() },
    }
}

/// Called instead of liburing's `io_uring_queue_exit` (glommio's ring
/// teardown): forgets what this thread knew of the ring before its mapping
/// goes.
///
/// # Safety
/// Same contract as the liburing function.
#[no_mangle]
pub unsafe extern "C" fn __wrap_io_uring_queue_exit(ring: *mut LibUring) {
    let fd = (*ring).ring_fd;
    REWRITES.with(|r| r.borrow_mut().forget_ring(fd));
    keep::forget_ring(fd);
    ready::forget_ring(fd);
    MAIN_RING.with(|m| {
        if m.get().is_some_and(|r| r.fd == fd) {
            m.set(None);
        }
    });
    __real_io_uring_queue_exit(ring)
}

/// Called instead of liburing's `io_uring_submit`, which glommio calls to
/// hand a ring its new requests. Before they go, a cancel aimed at a timeout
/// becomes a timeout removal ([`cancels_as_removes`]). On this thread's deferred main ring, once
/// they are in, the pass may wait for company (`net::batch`): while nothing
/// is in the completion queue and no task work waits, one more enter waits
/// up to the batch wait for [`batch::EVENTS`] completions. Its result is
/// not glommio's business: the submission's is returned.
///
/// # Safety
/// Same contract as the liburing function.
#[no_mangle]
pub unsafe extern "C" fn __wrap_io_uring_submit(ring: *mut LibUring) -> libc::c_int {
    let rc = through_rewrites(ring, |ring| __real_io_uring_submit(ring));
    let Some(main) = MAIN_RING
        .with(Cell::get)
        .filter(|m| m.deferred && m.fd == (*ring).ring_fd)
    else {
        return rc;
    };
    if main.completions_queued() || main.work_flagged() {
        return rc;
    }
    if let Some(max) = batch::wait_now() {
        let start = Instant::now();
        // ETIME (the usual end: fewer completions than asked) and EINTR
        // leave what came for glommio's next peek; an old kernel's EINVAL
        // only means no batching.
        wait_in_ring(main.fd, batch::EVENTS, 0, Some(max));
        batch::waited(start.elapsed());
    }
    rc
}

/// Called instead of liburing's `io_uring_submit_and_wait` (glommio 0.9
/// does not call it; wrapped so that no submission escapes the rewrites).
/// While completions are queued for glommio in user space it does not wait.
///
/// # Safety
/// Same contract as the liburing function.
#[no_mangle]
pub unsafe extern "C" fn __wrap_io_uring_submit_and_wait(
    ring: *mut LibUring,
    wait_nr: u32,
) -> libc::c_int {
    through_rewrites(ring, |ring| {
        if keep::queued((*ring).ring_fd).is_some() {
            __real_io_uring_submit(ring)
        } else {
            __real_io_uring_submit_and_wait(ring, wait_nr)
        }
    })
}

/// Hands the requests pending on `ring` to `submit` after the shim's
/// rewrites: the keeping of timers ([`keep::on_submit`]), or, when it is
/// off, cancels of timeouts as removals ([`cancels_as_removes`]). Returns what glommio
/// expects: how many of *its* requests went in, those the keeping took
/// out included, the removals it added not. When nothing is left to
/// submit, the kernel is not entered.
///
/// # Safety
/// `ring` is a live liburing ring of this thread.
unsafe fn through_rewrites(
    ring: *mut LibUring,
    submit: impl FnOnce(*mut LibUring) -> libc::c_int,
) -> libc::c_int {
    // On the main ring: readiness waits armed since the last submission
    // are pending with glommio's; they are not glommio's to count.
    let main = is_main((*ring).ring_fd);
    let ours = if main {
        ready::remember_ring(ring);
        ready::flush_deferred(ring);
        ready::take_unsubmitted()
    } else {
        0
    };
    let keeping = keep::enabled();
    let kept = keep::on_submit(ring, keeping);
    if !keeping {
        // With the keeping on, glommio's cancels of timeouts do not reach
        // the kernel (and the removals it adds are removals already).
        cancels_as_removes(ring);
    }
    if kept == keep::Outcome::default() && ours == 0 {
        let rc = submit(ring);
        if main {
            ready::submitted();
        }
        return rc;
    }
    let sq = &(*ring).sq;
    let remaining = sq.sqe_tail.wrapping_sub(sq.sqe_head);
    let rc = if remaining == 0 { 0 } else { submit(ring) };
    if main {
        ready::submitted();
    }
    if kept.added > 0 {
        keep::drop_unowned(ring);
    }
    if rc < 0 {
        return rc;
    }
    let glommios = (remaining - kept.added - ours) as libc::c_int;
    rc.min(glommios) + kept.taken as libc::c_int
}

/// Whether ring `fd` is this thread's main ring.
#[inline]
fn is_main(fd: i32) -> bool {
    MAIN_RING.with(Cell::get).is_some_and(|m| m.fd == fd)
}

/// What becomes of a kernel completion of ring `fd` whose `user_data` is
/// private: handed to glommio under the `user_data` given (its owner's),
/// or, None, consumed here (a readiness wait's, [`ready`]; an orphan's or
/// a removal's, [`keep`]).
fn private_completion(fd: i32, cqe: &keep::Cqe) -> Option<u64> {
    if cqe.user_data & ready::TAG != 0 {
        ready::complete(cqe.user_data);
        return None;
    }
    keep::translate(fd, cqe)
}

/// `IORING_OP_TIMEOUT`, `IORING_OP_TIMEOUT_REMOVE`, `IORING_OP_ASYNC_CANCEL`.
const OP_TIMEOUT: u8 = 11;
const OP_TIMEOUT_REMOVE: u8 = 12;
const OP_ASYNC_CANCEL: u8 = 14;
/// `IORING_OP_POLL_ADD`.
const OP_POLL_ADD: u8 = 6;

/// `struct io_uring_sqe`, the fields the rewrite reads (linux/io_uring.h).
#[repr(C)]
struct Sqe {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    off: u64,
    /// ASYNC_CANCEL and TIMEOUT_REMOVE: the target's `user_data`.
    addr: u64,
    len: u32,
    /// `cancel_flags` / `timeout_flags`.
    op_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    splice_fd_in: i32,
    tail: [u64; 2],
}
const _: () = assert!(std::mem::size_of::<Sqe>() == 64);

/// The largest `user_data` whose last request the rewrite remembers.
/// glommio's are its slot numbers plus one, as many as it has requests in
/// flight on the ring; a larger one (liburing's own marker, a foreign
/// ring's) is never rewritten.
const REMEMBERED_USER_DATA: u64 = 1 << 20;

/// What the rewrite knows of one ring: the opcode of the latest request
/// submitted with each `user_data` (index), 0 when none is known.
struct RingOps {
    fd: i32,
    last_op: Vec<u8>,
}

/// This thread's rings as the rewrite knows them (glommio: three per
/// executor), and how many cancels it rewrote (tests/uring_shim.rs).
struct Rewrites {
    rings: Vec<RingOps>,
    rewritten: u64,
}

impl Rewrites {
    fn forget_ring(&mut self, fd: i32) {
        self.rings.retain(|r| r.fd != fd);
    }

    fn ring(&mut self, fd: i32) -> &mut RingOps {
        match self.rings.iter().position(|r| r.fd == fd) {
            Some(i) => &mut self.rings[i],
            None => {
                self.rings.push(RingOps {
                    fd,
                    last_op: Vec::new(),
                });
                self.rings.last_mut().expect("just pushed")
            }
        }
    }
}

thread_local! {
    static REWRITES: std::cell::RefCell<Rewrites> = const {
        std::cell::RefCell::new(Rewrites { rings: Vec::new(), rewritten: 0 })
    };
}

/// Rewrites, in the requests about to be submitted on `ring`, each
/// `ASYNC_CANCEL` aimed at a `TIMEOUT` into a `TIMEOUT_REMOVE` of it.
///
/// Why: glommio replaces both its preemption timers on every pass of its
/// loop, cancelling the old ones with `ASYNC_CANCEL`. The kernel looks for a
/// cancel's target among io-wq's queued and running work, then in the poll
/// table, the waitid and futex lists, and only then among the timeouts; in a
/// profile of the inbound sidecar that search was 3 % of Remora's CPU
/// (perf/EVENT_LOOP.md, "Session 33"). `TIMEOUT_REMOVE` goes straight to the
/// timeout list. For a timeout the two are the same request: the same
/// fields (`addr` names the target), the same lookup in the timeout list in
/// the end (`io_timeout_cancel`), the same results (0; `-ENOENT` once it has
/// fired; `-EALREADY` while it fires), and the target completes with
/// `-ECANCELED` either way, its links failing with it. Only the opcode byte
/// changes.
///
/// Which cancels: those whose target's latest request on this ring, as
/// submitted through here, was a `TIMEOUT`. A `user_data` is taken again
/// for a new request only once the old one has completed (glommio reuses a
/// finished source's slot), and every submission glommio makes passes
/// through here, so a live target is the request last seen with its
/// `user_data`. A cancel with flags (by fd, all, any) or with a field a
/// removal would refuse stays as it is. One byte store per request.
/// `REMORA_URING_CANCEL_AS_REMOVE=0` in the environment turns this off (an
/// A/B switch for measurements).
///
/// # Safety
/// `ring` is a live liburing ring of this thread.
unsafe fn cancels_as_removes(ring: *mut LibUring) {
    let sq = &(*ring).sq;
    let pending = sq.sqe_tail.wrapping_sub(sq.sqe_head);
    if pending == 0 || !rewrite_enabled() {
        return;
    }
    let mask = *sq.kring_mask;
    let sqes = sq.sqes as *mut Sqe;
    REWRITES.with(|r| {
        let mut r = r.borrow_mut();
        let mut rewritten = 0;
        let ops = r.ring((*ring).ring_fd);
        for k in 0..pending {
            let sqe = &mut *sqes.add((sq.sqe_head.wrapping_add(k) & mask) as usize);
            if sqe.opcode == OP_ASYNC_CANCEL
                && sqe.op_flags == 0
                && sqe.flags == 0
                && sqe.ioprio == 0
                && sqe.len == 0
                && sqe.buf_index == 0
                && sqe.splice_fd_in == 0
            {
                if let Some(last) = ops.last_op.get_mut(sqe.addr as usize) {
                    if *last == OP_TIMEOUT {
                        sqe.opcode = OP_TIMEOUT_REMOVE;
                        *last = 0;
                        rewritten += 1;
                    }
                }
            }
            if sqe.user_data < REMEMBERED_USER_DATA {
                let ud = sqe.user_data as usize;
                if ud >= ops.last_op.len() {
                    ops.last_op.resize((ud + 1).next_power_of_two().max(64), 0);
                }
                ops.last_op[ud] = sqe.opcode;
            }
        }
        r.rewritten += rewritten;
    });
}

fn rewrite_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("REMORA_URING_CANCEL_AS_REMOVE").is_none_or(|v| v != "0"))
}

/// How many cancels of a timeout this thread's submissions turned into
/// timeout removals.
pub fn cancels_rewritten_on_this_thread() -> u64 {
    REWRITES.with(|r| r.borrow().rewritten)
}

/// One `io_uring_enter` on ring `fd` that submits nothing and waits for
/// `events` completions: at most `timeout` (None: no limit), and, with
/// `min_wait_usec` (6.12+), only that long before one completion is enough.
/// What comes stays in the completion queue; the result is not looked at
/// (ETIME, EINTR and an old kernel's EINVAL all leave the queue as it is).
fn wait_in_ring(fd: i32, events: u32, min_wait_usec: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs() as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let arg = GeteventsArg {
        sigmask: 0,
        sigmask_sz: 0,
        min_wait_usec,
        ts: ts
            .as_ref()
            .map_or(0, |ts| ts as *const libc::timespec as u64),
    };
    // SAFETY: `arg` and the timespec it points to outlive the call; the
    // kernel only reads them.
    unsafe {
        libc::syscall(
            libc::SYS_io_uring_enter,
            fd,
            0u32,
            events,
            IORING_ENTER_GETEVENTS | IORING_ENTER_EXT_ARG,
            &arg as *const GeteventsArg,
            std::mem::size_of::<GeteventsArg>(),
        );
    }
}

/// How many times the peek wrapper entered the kernel to collect deferred
/// work on the calling thread.
pub fn peek_enters_on_this_thread() -> u64 {
    PEEK_ENTERS.with(Cell::get)
}

extern "C" {
    fn __real_rust_io_uring_peek_cqe(
        ring: *mut LibUring,
        cqe_ptr: *mut *mut keep::Cqe,
    ) -> libc::c_int;
    fn __real_rust_io_uring_cqe_seen(ring: *mut LibUring, cqe: *mut keep::Cqe);
    fn __real_rust_io_uring_cq_ready(ring: *mut LibUring) -> libc::c_uint;
    fn __real_io_uring_submit(ring: *mut LibUring) -> libc::c_int;
    fn __real_io_uring_submit_and_wait(ring: *mut LibUring, wait_nr: u32) -> libc::c_int;
    fn __real_io_uring_queue_exit(ring: *mut LibUring);
    fn __real_io_uring_queue_init_params(
        entries: u32,
        ring: *mut LibUring,
        params: *mut IoUringParamsHead,
    ) -> libc::c_int;
    fn __real___io_uring_get_cqe(
        ring: *mut LibUring,
        cqe_ptr: *mut *mut libc::c_void,
        submit: u32,
        wait_nr: u32,
        sigmask: *mut libc::c_void,
    ) -> libc::c_int;
}

fn defer_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("REMORA_URING_DEFER_TASKRUN").is_none_or(|v| v != "0"))
}

/// Called instead of liburing's `io_uring_queue_init_params` (see module doc).
///
/// # Safety
/// Same contract as the liburing function: `ring` and `params` are valid pointers.
#[no_mangle]
pub unsafe extern "C" fn __wrap_io_uring_queue_init_params(
    entries: u32,
    ring: *mut LibUring,
    params: *mut IoUringParamsHead,
) -> libc::c_int {
    let original = (*params).flags;
    if original & (IORING_SETUP_IOPOLL | IORING_SETUP_SQPOLL) != 0 {
        return plain(entries, ring, params);
    }
    let main = entries > 2
        && RINGS_MADE.with(|n| {
            let made = n.get();
            n.set(made + 1);
            made % 2 == 0
        });
    if main && defer_enabled() {
        (*params).flags = original
            | IORING_SETUP_COOP_TASKRUN
            | IORING_SETUP_TASKRUN_FLAG
            | IORING_SETUP_SINGLE_ISSUER
            | IORING_SETUP_DEFER_TASKRUN;
        let rc = __real_io_uring_queue_init_params(entries, ring, params);
        if rc != -libc::EINVAL {
            if rc == 0 {
                // liburing's copy only: makes io_uring_submit enter with GETEVENTS.
                (*ring).flags |= IORING_SETUP_IOPOLL;
                MainRing::remember(&*ring, true, (*params).features);
                RINGS_DEFERRED.fetch_add(1, Ordering::Relaxed);
            }
            return rc;
        }
        // Pre-6.1 kernel: COOP only.
    }
    (*params).flags = original | IORING_SETUP_COOP_TASKRUN;
    let rc = __real_io_uring_queue_init_params(entries, ring, params);
    if rc != -libc::EINVAL {
        if rc == 0 {
            if !main && entries > 2 {
                LATENCY_RING.with(|l| l.set((*ring).ring_fd));
            }
            if main {
                // No TASKRUN flag here: completions post on the way out of
                // any system call, so the queue's head and tail tell.
                MainRing::remember(&*ring, false, (*params).features);
            }
            RINGS_WITH_COOP.fetch_add(1, Ordering::Relaxed);
        }
        return rc;
    }
    // Pre-5.19 kernel: the ring as glommio asked.
    (*params).flags = original;
    plain(entries, ring, params)
}

unsafe fn plain(entries: u32, ring: *mut LibUring, params: *mut IoUringParamsHead) -> libc::c_int {
    let rc = __real_io_uring_queue_init_params(entries, ring, params);
    if rc == 0 {
        RINGS_WITHOUT_COOP.fetch_add(1, Ordering::Relaxed);
    }
    rc
}

/// Called instead of liburing's `__io_uring_get_cqe`, which glommio's peek
/// (`io_uring_peek_cqe`, inlined) calls with `submit = wait_nr = 0`. On a
/// deferred ring whose completion queue is empty while the kernel holds
/// task work for it, one `GETEVENTS` enter turns that work into completions
/// first (see module doc). glommio's park on the main ring
/// (`io_uring_wait_cqes`, which waits for one completion) is timed for
/// [`slept_nanos`]. Every other call passes straight through.
///
/// # Safety
/// Same contract as the liburing function.
#[no_mangle]
pub unsafe extern "C" fn __wrap___io_uring_get_cqe(
    ring: *mut LibUring,
    cqe_ptr: *mut *mut libc::c_void,
    submit: u32,
    wait_nr: u32,
    sigmask: *mut libc::c_void,
) -> libc::c_int {
    if wait_nr > 0 {
        if let Some(cqe) = keep::queued((*ring).ring_fd) {
            // A completion queued for glommio in user space: no sleep.
            *cqe_ptr = cqe as *mut libc::c_void;
            return 0;
        }
    }
    if submit > 0 {
        if is_main((*ring).ring_fd) {
            // Readiness waits pending go in with this enter.
            ready::take_unsubmitted();
        }
        // liburing submitted requests the rewrite did not see (its wait
        // with a timeout on a kernel without EXT_ARG): what it remembers of
        // this ring may be stale.
        REWRITES.with(|r| r.borrow_mut().forget_ring((*ring).ring_fd));
    }
    let Some(main) = MAIN_RING
        .with(Cell::get)
        .filter(|m| m.fd == (*ring).ring_fd)
    else {
        return __real___io_uring_get_cqe(ring, cqe_ptr, submit, wait_nr, sigmask);
    };
    if wait_nr > 0 {
        // glommio's park: the executor sleeps here until a completion,
        // unless a readiness wait woke a task since it decided to sleep
        // (in its submission's reaping of orphans' completions).
        if ready::hold_awake() {
            *cqe_ptr = std::ptr::null_mut();
            return -libc::EAGAIN;
        }
        ready::slept();
        let start = std::time::Instant::now();
        if main.deferred && main.min_timeout && submit == 0 {
            if let Some(us) = batch::sleep_wait_us() {
                // Sleep moderation (`net::batch::set_sleep_wait`): up to `us`
                // for SLEEP_EVENTS completions, then until one (kernel 6.12's
                // `min_wait_usec`; before it the field is padding and the
                // enter would wait for SLEEP_EVENTS with no time limit, hence
                // `min_timeout`). What came stays in the queue for the wait
                // below, which then returns at once.
                wait_in_ring(main.fd, batch::SLEEP_EVENTS, us, None);
            }
        }
        let rc = __real___io_uring_get_cqe(ring, cqe_ptr, submit, wait_nr, sigmask);
        let slept = start.elapsed().as_nanos() as u64;
        SLEPT.with(|n| n.set(n.get() + slept));
        LAST_SLEPT.with(|n| n.set(slept));
        return rc;
    }
    if submit == 0 && main.deferred && !main.completions_queued() && main.work_flagged() {
        // An error (EINTR) leaves the work for the next pass; the peek
        // below reports what is there either way.
        libc::syscall(
            libc::SYS_io_uring_enter,
            main.fd,
            0u32,
            0u32,
            IORING_ENTER_GETEVENTS,
            std::ptr::null::<libc::c_void>(),
            0usize,
        );
        PEEK_ENTERS.with(|n| n.set(n.get() + 1));
    }
    __real___io_uring_get_cqe(ring, cqe_ptr, submit, wait_nr, sigmask)
}

/// Called instead of glommio's `io_uring_peek_cqe` (its `rusturing.c`
/// copy), through which it reads every completion: completions the keeping
/// of timers queued for it come first; a kernel completion with a private
/// `user_data` is handed on under its owner's, or dropped when nobody owns
/// it ([`keep`]).
///
/// # Safety
/// Same contract as the liburing function.
#[no_mangle]
pub unsafe extern "C" fn __wrap_rust_io_uring_peek_cqe(
    ring: *mut LibUring,
    cqe_ptr: *mut *mut keep::Cqe,
) -> libc::c_int {
    if (*ring).ring_fd == LATENCY_RING.with(Cell::get) {
        ready::new_pass();
    }
    // The common case, kept small (glommio peeks its rings dozens of times
    // per request on a core that is not saturated): nothing queued by the
    // keeping, and the kernel's answer is glommio's.
    if keep::none_queued() {
        if let Some(rc) = peek_direct(ring, cqe_ptr) {
            if rc != 0 || (**cqe_ptr).user_data & keep::PRIVATE == 0 {
                return rc;
            }
        }
    }
    peek_through_keeping(ring, cqe_ptr)
}

/// The rest of [`__wrap_rust_io_uring_peek_cqe`].
#[cold]
#[inline(never)]
unsafe fn peek_through_keeping(ring: *mut LibUring, cqe_ptr: *mut *mut keep::Cqe) -> libc::c_int {
    let fd = (*ring).ring_fd;
    loop {
        if let Some(cqe) = keep::queued(fd) {
            *cqe_ptr = cqe;
            return 0;
        }
        let rc = match peek_direct(ring, cqe_ptr) {
            Some(rc) => rc,
            None => __real_rust_io_uring_peek_cqe(ring, cqe_ptr),
        };
        let cqe = *cqe_ptr;
        if rc != 0 || cqe.is_null() || (*cqe).user_data & keep::PRIVATE == 0 {
            return rc;
        }
        match private_completion(fd, &*cqe) {
            Some(user_data) => {
                (*cqe).user_data = user_data;
                return rc;
            }
            None => __real_rust_io_uring_cqe_seen(ring, cqe),
        }
    }
}

/// liburing 2.0's peek where its answer needs no system call and no
/// wrapper: the completion at the head of the queue, or `-EAGAIN` when the
/// queue is empty and neither an overflow nor deferred task work is flagged.
/// None otherwise: then the real peek (and [`__wrap___io_uring_get_cqe`]
/// behind it) decides. glommio peeks each of its three rings a few times
/// per pass, about six times per L4 request, and its liburing copy always
/// goes through `__io_uring_get_cqe` (`io_uring_peek_cqe` is
/// `io_uring_wait_cqe_nr(ring, cqe, 0)` there): three calls and two
/// thread-local lookups for what is two loads, most often of an empty queue.
/// A kernel without `IORING_FEAT_EXT_ARG` may post liburing's own timeout
/// completions, which only liburing's peek skips: the slow path there.
///
/// # Safety
/// `ring` is a live liburing ring used on this thread.
#[inline]
unsafe fn peek_direct(ring: *mut LibUring, cqe_ptr: *mut *mut keep::Cqe) -> Option<libc::c_int> {
    let r = &*ring;
    if r.features & IORING_FEAT_EXT_ARG == 0 {
        return None;
    }
    let tail = (*(r.cq.ktail as *const AtomicU32)).load(Ordering::Acquire);
    let head = (*(r.cq.khead as *const AtomicU32)).load(Ordering::Relaxed);
    if tail != head {
        *cqe_ptr = (r.cq.cqes as *mut keep::Cqe).add((head & *r.cq.kring_mask) as usize);
        return Some(0);
    }
    let flags = (*(r.sq.kflags as *const AtomicU32)).load(Ordering::Relaxed);
    if flags & (IORING_SQ_CQ_OVERFLOW | IORING_SQ_TASKRUN) != 0 {
        return None;
    }
    *cqe_ptr = std::ptr::null_mut();
    Some(-libc::EAGAIN)
}

/// Called instead of glommio's `io_uring_cqe_seen`: a queued completion
/// leaves its queue, a kernel one moves the ring's head.
///
/// # Safety
/// Same contract as the liburing function.
#[no_mangle]
pub unsafe extern "C" fn __wrap_rust_io_uring_cqe_seen(ring: *mut LibUring, cqe: *mut keep::Cqe) {
    if keep::none_queued() || !keep::seen((*ring).ring_fd, cqe) {
        __real_rust_io_uring_cqe_seen(ring, cqe)
    }
}

/// Called instead of glommio's `io_uring_cq_ready`: the kernel's
/// completions and those queued in user space.
///
/// # Safety
/// Same contract as the liburing function.
#[no_mangle]
pub unsafe extern "C" fn __wrap_rust_io_uring_cq_ready(ring: *mut LibUring) -> libc::c_uint {
    let fd = (*ring).ring_fd;
    let held = u32::from(is_main(fd) && ready::hold_awake());
    __real_rust_io_uring_cq_ready(ring) + keep::queued_count(fd) + held
}

/// Rings created in this process so far, by how their completions run.
/// Logged at start-up and checked by `tests/uring_shim.rs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingCounts {
    /// Main rings with DEFER_TASKRUN (and COOP_TASKRUN).
    pub deferred: usize,
    /// Rings with COOP_TASKRUN only.
    pub coop: usize,
    /// Rings with neither (IOPOLL rings, or a pre-5.19 kernel).
    pub plain: usize,
}

pub fn ring_counts() -> RingCounts {
    RingCounts {
        deferred: RINGS_DEFERRED.load(Ordering::Relaxed),
        coop: RINGS_WITH_COOP.load(Ordering::Relaxed),
        plain: RINGS_WITHOUT_COOP.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::{
        cancels_rewritten_on_this_thread, keep_on_this_thread, saturated, LOAD_WINDOW,
        OP_ASYNC_CANCEL, OP_TIMEOUT, OP_TIMEOUT_REMOVE,
    };
    use std::time::Instant;

    use super::test_ring::Ring;

    /// A cancel of a timeout the ring was given goes in as a removal and
    /// gets what a cancel gets; a cancel whose `user_data` has since been
    /// reused by another request, or with flags, stays a cancel and still
    /// cancels. Real rings, on the running kernel.
    #[test]
    fn a_cancel_of_a_timeout_is_a_removal_with_the_cancels_results() {
        std::thread::spawn(|| {
            // The keeping of timers would answer these cancels itself.
            keep_on_this_thread(false);
            let mut ring = Ring::new();
            let long = libc::timespec {
                tv_sec: 10,
                tv_nsec: 0,
            };
            let short = libc::timespec {
                tv_sec: 0,
                tv_nsec: 1_000_000,
            };
            let ts = |t: &libc::timespec| t as *const libc::timespec as u64;
            let rewritten = cancels_rewritten_on_this_thread();

            // Armed, then cancelled.
            assert_eq!(ring.submit(OP_TIMEOUT, -1, ts(&long), 1, 0, 1), OP_TIMEOUT);
            assert_eq!(
                ring.submit(OP_ASYNC_CANCEL, -1, 1, 0, 0, 2),
                OP_TIMEOUT_REMOVE
            );
            assert_eq!(ring.complete_two(), [(1, -libc::ECANCELED), (2, 0)]);

            // Fired before its cancel: the cancel finds nothing.
            ring.submit(OP_TIMEOUT, -1, ts(&short), 1, 0, 3);
            assert_eq!(ring.complete(), (3, -libc::ETIME));
            assert_eq!(
                ring.submit(OP_ASYNC_CANCEL, -1, 3, 0, 0, 4),
                OP_TIMEOUT_REMOVE
            );
            assert_eq!(ring.complete(), (4, -libc::ENOENT));
            assert_eq!(cancels_rewritten_on_this_thread() - rewritten, 2);

            // Fired, and its user_data reused by a poll: the cancel must reach
            // the poll.
            let (rd, _wr) = nix::unistd::pipe().expect("pipe");
            use std::os::fd::AsRawFd;
            ring.submit(OP_TIMEOUT, -1, ts(&short), 1, 0, 5);
            assert_eq!(ring.complete(), (5, -libc::ETIME));
            ring.submit(
                super::OP_POLL_ADD,
                rd.as_raw_fd(),
                0,
                0,
                libc::POLLIN as u32,
                5,
            );
            assert_eq!(
                ring.submit(OP_ASYNC_CANCEL, -1, 5, 0, 0, 6),
                OP_ASYNC_CANCEL
            );
            assert_eq!(ring.complete_two(), [(5, -libc::ECANCELED), (6, 0)]);

            // A cancel with flags (IORING_ASYNC_CANCEL_ALL) is left alone.
            ring.submit(OP_TIMEOUT, -1, ts(&long), 1, 0, 7);
            assert_eq!(
                ring.submit(OP_ASYNC_CANCEL, -1, 7, 0, 1, 8),
                OP_ASYNC_CANCEL
            );
            assert_eq!(ring.complete_two(), [(7, -libc::ECANCELED), (8, 1)]);
            assert_eq!(cancels_rewritten_on_this_thread() - rewritten, 2);
        })
        .join()
        .expect("ring thread");
    }

    /// The wrapped peek answers as liburing's own: the head of the queue,
    /// in order, then `-EAGAIN` with no completion; completions the kernel
    /// held back on an overflowing queue are flushed, not lost (the direct
    /// path leaves that case to liburing). Real ring, running kernel.
    #[test]
    fn the_peek_reads_the_queue_directly_and_loses_no_overflow() {
        use super::test_ring::Req;
        std::thread::spawn(|| {
            let mut ring = Ring::new();
            let mut cqe = std::ptr::null_mut();
            // SAFETY: a live ring of this thread.
            let direct = |ring: &mut Ring, cqe: &mut *mut super::Cqe| unsafe {
                super::peek_direct(ring.ptr(), cqe)
            };
            assert_eq!(direct(&mut ring, &mut cqe), Some(-libc::EAGAIN));
            assert!(cqe.is_null());
            assert_eq!(ring.try_next(), None);

            let nops = |first: u64| -> Vec<Req> {
                (first..first + 8)
                    .map(|user_data| Req {
                        user_data,
                        ..Req::default()
                    })
                    .collect()
            };
            ring.queue(&nops(1));
            assert_eq!(ring.submit_queued(), 8);
            // The head, where liburing's peek finds it.
            assert_eq!(direct(&mut ring, &mut cqe), Some(0));
            // SAFETY: the completion at the head, not yet seen.
            assert_eq!(unsafe { (*cqe).user_data }, 1);
            for want in 1..=8 {
                assert_eq!(ring.try_next(), Some((want, 0)));
            }
            assert_eq!(ring.try_next(), None);

            // A ring of 8 entries has 16 completion slots: 24 NOPs overflow
            // it by 8, which the kernel holds until a peek enters.
            for first in [11, 21, 31] {
                ring.queue(&nops(first));
                assert_eq!(ring.submit_queued(), 8);
            }
            let mut seen = Vec::new();
            while let Some((user_data, res)) = ring.try_next() {
                assert_eq!(res, 0);
                seen.push(user_data);
            }
            let want: Vec<u64> = [11..19, 21..29, 31..39].into_iter().flatten().collect();
            assert_eq!(seen, want, "every completion, in order");
            assert_eq!(direct(&mut ring, &mut cqe), Some(-libc::EAGAIN));
        })
        .join()
        .expect("ring thread");
    }

    /// A core that slept through the last window is not saturated; one that
    /// ran without a break through it is (the hold's load estimate, measured
    /// from the shim's sleep time on a real executor).
    #[test]
    fn a_core_is_saturated_only_when_it_did_not_sleep() {
        let verdicts = std::thread::spawn(|| {
            glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                .io_memory(64 * 1024)
                .make()
                .expect("executor")
                .run(async {
                    // glommio does not park until its eventfd is installed
                    // (its first milliseconds): let it settle first.
                    glommio::timer::sleep(LOAD_WINDOW * 5).await;
                    let first = saturated(Instant::now());
                    glommio::timer::sleep(LOAD_WINDOW * 3).await;
                    let after_sleep = saturated(Instant::now());
                    // Cached within the window, whatever happens in it.
                    let spin = |d| {
                        let start = Instant::now();
                        while start.elapsed() < d {
                            std::hint::spin_loop();
                        }
                    };
                    spin(LOAD_WINDOW / 4);
                    let cached = saturated(Instant::now());
                    spin(LOAD_WINDOW * 3);
                    let after_spin = saturated(Instant::now());
                    (first, after_sleep, cached, after_spin)
                })
        })
        .join()
        .expect("executor thread");
        assert_eq!(verdicts, (false, false, false, true));
    }
}
