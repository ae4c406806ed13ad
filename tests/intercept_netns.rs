//! End-to-end: `remora iptables` and `remora run` in real network namespaces.
//!
//! Two "pods" (namespaces joined by a veth pair, 10.203.0.1/24 + fd00:203::1/64
//! and 10.203.0.2/24 + fd00:203::2/64; these addresses exist only inside the
//! namespaces), each with a tiny app that answers `peer=<client ip>` and closes,
//! the capture rules, and Remora running as uid 1337. Needs root: the tests
//! are `#[ignore]`d (listed as ignored without root; tests/run runs them as
//! root with `--ignored`, where a missing tool fails them). Every namespace is named
//! `rmr3-<pid>-<tag>` and deleted by a Drop guard, even when a test panics.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::netns::{sh, Ns};

const REMORA: &str = env!("CARGO_BIN_EXE_remora");
const A4: &str = "10.203.0.1";
const B4: &str = "10.203.0.2";
const A6: &str = "fd00:203::1";
const B6: &str = "fd00:203::2";

/// Why these tests cannot run here, if they cannot.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces, iptables)".into());
    }
    for bin in [
        "ip",
        "iptables-restore",
        "ip6tables-save",
        "setpriv",
        "python3",
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{bin}` is not installed"));
        }
    }
    None
}

/// These tests are `#[ignore]`d (`cargo test` lists them as ignored;
/// `tests/run`, as root, runs them with `--ignored`). Asked for where they
/// cannot run, they fail rather than pass having done nothing.
macro_rules! require_root {
    () => {
        if let Some(why) = skip_reason() {
            panic!(
                "{}: {why}; run it as root, e.g. sudo tests/run",
                module_path!()
            );
        }
    };
}

/// Pod namespaces of this file, named after the test process.
fn pod(tag: &str) -> Ns {
    Ns::new(format!("rmr3-{}-{tag}", std::process::id()))
}

/// What this file asks of a pod beyond the shared helpers.
impl Ns {
    /// Runs `argv` inside the namespace and returns (exit code, stdout, stderr).
    fn try_exec(&self, argv: &[&str]) -> (i32, String, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn iptables(&self, flags: &[&str]) -> String {
        let mut v = vec![REMORA, "iptables"];
        v.extend_from_slice(flags);
        self.exec(&v)
    }

    /// iptables-save and ip6tables-save without the comment lines (timestamps).
    fn saved(&self) -> String {
        let mut s = String::new();
        for save in ["iptables-save", "ip6tables-save"] {
            s.push_str(&format!("## {save}\n"));
            for l in self.exec(&[save]).lines().filter(|l| !l.starts_with('#')) {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    /// Connects to `addr` from inside the namespace (this test process, uid 0,
    /// so the pod's outbound capture applies) and reads until the peer closes.
    /// `Err` means no answer: refused, reset, timed out, or closed empty.
    fn fetch(&self, addr: &str) -> Result<String, String> {
        let addr: SocketAddr = addr.parse().unwrap();
        self.within(move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .map_err(|e| format!("connect: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text)
                .map_err(|e| format!("read: {e}"))?;
            if text.is_empty() {
                return Err("closed without an answer".into());
            }
            Ok(text.trim().to_string())
        })
    }
}

/// A child process, killed on drop. Its output lines are collected.
struct Proc {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    rx: mpsc::Receiver<String>,
}

impl Proc {
    /// Starts `argv` in `ns`; `stderr` chooses which stream is collected.
    fn spawn(ns: &Ns, argv: &[&str], collect_stderr: bool) -> Proc {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.name])
            .args(argv)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        if collect_stderr {
            cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        } else {
            cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
        }
        let mut child = cmd.spawn().unwrap();
        let stream: Box<dyn Read + Send> = if collect_stderr {
            Box::new(child.stderr.take().unwrap())
        } else {
            Box::new(child.stdout.take().unwrap())
        };
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let keep = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                keep.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        Proc { child, lines, rx }
    }

    /// Waits (bounded) for a line containing `what`: the readiness signal.
    fn wait_for(&self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(l) if l.contains(what) => return,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!(
            "no `{what}` within 20s; output so far:\n{}",
            self.lines.lock().unwrap().join("\n")
        );
    }

    /// SIGTERM, wait for exit, return everything it printed.
    fn stop(mut self) -> String {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let status = self.child.wait().unwrap();
        // The reader thread ends at EOF; collect what it saw.
        while self.rx.recv_timeout(Duration::from_secs(5)).is_ok() {}
        let out = self.lines.lock().unwrap().join("\n");
        assert!(status.success(), "exited with {status}:\n{out}");
        out
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The app: answers every connection with `peer=<client address>` and closes.
const APP: &str = r#"
import socket, sys, threading
def serve(s):
    while True:
        c, peer = s.accept()
        host = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
        try:
            c.sendall(("peer=%s\n" % host).encode())
        finally:
            c.close()
socks = []
for p in sys.argv[1:]:
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, int(p)))
        s.listen(64)
        socks.append(s)
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"#;

fn app(ns: &Ns, ports: &[&str]) -> Proc {
    let mut argv = vec!["python3", "-c", APP];
    argv.extend_from_slice(ports);
    let p = Proc::spawn(ns, &argv, false);
    p.wait_for("ready");
    p
}

/// Remora as the proxy user (uid/gid 1337, like istio-proxy), built binary.
/// `tproxy` adds CAP_NET_ADMIN (ambient) for IP_TRANSPARENT and the config
/// that turns it on, as Istio's TPROXY mode does for the proxy container.
fn remora(ns: &Ns, tproxy: bool) -> Proc {
    let mut argv = common::netns::AS_PROXY_USER.to_vec();
    if tproxy {
        argv.extend(["--inh-caps", "+net_admin", "--ambient-caps", "+net_admin"]);
    }
    argv.extend([REMORA, "run", "--cores", "1", "--log-level", "debug"]);
    let config;
    if tproxy {
        config = std::env::temp_dir().join(format!("rmr3-{}-{}.toml", std::process::id(), ns.name));
        std::fs::write(&config, "[capture]\ntransparent = true\n").unwrap();
        argv.extend(["--config", config.to_str().unwrap()]);
    }
    let p = Proc::spawn(ns, &argv, true);
    p.wait_for("ready");
    p
}

/// A counter from the `stopped totals=...` line Remora logs on SIGTERM.
fn total(log: &str, name: &str) -> u64 {
    let key = format!("{name}=");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped") && l.contains(&key))
        .unwrap_or_else(|| panic!("no totals in log:\n{log}"));
    let at = line.find(&key).unwrap() + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Two namespaces joined by a veth pair, IPv4 and IPv6.
struct Pods {
    a: Ns,
    b: Ns,
}

fn pods(tag: &str) -> Pods {
    let a = pod(&format!("{tag}-a"));
    let b = pod(&format!("{tag}-b"));
    // Created inside A with its peer in B: no interface name in the root namespace.
    sh(&[
        "ip", "-n", &a.name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0",
        "netns", &b.name,
    ]);
    for (ns, v4, v6) in [(&a, A4, A6), (&b, B4, B6)] {
        ns.exec(&["ip", "addr", "add", &format!("{v4}/24"), "dev", "eth0"]);
        // nodad: usable at once, no duplicate-address-detection wait.
        ns.exec(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{v6}/64"),
            "dev",
            "eth0",
            "nodad",
        ]);
        ns.exec(&["ip", "link", "set", "eth0", "up"]);
    }
    Pods { a, b }
}

fn v4(ip: &str, port: u16) -> String {
    format!("{ip}:{port}")
}

fn v6(ip: &str, port: u16) -> String {
    format!("[{ip}]:{port}")
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn redirect_ipv4_through_both_sidecars_and_stopping_either_breaks_the_path() {
    require_root!();
    let p = pods("r4");
    p.a.iptables(&[]);
    p.b.iptables(&[]);
    let _app = app(&p.b, &["8080"]);
    let sidecar_a = remora(&p.a, false);
    let sidecar_b = remora(&p.b, false);

    // The app sees the inbound sidecar's passthrough source, not pod A.
    for _ in 0..2 {
        assert_eq!(p.a.fetch(&v4(B4, 8080)).as_deref(), Ok("peer=127.0.0.6"));
    }
    let log_b = sidecar_b.stop();
    assert_eq!(total(&log_b, "downstream_cx_total"), 2, "{log_b}");
    assert_eq!(total(&log_b, "upstream_cx_total"), 2, "{log_b}");
    assert_eq!(total(&log_b, "downstream_cx_loop_refused"), 0, "{log_b}");
    assert!(log_b.contains("origin=Inbound"), "{log_b}");

    // Without B's sidecar B's inbound capture leads nowhere.
    let broken = p.a.fetch(&v4(B4, 8080));
    assert!(broken.is_err(), "{broken:?}");

    let sidecar_b = remora(&p.b, false);
    assert_eq!(p.a.fetch(&v4(B4, 8080)).as_deref(), Ok("peer=127.0.0.6"));
    let log_a = sidecar_a.stop();
    // Exactly one accept per client connection: Remora's own upstream
    // connections (uid 1337) were not captured again.
    assert_eq!(total(&log_a, "downstream_cx_total"), 4, "{log_a}");
    // Three answered; the attempt while B's sidecar was down failed upstream.
    // It shows up either as a failed connect or (sometimes: glommio's connect
    // reported success and the first read got the reset) as an upstream that
    // reset at once; both mean no answer, which the client already proved.
    assert_eq!(
        total(&log_a, "upstream_cx_total") + total(&log_a, "upstream_cx_connect_fail"),
        4,
        "{log_a}"
    );
    assert_eq!(total(&log_a, "downstream_cx_loop_refused"), 0, "{log_a}");
    assert_eq!(log_a.matches("ending=Closed").count(), 3, "{log_a}");
    assert!(log_a.contains("origin=Outbound"), "{log_a}");

    // Without A's sidecar A's outbound capture leads nowhere.
    let broken = p.a.fetch(&v4(B4, 8080));
    assert!(broken.is_err(), "{broken:?}");
    let log_b = sidecar_b.stop();
    assert_eq!(total(&log_b, "downstream_cx_total"), 1, "{log_b}");
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn excluded_ports_bypass_the_sidecars() {
    require_root!();
    let p = pods("ex");
    p.a.iptables(&["-o", "9090"]);
    p.b.iptables(&["-d", "9090,15090,15021,15020"]);
    let _app = app(&p.b, &["8080", "9090", "22"]);
    let sidecar_a = remora(&p.a, false);
    let sidecar_b = remora(&p.b, false);

    // 9090: excluded outbound in A and inbound in B: the app sees pod A itself.
    assert_eq!(p.a.fetch(&v4(B4, 9090)).as_deref(), Ok("peer=10.203.0.1"));
    // 22 is never captured inbound (Istio's default), but A's outbound still is.
    assert_eq!(p.a.fetch(&v4(B4, 22)).as_deref(), Ok("peer=10.203.0.1"));
    assert_eq!(p.a.fetch(&v4(B4, 8080)).as_deref(), Ok("peer=127.0.0.6"));

    let log_a = sidecar_a.stop();
    let log_b = sidecar_b.stop();
    assert_eq!(total(&log_a, "downstream_cx_total"), 2, "{log_a}");
    assert_eq!(total(&log_b, "downstream_cx_total"), 1, "{log_b}");
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn ipv6_through_both_sidecars() {
    require_root!();
    let p = pods("v6");
    p.a.iptables(&[]);
    p.b.iptables(&[]);
    // `remora iptables` adds the IPv6 passthrough source, as Istio's init does.
    assert!(p
        .b
        .exec(&["ip", "-6", "addr", "show", "dev", "lo"])
        .contains("::6/128"));
    let _app = app(&p.b, &["8080"]);
    let sidecar_a = remora(&p.a, false);
    let sidecar_b = remora(&p.b, false);

    assert_eq!(p.a.fetch(&v6(B6, 8080)).as_deref(), Ok("peer=::6"));
    assert_eq!(p.a.fetch(&v4(B4, 8080)).as_deref(), Ok("peer=127.0.0.6"));

    let log_a = sidecar_a.stop();
    let log_b = sidecar_b.stop();
    for log in [&log_a, &log_b] {
        assert_eq!(total(log, "downstream_cx_total"), 2, "{log}");
        assert_eq!(total(log, "upstream_cx_total"), 2, "{log}");
    }
    assert!(
        log_b.contains("fd00:203::1"),
        "B saw pod A's IPv6 client:\n{log_b}"
    );
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn tproxy_inbound_with_transparent_listeners() {
    require_root!();
    let p = pods("tp");
    p.a.iptables(&[]);
    p.b.iptables(&["-m", "TPROXY"]);
    assert!(p
        .b
        .exec(&["ip", "rule"])
        .contains("fwmark 0x539 lookup 133"));
    let _app_a = app(&p.a, &["8080"]);
    let _app_b = app(&p.b, &["8080"]);
    let sidecar_a = remora(&p.a, false);
    let sidecar_b = remora(&p.b, true);

    // A → B: B's inbound is TPROXY'd to its transparent 15006, app sees 127.0.0.6.
    assert_eq!(p.a.fetch(&v4(B4, 8080)).as_deref(), Ok("peer=127.0.0.6"));
    assert_eq!(p.a.fetch(&v6(B6, 8080)).as_deref(), Ok("peer=::6"));
    // B → A: B's outbound is still REDIRECT (as in Istio's TPROXY mode) while
    // B's listeners are transparent.
    assert_eq!(p.b.fetch(&v4(A4, 8080)).as_deref(), Ok("peer=127.0.0.6"));

    let log_b = sidecar_b.stop();
    assert_eq!(total(&log_b, "downstream_cx_total"), 3, "{log_b}");
    assert_eq!(total(&log_b, "upstream_cx_total"), 3, "{log_b}");
    assert_eq!(total(&log_b, "downstream_cx_loop_refused"), 0, "{log_b}");
    // Without B's sidecar nothing answers for B's TPROXY'd ports.
    let broken = p.a.fetch(&v4(B4, 8080));
    assert!(broken.is_err(), "{broken:?}");
    // The client gave up before A's connect to B timed out; wait for that
    // (rather than race it against A's drain deadline) so it is counted.
    sidecar_a.wait_for("upstream connect failed");
    let log_a = sidecar_a.stop();
    // Two outbound to B and one inbound from B answered; the attempt while B's
    // sidecar was down failed upstream (timeout, or see the REDIRECT test).
    assert_eq!(total(&log_a, "downstream_cx_total"), 4, "{log_a}");
    assert_eq!(log_a.matches("ending=Closed").count(), 3, "{log_a}");
    assert_eq!(
        total(&log_a, "upstream_cx_total")
            + total(&log_a, "upstream_cx_connect_fail")
            + total(&log_a, "upstream_cx_connect_timeout"),
        4,
        "{log_a}"
    );
}

/// Istio's default rule set, written out by hand from its documented defaults
/// (../shared/FACTS.md), not generated by Remora.
const ISTIO_V4: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
:ISTIO_REDIRECT - [0:0]
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
COMMIT
";

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn istio_own_default_rules_work_with_remora_unchanged() {
    require_root!();
    let p = pods("istio");
    let v6_rules = ISTIO_V4
        .replace("127.0.0.6/32", "::6/128")
        .replace("127.0.0.1/32", "::1/128");
    for ns in [&p.a, &p.b] {
        for (restore, rules) in [
            ("iptables-restore", ISTIO_V4),
            ("ip6tables-restore", &v6_rules),
        ] {
            let mut child = Command::new("ip")
                .args(["netns", "exec", &ns.name, restore])
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), rules.as_bytes()).unwrap();
            assert!(child.wait().unwrap().success(), "{restore} failed");
        }
        ns.exec(&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"]);
    }
    let _app = app(&p.b, &["8080"]);
    let sidecar_a = remora(&p.a, false);
    let sidecar_b = remora(&p.b, false);
    assert_eq!(p.a.fetch(&v4(B4, 8080)).as_deref(), Ok("peer=127.0.0.6"));
    assert_eq!(p.a.fetch(&v6(B6, 8080)).as_deref(), Ok("peer=::6"));
    let log_a = sidecar_a.stop();
    let log_b = sidecar_b.stop();
    for log in [&log_a, &log_b] {
        assert_eq!(total(log, "downstream_cx_total"), 2, "{log}");
        assert_eq!(total(log, "downstream_cx_loop_refused"), 0, "{log}");
    }
}

/// The `-A` lines and chain declarations of iptables-save-like text, per family.
fn rules_of(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with("-A") || l.starts_with('*') || l.starts_with(":ISTIO"))
        .map(str::to_string)
        .collect()
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn dry_run_apply_twice_and_clean_leave_the_tables_as_found() {
    require_root!();
    let ns = pod("idem");
    // Someone else's rules, in both tables and families: they must survive.
    for save in ["iptables", "ip6tables"] {
        ns.exec(&[
            save, "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "ACCEPT",
        ]);
        ns.exec(&[
            save,
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "--dport",
            "2222",
            "-j",
            "RETURN",
        ]);
        ns.exec(&[
            save, "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "-j", "ACCEPT",
        ]);
    }
    let before = ns.saved();
    let rules_before = ns.exec(&["ip", "rule"]);

    for mode in ["REDIRECT", "TPROXY"] {
        let now = ns.saved();
        let dry = ns.iptables(&["--dry-run", "-m", mode]);
        assert_eq!(ns.saved(), now, "--dry-run changed something");

        ns.iptables(&["-m", mode]);
        let once = ns.saved();
        ns.iptables(&["-m", mode]);
        assert_eq!(
            ns.saved(),
            once,
            "{mode}: applying twice changed the tables"
        );

        // What is installed is exactly what --dry-run printed (plus the foreign rules).
        let foreign: Vec<String> = rules_of(&before)
            .into_iter()
            .filter(|l| l.starts_with("-A"))
            .collect();
        let installed: Vec<String> = rules_of(&once)
            .into_iter()
            .filter(|l| !foreign.contains(l))
            .collect();
        let mut printed = rules_of(&dry);
        // iptables-save prints every table; keep the order it uses.
        printed.retain(|l| !l.starts_with('*'));
        let installed_rules: Vec<String> = installed
            .into_iter()
            .filter(|l| !l.starts_with('*'))
            .collect();
        assert_eq!(installed_rules, printed, "{mode}");
        assert!(ns
            .exec(&["ip", "-6", "addr", "show", "dev", "lo"])
            .contains("::6/128 scope global nodad"));
        assert_eq!(
            ns.exec(&["ip", "rule"]).contains("fwmark 0x539 lookup 133"),
            mode == "TPROXY"
        );
    }

    ns.iptables(&["--clean"]);
    assert_eq!(ns.saved(), before, "--clean did not restore the tables");
    assert_eq!(ns.exec(&["ip", "rule"]), rules_before);
    assert!(!ns
        .exec(&["ip", "-6", "addr", "show", "dev", "lo"])
        .contains("::6"));
    // A second --clean finds nothing.
    assert!(ns.iptables(&["--clean"]).contains("nothing to clean"));

    // A ::6 someone else configured is not ours to remove.
    ns.exec(&["ip", "-6", "addr", "add", "::6/128", "dev", "lo"]);
    ns.iptables(&[]);
    ns.iptables(&["--clean"]);
    assert!(ns
        .exec(&["ip", "-6", "addr", "show", "dev", "lo"])
        .contains("::6/128"));
    assert_eq!(ns.saved(), before);
}

#[test]
#[ignore = "needs root (network namespaces, iptables): sudo tests/run runs it"]
fn errors_say_what_to_do_and_change_nothing() {
    require_root!();
    let ns = pod("err");
    let before = ns.saved();

    let (code, _, err) =
        ns.try_exec(&[&common::netns::AS_PROXY_USER[..], &[REMORA, "iptables"]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("CAP_NET_ADMIN") && err.contains("--dry-run"),
        "{err}"
    );

    let (code, _, err) = ns.try_exec(&["env", "PATH=/nonexistent", REMORA, "iptables"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("`iptables-save` was not found"), "{err}");
    assert!(err.contains("Debian package `iptables`"), "{err}");

    let (code, _, err) = ns.try_exec(&[REMORA, "iptables", "-p", "http"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("'http'") && err.contains("not a port"),
        "{err}"
    );

    let (code, _, err) = ns.try_exec(&[REMORA, "iptables", "-x", "10.0.0.0/40"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("10.0.0.0/40"), "{err}");

    assert_eq!(ns.saved(), before);
}
