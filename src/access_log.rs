//! Access log: one line per L4 connection or L7 request, buffered per core.
//!
//! A core formats entries into its own buffer and writes it out when it passes
//! 16 KiB, once a second, and at shutdown. Writes go through a file description
//! of our own opened O_NONBLOCK, so a slow reader of stdout (a full pipe) can
//! never block an executor: the buffer grows to a cap, then entries are dropped
//! and counted (`access_log_dropped`). Formats: Envoy's default text format, or
//! JSON with configurable fields.

use std::cell::RefCell;
use std::ffi::CString;
use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
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
    format: LogFormat,
    fields: Vec<String>,
    buf: RefCell<Vec<u8>>,
    pub dropped: std::cell::Cell<u64>,
}

impl CoreLog {
    /// Opens this core's own file description for the configured target.
    pub fn open(cfg: &AccessLog) -> io::Result<CoreLog> {
        let path = match &cfg.target {
            // A new description of whatever stdout is (pipe, file, tty), so
            // O_NONBLOCK here does not change the process's own stdout.
            LogTarget::Stdout => "/proc/self/fd/1".into(),
            LogTarget::File(p) => p.clone(),
        };
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: valid C string; flags are plain.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_WRONLY
                    | libc::O_APPEND
                    | libc::O_CREAT
                    | libc::O_NONBLOCK
                    | libc::O_CLOEXEC,
                0o644,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot open access log {}: {e}", path.display()),
            ));
        }
        Ok(CoreLog {
            fd,
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
            // SAFETY: the slice is valid for reads; fd is ours.
            let n = unsafe { libc::write(self.fd, buf[off..].as_ptr().cast(), buf.len() - off) };
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

/// One JSON object per line with the configured fields.
pub fn json_line(e: &Entry<'_>, fields: &[String]) -> String {
    let mut m = serde_json::Map::new();
    for f in fields {
        let v = match f.as_str() {
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
        m.insert(f.clone(), v);
    }
    let mut s = serde_json::Value::Object(m).to_string();
    s.push('\n');
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
    }
}
