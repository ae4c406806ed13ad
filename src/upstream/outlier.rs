//! Outlier detection (passive health): endpoints that keep failing real
//! requests are ejected for a while, Envoy's `outlier_detection` with the
//! fields Istio's DestinationRule sets.
//!
//! **Each core decides alone.** Envoy's workers report every result to the
//! main thread, which ejects for the whole process. Remora's cores share
//! nothing mutable, so each core counts the results of its own requests and
//! ejects on its own verdict. A failing endpoint fails on every core, so
//! every core ejects it, after `consecutive_*` failures of its own (at most
//! `cores ×` as many requests in all as Envoy would need). What is lost is
//! pooling evidence across cores for endpoints that fail rarely; what is won
//! is no cross-core traffic on the request path and no lock. Ejection here
//! is lazy: no timer, the state is brought up to date when the core asks.
//!
//! Errors are classified as Envoy does with
//! `split_external_local_origin_errors = false` (its default): a connect
//! failure, a reset or a timeout counts as a 5xx and a gateway error;
//! with the split on, they count only toward
//! `consecutive_local_origin_failures`.

use std::time::{Duration, Instant};

/// The validated `[cluster.outlier_detection]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutlierConfig {
    /// Consecutive 5xx (Envoy's consecutive_5xx, default 5); 0 = off.
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504 (Envoy's consecutive_gateway_failure); 0 = off
    /// (Envoy's default, enforcing_consecutive_gateway_failure = 0).
    pub consecutive_gateway_errors: u32,
    /// Consecutive connect failures, resets and timeouts, counted apart from
    /// 5xx only when `split_external_local_origin_errors` (default 5).
    pub consecutive_local_origin_failures: u32,
    pub split_external_local_origin_errors: bool,
    /// How often an ejected endpoint is reconsidered and an ejection
    /// multiplier decays (Envoy default 10 s).
    #[serde(serialize_with = "crate::duration::ser_duration")]
    pub interval: Duration,
    /// Ejection time = base × number of times ejected (Envoy default 30 s).
    #[serde(serialize_with = "crate::duration::ser_duration")]
    pub base_ejection_time: Duration,
    /// Upper bound of the ejection time (Envoy default max(300 s, base)).
    #[serde(serialize_with = "crate::duration::ser_duration")]
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at once (Envoy default
    /// 10); at least one endpoint can always be ejected, as in Envoy.
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx_errors: 5,
            consecutive_gateway_errors: 0,
            consecutive_local_origin_failures: 5,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

/// What one request to an endpoint came to, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result_ {
    /// A response with this status.
    Status(u16),
    /// Connect failure, reset or timeout: the failure originated here.
    LocalOrigin,
}

/// Per-endpoint state on one core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointOutlier {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local: u32,
    /// Times ejected, decaying by one per `interval` spent not ejected.
    multiplier: u32,
    ejected_until: Option<Instant>,
    /// When the multiplier last decayed (or the endpoint came back).
    last_decay: Option<Instant>,
    /// Ejections so far (for /clusters and metrics).
    pub ejections_total: u64,
}

/// Why an endpoint was ejected (Envoy's ejection types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ejection {
    Consecutive5xx,
    ConsecutiveGateway,
    ConsecutiveLocalOrigin,
}

impl EndpointOutlier {
    /// Whether the endpoint is ejected at `now`; brings the state up to date
    /// (an ejection that ran out ends; the multiplier decays).
    pub fn is_ejected(&mut self, cfg: &OutlierConfig, now: Instant) -> bool {
        if let Some(until) = self.ejected_until {
            if now < until {
                return true;
            }
            self.ejected_until = None;
            self.last_decay = Some(now);
        }
        if self.multiplier > 0 && !cfg.interval.is_zero() {
            let since = self.last_decay.get_or_insert(now);
            let periods =
                now.saturating_duration_since(*since).as_nanos() / cfg.interval.as_nanos();
            if periods > 0 {
                self.multiplier = self
                    .multiplier
                    .saturating_sub(periods.min(u32::MAX as u128) as u32);
                *since = now;
            }
        }
        false
    }

    /// Records a result. Returns the reason when this result should eject the
    /// endpoint (the caller checks `max_ejection_percent` and then calls
    /// [`EndpointOutlier::eject`]).
    pub fn record(&mut self, cfg: &OutlierConfig, result: Result_) -> Option<Ejection> {
        match result {
            Result_::Status(s) => {
                let five = (500..600).contains(&s);
                bump(&mut self.consecutive_5xx, five);
                bump(&mut self.consecutive_gateway, matches!(s, 502..=504));
                // A response means the connection worked: a local-origin success.
                self.consecutive_local = 0;
            }
            // Split: local-origin failures are counted apart and leave the
            // upstream's own (external) counts alone, as in Envoy.
            Result_::LocalOrigin if cfg.split_external_local_origin_errors => {
                bump(&mut self.consecutive_local, true);
            }
            // Envoy maps local-origin errors to 5xx/gateway errors (503/504).
            Result_::LocalOrigin => {
                bump(&mut self.consecutive_5xx, true);
                bump(&mut self.consecutive_gateway, true);
            }
        }
        let hit = |n: u32, limit: u32| limit > 0 && n >= limit;
        if hit(self.consecutive_5xx, cfg.consecutive_5xx_errors) {
            Some(Ejection::Consecutive5xx)
        } else if hit(self.consecutive_gateway, cfg.consecutive_gateway_errors) {
            Some(Ejection::ConsecutiveGateway)
        } else if hit(
            self.consecutive_local,
            if cfg.split_external_local_origin_errors {
                cfg.consecutive_local_origin_failures
            } else {
                0
            },
        ) {
            Some(Ejection::ConsecutiveLocalOrigin)
        } else {
            None
        }
    }

