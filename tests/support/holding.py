"""A loopback TCP server that accepts every connection and holds it open: a peer that hangs."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable


class HoldingServer:
    """Accepts every connection and keeps it open until `close`. With `serve`, each connection is also handed
    to it on a thread of its own; without, the peer never hears a word (a hung camera or server)."""

    def __init__(self, serve: Callable[[socket.socket], None] | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []  # every one accepted, held until `close`
        self.stop = threading.Event()
        self._serve = serve
        self._thread = threading.Thread(target=self._accept, name="holding-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            self.connections.append(connection)
            if self._serve is not None:
                threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        self.listener.close()

    def __enter__(self) -> HoldingServer:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
