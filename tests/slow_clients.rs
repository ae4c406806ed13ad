//! Slow and abusive clients (issue 14) against the built binary on one core:
//! Debian's `slowhttptest` (slowloris, slow body, slow read) and scripted
//! silent clients. While each attack runs, a normal client on the same core
//! keeps being served; the attackers' connections are closed by the header,
//! body (stream idle), idle and route timeouts, and counted; memory stays
//! bounded while slow readers hold large responses. Behaviour only: no
//! timing goal.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::http::{get, Client};
use common::*;

fn admin_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn stat(port: u16, name: &str) -> u64 {
    let stats = admin_get(port, "/stats");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or(0)
}

/// A static file server (Python's http.server) with `big.bin` of `size` bytes.
struct Files {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Files {
    fn start(size: usize) -> Files {
        let dir = TempDir::new("files");
        std::fs::write(dir.0.join("big.bin"), payload(size, 7)).unwrap();
        std::fs::write(dir.0.join("small.txt"), b"hello\n").unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        // Ready when it answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            thread::sleep(Duration::from_millis(20));
        }
        Files {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Lab {
    remora: Remora,
    admin: u16,
    port: u16,
    _files: Files,
}

fn lab() -> Lab {
    let files = Files::start(4 << 20);
    let (admin, port) = (free_port(), free_port());
    let toml = format!(
        r#"[runtime]
drain_timeout = "2s"
[admin]
address = "127.0.0.1:{admin}"
prometheus_address = ""
readiness_address = ""
watch_config = false
[capture]
enabled = false
[http]
request_headers_timeout = "2s"
stream_idle_timeout = "2s"
idle_timeout = "4s"
lingering_time = "1s"
[[cluster]]
name = "files"
endpoints = ["127.0.0.1:{}"]
[[listener]]
name = "h"
address = "127.0.0.1:{port}"
cluster = "files"
protocol = "http"
[[virtual_host]]
name = "all"
domains = ["*"]
[[virtual_host.route]]
match = {{ prefix = "/" }}
cluster = "files"
timeout = "3s"
"#,
        files.port
    );
    let remora = Remora::start(&toml, &["--cores", "1"]);
    Lab {
        remora,
        admin,
        port,
        _files: files,
    }
}

fn slowhttptest(args: &[&str]) -> Child {
    Command::new("slowhttptest")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("slowhttptest (Debian package slowhttptest; tests/run installs it)")
}

/// While `attack` runs, a normal client on the same core sends requests on
/// fresh and kept-alive connections: every one must be answered 200 in
/// full. Then waits (bounded, generously, well inside the attack's 90 s)
/// until the proxy holds no connection: the attackers' connections were
/// closed by the proxy (slowhttptest itself exits early once the server has
/// closed all of them; the counters each test checks say by which timeout).
fn normal_client_is_served_while(lab: &Lab, attack: &mut Child) {
    let mut keep = Client::new(lab.port);
    for i in 0..20 {
        let resp = keep.request(&get("/small.txt", "h"));
        assert_eq!(resp.status, 200, "keep-alive request {i}: {}", resp.head);
        assert_eq!(resp.body, b"hello\n");
        let resp = Client::new(lab.port).request(&get("/small.txt", "h"));
        assert_eq!(
            resp.status, 200,
            "new-connection request {i}: {}",
            resp.head
        );
        thread::sleep(Duration::from_millis(100));
    }
    drop(keep);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let active = stat(lab.admin, "downstream_cx_active");
        if active == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{active} attacker connections still open"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let _ = attack.kill();
    let _ = attack.wait();
}

fn url(lab: &Lab, path: &str) -> String {
    format!("http://127.0.0.1:{}{path}", lab.port)
}

#[test]
fn slowloris_connections_get_408_and_a_normal_client_is_served() {
    let lab = lab();
    // 200 connections, one more header line per second, for 90 s at most.
    let mut attack = slowhttptest(&[
        "-H",
        "-c",
        "200",
        "-r",
        "100",
        "-i",
        "1",
        "-l",
        "90",
        "-u",
        &url(&lab, "/small.txt"),
    ]);
    // Let the attack connect first (bounded): the normal client then works
    // among its connections.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stat(lab.admin, "downstream_cx_total") < 50 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    normal_client_is_served_while(&lab, &mut attack);
    // Each attacker got the request header timeout's 408 (flag RHT).
    assert!(stat(lab.admin, "response_flags.RHT") >= 50);
    assert!(stat(lab.admin, "downstream_cx_lingering_close") >= 50);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

#[test]
fn slow_body_gets_408_after_the_stream_idle_timeout() {
    let lab = lab();
    // POST bodies of 8 KiB, a few bytes every 5 s (past stream_idle_timeout).
    let mut attack = slowhttptest(&[
        "-B",
        "-c",
        "100",
        "-r",
        "100",
        "-i",
        "5",
        "-s",
        "8192",
        "-l",
        "90",
        "-u",
        &url(&lab, "/small.txt"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while stat(lab.admin, "downstream_cx_total") < 50 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    normal_client_is_served_while(&lab, &mut attack);
    assert!(stat(lab.admin, "downstream_rq_body_timeout") >= 50);
    assert!(stat(lab.admin, "response_flags.SI") >= 50);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// Resident memory of `pid` in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[test]
fn slow_readers_of_large_responses_are_cut_by_the_route_timeout_in_bounded_memory() {
    let lab = lab();
    let before = rss(lab.remora.pid());
    // 100 readers of a 4 MiB file, a tiny window, 32 bytes a second: the
    // whole file would take days. Buffered whole it would be 400 MiB.
    let mut attack = slowhttptest(&[
        "-X",
        "-c",
        "100",
        "-r",
        "100",
        "-l",
        "90",
        "-k",
        "1",
        "-n",
        "1",
        "-w",
        "1",
        "-y",
        "32",
        "-z",
        "32",
        "-u",
        &url(&lab, "/big.bin"),
    ]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut peak = before;
    while stat(lab.admin, "downstream_cx_total") < 50 && Instant::now() < deadline {
        peak = peak.max(rss(lab.remora.pid()));
        thread::sleep(Duration::from_millis(50));
    }
    peak = peak.max(rss(lab.remora.pid()));
    normal_client_is_served_while(&lab, &mut attack);
    peak = peak.max(rss(lab.remora.pid()));
    // Each response was cut by the route timeout (UT; the head was out, so
    // the client got a reset).
    assert!(stat(lab.admin, "response_flags.UT") >= 50);
    // Per connection the proxy holds at most one response buffer (68 KiB),
    // never the file: 100 connections stay far below 400 MiB.
    assert!(
        peak < before + (64 << 20),
        "RSS grew from {before} to {peak} bytes"
    );
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

#[test]
fn silent_connections_are_closed_by_the_idle_timeout_and_counted() {
    let lab = lab();
    // 100 connections that never send a byte.
    let mut silent: Vec<TcpStream> = (0..100).map(|_| connect(lab.port)).collect();
    let mut c = Client::new(lab.port);
    assert_eq!(c.request(&get("/small.txt", "h")).status, 200);
    for s in &mut silent {
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut b = [0u8; 16];
        assert!(matches!(s.read(&mut b), Ok(0) | Err(_)), "not closed");
    }
    assert!(stat(lab.admin, "cx_idle_timeout") >= 100);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}
