//! The upstream layer: from a cluster to a connected endpoint, for L4 and L7
//! alike.
//!
//! ```text
//!  outside the cores (control): config + discovery (dns, endpoints file)
//!     ─► members (endpoint sets + balancer tables)   ─┐ published atomically
//!     health checker (one thread) ─► health verdicts ─┘
//!  per core:
//!  route / listener ─► cluster ─► Upstreams::pick ─► ClusterState (cluster.rs):
//!                         panic threshold ─ locality tier ─ balancer (balance.rs)
//!                         over healthy, not ejected (outlier.rs) endpoints
//!                      endpoint ─► breakers (breaker.rs) ─► pool::Pool::take
//!                         │          or Upstreams::connect (counted per endpoint)
//!                         ▼
//!                      Tcp ─ result ─► outlier detection
//! ```
//!
//! Layered like linkerd2-proxy's logical → concrete → endpoint stacks: the
//! caller (l4 in `connection`, l7's attempts) decides *what* to reach and how
//! often to try; this layer decides *which endpoint* and owns everything a core
//! keeps per cluster and per endpoint. Per-core state is keyed by cluster
//! name, not by position in the config, so it survives reloads that keep the
//! name. Nothing mutable here is shared between cores.

pub mod balance;
pub mod breaker;
pub mod cluster;
pub mod control;
pub mod discovery;
pub mod dns;
pub mod endpoints_file;
pub mod health;
pub mod locality;
pub mod members;
pub mod outlier;
pub mod pool;
pub mod tls;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::net::tcp::Tcp;
use tracing::debug;

use crate::config::{Cluster, Config};
use crate::http::route::FnvMap;
use crate::net::socket;
use crate::stats::{ClusterReport, CoreStats, EndpointStats};
use cluster::{ClusterState, PickInput, Picked};
use control::UpstreamView;
use health::HealthHandle;
use locality::Locality;
use members::{ClusterMembers, MembersHandle};

/// A cluster's state on this core, and the (members, health) generations it
/// was last brought up to date with.
struct Tracked {
    state: Rc<ClusterState>,
    seen: Cell<(u64, u64)>,
}

/// One core's view of every upstream: cluster state, endpoint counters and the
/// keep-alive pool.
pub struct Upstreams {
    view: UpstreamView,
    /// This proxy's locality (`[runtime] locality`), for locality-aware balancing.
    own: Locality,
    /// Per cluster, by name (survives reloads that keep the name), with the
    /// members generation it was last brought up to date with.
    clusters: RefCell<FnvMap<Box<str>, Tracked>>,
    /// Idle HTTP/1 connections, per endpoint, source and TLS profile.
    pub pool: RefCell<pool::Pool>,
    /// Open HTTP/2 connections, per endpoint, source and TLS profile.
    pub h2: crate::h2::client::Pool,
    /// How connections to TLS clusters and mesh destinations are secured.
    pub tls: tls::Originations,
    /// Counters per cluster endpoint (pruned to the config by [`Upstreams::prune`]).
    endpoints: RefCell<HashMap<SocketAddr, EndpointStats>>,
    seed: Cell<u64>,
}

impl Default for Upstreams {
    /// No control plane: every cluster's set is its static endpoints, all
    /// healthy (tests and tools).
    fn default() -> Upstreams {
        Upstreams::new(Upstreams::default_view(), Locality::default(), 1)
    }
}

/// Why a connection to an upstream could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cluster `{0}` has no endpoint to try")]
    NoEndpoint(Box<str>),
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr} failed: {source}")]
    Failed { addr: SocketAddr, source: io::Error },
}

impl Upstreams {
    /// A view with no control plane behind it: nothing published, every
    /// endpoint healthy (tests and tools).
    pub fn default_view() -> UpstreamView {
        UpstreamView {
            members: Arc::new(MembersHandle::default()),
            health: HealthHandle::detached(),
        }
    }

    pub fn new(view: UpstreamView, own: Locality, seed: u64) -> Upstreams {
        Upstreams {
            view,
            own,
            clusters: RefCell::default(),
            pool: RefCell::default(),
            h2: Default::default(),
            tls: tls::Originations::default(),
            endpoints: RefCell::default(),
            seed: Cell::new(seed),
        }
    }

    /// This core's state for `cluster`, brought up to date with the latest
    /// published endpoint set and health verdicts.
    pub fn cluster(&self, cluster: &Cluster) -> Rc<ClusterState> {
        // Fast path, every request: two atomic loads say nothing was
        // published since this core last looked.
        let seen = (
            self.view.members.generation(),
            self.view.health.generation(),
        );
        let mut clusters = self.clusters.borrow_mut();
        if let Some(t) = clusters.get(cluster.name.as_str()) {
            if t.seen.get() == seen {
                return t.state.clone();
            }
        }
        let members = self.view.members.load();
        let t = match clusters.get(cluster.name.as_str()) {
            Some(t) => {
                t.state
                    .update_members(&published_or_static(&members.clusters, cluster));
                t
            }
            None => {
                let seed = self.seed.get().wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851;
                self.seed.set(seed);
                let set = published_or_static(&members.clusters, cluster);
                clusters.insert(
                    cluster.name.as_str().into(),
                    Tracked {
                        state: Rc::new(ClusterState::new(set, seed)),
                        seen: Cell::new(seen),
                    },
                );
                &clusters[cluster.name.as_str()]
            }
        };
        t.state
            .update_health(cluster, &self.view.health.load(), &self.own);
        t.seen.set(seen);
        t.state.clone()
    }

