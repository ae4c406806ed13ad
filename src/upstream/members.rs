//! The endpoint sets the cores balance over, published the way config is: an
//! immutable [`Members`] value swapped atomically. Each cluster's set carries
//! its balancer table ([`LbTable`]), so a ring or Maglev table is built once
//! per endpoint-set change on the control thread, not per core or request.
//! Health verdicts travel separately (`health::HealthView`), because they
//! change more often than sets and need no table rebuild.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::balance::{LbPolicy, LbTable};
use super::discovery::DiscoveredEndpoint;
use super::locality::Locality;

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub addr: SocketAddr,
    pub weight: u32,
    pub locality: Locality,
    /// What discovery said (an endpoints file may mark it UNHEALTHY or
    /// DRAINING); active health checks are applied on top by the cores.
    pub discovered_healthy: bool,
}

/// A cluster's current endpoint set and the table built for it.
#[derive(Debug)]
pub struct ClusterMembers {
    pub members: Vec<Member>,
    pub table: LbTable,
    /// Process-unique, new with every set: cores compare it to notice a change.
    pub id: u64,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl ClusterMembers {
    /// Builds the set and its balancer table (sorted by address, so the same
    /// endpoints always give the same table).
    pub fn build(policy: &LbPolicy, endpoints: &[DiscoveredEndpoint]) -> ClusterMembers {
        let mut members: Vec<Member> = endpoints
            .iter()
            .map(|e| Member {
                addr: e.addr,
                weight: e.weight.max(1),
                locality: Locality::parse(&e.locality),
                discovered_healthy: e.healthy,
            })
            .collect();
        members.sort_by_key(|m| m.addr);
        members.dedup_by_key(|m| m.addr);
        let weights: Vec<u32> = members.iter().map(|m| m.weight).collect();
        let keys: Vec<String> = members.iter().map(|m| m.addr.to_string()).collect();
        let key_refs: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        ClusterMembers {
            table: LbTable::build(policy, &weights, &key_refs),
            members,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    pub fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.members.binary_search_by_key(&addr, |m| m.addr).ok()
    }
}

/// Every cluster's set, by cluster name.
#[derive(Debug, Default)]
pub struct Members {
    pub clusters: HashMap<String, Arc<ClusterMembers>>,
    /// Increases with every publication.
    pub generation: u64,
}

/// Where the control thread publishes [`Members`] and cores read them.
#[derive(Debug, Default)]
pub struct MembersHandle {
    current: ArcSwap<Members>,
    /// The generation of `current`, stored after it (see
    /// [`MembersHandle::generation`]).
    generation: AtomicU64,
}

impl MembersHandle {
    pub fn load(&self) -> arc_swap::Guard<Arc<Members>> {
        self.current.load()
    }

    pub fn current(&self) -> Arc<Members> {
        self.current.load_full()
    }

    /// The generation of the current sets (one atomic load): when it equals
    /// the one a core saw last, nothing changed since.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Publishes `clusters` as the next generation.
    pub fn publish(&self, clusters: HashMap<String, Arc<ClusterMembers>>) {
        let generation = self.current.load().generation + 1;
        self.current.store(Arc::new(Members {
            clusters,
            generation,
        }));
        self.generation.store(generation, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(a: &str, w: u32) -> DiscoveredEndpoint {
        DiscoveredEndpoint {
            addr: a.parse().unwrap(),
            weight: w,
            locality: "r/z".into(),
            healthy: true,
        }
    }

    #[test]
    fn sets_are_sorted_deduplicated_and_tabled() {
        let m = ClusterMembers::build(
            &LbPolicy::RoundRobin,
            &[
                ep("10.0.0.2:80", 1),
                ep("10.0.0.1:80", 3),
                ep("10.0.0.2:80", 5),
            ],
        );
        assert_eq!(m.members.len(), 2);
        assert_eq!(m.members[0].addr, "10.0.0.1:80".parse().unwrap());
        assert_eq!(m.members[0].weight, 3);
        assert_eq!(m.table.len(), 2);
        assert_eq!(m.position("10.0.0.2:80".parse().unwrap()), Some(1));
        let h = MembersHandle::default();
        let mut c = HashMap::new();
        c.insert("a".to_string(), Arc::new(m));
        h.publish(c);
        assert_eq!(h.load().generation, 1);
        assert!(h.load().clusters.contains_key("a"));
    }
}
