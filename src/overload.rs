//! The overload manager (Envoy's, in miniature): one thread measures the
//! process against the `[overload]` limits and tells the cores which
//! protective actions are on.
//!
//! ```text
//! "remora-overload" thread, every refresh_interval:
//!   measure: RSS (/proc/self/statm), open fds (/proc/self/fd, capped by
//!            RLIMIT_NOFILE), downstream connections (each core's own slot)
//!   ─ evaluate (pure) ─► OverloadState { pressures, actions } (ArcSwap)
//!     └─ actions changed? ─ Command::Overload ─► every core: Shard::apply_overload
//! cores: accept loop pauses (stop_accepting_connections), idle HTTP
//!        connections close and keep-alive ends (shed_idle_connections),
//!        new requests get 503 `OL` (stop_accepting_requests)
//! admin: /stats and Prometheus read the published state
//! ```
//!
//! Pressure is usage / limit per resource, clamped to 1 (Envoy's resource
//! monitors); the highest one triggers. Each action has a threshold in percent;
//! an action is on while the pressure is at or above it and goes off when
//! the pressure falls back below (Envoy's threshold trigger, no hysteresis:
//! the actions themselves bring the pressure down, and recovery should be
//! prompt). A core learns of a change through its control socket, the way it
//! learns of a reload, so an idle core is not woken on a timer and a request
//! costs one `Cell` read.
//!
//! The connection count is the one input written by the cores: each core
//! stores its own open-connection count in its own cache line (a plain
//! store, never read by another core). Everything the cores read is the
//! published immutable state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::config::ser_duration;

/// `[overload]`: limits (0 = not monitored) and action thresholds in percent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OverloadConfig {
    /// How often the resources are measured (Envoy's `refresh_interval`).
    #[serde(serialize_with = "ser_duration")]
    pub refresh_interval: Duration,
    /// Resident memory of the process (Envoy's fixed_heap
    /// `max_heap_size_bytes`; measured as RSS here, which also counts the
    /// binary and io_uring's locked memory).
    pub max_heap_size_bytes: u64,
    /// Downstream connections open on all cores together (Envoy's
    /// `global_downstream_max_connections`).
    pub max_active_downstream_connections: u64,
    /// Open file descriptors; never more than the soft RLIMIT_NOFILE,
    /// read again at every measurement.
    pub max_open_fds: u64,
    /// Close idle HTTP keep-alive connections and stop keeping new ones alive.
    pub shed_idle_connections_threshold: u8,
    /// Answer new requests 503 with flag `OL`.
    pub stop_accepting_requests_threshold: u8,
    /// Leave new connections in the listen backlog.
    pub stop_accepting_connections_threshold: u8,
}

impl Default for OverloadConfig {
    fn default() -> OverloadConfig {
        OverloadConfig {
            refresh_interval: Duration::from_millis(250),
            max_heap_size_bytes: 0,
            max_active_downstream_connections: 0,
            max_open_fds: 0,
            shed_idle_connections_threshold: 90,
            stop_accepting_requests_threshold: 95,
            stop_accepting_connections_threshold: 95,
        }
    }
}

impl OverloadConfig {
    /// Whether any resource is monitored.
    pub fn enabled(&self) -> bool {
        self.max_heap_size_bytes > 0
            || self.max_active_downstream_connections > 0
            || self.max_open_fds > 0
    }
}

/// The protective actions, as a core applies them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Actions {
    pub shed_idle_connections: bool,
    pub stop_accepting_requests: bool,
    pub stop_accepting_connections: bool,
}

impl Actions {
    /// `(name, on)` in a fixed order, for the gauges.
    pub fn fields(&self) -> [(&'static str, bool); 3] {
        [
            ("shed_idle_connections", self.shed_idle_connections),
            ("stop_accepting_requests", self.stop_accepting_requests),
            (
                "stop_accepting_connections",
                self.stop_accepting_connections,
            ),
        ]
    }
}

/// What a resource monitor measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub used: u64,
    /// 0: not monitored.
    pub limit: u64,
}

impl Usage {
    /// used / limit in percent, clamped to 100 (0 when not monitored).
    pub fn pressure(&self) -> u8 {
        if self.limit == 0 {
            return 0;
        }
        (self.used.saturating_mul(100) / self.limit).min(100) as u8
    }
}

/// The resources, in the order the gauges show them.
pub const RESOURCES: [&str; 3] = ["heap", "downstream_connections", "open_fds"];

/// What the monitor publishes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OverloadState {
    /// Increases with every change of `actions`.
    pub generation: u64,
    /// By [`RESOURCES`].
    pub usage: [Usage; 3],
    pub actions: Actions,
}

