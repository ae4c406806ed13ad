//! The command line: `remora validate`, and start-up errors that say what to do.

mod common;

use std::process::Command;

use common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_shipped_config() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/remora.toml");
    let (code, out, _) = run(&["validate", path]);
    assert_eq!((code, out.trim()), (0, "OK"));
}

#[test]
fn validate_reports_every_error_with_file_line_and_column() {
    let dir = TempDir::new("validate");
    let f = dir.file(
        "bad.toml",
        "[runtime]\ncores = -1\n\n[capture]\nforwarding = \"zerocopy\"\n\n[[listener]]\nname = \"x\"\naddress = \"nowhere\"\ncluster = \"none\"\n",
    );
    let (code, _, err) = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = err.lines().collect();
    let name = f.display().to_string();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(
        lines[0].starts_with(&format!("{name}:2:9: runtime.cores = -1")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{name}:5:14: forwarding `zerocopy`")),
        "{err}"
    );
    assert!(
        lines[2].starts_with(&format!("{name}:9:11: listener `x`: `nowhere`")),
        "{err}"
    );
}

#[test]
fn validate_reports_syntax_errors_with_line() {
    let dir = TempDir::new("syntax");
    let f = dir.file("bad.toml", "[runtime]\ncores = 1\n[capture\n");
    let (code, _, err) = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{}:3:", f.display())), "{err}");
}

#[test]
fn run_with_a_bad_config_exits_nonzero_with_the_reason() {
    let dir = TempDir::new("runbad");
    let f = dir.file("bad.toml", "[capture]\nbogus = 1\n");
    let (code, _, err) = run(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(":2:1: unknown field `bogus`"), "{err}");
}

#[test]
fn port_in_use_is_named() {
    // A listener without SO_REUSEPORT blocks the port for everyone else.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let dir = TempDir::new("inuse");
    let f = dir.file(
        "c.toml",
        &l4_config("127.0.0.1:9".parse().unwrap(), &[("c", port, "copy")], ""),
    );
    let (code, _, err) = run(&["run", "--config", f.to_str().unwrap(), "--cores", "1"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("port 127.0.0.1:{port} is already in use")),
        "{err}"
    );
}

#[test]
fn locked_memory_limit_too_low_names_the_limit_and_the_fix() {
    let out = Command::new("prlimit")
        .args(["--memlock=65536:65536", BIN, "run", "--cores", "1"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("RLIMIT_MEMLOCK"), "{err}");
    assert!(err.contains("ulimit -l"), "{err}");
    assert!(err.contains("is 64 KiB"), "{err}");
}

#[test]
fn more_cores_than_allowed_is_refused() {
    let out = Command::new("taskset")
        .args(["-c", "0", BIN, "run", "--cores", "2"])
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("may only run on 1 CPU"), "{err}");
}

/// taskset narrows the CPUs; Remora must honour it (glommio's CpuSet::online
/// alone would not).
#[test]
fn taskset_affinity_is_honoured() {
    let dir = TempDir::new("taskset");
    let p = free_port();
    let cfg = dir.file(
        "c.toml",
        &l4_config("127.0.0.1:9".parse().unwrap(), &[("c", p, "copy")], ""),
    );
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", BIN, "run", "--config"]).arg(&cfg);
    let mut r = Remora::spawn(cmd, TempDir::new("taskset2"));
    let line = r.wait_for_log("shards listening");
    assert!(
        line.contains("cores=1") && line.contains("cpus=[1]"),
        "{line}"
    );
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}

#[test]
fn validate_rejects_bad_body_limits_with_line_and_column() {
    let dir = TempDir::new("body-limit");
    let f = dir.file(
        "bad.toml",
        "[http]\nmax_request_body_bytes = -1\n\n[[cluster]]\nname = \"a\"\nendpoints = [\"127.0.0.1:80\"]\n\n[[virtual_host]]\nname = \"v\"\ndomains = [\"*\"]\n\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ncluster = \"a\"\nmax_request_body_bytes = -7\n",
    );
    let (code, _, err) = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    let name = f.display().to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!(
            "{name}:2:26: http.max_request_body_bytes = -1 must be 0 (no limit)"
        )),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{name}:15:26: max_request_body_bytes = -7 must be 0 (no limit)"
        )),
        "{err}"
    );
    // Not a number at all: the parser says so, at the value.
    let f = dir.file("str.toml", "[http]\nmax_request_body_bytes = \"1MB\"\n");
    let (code, _, err) = run(&["validate", f.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("{}:2:26: ", f.display())), "{err}");
    // `remora run` refuses it too, before listening.
    let (code, _, err) = run(&["run", "--config", f.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(":2:26: "), "{err}");
}
