//! One probe on a non-blocking socket: connect, send the request, read the
//! status line. Driven by the checker's readiness loop; it never blocks, and
//! whatever the peer sends is at worst a failed probe.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::tracker::Outcome;
use crate::net::socket::{self as sys, Xfer};

/// Longest reply we read while looking for the final status line. A status
/// line is about 20 bytes; the room is for interim (1xx) heads before it.
const MAX_HEAD: usize = 8 * 1024;

/// What to send and how to judge the reply, prepared once per endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Connect only (Envoy's `tcp_health_check` with no payload).
    Tcp,
    Http {
        request: Box<[u8]>,
        expected: Vec<(u16, u16)>,
        retriable: Vec<(u16, u16)>,
    },
}

/// The request Envoy's HTTP checker sends, with `Connection: close` since a
/// probe's connection is not reused (Envoy's `reuse_connection: false`).
pub fn http_request(path: &str, host: &str) -> Box<[u8]> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Envoy/HC\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
    .into_boxed_slice()
}

/// Whether `status` is in one of the half-open `[start, end)` ranges.
pub fn in_ranges(status: u16, ranges: &[(u16, u16)]) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= status && status < hi)
}

/// Why a probe failed. Kept (as text) as the endpoint's last failure for the
/// admin `/clusters` output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("connect failed: {0}")]
    Connect(io::ErrorKind),
    #[error("timed out while {0}")]
    Timeout(&'static str),
    #[error("connection failed: {0}")]
    Io(io::ErrorKind),
    #[error("connection closed before a status line")]
    Closed,
    #[error("not an HTTP/1 response: {0}")]
    Protocol(&'static str),
    #[error("status {0} (retriable)")]
    RetriableStatus(u16),
    #[error("status {0}")]
    Status(u16),
}

impl ProbeFailure {
    /// How the failure counts (Envoy: only an unexpected, non-retriable
    /// status is an ACTIVE failure that ejects at once; see [`Outcome`]).
    pub fn outcome(&self) -> Outcome {
        match self {
            ProbeFailure::Status(_) => Outcome::Reject,
            _ => Outcome::Fail,
        }
    }
}

/// What the probe waits for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Write,
    Read,
}

/// The result of driving a probe as far as it can go without blocking.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Wait(Interest),
    Done(Result<(), ProbeFailure>),
}

#[derive(Debug)]
enum Phase {
    Connecting,
    Sending { sent: usize },
    Reading { buf: Vec<u8> },
}

/// A probe in flight. Dropping it closes the socket (and so removes it from
/// the checker's epoll set).
#[derive(Debug)]
pub struct Probe {
    socket: Socket,
    phase: Phase,
}

