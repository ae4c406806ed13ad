//! A deadline around any future, without an extra copy of it (used by the
//! L7 path for head, body and response timeouts and by TLS handshakes).
//!
//! Deadlines do not take a glommio timer each. A request's deadlines (the
//! route timeout, a per-try timeout, a head or body timeout) almost never
//! fire: they are set and cancelled once per request, and a glommio timer
//! costs an allocation and an insert and a remove in two of the reactor's
//! maps each time (3.6 % of the HTTP/2 path's CPU, perf/H2.md). Instead each
//! core keeps a slab of pending deadlines and one sweeper task with one
//! timer, armed for the earliest deadline registered: a timerfd read through
//! the ring, so that glommio's timer map stays empty (see `Alarm`). Registering a
//! deadline is a slab insert (and a wake of the sweeper only when it is the
//! new earliest); cancelling one is a slab remove. A cancelled deadline
//! leaves the sweeper's timer where it was: when it fires, the sweeper
//! expires what is due, finds the earliest of the rest and re-arms. With
//! deadlines of seconds and requests of milliseconds, that is about one
//! sweep per shortest timeout, each a scan of the deadlines pending. Sweeps
//! are at least [`MIN_SWEEP`] apart, so deadlines that fall due one after
//! another (thousands of idle connections timing out) cost one scan per
//! millisecond at most, not one each; a deadline fires up to that late.
//!
//! Idle HTTP/1 keep-alive waits register here too, marked idle
//! ([`Slot::idle`]): [`wake_idle`] wakes them all when the core sheds idle
//! connections or stops (`crate::idle`), so they need nothing else.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

/// The sweeper's finest step: how late a deadline may fire.
pub const MIN_SWEEP: Duration = Duration::from_millis(1);

/// Runs `f` until `deadline` (if any): `None` when the deadline came first.
///
/// A hand-written future rather than an `async fn` around `future::or`: that
/// form stores `f` once as an argument and again as each awaited copy, so a
/// large future (a request's attempts, several KiB) was laid out three times
/// over and moved on every request. This one polls `f` where it lies and
/// registers the deadline only when `f` is not ready at once.
pub fn until<F: Future>(deadline: Option<Instant>, f: F) -> Until<F> {
    Until {
        f,
        deadline,
        slot: None,
    }
}

/// Sleeps for `d` on the core's sweeper (at most [`MIN_SWEEP`] late), for
/// long-lived periodic tasks: a glommio timer would sit in glommio's timer
/// map for the whole wait, which costs every pass of its loop (see
/// `Alarm`). Short, precise waits stay on glommio's timers.
pub async fn sleep(d: Duration) {
    until(Some(Instant::now() + d), std::future::pending::<()>()).await;
}

pin_project_lite::pin_project! {
    /// See [`until`].
    pub struct Until<F> {
        #[pin]
        f: F,
        deadline: Option<Instant>,
        slot: Option<Slot>,
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Some(v));
        }
        let Some(deadline) = *this.deadline else {
            return Poll::Pending;
        };
        match this.slot {
            None => {
                *this.slot = Some(Slot::at(deadline, cx.waker()));
                Poll::Pending
            }
            Some(slot) if slot.expired(cx.waker()) => Poll::Ready(None),
            Some(_) => Poll::Pending,
        }
    }
}

/// A deadline registered with this core's sweeper; cancelled when dropped.
#[derive(Debug)]
pub struct Slot {
    index: u32,
}

enum Entry {
    Free,
    Pending {
        at: Instant,
        waker: Waker,
        /// An idle connection's wait: woken also by [`wake_idle`].
        idle: bool,
    },
    Expired,
}

#[derive(Default)]
struct Registry {
    /// The executor these belong to (a thread may run one executor after
    /// another, as tests do).
    executor: Option<usize>,
    entries: Vec<Entry>,
    free: Vec<u32>,
    /// No pending deadline is earlier (cancelled ones may have been).
    earliest: Option<Instant>,
    /// The sweeper, while it waits.
    sweeper: Option<Waker>,
    sweeping: bool,
}

impl Registry {
    /// Makes the registry executor `id`'s: one left by an executor that has
    /// ended (nothing of it runs) is replaced by an empty one and returned,
    /// to be dropped once the borrow ends (dropping its wakers may drop
    /// futures that hold slots).
    fn claim(&mut self, id: usize) -> Option<Registry> {
        (self.executor != Some(id)).then(|| {
            std::mem::replace(
                self,
                Registry {
                    executor: Some(id),
                    ..Registry::default()
                },
            )
        })
    }
}