    /// Ejects for base × multiplier (capped), resetting the counts.
    pub fn eject(&mut self, cfg: &OutlierConfig, now: Instant) {
        self.multiplier = self.multiplier.saturating_add(1);
        let time = cfg
            .base_ejection_time
            .saturating_mul(self.multiplier)
            .min(cfg.max_ejection_time.max(cfg.base_ejection_time));
        self.ejected_until = Some(now + time);
        self.last_decay = None;
        self.consecutive_5xx = 0;
        self.consecutive_gateway = 0;
        self.consecutive_local = 0;
        self.ejections_total += 1;
    }

    /// The ejection's end, if ejected (without updating anything).
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }
}

fn bump(n: &mut u32, failed: bool) {
    *n = if failed { n.saturating_add(1) } else { 0 };
}

/// Whether one more of `total` endpoints may be ejected while `ejected` are:
/// at most `max_percent` of them, but always at least one (Envoy).
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    let cap = (total * max_percent.min(100) as usize) / 100;
    total > 0 && ejected < cap.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_5xx_errors: 3,
            consecutive_gateway_errors: 0,
            base_ejection_time: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            ..OutlierConfig::default()
        }
    }

    #[test]
    fn consecutive_5xx_ejects_and_a_success_resets() {
        let c = cfg();
        let mut e = EndpointOutlier::default();
        assert_eq!(e.record(&c, Result_::Status(500)), None);
        assert_eq!(e.record(&c, Result_::Status(503)), None);
        assert_eq!(e.record(&c, Result_::Status(200)), None, "a success resets");
        assert_eq!(e.record(&c, Result_::Status(502)), None);
        assert_eq!(e.record(&c, Result_::LocalOrigin), None);
        assert_eq!(
            e.record(&c, Result_::Status(500)),
            Some(Ejection::Consecutive5xx)
        );
        // 4xx are the client's problem: they reset the count.
        let mut e = EndpointOutlier::default();
        for s in [503, 503, 404, 503, 503] {
            assert_eq!(e.record(&c, Result_::Status(s)), None);
        }
    }

    #[test]
    fn gateway_errors_and_local_origin_split() {
        let c = OutlierConfig {
            consecutive_5xx_errors: 0,
            consecutive_gateway_errors: 2,
            ..cfg()
        };
        let mut e = EndpointOutlier::default();
        assert_eq!(e.record(&c, Result_::Status(500)), None);
        assert_eq!(e.record(&c, Result_::Status(502)), None);
        assert_eq!(
            e.record(&c, Result_::LocalOrigin),
            Some(Ejection::ConsecutiveGateway)
        );
        let split = OutlierConfig {
            consecutive_5xx_errors: 2,
            consecutive_local_origin_failures: 2,
            split_external_local_origin_errors: true,
            ..cfg()
        };
        let mut e = EndpointOutlier::default();
        // A response (even a 5xx) proves the connection: local count resets;
        // a local failure leaves the 5xx count alone.
        assert_eq!(e.record(&split, Result_::LocalOrigin), None);
        assert_eq!(e.record(&split, Result_::Status(500)), None);
        assert_eq!(e.record(&split, Result_::LocalOrigin), None);
        assert_eq!(
            e.record(&split, Result_::Status(500)),
            Some(Ejection::Consecutive5xx)
        );
        let mut e = EndpointOutlier::default();
        assert_eq!(e.record(&split, Result_::LocalOrigin), None);
        assert_eq!(
            e.record(&split, Result_::LocalOrigin),
            Some(Ejection::ConsecutiveLocalOrigin)
        );
    }

    #[test]
    fn ejection_time_grows_with_each_ejection_and_decays() {
        let c = cfg();
        let t0 = Instant::now();
        let mut e = EndpointOutlier::default();
        e.eject(&c, t0);
        assert!(e.is_ejected(&c, t0 + Duration::from_secs(29)));
        assert!(!e.is_ejected(&c, t0 + Duration::from_secs(30)));
        // Ejected again at once: twice as long.
        let t1 = t0 + Duration::from_secs(30);
        e.eject(&c, t1);
        assert!(e.is_ejected(&c, t1 + Duration::from_secs(59)));
        assert!(!e.is_ejected(&c, t1 + Duration::from_secs(60)));
        // Two intervals healthy: the multiplier decays to 0, so the next
        // ejection is base time again.
        let t2 = t1 + Duration::from_secs(60);
        assert!(!e.is_ejected(&c, t2 + Duration::from_secs(20)));
        e.eject(&c, t2 + Duration::from_secs(20));
        assert!(!e.is_ejected(&c, t2 + Duration::from_secs(50)));
        assert_eq!(e.ejections_total, 3);
        // Capped by max_ejection_time.
        let capped = OutlierConfig {
            max_ejection_time: Duration::from_secs(40),
            ..c
        };
        let mut e = EndpointOutlier::default();
        for _ in 0..5 {
            e.eject(&capped, t0);
        }
        assert!(!e.is_ejected(&capped, t0 + Duration::from_secs(40)));
    }

    #[test]
    fn ejection_cap() {
        assert!(may_eject(0, 3, 10), "always at least one");
        assert!(!may_eject(1, 3, 10));
        assert!(may_eject(1, 3, 100));
        assert!(!may_eject(3, 3, 100));
        assert!(may_eject(4, 10, 50));
        assert!(!may_eject(5, 10, 50));
        assert!(!may_eject(0, 0, 100));
    }
}
