//! The idle HTTP/1 keep-alive connections of one core: a waker and an idle
//! deadline each, woken when the deadline passes (by one sweeper task per
//! core), when the overload manager starts shedding idle connections, and
//! when the core stops.
//!
//! One slot (32 bytes) per idle connection here, instead of a glommio timer
//! (an `Rc` allocation and an entry in the reactor's timer tree) and two
//! semaphore waiters (and the futures around them) in every idle
//! connection's future: an idle connection is mostly what it keeps while
//! waiting, and thousands wait (perf/README.md, "Memory per idle
//! connection"). Per core, so no locks.
//!
//! The sweeper sleeps until the earliest deadline it knows of, then wakes
//! every connection whose deadline has passed and scans for the next one.
//! A connection that leaves before its deadline leaves no timer behind
//! (its slot is freed); the sweeper may wake once for it and find nothing.
//! Wake-ups are at least [`MIN_SWEEP`] apart, so a deadline fires up to
//! that much late, and a dense stream of deadlines costs one scan per
//! `MIN_SWEEP`, not one wake-up per connection.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The sweeper's finest step.
pub const MIN_SWEEP: Duration = Duration::from_millis(10);

#[derive(Default)]
pub struct IdleSet {
    slots: RefCell<Slots>,
    /// Bumped each time shedding begins: a connection that started waiting
    /// in an older epoch closes.
    shed_epoch: Cell<u64>,
    /// Set once when the core stops.
    stopping: Cell<bool>,
    /// When the sweeper wakes next; None when no sweeper runs.
    sweep_at: Cell<Option<Instant>>,
    /// The sweeper task, to wake when an earlier deadline arrives.
    sweeper: RefCell<Option<Waker>>,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Entry>>,
    free: Vec<usize>,
}

struct Entry {
    waker: Waker,
    deadline: Instant,
}

/// What [`IdleSet::register`] asks of its caller.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub enum Sweeper {
    Running,
    /// No sweeper runs: spawn [`sweep`] on this core.
    Start,
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
        self.wake_where(|_| true);
    }

    /// The core stops: every waiting connection starts its short grace.
    pub fn stop(&self) {
        self.stopping.set(true);
        self.wake_where(|_| true);
    }

    /// Puts `waker` and `deadline` in `slot` (taking a free one the first
    /// time), or refreshes the waker when the task's changed.
    pub fn register(&self, slot: &mut Option<usize>, waker: &Waker, deadline: Instant) -> Sweeper {
        let mut s = self.slots.borrow_mut();
        match *slot {
            Some(i) => {
                if let Some(Some(e)) = s.entries.get_mut(i) {
                    if !e.waker.will_wake(waker) {
                        e.waker = waker.clone();
                    }
                    return Sweeper::Running;
                }
            }
            None => {
                let entry = Some(Entry {
                    waker: waker.clone(),
                    deadline,
                });
                let i = match s.free.pop() {
                    Some(i) => {
                        s.entries[i] = entry;
                        i
                    }
                    None => {
                        s.entries.push(entry);
                        s.entries.len() - 1
                    }
                };
                *slot = Some(i);
            }
        }
        drop(s);
        match self.sweep_at.get() {
            None => {
                self.sweep_at.set(Some(deadline));
                Sweeper::Start
            }
            Some(at) if deadline < at => {
                self.sweep_at.set(Some(deadline));
                if let Some(w) = self.sweeper.borrow().as_ref() {
                    w.wake_by_ref();
                }
                Sweeper::Running
            }
            Some(_) => Sweeper::Running,
        }
    }

    /// Frees the slot a waiting connection had.
    pub fn remove(&self, slot: usize) {
        let mut s = self.slots.borrow_mut();
        if let Some(e) = s.entries.get_mut(slot) {
            if e.take().is_some() {
                s.free.push(slot);
            }
        }
    }

    /// How many connections are registered.
    pub fn len(&self) -> usize {
        let s = self.slots.borrow();
        s.entries.len() - s.free.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wakes the connections whose deadline is `now` or earlier; returns the
    /// earliest deadline still ahead.
    fn wake_due(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for e in self.slots.borrow().entries.iter().flatten() {
            if e.deadline > now {
                next = Some(next.map_or(e.deadline, |n| n.min(e.deadline)));
            }
        }
        self.wake_where(|e| e.deadline <= now);
        next
    }

    fn wake_where(&self, due: impl Fn(&Entry) -> bool) {
        // Cloned out first: a waker may run code that registers again.
        let wakers: Vec<Waker> = self
            .slots
            .borrow()
            .entries
            .iter()
            .flatten()
            .filter(|e| due(e))
            .map(|e| e.waker.clone())
            .collect();
        for w in wakers {
            w.wake();
        }
    }
}

