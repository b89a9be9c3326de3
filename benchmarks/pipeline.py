"""One measured run of the full daemon (`Service`): cameras -> board -> inference -> dispatcher -> every sink.

Sinks on: Prometheus metrics, progress, confidence tracker, Model Monitoring (aggregator + SQLite spool, no
API key so nothing leaves the machine; in the soak uploading to local stand-ins, and Vision Events too) and
MQTT to a real local Mosquitto. The run warms up, then measures a window: frames offered, inferred and dropped
(from the daemon's own Prometheus counters), `session.run` time (the inference duration histogram), each
frame's latency from capture until every sink is done (a recording sink placed after the daemon's own, so it
sees the frame when they have all handled it), and the CPU time of the pipeline's threads (inference worker
and its session.run thread, events thread, dispatcher), of the worker's steps (letterboxing, `session.run`,
decoding, the rest), of each sink (its `handle` and `drained`) and of the whole process per inferred frame.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, ParamSpec, TypeVar

import numpy as np

from benchmarks.standins import StandIns
from daemon.config import (
    ApiConfig,
    CameraConfig,
    Config,
    DeviceConfig,
    MetricsConfig,
    ModelConfig,
    MqttConfig,
    RoboflowConfig,
    VisionEventsConfig,
)
from daemon.frames import FrameResult
from daemon.model.session import Model
from daemon.service import CameraFactory, Service
from daemon.sink import Sink

FAIR_SPREAD = 0.10  # the most (max - min) / mean of the frames per camera that counts as equal shares


class LatencyRecorder(Sink):
    """A Sink that notes each frame's seconds from capture until it is called. The latencies are kept as C
    doubles, 8 bytes a frame: a list of Python floats grew the soak's process by about 2 MiB an hour, 80,000
    objects in Python's allocator, which read as the daemon's growth."""

    name = "bench-latency"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = False
        self._latencies = array("d")

    def arm(self) -> None:
        with self._lock:
            self._armed = True
            self._latencies = array("d")

    def disarm(self) -> np.ndarray:
        """The latencies (seconds) noted since `arm`."""
        with self._lock:
            self._armed = False
            return np.array(self._latencies, dtype=np.float64)

    def handle(self, result: FrameResult) -> None:
        latency = time.monotonic() - result.captured_mono
        with self._lock:
            if self._armed:
                self._latencies.append(latency)


P = ParamSpec("P")
R = TypeVar("R")


class SinkTimer:
    """CPU time each of the daemon's sinks spends in `handle` and `drained`, on the thread that calls them
    (from `arm` on)."""

    def __init__(self) -> None:
        self.used: dict[str, float] = {}

    def arm(self, sinks: list[Sink]) -> None:
        for sink in sinks:
            if sink.name != LatencyRecorder.name:
                self.used[sink.name] = 0.0
                sink.handle = self._timed(sink.name, sink.handle)  # type: ignore[method-assign]
                sink.drained = self._timed(sink.name, sink.drained)  # type: ignore[method-assign]

    def _timed(self, name: str, call: Callable[P, None]) -> Callable[P, None]:
        def timed(*args: P.args, **kwargs: P.kwargs) -> None:
            started = time.thread_time()
            try:
                call(*args, **kwargs)
            finally:
                self.used[name] += time.thread_time() - started  # one thread per sink: no lost update

        return timed


class LoopTimer:
    """The inference threads' CPU time from `open_window` on, split: in the model's `prepare` (letterboxing),
    `run` (session.run, on the run thread) and `detections` (decoding the outputs), and the rest between them
    (building and handing over the results, taking the next batch; handing runs over). Counted per thread on
    the threads that call them, over whole calls, so a call under way when the window opens or closes does
    not skew it. The model is shared by the benchmark's runs: `disarm` restores it.

    From `arm` on it also notes when each batch's decoding ended (`decoded`), so that a window can run from
    the end of one batch to the end of another and hold whole batches only."""

    STEPS = ("prepare", "run", "detections")

    def __init__(self, model: Model) -> None:
        self._model = model
        self.used = dict.fromkeys((*self.STEPS, "rest"), 0.0)
        self.frames = 0  # frames decoded since `open_window`
        self.decoded = BatchMark(time.monotonic(), 0, 0)
        self._returned: dict[int, float] = {}  # by thread: its CPU clock when its last timed call returned
        self._window = 0  # counts `open_window` calls: a call begun before the last one is not counted
        self._armed = False

    def arm(self) -> None:
        for step in self.STEPS:
            setattr(self._model, step, self._timed(step, getattr(self._model, step)))
        self._armed = True
        self.open_window()

    def open_window(self) -> None:
        """Count CPU time from the next call on."""
        self._window += 1
        self.used = dict.fromkeys(self.used, 0.0)
        self.frames = 0
        self._returned = {}

    def disarm(self) -> None:
        if self._armed:
            for step in self.STEPS:
                delattr(self._model, step)  # the instance's wrapper: the class's method shows again
            self._armed = False

    def per_frame_ms(self) -> dict[str, float]:
        return {step: used / self.frames * 1000 for step, used in self.used.items()} if self.frames else {}

    def _timed(self, step: str, call: Callable[P, R]) -> Callable[P, R]:
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            thread = threading.get_ident()
            window = self._window
            started = time.thread_time()
            if thread in self._returned:
                self.used["rest"] += started - self._returned[thread]
            try:
                return call(*args, **kwargs)
            finally:
                frames = len(args[1]) if step == "detections" else 0  # type: ignore[arg-type]
                if frames:  # its images are the batch (a run may be padded past them)
                    done = self.decoded  # one store of a new tuple: read whole by the benchmark's thread
                    self.decoded = BatchMark(time.monotonic(), done.frames + frames, done.batches + 1)
                if window == self._window:
                    self._returned[thread] = time.thread_time()
                    self.used[step] += self._returned[thread] - started
                    self.frames += frames

        return timed


@dataclass
class Counters:
    at: float
    offered: float
    inferred: float
    dropped: dict[str, float]
    run_seconds: float  # sum of session.run time
    batches: float
    per_camera: dict[str, float]
    mqtt_dropped: float
    captured: dict[str, float]


@dataclass
class Measured:
    seconds: float
    offered: int
    inferred: int
    dropped: dict[str, int]
    batches: int
    run_seconds: float
    latencies_ms: np.ndarray
    per_camera: dict[str, int]
    mqtt_dropped: int
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, RSS MiB)
    # at the same moments: Python's allocated blocks, threads, open descriptors (what grows beside RSS)
    process: list[tuple[int, int, int]] = field(default_factory=list)
    rss_end_mb: float = 0.0  # RSS at the end of the window, the daemon still running
    # per inferred frame: by pipeline thread, the camera threads together, the process
    thread_cpu_ms: dict[str, float] = field(default_factory=dict)
    # per frame, the inference thread's CPU in `prepare`, `run` and `detections`, and the rest (`LoopTimer`)
    loop_cpu_ms: dict[str, float] = field(default_factory=dict)
    sink_cpu_ms: dict[str, float] = field(default_factory=dict)  # per inferred frame: by sink
    # raw session.run frames/s at this run's batch size, measured just before and just after it (the mean)
    raw_fps: float | None = None
    # with an online wait: seconds from the start until every camera had delivered a frame (None: not all did)
    online_seconds: float | None = None
    # the window's whole batches (`whole_batches`); None: counted at the window's two ends instead
    batches_span: Span | None = None
    # at the window's end: (cameras decoding on the GPU, cameras with decoder = "cuda"); None: none asked
    gpu_decoding: tuple[int, int] | None = None
    # with --profile: the share of the window in which a thread held the GIL (py-spy's samples)
    gil_held: float | None = None

    @property
    def _counted(self) -> Span:
        """The window's whole batches where known, else what the daemon's counters said at its two ends."""
        return self.batches_span or Span(self.seconds, self.inferred, self.batches)

    @property
    def fps(self) -> float:
        seconds, frames, _ = self._counted
        return frames / seconds if seconds else 0.0

    @property
    def mean_batch(self) -> float:
        _, frames, batches = self._counted
        return frames / batches if batches else 0.0

    @property
    def overhead_ms(self) -> float:
        """Mean time per inferred frame the inference loop spent outside session.run."""
        seconds, frames, _ = self._counted
        return (seconds - self.run_seconds) / frames * 1000 if frames else 0.0

    @property
    def run_ms_per_batch(self) -> float:
        return self.run_seconds / self.batches * 1000 if self.batches else 0.0

    @property
    def run_ms_per_frame(self) -> float:
        return self.run_seconds / self.inferred * 1000 if self.inferred else 0.0

    @property
    def cpu_note(self) -> str:
        """The pipeline threads' CPU time per inferred frame, and the part of it each sink took."""
        threads = ", ".join(f"{name} {ms:.2f}" for name, ms in self.thread_cpu_ms.items())
        sinks = ", ".join(f"{name} {ms:.3f}" for name, ms in self.sink_cpu_ms.items())
        loop = ", ".join(f"{step} {ms:.3f}" for step, ms in self.loop_cpu_ms.items())
        return (
            f"CPU ms/frame {threads}"
            + (f"; of it the inference thread's: {loop}" if loop else "")
            + (f"; the sinks': {sinks}" if sinks else "")
        )

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else float("nan")

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def shares(self, cameras: list[str]) -> Shares:
        """How evenly the frames inferred in the window went to `cameras`."""
        return Shares([self.per_camera[camera] for camera in cameras])


