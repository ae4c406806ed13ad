//! Local rate limiting with a token bucket (Envoy's `local_ratelimit` HTTP and
//! network filters): per route or virtual host for requests, per listener for
//! accepted connections. Each request (or connection) takes one token; with
//! none left it is refused (HTTP 429 with flag `RL`, or the connection closed;
//! both the caller's job).
//!
//! # One bucket per core, not per process
//!
//! Envoy keeps one bucket per filter config shared by all its worker threads:
//! an atomic counter that every request compare-and-swaps, refilled by a timer
//! on the main thread, so its limit is per Envoy process. Remora's cores share
//! nothing mutable: a shared counter would be written by every core on every
//! request, moving its cache line between cores each time (the contention a
//! thread-per-core design exists to avoid), and it would be the first mutable
//! state shared between cores. So each core owns a [`TokenBucket`] holding its
//! share, built by [`TokenBucket::for_core`]:
//!
//! ```text
//! per-core max_tokens      = ceil(tokens / cores)
//! per-core tokens_per_fill = ceil(tokens_per_fill / cores)
//! ```
//!
//! Rounding up (as Envoy does for its `local_cluster_rate_limit` share,
//! `ceil(tokens_per_fill * share)`) keeps every core's share at least one
//! token; the sum over cores exceeds the configured value by less than `cores`
//! tokens. What a user gets:
//! - When load spreads evenly over the cores (SO_REUSEPORT hashes connections
//!   across the per-core listeners), the whole proxy admits about the
//!   configured rate.
//! - A connection stays on one core for its life, so a hot core limits earlier:
//!   one busy keep-alive client, or a few connections that hash to the same
//!   core, get `ceil(tokens / cores)` per fill, not `tokens`. The
//!   `x-ratelimit-*` headers report the core's bucket, which is what that
//!   client actually sees.
//!
//! The bucket refills lazily: each [`TokenBucket::try_take`] first adds the
//! fills due since the last one, at the same discrete instants Envoy's fill
//! timer would (every `fill_interval` after the first use), so there is no
//! timer per bucket and an idle bucket costs nothing. Like Envoy's, a bucket
//! starts full.
//!
//! A core keeps its buckets in a [`CoreBuckets`] (in `Shard`): created on
//! first use, found by virtual host and route name ([`RequestBuckets`]) or by
//! listener address, so a reload that keeps a limit keeps its tokens; a limit
//! whose values change gets a fresh, full bucket on its next use.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Envoy refuses shorter fill intervals ("local rate limit token bucket fill
/// timer must be >= 50ms"): a faster timer costs more than it smooths.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// Response headers of the IETF RateLimit header draft 03, as Envoy's
/// `enable_x_ratelimit_headers: DRAFT_VERSION_03` names them.
pub const HEADER_LIMIT: &str = "x-ratelimit-limit";
pub const HEADER_REMAINING: &str = "x-ratelimit-remaining";
pub const HEADER_RESET: &str = "x-ratelimit-reset";

/// Envoy response flag for a request refused by a rate limit.
pub const FLAG_RATE_LIMITED: &str = "RL";

/// A validated token bucket as configured, for the whole proxy (Envoy's
/// `TokenBucket`: `max_tokens`, `tokens_per_fill`, `fill_interval`). Fields are
/// private so that a bucket with no tokens or a too-short interval cannot exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucketConfig {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
}

/// Which value of a token bucket is wrong (the caller knows where it was written).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BucketConfigError {
    #[error("tokens must be within 1..={}, got {0}", u32::MAX)]
    Tokens(i64),
    #[error("tokens_per_fill must be within 1..={}, got {0}", u32::MAX)]
    TokensPerFill(i64),
    #[error("fill_interval must be at least 50ms (Envoy's minimum; a faster refill costs more than it smooths), got {0:?}")]
    FillInterval(Duration),
}

