//! The `tls` room against real certificates (rcgen, openssl for RSA) and real
//! rustls handshakes over in-memory connections: loading and rejecting
//! Istio's certificate files, mTLS both ways with SPIFFE identities,
//! failure reasons, resumption across rotation, the rotation store, /certs.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{spiffe, KeyKind, Leaf, LeafOptions, Pki};
use common::TempDir;
use remora::tls::{
    certs_json, classify, load_dir, peer_uri_san, CertDetails, CertErrorKind, ClientTls, Contexts,
    HandshakeFailure, TlsStore,
};
use rustls::pki_types::ServerName;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, HandshakeKind, ServerConfig, ServerConnection,
};

const TD: &str = "cluster.local";
const ALPN: &[&[u8]] = &[b"istio-peer-exchange", b"istio"];

fn alpn() -> Vec<Vec<u8>> {
    ALPN.iter().map(|a| a.to_vec()).collect()
}

fn dir_with(tag: &str, leaf: &Leaf) -> TempDir {
    let d = TempDir::new(tag);
    leaf.write_istio_dir(&d.0);
    d
}

fn contexts(leaf: &Leaf) -> (TempDir, Contexts) {
    let d = dir_with("ctx", leaf);
    let id = load_dir(&d.0, TD).expect("load");
    (d, Contexts::new(id).expect("contexts"))
}

/// Both ends of a handshake after the bytes stopped moving.
struct Outcome {
    client: ClientConnection,
    server: ServerConnection,
    client_err: Option<rustls::Error>,
    server_err: Option<rustls::Error>,
}

impl Outcome {
    fn ok(&self) -> bool {
        self.client_err.is_none()
            && self.server_err.is_none()
            && !self.client.is_handshaking()
            && !self.server.is_handshaking()
    }
}

/// Feeds `bytes` to one side; its first error is kept and ends its reading.
fn feed<D>(conn: &mut ConnectionCommon<D>, mut bytes: &[u8], err: &mut Option<rustls::Error>) {
    while err.is_none() && !bytes.is_empty() {
        if conn.read_tls(&mut bytes).is_err() {
            break;
        }
        if let Err(e) = conn.process_new_packets() {
            *err = Some(e);
        }
    }
}

/// Runs a handshake to its end (including TLS 1.3's post-handshake tickets
/// and a final alert) by pumping bytes between the two until none move.
fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>, sni: &str) -> Outcome {
    let name = ServerName::try_from(sni.to_string()).expect("sni");
    let mut c = ClientConnection::new(client, name).expect("client");
    let mut s = ServerConnection::new(server).expect("server");
    let (mut client_err, mut server_err) = (None, None);
    for _ in 0..50 {
        let mut buf = Vec::new();
        while c.wants_write() {
            if c.write_tls(&mut buf).is_err() {
                break;
            }
        }
        let moved_c = !buf.is_empty();
        feed(&mut s, &buf, &mut server_err);
        buf.clear();
        while s.wants_write() {
            if s.write_tls(&mut buf).is_err() {
                break;
            }
        }
        let moved_s = !buf.is_empty();
        feed(&mut c, &buf, &mut client_err);
        if !moved_c && !moved_s {
            break;
        }
    }
    Outcome {
        client: c,
        server: s,
        client_err,
        server_err,
    }
}

const SNI: &str = "outbound_.9080_._.server.default.svc.cluster.local";

// ---------------------------------------------------------------- loading

