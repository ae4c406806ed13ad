//! glommio's preemption timers kept armed across the passes of its loop.
//!
//! On every pass glommio 0.9 drops both its preemption timers and arms new
//! ones (`Reactor::wait`): on the main ring a cancel and a new count timer
//! linked to an eventfd write, on the latency ring a cancel and, in a
//! second submission, a new timer of the preemption period. Each of those
//! is a request the kernel arms, removes and completes, and the latency
//! ring's two submissions are two `io_uring_enter`s of their own: per
//! request on the inbound sidecar, 5 of Remora's 7 ring submissions and 1.35
//! of its 4 enters (perf/EVENT_LOOP.md, "Session 33"). A timer that has not
//! fired yet, replaced by one of the same length, could as well stay.
//!
//! So the shim keeps it. What glommio submits goes through
//! [`on_submit`] first:
//! - a timeout request (relative, with or without one linked request) is
//!   given a `user_data` of the shim's ([`PRIVATE`] set), and the shim
//!   remembers whose it is;
//! - a cancel of it is taken out of the submission, and the completions a
//!   cancel gives (the timer's and its link's `-ECANCELED`, the cancel's 0)
//!   are queued for glommio in user space: the timer stays armed in the
//!   kernel, *orphaned*;
//! - a new timeout with the same count and linked request *adopts* an
//!   orphan that fires when the new one would, give or take 1/16 of its
//!   length ([`Kept::adoptable_for`]): a preemption timer of the same
//!   length that has run at most 1/16 of it, a sleep's timer armed for the
//!   same deadline, a count timer that has seen at most 1/4 of the
//!   completions it counts ([`Kept::fresh`]). It is taken out of the
//!   submission too, and the orphan's completions will be given to it;
//! - an orphan stays armed while a timeout like the one it last stood for
//!   could still adopt it: glommio cancels the preemption timer before each
//!   sleep and arms it again after, and arms a timer for its earliest
//!   deadline before each sleep, so on a busy core both are adopted from
//!   sleep to sleep. Once it is *stale* ([`Kept::stale`]) it is removed for
//!   real, by a `TIMEOUT_REMOVE` added to the next submission on its ring.
//!
//! glommio reads completions through liburing's `io_uring_peek_cqe` and
//! `io_uring_cqe_seen` (the copies in its `rusturing.c`), which the shim
//! wraps: queued completions come first; a kernel completion with a
//! private `user_data` gets its owner's back, or is dropped when nobody owns
//! it any more. `io_uring_cq_ready` counts the queued ones too, and a sleep
//! (`__io_uring_get_cqe` with `wait_nr`) returns at once while any is queued.
//!
//! Why it is safe for glommio:
//! - every request glommio submits gets exactly the completions it would
//!   have got (a cancelled timer `-ECANCELED` once, its link once, the
//!   cancel 0), so its sources and its count of requests in flight stay
//!   right;
//! - an adopted timer fires no later than the one it stands for, or for a
//!   sleep's timer at most 50 µs later ([`LATE`], the kernel's default
//!   timer slack): a preemption or count timer was armed earlier with the
//!   same relative length (or the same completion count), so it can only
//!   fire earlier. For a preemption timer that is a task asked to yield
//!   sooner (at most once per period), for a sleep's timer a wake-up
//!   glommio checks against its clock anyway;
//! - and not much earlier: at least 15/16 of its length (or 3/4 of its
//!   count) after the arm it stands for. glommio parks with runnable tasks
//!   if its preemption timer fires between its arm and the run of the task
//!   queues ([`Kept::fresh`]); a timer adopted at any age made that likely
//!   under CPU contention (the stall that kept the keeping off by default
//!   in session 34);
//! - the one linked request kept with a timer is compared byte for byte
//!   (glommio's is an 8-byte eventfd write from a static buffer), so the
//!   kernel runs the same request at the same address;
//! - an orphan left in the kernel fires at most once, and its completion is
//!   dropped: one spurious preemption of a busy core, or one wake-up of a
//!   sleeping one (a core that goes idle keeps its last preemption timer
//!   and wakes once when it fires, at most a preemption period later). The
//!   timer glommio arms after that wake-up and cancels before the next
//!   sleep is not kept but removed at once ([`Kept::at_once`]): kept, it
//!   would wake the idle core a period later, and the next one a period
//!   after that, ten times a second for as long as the core stays idle.
//!
//! **The poll that links the rings is kept too.** Before each sleep in its
//! main ring glommio submits a `POLL_ADD` on its latency ring's descriptor,
//! so that a timer's completion there wakes the sleep, and never cancels
//! it: a sleep woken by a socket leaves it armed, and the next sleep arms
//! another beside it (dozens pile up on a busy core, and fire together at
//! the next timer). The shim lets the next one *adopt* the one still armed
//! instead ([`KeptPoll`]): taken out of the submission, it gets the armed
//! poll's completion when that comes, as every other adopter does. A poll
//! still armed means no completion has been posted on the latency ring since
//! it was armed (its wake-up, if one is on its way as the main ring's task
//! work, runs in the sleep's own `GETEVENTS` enter and ends it at once), so
//! it wakes the sleep exactly when a new one would. That is one enter and
//! one poll arm less per sleep: -3.9 % CPU per L4 request and -1.9 % per L7
//! request at a paced 20,000 req/s (perf/README.md, "Session 42"). It is
//! not switchable: glommio's behaviour is unchanged but for the count of
//! its sleeps' requests that reach the kernel.
//!
//! **The keeping of timers is on by default** (since session 35). Until the
//! freshness rule above, it was off: under CPU contention
//! `tests/l4_fairness.rs`'s copy pump stalled with it on (5 runs in 66
//! beside three busy loops, 0 in 80 with it off; with the rule, 0 in 100).
//! `REMORA_URING_KEEP_TIMERS=0` in the environment turns it off (for A/B
//! measurements), and [`keep_on_this_thread`] switches it for one thread
//! (its tests).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};

/// A moment as nanoseconds of `CLOCK_MONOTONIC` ([`nanos_now`]), the
/// clock of `Instant` and of the ring's relative timeouts: plain integers,
/// so the keeping's comparisons cost what an integer compare costs
/// (`Instant` arithmetic normalises seconds and nanoseconds on every add).
type Nanos = u64;

