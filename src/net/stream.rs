//! A connection that is plain TCP or TLS over TCP ([`Stream`]), the one type
//! the L7 path, the pool and the L4 copy path read and write.
//!
//! Why one enum and not a trait object or a generic: every poll is one match
//! on a tag the branch predictor learns per connection, the plain variant is
//! the socket itself ([`Tcp`]: no extra allocation or indirection), and the
//! code above stays monomorphic (no second copy of the L7 state machine).
//!
//! TLS is rustls' buffered API driven from the non-blocking socket:
//! records are read straight into rustls' deframer through [`Io`], an
//! `io::Read`/`io::Write` view of the socket that turns its `Pending`
//! into `WouldBlock` (the waker is registered by that very poll). No kTLS on
//! this kernel (FACTS.md), so records are sealed and opened in user space.
//!
//! Two halves: the L7 path writes a request body while it watches the
//! upstream for an early answer. A plain stream gets a second [`Tcp`] on a
//! `dup` of its socket; a TLS stream shares its session between the two
//! handles (`Rc<RefCell>`, borrowed only inside one synchronous poll, never
//! across an await). A [`Tcp`] keeps separate read and write waits, so one
//! task may wait to read while another waits to write.
//!
//! Write semantics are those of a plain socket: a write returns once its
//! bytes are on the wire (handed to the kernel), so callers never flush.
//! For TLS that means a write that fits in rustls' buffer but whose records
//! the socket cannot take yet returns `Pending` until they are sent, and
//! then reports the plaintext it accepted earlier; `write_all` re-polls with
//! the same bytes, as its contract requires.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::future;
use futures_lite::io::{AsyncRead, AsyncWrite};
use rustls::pki_types::ServerName;

use crate::net::tcp::Tcp;

/// Plain TCP or TLS over TCP.
pub enum Stream {
    Plain(Tcp),
    Tls(TlsStream),
}

impl From<Tcp> for Stream {
    fn from(s: Tcp) -> Stream {
        Stream::Plain(s)
    }
}

/// A TLS session over a glommio socket; clones share the session (see the
/// module doc on halves).
#[derive(Clone)]
pub struct TlsStream(Rc<RefCell<TlsInner>>);

struct TlsInner {
    tcp: Tcp,
    conn: rustls::Connection,
    /// Plaintext taken into rustls by a write whose records are not all on
    /// the wire yet; reported when they are.
    unacked: usize,
}

/// What a finished handshake negotiated, for logs, stats and routing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.2" / "TLSv1.3".
    pub version: &'static str,
    /// IANA cipher suite name, e.g. "TLS13_AES_128_GCM_SHA256".
    pub cipher: &'static str,
    pub alpn: Option<Vec<u8>>,
    /// The session was resumed (no certificate exchange).
    pub resumed: bool,
}

/// What a terminated downstream TLS connection tells the layers above:
/// computed once per connection, shared by its requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DownstreamTls {
    pub info: TlsInfo,
    /// The client's SPIFFE ID (`spiffe://td/ns/NS/sa/SA`), when it presented
    /// a certificate that has one.
    pub peer_uri: Option<String>,
    /// The SNI the client asked for.
    pub sni: Option<String>,
    /// This connection's X-Forwarded-Client-Cert element
    /// (`By=..;Hash=..;URI=..`), when the client presented a certificate.
    pub xfcc: Option<String>,
}

/// Why a handshake did not finish.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS handshake: {0}")]
    Io(#[from] io::Error),
    #[error("TLS handshake did not finish within {0:?}")]
    Timeout(Duration),
}

