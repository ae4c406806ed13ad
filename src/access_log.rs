//! Access log: one line per L4 connection or L7 request, buffered per core.
//!
//! A core formats entries into its own buffer and writes it out when it passes
//! 16 KiB, once a second, and at shutdown. A write never blocks an executor: a
//! slow reader of stdout (a full pipe) makes the buffer grow to a cap, then
//! entries are dropped and counted (`access_log_dropped`). How stdout is
//! written depends on what it is (see [`CoreLog::open`]). Formats: Envoy's
//! default text format, or JSON with the configured fields in their order.

use std::cell::RefCell;
use std::ffi::CString;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{AccessLog, LogFormat, LogTarget};

/// Flush once the buffer holds this much.
const FLUSH_AT: usize = 16 * 1024;
/// Past this, new entries are dropped until the sink drains.
const MAX_BUFFERED: usize = 1024 * 1024;

/// One connection or request, as logged.
#[derive(Debug, Clone, Default)]
pub struct Entry<'a> {
    pub start_time: Option<SystemTime>,
    /// "TCP" for L4, or the HTTP version ("HTTP/1.1").
    pub protocol: &'a str,
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// 0 for TCP.
    pub response_code: u16,
    /// Envoy response flags ("-" when none): UF, UT, NR, URX, DC, UC, SI, ...
    pub response_flags: &'a str,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub downstream_remote: Option<SocketAddr>,
    pub downstream_local: Option<SocketAddr>,
    pub listener: &'a str,
    pub request_id: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub forwarded_for: Option<&'a str>,
    /// The client's SPIFFE ID on an mTLS connection
    /// (Envoy's `%DOWNSTREAM_PEER_URI_SAN%`).
    pub peer_uri_san: Option<&'a str>,
    /// `TLSv1.3` etc. when TLS was terminated (`%DOWNSTREAM_TLS_VERSION%`).
    pub tls_version: Option<&'a str>,
    /// `%DOWNSTREAM_TLS_CIPHER%`.
    pub tls_cipher: Option<&'a str>,
    /// The SNI the client asked for (`%REQUESTED_SERVER_NAME%`).
    pub requested_server_name: Option<&'a str>,
    /// The authorization policy that denied (or, with AUDIT, audited) it.
    pub authz_policy: Option<&'a str>,
}

/// One core's access-log writer.
pub struct CoreLog {
    fd: RawFd,
    /// A socket (journald's stdout): written with `send(MSG_DONTWAIT)`,
    /// since its description is shared and stays blocking.
    socket: bool,
    format: LogFormat,
    fields: Vec<String>,
    buf: RefCell<Vec<u8>>,
    pub dropped: std::cell::Cell<u64>,
}

impl CoreLog {
    /// Opens this core's writer for the configured target.
    ///
    /// A file path gets a description of its own, O_APPEND | O_NONBLOCK.
    /// Stdout depends on what it is:
    /// - a regular file (`remora run > log 2>&1`): a `dup` of fd 1, sharing its
    ///   description and so its offset with stderr. A description of our own
    ///   (O_APPEND) would keep its own offset, and stderr, without O_APPEND
    ///   under `>`, would then write over access-log lines. O_NONBLOCK means
    ///   nothing for a regular file, so sharing costs no blocking.
    /// - a socket (systemd's journal): a `dup`, written with
    ///   `send(MSG_DONTWAIT)`, which never blocks yet leaves the shared
    ///   description blocking for stderr.
    /// - a pipe, FIFO or terminal: a new description of it (through
    ///   `/proc/self/fd/1`) opened O_NONBLOCK, so the process's own stdout
    ///   stays blocking. A pipe has no offset to share.
    pub fn open(cfg: &AccessLog) -> io::Result<CoreLog> {
        let (fd, socket) = match &cfg.target {
            // O_NONBLOCK matters if the path is a FIFO.
            LogTarget::File(p) => (open_append(p, libc::O_NONBLOCK)?, false),
            LogTarget::Stdout => match stdout_kind()? {
                libc::S_IFREG => (dup_stdout()?, false),
                libc::S_IFSOCK => (dup_stdout()?, true),
                _ => (
                    open_append(Path::new("/proc/self/fd/1"), libc::O_NONBLOCK)?,
                    false,
                ),
            },
        };
        Ok(CoreLog {
            fd,
            socket,
            format: cfg.format,
            fields: cfg.fields.clone(),
            buf: RefCell::new(Vec::with_capacity(FLUSH_AT)),
            dropped: std::cell::Cell::new(0),
        })
    }

    /// Formats `e` into the buffer; flushes if the buffer is full enough.
    pub fn record(&self, e: &Entry<'_>) {
        {
            let mut buf = self.buf.borrow_mut();
            if buf.len() >= MAX_BUFFERED {
                self.dropped.set(self.dropped.get() + 1);
                return;
            }
            let line = match self.format {
                LogFormat::Text => text_line(e),
                LogFormat::Json => json_line(e, &self.fields),
            };
            buf.extend_from_slice(line.as_bytes());
            if buf.len() < FLUSH_AT {
                return;
            }
        }
        self.flush();
    }

    /// Writes out as much of the buffer as the sink takes without blocking.
    pub fn flush(&self) {
        let mut buf = self.buf.borrow_mut();
        let mut off = 0;
        while off < buf.len() {
            let rest = &buf[off..];
            // SAFETY: the slice is valid for reads; fd is ours.
            let n = unsafe {
                if self.socket {
                    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                    libc::send(self.fd, rest.as_ptr().cast(), rest.len(), flags)
                } else {
                    libc::write(self.fd, rest.as_ptr().cast(), rest.len())
                }
            };
            if n <= 0 {
                break; // EAGAIN (reader is slow) or an error: keep the rest.
            }
            off += n as usize;
        }
        buf.drain(..off);
    }
}

