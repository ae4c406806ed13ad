//! HTTP/2 clients through the built binary, with real peers: curl
//! (`--http2-prior-knowledge`), nghttp and h2load (Debian's nghttp2-client),
//! on an explicit `protocol = "http"` listener and an `auto` one, to the
//! HTTP/1 test backend (tests/l7/backend.py) and to nginx speaking HTTP/2
//! (`listen ... http2`, a cluster with `http2 = true`).

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use common::http::*;
use common::*;
use serde_json::Value;

/// Capture off, one listener (`protocol`), clusters by (name, endpoint,
/// `http2` value or "" for the default), then `rest` (routes and more).
fn config(port: u16, protocol: &str, clusters: &[(&str, SocketAddr, &str)], rest: &str) -> String {
    let mut s = format!(
        "[runtime]\ndrain_timeout = \"2s\"\n[admin]\nenabled = false\n[capture]\nenabled = false\n[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"{}\"\nprotocol = \"{protocol}\"\n",
        clusters[0].0
    );
    for (name, ep, http2) in clusters {
        s += &format!(
            "[[cluster]]\nname = \"{name}\"\nendpoints = [\"{ep}\"]\nconnect_timeout = \"2s\"\n"
        );
        if !http2.is_empty() {
            s += &format!("http2 = {http2}\n");
        }
    }
    s + rest
}

fn catch_all(cluster: &str) -> String {
    format!("[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"{cluster}\"\n")
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What curl got: status, HTTP version, response fields (names lowercase)
/// and body.
#[derive(Debug)]
struct Got {
    status: u16,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?} {}", self, String::from_utf8_lossy(&self.body)))
    }
}

/// curl with HTTP/2 prior knowledge; `args` before the URL.
fn curl(dir: &TempDir, url: &str, args: &[&str]) -> Got {
    let heads = dir.0.join(format!("h-{}", free_port()));
    let body = dir.0.join(format!("b-{}", free_port()));
    let out = Command::new("curl")
        .args(["-sS", "--http2-prior-knowledge", "--max-time", "60"])
        .arg("-D")
        .arg(&heads)
        .arg("-o")
        .arg(&body)
        .args(["-w", "%{http_code} %{http_version}"])
        .args(args)
        .arg(url)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let w = String::from_utf8(out.stdout).unwrap();
    let (status, version) = w.split_once(' ').unwrap();
    let text = std::fs::read_to_string(&heads).unwrap();
    // The last response's head (after any interim ones; trailers follow
    // it as a block of their own).
    let head = text
        .split("\r\n\r\n")
        .filter(|b| b.starts_with("HTTP/"))
        .last()
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_ascii_lowercase(), v.trim().to_string()))
        })
        .collect();
    let got = Got {
        status: status.parse().unwrap(),
        version: version.to_string(),
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    };
    let _ = std::fs::remove_file(heads);
    let _ = std::fs::remove_file(body);
    got
}

