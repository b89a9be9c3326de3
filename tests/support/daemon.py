"""Run the real daemon (`python -m daemon ...`) as a child process and watch what it prints."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "models" / "yolov3-tiny-coco.onnx"


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A port free now and not handed out before in this run. The kernel may offer a just-closed port again,
    and two servers of one daemon given the same port would fail its start."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


def wait_until(condition, timeout: float, interval: float = 0.05, message: str = "condition"):
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


class DaemonProcess:
    """`edgewatch <args>` in a child process; stdout and stderr merged and collected line by line."""

    def __init__(
        self, args: list[str], cwd: Path, env: dict[str, str] | None = None, prefix: list[str] | None = None
    ) -> None:
        """`prefix`: a command that runs the daemon (e.g. `unshare -m ... sh -c '...; exec "$@"' sh`); it must
        exec it, so that the child's pid is the daemon's."""
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.args = args
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "daemon", *args],
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._lines: list[str] = []
        self._new_line = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._new_line:
                self._lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._new_line:
            return list(self._lines)

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_output(self, pattern: str, timeout: float = 30) -> re.Match[str]:
        """Wait for a line matching the regex `pattern`; fail with the output so far if it never comes."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new_line:
            while True:
                for line in self._lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self._lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no line matching {pattern!r} within {timeout}s "
                        f"(exit code {self.proc.poll()}); output:\n" + "\n".join(self._lines[-60:])
                    )
                self._new_line.wait(min(remaining, 0.5))

    def wait(self, timeout: float = 30) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the daemon did not exit within {timeout}s; output:\n" + "\n".join(self.lines[-60:])
            ) from None
        self._reader.join(timeout=5)
        return code

    def terminate(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> int:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.wait(10)


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120):
    """Run `edgewatch <args>` to completion; returns the CompletedProcess (stdout+stderr text)."""
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def start_daemon(tmp_path: Path):
    """Start `edgewatch run -c <config>` with the given TOML text; every process is stopped at teardown."""
    started: list[DaemonProcess] = []

    def start(
        config_text: str,
        *extra_args: str,
        env: dict[str, str] | None = None,
        name: str = "config.toml",
        prefix: list[str] | None = None,
    ) -> DaemonProcess:
        config = tmp_path / name
        config.write_text(config_text)
        daemon = DaemonProcess(["run", "-c", str(config), *extra_args], cwd=tmp_path, env=env, prefix=prefix)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.kill()


@pytest.fixture(scope="session")
def demo_model() -> Path:
    if not DEMO_MODEL.is_file():
        pytest.fail(f"{DEMO_MODEL} is missing: build it with `python models/build.py` (scripts/setup does)")
    return DEMO_MODEL
