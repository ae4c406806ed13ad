//! The L7 path: HTTP/1.1 proxying, one request at a time per client connection.
//!
//! Phases of one request (pingora's phase chart, simplified to what Remora does):
//!
//! ```text
//!  read head ──(idle_timeout: close quietly; request_headers_timeout: 408)
//!     │ head::parse_request_into (strict)      ── bad ──► 400/431/501, close (DPE)
//!     ▼
//!  plan::plan (pure; route match on version-neutral RequestParts)
//!     │ forward: Plan (cluster, timeout, retry, body limit, rate limit),
//!     │   rewrite::write_request; mirror drawn (should_mirror) ─ shadow head
//!     ▼
//!  rate limit (route's, else virtual host's; per-core bucket in Shard::buckets)
//!     │ no token ──► 429 "local_rate_limited" (RL), x-ratelimit-* if asked
//!     │   (also added to every other answer of a limited route)
//!     ├─ redirect / direct_response ─────────────────────► local reply
//!     ├─ no match: capture → passthrough to the original destination
//!     │            listener → 404 (NR)
//!     ▼
//!  fault (route's): delay ─ sleep (DI) ─ abort ──► local `status` (FI), no upstream
//!  body limit (route, virtual host, [http]): Content-Length over it ──► 413 (RTL)
//!  request body: Expect: 100-continue answered locally (Expect stripped), then
//!     buffered up to retry_buffer_limit (replayable) ── larger: streamed (an
//!     early upstream answer stops it), no retry after sending
//!     decoded bytes past the limit ──► 413 (RTL); if streaming, upstream reset
//!     ▼
//!  mirror: body buffered whole? spawn the copy (mirror.rs, detached, never
//!     waited for); a streamed body is not mirrored
//!     ▼  the route timeout starts here (after any injected delay)
//!  attempt ◄──────── retry::decide (RetryPolicy, jittered backoff) ───────┐
//!     │ upstream: endpoint pick ─ pooled connection (checked) or connect   │
//!     │   connect fails ──► UF                                              │
//!     │ write head + body ─ read response head (per_try_timeout: UT)       │
//!     │   reused conn. died before any response byte: once more fresh     ┤
//!     │     (idempotent methods only, RFC 9112 §9.3.1)                      │
//!     │   5xx / reset / connect failure per retry_on ──────────────────────┘
//!     ▼  route timeout over all attempts ──► 504 (UT)
//!  response: 101 / CONNECT 2xx ──► l4::forward byte tunnel
//!     │ rewrite::write_response, body streamed (chunked re-encoded,
//!     │ length passed through, chunked → close-delimited for HTTP/1.0)
//!     ▼
//!  log (shard::log_request) ─ upstream back to the pool if reusable
//!     └─ keep-alive? next request from bytes already read (pipelining) : close
//!        (request body not read to its end: lingering close, see below)
//! ```
//!
//! Memory: the client connection borrows a buffer from a per-core pool only
//! while a request is in flight or partly read; an idle keep-alive connection
//! holds none, and no per-request state either: only its socket, config and
//! context (`Idle`) and the wait for its next bytes, whose idle deadline is
//! a slot in the core's deadline registry ([`crate::deadline`]); the rest is boxed per
//! busy stretch (`busy`; perf/README.md, "Memory per idle connection").
//! Upstream connections live in a per-core pool ([`pool`]); nothing here is
//! shared between cores.
//!
//! A body larger than the retry buffer is streamed while the upstream is
//! watched: an early answer (413 or 401 before the upload is read) ends the
//! streaming and is passed on whole, with `connection: close`; so is one that
//! the upstream sent just before resetting (a server closing on an unread
//! upload). Neither connection is reused after a cut-short body. The client's
//! upload is read and dropped while the answer goes out and after it (the
//! lingering close: half-close, then drain for at most `lingering_time` /
//! `lingering_max_bytes`), so a client still writing sees the answer and a
//! clean close instead of a reset. Local replies that leave a body unread
//! (404, 413, ...) close the same way. `Expect: 100-continue` is answered here
//! and stripped upstream, so an upstream's own 100 cannot pass for an early
//! answer.

mod attempt;
pub mod detect;
pub mod h2;
mod mirror;
pub mod plan;
pub mod retry;
mod to_h2;

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use futures_lite::future;
use futures_lite::io::AsyncWriteExt;

use crate::net::Stream;
use crate::policy::authz::{self, AuthzInput, AuthzPolicies, HttpInput};
use crate::recycle::{Boxed, FutureBox, Recycled};
use crate::shard::RbacResult;
use crate::upstream::tls;
use tracing::debug;

use crate::access_log;
use crate::config::Config;
use crate::config::{Forwarding, Http, Snapshot};
use crate::deadline::until;
use crate::http::body::{
    encode_chunk, encode_last_chunk, BodyDecoder, BodyError, ChunkedLimits, Event,
};
use crate::http::head::{
    parse_request_into, parse_response_into, BodyFraming, HeadError, Limits, Method, RequestHead,
    RequestView, ResponseHead, Version,
};
use crate::http::rewrite::{
    shadow_request_head, write_local_response, write_request, write_response, HeaderField,
    HeaderOps, RequestRewrite, ResponseRewrite, Written, CONTINUE_100,
};
use crate::http::route::RetryPolicy;
use crate::http::RequestParts;
use crate::net::buf::{self, read_into, release_if_empty, write_all_pair, Buf};
use crate::net::socket;
use crate::shard::Shard;
use crate::stats::CoreStats;
use crate::upstream::cluster::ActiveRequest;
use crate::upstream::pool;
pub use detect::{detect, sniff, Sniff};
pub use plan::Fallback;
use plan::Target;
use retry::{Failure, Outcome};

/// Largest buffer a head (request or response) may need: the parser's head
/// limit plus room for the bytes that arrived with it.
const MAX_HEAD_BUF: usize = 64 * 1024 + 4096;

/// Envoy's response flags (the subset this path can set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResponseFlags(u32);

impl ResponseFlags {
    /// Upstream connection failure.
    pub const UF: ResponseFlags = ResponseFlags(1);
    /// Upstream request timeout (route or per-try).
    pub const UT: ResponseFlags = ResponseFlags(1 << 1);
    /// No route.
    pub const NR: ResponseFlags = ResponseFlags(1 << 2);
    /// Upstream retry limit exceeded.
    pub const URX: ResponseFlags = ResponseFlags(1 << 3);
    /// Downstream connection termination.
    pub const DC: ResponseFlags = ResponseFlags(1 << 4);
    /// Upstream connection termination.
    pub const UC: ResponseFlags = ResponseFlags(1 << 5);
    /// No healthy upstream (cluster without endpoints).
    pub const UH: ResponseFlags = ResponseFlags(1 << 6);
    /// Downstream protocol error (bad request).
    pub const DPE: ResponseFlags = ResponseFlags(1 << 7);
    /// Upstream protocol error (bad response).
    pub const UPE: ResponseFlags = ResponseFlags(1 << 8);
    /// Request header read timeout (Envoy's request_headers_timeout reply).
    pub const RHT: ResponseFlags = ResponseFlags(1 << 9);
    /// Request body larger than max_request_body_bytes (local 413). Remora's
    /// own: Envoy's buffer filter sets no flag for its 413 (only the response
    /// code detail `request_payload_too_large`), which would leave a local 413
    /// indistinguishable from an upstream's in the log.
    pub const RTL: ResponseFlags = ResponseFlags(1 << 10);
    /// Upstream overflow: a circuit breaker was open.
    pub const UO: ResponseFlags = ResponseFlags(1 << 11);
    /// Delay injected (fault injection).
    pub const DI: ResponseFlags = ResponseFlags(1 << 12);
    /// Abort injected (fault injection).
    pub const FI: ResponseFlags = ResponseFlags(1 << 13);
    /// Rate limited locally.
    pub const RL: ResponseFlags = ResponseFlags(1 << 14);
    /// Stream idle timeout: the request body stalled (408).
    pub const SI: ResponseFlags = ResponseFlags(1 << 15);
    /// Denied by an authorization policy (Envoy's `RBAC`).
    pub const RBAC: ResponseFlags = ResponseFlags(1 << 16);
    /// Refused by the overload manager (stop_accepting_requests; 503).
    pub const OL: ResponseFlags = ResponseFlags(1 << 17);

    const NAMES: [(ResponseFlags, &'static str); 18] = [
        (Self::UF, "UF"),
        (Self::UT, "UT"),
        (Self::NR, "NR"),
        (Self::URX, "URX"),
        (Self::DC, "DC"),
        (Self::UC, "UC"),
        (Self::UH, "UH"),
        (Self::DPE, "DPE"),
        (Self::UPE, "UPE"),
        (Self::RHT, "RHT"),
        (Self::RTL, "RTL"),
        (Self::UO, "UO"),
        (Self::DI, "DI"),
        (Self::FI, "FI"),
        (Self::RL, "RL"),
        (Self::SI, "SI"),
        (Self::RBAC, "RBAC"),
        (Self::OL, "OL"),
    ];

    pub fn insert(&mut self, f: ResponseFlags) {
        self.0 |= f.0;
    }

    /// The names of the flags that are set.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        // By reference: the table is 432 bytes, copied into the iterator
        // once per request when taken by value.
        Self::NAMES
            .iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|&(_, n)| n)
    }

    pub fn contains(self, f: ResponseFlags) -> bool {
        self.0 & f.0 == f.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for ResponseFlags {
    /// Comma-separated names, or "-" (Envoy's access-log form).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                f.write_str(name)?;
            }
        }
        Ok(())
    }
}

/// One HTTP request as the access log sees it; handed to `shard::log_request`.
/// The string fields (method, path, authority, upstream_cluster, route_name,
/// request_id) are filled only when `shard::request_details_wanted` says that
/// something reads them; otherwise they stay empty (`None`).
#[derive(Debug, Clone)]
pub struct RequestLog {
    /// When the request began (its first bytes, or its HTTP/2 stream); the
    /// access log's wall-clock start is derived from it when it is written,
    /// so a request reads the clock once, not twice.
    pub started: Instant,
    pub method: String,
    /// Path and query as the client sent them (before any rewrite).
    pub path: String,
    pub authority: String,
    /// "HTTP/1.0" or "HTTP/1.1".
    pub protocol: &'static str,
    /// Status sent to the client; 0 if none was (client gone, or reset).
    pub status: u16,
    pub flags: ResponseFlags,
    /// Body bytes read from the client, as Envoy's %BYTES_RECEIVED%:
    /// decoded (no chunk framing) where they were used, and those read and
    /// dropped after an early answer as they came (a chunked rest with its
    /// framing).
    pub bytes_received: u64,
    /// Body bytes (decoded) written to the client, as Envoy's %BYTES_SENT%.
    pub bytes_sent: u64,
    pub duration: Duration,
    pub upstream_host: Option<SocketAddr>,
    pub upstream_cluster: Option<String>,
    pub route_name: Option<String>,
    pub request_id: Option<String>,
    /// The client's User-Agent and X-Forwarded-For, as it sent them.
    pub user_agent: Option<String>,
    pub forwarded_for: Option<String>,
    pub downstream_remote_address: Option<SocketAddr>,
    pub downstream_local_address: Option<SocketAddr>,
    /// Name of the listener that accepted the connection.
    pub listener: Rc<str>,
    /// Upstream attempts made (0: answered locally).
    pub attempts: u32,
    /// The connection's TLS facts (peer SPIFFE ID, version, cipher, SNI).
    pub tls: Option<Rc<crate::net::DownstreamTls>>,
    /// The authorization policy that denied or audited the request.
    pub authz_policy: Option<std::sync::Arc<str>>,
}

