//! Admin API, Prometheus, readiness, hot reload and drain, against the built
//! binary with real clients (curl, wrk, Python's prometheus_client parser).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

/// A raw HTTP/1.1 request to the admin side; returns (status, body).
fn http(port: u16, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[derive(Clone, Copy)]
struct Ports {
    admin: u16,
    prom: u16,
    ready: u16,
    listener: u16,
}

fn config(p: &Ports, backend: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "[runtime]\ndrain_timeout = \"3s\"\n{extra}\n[admin]\naddress = \"127.0.0.1:{}\"\nprometheus_address = \"127.0.0.1:{}\"\nreadiness_address = \"127.0.0.1:{}\"\n[capture]\nenabled = false\n[[cluster]]\nname = \"backend\"\nendpoints = [\"{backend}\"]\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:{}\"\ncluster = \"backend\"\n",
        p.admin, p.prom, p.ready, p.listener
    )
}

fn ports() -> Ports {
    Ports {
        admin: free_port(),
        prom: free_port(),
        ready: free_port(),
        listener: free_port(),
    }
}

#[test]
fn admin_endpoints_report_real_state() {
    let echo = echo_server();
    let p = ports();
    let r = Remora::start(&config(&p, echo, ""), &["--cores", "2"]);
    // Traffic: 3 connections, 5 bytes each way.
    for _ in 0..3 {
        let mut s = connect(p.listener);
        s.write_all(b"hello").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
    }
    // Connections close asynchronously; wait until the proxy has seen all three end.
    let mut stats = String::new();
    for _ in 0..200 {
        stats = http(p.admin, "GET", "/stats").1;
        if stats.contains("downstream_cx_active: 0") && stats.contains("downstream_cx_total: 3") {
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(stats.contains("downstream_cx_total: 3"), "{stats}");
    assert!(stats.contains("bytes_upstream: 15"), "{stats}");
    assert!(stats.contains("bytes_downstream: 15"), "{stats}");
    assert!(stats.contains("server.concurrency: 2"), "{stats}");

    let (code, body) = http(p.admin, "GET", "/ready");
    assert_eq!(code, 200);
    assert!(body.starts_with("LIVE\nstartup_ms: "), "{body}");
    let (code, body) = http(p.ready, "GET", "/healthz/ready");
    assert_eq!((code, body.lines().next()), (200, Some("LIVE")));

    let (code, dump) = http(p.admin, "GET", "/config_dump");
    assert_eq!(code, 200);
    assert!(dump.contains("\"version\": 1"), "{dump}");
    assert!(
        dump.contains(&format!("\"address\": \"127.0.0.1:{}\"", p.listener)),
        "{dump}"
    );

    let (_, clusters) = http(p.admin, "GET", "/clusters");
    assert!(
        clusters.contains(&format!("backend::{echo}::cx_total::3")),
        "{clusters}"
    );

    // Log level changes at run time.
    let (code, _) = http(p.admin, "POST", "/logging?level=debug");
    assert_eq!(code, 200);
    assert!(http(p.admin, "GET", "/logging").1.contains("debug"));
    assert_eq!(http(p.admin, "POST", "/logging?level=no[such").0, 400);
    assert_eq!(http(p.admin, "GET", "/nope").0, 404);
    assert_eq!(http(p.admin, "GET", "/quitquitquit").0, 405);
    r.stop();
}

/// The Prometheus output parses with the reference Python parser and its
/// counters match the traffic.
#[test]
fn prometheus_text_parses_and_matches_traffic() {
    let have_client = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        have_client,
        "python3 prometheus_client missing: tests/run installs it (pip install prometheus_client)"
    );
    let echo = echo_server();
    let p = ports();
    let r = Remora::start(&config(&p, echo, ""), &["--cores", "2"]);
    for _ in 0..4 {
        let mut s = connect(p.listener);
        s.write_all(b"abc").unwrap();
        let mut b = [0u8; 3];
        s.read_exact(&mut b).unwrap();
    }
    thread::sleep(Duration::from_millis(200));
    let script = format!(
        r#"
import urllib.request, sys
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen("http://127.0.0.1:{}/stats/prometheus").read().decode()
m = {{}}
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        m[(s.name, tuple(sorted(s.labels.items())))] = s.value
def get(name, **labels):
    return m[(name, tuple(sorted(labels.items())))]
assert get("remora_downstream_cx_total") == 4, get("remora_downstream_cx_total")
assert get("remora_bytes_upstream_total") == 12
assert get("remora_downstream_cx_active") == 0
assert get("remora_server_config_version") == 1
assert get("remora_downstream_cx_length_seconds_count") == 4
assert get("remora_downstream_cx_length_seconds_bucket", le="+Inf") == 4
assert get("remora_cluster_upstream_cx_total", cluster_name="backend", endpoint="{echo}") == 4
print("ok")
"#,
        p.prom
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    r.stop();
}

/// A broken file is rejected with file, line and reason; the running config
/// keeps serving; good files advance the version; listeners follow the file.
#[test]
fn reload_good_and_broken_files() {
    let echo = echo_server();
    let p = ports();
    let mut r = Remora::start(&config(&p, echo, ""), &["--cores", "2"]);
    let cfg_path = r.config_path();
    // Broken: unknown key on line 2.
    std::fs::write(&cfg_path, "[runtime]\nbogus = 1\n").unwrap();
    let (code, body) = http(p.admin, "POST", "/reload");
    assert_eq!(code, 400);
    assert!(
        body.contains(&format!(
            "{}:2:1: unknown field `bogus`",
            cfg_path.display()
        )),
        "{body}"
    );
    let dump = http(p.admin, "GET", "/config_dump").1;
    assert!(
        dump.contains("\"version\": 1") && dump.contains("unknown field"),
        "{dump}"
    );
    // Still serving.
    let mut s = connect(p.listener);
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();

    // Good: a second listener appears, served by every core.
    let extra = free_port();
    let good = config(&p, echo, "")
        + &format!(
            "[[listener]]\nname = \"m\"\naddress = \"127.0.0.1:{extra}\"\ncluster = \"backend\"\n"
        );
    std::fs::write(&cfg_path, &good).unwrap();
    r.signal(libc::SIGHUP);
    r.wait_for_log("config reloaded");
    assert!(http(p.admin, "GET", "/config_dump")
        .1
        .contains("\"version\": 2"));
    for _ in 0..4 {
        let mut s = connect(extra);
        s.write_all(b"y").unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"y");
    }
    // The connection opened before the reload still works.
    s.write_all(b"z").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"z");

    // A file change alone (inotify) removes the listener again.
    std::fs::write(&cfg_path, config(&p, echo, "")).unwrap();
    r.wait_for_log("version=3");
    let refused = (0..50).any(|_| {
        thread::sleep(Duration::from_millis(20));
        TcpStream::connect(("127.0.0.1", extra)).is_err()
    });
    assert!(refused, "removed listener still accepts");
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("cx_reset"), 0);
}

