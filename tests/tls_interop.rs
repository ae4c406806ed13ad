//! mTLS interop with the real Envoy in both directions, rotation under load,
//! session resumption and the handshake timeout (issue 11).
//!
//! Envoy is configured as Istio configures its sidecars (tests/common/envoy.rs):
//!
//! ```text
//! client ─► Remora outbound ─ mTLS ─► Envoy inbound (STRICT) ─► app / echo
//! curl   ─► Envoy outbound  ─ mTLS ─► Remora inbound (STRICT) ─► app / echo
//! client ─► Remora A        ─ mTLS ─► Remora B (STRICT)       ─► app   (rotation, resumption)
//! ```
//!
//! Everything on explicit loopback listeners (no capture, no root). What the
//! remaining Envoy saw is read from its JSON access log and its `/stats`;
//! what Remora saw from its `/stats`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::certs::{spiffe, Pki};
use common::envoy::{istio_sni, Envoy, Inbound, MtlsMode, Outbound, Protocol};
use common::http::{Backend, Client};
use common::{connect, echo_server, free_port, payload, Remora, TempDir};

/// The destination service, as Istio names it in clusters and SNI.
const HOST: &str = "httpbin.default.svc.cluster.local";
/// The service port in the Envoy outbound's cluster name and SNI.
const SERVICE_PORT: u16 = 8000;

fn client_id() -> String {
    spiffe("default", "sleep")
}
fn server_id() -> String {
    spiffe("default", "httpbin")
}

/// Two pods' certificates from one mesh root: the client `sleep` and the
/// server `httpbin`, each in its own Istio-layout directory.
struct Pods {
    _dir: TempDir,
    pki: Pki,
    client_dir: PathBuf,
    server_dir: PathBuf,
}

impl Pods {
    fn new(tag: &str) -> Pods {
        let dir = TempDir::new(tag);
        let pki = Pki::new("mesh");
        let client_dir = dir.0.join("sleep");
        let server_dir = dir.0.join("httpbin");
        pki.workload(&client_id()).write_istio_dir(&client_dir);
        pki.workload(&server_id()).write_istio_dir(&server_dir);
        Pods {
            _dir: dir,
            pki,
            client_dir,
            server_dir,
        }
    }
}

// ───────────────────────────── Remora side ─────────────────────────────

fn admin_toml(port: u16) -> String {
    format!("[admin]\naddress = \"127.0.0.1:{port}\"\nprometheus_address = \"\"\nreadiness_address = \"\"\nwatch_config = false\n")
}

/// A Remora sidecar's inbound side (an Istio Sidecar ingress listener) on
/// `port` in front of `app`, PeerAuthentication `mode`, `[tls]` extra keys.
fn remora_inbound(
    cert_dir: &Path,
    port: u16,
    admin: u16,
    app: SocketAddr,
    mode: &str,
    tls_extra: &str,
) -> Remora {
    Remora::start(
        &format!(
            "[capture]\nenabled = false\n{}[tls]\ncert_dir = \"{}\"\n{tls_extra}\n[peer_authentication]\nmode = \"{mode}\"\n\
             [[cluster]]\nname = \"app\"\nendpoints = [\"{app}\"]\n\
             [[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"app\"\nprotocol = \"auto\"\ndirection = \"inbound\"\n\
             [[virtual_host]]\nname = \"app\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"app\"\n",
            admin_toml(admin),
            cert_dir.display(),
        ),
        &["--cores", "1"],
    )
}

/// A Remora sidecar's outbound side: a listener speaking `protocol` ("http"
/// or "tcp") whose cluster `HOST` is the destination's inbound sidecar at
/// `dest_port`, reached with ISTIO_MUTUAL expecting `san`; `cluster_extra`
/// is added to the cluster table.
fn remora_outbound(
    cert_dir: &Path,
    port: u16,
    admin: u16,
    dest_port: u16,
    san: &str,
    protocol: &str,
    cluster_extra: &str,
) -> Remora {
    Remora::start(
        &format!(
            "[capture]\nenabled = false\n{}[tls]\ncert_dir = \"{}\"\n\
             [[cluster]]\nname = \"{HOST}\"\nendpoints = [\"127.0.0.1:{dest_port}\"]\n\
             tls = {{ mode = \"ISTIO_MUTUAL\", subject_alt_names = [\"{san}\"] }}\n{cluster_extra}\n\
             [[listener]]\nname = \"outbound\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"{HOST}\"\nprotocol = \"{protocol}\"\n\
             [[virtual_host]]\nname = \"httpbin\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"{HOST}\"\n",
            admin_toml(admin),
            cert_dir.display(),
        ),
        &["--cores", "1"],
    )
}