/// The request id the upstream saw: the one generated for it, or the client's own.
fn logged_request_id(written: &Written, view: &RequestView<'_>) -> Option<String> {
    match &written.generated_request_id {
        Some(id) => Some(id.as_str().to_string()),
        None => view
            .headers()
            .get(b"x-request-id")
            .map(|v| String::from_utf8_lossy(v).into_owned()),
    }
}

impl RequestLog {
    fn new(ctx: &Context, started: Instant) -> RequestLog {
        RequestLog {
            started,
            method: String::new(),
            path: String::new(),
            authority: String::new(),
            protocol: "HTTP/1.1",
            status: 0,
            flags: ResponseFlags::default(),
            bytes_received: 0,
            bytes_sent: 0,
            duration: Duration::ZERO,
            upstream_host: None,
            upstream_cluster: None,
            route_name: None,
            request_id: None,
            user_agent: None,
            forwarded_for: None,
            downstream_remote_address: ctx.peer,
            downstream_local_address: ctx.local,
            listener: ctx.listener.clone(),
            attempts: 0,
            tls: ctx.tls.clone(),
            authz_policy: None,
        }
    }
}

/// What `shard::serve` knows about the connection.
#[derive(Debug, Clone)]
pub struct Context {
    /// The accepting listener's name ("outbound"/"inbound" for capture ports).
    pub listener: Rc<str>,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub fallback: Fallback,
    /// For Upgrade / CONNECT tunnels.
    pub forwarding: Forwarding,
    pub tunnel_idle_timeout: Duration,
    /// Set when TLS was terminated on this connection (inbound mTLS).
    pub tls: Option<Rc<crate::net::DownstreamTls>>,
    /// The original destination of an inbound (captured) connection: the
    /// workload's own address, where authorization policies apply.
    pub inbound_dst: Option<SocketAddr>,
    /// Append the peer to X-Forwarded-For (Envoy's `use_remote_address`).
    pub use_remote_address: bool,
}

impl Context {
    /// The address appended to X-Forwarded-For: the peer's, when the
    /// listener says `use_remote_address`; else none, and the field goes
    /// upstream as the client sent it (Envoy's transparent mode, Istio's
    /// sidecars).
    pub fn forwarded_for(&self) -> Option<IpAddr> {
        self.peer
            .filter(|_| self.use_remote_address)
            .map(|p| p.ip())
    }
}

/// Serves HTTP/1 requests on `down` until either side closes. The socket must
/// be non-blocking.
///
/// Between requests a keep-alive connection is only an [`Idle`] and the wait
/// for its next bytes ([`wait_for_request`]): the per-request state (`Conn`,
/// its log, heads and buffers, the request's futures) lives in a box made
/// when the first bytes of a request arrive and dropped when the connection
/// goes idle again, so thousands of idle connections do not each keep it
/// (perf/README.md, "Memory per idle connection").
///
/// Takes the core's `Rc` by value so that the future owns all it needs
/// ([`crate::connection::serve`] runs it as a task of its own and ends). A
/// plain `fn` around an `async move` block that works on its captured `Idle`
/// in place: an `async fn` keeps its arguments beside the locals they move
/// into (the socket and the context twice, ~350 B per idle connection).
pub fn serve(
    shard: Rc<Shard>,
    down: Stream,
    snapshot: Arc<Snapshot>,
    ctx: Context,
) -> impl Future<Output = ()> {
    CoreStats::inc(&shard.stats.downstream_cx_http);
    let mut idle = Idle {
        down,
        snapshot,
        ctx: Rc::new(ctx),
    };
    async move {
        let mut first = true;
        loop {
            let Some(inbuf) = wait_for_request(&shard, &mut idle).await else {
                return;
            };
            match FutureBox::new_in_place(|| busy(&shard, idle, inbuf, first)).await {
                Some(back) => idle = back,
                None => return,
            }
            first = false;
        }
    }
}

/// What a keep-alive connection keeps between requests.
struct Idle {
    down: Stream,
    /// The config of its last request (the next one refreshes it).
    snapshot: Arc<Snapshot>,
    /// Shared, not copied, with each request's `Conn`: 8 bytes here
    /// instead of the whole context.
    ctx: Rc<Context>,
}

/// Waits, holding no buffer, for the first bytes of the connection's next
/// request: `None` when it closes, fails or idles out (`idle_timeout`), when
/// the overload manager sheds idle connections, or when the core stops (after
/// a short grace, so that a busy client that just got a keep-alive answer can
/// send its next request instead of finding the door shut; busy clients are
/// sent away by `Shard::drain_close` instead). Nothing is in flight while
/// idle, so closing loses nothing.
///
/// A hand-written future: the `async fn` it replaces composed the read, the
/// deadline and two semaphore waits (shedding, stopping) with `future::or`,
/// 464 B in every idle connection's box, plus a glommio timer. This one
/// keeps its idle deadline as a slot in the core's deadline registry
/// ([`crate::deadline::Slot::idle`]), whose sweeper wakes it at the
/// deadline and which the overload manager's shedding and the stop wake
/// ([`crate::idle::IdleSet`]); a timer only for the stopping grace. The
/// socket's own wait is a readiness slot ([`crate::net::tcp`]).
fn wait_for_request<'a>(shard: &'a Shard, idle: &'a mut Idle) -> WaitForRequest<'a> {
    WaitForRequest {
        deadline: Instant::now() + idle.snapshot.config.http.idle_timeout,
        shed_epoch: shard.idle.shed_epoch(),
        shard,
        idle,
        grace: None,
        slot: None,
    }
}

/// See [`wait_for_request`].
struct WaitForRequest<'a> {
    shard: &'a Shard,
    idle: &'a mut Idle,
    /// The idle timeout.
    deadline: Instant,
    /// The shedding epoch this wait began in.
    shed_epoch: u64,
    /// The stopping grace, once the core's stop is seen.
    grace: Option<glommio::timer::Timer>,
    /// The idle deadline in the core's registry; shedding and the stop
    /// wake it too.
    slot: Option<crate::deadline::Slot>,
}

