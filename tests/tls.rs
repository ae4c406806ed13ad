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
