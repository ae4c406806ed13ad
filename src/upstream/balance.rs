//! Load balancing: which endpoint of a cluster gets the next request.
//!
//! Pure: no I/O, no clock, no RNG of its own. The work is split by who does it:
//!
//! ```text
//! control thread, once per endpoint-set change:
//!   LbTable::build(policy, weights, keys) ─► LbTable (immutable, Send + Sync, Arc'd by the caller)
//! each core, per request:
//!   Picker (per core and cluster: RR cursor, least-request EDF heap)
//!     .pick(&table, PickRequest { hash, eligible, active, rand }) ─► Some(endpoint index) | None
//! ```
//!
//! Endpoints are indices `0..n` into the caller's endpoint list; the caller
//! owns addresses, health, ejections and the active-request counts, and says
//! which endpoints may be picked with a predicate (`eligible`), so a host that
//! a retry already tried, an ejected one and an unhealthy one are all the same
//! thing here. `None` comes back only when no endpoint is eligible.
//!
//! | policy        | table (shared)                         | pick (per core)                    |
//! |---------------|----------------------------------------|------------------------------------|
//! | RoundRobin    | nginx's smooth WRR sequence, once      | cursor + 1                         |
//! | LeastRequest  | 1/weight per endpoint (fixed point)    | P2C; EDF heap when weights differ  |
//! | Random        | Vose alias table                       | one draw                           |
//! | RingHash      | Envoy's ketama ring, sorted hashes     | binary search, walk to eligible    |
//! | Maglev        | Envoy's weighted Maglev table          | `hash % size`, walk to eligible    |
//!
//! Picks take 3-40 ns at 1,000 endpoints with hot caches (weighted least
//! request, a heap sift, is the dearest; `benches/balance.rs`). The per-core
//! least-request heap is 8 bytes per endpoint.
//!
//! Weights: a weight of 0 counts as 1 (Envoy's `load_balancing_weight` must be
//! at least 1; a bad value should not silently drop an endpoint or divide by
//! zero). All weight arithmetic is done in u64/u128, so u32::MAX weights on
//! every endpoint do not overflow.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use xxhash_rust::xxh64::xxh64;

/// Envoy's `LeastRequestLbConfig.choice_count` default (and minimum).
pub const DEFAULT_CHOICE_COUNT: u32 = 2;
/// Envoy's `RingHashLbConfig.minimum_ring_size` default.
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;
/// Envoy's `RingHashLbConfig.maximum_ring_size` default, and the largest it accepts.
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Envoy's `MaglevLbConfig.table_size` default: a prime, so that every
/// endpoint's permutation visits every slot (Maglev paper §3.4).
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65_537;
/// The largest Maglev table Envoy accepts (a prime).
pub const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// How a cluster spreads requests over its endpoints (Envoy's `lb_policy`,
/// Istio's `DestinationRule.trafficPolicy.loadBalancer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    /// Weighted round robin; Istio `ROUND_ROBIN`.
    RoundRobin,
    /// Fewest active requests among `choice_count` random endpoints (equal
    /// weights), or Envoy's weighted EDF on `weight / (active + 1)` when the
    /// weights differ; Istio `LEAST_REQUEST` (Istio's default).
    LeastRequest { choice_count: u32 },
    /// Weighted random; Istio `RANDOM`.
    Random,
    /// Ketama consistent hashing (Envoy `RING_HASH`, Istio `consistentHash`
    /// with `ringHash`).
    RingHash {
        minimum_ring_size: u64,
        maximum_ring_size: u64,
    },
    /// Maglev consistent hashing (Envoy `MAGLEV`, Istio `consistentHash` with
    /// `maglev`).
    Maglev { table_size: u64 },
}

impl LbPolicy {
    /// Least request with Envoy's default of two choices.
    pub const LEAST_REQUEST: LbPolicy = LbPolicy::LeastRequest {
        choice_count: DEFAULT_CHOICE_COUNT,
    };
    /// Ring hash with Envoy's default ring sizes.
    pub const RING_HASH: LbPolicy = LbPolicy::RingHash {
        minimum_ring_size: DEFAULT_MIN_RING_SIZE,
        maximum_ring_size: MAX_RING_SIZE,
    };
    /// Maglev with Envoy's default table size.
    pub const MAGLEV: LbPolicy = LbPolicy::Maglev {
        table_size: DEFAULT_MAGLEV_TABLE_SIZE,
    };

    /// Rejects the values Envoy's config validation rejects, for the config
    /// layer to call before publishing. [`LbTable::build`] never fails: it
    /// clamps the same values (documented there), so an unvalidated policy
    /// still cannot panic or loop.
    pub fn validate(&self) -> Result<(), PolicyError> {
        match *self {
            LbPolicy::RoundRobin | LbPolicy::Random => Ok(()),
            LbPolicy::LeastRequest { choice_count } if choice_count < 2 => {
                Err(PolicyError::ChoiceCount(choice_count))
            }
            LbPolicy::LeastRequest { .. } => Ok(()),
            LbPolicy::RingHash {
                minimum_ring_size: min,
                maximum_ring_size: max,
            } if min == 0 || min > max || max > MAX_RING_SIZE => {
                Err(PolicyError::RingSize { min, max })
            }
            LbPolicy::RingHash { .. } => Ok(()),
            LbPolicy::Maglev { table_size }
                if !is_prime(table_size) || table_size > MAX_MAGLEV_TABLE_SIZE =>
            {
                Err(PolicyError::MaglevTableSize(table_size))
            }
            LbPolicy::Maglev { .. } => Ok(()),
        }
    }
}

/// A load-balancing policy the config cannot use (see [`LbPolicy::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("least request choice_count must be at least 2 (Envoy's default is 2), got {0}")]
    ChoiceCount(u32),
    #[error(
        "ring hash minimum_ring_size ({min}) must be at least 1 and at most maximum_ring_size \
         ({max}), which must be at most 8388608"
    )]
    RingSize { min: u64, max: u64 },
    #[error("maglev table_size must be a prime number up to 5000011 (default 65537), got {0}")]
    MaglevTableSize(u64),
}

/// The hash of a `hash_policy` key (Istio `consistentHash`: the header value,
/// cookie value, source IP or query parameter, extracted by the caller). To
/// agree with Envoy, pass the bytes Envoy hashes: the header, cookie or
/// query parameter value, and the source IP as text (`10.1.2.3`).
///
/// xxHash64 with seed 0, which is what Envoy computes for the same key
/// (`HashUtil::xxHash64` in its hash policies), stable across runs, processes
/// and machines: a Remora and an Envoy sidecar with the same endpoint set send
/// the same key to the same endpoint (see [`LbTable::build`] for the ring and
/// table side of that).
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

/// What one pick needs from the caller.
pub struct PickRequest<'a, E> {
    /// The request's hash ([`hash_key`]) for ring hash and Maglev. `None` (no
    /// hash policy matched, e.g. the header is absent) picks at random, as
    /// Envoy does (`random_.random()` in its thread-aware balancers).
    pub hash: Option<u64>,
    /// Whether an endpoint may be picked: healthy, not ejected, not already
    /// tried by this request. Generic (not `dyn`) so it inlines into the
    /// pick loop.
    pub eligible: E,
    /// Active requests per endpoint on this core, for least request; indices
    /// past the end count as 0, so other policies may pass `&[]`.
    pub active: &'a [u32],
    /// A uniformly random u64 from the core's RNG. Every random choice of
    /// the pick derives from it, so a pick is a pure function of its inputs.
    pub rand: u64,
}

/// Tables get a process-unique id so a [`Picker`] can tell that its per-core
/// state (the least-request heap) was built for another table. Only the
/// control thread that builds tables touches this counter.
static NEXT_TABLE_ID: AtomicU64 = AtomicU64::new(1);

/// The immutable part of a cluster's balancer, built once per endpoint-set
/// change and shared read-only by every core.
#[derive(Debug)]
pub struct LbTable {
    id: u64,
    policy: LbPolicy,
    /// Weights with 0 read as 1; their length is the endpoint count.
    weights: Box<[u32]>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// The weighted sequence, one endpoint per slot; empty when the weights
    /// are uniform (the sequence would be `0..n`).
    RoundRobin {
        seq: Box<[u32]>,
    },
    LeastRequest {
        choice_count: u32,
        /// EDF step per active request for each endpoint (see [`edf_units`]);
        /// empty when the weights are uniform.
        units: Box<[u64]>,
    },
    /// Vose alias table; empty when the weights are uniform.
    Random {
        alias: Box<[AliasSlot]>,
    },
    RingHash(Ring),
    /// Endpoint per slot; the length is the (prime) table size.
    Maglev {
        slots: Box<[u32]>,
    },
}

