"""Benchmark sections about scale: batching that pays, many cameras, and memory over a long run.

- batching: the demo network built for a small input (models/build.py --size), where reading the weights is a
  large part of each call and a batch of 8 reads them once for 8 frames; 16 in-memory cameras through the
  daemon with max_batch = 8 against the same with max_batch = 1, and both against the raw ceiling;
- cameras: 1, 4, 16, 64 cameras on a local RTSP server (640x480 H.264 at 2 fps each), every sink on:
  throughput, fairness, latency and RSS per camera;
- capacity: how many 640x480 H.264 file cameras at 15 fps one daemon carries on this host, every sink on:
  1, 2, 4, ... cameras until a count drops 1 % of its frames;
- soak: 8 file cameras at 5 fps with every sink on for a given time, as a device runs for months: each
  camera tracked, with two zones and a line (events, snapshots), Model Monitoring and Vision Events uploading
  to local stand-ins of Roboflow's endpoints, MQTT, the API and the page's history; RSS sampled each minute,
  growth measured after the first 10 minutes.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.events import with_events
from benchmarks.harness import (
    MAX_DROP_RATIO,
    OVERLOAD_CAMERAS,
    OVERLOAD_FPS,
    Bench,
    Report,
    Row,
    bench_raw,
    load_average,
    memory_cameras,
)
from benchmarks.pipeline import Measured, rss_mib
from benchmarks.standins import stand_ins
from daemon.config import ApiConfig, CameraConfig, ModelConfig
from daemon.demo import write_demo_clips
from daemon.model.preprocess import LetterboxBuffer
from daemon.model.session import BATCH_DEFAULTS, Model, _session_options, session_providers
from models import build

SMALL_CAMERAS = 16
SMALL_BATCH = 8
STREAM_FPS = 2  # the 64-camera case: each camera streams, and is read, at this rate
STREAM_COUNTS = (1, 4, 16, 64)
CAPACITY_COUNTS = (1, 2, 4, 8, 16, 32, 64, 128)
CAPACITY_THREADS = ("cameras", "inference", "events", "dispatcher")  # the threads --profile sums up there
# cameras per local RTSP server: one gst-rtsp-server process answers its clients' requests on one thread,
# and 64 handshakes at once outlast the cameras' open timeout on a busy machine; real cameras are servers each
CAMERAS_PER_SERVER = 16
# FFmpeg probes about 5 s of a stream at open; the cameras open side by side, each in its own thread
ONLINE_TIMEOUT = 60.0
SOAK_CAMERAS = 8
SOAK_FPS = 5.0
SOAK_SETTLE_MINUTES = 10.0


def small_model(size: int, config: ModelConfig) -> Model:
    """The demo network at `size` x `size`, built once into models/ (yolov3-tiny-coco-SIZE.onnx), on the
    provider and threads of `config`."""
    out = build.default_out(size)
    build.build(out, build.DEFAULT_CACHE, lambda line: print(f"  {line}", flush=True), size)
    model = Model.load(config.model_copy(update={"path": out, "max_batch": SMALL_BATCH}))
    model.warm_up()
    return model


def bench_batching(bench: Bench, size: int, raw_seconds: float) -> None:
    """16 unpaced in-memory cameras on the small model, max_batch 8 then 1, against its raw B=1/B=8."""

    print(f"batching: the demo network at {size}x{size}, {SMALL_CAMERAS} in-memory cameras", flush=True)
    model = small_model(size, bench.model_config)
    small = Report()
    bench_raw(model, bench.frames, raw_seconds, small)
    section = f"batching {size}px"
    for row in small.rows:
        row.section = section
    bench.report.rows += small.rows
    print(f"  raw B=8 / B=1: {small.raw[8] / small.raw[1]:.2f} (load average {load_average()})", flush=True)

    config = bench.model_config.model_copy(update={"path": model.path})
    figures: dict[int, Measured] = {}
    for max_batch in (SMALL_BATCH, 1):
        run = dataclasses.replace(bench, model=model, model_config=config, max_batch=max_batch, report=small)
        profile = bench.profile / f"py-spy-{size}px-max-batch-{max_batch}.txt" if bench.profile else None
        m, _ = run.pipeline(memory_cameras(SMALL_CAMERAS, "unpaced"), profile=profile)
        case = f"N={SMALL_CAMERAS} unpaced, max_batch {max_batch}"
        row = run.row(section, case, m, SMALL_CAMERAS, note="profiled (py-spy)" if profile else "")
        bench.report.rows.append(row)
        print(f"    {m.cpu_note}; session.run {m.run_ms_per_frame:.2f} ms/frame", flush=True)
        figures[max_batch] = m
    batched, single = figures[SMALL_BATCH], figures[1]
    # against raw measured around each run, as every other ratio (the section's own raw is minutes away)
    raw_batched, raw_single = batched.raw_fps or small.raw[SMALL_BATCH], single.raw_fps or small.raw[1]
    ratio = batched.fps / raw_batched
    bench.report.check(ratio >= 0.9, f"{section} N={SMALL_CAMERAS}: daemon / raw B=8 {ratio:.3f} >= 0.9")
    gain = batched.fps / single.fps if single.fps else float("inf")
    raw_gain = raw_batched / raw_single
    bench.report.check(
        gain >= 2.0,
        f"{section} N={SMALL_CAMERAS}: max_batch 8 / max_batch 1 {gain:.2f} >= 2 "
        f"({batched.fps:.0f} against {single.fps:.0f} frames/s; raw B=8 / B=1 around them {raw_gain:.2f})",
    )


def bench_prologue_cost(
    model: Model, config: ModelConfig, frames: list[np.ndarray], seconds: float, report: Report
) -> None:
    """session.run of the model file as it is (float32 NCHW, converted in numpy) against the loaded model
    (uint8 NHWC through the prologue), same provider and threads, alternating, at the largest batch."""
    size = min(8, model.max_batch)
    options = _session_options(model.threads)
    providers = session_providers(config, ort.get_available_providers())
    plain = ort.InferenceSession(str(model.path), sess_options=options, providers=providers)
    name = plain.get_inputs()[0].name
    canvas, _ = LetterboxBuffer(*model.input_size, max_batch=size).fill((frames * size)[:size])
    as_float = np.multiply(canvas[..., ::-1].transpose(0, 3, 1, 2), np.float32(1 / 255), dtype=np.float32)
    runs = {
        "float32 NCHW, no prologue": lambda: plain.run(None, {name: as_float}),
        "uint8 NHWC + prologue": lambda: model.run(canvas),
    }
    totals = dict.fromkeys(runs, 0.0)
    counts = dict.fromkeys(runs, 0)
    for _ in range(4):  # alternating quarters, so that a change in the machine's load hits both alike
        for case, run in runs.items():
            started = time.perf_counter()
            while time.perf_counter() - started < seconds / 8:
                run()
                counts[case] += 1
            totals[case] += time.perf_counter() - started

    for case in runs:
        fps = counts[case] * size / totals[case]
        report.rows.append(Row("raw", f"B={size} {case}", 0, size, fps, run_ms=1000 / fps))
        print(f"  B={size} {case}: {fps:.1f} frames/s (load average {load_average()})", flush=True)


def stream_clip(folder: Path) -> Path:
    """The coffee scene at 640x480 and STREAM_FPS as Motion JPEG (what the RTSP server decodes)."""
    clips = write_demo_clips(folder / f"stream-{STREAM_FPS}fps", seconds=10, fps=STREAM_FPS, suffix=".avi")
    return clips["coffee"]


def bench_cameras(bench: Bench, workdir: Path, counts: tuple[int, ...], seconds: float) -> None:
    """1 .. 64 cameras on local RTSP servers (each one encoder shared by its clients), each read at 2 fps."""
    from tests.support.daemon import free_port
    from tests.support.rtsp import RtspServer

    servers_needed = math.ceil(max(counts) / CAMERAS_PER_SERVER)
    print(
        f"cameras: RTSP 640x480 H.264 at {STREAM_FPS} fps each from {servers_needed} local server(s), "
        "every sink on",
        flush=True,
    )
    clip = stream_clip(workdir)
    servers = [RtspServer(clip, free_port()) for _ in range(servers_needed)]
    base = rss_mib()
    figures: list[tuple[int, float]] = []
    try:
        for server in servers:
            server.start()
        for count in counts:
            cameras = [
                CameraConfig(
                    id=f"rtsp-{i + 1}",
                    url=servers[i % len(servers)].url,
                    fps=STREAM_FPS,
                    decoder=bench.decoder,
                )
                for i in range(count)
            ]
            m, _ = bench.pipeline(cameras, seconds=seconds, online_timeout=ONLINE_TIMEOUT)
            online = f"all online after {m.online_seconds:.1f} s" if m.online_seconds else "not all online"
            rss = m.rss_end_mb
            figures.append((count, rss))
            budget = 1000 / STREAM_FPS + 1.5 * m.run_ms_per_batch
            shares = m.shares([camera.id for camera in cameras])
            silent = [camera.id for camera in cameras if m.per_camera[camera.id] == 0]
            row = bench.row(
                "cameras",
                f"N={count} RTSP {STREAM_FPS} fps",
                m,
                count,
                note=f"{online}, RSS {rss:.0f} MiB, p95 budget {budget:.0f} ms, shares {shares}",
                busy=False,
            )
            report = bench.report
            report.check(not silent, f"cameras N={count}: every camera delivered ({len(silent)} silent)")
            report.check(shares.fair, f"cameras N={count}: shares within 10% or one frame ({shares})")
            report.check(
                row.p95 is not None and row.p95 <= budget,
                f"cameras N={count}: p95 latency {row.p95:.0f} ms <= {budget:.0f}",
            )
    finally:
        for server in servers:
            server.stop()
    (first_count, first), (last_count, last) = figures[0], figures[-1]
    if last_count > first_count:
        per_camera = (last - first) / (last_count - first_count)
        bench.report.notes.append(
            "RSS by cameras: " + ", ".join(f"{count}: {rss:.0f} MiB" for count, rss in figures)
            + f" (process before the first: {base:.0f} MiB)"
        )
        bench.report.check(
            per_camera <= 12,
            f"cameras: {per_camera:.1f} MiB per camera from {first_count} to {last_count} cameras <= 12",
        )


def bench_capacity(bench: Bench, clip: Path, counts: tuple[int, ...], fps: float) -> None:
    """File cameras playing `clip` at `fps`, every sink on, at each of `counts` in turn until one drops
    `MAX_DROP_RATIO` of its frames: the most cameras one daemon carries on this host, batched as the daemon
    batches on this provider when the config leaves it unset."""
    max_batch, timeout_ms = BATCH_DEFAULTS.get(bench.model.provider, BATCH_DEFAULTS["cpu"])
    bench = dataclasses.replace(
        bench, max_batch=min(max_batch, bench.model.max_batch), batch_timeout_ms=timeout_ms
    )
    print(
        f"capacity: file cameras playing {clip.name} at {fps:g} fps each, every sink on, max_batch "
        f"{bench.max_batch} and batch_timeout_ms {timeout_ms:g} (the defaults on {bench.model.provider})",
        flush=True,
    )
    carried = 0
    profiled = " (profiled: py-spy took CPU from the daemon)" if bench.profile else ""
    for count in counts:
        cameras = bench.file_cameras(clip, count, fps)
        profile = bench.profile / f"py-spy-capacity-{count}.txt" if bench.profile else None
        m, _ = bench.pipeline(
            cameras, online_timeout=ONLINE_TIMEOUT, profile=profile, profile_threads=CAPACITY_THREADS
        )
        dropped = m.dropped_total / m.offered if m.offered else 1.0
        shares = m.shares([camera.id for camera in cameras])
        cpu = m.thread_cpu_ms.get("process", float("nan"))
        cameras_cpu = m.thread_cpu_ms.get("cameras", float("nan"))
        bench.row(
            "capacity",
            f"N={count} at {fps:g} fps",
            m,
            count,
            note=f"dropped {dropped:.1%}, shares {shares}, RSS {m.rss_end_mb:.0f} MiB, "
            f"process CPU {cpu:.2f} ms per frame (camera threads {cameras_cpu:.2f})",
            busy=False,
        )
        if dropped >= MAX_DROP_RATIO:
            bench.report.notes.append(
                f"capacity: one daemon carried {carried} camera{'' if carried == 1 else 's'} of {clip.name} "
                f"at {fps:g} fps with under {MAX_DROP_RATIO:.0%} of frames dropped; {count} dropped "
                f"{dropped:.1%}{profiled}"
            )
            return
        carried = count
    bench.report.notes.append(
        f"capacity: one daemon carried all {carried} cameras of {clip.name} at {fps:g} fps with under "
        f"{MAX_DROP_RATIO:.0%} of frames dropped (more were not tried){profiled}"
    )


def start_snapshots(at: tuple[float, ...]) -> tuple[list[tracemalloc.Snapshot], list[threading.Timer]]:
    """tracemalloc started now, and a snapshot taken at each of `at` seconds from now (filled in as taken)."""
    tracemalloc.start(10)
    snapshots: list[tracemalloc.Snapshot] = []
    timers = [threading.Timer(delay, lambda: snapshots.append(tracemalloc.take_snapshot())) for delay in at]
    for timer in timers:
        timer.daemon = True
        timer.start()
    return snapshots, timers


def print_growth(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, title: str, top: int = 12
) -> None:
    """Where Python memory grew between two snapshots, by allocating line."""
    stats = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in stats) / 2**20
    print(f"  tracemalloc, {title}: {total:+.2f} MiB of Python objects; largest growth by line:", flush=True)
    for stat in sorted(stats, key=lambda stat: -stat.size_diff)[:top]:
        frame = stat.traceback[0]
        print(
            f"    {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks  "
            f"{frame.filename}:{frame.lineno}",
            flush=True,
        )


def bench_soak(bench: Bench, clip: Path, minutes: float | None, trace: bool = False) -> None:
    """8 file cameras at 5 fps, every sink on, RSS each minute (each 30 s in a run under 20 minutes)."""
    from tests.support.daemon import free_port

    assert minutes, "the soak runs with --soak MINUTES"
    step = 60.0 if minutes >= 20 else 30.0
    settle = min(SOAK_SETTLE_MINUTES, minutes / 3) * 60
    print(
        f"soak: {SOAK_CAMERAS} file cameras at {SOAK_FPS:g} fps for {minutes:g} min, every sink on "
        "(tracking, 2 zones and a line per camera, snapshots, Model Monitoring and Vision Events to local "
        f"stand-ins, MQTT, the API and history); RSS every {step:.0f} s, growth from minute {settle / 60:g}",
        flush=True,
    )
    cameras = [with_events(camera) for camera in bench.file_cameras(clip, SOAK_CAMERAS, SOAK_FPS)]
    end = minutes * 60
    samples = tuple(np.arange(step, end + step / 2, step))
    saved_warmup, saved_api = bench.warmup, bench.api
    bench.warmup = 5.0
    bench.api = ApiConfig(enabled=True, port=free_port())
    moments = (60.0, settle, end - 5)
    snapshots, timers = start_snapshots(moments) if trace else ([], [])
    try:
        with stand_ins() as (bench.uploads, tally):
            m, _ = bench.pipeline(cameras, seconds=end - bench.warmup + 1, rss_at=samples)
    finally:
        bench.warmup, bench.api, bench.uploads = saved_warmup, saved_api, None
        for timer in timers:
            timer.cancel()
        if trace:
            tracemalloc.stop()
    if len(snapshots) == len(moments):
        first, settled_at, last_at = (f"minute {at / 60:g}" for at in moments)
        print_growth(snapshots[0], snapshots[1], f"{first} -> {settled_at}")
        print_growth(snapshots[1], snapshots[2], f"{settled_at} -> {last_at}")
    print("  s: RSS MiB, Python blocks, threads, descriptors", flush=True)
    for (at, rss), (blocks, threads, fds) in zip(m.rss_mb, m.process, strict=True):
        print(f"  {at:5.0f}: {rss:7.1f} {blocks:9d} {threads:4d} {fds:4d}", flush=True)
    settled = [(at, rss) for at, rss in m.rss_mb if at >= settle]
    (start_at, start), (end_at, last) = settled[0], settled[-1]
    hours = (end_at - start_at) / 3600
    per_hour = (last - start) / start / hours if hours else 0.0
    bench.row(
        "soak",
        f"{minutes:g} min, RSS {m.rss_mb[0][1]:.0f} -> {start:.0f} (minute {start_at / 60:g}) "
        f"-> {last:.0f} MiB",
        m,
        SOAK_CAMERAS,
        note=f"growth after minute {start_at / 60:g}: {per_hour:+.2%} per hour",
        busy=False,
    )
    bench.report.check(
        per_hour < 0.01,
        f"soak: RSS growth after minute {start_at / 60:g} {per_hour:+.2%} per hour < 1% "
        f"({minutes:g} min run{'' if minutes >= 60 else ': shorter than the hour the target asks for'})",
    )
    report_uploads(bench, tally)


def report_uploads(bench: Bench, tally: collections.Counter[str]) -> None:
    """What the stand-ins answered over the soak, and what the run left on disk; checks that the uploads went
    through, every one accepted."""
    print("  the stand-ins answered: " + ", ".join(f"{key} x{count}" for key, count in sorted(tally.items())))
    folder = next(bench.workdir.glob(f"run-{bench.runs}-*"))
    stores = sum(path.stat().st_size for path in folder.glob("*.db*"))  # the spools and the history
    pictures = list(folder.rglob("*.jpg"))
    print(
        f"  left on disk: spools and history {stores / 1024:.0f} KiB, snapshots {len(pictures)} files, "
        f"{sum(path.stat().st_size for path in pictures) / 2**20:.1f} MiB",
        flush=True,
    )
    refused = sum(count for key, count in tally.items() if key.split()[-1][0] in "45")
    reports, events = tally["monitoring report 200"], tally["vision-events events"]
    images = tally["vision-events upload 201"]
    bench.report.check(
        refused == 0 and reports > 0 and events > 0 and images > 0,
        f"soak: uploads accepted: {reports} Model Monitoring reports, {events} Vision Events with {images} "
        f"images; {refused} requests refused",
    )


def bench_latency_policy(
    bench: Bench, seconds: float, count: int = OVERLOAD_CAMERAS, fps: float = OVERLOAD_FPS
) -> None:
    """`count` paced cameras at `fps` (by default the overload case: 4 at 15 fps) at each max_batch and batch
    timeout: the p95 each gives on this provider, for choosing the defaults."""

    print(f"latency policy: {count} paced cameras at {fps:g} fps, by max_batch and timeout", flush=True)
    cameras = memory_cameras(count, "paced", fps)
    for max_batch in (1, 2, 4, 8):
        for timeout_ms in (0.0, 10.0) if max_batch > 1 else (0.0,):
            run = dataclasses.replace(bench, max_batch=max_batch, batch_timeout_ms=timeout_ms)
            m, _ = run.pipeline(cameras, seconds)
            case = f"max_batch {max_batch}, batch_timeout_ms {timeout_ms:g}"
            run.row("latency policy", case, m, count, busy=False)


def bench_frame_cost(model: Model, frames: list[np.ndarray], report: Report, batch: int = 4) -> float:
    """CPU time per frame of the inference loop's own work around session.run, 640x480 frames in batches
    of `batch`: letterboxing (with, for comparison, the numpy float conversion the prologue replaced) and
    decoding into detections, warm in a loop and right after a run. CPU time of this process (of this thread
    after a run), not wall time: steadier on a shared machine.
    Returns the letterboxing's milliseconds per frame as it is now (OpenCV's own threads included)."""

    images = (frames * batch)[:batch]
    feed, transforms = model.prepare(images)
    outputs = model.run(feed)

    def float_conversion() -> None:
        canvas, _ = model.prepare(images)
        np.multiply(canvas[..., ::-1].transpose(0, 3, 1, 2), np.float32(1 / 255), dtype=np.float32)

    def record(case: str, size: int, ms: float) -> None:
        report.rows.append(Row("frame cost", case, 0, size, float("nan"), overhead_ms=ms))
        print(f"  {case}: {ms:.3f} ms CPU per frame (load average {load_average()})", flush=True)

    letterbox_case = "letterbox into the uint8 batch (now)"
    cases = {
        "letterbox + float conversion in numpy (before)": float_conversion,
        letterbox_case: lambda: model.prepare(images),
        "decode + detections": lambda: model.detections(outputs, images, transforms),
    }
    letterbox = float("nan")
    for case, work in cases.items():
        work()
        runs = 0
        started = time.process_time()
        while (spent := time.process_time() - started) < 1.0:
            work()
            runs += 1
        ms = spent / runs / batch * 1000
        record(case, batch, ms)
        if case == letterbox_case:
            letterbox = ms
    # as in the daemon, each decoding right after a run, which on a CPU has swept the caches it needs
    for size in sorted({1, batch}):
        case = f"decode + detections right after session.run, B={size}"
        feed, transforms = model.prepare(images[:size])
        spent, runs, started = 0.0, 0, time.perf_counter()
        while runs < 5 or time.perf_counter() - started < 1.0:
            outputs = model.run(feed)
            decode_started = time.thread_time()
            model.detections(outputs, images[:size], transforms)
            spent += time.thread_time() - decode_started
            runs += 1
        record(case, size, spent / runs / size * 1000)
    return letterbox
