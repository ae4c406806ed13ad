//! L4 forwarding through the built binary, on real loopback sockets.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::thread;
use std::time::Duration;

use common::*;

/// Sends `data`, half-closes, reads everything back.
fn roundtrip(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = connect(port);
    let mut w = s.try_clone().unwrap();
    let data2 = data.to_vec();
    let writer = thread::spawn(move || {
        w.write_all(&data2).unwrap();
        w.shutdown(Shutdown::Write).unwrap();
    });
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    got
}

#[test]
fn bytes_intact_both_modes_small_and_large() {
    let echo = echo_server();
    let (pc, ps) = (free_port(), free_port());
    let r = Remora::start(
        &l4_config(echo, &[("c", pc, "copy"), ("s", ps, "splice")], ""),
        &["--cores", "1"],
    );
    for port in [pc, ps] {
        for (len, seed) in [
            (1usize, 1u64),
            (1500, 2),
            (64 * 1024 + 7, 3),
            (8 * 1024 * 1024 + 13, 4),
        ] {
            let data = payload(len, seed);
            let got = roundtrip(port, &data);
            assert_eq!(got.len(), data.len(), "port {port} len {len}");
            assert!(
                got == data,
                "payload corrupted through port {port}, len {len}"
            );
        }
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_total"), 8);
    let expected: u64 = 2 * (1 + 1500 + 64 * 1024 + 7 + 8 * 1024 * 1024 + 13);
    assert_eq!(totals.get("bytes_upstream"), expected);
    assert_eq!(totals.get("bytes_downstream"), expected);
}

/// A server that writes a large response only after the client half-closed:
/// the client→server FIN must arrive while server→client stays open.
#[test]
fn half_close_keeps_the_other_direction_open() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            thread::spawn(move || {
                let mut req = Vec::new();
                s.read_to_end(&mut req).unwrap(); // returns only at the client's FIN
                let reply = payload(3 * 1024 * 1024, req.len() as u64);
                s.write_all(&reply).unwrap();
            });
        }
    });
    let (pc, ps) = (free_port(), free_port());
    let r = Remora::start(
        &l4_config(backend, &[("c", pc, "copy"), ("s", ps, "splice")], ""),
        &["--cores", "1"],
    );
    for port in [pc, ps] {
        let got = roundtrip(port, b"question");
        assert!(got == payload(3 * 1024 * 1024, 8), "port {port}");
    }
    let (_, totals) = r.stop();
    assert_eq!(totals.get("cx_reset"), 0);
}

/// A backend that reads slowly: the proxy's writes to it hit a full socket
/// again and again, in the middle of bulk transfers (spliced or copied). The
/// bytes held back each time must go out before any later ones.
#[test]
fn back_pressure_keeps_bytes_in_order_both_modes() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            thread::spawn(move || {
                let mut got = Vec::new();
                let mut buf = [0u8; 16 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    if got.len() % (512 * 1024) < buf.len() {
                        thread::sleep(Duration::from_millis(20));
                    }
                }
                // Answer with what arrived, so the client can compare.
                let _ = s.write_all(&got);
            });
        }
    });
    let (pc, ps) = (free_port(), free_port());
    let r = Remora::start(
        &l4_config(backend, &[("c", pc, "copy"), ("s", ps, "splice")], ""),
        &["--cores", "1"],
    );
    for port in [pc, ps] {
        let data = payload(12 * 1024 * 1024 + 5, u64::from(port));
        let got = roundtrip(port, &data);
        assert_eq!(got.len(), data.len(), "port {port}");
        assert!(
            got == data,
            "bytes reordered or corrupted through port {port}"
        );
    }
    let (_, totals) = r.stop();
    assert_eq!(totals.get("cx_reset"), 0);
}

#[test]
fn upstream_refused_resets_downstream_and_is_counted() {
    let (dead, _hold) = refusing_addr();
    let p = free_port();
    let r = Remora::start(&l4_config(dead, &[("c", p, "copy")], ""), &["--cores", "1"]);
    let mut s = connect(p);
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("got {n} bytes from a dead upstream"),
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("upstream_cx_connect_fail"), 1);
    assert_eq!(totals.get("upstream_cx_total"), 0);
}

/// The upstream resets mid-stream; the client must see a reset, not a clean EOF.
#[test]
fn upstream_reset_propagates() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
            s.write_all(b"partial").unwrap();
            // SO_LINGER 0 + close = RST.
            let sock = socket2::Socket::from(s);
            sock.set_linger(Some(Duration::ZERO)).unwrap();
            drop(sock);
        }
    });
    for mode in ["copy", "splice"] {
        let p = free_port();
        let r = Remora::start(
            &l4_config(backend, &[("c", p, mode)], ""),
            &["--cores", "1"],
        );
        let mut s = connect(p);
        s.write_all(b"hello").unwrap();
        let mut got = Vec::new();
        let err = loop {
            let mut buf = [0u8; 64];
            match s.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Some(e),
            }
        };
        assert_eq!(
            err.map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionReset),
            "mode {mode}: reset became a clean close"
        );
        let (_, totals) = r.stop();
        assert_eq!(totals.get("cx_reset"), 1, "mode {mode}");
    }
}