thread_local! {
    static REGISTRY: RefCell<Registry> = RefCell::new(Registry::default());
}

impl Slot {
    /// An idle connection's wait for `at`: wakes `waker` then, or when
    /// [`wake_idle`] is called (its owner looks at why).
    pub fn idle(at: Instant, waker: &Waker) -> Slot {
        Slot::register(at, waker, true)
    }

    /// A deadline at `at` that wakes `waker` when it passes (see
    /// [`Slot::expired`]); for futures that poll their deadline themselves.
    pub fn at(at: Instant, waker: &Waker) -> Slot {
        Slot::register(at, waker, false)
    }

    fn register(at: Instant, waker: &Waker, idle: bool) -> Slot {
        let id = glommio::executor().id();
        // Wakers are dropped only after the borrow ends: dropping the last
        // one of a task drops its future, which may hold slots.
        let mut stale = None;
        let (index, wake, spawn) = REGISTRY.with(|r| {
            let mut r = r.borrow_mut();
            stale = r.claim(id);
            let entry = Entry::Pending {
                at,
                waker: waker.clone(),
                idle,
            };
            let index = match r.free.pop() {
                Some(i) => {
                    r.entries[i as usize] = entry;
                    i
                }
                None => {
                    r.entries.push(entry);
                    (r.entries.len() - 1) as u32
                }
            };
            let mut wake = None;
            if r.earliest.is_none_or(|e| at < e) {
                r.earliest = Some(at);
                wake = r.sweeper.take();
            }
            let spawn = !std::mem::replace(&mut r.sweeping, true);
            (index, wake, spawn)
        });
        drop(stale);
        if spawn {
            spawn_sweeper(id);
        }
        if let Some(w) = wake {
            w.wake();
        }
        Slot { index }
    }

    /// The deadline has passed; else `waker` is the one to wake when it does.
    pub fn expired(&self, waker: &Waker) -> bool {
        let mut old = None;
        let expired =
            REGISTRY.with(
                |r| match r.borrow_mut().entries.get_mut(self.index as usize) {
                    Some(Entry::Pending { waker: w, .. }) => {
                        if !w.will_wake(waker) {
                            old = Some(std::mem::replace(w, waker.clone()));
                        }
                        false
                    }
                    Some(Entry::Expired) => true,
                    // Not ours (the registry was reset): never fires.
                    Some(Entry::Free) | None => false,
                },
            );
        drop(old);
        expired
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // try_*: a slot dropped while the thread's locals are torn down, or
        // by a future that a waker dropped inside the registry.
        let old = REGISTRY
            .try_with(|r| {
                let mut r = r.try_borrow_mut().ok()?;
                let e = r.entries.get_mut(self.index as usize)?;
                if matches!(e, Entry::Free) {
                    return None;
                }
                let old = std::mem::replace(e, Entry::Free);
                r.free.push(self.index);
                Some(old)
            })
            .ok()
            .flatten();
        drop(old);
    }
}

/// Wakes every idle wait registered on this core ([`Slot::idle`]); their
/// deadlines stay as they are.
pub fn wake_idle() {
    let wakers: Vec<Waker> = REGISTRY.with(|r| {
        r.borrow()
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Pending {
                    waker, idle: true, ..
                } => Some(waker.clone()),
                _ => None,
            })
            .collect()
    });
    for w in wakers {
        w.wake();
    }
}

/// The core's one timer for every deadline: sleeps until the earliest,
/// expires what is due (waking its task), finds the next and sleeps again.
fn spawn_sweeper(executor: usize) {
    // The alarm (its timerfd) is made here, not when the task first runs.
    let alarm = Alarm::new();
    glommio::spawn_local(sweeper(executor, alarm)).detach();
}

/// Starts this core's sweeper now, with its timerfd, so that the process
/// holds all its descriptors once the core serves (a shard calls it at
/// start; otherwise the first deadline would).
pub fn start() {
    let id = glommio::executor().id();
    let mut stale = None;
    let spawn = REGISTRY.with(|r| {
        let mut r = r.borrow_mut();
        stale = r.claim(id);
        !std::mem::replace(&mut r.sweeping, true)
    });
    drop(stale);
    if spawn {
        spawn_sweeper(id);
    }
}

