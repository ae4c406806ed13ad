//! Raw serde types for routes, as the TOML file says them, and their validation
//! into a [`RouteTable`].
//!
//! Same pattern as `config::raw`: every table denies unknown keys, every value
//! whose check can fail is `Spanned`, and validation reports *all* problems, each
//! with the byte span it is about (the config loader turns spans into lines).
//!
//! ```toml
//! [[virtual_host]]
//! name = "reviews"
//! domains = ["reviews", "reviews.default.svc.cluster.local"]
//! request_headers = { set = [{ name = "x-env", value = "prod" }] }
//!
//! [[virtual_host.route]]
//! match = { prefix = "/api/", methods = ["GET"], headers = [{ name = "x-canary", exact = "1" }] }
//! weighted_clusters = [{ cluster = "reviews-v2", weight = 90 }, { cluster = "reviews-v3", weight = 10 }]
//! prefix_rewrite = "/"
//! timeout = "5s"
//! retry = { retry_on = ["gateway-error", "connect-failure"], num_retries = 2, per_try_timeout = "1s" }
//! fault = { delay = "2s", delay_percent = 10.0, abort_status = 503, abort_percent = 5.0 }
//! rate_limit = { tokens = 100, fill_interval = "1s", tokens_per_fill = 100, response_headers = true }
//! mirror = { cluster = "reviews-shadow", percent = 100.0 }
//! ```
//!
//! The traffic policies (`fault`, `rate_limit`, `mirror`; `rate_limit` also on a
//! virtual host) validate into the types of `crate::policy`; their messages name
//! the route or virtual host and the key, e.g. "route `x`: fault.abort_percent
//! must be within 0..=100, got 150". [`validate_token_bucket`] is shared with
//! the listeners' `connection_rate_limit`.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use toml::Spanned;

use super::rewrite::{
    is_hop_by_hop, is_valid_header_name, is_valid_header_value, HeaderField, HeaderOps,
};
use super::route::{
    ClusterChoice, ClusterRef, DomainPattern, Forward, HeaderMatcher, MirrorPolicy, PathMatch,
    QueryMatcher, Redirect, RetryOn, RetryPolicy, Route, RouteAction, RouteMatch, RouteTable,
    ValueMatch, VirtualHost,
};
use crate::duration::parse_duration;
use crate::policy::fault::{AbortFault, DelayFault, FaultPolicy};
use crate::policy::ratelimit::{BucketConfigError, LocalRateLimit, TokenBucketConfig};
use crate::policy::Percent;

/// Envoy's default route timeout.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's defaults for retries.
pub const DEFAULT_NUM_RETRIES: u32 = 1;
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
/// Compiled size limit per regex, so a config cannot make a huge automaton.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteConfig {
    #[serde(default, rename = "virtual_host")]
    pub virtual_hosts: Vec<Spanned<RawVirtualHost>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVirtualHost {
    pub name: Spanned<String>,
    pub domains: Spanned<Vec<Spanned<String>>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
    /// Overrides `[http] max_request_body_bytes` for this host's routes.
    pub max_request_body_bytes: Option<Spanned<i64>>,
    /// For the routes that set none; one bucket shared by them.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Option<Spanned<String>>,
    #[serde(rename = "match")]
    pub matcher: Spanned<RawRouteMatch>,
    // Exactly one of the next four.
    pub cluster: Option<Spanned<String>>,
    pub weighted_clusters: Option<Spanned<Vec<RawWeightedCluster>>>,
    pub redirect: Option<Spanned<RawRedirect>>,
    pub direct_response: Option<Spanned<RawDirectResponse>>,
    // Only with cluster / weighted_clusters.
    pub prefix_rewrite: Option<Spanned<String>>,
    pub host_rewrite: Option<Spanned<String>>,
    /// "0s" disables the timeout; absent means 15 s.
    pub timeout: Option<Spanned<String>>,
    pub retry: Option<Spanned<RawRetryPolicy>>,
    /// Overrides the virtual host's (or `[http]`) limit; 0 = none.
    pub max_request_body_bytes: Option<Spanned<i64>>,
    pub request_headers: Option<RawHeaderOps>,
    pub response_headers: Option<RawHeaderOps>,
    /// Only with cluster / weighted_clusters (as Istio: not with a redirect or
    /// a direct response).
    pub fault: Option<Spanned<RawFault>>,
    /// Any action; replaces the virtual host's.
    pub rate_limit: Option<Spanned<RawRateLimit>>,
    /// Only with cluster / weighted_clusters.
    pub mirror: Option<Spanned<RawMirror>>,
}

/// Istio's `HTTPFaultInjection` with its nested `delay` / `abort` flattened;
/// each action comes with the share of requests it applies to.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    /// Istio `delay.fixedDelay`.
    pub delay: Option<Spanned<String>>,
    /// Istio `delay.percentage.value`: 0..=100, fractions allowed.
    pub delay_percent: Option<Spanned<f64>>,
    /// Istio `abort.httpStatus`: 200..=599.
    pub abort_status: Option<Spanned<i64>>,
    /// Istio `abort.percentage.value`.
    pub abort_percent: Option<Spanned<f64>>,
}

/// Envoy's HTTP `local_ratelimit` per-route config: its `token_bucket`
/// (`max_tokens` named `tokens`) and `enable_x_ratelimit_headers`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRateLimit {
    pub tokens: Spanned<i64>,
    pub fill_interval: Spanned<String>,
    /// Required, unlike Envoy (which defaults to 1): `{ tokens = 100,
    /// fill_interval = "1s" }` silently meaning one request a second after
    /// the first burst would surprise anyone.
    pub tokens_per_fill: Spanned<i64>,
    #[serde(default)]
    pub response_headers: bool,
}

