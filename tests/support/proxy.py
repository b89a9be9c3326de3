"""A forward proxy on loopback, as edge sites have: CONNECT tunnels (https) and absolute-URI requests (http).

Optional Basic credentials (407 without them). Records what it was asked: the request line's method and
target, and the Proxy-Authorization header. Forwards bytes only to loopback.
"""

from __future__ import annotations

import base64
import contextlib
import select
import socket
import socketserver
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.served import Served


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    target: str
    authorization: str | None


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _pipe(a: socket.socket, b: socket.socket) -> None:
    sockets = [a, b]
    while True:
        readable, _, _ = select.select(sockets, [], [], 30)
        if not readable:
            return
        for sock in readable:
            data = sock.recv(65536)
            if not data:
                return
            (b if sock is a else a).sendall(data)


@dataclass
class ForwardProxy(Served):
    user: str | None = None
    password: str | None = None
    requests: list[ProxyRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        proxy = self
        self._lock = threading.Lock()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._run_server(self._server)

    def url(self, with_credentials: bool = True) -> str:
        credentials = ""
        if with_credentials and self.user is not None:
            credentials = f"{urllib.parse.quote(self.user)}:{urllib.parse.quote(self.password or '')}@"
        return f"http://{credentials}127.0.0.1:{self.port}"

    def _handle(self, client: socket.socket) -> None:
        head = _read_head(client)
        header_end = head.index(b"\r\n\r\n") + 4 if b"\r\n\r\n" in head else len(head)
        lines = head[:header_end].decode("latin-1").split("\r\n")
        method, target, _ = [*lines[0].split(" "), "", "", ""][:3]
        pairs = (line.partition(":") for line in lines[1:] if line)
        headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
        authorization = headers.get("proxy-authorization")
        with self._lock:
            self.requests.append(ProxyRequest(method, target, authorization))
        if self.user is not None:
            expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if authorization != expected:
                client.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
                return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            upstream = socket.create_connection((host, int(port)), timeout=30)
            client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with contextlib.closing(upstream):
                _pipe(client, upstream)
            return
        url = urllib.parse.urlsplit(target)
        if not url.hostname:
            client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        # forward the request with an origin-form target; one request per connection (Connection: close)
        origin_target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        kept = [line for line in lines[1:] if line and not line.lower().startswith(("proxy-", "connection"))]
        request_head = "\r\n".join([f"{method} {origin_target} HTTP/1.1", *kept, "Connection: close", "", ""])
        with socket.create_connection((url.hostname, url.port or 80), timeout=30) as upstream:
            upstream.sendall(request_head.encode("latin-1") + head[header_end:])
            length = int(headers.get("content-length", "0"))
            remaining = length - len(head[header_end:])
            while remaining > 0:
                chunk = client.recv(min(remaining, 65536))
                if not chunk:
                    break
                upstream.sendall(chunk)
                remaining -= len(chunk)
            while chunk := upstream.recv(65536):
                client.sendall(chunk)


@pytest.fixture
def forward_proxy() -> Iterator[ForwardProxy]:
    proxy = ForwardProxy().start()
    yield proxy
    proxy.stop()
