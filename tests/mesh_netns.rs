//! Root only: three app pods behind one service name, one of them failing
//! mid-run; the client sees no failure, and the failed pod gets no traffic
//! once it is ejected, and gets it again once it is back.
//!
//! ```text
//!  pod A: client (uid 0) ─► 10.96.0.10:80  Host: reviews.default.svc.cluster.local
//!           └─ Istio's nat OUTPUT rules (`remora iptables`) ─► :15001
//!         Remora (uid 1337): HTTP detected ─► virtual host ─► cluster `reviews`
//!           (balancer, retries with previous_hosts, outlier detection, health check)
//!    eth1 10.204.1.1 ── veth ── eth0 10.204.1.2  pod B1: app answering "b1" on :8080
//!    eth2 10.204.2.1 ── veth ── eth0 10.204.2.2  pod B2: "b2"  ◄── killed / black-holed
//!    eth3 10.204.3.1 ── veth ── eth0 10.204.3.2  pod B3: "b3"
//! ```
//!
//! The service address is routed towards B1 in pod A's table only so that
//! `connect` gets as far as the nat hook; B1 does not forward, so a request
//! that escaped capture would fail instead of being answered.
//!
//! Two faults: the app killed (new connections refused, pooled ones closed),
//! and the app black-holed by a DROP rule in its pod (connects time out,
//! requests on pooled connections go unanswered). The client is a
//! keep-alive loop; its request start times share CLOCK_MONOTONIC with this
//! test, which places them relative to the fault. Root only, like the other
//! namespace tests: `#[ignore]`d, run by tests/run as root with `--ignored`,
//! where a missing tool fails them.

mod common;

use std::sync::{Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use common::netns::{python, require_root, sh, sidecar, Ns, Proc};
use common::BIN;

const VIP: &str = "10.96.0.10";
const SERVICE: &str = "reviews.default.svc.cluster.local";
const PODS: [&str; 3] = ["b1", "b2", "b3"];
/// The pod that fails (index into `PODS`).
const VICTIM: usize = 1;
/// How long the test watches Remora leave the ejected pod alone. Shorter than
/// the ejection (base_ejection_time 2 s), so the ejection spans it.
const WINDOW: Duration = Duration::from_secs(1);

/// The scenarios share two cores with others: run them one at a time so that
/// their timing windows are not squeezed by each other.
static SERIAL: Mutex<()> = Mutex::new(());

fn pod_ip(i: usize) -> String {
    format!("10.204.{}.2", i + 1)
}

fn endpoint(i: usize) -> String {
    format!("{}:8080", pod_ip(i))
}

/// Seconds on CLOCK_MONOTONIC, the clock of Python's `time.monotonic()`.
fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Pod A and pods B1..B3, each B joined to A by its own veth pair (created
/// inside A with the peer in B: no interface in the root namespace, and
/// deleting the namespaces deletes the pairs).
struct Mesh {
    a: Ns,
    b: Vec<Ns>,
}

impl Mesh {
    fn new(tag: &str) -> Mesh {
        let id = format!("rmr4-{}-{tag}", std::process::id());
        let a = Ns::new(format!("{id}-a"));
        let b: Vec<Ns> = (0..PODS.len())
            .map(|i| Ns::new(format!("{id}-{}", PODS[i])))
            .collect();
        for (i, pod) in b.iter().enumerate() {
            let dev = format!("eth{}", i + 1);
            sh(&[
                "ip", "-n", &a.name, "link", "add", &dev, "type", "veth", "peer", "name", "eth0",
                "netns", &pod.name,
            ]);
            let a_ip = format!("10.204.{}.1/24", i + 1);
            a.exec(&["ip", "addr", "add", &a_ip, "dev", &dev]);
            a.exec(&["ip", "link", "set", &dev, "up"]);
            pod.exec(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", pod_ip(i)),
                "dev",
                "eth0",
            ]);
            pod.exec(&["ip", "link", "set", "eth0", "up"]);
        }
        a.exec(&[
            "ip",
            "route",
            "add",
            &format!("{VIP}/32"),
            "via",
            &pod_ip(0),
        ]);
        Mesh { a, b }
    }

    /// GET `path` from Remora's admin API in pod A.
    fn admin(&self, path: &str) -> String {
        self.a.admin(path)
    }

    /// Pod `i`'s endpoint as `/clusters` shows it.
    fn endpoint(&self, i: usize) -> EndpointView {
        EndpointView::parse(&self.admin("/clusters"), &endpoint(i))
    }
}

/// One endpoint's lines of `/clusters` (`reviews::ip:port::stat::value`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct EndpointView {
    health_flags: String,
    cx_total: u64,
    cx_connect_fail: u64,
    rq_active: u64,
}

