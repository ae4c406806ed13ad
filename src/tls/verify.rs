//! Server certificate verification for outbound TLS when the name to check
//! is not the SNI: Istio's SPIFFE identities (no DNS SAN at all) and
//! DestinationRule `subject_alt_names`. The chain is checked with rustls'
//! own webpki helpers and handshake signatures by the crypto provider; only
//! the name check is ours.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};

use super::error::List;
use super::identity::Identity;
use super::x509::{CertDetails, San};

/// The server's certificate names none of the expected identities.
/// Carried inside `CertificateError::Other` so that
/// [`classify`](super::classify) can tell it from an untrusted chain.
#[derive(Debug)]
pub struct SanMismatch {
    pub expected: Vec<String>,
    pub presented: Vec<String>,
}

impl fmt::Display for SanMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.expected.is_empty() {
            write!(
                f,
                "the peer certificate's names {} are not in the trust domain",
                List(&self.presented)
            )
        } else {
            write!(
                f,
                "the peer certificate's names {} are none of the expected {}",
                List(&self.presented),
                List(&self.expected)
            )
        }
    }
}

impl std::error::Error for SanMismatch {}

/// Where the trust anchors come from.
pub(crate) enum Roots {
    /// The workload identity's roots, always the newest published: a config
    /// built before a root rotation trusts the new roots at once.
    Live(Arc<ArcSwap<Identity>>),
    /// A DestinationRule's `ca_certificates`.
    Fixed(Arc<RootCertStore>),
}

/// Which names are compared with the expected list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Names {
    /// URI SANs only; an empty list accepts any SPIFFE ID in the live
    /// identity's trust domain (Istio's ISTIO_MUTUAL without SANs).
    Spiffe,
    /// DNS, URI and IP SANs, exact match (Envoy's `match_subject_alt_names`
    /// with exact matchers); the list is never empty here.
    Any,
}

pub(crate) struct SanVerifier {
    roots: Roots,
    expected: Vec<String>,
    names: Names,
    provider: Arc<CryptoProvider>,
}

impl fmt::Debug for SanVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SanVerifier")
            .field("expected", &self.expected)
            .field("names", &self.names)
            .finish()
    }
}

impl SanVerifier {
    pub fn new(
        roots: Roots,
        expected: Vec<String>,
        names: Names,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        SanVerifier {
            roots,
            expected,
            names,
            provider,
        }
    }

    fn check_names(
        &self,
        end_entity: &CertificateDer<'_>,
        trust_domain: Option<&str>,
    ) -> Result<(), rustls::Error> {
        let details = CertDetails::parse(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let presented: Vec<String> = details
            .sans
            .iter()
            .filter_map(|s| match (s, self.names) {
                (San::Uri(u), _) => Some(u.clone()),
                (San::Dns(d), Names::Any) => Some(d.clone()),
                (San::Ip(ip), Names::Any) => Some(ip.to_string()),
                _ => None,
            })
            .collect();
        let ok = if self.expected.is_empty() {
            let prefix = format!("spiffe://{}/", trust_domain.unwrap_or_default());
            presented.iter().any(|p| p.starts_with(&prefix))
        } else {
            presented.iter().any(|p| self.expected.contains(p))
        };
        if ok {
            return Ok(());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(SanMismatch {
                expected: self.expected.clone(),
                presented,
            })),
        )))
    }
}

impl ServerCertVerifier for SanVerifier {
    /// The server name (SNI) is not checked: Istio's SNI is its outbound
    /// cluster name (`outbound_.PORT_._.HOST`), which no certificate holds;
    /// the identity is in the URI SAN instead.
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        let algs = self.provider.signature_verification_algorithms.all;
        match &self.roots {
            Roots::Live(live) => {
                let id = live.load();
                verify_server_cert_signed_by_trust_anchor(
                    &cert,
                    id.roots(),
                    intermediates,
                    now,
                    algs,
                )?;
                self.check_names(end_entity, Some(id.spiffe_id().trust_domain()))?;
            }
            Roots::Fixed(roots) => {
                verify_server_cert_signed_by_trust_anchor(&cert, roots, intermediates, now, algs)?;
                self.check_names(end_entity, None)?;
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Presents the newest published workload certificate. One resolver is
/// shared by every outbound config: rustls resumes a session only with the
/// same resolver (and verifier) that made it, so a stable one lets the
/// configs the cores keep resume between rotations (a rotation empties the
/// session cache: `tls::config`'s module doc).
#[derive(Debug)]
pub(crate) struct LiveClientCert(pub Arc<ArcSwap<Identity>>);

impl rustls::client::ResolvesClientCert for LiveClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.load().certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
