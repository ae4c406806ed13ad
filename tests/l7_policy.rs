//! Per-route traffic policies through the built binary: fault injection,
//! local rate limits (requests per route / virtual host, connections per
//! listener) and request mirroring, against real backends (tests/l7/backend.py).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::http::*;
use common::*;

/// Capture off, one HTTP listener, clusters by (name, endpoint), routes as TOML.
fn l7_config(port: u16, clusters: &[(&str, SocketAddr)], routes: &str) -> String {
    let mut s = format!(
        "[runtime]\ndrain_timeout = \"2s\"\n[admin]\nenabled = false\n[capture]\nenabled = false\n[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"{}\"\nprotocol = \"http\"\n",
        clusters[0].0
    );
    for (name, ep) in clusters {
        s += &format!(
            "[[cluster]]\nname = \"{name}\"\nendpoints = [\"{ep}\"]\nconnect_timeout = \"2s\"\n"
        );
    }
    s + routes
}

/// Admin (Prometheus on `prom`) on, for tests that read the exported metrics.
fn with_prometheus(cfg: String, prom: u16) -> String {
    cfg.replace(
        "[admin]\nenabled = false\n",
        &format!(
            "[admin]\naddress = \"127.0.0.1:{}\"\nprometheus_address = \"127.0.0.1:{prom}\"\nreadiness_address = \"\"\nwatch_config = false\n",
            free_port()
        ),
    )
}

fn prometheus_text(prom: u16) -> String {
    let mut m = Client::new(prom);
    let resp = m.request("GET /stats/prometheus HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n");
    String::from_utf8_lossy(&resp.body).into_owned()
}

/// An access log in a temp dir, appended to a config.
fn with_access_log(cfg: String, dir: &TempDir) -> (String, std::path::PathBuf) {
    let log = dir.0.join("access.log");
    (
        cfg + &format!("[access_log]\npath = \"{}\"\n", log.display()),
        log,
    )
}

/// One catch-all virtual host with one route to cluster `a` plus `extra` keys.
fn one_route(extra: &str) -> String {
    format!("[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nname = \"main\"\nmatch = {{ prefix = \"/\" }}\ncluster = \"a\"\n{extra}\n")
}

