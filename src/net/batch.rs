//! Waiting for company: the event loop's batching of multiplexed work.
//!
//! A core that carries HTTP/2 streams and has no time to sleep turns its loop
//! as fast as events come: each pass finds one or two of them (a request on
//! one connection, an answer on another), and every read, write and TCP
//! packet carries one call. Envoy, four times slower per call in user space,
//! gathers four calls per `epoll_wait` and per write without trying; Remora,
//! fast, sent four times its packets, and on loopback a packet costs both
//! ends ~10 µs of system time (perf/README.md, "Session 27"). So, while
//! such a core is saturated, a pass of its loop that finds nothing new does
//! not go straight back to its tasks: it waits in the ring, up to
//! [`Settings::max_wait`] (`[runtime] batch_wait`), for [`EVENTS`]
//! completions. What arrives meanwhile is handled in one pass: the answers
//! of many streams leave in one write, the requests of many calls are read
//! in one read, and the kernel acknowledges them with fewer packets. Like a
//! NIC's interrupt moderation, it trades a bounded delay for fewer, larger
//! batches, and only where the delay is free: on a core with spare time the
//! loop sleeps anyway, and nothing waits.
//!
//! When a core waits, by its own measure over [`WINDOW`]:
//! - it carries at least [`MIN_STREAMS`] HTTP/2 streams (downstream or
//!   upstream, [`Multiplexed`]): a wait merges frames only where many
//!   streams share a connection. One-to-one connections (L4, HTTP/1) have
//!   nothing to merge; measured, waiting there only delayed them (l4-keepalive
//!   -19 % requests/s, a bulk transfer's neighbours 2-3x their p99);
//! - to start, it slept (parked in its ring) under [`SATURATED_IDLE`] of the
//!   last window: a core that sleeps has time to spare, and a wait would only
//!   be latency;
//! - once waiting, it goes on while its waits and sleeps stay under [`SPARE`]
//!   of the window, i.e. while it is still busy for 30 % of its time without
//!   them; less than that, the load is light enough to run without.
//!
//! The wait itself is one `io_uring_enter` with `GETEVENTS`, a minimum of
//! [`EVENTS`] completions and a timeout (`IORING_ENTER_EXT_ARG`, 5.11+), made
//! by the shim's wrapper of liburing's `io_uring_submit` right after glommio
//! submits the pass's requests on a deferred main ring, and only if nothing
//! is waiting in the completion queue (see `net::uring`).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// The completions a wait asks for before its time is up.
pub const EVENTS: u32 = 32;
/// HTTP/2 streams a core must carry for its loop to wait.
pub const MIN_STREAMS: u32 = 4;
/// How often a core decides whether it waits.
pub const WINDOW: Duration = Duration::from_millis(2);
/// Under this share of the window asleep, a core counts as saturated: it
/// starts waiting.
pub const SATURATED_IDLE: f64 = 0.25;
/// A waiting core that spent this share of the window waiting or asleep has
/// time to spare: it stops waiting. (Measured on grpc-unary's rig: stopping
/// at 50 % left half the packets a wait saves, 1.22-1.30 TCP packets per
/// call against 0.92-0.97 at 70 %; perf/README.md, "Session 28".)
pub const SPARE: f64 = 0.70;
/// The longest `batch_wait` the config takes: beyond it a wait is latency
/// (a loop pass is a few µs).
pub const MAX_WAIT_LIMIT: Duration = Duration::from_millis(1);
/// `batch_wait`'s default.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_micros(100);

struct State {
    /// Zero: never wait.
    max_wait: Cell<Duration>,
    /// `[runtime] sleep_batch_wait` in µs; zero: sleeps end at the first event.
    sleep_wait_us: Cell<u32>,
    /// Sleeps made with it since the thread started.
    sleep_batches: Cell<u64>,
    streams: Cell<u32>,
    waiting: Cell<bool>,
    /// The current window: its start, and the core's sleep and wait totals then.
    since: Cell<Option<Instant>>,
    slept_then: Cell<u64>,
    waited_then: Cell<u64>,
    /// Waiting whatever the core's load (tests of the mechanism).
    forced: Cell<bool>,
    /// Nanoseconds spent in waits, and how many, since the thread started.
    waited: Cell<u64>,
    waits: Cell<u64>,
}

