//! Starting and stopping the shards: one pinned glommio executor per core.
//!
//! [`start`] checks the host (kernel, io_uring, locked memory), picks the CPUs the
//! process may use (taskset and cgroup cpusets honoured; glommio's own
//! `CpuSet::online()` ignores them), starts one executor per CPU, and waits until
//! every executor has bound its listeners or one has failed. Start-up errors are
//! [`StartError`]s whose messages say what to do.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_lite::io::AsyncReadExt;
use glommio::net::UnixStream;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use thiserror::Error;
use tracing::{info, warn};

use crate::access_log::CoreLog;
use crate::config::ConfigHandle;
use crate::listener;
use crate::net::socket;
use crate::overload::OverloadHandle;
use crate::shard::{BoundListener, Command, HostFacts, Shard, ShardSpec};
use crate::stats::{CoreReport, StatsHub};
use crate::upstream::control::UpstreamView;

/// glommio's reactor refuses to start below this RLIMIT_MEMLOCK (per process).
pub const MIN_MEMLOCK: u64 = 512 * 1024;
/// Registered-buffer memory per executor. Remora does no file I/O, so glommio's
/// 10 MiB default would only cost locked, resident memory; 64 KiB is its floor.
const IO_MEMORY: usize = 64 * 1024;
/// Submission queue depth per ring.
const RING_DEPTH: usize = 256;

#[derive(Debug, Error)]
pub enum StartError {
    #[error("port {addr} is already in use by another process (see `ss -ltnp 'sport = :{port}'`); stop it or choose another port in the config", port = addr.port())]
    PortInUse { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("the locked-memory limit (RLIMIT_MEMLOCK, `ulimit -l`) is {have_kib} KiB; io_uring needs at least {need_kib} KiB. Raise it: `ulimit -l 8192` in the shell, LimitMEMLOCK=8M for systemd, or --ulimit memlock=8388608 for docker")]
    MemLock { have_kib: u64, need_kib: u64 },
    #[error("io_uring is not available: {0}. Remora needs Linux 5.8 or newer with io_uring enabled (sysctl kernel.io_uring_disabled=0)")]
    IoUring(String),
    #[error("kernel {0} is too old: Remora needs Linux 5.8 or newer (io_uring with fast poll)")]
    KernelTooOld(String),
    #[error("--cores {asked} but this process may only run on {allowed} CPU(s) ({cpus:?}); lower --cores or widen the CPU affinity")]
    TooManyCores {
        asked: usize,
        allowed: usize,
        cpus: Vec<usize>,
    },
    #[error("{0}")]
    AccessLog(String),
    #[error("cannot start executor {core}: {detail}")]
    Executor { core: usize, detail: String },
}

/// A running proxy: its shards and their control sockets.
pub struct Proxy {
    controls: Vec<StdUnixStream>,
    handles: Mutex<Vec<ExecutorJoinHandle<CoreReport>>>,
    hub: Arc<StatsHub>,
    generation: AtomicU64,
    /// The CPUs the shards are pinned to, in shard order.
    pub cpus: Vec<usize>,
    /// Time from `start` being called to every listener being bound.
    pub startup: Duration,
    /// The overload manager's published state (for the admin's gauges).
    pub overload: OverloadHandle,
}

impl Proxy {
    /// Sends `cmd` to every core.
    pub fn send(&self, cmd: Command) {
        let frame = cmd.encode();
        for mut c in &self.controls {
            // A core that already exited has closed its end; nothing to tell it.
            let _ = c.write_all(&frame);
        }
    }

    /// Stops accepting on every core; open connections drain (see [`run_shard`]).
    pub fn shutdown(&self) {
        self.send(Command::Stop);
    }

    /// Asks every core for its counters and histograms and sums them.
    pub fn stats(&self) -> (CoreReport, Vec<CoreReport>) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.send(Command::Report(generation));
        self.hub.collect(generation, Duration::from_secs(2))
    }

    /// Waits for every shard to finish and returns the summed final reports.
    pub fn join(&self) -> CoreReport {
        let mut total = CoreReport::default();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for h in handles {
            if let Ok(c) = h.join() {
                total.add(&c);
            }
        }
        total
    }
}

/// The CPUs this process may run on (sched_getaffinity), in ascending order.
pub fn allowed_cpus() -> Vec<usize> {
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(set) => (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Registers the process for private expedited `membarrier(2)` while it is still
/// single-threaded. Call it first thing in `main`, before any thread exists.
///
/// Why: glommio issues `MEMBARRIER_CMD_PRIVATE_EXPEDITED` each time an executor
/// goes to sleep, and registers for it lazily the first time, on the executor's
/// own thread, right after the listeners are bound. With more than one thread in
/// the process the kernel's registration waits for an RCU grace period
/// (`sync_runqueues_membarrier_state` -> `synchronize_rcu`): measured here with
/// `strace -f -T`, 10 ms, during which the first connection sat in the accept
/// queue. With a single thread the kernel skips that wait, and glommio's own
/// registration later finds the process registered and returns at once.
/// Failure (a kernel without the command) is harmless: glommio falls back to its
/// `mprotect` barrier as before.
pub fn register_membarrier_early() -> bool {
    const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;
    const NO_FLAGS: libc::c_long = 0;
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            NO_FLAGS,
        ) == 0
    }
}