/// The core's sweeper: runs while some deadline is ahead, then ends (the
/// next registration starts another).
pub async fn sweep(set: Rc<IdleSet>) {
    let mut timer: Option<(Instant, glommio::timer::Timer)> = None;
    std::future::poll_fn(|cx| loop {
        let Some(at) = set.sweep_at.get() else {
            set.sweeper.replace(None);
            return Poll::Ready(());
        };
        let now = Instant::now();
        if at <= now {
            let next = set.wake_due(now);
            set.sweep_at.set(next.map(|n| n.max(now + MIN_SWEEP)));
            timer = None;
            continue;
        }
        if timer.as_ref().is_none_or(|(t, _)| *t != at) {
            timer = Some((at, glommio::timer::Timer::new(at - now)));
        }
        if let Some((_, t)) = timer.as_mut() {
            if Pin::new(t).poll(cx).is_ready() {
                continue;
            }
        }
        let mut w = set.sweeper.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
        return Poll::Pending;
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn slots_are_reused_and_everyone_is_woken() {
        let set = IdleSet::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let later = Instant::now() + Duration::from_secs(60);
        let (mut a, mut b) = (None, None);
        assert_eq!(set.register(&mut a, &waker, later), Sweeper::Start);
        assert_eq!(set.register(&mut b, &waker, later), Sweeper::Running);
        // A refresh keeps the slot.
        assert_eq!(set.register(&mut a, &waker, later), Sweeper::Running);
        assert_eq!((a, b, set.len()), (Some(0), Some(1), 2));
        set.remove(a.unwrap());
        let mut c = None;
        let _ = set.register(&mut c, &waker, later);
        assert_eq!(c, Some(0));
        let epoch = set.shed_epoch();
        set.shed();
        assert_ne!(set.shed_epoch(), epoch);
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        set.stop();
        assert!(set.stopping());
        assert_eq!(count.0.load(Ordering::Relaxed), 4);
        set.remove(b.unwrap());
        set.remove(c.unwrap());
        set.remove(c.unwrap()); // twice is harmless
        assert!(set.is_empty());
    }

    #[test]
    fn only_due_deadlines_are_woken() {
        let set = IdleSet::default();
        let due = Arc::new(Count(AtomicUsize::new(0)));
        let ahead = Arc::new(Count(AtomicUsize::new(0)));
        let now = Instant::now();
        let (mut a, mut b) = (None, None);
        let _ = set.register(&mut a, &Waker::from(due.clone()), now);
        let later = now + Duration::from_secs(5);
        let _ = set.register(&mut b, &Waker::from(ahead.clone()), later);
        assert_eq!(set.wake_due(now), Some(later));
        assert_eq!(due.0.load(Ordering::Relaxed), 1);
        assert_eq!(ahead.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn the_sweeper_wakes_a_connection_at_its_deadline_and_ends() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let set = Rc::new(IdleSet::default());
                let count = Arc::new(Count(AtomicUsize::new(0)));
                let mut slot = None;
                let deadline = Instant::now() + Duration::from_millis(30);
                let start = set.register(&mut slot, &Waker::from(count.clone()), deadline);
                assert_eq!(start, Sweeper::Start);
                sweep(set.clone()).await;
                assert!(Instant::now() >= deadline);
                assert_eq!(count.0.load(Ordering::Relaxed), 1);
                assert_eq!(set.sweep_at.get(), None);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