impl TokenBucketConfig {
    /// Checks every value and reports every problem. `tokens_per_fill` may
    /// exceed `tokens` (each fill then just tops the bucket up), as in Envoy.
    pub fn new(
        tokens: i64,
        tokens_per_fill: i64,
        fill_interval: Duration,
    ) -> Result<TokenBucketConfig, Vec<BucketConfigError>> {
        let mut errors = Vec::new();
        let max_tokens = u32::try_from(tokens).ok().filter(|&n| n > 0);
        if max_tokens.is_none() {
            errors.push(BucketConfigError::Tokens(tokens));
        }
        let per_fill = u32::try_from(tokens_per_fill).ok().filter(|&n| n > 0);
        if per_fill.is_none() {
            errors.push(BucketConfigError::TokensPerFill(tokens_per_fill));
        }
        if fill_interval < MIN_FILL_INTERVAL {
            errors.push(BucketConfigError::FillInterval(fill_interval));
        }
        match (max_tokens, per_fill) {
            (Some(max_tokens), Some(tokens_per_fill)) if errors.is_empty() => {
                Ok(TokenBucketConfig {
                    max_tokens,
                    tokens_per_fill,
                    fill_interval,
                })
            }
            _ => Err(errors),
        }
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    pub fn tokens_per_fill(&self) -> u32 {
        self.tokens_per_fill
    }

    pub fn fill_interval(&self) -> Duration {
        self.fill_interval
    }
}

/// A route's or virtual host's request rate limit (Envoy's HTTP
/// `local_ratelimit` per-route config). A route's own limit replaces its
/// virtual host's (Envoy resolves the most specific per-filter config), and
/// each has its own bucket: the virtual host's is shared by all of its routes
/// that set none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRateLimit {
    pub bucket: TokenBucketConfig,
    /// Add the `x-ratelimit-*` headers to responses (Envoy's
    /// `enable_x_ratelimit_headers`, off by default there too).
    pub response_headers: bool,
}

impl LocalRateLimit {
    /// The `x-ratelimit-*` headers for a response to a request that took
    /// `decision` (allowed or refused: Envoy adds them to its 429 too), or
    /// `None` when `response_headers` is off.
    ///
    /// - limit: the core's bucket size (see the module doc: the bucket the
    ///   client's connection is served by);
    /// - remaining: tokens left after this request;
    /// - reset: whole seconds until the next fill, rounded up. Envoy truncates,
    ///   which reports 0 for every fill interval under a second, and a client
    ///   that retries after "0" seconds is refused again.
    pub fn headers(&self, decision: &Decision) -> Option<[(&'static str, String); 3]> {
        self.response_headers.then(|| {
            let reset = decision.reset_after.as_nanos().div_ceil(1_000_000_000);
            [
                (HEADER_LIMIT, decision.limit.to_string()),
                (HEADER_REMAINING, decision.remaining.to_string()),
                (HEADER_RESET, reset.to_string()),
            ]
        })
    }
}

/// The outcome of one [`TokenBucket::try_take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// A token was taken: let the request (connection) through.
    pub allowed: bool,
    /// Tokens left in this core's bucket after the call.
    pub remaining: u32,
    /// This core's bucket size (`x-ratelimit-limit`).
    pub limit: u32,
    /// Until the next fill adds tokens.
    pub reset_after: Duration,
}

/// One core's bucket. Plain data, `&mut self`: owned by one core's state and
/// never shared (put it in a `Cell`/`RefCell` there; no borrow spans an await).
#[derive(Debug, Clone)]
pub struct TokenBucket {
    max_tokens: u32,
    tokens_per_fill: u32,
    fill_interval: Duration,
    tokens: u32,
    /// The last fill instant (a multiple of `fill_interval` after the first
    /// use); `None` until the first call, which starts the clock with a full
    /// bucket, so building a bucket needs no clock.
    last_fill: Option<Instant>,
}

impl TokenBucket {
    /// This core's share of `cfg` when `cores` cores each run one bucket (see
    /// the module doc); `cores == 0` is taken as 1.
    pub fn for_core(cfg: &TokenBucketConfig, cores: usize) -> TokenBucket {
        let cores = u32::try_from(cores.max(1)).unwrap_or(u32::MAX);
        let max_tokens = cfg.max_tokens.div_ceil(cores);
        TokenBucket {
            max_tokens,
            tokens_per_fill: cfg.tokens_per_fill.div_ceil(cores),
            fill_interval: cfg.fill_interval,
            tokens: max_tokens,
            last_fill: None,
        }
    }

    /// The whole configured bucket, for a caller that really has one instance
    /// (and for tests): `for_core(cfg, 1)`.
    pub fn new(cfg: &TokenBucketConfig) -> TokenBucket {
        TokenBucket::for_core(cfg, 1)
    }

