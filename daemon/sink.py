"""The contract every sink implements: the dispatcher hands it results, the service runs its lifecycle."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import ClassVar

from daemon.frames import FrameResult, Source


class Sink(ABC):
    """One destination of frame results.

    Lifecycle, each step called once by the service, in this order:
    - `start()`: open connections, start threads (never in `__init__`);
    - `handle(result)` for every result whose `source` is in `accepts`, on the dispatcher thread (the events
      sink: on the events thread before it): must not block on network or disk I/O (hand slow work to the
      sink's own bounded queue and thread);
    - `drained()` on the same thread, after `handle`, whenever no further result waits: a sink that collects
      what `handle` produces (MQTT: the detections of a batch) sends it now, together;
    - `flush()` after the dispatchers have drained: push out partial state (e.g. a reporting window);
    - `close(timeout)`: stop threads and release files within `timeout` seconds, whatever happens.
    `threads()` names the sink's long-lived threads, which /healthz and the watchdog watch.
    """

    name: ClassVar[str]
    accepts: ClassVar[frozenset[Source]] = frozenset({"camera"})

    def start(self) -> None:
        return None

    @abstractmethod
    def handle(self, result: FrameResult) -> None: ...

    def drained(self) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self, timeout: float) -> None:
        return None

    def threads(self) -> list[threading.Thread]:
        return []