@dataclass(frozen=True)
class Shares:
    """Frames inferred per camera in one window, and whether each camera got its fair share of them."""

    counts: list[int]

    @property
    def spread(self) -> float:
        """(max - min) / mean: 0 when all got equal shares."""
        if len(self.counts) < 2 or not sum(self.counts):
            return 0.0
        return (max(self.counts) - min(self.counts)) / (sum(self.counts) / len(self.counts))

    @property
    def fair(self) -> bool:
        """Within FAIR_SPREAD of the mean, or within one frame: when a window holds fewer than ten turns per
        camera, a round robin's last, partial turn leaves some cameras one frame ahead however fair it is."""
        return self.spread <= FAIR_SPREAD or max(self.counts) - min(self.counts) <= 1

    def __str__(self) -> str:
        return f"spread {self.spread:.1%}, {min(self.counts)}-{max(self.counts)} frames each"


class BatchMark(NamedTuple):
    """When the last batch's decoding ended, and the frames and batches decoded by then."""

    at: float  # time.monotonic()
    frames: int
    batches: int


class Span(NamedTuple):
    """A window's whole batches: from the end of the last one before it to the end of the last one in it."""

    seconds: float
    frames: int
    batches: int


def whole_batches(opened: BatchMark, closed: BatchMark) -> Span | None:
    """The whole batches between `LoopTimer.decoded` at a window's two ends; None without a batch that ended
    before it and one that ended in it.

    A window of fixed length cuts a batch at each end: up to a batch of frames too many or too few, 3 % of an
    8 s window in batches of 8 on a 2-core CPU. Counted by the one thread that decodes, the frames and batches
    agree, where the daemon's counters, read while a batch is being counted, may be a batch apart."""
    if not 0 < opened.frames < closed.frames:
        return None
    return Span(closed.at - opened.at, closed.frames - opened.frames, closed.batches - opened.batches)


