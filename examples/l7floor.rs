//! The floor under Remora's HTTP/1 path: the least a glommio reverse proxy does.
//!
//! One executor pinned to one CPU, built as Remora builds its shards (the same
//! io_uring shim, ring depth and I/O memory, since this example links the
//! library and build.rs's `--wrap`s), Remora's accept (a non-blocking
//! SO_REUSEPORT listener, `accept4` while connections are queued, glommio's
//! ring accept once the queue is empty), and per connection one task that
//! reads a request head with `httparse`, sends it on a pooled keep-alive
//! upstream connection without its `Connection` header, reads the response
//! (`Content-Length` bodies only) and writes it back, with `Connection: close`
//! when the client asked for it. Buffers come from a per-core free list, as
//! Remora's do. No config, routes, timeouts, stats, header rewriting, access
//! log, bodies, chunking or error replies: what Remora costs above this on the
//! same rig is Remora's own (perf/README.md, "Session 20";
//! `perf/l7cost stat LABEL floor BIN [close]`).
//!
//!     cargo build --release --example l7floor
//!     target/release/examples/l7floor LISTEN UPSTREAM CPU
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::{LocalExecutorBuilder, Placement};
use remora::net::socket;

const BUF: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;

thread_local! {
    /// Idle upstream connections, most recently used last.
    static POOL: RefCell<Vec<TcpStream>> = const { RefCell::new(Vec::new()) };
    /// Free buffers.
    static BUFS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer from the core's free list, back to it on drop.
struct Buf(Vec<u8>);

impl Buf {
    fn take() -> Buf {
        Buf(BUFS
            .with(|b| b.borrow_mut().pop())
            .unwrap_or_else(|| vec![0; BUF]))
    }
}

impl Drop for Buf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        BUFS.with(|b| b.borrow_mut().push(v));
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads from `s` into `buf[*have..]` until `parse` finds a whole head:
/// its length and what it says. `Ok(None)` on EOF before any byte.
async fn read_head<T>(
    s: &mut TcpStream,
    buf: &mut [u8],
    have: &mut usize,
    mut parse: impl FnMut(&[u8]) -> io::Result<Option<(usize, T)>>,
) -> io::Result<Option<(usize, T)>> {
    loop {
        if *have > 0 {
            if let Some(done) = parse(&buf[..*have])? {
                return Ok(Some(done));
            }
            if *have == buf.len() {
                return Err(bad("head too large"));
            }
        }
        let n = s.read(&mut buf[*have..]).await?;
        if n == 0 {
            return if *have == 0 {
                Ok(None)
            } else {
                Err(bad("EOF in a head"))
            };
        }
        *have += n;
    }
}

/// Whether a `Connection` header value asks to close.
fn says_close(v: &[u8]) -> bool {
    v.split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

/// Appends `name: value\r\n` for every header but `Connection`.
fn copy_headers(headers: &[httparse::Header<'_>], out: &mut Vec<u8>) {
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(h.name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
}

/// One client connection: requests in order until the client closes or asks to.
async fn serve(mut down: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let (mut req, mut resp) = (Buf::take(), Buf::take());
    let mut out: Vec<u8> = Vec::with_capacity(1024);
    let mut have = 0;
    loop {
        out.clear();
        let parsed = read_head(&mut down, &mut req.0, &mut have, |b| {
            let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut r = httparse::Request::new(&mut h);
            match r.parse(b).map_err(|_| bad("request head"))? {
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(n) => {
                    let mut close = false;
                    for h in r.headers.iter() {
                        if h.name.eq_ignore_ascii_case("connection") {
                            close |= says_close(h.value);
                        } else if h.name.eq_ignore_ascii_case("content-length")
                            || h.name.eq_ignore_ascii_case("transfer-encoding")
                        {
                            return Err(bad("the floor takes no request bodies"));
                        }
                    }
                    out.extend_from_slice(r.method.unwrap_or("GET").as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(r.path.unwrap_or("/").as_bytes());
                    out.extend_from_slice(b" HTTP/1.1\r\n");
                    copy_headers(r.headers, &mut out);
                    out.extend_from_slice(b"\r\n");
                    Ok(Some((n, close)))
                }
            }
        })
        .await?;
        let Some((head_len, close)) = parsed else {
            return Ok(());
        };
        req.0.copy_within(head_len..have, 0);
        have -= head_len;

        let pooled = POOL.with(|p| p.borrow_mut().pop());
        let mut up = match pooled {
            Some(up) => up,
            None => TcpStream::connect(upstream).await?,
        };
        up.write_all(&out).await?;
        out.clear();

        let mut got = 0;
        let parsed = read_head(&mut up, &mut resp.0, &mut got, |b| {
            let mut h = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut r = httparse::Response::new(&mut h);
            match r.parse(b).map_err(|_| bad("response head"))? {
                httparse::Status::Partial => Ok(None),
                httparse::Status::Complete(n) => {
                    let mut len = None;
                    for h in r.headers.iter() {
                        if h.name.eq_ignore_ascii_case("content-length") {
                            len = std::str::from_utf8(h.value)
                                .ok()
                                .and_then(|v| v.trim().parse::<usize>().ok());
                        }
                    }
                    let len = len.ok_or_else(|| bad("the floor needs a Content-Length"))?;
                    out.extend_from_slice(b"HTTP/1.1 ");
                    out.extend_from_slice(r.code.unwrap_or(502).to_string().as_bytes());
                    out.push(b' ');
                    out.extend_from_slice(r.reason.unwrap_or("").as_bytes());
                    out.extend_from_slice(b"\r\n");
                    copy_headers(r.headers, &mut out);
                    if close {
                        out.extend_from_slice(b"Connection: close\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    Ok(Some((n, len)))
                }
            }
        })
        .await?;
        let Some((resp_head, body_len)) = parsed else {
            return Err(bad("the upstream closed"));
        };
        // The body: what came with the head, then the rest as it comes.
        let mut left = body_len;
        let first = (got - resp_head).min(left);
        out.extend_from_slice(&resp.0[resp_head..resp_head + first]);
        left -= first;
        down.write_all(&out).await?;
        while left > 0 {
            let n = up.read(&mut resp.0[..left.min(BUF)]).await?;
            if n == 0 {
                return Err(bad("EOF in a response body"));
            }
            down.write_all(&resp.0[..n]).await?;
            left -= n;
        }
        POOL.with(|p| p.borrow_mut().push(up));
        if close {
            return Ok(());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: l7floor LISTEN UPSTREAM CPU");
        std::process::exit(2);
    }
    let listen: SocketAddr = args[1].parse().expect("LISTEN: an address:port");
    let upstream: SocketAddr = args[2].parse().expect("UPSTREAM: an address:port");
    let cpu: usize = args[3].parse().expect("CPU: a number");
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .io_memory(64 * 1024)
        .ring_depth(256)
        .spawn(move || async move {
            // As Remora's `http` listeners: the accept deferred until the
            // request's first bytes.
            let opts = socket::ListenOptions {
                transparent: false,
                defer_accept: true,
            };
            let (_listener, fd) = socket::listen(listen, opts).expect("bind");
            eprintln!("l7floor: {:?}", remora::net::uring::ring_counts());
            let mut wait = remora::net::uring::Readiness::new();
            loop {
                let accepted = match socket::accept_queued(fd) {
                    // The floor is glommio's: its stream, from the descriptor.
                    // SAFETY: the accepted descriptor passes to the stream.
                    Ok(Some((stream, _peer))) => Ok(unsafe {
                        <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(
                            std::os::fd::IntoRawFd::into_raw_fd(stream),
                        )
                    }),
                    Ok(None) => {
                        remora::net::tcp::ready(fd, libc::POLLIN, &mut wait).await;
                        continue;
                    }
                    Err(e) => Err(e),
                };
                match accepted {
                    Ok(stream) => {
                        glommio::spawn_local(async move {
                            let _ = serve(stream, upstream).await;
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
