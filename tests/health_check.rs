//! Active health checking against real sockets: backends in this process that
//! answer a chosen status, hang, talk garbage or refuse. No root needed.
//! Nothing here asserts on time: each test waits for a condition (bounded by
//! `WAIT`) and asserts on counts and verdicts.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use remora::upstream::health::{
    EndpointHealthStats, HealthCheckConfig, HealthCheckKind, HealthChecker, HealthError,
    HealthHandle, HealthTarget,
};

const WAIT: Duration = Duration::from_secs(10);

/// Backend modes besides an HTTP status code.
const HANG: u32 = 0;
const GARBAGE: u32 = 1;

/// An HTTP backend answering `status` (or hanging, or garbage) to every request.
struct Backend {
    addr: SocketAddr,
    status: Arc<AtomicU32>,
    last_request: Arc<Mutex<Option<String>>>,
}

impl Backend {
    fn new(status: u32) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU32::new(status));
        let last_request = Arc::new(Mutex::new(None));
        let (st, last) = (status.clone(), last_request.clone());
        thread::spawn(move || {
            for s in listener.incoming().map_while(Result::ok) {
                let (st, last) = (st.clone(), last.clone());
                thread::spawn(move || serve(s, &st, &last));
            }
        });
        Backend {
            addr,
            status,
            last_request,
        }
    }

    fn set(&self, status: u32) {
        self.status.store(status, Ordering::SeqCst);
    }
}

fn serve(mut s: TcpStream, status: &AtomicU32, last: &Mutex<Option<String>>) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    *last.lock().unwrap() = Some(String::from_utf8_lossy(&head).into_owned());
    let _ = match status.load(Ordering::SeqCst) {
        // Until the checker gives up and closes.
        HANG => s.read(&mut chunk).map(drop),
        GARBAGE => s.write_all(b"SSH-2.0-OpenSSH_9.2\r\n"),
        code => write!(
            s,
            "HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    };
}

/// A port nothing listens on.
fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn config(kind: HealthCheckKind, healthy: u32, unhealthy: u32) -> Arc<HealthCheckConfig> {
    Arc::new(HealthCheckConfig {
        kind,
        interval: Duration::from_millis(20),
        timeout: Duration::from_secs(2),
        healthy_threshold: healthy,
        unhealthy_threshold: unhealthy,
        interval_jitter: Duration::from_millis(5),
    })
}

fn http_with(expected: Vec<(u16, u16)>, retriable: Vec<(u16, u16)>) -> HealthCheckKind {
    HealthCheckKind::Http {
        path: "/healthz".into(),
        host: None,
        expected_statuses: expected,
        retriable_statuses: retriable,
    }
}

fn target(cluster: &str, addr: SocketAddr, config: &Arc<HealthCheckConfig>) -> HealthTarget {
    HealthTarget {
        cluster: cluster.into(),
        addr,
        config: config.clone(),
    }
}

fn stat(h: &HealthHandle, cluster: &str, addr: SocketAddr) -> Option<EndpointHealthStats> {
    h.stats()
        .into_iter()
        .find(|s| s.cluster == cluster && s.addr == addr)
}

/// Polls `f` until it returns `Some`, for up to `WAIT`.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn unhealthy_after_n_failures_and_healthy_after_m_successes() {
    let backend = Backend::new(200);
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    // 503 is retriable here, so it counts toward the threshold like a network
    // failure instead of ejecting at once (Envoy's retriable_statuses).
    let cfg = config(http_with(vec![(200, 201)], vec![(503, 504)]), 2, 3);
    checker
        .update(vec![target("web", backend.addr, &cfg)])
        .unwrap();
    let up = wait_for("a first success", || {
        stat(&h, "web", backend.addr).filter(|s| s.successes >= 1)
    });
    assert!(up.healthy && up.checked && up.failures == 0, "{up:?}");
    let generation = h.current().generation();

    backend.set(503);
    let down = wait_for("ejection", || {
        let s = stat(&h, "web", backend.addr)?;
        // Each snapshot is consistent: fewer than 3 failures in a row never eject.
        if (1..3).contains(&s.consecutive_failures) {
            assert!(s.healthy, "ejected before the threshold: {s:?}");
        }
        (!s.healthy).then_some(s)
    });
    assert!(down.consecutive_failures >= 3, "{down:?}");
    assert_eq!(down.last_failure.as_deref(), Some("status 503 (retriable)"));
    wait_for("the view to eject it", || {
        (!h.current().is_healthy("web", backend.addr)).then_some(())
    });

    backend.set(200);
    let back = wait_for("recovery", || {
        let s = stat(&h, "web", backend.addr)?;
        if s.consecutive_successes == 1 {
            assert!(!s.healthy, "back before the threshold: {s:?}");
        }
        s.healthy.then_some(s)
    });
    assert!(back.consecutive_successes >= 2, "{back:?}");
    wait_for("the view to restore it", || {
        h.current().is_healthy("web", backend.addr).then_some(())
    });

    // Many probes ran, but only the two verdict changes were published.
    let probes_then = stat(&h, "web", backend.addr).unwrap().attempts;
    wait_for("more probes", || {
        (stat(&h, "web", backend.addr)?.attempts >= probes_then + 5).then_some(())
    });
    assert_eq!(h.current().generation(), generation + 2);
    checker.stop().unwrap();
}

