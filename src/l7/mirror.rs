//! Request mirroring (Envoy's `request_mirror_policies`, Istio's `mirror`): a
//! copy of a request goes to another cluster, its answer is read and dropped.
//!
//! ```text
//! handle: plan ─ should_mirror? ─ Job (cluster, shadow head, hash, timeout)
//!         body buffered whole (replayable)? ── no: not mirrored (streamed body)
//!           └ yes: spawn ─► detached task on this core ─────────────┐
//!         attempts ─ respond (never waits for the mirror)           │
//!                                                                   ▼
//!   breakers (max_requests, max_connections) ─ pick ─ connect (fresh) ─ head + body
//!     ─ response head ─ body read to its end and dropped ─ close
//!     all within the route timeout (15 s without one): else rq_mirror_failed
//! ```
//!
//! Choices, weighed against Envoy:
//! - Only a request whose body was buffered whole is mirrored. A body larger
//!   than `retry_buffer_limit` streams to the primary as it arrives and is not
//!   kept, so there is nothing to send a copy of; Envoy tees a streamed body
//!   into its shadow stream instead. Such requests are skipped (debug log).
//! - Each copy opens a fresh connection and closes it after the response
//!   (Envoy uses the mirror cluster's connection pool). Simple and isolated
//!   from the primary's pooled connections; the cost is a handshake per copy.
//! - The copy counts against the mirror cluster's `max_requests` and
//!   `max_connections` (Envoy's shadow goes through the cluster like any
//!   request), so a slow shadow cannot pile up unbounded tasks: over the
//!   breaker the copy is dropped (counted as failed). Its results feed the
//!   mirror cluster's outlier detection, not the primary's.
//! - Nothing the copy meets (no endpoint, refused, reset, timeout, bad answer)
//!   reaches the client or its log line: only `rq_mirrored` /
//!   `rq_mirror_failed` and a debug line.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::net::Stream;
use crate::upstream::tls;
use tracing::debug;

use crate::config::Snapshot;
use crate::http::body::{BodyDecoder, ChunkedLimits};
use crate::http::head::{parse_response_into, Limits, Method, ResponseHead};
use crate::shard::Shard;
use crate::stats::CoreStats;
use crate::upstream::breaker::Resource;
use crate::upstream::outlier::Result_ as OutlierResult;

use super::retry::Failure;
use super::{decode_into, MAX_HEAD_BUF};
use crate::deadline::until;
use crate::net::buf::{read_into, release_if_empty, write_all_pair, Buf};

/// How long a copy may take when its route has no timeout (Envoy's default
/// route timeout): a mirror must not linger forever.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

/// A copy to send, decided while the client's head was at hand.
#[derive(Debug)]
pub(super) struct Job {
    /// The mirror cluster, by index in the snapshot's `clusters`.
    pub cluster: usize,
    /// The upstream head with its Host shadowed (`rewrite::shadow_request_head`).
    pub head: Vec<u8>,
    /// The request's hash under the mirror cluster's `hash_policy`.
    pub hash: Option<u64>,
    pub method: Method,
    /// The whole copy, connect to last response byte.
    pub timeout: Duration,
}

/// Sends `job` with `body` (the request body as buffered for the primary,
/// already framed as its head says) from a detached task on this core.
/// Returns at once; the task counts `rq_mirror_failed` if the copy gets no
/// complete answer.
pub(super) fn spawn(shard: &Rc<Shard>, snapshot: Arc<Snapshot>, job: Job, body: Vec<u8>) {
    CoreStats::inc(&shard.stats.rq_mirrored);
    let shard = shard.clone();
    glommio::spawn_local(async move {
        let deadline = Instant::now() + job.timeout;
        let result = until(Some(deadline), send(&shard, &snapshot, &job, &body)).await;
        let cluster = snapshot
            .config
            .clusters
            .get(job.cluster)
            .map_or("?", |c| c.name.as_str());
        match result {
            Some(Ok(status)) => debug!(cluster, status, "mirrored request answered"),
            Some(Err(failure)) => {
                CoreStats::inc(&shard.stats.rq_mirror_failed);
                debug!(cluster, ?failure, "mirrored request failed");
            }
            None => {
                CoreStats::inc(&shard.stats.rq_mirror_failed);
                debug!(cluster, timeout = ?job.timeout, "mirrored request timed out");
            }
        }
    })
    .detach();
}

