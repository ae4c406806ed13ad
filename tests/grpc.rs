//! gRPC through the built binary, with Python grpcio at both ends
//! (tests/h2/grpc_server.py and grpc_client.py: generic handlers, raw bytes
//! as messages, no generated code) and a cluster with `http2 = true`: the
//! four call kinds, large messages, deadlines, statuses and trailing
//! metadata, retries on gRPC status, and the proxy's local replies as
//! trailers-only answers with the right grpc-status.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/grpc_server.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/h2/grpc_client.py");

/// The grpcio test server (killed on drop; it also ends when its stdin,
/// held here, closes).
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start() -> Server {
        let mut child = Command::new("python3")
            .arg(SERVER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .strip_prefix("ready ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("grpc_server.py said {line:?} (is grpcio installed?)"));
        Server { child, port }
    }

    /// Calls and cancellations the server saw for `key` (asked directly).
    fn count(&self, key: &str) -> Value {
        let r = client(self.port, &["call", "/test.T/Count", "0", key]);
        assert_eq!(r["code"], "OK", "{r}");
        serde_json::from_str(r["reply"].as_str().unwrap()).unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One grpc_client.py command against 127.0.0.1:`port`; its JSON report.
fn client(port: u16, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(CLIENT)
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .output()
        .expect("python3");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "grpc_client.py {args:?}: {e}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// An outbound HTTP listener (`port`) and an inbound one (`inbound`, with a
/// DENY policy for paths under /denied/) to the gRPC server (`http2 =
/// true`); a cluster nobody listens for; routes as below.
fn config(port: u16, inbound: u16, server: u16, dead: u16) -> String {
    format!(
        r#"{TEST_PREAMBLE}[[listener]]
name = "out"
address = "127.0.0.1:{port}"
cluster = "grpc"
protocol = "http"
[[listener]]
name = "in"
address = "127.0.0.1:{inbound}"
cluster = "grpc"
protocol = "http"
direction = "inbound"
[[cluster]]
name = "grpc"
endpoints = ["127.0.0.1:{server}"]
http2 = true
[[cluster]]
name = "dead"
endpoints = ["127.0.0.1:{dead}"]
connect_timeout = "2s"
http2 = true
[[authorization_policy]]
name = "no-denied"
action = "DENY"
rules = [{{ to = [{{ operation = {{ paths = ["/denied/*"] }} }}] }}]
[[virtual_host]]
name = "all"
domains = ["*"]
[[virtual_host.route]]
match = {{ prefix = "/test.T/Flaky" }}
cluster = "grpc"
retry = {{ retry_on = ["unavailable"], num_retries = 3, backoff_base = "1ms" }}
[[virtual_host.route]]
match = {{ prefix = "/noretry/" }}
cluster = "grpc"
prefix_rewrite = "/test.T/"
[[virtual_host.route]]
match = {{ prefix = "/timeout/" }}
cluster = "grpc"
prefix_rewrite = "/test.T/"
timeout = "300ms"
[[virtual_host.route]]
match = {{ prefix = "/long/" }}
cluster = "grpc"
prefix_rewrite = "/test.T/"
timeout = "60s"
[[virtual_host.route]]
match = {{ prefix = "/limited/" }}
cluster = "grpc"
prefix_rewrite = "/test.T/"
rate_limit = {{ tokens = 1, fill_interval = "1h", tokens_per_fill = 1 }}
[[virtual_host.route]]
match = {{ prefix = "/dead/" }}
cluster = "dead"
[[virtual_host.route]]
match = {{ prefix = "/denied/" }}
cluster = "grpc"
prefix_rewrite = "/test.T/"
[[virtual_host.route]]
match = {{ prefix = "/test.T/" }}
cluster = "grpc"
"#
    )
}

struct Setup {
    server: Server,
    _dead: socket2::Socket,
    remora: Remora,
    port: u16,
    inbound: u16,
}

fn setup() -> Setup {
    let server = Server::start();
    let (port, inbound) = (free_port(), free_port());
    let (dead, _dead) = refusing_addr();
    let cfg = config(port, inbound, server.port, dead.port());
    let remora = Remora::start(&cfg, &["--cores", "1"]);
    Setup {
        server,
        _dead,
        remora,
        port,
        inbound,
    }
}

fn ok(r: &Value) {
    assert_eq!(r["code"], "OK", "{r}");
}

/// Unary, client-streaming, server-streaming and bidirectional calls; the
/// bidirectional one sends each ping only after the pong to the one before
/// it arrived, so it finishes only if both directions stream at once.
#[test]
fn four_call_kinds() {
    let s = setup();
    let r = client(s.port, &["echo", "1000"]);
    ok(&r);
    assert_eq!(r["equal"], true);
    let r = client(s.port, &["sum", "50", "3000"]);
    ok(&r);
    assert_eq!(r["reply"]["count"], 50);
    assert_eq!(r["reply"]["sha"], r["sha"]);
    let r = client(s.port, &["repeat", "200", "1000"]);
    ok(&r);
    assert_eq!(
        (&r["count"], &r["correct"]),
        (&200.into(), &true.into()),
        "{r}"
    );
    let r = client(s.port, &["chat", "20"]);
    ok(&r);
    let pongs: Vec<String> = (0..20).map(|i| format!("pong:ping {i}")).collect();
    assert_eq!(r["pongs"], serde_json::json!(pongs));
    let (code, totals) = s.remora.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_rq_http2"), 4);
    assert_eq!(totals.get("rq_2xx"), 4);
    assert!(totals.get("upstream_cx_http2_total") >= 1);
}

/// 8 MiB messages both ways (the peers' limits raised to 64 MiB).
#[test]
fn large_messages() {
    let s = setup();
    let r = client(s.port, &["echo", &(8 << 20).to_string()]);
    ok(&r);
    assert_eq!(
        (&r["equal"], &r["len"]),
        (&true.into(), &(8u64 << 20).into()),
        "{r}"
    );
    let r = client(s.port, &["sum", "4", &(4 << 20).to_string()]);
    ok(&r);
    assert_eq!(r["reply"]["sha"], r["sha"]);
    let r = client(s.port, &["repeat", "3", &(8 << 20).to_string()]);
    ok(&r);
    assert_eq!(
        (&r["count"], &r["correct"]),
        (&3.into(), &true.into()),
        "{r}"
    );
}

/// The client's metadata reaches the server, with X-Request-Id and
/// X-Forwarded-For added.
#[test]
fn request_metadata_reaches_the_server() {
    let s = setup();
    let r = client(s.port, &["meta"]);
    ok(&r);
    let md = &r["reply"]["metadata"];
    assert_eq!(md["x-custom"], serde_json::json!(["v1"]), "{md}");
    assert_eq!(
        md["x-forwarded-for"],
        serde_json::json!(["127.0.0.1"]),
        "{md}"
    );
    assert_eq!(
        md["x-request-id"][0].as_str().map(str::len),
        Some(36),
        "{md}"
    );
}

/// A server's status, message and trailing metadata reach the client.
#[test]
fn status_message_and_trailing_metadata_pass_through() {
    let s = setup();
    let r = client(s.port, &["call", "/test.T/Fail", "0", ""]);
    assert_eq!(r["code"], "NOT_FOUND", "{r}");
    assert_eq!(r["details"], "no such thing");
    assert_eq!(r["trailing"]["x-detail"], "why");
}

/// `retry_on = ["unavailable"]`: a call failing twice with UNAVAILABLE
/// succeeds on the third attempt; without a retry policy the client gets
/// the first UNAVAILABLE.
#[test]
fn retries_on_grpc_status() {
    let s = setup();
    let r = client(s.port, &["call", "/test.T/Flaky", "0", "2 retried"]);
    ok(&r);
    assert_eq!(r["reply"], "3");
    assert_eq!(s.server.count("retried")["calls"], 3);
    let r = client(s.port, &["call", "/noretry/Flaky", "0", "2 once"]);
    assert_eq!(r["code"], "UNAVAILABLE", "{r}");
    assert_eq!(r["details"], "failing on purpose");
    assert_eq!(s.server.count("once")["calls"], 1);
}

/// A client deadline shorter than the server's work: DEADLINE_EXCEEDED
/// for the client, and the cancellation reaches the server. grpc-timeout
/// caps a longer route timeout: a client that sends grpc-timeout (curl
/// here, which does not enforce it itself) gets the proxy's
/// DEADLINE_EXCEEDED.
#[test]
fn deadlines() {
    let s = setup();
    let r = client(s.port, &["call", "/test.T/Sleep", "0.5", "30000 dl"]);
    assert_eq!(r["code"], "DEADLINE_EXCEEDED", "{r}");
    let deadline = Instant::now() + Duration::from_secs(25);
    while s.server.count("dl")["cancelled"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the server never saw the cancellation"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // A gRPC frame: uncompressed, 4-byte length, the message.
    let msg = b"30000 capped";
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(msg);
    let dir = TempDir::new("grpc-timeout");
    let file = dir.0.join("frame");
    std::fs::write(&file, &frame).unwrap();
    let out = Command::new("curl")
        .args(["-sS", "-i", "--http2-prior-knowledge", "--max-time", "60"])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", "grpc-timeout: 300m", "--data-binary"])
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{}/long/Sleep", s.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(text.contains("grpc-status: 4\r\n"), "{text}");
}

/// The proxy's own answers to gRPC calls are trailers-only responses
/// (HTTP 200, grpc-status in the only HEADERS frame) with the status
/// Envoy gives them: no route 12 UNIMPLEMENTED, no reachable endpoint 14
/// UNAVAILABLE, rate limited 8 RESOURCE_EXHAUSTED, denied by an
/// authorization policy (inbound listener) 7 PERMISSION_DENIED, route
/// timeout 4 DEADLINE_EXCEEDED.
#[test]
fn local_replies_are_trailers_only_with_grpc_status() {
    let s = setup();
    for (port, path, body, code) in [
        (s.port, "/other.S/Nope", "", "UNIMPLEMENTED"),
        (s.port, "/dead/Echo", "x", "UNAVAILABLE"),
        (s.port, "/timeout/Sleep", "30000 t", "DEADLINE_EXCEEDED"),
        (s.inbound, "/denied/Echo", "x", "PERMISSION_DENIED"),
    ] {
        let r = client(port, &["call", path, "0", body]);
        assert_eq!(r["code"], code, "{path}: {r}");
    }
    // The same listener lets other paths through.
    let r = client(s.inbound, &["call", "/test.T/Echo", "0", "in"]);
    ok(&r);
    assert_eq!(r["reply"], "in");
    ok(&client(s.port, &["call", "/limited/Echo", "0", "first"]));
    let r = client(s.port, &["call", "/limited/Echo", "0", "second"]);
    assert_eq!(r["code"], "RESOURCE_EXHAUSTED", "{r}");

    // Trailers-only, seen on the wire: one HEADERS frame with END_STREAM.
    let out = Command::new("nghttp")
        .args([
            "-v",
            "-t",
            "60",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ])
        .arg(format!("http://127.0.0.1:{}/other.S/Nope", s.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(") :status: 200"), "{text}");
    assert!(text.contains(") grpc-status: 12"), "{text}");
    assert!(!text.contains("recv DATA frame"), "{text}");
    let (code, totals) = s.remora.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("rq_rate_limited"), 1);
    assert_eq!(totals.get("rq_rbac_denied"), 1);
}
