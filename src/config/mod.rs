//! Configuration: TOML text → raw serde types → validated, immutable [`Config`].
//!
//! Every fallible step (syntax, unknown keys, addresses, names, durations) happens
//! here, before anything is published to the cores. A file that fails produces
//! *all* of its errors at once, each with file, line and column.
//!
//! The validated [`Config`] is wrapped in a versioned [`Snapshot`] and published
//! through [`ConfigHandle`]; cores read it lock-free for each new connection.

mod cluster;
mod parse;
mod raw;
mod security;

pub use cluster::{Cluster, Discovery, Endpoint, HashPolicy, UpstreamHttp};
pub use security::{
    istio_outbound_sni, ClusterTls, ClusterTlsMode, MeshDestination, MtlsMode, PeerAuthentication,
    Tls, CERT_FILES,
};

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use arc_swap::ArcSwap;

pub(crate) use crate::duration::ser_duration;
pub use crate::duration::{format_duration, parse_duration};
use serde::{Serialize, Serializer};
use toml::Spanned;

use crate::http::route::RouteTable;
use crate::http::route_config::{validate_token_bucket, RawRouteConfig};
use crate::overload::OverloadConfig;
use crate::policy::authz::AuthzPolicies;
use crate::policy::ratelimit::TokenBucketConfig;
use raw::{
    RawAccessLog, RawAdmin, RawCapture, RawConfig, RawHttp, RawHttp2, RawListener, RawOverload,
};

/// The built-in default: Istio-style passthrough capture on 15001/15006.
/// `config/remora.toml` is the documented, commented equivalent.
pub const DEFAULT_TOML: &str = "";

/// Why an empty config file is refused (see [`Config::load`]).
pub const EMPTY_FILE: &str = "file is empty (caught mid-write?); an empty config file is refused. \
Write config files atomically (a temporary file, then rename). For the built-in default, run \
without --config, or use a file with only comments, such as config/remora.toml";

/// How an L4 connection moves bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// `recv` into a per-core buffer, `send` out. Measured faster on loopback
    /// (FACTS.md: 2.73 vs 2.65 GB/s), hence the default.
    Copy,
    /// `splice(2)` through a pipe borrowed from a per-core pool; no user-space copy.
    Splice,
}

/// What a listener expects its connections to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Opaque bytes: the L4 path.
    Tcp,
    /// HTTP/1.x: the L7 path (a connection that is not HTTP gets a 400).
    Http,
    /// Peek at the first bytes: an HTTP/1 request line takes the L7 path,
    /// anything else (or silence for `detect_timeout`) the L4 path.
    Auto,
}

impl Protocol {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
            Protocol::Auto => "auto",
        }
    }
}

/// Settings of the L7 (HTTP/1) path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Http {
    /// From the first byte of a request head to its end (slowloris guard; 408).
    #[serde(serialize_with = "ser_duration")]
    pub request_headers_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// A request body that makes no progress for this long gets 408 (Envoy's
    /// stream_idle_timeout, 5 min). Zero: only `idle_timeout` applies.
    #[serde(serialize_with = "ser_duration")]
    pub stream_idle_timeout: Duration,
    /// Idle upstream connections kept per endpoint per core.
    pub pool_max_idle_per_endpoint: usize,
    /// An idle pooled upstream connection older than this is closed, not reused.
    #[serde(serialize_with = "ser_duration")]
    pub pool_idle_timeout: Duration,
    /// Request bodies up to this size are buffered so that a retry can replay them.
    pub retry_buffer_limit: usize,
    /// Largest request body (decoded bytes) forwarded; larger ones get 413.
    /// 0 = no limit. A virtual host or route may override it.
    pub max_request_body_bytes: u64,
    /// After a response that leaves the request body partly unread, the
    /// connection is half-closed and the rest of the body read and dropped for
    /// at most this long, so the client reads the response instead of a reset
    /// (nginx's lingering close). Zero: close at once.
    #[serde(serialize_with = "ser_duration")]
    pub lingering_time: Duration,
    /// ... and at most this many bytes.
    pub lingering_max_bytes: u64,
}

/// Idle HTTP/1 upstream connections kept per endpoint and core: as many as
/// Envoy's default `max_connections` breaker, i.e. in effect no cap below
/// the breaker, as in Envoy. A smaller cap makes a multiplexed client (100
/// HTTP/2 streams become up to 100 HTTP/1 requests in flight) close and
/// reopen upstream connections all the time.
const DEFAULT_POOL_MAX_IDLE: usize = 1024;

/// Downstream HTTP/2 connections (Envoy's `http2_protocol_options`; the
/// defaults are Envoy's, except where noted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Http2 {
    /// Streams a client may have open at once (SETTINGS_MAX_CONCURRENT_STREAMS).
    /// Envoy's default is 2^31-1; Istio's sidecars and this proxy use 100, so
    /// one connection cannot take the whole core.
    pub max_concurrent_streams: u32,
    /// Per-stream receive window: how much of a request body may arrive
    /// before it is forwarded. 1 MiB (Envoy: 256 MiB; its edge guidance and
    /// `per_connection_buffer_limit_bytes` bound memory at 1 MiB).
    pub initial_stream_window_size: u32,
    /// Per-connection receive window, shared by all streams. 1 MiB.
    pub initial_connection_window_size: u32,
    /// Largest header list (decoded, as SETTINGS_MAX_HEADER_LIST_SIZE
    /// counts it) a request may carry; larger ones are refused, however many
    /// CONTINUATION frames carry them. Envoy's max_request_headers_kb: 60 KiB.
    pub max_header_list_size: u32,
    /// Rapid-reset guard (CVE-2023-44487): a connection whose client has
    /// cancelled this many streams before their answers were complete, and
    /// at least half of all its streams, is closed with GOAWAY
    /// ENHANCE_YOUR_CALM (Envoy's premature-reset check; its count is 500).
    pub max_premature_resets: u32,
}

impl Default for Http2 {
    fn default() -> Http2 {
        Http2 {
            max_concurrent_streams: 100,
            initial_stream_window_size: 1 << 20,
            initial_connection_window_size: 1 << 20,
            max_header_list_size: 60 << 10,
            max_premature_resets: 500,
        }
    }
}

/// The validated route table plus what `/config_dump` shows of it.
///
/// `RouteTable` holds compiled regexes and indexes, so equality (used by reload
/// to skip no-op publications) compares a fingerprint taken at validation time.
#[derive(Debug, Clone)]
pub struct Routes {
    pub table: Arc<RouteTable>,
    fingerprint: String,
    summary: Vec<VirtualHostSummary>,
}

#[derive(Debug, Clone, Serialize)]
struct VirtualHostSummary {
    name: String,
    domains: usize,
    routes: Vec<String>,
}

impl Routes {
    fn new(table: RouteTable) -> Routes {
        let fingerprint = format!("{:?}", table.virtual_hosts);
        let summary = table
            .virtual_hosts
            .iter()
            .map(|vh| VirtualHostSummary {
                name: vh.name.to_string(),
                domains: vh.domains.len(),
                routes: vh.routes.iter().map(|r| r.name.to_string()).collect(),
            })
            .collect();
        Routes {
            table: Arc::new(table),
            fingerprint,
            summary,
        }
    }
}

impl Default for Routes {
    fn default() -> Routes {
        Routes::new(RouteTable::default())
    }
}

impl PartialEq for Routes {
    fn eq(&self, o: &Routes) -> bool {
        self.fingerprint == o.fingerprint
    }
}

impl Serialize for Routes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.summary.serialize(s)
    }
}

/// Process-wide settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Runtime {
    /// Executors to run; `None` = one per CPU the process may use.
    pub cores: Option<usize>,
    /// Connections a core holds at once before it refuses new ones.
    pub max_connections_per_core: usize,
    /// How long SIGTERM waits for open connections before exiting.
    #[serde(serialize_with = "ser_duration")]
    pub drain_timeout: Duration,
    /// Where this proxy runs, "region/zone/subzone" (Istio's locality; empty:
    /// unknown, no locality-aware balancing).
    pub locality: String,
    /// How long a saturated core carrying HTTP/2 streams waits for more
    /// events before a pass (`net::batch`); zero: never.
    #[serde(serialize_with = "ser_duration")]
    pub batch_wait: Duration,
    /// How long a sleeping core waits for more events after the first
    /// (`net::batch::set_sleep_wait`); zero: never.
    #[serde(serialize_with = "ser_duration")]
    pub sleep_batch_wait: Duration,
}

/// How long protocol detection waits for a client's first bytes unless
/// configured (`[capture]` / `[[listener]] detect_timeout`): Istio's
/// `protocolDetectionTimeout` default before 1.12.
pub const DEFAULT_DETECT_TIMEOUT: Duration = Duration::from_millis(100);

