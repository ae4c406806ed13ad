//! HTTP/2 abuse (issue 12, "Limits" and "Bad input"): scripted attackers
//! (tests/l7/h2_attack.py, raw frames) against `remora run --cores 1` with an
//! HTTP/1 backend, while a well-behaved client on the same core (curl over
//! HTTP/2 prior knowledge and over HTTP/1.1, in a loop) must be served every
//! time. Each attack must end the way RFC 9113 §5.4 says (GOAWAY for a
//! connection error, RST_STREAM for a stream error), be counted, and leave
//! memory bounded; the proxy must still serve afterwards. Behaviour only:
//! no assertion on timing (the machine is shared).

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::Value;

use common::h2peer::*;
use common::http::Backend;
use common::*;

/// One attack at a time: the victim has one core, and two attacks at once
/// would each be the other's noise.
static SERIAL: Mutex<()> = Mutex::new(());

// RFC 9113 §7 error codes.
const PROTOCOL_ERROR: u64 = 1;
const FLOW_CONTROL_ERROR: u64 = 3;
const FRAME_SIZE_ERROR: u64 = 6;
const REFUSED_STREAM: u64 = 7;
const CANCEL: u64 = 8;
const COMPRESSION_ERROR: u64 = 9;
const ENHANCE_YOUR_CALM: u64 = 11;

struct Victim {
    remora: Remora,
    backend: Backend,
    port: u16,
}

/// The proxy on one core: an HTTP listener (HTTP/1 and prior-knowledge
/// HTTP/2) routing everything to one HTTP/1 backend; short stream idle and
/// idle timeouts so that stalls end within the test.
fn victim(extra: &str) -> Victim {
    let backend = Backend::start("a");
    let port = free_port();
    let toml = proxy_toml(port, backend.addr, extra, "", "");
    let remora = Remora::start(&toml, &["--cores", "1"]);
    let v = Victim {
        remora,
        backend,
        port,
    };
    v.assert_serves();
    v
}

impl Victim {
    /// Runs one attacker to its end and returns what it saw.
    fn attack(&self, args: &[&str]) -> Value {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/h2_attack.py");
        run_peer(script, self.port, args)
    }

    /// The proxy is alive and answers one request over each protocol.
    fn assert_serves(&self) {
        assert!(
            self.remora.child_alive(),
            "the proxy is gone: {:?}",
            self.remora.log
        );
        for proto in ["--http2-prior-knowledge", "--http1.1"] {
            assert_eq!(curl(self.port, proto), "200", "{proto} after the attack");
        }
    }

    fn rss_kib(&self) -> u64 {
        rss_kib(self.remora.pid())
    }

    /// Stops the proxy (cleanly: exit 0) and returns its counters.
    fn stop(self) -> Counters {
        let (code, totals) = self.remora.stop();
        assert_eq!(code, 0);
        totals
    }
}

trait Alive {
    fn child_alive(&self) -> bool;
}

impl Alive for Remora {
    fn child_alive(&self) -> bool {
        // SAFETY: kill(pid, 0) only checks that the process exists.
        unsafe { libc::kill(self.pid() as i32, 0) == 0 }
    }
}

/// One request with curl; its status code ("000" when it failed).
fn curl(port: u16, proto: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "60",
        ])
        .arg(proto)
        .arg(format!("http://127.0.0.1:{port}/bystander"))
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The well-behaved client: HTTP/2 and HTTP/1 requests in turn, on new
/// connections, until told to stop; every one must get a 200.
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

fn bystander(port: u16) -> Bystander {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = thread::spawn(move || {
        let mut seen = Vec::new();
        loop {
            for proto in ["--http2-prior-knowledge", "--http1.1"] {
                seen.push(format!("{proto} {}", curl(port, proto)));
            }
            if flag.load(Ordering::Relaxed) {
                return seen;
            }
        }
    });
    Bystander { stop, thread }
}

impl Bystander {
    /// Stops it (after the round in progress) and checks it was served.
    fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self.thread.join().unwrap();
        let failed: Vec<_> = seen.iter().filter(|s| !s.ends_with(" 200")).collect();
        assert!(
            failed.is_empty(),
            "the well-behaved client was not served: {failed:?} of {} requests",
            seen.len()
        );
    }
}

/// Runs `attacks` while a bystander is served; then the proxy still serves.
fn under_attack<T>(v: &Victim, attacks: impl FnOnce() -> T) -> T {
    let b = bystander(v.port);
    let r = attacks();
    b.finish();
    v.assert_serves();
    r
}

