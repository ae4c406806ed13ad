"""An HTTP/2 upstream that says what it received, for tests/h2_proxy.rs, with
the Python `h2` library.

    h2_echo.py server PORT   listens on 127.0.0.1:PORT, prints "ready"; each
        request is answered once it ends: 200 without content-length, a
        `x-up: 1` field, a JSON body {"pseudo": {name: value}, "fields":
        [[name, value]], "body": text, "trailers": [[name, value]]}, then
        the trailer `x-answer-trailer: t1`.
"""
import json
import sys

import h2.config
import h2.connection
import h2.events

from h2_upstream import listen_and_serve


def serve_conn(sock):
    # The h2 library refuses a request with neither :authority nor Host,
    # which RFC 9113 §8.3.1 allows (and asks of a proxy restating an
    # HTTP/1.0 request that had no Host); its inbound header checks are off
    # here, this upstream only reports what it got.
    config = h2.config.H2Configuration(client_side=False, validate_inbound_headers=False)
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    streams = {}
    while True:
        data = sock.recv(65536)
        if not data:
            return
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                seen = streams.setdefault(ev.stream_id, {"pseudo": {}, "fields": [],
                                                         "body": "", "trailers": []})
                for n, v in ev.headers:
                    if n.startswith(b":"):
                        seen["pseudo"][n.decode()] = v.decode()
                    else:
                        seen["fields"].append([n.decode(), v.decode()])
            elif isinstance(ev, h2.events.DataReceived):
                streams[ev.stream_id]["body"] += ev.data.decode()
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                streams[ev.stream_id]["trailers"] = [[n.decode(), v.decode()]
                                                     for n, v in ev.headers]
            elif isinstance(ev, h2.events.StreamEnded):
                seen = streams.pop(ev.stream_id)
                conn.send_headers(ev.stream_id, [(":status", "200"), ("x-up", "1")])
                conn.send_data(ev.stream_id, json.dumps(seen).encode())
                conn.send_headers(ev.stream_id, [("x-answer-trailer", "t1")], end_stream=True)
        sock.sendall(conn.data_to_send())


def server(port):
    listen_and_serve(port, serve_conn)


if __name__ == "__main__":
    {"server": server}[sys.argv[1]](int(sys.argv[2]))