impl Future for WaitForRequest<'_> {
    type Output = Option<Buf>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Option<Buf>> {
        let this = &mut *self;
        match crate::net::buf::poll_read_fresh(&mut this.idle.down, cx) {
            Poll::Ready(Ok(got)) => return Poll::Ready(got),
            Poll::Ready(Err(_)) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let set = &this.shard.idle;
        if set.shed_epoch() != this.shed_epoch {
            CoreStats::inc(&this.shard.stats.downstream_cx_overload_shed);
            return Poll::Ready(None);
        }
        match &this.slot {
            // Idle too long: counted as the L4 path counts its idle timeouts.
            Some(slot) if slot.expired(cx.waker()) => {
                CoreStats::inc(&this.shard.stats.cx_idle_timeout);
                return Poll::Ready(None);
            }
            Some(_) => {}
            None => {
                this.slot = Some(crate::deadline::Slot::idle(this.deadline, cx.waker()));
            }
        }
        if set.stopping() {
            let grace = this
                .grace
                .get_or_insert_with(|| glommio::timer::Timer::new(DRAIN_IDLE_GRACE));
            if Pin::new(grace).poll(cx).is_ready() {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    }
}

/// Requests from the first bytes of one (in `inbuf`) until the connection
/// goes idle (`Some`: what waits for the next) or ends (`None`). Pipelined
/// requests are served here without going idle in between.
async fn busy(shard: &Rc<Shard>, idle: Idle, inbuf: Buf, first: bool) -> Option<Idle> {
    let Idle {
        down,
        snapshot,
        ctx,
    } = idle;
    let log = RequestLog::new(&ctx, Instant::now());
    let mut conn = Conn {
        shard,
        snapshot,
        ctx,
        down,
        inbuf: Some(inbuf),
        head: RequestHead::default(),
        resp: ResponseHead::default(),
        out: Recycled::new(),
        log,
        unread_body: false,
        discarded: 0,
        in_body: false,
        lingering_log: LingeringLog(shard, None),
        rate_headers: None,
        first,
        started_fresh: true,
    };
    loop {
        let next = conn.one().await;
        conn.first = false;
        release_if_empty(&mut conn.inbuf);
        match next {
            Next::Continue => {
                conn.log_lingering(0);
                // No bytes of a next request yet: idle. What the last
                // request allocated (header indexes, log strings, the bytes
                // that went out) goes with `conn`; the next request pays a
                // few small allocations and this box again.
                if conn.inbuf.is_none() {
                    let Conn {
                        down,
                        snapshot,
                        ctx,
                        ..
                    } = conn;
                    return Some(Idle {
                        down,
                        snapshot,
                        ctx,
                    });
                }
            }
            Next::Close => {
                if conn.unread_body {
                    conn.linger().await;
                }
                conn.log_lingering(0);
                break;
            }
            Next::Tunnel(t) => {
                conn.log_lingering(0);
                let (up, upbuf) = *t;
                Box::pin(conn.tunnel(up, upbuf)).await;
                break;
            }
            Next::Http2 => {
                conn.log_lingering(0);
                let Conn {
                    down,
                    inbuf,
                    snapshot,
                    ctx,
                    ..
                } = conn;
                Box::pin(h2::serve(
                    shard,
                    down,
                    inbuf,
                    snapshot,
                    Rc::unwrap_or_clone(ctx),
                ))
                .await;
                return None;
            }
        }
    }
    if let Some(b) = conn.inbuf.take() {
        b.release();
    }
    None
}

enum Next {
    Continue,
    Close,
    /// The client speaks HTTP/2 (prior knowledge): hand the connection over.
    Http2,
    /// Switch to a byte tunnel with this upstream (101 or CONNECT 2xx sent).
    /// Boxed: rare, and inline it made every `Next` 152 B, which each
    /// request's answer moved through five layers.
    Tunnel(Box<(Stream, Option<Buf>)>),
}

enum HeadRead {
    Parsed(usize),
    /// The connection starts with the HTTP/2 preface.
    Http2,
    /// Closed, failed, or idled out between requests: close quietly.
    Gone,
    Timeout,
    TooLarge,
    Bad(HeadError),
}

/// A request body on its way upstream.
struct ReqBody {
    dec: BodyDecoder,
    /// Re-encode as chunked (the request came chunked).
    chunked: bool,
    /// Encoded bytes read before the first attempt; replayed by retries.
    buffered: Vec<u8>,
    trailers: Vec<u8>,
    /// The whole body has been read from the client.
    complete: bool,
    /// Part of the body went upstream without being buffered: no replay.
    streamed: bool,
    /// Decoded body bytes so far, checked against `limit`.
    decoded: u64,
    /// max_request_body_bytes for this request; 0 = none.
    limit: u64,
}

impl ReqBody {
    fn replayable(&self) -> bool {
        self.complete && !self.streamed
    }

    /// Counts `data` more decoded bytes; `TooLarge` once past the limit.
    fn count(&mut self, data: u64) -> Result<(), Failure> {
        self.decoded += data;
        if self.limit > 0 && self.decoded > self.limit {
            return Err(Failure::TooLarge);
        }
        Ok(())
    }
}

/// What the attempts brought back, by the upstream's HTTP version.
enum Answered {
    H1(Boxed<Exchange>),
    /// Boxed, so that the HTTP/1 answer's result is small too.
    H2(Boxed<(h2::H2Answer, Option<ActiveRequest>)>),
}

/// An upstream that answered with a final response head.
struct Exchange {
    up: Stream,
    upbuf: Option<Buf>,
    head_len: usize,
    key: pool::Key,
    /// The connection's breaker permit and use count.
    lease: pool::Lease,
    /// max_requests_per_connection in force (0: unlimited).
    max_uses: u32,
    /// The request counts as active on its endpoint (least request) until
    /// its response has been passed on.
    active: Option<ActiveRequest>,
    /// The response's status (for the retry decision).
    status: u16,
}

/// Boxed ([`Boxed`]): it is handed from the attempt through the per-try
/// deadline, the retry loop and the route deadline to the response.
impl attempt::Answer for Boxed<Exchange> {
    fn outcome(&self) -> Outcome {
        Outcome::Response(self.status, None)
    }

    fn discard(self) {
        if let Some(b) = self.into_inner().upbuf {
            b.release();
        }
    }
}

fn merge_ops<'a>(a: &'a HeaderOps, b: &'a HeaderOps) -> Option<Cow<'a, HeaderOps>> {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => None,
        (false, true) => Some(Cow::Borrowed(a)),
        (true, false) => Some(Cow::Borrowed(b)),
        (false, false) => {
            let mut m = a.clone();
            m.remove.extend(b.remove.iter().cloned());
            m.set.extend(b.set.iter().cloned());
            m.add.extend(b.add.iter().cloned());
            Some(Cow::Owned(m))
        }
    }
}

/// `ops` plus the `x-ratelimit-*` fields, appended (Envoy's filter adds them
/// with `addReferenceKey`, beside any the upstream sent).
fn with_rate_headers<'a>(
    ops: Option<Cow<'a, HeaderOps>>,
    headers: &[(&'static str, String); 3],
) -> Cow<'a, HeaderOps> {
    let mut owned = ops.map(Cow::into_owned).unwrap_or_default();
    for (n, v) in headers {
        owned.add.push(HeaderField::new(n.as_bytes(), v.as_bytes()));
    }
    Cow::Owned(owned)
}

/// Adds "remove Expect" to `ops` when the proxy answers 100-continue itself:
/// the upstream must not send a 100 of its own, which would read as an early
/// final answer while the body is still streaming.
fn strip_expect(ops: Option<Cow<'_, HeaderOps>>, expect: bool) -> Option<Cow<'_, HeaderOps>> {
    if !expect {
        return ops;
    }
    let mut owned = ops.map(Cow::into_owned).unwrap_or_default();
    owned.remove.push(b"expect"[..].into());
    Some(Cow::Owned(owned))
}

/// How long a request body may stall between reads, from `[http]`.
#[derive(Debug, Clone, Copy)]
struct BodyWait {
    limit: Duration,
    /// The limit is `stream_idle_timeout` (answered 408), not `idle_timeout`.
    stream_idle: bool,
}

impl BodyWait {
    fn of(http: &Http) -> BodyWait {
        if http.stream_idle_timeout.is_zero() {
            BodyWait {
                limit: http.idle_timeout,
                stream_idle: false,
            }
        } else {
            BodyWait {
                limit: http.stream_idle_timeout.min(http.idle_timeout),
                stream_idle: true,
            }
        }
    }
}

/// What one `decode_into` call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Decoded {
    /// Input bytes used up.
    consumed: usize,
    /// Payload bytes among them (framing excluded).
    data: u64,
    /// The body is complete.
    done: bool,
}

/// Decodes as much of `input` as it can into `out` (as chunks when `chunked`).
fn decode_into(
    dec: &mut BodyDecoder,
    input: &[u8],
    out: &mut Vec<u8>,
    chunked: bool,
    trailers: &mut Vec<u8>,
) -> Result<Decoded, BodyError> {
    let mut pos = 0;
    let mut data = 0u64;
    loop {
        // Ranges come from the decoder and lie inside what it was given;
        // `get` keeps a broken promise from becoming a panic.
        let step = dec.decode(input.get(pos..).unwrap_or_default())?;
        let base = pos;
        pos += step.consumed;
        match step.event {
            Event::Data(r) => {
                let d = input.get(base + r.start..base + r.end).unwrap_or_default();
                data += d.len() as u64;
                if chunked {
                    encode_chunk(d, out);
                } else {
                    out.extend_from_slice(d);
                }
            }
            Event::Trailers(r) => trailers
                .extend_from_slice(input.get(base + r.start..base + r.end).unwrap_or_default()),
            Event::NeedMore => {
                return Ok(Decoded {
                    consumed: pos,
                    data,
                    done: false,
                })
            }
            Event::Done => {
                if chunked {
                    encode_last_chunk(trailers, out);
                }
                return Ok(Decoded {
                    consumed: pos,
                    data,
                    done: true,
                });
            }
        }
    }
}

struct Conn<'s> {
    /// An `Rc` so that request mirrors can outlive the request (`mirror`).
    shard: &'s Rc<Shard>,
    /// The config this request is served with (refreshed per request).
    snapshot: Arc<Snapshot>,
    ctx: Rc<Context>,
    down: Stream,
    /// Bytes read from the client and not yet used; None while idle.
    inbuf: Option<Buf>,
    head: RequestHead,
    resp: ResponseHead,
    /// Bytes on their way to the client (reused per request, and per core:
    /// [`Recycled`]).
    out: Recycled<u8>,
    /// The current request's log entry; its `started` is when the
    /// request's first byte arrived.
    log: RequestLog,
    /// The current request's body has not been read to its end: closing now
    /// would reset a client still sending it, so the close lingers
    /// ([`Conn::linger`]).
    unread_body: bool,
    /// Body bytes read and dropped after an early answer, while it was sent;
    /// the lingering close may drop `lingering_max_bytes` minus these.
    discarded: u64,
    /// The current request's head was parsed: what the client sends after
    /// it is its body (a lingering close after a bad head drops head bytes,
    /// which are not counted).
    in_body: bool,
    /// The access-log entry of a request whose close lingers, written once
    /// the lingering close ends: what it reads and drops is the request's
    /// body too, and counts in `bytes_received` (Envoy counts every body
    /// byte the client sent, whether or not anything used it). Counters and
    /// the latency histogram do not wait for it.
    lingering_log: LingeringLog<'s>,
    /// The current request's `x-ratelimit-*` headers (its rate limit has
    /// `response_headers` on): added to whatever answers it, forwarded or
    /// local, as Envoy's filter adds them in its encode path. Cleared by
    /// [`Conn::finish`].
    rate_headers: Option<[(&'static str, String); 3]>,
    /// No request has been read yet (the HTTP/2 preface is looked for).
    first: bool,
    /// `log` was just set for the request whose first bytes `busy` was
    /// handed: `read_head` takes it as it is instead of reading the clock
    /// again for the same moment.
    started_fresh: bool,
}

/// An access-log entry held while a lingering close runs ([`Conn`]'s
/// `lingering_log`); written when dropped, should the connection's task be
/// dropped before the close ends (a core that stops).
struct LingeringLog<'s>(&'s Shard, Option<RequestLog>);

impl Drop for LingeringLog<'_> {
    fn drop(&mut self) {
        if let Some(log) = self.1.take() {
            access_log_request(self.0, &log);
        }
    }
}

/// What bounds the wait for a request head (`[http]`): from its first byte
/// (`request_headers_timeout`), and before it (`idle_timeout`).
#[derive(Clone, Copy)]
struct HeadTimeouts {
    headers: Duration,
    idle: Duration,
}

/// How long a keep-alive connection may sit idle once its core is stopping.
const DRAIN_IDLE_GRACE: Duration = Duration::from_millis(250);

