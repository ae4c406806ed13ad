//! rustls configurations with Istio's defaults: the inbound server config
//! (client certificate required), the outbound mTLS client configs, and the
//! DestinationRule `simple`/`mutual` client configs.
//!
//! Versions: TLS 1.2 and 1.3 only (Istio's `minProtocolVersion` TLSV1_2).
//! Cipher suites: Istio's default mesh list for TLS 1.2 is
//! ECDHE-ECDSA-AES256-GCM-SHA384, ECDHE-RSA-AES256-GCM-SHA384,
//! ECDHE-ECDSA-AES128-GCM-SHA256, ECDHE-RSA-AES128-GCM-SHA256,
//! AES256-GCM-SHA384 and AES128-GCM-SHA256. rustls implements no suite
//! without ECDHE (static RSA key exchange has no forward secrecy), so the
//! last two cannot be offered; Istio's peers negotiate an ECDHE suite first
//! anyway. TLS 1.3 suites are not configurable in Envoy (BoringSSL enables
//! all three), so all three are here too.
//!
//! Resumption does not survive a rotation: each generation of contexts has
//! its own ticket key and server session cache and its own outbound configs
//! (rustls resumes only with the config objects that made a session), and a
//! rotation empties the outbound session cache ([`RotatingSessions`]).
//! Emptying alone was not enough: a handshake under way at the rotation
//! could still file its ticket, for the old certificate, in the emptied
//! cache, and every resumption renewed it (tests/tls_interop.rs, rotation
//! under load, failed so in CI once). A resumed session carries
//! the certificates of the full handshake that made it, and rustls copies
//! them into every ticket it issues on a resumed connection, with a fresh
//! lifetime: with resumption across rotations, a client that keeps
//! reconnecting presents its first certificate forever (found by
//! tests/tls_interop.rs: 1536 of 1537 handshakes under load resumed, and
//! the app never saw the rotated client certificate). Envoy builds a new
//! SSL_CTX, with its own session cache and ticket keys, on every SDS update;
//! this matches it, at the price of one full handshake per peer after a
//! rotation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use rustls::client::{
    ClientSessionMemoryCache, ClientSessionStore, Resumption, Tls12ClientSessionValue,
    Tls13ClientSessionValue, WebPkiServerVerifier,
};
use rustls::crypto::ring::{cipher_suite, default_provider, Ticketer};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::sign::SingleCertAndKey;
use rustls::NamedGroup;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::error::{CertError, CertErrorKind};
use super::identity::{
    certified_key, check_validity, details_of, parse_certs, parse_key, read_file, root_store,
    Identity,
};
use super::verify::{LiveClientCert, Names, Roots, SanVerifier};
use super::x509::unix_now;

const VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Sessions remembered per side. A sidecar talks to a bounded set of peers;
/// rustls evicts the oldest beyond this.
const SESSION_CACHE_SIZE: usize = 4096;

/// Distinct outbound configs kept (one per expected-SAN list and ALPN set,
/// which come from the config, not from peers). Beyond it the memo is
/// cleared rather than grown: a config churning SAN lists only loses
/// resumption, never correctness.
const MAX_CLIENT_CONFIGS: usize = 1024;

/// The ring provider restricted to Istio's suites (see the module doc).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = default_provider();
            p.cipher_suites = vec![
                cipher_suite::TLS13_AES_128_GCM_SHA256,
                cipher_suite::TLS13_AES_256_GCM_SHA384,
                cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ];
            Arc::new(p)
        })
        .clone()
}

/// One generation of TLS state: the identity and the configs built from it
/// (with this generation's own ticket key and server session cache).
/// Immutable once built; published whole through [`TlsStore`](super::TlsStore)
/// and loaded by the cores once per handshake.
pub struct Contexts {
    identity: Arc<Identity>,
    server: Arc<ServerConfig>,
    /// The same, negotiating an HTTP codec by ALPN (the HTTP chain).
    server_http: Arc<ServerConfig>,
    /// Counts rotations: 0 for the first generation. The cores key what
    /// they keep of [`client_config`](Contexts::client_config)'s answers by
    /// it.
    generation: u64,
    /// This generation's outbound configs (see [`client_config`](Contexts::client_config)).
    clients: Mutex<ClientMemo>,
    shared: Arc<Shared>,
}