/// Istio `mirror` + `mirrorPercentage` (Envoy `request_mirror_policies`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirror {
    pub cluster: Spanned<String>,
    /// 0..=100; absent = 100 (Istio's default).
    pub percent: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouteMatch {
    // Exactly one of path / prefix / regex.
    pub path: Option<Spanned<String>>,
    pub prefix: Option<Spanned<String>>,
    pub regex: Option<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    #[serde(default)]
    pub headers: Vec<Spanned<RawHeaderMatcher>>,
    #[serde(default)]
    pub query: Vec<Spanned<RawQueryMatcher>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderMatcher {
    pub name: Spanned<String>,
    // Exactly one of exact / regex / present.
    pub exact: Option<String>,
    pub regex: Option<Spanned<String>>,
    /// `present = false` matches when the header is absent.
    pub present: Option<bool>,
    #[serde(default)]
    pub invert: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueryMatcher {
    pub name: Spanned<String>,
    // Exactly one of exact / regex / present = true.
    pub exact: Option<String>,
    pub regex: Option<Spanned<String>>,
    pub present: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWeightedCluster {
    pub cluster: Spanned<String>,
    pub weight: Spanned<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRedirect {
    /// 301 (default), 302, 303, 307 or 308.
    pub status: Option<Spanned<i64>>,
    pub scheme: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub path: Option<Spanned<String>>,
    pub prefix_rewrite: Option<Spanned<String>>,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDirectResponse {
    pub status: Spanned<i64>,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetryPolicy {
    /// "5xx", "gateway-error", "connect-failure", "reset",
    /// "retriable-status-codes", and the gRPC statuses "cancelled",
    /// "deadline-exceeded", "internal", "resource-exhausted", "unavailable".
    pub retry_on: Spanned<Vec<Spanned<String>>>,
    pub num_retries: Option<Spanned<i64>>,
    pub per_try_timeout: Option<Spanned<String>>,
    pub backoff_base: Option<Spanned<String>>,
    /// Default: 10 × backoff_base.
    pub backoff_max: Option<Spanned<String>>,
    /// Statuses retried under `retriable-status-codes` (Envoy's
    /// retriable_status_codes).
    pub retriable_status_codes: Option<Spanned<Vec<Spanned<i64>>>>,
    /// Retry a different endpoint when there is one (Envoy's `previous_hosts`
    /// retry host predicate; Istio sets it on every route). Default true.
    pub previous_hosts: Option<bool>,
    /// Also retry non-idempotent requests (POST, PATCH, ...) after they may
    /// have reached the upstream. Default false (RFC 9112 §9.3.1).
    pub retry_non_idempotent: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderOps {
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
    #[serde(default)]
    pub set: Vec<RawHeaderValue>,
    #[serde(default)]
    pub add: Vec<RawHeaderValue>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderValue {
    pub name: Spanned<String>,
    pub value: Spanned<String>,
}

/// One problem in the route config, at a byte span of the config text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfigError {
    pub span: Range<usize>,
    pub message: String,
}

impl fmt::Display for RouteConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at byte {}: {}", self.span.start, self.message)
    }
}

impl std::error::Error for RouteConfigError {}

/// Checks a token bucket written as `key = { tokens, fill_interval,
/// tokens_per_fill }` (a route's or virtual host's `rate_limit`, a listener's
/// `connection_rate_limit`) and reports every problem at its value. `owner`
/// names the table for the message ("route `x`", "listener `l`").
pub fn validate_token_bucket(
    owner: &str,
    key: &str,
    tokens: &Spanned<i64>,
    tokens_per_fill: &Spanned<i64>,
    fill_interval: &Spanned<String>,
) -> Result<TokenBucketConfig, Vec<RouteConfigError>> {
    let Some(interval) = parse_duration(fill_interval.get_ref()) else {
        let mut errors = vec![RouteConfigError {
            span: fill_interval.span(),
            message: format!(
                "{owner}: {key}.fill_interval `{}` is not a duration (use a number with ms, s, m or h, e.g. \"1s\"; at least 50ms)",
                fill_interval.get_ref()
            ),
        }];
        // Still check the counts, so that all problems show at once.
        if let Err(more) =
            TokenBucketConfig::new(*tokens.get_ref(), *tokens_per_fill.get_ref(), Duration::MAX)
        {
            errors.extend(bucket_errors(
                owner,
                key,
                more,
                tokens,
                tokens_per_fill,
                fill_interval,
            ));
        }
        return Err(errors);
    };
    TokenBucketConfig::new(*tokens.get_ref(), *tokens_per_fill.get_ref(), interval)
        .map_err(|e| bucket_errors(owner, key, e, tokens, tokens_per_fill, fill_interval))
}

fn bucket_errors(
    owner: &str,
    key: &str,
    errors: Vec<BucketConfigError>,
    tokens: &Spanned<i64>,
    tokens_per_fill: &Spanned<i64>,
    fill_interval: &Spanned<String>,
) -> Vec<RouteConfigError> {
    errors
        .into_iter()
        .map(|e| {
            let span = match e {
                BucketConfigError::Tokens(_) => tokens.span(),
                BucketConfigError::TokensPerFill(_) => tokens_per_fill.span(),
                BucketConfigError::FillInterval(_) => fill_interval.span(),
            };
            RouteConfigError {
                span,
                message: format!("{owner}: {key}.{e}"),
            }
        })
        .collect()
}

/// "a, b, c" (at most 20 names, then how many more), or "none".
pub fn list_names(names: &[&str]) -> String {
    const SHOWN: usize = 20;
    if names.is_empty() {
        return "none".to_string();
    }
    // A name defined twice (itself an error) is listed once.
    let names: Vec<&str> = names
        .iter()
        .enumerate()
        .filter(|(i, n)| !names[..*i].contains(n))
        .map(|(_, n)| *n)
        .collect();
    let mut s = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(" and {} more", names.len() - SHOWN));
    }
    s
}

impl RawRouteConfig {
    /// Checks everything and builds the table. `clusters` are the names of the
    /// validated clusters, in order: a [`ClusterRef`]'s index points into it.
    pub fn validate(self, clusters: &[&str]) -> Result<RouteTable, Vec<RouteConfigError>> {
        let mut v = Validator {
            errors: Vec::new(),
            clusters,
        };
        let mut vhost_names: HashMap<String, ()> = HashMap::new();
        // Domain (lower case) -> the virtual host that has it.
        let mut domains_seen: HashMap<String, String> = HashMap::new();
        let mut vhosts = Vec::new();
        for raw in self.virtual_hosts {
            let raw = raw.into_inner();
            if let Some(vh) = v.virtual_host(raw, &mut vhost_names, &mut domains_seen) {
                vhosts.push(vh);
            }
        }
        if v.errors.is_empty() {
            Ok(RouteTable::new(vhosts))
        } else {
            v.errors.sort_by_key(|e| e.span.start);
            Err(v.errors)
        }
    }
}

struct Validator<'a> {
    errors: Vec<RouteConfigError>,
    clusters: &'a [&'a str],
}

impl Validator<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(RouteConfigError {
            span,
            message: message.into(),
        });
    }

    fn virtual_host(
        &mut self,
        raw: RawVirtualHost,
        names: &mut HashMap<String, ()>,
        domains_seen: &mut HashMap<String, String>,
    ) -> Option<VirtualHost> {
        let name = raw.name.get_ref().clone();
        if name.is_empty() {
            self.error(raw.name.span(), "virtual_host.name must not be empty");
        } else if names.insert(name.clone(), ()).is_some() {
            self.error(
                raw.name.span(),
                format!("virtual host `{name}` is defined twice"),
            );
        }
        let mut domains = Vec::new();
        if raw.domains.get_ref().is_empty() {
            self.error(
                raw.domains.span(),
                "virtual_host.domains must list at least one domain (\"*\" matches any host)",
            );
        }
        for d in raw.domains.into_inner() {
            match DomainPattern::parse(d.get_ref()) {
                Ok(p) => {
                    let key = d.get_ref().to_ascii_lowercase();
                    if let Some(first) = domains_seen.get(&key).cloned() {
                        let by = if first == name {
                            "this virtual host".to_string()
                        } else {
                            format!("virtual host `{first}`")
                        };
                        self.error(
                            d.span(),
                            format!(
                                "domain `{}` is already used by {by}; a host must match one virtual host",
                                d.get_ref()
                            ),
                        );
                    } else {
                        domains_seen.insert(key, name.clone());
                    }
                    domains.push(p);
                }
                Err(why) => {
                    self.error(d.span(), format!("invalid domain `{}`: {why}", d.get_ref()))
                }
            }
        }
        let request_headers = self.header_ops(raw.request_headers);
        let response_headers = self.header_ops(raw.response_headers);
        let mut routes = Vec::new();
        let mut route_names: HashMap<String, ()> = HashMap::new();
        for (i, r) in raw.routes.into_iter().enumerate() {
            // Names key per-core state (rate-limit buckets) across reloads,
            // so two routes of one host must not share one.
            let (route_name, span) = match &r.get_ref().name {
                Some(n) => (n.get_ref().clone(), n.span()),
                None => (format!("{name}/{i}"), r.span()),
            };
            if !route_name.is_empty() && route_names.insert(route_name.clone(), ()).is_some() {
                self.error(
                    span,
                    format!("route `{route_name}` is defined twice in virtual host `{name}` (route names must be unique within a virtual host)"),
                );
            }
            if let Some(route) = self.route(r, &name, i) {
                routes.push(route);
            }
        }
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .and_then(|r| self.rate_limit(r, &format!("virtual host `{name}`")));
        let mut vh = VirtualHost::new(name, domains, routes, request_headers, response_headers);
        vh.max_request_body_bytes = raw
            .max_request_body_bytes
            .as_ref()
            .and_then(|n| self.body_limit(n));
        vh.rate_limit = rate_limit;
        Some(vh)
    }

    fn route(&mut self, raw: Spanned<RawRoute>, vhost: &str, position: usize) -> Option<Route> {
        let span = raw.span();
        let raw = raw.into_inner();
        let name = match &raw.name {
            Some(n) if n.get_ref().is_empty() => {
                self.error(n.span(), "route name must not be empty");
                String::new()
            }
            Some(n) => n.get_ref().clone(),
            None => format!("{vhost}/{position}"),
        };
        let matcher_span = raw.matcher.span();
        let matcher = self.route_match(&raw.matcher);
        let is_prefix = matches!(
            matcher.as_ref().map(|m| &m.path),
            Some(PathMatch::Prefix(_))
        );

        let actions = [
            raw.cluster.is_some(),
            raw.weighted_clusters.is_some(),
            raw.redirect.is_some(),
            raw.direct_response.is_some(),
        ];
        let forward = raw.cluster.is_some() || raw.weighted_clusters.is_some();
        if actions.iter().filter(|&&a| a).count() != 1 {
            self.error(
                span.clone(),
                "a route needs exactly one of `cluster`, `weighted_clusters`, `redirect` or `direct_response`",
            );
            return None;
        }
        if !forward {
            for (present, key) in [
                (
                    raw.prefix_rewrite.as_ref().map(Spanned::span),
                    "prefix_rewrite",
                ),
                (raw.host_rewrite.as_ref().map(Spanned::span), "host_rewrite"),
                (raw.timeout.as_ref().map(Spanned::span), "timeout"),
                (raw.retry.as_ref().map(Spanned::span), "retry"),
                (
                    raw.max_request_body_bytes.as_ref().map(Spanned::span),
                    "max_request_body_bytes",
                ),
                (raw.fault.as_ref().map(Spanned::span), "fault"),
                (raw.mirror.as_ref().map(Spanned::span), "mirror"),
            ] {
                if let Some(s) = present {
                    self.error(
                        s,
                        format!("`{key}` applies only to `cluster` or `weighted_clusters` routes"),
                    );
                }
            }
        }

        // Validate everything before giving up on the route, so that all of its
        // errors are reported at once.
        let owner = format!("route `{name}`");
        let rate_limit = raw
            .rate_limit
            .as_ref()
            .and_then(|r| self.rate_limit(r, &owner));
        let action = if let Some(c) = &raw.cluster {
            let c = self.cluster(c).map(ClusterChoice::Single);
            self.forward(c, &raw, is_prefix, matcher_span, &owner)?
        } else if let Some(w) = &raw.weighted_clusters {
            let choice = self.weighted(w);
            self.forward(choice, &raw, is_prefix, matcher_span, &owner)?
        } else if let Some(r) = &raw.redirect {
            RouteAction::Redirect(self.redirect(r, is_prefix)?)
        } else if let Some(d) = &raw.direct_response {
            let d = d.get_ref();
            let status = self.int_in(&d.status, 200, 599, "direct_response.status")?;
            RouteAction::DirectResponse {
                status: status as u16,
                body: d.body.as_bytes().into(),
            }
        } else {
            return None;
        };
        let request_headers = self.header_ops(raw.request_headers);
        let response_headers = self.header_ops(raw.response_headers);
        Some(Route {
            name: name.into(),
            matcher: matcher?,
            action,
            request_headers,
            response_headers,
            rate_limit,
        })
    }

    fn forward(
        &mut self,
        clusters: Option<ClusterChoice>,
        raw: &RawRoute,
        is_prefix: bool,
        matcher_span: Range<usize>,
        owner: &str,
    ) -> Option<RouteAction> {
        let prefix_rewrite = raw.prefix_rewrite.as_ref().and_then(|p| {
            if !is_prefix {
                self.error(
                    matcher_span.clone(),
                    "`prefix_rewrite` needs a `prefix` match (it replaces the matched prefix)",
                );
                return None;
            }
            self.path_value(p, "prefix_rewrite", false)
        });
        let host_rewrite = raw
            .host_rewrite
            .as_ref()
            .and_then(|h| self.host_value(h, "host_rewrite"));
        let timeout = match &raw.timeout {
            None => Some(DEFAULT_ROUTE_TIMEOUT),
            Some(t) => match parse_duration(t.get_ref()) {
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
                None => {
                    self.bad_duration(t);
                    Some(DEFAULT_ROUTE_TIMEOUT)
                }
            },
        };
        let retry = raw.retry.as_ref().and_then(|r| self.retry(r));
        let max_request_body_bytes = raw
            .max_request_body_bytes
            .as_ref()
            .and_then(|n| self.body_limit(n));
        let fault = raw.fault.as_ref().and_then(|f| self.fault(f, owner));
        let mirror = raw.mirror.as_ref().and_then(|m| self.mirror(m, owner));
        Some(RouteAction::Forward(Forward {
            clusters: clusters?,
            prefix_rewrite,
            host_rewrite,
            timeout,
            retry,
            max_request_body_bytes,
            fault,
            mirror,
        }))
    }

    fn route_match(&mut self, raw: &Spanned<RawRouteMatch>) -> Option<RouteMatch> {
        let span = raw.span();
        let m = raw.get_ref();
        let path = match (&m.path, &m.prefix, &m.regex) {
            (Some(p), None, None) => self.path_value(p, "path", true).map(PathMatch::Exact),
            (None, Some(p), None) => self.path_value(p, "prefix", true).map(PathMatch::Prefix),
            (None, None, Some(r)) => self.regex(r).map(PathMatch::Regex),
            _ => {
                self.error(
                    span,
                    "a route match needs exactly one of `path`, `prefix` or `regex`",
                );
                None
            }
        };
        let mut methods = Vec::new();
        for meth in &m.methods {
            if is_valid_header_name(meth.get_ref().as_bytes()) {
                methods.push(meth.get_ref().as_bytes().into());
            } else {
                self.error(
                    meth.span(),
                    format!("`{}` is not a valid method token", meth.get_ref()),
                );
            }
        }
        let mut headers = Vec::new();
        for h in &m.headers {
            let hspan = h.span();
            let h = h.get_ref();
            let name = self.header_name(&h.name, false);
            let (value, absent) = match (&h.exact, &h.regex, h.present) {
                (Some(e), None, None) => (Some(ValueMatch::Exact(e.as_bytes().into())), false),
                (None, Some(r), None) => (self.regex(r).map(ValueMatch::Regex), false),
                (None, None, Some(p)) => (Some(ValueMatch::Present), !p),
                _ => {
                    self.error(
                        hspan,
                        "a header match needs exactly one of `exact`, `regex` or `present`",
                    );
                    (None, false)
                }
            };
            if let (Some(name), Some(value)) = (name, value) {
                headers.push(HeaderMatcher {
                    name,
                    value,
                    invert: h.invert != absent,
                });
            }
        }
        let mut query = Vec::new();
        for q in &m.query {
            let qspan = q.span();
            let q = q.get_ref();
            if q.name.get_ref().is_empty() {
                self.error(q.name.span(), "query parameter name must not be empty");
            }
            let value = match (&q.exact, &q.regex, &q.present) {
                (Some(e), None, None) => Some(ValueMatch::Exact(e.as_bytes().into())),
                (None, Some(r), None) => self.regex(r).map(ValueMatch::Regex),
                (None, None, Some(p)) if *p.get_ref() => Some(ValueMatch::Present),
                (None, None, Some(p)) => {
                    self.error(
                        p.span(),
                        "`present = false` is not supported for query parameters",
                    );
                    None
                }
                _ => {
                    self.error(
                        qspan,
                        "a query match needs exactly one of `exact`, `regex` or `present = true`",
                    );
                    None
                }
            };
            if let Some(value) = value {
                query.push(QueryMatcher {
                    name: q.name.get_ref().as_bytes().into(),
                    value,
                });
            }
        }
        Some(RouteMatch {
            path: path?,
            methods,
            headers,
            query,
        })
    }

    fn cluster(&mut self, name: &Spanned<String>) -> Option<ClusterRef> {
        self.cluster_for(name, "")
    }

    /// A cluster by name; `context` prefixes the message ("route `x`: mirror.").
    fn cluster_for(&mut self, name: &Spanned<String>, context: &str) -> Option<ClusterRef> {
        match self.clusters.iter().position(|c| c == name.get_ref()) {
            Some(index) => Some(ClusterRef {
                name: name.get_ref().as_str().into(),
                index,
            }),
            None => {
                self.error(
                    name.span(),
                    format!(
                        "{context}unknown cluster `{}` (defined: {}); define it in a [[cluster]] table or fix the name",
                        name.get_ref(),
                        list_names(self.clusters)
                    ),
                );
                None
            }
        }
    }

    fn weighted(&mut self, raw: &Spanned<Vec<RawWeightedCluster>>) -> Option<ClusterChoice> {
        let span = raw.span();
        let mut entries = Vec::new();
        let mut total: u64 = 0;
        let mut ok = true;
        for w in raw.get_ref() {
            let c = self.cluster(&w.cluster);
            let weight = self.int_in(&w.weight, 0, 1_000_000, "weight");
            match (c, weight) {
                (Some(c), Some(weight)) => {
                    total += weight as u64;
                    entries.push((c, weight as u32));
                }
                _ => ok = false,
            }
        }
        if ok && total == 0 {
            self.error(
                span,
                "weighted_clusters needs at least one cluster with a positive weight",
            );
            return None;
        }
        ok.then_some(ClusterChoice::Weighted(entries))
    }

    fn redirect(&mut self, raw: &Spanned<RawRedirect>, is_prefix: bool) -> Option<Redirect> {
        let span = raw.span();
        let r = raw.get_ref();
        let status = match &r.status {
            None => 301,
            Some(s) if matches!(*s.get_ref(), 301 | 302 | 303 | 307 | 308) => *s.get_ref() as u16,
            Some(s) => {
                self.error(
                    s.span(),
                    "redirect status must be 301, 302, 303, 307 or 308",
                );
                return None;
            }
        };
        let scheme = match &r.scheme {
            None => None,
            Some(s) if matches!(s.get_ref().as_str(), "http" | "https") => {
                Some(s.get_ref().as_str().into())
            }
            Some(s) => {
                self.error(s.span(), "redirect scheme must be \"http\" or \"https\"");
                None
            }
        };
        let host = r
            .host
            .as_ref()
            .and_then(|h| self.host_value(h, "redirect host"));
        let port = r
            .port
            .as_ref()
            .and_then(|p| self.int_in(p, 1, 65535, "redirect port"))
            .map(|p| p as u16);
        let path = r
            .path
            .as_ref()
            .and_then(|p| self.path_value(p, "redirect path", true));
        let prefix_rewrite = r
            .prefix_rewrite
            .as_ref()
            .and_then(|p| self.path_value(p, "redirect prefix_rewrite", false));
        if r.path.is_some() && r.prefix_rewrite.is_some() {
            self.error(
                span.clone(),
                "a redirect takes `path` or `prefix_rewrite`, not both",
            );
        }
        if r.prefix_rewrite.is_some() && !is_prefix {
            self.error(span, "redirect `prefix_rewrite` needs a `prefix` match");
        }
        Some(Redirect {
            status,
            scheme,
            host,
            port,
            path,
            prefix_rewrite,
            strip_query: r.strip_query,
        })
    }

    fn retry(&mut self, raw: &Spanned<RawRetryPolicy>) -> Option<RetryPolicy> {
        let r = raw.get_ref();
        let mut retry_on = RetryOn::default();
        if r.retry_on.get_ref().is_empty() {
            self.error(
                r.retry_on.span(),
                "retry_on must list at least one condition",
            );
        }
        for c in r.retry_on.get_ref() {
            match c.get_ref().as_str() {
                "5xx" => retry_on.server_error = true,
                "gateway-error" => retry_on.gateway_error = true,
                "connect-failure" => retry_on.connect_failure = true,
                "reset" => retry_on.reset = true,
                "retriable-status-codes" => retry_on.retriable_status_codes = true,
                other if retry_on.grpc.set(other) => {}
                other => self.error(
                    c.span(),
                    format!("unknown retry_on `{other}` (use 5xx, gateway-error, connect-failure, reset, retriable-status-codes, or the gRPC ones: cancelled, deadline-exceeded, internal, resource-exhausted, unavailable)"),
                ),
            }
        }
        let mut retriable_status_codes = Vec::new();
        if let Some(codes) = &r.retriable_status_codes {
            for c in codes.get_ref() {
                if let Some(v) = self.int_in(c, 100, 599, "retriable_status_codes") {
                    retriable_status_codes.push(v as u16);
                }
            }
            if !retry_on.retriable_status_codes {
                self.error(
                    codes.span(),
                    "retriable_status_codes is set but retry_on does not list \"retriable-status-codes\"",
                );
            }
        } else if retry_on.retriable_status_codes {
            self.error(
                r.retry_on.span(),
                "retry_on lists \"retriable-status-codes\" but retriable_status_codes is not set",
            );
        }
        let num_retries = match &r.num_retries {
            None => DEFAULT_NUM_RETRIES,
            Some(n) => self
                .int_in(n, 0, 10, "num_retries")
                .unwrap_or(DEFAULT_NUM_RETRIES as i64) as u32,
        };
        let per_try_timeout = r
            .per_try_timeout
            .as_ref()
            .and_then(|t| self.positive_duration(t));
        let backoff_base = r
            .backoff_base
            .as_ref()
            .and_then(|t| self.positive_duration(t))
            .unwrap_or(DEFAULT_BACKOFF_BASE);
        let backoff_max = r
            .backoff_max
            .as_ref()
            .and_then(|t| self.positive_duration(t))
            .unwrap_or(backoff_base * 10);
        if backoff_max < backoff_base {
            if let Some(m) = &r.backoff_max {
                self.error(m.span(), "backoff_max must not be less than backoff_base");
            }
        }
        Some(RetryPolicy {
            retry_on,
            num_retries,
            per_try_timeout,
            backoff_base,
            backoff_max,
            retriable_status_codes,
            previous_hosts: r.previous_hosts.unwrap_or(true),
            retry_non_idempotent: r.retry_non_idempotent.unwrap_or(false),
        })
    }

    /// Both parts of a fault come in pairs (action and share): a share given
    /// without its action, or an action without its share, is an error rather
    /// than a silent default. Istio passes an absent percentage on to Envoy as
    /// an unset field, and neither "inject into no request" nor "into every
    /// request" is what a reader of `fault = { delay = "2s" }` can be sure of.
    fn fault(&mut self, raw: &Spanned<RawFault>, owner: &str) -> Option<FaultPolicy> {
        let f = raw.get_ref();
        if f.delay.is_none()
            && f.delay_percent.is_none()
            && f.abort_status.is_none()
            && f.abort_percent.is_none()
        {
            self.error(
                raw.span(),
                format!("{owner}: fault needs `delay` with `delay_percent`, `abort_status` with `abort_percent`, or both"),
            );
            return None;
        }
        let mut ok = true;
        let delay = match (&f.delay, &f.delay_percent) {
            (None, None) => None,
            (Some(d), Some(p)) => {
                let duration = self.policy_duration(d, owner, "fault.delay");
                if duration.is_some_and(|d| d.is_zero()) {
                    self.error(
                        d.span(),
                        format!("{owner}: fault.delay must be longer than 0s (remove `delay` and `delay_percent` to inject no delay)"),
                    );
                }
                let percent = self.percent(p, owner, "fault.delay_percent");
                match (duration.filter(|d| !d.is_zero()), percent) {
                    (Some(duration), Some(percent)) => Some(DelayFault { duration, percent }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            (Some(d), None) => {
                self.error(
                    d.span(),
                    format!("{owner}: fault.delay needs `delay_percent`, the share of requests to delay (0..=100)"),
                );
                ok = false;
                None
            }
            (None, Some(p)) => {
                self.error(
                    p.span(),
                    format!("{owner}: fault.delay_percent needs `delay`, how long to delay (e.g. \"2s\")"),
                );
                ok = false;
                None
            }
        };
        let abort = match (&f.abort_status, &f.abort_percent) {
            (None, None) => None,
            (Some(s), Some(p)) => {
                let n = *s.get_ref();
                let status = if (200..=599).contains(&n) {
                    Some(n as u16)
                } else {
                    self.error(
                        s.span(),
                        format!("{owner}: fault.abort_status must be an HTTP status within 200..=599, got {n}"),
                    );
                    None
                };
                let percent = self.percent(p, owner, "fault.abort_percent");
                match (status, percent) {
                    (Some(status), Some(percent)) => Some(AbortFault { status, percent }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            (Some(s), None) => {
                self.error(
                    s.span(),
                    format!("{owner}: fault.abort_status needs `abort_percent`, the share of requests to abort (0..=100)"),
                );
                ok = false;
                None
            }
            (None, Some(p)) => {
                self.error(
                    p.span(),
                    format!("{owner}: fault.abort_percent needs `abort_status`, the status to answer with (e.g. 503)"),
                );
                ok = false;
                None
            }
        };
        ok.then_some(FaultPolicy { delay, abort })
    }

    fn rate_limit(&mut self, raw: &Spanned<RawRateLimit>, owner: &str) -> Option<LocalRateLimit> {
        let r = raw.get_ref();
        match validate_token_bucket(
            owner,
            "rate_limit",
            &r.tokens,
            &r.tokens_per_fill,
            &r.fill_interval,
        ) {
            Ok(bucket) => Some(LocalRateLimit {
                bucket,
                response_headers: r.response_headers,
            }),
            Err(errors) => {
                self.errors.extend(errors);
                None
            }
        }
    }

    fn mirror(&mut self, raw: &Spanned<RawMirror>, owner: &str) -> Option<MirrorPolicy> {
        let m = raw.get_ref();
        let cluster = self.cluster_for(&m.cluster, &format!("{owner}: mirror.cluster: "));
        let percent = match &m.percent {
            None => Some(Percent::HUNDRED),
            Some(p) => self.percent(p, owner, "mirror.percent"),
        };
        Some(MirrorPolicy {
            cluster: cluster?,
            percent: percent?,
        })
    }

    fn percent(&mut self, v: &Spanned<f64>, owner: &str, key: &str) -> Option<Percent> {
        let p = *v.get_ref();
        let percent = Percent::from_percent(p);
        if percent.is_none() {
            self.error(
                v.span(),
                format!("{owner}: {key} must be within 0..=100, got {p}"),
            );
        }
        percent
    }

    /// A duration for a policy key, zero allowed (the caller decides).
    fn policy_duration(&mut self, v: &Spanned<String>, owner: &str, key: &str) -> Option<Duration> {
        let d = parse_duration(v.get_ref());
        if d.is_none() {
            self.error(
                v.span(),
                format!(
                    "{owner}: {key} `{}` is not a duration (use a number with ms, s, m or h, e.g. \"250ms\", \"2s\")",
                    v.get_ref()
                ),
            );
        }
        d
    }

    fn header_ops(&mut self, raw: Option<RawHeaderOps>) -> HeaderOps {
        let Some(raw) = raw else {
            return HeaderOps::default();
        };
        let mut ops = HeaderOps::default();
        for n in &raw.remove {
            if let Some(name) = self.header_name(n, true) {
                ops.remove.push(name);
            }
        }
        for (list, out) in [(&raw.set, &mut ops.set), (&raw.add, &mut ops.add)] {
            for hv in list {
                let name = self.header_name(&hv.name, true);
                let value_ok = is_valid_header_value(hv.value.get_ref().as_bytes());
                if !value_ok {
                    self.error(
                        hv.value.span(),
                        "header value must not contain control characters or leading/trailing whitespace",
                    );
                }
                if let (Some(name), true) = (name, value_ok) {
                    out.push(HeaderField {
                        name,
                        value: hv.value.get_ref().as_bytes().into(),
                    });
                }
            }
        }
        ops
    }

    /// A lowercase header name; `for_ops` also refuses the fields the proxy
    /// manages itself (framing, hop-by-hop, Host).
    fn header_name(&mut self, name: &Spanned<String>, for_ops: bool) -> Option<Box<[u8]>> {
        let n = name.get_ref().to_ascii_lowercase();
        if !is_valid_header_name(n.as_bytes()) {
            self.error(
                name.span(),
                format!("`{}` is not a valid header name", name.get_ref()),
            );
            return None;
        }
        if for_ops
            && (is_hop_by_hop(n.as_bytes()) || matches!(n.as_str(), "host" | "content-length"))
        {
            self.error(
                name.span(),
                format!("`{n}` is managed by the proxy and cannot be changed by header operations (use host_rewrite for Host)"),
            );
            return None;
        }
        Some(n.into_bytes().into())
    }

    /// A path value: printable ASCII, no spaces; `absolute` requires a leading "/".
    fn path_value(&mut self, v: &Spanned<String>, what: &str, absolute: bool) -> Option<Box<[u8]>> {
        let s = v.get_ref();
        let printable = s.bytes().all(|b| b.is_ascii_graphic());
        if !printable || (absolute && !s.starts_with('/')) || s.is_empty() {
            self.error(
                v.span(),
                format!(
                    "{what} `{s}` must be {}non-empty printable ASCII without spaces",
                    if absolute { "\"/\"-prefixed, " } else { "" }
                ),
            );
            return None;
        }
        Some(s.as_bytes().into())
    }

    fn host_value(&mut self, v: &Spanned<String>, what: &str) -> Option<Box<[u8]>> {
        let s = v.get_ref();
        let ok = !s.is_empty()
            && s.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
            });
        if !ok {
            self.error(v.span(), format!("{what} `{s}` is not a valid host[:port]"));
            return None;
        }
        Some(s.as_bytes().into())
    }

    fn regex(&mut self, v: &Spanned<String>) -> Option<Regex> {
        let pattern = v.get_ref();
        // Anchored: the whole path / value must match, as in Envoy's safe_regex.
        // A syntax error is reported against the user's own pattern (checked
        // alone first), not the anchored wrapper, in one line.
        let built = RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .and_then(|_| {
                RegexBuilder::new(&format!("^(?:{pattern})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
            });
        match built {
            Ok(r) => Some(r),
            Err(e) => {
                let why = match &e {
                    // "regex parse error:\n    PATTERN\n    ^\nerror: WHY"
                    regex::Error::Syntax(text) => text
                        .lines()
                        .rev()
                        .find_map(|l| l.strip_prefix("error: "))
                        .unwrap_or(text)
                        .to_string(),
                    other => other.to_string(),
                };
                self.error(v.span(), format!("invalid regex `{pattern}`: {why}"));
                None
            }
        }
    }

    fn int_in(&mut self, v: &Spanned<i64>, min: i64, max: i64, what: &str) -> Option<i64> {
        let n = *v.get_ref();
        if (min..=max).contains(&n) {
            Some(n)
        } else {
            self.error(
                v.span(),
                format!("{what} must be between {min} and {max}, not {n}"),
            );
            None
        }
    }

    /// A body size limit: 0 (none) or a positive byte count.
    fn body_limit(&mut self, v: &Spanned<i64>) -> Option<u64> {
        let n = *v.get_ref();
        if n < 0 {
            self.error(
                v.span(),
                format!("max_request_body_bytes = {n} must be 0 (no limit) or a number of bytes"),
            );
            return None;
        }
        Some(n as u64)
    }

    fn positive_duration(&mut self, v: &Spanned<String>) -> Option<Duration> {
        match parse_duration(v.get_ref()) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                self.bad_duration(v);
                None
            }
        }
    }

    fn bad_duration(&mut self, v: &Spanned<String>) {
        self.error(
            v.span(),
            format!(
                "`{}` is not a duration (use a number with ms, s, m or h, e.g. \"250ms\", \"10s\")",
                v.get_ref()
            ),
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const CLUSTERS: &[&str] = &["v1", "v2", "v2-canary", "users", "debug"];

    /// Parses and validates; panics with every error on failure.
    pub(crate) fn table_from_toml(text: &str) -> RouteTable {
        let raw: RawRouteConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        raw.validate(CLUSTERS)
            .unwrap_or_else(|errs| panic!("{errs:#?}"))
    }

    /// Validation errors as (1-based line, message).
    fn errors(text: &str) -> Vec<(usize, String)> {
        let raw: RawRouteConfig = toml::from_str(text).unwrap_or_else(|e| panic!("{e}"));
        match raw.validate(CLUSTERS) {
            Ok(_) => vec![],
            Err(errs) => errs
                .into_iter()
                .map(|e| (text[..e.span.start].matches('\n').count() + 1, e.message))
                .collect(),
        }
    }

    #[test]
    fn full_example_validates() {
        let t = table_from_toml(
            r#"
            [[virtual_host]]
            name = "reviews"
            domains = ["reviews", "reviews.default.svc.cluster.local"]
            request_headers = { set = [{ name = "X-Env", value = "prod" }], remove = ["x-debug"] }

            [[virtual_host.route]]
            match = { prefix = "/api/", methods = ["GET"], headers = [{ name = "x-canary", exact = "1" }] }
            weighted_clusters = [{ cluster = "v1", weight = 90 }, { cluster = "v2", weight = 10 }]
            prefix_rewrite = "/"
            timeout = "5s"
            retry = { retry_on = ["gateway-error", "connect-failure"], num_retries = 2, per_try_timeout = "1s" }
            response_headers = { add = [{ name = "x-served-by", value = "remora" }] }

            [[virtual_host.route]]
            name = "stream"
            match = { prefix = "/stream" }
            cluster = "v2"
            timeout = "0s"
            "#,
        );
        let vh = &t.virtual_hosts[0];
        assert_eq!(&*vh.request_headers.set[0].name, b"x-env");
        assert_eq!(vh.routes[0].name.as_ref(), "reviews/0");
        let RouteAction::Forward(f) = &vh.routes[0].action else {
            panic!()
        };
        assert_eq!(f.timeout, Some(Duration::from_secs(5)));
        let retry = f.retry.as_ref().unwrap();
        assert_eq!(retry.num_retries, 2);
        assert_eq!(retry.backoff_max, Duration::from_millis(250));
        assert_eq!(f.clusters.pick(u32::MAX).index, 1);
        let RouteAction::Forward(f) = &vh.routes[1].action else {
            panic!()
        };
        assert_eq!(f.timeout, None);
    }

    #[test]
    fn every_error_is_reported_with_its_line() {
        let text = r#"
[[virtual_host]]
name = "a"
domains = ["a.com", "b.*.com"]
[[virtual_host.route]]
match = { prefix = "nope" }
cluster = "v1"
[[virtual_host.route]]
match = { path = "/x", regex = "/y" }
cluster = "v1"
[[virtual_host.route]]
match = { regex = "(" }
cluster = "missing"
[[virtual_host.route]]
match = { path = "/r" }
redirect = { status = 200 }
timeout = "1s"
[[virtual_host.route]]
match = { path = "/h", headers = [{ name = "bad name", exact = "1" }] }
cluster = "v1"
request_headers = { set = [{ name = "content-length", value = "1" }], add = [{ name = "x", value = "a\nb" }] }
[[virtual_host.route]]
match = { prefix = "/" }
weighted_clusters = [{ cluster = "v1", weight = 0 }]
retry = { retry_on = ["sometimes"], backoff_base = "1s", backoff_max = "10ms" }
[[virtual_host.route]]
match = { path = "/both" }
cluster = "v1"
direct_response = { status = 200 }
[[virtual_host]]
name = "a"
domains = ["A.com"]
"#;
        let errs = errors(text);
        let lines: Vec<usize> = errs.iter().map(|(l, _)| *l).collect();
        assert_eq!(
            lines,
            vec![4, 6, 9, 12, 13, 16, 17, 19, 21, 21, 24, 25, 25, 26, 31, 32],
            "{errs:#?}"
        );
        let all = errs
            .iter()
            .map(|(_, m)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        for needle in [
            "invalid domain `b.*.com`",
            "`nope` must be",
            "exactly one of `path`, `prefix` or `regex`",
            "invalid regex",
            "unknown cluster `missing`",
            "redirect status must be",
            "`timeout` applies only",
            "`bad name` is not a valid header name",
            "`content-length` is managed by the proxy",
            "header value must not contain",
            "at least one cluster with a positive weight",
            "unknown retry_on `sometimes`",
            "backoff_max must not be less",
            "exactly one of `cluster`",
            "virtual host `a` is defined twice",
            "domain `A.com` is already used",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn route_names_are_unique_within_a_virtual_host() {
        let text = r#"
[[virtual_host]]
name = "a"
domains = ["a"]
[[virtual_host.route]]
name = "r"
match = { prefix = "/x" }
cluster = "v1"
[[virtual_host.route]]
name = "r"
match = { prefix = "/" }
cluster = "v1"
[[virtual_host.route]]
name = "a/3"
match = { prefix = "/" }
cluster = "v1"
[[virtual_host.route]]
match = { prefix = "/" }
cluster = "v1"
[[virtual_host]]
name = "b"
domains = ["b"]
[[virtual_host.route]]
name = "r"
match = { prefix = "/" }
cluster = "v1"
"#;
        let errs = errors(text);
        assert_eq!(
            errs,
            vec![
                (
                    10,
                    "route `r` is defined twice in virtual host `a` (route names must be unique within a virtual host)".to_string()
                ),
                (
                    17,
                    "route `a/3` is defined twice in virtual host `a` (route names must be unique within a virtual host)".to_string()
                ),
            ]
        );
    }

    #[test]
    fn policies_validate() {
        let t = table_from_toml(
            r#"
            [[virtual_host]]
            name = "reviews"
            domains = ["*"]
            rate_limit = { tokens = 100, fill_interval = "1s", tokens_per_fill = 100 }

            [[virtual_host.route]]
            name = "chaos"
            match = { prefix = "/api/" }
            cluster = "v1"
            fault = { delay = "2s", delay_percent = 10.0, abort_status = 503, abort_percent = 5 }
            rate_limit = { tokens = 10, fill_interval = "50ms", tokens_per_fill = 1, response_headers = true }
            mirror = { cluster = "v2-canary", percent = 12.5 }

            [[virtual_host.route]]
            name = "slow"
            match = { prefix = "/slow" }
            cluster = "v1"
            fault = { delay = "250ms", delay_percent = 100 }
            mirror = { cluster = "v1" }

            [[virtual_host.route]]
            match = { path = "/healthz" }
            direct_response = { status = 200 }
            rate_limit = { tokens = 1, fill_interval = "1m", tokens_per_fill = 5 }
            "#,
        );
        let vh = &t.virtual_hosts[0];
        let vh_limit = vh.rate_limit.unwrap();
        assert_eq!(vh_limit.bucket.max_tokens(), 100);
        assert_eq!(vh_limit.bucket.fill_interval(), Duration::from_secs(1));
        assert!(!vh_limit.response_headers);

        let chaos = &vh.routes[0];
        let RouteAction::Forward(f) = &chaos.action else {
            panic!()
        };
        let fault = f.fault.unwrap();
        let delay = fault.delay.unwrap();
        assert_eq!(delay.duration, Duration::from_secs(2));
        assert_eq!(delay.percent.parts_per_million(), 100_000);
        let abort = fault.abort.unwrap();
        assert_eq!(
            (abort.status, abort.percent.parts_per_million()),
            (503, 50_000)
        );
        let mirror = f.mirror.as_ref().unwrap();
        assert_eq!(
            (&*mirror.cluster.name, mirror.cluster.index),
            ("v2-canary", 2)
        );
        assert_eq!(mirror.percent.parts_per_million(), 125_000);
        let rl = chaos.rate_limit.unwrap();
        assert_eq!(
            (
                rl.bucket.max_tokens(),
                rl.bucket.tokens_per_fill(),
                rl.bucket.fill_interval()
            ),
            (10, 1, Duration::from_millis(50))
        );
        assert!(rl.response_headers);

        let RouteAction::Forward(f) = &vh.routes[1].action else {
            panic!()
        };
        assert!(f.fault.unwrap().abort.is_none());
        // No percentage: every request is mirrored (Istio's default).
        assert_eq!(f.mirror.as_ref().unwrap().percent, Percent::HUNDRED);
        assert!(vh.routes[1].rate_limit.is_none());
        // A rate limit applies to local replies too.
        assert_eq!(vh.routes[2].rate_limit.unwrap().bucket.tokens_per_fill(), 5);
    }

    #[test]
    fn policy_errors_have_lines_and_say_what_to_do() {
        let text = r#"
[[virtual_host]]
name = "a"
domains = ["*"]
rate_limit = { tokens = 0, fill_interval = "10ms", tokens_per_fill = 1 }
[[virtual_host.route]]
name = "x"
match = { prefix = "/x" }
cluster = "v1"
fault = { abort_status = 503, abort_percent = 150.0 }
[[virtual_host.route]]
name = "y"
match = { prefix = "/y" }
cluster = "v1"
fault = { delay = "soon", delay_percent = -1, abort_status = 700, abort_percent = 1 }
[[virtual_host.route]]
name = "z"
match = { prefix = "/z" }
cluster = "v1"
fault = { delay = "1s", abort_percent = 5 }
[[virtual_host.route]]
name = "e"
match = { prefix = "/e" }
cluster = "v1"
fault = {}
mirror = { cluster = "shadow", percent = 101 }
[[virtual_host.route]]
name = "d"
match = { prefix = "/d" }
direct_response = { status = 200 }
fault = { abort_status = 503, abort_percent = 1 }
mirror = { cluster = "v1" }
[[virtual_host.route]]
name = "r"
match = { prefix = "/r" }
cluster = "v1"
rate_limit = { tokens = 5, fill_interval = "often", tokens_per_fill = 0 }
fault = { delay = "0s", delay_percent = 1 }
"#;
        let errs = errors(text);
        let got: Vec<(usize, &str)> = errs.iter().map(|(l, m)| (*l, m.as_str())).collect();
        let want: Vec<(usize, &str)> = vec![
            (5, "virtual host `a`: rate_limit.tokens must be within 1..=4294967295, got 0"),
            (5, "virtual host `a`: rate_limit.fill_interval must be at least 50ms (Envoy's minimum; a faster refill costs more than it smooths), got 10ms"),
            (10, "route `x`: fault.abort_percent must be within 0..=100, got 150"),
            (15, "route `y`: fault.delay `soon` is not a duration (use a number with ms, s, m or h, e.g. \"250ms\", \"2s\")"),
            (15, "route `y`: fault.delay_percent must be within 0..=100, got -1"),
            (15, "route `y`: fault.abort_status must be an HTTP status within 200..=599, got 700"),
            (20, "route `z`: fault.delay needs `delay_percent`, the share of requests to delay (0..=100)"),
            (20, "route `z`: fault.abort_percent needs `abort_status`, the status to answer with (e.g. 503)"),
            (25, "route `e`: fault needs `delay` with `delay_percent`, `abort_status` with `abort_percent`, or both"),
            (26, "route `e`: mirror.cluster: unknown cluster `shadow` (defined: v1, v2, v2-canary, users, debug); define it in a [[cluster]] table or fix the name"),
            (26, "route `e`: mirror.percent must be within 0..=100, got 101"),
            (31, "`fault` applies only to `cluster` or `weighted_clusters` routes"),
            (32, "`mirror` applies only to `cluster` or `weighted_clusters` routes"),
            (37, "route `r`: rate_limit.fill_interval `often` is not a duration (use a number with ms, s, m or h, e.g. \"1s\"; at least 50ms)"),
            (37, "route `r`: rate_limit.tokens_per_fill must be within 1..=4294967295, got 0"),
            (38, "route `r`: fault.delay must be longer than 0s (remove `delay` and `delay_percent` to inject no delay)"),
        ];
        assert_eq!(got, want, "{errs:#?}");
    }

    #[test]
    fn unknown_cluster_lists_the_defined_ones() {
        let text = "[[virtual_host]]\nname = \"a\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"v3\"\n";
        let raw: RawRouteConfig = toml::from_str(text).unwrap();
        let errs = raw.validate(&[]).unwrap_err();
        assert!(errs[0].message.contains("(defined: none)"), "{errs:?}");
        assert_eq!(errors(text)[0].0, 6);
        let many: Vec<String> = (0..25).map(|i| format!("c{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(list_names(&many).ends_with("c19 and 5 more"));
    }

    #[test]
    fn policy_keys_are_checked_for_typos() {
        for (table, typo) in [
            ("fault = { delay = \"1s\", delay_pct = 5 }", "delay_pct"),
            (
                "rate_limit = { tokens = 1, fill_interval = \"1s\", tokens_per_fill = 1, burst = 2 }",
                "burst",
            ),
            ("mirror = { cluster = \"v1\", percentage = 5 }", "percentage"),
        ] {
            let text = format!("[[virtual_host]]\nname = \"a\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"v1\"\n{table}\n");
            let e = toml::from_str::<RawRouteConfig>(&text).unwrap_err();
            assert!(e.to_string().contains(typo), "{e}");
            assert_eq!(
                e.span().map(|s| text[..s.start].matches('\n').count() + 1),
                Some(7),
                "{e}"
            );
        }
        // A bucket without tokens_per_fill is refused (Envoy would default to 1).
        let text = "[[virtual_host]]\nname = \"a\"\ndomains = [\"*\"]\nrate_limit = { tokens = 100, fill_interval = \"1s\" }\n";
        let e = toml::from_str::<RawRouteConfig>(text).unwrap_err();
        assert!(e.to_string().contains("tokens_per_fill"), "{e}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "[[virtual_host]]\nname = \"a\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\", prefx = \"/\" }\ncluster = \"v1\"\n";
        let e = toml::from_str::<RawRouteConfig>(text).unwrap_err();
        assert!(e.to_string().contains("prefx"), "{e}");
        assert_eq!(
            e.span().map(|s| text[..s.start].matches('\n').count() + 1),
            Some(5)
        );
    }
}
