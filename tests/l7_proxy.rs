//! The L7 (HTTP/1.1) path through the built binary, against real backends
//! (tests/l7/backend.py) and real clients (raw sockets, curl).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::thread;

use common::http::*;
use common::*;

/// Capture off, one HTTP listener, clusters by (name, endpoint), routes as TOML.
fn l7_config(port: u16, protocol: &str, clusters: &[(&str, SocketAddr)], routes: &str) -> String {
    let mut s = format!(
        "[runtime]\ndrain_timeout = \"2s\"\n[admin]\nenabled = false\n[capture]\nenabled = false\n[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"{}\"\nprotocol = \"{protocol}\"\n",
        clusters[0].0
    );
    for (name, ep) in clusters {
        s += &format!(
            "[[cluster]]\nname = \"{name}\"\nendpoints = [\"{ep}\"]\nconnect_timeout = \"2s\"\n"
        );
    }
    s + routes
}

const CATCH_ALL: &str = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\n";

/// `use_remote_address = false` on a listener (Istio's sidecars; the capture
/// ports' default): X-Forwarded-For goes upstream as the client sent it, or
/// not at all; X-Forwarded-Proto is set where the client sent none.
#[test]
fn listener_without_use_remote_address_leaves_x_forwarded_for_alone() {
    let a = Backend::start("a");
    let port = free_port();
    let config = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL).replace(
        "protocol = \"http\"\n",
        "protocol = \"http\"\nuse_remote_address = false\n",
    );
    let r = Remora::start(&config, &["--cores", "1"]);
    let mut c = Client::new(port);
    let j = c
        .request("GET /z HTTP/1.1\r\nHost: o\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n")
        .json();
    assert_eq!(j["headers"]["x-forwarded-for"], "10.1.2.3");
    let j = c.request(&get("/z", "o")).json();
    assert!(
        j["headers"].get("x-forwarded-for").is_none(),
        "{}",
        j["headers"]
    );
    assert_eq!(j["headers"]["x-forwarded-proto"], "http");
    // A client's X-Forwarded-Proto goes on as sent (Envoy sets it only
    // when absent without use_remote_address).
    let j = c
        .request("GET /z HTTP/1.1\r\nHost: o\r\nX-Forwarded-Proto: https\r\n\r\n")
        .json();
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");
    drop(c);
    r.stop();
}

#[test]
fn host_path_and_header_routing_with_forwarding_headers() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let port = free_port();
    let routes = r#"
[[virtual_host]]
name = "bhost"
domains = ["b.example"]
[[virtual_host.route]]
match = { prefix = "/" }
cluster = "b"
request_headers = { set = [{ name = "x-route", value = "bhost" }] }

[[virtual_host]]
name = "all"
domains = ["*"]
[[virtual_host.route]]
match = { prefix = "/to-b/" }
cluster = "b"
prefix_rewrite = "/rewritten/"
[[virtual_host.route]]
match = { prefix = "/", headers = [{ name = "x-canary", exact = "1" }] }
cluster = "b"
[[virtual_host.route]]
match = { prefix = "/" }
cluster = "a"
"#;
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr), ("b", b.addr)], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let j = c.request(&get("/x", "b.example:80")).json();
    assert_eq!(j["backend"], "b");
    assert_eq!(j["headers"]["x-route"], "bhost");
    let j = c.request(&get("/to-b/y?q=1", "other")).json();
    assert_eq!(
        (j["backend"].as_str(), j["path"].as_str()),
        (Some("b"), Some("/rewritten/y?q=1"))
    );
    let j = c
        .request("GET /z HTTP/1.1\r\nHost: other\r\nX-Canary: 1\r\n\r\n")
        .json();
    assert_eq!(j["backend"], "b");
    let j = c
        .request("GET /z HTTP/1.1\r\nHost: other\r\nX-Forwarded-For: 10.1.2.3\r\nX-Forwarded-Proto: https\r\nConnection: keep-alive, x-secret\r\nX-Secret: s\r\n\r\n")
        .json();
    assert_eq!(j["backend"], "a");
    let h = &j["headers"];
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    // use_remote_address (an explicit listener's default): this hop's
    // X-Forwarded-Proto replaces what the client claimed.
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(
        h.get("x-secret").is_none(),
        "hop-by-hop header forwarded: {h}"
    );
    let id = h["x-request-id"].as_str().expect("x-request-id generated");
    assert_eq!(id.len(), 36);
    // A client's own id is kept.
    let j = c
        .request("GET / HTTP/1.1\r\nHost: o\r\nX-Request-Id: mine\r\n\r\n")
        .json();
    assert_eq!(j["headers"]["x-request-id"], "mine");
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_total"), 5);
    assert_eq!(totals.get("rq_2xx"), 5);
    // One client connection; requests to each backend share pooled connections.
    assert_eq!(totals.get("downstream_cx_total"), 1);
}

#[test]
fn no_route_is_404_and_direct_response_and_redirect() {
    let a = Backend::start("a");
    let port = free_port();
    let routes = r#"
[[virtual_host]]
name = "only"
domains = ["known"]
[[virtual_host.route]]
match = { path = "/healthz" }
direct_response = { status = 200, body = "ok" }
[[virtual_host.route]]
match = { prefix = "/old/" }
redirect = { prefix_rewrite = "/new/", status = 302 }
[[virtual_host.route]]
match = { prefix = "/" }
cluster = "a"
"#;
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let resp = c.request(&get("/x", "unknown"));
    assert_eq!(resp.status, 404);
    let resp = c.request(&get("/healthz", "known"));
    // The configured body exactly: no newline added.
    assert_eq!((resp.status, &resp.body[..]), (200, &b"ok"[..]));
    let resp = c.request(&get("/old/page?x=1", "known"));
    assert_eq!(resp.status, 302);
    assert_eq!(
        resp.header("location").as_deref(),
        Some("http://known/new/page?x=1")
    );
    assert_eq!(a.count(), 0);
    drop(r);
}

#[test]
fn weighted_split_within_bounds() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\nweighted_clusters = [{ cluster = \"a\", weight = 80 }, { cluster = \"b\", weight = 20 }]\n";
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr), ("b", b.addr)], routes),
        &["--cores", "2"],
    );
    let mut to_a = 0;
    let mut c = Client::new(port);
    for _ in 0..1000 {
        let j = c.request(&get("/w", "x")).json();
        if j["backend"] == "a" {
            to_a += 1;
        }
    }
    // Binomial(1000, 0.8): sd ≈ 12.6, so ±60 is more than 4.7 sd.
    assert!(
        (740..=860).contains(&to_a),
        "{to_a} of 1000 went to the 80% cluster"
    );
    drop(r);
}

#[test]
fn retries_on_503_then_succeeds_and_gives_up_after_budget() {
    let a = Backend::start("a");
    let port = free_port();
    let route = |domain: &str, extra: &str| {
        format!("[[virtual_host]]\nname = \"{domain}\"\ndomains = [\"{domain}\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"a\"\nretry = {{ retry_on = [\"5xx\"], num_retries = 2, backoff_base = \"1ms\"{extra} }}\n")
    };
    let routes = route("*", "") + &route("np", ", retry_non_idempotent = true");
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], &routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    // Fails twice, third attempt succeeds; a small PUT body is replayed.
    let resp = c.request("PUT /fail/2/k1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.json()["body_len"], 5);
    // Fails three times: the budget (2 retries) runs out, the 503 is passed on.
    let resp = c.request(&get("/fail/3/k2", "x"));
    assert_eq!(resp.status, 503);
    assert_eq!(a.count(), 6);
    // RFC 9112 §9.3.1: a POST that reached the upstream is not sent again...
    let resp = c.request("POST /fail/1/k3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(resp.status, 503);
    assert_eq!(a.count(), 7);
    // ... unless the route's policy asks for it.
    let resp = c.request("POST /fail/1/k4 HTTP/1.1\r\nHost: np\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(a.count(), 9);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("rq_retry"), 5);
    assert_eq!(totals.get("rq_5xx"), 2);
}

#[test]
fn route_timeout_is_504_and_connect_failure_is_503() {
    let a = Backend::start("a");
    let (dead, _hold) = refusing_addr();
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/dead\" }\ncluster = \"dead\"\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\ntimeout = \"200ms\"\n";
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr), ("dead", dead)], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let resp = c.request(&get("/sleep/3000", "x"));
    assert_eq!(resp.status, 504);
    let mut c = Client::new(port);
    let resp = c.request(&get("/dead", "x"));
    assert_eq!(resp.status, 503);
    // The connection stays usable after a 503 for a bodiless request.
    let resp = c.request(&get("/fine", "x"));
    assert_eq!(resp.status, 200);
    drop(r);
}

