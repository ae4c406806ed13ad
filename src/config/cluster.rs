//! `[[cluster]]`: endpoints and how they are found (discovery), balanced,
//! health-checked, ejected and limited. Raw TOML types and their validation;
//! the keys are Envoy's and Istio's (DestinationRule) names, so a
//! DestinationRule translates line by line (README: "Istio to Remora").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use super::security::{ClusterTls, RawClusterTls, Tls};
use super::{ser_duration, Validator};
use crate::upstream::balance::{self, LbPolicy};
use crate::upstream::breaker::BreakerConfig;
use crate::upstream::health::{HealthCheckConfig, HealthCheckKind};
use crate::upstream::outlier::OutlierConfig;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub name: Spanned<String>,
    /// Static: `"ip:port"` or `{ address, weight, locality }`; dns: the
    /// same with `host:port` names.
    pub endpoints: Option<Spanned<Vec<Spanned<RawEndpoint>>>>,
    pub connect_timeout: Option<Spanned<String>>,
    /// "static" (default), "dns" or "file".
    pub discovery: Option<Spanned<String>>,
    pub dns_refresh_rate: Option<Spanned<String>>,
    pub dns_resolvers: Option<Vec<Spanned<String>>>,
    pub endpoints_file: Option<Spanned<String>>,
    /// "round_robin", "least_request" (default, as Istio), "random",
    /// "ring_hash", "maglev".
    pub lb_policy: Option<Spanned<String>>,
    pub least_request: Option<RawLeastRequest>,
    pub ring_hash: Option<RawRingHash>,
    pub maglev: Option<RawMaglev>,
    pub hash_policy: Option<Vec<Spanned<RawHashPolicy>>>,
    /// Percent of healthy endpoints under which the balancer uses all of
    /// them (Envoy default 50).
    pub healthy_panic_threshold: Option<Spanned<i64>>,
    pub health_check: Option<Spanned<RawHealthCheck>>,
    pub outlier_detection: Option<RawOutlier>,
    pub circuit_breakers: Option<RawBreakers>,
    /// Istio's DestinationRule `trafficPolicy.tls`.
    pub tls: Option<Spanned<RawClusterTls>>,
    /// HTTP/2 toward the endpoints: `true`, `false` (default), or `"auto"`
    /// (the downstream's protocol: Istio's `useClientProtocol`).
    pub http2: Option<Spanned<RawHttp2Mode>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawHttp2Mode {
    Bool(bool),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawEndpoint {
    Address(String),
    Table(RawEndpointTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpointTable {
    pub address: String,
    pub weight: Option<i64>,
    pub locality: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLeastRequest {
    pub choice_count: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRingHash {
    pub minimum_ring_size: Option<Spanned<i64>>,
    pub maximum_ring_size: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMaglev {
    pub table_size: Option<Spanned<i64>>,
}

/// One hash source (Istio consistentHash): exactly one key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHashPolicy {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub source_ip: Option<bool>,
    pub query_parameter: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// "http" (default when `path` is set) or "tcp".
    #[serde(rename = "type")]
    pub kind: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub host: Option<Spanned<String>>,
    /// Half-open ranges `[[200, 300], [404, 405]]` (Envoy's
    /// expected_statuses); default `[[200, 201]]`.
    pub expected_statuses: Option<Spanned<Vec<(i64, i64)>>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub healthy_threshold: Option<Spanned<i64>>,
    pub unhealthy_threshold: Option<Spanned<i64>>,
    pub interval_jitter: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOutlier {
    pub consecutive_5xx_errors: Option<Spanned<i64>>,
    pub consecutive_gateway_errors: Option<Spanned<i64>>,
    pub consecutive_local_origin_failures: Option<Spanned<i64>>,
    pub split_external_local_origin_errors: Option<bool>,
    pub interval: Option<Spanned<String>>,
    pub base_ejection_time: Option<Spanned<String>>,
    pub max_ejection_time: Option<Spanned<String>>,
    pub max_ejection_percent: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBreakers {
    pub max_connections: Option<Spanned<i64>>,
    pub max_pending_requests: Option<Spanned<i64>>,
    pub max_requests: Option<Spanned<i64>>,
    pub max_retries: Option<Spanned<i64>>,
    pub max_requests_per_connection: Option<Spanned<i64>>,
}

/// A configured endpoint: an address (static and file discovery) or a name
/// to resolve (dns), with its balancing weight and locality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// `ip:port`, or `host:port` for dns discovery.
    pub address: String,
    /// Load-balancing weight, 1..=128 (Envoy's load_balancing_weight range
    /// starts at 1; Istio's locality weights are percentages).
    pub weight: u32,
    /// "region/zone/subzone" (empty: unknown).
    pub locality: String,
}

/// How a cluster's endpoint set is found (Envoy's cluster `type`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Discovery {
    /// The `endpoints` list as written (STATIC).
    Static,
    /// `endpoints` are names, re-resolved every `refresh_rate` (STRICT_DNS).
    Dns {
        #[serde(serialize_with = "ser_duration")]
        refresh_rate: Duration,
        /// Empty: the nameservers of /etc/resolv.conf.
        resolvers: Vec<SocketAddr>,
    },
    /// A JSON endpoints file, watched and swapped atomically (like EDS).
    File { path: PathBuf },
}

/// Where a request's hash for ring hash / Maglev comes from (Istio
/// consistentHash); the first source present in the request wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashPolicy {
    /// A request header's value (name lower-case).
    Header(String),
    /// A cookie's value.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
    /// A query parameter's value.
    QueryParameter(String),
}

/// A named set of endpoints and the policy for reaching them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Cluster {
    pub name: String,
    /// Static and dns clusters: as configured; file clusters: empty.
    pub endpoints: Vec<Endpoint>,
    pub discovery: Discovery,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_debug")]
    pub lb_policy: LbPolicy,
    pub hash_policy: Vec<HashPolicy>,
    /// Percent healthy below which all endpoints are used (Envoy's panic mode).
    pub healthy_panic_threshold: u32,
    #[serde(serialize_with = "ser_debug")]
    pub health_check: Option<Arc<HealthCheckConfig>>,
    pub outlier_detection: Option<OutlierConfig>,
    pub circuit_breakers: BreakerConfig,
    /// None: plaintext (no `tls`, or mode DISABLE).
    pub tls: Option<ClusterTls>,
    /// The HTTP version spoken to the endpoints.
    pub http2: UpstreamHttp,
}

/// The HTTP version a cluster's requests go out with (Envoy's
/// `http2_protocol_options` / `use_downstream_protocol_config`; Istio's
/// `h2UpgradePolicy` and `useClientProtocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamHttp {
    /// HTTP/1.1 (Envoy's default for a cluster).
    #[default]
    Http1,
    /// HTTP/2 with prior knowledge (or ALPN `h2` over TLS).
    Http2,
    /// Whatever the downstream spoke.
    Auto,
}

impl UpstreamHttp {
    /// HTTP/2 toward the upstream for a request that came in over HTTP/2
    /// (`downstream_h2`) or HTTP/1.
    pub fn use_h2(self, downstream_h2: bool) -> bool {
        match self {
            UpstreamHttp::Http1 => false,
            UpstreamHttp::Http2 => true,
            UpstreamHttp::Auto => downstream_h2,
        }
    }
}

impl Cluster {
    /// The statically known endpoint addresses (static clusters).
    pub fn static_addresses(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.endpoints
            .iter()
            .filter(|_| self.discovery == Discovery::Static)
            .filter_map(|e| e.address.parse().ok())
    }
}

fn ser_debug<T: std::fmt::Debug, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

/// Envoy's default for Cluster.connect_timeout is 5 s; Istio sets 10 s.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Envoy's dns_refresh_rate default.
const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
const MAX_WEIGHT: i64 = 128;

impl Validator<'_> {
    pub(super) fn cluster(&mut self, raw: RawCluster, tls: &Tls) -> Cluster {
        let name = raw.name.get_ref().clone();
        if name.is_empty() {
            self.error(Some(raw.name.span()), "cluster name is empty".into());
        }
        let discovery = self.discovery(&name, &raw);
        let endpoints = self.endpoints(&name, &raw, &discovery);
        let lb_policy = self.lb_policy(&name, &raw);
        let hash_policy = self.hash_policy(&name, &raw, &lb_policy);
        let healthy_panic_threshold = raw
            .healthy_panic_threshold
            .as_ref()
            .and_then(|v| self.int_in(v, 0, 100, "healthy_panic_threshold"))
            .map_or(50, |n| n as u32);
        let health_check = raw
            .health_check
            .as_ref()
            .and_then(|h| self.health_check(&name, h))
            .map(Arc::new);
        let outlier_detection = raw.outlier_detection.map(|o| self.outlier(o));
        let circuit_breakers = raw
            .circuit_breakers
            .map(|b| self.breakers(b))
            .unwrap_or_default();
        let cluster_tls = self.cluster_tls(&name, raw.tls, tls);
        let http2 = match raw.http2 {
            None => UpstreamHttp::Http1,
            Some(v) => {
                match v.get_ref() {
                    RawHttp2Mode::Bool(false) => UpstreamHttp::Http1,
                    RawHttp2Mode::Bool(true) => UpstreamHttp::Http2,
                    RawHttp2Mode::Name(n) if n == "auto" => UpstreamHttp::Auto,
                    RawHttp2Mode::Name(n) => {
                        self.error(
                        Some(v.span()),
                        format!("cluster `{name}`: http2 = \"{n}\" is not one of true, false, \"auto\""),
                    );
                        UpstreamHttp::Http1
                    }
                }
            }
        };
        Cluster {
            name,
            endpoints,
            discovery,
            connect_timeout: self.duration_or(raw.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
            lb_policy,
            hash_policy,
            healthy_panic_threshold,
            health_check,
            outlier_detection,
            circuit_breakers,
            tls: cluster_tls,
            http2,
        }
    }

    fn discovery(&mut self, name: &str, raw: &RawCluster) -> Discovery {
        let kind = raw
            .discovery
            .as_ref()
            .map_or("static", |d| d.get_ref().as_str());
        let misplaced = |v: &mut Validator, span: Option<std::ops::Range<usize>>, key: &str| {
            v.error(
                span,
                format!("cluster `{name}`: {key} applies only to discovery = \"dns\""),
            )
        };
        if kind != "dns" {
            if let Some(r) = &raw.dns_refresh_rate {
                misplaced(self, Some(r.span()), "dns_refresh_rate");
            }
            if let Some(r) = raw.dns_resolvers.as_ref().and_then(|r| r.first()) {
                misplaced(self, Some(r.span()), "dns_resolvers");
            }
        }
        if kind != "file" {
            if let Some(f) = &raw.endpoints_file {
                self.error(
                    Some(f.span()),
                    format!("cluster `{name}`: endpoints_file needs discovery = \"file\""),
                );
            }
        }
        match kind {
            "static" => Discovery::Static,
            "dns" => {
                let mut resolvers = Vec::new();
                for r in raw.dns_resolvers.iter().flatten() {
                    let text = r.get_ref();
                    // A bare IP means port 53.
                    let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                        text.parse::<std::net::IpAddr>()
                            .ok()
                            .map(|ip| SocketAddr::new(ip, 53))
                    });
                    match parsed {
                        Some(a) => resolvers.push(a),
                        None => self.error(
                            Some(r.span()),
                            format!("cluster `{name}`: dns resolver `{text}` is not an IP address or ip:port"),
                        ),
                    }
                }
                Discovery::Dns {
                    refresh_rate: self
                        .duration_or(raw.dns_refresh_rate.clone(), DEFAULT_DNS_REFRESH),
                    resolvers,
                }
            }
            "file" => match &raw.endpoints_file {
                Some(f) if !f.get_ref().is_empty() => Discovery::File {
                    path: PathBuf::from(f.get_ref()),
                },
                _ => {
                    self.error(
                        raw.discovery.as_ref().map(Spanned::span),
                        format!("cluster `{name}`: discovery = \"file\" needs endpoints_file"),
                    );
                    Discovery::Static
                }
            },
            other => {
                self.error(
                    raw.discovery.as_ref().map(Spanned::span),
                    format!("cluster `{name}`: discovery `{other}` is not one of \"static\", \"dns\", \"file\""),
                );
                Discovery::Static
            }
        }
    }

    fn endpoints(&mut self, name: &str, raw: &RawCluster, discovery: &Discovery) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = Vec::new();
        let list = raw.endpoints.as_ref();
        // `discovery = "file"` without endpoints_file resolves to Static after
        // its error; it still lacks a file, not `endpoints`.
        let file = matches!(discovery, Discovery::File { .. })
            || raw
                .discovery
                .as_ref()
                .is_some_and(|d| d.get_ref() == "file");
        match (file, list) {
            (true, Some(l)) => {
                self.error(
                    Some(l.span()),
                    format!("cluster `{name}`: a file cluster takes its endpoints from endpoints_file, not `endpoints`"),
                );
                return out;
            }
            (true, None) => return out,
            (_, None) => {
                self.error(
                    Some(raw.name.span()),
                    format!("cluster `{name}` has no endpoints"),
                );
                return out;
            }
            (_, Some(l)) if l.get_ref().is_empty() => {
                self.error(Some(l.span()), format!("cluster `{name}` has no endpoints"));
                return out;
            }
            _ => {}
        }
        let dns = matches!(discovery, Discovery::Dns { .. });
        for e in list.into_iter().flat_map(|l| l.get_ref()) {
            let span = Some(e.span());
            let (address, weight, locality) = match e.get_ref() {
                RawEndpoint::Address(a) => (a.clone(), None, String::new()),
                RawEndpoint::Table(t) => (
                    t.address.clone(),
                    t.weight,
                    t.locality.clone().unwrap_or_default(),
                ),
            };
            let weight = match weight {
                None => 1,
                Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
                Some(w) => {
                    self.error(
                        span.clone(),
                        format!("cluster `{name}`: endpoint weight {w} is out of range (1..={MAX_WEIGHT})"),
                    );
                    1
                }
            };
            let ok = if dns {
                dns_name_ok(&address)
            } else {
                address
                    .parse::<SocketAddr>()
                    .is_ok_and(|a| a.port() != 0 && !a.ip().is_unspecified())
            };
            if !ok {
                let hint = if dns {
                    "is not a host:port (a DNS name or IP address and a port 1-65535)"
                } else if address
                    .rsplit_once(':')
                    .is_some_and(|(h, _)| h.bytes().any(|b| b.is_ascii_alphabetic()))
                    && dns_name_ok(&address)
                {
                    "is not an IP address:port; names need discovery = \"dns\""
                } else {
                    "is not a connectable address:port"
                };
                self.error(
                    span,
                    format!("cluster `{name}`: endpoint `{address}` {hint}"),
                );
                continue;
            }
            if out.iter().any(|o| o.address == address) {
                self.error(
                    span,
                    format!("cluster `{name}`: endpoint `{address}` is listed twice"),
                );
                continue;
            }
            out.push(Endpoint {
                address,
                weight,
                locality,
            });
        }
        out
    }

    fn lb_policy(&mut self, name: &str, raw: &RawCluster) -> LbPolicy {
        let kind = raw
            .lb_policy
            .as_ref()
            .map_or("least_request", |p| p.get_ref().as_str());
        let int = |v: &mut Validator, x: &Option<Spanned<i64>>, min: i64, max: i64, what: &str| {
            x.as_ref().and_then(|x| v.int_in(x, min, max, what))
        };
        let sub_misplaced = |v: &mut Validator, key: &str, owner: &str| {
            v.error(
                raw.lb_policy
                    .as_ref()
                    .map(Spanned::span)
                    .or(Some(raw.name.span())),
                format!("cluster `{name}`: `{key}` settings need lb_policy = \"{owner}\""),
            )
        };
        if raw.least_request.is_some() && kind != "least_request" {
            sub_misplaced(self, "least_request", "least_request");
        }
        if raw.ring_hash.is_some() && kind != "ring_hash" {
            sub_misplaced(self, "ring_hash", "ring_hash");
        }
        if raw.maglev.is_some() && kind != "maglev" {
            sub_misplaced(self, "maglev", "maglev");
        }
        let policy = match kind {
            "round_robin" => LbPolicy::RoundRobin,
            "random" => LbPolicy::Random,
            "least_request" => LbPolicy::LeastRequest {
                choice_count: raw
                    .least_request
                    .as_ref()
                    .and_then(|l| int(self, &l.choice_count, 2, 100, "least_request.choice_count"))
                    .map_or(balance::DEFAULT_CHOICE_COUNT, |n| n as u32),
            },
            "ring_hash" => {
                let r = raw.ring_hash.as_ref();
                let max = balance::MAX_RING_SIZE as i64;
                let min_size = r
                    .and_then(|r| {
                        int(
                            self,
                            &r.minimum_ring_size,
                            1,
                            max,
                            "ring_hash.minimum_ring_size",
                        )
                    })
                    .map_or(balance::DEFAULT_MIN_RING_SIZE, |n| n as u64);
                let max_size = r
                    .and_then(|r| {
                        int(
                            self,
                            &r.maximum_ring_size,
                            1,
                            max,
                            "ring_hash.maximum_ring_size",
                        )
                    })
                    .map_or(balance::MAX_RING_SIZE, |n| n as u64);
                LbPolicy::RingHash {
                    minimum_ring_size: min_size,
                    maximum_ring_size: max_size,
                }
            }
            "maglev" => LbPolicy::Maglev {
                table_size: raw
                    .maglev
                    .as_ref()
                    .and_then(|m| {
                        int(
                            self,
                            &m.table_size,
                            2,
                            balance::MAX_MAGLEV_TABLE_SIZE as i64,
                            "maglev.table_size",
                        )
                    })
                    .map_or(balance::DEFAULT_MAGLEV_TABLE_SIZE, |n| n as u64),
            },
            other => {
                self.error(
                    raw.lb_policy.as_ref().map(Spanned::span),
                    format!("cluster `{name}`: lb_policy `{other}` is not one of \"round_robin\", \"least_request\", \"random\", \"ring_hash\", \"maglev\""),
                );
                LbPolicy::LEAST_REQUEST
            }
        };
        if let Err(e) = policy.validate() {
            self.error(
                raw.lb_policy.as_ref().map(Spanned::span),
                format!("cluster `{name}`: {e}"),
            );
        }
        policy
    }

    fn hash_policy(&mut self, name: &str, raw: &RawCluster, lb: &LbPolicy) -> Vec<HashPolicy> {
        let mut out = Vec::new();
        let Some(list) = &raw.hash_policy else {
            return out;
        };
        if !matches!(lb, LbPolicy::RingHash { .. } | LbPolicy::Maglev { .. }) {
            if let Some(first) = list.first() {
                self.error(
                    Some(first.span()),
                    format!("cluster `{name}`: hash_policy needs lb_policy = \"ring_hash\" or \"maglev\""),
                );
            }
        }
        for h in list {
            let r = h.get_ref();
            let mut found = Vec::new();
            if let Some(v) = &r.header {
                found.push(HashPolicy::Header(v.to_ascii_lowercase()));
            }
            if let Some(v) = &r.cookie {
                found.push(HashPolicy::Cookie(v.clone()));
            }
            if r.source_ip == Some(true) {
                found.push(HashPolicy::SourceIp);
            }
            if let Some(v) = &r.query_parameter {
                found.push(HashPolicy::QueryParameter(v.clone()));
            }
            if found.len() != 1 {
                self.error(
                    Some(h.span()),
                    format!("cluster `{name}`: each hash_policy entry names exactly one of header, cookie, source_ip = true, query_parameter"),
                );
            }
            out.extend(found.into_iter().take(1));
        }
        out
    }

    fn health_check(
        &mut self,
        name: &str,
        raw: &Spanned<RawHealthCheck>,
    ) -> Option<HealthCheckConfig> {
        let r = raw.get_ref();
        let kind_name = r
            .kind
            .as_ref()
            .map_or("http", |k| k.get_ref().as_str())
            .to_string();
        let kind = match kind_name.as_str() {
            "http" => {
                let mut statuses = Vec::new();
                for (lo, hi) in r.expected_statuses.iter().flat_map(|s| s.get_ref()) {
                    if !(100..=600).contains(lo) || !(100..=600).contains(hi) || lo >= hi {
                        self.error(
                            r.expected_statuses.as_ref().map(Spanned::span),
                            format!("cluster `{name}`: expected_statuses [{lo}, {hi}] is not a half-open range of statuses within 100..600"),
                        );
                    } else {
                        statuses.push((*lo as u16, *hi as u16));
                    }
                }
                let mut kind = HealthCheckKind::http(
                    r.path
                        .as_ref()
                        .map_or("/".to_string(), |p| p.get_ref().clone()),
                );
                if let HealthCheckKind::Http {
                    host,
                    expected_statuses,
                    ..
                } = &mut kind
                {
                    *host = r.host.as_ref().map(|h| h.get_ref().clone());
                    if !statuses.is_empty() {
                        *expected_statuses = statuses;
                    }
                }
                kind
            }
            "tcp" => {
                for (present, key) in [
                    (r.path.is_some(), "path"),
                    (r.host.is_some(), "host"),
                    (r.expected_statuses.is_some(), "expected_statuses"),
                ] {
                    if present {
                        self.error(
                            Some(raw.span()),
                            format!("cluster `{name}`: health_check.{key} applies only to type = \"http\""),
                        );
                    }
                }
                HealthCheckKind::Tcp
            }
            other => {
                self.error(
                    r.kind.as_ref().map(Spanned::span),
                    format!(
                        "cluster `{name}`: health_check type `{other}` is not \"http\" or \"tcp\""
                    ),
                );
                return None;
            }
        };
        let threshold = |v: &mut Validator, x: &Option<Spanned<i64>>, what: &str, default: u32| {
            x.as_ref()
                .and_then(|x| v.int_in(x, 1, 1000, what))
                .map_or(default, |n| n as u32)
        };
        let cfg = HealthCheckConfig {
            kind,
            // Istio/Envoy have no default interval; 5 s is what Kubernetes
            // probes and most examples use.
            interval: self.duration_or(r.interval.clone(), Duration::from_secs(5)),
            timeout: self.duration_or(r.timeout.clone(), Duration::from_secs(1)),
            healthy_threshold: threshold(
                self,
                &r.healthy_threshold,
                "health_check.healthy_threshold",
                1,
            ),
            unhealthy_threshold: threshold(
                self,
                &r.unhealthy_threshold,
                "health_check.unhealthy_threshold",
                3,
            ),
            interval_jitter: self.duration_or_zero(r.interval_jitter.clone(), Duration::ZERO),
        };
        if let Err(e) = cfg.validate() {
            self.error(
                Some(raw.span()),
                format!("cluster `{name}`: health_check: {e}"),
            );
            return None;
        }
        Some(cfg)
    }

    fn outlier(&mut self, r: RawOutlier) -> OutlierConfig {
        let d = OutlierConfig::default();
        let count = |v: &mut Validator, x: Option<Spanned<i64>>, what: &str, default: u32| {
            x.and_then(|x| v.int_in(&x, 0, 1_000_000, what))
                .map_or(default, |n| n as u32)
        };
        let base_ejection_time = self.duration_or(r.base_ejection_time, d.base_ejection_time);
        OutlierConfig {
            consecutive_5xx_errors: count(
                self,
                r.consecutive_5xx_errors,
                "outlier_detection.consecutive_5xx_errors",
                d.consecutive_5xx_errors,
            ),
            consecutive_gateway_errors: count(
                self,
                r.consecutive_gateway_errors,
                "outlier_detection.consecutive_gateway_errors",
                d.consecutive_gateway_errors,
            ),
            consecutive_local_origin_failures: count(
                self,
                r.consecutive_local_origin_failures,
                "outlier_detection.consecutive_local_origin_failures",
                d.consecutive_local_origin_failures,
            ),
            split_external_local_origin_errors: r
                .split_external_local_origin_errors
                .unwrap_or(false),
            interval: self.duration_or(r.interval, d.interval),
            max_ejection_time: self.duration_or(
                r.max_ejection_time,
                d.max_ejection_time.max(base_ejection_time),
            ),
            base_ejection_time,
            max_ejection_percent: r
                .max_ejection_percent
                .and_then(|x| self.int_in(&x, 0, 100, "outlier_detection.max_ejection_percent"))
                .map_or(d.max_ejection_percent, |n| n as u32),
        }
    }

    fn breakers(&mut self, r: RawBreakers) -> BreakerConfig {
        let d = BreakerConfig::default();
        let limit = |v: &mut Validator, x: Option<Spanned<i64>>, what: &str, default: u32| {
            x.and_then(|x| v.int_in(&x, 0, u32::MAX as i64, what))
                .map_or(default, |n| n as u32)
        };
        BreakerConfig {
            max_connections: limit(
                self,
                r.max_connections,
                "circuit_breakers.max_connections",
                d.max_connections,
            ),
            max_pending_requests: limit(
                self,
                r.max_pending_requests,
                "circuit_breakers.max_pending_requests",
                d.max_pending_requests,
            ),
            max_requests: limit(
                self,
                r.max_requests,
                "circuit_breakers.max_requests",
                d.max_requests,
            ),
            max_retries: limit(
                self,
                r.max_retries,
                "circuit_breakers.max_retries",
                d.max_retries,
            ),
            max_requests_per_connection: limit(
                self,
                r.max_requests_per_connection,
                "circuit_breakers.max_requests_per_connection",
                d.max_requests_per_connection,
            ),
        }
    }
}

