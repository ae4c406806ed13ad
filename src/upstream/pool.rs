//! Per-core keep-alive pool of upstream connections, per endpoint.
//!
//! No background task: an entry is checked when it is taken (its age, and
//! whether the socket got a FIN, a reset or stray bytes since its last
//! response; see [`quiet`]) and expired entries are dropped when new ones are put back.
//! Cores never share connections.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use foldhash::fast::{FoldHasher, SeedableRandomState};
use foldhash::SharedSeed;

use crate::net::Stream;

use super::breaker::Permit;

/// What makes a pooled connection reusable for a request: where it goes,
/// from which source address, and how it is secured (0: plaintext; else the
/// TLS profile of `upstream::tls::Origination`: config, SANs, SNI, ALPN).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub endpoint: SocketAddr,
    pub source: Option<IpAddr>,
    pub tls: u64,
}

/// Two writes into the map's hasher ([`KeyHasher`]) instead of the derived
/// impl's one per field and enum tag: a take and a put per request hashed
/// the key ~10 times. Keys that are equal write the same bytes.
impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        fn bits(ip: IpAddr) -> u128 {
            match ip {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) | 1 << 127,
                IpAddr::V6(v6) => u128::from(v6),
            }
        }
        let source = self.source.map_or(0, bits);
        h.write_u128(bits(self.endpoint.ip()) ^ source.rotate_left(64));
        h.write_u64(self.tls ^ u64::from(self.endpoint.port()).rotate_right(16));
    }
}

/// What travels with an upstream connection besides its socket: its place
/// under the cluster's `max_connections` (released when the connection
/// closes) and how many requests it has carried
/// (`max_requests_per_connection`).
#[derive(Debug, Default)]
pub struct Lease {
    pub permit: Option<Permit>,
    pub uses: u32,
}

/// An idle upstream connection.
pub struct Idle {
    pub stream: Stream,
    lease: Lease,
    since: Instant,
}

/// The hasher of the maps keyed by [`Key`] (this pool, and the HTTP/2
/// client's): foldhash, keyed with random seeds from getrandom(2).
///
/// Original-destination endpoints are chosen by the traffic, so the hash must
/// be keyed: with fixed keys, an app talking to attacker-chosen addresses
/// could fill one bucket. std's SipHash-1-3 is keyed, and cost 256
/// instructions per lookup, ~2 % of an HTTP/1 request's user-space work; a
/// keyed folded multiply costs a tenth of that. foldhash seeds itself from
/// address-space layout and the clock, which it does not call DoS-resistant;
/// these seeds are the OS's randomness, drawn once per process (shared) and
/// once per map.
#[derive(Clone)]
pub struct KeyHasher(SeedableRandomState);

impl Default for KeyHasher {
    fn default() -> KeyHasher {
        static SHARED: OnceLock<SharedSeed> = OnceLock::new();
        let shared = SHARED.get_or_init(|| SharedSeed::from_u64(crate::random_u64()));
        KeyHasher(SeedableRandomState::with_seed(crate::random_u64(), shared))
    }
}

impl BuildHasher for KeyHasher {
    type Hasher = FoldHasher<'static>;

    fn build_hasher(&self) -> FoldHasher<'static> {
        self.0.build_hasher()
    }
}

/// A map keyed by [`Key`].
pub type KeyMap<V> = HashMap<Key, V, KeyHasher>;

/// Lists emptied by `take` stay in the map, so that the next `put` to the
/// same key (the next request's) finds its allocation; they are pruned once
/// the map has grown to this many keys, and then whenever it doubled since:
/// original destinations come and go (a passthrough sidecar sees every
/// address its app talks to), and the map of a long-lived core would
/// otherwise keep one entry for every address ever reused.
const PRUNE_AT_LEAST: usize = 64;

#[derive(Default)]
pub struct Pool {
    idle: KeyMap<Vec<Idle>>,
    /// Prune empty lists when the map reaches this many keys (0: at
    /// [`PRUNE_AT_LEAST`]).
    prune_at: usize,
}

