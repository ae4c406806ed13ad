"""HPACK's never-indexed mark (RFC 7541 §6.2.3, §7.1.3) through a proxy, for
tests/h2_proxy.rs, with the Python `h2` library on both sides.

    h2_never_indexed.py server PORT   an HTTP/2 upstream on 127.0.0.1:PORT;
        prints "ready", then answers each request with a JSON body: for each
        regular field, [name, value, sent never-indexed]; the answer's own
        `set-cookie` goes never indexed, its `x-plain-answer` not
    h2_never_indexed.py client PORT   one request to 127.0.0.1:PORT with
        `authorization` and `x-secret` never indexed and `x-plain` not; prints
        the upstream's JSON answer and the answer's fields with their marks

The `h2` library keeps a received field's kind (`NeverIndexedHeaderTuple`)
and encodes one of that kind as never indexed.
"""
import json
import socket
import sys

import h2.config
import h2.connection
import h2.events
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from h2_upstream import listen_and_serve


def serve_conn(sock):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                seen = [[n.decode(), v.decode(), isinstance(h, NeverIndexedHeaderTuple)]
                        for h in ev.headers for n, v in [h] if not n.startswith(b":")]
                body = json.dumps(seen).encode()
                conn.send_headers(ev.stream_id, [
                    HeaderTuple(":status", "200"),
                    HeaderTuple("content-length", str(len(body))),
                    NeverIndexedHeaderTuple("set-cookie", "session=1"),
                    HeaderTuple("x-plain-answer", "yes"),
                ])
                conn.send_data(ev.stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())


def server(port):
    listen_and_serve(port, serve_conn)


def client(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    headers = [
        HeaderTuple(":method", "GET"),
        HeaderTuple(":scheme", "http"),
        HeaderTuple(":authority", "example"),
        HeaderTuple(":path", "/"),
        NeverIndexedHeaderTuple("authorization", "Bearer s3cret"),
        HeaderTuple("x-plain", "visible"),
        NeverIndexedHeaderTuple("x-secret", "hidden"),
    ]
    conn.send_headers(1, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    body, status, answer = b"", None, []
    while True:
        data = sock.recv(65536)
        if not data:
            break
        done = False
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                status = dict(ev.headers)[b":status"].decode()
                answer = [[n.decode(), v.decode(), isinstance(h, NeverIndexedHeaderTuple)]
                          for h in ev.headers for n, v in [h] if not n.startswith(b":")]
            elif isinstance(ev, h2.events.DataReceived):
                body += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
        sock.sendall(conn.data_to_send())
        if done:
            break
    print(json.dumps({"status": status, "body": body.decode(), "answer": answer}))


if __name__ == "__main__":
    {"server": server, "client": client}[sys.argv[1]](int(sys.argv[2]))
