//! Per-core counters: plain `Cell`s owned by one core, no atomics on the hot
//! path. Cores hand out a copy ([`Counters`]) that is summed on read.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// A copy of one core's (or the sum of all cores') counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Counters { $( $(#[doc = $doc])* pub $name: u64, )* }

        impl Counters {
            /// Field-wise sum.
            pub fn add(&mut self, o: &Counters) { $( self.$name += o.$name; )* }
            /// `(name, value)` pairs, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$( (stringify!($name), self.$name), )*]
            }
            /// `(name, doc comment)` pairs, in declaration order: the
            /// Prometheus HELP text (a counter without a doc comment would
            /// fail `promtool check metrics`, which tests/operability.rs runs).
            pub fn help() -> Vec<(&'static str, &'static str)> {
                vec![$( (stringify!($name), concat!($($doc, )* "")), )*]
            }
        }

        /// The live counters of one core.
        #[derive(Debug, Default)]
        pub struct CoreStats { $( pub $name: Cell<u64>, )* }

        impl CoreStats {
            pub fn snapshot(&self) -> Counters { Counters { $( $name: self.$name.get(), )* } }
        }
    };
}

counters! {
    /// Connections accepted on any listener.
    downstream_cx_total,
    /// Connections open right now.
    downstream_cx_active,
    /// Accepted and closed at once: the core was at max_connections_per_core.
    downstream_cx_overflow,
    /// Refused: the original destination was Remora itself (not redirected, or a loop).
    downstream_cx_loop_refused,
    /// Refused: no listener or capture config covers it any more.
    downstream_cx_no_route,
    /// accept() failures (EMFILE, ENFILE, ENOBUFS, ...); the loop backs off and retries.
    accept_errors,
    /// Upstream connections established.
    upstream_cx_total,
    /// Upstream connects that failed (refused, unreachable).
    upstream_cx_connect_fail,
    /// Upstream connects that did not finish within connect_timeout.
    upstream_cx_connect_timeout,
    /// Bytes from downstream to upstream.
    bytes_upstream,
    /// Bytes from upstream to downstream.
    bytes_downstream,
    /// Connections that ended with a reset on either side.
    cx_reset,
    /// Connections closed by the idle timeout.
    cx_idle_timeout,
    /// Access-log entries dropped because the log sink could not keep up.
    access_log_dropped,
    /// Waits of the core's loop for company while saturated with HTTP/2 streams ([runtime] batch_wait).
    loop_batch_waits,
    /// Sleeps of the core's loop that waited for company ([runtime] sleep_batch_wait).
    loop_sleep_batches,
    /// Connections that took the L7 (HTTP/1) path.
    downstream_cx_http,
    /// Connections that took the L7 path over HTTP/2.
    downstream_cx_http2,
    /// Streams (requests) on downstream HTTP/2 connections.
    downstream_rq_http2,
    /// Downstream HTTP/2 streams the client reset before their answer was
    /// complete (Envoy's http2.rx_reset).
    http2_rx_reset,
    /// Downstream HTTP/2 streams this proxy reset (upstream failed mid-answer,
    /// a stalled reader; Envoy's http2.tx_reset).
    http2_tx_reset,
    /// Downstream HTTP/2 connections closed for a protocol error, a flood or
    /// oversized headers (GOAWAY sent by the codec; Envoy's
    /// http2.rx_messaging_error and the flood counters together).
    http2_rx_messaging_error,
    /// Downstream HTTP/2 connections closed with ENHANCE_YOUR_CALM for too
    /// many premature resets (rapid reset, CVE-2023-44487).
    http2_premature_reset_closed,
    /// Downstream HTTP/2 streams whose reader stalled (zero window) or whose
    /// request body stalled for stream_idle_timeout.
    http2_stream_idle_timeout,
    /// Upstream HTTP/2 connections made.
    upstream_cx_http2_total,
    /// Requests sent again because the upstream did not process them (an
    /// HTTP/2 stream refused, or above a GOAWAY's last stream id).
    upstream_rq_resent,
    /// HTTP requests answered (by an upstream or locally).
    rq_total,
    /// HTTP responses with a 1xx status (from an upstream or local).
    rq_1xx,
    /// HTTP responses with a 2xx status (from an upstream or local).
    rq_2xx,
    /// HTTP responses with a 3xx status (from an upstream or local).
    rq_3xx,
    /// HTTP responses with a 4xx status (from an upstream or local).
    rq_4xx,
    /// HTTP responses with a 5xx status (from an upstream or local).
    rq_5xx,
    /// Upstream request attempts after the first (route retry policy).
    rq_retry,
    /// Requests sent upstream, every attempt counted (retries included).
    upstream_rq_total,
    /// Requests sent on a pooled (reused) upstream connection.
    upstream_cx_reused,
    /// Requests answered 413 because the body exceeded max_request_body_bytes.
    downstream_rq_too_large,
    /// Requests answered 408 because their body stalled (stream_idle_timeout).
    downstream_rq_body_timeout,
    /// Connections closed after a response that left the request body partly
    /// unread, with a lingering drain of the rest (early upstream answer,
    /// local reply to an upload).
    downstream_cx_lingering_close,
    /// Requests answered 429 by a route's or virtual host's local rate limit (flag RL).
    rq_rate_limited,
    /// Requests denied by an authorization policy (403, flag RBAC).
    rq_rbac_denied,
    /// Inbound connections closed by an authorization policy (L4).
    downstream_cx_rbac_denied,
    /// Requests delayed by fault injection (flag DI).
    rq_fault_delay,
    /// Requests answered by fault injection instead of the upstream (flag FI).
    rq_fault_abort,
    /// Copies of requests sent to a route's mirror cluster (started; see
    /// rq_mirror_failed for those that got no complete answer).
    rq_mirrored,
    /// Mirrored copies that got no complete response: no endpoint, circuit
    /// breaker open, connect failure, reset, timeout or a bad response. The
    /// client's own request is never affected.
    rq_mirror_failed,
    /// Connections closed (reset) at accept by a listener's connection_rate_limit.
    downstream_cx_rate_limited,
    /// Requests answered 503 (flag OL) by the overload manager's
    /// stop_accepting_requests (Envoy's name).
    downstream_rq_overload_close,
    /// Idle HTTP connections closed by the overload manager's
    /// shed_idle_connections.
    downstream_cx_overload_shed,
}

