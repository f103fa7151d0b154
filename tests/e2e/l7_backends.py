"""Backends for the L7 tests: nginx on every pod speaking HTTP/1.1 (:8081)
and h2c with prior knowledge (:8082), and a Python server that breaks its
responses off with a reset (:9200)."""

from __future__ import annotations

import socket
import struct
import sys
from pathlib import Path

H1_PORT = 8081
H2_PORT = 8082
SHORT_KEEPALIVE_PORT = 8083  # HTTP/1.1, idle connections closed after 1 s
BREAK_PORT = 9200
UPGRADE_PORT = 9300


def nginx_conf(root: Path, pod: str) -> Path:
    """nginx serving /pod.txt (the pod's name), /api/pod.txt ("api <pod>"),
    and WebDAV PUT under /up/ (bodies up to 256 MiB), on both ports."""
    html = root / "html"
    (html / "api").mkdir(parents=True, exist_ok=True)
    (html / "up").mkdir(parents=True, exist_ok=True)
    (html / "pod.txt").write_text(pod + "\n")
    (html / "api" / "pod.txt").write_text(f"api {pod}\n")
    conf = root / "nginx.conf"
    server = """
        root {root}/html;
        keepalive_requests 100000;
        client_max_body_size 256m;
        client_body_timeout 30s;
        location /up/ {{ dav_methods PUT; create_full_put_path on; }}
        location /grpc.Echo/ {{
            default_type application/grpc;
            add_trailer grpc-status 0 always;
            add_trailer grpc-message ok-from-{pod} always;
            return 200 "reply";
        }}
    """.format(root=root, pod=pod)
    conf.write_text(f"""
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format pod '$server_port $request_method $uri $status';
    access_log {root}/access.log pod;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    server {{ listen {H1_PORT}; {server} }}
    server {{ listen {H2_PORT} http2; {server} }}
    server {{ listen {SHORT_KEEPALIVE_PORT}; keepalive_timeout 1s; {server} }}
}}
""")
    return conf


def serve_break(port: int) -> None:
    """Answers every request with headers promising 1 MB, sends 1000 bytes,
    and resets the connection."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    print(f"break server listening on {port}", flush=True)
    while True:
        conn, _ = sock.accept()
        conn.settimeout(5)
        try:
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        except OSError:
            pass
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
        print("broke a response off", flush=True)


def _upgrade_echo(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 65536:
        chunk = conn.recv(4096)
        if not chunk:
            return
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if b"upgrade: websocket" not in head.lower():
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        return
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\n\r\n")
    if rest:
        conn.sendall(rest)
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return
        conn.sendall(chunk)


def serve_upgrade(port: int) -> None:
    """Switches any `Upgrade: websocket` request to a raw echo of bytes."""
    import threading
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", port))
    sock.listen(64)
    print(f"upgrade echo server listening on {port}", flush=True)
    while True:
        conn, _ = sock.accept()
        conn.settimeout(30)

        def run(c=conn):
            try:
                _upgrade_echo(c)
            except OSError:
                pass
            finally:
                c.close()
        threading.Thread(target=run, daemon=True).start()


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    {"break": serve_break, "upgrade": serve_upgrade}[mode](port)
