//! The io_uring shim (`src/net/uring.rs`) must be linked in and must pick the
//! right ring: if build.rs loses a `--wrap` argument, glommio's rings are
//! created without COOP_TASKRUN and every completion costs an inter-processor
//! interrupt (FACTS.md: 36k vs 85k req/s), or a deferred ring's completions
//! are never collected and the executor stalls. If glommio's order of ring
//! creation changes, DEFER_TASKRUN lands on the latency ring, whose
//! completions glommio reads without entering the kernel, and timers and
//! sleeps stop waking it. These tests fail in each case.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use remora::net::uring;

/// The running kernel is at least `major.minor`.
fn kernel_at_least(want: (u32, u32)) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    (major, minor) >= want
}

/// A kernel with DEFER_TASKRUN (6.1+): the shim must use it there.
fn kernel_has_defer_taskrun() -> bool {
    kernel_at_least((6, 1))
}

/// Runs `f` on a thread of its own (as Remora's shards run) and returns its
/// result, failing the test if it does not finish in time: a lost completion
/// is a hang.
fn on_own_thread<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the executor stalled (or panicked): a completion was not delivered")
}

/// `rounds` echoed messages of N bytes, each after a pause long enough that
/// the other side's read has to wait on its ring.
fn round_trips<const N: usize>(s: &mut std::net::TcpStream, rounds: u8, pause: Duration) {
    for round in 0..rounds {
        std::thread::sleep(pause);
        s.write_all(&[round; N]).unwrap();
        let mut back = [0u8; N];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, [round; N]);
    }
}

/// Binds a listener on the executor, tells the peer where, and accepts its
/// one connection.
async fn accept_peer(tx: std::sync::mpsc::Sender<std::net::SocketAddr>) -> glommio::net::TcpStream {
    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tx.send(listener.local_addr().unwrap()).unwrap();
    listener.accept().await.unwrap()
}

/// A glommio stream's socket as a [`remora::net::tcp::Tcp`] (a dup; the
/// glommio stream is closed).
fn tcp_of(s: glommio::net::TcpStream) -> remora::net::tcp::Tcp {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: a dup of a live descriptor, owned by the Tcp from here.
    unsafe { remora::net::tcp::Tcp::from_raw_fd(libc::dup(s.as_raw_fd())) }
}

/// Echoes `rounds` messages of N bytes: the other side of [`round_trips`].
async fn echo<const N: usize>(conn: &mut glommio::net::TcpStream, rounds: u8) {
    let mut buf = [0u8; N];
    for _ in 0..rounds {
        conn.read_exact(&mut buf).await.unwrap();
        conn.write_all(&buf).await.unwrap();
    }
}

fn executor() -> glommio::LocalExecutor {
    builder().make().expect("executor")
}

/// An executor like [`executor`]'s whose preemption timer fires every `period`.
fn executor_preempting_every(period: Duration) -> glommio::LocalExecutor {
    builder().preempt_timer(period).make().expect("executor")
}

fn builder() -> glommio::LocalExecutorBuilder {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound).io_memory(64 * 1024)
}

#[test]
fn glommio_rings_go_through_the_shim() {
    let (before, after) = on_own_thread(|| {
        let before = uring::ring_counts();
        executor().run(async {});
        (before, uring::ring_counts())
    });
    // glommio makes a main and a latency ring (interrupt-driven) and an IOPOLL
    // ring. Other tests make executors in parallel, so only lower bounds hold.
    let task_run = (after.deferred - before.deferred) + (after.coop - before.coop);
    assert!(
        task_run >= 2,
        "rings were not created through __wrap_io_uring_queue_init_params: {after:?}"
    );
    if kernel_has_defer_taskrun() {
        assert!(
            after.deferred > before.deferred,
            "no ring got DEFER_TASKRUN on a 6.1+ kernel: {after:?}"
        );
    }
}

/// glommio cancels its preemption timers on every pass of its loop; the
/// shim must recognise those cancels and submit them as timeout removals
/// (`uring::cancels_as_removes`), while the executor's timers and reads
/// keep working. If glommio stops cancelling timers this way, the count
/// stays at zero and this fails: the rewrite would be dead code.
#[test]
fn glommios_timer_cancels_go_in_as_removals() {
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        round_trips::<64>(&mut s, 20, Duration::from_millis(2));
    });
    let (rewritten, slept) = on_own_thread(move || {
        // Kept timers' cancels never reach the kernel (the next test).
        uring::keep_on_this_thread(false);
        executor().run(async move {
            let before = uring::cancels_rewritten_on_this_thread();
            let mut conn = accept_peer(tx).await;
            echo::<64>(&mut conn, 20).await;
            let start = Instant::now();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            (
                uring::cancels_rewritten_on_this_thread() - before,
                start.elapsed(),
            )
        })
    });
    peer.join().unwrap();
    assert!(
        rewritten >= 20,
        "only {rewritten} of glommio's timer cancels went in as removals"
    );
    assert!(
        slept >= Duration::from_millis(20),
        "a 20 ms timer fired after {slept:?}"
    );
}