/// One bucket of the alias table: keep the bucket's own endpoint when the
/// 32-bit fraction drawn is below `keep` (2^32 = always), else take `alias`.
#[derive(Debug, Clone, Copy)]
struct AliasSlot {
    keep: u64,
    alias: u32,
}

/// Ring entries as two arrays, so the binary search touches only hashes.
#[derive(Debug, Default)]
struct Ring {
    hashes: Box<[u64]>,
    endpoints: Box<[u32]>,
}

impl LbTable {
    /// Builds the table for endpoints `0..weights.len()`.
    ///
    /// `keys[i]` names endpoint `i` stably (its address, e.g.
    /// `"10.0.0.1:8080"`), so that ring hash and Maglev place an endpoint at
    /// the same spots whatever happens to the others; only those two policies
    /// read it (pass `&[]` for the rest). An endpoint without a key is hashed
    /// by its index in decimal, which stays put only while the order does.
    /// With Envoy's address strings as keys, the ring and the Maglev table are
    /// the ones Envoy builds for the same hosts and weights.
    ///
    /// Never fails. Weights of 0 count as 1. Out-of-range policy values are
    /// clamped: `choice_count` to at least 1, ring sizes to `1..=MAX_RING_SIZE`
    /// with the minimum at most the maximum, and a Maglev size to the next
    /// prime in `2..=MAX_MAGLEV_TABLE_SIZE`. More than `u32::MAX` endpoints
    /// are cut to `u32::MAX`; weighted least request over more than 2^20
    /// endpoints uses the unweighted choices.
    ///
    /// Cost (1,000 endpoints, see `benches/balance.rs`): ring hash ~0.1 ms at
    /// the default sizes (a few ms for a 100,000-entry ring), Maglev a few
    /// ms, weighted round robin a few ms (O(n × cycle length)).
    pub fn build(policy: &LbPolicy, weights: &[u32], keys: &[&[u8]]) -> LbTable {
        let n = weights.len().min(u32::MAX as usize);
        let weights: Box<[u32]> = weights[..n].iter().map(|&w| w.max(1)).collect();
        // All weights equal: round robin, least request and random take
        // their unweighted paths.
        let uniform = weights.windows(2).all(|w| w[0] == w[1]);
        let kind = match *policy {
            LbPolicy::RoundRobin => Kind::RoundRobin {
                seq: if uniform {
                    Box::default()
                } else {
                    smooth_sequence(&weights)
                },
            },
            LbPolicy::LeastRequest { choice_count } => Kind::LeastRequest {
                choice_count: choice_count.max(1),
                units: if uniform || n > EDF_MAX_ENDPOINTS {
                    Box::default()
                } else {
                    edf_units(&weights)
                },
            },
            LbPolicy::Random => Kind::Random {
                alias: if uniform {
                    Box::default()
                } else {
                    alias_table(&weights)
                },
            },
            LbPolicy::RingHash {
                minimum_ring_size,
                maximum_ring_size,
            } => Kind::RingHash(build_ring(
                &weights,
                keys,
                minimum_ring_size,
                maximum_ring_size,
            )),
            LbPolicy::Maglev { table_size } => Kind::Maglev {
                slots: build_maglev(&weights, keys, table_size),
            },
        };
        LbTable {
            id: NEXT_TABLE_ID.fetch_add(1, Ordering::Relaxed),
            policy: *policy,
            weights,
            kind,
        }
    }

    /// The policy the table was built for (as given, before clamping).
    pub fn policy(&self) -> &LbPolicy {
        &self.policy
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
}

/// Per-core, per-cluster pick state. Cheap to create; keep one per cluster
/// on each core and pass the cluster's current table to every pick. It
/// notices a new table by its id and rebuilds what it keeps for it.
#[derive(Debug)]
pub struct Picker {
    /// Round robin: next position in the sequence (reduced modulo its length,
    /// so it survives a table of another size).
    cursor: usize,
    /// Weighted least request: Envoy's per-worker EDF scheduler.
    edf: Option<Edf>,
}

impl Picker {
    /// `seed` (from the core's RNG) sets where round robin starts, so cores
    /// and proxies do not all send their first requests to endpoint 0:
    /// Envoy seeds each worker's round-robin index at random for the same
    /// reason (`seed_` in `EdfLoadBalancerBase`).
    pub fn new(seed: u64) -> Picker {
        Picker {
            cursor: seed as usize,
            edf: None,
        }
    }

    /// Picks an eligible endpoint index, or `None` when none is eligible.
    pub fn pick<E: Fn(usize) -> bool>(
        &mut self,
        table: &LbTable,
        req: &PickRequest<'_, E>,
    ) -> Option<usize> {
        let n = table.len();
        if n == 0 {
            return None;
        }
        match &table.kind {
            Kind::RoundRobin { seq } => self.round_robin(n, seq, &req.eligible),
            Kind::LeastRequest {
                choice_count,
                units,
            } => {
                if units.is_empty() {
                    least_of_choices(n, *choice_count, req)
                } else {
                    self.least_request_edf(table.id, units, req)
                }
            }
            Kind::Random { alias } => random(&table.weights, alias, req),
            Kind::RingHash(ring) => ring_pick(n, ring, req),
            Kind::Maglev { slots } => maglev_pick(n, slots, req),
        }
    }

    /// Walks the sequence from the cursor; skipped (ineligible) slots are
    /// used up, as an Envoy pick rejected by a retry predicate is, so the
    /// eligible endpoints keep their exact proportions among themselves.
    /// A weighted walk that finds nothing in `n + HASH_WALK` slots (ineligible
    /// heavy endpoints, or almost everything ineligible) scans the endpoints
    /// once instead, so a pick costs O(n) at worst.
    fn round_robin<E: Fn(usize) -> bool>(
        &mut self,
        n: usize,
        seq: &[u32],
        eligible: &E,
    ) -> Option<usize> {
        let len = if seq.is_empty() { n } else { seq.len() };
        let mut c = self.cursor;
        if c >= len {
            c %= len;
        }
        // Uniform: n slots are every endpoint once. Weighted: a heavy
        // endpoint's run can be longer than n (5,1,1 has a a | a a across the
        // cycle boundary), so allow HASH_WALK more before giving up.
        let limit = if seq.is_empty() {
            n
        } else {
            len.min(n.saturating_add(HASH_WALK))
        };
        for _ in 0..limit {
            let idx = if seq.is_empty() {
                c
            } else {
                seq.get(c).map_or(0, |&i| i as usize)
            };
            c += 1;
            if c == len {
                c = 0;
            }
            if eligible(idx) {
                self.cursor = c;
                return Some(idx);
            }
        }
        self.cursor = c;
        if seq.is_empty() {
            // The walk covered every endpoint.
            return None;
        }
        // Start where the cursor stopped, which moves on by `limit` with
        // every such pick, so these picks spread over the eligible.
        scan_from(n, c % n, eligible)
    }

