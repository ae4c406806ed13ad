//! Shared test support: run the built `remora` binary on real sockets.
#![allow(dead_code)]

pub mod certs;
pub mod envoy;
pub mod h2peer;
pub mod http;
pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_remora");

/// A helper process that prints "ready" on its first line of stdout once it
/// serves (the Python peers and upstreams of the tests); killed and reaped
/// on drop, so a test that fails leaves nothing running.
pub struct ReadyChild(Child);

impl ReadyChild {
    /// Starts `cmd` (its stdout piped here) and waits for its "ready".
    pub fn spawn(cmd: &mut Command) -> ReadyChild {
        let mut child = cmd.stdout(Stdio::piped()).spawn().expect("spawn");
        let stdout = child.stdout.take().unwrap();
        let child = ReadyChild(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the helper did not start");
        child
    }
}

impl Drop for ReadyChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An example binary (examples/NAME) started with `args`, stdio discarded;
/// killed and reaped on drop. Plain `cargo test` builds the examples beside
/// the test binaries (target/PROFILE/deps/THIS -> target/PROFILE/examples/NAME),
/// and so does tests/run (`cargo build --examples`).
pub struct Example(Child);

impl Example {
    pub fn spawn(name: &str, args: &[String]) -> Example {
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("examples")
            .join(name);
        assert!(
            bin.exists(),
            "{} missing: plain `cargo test` and tests/run build it; \
             `cargo test --all-targets` alone does not (`cargo build --examples` first)",
            bin.display()
        );
        Example(
            Command::new(&bin)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago, for a config file (Remora binds its
/// listeners itself, one SO_REUSEPORT socket per core, so tests cannot hand
/// it a bound port 0).
///
/// Taken from below the kernel's ephemeral range (32768-60999 here), from
/// a per-process counter that starts at an offset drawn from the pid. A port
/// from `bind :0` (as before) is an ephemeral one: under the full suite's
/// load the same port went to a parallel test's outgoing connection or to
/// another test's `bind :0` before the sidecar bound it, and because
/// Remora's listeners are SO_REUSEPORT, two sidecars of two tests could even
/// share it, each getting the other's connections (seen: a 400 from the
/// wrong proxy, a certificate of another test's mesh, a config with the same
/// port twice). The counter never repeats a port inside one test process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    const SPAN: u32 = 32_768 - LOW;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (LOW + (start + n) % SPAN) as u16;
        // Without SO_REUSEADDR/SO_REUSEPORT: fails if anything has it bound.
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below 32768 on 127.0.0.1");
}

/// An address that refuses connections (RST) for as long as the returned
/// socket lives: bound, never listening. A port only bound and closed again,
/// as `free_port` gives, can be taken by a test running in parallel, which
/// would then answer for the "dead" endpoint.
#[allow(dead_code)]
pub fn refusing_addr() -> (SocketAddr, socket2::Socket) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    (addr, s)
}

/// A temp directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "remora-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running proxy process. Its stderr is collected line by line and
/// printed if the test fails while this guard is alive (a panic drops it).
///
/// Dropping it kills the process and then waits until the process's
/// listening sockets are gone. They can outlive the process: an in-flight
/// io_uring ACCEPT holds a reference to its listener, and the kernel tears
/// a dead process's rings down asynchronously, so for a few milliseconds
/// (longer on a loaded machine) the listener still completes handshakes
/// nobody will accept. A sidecar started again on the same port in that
/// window joins the dead one's SO_REUSEPORT group, and the connections hashed
/// to the orphan are reset when it finally closes (seen in
/// tls_netns::disable_does_not_terminate_so_mesh_mtls_fails_and_plaintext_works).
pub struct Remora {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    dir: TempDir,
    /// The process's listening sockets and its network namespace, taken
    /// before it is signalled (its /proc entry goes when it is reaped).
    listening: Option<Listening>,
}

impl Remora {
    /// Starts `remora run --config <toml>` with extra args and waits for "ready".
    pub fn start(toml: &str, args: &[&str]) -> Remora {
        Self::start_with(toml, args, |c| c)
    }

    /// Like `start`, with a hook to adjust the command (e.g. wrap it in prlimit).
    pub fn start_with(toml: &str, args: &[&str], f: impl FnOnce(Command) -> Command) -> Remora {
        let dir = TempDir::new("cfg");
        let cfg = dir.file("remora.toml", toml);
        let mut cmd = Command::new(BIN);
        cmd.arg("run").arg("--config").arg(&cfg).args(args);
        let mut r = Self::spawn(f(cmd), dir);
        r.wait_ready();
        r
    }

    /// Waits for the line Remora logs once every listener is bound; panics
    /// with the log if it exits first. Not `wait_for_log("ready")`: that
    /// also matches "port … is already in use", and a proxy that failed to
    /// start (a port taken by a parallel test between `free_port` and the
    /// bind) passed for ready, its test failing seconds later with a refused
    /// connect or another process's answer.
    pub fn wait_ready(&mut self) {
        self.wait_for_log(" ready startup_ms=");
    }

    /// Runs `cmd` with stderr collected. NO_COLOR is set unless `cmd` sets
    /// or removes it itself (a test of the default). RUST_LOG is removed
    /// (the config's level applies) unless `cmd` sets it, or
    /// REMORA_TEST_LOG is set: `REMORA_TEST_LOG=debug cargo test ...` runs
    /// every proxy at that level, to reproduce a failure with its story.
    pub fn spawn(mut cmd: Command, dir: TempDir) -> Remora {
        if !cmd.get_envs().any(|(k, _)| k == "NO_COLOR") {
            cmd.env("NO_COLOR", "1");
        }
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            match std::env::var("REMORA_TEST_LOG") {
                Ok(level) => cmd.env("RUST_LOG", level),
                Err(_) => cmd.env_remove("RUST_LOG"),
            };
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // If the test binary dies without dropping this (killed by a timeout,
        // a double panic), the proxy dies with it instead of living on with
        // the test's ports and inherited fds (a `flock` lock, for one).
        // The signal follows the spawning thread, which is the test's: every
        // test drops its Remora before its thread ends.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("spawn remora");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Remora {
            child,
            lines: rx,
            log: Vec::new(),
            dir,
            listening: None,
        }
    }

    /// Waits (bounded) for a stderr line containing `needle`; panics with the log so far.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.log.push(line.clone());
                    if hit {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?}; exit: {:?}; log:\n{}",
                    self.child.try_wait(),
                    self.log.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, wait for exit, return (exit code, final totals line).
    pub fn stop(mut self) -> (i32, Counters) {
        self.listening = Listening::of(self.child.id());
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        // Drain the rest of stderr.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(l);
        }
        let totals = self
            .log
            .iter()
            .find(|l| l.contains("stopped"))
            .map(|l| Counters::parse(l))
            .unwrap_or_else(|| panic!("no totals in log:\n{}", self.log.join("\n")));
        (status.code().unwrap_or(-1), totals)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// The config file `start` wrote (rewrite it to test reloads).
    pub fn config_path(&self) -> PathBuf {
        self.dir.0.join("remora.toml")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Remora {
    fn drop(&mut self) {
        let exited = matches!(self.child.try_wait(), Ok(Some(_)));
        if !exited && self.listening.is_none() {
            self.listening = Listening::of(self.child.id());
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            self.dump_log();
        }
        if let Some(l) = self.listening.take() {
            l.wait_gone(Duration::from_secs(10));
        }
    }
}

impl Remora {
    /// Prints the whole stderr of the (dead) process to the test's output.
    fn dump_log(&mut self) {
        // The process is gone: its stderr ends, then the reader thread hangs up.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.log.push(l);
        }
        eprintln!(
            "──── remora (pid {}, config {}) stderr, kept because the test failed ────\n{}\n──── end of remora's stderr ({} lines; REMORA_TEST_LOG=debug for more) ────",
            self.child.id(),
            self.config_path().display(),
            self.log.join("\n"),
            self.log.len()
        );
    }
}

/// A process's listening TCP sockets (by inode) and a handle on its network
/// namespace, to wait for the sockets to be gone once it has been killed.
struct Listening {
    netns: std::fs::File,
    inodes: Vec<u64>,
}

impl Listening {
    /// What `pid` listens on now; None if it cannot be read (already gone).
    fn of(pid: u32) -> Option<Listening> {
        let netns = std::fs::File::open(format!("/proc/{pid}/ns/net")).ok()?;
        let mut inodes = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
            let Ok(target) = std::fs::read_link(e.path()) else {
                continue;
            };
            let t = target.to_string_lossy();
            if let Some(n) = t.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                inodes.extend(n.parse::<u64>().ok());
            }
        }
        // Only the ones in LISTEN state (the fds include connections).
        let listening = listening_inodes(&format!("/proc/{pid}/net"));
        inodes.retain(|i| listening.contains(i));
        Some(Listening { netns, inodes })
    }

