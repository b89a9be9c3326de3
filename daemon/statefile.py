"""Opening the SQLite state files (spool.db, history.db) so that a bad file never stops the device.

- A corrupt file (not a database, malformed pages, a failed `quick_check`) is set aside as
  `<name>.corrupt-<UTC time>` (with its -wal/-shm) and a fresh one is made in its place.
- A file that cannot be used at all (read-only or missing folder, full disk, no permission) gives an
  in-memory database instead: the part keeps working for this run, without durability, and says so.
Either way the part is reported degraded (a metric, `/healthz`, an alert): nobody has to read a log to know.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from daemon.health import Health

log = logging.getLogger("edgewatch.state")

Connect = Callable[[str], sqlite3.Connection]
Prepare = Callable[[sqlite3.Connection], None]
IN_MEMORY = ":memory:"


class CorruptFile(sqlite3.DatabaseError):
    """`PRAGMA quick_check` found damage."""


def is_corrupt(exc: BaseException) -> bool:
    """Whether an SQLite error says the file itself is damaged (as opposed to busy, full or read-only)."""
    if isinstance(exc, CorruptFile):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    text = str(exc)  # Python 3.10 has no error codes
    return "malformed" in text or "not a database" in text


def quick_check(db: sqlite3.Connection) -> None:
    """CorruptFile if the file is damaged. `quick_check` is fast but SQLite 3.40 reports NOT NULL errors in
    WITHOUT ROWID tables that are not there, so what it finds is confirmed by the full `integrity_check`."""
    if db.execute("PRAGMA quick_check(1)").fetchall() == [("ok",)]:
        return
    problems = [row[0] for row in db.execute("PRAGMA integrity_check(3)").fetchall()]
    if problems != ["ok"]:
        raise CorruptFile(" ".join("; ".join(problems).split()))


def set_aside(path: Path, clock: Callable[[], float] = time.time) -> Path:
    """Rename the file (and its WAL, -shm files) to `<name>.corrupt-<time>`; returns the new name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock()))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    path.rename(target)
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            companion.rename(target.with_name(target.name + suffix))
    return target


def _open(connect: Connect, where: str, prepare: Prepare) -> sqlite3.Connection:
    db = connect(where)
    try:
        prepare(db)
    except BaseException:
        db.close()
        raise
    return db


def open_state_db(
    path: Path, connect: Connect, prepare: Prepare, *, part: str, what: str, health: Health,
    damaged: BaseException | None = None,
) -> tuple[sqlite3.Connection, bool]:
    """Open `path` with `connect` and run `prepare` on it (pragmas, schema, checks); returns the connection
    and whether it is the file (False: an in-memory stand-in). Never raises for a bad file. `damaged`: the
    file is known to be corrupt (found while running): set it aside without trying it again."""
    damage = damaged
    if damage is None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _open(connect, str(path), prepare), True
        except (OSError, sqlite3.Error) as exc:
            if not is_corrupt(exc):
                return _in_memory(path, connect, prepare, exc, part=part, what=what, health=health), False
            damage = exc
    try:
        moved = set_aside(path)
    except OSError as exc:
        log.error("%s: the %s is corrupt (%s) and cannot be moved aside: %s", path, what, damage, exc)
        return _in_memory(path, connect, prepare, damage, part=part, what=what, health=health), False
    log.error(
        "%s: the %s is corrupt (%s): moved it to %s and started a fresh one; what it held is not used",
        path, what, damage, moved.name,
    )
    health.degrade(part, f"{path} was corrupt: set aside as {moved.name}, a fresh one was started")
    try:
        return _open(connect, str(path), prepare), True
    except (OSError, sqlite3.Error) as exc:
        return _in_memory(path, connect, prepare, exc, part=part, what=what, health=health), False


def _in_memory(
    path: Path, connect: Connect, prepare: Prepare, cause: BaseException, *, part: str, what: str,
    health: Health,
) -> sqlite3.Connection:
    health.degrade(part, f"{path}: cannot use the {what} ({cause}); kept in memory only until restart")
    return _open(connect, IN_MEMORY, prepare)