/// Istio-style transparent capture (iptables REDIRECT or TPROXY sends traffic here).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capture {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Source address for connections to the local app (never re-captured).
    pub inbound_source_v4: Ipv4Addr,
    pub inbound_source_v6: Ipv6Addr,
    /// Listen with IP_TRANSPARENT (TPROXY mode): the original destination is the
    /// socket's local address instead of SO_ORIGINAL_DST.
    pub transparent: bool,
    pub forwarding: Forwarding,
    #[serde(serialize_with = "ser_duration")]
    pub connect_timeout: Duration,
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// Default `auto`: detect HTTP/1 per connection.
    pub protocol: Protocol,
    /// How long detection waits for the client's first bytes before deciding
    /// the protocol is server-first (MySQL, SMTP, ...) and going L4.
    #[serde(serialize_with = "ser_duration")]
    pub detect_timeout: Duration,
    /// Original-destination ports always treated as HTTP (no detection).
    pub http_ports: Vec<u16>,
    /// Original-destination ports always treated as opaque TCP (no detection).
    pub opaque_ports: Vec<u16>,
    /// Envoy's `use_remote_address`: append the peer's address to
    /// X-Forwarded-For. Default false, as Istio configures both sidecar sides:
    /// a sidecar is no edge, and Envoy then leaves X-Forwarded-For as the
    /// client sent it (its "transparent mode").
    pub use_remote_address: bool,
}

impl Capture {
    /// The protocol for a connection to original destination port `port`.
    pub fn protocol_for(&self, port: u16) -> Protocol {
        if self.opaque_ports.contains(&port) {
            Protocol::Tcp
        } else if self.http_ports.contains(&port) {
            Protocol::Http
        } else {
            self.protocol
        }
    }
}

/// An explicit TCP listener that forwards to a named cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Index into [`Config::clusters`]: where TCP goes (`tcp`, and `auto`
    /// when the bytes are not HTTP). None only for an `http` listener, whose
    /// requests go where the `[[virtual_host]]` routes say.
    pub cluster: Option<usize>,
    pub forwarding: Forwarding,
    #[serde(serialize_with = "ser_duration")]
    pub idle_timeout: Duration,
    /// `tcp` (default): forward to `cluster`. `http`: route each request by the
    /// `[[virtual_host]]` table (404 when nothing matches). `auto`: detect.
    pub protocol: Protocol,
    /// How long detection waits for the client's first bytes before the
    /// connection goes the TCP way (an `auto` listener; the ClientHello
    /// window of an inbound PERMISSIVE one): Istio's
    /// `protocolDetectionTimeout`, `[capture] detect_timeout` on the capture
    /// ports. Default: the capture's, else 100 ms.
    #[serde(serialize_with = "ser_duration")]
    pub detect_timeout: Duration,
    /// Every accepted connection takes a token; with none left it is closed at
    /// once (Envoy's network `local_ratelimit`). Each core enforces its share
    /// (`policy::ratelimit::TokenBucket::for_core`).
    #[serde(serialize_with = "ser_token_bucket")]
    pub connection_rate_limit: Option<TokenBucketConfig>,
    /// `inbound`: the workload's own side, like an Istio `Sidecar` ingress
    /// listener (Envoy's `traffic_direction: INBOUND`): PeerAuthentication
    /// (mTLS termination, STRICT), AuthorizationPolicy and
    /// X-Forwarded-Client-Cert apply as on the inbound capture port.
    /// `outbound` (default): none of them.
    pub direction: Direction,
    /// Envoy's `use_remote_address`: append the peer's address to
    /// X-Forwarded-For. Default true on a listener (Remora's behaviour before
    /// the key existed: an explicit listener is often a front door); the
    /// capture ports default to Istio's false.
    pub use_remote_address: bool,
    /// TCP_DEFER_ACCEPT: a connection is accepted once its first bytes have
    /// come (or after about a second without any), so the core wakes once
    /// for a new connection and its request instead of twice. Default: on
    /// for `http`, whose clients speak first; off for `tcp` and `auto`,
    /// which may carry a server-first protocol (nginx's `listen ...
    /// deferred`, HAProxy's `defer-accept`).
    pub defer_accept: bool,
}

/// Which side of the workload a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Outbound,
    Inbound,
}

impl Direction {
    /// As the config writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// The operator-facing HTTP endpoints (Envoy's and Istio's ports by default).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Admin {
    /// Admin API (/ready, /stats, /config_dump, ...); loopback only by default.
    pub address: SocketAddr,
    /// Prometheus scrape endpoint (/stats/prometheus), Istio's 15090.
    pub prometheus_address: Option<SocketAddr>,
    /// Kubernetes readiness probe (/healthz/ready), Istio's 15021.
    pub readiness_address: Option<SocketAddr>,
    /// Reload when the config file changes on disk (inotify).
    pub watch_config: bool,
}

/// Where and how connection/request logs are written.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AccessLog {
    pub target: LogTarget,
    pub format: LogFormat,
    /// JSON field names, in order (text uses Envoy's default format).
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Access-log fields, Envoy's command-operator names in lower case.
pub const ACCESS_LOG_FIELDS: &[&str] = &[
    "start_time",
    "protocol",
    "method",
    "path",
    "response_code",
    "response_flags",
    "bytes_received",
    "bytes_sent",
    "duration",
    "upstream_host",
    "downstream_remote_address",
    "downstream_local_address",
    "listener",
    "request_id",
    "authority",
    "user_agent",
    "x_forwarded_for",
    "downstream_peer_uri_san",
    "downstream_tls_version",
    "downstream_tls_cipher",
    "requested_server_name",
    "authz_policy",
];

/// A fully validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub runtime: Runtime,
    pub log_level: String,
    /// None: admin, Prometheus and readiness endpoints all off.
    pub admin: Option<Admin>,
    /// None: no access log (Istio's default).
    pub access_log: Option<AccessLog>,
    pub capture: Option<Capture>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Cluster>,
    pub http: Http,
    pub http2: Http2,
    pub routes: Routes,
    /// The workload certificate; `cert_dir: None` means mTLS is off.
    pub tls: Tls,
    /// Inbound mTLS modes (Istio's PeerAuthentication).
    pub peer_authentication: PeerAuthentication,
    /// Inbound authorization (Istio's AuthorizationPolicy), in file order.
    pub authorization: AuthzPolicies,
    /// Passthrough destinations in the mesh, in file order.
    pub mesh_destinations: Vec<MeshDestination>,
    /// Resource limits and the overload manager's thresholds.
    pub overload: OverloadConfig,
}

impl Config {
    /// The built-in default (`remora run` with no `--config`).
    pub fn builtin() -> Config {
        Config::from_toml(DEFAULT_TOML, None).expect("built-in default config is valid")
    }