/// What outlives a rotation.
struct Shared {
    /// The newest identity: what outbound configs present and trust.
    live: Arc<ArcSwap<Identity>>,
    /// Outbound settings every ISTIO_MUTUAL config starts from (versions,
    /// the live client certificate, the session cache); each outbound config
    /// is a clone of it, so all share one cache of outbound sessions.
    client_base: ClientConfig,
    /// That cache, emptied by a rotation (see the module doc).
    client_sessions: Arc<RotatingSessions>,
}

/// Outbound configs by (expected SANs, ALPN). rustls resumes only with the
/// very verifier and resolver that made the session, so handing the same
/// config back for the same inputs is what makes client resumption work.
#[derive(Default)]
struct ClientMemo {
    configs: HashMap<ClientKey, Arc<ClientConfig>>,
}

/// Expected SANs, ALPN protocols.
type ClientKey = (Vec<String>, Vec<Vec<u8>>);

fn internal(identity: &Identity, what: &str, e: impl std::fmt::Display) -> CertError {
    CertError::new(
        identity.root_path(),
        CertErrorKind::Other(format!("{what}: {e}")),
    )
}

impl Contexts {
    /// The first generation, with fresh ticket keys and caches.
    pub fn new(identity: Identity) -> Result<Contexts, CertError> {
        let identity = Arc::new(identity);
        let live = Arc::new(ArcSwap::new(identity.clone()));
        let client_sessions = Arc::new(RotatingSessions::default());
        let mut client_base = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| internal(&identity, "TLS versions", e))?
            .dangerous()
            .with_custom_certificate_verifier(spiffe_verifier(&live, Vec::new()))
            .with_client_cert_resolver(Arc::new(LiveClientCert(live.clone())));
        client_base.resumption = Resumption::store(client_sessions.clone());
        let shared = Arc::new(Shared {
            client_base,
            client_sessions,
            live,
        });
        Self::build(identity, shared, 0)
    }

    /// The next generation for a rotated identity: new ticket keys and
    /// server session cache, and the outbound session cache emptied, so
    /// that every later handshake is a full one with the new certificate
    /// (see the module doc). Outbound configs from any generation present
    /// this identity and trust its roots from now on, so call it on the
    /// current generation, with an identity about to be published.
    pub fn rotate(&self, identity: Identity) -> Result<Contexts, CertError> {
        let identity = Arc::new(identity);
        let next = Self::build(identity.clone(), self.shared.clone(), self.generation + 1)?;
        self.shared.live.store(identity);
        // After the new certificate is live: a handshake that starts now
        // either presents it or finds no session from before. (One already
        // under way may still file its ticket in the new cache.)
        self.shared.client_sessions.clear();
        Ok(next)
    }

    fn build(
        identity: Arc<Identity>,
        shared: Arc<Shared>,
        generation: u64,
    ) -> Result<Contexts, CertError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(identity.roots().clone(), provider())
                .build()
                .map_err(|e| internal(&identity, "cannot verify clients with these roots", e))?;
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| internal(&identity, "TLS versions", e))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(SingleCertAndKey::from(
                identity.certified_key().clone(),
            )));
        // Per generation: tickets and session IDs from before a rotation
        // name the old certificates, and must not resume.
        server.ticketer = Ticketer::new()
            .map_err(|e| internal(&identity, "cannot make session ticket keys", e))?;
        server.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        // No ALPN selection: rustls refuses a handshake whose client ALPN
        // list shares nothing with the server's, and Istio peers offer
        // values such as `istio-peer-exchange` that the data path reads from
        // the ClientHello itself (tls_inspector) rather than negotiates.
        server.alpn_protocols = Vec::new();
        // The HTTP chain's config selects the codec: `h2` when the client
        // offers it (Istio's inbound HTTP chain advertises h2, http/1.1),
        // else HTTP/1; the Istio names are accepted too, so a client
        // offering only those is not refused for want of a common protocol.
        let mut server_http = server.clone();
        server_http.alpn_protocols = [
            &b"h2"[..],
            b"http/1.1",
            b"istio-h2",
            b"istio-http/1.1",
            b"istio-http/1.0",
        ]
        .iter()
        .map(|p| p.to_vec())
        .collect();
        Ok(Contexts {
            identity,
            server: Arc::new(server),
            server_http: Arc::new(server_http),
            generation,
            clients: Mutex::new(ClientMemo::default()),
            shared,
        })
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// How many rotations made this generation (0: the first).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The inbound mTLS config: presents the workload certificate, requires
    /// a client certificate that chains to the roots.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.clone()
    }

    /// The inbound config of the HTTP chain: as `server_config`, and
    /// selects `h2` or `http/1.1` by ALPN.
    pub fn server_config_http(&self) -> Arc<ServerConfig> {
        self.server_http.clone()
    }

    /// The outbound mTLS config (Istio's ISTIO_MUTUAL): presents the
    /// workload certificate, verifies the server chain against the roots and
    /// then that its URI SAN is one of `expected_sans` (exact; empty: any
    /// SPIFFE ID of the trust domain). The same inputs return the same
    /// `Arc` within a generation (needed for resumption); a rotation's
    /// generation makes new ones, which resume nothing from before it.
    /// The call allocates its key and takes a lock shared by all cores:
    /// keep the result per cluster (per core) with this generation's
    /// number, rather than call it per connection.
    pub fn client_config(&self, expected_sans: &[String], alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
        let key = (expected_sans.to_vec(), alpn);
        let mut memo = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = memo.configs.get(&key) {
            return c.clone();
        }
        if memo.configs.len() >= MAX_CLIENT_CONFIGS {
            memo.configs.clear();
        }
        let mut config = self.shared.client_base.clone();
        config
            .dangerous()
            .set_certificate_verifier(spiffe_verifier(&self.shared.live, key.0.clone()));
        // A resolver of this generation's own: rustls resumes a session
        // only with the very resolver (and verifier) that made it, so a
        // ticket from before a rotation (one that reached the emptied
        // cache from a handshake still under way when it was emptied, and
        // would be renewed on every resumption) is never resumed by this
        // generation's configs.
        config.client_auth_cert_resolver = Arc::new(LiveClientCert(self.shared.live.clone()));
        config.alpn_protocols = key.1.clone();
        let config = Arc::new(config);
        memo.configs.insert(key, config.clone());
        config
    }
}