impl EndpointView {
    fn parse(clusters: &str, ep: &str) -> EndpointView {
        let prefix = format!("reviews::{ep}::");
        let mut v = EndpointView::default();
        let mut seen = false;
        for line in clusters.lines() {
            let Some((stat, value)) = line
                .strip_prefix(&prefix)
                .and_then(|rest| rest.split_once("::"))
            else {
                continue;
            };
            seen = true;
            let n = || value.parse::<u64>().unwrap_or(0);
            match stat {
                "health_flags" => v.health_flags = value.to_string(),
                "cx_total" => v.cx_total = n(),
                "cx_connect_fail" => v.cx_connect_fail = n(),
                "rq_active" => v.rq_active = n(),
                _ => {}
            }
        }
        assert!(seen, "no {ep} in /clusters:\n{clusters}");
        v
    }
}

/// `reviews::outlier::ejections_total` from `/clusters` (0 before any use).
fn ejections(clusters: &str) -> u64 {
    clusters
        .lines()
        .find_map(|l| l.strip_prefix("reviews::outlier::ejections_total::"))
        .map_or(0, |v| v.parse().unwrap())
}

/// An HTTP/1.1 keep-alive app that answers every GET with its pod's name.
const APP: &str = r#"
import sys, http.server
name = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class S(http.server.ThreadingHTTPServer):
    allow_reuse_address = True
    daemon_threads = True
    def handle_error(self, request, client_address):
        pass  # a client (Remora) resetting mid-answer is not news here
s = S(("0.0.0.0", 8080), H)
print("ready", flush=True)
s.serve_forever()
"#;

fn app(ns: &Ns, name: &str) -> Proc {
    let p = Proc::spawn(ns, &[python(), "-c", APP, name]);
    p.wait_until(&format!("app {name} ready"), Duration::from_secs(20), |l| {
        l.iter().any(|l| l == "ready")
    });
    p
}

/// The client: one keep-alive connection to the service address, a request
/// every 10 ms, one line per request: `<start> <status> <body>` or
/// `<start> ERR <what>`; reconnects after an error. Stops when stdin closes.
const CLIENT: &str = r#"
import http.client, sys, threading, time
vip, host = sys.argv[1], sys.argv[2]
stop = threading.Event()
def watch():
    sys.stdin.read()
    stop.set()
threading.Thread(target=watch, daemon=True).start()
conn = None
while not stop.is_set():
    t = time.monotonic()
    try:
        if conn is None:
            conn = http.client.HTTPConnection(vip, 80, timeout=10)
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        body = r.read().decode()
        print("%.6f %d %s" % (t, r.status, body), flush=True)
        if r.will_close:
            conn.close()
            conn = None
    except Exception as e:
        print(("%.6f ERR %s: %s" % (t, type(e).__name__, e)).replace("\n", " "), flush=True)
        if conn is not None:
            conn.close()
        conn = None
    time.sleep(0.01)
print("done", flush=True)
"#;

/// One request as the client saw it.
#[derive(Debug, Clone)]
struct Sample {
    /// When it started (CLOCK_MONOTONIC seconds).
    start: f64,
    /// The status, or "ERR".
    status: String,
    /// The answering pod, or the error.
    body: String,
}