/// One copy, start to end; the response's status.
async fn send(shard: &Shard, snapshot: &Snapshot, job: &Job, body: &[u8]) -> Result<u16, Failure> {
    let cluster = snapshot
        .config
        .clusters
        .get(job.cluster)
        .ok_or(Failure::NoEndpoint)?;
    let limits = cluster.circuit_breakers.per_core(shard.cores);
    let state = shard.upstreams.cluster(cluster);
    let _request = state
        .breakers
        .try_acquire(Resource::Requests, &limits)
        .ok_or(Failure::Overflow)?;
    let (state, picked) = shard
        .upstreams
        .pick(cluster, job.hash, &[], shard.next_u64())
        .ok_or(Failure::NoEndpoint)?;
    let _active = state.start_request(&picked);
    let _connection = state
        .breakers
        .try_acquire(Resource::Connections, &limits)
        .ok_or(Failure::Overflow)?;
    let mut up = match shard
        .upstreams
        .connect(
            &shard.stats,
            picked.addr,
            None,
            cluster.connect_timeout,
            true,
        )
        .await
    {
        Ok(s) => Stream::from(s),
        Err(_) => {
            state.record(cluster, &picked, OutlierResult::LocalOrigin);
            return Err(Failure::Connect);
        }
    };
    // A TLS cluster gets its copy over TLS too, like the original.
    if let Some(t) = &cluster.tls {
        let secured = match shard.upstreams.tls.for_cluster(
            &cluster.name,
            t,
            &shard.tls,
            tls::AppProtocol::Http1,
        ) {
            Ok(o) => {
                let Stream::Plain(tcp) = up else {
                    return Err(Failure::Connect);
                };
                let timeout = snapshot.config.tls.handshake_timeout;
                let host = Some(cluster.name.as_str());
                let r = tls::originate(tcp, &o, tls::is_mesh(t), host, picked.addr, timeout).await;
                shard.upstream_handshake(r)
            }
            Err(e) => {
                shard.count_tls("upstream", "failure", e.reason());
                None
            }
        };
        up = match secured {
            Some(s) => s,
            None => {
                state.record(cluster, &picked, OutlierResult::LocalOrigin);
                return Err(Failure::Connect);
            }
        };
    }
    let result = exchange(&mut up, job, body).await;
    match result {
        Ok(status) => {
            state.record(cluster, &picked, OutlierResult::Status(status));
        }
        Err(Failure::Reset { .. }) => {
            state.record(cluster, &picked, OutlierResult::LocalOrigin);
        }
        Err(_) => {}
    }
    result
}

/// Writes the copy and reads its response to the end (dropping it).
async fn exchange(up: &mut Stream, job: &Job, body: &[u8]) -> Result<u16, Failure> {
    write_all_pair(up, &job.head, body)
        .await
        .map_err(|_| Failure::Reset { started: false })?;
    let mut slot: Option<Buf> = None;
    let result = read_response(up, &mut slot, job.method).await;
    if let Some(b) = slot {
        b.release();
    }
    result
}

async fn read_response(
    up: &mut Stream,
    slot: &mut Option<Buf>,
    method: Method,
) -> Result<u16, Failure> {
    let limits = Limits::default();
    let mut head = ResponseHead::default();
    // The final head (interim 1xx ones are skipped).
    loop {
        if let Some(b) = slot.as_mut().filter(|b| !b.is_empty()) {
            match parse_response_into(b.bytes(), &limits, method, &mut head) {
                Ok(Some(len)) => {
                    b.consume(len);
                    if (100..200).contains(&head.status) && head.status != 101 {
                        continue;
                    }
                    break;
                }
                Ok(None) => {}
                Err(_) => return Err(Failure::BadResponse),
            }
        }
        let started = slot.as_ref().is_some_and(|b| !b.is_empty());
        match read_into(up, slot, MAX_HEAD_BUF).await {
            Ok(n) if n > 0 => {}
            Ok(_) | Err(_) => return Err(Failure::Reset { started }),
        }
    }
    let status = head.status;
    if status == 101 {
        // Never asked for (upgrades are not mirrored); nothing more to read.
        return Ok(status);
    }
    let mut dec = BodyDecoder::new(head.framing, ChunkedLimits::default());
    let (mut sink, mut trailers) = (Vec::new(), Vec::new());
    loop {
        let input = slot.as_ref().map_or(&[][..], Buf::bytes);
        let d = decode_into(&mut dec, input, &mut sink, false, &mut trailers)
            .map_err(|_| Failure::BadResponse)?;
        if let Some(b) = slot.as_mut() {
            b.consume(d.consumed);
        }
        sink.clear();
        if d.done {
            return Ok(status);
        }
        release_if_empty(slot);
        glommio::yield_if_needed().await;
        match read_into(up, slot, MAX_HEAD_BUF).await {
            Ok(n) if n > 0 => {}
            // Close-delimited bodies end here.
            Ok(_) if dec.on_eof().is_ok() => return Ok(status),
            Ok(_) | Err(_) => return Err(Failure::Reset { started: true }),
        }
    }
}