/// nghttp -v: every frame and field it sent and received, as text.
fn nghttp(args: &[&str]) -> String {
    let out = Command::new("nghttp")
        .args(["-v", "-t", "60"])
        .args(args)
        .output()
        .expect("nghttp (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "nghttp {args:?}: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The fields nghttp received on the stream of its first request (the
/// first with a `:status`), in order, each with whether it came after the
/// stream's first DATA frame (a trailer).
fn nghttp_fields(text: &str) -> Vec<(String, String, bool)> {
    let stream: u32 = text
        .lines()
        .find_map(|l| {
            let rest = l.split("recv (stream_id=").nth(1)?;
            let (id, field) = rest.split_once(") ")?;
            field.starts_with(":status").then(|| id.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no response in:\n{text}"));
    let tag = format!("recv (stream_id={stream}) ");
    let data = "recv DATA frame <length=";
    let sid = format!("stream_id={stream}>");
    let mut after_data = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.contains(data) && line.contains(&sid) {
            after_data = true;
        }
        if let Some(i) = line.find(&tag) {
            let field = &line[i + tag.len()..];
            if let Some((n, v)) = field.split_once(": ") {
                out.push((n.to_string(), v.to_string(), after_data));
            } else if let Some(rest) = field.strip_prefix(':') {
                // Pseudo-headers: ":status: 200".
                if let Some((n, v)) = rest.split_once(": ") {
                    out.push((format!(":{n}"), v.to_string(), after_data));
                }
            }
        }
    }
    out
}

/// h2load's request summary: (succeeded, failed + errored + timeout, 2xx).
fn h2load(args: &[&str]) -> (u64, u64, u64) {
    let out = Command::new("h2load")
        .args(args)
        .output()
        .expect("h2load (Debian nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let num = |line: &str, word: &str| -> u64 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let i = words.iter().position(|w| *w == word).unwrap();
        words[i - 1].parse().unwrap()
    };
    let req = text
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("h2load output: {text}"));
    let codes = text
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap();
    (
        num(req, "succeeded"),
        num(req, "failed") + num(req, "errored") + num(req, "timeout"),
        num(codes, "2xx"),
    )
}

/// nginx speaking HTTP/2 (prior knowledge) on a port of its own: static
/// files from its directory's `www/`, and `/nginx/seen` answering with what
/// it saw of the request.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Nginx {
    fn start() -> Nginx {
        Nginx::start_with("")
    }

    /// With `server` directives added to its server block.
    fn start_with(server: &str) -> Nginx {
        let dir = TempDir::new("nginx-h2");
        let port = free_port();
        std::fs::create_dir_all(dir.0.join("www")).unwrap();
        let d = dir.0.display();
        // One process (master_process off): the kill in Drop leaves no
        // orphaned worker behind.
        let conf = dir.file(
            "nginx.conf",
            &format!(
                r#"master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/cb; proxy_temp_path {d}/px; fastcgi_temp_path {d}/fc;
  uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;
  server {{
    listen 127.0.0.1:{port} http2;
    root {d}/www;
    {server}
    location = /nginx/seen {{
      default_type text/plain;
      return 200 "proto=$server_protocol host=$host xff=$http_x_forwarded_for rid=$http_x_request_id cookie=$http_cookie";
    }}
  }}
}}
"#
            ),
        );
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (tests/run installs nginx-light)");
        drop(connect(port));
        Nginx {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            dir,
        }
    }

    fn file(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.dir.0.join("www").join(name);
        std::fs::write(&p, data).unwrap();
        p
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Python upstream (`script ARGS... PORT`) on a free port, once it printed
/// "ready"; killed when dropped.
fn python_upstream(script: &str, args: &[&str]) -> (ReadyChild, SocketAddr) {
    let port = free_port();
    let up = ReadyChild::spawn(
        Command::new("python3")
            .arg(script)
            .args(args)
            .arg(port.to_string()),
    );
    (up, format!("127.0.0.1:{port}").parse().unwrap())
}

fn url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

const ROUTES: &str = r#"
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

/// The same virtual hosts as HTTP/1 (tests/l7_proxy.rs), by :authority,
/// path and header, on an `http` and an `auto` listener; the backend sees
/// Host, X-Forwarded-For, X-Request-Id and the cookies joined into one
/// field; the client gets HTTP/2 without connection-specific fields.
#[test]
fn routes_and_rewrites_heads_like_http1_on_http_and_auto_listeners() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let dir = TempDir::new("h2-route");
    for protocol in ["http", "auto"] {
        let port = free_port();
        let r = Remora::start(
            &config(
                port,
                protocol,
                &[("a", a.addr, ""), ("b", b.addr, "")],
                ROUTES,
            ),
            &["--cores", "1"],
        );
        let got = curl(&dir, &url(port, "/x"), &["-H", "host: b.example:80"]);
        assert_eq!((got.status, got.version.as_str()), (200, "2"), "{protocol}");
        let j = got.json();
        assert_eq!(j["backend"], "b", "{protocol}: {j}");
        assert_eq!(j["headers"]["x-route"], "bhost");
        assert_eq!(j["headers"]["host"], "b.example:80");
        let j = curl(&dir, &url(port, "/to-b/y?q=1"), &[]).json();
        assert_eq!(
            (j["backend"].as_str(), j["path"].as_str()),
            (Some("b"), Some("/rewritten/y?q=1"))
        );
        let j = curl(&dir, &url(port, "/z"), &["-H", "x-canary: 1"]).json();
        assert_eq!(j["backend"], "b");
        let j = curl(&dir, &url(port, "/z"), &["-H", "x-forwarded-for: 10.1.2.3"]).json();
        assert_eq!(j["backend"], "a");
        let h = &j["headers"];
        assert_eq!(h["host"], format!("127.0.0.1:{port}"));
        assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-request-id"].as_str().map(str::len), Some(36), "{h}");
        let j = curl(&dir, &url(port, "/id"), &["-H", "x-request-id: mine"]).json();
        assert_eq!(j["headers"]["x-request-id"], "mine");

        // Two cookie fields (RFC 9113 §8.2.3 lets an HTTP/2 client split
        // them) reach an HTTP/1 upstream as one; connection-specific
        // fields of the upstream's answer never reach the HTTP/2 client.
        let text = nghttp(&["-H", "cookie: a=1", "-H", "cookie: b=2", &url(port, "/hop")]);
        let fields = nghttp_fields(&text);
        let get = |n: &str| fields.iter().find(|f| f.0 == n).map(|f| f.1.clone());
        assert_eq!(get(":status").as_deref(), Some("200"), "{text}");
        assert_eq!(get("x-end-to-end").as_deref(), Some("kept"), "{text}");
        for n in [
            "connection",
            "keep-alive",
            "x-hop",
            "proxy-connection",
            "transfer-encoding",
        ] {
            assert!(get(n).is_none(), "{n} reached the HTTP/2 client:\n{text}");
        }
        let body = text
            .lines()
            .find(|l| l.starts_with('{'))
            .unwrap_or_else(|| panic!("{text}"));
        // The body has no newline: nghttp's next line follows it.
        let j: Value = serde_json::Deserializer::from_str(body)
            .into_iter()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(j["headers"]["cookie"], "a=1; b=2", "{j}");

        let (code, totals) = r.stop();
        assert_eq!(code, 0);
        assert_eq!(totals.get("downstream_cx_http2"), 6, "{protocol}");
        assert_eq!(totals.get("downstream_rq_http2"), 6, "{protocol}");
        assert_eq!(totals.get("rq_2xx"), 6, "{protocol}");
    }
}

/// Request bodies of every shape reach an HTTP/1 and an HTTP/2 upstream
/// whole: small, larger than retry_buffer_limit (64 KiB), and streamed
/// with no content-length (chunked to HTTP/1).
#[test]
fn request_bodies_small_large_and_without_length() {
    let a = Backend::start("a");
    let dir = TempDir::new("h2-body");
    let port = free_port();
    let r = Remora::start(
        &config(port, "http", &[("a", a.addr, "")], &catch_all("a")),
        &["--cores", "1"],
    );
    for (i, len) in [(0u64, 11usize), (1, 300 << 10), (2, 3 << 20)] {
        let data = payload(len, i + 1);
        let file = dir.file(&format!("up{i}"), "");
        std::fs::write(&file, &data).unwrap();
        let at = format!("@{}", file.display());
        let got = curl(&dir, &url(port, "/post"), &["--data-binary", &at]);
        let j = got.json();
        assert_eq!(j["body_len"], len, "{j}");
        assert_eq!(j["body_sha"], sha256_hex(&data));
        assert_eq!(j["headers"]["content-length"], len.to_string());
        // From a pipe: no content-length on the HTTP/2 side.
        let got = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cat {} | curl -sS --http2-prior-knowledge --max-time 60 -T - {}",
                file.display(),
                url(port, "/put")
            ))
            .output()
            .unwrap();
        assert!(got.status.success(), "{got:?}");
        let j: Value = serde_json::from_slice(&got.stdout).unwrap();
        assert_eq!(
            (j["method"].as_str(), &j["body_len"]),
            (Some("PUT"), &len.into()),
            "{j}"
        );
        assert_eq!(j["body_sha"], sha256_hex(&data));
        if len > 2 << 20 {
            // More than the stream window: it cannot all be in before the
            // request goes upstream, so it goes chunked.
            assert_eq!(j["headers"]["transfer-encoding"], "chunked", "{j}");
        }
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_2xx"), 6);
}

/// Large responses stream through whole, from an HTTP/1 upstream (with a
/// length and chunked) and from an HTTP/2 one; the chunked answer's
/// trailers reach the client as HTTP/2 trailers.
#[test]
fn large_responses_and_trailers() {
    let a = Backend::start("a");
    let ng = Nginx::start();
    let big = payload(6 << 20, 7);
    ng.file("big.bin", &big);
    let dir = TempDir::new("h2-big");
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/big.bin\" }\ncluster = \"ng\"\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\n";
    let r = Remora::start(
        &config(
            port,
            "http",
            &[("a", a.addr, ""), ("ng", ng.addr, "true")],
            routes,
        ),
        &["--cores", "1"],
    );
    for path in ["/bytes/7340032", "/bytes-chunked/5242881"] {
        let got = curl(&dir, &url(port, path), &[]);
        assert_eq!(got.status, 200);
        let want: usize = path.rsplit('/').next().unwrap().parse().unwrap();
        assert_eq!(got.body.len(), want, "{path}");
        assert_eq!(
            Some(sha256_hex(&got.body).as_str()),
            got.header("x-body-sha256"),
            "{path}"
        );
    }
    let got = curl(&dir, &url(port, "/big.bin"), &[]);
    assert_eq!((got.status, got.body.len()), (200, big.len()));
    assert!(
        got.body == big,
        "the HTTP/2 upstream's body arrived changed"
    );

    // Trailers of a chunked HTTP/1 answer: HTTP/2 trailers after the data.
    let text = nghttp(&[&url(port, "/bytes-chunked/100000")]);
    let fields = nghttp_fields(&text);
    let trailer = |n: &str| fields.iter().find(|f| f.0 == n && f.2).cloned();
    let (_, len, _) = trailer("x-body-len").unwrap_or_else(|| panic!("no trailer:\n{text}"));
    assert_eq!(len, "100000", "{text}");
    let (_, sha, _) = trailer("x-body-sha256").unwrap();
    // ... and the same value as in the head.
    assert!(fields
        .iter()
        .any(|f| f.0 == "x-body-sha256" && !f.2 && f.1 == sha));
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("upstream_cx_http2_total"), 1);
}