/// glommio replaces its preemption timers on every pass of its loop; the
/// shim keeps the armed ones instead (`src/net/uring/keep.rs`): each
/// replacement adopts the timer it replaces. The executor must not notice:
/// reads that wait, a sleep's timer, and preemption all still work, and a
/// count timer kept across passes still fires. If glommio stops replacing
/// its timers this way the adoption count stays at zero and this fails.
#[test]
fn glommios_preemption_timers_are_kept_across_passes() {
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        round_trips::<64>(&mut s, 20, Duration::from_millis(2));
        // Back to back: hundreds of completions, past glommio's count
        // timer (one per ring depth of them), kept across those passes.
        round_trips::<64>(&mut s, 200, Duration::ZERO);
    });
    let (adopted, removed, slept, preempted) = on_own_thread(move || {
        uring::keep_on_this_thread(true);
        executor().run(async move {
            let adopted = uring::timers_adopted_on_this_thread();
            let removed = uring::orphans_removed_on_this_thread();
            let mut conn = accept_peer(tx).await;
            echo::<64>(&mut conn, 20).await;
            echo::<64>(&mut conn, 200).await;
            let start = Instant::now();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let slept = start.elapsed();
            // A task that never yields is asked to: the preemption timer
            // armed (kept) when it started still fires.
            let start = Instant::now();
            while !glommio::executor().need_preempt() && start.elapsed() < Duration::from_secs(5) {
                std::hint::spin_loop();
            }
            (
                uring::timers_adopted_on_this_thread() - adopted,
                uring::orphans_removed_on_this_thread() - removed,
                slept,
                glommio::executor().need_preempt(),
            )
        })
    });
    peer.join().unwrap();
    assert!(
        adopted >= 20,
        "only {adopted} of glommio's replaced timers were kept"
    );
    assert!(
        removed >= 1,
        "the sleep's timer should have had the orphaned preemption timer removed"
    );
    assert!(
        slept >= Duration::from_millis(20) && slept < Duration::from_secs(5),
        "a 20 ms timer fired after {slept:?}"
    );
    assert!(preempted, "a task that never yielded was never asked to");
}

/// Before each sleep glommio polls its latency ring's descriptor from the
/// main ring, so that a timer wakes the sleep; a sleep woken by a socket
/// leaves that poll armed, and the shim lets the next sleep's poll adopt
/// it (`src/net/uring/keep.rs`). Here the executor sleeps between round
/// trips (woken by its socket), so the polls pile up on one armed poll;
/// then a timer must still wake it, through that poll. If glommio stops
/// polling this way the count stays at zero and this fails.
///
/// Any completion on the latency ring fires the armed poll, and the next
/// sleep arms a fresh one: a preemption timer that fires, or the removal
/// of a kept one after a sleep longer than 1/16 of its period (which a
/// loaded machine makes likely with glommio's 100 ms). A 10 s period keeps
/// the latency ring quiet through the round trips; a round whose data came
/// before the executor got to sleep has no sleep, hence the margin.
#[test]
fn glommios_polls_of_its_latency_ring_share_the_armed_one() {
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        round_trips::<64>(&mut s, 30, Duration::from_millis(2));
        s
    });
    let (adopted, slept) = on_own_thread(move || {
        let ex = executor_preempting_every(Duration::from_secs(10));
        ex.run(async move {
            let mut conn = accept_peer(tx).await;
            let adopted = uring::link_polls_adopted_on_this_thread();
            echo::<64>(&mut conn, 30).await;
            let adopted = uring::link_polls_adopted_on_this_thread() - adopted;
            let start = Instant::now();
            glommio::timer::sleep(Duration::from_millis(20)).await;
            (adopted, start.elapsed())
        })
    });
    drop(peer.join().unwrap());
    assert!(
        adopted >= 15,
        "only {adopted} of the sleeps' polls adopted the armed one"
    );
    assert!(
        slept >= Duration::from_millis(20) && slept < Duration::from_secs(5),
        "a 20 ms timer fired after {slept:?}"
    );
}

/// This thread's voluntary context switches: each sleep of an executor in
/// its ring is one.
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("voluntary_ctxt_switches")
}

