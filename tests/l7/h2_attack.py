"""HTTP/2 attackers for tests/h2_abuse.rs: raw frames (the `hpack` library
encodes header blocks; frames are written by hand, since the attacks need
frames that `h2`/`hyperframe` refuse to build: DATA on stream 0, oversized
frames, endless CONTINUATION).

Usage: h2_attack.py PORT SCENARIO [ARG...]. Prints one JSON object: what the
proxy did (`goaway`: the GOAWAY error code, `resets`: RST_STREAM codes by
stream, `status`: response status by stream, `closed`: the connection ended)
plus the scenario's own numbers. Error codes are RFC 9113 §7's numbers:
1 PROTOCOL_ERROR, 3 FLOW_CONTROL_ERROR, 6 FRAME_SIZE_ERROR, 7 REFUSED_STREAM,
8 CANCEL, 9 COMPRESSION_ERROR, 11 ENHANCE_YOUR_CALM.
"""
import json
import socket
import struct
import sys
import threading
import time

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    0, 1, 3, 4, 6, 7, 8, 9)
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
CANCEL = 8


def frame(kind, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid) + payload


def settings(**kv):
    ids = {"header_table_size": 1, "max_concurrent_streams": 3, "initial_window_size": 4,
           "max_frame_size": 5, "max_header_list_size": 6}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in kv.items()))


def request(path, method="GET", extra=()):
    return [(":method", method), (":scheme", "http"), (":authority", "victim"),
            (":path", path)] + list(extra)


class Conn:
    """One raw HTTP/2 connection; a reader thread records what comes back
    (unless `read` is false: an attacker that never reads)."""

    def __init__(self, port, read=True, client_settings=None, preface=True, window=True):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(60)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.dec.max_allowed_table_size = 1 << 16
        self.goaway = None
        self.resets = {}
        self.status = {}
        self.bodies = {}
        self.ended = set()
        self.closed = False
        self.server_settings = threading.Event()
        self.window = window
        self.lock = threading.Lock()
        if preface:
            self.send(PREFACE + settings(**(client_settings or {})))
        if read:
            threading.Thread(target=self._read, daemon=True).start()

    def send(self, data):
        with self.lock:
            self.sock.sendall(data)

    def try_send(self, data):
        """False once the connection is gone."""
        try:
            self.send(data)
            return True
        except OSError:
            return False

    def headers(self, sid, fields, end_stream=True, end_headers=True):
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        return frame(HEADERS, flags, sid, self.enc.encode(fields))

    def _recv_exact(self, n):
        out = b""
        while len(out) < n:
            d = self.sock.recv(n - len(out))
            if not d:
                raise EOFError
            out += d
        return out

    def _read(self):
        try:
            while True:
                h = self._recv_exact(9)
                length = struct.unpack(">I", b"\0" + h[:3])[0]
                kind, flags, sid = h[3], h[4], struct.unpack(">I", h[5:9])[0] & 0x7FFFFFFF
                p = self._recv_exact(length)
                self._on_frame(kind, flags, sid, p)
        except (EOFError, OSError):
            pass
        self.closed = True

    def _on_frame(self, kind, flags, sid, p):
        if kind == SETTINGS and not flags & ACK:
            self.try_send(frame(SETTINGS, ACK, 0))
            self.server_settings.set()
        elif kind == GOAWAY:
            self.goaway = struct.unpack(">I", p[4:8])[0]
        elif kind == RST_STREAM:
            self.resets[sid] = struct.unpack(">I", p)[0]
        elif kind == HEADERS:
            try:
                for k, v in self.dec.decode(p):
                    if k in (":status", b":status"):
                        self.status[sid] = int(v)
            except Exception:
                self.status.setdefault(sid, -1)
            if flags & END_STREAM:
                self.ended.add(sid)
        elif kind == DATA:
            self.bodies[sid] = self.bodies.get(sid, 0) + len(p)
            if self.window and p:
                inc = struct.pack(">I", len(p))
                self.try_send(frame(WINDOW_UPDATE, 0, 0, inc) + frame(WINDOW_UPDATE, 0, sid, inc))
            if flags & END_STREAM:
                self.ended.add(sid)

    def wait(self, cond, secs=60):
        deadline = time.time() + secs
        while time.time() < deadline:
            if cond():
                return True
            time.sleep(0.01)
        return False

    def wait_closed(self, secs=60):
        return self.wait(lambda: self.closed or self.goaway is not None, secs)

    def result(self, **extra):
        r = {"goaway": self.goaway, "closed": self.closed,
             "resets": {str(k): v for k, v in self.resets.items()},
             "status": {str(k): v for k, v in self.status.items()},
             "bodies": {str(k): v for k, v in self.bodies.items()}}
        r.update(extra)
        return r


