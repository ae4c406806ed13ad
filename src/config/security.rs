//! Mesh security settings in Istio's vocabulary: the workload certificate
//! (`[tls]`), PeerAuthentication (`[peer_authentication]`), AuthorizationPolicy
//! (`[[authorization_policy]]`), DestinationRule TLS per cluster
//! (`[[cluster]] tls`) and the destinations known to be in the mesh
//! (`[[mesh_destination]]`). Raw TOML types and their validation into typed
//! values; authorization compiles into `policy::authz`.
//!
//! Files named here (the certificate directory, a cluster's CA, certificate
//! and key) must exist and be readable when the config is validated, so a
//! typo fails the load or the reload instead of the first handshake. Their
//! contents are the TLS layer's to parse.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize, Serializer};
use toml::Spanned;

use super::Validator;
use crate::policy::authz::{
    Action, AuthzPolicies, AuthzPolicy, Cidr, Condition, Field, MatchKind, Operation, Rule, Source,
    StrMatch,
};

// ---------------------------------------------------------------- raw types

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert_dir: Option<Spanned<String>>,
    pub trust_domain: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPeerAuthentication {
    pub mode: Option<Spanned<String>>,
    /// `[peer_authentication.port_level.8080]`: Istio's `portLevelMtls`,
    /// keyed by port number.
    pub port_level: Option<BTreeMap<Spanned<String>, RawPortLevel>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPortLevel {
    pub mode: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuthzPolicy {
    pub name: Spanned<String>,
    pub action: Option<Spanned<String>>,
    /// Istio's CUSTOM action names its provider here; accepted only to say
    /// that CUSTOM is not supported.
    pub provider: Option<Spanned<toml::Value>>,
    pub rules: Option<Vec<Spanned<RawRule>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub from: Option<Spanned<Vec<Spanned<RawFrom>>>>,
    pub to: Option<Spanned<Vec<Spanned<RawTo>>>>,
    pub when: Option<Spanned<Vec<Spanned<RawCondition>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFrom {
    pub source: Spanned<RawSource>,
}

type Values = Option<Vec<Spanned<String>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    pub principals: Values,
    pub not_principals: Values,
    pub namespaces: Values,
    pub not_namespaces: Values,
    pub ip_blocks: Values,
    pub not_ip_blocks: Values,
    /// Istio fields that need JWT or the original client address: accepted
    /// by the parser only to be refused with the reason.
    pub request_principals: Option<Spanned<toml::Value>>,
    pub not_request_principals: Option<Spanned<toml::Value>>,
    pub remote_ip_blocks: Option<Spanned<toml::Value>>,
    pub not_remote_ip_blocks: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTo {
    pub operation: Spanned<RawOperation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOperation {
    pub ports: Option<Vec<Spanned<RawPort>>>,
    pub not_ports: Option<Vec<Spanned<RawPort>>>,
    pub methods: Values,
    pub not_methods: Values,
    pub paths: Values,
    pub not_paths: Values,
    pub hosts: Values,
    pub not_hosts: Values,
}

/// Istio writes ports as strings (`ports: ["8080"]`); TOML users write numbers.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPort {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCondition {
    pub key: Spanned<String>,
    pub values: Values,
    pub not_values: Values,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClusterTls {
    pub mode: Spanned<String>,
    pub subject_alt_names: Option<Vec<Spanned<String>>>,
    pub sni: Option<Spanned<String>>,
    pub ca_certificates: Option<Spanned<String>>,
    pub client_certificate: Option<Spanned<String>>,
    pub private_key: Option<Spanned<String>>,
    pub session_resumption: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMeshDestination {
    pub cidrs: Spanned<Vec<Spanned<String>>>,
    pub ports: Option<Vec<Spanned<i64>>>,
    pub subject_alt_names: Spanned<Vec<Spanned<String>>>,
}

// ---------------------------------------------------------- validated types

/// The workload's identity: Istio's file-mounted certificates.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tls {
    /// `cert-chain.pem`, `key.pem`, `root-cert.pem` (Istio's file names).
    /// None: this proxy has no certificate; mTLS is off (PERMISSIVE then
    /// means plaintext only).
    pub cert_dir: Option<PathBuf>,
    /// The SPIFFE trust domain of this mesh (Istio's `trustDomain`).
    pub trust_domain: String,
    /// How long an inbound TLS handshake (and the wait for its ClientHello
    /// on a STRICT port) may take: Envoy's listener
    /// `transport_socket_connect_timeout`, which Istio sets to 15s.
    #[serde(serialize_with = "crate::duration::ser_duration")]
    pub handshake_timeout: std::time::Duration,
}

/// Istio's file names inside `cert_dir`.
pub const CERT_FILES: [&str; 3] = ["cert-chain.pem", "key.pem", "root-cert.pem"];

impl Default for Tls {
    fn default() -> Tls {
        Tls {
            cert_dir: None,
            trust_domain: "cluster.local".into(),
            handshake_timeout: std::time::Duration::from_secs(15),
        }
    }
}

/// Istio's PeerAuthentication mTLS mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Only mutual TLS; plaintext is closed and counted.
    Strict,
    /// Mutual TLS and plaintext (Istio's default).
    Permissive,
    /// Plaintext only; TLS passes through untouched.
    Disable,
}

/// Inbound mTLS modes: the workload's and per-port overrides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeerAuthentication {
    pub mode: MtlsMode,
    /// Sorted by port; Istio's `portLevelMtls` (the port the app listens on,
    /// i.e. the original destination port of an inbound connection).
    #[serde(serialize_with = "ser_port_level")]
    pub port_level: Vec<(u16, MtlsMode)>,
}

impl Default for PeerAuthentication {
    fn default() -> PeerAuthentication {
        PeerAuthentication {
            mode: MtlsMode::Permissive,
            port_level: Vec::new(),
        }
    }
}

impl PeerAuthentication {
    /// The mode for an inbound connection to original destination `port`.
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        match self.port_level.binary_search_by_key(&port, |(p, _)| *p) {
            Ok(i) => self.port_level[i].1,
            Err(_) => self.mode,
        }
    }
}

fn ser_port_level<S: Serializer>(v: &[(u16, MtlsMode)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(v.iter().map(|(p, m)| (p.to_string(), m)))
}

/// Istio's DestinationRule `ClientTLSSettings.mode` (DISABLE is no `tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ClusterTlsMode {
    /// TLS, the server verified against `ca_certificates`.
    Simple,
    /// TLS with a client certificate from files.
    Mutual,
    /// Istio's mTLS with the workload certificate of `[tls] cert_dir`.
    IstioMutual,
}

/// How connections to a cluster's endpoints are secured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterTls {
    pub mode: ClusterTlsMode,
    /// The server certificate must carry one of these SANs (any, when empty).
    /// For ISTIO_MUTUAL they are SPIFFE IDs, stored with `spiffe://`.
    pub subject_alt_names: Vec<String>,
    /// None: for ISTIO_MUTUAL, Istio's outbound cluster name
    /// ([`istio_outbound_sni`]); otherwise no SNI.
    pub sni: Option<String>,
    pub ca_certificates: Option<PathBuf>,
    pub client_certificate: Option<PathBuf>,
    pub private_key: Option<PathBuf>,
    /// Whether handshakes to this cluster may resume an earlier session
    /// (TLS 1.3 tickets, TLS 1.2 tickets and session IDs). On by default,
    /// as in Envoy and Istio; `false` makes every handshake a full one, as
    /// Envoy's UpstreamTlsContext `max_session_keys: 0` does (Istio's
    /// DestinationRule has no such field). For benchmarks and for peers
    /// that mishandle resumption.
    pub session_resumption: bool,
}