#[test]
fn loads_ecdsa_and_rsa_identities() {
    let pki = Pki::new("mesh");
    for key in [KeyKind::EcdsaP256, KeyKind::Rsa2048] {
        let id = spiffe("default", "reviews");
        let leaf = pki.leaf_with(&LeafOptions {
            uris: &[&id],
            key,
            ..Default::default()
        });
        let d = dir_with("load", &leaf);
        let identity = load_dir(&d.0, TD).unwrap_or_else(|e| panic!("{key:?}: {e}"));
        assert_eq!(identity.spiffe_id().to_string(), id);
        assert_eq!(identity.spiffe_id().namespace(), "default");
        assert_eq!(identity.spiffe_id().service_account(), "reviews");
        assert_eq!(identity.chain_details().len(), 2, "leaf and intermediate");
        assert_eq!(identity.root_details().len(), 1);
        assert!(!identity.serial().is_empty());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(identity.not_before() <= now && now < identity.not_after());
    }
}

#[test]
fn accepts_several_roots_and_sec1_keys() {
    let pki = Pki::new("mesh");
    let other = Pki::new("other");
    let mut leaf = pki.workload(&spiffe("default", "a"));
    // Root rotation: the new root and the old one side by side.
    leaf.root_pem = format!("{}{}", other.root.pem, pki.root.pem);
    let d = dir_with("roots", &leaf);
    assert_eq!(
        load_dir(&d.0, TD).expect("two roots").root_details().len(),
        2
    );
    // The same P-256 key as SEC1 ("EC PRIVATE KEY"), as openssl writes it.
    let key = d.file("pkcs8.pem", &leaf.key_pem);
    let out = std::process::Command::new("openssl")
        .args(["ec", "-in"])
        .arg(&key)
        .output()
        .expect("openssl ec");
    assert!(out.status.success());
    let sec1 = String::from_utf8(out.stdout).unwrap();
    assert!(sec1.contains("BEGIN EC PRIVATE KEY"), "{sec1}");
    d.file("key.pem", &sec1);
    load_dir(&d.0, TD).expect("SEC1 key");
}

type Mutate<'a> = Box<dyn Fn(&Path) + 'a>;

/// (what, the leaf written, what is then broken, the file blamed, the
/// reason, words the message must contain)
type Case<'a> = (
    &'a str,
    &'a Leaf,
    Mutate<'a>,
    &'a str,
    fn(&CertErrorKind) -> bool,
    &'a str,
);

