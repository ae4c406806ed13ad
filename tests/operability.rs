//! Admin API, Prometheus, readiness, hot reload and drain, against the built
//! binary with real clients (curl, wrk, Python's prometheus_client parser).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

/// A raw HTTP/1.1 request to the admin side; returns (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[derive(Clone, Copy)]
struct Ports {
    admin: u16,
    prom: u16,
    ready: u16,
    listener: u16,
}

fn config(p: &Ports, backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[runtime]\ndrain_timeout = \"3s\"\n{extra}\n[admin]\naddress = \"127.0.0.1:{}\"\nprometheus_address = \"127.0.0.1:{}\"\nreadiness_address = \"127.0.0.1:{}\"\n[capture]\nenabled = false\n[[cluster]]\nname = \"backend\"\nendpoints = [\"{backend}\"]\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:{}\"\ncluster = \"backend\"\n",
        p.admin, p.prom, p.ready, p.listener
    )
}

fn ports() -> Ports {
    Ports {
        admin: free_port(),
        prom: free_port(),
        ready: free_port(),
        listener: free_port(),
    }
}

#[test]
fn admin_endpoints_report_real_state() {
    let echo = echo_server();
    let p = ports();
    let r = Remora::start(&config(&p, echo, ""), &["--cores", "2"]);
    // Traffic: 3 connections, 5 bytes each way.
    for _ in 0..3 {
        let mut s = connect(p.listener);
        s.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
    }
    // Connections close asynchronously; wait until the proxy has seen all three end.
    let mut stats = String::new();
    for _ in 0..200 {
        stats = http(p.admin, "GET", "/stats").1;
        if stats.contains("downstream_cx_active: 0") && stats.contains("downstream_cx_total: 3") {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(stats.contains("downstream_cx_total: 3"), "{stats}");
    assert!(stats.contains("bytes_upstream: 15"), "{stats}");
    assert!(stats.contains("bytes_downstream: 15"), "{stats}");
    assert!(stats.contains("server.concurrency: 2"), "{stats}");

    let (code, body) = http(p.admin, "GET", "/ready");
    assert_eq!(code, 200);
    assert!(body.starts_with("LIVE\nstartup_ms: "), "{body}");
    let (code, body) = http(p.ready, "GET", "/healthz/ready");
    assert_eq!((code, body.lines().next()), (200, Some("LIVE")));

    let (code, dump) = http(p.admin, "GET", "/config_dump");
    assert_eq!(code, 200);
    assert!(dump.contains("\"version\": 1"), "{dump}");
    assert!(
        dump.contains(&format!("\"address\": \"127.0.0.1:{}\"", p.listener)),
        "{dump}"
    );

    let (_, clusters) = http(p.admin, "GET", "/clusters");
    assert!(
        clusters.contains(&format!("backend::{echo}::cx_total::3")),
        "{clusters}"
    );

    // Log level changes at run time.
    let (code, _) = http(p.admin, "POST", "/logging?level=debug");
    assert_eq!(code, 200);
    assert!(http(p.admin, "GET", "/logging").1.contains("debug"));
    assert_eq!(http(p.admin, "POST", "/logging?level=no[such").0, 400);
    assert_eq!(http(p.admin, "GET", "/nope").0, 404);
    assert_eq!(http(p.admin, "GET", "/quitquitquit").0, 405);
    r.stop();
}

/// The Prometheus output parses with the reference Python parser and its
/// counters match the traffic.
#[test]
fn prometheus_text_parses_and_matches_traffic() {
    let have_client = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_client,
        "python3 prometheus_client missing: tests/run installs it (pip install prometheus_client)"
    );
    let echo = echo_server();
    let p = ports();
    let r = Remora::start(&config(&p, echo, ""), &["--cores", "2"]);
    for _ in 0..4 {
        let mut s = connect(p.listener);
        s.write_all(b"abc").unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).unwrap();
    }
    thread::sleep(Duration::from_millis(200));
    let script = format!(
        r#"
import urllib.request, sys
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen("http://127.0.0.1:{}/stats/prometheus").read().decode()
m = {{}}
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        m[(s.name, tuple(sorted(s.labels.items())))] = s.value
def get(name, **labels):
    return m[(name, tuple(sorted(labels.items())))]
assert get("remora_downstream_cx_total") == 4, get("remora_downstream_cx_total")
assert get("remora_bytes_upstream_total") == 12
assert get("remora_downstream_cx_active") == 0
assert get("remora_server_config_version") == 1
assert get("remora_downstream_cx_length_ms_count") == 4
assert get("remora_downstream_cx_length_ms_bucket", le="+Inf") == 4
assert get("remora_cluster_upstream_cx_total", cluster_name="backend", endpoint="{echo}") == 4
print("ok")
"#,
        p.prom
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    r.stop();
}

/// A broken file is rejected with file, line and reason; the running config
/// keeps serving; good files advance the version; listeners follow the file.
#[test]
fn reload_good_and_broken_files() {
    let echo = echo_server();
    let p = ports();
    let mut r = Remora::start(&config(&p, echo, ""), &["--cores", "2"]);
    let cfg_path = r.config_path();
    // Broken: unknown key on line 2.
    std::fs::write(&cfg_path, "[runtime]\nbogus = 1\n").unwrap();
    let (code, body) = http(p.admin, "POST", "/reload");
    assert_eq!(code, 400);
    assert!(
        body.contains(&format!(
            "{}:2:1: unknown field `bogus`",
            cfg_path.display()
        )),
        "{body}"
    );
    let dump = http(p.admin, "GET", "/config_dump").1;
    assert!(
        dump.contains("\"version\": 1") && dump.contains("unknown field"),
        "{dump}"
    );
    // Still serving.
    let mut s = connect(p.listener);
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();

    // Good: a second listener appears, served by every core.
    let extra = free_port();
    let good = config(&p, echo, "")
        + &format!(
            "[[listener]]\nname = \"m\"\naddress = \"127.0.0.1:{extra}\"\ncluster = \"backend\"\n"
        );
    std::fs::write(&cfg_path, &good).unwrap();
    r.signal(libc::SIGHUP);
    r.wait_for_log("config reloaded");
    assert!(http(p.admin, "GET", "/config_dump")
        .1
        .contains("\"version\": 2"));
    for _ in 0..4 {
        let mut s = connect(extra);
        s.write_all(b"y").unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"y");
    }
    // The connection opened before the reload still works.
    s.write_all(b"z").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"z");

    // A file change alone (inotify) removes the listener again.
    std::fs::write(&cfg_path, config(&p, echo, "")).unwrap();
    r.wait_for_log("version=3");
    let refused = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(20));
        TcpStream::connect(("127.0.0.1", extra)).is_err()
    });
    assert!(refused, "removed listener still accepts");
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("cx_reset"), 0);
}

