//! Readiness waits of Remora's own, on glommio's main ring.
//!
//! glommio waits for a socket to become readable with a `POLL_ADD` on its
//! main ring, wrapped in its general request machinery: a `Source`
//! allocated per wait (an `Rc<RefCell>` of ~435 B), a clock read when it is
//! queued and one when it completes, a slot in its source map, a pass
//! through its submission queue's filter, its waker list. On an L4
//! keep-alive request (two waits, one per direction) that was about 2,600
//! of the 5,800 user-space instructions per request with 50 connections
//! (perf/EVENT_LOOP.md, "Session 39", which also has what it gave in CPU
//! time: little, on this machine kind).
//!
//! The kernel's side of such a wait is one `POLL_ADD`; this module makes
//! that request itself, on the same ring, and keeps only what it needs: a
//! slot per armed wait in a per-core slab (its state and the waker), the
//! slot's number in the request's `user_data`.
//! - **Submission.** The request is written straight into the ring's
//!   submission queue (liburing's `sqe_tail`), where glommio's next flush
//!   submits it with its own, in the same `io_uring_enter`: glommio counts
//!   what liburing has pending as work to submit (`io_uring_sq_ready`), so
//!   it neither sleeps with it pending nor needs telling. The submit
//!   wrapper takes this module's requests out of the count it returns, so
//!   glommio's own count of requests in flight stays its own.
//! - **Completion.** The `user_data` carries the shim's private bit
//!   (`keep::PRIVATE`) and [`TAG`]; the peek wrapper, which sees every
//!   completion glommio reads, hands such a completion here instead: the
//!   slot takes the result and its waker is woken.
//! - **Sleep.** glommio decides to sleep when its own completions woke no
//!   task; a task woken here is one it does not know of. So while a task
//!   woken here has not looked at its wait yet, the main ring's
//!   `io_uring_cq_ready` reports one completion more ([`hold_awake`]),
//!   which makes glommio's `can_sleep` false for that pass: it runs its
//!   task queues instead. Only once per batch of wake-ups: a task that is
//!   woken and never polls the wait again cannot keep the core awake.
//! - **Between passes.** After running its task queues dry glommio polls
//!   its rings once more and parks (a whole pass of its reactor, timers
//!   and all) unless that woke a task of its own; a wake-up here rings a
//!   doorbell instead, a glommio timer due at once, which it counts
//!   ([`ring_doorbell`]). Without it, 1.3 such passes per L4 request were
//!   added, and the instructions saved by the waits did not show as time.
//! - **Cancellation.** Dropping an armed wait cancels its request by
//!   `user_data` (`ASYNC_CANCEL`, queued the same way); its slot is freed
//!   when the poll's completion comes. Until then the kernel holds a
//!   reference to the socket, so it is not closed before the cancel goes
//!   in, with the next flush.
//! - **Fallback.** With no main ring known on this thread (before glommio's
//!   first submission on it), or a full submission queue, a wait is not
//!   armed ([`Readiness::arm`] returns false); the caller's task is woken
//!   after glommio's next submission on the ring ([`wait_for_room`]), which
//!   glommio makes in every pass of its reactor (its preemption timer), and
//!   tries again.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Waker};

use super::{LibUring, Sqe, OP_ASYNC_CANCEL, OP_POLL_ADD};

/// The bit (with `keep::PRIVATE`) that marks a completion as one of this
/// module's. The keeping's own private `user_data`s are `PRIVATE | serial
/// << 2 | kind` with serials far below 2^60, so never carry it.
pub(super) const TAG: u64 = 1 << 62;
/// The low bit: the completion of a cancel (dropped), not of a poll.
const CANCEL: u64 = 1;

fn user_data(slot: u32) -> u64 {
    super::keep::PRIVATE | TAG | (u64::from(slot) << 1)
}

enum State {
    Free,
    /// In the kernel (or on its way); the waker to wake when it completes.
    Armed(Option<Waker>),
    /// Completed (whatever the result: the poll's event mask, or an error
    /// such as the socket's closing, the I/O that follows tells); `woke`:
    /// its completion woke a task that has not looked at it yet.
    Done {
        woke: bool,
    },
    /// Its owner dropped it while armed: the cancel is on its way; freed
    /// when the poll's own completion comes.
    Orphan,
}

struct Slab {
    slots: Vec<State>,
    free: Vec<u32>,
}