/// Each way the files can be wrong is refused, naming the file and the reason.
#[test]
fn rejects_bad_files_naming_the_file() {
    let pki = Pki::new("mesh");
    let other = Pki::new("other");
    let id = spiffe("default", "a");
    let good = pki.workload(&id);
    let another = pki.workload(&id);
    let expired = pki.leaf_with(&LeafOptions {
        uris: &[&id],
        not_before: time::Duration::days(-10),
        not_after: time::Duration::days(-1),
        ..Default::default()
    });
    let future = pki.leaf_with(&LeafOptions {
        uris: &[&id],
        not_before: time::Duration::days(1),
        not_after: time::Duration::days(10),
        ..Default::default()
    });
    let no_uri = pki.leaf_with(&LeafOptions {
        dns: &["reviews.default.svc"],
        ..Default::default()
    });
    let not_spiffe = pki.leaf_with(&LeafOptions {
        uris: &["https://example.com/a"],
        ..Default::default()
    });
    let foreign_td = pki.workload("spiffe://other.domain/ns/default/sa/a");

    let write = |name: &'static str, body: String| -> Mutate {
        Box::new(move |d: &Path| std::fs::write(d.join(name), &body).unwrap())
    };
    let cases: Vec<Case> = vec![
        (
            "missing key",
            &good,
            Box::new(|d: &Path| std::fs::remove_file(d.join("key.pem")).unwrap()),
            "key.pem",
            |k| matches!(k, CertErrorKind::Unreadable(_)),
            "cannot read",
        ),
        (
            "missing chain",
            &good,
            Box::new(|d: &Path| std::fs::remove_file(d.join("cert-chain.pem")).unwrap()),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::Unreadable(_)),
            "cannot read",
        ),
        (
            "garbage chain",
            &good,
            write("cert-chain.pem", "hello, not a certificate\n".into()),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::NoPem { .. }),
            "no PEM certificate",
        ),
        (
            "garbage key",
            &good,
            write(
                "key.pem",
                "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n".into(),
            ),
            "key.pem",
            |k| {
                matches!(
                    k,
                    CertErrorKind::BadPem(_)
                        | CertErrorKind::NoPem { .. }
                        | CertErrorKind::BadKey(_)
                )
            },
            "key.pem",
        ),
        (
            "certificate bytes not DER",
            &good,
            write(
                "root-cert.pem",
                "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n".into(),
            ),
            "root-cert.pem",
            |k| matches!(k, CertErrorKind::BadCertificate { .. }),
            "cannot be parsed",
        ),
        (
            "key of another certificate",
            &good,
            write("key.pem", another.key_pem.clone()),
            "key.pem",
            |k| matches!(k, CertErrorKind::KeyMismatch { .. }),
            "the private key does not match the certificate in",
        ),
        (
            "expired",
            &expired,
            Box::new(|_: &Path| {}),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::Expired { .. }),
            "expired",
        ),
        (
            "not yet valid",
            &future,
            Box::new(|_: &Path| {}),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::NotYetValid { .. }),
            "not valid before",
        ),
        (
            "no URI SAN",
            &no_uri,
            Box::new(|_: &Path| {}),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::NoSpiffeId(_)),
            "no SPIFFE URI SAN",
        ),
        (
            "URI SAN not SPIFFE",
            &not_spiffe,
            Box::new(|_: &Path| {}),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::NoSpiffeId(_)),
            "https://example.com/a",
        ),
        (
            "other trust domain",
            &foreign_td,
            Box::new(|_: &Path| {}),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::WrongTrustDomain { .. }),
            "not in the trust domain",
        ),
        (
            "chain from another root",
            &good,
            write("root-cert.pem", other.root.pem.clone()),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::Untrusted { .. }),
            "does not verify against",
        ),
        (
            "leaf without its intermediate",
            &good,
            write("cert-chain.pem", good.cert_pem.clone()),
            "cert-chain.pem",
            |k| matches!(k, CertErrorKind::Untrusted { .. }),
            "not signed by any of the roots",
        ),
    ];
    for (what, leaf, mutate, file, kind, words) in cases {
        let d = dir_with("reject", leaf);
        mutate(&d.0);
        let e = match load_dir(&d.0, TD) {
            Ok(id) => panic!("{what}: accepted {id:?}"),
            Err(e) => e,
        };
        assert_eq!(e.file(), d.0.join(file), "{what}: {e}");
        assert!(kind(e.kind()), "{what}: wrong reason {:?}", e.kind());
        let msg = e.to_string();
        assert!(
            msg.starts_with(&d.0.join(file).display().to_string()),
            "{what}: {msg}"
        );
        assert!(msg.contains(words), "{what}: `{msg}` lacks `{words}`");
    }
}

// ------------------------------------------------------------- handshakes

