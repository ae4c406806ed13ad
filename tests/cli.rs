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

/// `validate` with its file, for the tests below: (exit code, stderr).
fn validate(dir: &TempDir, name: &str, text: &str) -> (i32, String, String) {
    let f = dir.file(name, text);
    let (code, _, err) = run(&["validate", f.to_str().unwrap()]);
    (code, err, f.display().to_string())
}

/// Every check `run` can make without binding is in `validate`, and a clash
/// names both settings (it used to blame [admin] for the capture port).
#[test]
fn validate_refuses_port_clashes_naming_both_settings() {
    let dir = TempDir::new("clash");
    let cases = [
        (
            "[admin]\naddress = \"127.0.0.1:15001\"\n",
            "2:11: capture.outbound_port (0.0.0.0:15001, the default) and admin.address (127.0.0.1:15001) both listen on port 15001; change one of them",
        ),
        (
            "[admin]\nprometheus_address = \"127.0.0.1:15000\"\n",
            "2:22: admin.address (127.0.0.1:15000, the default) and admin.prometheus_address (127.0.0.1:15000) both listen on port 15000",
        ),
        (
            "[capture]\ninbound_port = 15021\n",
            "2:16: capture.inbound_port (0.0.0.0:15021) and admin.readiness_address (0.0.0.0:15021, the default) both listen on port 15021",
        ),
        (
            "[[cluster]]\nname = \"c\"\nendpoints = [\"127.0.0.1:1\"]\n[[listener]]\nname = \"l\"\naddress = \"127.0.0.1:15090\"\ncluster = \"c\"\n",
            "6:11: listener `l` address (127.0.0.1:15090) and admin.prometheus_address (0.0.0.0:15090, the default) both listen on port 15090",
        ),
    ];
    for (text, want) in cases {
        let (code, err, name) = validate(&dir, "clash.toml", text);
        assert_eq!(code, 1, "{text}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with(&format!("{name}:{want}")), "{err}");
        // `run` refuses it with the same words, before it binds anything.
        let (code, _, run_err) = run(&["run", "--config", &name, "--cores", "1"]);
        assert_eq!(code, 1, "{run_err}");
        assert_eq!(run_err.trim_end(), err.trim_end());
    }
    // Different addresses on one port do not clash; nor do the defaults.
    let (code, err, _) = validate(
        &dir,
        "ok.toml",
        "[admin]\naddress = \"127.0.0.1:9901\"\nprometheus_address = \"127.0.0.2:9901\"\nreadiness_address = \"\"\n",
    );
    assert_eq!((code, err.as_str()), (0, ""));
}

/// A file that validates keeps validating when the access log is turned on.
#[test]
fn validate_checks_access_log_settings_while_the_log_is_off() {
    let dir = TempDir::new("alog-off");
    let (code, err, name) = validate(
        &dir,
        "a.toml",
        "[access_log]\nformat = \"yaml\"\nfields = [\"method\", \"bogus\"]\n",
    );
    assert_eq!(code, 1, "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with(&format!("{name}:2:10: access_log.format `yaml`")),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!("{name}:3:21: access_log field `bogus` is unknown")),
        "{err}"
    );
    // And a file path whose directory does not exist (run could not open it).
    let (code, err, name) = validate(
        &dir,
        "b.toml",
        "[access_log]\npath = \"/nonexistent/remora/a.log\"\n",
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with(&format!("{name}:2:8: access_log.path `/nonexistent/remora/a.log`: directory `/nonexistent/remora` does not exist")),
        "{err}"
    );
}

/// Type errors and unknown keys are all reported, each at its line, in the
/// user's words (no `i64`); semantic errors name what the user wrote.
#[test]
fn validate_reports_every_error_in_plain_words() {
    let dir = TempDir::new("every");
    let (code, err, name) = validate(
        &dir,
        "types.toml",
        "[runtime]\ncores = \"two\"\n\n[capture]\nforwarding = 5\nbogus = true\nhttp_ports = [80, \"81\"]\n",
    );
    assert_eq!(code, 1);
    let want = [
        "2:9: expected an integer, found string \"two\"",
        "5:14: expected a string, found integer 5",
        "6:1: unknown field `bogus`, expected one of",
        "7:19: expected an integer, found string \"81\"",
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, want) in lines.iter().zip(want) {
        assert!(line.starts_with(&format!("{name}:{want}")), "{line}\n{err}");
    }
    assert!(!err.contains("i64"), "{err}");

    let (code, err, name) = validate(
        &dir,
        "semantic.toml",
        r#"[[cluster]]
name = "a"
endpoints = ["backend.svc:80"]

[[cluster]]
name = "a"
endpoints = ["127.0.0.1:1"]

[[virtual_host]]
name = "v"
domains = ["*"]
[[virtual_host.route]]
match = { regex = "/(a" }
cluster = "zz"

[[virtual_host]]
name = "w"
domains = ["*"]
[[virtual_host.route]]
match = { prefix = "/" }
cluster = "a"
"#,
    );
    assert_eq!(code, 1);
    let want = [
        "3:14: cluster `a`: endpoint `backend.svc:80` is not an IP address:port; names need discovery = \"dns\"",
        "6:8: cluster name `a` is used twice",
        "13:19: invalid regex `/(a`: unclosed group",
        "14:11: unknown cluster `zz` (defined: a);",
        "18:12: domain `*` is already used by virtual host `v`",
    ];
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), want.len(), "{err}");
    for (line, want) in lines.iter().zip(want) {
        assert!(line.starts_with(&format!("{name}:{want}")), "{line}\n{err}");
    }
}