fn nanos_now() -> Nanos {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write; CLOCK_MONOTONIC cannot fail here
    // (the vDSO answers it), and if it did the zeroes only make every kept
    // timer look young, which the stale clause for sleeps still bounds.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The clock, read at most once per submission and only when needed.
struct Clock(Option<Nanos>);

impl Clock {
    fn now(&mut self) -> Nanos {
        *self.0.get_or_insert_with(nanos_now)
    }
}

use super::{LibUring, Sqe, OP_ASYNC_CANCEL, OP_POLL_ADD, OP_TIMEOUT, OP_TIMEOUT_REMOVE};

/// `IOSQE_IO_LINK` and `IOSQE_IO_HARDLINK` (linux/io_uring.h).
const IOSQE_IO_LINK: u8 = 1 << 2;
const IOSQE_IO_HARDLINK: u8 = 1 << 3;
/// `IORING_OP_LINK_TIMEOUT`: never kept as a timer's link.
const OP_LINK_TIMEOUT: u8 = 15;

/// The bit that marks a `user_data` as the shim's. glommio's are its slot
/// numbers plus one (0 for requests whose completion it ignores); liburing's
/// own marker is `u64::MAX`, which no private `user_data` equals (see
/// [`private`]).
pub(super) const PRIVATE: u64 = 1 << 63;
const KIND_TIMER: u64 = 0;
const KIND_LINK: u64 = 1;
const KIND_REMOVAL: u64 = 2;
/// A kept poll of the latency ring ([`KeptPoll`]).
const KIND_POLL: u64 = 3;

/// The private `user_data` of the kept timer `serial`'s timer, link or
/// removal, or of the kept poll `serial`. Serials start at 1 and stay far
/// below 2^60, so it is never `u64::MAX` and never carries `ready::TAG`.
fn private(serial: u64, kind: u64) -> u64 {
    PRIVATE | (serial << 2) | kind
}

/// At most this many timers are kept per ring; a timeout submitted while
/// that many are goes in as glommio made it. glommio has two per ring at
/// most (a preemption timer and a sleep's timer), orphans included.
const MAX_KEPT: usize = 8;

/// `struct io_uring_cqe` without the big-CQE tail (glommio's rings have none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cqe {
    pub user_data: u64,
    pub res: i32,
    pub flags: u32,
}

/// `struct __kernel_timespec`.
#[repr(C)]
struct KernelTimespec {
    sec: i64,
    nsec: i64,
}

/// What makes two timeout requests interchangeable: the same relative
/// length, the same completion count, the same linked request.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Shape {
    sec: i64,
    nsec: i64,
    count: u64,
    /// The linked request's 64 bytes, its `user_data` zeroed.
    link: Option<[u8; 64]>,
}

impl Shape {
    /// The timer's length in nanoseconds; None for a malformed timespec.
    fn nanos(&self) -> Option<u128> {
        (self.sec >= 0 && (0..1_000_000_000).contains(&self.nsec))
            .then(|| self.sec as u128 * 1_000_000_000 + self.nsec as u128)
    }

    /// The length of a timer that fires by time, and when it fires if armed
    /// `now`: None for a count timer (glommio's never fires by time), a
    /// malformed timespec or a length beyond `Nanos`. Such timers are
    /// adopted only by their exact shape.
    fn timed(&self, now: Nanos) -> Option<(Nanos, Nanos)> {
        if self.count != 0 {
            return None;
        }
        let len = Nanos::try_from(self.nanos()?).ok()?;
        Some((len, now.checked_add(len)?))
    }
}

/// Whether a timer that fires at `expiry` can stand for a timeout of `len`
/// armed `now` (that would fire at `now + len`): not earlier than 15/16 of
/// `len` after `now`, and not later than [`LATE`] (at most 1/16 of `len`)
/// after `now + len`.
fn in_window(expiry: Nanos, now: Nanos, len: Nanos) -> bool {
    let early = len / ADOPT_AGE_FRACTION as Nanos;
    let Some(wanted) = now.checked_add(len) else {
        return false;
    };
    expiry.saturating_add(early) >= wanted && expiry <= wanted.saturating_add(early.min(LATE))
}

/// How much later than the timeout it stands for an adopted timer may fire:
/// the kernel's default timer slack for a normal thread (a sleep of any
/// thread already wakes up to this late). glommio's sleeps arm a timer for
/// its earliest deadline measured from its own clock read, a few
/// microseconds before the shim's, so two sleeps for the same deadline
/// differ by that much either way. A preemption timer is replaced by one of
/// its own length, which an older timer never outlasts.
const LATE: Nanos = 50_000;

/// A kept timer is adopted only while it has run at most this fraction of
/// its length, or seen at most `count / ADOPT_COUNT_FRACTION` of the
/// completions it counts (see [`Kept::fresh`]).
const ADOPT_AGE_FRACTION: u128 = 16;
const ADOPT_COUNT_FRACTION: u64 = 4;

/// A timeout the kernel holds under a private `user_data`.
struct Kept {
    serial: u64,
    shape: Shape,
    /// When it went to the kernel, and the ring's completion tail then.
    armed_at: Nanos,
    armed_tail: u32,
    /// When it fires by time, for a timer that does ([`Shape::timed`]).
    expiry: Option<Nanos>,
    /// The length of the timeout it last stood for: its own, or its latest
    /// adopter's ([`Kept::stale`]).
    stands_for: Nanos,
    /// glommio's `user_data` for it while glommio has it armed: what a
    /// cancel of it names. None once cancelled (an orphan) or fired.
    owner: Option<u64>,
    /// Where its completions go: glommio's `user_data` for the timer and
    /// for its link. None for an orphan: they are dropped.
    deliver: Option<(u64, u64)>,
    /// Its completion has come from the kernel.
    fired: bool,
    /// Its link's completion has come (or it has none).
    link_done: bool,
    /// The ring's submission in which it was orphaned.
    orphaned_at: u64,
    /// A real removal of it is on its way.
    removing: bool,
    /// Removed in the submission that orphans it, not left for the next:
    /// cancelled after an orphan of its ring fired ([`RingKeep::orphan_fired`]).
    at_once: bool,
}

impl Kept {
    /// Whether this orphan can stand for a timeout of `shape` armed `now`,
    /// with the ring's completion tail at `tail`. The same count and linked
    /// request, and then: a timer that fires by time must fire within the
    /// window of the new one ([`in_window`]: a preemption timer of the same
    /// length has run at most 1/16 of it; a sleep's timer for the same
    /// deadline qualifies whatever its length); a count timer must be
    /// [`fresh`](Kept::fresh) and of the same length. `timed` is
    /// `shape.timed(now)`, worked out once for all the candidates.
    fn adoptable_for(
        &self,
        shape: &Shape,
        timed: Option<(Nanos, Nanos)>,
        now: Nanos,
        tail: u32,
    ) -> bool {
        if self.owner.is_some()
            || self.fired
            || self.removing
            || self.shape.count != shape.count
            || self.shape.link != shape.link
        {
            return false;
        }
        match (self.expiry, timed) {
            (Some(expiry), Some((len, _))) => in_window(expiry, now, len),
            _ => self.shape == *shape && self.fresh(now, tail),
        }
    }

    /// An orphan no timeout like the one it last stood for could adopt any
    /// more, were it armed `now`: removed for real ([`on_submit`]). Until
    /// then it stays armed for the next one. glommio cancels its latency
    /// ring's preemption timer before each sleep and arms it again after,
    /// and arms the sleep's own timer, for the deadline of its earliest
    /// timer, again before each sleep: kept, both are adopted across the
    /// sleeps of a busy core instead of going to the kernel and being
    /// removed twice per sleep. An orphan that does fire is one spurious
    /// preemption or wake-up, and its completion is dropped.
    ///
    /// A core that goes idle would keep its last preemption timer through
    /// the sleep and be woken when it fires, then again by the next one,
    /// once per preemption period. So an orphan counts as stale too once a
    /// sleep of the core (`slept`, its latest) has outlasted the time it
    /// could wait for adoption (1/16 of what it stood for). That removes it
    /// at the ring's next submission, which a sleep with a timer pending
    /// makes (the sleep's own timer); a sleep with none makes no other, so
    /// after an orphan has fired the next cancelled timer is removed in the
    /// cancel's own submission ([`Kept::at_once`]): an idle core wakes once
    /// for its kept timer and then sleeps without one.
    fn stale(&self, now: Nanos, tail: u32, slept: Nanos) -> bool {
        match self.expiry {
            Some(expiry) => {
                !in_window(expiry, now, self.stands_for)
                    || slept > self.stands_for / ADOPT_AGE_FRACTION as Nanos
            }
            None => !self.fresh(now, tail),
        }
    }

