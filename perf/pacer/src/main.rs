//! perf/pacer: an open-loop, constant-rate HTTP/1.1 keep-alive load generator.
//!
//! wrk is closed-loop: a connection sends its next request when the last answer
//! came, so a proxy that stalls is simply asked less, and a 50 ms stall shows as one
//! slow request instead of the thousands that were due during it (coordinated
//! omission). The pacer keeps a fixed schedule instead, as wrk2 does:
//!
//! ```text
//!   C connections, rate R:  request k of connection c is due at t0 + (k*C + c) / R
//!   latency = time its response completed - its DUE time (not its send time)
//! ```
//!
//! One HTTP/1.1 request in flight per connection (no pipelining, as every proxy
//! under test expects). A request due while its connection still waits for the
//! previous answer is queued and sent as soon as that answer arrives; its latency
//! still counts from its due time, so a stall is charged to every request due
//! during it. One thread, non-blocking sockets, level-triggered epoll with a
//! nanosecond timeout (`epoll_pwait2`) until the next due request; pin it with
//! `taskset` or `--cpu`.
//!
//! The run: `--warmup` seconds paced and discarded, then `--duration` seconds
//! measured, then at most `--drain` seconds for the answers still in flight (their
//! latencies count; requests due but never sent are reported as `unsent`). Output:
//! one JSON line on stdout with the offered and achieved rate (responses completed
//! inside the measured window / its length), nearest-rank p50/p99/p99.9/max in µs
//! over the requests due inside the window, error counts, and `max_oversleep_us`:
//! the latest the generator itself woke up past a due time (the rig's own share).
//!
//! `--print-schedule N` prints the first N requests' [connection, k, due offset
//! in ns] instead (the harness's
//! self-test checks the arithmetic against the formula above).

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::Duration;

/// When each request is due, in nanoseconds after the schedule's start.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    rate: f64,
    conns: u64,
}

impl Schedule {
    /// Offset of the `i`-th request overall (i = k*C + c).
    fn offset_ns(&self, i: u64) -> u64 {
        // f64 holds i exactly up to 2^53; at 1e6 req/s that is centuries.
        (i as f64 * 1e9 / self.rate) as u64
    }

    /// Offset of request `k` of connection `c`.
    fn due_ns(&self, k: u64, c: u64) -> u64 {
        self.offset_ns(k * self.conns + c)
    }

    /// The first request index whose due offset is at or after `ns`.
    fn first_at_or_after(&self, ns: u64) -> u64 {
        let mut i = (ns as f64 * self.rate / 1e9).floor() as u64;
        while i > 0 && self.offset_ns(i - 1) >= ns {
            i -= 1;
        }
        while self.offset_ns(i) < ns {
            i += 1;
        }
        i
    }
}

/// Nearest-rank percentile of sorted values (`p` in percent).
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    // The epsilon keeps 99.9% of 1000 at rank 999 (0.999 * 1000 is 999.0000000000001).
    let rank = (p * sorted.len() as f64 / 100.0 - 1e-6).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

// ───────────────────────────── response parsing ─────────────────────────────

