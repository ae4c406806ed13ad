"""The `fairness` scenarios' own programs (perf/compare; see perf/README.md).

One proxy core carries two connections: a bulk download that never ends and a
small request/response connection. What is measured is how long the small
connection's round trips take while the bulk transfer runs, and how fast the
bulk transfer moves meanwhile:

    bulk client ── GET /bulk  ──► proxy ──► stream backend: endless body (sendfile)
    rtt client  ── GET /small ──► (one core) ──► stream backend: 64-byte answer
      CPU0                          CPU1          CPU0

Three programs, each its own process so that no Python lock couples them (run
as `python3 perf/fairness.py backend|bulk|rtt ...`):

- `backend`: HTTP/1.1 keep-alive server, a process per connection. `/bulk`
  answers with a Content-Length of 2^50 and then sends the same 1 MiB of pages
  again and again with sendfile(2) from a memfd (no copy in user space);
  anything else gets a 64-byte body. Every response carries `x-peer-port`, the
  client port the backend saw, so a check can tell a proxied connection from a
  direct one.
- `bulk`: downloads `/bulk` for a given time, discarding the bytes, and prints
  JSON with (monotonic time, bytes so far) every 100 ms.
- `rtt`: `GET /small` round trips back to back for a given time on one
  connection and prints JSON with each round trip's time.

The small side (the rtt client and the backend's process that answers it) runs
at real-time priority when allowed: both spend nearly all their time blocked,
and on a load CPU saturated by the bulk sender and receiver they would
otherwise measure the scheduler's wake-up latency, not the proxy's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import time

BULK_PATH = "/bulk"
SMALL_PATH = "/small"
# 64 bytes, deterministic.
SMALL_BODY = hashlib.sha256(b"remora fairness").hexdigest().encode()
BULK_UNIT = 1 << 20
BULK_LENGTH = 1 << 50  # "endless": 1 PiB


def bulk_unit() -> bytes:
    """The 1 MiB the backend sends again and again (checkable at any offset that is
    a multiple of its length)."""
    out = bytearray()
    block = b"remora bulk"
    while len(out) < BULK_UNIT:
        block = hashlib.sha256(block).digest()
        out += block.hex().encode()
    return bytes(out[:BULK_UNIT])


def response_head(length: int, peer_port: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {length}\r\nx-peer-port: {peer_port}\r\n\r\n").encode()


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: fairness\r\n\r\n".encode()


def run_promptly() -> str:
    """SCHED_FIFO priority 1 for the calling process, else nice -10, else nothing.
    Returns which."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return "fifo"
    except (PermissionError, OSError, AttributeError):
        pass
    try:
        os.nice(-10)
        return "nice"
    except OSError:
        return "normal"


# ───────────────────────────── parsing ─────────────────────────────


class ParseError(Exception):
    pass


