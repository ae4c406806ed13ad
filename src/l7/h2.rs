//! The L7 path for HTTP/2 clients (prior knowledge on a plaintext port, or
//! ALPN `h2` on an mTLS one). Every stream is one request and goes through
//! what an HTTP/1 request goes through: authorization, `plan::plan` (the
//! same routes, with `:authority` as Host), the local rate limit, fault
//! injection, body limits, the shared attempt loop (`attempt::run`: retries,
//! breakers, outlier detection, TLS origination) and the access log, with
//! `protocol` HTTP/2. The upstream speaks HTTP/2 (cluster `http2 = true`, or
//! `"auto"`, and passthrough) on a multiplexed connection, or HTTP/1.1 on a
//! pooled one, translated both ways (`h2::headers`).
//!
//! ```text
//!  connection task (h2::server over h2::conn): read ─ accept streams ─
//!   │  each stream a future in one FuturesUnordered (dropped with the
//!   │  connection: nothing outlives it) ─ poll them ─ write what they queued
//!   │  idle_timeout with no stream ─► GOAWAY; core draining ─► GOAWAY
//!   │  premature resets (also of streams reset before they were accepted)
//!   │      ≥ max_premature_resets and half the streams
//!   │      ─► GOAWAY ENHANCE_YOUR_CALM (rapid reset)
//!   ▼
//!  stream: authz ─ plan ─ rate limit ─ local reply / fault ─ body buffered
//!   │  up to retry_buffer_limit (replayable) ─ grpc-timeout caps the route
//!   │  timeout ─ attempts ─ response head ─ body relayed under both flow
//!   │  controls (a reader stalled for stream_idle_timeout is reset) ─
//!   │  trailers ─ log
//!   └─ gRPC request answered locally: a trailers-only answer (HTTP 200,
//!      grpc-status from the HTTP status, as Envoy sends it)
//! ```
//!
//! Request and response bodies stream concurrently once the response head
//! is in (gRPC's bidirectional calls); a body that fits the retry buffer is
//! sent whole first, so that a retry can replay it.

use std::cell::{Cell, RefCell};
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use futures_lite::io::AsyncWriteExt;
use futures_util::future::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tracing::debug;

use crate::config::Snapshot;
use crate::deadline::until;
use crate::h2::client::{self, UpStream};
use crate::h2::client_conn::{self, NotOpened};
use crate::h2::forward::{self, UpRequest};
use crate::h2::frame::ErrorCode;
use crate::h2::grpc;
use crate::h2::headers;
use crate::h2::link::{Fields, Read, Reset, Settings};
use crate::h2::request::{Malformed, RequestHead};
use crate::h2::server::{Ended, Server, StreamRef, HIGH_WATER};
use crate::http::body::{encode_chunk, encode_last_chunk, BodyDecoder, ChunkedLimits};
use crate::http::head::{BodyFraming, Method, ResponseHead};
use crate::http::rewrite::{is_valid_header_value, HeaderOps, RequestId, RequestRewrite};
use crate::http::RequestParts;
use crate::net::buf::{read_into, Buf};
use crate::net::Stream;
use crate::recycle::{Boxed, FutureBox, Recycled};
use crate::shard::Shard;
use crate::stats::CoreStats;
use crate::upstream::pool;
use crate::upstream::tls::AppProtocol;

use super::attempt::{self, Answer, Tried, UpstreamRef};
use super::plan::{self, Target};
use super::retry::{self, Failure, Outcome};
use super::{
    authorize, decode_into, log_request, merge_ops, read_response_head, request_details_wanted,
    with_rate_headers, Context, RequestLog, ResponseFlags, MAX_HEAD_BUF,
};

/// What the connection's streams share with it.
struct Shared {
    ctx: Context,
    /// Streams accepted.
    streams: Cell<u32>,
    /// Streams the client reset before their answer was complete.
    premature_resets: Cell<u32>,
    max_premature_resets: u32,
    /// Close with ENHANCE_YOUR_CALM.
    calm: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Shared {
    fn premature_reset(&self, shard: &Shard) {
        CoreStats::inc(&shard.stats.http2_rx_reset);
        let n = self.premature_resets.get() + 1;
        self.premature_resets.set(n);
        if n >= self.max_premature_resets && u64::from(n) * 2 >= u64::from(self.streams.get()) {
            self.calm.set(true);
            if let Some(w) = self.waker.borrow_mut().take() {
                w.wake();
            }
        }
    }
}

enum Event {
    /// The client closed, went away, or broke the protocol.
    Ended(Ended),
    /// Closing (GOAWAY sent), no stream left, everything written.
    Closed,
    Idle,
    Drain,
    /// The overload manager sheds idle connections.
    Shed,
    /// No stream is left: the idle timeout and shedding apply from now.
    Quiet,
    Calm,
    /// The close started CLOSE_GRACE ago and the client has not let it end.
    Abandon,
}

/// How long a connection that is being closed (GOAWAY sent: idle, drain,
/// ENHANCE_YOUR_CALM) may wait for its client once no stream is left to
/// finish (after ENHANCE_YOUR_CALM: at all) before it is dropped.
/// h2's graceful close waits for the client's PING acknowledgement and
/// every close waits for its GOAWAY to be written, so a client that never
/// reads or answers would otherwise hold the connection forever. Envoy's
/// HTTP connection manager gives its drain sequence 5 s (`drain_timeout`).
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The longest the connection's task holds what its streams queued while
/// others still wait for their answers (see [`Hold`]).
const FLUSH_DELAY: Duration = Duration::from_micros(100);

/// Whether answers that are ready wait a little for others of the same
/// connection, so that they leave in one write (the client then reads them
/// at once, as HAProxy's and the h2 crate's writes let it).
///
/// They wait while the core has completions it has not processed yet
/// (`net::uring::completions_waiting`): one of those may be another stream's
/// answer, and the task runs again before the core sleeps. Otherwise they go
/// at once, as an event loop flushes at the end of its pass: on a core with
/// time to spare, waiting would only add latency and leave the client idle.
/// Except on a saturated core (`net::uring::saturated`): there every write saved is
/// capacity, so the answers wait for company anyway. [`FLUSH_DELAY`] caps
/// the wait in every case. Measured against always waiting up to 100 µs
/// (perf/H2.md, "Session 19"): on `h2-keepalive`, where Remora's core is
/// 85 % busy, Remora spends 4.5 to 5.5 % less CPU per request (lower in
/// every round), the client sleeps a fifth less often and p50 is lower;
/// requests/s move within the noise. On `grpc-unary`, where Remora's core
/// is saturated, nothing changes; waiting only while completions are queued
/// had cost it 6 % of its requests/s there.
///
/// The cap is one glommio timer armed when a wait begins; later polls of the
/// wait compare the clock with its end instead of polling the timer again (a
/// glommio timer's poll re-inserts it in two of the reactor's maps).
#[derive(Default)]
struct Hold(Option<(Instant, glommio::timer::Timer)>);

impl Hold {
    /// True while the queued answers should wait; the first call of a wait
    /// arms the cap, whose expiry wakes the task.
    fn holds(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let now = Instant::now();
        if !crate::net::uring::completions_waiting() && !crate::net::uring::saturated(now) {
            return false;
        }
        match &self.0 {
            Some((end, _)) => now < *end,
            None => {
                let mut timer = glommio::timer::Timer::new(FLUSH_DELAY);
                let _ = Pin::new(&mut timer).poll(cx);
                self.0 = Some((now + FLUSH_DELAY, timer));
                true
            }
        }
    }