/// What a complete response told us.
#[derive(Debug, PartialEq, Eq)]
struct Done {
    status: u16,
    /// `Connection: close` (or HTTP/1.0 without keep-alive): reconnect after it.
    close: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum ParseError {
    BadHead(&'static str),
    /// Bytes past the end of the response we asked for (we never pipeline).
    Unexpected,
    Chunked,
}

/// The response in progress on one connection: its head until the blank line,
/// then a count of body bytes still to come (the body itself is not kept).
#[derive(Debug)]
enum Reader {
    Head(Vec<u8>),
    Body {
        left: usize,
        status: u16,
        close: bool,
    },
}

impl Reader {
    fn new() -> Self {
        Reader::Head(Vec::with_capacity(512))
    }

    /// Feeds received bytes; Some when the response is complete. Bytes after it
    /// are an error (the server answered something we did not ask).
    fn feed(&mut self, data: &[u8]) -> Result<Option<Done>, ParseError> {
        match self {
            Reader::Head(buf) => {
                let searched = buf.len().saturating_sub(3);
                buf.extend_from_slice(data);
                let Some(pos) = find(&buf[searched..], b"\r\n\r\n") else {
                    if buf.len() > 64 * 1024 {
                        return Err(ParseError::BadHead("head longer than 64 KiB"));
                    }
                    return Ok(None);
                };
                let end = searched + pos + 4;
                let (status, length, close) = parse_head(&buf[..end])?;
                let have = buf.len() - end;
                if have > length {
                    return Err(ParseError::Unexpected);
                }
                if have == length {
                    *self = Reader::new();
                    return Ok(Some(Done { status, close }));
                }
                *self = Reader::Body {
                    left: length - have,
                    status,
                    close,
                };
                Ok(None)
            }
            Reader::Body {
                left,
                status,
                close,
            } => {
                if data.len() > *left {
                    return Err(ParseError::Unexpected);
                }
                *left -= data.len();
                if *left > 0 {
                    return Ok(None);
                }
                let done = Done {
                    status: *status,
                    close: *close,
                };
                *self = Reader::new();
                Ok(Some(done))
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// (status, Content-Length, close) of a response head ending in CRLFCRLF.
fn parse_head(head: &[u8]) -> Result<(u16, usize, bool), ParseError> {
    let text = std::str::from_utf8(head).map_err(|_| ParseError::BadHead("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") {
        return Err(ParseError::BadHead("not an HTTP/1.x status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(ParseError::BadHead("bad status code"))?;
    let mut length = None;
    let mut close = version == "HTTP/1.0";
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or(ParseError::BadHead("header without a colon"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| ParseError::BadHead("bad Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ParseError::Chunked);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            close = v.contains("close") || (close && !v.contains("keep-alive"));
        }
    }
    // RFC 9112 §6.3: 1xx, 204 and 304 have no body.
    let length = match status {
        100..=199 | 204 | 304 => 0,
        _ => length.ok_or(ParseError::BadHead(
            "no Content-Length (needed for keep-alive)",
        ))?,
    };
    Ok((status, length, close))
}

// ───────────────────────────── arguments ─────────────────────────────

struct Args {
    addr: SocketAddr,
    host: String,
    path: String,
    rate: f64,
    conns: u64,
    duration: f64,
    warmup: f64,
    drain: f64,
    cpu: Option<usize>,
    print_schedule: Option<u64>,
}

const USAGE: &str = "usage: pacer --rate REQ_PER_S [--connections 50] [--duration 10] \
[--warmup 2] [--drain 2] [--cpu N] [--print-schedule N] http://HOST:PORT/PATH";

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut opts: HashMap<&str, &str> = HashMap::new();
    let mut url = None;
    let mut it = argv.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => return Err(USAGE.into()),
            "--rate" | "--connections" | "--duration" | "--warmup" | "--drain" | "--cpu"
            | "--print-schedule" => {
                let v = it.next().ok_or(format!("{a} needs a value"))?;
                opts.insert(a.as_str(), v.as_str());
            }
            s if s.starts_with("http://") && url.is_none() => url = Some(s),
            s => return Err(format!("unexpected argument {s:?}\n{USAGE}")),
        }
    }
    fn num<T: std::str::FromStr>(o: &HashMap<&str, &str>, k: &str, d: T) -> Result<T, String> {
        o.get(k)
            .map(|v| v.parse().map_err(|_| format!("{k}: not a number: {v:?}")))
            .unwrap_or(Ok(d))
    }
    let rate: f64 = num(&opts, "--rate", f64::NAN)?;
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!(
            "--rate must be a positive number of requests/s\n{USAGE}"
        ));
    }
    let conns: u64 = num(&opts, "--connections", 50)?;
    if conns == 0 || conns > 10_000 {
        return Err("--connections must be 1..=10000".into());
    }
    let duration: f64 = num(&opts, "--duration", 10.0)?;
    let warmup: f64 = num(&opts, "--warmup", 2.0)?;
    let drain: f64 = num(&opts, "--drain", 2.0)?;
    if !(duration > 0.0 && warmup >= 0.0 && drain >= 0.0) {
        return Err("--duration must be > 0, --warmup and --drain >= 0".into());
    }
    let cpu = match opts.get("--cpu") {
        Some(v) => Some(
            v.parse()
                .map_err(|_| format!("--cpu: not a CPU number: {v:?}"))?,
        ),
        None => None,
    };
    let print_schedule = match opts.get("--print-schedule") {
        Some(v) => Some(v.parse().map_err(|_| format!("--print-schedule: {v:?}"))?),
        None => None,
    };
    let url = url.ok_or(format!("no URL\n{USAGE}"))?;
    let rest = &url["http://".len()..];
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if print_schedule.is_some() {
        SocketAddr::from(([127, 0, 0, 1], 0))
    } else {
        authority
            .to_socket_addrs()
            .map_err(|e| format!("{authority}: {e} (expected HOST:PORT)"))?
            .next()
            .ok_or(format!("{authority}: no address"))?
    };
    Ok(Args {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
        rate,
        conns,
        duration,
        warmup,
        drain,
        cpu,
        print_schedule,
    })
}

// ───────────────────────────── the event loop ─────────────────────────────

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and sched_setaffinity
    // only read and write the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[derive(Default)]
struct Errors {
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    parse: u64,
}

/// One client connection and where it is in its share of the schedule.
struct Conn {
    stream: Option<TcpStream>,
    /// Requests of this connection due so far (k = 0..assigned).
    assigned: u64,
    /// Index k of the request in flight, or of the next to send.
    next: u64,
    in_flight: bool,
    /// Bytes of the in-flight request already written.
    written: usize,
    want_out: bool,
    reader: Reader,
    /// A dead connection tries to connect again at this time.
    retry_at: u64,
}

struct Run<'a> {
    args: &'a Args,
    sched: Schedule,
    request: Vec<u8>,
    ep: RawFd,
    conns: Vec<Conn>,
    /// Absolute times (ns, CLOCK_MONOTONIC): schedule start, measured window.
    t0: u64,
    win_start: u64,
    win_end: u64,
    latencies: Vec<u64>,
    completed_in_window: u64,
    errors: Errors,
    sent: u64,
    /// Connections without a socket (kept so that the loop scans only when some are).
    dead: usize,
}

impl Run<'_> {
    fn epoll_ctl(&self, op: libc::c_int, fd: RawFd, idx: usize, out: bool) {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | if out { libc::EPOLLOUT } else { 0 })
                as u32,
            u64: idx as u64,
        };
        // SAFETY: ep and fd are open descriptors we own; ev lives across the call.
        unsafe { libc::epoll_ctl(self.ep, op, fd, &mut ev) };
    }

    fn connect(&mut self, idx: usize, now: u64) {
        match TcpStream::connect_timeout(&self.args.addr, Duration::from_secs(2)) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                if s.set_nonblocking(true).is_err() {
                    self.errors.connect += 1;
                    self.conns[idx].retry_at = now + 100_000_000;
                    return;
                }
                self.epoll_ctl(libc::EPOLL_CTL_ADD, s.as_raw_fd(), idx, false);
                let c = &mut self.conns[idx];
                if c.stream.is_none() {
                    self.dead -= 1;
                }
                c.stream = Some(s);
                c.reader = Reader::new();
                c.want_out = false;
            }
            Err(_) => {
                self.errors.connect += 1;
                self.conns[idx].retry_at = now + 100_000_000;
            }
        }
    }

