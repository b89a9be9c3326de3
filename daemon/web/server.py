"""An HTTP server that idle or slow clients cannot starve: every listening socket of edgewatch uses it.

- One thread accepts and watches connections (a selector). A connection costs one descriptor, no thread,
  until its whole request head (up to the blank line) has arrived; only then does a handler take it.
- At most `max_connections` wait for their head: past that, the longest-waiting one is closed to make room,
  and any that waits longer than `head_timeout` seconds is closed. So thousands of idle connections cost at
  most `max_connections` descriptors and a legitimate request still gets in.
- A fixed pool of `handlers` threads serves complete requests (each socket with a `handler_timeout` per
  read and write); when they are all busy, complete requests queue (bounded) and past that get a 503.
- Out of descriptors (EMFILE), the longest-waiting connection is closed and accepting pauses briefly instead
  of spinning on the listening socket.
Every connection closed this way is counted in `edgewatch_http_connections_dropped_total{server, reason}`.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import queue
import selectors
import socket
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry, Counter

log = logging.getLogger("edgewatch.http")

MAX_HEAD = 65536  # bytes of request line + headers; http.server refuses longer lines anyway
DROP_REASONS = ("head_timeout", "evicted", "busy", "no_descriptors")
_BUSY_BODY = b'{"message":"too many connections; retry later"}'
BUSY_RESPONSE = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)
ACCEPT_PAUSE = 0.1  # seconds without accepting after EMFILE
LOG_EVERY = 60.0  # seconds between warnings about dropped connections, per server


class ServerMetrics:
    """The HTTP servers' own metric group."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.dropped = Counter(
            "edgewatch_http_connections_dropped",
            "Connections closed unserved: head_timeout (no complete request in time), evicted (too many "
            "waiting), busy (every handler busy and the queue full), no_descriptors (out of descriptors).",
            ["server", "reason"],
            registry=registry,
        )

    def init(self, server: str) -> None:
        for reason in DROP_REASONS:
            self.dropped.labels(server, reason)