#[test]
fn pipelined_requests_answered_in_order() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let two = format!(
        "{}POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc{}",
        get("/first", "x"),
        get("/third", "x")
    );
    c.w.write_all(two.as_bytes()).unwrap();
    let paths: Vec<String> = (0..3)
        .map(|_| c.response().json()["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(paths, ["/first", "/second", "/third"]);
    drop(r);
}

#[test]
fn expect_100_continue_answered_before_body() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    c.w.write_all(
        b"PUT /up HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 11\r\n\r\n",
    )
    .unwrap();
    let interim = c.response();
    assert_eq!(interim.status, 100);
    c.w.write_all(b"hello world").unwrap();
    let resp = c.response();
    assert_eq!(resp.status, 200);
    let j = resp.json();
    assert_eq!(j["body_len"], 11);
    // Answered here, so not asked again upstream.
    assert!(j["headers"].get("expect").is_none(), "{j}");
    // A body larger than the retry buffer is streamed after the 100.
    let big = payload(300_000, 4);
    c.w.write_all(
        b"PUT /up2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 300000\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.response().status, 100);
    c.w.write_all(&big).unwrap();
    let j = c.response().json();
    assert_eq!(j["body_len"], 300_000);
    drop(r);
}

#[test]
fn websocket_upgrade_becomes_a_tunnel() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let resp = c.request("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    assert_eq!(resp.status, 101, "{}", resp.head);
    assert!(resp
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket")));
    for msg in [&b"ping-1"[..], &payload(100_000, 7)] {
        c.w.write_all(msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        c.r.read_exact(&mut back).unwrap();
        assert!(back == msg, "tunnel corrupted {} bytes", msg.len());
    }
    drop(r);
}

#[test]
fn chunked_bodies_of_megabytes_both_ways() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    for (len, seed) in [(5 * 1024 * 1024 + 17, 1u64), (70_000, 2), (1, 3)] {
        let data = payload(len, seed);
        let w = c.w.try_clone().unwrap();
        let d2 = data.clone();
        let writer = thread::spawn(move || {
            let mut w = w;
            w.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
                .unwrap();
            for chunk in d2.chunks(100_003) {
                w.write_all(format!("{:x};ext=1\r\n", chunk.len()).as_bytes())
                    .unwrap();
                w.write_all(chunk).unwrap();
                w.write_all(b"\r\n").unwrap();
            }
            w.write_all(b"0\r\n\r\n").unwrap();
        });
        let resp = c.response();
        writer.join().unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body.len(), data.len());
        assert!(resp.body == data, "body of {len} bytes corrupted");
    }
    // Content-Length upload of several MiB, streamed (above the retry buffer).
    let data = payload(3 * 1024 * 1024, 9);
    let mut req = format!(
        "POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        data.len()
    )
    .into_bytes();
    req.extend_from_slice(&data);
    let w = c.w.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let mut w = w;
        w.write_all(&req).unwrap();
    });
    let j = c.response().json();
    writer.join().unwrap();
    assert_eq!(j["body_len"], data.len());
    drop(r);
}

#[test]
fn pooled_connection_closed_by_upstream_is_not_a_failure() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    // Each /close response leaves a pooled connection the backend then closes.
    // (Idempotent: whether the close arrives before the next request is a
    // race, and a POST that loses it is not sent again; see below.)
    for i in 0..20 {
        let resp = c.request(&format!(
            "PUT /close/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        ));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.head);
        assert_eq!(resp.json()["path"], format!("/close/{i}"));
    }
    // Every request reached the backend exactly once.
    assert_eq!(a.count(), 20);
    // The race the liveness check cannot see: the server closes a pooled
    // connection as the request arrives, before any response byte. Idempotent
    // requests are sent once more on a fresh connection; a POST is not (RFC
    // 9112 §9.3.1: the server may have acted on it), so it fails with 503 UC.
    for i in 0..10 {
        if i % 2 == 0 {
            let resp = c.request(&get(&format!("/drop/{i}"), "x"));
            assert_eq!(resp.status, 200, "request {i}: {}", resp.head);
            assert_eq!(resp.json()["path"], format!("/drop/{i}"));
        } else {
            let resp = c.request(&format!(
                "POST /drop/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
            ));
            assert_eq!(resp.status, 503, "request {i}: {}", resp.head);
            c = Client::new(port);
        }
    }
    assert_eq!(a.count(), 25);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("rq_5xx"), 5);
}

#[test]
fn keep_alive_reuses_upstream_connections() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    for _ in 0..3 {
        let mut c = Client::new(port);
        for _ in 0..5 {
            assert_eq!(c.request(&get("/k", "x")).status, 200);
        }
    }
    // HTTP/1.0 client: answered, then closed by the proxy (no keep-alive asked).
    let mut c = Client::new(port);
    let resp = c.request("GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert!(c.rest().is_empty());
    let (_, totals) = r.stop();
    assert_eq!(totals.get("rq_total"), 16);
    assert_eq!(totals.get("upstream_cx_total"), 1);
    assert_eq!(totals.get("upstream_cx_reused"), 15);
}