async fn sweeper(executor: usize, mut alarm: Alarm) {
    struct Running(usize);
    impl Drop for Running {
        fn drop(&mut self) {
            let old = REGISTRY
                .try_with(|r| {
                    let mut r = r.try_borrow_mut().ok()?;
                    if r.executor != Some(self.0) {
                        return None;
                    }
                    r.sweeping = false;
                    r.sweeper.take()
                })
                .ok()
                .flatten();
            drop(old);
        }
    }
    let _running = Running(executor);
    let mut due: Vec<Waker> = Vec::new();
    let mut swept: Option<Instant> = None;
    poll_fn::<(), _>(|cx| loop {
        let now = Instant::now();
        let next = REGISTRY.with(|r| {
            let mut r = r.borrow_mut();
            let may_sweep = swept.is_none_or(|s| now >= s + MIN_SWEEP);
            if may_sweep && r.earliest.is_some_and(|e| e <= now) {
                swept = Some(now);
                let mut earliest: Option<Instant> = None;
                for e in r.entries.iter_mut() {
                    if let Entry::Pending { at, .. } = e {
                        if *at <= now {
                            if let Entry::Pending { waker, .. } =
                                std::mem::replace(e, Entry::Expired)
                            {
                                due.push(waker);
                            }
                        } else if earliest.is_none_or(|x| *at < x) {
                            earliest = Some(*at);
                        }
                    }
                }
                r.earliest = earliest;
            }
            r.sweeper = Some(cx.waker().clone());
            r.earliest
        });
        for w in due.drain(..) {
            w.wake();
        }
        let Some(at) = next else {
            alarm.disarm();
            return Poll::Pending;
        };
        let at = swept.map_or(at, |s| at.max(s + MIN_SWEEP));
        alarm.set(at, now);
        if alarm.poll(cx).is_pending() {
            return Poll::Pending;
        }
    })
    .await
}

/// The sweeper's wake-up: a timerfd read through glommio's ring, not a
/// glommio timer. glommio keeps its timers in a `BTreeMap` that it splits
/// at the current time on every pass of its loop, twice per pass when it
/// sleeps (`Timers::process_timers`: `split_off` then dropping the part
/// that is due). With one timer in the map that is a node allocated and
/// freed each time: about 470 instructions per call, 2,800 per L4 request
/// on a core that serves one request at a time (`perf/l4cost callgrind`
/// with one connection), where an empty map costs a few. The sweeper's
/// timer was the one in the map on a core that only forwards, so it now
/// waits on a timerfd instead: one `READ` pending in the main ring while a
/// deadline is, completed when the timerfd expires (a timerfd is pollable:
/// io_uring arms its own poll, no worker thread), and one `timerfd_settime`
/// each time the earliest deadline moves, which is when glommio's timer was
/// replaced before. With no timer in glommio's map, glommio's sleeps arm no
/// timeout either: the pending read wakes the core.
///
/// If the timerfd cannot be made or read (no file descriptors left), the
/// sweeper falls back to a glommio timer, as before.
/// The timerfd's read in flight.
type Read = Pin<Box<dyn Future<Output = glommio::Result<(), ()>>>>;

enum Alarm {
    Fd {
        file: std::rc::Rc<glommio::io::BufferedFile>,
        /// The read in flight: it completes when the timerfd expires.
        read: Option<Read>,
        /// What the timerfd is set to.
        at: Option<Instant>,
    },
    Timer(Option<(Instant, glommio::timer::Timer)>),
}

impl Alarm {
    fn new() -> Alarm {
        #[cfg(test)]
        if tests::NO_TIMERFD.with(std::cell::Cell::get) {
            return Alarm::Timer(None);
        }
        // SAFETY: plain system call; the fd is owned by the file below.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "deadline sweeper: no timerfd; using a glommio timer"
            );
            return Alarm::Timer(None);
        }
        use std::os::fd::FromRawFd;
        // SAFETY: a fresh fd that nothing else owns; the file closes it.
        let file = unsafe { glommio::io::BufferedFile::from_raw_fd(fd) };
        Alarm::Fd {
            file: std::rc::Rc::new(file),
            read: None,
            at: None,
        }
    }

    /// Fires at `at` (read `now`), unless it already is set for then.
    fn set(&mut self, at: Instant, now: Instant) {
        match self {
            Alarm::Fd { file, at: set, .. } => {
                if *set == Some(at) {
                    return;
                }
                // A zero it_value disarms: a deadline already due fires in 1 ns.
                let d = at
                    .saturating_duration_since(now)
                    .max(Duration::from_nanos(1));
                if settime(file, d) {
                    *set = Some(at);
                } else {
                    *self = Alarm::Timer(None);
                    self.set(at, now);
                }
            }
            Alarm::Timer(armed) => {
                if armed.as_ref().is_none_or(|(a, _)| *a != at) {
                    let timer = glommio::timer::Timer::new(at.saturating_duration_since(now));
                    *armed = Some((at, timer));
                }
            }
        }
    }

    /// Nothing to wake for: a set timerfd is cleared (its read stays in
    /// flight for the next), a glommio timer dropped.
    fn disarm(&mut self) {
        match self {
            Alarm::Fd { file, at, .. } => {
                if at.take().is_some() {
                    settime(file, Duration::ZERO);
                }
            }
            Alarm::Timer(armed) => *armed = None,
        }
    }

    /// Ready once the time it was set for has come (then it is unset).
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        match self {
            Alarm::Fd { file, read, at, .. } => {
                let r = read.get_or_insert_with(|| {
                    let file = file.clone();
                    Box::pin(async move { file.read_at(0, 8).await.map(drop) })
                });
                match r.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(result) => {
                        *read = None;
                        *at = None;
                        if let Err(e) = result {
                            tracing::warn!(error = %e, "deadline sweeper: timerfd read failed; using a glommio timer");
                            // The sweeper sets it again on its next turn.
                            *self = Alarm::Timer(None);
                        }
                        Poll::Ready(())
                    }
                }
            }
            Alarm::Timer(armed) => match armed.as_mut() {
                Some((_, t)) => match Pin::new(t).poll(cx) {
                    Poll::Ready(_) => {
                        *armed = None;
                        Poll::Ready(())
                    }
                    Poll::Pending => Poll::Pending,
                },
                None => Poll::Pending,
            },
        }
    }
}