impl Conn<'_> {
    async fn read_head(&mut self, timeouts: HeadTimeouts, limits: &Limits) -> HeadRead {
        // Clock reads are a visible share of a keep-alive request (the
        // sidecar profile, perf/SIDECAR.md): the idle deadline is taken only
        // for a wait with nothing read, which `busy` does not make.
        let mut idle_deadline = None;
        let mut header_deadline = None;
        loop {
            if let Some(b) = self.inbuf.as_ref().filter(|b| !b.is_empty()) {
                if header_deadline.is_none() {
                    if !std::mem::take(&mut self.started_fresh) {
                        self.log = RequestLog::new(&self.ctx, Instant::now());
                    }
                    self.in_body = false;
                    header_deadline = Some(self.log.started + timeouts.headers);
                }
                // A connection's first bytes may be HTTP/2's preface (prior
                // knowledge on an HTTP listener): not parsed as HTTP/1.
                if self.first {
                    let p = crate::h2::PREFACE;
                    let n = b.len().min(p.len());
                    if b.bytes()[..n] == p[..n] {
                        if n == p.len() {
                            return HeadRead::Http2;
                        }
                        // Part of it: read on.
                        let read = read_into(&mut self.down, &mut self.inbuf, MAX_HEAD_BUF);
                        match until(header_deadline, read).await {
                            Some(Ok(n)) if n > 0 => continue,
                            None => return HeadRead::Timeout,
                            _ => return HeadRead::Gone,
                        }
                    }
                }
                match parse_request_into(b.bytes(), limits, &mut self.head) {
                    Ok(Some(len)) => return HeadRead::Parsed(len),
                    Ok(None) => {}
                    Err(e) => return HeadRead::Bad(e),
                }
            }
            // `serve` waits for a request's first bytes (wait_for_request),
            // so a head is read here from its first byte on: under the
            // request_headers_timeout. `idle_timeout` only bounds a call
            // with nothing read, which `busy` does not make.
            let deadline = header_deadline.unwrap_or_else(|| {
                *idle_deadline.get_or_insert_with(|| Instant::now() + timeouts.idle)
            });
            let read = read_into(&mut self.down, &mut self.inbuf, MAX_HEAD_BUF);
            let got = until(Some(deadline), read).await;
            match got {
                None if header_deadline.is_some() => return HeadRead::Timeout,
                None => {
                    // Idle too long (not shed, not stopping): counted as the
                    // L4 path counts its idle timeouts.
                    if Instant::now() >= deadline {
                        CoreStats::inc(&self.shard.stats.cx_idle_timeout);
                    }
                    return HeadRead::Gone;
                }
                Some(Ok(0)) => return HeadRead::Gone,
                Some(Ok(_)) => {}
                Some(Err(e)) if e.kind() == io::ErrorKind::OutOfMemory => {
                    return HeadRead::TooLarge
                }
                Some(Err(_)) => return HeadRead::Gone,
            }
        }
    }

    /// Answers locally; the connection closes after it unless `keep_alive`.
    async fn local(
        &mut self,
        status: u16,
        body: &str,
        extra: &[(&[u8], &[u8])],
        keep_alive: bool,
    ) -> Next {
        let body = if body.is_empty() {
            String::new()
        } else {
            format!("{body}\n")
        };
        self.local_exact(status, body.as_bytes(), extra, keep_alive)
            .await
    }

    /// A local reply whose body is sent exactly as given (a route's
    /// `direct_response`, which must not gain a newline).
    async fn local_exact(
        &mut self,
        status: u16,
        body: &[u8],
        extra: &[(&[u8], &[u8])],
        keep_alive: bool,
    ) -> Next {
        self.out.clear();
        let rate = self.rate_headers.take();
        let mut headers: Vec<(&[u8], &[u8])> = vec![(b"content-type", b"text/plain")];
        headers.extend_from_slice(extra);
        for (n, v) in rate.iter().flatten() {
            headers.push((n.as_bytes(), v.as_bytes()));
        }
        write_local_response(status, &headers, body, keep_alive, &mut self.out);
        self.log.status = status;
        let ok = self.down.write_all(&self.out).await.is_ok();
        if ok {
            // Body bytes only, as Envoy's %BYTES_SENT%.
            self.log.bytes_sent += body.len() as u64;
        } else {
            self.log.flags.insert(ResponseFlags::DC);
        }
        self.finish();
        if ok && keep_alive {
            Next::Continue
        } else {
            Next::Close
        }
    }

    /// 408 for a request body that stalled (stream_idle_timeout, flag SI),
    /// sent while nothing of a response has gone out; the connection closes.
    async fn body_timeout(&mut self) -> Next {
        CoreStats::inc(&self.shard.stats.downstream_rq_body_timeout);
        self.log.flags.insert(ResponseFlags::SI);
        self.unread_body = false;
        self.local(408, "request body timeout", &[], false).await
    }

    /// 413 for a body over max_request_body_bytes; the connection closes
    /// (lingering: the client may still be sending).
    async fn too_large(&mut self) -> Next {
        CoreStats::inc(&self.shard.stats.downstream_rq_too_large);
        self.log.flags.insert(ResponseFlags::RTL);
        self.local(413, "request body too large", &[], false).await
    }

    /// Resets the client connection: the only way to tell it that a response
    /// body is cut short. No lingering close after it.
    fn reset_down(&mut self) {
        socket::set_linger_zero(self.down.as_raw_fd());
        self.unread_body = false;
    }

    /// The close after a response that left the request body unread (nginx's
    /// lingering close): half-close so the client sees the response end, then
    /// read and drop what it still sends, until it closes or
    /// `lingering_time` / `lingering_max_bytes` run out. Closing at once
    /// would make the kernel answer the unread bytes with a reset, and a
    /// client still writing its upload would see that error instead of the
    /// response (RFC 9112 §9.6 describes the same staged close for servers).
    async fn linger(&mut self) {
        self.unread_body = false;
        // Read already, never to be used: body bytes received all the same.
        let mut dropped = 0;
        if let Some(b) = self.inbuf.take() {
            dropped = b.len() as u64;
            b.release();
        }
        let http = &self.snapshot.config.http;
        let (time, max) = (http.lingering_time, http.lingering_max_bytes);
        if !time.is_zero() {
            CoreStats::inc(&self.shard.stats.downstream_cx_lingering_close);
            self.down.shutdown_write().await;
            let count = Cell::new(self.discarded);
            // A stopping core ends it after the grace an idle connection
            // gets: the answer went out before, and the drain would
            // otherwise wait the whole lingering_time for it.
            let stopping = self.shard.stopping.acquire(1);
            future::or(
                async {
                    let discarding = discard(&mut self.down, &count, max);
                    let _ = until(Some(Instant::now() + time), discarding).await;
                },
                async {
                    let _ = stopping.await;
                    glommio::timer::sleep(DRAIN_IDLE_GRACE).await;
                },
            )
            .await;
            dropped += count.get() - self.discarded;
        }
        self.log_lingering(dropped);
    }

    /// Drops the request's head (`len` bytes) from `inbuf`: what follows
    /// is its body.
    fn consume_head(&mut self, len: usize) {
        if let Some(b) = self.inbuf.as_mut() {
            b.consume(len);
        }
        self.in_body = true;
    }

    /// Writes the access-log entry held for a lingering close, with the
    /// `dropped` body bytes that close read.
    fn log_lingering(&mut self, dropped: u64) {
        if let Some(mut log) = self.lingering_log.1.take() {
            log.bytes_received += dropped;
            access_log_request(self.shard, &log);
        }
    }

    fn finish(&mut self) {
        self.rate_headers = None;
        self.log.duration = self.log.started.elapsed();
        if self.unread_body && self.in_body && self.shard.access_log.is_some() {
            count_request(self.shard, &self.log);
            let started = self.log.started;
            let log = std::mem::replace(&mut self.log, RequestLog::new(&self.ctx, started));
            self.lingering_log.1 = Some(log);
        } else {
            log_request(self.shard, &self.log);
        }
    }

    /// One request, from its head to the end of its response.
    async fn one(&mut self) -> Next {
        // The two timeouts, copied: holding the snapshot across the wait
        // was a clone of its Arc (two atomic read-modify-writes) per request.
        let http = &self.snapshot.config.http;
        let timeouts = HeadTimeouts {
            headers: http.request_headers_timeout,
            idle: http.idle_timeout,
        };
        let limits = Limits::default();
        let len = match self.read_head(timeouts, &limits).await {
            HeadRead::Parsed(len) => len,
            HeadRead::Http2 => return Next::Http2,
            HeadRead::Gone => return Next::Close,
            // These replies close the connection while the client may still
            // be sending (the rest of a head, a body, pipelined requests):
            // closing at once would answer its bytes with a reset that can
            // destroy the reply before it is read, so they close lingering.
            HeadRead::Timeout => {
                self.log.flags.insert(ResponseFlags::RHT);
                self.unread_body = true;
                return self.local(408, "request header timeout", &[], false).await;
            }
            HeadRead::TooLarge => {
                self.log.flags.insert(ResponseFlags::DPE);
                self.unread_body = true;
                return self
                    .local(431, "request header section too large", &[], false)
                    .await;
            }
            HeadRead::Bad(e) => {
                self.log.flags.insert(ResponseFlags::DPE);
                debug!(peer = ?self.ctx.peer, error = %e, "bad request");
                self.unread_body = true;
                return self.local(e.status(), &e.reason(), &[], false).await;
            }
        };
        // Boxed: everything after the head is a large state machine, and an
        // idle keep-alive connection (waiting in read_head) should not carry it.
        FutureBox::new_in_place(|| self.handle(len)).await
    }

    /// Routes, forwards and answers one request whose head is `len` bytes at
    /// the start of `inbuf`.
    async fn handle(&mut self, len: usize) -> Next {
        // The current config for every request, taken once its head is in: a
        // reload reaches keep-alive connections opened before it. The one the
        // connection holds stays when no newer version was published.
        self.shard.config.refresh(&mut self.snapshot);
        let snap = self.snapshot.clone();
        let http = &snap.config.http;

        let Some(inbuf) = self.inbuf.as_ref() else {
            return Next::Close;
        };
        let view = self.head.view(inbuf.bytes());
        let details = request_details_wanted(self.shard);
        if details {
            self.log.method = String::from_utf8_lossy(view.method()).into_owned();
            self.log.path = String::from_utf8_lossy(view.target()).into_owned();
            self.log.authority =
                String::from_utf8_lossy(view.authority().unwrap_or_default()).into_owned();
            let header = |name: &[u8]| {
                view.headers()
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            };
            self.log.user_agent = header(b"user-agent");
            self.log.forwarded_for = header(b"x-forwarded-for");
        }
        self.log.protocol = self.head.version.as_str();
        let framing = self.head.framing;
        self.unread_body = !matches!(framing, BodyFraming::None | BodyFraming::Length(0));
        let keep_alive = self.head.keep_alive;
        let version = self.head.version;
        let method = self.head.method;
        let wants_upgrade = self.head.upgrade.is_some() || view.is_connect();
        let expect_continue = self.head.expect_continue;

        // Overloaded: refuse before any work (Envoy's stop_accepting_requests
        // answers the same way). The body is not read: the close lingers.
        if self.shard.overload_actions.get().stop_accepting_requests {
            CoreStats::inc(&self.shard.stats.downstream_rq_overload_close);
            self.log.flags.insert(ResponseFlags::OL);
            self.consume_head(len);
            return self.local(503, "envoy overloaded", &[], false).await;
        }

        // Authorization (Istio's AuthorizationPolicy, inbound only), before
        // routing, as Envoy's RBAC filter sits before the router.
        if let Some(dst) = self.ctx.inbound_dst {
            let policies = &snap.config.authorization;
            if !policies.is_empty() {
                let denied = authorize(self.shard, policies, &self.ctx, dst, &view);
                if let Some(policy) = denied {
                    self.log.flags.insert(ResponseFlags::RBAC);
                    self.log.authz_policy = Some(policy);
                    CoreStats::inc(&self.shard.stats.rq_rbac_denied);
                    self.consume_head(len);
                    // The body (if any) was not read: the connection cannot be reused.
                    let keep = keep_alive && framing == BodyFraming::None;
                    return self.local(403, "RBAC: access denied", &[], keep).await;
                }
            }
        }

        let planned = plan::plan(
            &snap.config,
            &view,
            self.ctx.fallback,
            self.shard.next_u64() as u32,
            "http",
        );
        let mut response_ops: Option<Cow<'_, HeaderOps>> = None;
        let mut up_head = Recycled::<u8>::new();
        let mut hash = None;
        let mut mirror_job = None;
        if let Ok(p) = &planned {
            if let Target::Cluster(i) = p.target {
                hash = snap
                    .config
                    .clusters
                    .get(i)
                    .and_then(|c| plan::request_hash(c, &view, self.ctx.peer.map(|a| a.ip())));
            }
            // The upstream head is written while the client's head is at hand.
            let mut path_scratch = Vec::new();
            let (path, host, ops) = match p.route {
                Some((m, f)) => {
                    response_ops =
                        merge_ops(&m.virtual_host.response_headers, &m.route.response_headers);
                    (
                        m.route.rewritten_path(&view, &mut path_scratch),
                        f.host_rewrite.as_deref(),
                        merge_ops(&m.virtual_host.request_headers, &m.route.request_headers),
                    )
                }
                None => (None, None, None),
            };
            let written = write_request(
                &view,
                &RequestRewrite {
                    path,
                    host,
                    client_addr: self.ctx.forwarded_for(),
                    forwarded_proto: Some("http"),
                    forwarded_proto_if_absent: !self.ctx.use_remote_address,
                    request_id: Some(&self.shard.request_ids),
                    client_cert: self.ctx.tls.as_ref().and_then(|t| t.xfcc.as_deref()),
                    ops: strip_expect(ops, expect_continue).as_deref(),
                    framing,
                    upgrade: self.head.upgrade.is_some(),
                },
                &mut up_head,
            );
            if details {
                self.log.request_id = logged_request_id(&written, &view);
                self.log.upstream_cluster = Some(p.cluster_name.to_string());
                self.log.route_name = p.route.map(|(m, _)| m.route.name.to_string());
            }
            // Mirroring is drawn now, while the head is at hand (the copy's
            // hash may need it); the copy goes once the body is in.
            let mirror = p.route.and_then(|(_, f)| f.mirror.as_ref());
            if let Some(m) = mirror.filter(|_| !wants_upgrade) {
                if m.should_mirror(self.shard.next_u64()) {
                    mirror_job = shadow_request_head(&up_head).map(|head| mirror::Job {
                        cluster: m.cluster.index,
                        head,
                        hash: snap.config.clusters.get(m.cluster.index).and_then(|c| {
                            plan::request_hash(c, &view, self.ctx.peer.map(|a| a.ip()))
                        }),
                        method,
                        timeout: p.timeout.unwrap_or(mirror::DEFAULT_TIMEOUT),
                    });
                }
            }
        }
        self.consume_head(len);

        // Local rate limit (route, else virtual host), before anything else
        // is done for the request: its body is not read, no fault delays it.
        let rate_limit = match &planned {
            Ok(p) => p.rate_limit,
            Err(reply) => reply.rate_limit,
        };
        if let Some(rl) = rate_limit {
            let decision = self.shard.buckets.borrow_mut().requests.try_take(
                rl.virtual_host,
                rl.route,
                &rl.limit.bucket,
                self.shard.cores,
                Instant::now(),
            );
            self.rate_headers = rl.limit.headers(&decision);
            if !decision.allowed {
                CoreStats::inc(&self.shard.stats.rq_rate_limited);
                self.log.flags.insert(ResponseFlags::RL);
                if let (true, Err(reply)) = (details, &planned) {
                    self.log.route_name = reply.route_name.map(str::to_string);
                }
                // The body (if any) was not read: the connection cannot be reused.
                let keep = keep_alive && framing == BodyFraming::None;
                return self.local(429, "local_rate_limited", &[], keep).await;
            }
        }

        let plan = match planned {
            Ok(p) => p,
            Err(reply) => {
                if details {
                    self.log.route_name = reply.route_name.map(str::to_string);
                }
                self.log.flags.insert(reply.flags);
                // The body (if any) was not read: the connection cannot be reused.
                let keep = keep_alive && framing == BodyFraming::None;
                let loc = reply.location.unwrap_or_default();
                let extra: Vec<(&[u8], &[u8])> = if loc.is_empty() {
                    vec![]
                } else {
                    vec![(b"location", &loc)]
                };
                // What a route configured (direct_response) goes exactly as
                // written; Remora's own 404 ends in a newline like its others.
                if reply.route_name.is_none() {
                    return self.local(reply.status, &reply.body, &extra, keep).await;
                }
                return self
                    .local_exact(reply.status, reply.body.as_bytes(), &extra, keep)
                    .await;
            }
        };

        // Fault injection (Istio HTTPFaultInjection): the delay first, then
        // the abort, both before the body is read and before the route
        // timeout starts (Envoy's fault filter runs before its router).
        if let Some(fault) = plan.route.and_then(|(_, f)| f.fault.as_ref()) {
            let decision = fault.decide(self.shard.next_u64(), self.shard.next_u64());
            if let Some(delay) = decision.delay {
                CoreStats::inc(&self.shard.stats.rq_fault_delay);
                self.log.flags.insert(ResponseFlags::DI);
                glommio::timer::sleep(delay).await;
            }
            if let Some(status) = decision.abort {
                CoreStats::inc(&self.shard.stats.rq_fault_abort);
                self.log.flags.insert(ResponseFlags::FI);
                let keep = keep_alive && framing == BodyFraming::None;
                return self.local(status, "fault filter abort", &[], keep).await;
            }
        }

        // A declared length over the limit is refused before any of the body
        // is read or a 100 Continue is sent (RFC 9110 §10.1.1 lets the final
        // status replace the 100); nothing reaches the upstream.
        if let BodyFraming::Length(n) = framing {
            if plan.max_body > 0 && n > plan.max_body {
                return self.too_large().await;
            }
        }
        // Request body: accept it (100-continue), buffer what a retry may replay.
        // An HTTP/2 cluster (`http2 = true`) takes the body decoded.
        let to_h2 = !wants_upgrade
            && matches!(plan.target, Target::Cluster(i)
                if snap.config.clusters.get(i).is_some_and(|c| c.http2.use_h2(false)));
        let mut body = ReqBody {
            dec: BodyDecoder::new(framing, ChunkedLimits::default()),
            chunked: framing == BodyFraming::Chunked && !to_h2,
            buffered: Vec::new(),
            trailers: Vec::new(),
            complete: false,
            streamed: false,
            decoded: 0,
            limit: plan.max_body,
        };
        // The 100 is not counted in bytes_sent: no body byte (Envoy's too).
        if expect_continue
            && framing != BodyFraming::None
            && self.down.write_all(CONTINUE_100).await.is_err()
        {
            self.log.flags.insert(ResponseFlags::DC);
            self.finish();
            return Next::Close;
        }
        match self.fill_body(&mut body, http).await {
            Ok(()) => {}
            Err(Failure::BadRequestBody) => {
                self.log.flags.insert(ResponseFlags::DPE);
                return self.local(400, "malformed request body", &[], false).await;
            }
            Err(Failure::TooLarge) => {
                // Still buffering (nothing went upstream): a plain 413.
                self.log.bytes_received = body.decoded;
                return self.too_large().await;
            }
            Err(Failure::BodyTimeout) => {
                self.log.bytes_received = body.decoded;
                return self.body_timeout().await;
            }
            Err(_) => {
                self.log.flags.insert(ResponseFlags::DC);
                self.unread_body = false;
                self.finish();
                return Next::Close;
            }
        }

        // The mirror's copy, now that the body is all here: only a body
        // buffered whole can be sent twice (a streamed one is not kept).
        if let Some(job) = mirror_job {
            if body.replayable() {
                mirror::spawn(self.shard, snap.clone(), job, body.buffered.clone());
            } else {
                debug!("request not mirrored: its body is streamed, not buffered");
            }
        }
        if let Some(h) = &self.rate_headers {
            response_ops = Some(with_rate_headers(response_ops, h));
        }

        let plan::Plan {
            target,
            timeout,
            retry,
            connect_timeout,
            ..
        } = plan;
        // The route timeout starts here: after any injected delay and once
        // the (buffered part of the) body is in.
        let deadline = timeout.map(|t| Instant::now() + t);
        let per_try = retry.and_then(|r| r.per_try_timeout);
        // Each kind of attempts goes straight into its deadline, not through
        // an `async` block around both: every layer was another copy of the
        // future (hundreds of bytes) on every request.
        let result = if to_h2 {
            let r = self.attempts_h2(
                &up_head,
                &mut body,
                target,
                retry,
                per_try,
                connect_timeout,
                method,
                hash,
                &snap.config,
            );
            until(deadline, r)
                .await
                .map(|r| r.map(|a| Answered::H2(Boxed::new_in_place(|| a))))
        } else {
            let r = self.attempts(
                &up_head,
                &mut body,
                target,
                retry,
                per_try,
                connect_timeout,
                method,
                hash,
                &snap.config,
            );
            until(deadline, r).await.map(|r| r.map(Answered::H1))
        };
        self.log.bytes_received = body.decoded;
        let x = match result {
            None => {
                self.log.flags.insert(ResponseFlags::UT);
                return self
                    .local(504, "upstream request timeout", &[], false)
                    .await;
            }
            Some(Ok(Answered::H1(x))) => x,
            Some(Ok(Answered::H2(a))) => {
                let (answer, _active) = a.into_inner();
                let ops = response_ops.as_deref();
                let respond = self.respond_h2(
                    answer, &mut body, keep_alive, version, method, ops, deadline,
                );
                let next = respond.await;
                self.log.bytes_received = body.decoded;
                self.finish();
                return next;
            }
            Some(Err(f)) => {
                let keep = keep_alive && body.complete;
                return match f {
                    Failure::Connect => {
                        self.log.flags.insert(ResponseFlags::UF);
                        self.local(503, "upstream connect error", &[], keep).await
                    }
                    Failure::NoEndpoint => {
                        self.log.flags.insert(ResponseFlags::UH);
                        self.local(503, "no healthy upstream", &[], keep).await
                    }
                    Failure::Overflow => {
                        self.log.flags.insert(ResponseFlags::UO);
                        self.local(503, "upstream connection pool overflow", &[], keep)
                            .await
                    }
                    Failure::Reset { .. } | Failure::Refused => {
                        self.log.flags.insert(ResponseFlags::UC);
                        self.local(503, "upstream connection reset before response", &[], keep)
                            .await
                    }
                    Failure::PerTryTimeout => {
                        self.log.flags.insert(ResponseFlags::UT);
                        self.local(504, "upstream request timeout", &[], keep).await
                    }
                    Failure::BadResponse => {
                        self.log.flags.insert(ResponseFlags::UPE);
                        self.local(502, "invalid upstream response", &[], false)
                            .await
                    }
                    Failure::BadRequestBody => {
                        self.log.flags.insert(ResponseFlags::DPE);
                        self.local(400, "malformed request body", &[], false).await
                    }
                    // Streaming had begun; the upstream connection was reset
                    // (try_once), so it never saw a complete request. No
                    // response head can have gone to the client yet: that
                    // happens only once the body stopped streaming.
                    Failure::TooLarge => self.too_large().await,
                    Failure::BodyTimeout => self.body_timeout().await,
                    Failure::Downstream => {
                        self.log.flags.insert(ResponseFlags::DC);
                        self.unread_body = false;
                        self.finish();
                        Next::Close
                    }
                };
            }
        };

        let status = self.resp.status;
        let tunnel = (status == 101 && self.head.upgrade.is_some())
            || (method == Method::Connect && (200..300).contains(&status));
        // An early answer (the body is not all read): the rest of the upload is
        // read and dropped while the response goes out, so that a client that
        // only reads once its upload is written cannot stall the response.
        let discard_rest = if body.complete || tunnel {
            None
        } else {
            self.down.writer().ok()
        };
        let discarded = Cell::new(0);
        let discard_max = http.lingering_max_bytes;
        let respond = self.respond(
            x,
            &body,
            keep_alive,
            version,
            tunnel && wants_upgrade,
            response_ops.as_deref(),
        );
        // The common case (no upload left to drop, not a tunnel) awaits the
        // response under its deadline with no wrapper in between: each
        // `async` layer around it was another copy of it.
        let next = match (discard_rest, tunnel) {
            (None, true) => respond.await,
            (None, false) => match until(deadline, respond).await {
                Some(n) => n,
                None => self.response_timed_out(),
            },
            (Some(mut rest), tunnel) => {
                let respond = future::or(respond, async {
                    discard(&mut rest, &discarded, discard_max).await;
                    future::pending().await
                });
                if tunnel {
                    respond.await
                } else {
                    match until(deadline, respond).await {
                        Some(n) => n,
                        None => self.response_timed_out(),
                    }
                }
            }
        };
        self.discarded = discarded.get();
        // Dropped, but received from the client: body bytes as much as the
        // ones forwarded (for a chunked body, with its framing: the rest is
        // dropped undecoded).
        self.log.bytes_received += self.discarded;
        self.finish();
        next
    }

    /// The route timeout ran out while the response was being sent: its head
    /// is out, so a reset is the only way to tell the client the body is cut
    /// short.
    fn response_timed_out(&mut self) -> Next {
        self.log.flags.insert(ResponseFlags::UT);
        self.reset_down();
        Next::Close
    }

    /// Reads the request body until it is complete or `retry_buffer_limit`
    /// bytes (encoded) are buffered.
    async fn fill_body(&mut self, body: &mut ReqBody, http: &Http) -> Result<(), Failure> {
        loop {
            if let Some(b) = self.inbuf.as_mut() {
                let d = decode_into(
                    &mut body.dec,
                    b.bytes(),
                    &mut body.buffered,
                    body.chunked,
                    &mut body.trailers,
                )
                .map_err(|_| Failure::BadRequestBody)?;
                b.consume(d.consumed);
                body.count(d.data)?;
                if d.done {
                    body.complete = true;
                    self.unread_body = false;
                    return Ok(());
                }
            } else if body.dec.is_done() {
                body.complete = true;
                self.unread_body = false;
                return Ok(());
            }
            if body.buffered.len() >= http.retry_buffer_limit {
                return Ok(());
            }
            // Up to 16 MiB of reads that may never wait: share the core.
            glommio::yield_if_needed().await;
            self.read_body_bytes(BodyWait::of(http)).await?;
        }
    }

    /// Reads more of a request body. A body that makes no progress for
    /// `stream_idle_timeout` (Envoy's, 5 min) is `BodyTimeout` (408), not a
    /// connection held open for the hour of `idle_timeout`.
    async fn read_body_bytes(&mut self, wait: BodyWait) -> Result<(), Failure> {
        match until(
            Some(Instant::now() + wait.limit),
            read_into(&mut self.down, &mut self.inbuf, MAX_HEAD_BUF),
        )
        .await
        {
            Some(Ok(n)) if n > 0 => Ok(()),
            None if wait.stream_idle => Err(Failure::BodyTimeout),
            _ => Err(Failure::Downstream),
        }
    }

    /// Sends the rest of a body too large to buffer, as it arrives.
    async fn stream_rest(&mut self, up: &mut Stream, body: &mut ReqBody) -> Result<(), Failure> {
        let mut chunk = Vec::new();
        let wait = BodyWait::of(&self.snapshot.config.http);
        let mut turn = crate::turn::Turn::new();
        while !body.complete {
            chunk.clear();
            if let Some(b) = self.inbuf.as_mut() {
                let d = decode_into(
                    &mut body.dec,
                    b.bytes(),
                    &mut chunk,
                    body.chunked,
                    &mut body.trailers,
                )
                .map_err(|_| Failure::BadRequestBody)?;
                b.consume(d.consumed);
                // Checked before the bytes go out: the upstream gets no byte
                // past the limit (and, reset, never a complete request).
                body.count(d.data)?;
                body.complete = d.done;
                self.unread_body = !d.done;
            }
            if !chunk.is_empty() {
                body.streamed = true;
                up.write_all(&chunk)
                    .await
                    .map_err(|_| Failure::Reset { started: false })?;
            }
            if body.complete {
                break;
            }
            // When both sockets are always ready nothing below waits, and the
            // upload would hold the core until its end (crate::turn).
            turn.moved(chunk.len().max(1)).await;
            self.read_body_bytes(wait).await?;
        }
        Ok(())
    }

    /// The attempts of one HTTP/1 request: each writes `up_head` and the
    /// body to a pooled or new connection and reads the response head.
    #[allow(clippy::too_many_arguments)]
    async fn attempts(
        &mut self,
        up_head: &[u8],
        body: &mut ReqBody,
        target: Target,
        retry: Option<&RetryPolicy>,
        per_try: Option<Duration>,
        connect_timeout: Duration,
        method: Method,
        hash: Option<u64>,
        config: &Config,
    ) -> Result<Boxed<Exchange>, Failure> {
        let req = attempt::Request {
            config,
            target,
            retry,
            per_try,
            connect_timeout,
            idempotent: method.is_idempotent(),
            hash,
            inbound: self.ctx.inbound_dst.is_some(),
            protocol: tls::AppProtocol::Http1,
        };
        let mut log = attempt::Attempts::default();
        let shard = self.shard;
        let r = attempt::run(shard, &req, &mut log, async |conn, fresh, deadline| {
            let mut reused = false;
            let once = self.try_once(up_head, body, conn, fresh, &mut reused, method);
            let result = until(deadline, once)
                .await
                .unwrap_or(Err(Failure::PerTryTimeout));
            attempt::Tried {
                result,
                reused,
                replayable: body.replayable(),
            }
        })
        .await;
        self.log.upstream_host = log.upstream_host.or(self.log.upstream_host);
        self.log.attempts += log.count;
        if log.exhausted {
            self.log.flags.insert(ResponseFlags::URX);
        }
        r.map(|(mut x, active)| {
            x.active = active;
            x
        })
    }

    fn take_pooled(&self, key: pool::Key) -> Option<(Stream, pool::Lease)> {
        let http = &self.snapshot.config.http;
        let mut dropped = Vec::new();
        let s =
            self.shard
                .upstreams
                .pool
                .borrow_mut()
                .take(key, http.pool_idle_timeout, &mut dropped);
        drop(dropped);
        s
    }

    async fn try_once(
        &mut self,
        up_head: &[u8],
        body: &mut ReqBody,
        conn: &attempt::UpstreamRef<'_>,
        fresh: bool,
        reused: &mut bool,
        method: Method,
    ) -> Result<Boxed<Exchange>, Failure> {
        let key = conn.key;
        // Taken here, not by the caller: the stream (120 B) would have been
        // moved through each layer in between.
        let pooled = if fresh { None } else { self.take_pooled(key) };
        let (mut up, mut lease) = match pooled {
            Some(p) => {
                *reused = true;
                CoreStats::inc(&self.shard.stats.upstream_cx_reused);
                p
            }
            None => attempt::connect(self.shard, conn).await?,
        };
        lease.uses += 1;
        // Head and buffered body in one send when the socket takes them.
        if write_all_pair(&mut up, up_head, &body.buffered)
            .await
            .is_err()
        {
            return Err(Failure::Reset { started: false });
        }
        let mut upbuf: Option<Buf> = None;
        if !body.complete {
            // Stream the rest of the body while watching the upstream: it may
            // answer early (413, 401) and stop reading, and its answer must not
            // wait behind an upload it will never take. Writes go through a
            // dup of the socket so the read side can be borrowed at the same time.
            let mut up_w = up.writer().map_err(|_| Failure::Reset { started: false })?;
            let answered = future::or(
                async { self.stream_rest(&mut up_w, body).await.map(|()| false) },
                async {
                    match read_into(&mut up, &mut upbuf, MAX_HEAD_BUF).await {
                        Ok(n) if n > 0 => Ok(true),
                        _ => Err(Failure::Reset { started: false }),
                    }
                },
            )
            .await;
            drop(up_w);
            match answered {
                Ok(_) => {}
                // The upstream stopped taking the body, or closed: it may have
                // answered first (and reset because the body went unread).
                // What it sent is still readable, so look before giving up.
                Err(Failure::Reset { .. }) => {}
                Err(f) => {
                    if matches!(f, Failure::TooLarge | Failure::BodyTimeout) {
                        // It must not take a truncated body for a whole one.
                        socket::set_linger_zero(up.as_raw_fd());
                    }
                    if let Some(b) = upbuf.take() {
                        b.release();
                    }
                    return Err(f);
                }
            }
        }
        let down = &mut self.down;
        let interim = async |status, head: &[u8]| {
            // 100 was already answered locally (or not asked for); others
            // (103) are passed on.
            if status != 100 {
                let _ = down.write_all(head).await;
            }
        };
        let len = read_response_head(&mut up, &mut upbuf, method, &mut self.resp, interim).await?;
        let max_uses = conn.max_uses();
        let status = self.resp.status;
        Ok(Boxed::new_in_place(|| Exchange {
            up,
            upbuf,
            head_len: len,
            key,
            lease,
            max_uses,
            status,
            active: None,
        }))
    }

    /// Sends the response head and body to the client; returns the upstream
    /// to the pool when it can carry another request.
    async fn respond(
        &mut self,
        x: Boxed<Exchange>,
        body: &ReqBody,
        req_keep_alive: bool,
        version: Version,
        tunnel: bool,
        ops: Option<&HeaderOps>,
    ) -> Next {
        let Exchange {
            mut up,
            upbuf,
            head_len,
            key,
            lease,
            max_uses,
            active: _active,
            status: _,
        } = x.into_inner();
        let Some(mut upbuf) = upbuf else {
            return Next::Close;
        };
        self.log.status = self.resp.status;
        // An HTTP/1.0 client cannot read chunked: send the data until close.
        let out_framing = match (self.resp.framing, version) {
            (BodyFraming::Chunked, Version::Http10) => BodyFraming::CloseDelimited,
            (f, _) => f,
        };
        // A draining core sends its busy clients away over the drain period.
        let down_keep = req_keep_alive
            && out_framing != BodyFraming::CloseDelimited
            && body.complete
            && !self.shard.drain_close()
            && !self.shard.overload_actions.get().shed_idle_connections;
        self.out.clear();
        // The head and the body bytes its read brought along go out together
        // from `out` (below): sized for both at once, not grown by the body.
        // `out` is new with each busy stretch (`busy`), so on a keep-alive
        // connection this is the request's one allocation for it.
        self.out.reserve(upbuf.bytes().len() + 128);
        let view = self.resp.view(upbuf.bytes());
        write_response(
            &view,
            &ResponseRewrite {
                ops,
                framing: if tunnel {
                    BodyFraming::None
                } else {
                    out_framing
                },
                keep_alive: down_keep || tunnel,
                client_version: version,
            },
            &mut self.out,
        );
        upbuf.consume(head_len);
        if tunnel {
            if self.down.write_all(&self.out).await.is_err() {
                self.log.flags.insert(ResponseFlags::DC);
                upbuf.release();
                return Next::Close;
            }
            return Next::Tunnel(Box::new((up, Some(upbuf))));
        }
        let mut dec = BodyDecoder::new(self.resp.framing, ChunkedLimits::default());
        let rechunk = out_framing == BodyFraming::Chunked;
        let mut trailers = Vec::new();
        let mut upbuf = Some(upbuf);
        // The head waits in `out` for the body bytes that came with it, and
        // both go out in one send: usually the whole response, since a small
        // one arrives in one read. The body passes through `out` anyway (the
        // decoder copies it there), so this costs no copy, and the piece is
        // what the head's read brought along, at most MAX_HEAD_BUF bytes.
        let mut head_waiting = self.out.len();
        let mut turn = crate::turn::Turn::new();
        let complete = loop {
            let mut done = false;
            // Body bytes (decoded) in `out`: the log counts those, not the
            // head or chunk framing (Envoy's %BYTES_SENT%).
            let mut data = 0;
            if let Some(b) = upbuf.as_mut() {
                match decode_into(&mut dec, b.bytes(), &mut self.out, rechunk, &mut trailers) {
                    Ok(d) => {
                        b.consume(d.consumed);
                        done = d.done;
                        data = d.data;
                    }
                    Err(_) => {
                        self.log.flags.insert(ResponseFlags::UPE);
                        // As before the head waited: it goes, then the reset
                        // below cuts the body.
                        self.out.truncate(head_waiting);
                        if head_waiting > 0 {
                            let _ = self.down.write_all(&self.out).await;
                        }
                        break false;
                    }
                }
            }
            // A head that came without any of its Content-Length body goes
            // with MSG_MORE: the kernel keeps it until the body's first
            // bytes are sent (or the client's next ACK comes), and both go
            // out in one segment instead of two
            // (the upstream usually sends them a few µs later: nginx writes
            // a head, then sendfile()s the body). The client can use
            // neither alone, and the task does not wait for the body before
            // sending, which on an idle core would cost a sleep and a
            // wake-up. Not for chunked or close-delimited bodies: a
            // streaming upstream (server-sent events, long polls) sends its
            // head early on purpose. A body that never comes ends in a reset
            // (below), which sends nothing queued.
            let head_alone =
                head_waiting > 0 && data == 0 && !done && matches!(dec, BodyDecoder::Length { .. });
            if !self.out.is_empty() {
                let sent = if head_alone {
                    buf::write_all_more(&mut self.down, &self.out).await
                } else {
                    self.down.write_all(&self.out).await
                };
                if sent.is_err() {
                    self.log.flags.insert(ResponseFlags::DC);
                    break false;
                }
                self.log.bytes_sent += data;
            }
            self.out.clear();
            head_waiting = 0;
            if done {
                break true;
            }
            // A fast upstream and client keep both sockets ready, and then
            // nothing here waits: let the core's other connections run
            // (crate::turn; the preemption timer alone made them wait 100 ms).
            turn.moved(data.max(1) as usize).await;
            release_if_empty(&mut upbuf);
            match read_into(&mut up, &mut upbuf, MAX_HEAD_BUF).await {
                Ok(0) => {
                    if dec.on_eof().is_ok() {
                        // Close-delimited: complete, and the upstream is done.
                        break true;
                    }
                    self.log.flags.insert(ResponseFlags::UC);
                    break false;
                }
                Ok(_) => {}
                Err(_) => {
                    self.log.flags.insert(ResponseFlags::UC);
                    break false;
                }
            }
        };
        let leftover = upbuf.as_ref().is_some_and(|b| !b.is_empty());
        if let Some(b) = upbuf {
            b.release();
        }
        if !complete {
            // The client cannot tell a cut body from a whole one otherwise.
            self.reset_down();
            return Next::Close;
        }
        let reusable = self.resp.keep_alive
            && !matches!(dec, BodyDecoder::CloseDelimited)
            && !leftover
            && body.complete
            && (max_uses == 0 || lease.uses < max_uses);
        if reusable {
            let http = &self.snapshot.config.http;
            let mut dropped = Vec::new();
            self.shard.upstreams.pool.borrow_mut().put(
                key,
                up,
                lease,
                http.pool_max_idle_per_endpoint,
                http.pool_idle_timeout,
                &mut dropped,
            );
        }
        if out_framing == BodyFraming::CloseDelimited {
            self.down.shutdown_write().await;
            return Next::Close;
        }
        if down_keep {
            Next::Continue
        } else {
            Next::Close
        }
    }

    /// After a 101 or a CONNECT 2xx: bytes already read on either side go
    /// first, then both sockets become an L4 tunnel.
    async fn tunnel(&mut self, mut up: Stream, upbuf: Option<Buf>) {
        if let Some(b) = upbuf {
            let ok = b.is_empty() || self.down.write_all(b.bytes()).await.is_ok();
            b.release();
            if !ok {
                return;
            }
        }
        if let Some(b) = self.inbuf.take() {
            let ok = b.is_empty() || up.write_all(b.bytes()).await.is_ok();
            b.release();
            if !ok {
                return;
            }
        }
        let report = crate::l4::forward_streams(
            &mut self.down,
            &mut up,
            self.ctx.forwarding,
            self.ctx.tunnel_idle_timeout,
        )
        .await;
        let s = &self.shard.stats;
        s.bytes_upstream
            .set(s.bytes_upstream.get() + report.bytes_up);
        s.bytes_downstream
            .set(s.bytes_downstream.get() + report.bytes_down);
    }
}