#[test]
fn smuggling_attempts_are_400_and_never_reach_the_backend() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let cases: &[(&str, &str)] = &[
        ("CL+TE", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("TE+CL", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n"),
        ("differing CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
        ("CL list", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!"),
        ("signed CL", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
        ("bare LF", "GET / HTTP/1.1\nHost: x\n\n"),
        ("space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
        ("no Host", "GET / HTTP/1.1\r\n\r\n"),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"),
        ("TE in HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("bad chunk size", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5x\r\nhello\r\n0\r\n\r\n"),
        ("chunk without CRLF", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n"),
        ("bare LF in chunk", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
        ("garbage", "\x16\x03\x01\x00\x05\x01\x00\x00\r\n\r\n"),
        // RFC 9112 §3.2.3 / RFC 9110 §9.3.6: CONNECT needs host:port.
        ("CONNECT without port", "CONNECT backend HTTP/1.1\r\nHost: backend\r\n\r\n"),
        // RFC 9112 §3.2: no fragment, no raw non-ASCII bytes in the target.
        ("fragment", "GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("raw UTF-8 target", "GET /caf\u{e9} HTTP/1.1\r\nHost: x\r\n\r\n"),
        // RFC 9112 §7.1.1: malformed chunk extensions.
        ("chunk extension without a name", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;\r\nhi\r\n0\r\n\r\n"),
        ("unbalanced quote in chunk extension", "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\"x\r\nhi\r\n0\r\n\r\n"),
    ];
    for (name, raw) in cases {
        let mut c = Client::new(port);
        c.w.write_all(raw.as_bytes()).unwrap();
        let resp = c.response();
        assert_eq!(resp.status, 400, "{name}: {}", resp.head);
        // And the connection is closed after it.
        assert!(c.rest().is_empty(), "{name}: bytes after the 400");
    }
    assert_eq!(a.count(), 0, "a malformed request reached the backend");
    let (_, totals) = r.stop();
    assert_eq!(totals.get("rq_4xx"), cases.len() as u64);
}

#[test]
fn header_timeout_is_408() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL)
        + "[http]\nrequest_headers_timeout = \"300ms\"\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    c.w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    let resp = c.response();
    assert_eq!(resp.status, 408);
    assert_eq!(a.count(), 0);
    drop(r);
}

#[test]
fn auto_listener_detects_http_and_lets_server_first_protocols_through() {
    let a = Backend::start("a");
    // A server that speaks first (like SMTP), then echoes.
    let banner = common::listener();
    let banner_addr = banner.local_addr().unwrap();
    thread::spawn(move || {
        for s in banner.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                s.write_all(b"220 banner ESMTP\r\n").unwrap();
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (p_http, p_banner) = (free_port(), free_port());
    let cfg = format!(
        "[admin]\nenabled = false\n[capture]\nenabled = false\n[[cluster]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[cluster]]\nname = \"smtp\"\nendpoints = [\"{banner_addr}\"]\n[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{p_http}\"\ncluster = \"a\"\nprotocol = \"auto\"\n[[listener]]\nname = \"s\"\naddress = \"127.0.0.1:{p_banner}\"\ncluster = \"smtp\"\nprotocol = \"auto\"\n{CATCH_ALL}",
        a.addr
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    // HTTP on an auto listener takes the L7 path: the proxy adds X-Request-Id.
    let j = Client::new(p_http).request(&get("/d", "x")).json();
    assert!(j["headers"]["x-request-id"].is_string(), "{j}");
    // Server-first: the client says nothing and still gets the banner.
    let mut c = Client::new(p_banner);
    let mut line = String::new();
    c.r.read_line(&mut line).unwrap();
    assert_eq!(line, "220 banner ESMTP\r\n");
    c.w.write_all(b"EHLO x\r\n").unwrap();
    line.clear();
    c.r.read_line(&mut line).unwrap();
    assert_eq!(line, "EHLO x\r\n");
    // The HTTP/2 preface is HTTP too: the proxy answers with its SETTINGS
    // frame (type 4 on stream 0), not the banner server's bytes. The client's
    // preface is the magic and a SETTINGS frame (RFC 9113 §3.4), which the
    // proxy now requires before it goes on.
    let mut c = Client::new(p_banner);
    c.w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    let mut frame = [0u8; 9];
    c.r.read_exact(&mut frame).unwrap();
    assert_eq!(frame[3], 4, "a SETTINGS frame first: {frame:?}");
    assert_eq!(&frame[5..9], &[0, 0, 0, 0]);
    drop(c);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("downstream_cx_http"), 1);
    assert_eq!(totals.get("downstream_cx_http2"), 1);
}

/// `[[listener]] detect_timeout` (Istio's protocolDetectionTimeout): a
/// client that pauses 400 ms before its request is still detected as HTTP
/// on a listener that waits 3 s, and goes the TCP way on one that waits
/// 50 ms (its request reaches the backend untouched: no X-Request-Id).
#[test]
fn listener_detect_timeout_sets_how_long_detection_waits() {
    let a = Backend::start("a");
    let (patient, hasty) = (free_port(), free_port());
    let cfg = format!(
        "[admin]\nenabled = false\n[capture]\nenabled = false\n[[cluster]]\nname = \"a\"\nendpoints = [\"{}\"]\n[[listener]]\nname = \"patient\"\naddress = \"127.0.0.1:{patient}\"\ncluster = \"a\"\nprotocol = \"auto\"\ndetect_timeout = \"3s\"\n[[listener]]\nname = \"hasty\"\naddress = \"127.0.0.1:{hasty}\"\ncluster = \"a\"\nprotocol = \"auto\"\ndetect_timeout = \"50ms\"\n{CATCH_ALL}",
        a.addr
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let slow_get = |port| {
        let mut c = Client::new(port);
        thread::sleep(std::time::Duration::from_millis(400));
        c.request(&get("/d", "x")).json()
    };
    let j = slow_get(patient);
    assert!(j["headers"]["x-request-id"].is_string(), "L7 expected: {j}");
    let j = slow_get(hasty);
    assert!(j["headers"]["x-request-id"].is_null(), "L4 expected: {j}");
    let (_, totals) = r.stop();
    assert_eq!(totals.get("downstream_cx_http"), 1);
}

#[test]
fn curl_through_the_proxy() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let _ = connect(port);
    let out = Command::new("curl")
        .args(["-sS", "-H", "Host: svc", "--data-binary", "abc"])
        .arg(format!("http://127.0.0.1:{port}/c1"))
        .arg(format!("http://127.0.0.1:{port}/c2"))
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\"/c1\"") && text.contains("\"/c2\""),
        "{text}"
    );
    drop(r);
}

#[test]
fn connect_failure_retried_on_the_next_endpoint_and_per_try_timeout() {
    let a = Backend::start("a");
    let (dead, _hold) = refusing_addr();
    let port = free_port();
    let cfg = format!(
        r#"[admin]
enabled = false
[capture]
enabled = false
[[cluster]]
name = "mixed"
endpoints = ["{dead}", "{live}"]
lb_policy = "round_robin"
[[listener]]
name = "h"
address = "127.0.0.1:{port}"
cluster = "mixed"
protocol = "http"
[[virtual_host]]
name = "all"
domains = ["*"]
[[virtual_host.route]]
match = {{ prefix = "/sleep" }}
cluster = "mixed"
retry = {{ retry_on = ["connect-failure", "gateway-error"], num_retries = 1, per_try_timeout = "150ms", backoff_base = "1ms" }}
[[virtual_host.route]]
match = {{ prefix = "/" }}
cluster = "mixed"
retry = {{ retry_on = ["connect-failure"], num_retries = 1, backoff_base = "1ms" }}
"#,
        live = a.addr
    );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    // Round robin alternates dead and live endpoints: every request lands.
    for i in 0..6 {
        let resp = c.request(&get(&format!("/n{i}"), "x"));
        assert_eq!(resp.status, 200, "request {i}: {}", resp.head);
    }
    // Each try outlives its per-try timeout (or hits the dead endpoint): 504 or
    // 503, never the slow 200.
    let resp = c.request(&get("/sleep/2000", "x"));
    assert!(matches!(resp.status, 503 | 504), "{}", resp.head);
    let (_, totals) = r.stop();
    assert!(totals.get("upstream_cx_connect_fail") >= 3);
    assert!(totals.get("rq_retry") >= 3);
}

#[test]
fn oversized_head_is_431_and_bad_upstream_response_is_502() {
    // An upstream whose response frames its body two ways.
    let bad = common::listener();
    let bad_addr = bad.local_addr().unwrap();
    thread::spawn(move || {
        for s in bad.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx");
        }
    });
    let a = Backend::start("a");
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/bad\" }\ncluster = \"bad\"\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\n";
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr), ("bad", bad_addr)], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let resp = c.request(&get("/bad", "x"));
    assert_eq!(resp.status, 502);
    let mut c = Client::new(port);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    c.w.write_all(big.as_bytes()).unwrap();
    assert_eq!(c.response().status, 431);
    assert_eq!(a.count(), 0);
    drop(r);
}

#[test]
fn http10_keep_alive_and_chunked_response_to_http10_client() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let resp = c.request("GET /k HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection").as_deref(), Some("keep-alive"));
    let resp = c.request("GET /k2 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(resp.json()["path"], "/k2");
    // The backend answers /echo chunked; an HTTP/1.0 client gets the bytes
    // delimited by close instead.
    let resp = c.request("POST /echo HTTP/1.0\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!(resp.status, 200);
    assert!(resp.header("transfer-encoding").is_none(), "{}", resp.head);
    assert_eq!(resp.body, b"hello");
    drop(r);
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Keep-alive connections between requests hold no request buffer: 1,000 of
/// them, each after a request with a 4 KiB body, cost a few KiB each.
#[test]
fn idle_keep_alive_connections_hold_no_buffers() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let body = "b".repeat(4096);
    let req = format!("POST /m HTTP/1.1\r\nHost: x\r\nContent-Length: 4096\r\n\r\n{body}");
    // Warm up pools and the allocator.
    let mut warm: Vec<Client> = (0..50).map(|_| Client::new(port)).collect();
    for c in &mut warm {
        assert_eq!(c.request(&req).status, 200);
    }
    let before = rss_kib(r.pid());
    let mut clients: Vec<Client> = (0..1000).map(|_| Client::new(port)).collect();
    for c in &mut clients {
        assert_eq!(c.request(&req).status, 200);
    }
    let grown = rss_kib(r.pid()).saturating_sub(before);
    eprintln!("1000 idle keep-alive HTTP connections: +{grown} KiB RSS");
    // A 16 KiB buffer each would be 16 MB; allow 8 KiB per connection.
    assert!(grown < 1000 * 8, "RSS grew by {grown} KiB");
    // They all still work.
    for c in clients.iter_mut().step_by(97) {
        assert_eq!(c.request(&get("/again", "x")).status, 200);
    }
    drop(r);
}

/// An upload no route matches is answered 404 without reading its body, and
/// the client, reading only after its upload ended, still gets the reply.
/// (The proxy closes with unread bytes, i.e. with a reset; on Linux the reply
/// already received stays readable. Over a lossy network a lingering close
/// would be safer: not implemented.)
#[test]
fn local_reply_to_an_unread_upload() {
    let a = Backend::start("a");
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"only\"\ndomains = [\"known\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\n";
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], routes),
        &["--cores", "1"],
    );
    for _ in 0..5 {
        let mut c = Client::new(port);
        let body = payload(2 * 1024 * 1024, 5);
        let mut w = c.w.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w
                .write_all(b"POST /x HTTP/1.1\r\nHost: unknown\r\nContent-Length: 2097152\r\n\r\n");
            // Keep sending after the proxy has answered, like a real uploader.
            let _ = w.write_all(&body);
        });
        // Read only once the upload is over (sent, or refused by the peer).
        writer.join().unwrap();
        let resp = c.response();
        assert_eq!(resp.status, 404);
    }
    assert_eq!(a.count(), 0);
    drop(r);
}

