//! The router: virtual hosts by Host, routes by path/method/headers/query, and
//! what to do with a match. Plain data built once per config (see
//! `route_config` for the TOML side) and matched per request without allocating.
//!
//! ```text
//! request ─ host (port stripped, lowercase) ─► VirtualHost      exact (HashMap)
//!                                                                 > *.suffix (longest first)
//!                                                                 > prefix* (longest first)
//!                                                                 > "*"
//!         ─ path, method, headers, query ───► first Route that matches, in order
//!                                                 └─ RouteAction: Forward | Redirect | DirectResponse
//! ```
//!
//! Traffic policies hang where Envoy and Istio put them: `rate_limit` on a route
//! or a virtual host (the route's wins, [`Matched::rate_limit`]); `fault` and
//! `mirror` on a [`Forward`] only (Istio rejects a fault with a redirect or a
//! direct response; Envoy's mirror policies belong to the forwarding action).
//! Their decisions are the pure functions of `crate::policy`.
//!
//! The domain precedence is Envoy's. Within a virtual host the first matching route
//! wins; exact-path routes are indexed by path, so a lookup scans only the routes
//! with other path matchers that come before the best exact candidate.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Duration;

use regex::bytes::Regex;

use super::rewrite::HeaderOps;
use super::RequestParts;
use crate::policy::fault::FaultPolicy;
use crate::policy::ratelimit::LocalRateLimit;
use crate::policy::Percent;

/// FNV-1a: keys are short host names and paths from the config; lookups from
/// untrusted input cannot add keys, so collisions cannot be forced into a
/// growing chain, and SipHash's DoS resistance buys nothing here.
#[derive(Default)]
pub(crate) struct Fnv(u64);

impl Hasher for Fnv {
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv>>;

/// A virtual-host domain pattern (Envoy semantics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainPattern {
    /// "api.example.com" (stored lowercase).
    Exact(Box<[u8]>),
    /// "*.example.com" or "*-api.example.com": the rest after "*" (stored
    /// lowercase); the wildcard must match at least one byte.
    Suffix(Box<[u8]>),
    /// "api.*": the part before "*"; the wildcard must match at least one byte.
    Prefix(Box<[u8]>),
    /// "*": any host, including none.
    Any,
}

impl DomainPattern {
    /// Parses a domain from the config. Ports are not allowed: the router
    /// matches the Host without its port.
    pub fn parse(domain: &str) -> Result<DomainPattern, &'static str> {
        let d = domain.to_ascii_lowercase();
        if d == "*" {
            return Ok(DomainPattern::Any);
        }
        let stars = d.matches('*').count();
        let body = d.trim_start_matches('*').trim_end_matches('*');
        if body.is_empty() {
            return Err("a domain must not be empty");
        }
        if !body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':')
        }) {
            return Err("a domain may contain only letters, digits, '-', '.', '_' and one leading or trailing '*'");
        }
        // A colon outside an IPv6 literal is a port.
        if !body.starts_with('[') && body.contains(':') {
            return Err(
                "a domain must not contain a port (the Host's port is ignored when matching)",
            );
        }
        match (stars, d.starts_with('*'), d.ends_with('*')) {
            (0, _, _) => Ok(DomainPattern::Exact(body.as_bytes().into())),
            (1, true, false) => Ok(DomainPattern::Suffix(body.as_bytes().into())),
            (1, false, true) => Ok(DomainPattern::Prefix(body.as_bytes().into())),
            _ => Err("a wildcard '*' may appear only once, at the start or the end of a domain"),
        }
    }
}

/// How a route matches the path (without the query).
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// Must match the whole path (compiled anchored).
    Regex(Regex),
}

impl PathMatch {
    #[inline]
    fn matches(&self, path: &[u8]) -> bool {
        match self {
            PathMatch::Exact(p) => path == &**p,
            PathMatch::Prefix(p) => path.starts_with(p),
            PathMatch::Regex(r) => r.is_match(path),
        }
    }
}

/// How a header (or query parameter) value must look.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// Present, any value.
    Present,
    Exact(Box<[u8]>),
    /// Must match the whole value (compiled anchored).
    Regex(Regex),
}

impl ValueMatch {
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Present => true,
            ValueMatch::Exact(v) => value == &**v,
            ValueMatch::Regex(r) => r.is_match(value),
        }
    }
}

/// A header condition: true if any field of that name matches (or, inverted,
/// if none does, so an inverted `Present` means "absent").
#[derive(Debug, Clone)]
pub struct HeaderMatcher {
    /// Lowercase.
    pub name: Box<[u8]>,
    pub value: ValueMatch,
    pub invert: bool,
}

/// A query parameter condition on the raw (not percent-decoded) query: true
/// if any parameter of that name matches.
#[derive(Debug, Clone)]
pub struct QueryMatcher {
    pub name: Box<[u8]>,
    pub value: ValueMatch,
}