/// An empty file is refused by `validate` and `run` alike (and by a reload:
/// tests/operability.rs); a file of comments is the built-in default.
#[test]
fn an_empty_file_is_refused_everywhere_and_comments_are_the_default() {
    let dir = TempDir::new("empty");
    let empty = dir.file("empty.toml", "");
    for args in [
        vec!["validate", empty.to_str().unwrap()],
        vec!["run", "--config", empty.to_str().unwrap(), "--cores", "1"],
    ] {
        let (code, _, err) = run(&args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.starts_with(&format!("{}: file is empty", empty.display())),
            "{args:?}: {err}"
        );
        assert!(err.contains("run without --config"), "{err}");
    }
    let (code, err, _) = validate(&dir, "comments.toml", "# nothing here yet\n");
    assert_eq!((code, err.as_str()), (0, ""));
}

/// An `http` listener routes by [[virtual_host]]: it needs no `cluster`.
/// A `tcp` or `auto` one does, and is told so.
#[test]
fn an_http_listener_needs_no_cluster() {
    let dir = TempDir::new("http-nocluster");
    let routes = "[[virtual_host]]\nname = \"v\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = { prefix = \"/\" }\ndirect_response = { status = 200, body = \"hi\" }\n";
    let port = free_port();
    let text = format!(
        "[admin]\nenabled = false\n[capture]\nenabled = false\n[[listener]]\nname = \"web\"\naddress = \"127.0.0.1:{port}\"\nprotocol = \"http\"\n{routes}"
    );
    let (code, err, _) = validate(&dir, "http.toml", &text);
    assert_eq!((code, err.as_str()), (0, ""));
    // It serves.
    let r = Remora::start(&text, &["--cores", "1"]);
    let mut c = common::http::Client::new(port);
    let resp = c.request(&common::http::get("/", "x"));
    assert_eq!((resp.status, &resp.body[..]), (200, &b"hi"[..]));
    drop(r);
    let (code, err, name) = validate(&dir, "tcp.toml", &text.replace("\"http\"", "\"auto\""));
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "{name}:6:8: listener `web`: protocol \"auto\" needs a `cluster`"
        )),
        "{err}"
    );
}

/// The start-up log, to a pipe and without NO_COLOR, has no colour codes and
/// names every listening address.
#[test]
fn plain_logs_name_every_listener_at_start() {
    let dir = TempDir::new("start-log");
    let (a, b) = (free_port(), free_port());
    let text = l4_config(
        "127.0.0.1:9".parse().unwrap(),
        &[("first", a, "copy"), ("second", b, "splice")],
        "",
    );
    let mut cmd = Command::new(BIN);
    cmd.arg("run")
        .arg("--config")
        .arg(dir.file("two.toml", &text))
        .args(["--cores", "1"])
        .env_remove("NO_COLOR");
    let mut r = Remora::spawn(cmd, TempDir::new("once2"));
    r.wait_ready();
    let log = r.log.join("\n");
    let (code, _) = r.stop();
    assert_eq!(code, 0);
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a piped log:\n{log}"
    );
    for (name, port) in [("first", a), ("second", b)] {
        assert!(
            log.lines().any(|l| l.contains("listener added")
                && l.contains(&format!("name={name}"))
                && l.contains(&format!("addr=127.0.0.1:{port}"))),
            "no start-up line for {name}:\n{log}"
        );
    }
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
    // Said once (it was logged and printed).
    assert_eq!(err.matches("is already in use").count(), 1, "{err}");
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