    pub fn max_tokens(&self) -> u32 {
        self.max_tokens
    }

    pub fn tokens_per_fill(&self) -> u32 {
        self.tokens_per_fill
    }

    /// Adds the fills due by `now`, then takes one token if there is one.
    /// `now` should come from a monotonic clock; an `Instant` earlier than a
    /// previous call's counts as no time passed (never a panic, never a refill).
    pub fn try_take(&mut self, now: Instant) -> Decision {
        let last = self.refill(now);
        let allowed = self.tokens > 0;
        if allowed {
            self.tokens -= 1;
        }
        Decision {
            allowed,
            remaining: self.tokens,
            limit: self.max_tokens,
            reset_after: self
                .fill_interval
                .saturating_sub(now.saturating_duration_since(last)),
        }
    }

    /// Brings `tokens` and `last_fill` up to `now`; returns the last fill instant.
    fn refill(&mut self, now: Instant) -> Instant {
        let Some(last) = self.last_fill else {
            self.last_fill = Some(now);
            self.tokens = self.max_tokens;
            return now;
        };
        let elapsed = now.saturating_duration_since(last);
        if elapsed < self.fill_interval {
            return last;
        }
        // Validation keeps the interval at 50 ms or more; `max(1)` only keeps
        // a hand-made zero from dividing by zero.
        let interval = self.fill_interval.as_nanos().max(1);
        let elapsed = elapsed.as_nanos();
        let fills = elapsed / interval;
        let tokens = u128::from(self.tokens)
            .saturating_add(fills.saturating_mul(u128::from(self.tokens_per_fill)))
            .min(u128::from(self.max_tokens));
        // Within u32: capped at max_tokens.
        self.tokens = tokens as u32;
        // Keep the fill phase: the last fill was `elapsed % interval` ago.
        let since = elapsed % interval;
        let since = Duration::new(
            (since / 1_000_000_000) as u64,
            (since % 1_000_000_000) as u32,
        );
        let last = now.checked_sub(since).unwrap_or(now);
        self.last_fill = Some(last);
        last
    }
}

/// A core's bucket for one configured limit, with the config it was built
/// from: a bucket is kept as long as its limit stays the same, so a reload
/// that keeps a limit keeps its tokens (waiting for a reload does not refill
/// anyone's bucket), and a changed limit starts over with a full bucket of
/// the new size.
#[derive(Debug, Clone)]
struct Kept {
    cfg: TokenBucketConfig,
    bucket: TokenBucket,
}

impl Kept {
    fn new(cfg: &TokenBucketConfig, cores: usize) -> Kept {
        Kept {
            cfg: *cfg,
            bucket: TokenBucket::for_core(cfg, cores),
        }
    }

    /// Takes a token under `cfg`, first replacing the bucket if `cfg` is not
    /// the config it was built from.
    fn take(&mut self, cfg: &TokenBucketConfig, cores: usize, now: Instant) -> Decision {
        if self.cfg != *cfg {
            *self = Kept::new(cfg, cores);
        }
        self.bucket.try_take(now)
    }
}

/// One core's buckets by key (a listener's address, a route's name), each
/// created on first use and kept while its limit stays the same (a changed
/// limit gets a fresh, full bucket). Plain data owned by one core, like
/// [`TokenBucket`].
#[derive(Debug, Clone)]
pub struct Buckets<K> {
    map: HashMap<K, Kept>,
}

