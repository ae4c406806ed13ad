"""RFC 9113 conformance cases for tests/h2_conformance.rs: raw frames against
the proxy's HTTP/2 server, written so that any correct server codec passes
(where the RFC lets the server choose, every allowed outcome is reported and
the Rust test accepts each of them).

Usage: h2_conformance.py PORT SCENARIO [ARG...]. Prints one JSON object.
`cases NAME...` runs one connection per case and prints {NAME: result};
each result says what the server did: `goaway` (GOAWAY error code),
`goaway_last` (its last-stream-id), `resets` (RST_STREAM codes by stream),
`status` (response status by stream), `ended` (streams whose response
ended), `after` (the status of a valid request sent afterwards on a new
stream, if the connection was still open). The frame helpers and constants
are tests/l7/h2_attack.py's.
"""
import hashlib
import json
import os
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from h2_attack import (  # noqa: E402
    ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE,
    RST_STREAM, SETTINGS, WINDOW_UPDATE, Conn, frame, request)

PRIORITY, PUSH_PROMISE = 2, 5
PADDED, PRIORITY_FLAG = 0x8, 0x20
MAX_WINDOW = (1 << 31) - 1


def raw_settings(*pairs, ack=False):
    return frame(SETTINGS, ACK if ack else 0, 0,
                 b"".join(struct.pack(">HI", k, v) for k, v in pairs))


class Peer(Conn):
    """h2_attack's connection, recording more of what the server sends:
    every frame's type and length, response fields and body bytes by
    stream, PING acknowledgements, SETTINGS acknowledgements, GOAWAY's
    last-stream-id, and the first bytes of every response header block (to
    see HPACK dynamic table size updates)."""

    def __init__(self, port, settings_pairs=(), hpack_limit=4096, **kw):
        self.fields = {}
        self.data = {}
        self.frames = []
        self.blocks = []
        self.pings = []
        self.settings_acks = 0
        self.goaway_last = None
        self.pending = None
        self.decode_errors = 0
        self.hpack_limit = hpack_limit
        super().__init__(port, preface=False, **kw)
        self.dec.max_allowed_table_size = hpack_limit
        self.send(PREFACE + raw_settings(*settings_pairs))

    def _on_frame(self, kind, flags, sid, p):
        self.frames.append((kind, flags, sid, len(p)))
        if kind == SETTINGS and flags & ACK:
            self.settings_acks += 1
        elif kind == PING and flags & ACK:
            self.pings.append(p)
        elif kind == GOAWAY:
            self.goaway_last = struct.unpack(">I", p[:4])[0] & 0x7FFFFFFF
        if kind == HEADERS:
            if not flags & END_HEADERS:
                self.pending = (sid, flags, p)
                return
            self._block(sid, flags, p)
        elif kind == CONTINUATION and self.pending:
            s, f, b = self.pending
            b += p
            if flags & END_HEADERS:
                self.pending = None
                self._block(s, f, b)
            else:
                self.pending = (s, f, b)
            return
        elif kind == DATA:
            self.data[sid] = self.data.get(sid, b"") + p
        if kind != HEADERS:
            super()._on_frame(kind, flags, sid, p)

    def _block(self, sid, flags, block):
        self.blocks.append(block[:4])
        try:
            fields = [(k.decode() if isinstance(k, bytes) else k,
                       v.decode() if isinstance(v, bytes) else v)
                      for k, v in self.dec.decode(block)]
        except Exception:
            self.decode_errors += 1
            self.status.setdefault(sid, -1)
            fields = []
        self.fields.setdefault(sid, []).extend(fields)
        for k, v in fields:
            if k == ":status":
                self.status[sid] = int(v)
        if flags & END_STREAM:
            self.ended.add(sid)

    def field(self, sid, name):
        return next((v for k, v in self.fields.get(sid, []) if k == name), None)

    def json_body(self, sid):
        try:
            return json.loads(self.data.get(sid, b"{}"))
        except ValueError:
            return {}

    def done(self, sid):
        return sid in self.ended or sid in self.resets or self.closed or self.goaway is not None

    def result(self, **extra):
        r = super().result(**extra)
        r["goaway_last"] = self.goaway_last
        r["ended"] = sorted(self.ended)
        r["decode_errors"] = self.decode_errors
        # §3.4: the server's preface is a SETTINGS frame (not an ACK).
        r["first_frame"] = list(self.frames[0][:2]) if self.frames else None
        r["settings_acks"] = self.settings_acks
        return r


