//! Authorization end to end (issue 11): Istio's AuthorizationPolicy on an
//! inbound Remora sidecar, driven over real sockets by the built binary.
//!
//! ```text
//! test client (rustls, a test-PKI identity, Istio ALPN) ─ mTLS ─┐
//! curl --cert / a Remora outbound sidecar (ISTIO_MUTUAL) ─ mTLS ─┼─► inbound sidecar ─► app (HTTP) / echo (TCP)
//! plaintext client (PERMISSIVE only) ───────────────────────────┘    [[authorization_policy]]
//! ```
//!
//! Callers are three workloads in two namespaces (`frontend/web`,
//! `frontend/admin`, `backoffice/batch`). Every HTTP case checks both sides
//! of a decision: an allowed request reaches the app (200, counted there);
//! a denied one gets 403 `RBAC: access denied` and the app never sees it.
//! Then the TCP view of the same policies (Istio's rules for HTTP-only
//! fields), hot reload, and what an operator sees (access log, /stats,
//! Prometheus, /certs).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{spiffe, LeafOptions, Pki};
use common::http::{Backend, Client};
use common::{free_port, listener, Remora, TempDir};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, StreamOwned,
};
use serde_json::Value;

const SERVER: &str = "spiffe://cluster.local/ns/default/sa/server";
const DENIED_BODY: &str = "RBAC: access denied";
/// The name Remora gives a denial by "ALLOW policies exist, none matched".
const NO_ALLOW_MATCHED: &str = "(no ALLOW policy matched)";

// ───────────────────────────── identities and clients ─────────────────────────────

/// One mesh: a PKI, the server's cert dir, and client identities.
struct Mesh {
    dir: TempDir,
    pki: Pki,
    web: Identity,
    admin: Identity,
    batch: Identity,
}

impl Mesh {
    fn new(tag: &str) -> Mesh {
        let dir = TempDir::new(tag);
        let pki = Pki::new("mesh");
        // A month of validity, so /certs has a non-zero days_until_expiration.
        pki.leaf_with(&LeafOptions {
            uris: &[SERVER],
            not_after: time::Duration::days(30),
            ..Default::default()
        })
        .write_istio_dir(&dir.0.join("server"));
        let web = Identity::new(&pki, &dir, "frontend", "web");
        let admin = Identity::new(&pki, &dir, "frontend", "admin");
        let batch = Identity::new(&pki, &dir, "backoffice", "batch");
        Mesh {
            dir,
            pki,
            web,
            admin,
            batch,
        }
    }

    fn server_certs(&self) -> PathBuf {
        self.dir.0.join("server")
    }
}

/// A client workload: its SPIFFE ID, its files (for curl and for an
/// outbound sidecar's cert dir) and what a rustls client needs.
struct Identity {
    id: String,
    /// An Istio cert dir (cert-chain.pem, key.pem, root-cert.pem).
    cert_dir: PathBuf,
    chain: Vec<CertificateDer<'static>>,
    key_pem: String,
    root: CertificateDer<'static>,
}

impl Identity {
    fn new(pki: &Pki, dir: &TempDir, ns: &str, sa: &str) -> Identity {
        let id = spiffe(ns, sa);
        let leaf = pki.workload(&id);
        let cert_dir = dir.0.join(format!("{ns}-{sa}"));
        leaf.write_istio_dir(&cert_dir);
        Identity {
            chain: CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap(),
            key_pem: leaf.key_pem.clone(),
            root: CertificateDer::from_pem_slice(leaf.root_pem.as_bytes()).unwrap(),
            cert_dir,
            id,
        }
    }

    /// A rustls client presenting this identity with the given ALPN.
    fn tls_config(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.root.clone()).unwrap();
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .unwrap();
        let mut c = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyName(webpki)))
            .with_client_auth_cert(
                self.chain.clone(),
                PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(c)
    }
}

/// Verifies the server's chain against the mesh root but not its name: a
/// workload certificate names a SPIFFE ID, not a host (tests/tls.rs covers
/// SPIFFE ID checks on the outbound side).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Who calls: a mesh identity over mTLS, or a plaintext client.
#[derive(Clone, Copy)]
enum Who<'a> {
    Mtls(&'a Identity),
    Plain,
}

impl std::fmt::Debug for Who<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Who::Mtls(i) => write!(f, "mTLS as {}", i.id),
            Who::Plain => f.write_str("plaintext"),
        }
    }
}

/// Istio's ALPN for HTTP/1.1 over mesh mTLS (what an Istio sidecar sends).
const ALPN_HTTP: &[u8] = b"istio-http/1.1";
/// Istio's ALPN for TCP over mesh mTLS.
const ALPN_TCP: [&[u8]; 2] = [b"istio-peer-exchange", b"istio"];

/// A client connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn open(port: u16, who: Who<'_>, alpn: &[&[u8]]) -> Conn {
        Self::open_after(port, who, alpn, Duration::ZERO)
    }

    /// Like `open`, with `pause` between the TCP connect and the first byte
    /// (the ClientHello for mTLS): a slow or descheduled client.
    ///
    /// The TLS client and its hello are built before connecting and the
    /// hello is sent right after: a client that spends a loaded machine's
    /// milliseconds building its config after connecting is a slow client
    /// whether the test means it or not.
    fn open_after(port: u16, who: Who<'_>, alpn: &[&[u8]], pause: Duration) -> Conn {
        let tls = match who {
            Who::Plain => None,
            Who::Mtls(id) => {
                let name = ServerName::try_from("server.default.svc").unwrap();
                Some(ClientConnection::new(id.tls_config(alpn), name).unwrap())
            }
        };
        let mut tcp = common::connect(port);
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        std::thread::sleep(pause);
        match tls {
            None => Conn::Plain(tcp),
            Some(mut conn) => {
                // The ClientHello, now; a failure shows at the first read.
                while conn.wants_write() {
                    if conn.write_tls(&mut tcp).is_err() {
                        break;
                    }
                }
                Conn::Tls(Box::new(StreamOwned::new(conn, tcp)))
            }
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

#[derive(Debug)]
struct Resp {
    status: u16,
    /// Shown in failure messages.
    #[allow(dead_code)]
    head: String,
    body: String,
}

/// Sends one request on a new connection and reads the response
/// (Content-Length framed: the app's JSON and Remora's local replies).
fn http(port: u16, who: Who<'_>, raw: &str) -> Resp {
    http_after(port, who, raw, Duration::ZERO)
}

/// `http` from a client that pauses `pause` after connecting.
fn http_after(port: u16, who: Who<'_>, raw: &str, pause: Duration) -> Resp {
    let mut c = Conn::open_after(port, who, &[ALPN_HTTP], pause);
    c.write_all(raw.as_bytes()).unwrap();
    c.flush().unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = c
            .read(&mut chunk)
            .unwrap_or_else(|e| panic!("{who:?}: reading a response: {e}"));
        assert!(
            n > 0,
            "{who:?}: closed before a response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length: {head:?}"));
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "closed inside a body");
        body.extend_from_slice(&chunk[..n]);
    }
    Resp {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `METHOD PATH` with a Host and extra header lines, one request per connection.
fn rq(method: &str, path: &str, host: &str, headers: &str) -> String {
    let body = if method == "POST" || method == "PUT" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}{body}Connection: close\r\n\r\n")
}

