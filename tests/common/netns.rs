//! Root-only test support: network namespaces as pods, processes inside
//! them, Remora as the proxy user (uid 1337) and its admin API, reached from
//! a thread that enters the pod's namespace.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use super::{is_root, Remora, TempDir, BIN};

/// Fails the test unless it can run here: as root, with the base tools,
/// `extra` and python3. These tests are `#[ignore]`d, so `cargo test` lists
/// them as ignored; `tests/run` (as root) runs them with `--ignored`. Asked
/// for without root, they fail rather than pass having done nothing.
pub fn require_root(extra: &[&str]) {
    assert!(
        is_root(),
        "this test needs root (network namespaces, veth, iptables): run it as root, e.g. sudo tests/run"
    );
    let base = [
        "ip",
        "iptables",
        "iptables-restore",
        "ip6tables-restore",
        "setpriv",
    ];
    for bin in base.iter().chain(extra) {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "`{bin}` is not installed; this root-only test needs it (iproute2, iptables, util-linux, ...)"
        );
    }
    python();
}

/// The real Python interpreter (not a pyenv shim, which would add its own
/// start-up to every process and stand between a pid and the app).
pub fn python() -> &'static str {
    static PY: OnceLock<String> = OnceLock::new();
    PY.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap_or_else(|e| panic!("python3 is needed by this root-only test: {e}"));
        assert!(out.status.success(), "python3 does not run");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// Runs a command; panics with its stderr if it fails; returns its stdout.
pub fn sh(argv: &[&str]) -> String {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"));
    assert!(
        out.status.success(),
        "{argv:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The prefix that runs a program as the proxy user, whose traffic Istio's
/// rules never capture.
pub const AS_PROXY_USER: [&str; 6] = [
    "setpriv",
    "--reuid",
    "1337",
    "--regid",
    "1337",
    "--clear-groups",
];

/// A network namespace, deleted on drop (even when the test panics).
pub struct Ns {
    pub name: String,
}

impl Ns {
    pub fn new(name: String) -> Ns {
        // A leftover of a killed earlier run with the same pid: start clean.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `argv` inside the namespace; panics if it fails; its stdout.
    pub fn exec(&self, argv: &[&str]) -> String {
        let mut v = vec!["ip", "netns", "exec", &self.name];
        v.extend_from_slice(argv);
        sh(&v)
    }

    /// Runs `argv` inside the namespace and returns what it did, failed or not.
    pub fn output(&self, argv: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {argv:?}: {e}"))
    }

    /// Runs `f` on a short-lived thread that has entered the namespace (only
    /// that thread does), as uid 0.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = format!("/run/netns/{}", self.name);
        thread::spawn(move || {
            let file = File::open(&ns).unwrap();
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// GET `path` from the Remora admin API in this namespace
    /// (127.0.0.1:15000); the body of a 200. The connection comes from uid 0
    /// to 127.0.0.1, which Istio's rules leave alone.
    pub fn admin(&self, path: &str) -> String {
        let request = format!("GET {path} HTTP/1.0\r\n\r\n");
        self.within(move || {
            let addr = "127.0.0.1:15000".parse().unwrap();
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                .expect("admin API of the pod's sidecar");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(request.as_bytes()).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            assert!(head.starts_with("HTTP/1.1 200"), "{text}");
            body.to_string()
        })
    }

    /// One `name: value` line of the sidecar's /stats (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        stat_in(&self.admin("/stats"), name)
    }
}

/// One `name: value` line of a /stats text (0 when absent).
pub fn stat_in(stats: &str, name: &str) -> u64 {
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A child process whose stdout lines are collected; killed on drop.
pub struct Proc {
    pub child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub fn spawn(ns: &Ns, argv: &[&str]) -> Proc {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(argv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let keep = lines.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until `done` holds for the output so far.
    pub fn wait_until(&self, what: &str, within: Duration, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + within;
        while !done(&self.lines()) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {within:?}; output so far:\n{}",
                self.lines().join("\n")
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGKILL and reap: the process is gone when this returns.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Remora in `ns` as the proxy user (uid/gid 1337), one core, with `config`;
/// returned once it logs "ready".
pub fn sidecar(ns: &Ns, config: &str) -> Remora {
    let dir = TempDir::new("netns-sidecar");
    let cfg = dir.file("remora.toml", config);
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .args(AS_PROXY_USER)
        .args([BIN, "run", "--cores", "1", "--config"])
        .arg(&cfg);
    let mut r = Remora::spawn(cmd, dir);
    r.wait_ready();
    r
}