def ready(port, settings_pairs=(), **kw):
    c = Peer(port, settings_pairs, **kw)
    c.server_settings.wait(30)
    return c


def after(c, sid):
    """A valid request on a new stream once the case is over: None if the
    connection is gone (a connection error), else its status."""
    c.wait(lambda: c.goaway is not None or c.closed, 0.3)
    if c.goaway is not None or c.closed:
        return None
    c.try_send(c.headers(sid, request("/after")))
    c.wait(lambda: c.done(sid), 30)
    return c.status.get(sid) if sid in c.ended else None


def post(c, sid, path="/post", extra=()):
    """Opens a request stream whose body is still to come."""
    return c.headers(sid, request(path, "POST", extra=extra), end_stream=False)


def settle(c, sid, secs=10):
    c.wait(lambda: c.done(sid), secs)


# --- Cases: one connection each. Each sends its frames, waits for the
# outcome on stream 1 (or the connection), then tries a valid request. ---

def malformed(fields, body=None, end_stream=True):
    """A request whose head is `fields` (hpack-encoded as given), with
    `body` as one DATA frame if any."""
    def run(c):
        c.try_send(frame(HEADERS, END_HEADERS | (END_STREAM if body is None and end_stream else 0),
                         1, c.enc.encode(fields)))
        if body is not None:
            c.try_send(frame(DATA, END_STREAM, 1, body))
        settle(c, 1)
    return run


def base(path="/m", method="GET"):
    return [(":method", method), (":scheme", "http"), (":authority", "victim"), (":path", path)]


def case_trailer_pseudo(c):
    c.try_send(post(c, 1) + frame(DATA, 0, 1, b"hello")
               + c.headers(1, [(":path", "/trailer"), ("x-t", "1")]))
    settle(c, 1)


def case_second_headers(c):
    # A second HEADERS without END_STREAM is neither trailers nor allowed.
    c.try_send(post(c, 1) + c.headers(1, [("x-more", "1")], end_stream=False))
    settle(c, 1)


def case_cl(declared, sent, end_with_headers=False):
    def run(c):
        fields = request("/m/cl-%d-%d" % (declared, sent), "POST",
                         extra=[("content-length", str(declared))])
        if end_with_headers:
            c.try_send(c.headers(1, fields, end_stream=True))
        else:
            c.try_send(c.headers(1, fields, end_stream=False)
                       + frame(DATA, END_STREAM, 1, b"x" * sent))
        settle(c, 1)
    return run


def case_self_dependency_headers(c):
    prio = struct.pack(">IB", 1, 15)
    c.try_send(frame(HEADERS, END_HEADERS | END_STREAM | PRIORITY_FLAG, 1,
                     prio + c.enc.encode(request("/m"))))
    settle(c, 1)


def case_self_dependency_priority(c):
    c.try_send(post(c, 1) + frame(PRIORITY, 0, 1, struct.pack(">IB", 1, 15)))
    settle(c, 1)


def case_wu_zero_stream(c):
    c.try_send(post(c, 1) + frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 0)))
    settle(c, 1)


