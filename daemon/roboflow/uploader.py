"""The uploader thread: sends spooled Model Monitoring requests to Roboflow, oldest first, until accepted.

It holds the head of the spool until Roboflow takes it (so each camera's reports arrive in order): a
retryable failure backs off exponentially with jitter (or as long as Retry-After says); a refused key stops
sending, keeps the spool and tries the key again rarely; a request Roboflow calls bad is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from daemon.backoff import backoff_delay
from daemon.metrics.monitoring import MonitoringMetrics
from daemon.roboflow.client import Outcome, Response, RoboflowClient
from daemon.roboflow.spool import Spool, SpoolItem

log = logging.getLogger("edgewatch.uploader")

_REMEMBERED_ATTEMPTS = 256  # outcomes kept for wait_attempted()


@dataclass(frozen=True, slots=True)
class UploaderState:
    """What the alert engine reads. Times are time.monotonic()."""

    unauthorized: bool  # Roboflow refuses the key; nothing is being sent
    failing_since: float | None  # first failed attempt of the current streak; None after a success
    last_success: float | None
    depth: int  # requests waiting in the spool


class Uploader:
    def __init__(
        self,
        spool: Spool,
        client: RoboflowClient | None,
        metrics: MonitoringMetrics,
        *,
        unauthorized_retry: float = 600.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
    ) -> None:
        """`client` None (no API key): nothing is sent; requests stay in the spool."""
        self._spool = spool
        self._client = client
        self._metrics = metrics
        self._unauthorized_retry = unauthorized_retry
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._stop = threading.Event()
        self._changed = threading.Condition()  # guards everything below
        self._pending = False  # wake() since the thread last looked at the spool
        self._phase = "working"  # working | idle (spool empty) | paused (backoff or refused key)
        self._attempts: OrderedDict[int, Response] = OrderedDict()
        self._unauthorized = False
        self._failing_since: float | None = None
        self._last_success: float | None = None
        self._failures = 0
        self._thread = threading.Thread(target=self._run, name="roboflow-uploader", daemon=True)
        metrics.monitoring_unauthorized.set(0)

    def start(self) -> None:
        if self._client is not None:
            self._thread.start()

    def threads(self) -> list[threading.Thread]:
        """The sending thread, when there is one (with an API key)."""
        return [self._thread] if self._client is not None else []

    def wake(self) -> None:
        """Something was spooled."""
        with self._changed:
            self._pending = True
            self._changed.notify_all()

    def state(self) -> UploaderState:
        with self._changed:
            return UploaderState(
                self._unauthorized, self._failing_since, self._last_success, self._spool.depth
            )

    def wait_attempted(self, item_ids: Iterable[int], timeout: float) -> dict[int, Response]:
        """Wait until each request has been tried once (or `timeout`); returns the outcomes known by then."""
        wanted = set(item_ids)
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._thread.is_alive() and not wanted <= self._attempts.keys():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            return {item_id: self._attempts[item_id] for item_id in wanted if item_id in self._attempts}

    def close(self, grace: float = 0.0, timeout: float | None = None) -> bool:
        """Stop the thread. With `grace`, first let it send what it can for up to that many seconds:
        it stops early once the spool is empty or Roboflow asked it to wait. Unsent requests stay spooled.
        Waits at most `timeout` seconds in all (None: until a request in flight ends); True once stopped."""
        if not self._thread.is_alive():
            return True
        started = time.monotonic()
        deadline = started + (grace if timeout is None else min(grace, timeout))
        with self._changed:
            while not (self._phase == "paused" or (self._phase == "idle" and not self._pending)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            self._stop.set()
            self._changed.notify_all()
        # a request in flight finishes or times out (the client's timeout) before the thread sees the stop
        self._thread.join(None if timeout is None else max(0.0, started + timeout - time.monotonic()))
        return not self._thread.is_alive()

    def _run(self) -> None:
        client = self._client
        assert client is not None  # the thread only runs with a client
        try:
            self._loop(client)
        finally:
            client.close()

    def _loop(self, client: RoboflowClient) -> None:
        while not self._stop.is_set():
            with self._changed:
                self._pending = False
                self._phase = "working"
            try:
                item = self._spool.oldest()
            except Exception:
                log.exception("cannot read the monitoring spool %s", self._spool.path)
                self._pause(self._backoff_max)
                continue
            if item is None:
                self._wait_for_work()
                continue
            started = time.monotonic()
            try:
                response = client.send(item.kind, item.body)
            except Exception as exc:  # a bug, not the network: keep the request, say what happened
                detail = f"unexpected {type(exc).__name__}: {client.redact(str(exc))}"
                response = Response(Outcome.RETRY, None, detail)
            self._metrics.upload_duration.observe(time.monotonic() - started)
            try:
                delay = self._settle(item, response)
            except Exception:  # the spool failed (disk full, I/O error): try again later
                log.exception("cannot update the monitoring spool %s", self._spool.path)
                delay = self._backoff_max
            with self._changed:
                self._attempts[item.id] = response
                while len(self._attempts) > _REMEMBERED_ATTEMPTS:
                    self._attempts.popitem(last=False)
                self._changed.notify_all()
            if delay:
                self._pause(delay)

    def _settle(self, item: SpoolItem, response: Response) -> float:
        """Act on one answer; returns how long to wait before the next attempt."""
        now = time.monotonic()
        what = f"{item.kind} for camera {item.camera}"
        if response.outcome is Outcome.ACCEPTED:
            self._spool.delete(item.id)
            self._metrics.reports.labels("sent").inc()
            self._metrics.last_upload.set(time.time())
            if self._unauthorized:
                log.warning("Roboflow accepts the API key again: monitoring uploads resumed")
                self._metrics.monitoring_unauthorized.set(0)
            elif self._failures:
                log.info("Roboflow Model Monitoring accepts uploads again (%d failed before)", self._failures)
            with self._changed:
                self._unauthorized = False
                self._failing_since = None
                self._last_success = now
                self._failures = 0
            return 0.0

        with self._changed:
            if self._failing_since is None:
                self._failing_since = now
            self._failures += 1
            failures = self._failures
        if response.outcome is Outcome.REJECTED:
            # Roboflow looked at this request and said it is wrong (400, 404, 413, 422...): the same bytes
            # would get the same answer, and as the queue is sent in order, keeping it would block every
            # later request forever. Drop it, loudly.
            self._spool.delete(item.id)
            self._metrics.reports.labels("failed").inc()
            log.error("Roboflow refused a %s (%s): dropped it from the spool", what, response.detail)
            return 0.0
        if response.outcome is Outcome.UNAUTHORIZED:
            self._metrics.reports.labels("failed").inc()
            if not self._unauthorized:
                log.error(
                    "Roboflow refuses the API key (%s): monitoring uploads stopped, %d request(s) kept in "
                    "the spool; fix roboflow.api_key (or the key's access) - it is tried again every %.0f s",
                    response.detail, self._spool.depth, self._unauthorized_retry,
                )
                self._metrics.monitoring_unauthorized.set(1)
                with self._changed:
                    self._unauthorized = True
            return self._unauthorized_retry

        self._metrics.reports.labels("retried").inc()
        if response.retry_after is not None:
            delay = response.retry_after
        else:
            delay = backoff_delay(failures - 1, self._backoff_base, self._backoff_max)
        log.warning(
            "Roboflow upload of a %s failed (%s); %d request(s) spooled, next attempt in %.1f s",
            what, response.detail, self._spool.depth, delay,
        )
        return delay

    def _wait_for_work(self) -> None:
        with self._changed:
            self._phase = "idle"
            self._changed.notify_all()
            while not self._pending and not self._stop.is_set():
                self._changed.wait()

    def _pause(self, seconds: float) -> None:
        """Back off; new requests do not cut this short, stop() does."""
        with self._changed:
            self._phase = "paused"
            self._changed.notify_all()
        self._stop.wait(seconds)