    /// Envoy's weighted least request (`LeastRequestLoadBalancer` with
    /// unequal weights): an EDF scheduler per worker in which an endpoint's
    /// weight is `weight / (active + 1)^bias`, bias 1.0, read when it is
    /// (re)inserted, i.e. after each time it is picked. As in Envoy, a busy
    /// endpoint's count is not re-read until its deadline comes up.
    fn least_request_edf<E: Fn(usize) -> bool>(
        &mut self,
        table_id: u64,
        units: &[u64],
        req: &PickRequest<'_, E>,
    ) -> Option<usize> {
        let n = units.len();
        let active = |i: usize| req.active.get(i).copied().unwrap_or(0);
        let step = |i: usize| edf_step(units.get(i).copied().unwrap_or(1), active(i));
        let edf = match &mut self.edf {
            Some(edf) if edf.table_id == table_id => edf,
            slot => slot.insert(Edf::new(table_id, n, &step, req.rand)),
        };
        for _ in 0..n {
            let (deadline, idx) = edf.top()?;
            let next = deadline.saturating_add(step(idx));
            edf.replace_top(next, idx);
            if next > EDF_REBASE_AT {
                edf.rebase();
            }
            if (req.eligible)(idx) {
                return Some(idx);
            }
        }
        // n turns without an eligible endpoint: the eligible ones are few or
        // far behind; take the one with the smallest next step directly.
        (0..n)
            .filter(|&i| (req.eligible)(i))
            .min_by_key(|&i| step(i))
    }
}

/// Heap keys are `deadline << EDF_INDEX_BITS | endpoint`: one u64, so a
/// comparison is a single instruction without branches. Weighted least
/// request covers up to 2^20 endpoints; larger clusters use the unweighted
/// choices.
const EDF_INDEX_BITS: u32 = 20;
const EDF_MAX_ENDPOINTS: usize = 1 << EDF_INDEX_BITS;
/// The heaviest endpoint's step per active request: 16 bits of precision
/// for the ratios of the weights, whatever their scale.
const EDF_UNIT_BITS: u32 = 16;
/// A step is at most this (reached only with weights 2^24 apart, or that
/// many active requests per unit of weight): the endpoint then gets a little
/// more than its share rather than overflowing the clock.
const EDF_MAX_STEP: u64 = 1 << 40;
/// When the clock passes this, every deadline is moved back by the current
/// time, which keeps deadlines within their 44 bits (2^43 + 2^40 < 2^44).
/// The clock gains about one step of the heaviest endpoint per pick, 2^16 ×
/// its active requests + 1, so this happens every ~2^27 / (active + 1) picks
/// and costs O(n).
const EDF_REBASE_AT: u64 = 1 << 43;

/// Envoy's EDF weight is `weight / (active + 1)`, so the time between an
/// endpoint's turns is `(active + 1) / weight`. Per endpoint, `1 / weight`
/// is precomputed here in fixed point relative to the heaviest weight
/// (`2^16 × max / weight`), so a pick multiplies instead of dividing (a
/// 64-bit division is tens of cycles) and u32::MAX weights keep their ratios.
fn edf_units(weights: &[u32]) -> Box<[u64]> {
    let max = u64::from(weights.iter().copied().max().unwrap_or(1).max(1));
    weights
        .iter()
        .map(|&w| ((max << EDF_UNIT_BITS) / u64::from(w.max(1))).min(EDF_MAX_STEP))
        .collect()
}

fn edf_step(unit: u64, active: u32) -> u64 {
    unit.saturating_mul(u64::from(active) + 1)
        .clamp(1, EDF_MAX_STEP)
}

/// Envoy's per-worker EDF scheduler as a binary min-heap of packed
/// (deadline, endpoint) keys; ties go to the lower index.
#[derive(Debug)]
struct Edf {
    table_id: u64,
    heap: Vec<u64>,
}

impl Edf {
    /// Every endpoint starts a random fraction of its first step in, so
    /// cores do not pick in lockstep (Envoy's `EdfScheduler::createWithPicks`
    /// skips a random number of picks for the same reason).
    fn new(table_id: u64, n: usize, step: &impl Fn(usize) -> u64, rand: u64) -> Edf {
        let mut rng = SplitMix(rand);
        let mut heap: Vec<u64> = (0..n.min(EDF_MAX_ENDPOINTS))
            .map(|i| {
                let phase = (u128::from(step(i)) * u128::from(rng.next() >> 32)) >> 32;
                ((phase as u64) << EDF_INDEX_BITS) | i as u64
            })
            .collect();
        // A sorted array is a heap.
        heap.sort_unstable();
        Edf { table_id, heap }
    }

    /// The earliest (deadline, endpoint).
    fn top(&self) -> Option<(u64, usize)> {
        let key = *self.heap.first()?;
        Some((
            key >> EDF_INDEX_BITS,
            (key & (EDF_MAX_ENDPOINTS as u64 - 1)) as usize,
        ))
    }

    /// Floyd's bottom-up replacement in a 4-ary heap: the new deadline (now
    /// plus a step) usually belongs near the bottom, so move the smallest
    /// child up all the way down, then sift the key up from the leaf, which
    /// is rarely more than a level. Four children per node halve the depth
    /// of a binary heap (5 levels at 1,000 endpoints): the pick's chain of
    /// dependent loads is what costs.
    fn replace_top(&mut self, deadline: u64, idx: usize) {
        let key = (deadline << EDF_INDEX_BITS) | idx as u64;
        let h = &mut self.heap[..];
        let mut i = 0;
        loop {
            let first = 4 * i + 1;
            let c = if let Some(&[a, b, c, d]) = h.get(first..first + 4) {
                // Branch-free: two pairs, then the winners.
                let (ab, vab) = if b < a { (1, b) } else { (0, a) };
                let (cd, vcd) = if d < c { (3, d) } else { (2, c) };
                first + if vcd < vab { cd } else { ab }
            } else if let Some(rest) = h.get(first..) {
                match rest.iter().enumerate().min_by_key(|&(_, k)| *k) {
                    Some((c, _)) => first + c,
                    None => break,
                }
            } else {
                break;
            };
            h[i] = h[c];
            i = c;
        }
        while i > 0 {
            let p = (i - 1) / 4;
            if h[p] <= key {
                break;
            }
            h[i] = h[p];
            i = p;
        }
        if let Some(slot) = h.get_mut(i) {
            *slot = key;
        }
    }

