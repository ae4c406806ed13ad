//! After a handshake: the peer's identity, and why a handshake failed, in
//! the reasons Envoy's `ssl.*` statistics count.

use rustls::{AlertDescription, CertificateError, CommonState};

use super::verify::SanMismatch;
use super::x509::first_spiffe_uri;

/// The first SPIFFE URI SAN of the peer's leaf certificate (the peer
/// principal, Envoy's `%DOWNSTREAM_PEER_URI_SAN%`), if it presented one.
pub fn peer_uri_san(conn: &CommonState) -> Option<String> {
    first_spiffe_uri(conn.peer_certificates()?.first()?)
}

/// Why a handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The peer presented no certificate where one is required.
    NoCertificate,
    /// The peer's chain does not lead to our roots (another mesh, a bad
    /// signature, a wrong key usage).
    Untrusted,
    /// The chain is trusted, but the identity is not an expected one.
    SanMismatch,
    /// A certificate of the peer's chain is expired or not yet valid.
    Expired,
    /// The bytes are not TLS or break its rules (plaintext on a TLS port,
    /// a truncated or garbage ClientHello, no common version or suite).
    Protocol,
    /// Anything else, among which the peer refusing *our* certificate
    /// (an alert received): the verifying side counts that one.
    Other,
}

impl HandshakeFailure {
    /// Classifies the error of a failed handshake as seen by the side that
    /// got it. A locally failed certificate check is classified by its
    /// reason; an alert from the peer is `Other`, except `certificate
    /// required` (TLS 1.3's way of saying we sent none), as the reason lives
    /// in the peer's statistics.
    pub fn classify(e: &rustls::Error) -> HandshakeFailure {
        use rustls::Error as E;
        use CertificateError as C;
        match e {
            E::NoCertificatesPresented => HandshakeFailure::NoCertificate,
            E::AlertReceived(AlertDescription::CertificateRequired) => {
                HandshakeFailure::NoCertificate
            }
            E::InvalidCertificate(c) => match c {
                C::Expired
                | C::ExpiredContext { .. }
                | C::NotValidYet
                | C::NotValidYetContext { .. } => HandshakeFailure::Expired,
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    HandshakeFailure::SanMismatch
                }
                C::Other(o) if o.0.downcast_ref::<SanMismatch>().is_some() => {
                    HandshakeFailure::SanMismatch
                }
                _ => HandshakeFailure::Untrusted,
            },
            E::InappropriateMessage { .. }
            | E::InappropriateHandshakeMessage { .. }
            | E::InvalidMessage(_)
            | E::PeerIncompatible(_)
            | E::PeerMisbehaved(_)
            | E::DecryptError
            | E::NoApplicationProtocol
            | E::PeerSentOversizedRecord
            | E::UnsupportedNameType => HandshakeFailure::Protocol,
            _ => HandshakeFailure::Other,
        }
    }

    /// The statistic's name, after Envoy's `ssl.*` counters
    /// (`fail_verify_no_cert`, `fail_verify_error`, `fail_verify_san`);
    /// Envoy counts expiry under `fail_verify_error`, kept apart here.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::NoCertificate => "fail_verify_no_cert",
            HandshakeFailure::Untrusted => "fail_verify_error",
            HandshakeFailure::SanMismatch => "fail_verify_san",
            HandshakeFailure::Expired => "fail_verify_expired",
            HandshakeFailure::Protocol => "protocol",
            HandshakeFailure::Other => "connection_error",
        }
    }

    pub const ALL: [HandshakeFailure; 6] = [
        HandshakeFailure::NoCertificate,
        HandshakeFailure::Untrusted,
        HandshakeFailure::SanMismatch,
        HandshakeFailure::Expired,
        HandshakeFailure::Protocol,
        HandshakeFailure::Other,
    ];
}

/// [`HandshakeFailure::classify`] as a free function.
pub fn classify(e: &rustls::Error) -> HandshakeFailure {
    HandshakeFailure::classify(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn classifies_rustls_errors() {
        use HandshakeFailure as H;
        let san = rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
            Arc::new(SanMismatch {
                expected: vec!["spiffe://td/ns/a/sa/b".into()],
                presented: vec![],
            }),
        )));
        let table = [
            (rustls::Error::NoCertificatesPresented, H::NoCertificate),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                H::NoCertificate,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                H::Untrusted,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::BadSignature),
                H::Untrusted,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::Expired),
                H::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidYet),
                H::Expired,
            ),
            (
                rustls::Error::InvalidCertificate(CertificateError::NotValidForName),
                H::SanMismatch,
            ),
            (san, H::SanMismatch),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                H::Protocol,
            ),
            (
                rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered),
                H::Protocol,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                H::Other,
            ),
            (rustls::Error::General("x".into()), H::Other),
        ];
        for (e, want) in table {
            assert_eq!(classify(&e), want, "{e:?}");
        }
    }

    #[test]
    fn stat_names_are_distinct() {
        let names: std::collections::HashSet<_> =
            HandshakeFailure::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(names.len(), HandshakeFailure::ALL.len());
    }
}