/// `io::Read` + `io::Write` over the socket within one poll: glommio's
/// `Pending` becomes `WouldBlock` (the waker is already registered).
struct Io<'a, 'b> {
    tcp: &'a mut Tcp,
    cx: &'a mut Context<'b>,
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.tcp.poll_read(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.tcp).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TlsInner {
    /// Sends every record rustls has queued. `Ready(Ok)` once all are on the wire.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut io = Io {
                tcp: &mut self.tcp,
                cx,
            };
            match self.conn.write_tls(&mut io) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads records until rustls has plaintext for the reader, or the peer
    /// closed (cleanly or not), or the socket would block (`Pending`).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let n = {
                let mut io = Io {
                    tcp: &mut self.tcp,
                    cx,
                };
                match self.conn.read_tls(&mut io) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            };
            let state = match self.conn.process_new_packets() {
                Ok(st) => st,
                Err(e) => {
                    // Tell the peer why (the alert rustls queued), best effort.
                    let _ = self.poll_send(cx);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
                }
            };
            let ready = n == 0 || state.plaintext_bytes_to_read() > 0 || state.peer_has_closed();
            // Post-handshake messages may need an answer (a TLS 1.3 key
            // update); it goes out now if the socket has room, else with the
            // next write.
            if self.conn.wants_write() {
                if let Poll::Ready(Err(e)) = self.poll_send(cx) {
                    return Poll::Ready(Err(e));
                }
            }
            if ready {
                return Poll::Ready(Ok(()));
            }
        }
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        loop {
            match self.conn.reader().read(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                // The peer closed the TCP connection without a close_notify:
                // an EOF like a plain socket's. HTTP/1 framing (and the L4
                // byte counts) catch a truncation; Envoy and nginx treat it
                // the same way.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(0)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if let Err(e) = std::task::ready!(self.poll_fill(cx)) {
                return Poll::Ready(Err(e));
            }
        }
    }

    fn poll_write(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.unacked == 0 {
                if buf.is_empty() {
                    return Poll::Ready(Ok(0));
                }
                self.unacked = self.conn.writer().write(buf)?;
            }
            std::task::ready!(self.poll_send(cx))?;
            let n = std::mem::take(&mut self.unacked);
            if n > 0 {
                return Poll::Ready(Ok(n));
            }
            // rustls' buffer was full; it is empty now: try again.
        }
    }

    fn poll_close(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_send(cx))?;
        Pin::new(&mut self.tcp).poll_close(cx)
    }
}

impl TlsStream {
    fn with<R>(&self, f: impl FnOnce(&mut TlsInner) -> R) -> R {
        f(&mut self.0.borrow_mut())
    }

