//! The attempt loop every HTTP version shares: where each attempt goes
//! (endpoint pick, avoiding hosts already tried), under which limits (the
//! cluster's circuit breakers), how it is secured (TLS origination), what
//! outlier detection learns from it, and whether another one follows
//! ([`retry::decide`]). What an attempt does on the wire is the caller's: an
//! HTTP/1 exchange on a pooled or new connection, or a stream on a
//! multiplexed HTTP/2 connection, passed in as an async closure.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::config::{Cluster, Config};
use crate::http::route::RetryPolicy;
use crate::net::Stream;
use crate::shard::Shard;
use crate::stats::CoreStats;
use crate::upstream::breaker::{BreakerConfig, Permit, Resource};
use crate::upstream::cluster::{ActiveRequest, ClusterState};
use crate::upstream::outlier::Result_ as OutlierResult;
use crate::upstream::pool;
use crate::upstream::tls::{self, AppProtocol, Origination};

use super::plan::Target;
use super::retry::{self, Attempt, Failure, Outcome, Verdict};

/// One unit of `resource` of `cluster`'s breakers on this core, or
/// `Overflow` (counted; answered with 503 UO).
pub(super) fn acquire(
    state: &ClusterState,
    cluster: &Cluster,
    resource: Resource,
    limits: &BreakerConfig,
) -> Result<Permit, Failure> {
    state.breakers.try_acquire(resource, limits).ok_or_else(|| {
        debug!(cluster = %cluster.name, ?resource, "circuit breaker open");
        Failure::Overflow
    })
}

/// Where one attempt connects, and under which cluster's limits.
pub(super) struct UpstreamRef<'c> {
    pub key: pool::Key,
    /// The cluster (None: passthrough to an address).
    pub cluster: Option<&'c Cluster>,
    /// This core's state of it.
    pub state: Option<&'c Rc<ClusterState>>,
    /// This core's share of the cluster's circuit breakers.
    pub limits: Option<&'c BreakerConfig>,
    pub connect_timeout: Duration,
    /// How to secure a new connection (TLS clusters, mesh destinations).
    pub tls: Option<&'c Secure<'c>>,
    pub handshake_timeout: Duration,
}

impl UpstreamRef<'_> {
    /// max_requests_per_connection in force (0: unlimited).
    pub fn max_uses(&self) -> u32 {
        self.limits.map_or(0, |l| l.max_requests_per_connection)
    }
}

/// TLS origination for one request's attempts: the settings, whether the
/// peer is a mesh sidecar (Istio's SNI then), and the name it goes by (the
/// cluster's; None: the endpoint's address).
pub(super) struct Secure<'c> {
    pub origination: Rc<Origination>,
    pub mesh: bool,
    pub host: Option<&'c str>,
}

/// A new connection for `conn`, within the cluster's breakers:
/// `max_connections` (held for the connection's life, pooled time
/// included) and `max_pending_requests` (held while connecting).
pub(super) async fn connect(
    shard: &Shard,
    conn: &UpstreamRef<'_>,
) -> Result<(Stream, pool::Lease), Failure> {
    let (ep, source) = (conn.key.endpoint, conn.key.source);
    let (permit, _pending) = match (conn.cluster, conn.state, conn.limits) {
        (Some(c), Some(st), Some(l)) => (
            Some(acquire(st, c, Resource::Connections, l)?),
            Some(acquire(st, c, Resource::PendingRequests, l)?),
        ),
        _ => (None, None),
    };
    let stream = shard
        .upstreams
        .connect(
            &shard.stats,
            ep,
            source,
            conn.connect_timeout,
            conn.cluster.is_some(),
        )
        .await
        .map_err(|_| Failure::Connect)?;
    let stream = match conn.tls {
        None => Stream::from(stream),
        Some(sec) => {
            let r = Box::pin(tls::originate(
                stream,
                &sec.origination,
                sec.mesh,
                sec.host,
                ep,
                conn.handshake_timeout,
            ))
            .await;
            match shard.upstream_handshake(r) {
                Some(s) => s,
                None => return Err(Failure::Connect),
            }
        }
    };
    Ok((stream, pool::Lease { permit, uses: 0 }))
}

