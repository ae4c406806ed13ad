//! One core's state for one cluster: the endpoint set it balances over (a
//! published [`ClusterMembers`]), health verdicts applied, outlier ejections,
//! active requests per endpoint (least request), the balancer's position
//! and the circuit breakers. Picking an endpoint is [`ClusterState::pick`].
//!
//! An endpoint is *available* when discovery and active health checks say
//! healthy and this core has not ejected it. Choice, in Envoy's order:
//! 1. panic mode: when fewer than `healthy_panic_threshold` percent are
//!    available, every endpoint is used regardless (a partial outage must not
//!    become a total one);
//! 2. locality: with `[runtime] locality` set, a locality tier (same zone,
//!    same region, elsewhere) is chosen by Envoy's priority-load rule over
//!    the healthy endpoints of each tier;
//! 3. the balancer ([`Picker`]) over the eligible endpoints, skipping those
//!    this request already tried when another one exists.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::balance::{PickRequest, Picker};
use super::breaker::{Breakers, Resource};
use super::health::HealthView;
use super::locality::{self, Locality, TIERS};
use super::members::ClusterMembers;
use super::outlier::{self, EndpointOutlier, Result_};
use crate::config::Cluster;
use crate::stats::{ClusterReport, EndpointReport};

/// Envoy's default overprovisioning factor (1.4) for locality failover.
const OVERPROVISIONING: f64 = 1.4;

pub struct ClusterState {
    members: RefCell<Arc<ClusterMembers>>,
    /// Per member: discovery and health checks both say healthy.
    healthy: RefCell<Vec<bool>>,
    healthy_count: Cell<usize>,
    health_generation: Cell<u64>,
    /// Per member, this core's outlier state.
    outlier: RefCell<Vec<EndpointOutlier>>,
    ejected_count: Cell<usize>,
    /// Per member, requests in flight from this core.
    active: RefCell<Vec<u32>>,
    /// Per member, times this core's balancer chose it.
    picks: RefCell<Vec<u64>>,
    /// Per member, its locality tier relative to this proxy's.
    tiers: RefCell<Vec<u8>>,
    /// Healthy and total members per tier.
    tier_counts: Cell<([u32; TIERS], [u32; TIERS])>,
    picker: RefCell<Picker>,
    pub breakers: Rc<Breakers>,
    /// Picks per member address are counted in the endpoint stats; these are
    /// per cluster.
    pub counters: ClusterCounters,
}

/// Per-cluster counters of one core (summed over cores on read).
#[derive(Debug, Default)]
pub struct ClusterCounters {
    /// Picks that found no eligible endpoint (503 UH).
    pub no_healthy: Cell<u64>,
    /// Picks made in panic mode.
    pub panic: Cell<u64>,
    pub ejections: Cell<u64>,
    /// Ejections skipped because max_ejection_percent was reached.
    pub ejections_overflow: Cell<u64>,
}

/// An endpoint chosen for one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Picked {
    pub addr: SocketAddr,
    /// Index in the member set of `members_id`.
    index: usize,
    members_id: u64,
}

/// What the pick needs from the request.
pub struct PickInput<'a> {
    /// Consistent-hash key (ring hash, Maglev).
    pub hash: Option<u64>,
    /// Endpoints already tried by this request (avoided when possible).
    pub tried: &'a [SocketAddr],
    pub rand: u64,
}

impl ClusterState {
    pub fn new(members: Arc<ClusterMembers>, seed: u64) -> ClusterState {
        let s = ClusterState {
            members: RefCell::new(members),
            healthy: RefCell::default(),
            healthy_count: Cell::new(0),
            health_generation: Cell::new(u64::MAX),
            outlier: RefCell::default(),
            ejected_count: Cell::new(0),
            active: RefCell::default(),
            picks: RefCell::default(),
            tiers: RefCell::default(),
            tier_counts: Cell::new(([0; TIERS], [0; TIERS])),
            picker: RefCell::new(Picker::new(seed)),
            breakers: Rc::default(),
            counters: ClusterCounters::default(),
        };
        s.resize_to_members(None);
        s
    }

    pub fn members(&self) -> Arc<ClusterMembers> {
        self.members.borrow().clone()
    }

    /// Takes a newly published member set, carrying per-endpoint state
    /// (ejections, active requests) over by address.
    pub fn update_members(&self, next: &Arc<ClusterMembers>) {
        if self.members.borrow().id == next.id {
            return;
        }
        let prev = std::mem::replace(&mut *self.members.borrow_mut(), next.clone());
        self.resize_to_members(Some(&prev));
        self.health_generation.set(u64::MAX);
    }