    /// Moves every deadline back by the earliest: the same amount for all,
    /// so the heap order holds.
    fn rebase(&mut self) {
        let now = self.heap.first().map_or(0, |k| k >> EDF_INDEX_BITS);
        for k in &mut self.heap {
            *k -= now << EDF_INDEX_BITS;
        }
    }
}

/// Power of `choice_count` choices (Envoy's unweighted least request):
/// sample that many eligible endpoints at random, with replacement as Envoy
/// does, and keep the one with the fewest active requests, the first sampled
/// on a tie. When the choices cover the cluster (`choice_count >= n`) it scans
/// every endpoint instead, like Envoy's `enable_full_scan`, so the result is
/// the true minimum rather than the minimum of a sample with repeats; ties go
/// to one of the tied at random.
fn least_of_choices<E: Fn(usize) -> bool>(
    n: usize,
    choice_count: u32,
    req: &PickRequest<'_, E>,
) -> Option<usize> {
    let active = |i: usize| req.active.get(i).copied().unwrap_or(0);
    let mut rng = SplitMix(req.rand);
    if choice_count as usize >= n {
        let mut best: Option<(usize, u32)> = None;
        let mut tied = 0u64;
        for i in (0..n).filter(|&i| (req.eligible)(i)) {
            let a = active(i);
            match best {
                Some((_, b)) if a > b => {}
                Some((_, b)) if a == b => {
                    // Reservoir sampling: each of the tied is kept with
                    // probability 1/tied, as in Envoy's full scan.
                    tied += 1;
                    if rng.next() % tied == 0 {
                        best = Some((i, a));
                    }
                }
                _ => {
                    best = Some((i, a));
                    tied = 1;
                }
            }
        }
        return best.map(|(i, _)| i);
    }
    let mut best: Option<(usize, u32)> = None;
    for _ in 0..choice_count {
        let i = uniform_eligible(n, &mut rng, &req.eligible)?;
        let a = active(i);
        if best.is_none_or(|(_, b)| a < b) {
            best = Some((i, a));
        }
    }
    best.map(|(i, _)| i)
}

/// Rejection draws before a pick gives up on luck and scans: with half the
/// endpoints ineligible, eight misses in a row happen once in 256 picks.
const RANDOM_TRIES: usize = 8;

/// A uniformly random eligible endpoint; after [`RANDOM_TRIES`] misses, the
/// first eligible one after the last miss.
fn uniform_eligible<E: Fn(usize) -> bool>(
    n: usize,
    rng: &mut SplitMix,
    eligible: &E,
) -> Option<usize> {
    let mut i = 0;
    for _ in 0..RANDOM_TRIES {
        i = below(rng.next(), n);
        if eligible(i) {
            return Some(i);
        }
    }
    scan_from(n, i, eligible)
}

/// Weighted random among the eligible: alias draws (rejection keeps the
/// weights' proportions among the eligible exact), then, after
/// [`RANDOM_TRIES`] misses, one weighted pass over the eligible.
fn random<E: Fn(usize) -> bool>(
    weights: &[u32],
    alias: &[AliasSlot],
    req: &PickRequest<'_, E>,
) -> Option<usize> {
    let n = weights.len();
    let mut rng = SplitMix(req.rand);
    for _ in 0..RANDOM_TRIES {
        let r = rng.next();
        let i = below(r, n);
        let i = match alias.get(i) {
            Some(slot) if (r & 0xffff_ffff) >= slot.keep => slot.alias as usize,
            _ => i,
        };
        if (req.eligible)(i) {
            return Some(i);
        }
    }
    let total: u128 = weights
        .iter()
        .enumerate()
        .filter(|&(i, _)| (req.eligible)(i))
        .map(|(_, &w)| u128::from(w))
        .sum();
    if total == 0 {
        return None;
    }
    let mut target = u128::from(rng.next()) % total;
    for (i, &w) in weights.iter().enumerate() {
        if !(req.eligible)(i) {
            continue;
        }
        if target < u128::from(w) {
            return Some(i);
        }
        target -= u128::from(w);
    }
    None
}

/// Ring or table entries walked to find an eligible endpoint before falling
/// back to a scan of the endpoints.
const HASH_WALK: usize = 64;

/// Ketama lookup as in Envoy's `RingHashLoadBalancer::Ring::chooseHost`: the
/// first entry whose hash is at least the request's, wrapping to the first.
/// If its endpoint is ineligible, the next entries clockwise, as gRPC's
/// ring_hash does for endpoints that are down (gRFC A42) and as Envoy's
/// retry predicates do (`(midp + attempt) % size`): a key moves only when its
/// own endpoint is out, to the endpoint after it on the ring, and returns when
/// it is back. Envoy instead rebuilds the ring from the healthy hosts, which
/// moves keys of healthy hosts too when the scale changes. After
/// [`HASH_WALK`] entries the endpoints after the hashed one are scanned in
/// index order, which still depends only on the hash and the eligible set.
fn ring_pick<E: Fn(usize) -> bool>(
    n: usize,
    ring: &Ring,
    req: &PickRequest<'_, E>,
) -> Option<usize> {
    let len = ring.hashes.len();
    if len == 0 {
        // Every endpoint's share rounded to zero entries (not with a valid
        // policy); still honour the contract.
        return scan_from(n, n - 1, &req.eligible);
    }
    let h = req.hash.unwrap_or(req.rand);
    let mut pos = ring.hashes.partition_point(|&x| x < h);
    if pos == len {
        pos = 0;
    }
    walk(n, &ring.endpoints, pos, &req.eligible)
}

/// `slots[hash % size]`, as Envoy's `MaglevTable::chooseHost`. If that
/// endpoint is ineligible, the following slots: neighbouring slots are
/// filled by unrelated permutations, so they are independent draws weighted
/// like the table, and the displaced keys spread over the other endpoints in
/// proportion to their weights while every other key stays. Envoy rebuilds
/// the table from the healthy hosts instead (and for retries XORs the hash
/// with `~0 - attempt + 1`); a rebuild moves some keys of healthy endpoints
/// too (Maglev paper §3.4: the table is only nearly minimally disruptive).
fn maglev_pick<E: Fn(usize) -> bool>(
    n: usize,
    slots: &[u32],
    req: &PickRequest<'_, E>,
) -> Option<usize> {
    let len = slots.len() as u64;
    if len == 0 {
        return scan_from(n, n - 1, &req.eligible);
    }
    let h = req.hash.unwrap_or(req.rand);
    walk(n, slots, (h % len) as usize, &req.eligible)
}

/// Walks `entries` from `pos` (wrapping) for an eligible endpoint, checking
/// each run of one endpoint once; then scans the endpoints after the last
/// one seen.
fn walk<E: Fn(usize) -> bool>(
    n: usize,
    entries: &[u32],
    mut pos: usize,
    eligible: &E,
) -> Option<usize> {
    let len = entries.len();
    let mut last = usize::MAX;
    for _ in 0..len.min(HASH_WALK) {
        let idx = entries.get(pos).map_or(0, |&i| i as usize);
        if idx != last {
            if eligible(idx) {
                return Some(idx);
            }
            last = idx;
        }
        pos += 1;
        if pos == len {
            pos = 0;
        }
    }
    scan_from(n, last.min(n - 1), eligible)
}

/// The first eligible endpoint after `after` in index order, wrapping, ending
/// with `after` itself.
fn scan_from<E: Fn(usize) -> bool>(n: usize, after: usize, eligible: &E) -> Option<usize> {
    (1..=n)
        .map(|k| wrap_add(after, k, n))
        .find(|&i| eligible(i))
}

/// `(a + k) % n` for `a < n`, `k <= n`, without overflow.
fn wrap_add(a: usize, k: usize, n: usize) -> usize {
    let s = a % n + k % n;
    if s >= n {
        s - n
    } else {
        s
    }
}

/// A number in `0..n` from the high 32 bits of `r` (Lemire's multiply-shift:
/// no division, bias below n / 2^32).
fn below(r: u64, n: usize) -> usize {
    (((r >> 32) * (n as u64)) >> 32) as usize
}

/// SplitMix64 (Steele, Lea, Flood 2014): stretches the caller's one random
/// u64 into as many as a pick needs. Deterministic, so picks are testable.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The longest round-robin sequence kept: 256 KiB of u32 per cluster.
const RR_MAX_SEQUENCE: u64 = 1 << 16;
/// Work budget of the O(n × length) sequence build (~tens of ms).
const RR_BUILD_BUDGET: u64 = 1 << 26;

/// The weighted round-robin sequence: nginx's smooth weighted round robin
/// (`ngx_http_upstream_get_peer`) run once over a whole cycle, so a pick is
/// a cursor increment instead of nginx's O(n) scan or Envoy's O(log n) EDF
/// pop. Over a cycle every endpoint appears exactly weight/gcd times, and the
/// order is nginx's interleaving: 5,1,1 gives a a b a c a a, where an EDF
/// scheduler from a cold start (Envoy's) gives a a a a b c a.
///
/// The cycle is `sum(weight) / gcd` long. Past [`RR_MAX_SEQUENCE`] slots (or
/// the build budget at large n) the weights are first scaled down to fit by
/// largest remainder, each at least 1: every endpoint's count is then within
/// one slot of its exact share of the shorter cycle.
fn smooth_sequence(weights: &[u32]) -> Box<[u32]> {
    let n = weights.len() as u64;
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w)))
        .max(1);
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x) / g).collect();
    let total: u64 = w.iter().sum();
    let cap = RR_MAX_SEQUENCE.min(RR_BUILD_BUDGET / n.max(1)).max(2 * n);
    if total > cap {
        w = apportion(&w, total, cap);
        let g = w.iter().fold(0, |g, &x| gcd(g, x)).max(1);
        w.iter_mut().for_each(|x| *x /= g);
    }
    let total: u64 = w.iter().sum();
    let step = i64::try_from(total).unwrap_or(i64::MAX);
    let w: Vec<i64> = w
        .iter()
        .map(|&x| i64::try_from(x).unwrap_or(i64::MAX))
        .collect();
    let mut current = vec![0i64; w.len()];
    let mut seq = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        let mut best_val = i64::MIN;
        for (i, (c, &wi)) in current.iter_mut().zip(&w).enumerate() {
            *c += wi;
            if *c > best_val {
                best_val = *c;
                best = i;
            }
        }
        if let Some(c) = current.get_mut(best) {
            *c -= step;
        }
        seq.push(best as u32);
    }
    seq.into_boxed_slice()
}

/// Scales `w` (summing to `total`) to sum to about `target` by largest
/// remainder (Hamilton's method), raising zeros to 1.
fn apportion(w: &[u64], total: u64, target: u64) -> Vec<u64> {
    let total = u128::from(total.max(1));
    let exact: Vec<u128> = w
        .iter()
        .map(|&x| u128::from(x) * u128::from(target))
        .collect();
    let mut out: Vec<u64> = exact.iter().map(|&e| (e / total) as u64).collect();
    let given: u64 = out.iter().sum();
    let mut order: Vec<usize> = (0..w.len()).collect();
    order.sort_by_key(|&i| Reverse(exact[i] % total));
    for &i in order.iter().take(target.saturating_sub(given) as usize) {
        out[i] += 1;
    }
    out.iter_mut().for_each(|x| *x = (*x).max(1));
    out
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Vose's alias method (Vose 1991) in exact integer arithmetic: bucket `i`
/// holds `weight_i × n` of mass against a bucket size of `sum(weights)`.
fn alias_table(weights: &[u32]) -> Box<[AliasSlot]> {
    let n = weights.len();
    let size: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut mass: Vec<u128> = weights.iter().map(|&w| u128::from(w) * n as u128).collect();
    let mut slots: Vec<AliasSlot> = (0..n)
        .map(|i| AliasSlot {
            keep: 1 << 32,
            alias: i as u32,
        })
        .collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| mass[i] < size);
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        slots[s] = AliasSlot {
            keep: ((mass[s] << 32) / size) as u64,
            alias: l as u32,
        };
        mass[l] -= size - mass[s];
        if mass[l] < size {
            large.pop();
            small.push(l);
        }
    }
    // Whatever is left holds a full bucket (exactly, with integer mass).
    slots.into_boxed_slice()
}