/// The outbound session cache shared by every ISTIO_MUTUAL config, which a
/// rotation empties. rustls resumes only with the very config that made a
/// session, and the per-core originations keep their configs across
/// rotations, so the cache is swapped inside the store rather than in new
/// configs.
#[derive(Debug)]
struct RotatingSessions(ArcSwap<ClientSessionMemoryCache>);

impl Default for RotatingSessions {
    fn default() -> Self {
        RotatingSessions(ArcSwap::from_pointee(ClientSessionMemoryCache::new(
            SESSION_CACHE_SIZE,
        )))
    }
}

impl RotatingSessions {
    fn clear(&self) {
        self.0
            .store(Arc::new(ClientSessionMemoryCache::new(SESSION_CACHE_SIZE)));
    }
}

impl ClientSessionStore for RotatingSessions {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.0.load().set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.0.load().kx_hint(server_name)
    }
    fn set_tls12_session(&self, server_name: ServerName<'static>, value: Tls12ClientSessionValue) {
        self.0.load().set_tls12_session(server_name, value)
    }
    fn tls12_session(&self, server_name: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        self.0.load().tls12_session(server_name)
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.load().remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: Tls13ClientSessionValue,
    ) {
        self.0.load().insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<Tls13ClientSessionValue> {
        self.0.load().take_tls13_ticket(server_name)
    }
}

fn spiffe_verifier(live: &Arc<ArcSwap<Identity>>, expected: Vec<String>) -> Arc<SanVerifier> {
    Arc::new(SanVerifier::new(
        Roots::Live(live.clone()),
        expected,
        Names::Spiffe,
        provider(),
    ))
}

/// Where the system's CA bundle lives (Debian/Ubuntu/Alpine, RHEL/Fedora,
/// others); used by `simple`/`mutual` without `ca_certificates`, as Istio
/// verifies against the OS roots then.
const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// A cluster's `tls = { mode = "simple" | "mutual", ... }` (Istio's
/// DestinationRule SIMPLE and MUTUAL): files given by the user, no SPIFFE.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<ClientConfig>,
    mutual: bool,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mutual", &self.mutual)
            .finish()
    }
}

