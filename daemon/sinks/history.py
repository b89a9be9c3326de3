"""The local monitoring history behind the on-device page: small, bounded, in one SQLite file.

What it keeps:
- per-minute rollups per stream (a camera, or an API request's `source_info`): inferences and inference
  seconds, and per class: detections and confidence sums. Minutes older than two days are merged into hours,
  so a month of history stays small;
- the reported samples: each inference id a Model Monitoring report names, with the custom metadata sent
  for it and the whole frame's detections (from a short in-memory list of recent frames);
- the alert events (firing / resolved);
- the tracked objects' events (start, enter, cross...), the newest MAX_EVENTS of them.

Everything older than `retention_days` goes, and when the file holds more than `max_mb` the oldest samples,
then the oldest rollups go first. `handle` (the dispatcher thread) only adds to in-memory counters; one
writer thread moves them to the file every few seconds and does the upkeep.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from daemon.alerts.alert import Alert
from daemon.events.event import Event
from daemon.frames import FrameResult, roboflow_predictions
from daemon.health import NO_HEALTH, Health
from daemon.sink import Sink
from daemon.statefile import is_corrupt, open_state_db, quick_check
from daemon.timefmt import iso_utc

log = logging.getLogger("edgewatch.history")

RANGES = {"hour": 3600, "day": 86400, "week": 7 * 86400}
SERIES_POINTS = 60  # points in a range's time series
MINUTE, HOUR = 60, 3600
FINE_FOR = 2 * 86400  # seconds minute rows are kept before they are merged into hour rows
RECENT_FRAMES = 2048  # frames with detections remembered, so a report's ids resolve to whole frames
MAX_SAMPLE_DETECTIONS = 100  # detections stored per sample
UPKEEP_INTERVAL = 300.0  # seconds between retention/compaction passes
MAX_PENDING_EVENTS = 5000  # events waiting for the writer thread; beyond, the oldest are dropped (logged)
MAX_EVENTS = 20000  # events kept in the file (the newest)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollup (
    bucket INTEGER NOT NULL,              -- unix time, start of the minute (span 60) or hour (span 3600)
    span INTEGER NOT NULL,
    stream TEXT NOT NULL,
    source TEXT NOT NULL,                 -- camera | api
    inferences INTEGER NOT NULL,
    inference_seconds REAL NOT NULL,
    PRIMARY KEY (bucket, span, stream)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollup_class (
    bucket INTEGER NOT NULL,
    span INTEGER NOT NULL,
    stream TEXT NOT NULL,
    class TEXT NOT NULL,
    detections INTEGER NOT NULL,
    confidence_sum REAL NOT NULL,
    PRIMARY KEY (bucket, span, stream, class)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sample (
    inference_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    stream TEXT NOT NULL,
    body TEXT NOT NULL                    -- JSON, as /api/samples/{id} returns it
);
CREATE INDEX IF NOT EXISTS sample_created ON sample (created);
CREATE TABLE IF NOT EXISTS sample_class (
    inference_id TEXT NOT NULL,
    class TEXT NOT NULL,
    PRIMARY KEY (class, inference_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    camera TEXT NOT NULL,
    body TEXT NOT NULL                    -- JSON: the event's MQTT payload
);
CREATE INDEX IF NOT EXISTS event_created ON event (created);
CREATE TABLE IF NOT EXISTS alert (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    body TEXT NOT NULL
);
"""


def _connect(where: str) -> sqlite3.Connection:
    return sqlite3.connect(where, isolation_level=None, check_same_thread=False, timeout=5)