def process_counts() -> tuple[int, int, int]:
    """(Python's allocated blocks, this process's threads, its open file descriptors) (Linux)."""
    return sys.getallocatedblocks(), len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


def thread_cpu(service: Service) -> dict[tuple[str, str], float]:
    """CPU seconds each pipeline thread, keyed by its role (`Service.threads_by_role`) and its name, and the
    whole process, keyed ("process", "process"), have used so far (waiting for a core does not count)."""
    used = {
        (role, thread.name): time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        for role, thread in service.threads_by_role()
        if thread.ident is not None and thread.is_alive()
    }
    used["process", "process"] = time.process_time()
    return used


def cpu_per_frame(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], frames: int
) -> dict[str, float]:
    """Milliseconds of CPU per frame between two `thread_cpu` readings, by role: the threads read at both (a
    camera started in between is left out), so the camera threads together as `cameras`, and the process."""
    by_role: dict[str, float] = {}
    for (role, name), seconds in after.items():
        if (role, name) in before:
            by_role[role] = by_role.get(role, 0.0) + seconds - before[role, name]
    return {role: seconds / frames * 1000 if frames else 0.0 for role, seconds in by_role.items()}


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set size (VmRSS; VmHWM: its peak), MiB (Linux)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_config(
    model: ModelConfig,
    cameras: list[CameraConfig],
    workdir: Path,
    broker: tuple[str, int],
    max_batch: int,
    batch_timeout_ms: float,
    api: ApiConfig | None = None,
    uploads: StandIns | None = None,
) -> Config:
    """Every sink on. Model Monitoring spools without a key (nothing leaves the machine), unless `uploads`
    names local stand-ins: then it uploads to them, and so does Vision Events, with every kind of event."""
    model_config = model.model_copy(update={"max_batch": max_batch, "batch_timeout_ms": batch_timeout_ms})
    endpoint = {"api_key": uploads.monitoring_key, "api_url": uploads.monitoring_url} if uploads else {}
    vision_events = (
        VisionEventsConfig(
            enabled=True,
            api_key=uploads.vision_events_key,
            api_url=uploads.vision_events_url,
            use_case="bench",
            send=["alerts", "zones", "lines", "counts"],
        )
        if uploads
        else VisionEventsConfig()
    )
    return Config(
        device=DeviceConfig(id="bench"),
        model=model_config,
        cameras=cameras,
        roboflow=RoboflowConfig(enabled=True, spool=workdir / "spool.db", frequency=5, **endpoint),
        vision_events=vision_events,
        mqtt=MqttConfig(enabled=True, host=broker[0], port=broker[1]),
        metrics=MetricsConfig(host="127.0.0.1", port=0),
        api=api or ApiConfig(),
    )