/// SIGTERM closes idle keep-alive connections at once instead of waiting out
/// the drain timeout; a connection in the middle of a request finishes it.
#[test]
fn stop_closes_idle_keep_alive_connections() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL)
        .replace("drain_timeout = \"2s\"", "drain_timeout = \"30s\"");
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut idle = Client::new(port);
    assert_eq!(idle.request(&get("/1", "x")).status, 200);
    let mut busy = Client::new(port);
    busy.w.write_all(get("/sleep/500", "x").as_bytes()).unwrap();
    // The slow request is in flight once the backend counted it.
    while a.count() < 2 {
        thread::yield_now();
    }
    r.signal(libc::SIGTERM);
    // The idle one is closed without a response (EOF well before the 30 s
    // drain deadline: the client's read timeout is 20 s); the busy one gets
    // its answer, then EOF.
    let mut left = Vec::new();
    idle.r
        .read_to_end(&mut left)
        .expect("idle connection closed by the stopping proxy");
    assert!(left.is_empty());
    let resp = busy.response();
    assert_eq!(resp.status, 200);
    // Early in the drain the answer may keep the connection alive; either way
    // the proxy closes it once it is idle.
    assert!(busy.rest().is_empty());
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}

/// An upstream may answer before it has read the request body (RFC 9112 §9.3
/// lets a server reject an upload early). Its answer reaches the client even
/// though the upload is far from done and the upstream stopped reading.
#[test]
fn early_upstream_response_during_a_large_upload() {
    let early = common::listener();
    let early_addr = early.local_addr().unwrap();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in early.incoming() {
            let Ok(mut s) = s else { continue };
            // Read the head only, answer, and never read the body.
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).is_ok_and(|n| n == 1) {
                head.push(b[0]);
            }
            let _ = s
                .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n");
            held.push(s);
        }
    });
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"early\"\ntimeout = \"10s\"\n";
    let r = Remora::start(
        &l7_config(port, "http", &[("early", early_addr)], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let body = payload(16 * 1024 * 1024, 3);
    let mut w = c.w.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(b"PUT /up HTTP/1.1\r\nHost: x\r\nContent-Length: 16777216\r\n\r\n");
        let _ = w.write_all(&body);
    });
    let resp = c.response();
    assert_eq!(resp.status, 413, "{}", resp.head);
    assert_eq!(resp.body, b"too big\n");
    // The upload was cut short, so the connection cannot carry another request.
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    drop(c);
    writer.join().unwrap();
    drop(r);
}

#[test]
fn idle_keep_alive_timeout_closes_quietly() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg =
        l7_config(port, "http", &[("a", a.addr)], CATCH_ALL) + "[http]\nidle_timeout = \"300ms\"\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    assert_eq!(c.request(&get("/x", "x")).status, 200);
    // No 408, no bytes: just EOF (well before the client's 20 s read timeout).
    let mut left = Vec::new();
    c.r.read_to_end(&mut left).expect("closed by the proxy");
    assert!(left.is_empty(), "{}", String::from_utf8_lossy(&left));
    drop(r);
}

