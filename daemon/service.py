"""Wiring and lifecycle: build every stage from the config, start them, watch them, stop them in order.

Start: metrics endpoint, model (loaded and warmed up), sinks, dispatcher, inference worker, cameras, then
READY=1. Stop (SIGTERM/SIGINT, --duration, or a failed inference worker): cameras first, then the worker,
then the dispatcher, which drains its queue and flushes and closes every sink (the monitoring sink spools
every partial window), then the endpoint. A failed inference worker ends the process with exit code 1.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from daemon import __version__, sdnotify
from daemon.alerts.engine import AlertEngine, ConfidenceTracker
from daemon.config import CameraConfig, Config
from daemon.frames import Frame, Sink
from daemon.metrics import Metrics
from daemon.model.session import Model
from daemon.pipeline.board import FrameBoard
from daemon.pipeline.capture import Camera
from daemon.pipeline.dispatcher import Dispatcher
from daemon.pipeline.inference import InferenceWorker
from daemon.reload.command import status_path
from daemon.reload.live import LiveConfig
from daemon.reload.metrics import ReloadMetrics
from daemon.reload.reloader import Reloader
from daemon.reload.switch import MqttSwitch
from daemon.roboflow.model_monitoring import MonitoringSink
from daemon.sinks.detection_metrics import DetectionMetrics
from daemon.sinks.history import History
from daemon.sinks.mqtt import MqttPublisher
from daemon.sinks.progress import ProgressReporter
from daemon.web.api import ApiServer, ModelInfo
from daemon.web.exporter import Exporter

log = logging.getLogger("edgewatch")

# How cameras are made: the real capture threads, or (benchmarks) sources with the same interface.
CameraFactory = Callable[
    [CameraConfig, FrameBoard, Metrics, threading.Event, Callable[[str, bool], None]], Camera
]

RELOAD_WAIT = 300.0  # seconds `POST /api/reload` waits for the outcome (a TensorRT model may build)
HEALTH_STALL = 15.0  # seconds without an inference-loop turn before /healthz and the watchdog fail
JOIN_TIMEOUT = 5.0


class Service:
    def __init__(self, config: Config, model: Model, camera_factory: CameraFactory = Camera) -> None:
        self.config = config
        self.model = model
        self.metrics = Metrics()
        self.stop = threading.Event()
        self._worker_stop = threading.Event()
        self._dispatch_stop = threading.Event()
        camera_ids = [camera.id for camera in config.cameras]

        self.metrics.set_provider(model.provider)
        if not config.mqtt.enabled:  # no broker configured: no "disconnected" series to alert on
            self.metrics.registry.unregister(self.metrics.mqtt_connected)
            self.metrics.registry.unregister(self.metrics.mqtt_dropped)
        self.metrics.init_cameras(camera_ids)
        dropped = self.metrics.frames_dropped

        def count_stale(frame: Frame) -> None:  # looked up each time: cameras come and go with reloads
            dropped.labels(frame.camera_id, "stale").inc()

        self.board = FrameBoard(camera_ids, on_stale=count_stale, max_requests=config.api.max_pending)
        state_dir = config.roboflow.spool.parent
        self.mqtt = (
            MqttSwitch(
                MqttPublisher(
                    config.mqtt,
                    config.device.id,
                    camera_ids,
                    self.metrics,
                    discovery_state=state_dir / "homeassistant.json",
                )
            )
            if config.mqtt.enabled
            else None
        )
        # The monitoring page's store lives beside the spool; without the API nobody reads it.
        self.history = History(state_dir / "history.db") if config.api.enabled else None
        on_report = self.history.record_report if self.history else None
        self.monitoring = (
            MonitoringSink(config, self.metrics, on_report=on_report) if config.roboflow.enabled else None
        )
        self.progress = ProgressReporter(camera_ids, self.metrics)
        self.confidence = ConfidenceTracker(
            config.alerts.confidence_window, config.alerts.confidence_baseline
        )
        sinks: list[Sink] = [DetectionMetrics(self.metrics), self.progress, self.confidence]
        api_sinks: list[Sink] = []
        if self.monitoring:
            sinks.append(self.monitoring)
            api_sinks.append(self.monitoring)
        if self.history:  # after monitoring: its last reports arrive while the monitoring sink flushes
            sinks.append(self.history)
            api_sinks.append(self.history)
        if self.mqtt:
            sinks.append(self.mqtt)
        self.dispatcher = Dispatcher(sinks, self.metrics, self._dispatch_stop, api_sinks=tuple(api_sinks))
        self.worker = InferenceWorker(
            model,
            config.model.id,
            self.board,
            self.dispatcher.submit,
            self.metrics,
            config.model.max_batch,
            config.model.batch_timeout_ms / 1000,
            self._worker_stop,
        )
        self._camera_factory = camera_factory
        self._camera_stops: dict[str, threading.Event] = {}
        self.cameras = [self._make_camera(camera) for camera in config.cameras]
        self.alerts = AlertEngine(
            config.alerts,
            self.metrics,
            listeners=[listener for listener in (self.mqtt, self.history) if listener is not None],
            cameras=self._camera_states,
            inference_progress=lambda: self.worker.last_progress,
            upload_failing_since=(lambda: self.monitoring.uploader_state().failing_since)
            if self.monitoring
            else None,
            monitoring_unauthorized=(lambda: self.monitoring.uploader_state().unauthorized)
            if self.monitoring
            else None,
            confidence=self.confidence,
        )
        self.api = (
            ApiServer(config, ModelInfo.of(model), self.board, self.history, self.metrics)
            if config.api.enabled and self.history
            else None
        )
        self.exporter = (
            Exporter(config.metrics.host, config.metrics.port, self.metrics.registry, self.health)
            if config.metrics.enabled
            else None
        )
        self.reloader = self._make_reloader()

    def _on_camera_status(self, camera_id: str, online: bool) -> None:
        if self.mqtt and camera_id in self._camera_stops:  # not a removed camera's last word
            self.mqtt.set_camera_status(camera_id, online)

    def _camera_states(self) -> dict[str, tuple[bool, float]]:
        return {camera.config.id: (camera.state.online, camera.state.since_mono) for camera in self.cameras}

    def health(self) -> tuple[bool, dict[str, Any]]:
        stalled_for = time.monotonic() - self.worker.last_progress
        threads = {
            "inference": self.worker.is_alive(),
            "dispatcher": self.dispatcher.is_alive(),
            **{
                f"camera:{camera.config.id}": camera.is_alive()
                for camera in self.cameras
                if not camera.finished
            },
        }
        healthy = all(threads.values()) and stalled_for < HEALTH_STALL
        detail = {
            "inference_idle_seconds": round(stalled_for, 1),
            "threads": threads,
            "cameras": {camera.config.id: camera.state.online for camera in self.cameras},
            "alerts": [alert["type"] for alert in self.alerts.active()],
        }
        return healthy, detail

    def _status_line(self) -> str:
        parts = []
        for camera in self.cameras:
            state = camera.state
            parts.append(f"{camera.config.id} {'up' if state.online else 'down'} {state.frames} frames")
        return "; ".join(parts) or "no cameras"

    def run(self, duration: float | None = None) -> int:
        """Start, watch until stopped (signal, `duration` or a failed worker), stop; returns the exit code."""
        started = time.monotonic()
        self.start()
        watchdog = sdnotify.watchdog_interval()
        tick = min(1.0, watchdog / 2) if watchdog else 1.0
        last_status = 0.0
        while not self.stop.wait(tick):
            if self.worker.error is not None:
                break
            now = time.monotonic()
            if duration is not None and now - started >= duration:
                log.info("ran for %.0f s as asked; stopping", duration)
                break
            if watchdog and self.health()[0]:
                sdnotify.watchdog()
            if now - last_status >= 5:
                sdnotify.status(self._status_line())
                last_status = now
        return self.shutdown()

    def start(self) -> None:
        """Start every thread, sinks first and cameras last, then tell systemd we are ready."""
        if self.exporter:
            self.exporter.start()
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, self.exporter.port)
        if self.mqtt:
            self.mqtt.start()
        self.progress.start()
        self.dispatcher.start()
        self.worker.start()
        if self.api:
            self.api.start()
        for camera in self.cameras:
            camera.start()
        self.alerts.start()
        if self.reloader:
            self.reloader.start()
        sdnotify.ready()
        log.info(
            "edgewatch %s running: device %s, %d camera(s), model %s on %s",
            __version__,
            self.config.device.id,
            len(self.cameras),
            self.config.model.id,
            self.model.provider,
        )

    def shutdown(self) -> int:
        sdnotify.stopping()
        log.info("stopping")
        if self.reloader:
            self.reloader.close()  # a reload in progress finishes first: it may be starting cameras
        self.alerts.close()
        for stop in self._camera_stops.values():
            stop.set()
        for camera in self.cameras:
            camera.join(JOIN_TIMEOUT)
        self._worker_stop.set()
        self.board.close()
        self.worker.join(JOIN_TIMEOUT)
        if self.api:
            self.api.close()  # answers the requests still waiting with 503
        self._dispatch_stop.set()
        self.dispatcher.join(JOIN_TIMEOUT * 2)
        if self.exporter:
            self.exporter.close()
        stuck = [t.name for t in (*self.cameras, self.worker, self.dispatcher) if t.is_alive()]
        if stuck:
            log.warning("threads still running at exit: %s", ", ".join(stuck))
        if self.worker.error is not None:
            log.critical("exiting with code 1: the inference worker failed")
            return 1
        log.info("stopped cleanly")
        return 0

    def install_signal_handlers(self) -> None:
        def request_stop(signum: int, _frame: object) -> None:
            log.info("received %s", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        if self.reloader:
            reloader = self.reloader
            signal.signal(signal.SIGHUP, lambda _signum, _frame: reloader.request())

    # --- live reconfiguration: the parts a config reload (daemon/reload) changes ---------------------

    def _make_reloader(self) -> Reloader | None:
        """SIGHUP, `edgewatch reload` and `POST /api/reload` reread the file this config came from."""
        if self.config.source is None:
            return None
        reloader = Reloader(
            self.config.source,
            LiveConfig(self),
            ReloadMetrics(self.metrics.registry),
            listeners=lambda: [listener for listener in (self.mqtt, self.history) if listener is not None],
            status_file=status_path(self.config.roboflow.spool.parent),
        )
        if self.api:
            self.api.reload_handler = lambda: self.reload(RELOAD_WAIT)
        return reloader

    def reload(self, timeout: float) -> dict[str, Any] | None:
        """Reload the config now (queued behind one in progress); the outcome, or None if shutting down."""
        ticket = self.reloader.request() if self.reloader else None
        outcome = self.reloader.wait(ticket, timeout) if self.reloader and ticket is not None else None
        return outcome.as_dict() if outcome else None

    def _make_camera(self, camera: CameraConfig) -> Camera:
        stop = self._camera_stops[camera.id] = threading.Event()
        return self._camera_factory(camera, self.board, self.metrics, stop, self._on_camera_status)

    def camera_statuses(self) -> dict[str, bool]:
        return {camera.config.id: camera.state.online for camera in self.cameras}

    def add_camera(self, camera: CameraConfig) -> None:
        self.board.add_camera(camera.id)
        self.metrics.init_cameras([camera.id])
        if self.mqtt:
            self.mqtt.add_camera(camera.id)
        thread = self._make_camera(camera)
        self.cameras = [*self.cameras, thread]  # replaced whole: health and alerts read it unlocked
        thread.start()
        log.info("camera %s added", camera.id)

    def stop_camera(self, camera_id: str) -> None:
        thread = next(camera for camera in self.cameras if camera.config.id == camera_id)
        self._camera_stops.pop(camera_id).set()
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            log.warning("camera %s: its capture thread did not stop within %.0f s", camera_id, JOIN_TIMEOUT)
        self.cameras = [camera for camera in self.cameras if camera is not thread]

    def restart_camera(self, camera: CameraConfig) -> None:
        """A changed camera (url, fps...): it alone stops and starts again with its new config."""
        self.stop_camera(camera.id)
        thread = self._make_camera(camera)
        self.cameras = [*self.cameras, thread]
        thread.start()
        log.info("camera %s restarted with its new settings", camera.id)

    def replace_camera_config(self, camera: CameraConfig) -> None:
        """A change that applies to the running camera (metadata)."""
        for thread in self.cameras:
            if thread.config.id == camera.id:
                thread.config = camera