    /// The answers were written (or are being): the next wait starts afresh.
    fn end(&mut self) {
        self.0 = None;
    }
}

/// Serves an HTTP/2 connection whose preface (or ALPN `h2`) was seen;
/// `read`: bytes already read from it (by the HTTP/1 reader that found the
/// preface).
pub async fn serve(
    shard: &Rc<Shard>,
    down: Stream,
    read: Option<Buf>,
    snapshot: Arc<Snapshot>,
    ctx: Context,
) {
    CoreStats::inc(&shard.stats.downstream_cx_http2);
    let config = &snapshot.config;
    let (mut down, mut read) = (down, read);
    let deadline = Instant::now() + config.http.request_headers_timeout;
    match until(Some(deadline), first_frame(&mut down, &mut read)).await {
        Some(Ok(true)) => {}
        Some(Ok(false)) => {
            // RFC 9113 §3.4: an invalid preface is a connection error
            // PROTOCOL_ERROR. GOAWAY, last stream 0.
            CoreStats::inc(&shard.stats.http2_rx_messaging_error);
            debug!(peer = ?ctx.peer, "HTTP/2: the preface's first frame is not SETTINGS");
            let goaway = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
            let _ = until(Some(deadline), down.write_all(&goaway)).await;
            if let Some(b) = read {
                b.release();
            }
            return;
        }
        Some(Err(())) | None => {
            if let Some(b) = read {
                b.release();
            }
            return;
        }
    }
    let settings = http2_settings(config);
    let mut srv = Server::new(down, read, settings);
    let shared = Rc::new(Shared {
        ctx,
        streams: Cell::new(0),
        premature_resets: Cell::new(0),
        max_premature_resets: config.http2.max_premature_resets,
        calm: Cell::new(false),
        waker: RefCell::new(None),
    });
    let idle_timeout = config.http.idle_timeout;
    drop(snapshot);
    let mut streams = FuturesUnordered::new();
    let mut idle: Option<glommio::timer::Timer> = None;
    let mut stopping = pin!(shard.stopping.acquire(1));
    // The overload manager sheds idle connections: one without streams
    // gets GOAWAY. (Its signal is looked up afresh each time the connection
    // goes idle: a closed one is replaced once the pressure is gone.)
    let mut shed: Option<std::pin::Pin<Box<dyn Future<Output = ()>>>> = None;
    let mut closing = false;
    let mut abandon: Option<glommio::timer::Timer> = None;
    let mut resets_seen = 0;
    let mut hold = Hold::default();
    loop {
        if streams.is_empty() && idle.is_none() && !closing {
            idle = Some(glommio::timer::Timer::new(idle_timeout));
            // Shedding under way already: an HTTP/1 answer would say
            // `connection: close` now; this connection goes at once.
            let now = shard.overload_actions.get().shed_idle_connections;
            let signal = shard.shed.borrow().clone();
            shed = Some(Box::pin(async move {
                if !now {
                    let _ = signal.acquire(1).await;
                }
            }));
        }
        let event = poll_fn(|cx| {
            if shared.calm.get() {
                return Poll::Ready(Event::Calm);
            }
            *shared.waker.borrow_mut() = Some(cx.waker().clone());
            let ended = match srv.poll_read(cx) {
                Poll::Ready(e) => Some(e),
                Poll::Pending => None,
            };
            // Every stream whose head is in is accepted before any stream
            // runs, so that the requests of one read go upstream together
            // (see `try_h1`'s yield).
            // One clock read for the streams a read brought (they began
            // together).
            let mut now = None;
            while let Some((down, head)) = srv.accept() {
                let started = *now.get_or_insert_with(Instant::now);
                idle = None;
                shed = None;
                shared.streams.set(shared.streams.get() + 1);
                CoreStats::inc(&shard.stats.downstream_rq_http2);
                // Boxed in place (`FutureBox::new_in_place`): pushed by value, the
                // 5.8 KB stream future was built on the stack, copied into
                // `push`'s argument and again into the set's task
                // allocation; boxed, the task holds a pointer and nothing
                // of the future is copied: 11.7 KB less memcpy per stream
                // (perf/README.md, "Session 20"). The box's block comes from
                // the core's free list.
                streams.push(FutureBox::new_in_place(|| {
                    stream(shard.clone(), shared.clone(), down, head, started)
                }));
            }
            // Streams the client reset before they were accepted count as
            // premature resets too (rapid reset in one read).
            let resets = srv.resets_before_accept();
            while resets_seen < resets {
                resets_seen += 1;
                shared.streams.set(shared.streams.get() + 1);
                shared.premature_reset(shard);
            }
            while let Poll::Ready(Some(())) = streams.poll_next_unpin(cx) {}
            // What this poll queued may wait for other answers of the
            // connection (see `Hold`). Not when a lot is queued, when
            // closing, or when no stream is left waiting.
            let queued = srv.queued();
            let defer = queued > 0
                && queued < HIGH_WATER / 2
                && srv.awaiting_head() > 0
                && ended.is_none()
                && !closing
                && hold.holds(cx);
            let flushed = if defer {
                false
            } else {
                hold.end();
                match srv.poll_write(cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::Ended(Ended::Io(e))),
                    Poll::Pending => false,
                }
            };
            if let Some(e) = ended {
                return Poll::Ready(Event::Ended(e));
            }
            if shared.calm.get() {
                return Poll::Ready(Event::Calm);
            }
            if closing && streams.is_empty() && flushed {
                return Poll::Ready(Event::Closed);
            }
            if streams.is_empty() && idle.is_none() && !closing {
                // The last stream just ended: start the idle clock.
                return Poll::Ready(Event::Quiet);
            }
            if streams.is_empty() {
                if let Some(t) = idle.as_mut() {
                    if std::pin::Pin::new(t).poll(cx).is_ready() {
                        return Poll::Ready(Event::Idle);
                    }
                }
            }
            if !closing && stopping.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if let Some(f) = shed.as_mut().filter(|_| !closing && streams.is_empty()) {
                if f.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Shed);
                }
            }
            // The grace runs while nothing is left to finish but the
            // output a client does not read.
            if closing && streams.is_empty() {
                let t = abandon.get_or_insert_with(|| glommio::timer::Timer::new(CLOSE_GRACE));
                if std::pin::Pin::new(t).poll(cx).is_ready() {
                    return Poll::Ready(Event::Abandon);
                }
            } else {
                abandon = None;
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Ended(e) => {
                match e {
                    Ended::Eof => {}
                    Ended::Io(e) => {
                        debug!(peer = ?shared.ctx.peer, error = %e, "HTTP/2 connection failed")
                    }
                    Ended::Protocol(e) => {
                        CoreStats::inc(&shard.stats.http2_rx_messaging_error);
                        debug!(peer = ?shared.ctx.peer, code = ?e.code, reason = e.reason, "HTTP/2 connection error");
                    }
                }
                break;
            }
            Event::Quiet => srv.shrink(),
            Event::Shed => {
                CoreStats::inc(&shard.stats.downstream_cx_overload_shed);
                closing = true;
                srv.goaway(ErrorCode::NO_ERROR);
            }
            Event::Idle | Event::Drain => {
                idle = None;
                closing = true;
                srv.goaway(ErrorCode::NO_ERROR);
            }
            Event::Closed => break,
            Event::Abandon => {
                debug!(peer = ?shared.ctx.peer, "HTTP/2: the client did not let the close finish; dropped");
                break;
            }
            Event::Calm => {
                CoreStats::inc(&shard.stats.http2_premature_reset_closed);
                debug!(peer = ?shared.ctx.peer, "HTTP/2: too many premature resets; closing");
                srv.goaway(ErrorCode::ENHANCE_YOUR_CALM);
                break;
            }
        }
    }
    // Whatever is still queued (a GOAWAY above all) goes out within the
    // grace, and then the socket closes; the streams go first (their
    // resets are queued too).
    drop(streams);
    let flush = poll_fn(|cx| srv.poll_write(cx));
    let _ = until(Some(Instant::now() + CLOSE_GRACE), flush).await;
    srv.close().await;
}

