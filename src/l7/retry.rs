//! After an upstream attempt: deliver what came back, try once more on a fresh
//! connection, retry under the route's policy, or give up. A pure function of
//! the policy, the request's facts and the attempt's outcome, shared by every
//! HTTP version, tested as a table.
//!
//! The rules, in order:
//! 1. A reused keep-alive connection that failed before any response byte
//!    (closed by the server while the request was on its way) gets the
//!    request once more on a fresh connection, outside the retry budget, as
//!    nginx and Envoy do; but only for idempotent methods with a replayable
//!    body: the server may have read a POST before closing (RFC 9112 §9.3.1:
//!    "A proxy MUST NOT automatically retry non-idempotent requests").
//! 2. The route's retry policy (`retry_on`, `num_retries`) retries what it
//!    lists, while the budget lasts and the body can be replayed. A
//!    non-idempotent request is retried only where it cannot have reached the
//!    upstream (connect failure), unless the policy sets
//!    `retry_non_idempotent`, or the condition is a gRPC status the policy
//!    lists (gRPC calls are all POSTs; the status is the server's word).
//! 3. Running out of budget on a condition the policy lists is Envoy's `URX`.
//!
//! A 408 on a reused connection counts as rule 1's close: a server whose
//! keep-alive timeout expired sends "408 Request Timeout" and closes, and
//! when that races the request, the 408 is an answer to no request of ours
//! (Go's HTTP transport discards it the same way). A real timeout of the
//! request cannot happen that fast.

use crate::http::route::{AttemptFailure, RetryPolicy};

/// Which side an error came from (pingora's `ErrorSource`): decides the
/// response flag and whether the upstream is blamed (outlier detection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
    Internal,
}

/// Whether sending the request again after a failure is safe as far as the
/// upstream is concerned, before any policy is consulted (pingora's
/// `RetryType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafety {
    /// Nothing reached the upstream (a connect failure): safe for any method.
    Safe,
    /// Safe only because a pooled connection closed under the request before
    /// any answer (the close raced the send), and only for idempotent methods.
    ReusedOnly,
    /// The upstream may have acted on the request: only idempotent methods,
    /// or a policy that says `retry_non_idempotent`.
    MayHaveReached,
    /// Not a failure a retry can help (the client's side, a bad response).
    Never,
}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The upstream connection could not be made: nothing was sent.
    Connect,
    /// The cluster has no endpoint to try.
    NoEndpoint,
    /// The upstream closed or reset; `started`: some response bytes had arrived.
    Reset {
        started: bool,
    },
    PerTryTimeout,
    /// The upstream's response could not be parsed.
    BadResponse,
    /// The client went away or stalled while its body streamed.
    Downstream,
    /// The client's body framing was malformed.
    BadRequestBody,
    /// The request body grew past max_request_body_bytes.
    TooLarge,
    /// The request body stalled for stream_idle_timeout.
    BodyTimeout,
    /// A circuit breaker of the cluster is open (503 UO).
    Overflow,
    /// The upstream did not process the request: an HTTP/2 stream refused
    /// (REFUSED_STREAM) or above a GOAWAY's last stream id. Safe to send
    /// again for any method (RFC 9113 §8.7).
    Refused,
}

impl Failure {
    pub fn side(self) -> Side {
        match self {
            Failure::Connect
            | Failure::Reset { .. }
            | Failure::Refused
            | Failure::PerTryTimeout
            | Failure::BadResponse => Side::Upstream,
            Failure::Downstream
            | Failure::BadRequestBody
            | Failure::TooLarge
            | Failure::BodyTimeout => Side::Downstream,
            Failure::NoEndpoint | Failure::Overflow => Side::Internal,
        }
    }

    /// How safe a resend is (see [`RetrySafety`]).
    pub fn retry_safety(self) -> RetrySafety {
        match self {
            Failure::Connect | Failure::Refused => RetrySafety::Safe,
            Failure::Reset { started: false } => RetrySafety::ReusedOnly,
            Failure::Reset { started: true } | Failure::PerTryTimeout => {
                RetrySafety::MayHaveReached
            }
            Failure::NoEndpoint
            | Failure::Overflow
            | Failure::BadResponse
            | Failure::Downstream
            | Failure::BadRequestBody
            | Failure::TooLarge
            | Failure::BodyTimeout => RetrySafety::Never,
        }
    }

    /// The retry condition this failure falls under, if any.
    fn as_attempt(self) -> Option<AttemptFailure> {
        match self {
            Failure::Connect => Some(AttemptFailure::ConnectFailure),
            Failure::Reset { .. } | Failure::Refused => Some(AttemptFailure::Reset),
            Failure::PerTryTimeout => Some(AttemptFailure::PerTryTimeout),
            _ => None,
        }
    }
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A final response head with this status, and the gRPC status it
    /// carries if it has one (a trailers-only gRPC answer).
    Response(u16, Option<u8>),
    Failed(Failure),
}

