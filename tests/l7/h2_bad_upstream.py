"""An HTTP/2 upstream that breaks the protocol on request, for
tests/h2_proxy.rs (the Python `h2` library, with raw frames where the
library would refuse to send them).

    h2_bad_upstream.py PORT   listens on 127.0.0.1:PORT, prints "ready";
        answers by path:
        /ok          200 "ok"
        /no-status   a head without :status (a malformed response)
        /upper       a head with an uppercase field name (malformed)
        /data-first  DATA before any head (a stream error)
        /break       DATA on stream 0 (a connection error)
"""
import sys

import h2.config
import h2.connection
import h2.events
import hpack

from h2_upstream import listen_and_serve


def frame(kind, flags, stream, payload):
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + stream.to_bytes(4, "big") + payload)


def serve_conn(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    enc = hpack.Encoder()
    while True:
        data = sock.recv(65536)
        if not data:
            return
        raw = b""
        for ev in conn.receive_data(data):
            if not isinstance(ev, h2.events.RequestReceived):
                continue
            sid = ev.stream_id
            path = dict(ev.headers)[b":path"]
            if path == b"/ok":
                conn.send_headers(sid, [(":status", "200"), ("content-length", "2")])
                conn.send_data(sid, b"ok", end_stream=True)
            elif path == b"/no-status":
                # A block of our own encoder: the library's stays in step
                # only with what it encodes itself, so these use literals
                # never indexed (no table change on either side).
                block = b"\x10" + bytes([len(b"x-a")]) + b"x-a" + b"\x01" + b"1"
                raw += frame(1, 0x5, sid, block)
            elif path == b"/upper":
                block = b"\x88" + b"\x10" + bytes([len(b"X-Upper")]) + b"X-Upper" + b"\x01" + b"1"
                raw += frame(1, 0x5, sid, block)
            elif path == b"/data-first":
                raw += frame(0, 0x1, sid, b"early")
            elif path == b"/break":
                raw += frame(0, 0x0, 0, b"x")
        sock.sendall(conn.data_to_send() + raw)


def main(port):
    listen_and_serve(port, serve_conn)


if __name__ == "__main__":
    main(int(sys.argv[1]))