    /// Whether it can still stand for a timeout of its shape armed `now`,
    /// with the ring's completion tail at `tail`: it has run at most a
    /// sixteenth of its length and seen at most a quarter of the
    /// completions it counts. It then fires at least 15/16 of its length
    /// (or after 3/4 of its count) after the arm it stands for, as glommio
    /// expects of a preemption timer it has just armed.
    ///
    /// glommio 0.9 arms the preemption timer and then runs its task
    /// queues; if the timer has fired by then, it runs nothing, takes the
    /// pass for an idle one and parks with runnable tasks until some other
    /// event (turn.rs, "A shorter preemption period is no cure"). A fresh
    /// 100 ms timer makes that need a 100 ms descheduling; a kept one,
    /// armed up to 100 ms earlier, only needs it to expire in the
    /// microseconds between the arm and the check, which CPU contention
    /// makes likely: without this rule, tests/l4_fairness.rs's copy pump
    /// stalled in 5 runs of 66 beside three busy loops (0 of 100 with it).
    fn fresh(&self, now: Nanos, tail: u32) -> bool {
        let young = self.shape.nanos().is_some_and(|len| {
            u128::from(now.saturating_sub(self.armed_at)) <= len / ADOPT_AGE_FRACTION
        });
        let counted = self.shape.count == 0
            || u64::from(tail.wrapping_sub(self.armed_tail))
                <= self.shape.count / ADOPT_COUNT_FRACTION;
        young && counted
    }

    /// Orphaned, not fired, and no removal sent yet.
    fn awaits_removal(&self) -> bool {
        self.owner.is_none() && !self.fired && !self.removing
    }

    fn finished(&self) -> bool {
        self.fired && self.link_done
    }
}

/// glommio's poll of its latency ring's descriptor, kept armed in the
/// kernel from one sleep to the next (see the module doc).
#[derive(Default)]
struct KeptPoll {
    /// The armed poll's serial; 0 while none is armed.
    serial: u64,
    /// The poll's event mask (`poll32_events`): a poll adopts it only with
    /// the same one.
    mask: u32,
    /// glommio's `user_data`s of the polls it stands for, oldest first:
    /// its completion goes to each of them.
    waiters: Vec<u64>,
}

impl KeptPoll {
    fn armed(&self) -> bool {
        self.serial != 0
    }
}

/// One ring as the keeping sees it.
struct RingKeep {
    fd: i32,
    kept: Vec<Kept>,
    /// The poll of the latency ring armed on this ring, until its
    /// completion comes.
    poll: KeptPoll,
    /// Completions for glommio that no kernel completion carries.
    fakes: VecDeque<Cqe>,
    /// Submissions seen on this ring.
    submissions: u64,
    /// Scratch: which of a submission's requests are taken out.
    taken: Vec<bool>,
    /// An orphan of this ring fired by time: nothing adopted it for a
    /// whole period, so the core sleeps long. The next timer cancelled here
    /// is removed at once ([`Kept::at_once`]).
    orphan_fired: bool,
}

/// This thread's rings, and what the keeping did on them.
struct Keep {
    rings: Vec<RingKeep>,
    serial: u64,
    adopted: u64,
    removed: u64,
    polls_adopted: u64,
}

impl Keep {
    fn ring(&mut self, fd: i32) -> &mut RingKeep {
        match self.rings.iter().position(|r| r.fd == fd) {
            Some(i) => &mut self.rings[i],
            None => {
                self.rings.push(RingKeep {
                    fd,
                    kept: Vec::new(),
                    poll: KeptPoll::default(),
                    fakes: VecDeque::new(),
                    submissions: 0,
                    taken: Vec::new(),
                    orphan_fired: false,
                });
                self.rings.last_mut().expect("just pushed")
            }
        }
    }
}

thread_local! {
    static KEEP: RefCell<Keep> = const {
        RefCell::new(Keep {
            rings: Vec::new(),
            serial: 0,
            adopted: 0,
            removed: 0,
            polls_adopted: 0,
        })
    };
    /// Completions queued for glommio on this thread, all rings: the
    /// wrappers' fast path (no borrow while it is 0).
    static QUEUED: Cell<usize> = const { Cell::new(0) };
    /// Some ring of this thread may hold a stale orphan awaiting its
    /// removal (set after each submission the keeping looked at). One not
    /// stale yet is looked at again with the next submission that carries
    /// a timer or a cancel: every pass of glommio's loop makes one.
    static ORPHANS: Cell<bool> = const { Cell::new(false) };
    /// This thread has given a timeout to the kernel under a private
    /// `user_data`: its cancels and completions need the keeping's care
    /// even once the keeping is switched off.
    static EVER_KEPT: Cell<bool> = const { Cell::new(false) };
    /// Keeping switched on or off for this thread ([`keep_on_this_thread`]).
    static HERE: Cell<Option<bool>> = const { Cell::new(None) };
}

pub(super) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    HERE.with(Cell::get).unwrap_or_else(|| {
        *ON.get_or_init(|| std::env::var_os("REMORA_URING_KEEP_TIMERS").is_none_or(|v| v != "0"))
    })
}

/// Turns the keeping of timers on or off for rings used on this thread from
/// now on, whatever the environment says (on by default: see the module
/// doc). Timers already kept are still served: their cancels and
/// completions are handled as before.
pub fn keep_on_this_thread(on: bool) {
    HERE.with(|o| o.set(Some(on)));
}

/// How many timeouts glommio submitted on this thread that adopted a kept
/// timer instead of going to the kernel.
pub fn timers_adopted_on_this_thread() -> u64 {
    KEEP.with(|k| k.borrow().adopted)
}

/// How many of glommio's polls of its latency ring on this thread adopted
/// the one still armed instead of going to the kernel.
pub fn link_polls_adopted_on_this_thread() -> u64 {
    KEEP.with(|k| k.borrow().polls_adopted)
}

/// How many kept timers this thread removed for real (orphans no timeout
/// adopted).
pub fn orphans_removed_on_this_thread() -> u64 {
    KEEP.with(|k| k.borrow().removed)
}

/// What [`on_submit`] did to a submission: requests taken out (glommio
/// counts them as submitted) and removals added (it does not).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub(super) struct Outcome {
    pub taken: u32,
    pub added: u32,
}

/// Whether the request at `k` of a submission starts a chain: no request
/// before it in the submission links to it.
unsafe fn starts_chain(slot: &impl Fn(u32) -> *mut Sqe, k: u32) -> bool {
    k == 0 || (*slot(k - 1)).flags & (IOSQE_IO_LINK | IOSQE_IO_HARDLINK) == 0
}

/// The target of a cancel glommio makes (`ASYNC_CANCEL` by `user_data`,
/// without flags, or the `TIMEOUT_REMOVE` it becomes), if it is one.
fn cancel_target(sqe: &Sqe) -> Option<u64> {
    let plain = sqe.op_flags == 0
        && sqe.flags == 0
        && sqe.ioprio == 0
        && sqe.len == 0
        && sqe.buf_index == 0
        && sqe.splice_fd_in == 0;
    (plain && (sqe.opcode == OP_ASYNC_CANCEL || sqe.opcode == OP_TIMEOUT_REMOVE))
        .then_some(sqe.addr)
}

