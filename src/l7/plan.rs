//! What to do with one request, decided before any I/O: forward it (where,
//! under which limits and retry policy) or answer locally. A pure function of
//! the config, the request's version-neutral parts and a random number, so it
//! is tested as a table and shared by every HTTP version (ztunnel's
//! `build_request` is the model).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::config::{Cluster, Config, HashPolicy};
use crate::http::route::{Forward, Matched, RateLimitScope, RetryPolicy, RouteAction};
use crate::http::RequestParts;
use crate::policy::ratelimit::LocalRateLimit;
use crate::upstream::balance::hash_key;

use super::ResponseFlags;

/// What a request no route matches gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Capture: forward to the connection's original destination.
    Passthrough {
        dst: SocketAddr,
        source: Option<IpAddr>,
        connect_timeout: Duration,
    },
    /// Explicit listener: 404.
    NotFound,
}

/// Where one forwarded request may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// A cluster, by index in the snapshot's `clusters`.
    Cluster(usize),
    /// One address (passthrough), with the source to bind.
    Addr(SocketAddr, Option<IpAddr>),
}

/// A request to forward.
#[derive(Debug, Clone, Copy)]
pub struct Plan<'t> {
    pub target: Target,
    /// The matched route and its forward action (None: passthrough).
    pub route: Option<(Matched<'t>, &'t Forward)>,
    /// The cluster's name, for the log (`PassthroughCluster` for passthrough).
    pub cluster_name: &'t str,
    /// Route timeout over all attempts; None: none.
    pub timeout: Option<Duration>,
    pub retry: Option<&'t RetryPolicy>,
    pub connect_timeout: Duration,
    /// max_request_body_bytes in force (route, virtual host or `[http]`); 0 = none.
    pub max_body: u64,
    /// The request rate limit in force (route or virtual host); None: none.
    pub rate_limit: Option<RateLimitRef<'t>>,
}

/// The request rate limit that applies to a matched request, and whose bucket
/// it counts in: the route's own, else its virtual host's
/// ([`Matched::rate_limit`]). Buckets are per core and found by these names
/// (`policy::ratelimit::RequestBuckets`), so they survive reloads that keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitRef<'t> {
    pub limit: &'t LocalRateLimit,
    pub virtual_host: &'t str,
    /// The route's name when the route's own bucket counts; None: the
    /// virtual host's bucket.
    pub route: Option<&'t str>,
}

impl<'t> RateLimitRef<'t> {
    pub fn of(m: &Matched<'t>) -> Option<RateLimitRef<'t>> {
        let (scope, limit) = m.rate_limit()?;
        Some(RateLimitRef {
            limit,
            virtual_host: &m.virtual_host.name,
            route: match scope {
                RateLimitScope::Route => Some(&m.route.name),
                RateLimitScope::VirtualHost => None,
            },
        })
    }
}

/// A reply the proxy makes itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply<'t> {
    pub status: u16,
    pub body: String,
    /// Location header (redirects).
    pub location: Option<Vec<u8>>,
    pub flags: ResponseFlags,
    /// The matched route's name, if one matched.
    pub route_name: Option<&'t str>,
    /// The matched route's rate limit: a direct response or a redirect is
    /// limited like a forward (Envoy's limit runs before its router). No
    /// route, no limit.
    pub rate_limit: Option<RateLimitRef<'t>>,
}

/// Plans `req`: the first matching route's action, else the fallback.
/// `random` picks among weighted clusters; `scheme` is how the request
/// arrived (for redirects).
pub fn plan<'t, R: RequestParts + ?Sized>(
    config: &'t Config,
    req: &R,
    fallback: Fallback,
    random: u32,
    scheme: &str,
) -> Result<Plan<'t>, LocalReply<'t>> {
    let http = &config.http;
    let Some(m) = config.routes.table.match_request(req) else {
        return match fallback {
            // Istio's passthrough has no route timeout.
            Fallback::Passthrough {
                dst,
                source,
                connect_timeout,
            } => Ok(Plan {
                target: Target::Addr(dst, source),
                route: None,
                cluster_name: "PassthroughCluster",
                timeout: None,
                retry: None,
                connect_timeout,
                max_body: http.max_request_body_bytes,
                rate_limit: None,
            }),
            Fallback::NotFound => Err(LocalReply {
                status: 404,
                body: "no route".into(),
                location: None,
                flags: ResponseFlags::NR,
                route_name: None,
                rate_limit: None,
            }),
        };
    };
    let route_name = || Some(&*m.route.name);
    let rate_limit = RateLimitRef::of(&m);
    match &m.route.action {
        RouteAction::DirectResponse { status, body } => Err(LocalReply {
            status: *status,
            body: String::from_utf8_lossy(body).into_owned(),
            location: None,
            flags: ResponseFlags::default(),
            route_name: route_name(),
            rate_limit,
        }),
        RouteAction::Redirect(r) => {
            let mut loc = Vec::new();
            m.route.redirect_location(req, scheme, &mut loc);
            Err(LocalReply {
                status: r.status,
                body: String::new(),
                location: Some(loc),
                flags: ResponseFlags::default(),
                route_name: route_name(),
                rate_limit,
            })
        }
        RouteAction::Forward(f) => {
            let cref = f.clusters.pick(random);
            let connect_timeout = config
                .clusters
                .get(cref.index)
                .map_or(Duration::from_secs(10), |c| c.connect_timeout);
            Ok(Plan {
                target: Target::Cluster(cref.index),
                route: Some((m, f)),
                cluster_name: &cref.name,
                timeout: f.timeout,
                retry: f.retry.as_ref(),
                connect_timeout,
                max_body: f
                    .max_request_body_bytes
                    .or(m.virtual_host.max_request_body_bytes)
                    .unwrap_or(http.max_request_body_bytes),
                rate_limit,
            })
        }
    }
}