/// Everything a request must satisfy for a route to apply.
#[derive(Debug, Clone)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// Empty means any method. Methods are case-sensitive (RFC 9110 §9.1).
    pub methods: Vec<Box<[u8]>>,
    pub headers: Vec<HeaderMatcher>,
    pub query: Vec<QueryMatcher>,
}

impl RouteMatch {
    /// All conditions except the path, which the caller has checked.
    fn matches_rest<R: RequestParts + ?Sized>(&self, req: &R) -> bool {
        if !self.methods.is_empty() {
            let m = req.method();
            if !self.methods.iter().any(|x| &**x == m) {
                return false;
            }
        }
        for h in &self.headers {
            let found = req.header_values(&h.name).any(|v| h.value.matches(v));
            if found == h.invert {
                return false;
            }
        }
        if !self.query.is_empty() {
            let query = req.query().unwrap_or_default();
            for q in &self.query {
                let found = query_params(query).any(|(n, v)| n == &*q.name && q.value.matches(v));
                if !found {
                    return false;
                }
            }
        }
        true
    }
}

/// `a=1&b&c=` → (a, 1), (b, ""), (c, "").
fn query_params(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|&b| b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &p[p.len()..]),
        })
}

/// A cluster by name and by its index in the cluster list the routes were
/// validated against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    pub name: Box<str>,
    pub index: usize,
}

/// Where a forwarded request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterChoice {
    Single(ClusterRef),
    /// Relative weights; at least one is positive, their sum fits in u32.
    Weighted(Vec<(ClusterRef, u32)>),
}

impl ClusterChoice {
    /// Picks a cluster; `random` is any uniformly random u32 (the caller's RNG,
    /// so tests can choose it). Each cluster gets weight/total of the requests.
    pub fn pick(&self, random: u32) -> &ClusterRef {
        match self {
            ClusterChoice::Single(c) => c,
            ClusterChoice::Weighted(entries) => {
                let total: u64 = entries.iter().map(|(_, w)| u64::from(*w)).sum();
                // Multiply-shift maps the random value onto [0, total) without the
                // division; total == 0 is prevented by validation but still safe.
                let mut point = (u64::from(random) * total) >> 32;
                for (c, w) in entries {
                    let w = u64::from(*w);
                    if point < w {
                        return c;
                    }
                    point -= w;
                }
                &entries[entries.len() - 1].0
            }
        }
    }
}

/// Conditions under which a request is retried (Envoy `retry_on` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    /// "5xx": any 5xx response, or no response at all (connect failure, reset).
    pub server_error: bool,
    /// "gateway-error": 502, 503, 504.
    pub gateway_error: bool,
    /// "connect-failure": the upstream connection could not be made.
    pub connect_failure: bool,
    /// "reset": the upstream reset or closed before a response head.
    pub reset: bool,
    /// "retriable-status-codes": the statuses in
    /// [`RetryPolicy::retriable_status_codes`].
    pub retriable_status_codes: bool,
    /// gRPC statuses in a response head (a trailers-only answer): Envoy's
    /// `retry_on` "cancelled" (1), "deadline-exceeded" (4),
    /// "resource-exhausted" (8), "unavailable" (14) and "internal" (13).
    pub grpc: GrpcRetryOn,
}

/// The gRPC statuses a policy retries, by their `retry_on` names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GrpcRetryOn {
    pub cancelled: bool,
    pub deadline_exceeded: bool,
    pub resource_exhausted: bool,
    pub unavailable: bool,
    pub internal: bool,
}

impl GrpcRetryOn {
    /// Sets the flag `name` names; false if it names none.
    pub fn set(&mut self, name: &str) -> bool {
        let flag = match name {
            "cancelled" => &mut self.cancelled,
            "deadline-exceeded" => &mut self.deadline_exceeded,
            "resource-exhausted" => &mut self.resource_exhausted,
            "unavailable" => &mut self.unavailable,
            "internal" => &mut self.internal,
            _ => return false,
        };
        *flag = true;
        true
    }

    pub fn contains(self, status: u8) -> bool {
        match status {
            1 => self.cancelled,
            4 => self.deadline_exceeded,
            8 => self.resource_exhausted,
            13 => self.internal,
            14 => self.unavailable,
            _ => false,
        }
    }
}

/// Why an upstream attempt failed, for the retry decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    ConnectFailure,
    Reset,
    Status(u16),
    /// A gRPC status in the response head.
    Grpc(u8),
    /// The per-try timeout fired (retried under 5xx and gateway-error, as Envoy does).
    PerTryTimeout,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retry_on: RetryOn,
    /// Retries after the first attempt.
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Statuses retried under `retriable-status-codes` (any, not only 5xx).
    pub retriable_status_codes: Vec<u16>,
    /// A retry avoids the endpoints already tried when another one exists.
    pub previous_hosts: bool,
    /// Non-idempotent requests are retried too (after they may have reached
    /// the upstream); off by default, as RFC 9112 §9.3.1 asks of proxies.
    pub retry_non_idempotent: bool,
}