fn get(path: &str) -> String {
    rq("GET", path, "app", "")
}

// ───────────────────────────── the inbound sidecar ─────────────────────────────

/// An echo app for the TCP listener that counts what reaches it.
struct Echo {
    addr: SocketAddr,
    conns: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Echo {
    fn start() -> Echo {
        let l = listener();
        let addr = l.local_addr().unwrap();
        let (conns, bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (c, b) = (conns.clone(), bytes.clone());
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                c.fetch_add(1, Ordering::SeqCst);
                let b = b.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n @ 1..) = s.read(&mut buf) {
                        // Counted before the echo: a client that got its
                        // bytes back knows they were counted.
                        b.fetch_add(n as u64, Ordering::SeqCst);
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Echo { addr, conns, bytes }
    }
}

/// The ports of one inbound sidecar, chosen before its policies are written
/// (policies name ports).
struct Ports {
    /// HTTP listener (direction inbound) in front of the app.
    http: u16,
    /// A second one, for `ports` and `destination.port`.
    http2: u16,
    /// TCP listener (direction inbound) in front of the echo app.
    tcp: u16,
    admin: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            http: free_port(),
            http2: free_port(),
            tcp: free_port(),
            admin: free_port(),
        }
    }
}

/// Pod B's sidecar and what stands behind it, minus the process: enough to
/// write (and rewrite) its config file.
struct Pod {
    p: Ports,
    app: Backend,
    echo: Echo,
    certs: PathBuf,
    mode: String,
    extra: String,
}

impl Pod {
    /// The whole config file with `policies`: inbound listeners (Istio's
    /// Sidecar ingress listeners) for HTTP on two ports and for TCP.
    fn toml(&self, policies: &str) -> String {
        let Ports {
            http,
            http2,
            tcp,
            admin,
        } = self.p;
        format!(
            r#"[capture]
enabled = false
[admin]
address = "127.0.0.1:{admin}"
prometheus_address = ""
readiness_address = ""
watch_config = false
[tls]
cert_dir = "{certs}"
[peer_authentication]
mode = "{mode}"
{extra}
[[cluster]]
name = "app"
endpoints = ["{app}"]
[[cluster]]
name = "echo"
endpoints = ["{echo}"]
[[listener]]
name = "inbound-http"
address = "127.0.0.1:{http}"
cluster = "app"
protocol = "http"
direction = "inbound"
[[listener]]
name = "inbound-http2"
address = "127.0.0.1:{http2}"
cluster = "app"
protocol = "http"
direction = "inbound"
[[listener]]
name = "inbound-tcp"
address = "127.0.0.1:{tcp}"
cluster = "echo"
protocol = "tcp"
direction = "inbound"
# The echo app's clients speak first: PERMISSIVE may wait for a ClientHello
# as long as a descheduled test thread needs (the default 100 ms could send
# a late mTLS hello the plaintext way).
detect_timeout = "10s"
[[virtual_host]]
name = "app"
domains = ["*"]
[[virtual_host.route]]
match = {{ prefix = "/" }}
cluster = "app"

{policies}
"#,
            certs = self.certs.display(),
            mode = self.mode,
            extra = self.extra,
            app = self.app.addr,
            echo = self.echo.addr,
        )
    }
}

/// Pod B: an inbound sidecar with mTLS mode `mode` and the given policies,
/// in front of an HTTP app and a TCP echo app.
struct Inbound {
    remora: Remora,
    pod: Pod,
}

/// `ib.p`, `ib.app`, `ib.toml(...)`: the pod's parts.
impl std::ops::Deref for Inbound {
    type Target = Pod;
    fn deref(&self) -> &Pod {
        &self.pod
    }
}

impl Inbound {
    fn start(mesh: &Mesh, p: Ports, mode: &str, policies: &str) -> Inbound {
        Self::start_with(mesh, p, mode, policies, "")
    }

    /// `extra`: more TOML (e.g. `[access_log]`).
    fn start_with(mesh: &Mesh, p: Ports, mode: &str, policies: &str, extra: &str) -> Inbound {
        let pod = Pod {
            p,
            app: Backend::start("app"),
            echo: Echo::start(),
            certs: mesh.server_certs(),
            mode: mode.into(),
            extra: extra.into(),
        };
        let remora = Remora::start(&pod.toml(policies), &["--cores", "1"]);
        Inbound { remora, pod }
    }

    /// Asserts the verdict on a request to `port`: allowed means 200 and the
    /// app saw it; denied means 403 `RBAC: access denied` and the app did not.
    fn check_on(&self, port: u16, who: Who<'_>, raw: &str, allowed: bool) -> Resp {
        let before = self.app.count();
        let r = http(port, who, raw);
        let seen = self.app.count() - before;
        let line = raw.lines().next().unwrap_or_default();
        let host = raw
            .lines()
            .find(|l| l.starts_with("Host:"))
            .unwrap_or_default();
        if allowed {
            assert_eq!(
                (r.status, seen),
                (200, 1),
                "{who:?} `{line}` ({host}) on :{port} should be allowed: {r:?}"
            );
        } else {
            // Remora's local replies end with a newline (Envoy's do not).
            assert_eq!(
                (r.status, r.body.trim_end(), seen),
                (403, DENIED_BODY, 0),
                "{who:?} `{line}` ({host}) on :{port} should be denied, unseen by the app: {r:?}"
            );
        }
        r
    }