#[test]
fn mtls_handshake_yields_both_identities() {
    let pki = Pki::new("mesh");
    let server_id = spiffe("default", "server");
    let client_id = spiffe("frontend", "client");
    // An RSA server and an ECDSA client: both key types on both sides.
    let server_leaf = pki.leaf_with(&LeafOptions {
        uris: &[&server_id],
        key: KeyKind::Rsa2048,
        ..Default::default()
    });
    let (_ds, server) = contexts(&server_leaf);
    let (_dc, client) = contexts(&pki.workload(&client_id));
    for sans in [vec![server_id.clone()], vec![]] {
        let o = handshake(
            client.client_config(&sans, alpn()),
            server.server_config(),
            SNI,
        );
        assert!(
            o.ok(),
            "sans {sans:?}: client {:?} server {:?}",
            o.client_err,
            o.server_err
        );
        assert_eq!(peer_uri_san(&o.server).as_deref(), Some(client_id.as_str()));
        assert_eq!(peer_uri_san(&o.client).as_deref(), Some(server_id.as_str()));
        assert_eq!(
            o.client.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // The server selects no ALPN (the data path reads the client's list).
        assert_eq!(o.server.alpn_protocol(), None);
    }
}

#[test]
fn wrong_expected_san_is_a_san_mismatch() {
    let pki = Pki::new("mesh");
    let (_ds, server) = contexts(&pki.workload(&spiffe("default", "server")));
    let (_dc, client) = contexts(&pki.workload(&spiffe("default", "client")));
    let o = handshake(
        client.client_config(&[spiffe("default", "someone-else")], alpn()),
        server.server_config(),
        SNI,
    );
    let e = o.client_err.expect("the client refuses");
    assert_eq!(classify(&e), HandshakeFailure::SanMismatch, "{e}");
    assert_eq!(classify(&e).as_str(), "fail_verify_san");
    assert!(e.to_string().contains("someone-else"), "{e}");
}

#[test]
fn server_of_another_trust_domain_fails_an_empty_san_list() {
    let pki = Pki::new("mesh");
    let d = dir_with(
        "td",
        &pki.workload("spiffe://other.td/ns/default/sa/server"),
    );
    let server = Contexts::new(load_dir(&d.0, "other.td").unwrap()).unwrap();
    let (_dc, client) = contexts(&pki.workload(&spiffe("default", "client")));
    let o = handshake(
        client.client_config(&[], alpn()),
        server.server_config(),
        SNI,
    );
    assert_eq!(
        o.client_err.as_ref().map(classify),
        Some(HandshakeFailure::SanMismatch)
    );
}

#[test]
fn client_from_another_root_is_untrusted() {
    let pki = Pki::new("mesh");
    let other = Pki::new("other");
    let server_id = spiffe("default", "server");
    let (_ds, server) = contexts(&pki.workload(&server_id));
    // Trusts our root (so it gets as far as presenting its certificate),
    // but its own certificate comes from another mesh.
    let files = TempDir::new("foreign");
    let (chain, key, _) = other
        .workload(&spiffe("default", "intruder"))
        .write_files(&files.0, "intruder");
    let root = files.file("mesh-root.pem", &pki.root.pem);
    let client =
        ClientTls::from_files(Some(&root), Some(&chain), Some(&key), &[server_id]).unwrap();
    assert!(client.is_mutual());
    let o = handshake(client.config(), server.server_config(), SNI);
    let e = o.server_err.expect("the server refuses");
    assert_eq!(classify(&e), HandshakeFailure::Untrusted, "{e}");
    assert_eq!(classify(&e).as_str(), "fail_verify_error");
}

#[test]
fn client_without_certificate_is_refused() {
    let pki = Pki::new("mesh");
    let server_id = spiffe("default", "server");
    let (_ds, server) = contexts(&pki.workload(&server_id));
    let files = TempDir::new("nocert");
    let root = files.file("root.pem", &pki.root.pem);
    let client = ClientTls::from_files(Some(&root), None, None, &[server_id]).unwrap();
    assert!(!client.is_mutual());
    let o = handshake(client.config(), server.server_config(), SNI);
    let e = o.server_err.expect("the server refuses");
    assert_eq!(classify(&e), HandshakeFailure::NoCertificate, "{e}");
    assert_eq!(classify(&e).as_str(), "fail_verify_no_cert");
    // TLS 1.3 tells the client why.
    assert_eq!(
        o.client_err.as_ref().map(classify),
        Some(HandshakeFailure::NoCertificate)
    );
}

#[test]
fn mutual_client_tls_from_files_is_accepted_by_the_server() {
    let pki = Pki::new("mesh");
    let server_id = spiffe("default", "server");
    let client_id = spiffe("default", "legacy");
    let (_ds, server) = contexts(&pki.workload(&server_id));
    let files = TempDir::new("mutual");
    let (chain, key, root) = pki.workload(&client_id).write_files(&files.0, "c");
    let client = ClientTls::from_files(
        Some(&root),
        Some(&chain),
        Some(&key),
        std::slice::from_ref(&server_id),
    )
    .unwrap();
    let o = handshake(client.with_alpn(alpn()), server.server_config(), SNI);
    assert!(
        o.ok(),
        "client {:?} server {:?}",
        o.client_err,
        o.server_err
    );
    assert_eq!(peer_uri_san(&o.server).as_deref(), Some(client_id.as_str()));
}

#[test]
fn client_tls_files_are_checked() {
    let pki = Pki::new("mesh");
    let files = TempDir::new("ctfiles");
    let (chain, _key, root) = pki
        .workload(&spiffe("default", "a"))
        .write_files(&files.0, "a");
    let (_, other_key, _) = pki
        .workload(&spiffe("default", "b"))
        .write_files(&files.0, "b");
    let e = ClientTls::from_files(Some(&root), Some(&chain), Some(&other_key), &[]).unwrap_err();
    assert_eq!(e.file(), other_key.as_path());
    assert!(matches!(e.kind(), CertErrorKind::KeyMismatch { .. }), "{e}");
    let e = ClientTls::from_files(Some(&root), Some(&chain), None, &[]).unwrap_err();
    assert_eq!(e.file(), chain.as_path(), "{e}");
    let bad = files.file("bad-root.pem", "nothing here");
    let e = ClientTls::from_files(Some(&bad), None, None, &[]).unwrap_err();
    assert_eq!(e.file(), bad.as_path(), "{e}");
}

/// A plain TLS server with a DNS name, for DestinationRule SIMPLE.
fn dns_server(pki: &Pki, name: &str) -> Arc<ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let leaf = pki.leaf_with(&LeafOptions {
        dns: &[name],
        ..Default::default()
    });
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    Arc::new(
        ServerConfig::builder_with_provider(remora::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    )
}

#[test]
fn simple_tls_verifies_the_sni_or_the_given_sans() {
    let pki = Pki::new("web");
    let server = dns_server(&pki, "api.example.com");
    let files = TempDir::new("simple");
    let root = files.file("ca.pem", &pki.root.pem);
    let by_sni = ClientTls::from_files(Some(&root), None, None, &[]).unwrap();
    assert!(handshake(by_sni.config(), server.clone(), "api.example.com").ok());
    let o = handshake(by_sni.config(), server.clone(), "other.example.com");
    assert_eq!(
        o.client_err.as_ref().map(classify),
        Some(HandshakeFailure::SanMismatch)
    );
    // With subject_alt_names the SNI is not checked, the SANs are.
    let by_san =
        ClientTls::from_files(Some(&root), None, None, &["api.example.com".into()]).unwrap();
    assert!(handshake(by_san.config(), server.clone(), "anything.internal").ok());
    let wrong = ClientTls::from_files(Some(&root), None, None, &["db.example.com".into()]).unwrap();
    let o = handshake(wrong.config(), server.clone(), "api.example.com");
    assert_eq!(
        o.client_err.as_ref().map(classify),
        Some(HandshakeFailure::SanMismatch)
    );
    // Another CA: untrusted.
    let other = files.file("other.pem", &Pki::new("other").root.pem);
    let o = handshake(
        ClientTls::from_files(Some(&other), None, None, &[])
            .unwrap()
            .config(),
        server,
        "api.example.com",
    );
    assert_eq!(
        o.client_err.as_ref().map(classify),
        Some(HandshakeFailure::Untrusted)
    );
}

// ------------------------------------------------------------- resumption

#[test]
fn sessions_resume_until_a_server_rotation() {
    let pki = Pki::new("mesh");
    let server_id = spiffe("default", "server");
    let (_ds, server) = contexts(&pki.workload(&server_id));
    let (_dc, client) = contexts(&pki.workload(&spiffe("default", "client")));
    let sans = [server_id.clone()];
    let first = handshake(
        client.client_config(&sans, alpn()),
        server.server_config(),
        SNI,
    );
    assert!(first.ok());
    assert_eq!(first.client.handshake_kind(), Some(HandshakeKind::Full));
    // The same inputs give the same config (what resumption needs).
    assert!(Arc::ptr_eq(
        &client.client_config(&sans, alpn()),
        &client.client_config(&sans, alpn())
    ));
    let second = handshake(
        client.client_config(&sans, alpn()),
        server.server_config(),
        SNI,
    );
    assert!(second.ok());
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(second.server.handshake_kind(), Some(HandshakeKind::Resumed));
    // The resumed session still knows who the client is.
    assert_eq!(
        peer_uri_san(&second.server).as_deref(),
        Some(spiffe("default", "client").as_str())
    );

    // The server rotates: tickets from before do not resume (they would
    // carry the old certificates on, see src/tls/config.rs); a full
    // handshake presents the new certificate, and its ticket resumes.
    let d = dir_with("rot", &pki.workload(&server_id));
    let rotated = server.rotate(load_dir(&d.0, TD).unwrap()).unwrap();
    assert_ne!(rotated.identity().serial(), server.identity().serial());
    let third = handshake(
        client.client_config(&sans, alpn()),
        rotated.server_config(),
        SNI,
    );
    assert!(third.ok());
    assert_eq!(third.client.handshake_kind(), Some(HandshakeKind::Full));
    let presented = CertDetails::parse(&third.client.peer_certificates().unwrap()[0]).unwrap();
    assert_eq!(presented.serial, rotated.identity().serial());
    let fourth = handshake(
        client.client_config(&sans, alpn()),
        rotated.server_config(),
        SNI,
    );
    assert_eq!(fourth.client.handshake_kind(), Some(HandshakeKind::Resumed));
}

#[test]
fn client_configs_present_the_rotated_certificate() {
    let pki = Pki::new("mesh");
    let server_id = spiffe("default", "server");
    let (_ds, server) = contexts(&pki.workload(&server_id));
    let (_dc, client) = contexts(&pki.workload(&spiffe("default", "client")));
    let config = client.client_config(std::slice::from_ref(&server_id), alpn());
    assert!(handshake(config.clone(), server.server_config(), SNI).ok());

    let d = dir_with("crot", &pki.workload(&spiffe("default", "client")));
    let rotated = client.rotate(load_dir(&d.0, TD).unwrap()).unwrap();
    // A config kept from before the rotation no longer resumes the session
    // the old certificate made (its ticket would carry that certificate on):
    // a full handshake, with the new certificate, even to a server that saw
    // us before...
    let o = handshake(config.clone(), server.server_config(), SNI);
    assert!(o.ok());
    assert_eq!(o.client.handshake_kind(), Some(HandshakeKind::Full));
    let presented = CertDetails::parse(&o.server.peer_certificates().unwrap()[0]).unwrap();
    assert_eq!(presented.serial, rotated.identity().serial());
    // ...and then resumes as before, with the new certificate.
    let o = handshake(config, server.server_config(), SNI);
    assert_eq!(o.client.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(
        CertDetails::parse(&o.server.peer_certificates().unwrap()[0])
            .unwrap()
            .serial,
        rotated.identity().serial()
    );
}

// --------------------------------------------------------------- rotation

/// Polls `f` until it holds, for at most five seconds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn store_publishes_a_rotation_and_keeps_serving_through_a_bad_one() {
    let pki = Pki::new("mesh");
    let id = spiffe("default", "a");
    let d = dir_with("store", &pki.workload(&id));
    let store = TlsStore::start(&d.0, TD).expect("start");
    let handle = store.handle();
    let first = handle.load().expect("published at start");
    let serial0 = first.identity().serial().to_string();
    assert_eq!(store.status().rotations_ok, 0);

    let next = pki.workload(&id);
    next.write_istio_dir(&d.0);
    eventually("the rotation", || store.status().rotations_ok == 1);
    let now = handle.load().unwrap();
    assert_ne!(now.identity().serial(), serial0);
    assert_eq!(
        store.status().serial.as_deref(),
        Some(now.identity().serial())
    );
    // Contexts already handed out stay whole.
    assert_eq!(first.identity().serial(), serial0);

    // A key that belongs to another certificate: refused, counted, logged;
    // the rotated certificate keeps serving.
    let serial1 = now.identity().serial().to_string();
    std::fs::write(d.0.join("key.pem"), pki.workload(&id).key_pem).unwrap();
    eventually("the rejection", || store.status().rotations_failed == 1);
    let status = store.status();
    assert_eq!(status.serial.as_deref(), Some(serial1.as_str()));
    assert_eq!(status.rotations_ok, 1);
    let err = status.last_error.expect("last error");
    assert!(
        err.contains("key.pem") && err.contains("does not match"),
        "{err}"
    );
    assert_eq!(handle.load().unwrap().identity().serial(), serial1);

    // An expired certificate: refused too.
    pki.leaf_with(&LeafOptions {
        uris: &[&id],
        not_before: time::Duration::days(-3),
        not_after: time::Duration::days(-1),
        ..Default::default()
    })
    .write_istio_dir(&d.0);
    eventually("the second rejection", || {
        store.status().rotations_failed == 2
    });
    assert!(store.status().last_error.unwrap().contains("expired"));

    // Fixing the files recovers.
    let fixed = pki.workload(&id);
    fixed.write_istio_dir(&d.0);
    eventually("the recovery", || store.status().rotations_ok == 2);
    assert_eq!(store.status().last_error, None);
    store.stop();
}

/// Kubernetes mounts a secret as `..data -> ..TIMESTAMP/` with each file a
/// symlink through `..data`, and updates it by renaming a new `..data`
/// symlink over the old one.
#[test]
fn store_follows_a_kubernetes_symlink_swap() {
    use std::os::unix::fs::symlink;
    let pki = Pki::new("mesh");
    let id = spiffe("default", "a");
    let d = TempDir::new("k8s");
    pki.workload(&id).write_istio_dir(&d.0.join("..v1"));
    symlink("..v1", d.0.join("..data")).unwrap();
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        symlink(format!("..data/{f}"), d.0.join(f)).unwrap();
    }
    let store = TlsStore::start(&d.0, TD).expect("start");
    let serial0 = store.status().serial.unwrap();

    pki.workload(&id).write_istio_dir(&d.0.join("..v2"));
    symlink("..v2", d.0.join("..data_tmp")).unwrap();
    std::fs::rename(d.0.join("..data_tmp"), d.0.join("..data")).unwrap();
    eventually("the swap", || store.status().rotations_ok == 1);
    assert_ne!(store.status().serial.unwrap(), serial0);
}