impl Drop for CoreLog {
    fn drop(&mut self) {
        self.flush();
        // SAFETY: fd is owned by this value.
        unsafe { libc::close(self.fd) };
    }
}

/// `open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | extra)`.
fn open_append(path: &Path, extra: libc::c_int) -> io::Result<RawFd> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let flags = libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC | extra;
    // SAFETY: valid C string; flags are plain.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o644) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("cannot open access log {}: {e}", path.display()),
        ));
    }
    Ok(fd)
}

/// The file type bits (`S_IFREG`, `S_IFSOCK`, ...) of fd 1.
fn stdout_kind() -> io::Result<libc::mode_t> {
    // SAFETY: an all-zero `stat` is a valid value, which fstat overwrites;
    // fd 1 is only inspected.
    let (rc, st) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(1, &mut st), st)
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("access log to stdout: stdout is not usable: {e}"),
        ));
    }
    Ok(st.st_mode & libc::S_IFMT)
}

fn dup_stdout() -> io::Result<RawFd> {
    // SAFETY: duplicates fd 1 into a new close-on-exec fd we own.
    let fd = unsafe { libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("access log to stdout: cannot duplicate stdout: {e}"),
        ));
    }
    Ok(fd)
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// Envoy's default format:
/// `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE%
/// %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%
/// "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"`
pub fn text_line(e: &Entry<'_>) -> String {
    let mut s = String::with_capacity(200);
    let _ = writeln!(
        s,
        "[{}] \"{} {} {}\" {} {} {} {} {} - \"{}\" \"{}\" \"{}\" \"{}\" \"{}\"",
        rfc3339(e.start_time.unwrap_or(UNIX_EPOCH)),
        e.method.unwrap_or("-"),
        e.path.unwrap_or("-"),
        if e.protocol == "TCP" { "-" } else { e.protocol },
        e.response_code,
        e.response_flags,
        e.bytes_received,
        e.bytes_sent,
        e.duration.as_millis(),
        e.forwarded_for.unwrap_or("-"),
        e.user_agent.unwrap_or("-"),
        e.request_id.unwrap_or("-"),
        e.authority.unwrap_or("-"),
        opt(e.upstream_host),
    );
    s
}

/// One JSON object per line with the configured fields, in the configured
/// order (as Envoy's `json_format` writes its keys).
pub fn json_line(e: &Entry<'_>, fields: &[String]) -> String {
    use serde_json::Value;
    let mut s = String::with_capacity(64 + 24 * fields.len());
    s.push('{');
    for f in fields {
        let v: Value = match f.as_str() {
            "start_time" => rfc3339(e.start_time.unwrap_or(UNIX_EPOCH)).into(),
            "protocol" => e.protocol.into(),
            "method" => e.method.into(),
            "path" => e.path.into(),
            "response_code" => e.response_code.into(),
            "response_flags" => e.response_flags.into(),
            "bytes_received" => e.bytes_received.into(),
            "bytes_sent" => e.bytes_sent.into(),
            "duration" => (e.duration.as_millis() as u64).into(),
            "upstream_host" => e.upstream_host.map(|a| a.to_string()).into(),
            "downstream_remote_address" => e.downstream_remote.map(|a| a.to_string()).into(),
            "downstream_local_address" => e.downstream_local.map(|a| a.to_string()).into(),
            "listener" => e.listener.into(),
            "request_id" => e.request_id.into(),
            "authority" => e.authority.into(),
            "user_agent" => e.user_agent.into(),
            "x_forwarded_for" => e.forwarded_for.into(),
            "downstream_peer_uri_san" => e.peer_uri_san.into(),
            "downstream_tls_version" => e.tls_version.into(),
            "downstream_tls_cipher" => e.tls_cipher.into(),
            "requested_server_name" => e.requested_server_name.into(),
            "authz_policy" => e.authz_policy.into(),
            _ => continue,
        };
        if s.len() > 1 {
            s.push(',');
        }
        s.push_str(&Value::from(f.as_str()).to_string());
        s.push(':');
        s.push_str(&v.to_string());
    }
    s.push_str("}\n");
    s
}

/// `2026-11-24T20:05:11.083Z` (UTC, milliseconds), without a date library:
/// days-to-civil from Howard Hinnant's algorithms.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_896_311_083);
        assert_eq!(rfc3339(t), "2026-11-28T20:05:11.083Z"); // checked with Python datetime
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&rfc3339(leap)[..10], "2000-02-29");
    }

    #[test]
    fn envoy_text_format_for_tcp() {
        let e = Entry {
            start_time: Some(UNIX_EPOCH),
            protocol: "TCP",
            response_flags: "UF",
            bytes_received: 10,
            bytes_sent: 20,
            duration: Duration::from_millis(7),
            upstream_host: Some("10.0.0.1:80".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(
            text_line(&e),
            "[1970-01-01T00:00:00.000Z] \"- - -\" 0 UF 10 20 7 - \"-\" \"-\" \"-\" \"-\" \"10.0.0.1:80\"\n"
        );
    }

    #[test]
    fn json_has_only_the_chosen_fields() {
        let e = Entry {
            protocol: "HTTP/1.1",
            method: Some("GET"),
            response_code: 200,
            response_flags: "-",
            ..Default::default()
        };
        let line = json_line(&e, &["method".into(), "response_code".into()]);
        assert_eq!(line, "{\"method\":\"GET\",\"response_code\":200}\n");
        // Keys in the configured order, not sorted.
        let line = json_line(&e, &["response_code".into(), "method".into()]);
        assert_eq!(line, "{\"response_code\":200,\"method\":\"GET\"}\n");
    }
}