impl<K> Default for Buckets<K> {
    fn default() -> Buckets<K> {
        Buckets {
            map: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash> Buckets<K> {
    /// Takes a token from `key`'s bucket for limit `cfg` (this core's share
    /// of it, see [`TokenBucket::for_core`]); the bucket is created full on
    /// first use. Looks up by a borrowed key (`&str` for `String`): no
    /// allocation once the bucket exists.
    pub fn try_take<Q>(
        &mut self,
        key: &Q,
        cfg: &TokenBucketConfig,
        cores: usize,
        now: Instant,
    ) -> Decision
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if let Some(kept) = self.map.get_mut(key) {
            return kept.take(cfg, cores, now);
        }
        let mut kept = Kept::new(cfg, cores);
        let d = kept.bucket.try_take(now);
        self.map.insert(key.to_owned(), kept);
        d
    }

    /// Drops the buckets whose key `keep` rejects (limits a reload removed).
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.map.retain(|k, _| keep(k));
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// One core's request buckets: per virtual host (its `rate_limit`, shared by
/// its routes that set none) and per route of it (a route's own), by name, so
/// that they survive reloads that keep the names. Nested by virtual host so a
/// lookup borrows both names instead of building a key.
#[derive(Debug, Clone, Default)]
pub struct RequestBuckets {
    hosts: HashMap<String, HostBuckets>,
}

#[derive(Debug, Clone, Default)]
struct HostBuckets {
    /// The virtual host's own bucket.
    host: Option<Kept>,
    /// Routes' own buckets, by route name.
    routes: Buckets<String>,
}

impl RequestBuckets {
    /// Takes a token from the bucket of `virtual_host` (`route` None) or of
    /// its route `route`, for limit `cfg`.
    pub fn try_take(
        &mut self,
        virtual_host: &str,
        route: Option<&str>,
        cfg: &TokenBucketConfig,
        cores: usize,
        now: Instant,
    ) -> Decision {
        let host = match self.hosts.get_mut(virtual_host) {
            Some(h) => h,
            None => self.hosts.entry(virtual_host.to_owned()).or_default(),
        };
        match route {
            Some(r) => host.routes.try_take(r, cfg, cores, now),
            None => host
                .host
                .get_or_insert_with(|| Kept::new(cfg, cores))
                .take(cfg, cores, now),
        }
    }

    /// Keeps the buckets for which `keep(virtual_host, route)` holds (`route`
    /// None: the virtual host's own); drops virtual hosts left with none.
    pub fn retain(&mut self, mut keep: impl FnMut(&str, Option<&str>) -> bool) {
        self.hosts.retain(|vh, b| {
            if b.host.is_some() && !keep(vh, None) {
                b.host = None;
            }
            b.routes.retain(|r| keep(vh, Some(r)));
            b.host.is_some() || !b.routes.is_empty()
        });
    }

    /// Buckets held (virtual hosts' and routes').
    pub fn len(&self) -> usize {
        self.hosts
            .values()
            .map(|h| usize::from(h.host.is_some()) + h.routes.len())
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every rate-limit bucket of one core (kept in `Shard`, borrowed only
/// between awaits).
#[derive(Debug, Clone, Default)]
pub struct CoreBuckets {
    /// Request limits of virtual hosts and routes.
    pub requests: RequestBuckets,
    /// Connection limits of `[[listener]]`s, by listen address (stable across
    /// reloads, like the listener's identity in `shard::Origin`).
    pub connections: Buckets<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(tokens: i64, per_fill: i64, interval_ms: u64) -> TokenBucketConfig {
        TokenBucketConfig::new(tokens, per_fill, Duration::from_millis(interval_ms)).unwrap()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn config_checks_every_value() {
        assert!(TokenBucketConfig::new(1, 1, ms(50)).is_ok());
        assert!(TokenBucketConfig::new(i64::from(u32::MAX), 1_000_000, ms(50)).is_ok());
        // Refilling more than the bucket holds is allowed (Envoy does too).
        assert!(TokenBucketConfig::new(10, 100, ms(1000)).is_ok());
        assert_eq!(
            TokenBucketConfig::new(0, -1, ms(49)),
            Err(vec![
                BucketConfigError::Tokens(0),
                BucketConfigError::TokensPerFill(-1),
                BucketConfigError::FillInterval(ms(49)),
            ])
        );
        assert_eq!(
            TokenBucketConfig::new(1 << 32, 1, Duration::ZERO),
            Err(vec![
                BucketConfigError::Tokens(1 << 32),
                BucketConfigError::FillInterval(Duration::ZERO),
            ])
        );
        assert_eq!(
            BucketConfigError::FillInterval(ms(10)).to_string(),
            "fill_interval must be at least 50ms (Envoy's minimum; a faster refill costs more than it smooths), got 10ms"
        );
    }

    #[test]
    fn burst_exhaustion_and_refill() {
        let t0 = Instant::now();
        // 3 tokens, 2 back every 100 ms.
        let mut b = TokenBucket::new(&cfg(3, 2, 100));
        let take = |b: &mut TokenBucket, at: u64| {
            let d = b.try_take(t0 + ms(at));
            (d.allowed, d.remaining, d.reset_after)
        };
        // Starts full: the burst is the bucket size.
        assert_eq!(take(&mut b, 0), (true, 2, ms(100)));
        assert_eq!(take(&mut b, 10), (true, 1, ms(90)));
        assert_eq!(take(&mut b, 20), (true, 0, ms(80)));
        assert_eq!(take(&mut b, 30), (false, 0, ms(70)));
        assert_eq!(take(&mut b, 99), (false, 0, ms(1)));
        // First fill at 100 ms: +2.
        assert_eq!(take(&mut b, 100), (true, 1, ms(100)));
        assert_eq!(take(&mut b, 150), (true, 0, ms(50)));
        assert_eq!(take(&mut b, 199), (false, 0, ms(1)));
        // Fills are discrete and keep their phase (every 100 ms from t0).
        assert_eq!(take(&mut b, 250), (true, 1, ms(50)));
        // A long idle time fills to the cap, not beyond.
        assert_eq!(take(&mut b, 10_000), (true, 2, ms(100)));
        assert_eq!(take(&mut b, 10_001), (true, 1, ms(99)));
        assert_eq!(take(&mut b, 10_002), (true, 0, ms(98)));
        assert_eq!(take(&mut b, 10_003), (false, 0, ms(97)));
        // Several fills due at once add up (3 fills × 2, capped at 3).
        assert_eq!(take(&mut b, 10_350), (true, 2, ms(50)));
    }

    #[test]
    fn refused_calls_take_nothing_and_time_going_back_is_harmless() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut b = TokenBucket::new(&cfg(1, 1, 1000));
        assert!(b.try_take(t0).allowed);
        for i in 0..1000 {
            assert!(!b.try_take(t0 + ms(i)).allowed);
        }
        // An earlier Instant: no refill, no panic.
        let d = b.try_take(t0 - Duration::from_secs(5));
        assert_eq!(
            (d.allowed, d.remaining, d.reset_after),
            (false, 0, ms(1000))
        );
        assert!(b.try_take(t0 + ms(1000)).allowed);
    }

    #[test]
    fn rate_over_time_matches_tokens_per_fill() {
        // 100 per second, asked 1000 times a second for 10 s: the burst of 100,
        // then 100 at each of the 9 fills (1 s, 2 s, ... 9 s).
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&cfg(100, 100, 1000));
        let allowed = (0..10_000u64)
            .filter(|&i| b.try_take(t0 + ms(i)).allowed)
            .count();
        assert_eq!(allowed, 100 + 9 * 100);
    }

    #[test]
    fn per_core_split_rounds_up() {
        // (tokens, per_fill, cores) → (per-core max, per-core fill)
        let cases = [
            (100, 100, 1, 100, 100),
            (100, 100, 2, 50, 50),
            (100, 10, 3, 34, 4),
            (100, 100, 0, 100, 100),
            (1, 1, 8, 1, 1),
            (7, 3, 1024, 1, 1),
            (u32::MAX, u32::MAX, 2, 1 << 31, 1 << 31),
        ];
        for (tokens, per_fill, cores, max, fill) in cases {
            let b = TokenBucket::for_core(&cfg(tokens.into(), per_fill.into(), 1000), cores);
            assert_eq!(
                (b.max_tokens(), b.tokens_per_fill()),
                (max, fill),
                "{tokens}/{per_fill} on {cores} cores"
            );
        }
        // Evenly spread load: the cores together admit about the configured
        // burst (rounding adds less than one token per core).
        let t0 = Instant::now();
        let c = cfg(100, 100, 1000);
        let mut cores: Vec<TokenBucket> = (0..3).map(|_| TokenBucket::for_core(&c, 3)).collect();
        let allowed = (0..300)
            .filter(|i| cores[i % 3].try_take(t0).allowed)
            .count();
        assert_eq!(allowed, 102);
        // A hot core: all requests on one core are limited at its share.
        let mut hot = TokenBucket::for_core(&c, 3);
        let allowed = (0..300).filter(|_| hot.try_take(t0).allowed).count();
        assert_eq!(allowed, 34);
    }

    #[test]
    fn header_values() {
        let on = LocalRateLimit {
            bucket: cfg(100, 100, 1000),
            response_headers: true,
        };
        let off = LocalRateLimit {
            response_headers: false,
            ..on
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::for_core(&on.bucket, 2);
        let d = b.try_take(t0 + ms(1));
        assert_eq!(off.headers(&d), None);
        let h = |d: &Decision| {
            on.headers(d)
                .unwrap()
                .map(|(n, v)| format!("{n}: {v}"))
                .to_vec()
        };
        assert_eq!(
            h(&d),
            [
                "x-ratelimit-limit: 50",
                "x-ratelimit-remaining: 49",
                "x-ratelimit-reset: 1"
            ]
        );
        // Reset rounds up: 0.3 s left → 1; exactly on a fill → the full interval.
        let d = b.try_take(t0 + ms(701));
        assert_eq!(d.reset_after, ms(300));
        assert_eq!(h(&d)[2], "x-ratelimit-reset: 1");
        let slow = LocalRateLimit {
            bucket: cfg(5, 5, 60_000),
            response_headers: true,
        };
        let mut b = TokenBucket::new(&slow.bucket);
        for _ in 0..5 {
            b.try_take(t0);
        }
        let refused = b.try_take(t0 + ms(1500));
        assert!(!refused.allowed);
        assert_eq!(
            slow.headers(&refused).unwrap().map(|(_, v)| v),
            ["5", "0", "59"]
        );
    }

    #[test]
    fn keyed_buckets_are_lazy_kept_and_reset_on_change() {
        let t0 = Instant::now();
        let two = cfg(2, 2, 60_000);
        let mut b: Buckets<String> = Buckets::default();
        assert!(b.is_empty());
        // Created full on first use, one bucket per key.
        assert!(b.try_take("a", &two, 1, t0).allowed);
        assert!(b.try_take("a", &two, 1, t0).allowed);
        assert!(!b.try_take("a", &two, 1, t0).allowed);
        assert!(b.try_take("b", &two, 1, t0).allowed);
        assert_eq!(b.len(), 2);
        // The same limit (a reload that keeps it): still empty.
        assert!(!b.try_take("a", &cfg(2, 2, 60_000), 1, t0).allowed);
        // A changed limit: a fresh bucket of the new size.
        let three = cfg(3, 3, 60_000);
        let d = b.try_take("a", &three, 1, t0);
        assert_eq!((d.allowed, d.remaining, d.limit), (true, 2, 3));
        // The per-core share applies.
        let d = b.try_take("c", &cfg(10, 10, 1000), 4, t0);
        assert_eq!((d.limit, d.remaining), (3, 2));
        b.retain(|k| k != "b");
        assert_eq!(b.len(), 2);
        // Addresses as keys (listeners).
        let mut l: Buckets<SocketAddr> = Buckets::default();
        let addr: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let one = cfg(1, 1, 60_000);
        assert!(l.try_take(&addr, &one, 1, t0).allowed);
        assert!(!l.try_take(&addr, &one, 1, t0).allowed);
    }

    #[test]
    fn request_buckets_by_virtual_host_and_route() {
        let t0 = Instant::now();
        let one = cfg(1, 1, 60_000);
        let mut b = RequestBuckets::default();
        // The host's bucket and each route's own bucket are distinct, also
        // from a route that happens to share the host's name.
        assert!(b.try_take("vh", None, &one, 1, t0).allowed);
        assert!(!b.try_take("vh", None, &one, 1, t0).allowed);
        assert!(b.try_take("vh", Some("r"), &one, 1, t0).allowed);
        assert!(!b.try_take("vh", Some("r"), &one, 1, t0).allowed);
        assert!(b.try_take("vh", Some("vh"), &one, 1, t0).allowed);
        // Same route name in another virtual host: another bucket.
        assert!(b.try_take("other", Some("r"), &one, 1, t0).allowed);
        assert_eq!(b.len(), 4);
        // A reload without the host's own limit and without route `r` of vh.
        b.retain(|vh, r| !(vh == "vh" && matches!(r, None | Some("r"))));
        assert_eq!(b.len(), 2);
        assert!(b.try_take("vh", Some("r"), &one, 1, t0).allowed, "fresh");
        assert!(!b.try_take("vh", Some("vh"), &one, 1, t0).allowed, "kept");
        b.retain(|_, _| false);
        assert!(b.is_empty());
    }
}
