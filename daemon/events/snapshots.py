"""The snapshot store: each tracked object's best picture, as JPEG files in one folder beside the spool.

Per snapshot id two files: `<id>.jpg`, the whole frame with the object's box and label drawn (supervision's
annotators), and `<id>-crop.jpg`, the object alone. The events thread only queues a reference to the frame
(bounded queue; a full queue drops the snapshot and counts it); one writer thread draws, encodes and writes
(temporary file + rename, so a reader never sees half a file) and keeps the folder within its size and age
bounds, oldest first, counting what it evicts.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import supervision as sv

from daemon.events.lifecycle import SnapshotRequest
from daemon.events.metrics import EventMetrics

log = logging.getLogger("edgewatch.snapshots")

QUEUE_SIZE = 16
JPEG_QUALITY = 85
CROP_MARGIN = 0.1  # of the box size, on each side
AGE_CHECK_INTERVAL = 60.0  # seconds between age passes while idle
STOP_CHECK = 0.5  # seconds between looks at the stop flag while idle
SNAPSHOT_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CROP_SUFFIX = "-crop"


@dataclass(frozen=True, slots=True)
class _Job:
    image: np.ndarray  # the frame itself, shared: never drawn on
    request: SnapshotRequest


def annotate(image: np.ndarray, box: tuple[float, float, float, float], label: str) -> np.ndarray:
    """A copy of `image` with one box and its label drawn."""
    detections = sv.Detections(xyxy=np.array([box], dtype=np.float32), class_id=np.array([0]))
    canvas = image.copy()
    canvas = sv.BoxAnnotator(thickness=2).annotate(canvas, detections)
    return sv.LabelAnnotator(text_scale=0.5).annotate(canvas, detections, labels=[label])


def crop(image: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """The box (plus a small margin), clipped to the frame; at least one pixel."""
    height, width = image.shape[:2]
    x1, y1, x2, y2 = box
    margin_x, margin_y = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
    left = int(np.clip(x1 - margin_x, 0, width - 1))
    top = int(np.clip(y1 - margin_y, 0, height - 1))
    right = int(np.clip(x2 + margin_x, left + 1, width))
    bottom = int(np.clip(y2 + margin_y, top + 1, height))
    return image[top:bottom, left:right]


def encode_jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return data.tobytes()


class SnapshotStore:
    def __init__(
        self,
        directory: Path,
        max_mb: float,
        max_age: float,
        metrics: EventMetrics,
        queue_size: int = QUEUE_SIZE,
    ) -> None:
        self.directory = directory
        self._max_bytes = int(max_mb * 1024 * 1024)
        self._max_age = max_age
        self._metrics = metrics
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _index and _bytes
        self._index: OrderedDict[str, tuple[float, int]] = (
            OrderedDict()
        )  # id -> (written at, bytes), oldest first
        self._bytes = 0
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def start(self) -> None:
        self._load()
        self._thread.start()

    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    def submit(self, image: np.ndarray, request: SnapshotRequest) -> bool:
        """Queue a snapshot of `image` (not copied, never modified). Never blocks; False if dropped."""
        try:
            self._queue.put_nowait(_Job(image, request))
        except queue.Full:
            self._metrics.snapshots_dropped.labels("queue_full").inc()
            return False
        return True

    def read(self, snapshot_id: str, cropped: bool = False) -> bytes | None:
        """The snapshot's JPEG bytes (the annotated frame, or the crop); None if there is none (yet)."""
        if not SNAPSHOT_ID.match(snapshot_id):
            return None
        try:
            return self._path(snapshot_id, cropped).read_bytes()
        except OSError:
            return None

    def close(self, timeout: float) -> None:
        """Write what is queued (within `timeout`), then stop."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _path(self, snapshot_id: str, cropped: bool) -> Path:
        return self.directory / f"{snapshot_id}{CROP_SUFFIX if cropped else ''}.jpg"

    def _load(self) -> None:
        """Index the snapshots already on disk, oldest first."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            entries = []
            for entry in os.scandir(self.directory):
                name = entry.name.removesuffix(".jpg").removesuffix(CROP_SUFFIX)
                if entry.name.endswith(".jpg") and SNAPSHOT_ID.match(name):
                    stat = entry.stat()
                    entries.append((stat.st_mtime, name, stat.st_size))
        except OSError as exc:
            log.warning("snapshots: cannot use %s: %s; snapshots will be dropped", self.directory, exc)
            return
        with self._lock:
            for written, name, size in sorted(entries):
                before = self._index.get(name, (written, 0))
                self._index[name] = (min(before[0], written), before[1] + size)
                self._bytes += size
        self._metrics.snapshot_bytes.set(self._bytes)
        self._evict(time.time())

    def _run(self) -> None:
        last_age_check = time.monotonic()
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                self._write(self._queue.get(timeout=STOP_CHECK))
            except queue.Empty:
                if time.monotonic() - last_age_check >= AGE_CHECK_INTERVAL:
                    last_age_check = time.monotonic()
                    self._evict(time.time())

    def _write(self, job: _Job) -> None:
        request = job.request
        try:
            whole = encode_jpeg(annotate(job.image, request.box, request.label))
            part = encode_jpeg(crop(job.image, request.box))
            size = 0
            for data, cropped in ((whole, False), (part, True)):
                path = self._path(request.snapshot_id, cropped)
                temporary = path.with_name(f".{path.name}.tmp")
                temporary.write_bytes(data)
                os.replace(temporary, path)
                size += len(data)
        except (OSError, ValueError, cv2.error) as exc:
            self._metrics.snapshots_dropped.labels("write_failed").inc()
            if not self._failing:
                self._failing = True
                log.warning("snapshots: cannot write to %s: %s", self.directory, exc)
            return
        if self._failing:
            self._failing = False
            log.info("snapshots: writing to %s again", self.directory)
        now = time.time()
        with self._lock:
            _, before = self._index.pop(request.snapshot_id, (now, 0))
            self._index[request.snapshot_id] = (now, size)
            self._bytes += size - before
        self._metrics.snapshots_written.inc()
        self._evict(now)

    def _evict(self, now: float) -> None:
        while True:
            with self._lock:
                if not self._index:
                    break
                oldest, (written, size) = next(iter(self._index.items()))
                if now - written > self._max_age:
                    reason = "age"
                elif self._bytes > self._max_bytes and len(self._index) > 1:
                    reason = "size"
                else:
                    break
                del self._index[oldest]
                self._bytes -= size
            for cropped in (False, True):
                try:
                    self._path(oldest, cropped).unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("snapshots: cannot remove %s: %s", oldest, exc)
            self._metrics.snapshots_evicted.labels(reason).inc()
        self._metrics.snapshot_bytes.set(self._bytes)