#[test]
fn an_unexpected_status_ejects_at_once_like_envoy() {
    let backend = Backend::new(503);
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    // Not retriable: the threshold of 1000 does not apply (Envoy ACTIVE failure).
    let cfg = config(http_with(vec![], vec![]), 1, 1000);
    checker
        .update(vec![target("web", backend.addr, &cfg)])
        .unwrap();
    let s = wait_for("ejection", || {
        stat(&h, "web", backend.addr).filter(|s| !s.healthy)
    });
    assert_eq!(s.last_failure.as_deref(), Some("status 503"));
    assert!(!h.current().is_healthy("web", backend.addr));
    checker.stop().unwrap();
}

#[test]
fn tcp_check_closed_port_is_unhealthy_and_listening_port_healthy() {
    let listening = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listening.local_addr().unwrap();
    let closed = closed_port();
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    let cfg = config(HealthCheckKind::Tcp, 1, 2);
    checker
        .update(vec![target("db", open, &cfg), target("db", closed, &cfg)])
        .unwrap();
    let refused = wait_for("the closed port's ejection", || {
        stat(&h, "db", closed).filter(|s| !s.healthy)
    });
    assert!(refused.consecutive_failures >= 2, "{refused:?}");
    assert_eq!(
        refused.last_failure.as_deref(),
        Some("connect failed: connection refused")
    );
    let fine = wait_for("passes on the open port", || {
        stat(&h, "db", open).filter(|s| s.successes >= 3)
    });
    assert!(fine.healthy && fine.failures == 0, "{fine:?}");
    let view = h.current();
    assert!(view.is_healthy("db", open));
    assert!(!view.is_healthy("db", closed));
    assert_eq!(view.unhealthy("db").collect::<Vec<_>>(), vec![closed]);
    checker.stop().unwrap();
}