/// GET `path` on a Remora admin port; the body.
fn admin_get(port: u16, path: &str) -> String {
    let mut c = Client::new(port);
    let r = c.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    ));
    String::from_utf8_lossy(&r.body).into_owned()
}

/// One `name: value` line of Remora's /stats (0 when absent).
fn stat(admin: u16, name: &str) -> u64 {
    admin_get(admin, "/stats")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until Remora's stat `name` is at least `n`: counters that
/// move after the client has its answer (a failed handshake, a rotation).
fn wait_stat(admin: u16, name: &str, n: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = stat(admin, name);
        if v >= n {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, expected >= {n}; /stats:\n{}",
            admin_get(admin, "/stats")
        );
        thread::sleep(Duration::from_millis(20));
    }
}

// ───────────────────────────── shared checks ─────────────────────────────

/// `curl` with plaintext HTTP, as an app in the client pod: (status, body);
/// status 0 when no HTTP answer came.
fn curl(port: u16, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Host: {HOST}")])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// The SHA-256 (hex) of the first certificate of a PEM file, in DER, by
/// openssl: what XFCC's Hash must be.
fn sha256_hex_of_cert(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .expect("openssl x509");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

/// The x-forwarded-client-cert the app saw in its last request.
fn last_xfcc(app: &Backend) -> String {
    let last = app.last();
    last["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC at the app: {last}"))
        .to_string()
}

/// XFCC's `key=value` fields in order.
fn xfcc_fields(xfcc: &str) -> Vec<(String, String)> {
    xfcc.split(';')
        .map(|kv| {
            let (k, v) = kv.split_once('=').expect("key=value");
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn xfcc_hash(xfcc: &str) -> String {
    xfcc_fields(xfcc)
        .into_iter()
        .find(|(k, _)| k == "Hash")
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no Hash in {xfcc}"))
}

/// Sends `data` through `port` (half-closing after it) and returns what came
/// back until the far side closed.
fn echo_through(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    let mut r = s.try_clone().unwrap();
    let reader = thread::spawn(move || {
        let mut got = Vec::new();
        let _ = r.read_to_end(&mut got);
        got
    });
    s.write_all(data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    reader.join().unwrap()
}

// ───────────────────── 1. Remora outbound → Envoy inbound ─────────────────────

/// HTTP: Remora originates ISTIO_MUTUAL to an Istio-configured Envoy inbound
/// (STRICT). Envoy picks its HTTP mTLS chain, which it matches only on the
/// ALPN istio-http/1.0, istio-http/1.1, istio-h2, sees Istio's SNI for the
/// cluster and Remora's client identity, and hands the app an XFCC naming
/// the client; keep-alive requests share one mTLS connection on both sides.
#[test]
fn remora_outbound_http_to_envoy_inbound() {
    let pods = Pods::new("ri-http");
    let app = Backend::start("httpbin");
    let in_port = free_port();
    let mut inbound = Inbound::new(in_port, app.addr, &pods.server_dir, MtlsMode::Strict);
    inbound.access_log = true;
    let envoy = Envoy::start("ri-http-inbound", &inbound.config());
    let (out_port, out_admin) = (free_port(), free_port());
    let _remora = remora_outbound(
        &pods.client_dir,
        out_port,
        out_admin,
        in_port,
        &server_id(),
        "http",
        "",
    );

    let mut c = Client::new(out_port);
    for i in 0..3 {
        let r = c.request(&format!(
            "GET /r/{i} HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/evil/sa/forged\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "{r:?}\nenvoy log:\n{}", envoy.log_tail(20));
    }
    let xfcc = last_xfcc(&app);
    let fields = xfcc_fields(&xfcc);
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    // Envoy's inbound SANITIZEs nothing on mTLS (APPEND_FORWARD): Remora's
    // outbound must have dropped the forged element itself.
    assert_eq!(keys, ["By", "Hash", "Subject", "URI"], "{xfcc}");
    assert_eq!(fields[0].1, server_id(), "{xfcc}");
    assert_eq!(
        fields[1].1,
        sha256_hex_of_cert(&pods.client_dir.join("cert-chain.pem")),
        "Hash is Remora's client certificate: {xfcc}"
    );
    assert_eq!(fields[3].1, client_id(), "{xfcc}");

    let log = envoy.wait_access_log(3);
    for e in &log {
        assert_eq!(e["filter_chain"], "mtls-http", "{e}");
        // Remora names the endpoint's port and the cluster (`outbound_.PORT_._.HOST`).
        assert_eq!(e["requested_server_name"], istio_sni(in_port, HOST), "{e}");
        assert_eq!(e["downstream_tls_version"], "TLSv1.3", "{e}");
        assert_eq!(e["downstream_peer_uri_san"], client_id(), "{e}");
        assert_eq!(e["response_code"], 200, "{e}");
    }
    let prefix = inbound.stat_prefix();
    assert_eq!(envoy.stat(&format!("{prefix}.ssl.handshake")), 1);
    assert_eq!(stat(out_admin, "cluster.ssl.handshake"), 1);
    assert_eq!(stat(out_admin, "cluster.ssl.versions.TLSv1.3"), 1);
}

/// TCP: a Remora tcp listener whose cluster is ISTIO_MUTUAL; bytes echo
/// intact through Envoy's TCP mTLS chain. STRICT's TCP chain takes any TLS;
/// PERMISSIVE's only the ALPN istio-peer-exchange or istio (anything else
/// would be passed through to the echo server still encrypted, and the
/// handshake would fail), so Remora's `istio` is checked there too.
#[test]
fn remora_outbound_tcp_to_envoy_inbound() {
    let pods = Pods::new("ri-tcp");
    let echo = echo_server();
    for mode in [MtlsMode::Strict, MtlsMode::Permissive] {
        let in_port = free_port();
        let mut inbound = Inbound::new(in_port, echo, &pods.server_dir, mode);
        inbound.access_log = true;
        let envoy = Envoy::start("ri-tcp-inbound", &inbound.config());
        let (out_port, out_admin) = (free_port(), free_port());
        let _remora = remora_outbound(
            &pods.client_dir,
            out_port,
            out_admin,
            in_port,
            &server_id(),
            "tcp",
            "",
        );
        let data = payload(256 * 1024, 11);
        let got = echo_through(out_port, &data);
        assert_eq!(got.len(), data.len(), "{mode:?}");
        assert!(got == data, "{mode:?}: echoed bytes differ");

        let e = &envoy.wait_access_log(1)[0];
        assert_eq!(e["filter_chain"], "mtls-tcp", "{mode:?}: {e}");
        assert_eq!(e["requested_server_name"], istio_sni(in_port, HOST), "{e}");
        assert_eq!(e["downstream_peer_uri_san"], client_id(), "{e}");
        assert_eq!(e["downstream_tls_version"], "TLSv1.3", "{e}");
        assert_eq!(
            envoy.stat(&format!("{}.ssl.handshake", inbound.stat_prefix())),
            1
        );
        assert_eq!(stat(out_admin, "cluster.ssl.handshake"), 1);
    }
}

// ───────────────────── 2. Envoy outbound → Remora inbound ─────────────────────

/// HTTP: an Istio-configured Envoy outbound (ALPN istio-http/1.1, istio;
/// SNI; exact SAN match) → Remora inbound (STRICT) → app. The app's XFCC is
/// byte for byte what an Envoy inbound with the same certificates produces
/// for the same client (the Envoy → Envoy pair of tests/tls_envoy.rs, run
/// side by side here), and Envoy verified Remora's identity.
#[test]
fn envoy_outbound_http_to_remora_inbound() {
    let pods = Pods::new("er-http");
    let app = Backend::start("httpbin");
    let (rin_port, rin_admin) = (free_port(), free_port());
    let _remora = remora_inbound(
        &pods.server_dir,
        rin_port,
        rin_admin,
        app.addr,
        "STRICT",
        "",
    );
    let mut to_remora = Outbound::new(
        free_port(),
        format!("127.0.0.1:{rin_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&server_id()],
        Protocol::Http,
    );
    to_remora.access_log = true;
    let out = Envoy::start("er-http-outbound", &to_remora.config());

    // The reference: the same client and server certificates, Envoy on both ends.
    let ein_port = free_port();
    let _ein = Envoy::start(
        "er-http-ref-inbound",
        &Inbound::new(ein_port, app.addr, &pods.server_dir, MtlsMode::Strict).config(),
    );
    let to_envoy = Outbound::new(
        free_port(),
        format!("127.0.0.1:{ein_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&server_id()],
        Protocol::Http,
    );
    let _ref_out = Envoy::start("er-http-ref-outbound", &to_envoy.config());

    let (code, body) = curl(to_remora.listen_port, "/via-remora");
    assert_eq!(code, 200, "{body}\nenvoy log:\n{}", out.log_tail(20));
    let remora_xfcc = last_xfcc(&app);
    let (code, body) = curl(to_envoy.listen_port, "/via-envoy");
    assert_eq!(code, 200, "{body}");
    let envoy_xfcc = last_xfcc(&app);
    assert_eq!(
        remora_xfcc, envoy_xfcc,
        "Remora's XFCC differs from Envoy's for the same client"
    );
    let fields = xfcc_fields(&remora_xfcc);
    assert_eq!(fields[0], ("By".into(), server_id()), "{remora_xfcc}");
    assert_eq!(fields[3], ("URI".into(), client_id()), "{remora_xfcc}");

    let e = &out.wait_access_log(1)[0];
    assert_eq!(e["upstream_peer_uri_san"], server_id(), "{e}");
    assert_eq!(e["upstream_tls_version"], "TLSv1.3", "{e}");
    assert_eq!(e["response_code"], 200, "{e}");
    assert_eq!(
        out.stat(&format!("{}.ssl.handshake", to_remora.stat_prefix())),
        1
    );
    assert_eq!(stat(rin_admin, "listener.ssl.handshake"), 1);
    assert_eq!(stat(rin_admin, "downstream_cx_http"), 1);
}

/// TCP: Envoy's outbound offers istio-peer-exchange, istio (what Istio puts
/// on the wire with metadata exchange on); Remora terminates and forwards
/// the bytes at L4 (no HTTP path taken): an echo comes back intact.
#[test]
fn envoy_outbound_tcp_to_remora_inbound() {
    let pods = Pods::new("er-tcp");
    let echo = echo_server();
    let (rin_port, rin_admin) = (free_port(), free_port());
    let _remora = remora_inbound(&pods.server_dir, rin_port, rin_admin, echo, "STRICT", "");
    let outbound = Outbound::new(
        free_port(),
        format!("127.0.0.1:{rin_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&server_id()],
        Protocol::Tcp,
    );
    let out = Envoy::start("er-tcp-outbound", &outbound.config());
    let data = payload(256 * 1024, 12);
    let got = echo_through(outbound.listen_port, &data);
    assert_eq!(got.len(), data.len(), "envoy log:\n{}", out.log_tail(20));
    assert!(got == data, "echoed bytes differ");
    assert_eq!(
        out.stat(&format!("{}.ssl.handshake", outbound.stat_prefix())),
        1
    );
    assert_eq!(stat(rin_admin, "listener.ssl.handshake"), 1);
    assert_eq!(
        stat(rin_admin, "downstream_cx_http"),
        0,
        "took the HTTP path"
    );
}

// ───────────────────── 3. wrong expected SAN, both directions ─────────────────────

/// Each side verifies the other's SPIFFE ID against its expected list and
/// counts a mismatch as `ssl.fail_verify_san` on its own side: Remora's
/// outbound against Envoy's inbound, Envoy's outbound against Remora's
/// inbound. Nothing reaches the app; the client gets 503 from its sidecar.
#[test]
fn unexpected_server_identity_is_refused_in_both_directions() {
    let pods = Pods::new("san");
    let app = Backend::start("httpbin");
    let wrong = spiffe("default", "reviews");

    // Remora verifies Envoy.
    let ein_port = free_port();
    let _ein = Envoy::start(
        "san-inbound",
        &Inbound::new(ein_port, app.addr, &pods.server_dir, MtlsMode::Strict).config(),
    );
    let (out_port, out_admin) = (free_port(), free_port());
    let _remora_out = remora_outbound(
        &pods.client_dir,
        out_port,
        out_admin,
        ein_port,
        &wrong,
        "http",
        "",
    );
    let (code, _) = curl(out_port, "/remora-verifies");
    assert_eq!(code, 503);
    assert!(stat(out_admin, "cluster.ssl.fail_verify_san") >= 1);
    assert_eq!(stat(out_admin, "cluster.ssl.handshake"), 0);

    // Envoy verifies Remora.
    let (rin_port, rin_admin) = (free_port(), free_port());
    let _remora_in = remora_inbound(
        &pods.server_dir,
        rin_port,
        rin_admin,
        app.addr,
        "STRICT",
        "",
    );
    let outbound = Outbound::new(
        free_port(),
        format!("127.0.0.1:{rin_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&wrong],
        Protocol::Http,
    );
    let out = Envoy::start("san-outbound", &outbound.config());
    let (code, _) = curl(outbound.listen_port, "/envoy-verifies");
    assert_eq!(code, 503);
    let name = format!("{}.ssl.fail_verify_san", outbound.stat_prefix());
    out.wait_stat(&name, 1);
    assert_eq!(app.count(), 0, "the app was reached");
}

// ───────────────────── 4–6. Remora A → Remora B ─────────────────────

/// One HTTP/1.1 request on `s` with Content-Length framing (what the test
/// app answers with): the status, or why there was none. Never panics, so
/// that a load loop can count failures.
fn try_request(s: &mut BufReader<TcpStream>, path: &str, close: bool) -> Result<u16, String> {
    let conn = if close { "close" } else { "keep-alive" };
    s.get_mut()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: {conn}\r\n\r\n").as_bytes(),
        )
        .map_err(|e| format!("write: {e}"))?;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        match s.read_line(&mut line) {
            Ok(0) => return Err(format!("closed inside the head: {head:?}")),
            Ok(_) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad head {head:?}"))?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| format!("no content-length: {head:?}"))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).map_err(|e| format!("body: {e}"))?;
    Ok(status)
}

fn open(port: u16) -> Result<BufReader<TcpStream>, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    Ok(BufReader::new(s))
}

/// What the load loop saw.
#[derive(Debug, Default)]
struct Load {
    ok: u64,
    failures: Vec<String>,
}

/// Requests through `port` until `stop` (or a bound on count and time):
/// alternately ten on one keep-alive connection and five on a connection
/// each (`Connection: close`).
fn load_loop(port: u16, stop: Arc<AtomicBool>) -> Load {
    let mut load = Load::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && n < 50_000 {
        let mut record = |r: Result<u16, String>, what: &str| match r {
            Ok(200) => load.ok += 1,
            Ok(code) => load.failures.push(format!("{what}: status {code}")),
            Err(e) => load.failures.push(format!("{what}: {e}")),
        };
        match open(port) {
            Ok(mut s) => {
                for i in 0..10 {
                    n += 1;
                    let r = try_request(&mut s, &format!("/ka/{n}"), i == 9);
                    let failed = !matches!(r, Ok(200));
                    record(r, "keep-alive");
                    if failed {
                        break;
                    }
                }
            }
            Err(e) => record(Err(e), "keep-alive connect"),
        }
        for _ in 0..5 {
            n += 1;
            let r = open(port).and_then(|mut s| try_request(&mut s, &format!("/new/{n}"), true));
            record(r, "new connection");
        }
    }
    load
}

/// The certificate a full handshake with the inbound at `port` is served
/// (openssl s_client with the client's certificate, no session to resume),
/// as the SHA-256 of its DER.
fn served_cert_hash(port: u16, client_dir: &Path, dir: &TempDir) -> String {
    let chain = client_dir.join("cert-chain.pem");
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-alpn", "istio-http/1.1"])
        .arg("-cert")
        .arg(&chain)
        .arg("-cert_chain")
        .arg(&chain)
        .arg("-key")
        .arg(client_dir.join("key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client");
    // Closing stdin ends the session once the handshake is done.
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let pem: String = {
        let start = text
            .find("-----BEGIN CERTIFICATE-----")
            .unwrap_or_else(|| panic!("no server certificate: {text}"));
        let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
        format!("{}-----END CERTIFICATE-----\n", &text[start..end])
    };
    sha256_hex_of_cert(&dir.file("served.pem", &pem))
}

/// Rotation under load, both pods at once, several times: a client keeps
/// sending requests (keep-alive and a connection each) through Remora A →
/// Remora B while new certificates are renamed into both cert dirs. Every
/// request succeeds; after each rotation new handshakes use the new
/// certificates (the app's XFCC Hash becomes A's new leaf; a fresh client
/// is served B's new leaf); a garbage key.pem is rejected and counted while
/// traffic keeps flowing on the old certificate.
#[test]
fn rotation_under_load_fails_no_request() {
    let pods = Pods::new("rotate");
    let app = Backend::start("httpbin");
    let (a_port, a_admin, b_port, b_admin) = (free_port(), free_port(), free_port(), free_port());
    let _b = remora_inbound(&pods.server_dir, b_port, b_admin, app.addr, "STRICT", "");
    // A few requests per upstream connection, so that A keeps making new
    // handshakes during the test.
    let _a = remora_outbound(
        &pods.client_dir,
        a_port,
        a_admin,
        b_port,
        &server_id(),
        "http",
        "circuit_breakers = { max_requests_per_connection = 3 }",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        thread::spawn(move || load_loop(a_port, stop))
    };
    let scratch = TempDir::new("rotate-scratch");
    let a_chain = pods.client_dir.join("cert-chain.pem");
    let b_chain = pods.server_dir.join("cert-chain.pem");
    wait_stat(b_admin, "listener.ssl.handshake", 1);

    for round in 1..=3u64 {
        pods.pki
            .workload(&client_id())
            .write_istio_dir(&pods.client_dir);
        pods.pki
            .workload(&server_id())
            .write_istio_dir(&pods.server_dir);
        wait_stat(a_admin, "server.tls_rotations_ok", round);
        wait_stat(b_admin, "server.tls_rotations_ok", round);
        let (a_new, b_new) = (sha256_hex_of_cert(&a_chain), sha256_hex_of_cert(&b_chain));
        // A's next handshakes present the new leaf: the app sees it in XFCC
        // once a request rides a connection made after the rotation.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let seen = xfcc_hash(&last_xfcc(&app));
            if seen == a_new {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: A's rotated certificate never reached the app (XFCC Hash {seen}, new {a_new}); A: {}",
                admin_get(a_admin, "/stats")
                    .lines()
                    .filter(|l| l.contains("ssl"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            served_cert_hash(b_port, &pods.client_dir, &scratch),
            b_new,
            "round {round}: B serves its old certificate to a new handshake"
        );
        assert!(admin_get(b_admin, "/certs").contains(&server_id()));
    }

    // A bad rotation: garbage in B's key.pem. Rejected (after the settle
    // re-read), counted, and B keeps serving its current certificate.
    let before = stat(a_admin, "rq_2xx");
    let b_current = sha256_hex_of_cert(&b_chain);
    std::fs::write(
        pods.server_dir.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    wait_stat(b_admin, "server.tls_rotations_failed", 1);
    assert_eq!(stat(b_admin, "server.tls_rotations_ok"), 3);
    wait_stat(a_admin, "rq_2xx", before + 50);
    assert_eq!(
        served_cert_hash(b_port, &pods.client_dir, &scratch),
        b_current
    );

    stop.store(true, Ordering::Relaxed);
    let load = load.join().unwrap();
    assert!(
        load.failures.is_empty(),
        "{} of {} requests failed: {:?}",
        load.failures.len(),
        load.ok + load.failures.len() as u64,
        &load.failures[..load.failures.len().min(10)]
    );
    assert!(load.ok >= 100, "only {} requests", load.ok);
    assert!(stat(a_admin, "cluster.ssl.handshake") >= 4);
}

/// Session resumption on both sides: with one request per upstream
/// connection, every request after the first makes a new mTLS connection
/// that resumes (A's `cluster.ssl.session_reused`, B's
/// `listener.ssl.session_reused`), and a resumed connection still carries
/// the client's identity to the app.
#[test]
fn new_connections_resume_their_sessions() {
    let pods = Pods::new("resume");
    let app = Backend::start("httpbin");
    let (a_port, a_admin, b_port, b_admin) = (free_port(), free_port(), free_port(), free_port());
    let _b = remora_inbound(&pods.server_dir, b_port, b_admin, app.addr, "STRICT", "");
    let _a = remora_outbound(
        &pods.client_dir,
        a_port,
        a_admin,
        b_port,
        &server_id(),
        "http",
        "circuit_breakers = { max_requests_per_connection = 1 }",
    );
    let mut c = Client::new(a_port);
    for i in 0..5 {
        let r = c.request(&format!("GET /resume/{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
        assert_eq!(r.status, 200, "{r:?}");
        let xfcc = last_xfcc(&app);
        assert!(xfcc.ends_with(&format!(";URI={}", client_id())), "{xfcc}");
    }
    assert_eq!(stat(a_admin, "cluster.ssl.handshake"), 5);
    assert_eq!(stat(b_admin, "listener.ssl.handshake"), 5);
    let (a_reused, b_reused) = (
        stat(a_admin, "cluster.ssl.session_reused"),
        stat(b_admin, "listener.ssl.session_reused"),
    );
    // The first is a full handshake; each later one resumes a ticket from
    // the one before.
    assert_eq!(a_reused, 4);
    assert_eq!(b_reused, 4);
}

/// A client that connects to the STRICT inbound and sends nothing (or half
/// a ClientHello) is closed once `[tls] handshake_timeout` passes and
/// counted as `listener.ssl.handshake_timeout`; meanwhile a real mTLS
/// client on the same (only) core is served.
#[test]
fn silent_client_is_closed_after_the_handshake_timeout() {
    let pods = Pods::new("hs-timeout");
    let app = Backend::start("httpbin");
    let (b_port, b_admin) = (free_port(), free_port());
    let _b = remora_inbound(
        &pods.server_dir,
        b_port,
        b_admin,
        app.addr,
        "STRICT",
        "handshake_timeout = \"300ms\"",
    );
    let silent = connect(b_port);
    let mut partial = connect(b_port);
    // A TLS handshake record header announcing more than ever comes.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    // Both accepted (the readiness signal) before the real client starts.
    wait_stat(b_admin, "downstream_cx_total", 2);

    let (a_port, a_admin) = (free_port(), free_port());
    let _a = remora_outbound(
        &pods.client_dir,
        a_port,
        a_admin,
        b_port,
        &server_id(),
        "http",
        "",
    );
    let mut c = Client::new(a_port);
    let r = c.request(&format!("GET /served HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
    assert_eq!(r.status, 200, "{r:?}");

    for (name, mut s) in [("silent", silent), ("partial hello", partial)] {
        let mut buf = [0u8; 64];
        // Closed (EOF or reset) by Remora, not by our 20 s read timeout.
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{name}: expected a close, got {other:?}"),
        }
    }
    wait_stat(b_admin, "listener.ssl.handshake_timeout", 2);
    assert_eq!(stat(b_admin, "listener.ssl.plaintext_refused"), 0);
    assert_eq!(stat(b_admin, "listener.ssl.handshake"), 1);
    assert_eq!(app.count(), 1);
}

// ───────────────────── 4. HTTP/2 between the sidecars ─────────────────────

/// HTTP/2 from an Istio-configured Envoy outbound (a `grpc`/`http2` service
/// port: HTTP/2 to the cluster, ALPN istio-h2, istio, h2) to Remora's
/// inbound: the HTTP chain negotiates h2 (Envoy would fail the stream if
/// the server spoke HTTP/1), Remora serves the streams and forwards them to
/// an HTTP/1 app with the client's identity in XFCC.
#[test]
fn envoy_outbound_http2_to_remora_inbound() {
    let pods = Pods::new("er-h2");
    let app = Backend::start("httpbin");
    let (rin_port, rin_admin) = (free_port(), free_port());
    let _remora = remora_inbound(
        &pods.server_dir,
        rin_port,
        rin_admin,
        app.addr,
        "STRICT",
        "",
    );
    let mut to_remora = Outbound::new(
        free_port(),
        format!("127.0.0.1:{rin_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&server_id()],
        Protocol::Http2,
    );
    to_remora.access_log = true;
    let out = Envoy::start("er-h2-outbound", &to_remora.config());
    for i in 0..3 {
        let (code, body) = curl(to_remora.listen_port, &format!("/h2/{i}"));
        assert_eq!(code, 200, "{body}\nenvoy log:\n{}", out.log_tail(20));
    }
    let fields = xfcc_fields(&last_xfcc(&app));
    assert_eq!(fields[0], ("By".into(), server_id()));
    assert_eq!(fields[3], ("URI".into(), client_id()));
    // One mTLS connection carrying every request as a stream.
    assert_eq!(stat(rin_admin, "listener.ssl.handshake"), 1);
    assert_eq!(stat(rin_admin, "downstream_cx_http2"), 1);
    assert_eq!(stat(rin_admin, "downstream_rq_http2"), 3);
    assert_eq!(
        out.stat(&format!("{}.ssl.handshake", to_remora.stat_prefix())),
        1
    );
    assert!(
        out.stat(&format!(
            "{}.upstream_cx_http2_total",
            to_remora.stat_prefix()
        )) >= 1
    );
}

/// HTTP/2 from Remora's outbound (cluster `http2 = true`, ISTIO_MUTUAL:
/// ALPN istio-h2, istio, h2) to an Istio-configured Envoy inbound, whose
/// HTTP chain negotiates h2; HTTP/1 requests from the client are carried
/// as HTTP/2 streams on one connection.
#[test]
fn remora_outbound_http2_to_envoy_inbound() {
    let pods = Pods::new("ri-h2");
    let app = Backend::start("httpbin");
    let in_port = free_port();
    let mut inbound = Inbound::new(in_port, app.addr, &pods.server_dir, MtlsMode::Strict);
    inbound.access_log = true;
    let envoy = Envoy::start("ri-h2-inbound", &inbound.config());
    let (out_port, out_admin) = (free_port(), free_port());
    let _remora = remora_outbound(
        &pods.client_dir,
        out_port,
        out_admin,
        in_port,
        &server_id(),
        "http",
        "http2 = true",
    );
    let mut c = Client::new(out_port);
    for i in 0..3 {
        let r = c.request(&format!("GET /r/{i} HTTP/1.1\r\nHost: {HOST}\r\n\r\n"));
        assert_eq!(r.status, 200, "{r:?}\nenvoy log:\n{}", envoy.log_tail(20));
    }
    let fields = xfcc_fields(&last_xfcc(&app));
    assert_eq!(fields[3], ("URI".into(), client_id()));
    let log = envoy.wait_access_log(3);
    for e in &log {
        assert_eq!(e["filter_chain"], "mtls-http", "{e}");
        assert_eq!(e["downstream_peer_uri_san"], client_id(), "{e}");
        assert_eq!(e["response_code"], 200, "{e}");
    }
    assert_eq!(stat(out_admin, "upstream_cx_http2_total"), 1);
    assert_eq!(stat(out_admin, "cluster.ssl.handshake"), 1);
}