    fn resize_to_members(&self, prev: Option<&ClusterMembers>) {
        let m = self.members.borrow();
        let n = m.members.len();
        let old_outlier = std::mem::take(&mut *self.outlier.borrow_mut());
        let old_active = std::mem::take(&mut *self.active.borrow_mut());
        let old_picks = std::mem::take(&mut *self.picks.borrow_mut());
        let mut outlier = vec![EndpointOutlier::default(); n];
        let mut active = vec![0u32; n];
        let mut picks = vec![0u64; n];
        if let Some(prev) = prev {
            for (i, pm) in prev.members.iter().enumerate() {
                if let Some(j) = m.position(pm.addr) {
                    if let Some(o) = old_outlier.get(i) {
                        outlier[j] = o.clone();
                    }
                    active[j] = old_active.get(i).copied().unwrap_or(0);
                    picks[j] = old_picks.get(i).copied().unwrap_or(0);
                }
            }
        }
        self.ejected_count.set(
            outlier
                .iter()
                .filter(|o| o.ejected_until().is_some())
                .count(),
        );
        *self.outlier.borrow_mut() = outlier;
        *self.active.borrow_mut() = active;
        *self.picks.borrow_mut() = picks;
        *self.healthy.borrow_mut() = vec![true; n];
        self.healthy_count.set(n);
    }

    /// Applies health verdicts and locality tiers when the health view or
    /// the member set changed since last time.
    pub fn update_health(&self, cluster: &Cluster, health: &HealthView, own: &Locality) {
        if self.health_generation.get() == health.generation() {
            return;
        }
        self.health_generation.set(health.generation());
        let m = self.members.borrow();
        let mut healthy = self.healthy.borrow_mut();
        let mut tiers = self.tiers.borrow_mut();
        healthy.clear();
        tiers.clear();
        let (mut ok, mut all) = ([0u32; TIERS], [0u32; TIERS]);
        for member in &m.members {
            let h = member.discovered_healthy && health.is_healthy(&cluster.name, member.addr);
            let t = locality::tier(own, &member.locality);
            let ti = usize::from(t).min(TIERS - 1);
            all[ti] += 1;
            if h {
                ok[ti] += 1;
            }
            healthy.push(h);
            tiers.push(t);
        }
        self.healthy_count
            .set(healthy.iter().filter(|h| **h).count());
        self.tier_counts.set((ok, all));
    }

    /// Chooses an endpoint (see the module doc); `None` when the cluster has
    /// none that may be used.
    pub fn pick(&self, cluster: &Cluster, own: &Locality, input: &PickInput<'_>) -> Option<Picked> {
        let m = self.members.borrow();
        let n = m.members.len();
        if n == 0 {
            self.counters
                .no_healthy
                .set(self.counters.no_healthy.get() + 1);
            return None;
        }
        let outlier_cfg = cluster.outlier_detection.as_ref();
        let now = outlier_cfg.map(|_| Instant::now());
        let available = self
            .healthy_count
            .get()
            .saturating_sub(self.ejected_count.get());
        let panic = available * 100 < cluster.healthy_panic_threshold as usize * n;
        if panic {
            self.counters.panic.set(self.counters.panic.get() + 1);
        }
        // Locality: only when this proxy knows where it is.
        let tier = if panic || own.is_empty() {
            None
        } else {
            let (ok, all) = self.tier_counts.get();
            if all[1..].iter().all(|&c| c == 0) {
                None
            } else {
                locality::choose_tier(ok, all, OVERPROVISIONING, input.rand.rotate_left(17))
            }
        };
        let healthy = self.healthy.borrow();
        let tiers = self.tiers.borrow();
        let active = self.active.borrow();
        let usable = |i: usize| {
            if let Some(t) = tier {
                if tiers.get(i) != Some(&t) {
                    return false;
                }
            }
            if panic {
                return true;
            }
            if !healthy.get(i).copied().unwrap_or(false) {
                return false;
            }
            match (outlier_cfg, now) {
                (Some(cfg), Some(now)) => !self.check_ejected(i, cfg, now),
                _ => true,
            }
        };
        let mut picker = self.picker.borrow_mut();
        let first = if input.tried.is_empty() {
            None
        } else {
            picker.pick(
                &m.table,
                &PickRequest {
                    hash: input.hash,
                    eligible: |i: usize| usable(i) && !input.tried.contains(&m.members[i].addr),
                    active: &active,
                    rand: input.rand,
                },
            )
        };
        let index = first.or_else(|| {
            picker.pick(
                &m.table,
                &PickRequest {
                    hash: input.hash,
                    eligible: &usable,
                    active: &active,
                    rand: input.rand,
                },
            )
        });
        let Some(index) = index else {
            self.counters
                .no_healthy
                .set(self.counters.no_healthy.get() + 1);
            return None;
        };
        if let Some(p) = self.picks.borrow_mut().get_mut(index) {
            *p += 1;
        }
        Some(Picked {
            addr: m.members[index].addr,
            index,
            members_id: m.id,
        })
    }