    fn drop_conn(&mut self, idx: usize, now: u64) {
        let c = &mut self.conns[idx];
        if let Some(s) = c.stream.take() {
            self.dead += 1;
            // SAFETY: deregistering an fd we own before it closes.
            unsafe {
                libc::epoll_ctl(
                    self.ep,
                    libc::EPOLL_CTL_DEL,
                    s.as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
        }
        if c.in_flight {
            // The request in flight is lost: counted as an error, not a latency.
            c.in_flight = false;
            c.next += 1;
        }
        c.written = 0;
        c.retry_at = now;
    }

    /// Writes what is left of the in-flight request, or starts the next one due.
    fn pump(&mut self, idx: usize, now: u64) {
        let c = &mut self.conns[idx];
        let Some(s) = c.stream.as_ref() else { return };
        if !c.in_flight {
            if c.next >= c.assigned || now >= self.win_end {
                return;
            }
            c.in_flight = true;
            c.written = 0;
            self.sent += 1;
        }
        let fd = s.as_raw_fd();
        while c.written < self.request.len() {
            let rest = &self.request[c.written..];
            // SAFETY: fd is open; rest is a valid buffer of rest.len() bytes.
            let n = unsafe { libc::send(fd, rest.as_ptr().cast(), rest.len(), libc::MSG_NOSIGNAL) };
            if n > 0 {
                c.written += n as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            if n < 0 && err.kind() == io::ErrorKind::WouldBlock {
                if !c.want_out {
                    c.want_out = true;
                    self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, idx, true);
                }
                return;
            }
            if n < 0 && err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            self.errors.write += 1;
            self.drop_conn(idx, now);
            return;
        }
        if c.want_out {
            c.want_out = false;
            self.epoll_ctl(libc::EPOLL_CTL_MOD, fd, idx, false);
        }
    }

    fn readable(&mut self, idx: usize, buf: &mut [u8]) {
        loop {
            let Some(fd) = self.conns[idx].stream.as_ref().map(|s| s.as_raw_fd()) else {
                return;
            };
            // SAFETY: fd is open; buf is ours, buf.len() bytes long.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            let now = now_ns();
            if n < 0 {
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::WouldBlock => return,
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        self.errors.read += 1;
                        self.drop_conn(idx, now);
                        return;
                    }
                }
            }
            if n == 0 {
                // The server closed: an error only if an answer was owed.
                if self.conns[idx].in_flight {
                    self.errors.read += 1;
                }
                self.drop_conn(idx, now);
                return;
            }
            let data = &buf[..n as usize];
            if !self.conns[idx].in_flight {
                self.errors.parse += 1; // bytes nobody asked for
                self.drop_conn(idx, now);
                return;
            }
            match self.conns[idx].reader.feed(data) {
                // Level-triggered: a short read drained the socket for now, and
                // after a complete answer nothing more is owed until we send.
                Ok(None) if (n as usize) < buf.len() => return,
                Ok(None) => {}
                Ok(Some(done)) => {
                    self.complete(idx, now, done.status);
                    if done.close {
                        self.drop_conn(idx, now);
                    } else {
                        self.pump(idx, now);
                    }
                    return;
                }
                Err(_) => {
                    self.errors.parse += 1;
                    self.drop_conn(idx, now);
                    return;
                }
            }
        }
    }

