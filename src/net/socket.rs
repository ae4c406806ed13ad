//! Socket construction and the few raw syscalls the data path makes itself.
//!
//! glommio's `TcpListener::bind` fixes the backlog and cannot set IPV6_V6ONLY or
//! IP_TRANSPARENT, so listeners are built with socket2 (FACTS.md); accepted
//! and connected sockets are Remora's own ([`Tcp`]).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::net::tcp::Tcp;

/// Listen backlog; the kernel caps it at net.core.somaxconn.
pub const BACKLOG: i32 = 4096;

/// How a listener is made beyond its address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenOptions {
    /// IP_TRANSPARENT (IPV6_TRANSPARENT): accept connections to addresses
    /// that are not local (TPROXY capture).
    pub transparent: bool,
    /// TCP_DEFER_ACCEPT: a connection reaches the accept queue only once its
    /// first data has arrived (or, if none comes, after about a second). So
    /// one wake-up of the core brings both the connection and its request:
    /// -33 % CPU per request when every request comes on a new connection
    /// (perf/README.md, "Session 36"). Only where the client speaks first
    /// (HTTP, TLS); a server-first protocol would wait that second
    /// (nginx's `listen ... deferred`, HAProxy's `defer-accept`).
    pub defer_accept: bool,
}

/// Builds a SO_REUSEPORT listener (one per core per address), non-blocking,
/// with its raw fd (for [`accept_queued`], its readiness wait and shutdown on
/// drain).
pub fn listen(addr: SocketAddr, opts: ListenOptions) -> io::Result<(Socket, RawFd)> {
    let domain = if addr.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    let s = Socket::new(domain, Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        // A separate v4 listener owns the v4 side of the port.
        s.set_only_v6(true)?;
    }
    if opts.transparent {
        if addr.is_ipv6() {
            set_int(s.as_raw_fd(), libc::SOL_IPV6, libc::IPV6_TRANSPARENT, 1)?;
        } else {
            s.set_ip_transparent(true)?;
        }
    }
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt
    // per connection.
    s.set_nodelay(true)?;
    if opts.defer_accept {
        // Seconds; the kernel makes it a count of SYN-ACK retransmissions
        // (1: one, after the initial RTO of 1 s).
        set_int(s.as_raw_fd(), libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, 1)?;
    }
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    // Non-blocking: [`accept_queued`] takes what is queued and returns.
    s.set_nonblocking(true)?;
    let fd = s.as_raw_fd();
    Ok((s, fd))
}

