//! Traffic and security policies as plain values with pure decisions: fault
//! injection ([`fault`]), local rate limiting ([`ratelimit`]), Istio's
//! AuthorizationPolicy ([`authz`]) and the helpers of
//! request mirroring ([`Percent`], [`shadow_host`]; the validated
//! `MirrorPolicy` sits with the route in `http::route`, next to the cluster it
//! names).
//!
//! ```text
//! config ─ http::route_config / config ─ validate ─► FaultPolicy, LocalRateLimit,
//!                                                     MirrorPolicy, TokenBucketConfig
//! per request (the L7 path, per core):
//!   fault.decide(rng, rng)           ─► FaultDecision { delay, abort }   flags DI / FI
//!   bucket.try_take(now)             ─► ratelimit::Decision              429 + flag RL
//!   mirror.should_mirror(rng), shadow_host(authority)
//! per accepted connection (L4):  listener bucket.try_take(now) ─► close when refused
//! per inbound connection / request: authz.evaluate(input) ─► Verdict   close / 403 + flag RBAC
//! ```
//!
//! Nothing here reads a clock or a random source, touches a socket or shares
//! state between cores: the caller passes the core's `Instant` and random
//! numbers, so every decision is table-tested with chosen values. This module
//! imports nothing else from the crate; the config and the request path import it.

pub mod authz;
pub mod fault;
pub mod ratelimit;

/// A share of requests in parts per million: Envoy's `FractionalPercent` with
/// the `MILLION` denominator, which is what Istio translates a
/// `percentage.value` (a float from 0 to 100) into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Percent {
    ppm: u32,
}

const MILLION: u32 = 1_000_000;

impl Percent {
    pub const ZERO: Percent = Percent { ppm: 0 };
    pub const HUNDRED: Percent = Percent { ppm: MILLION };

    /// From a percentage 0..=100 (`None` outside it, and for NaN). Istio
    /// truncates `value * 10000`; rounding instead keeps a value such as 0.29
    /// (2899.99… ppm in binary floating point) at the 2900 ppm the user wrote.
    pub fn from_percent(percent: f64) -> Option<Percent> {
        if !(0.0..=100.0).contains(&percent) {
            return None;
        }
        // In range, so the product is within 0..=1e6 and the cast is exact.
        Some(Percent {
            ppm: (percent * 10_000.0).round() as u32,
        })
    }

    pub fn parts_per_million(self) -> u32 {
        self.ppm
    }

    /// Whether a request with this `random` value falls in the share. Envoy's
    /// `ProtobufPercentHelper::evaluateFractionalPercent`: `random % denominator
    /// < numerator`. With a 64-bit uniform `random` the modulo bias is below
    /// 1e-13, so 0 % never hits and 100 % always does.
    pub fn hit(self, random: u64) -> bool {
        random % u64::from(MILLION) < u64::from(self.ppm)
    }
}

/// The Host (or `:authority`) for a mirrored request: `-shadow` appended to
/// the host part, before any port, as Envoy's router does for
/// `request_mirror_policies` (`shadowAppendedHost`), so the shadow service's
/// logs and routing can tell mirrored traffic apart:
///
/// `foo.com` → `foo.com-shadow`, `foo.com:8080` → `foo.com-shadow:8080`,
/// `[::1]:80` → `[::1]-shadow:80`, `[::1]` → `[::1]-shadow`.
///
/// The port is found like Envoy's `HeaderUtility::getPortStart`: the last ':'
/// that is not inside a bracketed IPv6 literal (RFC 3986 §3.2.2 requires the
/// brackets in an authority). An empty authority (an HTTP/1.0 request without
/// Host) stays empty rather than becoming a bare "-shadow", which no server
/// would route; the caller then sends the mirror without a Host, as the
/// original came.
pub fn shadow_host(authority: &[u8]) -> Vec<u8> {
    const SUFFIX: &[u8] = b"-shadow";
    if authority.is_empty() {
        return Vec::new();
    }
    let colon = authority.iter().rposition(|&b| b == b':');
    let bracket = authority.iter().rposition(|&b| b == b']');
    let port_start = match (colon, bracket) {
        (Some(c), Some(b)) if b > c => None,
        (c, _) => c,
    };
    let split = port_start.unwrap_or(authority.len());
    let (host, port) = authority.split_at(split);
    let mut out = Vec::with_capacity(authority.len() + SUFFIX.len());
    out.extend_from_slice(host);
    out.extend_from_slice(SUFFIX);
    out.extend_from_slice(port);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_from_float_and_hits() {
        let ok = [
            (0.0, 0),
            (100.0, 1_000_000),
            (5.0, 50_000),
            (0.0001, 1),
            (0.29, 2_900),
            (12.5, 125_000),
        ];
        for (p, ppm) in ok {
            assert_eq!(
                Percent::from_percent(p).map(Percent::parts_per_million),
                Some(ppm),
                "{p}"
            );
        }
        for bad in [-0.1, 100.01, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(Percent::from_percent(bad), None, "{bad}");
        }
        let five = Percent::from_percent(5.0).unwrap();
        let cases = [
            (Percent::ZERO, 0, false),
            (Percent::ZERO, u64::MAX, false),
            (Percent::HUNDRED, 0, true),
            (Percent::HUNDRED, 999_999, true),
            (Percent::HUNDRED, u64::MAX, true),
            (five, 0, true),
            (five, 49_999, true),
            (five, 50_000, false),
            (five, 999_999, false),
            (five, 1_000_000, true),
            (five, 1_049_999, true),
        ];
        for (p, r, want) in cases {
            assert_eq!(p.hit(r), want, "{p:?} {r}");
        }
        // Over one full cycle of residues, exactly ppm of them hit.
        let hits = (0..1_000_000u64).filter(|&r| five.hit(r)).count();
        assert_eq!(hits, 50_000);
    }

    #[test]
    fn shadow_host_cases() {
        let cases: &[(&str, &str)] = &[
            ("foo.com", "foo.com-shadow"),
            ("foo.com:8080", "foo.com-shadow:8080"),
            ("reviews", "reviews-shadow"),
            ("10.0.0.1:80", "10.0.0.1-shadow:80"),
            ("[::1]:80", "[::1]-shadow:80"),
            ("[::1]", "[::1]-shadow"),
            ("[fe80::1%25eth0]:8443", "[fe80::1%25eth0]-shadow:8443"),
            // An empty port keeps its colon (Envoy's getPortStart finds it too).
            ("foo.com:", "foo.com-shadow:"),
            // Malformed: no closing bracket; the last ':' is taken as the port.
            ("[::1", "[:-shadow:1"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(
                String::from_utf8(shadow_host(input.as_bytes())).unwrap(),
                *want,
                "{input}"
            );
        }
    }
}
