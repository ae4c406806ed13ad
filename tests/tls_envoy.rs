//! The Envoy side of mTLS interop (issue 11), proven with Envoy on both
//! sides: curl → Envoy outbound (plaintext in) → mTLS → Envoy inbound → app,
//! configured as Istio configures its sidecars (tests/common/envoy.rs).
//!
//! These tests are the template for putting Remora on one side: replace the
//! `Envoy::start(.., &envoy_outbound(..))` of one pod with a Remora started
//! on the same ports and certificate directory, and keep the assertions on
//! what the app and the remaining Envoy saw (its access log and its stats).

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::certs::{spiffe, Leaf, Pki};
use common::envoy::{istio_sni, Envoy, Inbound, MtlsMode, Outbound, Protocol, ISTIO_CIPHERS};
use common::http::Backend;
use common::{connect, echo_server, free_port, payload, TempDir};

const HOST: &str = "httpbin.default.svc.cluster.local";
const SERVICE_PORT: u16 = 8000;

/// Two pods' worth of certificates: the client `sleep` and the server
/// `httpbin`, both from the mesh's root, each in its own Istio-layout dir.
struct Pods {
    // Holds the certificate directories until the test ends.
    _dir: TempDir,
    pki: Pki,
    client_dir: PathBuf,
    server_dir: PathBuf,
}

impl Pods {
    fn new() -> Pods {
        let dir = TempDir::new("envoy-pods");
        let pki = Pki::new("mesh");
        let client_dir = dir.0.join("sleep");
        let server_dir = dir.0.join("httpbin");
        pki.workload(&spiffe("default", "sleep"))
            .write_istio_dir(&client_dir);
        pki.workload(&spiffe("default", "httpbin"))
            .write_istio_dir(&server_dir);
        Pods {
            _dir: dir,
            pki,
            client_dir,
            server_dir,
        }
    }
}

/// `curl` with plaintext HTTP, as an app in the client pod: (status, body).
/// Status 0 when curl got no HTTP answer at all.
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