/// `host:port` where host is an IP address or a DNS name (RFC 1123 labels).
fn dns_name_ok(s: &str) -> bool {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return a.port() != 0;
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host = host.strip_suffix('.').unwrap_or(host);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    port_ok && !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn errors(toml: &str) -> Vec<String> {
        match Config::from_toml(toml, None) {
            Ok(_) => vec![],
            Err(e) => e
                .errors
                .iter()
                .map(|d| format!("{}: {}", d.line, d.message))
                .collect(),
        }
    }

    const HEAD: &str = "[capture]\nenabled = false\n";

    #[test]
    fn full_cluster_is_accepted() {
        let c = Config::from_toml(
            &format!(
                r#"{HEAD}
[[cluster]]
name = "reviews"
endpoints = ["10.0.0.1:80", {{ address = "10.0.0.2:80", weight = 3, locality = "r1/z1/s1" }}]
lb_policy = "ring_hash"
ring_hash = {{ minimum_ring_size = 2048 }}
hash_policy = [{{ header = "X-User" }}, {{ source_ip = true }}]
healthy_panic_threshold = 30
health_check = {{ path = "/healthz", interval = "2s", timeout = "500ms", unhealthy_threshold = 2, expected_statuses = [[200, 300]] }}
outlier_detection = {{ consecutive_5xx_errors = 3, base_ejection_time = "10s", max_ejection_percent = 50 }}
circuit_breakers = {{ max_connections = 100, max_requests = 10, max_requests_per_connection = 5 }}
[[cluster]]
name = "dns"
discovery = "dns"
endpoints = ["reviews.default.svc.cluster.local:9080"]
dns_refresh_rate = "1s"
dns_resolvers = ["127.0.0.1:5353", "10.0.0.10"]
[[cluster]]
name = "eds"
discovery = "file"
endpoints_file = "/etc/remora/eds.json"
"#
            ),
            None,
        )
        .unwrap();
        let r = &c.clusters[0];
        assert_eq!(r.endpoints[1].weight, 3);
        assert_eq!(r.endpoints[1].locality, "r1/z1/s1");
        assert_eq!(
            r.lb_policy,
            LbPolicy::RingHash {
                minimum_ring_size: 2048,
                maximum_ring_size: balance::MAX_RING_SIZE
            }
        );
        assert_eq!(
            r.hash_policy,
            vec![HashPolicy::Header("x-user".into()), HashPolicy::SourceIp]
        );
        assert_eq!(r.healthy_panic_threshold, 30);
        let hc = r.health_check.as_ref().unwrap();
        assert_eq!(hc.unhealthy_threshold, 2);
        assert_eq!(hc.healthy_threshold, 1);
        let od = r.outlier_detection.as_ref().unwrap();
        assert_eq!(
            (od.consecutive_5xx_errors, od.max_ejection_percent),
            (3, 50)
        );
        assert_eq!(od.max_ejection_time, Duration::from_secs(300));
        assert_eq!(r.circuit_breakers.max_requests, 10);
        assert_eq!(r.circuit_breakers.max_pending_requests, 1024);
        assert_eq!(
            c.clusters[1].discovery,
            Discovery::Dns {
                refresh_rate: Duration::from_secs(1),
                resolvers: vec![
                    "127.0.0.1:5353".parse().unwrap(),
                    "10.0.0.10:53".parse().unwrap()
                ]
            }
        );
        assert_eq!(
            c.clusters[2].discovery,
            Discovery::File {
                path: "/etc/remora/eds.json".into()
            }
        );
        // Istio's default balancer.
        let d = Config::from_toml(
            &format!("{HEAD}[[cluster]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n"),
            None,
        )
        .unwrap();
        assert_eq!(d.clusters[0].lb_policy, LbPolicy::LEAST_REQUEST);
        assert!(d.clusters[0].outlier_detection.is_none());
    }

    #[test]
    fn bad_clusters_are_rejected_with_lines() {
        let cases: &[(&str, &str)] = &[
            ("endpoints = [\"backend.svc:80\"]", "5: cluster `a`: endpoint `backend.svc:80` is not an IP address:port; names need discovery = \"dns\""),
            ("endpoints = [{ address = \"10.0.0.1:80\", weight = 0 }]", "5: cluster `a`: endpoint weight 0 is out of range (1..=128)"),
            ("endpoints = [\"10.0.0.1:80\", \"10.0.0.1:80\"]", "5: cluster `a`: endpoint `10.0.0.1:80` is listed twice"),
            ("endpoints = [\"10.0.0.1:80\"]\nlb_policy = \"fastest\"", "6: cluster `a`: lb_policy `fastest` is not one of"),
            ("endpoints = [\"10.0.0.1:80\"]\nlb_policy = \"maglev\"\nmaglev = { table_size = 100 }", "6: cluster `a`: maglev table_size must be a prime"),
            ("endpoints = [\"10.0.0.1:80\"]\nhash_policy = [{ header = \"x\" }]", "6: cluster `a`: hash_policy needs lb_policy"),
            ("endpoints = [\"10.0.0.1:80\"]\nlb_policy = \"ring_hash\"\nhash_policy = [{ header = \"x\", cookie = \"c\" }]", "7: cluster `a`: each hash_policy entry names exactly one"),
            ("endpoints = [\"10.0.0.1:80\"]\nhealth_check = { type = \"grpc\" }", "6: cluster `a`: health_check type `grpc` is not"),
            ("endpoints = [\"10.0.0.1:80\"]\nhealth_check = { type = \"tcp\", path = \"/\" }", "6: cluster `a`: health_check.path applies only to type = \"http\""),
            ("endpoints = [\"10.0.0.1:80\"]\nhealth_check = { expected_statuses = [[300, 200]] }", "6: cluster `a`: expected_statuses [300, 200]"),
            ("endpoints = [\"10.0.0.1:80\"]\noutlier_detection = { max_ejection_percent = 150 }", "6: outlier_detection.max_ejection_percent = 150 is out of range"),
            ("endpoints = [\"10.0.0.1:80\"]\ncircuit_breakers = { max_requests = -1 }", "6: circuit_breakers.max_requests = -1 is out of range"),
            ("discovery = \"dns\"\nendpoints = [\"bad_name:80\"]", "6: cluster `a`: endpoint `bad_name:80` is not a host:port"),
            ("discovery = \"file\"", "5: cluster `a`: discovery = \"file\" needs endpoints_file"),
            ("endpoints = [\"10.0.0.1:80\"]\nendpoints_file = \"x.json\"", "6: cluster `a`: endpoints_file needs discovery = \"file\""),
            ("endpoints = [\"10.0.0.1:80\"]\ndns_refresh_rate = \"1s\"", "6: cluster `a`: dns_refresh_rate applies only to discovery = \"dns\""),
            ("discovery = \"eds\"\nendpoints = [\"10.0.0.1:80\"]", "5: cluster `a`: discovery `eds` is not one of"),
        ];
        for (body, want) in cases {
            let toml = format!("{HEAD}[[cluster]]\nname = \"a\"\n{body}\n");
            let errs = errors(&toml);
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{body}: want {want:?}, got {errs:?}"
            );
        }
        // A file cluster without its file is told only that.
        let errs = errors(&format!(
            "{HEAD}[[cluster]]\nname = \"a\"\ndiscovery = \"file\"\n"
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
    }
}
