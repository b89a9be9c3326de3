"""The uploader thread: sends what a spool holds to Roboflow, oldest first, until accepted.

What is sent comes from a `Courier` (Model Monitoring: one request per spooled row; Vision Events: an image
upload, or a batch of events): it names the next `Delivery` at the head of its spool, and each delivery
knows how to send itself and what its answer means for the spool and the counters. This thread adds what
every destination shares: it holds the head until Roboflow takes it (so each camera's data arrives in
order); a retryable failure backs off exponentially with jitter (or as long as Retry-After says); a refused
key stops sending, keeps the spool, and tries the key again rarely; what Roboflow calls bad is dropped.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Gauge, Histogram

from daemon.backoff import backoff_delay
from daemon.metrics.monitoring import MonitoringMetrics
from daemon.roboflow.client import RoboflowClient
from daemon.roboflow.spool import Spool
from daemon.roboflow.transport import Outcome, Response

log = logging.getLogger("edgewatch.uploader")

_REMEMBERED_ATTEMPTS = 256  # outcomes kept for wait_attempted()


@dataclass(frozen=True, slots=True)
class UploaderState:
    """What the alert engine reads. Times are time.monotonic()."""

    unauthorized: bool  # Roboflow refuses the key; nothing is being sent
    # first failed attempt of the current streak, or the start of an attempt in flight for longer than
    # `stalled_after` (a server that trickles its answer never fails an attempt); None after a success
    failing_since: float | None
    last_success: float | None
    depth: int  # requests waiting in the spool


class Delivery(Protocol):
    """One request to Roboflow made from the head of a spool."""

    ids: tuple[int, ...]  # the spool rows it covers
    what: str  # for logs: "report for camera dock", "batch of 12 events"

    def send(self) -> Response: ...

    def settle(self, response: Response) -> None:
        """Update the spool and the counters for this answer (any outcome)."""


class Courier(Protocol):
    """One destination: its spool, and the next delivery to try."""

    label: str  # "Model Monitoring", "Vision Events"
    spool: Spool

    def next(self) -> Delivery | None: ...

    def redact(self, text: str) -> str: ...

    def close(self) -> None: ...

    def observe(self, seconds: float) -> None:
        """One request took this long."""

    def set_unauthorized(self, refused: bool) -> None: ...


class _MonitoringRequest:
    def __init__(self, courier: MonitoringCourier, item_id: int, kind: str, camera: str, body: str) -> None:
        self._courier = courier
        self.ids = (item_id,)
        self.what = f"{kind} for camera {camera}"
        self._kind = kind
        self._body = body

    def send(self) -> Response:
        return self._courier.client.send(self._kind, self._body)

    def settle(self, response: Response) -> None:
        metrics = self._courier.metrics
        if response.outcome is Outcome.ACCEPTED:
            self._courier.spool.delete(self.ids[0])
            metrics.reports.labels("sent").inc()
            metrics.last_upload.set(time.time())
        elif response.outcome is Outcome.REJECTED:
            self._courier.spool.delete(self.ids[0])
            metrics.reports.labels("failed").inc()
        elif response.outcome is Outcome.UNAUTHORIZED:
            metrics.reports.labels("failed").inc()
        else:
            metrics.reports.labels("retried").inc()


class Client(Protocol):
    def redact(self, text: str) -> str: ...

    def close(self) -> None: ...


class ClientCourier:
    """What every courier does with its HTTP client and its destination's metrics; a subclass names the
    next delivery."""

    def __init__(self, spool: Spool, client: Client, upload_duration: Histogram, unauthorized: Gauge) -> None:
        self.spool = spool
        self.client = client
        self._upload_duration = upload_duration
        self._unauthorized = unauthorized

    def redact(self, text: str) -> str:
        return self.client.redact(text)

    def close(self) -> None:
        self.client.close()

    def observe(self, seconds: float) -> None:
        self._upload_duration.observe(seconds)

    def set_unauthorized(self, refused: bool) -> None:
        self._unauthorized.set(int(refused))


class MonitoringCourier(ClientCourier):
    """Model Monitoring: each spooled row is one request, sent as it was written."""

    label = "Model Monitoring"

    def __init__(self, spool: Spool, client: RoboflowClient, metrics: MonitoringMetrics) -> None:
        super().__init__(spool, client, metrics.upload_duration, metrics.monitoring_unauthorized)
        self.metrics = metrics

    def next(self) -> Delivery | None:
        item = self.spool.oldest()
        if item is None:
            return None
        return _MonitoringRequest(self, item.id, item.kind, item.camera, item.body)


class Uploader:
    def __init__(
        self,
        spool: Spool,
        courier: Courier | None,
        *,
        unauthorized_retry: float = 600.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        thread_name: str = "roboflow-uploader",
        stalled_after: float = 30.0,
    ) -> None:
        """`courier` None (no API key): nothing is sent; requests stay in the spool. An attempt in flight for
        longer than `stalled_after` seconds counts as failing from its start."""
        self._spool = spool
        self._courier = courier
        self._unauthorized_retry = unauthorized_retry
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._stalled_after = stalled_after
        self._stop = threading.Event()
        self._changed = threading.Condition()  # guards everything below
        self._pending = False  # wake() since the thread last looked at the spool
        self._phase = "working"  # working | idle (spool empty) | paused (backoff or refused key)
        self._attempts: OrderedDict[int, Response] = OrderedDict()
        self._unauthorized = False
        self._failing_since: float | None = None
        self._last_success: float | None = None
        self._failures = 0
        self._in_flight_since: float | None = None
        self._started = False
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        if courier is not None:
            courier.set_unauthorized(False)

    def start(self) -> None:
        if self._courier is not None and not self._started:
            self._started = True
            self._thread.start()

    def threads(self) -> list[threading.Thread]:
        """The sending thread, when there is one (with an API key)."""
        return [self._thread] if self._courier is not None else []

    def wake(self) -> None:
        """Something was spooled."""
        with self._changed:
            self._pending = True
            self._changed.notify_all()

    def state(self) -> UploaderState:
        with self._changed:
            failing_since = self._failing_since
            started = self._in_flight_since
            if started is not None and time.monotonic() - started > self._stalled_after:
                failing_since = started if failing_since is None else min(failing_since, started)
            return UploaderState(self._unauthorized, failing_since, self._last_success, self._spool.depth)

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
        Waits at most `timeout` seconds in all (None: until a request in flight ends, within the client's
        deadline); True once stopped."""
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
        self._thread.join(None if timeout is None else max(0.0, started + timeout - time.monotonic()))
        return not self._thread.is_alive()

    def close_with_spool(self, grace: float, timeout: float, label: str, waiting: str) -> None:
        """The destination's last step at stop: `close`, then the spool, saying how many `waiting` (e.g.
        "Vision Event(s)") stay in it for the next start. A thread still in a request keeps the spool open
        (the process exit closes it)."""
        if not self.close(grace, timeout):
            log.warning("the %s uploader did not stop in time; its request stays spooled", label)
            return
        if self._spool.depth:
            log.info("%d %s left in %s for the next start", self._spool.depth, waiting, self._spool.path)
        self._spool.close()

    def _run(self) -> None:
        courier = self._courier
        assert courier is not None  # the thread only runs with a courier
        try:
            self._loop(courier)
        finally:
            courier.close()

    def _loop(self, courier: Courier) -> None:
        while not self._stop.is_set():
            with self._changed:
                self._pending = False
                self._phase = "working"
            try:
                delivery = courier.next()
            except sqlite3.Error as exc:  # the disk (a damaged file is replaced by the spool itself)
                log.warning("cannot read the %s spool %s: %s", self._spool.name, self._spool.path, exc)
                self._pause(self._backoff_max)
                continue
            except Exception:
                log.exception("cannot read the %s spool %s", self._spool.name, self._spool.path)
                self._pause(self._backoff_max)
                continue
            if delivery is None:
                self._wait_for_work()
                continue
            started = time.monotonic()
            with self._changed:
                self._in_flight_since = started
            try:
                response = delivery.send()
            except Exception as exc:  # a bug, not the network: keep the request, say what happened
                detail = f"unexpected {type(exc).__name__}: {courier.redact(str(exc))}"
                response = Response(Outcome.RETRY, None, detail)
            finally:
                with self._changed:
                    self._in_flight_since = None
            courier.observe(time.monotonic() - started)
            try:
                delivery.settle(response)
                delay = self._settle(courier, delivery, response)
            except sqlite3.Error as exc:  # disk full, I/O error: a sent request may go again (at least once)
                log.warning("cannot update the %s spool %s: %s", self._spool.name, self._spool.path, exc)
                delay = self._backoff_max
            except Exception:  # a bug: keep going, with the details
                log.exception("cannot update the %s spool %s", self._spool.name, self._spool.path)
                delay = self._backoff_max
            with self._changed:
                for item_id in delivery.ids:
                    self._attempts[item_id] = response
                while len(self._attempts) > _REMEMBERED_ATTEMPTS:
                    self._attempts.popitem(last=False)
                self._changed.notify_all()
            if delay:
                self._pause(delay)

    def _settle(self, courier: Courier, delivery: Delivery, response: Response) -> float:
        """Act on one answer (the delivery has updated the spool); returns the wait before the next."""
        now = time.monotonic()
        label = courier.label
        if response.outcome is Outcome.ACCEPTED:
            if self._unauthorized:
                log.warning("Roboflow accepts the API key again: %s uploads resumed", label)
                courier.set_unauthorized(False)
            elif self._failures:
                log.info("Roboflow %s accepts uploads again (%d failed before)", label, self._failures)
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
            # later request forever. The delivery dropped it (or split it to find the culprit), loudly.
            log.error("Roboflow refused a %s %s (%s)", label, delivery.what, response.detail)
            return 0.0
        if response.outcome is Outcome.UNAUTHORIZED:
            if not self._unauthorized:
                log.error(
                    "Roboflow refuses the API key (%s): %s uploads stopped, %d request(s) kept in "
                    "the spool; fix the API key (or its access) - it is tried again every %.0f s",
                    response.detail, label, self._spool.depth, self._unauthorized_retry,
                )
                courier.set_unauthorized(True)
                with self._changed:
                    self._unauthorized = True
            return self._unauthorized_retry

        if response.retry_after is not None:
            delay = response.retry_after
        else:
            delay = backoff_delay(failures - 1, self._backoff_base, self._backoff_max)
        log.warning(
            "Roboflow %s upload of a %s failed (%s); %d request(s) spooled, next attempt in %.1f s",
            label, delivery.what, response.detail, self._spool.depth, delay,
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
