"""Which parts of the device run degraded right now, and why: one small thread-safe registry.

A part (the spool, the history...) that hits a runtime fault it can live with (a corrupt
or unwritable state file, a full disk) keeps the device serving in a reduced way and says so here. The
registry feeds `/healthz` (`degraded`: part -> reason), the `edgewatch_degraded{part}` gauge and the
`degraded` alert; a part that works again calls `recover`. Part names are fixed strings from the code, so the
label set is bounded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge

log = logging.getLogger("edgewatch.health")

# The parts that can run degraded; each has its series at 0 from the start.
PARTS = ("spool", "history")


class Health:
    def __init__(self, registry: CollectorRegistry | None = None, parts: Iterable[str] = PARTS) -> None:
        self._lock = threading.Lock()
        self._degraded: dict[str, str] = {}
        self._gauge: Gauge | None = None
        if registry is not None:
            self._gauge = Gauge(
                "edgewatch_degraded",
                "1 while a part of the device runs degraded (see /healthz `degraded` for why).",
                ["part"],
                registry=registry,
            )
            for part in parts:
                self._gauge.labels(part).set(0)

    def degrade(self, part: str, reason: str) -> None:
        """`part` runs degraded because of `reason` (one line, no secrets). Logged when the reason changes."""
        reason = " ".join(reason.split())
        with self._lock:
            previous = self._degraded.get(part)
            self._degraded[part] = reason
        if previous != reason:
            log.warning("%s degraded: %s", part, reason)
        if self._gauge is not None:
            self._gauge.labels(part).set(1)

    def recover(self, part: str) -> None:
        with self._lock:
            was = self._degraded.pop(part, None)
        if was is not None:
            log.info("%s works again (was degraded: %s)", part, was)
        if self._gauge is not None:
            self._gauge.labels(part).set(0)

    def degraded(self) -> dict[str, str]:
        with self._lock:
            return dict(self._degraded)


# What parts use when nobody wires a registry in (tools, tests of one part): degrade is logged, nothing else.
NO_HEALTH = Health()