/// The same routes and header rules toward an HTTP/2 upstream (nginx,
/// `http2 = true`): it sees HTTP/2 with :authority, X-Forwarded-For,
/// X-Request-Id and the cookies; many multiplexed streams from h2load on
/// few upstream connections.
#[test]
fn http2_upstream_heads_and_multiplexed_load() {
    let ng = Nginx::start();
    ng.file("small.txt", b"hello over h2\n");
    let dir = TempDir::new("h2-up");
    let port = free_port();
    // `http2 = "auto"` (the client's protocol) behind /auto/.
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/auto/\" }\ncluster = \"ngauto\"\nprefix_rewrite = \"/\"\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"ng\"\n";
    let r = Remora::start(
        &config(
            port,
            "auto",
            &[("ng", ng.addr, "true"), ("ngauto", ng.addr, "\"auto\"")],
            routes,
        ),
        &["--cores", "1"],
    );
    let got = curl(&dir, &url(port, "/auto/nginx/seen"), &[]);
    assert_eq!(got.status, 200);
    let seen = String::from_utf8_lossy(&got.body);
    assert!(seen.starts_with("proto=HTTP/2.0 "), "{seen}");
    let got = curl(
        &dir,
        &url(port, "/nginx/seen"),
        &[
            "-H",
            "cookie: a=1",
            "-H",
            "cookie: b=2",
            "-H",
            "x-forwarded-for: 10.1.2.3",
        ],
    );
    assert_eq!(got.status, 200);
    let seen = String::from_utf8(got.body).unwrap();
    assert!(seen.contains("proto=HTTP/2.0 "), "{seen}");
    assert!(seen.contains("host=127.0.0.1 "), "{seen}");
    assert!(seen.contains("xff=10.1.2.3, 127.0.0.1 "), "{seen}");
    let rid = seen
        .split("rid=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(rid.len(), 36, "{seen}");
    assert!(seen.ends_with("cookie=a=1; b=2"), "{seen}");

    let (ok, bad, twos) = h2load(&["-n", "400", "-c", "4", "-m", "20", &url(port, "/small.txt")]);
    assert_eq!((ok, bad, twos), (400, 0, 400));
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_http2"), 6);
    assert_eq!(totals.get("downstream_rq_http2"), 402);
    // Multiplexed: far fewer upstream connections than streams.
    let up = totals.get("upstream_cx_http2_total");
    assert!((1..=20).contains(&up), "upstream_cx_http2_total {up}");
}

/// h2load's multiplexed streams to the HTTP/1 backend (each stream its own
/// pooled HTTP/1 request), on an `auto` listener.
#[test]
fn h2load_to_an_http1_upstream() {
    let a = Backend::start("a");
    let port = free_port();
    let r = Remora::start(
        &config(port, "auto", &[("a", a.addr, "")], &catch_all("a")),
        &["--cores", "1"],
    );
    let (ok, bad, twos) = h2load(&["-n", "200", "-c", "2", "-m", "10", &url(port, "/load")]);
    assert_eq!((ok, bad, twos), (200, 0, 200));
    assert_eq!(a.count(), 200);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_rq_http2"), 200);
}

/// A retry policy, the route timeout and local replies for HTTP/2 clients:
/// 5xx retried, 504 on a slow upstream, 404 with no route, 429 over the
/// rate limit, 413 over the body limit (declared and streamed); each in
/// the access log with protocol HTTP/2 and its response flag.
#[test]
fn retries_timeouts_and_local_replies() {
    let a = Backend::start("a");
    let dir = TempDir::new("h2-local");
    let log = dir.0.join("access.log");
    let port = free_port();
    let routes = r#"
[[virtual_host]]
name = "all"
domains = ["svc"]
[[virtual_host.route]]
match = { prefix = "/fail/" }
cluster = "a"
retry = { retry_on = ["5xx"], num_retries = 3, backoff_base = "1ms" }
[[virtual_host.route]]
match = { prefix = "/sleep/" }
cluster = "a"
timeout = "300ms"
[[virtual_host.route]]
match = { prefix = "/limited" }
cluster = "a"
rate_limit = { tokens = 1, fill_interval = "1h", tokens_per_fill = 1 }
[[virtual_host.route]]
match = { prefix = "/" }
cluster = "a"
max_request_body_bytes = 1000
"#;
    let cfg = config(port, "http", &[("a", a.addr, "")], routes)
        + &format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\n",
            log.display()
        );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    let svc = ["-H", "host: svc"];
    let got = curl(&dir, &url(port, "/fail/2/h2key"), &svc);
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["path"], "/fail/2/h2key");
    assert_eq!(a.count(), 3);
    // A body within retry_buffer_limit is sent again whole (PUT is
    // idempotent); one over it is not kept, so the 503 is the answer.
    let small = payload(1000, 3);
    let file = dir.0.join("small");
    std::fs::write(&file, &small).unwrap();
    let at = format!("@{}", file.display());
    let got = curl(
        &dir,
        &url(port, "/fail/2/put"),
        &["-H", "host: svc", "-X", "PUT", "--data-binary", &at],
    );
    assert_eq!(got.status, 200);
    let j = got.json();
    assert_eq!(
        (&j["method"], &j["body_len"]),
        (&"PUT".into(), &1000.into()),
        "{j}"
    );
    assert_eq!(j["body_sha"], sha256_hex(&small));
    assert_eq!(a.count(), 6);
    std::fs::write(&file, payload(200 << 10, 4)).unwrap();
    let got = curl(
        &dir,
        &url(port, "/fail/2/putbig"),
        &["-H", "host: svc", "-X", "PUT", "--data-binary", &at],
    );
    assert_eq!(got.status, 503);
    assert_eq!(a.count(), 7);
    let got = curl(&dir, &url(port, "/sleep/20000"), &svc);
    assert_eq!(
        (got.status, &got.body[..]),
        (504, &b"upstream request timeout"[..])
    );
    let got = curl(&dir, &url(port, "/nowhere"), &["-H", "host: other"]);
    assert_eq!(got.status, 404);
    assert_eq!(curl(&dir, &url(port, "/limited"), &svc).status, 200);
    let got = curl(&dir, &url(port, "/limited"), &svc);
    assert_eq!(
        (got.status, &got.body[..]),
        (429, &b"local_rate_limited"[..])
    );
    // Over the body limit, declared (content-length) and streamed (none):
    // 413 while the client is still sending, then RST_STREAM NO_ERROR ends
    // its upload (RFC 9113 §8.1). A raw client, since curl 7.88 takes that
    // reset, when it beats the end of its upload, for an empty reply.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/h2_attack.py");
    let size = (1 << 20).to_string();
    for (path, declared) in [("/up", &["declared"][..]), ("/up2", &[])] {
        let mut args = vec!["early_response", path, "svc", &size];
        args.extend_from_slice(declared);
        let early = common::h2peer::run_peer(script, port, &args);
        assert_eq!(early["status"]["1"], 413, "{path}: {early}");
        assert_eq!(
            early["resets"]["1"], 0,
            "{path}: RST_STREAM NO_ERROR: {early}"
        );
        assert!(early["sent"].as_u64().unwrap() < 1 << 20, "{path}: {early}");
    }
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_rq_too_large"), 2);
    assert_eq!(totals.get("rq_rate_limited"), 1);
    let entries: Vec<Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let find = |path: &str| {
        entries
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("no entry for {path}: {entries:?}"))
    };
    for (path, status, flag) in [
        ("/fail/2/h2key", 200, "-"),
        ("/fail/2/put", 200, "-"),
        ("/fail/2/putbig", 503, "-"),
        ("/sleep/20000", 504, "UT"),
        ("/nowhere", 404, "NR"),
        ("/up", 413, "RTL"),
        ("/up2", 413, "RTL"),
    ] {
        let e = find(path);
        assert_eq!(e["protocol"], "HTTP/2", "{e}");
        assert_eq!(e["response_code"], status, "{e}");
        assert_eq!(e["response_flags"], flag, "{e}");
    }
    assert!(entries
        .iter()
        .any(|e| e["path"] == "/limited" && e["response_flags"] == "RL"));
    assert_eq!(entries.len(), 9, "{entries:?}");
}