/// Reads until the preface and the head of the frame after it are in
/// `read`: Ok(false) when that frame is not the SETTINGS frame the preface
/// must end with (RFC 9113 §3.4; h2 does not check it), Err when the client
/// went away first.
async fn first_frame(down: &mut Stream, read: &mut Option<Buf>) -> Result<bool, ()> {
    loop {
        if let Some(v) = preface_verdict(read.as_ref().map_or(&[][..], |b| b.bytes())) {
            return Ok(v);
        }
        match read_into(down, read, MAX_HEAD_BUF).await {
            Ok(n) if n > 0 => {}
            _ => return Err(()),
        }
    }
}

/// Whether `bytes` start with the client preface and a SETTINGS frame's
/// head (None: not enough bytes yet).
fn preface_verdict(bytes: &[u8]) -> Option<bool> {
    let p = crate::h2::PREFACE;
    let n = bytes.len().min(p.len());
    if bytes[..n] != p[..n] {
        return Some(false);
    }
    // A frame head is 9 bytes; its fourth is the type, 0x4 SETTINGS.
    const SETTINGS: u8 = 0x4;
    bytes.get(p.len() + 3).map(|&t| t == SETTINGS)
}

/// A request body from an HTTP/2 client. What is read of it is kept (for a
/// retry to replay) while it stays within `http.retry_buffer_limit`.
struct Body {
    down: StreamRef,
    /// Data read so far, while `streamed` is false.
    buffered: Vec<Bytes>,
    kept_len: usize,
    retry_limit: usize,
    trailers: Option<Fields>,
    /// END_STREAM seen.
    complete: bool,
    /// It grew past the retry buffer: what went out is not kept, no replay.
    streamed: bool,
    received: u64,
    /// max_request_body_bytes; 0 = none.
    limit: u64,
    idle: Duration,
}

impl Body {
    /// Everything read so far is kept: another attempt can start over (and
    /// read on from the client), as Envoy retries a body that still fits
    /// its buffer.
    fn replayable(&self) -> bool {
        !self.streamed
    }

    /// The next piece of data (capacity released once it is taken; a copy
    /// kept while within the retry buffer), None at the end of the body
    /// (trailers read then). Cancel-safe: nothing is taken before the
    /// awaits end. Once the body outgrows the buffer, what was kept is let
    /// go: the caller sends what it reads at once, so the kept part is out.
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        let data = self.read().await?;
        if let Some(d) = data.as_ref().filter(|_| !self.streamed) {
            if self.kept_len + d.len() <= self.retry_limit {
                self.kept_len += d.len();
                self.buffered.push(d.clone());
            } else {
                self.streamed = true;
                self.buffered = Vec::new();
            }
        }
        Ok(data)
    }

    /// The next piece of data, nothing kept.
    async fn read(&mut self) -> Result<Option<Bytes>, Failure> {
        if self.complete {
            return Ok(None);
        }
        let mut buf = Vec::new();
        let read = poll_fn(|cx| self.down.poll_read(cx, &mut buf));
        let got = match future::poll_once(read).await {
            Some(r) => r,
            None => {
                let deadline = (!self.idle.is_zero()).then(|| Instant::now() + self.idle);
                let read = poll_fn(|cx| self.down.poll_read(cx, &mut buf));
                until(deadline, read).await.ok_or(Failure::BodyTimeout)?
            }
        };
        match got {
            Read::Data(n) => {
                self.received += n as u64;
                if self.limit > 0 && self.received > self.limit {
                    return Err(Failure::TooLarge);
                }
                Ok(Some(Bytes::from(buf)))
            }
            Read::End => {
                self.trailers = self.down.take_trailers();
                self.complete = true;
                Ok(None)
            }
            Read::Reset(_) | Read::Pending => Err(Failure::Downstream),
        }
    }

    /// Reads the body until it ends or the retry buffer is full (for an
    /// HTTP/1 upstream, which takes a whole request before answering).
    async fn fill(&mut self) -> Result<(), Failure> {
        while !self.complete && self.kept_len < self.retry_limit {
            if let Some(d) = self.read().await? {
                self.kept_len += d.len();
                self.buffered.push(d);
            }
        }
        // Past the buffer: all of it goes out once, none of it twice.
        self.streamed = self.kept_len > self.retry_limit;
        Ok(())
    }
}

/// A request body on its way to an HTTP/2 upstream, whatever brought it:
/// an HTTP/2 client's DATA frames ([`Body`]) or an HTTP/1 client's decoded
/// body (`l7::to_h2`). A source keeps what it reads while that fits the
/// retry buffer.
pub(super) trait BodySource {
    /// All that was read of it is kept: another attempt can send it again
    /// and read on.
    fn replayable(&self) -> bool;
    /// The end of the body has been read.
    fn complete(&self) -> bool;
    /// What a new attempt starts with: the data kept so far (nothing once
    /// the body outgrew the retry buffer: it is not sent twice).
    fn kept(&self) -> Vec<Bytes>;
    /// The body's trailers, once complete.
    fn trailers(&self) -> Option<Fields>;
    /// The next piece of data; None at the end (trailers read then).
    /// Cancel-safe.
    async fn next(&mut self) -> Result<Option<Bytes>, Failure>;
}

impl BodySource for Body {
    fn replayable(&self) -> bool {
        Body::replayable(self)
    }
    fn complete(&self) -> bool {
        self.complete
    }
    fn kept(&self) -> Vec<Bytes> {
        if self.streamed {
            Vec::new()
        } else {
            self.buffered.clone()
        }
    }
    fn trailers(&self) -> Option<Fields> {
        self.trailers.clone()
    }
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        Body::next(self).await
    }
}

/// A request body's way to an HTTP/2 upstream: what an attempt starts with
/// (the kept data), then what the source reads, then trailers or an empty
/// END_STREAM. Its state lives here, not in a future, so the pump can be
/// raced against the answer's head and resumed after it (bidirectional
/// streams) without losing a byte.
pub(super) struct Pump {
    tx: UpStream,
    queue: std::collections::VecDeque<Bytes>,
    /// END_STREAM sent.
    done: bool,
}

impl Pump {
    fn new(tx: UpStream, kept: Vec<Bytes>, done: bool) -> Pump {
        Pump {
            tx,
            queue: kept.into(),
            done,
        }
    }

    /// Sends until the body's end; a reader on the upstream side that opens
    /// no window for `idle` fails it.
    pub(super) async fn run(
        &mut self,
        body: &mut impl BodySource,
        idle: Duration,
    ) -> Result<(), Failure> {
        let sent = |_| Failure::Reset { started: true };
        while !self.done {
            let Some(front) = self.queue.front_mut() else {
                match body.next().await? {
                    Some(d) => self.queue.push_back(d),
                    None => {
                        if !self.tx.can_send() {
                            return Err(sent(()));
                        }
                        match body.trailers() {
                            Some(t) => self
                                .tx
                                .send_trailers(|enc, out| headers::encode_fields(&t, enc, out)),
                            None => {
                                self.tx.send_data(&[], true);
                            }
                        }
                        self.done = true;
                    }
                }
                continue;
            };
            if front.is_empty() {
                self.queue.pop_front();
                continue;
            }
            let cap = match window(&self.tx, front.len(), idle).await {
                Ok(n) => n,
                Err(Unsent::Closed) => return Err(Failure::Reset { started: true }),
                Err(Unsent::Stalled) => return Err(Failure::PerTryTimeout),
            };
            let queued = self.queue.len();
            let Some(front) = self.queue.front_mut() else {
                continue;
            };
            if cap == 0 {
                continue;
            }
            let n = cap.min(front.len());
            // The body's last piece carries END_STREAM itself unless
            // trailers follow.
            let last =
                n == front.len() && queued == 1 && body.complete() && body.trailers().is_none();
            let sent_n = self.tx.send_data(&front[..n], last);
            if sent_n == 0 {
                return Err(sent(()));
            }
            let _ = front.split_to(sent_n);
            if front.is_empty() {
                self.queue.pop_front();
            }
            self.done = last && sent_n == n;
        }
        Ok(())
    }

