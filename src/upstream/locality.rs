//! Locality-aware failover: which locality tier of a cluster a request goes to.
//!
//! Pure. Istio's `localityLbSetting` failover orders endpoints by how close
//! their locality is to the proxy's own (same subzone, same zone, same
//! region, elsewhere) and hands that order to Envoy as priorities; Envoy then
//! spreads load over the priorities by their health ("priority levels" in
//! Envoy's load balancing docs, `LoadBalancerBase::recalculatePerPriorityState`).
//! Here a tier is that priority: [`tier`] places an endpoint, [`choose_tier`]
//! picks the tier for one request, and the balancer picks within it.

/// Envoy's default overprovisioning factor (140%): a tier keeps all its load
/// until fewer than 1/1.4 ≈ 71% of its endpoints are healthy.
pub const DEFAULT_OVERPROVISIONING: f64 = 1.4;

/// Number of tiers [`tier`] distinguishes.
pub const TIERS: usize = 4;

/// Where a workload runs: Kubernetes' `topology.kubernetes.io/region` and
/// `zone` labels and Istio's `topology.istio.io/subzone`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Locality {
    pub region: String,
    pub zone: String,
    pub subzone: String,
}

impl Locality {
    /// Parses Istio's `region/zone/subzone` form; missing parts are empty
    /// (`"us-east1"` is a region alone). Slashes past the second belong to
    /// the subzone.
    pub fn parse(s: &str) -> Locality {
        let mut parts = s.splitn(3, '/');
        let mut next = || parts.next().unwrap_or("").to_owned();
        Locality {
            region: next(),
            zone: next(),
            subzone: next(),
        }
    }

    /// Nothing known (no locality-aware balancing).
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.subzone.is_empty()
    }
}

impl std::fmt::Display for Locality {
    /// `region/zone/subzone` (empty when unknown).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return Ok(());
        }
        write!(f, "{}/{}/{}", self.region, self.zone, self.subzone)
    }
}

/// How far `ep` is from `own`: 0 same region, zone and subzone; 1 same
/// region and zone; 2 same region; 3 elsewhere. Parts compare as strings, so
/// an empty part matches only an empty part; a proxy that does not know its
/// own locality should not use locality tiers at all (Istio then disables
/// locality load balancing).
pub fn tier(own: &Locality, ep: &Locality) -> u8 {
    if own.region != ep.region {
        3
    } else if own.zone != ep.zone {
        2
    } else if own.subzone != ep.subzone {
        1
    } else {
        0
    }
}

/// Share of the load each tier gets, per Envoy's priority load: a tier's
/// health is `min(1, overprovisioning × healthy / total)` (0 when empty);
/// tier 0 takes its health's worth of the load, each next tier its health's
/// worth of what is left, and so on. When the healths add up to less than 1
/// they are first scaled to add up to 1 (Envoy's "normalized total
/// health"), so all the load still goes somewhere healthy.
///
/// `None` when no tier has a healthy endpoint: Envoy's panic mode, in which
/// the caller decides (Envoy then balances over all endpoints regardless of
/// health). Envoy works in whole percents; this does not round, so a tier
/// with 1 healthy endpoint of 1000 gets its 0.14% rather than 0%.
/// `healthy` counts above `total` count as `total`; an overprovisioning
/// factor that is not a positive finite number counts as the default.
pub fn tier_loads(
    healthy: [u32; TIERS],
    total: [u32; TIERS],
    overprovisioning: f64,
) -> Option<[f64; TIERS]> {
    let factor = if overprovisioning.is_finite() && overprovisioning > 0.0 {
        overprovisioning
    } else {
        DEFAULT_OVERPROVISIONING
    };
    let mut health = [0.0f64; TIERS];
    for (h, (&ok, &all)) in health.iter_mut().zip(healthy.iter().zip(&total)) {
        if all > 0 {
            *h = (factor * f64::from(ok.min(all)) / f64::from(all)).min(1.0);
        }
    }
    let total_health: f64 = health.iter().sum::<f64>().min(1.0);
    if total_health <= 0.0 {
        return None;
    }
    let mut left = 1.0f64;
    let mut loads = [0.0f64; TIERS];
    for (load, &h) in loads.iter_mut().zip(&health) {
        *load = (h / total_health).min(left);
        left -= *load;
    }
    Some(loads)
}