impl RetryPolicy {
    /// Whether this failure may be retried (the caller also checks the budget
    /// `attempt < num_retries` and that the request body can be replayed).
    pub fn retriable(&self, failure: AttemptFailure) -> bool {
        let r = self.retry_on;
        match failure {
            AttemptFailure::ConnectFailure => {
                r.connect_failure || r.server_error || r.gateway_error
            }
            AttemptFailure::Reset => r.reset || r.server_error,
            AttemptFailure::PerTryTimeout => r.server_error || r.gateway_error,
            AttemptFailure::Status(s) => {
                (r.server_error && (500..600).contains(&s))
                    || (r.gateway_error && matches!(s, 502..=504))
                    || (r.retriable_status_codes && self.retriable_status_codes.contains(&s))
            }
            AttemptFailure::Grpc(g) => r.grpc.contains(g),
        }
    }

    /// Fully jittered exponential backoff before retry number `retry` (0-based):
    /// uniform in [0, min(base · 2^retry, max)], `random` supplied by the caller.
    pub fn backoff(&self, retry: u32, random: u64) -> Duration {
        let base = self.backoff_base.as_micros() as u64;
        let max = self.backoff_max.as_micros() as u64;
        let cap = base
            .checked_shl(retry.min(63))
            .filter(|c| c >> retry.min(63) == base)
            .unwrap_or(u64::MAX)
            .min(max);
        Duration::from_micros(random % (cap + 1))
    }
}

/// Send a copy of requests to another cluster and ignore its answers (Istio
/// `mirror` + `mirrorPercentage`, Envoy `request_mirror_policies`). The copy
/// carries the Host from [`crate::policy::shadow_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorPolicy {
    pub cluster: ClusterRef,
    /// Share of requests mirrored; Istio's default (no percentage) is 100 %.
    pub percent: Percent,
}

impl MirrorPolicy {
    /// Whether to mirror a request; `random` from the core's RNG.
    pub fn should_mirror(&self, random: u64) -> bool {
        self.percent.hit(random)
    }
}

/// Forward to an upstream cluster.
#[derive(Debug, Clone)]
pub struct Forward {
    pub clusters: ClusterChoice,
    /// Replaces the matched path prefix (only with a prefix path match).
    pub prefix_rewrite: Option<Box<[u8]>>,
    pub host_rewrite: Option<Box<[u8]>>,
    /// Whole-request timeout; `None` disables it (streams, WebSockets).
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// Request body limit for this route (0 = none); `None`: the virtual
    /// host's, else `[http] max_request_body_bytes`.
    pub max_request_body_bytes: Option<u64>,
    /// Delays and aborts to inject before forwarding.
    pub fault: Option<FaultPolicy>,
    pub mirror: Option<MirrorPolicy>,
}

/// Answer with a redirect (RFC 9110 §15.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
    pub scheme: Option<Box<str>>,
    pub host: Option<Box<[u8]>>,
    pub port: Option<u16>,
    /// Replaces the whole path.
    pub path: Option<Box<[u8]>>,
    /// Replaces the matched prefix (only with a prefix path match).
    pub prefix_rewrite: Option<Box<[u8]>>,
    pub strip_query: bool,
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Forward),
    Redirect(Redirect),
    /// Answer locally with this status and body.
    DirectResponse {
        status: u16,
        body: Box<[u8]>,
    },
}

#[derive(Debug, Clone)]
pub struct Route {
    /// For logs and stats; defaults to the position ("vhost/3").
    pub name: Box<str>,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Request rate limit of this route, with its own bucket; replaces the
    /// virtual host's. Applies to every action, local replies included (an
    /// Envoy per-route limit runs before the router does).
    pub rate_limit: Option<LocalRateLimit>,
}

