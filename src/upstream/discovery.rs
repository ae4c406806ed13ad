//! What service discovery hands to the upstream layer: one value type shared by
//! DNS discovery (`dns`) and file discovery (`endpoints_file`), so that both
//! deliver a cluster's endpoints through the same callback shape,
//! `Fn(&str /* cluster */, Vec<DiscoveredEndpoint>)`.
//!
//! Discovery runs on plain threads, never on an executor: the consumer of the
//! callback builds an immutable endpoint set and publishes it (arc-swap) for
//! the cores to pick up.

use std::net::SocketAddr;

use serde::Serialize;

/// The weight an endpoint gets when its source says nothing.
pub const DEFAULT_WEIGHT: u32 = 1;

/// The largest accepted load-balancing weight. Envoy's v2 API capped
/// `LbEndpoint.load_balancing_weight` at 1..=128 ("somewhat arbitrary, but
/// applied due to performance concerns"); later versions only require >= 1.
/// 128 keeps weighted round-robin schedules small and is ample for the
/// proportions people write by hand.
pub const MAX_WEIGHT: u32 = 128;

/// One endpoint of a cluster as discovery found it.
///
/// Ordered by address first, so that a sorted `Vec` compares as a set: DNS
/// servers rotate the order of their answers, and a new order alone must not
/// count as a change.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct DiscoveredEndpoint {
    pub addr: SocketAddr,
    /// 1..=[`MAX_WEIGHT`].
    pub weight: u32,
    /// Envoy's `region/zone/sub_zone` form, or empty when unknown.
    pub locality: String,
    /// Whether the source allows traffic to it (DNS answers are always
    /// healthy; a file may mark endpoints unhealthy or draining). Active
    /// health checking and outlier detection come on top of this.
    pub healthy: bool,
}