/// The facts about the request and the attempt that the decision needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt used a pooled keep-alive connection.
    pub reused: bool,
    /// RFC 9110 §9.2.2 idempotent method.
    pub idempotent: bool,
    /// The whole body is buffered and can be sent again.
    pub replayable: bool,
}

/// Where the request stands across attempts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Retries under the policy so far.
    pub retries: u32,
    /// The once-more-on-a-fresh-connection resend was used.
    pub fresh_used: bool,
    /// Resends of requests the upstream did not process.
    pub refused: u32,
}

/// How many times a request the upstream did not process (an HTTP/2 stream
/// refused, or left unprocessed by a GOAWAY) is sent again, outside any
/// retry policy: it is always safe, and a server that cycles its
/// connections (nginx's keepalive_requests) may refuse a few in a row.
pub const MAX_REFUSED: u32 = 3;

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass this response on; `exhausted`: the policy wanted another retry
    /// but the budget is spent (URX).
    Deliver { exhausted: bool },
    /// Send the same request again on a fresh connection (no budget used).
    AgainFresh,
    /// Send it again: the upstream did not process it (no budget used).
    Resend,
    /// Retry under the policy (after its backoff).
    Retry,
    /// Answer locally for this failure; `exhausted` as for `Deliver`.
    GiveUp { exhausted: bool },
}