def closed_while_not_reading(c, secs):
    """Waits for the proxy to close a connection this side never reads: the
    kernel then answers our next byte with a reset (or reads give EOF)."""
    deadline = time.time() + secs
    c.sock.settimeout(1)
    while time.time() < deadline:
        try:
            # Drain what the proxy wrote, looking for the end.
            while True:
                d = c.sock.recv(1 << 20)
                if not d:
                    return True
        except socket.timeout:
            pass
        except OSError:
            return True
    return False


def rapid_reset(port, n, paced):
    """CVE-2023-44487: open a stream and cancel it at once, n times. `paced`
    lets the proxy accept each batch first (so the resets are the proxy's
    premature resets, not h2's resets-before-accept)."""
    c = Conn(port)
    c.server_settings.wait(30)
    sent = 0
    sid = 1
    batch = 10 if paced else 100
    while sent < n and c.goaway is None and not c.closed:
        ids = list(range(sid, sid + 2 * batch, 2))
        sid += 2 * batch
        # (Each header block is encoded once, in the order it is sent: the
        # HPACK table is shared state.)
        heads = [c.headers(i, request("/sleep/1000")) for i in ids]
        rsts = [frame(RST_STREAM, 0, i, struct.pack(">I", CANCEL)) for i in ids]
        if paced:
            ok = c.try_send(b"".join(heads))
            time.sleep(0.1)
            ok = ok and c.try_send(b"".join(rsts))
        else:
            ok = c.try_send(b"".join(h + r for h, r in zip(heads, rsts)))
        if not ok:
            break
        sent += batch
    c.wait_closed(60)
    return c.result(streams=sent)


def continuation(port, size):
    """CVE-2024-27316 family: a header block that never ends, across
    CONTINUATION frames of `size` bytes (0: empty frames)."""
    c = Conn(port)
    c.server_settings.wait(30)
    c.send(frame(HEADERS, 0, 1, c.enc.encode(request("/"))))
    frames = 0
    sent = 0
    i = 0
    block = b""
    while c.goaway is None and not c.closed and sent < 256 << 20:
        while len(block) < size:
            # Literal without indexing, new name: nothing enters the table.
            name, value = b"x-%d" % i, b"v" * 40
            block += b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value
            i += 1
        piece, block = block[:size], block[size:]
        if not c.try_send(frame(CONTINUATION, 0, 1, piece)):
            break
        frames += 1
        sent += 9 + size
    c.wait_closed(60)
    return c.result(frames=frames, bytes=sent)