#[test]
fn rapid_reset_ends_in_enhance_your_calm() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = victim("");
    // The attacker sends until it sees the GOAWAY, so how far it gets is a
    // race between Python and the proxy: the burst is given room enough
    // (20,000 streams, where the limit is 500) that only a proxy that does
    // not cut it off lets it finish.
    let (burst, paced) = under_attack(&v, || {
        (
            // Everything at once: streams reset before the proxy accepts them.
            v.attack(&["rapid_reset", "20000", "burst"]),
            // In batches: accepted streams cancelled before their answer.
            v.attack(&["rapid_reset", "5000", "paced"]),
        )
    });
    for (r, n) in [(&burst, 20_000), (&paced, 5000)] {
        assert_eq!(goaway(r), Some(ENHANCE_YOUR_CALM), "{r}");
        assert!(r["streams"].as_u64().unwrap() < n, "{r}");
    }
    // Bounded work behind the proxy: a fraction of the streams opened.
    let seen = v.backend.count();
    assert!(seen < 2000, "backend saw {seen} requests");
    let c = v.stop();
    assert!(c.get("http2_rx_reset") > 0);
    assert_eq!(
        c.get("http2_premature_reset_closed") + c.get("http2_rx_messaging_error"),
        2
    );
}

#[test]
fn rapid_reset_guard_counts_premature_resets() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // A low limit keeps the paced attack short; the guard is the same.
    let v = victim("[http2]\nmax_premature_resets = 50");
    let r = under_attack(&v, || v.attack(&["rapid_reset", "5000", "paced"]));
    assert_eq!(goaway(&r), Some(ENHANCE_YOUR_CALM), "{r}");
    let seen = v.backend.count();
    assert!(seen < 1000, "backend saw {seen} requests");
    let c = v.stop();
    assert!(c.get("http2_rx_reset") > 0);
    assert_eq!(
        c.get("http2_premature_reset_closed") + c.get("http2_rx_messaging_error"),
        1
    );
}

#[test]
fn continuation_flood_is_closed_with_memory_bounded() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = victim("");
    let before = v.rss_kib();
    let results = under_attack(&v, || {
        // Small header fields, empty frames, full-size frames: the block never ends.
        ["100", "0", "16000"].map(|size| v.attack(&["continuation", size]))
    });
    for r in &results {
        assert_eq!(goaway(r), Some(ENHANCE_YOUR_CALM), "{r}");
    }
    let grown = v.rss_kib().saturating_sub(before);
    assert!(grown < 32 << 10, "RSS grew by {grown} KiB");
    let c = v.stop();
    assert_eq!(c.get("http2_rx_messaging_error"), 3);
}

#[test]
fn hpack_header_list_and_table_abuse() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = victim("");
    let before = v.rss_kib();
    let (over, way_over, update, index, huge) = under_attack(&v, || {
        (
            v.attack(&["big_headers", "70000"]),
            v.attack(&["big_headers", "1000000"]),
            v.attack(&["hpack_table", "update"]),
            v.attack(&["hpack_table", "index"]),
            v.attack(&["hpack_table", "huge_setting"]),
        )
    });
    // Over max_header_list_size (60 KiB decoded): 431 on that stream (h2
    // resets it, REFUSED_STREAM, after the 431 head); the connection goes on.
    assert_eq!(over["status"]["1"], 431, "{over}");
    assert_eq!(over["after"], 200, "{over}");
    assert_eq!(goaway(&over), None, "{over}");
    // Far over it, across CONTINUATION frames: the connection is closed.
    assert_eq!(goaway(&way_over), Some(ENHANCE_YOUR_CALM), "{way_over}");
    // A table size update above the advertised 4096, an index past the
    // table: decoding errors, connection errors COMPRESSION_ERROR (RFC 9113
    // §4.3; the h2 crate, downstream until session 11, sent PROTOCOL_ERROR).
    for r in [&update, &index] {
        assert_eq!(goaway(r), Some(COMPRESSION_ERROR), "{r}");
    }
    // A 4 GiB table offered for the proxy's encoder: ignored past the
    // encoder's own cap (4 KiB); 200 requests served, memory flat.
    assert_eq!(huge["ok"], 200, "{huge}");
    let grown = v.rss_kib().saturating_sub(before);
    assert!(grown < 32 << 10, "RSS grew by {grown} KiB");
    let c = v.stop();
    assert!(c.get("http2_rx_messaging_error") >= 3);
}

