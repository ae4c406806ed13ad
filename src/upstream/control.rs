//! The upstream control plane: outside the cores, on plain threads. It turns
//! the config's clusters and what discovery finds into published endpoint
//! sets ([`members`](super::members)), and keeps the health checker probing
//! exactly those endpoints.
//!
//! ```text
//!  config (start, reload) ──┐
//!  DnsRefresher (thread) ───┼─► Shared::republish ─► MembersHandle (ArcSwap) ─► cores
//!  FileWatcher (thread) ────┘          └─► HealthChecker::update ─► HealthView (ArcSwap) ─► cores
//! ```
//!
//! A cluster keeps its last published set while a lookup fails or a file is
//! malformed (discovery's rule); a set whose endpoints did not change keeps
//! its table, so cores see no change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use tracing::{info, warn};

use super::discovery::DiscoveredEndpoint;
use super::dns::{DnsCluster, DnsHost, DnsRefresher, HostResolver, ResolvConf, Resolver};
use super::endpoints_file::{load_endpoints, FileWatcher, WatchedFile};
use super::health::{HealthChecker, HealthHandle, HealthTarget};
use super::members::{ClusterMembers, MembersHandle};
use crate::config::{Cluster, Config, Discovery};

/// What the cores read: endpoint sets and health verdicts.
#[derive(Clone)]
pub struct UpstreamView {
    pub members: Arc<MembersHandle>,
    pub health: HealthHandle,
}

/// The running control plane; stops its threads when dropped.
pub struct UpstreamControl {
    shared: Arc<Shared>,
    /// Started with the first dns cluster, the first file cluster: a sidecar
    /// with static clusters only runs neither thread.
    dns: Mutex<Option<DnsRefresher>>,
    files: Mutex<Option<FileWatcher>>,
}

struct Shared {
    state: Mutex<State>,
    members: Arc<MembersHandle>,
    health: HealthChecker,
}

#[derive(Default)]
struct State {
    /// The clusters of the config in force.
    clusters: Vec<Cluster>,
    /// Last good set per dns/file cluster.
    discovered: HashMap<String, Vec<DiscoveredEndpoint>>,
    /// Published sets, with the inputs they were built from (to reuse them).
    built: HashMap<String, (Vec<DiscoveredEndpoint>, Arc<ClusterMembers>)>,
}