impl Route {
    /// The path and query after `prefix_rewrite` (of a forward or a redirect),
    /// written into `scratch` (reused per connection); `None` if not rewritten.
    pub fn rewritten_path<'s, R: RequestParts + ?Sized>(
        &self,
        req: &R,
        scratch: &'s mut Vec<u8>,
    ) -> Option<&'s [u8]> {
        let rewrite = match &self.action {
            RouteAction::Forward(f) => f.prefix_rewrite.as_deref()?,
            RouteAction::Redirect(r) => r.prefix_rewrite.as_deref()?,
            RouteAction::DirectResponse { .. } => return None,
        };
        let PathMatch::Prefix(prefix) = &self.matcher.path else {
            return None;
        };
        let pq = req.path_and_query();
        let rest = pq.get(prefix.len()..)?;
        scratch.clear();
        scratch.extend_from_slice(rewrite);
        scratch.extend_from_slice(rest);
        Some(scratch)
    }

    /// The Location for a redirect action, written into `out`. `request_scheme`
    /// is how the request arrived ("http"/"https").
    pub fn redirect_location<R: RequestParts + ?Sized>(
        &self,
        req: &R,
        request_scheme: &str,
        out: &mut Vec<u8>,
    ) -> bool {
        let RouteAction::Redirect(r) = &self.action else {
            return false;
        };
        out.extend_from_slice(r.scheme.as_deref().unwrap_or(request_scheme).as_bytes());
        out.extend_from_slice(b"://");
        match (&r.host, r.port) {
            (None, None) => out.extend_from_slice(req.authority().unwrap_or_default()),
            (host, port) => {
                out.extend_from_slice(
                    host.as_deref()
                        .unwrap_or_else(|| req.host().unwrap_or_default()),
                );
                if let Some(port) = port {
                    out.extend_from_slice(format!(":{port}").as_bytes());
                }
            }
        }
        let mut scratch = Vec::new();
        let (path, query) = if let Some(p) = &r.path {
            (&**p, req.query())
        } else if let Some(pq) = self.rewritten_path(req, &mut scratch) {
            let q = pq.iter().position(|&b| b == b'?');
            match q {
                Some(i) => (&pq[..i], Some(&pq[i + 1..])),
                None => (pq, None),
            }
        } else {
            (req.path(), req.query())
        };
        out.extend_from_slice(path);
        if let (false, Some(q)) = (r.strip_query, query) {
            out.push(b'?');
            out.extend_from_slice(q);
        }
        true
    }
}

/// Exact-path index of one virtual host's routes (see the module doc).
#[derive(Debug, Clone, Default)]
struct RouteIndex {
    exact: FnvMap<Box<[u8]>, Vec<u32>>,
    /// Routes with prefix or regex path matchers, in order.
    scan: Vec<u32>,
}

#[derive(Debug, Clone)]
pub struct VirtualHost {
    pub name: Box<str>,
    pub domains: Vec<DomainPattern>,
    pub routes: Vec<Route>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
    /// Request body limit for routes that set none (0 = none); `None`:
    /// `[http] max_request_body_bytes`.
    pub max_request_body_bytes: Option<u64>,
    /// Request rate limit for routes that set none: one bucket for all of them.
    pub rate_limit: Option<LocalRateLimit>,
    index: RouteIndex,
}

impl VirtualHost {
    pub fn new(
        name: impl Into<Box<str>>,
        domains: Vec<DomainPattern>,
        routes: Vec<Route>,
        request_headers: HeaderOps,
        response_headers: HeaderOps,
    ) -> VirtualHost {
        let mut index = RouteIndex::default();
        for (i, r) in routes.iter().enumerate() {
            match &r.matcher.path {
                PathMatch::Exact(p) => index.exact.entry(p.clone()).or_default().push(i as u32),
                _ => index.scan.push(i as u32),
            }
        }
        VirtualHost {
            name: name.into(),
            domains,
            routes,
            request_headers,
            response_headers,
            max_request_body_bytes: None,
            rate_limit: None,
            index,
        }
    }

    /// The first route that matches `req`.
    pub fn match_route<R: RequestParts + ?Sized>(&self, req: &R) -> Option<&Route> {
        let path = req.path();
        let exact = self.index.exact.get(path).and_then(|candidates| {
            candidates.iter().copied().find(|&i| {
                self.routes
                    .get(i as usize)
                    .is_some_and(|r| r.matcher.matches_rest(req))
            })
        });
        let limit = exact.unwrap_or(u32::MAX);
        let scanned = self
            .index
            .scan
            .iter()
            .copied()
            .take_while(|&i| i < limit)
            .find(|&i| {
                self.routes
                    .get(i as usize)
                    .is_some_and(|r| r.matcher.path.matches(path) && r.matcher.matches_rest(req))
            });
        scanned.or(exact).and_then(|i| self.routes.get(i as usize))
    }
}

/// All virtual hosts of a listener, indexed by domain.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    pub virtual_hosts: Vec<VirtualHost>,
    exact: FnvMap<Box<[u8]>, usize>,
    /// Longest suffix first.
    suffixes: Vec<(Box<[u8]>, usize)>,
    /// Longest prefix first.
    prefixes: Vec<(Box<[u8]>, usize)>,
    any: Option<usize>,
}

/// A match: the route and the virtual host it belongs to (whose header ops
/// also apply).
#[derive(Debug, Clone, Copy)]
pub struct Matched<'t> {
    pub virtual_host: &'t VirtualHost,
    pub route: &'t Route,
}

/// Whose bucket a request's rate limit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimitScope {
    /// The matched route's own bucket.
    Route,
    /// The virtual host's bucket, shared by its routes without a limit.
    VirtualHost,
}

impl<'t> Matched<'t> {
    /// The rate limit that applies: the route's, else its virtual host's
    /// (Envoy's most specific per-filter config), with the bucket it counts in.
    pub fn rate_limit(&self) -> Option<(RateLimitScope, &'t LocalRateLimit)> {
        match (&self.route.rate_limit, &self.virtual_host.rate_limit) {
            (Some(r), _) => Some((RateLimitScope::Route, r)),
            (None, Some(v)) => Some((RateLimitScope::VirtualHost, v)),
            (None, None) => None,
        }
    }
}