/// The actions that `usage` triggers under `config` (pure).
pub fn evaluate(config: &OverloadConfig, usage: &[Usage; 3]) -> Actions {
    let pressure = usage.iter().map(Usage::pressure).max().unwrap_or(0);
    let on = |threshold: u8| pressure > 0 && pressure >= threshold;
    Actions {
        shed_idle_connections: on(config.shed_idle_connections_threshold),
        stop_accepting_requests: on(config.stop_accepting_requests_threshold),
        stop_accepting_connections: on(config.stop_accepting_connections_threshold),
    }
}

/// One core's open-connection count, alone in its cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot(AtomicU64);

#[derive(Debug)]
struct Shared {
    state: ArcSwap<OverloadState>,
    connections: Vec<Slot>,
    /// Measurements made ([`OverloadHandle::refresh`] calls).
    refreshes: AtomicU64,
    /// The monitor thread, once started: unparked when the last handle goes,
    /// so that a monitor asleep for want of work ends.
    monitor: OnceLock<Thread>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(t) = self.monitor.get() {
            t.unpark();
        }
    }
}

/// The cores' and the admin's access to the overload state.
#[derive(Debug, Clone)]
pub struct OverloadHandle {
    shared: Arc<Shared>,
}

impl OverloadHandle {
    pub fn new(cores: usize) -> OverloadHandle {
        OverloadHandle {
            shared: Arc::new(Shared {
                state: ArcSwap::from_pointee(OverloadState::default()),
                connections: (0..cores).map(|_| Slot::default()).collect(),
                refreshes: AtomicU64::new(0),
                monitor: OnceLock::new(),
            }),
        }
    }

    /// The published state.
    pub fn current(&self) -> OverloadState {
        **self.shared.state.load()
    }

    /// Core `core` has `n` downstream connections open (its own slot; a
    /// plain store).
    pub fn set_connections(&self, core: usize, n: u64) {
        if let Some(s) = self.shared.connections.get(core) {
            s.0.store(n, Ordering::Relaxed);
        }
    }

    fn connections(&self) -> u64 {
        self.shared
            .connections
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .sum()
    }

    /// How many times the resources were measured (or, with `[overload]`
    /// off, found unmonitored).
    pub fn refreshes(&self) -> u64 {
        self.shared.refreshes.load(Ordering::Relaxed)
    }

    /// Measures, evaluates and publishes once; true when the actions changed.
    pub fn refresh(&self, config: &OverloadConfig) -> bool {
        self.shared.refreshes.fetch_add(1, Ordering::Relaxed);
        let usage = if config.enabled() {
            measure(config, self.connections())
        } else {
            [Usage::default(); 3]
        };
        let actions = evaluate(config, &usage);
        let old = self.current();
        let changed = actions != old.actions;
        self.shared.state.store(Arc::new(OverloadState {
            generation: old.generation + u64::from(changed),
            usage,
            actions,
        }));
        changed
    }

    /// Starts the "remora-overload" thread: it refreshes every
    /// `refresh_interval` of the current config and calls `notify` when the
    /// actions change. While no resource is monitored it sleeps until a new
    /// config is published (an idle proxy is not woken to find nothing to
    /// measure). It ends when every other handle is gone, or `notify`
    /// returns false.
    pub fn start_monitor(
        &self,
        config: Arc<crate::config::ConfigHandle>,
        notify: impl Fn() -> bool + Send + 'static,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let weak: Weak<Shared> = Arc::downgrade(&self.shared);
        let thread = std::thread::Builder::new()
            .name("remora-overload".into())
            .spawn(move || {
                // Before its first look: a publication after it unparks.
                config.watch(std::thread::current());
                loop {
                    let snapshot = config.current();
                    let c = &snapshot.config.overload;
                    let pause = c.enabled().then_some(c.refresh_interval);
                    let Some(shared) = weak.upgrade() else { return };
                    let handle = OverloadHandle { shared };
                    if handle.refresh(c) && !notify() {
                        return;
                    }
                    drop(handle);
                    drop(snapshot);
                    // Woken early by a publication or the last handle's drop;
                    // a spurious wake-up only measures once more.
                    match pause {
                        Some(pause) => std::thread::park_timeout(pause),
                        None => std::thread::park(),
                    }
                }
            })?;
        // One monitor per proxy: only the first started is woken by the last
        // handle's drop.
        let _ = self.shared.monitor.set(thread.thread().clone());
        Ok(thread)
    }
}