/// The executor, with the keeping on, echoes 30 round trips paced 1 ms apart
/// (its preemption timers are kept through those short sleeps), then runs
/// `idle` with the connection while the peer runs `peer_after`. Returns the
/// timers adopted while busy, the executor thread's wake-ups during `idle`,
/// and how long `idle` took.
fn busy_then_idle<Idle, Fut>(
    peer_after: fn(&mut std::net::TcpStream),
    idle: Idle,
) -> (u64, u64, Duration)
where
    Idle: FnOnce(glommio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        round_trips::<64>(&mut s, 30, Duration::from_millis(1));
        peer_after(&mut s);
        s
    });
    let measured = on_own_thread(move || {
        uring::keep_on_this_thread(true);
        executor().run(async move {
            let adopted = uring::timers_adopted_on_this_thread();
            let mut conn = accept_peer(tx).await;
            echo::<64>(&mut conn, 30).await;
            let adopted = uring::timers_adopted_on_this_thread() - adopted;
            let before = voluntary_switches();
            let start = Instant::now();
            idle(conn).await;
            (adopted, voluntary_switches() - before, start.elapsed())
        })
    });
    drop(peer.join().unwrap());
    measured
}

/// The keeping leaves glommio's preemption timer armed through the short
/// sleeps of a busy core, to be adopted after each. A core that then goes
/// idle must not be woken by it once per preemption period (100 ms): after
/// the one long sleep it removes what it kept. Here the executor serves
/// round trips with 1 ms pauses (kept timers through its sleeps), then
/// waits 600 ms on a timer: that timer's wake-up and at most one for the
/// kept preemption timer, not six.
#[test]
fn an_idle_executor_is_not_woken_by_the_timers_it_kept() {
    let (adopted, wakes, waited) = busy_then_idle(
        |_| {},
        |_conn| glommio::timer::sleep(Duration::from_millis(600)),
    );
    assert!(adopted >= 30, "only {adopted} timers were kept while busy");
    assert!(
        waited >= Duration::from_millis(600),
        "woke after {waited:?}"
    );
    assert!(
        wakes <= 3,
        "an idle executor slept {wakes} times in {waited:?}: kept timers kept waking it"
    );
}

/// The same with no timer pending while idle, as a sidecar between requests
/// is (its connections wait on their sockets): the kept preemption timer may
/// wake the idle core once, and must not be replaced by one that wakes it a
/// period later, and so on (an idle `remora run` worker woke ten times a
/// second). Here the executor serves round trips with 1 ms pauses, then
/// waits 600 ms on a read: the read's wake-up and at most one for the kept
/// timer, not six.
#[test]
fn an_idle_executor_with_no_timer_pending_is_not_woken_every_period() {
    let (adopted, wakes, waited) = busy_then_idle(
        |s| {
            std::thread::sleep(Duration::from_millis(600));
            s.write_all(&[7; 64]).unwrap();
        },
        |mut conn| async move {
            let mut last = [0u8; 64];
            conn.read_exact(&mut last).await.unwrap();
        },
    );
    assert!(adopted >= 30, "only {adopted} timers were kept while busy");
    assert!(
        waited >= Duration::from_millis(500),
        "the read returned after {waited:?}"
    );
    assert!(
        wakes <= 3,
        "an idle executor slept {wakes} times in {waited:?}: kept timers kept waking it"
    );
}

/// The shim times the executor's sleeps in its main ring (the core's idle
/// time, which the HTTP/2 answers' hold reads): a task waiting on a timer
/// lets the executor sleep about that long; a task that runs without a
/// break adds nothing.
#[test]
fn the_shim_counts_the_time_the_executor_sleeps() {
    let (idle, busy) = on_own_thread(|| {
        executor().run(async {
            // glommio does not park until its eventfd is installed (its
            // first milliseconds): let it settle first.
            glommio::timer::sleep(Duration::from_millis(10)).await;
            let before = uring::slept_nanos();
            glommio::timer::sleep(Duration::from_millis(30)).await;
            let idle = uring::slept_nanos() - before;
            let before = uring::slept_nanos();
            let start = Instant::now();
            while start.elapsed() < Duration::from_millis(30) {
                std::hint::spin_loop();
            }
            (idle, uring::slept_nanos() - before)
        })
    });
    assert!(
        (20_000_000..1_000_000_000).contains(&idle),
        "a 30 ms timer wait counted {idle} ns asleep"
    );
    assert_eq!(busy, 0, "a task that never yielded counted sleep");
}

