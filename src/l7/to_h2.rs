//! HTTP/1 clients to HTTP/2 upstreams (a cluster with `http2 = true`).
//!
//! The HTTP/1 path plans and rewrites the request as always; the head it
//! wrote is restated as HTTP/2 fields (`h2::forward::UpRequest::from_h1`: RFC
//! 9113 §8.2, Host as `:authority`, connection-specific fields gone), the
//! body goes as DATA frames (decoded: the client's chunking is not the
//! upstream's business; its trailers become HTTP/2 trailers), and the answer
//! comes back as HTTP/1.1: its length kept, else chunked (trailers in the
//! last chunk), or close-delimited for an HTTP/1.0 client. Attempts, retries
//! and the multiplexed connections are those of HTTP/2 clients
//! (`l7::h2::try_h2`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_lite::future;
use futures_lite::io::AsyncWriteExt;

use crate::config::Config;
use crate::deadline::until;
use crate::h2::client::UpStream;
use crate::h2::forward::UpRequest;
use crate::h2::headers;
use crate::h2::link::{Fields, Read};
use crate::http::body::{encode_chunk, encode_last_chunk};
use crate::http::head::{BodyFraming, Method, Version};
use crate::http::rewrite::HeaderOps;
use crate::http::route::RetryPolicy;
use crate::net::Stream;
use crate::upstream::cluster::ActiveRequest;
use crate::upstream::tls::AppProtocol;

use super::attempt::{self, Tried};
use super::h2::{http2_settings, try_h2, BodySource, H2Answer};
use super::plan::Target;
use super::retry::{self, Failure};
use super::{decode_into, BodyWait, Conn, Next, ReqBody, ResponseFlags};

/// An HTTP/1 client's request body, decoded, as an HTTP/2 upstream takes it.
struct H1Source<'c, 's> {
    conn: &'c mut Conn<'s>,
    body: &'c mut ReqBody,
}

impl BodySource for H1Source<'_, '_> {
    fn replayable(&self) -> bool {
        !self.body.streamed
    }
    fn complete(&self) -> bool {
        self.body.complete
    }
    fn kept(&self) -> Vec<Bytes> {
        if self.body.streamed {
            Vec::new()
        } else {
            vec![Bytes::copy_from_slice(&self.body.buffered)]
        }
    }
    fn trailers(&self) -> Option<Fields> {
        (self.body.complete && !self.body.trailers.is_empty())
            .then(|| headers::trailers_from_h1(&self.body.trailers))
    }
    async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        let wait = BodyWait::of(&self.conn.snapshot.config.http);
        let mut chunk = Vec::new();
        loop {
            if self.body.complete {
                return Ok(None);
            }
            if let Some(b) = self.conn.inbuf.as_mut() {
                let body = &mut *self.body;
                let d = decode_into(
                    &mut body.dec,
                    b.bytes(),
                    &mut chunk,
                    false,
                    &mut body.trailers,
                )
                .map_err(|_| Failure::BadRequestBody)?;
                b.consume(d.consumed);
                body.count(d.data)?;
                body.complete = d.done;
                self.conn.unread_body = !d.done;
                if !chunk.is_empty() {
                    // Kept for a retry while within the buffer.
                    let limit = self.conn.snapshot.config.http.retry_buffer_limit;
                    if !body.streamed {
                        if body.buffered.len() + chunk.len() <= limit {
                            body.buffered.extend_from_slice(&chunk);
                        } else {
                            body.streamed = true;
                            body.buffered = Vec::new();
                        }
                    }
                    return Ok(Some(Bytes::from(chunk)));
                }
                if d.done {
                    return Ok(None);
                }
            }
            glommio::yield_if_needed().await;
            self.conn.read_body_bytes(wait).await?;
        }
    }
}