def _prepare(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # before the first table: lets upkeep shrink it
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = NORMAL")
    quick_check(db)
    db.executescript(_SCHEMA)


def range_seconds(name: str) -> int:
    """Seconds in a range name (hour, day, week); ValueError for any other name."""
    try:
        return RANGES[name]
    except KeyError:
        raise ValueError(f"unknown range {name!r}; use one of {', '.join(RANGES)}") from None


def percent_change(current: float | None, previous: float | None) -> float | None:
    """(current - previous) / previous in %, one decimal; None when there is nothing to compare with."""
    if current is None or not previous:
        return None
    return round((current - previous) / previous * 100, 1)


def class_sums(names: np.ndarray, confidence: np.ndarray) -> list[tuple[str, int, float]]:
    """(class, detections, confidence sum) for each class present, by class name."""
    sums: dict[str, list[float]] = {}
    for name, score in zip(names.tolist(), confidence.astype(np.float64).tolist(), strict=True):
        entry = sums.setdefault(str(name), [0, 0.0])
        entry[0] += 1
        entry[1] += score
    return [(name, int(count), total) for name, (count, total) in sorted(sums.items())]


def _most_confident(result: FrameResult, limit: int) -> FrameResult:
    """The result with its `limit` most confident detections: what a sample stores, and what bounds the
    memory of the recent frames whatever a request's thresholds let through."""
    detections = result.detections
    if len(detections) <= limit or detections.confidence is None:
        return result
    keep = np.argsort(-detections.confidence, kind="stable")[:limit]
    return dataclasses.replace(result, detections=detections[np.sort(keep)])


def _parse_time(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def _ratio(total: float | None, count: int | None, digits: int) -> float | None:
    return round(total / count, digits) if count and total is not None else None


class History(Sink):
    """A sink of camera and API results, a listener of Model Monitoring reports and alerts, and the store
    the monitoring page queries. Thread-safe; its upkeep thread runs from `start()` to `close()`."""

    name = "history"
    accepts = frozenset({"camera", "api"})

    def __init__(
        self,
        path: Path,
        retention_days: float = 30,
        max_mb: float = 64,
        *,
        persist_interval: float = 5.0,
        clock: Callable[[], float] = time.time,
        health: Health = NO_HEALTH,
    ) -> None:
        """Never fails for a bad file: a corrupt one is set aside and a fresh one made, an unusable one
        (read-only, full disk) replaced by memory for this run; `health` is told either way."""
        self.path = path
        self._retention = retention_days * 86400
        self._max_bytes = int(max_mb * 1024 * 1024)
        self._persist_interval = persist_interval
        self._clock = clock
        self._health = health
        self._db, self.durable = open_state_db(
            path, _connect, _prepare, part="history", what="monitoring history", health=health
        )
        self._write_failing = False
        self._db_lock = threading.Lock()
        self._lock = threading.Lock()  # guards the in-memory state below, never held during file I/O
        self._rollups: dict[tuple[int, str], list[Any]] = {}  # (minute, stream) -> [source, n, seconds]
        self._classes: dict[tuple[int, str, str], list[float]] = {}  # (minute, stream, class) -> [n, sum]
        self._recent: OrderedDict[str, FrameResult] = OrderedDict()
        self._active: dict[tuple[str, str], dict[str, Any]] = {}
        self._events: list[tuple[str, float, str, str]] = []  # (id, created, camera, JSON) to write
        self.events_dropped = 0  # events lost because the writer was MAX_PENDING_EVENTS behind
        self._stop = threading.Event()
        self._closed = False
        self._db_closed = False
        try:
            self._upkeep(self._clock())
        except sqlite3.Error as exc:  # e.g. a full disk: the next turns of the writer retry
            self._write_failed(exc)
        self._thread = threading.Thread(target=self._run, name="history", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    # --- the Sink ----------------------------------------------------------------------------------

    def handle(self, result: FrameResult) -> None:
        minute = int(result.captured_at // MINUTE) * MINUTE
        detections = result.detections
        sums = []
        if len(detections) and detections.confidence is not None:
            sums = class_sums(detections.data["class_name"], detections.confidence)
        with self._lock:
            row = self._rollups.get((minute, result.camera_id))
            if row is None:
                row = self._rollups[(minute, result.camera_id)] = [result.source, 0, 0.0]
            row[1] += 1
            row[2] += result.inference_seconds
            for name, count, total in sums:
                entry = self._classes.setdefault((minute, result.camera_id, name), [0, 0.0])
                entry[0] += count
                entry[1] += total
            if sums:  # without the frame's image (2048 frames would be gigabytes), its top detections only
                self._recent[result.inference_id] = _most_confident(
                    dataclasses.replace(result, image=None), MAX_SAMPLE_DETECTIONS
                )
                if len(self._recent) > RECENT_FRAMES:
                    self._recent.popitem(last=False)

    def flush(self) -> None:
        """Write the counters and events gathered so far to the file; a failure (a full disk) degrades the
        history and loses them, never the caller."""
        try:
            self._write_counters()
        except sqlite3.Error as exc:
            self._write_failed(exc)

    def _write_counters(self) -> None:
        with self._lock:
            rollups, self._rollups = self._rollups, {}
            classes, self._classes = self._classes, {}
            events, self._events = self._events, []
        if not rollups and not classes and not events:
            return
        with self._db_lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO event VALUES (?, ?, ?, ?)", events)
            self._db.executemany(
                "INSERT INTO rollup VALUES (?, 60, ?, ?, ?, ?) ON CONFLICT (bucket, span, stream) DO UPDATE "
                "SET inferences = inferences + excluded.inferences, "
                "inference_seconds = inference_seconds + excluded.inference_seconds",
                [(minute, stream, *row) for (minute, stream), row in rollups.items()],
            )
            self._db.executemany(
                "INSERT INTO rollup_class VALUES (?, 60, ?, ?, ?, ?) "
                "ON CONFLICT (bucket, span, stream, class) DO UPDATE "
                "SET detections = detections + excluded.detections, "
                "confidence_sum = confidence_sum + excluded.confidence_sum",
                [(minute, stream, name, *entry) for (minute, stream, name), entry in classes.items()],
            )

    def close(self, timeout: float) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.flush()
        with self._db_lock:
            self._db.close()
            self._db_closed = True

    # --- what the monitoring sink and the alert engine report ------------------------------------------

    def on_report(self, body: dict[str, Any], metadata: dict[str, str]) -> None:
        """A Model Monitoring report was spooled: keep each inference it names as a sample.

        `body` is the report as sent (`source_info` = the stream, `inference_results` one per class) and
        `metadata` the custom metadata fields sent with it.
        """
        stream = str(body.get("source_info", ""))
        reported: dict[str, list[dict[str, Any]]] = {}
        model_ids: dict[str, str] = {}
        for entry in body.get("inference_results", []):
            inference_id = str(entry["inference_id"])
            reported.setdefault(inference_id, []).append(
                {"class": str(entry["class_name"]), "confidence": float(entry["confidence"])}
            )
            model_ids[inference_id] = str(entry.get("model_id", ""))
        window_closed = _parse_time(body.get("timestamp")) or self._clock()
        rows = []
        for inference_id, classes in reported.items():
            with self._lock:
                frame = self._recent.get(inference_id)
            sample: dict[str, Any] = {
                "inference_id": inference_id,
                "stream": stream,
                "model_id": model_ids[inference_id],
                "reported": classes,
                "metadata": dict(metadata),
            }
            if frame is not None:
                created = frame.captured_at
                sample["source"] = frame.source
                sample["image"] = {"width": frame.width, "height": frame.height}
                sample["inference_time"] = round(frame.inference_seconds, 6)
                sample["predictions"] = roboflow_predictions(frame.detections)[:MAX_SAMPLE_DETECTIONS]
            else:  # the frame left the recent list: keep what the report itself says
                created = window_closed
                sample["predictions"] = classes
            sample["timestamp"] = iso_utc(created, "seconds")
            names = {p["class"] for p in sample["predictions"]} | {c["class"] for c in classes}
            rows.append((inference_id, created, stream, json.dumps(sample), names))
        try:
            self._store_samples(rows)
        except sqlite3.Error as exc:
            self._write_failed(exc)

    def _store_samples(self, rows: list[tuple[str, float, str, str, set[str]]]) -> None:
        with self._db_lock:
            if self._db_closed:  # a report spooled while the daemon stops, after this sink was closed
                return
            with self._db:
                self._db.execute("BEGIN")
                for inference_id, created, stream_, text, names in rows:
                    self._db.execute(
                        "INSERT OR REPLACE INTO sample VALUES (?, ?, ?, ?)",
                        (inference_id, created, stream_, text),
                    )
                    self._db.executemany(
                        "INSERT OR IGNORE INTO sample_class VALUES (?, ?)",
                        [(inference_id, n) for n in names],
                    )

    def on_alert(self, alert: Alert) -> None:
        """An alert fired or resolved: kept as its payload (type, camera, message, timestamp, severity)."""
        key = (alert.type, alert.camera)
        body = alert.payload()
        with self._lock:
            if alert.state == "resolved":
                self._active.pop(key, None)
            else:
                self._active[key] = body
        try:
            with self._db_lock:
                if not self._db_closed:
                    self._db.execute(
                        "INSERT INTO alert (created, body) VALUES (?, ?)", (self._clock(), json.dumps(body))
                    )
        except sqlite3.Error as exc:  # the alert itself still goes to MQTT and the log
            self._write_failed(exc)

    def on_event(self, event: Event) -> None:
        """A tracked object's event (dispatcher thread): held in memory until the writer's next turn."""
        row = (event.id, event.timestamp, event.camera, json.dumps(event.payload()))
        with self._lock:
            if len(self._events) >= MAX_PENDING_EVENTS:
                del self._events[0]
                self.events_dropped += 1
                if self.events_dropped == 1 or self.events_dropped % 1000 == 0:
                    log.warning("monitoring history behind: %d event(s) not kept so far", self.events_dropped)
            self._events.append(row)

    # --- the page's queries --------------------------------------------------------------------------

    def summary(self, range_name: str, camera: str | None = None, now: float | None = None) -> dict[str, Any]:
        """Totals of the range and of the period before it, the % change, and a time series."""
        span = range_seconds(range_name)
        end = self._clock() if now is None else now
        start = end - span
        self.flush()
        current = self._totals(start, end, camera)
        previous = self._totals(start - span, start, camera)
        return {
            "range": range_name,
            "from": iso_utc(start, "seconds"),
            "to": iso_utc(end, "seconds"),
            "camera": camera,
            "current": current,
            "previous": previous,
            "change": {
                key: percent_change(current[key], previous[key])
                for key in ("inferences", "detections", "avg_confidence", "avg_inference_time")
            },
            "series": self._series(start, span, camera),
        }

    def streams(self, range_name: str, now: float | None = None) -> list[dict[str, Any]]:
        """Per stream: inferences, detections, averages and when it was last seen, in the range."""
        end = self._clock() if now is None else now
        start = end - range_seconds(range_name)
        self.flush()
        with self._db_lock:
            rows = self._db.execute(
                "SELECT stream, MAX(source), SUM(inferences), SUM(inference_seconds), MAX(bucket + span) "
                "FROM rollup WHERE bucket >= ? AND bucket < ? GROUP BY stream",
                (start, end),
            ).fetchall()
            found = dict(
                (stream, (n, total))
                for stream, n, total in self._db.execute(
                    "SELECT stream, SUM(detections), SUM(confidence_sum) FROM rollup_class "
                    "WHERE bucket >= ? AND bucket < ? GROUP BY stream",
                    (start, end),
                )
            )
        streams = []
        for stream, source, inferences, seconds, last in rows:
            detections, confidence = found.get(stream, (0, 0.0))
            streams.append(
                {
                    "stream": stream,
                    "source": source,  # a camera id that requests also use shows as 'camera'
                    "inferences": inferences,
                    "detections": detections,
                    "avg_confidence": _ratio(confidence, detections, 4),
                    "avg_inference_time": _ratio(seconds, inferences, 6),
                    "last_seen": iso_utc(min(last, end), "seconds"),
                }
            )
        return sorted(streams, key=lambda s: s["stream"])

    def classes(
        self, range_name: str, camera: str | None = None, now: float | None = None
    ) -> list[dict[str, Any]]:
        """Per class: detections, share of all detections, average confidence; most detected first."""
        end = self._clock() if now is None else now
        start = end - range_seconds(range_name)
        self.flush()
        where, args = self._where(start, end, camera)
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT class, SUM(detections), SUM(confidence_sum) FROM rollup_class WHERE {where} "
                "GROUP BY class ORDER BY SUM(detections) DESC, class",
                args,
            ).fetchall()
        total = sum(n for _, n, _ in rows)
        return [
            {
                "class": name,
                "detections": n,
                "share": round(n / total, 4) if total else 0.0,
                "avg_confidence": _ratio(confidence, n, 4),
            }
            for name, n, confidence in rows
        ]

    def samples(
        self, camera: str | None = None, class_name: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """The newest reported samples (without their detection lists), optionally of one stream/class."""
        conditions, args = [], []
        if camera:
            conditions.append("s.stream = ?")
            args.append(camera)
        if class_name:
            conditions.append("s.inference_id IN (SELECT inference_id FROM sample_class WHERE class = ?)")
            args.append(class_name)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT s.body FROM sample s {where} ORDER BY s.created DESC LIMIT ?", (*args, limit)
            ).fetchall()
        summaries = []
        for (text,) in rows:
            sample = json.loads(text)
            sample["detections"] = len(sample.pop("predictions"))
            summaries.append(sample)
        return summaries

    def sample(self, inference_id: str) -> dict[str, Any] | None:
        with self._db_lock:
            row = self._db.execute(
                "SELECT body FROM sample WHERE inference_id = ?", (inference_id,)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def sample_classes(self) -> list[str]:
        """Every class that appears in a kept sample, for the page's class filter."""
        with self._db_lock:
            return [
                name for (name,) in self._db.execute("SELECT DISTINCT class FROM sample_class ORDER BY class")
            ]

    def events(self, camera: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest events (their MQTT payloads), optionally of one camera."""
        self.flush()
        where, args = ("WHERE camera = ?", (camera,)) if camera else ("", ())
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT body FROM event {where} ORDER BY created DESC, rowid DESC LIMIT ?", (*args, limit)
            ).fetchall()
        return [json.loads(text) for (text,) in rows]

    def alerts(self, limit: int = 50) -> dict[str, list[dict[str, Any]]]:
        """Alerts firing now (since this process started) and the newest alert events."""
        with self._lock:
            active = list(self._active.values())
        with self._db_lock:
            rows = self._db.execute("SELECT body FROM alert ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return {"active": active, "recent": [json.loads(text) for (text,) in rows]}

    # --- internals -----------------------------------------------------------------------------------

    @staticmethod
    def _where(start: float, end: float, camera: str | None) -> tuple[str, tuple[Any, ...]]:
        if camera:
            return "bucket >= ? AND bucket < ? AND stream = ?", (start, end, camera)
        return "bucket >= ? AND bucket < ?", (start, end)

    def _totals(self, start: float, end: float, camera: str | None) -> dict[str, Any]:
        where, args = self._where(start, end, camera)
        with self._db_lock:
            inferences, seconds = self._db.execute(
                f"SELECT SUM(inferences), SUM(inference_seconds) FROM rollup WHERE {where}", args
            ).fetchone()
            detections, confidence = self._db.execute(
                f"SELECT SUM(detections), SUM(confidence_sum) FROM rollup_class WHERE {where}", args
            ).fetchone()
        return {
            "inferences": inferences or 0,
            "detections": detections or 0,
            "avg_confidence": _ratio(confidence, detections, 4),
            "avg_inference_time": _ratio(seconds, inferences, 6),
        }

    def _series(self, start: float, span: int, camera: str | None) -> list[dict[str, Any]]:
        step = span / SERIES_POINTS
        where, args = self._where(start, start + span, camera)
        with self._db_lock:
            inferences = dict(
                self._db.execute(
                    f"SELECT CAST((bucket - ?) / ? AS INTEGER), SUM(inferences) FROM rollup WHERE {where} "
                    "GROUP BY 1",
                    (start, step, *args),
                ).fetchall()
            )
            detections = dict(
                self._db.execute(
                    f"SELECT CAST((bucket - ?) / ? AS INTEGER), SUM(detections) FROM rollup_class "
                    f"WHERE {where} GROUP BY 1",
                    (start, step, *args),
                ).fetchall()
            )
        return [
            {
                "t": iso_utc(start + i * step, "seconds"),
                "inferences": inferences.get(i, 0),
                "detections": detections.get(i, 0),
            }
            for i in range(SERIES_POINTS)
        ]

    def _run(self) -> None:
        last_upkeep = time.monotonic()
        while not self._stop.wait(self._persist_interval):
            try:
                self._write_counters()
                if time.monotonic() - last_upkeep >= UPKEEP_INTERVAL:
                    last_upkeep = time.monotonic()
                    self._upkeep(self._clock())
                elif self._used_bytes() > self._max_bytes:
                    self._shrink()
            except sqlite3.Error as exc:  # a full disk must not end the history thread; the next turn retries
                self._write_failed(exc)
            else:
                if self._write_failing:
                    self._write_failing = False
                    self._health.recover("history")

    def _write_failed(self, exc: sqlite3.Error) -> None:
        if is_corrupt(exc):
            with self._db_lock:
                with contextlib.suppress(sqlite3.Error):
                    self._db.close()
                self._db, self.durable = open_state_db(
                    self.path, _connect, _prepare, part="history", what="monitoring history",
                    health=self._health, damaged=exc,
                )
            return
        self._write_failing = True
        self._health.degrade("history", f"{self.path}: cannot write the monitoring history ({exc})")

    def _upkeep(self, now: float) -> None:
        """Drop what is older than the retention, merge old minutes into hours, keep the size bound."""
        cutoff = now - self._retention
        merge_before = int((now - FINE_FOR) // HOUR) * HOUR
        with self._db_lock, self._db:
            self._db.execute("BEGIN")
            for table in ("rollup", "rollup_class"):
                self._db.execute(f"DELETE FROM {table} WHERE bucket < ?", (cutoff,))
            self._db.execute(
                "INSERT INTO rollup SELECT bucket / 3600 * 3600, 3600, stream, MAX(source), SUM(inferences), "
                "SUM(inference_seconds) FROM rollup WHERE span = 60 AND bucket < ? GROUP BY 1, stream "
                "ON CONFLICT (bucket, span, stream) DO UPDATE "
                "SET inferences = inferences + excluded.inferences, "
                "inference_seconds = inference_seconds + excluded.inference_seconds",
                (merge_before,),
            )
            self._db.execute(
                "INSERT INTO rollup_class SELECT bucket / 3600 * 3600, 3600, stream, class, SUM(detections), "
                "SUM(confidence_sum) FROM rollup_class WHERE span = 60 AND bucket < ? "
                "GROUP BY 1, stream, class "
                "ON CONFLICT (bucket, span, stream, class) DO UPDATE "
                "SET detections = detections + excluded.detections, "
                "confidence_sum = confidence_sum + excluded.confidence_sum",
                (merge_before,),
            )
            for table in ("rollup", "rollup_class"):
                self._db.execute(f"DELETE FROM {table} WHERE span = 60 AND bucket < ?", (merge_before,))
            self._delete_samples("created < ?", (cutoff,))
            self._db.execute("DELETE FROM alert WHERE created < ?", (cutoff,))
            self._db.execute("DELETE FROM event WHERE created < ?", (cutoff,))
            self._db.execute(
                "DELETE FROM event WHERE rowid NOT IN "
                "(SELECT rowid FROM event ORDER BY created DESC LIMIT ?)",
                (MAX_EVENTS,),
            )
        self._shrink()

    def _delete_samples(self, condition: str, args: tuple[Any, ...]) -> None:
        """Within a transaction: delete the samples matching `condition`, and their class rows."""
        ids = f"SELECT inference_id FROM sample WHERE {condition}"
        self._db.execute(f"DELETE FROM sample_class WHERE inference_id IN ({ids})", args)
        self._db.execute(f"DELETE FROM sample WHERE inference_id IN ({ids})", args)

    def _used_bytes(self) -> int:
        with self._db_lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
            size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _shrink(self) -> None:
        """Over the size bound: drop the oldest tenth of the samples (then of the rollups) until under."""
        dropped = 0
        while self._used_bytes() > self._max_bytes:
            with self._db_lock, self._db:
                self._db.execute("BEGIN")
                (samples,) = self._db.execute("SELECT COUNT(*) FROM sample").fetchone()
                if samples:
                    oldest = "inference_id IN (SELECT inference_id FROM sample ORDER BY created LIMIT ?)"
                    self._delete_samples(oldest, (max(1, samples // 10),))
                else:
                    (buckets,) = self._db.execute("SELECT COUNT(DISTINCT bucket) FROM rollup").fetchone()
                    if not buckets:
                        break
                    (last,) = self._db.execute(
                        "SELECT bucket FROM (SELECT DISTINCT bucket FROM rollup ORDER BY bucket LIMIT ?) "
                        "ORDER BY bucket DESC LIMIT 1",
                        (max(1, buckets // 10),),
                    ).fetchone()
                    for table in ("rollup", "rollup_class"):
                        self._db.execute(f"DELETE FROM {table} WHERE bucket <= ?", (last,))
            dropped += 1
            with self._db_lock:
                self._db.executescript("PRAGMA incremental_vacuum;")  # execute() would free one page only
        if dropped:
            with self._db_lock:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file itself shrinks only now
            log.info(
                "monitoring history over %d MB: oldest entries removed", self._max_bytes // (1024 * 1024)
            )