/// The consistent-hash key of a request for `cluster`'s `hash_policy`
/// (Istio consistentHash): the first source present in the request. `None`
/// (no policy, or none present) makes ring hash and Maglev pick at random,
/// as Envoy does.
pub fn request_hash<R: RequestParts + ?Sized>(
    cluster: &Cluster,
    req: &R,
    client: Option<IpAddr>,
) -> Option<u64> {
    cluster.hash_policy.iter().find_map(|h| match h {
        HashPolicy::Header(name) => req.header(name.as_bytes()).map(hash_key),
        HashPolicy::Cookie(name) => req
            .header_values(b"cookie")
            .flat_map(|v| v.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let eq = pair.iter().position(|&b| b == b'=')?;
                (&pair[..eq] == name.as_bytes()).then(|| hash_key(&pair[eq + 1..]))
            }),
        // The address as text, what Envoy hashes, so that Remora and Envoy
        // sidecars send a client to the same endpoint.
        HashPolicy::SourceIp => client.map(|ip| hash_key(ip.to_string().as_bytes())),
        HashPolicy::QueryParameter(name) => req.query().and_then(|q| {
            q.split(|&b| b == b'&').find_map(|p| {
                let (k, v) = match p.iter().position(|&b| b == b'=') {
                    Some(i) => (&p[..i], &p[i + 1..]),
                    None => (p, &p[p.len()..]),
                };
                (k == name.as_bytes()).then(|| hash_key(v))
            })
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Request parts without any HTTP/1 head behind them (as HTTP/2 would
    /// give them).
    struct Parts {
        method: &'static str,
        authority: &'static str,
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
    }

    impl RequestParts for Parts {
        fn method(&self) -> &[u8] {
            self.method.as_bytes()
        }
        fn authority(&self) -> Option<&[u8]> {
            Some(self.authority.as_bytes())
        }
        fn path_and_query(&self) -> &[u8] {
            self.path.as_bytes()
        }
        fn header_values<'s>(&'s self, name: &'s [u8]) -> impl Iterator<Item = &'s [u8]> + 's {
            self.headers
                .iter()
                .filter(move |(n, _)| n.as_bytes() == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn header_fields<'s>(&'s self) -> impl Iterator<Item = (&'s [u8], &'s [u8])> + 's {
            self.headers
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        }
    }

    fn req(authority: &'static str, path: &'static str) -> Parts {
        Parts {
            method: "GET",
            authority,
            path,
            headers: vec![],
        }
    }

    const CONFIG: &str = r#"
[capture]
enabled = false
[http]
max_request_body_bytes = 1000
[[cluster]]
name = "a"
endpoints = ["127.0.0.1:8001"]
connect_timeout = "2s"
[[cluster]]
name = "b"
endpoints = ["127.0.0.1:8002"]
[[virtual_host]]
name = "api"
domains = ["api.example"]
max_request_body_bytes = 500
rate_limit = { tokens = 100, fill_interval = "1s", tokens_per_fill = 100 }
[[virtual_host.route]]
name = "canary"
match = { prefix = "/", headers = [{ name = "x-canary", exact = "1" }] }
cluster = "b"
[[virtual_host.route]]
name = "split"
match = { prefix = "/split" }
weighted_clusters = [{ cluster = "a", weight = 1 }, { cluster = "b", weight = 1 }]
[[virtual_host.route]]
name = "old"
match = { prefix = "/old" }
redirect = { path = "/new" }
[[virtual_host.route]]
name = "teapot"
match = { path = "/tea" }
direct_response = { status = 418, body = "short and stout" }
rate_limit = { tokens = 5, fill_interval = "1s", tokens_per_fill = 5 }
[[virtual_host.route]]
name = "main"
match = { prefix = "/" }
cluster = "a"
timeout = "3s"
retry = { retry_on = ["5xx"], num_retries = 1 }
max_request_body_bytes = 0
"#;

    #[test]
    fn hash_sources() {
        let config = Config::from_toml(
            "[capture]\nenabled = false\n[[cluster]]\nname = \"h\"\nendpoints = [\"127.0.0.1:1\"]\nlb_policy = \"ring_hash\"\nhash_policy = [{ header = \"x-user\" }, { cookie = \"sid\" }, { query_parameter = \"u\" }, { source_ip = true }]\n",
            None,
        )
        .unwrap();
        let c = &config.clusters[0];
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut r = req("h", "/p?a=1&u=alice");
        r.headers.push(("x-user", "bob"));
        r.headers.push(("cookie", "a=1; sid=s1"));
        assert_eq!(request_hash(c, &r, Some(ip)), Some(hash_key(b"bob")));
        r.headers.remove(0);
        assert_eq!(request_hash(c, &r, Some(ip)), Some(hash_key(b"s1")));
        r.headers.clear();
        assert_eq!(request_hash(c, &r, Some(ip)), Some(hash_key(b"alice")));
        let r = req("h", "/p");
        assert_eq!(request_hash(c, &r, Some(ip)), Some(hash_key(b"10.1.2.3")));
        assert_eq!(request_hash(c, &r, None), None);
    }

    #[test]
    fn plan_table() {
        let config = Config::from_toml(CONFIG, None).unwrap();
        let pass = Fallback::Passthrough {
            dst: "10.0.0.9:80".parse().unwrap(),
            source: None,
            connect_timeout: Duration::from_secs(1),
        };
        // Forwarded: route, cluster, timeout, retry, body limit.
        let p = plan(&config, &req("api.example", "/x"), pass, 0, "http").unwrap();
        assert_eq!(p.target, Target::Cluster(0));
        assert_eq!(p.cluster_name, "a");
        assert_eq!(p.route.unwrap().0.route.name.as_ref(), "main");
        assert_eq!(p.timeout, Some(Duration::from_secs(3)));
        assert_eq!(p.retry.unwrap().num_retries, 1);
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.max_body, 0, "the route's 0 (none) wins over the host's");
        // A header match picks the canary; the host's limit applies.
        let mut canary = req("api.example:8080", "/x");
        canary.headers.push(("x-canary", "1"));
        let p = plan(&config, &canary, pass, 0, "http").unwrap();
        assert_eq!((p.target, p.cluster_name), (Target::Cluster(1), "b"));
        assert_eq!(p.connect_timeout, Duration::from_secs(10));
        assert_eq!(p.max_body, 500);
        assert_eq!(p.timeout, Some(Duration::from_secs(15)), "Envoy's default");
        // Weighted: the random number picks.
        let lo = plan(&config, &req("api.example", "/split"), pass, 0, "http").unwrap();
        let hi = plan(
            &config,
            &req("api.example", "/split"),
            pass,
            u32::MAX,
            "http",
        )
        .unwrap();
        assert_eq!((lo.cluster_name, hi.cluster_name), ("a", "b"));
        // Local replies.
        let r = plan(&config, &req("api.example", "/old?q=1"), pass, 0, "http").unwrap_err();
        assert_eq!(r.status, 301);
        assert_eq!(
            r.location.as_deref(),
            Some(&b"http://api.example/new?q=1"[..])
        );
        assert_eq!(r.route_name, Some("old"));
        let r = plan(&config, &req("api.example", "/tea"), pass, 0, "http").unwrap_err();
        assert_eq!((r.status, r.body.as_str()), (418, "short and stout"));
        // No route: passthrough on capture, 404 (NR) on a listener.
        let p = plan(&config, &req("other", "/"), pass, 0, "http").unwrap();
        assert_eq!(
            (p.target, p.cluster_name, p.timeout),
            (
                Target::Addr("10.0.0.9:80".parse().unwrap(), None),
                "PassthroughCluster",
                None
            )
        );
        assert_eq!(p.max_body, 1000);
        let r = plan(&config, &req("other", "/"), Fallback::NotFound, 0, "http").unwrap_err();
        assert_eq!((r.status, r.flags), (404, ResponseFlags::NR));
        assert_eq!(r.rate_limit, None);
    }

    #[test]
    fn rate_limit_route_over_virtual_host_and_local_replies_included() {
        let config = Config::from_toml(CONFIG, None).unwrap();
        let pass = Fallback::Passthrough {
            dst: "10.0.0.9:80".parse().unwrap(),
            source: None,
            connect_timeout: Duration::from_secs(1),
        };
        let scope = |r: Option<RateLimitRef<'_>>| {
            r.map(|r| {
                (
                    r.virtual_host.to_string(),
                    r.route.map(str::to_string),
                    r.limit.bucket.max_tokens(),
                )
            })
        };
        // A forward without its own limit counts in the virtual host's bucket.
        let p = plan(&config, &req("api.example", "/x"), pass, 0, "http").unwrap();
        assert_eq!(scope(p.rate_limit), Some(("api".into(), None, 100)));
        // A redirect too (Envoy limits before routing).
        let r = plan(&config, &req("api.example", "/old"), pass, 0, "http").unwrap_err();
        assert_eq!(scope(r.rate_limit), Some(("api".into(), None, 100)));
        // A route's own limit replaces the host's, direct responses included.
        let r = plan(&config, &req("api.example", "/tea"), pass, 0, "http").unwrap_err();
        assert_eq!(
            scope(r.rate_limit),
            Some(("api".into(), Some("teapot".into()), 5))
        );
        // Passthrough: no route, no limit.
        let p = plan(&config, &req("other", "/"), pass, 0, "http").unwrap();
        assert_eq!(p.rate_limit, None);
    }
}
