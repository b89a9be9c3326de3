"""The bounded HTTP server on real sockets: slow heads are cut off, idle floods evict the oldest, a full
handler pool answers 503, and a request whose head arrives in pieces is served whole."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from daemon.web.server import BoundedHTTPServer, PrefixedHandler, ServerMetrics
from tests.support.daemon import wait_until

release = threading.Event()
holding: list[str] = []  # one entry per /hold request a handler has taken


class Handler(PrefixedHandler):
    def do_GET(self) -> None:
        if self.path == "/hold":
            holding.append(self.path)
            release.wait(10)
        body = f"ok {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[BoundedHTTPServer, CollectorRegistry]]:
    registry = CollectorRegistry()
    httpd = BoundedHTTPServer(
        ("127.0.0.1", 0), Handler, name="test", handlers=2, max_connections=8, head_timeout=0.5,
        metrics=ServerMetrics(registry),
    )
    httpd.start()
    release.clear()
    holding.clear()
    yield httpd, registry
    release.set()
    httpd.close(2)


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value(
        "edgewatch_http_connections_dropped_total", {"server": "test", "reason": reason}
    ) or 0.0


def request(port: int, raw: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_head_in_pieces_and_a_body_after_it_are_served_whole(server) -> None:
    httpd, _ = server
    with socket.create_connection(("127.0.0.1", httpd.port), timeout=5) as sock:
        for piece in (b"POST /echo HTTP/1.0\r\nContent-", b"Length: 5\r\n", b"\r\nhel"):
            sock.sendall(piece)
            time.sleep(0.05)  # pieces on the wire, as a slow client sends them
        sock.sendall(b"lo")
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"\r\n\r\nhello")


def test_a_head_that_never_completes_is_cut_off_and_counted(server) -> None:
    httpd, registry = server
    with socket.create_connection(("127.0.0.1", httpd.port), timeout=5) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # no blank line, ever
        assert slow.recv(10) == b""  # closed by the server after head_timeout
    assert dropped(registry, "head_timeout") == 1
    assert request(httpd.port, b"GET /after HTTP/1.0\r\n\r\n").endswith(b"ok /after")


def test_an_idle_flood_evicts_the_oldest_and_requests_still_get_in(server) -> None:
    httpd, registry = server
    idle = [socket.create_connection(("127.0.0.1", httpd.port), timeout=5) for _ in range(30)]
    try:
        assert request(httpd.port, b"GET /ok HTTP/1.0\r\n\r\n").endswith(b"ok /ok")
        assert dropped(registry, "evicted") >= 30 - 8
    finally:
        for sock in idle:
            sock.close()


def test_with_every_handler_busy_requests_queue_and_past_the_queue_get_503(server) -> None:
    httpd, registry = server
    holders = [threading.Thread(target=request, args=(httpd.port, b"GET /hold HTTP/1.0\r\n\r\n", 15))
               for _ in range(2 + 8)]  # 2 handlers busy, 8 complete requests queued
    for taken, holder in enumerate(holders, 1):
        # one at a time: ten connections arriving together would exceed the 8 that may wait for their head
        holder.start()
        wait_until(lambda taken=taken: len(holding) + httpd._ready.qsize() == taken, 5,
                   message=f"request {taken} to be taken or queued")
    assert httpd._ready.full()
    assert request(httpd.port, b"GET /more HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 503")
    assert dropped(registry, "busy") == 1
    release.set()
    for holder in holders:
        holder.join(10)
    assert request(httpd.port, b"GET /after HTTP/1.0\r\n\r\n").endswith(b"ok /after")