thread_local! {
    static STATE: State = const {
        State {
            max_wait: Cell::new(Duration::ZERO),
            sleep_wait_us: Cell::new(0),
            sleep_batches: Cell::new(0),
            streams: Cell::new(0),
            waiting: Cell::new(false),
            since: Cell::new(None),
            forced: Cell::new(false),
            slept_then: Cell::new(0),
            waited_then: Cell::new(0),
            waited: Cell::new(0),
            waits: Cell::new(0),
        }
    };
}

/// This core's longest wait (`[runtime] batch_wait`; zero turns batching
/// off). Each shard sets it at start and on every reload.
pub fn set_max_wait(d: Duration) {
    STATE.with(|s| s.max_wait.set(d.min(MAX_WAIT_LIMIT)));
}

/// The completions a sleep waits for before [`set_sleep_wait`]'s time is up.
pub const SLEEP_EVENTS: u32 = 16;

/// This core's sleep moderation (`[runtime] sleep_batch_wait`; zero turns it
/// off): when the loop has nothing to run it sleeps until [`SLEEP_EVENTS`]
/// completions have come or this long has passed, and then until the first.
/// An event that comes while the core sleeps waits at most this long, and
/// none waits at all once the core has slept that long: on a lightly loaded
/// core, where events come further apart, nothing is delayed. At a steady
/// moderate load (a sidecar's usual one) a pass of the loop then serves
/// several events instead of one, and each pass costs glommio's preemption
/// timers (perf/README.md, "Session 32"). Each shard sets it at start and on
/// every reload.
pub fn set_sleep_wait(d: Duration) {
    let us = d.min(MAX_WAIT_LIMIT).as_micros() as u32;
    STATE.with(|s| s.sleep_wait_us.set(us));
}

/// The sleep's moderation in µs, if on; counts the sleep.
pub fn sleep_wait_us() -> Option<u32> {
    STATE.with(|s| {
        let us = s.sleep_wait_us.get();
        (us > 0).then(|| {
            s.sleep_batches.set(s.sleep_batches.get() + 1);
            us
        })
    })
}

/// Sleeps made with moderation on this thread so far.
pub fn sleep_batches() -> u64 {
    STATE.with(|s| s.sleep_batches.get())
}

/// An HTTP/2 stream on this core, downstream or upstream, for as long as the
/// value lives.
pub struct Multiplexed(());

impl Multiplexed {
    pub fn open() -> Self {
        STATE.with(|s| s.streams.set(s.streams.get() + 1));
        Multiplexed(())
    }
}

impl Drop for Multiplexed {
    fn drop(&mut self) {
        STATE.with(|s| s.streams.set(s.streams.get().saturating_sub(1)));
    }
}

/// HTTP/2 streams open on this core.
pub fn streams() -> u32 {
    STATE.with(|s| s.streams.get())
}

/// Waits made on this thread so far, and the nanoseconds they took.
pub fn waits() -> (u64, u64) {
    STATE.with(|s| (s.waits.get(), s.waited.get()))
}

/// The decision at a window's end: whether the next window waits.
/// `slept` and `waited`: shares of the window spent asleep and in waits.
pub fn decide(waiting: bool, slept: f64, waited: f64) -> bool {
    if waiting {
        slept + waited < SPARE
    } else {
        slept < SATURATED_IDLE
    }
}

