//! The floor under Remora's L4 path: the least a glommio L4 forwarder does.
//!
//! One executor pinned to one CPU, built as Remora builds its shards (the same
//! io_uring shim, ring depth and I/O memory, since this example links the
//! library and build.rs's `--wrap`s), an accept loop, and per connection one
//! task that connects to the upstream and copies both ways with glommio's
//! `TcpStream` reads and writes through two 16 KiB buffers. No config, no
//! timeouts, no stats, no budget, no half-close: what is left of Remora's CPU
//! per request above this, on the same rig, is Remora's own
//! (perf/README.md, "Session 17"; `perf/l4cost stat LABEL floor BIN`).
//!
//!     cargo build --release --example l4floor
//!     target/release/examples/l4floor LISTEN UPSTREAM CPU
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

/// One direction's bytes in flight.
struct Dir {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Dir {
    fn new() -> Self {
        Dir {
            buf: vec![0; 16 * 1024].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Moves what `from` has to `to` until one of them would wait:
    /// `Ready` at EOF or on an error.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut TcpStream,
        to: &mut TcpStream,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.start == self.end {
                match Pin::new(&mut *from).poll_read(cx, &mut self.buf) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(())),
                    Poll::Ready(Ok(n)) => (self.start, self.end) = (0, n),
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            while self.start < self.end {
                match Pin::new(&mut *to).poll_write(cx, &self.buf[self.start..self.end]) {
                    Poll::Ready(Ok(n)) => self.start += n,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
        }
    }
}

async fn forward(mut down: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    down.set_nodelay(true)?;
    let (mut out, mut back) = (Dir::new(), Dir::new());
    future::poll_fn(|cx| {
        if out.poll(cx, &mut down, &mut up).is_ready()
            || back.poll(cx, &mut up, &mut down).is_ready()
        {
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: l4floor LISTEN UPSTREAM CPU");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN: an address:port");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM: an address:port");
    let cpu: usize = args[3].parse().expect("CPU: a number");
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(64 * 1024)
        .ring_depth(256)
        .spawn(move || async move {
            let listener = TcpListener::bind(listen).expect("bind");
            // Which flags the shim gave the rings (this also links it in:
            // nothing else of the library is used).
            eprintln!("l4floor: {:?}", remora::net::uring::ring_counts());
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        glommio::spawn_local(async move {
                            let _ = forward(stream, upstream).await;
                        })
                        .detach();
                    }
                    Err(e) => eprintln!("accept: {e}"),
                }
            }
        })
        .expect("executor")
        .join()
        .expect("join");
}