/// Everything an executor waits for arrives on a deferred main ring: an
/// accept, reads and writes that had to wait, timers (on the latency ring,
/// whose completion wakes the main ring's sleep), and a wake-up from another
/// thread while the executor sleeps. Each step is bounded: a lost completion
/// is a hang, which the deadline turns into a failure.
#[test]
fn a_deferred_main_ring_delivers_every_kind_of_completion() {
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        // Let the executor go to sleep in its accept first.
        std::thread::sleep(Duration::from_millis(50));
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        round_trips::<100>(&mut s, 20, Duration::from_millis(5));
    });
    let (before, after, elapsed) = on_own_thread(move || {
        let before = uring::ring_counts();
        let ex = executor();
        let after = uring::ring_counts();
        let t0 = Instant::now();
        ex.run(async move {
            let mut conn = accept_peer(tx).await;
            echo::<100>(&mut conn, 20).await;
            // A timer with nothing else to do: the executor sleeps on the main
            // ring and the latency ring's completion must wake it.
            let t = Instant::now();
            glommio::timer::sleep(Duration::from_millis(30)).await;
            assert!(t.elapsed() >= Duration::from_millis(30));
            // A wake-up from another thread while the executor sleeps.
            let (sender, receiver) = glommio::channels::shared_channel::new_bounded::<u32>(1);
            let waker = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(30));
                executor().run(async move {
                    let s = sender.connect().await;
                    s.send(7).await.unwrap();
                });
            });
            let r = receiver.connect().await;
            assert_eq!(r.recv().await, Some(7));
            waker.join().unwrap();
        });
        (before, after, t0.elapsed())
    });
    peer.join().unwrap();
    if kernel_has_defer_taskrun() {
        assert!(
            after.deferred > before.deferred,
            "this executor's main ring is not deferred: {after:?}"
        );
    }
    // 20 x 5 ms + 50 + 30 + 30 ms of waiting; a completion collected only
    // late (at the next unrelated wake-up) shows here.
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
}

#[test]
fn the_binary_reports_its_rings_at_startup() {
    let p = free_port();
    let mut r = Remora::start(
        &l4_config(echo_server(), &[("c", p, "copy")], ""),
        &["--cores", "1"],
    );
    let line = r.wait_for_log("shards listening");
    let count = |key: &str| -> u64 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {key} in {line:?}"))
    };
    let deferred = count("defer_taskrun_rings=");
    let coop = count("coop_taskrun_rings=");
    // One shard: its main ring deferred (on 6.1+) and its latency ring COOP.
    if kernel_has_defer_taskrun() {
        assert!(deferred >= 1 && coop >= 1, "{line}");
    } else {
        assert!(coop >= 2, "{line}");
    }
    // And it proxies, with pauses that make each read wait on its ring: a
    // shard whose completions are not collected would not answer.
    let mut c = connect(p);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    round_trips::<64>(&mut c, 5, Duration::from_millis(20));
    r.stop();
}

/// A busy executor never sleeps, so on a deferred ring its completions are
/// collected only by the peek wrapper's GETEVENTS enter (or by a submission
/// that happens to come by). The wrapper must recognise the ring: keyed on
/// the wrong thing (session 15 keyed it on an address glommio moves) it is
/// inert, and a connection waiting beside a busy one waits for the busy one
/// to give up the core (the copy pump's fairness). Here a task spins while
/// another echoes round trips; the wrapper has to have entered.
#[test]
fn a_busy_deferred_executor_collects_through_the_peek() {
    if !kernel_has_defer_taskrun() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        round_trips::<64>(&mut s, 20, Duration::from_millis(2));
    });
    let enters = on_own_thread(move || {
        let ex = executor_preempting_every(Duration::from_millis(1));
        let before = uring::peek_enters_on_this_thread();
        ex.run(async move {
            let mut conn = accept_peer(tx).await;
            let done = std::rc::Rc::new(std::cell::Cell::new(false));
            let spinning = done.clone();
            let spinner = glommio::spawn_local(async move {
                while !spinning.get() {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(50) {
                        std::hint::spin_loop();
                    }
                    glommio::yield_if_needed().await;
                }
            });
            echo::<64>(&mut conn, 20).await;
            done.set(true);
            spinner.await;
        });
        uring::peek_enters_on_this_thread() - before
    });
    peer.join().unwrap();
    assert!(
        enters > 0,
        "the peek wrapper never entered the kernel for a busy deferred ring"
    );
}

/// `completions_waiting` is how a bulk transfer learns that another
/// connection on its core is ready (crate::turn gives the core back early on
/// it): while a task keeps the executor busy, a socket that becomes readable
/// must show in it, from the words of the deferred ring's mapping, without
/// the executor turning its loop.
#[test]
fn a_ready_socket_shows_as_waiting_work_to_a_busy_task() {
    if !kernel_has_defer_taskrun() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        go_rx.recv().unwrap();
        s.write_all(b"ready").unwrap();
        let mut back = [0u8; 5];
        s.read_exact(&mut back).unwrap();
    });
    let (seen, after_exit) = on_own_thread(move || {
        let seen = executor().run(async move {
            let mut conn = accept_peer(tx).await;
            // The reader waits in the ring (its poll is armed) ...
            let reader = glommio::spawn_local(async move {
                let mut buf = [0u8; 5];
                conn.read_exact(&mut buf).await.unwrap();
                (conn, buf)
            });
            // (a sleep empties the queue, so the loop submits the reader's
            // poll to the kernel) ...
            glommio::timer::sleep(Duration::from_millis(10)).await;
            // ... while this task spins without yielding, then the data comes.
            go_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut seen = false;
            while Instant::now() < deadline {
                if uring::completions_waiting() {
                    seen = true;
                    break;
                }
                std::hint::spin_loop();
            }
            let (mut conn, buf) = reader.await;
            assert_eq!(&buf, b"ready");
            conn.write_all(&buf).await.unwrap();
            seen
        });
        // The executor is gone, and its rings with it: the shim must have
        // forgotten the unmapped words (reading them would fault).
        (seen, uring::completions_waiting())
    });
    peer.join().unwrap();
    assert!(
        seen,
        "a readable socket never showed as waiting work on the deferred ring"
    );
    assert!(!after_exit, "the shim still reads a torn-down ring");
}