    fn check(&self, who: Who<'_>, raw: &str, allowed: bool) -> Resp {
        self.check_on(self.p.http, who, raw, allowed)
    }

    /// GET `path` on the admin port; the body.
    fn admin(&self, path: &str) -> String {
        admin_get(self.p.admin, path)
    }

    fn stat(&self, name: &str) -> u64 {
        stat(&self.admin("/stats"), name)
    }

    /// Rewrites the config file with `policies` (atomically: temp + rename).
    fn write_policies(&self, policies: &str) {
        let path = self.remora.config_path();
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, self.toml(policies)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
    }

    /// POST /reload: (status, body).
    fn reload(&self) -> (u16, String) {
        let mut c = Client::new(self.p.admin);
        let r = c.request("POST /reload HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }
}

const ALLOW: bool = true;
const DENY: bool = false;

fn admin_get(port: u16, path: &str) -> String {
    let mut c = Client::new(port);
    let r = c.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    ));
    assert_eq!(r.status, 200, "GET {path}");
    String::from_utf8_lossy(&r.body).into_owned()
}

/// One `name: value` line of a /stats body (0 when absent, as Envoy omits
/// counters never touched).
fn stat(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// A policy in the config's TOML: `[[authorization_policy]]` with `body`.
fn policy(name: &str, action: &str, rules: &str) -> String {
    format!("[[authorization_policy]]\nname = \"{name}\"\naction = \"{action}\"\nrules = {rules}\n")
}

/// A principal as policies write it (without `spiffe://`).
fn principal(id: &Identity) -> &str {
    id.id.strip_prefix("spiffe://").unwrap()
}

// ───────────────────────────── HTTP: one test per rule kind ─────────────────────────────

/// `from.source.principals`: exact, prefix `*` and suffix `*`, each scoped
/// to a path so that one sidecar shows all three.
#[test]
fn principals_exact_prefix_and_suffix() {
    let m = Mesh::new("authz-principals");
    let rules = format!(
        r#"[
  {{ from = [{{ source = {{ principals = ["{web}"] }} }}], to = [{{ operation = {{ paths = ["/exact"] }} }}] }},
  {{ from = [{{ source = {{ principals = ["cluster.local/ns/frontend/*"] }} }}], to = [{{ operation = {{ paths = ["/prefix"] }} }}] }},
  {{ from = [{{ source = {{ principals = ["*/sa/batch"] }} }}], to = [{{ operation = {{ paths = ["/suffix"] }} }}] }},
]"#,
        web = principal(&m.web)
    );
    let ib = Inbound::start(&m, Ports::new(), "STRICT", &policy("who", "ALLOW", &rules));
    let (web, admin, batch) = (Who::Mtls(&m.web), Who::Mtls(&m.admin), Who::Mtls(&m.batch));
    for (who, path, verdict) in [
        (web, "/exact", ALLOW),
        (admin, "/exact", DENY),
        (batch, "/exact", DENY),
        (web, "/prefix", ALLOW),
        (admin, "/prefix", ALLOW),
        (batch, "/prefix", DENY),
        (batch, "/suffix", ALLOW),
        (web, "/suffix", DENY),
    ] {
        ib.check(who, &get(path), verdict);
    }
    let stats = ib.admin("/stats");
    assert_eq!(stat(&stats, "rbac.policy.who.allowed"), 4, "{stats}");
    assert_eq!(
        stat(&stats, &format!("rbac.policy.{NO_ALLOW_MATCHED}.denied")),
        4,
        "{stats}"
    );
}

/// `not_principals`: everyone but the named one (and a plaintext caller
/// on PERMISSIVE has no principal, so `not_principals` matches it).
#[test]
fn not_principals() {
    let m = Mesh::new("authz-not-principals");
    let rules = format!(
        r#"[{{ from = [{{ source = {{ not_principals = ["{}"] }} }}] }}]"#,
        principal(&m.web)
    );
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "PERMISSIVE",
        &policy("not-web", "ALLOW", &rules),
    );
    ib.check(Who::Mtls(&m.batch), &get("/"), ALLOW);
    ib.check(Who::Mtls(&m.admin), &get("/"), ALLOW);
    ib.check(Who::Mtls(&m.web), &get("/"), DENY);
    ib.check(Who::Plain, &get("/"), ALLOW);
}

/// `namespaces`: the namespace part of the caller's SPIFFE ID.
#[test]
fn namespaces() {
    let m = Mesh::new("authz-namespaces");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "frontend-ns",
            "ALLOW",
            r#"[{ from = [{ source = { namespaces = ["frontend"] } }] }]"#,
        ),
    );
    ib.check(Who::Mtls(&m.web), &get("/"), ALLOW);
    ib.check(Who::Mtls(&m.admin), &get("/"), ALLOW);
    ib.check(Who::Mtls(&m.batch), &get("/"), DENY);
}

/// `not_namespaces`.
#[test]
fn not_namespaces() {
    let m = Mesh::new("authz-not-namespaces");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "not-frontend",
            "ALLOW",
            r#"[{ from = [{ source = { not_namespaces = ["front*"] } }] }]"#,
        ),
    );
    ib.check(Who::Mtls(&m.batch), &get("/"), ALLOW);
    ib.check(Who::Mtls(&m.web), &get("/"), DENY);
    ib.check(Who::Mtls(&m.admin), &get("/"), DENY);
}