impl CoreStats {
    pub fn inc(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
    pub fn dec(c: &Cell<u64>) {
        c.set(c.get().saturating_sub(1));
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (name, v) in self.fields() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{name}={v}")?;
        }
        Ok(())
    }
}

/// Latency histograms of one core (microseconds).
#[derive(Debug, Clone)]
pub struct Histograms {
    /// Whole downstream connection lifetime.
    pub downstream_cx_length_us: Histogram<u64>,
    /// HTTP request duration: first byte of the head to the last byte answered.
    pub rq_time_us: Histogram<u64>,
}

impl Default for Histograms {
    fn default() -> Self {
        Histograms {
            downstream_cx_length_us: new_histogram(),
            rq_time_us: new_histogram(),
        }
    }
}

impl Histograms {
    pub fn add(&mut self, o: &Histograms) {
        // Both come from new_histogram(), so bounds match and add cannot fail.
        let _ = self.downstream_cx_length_us.add(&o.downstream_cx_length_us);
        let _ = self.rq_time_us.add(&o.rq_time_us);
    }
}

/// 1 µs to 1 hour at 2 significant digits: a few KiB per histogram.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("valid histogram bounds")
}

/// Counters of one cluster endpoint (only configured endpoints are tracked,
/// so the set is bounded by the config, not by traffic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointStats {
    pub cx_total: u64,
    pub cx_connect_fail: u64,
    pub cx_active: u64,
}

/// One core's state of one cluster (summed over cores on read).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterReport {
    /// Held now, per breaker resource (connections, pending, requests, retries).
    pub breaker_open: [u64; 4],
    /// Times each breaker overflowed.
    pub breaker_overflow: [u64; 4],
    /// Outlier ejections, and those skipped by max_ejection_percent.
    pub ejections: u64,
    pub ejections_overflow: u64,
    /// Picks that found no usable endpoint (503 UH), and picks in panic mode.
    pub no_healthy: u64,
    pub panic: u64,
    pub endpoints: BTreeMap<SocketAddr, EndpointReport>,
}

/// One cluster endpoint as the cores see it (summed over cores).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointReport {
    /// Cores that have it ejected now.
    pub ejected_cores: u64,
    /// Requests in flight.
    pub rq_active: u64,
    /// Times the balancer chose it.
    pub lb_picks: u64,
}