/// Host names longer than this are not valid DNS names (RFC 1035 §2.3.4 allows
/// 253); such a Host can only reach the "*" virtual host.
const MAX_HOST: usize = 255;

impl RouteTable {
    /// Builds the domain index. A domain listed twice goes to its first virtual
    /// host (config validation reports duplicates as errors).
    pub fn new(virtual_hosts: Vec<VirtualHost>) -> RouteTable {
        let mut t = RouteTable::default();
        for (i, vh) in virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    DomainPattern::Exact(h) => {
                        t.exact.entry(h.clone()).or_insert(i);
                    }
                    DomainPattern::Suffix(s) if !t.suffixes.iter().any(|(x, _)| x == s) => {
                        t.suffixes.push((s.clone(), i));
                    }
                    DomainPattern::Prefix(p) if !t.prefixes.iter().any(|(x, _)| x == p) => {
                        t.prefixes.push((p.clone(), i));
                    }
                    DomainPattern::Any if t.any.is_none() => t.any = Some(i),
                    _ => {}
                }
            }
        }
        // Stable sorts: equal lengths keep config order.
        t.suffixes.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        t.prefixes.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        t.virtual_hosts = virtual_hosts;
        t
    }

    /// The virtual host for a Host value (port already stripped; any case).
    pub fn find_virtual_host(&self, host: &[u8]) -> Option<&VirtualHost> {
        let i = self.find_index(host)?;
        self.virtual_hosts.get(i)
    }

    fn find_index(&self, host: &[u8]) -> Option<usize> {
        if host.is_empty() || host.len() > MAX_HOST {
            return self.any;
        }
        let mut lower = [0u8; MAX_HOST];
        let lower = &mut lower[..host.len()];
        lower.copy_from_slice(host);
        lower.make_ascii_lowercase();
        let lower = &*lower;
        if let Some(&i) = self.exact.get(lower) {
            return Some(i);
        }
        for (s, i) in &self.suffixes {
            if lower.len() > s.len() && lower.ends_with(s) {
                return Some(*i);
            }
        }
        for (p, i) in &self.prefixes {
            if lower.len() > p.len() && lower.starts_with(p) {
                return Some(*i);
            }
        }
        self.any
    }

    /// Routes a request: virtual host by its host, then the first matching route.
    pub fn match_request<R: RequestParts + ?Sized>(&self, req: &R) -> Option<Matched<'_>> {
        let virtual_host = self.find_virtual_host(req.host().unwrap_or_default())?;
        let route = virtual_host.match_route(req)?;
        Some(Matched {
            virtual_host,
            route,
        })
    }
}