/// A body larger than retry_buffer_limit is streamed, so it cannot be replayed:
/// the 503 goes to the client and the backend sees the request once.
#[test]
fn streamed_body_is_never_retried() {
    let a = Backend::start("a");
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\nretry = { retry_on = [\"5xx\"], num_retries = 3, backoff_base = \"1ms\" }\n";
    let cfg =
        l7_config(port, "http", &[("a", a.addr)], routes) + "[http]\nretry_buffer_limit = 1024\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    let body = "z".repeat(100_000);
    let resp = c.request(&format!(
        "PUT /fail/1/big HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_eq!(resp.status, 503);
    assert_eq!(a.count(), 1);
    // The same request with a small body is buffered and retried.
    let resp = c.request("PUT /fail/1/small HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(resp.status, 200);
    assert_eq!(a.count(), 3);
    drop(r);
}

#[test]
fn request_metrics_in_prometheus() {
    let a = Backend::start("a");
    let (port, prom) = (free_port(), free_port());
    let cfg = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL).replace(
        "[admin]\nenabled = false\n",
        &format!(
            "[admin]\naddress = \"127.0.0.1:{}\"\nprometheus_address = \"127.0.0.1:{prom}\"\nreadiness_address = \"\"\nwatch_config = false\n",
            free_port()
        ),
    );
    let r = Remora::start(&cfg, &["--cores", "2"]);
    let mut c = Client::new(port);
    for _ in 0..3 {
        assert_eq!(c.request(&get("/m", "x")).status, 200);
    }
    assert_eq!(c.request(&get("/fail/1/m", "x")).status, 503);
    let mut m = Client::new(prom);
    let resp = m.request("GET /stats/prometheus HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&resp.body);
    for line in [
        "remora_rq_total 4",
        "remora_rq_2xx_total 3",
        "remora_rq_5xx_total 1",
        "remora_rq_time_seconds_count 4",
        "remora_downstream_cx_http_total 1",
        "remora_upstream_rq_total 4",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    drop(r);
}

/// Routes are read per request: after a reload, a keep-alive connection
/// opened before it follows the new routes.
#[test]
fn reload_applies_to_requests_on_open_connections() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let port = free_port();
    let cfg = l7_config(port, "http", &[("a", a.addr), ("b", b.addr)], CATCH_ALL);
    let mut r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    assert_eq!(c.request(&get("/r", "x")).json()["backend"], "a");
    std::fs::write(
        r.config_path(),
        cfg.replace(
            "match = { prefix = \"/\" }\ncluster = \"a\"",
            "match = { prefix = \"/\" }\ncluster = \"b\"",
        ),
    )
    .unwrap();
    r.signal(libc::SIGHUP);
    r.wait_for_log("config reloaded");
    assert_eq!(c.request(&get("/r", "x")).json()["backend"], "b");
    drop(r);
}

#[test]
fn upstream_closing_before_a_response_is_retried_under_reset() {
    let a = Backend::start("a");
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/reset/2/\" }\ncluster = \"a\"\nretry = { retry_on = [\"reset\"], num_retries = 2, backoff_base = \"1ms\" }\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\n";
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    // Closed twice, answered the third time.
    let resp = c.request(&get("/reset/2/k", "x"));
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(a.count(), 3);
    // No retry policy here, but the upstream connection comes from the pool:
    // closed before any response byte, the request goes once more on a fresh
    // connection (not counted as a retry), which answers.
    let mut c = Client::new(port);
    let resp = c.request(&get("/reset/1/j", "x"));
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(a.count(), 5);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("rq_retry"), 2);
}

/// During a drain, clients that keep sending are sent away with
/// `connection: close` spread over the drain period, not all at once, and none
/// of them sees an error.
#[test]
fn drain_sends_busy_clients_away_gradually() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let a = Backend::start("a");
    let port = free_port();
    let cfg = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL);
    assert!(cfg.contains("drain_timeout = \"2s\""));
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let draining = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let draining = draining.clone();
            thread::spawn(move || {
                let mut c = Client::new(port);
                let mut kept_during_drain = 0;
                loop {
                    let resp = c.request(&get(&format!("/c{i}"), "x"));
                    assert_eq!(resp.status, 200, "client {i}");
                    if resp.header("connection").as_deref() == Some("close") {
                        assert!(c.rest().is_empty());
                        return kept_during_drain;
                    }
                    if draining.load(Ordering::SeqCst) {
                        kept_during_drain += 1;
                    }
                }
            })
        })
        .collect();
    // Let them all get going, then drain.
    while a.count() < 50 {
        thread::yield_now();
    }
    draining.store(true, Ordering::SeqCst);
    r.signal(libc::SIGTERM);
    let kept: Vec<u32> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    // Every client was sent away with a proper `connection: close` (the joins
    // above would have panicked on an error or a bare EOF), and not all at the
    // first response after the drain began.
    assert!(kept.iter().sum::<u32>() > 8, "{kept:?}");
    let (code, _) = r.stop();
    assert_eq!(code, 0);
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

fn chunked(pieces: &[usize]) -> String {
    let mut s = String::new();
    for &n in pieces {
        s += &format!("{n:x}\r\n{}\r\n", "c".repeat(n));
    }
    s + "0\r\n\r\n"
}

/// A local 413 to an unread upload: its exact bytes, then EOF (not a reset).
fn assert_local_413(c: &mut Client) {
    let resp = c.response();
    assert_eq!(resp.status, 413, "{}", resp.head);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert_eq!(resp.body, b"request body too large\n");
    let mut rest = Vec::new();
    c.r.read_to_end(&mut rest)
        .expect("a clean close after the 413");
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
}

/// `max_request_body_bytes`: a declared length over the limit is refused
/// before anything is forwarded (or a 100 Continue sent), a chunked body as
/// soon as it crosses it; exactly the limit passes; a route may lift it.
#[test]
fn request_body_over_the_limit_is_413_and_never_reaches_the_upstream() {
    let a = Backend::start("a");
    let (port, prom) = (free_port(), free_port());
    let dir = TempDir::new("rtl");
    let log = dir.0.join("access.log");
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/free/\" }\ncluster = \"a\"\nmax_request_body_bytes = 0\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\n";
    let cfg = with_prometheus(l7_config(port, "http", &[("a", a.addr)], routes), prom)
        + &format!(
            "[http]\nmax_request_body_bytes = 1000\n[access_log]\npath = \"{}\"\n",
            log.display()
        );
    let r = Remora::start(&cfg, &["--cores", "1"]);

    // Content-Length one over: 413 whether or not the body follows.
    let mut c = Client::new(port);
    c.w.write_all(
        format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n{}",
            "b".repeat(1001)
        )
        .as_bytes(),
    )
    .unwrap();
    assert_local_413(&mut c);
    // With Expect: 100-continue the 413 comes instead of the 100 (a 100
    // first would read as status 100 here).
    let mut c = Client::new(port);
    c.w.write_all(
        b"PUT /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
    assert_local_413(&mut c);
    assert_eq!(a.count(), 0, "a refused request reached the backend");

    // Exactly the limit: forwarded, and the connection stays usable.
    let mut c = Client::new(port);
    let j = c
        .request(&format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}",
            "b".repeat(1000)
        ))
        .json();
    assert_eq!(j["body_len"], 1000);
    let j = c
        .request(&format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked(&[500, 499, 1])
        ))
        .json();
    assert_eq!(j["body_len"], 1000);
    assert_eq!(a.count(), 2);

    // Chunked, crossing the limit in its second chunk: still being buffered
    // (retry_buffer_limit is 64 KiB), so nothing went upstream.
    let mut c = Client::new(port);
    c.w.write_all(
        format!(
            "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}",
            chunked(&[600, 600])
        )
        .as_bytes(),
    )
    .unwrap();
    assert_local_413(&mut c);
    assert_eq!(a.count(), 2);

    // The route that sets 0 has no limit.
    let mut c = Client::new(port);
    let j = c
        .request(&format!(
            "POST /free/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{}",
            "b".repeat(5000)
        ))
        .json();
    assert_eq!(j["body_len"], 5000);
    assert_eq!(a.count(), 3);

    let mut m = Client::new(prom);
    let resp = m.request("GET /stats/prometheus HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n");
    let text = String::from_utf8_lossy(&resp.body);
    for line in [
        "remora_downstream_rq_too_large_total 3",
        "remora_response_flags_total{flag=\"RTL\"} 3",
        "remora_upstream_rq_total 3",
    ] {
        assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_rq_too_large"), 3);
    let log = std::fs::read_to_string(&log).unwrap();
    let flagged: Vec<&str> = log.lines().filter(|l| l.contains(" RTL ")).collect();
    assert_eq!(flagged.len(), 3, "{log}");
    assert!(flagged.iter().all(|l| l.contains("\" 413 RTL ")), "{log}");
}

/// A chunked body that crosses the limit after streaming upstream began: the
/// upstream connection is reset (it never sees the last chunk, so it cannot
/// take the request for complete) and the client gets the 413.
#[test]
fn chunked_body_crossing_the_limit_while_streaming_resets_the_upstream() {
    let up = common::listener();
    let up_addr = up.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    thread::spawn(move || {
        let (mut s, _) = up.accept().unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let end = loop {
            match s.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e.kind()),
            }
        };
        let _ = tx.send((got, end));
    });
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"up\"\n";
    let cfg = l7_config(port, "http", &[("up", up_addr)], routes)
        + "[http]\nretry_buffer_limit = 1024\nmax_request_body_bytes = 100000\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    let mut w = c.w.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(
            format!(
                "POST /s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}",
                chunked(&[10_000; 20])
            )
            .as_bytes(),
        );
    });
    assert_local_413(&mut c);
    writer.join().unwrap();
    let (got, end) = rx.recv().unwrap();
    assert_eq!(end, Err(std::io::ErrorKind::ConnectionReset));
    assert!(got.starts_with(b"POST /s HTTP/1.1\r\n"));
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = &got[head_end..];
    assert!(!body.is_empty(), "streaming had not begun");
    assert!(
        body.len() <= 100_000 + 10 * 8,
        "{} bytes went past the limit",
        body.len()
    );
    assert!(
        !body.ends_with(b"0\r\n\r\n"),
        "the upstream saw a complete body"
    );
    let (_, totals) = r.stop();
    assert_eq!(totals.get("downstream_rq_too_large"), 1);
    assert_eq!(totals.get("upstream_rq_total"), 1);
}

/// No limit by default (a sidecar must not break uploads).
#[test]
fn no_body_limit_by_default() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let body = payload(5 * 1024 * 1024, 9);
    let mut c = Client::new(port);
    let mut w = c.w.try_clone().unwrap();
    let writer = thread::spawn(move || {
        w.write_all(b"POST /big HTTP/1.1\r\nHost: x\r\nContent-Length: 5242880\r\n\r\n")
            .unwrap();
        w.write_all(&body).unwrap();
    });
    let resp = c.response();
    writer.join().unwrap();
    assert_eq!(resp.status, 200, "{}", resp.head);
    assert_eq!(resp.json()["body_len"], 5 * 1024 * 1024);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("downstream_rq_too_large"), 0);
}

/// What tests/l7/backend.py answers early with.
fn early_body() -> Vec<u8> {
    let lines: String = (0..712)
        .map(|i| format!("early answer line {i:06}\n"))
        .collect();
    lines.as_bytes()[..16384].to_vec()
}

