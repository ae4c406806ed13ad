//! Remora: a thread-per-core service-mesh sidecar proxy.
//!
//! ```text
//! config file ─ parse ─ validate ─► Config ─► Snapshot (immutable, versioned)
//!   (config)                                  │ published through ConfigHandle (ArcSwap)
//!                                             ▼ loaded once per new connection
//! per core (runtime::run_shard, one pinned glommio executor each; state in shard):
//!   SO_REUSEPORT listeners (listener: 15001 outbound, 15006 inbound, [[listener]]s)
//!     └─ accept ─ connection: [[listener]] connection_rate_limit (policy::ratelimit; over: reset)
//!                 ─ original dst (net::orig_dst) ─ decide(snapshot) ─► Decision
//!                                                   ├─ inbound (15006, direction = "inbound"): ClientHello
//!                                                   │    peek (tls::hello) ─ PeerAuthentication chain ─
//!                                                   │    mTLS termination (net::Stream, tls) ─ authz (policy::authz)
//!                                                   ├─ protocol: tcp / http / auto (l7::detect peeks)
//!                                                   ├─ L4: upstream (pick, connect, TLS origination)
//!                                                   │     └─ l4::forward: copy or splice, both ways
//!                                                   ├─ L7: l7::serve: HTTP/1 codec (http) ─ route ─
//!                                                   │      rate limit (429) ─ fault (delay, abort)
//!                                                   │      ─ body ─ mirror copy (l7::mirror, detached)
//!                                                   │      attempts: upstream (pick, pool, connect)
//!                                                   │      ─ l7::retry::decide ─ l7::log_request
//!                                                   └─ Refuse: self-loop / no destination
//!   idle HTTP/1 keep-alive connections: an idle deadline each in the core's deadline
//!     registry (deadline: one sweeper timer per core); shedding and stop wake them (idle)
//!   counters per core (stats), summed on read; access log buffered per core
//!   control socket per core: report / reconcile listeners / drain / stop
//!
//! outside the cores (plain threads): admin API, Prometheus, readiness (admin),
//!   reload (SIGHUP, inotify, POST /reload) ─ validate ─ publish ─ reconcile
//! init step: `remora iptables` (intercept) installs Istio's capture rules
//! ```
//!
//! Nothing is shared between cores except the config snapshot and, by the
//! same mechanism, the upstream member sets, health verdicts and TLS
//! contexts. Every io_uring ring is created with COOP_TASKRUN
//! (`net::uring`), which this workload needs to avoid an interrupt per
//! completion.

pub mod access_log;
pub mod admin;
pub mod config;
pub mod connection;
pub mod deadline;
pub mod duration;
pub mod h2;
pub mod http;
pub mod idle;
pub mod intercept;
pub mod l4;
pub mod l7;
pub mod listener;
pub mod metrics;
pub mod net;
pub mod overload;
pub mod pass;
pub mod policy;
pub mod recycle;
pub mod reload;
pub mod runtime;
pub mod shard;
pub mod stats;
pub mod tls;
pub mod turn;
pub mod upstream;

/// 64 random bits from getrandom(2), for seeds that traffic must not guess
/// (the pools' hash keys, X-Request-Id); should it fail, from std's
/// per-process SipHash keys (drawn from the same source, or the clock).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::getrandom(&mut b) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(std::process::id())
        }
    }
}