    /// Whether member `i` is ejected now; ends an ejection that ran out.
    fn check_ejected(&self, i: usize, cfg: &outlier::OutlierConfig, now: Instant) -> bool {
        let mut o = self.outlier.borrow_mut();
        let Some(e) = o.get_mut(i) else { return false };
        let was = e.ejected_until().is_some();
        let is = e.is_ejected(cfg, now);
        if was && !is {
            self.ejected_count
                .set(self.ejected_count.get().saturating_sub(1));
        }
        is
    }

    /// The index of `p` in the current set (it may have changed since the pick).
    fn index_of(&self, p: &Picked) -> Option<usize> {
        let m = self.members.borrow();
        if m.id == p.members_id {
            Some(p.index)
        } else {
            m.position(p.addr)
        }
    }

    /// Counts a request in flight to `p` (least request) until the guard drops.
    pub fn start_request(self: &Rc<Self>, p: &Picked) -> ActiveRequest {
        if let Some(i) = self.index_of(p) {
            if let Some(a) = self.active.borrow_mut().get_mut(i) {
                *a += 1;
            }
        }
        ActiveRequest {
            state: self.clone(),
            picked: *p,
        }
    }

    /// Feeds outlier detection with what a request to `p` came to; ejects
    /// when it should (within max_ejection_percent). Returns true on ejection.
    pub fn record(&self, cluster: &Cluster, p: &Picked, result: Result_) -> bool {
        let Some(cfg) = cluster.outlier_detection.as_ref() else {
            return false;
        };
        let Some(i) = self.index_of(p) else {
            return false;
        };
        let n = self.members.borrow().members.len();
        let mut o = self.outlier.borrow_mut();
        let Some(e) = o.get_mut(i) else { return false };
        if e.ejected_until().is_some() || e.record(cfg, result).is_none() {
            return false;
        }
        if !outlier::may_eject(self.ejected_count.get(), n, cfg.max_ejection_percent) {
            let c = &self.counters.ejections_overflow;
            c.set(c.get() + 1);
            return false;
        }
        e.eject(cfg, Instant::now());
        self.ejected_count.set(self.ejected_count.get() + 1);
        self.counters
            .ejections
            .set(self.counters.ejections.get() + 1);
        tracing::info!(cluster = %cluster.name, endpoint = %p.addr, "outlier detection: endpoint ejected on this core");
        true
    }

    /// Members with their state, for /clusters: (addr, healthy, ejected, active).
    pub fn describe(&self) -> Vec<(SocketAddr, bool, bool, u32)> {
        let m = self.members.borrow();
        let healthy = self.healthy.borrow();
        let outlier = self.outlier.borrow();
        let active = self.active.borrow();
        let now = Instant::now();
        m.members
            .iter()
            .enumerate()
            .map(|(i, mem)| {
                (
                    mem.addr,
                    healthy.get(i).copied().unwrap_or(true),
                    outlier
                        .get(i)
                        .and_then(|o| o.ejected_until())
                        .is_some_and(|u| u > now),
                    active.get(i).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// This core's state, for a stats report.
    pub fn report(&self) -> ClusterReport {
        let mut r = ClusterReport::default();
        for (i, res) in Resource::ALL.iter().enumerate() {
            r.breaker_open[i] = u64::from(self.breakers.open(*res));
            r.breaker_overflow[i] = self.breakers.overflows(*res);
        }
        let c = &self.counters;
        r.ejections = c.ejections.get();
        r.ejections_overflow = c.ejections_overflow.get();
        r.no_healthy = c.no_healthy.get();
        r.panic = c.panic.get();
        let picks = self.picks.borrow();
        for (i, (addr, _, ejected, active)) in self.describe().into_iter().enumerate() {
            r.endpoints.insert(
                addr,
                EndpointReport {
                    ejected_cores: u64::from(ejected),
                    rq_active: u64::from(active),
                    lb_picks: picks.get(i).copied().unwrap_or(0),
                },
            );
        }
        r
    }
}

/// A request in flight to one endpoint (see [`ClusterState::start_request`]).
pub struct ActiveRequest {
    state: Rc<ClusterState>,
    picked: Picked,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if let Some(i) = self.state.index_of(&self.picked) {
            if let Some(a) = self.state.active.borrow_mut().get_mut(i) {
                *a = a.saturating_sub(1);
            }
        }
    }
}
