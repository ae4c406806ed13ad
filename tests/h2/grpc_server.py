"""gRPC test server for tests/grpc.rs: Python grpcio with generic handlers
and raw bytes as messages (no protoc, no generated code).

Usage: grpc_server.py. Listens on 127.0.0.1 (a port of its own choosing) and
prints "ready PORT". Service "test.T", methods:
  Echo      unary: the request back
  Meta      unary: JSON of the invocation metadata and the time remaining
  Sum       client streaming: JSON {"count", "len", "sha"} of all requests
  Repeat    server streaming: request JSON {"n", "size"}: n messages of
            size bytes, message i filled with byte i % 256
  Chat      bidi: every request answered with b"pong:" + request, one at a
            time as it arrives
  Sleep     unary: request "MS KEY": sleeps MS ms (noticing cancellation),
            then b"slept"; a call cancelled on the way is counted under KEY
  Fail      unary: aborts NOT_FOUND, message "no such thing", trailing
            metadata x-detail: why
  Flaky     unary: request "N KEY": the first N calls with KEY abort
            UNAVAILABLE, later ones answer the call's number
  Count     unary: request KEY: calls (Flaky) and cancellations (Sleep) seen
            for KEY, as JSON
"""
import hashlib
import json
import sys
import threading
import time
from concurrent import futures

import grpc

LOCK = threading.Lock()
CALLS = {}
CANCELLED = {}


def ident(b):
    return b


def echo(req, ctx):
    return req


def meta(req, ctx):
    md = {}
    for k, v in ctx.invocation_metadata():
        md.setdefault(k, []).append(v if isinstance(v, str) else v.decode("latin-1"))
    return json.dumps({"metadata": md, "time_remaining": ctx.time_remaining()}).encode()


def total(it, ctx):
    h = hashlib.sha256()
    count = n = 0
    for m in it:
        count += 1
        n += len(m)
        h.update(m)
    return json.dumps({"count": count, "len": n, "sha": h.hexdigest()}).encode()


def repeat(req, ctx):
    r = json.loads(req)
    for i in range(r["n"]):
        yield bytes([i % 256]) * r["size"]


def chat(it, ctx):
    for m in it:
        yield b"pong:" + m


def sleep(req, ctx):
    ms, key = req.decode().split()
    end = time.monotonic() + int(ms) / 1000
    while time.monotonic() < end:
        if not ctx.is_active():
            with LOCK:
                CANCELLED[key] = CANCELLED.get(key, 0) + 1
            return b""
        time.sleep(0.01)
    return b"slept"


def fail(req, ctx):
    ctx.set_trailing_metadata((("x-detail", "why"),))
    ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def flaky(req, ctx):
    n, key = req.decode().split()
    with LOCK:
        CALLS[key] = CALLS.get(key, 0) + 1
        k = CALLS[key]
    if k <= int(n):
        ctx.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")
    return str(k).encode()


def count(req, ctx):
    key = req.decode()
    with LOCK:
        return json.dumps({"calls": CALLS.get(key, 0), "cancelled": CANCELLED.get(key, 0)}).encode()


def main():
    u = lambda f: grpc.unary_unary_rpc_method_handler(f, ident, ident)
    handlers = {
        "Echo": u(echo),
        "Meta": u(meta),
        "Sum": grpc.stream_unary_rpc_method_handler(total, ident, ident),
        "Repeat": grpc.unary_stream_rpc_method_handler(repeat, ident, ident),
        "Chat": grpc.stream_stream_rpc_method_handler(chat, ident, ident),
        "Sleep": u(sleep),
        "Fail": u(fail),
        "Flaky": u(flaky),
        "Count": u(count),
    }
    big = 64 << 20
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=32),
        options=[
            ("grpc.max_send_message_length", big),
            ("grpc.max_receive_message_length", big),
        ],
    )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.T", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("ready %d" % port, flush=True)
    # Until the test kills it (or its stdin closes).
    sys.stdin.read()
    server.stop(0)


main()