/// A cancel answered in user space: `-ECANCELED` for each request it ends
/// (`ended`, glommio's `user_data`s), then the cancel's own 0.
fn answer_cancel(fakes: &mut VecDeque<Cqe>, ended: &[u64], cancel: u64) {
    for &user_data in ended {
        fakes.push_back(Cqe {
            user_data,
            res: -libc::ECANCELED,
            flags: 0,
        });
    }
    fakes.push_back(Cqe {
        user_data: cancel,
        res: 0,
        flags: 0,
    });
}

/// Takes the submission about to go to `ring` through the keeping (see the
/// module doc; `keeping` is [`enabled`], read once by the caller): cancels
/// of kept timers and timeouts that adopt an orphan are taken out (the
/// rest move down to close the gap), new timeouts are given private
/// `user_data`s, and removals of orphans no submission adopted are added
/// at the end when the queue has room.
///
/// # Safety
/// `ring` is a live liburing ring used on this thread; its pending
/// requests (`sqe_head..sqe_tail`) are filled in and not yet submitted.
pub(super) unsafe fn on_submit(ring: *mut LibUring, keeping: bool) -> Outcome {
    let sq = &mut (*ring).sq;
    let pending = sq.sqe_tail.wrapping_sub(sq.sqe_head);
    if pending == 0 {
        return Outcome::default();
    }
    let fd = (*ring).ring_fd;
    let mask = *sq.kring_mask;
    let sqes = sq.sqes as *mut Sqe;
    let head = sq.sqe_head;
    let slot = move |k: u32| sqes.add((head.wrapping_add(k) & mask) as usize);
    // Most submissions (a pass's polls) hold no timeout, no cancel and no
    // poll of the latency ring: nothing to do unless a stale orphan waits
    // for its removal.
    let link_fd = super::latency_ring_fd();
    let (mut timers, mut polls) = (false, false);
    for k in 0..pending {
        let sqe = &*slot(k);
        match sqe.opcode {
            OP_TIMEOUT | OP_ASYNC_CANCEL | OP_TIMEOUT_REMOVE => timers = true,
            OP_POLL_ADD => polls |= sqe.fd == link_fd,
            _ => {}
        }
    }
    // No poll of the latency ring, no orphan due, and no timer or cancel
    // the keeping could serve (none here, or keeping off and never on for
    // this thread): nothing to do.
    let timers_served = timers && (keeping || EVER_KEPT.with(Cell::get));
    if !polls && !timers_served && !ORPHANS.with(Cell::get) {
        return Outcome::default();
    }
    KEEP.with(|keep| {
        let mut keep = keep.borrow_mut();
        let keep = &mut *keep;
        if !keeping
            && !polls
            && keep
                .rings
                .iter()
                .all(|r| r.fd != fd || (r.kept.is_empty() && !r.poll.armed()))
        {
            return Outcome::default();
        }
        let mut serial = keep.serial;
        let mut adopted = 0;
        let mut polls_adopted = 0;
        let r = keep.ring(fd);
        r.submissions += 1;
        r.taken.clear();
        r.taken.resize(pending as usize, false);
        let queued_before = r.fakes.len();
        let mut out = Outcome::default();
        let mut clock = Clock(None);
        let tail = (*((*ring).cq.ktail as *const AtomicU32)).load(Ordering::Acquire);
        let slept: Nanos = super::last_slept_nanos();

        // Cancels of timers the kernel holds for glommio: answered here.
        for k in 0..pending {
            let sqe = &*slot(k);
            let Some(target) = cancel_target(sqe) else {
                continue;
            };
            if !starts_chain(&slot, k) {
                continue;
            }
            let Some(kept) = r.kept.iter_mut().find(|c| c.owner == Some(target)) else {
                // A poll of the latency ring that adopted the armed one:
                // it stays armed for the others.
                if let Some(i) = r.poll.waiters.iter().position(|&w| w == target) {
                    r.poll.waiters.remove(i);
                    answer_cancel(&mut r.fakes, &[target], sqe.user_data);
                    r.taken[k as usize] = true;
                    out.taken += 1;
                }
                continue;
            };
            let (timer, link) = kept.deliver.take().expect("an owned timer delivers");
            kept.owner = None;
            kept.orphaned_at = r.submissions;
            if r.orphan_fired && kept.expiry.is_some() {
                r.orphan_fired = false;
                kept.at_once = true;
            }
            let ended = if kept.shape.link.is_some() { 2 } else { 1 };
            answer_cancel(&mut r.fakes, &[timer, link][..ended], sqe.user_data);
            r.taken[k as usize] = true;
            out.taken += 1;
        }

        // Timeouts: adopt an orphan of the same shape, or go in under a
        // private user_data.
        for k in 0..pending {
            if r.taken[k as usize] || !keeping {
                continue;
            }
            let sqe = &mut *slot(k);
            if sqe.opcode != OP_TIMEOUT
                || sqe.op_flags != 0
                || sqe.len != 1
                || sqe.addr == 0
                || !starts_chain(&slot, k)
            {
                continue;
            }
            // Cancelled in the same submission (glommio does not do that:
            // a source dropped before it went in is never submitted): the
            // cancel must find it under the user_data it names.
            let user_data = sqe.user_data;
            if (k + 1..pending).any(|j| cancel_target(&*slot(j)) == Some(user_data)) {
                continue;
            }
            let link = match sqe.flags {
                0 => None,
                IOSQE_IO_LINK if k + 1 < pending => {
                    let l = &*slot(k + 1);
                    if l.flags != 0
                        || matches!(
                            l.opcode,
                            OP_TIMEOUT | OP_TIMEOUT_REMOVE | OP_ASYNC_CANCEL | OP_LINK_TIMEOUT
                        )
                    {
                        continue;
                    }
                    Some(k + 1)
                }
                _ => continue,
            };
            let ts = &*(sqe.addr as *const KernelTimespec);
            let link_bytes = link.map(|j| {
                let mut bytes = [0u8; 64];
                std::ptr::copy_nonoverlapping(slot(j) as *const u8, bytes.as_mut_ptr(), 64);
                // user_data: bytes 32..40.
                bytes[32..40].fill(0);
                bytes
            });
            let shape = Shape {
                sec: ts.sec,
                nsec: ts.nsec,
                count: sqe.off,
                link: link_bytes,
            };
            let link_ud = link.map_or(0, |j| (*slot(j)).user_data);
            let now = clock.now();
            let timed = shape.timed(now);
            if let Some(kept) = r
                .kept
                .iter_mut()
                .find(|c| c.adoptable_for(&shape, timed, now, tail))
            {
                kept.owner = Some(sqe.user_data);
                kept.deliver = Some((sqe.user_data, link_ud));
                if let Some((len, _)) = timed {
                    kept.stands_for = len;
                }
                r.taken[k as usize] = true;
                out.taken += 1;
                if let Some(j) = link {
                    r.taken[j as usize] = true;
                    out.taken += 1;
                }
                adopted += 1;
            } else if r.kept.len() < MAX_KEPT {
                EVER_KEPT.with(|e| e.set(true));
                serial += 1;
                r.kept.push(Kept {
                    serial,
                    shape,
                    armed_at: now,
                    armed_tail: tail,
                    expiry: timed.map(|(_, at)| at),
                    stands_for: timed.map_or(0, |(len, _)| len),
                    owner: Some(sqe.user_data),
                    deliver: Some((sqe.user_data, link_ud)),
                    fired: false,
                    link_done: link.is_none(),
                    orphaned_at: 0,
                    at_once: false,
                    removing: false,
                });
                sqe.user_data = private(serial, KIND_TIMER);
                if let Some(j) = link {
                    (*slot(j)).user_data = private(serial, KIND_LINK);
                }
            }
        }

        // Polls of the latency ring (the one before each sleep): adopt the
        // one still armed, or go in under a private user_data.
        for k in (0..pending).filter(|_| polls) {
            if r.taken[k as usize] {
                continue;
            }
            let sqe = &mut *slot(k);
            if sqe.opcode != OP_POLL_ADD
                || sqe.fd != link_fd
                || sqe.flags != 0
                || sqe.len != 0
                || sqe.user_data & PRIVATE != 0
                || !starts_chain(&slot, k)
            {
                continue;
            }
            let user_data = sqe.user_data;
            if (k + 1..pending).any(|j| cancel_target(&*slot(j)) == Some(user_data)) {
                continue;
            }
            if r.poll.armed() {
                if r.poll.mask != sqe.op_flags {
                    continue;
                }
                r.poll.waiters.push(user_data);
                r.taken[k as usize] = true;
                out.taken += 1;
                polls_adopted += 1;
            } else {
                EVER_KEPT.with(|e| e.set(true));
                serial += 1;
                r.poll.serial = serial;
                r.poll.mask = sqe.op_flags;
                r.poll.waiters.clear();
                r.poll.waiters.push(user_data);
                sqe.user_data = private(serial, KIND_POLL);
            }
        }

        // Close the gaps.
        if out.taken > 0 {
            let mut w = 0;
            for k in 0..pending {
                if !r.taken[k as usize] {
                    if w != k {
                        std::ptr::copy_nonoverlapping(slot(k), slot(w), 1);
                    }
                    w += 1;
                }
            }
            sq.sqe_tail = head.wrapping_add(w);
        }

        // Orphans an earlier submission left, this one did not adopt and
        // none like it could any more (stale): removed for real, in this
        // submission, while the queue has room.
        let entries = *sq.kring_entries;
        let khead = (*(sq.khead as *const AtomicU32)).load(Ordering::Acquire);
        let submissions = r.submissions;
        for kept in r.kept.iter_mut() {
            if !kept.awaits_removal()
                || !(kept.at_once
                    || kept.orphaned_at < submissions && kept.stale(clock.now(), tail, slept))
            {
                continue;
            }
            if sq.sqe_tail.wrapping_sub(khead) >= entries {
                break;
            }
            let sqe = sqes.add((sq.sqe_tail & mask) as usize);
            std::ptr::write_bytes(sqe, 0, 1);
            (*sqe).opcode = OP_TIMEOUT_REMOVE;
            (*sqe).fd = -1;
            (*sqe).addr = private(kept.serial, KIND_TIMER);
            (*sqe).user_data = private(kept.serial, KIND_REMOVAL);
            sq.sqe_tail = sq.sqe_tail.wrapping_add(1);
            kept.removing = true;
            out.added += 1;
        }
        let queued_now = r.fakes.len() - queued_before;
        QUEUED.with(|q| q.set(q.get() + queued_now));
        keep.serial = serial;
        keep.adopted += adopted;
        keep.polls_adopted += polls_adopted;
        keep.removed += u64::from(out.added);
        // A count timer's orphan counts as due whatever its ring's count.
        let orphans = keep.rings.iter().any(|r| {
            r.kept.iter().any(|c| {
                c.awaits_removal() && (c.expiry.is_none() || c.stale(clock.now(), tail, slept))
            })
        });
        ORPHANS.with(|o| o.set(orphans));
        out
    })
}

