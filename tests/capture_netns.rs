//! Root only (`#[ignore]`d; tests/run runs it as root with `--ignored`): the
//! capture ports work behind real iptables REDIRECT rules in
//! real network namespaces, IPv4 and IPv6, with Remora running as uid 1337.
//!
//! Pod A (client + sidecar, outbound capture) ── veth ── pod B (app + sidecar,
//! inbound capture). The app replies with the peer address it sees, which must
//! be the passthrough source 127.0.0.6 / ::6.
//! (The full Istio rule set and `remora iptables` are tested in their own file.)

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed on drop, even after a panic.
struct Pods {
    a: String,
    b: String,
    /// Pod B's end of the veth pair.
    vb: String,
}

impl Pods {
    fn new() -> Pods {
        // Tests in this file run in parallel: names are unique per test too.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id());
        let pods = Pods {
            a: format!("rmr2a-{id}"),
            b: format!("rmr2b-{id}"),
            vb: format!("vb{id}"),
        };
        let (a, b) = (&pods.a, &pods.b);
        sh(&format!("ip netns add {a} && ip netns add {b}"));
        sh(&format!(
            "ip link add va{id} netns {a} type veth peer name vb{id} netns {b}"
        ));
        for (ns, dev, v4, v6) in [
            (a, format!("va{id}"), "10.77.0.1", "fd77::1"),
            (b, format!("vb{id}"), "10.77.0.2", "fd77::2"),
        ] {
            sh(&format!(
                "ip -n {ns} link set lo up && ip -n {ns} addr add {v4}/24 dev {dev} && \
                 ip -n {ns} -6 addr add {v6}/64 dev {dev} nodad && ip -n {ns} link set {dev} up"
            ));
        }
        pods
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.a]).status();
        let _ = Command::new("ip").args(["netns", "del", &self.b]).status();
    }
}

/// Waits until something accepts on `addr` inside `ns`.
fn wait_listening(ns: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "ss",
                "-Hltn",
                &format!("sport = :{port}"),
            ])
            .output()
            .unwrap();
        if !out.stdout.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "nothing listens on {port} in {ns}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Remora in `ns` as uid 1337 (so its own connections are not captured).
fn sidecar(ns: &str, cfg: &std::path::Path) -> Remora {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns])
        .args(common::netns::AS_PROXY_USER)
        .args([BIN, "run", "--cores", "1", "--config"])
        .arg(cfg);
    let mut r = Remora::spawn(cmd, TempDir::new("netns-sidecar"));
    r.wait_ready();
    r
}

/// Captures pod A's outbound TCP to pod B (except uid 1337's) and pod B's inbound.
fn capture_rules(pods: &Pods) {
    let (a, b, vb) = (&pods.a, &pods.b, &pods.vb);
    for (ipt, dst) in [("iptables", "10.77.0.2"), ("ip6tables", "fd77::2")] {
        sh(&format!(
            "ip netns exec {a} {ipt} -t nat -A OUTPUT -p tcp -d {dst} -m owner ! --uid-owner 1337 -j REDIRECT --to-ports 15001"
        ));
        sh(&format!(
            "ip netns exec {b} {ipt} -t nat -A PREROUTING -p tcp -i {vb} -j REDIRECT --to-ports 15006"
        ));
    }
}

const APP: &str = r#"
import socket, threading
def serve(fam, addr):
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, 8080)); s.listen(64)
    while True:
        c, peer = s.accept()
        c.recv(100)
        c.sendall(("peer=%s" % peer[0]).encode()); c.close()
