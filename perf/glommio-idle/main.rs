//! RSS per idle accepted TCP connection on glommio 0.9, with no proxy state:
//! `held` keeps the accepted streams in a Vec, `task` moves each into a parked
//! task, `read` into a task waiting in a 1-byte read (glommio's pending
//! POLL_ADD `Source`). Usage: `glommio-idle CONNECTIONS held|task|read`; needs
//! two descriptors per connection (`ulimit -n`). perf/README.md, "Memory per
//! idle connection", third pass.
use futures_lite::AsyncReadExt;
use glommio::net::{TcpListener, TcpStream};
use std::time::Duration;

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap()
}

fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let mode = std::env::args().nth(2).unwrap();
    let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(1))
        .make()
        .unwrap();
    ex.run(async move {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let clients = std::thread::spawn(move || {
            (0..n)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect::<Vec<_>>()
        });
        // Warm up: one connection through the same path, then measure.
        let mut held: Vec<TcpStream> = Vec::with_capacity(n);
        let first = l.accept().await.unwrap();
        held.push(first);
        glommio::timer::sleep(Duration::from_millis(100)).await;
        let r0 = rss_kib();
        for _ in 1..n {
            let s = l.accept().await.unwrap();
            if mode == "read" {
                glommio::spawn_local(async move {
                    let mut s = s;
                    let mut b = [0u8; 1];
                    let _ = s.read(&mut b).await;
                })
                .detach();
            } else if mode == "task" {
                glommio::spawn_local(async move {
                    let _s = s;
                    futures_lite::future::pending::<()>().await;
                })
                .detach();
            } else {
                held.push(s);
            }
        }
        glommio::timer::sleep(Duration::from_millis(500)).await;
        let r1 = rss_kib();
        println!(
            "{mode}: {} B/conn ({} conns)",
            (r1 - r0) * 1024 / (n as u64 - 1),
            n - 1
        );
        drop(clients.join());
    });
}