/// The loop's wait for company (`net::batch`, made by the shim's
/// `io_uring_submit` wrapper): a core that waits (forced here; when it does
/// is `batch`'s unit-tested decision) and carries HTTP/2 streams waits in
/// its ring when a pass finds nothing, each wait bounded by the batch wait,
/// and every completion still arrives: round trips with a peer that answers
/// after 300 µs all complete, in order. Without streams or with the wait
/// off, it never waits.
#[test]
fn a_waiting_core_waits_in_its_ring_and_loses_nothing() {
    if !kernel_has_defer_taskrun() {
        return;
    }
    use remora::net::batch;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        for _ in 0..3 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() {
                let until = Instant::now() + Duration::from_micros(300);
                while Instant::now() < until {
                    std::hint::spin_loop();
                }
                s.write_all(&b).unwrap();
            }
        }
    });
    let (with_streams, no_streams, off) = on_own_thread(move || {
        executor().run(async move {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            batch::set_max_wait(Duration::from_micros(100));
            batch::force_waiting(true);
            let trips = |n: u8| async move {
                let mut s = glommio::net::TcpStream::connect(addr).await.unwrap();
                s.set_nodelay(true).unwrap();
                let before = batch::waits();
                for i in 0..n {
                    s.write_all(&[i]).await.unwrap();
                    let mut b = [0u8; 1];
                    s.read_exact(&mut b).await.unwrap();
                    assert_eq!(b, [i], "round trip {i}");
                }
                let after = batch::waits();
                (after.0 - before.0, after.1 - before.1)
            };
            let streams: Vec<_> = (0..batch::MIN_STREAMS)
                .map(|_| batch::Multiplexed::open())
                .collect();
            let with_streams = trips(50).await;
            drop(streams);
            let no_streams = trips(20).await;
            let _streams: Vec<_> = (0..batch::MIN_STREAMS)
                .map(|_| batch::Multiplexed::open())
                .collect();
            batch::set_max_wait(Duration::ZERO);
            let off = trips(20).await;
            batch::force_waiting(false);
            (with_streams, no_streams.0, off.0)
        })
    });
    peer.join().unwrap();
    let (waits, took) = with_streams;
    assert!(waits >= 50, "{waits} waits in 50 round trips of 300 µs");
    assert!(
        took <= waits * 1_000_000,
        "{waits} waits took {took} ns: one took far longer than its 100 µs"
    );
    assert_eq!(no_streams, 0, "waited without streams");
    assert_eq!(off, 0, "waited with the batch wait off");
}

/// Sleep moderation (`[runtime] sleep_batch_wait`): a core with nothing to
/// run sleeps until 16 completions or the wait, then until one. Every round
/// trip below leaves it asleep with one read pending, so each sleep must end
/// on that lone completion once the wait is over: a lost or held completion
/// is a hang, which `on_own_thread`'s deadline turns into a failure. Timers
/// (the latency ring's completion) and a wake-up from another thread reach a
/// moderated sleep too; with the wait at zero no sleep is moderated.
#[test]
fn a_sleep_that_waits_for_company_loses_nothing() {
    if !kernel_at_least((6, 12)) {
        return; // no min_wait_usec: the shim leaves the sleep alone
    }
    use remora::net::batch;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            std::thread::sleep(Duration::from_millis(2));
            s.write_all(&b).unwrap();
        }
    });
    let (moderated, woken, unmoderated) = on_own_thread(move || {
        executor().run(async move {
            glommio::timer::sleep(Duration::from_millis(10)).await;
            batch::set_sleep_wait(Duration::from_millis(1));
            let mut s = glommio::net::TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            let before = batch::sleep_batches();
            for i in 0..30u8 {
                s.write_all(&[i]).await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                assert_eq!(b, [i], "round trip {i}");
            }
            let moderated = batch::sleep_batches() - before;
            // A timer's completion ends a moderated sleep too (or this hangs).
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let (tx, rx) = glommio::channels::shared_channel::new_bounded(1);
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .make()
                    .unwrap()
                    .run(async move { tx.connect().await.send(7u8).await.unwrap() });
            });
            let woken = rx.connect().await.recv().await;
            sender.join().unwrap();
            batch::set_sleep_wait(Duration::ZERO);
            let before = batch::sleep_batches();
            for i in 0..10u8 {
                s.write_all(&[i]).await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
            }
            (moderated, woken, batch::sleep_batches() - before)
        })
    });
    peer.join().unwrap();
    // Each round trip normally leaves the executor asleep, but one whose
    // thread was descheduled for longer than the 2 ms pause finds the reply
    // already there and never sleeps (CI ran 29 of 30 beside the suite's
    // builds). Moderation lost would make it 0; a lost completion, a hang.
    assert!(
        moderated >= 15,
        "{moderated} moderated sleeps in 30 round trips of 2 ms"
    );
    assert_eq!(woken, Some(7), "the other thread's message");
    assert_eq!(unmoderated, 0, "a sleep was moderated with the wait off");
}