/// Decides what follows an attempt (see the module doc for the rules).
pub fn decide(
    policy: Option<&RetryPolicy>,
    state: State,
    attempt: Attempt,
    outcome: Outcome,
) -> Verdict {
    // A gRPC status the policy lists is the server's own word that the call
    // may be sent again (gRPC's retry design, A6; Envoy's gRPC conditions
    // ignore the method too): every gRPC call is a POST, so the rule for
    // non-idempotent requests would otherwise make them dead letters.
    let mut grpc_listed = false;
    let (listed, reached) = match outcome {
        Outcome::Response(408, _)
            if attempt.reused && !state.fresh_used && attempt.replayable && attempt.idempotent =>
        {
            return Verdict::AgainFresh;
        }
        Outcome::Response(status, grpc) => {
            grpc_listed =
                policy.is_some_and(|p| grpc.is_some_and(|g| p.retriable(AttemptFailure::Grpc(g))));
            let listed =
                grpc_listed || policy.is_some_and(|p| p.retriable(AttemptFailure::Status(status)));
            (listed, true)
        }
        Outcome::Failed(Failure::Refused) if state.refused < MAX_REFUSED && attempt.replayable => {
            return Verdict::Resend;
        }
        Outcome::Failed(f) => {
            if attempt.reused
                && !state.fresh_used
                && attempt.replayable
                && attempt.idempotent
                && f.retry_safety() == RetrySafety::ReusedOnly
            {
                return Verdict::AgainFresh;
            }
            let listed = match (policy, f.as_attempt()) {
                (Some(p), Some(c)) => p.retriable(c),
                _ => false,
            };
            (listed, f.retry_safety() != RetrySafety::Safe)
        }
    };
    let give = |exhausted| match outcome {
        Outcome::Response(..) => Verdict::Deliver { exhausted },
        Outcome::Failed(_) => Verdict::GiveUp { exhausted },
    };
    let Some(p) = policy.filter(|_| listed) else {
        return give(false);
    };
    let safe = attempt.idempotent || !reached || p.retry_non_idempotent || grpc_listed;
    if !attempt.replayable || !safe {
        return give(false);
    }
    if state.retries < p.num_retries {
        Verdict::Retry
    } else {
        give(p.num_retries > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::route::RetryOn;
    use std::time::Duration;

    fn policy(non_idempotent: bool) -> RetryPolicy {
        RetryPolicy {
            retry_on: RetryOn {
                gateway_error: true,
                connect_failure: true,
                reset: true,
                ..RetryOn::default()
            },
            num_retries: 2,
            per_try_timeout: None,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_millis(250),
            retriable_status_codes: Vec::new(),
            previous_hosts: true,
            retry_non_idempotent: non_idempotent,
        }
    }

    #[test]
    fn decision_table() {
        use Failure::*;
        use Outcome::*;
        use Verdict::*;
        let get = Attempt {
            reused: false,
            idempotent: true,
            replayable: true,
        };
        let post = Attempt {
            idempotent: false,
            ..get
        };
        let reused = |a: Attempt| Attempt { reused: true, ..a };
        let streamed = |a: Attempt| Attempt {
            replayable: false,
            ..a
        };
        let fresh = State::default();
        let used = State {
            fresh_used: true,
            ..State::default()
        };
        let spent = State {
            retries: 2,
            ..State::default()
        };
        let refused = State {
            refused: MAX_REFUSED,
            ..State::default()
        };
        let p = policy(false);
        let pn = policy(true);
        let mut pg = policy(false);
        pg.retry_on.grpc.unavailable = true;
        let none: Option<&RetryPolicy> = None;
        let closed = Failed(Reset { started: false });
        #[rustfmt::skip]
        let cases: &[(Option<&RetryPolicy>, State, Attempt, Outcome, Verdict)] = &[
            // A pooled connection closed under the request: once more, fresh,
            // without a policy, for idempotent replayable requests only.
            (none, fresh, reused(get), closed, AgainFresh),
            (none, used, reused(get), closed, GiveUp { exhausted: false }),
            (none, fresh, reused(post), closed, GiveUp { exhausted: false }),
            (none, fresh, streamed(reused(get)), closed, GiveUp { exhausted: false }),
            (none, fresh, get, closed, GiveUp { exhausted: false }),
            (none, fresh, reused(get), Failed(Reset { started: true }), GiveUp { exhausted: false }),
            // A 408 on a reused connection is an idle close racing the send.
            (none, fresh, reused(get), Response(408, None), AgainFresh),
            (none, used, reused(get), Response(408, None), Deliver { exhausted: false }),
            (none, fresh, get, Response(408, None), Deliver { exhausted: false }),
            (none, fresh, reused(post), Response(408, None), Deliver { exhausted: false }),
            // Responses: delivered unless the policy lists them.
            (none, fresh, get, Response(503, None), Deliver { exhausted: false }),
            (Some(&p), fresh, get, Response(503, None), Retry),
            (Some(&p), fresh, get, Response(500, None), Deliver { exhausted: false }),
            (Some(&p), spent, get, Response(503, None), Deliver { exhausted: true }),
            (Some(&p), fresh, streamed(get), Response(503, None), Deliver { exhausted: false }),
            // RFC 9112 §9.3.1: POST that reached the upstream is not retried...
            (Some(&p), fresh, post, Response(503, None), Deliver { exhausted: false }),
            (Some(&p), fresh, post, Failed(Reset { started: false }), GiveUp { exhausted: false }),
            (Some(&p), fresh, post, Failed(PerTryTimeout), GiveUp { exhausted: false }),
            // ... unless it cannot have (connect failure) or the route asks.
            (Some(&p), fresh, post, Failed(Connect), Retry),
            (Some(&pn), fresh, post, Response(503, None), Retry),
            (Some(&pn), fresh, post, Failed(Reset { started: true }), Retry),
            // Failures the policy does not list, or that are not retriable.
            (Some(&p), fresh, get, Failed(BadResponse), GiveUp { exhausted: false }),
            (Some(&p), fresh, get, Failed(Downstream), GiveUp { exhausted: false }),
            (Some(&p), fresh, get, Failed(NoEndpoint), GiveUp { exhausted: false }),
            (Some(&p), spent, get, Failed(Connect), GiveUp { exhausted: true }),
            (Some(&p), fresh, get, Failed(PerTryTimeout), Retry),
            // An HTTP/2 stream the upstream did not process: once more
            // anywhere, whatever the method; not a streamed body.
            (none, fresh, post, Failed(Refused), Resend),
            (none, used, post, Failed(Refused), Resend),
            (none, refused, post, Failed(Refused), GiveUp { exhausted: false }),
            (none, fresh, streamed(get), Failed(Refused), GiveUp { exhausted: false }),
            // gRPC statuses in a trailers-only head, when the policy lists them.
            (Some(&pg), fresh, get, Response(200, Some(14)), Retry),
            (Some(&pg), fresh, get, Response(200, Some(5)), Deliver { exhausted: false }),
            (Some(&pg), fresh, get, Response(200, None), Deliver { exhausted: false }),
            // ... for gRPC's POSTs too (a listed status is the server's
            // word that the call may go again), but not a 503 to a POST.
            (Some(&pg), fresh, post, Response(200, Some(14)), Retry),
            (Some(&pg), fresh, post, Response(503, None), Deliver { exhausted: false }),
            (Some(&pg), fresh, streamed(post), Response(200, Some(14)), Deliver { exhausted: false }),
            (Some(&pg), spent, post, Response(200, Some(14)), Deliver { exhausted: true }),
            (Some(&p), fresh, get, Response(200, Some(14)), Deliver { exhausted: false }),
            (Some(&pg), spent, get, Response(200, Some(14)), Deliver { exhausted: true }),
        ];
        for (i, (pol, st, a, o, want)) in cases.iter().enumerate() {
            assert_eq!(decide(*pol, *st, *a, *o), *want, "case {i}: {a:?} {o:?}");
        }
    }

    #[test]
    fn retry_safety() {
        assert_eq!(Failure::Connect.retry_safety(), RetrySafety::Safe);
        assert_eq!(
            Failure::Reset { started: false }.retry_safety(),
            RetrySafety::ReusedOnly
        );
        assert_eq!(
            Failure::PerTryTimeout.retry_safety(),
            RetrySafety::MayHaveReached
        );
        assert_eq!(Failure::BadResponse.retry_safety(), RetrySafety::Never);
    }

    #[test]
    fn sides() {
        assert_eq!(Failure::Connect.side(), Side::Upstream);
        assert_eq!(Failure::TooLarge.side(), Side::Downstream);
        assert_eq!(Failure::NoEndpoint.side(), Side::Internal);
    }
}