/// Connects to `dst`, optionally from a fixed source address (the inbound
/// path binds 127.0.0.6 so Istio's rules skip it), within `timeout`: a
/// non-blocking socket with Nagle off.
pub async fn connect(
    dst: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<Tcp> {
    let stream = Tcp::connect(dst, source, timeout).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Whether the peer has shut down its sending side (its FIN has arrived),
/// even while bytes it sent before are still unread: POLLRDHUP, which a
/// peek cannot tell (it keeps returning those bytes, never 0). Zero
/// timeout; an error counts as closed.
pub fn peer_closed(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let rc = unsafe { libc::poll(&mut p, 1, 0) };
    rc < 0 || p.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Whether `ip` can be used as a source address here (e.g. ::6 exists on lo).
pub fn can_bind(ip: IpAddr) -> bool {
    let domain = if ip.is_ipv6() {
        Domain::IPV6
    } else {
        Domain::IPV4
    };
    Socket::new(domain, Type::STREAM, None)
        .and_then(|s| s.bind(&SocketAddr::new(ip, 0).into()))
        .is_ok()
}

/// Makes listening socket `fd` drop new connection attempts: a socket
/// filter that discards TCP segments with SYN set and ACK clear, so that no
/// new handshake starts on it while those already started complete (the
/// final ACK still passes). A client whose SYN is dropped sends it again
/// after its initial retransmission timeout (1 s on Linux), by which time
/// this listener is gone: it then reaches another listener of the port, or
/// is refused. Used before a listener closes ([`crate::listener::close`]):
/// closing resets every connection whose handshake completed but that was
/// not yet accepted, and without the filter a handshake can complete
/// between the last accept and the close.
pub fn drop_new_handshakes(fd: RawFd) -> io::Result<()> {
    // The filter sees the segment from its TCP header on (the IP header is
    // pulled before TCP's socket filter runs); byte 13 holds the flags.
    const TCP_FLAGS: u32 = 13;
    const SYN_ACK: u32 = 0x12;
    const SYN: u32 = 0x02;
    let code = [
        // A = tcp[13]
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: TCP_FLAGS,
        },
        // A &= SYN|ACK
        libc::sock_filter {
            code: (libc::BPF_ALU | libc::BPF_AND | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: SYN_ACK,
        },
        // A == SYN ? drop : keep
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: SYN,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: SO_ATTACH_FILTER copies the program; `prog` and `code` outlive
    // the call.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            &prog as *const libc::sock_fprog as *const libc::c_void,
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes a connection already queued on listening socket `fd` (which
/// [`listen`] made non-blocking): `None` when the queue is empty. One
/// `accept4` that also returns the peer's address and makes the socket
/// non-blocking and close-on-exec (glommio's accept made four system calls,
/// toggling O_NONBLOCK with three `fcntl`s around a plain `accept`, and the
/// peer address cost a `getpeername` more).
pub fn accept_queued(fd: RawFd) -> io::Result<Option<(Tcp, SocketAddr)>> {
    loop {
        // SAFETY: accept4 writes at most `len` bytes of address into the
        // storage socket2 provides, and sets `len`.
        let accepted = unsafe {
            socket2::SockAddr::try_init(|storage, len| {
                let rc = libc::accept4(
                    fd,
                    storage.cast(),
                    len,
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                );
                if rc < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(rc)
                }
            })
        };
        match accepted {
            Ok((conn, addr)) => {
                // SAFETY: accept4 returned this fd and nothing else owns it.
                let stream = unsafe { Tcp::from_raw_fd(conn) };
                let Some(peer) = addr.as_socket() else {
                    continue; // not an IP peer: cannot happen on a TCP listener
                };
                return Ok(Some((stream, peer)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            // A connection reset while queued, or a signal: the next one.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EINTR)) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Puts an fd in O_NONBLOCK mode. The data path needs it: splice(2) follows the
/// file's O_NONBLOCK flag (not SPLICE_F_NONBLOCK) on the socket side and must
/// never block the executor thread. glommio's own reads and writes use
/// MSG_DONTWAIT plus ring POLL_ADD, which work the same on such sockets.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // FIONBIO sets O_NONBLOCK in one syscall (F_GETFL + F_SETFL would be two,
    // on every accepted and every connected socket).
    let on: libc::c_int = 1;
    // SAFETY: ioctl(FIONBIO) on an fd we own, with a pointer to a live c_int.
    if unsafe { libc::ioctl(fd, libc::FIONBIO, &on) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// SO_LINGER with a zero timeout: the next close() sends RST instead of FIN.
/// Used to pass a reset from one side of a proxied connection to the other.
pub fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid pointer and length; failure only means a FIN instead of a RST.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// shutdown(SHUT_WR): forwards a half-close.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: plain syscall; ENOTCONN after a reset is harmless.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

pub(crate) fn set_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: valid pointer and length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Outcome of one non-blocking transfer syscall.
#[derive(Debug, PartialEq, Eq)]
pub enum Xfer {
    /// Moved this many bytes (> 0).
    Done(usize),
    /// Orderly end of stream (recv/splice returned 0).
    Eof,
    /// Nothing to do right now (EAGAIN).
    WouldBlock,
}

fn xfer(rc: isize) -> io::Result<Xfer> {
    if rc > 0 {
        Ok(Xfer::Done(rc as usize))
    } else if rc == 0 {
        Ok(Xfer::Eof)
    } else {
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => Ok(Xfer::WouldBlock),
            Some(libc::EINTR) => Ok(Xfer::WouldBlock),
            _ => Err(e),
        }
    }
}

/// recv(MSG_DONTWAIT).
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Xfer> {
    recv_flags(fd, buf, 0)
}

/// recv(MSG_DONTWAIT | `flags`), e.g. MSG_PEEK.
#[inline]
pub fn recv_flags(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<Xfer> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    xfer(unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | flags,
        )
    })
}

/// send(MSG_DONTWAIT | MSG_NOSIGNAL); `Eof` never happens for a non-empty buf.
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<Xfer> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    xfer(unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    })
}

/// splice(2) between an fd and a pipe end, never blocking.
/// SPLICE_F_MORE is deliberately not used (it caused 200 ms stalls elsewhere).
pub fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<Xfer> {
    // SAFETY: plain syscall with null offsets (both ends are sockets or pipes).
    xfer(unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    })
}

/// write(2) to a non-blocking pipe.
pub fn write(fd: RawFd, buf: &[u8]) -> io::Result<Xfer> {
    // SAFETY: buf is valid for reads of buf.len() bytes.
    xfer(unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })
}

/// read(2) from a non-blocking pipe.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<Xfer> {
    // SAFETY: buf is valid for writes of buf.len() bytes.
    xfer(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })
}

/// A non-blocking pipe, closed on drop.
#[derive(Debug)]
pub struct Pipe {
    pub read: RawFd,
    pub write: RawFd,
    /// How many bytes it holds (F_GETPIPE_SZ).
    pub capacity: usize,
}

impl Pipe {
    /// A pipe of at least `size` bytes if the system allows it (F_SETPIPE_SZ;
    /// unprivileged processes up to /proc/sys/fs/pipe-max-size, 1 MiB by
    /// default), else of the default size (64 KiB). `capacity` tells which.
    pub fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut pipe = Pipe {
            read: fds[0],
            write: fds[1],
            capacity: 0,
        };
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a pipe we own; failure leaves the pipe as it was.
        let got = unsafe { libc::fcntl(pipe.write, libc::F_SETPIPE_SZ, size) };
        let got = if got > 0 {
            got
        } else {
            // SAFETY: as above.
            unsafe { libc::fcntl(pipe.write, libc::F_GETPIPE_SZ) }
        };
        if got <= 0 {
            return Err(io::Error::last_os_error());
        }
        pipe.capacity = got as usize;
        Ok(pipe)
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both fds are owned by this value.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pipe_grows_to_the_asked_size_within_the_system_limit() {
        let p = Pipe::new(1 << 20).unwrap();
        assert!(p.capacity >= 64 * 1024, "{}", p.capacity);
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .map(|s| s.trim().parse().unwrap())
            .unwrap_or(1 << 20);
        if max >= 1 << 20 {
            assert_eq!(p.capacity, 1 << 20);
        }
    }

    #[test]
    fn set_nonblocking_sets_the_flag_and_reads_do_not_block() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let fd = a.as_raw_fd();
        // SAFETY: F_GETFL on a live fd.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK,
            0
        );
        set_nonblocking(fd).unwrap();
        assert_ne!(
            unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK,
            0
        );
        let err = (&a).read(&mut [0u8; 1]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(set_nonblocking(-1).is_err());
    }

    fn on_executor<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
        f: impl FnOnce() -> F + Send + 'static,
    ) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    /// `defer_accept`: a connection stays out of the accept queue until its
    /// first bytes come, then arrives with them; a silent one is accepted
    /// after about a second (the kernel's first SYN-ACK retransmission), not
    /// never.
    #[test]
    fn a_deferred_listener_queues_a_connection_with_its_first_bytes() {
        use std::io::Write;
        fn accept_within(fd: RawFd, limit: Duration) -> (Tcp, SocketAddr) {
            let start = std::time::Instant::now();
            loop {
                if let Some(c) = accept_queued(fd).unwrap() {
                    return c;
                }
                assert!(start.elapsed() < limit, "nothing accepted in {limit:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        on_executor(|| async {
            let opts = ListenOptions {
                transparent: false,
                defer_accept: true,
            };
            let (l, fd) = listen("127.0.0.1:0".parse().unwrap(), opts).unwrap();
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            // Both handshakes complete on the clients' side.
            let mut talker = std::net::TcpStream::connect(addr).unwrap();
            let silent = std::net::TcpStream::connect(addr).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            assert!(
                accept_queued(fd).unwrap().is_none(),
                "queued before any byte"
            );
            talker.write_all(b"GET").unwrap();
            let (s, peer) = accept_within(fd, Duration::from_secs(5));
            assert_eq!(peer, talker.local_addr().unwrap());
            let mut buf = [0u8; 8];
            // SAFETY: a live socket and a buffer of the length given.
            let n = unsafe {
                libc::recv(
                    s.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            assert_eq!(&buf[..n.max(0) as usize], b"GET", "the bytes came with it");
            let (_, peer) = accept_within(fd, Duration::from_secs(10));
            assert_eq!(peer, silent.local_addr().unwrap());
        });
    }

    /// The listener is non-blocking (for [`accept_queued`]); the accept
    /// loop's readiness wait on it sleeps until a connection comes, which
    /// is then there to take, peer and all.
    #[test]
    fn a_listeners_wait_wakes_on_a_connection() {
        on_executor(|| async {
            let (l, fd) = listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
            // SAFETY: F_GETFL on the listener's live fd.
            assert_ne!(
                unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK,
                0
            );
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            let client = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                std::net::TcpStream::connect(addr).unwrap()
            });
            assert!(accept_queued(fd).unwrap().is_none());
            let mut wait = crate::net::uring::Readiness::new();
            crate::net::tcp::ready(fd, libc::POLLIN, &mut wait).await;
            let (s, peer) = accept_queued(fd)
                .unwrap()
                .expect("woken with a connection queued");
            let c = client.join().unwrap();
            assert_eq!(peer, c.local_addr().unwrap());
            assert_eq!(s.peer_addr().unwrap(), peer);
            // Accepted non-blocking.
            // SAFETY: F_GETFL on the accepted socket's live fd.
            assert_ne!(
                unsafe { libc::fcntl(s.as_raw_fd(), libc::F_GETFL) } & libc::O_NONBLOCK,
                0
            );
        });
    }

    #[test]
    fn accept_queued_takes_what_is_queued_with_its_peer() {
        on_executor(|| async {
            let (l, fd) = listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            assert!(
                accept_queued(fd).unwrap().is_none(),
                "empty queue: None, at once"
            );
            let clients: Vec<_> = (0..3)
                .map(|_| std::net::TcpStream::connect(addr).unwrap())
                .collect();
            let mut peers = Vec::new();
            while let Some((s, peer)) = accept_queued(fd).unwrap() {
                assert_eq!(s.peer_addr().unwrap(), peer);
                // Non-blocking (splice follows the file's flag) and
                // close-on-exec, from the accept itself.
                let sfd = s.as_raw_fd();
                assert_ne!(
                    unsafe { libc::fcntl(sfd, libc::F_GETFL) } & libc::O_NONBLOCK,
                    0
                );
                assert_ne!(
                    unsafe { libc::fcntl(sfd, libc::F_GETFD) } & libc::FD_CLOEXEC,
                    0
                );
                // TCP_NODELAY comes from the listener.
                let mut v: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                let rc = unsafe {
                    libc::getsockopt(
                        sfd,
                        libc::IPPROTO_TCP,
                        libc::TCP_NODELAY,
                        (&mut v as *mut libc::c_int).cast(),
                        &mut len,
                    )
                };
                assert_eq!((rc, v), (0, 1));
                peers.push(peer);
            }
            let mut want: Vec<_> = clients.iter().map(|c| c.local_addr().unwrap()).collect();
            peers.sort();
            want.sort();
            assert_eq!(peers, want);
            // A shut-down listener is an error, not "empty".
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            assert!(accept_queued(fd).is_err());
        });
    }

    /// A connect storm against a listener that is then closed the way
    /// [`crate::listener::close`] closes one: new handshakes dropped, those
    /// under way answered for a grace period, the queue taken and answered,
    /// the listener shut down. Returns how many clients connected but were
    /// then reset (they had no answer), and how many were answered.
    fn close_during_a_connect_storm() -> (usize, usize) {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        use std::sync::Arc;
        let (l, fd) = listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
        let addr = l.local_addr().unwrap().as_socket().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (reset, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let clients: Vec<_> = (0..4)
            .map(|_| {
                let (stop, reset, answered) = (stop.clone(), reset.clone(), answered.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let Ok(mut s) =
                            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50))
                        else {
                            continue;
                        };
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let mut b = [0u8; 1];
                        match s.read(&mut b) {
                            Ok(1) => answered.fetch_add(1, Ordering::Relaxed),
                            _ => reset.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                })
            })
            .collect();
        // Answers what is queued, again and again for `d` (once for zero).
        let answer_for = |d: Duration| {
            let until = std::time::Instant::now() + d;
            loop {
                while let Some((s, _)) = accept_queued(fd).unwrap() {
                    // SAFETY: a one-byte write on the accepted socket's live fd.
                    unsafe { libc::write(s.as_raw_fd(), b"x".as_ptr().cast(), 1) };
                }
                if std::time::Instant::now() >= until {
                    break;
                }
            }
        };
        answer_for(Duration::from_millis(30));
        drop_new_handshakes(fd).unwrap();
        answer_for(Duration::from_millis(20));
        answer_for(Duration::ZERO);
        // SAFETY: the listener is still open; shutdown stops it listening.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        std::thread::sleep(Duration::from_millis(100));
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.join().unwrap();
        }
        drop(l);
        (
            reset.load(Ordering::Relaxed),
            answered.load(Ordering::Relaxed),
        )
    }

    /// What [`crate::listener::close`] relies on: with new handshakes
    /// dropped and the handshakes under way given time to complete, a
    /// listener closed under a connect storm resets no client whose connect
    /// succeeded. (Without the filter, this storm saw 7 clients reset in 50
    /// closes.)
    #[test]
    fn a_listener_closed_after_dropping_new_handshakes_resets_no_connected_client() {
        let (mut resets, mut answered) = (0, 0);
        for _ in 0..20 {
            let (r, a) = on_executor(|| async { close_during_a_connect_storm() });
            resets += r;
            answered += a;
        }
        assert!(answered > 0, "the storm connected");
        assert_eq!(resets, 0, "clients reset after their connect succeeded");
    }

    #[test]
    fn drop_new_handshakes_stops_new_connects_but_not_those_queued() {
        on_executor(|| async {
            let (l, fd) = listen("127.0.0.1:0".parse().unwrap(), ListenOptions::default()).unwrap();
            let addr = l.local_addr().unwrap().as_socket().unwrap();
            let mut queued = std::net::TcpStream::connect(addr).unwrap();
            drop_new_handshakes(fd).unwrap();
            // The SYN is dropped: no refusal, no connection, a timeout.
            let err = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300))
                .expect_err("a new handshake completed");
            assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
            let (s, peer) = accept_queued(fd).unwrap().expect("the queued one");
            assert_eq!(peer, queued.local_addr().unwrap());
            assert!(accept_queued(fd).unwrap().is_none(), "only the queued one");
            // The accepted socket inherits the filter; its traffic passes.
            // SAFETY: a one-byte write on the accepted socket's live fd.
            assert_eq!(
                unsafe { libc::write(s.as_raw_fd(), b"y".as_ptr().cast(), 1) },
                1
            );
            let mut b = [0u8; 1];
            queued.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"y");
            use std::io::Write;
            queued.write_all(b"z").unwrap();
            // SAFETY: a one-byte blocking read on the accepted socket's live fd.
            assert_eq!(
                unsafe { libc::read(s.as_raw_fd(), b.as_mut_ptr().cast(), 1) },
                1
            );
            assert_eq!(&b, b"z");
            assert!(drop_new_handshakes(-1).is_err());
        });
    }
}
