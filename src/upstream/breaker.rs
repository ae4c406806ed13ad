//! Circuit breakers: caps on what one cluster may hold open at once, Envoy's
//! `circuit_breakers.thresholds` (Istio's `connectionPool`). Going over a cap
//! is an immediate local 503 with flag `UO` (L4: the connection is closed and
//! counted) rather than a queue that grows without bound.
//!
//! **Per core.** Envoy's counters are process-wide atomics. Remora's cores
//! share nothing mutable, so each core holds `ceil(limit / cores)` of every
//! limit: the process-wide total is the configured one (rounded up by at most
//! `cores - 1`) when load spreads evenly over cores, as SO_REUSEPORT spreads
//! connections; a core that receives more than its share trips earlier than
//! the whole would. With one core the limits are exact.

use std::cell::Cell;
use std::rc::Rc;

/// The validated `[cluster.circuit_breakers]` table (whole-process limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BreakerConfig {
    /// Connections to the cluster's endpoints, pooled ones included (Envoy
    /// default 1024; Istio tcp.maxConnections).
    pub max_connections: u32,
    /// Requests waiting for a connection (Envoy default 1024; Istio
    /// http1MaxPendingRequests).
    pub max_pending_requests: u32,
    /// Requests in flight (Envoy default 1024; Istio http2MaxRequests).
    pub max_requests: u32,
    /// Retries in flight (Envoy default 3; Istio maxRetries).
    pub max_retries: u32,
    /// Requests per upstream connection before it is closed; 0 = unlimited
    /// (Istio maxRequestsPerConnection).
    pub max_requests_per_connection: u32,
}

impl Default for BreakerConfig {
    fn default() -> BreakerConfig {
        BreakerConfig {
            max_connections: 1024,
            max_pending_requests: 1024,
            max_requests: 1024,
            max_retries: 3,
            max_requests_per_connection: 0,
        }
    }
}

impl BreakerConfig {
    /// This core's share of each limit: ceil(limit / cores).
    pub fn per_core(&self, cores: usize) -> BreakerConfig {
        let cores = cores.max(1) as u64;
        let share = |n: u32| u64::from(n).div_ceil(cores) as u32;
        BreakerConfig {
            max_connections: share(self.max_connections),
            max_pending_requests: share(self.max_pending_requests),
            max_requests: share(self.max_requests),
            max_retries: share(self.max_retries),
            max_requests_per_connection: self.max_requests_per_connection,
        }
    }
}

/// Which limit a resource counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Connections,
    PendingRequests,
    Requests,
    Retries,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::Connections,
        Resource::PendingRequests,
        Resource::Requests,
        Resource::Retries,
    ];

    /// Envoy's stat name fragment (`upstream_cx_overflow`, ...).
    pub fn overflow_stat(self) -> &'static str {
        match self {
            Resource::Connections => "upstream_cx_overflow",
            Resource::PendingRequests => "upstream_rq_pending_overflow",
            Resource::Requests => "upstream_rq_overflow",
            Resource::Retries => "upstream_rq_retry_overflow",
        }
    }

    fn limit(self, c: &BreakerConfig) -> u32 {
        match self {
            Resource::Connections => c.max_connections,
            Resource::PendingRequests => c.max_pending_requests,
            Resource::Requests => c.max_requests,
            Resource::Retries => c.max_retries,
        }
    }
}

/// One core's open counts for one cluster, and how often each limit was hit.
#[derive(Debug, Default)]
pub struct Breakers {
    open: [Cell<u32>; 4],
    overflow: [Cell<u64>; 4],
}

/// Holds one unit of a resource; gives it back when dropped.
#[derive(Debug)]
pub struct Permit {
    breakers: Rc<Breakers>,
    resource: Resource,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let c = &self.breakers.open[self.resource as usize];
        c.set(c.get().saturating_sub(1));
    }
}

impl Breakers {
    /// Takes one unit of `resource` if this core's share of the limit allows
    /// it; otherwise counts an overflow and returns None.
    pub fn try_acquire(
        self: &Rc<Self>,
        resource: Resource,
        limits: &BreakerConfig,
    ) -> Option<Permit> {
        let i = resource as usize;
        let open = &self.open[i];
        if open.get() >= resource.limit(limits) {
            let o = &self.overflow[i];
            o.set(o.get() + 1);
            return None;
        }
        open.set(open.get() + 1);
        Some(Permit {
            breakers: self.clone(),
            resource,
        })
    }

    /// Units of `resource` held now.
    pub fn open(&self, resource: Resource) -> u32 {
        self.open[resource as usize].get()
    }

    /// Times `resource` overflowed on this core.
    pub fn overflows(&self, resource: Resource) -> u64 {
        self.overflow[resource as usize].get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_core_shares_round_up() {
        let c = BreakerConfig {
            max_connections: 10,
            max_pending_requests: 1,
            max_requests: 0,
            max_retries: 3,
            max_requests_per_connection: 7,
        };
        let p = c.per_core(4);
        assert_eq!(
            (
                p.max_connections,
                p.max_pending_requests,
                p.max_requests,
                p.max_retries
            ),
            (3, 1, 0, 1)
        );
        assert_eq!(p.max_requests_per_connection, 7);
        assert_eq!(c.per_core(1), c);
        assert_eq!(c.per_core(0), c);
    }

    #[test]
    fn permits_count_and_overflow() {
        let b = Rc::new(Breakers::default());
        let limits = BreakerConfig {
            max_requests: 2,
            ..BreakerConfig::default()
        };
        let a = b.try_acquire(Resource::Requests, &limits).unwrap();
        let c = b.try_acquire(Resource::Requests, &limits).unwrap();
        assert!(b.try_acquire(Resource::Requests, &limits).is_none());
        assert_eq!(
            (b.open(Resource::Requests), b.overflows(Resource::Requests)),
            (2, 1)
        );
        // Other resources are independent.
        assert!(b.try_acquire(Resource::Connections, &limits).is_some());
        drop(a);
        assert_eq!(b.open(Resource::Requests), 1);
        let _again = b.try_acquire(Resource::Requests, &limits).unwrap();
        drop(c);
        let zero = BreakerConfig {
            max_retries: 0,
            ..limits
        };
        assert!(b.try_acquire(Resource::Retries, &zero).is_none());
    }
}