/// 100 reloads, alternating good and broken files, under wrk load through an
/// L4 listener: no failed request, no reset connection, and the version
/// follows the good files only.
#[test]
fn hundred_reloads_under_load_drop_nothing() {
    let dir = TempDir::new("nginx");
    let backend_port = free_port();
    let body = "x".repeat(612);
    dir.file("index.html", &body);
    let conf = dir.file(
        "nginx.conf",
        &format!(
            "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{ access_log off; keepalive_requests 1000000; server {{ listen 127.0.0.1:{backend_port}; root {d}; }} }}\n",
            d = dir.0.display()
        ),
    );
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (tests/run installs nginx-light)"),
    );
    let backend = format!("127.0.0.1:{backend_port}").parse().unwrap();
    let p = ports();
    // An L4 listener (from `config`) and an L7 one routing everything to nginx.
    let l7_port = free_port();
    let with_l7 = move |extra: &str| {
        config(&p, backend, extra)
            + &format!(
                "[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{l7_port}\"\ncluster = \"backend\"\nprotocol = \"http\"\n[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"backend\"\n"
            )
    };
    let r = Remora::start(&with_l7(""), &["--cores", "2"]);
    let cfg_path = r.config_path();
    let _ = connect(backend_port);
    let wrk = |port: u16| {
        Command::new("wrk")
            .args([
                "-t1",
                "-c10",
                "-d6s",
                &format!("http://127.0.0.1:{port}/index.html"),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("wrk (tests/run installs it)")
    };
    // Both load generators run while the reloads happen.
    let loads = [wrk(p.listener), wrk(l7_port)];
    // Written the way a careful operator (or Kubernetes) does: a temporary file
    // renamed over the config, so no reload ever sees half a file.
    let write = move |path: &std::path::Path, text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let reloads = thread::spawn(move || {
        let mut expected = 1;
        for i in 0..100u32 {
            if i % 2 == 0 {
                let extra = format!("max_connections_per_core = {}", 10_000 + i);
                write(&cfg_path, &with_l7(&extra));
                expected += 1;
                let (code, body) = http(p.admin, "POST", "/reload");
                assert_eq!(code, 200, "{body}");
                assert_eq!(body.trim(), format!("OK version {expected}"));
            } else {
                write(&cfg_path, "[runtime]\ncores = \"many\"\n");
                let (code, body) = http(p.admin, "POST", "/reload");
                assert_eq!(code, 400, "{body}");
                assert!(body.contains(":2:9:"), "{body}");
            }
            thread::sleep(Duration::from_millis(40));
        }
        (expected, p.admin)
    });
    let (expected, admin) = reloads.join().unwrap();
    // Inotify may add reloads of its own, but only of files already seen;
    // the version must equal the number of good files published.
    let dump = http(admin, "GET", "/config_dump").1;
    assert!(dump.contains(&format!("\"version\": {expected}")), "{dump}");
    for (load, what) in loads.into_iter().zip(["L4", "L7"]) {
        let out = load.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains("requests in"), "{what}: {out}");
        assert!(
            !out.contains("Socket errors"),
            "{what}: wrk saw socket errors:\n{out}"
        );
        assert!(
            !out.contains("Non-2xx"),
            "{what}: wrk saw failed requests:\n{out}"
        );
    }
    // (No cx_reset check here: wrk itself resets its connections when it stops.)
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}