/// 100 reloads, alternating good and broken files, under wrk load through an
/// L4 listener: no failed request, no reset connection, and the version
/// follows the good files only.
#[test]
fn hundred_reloads_under_load_drop_nothing() {
    let dir = TempDir::new("nginx");
    let backend_port = free_port();
    let body = "x".repeat(612);
    dir.file("index.html", &body);
    // One process (master_process off): the kill on drop leaves no orphaned
    // worker behind.
    let conf = dir.file(
        "nginx.conf",
        &format!(
            "master_process off; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\nhttp {{ access_log off; keepalive_requests 1000000; server {{ listen 127.0.0.1:{backend_port}; root {d}; }} }}\n",
            d = dir.0.display()
        ),
    );
    let _nginx = Nginx(
        Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nginx (tests/run installs nginx-light)"),
    );
    let backend = format!("127.0.0.1:{backend_port}").parse().unwrap();
    let p = ports();
    // An L4 listener (from `config`) and an L7 one routing everything to nginx.
    let l7_port = free_port();
    let with_l7 = move |extra: &str| {
        config(&p, backend, extra)
            + &format!(
                "[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{l7_port}\"\ncluster = \"backend\"\nprotocol = \"http\"\n[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"backend\"\n"
            )
    };
    let r = Remora::start(&with_l7(""), &["--cores", "2"]);
    let cfg_path = r.config_path();
    let _ = connect(backend_port);
    let wrk = |port: u16| {
        Command::new("wrk")
            .args([
                "-t1",
                "-c10",
                "-d6s",
                &format!("http://127.0.0.1:{port}/index.html"),
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("wrk (tests/run installs it)")
    };
    // Both load generators run while the reloads happen.
    let loads = [wrk(p.listener), wrk(l7_port)];
    // Written the way a careful operator (or Kubernetes) does: a temporary file
    // renamed over the config, so no reload ever sees half a file.
    let write = move |path: &std::path::Path, text: &str| {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    let reloads = thread::spawn(move || {
        let mut expected = 1;
        for i in 0..100u32 {
            if i % 2 == 0 {
                let extra = format!("max_connections_per_core = {}", 10_000 + i);
                write(&cfg_path, &with_l7(&extra));
                expected += 1;
                let (code, body) = http(p.admin, "POST", "/reload");
                assert_eq!(code, 200, "{body}");
                assert_eq!(body.trim(), format!("OK version {expected}"));
            } else {
                write(&cfg_path, "[runtime]\ncores = \"many\"\n");
                let (code, body) = http(p.admin, "POST", "/reload");
                assert_eq!(code, 400, "{body}");
                assert!(body.contains(":2:9:"), "{body}");
            }
            thread::sleep(Duration::from_millis(40));
        }
        (expected, p.admin)
    });
    let (expected, admin) = reloads.join().unwrap();
    // Inotify may add reloads of its own, but only of files already seen;
    // the version must equal the number of good files published.
    let dump = http(admin, "GET", "/config_dump").1;
    assert!(dump.contains(&format!("\"version\": {expected}")), "{dump}");
    for (load, what) in loads.into_iter().zip(["L4", "L7"]) {
        let out = load.wait_with_output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        assert!(out.contains("requests in"), "{what}: {out}");
        assert!(
            !out.contains("Socket errors"),
            "{what}: wrk saw socket errors:\n{out}"
        );
        assert!(
            !out.contains("Non-2xx"),
            "{what}: wrk saw failed requests:\n{out}"
        );
    }
    // (No cx_reset check here: wrk itself resets its connections when it stops.)
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}

/// nginx's master, stopped (with its workers) even if the test panics.
struct Nginx(std::process::Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM lets the master take its workers down; SIGKILL would orphan them.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

#[test]
fn drain_listeners_and_quitquitquit() {
    let echo = echo_server();
    let p = ports();
    let mut r = Remora::start(&config(&p, echo, ""), &["--cores", "1"]);
    let mut s = connect(p.listener);
    s.write_all(b"a").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    assert_eq!(http(p.admin, "POST", "/drain_listeners").0, 200);
    r.wait_for_log("listener closed");
    assert!(TcpStream::connect(("127.0.0.1", p.listener)).is_err());
    // Readiness flips so the orchestrator stops sending traffic.
    assert_eq!(http(p.ready, "GET", "/healthz/ready").0, 503);
    // The open connection is still served.
    s.write_all(b"b").unwrap();
    s.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"b");
    drop(s);
    assert_eq!(http(p.admin, "POST", "/quitquitquit").0, 200);
    let status = r.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `promtool check metrics` (Debian's prometheus package; tests/run installs
/// it) finds nothing to say: every `# TYPE` names its samples, every family
/// has help, units are Prometheus' base units. And the README lists every
/// family, so an operator can find what a metric means.
#[test]
fn prometheus_passes_promtool_and_the_readme_lists_every_family() {
    let echo = echo_server();
    let p = ports();
    let r = Remora::start(&config(&p, echo, ""), &["--cores", "2"]);
    let mut s = connect(p.listener);
    s.write_all(b"abc").unwrap();
    let mut b = [0u8; 3];
    s.read_exact(&mut b).unwrap();
    drop(s);
    let (code, text) = http(p.prom, "GET", "/stats/prometheus");
    assert_eq!(code, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; tests/run installs it)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool:\n{said}\n{text}"
    );
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(families.len() > 40, "{text}");
    let missing: Vec<&&str> = families
        .iter()
        .filter(|f| !readme.contains(&format!("`{f}`")))
        .collect();
    assert!(missing.is_empty(), "not in README.md: {missing:?}");
    r.stop();
}

/// A reload refuses an empty file as start-up and `validate` do; with
/// `--cores` given, a changed `runtime.cores` is not promised for a restart.
#[test]
fn reload_refuses_an_empty_file_and_cores_flag_decides() {
    let echo = echo_server();
    let p = ports();
    let mut r = Remora::start(&config(&p, echo, ""), &["--cores", "1"]);
    let cfg = r.config_path();
    // `extra` lands in [runtime].
    std::fs::write(&cfg, config(&p, echo, "cores = 2")).unwrap();
    let (code, body) = http(p.admin, "POST", "/reload");
    assert_eq!(code, 200, "{body}");
    r.wait_for_log("config reloaded");
    let said = r.wait_for_log("runtime.cores");
    assert!(
        said.contains("--cores 1 on the command line decides"),
        "{said}"
    );
    assert!(!said.contains("next restart"), "{said}");
    std::fs::write(&cfg, "").unwrap();
    let (code, body) = http(p.admin, "POST", "/reload");
    assert_eq!(code, 400);
    assert!(
        body.contains(&format!("{}: file is empty", cfg.display())),
        "{body}"
    );
    r.stop();
}

/// `remora run > log 2>&1` with `access_log.path = "stdout"`: the access log
/// shares stdout's file offset with stderr, so neither writes over the other.
#[test]
fn access_log_and_stderr_in_one_file_lose_no_line() {
    let dir = TempDir::new("one-file");
    let port = free_port();
    let cfg = dir.file(
        "c.toml",
        &format!(
            "[admin]\nenabled = false\n[capture]\nenabled = false\n[access_log]\npath = \"stdout\"\n\
             [[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"http\"\n\
             [[virtual_host]]\nname = \"v\"\ndomains = [\"*\"]\n[[virtual_host.route]]\n\
             match = {{ prefix = \"/\" }}\ndirect_response = {{ status = 200, body = \"ok\" }}\n"
        ),
    );
    let log = dir.0.join("all.log");
    // The shell's `>`: no O_APPEND, so stderr writes at its own offset.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "exec {BIN} run --config {} --cores 1 --log-level remora=debug > {} 2>&1",
            cfg.display(),
            log.display()
        ))
        .spawn()
        .unwrap();
    let mut c = common::http::Client::new(port);
    const N: usize = 40;
    for i in 0..N {
        let resp = c.request(&common::http::get(&format!("/r{i}"), "x"));
        assert_eq!(resp.status, 200);
        // Let the one-second flush of the access log fall between requests.
        if i == N / 2 {
            thread::sleep(Duration::from_millis(1200));
        }
    }
    drop(c);
    // SAFETY: plain kill(2) on our child (sh exec'd remora).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let text = std::fs::read_to_string(&log).unwrap();
    let access: Vec<&str> = text.lines().filter(|l| l.starts_with("[20")).collect();
    assert_eq!(access.len(), N, "access-log lines lost:\n{text}");
    for (i, l) in access.iter().enumerate() {
        assert!(
            l.contains(&format!("\"GET /r{i} HTTP/1.1\" 200 - 0 2 ")),
            "{l}"
        );
    }
    // Every line is whole: an access-log line or a log line with its level.
    for l in text.lines() {
        assert!(
            l.starts_with("[20") || (l.starts_with("20") && l.contains("Z ")),
            "a line written over:\n{l}\n---\n{text}"
        );
    }
    assert!(text.contains(" ready "), "{text}");
    assert!(text.contains("stopped totals="), "{text}");
}

/// The access log against Envoy's: body bytes only (no head, no chunk
/// framing), "-" (JSON null) for what a rejected request does not have, JSON
/// keys in the configured order, every field filled that the request
/// carries, and a direct_response body sent exactly as configured.
#[test]
fn access_log_counts_body_bytes_and_keeps_envoys_shape() {
    let backend = common::http::Backend::start("a");
    let fields = [
        "path",
        "method",
        "response_code",
        "bytes_received",
        "bytes_sent",
        "authority",
        "user_agent",
        "x_forwarded_for",
        "protocol",
    ];
    for format in ["text", "json"] {
        let dir = TempDir::new("alog-shape");
        let path = dir.0.join("access.log");
        let port = free_port();
        let list: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
        let text = format!(
            "[admin]\nenabled = false\n[capture]\nenabled = false\n\
             [access_log]\npath = \"{}\"\nformat = \"{format}\"\nfields = [{}]\n\
             [[cluster]]\nname = \"a\"\nendpoints = [\"{}\"]\n\
             [[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"http\"\ncluster = \"a\"\n\
             [[virtual_host]]\nname = \"v\"\ndomains = [\"*\"]\n\
             [[virtual_host.route]]\nmatch = {{ prefix = \"/direct\" }}\ndirect_response = {{ status = 200, body = \"hi\" }}\n\
             [[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"a\"\n",
            path.display(),
            list.join(", "),
            backend.addr
        );
        let r = Remora::start(&text, &["--cores", "1"]);
        let mut c = common::http::Client::new(port);
        // 11 body bytes each way, chunked both ways (the backend echoes).
        let resp = c.request(
            "POST /echo HTTP/1.1\r\nHost: svc\r\nUser-Agent: ua/1\r\nX-Forwarded-For: 10.1.2.3\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        );
        assert_eq!((resp.status, &resp.body[..]), (200, &b"hello world"[..]));
        let resp = c.request(&common::http::get("/direct", "svc"));
        assert_eq!((resp.status, &resp.body[..]), (200, &b"hi"[..]), "{format}");
        drop(c);
        let mut bad = connect(port);
        bad.write_all(b"NOT HTTP\r\n\r\n").unwrap();
        let mut answer = String::new();
        let _ = bad.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        let (code, _) = r.stop();
        assert_eq!(code, 0);
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{log}");
        let bad_body = answer.split_once("\r\n\r\n").unwrap().1.len();
        if format == "text" {
            assert!(
                lines[0].contains("\"POST /echo HTTP/1.1\" 200 - 11 11 ")
                    && lines[0].contains("\"10.1.2.3\" \"ua/1\" ")
                    && lines[0].contains(" \"svc\" "),
                "{}",
                lines[0]
            );
            assert!(
                lines[1].contains("\"GET /direct HTTP/1.1\" 200 - 0 2 "),
                "{}",
                lines[1]
            );
            assert!(
                lines[2].contains(&format!("\"- - HTTP/1.1\" 400 DPE 0 {bad_body} "))
                    && lines[2].ends_with("\"-\" \"-\" \"-\" \"-\" \"-\""),
                "{}",
                lines[2]
            );
            continue;
        }
        for l in &lines {
            // The configured order, not sorted.
            let at: Vec<usize> = fields
                .iter()
                .map(|f| {
                    l.find(&format!("\"{f}\":"))
                        .unwrap_or_else(|| panic!("{f} in {l}"))
                })
                .collect();
            assert!(at.windows(2).all(|w| w[0] < w[1]), "keys out of order: {l}");
        }
        let e: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            e[0],
            serde_json::json!({"path": "/echo", "method": "POST", "response_code": 200,
                "bytes_received": 11, "bytes_sent": 11, "authority": "svc",
                "user_agent": "ua/1", "x_forwarded_for": "10.1.2.3", "protocol": "HTTP/1.1"})
        );
        assert_eq!(
            (&e[1]["path"], &e[1]["bytes_sent"]),
            (&"/direct".into(), &2.into())
        );
        assert_eq!(
            e[2],
            serde_json::json!({"path": null, "method": null, "response_code": 400,
                "bytes_received": 0, "bytes_sent": bad_body, "authority": null,
                "user_agent": null, "x_forwarded_for": null, "protocol": "HTTP/1.1"})
        );
    }
}

/// One access-log line per connection, in Envoy's text format or as JSON,
/// flushed by the end of the drain.
#[test]
fn access_log_text_and_json() {
    let echo = echo_server();
    for format in ["text", "json"] {
        let dir = TempDir::new("alog");
        let path = dir.0.join("access.log");
        let p = ports();
        let extra = format!(
            "[access_log]\npath = \"{}\"\nformat = \"{format}\"\n",
            path.display()
        );
        let r = Remora::start(&config(&p, echo, &extra), &["--cores", "2"]);
        for _ in 0..3 {
            let mut s = connect(p.listener);
            s.write_all(b"12345").unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).unwrap();
        }
        let (code, _) = r.stop();
        assert_eq!(code, 0);
        let log = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 3, "{format}:\n{log}");
        for l in lines {
            if format == "text" {
                assert!(l.starts_with('['), "{l}");
                assert!(l.contains("\"- - -\" 0 - 5 5 "), "{l}");
                assert!(l.ends_with(&format!("\"{echo}\"")), "{l}");
            } else {
                let check = Command::new("python3")
                    .arg("-c")
                    .arg(format!(
                        "import json,sys; e=json.loads(sys.argv[1]); assert e['bytes_received']==5 and e['bytes_sent']==5 and e['protocol']=='TCP' and e['upstream_host']=='{echo}' and e['listener']=='l', e"
                    ))
                    .arg(l)
                    .status()
                    .unwrap();
                assert!(check.success(), "{l}");
            }
        }
    }
}