def case_wu_stream_overflow(c):
    c.try_send(post(c, 1) + frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", MAX_WINDOW)))
    settle(c, 1)


def case_priority_bad_length(c):
    c.try_send(post(c, 1) + frame(PRIORITY, 0, 1, b"\0\0\0\0"))
    settle(c, 1)


def case_data_half_closed_remote(c):
    # The request ended with its HEADERS; its answer takes a while.
    c.try_send(c.headers(1, request("/sleep/1000")))
    time.sleep(0.2)
    c.try_send(frame(DATA, 0, 1, b"late"))
    settle(c, 1)
    c.wait(lambda: 1 in c.resets or c.goaway is not None or c.closed, 3)


def case_data_closed(c):
    c.try_send(c.headers(1, request("/m")))
    c.wait(lambda: 1 in c.ended, 10)
    c.ended.discard(1)
    c.try_send(frame(DATA, 0, 1, b"late"))
    c.wait(lambda: 1 in c.resets or c.goaway is not None or c.closed, 3)


def case_headers_closed_reuse(c):
    c.try_send(c.headers(1, request("/m")))
    c.wait(lambda: 1 in c.ended, 10)
    c.ended.discard(1)
    c.status.pop(1, None)
    c.try_send(c.headers(1, request("/m/again")))
    c.wait(lambda: 1 in c.resets or c.goaway is not None or c.closed or 1 in c.ended, 3)


def conn_case(data_fn):
    """A connection error is expected: send, wait for GOAWAY or close."""
    def run(c):
        c.try_send(data_fn(c))
        c.wait(lambda: c.goaway is not None or c.closed, 10)
    return run


def padded_data(payload, pad):
    return bytes([pad]) + payload + b"\0" * pad


CASES = {
    # §8.1.1, §8.2, §8.3: malformed requests, stream errors PROTOCOL_ERROR.
    "cl_short": case_cl(10, 5),
    "cl_long": case_cl(3, 5),
    "cl_no_data": case_cl(5, 0, end_with_headers=True),
    "keep_alive_header": malformed(base() + [("keep-alive", "timeout=5")]),
    "transfer_encoding_header": malformed(base("/m", "POST") + [("transfer-encoding", "chunked")],
                                          body=b"5\r\nhello\r\n0\r\n\r\n"),
    "upgrade_header": malformed(base() + [("upgrade", "websocket")]),
    "proxy_connection_header": malformed(base() + [("proxy-connection", "keep-alive")]),
    "pseudo_after_regular": malformed([(":method", "GET"), (":scheme", "http"),
                                       ("x-a", "1"), (":authority", "victim"), (":path", "/m")]),
    "missing_path": malformed([(":method", "GET"), (":scheme", "http"), (":authority", "victim")]),
    "missing_method": malformed([(":scheme", "http"), (":authority", "victim"), (":path", "/m")]),
    "missing_scheme": malformed([(":method", "GET"), (":authority", "victim"), (":path", "/m")]),
    "empty_path": malformed([(":method", "GET"), (":scheme", "http"), (":authority", "victim"),
                             (":path", "")]),
    "duplicate_path": malformed(base() + [(":path", "/m2")]),
    "unknown_pseudo": malformed(base() + [(":foo", "bar")]),
    "response_pseudo": malformed(base() + [(":status", "200")]),
    "trailer_pseudo": case_trailer_pseudo,
    "second_headers": case_second_headers,
    "value_crlf": malformed(base() + [("x-a", "a\r\nb")]),
    "value_nul": malformed(base() + [("x-a", "a\0b")]),
    "value_leading_space": malformed(base() + [("x-a", " a")]),
    "name_space": malformed(base() + [("x a", "1")]),
    # Stream errors of other kinds.
    "self_dependency_headers": case_self_dependency_headers,
    "self_dependency_priority": case_self_dependency_priority,
    "wu_zero_stream": case_wu_zero_stream,
    "wu_stream_overflow": case_wu_stream_overflow,
    "priority_bad_length": case_priority_bad_length,
    "data_half_closed_remote": case_data_half_closed_remote,
    "data_closed": case_data_closed,
    "headers_closed_reuse": case_headers_closed_reuse,
    # Connection errors.
    "continuation_no_headers": conn_case(
        lambda c: frame(CONTINUATION, END_HEADERS, 1, c.enc.encode(request("/m")))),
    "headers_interrupted": conn_case(
        lambda c: frame(HEADERS, END_STREAM, 1, c.enc.encode(request("/m")))
        + frame(PING, 0, 0, b"12345678")),
    "continuation_other_stream": conn_case(
        lambda c: frame(HEADERS, END_STREAM, 1, c.enc.encode(request("/m")))
        + frame(CONTINUATION, END_HEADERS, 3, c.enc.encode([("x-a", "1")]))),
    "rst_idle": conn_case(lambda c: frame(RST_STREAM, 0, 1, struct.pack(">I", 8))),
    "wu_idle": conn_case(lambda c: frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", 100))),
    "data_idle": conn_case(lambda c: frame(DATA, 0, 1, b"hello")),
    "settings_on_stream": conn_case(lambda c: frame(SETTINGS, 0, 1, b"")),
    "ping_on_stream": conn_case(lambda c: frame(PING, 0, 1, b"12345678")),
    "goaway_on_stream": conn_case(lambda c: frame(GOAWAY, 0, 1, b"\0" * 8)),
    "settings_bad_length": conn_case(lambda c: frame(SETTINGS, 0, 0, b"\0\3\0\0\0")),
    "settings_ack_payload": conn_case(lambda c: frame(SETTINGS, ACK, 0, b"\0\3\0\0\0\1")),
    "ping_bad_length": conn_case(lambda c: frame(PING, 0, 0, b"1234567")),
    "wu_bad_length": conn_case(lambda c: frame(WINDOW_UPDATE, 0, 0, b"\0\0\1")),
    "rst_bad_length": conn_case(lambda c: post(c, 1) + frame(RST_STREAM, 0, 1, b"\0\0\1")),
    "max_frame_size_small": conn_case(lambda c: raw_settings((5, 16383))),
    "max_frame_size_big": conn_case(lambda c: raw_settings((5, 1 << 24))),
    "enable_push_2": conn_case(lambda c: raw_settings((2, 2))),
    "initial_window_too_big": conn_case(lambda c: raw_settings((4, 1 << 31))),
    "wu_zero_connection": conn_case(lambda c: frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 0))),
    # §6.9.2: a new SETTINGS_INITIAL_WINDOW_SIZE that takes an open
    # stream's send window past 2^31-1.
    "settings_window_overflow": conn_case(
        lambda c: post(c, 1)
        + frame(WINDOW_UPDATE, 0, 1, struct.pack(">I", MAX_WINDOW - 65535))
        + raw_settings((4, 65536))),
    "data_pad_too_long": conn_case(
        lambda c: post(c, 1) + frame(DATA, PADDED, 1, bytes([10]) + b"hello")),
    "headers_pad_too_long": conn_case(
        lambda c: frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 1,
                        bytes([200]) + c.enc.encode(request("/m")))),
    # §4.2: a frame carrying a field block over SETTINGS_MAX_FRAME_SIZE
    # (16,384 by default) is a connection error FRAME_SIZE_ERROR.
    "headers_too_large": conn_case(
        lambda c: frame(HEADERS, END_HEADERS | END_STREAM, 1,
                        c.enc.encode(request("/m", extra=[("x-big", "v" * 20000)])))),
    "client_push_promise": conn_case(
        lambda c: post(c, 1) + frame(PUSH_PROMISE, END_HEADERS, 1,
                                     struct.pack(">I", 2) + c.enc.encode(request("/p")))),
}