#[test]
fn store_start_reports_bad_files_and_stops_cleanly() {
    let pki = Pki::new("mesh");
    let d = TempDir::new("start");
    let e = TlsStore::start(&d.0, TD).err().expect("empty dir refused");
    assert_eq!(e.file(), d.0.join("cert-chain.pem"));
    pki.workload(&spiffe("default", "a")).write_istio_dir(&d.0);
    // Many starts and stops (as tests do): each thread ends promptly.
    let t = Instant::now();
    for i in 0..20 {
        let store = TlsStore::start(&d.0, TD).expect("start");
        if i % 2 == 0 {
            store.stop();
        } // else dropped
    }
    assert!(t.elapsed() < Duration::from_secs(10));
}

// ------------------------------------------------------------------ /certs

#[test]
fn certs_json_has_envoys_fields() {
    let pki = Pki::new("mesh");
    let id = spiffe("default", "reviews");
    let leaf = pki.leaf_with(&LeafOptions {
        uris: &[&id],
        dns: &["reviews.default.svc"],
        not_after: time::Duration::days(10) + time::Duration::hours(1),
        ..Default::default()
    });
    let (d, ctx) = contexts(&leaf);
    let v = certs_json(&ctx);
    let cert = &v["certificates"][0];
    let ca = cert["ca_cert"].as_array().unwrap();
    let chain = cert["cert_chain"].as_array().unwrap();
    assert_eq!(ca.len(), 1);
    assert_eq!(chain.len(), 2);
    assert_eq!(
        ca[0]["path"],
        d.0.join("root-cert.pem").display().to_string()
    );
    assert_eq!(
        chain[0]["path"],
        d.0.join("cert-chain.pem").display().to_string()
    );
    assert_eq!(chain[0]["serial_number"], ctx.identity().serial());
    let serial = chain[0]["serial_number"].as_str().unwrap();
    assert!(
        serial
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{serial}"
    );
    assert_eq!(
        chain[0]["subject_alt_names"],
        serde_json::json!([{ "uri": id }, { "dns": "reviews.default.svc" }])
    );
    assert_eq!(chain[0]["days_until_expiration"], "10");
    for field in ["valid_from", "expiration_time"] {
        let t = chain[0][field].as_str().unwrap();
        assert!(
            t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{field}: {t}"
        );
    }
    assert!(chain[0]["valid_from"].as_str() < chain[0]["expiration_time"].as_str());
}

