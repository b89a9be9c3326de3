"""What every benchmark section shares: the report and its rows, the raw ceiling, the bench context."""

from __future__ import annotations

import os
import platform
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from benchmarks import profile as sampler
from benchmarks.pipeline import Measured, bench_config, run_pipeline
from benchmarks.sources import camera_factory
from benchmarks.standins import StandIns
from daemon.config import ApiConfig, CameraConfig, ModelConfig
from daemon.model.session import Model
from daemon.pipeline.source import Decoder
from daemon.pipeline.video import VideoStream
from daemon.service import Service

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "demo" / "bench"  # made once, kept (demo/ is not committed)
DEFAULT_MODEL = REPO / "models" / "yolov3-tiny-coco.onnx"
RAW_BATCHES = (1, 2, 4, 8)
OVERLOAD_FPS = 15.0
OVERLOAD_CAMERAS = 4
MAX_DROP_RATIO = 0.01
UNPACED_RATIO = 0.96  # the targets: the full daemon against raw session.run, unpaced and under overload
OVERLOAD_RATIO = 0.97


@dataclass
class Row:
    section: str
    case: str
    cameras: int
    batch: float
    fps: float
    ratio: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    overhead_ms: float | None = None
    run_ms: float | None = None
    dropped: str = ""
    note: str = ""
    load: float = field(default_factory=lambda: os.getloadavg()[0])  # 1-minute load average when measured


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    checks: list[tuple[bool, str]] = field(default_factory=list)
    raw: dict[int, float] = field(default_factory=dict)  # batch size -> frames/s
    notes: list[str] = field(default_factory=list)

    def check(self, ok: bool, text: str) -> None:
        self.checks.append((ok, text))
        print(f"  {'PASS' if ok else 'MISS'}  {text}", flush=True)

    def ratio(self, fps: float, batch: float) -> float:
        nearest = min(self.raw, key=lambda b: abs(b - batch))
        return fps / self.raw[nearest]


def commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "uncommitted"
    return f"{head}{' (+ uncommitted changes)' if dirty else ''}"


# 1. raw


def raw_fps(
    model: Model,
    frames: list[np.ndarray],
    size: int,
    seconds: float,
    after_each: Callable[[], None] | None = None,
) -> float:
    """Frames/s of `session.run` alone, in a tight loop on a letterboxed batch of `size` real frames (on a
    model with a fixed batch dim, in its full runs); `after_each` is called after every measured run."""
    batch, _ = model.prepare((frames * size)[:size])  # the model's own buffer: pinned where the daemon's is
    if model.fixed_batch is None:
        batch = batch[:size]  # not the rows a CUDA model pads its runs with
    for _ in range(2):
        model.run(batch)
    runs = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        model.run(batch)
        runs += 1
        if after_each is not None:
            after_each()
    return runs * size / elapsed


def raw_fps_beside_decoding(
    model: Model, frames: list[np.ndarray], clip: Path, cameras: int, seconds: float, decoder: Decoder = "cpu"
) -> tuple[float, float]:
    """`raw_fps` at B=`cameras` while `cameras` threads decode `clip` as the daemon's unpaced file cameras do:
    each decodes its next frame once the previous one was taken (here: once per `session.run`), with the
    capture's own settings. No daemon: what decoding alone costs the model on this machine's cores.
    Returns (frames/s, the decoders' CPU time per inferred frame in ms)."""

    def open_clip() -> VideoStream:  # as a file camera opens it
        return VideoStream(str(clip), open_timeout=10, read_timeout=10, decoder=decoder)

    probe = open_clip()
    opened, problem = probe.isOpened(), probe.error
    probe.release()
    if not opened:
        raise RuntimeError(f"{clip}: FFmpeg cannot open it: {problem}")
    taken = [threading.Semaphore(0) for _ in range(cameras)]
    stop = threading.Event()
    cpu: list[float] = []

    def decode(turns: threading.Semaphore) -> None:
        capture = open_clip()
        decoding = time.thread_time()  # the decoding from here on, not FFmpeg's probing at open
        try:
            while not stop.is_set():
                ok, _ = capture.read()
                if not ok:
                    capture.rewind()
                    continue
                while not turns.acquire(timeout=0.1):
                    if stop.is_set():
                        return
        finally:
            cpu.append(time.thread_time() - decoding)
            capture.release()

    runs = 0

    def take_one_each() -> None:
        nonlocal runs
        runs += 1
        for turns in taken:
            turns.release()

    decoders = [threading.Thread(target=decode, args=(turns,), name="decoder") for turns in taken]
    for thread in decoders:
        thread.start()
    try:
        fps = raw_fps(model, frames, cameras, seconds, after_each=take_one_each)
    finally:
        stop.set()
        for thread in decoders:
            thread.join()
    return fps, sum(cpu) / (runs * cameras) * 1000


