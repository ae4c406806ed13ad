//! DNS service discovery for `discovery = "dns"` clusters, with Envoy's
//! STRICT_DNS semantics: every address a name resolves to is an endpoint, the
//! names are re-resolved every `dns_refresh_rate` (5 s by default), and a
//! lookup that fails keeps the endpoints of the last one that worked.
//!
//! ```text
//! resolv.conf / dns_resolvers ─► ResolvConf ─► Resolver::lookup (blocking, UDP + TCP)
//!                                                 ▲
//! DnsRefresher thread ("remora-dns") ─ per cluster, every refresh_rate ─┘
//!     └─ endpoint set changed? ─► callback(cluster, Vec<DiscoveredEndpoint>)
//! ```
//!
//! Everything here blocks on sockets, so none of it may run on an executor:
//! [`DnsRefresher`] owns a plain std thread, and [`Resolver::lookup`] is meant
//! to be called from one. The message codec is in `wire`.
//!
//! What this resolver does (a stub resolver, RFC 1034 §5.3.1, like glibc's and
//! c-ares', which Envoy uses): A and AAAA queries are sent together over one
//! UDP socket to each configured server in turn, each waiting `timeout`, for
//! `attempts` rounds; a truncated answer (TC bit) is asked again over TCP
//! (RFC 7766 §5); a server that rejects EDNS(0) with FORMERR is asked again
//! without it (RFC 6891 §7). Names without enough dots go through the `search`
//! list first (resolv.conf(5) `ndots`), as Kubernetes service names need.
//! What it does not do: read /etc/hosts or the RES_OPTIONS / LOCALDOMAIN
//! environment variables, cache, or validate DNSSEC.

mod refresh;
mod wire;

use std::io::{self, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpStream, UdpSocket,
};
use std::path::Path;
use std::time::{Duration, Instant};

pub use refresh::{
    ClusterDnsStats, DnsCluster, DnsHost, DnsRefresher, DnsStats, HostResolver,
    DEFAULT_REFRESH_RATE,
};
use wire::{Name, QType, Response, WireError};

/// The resolver settings of resolv.conf(5) that a stub resolver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Servers in the order they are tried.
    pub nameservers: Vec<SocketAddr>,
    /// Domains appended to names with fewer than `ndots` dots (lower case,
    /// without the trailing dot).
    pub search: Vec<String>,
    /// A name with at least this many dots is first tried as it is.
    pub ndots: u8,
    /// How long to wait for one server's answer.
    pub timeout: Duration,
    /// Rounds over the whole server list.
    pub attempts: u32,
}

/// glibc's limits and defaults (resolv.conf(5), resolv.h).
const MAXNS: usize = 3;
const DEFAULT_NDOTS: u8 = 1;
const MAX_NDOTS: u8 = 15;
const DEFAULT_TIMEOUT_SECS: u64 = 5;
const MAX_TIMEOUT_SECS: u64 = 30;
const DEFAULT_ATTEMPTS: u32 = 2;
const MAX_ATTEMPTS: u32 = 5;

impl Default for ResolvConf {
    /// What glibc uses with no resolv.conf: the local server, no search list.
    fn default() -> ResolvConf {
        ResolvConf {
            nameservers: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, 53))],
            search: Vec::new(),
            ndots: DEFAULT_NDOTS,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            attempts: DEFAULT_ATTEMPTS,
        }
    }
}

impl ResolvConf {
    /// Reads /etc/resolv.conf; a missing file gives the defaults, as in glibc.
    pub fn system() -> io::Result<ResolvConf> {
        ResolvConf::load(Path::new("/etc/resolv.conf"))
    }

    pub fn load(path: &Path) -> io::Result<ResolvConf> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(parse_resolv_conf(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ResolvConf::default()),
            Err(e) => Err(e),
        }
    }
}