/// `ip_blocks` and `not_ip_blocks`: the peer is 127.0.0.1, inside
/// 127.0.0.0/8 and outside 10.0.0.0/8.
#[test]
fn ip_blocks_and_not_ip_blocks() {
    let m = Mesh::new("authz-ip");
    let rules = r#"[
  { from = [{ source = { ip_blocks = ["127.0.0.0/8"] } }], to = [{ operation = { paths = ["/loopback"] } }] },
  { from = [{ source = { ip_blocks = ["10.0.0.0/8"] } }], to = [{ operation = { paths = ["/ten"] } }] },
  { from = [{ source = { not_ip_blocks = ["10.0.0.0/8"] } }], to = [{ operation = { paths = ["/not-ten"] } }] },
  { from = [{ source = { not_ip_blocks = ["127.0.0.1"] } }], to = [{ operation = { paths = ["/not-me"] } }] },
]"#;
    let ib = Inbound::start(&m, Ports::new(), "STRICT", &policy("by-ip", "ALLOW", rules));
    let web = Who::Mtls(&m.web);
    for (path, verdict) in [
        ("/loopback", ALLOW),
        ("/ten", DENY),
        ("/not-ten", ALLOW),
        ("/not-me", DENY),
    ] {
        ib.check(web, &get(path), verdict);
    }
}

/// `to.operation.ports`: the inbound listener's port (the destination).
/// Two inbound listeners on one sidecar, one allowed.
#[test]
fn operation_ports() {
    let m = Mesh::new("authz-ports");
    let p = Ports::new();
    let rules = format!(
        r#"[{{ to = [{{ operation = {{ ports = [{}] }} }}] }}]"#,
        p.http
    );
    let (open, closed) = (p.http, p.http2);
    let ib = Inbound::start(&m, p, "STRICT", &policy("one-port", "ALLOW", &rules));
    ib.check_on(open, Who::Mtls(&m.web), &get("/"), ALLOW);
    ib.check_on(closed, Who::Mtls(&m.web), &get("/"), DENY);
}

/// `to.operation.methods` (case-sensitive, as Envoy's header matcher).
#[test]
fn operation_methods() {
    let m = Mesh::new("authz-methods");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "reads",
            "ALLOW",
            r#"[{ to = [{ operation = { methods = ["GET", "HEAD"] } }] }]"#,
        ),
    );
    let web = Who::Mtls(&m.web);
    ib.check(web, &rq("GET", "/", "app", ""), ALLOW);
    ib.check(web, &rq("POST", "/", "app", ""), DENY);
    ib.check(web, &rq("DELETE", "/", "app", ""), DENY);
}

/// `to.operation.paths`: exact, `/prefix/*`, `*suffix`; the query string
/// is not part of the path.
#[test]
fn operation_paths() {
    let m = Mesh::new("authz-paths");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "paths",
            "ALLOW",
            r#"[{ to = [{ operation = { paths = ["/exact", "/api/*", "*.png"] } }] }]"#,
        ),
    );
    let web = Who::Mtls(&m.web);
    for (path, verdict) in [
        ("/exact", ALLOW),
        ("/exact?page=2", ALLOW),
        ("/exact/more", DENY),
        ("/Exact", DENY),
        ("/api/v1/items", ALLOW),
        ("/api", DENY),
        ("/apix/v1", DENY),
        ("/img/logo.png", ALLOW),
        ("/img/logo.jpg", DENY),
    ] {
        ib.check(web, &get(path), verdict);
    }
}

/// `to.operation.not_paths`.
#[test]
fn operation_not_paths() {
    let m = Mesh::new("authz-not-paths");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "not-admin",
            "ALLOW",
            r#"[{ to = [{ operation = { not_paths = ["/admin/*"] } }] }]"#,
        ),
    );
    let web = Who::Mtls(&m.web);
    ib.check(web, &get("/public"), ALLOW);
    ib.check(web, &get("/admin/users"), DENY);
}

/// `to.operation.hosts`: case-insensitive, with a suffix wildcard.
#[test]
fn operation_hosts_ignore_case() {
    let m = Mesh::new("authz-hosts");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "hosts",
            "ALLOW",
            r#"[{ to = [{ operation = { hosts = ["reviews.example.com", "*.internal"] } }] }]"#,
        ),
    );
    let web = Who::Mtls(&m.web);
    for (host, verdict) in [
        ("reviews.example.com", ALLOW),
        ("Reviews.Example.COM", ALLOW),
        ("db.INTERNAL", ALLOW),
        ("ratings.example.com", DENY),
        ("internal", DENY),
    ] {
        ib.check(web, &rq("GET", "/", host, ""), verdict);
    }
}

/// `when` on `request.headers[x-key]` (exact and prefix values; absent
/// header does not match).
#[test]
fn when_request_header() {
    let m = Mesh::new("authz-when-header");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "keyed",
            "ALLOW",
            r#"[{ when = [{ key = "request.headers[X-Key]", values = ["open-sesame", "team-*"] }] }]"#,
        ),
    );
    let web = Who::Mtls(&m.web);
    for (headers, verdict) in [
        ("x-key: open-sesame\r\n", ALLOW),
        ("X-KEY: team-blue\r\n", ALLOW),
        ("x-key: Open-Sesame\r\n", DENY),
        ("x-key: wrong\r\n", DENY),
        ("", DENY),
    ] {
        ib.check(web, &rq("GET", "/", "app", headers), verdict);
    }
}

/// `when` on `source.principal` and `source.namespace`, in two policies
/// scoped by path.
#[test]
fn when_source_principal_and_namespace() {
    let m = Mesh::new("authz-when-source");
    let policies = format!(
        "{}{}",
        policy(
            "by-principal",
            "ALLOW",
            &format!(
                r#"[{{ to = [{{ operation = {{ paths = ["/p"] }} }}], when = [{{ key = "source.principal", values = ["{}"] }}] }}]"#,
                principal(&m.web)
            )
        ),
        policy(
            "by-namespace",
            "ALLOW",
            r#"[{ to = [{ operation = { paths = ["/ns"] } }], when = [{ key = "source.namespace", values = ["backoffice"] }] }]"#,
        )
    );
    let ib = Inbound::start(&m, Ports::new(), "STRICT", &policies);
    let (web, admin, batch) = (Who::Mtls(&m.web), Who::Mtls(&m.admin), Who::Mtls(&m.batch));
    ib.check(web, &get("/p"), ALLOW);
    ib.check(admin, &get("/p"), DENY);
    ib.check(batch, &get("/p"), DENY);
    ib.check(batch, &get("/ns"), ALLOW);
    ib.check(web, &get("/ns"), DENY);
    let stats = ib.admin("/stats");
    assert_eq!(stat(&stats, "rbac.policy.by-principal.allowed"), 1);
    assert_eq!(stat(&stats, "rbac.policy.by-namespace.allowed"), 1);
}

