"""The reload thread: one reload at a time, in the order asked, never beside shutdown.

A request (SIGHUP, `POST /api/reload`, `edgewatch reload` through SIGHUP) never blocks its caller: it is
queued and gets a ticket. Requests that arrive while a reload runs are served together by the next reload
(they would all read the same file), so a burst of signals makes at most one more reload, not interleaved
ones. Each reload:

1. tells systemd `RELOADING=1` with `MONOTONIC_USEC=` (sd_notify(3));
2. reads and validates config.toml again; an invalid file, a change only a restart can apply, or a part
   that fails to apply (a model that does not load) leaves the running config as it was;
3. applies the difference through the `Target` (the service): cameras, sinks, model;
4. records the outcome: one log line, the reload metrics, an alert on failure (resolved by the next
   success), the status file that `edgewatch reload` waits on, then `READY=1`.

`close()` (at shutdown) waits for a reload in progress to finish and refuses new ones, so a shutdown never
tears down parts that a reload is rebuilding.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from daemon import sdnotify
from daemon.alerts.alert import Alert, AlertListener, AlertState
from daemon.config import Config, ConfigError, load_config
from daemon.reload.diff import ConfigDiff, diff
from daemon.reload.metrics import ReloadMetrics

log = logging.getLogger("edgewatch.reload")

ALERT_TYPE = "config_reload_failed"
KEEP_OUTCOMES = 16  # outcomes remembered for waiting callers; older tickets read as "unknown"
CLOSE_TIMEOUT = 120.0  # a reload loading a model may take this long before shutdown goes on without it


class ReloadError(Exception):
    """A change that cannot be applied, phrased like a config error: `file: key: what is wrong`."""


class Target(Protocol):
    """What a reload changes: the running service."""

    @property
    def config(self) -> Config: ...

    def apply(self, new: Config, change: ConfigDiff) -> None:
        """Apply `change` so that the service runs `new`; raise ReloadError, nothing changed, if it can't."""


@dataclass(frozen=True)
class Outcome:
    ticket: int
    successful: bool
    message: str  # the changes applied, or what is wrong
    started: float  # Unix time
    seconds: float
    finished: float  # Unix time

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class Reloader:
    def __init__(
        self,
        path: Path,
        target: Target,
        metrics: ReloadMetrics,
        *,
        listeners: Callable[[], Sequence[AlertListener]] = tuple,
        status_file: Path | None = None,
        load: Callable[[Path], Config] = load_config,
    ) -> None:
        self._path = path
        self._target = target
        self._metrics = metrics
        self._listeners = listeners
        self._status_file = status_file
        self._load = load
        self._changed = threading.Condition()  # guards everything below
        self._next = 1  # the ticket of the next reload to start
        self._asked = False  # a request waits for the next reload
        self._running = False
        self._closed = False
        self._outcomes: OrderedDict[int, Outcome] = OrderedDict()
        self._failing = False  # the alert is firing
        self._thread = threading.Thread(target=self._run, name="reload", daemon=True)

    def start(self) -> None:
        """Start the thread; the status file then names this process (`edgewatch reload` finds it there)."""
        now = time.time()
        self._write_status(Outcome(0, True, "started", now, 0.0, now))
        self._thread.start()

    def request(self) -> int | None:
        """Ask for a reload; returns its ticket, or None once shutting down. Never blocks for long: safe
        from a signal handler (the lock is never held by the main thread outside such a call)."""
        with self._changed:
            if self._closed:
                return None
            self._asked = True
            self._changed.notify_all()
            return self._next

    def wait(self, ticket: int, timeout: float) -> Outcome | None:
        """The outcome of the reload with this ticket, once it has finished; None on timeout or shutdown."""
        with self._changed:
            self._changed.wait_for(
                lambda: ticket in self._outcomes or ticket < self._next - KEEP_OUTCOMES or
                (self._closed and not self._running), timeout=timeout,
            )
            return self._outcomes.get(ticket)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Refuse new reloads, wait (at most `timeout`) for the one in progress to finish, and remove the
        status file, which names this process."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("a config reload still runs at shutdown; stopping without waiting for it")
                return
        if self._status_file is not None:  # no longer a pid to signal: `edgewatch reload` says so
            try:
                self._status_file.unlink(missing_ok=True)
            except OSError as exc:  # a read-only state folder: it was never written either
                log.debug("cannot remove the reload status %s: %s", self._status_file, exc.strerror)

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._asked or self._closed)
                if self._closed:
                    return
                ticket, self._next = self._next, self._next + 1
                self._asked, self._running = False, True
            try:
                outcome = self._reload(ticket)
            finally:
                with self._changed:
                    self._running = False
                    self._changed.notify_all()
            with self._changed:
                self._outcomes[ticket] = outcome
                while len(self._outcomes) > KEEP_OUTCOMES:
                    self._outcomes.popitem(last=False)
                self._changed.notify_all()

    def _reload(self, ticket: int) -> Outcome:
        sdnotify.reloading()
        started_at, started = time.time(), time.monotonic()
        try:
            message = self._apply()
            successful = True
        except (ConfigError, ReloadError) as exc:
            message, successful = "; ".join(str(exc).splitlines()), False
        except Exception as exc:  # a bug while applying: say so, keep running what runs
            log.exception("config reload failed unexpectedly")
            message, successful = f"{self._path}: cannot apply the change: {exc}", False
        finished = time.time()
        outcome = Outcome(
            ticket, successful, message, started_at, round(time.monotonic() - started, 3), finished
        )
        self._record(outcome)
        sdnotify.ready()
        return outcome

    def _apply(self) -> str:
        new = self._load(self._path)
        change = diff(self._target.config, new)
        restart = change.restart_needed()
        if restart:
            raise ReloadError(
                f"{self._path}: {', '.join(restart)}: changed, which only a restart applies "
                "(systemctl restart edgewatch); nothing was changed"
            )
        if not change.empty:
            self._target.apply(new, change)
        return change.summary()

    def _record(self, outcome: Outcome) -> None:
        if outcome.successful:
            log.info("config reloaded from %s in %.1f s: %s", self._path, outcome.seconds, outcome.message)
            self._metrics.succeeded(outcome.finished)
            if self._failing:
                self._failing = False
                self._alert("resolved", f"config reloaded from {self._path}", outcome.finished)
        else:
            log.error("config reload failed, the running config stays: %s", outcome.message)
            self._metrics.failed()
            self._failing = True
            self._alert("firing", f"config reload failed: {outcome.message}", outcome.finished)
        self._write_status(outcome)

    def _alert(self, state: AlertState, message: str, at: float) -> None:
        alert = Alert(ALERT_TYPE, "", message, "warning", state, at)
        for listener in self._listeners():
            try:
                listener.on_alert(alert)
            except Exception:
                log.exception("delivering alert %s to %s failed", ALERT_TYPE, type(listener).__name__)

    def _write_status(self, outcome: Outcome) -> None:
        """`edgewatch reload` waits for this file to name a reload that finished after its signal."""
        if self._status_file is None:
            return
        body = {**outcome.as_dict(), "pid": os.getpid()}
        temporary = self._status_file.with_name(self._status_file.name + ".tmp")
        try:
            temporary.write_text(json.dumps(body) + "\n")
            os.replace(temporary, self._status_file)
        except OSError as exc:
            log.warning("cannot write the reload status %s: %s", self._status_file, exc.strerror)