/// What the attempt loop needs to know about a request.
pub(super) struct Request<'a> {
    pub config: &'a Config,
    pub target: Target,
    pub retry: Option<&'a RetryPolicy>,
    pub per_try: Option<Duration>,
    pub connect_timeout: Duration,
    pub idempotent: bool,
    /// The hash policy's key, for ring hash and Maglev.
    pub hash: Option<u64>,
    /// The request came in on the workload's inbound side: a passthrough
    /// goes to the local app, never through mesh TLS.
    pub inbound: bool,
    /// What the upstream connection carries (picks the mesh ALPN).
    pub protocol: AppProtocol,
}

/// An answer as the attempt loop sees it.
pub(super) trait Answer {
    /// What decides a retry: the status, and a gRPC status if the answer
    /// carries one in its head (a trailers-only response).
    fn outcome(&self) -> Outcome;
    /// Drops an answer that is not passed on (a retry follows), with
    /// whatever holds it (buffers, the connection).
    fn discard(self);
}

/// What one attempt came to.
pub(super) struct Tried<X> {
    pub result: Result<X, Failure>,
    /// It went over a connection that had carried requests before.
    pub reused: bool,
    /// The request can still be sent again whole (its body is buffered).
    pub replayable: bool,
}

/// What the attempts leave for the access log.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    pub upstream_host: Option<SocketAddr>,
    pub count: u32,
    /// The policy wanted another retry and its budget was spent (URX).
    pub exhausted: bool,
}