/// `when` on `destination.port`: two inbound listeners, one allowed.
#[test]
fn when_destination_port() {
    let m = Mesh::new("authz-when-port");
    let p = Ports::new();
    let rules = format!(
        r#"[{{ when = [{{ key = "destination.port", values = ["{}"] }}] }}]"#,
        p.http2
    );
    let (open, closed) = (p.http2, p.http);
    let ib = Inbound::start(&m, p, "STRICT", &policy("port-cond", "ALLOW", &rules));
    ib.check_on(open, Who::Mtls(&m.web), &get("/"), ALLOW);
    ib.check_on(closed, Who::Mtls(&m.web), &get("/"), DENY);
}

/// A matching DENY wins over a matching ALLOW, and is named as the
/// deciding policy; the ALLOW is counted for the requests it allowed.
#[test]
fn deny_wins_over_allow() {
    let m = Mesh::new("authz-deny-wins");
    let policies = format!(
        "{}{}",
        policy("allow-all", "ALLOW", "[{}]"),
        policy(
            "deny-batch",
            "DENY",
            &format!(
                r#"[{{ from = [{{ source = {{ principals = ["{}"] }} }}] }}]"#,
                principal(&m.batch)
            )
        )
    );
    let ib = Inbound::start(&m, Ports::new(), "STRICT", &policies);
    ib.check(Who::Mtls(&m.web), &get("/"), ALLOW);
    ib.check(Who::Mtls(&m.batch), &get("/"), DENY);
    let stats = ib.admin("/stats");
    assert_eq!(stat(&stats, "rbac.policy.allow-all.allowed"), 1, "{stats}");
    assert_eq!(stat(&stats, "rbac.policy.allow-all.denied"), 0, "{stats}");
    assert_eq!(stat(&stats, "rbac.policy.deny-batch.denied"), 1, "{stats}");
    assert_eq!(stat(&stats, "rq_rbac_denied"), 1, "{stats}");
}

/// Without an ALLOW policy, whatever no DENY matches is allowed; one ALLOW
/// policy that matches nothing (or has no rules at all) denies everything.
#[test]
fn no_allow_policy_allows_and_an_allow_that_matches_nothing_denies() {
    let m = Mesh::new("authz-allow-nothing");
    let p = Ports::new();
    let deny_only = policy(
        "deny-admin",
        "DENY",
        r#"[{ to = [{ operation = { paths = ["/admin"] } }] }]"#,
    );
    let ib = Inbound::start(&m, p, "STRICT", &deny_only);
    ib.check(Who::Mtls(&m.web), &get("/anything"), ALLOW);
    ib.check(Who::Mtls(&m.web), &get("/admin"), DENY);

    // An ALLOW naming a principal nobody has.
    ib.write_policies(&format!(
        "{deny_only}{}",
        policy(
            "allow-ghost",
            "ALLOW",
            r#"[{ from = [{ source = { principals = ["cluster.local/ns/ghost/sa/none"] } }] }]"#
        )
    ));
    assert_eq!(ib.reload().0, 200);
    ib.check(Who::Mtls(&m.web), &get("/anything"), DENY);
    ib.check(Who::Mtls(&m.batch), &get("/anything"), DENY);

    // Istio's allow-nothing: an ALLOW policy without rules.
    ib.write_policies("[[authorization_policy]]\nname = \"allow-nothing\"\n");
    assert_eq!(ib.reload().0, 200);
    ib.check(Who::Mtls(&m.web), &get("/anything"), DENY);
}

/// AUDIT never changes the decision (allowed stays allowed, denied stays
/// denied) but every request it matches is counted.
#[test]
fn audit_is_counted_and_never_decides() {
    let m = Mesh::new("authz-audit");
    let policies = format!(
        "{}{}",
        policy(
            "audit-writes",
            "AUDIT",
            r#"[{ to = [{ operation = { methods = ["POST"] } }] }]"#
        ),
        policy(
            "deny-secret",
            "DENY",
            r#"[{ to = [{ operation = { paths = ["/secret"] } }] }]"#
        )
    );
    let ib = Inbound::start(&m, Ports::new(), "STRICT", &policies);
    let web = Who::Mtls(&m.web);
    ib.check(web, &rq("POST", "/data", "app", ""), ALLOW);
    ib.check(web, &rq("GET", "/data", "app", ""), ALLOW);
    ib.check(web, &rq("POST", "/secret", "app", ""), DENY);
    let stats = ib.admin("/stats");
    assert_eq!(
        stat(&stats, "rbac.policy.audit-writes.audited"),
        2,
        "{stats}"
    );
    assert_eq!(
        stat(&stats, "rbac.policy.audit-writes.denied"),
        0,
        "{stats}"
    );
    assert_eq!(stat(&stats, "rbac.policy.deny-secret.denied"), 1, "{stats}");
}

/// PERMISSIVE: plaintext has no principal, so an ALLOW on principals
/// (even `*`, "any authenticated peer") denies it; the same request
/// through a Remora outbound sidecar (ISTIO_MUTUAL) is allowed.
#[test]
fn plaintext_has_no_principal() {
    let m = Mesh::new("authz-plaintext");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "PERMISSIVE",
        &policy(
            "authenticated",
            "ALLOW",
            r#"[{ from = [{ source = { principals = ["*"] } }] }]"#,
        ),
    );
    ib.check(Who::Plain, &get("/plain"), DENY);
    ib.check(Who::Mtls(&m.web), &get("/mtls"), ALLOW);
    let (a_port, a_admin) = (free_port(), free_port());
    let _a = outbound_sidecar(&m.web, a_port, a_admin, ib.p.http);
    ib.check_on(a_port, Who::Plain, &get("/via-sidecar"), ALLOW);
    let last = ib.app.last();
    assert!(
        last["headers"]["x-forwarded-client-cert"]
            .as_str()
            .is_some_and(|x| x.ends_with(&format!("URI={}", m.web.id))),
        "{last}"
    );
}

