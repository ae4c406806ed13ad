//! Resource behaviour: idle connections cost no kernel threads and little
//! memory; fd exhaustion is backed off from and recovered from.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// A backend that accepts and holds connections (one thread for all of them).
fn holding_backend() -> (std::net::SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let l = listener();
    let addr = l.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let h = held.clone();
    thread::spawn(move || {
        for s in l.incoming().map_while(Result::ok) {
            h.lock().unwrap().push(s);
        }
    });
    (addr, held)
}

fn threads_of(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("comm")).ok())
        .map(|s| s.trim().to_string())
        .collect()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// 1,000 idle forwarded connections, in both modes: no io_uring worker thread
/// (`iou-wrk-*`) per connection, and a bounded amount of memory each.
#[test]
fn thousand_idle_connections_cost_no_threads_and_little_memory() {
    for mode in ["copy", "splice"] {
        let (backend, held) = holding_backend();
        let p = free_port();
        let r = Remora::start(
            &l4_config(backend, &[("c", p, mode)], ""),
            &["--cores", "1"],
        );
        let pid = r.pid();
        // Warm up allocator and pools with one active connection first.
        {
            let mut s = connect(p);
            s.write_all(b"warm").unwrap();
        }
        wait_until("backend to see the warm-up connection", || {
            held.lock().unwrap().len() == 1
        });
        let rss_before = rss_kib(pid);
        let clients: Vec<TcpStream> = (0..1000).map(|_| connect(p)).collect();
        wait_until("1000 upstream connections", || {
            held.lock().unwrap().len() == 1001
        });
        // Let every connection's first readiness wait be submitted.
        thread::sleep(Duration::from_millis(200));
        let threads = threads_of(pid);
        let workers = threads.iter().filter(|t| t.starts_with("iou-wrk")).count();
        assert!(
            workers < 10,
            "{mode}: {workers} io_uring worker threads for 1000 idle connections: {threads:?}"
        );
        let grown = rss_kib(pid).saturating_sub(rss_before);
        // Goal is ~4 KiB per connection (10k idle ≤ 40 MiB); allow headroom.
        assert!(
            grown < 1000 * 8,
            "{mode}: RSS grew by {grown} KiB for 1000 idle connections"
        );
        eprintln!(
            "{mode}: 1000 idle connections: +{grown} KiB RSS, {} threads",
            threads.len()
        );
        // They all still work afterwards.
        for (i, mut c) in clients.into_iter().enumerate().step_by(97) {
            c.write_all(&[i as u8]).unwrap();
        }
        held.lock().unwrap().clear();
        let (code, totals) = r.stop();
        assert_eq!(code, 0);
        assert_eq!(totals.get("downstream_cx_total"), 1001);
    }
}

/// With no fd to spare the accept loop hits EMFILE: it must back off (few
/// errors, not a spin), keep the process alive, and serve again once fds free up.
#[test]
fn fd_exhaustion_backs_off_and_recovers() {
    let echo = echo_server();
    let p = free_port();
    let mut r = Remora::start(&l4_config(echo, &[("c", p, "copy")], ""), &["--cores", "1"]);
    let pid = r.pid();
    let prlimit = |n: usize| {
        let st = Command::new("prlimit")
            .arg(format!("--pid={pid}"))
            .arg(format!("--nofile={n}:20000"))
            .status()
            .unwrap();
        assert!(st.success(), "prlimit failed");
    };
    // No fd left: the limit is the lowest free fd number, so every accept (and
    // every upstream socket) fails with EMFILE. (Counting open fds would not do:
    // the limit caps fd *numbers*, and a gap below it would still be usable.)
    let used: Vec<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !used.contains(n)).unwrap();
    prlimit(lowest_free);
    // The kernel completes these handshakes into the backlog; the proxy cannot
    // accept them yet.
    let mut clients: Vec<TcpStream> = (0..5).map(|_| connect(p)).collect();
    r.wait_for_log("accept failed; backing off");
    // Stay exhausted for a while: a spinning loop would rack up thousands of errors.
    thread::sleep(Duration::from_millis(1500));
    prlimit(20000);
    // Recovery: the queued connections and a fresh one are served end to end.
    clients.push(connect(p));
    for (i, c) in clients.iter_mut().enumerate() {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = [b'a' + i as u8; 3];
        let mut b = [0u8; 3];
        match c.write_all(&msg).and_then(|_| c.read_exact(&mut b)) {
            Ok(()) => assert_eq!(b, msg),
            // A connection accepted while the upstream socket could not be
            // created is reset (counted as a connect failure); that is fine,
            // what matters is that later ones work.
            Err(e) => assert!(i < 5, "fresh connection failed after recovery: {e}"),
        }
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    let errors = totals.get("accept_errors");
    assert!(errors >= 1, "EMFILE was never hit");
    assert!(errors < 200, "accept loop spun: {errors} errors in ~1.5 s");
}
