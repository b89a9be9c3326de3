"""The dispatcher: the one thread that hands every frame result to the sinks, in order.

Results arrive through a bounded queue so a slow sink never stalls inference: when the queue is full the
result is dropped and counted (`reason="dispatch_full"`). Frame latency (capture -> every sink done) is
measured here. Results of HTTP API requests (`source == "api"`) go only to the sinks that aggregate per
stream (Model Monitoring, history): per-camera sinks (metrics, MQTT) label by configured cameras only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from daemon.frames import FrameResult, Sink
from daemon.metrics import Metrics

log = logging.getLogger("edgewatch.dispatcher")

QUEUE_SIZE = 64


class Dispatcher(threading.Thread):
    def __init__(
        self,
        sinks: list[Sink],
        metrics: Metrics,
        stop: threading.Event,
        api_sinks: tuple[Sink, ...] = (),
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        super().__init__(name="dispatcher", daemon=True)
        self.sinks = sinks
        self._api_sinks = [sink for sink in sinks if sink in api_sinks]
        self._metrics = metrics
        self._halt = stop
        self._queue: queue.Queue[FrameResult] = queue.Queue(maxsize=queue_size)
        self._latency: dict[str, object] = {}
        self._failing: set[str] = set()  # sinks whose last call raised: logged once per failing streak
        self._handed = threading.Condition()  # guards the two counts below, for `barrier`
        self._queued = 0  # results accepted by `submit`
        self._done = 0  # results handed to every sink

    def submit(self, result: FrameResult) -> bool:
        """Never blocks. False (and counted as dropped) when the sinks are too far behind."""
        with self._handed:
            try:
                self._queue.put_nowait(result)
            except queue.Full:
                self._metrics.frames_dropped.labels(result.camera_id, "dispatch_full").inc()
                return False
            self._queued += 1
        return True

    def barrier(self, timeout: float) -> bool:
        """Wait until every result submitted before this call has been handed to the sinks (a config
        reload removing a camera waits for its last results). False on timeout."""
        with self._handed:
            target = self._queued
            return self._handed.wait_for(lambda: self._done >= target, timeout=timeout)

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                result = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            self._dispatch(result)
            with self._handed:
                self._done += 1
                self._handed.notify_all()
        self._drain()

    def _dispatch(self, result: FrameResult) -> None:
        is_camera = result.source == "camera"
        for sink in self.sinks if is_camera else self._api_sinks:
            try:
                sink.handle(result)
            except Exception:
                if sink.name not in self._failing:
                    self._failing.add(sink.name)
                    log.exception("sink %s failed on a result from camera %s", sink.name, result.camera_id)
            else:
                self._failing.discard(sink.name)
        self._metrics.dispatcher_queue_depth.set(self._queue.qsize())
        if not is_camera:
            return
        latency = self._latency.get(result.camera_id)
        if latency is None:
            latency = self._latency[result.camera_id] = self._metrics.frame_latency.labels(result.camera_id)
        latency.observe(time.monotonic() - result.captured_mono)  # type: ignore[attr-defined]

    def _drain(self) -> None:
        """After stop: hand over what is queued, then flush and close every sink."""
        while True:
            try:
                self._dispatch(self._queue.get_nowait())
            except queue.Empty:
                break
        for sink in self.sinks:
            for step in (sink.flush, sink.close):
                try:
                    step()
                except Exception:
                    log.exception("sink %s failed to %s", sink.name, step.__name__)