/// An upstream that answers (413) before it read the upload, however it
/// treats its connection afterwards: the client, still uploading, reads the
/// whole answer, byte for byte, with `connection: close`; the rest of its
/// upload is taken (lingering close), then the proxy closes cleanly; the
/// upstream connection is not reused (its request was never finished).
#[test]
fn early_answer_reaches_a_client_still_uploading() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg =
        l7_config(port, "http", &[("a", a.addr)], CATCH_ALL) + "[http]\nlingering_time = \"1m\"\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let expected = early_body();
    for path in ["/early", "/early-drain", "/early-keep"] {
        let mut c = Client::new(port);
        // 100 KiB of a 4 MiB upload: past the retry buffer, so streaming;
        // the rest is held back until the answer is in, so the answer is
        // necessarily early.
        let upload = payload(4 * 1024 * 1024, 11);
        c.w.write_all(
            format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n").as_bytes(),
        )
        .unwrap();
        c.w.write_all(&upload[..100 * 1024]).unwrap();
        let resp = c.response();
        assert_eq!(resp.status, 413, "{path}: {}", resp.head);
        assert_eq!(
            resp.header("connection").as_deref(),
            Some("close"),
            "{path}"
        );
        assert!(
            resp.body == expected,
            "{path}: the early answer's body differs"
        );
        // The rest of the upload is read and dropped, not refused.
        c.w.write_all(&upload[100 * 1024..])
            .unwrap_or_else(|e| panic!("{path}: upload refused after the answer: {e}"));
        let mut rest = Vec::new();
        c.r.read_to_end(&mut rest)
            .unwrap_or_else(|e| panic!("{path}: no clean close: {e}"));
        assert!(rest.is_empty(), "{path}");
    }
    // A plain request afterwards needs a new upstream connection: the
    // /early-keep one looked reusable but its request was cut short.
    let mut c = Client::new(port);
    assert_eq!(c.request(&get("/after", "x")).status, 200);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("upstream_cx_reused"), 0);
    assert_eq!(totals.get("upstream_cx_total"), 4);
    assert_eq!(totals.get("downstream_cx_lingering_close"), 3);
}

/// Upload bytes that are read and dropped after an early answer still count
/// in the access log's `bytes_received` (Envoy counts every body byte the
/// client sent): an upstream answering mid-upload (dropped while the answer
/// goes out, then by the lingering close), a route's direct_response and an
/// RBAC denial (the whole body dropped by the lingering close), and a
/// chunked body after a local reply (counted with its framing: dropped
/// undecoded). The entry of a lingering close is written when it ends.
#[test]
fn discarded_upload_bytes_count_in_the_access_log() {
    let a = Backend::start("a");
    let port = free_port();
    let dir = TempDir::new("discard-log");
    let log = dir.0.join("access.log");
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n\
        [[virtual_host.route]]\nmatch = { prefix = \"/direct\" }\ndirect_response = { status = 200, body = \"hi\" }\n\
        [[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\ntimeout = \"10s\"\n";
    let cfg = l7_config(port, "http", &[("a", a.addr)], routes)
        + &format!(
            "[http]\nlingering_time = \"1m\"\n[access_log]\npath = \"{}\"\nformat = \"json\"\n\
             fields = [\"path\", \"response_code\", \"bytes_received\"]\n",
            log.display()
        );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    const LEN: usize = 4 * 1024 * 1024;
    let upload = payload(LEN, 13);
    // Early upstream answers: 100 KiB (past the retry buffer: streaming),
    // the answer, then the rest.
    for path in ["/early", "/early-drain", "/early-keep"] {
        let mut c = Client::new(port);
        c.w.write_all(
            format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        c.w.write_all(&upload[..100 * 1024]).unwrap();
        assert_eq!(c.response().status, 413, "{path}");
        c.w.write_all(&upload[100 * 1024..]).unwrap();
        let mut rest = Vec::new();
        c.r.read_to_end(&mut rest).unwrap();
    }
    // Local replies before any of the body was read: the whole upload is
    // sent at once, then the answer read.
    let mut c = Client::new(port);
    c.w.write_all(
        format!("POST /direct HTTP/1.1\r\nHost: x\r\nContent-Length: {LEN}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let writer = thread::spawn({
        let mut w = c.w.try_clone().unwrap();
        let upload = upload.clone();
        move || w.write_all(&upload)
    });
    assert_eq!(c.response().status, 200);
    writer
        .join()
        .unwrap()
        .expect("the upload is taken, not refused");
    let mut rest = Vec::new();
    c.r.read_to_end(&mut rest).unwrap();
    drop(c);
    // Chunked after a local reply: 3 chunks of 1000 bytes, framing included.
    let body = chunked(&[1000, 1000, 1000]);
    let mut c = Client::new(port);
    c.w.write_all(
        format!("POST /direct HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{body}")
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(c.response().status, 200);
    c.w.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    c.r.read_to_end(&mut rest).unwrap();
    drop(c);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_lingering_close"), 5);
    let text = std::fs::read_to_string(&log).unwrap();
    // In any order: an entry is written when its lingering close ends, and
    // those of one request and the next can end either way round.
    let mut got: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .unwrap()
                .to_string()
        })
        .collect();
    got.sort();
    let want = |path: &str, code: u16, n: usize| {
        serde_json::json!({"path": path, "response_code": code, "bytes_received": n}).to_string()
    };
    let mut wanted = vec![
        want("/early", 413, LEN),
        want("/early-drain", 413, LEN),
        want("/early-keep", 413, LEN),
        want("/direct", 200, LEN),
        want("/direct", 200, body.len()),
    ];
    wanted.sort();
    assert_eq!(got, wanted, "{text}");
}

/// A client that writes its whole upload before it reads anything (many
/// simple clients do) still gets the early answer: the proxy reads and drops
/// the upload while answering, instead of leaving the client stuck in a write
/// or resetting it.
#[test]
fn early_answer_reaches_a_client_that_reads_only_after_uploading() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg =
        l7_config(port, "http", &[("a", a.addr)], CATCH_ALL) + "[http]\nlingering_time = \"1m\"\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let expected = early_body();
    for path in ["/early", "/early-drain"] {
        let mut c = Client::new(port);
        let upload = payload(8 * 1024 * 1024, 12);
        c.w.write_all(
            format!("PUT {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 8388608\r\n\r\n").as_bytes(),
        )
        .unwrap();
        c.w.write_all(&upload)
            .unwrap_or_else(|e| panic!("{path}: upload refused: {e}"));
        let resp = c.response();
        assert_eq!(resp.status, 413, "{path}: {}", resp.head);
        assert!(
            resp.body == expected,
            "{path}: the early answer's body differs"
        );
    }
    drop(r);
}

/// curl, with and without `Expect: 100-continue`, uploading 8 MiB to an
/// upstream that answers early: curl gets the whole answer and exits 0.
#[test]
fn curl_gets_the_early_answer_to_its_upload() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let dir = TempDir::new("curl-early");
    let upload = dir.0.join("upload.bin");
    std::fs::write(&upload, payload(8 * 1024 * 1024, 13)).unwrap();
    let out_file = dir.0.join("out.bin");
    let expected = early_body();
    for path in ["/early", "/early-drain"] {
        for expect in ["Expect: 100-continue", "Expect:"] {
            let out = Command::new("curl")
                .args(["-sS", "-X", "PUT", "-H", expect, "-w", "%{http_code}"])
                .arg("--data-binary")
                .arg(format!("@{}", upload.display()))
                .arg("-o")
                .arg(&out_file)
                .arg(format!("http://127.0.0.1:{port}{path}"))
                .output()
                .expect("curl");
            let what = format!("{path} with {expect:?}");
            assert!(
                out.status.success(),
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout), "413", "{what}");
            assert!(
                std::fs::read(&out_file).unwrap() == expected,
                "{what}: the early answer's body differs"
            );
        }
    }
    drop(r);
}

