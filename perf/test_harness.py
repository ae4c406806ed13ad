"""Tests of the harness itself: `python3 -m unittest perf/test_harness.py` (stdlib only).

The parsing and rendering tests need nothing. The end-to-end test runs
`perf/compare --quick` against a fake Remora that answers with the wrong bytes and
checks that the run fails; it is skipped where nginx, haproxy or wrk are missing.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402

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
        self.assertAlmostEqual(r[("idle-10k", "remora-copy", "RSS")]["ratio"], 40000 / 50000)
        self.assertNotIn(("l7-keepalive", "remora-l7", "req/s"), r)

    def test_markdown_and_svg(self):
        md = harness.render_md(SAMPLE)
        self.assertIn("| remora-l7 | n/a (no L7 yet) |", md)
        self.assertIn("## idle-10k", md)
        svg = harness.render_svg(SAMPLE)
        self.assertTrue(svg.startswith("<svg") and svg.rstrip().endswith("</svg>"))
        self.assertIn("1.06×", svg)


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


if __name__ == "__main__":
    unittest.main()
