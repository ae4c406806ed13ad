//! TLS origination toward upstreams: which connections are secured, with
//! which rustls config, server name and ALPN (Istio's DestinationRule TLS
//! modes and auto-mTLS), and the handshake itself.
//!
//! An [`Origination`] is built per core and cached per cluster (or per mesh
//! destination), because building one takes a lock shared by all cores and
//! rustls resumes a session only with the very config that made it. Its
//! `profile` goes into the pool key: connections made under different TLS
//! settings are never handed to each other.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::net::tcp::Tcp;
use rustls::pki_types::ServerName;

use crate::config::{istio_outbound_sni, ClusterTls, ClusterTlsMode, MeshDestination};
use crate::net::stream::{HandshakeError, Stream, TlsInfo};
use crate::tls::{ClientTls, TlsHandle};

/// ALPN for mesh mTLS carrying HTTP/1.1: what Istio's outbound sidecars
/// send (`istio-http/1.1`, `istio`; checked against Envoy configured as
/// Istio does in tests/tls_envoy.rs), which selects the inbound's HTTP chain.
pub const ALPN_MESH_HTTP1: &[&[u8]] = &[b"istio-http/1.1", b"istio"];
/// ALPN for mesh mTLS carrying TCP. Istio's sidecars also offer
/// `istio-peer-exchange`, which makes an Istio inbound expect its metadata
/// exchange preamble in the stream; Remora does not speak it, so it offers
/// only `istio`, which the same TCP chain accepts.
pub const ALPN_MESH_TCP: &[&[u8]] = &[b"istio"];
/// ALPN for mesh mTLS carrying HTTP/2: what Istio's outbound sidecars send
/// for an HTTP/2 upstream (its `istio_alpn` filter's override); the
/// inbound's HTTP chain matches `istio-h2` and negotiates `h2`.
pub const ALPN_MESH_H2: &[&[u8]] = &[b"istio-h2", b"istio", b"h2"];

/// What an upstream connection carries: picks the ALPN offered (Istio's
/// mesh values, or the plain protocol names toward a TLS server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppProtocol {
    Tcp,
    Http1,
    Http2,
}

impl AppProtocol {
    fn index(self) -> usize {
        self as usize
    }

    fn name(self) -> &'static str {
        match self {
            AppProtocol::Tcp => "tcp",
            AppProtocol::Http1 => "http",
            AppProtocol::Http2 => "h2",
        }
    }
}

/// How to secure one upstream connection.
#[derive(Clone)]
pub struct Origination {
    pub config: Arc<rustls::ClientConfig>,
    /// The SNI to send (None: the address is named, which sends no SNI).
    sni: Option<String>,
    /// Distinguishes pools (see the module doc); never 0 (0 is plaintext).
    pub profile: u64,
}

impl std::fmt::Debug for Origination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origination")
            .field("sni", &self.sni)
            .field("profile", &self.profile)
            .finish()
    }
}

/// Why an upstream TLS connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum OriginateError {
    /// ISTIO_MUTUAL (or a mesh destination) without a loaded workload certificate.
    #[error("no workload certificate is loaded ([tls] cert_dir)")]
    NoIdentity,
    #[error("{0}")]
    Files(String),
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
}

impl OriginateError {
    /// The statistic's name for this failure (Envoy's `ssl.*` reasons).
    pub fn reason(&self) -> &'static str {
        match self {
            OriginateError::NoIdentity | OriginateError::Files(_) => "no_config",
            OriginateError::Handshake(HandshakeError::Tls(e)) => crate::tls::classify(e).as_str(),
            OriginateError::Handshake(HandshakeError::Timeout(_)) => "handshake_timeout",
            OriginateError::Handshake(HandshakeError::Io(_)) => "connection_error",
        }
    }
}

/// By cluster name: the settings an origination was built from, the
/// generation of workload contexts it was built with (ISTIO_MUTUAL), and it.
type ClusterMap = HashMap<String, (ClusterTls, Option<u64>, Result<Rc<Origination>, String>)>;

/// By a mesh destination's expected identities (and protocol): the
/// generation of workload contexts an origination was built with, and it.
type MeshMap = HashMap<Vec<String>, (u64, Rc<Origination>)>;

/// Per-core cache of originations.
#[derive(Default)]
pub struct Originations {
    /// By cluster name, with the settings it was built from (a reload that
    /// changes them builds a new one).
    /// By cluster name, one map per [`AppProtocol`] (the ALPN differs).
    clusters: [RefCell<ClusterMap>; 3],
    /// By the mesh destination's expected identities, with the generation
    /// of workload contexts it was built with.
    mesh: RefCell<MeshMap>,
}

fn profile_of(parts: &[&[u8]]) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0x7265_6d6f_7261);
    for p in parts {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.digest().max(1)
}

impl Originations {
    /// How to secure connections of cluster `name` with settings `tls`
    /// (the protocol carried picks the ALPN).
    pub fn for_cluster(
        &self,
        name: &str,
        tls: &ClusterTls,
        identity: &TlsHandle,
        protocol: AppProtocol,
    ) -> Result<Rc<Origination>, OriginateError> {
        let map = &self.clusters[protocol.index()];
        // An ISTIO_MUTUAL origination is rebuilt after a rotation: the old
        // generation's config would keep resuming sessions made with the
        // old certificate (tls::config's module doc).
        let generation = match tls.mode {
            ClusterTlsMode::IstioMutual => identity.generation(),
            ClusterTlsMode::Simple | ClusterTlsMode::Mutual => None,
        };
        if let Some((cfg, built_in, built)) = map.borrow().get(name) {
            if cfg == tls && *built_in == generation {
                return built.clone().map_err(OriginateError::Files);
            }
        }
        let built = build_cluster(tls, identity, protocol);
        if let Err(OriginateError::NoIdentity) = built {
            // Not cached: the certificate may be loaded later.
            return built;
        }
        let cached = built.map_err(|e| e.to_string());
        map.borrow_mut()
            .insert(name.to_string(), (tls.clone(), generation, cached.clone()));
        cached.map_err(OriginateError::Files)
    }