thread_local! {
    static SLAB: RefCell<Slab> = const { RefCell::new(Slab { slots: Vec::new(), free: Vec::new() }) };
    /// This thread's main ring, as liburing's struct (where glommio keeps
    /// it, which does not move once glommio's reactor is built): learnt from
    /// glommio's first submission on it ([`remember_ring`]).
    static RING: Cell<*mut LibUring> = const { Cell::new(std::ptr::null_mut()) };
    /// Requests of this module written to the ring and not submitted yet.
    static UNSUBMITTED: Cell<u32> = const { Cell::new(0) };
    /// Completions that woke a task that has not polled its wait since.
    static UNSEEN: Cell<u32> = const { Cell::new(0) };
    /// A completion woke a task since the core last slept or was kept
    /// awake for it ([`hold_awake`]).
    static WOKE: Cell<bool> = const { Cell::new(false) };
    /// Cancels that found the submission queue full: written with the next
    /// submission that has room.
    static DEFERRED_CANCELS: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// A task polled a wait since glommio last looked at its latency ring
    /// (the first thing each pass of its reactor does; [`new_pass`]).
    static TASKS_RAN: Cell<bool> = const { Cell::new(false) };
    /// The doorbell: one glommio timer per core, charged to fire at once
    /// when a task is woken here between glommio's run of its task queues
    /// and its next pass ([`ring_doorbell`]).
    static DOORBELL: RefCell<Option<glommio::timer::Timer>> = const { RefCell::new(None) };
    /// The doorbell is charged and has not fired yet.
    static DOORBELL_CHARGED: Cell<bool> = const { Cell::new(false) };
    /// Tasks that found no wait could be armed (no main ring known yet, or
    /// its submission queue full): woken after the next submission on it.
    static ROOM_WAITERS: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// A wait could not be armed ([`Readiness::arm`] returned false): wakes
/// `cx`'s task after glommio's next submission on the main ring, which
/// learns the ring or empties its queue. glommio submits on it in every
/// pass of its reactor (its preemption timer), so the wait is one pass,
/// with no spinning.
pub fn wait_for_room(cx: &Context<'_>) {
    ROOM_WAITERS.with(|w| w.borrow_mut().push(cx.waker().clone()));
}

/// After a submission on the main ring: the tasks waiting for room run.
pub(super) fn submitted() {
    let waiters = ROOM_WAITERS.with(|w| {
        let mut w = w.borrow_mut();
        if w.is_empty() {
            None
        } else {
            Some(std::mem::take(&mut *w))
        }
    });
    if let Some(waiters) = waiters {
        for w in waiters {
            w.wake();
        }
        // Woken inside glommio's reactor, which counts none of them: the
        // doorbell keeps it from sleeping before they run.
        charge_doorbell();
    }
}

/// glommio is about to submit on `ring`, this thread's main ring: from now
/// on waits are armed on it.
pub(super) fn remember_ring(ring: *mut LibUring) {
    RING.with(|r| r.set(ring));
}

/// `ring` is going away: waits fall back to glommio's. Armed ones complete
/// with the ring (their tasks go with the executor).
pub(super) fn forget_ring(ring_fd: i32) {
    RING.with(|r| {
        // SAFETY: a remembered ring is live until its exit, which calls this
        // first.
        if !r.get().is_null() && unsafe { (*r.get()).ring_fd } == ring_fd {
            r.set(std::ptr::null_mut());
        }
    });
}

/// How many of the requests pending on the main ring are this module's
/// (taken out of what glommio is told it submitted); reset as they go in.
pub(super) fn take_unsubmitted() -> u32 {
    UNSUBMITTED.with(|u| u.replace(0))
}

/// Before a submission on the main ring: the cancels that found the queue
/// full go in now, as far as it has room.
///
/// # Safety
/// `ring` is this thread's live main ring.
pub(super) unsafe fn flush_deferred(ring: *mut LibUring) {
    DEFERRED_CANCELS.with(|d| {
        let mut d = d.borrow_mut();
        while let Some(&target) = d.last() {
            if !push(ring, OP_ASYNC_CANCEL, -1, 0, target, target | CANCEL) {
                return;
            }
            d.pop();
        }
    });
}

/// Whether waits can be armed here on this thread.
pub fn available() -> bool {
    !RING.with(Cell::get).is_null()
}

/// Writes one request into `ring`'s submission queue; false when it is full.
///
/// # Safety
/// `ring` is this thread's live main ring, and glommio is not in the middle
/// of preparing a chain (true outside its reactor, where tasks run).
unsafe fn push(
    ring: *mut LibUring,
    opcode: u8,
    fd: i32,
    events: u32,
    addr: u64,
    user_data: u64,
) -> bool {
    let sq = &mut (*ring).sq;
    let khead = (*(sq.khead as *const AtomicU32)).load(Ordering::Acquire);
    if sq.sqe_tail.wrapping_sub(khead) >= *sq.kring_entries {
        return false;
    }
    let sqe = (sq.sqes as *mut Sqe).add((sq.sqe_tail & *sq.kring_mask) as usize);
    std::ptr::write_bytes(sqe, 0, 1);
    (*sqe).opcode = opcode;
    (*sqe).fd = fd;
    (*sqe).op_flags = events;
    (*sqe).addr = addr;
    (*sqe).user_data = user_data;
    sq.sqe_tail = sq.sqe_tail.wrapping_add(1);
    UNSUBMITTED.with(|u| u.set(u.get() + 1));
    true
}

/// A completion of this module's (`user_data` has [`TAG`]): the slot is
/// done and its waker is woken; a cancel's is dropped.
pub(super) fn complete(user_data: u64) {
    if user_data & CANCEL != 0 {
        return;
    }
    let slot = ((user_data & !(super::keep::PRIVATE | TAG)) >> 1) as usize;
    let waker = SLAB.with(|s| {
        let mut s = s.borrow_mut();
        let state = s.slots.get_mut(slot)?;
        match std::mem::replace(state, State::Free) {
            State::Armed(waker) => {
                *state = State::Done {
                    woke: waker.is_some(),
                };
                waker
            }
            State::Orphan => {
                s.free.push(slot as u32);
                None
            }
            // Not armed: not ours to complete (cannot happen; kept as it was).
            other => {
                *state = other;
                None
            }
        }
    });
    if let Some(waker) = waker {
        UNSEEN.with(|u| u.set(u.get() + 1));
        WOKE.with(|w| w.set(true));
        waker.wake();
        ring_doorbell();
    }
}

/// glommio's reactor starts a pass (it peeks its latency ring first).
pub(super) fn new_pass() {
    TASKS_RAN.with(|t| t.set(false));
}

/// The doorbell's waker: marks it fired.
fn doorbell_waker() -> Waker {
    use std::task::{RawWaker, RawWakerVTable};
    fn clone(_: *const ()) -> RawWaker {
        RawWaker::new(std::ptr::null(), &VTABLE)
    }
    fn wake(_: *const ()) {
        DOORBELL_CHARGED.with(|c| c.set(false));
    }
    fn drop(_: *const ()) {}
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, wake, wake, drop);
    // SAFETY: the functions ignore the data pointer, which is never read.
    unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) }
}

