//! The admin API (Envoy's paths on 127.0.0.1:15000), Prometheus on 15090 and
//! the readiness probe on 15021 (Istio's ports).
//!
//! These run on plain threads outside the shards (as Envoy's admin runs on its
//! main thread): a slow scrape never delays a data-plane core, and the cores
//! only do work when asked for a report.
//!
//! | path | method | what |
//! |---|---|---|
//! | /ready | GET | `LIVE` (200) or `DRAINING` (503), plus start-up time |
//! | /config_dump | GET | the active config as JSON, with its `version` |
//! | /stats | GET | counters and histogram percentiles, `name: value` |
//! | /stats/prometheus | GET | Prometheus text format |
//! | /clusters | GET | endpoints and their counters |
//! | /logging | GET, POST ?level=L | show / change the log filter at run time |
//! | /reload | POST | reload the config file now |
//! | /drain_listeners | POST | stop accepting; open connections carry on |
//! | /quitquitquit | POST | drain and exit, like SIGTERM |

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tracing::{info, warn};

use crate::config::ConfigHandle;
use crate::metrics::{self, ServerInfo};
use crate::reload::{Reloader, Trigger};
use crate::runtime::Proxy;
use crate::shard::Command;

/// Changes the process's log filter (a tracing-subscriber reload handle).
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything the endpoints read or act on.
pub struct AdminState {
    /// Endpoint sets, health checks and discovery (for /clusters).
    pub upstream: Arc<crate::upstream::control::UpstreamControl>,
    /// The workload certificate and its rotations (`[tls]`; for /certs).
    pub tls: Option<Arc<crate::tls::TlsStore>>,
    pub handle: Arc<ConfigHandle>,
    pub proxy: Arc<Proxy>,
    pub reloader: Arc<Reloader>,
    pub set_log_level: SetLogLevel,
    pub log_level: Mutex<String>,
    pub started: Instant,
    pub startup: Duration,
    pub draining: AtomicBool,
    /// Tells the main thread to drain and exit.
    pub quit: Box<dyn Fn() + Send + Sync>,
}

impl AdminState {
    fn info(&self) -> ServerInfo {
        let tls = self.tls.as_ref().map(|t| t.status());
        ServerInfo {
            config_version: self.handle.current().version,
            reloads_ok: self.reloader.ok.load(Ordering::Relaxed),
            reloads_failed: self.reloader.failed.load(Ordering::Relaxed),
            cores: self.proxy.cpus.len(),
            uptime_s: self.started.elapsed().as_secs(),
            startup_ms: self.startup.as_secs_f64() * 1000.0,
            draining: self.draining.load(Ordering::Relaxed),
            tls_rotations_ok: tls.as_ref().map_or(0, |t| t.rotations_ok),
            tls_rotations_failed: tls.as_ref().map_or(0, |t| t.rotations_failed),
            tls_cert_not_after: self
                .tls
                .as_ref()
                .and_then(|t| t.current())
                .map(|c| c.identity().not_after()),
            overload: self.proxy.overload.current(),
        }
    }
}

/// Which endpoints a listening socket serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Prometheus,
    Readiness,
}

impl Role {
    /// The setting that chooses its address.
    pub fn setting(self) -> &'static str {
        match self {
            Role::Admin => "admin.address",
            Role::Prometheus => "admin.prometheus_address",
            Role::Readiness => "admin.readiness_address",
        }
    }
}

/// Binds `addr` and serves `role` on a background thread.
pub fn serve(addr: SocketAddr, role: Role, state: Arc<AdminState>) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen on {addr} ({}): {e}; another process holds it? change it, or {}",
                role.setting(),
                match role {
                    Role::Admin => "turn the admin API off with admin.enabled = false",
                    _ => "set it to \"\" (off)",
                }
            ),
        )
    })?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name(format!("remora-{role:?}").to_lowercase())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let state = state.clone();
                // One short-lived thread per request: admin traffic is rare, and a
                // stuck client must not block the next probe.
                let _ = std::thread::Builder::new()
                    .name("remora-admin-conn".into())
                    .spawn(move || handle(conn, role, &state));
            }
        })?;
    Ok(local)
}

/// A parsed admin request: method, path and query string.
struct Request {
    method: String,
    path: String,
    query: String,
}

fn read_request(conn: &mut TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let target = req.path?.to_string();
                let (path, query) = match target.split_once('?') {
                    Some((p, q)) => (p.to_string(), q.to_string()),
                    None => (target, String::new()),
                };
                return Some(Request {
                    method: req.method?.to_string(),
                    path,
                    query,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < 16 * 1024 => continue,
            _ => return None,
        }
    }
}