def run_cases(port, names):
    out = {}
    for name in names:
        c = ready(port)
        CASES[name](c)
        r = c.result(after=after(c, 3 if name not in ("headers_closed_reuse", "data_closed")
                                 else 5))
        c.sock.close()
        out[name] = r
    return out


# --- Frames a server must accept or ignore (RFC 9113 §4.1, §5.1, §5.5,
# §6.2, §6.5.2, §6.7, §8.2.3). Every request must be answered. ---

def ignored(port):
    c = ready(port)
    sent_pings = b"ackackac"
    j = c.headers
    # Stream 1: unknown flag bits on HEADERS, the reserved bit set in the
    # stream identifier (§4.1: ignored), PRIORITY while open, an unknown
    # frame type between DATA frames (§5.5), padded DATA with an unknown
    # flag, empty DATA ending the stream. Then, on the connection: unknown
    # frame types, unknown SETTINGS identifiers (§6.5.2), an unsolicited
    # PING ACK (§6.7: no answer).
    hdr = c.enc.encode(request("/j/one", "POST", extra=[("content-length", "11")]))
    c.try_send(frame(HEADERS, END_HEADERS | 0x40 | 0x10 | 0x2, 1 | 0x80000000, hdr)
               + frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 3))
               + frame(DATA, PADDED | 0x80, 1, padded_data(b"hello", 100))
               + frame(0xFC, 0, 1, b"between")
               + frame(DATA, 0, 1, b" world")
               + frame(DATA, END_STREAM, 1, b"")
               + frame(0xFA, 0xFF, 0, b"unknown")
               + raw_settings((0x99, 7), (0xFFFF, 1))
               + frame(PING, ACK, 0, sent_pings))
    # Stream 3: PRIORITY while idle (§5.1 allows it; the stream stays idle),
    # then its HEADERS with the PRIORITY flag and padding; two cookie
    # fields (joined with "; " for HTTP/1, §8.2.3); te: trailers (the one
    # TE allowed, §8.2.2); an empty value.
    c.try_send(frame(PRIORITY, 0, 3, struct.pack(">IB", 0, 15)))
    prio = struct.pack(">IB", 1, 255)
    block = c.enc.encode(request("/j/three", extra=[("cookie", "a=1"), ("cookie", "b=2"),
                                                     ("te", "trailers"), ("x-empty", "")]))
    c.try_send(frame(HEADERS, END_HEADERS | END_STREAM | PADDED | PRIORITY_FLAG, 3,
                     bytes([7]) + prio + block + b"\0" * 7))
    # A PING (answered with the same payload) and stream 5 under a WINDOW_UPDATE
    # on the connection.
    c.try_send(frame(PING, 0, 0, b"pingpong") + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1000))
               + j(5, request("/j/five")))
    # Last (higher identifiers than any request): PRIORITY on idle streams
    # and an unknown frame type on one; none of them opens a stream.
    c.try_send(frame(PRIORITY, 0, 11, struct.pack(">IB", 0x80000009, 200))
               + frame(0xFB, 0, 13, b"x" * 100) + frame(PING, 0, 0, b"lastping"))
    c.wait(lambda: b"lastping" in c.pings or c.goaway is not None or c.closed, 10)
    c.wait(lambda: all(c.done(s) for s in (1, 3, 5)) and b"pingpong" in c.pings, 20)
    one, three = c.json_body(1), c.json_body(3)
    h3 = three.get("headers", {})
    return c.result(
        body_len_1=one.get("body_len"),
        body_sha_1=one.get("body_sha"),
        body_sha_want=hashlib.sha256(b"hello world").hexdigest(),
        cookie_3=h3.get("cookie"),
        empty_3=h3.get("x-empty"),
        pings=[p.decode("latin-1") for p in c.pings],
    )