/// Parses resolv.conf(5) text. Never fails: like glibc, lines and options it
/// does not understand are skipped, values are clamped to glibc's limits (at
/// most 3 nameservers, ndots <= 15, timeout <= 30 s, attempts <= 5), and with
/// no usable `nameserver` line the local server 127.0.0.1:53 is used.
/// Of `search` and `domain`, the last one wins. Link-local IPv6 servers with a
/// `%scope` are skipped (they would need the interface index).
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut conf = ResolvConf {
        nameservers: Vec::new(),
        ..ResolvConf::default()
    };
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword {
            "nameserver" => {
                let ip = words.next().and_then(|w| w.parse::<IpAddr>().ok());
                if let Some(ip) = ip {
                    if conf.nameservers.len() < MAXNS {
                        conf.nameservers.push(SocketAddr::new(ip, 53));
                    }
                }
            }
            "search" | "domain" => {
                conf.search = words
                    .take_while(|w| !w.starts_with('#') && !w.starts_with(';'))
                    .filter(|w| Name::from_host(w).is_ok())
                    .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                    .collect();
                if keyword == "domain" {
                    conf.search.truncate(1);
                }
            }
            "options" => {
                for opt in words {
                    let Some((key, value)) = opt.split_once(':') else {
                        continue;
                    };
                    let Ok(n) = value.parse::<u64>() else {
                        continue;
                    };
                    match key {
                        "ndots" => conf.ndots = n.min(u64::from(MAX_NDOTS)) as u8,
                        "timeout" => {
                            conf.timeout = Duration::from_secs(n.clamp(1, MAX_TIMEOUT_SECS))
                        }
                        "attempts" => conf.attempts = n.clamp(1, u64::from(MAX_ATTEMPTS)) as u32,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if conf.nameservers.is_empty() {
        conf.nameservers = ResolvConf::default().nameservers;
    }
    conf
}

/// Which address families a lookup asks for (Envoy's `dns_lookup_family`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LookupFamily {
    /// A and AAAA, every address of both (Envoy's `ALL`).
    #[default]
    All,
    V4Only,
    V6Only,
}

impl LookupFamily {
    fn qtypes(self) -> &'static [QType] {
        match self {
            LookupFamily::All => &[QType::A, QType::Aaaa],
            LookupFamily::V4Only => &[QType::A],
            LookupFamily::V6Only => &[QType::Aaaa],
        }
    }

    fn wants(self, ip: &IpAddr) -> bool {
        match self {
            LookupFamily::All => true,
            LookupFamily::V4Only => ip.is_ipv4(),
            LookupFamily::V6Only => ip.is_ipv6(),
        }
    }
}

/// Why a lookup gave no addresses. Each variant names the server that said so
/// (or did not answer), so that a log line points at the right resolver.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("`{name}` is not a valid host name: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("no DNS resolvers configured: list some in `dns_resolvers`, or leave it out to use /etc/resolv.conf")]
    NoResolvers,
    /// An authoritative "no such name" (RCODE 3, RFC 1035 §4.1.1).
    #[error("`{name}` does not exist (NXDOMAIN from {server})")]
    NxDomain { name: String, server: SocketAddr },
    /// The name exists but has no address of the asked families (RFC 2308 §2.2).
    #[error("`{name}` has no A/AAAA records (answer from {server})")]
    NoData { name: String, server: SocketAddr },
    #[error("DNS resolver {server} did not answer for `{name}` within {timeout:?}; is it running and reachable?")]
    Timeout {
        name: String,
        server: SocketAddr,
        timeout: Duration,
    },
    /// SERVFAIL, REFUSED, NOTIMP, ...: the server answered but would not resolve.
    #[error("DNS resolver {server} answered {} for `{name}`", rcode_name(*.rcode))]
    Rcode {
        name: String,
        server: SocketAddr,
        rcode: u8,
    },
    #[error("malformed answer from DNS resolver {server} for `{name}`: {reason}")]
    Malformed {
        name: String,
        server: SocketAddr,
        reason: &'static str,
    },
    #[error("cannot talk to DNS resolver {server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl DnsError {
    /// An authoritative "no address" answer (NXDOMAIN or NODATA) rather than
    /// a failure to get an answer. Envoy's c-ares resolver reports these as a
    /// successful resolution with no addresses (`isResponseWithNoRecords`), so
    /// a STRICT_DNS cluster whose name is deleted loses its endpoints, while
    /// a timeout or SERVFAIL keeps the last good ones.
    pub fn is_negative_answer(&self) -> bool {
        matches!(self, DnsError::NxDomain { .. } | DnsError::NoData { .. })
    }
}

fn rcode_name(rcode: u8) -> String {
    let name = match rcode {
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "an error",
    };
    format!("{name} (rcode {rcode})")
}

/// The result of a successful lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The name that answered, after the search list was applied.
    pub name: String,
    /// The end of its CNAME chain (equal to `name` without CNAMEs).
    pub canonical_name: String,
    /// Every address, A records first, in answer order, without duplicates.
    pub addrs: Vec<IpAddr>,
    /// The smallest TTL over the records used (the CNAME chain included).
    pub ttl: Duration,
}

