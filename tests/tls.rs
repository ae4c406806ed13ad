//! mTLS between sidecars (issue 11): certificates, termination, origination.

mod common;

use common::certs::{spiffe, KeyKind, LeafOptions, Pki};
use common::TempDir;
use std::process::Command;

/// The test PKI itself: openssl accepts every leaf through the intermediate,
/// with its SPIFFE URI SAN, and rejects one from another root.
#[test]
fn test_pki_chains_verify_with_openssl() {
    let dir = TempDir::new("pki");
    let pki = Pki::new("mesh");
    let other = Pki::new("other");
    for (kind, tag) in [(KeyKind::EcdsaP256, "ec"), (KeyKind::Rsa2048, "rsa")] {
        let id = spiffe("default", tag);
        let leaf = pki.leaf_with(&LeafOptions {
            uris: &[&id],
            key: kind,
            ..Default::default()
        });
        let (chain, _key, root) = leaf.write_files(&dir.0, tag);
        let inter = dir.file(&format!("{tag}-inter.pem"), &pki.intermediate.pem);
        let cert = dir.file(&format!("{tag}-leaf.pem"), &leaf.cert_pem);
        let verify = |root: &std::path::Path| {
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(root)
                .arg("-untrusted")
                .arg(&inter)
                .arg(&cert)
                .output()
                .unwrap()
        };
        let ok = verify(&root);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        let text = Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(&chain)
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("URI:{id}")));
        let foreign = dir.file(&format!("{tag}-foreign.pem"), &other.root.pem);
        assert!(!verify(&foreign).status.success());
    }
}

// ───────────────────────── two Remora sidecars, mTLS between them ─────────────────────────

use common::http::{Backend, Client};
use common::{free_port, Remora};
use std::time::{Duration, Instant};

const CLIENT_SA: &str = "spiffe://cluster.local/ns/default/sa/client";
const SERVER_SA: &str = "spiffe://cluster.local/ns/default/sa/server";

/// The workload identities of a two-pod test: one PKI, a cert dir per pod.
struct Pods {
    dir: TempDir,
    pki: Pki,
}

impl Pods {
    fn new(tag: &str) -> Pods {
        let dir = TempDir::new(tag);
        let pki = Pki::new("mesh");
        pki.workload(CLIENT_SA).write_istio_dir(&dir.0.join("a"));
        pki.workload(SERVER_SA).write_istio_dir(&dir.0.join("b"));
        Pods { dir, pki }
    }
    fn certs(&self, pod: &str) -> String {
        self.dir.0.join(pod).display().to_string()
    }
}

/// GET `path` on an admin port; the body.
fn admin(port: u16, path: &str) -> String {
    let mut c = Client::new(port);
    let r = c.request(&format!(
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    ));
    String::from_utf8_lossy(&r.body).into_owned()
}