impl Conn<'_> {
    /// The attempts of one HTTP/1 request toward an HTTP/2 cluster.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn attempts_h2(
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
    ) -> Result<(H2Answer, Option<ActiveRequest>), Failure> {
        let Some(up_req) = UpRequest::from_h1(up_head) else {
            return Err(Failure::BadRequestBody);
        };
        let req = attempt::Request {
            config,
            target,
            retry,
            per_try,
            connect_timeout,
            idempotent: method.is_idempotent(),
            hash,
            inbound: self.ctx.inbound_dst.is_some(),
            protocol: AppProtocol::Http2,
        };
        let settings = http2_settings(config);
        let mut log = attempt::Attempts::default();
        let shard = self.shard;
        let mut src = H1Source { conn: self, body };
        let r = attempt::run(shard, &req, &mut log, async |c, _fresh, deadline| {
            let reused = Cell::new(false);
            let result = until(
                deadline,
                try_h2(shard, c, &up_req, &mut src, settings, &reused, &config.http),
            )
            .await
            .unwrap_or(Err(Failure::PerTryTimeout));
            Tried {
                result,
                reused: reused.get(),
                replayable: src.replayable(),
            }
        })
        .await;
        self.log.upstream_host = log.upstream_host.or(self.log.upstream_host);
        self.log.attempts += log.count;
        if log.exhausted {
            self.log.flags.insert(ResponseFlags::URX);
        }
        r
    }

    /// Writes an HTTP/2 upstream's answer to the HTTP/1 client (streaming
    /// the rest of the request body alongside, if it is still coming).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn respond_h2(
        &mut self,
        answer: H2Answer,
        body: &mut ReqBody,
        req_keep_alive: bool,
        version: Version,
        method: Method,
        ops: Option<&HeaderOps>,
        deadline: Option<Instant>,
    ) -> Next {
        let (head, up_rx, pump) = answer.into_parts();
        let status = head.status;
        self.log.status = status;
        let dropped = |n: &[u8]| ops.is_some_and(|o| o.drops(n));
        let length = head
            .get(b"content-length")
            .filter(|_| !dropped(b"content-length"))
            .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok());
        let framing = if method == Method::Head || matches!(status, 100..=199 | 204 | 304) {
            BodyFraming::None
        } else if let Some(n) = length {
            BodyFraming::Length(n)
        } else if version == Version::Http10 {
            BodyFraming::CloseDelimited
        } else {
            BodyFraming::Chunked
        };
        let down_keep =
            req_keep_alive && framing != BodyFraming::CloseDelimited && !self.shard.drain_close();
        // `ops` carries the x-ratelimit-* fields already (`with_rate_headers`).
        let mut out = Vec::new();
        headers::write_h1_response(&head, ops, framing, down_keep, &mut out);
        let Ok(mut w) = self.down.writer() else {
            return Next::Close;
        };
        let idle = self.snapshot.config.http.stream_idle_timeout;
        let chunked = framing == BodyFraming::Chunked;
        let mut sent = 0;
        let relay = async {
            w.write_all(&out).await.map_err(|_| ResponseFlags::DC)?;
            if framing == BodyFraming::None {
                return Ok(());
            }
            relay_body(&mut w, &up_rx, chunked, &mut sent).await
        };
        let mut src = H1Source { conn: self, body };
        let pump = async {
            if let Some(mut pump) = pump {
                if let Err(f) = pump.run(&mut src, idle).await {
                    if f.side() != retry::Side::Upstream {
                        pump.cancel();
                        return Err(ResponseFlags::DC);
                    }
                    // The upstream stopped taking the body; its answer goes on.
                }
            }
            future::pending().await
        };
        let r = until(deadline, future::or(relay, pump)).await;
        self.log.bytes_sent += sent;
        match r {
            Some(Ok(())) => {}
            Some(Err(flag)) => {
                self.log.flags.insert(flag);
                self.reset_down();
                return Next::Close;
            }
            None => {
                self.log.flags.insert(ResponseFlags::UT);
                self.reset_down();
                return Next::Close;
            }
        }
        if framing == BodyFraming::CloseDelimited {
            self.down.shutdown_write().await;
            return Next::Close;
        }
        if down_keep && body.complete {
            Next::Continue
        } else {
            Next::Close
        }
    }
}

/// The answer's DATA frames to an HTTP/1 client: chunked (trailers in the
/// last chunk) or as they are (a known length).
async fn relay_body(
    w: &mut Stream,
    up_rx: &UpStream,
    chunked: bool,
    sent: &mut u64,
) -> Result<(), ResponseFlags> {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    loop {
        buf.clear();
        let n = match std::future::poll_fn(|cx| up_rx.poll_read(cx, &mut buf)).await {
            Read::Data(n) => n,
            Read::End => break,
            Read::Reset(_) | Read::Pending => return Err(ResponseFlags::UC),
        };
        out.clear();
        let piece: &[u8] = if chunked {
            encode_chunk(&buf, &mut out);
            &out
        } else {
            &buf
        };
        w.write_all(piece).await.map_err(|_| ResponseFlags::DC)?;
        // Body bytes, not chunk framing (Envoy's %BYTES_SENT%).
        *sent += n as u64;
    }
    if chunked {
        let mut t = Vec::new();
        if let Some(fields) = up_rx.take_trailers() {
            headers::write_h1_trailers(&fields, &mut t);
        }
        out.clear();
        encode_last_chunk(&t, &mut out);
        w.write_all(&out).await.map_err(|_| ResponseFlags::DC)?;
    }
    Ok(())
}