def _gpu_decoding(service: Service) -> tuple[int, int] | None:
    """(cameras decoding on the GPU, cameras that asked for it) from `edgewatch_camera_gpu_decoding`."""
    asked = [camera.id for camera in service.config.cameras if camera.decoder != "cpu"]
    if not asked:
        return None
    value = service.metrics.registry.get_sample_value
    return sum(value("edgewatch_camera_gpu_decoding", {"camera": c}) == 1 for c in asked), len(asked)


def _counters(service: Service) -> Counters:
    registry = service.metrics.registry
    cameras = [camera.id for camera in service.config.cameras]

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    per_camera = {c: value("edgewatch_frames_inferred_total", camera=c) for c in cameras}
    captured = {c: value("edgewatch_frames_captured_total", camera=c) for c in cameras}
    reasons = ("stale", "dispatch_full", "read_error")
    return Counters(
        at=time.monotonic(),
        offered=sum(captured.values()),
        inferred=sum(per_camera.values()),
        dropped={
            r: sum(value("edgewatch_frames_dropped_total", camera=c, reason=r) for c in cameras)
            for r in reasons
        },
        run_seconds=value("edgewatch_inference_duration_seconds_sum"),
        batches=value("edgewatch_inference_duration_seconds_count"),
        per_camera=per_camera,
        mqtt_dropped=value("edgewatch_mqtt_messages_dropped_total"),
        captured=captured,
    )