    /// The endpoint of `cluster` for the next attempt (see [`cluster`]), with
    /// the cluster's state for accounting; `None` when no endpoint may be
    /// used (503 UH).
    pub fn pick(
        &self,
        cluster: &Cluster,
        hash: Option<u64>,
        tried: &[SocketAddr],
        rand: u64,
    ) -> Option<(Rc<ClusterState>, Picked)> {
        let state = self.cluster(cluster);
        let picked = state.pick(cluster, &self.own, &PickInput { hash, tried, rand })?;
        Some((state, picked))
    }

    /// Like [`Upstreams::pick`], with a state already brought up to date by
    /// [`Upstreams::cluster`] (a request's later attempts reuse it).
    pub fn pick_from(
        &self,
        state: &ClusterState,
        cluster: &Cluster,
        hash: Option<u64>,
        tried: &[SocketAddr],
        rand: u64,
    ) -> Option<Picked> {
        state.pick(cluster, &self.own, &PickInput { hash, tried, rand })
    }

    /// Connects to `addr` (from `source`, if given) within `timeout`, counting
    /// the outcome in this core's `stats` and, for a cluster endpoint
    /// (`tracked`), in the endpoint's counters.
    pub async fn connect(
        &self,
        stats: &CoreStats,
        addr: SocketAddr,
        source: Option<IpAddr>,
        timeout: Duration,
        tracked: bool,
    ) -> Result<Tcp, ConnectError> {
        let result = socket::connect(addr, source, timeout).await;
        if tracked {
            let mut eps = self.endpoints.borrow_mut();
            let e = eps.entry(addr).or_default();
            match &result {
                Ok(_) => e.cx_total += 1,
                Err(_) => e.cx_connect_fail += 1,
            }
        }
        match result {
            Ok(s) => {
                CoreStats::inc(&stats.upstream_cx_total);
                Ok(s)
            }
            Err(e) => {
                debug!(endpoint = %addr, error = %e, "upstream connect failed");
                if e.kind() == io::ErrorKind::TimedOut {
                    CoreStats::inc(&stats.upstream_cx_connect_timeout);
                    Err(ConnectError::Timeout { addr, timeout })
                } else {
                    CoreStats::inc(&stats.upstream_cx_connect_fail);
                    Err(ConnectError::Failed { addr, source: e })
                }
            }
        }
    }

    /// A connection from [`Upstreams::connect_cluster`] to `addr` was closed.
    pub fn released(&self, addr: SocketAddr) {
        if let Some(e) = self.endpoints.borrow_mut().get_mut(&addr) {
            e.cx_active = e.cx_active.saturating_sub(1);
        }
    }

    /// Connects to one endpoint of `cluster`, trying each at most once in
    /// the balancer's order until one answers (L4: a TCP connection has
    /// nothing to replay, so failing over on connect errors is always safe).
    /// Connect failures feed outlier detection. The connection counts as
    /// active on its endpoint until [`Upstreams::released`].
    pub async fn connect_cluster(
        &self,
        stats: &CoreStats,
        cluster: &Cluster,
        hash: Option<u64>,
        rand: u64,
    ) -> Result<(Tcp, SocketAddr), ConnectError> {
        let mut tried = Vec::new();
        let mut last = ConnectError::NoEndpoint(cluster.name.as_str().into());
        while let Some((state, p)) = self.pick(cluster, hash, &tried, rand ^ tried.len() as u64) {
            if tried.contains(&p.addr) {
                break;
            }
            match self
                .connect(stats, p.addr, None, cluster.connect_timeout, true)
                .await
            {
                Ok(s) => {
                    if let Some(e) = self.endpoints.borrow_mut().get_mut(&p.addr) {
                        e.cx_active += 1;
                    }
                    return Ok((s, p.addr));
                }
                Err(e) => {
                    state.record(cluster, &p, outlier::Result_::LocalOrigin);
                    last = e;
                }
            }
            tried.push(p.addr);
        }
        Err(last)
    }

    /// Drops state for clusters and endpoints the config no longer has
    /// (endpoints with open connections stay until they close).
    pub fn prune(&self, config: &Config) {
        self.clusters
            .borrow_mut()
            .retain(|name, _| config.clusters.iter().any(|c| *c.name == **name));
        let members = self.view.members.load();
        self.endpoints.borrow_mut().retain(|a, e| {
            e.cx_active > 0
                || config.clusters.iter().any(|c| {
                    c.static_addresses().any(|s| s == *a)
                        || members
                            .clusters
                            .get(&c.name)
                            .is_some_and(|m| m.position(*a).is_some())
                })
        });
    }