/// How long the pass about to end should wait for company (None: not at
/// all). Cheap when batching is off or the core carries few streams: no
/// clock is read.
pub fn wait_now() -> Option<Duration> {
    STATE.with(|s| {
        let max = s.max_wait.get();
        if max.is_zero() || s.streams.get() < MIN_STREAMS {
            s.since.set(None);
            s.waiting.set(false);
            return None;
        }
        if s.forced.get() {
            return Some(max);
        }
        let now = Instant::now();
        let slept = super::uring::slept_nanos();
        let waited = s.waited.get();
        match s.since.get() {
            Some(t) if now.saturating_duration_since(t) < WINDOW => {}
            Some(t) => {
                let window = now.saturating_duration_since(t).as_nanos() as f64;
                let share = |total: u64, then: u64| total.saturating_sub(then) as f64 / window;
                s.waiting.set(decide(
                    s.waiting.get(),
                    share(slept, s.slept_then.get()),
                    share(waited, s.waited_then.get()),
                ));
                s.since.set(Some(now));
                s.slept_then.set(slept);
                s.waited_then.set(waited);
            }
            None => {
                // A first window measures before anything waits.
                s.since.set(Some(now));
                s.slept_then.set(slept);
                s.waited_then.set(waited);
            }
        }
        s.waiting.get().then_some(max)
    })
}

/// Makes this core wait whenever it carries streams and batching is on,
/// whatever its load: for tests of the wait itself (the decision has its
/// own).
#[doc(hidden)]
pub fn force_waiting(on: bool) {
    STATE.with(|s| s.forced.set(on));
}

/// Records a wait that took `took`.
pub fn waited(took: Duration) {
    STATE.with(|s| {
        s.waits.set(s.waits.get() + 1);
        s.waited.set(s.waited.get() + took.as_nanos() as u64);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A core starts waiting only when it hardly sleeps, and stops once its
    /// waits and sleeps fill 70 % of its time.
    #[test]
    fn the_decision_follows_the_cores_spare_time() {
        // Not waiting yet: only a core that hardly slept starts.
        assert!(decide(false, 0.0, 0.0));
        assert!(decide(false, 0.2, 0.0));
        assert!(!decide(false, 0.3, 0.0));
        // Waiting: goes on while waits and sleep leave it busy...
        assert!(decide(true, 0.0, 0.5));
        assert!(decide(true, 0.3, 0.3));
        // ...stops when they make up 70 % of the window.
        assert!(!decide(true, 0.0, 0.75));
        assert!(!decide(true, 0.5, 0.25));
        // A core that did not sleep starts again in the window after.
        assert!(decide(false, 0.0, 0.0));
    }

    /// Without streams, or with batching off, nothing waits and no window
    /// starts; with them, the first window only measures.
    #[test]
    fn waits_need_streams_and_a_setting() {
        std::thread::spawn(|| {
            set_max_wait(Duration::from_micros(100));
            assert_eq!(wait_now(), None, "no streams");
            let open: Vec<_> = (0..MIN_STREAMS).map(|_| Multiplexed::open()).collect();
            assert_eq!(streams(), MIN_STREAMS);
            assert_eq!(wait_now(), None, "the first window measures");
            // A thread that never parks (no executor here) is saturated.
            std::thread::sleep(WINDOW + Duration::from_millis(1));
            assert_eq!(wait_now(), Some(Duration::from_micros(100)));
            // Long waits leave it with time to spare: it stops. A second
            // of waits is over SPARE of any window the sleep below can make,
            // however late the thread wakes on a busy machine (a wait of one
            // window's length was not, once the sleep overshot by 0.9 ms).
            waited(Duration::from_secs(1));
            std::thread::sleep(WINDOW + Duration::from_millis(1));
            assert_eq!(wait_now(), None, "waits filled the window");
            drop(open);
            assert_eq!(streams(), 0);
            set_max_wait(Duration::from_secs(1));
            assert_eq!(STATE.with(|s| s.max_wait.get()), MAX_WAIT_LIMIT);
            set_max_wait(Duration::ZERO);
            let _streams: Vec<_> = (0..MIN_STREAMS).map(|_| Multiplexed::open()).collect();
            assert_eq!(wait_now(), None, "off");
        })
        .join()
        .unwrap();
    }
}
