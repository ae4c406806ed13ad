//! The workload identity from Istio's file-mounted certificates: the three
//! files of `cert_dir` are read, and every check that can fail happens here,
//! before anything is published, so that a bad rotation never reaches a
//! handshake.
//!
//! ```text
//! cert_dir/cert-chain.pem  leaf, then intermediates ─┐
//! cert_dir/key.pem         the leaf's private key ────┼─► parse ─► key matches leaf ─► leaf valid now
//! cert_dir/root-cert.pem   one or more roots ────────┘   ─► SPIFFE URI SAN in trust domain
//!                                                         ─► chain verifies to a root ─► Identity
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, RootCertStore};

use super::config::provider;
use super::error::{describe_rustls, CertError, CertErrorKind};
use super::spiffe::SpiffeId;
use super::x509::{rfc3339, unix_now, CertDetails};

/// File names of Istio's file-mounted certificate layout
/// (`/etc/certs` in the sidecar, `OUTPUT_CERTS` of istio-agent).
pub const CERT_CHAIN_FILE: &str = "cert-chain.pem";
pub const KEY_FILE: &str = "key.pem";
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// Certificate files are a few kilobytes; a bigger file is a mistake (a
/// wrong path, a log), refused before it is parsed.
const MAX_FILE_BYTES: usize = 1 << 20;

/// A validated workload identity: the certificate chain with its key, the
/// roots that peers must chain to, and the fields `/certs` shows.
pub struct Identity {
    spiffe: SpiffeId,
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
    chain_path: PathBuf,
    root_path: PathBuf,
    /// Leaf first, then intermediates, as in the file. Never empty
    /// (`parse_certs` refuses a file without a certificate), which the
    /// leaf accessors rely on.
    chain_details: Vec<CertDetails>,
    root_details: Vec<CertDetails>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spiffe", &self.spiffe.to_string())
            .field("serial", &self.serial())
            .field("not_after", &rfc3339(self.not_after()))
            .finish()
    }
}

/// The raw bytes of the three files, read together (the watcher hashes
/// them to skip events that changed nothing).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct IdentityFiles {
    pub dir: PathBuf,
    pub chain: Vec<u8>,
    pub key: Vec<u8>,
    pub roots: Vec<u8>,
}

impl IdentityFiles {
    pub fn read(dir: &Path) -> Result<IdentityFiles, CertError> {
        Ok(IdentityFiles {
            dir: dir.to_path_buf(),
            chain: read_file(&dir.join(CERT_CHAIN_FILE))?,
            key: read_file(&dir.join(KEY_FILE))?,
            roots: read_file(&dir.join(ROOT_CERT_FILE))?,
        })
    }
}

/// Loads and validates the identity in `dir` (Istio's layout), for
/// `trust_domain` (the leaf's SPIFFE ID must be in it).
pub fn load_dir(dir: &Path, trust_domain: &str) -> Result<Identity, CertError> {
    Identity::from_files(&IdentityFiles::read(dir)?, trust_domain)
}

impl Identity {
    pub(crate) fn from_files(f: &IdentityFiles, trust_domain: &str) -> Result<Identity, CertError> {
        let chain_path = f.dir.join(CERT_CHAIN_FILE);
        let key_path = f.dir.join(KEY_FILE);
        let root_path = f.dir.join(ROOT_CERT_FILE);

        let chain = parse_certs(&chain_path, &f.chain)?;
        let chain_details = details_of(&chain_path, &chain)?;
        let key = parse_key(&key_path, &f.key)?;
        let key = certified_key(chain.clone(), key, &key_path, &chain_path)?;
        let root_ders = parse_certs(&root_path, &f.roots)?;
        let root_details = details_of(&root_path, &root_ders)?;
        let roots = root_store(&root_path, &root_ders)?;

        let leaf = &chain_details[0];
        check_validity(&chain_path, leaf, unix_now())?;
        let spiffe = spiffe_of(&chain_path, leaf)?;
        if spiffe.trust_domain() != trust_domain {
            return Err(CertError::new(
                &chain_path,
                CertErrorKind::WrongTrustDomain {
                    id: spiffe.to_string(),
                    expected: trust_domain.to_string(),
                },
            ));
        }
        let roots = Arc::new(roots);
        verify_chain(&chain, &roots).map_err(|reason| {
            CertError::new(
                &chain_path,
                CertErrorKind::Untrusted {
                    roots: root_path.clone(),
                    reason,
                },
            )
        })?;
        Ok(Identity {
            spiffe,
            key: Arc::new(key),
            roots,
            chain_path,
            root_path,
            chain_details,
            root_details,
        })
    }

    /// The workload identity (the leaf's SPIFFE URI SAN).
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe
    }

    /// The leaf's serial, in Envoy's lowercase hex.
    pub fn serial(&self) -> &str {
        &self.chain_details[0].serial
    }

    /// The leaf's expiry, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.chain_details[0].not_after
    }

    pub fn not_before(&self) -> i64 {
        self.chain_details[0].not_before
    }

    /// Leaf first, then intermediates.
    pub fn chain_details(&self) -> &[CertDetails] {
        &self.chain_details
    }

    pub fn root_details(&self) -> &[CertDetails] {
        &self.root_details
    }

    pub fn chain_path(&self) -> &Path {
        &self.chain_path
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The chain and key rustls presents.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.key
    }

    /// The roots peers must chain to.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

