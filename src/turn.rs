//! Sharing a core between connections: when a task that always has work gives
//! the core back, and how.
//!
//! A bulk transfer between a fast sender and a fast receiver never waits: every
//! recv finds data and every send finds room. Such a task must give the core
//! back now and then, and *how* it does so decides how long the core's other
//! connections wait:
//!
//! - glommio polls the ring (and so learns that another connection's socket
//!   became readable) only between runs of its task queues, and it leaves a
//!   task queue only when the queue is empty or its preemption timer has
//!   fired. A plain `yield_now` leaves the task runnable, so the queue never
//!   empties and the others wait for the timer: about one preemption period
//!   (100 ms) per hop, ~200 ms per round trip (tests/l4_fairness.rs).
//! - A shorter preemption period is no cure. glommio 0.9's loop arms the timer
//!   and then runs its task queues; if the timer has already fired when it
//!   starts (the thread was descheduled for a period right after arming it: a
//!   CFS time slice, the test's real-time sink on the same CPU), it runs
//!   nothing, takes the pass for an idle one and parks in `io_uring_enter`
//!   with runnable tasks queued, until some unrelated event (a new
//!   connection, a timer) wakes it. With a 100 ms period that needs a 100 ms
//!   descheduling and was never seen; with 2 ms it stalled a bulk transfer for
//!   seconds (perf/README.md, "Fairness").
//!
//! So a task that has moved [`BUDGET`] bytes without waiting (or finds the
//! preemption timer fired) waits for a timer instead: it is then not runnable,
//! its queue empties, the executor polls the ring and runs whatever became
//! ready, and the timer brings the task back within the same pass. The other
//! connections wait for one budget's work (~0.1 ms at loopback speeds), not a
//! preemption period, and the preemption period stays at glommio's default.
//!
//! They need not wait even that long. When another connection becomes ready,
//! its completion (or, on a DEFER_TASKRUN ring, the kernel's flag that task
//! work is pending) shows in the words of the ring's mapping, which a task can
//! read without a system call (`net::uring::completions_waiting`). A task
//! that has moved [`EARLY`] bytes gives the core back as soon as it sees one;
//! the full budget applies only while nobody else waits. Same-run A/B
//! (perf/README.md, "Fairness: give back when someone waits"): the copy
//! pump's round-trip p99 beside a download 508 -> 293 µs (nginx stream's
//! 227), keep-alive and bulk CPU unchanged.
//!
//! The timer must already be due when the executor next looks at its timers,
//! or the give-back costs a sleep. With its queue empty, glommio polls the
//! ring and processes expired timers once (`spin_poll_io`); if nothing woke,
//! it parks: a `membarrier()`, an `io_uring_enter` that sleeps on a kernel
//! timer, a wake-up. That path takes well under a microsecond, so a 1 µs
//! timer was usually not yet due: three give-backs in four parked
//! (perf/README.md, "Fairness: the give-back that slept"), which is why a
//! larger budget had looked cheaper. [`YIELD_TIMER`] is short enough to be
//! due by then.
//!
//! The race above can still happen with the default period if the thread is
//! kept off its CPU for 100 ms (a cgroup CPU quota throttles for up to its
//! period). While tasks are giving the core back, a per-core guard task keeps
//! a [`GUARD_PERIOD`] timer pending, and a park with a timer pending sleeps no
//! longer than that timer: a lost turn costs at most a millisecond. The guard
//! ends itself one period after the last yield, so an idle core keeps no timer.

use std::cell::Cell;
use std::time::Duration;

/// Bytes a task moves without waiting before it gives the core back. 128 KiB
/// is ~0.1 ms of copying at loopback speeds: a round trip through a core
/// that carries a bulk transfer waits about that per hop, and the bulk
/// transfer pays one pass of the executor loop per 128 KiB (two 64 KiB
/// copies; no dearer per byte than 512 KiB, measured, once the give-back
/// stopped sleeping).
pub const BUDGET: usize = 128 * 1024;

/// Bytes after which a task gives the core back before its budget is spent
/// if another connection is ready (its completion waits in the ring): one
/// copy buffer. Below it (every small request/response) nothing is checked.
pub const EARLY: usize = 64 * 1024;