/// What becomes of a kernel completion whose `user_data` is private, on
/// ring `fd`: the `user_data` glommio gave the request it stands for, or
/// None when it is to be dropped (an orphan's, a removal's).
pub(super) fn translate(fd: i32, cqe: &Cqe) -> Option<u64> {
    let user_data = cqe.user_data;
    let kind = user_data & 3;
    let serial = (user_data & !PRIVATE) >> 2;
    KEEP.with(|keep| {
        let mut keep = keep.borrow_mut();
        let Some(r) = keep.rings.iter_mut().find(|r| r.fd == fd) else {
            // Not a ring the keeping ever touched: not its user_data.
            return Some(user_data);
        };
        match kind {
            KIND_REMOVAL => None,
            KIND_POLL => {
                if r.poll.serial != serial {
                    return None;
                }
                // The kept poll fired: each poll it stood for gets its
                // completion, the first this one, the others queued.
                r.poll.serial = 0;
                let mut waiters = r.poll.waiters.drain(..);
                let first = waiters.next();
                let mut queued = 0;
                for w in waiters {
                    r.fakes.push_back(Cqe {
                        user_data: w,
                        res: cqe.res,
                        flags: cqe.flags,
                    });
                    queued += 1;
                }
                QUEUED.with(|q| q.set(q.get() + queued));
                first
            }
            KIND_TIMER | KIND_LINK => {
                // Not one it keeps (any more): dropped, never handed to
                // glommio under a user_data it did not give.
                let i = r.kept.iter().position(|c| c.serial == serial)?;
                let kept = &mut r.kept[i];
                let to = if kind == KIND_TIMER {
                    kept.fired = true;
                    kept.owner = None;
                    if kept.deliver.is_none() && cqe.res == -libc::ETIME {
                        r.orphan_fired = true;
                    }
                    kept.deliver.map(|d| d.0)
                } else {
                    kept.link_done = true;
                    kept.deliver.map(|d| d.1)
                };
                if kept.finished() {
                    r.kept.swap_remove(i);
                }
                to
            }
            _ => Some(user_data),
        }
    })
}

/// Drops the completions at the head of `ring`'s completion queue that
/// nobody owns (those of removals [`on_submit`] added, and of the orphans
/// they removed), up to the first that is someone's. Called right after a
/// submission that added removals: their completions are posted by then
/// (inline, or as task work run on the way out of the enter), after
/// glommio's last look at the queue before it sleeps; left there they
/// would wake the sleep at once (glommio's main ring polls the latency
/// ring's fd), and the next pass would remove the next orphan, and so on.
///
/// # Safety
/// `ring` is a live liburing ring used on this thread, and nothing is
/// reading its completions.
pub(super) unsafe fn drop_unowned(ring: *mut LibUring) {
    let cq = &(*ring).cq;
    let fd = (*ring).ring_fd;
    let mask = *cq.kring_mask;
    let cqes = cq.cqes as *mut Cqe;
    let head = &*(cq.khead as *const AtomicU32);
    let tail = &*(cq.ktail as *const AtomicU32);
    loop {
        let h = head.load(Ordering::Relaxed);
        if h == tail.load(Ordering::Acquire) {
            return;
        }
        let cqe = &mut *cqes.add((h & mask) as usize);
        if cqe.user_data & PRIVATE == 0 {
            return;
        }
        match super::private_completion(fd, cqe) {
            // Someone's: it goes to glommio under its owner's user_data,
            // as the peek wrapper would have handed it on.
            Some(user_data) => {
                cqe.user_data = user_data;
                return;
            }
            None => head.store(h.wrapping_add(1), Ordering::Release),
        }
    }
}

