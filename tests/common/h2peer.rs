//! What the raw-frame HTTP/2 tests share (tests/h2_abuse.rs,
//! tests/h2_conformance.rs): the proxy under test's config, its RSS, the
//! Python peer scripts' JSON verdicts and how to read them.

use std::net::SocketAddr;
use std::process::Command;

use serde_json::Value;

use super::TEST_PREAMBLE;

/// One core's proxy config for the raw-frame tests: an HTTP listener on
/// `port` (HTTP/1 and prior-knowledge HTTP/2) routing everything to cluster
/// `a` at `backend`, short stream idle and idle timeouts so that stalls end
/// within a test. `http_extra` goes into `[http]`; `clusters` (whole
/// `[[cluster]]` tables) and `routes` (`[[virtual_host.route]]` tables,
/// matched before the catch-all) add to the rest.
pub fn proxy_toml(
    port: u16,
    backend: SocketAddr,
    http_extra: &str,
    clusters: &str,
    routes: &str,
) -> String {
    format!(
        r#"{TEST_PREAMBLE}[http]
stream_idle_timeout = "1s"
idle_timeout = "3s"
{http_extra}
[[listener]]
name = "h"
address = "127.0.0.1:{port}"
cluster = "a"
protocol = "http"
[[cluster]]
name = "a"
endpoints = ["{backend}"]
connect_timeout = "2s"
{clusters}
[[virtual_host]]
name = "all"
domains = ["*"]
{routes}
[[virtual_host.route]]
match = {{ prefix = "/" }}
cluster = "a"
"#
    )
}

/// A process's resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Runs a peer script against `port` to its end: the JSON object on its
/// last line. The script failing fails the test, with its output.
pub fn run_peer(script: &str, port: u16, args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{script} {args:?}: {e}: {stdout}"))
}

/// The GOAWAY error code a peer saw, if any.
pub fn goaway(r: &Value) -> Option<u64> {
    r["goaway"].as_u64()
}

/// The RST_STREAM error code a peer saw on `stream`, if any.
pub fn reset(r: &Value, stream: u64) -> Option<u64> {
    r["resets"][stream.to_string()].as_u64()
}
