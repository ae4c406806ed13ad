"""What the Python HTTP/2 upstreams of tests/h2_proxy.rs share: a listener on
127.0.0.1:PORT that prints "ready" once bound and serves each connection on a
thread of its own with `serve_conn(sock)`."""
import socket
import threading


def listen_and_serve(port, serve_conn):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(16)
    print("ready", flush=True)
    while True:
        s, _ = ls.accept()
        threading.Thread(target=serve_conn, args=(s,), daemon=True).start()