/// Nothing is queued for glommio on any ring of this thread: one load.
#[inline]
pub(super) fn none_queued() -> bool {
    QUEUED.with(Cell::get) == 0
}

/// The first completion queued for glommio on ring `fd`, if any; it stays
/// queued until [`seen`].
pub(super) fn queued(fd: i32) -> Option<*mut Cqe> {
    if QUEUED.with(Cell::get) == 0 {
        return None;
    }
    KEEP.with(|keep| {
        let mut keep = keep.borrow_mut();
        let r = keep.rings.iter_mut().find(|r| r.fd == fd)?;
        r.fakes.front_mut().map(|c| c as *mut Cqe)
    })
}

/// How many completions are queued for glommio on ring `fd`.
pub(super) fn queued_count(fd: i32) -> u32 {
    if QUEUED.with(Cell::get) == 0 {
        return 0;
    }
    KEEP.with(|keep| {
        keep.borrow()
            .rings
            .iter()
            .find(|r| r.fd == fd)
            .map_or(0, |r| r.fakes.len() as u32)
    })
}

/// glommio is done with completion `cqe` of ring `fd`: true if it was a
/// queued one (now gone), false if it is the kernel's.
pub(super) fn seen(fd: i32, cqe: *const Cqe) -> bool {
    if QUEUED.with(Cell::get) == 0 {
        return false;
    }
    KEEP.with(|keep| {
        let mut keep = keep.borrow_mut();
        let Some(r) = keep.rings.iter_mut().find(|r| r.fd == fd) else {
            return false;
        };
        if r.fakes.front().is_some_and(|c| std::ptr::eq(c, cqe)) {
            r.fakes.pop_front();
            QUEUED.with(|q| q.set(q.get() - 1));
            true
        } else {
            false
        }
    })
}

