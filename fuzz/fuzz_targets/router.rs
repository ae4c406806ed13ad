//! The router and request planner on arbitrary parsed requests, against one
//! fixed config that uses every kind of match (exact, prefix and regex paths,
//! headers, query parameters, methods, domain wildcards) and every action
//! (weighted clusters, prefix rewrite, redirect, direct response): no panic,
//! and a matched route belongs to the virtual host its Host selects.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use remora::config::Config;
use remora::http::head::{parse_request, Limits, Parsed};
use remora::l7::plan::{plan, request_hash, Fallback};

const CONFIG: &str = r#"
[capture]
enabled = false

[[cluster]]
name = "reviews-v1"
endpoints = ["127.0.0.1:9080"]
lb_policy = "ring_hash"
hash_policy = [{ header = "x-user" }, { cookie = "session" }, { query_parameter = "u" }, { source_ip = true }]

[[cluster]]
name = "reviews-v2"
endpoints = ["127.0.0.1:9081"]

[[virtual_host]]
name = "reviews"
domains = ["reviews", "reviews.default.svc.cluster.local", "*.reviews.example", "reviews.*"]
rate_limit = { tokens = 10, fill_interval = "1s", tokens_per_fill = 10 }

[[virtual_host.route]]
name = "health"
match = { path = "/healthz" }
direct_response = { status = 200, body = "ok" }

[[virtual_host.route]]
name = "canary"
match = { prefix = "/api/", methods = ["GET", "HEAD"], headers = [{ name = "x-canary", exact = "1" }, { name = "x-debug", present = true, invert = true }] }
weighted_clusters = [{ cluster = "reviews-v1", weight = 90 }, { cluster = "reviews-v2", weight = 10 }]
prefix_rewrite = "/"

[[virtual_host.route]]
name = "moved"
match = { prefix = "/old/", query = [{ name = "v", regex = "^[0-9]+$" }] }
redirect = { status = 308, scheme = "https", host = "new.example", port = 8443, prefix_rewrite = "/new/", strip_query = true }

[[virtual_host.route]]
name = "regex"
match = { regex = "^/r/[a-z]+/(\\d{1,4})$", headers = [{ name = "user-agent", regex = "(?i)curl" }] }
cluster = "reviews-v2"

[[virtual_host.route]]
name = "rest"
match = { prefix = "/" }
cluster = "reviews-v1"

[[virtual_host]]
name = "any"
domains = ["*"]

[[virtual_host.route]]
name = "redirect-path"
match = { prefix = "/", query = [{ name = "go", present = true }] }
redirect = { path = "/landing" }

[[virtual_host.route]]
name = "default"
match = { prefix = "/" }
cluster = "reviews-v2"
"#;

fn config() -> &'static Config {
    static CONFIG_ONCE: OnceLock<Config> = OnceLock::new();
    CONFIG_ONCE.get_or_init(|| Config::from_toml(CONFIG, None).unwrap_or_else(|e| panic!("{e}")))
}

fuzz_target!(|data: &[u8]| {
    let Some((&random, data)) = data.split_first() else {
        return;
    };
    let Ok(Parsed::Complete { head, .. }) = parse_request(data, &Limits::default()) else {
        return;
    };
    let req = head.view(data);
    let config = config();
    let table = &config.routes.table;
    if let Some(m) = table.match_request(&req) {
        let vh = table
            .find_virtual_host(req.host().unwrap_or_default())
            .expect("a matched request has a virtual host");
        assert!(std::ptr::eq(vh, m.virtual_host));
        let mut scratch = Vec::new();
        if let Some(path) = m.route.rewritten_path(&req, &mut scratch) {
            assert!(path.starts_with(b"/"), "{path:?}");
        }
        let mut location = Vec::new();
        let _ = m.route.redirect_location(&req, "http", &mut location);
        let _ = m.rate_limit();
    }
    let random = u32::from(random) * 0x0101_0101;
    let _ = plan(config, &req, Fallback::NotFound, random, "https");
    for cluster in &config.clusters {
        let _ = request_hash(cluster, &req, Some([10, 0, 0, 1].into()));
    }
});