/// Pod A's sidecar for `id`: a plaintext HTTP listener whose cluster is the
/// inbound sidecar, reached with ISTIO_MUTUAL.
fn outbound_sidecar(id: &Identity, port: u16, admin: u16, inbound: u16) -> Remora {
    Remora::start(
        &format!(
            r#"[capture]
enabled = false
[admin]
address = "127.0.0.1:{admin}"
prometheus_address = ""
readiness_address = ""
watch_config = false
[tls]
cert_dir = "{certs}"
[[cluster]]
name = "app.default.svc.cluster.local"
endpoints = ["127.0.0.1:{inbound}"]
tls = {{ mode = "ISTIO_MUTUAL", subject_alt_names = ["{SERVER}"] }}
[[listener]]
name = "outbound"
address = "127.0.0.1:{port}"
cluster = "app.default.svc.cluster.local"
protocol = "http"
[[virtual_host]]
name = "app"
domains = ["*"]
[[virtual_host.route]]
match = {{ prefix = "/" }}
cluster = "app.default.svc.cluster.local"
"#,
            certs = id.cert_dir.display()
        ),
        &["--cores", "1"],
    )
}

/// curl with client certificates (a non-mesh mTLS client, ALPN http/1.1)
/// on a STRICT port: the identity of its certificate is what the policy sees.
#[test]
fn curl_client_certificates() {
    let m = Mesh::new("authz-curl");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "frontend-only",
            "ALLOW",
            r#"[{ from = [{ source = { namespaces = ["frontend"] } }] }]"#,
        ),
    );
    let curl = |id: &Identity| {
        let before = ib.app.count();
        let out = std::process::Command::new("curl")
            .args([
                "-sS",
                "--http1.1",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .arg("--cacert")
            .arg(id.cert_dir.join("root-cert.pem"))
            .arg("--cert")
            .arg(id.cert_dir.join("cert-chain.pem"))
            .arg("--key")
            .arg(id.cert_dir.join("key.pem"))
            // The server's certificate names a SPIFFE ID, not a host.
            .arg("--insecure")
            .arg(format!("https://127.0.0.1:{}/curl", ib.p.http))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            code.to_string(),
            body.trim_end().to_string(),
            ib.app.count() - before,
        )
    };
    assert_eq!(curl(&m.web).0, "200");
    assert_eq!(curl(&m.batch), ("403".into(), DENIED_BODY.into(), 0));
}

// ───────────────────────────── TCP ─────────────────────────────

/// Opens an mTLS TCP connection (Istio's TCP ALPN) to the inbound TCP
/// listener as `id`, sends `ping`; Some(bytes echoed back) or None when the
/// connection was closed without an answer.
fn tcp_ping(port: u16, id: &Identity) -> Option<Vec<u8>> {
    let mut c = Conn::open(port, Who::Mtls(id), &ALPN_TCP);
    // A denied connection may be closed while this is written: not an error.
    let _ = c.write_all(b"ping").and_then(|()| c.flush());
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.len() < 4 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    (!got.is_empty()).then_some(got)
}

/// A DENY by principal closes the TCP connection before it is forwarded:
/// the echo app never sees a connection or a byte from the denied caller.
#[test]
fn tcp_deny_by_principal_closes_before_the_app() {
    let m = Mesh::new("authz-tcp-deny");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "deny-batch",
            "DENY",
            &format!(
                r#"[{{ from = [{{ source = {{ principals = ["{}"] }} }}] }}]"#,
                principal(&m.batch)
            ),
        ),
    );
    assert_eq!(tcp_ping(ib.p.tcp, &m.web).as_deref(), Some(&b"ping"[..]));
    assert_eq!(tcp_ping(ib.p.tcp, &m.batch), None);
    assert_eq!(ib.echo.conns.load(Ordering::SeqCst), 1, "only web's");
    assert_eq!(ib.echo.bytes.load(Ordering::SeqCst), 4, "only web's");
    let stats = ib.admin("/stats");
    assert_eq!(stat(&stats, "downstream_cx_rbac_denied"), 1, "{stats}");
    assert_eq!(stat(&stats, "rbac.policy.deny-batch.denied"), 1, "{stats}");
}

/// An ALLOW rule with an HTTP-only field (methods) is dropped from the TCP
/// view (Istio: "skipped rule ... on TCP filter chain"), so it allows no
/// TCP connection; an L4-only ALLOW beside it still does. On HTTP the same
/// rule allows.
#[test]
fn tcp_http_only_allow_rule_does_not_allow() {
    let m = Mesh::new("authz-tcp-allow");
    let policies = format!(
        "{}{}",
        policy(
            "web-gets",
            "ALLOW",
            &format!(
                r#"[{{ from = [{{ source = {{ principals = ["{}"] }} }}], to = [{{ operation = {{ methods = ["GET"] }} }}] }}]"#,
                principal(&m.web)
            )
        ),
        policy(
            "batch-any",
            "ALLOW",
            &format!(
                r#"[{{ from = [{{ source = {{ principals = ["{}"] }} }}] }}]"#,
                principal(&m.batch)
            )
        )
    );
    let ib = Inbound::start(&m, Ports::new(), "STRICT", &policies);
    assert_eq!(tcp_ping(ib.p.tcp, &m.web), None);
    assert_eq!(tcp_ping(ib.p.tcp, &m.batch).as_deref(), Some(&b"ping"[..]));
    assert_eq!(ib.echo.bytes.load(Ordering::SeqCst), 4, "only batch's");
    ib.check(Who::Mtls(&m.web), &get("/"), ALLOW);
    let stats = ib.admin("/stats");
    assert_eq!(stat(&stats, "downstream_cx_rbac_denied"), 1, "{stats}");
    assert_eq!(
        stat(&stats, &format!("rbac.policy.{NO_ALLOW_MATCHED}.denied")),
        1,
        "{stats}"
    );
    assert_eq!(stat(&stats, "rbac.policy.web-gets.allowed"), 1, "HTTP only");
    assert_eq!(stat(&stats, "rbac.policy.batch-any.allowed"), 1, "{stats}");
}