/// Makes glommio count a wake-up at its next look at its timers.
///
/// After running its task queues dry, glommio polls its rings once more
/// (`spin_poll_io`) and parks unless that woke a task it knows of: a task
/// woken here would cost it a whole pass of its reactor (with its timers'
/// work) before the task runs. A glommio timer due now is a wake-up it
/// counts, so the task runs at once, as it would after glommio's own
/// poll. Rung only for wake-ups after tasks ran in the current pass (those
/// in the reactor's own passes are followed by a run of the task queues
/// anyway), and once until it fires.
fn ring_doorbell() {
    if TASKS_RAN.with(Cell::get) {
        charge_doorbell();
    }
}

/// Charges the doorbell (see [`ring_doorbell`]) unless it is charged.
fn charge_doorbell() {
    if DOORBELL_CHARGED.with(Cell::get) {
        return;
    }
    DOORBELL.with(|d| {
        let mut d = d.borrow_mut();
        let timer = d.get_or_insert_with(|| glommio::timer::Timer::new(HOUR));
        // Registered far ahead with the doorbell's waker, then moved to now:
        // glommio registers a timer only while it is not due yet.
        timer.reset(HOUR);
        let waker = doorbell_waker();
        let mut cx = Context::from_waker(&waker);
        if std::future::Future::poll(std::pin::Pin::new(&mut *timer), &mut cx).is_pending() {
            timer.reset(std::time::Duration::ZERO);
            DOORBELL_CHARGED.with(|c| c.set(true));
        }
    });
}

const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);

/// Whether the main ring should report one completion more than it holds,
/// so that glommio does not sleep: a task woken here has not run since,
/// and glommio has not been kept awake for it yet (see the module doc).
pub(super) fn hold_awake() -> bool {
    UNSEEN.with(Cell::get) > 0 && WOKE.with(|w| w.replace(false))
}

/// The core goes to sleep: wake-ups before it are old news.
pub(super) fn slept() {
    WOKE.with(|w| w.set(false));
}