/// Reads a whole file, refusing one larger than [`MAX_FILE_BYTES`].
pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, CertError> {
    let err = |e| CertError::new(path, CertErrorKind::Unreadable(e));
    let file = std::fs::File::open(path).map_err(err)?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_BYTES as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(err)?;
    if buf.len() > MAX_FILE_BYTES {
        return Err(CertError::new(
            path,
            CertErrorKind::TooLarge {
                limit: MAX_FILE_BYTES,
            },
        ));
    }
    Ok(buf)
}

/// Every `CERTIFICATE` block of a PEM file, in order (other blocks skipped).
pub(crate) fn parse_certs(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertError::new(path, CertErrorKind::BadPem(e.to_string())))?;
    if certs.is_empty() {
        return Err(CertError::new(
            path,
            CertErrorKind::NoPem {
                what: "certificate (-----BEGIN CERTIFICATE-----)",
            },
        ));
    }
    Ok(certs)
}

/// The first private key block of a PEM file (PKCS#8, SEC1 or PKCS#1).
pub(crate) fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        let kind = match e {
            pem::Error::NoItemsFound => CertErrorKind::NoPem {
                what:
                    "private key (-----BEGIN PRIVATE KEY-----, EC PRIVATE KEY or RSA PRIVATE KEY)",
            },
            e => CertErrorKind::BadPem(e.to_string()),
        };
        CertError::new(path, kind)
    })
}

/// Loads the key with the provider and checks it belongs to the leaf (by
/// comparing the key's public half with the leaf's SubjectPublicKeyInfo).
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
    chain_path: &Path,
) -> Result<CertifiedKey, CertError> {
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::new(key_path, CertErrorKind::BadKey(e.to_string())))?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(ck),
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(CertError::new(
            key_path,
            CertErrorKind::KeyMismatch {
                chain: chain_path.to_path_buf(),
            },
        )),
        // ring derives the public half of every key type it loads; a key
        // whose match cannot be checked is refused rather than trusted.
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => Err(CertError::new(
            key_path,
            CertErrorKind::BadKey(
                "its public key cannot be derived to check it against the certificate".into(),
            ),
        )),
        Err(e) => Err(CertError::new(
            chain_path,
            CertErrorKind::BadCertificate {
                index: 1,
                reason: e.to_string(),
            },
        )),
    }
}

pub(crate) fn details_of(
    path: &Path,
    certs: &[CertificateDer<'_>],
) -> Result<Vec<CertDetails>, CertError> {
    certs
        .iter()
        .enumerate()
        .map(|(i, c)| {
            CertDetails::parse(c).map_err(|reason| {
                CertError::new(
                    path,
                    CertErrorKind::BadCertificate {
                        index: i + 1,
                        reason,
                    },
                )
            })
        })
        .collect()
}

pub(crate) fn root_store(
    path: &Path,
    roots: &[CertificateDer<'static>],
) -> Result<RootCertStore, CertError> {
    let mut store = RootCertStore::empty();
    for (i, r) in roots.iter().enumerate() {
        store.add(r.clone()).map_err(|e| {
            CertError::new(
                path,
                CertErrorKind::BadCertificate {
                    index: i + 1,
                    reason: format!("not usable as a trust anchor: {}", describe_rustls(&e)),
                },
            )
        })?;
    }
    Ok(store)
}

/// The leaf must be valid now: an expired certificate makes every peer
/// refuse us, so keeping the old one serving is better than publishing it.
pub(crate) fn check_validity(path: &Path, leaf: &CertDetails, now: i64) -> Result<(), CertError> {
    if leaf.not_after < now {
        return Err(CertError::new(
            path,
            CertErrorKind::Expired {
                not_after: rfc3339(leaf.not_after),
            },
        ));
    }
    if leaf.not_before > now {
        return Err(CertError::new(
            path,
            CertErrorKind::NotYetValid {
                not_before: rfc3339(leaf.not_before),
            },
        ));
    }
    Ok(())
}

fn spiffe_of(path: &Path, leaf: &CertDetails) -> Result<SpiffeId, CertError> {
    let Some(uri) = leaf.first_spiffe_uri() else {
        let found: Vec<String> = leaf.uris().map(str::to_string).collect();
        let what = if found.is_empty() {
            "it has no URI SAN".to_string()
        } else {
            format!("its URI SANs are {}", found.join(", "))
        };
        return Err(CertError::new(path, CertErrorKind::NoSpiffeId(what)));
    };
    SpiffeId::parse(uri).map_err(|e| CertError::new(path, CertErrorKind::NoSpiffeId(e.to_string())))
}

/// Verifies the chain to the roots for both uses an Istio workload
/// certificate has: server (inbound) and client (outbound). Checking both
/// here turns a certificate that lacks one extended key usage into a clear
/// load error instead of every handshake in one direction failing.
fn verify_chain(
    chain: &[CertificateDer<'static>],
    roots: &Arc<RootCertStore>,
) -> Result<(), String> {
    let p = provider();
    let now = UnixTime::now();
    let (leaf, intermediates) = chain.split_first().ok_or("the chain is empty")?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| describe_rustls(&e))?;
    verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        p.signature_verification_algorithms.all,
    )
    .map_err(|e| format!("as a server certificate: {}", describe_rustls(&e)))?;
    let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), p.clone())
        .build()
        .map_err(|e| e.to_string())?;
    client
        .verify_client_cert(leaf, intermediates, now)
        .map_err(|e| format!("as a client certificate: {}", describe_rustls(&e)))?;
    Ok(())
}
