"""The on-disk queue of requests to Roboflow (SQLite): written before any send, deleted after a 2xx.

One row per request (Model Monitoring: `kind` report or metadata; Vision Events: `kind` event) holding the
exact JSON body that will be sent, so a request survives crashes, reboots and long outages. A row may carry
an attachment (a Vision Event's image) that is uploaded first: its bytes until then, the reference the
server gave it afterwards (`attachment_ref`), so a retry never uploads it twice. The spool is bounded by the
bytes it holds (bodies and attachments) and by their age; when over, the oldest rows go, and every dropped
row is counted and logged.

A bad file never stops the device (daemon/statefile.py): a corrupt one is set aside and replaced, one that
cannot be used runs the spool in memory until the file can be used again; a request that cannot be stored
(full disk) is counted as dropped. Each is reported to the `Health` registry.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol, TextIO

from prometheus_client import Gauge

from daemon.health import NO_HEALTH, Health
from daemon.statefile import IN_MEMORY, is_corrupt, open_state_db, quick_check

log = logging.getLogger("edgewatch.spool")

FILE_RETRY = 5.0  # seconds between tries of the file while the spool is in memory (and empty)

MONITORING_KINDS = ("report", "metadata")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: id order is send order
    kind TEXT NOT NULL CHECK (kind IN ({kinds})),
    camera TEXT NOT NULL,
    created REAL NOT NULL,                 -- unix time the window closed / the event happened
    size INTEGER NOT NULL,                 -- bytes of body and attachment, what max_spool_mb bounds
    body TEXT NOT NULL,                    -- the JSON sent, byte for byte
    attachment BLOB,                       -- bytes to upload before the body; NULL once uploaded
    attachment_ref TEXT                    -- what the server called the uploaded attachment
);
CREATE INDEX IF NOT EXISTS requests_created ON requests (created);
"""
_ATTACHMENT_COLUMNS = (("attachment", "BLOB"), ("attachment_ref", "TEXT"))
_COLUMNS = "id, kind, camera, created, body, COALESCE(LENGTH(attachment), 0), attachment_ref"


class SpoolMetrics(Protocol):
    """A destination's metric group, as far as its spool is concerned."""

    spool_depth: Gauge
    spool_oldest_age: Gauge

    def spool_dropped(self, count: int) -> None:
        """`count` requests left the spool unsent, over a bound."""