# --- HPACK (RFC 7541) ---

def size_update(block):
    """The dynamic table size update at the start of a header block
    (RFC 7541 §6.3), or None."""
    if not block or block[0] & 0xE0 != 0x20:
        return None
    v = block[0] & 0x1F
    if v < 31:
        return v
    m, i = 0, 1
    while i < len(block):
        v += (block[i] & 0x7F) << m
        m += 7
        if not block[i] & 0x80:
            break
        i += 1
    return v


def hpack_tables(port):
    """The client's decoder table limited to 0 from the first SETTINGS, then
    raised to 4096, then lowered to 128: after each lowering, the server's
    first header block must start with a size update within the new limit
    (RFC 7541 §4.2). Responses with distinct header values (/bytes: a fresh
    SHA-256 each) churn the server's encoder table; requests with many
    distinct large fields churn ours, whose size the client itself changes
    mid-connection (RFC 7541 §6.3: 1024, 0, 4096). Everything must decode
    and carry the right values."""
    c = ready(port, [(1, 0)], hpack_limit=0)
    c.wait(lambda: c.settings_acks >= 1, 10)
    problems = []
    sid = 1
    checks = []

    def batch(n, lowered_to=None):
        nonlocal sid
        first = len(c.blocks)
        ids = []
        for i in range(n):
            if i % 2:
                path = "/bytes/%d" % (64 + sid)
                extra = []
            else:
                path = "/j/h/%d" % sid
                extra = [("x-big-%d-%d" % (sid, k), "%d-" % sid + "v" * (200 + 97 * k))
                         for k in range(4)]
            ids.append((sid, path, extra))
            if sid == 41:
                c.enc.header_table_size = 1024
            elif sid == 61:
                c.enc.header_table_size = 0
            elif sid == 81:
                c.enc.header_table_size = 4096
            c.try_send(c.headers(sid, request(path, extra=extra)))
            sid += 2
        c.wait(lambda: all(c.done(s) for s, _, _ in ids), 30)
        if lowered_to is not None:
            update = size_update(c.blocks[first]) if len(c.blocks) > first else None
            checks.append({"limit": lowered_to, "update": update})
            if update is None or update > lowered_to:
                problems.append("no size update <= %d at the start of the first block: %r"
                                % (lowered_to, c.blocks[first] if len(c.blocks) > first else None))
        for s, path, extra in ids:
            if c.status.get(s) != 200 or s not in c.ended:
                problems.append("stream %d: status %r" % (s, c.status.get(s)))
                continue
            if path.startswith("/bytes/"):
                sha = hashlib.sha256(c.data.get(s, b"")).hexdigest()
                if c.field(s, "x-body-sha256") != sha:
                    problems.append("stream %d: sha %r" % (s, c.field(s, "x-body-sha256")))
            else:
                seen = c.json_body(s).get("headers", {})
                for k, v in extra:
                    if seen.get(k) != v:
                        problems.append("stream %d: %s=%r" % (s, k, seen.get(k)))

    batch(20, lowered_to=0)
    c.try_send(raw_settings((1, 4096)))
    c.dec.max_allowed_table_size = 4096
    c.wait(lambda: c.settings_acks >= 2, 10)
    batch(60)
    # Lowered again: the limit holds once the server has acknowledged.
    c.dec.max_allowed_table_size = 128
    c.try_send(raw_settings((1, 128)))
    c.wait(lambda: c.settings_acks >= 3, 10)
    batch(20, lowered_to=128)
    return c.result(problems=problems, checks=checks, requests=sid // 2,
                    ok=sum(1 for s in c.status.values() if s == 200))