/// Remora's own readiness waits (`uring::Readiness`, read through
/// `net::tcp::Tcp`) go on glommio's main ring and must wake a sleeping
/// executor: here every round trip comes after a pause long enough for the
/// executor to sleep in its ring, and only the wait's completion can wake
/// it. A lost wake-up is a hang (`on_own_thread` fails it); a wait that
/// fell back to glommio's read leaves no slot in use.
#[test]
fn a_readiness_wait_wakes_a_sleeping_executor() {
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        round_trips::<64>(&mut s, 20, Duration::from_millis(3));
        s
    });
    let (available, armed, sleeps) = on_own_thread(move || {
        executor().run(async move {
            let mut conn = tcp_of(accept_peer(tx).await);
            let available = uring::readiness_available();
            let before = voluntary_switches();
            let mut armed = 0;
            let mut buf = [0u8; 64];
            for _ in 0..20 {
                let mut got = 0;
                while got < 64 {
                    let n = std::future::poll_fn(|cx| {
                        let r = conn.poll_read(cx, &mut buf[got..]);
                        if r.is_pending() {
                            armed = armed.max(uring::readiness_slots_in_use());
                        }
                        r
                    })
                    .await
                    .unwrap();
                    assert!(n > 0, "EOF in the middle of a round trip");
                    got += n;
                }
                conn.write_all(&buf).await.unwrap();
            }
            (available, armed, voluntary_switches() - before)
        })
    });
    drop(peer.join().unwrap());
    assert!(available, "no main ring known to arm waits on");
    assert!(
        armed >= 1,
        "no wait was armed on the ring (all fell back to glommio's read)"
    );
    assert!(
        sleeps >= 10,
        "the executor slept only {sleeps} times in 20 paused round trips"
    );
}

/// A wait still armed when its connection is dropped is cancelled: its
/// slot comes free even while the socket stays open (here through a `dup`,
/// as a parked connection keeps it), and the socket closes once the last
/// descriptor goes (the peer sees EOF).
#[test]
fn a_dropped_readiness_wait_lets_its_socket_close() {
    let (tx, rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        s.read(&mut b).map_err(|e| e.kind())
    });
    let slots = on_own_thread(move || {
        executor().run(async move {
            let mut conn = tcp_of(accept_peer(tx).await);
            let mut buf = [0u8; 16];
            // Nothing has come: the read arms a wait and is pending.
            let first = futures_lite::future::poll_once(std::future::poll_fn(|cx| {
                conn.poll_read(cx, &mut buf)
            }))
            .await;
            assert!(first.is_none(), "a read with nothing sent did not wait");
            // Let glommio submit it.
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let armed = uring::readiness_slots_in_use();
            // SAFETY: dup of a live descriptor, closed below.
            let dup = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&conn)) };
            assert!(dup >= 0);
            drop(conn);
            // glommio's next passes submit the cancel; the socket stays
            // open, so only the cancel can complete the wait.
            glommio::timer::sleep(Duration::from_millis(50)).await;
            let after = uring::readiness_slots_in_use();
            // SAFETY: closes the dup made above.
            unsafe { libc::close(dup) };
            (armed, after)
        })
    });
    assert_eq!(
        peer.join().unwrap(),
        Ok(0),
        "the dropped connection's socket did not close"
    );
    assert!(slots.0 >= 1, "the wait was not armed on the ring");
    assert!(
        slots.1 < slots.0,
        "the cancelled wait's slot was not freed: {slots:?}"
    );
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A wait's completion wakes a task the executor does not know was woken,
/// so the shim keeps the executor from sleeping until the task has looked
/// at it. A task that is woken and never looks (a waker that does nothing
/// here) must not keep the core awake: it may cost one pass, then the
/// executor sleeps through its idle time.
#[test]
fn a_wait_woken_and_never_looked_at_does_not_keep_the_core_awake() {
    let (spent, waited) = on_own_thread(|| {
        executor().run(async {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            let mut wait = uring::Readiness::new();
            let noop = std::task::Context::from_waker(std::task::Waker::noop());
            use std::os::fd::AsRawFd;
            assert!(
                wait.arm(a.as_raw_fd(), Some(&noop)),
                "no main ring to arm on"
            );
            (&b).write_all(b"x").unwrap();
            // Let the wait go in and fire.
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let start = Instant::now();
            let cpu = thread_cpu();
            glommio::timer::sleep(Duration::from_millis(300)).await;
            let spent = thread_cpu() - cpu;
            drop(wait);
            (spent, start.elapsed())
        })
    });
    assert!(waited >= Duration::from_millis(300));
    assert!(
        spent < Duration::from_millis(60),
        "the executor spent {spent:?} of CPU in {waited:?} idle: it did not sleep"
    );
}

