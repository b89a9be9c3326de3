"""The on-disk queue of Model Monitoring requests (SQLite): written before any send, deleted after a 2xx.

One row per HTTP request (`kind` report or metadata) holding the exact JSON body that will be sent, so a
request survives crashes, reboots and long outages. The spool is bounded by the size of the bodies it holds
and by their age; when over, the oldest rows go, and every dropped row is counted and logged.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from daemon.metrics.monitoring import MonitoringMetrics

log = logging.getLogger("edgewatch.spool")

Kind = Literal["report", "metadata"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: id order is send order
    kind TEXT NOT NULL CHECK (kind IN ('report', 'metadata')),
    camera TEXT NOT NULL,
    created REAL NOT NULL,                 -- unix time the window closed
    size INTEGER NOT NULL,                 -- bytes of body, what max_spool_mb bounds
    body TEXT NOT NULL                     -- the JSON sent, byte for byte
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
"""


class SpoolError(Exception):
    """The spool file cannot be opened or used; the message names the file."""


@dataclass(frozen=True, slots=True)
class SpoolItem:
    id: int
    kind: Kind
    camera: str
    created: float
    body: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


def _connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    # isolation_level=None: autocommit; the few multi-statement changes open their own transaction
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5)
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


class Spool:
    """Thread-safe: the window timer writes, the uploader reads and deletes, Prometheus reads the gauges."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        max_age: float,
        metrics: MonitoringMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = _connect(path)
            self._db.execute("PRAGMA journal_mode = WAL")
            # WAL + synchronous=FULL fsyncs the log at every commit, so a request that put() returned for
            # survives power loss, not only a crash of this process (NORMAL would survive kill -9 but could
            # lose the last commits on power loss). The cost is one fsync per request, a few per second at
            # most (one report and one metadata request per camera per window), which any disk absorbs.
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA journal_size_limit = 4194304")  # shrink the WAL after checkpoints
            self._db.executescript(_SCHEMA)
            count, total, oldest = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM requests"
            ).fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(f"{path}: cannot open the monitoring spool: {exc}") from None
        self._depth: int = count
        self._bytes: int = total
        self._oldest: float | None = oldest
        if metrics is not None:
            metrics.spool_depth.set_function(lambda: self._depth)
            metrics.spool_oldest_age.set_function(self.oldest_age)
        if count:
            log.info("monitoring spool %s holds %d unsent request(s) from earlier runs", path, count)
        self.trim()

    def put(self, kind: Kind, camera: str, body: dict[str, Any], created: float | None = None) -> int:
        """Store one request durably; returns its id. Drops the oldest rows if this goes over a bound."""
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        created = self._clock() if created is None else created
        size = len(text.encode())
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO requests (kind, camera, created, size, body) VALUES (?, ?, ?, ?, ?)",
                (kind, camera, created, size, text),
            )
            self._depth += 1
            self._bytes += size
            if self._oldest is None:
                self._oldest = created
        self.trim()
        return int(cursor.lastrowid or 0)

    def oldest(self) -> SpoolItem | None:
        with self._lock:
            row = self._db.execute(
                "SELECT id, kind, camera, created, body FROM requests ORDER BY id LIMIT 1"
            ).fetchone()
        return SpoolItem(*row) if row else None

    def delete(self, item_id: int) -> None:
        """Remove a request (sent, or refused for good). A row already dropped by trim() is a no-op."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT size FROM requests WHERE id = ?", (item_id,)).fetchone()
                if row:
                    self._db.execute("DELETE FROM requests WHERE id = ?", (item_id,))
            finally:
                self._db.execute("COMMIT")
            if row:
                self._depth -= 1
                self._bytes -= row[0]
                self._refresh_oldest()

    def trim(self) -> int:
        """Apply max_spool_age and max_spool_mb: drop the oldest rows over either bound; returns how many."""
        with self._lock:
            too_old = self._drop("created < ?", self._clock() - self._max_age)
            too_big: Counter[str] = Counter()
            if self._bytes > self._max_bytes:
                # the newest row that with everything newer exceeds the bound goes, and all older ones
                too_big = self._drop(
                    "id <= (SELECT id FROM (SELECT id, SUM(size) OVER (ORDER BY id DESC) AS kept"
                    " FROM requests) WHERE kept > ? ORDER BY id DESC LIMIT 1)",
                    self._max_bytes,
                )
        for reason, dropped in (("older than max_spool_age", too_old), ("over max_spool_mb", too_big)):
            if dropped:
                total = sum(dropped.values())
                per_camera = ", ".join(f"{camera}: {n}" for camera, n in sorted(dropped.items()))
                log.warning(
                    "monitoring spool %s: dropped the %d oldest unsent request(s) %s (%s)",
                    self.path, total, reason, per_camera,
                )
                if self._metrics is not None:
                    self._metrics.reports.labels("dropped").inc(total)
        return sum(too_old.values()) + sum(too_big.values())

    def _drop(self, where: str, value: float) -> Counter[str]:
        """Delete the rows matching `where` (caller holds the lock); returns dropped rows per camera."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            rows = self._db.execute(
                "SELECT camera, COUNT(*), COALESCE(SUM(size), 0) FROM requests"
                f" WHERE {where} GROUP BY camera",
                (value,),
            ).fetchall()
            if rows:
                self._db.execute(f"DELETE FROM requests WHERE {where}", (value,))
        finally:
            self._db.execute("COMMIT")
        for _, count, size in rows:
            self._depth -= count
            self._bytes -= size
        if rows:
            self._refresh_oldest()
        return Counter({camera: count for camera, count, _ in rows})

    def _refresh_oldest(self) -> None:
        row = self._db.execute("SELECT MIN(created) FROM requests").fetchone()
        self._oldest = row[0] if row else None

    @property
    def depth(self) -> int:
        return self._depth

    def oldest_age(self) -> float:
        oldest = self._oldest
        return max(0.0, self._clock() - oldest) if oldest is not None else 0.0

    def close(self) -> None:
        with self._lock:
            self._db.close()


def read_items(path: Path, limit: int | None = None) -> list[SpoolItem]:
    """The newest `limit` rows (all when None), oldest first, without creating or changing the spool.

    Safe while the daemon runs: WAL lets a reader see the last committed state without blocking writers.
    """
    if not path.is_file():
        return []
    try:
        db = _connect(path, read_only=True)
        try:
            if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests'").fetchone():
                return []  # the daemon is creating it right now
            rows = db.execute(
                "SELECT id, kind, camera, created, body FROM requests ORDER BY id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SpoolError(f"{path}: cannot read the monitoring spool: {exc}") from None
    return [SpoolItem(*row) for row in reversed(rows)]