    /// Gives up on the upstream stream (the client went away, or timed out).
    pub(super) fn cancel(&mut self) {
        self.tx.reset(ErrorCode::CANCEL);
    }
}

/// Room to send up to `want` bytes on `tx`, waiting at most `idle` for the
/// peer to open its window. The windows usually have room: then no timer
/// is armed.
async fn window(tx: &UpStream, want: usize, idle: Duration) -> Result<usize, Unsent> {
    let room = match future::poll_once(poll_fn(|cx| tx.poll_capacity(cx))).await {
        Some(r) => r,
        None => {
            let deadline = (!idle.is_zero()).then(|| Instant::now() + idle);
            until(deadline, poll_fn(|cx| tx.poll_capacity(cx)))
                .await
                .ok_or(Unsent::Stalled)?
        }
    };
    room.map(|n| n.min(want)).map_err(|()| Unsent::Closed)
}

/// Why data could not be sent to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unsent {
    /// The stream or connection is gone (reset, closed).
    Closed,
    /// The reader opened no window for stream_idle_timeout (zero-window stall).
    Stalled,
}

/// Sends `data` to the client on `down` as the windows and the output
/// allow; a reader that opens no window for `idle` is given up on.
async fn send_down(
    down: &StreamRef,
    mut data: &[u8],
    end: bool,
    idle: Duration,
) -> Result<(), Unsent> {
    if data.is_empty() {
        if down.is_reset() {
            return Err(Unsent::Closed);
        }
        down.send_data(data, end);
        return Ok(());
    }
    while !data.is_empty() {
        // The windows usually have room: then no timer is armed.
        let room = poll_fn(|cx| down.poll_capacity(cx));
        let room = match future::poll_once(room).await {
            Some(r) => r,
            None => {
                let deadline = (!idle.is_zero()).then(|| Instant::now() + idle);
                let room = poll_fn(|cx| down.poll_capacity(cx));
                until(deadline, room).await.ok_or(Unsent::Stalled)?
            }
        };
        let n = room.map_err(|()| Unsent::Closed)?;
        let piece = &data[..n.min(data.len())];
        let sent = down.send_data(piece, end && piece.len() == data.len());
        data = &data[sent..];
    }
    Ok(())
}

/// One stream, from its head to the end of its answer.
async fn stream(
    shard: Rc<Shard>,
    conn: Rc<Shared>,
    down: StreamRef,
    head: Result<RequestHead, Malformed>,
    started: Instant,
) {
    let mut s = H2Stream {
        log: RequestLog::new(&conn.ctx, started),
        shard,
        conn,
        down,
        rate_headers: None,
        grpc: false,
        finished: false,
        unsent: None,
    };
    s.log.protocol = "HTTP/2";
    match head {
        Ok(head) => s.handle(head).await,
        // Over the header list limit (decoded whole: HPACK stays in step).
        Err(_) => s.local(431, "", None),
    }
    s.finish_local().await;
    s.log.bytes_received += s.down.unread() as u64;
    if !s.finished {
        s.conn.premature_reset(&s.shard);
    }
    s.log.duration = s.log.started.elapsed();
    log_request(&s.shard, &s.log);
}