/// Checks what glommio would otherwise report obscurely (or, for memlock, by
/// exiting silently: FACTS.md).
pub fn preflight() -> Result<(), StartError> {
    let uname = nix::sys::utsname::uname().map_err(|e| StartError::IoUring(e.to_string()))?;
    let release = uname.release().to_string_lossy().into_owned();
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    if (major, minor) < (5, 8) {
        return Err(StartError::KernelTooOld(release));
    }
    if let Ok(s) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        match s.trim() {
            "2" => return Err(StartError::IoUring("kernel.io_uring_disabled is 2".into())),
            "1" if !nix::unistd::geteuid().is_root() => {
                return Err(StartError::IoUring(
                    "kernel.io_uring_disabled is 1 (only root or kernel.io_uring_group may use it)"
                        .into(),
                ))
            }
            _ => {}
        }
    }
    let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .map_err(|e| StartError::IoUring(e.to_string()))?;
    if soft < MIN_MEMLOCK {
        return Err(StartError::MemLock {
            have_kib: soft / 1024,
            need_kib: MIN_MEMLOCK / 1024,
        });
    }
    Ok(())
}

/// Starts one shard per core and returns once all are listening.
pub fn start(
    config: Arc<ConfigHandle>,
    upstream: UpstreamView,
    tls: crate::tls::TlsHandle,
    cores: Option<usize>,
) -> Result<Proxy, StartError> {
    let began = Instant::now();
    preflight()?;
    let snapshot = config.current();
    let allowed = allowed_cpus();
    let n = cores
        .or(snapshot.config.runtime.cores)
        .unwrap_or(allowed.len());
    if n > allowed.len() {
        return Err(StartError::TooManyCores {
            asked: n,
            allowed: allowed.len(),
            cpus: allowed,
        });
    }
    let cpus: Vec<usize> = allowed[..n].to_vec();
    let host = HostFacts {
        v6_source_usable: snapshot
            .config
            .capture
            .as_ref()
            .is_some_and(|c| c.ipv6 && socket::can_bind(c.inbound_source_v6.into())),
    };
    let hub = Arc::new(StatsHub::new(n));
    let overload = OverloadHandle::new(n);
    let mut controls = Vec::with_capacity(n);
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();
    let mut handles = Vec::with_capacity(n);
    for (id, &cpu) in cpus.iter().enumerate() {
        let access_log = match &snapshot.config.access_log {
            Some(cfg) => {
                Some(CoreLog::open(cfg).map_err(|e| StartError::AccessLog(e.to_string()))?)
            }
            None => None,
        };
        let spec = ShardSpec {
            id,
            config: config.clone(),
            hub: hub.clone(),
            host,
            access_log,
            upstream: upstream.clone(),
            cores: n,
            tls: tls.clone(),
            overload: overload.clone(),
        };
        let (ours, theirs) =
            StdUnixStream::pair().map_err(|e| executor_error(id, e.to_string()))?;
        controls.push(ours);
        let theirs = theirs.into_raw_fd();
        let ready = ready_tx.clone();
        let spawned = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("remora-{id}"))
            .io_memory(IO_MEMORY)
            .ring_depth(RING_DEPTH)
            .spawn(move || async move {
                let rt = &spec.config.current().config.runtime;
                crate::net::batch::set_max_wait(rt.batch_wait);
                crate::net::batch::set_sleep_wait(rt.sleep_batch_wait);
                let bound = listener::bind_all(&spec.config.current().config);
                match bound {
                    Ok(listeners) => {
                        let _ = ready.send(Ok(()));
                        // Dropping the sender lets `start` see when every shard has
                        // either reported or died without reporting.
                        drop(ready);
                        // SAFETY: the fd came from into_raw_fd and is owned here only.
                        let control = unsafe { UnixStream::from_raw_fd(theirs) };
                        run_shard(spec, listeners, control).await
                    }
                    Err((addr, e)) => {
                        let err = if e.kind() == io::ErrorKind::AddrInUse {
                            StartError::PortInUse { addr }
                        } else {
                            StartError::Listen { addr, source: e }
                        };
                        let _ = ready.send(Err(err));
                        CoreReport::default()
                    }
                }
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(e) => {
                // Dropping `controls` tells the shards already started to stop.
                return Err(executor_error(id, e.to_string()));
            }
        }
    }
    drop(ready_tx);
    let mut failure = None;
    let mut ok = 0;
    // Ends when every sender is gone: each shard reported, or died before it could.
    while let Ok(r) = ready_rx.recv() {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failure.get_or_insert(e);
            }
        }
    }
    // The overload monitor tells the cores through their control sockets,
    // as a reload does.
    let monitor_controls: Vec<StdUnixStream> =
        controls.iter().filter_map(|c| c.try_clone().ok()).collect();
    let proxy = Proxy {
        controls,
        handles: Mutex::new(handles),
        hub,
        generation: AtomicU64::new(0),
        cpus,
        startup: began.elapsed(),
        overload,
    };
    if failure.is_some() || ok < n {
        proxy.shutdown();
        let mut reason = None;
        let handles = std::mem::take(&mut *proxy.handles.lock().unwrap_or_else(|p| p.into_inner()));
        for (core, h) in handles.into_iter().enumerate() {
            if let Err(e) = h.join() {
                reason.get_or_insert_with(|| executor_error(core, e.to_string()));
            }
        }
        return Err(failure.or(reason).unwrap_or(StartError::Executor {
            core: 0,
            detail: "executor exited during start-up".into(),
        }));
    }
    let frame = Command::Overload.encode();
    let notify = move || {
        let mut told = false;
        for mut c in &monitor_controls {
            told |= c.write_all(&frame).is_ok();
        }
        told
    };
    if let Err(e) = proxy.overload.start_monitor(config.clone(), notify) {
        warn!(error = %e, "cannot start the overload monitor thread; [overload] is not enforced");
    }
    let rings = crate::net::uring::ring_counts();
    info!(
        cores = n,
        cpus = ?proxy.cpus,
        defer_taskrun_rings = rings.deferred,
        coop_taskrun_rings = rings.coop,
        plain_rings = rings.plain,
        "shards listening"
    );
    listener::log_added(&snapshot.config);
    Ok(proxy)
}