    /// What the handshake negotiated.
    pub fn info(&self) -> TlsInfo {
        self.with(|i| {
            let c = &i.conn;
            TlsInfo {
                version: match c.protocol_version() {
                    Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                    Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                    _ => "unknown",
                },
                cipher: c
                    .negotiated_cipher_suite()
                    .and_then(|s| s.suite().as_str())
                    .unwrap_or("unknown"),
                alpn: c.alpn_protocol().map(<[u8]>::to_vec),
                resumed: matches!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed)),
            }
        })
    }

    /// Runs `f` on the session's common state (peer certificates, ALPN).
    pub fn with_state<R>(&self, f: impl FnOnce(&rustls::CommonState) -> R) -> R {
        self.with(|i| match &i.conn {
            rustls::Connection::Client(c) => f(c),
            rustls::Connection::Server(s) => f(s),
        })
    }

    /// Whether an idle pooled session may carry another request: nothing
    /// arrived since the last response, or only TLS housekeeping (session
    /// tickets, a key update) that decrypts to no application bytes. Any
    /// plaintext, a close_notify, EOF or an error disqualifies it (the same
    /// rule as `upstream::pool`'s peek for plain sockets).
    fn quiet(&self) -> bool {
        self.with(|i| {
            let fd = i.tcp.as_raw_fd();
            if peek_would_block(fd) {
                return !has_plaintext(&mut i.conn);
            }
            // Something arrived: read it straight from the socket (not
            // through glommio, whose read may only report a pending poll)
            // and see what it decrypts to.
            loop {
                match i.conn.read_tls(&mut FdRead(fd)) {
                    Ok(0) => return false,
                    Ok(_) => {
                        if has_plaintext(&mut i.conn) {
                            return false;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        })
    }
}

/// A non-blocking `recv` on a raw socket, for [`TlsStream::quiet`].
struct FdRead(RawFd);

impl Read for FdRead {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let rc = unsafe {
            libc::recv(
                self.0,
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc as usize)
        }
    }
}

/// Whether rustls holds application bytes nobody read, or saw the peer
/// close, or failed: any of them makes a pooled session unusable.
fn has_plaintext(c: &mut rustls::Connection) -> bool {
    c.process_new_packets()
        .map(|st| st.plaintext_bytes_to_read() > 0 || st.peer_has_closed())
        .unwrap_or(true)
}

/// One non-blocking `MSG_PEEK` of one byte: true when the socket has nothing
/// to read (EAGAIN) and is open.
fn peek_would_block(fd: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: valid buffer of one byte; MSG_PEEK leaves the socket unchanged.
    let rc = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    rc < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EAGAIN)
}

/// Drives a handshake to its end: sends what rustls queued, reads what it
/// waits for. The caller bounds it with a timeout.
async fn handshake(inner: &mut TlsInner) -> Result<(), HandshakeError> {
    future::poll_fn(|cx| {
        while inner.conn.is_handshaking() {
            std::task::ready!(inner.poll_send(cx))?;
            if !inner.conn.is_handshaking() {
                break;
            }
            if inner.conn.wants_read() {
                let mut io = Io {
                    tcp: &mut inner.tcp,
                    cx,
                };
                match inner.conn.read_tls(&mut io) {
                    Ok(0) => {
                        return Poll::Ready(Err(HandshakeError::Io(
                            io::ErrorKind::UnexpectedEof.into(),
                        )))
                    }
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                    Err(e) => return Poll::Ready(Err(e.into())),
                }
                if let Err(e) = inner.conn.process_new_packets() {
                    // The alert goes out best effort; the error is what counts.
                    let _ = inner.poll_send(cx);
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
        // The last flight (a TLS 1.3 server's tickets, a client's Finished).
        std::task::ready!(inner.poll_send(cx))?;
        Poll::Ready(Ok(()))
    })
    .await
}

async fn with_timeout(
    mut inner: TlsInner,
    timeout: Duration,
) -> Result<TlsStream, (HandshakeError, Tcp)> {
    let done = crate::deadline::until(
        Some(std::time::Instant::now() + timeout),
        handshake(&mut inner),
    )
    .await;
    match done {
        Some(Ok(())) => Ok(TlsStream(Rc::new(RefCell::new(inner)))),
        Some(Err(e)) => Err((e, inner.tcp)),
        None => Err((HandshakeError::Timeout(timeout), inner.tcp)),
    }
}

impl Stream {
    /// Terminates TLS on an accepted connection. On failure the socket comes
    /// back (to be reset or counted by the caller).
    pub async fn accept_tls(
        tcp: Tcp,
        config: Arc<rustls::ServerConfig>,
        timeout: Duration,
    ) -> Result<Stream, (HandshakeError, Tcp)> {
        let conn = match rustls::ServerConnection::new(config) {
            Ok(c) => c,
            Err(e) => return Err((e.into(), tcp)),
        };
        let inner = TlsInner {
            tcp,
            conn: conn.into(),
            unacked: 0,
        };
        with_timeout(inner, timeout).await.map(Stream::Tls)
    }

    /// Originates TLS on a connected socket, naming `server_name` (SNI).
    pub async fn connect_tls(
        tcp: Tcp,
        config: Arc<rustls::ClientConfig>,
        server_name: ServerName<'static>,
        timeout: Duration,
    ) -> Result<Stream, (HandshakeError, Tcp)> {
        let conn = match rustls::ClientConnection::new(config, server_name) {
            Ok(c) => c,
            Err(e) => return Err((e.into(), tcp)),
        };
        let inner = TlsInner {
            tcp,
            conn: conn.into(),
            unacked: 0,
        };
        with_timeout(inner, timeout).await.map(Stream::Tls)
    }

    pub fn tls(&self) -> Option<&TlsStream> {
        match self {
            Stream::Tls(t) => Some(t),
            Stream::Plain(_) => None,
        }
    }

    /// The underlying socket's descriptor (for socket options: linger,
    /// shutdown of a plain socket, nodelay).
    pub fn as_raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(t) => t.0.borrow().tcp.as_raw_fd(),
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Plain(s) => s.peer_addr(),
            Stream::Tls(t) => t.0.borrow().tcp.peer_addr(),
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Plain(s) => s.local_addr(),
            Stream::Tls(t) => t.0.borrow().tcp.local_addr(),
        }
    }

    /// A second handle for writing while this one reads (see the module doc).
    pub fn writer(&self) -> io::Result<Stream> {
        match self {
            Stream::Plain(s) => {
                // SAFETY: dup of a valid fd; the new fd is owned by the returned stream.
                let fd = unsafe { libc::fcntl(s.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(Stream::from(unsafe { Tcp::from_raw_fd(fd) }))
            }
            Stream::Tls(t) => Ok(Stream::Tls(t.clone())),
        }
    }

    /// Whether an idle (pooled) connection may carry another request: the
    /// peer sent nothing since the last response (TLS: nothing that
    /// decrypts to application bytes or a close).
    ///
    /// Plain: one read attempt, which costs no syscall on a healthy pooled
    /// connection. The read arms a readiness wait (`POLL_ADD` on the ring)
    /// whenever it returns less than it asked for, which the last read of a
    /// response does: the socket was drained then. While that wait is
    /// pending, nothing (no byte, FIN or reset) has reached the socket since,
    /// and the check answers without a syscall ([`Tcp::quiet`]). If the poll
    /// completed, or none is armed (the last read filled its buffer), the
    /// read is a real non-blocking `recv`: EAGAIN (it arms the poll) means
    /// quiet; a byte, EOF or an error means not (the byte is consumed: the
    /// connection is dropped anyway). What arrived since the executor last
    /// reaped its ring (within the current pass) is not seen yet, the same
    /// window an epoll-driven pool (nginx, Envoy) has; the MSG_PEEK this
    /// replaced had its own (bytes arriving just after it).
    pub fn quiet(&mut self) -> bool {
        match self {
            Stream::Plain(s) => s.quiet(),
            Stream::Tls(t) => t.quiet(),
        }
    }

    /// Ends the write direction: a close_notify first on TLS, then a FIN.
    /// The read direction stays open.
    pub async fn shutdown_write(&mut self) {
        match self {
            Stream::Plain(s) => crate::net::socket::shutdown_write(s.as_raw_fd()),
            Stream::Tls(t) => {
                t.with(|i| i.conn.send_close_notify());
                let _ = future::poll_fn(|cx| t.with(|i| i.poll_send(cx))).await;
                crate::net::socket::shutdown_write(t.0.borrow().tcp.as_raw_fd());
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => s.poll_read(cx, buf),
            Stream::Tls(t) => t.with(|i| i.poll_read(cx, buf)),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(t) => t.with(|i| i.poll_write(cx, buf)),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(t) => t.with(|i| i.poll_send(cx)),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Tls(t) => t.with(|i| i.poll_close(cx)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
    use glommio::net::TcpListener;

    /// The next connection on `listener` as a [`Tcp`] (a dup of glommio's
    /// accepted socket, which is then closed).
    async fn accept(listener: &TcpListener) -> Tcp {
        let s = listener.accept().await.unwrap();
        // SAFETY: a dup of a live descriptor, owned by the Tcp from here.
        unsafe { Tcp::from_raw_fd(libc::dup(s.as_raw_fd())) }
    }

    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .spawn(move || async move { f().await })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Both directions at once through one session: the client writes a
    /// large upload through its writer half while it reads the echo, the
    /// way the L7 path streams a body while watching for the response. Then
    /// the pool's check: an idle session is quiet; one with unread
    /// application bytes is not.
    #[test]
    fn tls_echo_with_halves_and_quiet_check() {
        run(|| async {
            let (server_cfg, client_cfg) = configs();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = glommio::spawn_local(async move {
                let tcp = accept(&listener).await;
                let mut s = Stream::accept_tls(tcp, server_cfg, Duration::from_secs(5))
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut echoed = 0usize;
                // Echo until the client's half-close.
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                    echoed += n;
                }
                // Then stray bytes the client never asked for.
                s.write_all(b"stray").await.unwrap();
                glommio::timer::sleep(Duration::from_millis(200)).await;
                echoed
            });
            let tcp = crate::net::tcp::Tcp::connect(addr, None, Duration::from_secs(5))
                .await
                .unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut c = Stream::connect_tls(tcp, client_cfg, name, Duration::from_secs(5))
                .await
                .map_err(|(e, _)| e)
                .unwrap();
            let info = c.tls().unwrap().info();
            assert_eq!(info.version, "TLSv1.3");
            assert!(!info.resumed);
            // Idle and nothing unread: reusable (the server's session
            // tickets may have arrived; they are housekeeping).
            glommio::timer::sleep(Duration::from_millis(50)).await;
            assert!(c.quiet());
            let upload: Vec<u8> = (0..3 << 20).map(|i| (i % 251) as u8).collect();
            let mut w = c.writer().unwrap();
            let sent = upload.clone();
            let writer = glommio::spawn_local(async move {
                w.write_all(&sent).await.unwrap();
                w.shutdown_write().await;
            });
            let mut got = Vec::new();
            let mut buf = vec![0u8; 16 * 1024];
            while got.len() < upload.len() {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "early EOF after {} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
            }
            writer.await;
            assert!(got == upload);
            // The stray bytes arrive: the session must not be reused.
            glommio::timer::sleep(Duration::from_millis(100)).await;
            assert!(!c.quiet());
            assert_eq!(server.await, upload.len());
        });
    }

    /// A client that is not TLS at all: the server's handshake fails fast
    /// with an error (no panic, no hang) and hands the socket back.
    #[test]
    fn garbage_client_hello_fails_the_handshake() {
        run(|| async {
            let (server_cfg, _) = configs();
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = std::thread::spawn(move || {
                use std::io::{Read, Write};
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.write_all(b"\x16\x03\x01\x00\x05hello, not tls").unwrap();
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            });
            let tcp = accept(&listener).await;
            let r = Stream::accept_tls(tcp, server_cfg.clone(), Duration::from_secs(5)).await;
            assert!(matches!(r, Err((HandshakeError::Tls(_), _))));
            drop(r);
            client.join().unwrap();
            // A client that says nothing: bounded by the timeout.
            let silent = std::net::TcpStream::connect(addr).unwrap();
            let tcp = accept(&listener).await;
            let r = Stream::accept_tls(tcp, server_cfg, Duration::from_millis(100)).await;
            assert!(matches!(r, Err((HandshakeError::Timeout(_), _))));
            drop(silent);
        });
    }

    /// The pool's check on a plain connection, through the states it meets:
    /// quiet after a drained response (and again: checking changes
    /// nothing); not quiet once the peer sent a stray byte, even if the
    /// check ran before it came; not quiet once the peer closed.
    #[test]
    fn plain_quiet_check_sees_stray_bytes_and_close() {
        run(|| async {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (to_server, from_client) = glommio::channels::local_channel::new_bounded(1);
            let server = glommio::spawn_local(async move {
                for step in [&b"response"[..], b"stray"] {
                    let mut s = listener.accept().await.unwrap();
                    s.write_all(step).await.unwrap();
                    if step == b"stray" {
                        s.write_all(b"x").await.unwrap();
                    }
                    // Wait for the client's word, then send or close.
                    let what: u8 = from_client.recv().await.unwrap();
                    match what {
                        b's' => s.write_all(b"late").await.unwrap(),
                        _ => drop(s),
                    }
                    let _ = from_client.recv().await;
                }
            });
            let settle = || glommio::timer::sleep(Duration::from_millis(50));
            // A response read whole, then the server sends bytes nobody asked for.
            let mut c = Stream::from(
                crate::net::tcp::Tcp::connect(addr, None, Duration::from_secs(5))
                    .await
                    .unwrap(),
            );
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"response");
            assert!(c.quiet());
            assert!(c.quiet(), "a second check agrees");
            to_server.send(b's').await.unwrap();
            settle().await;
            assert!(!c.quiet(), "stray bytes after a checked-quiet state");
            to_server.send(b'-').await.unwrap();
            // Second connection: bytes that were there before any check, then a close.
            let mut c = Stream::from(
                crate::net::tcp::Tcp::connect(addr, None, Duration::from_secs(5))
                    .await
                    .unwrap(),
            );
            settle().await;
            let n = c.read(&mut buf[..5]).await.unwrap();
            assert_eq!(&buf[..n], b"stray");
            assert!(!c.quiet(), "a byte was left unread");
            let mut c2 = c;
            to_server.send(b'c').await.unwrap();
            settle().await;
            assert!(!c2.quiet(), "the peer closed");
            to_server.send(b'-').await.unwrap();
            server.await;
        });
    }
}
