//! The health-check thread: an epoll loop over non-blocking probe sockets and
//! a heap of timers (each endpoint's next probe, or its probe's deadline).
//!
//! Every endpoint has exactly one pending timer: "probe due" while idle, "probe
//! deadline" while a probe is in flight. A timer is a ticket in a binary heap;
//! rescheduling issues a new ticket and leaves the old entry to be skipped when
//! it surfaces, which keeps every operation O(log n) with 1000s of endpoints.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use super::probe::{http_request, Check, Interest, Probe, ProbeFailure, Step};
use super::tracker::{Outcome, Tracker, Verdict};
use super::{
    EndpointHealthStats, HealthCheckConfig, HealthCheckKind, HealthTarget, HealthView, Shared,
    DEFAULT_EXPECTED_STATUSES,
};

/// Messages from the [`HealthChecker`](super::HealthChecker) to its thread.
pub enum Control {
    Update(Vec<HealthTarget>),
    Stop,
}

/// The epoll token of the waker; probe sockets use their slot index.
const WAKE: u64 = u64::MAX;

/// When a probe cannot even start for a local reason (no fd, no memory), try
/// again after this long: the endpoint is not to blame, so no verdict changes.
const LOCAL_RETRY: Duration = Duration::from_millis(500);

/// An eventfd that interrupts `epoll_wait` when a control message is queued.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Waker {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: 8 bytes from a live u64. EAGAIN means the counter is
        // saturated, so the thread is due to wake anyway.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn drain(&self) {
        let mut n: u64 = 0;
        // SAFETY: 8 bytes into a live u64; EAGAIN (already drained) is fine.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut n as *mut u64).cast(), 8) };
    }
}

/// A minimal level-triggered epoll set.
struct Poller {
    fd: OwnedFd,
}

