//! Rendering merged per-core reports: Envoy-style `/stats` text and Prometheus
//! exposition format for `/stats/prometheus`.
//!
//! Names follow Envoy's stat names (`downstream_cx_total`, `upstream_cx_connect_fail`,
//! ...) under an `envoy_`-like `remora_` prefix, so dashboards map one to one.
//! Labels are small and bounded: the cluster endpoint (from config), never
//! anything taken from traffic.

use std::fmt::Write;

use hdrhistogram::Histogram;

use crate::config::Config;
use std::net::SocketAddr;

use crate::stats::{ClusterReport, CoreReport, EndpointStats};
use crate::upstream::control::UpstreamView;

/// Process-level facts that are not per-core counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerInfo {
    pub config_version: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub cores: usize,
    pub uptime_s: u64,
    pub startup_ms: f64,
    pub draining: bool,
    /// Workload certificate rotations taken and rejected (`[tls]` only).
    pub tls_rotations_ok: u64,
    pub tls_rotations_failed: u64,
    /// When the workload certificate expires, Unix seconds (`[tls]` only).
    pub tls_cert_not_after: Option<i64>,
    /// The overload manager's last measurement and actions.
    pub overload: crate::overload::OverloadState,
}

impl ServerInfo {
    /// Envoy's `server.days_until_first_cert_expiring`: whole days, floored.
    pub fn days_until_cert_expiry(&self) -> Option<i64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        self.tls_cert_not_after
            .map(|t| (t - now).div_euclid(86_400))
    }
}

/// Histogram bucket bounds in milliseconds (Envoy's defaults; Prometheus
/// shows them in seconds).
const BUCKETS_MS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// `name: value` lines, Envoy's `/stats` format.
pub fn stats_text(total: &CoreReport, info: &ServerInfo) -> String {
    let mut out = String::new();
    for (name, v) in total.counters.fields() {
        let _ = writeln!(out, "{name}: {v}");
    }
    let h = &total.histograms.downstream_cx_length_us;
    let _ = writeln!(
        out,
        "downstream_cx_length_ms: P50({:.3}) P90({:.3}) P99({:.3}) P99.9({:.3}) count({})",
        pct_ms(h, 50.0),
        pct_ms(h, 90.0),
        pct_ms(h, 99.0),
        pct_ms(h, 99.9),
        h.len()
    );
    for (flag, n) in &total.response_flags {
        let _ = writeln!(out, "response_flags.{flag}: {n}");
    }
    // Envoy's names: listener.ssl.* for what the inbound side terminated,
    // cluster.ssl.* for what Remora originated.
    for ((side, kind, value), n) in &total.tls {
        let prefix = if *side == "downstream" {
            "listener"
        } else {
            "cluster"
        };
        match *kind {
            "failure" => {
                let _ = writeln!(out, "{prefix}.ssl.{value}: {n}");
            }
            "version" => {
                let _ = writeln!(out, "{prefix}.ssl.versions.{value}: {n}");
            }
            "cipher" => {
                let _ = writeln!(out, "{prefix}.ssl.ciphers.{value}: {n}");
            }
            _ => {
                let _ = writeln!(out, "{prefix}.ssl.{kind}: {n}");
            }
        }
    }
    for ((policy, result), n) in &total.rbac {
        let _ = writeln!(out, "rbac.policy.{policy}.{result}: {n}");
    }
    let _ = writeln!(out, "server.config_version: {}", info.config_version);
    let _ = writeln!(out, "server.reloads_ok: {}", info.reloads_ok);
    let _ = writeln!(out, "server.reloads_failed: {}", info.reloads_failed);
    let _ = writeln!(out, "server.concurrency: {}", info.cores);
    let _ = writeln!(out, "server.uptime: {}", info.uptime_s);
    let _ = writeln!(out, "server.startup_ms: {:.3}", info.startup_ms);
    if let Some(days) = info.days_until_cert_expiry() {
        let _ = writeln!(out, "server.days_until_first_cert_expiring: {days}");
        let _ = writeln!(out, "server.tls_rotations_ok: {}", info.tls_rotations_ok);
        let _ = writeln!(
            out,
            "server.tls_rotations_failed: {}",
            info.tls_rotations_failed
        );
    }
    let _ = writeln!(
        out,
        "server.state: {}",
        if info.draining { "DRAINING" } else { "LIVE" }
    );
    // Envoy's overload.<action>.active and overload.<monitor>.pressure
    // (without its `envoy.` prefixes); pressure in percent.
    for (action, on) in info.overload.actions.fields() {
        let _ = writeln!(out, "overload.{action}.active: {}", u8::from(on));
    }
    for (name, u) in crate::overload::RESOURCES.iter().zip(&info.overload.usage) {
        let _ = writeln!(out, "overload.{name}.pressure: {}", u.pressure());
        let _ = writeln!(out, "overload.{name}.used: {}", u.used);
        let _ = writeln!(out, "overload.{name}.limit: {}", u.limit);
    }
    out
}

