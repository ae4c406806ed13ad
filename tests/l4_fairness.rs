//! Fairness on one core: a connection that always has bytes to move must not
//! keep the core from serving its other connections.
//!
//! Behaviour only, no timing goals (those live in perf/): with `--cores 1`, an
//! unbounded bulk transfer runs as fast as its source and sink allow while a
//! second connection does 20 request/response round trips through the same
//! core; they must all be answered while the bulk transfer is still running,
//! and the bulk transfer must keep moving (a core that gives others their turn
//! must not lose the bulk transfer's: see src/turn.rs for the stall that a
//! short preemption timer caused).
//!
//! The hard part is the set-up, not the check. A forwarding loop that never
//! yields still lets others run whenever its source runs dry (recv EAGAIN) or
//! its destination pushes back (send EAGAIN), and on a busy two-CPU machine
//! the test's own threads, waiting for a CPU, cause that every few
//! milliseconds: with default socket buffers the old loop answered these round
//! trips, slowly, more often than not. So the bulk source and sink are made as
//! fast and as steady as a test can make them: the source hands the same pages
//! to the kernel again and again (sendfile from a memfd, no copy) from two
//! threads, the sink discards in the kernel (recv with MSG_TRUNC, no copy) at
//! real-time priority; and, as root, everything runs in a private network
//! namespace whose default TCP buffers are 64 MiB, so that the proxy's own
//! sockets (which a test cannot tune) hold ~50 ms of the transfer at each end
//! and absorb the test threads' scheduling hiccups. Even so the old loop got
//! lucky now and then: see the numbers in the commit that added this test.
//! Without root the test runs in the host namespace: it still checks the
//! behaviour, but is less likely to catch a proxy that starves its core.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// How far the bulk transfer must have got before the round trips start, so
/// that it is in its steady state (socket buffers filled, windows open).
const WARM: u64 = 512 << 20;
/// How much more the bulk transfer must move after the round trips.
const KEEP_MOVING: u64 = 64 << 20;
/// The bulk source's unit of work.
const CHUNK: usize = 1 << 20;
/// Default and maximum TCP buffer sizes in the private namespace.
const DEEP_BUFFERS: &str = "4096 67108864 67108864";

/// The two modes must not run at once: each needs the proxy's core to itself.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// As root: moves the calling thread into a new network namespace (threads and
/// processes it starts afterwards inherit it) with loopback up and deep default
/// TCP buffers. Returns false, changing nothing, when that is not possible.
fn private_network_with_deep_buffers() -> bool {
    if !is_root() {
        return false;
    }
    // SAFETY: affects only the calling thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return false;
    }
    // SAFETY: ifreq is plain data; SIOC[GS]IFFLAGS read and write it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo") {
            *d = *s as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr), 0);
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr),
            0,
            "lo up: {}",
            std::io::Error::last_os_error()
        );
        libc::close(fd);
    }
    // /proc/sys/net follows the namespace of the thread that opens the file.
    for name in ["tcp_rmem", "tcp_wmem"] {
        std::fs::write(format!("/proc/sys/net/ipv4/{name}"), DEEP_BUFFERS).unwrap();
    }
    true
}

/// Real-time priority for the calling thread (root), else the best nice value.
/// The sink spends almost all its time blocked in the kernel; when data
/// arrives it must run at once, not after whatever else wants the CPU, or the
/// proxy's send buffer fills and it has to wait. (The source gets no such
/// treatment: it is CPU-hungry, and at real-time priority on the proxy's
/// CPU it would take the proxy's time instead.)
fn run_promptly() {
    // SAFETY: plain syscalls on the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 1 };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -20);
        }
    }
}