/// The sidecar pair for HTTP: (inbound Envoy, outbound Envoy, outbound port).
fn http_pair(pods: &Pods, app: SocketAddr, mode: MtlsMode) -> (Envoy, Envoy, u16, u16) {
    let in_port = free_port();
    let mut inbound = Inbound::new(in_port, app, &pods.server_dir, mode);
    inbound.access_log = true;
    let server = Envoy::start("httpbin-inbound", &inbound.config());
    let out_port = free_port();
    let mut outbound = Outbound::new(
        out_port,
        format!("127.0.0.1:{in_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&spiffe("default", "httpbin")],
        Protocol::Http,
    );
    outbound.access_log = true;
    let client = Envoy::start("sleep-outbound", &outbound.config());
    (server, client, in_port, out_port)
}

/// HTTP through two Istio-configured Envoys: the app sees the caller's
/// SPIFFE identity in x-forwarded-client-cert (By = the server's own
/// identity, Hash of the client certificate, URI = the client's identity);
/// the server saw Istio's SNI, TLS 1.3 and the client's identity on the
/// HTTP mTLS chain (chosen by the istio-http/1.1 ALPN); the client saw the
/// server's identity.
#[test]
fn http_mtls_between_envoys_carries_the_client_identity() {
    let pods = Pods::new();
    let app = Backend::start("httpbin");
    let (server, client, in_port, out_port) = http_pair(&pods, app.addr, MtlsMode::Strict);

    let (code, body) = curl(out_port, "/headers");
    assert_eq!(
        code,
        200,
        "body: {body}\nclient log:\n{}",
        client.log_tail(20)
    );
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    let xfcc = seen["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC at the app: {seen}"));
    // Envoy's format: By=<server URI SAN>;Hash=<hex SHA-256 of the client
    // leaf, DER>;Subject="<client subject>";URI=<client URI SAN>
    let fields: Vec<(&str, &str)> = xfcc
        .split(';')
        .map(|kv| kv.split_once('=').expect("key=value"))
        .collect();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, ["By", "Hash", "Subject", "URI"], "{xfcc}");
    assert_eq!(fields[0].1, spiffe("default", "httpbin"), "{xfcc}");
    assert_eq!(fields[1].1.len(), 64, "{xfcc}");
    assert!(fields[1].1.chars().all(|c| c.is_ascii_hexdigit()), "{xfcc}");
    // The client's subject, quoted (Istio's own certificates have an empty
    // one: `Subject=""`).
    assert!(fields[2].1.starts_with("\"O=cluster.local"), "{xfcc}");
    assert_eq!(fields[3].1, spiffe("default", "sleep"), "{xfcc}");
    assert_eq!(
        fields[1].1,
        sha256_hex_of_cert(&pods.client_dir.join("cert-chain.pem")),
        "Hash is the SHA-256 of the client's leaf certificate"
    );

    let srv = &server.wait_access_log(1)[0];
    assert_eq!(srv["filter_chain"], "mtls-http", "{srv}");
    assert_eq!(
        srv["requested_server_name"],
        istio_sni(SERVICE_PORT, HOST),
        "{srv}"
    );
    assert_eq!(srv["downstream_tls_version"], "TLSv1.3", "{srv}");
    assert_eq!(
        srv["downstream_peer_uri_san"],
        spiffe("default", "sleep"),
        "{srv}"
    );
    assert_eq!(
        srv["downstream_local_uri_san"],
        spiffe("default", "httpbin"),
        "{srv}"
    );
    // Istio's inbound connects to the app from 127.0.0.6.
    assert!(
        srv["upstream_local_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.6:")),
        "{srv}"
    );
    let cli = &client.wait_access_log(1)[0];
    assert_eq!(
        cli["upstream_cluster"],
        format!("outbound|{SERVICE_PORT}||{HOST}"),
        "{cli}"
    );
    assert_eq!(cli["upstream_tls_version"], "TLSv1.3", "{cli}");
    assert_eq!(
        cli["upstream_peer_uri_san"],
        spiffe("default", "httpbin"),
        "{cli}"
    );

    // Envoy's names for these counters, which the Remora-side tests read.
    let inbound_prefix = format!("listener.127.0.0.1_{in_port}");
    assert_eq!(server.stat(&format!("{inbound_prefix}.ssl.handshake")), 1);
    let out_prefix = format!("cluster.outbound|{SERVICE_PORT}||{HOST}");
    assert_eq!(client.stat(&format!("{out_prefix}.ssl.handshake")), 1);
    assert_eq!(client.stat(&format!("{out_prefix}.upstream_cx_total")), 1);

    // A second request reuses the pooled mTLS connection: no new handshake.
    assert_eq!(curl(out_port, "/again").0, 200);
    assert_eq!(client.stat(&format!("{out_prefix}.ssl.handshake")), 1);
}

/// The SHA-256 (hex) of the first certificate of a PEM file, in DER, by
/// openssl: the value Envoy puts in XFCC's Hash.
fn sha256_hex_of_cert(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(pem)
        .output()
        .expect("openssl x509");
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .rsplit('=')
        .next()
        .unwrap()
        .replace(':', "")
        .to_ascii_lowercase()
}

/// PERMISSIVE: mTLS from the outbound sidecar and plaintext HTTP straight to
/// the inbound port both reach the app; the plaintext request carries no
/// client identity. STRICT refuses the plaintext one.
#[test]
fn permissive_takes_plaintext_and_strict_refuses_it() {
    let pods = Pods::new();
    let app = Backend::start("httpbin");
    let (server, _client, in_port, out_port) = http_pair(&pods, app.addr, MtlsMode::Permissive);
    assert_eq!(curl(out_port, "/mtls").0, 200);
    let (code, body) = curl(in_port, "/plain");
    assert_eq!(code, 200, "{body}");
    let seen: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        seen["headers"].get("x-forwarded-client-cert").is_none(),
        "{seen}"
    );
    let log = server.wait_access_log(2);
    let chains: Vec<&str> = log
        .iter()
        .map(|e| e["filter_chain"].as_str().unwrap())
        .collect();
    assert!(
        chains.contains(&"mtls-http") && chains.contains(&"plaintext-http"),
        "{log:?}"
    );
    drop((server, _client));

    let (server, _client, in_port, _) = http_pair(&pods, app.addr, MtlsMode::Strict);
    let before = app.count();
    assert_eq!(
        curl(in_port, "/plain").0,
        0,
        "STRICT answered plaintext HTTP"
    );
    assert_eq!(app.count(), before, "plaintext reached the app on STRICT");
    drop(server);
}