def run_pipeline(
    config: Config,
    model: Model,
    factory: CameraFactory,
    warmup: float,
    seconds: float,
    rss_at: tuple[float, ...] = (),
    on_window: Callable[[Service], None] | None = None,
    online_timeout: float = 0.0,
) -> tuple[Measured, Counters]:
    """Run the daemon for `warmup + seconds`; measure the last `seconds`.

    Returns the window's figures and the totals at the end (after a clean stop) for the drop accounting.
    `rss_at`: seconds since the start at which to sample RSS (the window must cover them).
    `online_timeout`: first wait up to this long for every camera's first frame (cameras that connect
    slowly, e.g. many RTSP streams probing at 2 fps); the warm-up starts after.
    """
    recorder = LatencyRecorder()
    if model.fixed_batch is None:  # runs are as large as the largest batch so far: start as a new model does
        model.run_size = 1
    service = Service(config, model, camera_factory=factory, extra_sinks=[recorder])
    exit_code: list[int] = []
    runner = threading.Thread(target=lambda: exit_code.append(service.run()), name="bench-service")
    loop = LoopTimer(model)
    loop.arm()  # before the worker's first batch: the model's methods are not swapped under it
    started = time.monotonic()
    runner.start()
    rss: list[tuple[float, float]] = []
    counts: list[tuple[int, int, int]] = []
    try:
        deadline = time.monotonic() + online_timeout
        while (waiting := min(_counters(service).captured.values(), default=1) == 0) and (
            time.monotonic() < deadline
        ):
            service.stop.wait(0.5)
        online_seconds = time.monotonic() - started if online_timeout and not waiting else None
        service.stop.wait(warmup)
        sinks = SinkTimer()
        sinks.arm(service.sinks.all)
        loop.open_window()
        opened = loop.decoded
        before, cpu_before = _counters(service), thread_cpu(service)
        recorder.arm()
        if on_window is not None:
            on_window(service)
        for at in sorted(rss_at):
            service.stop.wait(max(0.0, started + at - time.monotonic()))
            rss.append((at, rss_mib()))
            counts.append(process_counts())
        service.stop.wait(max(0.0, before.at + seconds - time.monotonic()))
        rss_end = rss_mib()
        closed = loop.decoded
        after, cpu_after = _counters(service), thread_cpu(service)
        gpu_decoding = _gpu_decoding(service)
        sink_cpu = dict(sinks.used)
        loop_cpu = loop.per_frame_ms()
        latencies = recorder.disarm()
    finally:
        service.stop.set()
        runner.join(60)
        loop.disarm()
    if runner.is_alive() or exit_code != [0]:
        raise RuntimeError(f"the daemon did not stop cleanly (exit code {exit_code or 'none'})")
    totals = _counters(service)
    inferred = round(after.inferred - before.inferred)
    measured = Measured(
        seconds=after.at - before.at,
        offered=round(after.offered - before.offered),
        inferred=inferred,
        dropped={r: round(after.dropped[r] - before.dropped[r]) for r in after.dropped},
        batches=round(after.batches - before.batches),
        run_seconds=after.run_seconds - before.run_seconds,
        latencies_ms=latencies * 1000,
        per_camera={c: round(after.per_camera[c] - before.per_camera[c]) for c in after.per_camera},
        mqtt_dropped=round(after.mqtt_dropped - before.mqtt_dropped),
        rss_mb=rss,
        process=counts,
        rss_end_mb=rss_end,
        thread_cpu_ms=cpu_per_frame(cpu_before, cpu_after, inferred),
        sink_cpu_ms={name: used / inferred * 1000 if inferred else 0.0 for name, used in sink_cpu.items()},
        loop_cpu_ms=loop_cpu,
        online_seconds=online_seconds,
        batches_span=whole_batches(opened, closed),
        gpu_decoding=gpu_decoding,
    )
    return measured, totals
