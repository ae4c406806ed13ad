//! DNS discovery against a real DNS server: dnsmasq (Debian's `dnsmasq-base`),
//! started per test on 127.0.0.1 and a free high port, answering from an
//! `--addn-hosts` file that the test rewrites (SIGHUP makes dnsmasq re-read
//! it). Needs no root. Without dnsmasq the tests fail, saying what to install.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use remora::upstream::discovery::DiscoveredEndpoint;
use remora::upstream::dns::{
    DnsCluster, DnsError, DnsHost, DnsRefresher, HostResolver, ResolvConf, Resolver,
};

const WAIT: Duration = Duration::from_secs(10);

fn dnsmasq_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!(
            "remora-dns-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A dnsmasq answering only from its hosts file and `--cname`s, for names
/// under `.test` (RFC 2606); `--local=/test/` makes it answer NXDOMAIN for
/// the rest of `.test` instead of looking for an upstream server.
struct Dnsmasq {
    bin: PathBuf,
    hosts: PathBuf,
    addr: SocketAddr,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Fails the test when dnsmasq is not installed: a skip would pass
    /// having checked nothing (tests/run installs it).
    fn start(dir: &Path, hosts: &str) -> Dnsmasq {
        let bin = dnsmasq_binary()
            .expect("dnsmasq not found: install Debian's dnsmasq-base (tests/run does)");
        let hosts_path = dir.join("hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        // A port free for both UDP and TCP; dnsmasq may still lose a race
        // for it, so try a few.
        for _ in 0..5 {
            let addr = free_port();
            let mut d = Dnsmasq {
                bin: bin.clone(),
                hosts: hosts_path.clone(),
                addr,
                child: None,
            };
            if d.run() {
                return d;
            }
        }
        panic!("dnsmasq did not start on any of 5 free ports");
    }

    /// Starts dnsmasq on `self.addr`; waits until it answers.
    fn run(&mut self) -> bool {
        let child = Command::new(&self.bin)
            .args([
                "--no-daemon",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--pid-file=",
                "--bind-interfaces",
                "--listen-address=127.0.0.1",
                "--local=/test/",
                "--cname=alias.test,web.test",
                "--cname=alias2.test,alias.test",
            ])
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--addn-hosts={}", self.hosts.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dnsmasq");
        self.child = Some(child);
        let probe = resolver(&[self.addr], &[], 1);
        let end = Instant::now() + WAIT;
        while Instant::now() < end {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return false; // exited: the port was taken
            }
            // Any answer, even NXDOMAIN, means it is serving.
            match probe.lookup("ready.test") {
                Ok(_) | Err(DnsError::NxDomain { .. }) => return true,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        panic!("dnsmasq on {} did not answer within {WAIT:?}", self.addr);
    }

    /// Replaces the hosts file atomically and makes dnsmasq re-read it.
    fn set_hosts(&self, hosts: &str) {
        let tmp = self.hosts.with_extension("tmp");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, &self.hosts).unwrap();
        let pid = self.child.as_ref().expect("dnsmasq running").id();
        // SAFETY: plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGHUP) }, 0);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> SocketAddr {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

fn resolver(servers: &[SocketAddr], search: &[&str], ndots: u8) -> Resolver {
    Resolver::new(ResolvConf {
        nameservers: servers.to_vec(),
        search: search.iter().map(|s| s.to_string()).collect(),
        ndots,
        timeout: Duration::from_millis(500),
        attempts: 1,
    })
}

fn ips(v: &[&str]) -> Vec<IpAddr> {
    v.iter().map(|s| s.parse().unwrap()).collect()
}

fn sorted(mut v: Vec<IpAddr>) -> Vec<IpAddr> {
    v.sort();
    v
}

const HOSTS: &str = "10.0.0.1 web.test\n10.0.0.2 web.test\nfd00::1 web.test\n\
                     10.0.0.9 reviews.default.svc.test\nfd00::9 only6.test\n";

#[test]
fn lookups_against_dnsmasq() {
    let dir = TempDir::new("lookup");
    let mut big = String::from(HOSTS);
    for i in 1..=100 {
        big.push_str(&format!("10.1.0.{i} big.test\n"));
    }
    let d = Dnsmasq::start(&dir.0, &big);
    let r = resolver(&[d.addr], &[], 1);

    // Several A records and an AAAA: all of them (STRICT_DNS).
    let got = r.lookup("web.test").unwrap();
    assert_eq!(sorted(got), ips(&["10.0.0.1", "10.0.0.2", "fd00::1"]));

    // AAAA only.
    assert_eq!(r.lookup("only6.test").unwrap(), ips(&["fd00::9"]));

    // A CNAME chain of two: the addresses of its end.
    let l = r.lookup_detailed("alias2.test").unwrap();
    assert_eq!(sorted(l.addrs), ips(&["10.0.0.1", "10.0.0.2", "fd00::1"]));
    assert_eq!(l.canonical_name, "web.test");

    // NXDOMAIN, named as such, with the server that said it.
    match r.lookup("nosuch.test") {
        Err(DnsError::NxDomain { name, server }) => {
            assert_eq!((name.as_str(), server), ("nosuch.test", d.addr))
        }
        other => panic!("expected NXDOMAIN, got {other:?}"),
    }

    // 100 A records do not fit in 1232 bytes: truncated over UDP, complete over TCP.
    assert_eq!(r.lookup("big.test").unwrap().len(), 100);

    // Search list: too few dots, so the search domains come first.
    let k8s = resolver(&[d.addr], &["default.svc.test", "svc.test"], 5);
    let l = k8s.lookup_detailed("reviews").unwrap();
    assert_eq!(
        (l.name.as_str(), l.addrs),
        ("reviews.default.svc.test", ips(&["10.0.0.9"]))
    );
    // Enough dots: as is first (dnsmasq refuses names outside .test), then searched.
    let k8s1 = resolver(&[d.addr], &["svc.test"], 1);
    assert_eq!(k8s1.lookup("reviews.default").unwrap(), ips(&["10.0.0.9"]));
    // Absolute names skip the search list.
    assert!(k8s.lookup("reviews.").is_err());
}

type Updates = mpsc::Receiver<(String, Vec<DiscoveredEndpoint>)>;

fn addrs(set: &[DiscoveredEndpoint]) -> Vec<String> {
    set.iter().map(|e| e.addr.to_string()).collect()
}

fn wait_for(what: impl Fn() -> bool) {
    let end = Instant::now() + WAIT;
    while !what() {
        assert!(
            Instant::now() < end,
            "condition not reached within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn refresher_follows_dnsmasq_and_keeps_the_last_good_set() {
    let dir = TempDir::new("refresh");
    let mut d = Dnsmasq::start(&dir.0, HOSTS);
    let resolver: Arc<dyn HostResolver> = Arc::new(resolver(&[d.addr], &[], 1));
    let (tx, rx): (_, Updates) = mpsc::channel();
    let tx = Mutex::new(tx);
    let refresher = DnsRefresher::start(
        vec![DnsCluster {
            name: "web".into(),
            hosts: vec![DnsHost {
                host: "web.test".into(),
                port: 8080,
                weight: 2,
                locality: "r/z".into(),
            }],
            refresh_rate: Duration::from_millis(100),
            resolver,
        }],
        move |cluster, set| {
            let _ = tx.lock().unwrap().send((cluster.to_string(), set));
        },
    )
    .unwrap();

    let (cluster, set) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(cluster, "web");
    assert_eq!(
        addrs(&set),
        ["10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080"]
    );
    assert!(set
        .iter()
        .all(|e| e.weight == 2 && e.locality == "r/z" && e.healthy));

    // The answer changes: the refresher sees it on a later round.
    d.set_hosts("10.0.0.3 web.test\n10.0.0.1 web.test\n");
    let (_, set) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(addrs(&set), ["10.0.0.1:8080", "10.0.0.3:8080"]);

    // The server goes away: lookups fail and are counted, the set stays.
    let stats = refresher.stats();
    let before = stats
        .dns_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    d.stop();
    wait_for(|| {
        stats
            .dns_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= before + 3
    });
    assert!(
        rx.try_recv().is_err(),
        "a failed lookup must not change the set"
    );
    let cs = &refresher.cluster_stats()["web"];
    assert!(cs.update_failure >= 3, "{cs:?}");
    assert!(
        cs.last_error
            .as_deref()
            .unwrap()
            .contains(&d.addr.to_string()),
        "{cs:?}"
    );

    // It comes back with another answer: picked up.
    std::fs::write(&d.hosts, "10.0.0.4 web.test\n").unwrap();
    assert!(d.run(), "dnsmasq could not take its port back");
    let (_, set) = rx.recv_timeout(WAIT).unwrap();
    assert_eq!(addrs(&set), ["10.0.0.4:8080"]);
    assert_eq!(refresher.cluster_stats()["web"].last_error, None);

    // The name is deleted: NXDOMAIN is an answer, the endpoints go (Envoy).
    d.set_hosts("10.0.0.4 other.test\n");
    let (_, set) = rx.recv_timeout(WAIT).unwrap();
    assert!(set.is_empty());
    refresher.stop();
}