threading.Thread(target=serve, args=(socket.AF_INET, "0.0.0.0"), daemon=True).start()
serve(socket.AF_INET6, "::")
"#;

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn outbound_and_inbound_capture_through_real_redirect_rules() {
    common::netns::require_root(&[]);
    let pods = Pods::new();
    let (a, b) = (pods.a.clone(), pods.b.clone());
    // Pod A: capture the client's outbound TCP to pod B, except the sidecar's
    // own; pod B: capture inbound TCP arriving on the veth.
    capture_rules(&pods);
    // The IPv6 passthrough source must exist to be bindable (Istio's init adds it too).
    sh(&format!("ip -n {b} -6 addr add ::6/128 dev lo"));

    let mut app = Command::new("ip")
        .args(["netns", "exec", &b, "python3", "-c", APP])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&b, 8080);

    let dir = TempDir::new("netns");
    let cfg = dir.file("c.toml", "[runtime]\ndrain_timeout = \"1s\"\n");
    let sa = sidecar(&a, &cfg);
    let sb = sidecar(&b, &cfg);

    let fetch = |dst: &str| -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &a, "python3", "-c"])
            .arg(format!(
                "import socket; s = socket.create_connection(('{dst}', 8080), timeout=10); s.sendall(b'hi'); print(s.recv(100).decode())"
            ))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "client to {dst}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(fetch("10.77.0.2"), "peer=127.0.0.6");
    assert_eq!(fetch("fd77::2"), "peer=::6");

    // The sidecar's own connection from pod A (uid 1337) is not captured again,
    // and both sidecars saw both connections.
    let (code_a, ta) = sa.stop();
    let (code_b, tb) = sb.stop();
    assert_eq!((code_a, code_b), (0, 0));
    assert_eq!(ta.get("downstream_cx_total"), 2, "pod A sidecar");
    assert_eq!(ta.get("upstream_cx_total"), 2, "pod A sidecar");
    assert_eq!(ta.get("downstream_cx_loop_refused"), 0);
    assert_eq!(tb.get("downstream_cx_total"), 2, "pod B sidecar");
    assert_eq!(tb.get("upstream_cx_total"), 2, "pod B sidecar");

    // With the sidecars gone the captured path is broken: proof the traffic
    // really went through them rather than around them.
    let out = Command::new("ip")
        .args(["netns", "exec", &a, "python3", "-c"])
        .arg("import socket; s = socket.create_connection(('10.77.0.2', 8080), timeout=5); s.sendall(b'hi'); print(s.recv(100).decode())")
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("peer="),
        "reached the app without pod B's sidecar"
    );

    let _ = app.kill();
    let _ = app.wait();
}

/// HTTP through both capture ports with the default `protocol = "auto"`: each
/// sidecar detects HTTP/1, forwards to the original destination (passthrough
/// route) and applies L7 treatment (X-Request-Id, X-Forwarded-Proto,
/// keep-alive). X-Forwarded-For goes as the client sent it: Istio's sidecars
/// run Envoy with `use_remote_address: false`, and so do the capture ports.
#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn http_through_capture_takes_the_l7_passthrough_path() {
    common::netns::require_root(&[]);
    let pods = Pods::new();
    let (a, b) = (pods.a.clone(), pods.b.clone());
    capture_rules(&pods);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/backend.py");
    let mut app = Command::new("ip")
        .args([
            "netns", "exec", &b, "python3", script, "8080", "app", "0.0.0.0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(&b, 8080);
    let dir = TempDir::new("netns-http");
    let cfg = dir.file("c.toml", "[runtime]\ndrain_timeout = \"1s\"\n");
    let sa = sidecar(&a, &cfg);
    let sb = sidecar(&b, &cfg);

    let out = Command::new("ip")
        .args(["netns", "exec", &a, "curl", "-sS", "--max-time", "10"])
        .args(["-H", "X-Forwarded-For: 192.0.2.7"])
        .args(["http://10.77.0.2:8080/one", "http://10.77.0.2:8080/two"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bodies: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(bodies.len(), 2);
    for (j, path) in bodies.iter().zip(["/one", "/two"]) {
        assert_eq!(j["path"], path);
        let h = &j["headers"];
        assert_eq!(h["x-request-id"].as_str().map(str::len), Some(36), "{h}");
        // Untouched by both sidecars (`use_remote_address` off).
        assert_eq!(h["x-forwarded-for"], "192.0.2.7", "{h}");
        assert_eq!(h["x-forwarded-proto"], "http");
    }
    let (code_a, ta) = sa.stop();
    let (code_b, tb) = sb.stop();
    assert_eq!((code_a, code_b), (0, 0));
    for (name, t) in [("pod A", &ta), ("pod B", &tb)] {
        assert_eq!(t.get("downstream_cx_http"), 1, "{name}");
        assert_eq!(t.get("rq_2xx"), 2, "{name}");
        assert_eq!(t.get("downstream_cx_loop_refused"), 0, "{name}");
    }
    // Pod B's sidecar reused one upstream connection to the app for both.
    assert_eq!(tb.get("upstream_cx_total"), 1);
    let _ = app.kill();
    let _ = app.wait();
}
