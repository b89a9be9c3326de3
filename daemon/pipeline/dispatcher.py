"""Dispatchers: threads that each hand every frame result to their sinks, in order.

Two run in a chain: the `events` thread (tracking, zones, lines, the live view: the costly per-frame work)
hands each result on to the `dispatcher` thread (metrics, MQTT, Roboflow, history), so that neither waits
for the other and the inference worker waits for neither. Results arrive through a bounded queue: when it
is full the result is dropped and counted (`reason="dispatch_full"`). Frame latency (capture -> every sink
done) is measured at the end of the chain. Each sink gets the results whose `source` it `accepts`:
per-camera sinks (metrics, MQTT) take configured cameras only; the sinks that aggregate per stream (Model
Monitoring, history) also take HTTP API requests. Whenever a dispatcher's queue runs empty it tells its sinks
(`drained`), so that what they collected from a burst of results (a batch) goes out together. At stop a
dispatcher hands over what is queued and ends; the service stops them in chain order, then flushes and closes
the sinks.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Sequence

from prometheus_client import Gauge

from daemon.frames import FrameResult
from daemon.metrics.frames import FrameMetrics
from daemon.sink import Sink

log = logging.getLogger("edgewatch.dispatcher")

QUEUE_SIZE = 64


class Dispatcher(threading.Thread):
    def __init__(
        self,
        sinks: Sequence[Sink],
        frames: FrameMetrics,
        depth: Gauge,
        stop: threading.Event,
        queue_size: int = QUEUE_SIZE,
        name: str = "dispatcher",
        then: Dispatcher | None = None,
    ) -> None:
        """`depth` shows the queue's length; `then`, if any, takes every result once these sinks are done."""
        super().__init__(name=name, daemon=True)
        self._sinks = list(sinks)
        self._by_source = {
            source: [sink for sink in sinks if source in sink.accepts] for source in ("camera", "api")
        }
        self._frames = frames
        self._depth = depth
        self._then = then
        self._halt = stop
        self._queue: queue.Queue[FrameResult] = queue.Queue(maxsize=queue_size)
        self._full: collections.Counter[str] = collections.Counter()  # results dropped, per camera
        self._latency: dict[str, object] = {}
        self._failing: set[str] = set()  # sinks whose last call raised: logged once per failing streak
        self._handed = threading.Condition()  # guards `_full` and the two counts below (for `barrier`)
        self._queued = 0  # results accepted by `submit`
        self._done = 0  # results handed to every sink

    def submit(self, result: FrameResult) -> bool:
        """Never blocks. False (and counted as dropped) when the sinks are too far behind."""
        with self._handed:
            try:
                self._queue.put_nowait(result)
            except queue.Full:
                self._frames.frames_dropped.labels(result.camera_id, "dispatch_full").inc()
                self._full[result.camera_id] += 1
                return False
            self._queued += 1
        return True

    def barrier(self, timeout: float) -> bool:
        """Wait until every result submitted before this call has been handed to the sinks, down the chain
        (a config reload removing a camera waits for its last results). False on timeout."""
        deadline = time.monotonic() + timeout
        with self._handed:
            target = self._queued
            if not self._handed.wait_for(lambda: self._done >= target, timeout=timeout):
                return False
        return self._then is None or self._then.barrier(max(0.0, deadline - time.monotonic()))

    def dropped_counts(self) -> dict[str, int]:
        """Results of each camera dropped because this queue was full, since the start."""
        with self._handed:
            return dict(self._full)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                result = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._dispatch(result)
            if self._queue.empty():
                self._drained()
            with self._handed:
                self._done += 1
                self._handed.notify_all()
        while True:  # stopped: hand over what is queued
            try:
                self._dispatch(self._queue.get_nowait())
            except queue.Empty:
                break
        self._drained()

    def _dispatch(self, result: FrameResult) -> None:
        for sink in self._by_source[result.source]:
            try:
                sink.handle(result)
            except Exception:
                self._log_failure(sink, f"on a result from camera {result.camera_id}")
            else:
                self._failing.discard(sink.name)
        self._depth.set(self._queue.qsize())
        if self._then is not None:
            self._then.submit(result)
            return
        if result.source != "camera":
            return
        latency = self._latency.get(result.camera_id)
        if latency is None:
            latency = self._latency[result.camera_id] = self._frames.frame_latency.labels(result.camera_id)
        latency.observe(time.monotonic() - result.captured_mono)  # type: ignore[attr-defined]

    def _drained(self) -> None:
        for sink in self._sinks:
            try:
                sink.drained()
            except Exception:
                self._log_failure(sink, "sending what it collected")

    def _log_failure(self, sink: Sink, context: str) -> None:
        """Log (with its traceback) the first failure of a failing streak; called in an `except` block."""
        if sink.name not in self._failing:
            self._failing.add(sink.name)
            log.exception("sink %s failed %s", sink.name, context)