/// Evaluates the authorization policies for one request; counts the
/// decision per policy. `Some(policy name)` when it is denied (the DENY
/// policy that matched, or `"(no ALLOW policy matched)"`).
fn authorize<R: RequestParts>(
    shard: &Shard,
    policies: &AuthzPolicies,
    ctx: &Context,
    dst: SocketAddr,
    req: &R,
) -> Option<std::sync::Arc<str>> {
    // Repeated fields are seen joined with "," (Envoy's header matcher);
    // joined copies are made only for names that repeat, which is rare.
    let mut repeated: Vec<(&[u8], String)> = Vec::new();
    for (i, (name, _)) in req.header_fields().enumerate() {
        let seen_before = req
            .header_fields()
            .take(i)
            .any(|(n, _)| n.eq_ignore_ascii_case(name));
        if !seen_before && req.header_values(name).nth(1).is_some() {
            let all: Vec<String> = req
                .header_values(name)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect();
            repeated.push((name, all.join(",")));
        }
    }
    let lookup = |name: &str| -> Option<&str> {
        if let Some((_, v)) = repeated
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        {
            return Some(v.as_str());
        }
        let (_, v) = req
            .header_fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))?;
        std::str::from_utf8(v).ok()
    };
    let http = HttpInput {
        method: std::str::from_utf8(req.method()).unwrap_or(""),
        path: std::str::from_utf8(req.path_and_query()).unwrap_or(""),
        host: req.authority().and_then(|a| std::str::from_utf8(a).ok()),
        headers: &lookup,
    };
    check_policies(
        shard,
        policies,
        ctx.tls.as_deref(),
        ctx.peer,
        dst,
        Some(http),
    )
}