#[test]
fn control_frame_floods_from_a_client_that_never_reads() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = victim("");
    let before = v.rss_kib();
    let (settings, ping, window, empty, overflow) = under_attack(&v, || {
        (
            v.attack(&["flood", "settings", "1000000"]),
            v.attack(&["flood", "ping", "1000000"]),
            v.attack(&["flood", "window_update", "1000000"]),
            v.attack(&["flood", "empty_data", "200000"]),
            v.attack(&["window_overflow"]),
        )
    });
    // Each ACK waits for the one before to be written: a client that never
    // reads is read no further once its socket is full (backpressure, no
    // queue). And the connection, idle, is closed after idle_timeout even
    // though the client never acknowledges the GOAWAY.
    for r in [&settings, &ping, &window] {
        assert!(r["closed_later"] == true || r["gone"] == true, "{r}");
    }
    // Empty DATA frames: h2's own limit. (The GOAWAY may be lost to the
    // reset the kernel sends when the proxy closes with frames unread: then
    // the attacker's next write fails, and the counter below shows it.)
    assert!(
        goaway(&empty) == Some(ENHANCE_YOUR_CALM) || empty["gone"] == true,
        "{empty}"
    );
    assert_eq!(goaway(&overflow), Some(FLOW_CONTROL_ERROR), "{overflow}");
    let grown = v.rss_kib().saturating_sub(before);
    assert!(grown < 32 << 10, "RSS grew by {grown} KiB");
    let c = v.stop();
    assert!(c.get("http2_rx_messaging_error") >= 2);
}

#[test]
fn zero_window_reader_is_reset_after_stream_idle_timeout() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = victim("");
    let before = v.rss_kib();
    let (window0, noread) = under_attack(&v, || {
        let window0 = v.attack(&["zero_window", "268435456", "settings"]);
        // Never reads the socket: the proxy is looked at while it holds.
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/l7/h2_attack.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(v.port.to_string())
            .args(["zero_window", "268435456", "noread", "8"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        thread::sleep(Duration::from_secs(4));
        let grown = v.rss_kib().saturating_sub(before);
        assert!(grown < 32 << 10, "RSS grew by {grown} KiB while stalled");
        let out = child.wait_with_output().unwrap();
        let noread: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        (window0, noread)
    });
    // The head goes out (it needs no window), the body cannot: reset.
    assert_eq!(window0["status"]["1"], 200, "{window0}");
    assert_eq!(reset(&window0, 1), Some(CANCEL), "{window0}");
    // What the non-reader finds in its socket: a bounded part of the 256 MiB
    // and the reset.
    assert!(noread["received"].as_u64().unwrap() < 32 << 20, "{noread}");
    assert_eq!(noread["reset_seen"], true, "{noread}");
    let c = v.stop();
    assert_eq!(c.get("http2_stream_idle_timeout"), 2);
    assert!(c.get("http2_tx_reset") >= 2);
}

#[test]
fn invalid_frames_get_rfc_9113_error_codes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = victim("");
    let attacks = [
        ("data_stream_0", Some(PROTOCOL_ERROR), None),
        ("headers_even", Some(PROTOCOL_ERROR), None),
        ("frame_too_large", Some(FRAME_SIZE_ERROR), None),
        ("stream_id_backwards", Some(PROTOCOL_ERROR), None),
        ("first_frame_not_settings", Some(PROTOCOL_ERROR), None),
        // Stream errors (malformed requests: connection-specific fields and
        // a TE other than "trailers", RFC 9113 §8.2.2):
        // RST_STREAM, and the connection serves the next request.
        ("connection_header", None, Some(PROTOCOL_ERROR)),
        ("te_gzip", None, Some(PROTOCOL_ERROR)),
    ];
    let (results, bad_preface, upper) = under_attack(&v, || {
        (
            attacks.map(|(kind, _, _)| v.attack(&["invalid", kind])),
            v.attack(&["invalid", "bad_preface"]),
            v.attack(&["invalid", "uppercase_header"]),
        )
    });
    let mut connection_errors = 0;
    for ((kind, conn, stream), r) in attacks.iter().zip(&results) {
        assert_eq!(goaway(r), *conn, "{kind}: {r}");
        if let Some(code) = stream {
            assert_eq!(reset(r, 1), Some(*code), "{kind}: {r}");
            assert_eq!(r["after"], 200, "{kind}: {r}");
        } else {
            connection_errors += 1;
        }
    }
    // Not the preface: it is no HTTP/2, and as HTTP/1 a bad request.
    assert!(
        bad_preface["reply"]
            .as_str()
            .unwrap()
            .starts_with("HTTP/1.1 400"),
        "{bad_preface}"
    );
    // An uppercase field name is malformed (§8.2.1); h2 makes it a
    // connection error, which RFC 9113 §5.4.1 allows for any stream error.
    assert!(
        goaway(&upper) == Some(PROTOCOL_ERROR) || reset(&upper, 1) == Some(PROTOCOL_ERROR),
        "{upper}"
    );
    let c = v.stop();
    assert!(c.get("http2_rx_messaging_error") >= connection_errors);
}

#[test]
fn the_stream_over_max_concurrent_streams_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let v = victim("");
    let r = under_attack(&v, || v.attack(&["max_streams", "100"]));
    assert_eq!(
        reset(&r, r["extra"].as_u64().unwrap()),
        Some(REFUSED_STREAM),
        "{r}"
    );
    assert_eq!(r["ok"], 100, "{r}");
    assert_eq!(goaway(&r), None, "{r}");
    v.stop();
}