impl ClientTls {
    /// `ca`: roots to verify the server against (`None`: the system's
    /// bundle). `cert` and `key`: the client certificate chain and key for
    /// `mutual` (both or neither). `sans`: if not empty, the server
    /// certificate must carry one of them (DNS, URI or IP SAN, exact) and
    /// the SNI is not checked, as Envoy does with a SAN matcher; if empty,
    /// the server certificate must be valid for the SNI (DNS name).
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
        sans: &[String],
    ) -> Result<ClientTls, CertError> {
        let roots = Arc::new(match ca {
            Some(path) => {
                let ders = parse_certs(path, &read_file(path)?)?;
                details_of(path, &ders)?;
                root_store(path, &ders)?
            }
            None => system_roots()?,
        });
        let ca_name = ca
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(SYSTEM_CA_BUNDLES[0]));
        let builder = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .map_err(|e| CertError::new(&ca_name, CertErrorKind::Other(e.to_string())))?;
        let builder = if sans.is_empty() {
            let v = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| CertError::new(&ca_name, CertErrorKind::Other(e.to_string())))?;
            builder.with_webpki_verifier(v)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SanVerifier::new(
                    Roots::Fixed(roots),
                    sans.to_vec(),
                    Names::Any,
                    provider(),
                )))
        };
        let (config, mutual) = match (cert, key) {
            (None, None) => (builder.with_no_client_auth(), false),
            (Some(cert), Some(key)) => {
                let chain = parse_certs(cert, &read_file(cert)?)?;
                let leaf = details_of(cert, &chain[..1])?;
                check_validity(cert, &leaf[0], unix_now())?;
                let k = parse_key(key, &read_file(key)?)?;
                let ck = certified_key(chain, k, key, cert)?;
                (builder.with_client_cert_resolver(Arc::new(SingleCertAndKey::from(ck))), true)
            }
            (Some(given), None) | (None, Some(given)) => {
                return Err(CertError::new(
                    given,
                    CertErrorKind::Other(
                        "client_certificate and private_key go together (mode mutual); give both or neither".into(),
                    ),
                ))
            }
        };
        Ok(ClientTls {
            config: Arc::new(config),
            mutual,
        })
    }

    /// Whether a client certificate is presented (`mutual`).
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// The config without ALPN.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// The config offering `alpn`. It shares verifier, certificate and
    /// session cache with [`config`](Self::config), so sessions resume
    /// across both; callers should keep the result rather than call this
    /// per connection.
    pub fn with_alpn(&self, alpn: Vec<Vec<u8>>) -> Arc<ClientConfig> {
        let mut c = (*self.config).clone();
        c.alpn_protocols = alpn;
        Arc::new(c)
    }
}

