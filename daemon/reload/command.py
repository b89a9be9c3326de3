"""`edgewatch reload`: ask the running daemon to reload its config and wait for the outcome.

For systemd's `ExecReload=` (so that `systemctl reload edgewatch` fails when the reload fails) and for
people. It checks the file first (an invalid one: the same line as `edgewatch check`, exit 2, the daemon
is not disturbed), then sends SIGHUP to the daemon and waits until the daemon's status file names a reload
that started after the signal: exit 0 if it was applied, 1 if it failed (the line says why) or no answer
came in time.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED = 0, 1
POLL = 0.1  # seconds between looks at the status file


def status_path(state_dir: Path) -> Path:
    return state_dir / "reload-status.json"


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        status = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def request_reload(status_file: Path, pid: int | None, timeout: float) -> int:
    if pid is None:
        status = read_status(status_file)
        if status is None or not isinstance(status.get("pid"), int):
            print(f"edgewatch: no running daemon found ({status_file} names none); give --pid",
                  file=sys.stderr)
            return EXIT_FAILED
        pid = status["pid"]
    sent = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"edgewatch: no running daemon with pid {pid}", file=sys.stderr)
        return EXIT_FAILED
    except PermissionError:
        print(f"edgewatch: not allowed to signal pid {pid} (run as the daemon's user)", file=sys.stderr)
        return EXIT_FAILED
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(status_file)
        if status is not None and status.get("pid") == pid and status.get("started", 0) >= sent:
            if status.get("successful"):
                print(f"reloaded: {status.get('message', '')}")
                return EXIT_OK
            print(f"edgewatch: reload failed, the running config stays: {status.get('message', '')}",
                  file=sys.stderr)
            return EXIT_FAILED
        time.sleep(POLL)
    print(f"edgewatch: no reload outcome from pid {pid} within {timeout:.0f}s (see its log)", file=sys.stderr)
    return EXIT_FAILED