/// Envoy's ring (`RingHashLoadBalancer::Ring`): hashes per endpoint in
/// proportion to its weight, scaled so the lightest endpoint gets a whole
/// number of hashes and the ring has at least `min` and at most `max`
/// entries; entry `k` of endpoint `i` is `xxh64("<key_i>_<k>")`. The running
/// sums let fractional shares round without drift, as in Envoy: an endpoint
/// whose share of a capped ring is under one entry may get none.
fn build_ring(weights: &[u32], keys: &[&[u8]], min: u64, max: u64) -> Ring {
    if weights.is_empty() {
        return Ring::default();
    }
    let max = max.clamp(1, MAX_RING_SIZE);
    let min = min.clamp(1, max);
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let min_share = weights
        .iter()
        .map(|&w| f64::from(w))
        .fold(f64::MAX, f64::min)
        / total;
    let scale = ((min_share * min as f64).ceil() / min_share).min(max as f64);
    let cap = max as usize + weights.len();
    let mut entries: Vec<(u64, u32)> = Vec::with_capacity((scale.ceil() as usize).min(cap));
    let mut buf = Vec::with_capacity(64);
    let (mut current, mut target) = (0.0f64, 0.0f64);
    for (i, &w) in weights.iter().enumerate() {
        target += scale * f64::from(w) / total;
        key_of(keys, i, &mut buf);
        buf.push(b'_');
        let prefix = buf.len();
        let mut k: u64 = 0;
        while current < target && entries.len() < cap {
            buf.truncate(prefix);
            let _ = write!(buf, "{k}");
            entries.push((xxh64(&buf, 0), i as u32));
            k += 1;
            current += 1.0;
        }
    }
    // Equal hashes (never seen in practice) order by endpoint, so the ring
    // does not depend on the input order.
    entries.sort_unstable();
    Ring {
        hashes: entries.iter().map(|e| e.0).collect(),
        endpoints: entries.iter().map(|e| e.1).collect(),
    }
}

/// Writes endpoint `i`'s key into `buf` (replacing it).
fn key_of(keys: &[&[u8]], i: usize, buf: &mut Vec<u8>) {
    buf.clear();
    match keys.get(i) {
        Some(k) => buf.extend_from_slice(k),
        None => {
            let _ = write!(buf, "{i}");
        }
    }
}

const EMPTY_SLOT: u32 = u32::MAX;

/// Envoy's weighted Maglev table (`MaglevTable`, after the Maglev paper's
/// Pseudocode 1, Eisenbud et al., NSDI 2016): endpoint `i` fills slots in the
/// order of its permutation `offset + k × skip (mod size)`, with
/// `offset = xxh64(key, 0) % size` and `skip = xxh64(key, 1) % (size - 1) + 1`;
/// it takes a turn in iteration `t` when `t × weight >= picks × max_weight`,
/// so the heaviest endpoint fills a slot every iteration and one of a third
/// the weight every third. Envoy loops over all endpoints per iteration
/// (O(size × n) when weights are skewed); the heap below yields the same
/// turns in the same order (by iteration, then index) in O(size log n).
/// Integer arithmetic replaces Envoy's normalised doubles, which can differ
/// only at exact float ties.
fn build_maglev(weights: &[u32], keys: &[&[u8]], table_size: u64) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::default();
    }
    let size = next_prime(table_size.clamp(2, MAX_MAGLEV_TABLE_SIZE));
    let max_w = weights.iter().copied().max().unwrap_or(1).max(1) as u64;
    struct Entry {
        offset: u64,
        skip: u64,
        next: u64,
        picks: u64,
        weight: u64,
    }
    let mut buf = Vec::with_capacity(64);
    let mut entries: Vec<Entry> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            key_of(keys, i, &mut buf);
            Entry {
                offset: xxh64(&buf, 0) % size,
                skip: xxh64(&buf, 1) % (size - 1) + 1,
                next: 0,
                picks: 0,
                weight: u64::from(w.max(1)),
            }
        })
        .collect();
    let mut turns: BinaryHeap<Reverse<(u64, u32)>> =
        (0..entries.len()).map(|i| Reverse((1, i as u32))).collect();
    let mut table = vec![EMPTY_SLOT; size as usize];
    let mut filled = 0u64;
    while filled < size {
        let Some(Reverse((iteration, i))) = turns.pop() else {
            break;
        };
        let Some(e) = entries.get_mut(i as usize) else {
            break;
        };
        // size is prime and 0 < skip < size, so the permutation visits every
        // slot within `size` steps, and one is still empty.
        let before = filled;
        for _ in 0..size {
            let c = ((e.offset + e.skip * e.next) % size) as usize;
            e.next += 1;
            if table[c] == EMPTY_SLOT {
                table[c] = i;
                filled += 1;
                break;
            }
        }
        if filled == before {
            // Unreachable with a prime size; never loop forever on a bug.
            break;
        }
        e.picks += 1;
        let due = (e.picks * max_w).div_ceil(e.weight);
        turns.push(Reverse((due.max(iteration + 1), i)));
    }
    table.into_boxed_slice()
}