    /// This core's state of every cluster it has used, for reports.
    pub fn states(&self) -> Vec<(String, Rc<ClusterState>)> {
        self.clusters
            .borrow()
            .iter()
            .map(|(n, t)| (n.to_string(), t.state.clone()))
            .collect()
    }

    /// This core's per-cluster state, for a stats report.
    pub fn cluster_reports(&self) -> std::collections::BTreeMap<String, ClusterReport> {
        self.clusters
            .borrow()
            .iter()
            .map(|(name, t)| (name.to_string(), t.state.report()))
            .collect()
    }

    /// This core's endpoint counters, for a stats report.
    pub fn endpoint_stats(&self) -> Vec<(SocketAddr, EndpointStats)> {
        self.endpoints
            .borrow()
            .iter()
            .map(|(a, e)| (*a, *e))
            .collect()
    }
}

/// The published set for `cluster`, or (no control plane, or not yet
/// published) its static endpoints.
fn published_or_static(
    published: &HashMap<String, Arc<ClusterMembers>>,
    cluster: &Cluster,
) -> Arc<ClusterMembers> {
    if let Some(m) = published.get(&cluster.name) {
        return m.clone();
    }
    let eps: Vec<discovery::DiscoveredEndpoint> = cluster
        .endpoints
        .iter()
        .filter(|_| cluster.discovery == crate::config::Discovery::Static)
        .filter_map(|e| {
            Some(discovery::DiscoveredEndpoint {
                addr: e.address.parse().ok()?,
                weight: e.weight,
                locality: e.locality.clone(),
                healthy: true,
            })
        })
        .collect();
    Arc::new(ClusterMembers::build(&cluster.lb_policy, &eps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(extra: &str) -> Config {
        Config::from_toml(
            &format!("[capture]\nenabled = false\n[[cluster]]\nname = \"c\"\nendpoints = [\"10.0.0.1:80\", \"10.0.0.2:80\", \"10.0.0.3:80\"]\n{extra}"),
            None,
        )
        .unwrap()
    }

    #[test]
    fn pick_rotates_and_avoids_tried_endpoints() {
        let u = Upstreams::default();
        let cfg = config("lb_policy = \"round_robin\"\n");
        let c = &cfg.clusters[0];
        let pick = |tried: &[SocketAddr]| u.pick(c, None, tried, 7).map(|(_, p)| p.addr);
        let a: Vec<SocketAddr> = (0..6).map(|_| pick(&[]).unwrap()).collect();
        assert_eq!(a[..3], a[3..]);
        assert_ne!(a[0], a[1]);
        assert_ne!(a[1], a[2]);
        // A retry skips what it tried, whatever the rotation says.
        let all: Vec<SocketAddr> = c.static_addresses().collect();
        let tried = [all[0], all[1]];
        for _ in 0..3 {
            assert_eq!(pick(&tried), Some(all[2]));
        }
        // All tried: still an answer (a retry may go back to one).
        assert!(pick(&all).is_some());
    }

    #[test]
    fn outlier_ejection_and_panic_threshold() {
        let u = Upstreams::default();
        let cfg = config(
            "lb_policy = \"round_robin\"\noutlier_detection = { consecutive_5xx_errors = 2, max_ejection_percent = 100 }\nhealthy_panic_threshold = 50\n",
        );
        let c = &cfg.clusters[0];
        let bad: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let (state, _) = u.pick(c, None, &[], 1).unwrap();
        let p = loop {
            let (_, p) = u.pick(c, None, &[], 1).unwrap();
            if p.addr == bad {
                break p;
            }
        };
        assert!(!state.record(c, &p, outlier::Result_::Status(503)));
        assert!(state.record(c, &p, outlier::Result_::Status(503)));
        for _ in 0..20 {
            assert_ne!(u.pick(c, None, &[], 1).unwrap().1.addr, bad);
        }
        // Eject a second one: 1 of 3 available is under 50%: panic mode
        // uses all three again.
        let p2 = loop {
            let (_, p) = u.pick(c, None, &[], 1).unwrap();
            if p.addr != bad {
                break p;
            }
        };
        state.record(c, &p2, outlier::Result_::LocalOrigin);
        assert!(state.record(c, &p2, outlier::Result_::LocalOrigin));
        let seen: std::collections::HashSet<SocketAddr> = (0..30)
            .map(|_| u.pick(c, None, &[], 1).unwrap().1.addr)
            .collect();
        assert_eq!(seen.len(), 3);
        assert!(state.counters.panic.get() > 0);
        assert_eq!(state.counters.ejections.get(), 2);
    }

    #[test]
    fn prune_forgets_clusters_not_configured() {
        let u = Upstreams::default();
        let cfg = config("");
        u.pick(&cfg.clusters[0], None, &[], 1);
        assert_eq!(u.states().len(), 1);
        let empty = Config::from_toml("[capture]\nenabled = false\n", None).unwrap();
        u.prune(&empty);
        assert!(u.states().is_empty());
        assert!(u.endpoint_stats().is_empty());
    }
}