impl Probe {
    /// Starts a non-blocking connect. `Err` is a local failure (no socket:
    /// EMFILE and the like), which says nothing about the endpoint.
    pub fn start(addr: SocketAddr, check: &Check) -> io::Result<(Option<Probe>, Step)> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        let mut probe = Probe {
            socket,
            phase: Phase::Connecting,
        };
        match probe.socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
                return Ok((Some(probe), Step::Wait(Interest::Write)));
            }
            // Loopback refuses within connect() itself.
            Err(e) => return Ok((None, Step::Done(Err(ProbeFailure::Connect(e.kind()))))),
        }
        let step = probe.connected(check);
        Ok((probe.keep(&step), step))
    }

    fn keep(self, step: &Step) -> Option<Probe> {
        matches!(step, Step::Wait(_)).then_some(self)
    }

    pub fn fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }

    /// What the probe was doing, for a timeout's reason.
    pub fn doing(&self) -> &'static str {
        match self.phase {
            Phase::Connecting => "connecting",
            Phase::Sending { .. } => "sending the request",
            Phase::Reading { .. } => "waiting for the status line",
        }
    }

    /// Advances after the socket became ready (or reported an error).
    pub fn advance(&mut self, check: &Check) -> Step {
        match self.phase {
            Phase::Connecting => match self.socket.take_error() {
                Ok(None) => self.connected(check),
                Ok(Some(e)) | Err(e) => Step::Done(Err(ProbeFailure::Connect(e.kind()))),
            },
            Phase::Sending { .. } => self.send(check),
            Phase::Reading { .. } => self.read(check),
        }
    }

    fn connected(&mut self, check: &Check) -> Step {
        match check {
            Check::Tcp => Step::Done(Ok(())),
            Check::Http { .. } => {
                self.phase = Phase::Sending { sent: 0 };
                self.send(check)
            }
        }
    }

    fn send(&mut self, check: &Check) -> Step {
        let Check::Http { request, .. } = check else {
            return Step::Done(Ok(()));
        };
        let Phase::Sending { mut sent } = self.phase else {
            return Step::Wait(Interest::Read);
        };
        while sent < request.len() {
            match sys::send(self.fd(), &request[sent..]) {
                Ok(Xfer::Done(n)) => sent += n,
                Ok(Xfer::WouldBlock) => {
                    self.phase = Phase::Sending { sent };
                    return Step::Wait(Interest::Write);
                }
                Ok(Xfer::Eof) => return Step::Done(Err(ProbeFailure::Closed)),
                Err(e) => return Step::Done(Err(ProbeFailure::Io(e.kind()))),
            }
        }
        self.phase = Phase::Reading {
            buf: Vec::with_capacity(256),
        };
        self.read(check)
    }

    fn read(&mut self, check: &Check) -> Step {
        let (
            Check::Http {
                expected,
                retriable,
                ..
            },
            Phase::Reading { buf },
        ) = (check, &mut self.phase)
        else {
            return Step::Done(Ok(()));
        };
        let fd = self.socket.as_raw_fd();
        let mut chunk = [0u8; 1024];
        loop {
            let room = (MAX_HEAD - buf.len()).min(chunk.len());
            if room == 0 {
                return Step::Done(Err(ProbeFailure::Protocol("no status line in 8 KiB")));
            }
            match sys::recv(fd, &mut chunk[..room]) {
                Ok(Xfer::Done(n)) => buf.extend_from_slice(&chunk[..n]),
                Ok(Xfer::WouldBlock) => return Step::Wait(Interest::Read),
                Ok(Xfer::Eof) => {
                    return Step::Done(match final_status(buf) {
                        Head::Status(s) => judge(s, expected, retriable),
                        Head::Invalid(why) => Err(ProbeFailure::Protocol(why)),
                        Head::Partial => Err(ProbeFailure::Closed),
                    })
                }
                Err(e) => return Step::Done(Err(ProbeFailure::Io(e.kind()))),
            }
            match final_status(buf) {
                Head::Partial => {}
                Head::Status(s) => return Step::Done(judge(s, expected, retriable)),
                Head::Invalid(why) => return Step::Done(Err(ProbeFailure::Protocol(why))),
            }
        }
    }
}

fn judge(
    status: u16,
    expected: &[(u16, u16)],
    retriable: &[(u16, u16)],
) -> Result<(), ProbeFailure> {
    if in_ranges(status, expected) {
        Ok(())
    } else if in_ranges(status, retriable) {
        Err(ProbeFailure::RetriableStatus(status))
    } else {
        Err(ProbeFailure::Status(status))
    }
}

/// How far the bytes read so far get us to a final status.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    Partial,
    Status(u16),
    Invalid(&'static str),
}

/// Finds the final status in the start of a response: the first status line
/// that is not an interim 1xx response (RFC 9110 §15.2: a client must skip
/// those; 101 is final). Only status lines are parsed, with httparse; header
/// fields and the body do not matter to a probe.
pub fn final_status(buf: &[u8]) -> Head {
    let mut at = 0;
    loop {
        let rest = &buf[at..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            return Head::Partial;
        };
        let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
        let Some(status) = parse_status_line(line) else {
            return Head::Invalid("malformed status line");
        };
        if !(100..200).contains(&status) || status == 101 {
            return Head::Status(status);
        }
        // An interim head: skip to its end (its fields end with an empty line).
        match memchr::memmem::find(rest, b"\r\n\r\n") {
            Some(end) => at += end + 4,
            None => return Head::Partial,
        }
    }
}

