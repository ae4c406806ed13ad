//! Fault injection for one route (Istio `HTTPFaultInjection`, Envoy's
//! `envoy.filters.http.fault`): delay some requests, answer some with an error
//! status instead of forwarding them. Used to test how callers cope with a slow
//! or failing service without touching the service.
//!
//! The decision is pure: the caller draws two random numbers from its core's
//! RNG and acts on the [`FaultDecision`]:
//!
//! ```text
//! decide(a, b) ─ delay? ─ sleep(delay), flag DI ─┐   (before the upstream is picked)
//!              └───────────────────────────────── abort? ─ local reply `status`, flag FI
//!                                                        └ else forward as usual
//! ```
//!
//! As in Envoy, the delay comes first and the abort (if drawn) is answered after
//! it, and the two are drawn independently, so with 10 % delay and 5 % abort
//! 0.5 % of requests are delayed and then aborted. Envoy's route timeout starts
//! in its router filter, after the fault filter, so an injected delay does not
//! count against the route's `timeout`; the caller should keep that order.

use std::time::Duration;

use super::Percent;

/// Envoy response flag for a request delayed by fault injection.
pub const FLAG_DELAY_INJECTED: &str = "DI";
/// Envoy response flag for a request aborted by fault injection.
pub const FLAG_FAULT_INJECTED: &str = "FI";

/// Delay `duration` on `percent` of requests (Istio `fault.delay.fixedDelay`
/// and `fault.delay.percentage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayFault {
    /// Positive (validation refuses "0s").
    pub duration: Duration,
    pub percent: Percent,
}

/// Answer `status` on `percent` of requests (Istio `fault.abort.httpStatus` and
/// `fault.abort.percentage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortFault {
    /// 200..=599 (Istio's and Envoy's range for `http_status`).
    pub status: u16,
    pub percent: Percent,
}

/// A route's fault injection; validation guarantees at least one part is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultPolicy {
    pub delay: Option<DelayFault>,
    pub abort: Option<AbortFault>,
}

/// What to do to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    /// Wait this long first (flag `DI`).
    pub delay: Option<Duration>,
    /// Then answer with this status instead of forwarding (flag `FI`).
    pub abort: Option<u16>,
}

impl FaultPolicy {
    /// Draws the faults for one request: `rand_a` decides the delay, `rand_b`
    /// the abort (independent draws, as Envoy evaluates each percentage with
    /// its own random value). Any uniformly random u64s will do.
    pub fn decide(&self, rand_a: u64, rand_b: u64) -> FaultDecision {
        FaultDecision {
            delay: self
                .delay
                .filter(|d| d.percent.hit(rand_a))
                .map(|d| d.duration),
            abort: self
                .abort
                .filter(|a| a.percent.hit(rand_b))
                .map(|a| a.status),
        }
    }
}

impl FaultDecision {
    /// Nothing to inject: forward as usual.
    pub fn is_none(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }

    /// The Envoy response flags this decision sets, in Envoy's order.
    pub fn flags(&self) -> impl Iterator<Item = &'static str> {
        [
            self.delay.map(|_| FLAG_DELAY_INJECTED),
            self.abort.map(|_| FLAG_FAULT_INJECTED),
        ]
        .into_iter()
        .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pct(p: f64) -> Percent {
        Percent::from_percent(p).unwrap()
    }

    #[test]
    fn decide_table() {
        let two_s = Duration::from_secs(2);
        let both = FaultPolicy {
            delay: Some(DelayFault {
                duration: two_s,
                percent: pct(10.0),
            }),
            abort: Some(AbortFault {
                status: 503,
                percent: pct(5.0),
            }),
        };
        let delay_only = FaultPolicy {
            abort: None,
            ..both
        };
        let abort_all = FaultPolicy {
            delay: None,
            abort: Some(AbortFault {
                status: 418,
                percent: Percent::HUNDRED,
            }),
        };
        let never = FaultPolicy {
            delay: Some(DelayFault {
                duration: two_s,
                percent: Percent::ZERO,
            }),
            abort: Some(AbortFault {
                status: 500,
                percent: Percent::ZERO,
            }),
        };
        // 10 % = residues 0..100_000 of 1e6; 5 % = 0..50_000.
        let cases = [
            (&both, 0, 0, Some(two_s), Some(503)),
            (&both, 99_999, 49_999, Some(two_s), Some(503)),
            (&both, 100_000, 0, None, Some(503)),
            (&both, 0, 50_000, Some(two_s), None),
            (&both, 100_000, 50_000, None, None),
            // The draws are independent: a value that delays need not abort.
            (&both, 60_000, 60_000, Some(two_s), None),
            (&both, 1_000_000, 1_000_000, Some(two_s), Some(503)),
            (&both, u64::MAX, u64::MAX, None, None),
            (&delay_only, 0, 0, Some(two_s), None),
            (&abort_all, u64::MAX, u64::MAX, None, Some(418)),
            (&abort_all, 0, 0, None, Some(418)),
            (&never, 0, 0, None, None),
        ];
        for (i, (policy, a, b, delay, abort)) in cases.into_iter().enumerate() {
            assert_eq!(
                policy.decide(a, b),
                FaultDecision { delay, abort },
                "case {i}"
            );
        }
    }

    #[test]
    fn shares_over_a_full_cycle() {
        let p = FaultPolicy {
            delay: Some(DelayFault {
                duration: Duration::from_millis(1),
                percent: pct(10.0),
            }),
            abort: Some(AbortFault {
                status: 503,
                percent: pct(5.0),
            }),
        };
        let (mut delayed, mut aborted) = (0, 0);
        for r in 0..1_000_000u64 {
            let d = p.decide(r, r.wrapping_mul(7_919) % 1_000_000);
            delayed += usize::from(d.delay.is_some());
            aborted += usize::from(d.abort.is_some());
        }
        assert_eq!((delayed, aborted), (100_000, 50_000));
    }

    #[test]
    fn flags() {
        let f = |d: FaultDecision| d.flags().collect::<Vec<_>>();
        assert!(FaultDecision::default().is_none());
        assert_eq!(f(FaultDecision::default()), Vec::<&str>::new());
        let both = FaultDecision {
            delay: Some(Duration::from_secs(1)),
            abort: Some(503),
        };
        assert!(!both.is_none());
        assert_eq!(f(both), ["DI", "FI"]);
        assert_eq!(
            f(FaultDecision {
                abort: Some(503),
                ..FaultDecision::default()
            }),
            ["FI"]
        );
    }
}