class _Prefixed(io.RawIOBase):
    """The bytes the selector already read from a connection, then the connection itself."""

    def __init__(self, prefix: bytes, sock: socket.socket) -> None:
        self._prefix = memoryview(prefix)
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._prefix:
            count = min(len(buffer), len(self._prefix))
            buffer[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        return self._sock.recv_into(buffer)


class BoundedHTTPServer:
    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        name: str,
        handlers: int,
        max_connections: int = 256,
        head_timeout: float = 10.0,
        handler_timeout: float = 30.0,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.name = name
        self.handler = handler
        self._handlers = handlers
        self._max_connections = max_connections
        self._head_timeout = head_timeout
        self._handler_timeout = handler_timeout
        self._metrics = metrics
        if metrics is not None:
            metrics.init(name)
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(address)
            self._listener.listen(128)
        except OSError:
            self._listener.close()
            raise
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        # connection -> (accepted at, client address, bytes of the head so far); oldest first
        self._waiting: OrderedDict[socket.socket, tuple[float, Any, bytearray]] = OrderedDict()
        self._ready: queue.Queue[tuple[socket.socket, Any, bytes] | None] = queue.Queue(max_connections)
        self._heads: dict[socket.socket, bytes] = {}  # what a handler reads first, set by its worker
        self._stop = threading.Event()
        self._last_warning = -LOG_EVERY
        self._selector_thread = threading.Thread(target=self._watch, name=name, daemon=True)
        self._workers = [
            threading.Thread(target=self._serve, name=f"{name}-handler-{i}", daemon=True)
            for i in range(handlers)
        ]

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def take_head(self, connection: socket.socket) -> bytes:
        """The bytes already read from `connection` (for its handler, once)."""
        return self._heads.pop(connection, b"")

    def start(self) -> None:
        for worker in self._workers:
            worker.start()
        self._selector_thread.start()

    def threads(self) -> list[threading.Thread]:
        """The accepting thread, for /healthz and the watchdog. The handler threads are a fixed pool that
        outlives any failure of a request (each is caught and logged), so they are not listed one by one."""
        return [self._selector_thread]

    def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, close waiting connections, let handlers finish their request (up to `timeout`)."""
        self._stop.set()
        if self._selector_thread.is_alive():
            self._selector_thread.join(timeout)
        for _ in self._workers:
            with contextlib.suppress(queue.Full):
                self._ready.put_nowait(None)
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))
        self._listener.close()

    # --- the selector thread ------------------------------------------------------------------------

    def _watch(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        paused_until = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                listening = now >= paused_until
                if not listening and self._listener in selector.get_map():
                    selector.unregister(self._listener)
                elif listening and self._listener not in selector.get_map():
                    selector.register(self._listener, selectors.EVENT_READ)
                for key, _ in selector.select(timeout=0.25):
                    if key.fileobj is self._listener:
                        if not self._accept(selector):
                            paused_until = time.monotonic() + ACCEPT_PAUSE
                    else:
                        self._read_head(selector, key.fileobj)  # type: ignore[arg-type]
                self._expire(selector, time.monotonic())
        finally:
            for connection in list(self._waiting):
                self._close(selector, connection)
            selector.close()

    def _accept(self, selector: selectors.BaseSelector) -> bool:
        """Accept what is pending; False when out of descriptors."""
        for _ in range(64):
            try:
                connection, address = self._listener.accept()
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._drop_oldest(selector, "no_descriptors")
                    return False
                return True  # e.g. ECONNABORTED: the client gave up already
            if len(self._waiting) >= self._max_connections:
                self._drop_oldest(selector, "evicted")
            connection.setblocking(False)
            self._waiting[connection] = (time.monotonic(), address, bytearray())
            selector.register(connection, selectors.EVENT_READ)
        return True

    def _read_head(self, selector: selectors.BaseSelector, connection: socket.socket) -> None:
        entry = self._waiting.get(connection)
        if entry is None:
            return
        try:
            data = connection.recv(MAX_HEAD)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client closed (or reset) before sending a whole request
            self._close(selector, connection)
            return
        head = entry[2]
        head += data
        if b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) < MAX_HEAD:
            return
        selector.unregister(connection)
        del self._waiting[connection]
        connection.setblocking(True)
        connection.settimeout(self._handler_timeout)
        try:
            self._ready.put_nowait((connection, entry[1], bytes(head)))
        except queue.Full:
            self._dropped("busy")  # before the answer: a client that has it also sees it counted
            with contextlib.suppress(OSError):
                connection.sendall(BUSY_RESPONSE)
            self._shut(connection)

    def _expire(self, selector: selectors.BaseSelector, now: float) -> None:
        while self._waiting:
            connection, (accepted, _, _) = next(iter(self._waiting.items()))
            if now - accepted < self._head_timeout:
                return
            self._dropped("head_timeout")  # before the close: a client that sees it also sees it counted
            self._close(selector, connection)

    def _drop_oldest(self, selector: selectors.BaseSelector, reason: str) -> None:
        self._dropped(reason)
        if self._waiting:
            self._close(selector, next(iter(self._waiting)))

    def _close(self, selector: selectors.BaseSelector, connection: socket.socket) -> None:
        self._waiting.pop(connection, None)
        with contextlib.suppress(KeyError, ValueError):
            selector.unregister(connection)
        self._shut(connection)

    @staticmethod
    def _shut(connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.close()

    def _dropped(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.dropped.labels(self.name, reason).inc()
        now = time.monotonic()
        if now - self._last_warning >= LOG_EVERY:
            self._last_warning = now
            log.warning(
                "%s port %d: closing connections unserved (%s: too many idle or slow clients); counted in "
                "edgewatch_http_connections_dropped_total", self.name, self.port, reason,
            )

    # --- the handler threads -------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            item = self._ready.get()
            if item is None:
                return
            connection, address, head = item
            self._heads[connection] = head
            try:
                self.handler(connection, address, self)  # type: ignore[arg-type]
            except Exception:
                log.exception("%s: a request handler failed", self.name)
            finally:
                self._heads.pop(connection, None)
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_WR)
                self._shut(connection)


class PrefixedHandler(BaseHTTPRequestHandler):
    """A request handler that reads the head the selector already took off the socket first."""

    server: BoundedHTTPServer  # type: ignore[assignment]

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the plain file over the socket: an open one would keep close() from closing it
        head = self.server.take_head(self.connection)
        self.rfile = io.BufferedReader(_Prefixed(head, self.connection))
