//! The periodic re-resolution of DNS clusters (Envoy's STRICT_DNS cluster):
//! one plain thread that re-resolves every host of every cluster each
//! `refresh_rate` and reports a cluster's endpoint set only when it changed.
//!
//! Per host, the addresses of the last lookup that got an answer are kept: a
//! lookup that fails (timeout, SERVFAIL, unreachable server, malformed
//! answer) changes nothing, is logged and counted. An authoritative "no such
//! name" (NXDOMAIN/NODATA) is an answer, with no addresses, as in Envoy.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{debug, info, warn};

use super::{DnsError, Resolver};
use crate::upstream::discovery::DiscoveredEndpoint;

/// Envoy's default `dns_refresh_rate`.
pub const DEFAULT_REFRESH_RATE: Duration = Duration::from_secs(5);

/// Something that turns a host name into addresses, blocking. [`Resolver`]
/// is the real one; tests use closures.
pub trait HostResolver: Send + Sync {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, DnsError>;
}

impl HostResolver for Resolver {
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.lookup(host)
    }
}

impl<F> HostResolver for F
where
    F: Fn(&str) -> Result<Vec<IpAddr>, DnsError> + Send + Sync,
{
    fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        self(host)
    }
}

/// One `host:port` of a DNS cluster, with what its endpoints inherit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    pub host: String,
    pub port: u16,
    pub weight: u32,
    pub locality: String,
}

/// A cluster with `discovery = "dns"`.
#[derive(Clone)]
pub struct DnsCluster {
    pub name: String,
    pub hosts: Vec<DnsHost>,
    /// How often the hosts are resolved again ([`DEFAULT_REFRESH_RATE`]).
    pub refresh_rate: Duration,
    /// Which servers to ask (the cluster's `dns_resolvers`, or the system's).
    pub resolver: Arc<dyn HostResolver>,
}

impl fmt::Debug for DnsCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsCluster")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("refresh_rate", &self.refresh_rate)
            .finish_non_exhaustive()
    }
}

impl DnsCluster {
    /// Same hosts, rate and resolver: an update that keeps this cluster's
    /// schedule and does not force a lookup.
    fn same_as(&self, o: &DnsCluster) -> bool {
        self.hosts == o.hosts
            && self.refresh_rate == o.refresh_rate
            && std::ptr::addr_eq(Arc::as_ptr(&self.resolver), Arc::as_ptr(&o.resolver))
    }
}

/// Counters over all clusters, readable from any thread.
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Host lookups started.
    pub lookups: AtomicU64,
    /// Host lookups that failed (the last good addresses were kept).
    pub dns_failures: AtomicU64,
    /// Callbacks delivered (endpoint sets that changed).
    pub updates: AtomicU64,
}

/// Per-cluster counters, named after Envoy's `cluster.<name>.update_*` stats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterDnsStats {
    /// Refreshes of the cluster (all of its hosts).
    pub update_attempt: u64,
    /// Refreshes where every host got an answer.
    pub update_success: u64,
    /// Refreshes where at least one host's lookup failed.
    pub update_failure: u64,
    /// Refreshes whose endpoint set equalled the one last delivered.
    pub update_no_rebuild: u64,
    /// Endpoints in the set last delivered.
    pub endpoints: usize,
    /// The last failure, until a refresh succeeds for every host.
    pub last_error: Option<String>,
}

type Callback = Box<dyn Fn(&str, Vec<DiscoveredEndpoint>) + Send>;

/// What the owner changes and the worker reads.
struct Control {
    stop: bool,
    clusters: Vec<DnsCluster>,
    /// Bumped by every `update`, so the worker notices a new cluster list.
    version: u64,
    refresh_all: bool,
}

struct Shared {
    control: Mutex<Control>,
    wake: Condvar,
    /// Read by the worker between lookups, so `stop` does not wait for a
    /// whole refresh round.
    stopping: AtomicBool,
    stats: Arc<DnsStats>,
    cluster_stats: Mutex<BTreeMap<String, ClusterDnsStats>>,
}