fn respond(conn: &mut TcpStream, status: u16, content_type: &str, body: &str) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body.as_bytes());
}

const TEXT: &str = "text/plain; charset=utf-8";

fn handle(mut conn: TcpStream, role: Role, state: &AdminState) {
    let Some(req) = read_request(&mut conn) else {
        respond(&mut conn, 400, TEXT, "bad request\n");
        return;
    };
    let (status, ctype, body) = route(&req, role, state);
    respond(&mut conn, status, ctype, &body);
}

fn query_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

fn route(req: &Request, role: Role, state: &AdminState) -> (u16, &'static str, String) {
    let get = req.method == "GET" || req.method == "HEAD";
    let post = req.method == "POST";
    let ready = || {
        if state.draining.load(Ordering::Relaxed) {
            (503, TEXT, "DRAINING\n".to_string())
        } else {
            (
                200,
                TEXT,
                format!(
                    "LIVE\nstartup_ms: {:.3}\n",
                    state.startup.as_secs_f64() * 1000.0
                ),
            )
        }
    };
    match (role, req.path.as_str()) {
        (Role::Readiness, "/healthz/ready") if get => ready(),
        (Role::Prometheus, "/stats/prometheus") | (Role::Admin, "/stats/prometheus") if get => {
            let (total, _) = state.proxy.stats();
            let snap = state.handle.current();
            (200, "text/plain; version=0.0.4", metrics::prometheus(&total, &state.info(), &snap.config, &state.upstream.view()))
        }
        (Role::Admin, "/ready") if get => ready(),
        (Role::Admin, "/stats") if get => {
            let (total, _) = state.proxy.stats();
            (200, TEXT, metrics::stats_text(&total, &state.info()))
        }
        (Role::Admin, "/clusters") if get => {
            let (total, _) = state.proxy.stats();
            (200, TEXT, metrics::clusters_text(&total, &state.handle.current().config, &state.upstream.view()))
        }
        (Role::Admin, "/certs") if get => {
            // Envoy's shape: one entry per certificate provider (here the
            // workload certificate), empty without [tls].
            let body = match state.tls.as_ref().and_then(|t| t.current()) {
                Some(c) => crate::tls::certs_json(&c),
                None => json!({ "certificates": [] }),
            };
            (200, "application/json", format!("{body:#}\n"))
        }
        (Role::Admin, "/config_dump") if get => {
            let snap = state.handle.current();
            let body = json!({
                "version": snap.version,
                "source": state.reloader.path().map(|p| p.display().to_string()),
                "last_reload_error": state.reloader.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                "config": &snap.config,
            });
            (200, "application/json", format!("{body:#}\n"))
        }
        (Role::Admin, "/logging") if get => {
            let level = state.log_level.lock().unwrap_or_else(|p| p.into_inner()).clone();
            (200, TEXT, format!("active filter: {level}\n"))
        }
        (Role::Admin, "/logging") if post => match query_param(&req.query, "level") {
            Some(level) => match (state.set_log_level)(level) {
                Ok(()) => {
                    *state.log_level.lock().unwrap_or_else(|p| p.into_inner()) = level.to_string();
                    info!(level, "log filter changed through the admin API");
                    (200, TEXT, format!("active filter: {level}\n"))
                }
                Err(e) => (400, TEXT, format!("invalid level: {e}\n")),
            },
            None => (400, TEXT, "usage: POST /logging?level=debug (or a RUST_LOG-style filter)\n".into()),
        },
        (Role::Admin, "/reload") if post => match state.reloader.reload(Trigger::Admin) {
            Ok(v) => (200, TEXT, format!("OK version {v}\n")),
            Err(e) => (400, TEXT, format!("rejected: {e}\n")),
        },
        (Role::Admin, "/drain_listeners") if post => {
            state.draining.store(true, Ordering::Relaxed);
            state.proxy.send(Command::DrainListeners);
            warn!("listeners drained through the admin API; open connections carry on");
            (200, TEXT, "OK\n".into())
        }
        (Role::Admin, "/quitquitquit") if post => {
            state.draining.store(true, Ordering::Relaxed);
            (state.quit)();
            (200, TEXT, "OK\n".into())
        }
        (Role::Admin, "/") if get => (
            200,
            TEXT,
            "GET /ready /stats /stats/prometheus /clusters /certs /config_dump /logging\nPOST /logging?level=L /reload /drain_listeners /quitquitquit\n".into(),
        ),
        (
            Role::Admin,
            "/ready" | "/stats" | "/clusters" | "/certs" | "/config_dump" | "/logging" | "/reload" | "/drain_listeners"
            | "/quitquitquit",
        ) => (405, TEXT, "method not allowed\n".into()),
        _ => (404, TEXT, "not found\n".into()),
    }
}