/// Runs attempts until one is delivered or the request gives up. `once`
/// makes one attempt on the connection described by its first argument;
/// its second says a fresh connection is required (no pooled one), its
/// third is the per-try deadline it must keep. On success the request stays
/// active on its endpoint (least request) while the [`ActiveRequest`] lives.
pub(super) async fn run<X: Answer>(
    shard: &Rc<Shard>,
    req: &Request<'_>,
    log: &mut Attempts,
    mut once: impl AsyncFnMut(&UpstreamRef<'_>, bool, Option<Instant>) -> Tried<X>,
) -> Result<(X, Option<ActiveRequest>), Failure> {
    let config = req.config;
    let cluster = match req.target {
        Target::Cluster(i) => Some(config.clusters.get(i).ok_or(Failure::NoEndpoint)?),
        Target::Addr(..) => None,
    };
    let limits = cluster.map(|c| c.circuit_breakers.per_core(shard.cores));
    // This core's state of the cluster, brought up to date once per request.
    let cstate = cluster.map(|c| shard.upstreams.cluster(c));
    // max_requests: this request holds one unit until it is answered.
    let _request_permit = match (cluster, &cstate, &limits) {
        (Some(c), Some(st), Some(l)) => Some(acquire(st, c, Resource::Requests, l)?),
        _ => None,
    };
    let retry = req.retry;
    let mut retry_permit = None;
    let mut state = retry::State::default();
    let mut force_fresh = false;
    // Endpoints of failed attempts: a retry goes elsewhere when it can
    // (Envoy's previous_hosts predicate, on unless the policy turns it off).
    let mut tried: Vec<SocketAddr> = Vec::new();
    let avoid_tried = retry.is_none_or(|p| p.previous_hosts);
    let secure = secure_for(shard, req, cluster)?;
    let tls_profile = secure.as_ref().map_or(0, |s| s.origination.profile);
    loop {
        let avoid: &[SocketAddr] = if avoid_tried { &tried } else { &[] };
        let (ep, source, upstream) = match (req.target, cluster, &cstate) {
            (Target::Addr(a, src), ..) => (a, src, None),
            (Target::Cluster(_), Some(c), Some(st)) => {
                let picked = shard
                    .upstreams
                    .pick_from(st, c, req.hash, avoid, shard.next_u64())
                    .ok_or(Failure::NoEndpoint)?;
                let active = st.start_request(&picked);
                (picked.addr, None, Some((st, picked, active)))
            }
            _ => return Err(Failure::NoEndpoint),
        };
        log.upstream_host = Some(ep);
        log.count += 1;
        let conn = UpstreamRef {
            key: pool::Key {
                endpoint: ep,
                source,
                tls: tls_profile,
            },
            cluster,
            state: cstate.as_ref(),
            limits: limits.as_ref(),
            connect_timeout: req.connect_timeout,
            tls: secure.as_ref(),
            handshake_timeout: config.tls.handshake_timeout,
        };
        let try_deadline = req.per_try.map(|d| Instant::now() + d);
        let t = once(&conn, force_fresh, try_deadline).await;
        force_fresh = false;
        let attempt = Attempt {
            reused: t.reused,
            idempotent: req.idempotent,
            replayable: t.replayable,
        };
        let outcome = match &t.result {
            Ok(x) => x.outcome(),
            Err(f) => Outcome::Failed(*f),
        };
        // Outlier detection sees every attempt's result on this endpoint.
        if let (Some((st, picked, _)), Some(c)) = (&upstream, cluster) {
            let result = match outcome {
                Outcome::Response(s, _) => Some(OutlierResult::Status(s)),
                Outcome::Failed(f) if f.side() == retry::Side::Upstream => {
                    Some(OutlierResult::LocalOrigin)
                }
                Outcome::Failed(_) => None,
            };
            if let Some(result) = result {
                st.record(c, picked, result);
            }
        }
        let deliver = |r: Result<X, Failure>| r.map(|x| (x, upstream.map(|(_, _, a)| a)));
        match retry::decide(retry, state, attempt, outcome) {
            Verdict::Deliver { exhausted } | Verdict::GiveUp { exhausted } => {
                log.exhausted |= exhausted;
                return deliver(t.result);
            }
            Verdict::Resend => {
                state.refused += 1;
                CoreStats::inc(&shard.stats.upstream_rq_resent);
            }
            Verdict::AgainFresh => {
                state.fresh_used = true;
                force_fresh = true;
                // A 408 that came instead: drop it with its connection.
                if let Ok(x) = t.result {
                    x.discard();
                }
            }
            Verdict::Retry => {
                // max_retries: retries in flight on this core.
                if let (Some(c), Some(st), Some(l)) = (cluster, &cstate, &limits) {
                    if retry_permit.is_none() {
                        match acquire(st, c, Resource::Retries, l) {
                            Ok(p) => retry_permit = Some(p),
                            // Envoy answers with what it has.
                            Err(_) => return deliver(t.result),
                        }
                    }
                }
                state.retries += 1;
                CoreStats::inc(&shard.stats.rq_retry);
                tried.push(ep);
                let backoff = retry.map_or(Duration::ZERO, |p| {
                    p.backoff(state.retries - 1, shard.next_u64())
                });
                // Drop the response (and its connection) first.
                if let Ok(x) = t.result {
                    x.discard();
                }
                glommio::timer::sleep(backoff).await;
            }
        }
    }
}

/// TLS toward a cluster with `tls`, or toward a passthrough mesh destination
/// (outbound only: the inbound side talks to the local app).
fn secure_for<'c>(
    shard: &Shard,
    req: &Request<'c>,
    cluster: Option<&'c Cluster>,
) -> Result<Option<Secure<'c>>, Failure> {
    let secure = match (req.target, cluster) {
        (_, Some(c)) => c.tls.as_ref().map(|t| {
            let o = shard
                .upstreams
                .tls
                .for_cluster(&c.name, t, &shard.tls, req.protocol);
            (o, tls::is_mesh(t), Some(c.name.as_str()))
        }),
        (Target::Addr(a, _), None) if !req.inbound => req.config.mesh_destination_for(a).map(|d| {
            let o = shard.upstreams.tls.for_mesh(d, &shard.tls, req.protocol);
            (o, true, None)
        }),
        _ => None,
    };
    match secure {
        None => Ok(None),
        Some((Ok(origination), mesh, host)) => Ok(Some(Secure {
            origination,
            mesh,
            host,
        })),
        Some((Err(e), ..)) => {
            shard.count_tls("upstream", "failure", e.reason());
            tracing::warn!(error = %e, "cannot originate TLS");
            Err(Failure::Connect)
        }
    }
}