/// Re-resolves DNS clusters on its own thread (`remora-dns`) and calls back
/// with a cluster's new endpoints when they change.
///
/// The callback runs on that thread, never with a lock held, so it may call
/// [`DnsRefresher::update`]; it must not panic (that would end the thread). Dropping the refresher stops and joins the
/// thread; a lookup in progress finishes first (at most the resolver's
/// `timeout × attempts × servers`).
pub struct DnsRefresher {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl DnsRefresher {
    /// Starts the thread; every cluster is resolved at once, and its first
    /// answer is always delivered (even an empty one), later ones only when
    /// the set changed.
    pub fn start<F>(clusters: Vec<DnsCluster>, on_change: F) -> io::Result<DnsRefresher>
    where
        F: Fn(&str, Vec<DiscoveredEndpoint>) + Send + 'static,
    {
        let shared = Arc::new(Shared {
            control: Mutex::new(Control {
                stop: false,
                clusters,
                version: 1,
                refresh_all: false,
            }),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            stats: Arc::new(DnsStats::default()),
            cluster_stats: Mutex::new(BTreeMap::new()),
        });
        let worker = Worker {
            shared: shared.clone(),
            on_change: Box::new(on_change),
            entries: BTreeMap::new(),
            seen_version: 0,
        };
        let thread = std::thread::Builder::new()
            .name("remora-dns".into())
            .spawn(move || worker.run())?;
        Ok(DnsRefresher {
            shared,
            thread: Some(thread),
        })
    }

    /// Replaces the set of clusters (config reload). New clusters and
    /// clusters whose hosts, rate or resolver changed are resolved at once;
    /// unchanged ones keep their schedule and their last delivered set;
    /// removed ones are forgotten (no callback).
    pub fn update(&self, clusters: Vec<DnsCluster>) {
        let mut c = lock(&self.shared.control);
        c.clusters = clusters;
        c.version += 1;
        self.shared.wake.notify_all();
    }

    /// Makes every cluster due now (admin action; tests).
    pub fn refresh_now(&self) {
        lock(&self.shared.control).refresh_all = true;
        self.shared.wake.notify_all();
    }

    pub fn stats(&self) -> Arc<DnsStats> {
        self.shared.stats.clone()
    }

    /// A copy of the per-cluster counters, by cluster name.
    pub fn cluster_stats(&self) -> BTreeMap<String, ClusterDnsStats> {
        lock(&self.shared.cluster_stats).clone()
    }

    /// Stops the thread and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stopping.store(true, Ordering::Relaxed);
        lock(&self.shared.control).stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DnsRefresher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a callback must not take the refresher down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One cluster as the worker tracks it.
struct Entry {
    cluster: DnsCluster,
    next_due: Instant,
    /// Per host (same index as `cluster.hosts`): the addresses of its last
    /// answered lookup; `None` until it has one.
    last_good: Vec<Option<Vec<IpAddr>>>,
    /// The set last given to the callback; `None` before the first.
    delivered: Option<Vec<DiscoveredEndpoint>>,
}

struct Worker {
    shared: Arc<Shared>,
    on_change: Callback,
    entries: BTreeMap<String, Entry>,
    seen_version: u64,
}

impl Worker {
    fn run(mut self) {
        loop {
            let Some(due) = self.wait_for_due() else {
                return;
            };
            for name in due {
                if self.shared.stopping.load(Ordering::Relaxed) {
                    return;
                }
                let Some(entry) = self.entries.get_mut(&name) else {
                    continue;
                };
                if let Some(set) = refresh(entry, &self.shared) {
                    self.shared.stats.updates.fetch_add(1, Ordering::Relaxed);
                    (self.on_change)(&name, set);
                }
            }
        }
    }