/// TCP through two Envoys: bytes echo end to end over mTLS; the server's
/// TCP mTLS chain was chosen by the istio-peer-exchange/istio ALPN and saw
/// the client's identity.
#[test]
fn tcp_mtls_between_envoys_echoes_bytes() {
    let pods = Pods::new();
    let echo = echo_server();
    let in_port = free_port();
    let mut inbound = Inbound::new(in_port, echo, &pods.server_dir, MtlsMode::Permissive);
    inbound.access_log = true;
    let server = Envoy::start("tcp-inbound", &inbound.config());
    let out_port = free_port();
    let outbound = Outbound::new(
        out_port,
        format!("127.0.0.1:{in_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&spiffe("default", "httpbin")],
        Protocol::Tcp,
    );
    let client = Envoy::start("tcp-outbound", &outbound.config());

    let data = payload(256 * 1024, 7);
    let mut s = connect(out_port);
    let mut r = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        got
    });
    s.write_all(&data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "echoed bytes differ");

    let srv = &server.wait_access_log(1)[0];
    assert_eq!(srv["filter_chain"], "mtls-tcp", "{srv}");
    assert_eq!(
        srv["requested_server_name"],
        istio_sni(SERVICE_PORT, HOST),
        "{srv}"
    );
    assert_eq!(
        srv["downstream_peer_uri_san"],
        spiffe("default", "sleep"),
        "{srv}"
    );
    assert_eq!(srv["downstream_tls_version"], "TLSv1.3", "{srv}");
    assert_eq!(
        client.stat(&format!(
            "cluster.outbound|{SERVICE_PORT}||{HOST}.ssl.handshake"
        )),
        1
    );
}

/// A client whose certificate comes from another root (while it trusts the
/// mesh's root, so that it gets as far as presenting it) is refused by the
/// inbound Envoy: the handshake fails, counted as `ssl.fail_verify_error`
/// on the inbound listener; the app sees nothing and curl gets a 503 from
/// its own sidecar.
#[test]
fn client_certificate_from_another_root_is_refused() {
    let pods = Pods::new();
    let app = Backend::start("httpbin");
    let other = Pki::new("other");
    let foreign = other.workload(&spiffe("default", "sleep"));
    let intruder = Leaf {
        root_pem: pods.pki.root.pem.clone(),
        ..foreign
    };
    intruder.write_istio_dir(&pods.client_dir);
    let (server, client, in_port, out_port) = http_pair(&pods, app.addr, MtlsMode::Strict);

    let (code, _) = curl(out_port, "/intruder");
    assert_eq!(code, 503);
    assert_eq!(app.count(), 0, "the app was reached");
    let prefix = format!("listener.127.0.0.1_{in_port}");
    server.wait_stat_sum("ssl.fail_verify_error", 1);
    assert!(server.stat(&format!("{prefix}.ssl.fail_verify_error")) >= 1);
    assert_eq!(server.stat(&format!("{prefix}.ssl.handshake")), 0);
    // With TLS 1.3 the client finishes its side of the handshake before the
    // server has checked its certificate: the refusal reaches the outbound
    // Envoy as an alert on an established connection (UC), or, if it comes
    // before the request is sent, as a connect failure (UF).
    let cli = &client.wait_access_log(1)[0];
    assert!(
        ["UC", "UF"].contains(&cli["response_flags"].as_str().unwrap()),
        "{cli}"
    );

    // Without any client certificate: `ssl.fail_verify_no_cert`.
    let root = pods.server_dir.join("root-cert.pem");
    s_client(in_port, &["-alpn", "istio-http/1.1"], &root, None);
    server.wait_stat_sum("ssl.fail_verify_no_cert", 1);
}