/// Sets timerfd `file` to expire once, `d` from now (zero: disarmed);
/// false if the system call failed.
fn settime(file: &glommio::io::BufferedFile, d: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: d.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: a timerfd the file owns, and a valid itimerspec.
    unsafe { libc::timerfd_settime(file.as_raw_fd(), 0, &spec, std::ptr::null_mut()) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn executor() -> glommio::LocalExecutor {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .expect("executor")
    }

    #[test]
    fn ready_futures_pass_and_pending_ones_expire() {
        executor().run(async {
            assert_eq!(until(Some(Instant::now()), async { 7 }).await, Some(7));
            let never = std::future::pending::<()>();
            let t0 = Instant::now();
            let at = t0 + Duration::from_millis(20);
            assert_eq!(until(Some(at), never).await, None);
            assert!(Instant::now() >= at, "expired before its deadline");
            // No deadline: the future's own result.
            let slow = glommio::timer::sleep(Duration::from_millis(5));
            assert!(until(None, slow).await.is_some());
        });
    }

    /// Many deadlines, registered in any order and most cancelled: each
    /// that is left fires, not before its time (the earlier ones registered
    /// after a later one too), and the cancelled ones leave nothing behind.
    #[test]
    fn deadlines_fire_and_cancelled_ones_do_not() {
        executor().run(async {
            let t0 = Instant::now();
            let long = until(
                Some(t0 + Duration::from_secs(30)),
                std::future::pending::<()>(),
            );
            let mut long = Box::pin(long);
            // Registered (pending once) before the shorter ones.
            assert!(futures_lite::future::poll_once(long.as_mut())
                .await
                .is_none());
            for i in 0..100u64 {
                // Cancelled at once: dropped after one pending poll.
                let f = until(
                    Some(t0 + Duration::from_millis(5 + i)),
                    std::future::pending::<()>(),
                );
                let mut f = Box::pin(f);
                assert!(futures_lite::future::poll_once(f.as_mut()).await.is_none());
            }
            let mut tasks = Vec::new();
            for ms in [40u64, 10, 25] {
                tasks.push(glommio::spawn_local(async move {
                    let at = t0 + Duration::from_millis(ms);
                    let r = until(Some(at), std::future::pending::<()>()).await;
                    (ms, r.is_none(), Instant::now() >= at)
                }));
            }
            for t in tasks {
                let (ms, expired, on_time) = t.await;
                assert!(expired && on_time, "{ms} ms deadline");
            }
            // The 30 s deadline is still pending, and far from due.
            assert!(futures_lite::future::poll_once(long.as_mut())
                .await
                .is_none());
            assert!(t0.elapsed() < Duration::from_secs(30));
            let live = REGISTRY.with(|r| {
                r.borrow()
                    .entries
                    .iter()
                    .filter(|e| matches!(e, Entry::Pending { .. }))
                    .count()
            });
            assert_eq!(live, 1, "only the 30 s deadline is left");
        });
    }

    thread_local! {
        /// The sweeper of this thread's next executor goes without a
        /// timerfd (its fallback).
        pub(super) static NO_TIMERFD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Deadlines registered in every order, most cancelled, some due.
    async fn deadlines_in_every_order() {
        let t0 = Instant::now();
        for i in 0..20u64 {
            let f = until(
                Some(t0 + Duration::from_millis(3 + i)),
                std::future::pending::<()>(),
            );
            let mut f = Box::pin(f);
            assert!(futures_lite::future::poll_once(f.as_mut()).await.is_none());
        }
        let tasks: Vec<_> = [30u64, 5, 15, 0]
            .into_iter()
            .map(|ms| {
                glommio::spawn_local(async move {
                    let at = t0 + Duration::from_millis(ms);
                    let r = until(Some(at), std::future::pending::<()>()).await;
                    (ms, r.is_none(), Instant::now() >= at)
                })
            })
            .collect();
        for t in tasks {
            let (ms, expired, on_time) = t.await;
            assert!(expired && on_time, "{ms} ms deadline");
        }
    }

    /// The timerfds of this process: their `it_value` (seconds) as
    /// /proc/self/fdinfo shows it.
    fn timerfds_armed_seconds() -> Vec<u64> {
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd") {
            let e = e.expect("fd entry");
            let is_timerfd = std::fs::read_link(e.path())
                .is_ok_and(|l| l.to_string_lossy() == "anon_inode:[timerfd]");
            if !is_timerfd {
                continue;
            }
            let info = std::fs::read_to_string(
                std::path::Path::new("/proc/self/fdinfo").join(e.file_name()),
            )
            .unwrap_or_default();
            // "it_value: (7, 499812345)"
            if let Some(v) = info.lines().find_map(|l| l.strip_prefix("it_value: (")) {
                if let Some(sec) = v.split(',').next().and_then(|x| x.trim().parse().ok()) {
                    out.push(sec);
                }
            }
        }
        out
    }

    /// The sweeper sleeps on a timerfd set for the earliest deadline (not
    /// in glommio's timer map), and deadlines fire on it as they did on a
    /// glommio timer; so they do on the fallback.
    #[test]
    fn the_sweeper_waits_on_a_timerfd_and_falls_back_to_a_timer() {
        executor().run(async {
            // 97 s: no other test sets a deadline that far.
            let far = until(
                Some(Instant::now() + Duration::from_secs(97)),
                std::future::pending::<()>(),
            );
            let mut far = Box::pin(far);
            assert!(futures_lite::future::poll_once(far.as_mut())
                .await
                .is_none());
            // The sweeper runs once it is scheduled.
            glommio::yield_if_needed().await;
            let mut armed = Vec::new();
            for _ in 0..100 {
                armed = timerfds_armed_seconds();
                if armed.iter().any(|s| (90..=97).contains(s)) {
                    break;
                }
                glommio::executor().yield_task_queue_now().await;
            }
            assert!(
                armed.iter().any(|s| (90..=97).contains(s)),
                "no timerfd set for the 97 s deadline: {armed:?}"
            );
            deadlines_in_every_order().await;
            drop(far);
        });
        NO_TIMERFD.with(|n| n.set(true));
        executor().run(deadlines_in_every_order());
        NO_TIMERFD.with(|n| n.set(false));
    }

    /// `wake_idle` wakes the idle waits and leaves other deadlines alone;
    /// neither expires.
    #[test]
    fn wake_idle_wakes_only_idle_waits() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        executor().run(async {
            let (idle, other) = (
                Arc::new(Count(AtomicUsize::new(0))),
                Arc::new(Count(AtomicUsize::new(0))),
            );
            let (wi, wo) = (Waker::from(idle.clone()), Waker::from(other.clone()));
            let later = Instant::now() + Duration::from_secs(60);
            let i = Slot::idle(later, &wi);
            let o = Slot::register(later, &wo, false);
            wake_idle();
            assert_eq!(idle.0.load(Ordering::Relaxed), 1);
            assert_eq!(other.0.load(Ordering::Relaxed), 0);
            assert!(!i.expired(&wi) && !o.expired(&wo));
            drop(i);
            wake_idle();
            assert_eq!(
                idle.0.load(Ordering::Relaxed),
                1,
                "a cancelled wait is not woken"
            );
        });
    }

    /// A later executor on the same thread is not confused by an earlier
    /// one's deadlines or sweeper.
    #[test]
    fn a_new_executor_starts_afresh() {
        for _ in 0..2 {
            executor().run(async {
                let at = Instant::now() + Duration::from_millis(5);
                let f = until(Some(at), std::future::pending::<()>());
                let mut f = Box::pin(f);
                assert!(futures_lite::future::poll_once(f.as_mut()).await.is_none());
                // Left registered when this executor ends.
                std::mem::forget(f);
                let g = until(Some(at), std::future::pending::<()>());
                assert!(g.await.is_none());
            });
        }
    }
}