    /// Sleeps until some cluster is due or the cluster list changed; returns
    /// the due clusters' names, or `None` when asked to stop.
    fn wait_for_due(&mut self) -> Option<Vec<String>> {
        let shared = self.shared.clone();
        let mut control = lock(&shared.control);
        loop {
            if control.stop {
                return None;
            }
            if control.version != self.seen_version {
                self.seen_version = control.version;
                self.reconcile(&control.clusters);
            }
            let now = Instant::now();
            if std::mem::take(&mut control.refresh_all) {
                for e in self.entries.values_mut() {
                    e.next_due = now;
                }
            }
            let due: Vec<String> = self
                .entries
                .iter()
                .filter(|(_, e)| e.next_due <= now)
                .map(|(n, _)| n.clone())
                .collect();
            if !due.is_empty() {
                return Some(due);
            }
            control = match self.entries.values().map(|e| e.next_due).min() {
                Some(next) => {
                    shared
                        .wake
                        .wait_timeout(control, next - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => shared.wake.wait(control).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    fn reconcile(&mut self, clusters: &[DnsCluster]) {
        let now = Instant::now();
        let mut next = BTreeMap::new();
        for c in clusters {
            let entry = match self.entries.remove(&c.name) {
                Some(e) if e.cluster.same_as(c) => e,
                Some(old) => {
                    // A host that stays keeps its last good addresses: a
                    // failure right after a reload must not empty it.
                    let last_good = c
                        .hosts
                        .iter()
                        .map(|h| {
                            old.cluster
                                .hosts
                                .iter()
                                .position(|o| o.host == h.host)
                                .and_then(|i| old.last_good[i].clone())
                        })
                        .collect();
                    Entry {
                        cluster: c.clone(),
                        next_due: now,
                        last_good,
                        delivered: old.delivered,
                    }
                }
                None => Entry {
                    cluster: c.clone(),
                    next_due: now,
                    last_good: vec![None; c.hosts.len()],
                    delivered: None,
                },
            };
            next.insert(c.name.clone(), entry);
        }
        self.entries = next;
        let mut stats = lock(&self.shared.cluster_stats);
        stats.retain(|name, _| self.entries.contains_key(name));
        for name in self.entries.keys() {
            stats.entry(name.clone()).or_default();
        }
    }
}

/// Resolves every host of `entry` once; returns the new endpoint set when it
/// differs from the one last delivered.
fn refresh(entry: &mut Entry, shared: &Shared) -> Option<Vec<DiscoveredEndpoint>> {
    let cluster = &entry.cluster;
    let mut answered = 0;
    let mut last_error = None;
    for (i, h) in cluster.hosts.iter().enumerate() {
        shared.stats.lookups.fetch_add(1, Ordering::Relaxed);
        match cluster.resolver.resolve(&h.host) {
            Ok(addrs) => {
                answered += 1;
                entry.last_good[i] = Some(addrs);
            }
            Err(e) if e.is_negative_answer() => {
                answered += 1;
                if entry.last_good[i].as_ref().is_some_and(|a| !a.is_empty()) {
                    info!(cluster = %cluster.name, host = %h.host, "{e}; its endpoints are removed");
                }
                entry.last_good[i] = Some(Vec::new());
            }
            Err(e) => {
                shared.stats.dns_failures.fetch_add(1, Ordering::Relaxed);
                warn!(cluster = %cluster.name, host = %h.host, error = %e,
                      "DNS lookup failed; keeping the last good addresses");
                last_error = Some(format!("{}: {e}", h.host));
            }
        }
        if shared.stopping.load(Ordering::Relaxed) {
            break;
        }
    }
    entry.next_due = Instant::now() + cluster.refresh_rate;
    let mut stats = lock(&shared.cluster_stats);
    let stats = stats.entry(cluster.name.clone()).or_default();
    stats.update_attempt += 1;
    if last_error.is_some() {
        stats.update_failure += 1;
        stats.last_error = last_error;
    } else {
        stats.update_success += 1;
        stats.last_error = None;
    }
    if answered == 0 && entry.last_good.iter().all(Option::is_none) {
        // Nothing known yet: nothing to deliver, not even "empty".
        return None;
    }
    let set = endpoint_set(cluster, &entry.last_good);
    if entry.delivered.as_ref() == Some(&set) {
        stats.update_no_rebuild += 1;
        return None;
    }
    debug!(cluster = %cluster.name, endpoints = set.len(), "DNS endpoints changed");
    stats.endpoints = set.len();
    entry.delivered = Some(set.clone());
    Some(set)
}

/// Every address of every host on that host's port (STRICT_DNS), sorted so
/// that a reordered answer compares equal. An `ip:port` that two hosts both
/// resolve to is kept once, with the first host's weight and locality.
fn endpoint_set(
    cluster: &DnsCluster,
    last_good: &[Option<Vec<IpAddr>>],
) -> Vec<DiscoveredEndpoint> {
    let mut seen = HashSet::new();
    let mut set = Vec::new();
    for (h, addrs) in cluster.hosts.iter().zip(last_good) {
        for ip in addrs.iter().flatten() {
            let addr = SocketAddr::new(*ip, h.port);
            if seen.insert(addr) {
                set.push(DiscoveredEndpoint {
                    addr,
                    weight: h.weight,
                    locality: h.locality.clone(),
                    healthy: true,
                });
            }
        }
    }
    set.sort();
    set
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const WAIT: Duration = Duration::from_secs(10);

    fn host(h: &str, port: u16) -> DnsHost {
        DnsHost {
            host: h.into(),
            port,
            weight: 1,
            locality: String::new(),
        }
    }

    /// A resolver whose answers the test sets: host -> Ok(addrs) or Err(timeout).
    type Answers = Arc<Mutex<BTreeMap<String, Option<Vec<IpAddr>>>>>;

    fn fake(answers: &Answers) -> Arc<dyn HostResolver> {
        let answers = answers.clone();
        Arc::new(move |h: &str| -> Result<Vec<IpAddr>, DnsError> {
            match lock(&answers).get(h).cloned() {
                Some(Some(addrs)) => Ok(addrs),
                Some(None) => Err(DnsError::Timeout {
                    name: h.into(),
                    server: "127.0.0.1:53".parse().unwrap(),
                    timeout: Duration::from_millis(1),
                }),
                None => Err(DnsError::NxDomain {
                    name: h.into(),
                    server: "127.0.0.1:53".parse().unwrap(),
                }),
            }
        })
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn addrs(set: &[DiscoveredEndpoint]) -> Vec<String> {
        set.iter().map(|e| e.addr.to_string()).collect()
    }

    type Updates = mpsc::Receiver<(String, Vec<DiscoveredEndpoint>)>;

    fn start(clusters: Vec<DnsCluster>) -> (DnsRefresher, Updates) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let r = DnsRefresher::start(clusters, move |name, set| {
            let _ = lock(&tx).send((name.to_string(), set));
        })
        .unwrap();
        (r, rx)
    }

    fn cluster(name: &str, hosts: Vec<DnsHost>, resolver: &Arc<dyn HostResolver>) -> DnsCluster {
        DnsCluster {
            name: name.into(),
            hosts,
            refresh_rate: Duration::from_millis(20),
            resolver: resolver.clone(),
        }
    }

    /// Waits (bounded) until the counter reaches `n`.
    fn wait_for(what: impl Fn() -> bool) {
        let end = Instant::now() + WAIT;
        while !what() {
            assert!(
                Instant::now() < end,
                "condition not reached within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn delivers_changes_only_and_keeps_last_good_on_failure() {
        let answers: Answers = Default::default();
        lock(&answers).insert("a".into(), Some(ips(&["10.0.0.2", "10.0.0.1"])));
        let res = fake(&answers);
        let (r, rx) = start(vec![cluster("c", vec![host("a", 80)], &res)]);
        let (name, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(name, "c");
        assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.2:80"]);

        // Same addresses in another order: refreshes happen, nothing is delivered.
        lock(&answers).insert("a".into(), Some(ips(&["10.0.0.1", "10.0.0.2"])));
        wait_for(|| r.cluster_stats()["c"].update_no_rebuild >= 3);
        assert!(rx.try_recv().is_err());

        // Failures keep the set and are counted.
        lock(&answers).insert("a".into(), None);
        wait_for(|| r.stats().dns_failures.load(Ordering::Relaxed) >= 3);
        assert!(rx.try_recv().is_err());
        let s = &r.cluster_stats()["c"];
        assert!(
            s.update_failure >= 3 && s.last_error.as_deref().unwrap().contains("did not answer")
        );

        // A change after recovery is delivered.
        lock(&answers).insert("a".into(), Some(ips(&["10.0.0.3"])));
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(addrs(&set), ["10.0.0.3:80"]);
        assert_eq!(r.cluster_stats()["c"].last_error, None);

        // NXDOMAIN is an answer: the endpoints go (Envoy).
        lock(&answers).remove("a");
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert!(set.is_empty());
        r.stop();
    }

    #[test]
    fn several_hosts_merge_and_fail_independently() {
        let answers: Answers = Default::default();
        lock(&answers).insert("a".into(), Some(ips(&["10.0.0.1"])));
        lock(&answers).insert("b".into(), Some(ips(&["10.0.0.1", "fd00::1"])));
        let res = fake(&answers);
        let mut b = host("b", 81);
        b.weight = 7;
        b.locality = "r/z".into();
        let (r, rx) = start(vec![cluster("c", vec![host("a", 80), b], &res)]);
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.1:81", "[fd00::1]:81"]);
        assert_eq!((set[2].weight, set[2].locality.as_str()), (7, "r/z"));
        // `a` fails, `b` changes: a keeps its address, b's change arrives.
        lock(&answers).insert("a".into(), None);
        lock(&answers).insert("b".into(), Some(ips(&["10.0.0.9"])));
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(addrs(&set), ["10.0.0.1:80", "10.0.0.9:81"]);
        drop(r);
    }

    #[test]
    fn first_failure_delivers_nothing_until_an_answer() {
        let answers: Answers = Default::default();
        lock(&answers).insert("a".into(), None);
        let res = fake(&answers);
        let (r, rx) = start(vec![cluster("c", vec![host("a", 80)], &res)]);
        wait_for(|| r.stats().dns_failures.load(Ordering::Relaxed) >= 2);
        assert!(rx.try_recv().is_err());
        lock(&answers).insert("a".into(), Some(ips(&["10.0.0.1"])));
        let (_, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(addrs(&set), ["10.0.0.1:80"]);
    }

    #[test]
    fn update_adds_changes_and_removes_clusters() {
        let answers: Answers = Default::default();
        lock(&answers).insert("a".into(), Some(ips(&["10.0.0.1"])));
        lock(&answers).insert("b".into(), Some(ips(&["10.0.0.2"])));
        let res = fake(&answers);
        let slow = |c: DnsCluster| DnsCluster {
            refresh_rate: Duration::from_secs(3600),
            ..c
        };
        let (r, rx) = start(vec![slow(cluster("one", vec![host("a", 80)], &res))]);
        assert_eq!(addrs(&rx.recv_timeout(WAIT).unwrap().1), ["10.0.0.1:80"]);

        // "one" unchanged (no callback), "two" new (callback at once, though
        // the rate is an hour).
        r.update(vec![
            slow(cluster("one", vec![host("a", 80)], &res)),
            slow(cluster("two", vec![host("b", 90)], &res)),
        ]);
        let (name, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (name.as_str(), addrs(&set)),
            ("two", vec!["10.0.0.2:90".to_string()])
        );

        // "one" changes its port: resolved again at once, delivered.
        r.update(vec![
            slow(cluster("one", vec![host("a", 81)], &res)),
            slow(cluster("two", vec![host("b", 90)], &res)),
        ]);
        let (name, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (name.as_str(), addrs(&set)),
            ("one", vec!["10.0.0.1:81".to_string()])
        );
        assert!(rx.try_recv().is_err(), "two is unchanged");

        r.update(vec![slow(cluster("two", vec![host("b", 90)], &res))]);
        wait_for(|| !r.cluster_stats().contains_key("one"));

        // refresh_now makes everything due.
        lock(&answers).insert("b".into(), Some(ips(&["10.0.0.3"])));
        r.refresh_now();
        let (name, set) = rx.recv_timeout(WAIT).unwrap();
        assert_eq!(
            (name.as_str(), addrs(&set)),
            ("two", vec!["10.0.0.3:90".to_string()])
        );
    }

    #[test]
    fn stop_is_prompt_with_nothing_due() {
        let answers: Answers = Default::default();
        let res = fake(&answers);
        let (r, _rx) = start(vec![DnsCluster {
            refresh_rate: Duration::from_secs(3600),
            ..cluster("c", vec![host("a", 80)], &res)
        }]);
        wait_for(|| {
            r.cluster_stats()
                .get("c")
                .is_some_and(|s| s.update_attempt == 1)
        });
        r.stop(); // must not wait an hour
    }
}