# --- Frame sizes (§4.2, §6.5.2) ---

def frame_sizes(port, max_frame):
    """A 300,000-byte response to a client allowing `max_frame`-byte frames
    (0: not said, 16,384) and opening every window: no frame above the
    limit, and the body whole."""
    pairs = [(4, MAX_WINDOW)] + ([(5, max_frame)] if max_frame else [])
    c = ready(port, pairs)
    c.try_send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535)))
    c.wait(lambda: c.settings_acks >= 1, 10)
    c.try_send(c.headers(1, request("/bytes/300000")))
    c.wait(lambda: c.done(1), 30)
    body = c.data.get(1, b"")
    return c.result(
        largest=max((n for k, _, _, n in c.frames if k in (DATA, HEADERS)), default=0),
        sha_ok=hashlib.sha256(body).hexdigest() == c.field(1, "x-body-sha256"),
        length=len(body))


# --- Client GOAWAY, pipelining, CONTINUATION (§6.8, §4.3) ---

def client_goaway(port):
    """Three requests in flight, then the client's GOAWAY (NO_ERROR, last
    stream 0: it accepts no pushed streams): every answer still comes whole."""
    c = ready(port)
    c.try_send(c.headers(1, request("/sleep/300")) + c.headers(3, request("/bytes/200000"))
               + c.headers(5, request("/sleep/600")) + frame(GOAWAY, 0, 0, b"\0" * 8))
    c.wait(lambda: all(c.done(s) for s in (1, 3, 5)), 30)
    return c.result(sha_ok=hashlib.sha256(c.data.get(3, b"")).hexdigest()
                    == c.field(3, "x-body-sha256"))


def pipeline(port, n):
    """n requests in one write; each answer must be for its own path."""
    c = ready(port)
    ids = list(range(1, 2 * n, 2))
    c.try_send(b"".join(c.headers(s, request("/pipe/%d" % s)) for s in ids))
    c.wait(lambda: all(c.done(s) for s in ids), 60)
    wrong = [s for s in ids if c.status.get(s) != 200 or s not in c.ended
             or c.json_body(s).get("path") != "/pipe/%d" % s]
    return c.result(wrong=wrong, ok=len(ids) - len(wrong))


