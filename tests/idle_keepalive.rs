//! Idle HTTP/1 keep-alive connections: one that has been idle a while (its
//! socket waiting on a readiness wait of its own, src/net/tcp.rs) is
//! answered when its next request comes whole, split or pipelined, idles
//! out, ends when its client closes, is closed at once by a stop, and a
//! thousand of them on one core are all answered. (Until session 40 these
//! were the tests of parking, which such connections did after 100 ms.)

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

/// Lets the connections go idle: longer than the 100 ms after which they
/// used to park, so that these tests keep covering what parking did.
fn go_idle() {
    thread::sleep(Duration::from_millis(150));
}

/// An idle connection gets its next request answered, whether the request
/// comes whole, split across writes (the first read takes the first bytes,
/// the rest follows), or pipelined; it goes idle again after each.
#[test]
fn idle_connections_answer_their_next_request() {
    let lab = lab("");
    let mut c = Client::new(lab.port);
    assert_eq!(c.request(&get("/1", "x")).status, 200);
    go_idle();

    assert_eq!(c.request(&get("/2", "x")).status, 200);
    go_idle();

    // Split: the first read takes the first bytes only.
    c.w.write_all(b"GE").unwrap();
    thread::sleep(Duration::from_millis(50));
    let resp = c.request("T /3 HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["path"], "/3");
    go_idle();

    // Pipelined: both answered, in order.
    c.w.write_all(format!("{}{}", get("/4", "x"), get("/5", "x")).as_bytes())
        .unwrap();
    assert_eq!(c.response().json()["path"], "/4");
    assert_eq!(c.response().json()["path"], "/5");

    // A connection that has not sent its first request waits too.
    let mut fresh = Client::new(lab.port);
    go_idle();
    assert_eq!(fresh.request(&get("/6", "x")).status, 200);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// An idle connection is closed quietly at idle_timeout and counted.
#[test]
fn idle_connection_is_closed_at_the_idle_timeout() {
    let lab = lab("idle_timeout = \"1s\"");
    let mut c = Client::new(lab.port);
    assert_eq!(c.request(&get("/x", "x")).status, 200);
    go_idle();
    let mut left = Vec::new();
    c.r.read_to_end(&mut left).expect("closed by the proxy");
    assert!(left.is_empty(), "{}", String::from_utf8_lossy(&left));
    wait_stat(lab.admin, "cx_idle_timeout", 1);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// Clients that close while idle end their connections (the proxy's
/// active count goes back down); the next ones go idle and are answered.
#[test]
fn idle_connections_closed_by_the_client_end() {
    let lab = lab("");
    let active = |lab: &Lab| stat(lab.admin, "downstream_cx_active");
    for _ in 0..3 {
        let mut clients: Vec<Client> = (0..20).map(|_| Client::new(lab.port)).collect();
        for c in &mut clients {
            assert_eq!(c.request(&get("/c", "x")).status, 200);
        }
        go_idle();
        drop(clients);
        let deadline = Instant::now() + Duration::from_secs(30);
        while active(&lab) > 0 {
            assert!(Instant::now() < deadline, "idle connections did not end");
            thread::sleep(Duration::from_millis(20));
        }
    }
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// SIGTERM closes idle connections at once (not after the 30 s drain).
#[test]
fn stop_closes_idle_connections() {
    let lab = lab("");
    let mut c = Client::new(lab.port);
    assert_eq!(c.request(&get("/x", "x")).status, 200);
    go_idle();
    lab.remora.signal(libc::SIGTERM);
    let mut left = Vec::new();
    c.r.read_to_end(&mut left)
        .expect("closed by the stopping proxy");
    assert!(left.is_empty());
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}

/// A thousand idle connections on one core: all answered afterwards, in
/// any order (many woken in one pass).
#[test]
fn many_idle_connections_are_all_answered() {
    const N: u64 = 1000;
    let lab = lab("");
    let mut clients: Vec<Client> = (0..N).map(|_| Client::new(lab.port)).collect();
    for c in &mut clients {
        assert_eq!(c.request(&get("/m", "x")).status, 200);
    }
    go_idle();
    // Every client writes first, then all read: many wake in one pass.
    for c in &mut clients {
        c.w.write_all(get("/again", "x").as_bytes()).unwrap();
    }
    for c in clients.iter_mut().rev() {
        assert_eq!(c.response().json()["path"], "/again");
    }
    go_idle();
    drop(clients);
    let (code, _) = lab.remora.stop();
    assert_eq!(code, 0);
}
