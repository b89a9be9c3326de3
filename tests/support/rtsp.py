"""A real RTSP camera: gst-rtsp-server (tests/support/rtsp_server.py, under the system Python) on loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import free_port, wait_until

SERVER = Path(__file__).with_name("rtsp_server.py")
SYSTEM_PYTHON = "/usr/bin/python3"


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class RtspServer:
    """Loops `video` at `url`; `stop()` kills the server (as a crash would), `start()` brings it back on the
    same port, `restart()` does both; `pause()` freezes it with connections open (a stalled camera) until
    `resume()`."""

    def __init__(self, video: Path, port: int, mount: str = "/cam") -> None:
        self.video = video
        self.port = port
        self.mount = mount
        self.url = f"rtsp://127.0.0.1:{port}{mount}"
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._output: list[str] = []

    def start(self, timeout: float = 30) -> None:
        if self._proc is not None:
            return
        proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVER), "--port", str(self.port), "--mount", self.mount, str(self.video)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._proc, self._output = proc, []
        ready = threading.Event()  # set on READY, or when the server exits without it

        def read() -> None:  # keeps draining, so that a chatty server never blocks on a full pipe
            assert proc.stdout is not None
            for line in proc.stdout:
                self._output.append(line.rstrip("\n"))
                if line.strip() == "READY":
                    ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, name="rtsp-server-output", daemon=True)
        self._reader.start()
        if not ready.wait(timeout) or "READY" not in self._output:
            self.stop()
            raise RuntimeError("RTSP server did not start:\n" + "\n".join(self._output))
        wait_until(lambda: _accepts(self.port), timeout=timeout, message=f"RTSP server port {self.port}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self._proc is not None, "the server is not running"
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None, "the server is not running"
        self._proc.send_signal(signal.SIGCONT)


@pytest.fixture
def rtsp_server(mjpeg_clips: dict[str, Path]) -> Iterator[RtspServer]:
    """A running RTSP camera looping the coffee scene (a cup), 640x480 H.264 at 25 fps."""
    if not Path(SYSTEM_PYTHON).exists():
        pytest.fail("RTSP tests need /usr/bin/python3 with python3-gi and gir1.2-gst-rtsp-server-1.0")
    server = RtspServer(mjpeg_clips["coffee"], free_port())
    server.start()
    yield server
    server.stop()