struct H2Stream {
    shard: Rc<Shard>,
    conn: Rc<Shared>,
    down: StreamRef,
    log: RequestLog,
    rate_headers: Option<[(&'static str, String); 3]>,
    /// A gRPC request: local replies are trailers-only answers.
    grpc: bool,
    /// The answer went out whole (or the stream failed on our side): not a
    /// premature reset by the client.
    finished: bool,
    /// A local reply's body the windows did not take at once.
    unsent: Option<Vec<u8>>,
}

pin_project_lite::pin_project! {
    /// `f`, or the client's reset of the stream (`Err`), whichever is first.
    struct OrReset<'r, F> {
        #[pin]
        f: F,
        down: &'r StreamRef,
    }
}

impl<F: Future> Future for OrReset<'_, F> {
    type Output = Result<F::Output, ()>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.f.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match this.down.poll_reset(cx) {
            Poll::Ready(()) => Poll::Ready(Err(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// An HTTP/1 upstream's answer to an HTTP/2 request.
struct H1Answer {
    up: Stream,
    upbuf: Option<Buf>,
    head: ResponseHead,
    head_len: usize,
    key: pool::Key,
    lease: pool::Lease,
    max_uses: u32,
}

/// Boxed ([`Boxed`]), as the HTTP/1 path's exchange: it is handed from
/// the attempt through the deadlines and the retry loop to the relay.
impl Answer for Boxed<H1Answer> {
    fn outcome(&self) -> Outcome {
        Outcome::Response(self.head.status, None)
    }
    fn discard(self) {
        if let Some(b) = self.into_inner().upbuf {
            b.release();
        }
    }
}

/// An HTTP/2 upstream's answer.
pub(super) struct H2Answer {
    head: client_conn::ResponseHead,
    /// The stream, to read the body from (and the hold on its connection).
    body: UpStream,
    /// The request body's way to the upstream, while it is still streaming.
    pump: Option<Pump>,
}

impl H2Answer {
    /// The head, the body, and the request body's way if still open.
    pub(super) fn into_parts(self) -> (client_conn::ResponseHead, UpStream, Option<Pump>) {
        (self.head, self.body, self.pump)
    }
}

impl Answer for H2Answer {
    fn outcome(&self) -> Outcome {
        // A trailers-only answer carries grpc-status in its head.
        let g = grpc::status_of(self.head.get(b"grpc-status")).filter(|_| self.body.recv_done());
        Outcome::Response(self.head.status, g)
    }
    fn discard(self) {}
}

impl H2Stream {
    /// A reply made here: plain text, or for a gRPC request a trailers-only
    /// answer carrying the matching grpc-status. What of the body the
    /// windows do not take at once goes in `finish_local`.
    fn local(&mut self, status: u16, body: &str, location: Option<&[u8]>) {
        let rate = self.rate_headers.take();
        let extra = rate.as_ref().map_or(&[][..], |r| &r[..]);
        let len = body.len().to_string();
        let grpc_status;
        let grpc_message;
        let mut fields: Vec<(&[u8], &[u8])> = Vec::with_capacity(6);
        let code = if self.grpc {
            grpc_status = grpc::status_for_http(status).to_string();
            grpc_message = grpc::percent_encode(body);
            fields.push((b"content-type", b"application/grpc"));
            fields.push((b"grpc-status", grpc_status.as_bytes()));
            fields.push((b"grpc-message", grpc_message.as_bytes()));
            200
        } else {
            fields.push((b"content-type", b"text/plain"));
            fields.push((b"content-length", len.as_bytes()));
            if let Some(l) = location.filter(|l| is_valid_header_value(l)) {
                fields.push((b"location", l));
            }
            status
        };
        fields.extend(extra.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        self.log.status = status;
        if self.down.is_reset() {
            self.log.flags.insert(ResponseFlags::DC);
            return;
        }
        let end = self.grpc || body.is_empty();
        self.down.send_head(end, |enc, out| {
            enc.status(code, out);
            for (n, v) in &fields {
                enc.field(n, v, out);
            }
        });
        self.finished = true;
        if !end {
            self.log.bytes_sent += body.len() as u64;
            self.unsent = Some(body.as_bytes().to_vec());
        }
    }

    /// Sends a local reply's body (within stream_idle_timeout).
    async fn finish_local(&mut self) {
        let Some(body) = self.unsent.take() else {
            return;
        };
        let idle = self.shard.config.current().config.http.stream_idle_timeout;
        if send_down(&self.down, &body, true, idle).await.is_err() {
            self.down.reset(ErrorCode::CANCEL);
        }
    }

    async fn handle(&mut self, head: RequestHead) {
        let shard = self.shard.clone();
        let snap = shard.config.current();
        let config = &snap.config;
        let http = &config.http;
        let ctx = self.conn.ctx.clone();
        self.grpc = grpc::is_grpc_content_type(head.header(b"content-type"));
        if shard.overload_actions.get().stop_accepting_requests {
            CoreStats::inc(&shard.stats.downstream_rq_overload_close);
            self.log.flags.insert(ResponseFlags::OL);
            return self.local(503, "envoy overloaded", None);
        }
        let details = request_details_wanted(&shard);
        let view = &head;
        if details {
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            self.log.method = text(view.method());
            self.log.path = text(view.path_and_query());
            self.log.authority = text(view.authority().unwrap_or_default());
            self.log.user_agent = view.header(b"user-agent").map(text);
            self.log.forwarded_for = view.header(b"x-forwarded-for").map(text);
        }

        if let Some(dst) = ctx.inbound_dst {
            let policies = &config.authorization;
            if !policies.is_empty() {
                if let Some(policy) = authorize(&shard, policies, &ctx, dst, view) {
                    self.log.flags.insert(ResponseFlags::RBAC);
                    self.log.authz_policy = Some(policy);
                    CoreStats::inc(&shard.stats.rq_rbac_denied);
                    return self.local(403, "RBAC: access denied", None);
                }
            }
        }

        let planned = plan::plan(config, view, ctx.fallback, shard.next_u64() as u32, "http");
        let rate_limit = match &planned {
            Ok(p) => p.rate_limit,
            Err(reply) => reply.rate_limit,
        };
        if let Some(rl) = rate_limit {
            let decision = shard.buckets.borrow_mut().requests.try_take(
                rl.virtual_host,
                rl.route,
                &rl.limit.bucket,
                shard.cores,
                Instant::now(),
            );
            self.rate_headers = rl.limit.headers(&decision);
            if !decision.allowed {
                CoreStats::inc(&shard.stats.rq_rate_limited);
                self.log.flags.insert(ResponseFlags::RL);
                return self.local(429, "local_rate_limited", None);
            }
        }
        let plan = match planned {
            Ok(p) => p,
            Err(reply) => {
                if details {
                    self.log.route_name = reply.route_name.map(str::to_string);
                }
                self.log.flags.insert(reply.flags);
                return self.local(reply.status, &reply.body, reply.location.as_deref());
            }
        };
        if details {
            self.log.upstream_cluster = Some(plan.cluster_name.to_string());
            self.log.route_name = plan.route.map(|(m, _)| m.route.name.to_string());
        }
        if let Some(fault) = plan.route.and_then(|(_, f)| f.fault.as_ref()) {
            let decision = fault.decide(shard.next_u64(), shard.next_u64());
            if let Some(delay) = decision.delay {
                CoreStats::inc(&shard.stats.rq_fault_delay);
                self.log.flags.insert(ResponseFlags::DI);
                glommio::timer::sleep(delay).await;
            }
            if let Some(status) = decision.abort {
                CoreStats::inc(&shard.stats.rq_fault_abort);
                self.log.flags.insert(ResponseFlags::FI);
                return self.local(status, "fault filter abort", None);
            }
        }
        let declared = head
            .header(b"content-length")
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        if plan.max_body > 0 && declared.is_some_and(|n| n > plan.max_body) {
            CoreStats::inc(&shard.stats.downstream_rq_too_large);
            self.log.flags.insert(ResponseFlags::RTL);
            return self.local(413, "request body too large", None);
        }

        // The upstream head: rewritten fields, path and authority.
        let mut response_ops = None;
        let mut path_scratch = Vec::new();
        let (path, host, ops) = match plan.route {
            Some((m, f)) => {
                response_ops =
                    merge_ops(&m.virtual_host.response_headers, &m.route.response_headers);
                (
                    m.route.rewritten_path(view, &mut path_scratch),
                    f.host_rewrite.as_deref(),
                    merge_ops(&m.virtual_host.request_headers, &m.route.request_headers),
                )
            }
            None => (None, None, None),
        };
        let hash = match plan.target {
            Target::Cluster(i) => config
                .clusters
                .get(i)
                .and_then(|c| plan::request_hash(c, view, ctx.peer.map(|a| a.ip()))),
            Target::Addr(..) => None,
        };
        // Borrowed from the head (or the rewrite's scratch): no copy per
        // request.
        let path = path.unwrap_or_else(|| view.path_and_query());
        let authority = host.or(view.authority()).unwrap_or_default();
        // The proxy's rewrite: applied to the map for an HTTP/2 upstream,
        // written with the head for an HTTP/1 one.
        let rewrite = RequestRewrite {
            path: Some(path),
            host: Some(authority),
            client_addr: ctx.forwarded_for(),
            forwarded_proto: Some("http"),
            forwarded_proto_if_absent: !ctx.use_remote_address,
            request_id: Some(&shard.request_ids),
            client_cert: ctx.tls.as_ref().and_then(|t| t.xfcc.as_deref()),
            ops: ops.as_deref(),
            framing: BodyFraming::None,
            upgrade: false,
        };
        if let Some(h) = &self.rate_headers {
            response_ops = Some(with_rate_headers(response_ops, h));
        }

        let mut body = Body {
            complete: self.down.recv_done(),
            down: self.down.clone(),
            buffered: Vec::new(),
            kept_len: 0,
            retry_limit: http.retry_buffer_limit,
            trailers: None,
            streamed: false,
            received: 0,
            limit: plan.max_body,
            idle: http.stream_idle_timeout,
        };
        let use_h2 = match plan.target {
            Target::Cluster(i) => config.clusters.get(i).is_some_and(|c| c.http2.use_h2(true)),
            Target::Addr(..) => true,
        };
        // HTTP/2 upstream: the body streams from the first attempt on (kept
        // for retries within the buffer). HTTP/1: buffered first, as the
        // HTTP/1 path does.
        if !use_h2 {
            if let Err(f) = body.fill().await {
                self.log.bytes_received = body.received;
                // Never sent: the id is the log's alone.
                let id = (details && head.header(b"x-request-id").is_none())
                    .then(|| shard.request_ids.next_id());
                self.log_request_id(details, id, &head);
                return self.body_failure(f);
            }
        }
        // grpc-timeout caps the route timeout (Envoy's grpc_timeout_header_max).
        let timeout = match (
            plan.timeout,
            head.header(b"grpc-timeout")
                .and_then(grpc::parse_timeout)
                .filter(|_| self.grpc),
        ) {
            (Some(t), Some(g)) => Some(t.min(g)),
            (t, g) => t.or(g),
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let req = attempt::Request {
            config,
            target: plan.target,
            retry: plan.retry,
            per_try: plan.retry.and_then(|r| r.per_try_timeout),
            connect_timeout: plan.connect_timeout,
            idempotent: Method::from_bytes(head.method()).is_idempotent(),
            hash,
            inbound: ctx.inbound_dst.is_some(),
            protocol: if use_h2 {
                AppProtocol::Http2
            } else {
                AppProtocol::Http1
            },
        };
        let mut tried = attempt::Attempts::default();
        let ops = response_ops.as_deref();
        if use_h2 {
            // The rewrite applied once; each attempt encodes the result.
            let (up_req, generated) = UpRequest::from_h2(&head, &rewrite, authority, path);
            self.log_request_id(details, generated, &up_req);
            let settings = http2_settings(config);
            let run = attempt::run(&shard, &req, &mut tried, async |conn, _fresh, per_try| {
                let reused = Cell::new(false);
                let attempt = try_h2(&shard, conn, &up_req, &mut body, settings, &reused, http);
                let result = until(per_try, attempt)
                    .await
                    .unwrap_or(Err(Failure::PerTryTimeout));
                Tried {
                    result,
                    reused: reused.get(),
                    replayable: body.replayable(),
                }
            });
            let r = self.until_or_reset(deadline, run).await;
            self.merge(&tried);
            if let Some((answer, _active)) = self.answered(r, &body) {
                self.relay_h2(answer, &mut body, ops, deadline, http.stream_idle_timeout)
                    .await;
            }
        } else {
            let framing = match (body.complete, declared) {
                (true, _) => {
                    BodyFraming::Length(body.buffered.iter().map(|b| b.len() as u64).sum())
                }
                (false, Some(n)) => BodyFraming::Length(n),
                (false, None) => BodyFraming::Chunked,
            };
            let framing = match (framing, body.trailers.is_some()) {
                // Trailers need chunked.
                (_, true) => BodyFraming::Chunked,
                (BodyFraming::Length(0), false) if !body_expected(head.method()) => {
                    BodyFraming::None
                }
                (f, false) => f,
            };
            let mut up_head = Recycled::<u8>::new();
            let rewrite = RequestRewrite { framing, ..rewrite };
            let generated = headers::write_h1_request(&head, &rewrite, &mut up_head);
            self.log_request_id(details, generated, &head);
            let method = Method::from_bytes(head.method());
            let run = attempt::run(&shard, &req, &mut tried, async |conn, fresh, per_try| {
                let reused = Cell::new(false);
                let result = until(
                    per_try,
                    try_h1(
                        &shard, conn, fresh, &up_head, framing, &mut body, method, &reused, http,
                    ),
                )
                .await
                .unwrap_or(Err(Failure::PerTryTimeout));
                Tried {
                    result,
                    reused: reused.get(),
                    replayable: body.replayable(),
                }
            });
            let r = self.until_or_reset(deadline, run).await;
            self.merge(&tried);
            if let Some((answer, _active)) = self.answered(r, &body) {
                self.relay_h1(answer, ops, deadline, http).await;
            }
        }
        self.log.bytes_received = body.received;
    }

    /// Waits for `f` within the route deadline, or until the client resets
    /// the stream; None on either (the reset counted, UT flagged).
    ///
    /// Plain combinators, not an `async fn`: that would keep `f` (a
    /// request's attempts, KiBs) twice in the stream's future, once as the
    /// argument and once as the awaited copy.
    fn until_or_reset<'s, T>(
        &'s mut self,
        deadline: Option<Instant>,
        f: impl Future<Output = T> + 's,
    ) -> impl Future<Output = Option<Result<T, ()>>> + 's {
        let or_reset = OrReset {
            f,
            down: &self.down,
        };
        until(deadline, or_reset).map(|r| match r {
            None => Some(Err(())),
            Some(Ok(t)) => Some(Ok(t)),
            Some(Err(())) => None,
        })
    }

    /// The request id for the access log: the one generated here, else the
    /// client's.
    fn log_request_id(
        &mut self,
        details: bool,
        generated: Option<RequestId>,
        h: &impl RequestParts,
    ) {
        if details {
            self.log.request_id = generated.map(|id| id.as_str().to_string()).or_else(|| {
                h.header(b"x-request-id")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            });
        }
    }

    fn merge(&mut self, tried: &attempt::Attempts) {
        self.log.upstream_host = tried.upstream_host;
        self.log.attempts += tried.count;
        if tried.exhausted {
            self.log.flags.insert(ResponseFlags::URX);
        }
    }

    /// The attempts' result as an answer to relay, or the local reply for
    /// their failure (None then).
    fn answered<X>(&mut self, r: Option<Result<Result<X, Failure>, ()>>, body: &Body) -> Option<X> {
        let f = match r {
            // The client reset the stream: nobody to answer.
            None => {
                self.log.flags.insert(ResponseFlags::DC);
                return None;
            }
            Some(Err(())) => {
                self.log.flags.insert(ResponseFlags::UT);
                self.local(504, "upstream request timeout", None);
                return None;
            }
            Some(Ok(Ok(x))) => return Some(x),
            Some(Ok(Err(f))) => f,
        };
        self.log.bytes_received = body.received;
        let (flag, status, text) = match f {
            Failure::Connect => (ResponseFlags::UF, 503, "upstream connect error"),
            Failure::NoEndpoint => (ResponseFlags::UH, 503, "no healthy upstream"),
            Failure::Overflow => (ResponseFlags::UO, 503, "upstream connection pool overflow"),
            Failure::Reset { .. } | Failure::Refused => (
                ResponseFlags::UC,
                503,
                "upstream connection reset before response",
            ),
            Failure::PerTryTimeout => (ResponseFlags::UT, 504, "upstream request timeout"),
            Failure::BadResponse => (ResponseFlags::UPE, 502, "invalid upstream response"),
            Failure::TooLarge
            | Failure::BodyTimeout
            | Failure::BadRequestBody
            | Failure::Downstream => {
                self.body_failure(f);
                return None;
            }
        };
        self.log.flags.insert(flag);
        self.local(status, text, None);
        None
    }

    fn body_failure(&mut self, f: Failure) {
        match f {
            Failure::TooLarge => {
                CoreStats::inc(&self.shard.stats.downstream_rq_too_large);
                self.log.flags.insert(ResponseFlags::RTL);
                self.local(413, "request body too large", None);
            }
            Failure::BodyTimeout => {
                CoreStats::inc(&self.shard.stats.downstream_rq_body_timeout);
                CoreStats::inc(&self.shard.stats.http2_stream_idle_timeout);
                self.log.flags.insert(ResponseFlags::SI);
                self.local(408, "request body timeout", None);
            }
            _ => {
                // The client reset its stream or went away.
                self.log.flags.insert(ResponseFlags::DC);
            }
        }
    }

    /// Tells the client the answer is cut short.
    fn reset(&mut self, code: ErrorCode) {
        CoreStats::inc(&self.shard.stats.http2_tx_reset);
        self.down.reset(code);
        self.finished = true;
    }

    /// Relays an HTTP/2 upstream's answer (and the rest of the request body
    /// alongside it).
    async fn relay_h2(
        &mut self,
        answer: H2Answer,
        body: &mut Body,
        ops: Option<&HeaderOps>,
        deadline: Option<Instant>,
        idle: Duration,
    ) {
        let (head, up_rx, pump) = answer.into_parts();
        self.log.status = head.status;
        let end = up_rx.recv_done();
        if self.down.is_reset() {
            self.log.flags.insert(ResponseFlags::DC);
            return;
        }
        self.down.send_head(end, |enc, out| {
            forward::encode_response(&head, ops, enc, out)
        });
        if end {
            self.finished = true;
            return;
        }
        let shard = self.shard.clone();
        let log = &mut self.log;
        let down = &self.down;
        let relay = async {
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match poll_fn(|cx| up_rx.poll_read(cx, &mut buf)).await {
                    Read::Data(n) => {
                        if let Err(e) = send_down(down, &buf, false, idle).await {
                            if e == Unsent::Stalled {
                                CoreStats::inc(&shard.stats.http2_stream_idle_timeout);
                            }
                            return Err(ErrorCode::CANCEL);
                        }
                        log.bytes_sent += n as u64;
                    }
                    Read::End => break,
                    Read::Reset(_) | Read::Pending => return Err(ErrorCode::INTERNAL_ERROR),
                }
            }
            match up_rx.take_trailers() {
                Some(t) if !down.is_reset() => {
                    down.send_trailers(|enc, out| headers::encode_fields(&t, enc, out));
                    Ok(())
                }
                None => send_down(down, &[], true, idle)
                    .await
                    .map_err(|_| ErrorCode::CANCEL),
                Some(_) => Err(ErrorCode::CANCEL),
            }
        };
        let pump = async {
            if let Some(mut pump) = pump {
                if let Err(f) = pump.run(body, idle).await {
                    if f.side() != retry::Side::Upstream {
                        pump.cancel();
                        return Err(ErrorCode::CANCEL);
                    }
                    // The upstream stopped taking the body; its answer goes on.
                }
            }
            future::pending().await
        };
        let r = until(deadline, future::or(relay, pump)).await;
        match r {
            Some(Ok(())) => self.finished = true,
            Some(Err(code)) => {
                self.log.flags.insert(if code == ErrorCode::CANCEL {
                    ResponseFlags::DC
                } else {
                    ResponseFlags::UC
                });
                self.reset(code);
            }
            None => {
                self.log.flags.insert(ResponseFlags::UT);
                self.reset(ErrorCode::CANCEL);
            }
        }
    }

    /// Relays an HTTP/1 upstream's answer: head translated, body decoded
    /// and sent as DATA frames, chunked trailers as HTTP/2 trailers.
    async fn relay_h1(
        &mut self,
        answer: Boxed<H1Answer>,
        ops: Option<&HeaderOps>,
        deadline: Option<Instant>,
        http: &crate::config::Http,
    ) {
        let idle = http.stream_idle_timeout;
        let H1Answer {
            mut up,
            upbuf,
            head,
            head_len,
            key,
            lease,
            max_uses,
        } = answer.into_inner();
        let Some(mut upbuf) = upbuf else { return };
        self.log.status = head.status;
        if self.down.is_reset() {
            self.log.flags.insert(ResponseFlags::DC);
            upbuf.release();
            return;
        }
        let bodiless = head.framing == BodyFraming::None;
        let view = head.view(upbuf.bytes());
        self.down.send_head(bodiless, |enc, out| {
            headers::encode_h1_response(&view, ops, enc, out)
        });
        upbuf.consume(head_len);
        let shard = self.shard.clone();
        let log = &mut self.log;
        let down = &self.down;
        let relay = async {
            if bodiless {
                return Ok(true);
            }
            let mut dec = BodyDecoder::new(head.framing, ChunkedLimits::default());
            let mut trailers = Vec::new();
            let mut out = Vec::new();
            let mut ended = false;
            let mut upbuf = Some(upbuf);
            let r = loop {
                let mut done = false;
                if let Some(b) = upbuf.as_mut() {
                    match decode_into(&mut dec, b.bytes(), &mut out, false, &mut trailers) {
                        Ok(d) => {
                            b.consume(d.consumed);
                            done = d.done;
                        }
                        Err(_) => break Err(ErrorCode::INTERNAL_ERROR),
                    }
                }
                // The last piece carries END_STREAM itself unless trailers
                // follow (one frame less per answer for the client to read).
                let last = done && trailers.is_empty();
                if !out.is_empty() {
                    let n = out.len();
                    let sent = send_down(down, &out, last, idle).await;
                    out.clear();
                    if let Err(e) = sent {
                        if e == Unsent::Stalled {
                            CoreStats::inc(&shard.stats.http2_stream_idle_timeout);
                        }
                        break Err(ErrorCode::CANCEL);
                    }
                    log.bytes_sent += n as u64;
                    ended = last;
                }
                if done {
                    break Ok(());
                }
                glommio::yield_if_needed().await;
                crate::net::buf::release_if_empty(&mut upbuf);
                match read_into(&mut up, &mut upbuf, MAX_HEAD_BUF).await {
                    Ok(0) if dec.on_eof().is_ok() => break Ok(()),
                    Ok(0) | Err(_) => break Err(ErrorCode::INTERNAL_ERROR),
                    Ok(_) => {}
                }
            };
            let leftover = upbuf.as_ref().is_some_and(|b| !b.is_empty());
            if let Some(b) = upbuf {
                b.release();
            }
            r?;
            if !ended {
                if down.is_reset() {
                    return Err(ErrorCode::CANCEL);
                }
                if trailers.is_empty() {
                    down.send_data(&[], true);
                } else {
                    let t = headers::trailers_from_h1(&trailers);
                    down.send_trailers(|enc, out| headers::encode_fields(&t, enc, out));
                }
            }
            Ok(!leftover && !matches!(dec, BodyDecoder::CloseDelimited))
        };
        match until(deadline, relay).await {
            Some(Ok(clean)) => {
                self.finished = true;
                let reusable = clean && head.keep_alive && (max_uses == 0 || lease.uses < max_uses);
                if reusable {
                    let mut dropped = Vec::new();
                    shard.upstreams.pool.borrow_mut().put(
                        key,
                        up,
                        lease,
                        http.pool_max_idle_per_endpoint,
                        http.pool_idle_timeout,
                        &mut dropped,
                    );
                }
            }
            Some(Err(code)) => {
                self.log.flags.insert(if code == ErrorCode::CANCEL {
                    ResponseFlags::DC
                } else {
                    ResponseFlags::UC
                });
                self.reset(code);
            }
            None => {
                self.log.flags.insert(ResponseFlags::UT);
                self.reset(ErrorCode::CANCEL);
            }
        }
    }
}

/// Methods whose requests carry a body by convention: an empty one is sent
/// with `content-length: 0` to an HTTP/1 upstream.
fn body_expected(m: &[u8]) -> bool {
    matches!(m, b"POST" | b"PUT" | b"PATCH")
}

/// The `[http2]` config as the codec's settings, both sides: what
/// downstream connections advertise and enforce, and what upstream ones
/// advertise (`max_concurrent_streams` concerns only the former).
pub(super) fn http2_settings(config: &crate::config::Config) -> Settings {
    let s = &config.http2;
    Settings {
        max_concurrent_streams: s.max_concurrent_streams,
        initial_stream_window: s.initial_stream_window_size,
        initial_connection_window: s.initial_connection_window_size,
        max_header_list_size: s.max_header_list_size,
        ..Settings::default()
    }
}

/// One attempt on an HTTP/2 upstream: a stream on an open connection with
/// room, or on one being made, or on a new one. A connection that refused
/// a stream is retired at once, and one that went away or broke takes no
/// stream anyway, so "fresh" (the attempt loop's once-more-elsewhere) needs
/// nothing more here: the next attempt cannot land on it, and other open
/// connections are fine.
pub(super) async fn try_h2(
    shard: &Rc<Shard>,
    conn: &UpstreamRef<'_>,
    req: &UpRequest,
    body: &mut impl BodySource,
    settings: Settings,
    reused: &Cell<bool>,
    http: &crate::config::Http,
) -> Result<H2Answer, Failure> {
    let pool = &shard.upstreams.h2;
    let pooled = pool.get(conn.key, conn.max_uses(), http.pool_idle_timeout);
    reused.set(pooled.is_some());
    // A connection on its way to this endpoint: wait for it.
    let pooled = match pooled {
        None => match pool.connecting(conn.key) {
            Some(making) => making.wait().await.filter(|c| c.available()),
            None => None,
        },
        p => p,
    };
    let c = match pooled {
        Some(c) => {
            CoreStats::inc(&shard.stats.upstream_cx_reused);
            c
        }
        None => {
            let making = pool.making(conn.key);
            let (stream, lease) = attempt::connect(shard, conn).await?;
            let c = client::connect(stream, lease, settings);
            CoreStats::inc(&shard.stats.upstream_cx_http2_total);
            making.done(&c);
            c
        }
    };
    let kept = body.kept();
    let no_body = body.complete() && kept.iter().all(Bytes::is_empty) && body.trailers().is_none();
    let up = match c.open(no_body, req.is_head(), |enc, out| req.encode(enc, out)) {
        Ok(s) => s,
        Err(why) => {
            if why == NotOpened::Closing {
                c.retire();
            }
            return Err(Failure::Refused);
        }
    };
    // The body goes while the answer is awaited; an answer may come first
    // (an early reply, or a bidirectional stream), and the pump resumes
    // alongside the answer's relay.
    let mut pump = Pump::new(up.clone(), kept, no_body);
    let idle = http.stream_idle_timeout;
    let response = || poll_fn(|cx| up.poll_head(cx));
    let sending = async { Err(pump.run(body, idle).await) };
    let head = match future::or(sending, async { Ok(response().await) }).await {
        Ok(r) => r,
        Err(Ok(())) => response().await,
        // The upstream stopped taking the body: it may have answered (an
        // early reply, then RST_STREAM NO_ERROR), so look first.
        Err(Err(Failure::Reset { .. } | Failure::PerTryTimeout)) => {
            pump.done = true;
            response().await
        }
        Err(Err(f)) => return Err(f),
    };
    let head = head.map_err(|r| {
        if r.remote && r.code == ErrorCode::REFUSED_STREAM {
            // It refused a stream: no new ones on it. (A connection that
            // failed or is going away takes none anyway; a stream error
            // leaves the connection as it was, RFC 9113 §5.4.2.)
            c.retire();
        }
        h2_failure(r)
    })?;
    Ok(H2Answer {
        head,
        body: up,
        pump: (!pump.done).then_some(pump),
    })
}

/// The failure an HTTP/2 stream's early end stands for: a refused or
/// unprocessed stream (REFUSED_STREAM, or above a GOAWAY's last stream id)
/// is safe to send again anywhere; one we reset because the upstream broke
/// the protocol (a malformed answer, a stream or connection error) is a bad
/// response (502 UPE, as Envoy answers an upstream protocol error); any
/// other end is a reset.
fn h2_failure(r: Reset) -> Failure {
    if r.unprocessed {
        Failure::Refused
    } else if !r.remote && r.code != ErrorCode::CANCEL {
        Failure::BadResponse
    } else {
        Failure::Reset { started: r.remote }
    }
}

/// One attempt on an HTTP/1 upstream for an HTTP/2 request: the head and
/// the kept body on a pooled or new connection, then the rest of the body,
/// then the response head.
#[allow(clippy::too_many_arguments)]
async fn try_h1(
    shard: &Rc<Shard>,
    conn: &UpstreamRef<'_>,
    fresh: bool,
    head: &[u8],
    framing: BodyFraming,
    body: &mut Body,
    method: Method,
    reused: &Cell<bool>,
    http: &crate::config::Http,
) -> Result<Boxed<H1Answer>, Failure> {
    let pooled = if fresh {
        None
    } else {
        let mut dropped = Vec::new();
        let p =
            shard
                .upstreams
                .pool
                .borrow_mut()
                .take(conn.key, http.pool_idle_timeout, &mut dropped);
        p
    };
    reused.set(pooled.is_some());
    let (mut up, mut lease) = match pooled {
        Some(p) => {
            CoreStats::inc(&shard.stats.upstream_cx_reused);
            p
        }
        None => attempt::connect(shard, conn).await?,
    };
    lease.uses += 1;
    let chunked = framing == BodyFraming::Chunked;
    let mut out = Vec::with_capacity(head.len() + 256);
    out.extend_from_slice(head);
    let encode = |data: &[u8], out: &mut Vec<u8>| {
        if chunked {
            encode_chunk(data, out);
        } else {
            out.extend_from_slice(data);
        }
    };
    let pieces: Vec<Bytes> = if body.replayable() {
        body.buffered.clone()
    } else {
        body.streamed = true;
        std::mem::take(&mut body.buffered)
    };
    for p in &pieces {
        encode(p, &mut out);
    }
    let finish = |body: &Body, out: &mut Vec<u8>| {
        if chunked {
            let mut t = Vec::new();
            if let Some(h) = &body.trailers {
                headers::write_h1_trailers(h, &mut t);
            }
            encode_last_chunk(&t, out);
        }
    };
    if body.complete {
        finish(body, &mut out);
    }
    let sent = |_| Failure::Reset { started: false };
    // The requests of one pass leave together (crate::pass).
    shard.pass.after_runnable().await;
    up.write_all(&out).await.map_err(sent)?;
    while !body.complete {
        out.clear();
        if let Some(d) = body.next().await? {
            body.streamed = true;
            encode(&d, &mut out);
        }
        if body.complete {
            finish(body, &mut out);
        }
        up.write_all(&out).await.map_err(sent)?;
    }
    let mut upbuf: Option<Buf> = None;
    let mut head = ResponseHead::default();
    // Interim answers are not passed on to an HTTP/2 client.
    let len = read_response_head(&mut up, &mut upbuf, method, &mut head, async |_, _| {}).await?;
    let (key, max_uses) = (conn.key, conn.max_uses());
    Ok(Boxed::new_in_place(|| H1Answer {
        up,
        upbuf,
        head,
        head_len: len,
        key,
        lease,
        max_uses,
    }))
}

#[cfg(test)]
mod tests {
    use super::preface_verdict;
    use crate::h2::PREFACE;

    #[test]
    fn the_preface_must_end_with_settings() {
        let settings = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0];
        let with = |f: &[u8]| [PREFACE, f].concat();
        assert_eq!(preface_verdict(&with(&settings)), Some(true));
        assert_eq!(preface_verdict(&with(&ping)), Some(false));
        // Cut anywhere before the frame type: more is needed.
        let whole = with(&settings);
        for cut in 0..PREFACE.len() + 4 {
            let want = (cut == PREFACE.len() + 4).then_some(true);
            assert_eq!(preface_verdict(&whole[..cut]), want, "cut at {cut}");
        }
        assert_eq!(preface_verdict(b"PRI * HTTP/2.0\r\n\r\nXX"), Some(false));
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// Each stream's future is allocated and copied (its whole size) when
    /// the stream is accepted: a per-request cost that grows with every
    /// local held across an await (11,104 B once, 5,800 now). The bound
    /// catches growth; the sizes printed (`--nocapture`) say where it is.
    #[test]
    fn h2_stream_sizes() {
        fn size5<A, B, C, D, E, F: Future>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let stream_size = size5(stream);
        assert!(stream_size <= 6 * 1024, "stream future {stream_size} B");
        fn handle_size<'a, F: Future>(_: impl FnOnce(&'a mut H2Stream, RequestHead) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        eprintln!("stream future: {stream_size} B");
        eprintln!("H2Stream: {} B", std::mem::size_of::<H2Stream>());
        eprintln!("RequestLog: {} B", std::mem::size_of::<RequestLog>());
        eprintln!("handle future: {} B", handle_size(H2Stream::handle));
        eprintln!("Body: {} B", std::mem::size_of::<Body>());
        eprintln!("RequestHead: {} B", std::mem::size_of::<RequestHead>());
        fn s9<'a, F: Future>(
            _: impl FnOnce(
                &'a Rc<Shard>,
                &'a UpstreamRef<'a>,
                bool,
                &'a [u8],
                BodyFraming,
                &'a mut Body,
                Method,
                &'a Cell<bool>,
                &'a crate::config::Http,
            ) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        eprintln!("try_h1: {} B", s9(try_h1));
        fn s7<'a, F: Future>(
            _: impl FnOnce(
                &'a Rc<Shard>,
                &'a UpstreamRef<'a>,
                &'a UpRequest,
                &'a mut Body,
                Settings,
                &'a Cell<bool>,
                &'a crate::config::Http,
            ) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        eprintln!("try_h2: {} B", s7(try_h2));
        fn r1<'a, F: Future>(
            _: impl FnOnce(
                &'a mut H2Stream,
                Boxed<H1Answer>,
                Option<&'a HeaderOps>,
                Option<Instant>,
                &'a crate::config::Http,
            ) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        eprintln!("relay_h1: {} B", r1(H2Stream::relay_h1));
        fn r2<'a, F: Future>(
            _: impl FnOnce(
                &'a mut H2Stream,
                H2Answer,
                &'a mut Body,
                Option<&'a HeaderOps>,
                Option<Instant>,
                Duration,
            ) -> F,
        ) -> usize {
            std::mem::size_of::<F>()
        }
        eprintln!("relay_h2: {} B", r2(H2Stream::relay_h2));
        eprintln!("H1Answer: {} B", std::mem::size_of::<H1Answer>());
        eprintln!("H2Answer: {} B", std::mem::size_of::<H2Answer>());
    }
}
