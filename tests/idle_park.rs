//! Parked idle HTTP/1 connections (src/net/park.rs): a keep-alive connection
//! still idle after 100 ms waits in its core's epoll fd instead of a glommio
//! read. It must still be answered, idle out, close, drain and scale like
//! one that waits the ordinary way. Waits for the park by polling the
//! `downstream_cx_idle_parked` counter, never by timing alone.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::http::*;
use common::*;

struct Lab {
    remora: Remora,
    admin: u16,
    port: u16,
    _backend: Backend,
}

fn lab(http: &str) -> Lab {
    let backend = Backend::start("a");
    let (admin, port) = (free_port(), free_port());
    let toml = format!(
        "[runtime]\ndrain_timeout = \"30s\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\nprometheus_address = \"\"\nreadiness_address = \"\"\nwatch_config = false\n[capture]\nenabled = false\n[http]\n{http}\n[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"a\"\nprotocol = \"http\"\n[[cluster]]\nname = \"a\"\nendpoints = [\"{}\"]\nconnect_timeout = \"2s\"\n[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"a\"\n",
        backend.addr
    );
    let remora = Remora::start(&toml, &["--cores", "1"]);
    Lab {
        remora,
        admin,
        port,
        _backend: backend,
    }
}

fn stat(admin: u16, name: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /stats HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded, generously) until `name` reaches `at_least`.
fn wait_stat(admin: u16, name: &str, at_least: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = stat(admin, name);
        if v >= at_least {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {v} < {at_least}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

const PARKED: &str = "downstream_cx_idle_parked";

/// A parked connection gets its next request answered, whether the request
/// comes whole, split across writes (the rest is read the ordinary way after
/// the parked read), or pipelined; it parks again after each.
#[test]
fn parked_connections_answer_their_next_request() {
    let lab = lab("");
    let mut c = Client::new(lab.port);
    assert_eq!(c.request(&get("/1", "x")).status, 200);
    wait_stat(lab.admin, PARKED, 1);

    assert_eq!(c.request(&get("/2", "x")).status, 200);
    wait_stat(lab.admin, PARKED, 2);

    // Split: the parked read takes the first bytes only.
    c.w.write_all(b"GE").unwrap();
    thread::sleep(Duration::from_millis(50));
    let resp = c.request("T /3 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/3");
    wait_stat(lab.admin, PARKED, 3);

    // Pipelined: both answered, in order.
    c.w.write_all(format!("{}{}", get("/4", "x"), get("/5", "x")).as_bytes())
        .unwrap();
    assert_eq!(c.response().json()["path"], "/4");
    assert_eq!(c.response().json()["path"], "/5");

    // A connection that has not sent its first request parks too.
    let mut fresh = Client::new(lab.port);
    let before = stat(lab.admin, PARKED);
    wait_stat(lab.admin, PARKED, before + 2);
    assert_eq!(fresh.request(&get("/6", "x")).status, 200);
    let (code, counters) = lab.remora.stop();
    assert_eq!(code, 0);
    assert!(counters.get(PARKED) >= 4);
}

/// A parked connection is closed quietly at idle_timeout and counted.
#[test]
fn parked_connection_is_closed_at_the_idle_timeout() {
    let lab = lab("idle_timeout = \"1s\"");
    let mut c = Client::new(lab.port);
    assert_eq!(c.request(&get("/x", "x")).status, 200);
    wait_stat(lab.admin, PARKED, 1);
    let mut left = Vec::new();
    c.r.read_to_end(&mut left).expect("closed by the proxy");
    assert!(left.is_empty(), "{}", String::from_utf8_lossy(&left));
    wait_stat(lab.admin, "cx_idle_timeout", 1);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// Clients that close while parked end their connections (the proxy's
/// active count goes back down); the next ones park and are answered.
#[test]
fn parked_connections_closed_by_the_client_end() {
    let lab = lab("");
    let active = |lab: &Lab| stat(lab.admin, "downstream_cx_active");
    for round in 1..=3u64 {
        let mut clients: Vec<Client> = (0..20).map(|_| Client::new(lab.port)).collect();
        for c in &mut clients {
            assert_eq!(c.request(&get("/c", "x")).status, 200);
        }
        wait_stat(lab.admin, PARKED, 20 * round);
        drop(clients);
        let deadline = Instant::now() + Duration::from_secs(30);
        while active(&lab) > 0 {
            assert!(Instant::now() < deadline, "parked connections did not end");
            thread::sleep(Duration::from_millis(20));
        }
    }
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// SIGTERM closes parked connections at once (not after the 30 s drain).
#[test]
fn stop_closes_parked_connections() {
    let lab = lab("");
    let mut c = Client::new(lab.port);
    assert_eq!(c.request(&get("/x", "x")).status, 200);
    wait_stat(lab.admin, PARKED, 1);
    lab.remora.signal(libc::SIGTERM);
    let mut left = Vec::new();
    c.r.read_to_end(&mut left)
        .expect("closed by the stopping proxy");
    assert!(left.is_empty());
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// A thousand parked connections on one core: all answered afterwards,
/// in any order, and all park again.
#[test]
fn many_parked_connections_are_all_answered() {
    const N: u64 = 1000;
    let lab = lab("");
    let mut clients: Vec<Client> = (0..N).map(|_| Client::new(lab.port)).collect();
    for c in &mut clients {
        assert_eq!(c.request(&get("/m", "x")).status, 200);
    }
    wait_stat(lab.admin, PARKED, N);
    // Every client writes first, then all read: many wake in one pass.
    for c in &mut clients {
        c.w.write_all(get("/again", "x").as_bytes()).unwrap();
    }
    for c in clients.iter_mut().rev() {
        assert_eq!(c.response().json()["path"], "/again");
    }
    wait_stat(lab.admin, PARKED, 2 * N);
    drop(clients);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}