/// A wait armed on a socket that is already readable fires as soon as
/// glommio submits it, and its completion may be reaped in the same pass
/// in which glommio, having woken none of its own tasks, decides to sleep.
/// The woken task must run before any sleep: here 100 such waits in a row
/// leave the executor no reason to sleep at all. Were the task left to the
/// next unrelated wake-up, each would be a sleep (or a hang).
#[test]
fn a_wait_that_fires_at_once_runs_its_task_before_any_sleep() {
    let sleeps = on_own_thread(|| {
        executor().run(async {
            use std::os::fd::AsRawFd;
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            let before = voluntary_switches();
            for _ in 0..100 {
                (&b).write_all(b"x").unwrap();
                let mut wait = uring::Readiness::new();
                let mut armed = false;
                std::future::poll_fn(|cx| {
                    if !armed {
                        armed = true;
                        assert!(wait.arm(a.as_raw_fd(), Some(cx)), "no main ring to arm on");
                        return std::task::Poll::Pending;
                    }
                    match wait.check(Some(cx)) {
                        uring::Check::Go => std::task::Poll::Ready(()),
                        uring::Check::Waiting => std::task::Poll::Pending,
                    }
                })
                .await;
                let mut byte = [0u8; 1];
                (&a).read_exact(&mut byte).unwrap();
            }
            voluntary_switches() - before
        })
    });
    assert!(
        sleeps < 50,
        "the executor slept {sleeps} times in 100 waits that fired at once"
    );
}

/// Many armed waits dropped at once (a sidecar's connections closing
/// together): their cancels outnumber the submission queue's entries, and
/// those that did not fit must still go in while the core is otherwise idle,
/// or their sockets stay open (the kernel's poll holds them) until
/// something else happens to submit.
#[test]
fn more_dropped_waits_than_the_queue_holds_all_let_their_sockets_close() {
    const WAITS: usize = 1000;
    let open = on_own_thread(|| {
        executor().run(async {
            use std::os::fd::AsRawFd;
            let mut held = Vec::with_capacity(WAITS);
            let mut peers = Vec::with_capacity(WAITS);
            while held.len() < WAITS {
                let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
                let mut wait = uring::Readiness::new();
                if !wait.arm(a.as_raw_fd(), None) {
                    // The queue is full: let glommio submit it.
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                // The wait first: it is dropped (cancelled) before the
                // socket is closed.
                held.push((wait, a));
                peers.push(b);
            }
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert!(
                uring::readiness_slots_in_use() >= WAITS,
                "the waits were not armed"
            );
            drop(held);
            // Nothing else to do on this core: it sleeps until the timer.
            glommio::timer::sleep(Duration::from_millis(500)).await;
            peers
                .iter()
                .filter(|b| {
                    b.set_nonblocking(true).unwrap();
                    let mut x = [0u8; 1];
                    !matches!((&**b).read(&mut x), Ok(0))
                })
                .count()
        })
    });
    assert_eq!(open, 0, "sockets of dropped waits still open");
}

/// Lets glommio learn its main ring, then fills its submission queue with
/// readiness waits on socket pairs nobody writes to (kept until dropped).
async fn fill_the_queue() -> Vec<(
    uring::Readiness,
    std::os::unix::net::UnixStream,
    std::os::unix::net::UnixStream,
)> {
    use std::os::fd::AsRawFd;
    glommio::timer::sleep(Duration::from_millis(10)).await;
    let mut others = Vec::new();
    loop {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut wait = uring::Readiness::new();
        if !wait.arm(a.as_raw_fd(), None) {
            break;
        }
        others.push((wait, a, b));
    }
    assert!(others.len() >= 16, "the queue took only {}", others.len());
    others
}

/// A read whose wait cannot be armed (the submission queue is full of other
/// waits not yet submitted) is not lost: its task is woken after glommio's
/// next submission and arms it then. Without that it would never be woken
/// (nothing is armed for it), and this test would time out.
#[test]
fn a_read_that_finds_the_queue_full_waits_its_turn() {
    let got = on_own_thread(|| {
        executor().run(async {
            use std::os::fd::{FromRawFd, IntoRawFd};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let writer = std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                std::thread::sleep(Duration::from_millis(100));
                s.write_all(b"late").unwrap();
                s
            });
            let (server, _) = listener.accept().unwrap();
            server.set_nonblocking(true).unwrap();
            // SAFETY: the descriptor passes from the std socket to the Tcp.
            let mut conn = unsafe { remora::net::tcp::Tcp::from_raw_fd(server.into_raw_fd()) };
            let _others = fill_the_queue().await;
            let mut buf = [0u8; 16];
            let n = futures_lite::AsyncReadExt::read(&mut conn, &mut buf)
                .await
                .unwrap();
            drop(writer.join().unwrap());
            buf[..n].to_vec()
        })
    });
    assert_eq!(got, b"late");
}

