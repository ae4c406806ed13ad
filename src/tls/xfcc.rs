//! The X-Forwarded-Client-Cert element an inbound sidecar adds for an mTLS
//! client, in Envoy's format with the details Istio asks for
//! (`set_current_client_cert_details { subject, uri, dns }`, with
//! `forward_client_cert_details: APPEND_FORWARD`):
//! `By=<our URI SAN>;Hash=<hex SHA-256 of the client leaf>;Subject="<RFC 2253 DN>";URI=<client URI SAN>`.
//! Checked against the real Envoy in tests/tls_envoy.rs and tests/tls.rs.

use std::fmt::Write;

use rustls::pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The element for a client whose leaf is `leaf`; `by` is our own SPIFFE ID,
/// `uri` the client's (when its certificate has one).
pub fn xfcc_element(by: &str, leaf: &CertificateDer<'_>, uri: Option<&str>) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf.as_ref());
    let mut out = String::with_capacity(200);
    let _ = write!(out, "By={by};Hash=");
    for b in digest.as_ref() {
        let _ = write!(out, "{b:02x}");
    }
    let subject = X509Certificate::from_der(leaf.as_ref())
        .map(|(_, c)| rfc2253(&c))
        .unwrap_or_default();
    // RFC 2253 already escaped any quote inside.
    let _ = write!(out, ";Subject=\"{subject}\"");
    if let Some(uri) = uri {
        let _ = write!(out, ";URI={uri}");
    }
    out
}

/// The subject as RFC 2253 writes it (what Envoy prints through
/// BoringSSL's `XN_FLAG_RFC2253`): the last RDN first, `,` between them,
/// `+` within a multi-valued RDN, special characters escaped.
fn rfc2253(cert: &X509Certificate<'_>) -> String {
    let registry = x509_parser::objects::oid_registry();
    let mut rdns: Vec<String> = Vec::new();
    for rdn in cert.subject().iter_rdn() {
        let parts: Vec<String> = rdn
            .iter()
            .map(|attr| {
                let oid = attr.attr_type();
                let name = x509_parser::objects::oid2abbrev(oid, registry)
                    .map(str::to_string)
                    .unwrap_or_else(|_| oid.to_id_string());
                let value = attr.as_str().unwrap_or_default();
                format!("{name}={}", escape(value))
            })
            .collect();
        rdns.push(parts.join("+"));
    }
    rdns.reverse();
    rdns.join(",")
}

/// RFC 2253 §2.4: `,+"\<>;` escaped anywhere, `#` and a space at the start,
/// a space at the end.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Subject is what OpenSSL prints with `-nameopt RFC2253` (the form
    /// Envoy, on BoringSSL, puts in the header), quotes and commas escaped.
    #[test]
    fn element_format_and_subject_as_openssl_prints_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "cluster.local");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "a, \"b\"");
        let cert = p.self_signed(&key).unwrap();
        let e = xfcc_element(
            "spiffe://cluster.local/ns/a/sa/server",
            cert.der(),
            Some("spiffe://cluster.local/ns/b/sa/client"),
        );
        let pem = std::env::temp_dir().join(format!("remora-xfcc-{}.pem", std::process::id()));
        std::fs::write(&pem, cert.pem()).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in"])
            .arg(&pem)
            .output()
            .expect("openssl");
        let _ = std::fs::remove_file(&pem);
        let printed = String::from_utf8(out.stdout).unwrap();
        let subject = printed.trim().strip_prefix("subject=").unwrap().to_string();
        let hash = ring::digest::digest(&ring::digest::SHA256, cert.der());
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            e,
            format!(
                "By=spiffe://cluster.local/ns/a/sa/server;Hash={hex};\
                 Subject=\"{subject}\";URI=spiffe://cluster.local/ns/b/sa/client"
            )
        );
        assert!(subject.contains("CN=a\\, \\\"b\\\""), "{subject}");
    }
}