    /// How to secure a passthrough connection to a mesh destination.
    pub fn for_mesh(
        &self,
        dest: &MeshDestination,
        identity: &TlsHandle,
        protocol: AppProtocol,
    ) -> Result<Rc<Origination>, OriginateError> {
        let mut key = dest.subject_alt_names.clone();
        key.push(protocol.name().into());
        let generation = identity.generation().ok_or(OriginateError::NoIdentity)?;
        if let Some((built_in, o)) = self.mesh.borrow().get(&key) {
            if *built_in == generation {
                return Ok(o.clone());
            }
        }
        let contexts = identity.load().ok_or(OriginateError::NoIdentity)?;
        let alpn = mesh_alpn(protocol);
        let config = contexts.client_config(&dest.subject_alt_names, alpn.clone());
        let mut parts: Vec<&[u8]> = vec![b"mesh"];
        parts.extend(dest.subject_alt_names.iter().map(|s| s.as_bytes()));
        parts.extend(alpn.iter().map(Vec::as_slice));
        let o = Rc::new(Origination {
            config,
            sni: None,
            profile: profile_of(&parts),
        });
        self.mesh
            .borrow_mut()
            .insert(key, (contexts.generation(), o.clone()));
        Ok(o)
    }
}

fn mesh_alpn(protocol: AppProtocol) -> Vec<Vec<u8>> {
    let list = match protocol {
        AppProtocol::Tcp => ALPN_MESH_TCP,
        AppProtocol::Http1 => ALPN_MESH_HTTP1,
        AppProtocol::Http2 => ALPN_MESH_H2,
    };
    list.iter().map(|p| p.to_vec()).collect()
}

fn build_cluster(
    tls: &ClusterTls,
    identity: &TlsHandle,
    protocol: AppProtocol,
) -> Result<Rc<Origination>, OriginateError> {
    let config = match tls.mode {
        ClusterTlsMode::IstioMutual => {
            let contexts = identity.load().ok_or(OriginateError::NoIdentity)?;
            contexts.client_config(&tls.subject_alt_names, mesh_alpn(protocol))
        }
        ClusterTlsMode::Simple | ClusterTlsMode::Mutual => {
            let ct = ClientTls::from_files(
                tls.ca_certificates.as_deref(),
                tls.client_certificate.as_deref(),
                tls.private_key.as_deref(),
                &tls.subject_alt_names,
            )
            .map_err(|e| OriginateError::Files(e.to_string()))?;
            // A plain TLS server: offer the protocol spoken to it.
            ct.with_alpn(match protocol {
                AppProtocol::Tcp => Vec::new(),
                AppProtocol::Http1 => vec![b"http/1.1".to_vec()],
                AppProtocol::Http2 => vec![b"h2".to_vec()],
            })
        }
    };
    let config = if tls.session_resumption {
        config
    } else {
        // Every handshake full (Envoy's `max_session_keys: 0`): no session
        // is stored, so none is offered.
        let mut c = (*config).clone();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    };
    let mode = format!("{:?}", tls.mode);
    let mut parts: Vec<&[u8]> = vec![mode.as_bytes(), protocol.name().as_bytes()];
    if !tls.session_resumption {
        parts.push(b"no-resumption");
    }
    parts.extend(tls.subject_alt_names.iter().map(|s| s.as_bytes()));
    if let Some(s) = &tls.sni {
        parts.push(s.as_bytes());
    }
    Ok(Rc::new(Origination {
        config,
        sni: tls.sni.clone(),
        profile: profile_of(&parts),
    }))
}

/// The name a handshake with `addr` sends: the configured SNI; else for
/// mesh mTLS Istio's outbound name for `host` (the cluster; None: a
/// passthrough mesh destination, named by its address); else the address (no
/// SNI is sent for an IP address, and the certificate is checked by SAN).
/// Built per new connection only, never per request.
fn server_name(
    o: &Origination,
    mesh: bool,
    host: Option<&str>,
    addr: SocketAddr,
) -> ServerName<'static> {
    let name = match (&o.sni, mesh, host) {
        (Some(s), ..) => Some(s.clone()),
        (None, true, Some(h)) => Some(istio_outbound_sni(h, addr.port(), None)),
        (None, true, None) => Some(istio_outbound_sni(
            &addr.ip().to_string(),
            addr.port(),
            None,
        )),
        (None, false, _) => None,
    };
    name.and_then(|n| ServerName::try_from(n).ok())
        .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()))
}

/// Secures a connected socket. `mesh`: the peer is a mesh sidecar (Istio's
/// SNI then); `host` names the destination for it (None: its address).
pub async fn originate(
    tcp: Tcp,
    o: &Origination,
    mesh: bool,
    host: Option<&str>,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(Stream, TlsInfo), OriginateError> {
    let name = server_name(o, mesh, host, addr);
    let s = Stream::connect_tls(tcp, o.config.clone(), name, timeout)
        .await
        .map_err(|(e, _)| e)?;
    let info = s.tls().map(|t| t.info()).unwrap_or_default();
    Ok((s, info))
}

/// Whether `tls` is mesh mTLS (ISTIO_MUTUAL).
pub fn is_mesh(tls: &ClusterTls) -> bool {
    tls.mode == ClusterTlsMode::IstioMutual
}
