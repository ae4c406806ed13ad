//! The verdict on one endpoint as a pure state machine: probe outcomes in,
//! healthy/unhealthy transitions out. Mirrors Envoy's `ActiveHealthCheckSession`
//! (`handleSuccess` / `setUnhealthy`), minus the degraded state.

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Connected (TCP), or answered with an expected status (HTTP).
    Pass,
    /// A failure that counts toward `unhealthy_threshold`: connect refused or
    /// reset, timeout, a reply that is not HTTP/1, or a status listed in
    /// `retriable_statuses`. Envoy calls this failure type NETWORK.
    Fail,
    /// The endpoint answered and said no: an HTTP status outside the expected
    /// and retriable ranges. Envoy (failure type ACTIVE) ejects at once and
    /// ignores `unhealthy_threshold` for it, so that an application can take
    /// itself out of rotation (a draining pod answers 503) within one probe.
    Reject,
}

/// Whether the data plane may send traffic to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Healthy,
    Unhealthy,
}

/// Consecutive results and the verdict they led to.
///
/// A new endpoint starts `Healthy` and unchecked. Envoy instead marks a new host
/// as failing until its first check passes, which is harmless there because a
/// cluster is held "warming" until its first round of checks completes. Remora
/// has no warming: starting unhealthy would fail a new pod's first requests (or
/// a whole new cluster's) until a probe returns. Discovery already vouches for
/// the endpoint (Kubernetes publishes a pod's address only once its readiness
/// probe passed), so it stays usable and is probed at once; a failing new
/// endpoint is then ejected by the same thresholds as any other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracker {
    verdict: Verdict,
    checked: bool,
    consecutive_successes: u32,
    consecutive_failures: u32,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker::new()
    }
}

impl Tracker {
    /// Healthy and not yet checked (see the type's doc).
    pub fn new() -> Tracker {
        Tracker {
            verdict: Verdict::Healthy,
            checked: false,
            consecutive_successes: 0,
            consecutive_failures: 0,
        }
    }

    /// Records one probe's outcome; returns the new verdict if it changed.
    ///
    /// Thresholds of 0 act as 1 (the config validation rejects them; this
    /// keeps the machine total). Comparisons are `>=`, not Envoy's `==`, so
    /// that a threshold lowered by a reload below the current count still
    /// takes effect on the next probe instead of never.
    pub fn record(
        &mut self,
        outcome: Outcome,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<Verdict> {
        self.checked = true;
        match outcome {
            Outcome::Pass => {
                self.consecutive_failures = 0;
                self.consecutive_successes = self.consecutive_successes.saturating_add(1);
                if self.verdict == Verdict::Unhealthy
                    && self.consecutive_successes >= healthy_threshold.max(1)
                {
                    self.verdict = Verdict::Healthy;
                    return Some(Verdict::Healthy);
                }
            }
            Outcome::Fail | Outcome::Reject => {
                self.consecutive_successes = 0;
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                if self.verdict == Verdict::Healthy
                    && (outcome == Outcome::Reject
                        || self.consecutive_failures >= unhealthy_threshold.max(1))
                {
                    self.verdict = Verdict::Unhealthy;
                    return Some(Verdict::Unhealthy);
                }
            }
        }
        None
    }

    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Whether any probe has completed since the endpoint was added.
    pub fn checked(&self) -> bool {
        self.checked
    }

    pub fn consecutive_successes(&self) -> u32 {
        self.consecutive_successes
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }
}

#[cfg(test)]
mod tests {
    use super::Outcome::{Fail as F, Pass as P, Reject as R};
    use super::Verdict::{Healthy as H, Unhealthy as U};
    use super::*;

    /// (name, healthy_threshold, unhealthy_threshold, outcomes, verdict after each).
    type Case = (
        &'static str,
        u32,
        u32,
        &'static [Outcome],
        &'static [Verdict],
    );

    const CASES: &[Case] = &[
        (
            "passes keep a new endpoint healthy",
            2,
            3,
            &[P, P, P],
            &[H, H, H],
        ),
        (
            "unhealthy on the third consecutive failure",
            2,
            3,
            &[F, F, F, F],
            &[H, H, U, U],
        ),
        (
            "a pass in between restarts the failure count",
            2,
            3,
            &[F, F, P, F, F, F],
            &[H, H, H, H, H, U],
        ),
        (
            "healthy again on the second consecutive pass",
            2,
            1,
            &[F, P, P, P],
            &[U, U, H, H],
        ),
        (
            "a failure in between restarts the success count",
            2,
            1,
            &[F, P, F, P, P],
            &[U, U, U, U, H],
        ),
        (
            "a rejection ejects at once whatever the threshold (Envoy ACTIVE)",
            2,
            5,
            &[R, P, P],
            &[U, U, H],
        ),
        (
            "a rejection after failures ejects too",
            1,
            5,
            &[F, F, R, P],
            &[H, H, U, H],
        ),
        (
            "thresholds of 1 flip on every change",
            1,
            1,
            &[F, P, F, P],
            &[U, H, U, H],
        ),
        ("a threshold of 0 acts as 1", 0, 0, &[F, P], &[U, H]),
    ];

    #[test]
    fn threshold_table() {
        for (name, healthy, unhealthy, outcomes, verdicts) in CASES {
            assert_eq!(outcomes.len(), verdicts.len(), "{name}: malformed case");
            let mut t = Tracker::new();
            assert_eq!(t.verdict(), H, "{name}: starts healthy");
            assert!(!t.checked(), "{name}: starts unchecked");
            let mut before = t.verdict();
            for (i, (&o, &want)) in outcomes.iter().zip(verdicts.iter()).enumerate() {
                let changed = t.record(o, *healthy, *unhealthy);
                assert_eq!(t.verdict(), want, "{name}: after outcome {i} ({o:?})");
                // `record` reports exactly the changes.
                let expect_change = (want != before).then_some(want);
                assert_eq!(changed, expect_change, "{name}: change report at {i}");
                before = want;
            }
            assert!(t.checked(), "{name}");
        }
    }

    #[test]
    fn counts_are_consecutive_and_reset_by_the_other_outcome() {
        let mut t = Tracker::new();
        for _ in 0..4 {
            t.record(F, 2, 10);
        }
        assert_eq!(
            (t.consecutive_failures(), t.consecutive_successes()),
            (4, 0)
        );
        t.record(P, 2, 10);
        assert_eq!(
            (t.consecutive_failures(), t.consecutive_successes()),
            (0, 1)
        );
        t.record(R, 2, 10);
        assert_eq!(
            (t.consecutive_failures(), t.consecutive_successes()),
            (1, 0)
        );
    }

    #[test]
    fn a_lowered_threshold_applies_on_the_next_probe() {
        let mut t = Tracker::new();
        for _ in 0..4 {
            assert_eq!(t.record(F, 1, 10), None);
        }
        // A reload lowered unhealthy_threshold from 10 to 3 while 4 failures were counted.
        assert_eq!(t.record(F, 1, 3), Some(U));
    }
}