fn measure(config: &OverloadConfig, connections: u64) -> [Usage; 3] {
    let heap = if config.max_heap_size_bytes > 0 {
        Usage {
            used: rss_bytes(),
            limit: config.max_heap_size_bytes,
        }
    } else {
        Usage::default()
    };
    let conns = Usage {
        used: connections,
        limit: config.max_active_downstream_connections,
    };
    let fds = if config.max_open_fds > 0 {
        let rlimit = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(u64::MAX, |(soft, _)| soft);
        Usage {
            used: open_fds(),
            limit: config.max_open_fds.min(rlimit),
        }
    } else {
        Usage::default()
    };
    [heap, conns, fds]
}

/// Resident set size: the second field of /proc/self/statm, in pages.
fn rss_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(4096) as u64
}

/// Open file descriptors (entries of /proc/self/fd, less the one reading it).
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count().saturating_sub(1) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(used: u64, limit: u64) -> Usage {
        Usage { used, limit }
    }

    #[test]
    fn thresholds_trigger_by_the_highest_pressure() {
        let c = OverloadConfig {
            max_active_downstream_connections: 100,
            ..OverloadConfig::default()
        };
        let none = Actions::default();
        let shed = Actions {
            shed_idle_connections: true,
            ..none
        };
        let all = Actions {
            shed_idle_connections: true,
            stop_accepting_requests: true,
            stop_accepting_connections: true,
        };
        let off = Usage::default();
        for (u, want) in [
            ([off, usage(0, 100), off], none),
            ([off, usage(89, 100), off], none),
            ([off, usage(90, 100), off], shed),
            ([off, usage(94, 100), off], shed),
            ([off, usage(95, 100), off], all),
            ([usage(10 << 30, 1 << 20), usage(1, 100), off], all),
            ([off, off, usage(91, 100)], shed),
        ] {
            assert_eq!(evaluate(&c, &u), want, "{u:?}");
        }
    }

    #[test]
    fn pressure_is_clamped_and_zero_without_a_limit() {
        assert_eq!(usage(5, 0).pressure(), 0);
        assert_eq!(usage(5, 10).pressure(), 50);
        assert_eq!(usage(u64::MAX, 10).pressure(), 100);
    }

    #[test]
    fn refresh_publishes_a_new_generation_only_on_change() {
        let h = OverloadHandle::new(2);
        let c = OverloadConfig {
            max_active_downstream_connections: 10,
            ..OverloadConfig::default()
        };
        assert!(!h.refresh(&c));
        h.set_connections(0, 6);
        h.set_connections(1, 4);
        assert!(h.refresh(&c));
        let s = h.current();
        assert_eq!(s.generation, 1);
        assert!(s.actions.stop_accepting_connections);
        assert_eq!(s.usage[1], usage(10, 10));
        assert!(!h.refresh(&c));
        h.set_connections(0, 0);
        assert!(h.refresh(&c));
        assert_eq!(h.current().actions, Actions::default());
        assert_eq!(h.current().generation, 2);
    }

    #[test]
    fn measures_this_process() {
        assert!(rss_bytes() > 0);
        assert!(open_fds() >= 3);
    }

    /// Polls `done` for up to `secs` seconds (a generous bound: the test
    /// asserts what happens, not how fast).
    fn within(secs: u64, done: impl Fn() -> bool) -> bool {
        let until = std::time::Instant::now() + Duration::from_secs(secs);
        while std::time::Instant::now() < until {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        done()
    }

    #[test]
    fn the_monitor_sleeps_while_off_wakes_for_a_reload_and_ends_with_its_handles() {
        use crate::config::{Config, ConfigHandle};
        let config = Arc::new(ConfigHandle::new(Config::builtin()));
        let handle = OverloadHandle::new(1);
        let (told, news) = std::sync::mpsc::channel();
        let monitor = handle
            .start_monitor(config.clone(), move || told.send(()).is_ok())
            .unwrap();
        // Off: it looks once, then sleeps (it used to look every second).
        assert!(within(30, || handle.refreshes() == 1));
        std::thread::sleep(Duration::from_millis(1_500));
        assert_eq!(handle.refreshes(), 1);

        // A reload that turns it on is measured at once: one connection
        // open of at most one.
        handle.set_connections(0, 1);
        let mut on = Config::builtin();
        on.overload.max_active_downstream_connections = 1;
        config.publish(on);
        news.recv_timeout(Duration::from_secs(30))
            .expect("the actions changed and the cores were told");
        assert!(handle.current().actions.stop_accepting_connections);

        // Off again: the actions clear, and the monitor sleeps once more.
        config.publish(Config::builtin());
        news.recv_timeout(Duration::from_secs(30))
            .expect("the actions cleared");
        assert_eq!(handle.current().actions, Actions::default());
        let settled = handle.refreshes();
        std::thread::sleep(Duration::from_millis(1_500));
        assert_eq!(handle.refreshes(), settled);

        // The last handle gone, the sleeping monitor ends.
        drop(handle);
        assert!(within(30, || monitor.is_finished()));
    }
}