def split_head(buf: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """(status, lower-cased headers, rest) once `buf` holds a whole response head;
    None while it does not."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > 16384:
            raise ParseError("response head longer than 16 KiB")
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ParseError(f"not an HTTP/1 status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ParseError(f"bad header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, buf[end + 4:]


def read_head(s: socket.socket, buf: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    while True:
        got = split_head(buf)
        if got is not None:
            return got
        chunk = s.recv(65536)
        if not chunk:
            raise ParseError(f"connection closed after {len(buf)} bytes of a response head")
        buf += chunk


def read_small(s: socket.socket, buf: bytes = b"") -> tuple[bytes, dict[str, str], bytes]:
    """One whole small response: (body, headers, bytes after it)."""
    status, headers, rest = read_head(s, buf)
    if status != 200:
        raise ParseError(f"status {status}")
    try:
        length = int(headers["content-length"])
    except (KeyError, ValueError):
        raise ParseError(f"no usable Content-Length in {headers}") from None
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise ParseError(f"connection closed {length - len(rest)} bytes short of a body")
        rest += chunk
    return rest[:length], headers, rest[length:]


def percentile(sorted_vals: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an ascending list (q in 0..100)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, -(-len(sorted_vals) * q // 100) - 1))
    return sorted_vals[int(k)]


def summarise_rtts(rtts_us: list[float]) -> dict:
    s = sorted(rtts_us)
    return {"round_trips": len(s), "p50_us": percentile(s, 50), "p99_us": percentile(s, 99),
            "p999_us": percentile(s, 99.9), "max_us": s[-1] if s else None}


def bulk_rate(samples: list[list[float]], t0: float, t1: float) -> tuple[float | None, float | None]:
    """From the bulk client's (time, bytes so far) samples: MB/s over [t0, t1], and
    the slowest whole second within it (a stalled transfer shows as ~0). The span
    runs from the last sample before t0 to the first after t1: a bulk client that
    got no CPU during the window (`direct`, where the real-time round trips and
    the backend share the load CPU with it) records nothing inside it, but what
    it received meanwhile shows in its next sample."""
    before = [(t, b) for t, b in samples if t < t0][-1:]
    after = [(t, b) for t, b in samples if t > t1][:1]
    inside = before + [(t, b) for t, b in samples if t0 <= t <= t1] + after
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None, None
    mean = (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) / 1e6
    slowest = None
    j = 0
    for i, (t, b) in enumerate(inside):
        while j < len(inside) and inside[j][0] < t + 1.0:
            j += 1
        if j >= len(inside):
            break
        rate = (inside[j][1] - b) / (inside[j][0] - t) / 1e6
        slowest = rate if slowest is None else min(slowest, rate)
    return mean, slowest


# ───────────────────────────── the three programs ─────────────────────────────


def serve_connection(conn: socket.socket, peer_port: int, unit_fd: int) -> None:
    buf = b""
    prompt = False
    while True:
        end = buf.find(b"\r\n\r\n")
        while end < 0:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
            end = buf.find(b"\r\n\r\n")
        line = buf[:buf.find(b"\r\n")].decode("latin-1")
        buf = buf[end + 4:]
        path = line.split(" ")[1] if line.count(" ") >= 2 else ""
        if path == BULK_PATH:
            conn.sendall(response_head(BULK_LENGTH, peer_port))
            out = conn.fileno()
            while True:
                off = 0
                while off < BULK_UNIT:
                    n = os.sendfile(out, unit_fd, off, BULK_UNIT - off)
                    if n <= 0:
                        return
                    off += n
        if not prompt:
            run_promptly()
            prompt = True
        conn.sendall(response_head(len(SMALL_BODY), peer_port) + SMALL_BODY)


def backend_main(port: int) -> int:
    unit = bulk_unit()
    fd = os.memfd_create("bulk")
    os.write(fd, unit)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(128)
    import signal
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves
    while True:
        conn, peer = ls.accept()
        if os.fork() == 0:
            ls.close()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                serve_connection(conn, peer[1], fd)
            except OSError:
                pass
            os._exit(0)
        conn.close()


def bulk_main(port: int, seconds: float) -> int:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(request(BULK_PATH))
    status, headers, rest = read_head(s)
    if status != 200:
        raise ParseError(f"/bulk: status {status}")
    total = len(rest)
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    start = time.monotonic()
    samples = [[start, total]]
    next_sample = start + 0.1
    while True:
        n = s.recv_into(view)
        if n == 0:
            raise ParseError(f"/bulk ended after {total} bytes")
        total += n
        now = time.monotonic()
        if now >= next_sample:
            samples.append([now, total])
            next_sample = now + 0.1
            if now - start >= seconds:
                break
    json.dump({"samples": samples}, sys.stdout)
    print()
    return 0


def rtt_main(port: int, seconds: float) -> int:
    priority = run_promptly()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = request(SMALL_PATH)
    rtts = []
    rest = b""
    t0 = time.monotonic()
    end = t0 + seconds
    while True:
        a = time.perf_counter_ns()
        s.sendall(req)
        body, _, rest = read_small(s, rest)
        rtts.append((time.perf_counter_ns() - a) / 1e3)
        if body != SMALL_BODY:
            raise ParseError(f"/small: wrong body {body[:80]!r}")
        if time.monotonic() >= end:
            break
    out = {"t0": t0, "t1": time.monotonic(), "priority": priority, "rtts_us": rtts}
    json.dump(out, sys.stdout)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="perf/fairness.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("backend")
    b.add_argument("--port", type=int, required=True)
    for name in ("bulk", "rtt"):
        c = sub.add_parser(name)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--seconds", type=float, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "backend":
        return backend_main(args.port)
    if args.cmd == "bulk":
        return bulk_main(args.port, args.seconds)
    return rtt_main(args.port, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