/// Whether a task that has moved `moved` bytes without waiting should give
/// the core back: its budget is spent, or it has moved [`EARLY`] bytes and
/// another connection is ready.
pub fn spent(moved: usize) -> bool {
    moved >= BUDGET || (moved >= EARLY && crate::net::uring::completions_waiting())
}

/// The timer a task waits on to give the core back: long enough to be
/// pending when first polled (glommio's timer is ready at once when its
/// deadline has passed; the poll follows its creation by tens of
/// nanoseconds), short enough to be due when the executor next processes
/// its timers, so that the give-back never parks the thread (module doc).
/// Should the first poll come late and find it due, the task just keeps
/// the core for one more budget.
const YIELD_TIMER: Duration = Duration::from_nanos(250);

/// How long the guard's timer runs: the longest a park with runnable tasks
/// can last while tasks are giving the core back.
pub const GUARD_PERIOD: Duration = Duration::from_millis(1);

thread_local! {
    /// A task gave the core back since the guard last looked.
    static YIELDED: Cell<bool> = const { Cell::new(false) };
    /// The core's guard task is running.
    static GUARD: Cell<bool> = const { Cell::new(false) };
}

/// Counts the bytes a task moves between waits; see the module doc.
#[derive(Debug, Default)]
pub struct Turn {
    moved: usize,
}

impl Turn {
    pub fn new() -> Turn {
        Turn::default()
    }

    /// The task waited for I/O (a Pending poll): its turn starts afresh.
    pub fn waited(&mut self) {
        self.moved = 0;
    }

    /// Counts `bytes` moved; gives the core back through the reactor once the
    /// budget is spent or the preemption timer has fired.
    pub async fn moved(&mut self, bytes: usize) {
        self.moved += bytes;
        if spent(self.moved) || glommio::executor().need_preempt() {
            self.moved = 0;
            yield_to_reactor().await;
        }
    }
}

/// Leaves the core to the executor's loop: the caller is not runnable until a
/// timer fires, so the executor polls the ring and runs what became ready
/// before it comes back. Unlike `yield_now`, this does not depend on the
/// preemption timer.
pub async fn yield_to_reactor() {
    YIELDED.with(|y| y.set(true));
    if !GUARD.with(|g| g.replace(true)) {
        glommio::spawn_local(guard()).detach();
    }
    glommio::timer::sleep(YIELD_TIMER).await;
}

/// Keeps a timer pending while tasks give the core back (module doc).
async fn guard() {
    loop {
        glommio::timer::sleep(GUARD_PERIOD).await;
        if !YIELDED.with(|y| y.replace(false)) {
            GUARD.with(|g| g.set(false));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    /// A task that never waits on I/O but counts its bytes through a `Turn`
    /// lets a task woken by the reactor (here a timer) run long before it is
    /// done. With `yield_now` in its place, the sleeper would wait for the
    /// preemption timer (100 ms), after all 20,000 turns. Behaviour, not speed:
    /// the bound is "before the end", with a 100 ms preemption period and a
    /// 1 ms sleep.
    #[test]
    fn a_busy_task_lets_reactor_work_in_between() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .expect("executor");
        ex.run(async {
            const TURNS: u32 = 20_000;
            let done = Rc::new(Cell::new(0u32));
            let busy = {
                let done = done.clone();
                glommio::spawn_local(async move {
                    let mut turn = Turn::new();
                    for _ in 0..TURNS {
                        turn.moved(BUDGET).await;
                        done.set(done.get() + 1);
                    }
                })
            };
            let seen = {
                let done = done.clone();
                glommio::spawn_local(async move {
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    done.get()
                })
            };
            let at_wake = seen.await;
            busy.await;
            assert!(
                at_wake < TURNS,
                "the sleeper ran only after the busy task's {TURNS} turns"
            );
            // The guard ends itself once nothing yields any more: two of its
            // periods after the last yield, or later on a loaded machine
            // (timers fire late, never early), so the bound is generous.
            let mut waited = Duration::ZERO;
            while GUARD.with(|g| g.get()) && waited < Duration::from_secs(2) {
                glommio::timer::sleep(GUARD_PERIOD).await;
                waited += GUARD_PERIOD;
            }
            assert!(!GUARD.with(|g| g.get()), "the guard outlived the yields");
        });
    }
}