pub(crate) fn check_policies<'a>(
    shard: &Shard,
    policies: &AuthzPolicies,
    tls: Option<&'a crate::net::DownstreamTls>,
    peer: Option<SocketAddr>,
    dst: SocketAddr,
    http: Option<HttpInput<'a>>,
) -> Option<std::sync::Arc<str>> {
    let input = AuthzInput {
        source_principal: tls.and_then(|t| t.peer_uri.as_deref()),
        source_ip: peer.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |p| p.ip()),
        destination_ip: dst.ip(),
        destination_port: dst.port(),
        sni: tls.and_then(|t| t.sni.as_deref()),
        http,
    };
    decided(shard, &policies.evaluate(&input))
}

/// Counts a verdict per policy; the denying policy's name if it denies.
fn decided(shard: &Shard, verdict: &authz::Verdict<'_>) -> Option<std::sync::Arc<str>> {
    for p in &verdict.audited {
        shard.count_rbac(&p.name, RbacResult::Audited);
    }
    match (verdict.allowed, verdict.policy) {
        (true, Some(p)) => {
            shard.count_rbac(&p.name, RbacResult::Allowed);
            None
        }
        (true, None) => None,
        (false, Some(p)) => {
            shard.count_rbac(&p.name, RbacResult::Denied);
            Some(std::sync::Arc::from(p.name.as_str()))
        }
        (false, None) => {
            const NONE: &str = "(no ALLOW policy matched)";
            shard.count_rbac(NONE, RbacResult::Denied);
            Some(std::sync::Arc::from(NONE))
        }
    }
}