impl ClusterReport {
    pub fn add(&mut self, o: &ClusterReport) {
        for i in 0..4 {
            self.breaker_open[i] += o.breaker_open[i];
            self.breaker_overflow[i] += o.breaker_overflow[i];
        }
        self.ejections += o.ejections;
        self.ejections_overflow += o.ejections_overflow;
        self.no_healthy += o.no_healthy;
        self.panic += o.panic;
        for (a, e) in &o.endpoints {
            let t = self.endpoints.entry(*a).or_default();
            t.ejected_cores += e.ejected_cores;
            t.rq_active += e.rq_active;
            t.lb_picks += e.lb_picks;
        }
    }
}

/// What one core reports when asked: counters plus histograms.
#[derive(Debug, Clone, Default)]
pub struct CoreReport {
    pub counters: Counters,
    pub histograms: Histograms,
    pub endpoints: BTreeMap<SocketAddr, EndpointStats>,
    /// Requests (and L4 connections) by Envoy response flag: a bounded set.
    pub response_flags: BTreeMap<&'static str, u64>,
    /// Per configured cluster this core has used.
    pub clusters: BTreeMap<String, ClusterReport>,
    /// TLS events by (side, kind, value): see [`TlsStat`].
    pub tls: BTreeMap<TlsStat, u64>,
    /// Authorization decisions by (policy name, result): `allowed`,
    /// `denied`, `audited` (Envoy's rbac `allowed`/`denied`/`shadow_*`).
    pub rbac: BTreeMap<(String, &'static str), u64>,
}

/// A TLS counter's key: side (`downstream`/`upstream`), kind (`handshake`,
/// `session_reused`, `failure`, `version`, `cipher`, `plaintext_refused`,
/// `passthrough`) and a value for the labelled kinds (the failure reason,
/// `TLSv1.3`, the cipher suite), empty otherwise. All static: the set is
/// bounded, and counting never allocates.
pub type TlsStat = (&'static str, &'static str, &'static str);

impl CoreReport {
    pub fn add(&mut self, o: &CoreReport) {
        self.counters.add(&o.counters);
        self.histograms.add(&o.histograms);
        for (addr, e) in &o.endpoints {
            let t = self.endpoints.entry(*addr).or_default();
            t.cx_total += e.cx_total;
            t.cx_connect_fail += e.cx_connect_fail;
            t.cx_active += e.cx_active;
        }
        for (flag, n) in &o.response_flags {
            *self.response_flags.entry(flag).or_default() += n;
        }
        for (name, c) in &o.clusters {
            self.clusters.entry(name.clone()).or_default().add(c);
        }
        for (k, n) in &o.tls {
            *self.tls.entry(*k).or_default() += n;
        }
        for (k, n) in &o.rbac {
            *self.rbac.entry(k.clone()).or_default() += n;
        }
    }
}

/// Where cores deposit their reports when the admin side asks for them.
///
/// Nothing here is touched on the data path: a core copies its `Cell`s and
/// histograms into its slot only when it receives a "report" command on its
/// control socket (see `shard::Control`), i.e. once per scrape.
#[derive(Debug)]
pub struct StatsHub {
    slots: Vec<Mutex<(u64, CoreReport)>>,
    changed: Condvar,
    lock: Mutex<()>,
}

impl StatsHub {
    pub fn new(cores: usize) -> StatsHub {
        StatsHub {
            slots: (0..cores)
                .map(|_| Mutex::new((0, CoreReport::default())))
                .collect(),
            changed: Condvar::new(),
            lock: Mutex::new(()),
        }
    }

    /// Called by core `id` with the generation it was asked for.
    pub fn deposit(&self, id: usize, generation: u64, report: CoreReport) {
        if let Some(slot) = self.slots.get(id) {
            *slot.lock().unwrap_or_else(|p| p.into_inner()) = (generation, report);
        }
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// Waits until every core has deposited `generation` (or `timeout`), then
    /// returns the sum and the per-core reports.
    pub fn collect(&self, generation: u64, timeout: Duration) -> (CoreReport, Vec<CoreReport>) {
        let deadline = Instant::now() + timeout;
        let mut guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let done = self
                .slots
                .iter()
                .all(|s| s.lock().unwrap_or_else(|p| p.into_inner()).0 >= generation);
            let left = deadline.saturating_duration_since(Instant::now());
            if done || left.is_zero() {
                break;
            }
            guard = self
                .changed
                .wait_timeout(guard, left.min(Duration::from_millis(50)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(guard);
        let per_core: Vec<CoreReport> = self
            .slots
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).1.clone())
            .collect();
        let mut total = CoreReport::default();
        for r in &per_core {
            total.add(r);
        }
        (total, per_core)
    }
}