impl Pool {
    /// The most recently used connection to `key` that is still open and has
    /// nothing unread ([`quiet`]). Dead, dirty or expired
    /// ones met on the way are returned in `dropped` for the caller to account.
    pub fn take(
        &mut self,
        key: Key,
        max_age: Duration,
        dropped: &mut Vec<Stream>,
    ) -> Option<(Stream, Lease)> {
        let list = self.idle.get_mut(&key)?;
        let cutoff = cutoff(Instant::now(), max_age);
        while let Some(mut c) = list.pop() {
            if cutoff.is_none_or(|t| c.since > t) && quiet(&mut c.stream) {
                return Some((c.stream, c.lease));
            }
            dropped.push(c.stream);
        }
        None
    }

    /// Keeps `stream` unless the endpoint already has `max_idle` idle ones
    /// (then it comes back in `dropped`), dropping expired entries too.
    pub fn put(
        &mut self,
        key: Key,
        stream: Stream,
        lease: Lease,
        max_idle: usize,
        max_age: Duration,
        dropped: &mut Vec<Stream>,
    ) {
        if self.idle.len() >= self.prune_at.max(PRUNE_AT_LEAST) {
            self.prune();
        }
        let list = self.idle.entry(key).or_default();
        // One clock read per put: it was one per idle entry (`elapsed()`), 50
        // reads per request with 50 idle connections to the endpoint, 2% of a
        // sidecar's CPU in perf/SIDECAR.md's profile.
        let now = Instant::now();
        let expired = expired_prefix(list, |c| c.since, now, max_age);
        dropped.extend(list.drain(..expired).map(|c| c.stream));
        if list.len() < max_idle {
            list.push(Idle {
                stream,
                lease,
                since: now,
            });
        } else {
            dropped.push(stream);
        }
    }

    pub fn idle_count(&self) -> usize {
        self.idle.values().map(Vec::len).sum()
    }

    /// Keys in the map, emptied ones included (for tests).
    pub fn keys(&self) -> usize {
        self.idle.len()
    }

    /// Drops the keys whose lists are empty and the memory they held; the
    /// next prune comes when the map has doubled (amortized O(1) per put).
    fn prune(&mut self) {
        self.idle.retain(|_, list| !list.is_empty());
        let live = self.idle.len();
        if self.idle.capacity() > 4 * live.max(PRUNE_AT_LEAST) {
            self.idle.shrink_to(2 * live);
        }
        self.prune_at = 2 * live;
    }
}

/// How many entries at the front of `list` are at least `max_age` old. The
/// list is in the order the entries were put back, so oldest first (`since`
/// never decreases along it): the expired ones are a prefix, found by
/// bisection without reading every entry.
fn expired_prefix<T>(
    list: &[T],
    since: impl Fn(&T) -> Instant,
    now: Instant,
    max_age: Duration,
) -> usize {
    match cutoff(now, max_age) {
        Some(t) => list.partition_point(|c| since(c) <= t),
        None => 0,
    }
}

/// The latest moment an entry put back then is expired by `now` (at least
/// `max_age` old); None if none can be (the clock started less than
/// `max_age` ago). Comparing instants against it is a compare; working out
/// each entry's age was a subtraction with its checks, ~30 instructions, a
/// few per request.
fn cutoff(now: Instant, max_age: Duration) -> Option<Instant> {
    now.checked_sub(max_age)
}

