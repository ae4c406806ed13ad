//! Cluster traffic policy through the built binary: load balancing (weighted
//! round robin, least request, ring hash, Maglev), active health checks,
//! outlier detection, circuit breakers (L7 and L4), panic mode, DNS and
//! endpoints-file discovery, retries to other hosts, and config validation.
//!
//! Backends are threads in this process (`Backend`): each answers its own
//! name, counts the requests it sees, can hold them (a gate) and answers a
//! chosen status to traffic and to its health path. Nothing here asserts on
//! time: every wait is a bounded poll for a condition (`WAIT`), and the
//! assertions are on counts, statuses, response flags and admin output.
//! Tests whose counts depend on per-core state (balancer cursors, active
//! requests, breakers, ejections) run the proxy with `--cores 1`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Upper bound of every wait for a condition.
const WAIT: Duration = Duration::from_secs(10);
/// The path the backends answer with their health status.
const HEALTH_PATH: &str = "/healthz";

/// Polls `cond` every 20 ms until it holds; panics naming `what` after `WAIT`.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------

/// What a backend shares with its connection threads.
struct BackendState {
    name: String,
    /// Status answered to every request but the health path.
    status: AtomicU16,
    /// Status answered to `HEALTH_PATH`.
    health: AtomicU16,
    /// While true, requests (not health checks) wait before they are answered.
    held: Mutex<bool>,
    gate: Condvar,
    /// Requests seen, health checks not counted.
    hits: AtomicU64,
    /// Health checks seen.
    health_hits: AtomicU64,
    /// Requests being served now, and the most at once.
    active: AtomicUsize,
    max_active: AtomicUsize,
}

/// An HTTP/1.1 backend on its own threads (keep-alive, one thread per
/// connection). It answers its name as the body.
struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
}

impl Backend {
    fn start(name: &str) -> Backend {
        Backend::on(name, TcpListener::bind("127.0.0.1:0").unwrap())
    }

    fn on(name: &str, listener: TcpListener) -> Backend {
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            status: AtomicU16::new(200),
            health: AtomicU16::new(200),
            held: Mutex::new(false),
            gate: Condvar::new(),
            hits: AtomicU64::new(0),
            health_hits: AtomicU64::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
        });
        let st = state.clone();
        thread::spawn(move || {
            for s in listener.incoming().map_while(Result::ok) {
                let st = st.clone();
                thread::spawn(move || serve(s, &st));
            }
        });
        Backend { addr, state }
    }

    fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }
    fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }
    fn max_active(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }
    fn set_status(&self, s: u16) {
        self.state.status.store(s, Ordering::SeqCst);
    }
    fn set_health(&self, s: u16) {
        self.state.health.store(s, Ordering::SeqCst);
    }
    /// Requests from now on wait until `release`.
    fn hold(&self) {
        *self.state.held.lock().unwrap() = true;
    }
    fn release(&self) {
        *self.state.held.lock().unwrap() = false;
        self.state.gate.notify_all();
    }
}

impl Drop for Backend {
    /// Held requests go free (their threads would otherwise wait out `WAIT`).
    fn drop(&mut self) {
        self.release();
    }
}

fn serve(s: TcpStream, st: &BackendState) {
    let _ = s.set_nodelay(true);
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let (mut len, mut close) = (0u64, false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            if h == "\r\n" {
                break;
            }
            let (n, v) = h.split_once(':').unwrap_or((&h, ""));
            let v = v.trim();
            if n.eq_ignore_ascii_case("content-length") {
                len = v.parse().unwrap_or(0);
            } else if n.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            }
        }
        let _ = std::io::copy(&mut (&mut r).take(len), &mut std::io::sink());
        let status = if path == HEALTH_PATH {
            st.health_hits.fetch_add(1, Ordering::SeqCst);
            st.health.load(Ordering::SeqCst)
        } else {
            st.hits.fetch_add(1, Ordering::SeqCst);
            let now = st.active.fetch_add(1, Ordering::SeqCst) + 1;
            st.max_active.fetch_max(now, Ordering::SeqCst);
            let held = st.held.lock().unwrap();
            drop(st.gate.wait_timeout_while(held, WAIT, |h| *h).unwrap());
            st.active.fetch_sub(1, Ordering::SeqCst);
            st.status.load(Ordering::SeqCst)
        };
        let body = &st.name;
        let conn = if close { "Connection: close\r\n" } else { "" };
        let head = format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{conn}\r\n",
            body.len()
        );
        if w.write_all(format!("{head}{body}").as_bytes()).is_err() || close {
            return;
        }
    }
}

/// A TCP echo server that counts the connections it accepted.
fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    thread::spawn(move || {
        for mut s in l.incoming().map_while(Result::ok) {
            n.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
            });
        }
    });
    (addr, accepted)
}