/// The tier for one request: [`tier_loads`] sampled with `rand` (uniform
/// u64 from the core's RNG). Only tiers with a healthy endpoint can come
/// out; `None` as for [`tier_loads`].
pub fn choose_tier(
    healthy: [u32; TIERS],
    total: [u32; TIERS],
    overprovisioning: f64,
    rand: u64,
) -> Option<u8> {
    let loads = tier_loads(healthy, total, overprovisioning)?;
    // 53 random bits: a uniform f64 in [0, 1).
    let r = (rand >> 11) as f64 / (1u64 << 53) as f64;
    let mut cumulative = 0.0;
    let mut last = None;
    for (t, &load) in loads.iter().enumerate() {
        if load <= 0.0 {
            continue;
        }
        cumulative += load;
        last = Some(t as u8);
        if r < cumulative {
            return last;
        }
    }
    // Rounding left the sum a hair under 1 and r fell in the gap.
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(region: &str, zone: &str, subzone: &str) -> Locality {
        Locality {
            region: region.into(),
            zone: zone.into(),
            subzone: subzone.into(),
        }
    }

    #[test]
    fn parse() {
        let cases = [
            (
                "us-east1/us-east1-b/rack7",
                loc("us-east1", "us-east1-b", "rack7"),
            ),
            ("us-east1/us-east1-b", loc("us-east1", "us-east1-b", "")),
            ("us-east1", loc("us-east1", "", "")),
            ("", loc("", "", "")),
            ("r//s", loc("r", "", "s")),
            ("r/z/s/extra", loc("r", "z", "s/extra")),
        ];
        for (input, want) in cases {
            assert_eq!(Locality::parse(input), want, "{input:?}");
        }
    }

    #[test]
    fn tiers() {
        let own = loc("r1", "z1", "s1");
        let cases = [
            (loc("r1", "z1", "s1"), 0),
            (loc("r1", "z1", "s2"), 1),
            (loc("r1", "z1", ""), 1),
            (loc("r1", "z2", "s1"), 2),
            (loc("r2", "z1", "s1"), 3),
            (loc("", "", ""), 3),
        ];
        for (ep, want) in cases {
            assert_eq!(tier(&own, &ep), want, "{ep:?}");
        }
        assert_eq!(tier(&loc("r", "", ""), &loc("r", "", "")), 0);
    }

    fn close(a: [f64; TIERS], b: [f64; TIERS]) -> bool {
        a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e-9)
    }

    #[test]
    fn loads_table() {
        let op = DEFAULT_OVERPROVISIONING;
        #[rustfmt::skip]
        let cases: [([u32; 4], [u32; 4], [f64; 4]); 9] = [
            // All healthy locally: everything stays local.
            ([10, 10, 10, 10], [10, 10, 10, 10], [1.0, 0.0, 0.0, 0.0]),
            // 80% healthy × 1.4 > 100%: overprovisioning keeps it all local.
            ([8, 10, 0, 0], [10, 10, 0, 0], [1.0, 0.0, 0.0, 0.0]),
            // 50% healthy: 70% local, the rest spills to tier 1.
            ([5, 10, 0, 0], [10, 10, 0, 0], [0.7, 0.3, 0.0, 0.0]),
            // Empty tiers are skipped: the spill-over lands on tier 2.
            ([5, 0, 4, 0], [10, 0, 4, 0], [0.7, 0.0, 0.3, 0.0]),
            // No local endpoints at all.
            ([0, 0, 0, 3], [0, 0, 0, 3], [0.0, 0.0, 0.0, 1.0]),
            // Spill over two tiers: 14% + 28% + the remaining 58%.
            ([1, 2, 10, 0], [10, 10, 10, 0], [0.14, 0.28, 0.58, 0.0]),
            // Total health 42% < 100%: normalised (Envoy's docs: {20, 30} -> {40, 60}).
            ([2, 0, 0, 1], [10, 10, 10, 10], [2.0 / 3.0, 0.0, 0.0, 1.0 / 3.0]),
            // healthy > total is read as total.
            ([20, 0, 0, 0], [10, 0, 0, 0], [1.0, 0.0, 0.0, 0.0]),
            // A tier of 1000 with one healthy endpoint keeps its 0.14%.
            ([1, 0, 10, 0], [1000, 0, 10, 0], [0.0014, 0.0, 0.9986, 0.0]),
        ];
        for (healthy, total, want) in cases {
            let got = tier_loads(healthy, total, op).unwrap();
            assert!(
                close(got, want),
                "{healthy:?}/{total:?}: {got:?} != {want:?}"
            );
            let sum: f64 = got.iter().sum();
            assert!((sum - 1.0).abs() < 1e-9);
        }
        // Nothing healthy anywhere (or nothing at all): panic mode is the caller's.
        assert_eq!(tier_loads([0; 4], [5, 5, 0, 0], op), None);
        assert_eq!(tier_loads([0; 4], [0; 4], op), None);
        // Overprovisioning 1.0: the health ratio itself.
        let got = tier_loads([8, 10, 0, 0], [10, 10, 0, 0], 1.0).unwrap();
        assert!(close(got, [0.8, 0.2, 0.0, 0.0]));
        // Nonsense factors fall back to 1.4.
        for bad in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            let got = tier_loads([5, 10, 0, 0], [10, 10, 0, 0], bad).unwrap();
            assert!(close(got, [0.7, 0.3, 0.0, 0.0]), "{bad}");
        }
    }

    #[test]
    fn choose_tier_follows_loads() {
        let (healthy, total) = ([5, 0, 4, 0], [10, 0, 4, 0]);
        // Boundaries: r = 0 is tier 0, r just under 0.7 tier 0, at 0.7 tier 2.
        assert_eq!(choose_tier(healthy, total, 1.4, 0), Some(0));
        assert_eq!(choose_tier(healthy, total, 1.4, u64::MAX), Some(2));
        let at = |f: f64| ((f * (1u64 << 53) as f64) as u64) << 11;
        assert_eq!(choose_tier(healthy, total, 1.4, at(0.69)), Some(0));
        assert_eq!(choose_tier(healthy, total, 1.4, at(0.71)), Some(2));
        // Sampled: about 70/30, never the empty tier 1.
        let mut counts = [0u32; 4];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            counts[choose_tier(healthy, total, 1.4, x).unwrap() as usize] += 1;
        }
        assert_eq!(counts[1] + counts[3], 0);
        assert!((6700..7300).contains(&counts[0]), "{counts:?}");
        assert_eq!(choose_tier([0; 4], [3; 4], 1.4, 7), None);
        // Everything healthy in one far tier: always that tier.
        assert_eq!(
            choose_tier([0, 0, 0, 2], [0, 0, 0, 2], 1.4, u64::MAX),
            Some(3)
        );
    }
}
