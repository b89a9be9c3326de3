"""One daemon per state folder.

Every store of a daemon lives in the folder of `roboflow.spool`: the spools, the history, the events'
snapshots, Home Assistant's discovery state, the reload status. A second daemon on the same folder would send
the same reports and events twice and prune the first one's stores, so the daemon holds an exclusive lock on
`edgewatch.lock` there for as long as it runs. The kernel drops the lock when the process ends, however it
ends (kill -9 included), so a stale lock file never keeps a daemon from starting.

In a folder this process may not write (read-only, or outside what its unit lets it write) the lock is taken
on the lock file another daemon made there, if there is one: a daemon whose config names another daemon's
folder is refused all the same. Where there is no lock file to open, the daemon runs: its stores then run in
memory and say so (daemon/statefile.py), and no other daemon can share what is not there.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

log = logging.getLogger("edgewatch.state")

LOCK_NAME = "edgewatch.lock"


class StateFolderInUse(OSError):
    """Another process holds the folder's lock. An OSError: the command says it cannot start, exit 1."""


class StateLock:
    """The held lock; `release` (or the end of the process) lets the next daemon have the folder."""

    def __init__(self, descriptor: int) -> None:
        self._descriptor: int | None = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the only descriptor drops the lock
            self._descriptor = None


def hold_state_folder(folder: Path, key: str) -> StateLock | None:
    """Lock `folder` for this process and write our pid into the lock file. None when there is no lock file
    to open there. Raises `StateFolderInUse` naming `key` (the config key that chose the folder) and the
    holder's pid when another daemon runs on it."""
    path = folder / LOCK_NAME
    writable = True
    try:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        # a folder we may not write (a unit's ProtectSystem=, a read-only mount) may still be another
        # daemon's: its lock can be taken, or found taken, on a read-only descriptor too
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        except OSError:
            log.warning("%s: cannot open it (%s): not guarded against a second daemon", path, exc.strerror)
            return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(descriptor)
        raise StateFolderInUse(
            f"{key}: the folder {folder} is in use by another edgewatch (pid {holder}); "
            "each daemon needs a folder of its own"
        ) from None
    except OSError as exc:  # a file system without locks: run, as without a lock file
        os.close(descriptor)
        log.warning("%s: cannot lock (%s): not guarded against a second daemon", path, exc.strerror)
        return None
    if writable:
        try:
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        except OSError as exc:  # a full disk: the lock holds all the same, only the pid is not there to read
            log.warning("%s: cannot write our pid (%s)", path, exc.strerror)
    return StateLock(descriptor)