fn samples(lines: &[String]) -> Vec<Sample> {
    lines
        .iter()
        .filter(|l| *l != "done")
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let (Some(start), Some(status)) = (parts.next(), parts.next()) else {
                panic!("client line {l:?}");
            };
            Sample {
                start: start
                    .parse()
                    .unwrap_or_else(|_| panic!("client line {l:?}")),
                status: status.to_string(),
                body: parts.next().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// How many of `s` each pod answered.
fn per_pod(s: &[&Sample]) -> [usize; 3] {
    let mut n = [0; 3];
    for x in s {
        if let Some(i) = PODS.iter().position(|p| *p == x.body) {
            n[i] += 1;
        }
    }
    n
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL the app: connects are refused, pooled connections closed.
    Kill,
    /// DROP everything to the app's port in its pod: connects time out,
    /// requests on pooled connections go unanswered.
    BlackHole,
}

/// Remora's config: the service's virtual host, routed to a cluster of the
/// three pods. The kill is found by outlier detection (local-origin failures
/// count as 5xx, Envoy's default); the black hole by a TCP health check too,
/// with a per-try timeout for requests sent into the hole on pooled
/// connections.
fn config(fault: Fault) -> String {
    let endpoints: Vec<String> = (0..PODS.len())
        .map(|i| format!("\"{}\"", endpoint(i)))
        .collect();
    let (lb, health_check, retry) = match fault {
        Fault::Kill => (
            "round_robin",
            "",
            r#"retry_on = ["connect-failure", "reset"], num_retries = 2"#,
        ),
        Fault::BlackHole => (
            "least_request",
            r#"health_check = { type = "tcp", interval = "200ms", timeout = "150ms", unhealthy_threshold = 2, healthy_threshold = 1 }"#,
            r#"retry_on = ["connect-failure", "reset", "gateway-error"], num_retries = 2, per_try_timeout = "500ms""#,
        ),
    };
    format!(
        r#"[runtime]
drain_timeout = "1s"

[[cluster]]
name = "reviews"
endpoints = [{endpoints}]
lb_policy = "{lb}"
connect_timeout = "250ms"
outlier_detection = {{ consecutive_5xx_errors = 3, interval = "1s", base_ejection_time = "2s" }}
{health_check}

[[virtual_host]]
name = "reviews"
domains = ["{SERVICE}"]

[[virtual_host.route]]
match = {{ prefix = "/" }}
cluster = "reviews"
retry = {{ {retry} }}
"#,
        endpoints = endpoints.join(", ")
    )
}

fn scenario(fault: Fault) {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let started = Instant::now();
    let mesh = Mesh::new(match fault {
        Fault::Kill => "kill",
        Fault::BlackHole => "hole",
    });
    mesh.a.exec(&[BIN, "iptables"]);
    let mut apps: Vec<Proc> = PODS
        .iter()
        .zip(&mesh.b)
        .map(|(name, ns)| app(ns, name))
        .collect();
    let sidecar = sidecar(&mesh.a, &config(fault));
    let mut client = Proc::spawn(&mesh.a, &[python(), "-c", CLIENT, VIP, SERVICE]);
    let victim = PODS[VICTIM];

    // 1. Every pod serves.
    client.wait_until(
        "all three pods answering through the sidecar",
        Duration::from_secs(10),
        |l| {
            let s = samples(l);
            s.len() >= 30
                && per_pod(&s.iter().collect::<Vec<_>>())
                    .iter()
                    .all(|&n| n > 0)
        },
    );

    // 2. The fault, mid-run.
    match fault {
        Fault::Kill => apps[VICTIM].kill(),
        Fault::BlackHole => {
            mesh.b[VICTIM].exec(&[
                "iptables", "-I", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP",
            ]);
        }
    }
    let t_fault = monotonic();

    // 3. Remora marks it: ejected (kill) or failing its health check (black
    // hole; an outlier ejection may come first or not at all there, as the
    // serial client sends the victim few requests while each waits out a
    // timeout). Then nothing is in flight to it any more.
    let flag = match fault {
        Fault::Kill => "failed_outlier_check",
        Fault::BlackHole => "failed_active_hc",
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    let marked = loop {
        let v = mesh.endpoint(VICTIM);
        if v.health_flags.contains(flag) && v.rq_active == 0 {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "{victim} not {flag} within 5s of the fault: {v:?}\n{}",
            mesh.admin("/clusters")
        );
        thread::sleep(Duration::from_millis(20));
    };
    let t_marked = monotonic();

    // 4. While marked, Remora does not try it: no connection attempt of any
    // outcome, while the client keeps being served by the other two.
    thread::sleep(WINDOW);
    let later = mesh.endpoint(VICTIM);
    let t_window_end = monotonic();
    assert!(
        later.health_flags.contains(flag),
        "{victim} came back while still failing (window longer than the ejection?): {later:?}"
    );
    assert_eq!(
        (later.cx_total, later.cx_connect_fail),
        (marked.cx_total, marked.cx_connect_fail),
        "Remora kept connecting to {victim} after marking it {flag}"
    );

    // 5. Back: the app restarted / the rule removed.
    let t_back = monotonic();
    match fault {
        Fault::Kill => apps[VICTIM] = app(&mesh.b[VICTIM], victim),
        Fault::BlackHole => {
            mesh.b[VICTIM].exec(&[
                "iptables", "-D", "INPUT", "-p", "tcp", "--dport", "8080", "-j", "DROP",
            ]);
        }
    }
    client.wait_until(
        &format!("{victim} answering again"),
        Duration::from_secs(10),
        |l| {
            samples(l)
                .iter()
                .filter(|s| s.start > t_back && s.body == victim)
                .count()
                >= 3
        },
    );
    drop(client.child.stdin.take());
    client.wait_until("client stopping", Duration::from_secs(15), |l| {
        l.last().is_some_and(|l| l == "done")
    });
    let clusters = mesh.admin("/clusters");
    let back = EndpointView::parse(&clusters, &endpoint(VICTIM));
    let ejected = ejections(&clusters);
    let (code, totals) = sidecar.stop();

    // The client saw no failure at all: not at the fault, not after.
    let all = samples(&client.lines());
    let failed: Vec<&Sample> = all.iter().filter(|s| s.status != "200").collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed ({fault:?} at {t_fault:.3}): {failed:?}",
        failed.len(),
        all.len()
    );
    let between = |from: f64, to: f64| -> Vec<&Sample> {
        all.iter()
            .filter(|s| s.start >= from && s.start < to)
            .collect()
    };
    // From the fault until it was undone, the victim answered nothing, and
    // the other two shared the load (each at least a fifth: even with round
    // robin, about even with least request's random choices over ~30).
    let down = between(t_fault, t_back);
    let n = per_pod(&down);
    assert_eq!(n[VICTIM], 0, "{victim} answered while failing");
    for i in (0..PODS.len()).filter(|&i| i != VICTIM) {
        assert!(
            n[i] * 5 >= down.len(),
            "{} served {} of {} while {victim} was out",
            PODS[i],
            n[i],
            down.len()
        );
    }
    let window = per_pod(&between(t_marked, t_window_end));
    assert!(window[0] > 0 && window[2] > 0, "window: {window:?}");
    assert!(
        back.health_flags == "healthy",
        "{victim} still marked at the end: {back:?}"
    );
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_loop_refused"), 0);
    assert_eq!(
        totals.get("rq_2xx"),
        all.len() as u64,
        "every request went through the sidecar"
    );
    if fault == Fault::Kill {
        // Ejected after three local-origin failures: refused connects, each
        // retried elsewhere under the policy, and resets of pooled
        // connections to the killed pod, each sent again on a fresh
        // connection outside the retry budget. How the three split between
        // the two depends on timing, so only "at least one refused connect,
        // retried" is certain.
        assert!(ejected >= 1, "{clusters}");
        assert!(totals.get("upstream_cx_connect_fail") >= 1);
        assert!(totals.get("rq_retry") >= 1);
    }
    eprintln!(
        "{fault:?}: {} requests, 0 failed; {victim} marked {flag} {:.0} ms after the fault; \
         during the fault b1/b3 served {}/{}; retries {}, connect failures {}, connect timeouts {}, \
         ejections {ejected}; {:.1} s",
        all.len(),
        (t_marked - t_fault) * 1000.0,
        n[0],
        n[2],
        totals.get("rq_retry"),
        totals.get("upstream_cx_connect_fail"),
        totals.get("upstream_cx_connect_timeout"),
        started.elapsed().as_secs_f64(),
    );
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn killed_pod_is_ejected_retries_hide_it_and_it_returns_after_restart() {
    require_root(&[]);
    scenario(Fault::Kill);
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn black_holed_pod_fails_health_checks_retries_hide_it_and_it_returns() {
    require_root(&[]);
    scenario(Fault::BlackHole);
}