class SpoolError(Exception):
    """The spool cannot be read or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class SpoolItem:
    id: int
    kind: str
    camera: str
    created: float
    body: str
    attachment_size: int = 0  # bytes waiting to be uploaded (0: none, or uploaded already)
    attachment_ref: str | None = None  # the uploaded attachment's reference

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)


def _connect(path: Path | str, read_only: bool = False) -> sqlite3.Connection:
    if str(path) == IN_MEMORY:
        uri = "file::memory:"
    else:
        uri = f"file:{path}?mode=ro" if read_only else f"file:{path}"
    # isolation_level=None: autocommit; the few multi-statement changes open their own transaction
    connection = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5)
    connection.execute("PRAGMA busy_timeout = 5000")
    return connection


def _preparer(kinds: tuple[str, ...]) -> Callable[[sqlite3.Connection], None]:
    """What a new connection runs: pragmas, a damage check, the schema (and columns older spools lack)."""

    def prepare(db: sqlite3.Connection) -> None:
        db.execute("PRAGMA journal_mode = WAL")
        # WAL + synchronous=FULL fsyncs the log at every commit, so a request that put() returned for survives
        # power loss, not only a crash of this process (NORMAL would survive kill -9 but could lose the last
        # commits on power loss). The cost is one fsync per request, a few per second at most (one report and
        # one metadata request per camera per window), which any disk absorbs.
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA journal_size_limit = 4194304")  # shrink the WAL after checkpoints
        quick_check(db)
        db.executescript(_SCHEMA.format(kinds=", ".join(f"'{kind}'" for kind in kinds)))
        present = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
        for column, sql_type in _ATTACHMENT_COLUMNS:  # a spool written by an older edgewatch
            if column not in present:
                db.execute(f"ALTER TABLE requests ADD COLUMN {column} {sql_type}")
        db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM requests").fetchone()

    return prepare


class Spool:
    """Thread-safe: the window timer writes, the uploader reads and deletes, Prometheus reads the gauges."""

    def __init__(
        self,
        path: Path,
        max_bytes: int,
        max_age: float,
        metrics: SpoolMetrics | None = None,
        clock: Callable[[], float] = time.time,
        *,
        name: str = "monitoring",
        kinds: tuple[str, ...] = MONITORING_KINDS,
        health: Health = NO_HEALTH,
        part: str = "spool",
    ) -> None:
        """`name` says whose spool it is in logs; `kinds` are the kinds of request it holds. Never fails for
        a bad file: `health` hears about it as `part`."""
        self.path = path
        self.name = name
        self._kinds = kinds
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()
        self._health = health
        self._part = part
        self._prepare = _preparer(kinds)
        self._db, self.durable = self._open()
        self._put_failing = False
        self._next_file_try = time.monotonic() + FILE_RETRY
        count, total, oldest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM requests"
        ).fetchone()
        self._depth: int = count
        self._bytes: int = total
        self._oldest: float | None = oldest
        if metrics is not None:
            metrics.spool_depth.set_function(lambda: self._depth)
            metrics.spool_oldest_age.set_function(self.oldest_age)
        if count:
            log.info("%s spool %s holds %d unsent request(s) from earlier runs", name, path, count)
        self.trim()

    def put(
        self,
        kind: str,
        camera: str,
        body: dict[str, Any],
        created: float | None = None,
        attachment: bytes | None = None,
    ) -> int:
        """Store one request durably; returns its id. Drops the oldest rows if this goes over a bound.

        SpoolError when it cannot be stored (full disk, I/O error): the request is counted as dropped and
        the spool reported degraded until a later request is stored again."""
        if kind not in self._kinds:
            raise ValueError(f"the {self.name} spool holds no {kind!r} requests")
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        created = self._clock() if created is None else created
        size = len(text.encode()) + len(attachment or b"")
        insert = (
            "INSERT INTO requests (kind, camera, created, size, body, attachment) VALUES (?, ?, ?, ?, ?, ?)"
        )
        row = (kind, camera, created, size, text, attachment)
        with self._lock:
            self._back_to_file()
            try:
                try:
                    cursor = self._db.execute(insert, row)
                except sqlite3.DatabaseError as exc:
                    self._replace_corrupt(exc)  # the request itself can still be kept, in the fresh file
                    cursor = self._db.execute(insert, row)
            except sqlite3.Error as exc:
                self._count_dropped(1)
                self._put_failing = True
                why = f"{self.path}: cannot store requests ({exc}): they are dropped"
                self._health.degrade(self._part, why)
                raise SpoolError(f"{self.path}: cannot store the {kind} of camera {camera}: {exc}") from None
            self._depth += 1
            self._bytes += size
            if self._oldest is None:
                self._oldest = created
            if self._put_failing:
                self._put_failing = False
                self._health.recover(self._part)
        self.trim()
        return int(cursor.lastrowid or 0)

    def oldest(self) -> SpoolItem | None:
        head = self.head(1)
        return head[0] if head else None

    def head(self, limit: int) -> list[SpoolItem]:
        """The `limit` oldest requests, oldest first (attachments by size, not their bytes)."""
        with self._lock:
            try:
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM requests ORDER BY id LIMIT ?", (limit,)
                ).fetchall()
            except sqlite3.DatabaseError as exc:
                self._replace_corrupt(exc)
                return []
        return [SpoolItem(*row) for row in rows]

    def attachment(self, item_id: int) -> bytes | None:
        """The bytes still to upload for a request (None: none, uploaded already, or the row is gone)."""
        with self._lock:
            row = self._db.execute("SELECT attachment FROM requests WHERE id = ?", (item_id,)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    def settle_attachment(self, item_id: int, ref: str | None) -> None:
        """The attachment was uploaded as `ref` (None: it was refused): its bytes leave the spool."""
        with self._lock:
            try:
                with self._transaction():
                    row = self._db.execute(
                        "SELECT COALESCE(LENGTH(attachment), 0) FROM requests WHERE id = ?", (item_id,)
                    ).fetchone()
                    if row:
                        self._db.execute(
                            "UPDATE requests SET attachment = NULL, attachment_ref = ?, size = size - ?"
                            " WHERE id = ?",
                            (ref, row[0], item_id),
                        )
            except sqlite3.DatabaseError as exc:
                self._replace_corrupt(exc)
                return
            if row:
                self._bytes -= row[0]

    def delete(self, item_id: int) -> None:
        """Remove a request (sent, or refused for good). A row already dropped by trim() is a no-op."""
        self.delete_many([item_id])

    def delete_many(self, item_ids: list[int]) -> None:
        """Remove several requests in one transaction (a batch that was accepted)."""
        with self._lock:
            marks = ", ".join("?" * len(item_ids))
            try:
                with self._transaction():
                    count, size = self._db.execute(
                        f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM requests WHERE id IN ({marks})",
                        item_ids,
                    ).fetchone()
                    if count:
                        self._db.execute(f"DELETE FROM requests WHERE id IN ({marks})", item_ids)
            except sqlite3.DatabaseError as exc:
                self._replace_corrupt(exc)
                return
            if count:
                self._depth -= count
                self._bytes -= size
                self._refresh_oldest()

    def trim(self) -> int:
        """Apply max_spool_age and max_spool_mb: drop the oldest rows over either bound; returns how many.
        Never raises: a spool that cannot be trimmed now is trimmed at the next put."""
        too_old: Counter[str] = Counter()
        too_big: Counter[str] = Counter()
        with self._lock:
            try:
                too_old = self._drop("created < ?", self._clock() - self._max_age)
                if self._bytes > self._max_bytes:
                    # the newest row that with everything newer exceeds the bound goes, and all older ones
                    too_big = self._drop(
                        "id <= (SELECT id FROM (SELECT id, SUM(size) OVER (ORDER BY id DESC) AS kept"
                        " FROM requests) WHERE kept > ? ORDER BY id DESC LIMIT 1)",
                        self._max_bytes,
                    )
            except sqlite3.Error as exc:
                if is_corrupt(exc):
                    self._replace_corrupt(exc)
                else:
                    log.warning("%s spool %s: cannot drop old requests now: %s", self.name, self.path, exc)
        for reason, dropped in (("older than max_spool_age", too_old), ("over max_spool_mb", too_big)):
            if dropped:
                total = sum(dropped.values())
                per_camera = ", ".join(f"{camera}: {n}" for camera, n in sorted(dropped.items()))
                log.warning(
                    "%s spool %s: dropped the %d oldest unsent request(s) %s (%s)",
                    self.name, self.path, total, reason, per_camera,
                )
                self._count_dropped(total)
        return sum(too_old.values()) + sum(too_big.values())

    def _open(self, damaged: BaseException | None = None) -> tuple[sqlite3.Connection, bool]:
        return open_state_db(
            self.path, _connect, self._prepare, part=self._part, what=f"{self.name} spool",
            health=self._health, damaged=damaged,
        )

    def _count_dropped(self, requests: int) -> None:
        if self._metrics is not None:
            self._metrics.spool_dropped(requests)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _replace_corrupt(self, exc: sqlite3.DatabaseError) -> None:
        """The file went bad while running (caller holds the lock): set it aside, go on with a fresh one.
        What it held is lost: counted as dropped. Any other database error is raised again."""
        if not is_corrupt(exc):
            raise exc
        lost = self._depth
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        log.error(
            "%s spool %s: damaged while running (%s); %d request(s) lost", self.name, self.path, exc, lost
        )
        self._db, self.durable = self._open(damaged=exc)
        self._count_dropped(lost)
        self._depth, self._bytes, self._oldest = 0, 0, None

    def _back_to_file(self) -> None:
        """In memory (the file could not be used at start): once everything held has been sent, try the file
        again every FILE_RETRY seconds; when it opens, go on with it (caller holds the lock). Rows in memory
        are never moved: their ids are in use by the uploader."""
        if self.durable or self._depth or time.monotonic() < self._next_file_try:
            return
        self._next_file_try = time.monotonic() + FILE_RETRY
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = _connect(self.path)
        except (OSError, sqlite3.Error):
            return
        try:
            self._prepare(db)
            count, total, oldest = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(created) FROM requests"
            ).fetchone()
        except sqlite3.Error:
            db.close()
            return
        self._db.close()
        self._db, self.durable = db, True
        self._depth, self._bytes, self._oldest = count, total, oldest
        log.info("%s spool %s can be used again: requests are kept on disk from now on", self.name, self.path)
        self._health.recover(self._part)

    def _drop(self, where: str, value: float) -> Counter[str]:
        """Delete the rows matching `where` (caller holds the lock); returns dropped rows per camera."""
        with self._transaction():
            rows = self._db.execute(
                "SELECT camera, COUNT(*), COALESCE(SUM(size), 0) FROM requests"
                f" WHERE {where} GROUP BY camera",
                (value,),
            ).fetchall()
            if rows:
                self._db.execute(f"DELETE FROM requests WHERE {where}", (value,))
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
            columns = {row[1] for row in db.execute("PRAGMA table_info(requests)")}
            selected = _COLUMNS if "attachment" in columns else "id, kind, camera, created, body"
            rows = db.execute(
                f"SELECT {selected} FROM requests ORDER BY id DESC LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise SpoolError(f"{path}: cannot read the spool: {exc}") from None
    return [SpoolItem(*row) for row in reversed(rows)]


def print_waiting(
    path: Path,
    *,
    what: str,
    noun: str,
    limit: int | None,
    as_json: bool,
    json_row: Callable[[SpoolItem], dict[str, Any]],
    text_line: Callable[[SpoolItem], str],
    out: TextIO,
) -> int:
    """What `edgewatch reports` and `edgewatch vision-events` print: the newest `limit` requests waiting in
    a spool, oldest first, one JSON object (`json_row`) or one line (time, camera, `text_line`) each, with
    `what` naming them all ("Model Monitoring requests") and `noun` one ("request(s)"). Returns the exit
    code."""
    try:
        items = read_items(path, limit)
    except SpoolError as exc:
        print(exc, file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps([json_row(item) for item in items], indent=2, ensure_ascii=False), file=out)
        return 0
    if not items:
        print(f"no {what} waiting in {path}", file=out)
        return 0
    width = max(len(item.camera) for item in items)
    for item in items:
        created = datetime.fromtimestamp(item.created).astimezone().isoformat(timespec="seconds")
        print(f"{created}  {item.camera or '-':<{width}}  {text_line(item)}", file=out)
    print(f"{len(items)} {noun} shown, from {path}", file=out)
    return 0


def created_utc(item: SpoolItem) -> str:
    return datetime.fromtimestamp(item.created, timezone.utc).isoformat()