def big_headers(port, total):
    """One request whose header list is `total` bytes (over the limit),
    correctly framed; then an ordinary request on the same connection."""
    c = Conn(port)
    c.server_settings.wait(30)
    extra = [("x-big-%d" % i, "v" * 1000) for i in range(total // 1032 + 1)]
    block = c.enc.encode(request("/big-headers", extra=extra))
    pieces = [block[i:i + 16384] for i in range(0, len(block), 16384)]
    out = frame(HEADERS, END_STREAM | (END_HEADERS if len(pieces) == 1 else 0), 1, pieces[0])
    for j, p in enumerate(pieces[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if j == len(pieces) - 1 else 0, 1, p)
    c.try_send(out)
    c.wait(lambda: "1" in c.resets or 1 in c.ended or c.goaway is not None or c.closed, 30)
    after = None
    if c.goaway is None and not c.closed:
        c.try_send(c.headers(3, request("/after")))
        c.wait(lambda: 3 in c.ended or 3 in c.resets or c.closed, 30)
        after = c.status.get(3)
    return c.result(after=after, header_bytes=len(block))


def hpack_table(port, kind):
    """HPACK table abuse. `update`: a dynamic table size update above what
    the proxy advertised (4096); `index`: a reference to an entry that does
    not exist; `huge_setting`: the client offers a 4 GiB table for the
    proxy's encoder, then makes ordinary requests (served, memory flat)."""
    if kind == "huge_setting":
        c = Conn(port, client_settings={"header_table_size": 0xFFFFFFFF})
        c.server_settings.wait(30)
        sid = 1
        for _ in range(10):
            for _ in range(20):
                c.try_send(c.headers(sid, request("/t/%d" % sid, extra=[("x-n", str(sid))])))
                sid += 2
            c.wait(lambda: len(c.ended) >= sid // 2 or c.closed, 60)
        return c.result(ok=sum(1 for s in c.status.values() if s == 200))
    c = Conn(port)
    c.server_settings.wait(30)
    if kind == "update":
        block = b"\x3f\xe1\xff\x03" + hpack.Encoder().encode(request("/"))  # size update to 65536
    else:
        block = b"\xff\x7f" + hpack.Encoder().encode(request("/"))  # index 190: empty table
    c.try_send(frame(HEADERS, END_STREAM | END_HEADERS, 1, block))
    c.wait_closed(30)
    return c.result()


def flood(port, kind, n):
    """Control-frame floods from a client that never reads what the proxy
    answers: `settings`, `ping` (each wants an ACK), `window_update`
    (increments of 1 on the connection), `empty_data` (empty DATA frames on an
    open request stream: reads afterwards, to see the request answered).
    Sends until n frames, the proxy stops reading (our send blocks for 5 s:
    backpressure) or the connection closes; then, still not reading, waits for
    the proxy to close it (it must not hold it forever)."""
    reading = kind == "empty_data"
    c = Conn(port, read=reading)
    if kind == "settings":
        one = frame(SETTINGS, 0, 0, struct.pack(">HI", 3, 100))
    elif kind == "ping":
        one = frame(PING, 0, 0, b"12345678")
    elif kind == "window_update":
        one = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1))
    elif kind == "empty_data":
        c.server_settings.wait(30)
        c.send(c.headers(1, request("/echo", "POST"), end_stream=False))
        one = frame(DATA, 0, 1)
    batch = 1000
    c.sock.settimeout(5)
    sent = 0
    blocked = False
    gone = False
    while sent < n:
        try:
            c.send(one * batch)
        except socket.timeout:
            blocked = True
            break
        except OSError:
            gone = True
            break
        sent += batch
    res = {"frames": sent, "blocked": blocked, "gone": gone}
    if kind == "empty_data":
        if not gone:
            c.sock.settimeout(60)
            c.try_send(frame(DATA, END_STREAM, 1, b"x"))
            c.wait(lambda: 1 in c.ended or 1 in c.resets or c.closed or c.goaway is not None, 60)
        return c.result(**res)
    res["closed_later"] = closed_while_not_reading(c, 90)
    return c.result(**res)


def window_overflow(port):
    """WINDOW_UPDATEs that push the connection window past 2^31-1
    (RFC 9113 §6.9.1: FLOW_CONTROL_ERROR)."""
    c = Conn(port)
    c.server_settings.wait(30)
    inc = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0x7FFFFFFF))
    c.try_send(inc + inc)
    c.wait_closed(30)
    return c.result()


def zero_window(port, size, mode, hold):
    """A large response to a client that does not read it: `settings` opens
    no stream window (SETTINGS_INITIAL_WINDOW_SIZE 0), `noread` opens huge
    windows but never reads the socket. The proxy must give the stream up
    after stream_idle_timeout, holding a bounded amount meanwhile."""
    if mode == "settings":
        c = Conn(port, client_settings={"initial_window_size": 0}, window=False)
        c.server_settings.wait(30)
        c.send(c.headers(1, request("/big/%d" % size)))
        c.wait(lambda: "1" in c.resets or 1 in c.resets or c.closed, 90)
        # A second request on the same connection is still answered (its
        # headers need no window); the connection lives on.
        return c.result()
    c = Conn(port, read=False)
    big = struct.pack(">I", 0x7FFFFFFF - 65535)
    c.send(frame(WINDOW_UPDATE, 0, 0, big))
    c.send(c.headers(1, request("/big/%d" % size)) + frame(WINDOW_UPDATE, 0, 1, big))
    # Never read; the proxy's writes stall. Held for the test to look at the
    # proxy (memory, counters) meanwhile.
    time.sleep(hold)
    c.sock.settimeout(5)
    got = 0
    reset_seen = False
    try:
        # Now read everything: the response must have been cut short.
        buf = b""
        while True:
            d = c.sock.recv(1 << 20)
            if not d:
                break
            buf += d
            got += len(d)
            if len(buf) > 64 << 20:
                break
    except OSError:
        pass
    # Frame walk of what was buffered: was there a RST_STREAM for stream 1?
    i = 0
    while i + 9 <= len(buf):
        length = struct.unpack(">I", b"\0" + buf[i:i + 3])[0]
        if buf[i + 3] == RST_STREAM and struct.unpack(">I", buf[i + 5:i + 9])[0] & 0x7FFFFFFF == 1:
            reset_seen = True
        i += 9 + length
    return {"received": got, "reset_seen": reset_seen}