def split_block(port, piece):
    """A request whose header block is cut into `piece`-byte pieces: HEADERS
    with the first, one CONTINUATION for each of the others."""
    c = ready(port)
    block = c.enc.encode(request("/cont/split", extra=[("x-split", "piece-by-piece-" * 3 + "end")]))
    pieces = [block[i:i + piece] for i in range(0, len(block), piece)]
    out = frame(HEADERS, END_STREAM | (END_HEADERS if len(pieces) == 1 else 0), 1, pieces[0])
    for i, p in enumerate(pieces[1:], 1):
        out += frame(CONTINUATION, END_HEADERS if i == len(pieces) - 1 else 0, 1, p)
    c.try_send(out)
    c.wait(lambda: c.done(1), 30)
    seen = c.json_body(1)
    return c.result(continuations=len(pieces) - 1, path=seen.get("path"),
                    split=seen.get("headers", {}).get("x-split"))


# --- Flow control against the client (§5.2, §6.9.1) ---

def data_over_window(port, path):
    """A request body to an upstream that never reads it, sent without
    regard to the window: the server's flow control must stop it with
    FLOW_CONTROL_ERROR (RST_STREAM or GOAWAY) once it exceeds what was
    granted, instead of buffering it or blocking the connection. `sent`: what
    went out before the error; `blocked`: a write stalled for 10 s."""
    c = ready(port)
    c.try_send(post(c, 1, path))
    piece = frame(DATA, 0, 1, b"x" * 16384)
    c.sock.settimeout(10)
    sent = 0
    blocked = False
    while sent < 256 << 20 and 1 not in c.resets and c.goaway is None and not c.closed:
        try:
            c.send(piece * 16)
        except socket.timeout:
            blocked = True
            break
        except OSError:
            break
        sent += 16 * 16384
    c.wait(lambda: 1 in c.resets or c.goaway is not None or c.closed, 10)
    return c.result(sent=sent, blocked=blocked)


def noread_streams(port, n, size, hold):
    """Opens every window (SETTINGS_INITIAL_WINDOW_SIZE 2^31-1 and the
    connection's), asks for n responses of `size` bytes, and does not read
    its socket for `hold` seconds (the test looks at the proxy meanwhile).
    Then reads what is there: `resets` (streams reset), `eof` (the proxy
    closed the connection), `received` (bytes)."""
    c = Peer(port, [(4, MAX_WINDOW)], read=False)
    c.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - 65535)))
    c.send(b"".join(c.headers(s, request("/big/%d" % size)) for s in range(1, 2 * n, 2)))
    print(json.dumps({"holding": True}), flush=True)
    time.sleep(hold)
    c.sock.settimeout(5)
    buf = b""
    eof = False
    try:
        while len(buf) < 1 << 30:
            d = c.sock.recv(1 << 20)
            if not d:
                eof = True
                break
            buf += d
    except OSError:
        pass
    resets = {}
    goaway = None
    i = 0
    while i + 9 <= len(buf):
        length = struct.unpack(">I", b"\0" + buf[i:i + 3])[0]
        kind, sid = buf[i + 3], struct.unpack(">I", buf[i + 5:i + 9])[0] & 0x7FFFFFFF
        if kind == RST_STREAM and i + 13 <= len(buf):
            resets[str(sid)] = struct.unpack(">I", buf[i + 9:i + 13])[0]
        elif kind == GOAWAY and i + 17 <= len(buf):
            goaway = struct.unpack(">I", buf[i + 13:i + 17])[0]
        i += 9 + length
    return {"received": len(buf), "eof": eof, "resets": resets, "goaway": goaway}


def main():
    port = int(sys.argv[1])
    scenario, args = sys.argv[2], sys.argv[3:]
    if scenario == "cases":
        r = run_cases(port, args)
    elif scenario == "ignored":
        r = ignored(port)
    elif scenario == "hpack_tables":
        r = hpack_tables(port)
    elif scenario == "frame_sizes":
        r = frame_sizes(port, int(args[0]))
    elif scenario == "client_goaway":
        r = client_goaway(port)
    elif scenario == "pipeline":
        r = pipeline(port, int(args[0]))
    elif scenario == "split_block":
        r = split_block(port, int(args[0]))
    elif scenario == "noread_streams":
        r = noread_streams(port, int(args[0]), int(args[1]), float(args[2]))
    elif scenario == "data_over_window":
        r = data_over_window(port, args[0])
    else:
        sys.exit("unknown scenario " + scenario)
    print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