/// A DENY rule whose only condition is HTTP-only (methods) loses that
/// condition on TCP (Istio: "a wider deny policy") and so denies every TCP
/// connection, while on HTTP it denies only that method.
#[test]
fn tcp_http_only_deny_rule_denies_every_connection() {
    let m = Mesh::new("authz-tcp-deny-http");
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "STRICT",
        &policy(
            "no-posts",
            "DENY",
            r#"[{ to = [{ operation = { methods = ["POST"] } }] }]"#,
        ),
    );
    assert_eq!(tcp_ping(ib.p.tcp, &m.web), None);
    assert_eq!(tcp_ping(ib.p.tcp, &m.batch), None);
    assert_eq!(ib.echo.conns.load(Ordering::SeqCst), 0);
    ib.check(Who::Mtls(&m.web), &rq("GET", "/", "app", ""), ALLOW);
    ib.check(Who::Mtls(&m.web), &rq("POST", "/", "app", ""), DENY);
    let stats = ib.admin("/stats");
    assert_eq!(stat(&stats, "downstream_cx_rbac_denied"), 2, "{stats}");
    assert_eq!(stat(&stats, "rbac.policy.no-posts.denied"), 3, "{stats}");
}

// ───────────────────────────── hot reload ─────────────────────────────

/// POST /reload and SIGHUP apply new policies to the next request; a bad
/// policy is refused with file, line and reason, and the old policies keep
/// serving.
#[test]
fn reload_applies_new_policies_and_refuses_bad_ones() {
    let m = Mesh::new("authz-reload");
    let deny = |who: &Identity| {
        policy(
            "deny-one",
            "DENY",
            &format!(
                r#"[{{ from = [{{ source = {{ principals = ["{}"] }} }}] }}]"#,
                principal(who)
            ),
        )
    };
    let mut ib = Inbound::start(&m, Ports::new(), "STRICT", &deny(&m.batch));
    let (web, batch) = (Who::Mtls(&m.web), Who::Mtls(&m.batch));
    ib.check(web, &get("/"), ALLOW);
    ib.check(batch, &get("/"), DENY);

    // SIGHUP: the readiness signal is the reload's log line.
    ib.write_policies(&deny(&m.web));
    ib.remora.signal(libc::SIGHUP);
    ib.remora.wait_for_log("config reloaded");
    ib.check(web, &get("/"), DENY);
    ib.check(batch, &get("/"), ALLOW);

    // POST /reload answers once the new snapshot is published.
    ib.write_policies(&deny(&m.batch));
    let (status, body) = ib.reload();
    assert_eq!(status, 200, "{body}");
    ib.check(web, &get("/"), ALLOW);
    ib.check(batch, &get("/"), DENY);

    // Bad policies: rejected with the file, the line and the reason.
    let path = ib.remora.config_path().display().to_string();
    for (bad, reason) in [
        (
            "[[authorization_policy]]\nname = \"ext\"\naction = \"CUSTOM\"\n",
            "action CUSTOM (external authorization) is not supported",
        ),
        (
            "[[authorization_policy]]\nname = \"jwt\"\nrules = [{ when = [{ key = \"request.auth.claims[iss]\", values = [\"x\"] }] }]\n",
            "`request.auth.claims[iss]` needs JWT authentication",
        ),
    ] {
        ib.write_policies(bad);
        let line = ib
            .toml(bad)
            .lines()
            .position(|l| l.contains("CUSTOM") || l.contains("request.auth"))
            .unwrap()
            + 1;
        let (status, body) = ib.reload();
        assert_eq!(status, 400, "{body}");
        assert!(body.contains(&format!("{path}:{line}:")), "{body}");
        assert!(body.contains(reason), "{body}");
        // The old policies keep serving.
        ib.check(web, &get("/"), ALLOW);
        ib.check(batch, &get("/"), DENY);
        let dump: Value = serde_json::from_str(&ib.admin("/config_dump")).unwrap();
        assert!(
            dump["last_reload_error"]
                .as_str()
                .is_some_and(|e| e.contains(reason)),
            "{dump}"
        );
        assert_eq!(dump["config"]["authorization"][0]["name"], "deny-one");
    }
    assert_eq!(ib.stat("server.reloads_failed"), 2);
}

// ───────────────────────────── observability ─────────────────────────────

