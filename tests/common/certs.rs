//! Test certificates, made in the test: a root CA, an intermediate CA and
//! SPIFFE workload leaves, written in the layout Istio uses for file-mounted
//! certificates (`cert-chain.pem`, `key.pem`, `root-cert.pem`).
//!
//! ECDSA P-256 keys come from rcgen; RSA keys from the `openssl` CLI (ring,
//! rcgen's backend, signs with RSA but cannot generate RSA keys).

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// The key algorithm of a leaf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    Rsa2048,
}

/// One certificate authority (root or intermediate) that can sign.
pub struct Ca {
    pub cert: rcgen::Certificate,
    pub key: KeyPair,
    pub pem: String,
}

/// A root CA and an intermediate signed by it: the mesh's trust chain.
pub struct Pki {
    pub root: Ca,
    pub intermediate: Ca,
}

/// A workload certificate and its key, as PEM.
pub struct Leaf {
    /// The leaf, then the intermediate (what `cert-chain.pem` holds).
    pub chain_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The root's PEM (what `root-cert.pem` holds).
    pub root_pem: String,
}

/// Options for [`Pki::leaf_with`].
pub struct LeafOptions<'a> {
    /// URI SANs, e.g. `spiffe://cluster.local/ns/default/sa/client`.
    pub uris: &'a [&'a str],
    /// DNS SANs (a plain TLS server name, for non-mesh TLS).
    pub dns: &'a [&'a str],
    pub key: KeyKind,
    /// Validity relative to now.
    pub not_before: Duration,
    pub not_after: Duration,
}

impl Default for LeafOptions<'_> {
    fn default() -> Self {
        LeafOptions {
            uris: &[],
            dns: &[],
            key: KeyKind::EcdsaP256,
            not_before: Duration::hours(-1),
            not_after: Duration::days(1),
        }
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
    p.distinguished_name
        .push(DnType::OrganizationName, "cluster.local");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - Duration::days(1);
    p.not_after = now + Duration::days(365);
    p
}

impl Pki {
    /// A new root ("`name` root") and intermediate, both ECDSA P-256.
    pub fn new(name: &str) -> Pki {
        let root_key = KeyPair::generate().expect("root key");
        let root_cert = ca_params(&format!("{name} root"))
            .self_signed(&root_key)
            .expect("root cert");
        let inter_key = KeyPair::generate().expect("intermediate key");
        let inter_cert = ca_params(&format!("{name} intermediate"))
            .signed_by(&inter_key, &root_cert, &root_key)
            .expect("intermediate cert");
        Pki {
            root: Ca {
                pem: root_cert.pem(),
                cert: root_cert,
                key: root_key,
            },
            intermediate: Ca {
                pem: inter_cert.pem(),
                cert: inter_cert,
                key: inter_key,
            },
        }
    }

    /// A SPIFFE workload leaf, ECDSA P-256, valid from an hour ago for a day.
    pub fn workload(&self, spiffe: &str) -> Leaf {
        self.leaf_with(&LeafOptions {
            uris: &[spiffe],
            ..Default::default()
        })
    }

    /// A leaf signed by the intermediate, for both client and server use (as
    /// Istio's workload certificates are).
    pub fn leaf_with(&self, o: &LeafOptions<'_>) -> Leaf {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(DnType::OrganizationName, "cluster.local");
        for u in o.uris {
            p.subject_alt_names
                .push(SanType::URI((*u).try_into().expect("URI SAN")));
        }
        for d in o.dns {
            p.subject_alt_names
                .push(SanType::DnsName((*d).try_into().expect("DNS SAN")));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        p.not_before = now + o.not_before;
        p.not_after = now + o.not_after;
        let key = match o.key {
            KeyKind::EcdsaP256 => KeyPair::generate().expect("leaf key"),
            KeyKind::Rsa2048 => rsa_key(),
        };
        let cert = p
            .signed_by(&key, &self.intermediate.cert, &self.intermediate.key)
            .expect("leaf cert");
        let cert_pem = cert.pem();
        Leaf {
            chain_pem: format!("{cert_pem}{}", self.intermediate.pem),
            cert_pem,
            key_pem: key.serialize_pem(),
            root_pem: self.root.pem.clone(),
        }
    }
}

/// A 2048-bit RSA key from `openssl genpkey` (PKCS#8 PEM), for rcgen to sign with.
fn rsa_key() -> KeyPair {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ])
        .output()
        .expect("run openssl genpkey");
    assert!(out.status.success(), "openssl genpkey failed");
    let pem = String::from_utf8(out.stdout).expect("PEM");
    KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("RSA key")
}

impl Leaf {
    /// Writes `cert-chain.pem`, `key.pem` and `root-cert.pem` into `dir`
    /// (created if missing): Istio's file-mounted certificate layout.
    /// Each file is written to a temporary name and renamed into place, so a
    /// watcher never reads half a file.
    pub fn write_istio_dir(&self, dir: &Path) {
        std::fs::create_dir_all(dir).expect("cert dir");
        for (name, body) in [
            ("cert-chain.pem", &self.chain_pem),
            ("key.pem", &self.key_pem),
            ("root-cert.pem", &self.root_pem),
        ] {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, body).expect("write cert file");
            std::fs::rename(&tmp, dir.join(name)).expect("rename cert file");
        }
    }

    /// Writes the three files under their own names in `dir` and returns
    /// their paths (chain, key, root), for clients such as curl and openssl.
    pub fn write_files(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).expect("dir");
        let chain = dir.join(format!("{stem}-chain.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        let root = dir.join(format!("{stem}-root.pem"));
        std::fs::write(&chain, &self.chain_pem).expect("write chain");
        std::fs::write(&key, &self.key_pem).expect("write key");
        std::fs::write(&root, &self.root_pem).expect("write root");
        (chain, key, root)
    }
}

/// `spiffe://cluster.local/ns/NS/sa/SA`.
pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")
}