/// Prior knowledge on an `auto` listener while HTTP/1 clients use it too:
/// each gets its own protocol back.
#[test]
fn auto_listener_serves_both_versions() {
    let a = Backend::start("a");
    let dir = TempDir::new("h2-auto");
    let port = free_port();
    let r = Remora::start(
        &config(port, "auto", &[("a", a.addr, "")], &catch_all("a")),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    let resp = c.request(&get("/one", "x"));
    assert!(resp.head.starts_with("HTTP/1.1 200"), "{}", resp.head);
    let got = curl(&dir, &url(port, "/two"), &[]);
    assert_eq!((got.status, got.version.as_str()), (200, "2"));
    let resp = c.request(&get("/three", "x"));
    assert_eq!(resp.status, 200);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_http2"), 1);
    assert_eq!(totals.get("downstream_rq_http2"), 1);
    assert_eq!(totals.get("rq_2xx"), 3);
}

/// An HTTP/2 upstream that allows 4 streams per connection
/// (SETTINGS_MAX_CONCURRENT_STREAMS) and 20 requests per connection, then
/// sends GOAWAY: 300 requests, 12 at a time, all answered. A full
/// connection makes Remora open another; the streams a GOAWAY leaves
/// unprocessed are sent again (on another connection), whatever their method.
#[test]
fn upstream_stream_limit_and_goaway() {
    let ng = Nginx::start_with("http2_max_concurrent_streams 4; keepalive_requests 20;");
    ng.file("f", b"ok");
    let port = free_port();
    let r = Remora::start(
        &config(port, "http", &[("ng", ng.addr, "true")], &catch_all("ng")),
        &["--cores", "1"],
    );
    let url = format!("http://127.0.0.1:{port}/f");
    let (ok, failed, ok_2xx) = h2load(&["-n", "200", "-c", "2", "-m", "6", &url]);
    assert_eq!((ok, failed, ok_2xx), (200, 0, 200));
    // POSTs too: unprocessed streams are safe to send again. (nginx answers
    // a POST to a static file with 405: an answer, not a failure here.)
    let (ok, failed, _) = h2load(&[
        "-n",
        "100",
        "-c",
        "2",
        "-m",
        "6",
        "-d",
        "/etc/hostname",
        &url,
    ]);
    assert_eq!(ok + failed, 100);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_5xx"), 0, "{totals:?}");
    // At most 20 requests per connection: at least 15 connections for 300.
    assert!(totals.get("upstream_cx_http2_total") >= 15, "{totals:?}");
}

/// The HTTP/2 side of a discarded upload: DATA the codec received for a
/// stream answered locally before its body was read (a fault delay holds the
/// answer until the client's DATA is in, then the abort answers) counts in
/// the access log's `bytes_received`, though the stream is reset (NO_ERROR)
/// and the data dropped unread.
#[test]
fn unread_request_data_counts_in_the_access_log() {
    let a = Backend::start("a");
    let dir = TempDir::new("h2-unread");
    let log = dir.0.join("access.log");
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\n\
        fault = { delay = \"300ms\", delay_percent = 100.0, abort_status = 503, abort_percent = 100.0 }\n";
    let cfg = config(port, "http", &[("a", a.addr, "")], routes)
        + &format!(
            "[access_log]\npath = \"{}\"\nformat = \"json\"\nfields = [\"response_code\", \"bytes_received\"]\n",
            log.display()
        );
    let r = Remora::start(&cfg, &["--cores", "1"]);
    // The request head and three DATA frames of 10,000 bytes (within the
    // initial windows), in one write, no END_STREAM.
    let script = format!(
        r#"
import socket, h2.connection, h2.events
s = socket.create_connection(("127.0.0.1", {port}))
c = h2.connection.H2Connection()
c.initiate_connection()
c.send_headers(1, [(":method", "POST"), (":path", "/up"), (":scheme", "http"), (":authority", "svc")])
for _ in range(3):
    c.send_data(1, b"x" * 10000)
s.sendall(c.data_to_send())
status = None
while status is None:
    data = s.recv(65536)
    if not data:
        break
    for e in c.receive_data(data):
        if isinstance(e, h2.events.ResponseReceived):
            status = dict(e.headers)[b":status"].decode()
    s.sendall(c.data_to_send())
print(status)
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "503",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    let got: Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(
        got,
        serde_json::json!({"response_code": 503, "bytes_received": 30000}),
        "{text}"
    );
}

/// HPACK's never-indexed mark (RFC 7541 §7.1.3: an intermediary passes a
/// never-indexed field on as such) from an HTTP/2 client to an HTTP/2
/// upstream and back, both the Python `h2` library
/// (tests/l7/h2_never_indexed.py): `authorization` and `x-secret` arrive
/// never indexed, `x-plain` and the fields Remora adds do not; the
/// answer's never-indexed `set-cookie` reaches the client so marked.
#[test]
fn never_indexed_fields_stay_never_indexed_upstream() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/h2_never_indexed.py");
    let (up, up_addr) = python_upstream(script, &["server"]);
    let port = free_port();
    let r = Remora::start(
        &config(port, "http", &[("up", up_addr, "true")], &catch_all("up")),
        &["--cores", "1"],
    );
    let out = Command::new("python3")
        .args([script, "client", &port.to_string()])
        .output()
        .expect("python3");
    drop(up);
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(got["status"], "200", "{got}");
    let seen: Vec<(String, String, bool)> =
        serde_json::from_str(got["body"].as_str().unwrap()).unwrap();
    let mark = |name: &str| {
        seen.iter()
            .find(|f| f.0 == name)
            .unwrap_or_else(|| panic!("{name} not upstream: {seen:?}"))
            .clone()
    };
    assert_eq!(
        mark("authorization"),
        ("authorization".into(), "Bearer s3cret".into(), true)
    );
    assert_eq!(mark("x-secret"), ("x-secret".into(), "hidden".into(), true));
    assert_eq!(mark("x-plain"), ("x-plain".into(), "visible".into(), false));
    // What Remora adds is an ordinary field.
    assert!(!mark("x-request-id").2, "{seen:?}");
    // And the way back: the upstream's never-indexed answer field reaches
    // the client so marked, an ordinary one does not.
    let answer: Vec<(String, String, bool)> =
        serde_json::from_value(got["answer"].clone()).unwrap();
    assert!(
        answer.contains(&("set-cookie".into(), "session=1".into(), true)),
        "{answer:?}"
    );
    assert!(
        answer.contains(&("x-plain-answer".into(), "yes".into(), false)),
        "{answer:?}"
    );
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}

/// An HTTP/2 upstream that breaks the protocol (tests/l7/h2_bad_upstream.py):
/// a malformed answer (no `:status`, an uppercase field name) or DATA before
/// the head resets that stream only, and the client gets a 502; DATA on
/// stream 0 is a connection error, whose streams fail the same way, and the
/// next request opens a new connection. Requests on the same connection in
/// between are answered.
#[test]
fn an_upstream_that_breaks_the_protocol_costs_one_answer() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/h2_bad_upstream.py");
    let (up, up_addr) = python_upstream(script, &[]);
    let port = free_port();
    let r = Remora::start(
        &config(port, "http", &[("up", up_addr, "true")], &catch_all("up")),
        &["--cores", "1"],
    );
    let dir = TempDir::new("h2-bad-upstream");
    let get = |path: &str| curl(&dir, &url(port, path), &[]);
    let ok = get("/ok");
    assert_eq!((ok.status, ok.body.as_slice()), (200, &b"ok"[..]));
    for bad in ["/no-status", "/upper", "/data-first"] {
        assert_eq!(get(bad).status, 502, "{bad}");
        // The connection goes on.
        assert_eq!(get("/ok").status, 200, "after {bad}");
    }
    assert_eq!(get("/break").status, 502);
    assert_eq!(get("/ok").status, 200, "after the connection error");
    drop(up);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("upstream_cx_http2_total"), 2, "{totals:?}");
    assert_eq!(totals.get("rq_5xx"), 4, "{totals:?}");
}

