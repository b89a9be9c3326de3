"""A real RTSP camera: gst-rtsp-server (tests/support/rtsp_server.py, system Python) on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import free_port

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


class RtspServer:
    def __init__(self, video: Path, port: int, mount: str = "/cam") -> None:
        self.video = video
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}{mount}"
        self._mount = mount
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30) -> None:
        self._proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--mount", self._mount, str(self.video)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()  # blocks until READY, or the process dies with its message
        if line.strip() != "READY":
            rest = self._proc.stdout.read() if self._proc.poll() is not None else ""
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line}{rest}")
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait(10)
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def rtsp_server(mjpeg_clips: dict[str, Path]) -> Iterator[RtspServer]:
    """An RTSP camera looping the coffee clip (a cup) at 10 fps; `.stop()` kills it, `.start()` revives it."""
    if not (Path(SYSTEM_PYTHON).exists() and shutil.which("gst-launch-1.0")):
        pytest.fail("gst-rtsp-server is missing: scripts/setup --test installs it")
    server = RtspServer(mjpeg_clips["coffee"], free_port())
    server.start()
    yield server
    server.stop()