/// A blocking stub resolver. Cheap to clone; holds no sockets between lookups
/// (each lookup uses a fresh UDP socket, so a fresh random source port).
#[derive(Debug, Clone)]
pub struct Resolver {
    conf: ResolvConf,
    family: LookupFamily,
}

/// The outcome of resolving one fully qualified candidate name.
enum NameResult {
    Found(Lookup),
    /// NXDOMAIN (`nxdomain`) or NODATA from `server`.
    Negative {
        nxdomain: bool,
        server: SocketAddr,
    },
    Failed(DnsError),
}

impl Resolver {
    pub fn new(conf: ResolvConf) -> Resolver {
        Resolver {
            conf,
            family: LookupFamily::All,
        }
    }

    /// With the system's /etc/resolv.conf.
    pub fn system() -> io::Result<Resolver> {
        Ok(Resolver::new(ResolvConf::system()?))
    }

    pub fn with_family(mut self, family: LookupFamily) -> Resolver {
        self.family = family;
        self
    }

    pub fn conf(&self) -> &ResolvConf {
        &self.conf
    }

    /// The addresses of `host` (every A and AAAA record, STRICT_DNS style).
    /// Blocks for up to `timeout × attempts × servers` per search candidate.
    pub fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        self.lookup_detailed(host).map(|l| l.addrs)
    }

    /// Like [`Resolver::lookup`], with the name that answered and the TTL.
    pub fn lookup_detailed(&self, host: &str) -> Result<Lookup, DnsError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Ok(Lookup {
                name: host.to_string(),
                canonical_name: host.to_string(),
                addrs: vec![ip],
                ttl: Duration::from_secs(u64::from(u32::MAX)),
            });
        }
        let base = Name::from_host(host).map_err(|reason| DnsError::InvalidName {
            name: host.to_string(),
            reason,
        })?;
        // RFC 6761 §6.3: `localhost` and names under it are the loopback
        // addresses, never sent to a server.
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            let addrs: Vec<IpAddr> = [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]
            .into_iter()
            .filter(|ip| self.family.wants(ip))
            .collect();
            return Ok(Lookup {
                name: lower.clone(),
                canonical_name: lower,
                addrs,
                ttl: Duration::from_secs(u64::from(u32::MAX)),
            });
        }
        if self.conf.nameservers.is_empty() {
            return Err(DnsError::NoResolvers);
        }
        let mut first_failure = None;
        let mut nodata = None;
        let mut nxdomain = None;
        for candidate in self.candidates(host, &base) {
            match self.resolve_name(&candidate, 0) {
                NameResult::Found(lookup) => return Ok(lookup),
                NameResult::Negative {
                    nxdomain: true,
                    server,
                } => {
                    nxdomain.get_or_insert(server);
                }
                NameResult::Negative { server, .. } => {
                    nodata.get_or_insert(server);
                }
                NameResult::Failed(e) => {
                    first_failure.get_or_insert(e);
                }
            }
        }
        // As glibc's res_search: when any candidate failed, "no such name"
        // cannot be concluded; a NODATA anywhere beats NXDOMAIN.
        let name = host.to_string();
        match (first_failure, nodata, nxdomain) {
            (Some(e), _, _) => Err(e),
            (None, Some(server), _) => Err(DnsError::NoData { name, server }),
            (None, None, Some(server)) => Err(DnsError::NxDomain { name, server }),
            (None, None, None) => Err(DnsError::InvalidName {
                name,
                reason: "too long with every search domain",
            }),
        }
    }

    /// The names to try, in order (resolv.conf(5), `ndots` and `search`):
    /// a name ending in '.' is absolute; one with at least `ndots` dots is
    /// tried as it is first, then with each search domain; one with fewer
    /// dots is tried with each search domain first, then as it is.
    fn candidates(&self, host: &str, base: &Name) -> Vec<Name> {
        if host.ends_with('.') {
            return vec![base.clone()];
        }
        let searched = self
            .conf
            .search
            .iter()
            .filter_map(|d| Name::from_host(d).ok())
            .filter_map(|d| base.join(&d));
        let dots = host.matches('.').count();
        if dots >= usize::from(self.conf.ndots) {
            std::iter::once(base.clone()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(base.clone())).collect()
        }
    }

    /// Resolves one absolute name: A and AAAA (per `family`) from the servers
    /// in order, `attempts` rounds, until every type has an answer.
    fn resolve_name(&self, name: &Name, depth: usize) -> NameResult {
        let qtypes = self.family.qtypes();
        let mut answers: Vec<(QType, SocketAddr, Response)> = Vec::new();
        let mut last_error = None;
        'rounds: for _ in 0..self.conf.attempts.max(1) {
            for &server in &self.conf.nameservers {
                let todo: Vec<QType> = qtypes
                    .iter()
                    .copied()
                    .filter(|q| !answers.iter().any(|a| a.0 == *q))
                    .collect();
                if todo.is_empty() {
                    break 'rounds;
                }
                for (qtype, result) in self.ask(server, name, &todo) {
                    match result {
                        Ok(r) if matches!(r.rcode, wire::RCODE_NOERROR | wire::RCODE_NXDOMAIN) => {
                            answers.push((qtype, server, r))
                        }
                        // SERVFAIL, REFUSED, ...: try the next server.
                        Ok(r) => {
                            last_error = Some(DnsError::Rcode {
                                name: name.to_dotted(),
                                server,
                                rcode: r.rcode,
                            })
                        }
                        Err(e) => last_error = Some(e),
                    }
                }
            }
        }
        // Any address is a success: a lost AAAA answer must not hide the A records.
        let mut addrs: Vec<IpAddr> = Vec::new();
        let mut ttl = u32::MAX;
        let mut canonical = None;
        for q in qtypes {
            for (_, _, r) in answers.iter().filter(|a| a.0 == *q) {
                if !r.addrs.is_empty() {
                    addrs.extend(
                        r.addrs
                            .iter()
                            .filter(|ip| !addrs.contains(ip))
                            .collect::<Vec<_>>(),
                    );
                    ttl = ttl.min(r.ttl);
                    canonical.get_or_insert_with(|| r.final_name.to_dotted());
                }
            }
        }
        if let Some(canonical_name) = canonical {
            return NameResult::Found(Lookup {
                name: name.to_dotted(),
                canonical_name,
                addrs,
                ttl: Duration::from_secs(u64::from(ttl)),
            });
        }
        if answers.len() < qtypes.len() {
            return NameResult::Failed(last_error.unwrap_or(DnsError::NoResolvers));
        }
        // A CNAME chain whose end the answer does not cover (a server that
        // did not chase it) is chased with a new query, RFC 1034 §5.3.3.
        if let Some((_, server, r)) = answers
            .iter()
            .find(|a| a.2.rcode == wire::RCODE_NOERROR && &a.2.final_name != name)
        {
            if depth >= wire::MAX_CNAME_HOPS {
                return NameResult::Failed(DnsError::Malformed {
                    name: name.to_dotted(),
                    server: *server,
                    reason: "CNAME chain too long",
                });
            }
            return self.resolve_name(&r.final_name.clone(), depth + 1);
        }
        NameResult::Negative {
            nxdomain: answers.iter().all(|a| a.2.rcode == wire::RCODE_NXDOMAIN),
            server: answers[0].1,
        }
    }

    /// Asks one server about `name` for each of `qtypes`.
    fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        qtypes: &[QType],
    ) -> Vec<(QType, Result<Response, DnsError>)> {
        let mut results = self.udp(server, name, qtypes, true);
        for (qtype, result) in &mut results {
            // RFC 6891 §7: a server without EDNS support answers FORMERR;
            // ask again without the OPT record.
            if matches!(result, Ok(r) if r.rcode == wire::RCODE_FORMERR) {
                if let Some((_, again)) = self.udp(server, name, &[*qtype], false).pop() {
                    *result = again;
                }
            }
            // RFC 7766 §5: a truncated answer is asked again over TCP.
            if matches!(result, Ok(r) if r.truncated) {
                *result = self.tcp(server, name, *qtype);
            }
        }
        results
    }

    /// Sends one query per type over a single connected UDP socket and waits
    /// up to `timeout` for all the answers. Connecting the socket makes the
    /// kernel drop datagrams from other sources and report ICMP
    /// port-unreachable (a server that is down) as ECONNREFUSED at once.
    fn udp(
        &self,
        server: SocketAddr,
        name: &Name,
        qtypes: &[QType],
        edns: bool,
    ) -> Vec<(QType, Result<Response, DnsError>)> {
        let io_error = |e: &io::Error| DnsError::Io {
            server,
            source: io::Error::new(e.kind(), e.to_string()),
        };
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(),
        };
        let socket = match UdpSocket::bind(local).and_then(|s| s.connect(server).map(|()| s)) {
            Ok(s) => s,
            Err(e) => return qtypes.iter().map(|q| (*q, Err(io_error(&e)))).collect(),
        };
        let mut results: Vec<(QType, Option<Result<Response, DnsError>>)> =
            qtypes.iter().map(|q| (*q, None)).collect();
        let mut pending: Vec<(usize, u16)> = Vec::new();
        for (i, (qtype, result)) in results.iter_mut().enumerate() {
            let id = loop {
                let id = random_id();
                if !pending.iter().any(|p| p.1 == id) {
                    break id;
                }
            };
            match socket.send(&wire::encode_query(id, name, *qtype, edns)) {
                Ok(_) => pending.push((i, id)),
                Err(e) => *result = Some(Err(io_error(&e))),
            }
        }
        let deadline = Instant::now() + self.conf.timeout;
        let mut buf = vec![0u8; 65_535];
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Err(e) = socket.set_read_timeout(Some(left)) {
                for (i, _) in pending.drain(..) {
                    results[i].1 = Some(Err(io_error(&e)));
                }
                break;
            }
            let n = match socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    for (i, _) in pending.drain(..) {
                        results[i].1 = Some(Err(io_error(&e)));
                    }
                    break;
                }
            };
            let msg = &buf[..n];
            let Some(id) = wire::message_id(msg) else {
                continue;
            };
            let Some(p) = pending.iter().position(|p| p.1 == id) else {
                continue;
            };
            let i = pending[p].0;
            let decoded = match wire::decode_response(msg, id, name, results[i].0) {
                Err(WireError::Mismatch) => continue,
                Err(WireError::Malformed(reason)) => Err(DnsError::Malformed {
                    name: name.to_dotted(),
                    server,
                    reason,
                }),
                Ok(r) => Ok(r),
            };
            results[i].1 = Some(decoded);
            pending.remove(p);
        }
        results
            .into_iter()
            .map(|(qtype, r)| {
                let r = r.unwrap_or_else(|| {
                    Err(DnsError::Timeout {
                        name: name.to_dotted(),
                        server,
                        timeout: self.conf.timeout,
                    })
                });
                (qtype, r)
            })
            .collect()
    }

    /// One query over TCP, two-byte length prefix (RFC 1035 §4.2.2), all
    /// within `timeout`.
    fn tcp(&self, server: SocketAddr, name: &Name, qtype: QType) -> Result<Response, DnsError> {
        let deadline = Instant::now() + self.conf.timeout;
        let timeout = || DnsError::Timeout {
            name: name.to_dotted(),
            server,
            timeout: self.conf.timeout,
        };
        let io_error = |source: io::Error| match source.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timeout(),
            _ => DnsError::Io { server, source },
        };
        let left = || {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                Err(timeout())
            } else {
                Ok(left)
            }
        };
        let mut stream = TcpStream::connect_timeout(&server, left()?).map_err(io_error)?;
        let _ = stream.set_nodelay(true);
        let id = random_id();
        let query = wire::encode_query(id, name, qtype, true);
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.set_write_timeout(Some(left()?)).map_err(io_error)?;
        stream.write_all(&framed).map_err(io_error)?;
        let mut len = [0u8; 2];
        stream.set_read_timeout(Some(left()?)).map_err(io_error)?;
        stream.read_exact(&mut len).map_err(io_error)?;
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.set_read_timeout(Some(left()?)).map_err(io_error)?;
        stream.read_exact(&mut msg).map_err(io_error)?;
        let malformed = |reason| DnsError::Malformed {
            name: name.to_dotted(),
            server,
            reason,
        };
        match wire::decode_response(&msg, id, name, qtype) {
            Ok(r) if r.truncated => Err(malformed("truncated answer over TCP")),
            Ok(r) => Ok(r),
            Err(WireError::Mismatch) => Err(malformed("answer over TCP does not match the query")),
            Err(WireError::Malformed(reason)) => Err(malformed(reason)),
        }
    }
}

/// A random query ID (RFC 5452 §4.3: IDs must be unpredictable).
fn random_id() -> u16 {
    let mut b = [0u8; 2];
    if getrandom::getrandom(&mut b).is_err() {
        // Not expected on Linux; the random source port still protects us.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        return (nanos ^ (nanos >> 16)) as u16;
    }
    u16::from_be_bytes(b)
}

#[cfg(test)]
mod tests;