#[test]
fn many_concurrent_connections() {
    let echo = echo_server();
    let p = free_port();
    let r = Remora::start(&l4_config(echo, &[("c", p, "copy")], ""), &[]);
    let workers: Vec<_> = (0..200u64)
        .map(|i| {
            thread::spawn(move || {
                let data = payload(10_000 + i as usize, i);
                assert!(roundtrip(p, &data) == data, "connection {i} corrupted");
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_total"), 200);
    assert_eq!(totals.get("downstream_cx_active"), 0);
}

/// A connection straight to the capture port (not redirected) has itself as
/// "original destination": refused and counted, never forwarded to itself.
#[test]
fn self_loop_is_refused_and_counted() {
    let (out, inb) = (free_port(), free_port());
    let toml = format!(
        "[admin]\nenabled = false\n[capture]\noutbound_port = {out}\ninbound_port = {inb}\nipv6 = false\n[runtime]\ndrain_timeout = \"1s\"\n"
    );
    let r = Remora::start(&toml, &["--cores", "1"]);
    for port in [out, inb] {
        let mut s = connect(port);
        let _ = s.write_all(b"GET / HTTP/1.1\r\n\r\n");
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("self-loop connection got {n} bytes"),
        }
    }
    let (_, totals) = r.stop();
    assert_eq!(totals.get("downstream_cx_loop_refused"), 2);
    assert_eq!(totals.get("upstream_cx_total"), 0);
    assert_eq!(totals.get("downstream_cx_total"), 2);
}

#[test]
fn idle_timeout_closes_quiet_connections() {
    let echo = echo_server();
    let p = free_port();
    let mut toml = l4_config(echo, &[], "");
    toml += &format!(
        "[[listener]]\nname = \"i\"\naddress = \"127.0.0.1:{p}\"\ncluster = \"backend\"\nidle_timeout = \"300ms\"\n"
    );
    let r = Remora::start(&toml, &["--cores", "1"]);
    let mut s = connect(p);
    s.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).unwrap();
    // Now stay quiet: the proxy must close the connection by itself.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    let (_, totals) = r.stop();
    assert_eq!(totals.get("cx_idle_timeout"), 1);
}

/// SIGTERM stops accepting at once but lets an open connection finish.
#[test]
fn sigterm_drains_open_connections_then_exits_zero() {
    let echo = echo_server();
    let p = free_port();
    let toml = l4_config(echo, &[("c", p, "copy")], "")
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"10s\"");
    let mut r = Remora::start(&toml, &["--cores", "1"]);
    let mut s = connect(p);
    s.write_all(b"before").unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    r.signal(libc::SIGTERM);
    r.wait_for_log("listeners closed");
    // New connections are refused now...
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", p)).is_err(),
        "listener still open while draining"
    );
    // ...but the open one still works in both directions.
    s.write_all(b"during").unwrap();
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("bytes_upstream"), 12);
    // Shutting the listeners down is not an accept error.
    assert_eq!(totals.get("accept_errors"), 0);
}

/// A drain that outlives the deadline still exits 0.
#[test]
fn drain_deadline_closes_stuck_connections() {
    let echo = echo_server();
    let p = free_port();
    let toml = l4_config(echo, &[("c", p, "copy")], "")
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"200ms\"");
    let mut r = Remora::start(&toml, &["--cores", "1"]);
    let mut s = connect(p);
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    r.signal(libc::SIGTERM);
    r.wait_for_log("drain timeout reached");
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

/// Over max_connections_per_core, new connections are closed at once and counted.
#[test]
fn connection_limit_overflow_is_counted() {
    let echo = echo_server();
    let p = free_port();
    let toml = l4_config(echo, &[("c", p, "copy")], "")
        .replace("[runtime]\n", "[runtime]\nmax_connections_per_core = 2\n");
    let r = Remora::start(&toml, &["--cores", "1"]);
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut s = connect(p);
            s.write_all(b"a").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            s
        })
        .collect();
    let mut extra = connect(p);
    let _ = extra.write_all(b"a");
    let mut b = [0u8; 1];
    assert!(
        matches!(extra.read(&mut b), Ok(0) | Err(_)),
        "third connection was served"
    );
    // The held ones still work.
    held[0].write_all(b"z").unwrap();
    held[0].read_exact(&mut b).unwrap();
    assert_eq!(&b, b"z");
    drop(held);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("downstream_cx_overflow"), 1);
}