    /// Waits (at most `within`) until none of the sockets listens any more
    /// in the namespace; says so on stderr if one still does.
    fn wait_gone(self, within: Duration) {
        if self.inodes.is_empty() {
            return;
        }
        let Listening { netns, inodes } = self;
        let left = thread::spawn(move || {
            // Enter the process's namespace (a pod's) unless it is ours:
            // /proc/thread-self/net then lists that namespace's sockets.
            use std::os::unix::fs::MetadataExt;
            let ours = std::fs::metadata("/proc/thread-self/ns/net").map(|m| m.ino());
            let theirs = netns.metadata().map(|m| m.ino());
            if ours.ok() != theirs.ok() {
                use std::os::fd::AsFd;
                if nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).is_err() {
                    return Vec::new();
                }
            }
            let deadline = Instant::now() + within;
            loop {
                let now = listening_inodes("/proc/thread-self/net");
                let left: Vec<u64> = inodes.iter().copied().filter(|i| now.contains(i)).collect();
                if left.is_empty() || Instant::now() >= deadline {
                    return left;
                }
                thread::sleep(Duration::from_millis(2));
            }
        })
        .join()
        .unwrap_or_default();
        if !left.is_empty() {
            eprintln!(
                "remora's listening sockets {left:?} still listen {within:?} after it was killed"
            );
        }
    }
}