def invalid(port, kind):
    """Protocol violations, RFC 9113 §5.4: connection errors end in GOAWAY,
    stream errors in RST_STREAM with the connection still usable."""
    if kind == "bad_preface":
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(30)
        s.sendall(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + settings())
        got = b""
        try:
            while True:
                d = s.recv(65536)
                if not d:
                    break
                got += d
        except OSError:
            pass
        return {"closed": True, "reply": got[:64].decode("latin-1")}
    if kind == "first_frame_not_settings":
        c = Conn(port, preface=False)
        c.send(PREFACE + frame(PING, 0, 0, b"12345678"))
        c.wait_closed(30)
        return c.result()
    c = Conn(port)
    c.server_settings.wait(30)
    after_sid = 3
    if kind == "data_stream_0":
        c.try_send(frame(DATA, 0, 0, b"hello"))
    elif kind == "headers_even":
        c.try_send(c.headers(2, request("/")))
    elif kind == "frame_too_large":
        c.try_send(c.headers(1, request("/echo", "POST"), end_stream=False)
                   + frame(DATA, 0, 1, b"x" * 16385))
    elif kind == "stream_id_backwards":
        c.try_send(c.headers(5, request("/")) + c.headers(3, request("/")))
    elif kind == "connection_header":
        c.try_send(c.headers(1, request("/", extra=[("connection", "keep-alive")])))
    elif kind == "uppercase_header":
        c.try_send(c.headers(1, request("/", extra=[("X-Upper", "1")])))
    elif kind == "te_gzip":
        c.try_send(c.headers(1, request("/", extra=[("te", "gzip")])))
    c.wait(lambda: c.goaway is not None or c.closed or c.resets, 30)
    after = None
    if c.goaway is None and not c.closed:
        c.try_send(c.headers(after_sid, request("/after")))
        c.wait(lambda: after_sid in c.ended or after_sid in c.resets or c.closed, 30)
        after = c.status.get(after_sid)
    return c.result(after=after)


def max_streams(port, n):
    """Opens n slow streams, then one more: the one over the proxy's
    SETTINGS_MAX_CONCURRENT_STREAMS is refused (REFUSED_STREAM) while the
    others are answered."""
    c = Conn(port)
    c.server_settings.wait(30)
    # Let our ACK of the server's SETTINGS get there first.
    time.sleep(0.2)
    ids = list(range(1, 2 * n + 1, 2))
    c.send(b"".join(c.headers(i, request("/sleep/3000")) for i in ids))
    extra = 2 * n + 1
    c.send(c.headers(extra, request("/one-too-many")))
    c.wait(lambda: all(i in c.ended or i in c.resets for i in ids + [extra]) or c.closed, 120)
    ok = sum(1 for i in ids if c.status.get(i) == 200 and i in c.ended)
    return c.result(ok=ok, extra=extra)


def early_response(port, path, authority, total, declared):
    """Not an attack: uploads up to `total` bytes (with a content-length if
    `declared`, else without),
    1,000 bytes every 20 ms, and stops once the proxy has answered. A proxy
    that answers early (413 over a body limit) must end the request side
    with RST_STREAM NO_ERROR (RFC 9113 §8.1), not leave it open or CANCEL
    it. (curl 7.88 reports such an answer as an empty reply when the reset
    beats the end of its upload, so the tests use this client for it.)"""
    c = Conn(port)
    c.server_settings.wait(30)
    fields = [(":method", "PUT"), (":scheme", "http"), (":authority", authority),
              (":path", path)] + ([("content-length", str(total))] if declared else [])
    c.send(c.headers(1, fields, end_stream=False))
    sent = 0
    while sent < total and 1 not in c.ended and not c.closed:
        if not c.try_send(frame(DATA, 0, 1, b"x" * 1000)):
            break
        sent += 1000
        time.sleep(0.02)
    c.wait(lambda: (1 in c.ended and 1 in c.resets) or c.closed, 30)
    return c.result(sent=sent)


def main():
    port = int(sys.argv[1])
    scenario = sys.argv[2]
    args = sys.argv[3:]
    if scenario == "rapid_reset":
        r = rapid_reset(port, int(args[0]), args[1] == "paced")
    elif scenario == "continuation":
        r = continuation(port, int(args[0]))
    elif scenario == "big_headers":
        r = big_headers(port, int(args[0]))
    elif scenario == "hpack_table":
        r = hpack_table(port, args[0])
    elif scenario == "flood":
        r = flood(port, args[0], int(args[1]))
    elif scenario == "window_overflow":
        r = window_overflow(port)
    elif scenario == "zero_window":
        r = zero_window(port, int(args[0]), args[1], float(args[2]) if len(args) > 2 else 5)
    elif scenario == "invalid":
        r = invalid(port, args[0])
    elif scenario == "early_response":
        r = early_response(port, args[0], args[1], int(args[2]), args[3:] == ["declared"])
    elif scenario == "max_streams":
        r = max_streams(port, int(args[0]))
    else:
        sys.exit("unknown scenario " + scenario)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