/// The same for the generic wait (`net::tcp::ready`, the accept loop's and
/// the back-pressure write's): a wait that could not be armed is not taken
/// for one that fired. Here the listener's wait finds the queue full, and
/// the connection comes 100 ms later; `ready` must return only then, with
/// the connection queued. Were the wake-up after room came taken for
/// readiness, the accept would find nothing.
#[test]
fn the_generic_wait_that_finds_the_queue_full_waits_for_readiness() {
    let accepted = on_own_thread(|| {
        executor().run(async {
            use std::os::fd::AsRawFd;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let client = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::net::TcpStream::connect(addr).unwrap()
            });
            let _others = fill_the_queue().await;
            let mut wait = uring::Readiness::new();
            remora::net::tcp::ready(listener.as_raw_fd(), libc::POLLIN, &mut wait).await;
            let accepted = listener.accept().map(|_| ());
            drop(client.join().unwrap());
            accepted.map_err(|e| e.kind())
        })
    });
    assert_eq!(accepted, Ok(()), "ready returned before a connection came");
}

/// glommio's barrier before each sleep is answered with a fence, not the
/// `membarrier` system call (src/net/uring/barrier.rs): the count rises
/// with the executor's sleeps. Fails if build.rs loses `--wrap=syscall`.
#[cfg(target_arch = "x86_64")]
#[test]
fn glommios_sleep_barrier_is_a_fence() {
    let (answered, slept) = on_own_thread(|| {
        executor().run(async {
            let before = uring::barriers_answered_on_this_thread();
            for _ in 0..20 {
                glommio::timer::sleep(Duration::from_millis(2)).await;
            }
            (uring::barriers_answered_on_this_thread() - before, 20)
        })
    });
    assert!(
        answered >= slept,
        "{answered} barriers answered for {slept} sleeps: glommio's membarrier went to the kernel"
    );
}

/// With the fence in place of `membarrier`, no wake-up from another
/// executor is lost while the receiver goes to sleep: 3,000 messages, each
/// sent after a pause of 0-150 µs, so that sends race the receiver's
/// sleeps. A lost wake-up leaves the receiver asleep with a message queued,
/// and the test's deadline fails it.
#[test]
fn wake_ups_from_another_executor_race_its_sleeps_and_none_is_lost() {
    const N: u32 = 3_000;
    let (sender, receiver) = glommio::channels::shared_channel::new_bounded::<u32>(1);
    let producer = std::thread::spawn(move || {
        executor().run(async move {
            let s = sender.connect().await;
            for i in 0..N {
                let pause = (i.wrapping_mul(2_654_435_761) >> 7) % 150;
                std::thread::sleep(Duration::from_micros(u64::from(pause)));
                s.send(i).await.unwrap();
            }
        });
    });
    let got = on_own_thread(move || {
        executor().run(async move {
            let r = receiver.connect().await;
            let mut next = 0;
            while let Some(i) = r.recv().await {
                assert_eq!(i, next);
                next += 1;
            }
            next
        })
    });
    producer.join().unwrap();
    assert_eq!(got, N);
}

/// A peek that finds bytes leaves them for the read that follows, which
/// reads them at once: the wait's news is not used up by the peek. Nothing
/// else arrives, so a read that waited instead would wait for ever (the
/// test's deadline fails it).
#[test]
fn a_peek_that_finds_bytes_leaves_them_to_the_next_read() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let peer = std::thread::spawn(move || {
        let addr: std::net::SocketAddr = rx.recv().unwrap();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        // Let the peek wait first.
        std::thread::sleep(Duration::from_millis(30));
        s.write_all(b"hello").unwrap();
        // Open until the executor is done: no EOF to end a read early.
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
    });
    let (peeked, read) = on_own_thread(move || {
        executor().run(async move {
            let mut conn = tcp_of(accept_peer(tx).await);
            let mut buf = [0u8; 16];
            let n = conn.peek(&mut buf).await.unwrap();
            let peeked = buf[..n].to_vec();
            let n = conn.read(&mut buf).await.unwrap();
            (peeked, buf[..n].to_vec())
        })
    });
    done_tx.send(()).unwrap();
    peer.join().unwrap();
    assert_eq!(peeked, b"hello");
    assert_eq!(read, b"hello");
}
