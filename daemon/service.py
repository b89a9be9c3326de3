"""The composition root: build every part from the config, start them, watch them, stop them in order.

Start: the metrics endpoint, the sinks, the dispatchers, the inference worker, the API, the cameras, the
alert engine, then READY=1. Stop (SIGTERM/SIGINT, --duration, or a failed inference worker), within the
shutdown budget (SHUTDOWN_BUDGET seconds by default) in all: the alert engine and the cameras first, then
the worker, the API, the events thread and the dispatcher (each handing over what is queued); then every
sink is flushed (the monitoring sink spools its partial windows) and closed, each within what is left of the
budget, a hung one abandoned with a warning so that the others still close; the endpoint last. A failed
inference worker ends the process with exit code 1.
"""

from __future__ import annotations

import collections
import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from daemon import __version__, allocator, sdnotify
from daemon.alerts.engine import AlertEngine, ConfidenceTracker
from daemon.config import CameraConfig, Config
from daemon.events.sink import EventsSink, build_events_sink
from daemon.frames import CameraState, CameraStatusListener, Frame
from daemon.health import NO_HEALTH, Health
from daemon.metrics import Metrics
from daemon.metrics.cameras import CameraMetrics
from daemon.metrics.frames import FrameMetrics
from daemon.metrics.threads import ThreadCpuCollector
from daemon.model.session import Model, batch_settings
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
from daemon.roboflow.vision_events import VisionEventsSink, build_vision_events, failing_since
from daemon.sink import Sink
from daemon.sinks.detection_series import DetectionSeries
from daemon.sinks.history import History
from daemon.sinks.mqtt import MqttPublisher
from daemon.sinks.progress import ProgressReporter
from daemon.web.api import ApiServer, ModelInfo
from daemon.web.exporter import Exporter
from daemon.web.server import ServerMetrics

log = logging.getLogger("edgewatch")

# How cameras are made: the real capture threads, or (benchmarks, tests) sources with the same interface.
CameraFactory = Callable[
    [CameraConfig, FrameBoard, FrameMetrics, CameraMetrics, threading.Event, Sequence[CameraStatusListener]],
    Camera,
]

RELOAD_WAIT = 300.0  # seconds `POST /api/reload` waits for the outcome (a TensorRT model may build)
HEALTH_STALL = 15.0  # seconds without an inference-loop turn before /healthz and the watchdog fail
SHUTDOWN_BUDGET = 45.0  # seconds for the whole stop; the unit's TimeoutStopSec (60) leaves room above it
STAGE_JOIN = 5.0  # at most, for each of: the cameras, the inference worker, each dispatcher's drain
# results with their frames waiting for the events thread: the only queue that holds frames
EVENTS_QUEUE_SIZE = 32


@dataclass(frozen=True)
class Sinks:
    """The sinks in dispatch order (the events sink first, on its own thread), and the ones other parts talk
    to directly."""

    all: list[Sink]
    events: EventsSink
    mqtt: MqttSwitch | None
    history: History | None
    monitoring: MonitoringSink | None
    vision_events: VisionEventsSink | None
    confidence: ConfidenceTracker

    @property
    def after_events(self) -> list[Sink]:
        """The sinks the dispatcher thread calls, with the track ids the events thread has set."""
        return [sink for sink in self.all if sink is not self.events]