fn executor_error(core: usize, detail: String) -> StartError {
    if detail.contains("MemLockLimit") || detail.contains("memlock") {
        let (soft, _) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
            .unwrap_or((0, 0));
        return StartError::MemLock {
            have_kib: soft / 1024,
            need_kib: MIN_MEMLOCK / 1024,
        };
    }
    StartError::Executor { core, detail }
}

/// Runs one core until told to stop and its connections have drained;
/// returns its final report.
pub async fn run_shard(
    spec: ShardSpec,
    listeners: Vec<BoundListener>,
    control: UnixStream,
) -> CoreReport {
    let mut spec = spec;
    let shard = Rc::new(Shard::new(&mut spec));
    crate::deadline::start();
    if shard.access_log.is_some() {
        // Envoy flushes access logs on a timer too; this wakes the core once a
        // second only when the access log is on (on the deadline sweeper:
        // no glommio timer stays armed between flushes).
        let s = shard.clone();
        glommio::spawn_local(async move {
            loop {
                crate::deadline::sleep(Duration::from_secs(1)).await;
                if let Some(log) = &s.access_log {
                    log.flush();
                }
            }
        })
        .detach();
    }
    for l in listeners {
        listener::start(&shard, l);
    }
    let mut control = control;
    loop {
        let mut frame = [0u8; 9];
        // EOF or an error on the control socket means the process is going away.
        let cmd = match control.read_exact(&mut frame).await {
            Ok(()) => Command::decode(frame),
            Err(_) => Some(Command::Stop),
        };
        match cmd {
            Some(Command::Report(generation)) => {
                spec.hub.deposit(shard.id, generation, shard.report())
            }
            Some(Command::Reconcile) => listener::reconcile(&shard),
            Some(Command::DrainListeners) => {
                shard.start_drain();
                listener::close(&shard, |_| false);
            }
            Some(Command::Overload) => shard.apply_overload(),
            Some(Command::Stop) => break,
            None => warn!(core = shard.id, "unknown control frame ignored"),
        }
    }
    shard.start_drain();
    listener::close(&shard, |_| false);
    shard.stopping.close();
    shard.idle.stop();
    // The listeners shut once their handshakes under way are in
    // (listener::CLOSE_GRACE); their accept loops end then, and may bring a
    // connection the kernel accepted meanwhile. Then drain what is open, up
    // to the deadline.
    let drain = shard.config.current().config.runtime.drain_timeout;
    let deadline = Instant::now() + drain;
    while shard.accept_loops.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let open = shard.stats.downstream_cx_active.get();
    if open > 0 {
        info!(
            core = shard.id,
            open,
            ?drain,
            "listeners closed; draining open connections"
        );
    }
    while shard.stats.downstream_cx_active.get() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    let left = shard.stats.downstream_cx_active.get();
    if left > 0 {
        warn!(
            core = shard.id,
            left, "drain timeout reached; closing open connections"
        );
    }
    if let Some(log) = &shard.access_log {
        log.flush();
    }
    shard.report()
}