def bench_raw(model: Model, frames: list[np.ndarray], seconds: float, report: Report) -> None:
    print("raw: session.run on letterboxed batches", flush=True)
    if model.fixed_batch is not None:
        print(f"  (a fixed batch dim: every run is {model.fixed_batch} frames)", flush=True)
    for size in (b for b in RAW_BATCHES if b <= model.max_batch):
        fps = raw_fps(model, frames, size, seconds)
        report.raw[size] = fps
        report.rows.append(Row("raw", f"B={size}", 0, size, fps, run_ms=1000 / fps))
        print(
            f"  B={size}: {fps:.1f} frames/s ({size / fps * 1000:.1f} ms per batch), "
            f"load average {load_average()}",
            flush=True,
        )


def bench_io_binding(model: Model, frames: list[np.ndarray], seconds: float, report: Report) -> None:
    """On a GPU provider: `session.run` through the IO binding from the model's page-locked buffer (what the
    daemon does, the raw rows above) against a plain `session.run` of the same batch, alternating halves."""
    bound = model.bound
    if bound is None:
        return
    print("raw: IO binding against a plain session.run", flush=True)
    try:
        for size in (b for b in RAW_BATCHES if b <= model.max_batch):
            fps = {"IO binding": 0.0, "plain session.run": 0.0}
            for _ in range(2):
                for case in fps:
                    model.bound = bound if case == "IO binding" else None
                    fps[case] += raw_fps(model, frames, size, seconds / 4) / 2
            plain = fps["plain session.run"]
            report.rows.append(Row("raw", f"B={size} plain session.run", 0, size, plain, run_ms=1000 / plain))
            print(
                f"  B={size}: IO binding {fps['IO binding']:.1f}, plain session.run {plain:.1f} frames/s",
                flush=True,
            )
    finally:
        model.bound = bound