fn is_prime(x: u64) -> bool {
    if x < 2 {
        return false;
    }
    if x % 2 == 0 {
        return x == 2;
    }
    let mut d = 3;
    while d * d <= x {
        if x % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// The smallest prime `>= x`, for `x <= MAX_MAGLEV_TABLE_SIZE` (itself prime).
fn next_prime(mut x: u64) -> u64 {
    while !is_prime(x) {
        x += 1;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64, as a core's RNG would be.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn all(_: usize) -> bool {
        true
    }

    fn req<E: Fn(usize) -> bool>(
        rand: u64,
        hash: Option<u64>,
        eligible: E,
    ) -> PickRequest<'static, E> {
        PickRequest {
            hash,
            eligible,
            active: &[],
            rand,
        }
    }

    /// `count` picks with fresh random numbers; per-endpoint counts.
    fn histogram<E: Fn(usize) -> bool + Copy>(
        table: &LbTable,
        active: &[u32],
        eligible: E,
        count: usize,
    ) -> Vec<u32> {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut picker = Picker::new(rng.next());
        let mut hist = vec![0u32; table.len()];
        for _ in 0..count {
            let r = PickRequest {
                hash: None,
                eligible,
                active,
                rand: rng.next(),
            };
            hist[picker.pick(table, &r).unwrap()] += 1;
        }
        hist
    }

    /// Pearson's chi-square of `hist` against shares proportional to `weights`.
    fn chi_square(hist: &[u32], weights: &[u32]) -> f64 {
        let n: f64 = hist.iter().map(|&h| f64::from(h)).sum();
        let w: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        hist.iter()
            .zip(weights)
            .filter(|(_, &w)| w > 0)
            .map(|(&h, &wi)| {
                let expected = n * f64::from(wi) / w;
                (f64::from(h) - expected).powi(2) / expected
            })
            .sum()
    }

    fn rr_picks(
        table: &LbTable,
        seed: u64,
        count: usize,
        eligible: impl Fn(usize) -> bool + Copy,
    ) -> Vec<usize> {
        let mut picker = Picker::new(seed);
        (0..count)
            .map(|_| picker.pick(table, &req(0, None, eligible)).unwrap())
            .collect()
    }

    /// nginx's smooth weighted round robin, literally: the reference.
    fn nginx_swrr(weights: &[i64], count: usize) -> Vec<usize> {
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = Vec::new();
        for _ in 0..count {
            let mut best: Option<usize> = None;
            for i in 0..weights.len() {
                current[i] += weights[i];
                if best.is_none_or(|b| current[i] > current[b]) {
                    best = Some(i);
                }
            }
            let b = best.unwrap();
            current[b] -= total;
            out.push(b);
        }
        out
    }

    /// Longest run of `e` in `seq` repeated forever.
    fn max_cyclic_run(seq: &[usize], e: usize) -> usize {
        let (mut best, mut run) = (0, 0);
        for &x in seq.iter().chain(seq) {
            run = if x == e { run + 1 } else { 0 };
            best = best.max(run);
        }
        best.min(seq.len())
    }

    #[test]
    fn round_robin_weighted_is_exact_and_smooth() {
        let table = LbTable::build(&LbPolicy::RoundRobin, &[5, 1, 1], &[]);
        // nginx's interleaving, from whichever slot the seed starts at.
        let picks = rr_picks(&table, 0, 7, all);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
        for seed in 0..7 {
            let picks = rr_picks(&table, seed, 70, all);
            for window in picks.windows(7) {
                let count = |e| window.iter().filter(|&&x| x == e).count();
                assert_eq!((count(0), count(1), count(2)), (5, 1, 1));
            }
            // Never more than nginx's 4 in a row (2 + 2 across the cycle
            // boundary); a cold EDF start gives 5.
            assert!(max_cyclic_run(&picks, 0) <= 4);
        }
        // The same sequence as nginx for assorted weights, gcd reduced.
        for weights in [
            vec![3u32, 2, 1],
            vec![7, 3, 1, 1],
            vec![10, 2, 1],
            vec![100, 1, 1, 1],
            vec![4, 6, 10],
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        ] {
            let table = LbTable::build(&LbPolicy::RoundRobin, &weights, &[]);
            let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))) as i64;
            let reduced: Vec<i64> = weights.iter().map(|&w| i64::from(w) / g).collect();
            let cycle: i64 = reduced.iter().sum();
            let want = nginx_swrr(&reduced, cycle as usize * 3);
            assert_eq!(rr_picks(&table, 0, want.len(), all), want, "{weights:?}");
        }
    }

    #[test]
    fn round_robin_equal_weights_rotate() {
        let table = LbTable::build(&LbPolicy::RoundRobin, &[3, 3, 3, 3], &[]);
        assert_eq!(rr_picks(&table, 0, 9, all), [0, 1, 2, 3, 0, 1, 2, 3, 0]);
        // The seed sets the start only.
        assert_eq!(rr_picks(&table, 6, 5, all), [2, 3, 0, 1, 2]);
        assert_eq!(rr_picks(&table, u64::MAX, 4, all).len(), 4);
    }

    #[test]
    fn round_robin_skips_ineligible() {
        let table = LbTable::build(&LbPolicy::RoundRobin, &[1; 5], &[]);
        let picks = rr_picks(&table, 0, 8, |i| i != 1 && i != 3);
        assert_eq!(picks, [0, 2, 4, 0, 2, 4, 0, 2]);
        // Weighted: the eligible keep their proportions among themselves,
        // and the skipped heavy one does not pile its turns onto one other.
        let table = LbTable::build(&LbPolicy::RoundRobin, &[5, 1, 1], &[]);
        let picks = rr_picks(&table, 0, 10, |i| i != 0);
        assert_eq!(picks, [1, 2, 1, 2, 1, 2, 1, 2, 1, 2]);
        let table = LbTable::build(&LbPolicy::RoundRobin, &[3, 2, 1], &[]);
        let picks = rr_picks(&table, 0, 400, |i| i != 1);
        let zeros = picks.iter().filter(|&&x| x == 0).count();
        assert_eq!((zeros, 400 - zeros), (300, 100));
        assert!(max_cyclic_run(&picks, 0) <= 3);
    }

    #[test]
    fn round_robin_huge_weights() {
        // Sum and gcd far past the sequence cap: scaled, proportions kept.
        let weights = [u32::MAX, 1, u32::MAX / 2, 7];
        let table = LbTable::build(&LbPolicy::RoundRobin, &weights, &[]);
        let Kind::RoundRobin { seq } = &table.kind else {
            unreachable!()
        };
        assert!(seq.len() as u64 <= RR_MAX_SEQUENCE + 4, "{}", seq.len());
        let hist = histogram(&table, &[], all, seq.len());
        assert!(
            hist[1] >= 1 && hist[3] >= 1,
            "light endpoints still get a turn: {hist:?}"
        );
        let ratio = f64::from(hist[0]) / f64::from(hist[2]);
        assert!((ratio - 2.0).abs() < 0.001, "{hist:?}");
    }

    #[test]
    fn round_robin_survives_a_smaller_table() {
        let big = LbTable::build(&LbPolicy::RoundRobin, &[1, 2, 3, 4, 5, 6], &[]);
        let small = LbTable::build(&LbPolicy::RoundRobin, &[1, 1], &[]);
        let mut picker = Picker::new(0);
        for _ in 0..17 {
            picker.pick(&big, &req(0, None, all)).unwrap();
        }
        assert!(picker.pick(&small, &req(0, None, all)).unwrap() < 2);
    }

    #[test]
    fn least_request_full_choice_takes_the_minimum() {
        let active = [7, 3, 9, 0, 4, 0, 8, 1, 1, 5];
        for choice_count in [10, 11, 1000] {
            let policy = LbPolicy::LeastRequest { choice_count };
            let table = LbTable::build(&policy, &[1; 10], &[]);
            let hist = histogram(&table, &active, all, 1000);
            // Only the two idle endpoints, and both (ties start at random).
            assert_eq!(hist[3] + hist[5], 1000, "{hist:?}");
            assert!(hist[3] > 300 && hist[5] > 300, "{hist:?}");
            // With those two ineligible, the next least loaded.
            let hist = histogram(&table, &active, |i| i != 3 && i != 5, 100);
            assert_eq!(hist[7] + hist[8], 100);
        }
        // Two endpoints, two choices: always the less loaded.
        let table = LbTable::build(&LbPolicy::LEAST_REQUEST, &[1, 1], &[]);
        assert_eq!(histogram(&table, &[5, 2], all, 100), [0, 100]);
    }

    #[test]
    fn least_request_two_choices_prefer_the_less_loaded() {
        // Endpoint i has i active requests: P2C's pick is the smaller of
        // two uniform draws, about n/3 on average; random would be n/2.
        let active: Vec<u32> = (0..100).collect();
        let table = LbTable::build(&LbPolicy::LEAST_REQUEST, &[1; 100], &[]);
        let hist = histogram(&table, &active, all, 20_000);
        let mean: f64 = hist
            .iter()
            .enumerate()
            .map(|(i, &h)| i as f64 * f64::from(h))
            .sum::<f64>()
            / 20_000.0;
        assert!((30.0..37.0).contains(&mean), "mean active {mean}");
        // The busiest endpoint needs both draws: about 1 in 10,000.
        assert!(hist[99] < 10, "{}", hist[99]);
        // Ineligible endpoints are never picked, even when idle.
        let hist = histogram(&table, &active, |i| i >= 50, 1000);
        assert!(hist[..50].iter().all(|&h| h == 0));
    }

    #[test]
    fn least_request_weighted_follows_envoy_edf() {
        // Idle: plain weighted round robin, 3:1 to within a turn.
        let table = LbTable::build(&LbPolicy::LEAST_REQUEST, &[3, 1], &[]);
        let hist = histogram(&table, &[0, 0], all, 4000);
        assert!(hist[0].abs_diff(3000) <= 2, "{hist:?}");
        // Weight 2 with 9 active (2 / 10) against weight 1 idle (1 / 1): the
        // idle one gets five times the share.
        let table = LbTable::build(&LbPolicy::LEAST_REQUEST, &[2, 1], &[]);
        let hist = histogram(&table, &[9, 0], all, 6000);
        assert!(hist[0].abs_diff(1000) <= 2, "{hist:?}");
        // Weights near u32::MAX keep their ratio (units relative to the max).
        let table = LbTable::build(&LbPolicy::LEAST_REQUEST, &[u32::MAX, u32::MAX / 2], &[]);
        let hist = histogram(&table, &[], all, 3000);
        assert!(hist[0].abs_diff(2000) <= 2, "{hist:?}");
        // Ineligible endpoints are skipped; the rest keep their ratio.
        let table = LbTable::build(&LbPolicy::LEAST_REQUEST, &[3, 1, 2], &[]);
        let hist = histogram(&table, &[], |i| i != 0, 3000);
        assert_eq!(hist[0], 0);
        assert!(hist[2].abs_diff(2000) <= 2, "{hist:?}");
        // A new table (another size) replaces the heap.
        let mut picker = Picker::new(1);
        let small = LbTable::build(&LbPolicy::LEAST_REQUEST, &[1, 2], &[]);
        for _ in 0..10 {
            picker.pick(&table, &req(5, None, all)).unwrap();
        }
        for _ in 0..10 {
            assert!(picker.pick(&small, &req(5, None, all)).unwrap() < 2);
        }
    }

    #[test]
    fn least_request_edf_clock_rebases() {
        // Big steps (2^20 active: 2^37 for the light endpoint) pass the
        // rebase point every ~100 picks; picks stay weighted through it.
        let table = LbTable::build(&LbPolicy::LEAST_REQUEST, &[1, 2], &[]);
        let active = [1 << 20, 1 << 20];
        let hist = histogram(&table, &active, all, 300_000);
        assert!(hist[1].abs_diff(200_000) <= 2, "{hist:?}");
    }

    #[test]
    fn random_is_weighted() {
        // Fixed seeds, so deterministic; 16.27 is chi-square's 0.1% point at
        // 3 degrees of freedom, 27.88 at 9.
        let weights = [1, 2, 3, 4];
        let table = LbTable::build(&LbPolicy::Random, &weights, &[]);
        let hist = histogram(&table, &[], all, 100_000);
        assert!(chi_square(&hist, &weights) < 16.27, "{hist:?}");
        let table = LbTable::build(&LbPolicy::Random, &[1; 10], &[]);
        let hist = histogram(&table, &[], all, 100_000);
        assert!(chi_square(&hist, &[1; 10]) < 27.88, "{hist:?}");
        // Ineligible: the others keep their ratios (1:2:3 → 0 for index 3).
        let table = LbTable::build(&LbPolicy::Random, &weights, &[]);
        let hist = histogram(&table, &[], |i| i != 3, 60_000);
        assert!(chi_square(&hist, &[1, 2, 3, 0]) < 13.82, "{hist:?}");
        assert_eq!(hist[3], 0);
        // Mostly ineligible: the weighted scan takes over, same ratios.
        let weights: Vec<u32> = (1..=100).collect();
        let table = LbTable::build(&LbPolicy::Random, &weights, &[]);
        let hist = histogram(&table, &[], |i| i == 0 || i == 2, 40_000);
        let mut want = vec![0; 100];
        want[0] = 1;
        want[2] = 3;
        assert!(chi_square(&hist, &want) < 10.83, "{hist:?}");
    }

    #[test]
    fn alias_table_is_exact() {
        // Each endpoint's mass over all buckets, in 2^32 units, is its
        // weight's share of n buckets.
        for weights in [vec![1u32, 2, 3, 4], vec![u32::MAX, 1, 1], vec![7, 7, 1]] {
            let slots = alias_table(&weights);
            let n = weights.len() as u128;
            let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
            let mut mass = vec![0u128; weights.len()];
            for (i, s) in slots.iter().enumerate() {
                mass[i] += u128::from(s.keep);
                mass[s.alias as usize] += (1u128 << 32) - u128::from(s.keep);
            }
            for (i, &w) in weights.iter().enumerate() {
                let want = ((u128::from(w) * n) << 32) / total;
                assert!(mass[i].abs_diff(want) <= n, "{weights:?}: {mass:?}");
            }
        }
    }

    fn addrs(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:8080", i / 256, i % 256))
            .collect()
    }

    /// For each of `keys` request keys, the address it lands on.
    fn placements(
        policy: &LbPolicy,
        addrs: &[String],
        weights: &[u32],
        keys: usize,
    ) -> Vec<String> {
        let key_bytes: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
        let table = LbTable::build(policy, weights, &key_bytes);
        let mut picker = Picker::new(0);
        (0..keys)
            .map(|k| {
                let h = hash_key(format!("user-{k}").as_bytes());
                let i = picker.pick(&table, &req(0, Some(h), all)).unwrap();
                addrs[i].clone()
            })
            .collect()
    }

    /// Removes endpoint 3 of 10 and counts (all keys moved, keys moved that
    /// were not on endpoint 3).
    fn removal(policy: &LbPolicy) -> (usize, usize) {
        let before_addrs = addrs(10);
        let mut after_addrs = before_addrs.clone();
        let removed = after_addrs.remove(3);
        let before = placements(policy, &before_addrs, &[1; 10], 10_000);
        let after = placements(policy, &after_addrs, &[1; 9], 10_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        let collateral = before
            .iter()
            .zip(&after)
            .filter(|(a, b)| a != b && **a != removed)
            .count();
        (moved, collateral)
    }

    #[test]
    fn ring_hash_is_sticky_and_consistent() {
        let addrs = addrs(10);
        let once = placements(&LbPolicy::RING_HASH, &addrs, &[1; 10], 1000);
        assert_eq!(
            once,
            placements(&LbPolicy::RING_HASH, &addrs, &[1; 10], 1000)
        );
        // Reordering the endpoints changes nothing: keys, not indices, count.
        let mut reversed = addrs.clone();
        reversed.reverse();
        assert_eq!(
            once,
            placements(&LbPolicy::RING_HASH, &reversed, &[1; 10], 1000)
        );
        // Removing 1 of 10 moves its 10% of keys, and more: Envoy's scale
        // gives each endpoint ceil(1024 / 9) = 114 hashes instead of
        // ceil(1024 / 10) = 103, and the new ones take about 8% of the other
        // keys (measured: 1706 moved, 827 of them not from the removed one;
        // a 100,000 minimum ring still moves 733). The price of building
        // Envoy's ring exactly; Maglev below moves far fewer.
        let (moved, collateral) = removal(&LbPolicy::RING_HASH);
        assert!(moved < 2000, "moved {moved} of 10000");
        assert!(collateral < 1000, "collateral {collateral}");
    }

    #[test]
    fn ring_hash_respects_weights() {
        let weights = [1, 2, 3, 4];
        let addrs = addrs(4);
        let policy = LbPolicy::RingHash {
            minimum_ring_size: 16_384,
            maximum_ring_size: MAX_RING_SIZE,
        };
        let placed = placements(&policy, &addrs, &weights, 20_000);
        for (i, &w) in weights.iter().enumerate() {
            let share = placed.iter().filter(|a| **a == addrs[i]).count() as f64 / 20_000.0;
            let want = f64::from(w) / 10.0;
            assert!((share - want).abs() < 0.2 * want, "endpoint {i}: {share}");
        }
        // Envoy's sizing: lightest endpoint gets ceil(0.1 × 16384) = 1639 hashes.
        let keys: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
        let table = LbTable::build(&policy, &weights, &keys);
        let Kind::RingHash(ring) = &table.kind else {
            unreachable!()
        };
        let count = |e| ring.endpoints.iter().filter(|&&x| x == e).count();
        assert_eq!((count(0), count(3)), (1639, 4 * 1639));
        assert!(ring.hashes.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn ring_hash_walks_past_ineligible() {
        let addrs = addrs(10);
        let keys: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
        let table = LbTable::build(&LbPolicy::RING_HASH, &[1; 10], &keys);
        let mut picker = Picker::new(0);
        let mut displaced = vec![0u32; 10];
        for k in 0..5000u64 {
            let h = hash_key(&k.to_le_bytes());
            let home = picker.pick(&table, &req(0, Some(h), all)).unwrap();
            let down = 4;
            let got = picker
                .pick(&table, &req(9, Some(h), |i| i != down))
                .unwrap();
            if home == down {
                assert_ne!(got, down);
                // Sticky while it is down, whatever the random number.
                assert_eq!(
                    got,
                    picker
                        .pick(&table, &req(77, Some(h), |i| i != down))
                        .unwrap()
                );
                displaced[got] += 1;
            } else {
                assert_eq!(got, home, "keys of other endpoints stay");
            }
        }
        // The down endpoint's keys spread over several others.
        assert!(
            displaced.iter().filter(|&&d| d > 0).count() >= 5,
            "{displaced:?}"
        );
        // No hash: random over the ring.
        let hist = histogram(&table, &[], all, 20_000);
        assert!(hist.iter().all(|&h| h > 1000), "{hist:?}");
    }

    #[test]
    fn maglev_is_sticky_and_nearly_consistent() {
        let addrs = addrs(10);
        let once = placements(&LbPolicy::MAGLEV, &addrs, &[1; 10], 1000);
        assert_eq!(once, placements(&LbPolicy::MAGLEV, &addrs, &[1; 10], 1000));
        // Maglev is only nearly minimally disruptive (paper §3.4, §5.3): a
        // few keys of the remaining endpoints move too (measured: 1010 moved,
        // 22 of them not from the removed one).
        let (moved, collateral) = removal(&LbPolicy::MAGLEV);
        assert!(moved < 2000, "moved {moved}");
        assert!(collateral < 300, "collateral {collateral}");
    }

    #[test]
    fn maglev_respects_weights() {
        let weights = [1, 2, 3, 4];
        let addrs = addrs(4);
        let keys: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
        let table = LbTable::build(&LbPolicy::MAGLEV, &weights, &keys);
        let Kind::Maglev { slots } = &table.kind else {
            unreachable!()
        };
        assert_eq!(slots.len(), 65_537);
        for (i, &w) in weights.iter().enumerate() {
            let share = slots.iter().filter(|&&s| s as usize == i).count() as f64 / 65_537.0;
            let want = f64::from(w) / 10.0;
            assert!((share - want).abs() < 0.01, "endpoint {i}: {share}");
        }
    }

    /// Envoy's fill loop as written (all endpoints every iteration, turns
    /// by `iteration × weight >= target`): the heap must give the same table.
    fn maglev_envoy_loop(weights: &[u32], keys: &[&[u8]], size: u64) -> Vec<u32> {
        let max_w = u64::from(*weights.iter().max().unwrap());
        let mut e: Vec<(u64, u64, u64, u64)> = keys
            .iter()
            .map(|k| (xxh64(k, 0) % size, xxh64(k, 1) % (size - 1) + 1, 0, 0))
            .collect();
        let mut table = vec![EMPTY_SLOT; size as usize];
        let mut filled = 0;
        let mut iteration = 1u64;
        while filled < size {
            for (i, entry) in e.iter_mut().enumerate() {
                if filled == size {
                    break;
                }
                let (offset, skip, next, target) = entry;
                if iteration * u64::from(weights[i]) < *target {
                    continue;
                }
                *target += max_w;
                let mut c = (*offset + *skip * *next) % size;
                while table[c as usize] != EMPTY_SLOT {
                    *next += 1;
                    c = (*offset + *skip * *next) % size;
                }
                table[c as usize] = i as u32;
                *next += 1;
                filled += 1;
            }
            iteration += 1;
        }
        table
    }

    #[test]
    fn maglev_fill_matches_envoys_loop() {
        let addrs = addrs(7);
        let keys: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
        for weights in [[1u32; 7], [1, 2, 3, 4, 5, 6, 7], [100, 1, 1, 30, 1, 7, 2]] {
            let table = build_maglev(&weights, &keys, 1009);
            assert_eq!(
                &*table,
                &maglev_envoy_loop(&weights, &keys, 1009)[..],
                "{weights:?}"
            );
        }
    }

    #[test]
    fn maglev_walks_past_ineligible() {
        let addrs = addrs(10);
        let keys: Vec<&[u8]> = addrs.iter().map(|a| a.as_bytes()).collect();
        let table = LbTable::build(&LbPolicy::MAGLEV, &[1; 10], &keys);
        let mut picker = Picker::new(0);
        let mut displaced = vec![0u32; 10];
        for k in 0..5000u64 {
            let h = hash_key(&k.to_le_bytes());
            let home = picker.pick(&table, &req(0, Some(h), all)).unwrap();
            let got = picker.pick(&table, &req(3, Some(h), |i| i != 2)).unwrap();
            if home == 2 {
                displaced[got] += 1;
            } else {
                assert_eq!(got, home);
            }
        }
        assert_eq!(displaced[2], 0);
        assert!(
            displaced.iter().filter(|&&d| d > 0).count() >= 8,
            "{displaced:?}"
        );
    }

    const POLICIES: [LbPolicy; 6] = [
        LbPolicy::RoundRobin,
        LbPolicy::LEAST_REQUEST,
        LbPolicy::LeastRequest { choice_count: 1000 },
        LbPolicy::Random,
        LbPolicy::RING_HASH,
        LbPolicy::MAGLEV,
    ];

    #[test]
    fn none_only_when_nothing_is_eligible() {
        let mut rng = Rng(42);
        for policy in POLICIES {
            for weights in [vec![1u32; 50], (1..=50).collect()] {
                let table = LbTable::build(&policy, &weights, &[]);
                let mut picker = Picker::new(rng.next());
                let active: Vec<u32> = (0..50).map(|i| i % 7).collect();
                for _ in 0..200 {
                    let (r, h) = (rng.next(), Some(rng.next()));
                    let mut mk = |eligible: &dyn Fn(usize) -> bool| {
                        let req = PickRequest {
                            hash: h,
                            eligible,
                            active: &active,
                            rand: r,
                        };
                        picker.pick(&table, &req)
                    };
                    assert_eq!(mk(&|_| false), None, "{policy:?}");
                    // A single eligible endpoint is always found, through
                    // every fallback.
                    let only = (r % 50) as usize;
                    let got = mk(&|i| i == only);
                    assert_eq!(got, Some(only), "{policy:?} {weights:?}");
                    let got = mk(&|_| true).unwrap();
                    assert!(got < 50);
                }
            }
        }
    }

    #[test]
    fn edge_inputs_do_not_panic() {
        let huge = [u32::MAX; 5];
        let skewed = [u32::MAX, 1, 0, u32::MAX - 1];
        // Skewed weights give the default ring its maximum of 8M entries
        // (as in Envoy), seconds in a debug build: a small maximum takes the
        // same path.
        let policies = POLICIES.map(|p| match p {
            LbPolicy::RingHash { .. } => LbPolicy::RingHash {
                minimum_ring_size: 1024,
                maximum_ring_size: 4096,
            },
            p => p,
        });
        for policy in policies.into_iter().chain([
            LbPolicy::LeastRequest { choice_count: 0 },
            LbPolicy::RingHash {
                minimum_ring_size: 0,
                maximum_ring_size: 0,
            },
            LbPolicy::RingHash {
                minimum_ring_size: u64::MAX,
                maximum_ring_size: 16,
            },
            LbPolicy::Maglev { table_size: 0 },
            LbPolicy::Maglev { table_size: 4 },
        ]) {
            // No endpoints.
            let table = LbTable::build(&policy, &[], &[]);
            assert!(table.is_empty());
            assert_eq!(Picker::new(0).pick(&table, &req(1, Some(2), all)), None);
            // Zero weights (read as 1), huge and skewed weights, short key
            // and active lists.
            for weights in [&[0u32, 0, 0][..], &huge, &skewed, &[7]] {
                let table = LbTable::build(&policy, weights, &[b"only-one-key"]);
                let mut picker = Picker::new(u64::MAX);
                for r in [0, 1, u64::MAX, 0x8000_0000_0000_0000] {
                    let got = picker.pick(
                        &table,
                        &PickRequest {
                            hash: Some(r),
                            eligible: all,
                            active: &[u32::MAX],
                            rand: r,
                        },
                    );
                    assert!(got.unwrap() < weights.len(), "{policy:?}");
                }
            }
        }
        // Zero weights rotate like equal ones.
        let table = LbTable::build(&LbPolicy::RoundRobin, &[0, 0, 0], &[]);
        assert_eq!(rr_picks(&table, 0, 4, all), [0, 1, 2, 0]);
    }

    #[test]
    fn build_clamps_what_validate_rejects() {
        let cases = [
            (LbPolicy::RoundRobin, true),
            (LbPolicy::Random, true),
            (LbPolicy::LEAST_REQUEST, true),
            (LbPolicy::LeastRequest { choice_count: 1 }, false),
            (LbPolicy::RING_HASH, true),
            (
                LbPolicy::RingHash {
                    minimum_ring_size: 0,
                    maximum_ring_size: 8,
                },
                false,
            ),
            (
                LbPolicy::RingHash {
                    minimum_ring_size: 9,
                    maximum_ring_size: 8,
                },
                false,
            ),
            (
                LbPolicy::RingHash {
                    minimum_ring_size: 1,
                    maximum_ring_size: MAX_RING_SIZE + 1,
                },
                false,
            ),
            (LbPolicy::MAGLEV, true),
            (LbPolicy::Maglev { table_size: 65_536 }, false),
            (LbPolicy::Maglev { table_size: 2 }, true),
            (
                LbPolicy::Maglev {
                    table_size: MAX_MAGLEV_TABLE_SIZE,
                },
                true,
            ),
            (
                LbPolicy::Maglev {
                    table_size: 5_000_077,
                },
                false,
            ),
        ];
        for (policy, ok) in cases {
            assert_eq!(policy.validate().is_ok(), ok, "{policy:?}");
        }
        let table = LbTable::build(
            &LbPolicy::Maglev {
                table_size: u64::MAX,
            },
            &[1, 1],
            &[],
        );
        let Kind::Maglev { slots } = &table.kind else {
            unreachable!()
        };
        assert_eq!(slots.len() as u64, MAX_MAGLEV_TABLE_SIZE);
        let table = LbTable::build(&LbPolicy::Maglev { table_size: 65_536 }, &[1, 1], &[]);
        let Kind::Maglev { slots } = &table.kind else {
            unreachable!()
        };
        assert_eq!(slots.len(), 65_537);
        let policy = LbPolicy::RingHash {
            minimum_ring_size: 100,
            maximum_ring_size: 10,
        };
        let table = LbTable::build(&policy, &[1, 1], &[]);
        let Kind::RingHash(ring) = &table.kind else {
            unreachable!()
        };
        assert_eq!(ring.hashes.len(), 10);
    }

    #[test]
    fn hash_key_is_xxh64_seed_0() {
        // The XXH64 reference values (xxhash's sanity tests).
        assert_eq!(hash_key(b""), 0xef46_db37_51d8_e999);
        assert_eq!(hash_key(b"abc"), 0x44bc_2cf5_ad77_0999);
    }

    #[test]
    fn tables_are_shareable_across_cores() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<LbTable>();
        send_sync::<std::sync::Arc<LbTable>>();
    }
}