/// The bulk sink: discards whatever arrives, in the kernel, until EOF.
fn sink(s: &TcpStream, sunk: &AtomicU64) {
    run_promptly();
    loop {
        // SAFETY: a NULL buffer is allowed with MSG_TRUNC on TCP, which
        // discards the bytes without copying them out.
        let n = unsafe {
            libc::recv(
                s.as_raw_fd(),
                std::ptr::null_mut(),
                64 << 20,
                libc::MSG_TRUNC,
            )
        };
        if n <= 0 {
            return;
        }
        sunk.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// A backend that looks at the first byte of each connection: `B` is a bulk
/// sink (counts the bytes in `sunk`), `E` an echo.
fn tagged_backend(sunk: Arc<AtomicU64>) -> SocketAddr {
    let l = listener();
    let addr = l.local_addr().unwrap();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let sunk = sunk.clone();
            thread::spawn(move || {
                let mut tag = [0u8; 1];
                if s.read_exact(&mut tag).is_err() {
                    return;
                }
                if tag[0] == b'B' {
                    return sink(&s, &sunk);
                }
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

/// An anonymous in-memory file holding `data`.
fn memfd_with(data: &[u8]) -> std::fs::File {
    // SAFETY: a NUL-terminated name; the returned fd is owned by the File.
    let fd = unsafe { libc::memfd_create(c"bulk".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    f.write_all(data).unwrap();
    f
}

/// Sends the same CHUNK of pages into `s` again and again until `stop`,
/// counting into `sent`.
fn send_pages_until(s: &TcpStream, stop: &AtomicBool, sent: &AtomicU64) -> std::io::Result<()> {
    let file = memfd_with(&vec![0x5au8; CHUNK]);
    while !stop.load(Ordering::Relaxed) {
        let mut off: libc::off_t = 0;
        while (off as usize) < CHUNK {
            // SAFETY: two live fds and a valid offset pointer.
            let n = unsafe {
                libc::sendfile(
                    s.as_raw_fd(),
                    file.as_raw_fd(),
                    &mut off,
                    CHUNK - off as usize,
                )
            };
            if n <= 0 {
                return Err(std::io::Error::last_os_error());
            }
            sent.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// The bulk source: two threads sending into one connection (the sink does
/// not look at the bytes), so that the source outruns the proxy even when
/// one of them waits for a CPU.
fn bulk_source(port: u16, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> std::io::Result<()> {
    let mut s = connect(port);
    s.write_all(b"B")?;
    let second = {
        let (s, stop, sent) = (s.try_clone()?, stop.clone(), sent.clone());
        thread::spawn(move || send_pages_until(&s, &stop, &sent))
    };
    send_pages_until(&s, &stop, &sent)?;
    second.join().unwrap()?;
    s.shutdown(Shutdown::Write)
}

fn bulk_transfer_does_not_starve_the_core(mode: &str) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !private_network_with_deep_buffers() {
        eprintln!("{mode}: not root, running in the host network namespace");
    }
    let sunk = Arc::new(AtomicU64::new(0));
    let backend = tagged_backend(sunk.clone());
    let p = free_port();
    let r = Remora::start(
        &l4_config(backend, &[("f", p, mode)], ""),
        &["--cores", "1"],
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let bulk = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || bulk_source(p, stop, sent))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while sunk.load(Ordering::Relaxed) < WARM {
        assert!(
            !bulk.is_finished(),
            "{mode}: bulk source stopped early: {:?}",
            bulk.join()
        );
        assert!(
            Instant::now() < deadline,
            "{mode}: bulk transfer never reached {WARM} bytes"
        );
        thread::sleep(Duration::from_millis(10));
    }

    // Meanwhile, 20 round trips on a second connection through the same core.
    let sunk_before = sunk.load(Ordering::Relaxed);
    let mut rpc = connect(p);
    // A liveness bound, not a latency goal: with the proxy yielding at its
    // preemption timer, the slowest round trip seen on a loaded 2-CPU VM took
    // ~1 s (now that it yields every budget through the reactor, ~1-10 ms).
    // The old loop left single round trips waiting 10 s and more.
    rpc.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    rpc.write_all(b"E").unwrap();
    let mut rtts = Vec::new();
    for i in 0..20u64 {
        let req = payload(100, i + 1);
        let t = Instant::now();
        rpc.write_all(&req).unwrap();
        let mut resp = vec![0u8; req.len()];
        if let Err(e) = rpc.read_exact(&mut resp) {
            panic!(
                "{mode}: round trip {i} got no answer while the bulk transfer ran \
                 ({e}): the transfer is starving its core"
            );
        }
        assert!(resp == req, "{mode}: round trip {i} corrupted");
        rtts.push(t.elapsed());
    }

    // The bulk transfer was still under way: its source has not finished, and
    // it is still writing (a bounded wait: the round trips may have been quick).
    assert!(
        !bulk.is_finished(),
        "{mode}: bulk source ended during the round trips: {:?}",
        bulk.join()
    );
    let (sent_after, sunk_after) = (sent.load(Ordering::Relaxed), sunk.load(Ordering::Relaxed));
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.load(Ordering::Relaxed) == sent_after {
        assert!(Instant::now() < deadline, "{mode}: bulk source stalled");
        thread::sleep(Duration::from_millis(1));
    }
    // And the proxy still moves it: KEEP_MOVING more bytes reach the sink
    // (~0.1 s of the transfer at the rates seen here; the bound is liveness).
    let deadline = Instant::now() + Duration::from_secs(20);
    while sunk.load(Ordering::Relaxed) < sunk_after + KEEP_MOVING {
        assert!(
            Instant::now() < deadline,
            "{mode}: the proxy stopped moving the bulk transfer after the round trips \
             ({} bytes in 20 s)",
            sunk.load(Ordering::Relaxed) - sunk_after
        );
        thread::sleep(Duration::from_millis(1));
    }
    rtts.sort();
    eprintln!(
        "{mode}: 20 round trips during a bulk transfer ({} MiB moved meanwhile): \
         median {:?}, max {:?}",
        (sunk_after - sunk_before) >> 20,
        rtts[rtts.len() / 2],
        rtts[rtts.len() - 1]
    );

    stop.store(true, Ordering::Relaxed);
    bulk.join().unwrap().unwrap();
    drop(rpc);
    let (code, totals) = r.stop();
    assert_eq!(code, 0);
    assert_eq!(totals.get("downstream_cx_total"), 2);
    assert_eq!(totals.get("cx_reset"), 0);
}

#[test]
fn bulk_transfer_does_not_starve_the_core_copy() {
    bulk_transfer_does_not_starve_the_core("copy");
}

#[test]
fn bulk_transfer_does_not_starve_the_core_splice() {
    bulk_transfer_does_not_starve_the_core("splice");
}