impl UpstreamControl {
    /// Starts discovery and health checking for `config`'s clusters and
    /// publishes their first sets (static ones at once; dns and file ones
    /// as soon as their first answer is in).
    pub fn start(config: &Config) -> std::io::Result<UpstreamControl> {
        let health = HealthChecker::start().map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            members: Arc::new(MembersHandle::default()),
            health,
        });
        let control = UpstreamControl {
            shared,
            dns: Mutex::new(None),
            files: Mutex::new(None),
        };
        control.apply(config);
        Ok(control)
    }

    /// What discovery threads call with a cluster's new endpoint set.
    fn on_change(&self) -> impl Fn(&str, Vec<DiscoveredEndpoint>) + Send + 'static {
        let s = Arc::downgrade(&self.shared);
        move |cluster: &str, endpoints: Vec<DiscoveredEndpoint>| {
            if let Some(s) = s.upgrade() {
                info!(
                    cluster,
                    endpoints = endpoints.len(),
                    "discovery: new endpoint set"
                );
                s.lock().discovered.insert(cluster.to_string(), endpoints);
                s.republish();
            }
        }
    }

    pub fn view(&self) -> UpstreamView {
        UpstreamView {
            members: self.shared.members.clone(),
            health: self.shared.health.handle(),
        }
    }

    /// Makes discovery, health checks and the published sets follow a new
    /// config. Call it before publishing the config, so that cores find a
    /// set for every cluster the config names.
    pub fn apply(&self, config: &Config) {
        {
            let mut st = self.shared.lock();
            st.clusters = config.clusters.clone();
            let names: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
            st.discovered.retain(|n, _| names.contains(&n.as_str()));
            st.built.retain(|n, _| names.contains(&n.as_str()));
        }
        let mut dns = Vec::new();
        let mut files = Vec::new();
        for c in &config.clusters {
            let known = self.shared.lock().discovered.contains_key(&c.name);
            match &c.discovery {
                Discovery::Static => {}
                Discovery::Dns {
                    refresh_rate,
                    resolvers,
                } => {
                    let cluster = DnsCluster {
                        name: c.name.clone(),
                        hosts: c.endpoints.iter().filter_map(dns_host).collect(),
                        refresh_rate: *refresh_rate,
                        resolver: resolver(resolvers),
                    };
                    // A new cluster gets its first answer before it is
                    // published (Envoy warms clusters the same way); a name
                    // that does not resolve leaves it empty (503 UH) and the
                    // refresher keeps trying.
                    if !known {
                        if let Some(eps) = resolve_now(&cluster) {
                            self.shared.lock().discovered.insert(c.name.clone(), eps);
                        }
                    }
                    dns.push(cluster);
                }
                Discovery::File { path } => {
                    if !known {
                        match load_endpoints(path) {
                            Ok(eps) => {
                                let eps = eps.iter().map(|e| e.to_discovered()).collect();
                                self.shared.lock().discovered.insert(c.name.clone(), eps);
                            }
                            Err(e) => warn!(cluster = %c.name, "endpoints file: {e}"),
                        }
                    }
                    files.push(WatchedFile {
                        cluster: c.name.clone(),
                        path: path.clone(),
                    });
                }
            }
        }
        {
            let mut running = self.dns.lock().unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some(r) => r.update(dns),
                None if !dns.is_empty() => match DnsRefresher::start(dns, self.on_change()) {
                    Ok(r) => *running = Some(r),
                    Err(e) => warn!(error = %e, "cannot start the DNS refresher"),
                },
                None => {}
            }
        }
        {
            let mut running = self.files.lock().unwrap_or_else(|e| e.into_inner());
            match running.as_ref() {
                Some(w) => w.update(files),
                None if !files.is_empty() => match FileWatcher::start(files, self.on_change()) {
                    Ok(w) => *running = Some(w),
                    Err(e) => warn!(error = %e, "cannot start the endpoints-file watcher"),
                },
                None => {}
            }
        }
        self.shared.republish();
    }

    /// Discovery's per-cluster errors, for the admin page.
    pub fn file_errors(&self) -> std::collections::BTreeMap<String, String> {
        self.files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|w| w.last_errors())
            .unwrap_or_default()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding it leaves plain data behind.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rebuilds what changed, publishes every set, and points the health
    /// checker at the endpoints of health-checked clusters.
    fn republish(&self) {
        let mut st = self.lock();
        let mut published = HashMap::new();
        let mut targets = Vec::new();
        let clusters = st.clusters.clone();
        for c in &clusters {
            let endpoints = match &c.discovery {
                Discovery::Static => c
                    .endpoints
                    .iter()
                    .filter_map(|e| {
                        Some(DiscoveredEndpoint {
                            addr: e.address.parse().ok()?,
                            weight: e.weight,
                            locality: e.locality.clone(),
                            healthy: true,
                        })
                    })
                    .collect(),
                _ => match st.discovered.get(&c.name) {
                    Some(e) => e.clone(),
                    // No answer yet: an empty set (503 UH) until there is.
                    None => Vec::new(),
                },
            };
            let members = match st.built.get(&c.name) {
                Some((inputs, m)) if *inputs == endpoints && *m.table.policy() == c.lb_policy => {
                    m.clone()
                }
                _ => {
                    let m = Arc::new(ClusterMembers::build(&c.lb_policy, &endpoints));
                    st.built.insert(c.name.clone(), (endpoints, m.clone()));
                    m
                }
            };
            if let Some(hc) = &c.health_check {
                targets.extend(m_addrs(&members).map(|addr| HealthTarget {
                    cluster: c.name.clone(),
                    addr,
                    config: hc.clone(),
                }));
            }
            published.insert(c.name.clone(), members);
        }
        self.members.publish(published);
        drop(st);
        if let Err(e) = self.health.update(targets) {
            warn!(error = %e, "health checks not updated");
        }
    }
}

fn m_addrs(m: &ClusterMembers) -> impl Iterator<Item = SocketAddr> + '_ {
    m.members.iter().map(|m| m.addr)
}

fn dns_host(e: &crate::config::Endpoint) -> Option<DnsHost> {
    let (host, port) = e.address.rsplit_once(':')?;
    Some(DnsHost {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port: port.parse().ok()?,
        weight: e.weight,
        locality: e.locality.clone(),
    })
}

/// Resolves every host of `c` once; `None` (with a warning) if any lookup
/// fails, so that a partial answer is not published as the whole set.
fn resolve_now(c: &DnsCluster) -> Option<Vec<DiscoveredEndpoint>> {
    let mut out = Vec::new();
    for h in &c.hosts {
        match c.resolver.resolve(&h.host) {
            Ok(ips) => out.extend(ips.into_iter().map(|ip| DiscoveredEndpoint {
                addr: SocketAddr::new(ip, h.port),
                weight: h.weight,
                locality: h.locality.clone(),
                healthy: true,
            })),
            Err(e) => {
                warn!(cluster = %c.name, host = %h.host, error = %e, "DNS lookup failed; the cluster has no endpoints until it succeeds");
                return None;
            }
        }
    }
    Some(out)
}

/// The cluster's resolvers, or the system's (/etc/resolv.conf).
fn resolver(servers: &[SocketAddr]) -> Arc<dyn HostResolver> {
    let base = ResolvConf::system().unwrap_or_else(|e| {
        warn!(error = %e, "cannot read /etc/resolv.conf; DNS uses its defaults");
        ResolvConf::default()
    });
    let conf = if servers.is_empty() {
        base
    } else {
        ResolvConf {
            nameservers: servers.to_vec(),
            ..base
        }
    };
    Arc::new(Resolver::new(conf))
}