/// An upstream that closes right after each response races the pool's check
/// (src/upstream/pool.rs, `quiet`): an idempotent request that finds the
/// connection dead before any response byte goes once more on a fresh one.
#[test]
fn pooled_connection_closed_right_after_its_response_is_replaced() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    // Idempotent methods only: a POST that loses the race is not sent again
    // (RFC 9112 §9.3.1; see pooled_connection_closed_by_upstream_is_not_a_failure).
    let kinds = [
        ("GET", ""),
        ("PUT", "a buffered body"),
        ("DELETE", ""),
        ("OPTIONS", ""),
    ];
    let n = 24;
    for i in 0..n {
        let (method, body) = kinds[i % kinds.len()];
        // Every /close answer leaves a pooled connection the backend closes.
        let req = if body.is_empty() {
            format!("{method} /close/{i} HTTP/1.1\r\nHost: x\r\n\r\n")
        } else {
            format!(
                "{method} /close/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let resp = c.request(&req);
        assert_eq!(resp.status, 200, "request {i}: {}", resp.head);
        let j = resp.json();
        assert_eq!(j["method"], method, "request {i}");
        assert_eq!(j["path"], format!("/close/{i}"));
        assert_eq!(j["body_len"], body.len());
    }
    // Each request reached the backend once, each on a connection of its own.
    assert_eq!(a.count(), n as u64);
    let (_, totals) = r.stop();
    assert_eq!(totals.get("rq_5xx"), 0);
    assert_eq!(totals.get("upstream_cx_total"), n as u64);
    assert_eq!(totals.get("rq_retry"), 0);
}

/// A raw upstream: every request (bodiless) on a keep-alive connection gets
/// `answer`'s bytes in one write, so a response's head and body reach the
/// proxy together. `answer` sees the request line.
fn canned_upstream(answer: fn(&str) -> Vec<u8>) -> SocketAddr {
    scripted_upstream(move |line, _, w| w.write_all(&answer(line)).is_ok())
}

/// A raw upstream driven by a script: for each request (bodiless) on a
/// connection, `script(request line, its index on the connection, socket)`
/// writes what it likes and says whether the connection goes on.
fn scripted_upstream(
    script: impl Fn(&str, usize, &mut TcpStream) -> bool + Send + Sync + Copy + 'static,
) -> SocketAddr {
    let l = common::listener();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                for n in 0.. {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    if !script(line.trim_end(), n, &mut w) {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// The response head and the body that came with it leave in one send; the
/// framing stays right for responses without a body (HEAD, 204, 304), chunked
/// ones with extensions and trailers (re-encoded), long ones, and a body that
/// is malformed from its first byte (the head goes, then a reset).
#[test]
fn response_head_and_body_sent_together_keep_their_framing() {
    let up = canned_upstream(|line| {
        let path = line.split_whitespace().nth(1).unwrap_or("");
        match path {
            "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec(),
            "/204" => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            "/304" => b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\nContent-Length: 5\r\n\r\n"
                .to_vec(),
            "/trailers" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-t\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: done\r\n\r\n".to_vec(),
            "/long" => {
                let mut v = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 300_000)
                    .into_bytes();
                v.extend(payload(300_000, 7));
                v
            }
            "/bad" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n".to_vec(),
            _ => b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world".to_vec(),
        }
    });
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", up)], CATCH_ALL),
        &["--cores", "1"],
    );
    // Reads a response head only (the responses above that have no body).
    fn head_only(c: &mut Client) -> String {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(c.r.read_line(&mut line).unwrap() > 0, "closed: {head:?}");
            if line == "\r\n" {
                return head;
            }
            head.push_str(&line);
        }
    }
    let mut c = Client::new(port);
    // One after another, then the same pipelined: after each bodiless
    // response the next one must start right where its head ends.
    for pipelined in [false, true] {
        let reqs = [
            "HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
            get("/204", "x"),
            get("/304", "x"),
            get("/long", "x"),
            get("/plain", "x"),
        ];
        if pipelined {
            c.w.write_all(reqs.concat().as_bytes()).unwrap();
        }
        let send = |c: &mut Client, i: usize| {
            if !pipelined {
                c.w.write_all(reqs[i].as_bytes()).unwrap();
            }
        };
        send(&mut c, 0);
        let h = head_only(&mut c);
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert!(h.to_ascii_lowercase().contains("content-length: 5"), "{h}");
        send(&mut c, 1);
        assert!(head_only(&mut c).starts_with("HTTP/1.1 204"));
        send(&mut c, 2);
        let h = head_only(&mut c);
        assert!(h.starts_with("HTTP/1.1 304"), "{h}");
        send(&mut c, 3);
        let resp = c.response();
        assert_eq!(resp.status, 200);
        assert!(resp.body == payload(300_000, 7), "the long body differs");
        send(&mut c, 4);
        assert_eq!(c.response().body, b"hello world");
    }
    // Chunked: re-encoded (extensions dropped), trailers kept.
    let mut c = Client::new(port);
    c.w.write_all(b"GET /trailers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let all = String::from_utf8(c.rest()).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(body, "5\r\nhello\r\n6\r\n world\r\n0\r\nx-t: done\r\n\r\n");
    // Malformed from the first body byte: the client must not mistake what
    // it gets for a whole response.
    let mut c = Client::new(port);
    c.w.write_all(get("/bad", "x").as_bytes()).unwrap();
    let mut got = Vec::new();
    let _ = c.r.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got);
    assert!(
        !got.contains("hello") && !got.contains("\r\n0\r\n"),
        "{got}"
    );
    // And the proxy serves on.
    let mut c = Client::new(port);
    assert_eq!(c.request(&get("/plain", "x")).body, b"hello world");
    drop(r);
}

/// A request's method, path and authority are copied for the log only when
/// something reads them: the access log, or the debug line per request.
#[test]
fn request_details_reach_the_access_log_and_the_debug_line() {
    let a = Backend::start("a");
    let dir = TempDir::new("details");
    let log = dir.0.join("access.log");
    let port = free_port();
    let cfg = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL)
        + &format!("[access_log]\npath = \"{}\"\n", log.display());
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    assert_eq!(c.request(&get("/details/1", "svc.example")).status, 200);
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("\"GET /details/1 HTTP/1.1\" 200") && text.contains("\"svc.example\""),
        "{text}"
    );
    // No access log, debug logging on.
    let port = free_port();
    let mut r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1", "--log-level", "debug"],
    );
    let mut c = Client::new(port);
    assert_eq!(c.request(&get("/details/2", "x")).status, 200);
    let line = r.wait_for_log("path=/details/2");
    assert!(line.contains("method=GET"), "{line}");
    drop(r);
}

