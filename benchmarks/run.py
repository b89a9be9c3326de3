"""edgewatch benchmark: the daemon's throughput, latency and memory against the model's own ceiling.

    .venv/bin/python -m benchmarks.run [--long] [--quick] [--markdown FILE] [--soak MINUTES]

Sections, in one process, one model, one set of thread settings:
1. raw: `session.run` in a tight loop on letterboxed batches of B frames: the ceiling;
2. pipeline, decode excluded: N in-memory cameras (pre-decoded frames handed out as fast as taken) through the
   whole daemon with every sink on; then 4 paced cameras at 15 fps (more than the CPU can infer); then again
   with a dead camera (a URL nothing answers) and a stalled one beside them;
3. pipeline with decode: N file cameras (the real capture code) playing H.264 clips at 640x480, 720p, 1080p,
   read as fast as inference takes them, and paced (realtime) at the highest fps that drops < 1 % of frames;
   for the checked case (640x480, N=4) also raw `session.run` beside the same decoding without the daemon;
4. memory: RSS after 1 minute of steady load and later (2 minutes, or 10 with --long);
5. events: the N=4 unpaced run without and with tracking, two zones and a line per camera (the ratio, and
   the dispatcher thread's CPU per frame), and the events thread's work per frame at 10 detections
   (benchmarks/events.py);
6. batching (benchmarks/scale.py): the demo network at a small input, 16 cameras, max_batch 8 against 1;
7. latency: the overload case (or --latency-load) at max_batch 1, 2, 4, 8 and batch timeouts 0 and 10 ms (the
   defaults' basis);
8. cameras: 1, 4, 16, 64 RTSP cameras at 2 fps each: fairness, latency, RSS per camera;
9. soak (only with --soak MINUTES): 8 file cameras at 5 fps, every sink on, events and uploads to local
   stand-ins of Roboflow included: RSS growth per hour.
Every figure is printed with the load average: on a shared machine compare only within one run.

Prints a table, the targets met or missed, and the command line. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shlex
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.clips import CLIP_FPS, CLIP_SIZES, make_clips
from benchmarks.events import event_cameras, events_thread_work
from benchmarks.harness import (
    CLIPS,
    DEFAULT_MODEL,
    MAX_DROP_RATIO,
    OVERLOAD_CAMERAS,
    OVERLOAD_FPS,
    OVERLOAD_RATIO,
    UNPACED_RATIO,
    Bench,
    Report,
    Row,
    bench_io_binding,
    bench_raw,
    commit,
    cpu_name,
    float16_copy,
    load_average,
    memory_cameras,
    raw_fps,
    raw_fps_beside_decoding,
)
from benchmarks.pipeline import Measured, rss_mib
from benchmarks.scale import (
    CAPACITY_COUNTS,
    STREAM_COUNTS,
    bench_batching,
    bench_cameras,
    bench_capacity,
    bench_frame_cost,
    bench_latency_policy,
    bench_prologue_cost,
    bench_soak,
)
from benchmarks.sources import demo_scenes
from daemon.config import CameraConfig, ModelConfig
from daemon.model.session import Model
from daemon.pipeline.video import cuda_unavailable

OWN_CPU_PER_FRAME_MS = 0.5  # outside session.run: the inference loop, the events and dispatcher threads


def bench_unpaced(bench: Bench, counts: tuple[int, ...], letterbox_ms: float) -> None:
    """The N=4 run is checked for the daemon's own CPU per frame: letterboxing (`letterbox_ms`, from
    `bench_frame_cost`: CPU of every thread, as OpenCV spreads a resize over its own), the inference thread's
    other work outside `session.run` (decoding the outputs; building and handing over the results), the
    events thread and the dispatcher thread, these measured in the run."""
    print("pipeline, decode excluded: in-memory cameras handed out as fast as taken", flush=True)
    for count in counts:
        profile = (
            bench.profile / f"py-spy-N{count}-unpaced.txt"
            if bench.profile and count == OVERLOAD_CAMERAS
            else None
        )
        m, _ = bench.pipeline(memory_cameras(count, "unpaced"), profile=profile)
        row = bench.row("memory", f"N={count} unpaced", m, count, note="profiled (py-spy)" if profile else "")
        print(f"    {m.cpu_note}; session.run {m.run_ms_per_frame:.2f} ms/frame", flush=True)
        if count == OVERLOAD_CAMERAS:
            bench.report.check(
                row.ratio is not None and row.ratio >= UNPACED_RATIO,
                f"N={count} unpaced in-memory: pipeline/raw {row.ratio:.3f} >= {UNPACED_RATIO}",
            )
            bench.report.check(
                m.overhead_ms <= 1.5,
                f"N={count} unpaced: {m.overhead_ms:.2f} ms per frame outside session.run <= 1.5",
            )
            own = {
                "letterbox": letterbox_ms,
                "decode": m.loop_cpu_ms.get("detections", float("nan")),
                "results and hand-over": m.loop_cpu_ms.get("rest", float("nan")),
                "events thread": m.thread_cpu_ms.get("events", float("nan")),
                "dispatcher thread": m.thread_cpu_ms.get("dispatcher", float("nan")),
            }
            total = sum(own.values())
            parts = " + ".join(f"{name} {ms:.2f}" for name, ms in own.items())
            bench.report.check(
                total <= OWN_CPU_PER_FRAME_MS,
                f"N={count} unpaced, every sink on: the daemon's own CPU per frame {total:.2f} ms ({parts}) "
                f"<= {OWN_CPU_PER_FRAME_MS}",
            )


def overload_figures(
    bench: Bench, case: str, cameras: list[CameraConfig], live: int, seconds: float
) -> tuple[Measured, float]:
    """One overload run, reported and checked: its figures and its ratio to raw."""
    m, unaccounted = bench.pipeline(cameras, seconds, live=live)
    period = 1000 / OVERLOAD_FPS
    budget = period + 1.5 * m.run_ms_per_batch + bench.batch_timeout_ms
    shares = m.shares([camera.id for camera in cameras[:live]])
    note = f"p95 budget {budget:.0f} ms, shares {shares}"
    row = bench.row("overload", case, m, live, note=note, busy=False)
    report = bench.report
    report.check(
        row.ratio is not None and row.ratio >= OVERLOAD_RATIO,
        f"{case}: inferred/raw {row.ratio:.3f} >= {OVERLOAD_RATIO}",
    )
    report.check(
        row.p95 is not None and row.p95 <= budget, f"{case}: p95 latency {row.p95:.0f} ms <= {budget:.0f}"
    )
    report.check(shares.fair, f"{case}: camera shares within 10% or one frame ({shares})")
    report.check(
        unaccounted == 0 and m.dropped["dispatch_full"] == 0,
        f"{case}: every frame offered was inferred or counted dropped ({unaccounted} unaccounted at the end, "
        f"{m.dropped['dispatch_full']} results dropped by the dispatcher)",
    )
    return m, row.ratio or 0.0


def bench_overload(bench: Bench, seconds: float, pairs: int = 1) -> None:
    """The live cameras alone, then with a dead and a stalled camera beside them; with `pairs` > 1 in ABBA
    order, compared by the median of their ratios to raw (a host's drift cancels out)."""
    print(f"pipeline, decode excluded: {OVERLOAD_CAMERAS} paced cameras at {OVERLOAD_FPS:g} fps", flush=True)
    cameras = memory_cameras(OVERLOAD_CAMERAS, "paced", OVERLOAD_FPS)
    dead = CameraConfig(id="dead", url=f"rtsp://127.0.0.1:{closed_port()}/none", fps=OVERLOAD_FPS)
    stalled = CameraConfig(id="stalled", url="memory:stalled", fps=OVERLOAD_FPS)
    alone = (f"N={OVERLOAD_CAMERAS} paced {OVERLOAD_FPS:g} fps", cameras)
    beside = (f"N={OVERLOAD_CAMERAS} paced + 1 dead URL + 1 stalled", [*cameras, dead, stalled])
    ratios: dict[str, list[float]] = {alone[0]: [], beside[0]: []}
    for pair in range(pairs):
        for case, with_cameras in (alone, beside) if pair % 2 == 0 else (beside, alone):
            _, ratio = overload_figures(bench, case, with_cameras, OVERLOAD_CAMERAS, seconds)
            ratios[case].append(ratio)
    without, with_them = (float(np.median(ratios[case])) for case, _ in (alone, beside))
    bench.report.check(
        with_them >= 0.95 * without,
        f"{beside[0]}: the live cameras keep their rate (ratio to raw {with_them:.3f} vs {without:.3f}"
        f"{f', medians of {pairs} pairs' if pairs > 1 else ''}; within 5%)",
    )


def bench_events(bench: Bench, pairs: int, seconds: float) -> None:
    """What tracking, two zones and a line per camera cost: the full pipeline's ratio without and with them,
    in `pairs` pairs run in ABBA order (so that a shared machine's drifting load falls on both alike; the
    median of the pairs' differences is checked), the CPU they add per frame to the process and to the
    dispatcher thread (they run on the events thread before it), and the events thread's own work per frame
    at 10 detections."""
    print(
        f"events: {OVERLOAD_CAMERAS} unpaced cameras without, then with tracking + 2 zones + 1 line each "
        f"({pairs} pairs of {seconds:g} s, ABBA)",
        flush=True,
    )
    falls, dispatcher, process, events_thread = [], [], [], []
    for pair in range(pairs):
        runs: dict[bool, tuple[Measured, Row]] = {}
        for tracked in (False, True) if pair % 2 == 0 else (True, False):
            cameras = (event_cameras if tracked else memory_cameras)(OVERLOAD_CAMERAS, "unpaced")
            what = "tracking + 2 zones + 1 line" if tracked else "no events"
            case = f"N={OVERLOAD_CAMERAS} unpaced, {what}"
            m, _ = bench.pipeline(cameras, seconds)
            runs[tracked] = m, bench.row("events", case, m, OVERLOAD_CAMERAS, note=m.cpu_note)
        (plain, base), (events, row) = runs[False], runs[True]
        assert base.ratio is not None and row.ratio is not None
        falls.append(base.ratio - row.ratio)
        cpu_with, cpu_without = events.thread_cpu_ms, plain.thread_cpu_ms
        dispatcher.append(cpu_with["dispatcher"] - cpu_without["dispatcher"])
        process.append((cpu_with["process"] - cpu_without["process"]) / cpu_without["process"])
        events_thread.append(cpu_with["events"] - cpu_without["events"])
    fall = float(np.median(falls))
    bench.report.check(
        fall <= 0.02,
        f"events: full-pipeline ratio falls by {fall:.3f} (median of {pairs} pairs: "
        f"{', '.join(f'{value:.3f}' for value in falls)}; the process's CPU per frame rose by a median "
        f"{np.median(process):.1%}) <= 0.02",
    )
    bench.report.check(
        float(np.median(dispatcher)) < 0.3,
        f"events: dispatcher thread CPU added per frame {np.median(dispatcher):.3f} ms < 0.3 (median of "
        f"{pairs} pairs; the events thread used {np.median(events_thread):.3f} ms at the demo scenes' "
        "detections)",
    )
    workdir = bench.workdir / "events-thread-work"
    workdir.mkdir()
    wall, cpu = events_thread_work(workdir, objects=10)
    note = (
        f"CPU mean {cpu.mean() * 1000:.3f} ms, p99 {np.percentile(cpu, 99) * 1000:.3f}; wall mean "
        f"{wall.mean() * 1000:.3f} ms, p99 {np.percentile(wall, 99) * 1000:.3f}"
    )
    bench.report.rows.append(Row("events", "events thread per frame, 10 detections", 1, 1, 0.0, note=note))
    print(f"  events thread per frame at 10 detections: {note}", flush=True)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bench_decode(
    bench: Bench, clips: dict[str, Path], counts: tuple[int, ...], quick: bool, repeats: int = 1
) -> None:
    """File cameras decoding H.264 unpaced and paced. The checked case (640x480, N=4 unpaced) runs `repeats`
    times, each against raw just around it, and is checked by the median: one run moves by several percent on
    a noisy host."""
    print("pipeline with decode: file cameras (the real capture code) playing H.264 clips", flush=True)
    for name, path in clips.items():
        for count in counts:
            cameras = bench.file_cameras(path, count, fps=240, realtime=False)
            checked = name == "640x480" and count == OVERLOAD_CAMERAS
            ratios = []
            for _ in range(repeats if checked else 1):
                m, _ = bench.pipeline(cameras)
                row = bench.row("decode", f"{name} N={count} realtime=false", m, count)
                ratios.append(row.ratio or 0.0)
            if checked:
                median = float(np.median(ratios))
                listed = ", ".join(f"{ratio:.3f}" for ratio in ratios)
                runs = f" (median of {len(ratios)}: {listed})" if repeats > 1 else ""
                decoding = decoding_alone(bench, path, count, repeats)
                bench.report.check(
                    median >= UNPACED_RATIO,
                    f"{name} N={count} unpaced files: pipeline/raw {median:.3f} >= {UNPACED_RATIO}{runs}; "
                    f"decoding alone, no daemon, leaves the model {decoding:.3f} of raw",
                )
        best = highest_paced_fps(bench, path, OVERLOAD_CAMERAS, quick)
        if best is not None:
            fps, m = best
            bench.row(
                "decode",
                f"{name} N={OVERLOAD_CAMERAS} realtime=true",
                m,
                OVERLOAD_CAMERAS,
                note=f"highest fps per camera with < 1% dropped: {fps:g}",
                busy=False,
            )
        else:
            bench.report.notes.append(f"{name}: no paced rate tried held < 1% dropped")


def decoding_alone(bench: Bench, clip: Path, count: int, pairs: int) -> float:
    """Raw B=`count` beside `count` threads decoding `clip` (no daemon) against raw alone, in alternating
    pairs: what decoding by itself leaves the model, the ceiling for the daemon's ratio with decode. Adds a
    row; returns the median of the pairs' ratios."""
    ratios, fps, decode_ms = [], [], []
    for _ in range(pairs):
        alone = raw_fps(bench.model, bench.frames, count, bench.bracket)
        beside, ms = raw_fps_beside_decoding(
            bench.model, bench.frames, clip, count, bench.bracket, bench.decoder
        )
        ratios.append(beside / alone)
        fps.append(beside)
        decode_ms.append(ms)
    ratio = float(np.median(ratios))
    note = f"decoding {np.median(decode_ms):.2f} ms CPU per frame"
    print(
        f"  raw B={count} beside {count} decoders of the clip, no daemon: {np.median(fps):.1f} frames/s, "
        f"{ratio:.3f} of raw alone (median of {pairs}: {', '.join(f'{r:.3f}' for r in ratios)}), {note} "
        f"(load average {load_average()})",
        flush=True,
    )
    case = f"{clip.stem}: raw B={count} beside {count} decoders, no daemon"
    bench.report.rows.append(Row("decode", case, count, count, float(np.median(fps)), ratio=ratio, note=note))
    return ratio


def highest_paced_fps(bench: Bench, path: Path, count: int, quick: bool) -> tuple[float, Measured] | None:
    """The highest per-camera fps cap (from a fixed ladder) at which paced file cameras drop < 1 %."""
    raw_best = max(bench.report.raw.values())
    ceiling = raw_best / count
    ladder = [fps for fps in range(2, CLIP_FPS + 1) if fps <= ceiling * 1.1]
    best: tuple[float, Measured] | None = None
    low, high = 0, len(ladder) - 1
    while low <= high:  # binary search: drops grow with the rate
        mid = (low + high) // 2
        fps = ladder[mid]
        cameras = bench.file_cameras(path, count, fps)
        m, _ = bench.pipeline(cameras, seconds=bench.window / 2 if quick else bench.window)
        ratio = m.dropped_total / m.offered if m.offered else 1.0
        print(f"    {fps:g} fps per camera: {m.fps:.1f} inferred/s, dropped {ratio:.1%}", flush=True)
        if ratio < MAX_DROP_RATIO and m.offered:
            best = (fps, m)
            low = mid + 1
        else:
            high = mid - 1
    return best


def bench_memory(bench: Bench, clip: Path | None, long: bool) -> None:
    end = 600.0 if long else 120.0
    print(
        f"memory: RSS under steady load (4 cameras at {OVERLOAD_FPS:g} fps) at 60 s and {end:.0f} s",
        flush=True,
    )
    if clip is not None:
        cameras = bench.file_cameras(clip, OVERLOAD_CAMERAS, OVERLOAD_FPS)
    else:
        cameras = memory_cameras(OVERLOAD_CAMERAS, "paced", OVERLOAD_FPS)
    saved = bench.warmup
    bench.warmup = 5.0
    try:
        m, _ = bench.pipeline(cameras, seconds=end - bench.warmup + 1, rss_at=(60.0, end))
    finally:
        bench.warmup = saved
    (_, first), (_, last) = m.rss_mb
    growth = (last - first) / first
    bench.report.rows.append(
        Row(
            "memory",
            f"RSS {first:.0f} MiB at 60 s, {last:.0f} MiB at {end:.0f} s",
            OVERLOAD_CAMERAS,
            m.mean_batch,
            m.fps,
            bench.report.ratio(m.fps, m.mean_batch),
            m.latency(50),
            m.latency(95),
            m.latency(99),
            dropped=f"{m.dropped_total}/{m.offered}",
            note=f"growth {growth:+.1%}",
        )
    )
    print(f"  RSS {first:.1f} MiB at 60 s, {last:.1f} MiB at {end:.0f} s: {growth:+.1%}", flush=True)
    bench.report.check(growth < 0.05, f"RSS growth from 60 s to {end:.0f} s {growth:+.1%} < 5%")


# output


def fmt(value: float | None, digits: int = 0) -> str:
    return "" if value is None or value != value else f"{value:.{digits}f}"


def table(report: Report) -> str:
    header = (
        "section",
        "case",
        "N",
        "batch",
        "frames/s",
        "vs raw",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "outside run ms/frame",
        "run ms/frame",
        "dropped",
        "load",
        "note",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in report.rows:
        cells = (
            r.section,
            r.case,
            str(r.cameras or ""),
            fmt(r.batch, 2),
            fmt(r.fps, 1),
            fmt(r.ratio, 3),
            fmt(r.p50),
            fmt(r.p95),
            fmt(r.p99),
            fmt(r.overhead_ms, 2),
            fmt(r.run_ms, 1),
            r.dropped,
            fmt(r.load, 2),
            r.note,
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def camera_counts(parser: argparse.ArgumentParser, option: str, value: str) -> tuple[int, ...]:
    """`value` as camera counts ("1,4,16"), or the parser's error (exit 2) naming `option`."""
    try:
        counts = tuple(int(count) for count in value.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        parser.error(f"{option} {value}: expected camera counts, e.g. 1,4,16")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="memory: sample RSS at 10 minutes (default 2)")
    parser.add_argument("--quick", action="store_true", help="short windows, fewer cases (a smoke run)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: the default)"
    )
    parser.add_argument(
        "--provider",
        choices=("cpu", "cuda", "tensorrt"),
        default="cpu",
        help="the ONNX Runtime execution provider (cuda, tensorrt: onnxruntime-gpu on a GPU host); on a GPU "
        "the raw section also times a plain session.run against the IO binding the daemon uses",
    )
    parser.add_argument(
        "--fp16",
        action="store_true",
        help="half precision on a GPU: TensorRT builds FP16 engines; for CUDA the model is first converted "
        "to float16 (written beside it as NAME-fp16.onnx; the input and outputs stay float32)",
    )
    parser.add_argument(
        "--overlap",
        choices=("auto", "on", "off"),
        default="auto",
        help="letterbox the next batch and decode the last one while a batch runs (Model.overlap_runs): auto "
        "as the daemon does (on with a GPU provider), on or off to measure what it buys on this host",
    )
    parser.add_argument(
        "--decoder",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the file and RTSP cameras decode (the cameras' `decoder` key): cuda decodes on an NVIDIA "
        "GPU's NVDEC, or says why it cannot",
    )
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-timeout-ms", type=float, default=10)
    parser.add_argument(
        "--sections",
        default="raw,memory,overload,events,decode,rss,batching,latency,cameras,capacity",
        help="comma-separated subset of raw,memory,overload,events,decode,rss,batching,latency,cameras,"
        "capacity (raw always runs; --soak runs the soak alone)",
    )
    parser.add_argument(
        "--small-size",
        type=int,
        default=96,
        help="batching: the input side of the small build of the demo network (models/build.py --size)",
    )
    parser.add_argument(
        "--latency-load",
        default=f"{OVERLOAD_CAMERAS}x{OVERLOAD_FPS:g}",
        metavar="CAMERASxFPS",
        help="latency: the paced in-memory cameras and their rate (default %(default)s, the overload case on "
        "this CPU; a GPU needs more, e.g. 16x25)",
    )
    parser.add_argument(
        "--cameras",
        default=",".join(map(str, STREAM_COUNTS)),
        help="cameras: the camera counts to run on the RTSP server (default %(default)s)",
    )
    parser.add_argument(
        "--capacity",
        default=",".join(map(str, CAPACITY_COUNTS)),
        metavar="COUNTS",
        help=f"capacity: the counts of 640x480 H.264 file cameras at {CLIP_FPS} fps to run, in turn, until "
        "one drops 1%% of its frames (default %(default)s)",
    )
    parser.add_argument(
        "--overload-pairs",
        type=int,
        default=1,
        help="overload: runs of the live cameras alone and with a dead and a stalled one beside, in ABBA "
        "order, compared by their medians (default 1: one of each)",
    )
    parser.add_argument(
        "--decode-repeats",
        type=int,
        default=1,
        help="decode: run the checked case (640x480, 4 files unpaced) this many times and check the median",
    )
    parser.add_argument(
        "--camera-seconds",
        type=float,
        help="cameras: the measured window per count (default 20, 10 with --quick); fair shares at 64 "
        "cameras need several turns each: 90 or more",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="run only the soak: 8 file cameras at 5 fps, every sink on (events, snapshots and uploads to"
        " local Roboflow stand-ins included), for MINUTES (the target: 60)",
    )
    parser.add_argument(
        "--soak-trace",
        action="store_true",
        help="soak: also trace Python allocations (tracemalloc, slower) and print where they grew",
    )
    parser.add_argument("--markdown", type=Path, help="also write the table and the checks to this file")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record the N=4 unpaced run, the batching runs and each capacity count with py-spy into DIR, and"
        " print where the threads spend time and which of them hold the GIL",
    )
    args = parser.parse_args(argv)
    if args.fp16 and args.provider == "cpu":
        parser.error("--fp16 needs --provider cuda or tensorrt")
    try:
        count, fps = args.latency_load.split("x")
        latency_load = (int(count), float(fps))
    except ValueError:
        parser.error(f"--latency-load {args.latency_load}: expected CAMERASxFPS, e.g. 16x25")
    stream_counts = camera_counts(parser, "--cameras", args.cameras)
    capacity_counts = camera_counts(parser, "--capacity", args.capacity)
    sections = {"soak"} if args.soak else set(args.sections.split(","))
    # SIGTERM ends the run like Ctrl-C: the daemon stops cleanly, the broker is stopped, temporary files go
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = shlex.join(
        [Path(sys.executable).name, "-m", "benchmarks.run", *(argv if argv is not None else sys.argv[1:])]
    )
    started = datetime.now(timezone.utc)
    revision = commit()  # the code that runs: taken now, not after a run that may outlast a commit
    load_before = load_average()

    from tests.support.mosquitto import Mosquitto  # the test suite's broker wrapper (Debian mosquitto)

    path = float16_copy(args.model) if args.fp16 and args.provider == "cuda" else args.model
    model_config = ModelConfig(
        path=path, providers=[args.provider], threads=args.threads, max_batch=args.max_batch, fp16=args.fp16
    )
    report = Report()
    # as the daemon does: FFmpeg makes the GPU's CUDA context before the model, so that both can share it
    if args.decoder == "cuda" and (problem := cuda_unavailable()):
        report.notes.append(f"--decoder cuda: the cameras decode on the CPU: {problem}")
    model = Model.load(model_config)
    if args.overlap != "auto":
        model.overlap_runs = args.overlap == "on"
    model.warm_up()
    scenes = demo_scenes((640, 480))
    quick = args.quick
    frames = [frame for scene in scenes for frame in scene]
    raw_seconds = 1.5 if quick else 4.0
    bench_raw(model, frames, raw_seconds, report)
    bench_io_binding(model, frames, raw_seconds * 2, report)
    letterbox_ms = float("nan")
    if not args.soak:
        bench_prologue_cost(model, model_config, frames, raw_seconds * 2, report)
        letterbox_ms = bench_frame_cost(model, frames, report)

    with tempfile.TemporaryDirectory(prefix="edgewatch-bench-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        try:
            bench = Bench(
                model,
                model_config,
                (broker.host, broker.port),
                workdir,
                scenes,
                args.max_batch,
                args.batch_timeout_ms,
                warmup=1.0 if quick else 2.0,
                window=2.0 if quick else 8.0,
                bracket=1.0 if quick else 3.0,
                report=report,
                profile=args.profile,
                decoder=args.decoder,
            )
            steps: list[tuple[str, Callable[[], None]]] = [
                ("memory", lambda: bench_unpaced(bench, (1, 4) if quick else (1, 2, 4, 8), letterbox_ms)),
                ("overload", lambda: bench_overload(bench, 3.0 if quick else 15.0, args.overload_pairs)),
                ("events", lambda: bench_events(bench, 1 if quick else 8, 3.0 if quick else 12.0)),
                (
                    "decode",
                    lambda: bench_decode(
                        bench,
                        make_clips(CLIPS, sizes=CLIP_SIZES[:1] if quick else CLIP_SIZES),
                        (OVERLOAD_CAMERAS,) if quick else (1, OVERLOAD_CAMERAS),
                        quick,
                        args.decode_repeats,
                    ),
                ),
                ("rss", lambda: bench_memory(bench, make_clips(CLIPS, CLIP_SIZES[:1])["640x480"], args.long)),
                ("batching", lambda: bench_batching(bench, args.small_size, raw_seconds)),
                ("latency", lambda: bench_latency_policy(bench, 5.0 if quick else 15.0, *latency_load)),
                (
                    "cameras",
                    lambda: bench_cameras(
                        bench, CLIPS, stream_counts, args.camera_seconds or (10.0 if quick else 20.0)
                    ),
                ),
                (
                    "capacity",
                    lambda: bench_capacity(
                        bench, make_clips(CLIPS, CLIP_SIZES[:1])["640x480"], capacity_counts, CLIP_FPS
                    ),
                ),
                (
                    "soak",
                    lambda: bench_soak(
                        bench, make_clips(CLIPS, CLIP_SIZES[:1])["640x480"], args.soak, args.soak_trace
                    ),
                ),
            ]
            for name, step in steps:
                if name in sections and not (quick and name == "rss"):
                    step()
        finally:
            broker.stop()

    print()
    print(f"edgewatch benchmark, {started:%Y-%m-%d %H:%M} UTC, commit {revision}")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs ({cpu_name()}), "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}, provider {model.provider}, "
        f"intra-op threads {model.threads}; model {path.name} at {model.input_size[1]}x"
        f"{model.input_size[0]}, max_batch {args.max_batch}, batch_timeout_ms {args.batch_timeout_ms:g}, "
        f"runs {'overlapped' if model.overlap_runs else 'in turn'}, cameras' decoder {args.decoder}"
    )
    print(f"load average before {load_before}, after {load_average()}; peak RSS {rss_mib('VmHWM'):.0f} MiB")
    print()
    text = table(report)
    print(text)
    print()
    for ok, line in report.checks:
        print(f"{'PASS' if ok else 'MISS'}  {line}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"\ncommand: {command}")
    if args.markdown:
        checks = "\n".join(f"- {'PASS' if ok else 'MISS'}: {line}" for ok, line in report.checks)
        args.markdown.write_text(f"{text}\n\n{checks}\n\ncommand: `{command}`\n")
    return 0




if __name__ == "__main__":
    raise SystemExit(main())