#[test]
fn expected_status_ranges_are_half_open() {
    let backend = Backend::new(204);
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    let a = backend.addr;
    // The same address in several clusters is probed once per cluster.
    // (cluster, expected_statuses, healthy with a 204 reply)
    type Case = (&'static str, Vec<(u16, u16)>, bool);
    let cases: &[Case] = &[
        ("2xx", vec![(200, 300)], true),
        ("default-200-only", vec![], false),
        ("ends-before-204", vec![(200, 204)], false),
        ("exactly-204", vec![(100, 101), (204, 205)], true),
    ];
    let targets = cases
        .iter()
        .map(|(name, expected, _)| {
            target(name, a, &config(http_with(expected.clone(), vec![]), 1, 1))
        })
        .collect();
    checker.update(targets).unwrap();
    for (name, _, healthy) in cases {
        let s = wait_for(name, || {
            stat(&h, name, a).filter(|s| s.attempts >= 3 && s.checked)
        });
        assert_eq!(s.healthy, *healthy, "{name}: {s:?}");
        if *healthy {
            assert_eq!(s.failures, 0, "{name}: {s:?}");
        } else {
            assert_eq!(s.last_failure.as_deref(), Some("status 204"), "{name}");
        }
    }
    checker.stop().unwrap();
}

#[test]
fn the_request_is_envoys() {
    let default_host = Backend::new(200);
    let set_host = Backend::new(200);
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    let with_host = Arc::new(HealthCheckConfig {
        kind: HealthCheckKind::Http {
            path: "/ready?full=1".into(),
            host: Some("probe.example:8080".into()),
            expected_statuses: vec![(200, 201)],
            retriable_statuses: vec![],
        },
        ..(*config(HealthCheckKind::Tcp, 1, 1)).clone()
    });
    checker
        .update(vec![
            target(
                "outbound|9080||reviews.default.svc.cluster.local",
                default_host.addr,
                &config(http_with(vec![], vec![]), 1, 1),
            ),
            target("reviews", set_host.addr, &with_host),
        ])
        .unwrap();
    let first = wait_for("a request", || {
        default_host.last_request.lock().unwrap().clone()
    });
    assert_eq!(
        first,
        "GET /healthz HTTP/1.1\r\nHost: outbound|9080||reviews.default.svc.cluster.local\r\n\
         User-Agent: Envoy/HC\r\nConnection: close\r\n\r\n"
    );
    let second = wait_for("a request", || {
        set_host.last_request.lock().unwrap().clone()
    });
    assert!(
        second.starts_with("GET /ready?full=1 HTTP/1.1\r\nHost: probe.example:8080\r\n"),
        "{second}"
    );
    wait_for("both healthy", || {
        (h.stats().iter().all(|s| s.healthy && s.successes >= 1) && h.stats().len() == 2)
            .then_some(())
    });
    checker.stop().unwrap();
}

#[test]
fn a_black_holed_endpoint_is_unhealthy_by_timeout() {
    let backend = Backend::new(HANG);
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    let cfg = Arc::new(HealthCheckConfig {
        timeout: Duration::from_millis(100),
        ..(*config(http_with(vec![], vec![]), 1, 2)).clone()
    });
    checker
        .update(vec![target("slow", backend.addr, &cfg)])
        .unwrap();
    let s = wait_for("ejection by timeout", || {
        stat(&h, "slow", backend.addr).filter(|s| !s.healthy)
    });
    assert!(s.timeouts >= 2 && s.failures >= s.timeouts, "{s:?}");
    assert_eq!(
        s.last_failure.as_deref(),
        Some("timed out while waiting for the status line")
    );
    checker.stop().unwrap();
}

#[test]
fn a_garbage_reply_is_a_failed_probe() {
    let backend = Backend::new(GARBAGE);
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    checker
        .update(vec![target(
            "ssh",
            backend.addr,
            &config(http_with(vec![], vec![]), 1, 2),
        )])
        .unwrap();
    let s = wait_for("ejection", || {
        stat(&h, "ssh", backend.addr).filter(|s| !s.healthy)
    });
    assert_eq!(
        s.last_failure.as_deref(),
        Some("not an HTTP/1 response: malformed status line")
    );
    assert_eq!(s.timeouts, 0, "{s:?}");
    checker.stop().unwrap();
}

/// Accepts and holds every connection; counts how many were open at once.
fn holding_backend(bind: SocketAddr) -> (u16, Arc<AtomicUsize>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&bind.into()).unwrap();
    // Room for every probe's SYN at once.
    s.listen(1024).unwrap();
    let listener: TcpListener = s.into();
    let port = listener.local_addr().unwrap().port();
    let most = Arc::new(AtomicUsize::new(0));
    let m = most.clone();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().map_while(Result::ok) {
            held.push(s);
            // Connections the checker gave up on are closed at its end; we
            // count only those still open there.
            held.retain(|s: &TcpStream| {
                s.set_nonblocking(true).unwrap();
                let mut b = [0u8; 512];
                loop {
                    match (&*s).read(&mut b) {
                        Ok(0) => return false,
                        Ok(_) => continue,
                        Err(_) => return true,
                    }
                }
            });
            m.fetch_max(held.len(), Ordering::SeqCst);
        }
    });
    (port, most)
}

#[test]
fn two_hundred_endpoints_are_probed_concurrently() {
    // One listener on every loopback address; the endpoints are 127.0.0.1-200.
    let (port, most_open) = holding_backend("0.0.0.0:0".parse().unwrap());
    let addrs: Vec<SocketAddr> = (1..=200u8)
        .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)), port))
        .collect();
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    let cfg = Arc::new(HealthCheckConfig {
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
        ..(*config(http_with(vec![], vec![]), 1, 1)).clone()
    });
    checker
        .update(addrs.iter().map(|&a| target("many", a, &cfg)).collect())
        .unwrap();
    // A checker that probed one endpoint at a time would hold one connection.
    wait_for("200 probes open at once", || {
        (most_open.load(Ordering::SeqCst) >= 200).then_some(())
    });
    let stats = h.stats();
    assert_eq!(stats.len(), 200);
    assert!(stats.iter().all(|s| s.attempts >= 1), "{stats:?}");
    checker.stop().unwrap();
}