/// nginx's master, stopped (with its workers) even if the test panics.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master take its workers down; SIGKILL would orphan them.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn drain_listeners_and_quitquitquit() {
    let echo = echo_server();
    let p = ports();
    let mut r = Remora::start(&config(&p, echo, ""), &["--cores", "1"]);
    let mut s = connect(p.listener);
    s.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(http(p.admin, "POST", "/drain_listeners").0, 200);
    r.wait_for_log("listener closed");
    assert!(TcpStream::connect(("127.0.0.1", p.listener)).is_err());
    // Readiness flips so the orchestrator stops sending traffic.
    assert_eq!(http(p.ready, "GET", "/healthz/ready").0, 503);
    // The open connection is still served.
    s.write_all(b"b").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    drop(s);
    assert_eq!(http(p.admin, "POST", "/quitquitquit").0, 200);
    let status = r.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// One access-log line per connection, in Envoy's text format or as JSON,
/// flushed by the end of the drain.
#[test]
fn access_log_text_and_json() {
    let echo = echo_server();
    for format in ["text", "json"] {
        let dir = TempDir::new("alog");
        let path = dir.0.join("access.log");
        let p = ports();
        let extra = format!(
            "[access_log]\npath = \"{}\"\nformat = \"{format}\"\n",
            path.display()
        );
        let r = Remora::start(&config(&p, echo, &extra), &["--cores", "2"]);
        for _ in 0..3 {
            let mut s = connect(p.listener);
            s.write_all(b"12345").unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
        }
        let (code, _) = r.stop();
        assert_eq!(code, 0);
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{format}:\n{log}");
        for l in lines {
            if format == "text" {
                assert!(l.starts_with('['), "{l}");
                assert!(l.contains("\"- - -\" 0 - 5 5 "), "{l}");
                assert!(l.ends_with(&format!("\"{echo}\"")), "{l}");
            } else {
                let check = Command::new("python3")
                    .arg("-c")
                    .arg(format!(
                        "import json,sys; e=json.loads(sys.argv[1]); assert e['bytes_received']==5 and e['bytes_sent']==5 and e['protocol']=='TCP' and e['upstream_host']=='{echo}' and e['listener']=='l', e"
                    ))
                    .arg(l)
                    .status()
                    .unwrap();
                assert!(check.success(), "{l}");
            }
        }
    }
}
