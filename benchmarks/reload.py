"""edgewatch reload benchmark: what the cameras a reload does not touch lose while it runs.

    .venv/bin/python -m benchmarks.reload [--cameras 4] [--fps 5] [--markdown FILE]

The whole daemon (`Service`, every sink on, MQTT to a local Mosquitto) runs N paced in-memory cameras (a live
camera at `fps`, decode left out). After a warm-up and a baseline window, two reloads of the config file go
through the daemon's own reload path (`Service.reload`, what SIGHUP and `POST /api/reload` run):
1. add one camera;
2. swap the model for a copy with another `model.id` (a second session loaded and warmed up beside the
   running one, swapped between two batches).
For each: the frames of the N untouched cameras lost from just before the request until 2 s after the
outcome (gaps in the frame numbers reaching the sinks: dropped as stale, or never inferred), against the
baseline window of the same length; the reload's own duration; and for the swap, the pause: the time between
the last batch of the old model and the first of the new, against the usual time between batches. Each
loss is set beside the loss in as long a window right after (the new config settled), so that frames lost
because the machine is busy are told apart from frames lost to the reload.
The load average is printed with the figures: on a shared machine they move with it.
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DEFAULT_MODEL, cpu_name, load_average
from benchmarks.sources import camera_factory, demo_scenes
from daemon.config import CameraConfig, load_config
from daemon.frames import FrameResult
from daemon.model.session import Model
from daemon.pipeline.capture import Camera
from daemon.service import CameraFactory, Service
from daemon.sink import Sink

SWAP_LINE = re.compile(r"inference paused ([\d.]+) ms for the swap")
SETTLE = 2.0  # seconds after the outcome still counted: frames captured during the reload land later


class SwapPause(logging.Handler):
    """Catches the reload's own log line saying how long the worker stopped to swap the model."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.ms: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = SWAP_LINE.search(record.getMessage())
        if match:
            self.ms = float(match.group(1))


class FrameLog(Sink):
    """A sink noting (camera, frame number, done time, model id) of every result."""

    name = "bench-frames"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows: list[tuple[str, int, float, str]] = []

    def handle(self, result: FrameResult) -> None:
        with self._lock:
            self.rows.append((result.camera_id, result.frame_id, result.done_mono, result.model_id))

    def between(self, start: float, end: float) -> list[tuple[str, int, float, str]]:
        with self._lock:
            return [row for row in self.rows if start <= row[2] <= end]



def lost(rows: list[tuple[str, int, float, str]], cameras: list[str]) -> int:
    """Frames missing between the first and last frame number each camera delivered in `rows`."""
    missing = 0
    for camera in cameras:
        ids = sorted(frame_id for name, frame_id, _, _ in rows if name == camera)
        if ids:
            missing += (ids[-1] - ids[0] + 1) - len(set(ids))
    return missing


def config_text(model: Path, model_id: str, cameras: int, fps: float, workdir: Path, broker) -> str:
    blocks = "".join(
        f'[[cameras]]\nid = "cam{i}"\nurl = "memory:paced"\nfps = {fps}\n' for i in range(cameras)
    )
    return f"""
[device]
id = "bench"
[model]
path = "{model}"
id = "{model_id}"
providers = ["cpu"]
max_batch = 8
batch_timeout_ms = 10
{blocks}
[roboflow]
api_key = ""
spool = "{workdir / "spool.db"}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
[metrics]
enabled = false
"""


def memory_factory(scenes: list[list[np.ndarray]]) -> CameraFactory:
    """The in-memory cameras, for URLs that the config loader made relative to the config's folder."""
    make = camera_factory(scenes)

    def factory(config: CameraConfig, *args: Any) -> Camera:
        return make(config.model_copy(update={"url": config.url.rsplit("/", 1)[-1]}), *args)

    return factory