/// An address nothing listens on (connections are refused).
/// Two listeners on the same port, one on 127.0.0.1 and one on 127.0.0.2.
fn pair_on_one_port() -> (TcpListener, TcpListener) {
    for _ in 0..20 {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if let Ok(b) = TcpListener::bind(("127.0.0.2", port)) {
            return (a, b);
        }
    }
    panic!("no port free on both 127.0.0.1 and 127.0.0.2");
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Resp {
    status: u16,
    body: String,
}

/// A keep-alive HTTP/1.1 client on one connection.
struct Client {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

impl Client {
    fn new(port: u16) -> Client {
        let s = connect(port);
        Client {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    /// GET `path` with `Host: host` and extra headers.
    fn get(&mut self, path: &str, host: &str, headers: &[(&str, &str)]) -> Resp {
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (n, v) in headers {
            req += &format!("{n}: {v}\r\n");
        }
        req += "\r\n";
        self.w.write_all(req.as_bytes()).unwrap();
        self.response()
    }

    /// One response (every response here has a Content-Length).
    fn response(&mut self) -> Resp {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).unwrap();
            assert!(n > 0, "connection closed inside a response head: {head:?}");
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no content-length: {head:?}"));
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body).unwrap();
        Resp {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// One request on a connection of its own (so it may land on any core).
fn get_once(port: u16, path: &str, headers: &[(&str, &str)]) -> Resp {
    Client::new(port).get(path, "x", headers)
}

// ---------------------------------------------------------------------------
// Config and admin
// ---------------------------------------------------------------------------

/// The admin and Prometheus ports of a proxy.
#[derive(Clone, Copy)]
struct Admin {
    admin: u16,
    prom: u16,
}

impl Admin {
    fn new() -> Admin {
        Admin {
            admin: free_port(),
            prom: free_port(),
        }
    }

    fn toml(&self) -> String {
        format!(
            "[admin]\naddress = \"127.0.0.1:{}\"\nprometheus_address = \"127.0.0.1:{}\"\nreadiness_address = \"\"\nwatch_config = false\n",
            self.admin, self.prom
        )
    }

    /// GET /clusters (Envoy's text form).
    fn clusters(&self) -> String {
        http_body(self.admin, "/clusters")
    }

    fn prometheus(&self) -> String {
        http_body(self.prom, "/stats/prometheus")
    }

    /// The `health_flags` that /clusters shows for `addr` in `cluster`.
    fn health_flags(&self, cluster: &str, addr: SocketAddr) -> Option<String> {
        let prefix = format!("{cluster}::{addr}::health_flags::");
        self.clusters()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
    }

    /// Waits until /clusters shows `flags` for `addr` in `cluster`.
    fn wait_flags(&self, cluster: &str, addr: SocketAddr, flags: &str) {
        wait_until(&format!("{cluster}::{addr} to be {flags}"), || {
            self.health_flags(cluster, addr).as_deref() == Some(flags)
        });
    }

    /// The value of the Prometheus series `series` (name and labels as
    /// rendered), if present.
    fn metric(&self, series: &str) -> Option<f64> {
        self.prometheus().lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().unwrap())
        })
    }
}

/// The body of a GET on an admin port (answered with 200).
fn http_body(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{path}: {out}");
    out.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// The start of every config here: capture off, admin as given (or off),
/// a JSON access log to `log` (or none).
fn base(admin: Option<&Admin>, log: Option<&Path>) -> String {
    let mut s = String::from("[runtime]\ndrain_timeout = \"1s\"\n[capture]\nenabled = false\n");
    s += &admin.map_or("[admin]\nenabled = false\n".to_string(), Admin::toml);
    if let Some(p) = log {
        s += &format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            p.display()
        );
    }
    s
}

/// An HTTP listener on `port` (requests follow the `[[virtual_host]]` routes).
fn http_listener(port: u16, cluster: &str) -> String {
    format!(
        "[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"{cluster}\"\nprotocol = \"http\"\n"
    )
}

/// A plain TCP (L4) listener on `port` to `cluster`.
fn tcp_listener(port: u16, cluster: &str) -> String {
    format!(
        "[[listener]]\nname = \"tcp{port}\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"{cluster}\"\nprotocol = \"tcp\"\n"
    )
}

/// Whether the proxy resets `s` without a byte (how L4 refuses).
fn is_reset(s: &mut TcpStream) -> bool {
    matches!(s.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

/// One virtual host for every domain: (path prefix, cluster, extra route keys).
fn routes(list: &[(&str, &str, &str)]) -> String {
    let mut s = String::from("[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n");
    for (prefix, cluster, extra) in list {
        s += &format!(
            "[[virtual_host.route]]\nmatch = {{ prefix = \"{prefix}\" }}\ncluster = \"{cluster}\"\n{extra}\n"
        );
    }
    s
}

/// A `[[cluster]]` with these endpoints (TOML values) and extra keys.
fn cluster(name: &str, endpoints: &[String], extra: &str) -> String {
    format!(
        "[[cluster]]\nname = \"{name}\"\nendpoints = [{}]\nconnect_timeout = \"2s\"\n{extra}\n",
        endpoints.join(", ")
    )
}

/// An endpoint as a TOML string value.
fn ep(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

/// A proxy with one HTTP listener sending everything to `cluster_name`.
fn single_cluster_proxy(
    admin: Option<&Admin>,
    log: Option<&Path>,
    clusters: &str,
    cluster_name: &str,
    cores: &str,
) -> (Remora, u16) {
    let port = free_port();
    let cfg = base(admin, log)
        + clusters
        + &http_listener(port, cluster_name)
        + &routes(&[("/", cluster_name, "")]);
    (Remora::start(&cfg, &["--cores", cores]), port)
}

/// The JSON access log's entries (read after the proxy stopped: it flushes
/// at exit).
fn access_log(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Entries whose path starts with `prefix`, as (response_code, response_flags).
fn logged(entries: &[Value], prefix: &str) -> Vec<(u64, String)> {
    entries
        .iter()
        .filter(|e| e["path"].as_str().is_some_and(|p| p.starts_with(prefix)))
        .map(|e| {
            (
                e["response_code"].as_u64().unwrap(),
                e["response_flags"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// dnsmasq
// ---------------------------------------------------------------------------

fn dnsmasq_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("dnsmasq"))
        .find(|p| p.is_file())
}

/// A dnsmasq on 127.0.0.1 answering for `.test` from a hosts file only
/// (`--local=/test/`: NXDOMAIN for the rest of `.test`, no upstream).
struct Dnsmasq {
    hosts: PathBuf,
    addr: SocketAddr,
    child: Child,
}

impl Dnsmasq {
    /// Fails the test when dnsmasq is not installed: a skip would pass
    /// having checked nothing (tests/run installs it).
    fn start(dir: &Path, hosts: &str) -> Dnsmasq {
        let bin = dnsmasq_binary()
            .expect("dnsmasq not found: install Debian's dnsmasq-base (tests/run does)");
        let hosts_path = dir.join("hosts");
        std::fs::write(&hosts_path, hosts).unwrap();
        // A port free for UDP and TCP a moment ago; dnsmasq may lose it to a
        // race, so try a few.
        for _ in 0..5 {
            let addr = free_udp_tcp_port();
            let mut child = Command::new(&bin)
                .args([
                    "--no-daemon",
                    "--conf-file=/dev/null",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--local=/test/",
                ])
                .arg(format!("--port={}", addr.port()))
                .arg(format!("--addn-hosts={}", hosts_path.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn dnsmasq");
            if dns_answers(addr, &mut child) {
                return Dnsmasq {
                    hosts: hosts_path,
                    addr,
                    child,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start on any of 5 free ports");
    }

    /// Replaces the hosts file atomically; SIGHUP makes dnsmasq re-read it
    /// (and clear its cache).
    fn set_hosts(&self, hosts: &str) {
        let tmp = self.hosts.with_extension("tmp");
        std::fs::write(&tmp, hosts).unwrap();
        std::fs::rename(&tmp, &self.hosts).unwrap();
        // SAFETY: plain kill(2) on our own child.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGHUP) },
            0
        );
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether dnsmasq on `addr` answers (any answer, NXDOMAIN included) before
/// it exits or `WAIT` passes.
fn dns_answers(addr: SocketAddr, child: &mut Child) -> bool {
    use remora::upstream::dns::{DnsError, ResolvConf, Resolver};
    let probe = Resolver::new(ResolvConf {
        nameservers: vec![addr],
        search: vec![],
        ndots: 1,
        timeout: Duration::from_millis(500),
        attempts: 1,
    });
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false; // exited: the port was taken
        }
        match probe.lookup("ready.test") {
            Ok(_) | Err(DnsError::NxDomain { .. }) => return true,
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

/// A 127.0.0.1 port free for both UDP and TCP a moment ago.
fn free_udp_tcp_port() -> SocketAddr {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
}

// ---------------------------------------------------------------------------
// Load balancing
// ---------------------------------------------------------------------------

/// Weights 3,1,1 under round robin: every 5 consecutive requests are exactly
/// 3 to the heavy endpoint and 1 to each other (nginx's smooth WRR), not just
/// on average.
#[test]
fn weighted_round_robin_is_exact_per_cycle() {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|n| Backend::start(n)).collect();
    let eps: Vec<String> = backends
        .iter()
        .zip([3, 1, 1])
        .map(|(b, w)| format!("{{ address = \"{}\", weight = {w} }}", b.addr))
        .collect();
    let clusters = cluster("wrr", &eps, "lb_policy = \"round_robin\"");
    let (r, port) = single_cluster_proxy(None, None, &clusters, "wrr", "1");
    let mut c = Client::new(port);
    for cycle in 0..6 {
        let mut seen = BTreeMap::new();
        for _ in 0..5 {
            let resp = c.get("/wrr", "x", &[]);
            assert_eq!(resp.status, 200);
            *seen.entry(resp.body).or_insert(0) += 1;
        }
        let want = BTreeMap::from([("a".to_string(), 3), ("b".into(), 1), ("c".into(), 1)]);
        assert_eq!(seen, want, "cycle {cycle}");
    }
    let hits: Vec<u64> = backends.iter().map(Backend::hits).collect();
    assert_eq!(hits, [18, 6, 6]);
    drop(r);
}

/// least_request: while one endpoint holds its requests, new requests go to
/// the idle one (with two endpoints and two choices, always the less loaded).
/// Once both are idle, ties are broken at random, so both get traffic.
#[test]
fn least_request_prefers_the_less_loaded_endpoint() {
    let (slow, fast) = (Backend::start("slow"), Backend::start("fast"));
    let clusters = cluster(
        "lr",
        &[ep(slow.addr), ep(fast.addr)],
        "lb_policy = \"least_request\"",
    );
    let (r, port) = single_cluster_proxy(None, None, &clusters, "lr", "1");
    slow.hold();
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    const N: usize = 30;
    for i in 0..N {
        let done_here = done.clone();
        clients.push(thread::spawn(move || {
            let resp = get_once(port, "/lr", &[]);
            done_here.fetch_add(1, Ordering::SeqCst);
            resp
        }));
        // The request is either answered or held at the slow backend before
        // the next one goes: each pick sees the load the previous ones left.
        wait_until("the request to be answered or held", || {
            done.load(Ordering::SeqCst) + slow.active() == i + 1
        });
    }
    let (to_slow, to_fast) = (slow.hits(), fast.hits());
    assert_eq!(to_slow + to_fast, N as u64);
    // Round robin or random would send about half (15) to the slow one. Least
    // request sends it the first while both are idle, and another only if a
    // pick raced the bookkeeping of the fast one's previous answer.
    assert!(
        to_slow <= 3,
        "{to_slow} of {N} requests went to the endpoint holding requests"
    );
    slow.release();
    for c in clients {
        assert_eq!(c.join().unwrap().status, 200);
    }
    // Both idle: ties go either way, not always to the same endpoint.
    let mut c = Client::new(port);
    for _ in 0..40 {
        assert_eq!(c.get("/lr", "x", &[]).status, 200);
    }
    let (s2, f2) = (slow.hits() - to_slow, fast.hits() - to_fast);
    assert!(s2 >= 5 && f2 >= 5, "idle split: slow {s2}, fast {f2}");
    drop(r);
}

/// ring_hash and maglev with `hash_policy = [{ header = "x-user" }]`: a user
/// always reaches the same backend, from any connection and core; the users
/// spread over more than one backend.
#[test]
fn consistent_hashing_keeps_each_user_on_one_backend() {
    let backends: Vec<Backend> = ["a", "b", "c"].iter().map(|n| Backend::start(n)).collect();
    let eps: Vec<String> = backends.iter().map(|b| ep(b.addr)).collect();
    let hash = "hash_policy = [{ header = \"x-user\" }]";
    let clusters = cluster("rh", &eps, &format!("lb_policy = \"ring_hash\"\n{hash}"))
        + &cluster("mg", &eps, &format!("lb_policy = \"maglev\"\n{hash}"));
    let port = free_port();
    let cfg = base(None, None)
        + &clusters
        + &http_listener(port, "rh")
        + &routes(&[("/rh", "rh", ""), ("/mg", "mg", "")]);
    // Two cores and a connection per request: the choice must not depend on
    // per-core or per-connection state.
    let r = Remora::start(&cfg, &["--cores", "2"]);
    for policy in ["rh", "mg"] {
        let mut chosen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for round in 0..3 {
            for user in 0..16 {
                let user = format!("user-{user}");
                let resp = get_once(port, &format!("/{policy}/{round}"), &[("x-user", &user)]);
                assert_eq!(resp.status, 200);
                chosen.entry(user).or_default().insert(resp.body);
            }
        }
        for (user, set) in &chosen {
            assert_eq!(set.len(), 1, "{policy}: {user} reached {set:?}");
        }
        let used: BTreeSet<&String> = chosen.values().flatten().collect();
        assert!(
            used.len() > 1,
            "{policy}: all 16 users on one backend: {used:?}"
        );
    }
    drop(r);
}

// ---------------------------------------------------------------------------
// Health: active checks, outlier detection, panic mode
// ---------------------------------------------------------------------------

/// An endpoint failing its HTTP health check gets no traffic and /clusters
/// says `/failed_active_hc`; once it passes again it is `healthy` and gets
/// its round-robin share back.
#[test]
fn active_health_check_removes_and_restores_an_endpoint() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let admin = Admin::new();
    let clusters = cluster(
        "hc",
        &[ep(a.addr), ep(b.addr)],
        &format!("lb_policy = \"round_robin\"\nhealth_check = {{ path = \"{HEALTH_PATH}\", interval = \"100ms\", timeout = \"1s\", unhealthy_threshold = 1, healthy_threshold = 1 }}"),
    );
    let (r, port) = single_cluster_proxy(Some(&admin), None, &clusters, "hc", "1");
    let mut c = Client::new(port);
    let count = |c: &mut Client, n: usize| {
        let mut to_a = 0;
        for _ in 0..n {
            let resp = c.get("/hc", "x", &[]);
            assert_eq!(resp.status, 200);
            to_a += usize::from(resp.body == "a");
        }
        to_a
    };
    admin.wait_flags("hc", a.addr, "healthy");
    assert_eq!(count(&mut c, 10), 5);

    a.set_health(503);
    admin.wait_flags("hc", a.addr, "/failed_active_hc");
    assert_eq!(admin.health_flags("hc", b.addr).as_deref(), Some("healthy"));
    let before = a.hits();
    assert_eq!(count(&mut c, 10), 0);
    assert_eq!(a.hits(), before, "an unhealthy endpoint got requests");
    assert_eq!(
        admin.metric(&format!(
            "remora_cluster_endpoint_healthy{{cluster_name=\"hc\",endpoint=\"{}\"}}",
            a.addr
        )),
        Some(0.0)
    );

    a.set_health(200);
    admin.wait_flags("hc", a.addr, "healthy");
    assert_eq!(count(&mut c, 10), 5);
    drop(r);
}

/// An endpoint answering 503 to everything is ejected after
/// consecutive_5xx_errors of them: no request reaches it while ejected,
/// /clusters says `/failed_outlier_check`, and after base_ejection_time it
/// gets requests again.
#[test]
fn outlier_detection_ejects_and_returns_an_endpoint() {
    let (good, bad) = (Backend::start("good"), Backend::start("bad"));
    bad.set_status(503);
    let admin = Admin::new();
    let clusters = cluster(
        "od",
        &[ep(good.addr), ep(bad.addr)],
        "lb_policy = \"round_robin\"\noutlier_detection = { consecutive_5xx_errors = 3, base_ejection_time = \"3s\", interval = \"100ms\" }",
    );
    let (r, port) = single_cluster_proxy(Some(&admin), None, &clusters, "od", "1");
    let mut c = Client::new(port);
    // Round robin alternates: the bad endpoint's third 503 ejects it.
    let mut sent = 0;
    while bad.hits() < 3 {
        let resp = c.get("/od", "x", &[]);
        assert_eq!(resp.status, if resp.body == "bad" { 503 } else { 200 });
        sent += 1;
        assert!(sent < 20, "the bad endpoint got {} of {sent}", bad.hits());
    }
    for _ in 0..10 {
        let resp = c.get("/od", "x", &[]);
        assert_eq!((resp.status, resp.body.as_str()), (200, "good"));
    }
    assert_eq!(bad.hits(), 3, "an ejected endpoint got requests");
    assert_eq!(
        admin.health_flags("od", bad.addr).as_deref(),
        Some("/failed_outlier_check")
    );
    assert!(admin
        .clusters()
        .contains("od::outlier::ejections_total::1\n"));
    assert_eq!(
        admin.metric("remora_cluster_outlier_ejections_total{cluster_name=\"od\"}"),
        Some(1.0)
    );

    // The ejection ends: the bad endpoint is tried again.
    wait_until("the ejected endpoint to get a request again", || {
        c.get("/od", "x", &[]);
        bad.hits() > 3
    });
    assert_eq!(
        admin.health_flags("od", bad.addr).as_deref(),
        Some("healthy")
    );
    drop(r);
}

/// With every endpoint unhealthy or ejected a request never hangs: with
/// healthy_panic_threshold = 0 it is a local 503 with flag UH; with the
/// default (50) panic mode sends it to the endpoints anyway. L4 alike: a
/// reset flagged UH, or panic mode.
#[test]
fn no_healthy_endpoint_is_503_uh_unless_panic_mode() {
    let sick = Backend::start("sick");
    sick.set_health(503);
    let failing = Backend::start("failing");
    failing.set_status(503);
    let admin = Admin::new();
    let dir = TempDir::new("panic");
    let log = dir.0.join("access.log");
    let hc = format!("health_check = {{ path = \"{HEALTH_PATH}\", interval = \"100ms\", unhealthy_threshold = 1 }}");
    let clusters = cluster(
        "strict",
        &[ep(sick.addr)],
        &format!("healthy_panic_threshold = 0\n{hc}"),
    ) + &cluster("lenient", &[ep(sick.addr)], &hc)
        + &cluster(
            "ejectable",
            &[ep(failing.addr)],
            "healthy_panic_threshold = 0\noutlier_detection = { consecutive_5xx_errors = 1, base_ejection_time = \"60s\", max_ejection_percent = 100 }",
        );
    let (port, tcp_strict, tcp_lenient) = (free_port(), free_port(), free_port());
    let cfg = base(Some(&admin), Some(&log))
        + &clusters
        + &tcp_listener(tcp_strict, "strict")
        + &tcp_listener(tcp_lenient, "lenient")
        + &http_listener(port, "strict")
        + &routes(&[
            ("/strict", "strict", ""),
            ("/lenient", "lenient", ""),
            ("/ejectable", "ejectable", ""),
        ]);
    let r = Remora::start(&cfg, &["--cores", "1"]);
    admin.wait_flags("strict", sick.addr, "/failed_active_hc");
    admin.wait_flags("lenient", sick.addr, "/failed_active_hc");

    let mut c = Client::new(port);
    let resp = c.get("/strict", "x", &[]);
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (503, "no healthy upstream\n")
    );
    assert_eq!(sick.hits(), 0);
    let resp = c.get("/lenient", "x", &[]);
    assert_eq!((resp.status, resp.body.as_str()), (200, "sick"));
    assert_eq!(sick.hits(), 1);

    // The only endpoint's first 503 ejects it; the next request is local.
    assert_eq!(c.get("/ejectable/1", "x", &[]).body, "failing");
    let resp = c.get("/ejectable/2", "x", &[]);
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (503, "no healthy upstream\n")
    );
    assert_eq!(failing.hits(), 1);

    assert!(
        is_reset(&mut connect(tcp_strict)),
        "L4 with no healthy endpoint"
    );
    let mut c = Client::new(tcp_lenient);
    let resp = c.get("/l4-lenient", "x", &[]);
    assert_eq!((resp.status, resp.body.as_str()), (200, "sick"));
    drop(c);

    assert!(admin.metric("remora_cluster_lb_panic_total{cluster_name=\"lenient\"}") >= Some(1.0));
    assert_eq!(
        admin.metric("remora_cluster_lb_panic_total{cluster_name=\"strict\"}"),
        Some(0.0)
    );
    assert!(
        admin.metric("remora_cluster_lb_no_healthy_total{cluster_name=\"strict\"}") >= Some(1.0)
    );
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let entries = access_log(&log);
    assert_eq!(logged(&entries, "/strict"), [(503, "UH".to_string())]);
    assert_eq!(logged(&entries, "/lenient"), [(200, "-".to_string())]);
    assert_eq!(
        logged(&entries, "/ejectable"),
        [(503, "-".to_string()), (503, "UH".to_string())]
    );
    let tcp = |port: u16| -> Vec<&str> {
        let local = format!("127.0.0.1:{port}");
        entries
            .iter()
            .filter(|e| e["protocol"] == "TCP" && e["downstream_local_address"] == *local)
            .map(|e| e["response_flags"].as_str().unwrap())
            .collect()
    };
    assert_eq!(tcp(tcp_strict), ["UH"], "{entries:?}");
    assert_eq!(tcp(tcp_lenient), ["-"], "{entries:?}");
}

// ---------------------------------------------------------------------------
// Circuit breakers
// ---------------------------------------------------------------------------

/// max_requests = 2 (one core): with the backend holding its requests, 10
/// concurrent requests are 2 at the backend and 8 local 503s flagged UO,
/// counted in Prometheus; the backend never sees more than 2 at once.
#[test]
fn max_requests_overflow_is_503_uo() {
    let slow = Backend::start("slow");
    slow.hold();
    let admin = Admin::new();
    let dir = TempDir::new("cb");
    let log = dir.0.join("access.log");
    let clusters = cluster(
        "cb",
        &[ep(slow.addr)],
        "circuit_breakers = { max_requests = 2 }",
    );
    let (r, port) = single_cluster_proxy(Some(&admin), Some(&log), &clusters, "cb", "1");
    let (tx, rx) = mpsc::channel();
    for i in 0..10 {
        let tx = tx.clone();
        thread::spawn(move || {
            let _ = tx.send(get_once(port, &format!("/cb/{i}"), &[]));
        });
    }
    // The two that got through are held: the other eight are answered now.
    for _ in 0..8 {
        let resp = rx.recv_timeout(WAIT).expect("a response");
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (503, "upstream connection pool overflow\n")
        );
    }
    wait_until("two requests at the backend", || slow.active() == 2);
    let overflow =
        "remora_cluster_circuit_breaker_overflow_total{cluster_name=\"cb\",resource=\"requests\"}";
    assert_eq!(admin.metric(overflow), Some(8.0));
    assert_eq!(
        admin.metric(
            "remora_cluster_circuit_breaker_open{cluster_name=\"cb\",resource=\"requests\"}"
        ),
        Some(2.0)
    );
    slow.release();
    for _ in 0..2 {
        let resp = rx.recv_timeout(WAIT).expect("a response");
        assert_eq!((resp.status, resp.body.as_str()), (200, "slow"));
    }
    assert_eq!(slow.hits(), 2);
    assert_eq!(slow.max_active(), 2);
    // The permits came back: a new request goes through.
    assert_eq!(get_once(port, "/cb/after", &[]).status, 200);
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let entries = access_log(&log);
    let flags = logged(&entries, "/cb/");
    assert_eq!(flags.len(), 11, "{entries:?}");
    assert_eq!(
        flags.iter().filter(|f| *f == &(503, "UO".into())).count(),
        8
    );
    assert_eq!(flags.iter().filter(|f| *f == &(200, "-".into())).count(), 3);
}

/// max_connections = 1 on a TCP listener: while one connection is open a
/// second is reset without reaching the upstream, logged with flag UO and
/// counted; after the first closes, connections go through again.
#[test]
fn l4_max_connections_resets_the_overflow() {
    let (echo, accepted) = counting_echo();
    let admin = Admin::new();
    let dir = TempDir::new("l4cb");
    let log = dir.0.join("access.log");
    let port = free_port();
    let cfg = base(Some(&admin), Some(&log))
        + &cluster(
            "tcp",
            &[ep(echo)],
            "circuit_breakers = { max_connections = 1 }",
        )
        + &tcp_listener(port, "tcp");
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let echo_once = |s: &mut TcpStream| -> std::io::Result<()> {
        s.write_all(b"ping")?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b)?;
        assert_eq!(&b, b"ping");
        Ok(())
    };
    let mut first = connect(port);
    echo_once(&mut first).unwrap();

    assert!(
        is_reset(&mut connect(port)),
        "a second connection got through"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    drop(first);
    // The permit comes back when the proxy sees the close.
    let mut resets = 1;
    wait_until("a connection after the first closed", || {
        let mut s = connect(port);
        let ok = echo_once(&mut s).is_ok();
        resets += usize::from(!ok);
        ok
    });
    assert_eq!(
        admin.metric("remora_cluster_circuit_breaker_overflow_total{cluster_name=\"tcp\",resource=\"connections\"}"),
        Some(resets as f64)
    );
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let entries = access_log(&log);
    let uo = entries
        .iter()
        .filter(|e| e["protocol"] == "TCP" && e["response_flags"] == "UO")
        .count();
    assert_eq!(uo, resets, "{entries:?}");
}

// ---------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------

/// `discovery = "dns"` against dnsmasq: requests reach the address the name
/// resolves to, follow it when the answer changes, and a name that does not
/// resolve at start leaves its cluster empty (503 UH) until it does.
#[test]
fn dns_discovery_follows_the_answer() {
    let dir = TempDir::new("dns");
    let dns = Dnsmasq::start(&dir.0, "127.0.0.1 svc.test\n");
    let (la, lb) = pair_on_one_port();
    let p = la.local_addr().unwrap().port();
    let (a, b) = (Backend::on("a", la), Backend::on("b", lb));
    let dns_keys = format!(
        "discovery = \"dns\"\ndns_resolvers = [\"{}\"]\ndns_refresh_rate = \"200ms\"\nlb_policy = \"round_robin\"",
        dns.addr
    );
    let clusters = cluster("svc", &[format!("\"svc.test:{p}\"")], &dns_keys)
        + &cluster("missing", &[format!("\"late.test:{p}\"")], &dns_keys);
    let log = dir.0.join("access.log");
    let port = free_port();
    let cfg = base(None, Some(&log))
        + &clusters
        + &http_listener(port, "svc")
        + &routes(&[("/missing", "missing", ""), ("/", "svc", "")]);
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    for _ in 0..5 {
        let resp = c.get("/svc", "x", &[]);
        assert_eq!((resp.status, resp.body.as_str()), (200, "a"));
    }
    let resp = c.get("/missing/1", "x", &[]);
    assert_eq!(
        (resp.status, resp.body.as_str()),
        (503, "no healthy upstream\n")
    );

    dns.set_hosts("127.0.0.2 svc.test\n127.0.0.1 late.test\n");
    wait_until("traffic to move to 127.0.0.2", || {
        let resp = c.get("/svc", "x", &[]);
        assert_eq!(resp.status, 200);
        resp.body == "b"
    });
    let before = a.hits();
    for _ in 0..10 {
        let resp = c.get("/svc", "x", &[]);
        assert_eq!((resp.status, resp.body.as_str()), (200, "b"));
    }
    assert_eq!(a.hits(), before);
    // The name that did not resolve at start is looked up again.
    wait_until("the late name to resolve", || {
        c.get("/missing/2", "x", &[]).status == 200
    });
    assert!(b.hits() >= 11);
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let entries = access_log(&log);
    assert_eq!(
        logged(&entries, "/missing/1"),
        [(503, "UH".to_string())],
        "{entries:?}"
    );
}

/// `discovery = "file"`: the file swapped atomically from backend A to B
/// while a client sends requests back to back: no request fails, and once B
/// answers A gets nothing more. A malformed rewrite keeps the last good set
/// and the log names file:line:column.
#[test]
fn endpoints_file_swap_moves_traffic_without_failures() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = TempDir::new("eds");
    let file = dir.0.join("eds.json");
    let write_atomically = |text: &str| {
        let tmp = dir.0.join("eds.json.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    };
    write_atomically(&format!("[{{\"address\": \"{}\"}}]\n", a.addr));
    let port = free_port();
    let cfg = base(None, None)
        + &format!(
            "[[cluster]]\nname = \"eds\"\ndiscovery = \"file\"\nendpoints_file = \"{}\"\n",
            file.display()
        )
        + &http_listener(port, "eds")
        + &routes(&[("/", "eds", "")]);
    let mut r = Remora::start(&cfg, &["--cores", "1"]);

    // The client: requests back to back on one connection, every answer kept.
    let answers = Arc::new(Mutex::new(Vec::<(u16, String)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (answers, stop) = (answers.clone(), stop.clone());
        thread::spawn(move || {
            let mut c = Client::new(port);
            while !stop.load(Ordering::SeqCst) {
                let resp = c.get("/eds", "x", &[]);
                answers.lock().unwrap().push((resp.status, resp.body));
            }
        })
    };
    let count = |name: &str| {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, n)| n == name)
            .count()
    };
    wait_until("requests to A", || count("a") >= 20);
    write_atomically(&format!("[{{\"address\": \"{}\"}}]\n", b.addr));
    wait_until("requests to B", || count("b") >= 20);

    // Malformed: a missing colon on line 3.
    write_atomically(&format!(
        "[\n  {{\"address\": \"{}\"}},\n  {{\"address\" \"127.0.0.1:9\"}}\n]\n",
        a.addr
    ));
    let line = r.wait_for_log("endpoints file rejected");
    assert!(
        line.contains(&format!("{}:3:", file.display())),
        "no file:line:column in {line:?}"
    );
    let after = count("b");
    wait_until("more requests to B", || count("b") >= after + 20);
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();

    let answers = answers.lock().unwrap();
    let failed: Vec<_> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let first_b = answers.iter().position(|(_, n)| n == "b").unwrap();
    assert!(
        answers[first_b..].iter().all(|(_, n)| n == "b"),
        "A answered after B had taken over"
    );
    assert_eq!(a.hits() as usize, first_b);
    drop(r);
}

// ---------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------

/// Two endpoints, one refusing connections, `retry_on = connect-failure`
/// with one retry: the retry goes to the other endpoint (previous_hosts), so
/// every request succeeds, even under random balancing and under ring hash
/// where the user's own endpoint is the dead one. With previous_hosts off,
/// ring hash retries the same dead endpoint and those users fail.
#[test]
fn connect_failure_retry_goes_to_another_host() {
    let live = Backend::start("live");
    let (dead, _hold) = refusing_addr();
    let eps = [ep(dead), ep(live.addr)];
    let clusters = cluster("random", &eps, "lb_policy = \"random\"")
        + &cluster(
            "hashed",
            &eps,
            "lb_policy = \"ring_hash\"\nhash_policy = [{ header = \"x-user\" }]",
        );
    let retry =
        "retry = { retry_on = [\"connect-failure\"], num_retries = 1, backoff_base = \"1ms\" }";
    let sticky = "retry = { retry_on = [\"connect-failure\"], num_retries = 1, backoff_base = \"1ms\", previous_hosts = false }";
    let port = free_port();
    let cfg = base(None, None)
        + &clusters
        + &http_listener(port, "random")
        + &routes(&[
            ("/random", "random", retry),
            ("/hashed", "hashed", retry),
            ("/sticky", "hashed", sticky),
        ]);
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    for i in 0..40 {
        let resp = c.get(&format!("/random/{i}"), "x", &[]);
        assert_eq!(
            (resp.status, resp.body.as_str()),
            (200, "live"),
            "request {i}"
        );
    }
    let mut stuck: u64 = 0;
    for u in 0..20 {
        let user = format!("user-{u}");
        let resp = c.get("/hashed", "x", &[("x-user", &user)]);
        assert_eq!((resp.status, resp.body.as_str()), (200, "live"), "{user}");
        let resp = c.get("/sticky", "x", &[("x-user", &user)]);
        match resp.status {
            200 => {}
            503 => stuck += 1,
            s => panic!("{user}: {s} {}", resp.body),
        }
    }
    // About half the users hash to the dead endpoint.
    assert!(stuck > 0, "no user hashed to the dead endpoint");
    assert_eq!(live.hits(), 40 + 20 + (20 - stuck));
    // Those users' first tries failed under /hashed too (the same ring), and
    // both their tries under /sticky.
    let (_, totals) = r.stop();
    assert!(totals.get("upstream_cx_connect_fail") >= 3 * stuck);
}

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// `remora validate` on the new keys: every mistake reported with
/// file:line:column, and a config using all of them correctly is OK.
#[test]
fn validate_reports_cluster_policy_errors_with_lines() {
    let dir = TempDir::new("validate-policy");
    let bad = [
        ("[capture]", None),
        ("enabled = false", None),
        ("[[cluster]]", None),
        ("name = \"a\"", None),
        (
            "endpoints = [{ address = \"127.0.0.1:1\", weight = 0 }]",
            Some("cluster `a`: endpoint weight 0 is out of range (1..=128)"),
        ),
        (
            "lb_policy = \"fastest\"",
            Some("cluster `a`: lb_policy `fastest` is not one of"),
        ),
        ("[[cluster]]", None),
        ("name = \"b\"", None),
        ("endpoints = [\"127.0.0.1:2\"]", None),
        (
            "hash_policy = [{ header = \"x-user\" }]",
            Some("cluster `b`: hash_policy needs lb_policy"),
        ),
        (
            "health_check = { type = \"grpc\" }",
            Some("cluster `b`: health_check type `grpc` is not"),
        ),
        (
            "outlier_detection = { max_ejection_percent = 150 }",
            Some("outlier_detection.max_ejection_percent = 150 is out of range"),
        ),
        (
            "circuit_breakers = { max_requests = -1 }",
            Some("circuit_breakers.max_requests = -1 is out of range"),
        ),
        ("[[cluster]]", None),
        ("name = \"c\"", None),
        (
            "discovery = \"file\"",
            Some("cluster `c`: discovery = \"file\" needs endpoints_file"),
        ),
        ("[[cluster]]", None),
        ("name = \"d\"", None),
        ("endpoints = [\"127.0.0.1:3\"]", None),
        (
            "dns_refresh_rate = \"1s\"",
            Some("cluster `d`: dns_refresh_rate applies only to discovery = \"dns\""),
        ),
        ("[[cluster]]", None),
        ("name = \"e\"", None),
        ("discovery = \"dns\"", None),
        (
            "endpoints = [\"bad_name:80\"]",
            Some("cluster `e`: endpoint `bad_name:80` is not a host:port"),
        ),
        (
            "dns_resolvers = [\"not-an-ip\"]",
            Some("cluster `e`: dns resolver `not-an-ip` is not an IP address"),
        ),
    ];
    let text: String = bad.iter().map(|(l, _)| format!("{l}\n")).collect();
    let f = dir.file("bad.toml", &text);
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&f)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let name = f.display().to_string();
    let expected: Vec<(usize, &str)> = bad
        .iter()
        .enumerate()
        .filter_map(|(i, (_, m))| m.map(|m| (i + 1, m)))
        .collect();
    for (line, msg) in &expected {
        let prefix = format!("{name}:{line}:");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&prefix) && l.contains(msg)),
            "no `{prefix}<col>: {msg}` in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), expected.len(), "{err}");

    let good = dir.file(
        "good.toml",
        &format!(
            r#"[capture]
enabled = false
[[cluster]]
name = "reviews"
endpoints = ["10.0.0.1:80", {{ address = "10.0.0.2:80", weight = 3, locality = "r1/z1/s1" }}]
lb_policy = "maglev"
hash_policy = [{{ header = "x-user" }}, {{ source_ip = true }}]
healthy_panic_threshold = 30
health_check = {{ path = "/healthz", interval = "2s", timeout = "500ms", unhealthy_threshold = 2 }}
outlier_detection = {{ consecutive_5xx_errors = 3, base_ejection_time = "10s", max_ejection_percent = 50 }}
circuit_breakers = {{ max_connections = 100, max_requests = 10, max_retries = 2 }}
[[cluster]]
name = "dns"
discovery = "dns"
endpoints = ["reviews.default.svc.cluster.local:9080"]
dns_refresh_rate = "1s"
dns_resolvers = ["127.0.0.1:5353"]
[[cluster]]
name = "eds"
discovery = "file"
endpoints_file = "{}"
"#,
            dir.0.join("eds.json").display()
        ),
    );
    let out = Command::new(BIN)
        .arg("validate")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim()
        ),
        (Some(0), "OK"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------
// Locality
// ---------------------------------------------------------------------------

/// With `[runtime] locality` set, every request goes to the endpoint in the
/// proxy's own zone while it is healthy; when it fails its health check the
/// traffic fails over to the other region, and comes back when it recovers
/// (Istio's localityLbSetting failover). Without a locality, both share.
#[test]
fn locality_prefers_the_own_zone_and_fails_over() {
    let (near, far) = (Backend::start("near"), Backend::start("far"));
    let admin = Admin::new();
    let endpoints = [
        format!("{{ address = \"{}\", locality = \"eu/eu-1a\" }}", near.addr),
        format!("{{ address = \"{}\", locality = \"us/us-2b\" }}", far.addr),
    ];
    let clusters = cluster(
        "geo",
        &endpoints,
        &format!("lb_policy = \"round_robin\"\nhealth_check = {{ path = \"{HEALTH_PATH}\", interval = \"100ms\", timeout = \"1s\", unhealthy_threshold = 1, healthy_threshold = 1 }}"),
    );
    let count_near = |port: u16, n: usize| {
        let mut c = Client::new(port);
        (0..n)
            .filter(|_| {
                let resp = c.get("/geo", "x", &[]);
                assert_eq!(resp.status, 200);
                resp.body == "near"
            })
            .count()
    };
    for (locality, want_near) in [("eu/eu-1a", 20), ("", 10)] {
        let port = free_port();
        let cfg = base(Some(&admin), None).replacen(
            "[runtime]\n",
            &format!("[runtime]\nlocality = \"{locality}\"\n"),
            1,
        ) + &clusters
            + &http_listener(port, "geo")
            + &routes(&[("/", "geo", "")]);
        let r = Remora::start(&cfg, &["--cores", "1"]);
        admin.wait_flags("geo", near.addr, "healthy");
        assert_eq!(
            count_near(port, 20),
            want_near,
            "locality {locality:?}: requests to the near endpoint"
        );
        if !locality.is_empty() {
            near.set_health(503);
            admin.wait_flags("geo", near.addr, "/failed_active_hc");
            assert_eq!(count_near(port, 20), 0, "failover to the far region");
            near.set_health(200);
            admin.wait_flags("geo", near.addr, "healthy");
            assert_eq!(count_near(port, 20), 20, "back to the own zone");
        }
        drop(r);
    }
}

// ---------------------------------------------------------------------------
// The breaker limits max_requests_overflow_is_503_uo does not reach, picks,
// and one health checker per proxy
// ---------------------------------------------------------------------------

/// `max_requests_per_connection` closes an upstream connection after that
/// many requests; `max_pending_requests = 0` leaves no room to wait for a
/// new connection (503 UO); `max_retries = 0` turns a retry into the answer
/// it would have replaced, counted as a retry overflow. Every pick is
/// counted per endpoint.
#[test]
fn per_connection_pending_and_retry_limits() {
    // One backend per cluster: endpoint counters are per address.
    let (b, b_np, b_nr) = (
        Backend::start("b"),
        Backend::start("np"),
        Backend::start("nr"),
    );
    let admin = Admin::new();
    let clusters = cluster(
        "pc",
        &[ep(b.addr)],
        "circuit_breakers = { max_requests_per_connection = 2 }",
    ) + &cluster(
        "np",
        &[ep(b_np.addr)],
        "circuit_breakers = { max_pending_requests = 0 }",
    ) + &cluster(
        "nr",
        &[ep(b_nr.addr)],
        "circuit_breakers = { max_retries = 0 }",
    );
    let port = free_port();
    let cfg = base(Some(&admin), None)
        + &clusters
        + &http_listener(port, "pc")
        + &routes(&[
            ("/pc", "pc", ""),
            ("/np", "np", ""),
            (
                "/nr",
                "nr",
                "retry = { retry_on = [\"5xx\"], num_retries = 2, backoff_base = \"1ms\" }",
            ),
        ]);
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    for _ in 0..6 {
        assert_eq!(c.get("/pc", "x", &[]).status, 200);
    }
    // Six requests, two per connection.
    let cx = |name: &str, addr: SocketAddr| {
        admin
            .metric(&format!(
                "remora_cluster_upstream_cx_total{{cluster_name=\"{name}\",endpoint=\"{addr}\"}}"
            ))
            .unwrap_or(0.0)
    };
    assert_eq!(cx("pc", b.addr), 3.0);
    assert_eq!(
        admin.metric(&format!(
            "remora_cluster_endpoint_lb_picks_total{{cluster_name=\"pc\",endpoint=\"{}\"}}",
            b.addr
        )),
        Some(6.0)
    );
    // No pending request allowed: a request that needs a new connection
    // overflows, and no connection is made.
    let resp = c.get("/np", "x", &[]);
    assert_eq!(resp.status, 503);
    assert_eq!(cx("np", b_np.addr), 0.0);
    assert_eq!(b_np.hits(), 0);
    // No retry allowed: the 503 is answered after one attempt.
    b_nr.set_status(503);
    let resp = c.get("/nr", "x", &[]);
    assert_eq!(resp.status, 503);
    assert_eq!(b_nr.hits(), 1, "a retry went out past max_retries = 0");
    let overflow = |cluster: &str, resource: &str| {
        admin.metric(&format!(
            "remora_cluster_circuit_breaker_overflow_total{{cluster_name=\"{cluster}\",resource=\"{resource}\"}}"
        ))
    };
    assert_eq!(overflow("np", "pending_requests"), Some(1.0));
    assert_eq!(overflow("nr", "retries"), Some(1.0));
    drop(r);
}

/// Health checks run once per proxy, not once per core: with two cores and
/// an interval longer than the test, a new endpoint is probed exactly once
/// (at once, as it appears).
#[test]
fn each_endpoint_is_probed_once_per_proxy_not_per_core() {
    let b = Backend::start("b");
    let admin = Admin::new();
    let clusters = cluster(
        "hc2",
        &[ep(b.addr)],
        &format!(
            "health_check = {{ path = \"{HEALTH_PATH}\", interval = \"1h\", timeout = \"1s\" }}"
        ),
    );
    let (r, port) = single_cluster_proxy(Some(&admin), None, &clusters, "hc2", "2");
    wait_until("the first probe", || {
        b.state.health_hits.load(Ordering::SeqCst) >= 1
    });
    // Traffic on both cores changes nothing about probing.
    for _ in 0..10 {
        assert_eq!(Client::new(port).get("/", "x", &[]).status, 200);
    }
    assert_eq!(
        admin.health_flags("hc2", b.addr).as_deref(),
        Some("healthy")
    );
    assert_eq!(b.state.health_hits.load(Ordering::SeqCst), 1);
    drop(r);
}