/// Reads and drops what `s` receives until EOF, an error, or `count` reaches
/// `max` (give or take one buffer).
/// Reads from `up` until a final response head is in `upbuf` and parsed
/// into `resp`; returns its length. Interim heads (1xx but 101) are handed
/// to `interim` and dropped. On failure `upbuf` is released.
pub(super) async fn read_response_head(
    up: &mut Stream,
    upbuf: &mut Option<Buf>,
    method: Method,
    resp: &mut ResponseHead,
    mut interim: impl AsyncFnMut(u16, &[u8]),
) -> Result<usize, Failure> {
    let limits = Limits::default();
    let fail = |upbuf: &mut Option<Buf>, f: Failure| {
        if let Some(b) = upbuf.take() {
            b.release();
        }
        Err(f)
    };
    loop {
        if let Some(b) = upbuf.as_mut().filter(|b| !b.is_empty()) {
            match parse_response_into(b.bytes(), &limits, method, resp) {
                Ok(Some(len)) if (100..200).contains(&resp.status) && resp.status != 101 => {
                    interim(resp.status, b.bytes().get(..len).unwrap_or_default()).await;
                    b.consume(len);
                    continue;
                }
                Ok(Some(len)) => return Ok(len),
                Ok(None) => {}
                Err(_) => return fail(upbuf, Failure::BadResponse),
            }
        }
        let started = upbuf.as_ref().is_some_and(|b| !b.is_empty());
        match read_into(up, upbuf, MAX_HEAD_BUF).await {
            Ok(n) if n > 0 => {}
            Err(e) if e.kind() == io::ErrorKind::OutOfMemory => {
                return fail(upbuf, Failure::BadResponse)
            }
            _ => return fail(upbuf, Failure::Reset { started }),
        }
    }
}