/// The inodes of the TCP sockets in LISTEN state in `net` (a /proc/…/net dir).
fn listening_inodes(net: &str) -> Vec<u64> {
    listening_sockets(net).into_iter().map(|(_, i)| i).collect()
}

/// (port, inode) of every TCP socket in LISTEN state in `net`, a /proc/…/net
/// directory (`/proc/thread-self/net`: the calling thread's namespace).
pub fn listening_sockets(net: &str) -> Vec<(u16, u64)> {
    const LISTEN: &str = "0A";
    let mut v = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("{net}/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() <= 9 || f[3] != LISTEN {
                continue;
            }
            let port = f[1]
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, f[9].parse::<u64>()) {
                v.push((port, inode));
            }
        }
    }
    v
}

/// The `key=value` totals remora logs when it stops.
#[derive(Debug, Default)]
pub struct Counters(pub Vec<(String, u64)>);

impl Counters {
    pub fn parse(line: &str) -> Counters {
        Counters(
            line.split_whitespace()
                .filter_map(|w| {
                    let w = w.trim_start_matches("totals=");
                    let (k, v) = w.split_once('=')?;
                    Some((k.to_string(), v.trim_matches('"').parse().ok()?))
                })
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> u64 {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("no counter {k} in {:?}", self.0))
    }
}

/// The start of a test config: a short drain, no admin listener, no
/// capture ports (tests bind their own listeners on free ports).
pub const TEST_PREAMBLE: &str =
    "[runtime]\ndrain_timeout = \"2s\"\n[admin]\nenabled = false\n[capture]\nenabled = false\n";

/// Config with capture off and one listener per (name, port, mode) to `backend`.
pub fn l4_config(backend: SocketAddr, listeners: &[(&str, u16, &str)], extra: &str) -> String {
    let mut s = format!(
        "{TEST_PREAMBLE}[[cluster]]\nname = \"backend\"\nendpoints = [\"{backend}\"]\nconnect_timeout = \"2s\"\n{extra}\n"
    );
    for (name, port, mode) in listeners {
        s += &format!(
            "[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"backend\"\nforwarding = \"{mode}\"\n"
        );
    }
    s
}

/// A loopback listener with a deep backlog (std's 128 overflows when a test
/// opens a thousand connections at once, and dropped SYNs stall for seconds).
pub fn listener() -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(4096).unwrap();
    s.into()
}

/// An echo server: every connection gets its bytes back; on EOF it half-closes.
pub fn echo_server() -> SocketAddr {
    let l = listener();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Connects to a proxy port, retrying briefly while the listener comes up.
pub fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connect to {port}: {e}"),
        }
    }
}

/// Deterministic pseudo-random payload.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn is_root() -> bool {
    // SAFETY: trivial syscall.
    unsafe { libc::geteuid() == 0 }
}