impl Poller {
    fn new() -> io::Result<Poller> {
        // SAFETY: plain syscall; the fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd we own.
        Ok(Poller {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: a valid epoll fd and a live epoll_event.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` (forever if `None`); returns how many events
    /// were filled in. An interrupted wait returns 0.
    fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        // Round up: a timer 0.3 ms away must not turn into a busy 0 ms wait.
        let ms = timeout.map_or(-1, |t| {
            i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
        });
        let len = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: `events` is valid for `len` entries.
        let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), len, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) {
                Ok(0)
            } else {
                Err(e)
            };
        }
        Ok(n as usize)
    }
}

fn epoll_events(interest: Interest) -> u32 {
    // ERR and HUP are always reported; the probe finds out which by trying.
    match interest {
        Interest::Write => libc::EPOLLOUT as u32,
        Interest::Read => (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
    }
}

/// Probe counters since the endpoint was added.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    attempts: u64,
    successes: u64,
    failures: u64,
    timeouts: u64,
}

/// Everything the thread knows about one (cluster, address).
struct Endpoint {
    cluster: String,
    addr: SocketAddr,
    config: Arc<HealthCheckConfig>,
    check: Check,
    tracker: Tracker,
    counters: Counters,
    last_failure: Option<ProbeFailure>,
    probe: Option<Probe>,
    /// What the probe's socket is registered for, to skip needless EPOLL_CTL_MODs.
    interest: Interest,
    /// Ticket of this endpoint's one pending timer.
    timer: u64,
    /// A local error stopped the last start; warn once per episode, not per retry.
    local_error: bool,
}

impl Endpoint {
    fn new(t: HealthTarget) -> Endpoint {
        let check = check_for(&t.cluster, &t.config);
        Endpoint {
            cluster: t.cluster,
            addr: t.addr,
            config: t.config,
            check,
            tracker: Tracker::new(),
            counters: Counters::default(),
            last_failure: None,
            probe: None,
            interest: Interest::Write,
            timer: 0,
            local_error: false,
        }
    }

    fn stats(&self) -> EndpointHealthStats {
        EndpointHealthStats {
            cluster: self.cluster.clone(),
            addr: self.addr,
            healthy: self.tracker.verdict() == Verdict::Healthy,
            checked: self.tracker.checked(),
            consecutive_successes: self.tracker.consecutive_successes(),
            consecutive_failures: self.tracker.consecutive_failures(),
            attempts: self.counters.attempts,
            successes: self.counters.successes,
            failures: self.counters.failures,
            timeouts: self.counters.timeouts,
            last_failure: self.last_failure.as_ref().map(ToString::to_string),
        }
    }
}

fn check_for(cluster: &str, config: &HealthCheckConfig) -> Check {
    match &config.kind {
        HealthCheckKind::Tcp => Check::Tcp,
        HealthCheckKind::Http {
            path,
            host,
            expected_statuses,
            retriable_statuses,
        } => Check::Http {
            request: http_request(path, host.as_deref().unwrap_or(cluster)),
            expected: if expected_statuses.is_empty() {
                DEFAULT_EXPECTED_STATUSES.to_vec()
            } else {
                expected_statuses.clone()
            },
            retriable: retriable_statuses.clone(),
        },
    }
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    at: Instant,
    ticket: u64,
    slot: usize,
}

type Key = (String, SocketAddr);

/// The thread's state. Only the thread touches it; results leave through `shared`.
pub struct Checker {
    shared: Arc<Shared>,
    control: Receiver<Control>,
    waker: Arc<Waker>,
    poller: Poller,
    /// Endpoints by slot; a slot's index is its sockets' epoll token.
    slots: Vec<Option<Endpoint>>,
    free: Vec<usize>,
    index: HashMap<Key, usize>,
    timers: BinaryHeap<Reverse<Timer>>,
    next_ticket: u64,
    /// xorshift64 state for the interval jitter.
    rng: u64,
    /// Some verdict changed, or an ejected endpoint was removed: publish a view.
    dirty: bool,
    /// Slots whose details changed since the last publication.
    touched: Vec<usize>,
}

impl Checker {
    pub fn new(
        shared: Arc<Shared>,
        control: Receiver<Control>,
        waker: Arc<Waker>,
    ) -> io::Result<Checker> {
        let poller = Poller::new()?;
        poller.ctl(
            libc::EPOLL_CTL_ADD,
            waker.fd.as_raw_fd(),
            WAKE,
            libc::EPOLLIN as u32,
        )?;
        let mut seed = [0u8; 8];
        let rng = match getrandom::getrandom(&mut seed) {
            Ok(()) => u64::from_ne_bytes(seed),
            // Jitter only needs proxies to differ, not secrecy.
            Err(_) => {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64)
                    ^ u64::from(std::process::id())
            }
        };
        Ok(Checker {
            shared,
            control,
            waker,
            poller,
            slots: Vec::new(),
            free: Vec::new(),
            index: HashMap::new(),
            timers: BinaryHeap::new(),
            next_ticket: 1,
            rng: rng | 1,
            dirty: false,
            touched: Vec::new(),
        })
    }

    /// Runs until told to stop or the [`HealthChecker`](super::HealthChecker) is gone.
    pub fn run(&mut self) -> io::Result<()> {
        let empty = libc::epoll_event { events: 0, u64: 0 };
        let mut events = vec![empty; 256];
        loop {
            // Control first: removals close their sockets here, between two
            // waits, so no event in hand can name a slot that changed owner.
            loop {
                match self.control.try_recv() {
                    Ok(Control::Update(targets)) => self.apply(targets, Instant::now()),
                    Ok(Control::Stop) | Err(TryRecvError::Disconnected) => return Ok(()),
                    Err(TryRecvError::Empty) => break,
                }
            }
            self.fire_timers(Instant::now());
            self.publish();
            let next = self
                .timers
                .peek()
                .map(|Reverse(t)| t.at.saturating_duration_since(Instant::now()));
            let n = self.poller.wait(&mut events, next)?;
            let now = Instant::now();
            for ev in &events[..n] {
                let token = ev.u64;
                if token == WAKE {
                    self.waker.drain();
                } else {
                    self.on_ready(token as usize, now);
                }
            }
        }
    }

    /// Replaces the set of endpoints (see [`HealthChecker::update`](super::HealthChecker::update)).
    fn apply(&mut self, targets: Vec<HealthTarget>, now: Instant) {
        let mut wanted: HashMap<Key, HealthTarget> = HashMap::with_capacity(targets.len());
        for t in targets {
            wanted.insert((t.cluster.clone(), t.addr), t);
        }
        let gone: Vec<Key> = self
            .index
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        if !gone.is_empty() {
            let mut stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            for key in gone {
                let Some(i) = self.index.remove(&key) else {
                    continue;
                };
                // Dropping the endpoint closes its probe's socket.
                if let Some(ep) = self.slots[i].take() {
                    if ep.tracker.verdict() == Verdict::Unhealthy {
                        self.dirty = true;
                    }
                }
                self.free.push(i);
                stats.remove(&key);
            }
        }
        for (key, t) in wanted {
            match self.index.get(&key) {
                Some(&i) => {
                    let Some(ep) = self.slots[i].as_mut() else {
                        continue;
                    };
                    if *ep.config != *t.config {
                        // New settings: abandon the probe made with the old ones
                        // and probe now, keeping the verdict and counts.
                        ep.check = check_for(&ep.cluster, &t.config);
                        ep.probe = None;
                        ep.config = t.config;
                        self.schedule(i, now);
                        self.touched.push(i);
                    } else {
                        ep.config = t.config;
                    }
                }
                None => {
                    let ep = Endpoint::new(t);
                    let i = match self.free.pop() {
                        Some(i) => {
                            self.slots[i] = Some(ep);
                            i
                        }
                        None => {
                            self.slots.push(Some(ep));
                            self.slots.len() - 1
                        }
                    };
                    self.index.insert(key, i);
                    // Envoy probes a new host at once (no initial_jitter here).
                    self.schedule(i, now);
                    self.touched.push(i);
                }
            }
        }
        // Rescheduling leaves dead heap entries behind; drop them when they
        // outnumber the live ones, so the heap stays O(endpoints).
        if self.timers.len() > 2 * self.index.len() + 64 {
            let slots = &self.slots;
            self.timers.retain(|Reverse(t)| {
                slots
                    .get(t.slot)
                    .and_then(Option::as_ref)
                    .is_some_and(|ep| ep.timer == t.ticket)
            });
        }
    }

    fn schedule(&mut self, slot: usize, at: Instant) {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        if let Some(ep) = self.slots[slot].as_mut() {
            ep.timer = ticket;
            self.timers.push(Reverse(Timer { at, ticket, slot }));
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(Reverse(top)) = self.timers.peek() {
            if top.at > now {
                break;
            }
            let Some(Reverse(t)) = self.timers.pop() else {
                break;
            };
            let Some(ep) = self.slots.get_mut(t.slot).and_then(Option::as_mut) else {
                continue;
            };
            if ep.timer != t.ticket {
                continue; // superseded
            }
            match ep.probe.take() {
                Some(probe) => {
                    let failure = ProbeFailure::Timeout(probe.doing());
                    drop(probe);
                    self.finish(t.slot, Err(failure), now);
                }
                None => self.start_probe(t.slot, now),
            }
        }
    }

    fn start_probe(&mut self, i: usize, now: Instant) {
        let Some(ep) = self.slots[i].as_mut() else {
            return;
        };
        let (probe, step) = match Probe::start(ep.addr, &ep.check) {
            Ok(started) => started,
            Err(e) => {
                if !ep.local_error {
                    warn!(cluster = %ep.cluster, addr = %ep.addr, error = %e, "cannot start a health probe (local error, e.g. out of file descriptors; the endpoint keeps its verdict)");
                }
                ep.local_error = true;
                self.schedule(i, after(now, LOCAL_RETRY));
                return;
            }
        };
        ep.local_error = false;
        ep.counters.attempts += 1;
        self.touched.push(i);
        match (step, probe) {
            (Step::Wait(interest), Some(probe)) => {
                if let Err(e) = self.poller.ctl(
                    libc::EPOLL_CTL_ADD,
                    probe.fd(),
                    i as u64,
                    epoll_events(interest),
                ) {
                    warn!(cluster = %ep.cluster, addr = %ep.addr, error = %e, "cannot watch a health probe (local error; the endpoint keeps its verdict)");
                    ep.counters.attempts -= 1;
                    self.schedule(i, after(now, LOCAL_RETRY));
                    return;
                }
                ep.probe = Some(probe);
                ep.interest = interest;
                let deadline = after(now, ep.config.timeout);
                self.schedule(i, deadline);
            }
            (Step::Done(result), _) => self.finish(i, result, now),
            // `start` keeps the probe exactly when it waits.
            (Step::Wait(_), None) => self.finish(i, Err(ProbeFailure::Closed), now),
        }
    }

    fn on_ready(&mut self, i: usize, now: Instant) {
        let Some(ep) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let Some(probe) = ep.probe.as_mut() else {
            return; // a stale readiness for a probe already finished
        };
        match probe.advance(&ep.check) {
            Step::Wait(interest) if interest == ep.interest => {}
            Step::Wait(interest) => {
                let fd = probe.fd();
                match self
                    .poller
                    .ctl(libc::EPOLL_CTL_MOD, fd, i as u64, epoll_events(interest))
                {
                    Ok(()) => ep.interest = interest,
                    Err(e) => {
                        warn!(cluster = %ep.cluster, addr = %ep.addr, error = %e, "cannot watch a health probe (local error; the endpoint keeps its verdict)");
                        ep.probe = None;
                        ep.counters.attempts -= 1;
                        self.schedule(i, after(now, LOCAL_RETRY));
                    }
                }
            }
            Step::Done(result) => {
                ep.probe = None;
                self.finish(i, result, now);
            }
        }
    }

    /// Records a completed probe and schedules the next one.
    fn finish(&mut self, i: usize, result: Result<(), ProbeFailure>, now: Instant) {
        let Some(ep) = self.slots[i].as_mut() else {
            return;
        };
        ep.probe = None;
        let outcome = match &result {
            Ok(()) => {
                ep.counters.successes += 1;
                Outcome::Pass
            }
            Err(f) => {
                ep.counters.failures += 1;
                if matches!(f, ProbeFailure::Timeout(_)) {
                    ep.counters.timeouts += 1;
                }
                debug!(cluster = %ep.cluster, addr = %ep.addr, reason = %f, "health probe failed");
                ep.last_failure = Some(f.clone());
                f.outcome()
            }
        };
        let config = &ep.config;
        match ep.tracker.record(
            outcome,
            config.healthy_threshold,
            config.unhealthy_threshold,
        ) {
            Some(Verdict::Unhealthy) => {
                self.dirty = true;
                let reason = ep.last_failure.as_ref().map(ToString::to_string);
                warn!(cluster = %ep.cluster, addr = %ep.addr, reason = reason.as_deref().unwrap_or(""), consecutive_failures = ep.tracker.consecutive_failures(), "endpoint failed active health checking: ejected");
            }
            Some(Verdict::Healthy) => {
                self.dirty = true;
                info!(cluster = %ep.cluster, addr = %ep.addr, "endpoint passed active health checking: back in rotation");
            }
            None => {}
        }
        let wait = config
            .interval
            .saturating_add(jitter(&mut self.rng, config.interval_jitter));
        self.touched.push(i);
        self.schedule(i, after(now, wait));
    }

    /// Publishes the details of touched endpoints, and a new view if a verdict changed.
    fn publish(&mut self) {
        if !self.touched.is_empty() {
            self.touched.sort_unstable();
            self.touched.dedup();
            let mut stats = self.shared.stats.lock().unwrap_or_else(|p| p.into_inner());
            for &i in &self.touched {
                if let Some(ep) = self.slots.get(i).and_then(Option::as_ref) {
                    stats.insert((ep.cluster.clone(), ep.addr), ep.stats());
                }
            }
            self.touched.clear();
        }
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut unhealthy: HashMap<String, std::collections::HashSet<SocketAddr>> = HashMap::new();
        for ep in self.slots.iter().flatten() {
            if ep.tracker.verdict() == Verdict::Unhealthy {
                unhealthy
                    .entry(ep.cluster.clone())
                    .or_default()
                    .insert(ep.addr);
            }
        }
        let generation = self.shared.view.load().generation + 1;
        self.shared.store(HealthView {
            generation,
            unhealthy,
        });
    }
}

/// `now + d`, saturating at a year ahead: `Instant + Duration` panics on
/// overflow, and an interval is whatever the config says.
fn after(now: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(365 * 24 * 3600);
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// A random duration in `[0, max)` (xorshift64; statistical quality is not
/// needed, only that proxies started together drift apart).
fn jitter(state: &mut u64, max: Duration) -> Duration {
    let max_ns = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if max_ns == 0 {
        return Duration::ZERO;
    }
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    Duration::from_nanos(x % max_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_durations_do_not_overflow() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now);
        assert_eq!(
            after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        let mut s = 0x9e37_79b9_7f4a_7c15;
        assert_eq!(jitter(&mut s, Duration::ZERO), Duration::ZERO);
        let max = Duration::from_millis(250);
        let draws: Vec<Duration> = (0..1000).map(|_| jitter(&mut s, max)).collect();
        assert!(draws.iter().all(|d| *d < max));
        // Not stuck on one value.
        assert!(draws.iter().any(|d| *d != draws[0]));
    }

    #[test]
    fn checks_are_prepared_with_envoys_defaults() {
        let config = HealthCheckConfig {
            kind: HealthCheckKind::Http {
                path: "/ready".into(),
                host: None,
                expected_statuses: vec![],
                retriable_statuses: vec![(503, 504)],
            },
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            interval_jitter: Duration::ZERO,
        };
        let Check::Http {
            request,
            expected,
            retriable,
        } = check_for("reviews", &config)
        else {
            panic!("an HTTP check");
        };
        assert!(request.starts_with(b"GET /ready HTTP/1.1\r\nHost: reviews\r\n"));
        assert_eq!(expected, vec![(200, 201)]);
        assert_eq!(retriable, vec![(503, 504)]);
    }
}
