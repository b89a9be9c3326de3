"""A local test server's lifecycle: one serving thread, started and stopped the same way by every stand-in."""

from __future__ import annotations

import socketserver
import threading
from typing import TYPE_CHECKING

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