    /// Reads and validates a file.
    ///
    /// An empty file is refused, the same way at start, by `validate` and on
    /// a reload: there it is nearly always a write caught half-way (truncate,
    /// then write), and one behaviour for all three is easier to trust. A file
    /// with only comments (such as `config/remora.toml`) is the built-in default.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let fail = |message: String| ConfigError {
            file: Some(path.to_path_buf()),
            errors: vec![Diagnostic {
                line: 0,
                column: 0,
                message,
            }],
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read file: {e}")))?;
        if text.is_empty() {
            return Err(fail(EMPTY_FILE.into()));
        }
        Config::from_toml(&text, Some(path))
    }

    /// Parses and validates TOML text; `file` is only used in messages.
    pub fn from_toml(text: &str, file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut v = Validator {
            text,
            errors: Vec::new(),
        };
        let raw: RawConfig = match parse::raw(text) {
            Ok(raw) => raw,
            Err(errors) => {
                for e in errors {
                    v.error(e.span, e.message);
                }
                return Err(v.finish(file));
            }
        };
        let config = v.config(raw);
        if v.errors.is_empty() {
            Ok(config)
        } else {
            Err(v.finish(file))
        }
    }

    /// The first `[[mesh_destination]]` that covers `dst`: outbound
    /// passthrough to it originates ISTIO_MUTUAL and expects its identities.
    pub fn mesh_destination_for(&self, dst: SocketAddr) -> Option<&MeshDestination> {
        self.mesh_destinations.iter().find(|m| m.contains(dst))
    }

    /// Every local port Remora listens on; a connection whose original
    /// destination is one of these (on a local address) would loop.
    pub fn own_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.listeners.iter().map(|l| l.address.port()).collect();
        if let Some(c) = &self.capture {
            ports.push(c.outbound_port);
            ports.push(c.inbound_port);
        }
        ports
    }
}

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// 1-based; 0 when the problem has no position (e.g. unreadable file).
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Every problem found in one config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub errors: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self
            .file
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "<config>".to_string());
        for (i, d) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.line == 0 {
                write!(f, "{file}: {}", d.message)?;
            } else {
                write!(f, "{file}:{}:{}: {}", d.line, d.column, d.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// An immutable, versioned config as the cores see it.
#[derive(Debug)]
pub struct Snapshot {
    /// Starts at 1 and increases with every successful publication.
    pub version: u64,
    pub config: Config,
}

/// The one thing all cores share: the current snapshot, swapped atomically.
///
/// Readers call [`ConfigHandle::current`] once per new connection (an atomic load
/// and a reference-count bump, no lock); a connection keeps the `Arc` it started
/// with, so a later publication never changes it mid-flight.
#[derive(Debug)]
pub struct ConfigHandle {
    current: ArcSwap<Snapshot>,
    /// The version of `current`, stored after it: a reader that already holds
    /// a snapshot compares one integer instead of loading (see `refresh`).
    version: AtomicU64,
    /// Threads that sleep until the config changes ([`ConfigHandle::watch`]).
    watchers: Mutex<Vec<Thread>>,
}

impl ConfigHandle {
    pub fn new(config: Config) -> ConfigHandle {
        ConfigHandle {
            current: ArcSwap::from_pointee(Snapshot { version: 1, config }),
            version: AtomicU64::new(1),
            watchers: Mutex::new(Vec::new()),
        }
    }

    pub fn current(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Makes `held` the current snapshot: unchanged (no load, no reference
    /// count) unless a newer version was published. The L7 path calls it per
    /// request on a keep-alive connection: arc_swap's load and the count bump
    /// were about 1% of a sidecar's CPU (perf/SIDECAR.md). A publication racing
    /// this call is seen by the next one, as it would be by the next load.
    pub fn refresh(&self, held: &mut Arc<Snapshot>) {
        if self.version.load(Ordering::Acquire) != held.version {
            *held = self.current();
        }
    }

    /// Publishes `config` as the next version and returns that version.
    pub fn publish(&self, config: Config) -> u64 {
        let mut version = 0;
        self.current.rcu(|old| {
            version = old.version + 1;
            Snapshot {
                version,
                config: config.clone(),
            }
        });
        // After the swap: a reader that sees this version finds it in `current`.
        self.version.fetch_max(version, Ordering::Release);
        for t in self
            .watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            t.unpark();
        }
        version
    }

    /// Unparks `thread` after every publication from now on, so a thread
    /// that only has work under some config can `park()` until it changes
    /// instead of polling (the overload monitor while `[overload]` is off).
    /// A publication between its reading of [`ConfigHandle::current`] and
    /// its `park()` leaves the park token set: the park returns at once.
    pub fn watch(&self, thread: Thread) {
        self.watchers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(thread);
    }
}

struct Validator<'a> {
    text: &'a str,
    errors: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let (line, column) = match span {
            Some(span) => line_col(self.text, span.start),
            None => (0, 0),
        };
        self.errors.push(Diagnostic {
            line,
            column,
            message,
        });
    }

    fn finish(mut self, file: Option<&Path>) -> ConfigError {
        self.errors.sort_by_key(|d| (d.line, d.column));
        ConfigError {
            file: file.map(Path::to_path_buf),
            errors: self.errors,
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let runtime = Runtime {
            cores: raw.runtime.cores.and_then(|c| {
                let n = self.int_in(&c, 0, 1024, "runtime.cores")?;
                (n > 0).then_some(n as usize)
            }),
            max_connections_per_core: raw
                .runtime
                .max_connections_per_core
                .and_then(|c| self.int_in(&c, 1, 1 << 24, "runtime.max_connections_per_core"))
                .map_or(16_384, |n| n as usize),
            drain_timeout: self.duration_or(raw.runtime.drain_timeout, Duration::from_secs(5)),
            locality: raw
                .runtime
                .locality
                .map(|l| l.into_inner())
                .unwrap_or_default(),
            batch_wait: self.batch_wait(raw.runtime.batch_wait),
            sleep_batch_wait: self.sleep_batch_wait(raw.runtime.sleep_batch_wait),
        };
        let log_level = match raw.log.level {
            None => "info".to_string(),
            Some(level) => {
                let l = level.get_ref().to_ascii_lowercase();
                if !["error", "warn", "info", "debug", "trace", "off"].contains(&l.as_str()) {
                    self.error(
                        Some(level.span()),
                        format!(
                            "log.level `{}` is not one of error, warn, info, debug, trace, off",
                            level.get_ref()
                        ),
                    );
                }
                l
            }
        };
        let tls = self.tls(raw.tls);
        let peer_authentication = self.peer_authentication(raw.peer_authentication, &tls);
        let authorization = self.authorization_policies(raw.authorization_policies);
        let mesh_destinations = self.mesh_destinations(raw.mesh_destinations, &tls);
        // Every error carries a position (the config fuzz target checks it):
        // the spans of what the checks below compare, kept before validation
        // consumes the raw tables.
        let name_spans: Vec<Range<usize>> = raw.clusters.iter().map(|c| c.name.span()).collect();
        let clusters: Vec<Cluster> = raw
            .clusters
            .into_iter()
            .map(|c| self.cluster(c, &tls))
            .collect();
        for (i, c) in clusters.iter().enumerate() {
            if clusters[..i].iter().any(|o| o.name == c.name) {
                self.error(
                    name_spans.get(i).cloned(),
                    format!("cluster name `{}` is used twice", c.name),
                );
            }
        }
        let capture_spans = [
            raw.capture.outbound_port.as_ref().map(|p| p.span()),
            raw.capture.inbound_port.as_ref().map(|p| p.span()),
        ];
        let admin_spans = [
            raw.admin.address.as_ref().map(|a| a.span()),
            raw.admin.prometheus_address.as_ref().map(|a| a.span()),
            raw.admin.readiness_address.as_ref().map(|a| a.span()),
        ];
        let capture = self.capture(raw.capture);
        let detect_default = capture
            .as_ref()
            .map_or(DEFAULT_DETECT_TIMEOUT, |c| c.detect_timeout);
        let mut listeners: Vec<Listener> = Vec::new();
        let mut address_spans: Vec<Range<usize>> = Vec::new();
        for l in raw.listeners {
            let span = l.address.span();
            if let Some(l) = self.listener(l, &clusters, &listeners, detect_default) {
                listeners.push(l);
                address_spans.push(span);
            }
        }
        if let Some(cap) = &capture {
            for (l, span) in listeners.iter().zip(&address_spans) {
                if [cap.outbound_port, cap.inbound_port].contains(&l.address.port()) {
                    self.error(
                        Some(span.clone()),
                        format!(
                            "listener `{}` uses port {}, which the capture section already listens on",
                            l.name,
                            l.address.port()
                        ),
                    );
                }
            }
        }
        let admin = self.admin(raw.admin);
        if let Some(admin) = &admin {
            let listeners = listeners.iter().zip(&address_spans);
            let sockets = sockets(
                admin,
                &admin_spans,
                capture.as_ref(),
                &capture_spans,
                listeners,
            );
            self.port_clashes(&sockets);
        }
        let access_log = self.access_log(raw.access_log);
        let http = self.http(raw.http);
        let http2 = self.http2(raw.http2);
        let routes = self.routes(raw.virtual_hosts, &clusters);
        let overload = self.overload(raw.overload);
        Config {
            runtime,
            log_level,
            admin,
            access_log,
            capture,
            listeners,
            clusters,
            http,
            http2,
            routes,
            tls,
            peer_authentication,
            authorization,
            mesh_destinations,
            overload,
        }
    }

    fn overload(&mut self, raw: RawOverload) -> OverloadConfig {
        let d = OverloadConfig::default();
        let mut limit = |v: Option<Spanned<i64>>, what: &str| {
            v.and_then(|n| self.int_in(&n, 0, i64::MAX, what))
                .map_or(0, |n| n as u64)
        };
        let max_heap_size_bytes = limit(raw.max_heap_size_bytes, "overload.max_heap_size_bytes");
        let max_active_downstream_connections = limit(
            raw.max_active_downstream_connections,
            "overload.max_active_downstream_connections",
        );
        let max_open_fds = limit(raw.max_open_fds, "overload.max_open_fds");
        let mut percent = |v: Option<Spanned<i64>>, default: u8, what: &str| {
            v.and_then(|n| self.int_in(&n, 1, 100, what))
                .map_or(default, |n| n as u8)
        };
        OverloadConfig {
            max_heap_size_bytes,
            max_active_downstream_connections,
            max_open_fds,
            shed_idle_connections_threshold: percent(
                raw.shed_idle_connections_threshold,
                d.shed_idle_connections_threshold,
                "overload.shed_idle_connections_threshold",
            ),
            stop_accepting_requests_threshold: percent(
                raw.stop_accepting_requests_threshold,
                d.stop_accepting_requests_threshold,
                "overload.stop_accepting_requests_threshold",
            ),
            stop_accepting_connections_threshold: percent(
                raw.stop_accepting_connections_threshold,
                d.stop_accepting_connections_threshold,
                "overload.stop_accepting_connections_threshold",
            ),
            refresh_interval: self.duration_or(raw.refresh_interval, d.refresh_interval),
        }
    }

    /// Two sockets that `run` could not both bind: an admin endpoint (a plain
    /// bind, no SO_REUSEPORT) against anything else on an overlapping
    /// address. The error names both settings and sits on the one the file
    /// set (the other may be a default).
    fn port_clashes(&mut self, sockets: &[Socket]) {
        for (i, b) in sockets.iter().enumerate() {
            for a in &sockets[..i] {
                if !(a.admin || b.admin) || !a.overlaps(b) {
                    continue;
                }
                let show = |s: &Socket| {
                    let default = if s.span.is_none() {
                        ", the default"
                    } else {
                        ""
                    };
                    format!("{} ({}{default})", s.what, s.addr)
                };
                let span = b.span.clone().or_else(|| a.span.clone());
                self.error(
                    span,
                    format!(
                        "{} and {} both listen on port {}; change one of them",
                        show(a),
                        show(b),
                        b.addr.port()
                    ),
                );
            }
        }
    }

    fn http(&mut self, raw: RawHttp) -> Http {
        Http {
            request_headers_timeout: self
                .duration_or(raw.request_headers_timeout, Duration::from_secs(60)),
            idle_timeout: self.duration_or(raw.idle_timeout, Duration::from_secs(3600)),
            stream_idle_timeout: self
                .duration_or_zero(raw.stream_idle_timeout, Duration::from_secs(300)),
            pool_max_idle_per_endpoint: raw
                .pool_max_idle_per_endpoint
                .and_then(|n| self.int_in(&n, 0, 65_536, "http.pool_max_idle_per_endpoint"))
                .map_or(DEFAULT_POOL_MAX_IDLE, |n| n as usize),
            pool_idle_timeout: self.duration_or(raw.pool_idle_timeout, Duration::from_secs(60)),
            retry_buffer_limit: raw
                .retry_buffer_limit
                .and_then(|n| self.int_in(&n, 0, 16 << 20, "http.retry_buffer_limit"))
                .map_or(64 * 1024, |n| n as usize),
            max_request_body_bytes: raw
                .max_request_body_bytes
                .and_then(|n| self.body_limit(&n, "http.max_request_body_bytes"))
                .unwrap_or(0),
            lingering_time: self.duration_or_zero(raw.lingering_time, Duration::from_secs(5)),
            lingering_max_bytes: raw
                .lingering_max_bytes
                .and_then(|n| self.int_in(&n, 0, 1 << 40, "http.lingering_max_bytes"))
                .map_or(16 << 20, |n| n as u64),
        }
    }

    fn http2(&mut self, raw: RawHttp2) -> Http2 {
        let d = Http2::default();
        let mut int = |v: Option<Spanned<i64>>, min: i64, max: i64, what: &str, default: u32| {
            v.and_then(|n| self.int_in(&n, min, max, what))
                .map_or(default, |n| n as u32)
        };
        // RFC 9113 §6.5.2: windows at least 65,535 and under 2^31.
        const WINDOW_MAX: i64 = (1 << 31) - 1;
        Http2 {
            max_concurrent_streams: int(
                raw.max_concurrent_streams,
                1,
                (1 << 31) - 1,
                "http2.max_concurrent_streams",
                d.max_concurrent_streams,
            ),
            initial_stream_window_size: int(
                raw.initial_stream_window_size,
                65_535,
                WINDOW_MAX,
                "http2.initial_stream_window_size",
                d.initial_stream_window_size,
            ),
            initial_connection_window_size: int(
                raw.initial_connection_window_size,
                65_535,
                WINDOW_MAX,
                "http2.initial_connection_window_size",
                d.initial_connection_window_size,
            ),
            max_header_list_size: int(
                raw.max_header_list_size,
                1024,
                16 << 20,
                "http2.max_header_list_size",
                d.max_header_list_size,
            ),
            max_premature_resets: int(
                raw.max_premature_resets,
                1,
                1 << 30,
                "http2.max_premature_resets",
                d.max_premature_resets,
            ),
        }
    }

    /// A body size limit: 0 (none) or a positive byte count.
    fn body_limit(&mut self, v: &Spanned<i64>, what: &str) -> Option<u64> {
        let n = *v.get_ref();
        if n < 0 {
            self.error(
                Some(v.span()),
                format!("{what} = {n} must be 0 (no limit) or a number of bytes"),
            );
            return None;
        }
        Some(n as u64)
    }

    /// Validates `[[virtual_host]]` tables against the cluster names; route
    /// errors carry byte spans of this file, turned into line:col here.
    fn routes(&mut self, raw: Vec<Spanned<raw::RawVirtualHost>>, clusters: &[Cluster]) -> Routes {
        let raw = RawRouteConfig { virtual_hosts: raw };
        let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
        match raw.validate(&names) {
            Ok(table) => Routes::new(table),
            Err(errors) => {
                for e in errors {
                    self.error(Some(e.span), e.message);
                }
                Routes::default()
            }
        }
    }

    fn protocol(&mut self, raw: Option<Spanned<String>>, default: Protocol) -> Protocol {
        let Some(p) = raw else { return default };
        match p.get_ref().as_str() {
            "tcp" => Protocol::Tcp,
            "http" => Protocol::Http,
            "auto" => Protocol::Auto,
            other => {
                self.error(
                    Some(p.span()),
                    format!("protocol `{other}` is not one of \"tcp\", \"http\", \"auto\""),
                );
                default
            }
        }
    }

    fn ports(&mut self, raw: Option<Vec<Spanned<i64>>>, what: &str) -> Vec<u16> {
        raw.unwrap_or_default()
            .iter()
            .filter_map(|p| self.int_in(p, 1, 65535, what).map(|n| n as u16))
            .collect()
    }

    fn admin(&mut self, raw: RawAdmin) -> Option<Admin> {
        if raw.enabled == Some(false) {
            return None;
        }
        let address = self.addr_or(raw.address, "127.0.0.1:15000");
        let prometheus_address = self.optional_addr(raw.prometheus_address, "0.0.0.0:15090");
        let readiness_address = self.optional_addr(raw.readiness_address, "0.0.0.0:15021");
        Some(Admin {
            address,
            prometheus_address,
            readiness_address,
            watch_config: raw.watch_config.unwrap_or(true),
        })
    }

    /// Format and fields are checked even while the log is off, so a file
    /// that validates keeps validating when the log is turned on.
    fn access_log(&mut self, raw: RawAccessLog) -> Option<AccessLog> {
        let target = match raw.path.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None | Some((_, "off" | "")) => None,
            Some((_, "stdout" | "/dev/stdout")) => Some(LogTarget::Stdout),
            Some((p, path)) if path.starts_with('/') => {
                // What `run` would trip over when it opens the file (without
                // creating it here).
                let path = PathBuf::from(path);
                let dir = path.parent().unwrap_or(Path::new("/"));
                if path.is_dir() {
                    self.error(
                        Some(p.span()),
                        format!(
                            "access_log.path `{}` is a directory; name a file in it",
                            path.display()
                        ),
                    );
                } else if !dir.is_dir() {
                    self.error(
                        Some(p.span()),
                        format!(
                            "access_log.path `{}`: directory `{}` does not exist",
                            path.display(),
                            dir.display()
                        ),
                    );
                }
                Some(LogTarget::File(path))
            }
            Some((p, other)) => {
                self.error(
                    Some(p.span()),
                    format!("access_log.path `{other}` must be \"stdout\", \"off\" or an absolute file path"),
                );
                None
            }
        };
        let format = match raw.format {
            None => LogFormat::Text,
            Some(f) => match f.get_ref().as_str() {
                "text" => LogFormat::Text,
                "json" => LogFormat::Json,
                other => {
                    self.error(
                        Some(f.span()),
                        format!("access_log.format `{other}` is not one of \"text\", \"json\""),
                    );
                    LogFormat::Text
                }
            },
        };
        let fields = match raw.fields {
            None => ACCESS_LOG_FIELDS.iter().map(|f| f.to_string()).collect(),
            Some(list) => {
                let mut v = Vec::new();
                for f in list.get_ref() {
                    if ACCESS_LOG_FIELDS.contains(&f.get_ref().as_str()) {
                        v.push(f.get_ref().clone());
                    } else {
                        self.error(
                            Some(f.span()),
                            format!(
                                "access_log field `{}` is unknown (known: {})",
                                f.get_ref(),
                                ACCESS_LOG_FIELDS.join(", ")
                            ),
                        );
                    }
                }
                v
            }
        };
        Some(AccessLog {
            target: target?,
            format,
            fields,
        })
    }

    fn addr_or(&mut self, v: Option<Spanned<String>>, default: &str) -> SocketAddr {
        self.optional_addr(v, default)
            .unwrap_or_else(|| default.parse().expect("valid default address"))
    }

    /// An address, or None when set to "" / "off".
    fn optional_addr(&mut self, v: Option<Spanned<String>>, default: &str) -> Option<SocketAddr> {
        let Some(v) = v else {
            return Some(default.parse().expect("valid default address"));
        };
        match v.get_ref().as_str() {
            "" | "off" => None,
            s => match s.parse::<SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    self.error(
                        Some(v.span()),
                        format!("`{s}` is not an address:port (e.g. \"127.0.0.1:15000\"), \"\" or \"off\""),
                    );
                    None
                }
            },
        }
    }

    fn capture(&mut self, raw: RawCapture) -> Option<Capture> {
        if raw.enabled == Some(false) {
            return None;
        }
        // The two defaults differ, so equal ports means at least one was set.
        let port_span = (raw.inbound_port.as_ref())
            .or(raw.outbound_port.as_ref())
            .map(|p| p.span());
        let outbound_port = self.port_or(raw.outbound_port, 15001, "capture.outbound_port");
        let inbound_port = self.port_or(raw.inbound_port, 15006, "capture.inbound_port");
        if outbound_port == inbound_port {
            self.error(
                port_span,
                format!("capture.outbound_port and capture.inbound_port are both {outbound_port}"),
            );
        }
        let ipv4 = raw.ipv4.as_ref().is_none_or(|v| *v.get_ref());
        let ipv6 = raw.ipv6.as_ref().is_none_or(|v| *v.get_ref());
        if !ipv4 && !ipv6 {
            // Both were set to false, so both have a position.
            self.error(
                raw.ipv6.as_ref().map(|v| v.span()),
                "capture has both ipv4 and ipv6 off; set `enabled = false` to turn capture off"
                    .into(),
            );
        }
        Some(Capture {
            outbound_port,
            inbound_port,
            ipv4,
            ipv6,
            inbound_source_v4: self
                .ip_or(
                    raw.inbound_source_v4,
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
                    true,
                )
                .and_then(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .unwrap_or(Ipv4Addr::new(127, 0, 0, 6)),
            inbound_source_v6: self
                .ip_or(
                    raw.inbound_source_v6,
                    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
                    false,
                )
                .and_then(|ip| match ip {
                    IpAddr::V6(v6) => Some(v6),
                    IpAddr::V4(_) => None,
                })
                .unwrap_or(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 6)),
            transparent: raw.transparent.unwrap_or(false),
            forwarding: self.forwarding(raw.forwarding),
            connect_timeout: self.duration_or(raw.connect_timeout, Duration::from_secs(10)),
            idle_timeout: self.duration_or(raw.idle_timeout, Duration::from_secs(3600)),
            protocol: self.protocol(raw.protocol, Protocol::Auto),
            detect_timeout: self.duration_or(raw.detect_timeout, DEFAULT_DETECT_TIMEOUT),
            http_ports: self.ports(raw.http_ports, "capture.http_ports"),
            opaque_ports: self.ports(raw.opaque_ports, "capture.opaque_ports"),
            use_remote_address: raw.use_remote_address.unwrap_or(false),
        })
    }

    fn listener(
        &mut self,
        raw: RawListener,
        clusters: &[Cluster],
        earlier: &[Listener],
        detect_default: Duration,
    ) -> Option<Listener> {
        let name = raw.name.get_ref().clone();
        if name.is_empty() {
            self.error(Some(raw.name.span()), "listener name is empty".into());
        }
        if earlier.iter().any(|l| l.name == name) {
            self.error(
                Some(raw.name.span()),
                format!("listener name `{name}` is used twice"),
            );
        }
        let address = match raw.address.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                self.error(
                    Some(raw.address.span()),
                    format!(
                        "listener `{name}`: `{}` is not an address:port (e.g. \"127.0.0.1:10000\" or \"[::1]:10000\")",
                        raw.address.get_ref()
                    ),
                );
                return None;
            }
        };
        if let Some(other) = earlier.iter().find(|l| l.address == address) {
            self.error(
                Some(raw.address.span()),
                format!(
                    "listener `{name}`: address {address} is already used by listener `{}`",
                    other.name
                ),
            );
        }
        let protocol = self.protocol(raw.protocol, Protocol::Tcp);
        let cluster = match &raw.cluster {
            None if protocol == Protocol::Http => None,
            None => {
                self.error(
                    Some(raw.name.span()),
                    format!(
                        "listener `{name}`: protocol \"{}\" needs a `cluster` to forward TCP to (an \"http\" listener needs none: it routes by [[virtual_host]])",
                        protocol.as_str()
                    ),
                );
                return None;
            }
            Some(want) => match clusters.iter().position(|c| &c.name == want.get_ref()) {
                Some(i) => Some(i),
                None => {
                    let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
                    self.error(
                        Some(want.span()),
                        format!(
                            "listener `{name}`: no cluster named `{}` (defined: {})",
                            want.get_ref(),
                            crate::http::route_config::list_names(&known)
                        ),
                    );
                    return None;
                }
            },
        };
        let connection_rate_limit = raw.connection_rate_limit.and_then(|b| {
            let b = b.get_ref();
            validate_token_bucket(
                &format!("listener `{name}`"),
                "connection_rate_limit",
                &b.tokens,
                &b.tokens_per_fill,
                &b.fill_interval,
            )
            .map_err(|errors| {
                for e in errors {
                    self.error(Some(e.span), e.message);
                }
            })
            .ok()
        });
        let direction = match raw.direction {
            None => Direction::Outbound,
            Some(d) => match d.get_ref().as_str() {
                "outbound" => Direction::Outbound,
                "inbound" => Direction::Inbound,
                other => {
                    self.error(
                        Some(d.span()),
                        format!("listener `{name}`: direction `{other}` is not one of \"outbound\", \"inbound\""),
                    );
                    Direction::Outbound
                }
            },
        };
        Some(Listener {
            name,
            address,
            cluster,
            forwarding: self.forwarding(raw.forwarding),
            idle_timeout: self.duration_or(raw.idle_timeout, Duration::from_secs(3600)),
            protocol,
            detect_timeout: self.duration_or(raw.detect_timeout, detect_default),
            connection_rate_limit,
            direction,
            use_remote_address: raw.use_remote_address.unwrap_or(true),
            defer_accept: raw.defer_accept.unwrap_or(protocol == Protocol::Http),
        })
    }

    fn forwarding(&mut self, raw: Option<Spanned<String>>) -> Forwarding {
        match raw {
            None => Forwarding::Copy,
            Some(s) => match s.get_ref().as_str() {
                "copy" => Forwarding::Copy,
                "splice" => Forwarding::Splice,
                other => {
                    self.error(
                        Some(s.span()),
                        format!("forwarding `{other}` is not one of \"copy\", \"splice\""),
                    );
                    Forwarding::Copy
                }
            },
        }
    }

    fn int_in(&mut self, v: &Spanned<i64>, min: i64, max: i64, what: &str) -> Option<i64> {
        let n = *v.get_ref();
        if n < min || n > max {
            self.error(
                Some(v.span()),
                format!("{what} = {n} is out of range ({min}..={max})"),
            );
            None
        } else {
            Some(n)
        }
    }

    fn port_or(&mut self, v: Option<Spanned<i64>>, default: u16, what: &str) -> u16 {
        v.and_then(|v| self.int_in(&v, 1, 65535, what))
            .map_or(default, |n| n as u16)
    }

    fn ip_or(&mut self, v: Option<Spanned<String>>, default: IpAddr, v4: bool) -> Option<IpAddr> {
        let Some(v) = v else { return Some(default) };
        match v.get_ref().parse::<IpAddr>() {
            Ok(ip) if ip.is_ipv4() == v4 => Some(ip),
            _ => {
                self.error(
                    Some(v.span()),
                    format!(
                        "`{}` is not an IPv{} address",
                        v.get_ref(),
                        if v4 { 4 } else { 6 }
                    ),
                );
                None
            }
        }
    }

    /// `runtime.batch_wait`: "0s" (off) up to `batch::MAX_WAIT_LIMIT`.
    fn batch_wait(&mut self, v: Option<Spanned<String>>) -> Duration {
        self.loop_wait(
            v,
            "batch_wait",
            crate::net::batch::DEFAULT_MAX_WAIT,
            "a longer wait is latency, not batching",
        )
    }

    /// `runtime.sleep_batch_wait`: "0s" (off, the default) up to
    /// `batch::MAX_WAIT_LIMIT`.
    fn sleep_batch_wait(&mut self, v: Option<Spanned<String>>) -> Duration {
        self.loop_wait(
            v,
            "sleep_batch_wait",
            Duration::ZERO,
            "every request could wait that long",
        )
    }

    /// One of the loop's waits for company (`runtime.KEY`): "0s" turns it
    /// off; over `batch::MAX_WAIT_LIMIT` it is refused, saying `why`, and
    /// `default` stands.
    fn loop_wait(
        &mut self,
        v: Option<Spanned<String>>,
        key: &str,
        default: Duration,
        why: &str,
    ) -> Duration {
        use crate::net::batch::MAX_WAIT_LIMIT;
        let span = v.as_ref().map(|v| v.span());
        let d = self.duration_or_zero(v, default);
        if d > MAX_WAIT_LIMIT {
            self.error(
                span,
                format!(
                    "runtime.{key} = \"{}\" is longer than {}: {why}",
                    format_duration(d),
                    format_duration(MAX_WAIT_LIMIT)
                ),
            );
            return default;
        }
        d
    }

    /// Like `duration_or`, but "0s" is allowed (it turns the feature off).
    fn duration_or_zero(&mut self, v: Option<Spanned<String>>, default: Duration) -> Duration {
        match v {
            Some(z) if parse_duration(z.get_ref()).is_some_and(|d| d.is_zero()) => Duration::ZERO,
            v => self.duration_or(v, default),
        }
    }

    fn duration_or(&mut self, v: Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Some(d) if !d.is_zero() => d,
            _ => {
                self.error(
                    Some(v.span()),
                    format!(
                        "`{}` is not a positive duration (use a number with us, ms, s, m or h, e.g. \"250ms\", \"10s\")",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }
}

/// Every socket the config asks for, with the setting that asks and its
/// span, for the port clash check.
fn sockets<'l>(
    admin: &Admin,
    admin_spans: &[Option<Range<usize>>; 3],
    capture: Option<&Capture>,
    capture_spans: &[Option<Range<usize>>; 2],
    listeners: impl Iterator<Item = (&'l Listener, &'l Range<usize>)>,
) -> Vec<Socket> {
    let mut sockets = Vec::new();
    if let Some(c) = capture {
        for (what, port, span) in [
            ("capture.outbound_port", c.outbound_port, &capture_spans[0]),
            ("capture.inbound_port", c.inbound_port, &capture_spans[1]),
        ] {
            let wildcards = [
                (c.ipv4, IpAddr::from(Ipv4Addr::UNSPECIFIED)),
                (c.ipv6, IpAddr::from(Ipv6Addr::UNSPECIFIED)),
            ];
            for ip in wildcards
                .into_iter()
                .filter_map(|(on, ip)| on.then_some(ip))
            {
                sockets.push(Socket {
                    what: what.to_string(),
                    addr: SocketAddr::new(ip, port),
                    span: span.clone(),
                    v6only: true,
                    admin: false,
                });
            }
        }
    }
    for (l, span) in listeners {
        sockets.push(Socket {
            what: format!("listener `{}` address", l.name),
            addr: l.address,
            span: Some(span.clone()),
            v6only: true,
            admin: false,
        });
    }
    for (what, addr, span) in [
        ("admin.address", Some(admin.address), &admin_spans[0]),
        (
            "admin.prometheus_address",
            admin.prometheus_address,
            &admin_spans[1],
        ),
        (
            "admin.readiness_address",
            admin.readiness_address,
            &admin_spans[2],
        ),
    ] {
        let Some(addr) = addr else { continue };
        sockets.push(Socket {
            what: what.to_string(),
            addr,
            span: span.clone(),
            v6only: false,
            admin: true,
        });
    }
    sockets
}

/// A socket the config asks for, in the port clash check.
struct Socket {
    /// The setting, as the file names it.
    what: String,
    addr: SocketAddr,
    span: Option<Range<usize>>,
    /// `[::]` here does not take IPv4 too (capture listeners are v6-only; an
    /// admin endpoint on `[::]` is dual-stack).
    v6only: bool,
    admin: bool,
}

impl Socket {
    fn overlaps(&self, o: &Socket) -> bool {
        self.addr.port() == o.addr.port()
            && (self.addr.ip() == o.addr.ip() || self.covers(o) || o.covers(self))
    }

    /// A wildcard address that takes `o`'s address too.
    fn covers(&self, o: &Socket) -> bool {
        self.addr.ip().is_unspecified()
            && (self.addr.is_ipv4() == o.addr.is_ipv4() || (self.addr.is_ipv6() && !self.v6only))
    }
}

/// `/config_dump` shows a token bucket the way the file writes it.
fn ser_token_bucket<S: Serializer>(b: &Option<TokenBucketConfig>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeStruct;
    let Some(b) = b else {
        return s.serialize_none();
    };
    let mut st = s.serialize_struct("TokenBucket", 3)?;
    st.serialize_field("tokens", &b.max_tokens())?;
    st.serialize_field("fill_interval", &format_duration(b.fill_interval()))?;
    st.serialize_field("tokens_per_fill", &b.tokens_per_fill())?;
    st.end()
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the config fuzz target (fuzz/README.md): these checks that
    /// compare two fields reported no position (line 0).
    #[test]
    fn cross_field_errors_have_positions() {
        let twice = "[[cluster]]\nname = \"a\"\nendpoints = [\"127.0.0.1:1\"]\n\n\
                     [[cluster]]\nname = \"a\"\nendpoints = [\"127.0.0.1:2\"]\n";
        let on_capture_port = "[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n\n\
                               [[listener]]\nname = \"l\"\naddress = \"127.0.0.1:15006\"\ncluster = \"c\"\n";
        for (text, line) in [
            (twice, 6),
            (
                "[capture]\noutbound_port = 15001\ninbound_port = 15001\n",
                3,
            ),
            ("[capture]\noutbound_port = 15006\n", 2),
            ("[capture]\nipv4 = false\nipv6 = false\n", 3),
            (on_capture_port, 7),
        ] {
            let e = Config::from_toml(text, None).unwrap_err();
            let lines: Vec<usize> = e.errors.iter().map(|d| d.line).collect();
            assert_eq!(lines, [line], "{e}");
        }
    }

    /// `[runtime] batch_wait`: 100 µs by default, "0s" turns it off, a wait
    /// over 1 ms is refused with its line.
    #[test]
    fn batch_wait_defaults_turns_off_and_is_bounded() {
        assert_eq!(
            Config::builtin().runtime.batch_wait,
            Duration::from_micros(100)
        );
        for (text, want) in [
            ("[runtime]\nbatch_wait = \"0s\"\n", Duration::ZERO),
            (
                "[runtime]\nbatch_wait = \"50us\"\n",
                Duration::from_micros(50),
            ),
            (
                "[runtime]\nbatch_wait = \"1ms\"\n",
                Duration::from_millis(1),
            ),
        ] {
            let c = Config::from_toml(text, None).unwrap();
            assert_eq!(c.runtime.batch_wait, want, "{text}");
        }
        for bad in ["\"2ms\"", "\"soon\"", "\"-1us\""] {
            let text = format!("[runtime]\nbatch_wait = {bad}\n");
            let e = Config::from_toml(&text, None).unwrap_err();
            let lines: Vec<usize> = e.errors.iter().map(|d| d.line).collect();
            assert_eq!(lines, [2], "{e}");
            assert!(
                e.to_string().contains("batch_wait") || e.to_string().contains("duration"),
                "{e}"
            );
        }
    }

    /// `[runtime] sleep_batch_wait`: off by default, a wait over 1 ms is
    /// refused with its line.
    #[test]
    fn sleep_batch_wait_is_off_by_default_and_bounded() {
        assert_eq!(Config::builtin().runtime.sleep_batch_wait, Duration::ZERO);
        let c = Config::from_toml("[runtime]\nsleep_batch_wait = \"100us\"\n", None).unwrap();
        assert_eq!(c.runtime.sleep_batch_wait, Duration::from_micros(100));
        for bad in ["\"2ms\"", "\"soon\""] {
            let text = format!("[runtime]\nsleep_batch_wait = {bad}\n");
            let e = Config::from_toml(&text, None).unwrap_err();
            let lines: Vec<usize> = e.errors.iter().map(|d| d.line).collect();
            assert_eq!(lines, [2], "{e}");
        }
        let e = Config::from_toml("[runtime]\nsleep_batch_wait = \"2ms\"\n", None).unwrap_err();
        assert!(e.to_string().contains("sleep_batch_wait"), "{e}");
    }

    #[test]
    fn builtin_is_istio_passthrough() {
        let c = Config::builtin();
        let cap = c.capture.expect("capture on by default");
        assert_eq!((cap.outbound_port, cap.inbound_port), (15001, 15006));
        assert_eq!(cap.inbound_source_v4, Ipv4Addr::new(127, 0, 0, 6));
        assert_eq!(cap.forwarding, Forwarding::Copy);
        assert!(c.listeners.is_empty());
    }

    #[test]
    fn shipped_file_equals_builtin() {
        let shipped = include_str!("../../config/remora.toml");
        assert_eq!(Config::from_toml(shipped, None).unwrap(), Config::builtin());
    }

    /// The commented-out examples of the shipped file (`# [[table]]` blocks up
    /// to a blank line) are valid config, so the documentation cannot drift
    /// from what the validator accepts.
    #[test]
    fn shipped_examples_validate() {
        let shipped = include_str!("../../config/remora.toml");
        let mut text = String::new();
        let mut in_block = false;
        for line in shipped.lines() {
            in_block = (in_block && line.starts_with('#')) || line.starts_with("# [[");
            if in_block {
                let uncommented = line.strip_prefix('#').unwrap_or(line);
                text.push_str(uncommented.strip_prefix(' ').unwrap_or(uncommented));
                text.push('\n');
            }
        }
        for c in ["reviews-v2", "reviews-v3", "reviews-shadow"] {
            text.push_str(&format!(
                "[[cluster]]\nname = \"{c}\"\nendpoints = [\"127.0.0.1:9\"]\n"
            ));
        }
        let c = Config::from_toml(&text, None).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert!(c.listeners[0].connection_rate_limit.is_some());
        let vh = &c.routes.table.virtual_hosts[0];
        assert!(vh.rate_limit.is_some());
        let route = &vh.routes[0];
        assert!(route.rate_limit.is_some());
        let crate::http::route::RouteAction::Forward(f) = &route.action else {
            panic!("not a forward route")
        };
        assert!(f.fault.is_some() && f.mirror.is_some() && f.retry.is_some());
        let backend = &c.clusters[0];
        assert!(backend.health_check.is_some() && backend.outlier_detection.is_some());
        assert_eq!(backend.endpoints[1].weight, 3);
        assert!(matches!(c.clusters[1].discovery, Discovery::Dns { .. }));
        assert_eq!(c.clusters[1].hash_policy.len(), 3);
        let names: Vec<&str> = c
            .authorization
            .policies()
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(names, vec!["deny-admin", "frontend-reads"]);
    }

    #[test]
    fn unknown_key_has_line_and_column() {
        let e = Config::from_toml("[runtime]\ncores = 1\nbogus = 2\n", None).unwrap_err();
        assert_eq!(e.errors.len(), 1);
        assert_eq!((e.errors[0].line, e.errors[0].column), (3, 1));
        assert!(e.errors[0].message.contains("bogus"), "{e}");
    }

    #[test]
    fn all_semantic_errors_reported_with_lines() {
        let text = r#"
[[cluster]]
name = "b"
endpoints = ["127.0.0.1:80", "nope"]
connect_timeout = "10 parsecs"

[[listener]]
name = "l"
address = "127.0.0.1:99999"
cluster = "b"

[[listener]]
name = "m"
address = "127.0.0.1:1000"
cluster = "missing"
forwarding = "teleport"
"#;
        let e = Config::from_toml(text, Some(Path::new("x.toml"))).unwrap_err();
        let lines: Vec<usize> = e.errors.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![4, 5, 9, 15], "{e}");
        assert!(e.to_string().starts_with("x.toml:4:"), "{e}");
    }

    #[test]
    fn protocol_and_detection_settings() {
        let c = Config::from_toml(
            "[capture]\nprotocol = \"auto\"\ndetect_timeout = \"250ms\"\nhttp_ports = [8080]\nopaque_ports = [3306, 8080]\n",
            None,
        )
        .unwrap();
        let cap = c.capture.unwrap();
        assert_eq!(cap.detect_timeout, Duration::from_millis(250));
        // Opaque wins over http when a port is in both lists.
        assert_eq!(cap.protocol_for(8080), Protocol::Tcp);
        assert_eq!(cap.protocol_for(3306), Protocol::Tcp);
        assert_eq!(cap.protocol_for(80), Protocol::Auto);
        let d = Config::builtin();
        assert_eq!(d.capture.unwrap().protocol, Protocol::Auto);
        assert_eq!(d.http.request_headers_timeout, Duration::from_secs(60));
        assert_eq!(d.http.pool_max_idle_per_endpoint, 1024);
    }

    #[test]
    fn protocol_errors_have_lines() {
        let text = r#"[capture]
protocol = "udp"
http_ports = [80, 70000]

[[cluster]]
name = "b"
endpoints = ["127.0.0.1:80"]

[[listener]]
name = "l"
address = "127.0.0.1:1000"
cluster = "b"
protocol = "grpc"

[http]
idle_timeout = "soon"
pool_max_idle_per_endpoint = -1
"#;
        let e = Config::from_toml(text, None).unwrap_err();
        let lines: Vec<usize> = e.errors.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 3, 13, 16, 17], "{e}");
        assert!(e.errors[0].message.contains("udp"), "{e}");
    }

    #[test]
    fn overload_defaults_values_and_errors() {
        let d = Config::builtin().overload;
        assert!(!d.enabled(), "nothing monitored by default");
        assert_eq!(d.shed_idle_connections_threshold, 90);
        let c = Config::from_toml(
            "[overload]\nmax_heap_size_bytes = 1073741824\nstop_accepting_requests_threshold = 100\n",
            None,
        )
        .unwrap();
        assert!(c.overload.enabled());
        assert_eq!(c.overload.stop_accepting_requests_threshold, 100);
        let text = "[overload]\nmax_open_fds = -1\nshed_idle_connections_threshold = 0\nrefresh_interval = \"0s\"\nmax_heap = 1\n";
        let e = Config::from_toml(text, None).unwrap_err();
        assert!(e.to_string().contains("max_heap"), "{e}");
        let text = "[overload]\nmax_open_fds = -1\nshed_idle_connections_threshold = 0\nrefresh_interval = \"0s\"\n";
        let e = Config::from_toml(text, None).unwrap_err();
        let lines: Vec<usize> = e.errors.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![2, 3, 4], "{e}");
    }

    #[test]
    fn body_limits_default_override_and_errors() {
        let d = Config::builtin().http;
        assert_eq!(d.max_request_body_bytes, 0, "unlimited by default");
        assert_eq!(d.lingering_time, Duration::from_secs(5));
        assert_eq!(d.lingering_max_bytes, 16 << 20);
        let ok = r#"[http]
max_request_body_bytes = 1048576
lingering_time = "0s"

[[cluster]]
name = "a"
endpoints = ["127.0.0.1:80"]

[[virtual_host]]
name = "v"
domains = ["*"]
max_request_body_bytes = 10

[[virtual_host.route]]
match = { prefix = "/up" }
cluster = "a"
max_request_body_bytes = 0

[[virtual_host.route]]
match = { prefix = "/" }
cluster = "a"
"#;
        let c = Config::from_toml(ok, None).unwrap();
        assert_eq!(c.http.max_request_body_bytes, 1 << 20);
        assert_eq!(c.http.lingering_time, Duration::ZERO);
        let vh = &c.routes.table.virtual_hosts[0];
        assert_eq!(vh.max_request_body_bytes, Some(10));
        let limit = |i: usize| match &vh.routes[i].action {
            crate::http::route::RouteAction::Forward(f) => f.max_request_body_bytes,
            _ => panic!("not a forward route"),
        };
        assert_eq!((limit(0), limit(1)), (Some(0), None));

        let bad = r#"[http]
max_request_body_bytes = -1
lingering_max_bytes = -5

[[cluster]]
name = "a"
endpoints = ["127.0.0.1:80"]

[[virtual_host]]
name = "v"
domains = ["*"]
max_request_body_bytes = -2

[[virtual_host.route]]
match = { prefix = "/" }
direct_response = { status = 200 }
max_request_body_bytes = 5

[[virtual_host.route]]
match = { prefix = "/a" }
cluster = "a"
max_request_body_bytes = -3
"#;
        let e = Config::from_toml(bad, None).unwrap_err();
        let at: Vec<(usize, usize)> = e.errors.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(
            at,
            vec![(2, 26), (3, 23), (12, 26), (17, 26), (22, 26)],
            "{e}"
        );
        assert!(e.errors[0].message.contains("0 (no limit)"), "{e}");
        assert!(e.errors[3].message.contains("applies only to"), "{e}");
    }

    #[test]
    fn routes_validated_against_clusters_with_lines() {
        let ok = r#"[[cluster]]
name = "a"
endpoints = ["127.0.0.1:80"]

[[virtual_host]]
name = "v"
domains = ["*"]

[[virtual_host.route]]
match = { prefix = "/" }
cluster = "a"
"#;
        let c = Config::from_toml(ok, None).unwrap();
        assert_eq!(c.routes.table.virtual_hosts.len(), 1);
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(dump["routes"][0]["name"], "v");
        assert_eq!(c, Config::from_toml(ok, None).unwrap());
        assert_ne!(
            c,
            Config::from_toml(&ok.replace("\"/\"", "\"/x\""), None).unwrap()
        );

        let bad = r#"[[cluster]]
name = "a"
endpoints = ["127.0.0.1:80"]

[[virtual_host]]
name = "v"
domains = ["*"]

[[virtual_host.route]]
match = { prefix = "/" }
cluster = "nope"

[[virtual_host.route]]
match = { prefix = "/" }
cluster = "a"
bogus = 1
"#;
        let e = Config::from_toml(bad, None).unwrap_err();
        // Unknown keys are a parse error (reported alone, at its line).
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].line, 16, "{e}");
        let e = Config::from_toml(&bad.replace("bogus = 1\n", ""), None).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!((e.errors[0].line, e.errors[0].column), (11, 11), "{e}");
        assert!(e.errors[0].message.contains("nope"), "{e}");
    }

    #[test]
    fn listener_detect_timeout_defaults_to_the_captures() {
        let text = |capture: &str, key: &str| {
            format!(
                "{capture}[[cluster]]\nname = \"b\"\nendpoints = [\"127.0.0.1:80\"]\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:10000\"\ncluster = \"b\"\nprotocol = \"auto\"\n{key}"
            )
        };
        let no_capture = "[capture]\nenabled = false\n";
        let l = |t: String| Config::from_toml(&t, None).unwrap().listeners[0].detect_timeout;
        assert_eq!(l(text(no_capture, "")), DEFAULT_DETECT_TIMEOUT);
        assert_eq!(
            l(text("[capture]\ndetect_timeout = \"2s\"\n", "")),
            Duration::from_secs(2)
        );
        assert_eq!(
            l(text(no_capture, "detect_timeout = \"750ms\"\n")),
            Duration::from_millis(750)
        );
        let e =
            Config::from_toml(&text(no_capture, "detect_timeout = \"soon\"\n"), None).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert!(
            e.errors[0]
                .message
                .contains("`soon` is not a positive duration"),
            "{e}"
        );
        assert_eq!((e.errors[0].line, e.errors[0].column), (11, 18), "{e}");
    }

    /// TCP_DEFER_ACCEPT: on for `http` (the client speaks first), off for
    /// `tcp` and `auto` (a server-first protocol would wait a second); the
    /// key overrides either way, and the capture ports never defer.
    #[test]
    fn listener_defer_accept_defaults_by_protocol() {
        let text = |protocol: &str, key: &str| {
            format!(
                "[capture]\nenabled = true\n[[cluster]]\nname = \"b\"\nendpoints = [\"127.0.0.1:80\"]\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:10000\"\ncluster = \"b\"\nprotocol = \"{protocol}\"\n{key}"
            )
        };
        let defer = |t: String| Config::from_toml(&t, None).unwrap().listeners[0].defer_accept;
        assert!(defer(text("http", "")));
        assert!(!defer(text("tcp", "")));
        assert!(!defer(text("auto", "")));
        assert!(!defer(text("http", "defer_accept = false\n")));
        assert!(defer(text("tcp", "defer_accept = true\n")));
        let c = Config::from_toml(&text("http", ""), None).unwrap();
        let keys = crate::listener::listen_keys(&c);
        assert!(keys.len() > 1, "capture ports and the listener");
        for k in keys {
            let explicit = matches!(k.origin, crate::shard::Origin::Listener(_));
            assert_eq!(k.options.defer_accept, explicit, "{k:?}");
        }
        let e = Config::from_toml(&text("http", "defer_accept = \"yes\"\n"), None).unwrap_err();
        assert_eq!((e.errors[0].line, e.errors[0].column), (11, 16), "{e}");
        assert!(
            e.errors[0].message.contains("expected true or false"),
            "{e}"
        );
    }

    #[test]
    fn listener_connection_rate_limit() {
        let ok = r#"[[cluster]]
name = "b"
endpoints = ["127.0.0.1:80"]

[[listener]]
name = "l"
address = "127.0.0.1:10000"
cluster = "b"
connection_rate_limit = { tokens = 1000, fill_interval = "1s", tokens_per_fill = 1000 }

[[listener]]
name = "m"
address = "127.0.0.1:10001"
cluster = "b"
"#;
        let c = Config::from_toml(ok, None).unwrap();
        let b = c.listeners[0].connection_rate_limit.unwrap();
        assert_eq!(
            (b.max_tokens(), b.tokens_per_fill(), b.fill_interval()),
            (1000, 1000, Duration::from_secs(1))
        );
        assert_eq!(c.listeners[1].connection_rate_limit, None);
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(
            dump["listeners"][0]["connection_rate_limit"],
            serde_json::json!({ "tokens": 1000, "fill_interval": "1s", "tokens_per_fill": 1000 })
        );
        assert!(dump["listeners"][1]["connection_rate_limit"].is_null());
        // A changed limit is a changed config (reload publishes it).
        assert_ne!(
            c,
            Config::from_toml(&ok.replace("tokens = 1000,", "tokens = 999,"), None).unwrap()
        );

        let bad = r#"[[cluster]]
name = "b"
endpoints = ["127.0.0.1:80"]

[[listener]]
name = "l"
address = "127.0.0.1:10000"
cluster = "b"
connection_rate_limit = { tokens = -5, fill_interval = "20ms", tokens_per_fill = 0 }
"#;
        let e = Config::from_toml(bad, None).unwrap_err();
        let at: Vec<(usize, usize)> = e.errors.iter().map(|d| (d.line, d.column)).collect();
        assert_eq!(at, vec![(9, 36), (9, 56), (9, 82)], "{e}");
        assert_eq!(
            e.errors[0].message,
            "listener `l`: connection_rate_limit.tokens must be within 1..=4294967295, got -5"
        );
        assert!(e.errors[1].message.contains("at least 50ms"), "{e}");
        assert!(e.errors[2].message.contains("tokens_per_fill"), "{e}");

        // Unknown keys (HTTP-only ones included) are parse errors at their line.
        let e = Config::from_toml(
            &bad.replace(
                "tokens_per_fill = 0",
                "tokens_per_fill = 1, response_headers = true",
            ),
            None,
        )
        .unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].line, 9, "{e}");
        assert!(e.errors[0].message.contains("response_headers"), "{e}");
    }

    #[test]
    fn route_policies_with_file_line_col() {
        let text = r#"[[cluster]]
name = "reviews"
endpoints = ["127.0.0.1:80"]

[[cluster]]
name = "reviews-shadow"
endpoints = ["127.0.0.1:81"]

[[virtual_host]]
name = "v"
domains = ["*"]
rate_limit = { tokens = 100, fill_interval = "1s", tokens_per_fill = 100 }

[[virtual_host.route]]
name = "r"
match = { prefix = "/" }
cluster = "reviews"
fault = { delay = "2s", delay_percent = 10.0, abort_status = 503, abort_percent = 5.0 }
mirror = { cluster = "shadow", percent = 100.0 }
"#;
        let e = Config::from_toml(text, Some(Path::new("mesh.toml"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mesh.toml:19:22: route `r`: mirror.cluster: unknown cluster `shadow` (defined: reviews, reviews-shadow); define it in a [[cluster]] table or fix the name"
        );
        let c = Config::from_toml(&text.replace("\"shadow\"", "\"reviews-shadow\""), None).unwrap();
        let vh = &c.routes.table.virtual_hosts[0];
        assert!(vh.rate_limit.is_some());
        let crate::http::route::RouteAction::Forward(f) = &vh.routes[0].action else {
            panic!("not a forward route")
        };
        assert_eq!(f.mirror.as_ref().map(|m| m.cluster.index), Some(1));
        assert!(f.fault.is_some());
        // Policies take part in the reload fingerprint.
        assert_ne!(
            c,
            Config::from_toml(
                &text
                    .replace("\"shadow\"", "\"reviews-shadow\"")
                    .replace("abort_percent = 5.0", "abort_percent = 6.0"),
                None
            )
            .unwrap()
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("100us"), Some(Duration::from_micros(100)));
        assert_eq!(format_duration(Duration::from_micros(100)), "100us");
        assert_eq!(format_duration(Duration::from_micros(2_000)), "2ms");
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("ms"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn publish_bumps_version_and_keeps_old_snapshots() {
        let h = ConfigHandle::new(Config::builtin());
        let old = h.current();
        let mut next = Config::builtin();
        next.runtime.max_connections_per_core = 7;
        assert_eq!(h.publish(next), 2);
        assert_eq!(old.version, 1);
        assert_eq!(old.config.runtime.max_connections_per_core, 16_384);
        assert_eq!(h.current().config.runtime.max_connections_per_core, 7);
    }

    #[test]
    fn refresh_keeps_the_held_snapshot_until_a_newer_one() {
        let h = ConfigHandle::new(Config::builtin());
        let mut held = h.current();
        let first = held.clone();
        h.refresh(&mut held);
        assert!(
            Arc::ptr_eq(&held, &first),
            "no publication: the same snapshot"
        );
        let mut next = Config::builtin();
        next.runtime.max_connections_per_core = 7;
        h.publish(next);
        h.refresh(&mut held);
        assert_eq!(held.version, 2);
        assert_eq!(held.config.runtime.max_connections_per_core, 7);
        let second = held.clone();
        h.refresh(&mut held);
        assert!(Arc::ptr_eq(&held, &second));
    }
}