def build_sinks(
    config: Config,
    metrics: Metrics,
    camera_states: Callable[[], Mapping[str, CameraState]],
    dropped: Callable[[], Mapping[str, int]],
    extra: Sequence[Sink] = (),
    health: Health = NO_HEALTH,
) -> Sinks:
    """The sinks the config asks for. Model Monitoring comes before the history, which records the reports
    that the monitoring sink spools while it flushes; `extra` (benchmarks, tests) go last."""
    camera_ids = [camera.id for camera in config.cameras]
    state_dir = config.roboflow.spool.parent
    mqtt = (
        MqttSwitch(  # a reload may replace its publisher (another broker)
            MqttPublisher(
                config.mqtt,
                config.device.id,
                camera_ids,
                metrics.mqtt,
                discovery_state=state_dir / "homeassistant.json",
            )
        )
        if metrics.mqtt is not None
        else None
    )
    # The monitoring page's store lives beside the spool; without the API nobody reads it.
    history = History(state_dir / "history.db", health=health) if config.api.enabled else None
    monitoring = (
        MonitoringSink(config, metrics.monitoring, listeners=[history] if history else [], health=health)
        if config.roboflow.enabled
        else None
    )
    confidence = ConfidenceTracker(config.alerts.confidence_window, config.alerts.confidence_baseline)
    # events first (its own thread): it sets the detections' track ids, which the later sinks (MQTT) pass on
    events = build_events_sink(
        config, metrics.registry, state_dir, listeners=[mqtt, history], counts_listeners=[mqtt]
    )
    # Vision Events: alerts, zone/line events with their snapshots and counts to Roboflow, own spool
    vision_events = build_vision_events(config, metrics.registry, events.read_snapshot, health)
    if vision_events:
        events.add_listener(vision_events)
    ordered: list[Sink | None] = [
        events,
        DetectionSeries(metrics.detections),
        ProgressReporter(camera_states, dropped),
        confidence,
        monitoring,
        history,
        mqtt,
        vision_events,
        *extra,
    ]
    sinks = [sink for sink in ordered if sink is not None]
    return Sinks(sinks, events, mqtt, history, monitoring, vision_events, confidence)