impl ClusterTls {
    /// The SNI to send to `host:port`: the configured one, else for
    /// ISTIO_MUTUAL Istio's outbound cluster name, else none.
    pub fn sni_for(&self, host: &str, port: u16) -> Option<String> {
        match (&self.sni, self.mode) {
            (Some(s), _) => Some(s.clone()),
            (None, ClusterTlsMode::IstioMutual) => Some(istio_outbound_sni(host, port, None)),
            (None, _) => None,
        }
    }
}

/// Istio's SNI for mTLS to a service: its outbound cluster name with `|`
/// replaced by `_.` (`model.BuildDNSSrvSubsetKey`):
/// `outbound_.9080_.v1_.reviews.default.svc.cluster.local`, `_` for no subset.
/// Istio's inbound sidecars do not filter on it, but gateways in
/// AUTO_PASSTHROUGH route by it, so it has to be exact.
pub fn istio_outbound_sni(host: &str, port: u16, subset: Option<&str>) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

/// Passthrough destinations known to be in the mesh: connections to them
/// originate ISTIO_MUTUAL (the equivalent of Istio's auto-mTLS without a
/// control plane).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MeshDestination {
    pub cidrs: Vec<Cidr>,
    /// Empty: every port.
    pub ports: Vec<u16>,
    /// Expected server identities, with `spiffe://`.
    pub subject_alt_names: Vec<String>,
}

impl MeshDestination {
    pub fn contains(&self, dst: SocketAddr) -> bool {
        (self.ports.is_empty() || self.ports.contains(&dst.port()))
            && self.cidrs.iter().any(|c| c.contains(dst.ip()))
    }
}

/// A keyword in Istio's upper-case spelling, or in lower case.
fn keyword<T: Copy>(v: &str, table: &[(&str, T)]) -> Option<T> {
    table
        .iter()
        .find(|(k, _)| v == *k || v == k.to_ascii_lowercase())
        .map(|(_, t)| *t)
}