/// Whether a pooled connection may carry another request: only if reading it
/// would block. [`Pool::take`] asks this on every reuse.
///
/// Reading would block only if the server sent nothing since its last
/// response; anything else disqualifies it: EOF (it closed), an error (it
/// reset), or **bytes nobody asked for**. Such bytes are the dangerous case:
/// a body after a response to HEAD, a second response, a 408 sent before an
/// idle close. Taken as the answer to the next request, which may be another
/// client's, they would hand one client's response to another (a buggy or
/// hostile upstream could answer requests of its choosing). So the check runs
/// on every reuse, with no fast path by age: an earlier version skipped it
/// for connections back in the pool under 1 s, which is every reuse under
/// load, and that was exactly the window in which stray bytes of the
/// previous response arrive. Bytes that came with the response itself are
/// caught earlier (`l7::Conn::respond` never pools a connection with unread
/// bytes in its buffer).
///
/// The check is free on a healthy plain connection: the readiness poll
/// glommio armed when the response's last read drained the socket is still
/// pending, so nothing arrived since (`Stream::quiet`); only a connection
/// that did get something, or whose poll was not armed, costs a `recv`.
/// That is how nginx's keepalive module (a read handler on each cached
/// connection), Envoy and pingora watch idle connections; until 2026-11-30
/// Remora paid a `MSG_PEEK` per reuse instead (one syscall per request on the
/// sidecar path, perf/SIDECAR.md).
///
/// The check cannot make reuse safe against a close racing the send; what
/// does is in `l7::Conn::attempts`: a reused connection that fails before
/// any response byte arrives sends the request once more on a fresh
/// connection. The check saves that round trip when the server closed the
/// connection while it sat idle (after its keep-alive timeout: nginx 75 s,
/// Apache httpd and Node.js 5 s, gunicorn 2 s by default).
///
/// A TLS session gets a `MSG_PEEK`; when bytes did arrive they are read and
/// decrypted, and only TLS housekeeping (a session ticket, a key update)
/// leaves it usable (`net::stream`).
fn quiet(stream: &mut Stream) -> bool {
    stream.quiet()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lists emptied by `take` do not pile up: after a thousand endpoints
    /// were each used once, the map holds at most [`PRUNE_AT_LEAST`] keys,
    /// and a connection still idle in it survived every prune. Real sockets
    /// on loopback.
    #[test]
    fn emptied_lists_are_pruned_and_live_ones_kept() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .expect("executor");
        ex.run(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let connect = || async {
                let s = crate::net::tcp::Tcp::connect(addr, None, Duration::from_secs(5))
                    .await
                    .expect("connect");
                let accepted = listener.accept().expect("accept").0;
                (Stream::from(s), accepted)
            };
            let key = |port: u16| Key {
                endpoint: SocketAddr::from(([127, 0, 0, 1], port)),
                source: None,
                tls: 0,
            };
            let age = Duration::from_secs(60);
            let mut dropped = Vec::new();
            let mut pool = Pool::default();
            let (kept, _kept_peer) = connect().await;
            let kept_fd = kept.as_raw_fd();
            pool.put(key(1), kept, Lease::default(), 8, age, &mut dropped);
            let (mut s, _peer) = connect().await;
            for port in 2..1002 {
                pool.put(key(port), s, Lease::default(), 8, age, &mut dropped);
                assert!(pool.keys() <= PRUNE_AT_LEAST + 1, "{} keys", pool.keys());
                s = pool.take(key(port), age, &mut dropped).expect("pooled").0;
            }
            assert!(dropped.is_empty());
            let (back, _) = pool.take(key(1), age, &mut dropped).expect("kept");
            assert_eq!(back.as_raw_fd(), kept_fd);
            assert_eq!(pool.idle_count(), 0);

            // Expired (idle for max_age or longer): not handed out, but
            // returned for the caller to close.
            pool.put(key(1), back, Lease::default(), 8, age, &mut dropped);
            glommio::timer::sleep(Duration::from_millis(20)).await;
            assert!(pool
                .take(key(1), Duration::from_millis(10), &mut dropped)
                .is_none());
            assert_eq!(dropped.len(), 1);
            assert_eq!(dropped[0].as_raw_fd(), kept_fd);
        });
    }

    #[test]
    fn expired_entries_are_the_oldest_prefix() {
        let now = Instant::now() + Duration::from_secs(100);
        let ago = |s: u64| now - Duration::from_secs(s);
        let age = Duration::from_secs(60);
        // (put-back times, oldest first; expired count)
        let cases: [(&[Instant], usize); 6] = [
            (&[], 0),
            (&[ago(5)], 0),
            (&[ago(60)], 1), // exactly max_age: expired, as before
            (&[ago(90), ago(61), ago(59), ago(1)], 2),
            (&[ago(90), ago(80)], 2),
            (&[ago(10), ago(5), ago(0)], 0),
        ];
        for (list, want) in cases {
            assert_eq!(expired_prefix(list, |t| *t, now, age), want, "{list:?}");
        }
    }
}