/// The first system CA bundle found; certificates in it that webpki cannot
/// use as anchors are skipped (a distribution bundle has a few).
fn system_roots() -> Result<RootCertStore, CertError> {
    let Some(path) = SYSTEM_CA_BUNDLES.iter().map(Path::new).find(|p| p.exists()) else {
        return Err(CertError::new(
            SYSTEM_CA_BUNDLES[0],
            CertErrorKind::Other("no system CA bundle found; give ca_certificates".into()),
        ));
    };
    let ders = parse_certs(path, &read_file(path)?)?;
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(ders);
    if store.is_empty() {
        return Err(CertError::new(
            path,
            CertErrorKind::Other("no usable root certificate in the system bundle".into()),
        ));
    }
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::super::identity::IdentityFiles;
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose, SanType,
    };
    use rustls::{ClientConnection, ServerConnection};

    /// A CA, and workload identities of the trust domain `cluster.local`
    /// signed by it.
    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new() -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.distinguished_name.push(DnType::CommonName, "root");
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(30);
            Ca {
                cert: p.self_signed(&key).unwrap(),
                key,
            }
        }

        /// A fresh leaf for service account `sa`: (its identity, its leaf DER).
        fn workload(&self, sa: &str) -> (Identity, Vec<u8>) {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            let uri = format!("spiffe://cluster.local/ns/default/sa/{sa}");
            p.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().unwrap())];
            p.is_ca = IsCa::ExplicitNoCa;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let now = time::OffsetDateTime::now_utc();
            p.not_before = now - time::Duration::hours(1);
            p.not_after = now + time::Duration::days(1);
            let leaf = p.signed_by(&key, &self.cert, &self.key).unwrap();
            let files = IdentityFiles {
                dir: PathBuf::from("/test"),
                chain: leaf.pem().into_bytes(),
                key: key.serialize_pem().into_bytes(),
                roots: self.cert.pem().into_bytes(),
            };
            let id = Identity::from_files(&files, "cluster.local").expect("identity");
            (id, leaf.der().to_vec())
        }
    }

    /// Runs a handshake between the two in memory, and the client's reads
    /// after it until nothing more comes (the server's session tickets).
    fn handshake(client: &mut ClientConnection, server: &mut ServerConnection) {
        for _ in 0..20 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            if !buf.is_empty() {
                server.read_tls(&mut &buf[..]).unwrap();
                server.process_new_packets().unwrap();
            }
            let mut back = Vec::new();
            server.write_tls(&mut back).unwrap();
            if !back.is_empty() {
                client.read_tls(&mut &back[..]).unwrap();
                client.process_new_packets().unwrap();
            }
            if buf.is_empty() && back.is_empty() && !client.is_handshaking() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }

    fn name() -> ServerName<'static> {
        ServerName::try_from("outbound").unwrap()
    }

    /// A handshake under way when the client's certificate rotates gets its
    /// session ticket after the rotation emptied the session cache, so the
    /// ticket lands in the emptied cache. Resumed, it would present the
    /// old certificate again, and every resumption would renew it. The next
    /// generation's config must not resume it: the server sees the new
    /// certificate.
    #[test]
    fn a_ticket_from_before_a_rotation_is_not_resumed_after_it() {
        let ca = Ca::new();
        let (server_id, _) = ca.workload("server");
        let server = Contexts::new(server_id).unwrap();
        let (old_id, old_leaf) = ca.workload("client");
        let gen0 = Contexts::new(old_id).unwrap();
        let config0 = gen0.client_config(&[], Vec::new());

        // A first handshake makes a ticket: resumption works within a
        // generation.
        let mut c = ClientConnection::new(config0.clone(), name()).unwrap();
        let mut s = ServerConnection::new(server.server_config()).unwrap();
        handshake(&mut c, &mut s);
        let mut c = ClientConnection::new(config0.clone(), name()).unwrap();
        let mut s = ServerConnection::new(server.server_config()).unwrap();
        handshake(&mut c, &mut s);
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));

        // A handshake under way (its ClientHello sent and answered) when
        // the rotation comes; it finishes, and files its ticket, after.
        let mut c = ClientConnection::new(config0, name()).unwrap();
        let mut s = ServerConnection::new(server.server_config()).unwrap();
        let mut hello = Vec::new();
        c.write_tls(&mut hello).unwrap();
        s.read_tls(&mut &hello[..]).unwrap();
        s.process_new_packets().unwrap();
        let (new_id, new_leaf) = ca.workload("client");
        let gen1 = gen0.rotate(new_id).unwrap();
        handshake(&mut c, &mut s);
        assert_eq!(
            s.peer_certificates().unwrap()[0].as_ref(),
            &old_leaf[..],
            "the handshake under way presented the old certificate"
        );

        let config1 = gen1.client_config(&[], Vec::new());
        let mut c = ClientConnection::new(config1, name()).unwrap();
        let mut s = ServerConnection::new(server.server_config()).unwrap();
        handshake(&mut c, &mut s);
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Full));
        assert_eq!(
            s.peer_certificates().unwrap()[0].as_ref(),
            &new_leaf[..],
            "after the rotation the server saw the old certificate"
        );
    }

    #[test]
    fn suites_are_tls13_plus_istios_ecdhe_list() {
        let names: Vec<String> = provider()
            .cipher_suites
            .iter()
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            names,
            [
                "TLS13_AES_128_GCM_SHA256",
                "TLS13_AES_256_GCM_SHA384",
                "TLS13_CHACHA20_POLY1305_SHA256",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            ]
        );
    }
}
