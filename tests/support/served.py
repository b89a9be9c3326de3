"""What the local stand-in servers share: one serving thread, the requests they record, scripted failures and
JSON answers."""

from __future__ import annotations

import collections
import json
import socketserver
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:  # typing.Self is Python 3.11+; the suite also runs on 3.10 (JetPack 6)
    from typing import Self


class Served:
    """Mixed into a stand-in: `_run_server(server)` in its constructor, then `start()` / `stop()`."""

    def _run_server(self, server: socketserver.BaseServer) -> None:
        self._served = server
        self._serving = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)

    def start(self) -> Self:
        self._serving.start()
        return self

    def stop(self) -> None:
        self._served.shutdown()
        self._served.server_close()
        self._serving.join(5)


class Arrival(Protocol):
    endpoint: str
    status: int  # what the server answered


A = TypeVar("A", bound=Arrival)


class Recording(Generic[A]):
    """Mixed into a stand-in that records each request it answers in `requests`, under `_changed`."""

    requests: list[A]
    _changed: threading.Condition

    def recorded(self, endpoint: str | None = None, status: int | None = None) -> list[A]:
        with self._changed:
            return [
                r for r in self.requests
                if (endpoint is None or r.endpoint == endpoint) and (status is None or r.status == status)
            ]

    def forget(self) -> collections.Counter[str]:
        """Forget the requests recorded so far (they keep every body: a run of hours would pile them up);
        returns how many there were, by `endpoint status`."""
        with self._changed:
            tally = collections.Counter(f"{r.endpoint} {r.status}" for r in self.requests)
            self.requests.clear()
        return tally


@dataclass
class Scripted:
    """An answer the test asked for instead of the real one: `status`, the next `times` requests (None: until
    cleared), with `Retry-After` and after `delay` seconds (a slow network) when given."""

    status: int
    times: int | None
    retry_after: str | None
    delay: float = 0.0


def next_scripted(scripts: list[Scripted]) -> Scripted | None:
    """The answer scripted for this request, if any, counted against its `times` (caller holds the lock)."""
    if not scripts:
        return None
    script = scripts[0]
    if script.times is not None:
        script.times -= 1
        if script.times <= 0:
            scripts.pop(0)
    return script


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


def send_json(
    handler: BaseHTTPRequestHandler,
    status: int,
    answer: Any,
    headers: dict[str, str],
    trickle: float | None = None,
) -> None:
    """Answer `answer` as JSON; with `trickle`, one byte every `trickle` seconds. A client that gave up (timed
    out, hung up) is not an error of the server's."""
    payload = json.dumps(answer).encode()
    try:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        if trickle is None:
            handler.wfile.write(payload)
            return
        for byte in payload:
            handler.wfile.write(bytes([byte]))
            handler.wfile.flush()
            time.sleep(trickle)  # the slow server under test, not a synchronisation
    except OSError:
        pass