class Service:
    def __init__(
        self,
        config: Config,
        model: Model,
        camera_factory: CameraFactory = Camera,
        extra_sinks: Sequence[Sink] = (),
        shutdown_budget: float = SHUTDOWN_BUDGET,
    ) -> None:
        self.config = config
        self.model = model
        self._shutdown_budget = shutdown_budget
        self.stop = threading.Event()
        self.metrics = Metrics(mqtt=config.mqtt.enabled)
        self.metrics.set_provider(model.provider)
        self.metrics.init_cameras(camera.id for camera in config.cameras)
        # parts running degraded (a bad state file, a full disk...): /healthz, edgewatch_degraded, an alert
        self.part_health = Health(self.metrics.registry)
        self.server_metrics = ServerMetrics(self.metrics.registry)  # connections the HTTP servers refused
        self.sinks = build_sinks(
            config, self.metrics, self._camera_states, self._dropped, extra_sinks, self.part_health
        )
        self._build_pipeline(camera_factory)
        ThreadCpuCollector(self.metrics.registry, self.threads_by_role)
        self._build_alerts()
        self._build_http()
        self.reloader = self._build_reloader()

    # --- the parts -------------------------------------------------------------------------------------

    def _build_pipeline(self, camera_factory: CameraFactory) -> None:
        """Cameras -> board -> inference worker -> events thread -> dispatcher -> sinks, each stage with its
        stop event."""
        config, frames, inference = self.config, self.metrics.frames, self.metrics.inference
        self._worker_stop = threading.Event()
        self._events_stop = threading.Event()
        self._dispatch_stop = threading.Event()
        camera_ids = [camera.id for camera in config.cameras]

        def count_stale(frame: Frame) -> None:  # looked up each time: cameras come and go with reloads
            frames.frames_dropped.labels(frame.camera_id, "stale").inc()

        self.board = FrameBoard(camera_ids, on_stale=count_stale, max_requests=config.api.max_pending)
        max_batch, batch_timeout = batch_settings(config.model, self.model.provider)
        self.dispatcher = Dispatcher(
            self.sinks.after_events, frames, inference.dispatcher_queue_depth, self._dispatch_stop
        )
        self.events_thread = Dispatcher(
            [self.sinks.events],
            frames,
            inference.events_queue_depth,
            self._events_stop,
            queue_size=EVENTS_QUEUE_SIZE,
            name="events",
            then=self.dispatcher,
        )
        self.worker = InferenceWorker(
            self.model,
            config.model.id,
            self.board,
            self.events_thread.submit,
            frames,
            inference,
            max_batch,
            batch_timeout,
            self._worker_stop,
        )
        self._camera_factory = camera_factory
        self._camera_stops: dict[str, threading.Event] = {}  # one per camera: a reload stops one alone
        self.cameras = [self._make_camera(camera) for camera in config.cameras]

    def _build_alerts(self) -> None:
        sinks = self.sinks
        # both Roboflow destinations (Model Monitoring, Vision Events) raise the same upload alerts
        uploads = [sink.uploader_state for sink in (sinks.monitoring, sinks.vision_events) if sink]
        self.alerts = AlertEngine(
            self.config.alerts,
            self.metrics.alerts,
            listeners=[listener for listener in (sinks.mqtt, sinks.history, sinks.vision_events) if listener],
            cameras=self._camera_snapshot,
            inference_progress=lambda: self.worker.last_progress,
            upload_failing_since=(lambda: failing_since(uploads)) if uploads else None,
            monitoring_unauthorized=(lambda: any(state().unauthorized for state in uploads))
            if uploads
            else None,
            confidence=sinks.confidence,
            degraded=self.part_health.degraded,
        )

    def _build_http(self) -> None:
        config = self.config
        self.api = (
            ApiServer(
                config,
                ModelInfo.of(self.model),
                self.board,
                self.sinks.history,
                self.metrics.api,
                server_metrics=self.server_metrics,
                events=self.sinks.events,
            )
            if config.api.enabled and self.sinks.history
            else None
        )
        self.exporter = (
            Exporter(
                config.metrics.host, config.metrics.port, self.metrics.registry, self.health,
                self.server_metrics,
            )
            if config.metrics.enabled
            else None
        )

    # --- what the parts ask of each other --------------------------------------------------------------

    def _camera_states(self) -> dict[str, CameraState]:
        return {camera.config.id: camera.state for camera in self.cameras}

    def _dropped(self) -> dict[str, int]:
        """Frames of each camera not inferred since the start: stale, results queue full, undecodable."""
        counts = collections.Counter(self.board.stale_counts())
        counts.update(self.events_thread.dropped_counts())
        counts.update(self.dispatcher.dropped_counts())
        counts.update({camera.config.id: camera.state.read_errors for camera in self.cameras})
        return dict(counts)

    def _camera_snapshot(self) -> dict[str, tuple[bool, float]]:
        return {camera.config.id: (camera.state.online, camera.state.since_mono) for camera in self.cameras}

    def _threads(self) -> dict[str, threading.Thread]:
        """Every long-lived thread by name, but a camera that ended on purpose (a file played out)."""
        threads: list[threading.Thread] = [
            self.worker, self.events_thread, self.dispatcher, *self.alerts.threads()
        ]
        threads += [camera for camera in self.cameras if not camera.finished]
        for sink in self.sinks.all:
            threads += sink.threads()
        for server in (self.api, self.exporter):
            threads += server.threads() if server else []
        return {thread.name: thread for thread in threads}

    def threads_by_role(self) -> list[tuple[str, threading.Thread]]:
        """The pipeline's threads, each with its `edgewatch_thread_cpu_seconds_total` label (some may not have
        started: the run thread on a CPU)."""
        return [
            ("inference", self.worker),
            ("inference-run", self.worker.run_thread),
            ("events", self.events_thread),
            ("dispatcher", self.dispatcher),
            *(("cameras", camera) for camera in self.cameras),
        ]

    def health(self) -> tuple[bool, dict[str, Any]]:
        stalled_for = time.monotonic() - self.worker.last_progress
        threads = {name: thread.is_alive() for name, thread in self._threads().items()}
        healthy = all(threads.values()) and stalled_for < HEALTH_STALL
        detail = {
            "inference_idle_seconds": round(stalled_for, 1),
            "threads": threads,
            "cameras": {camera.config.id: camera.state.online for camera in self.cameras},
            "alerts": [alert["type"] for alert in self.alerts.active()],
            # degraded but serving stays 200: a restart would not mend a disk (docs/security.md)
            "degraded": self.part_health.degraded(),
        }
        return healthy, detail

    def _status_line(self) -> str:
        parts = []
        for camera in self.cameras:
            state = camera.state
            parts.append(f"{camera.config.id} {'up' if state.online else 'down'} {state.frames} frames")
        return "; ".join(parts) or "no cameras"

    # --- lifecycle -------------------------------------------------------------------------------------

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
        """Start every thread, sinks first and cameras next, then tell systemd we are ready.

        The exporter comes last: its `/healthz` counts a thread not yet started as dead, so it answers only
        once every thread runs (a client that connects earlier waits in the listening socket's backlog).
        """
        allocator.tune_for_frames()
        for sink in self.sinks.all:
            sink.start()
        self.dispatcher.start()
        self.events_thread.start()
        self.worker.start()
        if self.api:
            self.api.start()
        for camera in self.cameras:
            camera.start()
        self.alerts.start()
        if self.reloader:
            self.reloader.start()
        if self.exporter:
            self.exporter.start()
            log.info("metrics on http://%s:%d/metrics", self.config.metrics.host, self.exporter.port)
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
        deadline = time.monotonic() + self._shutdown_budget

        def left(cap: float = self._shutdown_budget) -> float:
            return max(0.0, min(cap, deadline - time.monotonic()))

        if self.reloader:
            self.reloader.close(left())  # a reload in progress ends first: it may be starting cameras
        self.alerts.close(left(STAGE_JOIN))
        for stop in self._camera_stops.values():
            stop.set()
        camera_deadline = time.monotonic() + left(STAGE_JOIN)
        for camera in self.cameras:
            camera.join(max(0.0, camera_deadline - time.monotonic()))
        self._worker_stop.set()
        self.board.close()
        self.worker.join(left(STAGE_JOIN))
        if self.api:
            self.api.close()  # answers the requests still waiting with 503
        self._events_stop.set()  # drains into the dispatcher, which still runs
        self.events_thread.join(left(STAGE_JOIN))
        self._dispatch_stop.set()
        self.dispatcher.join(left(STAGE_JOIN))
        for sink in self.sinks.all:
            _guarded(sink.name, "flush", sink.flush, left())
        for sink in self.sinks.all:
            _guarded(sink.name, "close", lambda sink=sink: sink.close(left()), left())
        if self.exporter:
            self.exporter.close()
        stuck = [
            t.name for t in (*self.cameras, self.worker, self.events_thread, self.dispatcher) if t.is_alive()
        ]
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

    # --- live reconfiguration: what a config reload (daemon/reload) changes -----------------------------

    def _build_reloader(self) -> Reloader | None:
        """SIGHUP, `edgewatch reload` and `POST /api/reload` reread the file this config came from."""
        if self.config.source is None:
            return None
        listeners = [listener for listener in (self.sinks.mqtt, self.sinks.history) if listener]
        reloader = Reloader(
            self.config.source,
            LiveConfig(self),
            ReloadMetrics(self.metrics.registry),
            listeners=lambda: listeners,
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
        listeners: list[CameraStatusListener] = [self.sinks.events]
        if self.sinks.mqtt:
            listeners.append(self.sinks.mqtt)
        return self._camera_factory(
            camera, self.board, self.metrics.frames, self.metrics.cameras, stop, listeners
        )

    def camera_statuses(self) -> dict[str, bool]:
        return {camera.config.id: camera.state.online for camera in self.cameras}

    def add_camera(self, camera: CameraConfig) -> None:
        self.board.add_camera(camera.id)
        self.metrics.init_cameras([camera.id])
        if self.sinks.mqtt:
            self.sinks.mqtt.add_camera(camera.id)
        thread = self._make_camera(camera)
        self.cameras = [*self.cameras, thread]  # replaced whole: health and alerts read it unlocked
        thread.start()
        log.info("camera %s added", camera.id)

    def stop_camera(self, camera_id: str) -> None:
        thread = next(camera for camera in self.cameras if camera.config.id == camera_id)
        self._camera_stops.pop(camera_id).set()
        thread.join(STAGE_JOIN)
        if thread.is_alive():
            log.warning("camera %s: its capture thread did not stop within %.0f s", camera_id, STAGE_JOIN)
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


def _guarded(name: str, verb: str, step: Callable[[], object], timeout: float) -> None:
    """Run one sink's flush or close on a thread of its own, waiting at most `timeout` (plus a second
    for the sink to honour its own timeout): a sink that hangs or fails is logged and left behind."""
    failed: list[BaseException] = []

    def work() -> None:
        try:
            step()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=work, name=f"{verb}-{name}", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        log.warning("sink %s did not %s within %.0f s; going on without it", name, verb, timeout)
    elif failed:
        log.error("sink %s failed to %s: %s", name, verb, failed[0], exc_info=failed[0])