/// Convenience form of [`RouteTable::match_request`] returning only the route.
pub fn match_request<'t, R: RequestParts + ?Sized>(
    table: &'t RouteTable,
    req: &R,
) -> Option<&'t Route> {
    table.match_request(req).map(|m| m.route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::{parse_request, Limits, Parsed};
    use crate::http::route_config::tests::table_from_toml;

    /// Routes `request` (a full head) and returns the matched route's name.
    fn route_name(table: &RouteTable, request: &str) -> Option<String> {
        let buf = request.replace('\n', "\r\n");
        let head = match parse_request(buf.as_bytes(), &Limits::default()) {
            Ok(Parsed::Complete { head, .. }) => head,
            other => panic!("{request}: {other:?}"),
        };
        match_request(table, &head.view(buf.as_bytes())).map(|r| r.name.to_string())
    }

    const CONFIG: &str = r#"
        [[virtual_host]]
        name = "api"
        domains = ["api.example.com", "api.example.com.cn"]

        [[virtual_host.route]]
        name = "health"
        match = { path = "/healthz" }
        direct_response = { status = 200, body = "ok" }

        [[virtual_host.route]]
        name = "v2-canary"
        match = { prefix = "/v2/", headers = [{ name = "x-canary", exact = "1" }] }
        cluster = "v2-canary"

        [[virtual_host.route]]
        name = "v2"
        match = { prefix = "/v2/" }
        cluster = "v2"

        [[virtual_host.route]]
        name = "users-get"
        match = { regex = "/users/[0-9]+", methods = ["GET", "HEAD"] }
        cluster = "users"

        [[virtual_host.route]]
        name = "debug"
        match = { prefix = "/", query = [{ name = "debug", exact = "true" }] }
        cluster = "debug"

        [[virtual_host.route]]
        name = "no-auth"
        match = { prefix = "/", headers = [{ name = "authorization", present = false }] }
        direct_response = { status = 401 }

        [[virtual_host.route]]
        name = "bearer"
        match = { prefix = "/", headers = [{ name = "authorization", regex = "Bearer [A-Za-z0-9._-]+" }] }
        cluster = "v1"

        [[virtual_host]]
        name = "wild-suffix"
        domains = ["*.example.com"]
        [[virtual_host.route]]
        name = "wild-suffix"
        match = { prefix = "/" }
        cluster = "v1"

        [[virtual_host]]
        name = "longer-suffix"
        domains = ["*.eu.example.com"]
        [[virtual_host.route]]
        name = "longer-suffix"
        match = { prefix = "/" }
        cluster = "v1"

        [[virtual_host]]
        name = "wild-prefix"
        domains = ["internal.*"]
        [[virtual_host.route]]
        name = "wild-prefix"
        match = { prefix = "/" }
        cluster = "v1"

        [[virtual_host]]
        name = "default"
        domains = ["*"]
        [[virtual_host.route]]
        name = "exact-late"
        match = { path = "/late" }
        cluster = "v1"
        [[virtual_host.route]]
        name = "prefix-late"
        match = { prefix = "/l" }
        cluster = "v1"
        [[virtual_host.route]]
        name = "exact-later"
        match = { path = "/later" }
        cluster = "v1"
    "#;

    #[test]
    fn routing_table() {
        let t = table_from_toml(CONFIG);
        let cases: &[(&str, Option<&str>)] = &[
            // Exact host, any case, port ignored.
            (
                "GET /healthz HTTP/1.1\nHost: API.Example.com:8443\n\n",
                Some("health"),
            ),
            (
                "GET /healthz?x=1 HTTP/1.1\nHost: api.example.com\n\n",
                Some("health"),
            ),
            // An exact path does not match a longer one.
            (
                "GET /healthz/x HTTP/1.1\nHost: api.example.com\nAuthorization: Bearer t\n\n",
                Some("bearer"),
            ),
            // Header condition, then first-match order.
            (
                "GET /v2/a HTTP/1.1\nHost: api.example.com\nX-Canary: 1\n\n",
                Some("v2-canary"),
            ),
            (
                "GET /v2/a HTTP/1.1\nHost: api.example.com\nX-Canary: 2\n\n",
                Some("v2"),
            ),
            (
                "GET /v2 HTTP/1.1\nHost: api.example.com\n\n",
                Some("no-auth"),
            ),
            // Regex is anchored on the whole path; methods filter.
            (
                "GET /users/42 HTTP/1.1\nHost: api.example.com\n\n",
                Some("users-get"),
            ),
            (
                "HEAD /users/42 HTTP/1.1\nHost: api.example.com\n\n",
                Some("users-get"),
            ),
            (
                "POST /users/42 HTTP/1.1\nHost: api.example.com\nContent-Length: 0\n\n",
                Some("no-auth"),
            ),
            (
                "GET /users/42/x HTTP/1.1\nHost: api.example.com\n\n",
                Some("no-auth"),
            ),
            (
                "GET /x/users/42 HTTP/1.1\nHost: api.example.com\n\n",
                Some("no-auth"),
            ),
            // Query parameters.
            (
                "GET /any?a=1&debug=true HTTP/1.1\nHost: api.example.com\n\n",
                Some("debug"),
            ),
            (
                "GET /any?debug=truex HTTP/1.1\nHost: api.example.com\n\n",
                Some("no-auth"),
            ),
            (
                "GET /any?debug HTTP/1.1\nHost: api.example.com\n\n",
                Some("no-auth"),
            ),
            // Header regex must match the whole value.
            (
                "GET / HTTP/1.1\nHost: api.example.com\nAuthorization: Bearer abc.def\n\n",
                Some("bearer"),
            ),
            (
                "GET / HTTP/1.1\nHost: api.example.com\nAuthorization: Basic abc\n\n",
                None,
            ),
            (
                "GET / HTTP/1.1\nHost: api.example.com\nAuthorization: Bearer a b\n\n",
                None,
            ),
            // Suffix wildcards: longest first, and "*" must match something.
            (
                "GET / HTTP/1.1\nHost: www.example.com\n\n",
                Some("wild-suffix"),
            ),
            (
                "GET / HTTP/1.1\nHost: x.eu.example.com\n\n",
                Some("longer-suffix"),
            ),
            (
                "GET / HTTP/1.1\nHost: eu.example.com\n\n",
                Some("wild-suffix"),
            ),
            ("GET / HTTP/1.1\nHost: example.com\n\n", None),
            (
                "GET / HTTP/1.1\nHost: internal.svc\n\n",
                Some("wild-prefix"),
            ),
            // Exact host beats the suffix wildcard that also matches it.
            (
                "GET /v2/ HTTP/1.1\nHost: api.example.com\nX-Canary: 1\n\n",
                Some("v2-canary"),
            ),
            // Default host; an exact-path route after a prefix route loses to it.
            ("GET /late HTTP/1.1\nHost: other\n\n", Some("exact-late")),
            ("GET /later HTTP/1.1\nHost: other\n\n", Some("prefix-late")),
            ("GET /nothing HTTP/1.1\nHost: other\n\n", None),
            // HTTP/1.0 without Host goes to the default virtual host.
            ("GET /late HTTP/1.0\n\n", Some("exact-late")),
            // Absolute-form target: its authority is the host.
            (
                "GET http://www.example.com/ HTTP/1.1\nHost: api.example.com\n\n",
                Some("wild-suffix"),
            ),
        ];
        for (req, want) in cases {
            assert_eq!(route_name(&t, req).as_deref(), *want, "{req}");
        }
    }

    #[test]
    fn weighted_pick_follows_weights() {
        let c = |n: &str, i| ClusterRef {
            name: n.into(),
            index: i,
        };
        let w = ClusterChoice::Weighted(vec![(c("a", 0), 90), (c("b", 1), 10), (c("z", 2), 0)]);
        let mut counts = [0u32; 3];
        // Evenly spaced "random" values over the whole u32 range.
        for k in 0..1000u64 {
            let r = (((2 * k + 1) << 32) / 2000) as u32;
            counts[w.pick(r).index] += 1;
        }
        assert_eq!(counts, [900, 100, 0]);
        assert_eq!(w.pick(0).name.as_ref(), "a");
        assert_eq!(w.pick(u32::MAX).name.as_ref(), "b");
    }

    #[test]
    fn retry_decisions_and_backoff() {
        let p = RetryPolicy {
            retry_on: RetryOn {
                gateway_error: true,
                connect_failure: true,
                ..RetryOn::default()
            },
            num_retries: 2,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            retriable_status_codes: vec![409],
            previous_hosts: true,
            retry_non_idempotent: false,
        };
        let cases = [
            (AttemptFailure::Status(503), true),
            (AttemptFailure::Status(500), false),
            (AttemptFailure::Status(404), false),
            (AttemptFailure::ConnectFailure, true),
            (AttemptFailure::Reset, false),
            (AttemptFailure::PerTryTimeout, true),
        ];
        for (f, want) in cases {
            assert_eq!(p.retriable(f), want, "{f:?}");
        }
        let five = RetryPolicy {
            retry_on: RetryOn {
                server_error: true,
                ..RetryOn::default()
            },
            ..p.clone()
        };
        assert!(five.retriable(AttemptFailure::Status(500)));
        assert!(five.retriable(AttemptFailure::Reset));
        // The listed codes only under retriable-status-codes.
        assert!(!five.retriable(AttemptFailure::Status(409)));
        let codes = RetryPolicy {
            retry_on: RetryOn {
                retriable_status_codes: true,
                ..RetryOn::default()
            },
            ..p.clone()
        };
        assert!(codes.retriable(AttemptFailure::Status(409)));
        assert!(!codes.retriable(AttemptFailure::Status(503)));
        // Caps: 25ms, 50ms, 100ms, 200ms, then 250ms forever (no overflow).
        let max_random = u64::MAX;
        let caps: Vec<u64> = [0, 1, 2, 3, 4, 40, 70, u32::MAX]
            .iter()
            .map(|&n| {
                // The largest value random % (cap + 1) can produce is cap.
                (0..=400_000u64)
                    .map(|r| p.backoff(n, r).as_micros() as u64)
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(
            caps,
            [25_000, 50_000, 100_000, 200_000, 250_000, 250_000, 250_000, 250_000]
        );
        assert!(p.backoff(3, max_random) <= Duration::from_millis(200));
    }

    #[test]
    fn prefix_rewrite_and_redirect_location() {
        let t = table_from_toml(
            r#"
            [[virtual_host]]
            name = "vh"
            domains = ["*"]
            [[virtual_host.route]]
            name = "rw"
            match = { prefix = "/api/" }
            cluster = "v1"
            prefix_rewrite = "/"
            [[virtual_host.route]]
            name = "https"
            match = { prefix = "/secure" }
            redirect = { scheme = "https", status = 308 }
            [[virtual_host.route]]
            name = "moved"
            match = { prefix = "/old/" }
            redirect = { host = "new.example.com", port = 8080, prefix_rewrite = "/new/", strip_query = true }
            "#,
        );
        let parse = |s: &str| {
            let buf = s.replace('\n', "\r\n").into_bytes();
            let Ok(Parsed::Complete { head, .. }) = parse_request(&buf, &Limits::default()) else {
                panic!("{s}")
            };
            (head, buf)
        };
        let (h, b) = parse("GET /api/v1/x?q=1 HTTP/1.1\nHost: a\n\n");
        let v = h.view(&b);
        let r = match_request(&t, &v).unwrap();
        let mut scratch = Vec::new();
        assert_eq!(r.rewritten_path(&v, &mut scratch), Some(&b"/v1/x?q=1"[..]));

        let (h, b) = parse("GET /secure/p?q=1 HTTP/1.1\nHost: a.b:80\n\n");
        let v = h.view(&b);
        let r = match_request(&t, &v).unwrap();
        let mut loc = Vec::new();
        assert!(r.redirect_location(&v, "http", &mut loc));
        assert_eq!(loc, b"https://a.b:80/secure/p?q=1");

        let (h, b) = parse("GET /old/p?q=1 HTTP/1.1\nHost: a.b:80\n\n");
        let v = h.view(&b);
        let r = match_request(&t, &v).unwrap();
        let mut loc = Vec::new();
        assert!(r.redirect_location(&v, "http", &mut loc));
        assert_eq!(loc, b"http://new.example.com:8080/new/p");
        let RouteAction::Redirect(rd) = &r.action else {
            panic!()
        };
        assert_eq!(rd.status, 301);
    }

    #[test]
    fn rate_limit_scope_route_over_virtual_host_and_mirror_share() {
        let t = table_from_toml(
            r#"
            [[virtual_host]]
            name = "limited"
            domains = ["limited"]
            rate_limit = { tokens = 100, fill_interval = "1s", tokens_per_fill = 100 }
            [[virtual_host.route]]
            name = "own"
            match = { prefix = "/own" }
            cluster = "v1"
            rate_limit = { tokens = 5, fill_interval = "1s", tokens_per_fill = 5 }
            mirror = { cluster = "v2", percent = 25.0 }
            [[virtual_host.route]]
            name = "inherits"
            match = { prefix = "/" }
            cluster = "v1"

            [[virtual_host]]
            name = "open"
            domains = ["*"]
            [[virtual_host.route]]
            match = { prefix = "/" }
            cluster = "v1"
            "#,
        );
        let scope = |req: &str| {
            let buf = req.replace('\n', "\r\n");
            let Ok(Parsed::Complete { head, .. }) =
                parse_request(buf.as_bytes(), &Limits::default())
            else {
                panic!("{req}")
            };
            let m = t.match_request(&head.view(buf.as_bytes())).unwrap();
            m.rate_limit().map(|(s, l)| (s, l.bucket.max_tokens()))
        };
        let cases = [
            (
                "GET /own HTTP/1.1\nHost: limited\n\n",
                Some((RateLimitScope::Route, 5)),
            ),
            (
                "GET /x HTTP/1.1\nHost: limited\n\n",
                Some((RateLimitScope::VirtualHost, 100)),
            ),
            ("GET /own HTTP/1.1\nHost: other\n\n", None),
        ];
        for (req, want) in cases {
            assert_eq!(scope(req), want, "{req}");
        }
        let RouteAction::Forward(f) = &t.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        let m = f.mirror.as_ref().unwrap();
        assert_eq!(m.cluster.index, 1);
        let cases = [
            (0, true),
            (249_999, true),
            (250_000, false),
            (1_000_000, true),
        ];
        for (r, want) in cases {
            assert_eq!(m.should_mirror(r), want, "{r}");
        }
    }

    #[test]
    fn domain_patterns() {
        use DomainPattern::*;
        let ok: &[(&str, DomainPattern)] = &[
            ("*", Any),
            ("A.example.com", Exact(b"a.example.com"[..].into())),
            ("*.example.com", Suffix(b".example.com"[..].into())),
            ("*-api.example.com", Suffix(b"-api.example.com"[..].into())),
            ("api.*", Prefix(b"api."[..].into())),
            ("[::1]", Exact(b"[::1]"[..].into())),
        ];
        for (d, p) in ok {
            assert_eq!(DomainPattern::parse(d).as_ref(), Ok(p), "{d}");
        }
        for bad in ["", "a.*.b", "*.a.*", "**", "a.b:80", "a b", "a/b"] {
            assert!(DomainPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn thousand_exact_hosts_and_long_hosts() {
        let mut vhosts = Vec::new();
        for i in 0..1000 {
            let route = Route {
                name: format!("r{i}").into(),
                matcher: RouteMatch {
                    path: PathMatch::Prefix(b"/"[..].into()),
                    methods: vec![],
                    headers: vec![],
                    query: vec![],
                },
                action: RouteAction::DirectResponse {
                    status: 200,
                    body: Box::default(),
                },
                request_headers: HeaderOps::default(),
                response_headers: HeaderOps::default(),
                rate_limit: None,
            };
            vhosts.push(VirtualHost::new(
                format!("vh{i}"),
                vec![DomainPattern::parse(&format!("svc-{i}.ns.svc.cluster.local")).unwrap()],
                vec![route],
                HeaderOps::default(),
                HeaderOps::default(),
            ));
        }
        let t = RouteTable::new(vhosts);
        assert_eq!(
            t.find_virtual_host(b"SVC-777.ns.svc.cluster.local")
                .map(|v| &*v.name),
            Some("vh777")
        );
        assert!(t
            .find_virtual_host(b"svc-1000.ns.svc.cluster.local")
            .is_none());
        assert!(t.find_virtual_host(&[b'a'; 300]).is_none());
    }
}