/// Parses one status line (without its line ending) with httparse, by giving it
/// the line as a head with no fields.
fn parse_status_line(line: &[u8]) -> Option<u16> {
    // The line is already bounded by MAX_HEAD; a copy keeps httparse's input whole.
    let mut head = Vec::with_capacity(line.len() + 4);
    head.extend_from_slice(line);
    head.extend_from_slice(b"\r\n\r\n");
    let mut res = httparse::Response::new(&mut []);
    match res.parse(&head) {
        Ok(httparse::Status::Complete(_)) => res.code,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_is_envoys() {
        assert_eq!(
            &*http_request("/healthz", "reviews"),
            b"GET /healthz HTTP/1.1\r\nHost: reviews\r\nUser-Agent: Envoy/HC\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn ranges_are_half_open() {
        let r = [(200, 201), (300, 400)];
        for (s, want) in [
            (199, false),
            (200, true),
            (201, false),
            (299, false),
            (300, true),
            (399, true),
            (400, false),
        ] {
            assert_eq!(in_ranges(s, &r), want, "{s}");
        }
        assert!(!in_ranges(200, &[]));
    }

    #[test]
    fn final_status_table() {
        let cases: &[(&[u8], Head)] = &[
            (b"", Head::Partial),
            (b"HTTP/1.1 200", Head::Partial),
            (b"HTTP/1.1 200 OK\r", Head::Partial),
            (b"HTTP/1.1 200 OK\r\n", Head::Status(200)),
            (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n",
                Head::Status(503),
            ),
            (b"HTTP/1.0 204 No Content\n", Head::Status(204)),
            (b"HTTP/1.1 200 \r\n", Head::Status(200)),
            // Interim responses are skipped; 101 is final.
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
                Head::Status(200),
            ),
            (b"HTTP/1.1 100 Continue\r\n", Head::Partial),
            (
                b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 404",
                Head::Partial,
            ),
            (b"HTTP/1.1 101 Switching Protocols\r\n", Head::Status(101)),
            // Garbage.
            (
                b"SSH-2.0-OpenSSH_9.2\r\n",
                Head::Invalid("malformed status line"),
            ),
            (
                b"HTTP/1.1 2000 OK\r\n",
                Head::Invalid("malformed status line"),
            ),
            (b"HTTP/1.1 abc\r\n", Head::Invalid("malformed status line")),
            (b"\r\n", Head::Invalid("malformed status line")),
            (b"\x00\xff\xfe\n", Head::Invalid("malformed status line")),
        ];
        for (bytes, want) in cases {
            assert_eq!(
                &final_status(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn every_split_of_a_reply_gives_partial_then_the_status() {
        let reply = b"HTTP/1.1 100 Continue\r\nX: y\r\n\r\nHTTP/1.1 503 Unavailable\r\n\r\n";
        let first_final = reply.len() - 2; // the 503 line is complete up to here
        for cut in 0..=reply.len() {
            let got = final_status(&reply[..cut]);
            if cut < first_final {
                assert_eq!(got, Head::Partial, "cut at {cut}");
            } else {
                assert_eq!(got, Head::Status(503), "cut at {cut}");
            }
        }
    }

    #[test]
    fn judgement_follows_envoy() {
        let expected = [(200, 300)];
        let retriable = [(503, 504)];
        assert_eq!(judge(204, &expected, &retriable), Ok(()));
        assert_eq!(
            judge(503, &expected, &retriable),
            Err(ProbeFailure::RetriableStatus(503))
        );
        assert_eq!(
            judge(500, &expected, &retriable),
            Err(ProbeFailure::Status(500))
        );
        assert_eq!(ProbeFailure::Status(500).outcome(), Outcome::Reject);
        assert_eq!(ProbeFailure::RetriableStatus(503).outcome(), Outcome::Fail);
        assert_eq!(ProbeFailure::Timeout("connecting").outcome(), Outcome::Fail);
        assert_eq!(ProbeFailure::Protocol("x").outcome(), Outcome::Fail);
    }
}
