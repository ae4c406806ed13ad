//! Why the idle HTTP/1 keep-alive connections of one core should stop
//! waiting: the overload manager started shedding idle connections, or the
//! core stops. Each idle wait holds one idle deadline in the core's deadline
//! registry ([`crate::deadline::Slot::idle`]): its idle timeout, and the way
//! this set wakes them all ([`crate::deadline::wake_idle`]); woken, a wait
//! looks here to see why.
//!
//! One registry slot (40 bytes) per idle connection, instead of a glommio
//! timer (an `Rc` allocation and an entry in the reactor's timer tree) and
//! two semaphore waiters (and the futures around them) in every idle
//! connection's future: an idle connection is mostly what it keeps while
//! waiting, and thousands wait (perf/README.md, "Memory per idle
//! connection"). Per core, so no locks.

use std::cell::Cell;

#[derive(Default)]
pub struct IdleSet {
    /// Bumped each time shedding begins: a connection that started waiting
    /// in an older epoch closes.
    shed_epoch: Cell<u64>,
    /// Set once when the core stops.
    stopping: Cell<bool>,
}

impl IdleSet {
    pub fn shed_epoch(&self) -> u64 {
        self.shed_epoch.get()
    }

    pub fn stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Shedding begins: every connection waiting now closes.
    pub fn shed(&self) {
        self.shed_epoch.set(self.shed_epoch.get() + 1);
        crate::deadline::wake_idle();
    }

    /// The core stops: every waiting connection starts its short grace.
    pub fn stop(&self) {
        self.stopping.set(true);
        crate::deadline::wake_idle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deadline::Slot;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};
    use std::time::{Duration, Instant};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Shedding and the stop wake every idle wait, which then sees why;
    /// a wait that has ended is not woken.
    #[test]
    fn shedding_and_the_stop_wake_the_idle_waits() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let set = IdleSet::default();
                let count = Arc::new(Count(AtomicUsize::new(0)));
                let waker = Waker::from(count.clone());
                let later = Instant::now() + Duration::from_secs(60);
                let a = Slot::idle(later, &waker);
                let b = Slot::idle(later, &waker);
                let epoch = set.shed_epoch();
                set.shed();
                assert_ne!(set.shed_epoch(), epoch);
                assert_eq!(count.0.load(Ordering::Relaxed), 2);
                drop(b);
                set.stop();
                assert!(set.stopping());
                assert_eq!(count.0.load(Ordering::Relaxed), 3);
                // Woken, not expired: the deadline is still a minute away.
                assert!(!a.expired(&waker));
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