/// One readiness wait on a socket, re-armed as often as needed. Holds a
/// slot of the per-core slab while armed or completed.
#[derive(Debug)]
pub struct Readiness {
    slot: u32,
}

const NONE: u32 = u32::MAX;

/// What [`Readiness::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No wait armed, or the armed one fired: try the I/O.
    Go,
    /// Armed and not fired: the socket has had nothing new since.
    Waiting,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Readiness {
    pub const fn new() -> Readiness {
        Readiness { slot: NONE }
    }

    /// Looks at the wait: a fired one is consumed (`Go`); an armed one
    /// takes `cx`'s waker, if given, in place of the one it had.
    pub fn check(&mut self, cx: Option<&Context<'_>>) -> Check {
        TASKS_RAN.with(|t| t.set(true));
        if self.slot == NONE {
            return Check::Go;
        }
        let fired = SLAB.with(|s| {
            let mut s = s.borrow_mut();
            let state = &mut s.slots[self.slot as usize];
            match state {
                State::Armed(w) => {
                    if let Some(cx) = cx {
                        match w {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => *w = Some(cx.waker().clone()),
                        }
                    }
                    false
                }
                State::Done { woke, .. } => {
                    if *woke {
                        UNSEEN.with(|u| u.set(u.get() - 1));
                    }
                    *state = State::Free;
                    s.free.push(self.slot);
                    true
                }
                // A held slot is armed or done; were it not, the socket
                // would be read, which is always safe.
                State::Free | State::Orphan => {
                    debug_assert!(false, "a held slot is armed or done");
                    true
                }
            }
        });
        if fired {
            self.slot = NONE;
            Check::Go
        } else {
            Check::Waiting
        }
    }

    /// Arms a wait for `fd` to become readable (or to have an error or
    /// hang-up), to wake `cx`'s task (none: an early wait, looked at by the
    /// next [`check`](Readiness::check)). False when it cannot be armed
    /// here (no main ring known, or its queue full): the caller waits the
    /// glommio way. Must not be armed already.
    pub fn arm(&mut self, fd: i32, cx: Option<&Context<'_>>) -> bool {
        self.arm_for(fd, libc::POLLIN as u32, cx)
    }

    /// [`arm`](Readiness::arm) for `events` (`POLLIN`, `POLLOUT`; an error
    /// or hang-up always fires it).
    pub fn arm_for(&mut self, fd: i32, events: u32, cx: Option<&Context<'_>>) -> bool {
        debug_assert_eq!(self.slot, NONE, "armed twice");
        let ring = RING.with(Cell::get);
        if ring.is_null() {
            return false;
        }
        let slot = SLAB.with(|s| {
            let mut s = s.borrow_mut();
            match s.free.pop() {
                Some(i) => i,
                None => {
                    s.slots.push(State::Free);
                    (s.slots.len() - 1) as u32
                }
            }
        });
        // SAFETY: a remembered ring is this thread's live main ring; tasks
        // run outside glommio's reactor.
        let pushed = unsafe { push(ring, OP_POLL_ADD, fd, events, 0, user_data(slot)) };
        SLAB.with(|s| {
            let mut s = s.borrow_mut();
            if pushed {
                s.slots[slot as usize] = State::Armed(cx.map(|cx| cx.waker().clone()));
            } else {
                s.free.push(slot);
            }
        });
        if pushed {
            self.slot = slot;
        }
        pushed
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        if self.slot == NONE {
            return;
        }
        let slot = self.slot;
        let armed = SLAB.with(|s| {
            let mut s = s.borrow_mut();
            let state = &mut s.slots[slot as usize];
            match state {
                State::Armed(_) => {
                    *state = State::Orphan;
                    true
                }
                State::Done { woke, .. } => {
                    if *woke {
                        UNSEEN.with(|u| u.set(u.get() - 1));
                    }
                    *state = State::Free;
                    s.free.push(slot);
                    false
                }
                State::Free | State::Orphan => false,
            }
        });
        if !armed {
            return;
        }
        let target = user_data(slot);
        let ring = RING.with(Cell::get);
        // SAFETY: as in `arm`.
        let pushed = !ring.is_null()
            && unsafe { push(ring, OP_ASYNC_CANCEL, -1, 0, target, target | CANCEL) };
        if !pushed {
            DEFERRED_CANCELS.with(|d| d.borrow_mut().push(target));
        }
    }
}

/// How many slots of this thread's slab are in use (armed, fired or
/// orphaned): for tests.
pub fn slots_in_use() -> usize {
    SLAB.with(|s| {
        let s = s.borrow();
        s.slots.len() - s.free.len()
    })
}