/// A TLS 1.2 peer (Envoy's default maximum as a client): the inbound config
/// negotiates one of Istio's ECDHE suites, verifies its certificate, and
/// resumes its session.
#[test]
fn tls12_client_is_served_and_resumes() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let pki = Pki::new("mesh");
    let server_id = spiffe("default", "server");
    // A DNS SAN beside the SPIFFE one lets a stock rustls client verify it.
    let (_ds, server) = contexts(&pki.leaf_with(&LeafOptions {
        uris: &[&server_id],
        dns: &["server.local"],
        ..Default::default()
    }));
    let client_id = spiffe("default", "envoy");
    let leaf = pki.workload(&client_id);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.root.pem.as_bytes()).unwrap())
        .unwrap();
    let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let client = Arc::new(
        ClientConfig::builder_with_provider(remora::tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    );
    let o = handshake(client.clone(), server.server_config(), "server.local");
    assert!(
        o.ok(),
        "client {:?} server {:?}",
        o.client_err,
        o.server_err
    );
    assert_eq!(
        o.server.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let suite = format!("{:?}", o.server.negotiated_cipher_suite().unwrap().suite());
    assert!(suite.starts_with("TLS_ECDHE_ECDSA_WITH_AES_"), "{suite}");
    assert_eq!(peer_uri_san(&o.server).as_deref(), Some(client_id.as_str()));
    let again = handshake(client, server.server_config(), "server.local");
    assert!(again.ok());
    assert_eq!(again.server.handshake_kind(), Some(HandshakeKind::Resumed));
}

/// What a TLS port receives that is not TLS: refused as a protocol error,
/// never a panic.
#[test]
fn plaintext_and_garbage_are_protocol_failures() {
    let pki = Pki::new("mesh");
    let (_ds, server) = contexts(&pki.workload(&spiffe("default", "server")));
    let inputs: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\xff",
        b"\x16\x03\x01\xff\xff",
        &[0u8; 64],
    ];
    for input in inputs {
        let mut s = ServerConnection::new(server.server_config()).unwrap();
        let mut err = None;
        feed(&mut s, input, &mut err);
        let e = err.unwrap_or_else(|| panic!("{input:?} accepted"));
        assert_eq!(classify(&e), HandshakeFailure::Protocol, "{input:?}: {e}");
    }
}