/// A stray response from an upstream, with the client that asked for the
/// request served from the same pooled connection before it, never reaches
/// the next client. The upstream answers `HEAD /head` with a head and then,
/// a moment later, a body (which HEAD responses must not have), or `GET
/// /twice` with two responses. Whoever takes that connection next would read
/// the stray bytes as the answer to their own request (issue 14: responses
/// mixed between clients).
#[test]
fn stray_bytes_on_a_pooled_connection_never_answer_another_client() {
    let up = scripted_upstream(|line, _, w| {
        let evil = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL";
        let stray_after = |w: &mut TcpStream, first: &[u8]| {
            w.write_all(first).and_then(|()| {
                thread::sleep(std::time::Duration::from_millis(30));
                w.write_all(evil)
            })
        };
        let res = if line.starts_with("HEAD /head") {
            stray_after(w, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        } else if line.starts_with("GET /twice") {
            stray_after(w, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        } else {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ngood")
        };
        res.is_ok()
    });
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", up)], CATCH_ALL),
        &["--cores", "1"],
    );
    for (i, first) in [
        "HEAD /head HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /twice HTTP/1.1\r\nHost: x\r\n\r\n",
    ]
    .into_iter()
    .enumerate()
    {
        let mut a = Client::new(port);
        a.w.write_all(first.as_bytes()).unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            assert!(a.r.read_line(&mut line).unwrap() > 0);
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        if first.starts_with("GET") {
            let mut ok = [0u8; 2];
            a.r.read_exact(&mut ok).unwrap();
            assert_eq!(&ok, b"ok");
        }
        // The stray bytes reach the pooled connection meanwhile.
        thread::sleep(std::time::Duration::from_millis(200));
        // Another client, then the first one again: each gets its own answer.
        for who in ["another client", "the same client"] {
            let mut b = Client::new(port);
            let c = if who == "another client" {
                &mut b
            } else {
                &mut a
            };
            let resp = c.request(&get("/next", "x"));
            assert_eq!(
                (resp.status, &resp.body[..]),
                (200, &b"good"[..]),
                "case {i}, {who}: got another request's response"
            );
        }
    }
    let (_, totals) = r.stop();
    assert_eq!(totals.get("rq_5xx"), 0);
}

/// A request body that stops arriving gets 408 after `stream_idle_timeout`
/// (Envoy's), whether it was still being buffered (the upstream never saw
/// it) or already streaming (the upstream connection is reset, so it never
/// takes a truncated body for a whole one), instead of holding the
/// connection for the hour of `idle_timeout` and closing it silently.
#[test]
fn stalled_request_body_is_408_after_stream_idle_timeout() {
    let a = Backend::start("a");
    let port = free_port();
    let cfg = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL)
        + "[http]\nstream_idle_timeout = \"300ms\"\nretry_buffer_limit = 1024\n";
    let r = Remora::start(&cfg, &["--cores", "1"]);
    for (what, len, sent) in [("buffered", 10, 3), ("streamed", 100_000, 50_000)] {
        let mut c = Client::new(port);
        let head = format!("POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n\r\n");
        c.w.write_all(head.as_bytes()).unwrap();
        c.w.write_all(&payload(sent, 1)).unwrap();
        // Then nothing more: the proxy must answer on its own.
        let resp = c.response();
        assert_eq!(resp.status, 408, "{what}: {}", resp.head);
        assert!(c.rest().is_empty(), "{what}: bytes after the 408");
        if what == "buffered" {
            assert_eq!(a.count(), 0, "a stalled buffered body reached the backend");
        }
    }
    let (_, totals) = r.stop();
    assert_eq!(totals.get("downstream_rq_body_timeout"), 2);
}

/// A client whose request is refused at the head (400, 431) while it is
/// still sending reads the whole reply and a clean close, not a reset: the
/// proxy half-closes and drains what follows (lingering close), as it does
/// after other local replies.
#[test]
fn head_errors_close_lingering_so_the_reply_is_read() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", a.addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n",
        "b".repeat(70_000)
    );
    let cases: [(&str, Vec<u8>, u16); 2] = [
        (
            "400 then more bytes",
            [
                b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
                payload(256 * 1024, 3),
            ]
            .concat(),
            400,
        ),
        (
            "431 while the head keeps coming",
            big_header.into_bytes(),
            431,
        ),
    ];
    for (what, bytes, status) in cases {
        let mut c = Client::new(port);
        // Written from another thread: the proxy answers before it all goes.
        let mut w = c.w.try_clone().unwrap();
        let writer = thread::spawn(move || {
            let _ = w.write_all(&bytes);
            // The client finishes sending, then half-closes, as a client does.
            let _ = w.shutdown(std::net::Shutdown::Write);
        });
        let resp = c.response();
        assert_eq!(resp.status, status, "{what}: {}", resp.head);
        assert!(
            c.r.read_to_end(&mut Vec::new()).is_ok(),
            "{what}: reset instead of a clean close"
        );
        writer.join().unwrap();
    }
    assert_eq!(a.count(), 0);
    let (_, totals) = r.stop();
    assert!(totals.get("downstream_cx_lingering_close") >= 2);
}

/// Every documented access-log field has a value when the request carries
/// it, in JSON (user_agent and x_forwarded_for were once always "-").
#[test]
fn every_access_log_field_is_filled_when_the_request_has_it() {
    let a = Backend::start("a");
    let dir = TempDir::new("fields");
    let log = dir.0.join("access.log");
    let port = free_port();
    let cfg = l7_config(port, "http", &[("a", a.addr)], CATCH_ALL)
        + &format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            log.display()
        );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let mut c = Client::new(port);
    let resp = c.request(
        "POST /fields?q=1 HTTP/1.1\r\nHost: svc.example\r\nUser-Agent: curl/8.0\r\nX-Forwarded-For: 10.9.8.7\r\nX-Request-Id: rid-1\r\nContent-Length: 3\r\n\r\nabc",
    );
    assert_eq!(resp.status, 200);
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let entry: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let fields = [
        "start_time",
        "protocol",
        "method",
        "path",
        "response_code",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_host",
        "downstream_remote_address",
        "downstream_local_address",
        "listener",
        "request_id",
        "authority",
        "user_agent",
        "x_forwarded_for",
    ];
    for f in fields {
        let v = &entry[f];
        assert!(
            !v.is_null() && v != "-" && v != "",
            "field {f} has no value: {entry}"
        );
    }
    // No flags is Envoy's "-".
    assert_eq!(entry["response_flags"], "-");
    assert_eq!(entry["user_agent"], "curl/8.0");
    assert_eq!(entry["x_forwarded_for"], "10.9.8.7");
    assert_eq!(entry["request_id"], "rid-1");
}

/// An upstream whose keep-alive timeout closes idle connections with "408
/// Request Timeout" can have that 408 race a request on the pooled
/// connection. The 408 answers no request of ours: an idempotent request is
/// sent again on a fresh connection and the client gets the real answer.
/// The upstream here answers the second request on every connection with
/// such a 408 and closes, which is that race's outcome made certain.
#[test]
fn idle_close_408_on_a_reused_connection_is_not_the_answer() {
    let up = scripted_upstream(|_, n, w| {
        if n == 0 {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .is_ok()
        } else {
            let _ = w.write_all(
                b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            );
            false
        }
    });
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", up)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    for i in 0..6 {
        let resp = c.request(&get(&format!("/r{i}"), "x"));
        assert_eq!(
            (resp.status, &resp.body[..]),
            (200, &b"ok"[..]),
            "request {i}"
        );
    }
    // A POST is not sent twice (RFC 9112 §9.3.1): it gets the 408.
    let resp = c.request("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(resp.status, 408);
    drop(r);
}

/// A Content-Length response whose head comes before any of its body goes to
/// the client as one piece, head and body together (one send, one segment,
/// not two); a chunked response's head, which a streaming upstream sends
/// early on purpose, goes at once.
#[test]
fn a_length_head_waits_for_its_body_but_a_chunked_head_goes_at_once() {
    use std::sync::mpsc;
    use std::time::Duration;
    let up = common::listener();
    let up_addr = up.local_addr().unwrap();
    // The client's word that it has read the chunked head.
    let (seen_tx, seen_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        let Ok((mut s, _)) = up.accept() else { return };
        let mut buf = [0u8; 4096];
        let mut req = Vec::new();
        for chunked in [false, true] {
            // One request (no body) at a time on the pooled connection.
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let Ok(n @ 1..) = s.read(&mut buf) else {
                    return;
                };
                req.extend_from_slice(&buf[..n]);
            }
            req.clear();
            if chunked {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
                if seen_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                    return; // the head never reached the client: it fails below
                }
                let _ = s.write_all(b"5\r\nhello\r\n0\r\n\r\n");
            } else {
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n");
                // Long enough that the proxy reads the head alone; well inside
                // the ~200 ms the kernel holds a MSG_MORE send before it sends
                // it anyway (at 200 ms the two raced, and a loaded machine
                // lost: the head went alone).
                thread::sleep(Duration::from_millis(50));
                let _ = s.write_all(b"hello");
            }
        }
    });
    let port = free_port();
    let r = Remora::start(
        &l7_config(port, "http", &[("a", up_addr)], CATCH_ALL),
        &["--cores", "1"],
    );
    let mut s = connect(port);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(get("/len", "x").as_bytes()).unwrap();
    // The body came 50 ms after the head; the first read has both.
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap();
    let first = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    assert!(
        first.ends_with("\r\n\r\nhello"),
        "head sent without its body: {first:?}"
    );
    // Chunked: the head arrives while the upstream still holds the body.
    s.write_all(get("/chunked", "x").as_bytes()).unwrap();
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).expect("the chunked head was held back");
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("chunked"));
    seen_tx.send(()).unwrap();
    while !got.ends_with(b"0\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).contains("5\r\nhello\r\n"));
    drop(r);
}