/// One endpoint of a cluster as the admin pages show it: the published
/// member set joined with health verdicts and the cores' reports.
pub struct EndpointView {
    pub addr: SocketAddr,
    pub weight: u32,
    pub locality: String,
    /// Discovery's verdict (an endpoints file can mark one unhealthy).
    pub discovered_healthy: bool,
    /// Active health checking's verdict (true when not checked).
    pub hc_healthy: bool,
    /// Cores that have ejected it (outlier detection).
    pub ejected_cores: u64,
    pub rq_active: u64,
    pub lb_picks: u64,
    pub stats: EndpointStats,
}

/// Every configured cluster's endpoints, in config order.
pub fn cluster_endpoints(
    total: &CoreReport,
    config: &Config,
    upstream: &UpstreamView,
) -> Vec<(String, Vec<EndpointView>)> {
    let members = upstream.members.current();
    let health = upstream.health.current();
    config
        .clusters
        .iter()
        .map(|c| {
            let report = total.clusters.get(&c.name);
            let eps = members
                .clusters
                .get(&c.name)
                .map(|m| {
                    m.members
                        .iter()
                        .map(|mem| {
                            let r = report
                                .and_then(|r| r.endpoints.get(&mem.addr))
                                .copied()
                                .unwrap_or_default();
                            EndpointView {
                                addr: mem.addr,
                                weight: mem.weight,
                                locality: mem.locality.to_string(),
                                discovered_healthy: mem.discovered_healthy,
                                hc_healthy: health.is_healthy(&c.name, mem.addr),
                                ejected_cores: r.ejected_cores,
                                rq_active: r.rq_active,
                                lb_picks: r.lb_picks,
                                stats: total.endpoints.get(&mem.addr).copied().unwrap_or_default(),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            (c.name.clone(), eps)
        })
        .collect()
}

/// Envoy's `/clusters` text: `cluster::default_priority::limit::value` for the
/// circuit breakers, then `cluster::endpoint::stat::value` per endpoint, with
/// Envoy's `health_flags` (`healthy`, `/failed_active_hc`,
/// `/failed_outlier_check`, `/failed_eds_health`).
pub fn clusters_text(total: &CoreReport, config: &Config, upstream: &UpstreamView) -> String {
    let mut out = String::new();
    for (c, (name, eps)) in config
        .clusters
        .iter()
        .zip(cluster_endpoints(total, config, upstream))
    {
        let b = &c.circuit_breakers;
        for (limit, v) in [
            ("max_connections", b.max_connections),
            ("max_pending_requests", b.max_pending_requests),
            ("max_requests", b.max_requests),
            ("max_retries", b.max_retries),
        ] {
            let _ = writeln!(out, "{name}::default_priority::{limit}::{v}");
        }
        if let Some(r) = total.clusters.get(&name) {
            let _ = writeln!(out, "{name}::outlier::ejections_total::{}", r.ejections);
        }
        for e in eps {
            let ep = e.addr;
            let st = e.stats;
            for (stat, v) in [
                ("cx_active", st.cx_active),
                ("cx_connect_fail", st.cx_connect_fail),
                ("cx_total", st.cx_total),
                ("rq_active", e.rq_active),
                ("lb_picks", e.lb_picks),
                ("weight", u64::from(e.weight)),
            ] {
                let _ = writeln!(out, "{name}::{ep}::{stat}::{v}");
            }
            let mut flags = String::new();
            if !e.hc_healthy {
                flags += "/failed_active_hc";
            }
            if e.ejected_cores > 0 {
                flags += "/failed_outlier_check";
            }
            if !e.discovered_healthy {
                flags += "/failed_eds_health";
            }
            if flags.is_empty() {
                flags = "healthy".into();
            }
            let _ = writeln!(out, "{name}::{ep}::health_flags::{flags}");
            let _ = writeln!(out, "{name}::{ep}::locality::{}", e.locality);
        }
    }
    out
}

/// `# HELP` and `# TYPE` for one family. In the text format (0.0.4) a
/// counter's family name is its sample name, `_total` included, as
/// client_golang writes it; `promtool check metrics` holds the output to it.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let help = help.trim().replace('\\', "\\\\").replace('\n', " ");
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Prometheus text exposition format (version 0.0.4). Times are in seconds,
/// Prometheus' base unit (the `/stats` text keeps Envoy's milliseconds).
pub fn prometheus(
    total: &CoreReport,
    info: &ServerInfo,
    config: &Config,
    upstream: &UpstreamView,
) -> String {
    let mut out = String::new();
    let help = crate::stats::Counters::help();
    for ((name, v), (_, doc)) in total.counters.fields().into_iter().zip(help) {
        // Gauges are the ones that go down; counters carry the `_total` suffix
        // Prometheus' conventions (and its parsers) expect.
        let (sample, kind) = if name.ends_with("_active") {
            (format!("remora_{name}"), "gauge")
        } else {
            let base = name.strip_suffix("_total").unwrap_or(name);
            (format!("remora_{base}_total"), "counter")
        };
        family(&mut out, &sample, kind, doc);
        let _ = writeln!(out, "{sample} {v}");
    }
    for (name, v, kind, doc) in [
        (
            "server_config_version",
            info.config_version as f64,
            "gauge",
            "Version of the active config (1 at start, +1 per published reload).",
        ),
        (
            "server_reloads_ok_total",
            info.reloads_ok as f64,
            "counter",
            "Reloads that published a new config.",
        ),
        (
            "server_reloads_failed_total",
            info.reloads_failed as f64,
            "counter",
            "Reloads refused (bad file, port in use); the running config kept serving.",
        ),
        (
            "server_concurrency",
            info.cores as f64,
            "gauge",
            "Cores (executors) serving traffic.",
        ),
        (
            "server_uptime_seconds",
            info.uptime_s as f64,
            "gauge",
            "Seconds since the process started.",
        ),
        (
            "server_startup_seconds",
            info.startup_ms / 1000.0,
            "gauge",
            "Seconds from exec to every core listening.",
        ),
        (
            "server_tls_rotations_ok_total",
            info.tls_rotations_ok as f64,
            "counter",
            "Workload certificate rotations taken.",
        ),
        (
            "server_tls_rotations_failed_total",
            info.tls_rotations_failed as f64,
            "counter",
            "Workload certificate rotations refused (the old certificate kept serving).",
        ),
        (
            "server_draining",
            if info.draining { 1.0 } else { 0.0 },
            "gauge",
            "1 while draining (listeners closed, readiness 503).",
        ),
    ] {
        let name = format!("remora_{name}");
        family(&mut out, &name, kind, doc);
        let _ = writeln!(out, "{name} {v}");
    }
    // A timestamp rather than Envoy's days-until: Prometheus' base unit, and
    // alerts compare it with time(). No sample without a certificate.
    let expiry = "remora_server_first_cert_expiry_timestamp_seconds";
    family(
        &mut out,
        expiry,
        "gauge",
        "When the workload certificate expires, Unix time (only with [tls] cert_dir).",
    );
    if let Some(t) = info.tls_cert_not_after {
        let _ = writeln!(out, "{expiry} {t}");
    }
    family(
        &mut out,
        "remora_overload_action_active",
        "gauge",
        "1 while an overload action is in force ([overload]).",
    );
    for (action, on) in info.overload.actions.fields() {
        let _ = writeln!(
            out,
            "remora_overload_action_active{{action=\"{action}\"}} {}",
            u8::from(on)
        );
    }
    for (name, pick, doc) in [
        (
            "pressure",
            0usize,
            "Use of a resource the overload manager watches, in percent of its limit.",
        ),
        ("used", 1, "Use of a resource the overload manager watches."),
        (
            "limit",
            2,
            "The limit of a resource the overload manager watches.",
        ),
    ] {
        family(
            &mut out,
            &format!("remora_overload_resource_{name}"),
            "gauge",
            doc,
        );
        for (resource, u) in crate::overload::RESOURCES.iter().zip(&info.overload.usage) {
            let v = [u64::from(u.pressure()), u.used, u.limit][pick];
            let _ = writeln!(
                out,
                "remora_overload_resource_{name}{{resource=\"{resource}\"}} {v}"
            );
        }
    }
    histogram(
        &mut out,
        "remora_downstream_cx_length_seconds",
        "Downstream connection lifetimes.",
        &total.histograms.downstream_cx_length_us,
    );
    histogram(
        &mut out,
        "remora_rq_time_seconds",
        "HTTP request durations, first byte of the head to the last byte answered.",
        &total.histograms.rq_time_us,
    );
    family(
        &mut out,
        "remora_response_flags_total",
        "counter",
        "Connections and requests by Envoy response flag (UF, UH, NR, RL, ...).",
    );
    for (flag, n) in &total.response_flags {
        let _ = writeln!(out, "remora_response_flags_total{{flag=\"{flag}\"}} {n}");
    }
    family(
        &mut out,
        "remora_tls_events_total",
        "counter",
        "TLS handshakes, versions, ciphers and failures, terminated (downstream) and originated (upstream).",
    );
    for ((side, kind, value), n) in &total.tls {
        let _ = writeln!(
            out,
            "remora_tls_events_total{{side=\"{side}\",kind=\"{kind}\",value=\"{value}\"}} {n}"
        );
    }
    family(
        &mut out,
        "remora_rbac_decisions_total",
        "counter",
        "Authorization policy decisions, by policy and result (allowed, denied, audited).",
    );
    for ((policy, result), n) in &total.rbac {
        let _ = writeln!(
            out,
            "remora_rbac_decisions_total{{policy=\"{}\",result=\"{result}\"}} {n}",
            escape(policy)
        );
    }
    let views = cluster_endpoints(total, config, upstream);
    let mut families: Vec<(&str, &str, &str, String)> = vec![
        (
            "remora_cluster_upstream_cx_total",
            "counter",
            "Connections made to a cluster endpoint.",
            String::new(),
        ),
        (
            "remora_cluster_upstream_cx_active",
            "gauge",
            "Connections open to a cluster endpoint.",
            String::new(),
        ),
        (
            "remora_cluster_upstream_cx_connect_fail_total",
            "counter",
            "Failed connects to a cluster endpoint.",
            String::new(),
        ),
        (
            "remora_cluster_upstream_rq_active",
            "gauge",
            "Requests in flight to a cluster endpoint.",
            String::new(),
        ),
        (
            "remora_cluster_endpoint_healthy",
            "gauge",
            "1 when discovery and active health checking both count the endpoint healthy.",
            String::new(),
        ),
        (
            "remora_cluster_endpoint_ejected_cores",
            "gauge",
            "Cores that have ejected the endpoint (outlier detection).",
            String::new(),
        ),
        (
            "remora_cluster_endpoint_lb_picks_total",
            "counter",
            "Times the load balancer chose the endpoint.",
            String::new(),
        ),
    ];
    for (name, eps) in &views {
        for e in eps {
            let labels = format!("cluster_name=\"{}\",endpoint=\"{}\"", escape(name), e.addr);
            let healthy = e.hc_healthy && e.discovered_healthy;
            for (i, v) in [
                e.stats.cx_total,
                e.stats.cx_active,
                e.stats.cx_connect_fail,
                e.rq_active,
                u64::from(healthy),
                e.ejected_cores,
                e.lb_picks,
            ]
            .into_iter()
            .enumerate()
            {
                let (family, _, _, lines) = &mut families[i];
                let _ = writeln!(lines, "{family}{{{labels}}} {v}");
            }
        }
    }
    let per_cluster: [(&str, &str, &str, ClusterSeries); 5] = [
        (
            "remora_cluster_outlier_ejections_total",
            "counter",
            "Endpoints ejected by outlier detection (summed over cores).",
            |r| vec![(String::new(), r.ejections)],
        ),
        (
            "remora_cluster_outlier_ejections_overflow_total",
            "counter",
            "Ejections skipped because max_ejection_percent was reached.",
            |r| vec![(String::new(), r.ejections_overflow)],
        ),
        (
            "remora_cluster_lb_no_healthy_total",
            "counter",
            "Picks that found no usable endpoint (503 UH).",
            |r| vec![(String::new(), r.no_healthy)],
        ),
        (
            "remora_cluster_lb_panic_total",
            "counter",
            "Picks made in panic mode (below healthy_panic_threshold: every endpoint used).",
            |r| vec![(String::new(), r.panic)],
        ),
        (
            "remora_cluster_circuit_breaker_open",
            "gauge",
            "Resources of a circuit breaker held now, by resource.",
            |r| {
                RESOURCES
                    .iter()
                    .zip(r.breaker_open)
                    .map(|(n, v)| (format!(",resource=\"{n}\""), v))
                    .collect()
            },
        ),
    ];
    for (name, kind, doc, f) in per_cluster {
        family(&mut out, name, kind, doc);
        for (cluster, _) in &views {
            let r = total.clusters.get(cluster).cloned().unwrap_or_default();
            for (extra, v) in f(&r) {
                let _ = writeln!(
                    out,
                    "{name}{{cluster_name=\"{}\"{extra}}} {v}",
                    escape(cluster)
                );
            }
        }
    }
    family(
        &mut out,
        "remora_cluster_circuit_breaker_overflow_total",
        "counter",
        "Requests or connections refused by a circuit breaker (503 UO), by resource.",
    );
    for (name, _) in &views {
        let r = total.clusters.get(name).cloned().unwrap_or_default();
        for (n, v) in RESOURCES.iter().zip(r.breaker_overflow) {
            let _ = writeln!(
                out,
                "remora_cluster_circuit_breaker_overflow_total{{cluster_name=\"{}\",resource=\"{n}\"}} {v}",
                escape(name)
            );
        }
    }
    for (name, kind, doc, lines) in families {
        family(&mut out, name, kind, doc);
        out += &lines;
    }
    out
}

/// A per-cluster series: (extra labels, value) pairs from a report.
type ClusterSeries = fn(&ClusterReport) -> Vec<(String, u64)>;

/// Breaker resources in `ClusterReport` order, as labels.
const RESOURCES: [&str; 4] = ["connections", "pending_requests", "requests", "retries"];

/// One Prometheus histogram, in seconds, from an hdrhistogram of microseconds.
fn histogram(out: &mut String, name: &str, help: &str, h: &Histogram<u64>) {
    family(out, name, "histogram", help);
    for &le_ms in BUCKETS_MS {
        let upper_us = (le_ms * 1000.0) as u64;
        let count = if h.is_empty() {
            0
        } else {
            h.count_between(0, upper_us)
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {count}", le_ms / 1000.0);
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    // hdrhistogram keeps no exact sum; mean × count is exact to its precision.
    let sum_s = if h.is_empty() {
        0.0
    } else {
        h.mean() * h.len() as f64 / 1e6
    };
    let _ = writeln!(out, "{name}_sum {sum_s}");
    let _ = writeln!(out, "{name}_count {}", h.len());
}

fn pct_ms(h: &Histogram<u64>, p: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_percentile(p) as f64 / 1000.0
    }
}

/// Label values: backslash, quote and newline escaped (Prometheus text format).
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_flags_are_labelled_counters() {
        let mut r = CoreReport::default();
        r.response_flags.insert("UF", 2);
        let mut other = CoreReport::default();
        other.response_flags.insert("UF", 1);
        other.response_flags.insert("NR", 4);
        r.add(&other);
        let text = prometheus(
            &r,
            &ServerInfo::default(),
            &Config::builtin(),
            &crate::upstream::Upstreams::default_view(),
        );
        assert!(
            text.contains("remora_response_flags_total{flag=\"UF\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("remora_response_flags_total{flag=\"NR\"} 4\n"),
            "{text}"
        );
        assert!(stats_text(&r, &ServerInfo::default()).contains("response_flags.NR: 4\n"));
    }
}
