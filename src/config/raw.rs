//! Raw config types: exactly what the TOML file says, nothing checked yet.
//!
//! Every table denies unknown keys so a typo is an error, not a silent default.
//! Values that can fail validation are `Spanned`, so the error can name the line.

use serde::Deserialize;
use toml::Spanned;

pub use super::cluster::RawCluster;
pub use super::security::{RawAuthzPolicy, RawMeshDestination, RawPeerAuthentication, RawTls};
pub use crate::http::route_config::RawVirtualHost;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub runtime: RawRuntime,
    #[serde(default)]
    pub log: RawLog,
    /// Absent means "capture with Istio's defaults"; `enabled = false` turns it off.
    #[serde(default)]
    pub capture: RawCapture,
    #[serde(default)]
    pub admin: RawAdmin,
    #[serde(default)]
    pub access_log: RawAccessLog,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "cluster")]
    pub clusters: Vec<RawCluster>,
    #[serde(default)]
    pub http: RawHttp,
    #[serde(default)]
    pub http2: RawHttp2,
    /// HTTP routes (`[[virtual_host]]` tables), validated by `http::route_config`.
    #[serde(default, rename = "virtual_host")]
    pub virtual_hosts: Vec<Spanned<RawVirtualHost>>,
    /// The workload certificate (Istio's file-mounted layout) and trust domain.
    #[serde(default)]
    pub tls: RawTls,
    /// Inbound mTLS mode (Istio's PeerAuthentication).
    #[serde(default)]
    pub peer_authentication: RawPeerAuthentication,
    #[serde(default, rename = "authorization_policy")]
    pub authorization_policies: Vec<Spanned<RawAuthzPolicy>>,
    /// Passthrough destinations that are in the mesh (originate ISTIO_MUTUAL).
    #[serde(default, rename = "mesh_destination")]
    pub mesh_destinations: Vec<Spanned<RawMeshDestination>>,
    /// Resource limits and the overload manager's thresholds.
    #[serde(default)]
    pub overload: RawOverload,
}

/// `[overload]`: see `crate::overload`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOverload {
    pub refresh_interval: Option<Spanned<String>>,
    pub max_heap_size_bytes: Option<Spanned<i64>>,
    pub max_active_downstream_connections: Option<Spanned<i64>>,
    pub max_open_fds: Option<Spanned<i64>>,
    pub shed_idle_connections_threshold: Option<Spanned<i64>>,
    pub stop_accepting_requests_threshold: Option<Spanned<i64>>,
    pub stop_accepting_connections_threshold: Option<Spanned<i64>>,
}

/// Settings of the L7 (HTTP/1) path, shared by every listener that speaks HTTP.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub request_headers_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub stream_idle_timeout: Option<Spanned<String>>,
    pub pool_max_idle_per_endpoint: Option<Spanned<i64>>,
    pub pool_idle_timeout: Option<Spanned<String>>,
    pub retry_buffer_limit: Option<Spanned<i64>>,
    pub max_request_body_bytes: Option<Spanned<i64>>,
    pub lingering_time: Option<Spanned<String>>,
    pub lingering_max_bytes: Option<Spanned<i64>>,
}

/// Settings of downstream HTTP/2 connections (Envoy's
/// `http2_protocol_options` on the connection manager).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp2 {
    pub max_concurrent_streams: Option<Spanned<i64>>,
    pub initial_stream_window_size: Option<Spanned<i64>>,
    pub initial_connection_window_size: Option<Spanned<i64>>,
    pub max_header_list_size: Option<Spanned<i64>>,
    pub max_premature_resets: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    pub cores: Option<Spanned<i64>>,
    pub max_connections_per_core: Option<Spanned<i64>>,
    pub drain_timeout: Option<Spanned<String>>,
    /// This proxy's "region/zone/subzone", for locality-aware balancing.
    pub locality: Option<Spanned<String>>,
    /// A saturated core's wait for company ("100us"; "0s": off).
    pub batch_wait: Option<Spanned<String>>,
    /// A sleeping core's wait for company ("0s": off, the default).
    pub sleep_batch_wait: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCapture {
    pub enabled: Option<bool>,
    pub outbound_port: Option<Spanned<i64>>,
    pub inbound_port: Option<Spanned<i64>>,
    pub ipv4: Option<Spanned<bool>>,
    pub ipv6: Option<Spanned<bool>>,
    pub inbound_source_v4: Option<Spanned<String>>,
    pub inbound_source_v6: Option<Spanned<String>>,
    pub transparent: Option<bool>,
    pub forwarding: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    /// "auto" (detect HTTP/1 by the first bytes), "http" or "tcp".
    pub protocol: Option<Spanned<String>>,
    pub detect_timeout: Option<Spanned<String>>,
    pub http_ports: Option<Vec<Spanned<i64>>>,
    pub opaque_ports: Option<Vec<Spanned<i64>>>,
    /// Envoy's `use_remote_address`: append the peer to X-Forwarded-For.
    pub use_remote_address: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    /// Needed by "tcp" and "auto"; an "http" listener routes by `[[virtual_host]]`.
    pub cluster: Option<Spanned<String>>,
    pub forwarding: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    /// "tcp" (default), "http" or "auto".
    pub protocol: Option<Spanned<String>>,
    /// How long an `auto` listener (and an inbound PERMISSIVE one) waits for
    /// the first bytes (Istio's `protocolDetectionTimeout`).
    pub detect_timeout: Option<Spanned<String>>,
    /// Accepted connections per fill interval (Envoy's network `local_ratelimit`).
    pub connection_rate_limit: Option<Spanned<RawTokenBucket>>,
    /// "outbound" (default) or "inbound" (Envoy's `traffic_direction`).
    pub direction: Option<Spanned<String>>,
    /// Envoy's `use_remote_address`: append the peer to X-Forwarded-For.
    pub use_remote_address: Option<bool>,
    /// TCP_DEFER_ACCEPT (nginx's `deferred`); default: on for "http".
    pub defer_accept: Option<bool>,
}

/// Envoy's `TokenBucket` (`max_tokens` named `tokens`), validated by
/// `http::route_config::validate_token_bucket` like a route's `rate_limit`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokenBucket {
    pub tokens: Spanned<i64>,
    pub fill_interval: Spanned<String>,
    pub tokens_per_fill: Spanned<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub enabled: Option<bool>,
    pub address: Option<Spanned<String>>,
    pub prometheus_address: Option<Spanned<String>>,
    pub readiness_address: Option<Spanned<String>>,
    pub watch_config: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    pub path: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub fields: Option<Spanned<Vec<Spanned<String>>>>,
}