/// The outbound side refuses a server whose identity is not the one
/// expected: `ssl.fail_verify_san` on the outbound cluster, 503 to the app.
#[test]
fn server_with_unexpected_identity_is_refused() {
    let pods = Pods::new();
    let app = Backend::start("httpbin");
    let in_port = free_port();
    let server = Envoy::start(
        "san-inbound",
        &Inbound::new(in_port, app.addr, &pods.server_dir, MtlsMode::Strict).config(),
    );
    let out_port = free_port();
    let mut outbound = Outbound::new(
        out_port,
        format!("127.0.0.1:{in_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&spiffe("default", "reviews")],
        Protocol::Http,
    );
    outbound.access_log = true;
    let client = Envoy::start("san-outbound", &outbound.config());
    assert_eq!(curl(out_port, "/").0, 503);
    assert_eq!(app.count(), 0);
    let name = format!("cluster.outbound|{SERVICE_PORT}||{HOST}.ssl.fail_verify_san");
    client.wait_stat_sum("ssl.fail_verify_san", 1);
    assert!(client.stat(&name) >= 1, "{name}");
    let cli = &client.wait_access_log(1)[0];
    assert_eq!(cli["response_flags"], "UF", "{cli}");
    drop(server);
}

/// Runs `openssl s_client` against 127.0.0.1:port with Istio's SNI, extra
/// args, `-CAfile root` and optionally a client certificate; returns its
/// stderr and stdout.
fn s_client(port: u16, args: &[&str], root: &Path, cert: Option<(&Path, &Path)>) -> String {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["-servername", &istio_sni(SERVICE_PORT, HOST)])
        .args(args)
        .arg("-CAfile")
        .arg(root);
    if let Some((chain, key)) = cert {
        // -cert sends only the leaf; the intermediate needs -cert_chain.
        cmd.arg("-cert")
            .arg(chain)
            .arg("-cert_chain")
            .arg(chain)
            .arg("-key")
            .arg(key);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    // Closing stdin ends the session once the handshake is done.
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// (TLS version, cipher suite) from s_client's "New, TLSv1.3, Cipher is X"
/// line; None when no session was established.
fn negotiated(out: &str) -> Option<(String, String)> {
    let line = out.lines().find(|l| l.starts_with("New, "))?;
    let (version, cipher) = line.strip_prefix("New, ")?.split_once(", Cipher is ")?;
    (cipher != "(NONE)").then(|| (version.to_string(), cipher.to_string()))
}

/// What a client sees of the Envoy inbound's TLS, by openssl: TLS 1.3 by
/// default with one of BoringSSL's three TLS 1.3 suites; with the HTTP mTLS
/// ALPN alone no protocol is negotiated (Istio matches the chain on
/// istio-http/1.1 but the server offers only h2 and http/1.1), h2 when the
/// client also offers it; TLS 1.2 gets a cipher from Istio's list; TLS 1.1
/// is refused; istio-peer-exchange is negotiated on the TCP chain.
#[test]
fn inbound_handshake_details_by_openssl() {
    let pods = Pods::new();
    let app = Backend::start("httpbin");
    let in_port = free_port();
    let server = Envoy::start(
        "openssl-inbound",
        &Inbound::new(in_port, app.addr, &pods.server_dir, MtlsMode::Permissive).config(),
    );
    let dir = &pods.client_dir;
    let (chain, key) = (dir.join("cert-chain.pem"), dir.join("key.pem"));
    let cert = Some((chain.as_path(), key.as_path()));
    let root = dir.join("root-cert.pem");

    let out = s_client(in_port, &["-alpn", "istio-http/1.1"], &root, cert);
    let (version, suite) = negotiated(&out).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(version, "TLSv1.3", "{out}");
    assert!(
        [
            "TLS_AES_128_GCM_SHA256",
            "TLS_AES_256_GCM_SHA384",
            "TLS_CHACHA20_POLY1305_SHA256"
        ]
        .contains(&suite.as_str()),
        "{out}"
    );
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("No ALPN negotiated"), "{out}");

    let out = s_client(in_port, &["-alpn", "istio-http/1.1,h2"], &root, cert);
    assert!(out.contains("ALPN protocol: h2"), "{out}");

    let out = s_client(
        in_port,
        &["-tls1_2", "-alpn", "istio-http/1.1"],
        &root,
        cert,
    );
    let (version, suite) = negotiated(&out).unwrap_or_else(|| panic!("{out}"));
    assert_eq!(version, "TLSv1.2", "{out}");
    assert!(
        ISTIO_CIPHERS.contains(&suite.as_str()),
        "{suite} not in Istio's list: {out}"
    );

    let out = s_client(
        in_port,
        &["-tls1_1", "-alpn", "istio-http/1.1"],
        &root,
        cert,
    );
    assert_eq!(negotiated(&out), None, "TLS 1.1 accepted: {out}");

    let out = s_client(
        in_port,
        &["-alpn", "istio-peer-exchange,istio"],
        &root,
        cert,
    );
    assert!(out.contains("ALPN protocol: istio-peer-exchange"), "{out}");
    // Five attempts, four handshakes (TLS 1.1 refused); the server counts
    // one when it has the client's Finished, which may be after openssl exits.
    let name = format!("listener.127.0.0.1_{in_port}.ssl.handshake");
    assert_eq!(server.wait_stat(&name, 4), 4);
}

/// Certificate rotation as Istio does it with file-mounted certificates: a
/// new client certificate renamed into the directory is used for the next
/// handshake (Envoy watches the directory through its file SDS), without a
/// restart. Observed at the app: XFCC's Hash moves to the new certificate.
#[test]
fn rotated_client_certificate_is_used_for_new_handshakes() {
    let pods = Pods::new();
    let app = Backend::start("httpbin");
    let in_port = free_port();
    let _server = Envoy::start(
        "rotate-inbound",
        &Inbound::new(in_port, app.addr, &pods.server_dir, MtlsMode::Strict).config(),
    );
    let out_port = free_port();
    let mut outbound = Outbound::new(
        out_port,
        format!("127.0.0.1:{in_port}").parse().unwrap(),
        SERVICE_PORT,
        HOST,
        &pods.client_dir,
        &[&spiffe("default", "httpbin")],
        Protocol::Http,
    );
    // A new upstream connection, so a new handshake, per request.
    outbound.max_requests_per_connection = Some(1);
    let client = Envoy::start("rotate-outbound", &outbound.config());
    let hash = |body: &str| -> String {
        let seen: serde_json::Value = serde_json::from_str(body).unwrap();
        let xfcc = seen["headers"]["x-forwarded-client-cert"].as_str().unwrap();
        xfcc.split(';')
            .find_map(|kv| kv.strip_prefix("Hash="))
            .unwrap()
            .to_string()
    };
    let chain = pods.client_dir.join("cert-chain.pem");
    let (code, body) = curl(out_port, "/before");
    assert_eq!(code, 200, "{body}");
    assert_eq!(hash(&body), sha256_hex_of_cert(&chain));

    pods.pki
        .workload(&spiffe("default", "sleep"))
        .write_istio_dir(&pods.client_dir);
    let new = sha256_hex_of_cert(&chain);
    // Envoy reloads on the directory's rename event, asynchronously: no
    // signal to wait on but the result, so poll (bounded).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, body) = curl(out_port, "/after");
        assert_eq!(code, 200, "{body}");
        if hash(&body) == new {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rotated certificate was never used; log:\n{}",
            client.log_tail(20)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let name = format!("cluster.outbound|{SERVICE_PORT}||{HOST}.ssl.handshake");
    assert!(client.stat(&name) >= 2);
}
