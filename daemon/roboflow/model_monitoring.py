"""Roboflow Model Monitoring as a sink: one aggregator per stream, a window timer, the spool and the uploader.

Every `frequency` seconds (counted per stream from its first result) a stream's window closes: its top
prediction per class becomes one report plus one custom-metadata request, both written to the spool before
the uploader is woken to send them. Without an API key the reports are still spooled and logged, not sent.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol, TextIO

from daemon.config import Config, ConfigError, RoboflowConfig
from daemon.frames import FrameResult
from daemon.health import NO_HEALTH, Health
from daemon.metrics.monitoring import MonitoringMetrics
from daemon.roboflow.aggregator import Aggregator, Prediction
from daemon.roboflow.client import RoboflowClient, metadata_body, report_body
from daemon.roboflow.hostinfo import host_facts
from daemon.roboflow.spool import Spool, SpoolError, SpoolItem, created_utc, print_waiting
from daemon.roboflow.uploader import MonitoringCourier, Uploader, UploaderState
from daemon.sink import Sink

log = logging.getLogger("edgewatch.monitoring")


@dataclass
class _Stream:
    aggregator: Aggregator = field(default_factory=Aggregator)
    deadline: float = 0.0  # time.monotonic() at which the current window closes
    model_id: str = ""  # the model of the current window's results


def summary(predictions: list[Prediction] | list[dict[str, Any]]) -> str:
    """`cup 0.87, person 0.55`: the classes of a report with their top confidence."""
    entries = [p.as_dict() if isinstance(p, Prediction) else p for p in predictions]
    return ", ".join(f"{entry['class_name']} {entry['confidence']:.2f}" for entry in entries)


class ReportListener(Protocol):
    """Told of every report once it is spooled, with the custom metadata sent beside it (the window timer's
    or the dispatcher's thread): must not block."""

    def on_report(self, body: dict[str, Any], metadata: dict[str, str]) -> None: ...


class MonitoringSink(Sink):
    """Results of cameras and API streams in, reports into the spool; `handle` does no I/O."""

    name = "monitoring"
    accepts = frozenset({"camera", "api"})

    def __init__(
        self,
        config: Config,
        metrics: MonitoringMetrics,
        *,
        unauthorized_retry: float = 600.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        close_grace: float = 5.0,
        listeners: Sequence[ReportListener] = (),
        health: Health = NO_HEALTH,
    ) -> None:
        settings = config.roboflow
        self._device_id = config.device.id
        self._frequency = float(settings.frequency)
        self._metadata = {camera.id: dict(camera.metadata) for camera in config.cameras}
        # the debug mode of Roboflow's block: a window close waits for its requests' first attempt
        self._synchronous = not settings.fire_and_forget
        self._sync_timeout = settings.timeout * 2 + 1  # the workspace lookup, then the request
        self._close_grace = close_grace
        self._listeners = tuple(listeners)  # the page's history: every spooled report with its metadata
        self._host = host_facts()
        self.spool = Spool(
            settings.spool, int(settings.max_spool_mb * 1024 * 1024), settings.max_spool_age, metrics,
            health=health,
        )
        self._metrics = metrics
        self._uploader_options = {
            "unauthorized_retry": unauthorized_retry,
            "backoff_base": backoff_base,
            "backoff_max": backoff_max,
        }
        self._settings = settings
        self.uploader = self._make_uploader(settings)
        if not self.sending:
            log.info(
                "no Roboflow API key: Model Monitoring reports are kept in %s and logged, not sent",
                settings.spool,
            )
        self._streams: dict[str, _Stream] = {}
        self._retired: list[tuple[str, Aggregator]] = []  # windows cut by a model swap, to close at once
        self._changed = threading.Condition()  # guards _streams' membership and deadlines
        self._stop = threading.Event()
        self._closed = False
        self._timer = threading.Thread(target=self._run_timer, name="monitoring-windows", daemon=True)

    def start(self) -> None:
        self.uploader.start()
        self._timer.start()

    def threads(self) -> list[threading.Thread]:
        """The sink's long-lived threads, for /healthz and the watchdog."""
        return [self._timer, *self.uploader.threads()]

    def handle(self, result: FrameResult) -> None:
        with self._changed:  # the timer may drop an idle API stream at any moment: add under the same lock
            stream = self._streams.get(result.camera_id)
            if stream is None:
                stream = _Stream(deadline=time.monotonic() + self._frequency)
                self._streams[result.camera_id] = stream
                self._changed.notify_all()
            if stream.model_id != result.model_id:
                self._new_model(result.camera_id, stream, result.model_id)
            stream.aggregator.add(result.detections, result.inference_id, result.model_id)

    def _new_model(self, camera: str, stream: _Stream, model_id: str) -> None:
        """The model was swapped: the window so far is reported apart (under the old model id), now."""
        if stream.model_id:  # an empty window closes without a report
            with self._changed:
                self._retired.append((camera, stream.aggregator))
                stream.aggregator = Aggregator()
                self._changed.notify_all()
        stream.model_id = model_id

    def uploader_state(self) -> UploaderState:
        """For the alert engine: is the key refused, since when do uploads fail, how much is waiting."""
        return self.uploader.state()

    def flush(self) -> None:
        """Close every stream's window now: what was seen so far goes to the spool."""
        with self._changed:
            streams = list(self._streams.items())
            retired, self._retired = self._retired, []
        for camera, aggregator in retired:
            self._close_window(camera, aggregator)
        for camera, stream in streams:
            self._close_window(camera, stream.aggregator)

    def close(self, timeout: float) -> None:
        """Flush, give the uploader a short grace to send, stop, all within `timeout` seconds. Unsent
        requests wait in the spool for the next start."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        with self._changed:
            self._stop.set()
            self._changed.notify_all()
        if self._timer.is_alive():
            self._timer.join(max(0.0, deadline - time.monotonic()))
        self.flush()
        self.uploader.close_with_spool(
            self._close_grace,
            max(0.0, deadline - time.monotonic()),
            "Model Monitoring",
            "Model Monitoring request(s)",
        )

    def _run_timer(self) -> None:
        while True:
            with self._changed:
                while not self._stop.is_set():
                    now = time.monotonic()
                    due = [(camera, s) for camera, s in self._streams.items() if s.deadline <= now]
                    if due or self._retired:
                        break
                    next_deadline = min((s.deadline for s in self._streams.values()), default=None)
                    self._changed.wait(None if next_deadline is None else next_deadline - now)
                else:
                    return
                for camera, stream in due:  # keep each stream on its own grid, skipping windows missed
                    if camera not in self._metadata and len(stream.aggregator) == 0:
                        del self._streams[camera]  # an API stream idle for a whole window: free it
                        continue
                    missed = int((now - stream.deadline) // self._frequency)
                    stream.deadline += self._frequency * (missed + 1)
                retired, self._retired = self._retired, []
            closing = [*retired, *((camera, stream.aggregator) for camera, stream in due)]
            for camera, aggregator in closing:
                try:
                    self._close_window(camera, aggregator)
                except Exception:  # a spool write failed: the window is lost, the timer must live on
                    log.exception("cannot spool the Model Monitoring report of camera %s", camera)

    # live reconfiguration (a config reload)

    def remove_camera(self, camera_id: str) -> None:
        """A camera left the config (all its results handled): its partial window goes to the spool now."""
        with self._changed:
            stream = self._streams.pop(camera_id, None)
            retired = [aggregator for camera, aggregator in self._retired if camera == camera_id]
            self._retired = [(camera, a) for camera, a in self._retired if camera != camera_id]
            self._changed.notify_all()
        for aggregator in [*retired, *([stream.aggregator] if stream else [])]:
            self._close_window(camera_id, aggregator)

    def set_cameras(self, config: Config) -> None:
        """The cameras' custom metadata, for the windows that close from now on."""
        self._metadata = {camera.id: dict(camera.metadata) for camera in config.cameras}

    def set_settings(self, settings: RoboflowConfig) -> None:
        """New frequency (from each stream's next window), key, workspace, URL or timeout: a new uploader
        takes over the same spool (the old one finishes or times out its request in flight first)."""
        self._frequency = float(settings.frequency)
        self._synchronous = not settings.fire_and_forget
        self._sync_timeout = settings.timeout * 2 + 1
        old = self._settings
        self._settings = settings
        if (old.api_key, old.api_url, old.workspace, old.timeout) == (
            settings.api_key, settings.api_url, settings.workspace, settings.timeout
        ):
            return
        self.uploader.close()  # a request in flight ends (at most the client's timeout), then it stops
        self.uploader = self._make_uploader(settings)
        self.uploader.start()
        self.uploader.wake()

    def _make_uploader(self, settings: RoboflowConfig) -> Uploader:
        key = settings.api_key.get_secret_value()
        try:
            client = (
                RoboflowClient(settings.api_url, key, workspace=settings.workspace, timeout=settings.timeout)
                if key
                else None
            )
        except ValueError as exc:  # a proxy variable that is not a proxy URL
            raise ConfigError(f"roboflow: {exc}") from None
        self.sending = client is not None
        return Uploader(
            self.spool,
            MonitoringCourier(self.spool, client, self._metrics) if client else None,
            **self._uploader_options,
            stalled_after=settings.timeout * 2 + 1,  # the workspace lookup, then the request
        )

    def _close_window(self, camera: str, aggregator: Aggregator) -> None:
        predictions = aggregator.flush()
        if not predictions:
            return
        created = time.time()
        timestamp = datetime.fromtimestamp(created, timezone.utc)
        report = report_body(
            predictions, device_id=self._device_id, camera_id=camera, host=self._host, timestamp=timestamp
        )
        metadata = metadata_body(predictions, camera_id=camera, metadata=self._metadata.get(camera, {}))
        ids = []
        for kind, body in (("report", report), ("metadata", metadata)):
            try:
                ids.append(self.spool.put(kind, camera, body, created))
            except SpoolError as exc:  # counted as dropped and reported degraded by the spool
                log.warning("Model Monitoring %s of camera %s is lost: %s", kind, camera, exc)
        if len(ids) < 2:
            return
        for listener in self._listeners:
            try:
                listener.on_report(report, {"camera": camera, **self._metadata.get(camera, {})})
            except Exception:  # the report is spooled, go on
                log.exception("%s could not take the report of camera %s", type(listener).__name__, camera)
        if not self.sending:
            log.info(
                "Model Monitoring report, camera %s (not sent, no API key): %s",
                camera, summary(predictions),
            )
            return
        self.uploader.wake()
        log.debug("Model Monitoring report spooled, camera %s: %s", camera, summary(predictions))
        if self._synchronous:
            outcomes = self.uploader.wait_attempted(ids, self._sync_timeout)
            for item_id, kind in zip(ids, ("report", "metadata"), strict=True):
                response = outcomes.get(item_id)
                result = f"{response.outcome.value} ({response.detail})" if response else "not tried yet"
                log.info("Model Monitoring %s, camera %s: %s", kind, camera, result)


def _describe(item: SpoolItem) -> str:
    body = item.json()
    if item.kind == "report":
        return summary(body.get("inference_results", []))
    entries = body.get("data", [])
    ids = len(entries[0]["inference_ids"]) if entries else 0
    fields = ", ".join(f"{entry['field_name']}={entry['field_value']}" for entry in entries)
    return f"{fields} ({ids} inference id(s))"


def list_reports(config: Config, *, as_json: bool = False, limit: int | None = None,
                 out: TextIO | None = None) -> int:
    """`edgewatch reports`: print the requests waiting in the spool (newest `limit`, oldest first).

    Text: created time, camera, kind, classes (or metadata fields). JSON: a list of the exact bodies.
    Returns the exit code.
    """
    return print_waiting(
        config.roboflow.spool,
        what="Model Monitoring requests",
        noun="request(s)",
        limit=limit,
        as_json=as_json,
        json_row=lambda item: {
            "id": item.id, "kind": item.kind, "camera": item.camera, "created": created_utc(item),
            "body": item.json(),
        },
        text_line=lambda item: f"{item.kind:<8}  {_describe(item)}",
        out=out or sys.stdout,
    )