#[test]
fn abort_everything_answers_locally_and_never_reaches_the_backend() {
    let a = Backend::start("a");
    let port = free_port();
    let dir = TempDir::new("fi");
    let (cfg, log) = with_access_log(
        l7_config(
            port,
            &[("a", a.addr)],
            &one_route("fault = { abort_status = 503, abort_percent = 100.0 }"),
        ),
        &dir,
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    for i in 0..5 {
        // Keep-alive holds across aborts (nothing of the request is left unread).
        let resp = c.request(&get(&format!("/x/{i}"), "svc"));
        assert_eq!(resp.status, 503, "{}", resp.head);
        assert_eq!(resp.body, b"fault filter abort\n");
    }
    // A request with a body: answered before the body is read, then closed.
    let mut c = Client::new(port);
    let resp = c.request("POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n\r\nbody");
    assert_eq!(resp.status, 503);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert_eq!(a.count(), 0, "an aborted request reached the backend");
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_fault_abort"), 6);
    assert_eq!(totals.get("rq_fault_delay"), 0);
    assert_eq!(totals.get("upstream_rq_total"), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let flagged = text.lines().filter(|l| l.contains("\" 503 FI ")).count();
    assert_eq!(flagged, 6, "{text}");
}

#[test]
fn abort_half_of_the_requests_within_statistical_bounds() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = l7_config(
        port,
        &[("a", a.addr)],
        &one_route("fault = { abort_status = 418, abort_percent = 50.0 }"),
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    let n = 400;
    let mut aborted = 0;
    for i in 0..n {
        let resp = c.request(&get(&format!("/r/{i}"), "svc"));
        match resp.status {
            418 => aborted += 1,
            200 => assert_eq!(resp.json()["backend"], "a"),
            s => panic!("unexpected status {s}: {}", resp.head),
        }
    }
    // Binomial(400, 0.5): mean 200, sd 10; ±70 is 7 sd.
    assert!((130..=270).contains(&aborted), "aborted {aborted} of {n}");
    assert_eq!(a.count(), n - aborted, "the others reached the backend");
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_fault_abort"), aborted);
}

/// An injected delay adds at least its length, is logged DI, and does not
/// count against the route timeout (the delay is longer than the timeout,
/// yet the request succeeds).
#[test]
fn delay_adds_at_least_the_delay_outside_the_route_timeout() {
    let a = Backend::start("a");
    let port = free_port();
    let dir = TempDir::new("di");
    let (cfg, log) = with_access_log(
        l7_config(
            port,
            &[("a", a.addr)],
            &one_route("timeout = \"1s\"\nfault = { delay = \"1500ms\", delay_percent = 100.0 }"),
        ),
        &dir,
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    for _ in 0..2 {
        let t0 = Instant::now();
        let resp = c.request(&get("/slow", "svc"));
        let took = t0.elapsed();
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.json()["backend"], "a");
        assert!(took >= Duration::from_millis(1500), "took only {took:?}");
    }
    assert_eq!(a.count(), 2);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_fault_delay"), 2);
    assert_eq!(totals.get("rq_fault_abort"), 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let flagged = text.lines().filter(|l| l.contains("\" 200 DI ")).count();
    assert_eq!(flagged, 2, "{text}");
}

#[test]
fn rate_limit_passes_exactly_the_bucket_then_429_with_headers() {
    let a = Backend::start("a");
    let (port, prom) = (free_port(), free_port());
    let dir = TempDir::new("rl");
    let (cfg, log) = with_access_log(
        with_prometheus(
            l7_config(
                port,
                &[("a", a.addr)],
                &one_route("rate_limit = { tokens = 5, fill_interval = \"1h\", tokens_per_fill = 5, response_headers = true }"),
            ),
            prom,
        ),
        &dir,
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    let mut statuses = Vec::new();
    for i in 0..8u32 {
        let resp = c.request(&get(&format!("/n/{i}"), "svc"));
        statuses.push(resp.status);
        // Envoy adds the headers to allowed responses too.
        assert_eq!(resp.header("x-ratelimit-limit").as_deref(), Some("5"));
        let remaining = 4u32.saturating_sub(i);
        assert_eq!(
            resp.header("x-ratelimit-remaining"),
            Some(remaining.to_string()),
            "{}",
            resp.head
        );
        let reset: u64 = resp.header("x-ratelimit-reset").unwrap().parse().unwrap();
        assert!((1..=3600).contains(&reset), "reset {reset}");
        if resp.status == 429 {
            assert_eq!(resp.body, b"local_rate_limited\n");
        } else {
            assert_eq!(resp.json()["backend"], "a");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
    assert_eq!(a.count(), 5);
    let text = prometheus_text(prom);
    for line in [
        "remora_rq_rate_limited_total 3",
        "remora_response_flags_total{flag=\"RL\"} 3",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_rate_limited"), 3);
    let text = std::fs::read_to_string(&log).unwrap();
    let flagged = text.lines().filter(|l| l.contains("\" 429 RL ")).count();
    assert_eq!(flagged, 3, "{text}");
}

/// A route's own limit replaces its virtual host's; routes without one share
/// the host's bucket, direct responses included; no headers unless asked for.
#[test]
fn route_limit_replaces_the_virtual_host_limit() {
    let a = Backend::start("a");
    let port = free_port();
    let routes = r#"
[[virtual_host]]
name = "vh"
domains = ["*"]
rate_limit = { tokens = 3, fill_interval = "1h", tokens_per_fill = 3 }
[[virtual_host.route]]
name = "own"
match = { prefix = "/own" }
cluster = "a"
rate_limit = { tokens = 1, fill_interval = "1h", tokens_per_fill = 1 }
[[virtual_host.route]]
name = "health"
match = { path = "/healthz" }
direct_response = { status = 200, body = "ok" }
[[virtual_host.route]]
name = "shared"
match = { prefix = "/" }
cluster = "a"
"#;
    let r = Remora::start(
        &l7_config(port, &[("a", a.addr)], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let mut status = |path: &str| {
        let resp = c.request(&get(path, "svc"));
        assert_eq!(resp.header("x-ratelimit-limit"), None, "{}", resp.head);
        resp.status
    };
    assert_eq!(status("/own/1"), 200);
    assert_eq!(status("/own/2"), 429, "the route's bucket holds one");
    // The host's bucket (3) is shared by the other routes.
    assert_eq!(status("/a"), 200);
    assert_eq!(status("/healthz"), 200);
    assert_eq!(status("/b"), 200);
    assert_eq!(status("/c"), 429);
    assert_eq!(status("/healthz"), 429, "a direct response is limited too");
    assert_eq!(status("/own/3"), 429);
    assert_eq!(a.count(), 3);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_rate_limited"), 4);
}

#[test]
fn mirror_copies_to_the_shadow_and_answers_from_the_primary() {
    let (a, s) = (Backend::start("a"), Backend::start("s"));
    let port = free_port();
    let cfg = l7_config(
        port,
        &[("a", a.addr), ("s", s.addr)],
        &one_route("mirror = { cluster = \"s\" }"),
    ) + "[http]\nretry_buffer_limit = 4096\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    let j = c.request(&get("/m/1?q=2", "x")).json();
    assert_eq!(j["backend"], "a");
    assert_eq!(j["headers"]["host"], "x");
    let m = s.wait_last("/m/1?q=2");
    assert_eq!(m["backend"], "s");
    assert_eq!(m["path"], "/m/1?q=2");
    assert_eq!(m["headers"]["host"], "x-shadow");
    // The same request id as the primary's copy.
    assert_eq!(m["headers"]["x-request-id"], j["headers"]["x-request-id"]);

    // A body, with the port kept after the shadow suffix.
    let body = "p".repeat(1000);
    let j = c
        .request(&format!(
            "POST /m/2 HTTP/1.1\r\nHost: x:8080\r\nContent-Length: 1000\r\n\r\n{body}"
        ))
        .json();
    assert_eq!(
        (j["backend"].as_str(), j["body_len"].as_u64()),
        (Some("a"), Some(1000))
    );
    let m = s.wait_last("/m/2");
    assert_eq!(m["headers"]["host"], "x-shadow:8080");
    assert_eq!(m["body_sha"], j["body_sha"]);

    // A body larger than retry_buffer_limit streams to the primary and is
    // not mirrored (nothing kept to send twice). It is larger than one read
    // of the proxy's (64 KiB), so it cannot arrive whole before streaming.
    let big = "q".repeat(200_000);
    let j = c
        .request(&format!(
            "POST /m/3 HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n{big}"
        ))
        .json();
    assert_eq!(j["body_len"], 200_000);
    assert_eq!(a.count(), 3);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_mirrored"), 2);
    assert_eq!(totals.get("rq_mirror_failed"), 0);
    assert_eq!(s.count(), 2);
}

/// A mirror cluster that refuses connections changes nothing for the client.
#[test]
fn dead_mirror_changes_nothing_for_the_client() {
    let a = Backend::start("a");
    let (dead, _hold) = refusing_addr();
    let (port, prom) = (free_port(), free_port());
    let cfg = with_prometheus(
        l7_config(
            port,
            &[("a", a.addr), ("s", dead)],
            &one_route("mirror = { cluster = \"s\", percent = 100.0 }"),
        ),
        prom,
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    for i in 0..3 {
        let resp = c.request(&get(&format!("/d/{i}"), "x"));
        assert_eq!(resp.status, 200, "{}", resp.head);
        assert_eq!(resp.json()["backend"], "a");
    }
    assert_eq!(a.count(), 3);
    // The copies fail on their own time; wait for the counter to say so.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = prometheus_text(prom);
        if text.lines().any(|l| l == "remora_rq_mirror_failed_total 3") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mirror failures not counted:\n{text}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_mirrored"), 3);
    assert_eq!(totals.get("rq_2xx"), 3);
}

/// `connection_rate_limit` on a TCP listener: the third connection in the
/// interval is reset at once, counted, and logged with flag RL.
#[test]
fn listener_connection_rate_limit_resets_the_connection_over_it() {
    let echo = echo_server();
    let port = free_port();
    let dir = TempDir::new("cxrl");
    let log = dir.0.join("access.log");
    let cfg = format!(
        "[runtime]\ndrain_timeout = \"2s\"\n[admin]\nenabled = false\n[capture]\nenabled = false\n[access_log]\npath = \"{}\"\n[[cluster]]\nname = \"backend\"\nendpoints = [\"{echo}\"]\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"backend\"\nconnection_rate_limit = {{ tokens = 2, fill_interval = \"1h\", tokens_per_fill = 2 }}\n",
        log.display()
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut open = Vec::new();
    for i in 0..2u8 {
        let mut s = connect(port);
        s.write_all(&[b'a' + i; 3]).unwrap();
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(buf, [b'a' + i; 3]);
        open.push(s);
    }
    let mut third = connect(port);
    // The reset may come before the write: the write then reports it (a
    // socket reports a reset once), and the read finds the end.
    let wrote = third.write_all(b"zzz");
    let reset_on_write = wrote
        .as_ref()
        .is_err_and(|e| matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe));
    let mut buf = [0u8; 16];
    match third.read(&mut buf) {
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
        Ok(0) if reset_on_write => {}
        Ok(n) => {
            panic!("the third connection was served ({n} bytes), not reset (write: {wrote:?})")
        }
    }
    drop(open);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_rate_limited"), 1);
    assert_eq!(totals.get("downstream_cx_total"), 3);
    let text = std::fs::read_to_string(&log).unwrap();
    let flagged: Vec<&str> = text.lines().filter(|l| l.contains(" 0 RL ")).collect();
    assert_eq!(flagged.len(), 1, "{text}");
}
