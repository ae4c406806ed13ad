//! TLS for mTLS between sidecars (issue 11): the workload identity from
//! Istio's certificate files, the rustls configs built from it, the peer's
//! identity after a handshake, and rotation. The data path (plain-or-TLS
//! stream, handshakes, inbound detection) lives in `net/` and
//! `connection.rs` and only calls into this room.
//!
//! ```text
//! cert_dir ─ identity::load_dir ─► Identity ─► Contexts ─┬─ server_config()      inbound 15006: client cert required
//!   (cert-chain.pem, key.pem,      (validated)  (config) ├─ client_config(sans)  outbound ISTIO_MUTUAL: SPIFFE SAN check
//!    root-cert.pem)                                      └─ identity()           /certs (certs_json), logs
//!       │ inotify (store::TlsStore, own thread)
//!       └─ rotate: same ticket keys and session caches ─► TlsHandle (ArcSwapOption) ─► every core, per handshake
//!
//! cluster tls = { mode = "simple" | "mutual" } ─ ClientTls::from_files ─► rustls::ClientConfig
//! after a handshake: peer_uri_san(conn) ─► principal; a failed one: classify(err) ─► HandshakeFailure stat
//! ```
//!
//! Everything that can fail on a file fails in `load_dir`/`from_files`,
//! with the file and the reason; what is published is always usable.

mod certs;
mod config;
mod error;
mod failure;
pub mod hello;
mod identity;
mod spiffe;
mod store;
mod verify;
mod x509;
mod xfcc;

pub use certs::certs_json;
pub use config::{provider, ClientTls, Contexts};
pub use error::{CertError, CertErrorKind};
pub use failure::{classify, peer_uri_san, HandshakeFailure};
pub use identity::{load_dir, Identity, CERT_CHAIN_FILE, KEY_FILE, ROOT_CERT_FILE};
pub use spiffe::{SpiffeError, SpiffeId};
pub use store::{TlsHandle, TlsStatus, TlsStore, DEBOUNCE, SETTLE};
pub use verify::SanMismatch;
pub use x509::{CertDetails, San};
pub use xfcc::xfcc_element;
