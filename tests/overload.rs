//! The overload manager (`[overload]`) against the built binary: a
//! connection limit sheds idle keep-alive connections and pauses accepting
//! until the count falls; a memory limit below the process's RSS refuses new
//! requests with 503 `OL`, leaves new connections in the backlog, and both
//! recover when the limit is lifted. Behaviour only: who was served, what
//! was closed, what was counted.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use common::http::{get, Backend, Client};
use common::*;

/// `GET path` on the admin port; the body.
fn admin(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn stat(port: u16, name: &str) -> u64 {
    let stats = admin(port, "GET", "/stats");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(": ")?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /stats:\n{stats}"))
}

/// Waits (bounded, generously) until `/stats` shows `name` = `want`.
fn wait_stat(port: u16, name: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = stat(port, name);
        if v == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} stayed {v}, not {want}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn config(admin: u16, port: u16, backend: std::net::SocketAddr, overload: &str) -> String {
    format!(
        "[runtime]\ndrain_timeout = \"2s\"\n[admin]\naddress = \"127.0.0.1:{admin}\"\nprometheus_address = \"\"\nreadiness_address = \"\"\nwatch_config = false\n[capture]\nenabled = false\n[[cluster]]\nname = \"a\"\nendpoints = [\"{backend}\"]\n[[listener]]\nname = \"h\"\naddress = \"127.0.0.1:{port}\"\ncluster = \"a\"\nprotocol = \"http\"\n[[virtual_host]]\nname = \"all\"\ndomains = [\"*\"]\n[[virtual_host.route]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"a\"\n[overload]\nrefresh_interval = \"20ms\"\n{overload}\n"
    )
}

/// True when the peer closes within the (generous) timeout.
fn closed_by_proxy(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn connection_limit_sheds_idle_connections_then_accepting_resumes() {
    let backend = Backend::start("a");
    let (admin_port, port) = (free_port(), free_port());
    let r = Remora::start(
        &config(
            admin_port,
            port,
            backend.addr,
            "max_active_downstream_connections = 10",
        ),
        &["--cores", "1"],
    );
    // Eight keep-alive clients, served and idle: 80%, below every threshold.
    let mut clients: Vec<Client> = (0..8).map(|_| Client::new(port)).collect();
    for c in &mut clients {
        assert_eq!(c.request(&get("/", "h")).status, 200);
    }
    wait_stat(admin_port, "overload.downstream_connections.used", 8);
    assert_eq!(stat(admin_port, "overload.shed_idle_connections.active"), 0);
    assert_eq!(
        stat(admin_port, "overload.downstream_connections.limit"),
        10
    );

    // Two more: 100%. Every action fires; every connection is idle, so all
    // of them are shed, and the count falls back to zero.
    let mut more: Vec<TcpStream> = (0..2).map(|_| connect(port)).collect();
    for c in &mut clients {
        assert!(
            closed_by_proxy(c.r.get_mut()),
            "an idle client was not shed"
        );
    }
    for s in &mut more {
        assert!(closed_by_proxy(s), "an idle new connection was not shed");
    }
    wait_stat(admin_port, "overload.downstream_connections.used", 0);
    wait_stat(admin_port, "overload.stop_accepting_connections.active", 0);
    assert!(stat(admin_port, "downstream_cx_overload_shed") >= 10);

    // Recovered: a new client is accepted and served, kept alive again.
    let mut c = Client::new(port);
    let resp = c.request(&get("/", "h"));
    assert_eq!(resp.status, 200);
    assert!(resp.header("connection").is_none(), "{}", resp.head);
    assert_eq!(c.request(&get("/", "h")).status, 200);
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}

#[test]
fn memory_limit_refuses_requests_with_503_ol_and_recovers() {
    let backend = Backend::start("a");
    let (admin_port, port) = (free_port(), free_port());
    // A connection limit far away: only so that the count is measured.
    let far = "max_active_downstream_connections = 1000";
    let r = Remora::start(
        &config(admin_port, port, backend.addr, far),
        &["--cores", "1"],
    );
    let reload = |overload: &str| {
        std::fs::write(
            r.config_path(),
            config(admin_port, port, backend.addr, overload),
        )
        .unwrap();
        let body = admin(admin_port, "POST", "/reload");
        assert!(body.contains("OK") || body.contains("ok"), "{body}");
    };
    // A request under way: the head's first line is in, so the connection
    // is not idle and is not shed. (Sent first: the one core has read it by
    // the time the next client's round trip is over.)
    let mut busy = connect(port);
    busy.write_all(b"GET /busy HTTP/1.1\r\n").unwrap();
    let mut idle = Client::new(port);
    assert_eq!(idle.request(&get("/", "h")).status, 200);
    wait_stat(admin_port, "overload.downstream_connections.used", 2);

    // 1 MiB is below any process's RSS: pressure 100%.
    reload(&format!("{far}\nmax_heap_size_bytes = 1048576"));
    wait_stat(admin_port, "overload.stop_accepting_requests.active", 1);
    assert_eq!(stat(admin_port, "overload.heap.pressure"), 100);
    assert!(stat(admin_port, "overload.heap.used") > 1048576);
    assert!(
        closed_by_proxy(idle.r.get_mut()),
        "the idle client was not shed"
    );
    // The request under way is refused: 503, flag OL, connection closed.
    busy.write_all(b"Host: h\r\n\r\n").unwrap();
    let mut c = Client {
        w: busy.try_clone().unwrap(),
        r: std::io::BufReader::new(busy),
    };
    let resp = c.response();
    assert_eq!(resp.status, 503, "{}", resp.head);
    assert_eq!(resp.header("connection").as_deref(), Some("close"));
    assert!(closed_by_proxy(c.r.get_mut()));
    // The accept loop was waiting in accept(): the next connection is taken
    // (and refused per request); after it, new connections wait in the
    // backlog, unanswered, until the pressure falls.
    let mut woke = Client::new(port);
    assert_eq!(woke.request(&get("/", "h")).status, 503);
    let mut queued = Client::new(port);
    queued.w.write_all(get("/queued", "h").as_bytes()).unwrap();

    reload(far);
    wait_stat(admin_port, "overload.stop_accepting_requests.active", 0);
    // The queued connection is accepted now and its request served.
    queued
        .r
        .get_mut()
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    assert_eq!(queued.response().status, 200);
    assert_eq!(Client::new(port).request(&get("/", "h")).status, 200);
    assert_eq!(stat(admin_port, "downstream_rq_overload_close"), 2);
    assert_eq!(stat(admin_port, "response_flags.OL"), 2);
    let prom = admin(admin_port, "GET", "/stats/prometheus");
    assert!(
        prom.contains("remora_overload_action_active{action=\"stop_accepting_requests\"} 0"),
        "{prom}"
    );
    assert!(prom.contains("remora_overload_resource_pressure{resource=\"heap\"} 0"));
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}

/// An HTTP/2 client (Python `h2`): stream 1 is a slow request in flight;
/// once the test writes a line, stream 3 is opened; then the connection is
/// read until both answers and a GOAWAY have come (or it closes).
const H2_CLIENT: &str = r#"
import socket, sys
import h2.config, h2.connection, h2.events, h2.exceptions
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(30)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection()
s.sendall(c.data_to_send())
def get(sid, path):
    c.send_headers(sid, [(":method", "GET"), (":path", path), (":authority", "h"), (":scheme", "http")], end_stream=True)
    s.sendall(c.data_to_send())
get(1, "/sleep/5000")
print("sent", flush=True)
sys.stdin.readline()
get(3, "/")
status, goaway = {}, False
buf = b""
while len(status) < 2 or not goaway:
    data = s.recv(65536)
    if not data:
        break
    buf += data
    # Frame by frame: the library refuses what follows a GOAWAY (the
    # server's PING) and would drop the events of the whole read with it.
    while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
        n = 9 + int.from_bytes(buf[:3], "big")
        frame, buf = buf[:n], buf[n:]
        try:
            events = c.receive_data(frame)
        except h2.exceptions.ProtocolError:
            # CLOSED: a GOAWAY came before this frame.
            goaway, events = True, []
        for e in events:
            if isinstance(e, h2.events.ResponseReceived):
                status[e.stream_id] = dict(e.headers)[b":status"].decode()
            if isinstance(e, h2.events.ConnectionTerminated):
                goaway = True
    try:
        s.sendall(c.data_to_send())
    except OSError:
        break
print("s1=%s s3=%s goaway=%s" % (status.get(1), status.get(3), goaway), flush=True)
"#;

/// HTTP/2 under the overload manager: on a connection whose slow stream
/// keeps it busy (not shed), a new stream opened while requests are refused
/// gets 503 `OL`; the slow one is answered; the connection, idle then, is
/// shed with GOAWAY.
#[test]
fn http2_streams_are_refused_and_idle_connections_shed_under_pressure() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let backend = Backend::start("a");
    let (admin_port, port) = (free_port(), free_port());
    let far = "max_active_downstream_connections = 1000";
    let r = Remora::start(
        &config(admin_port, port, backend.addr, far),
        &["--cores", "1"],
    );
    let mut client = Command::new("python3")
        .args(["-c", H2_CLIENT, &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "sent");
    wait_stat(admin_port, "downstream_rq_http2", 1);
    std::fs::write(
        r.config_path(),
        config(
            admin_port,
            port,
            backend.addr,
            &format!("{far}\nmax_heap_size_bytes = 1048576"),
        ),
    )
    .unwrap();
    let body = admin(admin_port, "POST", "/reload");
    assert!(body.contains("OK") || body.contains("ok"), "{body}");
    wait_stat(admin_port, "overload.stop_accepting_requests.active", 1);
    client.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "s1=200 s3=503 goaway=True");
    assert!(client.wait().unwrap().success());
    assert_eq!(stat(admin_port, "response_flags.OL"), 1);
    assert!(stat(admin_port, "downstream_cx_overload_shed") >= 1);
    let (code, _) = r.stop();
    assert_eq!(code, 0);
}