/// Reads the JSON access log until `pred` holds for some line (the log is
/// flushed by each core about once a second); returns that line.
fn wait_log_line(path: &std::path::Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(v) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| pred(v))
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no access-log line for {what}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The access log names the denying policy (flag RBAC), the caller's
/// SPIFFE ID and the TLS version and cipher; /stats and Prometheus count
/// per policy; /certs shows the workload certificate in Envoy's shape.
#[test]
fn access_log_stats_prometheus_and_certs() {
    let m = Mesh::new("authz-observe");
    let log = m.dir.0.join("access.log");
    let extra = format!(
        r#"[access_log]
path = "{}"
format = "json"
fields = ["protocol", "method", "path", "response_code", "response_flags", "listener", "downstream_peer_uri_san", "downstream_tls_version", "downstream_tls_cipher", "authz_policy"]
"#,
        log.display()
    );
    let policies = format!(
        "{}{}",
        // Scoped to the HTTP port: on TCP a DENY drops `paths` and, without
        // `ports`, would deny every connection.
        policy(
            "deny-admin",
            "DENY",
            r#"[{ to = [{ operation = { ports = [HTTP_PORT], paths = ["/admin/*"] } }] }]"#
        ),
        policy(
            "deny-batch-tcp",
            "DENY",
            &format!(
                r#"[{{ from = [{{ source = {{ principals = ["{}"] }} }}], to = [{{ operation = {{ ports = [{}] }} }}] }}]"#,
                principal(&m.batch),
                "TCP_PORT"
            )
        )
    );
    let p = Ports::new();
    let policies = policies
        .replace("TCP_PORT", &p.tcp.to_string())
        .replace("HTTP_PORT", &p.http.to_string());
    let ib = Inbound::start_with(&m, p, "PERMISSIVE", &policies, &extra);
    let web = Who::Mtls(&m.web);
    ib.check(web, &get("/ok"), ALLOW);
    ib.check(web, &get("/admin/users"), DENY);
    ib.check(Who::Plain, &get("/plain"), ALLOW);
    assert_eq!(tcp_ping(ib.p.tcp, &m.batch), None);

    let ok = wait_log_line(&log, "/ok", |v| v["path"] == "/ok");
    assert_eq!(ok["response_code"], 200, "{ok}");
    assert_eq!(ok["response_flags"], "-", "{ok}");
    assert_eq!(ok["downstream_peer_uri_san"], m.web.id.as_str(), "{ok}");
    assert_eq!(ok["downstream_tls_version"], "TLSv1.3", "{ok}");
    assert!(
        ok["downstream_tls_cipher"]
            .as_str()
            .is_some_and(|c| c.starts_with("TLS_") || c.contains("AES") || c.contains("CHACHA")),
        "{ok}"
    );
    assert!(ok["authz_policy"].is_null(), "{ok}");

    let denied = wait_log_line(&log, "/admin/users", |v| v["path"] == "/admin/users");
    assert_eq!(denied["response_code"], 403, "{denied}");
    assert_eq!(denied["response_flags"], "RBAC", "{denied}");
    assert_eq!(denied["authz_policy"], "deny-admin", "{denied}");
    assert_eq!(denied["downstream_peer_uri_san"], m.web.id.as_str());

    let plain = wait_log_line(&log, "/plain", |v| v["path"] == "/plain");
    assert!(plain["downstream_peer_uri_san"].is_null(), "{plain}");
    assert!(plain["downstream_tls_version"].is_null(), "{plain}");

    // The denied TCP connection: flag RBAC, the policy, the caller.
    let tcp = wait_log_line(&log, "the denied TCP connection", |v| {
        v["protocol"] == "TCP" && v["listener"] == "inbound-tcp"
    });
    assert_eq!(tcp["response_flags"], "RBAC", "{tcp}");
    assert_eq!(tcp["authz_policy"], "deny-batch-tcp", "{tcp}");
    assert_eq!(tcp["downstream_peer_uri_san"], m.batch.id.as_str(), "{tcp}");

    // Per-policy counters: /stats and Prometheus.
    let stats = ib.admin("/stats");
    assert_eq!(stat(&stats, "rbac.policy.deny-admin.denied"), 1, "{stats}");
    assert_eq!(
        stat(&stats, "rbac.policy.deny-batch-tcp.denied"),
        1,
        "{stats}"
    );
    let prom = ib.admin("/stats/prometheus");
    for sample in [
        "remora_rbac_decisions_total{policy=\"deny-admin\",result=\"denied\"} 1",
        "remora_rbac_decisions_total{policy=\"deny-batch-tcp\",result=\"denied\"} 1",
    ] {
        assert!(prom.lines().any(|l| l == sample), "{sample}\n{prom}");
    }

    // /certs: the workload certificate in Envoy's shape.
    let certs: Value = serde_json::from_str(&ib.admin("/certs")).unwrap();
    let leaf = &certs["certificates"][0]["cert_chain"][0];
    assert_eq!(leaf["subject_alt_names"][0]["uri"], SERVER, "{certs:#}");
    assert_eq!(leaf["days_until_expiration"], "29", "{certs:#}");
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(m.server_certs().join("cert-chain.pem"))
        .output()
        .unwrap();
    let serial = String::from_utf8_lossy(&out.stdout);
    let serial = serial.trim().trim_start_matches("serial=");
    let norm = |s: &str| {
        s.to_ascii_lowercase()
            .trim_start_matches('0')
            .replace(':', "")
    };
    assert_eq!(
        norm(leaf["serial_number"].as_str().unwrap_or_default()),
        norm(serial),
        "{certs:#}"
    );
    assert!(certs["certificates"][0]["ca_cert"][0]["serial_number"].is_string());
    let _ = &m.pki;
}

/// A client that pauses after connecting for longer than the detection
/// window (100 ms) on a PERMISSIVE HTTP port: its mTLS is still terminated
/// (an HTTP port's clients all speak first, so the sidecar waits for the
/// hello as long as on STRICT) and a slow plaintext client is still served
/// as HTTP. Before, the window ran out, the hello went to the plaintext
/// chain and the client's handshake met a 400 and EOF: a descheduled test
/// thread did it by accident in a full-suite run
/// (access_log_stats_prometheus_and_certs).
#[test]
fn a_slow_client_on_a_permissive_http_port_is_still_mtls() {
    let m = Mesh::new("authz-slow");
    let rules = format!(
        r#"[{{ from = [{{ source = {{ principals = ["{}"] }} }}] }}]"#,
        principal(&m.web)
    );
    let ib = Inbound::start(
        &m,
        Ports::new(),
        "PERMISSIVE",
        &policy("web-only", "ALLOW", &rules),
    );
    let pause = Duration::from_millis(300);
    let before = ib.app.count();
    let r = http_after(ib.p.http, Who::Mtls(&m.web), &get("/slow-mtls"), pause);
    assert_eq!((r.status, ib.app.count() - before), (200, 1), "{r:?}");
    // Plaintext has no principal: denied, but as HTTP (a 403, not a reset).
    let r = http_after(ib.p.http, Who::Plain, &get("/slow-plain"), pause);
    assert_eq!((r.status, r.body.trim_end()), (403, DENIED_BODY), "{r:?}");
    assert_eq!(ib.stat("rbac.policy.web-only.allowed"), 1);
}

/// The test helper tells a sidecar that could not start from a ready one:
/// its "port … is already in use" error contains the word "ready", and
/// waiting for that word let such a sidecar pass for started (seen under
/// load: a port from `free_port` taken by a parallel test before the bind;
/// the test then failed later with a refused connect, or with a 400 from
/// whichever process held the port).
#[test]
#[should_panic(expected = "already in use")]
fn a_sidecar_whose_port_is_taken_does_not_pass_for_ready() {
    let taken = listener();
    let port = taken.local_addr().unwrap().port();
    let backend = common::echo_server();
    let _r = Remora::start(&common::l4_config(backend, &[("l", port, "copy")], ""), &[]);
}