/// Forgets ring `fd` (its teardown): what the kernel held goes with it.
pub(super) fn forget_ring(fd: i32) {
    KEEP.with(|keep| {
        let mut keep = keep.borrow_mut();
        if let Some(i) = keep.rings.iter().position(|r| r.fd == fd) {
            let r = keep.rings.swap_remove(i);
            QUEUED.with(|q| q.set(q.get() - r.fakes.len()));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::test_ring::{Req, Ring};
    use super::super::{OP_ASYNC_CANCEL, OP_TIMEOUT};
    use super::{
        link_polls_adopted_on_this_thread, orphans_removed_on_this_thread,
        timers_adopted_on_this_thread, IOSQE_IO_LINK,
    };
    use std::time::{Duration, Instant};

    const OP_NOP: u8 = 0;
    const OP_WRITE: u8 = 23;

    fn timeout(ts: &libc::timespec, count: u64, user_data: u64) -> Req {
        Req {
            opcode: OP_TIMEOUT,
            fd: -1,
            addr: ts as *const libc::timespec as u64,
            len: 1,
            off: count,
            user_data,
            ..Req::default()
        }
    }

    /// glommio's cancel: ASYNC_CANCEL of `target`, user_data 0.
    fn cancel(target: u64) -> Req {
        Req {
            opcode: OP_ASYNC_CANCEL,
            fd: -1,
            addr: target,
            ..Req::default()
        }
    }

    fn nop(user_data: u64) -> Req {
        Req {
            opcode: OP_NOP,
            user_data,
            ..Req::default()
        }
    }

    /// Runs `f` on a thread of its own (the keeping is per thread), failing
    /// if it hangs: a lost completion is a hang.
    fn on_thread(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            super::keep_on_this_thread(true);
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(20))
            .expect("a completion was lost (or the test panicked)");
    }

    fn ms(n: i64) -> libc::timespec {
        libc::timespec {
            tv_sec: 0,
            tv_nsec: n * 1_000_000,
        }
    }

    /// glommio's count timer's length: it never fires by time.
    const NEVER: libc::timespec = libc::timespec {
        tv_sec: i64::MAX,
        tv_nsec: 999_999_999,
    };

    /// Arms timer `user_data` of length `ts` and cancels it: the cancel's
    /// completions come at once, and the timer stays in the kernel, an
    /// orphan.
    fn orphan(ring: &mut Ring, ts: &libc::timespec, user_data: u64) {
        ring.queue(&[timeout(ts, 0, user_data)]);
        assert_eq!(ring.submit_queued(), 1);
        ring.queue(&[cancel(user_data)]);
        assert_eq!(ring.submit_queued(), 1);
        assert_eq!(ring.try_next(), Some((user_data, -libc::ECANCELED)));
        assert_eq!(ring.try_next(), Some((0, 0)));
    }

    /// glommio's pass on its latency ring: the preemption timer cancelled,
    /// a new one of the same length armed. The cancel gets a cancel's
    /// completions at once, without the kernel; the new timer goes nowhere,
    /// and the first one, still armed, fires for it.
    #[test]
    fn a_replaced_timer_stays_armed_and_fires_for_its_adopter() {
        on_thread(|| {
            let mut ring = Ring::new();
            let period = ms(50);
            let adopted = timers_adopted_on_this_thread();
            let start = Instant::now();
            ring.queue(&[timeout(&period, 0, 1)]);
            assert_eq!(ring.submit_queued(), 1);
            ring.queue(&[cancel(1)]);
            assert_eq!(ring.submit_queued(), 1);
            assert_eq!(ring.ready(), 2, "the cancel's completions are queued");
            assert_eq!(ring.try_next(), Some((1, -libc::ECANCELED)));
            assert_eq!(ring.try_next(), Some((0, 0)));
            ring.queue(&[timeout(&period, 0, 2)]);
            assert_eq!(ring.submit_queued(), 1, "glommio counts it as submitted");
            assert_eq!(timers_adopted_on_this_thread() - adopted, 1);
            assert_eq!(ring.try_next(), None);
            assert_eq!(ring.next(), (2, -libc::ETIME));
            let fired = start.elapsed();
            assert!(fired >= Duration::from_millis(50), "fired after {fired:?}");
            assert_eq!(ring.try_next(), None);
        });
    }

    /// The same in one submission (glommio's main ring: the count timer
    /// and its linked eventfd write are replaced together), and the kept
    /// chain fires by count for the adopter: the timer's completion and the
    /// write's, which really writes.
    #[test]
    fn a_linked_count_timer_is_kept_and_fires_by_count() {
        on_thread(|| {
            use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
            static ONE: u64 = 1;
            // SAFETY: eventfd returns a new fd or -1.
            let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
            assert!(raw >= 0, "eventfd");
            // SAFETY: nothing else owns it.
            let efd = unsafe { OwnedFd::from_raw_fd(raw) };
            let read = || {
                let mut n = 0u64;
                // SAFETY: 8 bytes into a u64.
                let got = unsafe {
                    libc::read(efd.as_raw_fd(), &mut n as *mut u64 as *mut libc::c_void, 8)
                };
                (got == 8).then_some(n)
            };
            let write = Req {
                opcode: OP_WRITE,
                fd: efd.as_raw_fd(),
                addr: &ONE as *const u64 as u64,
                len: 8,
                ..Req::default()
            };
            let chain = |user_data| {
                [
                    Req {
                        flags: IOSQE_IO_LINK,
                        ..timeout(&NEVER, 2, user_data)
                    },
                    write,
                ]
            };
            let mut ring = Ring::new();
            let adopted = timers_adopted_on_this_thread();
            ring.queue(&chain(1));
            assert_eq!(ring.submit_queued(), 2);
            ring.queue(&[cancel(1)]);
            ring.queue(&chain(2));
            assert_eq!(ring.submit_queued(), 3);
            assert_eq!(timers_adopted_on_this_thread() - adopted, 1);
            let mut answers = [ring.next(), ring.next(), ring.next()];
            answers.sort();
            assert_eq!(
                answers,
                [(0, -libc::ECANCELED), (0, 0), (1, -libc::ECANCELED)]
            );
            assert_eq!(ring.try_next(), None);
            assert_eq!(read(), None, "nothing written yet");
            // Two completions: the count is reached.
            ring.queue(&[nop(5), nop(6)]);
            assert_eq!(ring.submit_queued(), 2);
            let mut seen = vec![ring.next(), ring.next(), ring.next(), ring.next()];
            seen.sort();
            assert_eq!(seen, [(0, 8), (2, 0), (5, 0), (6, 0)]);
            assert_eq!(read(), Some(1), "the kept write wrote");
        });
    }

    /// A timer that fired in the kernel before glommio, not having looked
    /// yet, cancelled it: glommio gets one completion for it, the cancel's,
    /// and the kernel's is dropped.
    #[test]
    fn a_timer_that_fired_before_its_cancel_completes_once() {
        on_thread(|| {
            let mut ring = Ring::new();
            let short = ms(1);
            ring.queue(&[timeout(&short, 0, 1)]);
            assert_eq!(ring.submit_queued(), 1);
            std::thread::sleep(Duration::from_millis(20));
            ring.queue(&[cancel(1)]);
            assert_eq!(ring.submit_queued(), 1);
            assert_eq!(ring.try_next(), Some((1, -libc::ECANCELED)));
            assert_eq!(ring.try_next(), Some((0, 0)));
            assert_eq!(ring.try_next(), None, "the kernel's -ETIME was dropped");
            assert_eq!(ring.ready(), 0);
        });
    }

    /// A kept timer that has run more than a sixteenth of its length is
    /// not adopted: the new timeout goes to the kernel and fires its whole
    /// length after its own arm, and the old one is removed.
    #[test]
    fn a_timer_that_has_run_too_long_is_not_adopted() {
        on_thread(|| {
            let mut ring = Ring::new();
            let period = ms(32);
            let (adopted, removed) = (
                timers_adopted_on_this_thread(),
                orphans_removed_on_this_thread(),
            );
            orphan(&mut ring, &period, 1);
            // 5 ms: more than 32 / 16.
            std::thread::sleep(Duration::from_millis(5));
            let armed = Instant::now();
            ring.queue(&[timeout(&period, 0, 2)]);
            assert_eq!(ring.submit_queued(), 1);
            assert_eq!(timers_adopted_on_this_thread(), adopted);
            assert_eq!(orphans_removed_on_this_thread() - removed, 1);
            assert_eq!(ring.next(), (2, -libc::ETIME));
            let fired = armed.elapsed();
            assert!(fired >= Duration::from_millis(32), "fired after {fired:?}");
            assert_eq!(ring.try_next(), None);
        });
    }

    /// A kept count timer that has seen more than a quarter of the
    /// completions it counts is not adopted: the new one counts afresh.
    #[test]
    fn a_count_timer_that_has_counted_too_much_is_not_adopted() {
        on_thread(|| {
            let mut ring = Ring::new();
            let adopted = timers_adopted_on_this_thread();
            ring.queue(&[timeout(&NEVER, 8, 1)]);
            assert_eq!(ring.submit_queued(), 1);
            // Three completions: more than 8 / 4.
            ring.queue(&[nop(5), nop(6), nop(7)]);
            assert_eq!(ring.submit_queued(), 3);
            for _ in 0..3 {
                ring.next();
            }
            ring.queue(&[cancel(1), timeout(&NEVER, 8, 2)]);
            assert_eq!(ring.submit_queued(), 2);
            assert_eq!(timers_adopted_on_this_thread(), adopted);
            let mut answers = [ring.next(), ring.next()];
            answers.sort();
            assert_eq!(answers, [(0, 0), (1, -libc::ECANCELED)]);
            // Five more completions would have fired the old one; the new
            // one needs eight.
            ring.queue(&[nop(10), nop(11), nop(12), nop(13), nop(14)]);
            assert_eq!(ring.submit_queued(), 5);
            let seen: Vec<_> = (0..5).map(|_| ring.next()).collect();
            assert!(seen.iter().all(|&(u, _)| u >= 10), "{seen:?}");
            assert_eq!(ring.try_next(), None, "fired early");
            ring.queue(&[nop(15), nop(16), nop(17)]);
            assert_eq!(ring.submit_queued(), 3);
            let mut seen: Vec<_> = (0..4).map(|_| ring.next()).collect();
            seen.sort();
            assert_eq!(seen, [(2, 0), (15, 0), (16, 0), (17, 0)]);
        });
    }

    /// A cancelled timer stays armed while a timeout like it could still
    /// adopt it; once stale (here: run more than 1/16 of its length) it is
    /// removed for real with the ring's next submission, and nothing of it
    /// reaches glommio: not its -ECANCELED, not the removal's result, and
    /// it does not fire later.
    #[test]
    fn a_stale_orphan_is_removed_with_the_next_submission() {
        on_thread(|| {
            let mut ring = Ring::new();
            let removed = orphans_removed_on_this_thread();
            let period = ms(32);
            orphan(&mut ring, &period, 1);
            // A different length, at once: no adoption, and the orphan is
            // not stale yet, so it stays.
            let other = ms(64);
            ring.queue(&[timeout(&other, 0, 2)]);
            assert_eq!(ring.submit_queued(), 1);
            assert_eq!(orphans_removed_on_this_thread(), removed);
            // 5 ms: more than 32 / 16. The next submission with a timer
            // (glommio's next pass) removes it.
            std::thread::sleep(Duration::from_millis(5));
            ring.queue(&[nop(3), timeout(&ms(10), 0, 4)]);
            assert_eq!(ring.submit_queued(), 2);
            assert_eq!(orphans_removed_on_this_thread() - removed, 1);
            assert_eq!(ring.next(), (3, 0));
            assert_eq!(ring.next(), (4, -libc::ETIME));
            assert_eq!(ring.next(), (2, -libc::ETIME));
            std::thread::sleep(Duration::from_millis(10));
            assert_eq!(ring.try_next(), None, "the orphan fired after all");
        });
    }

    /// glommio's sleeps: before each, a timer for its earliest deadline,
    /// cancelled after the wake-up. The next sleep's timer, shorter by the
    /// time gone but for the same deadline, adopts the orphan, which fires
    /// at that deadline for it.
    #[test]
    fn a_timer_for_the_same_deadline_adopts_the_orphan() {
        on_thread(|| {
            let mut ring = Ring::new();
            let (adopted, removed) = (
                timers_adopted_on_this_thread(),
                orphans_removed_on_this_thread(),
            );
            let start = Instant::now();
            let deadline = start + Duration::from_millis(60);
            orphan(&mut ring, &ms(60), 1);
            std::thread::sleep(Duration::from_millis(10));
            let left = deadline.saturating_duration_since(Instant::now());
            let left = libc::timespec {
                tv_sec: 0,
                tv_nsec: left.as_nanos() as i64,
            };
            ring.queue(&[timeout(&left, 0, 2)]);
            assert_eq!(ring.submit_queued(), 1);
            assert_eq!(timers_adopted_on_this_thread() - adopted, 1);
            assert_eq!(orphans_removed_on_this_thread(), removed);
            assert_eq!(ring.next(), (2, -libc::ETIME));
            let fired = start.elapsed();
            assert!(fired >= Duration::from_millis(60), "fired after {fired:?}");
            assert_eq!(ring.try_next(), None);
        });
    }

    /// A kept timer that would fire well after a new timeout is not adopted
    /// by it (the new one would wake late), nor one that would fire well
    /// before it: each goes to the kernel and fires for itself, and the
    /// orphan, never adopted, fires in the kernel and is dropped.
    #[test]
    fn a_timer_for_another_deadline_is_not_adopted() {
        on_thread(|| {
            let mut ring = Ring::new();
            let adopted = timers_adopted_on_this_thread();
            let start = Instant::now();
            orphan(&mut ring, &ms(40), 1);
            ring.queue(&[timeout(&ms(20), 0, 2)]);
            assert_eq!(ring.submit_queued(), 1);
            ring.queue(&[timeout(&ms(80), 0, 3)]);
            assert_eq!(ring.submit_queued(), 1);
            assert_eq!(timers_adopted_on_this_thread(), adopted);
            assert_eq!(ring.next(), (2, -libc::ETIME));
            let fired = start.elapsed();
            assert!(fired >= Duration::from_millis(20), "fired after {fired:?}");
            assert_eq!(ring.next(), (3, -libc::ETIME));
            let fired = start.elapsed();
            assert!(fired >= Duration::from_millis(80), "fired after {fired:?}");
            assert_eq!(ring.try_next(), None, "the orphan reached glommio");
        });
    }

    /// Requests that are not glommio's timers or their cancels go in as
    /// they are, around what the keeping takes out.
    #[test]
    fn other_requests_go_in_untouched_around_the_taken_ones() {
        on_thread(|| {
            let mut ring = Ring::new();
            let period = ms(40);
            ring.queue(&[nop(7), timeout(&period, 0, 1)]);
            assert_eq!(ring.submit_queued(), 2);
            assert_eq!(ring.next(), (7, 0));
            let adopted = timers_adopted_on_this_thread();
            ring.queue(&[nop(8), cancel(1), nop(9), timeout(&period, 0, 2), nop(10)]);
            assert_eq!(ring.submit_queued(), 5);
            assert_eq!(timers_adopted_on_this_thread() - adopted, 1);
            let mut seen: Vec<_> = (0..5).map(|_| ring.next()).collect();
            seen.sort();
            assert_eq!(
                seen,
                [(0, 0), (1, -libc::ECANCELED), (8, 0), (9, 0), (10, 0)]
            );
            assert_eq!(ring.next(), (2, -libc::ETIME));
        });
    }

    /// A timeout cancelled in the submission that arms it is not kept:
    /// the kernel gets both, and the cancel finds the timer.
    #[test]
    fn a_timer_cancelled_in_its_own_submission_is_left_to_the_kernel() {
        on_thread(|| {
            let mut ring = Ring::new();
            let long = libc::timespec {
                tv_sec: 10,
                tv_nsec: 0,
            };
            ring.queue(&[timeout(&long, 0, 1), cancel(1)]);
            assert_eq!(ring.submit_queued(), 2);
            let mut seen = [ring.complete(), ring.complete()];
            seen.sort();
            assert_eq!(
                seen,
                [(0, 0), (1, -libc::ECANCELED)],
                "as the kernel posted them"
            );
        });
    }

    /// A poll of `fd` for reading, as glommio makes its link of the rings.
    fn poll(fd: i32, user_data: u64) -> Req {
        Req {
            opcode: super::OP_POLL_ADD,
            fd,
            op_flags: libc::POLLIN as u32,
            user_data,
            ..Req::default()
        }
    }

    /// A main ring and a latency ring, made in glommio's order (the shim
    /// tells them apart by it), the second known as this thread's latency
    /// ring, whose descriptor the keeping recognises in polls.
    fn main_and_latency_rings() -> (Ring, Ring) {
        let main = Ring::new();
        let mut lat = Ring::new();
        let fd = lat.fd();
        super::super::LATENCY_RING.with(|l| l.set(fd));
        (main, lat)
    }

    /// glommio's sleeps, each polling the latency ring from the main one:
    /// while the first poll is armed, the next ones go nowhere, and when
    /// the latency ring gets a completion, every one of them gets the
    /// poll's. The next sleep's poll then goes to the kernel again.
    #[test]
    fn polls_of_the_latency_ring_share_the_armed_one() {
        on_thread(|| {
            let (mut main, mut lat) = main_and_latency_rings();
            let lat_fd = lat.fd();
            let adopted = link_polls_adopted_on_this_thread();
            for ud in 1..=3 {
                main.queue(&[poll(lat_fd, ud)]);
                assert_eq!(main.submit_queued(), 1, "glommio counts it as submitted");
            }
            assert_eq!(link_polls_adopted_on_this_thread() - adopted, 2);
            assert_eq!(main.try_next(), None, "nothing fired yet");
            // A completion on the latency ring: the one armed poll fires.
            lat.queue(&[nop(9)]);
            assert_eq!(lat.submit_queued(), 1);
            let mut got = [main.next(), main.next(), main.next()];
            got.sort();
            for (i, (ud, res)) in got.into_iter().enumerate() {
                assert_eq!(ud, i as u64 + 1);
                assert!(res > 0 && res & libc::POLLIN as i32 != 0, "{ud}: {res}");
            }
            assert_eq!(main.try_next(), None, "one completion each");
            // Fired: the next poll goes in, and fires at once (the latency
            // ring's completion is still there).
            main.queue(&[poll(lat_fd, 4)]);
            assert_eq!(main.submit_queued(), 1);
            assert_eq!(link_polls_adopted_on_this_thread() - adopted, 2);
            let (ud, res) = main.next();
            assert_eq!(ud, 4);
            assert!(res & libc::POLLIN as i32 != 0);
            assert_eq!(lat.next(), (9, 0));
        });
    }

    /// A cancel of a poll that adopted the armed one gets a cancel's
    /// completions at once; the armed poll stays for the others.
    #[test]
    fn a_cancelled_adopter_leaves_the_armed_poll_to_the_others() {
        on_thread(|| {
            let (mut main, mut lat) = main_and_latency_rings();
            let lat_fd = lat.fd();
            main.queue(&[poll(lat_fd, 1)]);
            assert_eq!(main.submit_queued(), 1);
            main.queue(&[poll(lat_fd, 2)]);
            assert_eq!(main.submit_queued(), 1);
            main.queue(&[cancel(2)]);
            assert_eq!(main.submit_queued(), 1);
            assert_eq!(main.try_next(), Some((2, -libc::ECANCELED)));
            assert_eq!(main.try_next(), Some((0, 0)));
            assert_eq!(main.try_next(), None);
            lat.queue(&[nop(9)]);
            assert_eq!(lat.submit_queued(), 1);
            let (ud, res) = main.next();
            assert_eq!(ud, 1);
            assert!(res & libc::POLLIN as i32 != 0);
            assert_eq!(main.try_next(), None);
        });
    }
}