fn spelled<T>(table: &[(&str, T)]) -> String {
    table
        .iter()
        .map(|(k, _)| format!("\"{k}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `spiffe://TD/PATH` from a SAN written with or without the scheme, if it
/// is a SPIFFE ID at all (a trust domain and a path).
fn spiffe_id(v: &str) -> Option<String> {
    let rest = v.strip_prefix("spiffe://").unwrap_or(v);
    let (td, path) = rest.split_once('/')?;
    (!td.is_empty() && !path.is_empty() && !rest.contains(char::is_whitespace))
        .then(|| format!("spiffe://{rest}"))
}

/// Whether a file can be opened for reading (the reason when not).
fn readable(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err("is a directory".into()),
        Ok(_) => std::fs::File::open(path)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

const MTLS_MODES: [(&str, Option<MtlsMode>); 4] = [
    ("STRICT", Some(MtlsMode::Strict)),
    ("PERMISSIVE", Some(MtlsMode::Permissive)),
    ("DISABLE", Some(MtlsMode::Disable)),
    // Istio: inherit from the parent; with none, PERMISSIVE.
    ("UNSET", None),
];

const ACTIONS: [(&str, Option<Action>); 4] = [
    ("ALLOW", Some(Action::Allow)),
    ("DENY", Some(Action::Deny)),
    ("AUDIT", Some(Action::Audit)),
    ("CUSTOM", None),
];

const CLUSTER_TLS_MODES: [(&str, Option<ClusterTlsMode>); 4] = [
    ("DISABLE", None),
    ("SIMPLE", Some(ClusterTlsMode::Simple)),
    ("MUTUAL", Some(ClusterTlsMode::Mutual)),
    ("ISTIO_MUTUAL", Some(ClusterTlsMode::IstioMutual)),
];

// ---------------------------------------------------------------- validation

impl Validator<'_> {
    pub(super) fn tls(&mut self, raw: RawTls) -> Tls {
        let mut tls = Tls::default();
        tls.handshake_timeout = self.duration_or(raw.handshake_timeout, tls.handshake_timeout);
        if let Some(td) = raw.trust_domain {
            // SPIFFE ID spec §2.1: lower-case letters, digits, '.', '-', '_'.
            let ok = !td.get_ref().is_empty()
                && td
                    .get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
            if ok {
                tls.trust_domain = td.get_ref().clone();
            } else {
                self.error(
                    Some(td.span()),
                    format!(
                        "tls.trust_domain `{}` is not a SPIFFE trust domain (lower-case letters, digits, '.', '-', '_'; e.g. \"cluster.local\")",
                        td.get_ref()
                    ),
                );
            }
        }
        if let Some(dir) = raw.cert_dir {
            let path = PathBuf::from(dir.get_ref());
            if !path.is_dir() {
                self.error(
                    Some(dir.span()),
                    format!(
                        "tls.cert_dir `{}` is not a readable directory (it holds Istio's {})",
                        path.display(),
                        CERT_FILES.join(", ")
                    ),
                );
            } else {
                let bad: Vec<String> = CERT_FILES
                    .iter()
                    .filter_map(|f| readable(&path.join(f)).err().map(|e| format!("{f} ({e})")))
                    .collect();
                if !bad.is_empty() {
                    self.error(
                        Some(dir.span()),
                        format!(
                            "tls.cert_dir `{}`: cannot read {}; Istio's file-mounted layout is {}",
                            path.display(),
                            bad.join(", "),
                            CERT_FILES.join(", ")
                        ),
                    );
                } else if let Err(e) = crate::tls::load_dir(&path, &tls.trust_domain) {
                    // Everything `run` would check before serving (parse, key
                    // match, validity dates, SPIFFE identity, chain to the
                    // root), so `validate` and a reload reject it first.
                    self.error(Some(dir.span()), format!("tls.cert_dir: {e}"));
                }
            }
            tls.cert_dir = Some(path);
        }
        tls
    }

    fn mtls_mode(&mut self, v: &Spanned<String>, what: &str) -> Option<Option<MtlsMode>> {
        let m = keyword(v.get_ref(), &MTLS_MODES);
        if m.is_none() {
            self.error(
                Some(v.span()),
                format!(
                    "{what} `{}` is not one of {}",
                    v.get_ref(),
                    spelled(&MTLS_MODES)
                ),
            );
        }
        m
    }

    pub(super) fn peer_authentication(
        &mut self,
        raw: RawPeerAuthentication,
        tls: &Tls,
    ) -> PeerAuthentication {
        let mut pa = PeerAuthentication::default();
        let no_certs = |v: &mut Validator, span, what: &str| {
            v.error(
                Some(span),
                format!("{what} = \"STRICT\" needs a workload certificate: set [tls] cert_dir (without one only plaintext is served, so STRICT would refuse every connection)"),
            )
        };
        if let Some(m) = &raw.mode {
            if let Some(mode) = self.mtls_mode(m, "peer_authentication.mode") {
                pa.mode = mode.unwrap_or(MtlsMode::Permissive);
                if pa.mode == MtlsMode::Strict && tls.cert_dir.is_none() {
                    no_certs(self, m.span(), "peer_authentication.mode");
                }
            }
        }
        // In file order, so "set twice" points at the second one.
        let mut levels: Vec<_> = raw.port_level.unwrap_or_default().into_iter().collect();
        levels.sort_by_key(|(port, _)| port.span().start);
        for (port, level) in levels {
            let what = format!("peer_authentication.port_level.{}", port.get_ref());
            let p = match port.get_ref().parse::<u16>() {
                Ok(p) if p > 0 => p,
                _ => {
                    self.error(
                        Some(port.span()),
                        format!(
                            "peer_authentication.port_level: `{}` is not a port (1..=65535)",
                            port.get_ref()
                        ),
                    );
                    continue;
                }
            };
            let Some(mode) = self.mtls_mode(&level.mode, &format!("{what}.mode")) else {
                continue;
            };
            // UNSET at port level inherits the workload's mode.
            let mode = mode.unwrap_or(pa.mode);
            if mode == MtlsMode::Strict && tls.cert_dir.is_none() {
                no_certs(self, level.mode.span(), &format!("{what}.mode"));
            }
            // "8080" and "08080" are one port: the second is a mistake.
            if pa.port_level.iter().any(|(q, _)| *q == p) {
                self.error(
                    Some(port.span()),
                    format!("peer_authentication.port_level: port {p} is set twice"),
                );
                continue;
            }
            pa.port_level.push((p, mode));
        }
        pa.port_level.sort_by_key(|(p, _)| *p);
        pa
    }

    pub(super) fn cluster_tls(
        &mut self,
        cluster: &str,
        raw: Option<Spanned<RawClusterTls>>,
        tls: &Tls,
    ) -> Option<ClusterTls> {
        let raw = raw?;
        let span = raw.span();
        let r = raw.into_inner();
        let mode = match keyword(r.mode.get_ref(), &CLUSTER_TLS_MODES) {
            Some(m) => m,
            None => {
                self.error(
                    Some(r.mode.span()),
                    format!(
                        "cluster `{cluster}`: tls.mode `{}` is not one of {} (Istio's DestinationRule TLS modes)",
                        r.mode.get_ref(),
                        spelled(&CLUSTER_TLS_MODES)
                    ),
                );
                return None;
            }
        };
        let files = [
            ("ca_certificates", &r.ca_certificates),
            ("client_certificate", &r.client_certificate),
            ("private_key", &r.private_key),
        ];
        let Some(mode) = mode else {
            // DISABLE: plaintext; any other key would be silently unused.
            let others = [
                (
                    "subject_alt_names",
                    r.subject_alt_names.as_ref().map(|_| span.clone()),
                ),
                ("sni", r.sni.as_ref().map(Spanned::span)),
                (
                    "session_resumption",
                    r.session_resumption.as_ref().map(Spanned::span),
                ),
            ]
            .into_iter()
            .chain(
                files
                    .iter()
                    .map(|(k, f)| (*k, f.as_ref().map(Spanned::span))),
            );
            for (key, at) in others {
                if let Some(at) = at {
                    self.error(
                        Some(at),
                        format!(
                            "cluster `{cluster}`: tls.{key} has no effect with mode = \"DISABLE\""
                        ),
                    );
                }
            }
            return None;
        };
        let mut paths: [Option<PathBuf>; 3] = [None, None, None];
        for (i, (key, f)) in files.iter().enumerate() {
            let Some(f) = f else { continue };
            if mode == ClusterTlsMode::IstioMutual {
                self.error(
                    Some(f.span()),
                    format!("cluster `{cluster}`: tls.{key} is not used with ISTIO_MUTUAL, which uses the workload certificate of [tls] cert_dir; use mode = \"MUTUAL\" for certificates from files"),
                );
                continue;
            }
            if key != &"ca_certificates" && mode == ClusterTlsMode::Simple {
                self.error(
                    Some(f.span()),
                    format!("cluster `{cluster}`: tls.{key} is a client credential, used only with mode = \"MUTUAL\""),
                );
                continue;
            }
            let path = PathBuf::from(f.get_ref());
            if let Err(e) = readable(&path) {
                self.error(
                    Some(f.span()),
                    format!(
                        "cluster `{cluster}`: tls.{key} `{}` cannot be read: {e}",
                        path.display()
                    ),
                );
            }
            paths[i] = Some(path);
        }
        let missing: Vec<&str> = match mode {
            ClusterTlsMode::Simple => vec!["ca_certificates"],
            ClusterTlsMode::Mutual => vec!["client_certificate", "private_key", "ca_certificates"],
            ClusterTlsMode::IstioMutual => vec![],
        }
        .into_iter()
        .filter(|k| files.iter().any(|(f, v)| f == k && v.is_none()))
        .collect();
        if !missing.is_empty() {
            // Istio without caCertificates trusts the system roots (or, in old
            // versions, skips verification); Remora always wants the CA named.
            self.error(
                Some(r.mode.span()),
                format!(
                    "cluster `{cluster}`: tls.mode = \"{}\" needs {}",
                    r.mode.get_ref(),
                    missing.join(", ")
                ),
            );
        }
        // The files parse into a working client config (what the first
        // connection would build), so a bad one is a config error, not a
        // 503 at run time.
        if missing.is_empty() && mode != ClusterTlsMode::IstioMutual {
            let [ca, cert, key] = &paths;
            if let Err(e) = crate::tls::ClientTls::from_files(
                ca.as_deref(),
                cert.as_deref(),
                key.as_deref(),
                &[],
            ) {
                self.error(Some(span.clone()), format!("cluster `{cluster}`: tls: {e}"));
            }
        }
        if mode == ClusterTlsMode::IstioMutual && tls.cert_dir.is_none() {
            self.error(
                Some(r.mode.span()),
                format!("cluster `{cluster}`: tls.mode = \"ISTIO_MUTUAL\" needs the workload certificate: set [tls] cert_dir"),
            );
        }
        let mut sans = Vec::new();
        for s in r.subject_alt_names.iter().flatten() {
            if mode == ClusterTlsMode::IstioMutual {
                match spiffe_id(s.get_ref()) {
                    Some(id) => sans.push(id),
                    None => self.error(
                        Some(s.span()),
                        format!("cluster `{cluster}`: tls.subject_alt_names `{}` is not a SPIFFE ID (ISTIO_MUTUAL verifies e.g. \"spiffe://cluster.local/ns/default/sa/reviews\"; the scheme may be left out)", s.get_ref()),
                    ),
                }
            } else if s.get_ref().is_empty() {
                self.error(
                    Some(s.span()),
                    format!("cluster `{cluster}`: tls.subject_alt_names has an empty name"),
                );
            } else {
                sans.push(s.get_ref().clone());
            }
        }
        let sni = r.sni.and_then(|s| {
            if s.get_ref().is_empty()
                || s.get_ref()
                    .contains(|c: char| c.is_whitespace() || c == '/')
            {
                self.error(
                    Some(s.span()),
                    format!(
                        "cluster `{cluster}`: tls.sni `{}` is not a server name",
                        s.get_ref()
                    ),
                );
                None
            } else {
                Some(s.into_inner())
            }
        });
        let [ca_certificates, client_certificate, private_key] = paths;
        Some(ClusterTls {
            mode,
            subject_alt_names: sans,
            sni,
            ca_certificates,
            client_certificate,
            private_key,
            session_resumption: r.session_resumption.is_none_or(Spanned::into_inner),
        })
    }

    pub(super) fn mesh_destinations(
        &mut self,
        raw: Vec<Spanned<RawMeshDestination>>,
        tls: &Tls,
    ) -> Vec<MeshDestination> {
        let mut out = Vec::new();
        for (i, d) in raw.into_iter().enumerate() {
            let span = d.span();
            let d = d.into_inner();
            let what = format!("mesh_destination[{i}]");
            if tls.cert_dir.is_none() {
                self.error(
                    Some(span.clone()),
                    format!("{what}: mTLS to the mesh needs the workload certificate: set [tls] cert_dir"),
                );
            }
            let mut cidrs = Vec::new();
            for c in d.cidrs.get_ref() {
                match c.get_ref().parse::<Cidr>() {
                    Ok(c) => cidrs.push(c),
                    Err(e) => self.error(Some(c.span()), format!("{what}: cidrs: {e}")),
                }
            }
            if d.cidrs.get_ref().is_empty() {
                self.error(Some(d.cidrs.span()), format!("{what}: cidrs is empty; list the mesh's pod CIDRs (e.g. [\"10.244.0.0/16\"])"));
            }
            let ports = self.ports(d.ports, &format!("{what}.ports"));
            let mut sans = Vec::new();
            for s in d.subject_alt_names.get_ref() {
                match spiffe_id(s.get_ref()) {
                    Some(id) => sans.push(id),
                    None => self.error(
                        Some(s.span()),
                        format!("{what}: subject_alt_names `{}` is not a SPIFFE ID (e.g. \"cluster.local/ns/default/sa/reviews\", with or without spiffe://)", s.get_ref()),
                    ),
                }
            }
            if d.subject_alt_names.get_ref().is_empty() {
                // Without expected identities any workload the root signed
                // could answer for these addresses.
                self.error(
                    Some(d.subject_alt_names.span()),
                    format!("{what}: subject_alt_names is empty; name the identities the servers there must present"),
                );
            }
            out.push(MeshDestination {
                cidrs,
                ports,
                subject_alt_names: sans,
            });
        }
        out
    }

    pub(super) fn authorization_policies(
        &mut self,
        raw: Vec<Spanned<RawAuthzPolicy>>,
    ) -> AuthzPolicies {
        let mut out: Vec<AuthzPolicy> = Vec::new();
        for p in raw {
            let p = p.into_inner();
            let name = p.name.get_ref().clone();
            if name.is_empty() {
                self.error(
                    Some(p.name.span()),
                    "authorization_policy name is empty".into(),
                );
            } else if out.iter().any(|o| o.name == name) {
                self.error(
                    Some(p.name.span()),
                    format!("authorization_policy name `{name}` is used twice"),
                );
            }
            let ctx = format!("authorization_policy `{name}`");
            let action = match &p.action {
                None => Some(Action::Allow),
                Some(a) => {
                    match keyword(a.get_ref(), &ACTIONS) {
                        Some(Some(action)) => Some(action),
                        Some(None) => {
                            self.error(
                            Some(a.span()),
                            format!("{ctx}: action CUSTOM (external authorization) is not supported by Remora; use ALLOW, DENY or AUDIT"),
                        );
                            None
                        }
                        None => {
                            self.error(
                            Some(a.span()),
                            format!("{ctx}: action `{}` is not one of \"ALLOW\", \"DENY\", \"AUDIT\"", a.get_ref()),
                        );
                            None
                        }
                    }
                }
            };
            if let (Some(prov), Some(_)) = (&p.provider, action) {
                self.error(
                    Some(prov.span()),
                    format!(
                        "{ctx}: provider belongs to action CUSTOM, which Remora does not support"
                    ),
                );
            }
            let rules: Vec<Rule> = p
                .rules
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, r)| self.authz_rule(&format!("{ctx}: rules[{i}]"), r.into_inner()))
                .collect();
            if let Some(action) = action {
                out.push(AuthzPolicy {
                    index: 0,
                    name,
                    action,
                    rules,
                });
            }
        }
        AuthzPolicies::new(out)
    }

    fn authz_rule(&mut self, ctx: &str, r: RawRule) -> Rule {
        let mut rule = Rule::default();
        if let Some(from) = r.from {
            if from.get_ref().is_empty() {
                // Istio's validation: "`from` must not be empty".
                self.error(
                    Some(from.span()),
                    format!("{ctx}.from is empty; leave `from` out to match any source"),
                );
            }
            for (i, f) in from.into_inner().into_iter().enumerate() {
                let f = f.into_inner();
                rule.from
                    .push(self.authz_source(&format!("{ctx}.from[{i}].source"), f.source));
            }
        }
        if let Some(to) = r.to {
            if to.get_ref().is_empty() {
                self.error(
                    Some(to.span()),
                    format!("{ctx}.to is empty; leave `to` out to match any operation"),
                );
            }
            for (i, t) in to.into_inner().into_iter().enumerate() {
                let t = t.into_inner();
                rule.to
                    .push(self.authz_operation(&format!("{ctx}.to[{i}].operation"), t.operation));
            }
        }
        if let Some(when) = r.when {
            if when.get_ref().is_empty() {
                self.error(
                    Some(when.span()),
                    format!("{ctx}.when is empty; leave `when` out for no condition"),
                );
            }
            for (i, c) in when.into_inner().into_iter().enumerate() {
                if let Some(c) = self.authz_condition(&format!("{ctx}.when[{i}]"), c) {
                    rule.when.push(c);
                }
            }
        }
        rule
    }

    fn authz_source(&mut self, ctx: &str, raw: Spanned<RawSource>) -> Source {
        let span = raw.span();
        let s = raw.into_inner();
        for (key, v) in [
            ("request_principals", &s.request_principals),
            ("not_request_principals", &s.not_request_principals),
        ] {
            if let Some(v) = v {
                self.error(
                    Some(v.span()),
                    format!("{ctx}.{key} needs JWT authentication (RequestAuthentication), which Remora does not support"),
                );
            }
        }
        for (key, v) in [
            ("remote_ip_blocks", &s.remote_ip_blocks),
            ("not_remote_ip_blocks", &s.not_remote_ip_blocks),
        ] {
            if let Some(v) = v {
                self.error(
                    Some(v.span()),
                    format!("{ctx}.{key} needs the original client address (X-Forwarded-For, PROXY protocol), which Remora does not take; use ip_blocks for the peer's address"),
                );
            }
        }
        let set = [
            &s.principals,
            &s.not_principals,
            &s.namespaces,
            &s.not_namespaces,
            &s.ip_blocks,
            &s.not_ip_blocks,
        ]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()));
        let source = Source {
            principals: self.str_field(
                ctx,
                "principals",
                MatchKind::Principal,
                s.principals,
                s.not_principals,
            ),
            namespaces: self.str_field(
                ctx,
                "namespaces",
                MatchKind::Namespace,
                s.namespaces,
                s.not_namespaces,
            ),
            ip_blocks: self.cidr_field(ctx, "ip_blocks", s.ip_blocks, s.not_ip_blocks),
        };
        if !set {
            // Istio's validation: "`from.source` must not be empty".
            self.error(Some(span), format!("{ctx} is empty; name principals, namespaces or ip_blocks (or their not_ forms)"));
        }
        source
    }

    fn authz_operation(&mut self, ctx: &str, raw: Spanned<RawOperation>) -> Operation {
        let span = raw.span();
        let o = raw.into_inner();
        let set = [
            &o.methods,
            &o.not_methods,
            &o.paths,
            &o.not_paths,
            &o.hosts,
            &o.not_hosts,
        ]
        .iter()
        .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()))
            || [&o.ports, &o.not_ports]
                .iter()
                .any(|v| v.as_ref().is_some_and(|v| !v.is_empty()));
        let op = Operation {
            ports: Field::new(
                self.authz_ports(ctx, "ports", o.ports),
                self.authz_ports(ctx, "not_ports", o.not_ports),
            ),
            methods: self.str_field(ctx, "methods", MatchKind::Header, o.methods, o.not_methods),
            paths: self.str_field(ctx, "paths", MatchKind::Plain, o.paths, o.not_paths),
            hosts: self.str_field(ctx, "hosts", MatchKind::Host, o.hosts, o.not_hosts),
        };
        if !set {
            self.error(
                Some(span),
                format!(
                    "{ctx} is empty; name ports, methods, paths or hosts (or their not_ forms)"
                ),
            );
        }
        op
    }

    fn authz_ports(
        &mut self,
        ctx: &str,
        key: &str,
        raw: Option<Vec<Spanned<RawPort>>>,
    ) -> Vec<u16> {
        let mut out = Vec::new();
        for p in raw.unwrap_or_default() {
            let n = match p.get_ref() {
                RawPort::Number(n) => Some(*n),
                RawPort::Text(t) => t.parse::<i64>().ok(),
            };
            match n {
                // Istio's range for ports and destination.port is [0, 65535].
                Some(n) if (0..=65535).contains(&n) => out.push(n as u16),
                _ => {
                    let shown = match p.get_ref() {
                        RawPort::Number(n) => n.to_string(),
                        RawPort::Text(t) => format!("\"{t}\""),
                    };
                    self.error(
                        Some(p.span()),
                        format!("{ctx}.{key}: {shown} is not a port (0..=65535)"),
                    );
                }
            }
        }
        out
    }

    fn str_values(&mut self, ctx: &str, key: &str, kind: MatchKind, raw: Values) -> Vec<StrMatch> {
        let mut out = Vec::new();
        for v in raw.unwrap_or_default() {
            match StrMatch::check(kind, v.get_ref()) {
                Ok(()) => out.push(StrMatch::new(kind, v.get_ref())),
                Err(e) => self.error(Some(v.span()), format!("{ctx}.{key}: {e}")),
            }
        }
        out
    }

    fn str_field(
        &mut self,
        ctx: &str,
        key: &str,
        kind: MatchKind,
        values: Values,
        not_values: Values,
    ) -> Field<StrMatch> {
        Field::new(
            self.str_values(ctx, key, kind, values),
            self.str_values(ctx, &format!("not_{key}"), kind, not_values),
        )
    }

    fn cidr_values(&mut self, ctx: &str, key: &str, raw: Values) -> Vec<Cidr> {
        let mut out = Vec::new();
        for v in raw.unwrap_or_default() {
            match v.get_ref().parse::<Cidr>() {
                Ok(c) => out.push(c),
                Err(e) => self.error(Some(v.span()), format!("{ctx}.{key}: {e}")),
            }
        }
        out
    }

    fn cidr_field(
        &mut self,
        ctx: &str,
        key: &str,
        values: Values,
        not_values: Values,
    ) -> Field<Cidr> {
        Field::new(
            self.cidr_values(ctx, key, values),
            self.cidr_values(ctx, &format!("not_{key}"), not_values),
        )
    }

    fn authz_condition(&mut self, ctx: &str, raw: Spanned<RawCondition>) -> Option<Condition> {
        let span = raw.span();
        let c = raw.into_inner();
        let key = c.key.get_ref().as_str();
        if c.values.as_ref().is_none_or(Vec::is_empty)
            && c.not_values.as_ref().is_none_or(Vec::is_empty)
        {
            // Istio's validation: "at least one of `values` or `notValues` must be set".
            self.error(Some(span), format!("{ctx}: set values or not_values"));
            return None;
        }
        let (values, not_values) = (c.values, c.not_values);
        let strs = |v: &mut Validator, kind| {
            Field::new(
                v.str_values(ctx, "values", kind, values.clone()),
                v.str_values(ctx, "not_values", kind, not_values.clone()),
            )
        };
        let cidrs = |v: &mut Validator| {
            Field::new(
                v.cidr_values(ctx, "values", values.clone()),
                v.cidr_values(ctx, "not_values", not_values.clone()),
            )
        };
        let ports = |v: &mut Validator| {
            let conv = |l: &Values| -> Option<Vec<Spanned<RawPort>>> {
                l.as_ref().map(|l| {
                    l.iter()
                        .map(|s| Spanned::new(s.span(), RawPort::Text(s.get_ref().clone())))
                        .collect()
                })
            };
            Field::new(
                v.authz_ports(ctx, "values", conv(&values)),
                v.authz_ports(ctx, "not_values", conv(&not_values)),
            )
        };
        let cond = match key {
            "source.ip" => Condition::SourceIp(cidrs(self)),
            "destination.ip" => Condition::DestinationIp(cidrs(self)),
            "destination.port" => Condition::DestinationPort(ports(self)),
            "source.namespace" => Condition::SourceNamespace(strs(self, MatchKind::Namespace)),
            "source.principal" => Condition::SourcePrincipal(strs(self, MatchKind::Principal)),
            "connection.sni" => Condition::ConnectionSni(strs(self, MatchKind::Plain)),
            k if k.starts_with("request.headers") => {
                // Istio's extractNameInBrackets: exactly `request.headers[NAME]`.
                let name = k
                    .strip_prefix("request.headers[")
                    .and_then(|n| n.strip_suffix(']'))
                    .filter(|n| !n.is_empty() && !n.contains(['[', ']']));
                match name {
                    Some(n) => Condition::RequestHeader {
                        name: n.to_ascii_lowercase(),
                        field: strs(self, MatchKind::Header),
                    },
                    None => {
                        self.error(Some(c.key.span()), format!("{ctx}: write the header as request.headers[NAME], e.g. request.headers[x-user]"));
                        return None;
                    }
                }
            }
            k => {
                let why = if k.starts_with("request.auth.") {
                    "needs JWT authentication (RequestAuthentication), which Remora does not support"
                } else if k == "remote.ip" {
                    "needs the original client address (X-Forwarded-For, PROXY protocol), which Remora does not take; source.ip is the peer's address"
                } else if k.starts_with("experimental.envoy.filters.") {
                    "reads Envoy filter metadata, which Remora does not have"
                } else {
                    "is not a condition key"
                };
                self.error(
                    Some(c.key.span()),
                    format!("{ctx}: `{k}` {why} (supported: request.headers[NAME], source.ip, source.namespace, source.principal, destination.ip, destination.port, connection.sni)"),
                );
                return None;
            }
        };
        Some(cond)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::authz::{AuthzInput, HttpInput};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HEAD: &str = "[capture]\nenabled = false\n";

    /// A temporary directory, removed when the test is done with it (every
    /// run of the suite left eight behind in /tmp before).
    struct TestDir(PathBuf);

    impl std::ops::Deref for TestDir {
        type Target = PathBuf;
        fn deref(&self) -> &PathBuf {
            &self.0
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A directory with Istio's three certificate files and a cluster's
    /// CA, certificate and key (contents are the TLS layer's concern).
    fn cert_dir() -> TestDir {
        cert_dir_for("cluster.local")
    }

    /// Istio's files (and a CA, client cert and key for cluster TLS) for a
    /// workload of trust domain `td`.
    fn cert_dir_for(td: &str) -> TestDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "remora-security-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // Real certificates: the validator parses them as `run` would.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.subject_alt_names = vec![rcgen::SanType::URI(
            format!("spiffe://{td}/ns/default/sa/test")
                .try_into()
                .unwrap(),
        )];
        let leaf = leaf.signed_by(&key, &ca, &ca_key).unwrap();
        for (f, pem) in [
            ("cert-chain.pem", leaf.pem()),
            ("key.pem", key.serialize_pem()),
            ("root-cert.pem", ca.pem()),
            ("ca.pem", ca.pem()),
            ("client.pem", leaf.pem()),
            ("client-key.pem", key.serialize_pem()),
        ] {
            std::fs::write(dir.join(f), pem).unwrap();
        }
        TestDir(dir)
    }

    fn parse(body: &str) -> Result<Config, Vec<String>> {
        Config::from_toml(&format!("{HEAD}{body}"), None).map_err(|e| {
            e.errors
                .iter()
                .map(|d| format!("{}: {}", d.line, d.message))
                .collect()
        })
    }

    /// Each body fails with an error starting with `want` (line numbers
    /// count the two-line HEAD).
    fn expect_errors(cases: &[(&str, &str)]) {
        for (body, want) in cases {
            let errs = parse(body).err().unwrap_or_default();
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "{body}\nwant {want:?}\ngot {errs:?}"
            );
        }
    }

    #[test]
    fn defaults_are_istios() {
        let c = parse("").unwrap();
        assert_eq!(
            c.tls,
            Tls {
                cert_dir: None,
                trust_domain: "cluster.local".into(),
                handshake_timeout: std::time::Duration::from_secs(15),
            }
        );
        assert_eq!(c.peer_authentication.mode, MtlsMode::Permissive);
        assert_eq!(
            c.peer_authentication.mode_for_port(8080),
            MtlsMode::Permissive
        );
        assert!(c.authorization.is_empty());
        assert!(c.mesh_destinations.is_empty());
        assert_eq!(c.mesh_destination_for("10.0.0.1:80".parse().unwrap()), None);
    }

    #[test]
    fn tls_and_peer_authentication() {
        let dir = cert_dir_for("example.org");
        let c = parse(&format!(
            r#"[tls]
cert_dir = "{}"
trust_domain = "example.org"

[peer_authentication]
mode = "STRICT"

[peer_authentication.port_level.8080]
mode = "DISABLE"

[peer_authentication.port_level.9090]
mode = "permissive"

[peer_authentication.port_level.9443]
mode = "UNSET"
"#,
            dir.display()
        ))
        .unwrap();
        assert_eq!(c.tls.cert_dir.as_deref(), Some(dir.as_path()));
        assert_eq!(c.tls.trust_domain, "example.org");
        let pa = &c.peer_authentication;
        assert_eq!(pa.mode_for_port(80), MtlsMode::Strict);
        assert_eq!(pa.mode_for_port(8080), MtlsMode::Disable);
        assert_eq!(pa.mode_for_port(9090), MtlsMode::Permissive);
        // UNSET at port level inherits the workload's mode.
        assert_eq!(pa.mode_for_port(9443), MtlsMode::Strict);
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(
            dump["peer_authentication"],
            serde_json::json!({ "mode": "STRICT", "port_level": { "8080": "DISABLE", "9090": "PERMISSIVE", "9443": "STRICT" } })
        );
        // UNSET at the top is PERMISSIVE; PERMISSIVE needs no certificate.
        let c = parse("[peer_authentication]\nmode = \"UNSET\"\n").unwrap();
        assert_eq!(c.peer_authentication.mode, MtlsMode::Permissive);
        parse("[peer_authentication]\nmode = \"PERMISSIVE\"\n[peer_authentication.port_level.80]\nmode = \"DISABLE\"\n").unwrap();
        // A changed mode is a changed config (reload publishes it).
        assert_ne!(
            parse("[peer_authentication]\nmode = \"DISABLE\"\n").unwrap(),
            parse("").unwrap()
        );
    }

    #[test]
    fn tls_and_peer_authentication_errors() {
        let dir = cert_dir();
        std::fs::remove_file(dir.join("key.pem")).unwrap();
        let missing_key = format!("[tls]\ncert_dir = \"{}\"\n", dir.display());
        expect_errors(&[
            ("[tls]\ncert_dir = \"/nonexistent/remora\"\n", "4: tls.cert_dir `/nonexistent/remora` is not a readable directory"),
            (&missing_key, "4: tls.cert_dir"),
            ("[tls]\ntrust_domain = \"Cluster.Local\"\n", "4: tls.trust_domain `Cluster.Local` is not a SPIFFE trust domain"),
            ("[tls]\ntrust_domain = \"\"\n", "4: tls.trust_domain"),
            ("[tls]\nbogus = 1\n", "4: unknown field `bogus`"),
            ("[peer_authentication]\nmode = \"STRICT\"\n", "4: peer_authentication.mode = \"STRICT\" needs a workload certificate: set [tls] cert_dir"),
            ("[peer_authentication]\nmode = \"strictly\"\n", "4: peer_authentication.mode `strictly` is not one of \"STRICT\", \"PERMISSIVE\", \"DISABLE\", \"UNSET\""),
            ("[peer_authentication.port_level.8080]\nmode = \"STRICT\"\n", "4: peer_authentication.port_level.8080.mode = \"STRICT\" needs a workload certificate"),
            ("[peer_authentication.port_level.http]\nmode = \"DISABLE\"\n", "3: peer_authentication.port_level: `http` is not a port"),
            ("[peer_authentication.port_level.70000]\nmode = \"DISABLE\"\n", "3: peer_authentication.port_level: `70000` is not a port"),
            ("[peer_authentication.port_level.80]\nmode = \"OFF\"\n", "4: peer_authentication.port_level.80.mode `OFF` is not one of"),
            ("[peer_authentication.port_level.80]\nmode = \"DISABLE\"\n[peer_authentication.port_level.080]\nmode = \"DISABLE\"\n", "5: peer_authentication.port_level: port 80 is set twice"),
        ]);
        let errs = parse(&missing_key).unwrap_err();
        assert!(
            errs[0].contains("cannot read key.pem")
                && errs[0].contains("cert-chain.pem, key.pem, root-cert.pem"),
            "{errs:?}"
        );
    }

    #[test]
    fn cluster_tls() {
        let dir = cert_dir();
        let d = dir.display();
        let c = parse(&format!(
            r#"[tls]
cert_dir = "{d}"

[[cluster]]
name = "mesh"
endpoints = ["10.0.0.1:9080"]
tls = {{ mode = "ISTIO_MUTUAL", subject_alt_names = ["cluster.local/ns/default/sa/reviews", "spiffe://cluster.local/ns/default/sa/ratings"] }}

[[cluster]]
name = "simple"
endpoints = ["10.0.0.2:443"]
tls = {{ mode = "simple", ca_certificates = "{d}/ca.pem", sni = "api.example.com", subject_alt_names = ["api.example.com"] }}

[[cluster]]
name = "mutual"
endpoints = ["10.0.0.3:443"]
tls = {{ mode = "MUTUAL", ca_certificates = "{d}/ca.pem", client_certificate = "{d}/client.pem", private_key = "{d}/client-key.pem", session_resumption = false }}

[[cluster]]
name = "plain"
endpoints = ["10.0.0.4:80"]
tls = {{ mode = "DISABLE" }}
"#
        ))
        .unwrap();
        let mesh = c.clusters[0].tls.as_ref().unwrap();
        assert_eq!(mesh.mode, ClusterTlsMode::IstioMutual);
        assert_eq!(
            mesh.subject_alt_names,
            vec![
                "spiffe://cluster.local/ns/default/sa/reviews",
                "spiffe://cluster.local/ns/default/sa/ratings"
            ]
        );
        assert_eq!(
            mesh.sni_for("reviews.default.svc.cluster.local", 9080)
                .as_deref(),
            Some("outbound_.9080_._.reviews.default.svc.cluster.local")
        );
        let simple = c.clusters[1].tls.as_ref().unwrap();
        assert_eq!(simple.mode, ClusterTlsMode::Simple);
        assert_eq!(
            simple.sni_for("10.0.0.2", 443).as_deref(),
            Some("api.example.com")
        );
        assert_eq!(simple.ca_certificates, Some(dir.join("ca.pem")));
        let mutual = c.clusters[2].tls.as_ref().unwrap();
        assert_eq!(mutual.mode, ClusterTlsMode::Mutual);
        assert_eq!(mutual.sni_for("x", 1), None);
        assert_eq!(mutual.private_key, Some(dir.join("client-key.pem")));
        assert!(!mutual.session_resumption);
        assert!(mesh.session_resumption && simple.session_resumption);
        assert_eq!(c.clusters[3].tls, None);
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(dump["clusters"][0]["tls"]["mode"], "ISTIO_MUTUAL");
        assert_eq!(
            istio_outbound_sni("r.ns.svc", 80, Some("v1")),
            "outbound_.80_.v1_.r.ns.svc"
        );
    }

    /// Certificates are parsed when the config loads, as `run` would use
    /// them: a key that does not match its certificate, or a CA file that
    /// is no certificate, is a config error naming the file (so `validate`
    /// and a reload reject it; the running config keeps serving).
    #[test]
    fn certificate_contents_are_checked_at_load() {
        let dir = cert_dir();
        let other = cert_dir();
        std::fs::copy(other.join("key.pem"), dir.join("key.pem")).unwrap();
        let e = parse(&format!("[tls]\ncert_dir = \"{}\"\n", dir.display())).unwrap_err();
        assert!(
            e.iter()
                .any(|m| m.contains("key.pem") && m.contains("does not match")),
            "{e:?}"
        );
        let good = cert_dir();
        std::fs::write(good.join("ca.pem"), "not a certificate\n").unwrap();
        let e = parse(&format!(
            "[[cluster]]\nname = \"a\"\nendpoints = [\"10.0.0.1:80\"]\ntls = {{ mode = \"SIMPLE\", ca_certificates = \"{}\" }}\n",
            good.join("ca.pem").display()
        ))
        .unwrap_err();
        assert!(
            e.iter()
                .any(|m| m.contains("cluster `a`: tls:") && m.contains("ca.pem")),
            "{e:?}"
        );
    }

    #[test]
    fn cluster_tls_errors() {
        let dir = cert_dir();
        let d = dir.display();
        let cl = |tls: &str| {
            format!("[[cluster]]\nname = \"a\"\nendpoints = [\"10.0.0.1:80\"]\ntls = {tls}\n")
        };
        let with_certs = |tls: &str| format!("[tls]\ncert_dir = \"{d}\"\n{}", cl(tls));
        expect_errors(&[
            (&cl("{ mode = \"TLS\" }"), "6: cluster `a`: tls.mode `TLS` is not one of \"DISABLE\", \"SIMPLE\", \"MUTUAL\", \"ISTIO_MUTUAL\""),
            (&cl("{ mode = \"SIMPLE\" }"), "6: cluster `a`: tls.mode = \"SIMPLE\" needs ca_certificates"),
            (&cl(&format!("{{ mode = \"MUTUAL\", ca_certificates = \"{d}/ca.pem\" }}")), "6: cluster `a`: tls.mode = \"MUTUAL\" needs client_certificate, private_key"),
            (&cl("{ mode = \"SIMPLE\", ca_certificates = \"/nonexistent/ca.pem\" }"), "6: cluster `a`: tls.ca_certificates `/nonexistent/ca.pem` cannot be read: No such file"),
            (&cl(&format!("{{ mode = \"SIMPLE\", ca_certificates = \"{d}\" }}")), "6: cluster `a`: tls.ca_certificates"),
            (&cl(&format!("{{ mode = \"SIMPLE\", ca_certificates = \"{d}/ca.pem\", private_key = \"{d}/client-key.pem\" }}")), "6: cluster `a`: tls.private_key is a client credential, used only with mode = \"MUTUAL\""),
            (&cl("{ mode = \"ISTIO_MUTUAL\" }"), "6: cluster `a`: tls.mode = \"ISTIO_MUTUAL\" needs the workload certificate: set [tls] cert_dir"),
            (&with_certs(&format!("{{ mode = \"ISTIO_MUTUAL\", ca_certificates = \"{d}/ca.pem\" }}")), "8: cluster `a`: tls.ca_certificates is not used with ISTIO_MUTUAL"),
            (&with_certs("{ mode = \"ISTIO_MUTUAL\", subject_alt_names = [\"reviews\"] }"), "8: cluster `a`: tls.subject_alt_names `reviews` is not a SPIFFE ID"),
            (&with_certs("{ mode = \"ISTIO_MUTUAL\", sni = \"\" }"), "8: cluster `a`: tls.sni `` is not a server name"),
            (&cl("{ mode = \"DISABLE\", sni = \"x\" }"), "6: cluster `a`: tls.sni has no effect with mode = \"DISABLE\""),
            (&cl("{ mode = \"DISABLE\", session_resumption = false }"), "6: cluster `a`: tls.session_resumption has no effect with mode = \"DISABLE\""),
            (&cl("{ mode = \"DISABLE\", insecure_skip_verify = true }"), "6: unknown field `insecure_skip_verify`"),
        ]);
    }

    #[test]
    fn mesh_destinations() {
        let dir = cert_dir();
        let c = parse(&format!(
            r#"[tls]
cert_dir = "{}"

[[mesh_destination]]
cidrs = ["10.244.0.0/16", "fd00:244::/64"]
ports = [9080]
subject_alt_names = ["cluster.local/ns/default/sa/reviews"]

[[mesh_destination]]
cidrs = ["10.0.0.0/8"]
subject_alt_names = ["spiffe://cluster.local/ns/default/sa/any"]
"#,
            dir.display()
        ))
        .unwrap();
        let at = |s: &str| {
            c.mesh_destination_for(s.parse().unwrap())
                .map(|m| m.subject_alt_names[0].as_str())
        };
        assert_eq!(
            at("10.244.1.2:9080"),
            Some("spiffe://cluster.local/ns/default/sa/reviews")
        );
        assert_eq!(
            at("[fd00:244::5]:9080"),
            Some("spiffe://cluster.local/ns/default/sa/reviews")
        );
        // Another port falls through to the next entry (any port).
        assert_eq!(
            at("10.244.1.2:80"),
            Some("spiffe://cluster.local/ns/default/sa/any")
        );
        assert_eq!(at("192.168.0.1:9080"), None);
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(
            dump["mesh_destinations"][0]["cidrs"],
            serde_json::json!(["10.244.0.0/16", "fd00:244::/64"])
        );

        expect_errors(&[
            ("[[mesh_destination]]\ncidrs = [\"10.0.0.0/8\"]\nsubject_alt_names = [\"cluster.local/ns/a/sa/b\"]\n", "3: mesh_destination[0]: mTLS to the mesh needs the workload certificate: set [tls] cert_dir"),
            ("[[mesh_destination]]\ncidrs = [\"10.0.0.0/33\"]\nsubject_alt_names = []\n", "4: mesh_destination[0]: cidrs: `10.0.0.0/33` is not an IP address or CIDR"),
            ("[[mesh_destination]]\ncidrs = []\nsubject_alt_names = [\"a/b\"]\n", "4: mesh_destination[0]: cidrs is empty"),
            ("[[mesh_destination]]\ncidrs = [\"10.0.0.0/8\"]\nsubject_alt_names = []\n", "5: mesh_destination[0]: subject_alt_names is empty"),
            ("[[mesh_destination]]\ncidrs = [\"10.0.0.0/8\"]\nsubject_alt_names = [\"reviews\"]\n", "5: mesh_destination[0]: subject_alt_names `reviews` is not a SPIFFE ID"),
            ("[[mesh_destination]]\ncidrs = [\"10.0.0.0/8\"]\nports = [0]\nsubject_alt_names = [\"a/b\"]\n", "5: mesh_destination[0].ports = 0 is out of range"),
            ("[[mesh_destination]]\ncidrs = [\"10.0.0.0/8\"]\n", "3: missing field `subject_alt_names`"),
        ]);
    }

    #[test]
    fn authorization_policies() {
        let c = parse(
            r#"[[authorization_policy]]
name = "deny-admin"
action = "DENY"
rules = [{ to = [{ operation = { paths = ["/admin/*"] } }] }]

[[authorization_policy]]
name = "audit-writes"
action = "AUDIT"
rules = [{ to = [{ operation = { methods = ["POST", "PUT"] } }] }]

[[authorization_policy]]
name = "allow-frontend"

[[authorization_policy.rules]]
from = [
  { source = { principals = ["cluster.local/ns/web/sa/frontend"] } },
  { source = { namespaces = ["ops"], not_ip_blocks = ["10.9.0.0/16"] } },
]
to = [{ operation = { ports = [8080, "9090"], methods = ["GET", "POST"], hosts = ["reviews*"] } }]
when = [
  { key = "request.headers[X-Version]", values = ["v1", "v2"] },
  { key = "destination.port", not_values = ["9999"] },
]

[[authorization_policy]]
name = "allow-health"
action = "allow"
rules = [{ to = [{ operation = { paths = ["/healthz"] } }] }, {}]

[[authorization_policy]]
name = "nothing"
"#,
        )
        .unwrap();
        let a = &c.authorization;
        let names: Vec<(&str, usize)> = a
            .policies()
            .iter()
            .map(|p| (p.name.as_str(), p.index))
            .collect();
        assert_eq!(
            names,
            vec![
                ("deny-admin", 0),
                ("audit-writes", 1),
                ("allow-frontend", 2),
                ("allow-health", 3),
                ("nothing", 4)
            ]
        );
        assert!(a.policies()[4].rules.is_empty());
        assert_eq!(a.policies()[3].rules.len(), 2);
        let hdr = |n: &str| (n == "x-version").then_some("v2");
        let req = |principal, method, path| AuthzInput {
            source_principal: principal,
            source_ip: "10.0.0.1".parse().unwrap(),
            destination_ip: "10.0.0.2".parse().unwrap(),
            destination_port: 8080,
            sni: None,
            http: Some(HttpInput {
                method,
                path,
                host: Some("reviews:8080"),
                headers: &hdr,
            }),
        };
        let fe = Some("spiffe://cluster.local/ns/web/sa/frontend");
        let v = a.evaluate(&req(fe, "POST", "/api"));
        assert!(v.allowed);
        assert_eq!(v.policy_name(), Some("allow-frontend"));
        assert_eq!(
            v.audited
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            vec!["audit-writes"]
        );
        let v = a.evaluate(&req(fe, "GET", "/admin/x"));
        assert_eq!((v.allowed, v.policy_name()), (false, Some("deny-admin")));
        // The `{}` rule of allow-health matches everything.
        let v = a.evaluate(&req(None, "DELETE", "/x"));
        assert_eq!(
            (v.allowed, v.policy_name(), v.rule),
            (true, Some("allow-health"), Some(1))
        );

        // The dump writes what the file wrote.
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(dump["authorization"][2]["action"], "ALLOW");
        assert_eq!(
            dump["authorization"][2]["rules"][0]["from"][1]["source"],
            serde_json::json!({ "namespaces": ["ops"], "not_ip_blocks": ["10.9.0.0/16"] })
        );
        assert_eq!(
            dump["authorization"][2]["rules"][0]["to"][0]["operation"]["ports"],
            serde_json::json!(["8080", "9090"])
        );
        assert_eq!(
            dump["authorization"][2]["rules"][0]["when"][0]["key"],
            "request.headers[x-version]"
        );
        // Policies take part in reload's equality.
        assert_ne!(
            c,
            parse("[[authorization_policy]]\nname = \"nothing\"\naction = \"DENY\"\n").unwrap()
        );
    }

    #[test]
    fn authorization_policy_errors() {
        let pol = |body: &str| format!("[[authorization_policy]]\nname = \"p\"\n{body}\n");
        expect_errors(&[
            (&pol("action = \"CUSTOM\"\nprovider = { name = \"opa\" }"), "5: authorization_policy `p`: action CUSTOM (external authorization) is not supported by Remora"),
            (&pol("action = \"REJECT\""), "5: authorization_policy `p`: action `REJECT` is not one of \"ALLOW\", \"DENY\", \"AUDIT\""),
            (&pol("provider = { name = \"opa\" }"), "5: authorization_policy `p`: provider belongs to action CUSTOM"),
            ("[[authorization_policy]]\nname = \"\"\n", "4: authorization_policy name is empty"),
            ("[[authorization_policy]]\nname = \"p\"\n[[authorization_policy]]\nname = \"p\"\n", "6: authorization_policy name `p` is used twice"),
            (&pol("rules = [{ from = [] }]"), "5: authorization_policy `p`: rules[0].from is empty"),
            (&pol("rules = [{ to = [] }]"), "5: authorization_policy `p`: rules[0].to is empty"),
            (&pol("rules = [{ when = [] }]"), "5: authorization_policy `p`: rules[0].when is empty"),
            (&pol("rules = [{ from = [{ source = {} }] }]"), "5: authorization_policy `p`: rules[0].from[0].source is empty"),
            (&pol("rules = [{ from = [{}] }]"), "5: missing field `source`"),
            (&pol("rules = [{ to = [{ operation = {} }] }]"), "5: authorization_policy `p`: rules[0].to[0].operation is empty"),
            (&pol("rules = [{ from = [{ source = { principals = [\"spiffe://cluster.local/ns/a/sa/b\"] } }] }]"), "5: authorization_policy `p`: rules[0].from[0].source.principals: write principals without `spiffe://`, as Istio does (`cluster.local/ns/a/sa/b`)"),
            (&pol("rules = [{ from = [{ source = { not_principals = [\"a/*/b\"] } }] }]"), "5: authorization_policy `p`: rules[0].from[0].source.not_principals: `a/*/b`: `*` is a wildcard only"),
            (&pol("rules = [{ from = [{ source = { ip_blocks = [\"10.0.0.0/40\"] } }] }]"), "5: authorization_policy `p`: rules[0].from[0].source.ip_blocks: `10.0.0.0/40` is not an IP address or CIDR"),
            (&pol("rules = [{ from = [{ source = { request_principals = [\"*\"] } }] }]"), "5: authorization_policy `p`: rules[0].from[0].source.request_principals needs JWT authentication"),
            (&pol("rules = [{ from = [{ source = { remote_ip_blocks = [\"1.2.3.4\"] } }] }]"), "5: authorization_policy `p`: rules[0].from[0].source.remote_ip_blocks needs the original client address"),
            (&pol("rules = [{ from = [{ source = { principal = [\"x/y\"] } }] }]"), "5: unknown field `principal`"),
            (&pol("rules = [{ to = [{ operation = { ports = [70000] } }] }]"), "5: authorization_policy `p`: rules[0].to[0].operation.ports: 70000 is not a port (0..=65535)"),
            (&pol("rules = [{ to = [{ operation = { not_ports = [\"http\"] } }] }]"), "5: authorization_policy `p`: rules[0].to[0].operation.not_ports: \"http\" is not a port"),
            (&pol("rules = [{ to = [{ operation = { paths = [\"/a/*/b\"] } }] }]"), "5: authorization_policy `p`: rules[0].to[0].operation.paths: `/a/*/b`: `*` is a wildcard only"),
            (&pol("rules = [{ to = [{ operation = { hosts = [\"\"] } }] }]"), "5: authorization_policy `p`: rules[0].to[0].operation.hosts: an empty value matches nothing"),
            (&pol("rules = [{ when = [{ key = \"request.auth.claims[iss]\", values = [\"x\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0]: `request.auth.claims[iss]` needs JWT authentication"),
            (&pol("rules = [{ when = [{ key = \"remote.ip\", values = [\"1.2.3.4\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0]: `remote.ip` needs the original client address"),
            (&pol("rules = [{ when = [{ key = \"experimental.envoy.filters.a[b]\", values = [\"x\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0]: `experimental.envoy.filters.a[b]` reads Envoy filter metadata"),
            (&pol("rules = [{ when = [{ key = \"source.user\", values = [\"x\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0]: `source.user` is not a condition key (supported: request.headers[NAME]"),
            (&pol("rules = [{ when = [{ key = \"request.headers\", values = [\"x\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0]: write the header as request.headers[NAME]"),
            (&pol("rules = [{ when = [{ key = \"source.ip\" }] }]"), "5: authorization_policy `p`: rules[0].when[0]: set values or not_values"),
            (&pol("rules = [{ when = [{ key = \"source.ip\", values = [\"x\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0].values: `x` is not an IP address or CIDR"),
            (&pol("rules = [{ when = [{ key = \"destination.port\", not_values = [\"-1\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0].not_values: \"-1\" is not a port"),
            (&pol("rules = [{ when = [{ key = \"source.principal\", values = [\"spiffe://a/b\"] }] }]"), "5: authorization_policy `p`: rules[0].when[0].values: write principals without `spiffe://`"),
        ]);
        // Multi-line rules: each error at its own line.
        let errs = parse(
            "[[authorization_policy]]\nname = \"p\"\nrules = [\n  { from = [{ source = { ip_blocks = [\"x\"] } }] },\n  { to = [{ operation = { ports = [-1] } }] },\n]\n",
        )
        .unwrap_err();
        let lines: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
        assert_eq!(lines, vec!["6", "7"], "{errs:?}");
    }
}