#[test]
fn update_adds_and_removes_endpoints_and_keeps_the_rest() {
    let closed = closed_port();
    let listening = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listening.local_addr().unwrap();
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    let cfg = config(HealthCheckKind::Tcp, 1, 1);

    checker.update(vec![target("c", closed, &cfg)]).unwrap();
    wait_for("the closed port's ejection", || {
        (!h.current().is_healthy("c", closed)).then_some(())
    });
    let before = stat(&h, "c", closed).unwrap();

    // Adding one keeps the other's state and counts.
    checker
        .update(vec![target("c", closed, &cfg), target("c", open, &cfg)])
        .unwrap();
    wait_for("the new endpoint's first pass", || {
        stat(&h, "c", open).filter(|s| s.successes >= 1)
    });
    let kept = stat(&h, "c", closed).unwrap();
    assert!(
        !kept.healthy && kept.attempts >= before.attempts,
        "{kept:?}"
    );
    assert!(!h.current().is_healthy("c", closed));

    // New settings for a kept endpoint keep its verdict and counts too.
    let slower = Arc::new(HealthCheckConfig {
        interval: Duration::from_millis(30),
        ..(*cfg).clone()
    });
    checker
        .update(vec![target("c", closed, &slower), target("c", open, &cfg)])
        .unwrap();
    let changed = wait_for("probes with the new settings", || {
        stat(&h, "c", closed).filter(|s| s.attempts > kept.attempts)
    });
    assert!(
        !changed.healthy && changed.failures >= kept.failures,
        "{changed:?}"
    );

    // Removing the ejected endpoint forgets it: the view no longer lists it.
    let generation = h.current().generation();
    checker.update(vec![target("c", open, &cfg)]).unwrap();
    wait_for("the removal", || {
        (stat(&h, "c", closed).is_none() && h.current().is_healthy("c", closed)).then_some(())
    });
    assert!(h.current().generation() > generation);
    assert_eq!(h.current().unhealthy_count(), 0);
    assert_eq!(h.stats().len(), 1);

    // An invalid target changes nothing.
    let bad = Arc::new(HealthCheckConfig {
        kind: HealthCheckKind::http("no-slash"),
        ..(*cfg).clone()
    });
    assert!(matches!(
        checker.update(vec![target("c", open, &bad)]),
        Err(HealthError::Config { .. })
    ));
    assert_eq!(h.stats().len(), 1);

    checker.update(vec![]).unwrap();
    wait_for("an empty set", || h.stats().is_empty().then_some(()));
    checker.stop().unwrap();
}

#[test]
fn stop_returns_with_probes_in_flight_and_leaves_nothing_ejected() {
    let (port, most_open) = holding_backend("127.0.0.1:0".parse().unwrap());
    let hanging = SocketAddr::from(([127, 0, 0, 1], port));
    let closed = closed_port();
    let checker = HealthChecker::start().unwrap();
    let h = checker.handle();
    let long = Arc::new(HealthCheckConfig {
        timeout: Duration::from_secs(60),
        ..(*config(http_with(vec![], vec![]), 1, 1)).clone()
    });
    checker
        .update(vec![
            target("hang", hanging, &long),
            target("closed", closed, &config(HealthCheckKind::Tcp, 1, 1)),
        ])
        .unwrap();
    wait_for("a probe in flight", || {
        (most_open.load(Ordering::SeqCst) >= 1).then_some(())
    });
    wait_for("an ejection", || {
        (!h.current().is_healthy("closed", closed)).then_some(())
    });

    let (done_tx, done_rx) = mpsc::channel();
    thread::spawn(move || done_tx.send(checker.stop()).unwrap());
    let stopped = done_rx.recv_timeout(WAIT).expect("stop() returned");
    assert!(stopped.is_ok(), "{stopped:?}");
    // A stopped checker ejects nothing.
    assert!(h.current().is_healthy("closed", closed));
    assert!(h.stats().is_empty());

    // Dropping a checker stops it as well.
    let dropped = HealthChecker::start().unwrap();
    let h2 = dropped.handle();
    drop(dropped);
    assert_eq!(h2.current().generation(), 1);
}