async fn discard(s: &mut Stream, count: &Cell<u64>, max: u64) {
    let mut slot: Option<Buf> = None;
    while count.get() < max {
        match read_into(s, &mut slot, buf::BUF_SIZE).await {
            Ok(n) if n > 0 => count.set(count.get() + n as u64),
            _ => break,
        }
        if let Some(b) = slot.as_mut() {
            b.consume(b.len());
        }
        glommio::yield_if_needed().await;
    }
    if let Some(b) = slot {
        b.release();
    }
}

/// Whether anything reads a finished request's details (method, path,
/// authority, request id, route and cluster names): the access log, or the
/// debug line of [`log_request`]. When nothing does, the L7 path leaves those
/// fields of its `RequestLog` empty instead of building strings per request.
pub fn request_details_wanted(shard: &Shard) -> bool {
    // Same module as the `debug!` below, so the same filter answers.
    shard.access_log.is_some() || tracing::enabled!(tracing::Level::DEBUG)
}

/// The one sink for finished HTTP requests: per-core counters, the latency
/// histogram, a debug line and the access log.
pub fn log_request(shard: &Shard, log: &RequestLog) {
    count_request(shard, log);
    access_log_request(shard, log);
}

/// [`log_request`] without the access log: counters, histogram, debug line.
fn count_request(shard: &Shard, log: &RequestLog) {
    let s = &shard.stats;
    CoreStats::inc(&s.rq_total);
    s.upstream_rq_total
        .set(s.upstream_rq_total.get() + u64::from(log.attempts));
    match log.status {
        100..=199 => CoreStats::inc(&s.rq_1xx),
        200..=299 => CoreStats::inc(&s.rq_2xx),
        300..=399 => CoreStats::inc(&s.rq_3xx),
        400..=499 => CoreStats::inc(&s.rq_4xx),
        500..=599 => CoreStats::inc(&s.rq_5xx),
        _ => {}
    }
    shard
        .histograms
        .borrow_mut()
        .rq_time_us
        .saturating_record((log.duration.as_micros() as u64).max(1));
    if !log.flags.is_empty() {
        for flag in log.flags.names() {
            shard.count_flag(flag);
        }
    }
    debug!(
        method = %log.method,
        path = %log.path,
        status = log.status,
        flags = %log.flags,
        listener = %log.listener,
        upstream = ?log.upstream_host,
        attempts = log.attempts,
        bytes_sent = log.bytes_sent,
        duration_us = log.duration.as_micros() as u64,
        request_id = log.request_id.as_deref().unwrap_or("-"),
        "request"
    );
}

/// The access-log entry of a finished request, when the access log is on.
fn access_log_request(shard: &Shard, log: &RequestLog) {
    if let Some(al) = &shard.access_log {
        let flags = log.flags.to_string();
        al.record(&access_log::Entry {
            start_time: Some(SystemTime::now() - log.started.elapsed()),
            protocol: log.protocol,
            // A request rejected before its head was parsed has none of
            // these: logged as absent ("-", JSON null), as Envoy does.
            method: non_empty(&log.method),
            path: non_empty(&log.path),
            response_code: log.status,
            response_flags: &flags,
            bytes_received: log.bytes_received,
            bytes_sent: log.bytes_sent,
            duration: log.duration,
            upstream_host: log.upstream_host,
            downstream_remote: log.downstream_remote_address,
            downstream_local: log.downstream_local_address,
            listener: &log.listener,
            request_id: log.request_id.as_deref(),
            authority: non_empty(&log.authority),
            user_agent: log.user_agent.as_deref(),
            forwarded_for: log.forwarded_for.as_deref(),
            peer_uri_san: log.tls.as_ref().and_then(|t| t.peer_uri.as_deref()),
            tls_version: log.tls.as_ref().map(|t| t.info.version),
            tls_cipher: log.tls.as_ref().map(|t| t.info.cipher),
            requested_server_name: log.tls.as_ref().and_then(|t| t.sni.as_deref()),
            authz_policy: log.authz_policy.as_deref(),
        });
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::head::BodyFraming;

    /// Sizes on an idle keep-alive connection's path (printed with
    /// `cargo test --lib idle_conn_sizes -- --nocapture`; perf/README.md).
    #[test]
    fn idle_conn_sizes() {
        fn one_size<'a, 's: 'a, F: std::future::Future>(
            _: impl FnOnce(&'a mut Conn<'s>) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        fn read_head_size<'a, 's: 'a, F: std::future::Future>(
            _: impl FnOnce(&'a mut Conn<'s>, HeadTimeouts, &'a Limits) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        eprintln!("Conn: {} B", std::mem::size_of::<Conn<'_>>());
        eprintln!("  RequestLog: {} B", std::mem::size_of::<RequestLog>());
        eprintln!("  RequestHead: {} B", std::mem::size_of::<RequestHead>());
        eprintln!("  ResponseHead: {} B", std::mem::size_of::<ResponseHead>());
        eprintln!("  Context: {} B", std::mem::size_of::<Context>());
        fn wait_size<'a, F: std::future::Future>(
            _: impl FnOnce(&'a Shard, &'a mut Idle) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        fn busy_size<'a, F: std::future::Future>(
            _: impl FnOnce(&'a Rc<Shard>, Idle, Buf, bool) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        let (idle, wait) = (std::mem::size_of::<Idle>(), wait_size(wait_for_request));
        eprintln!("Idle: {idle} B");
        eprintln!("wait_for_request future: {wait} B");
        // An idle connection keeps these (and the context once, shared):
        // perf/README.md, "Memory per idle connection" (fourth pass: +8 B
        // each for the parked socket's tag and the wait's `parks` flag;
        // session 39: +8 B for the read side's readiness slot, `net::tcp`,
        // which replaces the ~435 B glommio poll a waiting read allocated;
        // session 40: 152 -> 32 B, the socket a descriptor and two slots
        // instead of glommio's stream, and parking gone).
        assert!(idle <= 32, "Idle grew to {idle} B");
        assert!(wait <= 56, "the idle wait grew to {wait} B");
        assert!(std::mem::size_of::<Context>() <= 216, "Context grew");
        eprintln!(
            "busy future (boxed per busy stretch): {} B",
            busy_size(busy)
        );
        eprintln!("Conn::one future: {} B", one_size(Conn::one));
        eprintln!(
            "Conn::read_head future: {} B",
            read_head_size(Conn::read_head)
        );
    }

    #[test]
    fn flags_display() {
        let mut f = ResponseFlags::default();
        assert_eq!(f.to_string(), "-");
        f.insert(ResponseFlags::UF);
        f.insert(ResponseFlags::URX);
        assert_eq!(f.to_string(), "UF,URX");
    }

    #[test]
    fn decode_into_rechunks_and_keeps_the_next_message() {
        let mut dec = BodyDecoder::new(BodyFraming::Chunked, ChunkedLimits::default());
        let input = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nt: 1\r\n\r\nGET / HTTP/1.1\r\n";
        let mut out = Vec::new();
        let mut trailers = Vec::new();
        let d = decode_into(&mut dec, input, &mut out, true, &mut trailers).unwrap();
        assert!(d.done);
        assert_eq!(d.data, 5);
        assert_eq!(&input[d.consumed..], b"GET / HTTP/1.1\r\n");
        assert_eq!(out, b"3\r\nabc\r\n2\r\nde\r\n0\r\nt: 1\r\n\r\n");
        // Split at every byte: same output.
        for split in 1..input.len() - 16 {
            let mut dec = BodyDecoder::new(BodyFraming::Chunked, ChunkedLimits::default());
            let (mut out2, mut tr) = (Vec::new(), Vec::new());
            let d1 = decode_into(&mut dec, &input[..split], &mut out2, false, &mut tr).unwrap();
            assert_eq!(d1.consumed, split);
            assert!(!d1.done);
            let d2 = decode_into(&mut dec, &input[split..], &mut out2, false, &mut tr).unwrap();
            assert!(d2.done);
            assert_eq!(out2, b"abcde");
            assert_eq!(d1.data + d2.data, 5);
        }
    }

    #[test]
    fn rate_headers_are_added_to_the_route_ops() {
        let h = [
            ("x-ratelimit-limit", "5".to_string()),
            ("x-ratelimit-remaining", "4".to_string()),
            ("x-ratelimit-reset", "60".to_string()),
        ];
        let names = |o: &HeaderOps| {
            o.add
                .iter()
                .map(|f| String::from_utf8_lossy(&f.name).into_owned())
                .collect::<Vec<_>>()
        };
        let none = with_rate_headers(None, &h);
        assert_eq!(
            names(&none),
            [
                "x-ratelimit-limit",
                "x-ratelimit-remaining",
                "x-ratelimit-reset"
            ]
        );
        assert_eq!(&*none.add[2].value, b"60");
        // The route's own edits stay, in front.
        let route = HeaderOps {
            remove: vec![b"server"[..].into()],
            add: vec![HeaderField::new(b"x-route", b"r")],
            ..HeaderOps::default()
        };
        let merged = with_rate_headers(Some(Cow::Borrowed(&route)), &h);
        assert_eq!(merged.remove, route.remove);
        assert_eq!(names(&merged)[..2], ["x-route", "x-ratelimit-limit"]);
    }

    #[test]
    fn decode_into_length() {
        let mut dec = BodyDecoder::new(BodyFraming::Length(3), ChunkedLimits::default());
        let (mut out, mut tr) = (Vec::new(), Vec::new());
        let d = decode_into(&mut dec, b"abcdef", &mut out, false, &mut tr).unwrap();
        assert_eq!(
            (d.consumed, d.data, d.done, &out[..]),
            (3, 3, true, &b"abc"[..])
        );
        let mut dec = BodyDecoder::new(BodyFraming::None, ChunkedLimits::default());
        assert_eq!(
            decode_into(&mut dec, b"", &mut out, false, &mut tr).unwrap(),
            Decoded {
                consumed: 0,
                data: 0,
                done: true
            }
        );
    }
}