/// HTTP/1 clients of an HTTP/2 cluster (`l7::to_h2`), against the Python
/// `h2` upstream of tests/l7/h2_echo.py, which says what it received: the
/// head restated as RFC 9113 §8.2 asks (`:authority` from Host, names
/// lowercased, connection-specific fields gone, the proxy's fields added), a chunked body decoded
/// into DATA with its trailers as HTTP/2 trailers; and the way back: the
/// answer (no content-length) chunked with its trailers in the last chunk,
/// the route's response operations and the rate-limit fields on it; for an
/// HTTP/1.0 client, the body until close.
#[test]
fn http1_clients_of_an_http2_upstream() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/h2_echo.py");
    let (up, up_addr) = python_upstream(script, &["server"]);
    let port = free_port();
    let routes = "[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"up\"\nresponse_headers = { set = [{ name = \"x-up\", value = \"replaced\" }], add = [{ name = \"x-route\", value = \"r\" }] }\nrate_limit = { tokens = 100, fill_interval = \"1h\", tokens_per_fill = 100, response_headers = true }\n";
    let r = Remora::start(
        &config(port, "http", &[("up", up_addr, "true")], routes),
        &["--cores", "1"],
    );
    let mut c = Client::new(port);
    c.w.write_all(
        b"POST /echo?q=1 HTTP/1.1\r\nHost: svc.example:8080\r\nX-Mixed-Case: V\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nX-Req-Trailer: rt\r\n\r\n",
    )
    .unwrap();
    let resp = c.response();
    assert_eq!(resp.status, 200, "{}", resp.head);
    let head = resp.head.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(head.contains("x-up: replaced\r\n"), "{head}");
    assert!(head.contains("x-route: r\r\n"), "{head}");
    assert!(head.contains("x-ratelimit-limit: 100\r\n"), "{head}");
    assert_eq!(head.matches("x-ratelimit-limit").count(), 1, "{head}");
    let seen = resp.json();
    assert_eq!(seen["pseudo"][":method"], "POST", "{seen}");
    assert_eq!(seen["pseudo"][":authority"], "svc.example:8080", "{seen}");
    assert_eq!(seen["pseudo"][":path"], "/echo?q=1", "{seen}");
    assert_eq!(seen["pseudo"][":scheme"], "http", "{seen}");
    let fields: Vec<(String, String)> = serde_json::from_value(seen["fields"].clone()).unwrap();
    let field = |n: &str| fields.iter().find(|f| f.0 == n).map(|f| f.1.as_str());
    assert_eq!(field("x-mixed-case"), Some("V"), "{fields:?}");
    // TE is hop-by-hop: the HTTP/1 rewrite drops it before the restating.
    for gone in [
        "host",
        "keep-alive",
        "transfer-encoding",
        "connection",
        "te",
    ] {
        assert_eq!(field(gone), None, "{gone}: {fields:?}");
    }
    assert!(
        field("x-request-id").is_some_and(|v| v.len() == 36),
        "{fields:?}"
    );
    assert_eq!(seen["body"], "hello world", "{seen}");
    assert_eq!(
        seen["trailers"],
        serde_json::json!([["x-req-trailer", "rt"]]),
        "{seen}"
    );

    // The answer's trailers, in the last chunk (the client reads them raw).
    let mut c = Client::new(port);
    c.w.write_all(b"GET /t HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let raw = String::from_utf8(c.rest()).unwrap();
    assert!(
        raw.ends_with("\r\n0\r\nx-answer-trailer: t1\r\n\r\n"),
        "{raw}"
    );
    assert!(
        raw.to_ascii_lowercase().contains("connection: close\r\n"),
        "{raw}"
    );

    // HTTP/1.0: no Host (no :authority), the body until close.
    let mut c = Client::new(port);
    c.w.write_all(b"GET /old HTTP/1.0\r\n\r\n").unwrap();
    let raw = String::from_utf8(c.rest()).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{raw}"
    );
    let seen: Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["pseudo"].get(":authority"), None, "{seen}");
    assert_eq!(seen["pseudo"][":path"], "/old", "{seen}");

    drop(up);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("upstream_cx_http2_total"), 1);
}
