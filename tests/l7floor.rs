//! examples/l7floor, the glommio HTTP/1 proxy that perf/l7cost measures Remora's
//! HTTP/1 path against (perf/README.md, "Session 20"), really proxies: each
//! response is the upstream's answer to that request, the upstream connection
//! is pooled and kept alive, the client's `Connection` header stops at the
//! floor, and `Connection: close` closes the client's connection only. A floor
//! that skipped any of it would read as a cheaper runtime than it is.
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// A keep-alive HTTP/1.1 upstream: answers each request with its target
/// reversed as the body (so an echo by the floor itself would not pass),
/// counts its connections and records every head it received.
fn upstream() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (conns, heads) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let (c2, h2) = (conns.clone(), heads.clone());
    thread::spawn(move || {
        for s in l.incoming() {
            let s = s.unwrap();
            c2.fetch_add(1, Ordering::SeqCst);
            let heads = h2.clone();
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut head = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push_str(&line);
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let target = head.split(' ').nth(1).unwrap_or("").to_string();
                    heads.lock().unwrap().push(head);
                    let body: String = target.chars().rev().collect();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Up: yes\r\n\r\n{body}",
                        body.len()
                    );
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, heads)
}

/// Reads one response with a Content-Length body: (head, body).
fn read_response(r: &mut BufReader<TcpStream>) -> (String, String) {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        assert!(
            r.read_line(&mut line).unwrap() > 0,
            "EOF in a response head"
        );
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[test]
fn the_floor_proxies_http_with_a_pooled_upstream() {
    let (up, conns, heads) = upstream();
    let port = common::free_port();
    let _floor = common::Example::spawn(
        "l7floor",
        &[format!("127.0.0.1:{port}"), up.to_string(), "0".into()],
    );
    // Retries while the floor comes up; a 20 s read timeout.
    let c = common::connect(port);
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for i in 0..50 {
        write!(
            w,
            "GET /req/{i} HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
        )
        .unwrap();
        let (head, body) = read_response(&mut r);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("X-Up: yes\r\n"),
            "the upstream's header: {head}"
        );
        assert!(!head.contains("Connection"), "{head}");
        let want: String = format!("/req/{i}").chars().rev().collect();
        assert_eq!(body, want, "response {i}");
    }
    // Two requests in one write (pipelined), then one that asks to close.
    w.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut r).1, "a/");
    assert_eq!(read_response(&mut r).1, "b/");
    w.write_all(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (head, body) = read_response(&mut r);
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert_eq!(body, "tsal/");
    let mut rest = Vec::new();
    assert_eq!(
        r.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the reply"
    );

    // One upstream connection carried all 53 requests, none of them with
    // the client's Connection header.
    assert_eq!(
        conns.load(Ordering::SeqCst),
        1,
        "the upstream connection is pooled"
    );
    {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 53);
        assert!(heads
            .iter()
            .all(|h| !h.to_ascii_lowercase().contains("connection")));
        assert!(
            heads[0].starts_with("GET /req/0 HTTP/1.1\r\n"),
            "{}",
            heads[0]
        );
    }

    // A second client after the first closed reuses the pooled connection.
    let mut c = common::connect(port);
    c.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = String::new();
    c.read_to_string(&mut all).unwrap();
    assert!(all.ends_with("\r\n\r\nniaga/"), "{all}");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
}
