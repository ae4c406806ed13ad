//! Why a certificate, key or root file was refused: always the file and a
//! reason a user can act on, so that a rejected rotation is one log line.

use std::fmt;
use std::path::{Path, PathBuf};

/// A rejected certificate file: which file, and why.
#[derive(Debug, thiserror::Error)]
#[error("{}: {kind}", file.display())]
pub struct CertError {
    file: PathBuf,
    kind: CertErrorKind,
}

/// The reasons, worded for the person who mounted the files.
#[derive(Debug, thiserror::Error)]
pub enum CertErrorKind {
    #[error("cannot read the file: {0}")]
    Unreadable(std::io::Error),
    #[error("the file is larger than {limit} bytes; is it the right file?")]
    TooLarge { limit: usize },
    #[error("the file holds no PEM {what}")]
    NoPem { what: &'static str },
    #[error("the PEM is malformed: {0}")]
    BadPem(String),
    #[error("certificate {index} cannot be parsed: {reason}")]
    BadCertificate { index: usize, reason: String },
    #[error("the private key cannot be used ({0}); expected a PKCS#8, SEC1 (EC) or PKCS#1 (RSA) key, ECDSA P-256 or RSA")]
    BadKey(String),
    #[error("the private key does not match the certificate in {}", chain.display())]
    KeyMismatch { chain: PathBuf },
    #[error("the certificate expired at {not_after}; the certificate provider has not rotated it")]
    Expired { not_after: String },
    #[error("the certificate is not valid before {not_before}; is the clock right?")]
    NotYetValid { not_before: String },
    #[error("the certificate has no SPIFFE URI SAN (spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT): {0}")]
    NoSpiffeId(String),
    #[error("the certificate's identity {id} is not in the trust domain `{expected}` ([tls] trust_domain)")]
    WrongTrustDomain { id: String, expected: String },
    #[error("the certificate chain does not verify against {}: {reason}", roots.display())]
    Untrusted { roots: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

impl CertError {
    pub fn new(file: impl Into<PathBuf>, kind: CertErrorKind) -> CertError {
        CertError {
            file: file.into(),
            kind,
        }
    }

    /// The file that was refused.
    pub fn file(&self) -> &Path {
        &self.file
    }

    pub fn kind(&self) -> &CertErrorKind {
        &self.kind
    }
}

/// Short wording for a webpki/rustls certificate error (the `Debug` names
/// such as `UnknownIssuer` mean little to a user).
pub(crate) fn describe_rustls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => "it is not signed by any of the roots (another mesh's CA, or an intermediate missing from the chain?)".into(),
            C::BadSignature => "a signature in the chain is invalid".into(),
            C::Expired | C::ExpiredContext { .. } => "a certificate in the chain has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "a certificate in the chain is not valid yet".into(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "the certificate's extended key usage does not allow TLS server/client use".into()
            }
            C::BadEncoding => "a certificate in the chain is malformed".into(),
            other => format!("{other:?}"),
        },
        other => other.to_string(),
    }
}

/// Formats a list of names for messages: `[a, b]`.
pub(crate) struct List<'a>(pub &'a [String]);

impl fmt::Display for List<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]", self.0.join(", "))
    }
}