    fn complete(&mut self, idx: usize, now: u64, status: u16) {
        let c = &mut self.conns[idx];
        let due = self.t0 + self.sched.due_ns(c.next, idx as u64);
        c.in_flight = false;
        c.next += 1;
        if now >= self.win_start && now < self.win_end {
            self.completed_in_window += 1;
        }
        if !(200..300).contains(&status) {
            self.errors.status += 1;
        } else if due >= self.win_start && due < self.win_end {
            self.latencies.push(now.saturating_sub(due));
        }
    }

    fn in_flight(&self) -> usize {
        self.conns.iter().filter(|c| c.in_flight).count()
    }
}

fn run(args: &Args) -> Result<String, String> {
    if let Some(cpu) = args.cpu {
        pin(cpu).map_err(|e| format!("--cpu {cpu}: {e}"))?;
    }
    let sched = Schedule {
        rate: args.rate,
        conns: args.conns,
    };
    // SAFETY: plain syscall; the fd is closed at the end of run().
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(format!("epoll_create1: {}", io::Error::last_os_error()));
    }
    let request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", args.path, args.host).into_bytes();
    let mut r = Run {
        args,
        sched,
        request,
        ep,
        conns: Vec::new(),
        t0: 0,
        win_start: 0,
        win_end: 0,
        latencies: Vec::with_capacity((args.rate * args.duration * 1.05) as usize + 1024),
        completed_in_window: 0,
        errors: Errors::default(),
        sent: 0,
        dead: args.conns as usize,
    };
    for idx in 0..args.conns as usize {
        r.conns.push(Conn {
            stream: None,
            assigned: 0,
            next: 0,
            in_flight: false,
            written: 0,
            want_out: false,
            reader: Reader::new(),
            retry_at: 0,
        });
        r.connect(idx, now_ns());
        if r.conns[idx].stream.is_none() {
            // SAFETY: closing the epoll fd we created.
            unsafe { libc::close(ep) };
            return Err(format!("cannot connect to {}", args.addr));
        }
    }
    let warm_ns = (args.warmup * 1e9) as u64;
    let end_ns = warm_ns + (args.duration * 1e9) as u64;
    r.t0 = now_ns() + 1_000_000; // 1 ms from now: the first requests are not late
    r.win_start = r.t0 + warm_ns;
    r.win_end = r.t0 + end_ns;
    let end_index = sched.first_at_or_after(end_ns);
    let drain_end = r.win_end + (args.drain * 1e9) as u64;
    let mut next_i: u64 = 0;
    let mut max_oversleep: u64 = 0;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let now = now_ns();
        // Hand every request now due to its connection; an idle one sends at once.
        while next_i < end_index && r.t0 + sched.offset_ns(next_i) <= now {
            let c = (next_i % args.conns) as usize;
            r.conns[c].assigned += 1;
            next_i += 1;
            if !r.conns[c].in_flight {
                r.pump(c, now);
            }
        }
        if now >= r.win_end && r.in_flight() == 0 || now >= drain_end {
            break;
        }
        // Dead connections: connect again (at most every 100 ms each).
        for idx in 0..if r.dead > 0 { r.conns.len() } else { 0 } {
            if r.conns[idx].stream.is_none() && r.conns[idx].retry_at <= now && now < r.win_end {
                r.connect(idx, now);
                r.pump(idx, now);
            }
        }
        let wake = if next_i < end_index {
            r.t0 + sched.offset_ns(next_i)
        } else {
            drain_end
        };
        let wait = wake.saturating_sub(now_ns()).min(10_000_000); // at most 10 ms
        let ts = libc::timespec {
            tv_sec: (wait / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: events has events.len() slots; ts lives across the call.
        let n = unsafe {
            libc::epoll_pwait2(
                ep,
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                &ts,
                std::ptr::null(),
            )
        };
        if n == 0 && wait > 0 && next_i < end_index {
            // The generator's own lateness: how far past a due time it woke up.
            // Every request counts it anyway (latency is from the due time); this
            // tells the rig's share from the server's.
            max_oversleep = max_oversleep.max(now_ns().saturating_sub(wake));
        }
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // SAFETY: closing the epoll fd we created.
            unsafe { libc::close(ep) };
            return Err(format!("epoll_pwait2: {err}"));
        }
        for ev in &events[..n as usize] {
            let idx = ev.u64 as usize;
            let flags = ev.events as i32;
            if flags & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLERR | libc::EPOLLHUP) != 0 {
                r.readable(idx, &mut buf);
            }
            if flags & libc::EPOLLOUT != 0 {
                r.pump(idx, now_ns());
            }
        }
    }
    // SAFETY: closing the epoll fd we created.
    unsafe { libc::close(ep) };
    let unanswered = r.in_flight() as u64;
    let unsent: u64 = r
        .conns
        .iter()
        .map(|c| c.assigned.saturating_sub(c.next + c.in_flight as u64))
        .sum();
    let mut lat = std::mem::take(&mut r.latencies);
    lat.sort_unstable();
    let us = |v: Option<u64>| match v {
        Some(ns) => format!("{:.1}", ns as f64 / 1e3),
        None => "null".into(),
    };
    let mean = if lat.is_empty() {
        None
    } else {
        Some(lat.iter().sum::<u64>() / lat.len() as u64)
    };
    Ok(format!(
        "{{\"offered_rps\": {:.1}, \"achieved_rps\": {:.1}, \"duration_s\": {}, \"warmup_s\": {}, \
\"connections\": {}, \"due\": {}, \"sent\": {}, \"completed_in_window\": {}, \"latencies\": {}, \
\"unsent\": {}, \"unanswered\": {}, \"p50_us\": {}, \"p90_us\": {}, \"p99_us\": {}, \
\"p999_us\": {}, \"max_us\": {}, \"mean_us\": {}, \"max_oversleep_us\": {:.1}, \"errors\": {{\"connect\": {}, \"read\": {}, \
\"write\": {}, \"status\": {}, \"parse\": {}}}}}",
        args.rate,
        r.completed_in_window as f64 / args.duration,
        args.duration,
        args.warmup,
        args.conns,
        end_index,
        r.sent,
        r.completed_in_window,
        lat.len(),
        unsent,
        unanswered,
        us(percentile(&lat, 50.0)),
        us(percentile(&lat, 90.0)),
        us(percentile(&lat, 99.0)),
        us(percentile(&lat, 99.9)),
        us(lat.last().copied()),
        us(mean),
        max_oversleep as f64 / 1e3,
        r.errors.connect,
        r.errors.read,
        r.errors.write,
        r.errors.status,
        r.errors.parse,
    ))
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse_args(&argv) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pacer: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(n) = args.print_schedule {
        let sched = Schedule {
            rate: args.rate,
            conns: args.conns,
        };
        // [connection, k, due offset in ns], in due order.
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let (k, c) = (i / args.conns, i % args.conns);
                format!("[{c}, {k}, {}]", sched.due_ns(k, c))
            })
            .collect();
        println!(
            "{{\"rate\": {}, \"connections\": {}, \"schedule\": [{}]}}",
            args.rate,
            args.conns,
            rows.join(", ")
        );
        return ExitCode::SUCCESS;
    }
    match run(&args) {
        Ok(line) => {
            let mut out = io::stdout().lock();
            let _ = writeln!(out, "{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pacer: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_connections() {
        let s = Schedule {
            rate: 1000.0,
            conns: 4,
        };
        // Request k of connection c is due at (k*C + c) / R.
        assert_eq!(s.due_ns(0, 0), 0);
        assert_eq!(s.due_ns(0, 3), 3_000_000);
        assert_eq!(s.due_ns(2, 1), 9_000_000);
        assert_eq!(s.first_at_or_after(9_000_000), 9);
        assert_eq!(s.first_at_or_after(9_000_001), 10);
        assert_eq!(s.first_at_or_after(0), 0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), Some(500));
        assert_eq!(percentile(&v, 99.0), Some(990));
        assert_eq!(percentile(&v, 99.9), Some(999));
        assert_eq!(percentile(&v, 100.0), Some(1000));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7], 99.9), Some(7));
    }

    #[test]
    fn reader_handles_split_responses() {
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: x\r\n\r\nhello";
        for split in 0..resp.len() {
            let mut r = Reader::new();
            let first = r.feed(&resp[..split]).unwrap();
            assert_eq!(first, None, "split at {split}");
            let done = r.feed(&resp[split..]).unwrap();
            assert_eq!(
                done,
                Some(Done {
                    status: 200,
                    close: false
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn reader_rejects_what_it_cannot_frame() {
        let mut r = Reader::new();
        assert_eq!(
            r.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab"),
            Err(ParseError::Unexpected)
        );
        let mut r = Reader::new();
        assert_eq!(
            r.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(ParseError::Chunked)
        );
        let mut r = Reader::new();
        assert!(r.feed(b"SSH-2.0-x\r\n\r\n").is_err());
        let mut r = Reader::new();
        assert_eq!(
            r.feed(b"HTTP/1.1 503 x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"),
            Ok(Some(Done {
                status: 503,
                close: true
            }))
        );
        let mut r = Reader::new();
        assert_eq!(
            r.feed(b"HTTP/1.1 204 No Content\r\n\r\n"),
            Ok(Some(Done {
                status: 204,
                close: false
            }))
        );
    }

    #[test]
    fn arguments() {
        let a: Vec<String> = [
            "--rate",
            "5000",
            "--connections",
            "8",
            "http://127.0.0.1:80/small",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = parse_args(&a).unwrap();
        assert_eq!((p.rate, p.conns, p.path.as_str()), (5000.0, 8, "/small"));
        assert!(parse_args(&["http://127.0.0.1:1/".to_string()]).is_err()); // no rate
        let bad: Vec<String> = ["--rate", "-3", "http://127.0.0.1:1/"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert!(parse_args(&bad).is_err());
    }
}
