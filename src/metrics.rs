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
use crate::stats::CoreReport;

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
}

/// Prometheus histogram bucket bounds in milliseconds (Envoy's defaults).
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
    let _ = writeln!(out, "server.config_version: {}", info.config_version);
    let _ = writeln!(out, "server.reloads_ok: {}", info.reloads_ok);
    let _ = writeln!(out, "server.reloads_failed: {}", info.reloads_failed);
    let _ = writeln!(out, "server.concurrency: {}", info.cores);
    let _ = writeln!(out, "server.uptime: {}", info.uptime_s);
    let _ = writeln!(out, "server.startup_ms: {:.3}", info.startup_ms);
    let _ = writeln!(
        out,
        "server.state: {}",
        if info.draining { "DRAINING" } else { "LIVE" }
    );
    out
}

/// Envoy's `/clusters` text: `cluster::endpoint::stat::value`.
pub fn clusters_text(total: &CoreReport, config: &Config) -> String {
    let mut out = String::new();
    for c in &config.clusters {
        let _ = writeln!(
            out,
            "{}::default_priority::max_connections::{}",
            c.name, config.runtime.max_connections_per_core
        );
        for ep in &c.endpoints {
            let e = total.endpoints.get(ep).copied().unwrap_or_default();
            let _ = writeln!(out, "{}::{ep}::cx_total::{}", c.name, e.cx_total);
            let _ = writeln!(out, "{}::{ep}::cx_active::{}", c.name, e.cx_active);
            let _ = writeln!(
                out,
                "{}::{ep}::cx_connect_fail::{}",
                c.name, e.cx_connect_fail
            );
        }
    }
    out
}

/// Prometheus text exposition format (version 0.0.4).
pub fn prometheus(total: &CoreReport, info: &ServerInfo, config: &Config) -> String {
    let mut out = String::new();
    for (name, v) in total.counters.fields() {
        // Gauges are the ones that go down; counters carry the `_total` suffix
        // Prometheus' conventions (and its parsers) expect.
        if name.ends_with("_active") {
            let _ = writeln!(out, "# TYPE remora_{name} gauge\nremora_{name} {v}");
        } else {
            let family = name.strip_suffix("_total").unwrap_or(name);
            let _ = writeln!(
                out,
                "# TYPE remora_{family} counter\nremora_{family}_total {v}"
            );
        }
    }
    for (name, v, kind) in [
        ("server_config_version", info.config_version as f64, "gauge"),
        ("server_reloads_ok_total", info.reloads_ok as f64, "counter"),
        (
            "server_reloads_failed_total",
            info.reloads_failed as f64,
            "counter",
        ),
        ("server_concurrency", info.cores as f64, "gauge"),
        ("server_uptime_seconds", info.uptime_s as f64, "gauge"),
        ("server_startup_ms", info.startup_ms, "gauge"),
        (
            "server_draining",
            if info.draining { 1.0 } else { 0.0 },
            "gauge",
        ),
    ] {
        let family = name.strip_suffix("_total").unwrap_or(name);
        let _ = writeln!(out, "# TYPE remora_{family} {kind}");
        let _ = writeln!(out, "remora_{name} {v}");
    }
    histogram(
        &mut out,
        "remora_downstream_cx_length_ms",
        &total.histograms.downstream_cx_length_us,
    );
    histogram(&mut out, "remora_rq_time_ms", &total.histograms.rq_time_us);
    let _ = writeln!(out, "# TYPE remora_response_flags counter");
    for (flag, n) in &total.response_flags {
        let _ = writeln!(out, "remora_response_flags_total{{flag=\"{flag}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE remora_cluster_upstream_cx counter");
    let mut lines = (String::new(), String::new(), String::new());
    for c in &config.clusters {
        for ep in &c.endpoints {
            let e = total.endpoints.get(ep).copied().unwrap_or_default();
            let labels = format!("cluster_name=\"{}\",endpoint=\"{ep}\"", escape(&c.name));
            let _ = writeln!(
                lines.0,
                "remora_cluster_upstream_cx_total{{{labels}}} {}",
                e.cx_total
            );
            let _ = writeln!(
                lines.1,
                "remora_cluster_upstream_cx_active{{{labels}}} {}",
                e.cx_active
            );
            let _ = writeln!(
                lines.2,
                "remora_cluster_upstream_cx_connect_fail_total{{{labels}}} {}",
                e.cx_connect_fail
            );
        }
    }
    out += &lines.0;
    out += "# TYPE remora_cluster_upstream_cx_active gauge\n";
    out += &lines.1;
    out += "# TYPE remora_cluster_upstream_cx_connect_fail counter\n";
    out += &lines.2;
    out
}

/// One Prometheus histogram from an hdrhistogram of microseconds.
fn histogram(out: &mut String, name: &str, h: &Histogram<u64>) {
    let _ = writeln!(out, "# TYPE {name} histogram");
    for &le in BUCKETS_MS {
        let upper_us = (le * 1000.0) as u64;
        let count = if h.is_empty() {
            0
        } else {
            h.count_between(0, upper_us)
        };
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.len());
    // hdrhistogram keeps no exact sum; mean × count is exact to its precision.
    let sum_ms = if h.is_empty() {
        0.0
    } else {
        h.mean() * h.len() as f64 / 1000.0
    };
    let _ = writeln!(out, "{name}_sum {sum_ms}");
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
        let text = prometheus(&r, &ServerInfo::default(), &Config::builtin());
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
