"""gRPC test client for tests/grpc.rs (Python grpcio, raw bytes as messages).

Usage: grpc_client.py ADDR COMMAND ARGS... Prints one JSON object: "code"
(the status name, "OK" on success), "details", "trailing" (trailing
metadata) and what the command checked. Commands:
  echo SIZE              unary Echo of SIZE random bytes: "equal"
  meta                   unary Meta with x-custom metadata: "reply"
  sum N SIZE             client streaming: "reply", "sha" sent
  repeat N SIZE          server streaming: "count", "correct"
  chat N                 bidi ping-pong: each ping sent only after the pong
                         to the one before it arrived: "pongs"
  call PATH TIMEOUT BODY unary to any method (TIMEOUT seconds, 0: none): "reply"
"""
import hashlib
import json
import os
import queue
import sys

import grpc

ADDR, CMD, ARGS = sys.argv[1], sys.argv[2], sys.argv[3:]
BIG = 64 << 20
ident = lambda b: b
channel = grpc.insecure_channel(
    ADDR,
    options=[
        ("grpc.max_send_message_length", BIG),
        ("grpc.max_receive_message_length", BIG),
        # The proxy's retries are under test, not the library's.
        ("grpc.enable_retries", 0),
    ],
)
TIMEOUT = 60
out = {"code": "OK", "details": None, "trailing": {}}


def method(kind, name):
    return getattr(channel, kind)("/test.T/" + name, request_serializer=ident, response_deserializer=ident)


def run():
    if CMD == "echo":
        data = os.urandom(int(ARGS[0]))
        reply = method("unary_unary", "Echo")(data, timeout=TIMEOUT)
        out["equal"] = reply == data
        out["len"] = len(reply)
    elif CMD == "meta":
        reply = method("unary_unary", "Meta")(b"", timeout=TIMEOUT, metadata=(("x-custom", "v1"),))
        out["reply"] = json.loads(reply)
    elif CMD == "sum":
        n, size = int(ARGS[0]), int(ARGS[1])
        msgs = [os.urandom(size) for _ in range(n)]
        reply = method("stream_unary", "Sum")(iter(msgs), timeout=TIMEOUT)
        out["reply"] = json.loads(reply)
        out["sha"] = hashlib.sha256(b"".join(msgs)).hexdigest()
    elif CMD == "repeat":
        n, size = int(ARGS[0]), int(ARGS[1])
        req = json.dumps({"n": n, "size": size}).encode()
        count = 0
        correct = True
        for i, m in enumerate(method("unary_stream", "Repeat")(req, timeout=TIMEOUT)):
            count += 1
            correct = correct and m == bytes([i % 256]) * size
        out["count"] = count
        out["correct"] = correct
    elif CMD == "chat":
        n = int(ARGS[0])
        q = queue.Queue()

        def pings():
            # The next ping only once the previous pong is in: this call
            # finishes only if the proxy streams both ways at once.
            for i in range(n):
                yield q.get(timeout=TIMEOUT)
            q.get(timeout=TIMEOUT)

        q.put(b"ping 0")
        pongs = []
        for m in method("stream_stream", "Chat")(pings(), timeout=TIMEOUT):
            pongs.append(m.decode())
            q.put(b"ping %d" % len(pongs) if len(pongs) < n else None)
        out["pongs"] = pongs
    elif CMD == "call":
        path, timeout, body = ARGS[0], float(ARGS[1]), ARGS[2].encode()
        m = channel.unary_unary(path, request_serializer=ident, response_deserializer=ident)
        reply = m(body, timeout=timeout or TIMEOUT)
        out["reply"] = reply.decode("latin-1")
    else:
        raise SystemExit("unknown command " + CMD)


try:
    run()
except grpc.RpcError as e:
    out["code"] = e.code().name
    out["details"] = e.details()
    out["trailing"] = {k: v if isinstance(v, str) else v.decode("latin-1") for k, v in (e.trailing_metadata() or ())}
print(json.dumps(out), flush=True)
