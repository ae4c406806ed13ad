//! The upstream layer: from a cluster to a connected endpoint, for L4 and L7
//! alike.
//!
//! ```text
//!  route / listener ─► cluster (config: name, endpoints, policy)
//!                         │ Upstreams::pick: this core's ClusterState
//!                         ▼ (balancer position; avoids endpoints already tried)
//!                      endpoint ─► pool::Pool::take (L7 keep-alive)
//!                         │          or Upstreams::connect (counted per endpoint)
//!                         ▼
//!                      TcpStream
//! ```
//!
//! Layered like linkerd2-proxy's logical → concrete → endpoint stacks: the
//! caller (l4 in `connection`, l7's attempts) decides *what* to reach and how
//! often to try; this layer decides *which endpoint* and owns everything a core
//! keeps per cluster and per endpoint. Per-core state is keyed by cluster
//! name, not by position in the config, so it survives reloads that keep the
//! name. Nothing here is shared between cores.

pub mod balance;
pub mod breaker;
pub mod discovery;
pub mod dns;
pub mod endpoints_file;
pub mod health;
pub mod locality;
pub mod outlier;
pub mod pool;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use glommio::net::TcpStream;
use tracing::debug;

use crate::config::{Cluster, Config};
use crate::net::socket;
use crate::stats::{CoreStats, EndpointStats};

/// One core's view of every upstream: cluster state, endpoint counters and the
/// keep-alive pool.
#[derive(Default)]
pub struct Upstreams {
    /// Per cluster, by name (survives reloads that keep the name).
    clusters: RefCell<HashMap<Box<str>, ClusterState>>,
    /// Idle HTTP/1 connections, per endpoint and source.
    pub pool: RefCell<pool::Pool>,
    /// Counters per cluster endpoint (pruned to the config by [`Upstreams::prune`]).
    endpoints: RefCell<HashMap<SocketAddr, EndpointStats>>,
}

/// What a core keeps for one cluster.
#[derive(Debug, Default)]
struct ClusterState {
    /// Round-robin position.
    rr: usize,
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
    /// The endpoint of `cluster` for the next attempt: the next in this core's
    /// rotation that is not in `tried` (Envoy's `previous_hosts` retry
    /// predicate), or the next one at all when every endpoint was tried.
    /// `None` only for a cluster without endpoints.
    pub fn pick(&self, cluster: &Cluster, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let eps = &cluster.endpoints;
        if eps.is_empty() {
            return None;
        }
        let mut clusters = self.clusters.borrow_mut();
        let st = match clusters.get_mut(cluster.name.as_str()) {
            Some(s) => s,
            None => clusters.entry(cluster.name.as_str().into()).or_default(),
        };
        let n = eps.len();
        let start = st.rr;
        let offset = (0..n)
            .find(|k| !tried.contains(&eps[(start + k) % n]))
            .unwrap_or(0);
        st.rr = start.wrapping_add(offset + 1);
        Some(eps[(start + offset) % n])
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
    ) -> Result<TcpStream, ConnectError> {
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

    /// Connects to one endpoint of `cluster`, trying each once in rotation
    /// order until one answers (L4: a TCP connection has nothing to replay,
    /// so failing over on connect errors is always safe). The connection
    /// counts as active on its endpoint until [`Upstreams::released`].
    pub async fn connect_cluster(
        &self,
        stats: &CoreStats,
        cluster: &Cluster,
        timeout: Duration,
    ) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let mut tried = Vec::new();
        let mut last = ConnectError::NoEndpoint(cluster.name.as_str().into());
        while tried.len() < cluster.endpoints.len() {
            let Some(ep) = self.pick(cluster, &tried) else {
                break;
            };
            match self.connect(stats, ep, None, timeout, true).await {
                Ok(s) => {
                    if let Some(e) = self.endpoints.borrow_mut().get_mut(&ep) {
                        e.cx_active += 1;
                    }
                    return Ok((s, ep));
                }
                Err(e) => last = e,
            }
            tried.push(ep);
        }
        Err(last)
    }

    /// Drops state for clusters and endpoints the config no longer has
    /// (endpoints with open connections stay until they close).
    pub fn prune(&self, config: &Config) {
        self.clusters
            .borrow_mut()
            .retain(|name, _| config.clusters.iter().any(|c| *c.name == **name));
        self.endpoints.borrow_mut().retain(|a, e| {
            e.cx_active > 0 || config.clusters.iter().any(|c| c.endpoints.contains(a))
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(eps: &[&str]) -> Cluster {
        Cluster {
            name: "c".into(),
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
            connect_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn pick_rotates_and_avoids_tried_endpoints() {
        let u = Upstreams::default();
        let c = cluster(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let a: Vec<SocketAddr> = (0..6).map(|_| u.pick(&c, &[]).unwrap()).collect();
        assert_eq!(a[..3], a[3..]);
        assert_eq!(a[0], c.endpoints[0]);
        assert_ne!(a[0], a[1]);
        // A retry skips what it tried, whatever the rotation says.
        let tried = [c.endpoints[0], c.endpoints[1]];
        for _ in 0..3 {
            assert_eq!(u.pick(&c, &tried), Some(c.endpoints[2]));
        }
        // All tried: still an answer (a retry may go back to one).
        assert!(u.pick(&c, &c.endpoints).is_some());
        assert_eq!(u.pick(&cluster(&[]), &[]), None);
    }

    #[test]
    fn prune_forgets_clusters_and_endpoints_not_configured() {
        let u = Upstreams::default();
        let c = cluster(&["10.0.0.1:80"]);
        u.pick(&c, &[]);
        u.endpoints
            .borrow_mut()
            .insert(c.endpoints[0], EndpointStats::default());
        let config = Config::from_toml("[capture]\nenabled = false\n", None).unwrap();
        u.prune(&config);
        assert!(u.clusters.borrow().is_empty());
        assert!(u.endpoint_stats().is_empty());
    }
}
