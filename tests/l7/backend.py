"""Test backend for tests/l7_proxy.rs: echoes what it received as JSON.

Usage: backend.py PORT NAME [BIND_ADDR]. Prints "ready" once listening.
Paths: /count (requests seen so far, not counted itself), /last (the JSON
of the last request answered with JSON, "null" before any; not counted
itself), /fail/N/KEY (503 for
the first N requests with KEY), /sleep/MS, /echo (body back, chunked),
/big/N (N bytes of body, written
64 KiB at a time), /close... (answers, then closes without saying so), /drop... (the second
request on a connection is closed unanswered), /reset/N/KEY (the first N
requests with KEY are closed unanswered), /early... (answers 413 before reading
the body, see EARLY_BODY: /early closes at once, so the unread body makes the
kernel reset the connection; /early-drain says Connection: close, then reads
and drops the body until EOF; /early-keep says nothing about the connection,
then does the same), /bytes/N (N random bytes with Content-Length, their
SHA-256 in X-Body-Sha256), /bytes-chunked/N (the same, chunked, the SHA-256
in a trailer X-Body-Sha256 too), /hop (a JSON answer carrying
connection-specific fields: Connection naming X-Hop, Keep-Alive, X-Hop,
Proxy-Connection), anything else: JSON.
A request with Upgrade: websocket gets 101 and then a raw byte echo.
"""
import hashlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
NAME = sys.argv[2]
BIND = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
LOCK = threading.Lock()
COUNT = 0
FAILS = {}
LAST = None
# The early answer's body: 16 KiB, every line different, so a lost or
# reordered byte shows.
EARLY_BODY = b"".join(b"early answer line %06d\n" % i for i in range(712))[:16384]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # The head and the body are separate writes: with Nagle on, the body waits
    # for the ACK of the head (delayed ACK, ~40 ms per response).
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n)

    def reply(self, code, body):
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_any(self):
        global COUNT, LAST
        if self.path == "/count":
            with LOCK:
                n = COUNT
            return self.reply(200, str(n).encode())
        if self.path == "/last":
            with LOCK:
                last = LAST
            return self.reply(200, json.dumps(last).encode())
        self.seen = getattr(self, "seen", 0) + 1
        if self.path.startswith("/drop") and self.seen >= 2:
            # A keep-alive connection the server gives up on just as the next
            # request arrives: closed with no response byte, not counted.
            self.close_connection = True
            return
        with LOCK:
            COUNT += 1
        path = self.path
        if path.startswith("/early"):
            return self.early(path)
        data = self.read_body()
        if path.startswith("/fail/"):
            _, _, n, key = path.split("/", 3)
            with LOCK:
                FAILS[key] = FAILS.get(key, 0) + 1
                k = FAILS[key]
            if k <= int(n):
                return self.reply(503, b"failing on purpose")
        if path.startswith("/reset/"):
            _, _, n, key = path.split("/", 3)
            with LOCK:
                FAILS[key] = FAILS.get(key, 0) + 1
                k = FAILS[key]
            if k <= int(n):
                # Gone before any response byte.
                self.close_connection = True
                return
        if path.startswith("/sleep/"):
            time.sleep(int(path.split("/")[2]) / 1000)
        if self.headers.get("Upgrade", "").lower() == "websocket":
            self.send_response(101)
            self.send_header("Upgrade", "websocket")
            self.send_header("Connection", "Upgrade")
            self.end_headers()
            self.wfile.flush()
            conn = self.connection
            while True:
                d = conn.recv(65536)
                if not d:
                    break
                conn.sendall(d)
            self.close_connection = True
            return
        if path.startswith("/bytes/") or path.startswith("/bytes-chunked/"):
            return self.random_bytes(path)
        if path.startswith("/big/"):
            n = int(path.split("/")[2])
            self.send_response(200)
            self.send_header("Content-Length", str(n))
            self.end_headers()
            piece = b"b" * 65536
            try:
                while n > 0:
                    self.wfile.write(piece[: min(n, len(piece))])
                    n -= min(n, len(piece))
            except OSError:
                self.close_connection = True
            return
        if path.startswith("/echo"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(data), 65536):
                c = data[i : i + 65536]
                self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        info = {
            "backend": NAME,
            "method": self.command,
            "path": path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body_len": len(data),
            "body_sha": hashlib.sha256(data).hexdigest(),
        }
        with LOCK:
            LAST = info
        if path.startswith("/hop"):
            body = json.dumps(info).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "keep-alive, X-Hop")
            self.send_header("Keep-Alive", "timeout=30")
            self.send_header("X-Hop", "1")
            self.send_header("Proxy-Connection", "keep-alive")
            self.send_header("X-End-To-End", "kept")
            self.end_headers()
            self.wfile.write(body)
            return
        self.reply(200, json.dumps(info).encode())
        if path.startswith("/close"):
            # Keep-alive as far as the proxy can tell, then gone.
            self.close_connection = True

    def random_bytes(self, path):
        # Written in pieces, so the proxy streams it rather than getting it whole.
        n = int(path.split("/")[2].split("?")[0])
        data = os.urandom(n)
        sha = hashlib.sha256(data).hexdigest()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("X-Body-Sha256", sha)
        chunked = path.startswith("/bytes-chunked/")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Trailer", "X-Body-Sha256, X-Body-Len")
        else:
            self.send_header("Content-Length", str(n))
        self.end_headers()
        for i in range(0, n, 65536):
            c = data[i : i + 65536]
            self.wfile.write(b"%x\r\n" % len(c) + c + b"\r\n" if chunked else c)
        if chunked:
            self.wfile.write(
                b"0\r\nX-Body-Sha256: %s\r\nX-Body-Len: %d\r\n\r\n" % (sha.encode(), n)
            )

    def early(self, path):
        # Answer before reading the body, as a server refusing an upload does.
        self.send_response(413)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(EARLY_BODY)))
        if not path.startswith("/early-keep"):
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(EARLY_BODY)
        self.wfile.flush()
        if path.startswith("/early-drain") or path.startswith("/early-keep"):
            while self.rfile.read1(65536):
                pass
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = handle_any


# A deep backlog: the HTTP/2 tests open 100 upstream connections at once
# (socketserver's default of 5 drops SYNs, and a retried SYN waits seconds).
ThreadingHTTPServer.request_queue_size = 1024
server = ThreadingHTTPServer((BIND, PORT), Handler)
server.daemon_threads = True
print("ready", flush=True)
server.serve_forever()