def float16_copy(model: Path) -> Path:
    """`model` with its weights and arithmetic in float16 (ONNX Runtime's converter; the input and outputs
    stay float32), written once beside it: how CUDA runs a model in half precision (TensorRT converts by
    itself)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out = model.with_name(f"{model.stem}-fp16.onnx")
    if not out.is_file() or out.stat().st_mtime < model.stat().st_mtime:
        onnx.save(convert_float_to_float16(onnx.load(model), keep_io_types=True), out)
    return out


# 2-4. the daemon


@dataclass
class Bench:
    model: Model
    model_config: ModelConfig
    broker: tuple[str, int]
    workdir: Path
    scenes: list[list[np.ndarray]]
    max_batch: int
    batch_timeout_ms: float
    warmup: float
    window: float
    report: Report
    profile: Path | None = None  # where py-spy records the N=4 unpaced and the batching runs (--profile)
    # seconds of raw session.run just before and just after each run, at its batch size: the ratio's
    # reference, so that a machine whose speed drifts between sections does not move the ratio (0: the raw
    # section's figures instead)
    bracket: float = 3.0
    runs: int = 0
    api: ApiConfig | None = None  # the HTTP API and the page's history: on in the soak
    uploads: StandIns | None = None  # local Roboflow stand-ins the daemon uploads to: in the soak
    decoder: Decoder = "cpu"  # where the file cameras decode (--decoder)

    @property
    def frames(self) -> list[np.ndarray]:
        """Every scene's frames, one after the other (the raw reference's batches are cut from them)."""
        return [frame for scene in self.scenes for frame in scene]

    def file_cameras(self, clip: Path, count: int, fps: float, realtime: bool = True) -> list[CameraConfig]:
        """`count` cameras playing `clip` in a loop, on the bench's decoder."""
        return [
            CameraConfig(
                id=f"cam-{i + 1}", url=str(clip), fps=fps, loop=True, realtime=realtime, decoder=self.decoder
            )
            for i in range(count)
        ]

    def pipeline(
        self,
        cameras: list[CameraConfig],
        seconds: float | None = None,
        rss_at: tuple[float, ...] = (),
        profile: Path | None = None,
        online_timeout: float = 0.0,
        live: int | None = None,
        profile_threads: tuple[str, ...] = ("inference", "dispatcher"),
    ) -> tuple[Measured, int]:
        """Measure one run; also returns how many frames are unaccounted for (offered - inferred - drops).
        `live`: how many of `cameras` deliver (default all), for the batch size of the raw reference."""
        self.runs += 1
        workdir = Path(tempfile.mkdtemp(prefix=f"run-{self.runs}-", dir=self.workdir))  # copies count apart
        config = bench_config(
            self.model_config, cameras, workdir, self.broker, self.max_batch, self.batch_timeout_ms, self.api,
            self.uploads,
        )
        window = seconds or self.window
        recorders: list[subprocess.Popen[bytes]] = []
        gil_profile = profile.with_name(f"{profile.stem}-gil{profile.suffix}") if profile else None
        roles: dict[int, str] = {}  # native thread id -> role, as the service names them

        def on_window(service: Service) -> None:
            assert profile is not None and gil_profile is not None
            roles.update(
                (thread.native_id, role) for role, thread in service.threads_by_role() if thread.native_id
            )
            recorders.extend([sampler.start(profile, window), sampler.start(gil_profile, window, gil=True)])

        frames = self.frames
        expected = min(live or len(cameras), self.max_batch, self.model.max_batch)
        before = raw_fps(self.model, frames, expected, self.bracket) if self.bracket else None
        measured, totals = run_pipeline(
            config, self.model, camera_factory(self.scenes), self.warmup, window, rss_at,
            on_window if profile else None, online_timeout,
        )
        if self.bracket and measured.batches:
            taken = max(1, min(round(measured.mean_batch), self.model.max_batch))
            after = raw_fps(self.model, frames, taken, self.bracket)
            # the mean of both sides when the run took the batches expected, else the side at its batch size
            measured.raw_fps = (before + after) / 2 if before is not None and taken == expected else after
        for recorder in recorders:
            _, errors = recorder.communicate(timeout=60)
            if recorder.returncode != 0:
                raise RuntimeError(f"py-spy failed: {errors.decode(errors='replace').strip()}")
        if recorders:
            assert profile is not None and gil_profile is not None
            measured.gil_held, held = sampler.gil_summary(gil_profile, roles, window)
            text = f"{sampler.summary(profile, roles, profile_threads)}\n{held}"
            profile.with_suffix(".summary.txt").write_text(text + "\n")
            print(text, flush=True)
        # read errors are never offered, and a result the dispatcher dropped was inferred: stale drops only
        unaccounted = round(totals.offered - totals.inferred - totals.dropped["stale"])
        return measured, unaccounted

    def row(
        self, section: str, case: str, m: Measured, cameras: int, note: str = "", busy: bool = True
    ) -> Row:
        """Report one run. `busy`: the worker never waited for frames, so time outside session.run is
        overhead (with paced cameras it is mostly waiting, and is left out)."""
        dropped = f"{m.dropped_total}/{m.offered}" if m.offered else "0"
        overhead = m.overhead_ms if busy else None
        if m.gil_held is not None:
            note = f"{note + ', ' if note else ''}GIL held {m.gil_held:.0%} of the window"
        if m.gpu_decoding is not None:
            on_gpu, asked = m.gpu_decoding
            note = f"{note + ', ' if note else ''}decoding on the GPU: {on_gpu} of {asked} cameras"
        row = Row(
            section,
            case,
            cameras,
            m.mean_batch,
            m.fps,
            m.fps / m.raw_fps if m.raw_fps else self.report.ratio(m.fps, m.mean_batch),
            m.latency(50),
            m.latency(95),
            m.latency(99),
            overhead,
            m.run_ms_per_frame,
            dropped,
            note,
        )
        self.report.rows.append(row)
        outside = f", outside session.run {overhead:.2f} ms/frame" if overhead is not None else ""
        against = f" of raw {m.raw_fps:.1f} around it" if m.raw_fps else ""
        print(
            f"  {case}: {m.fps:.1f} frames/s (ratio {row.ratio:.3f}{against}, batch {m.mean_batch:.2f}), "
            f"latency p50 {row.p50:.0f} / p95 {row.p95:.0f} / p99 {row.p99:.0f} ms{outside}, "
            f"dropped {dropped}{', ' + note if note else ''}, load average {load_average()}",
            flush=True,
        )
        return row


def memory_cameras(count: int, mode: str, fps: float = 240) -> list[CameraConfig]:
    return [CameraConfig(id=f"cam-{i + 1}", url=f"memory:{mode}", fps=fps) for i in range(count)]



def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