def measure(service: Service, frames: FrameLog, path: Path, text: str, untouched: list[str]) -> dict:
    path.write_text(text)
    started = time.monotonic()
    outcome = service.reload(600)
    finished = time.monotonic()
    if outcome is None or not outcome["successful"]:
        raise RuntimeError(f"the reload failed: {outcome}")
    service.stop.wait(SETTLE)
    window = finished + SETTLE - (started - 0.5)
    rows = frames.between(started - 0.5, finished + SETTLE)
    steady_from = time.monotonic()  # the same length of time right after, with the new config settled
    service.stop.wait(window)
    steady = frames.between(steady_from, steady_from + window)
    return {
        "lost": lost(rows, untouched),
        "steady": lost(steady, untouched),
        "seconds": finished - started,
        "window": window,
        "rows": rows,
        "message": outcome["message"],
    }


def batch_gaps(rows: list[tuple[str, int, float, str]]) -> np.ndarray:
    done = np.unique([row[2] for row in rows])
    return np.diff(done)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--fps", type=float, default=1)
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--markdown", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from tests.support.mosquitto import Mosquitto  # the test suite's broker wrapper (Debian mosquitto)

    load_before = load_average()
    swap_pause = SwapPause()
    reload_log = logging.getLogger("edgewatch.reload")
    reload_log.setLevel(logging.INFO)
    reload_log.addHandler(swap_pause)
    untouched = [f"cam{i}" for i in range(args.cameras)]
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="edgewatch-reload-") as tmp:
        workdir = Path(tmp)
        broker = Mosquitto(workdir / "mosquitto")
        broker.start()
        path = workdir / "config.toml"
        path.write_text(config_text(args.model, "coco/3", args.cameras, args.fps, workdir, broker))
        config = load_config(path)
        model = Model.load(config.model)
        model.warm_up()
        frames = FrameLog()
        service = Service(
            config, model, camera_factory=memory_factory(demo_scenes((640, 480))), extra_sinks=[frames]
        )
        runner = threading.Thread(target=service.run, name="bench-service")
        runner.start()
        try:
            service.stop.wait(args.warmup)
            base_start = time.monotonic()
            service.stop.wait(5.0)
            baseline = frames.between(base_start, time.monotonic())
            add = measure(service, frames, path, config_text(
                args.model, "coco/3", args.cameras + 1, args.fps, workdir, broker), untouched)
            copy = workdir / "model-v2.onnx"
            shutil.copy(args.model, copy)
            swap = measure(service, frames, path, config_text(
                copy, "coco/4", args.cameras + 1, args.fps, workdir, broker), untouched)
        finally:
            service.stop.set()
            runner.join(60)
            broker.stop()
    old = [row[2] for row in swap["rows"] if row[3] == "coco/3"]
    new = [row[2] for row in swap["rows"] if row[3] == "coco/4"]
    pause = (min(new) - max(old)) * 1000 if old and new else float("nan")
    usual = np.median(batch_gaps(baseline)) * 1000 if len(baseline) > 1 else float("nan")
    per_second = len(baseline) / 5.0
    lines += [
        f"# edgewatch reload benchmark ({cpu_name()}, {args.cameras} paced cameras at {args.fps:g} fps)",
        "",
        f"baseline: {lost(baseline, untouched)} frames lost in 5 s ({per_second:.1f} results/s)",
        f"add a camera: {add['lost']} frames lost on the {args.cameras} untouched cameras in the "
        f"{add['window']:.1f} s around the reload ({add['steady']} in as long right after); reload took "
        f"{add['seconds'] * 1000:.0f} ms ({add['message']})",
        f"swap the model: {swap['lost']} frames lost on the untouched cameras in the {swap['window']:.1f} s "
        f"around the reload ({swap['steady']} in as long right after); reload took "
        f"{swap['seconds'] * 1000:.0f} ms (load + warm-up of the second session, beside inference); the "
        f"worker stopped {swap_pause.ms} ms to swap; {pause:.0f} ms from the last old-model result to the "
        f"first new-model one (usual time between batches: {usual:.0f} ms)",
        f"load average before: {load_before}; after: {load_average()}",
        f"command: python -m benchmarks.reload {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip(),
    ]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