/// One `name: value` line of /stats (0 when absent).
fn stat(port: u16, name: &str) -> u64 {
    admin(port, "/stats")
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn admin_toml(port: u16) -> String {
    format!("[admin]\naddress = \"127.0.0.1:{port}\"\nprometheus_address = \"\"\nreadiness_address = \"\"\nwatch_config = false\n")
}

/// Pod B's sidecar: an inbound listener (Istio's Sidecar ingress listener)
/// in front of `app`, with the given PeerAuthentication mode and extra TOML.
fn inbound_sidecar(
    pods: &Pods,
    port: u16,
    admin_port: u16,
    app: &Backend,
    mode: &str,
    extra: &str,
) -> Remora {
    Remora::start(
        &format!(
            "[capture]\nenabled = false\n{}[tls]\ncert_dir = \"{}\"\n[peer_authentication]\nmode = \"{mode}\"\n\
             [[cluster]]\nname = \"app\"\nendpoints = [\"{}\"]\n\
             [[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"app\"\nprotocol = \"auto\"\ndirection = \"inbound\"\n\
             [[virtual_host]]\nname = \"app\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"app\"\n{extra}",
            admin_toml(admin_port),
            pods.certs("b"),
            app.addr,
        ),
        &["--cores", "1"],
    )
}

/// Pod A's sidecar: an outbound listener whose cluster is pod B's inbound,
/// reached with ISTIO_MUTUAL expecting `sans`.
fn outbound_sidecar(pods: &Pods, port: u16, admin_port: u16, b_port: u16, sans: &str) -> Remora {
    outbound_sidecar_with(pods, port, admin_port, b_port, sans, "", "")
}

/// [`outbound_sidecar`] with more keys in the cluster's `tls` table
/// (`tls_extra`, starting with a comma) and in the cluster (`cluster_extra`).
fn outbound_sidecar_with(
    pods: &Pods,
    port: u16,
    admin_port: u16,
    b_port: u16,
    sans: &str,
    tls_extra: &str,
    cluster_extra: &str,
) -> Remora {
    Remora::start(
        &format!(
            "[capture]\nenabled = false\n{}[tls]\ncert_dir = \"{}\"\n\
             [[cluster]]\nname = \"reviews.default.svc.cluster.local\"\nendpoints = [\"127.0.0.1:{b_port}\"]\n\
             tls = {{ mode = \"ISTIO_MUTUAL\", subject_alt_names = [{sans}]{tls_extra} }}\n{cluster_extra}\n\
             [[listener]]\nname = \"outbound\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"reviews.default.svc.cluster.local\"\nprotocol = \"http\"\n\
             [[virtual_host]]\nname = \"reviews\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"reviews.default.svc.cluster.local\"\n",
            admin_toml(admin_port),
            pods.certs("a"),
        ),
        &["--cores", "1"],
    )
}

/// The whole path: a plaintext client → pod A's sidecar → mTLS (ISTIO_MUTUAL,
/// Istio's SNI and ALPN) → pod B's sidecar (STRICT) → the plaintext app,
/// which sees the client's verified identity in X-Forwarded-Client-Cert and
/// not the header the client tried to forge. Keep-alive requests reuse one
/// mTLS connection; both sides count the handshake.
#[test]
fn two_sidecars_speak_mtls_and_the_app_sees_the_client_identity() {
    let pods = Pods::new("mtls-pair");
    let app = Backend::start("app");
    let (a_port, b_port, a_admin, b_admin) = (free_port(), free_port(), free_port(), free_port());
    let _b = inbound_sidecar(&pods, b_port, b_admin, &app, "STRICT", "");
    let _a = outbound_sidecar(&pods, a_port, a_admin, b_port, &format!("\"{SERVER_SA}\""));
    let mut c = Client::new(a_port);
    for i in 0..5 {
        let r = c.request(&format!(
            "GET /r/{i} HTTP/1.1\r\nHost: reviews\r\nX-Forwarded-Client-Cert: URI=spiffe://cluster.local/ns/evil/sa/forged\r\n\r\n"
        ));
        assert_eq!(r.status, 200, "{r:?}");
    }
    let last = app.last();
    let xfcc = last["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_else(|| panic!("no XFCC at the app: {last}"))
        .to_string();
    assert!(xfcc.starts_with(&format!("By={SERVER_SA};Hash=")), "{xfcc}");
    assert!(xfcc.ends_with(&format!(";URI={CLIENT_SA}")), "{xfcc}");
    assert!(
        !xfcc.contains("forged"),
        "a forged XFCC reached the app: {xfcc}"
    );
    assert_eq!(
        stat(b_admin, "listener.ssl.handshake"),
        1,
        "one mTLS connection, reused"
    );
    assert_eq!(stat(a_admin, "cluster.ssl.handshake"), 1);
    assert_eq!(stat(b_admin, "listener.ssl.versions.TLSv1.3"), 1);
    let _ = &pods.pki;
}

/// A handshake per request (`max_requests_per_connection = 1`, as perf/compare's
/// mtls-newconn does): after the first, handshakes resume the session by
/// default; with the cluster's `tls.session_resumption = false` (mtls-full)
/// every one is full.
#[test]
fn outbound_sessions_resume_unless_turned_off() {
    let pods = Pods::new("mtls-resume");
    let app = Backend::start("app");
    let b_port = free_port();
    let _b = inbound_sidecar(&pods, b_port, free_port(), &app, "STRICT", "");
    let sans = format!("\"{SERVER_SA}\"");
    let once = "circuit_breakers = { max_requests_per_connection = 1 }";
    for (tls_extra, resumed) in [("", true), (", session_resumption = false", false)] {
        let (a_port, a_admin) = (free_port(), free_port());
        let _a = outbound_sidecar_with(&pods, a_port, a_admin, b_port, &sans, tls_extra, once);
        let mut c = Client::new(a_port);
        for i in 0..5 {
            let r = c.request(&format!("GET /r/{i} HTTP/1.1\r\nHost: reviews\r\n\r\n"));
            assert_eq!(r.status, 200, "{r:?}");
        }
        assert_eq!(stat(a_admin, "cluster.ssl.handshake"), 5, "{tls_extra:?}");
        let reused = stat(a_admin, "cluster.ssl.session_reused");
        if resumed {
            assert!(reused >= 3, "{reused} of 5 handshakes resumed");
        } else {
            assert_eq!(reused, 0, "resumption is off");
        }
    }
}

/// STRICT: plaintext is closed unanswered and counted, the app sees nothing.
/// PERMISSIVE on the same listener (a reload would do; here a second
/// sidecar): plaintext is served, and a forged XFCC is removed.
#[test]
fn strict_refuses_plaintext_and_permissive_serves_it() {
    let pods = Pods::new("mtls-modes");
    let app = Backend::start("app");
    let (b_port, b_admin) = (free_port(), free_port());
    let b = inbound_sidecar(&pods, b_port, b_admin, &app, "STRICT", "");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", b_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    use std::io::{Read, Write};
    let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n");
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "STRICT answered plaintext: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(app.count(), 0);
    assert_eq!(stat(b_admin, "listener.ssl.plaintext_refused"), 1);
    drop(b);

    let (p_port, p_admin) = (free_port(), free_port());
    let _p = inbound_sidecar(&pods, p_port, p_admin, &app, "PERMISSIVE", "");
    let mut c = Client::new(p_port);
    let r = c.request("GET /plain HTTP/1.1\r\nHost: app\r\nX-Forwarded-Client-Cert: URI=spiffe://x/ns/evil/sa/forged\r\n\r\n");
    assert_eq!(r.status, 200);
    let last = app.last();
    assert_eq!(last["path"], "/plain");
    assert!(
        last["headers"]["x-forwarded-client-cert"].is_null(),
        "{last}"
    );
}

/// The outbound side verifies the server's SPIFFE ID: a wrong expected SAN
/// fails the handshake (503 UF to the client, `fail_verify_san` counted),
/// and nothing reaches the app.
#[test]
fn a_server_with_an_unexpected_identity_is_refused() {
    let pods = Pods::new("mtls-san");
    let app = Backend::start("app");
    let (a_port, b_port, a_admin, b_admin) = (free_port(), free_port(), free_port(), free_port());
    let _b = inbound_sidecar(&pods, b_port, b_admin, &app, "STRICT", "");
    let _a = outbound_sidecar(
        &pods,
        a_port,
        a_admin,
        b_port,
        "\"spiffe://cluster.local/ns/default/sa/someone-else\"",
    );
    let mut c = Client::new(a_port);
    let r = c.request("GET / HTTP/1.1\r\nHost: reviews\r\n\r\n");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(app.count(), 0);
    assert!(stat(a_admin, "cluster.ssl.fail_verify_san") >= 1);
}

/// Real TLS clients against the inbound side: openssl s_client with the
/// client's certificate completes mTLS (TLS 1.3, Istio's ALPN read from the
/// hello); without a certificate, or with one from another root, the
/// handshake fails, is counted by reason, and nothing is forwarded.
#[test]
fn openssl_and_curl_clients_against_the_inbound_side() {
    let pods = Pods::new("mtls-openssl");
    let app = Backend::start("app");
    let (b_port, b_admin) = (free_port(), free_port());
    let _b = inbound_sidecar(&pods, b_port, b_admin, &app, "STRICT", "");
    let (chain, key, root) = pods
        .pki
        .workload(CLIENT_SA)
        .write_files(&pods.dir.0, "client");
    let foreign = Pki::new("other").workload(CLIENT_SA);
    let (f_chain, f_key, _) = foreign.write_files(&pods.dir.0, "foreign");

    // curl with a client certificate: HTTP/1.1 over mTLS, XFCC at the app.
    let url = format!("https://127.0.0.1:{b_port}/curl");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(&root)
        .arg("--cert")
        .arg(&chain)
        .arg("--key")
        .arg(&key)
        // The server's certificate names a SPIFFE ID, not a host.
        .arg("--insecure")
        .arg(&url)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = app.last();
    assert_eq!(last["path"], "/curl");
    assert!(last["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap()
        .contains(CLIENT_SA));

    let s_client = |cert: Option<(&std::path::Path, &std::path::Path)>| {
        // -ign_eof: s_client stays until the server closes (the request
        // asks it to, or a refused handshake ends it), not until its stdin
        // ends; a fixed wait for the response failed on a loaded machine.
        // `timeout` bounds a hang.
        let mut cmd = Command::new("timeout");
        cmd.args([
            "20",
            "openssl",
            "s_client",
            "-ign_eof",
            "-connect",
            &format!("127.0.0.1:{b_port}"),
            "-alpn",
            "istio-http/1.1",
        ]);
        if let Some((c, k)) = cert {
            // -cert sends only the leaf; -cert_chain adds the intermediate.
            cmd.arg("-cert")
                .arg(c)
                .arg("-cert_chain")
                .arg(c)
                .arg("-key")
                .arg(k);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            let _ = stdin
                .write_all(b"GET /s_client HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
        }
        let out = child.wait_with_output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let ok = s_client(Some((&chain, &key)));
    assert!(ok.contains("TLSv1.3"), "{ok}");
    assert!(ok.contains("HTTP/1.1 200"), "{ok}");
    let before = app.count();
    let _ = s_client(None);
    let _ = s_client(Some((&f_chain, &f_key)));
    assert_eq!(app.count(), before, "a failed handshake reached the app");
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(b_admin, "listener.ssl.fail_verify_no_cert") < 1
        || stat(b_admin, "listener.ssl.fail_verify_error") < 1
    {
        assert!(Instant::now() < deadline, "{}", admin(b_admin, "/stats"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A ClientHello cut short and followed by the client's FIN can never be
/// completed: STRICT closes it at once (counted as refused) instead of
/// peeking at the same bytes until the handshake timeout (15 s), and the
/// next client is served. Regression: the peek loop did not notice the FIN.
#[test]
fn a_truncated_client_hello_then_eof_is_closed_at_once() {
    use std::io::{Read, Write};
    let pods = Pods::new("mtls-truncated");
    let app = Backend::start("app");
    let (b_port, b_admin) = (free_port(), free_port());
    let _b = inbound_sidecar(&pods, b_port, b_admin, &app, "STRICT", "");
    // A record announcing a 512-byte ClientHello, and only its first bytes.
    for cut in [
        &[0x16, 0x03, 0x01][..],
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ][..],
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", b_port)).unwrap();
        s.write_all(cut).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        // Well below the 15 s handshake timeout: a wait for it fails here.
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        match s.read_to_end(&mut got) {
            Ok(_) => assert!(got.is_empty(), "answered: {got:?}"),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset,
                "not closed after the client's FIN: {e}"
            ),
        }
    }
    assert_eq!(stat(b_admin, "listener.ssl.plaintext_refused"), 2);
    assert_eq!(app.count(), 0);
}

/// A client certificate that has expired is refused at the handshake and
/// counted as such (`fail_verify_expired`); nothing reaches the app.
#[test]
fn an_expired_client_certificate_is_refused_and_counted() {
    let pods = Pods::new("mtls-expired");
    let app = Backend::start("app");
    let (b_port, b_admin) = (free_port(), free_port());
    let _b = inbound_sidecar(&pods, b_port, b_admin, &app, "STRICT", "");
    let expired = pods.pki.leaf_with(&LeafOptions {
        uris: &[CLIENT_SA],
        not_before: time::Duration::days(-10),
        not_after: time::Duration::days(-1),
        ..Default::default()
    });
    let (chain, key, root) = expired.write_files(&pods.dir.0, "expired");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            "--insecure",
        ])
        .arg("--cacert")
        .arg(&root)
        .arg("--cert")
        .arg(&chain)
        .arg("--key")
        .arg(&key)
        .arg(format!("https://127.0.0.1:{b_port}/expired"))
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&out.stdout), "200");
    assert_eq!(app.count(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stat(b_admin, "listener.ssl.fail_verify_expired") < 1 {
        assert!(Instant::now() < deadline, "{}", admin(b_admin, "/stats"));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// DestinationRule `SIMPLE` toward a server outside the mesh: a plain TLS
/// server (`openssl s_server -www`, a DNS certificate from its own CA) is
/// reached over TLS, verified against `ca_certificates` by the SNI name; a
/// wrong SNI name fails verification (503, nothing served).
#[test]
fn simple_tls_to_a_plain_tls_server() {
    let dir = TempDir::new("simple-tls");
    let pki = Pki::new("external");
    let leaf = pki.leaf_with(&LeafOptions {
        dns: &["api.example.com"],
        ..Default::default()
    });
    let (chain, key, root) = leaf.write_files(&dir.0, "server");
    let tls_port = free_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-www",
            "-quiet",
            "-accept",
            &tls_port.to_string(),
        ])
        .arg("-cert")
        .arg(&chain)
        .arg("-cert_chain")
        .arg(&chain)
        .arg("-key")
        .arg(&key)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Ready when it accepts.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let run = |sni: &str| {
        let (port, admin_port) = (free_port(), free_port());
        let r = Remora::start(
            &format!(
                "[capture]\nenabled = false\n{}\
                 [[cluster]]\nname = \"external\"\nendpoints = [\"127.0.0.1:{tls_port}\"]\n\
                 tls = {{ mode = \"SIMPLE\", sni = \"{sni}\", ca_certificates = \"{}\" }}\n\
                 [[listener]]\nname = \"out\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"external\"\nprotocol = \"http\"\n\
                 [[virtual_host]]\nname = \"ext\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"external\"\n",
                admin_toml(admin_port),
                root.display()
            ),
            &["--cores", "1"],
        );
        let mut c = Client::new(port);
        let resp =
            c.request("GET / HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n");
        (r, resp, admin_port)
    };
    let (_r, ok, admin_port) = run("api.example.com");
    assert_eq!(ok.status, 200, "{ok:?}");
    // s_server -www describes the session it served.
    assert!(
        String::from_utf8_lossy(&ok.body).contains("TLSv1.3"),
        "{}",
        String::from_utf8_lossy(&ok.body)
    );
    assert_eq!(stat(admin_port, "cluster.ssl.handshake"), 1);
    let (_r2, bad, admin2) = run("other.example.com");
    assert_eq!(bad.status, 503, "{bad:?}");
    assert!(
        stat(admin2, "cluster.ssl.fail_verify_san") >= 1,
        "{}",
        admin(admin2, "/stats")
    );
    let _ = server.kill();
    let _ = server.wait();
}
