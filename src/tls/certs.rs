//! The admin `/certs` body, in Envoy's shape (`envoy.admin.v3.Certificates`
//! in proto3 JSON), so that tools reading Envoy's page read ours.

use std::path::Path;

use serde_json::{json, Value};

use super::config::Contexts;
use super::x509::{rfc3339, unix_now, CertDetails, San};

/// `{"certificates":[{"ca_cert":[..],"cert_chain":[..]}]}`: one entry, the
/// workload identity. `ca_cert` lists every root of `root-cert.pem`;
/// `cert_chain` the leaf, then the intermediates (Envoy lists the leaf only;
/// the intermediates' expiry matters as much, so they are shown too).
pub fn certs_json(ctx: &Contexts) -> Value {
    let id = ctx.identity();
    let now = unix_now();
    let list = |path: &Path, certs: &[CertDetails]| -> Vec<Value> {
        certs.iter().map(|c| details_json(path, c, now)).collect()
    };
    json!({
        "certificates": [{
            "ca_cert": list(id.root_path(), id.root_details()),
            "cert_chain": list(id.chain_path(), id.chain_details()),
        }]
    })
}

/// One `CertificateDetails`. `days_until_expiration` is a uint64, which
/// proto3 JSON writes as a string (as Envoy's page shows it).
fn details_json(path: &Path, c: &CertDetails, now: i64) -> Value {
    let sans: Vec<Value> = c
        .sans
        .iter()
        .map(|s| match s {
            San::Uri(u) => json!({ "uri": u }),
            San::Dns(d) => json!({ "dns": d }),
            San::Ip(ip) => json!({ "ip_address": ip.to_string() }),
        })
        .collect();
    json!({
        "path": path.display().to_string(),
        "serial_number": c.serial,
        "subject_alt_names": sans,
        "days_until_expiration": c.days_until_expiration(now).to_string(),
        "valid_from": rfc3339(c.not_before),
        "expiration_time": rfc3339(c.not_after),
    })
}
