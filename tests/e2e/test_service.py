"""The service's own promises: sinks added from outside, every sink closed within the shutdown budget even
when one hangs or fails, and every long-lived thread watched by /healthz."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest

from daemon.frames import FrameResult
from daemon.model.session import Model
from daemon.service import Service
from daemon.sink import Sink
from tests.support.daemon import free_port, wait_until
from tests.support.edge import PhotoCamera, edge_config


class Recording(Sink):
    """Notes what the service asked of it, in order."""

    def __init__(self, name: str) -> None:
        self.name = name  # type: ignore[misc]
        self.calls: list[str] = []
        self.results: list[FrameResult] = []

    def start(self) -> None:
        self.calls.append("start")

    def handle(self, result: FrameResult) -> None:
        self.results.append(result)

    def flush(self) -> None:
        self.calls.append("flush")

    def close(self, timeout: float) -> None:
        self.calls.append("close")


class Hanging(Recording):
    """A sink whose close never returns, as one blocked on a dead connection would."""

    def __init__(self) -> None:
        super().__init__("hanging")
        self.release = threading.Event()

    def close(self, timeout: float) -> None:
        self.calls.append("close")
        self.release.wait()


class Failing(Recording):
    def __init__(self) -> None:
        super().__init__("failing")

    def flush(self) -> None:
        raise OSError("disk gone")


def test_extra_sinks_get_results_and_every_sink_closes_though_one_hangs(
    tmp_path: Path, demo_model: Path, model: Model, caplog: pytest.LogCaptureFixture
) -> None:
    config = edge_config(tmp_path, demo_model, {"kitchen": "coffee.png"}, "http://127.0.0.1:9")
    before, hanging, failing, after = Recording("before"), Hanging(), Failing(), Recording("after")
    service = Service(
        config,
        model,
        camera_factory=PhotoCamera,
        extra_sinks=[before, hanging, failing, after],
        shutdown_budget=3.0,
    )
    service.start()
    try:
        wait_until(lambda: len(after.results) >= 3, 30, message="results reaching the extra sinks")
        assert [r.camera_id for r in before.results[:3]] == ["kitchen"] * 3
        assert before.calls == ["start"] and after.calls == ["start"]
    finally:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="edgewatch"):
            exit_code = service.shutdown()
        took = time.monotonic() - started
        hanging.release.set()
    assert exit_code == 0
    assert took < 3.0 + 2.5  # the budget, and the second a sink is given to honour its own timeout
    assert before.calls == ["start", "flush", "close"]
    assert after.calls == ["start", "flush", "close"]  # closed though the sinks before it hung and failed
    assert failing.calls == ["start", "close"]
    messages = [record.getMessage() for record in caplog.records]
    assert any("sink hanging did not close within" in message for message in messages)
    assert any("sink failing failed to flush: disk gone" in message for message in messages)


def test_healthz_names_every_long_lived_thread(tmp_path: Path, demo_model: Path, model: Model) -> None:
    config = edge_config(tmp_path, demo_model, {"kitchen": "coffee.png"}, "http://127.0.0.1:9")
    service = Service(config, model, camera_factory=PhotoCamera, shutdown_budget=10.0)
    service.start()
    try:
        healthy, detail = service.health()
        assert healthy
        assert set(detail["threads"]) == {
            "inference",
            "events",
            "dispatcher",
            "alerts",
            "camera-kitchen",
            "progress",
            "monitoring-windows",
            "roboflow-uploader",
            "history",
            "api",
        }
        assert all(detail["threads"].values())
    finally:
        service.shutdown()


class SlowToStart(Recording):
    """A sink whose start takes a second, as opening a large spool can."""

    def start(self) -> None:
        super().start()
        threading.Event().wait(1.0)


def test_healthz_asked_during_start_answers_200_once_every_thread_runs(
    tmp_path: Path, demo_model: Path, model: Model
) -> None:
    config = edge_config(tmp_path, demo_model, {"kitchen": "coffee.png"}, "http://127.0.0.1:9")
    port = free_port()
    metrics = config.metrics.model_copy(update={"enabled": True, "host": "127.0.0.1", "port": port})
    config = config.model_copy(update={"metrics": metrics})
    service = Service(
        config, model, camera_factory=PhotoCamera, extra_sinks=[SlowToStart("slow")], shutdown_budget=10.0
    )
    try:
        # a probe that arrives while the daemon starts (the port is bound, nothing serves it yet)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as probe:
            probe.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
            service.start()
            response = b""
            while chunk := probe.recv(65536):
                response += chunk
        status = response.split(b"\r\n", 1)[0]
        body = json.loads(response.split(b"\r\n\r\n", 1)[1])
        assert status.endswith(b" 200 OK"), (status, body["threads"])
        assert body["healthy"] is True and all(body["threads"].values())
    finally:
        assert service.shutdown() == 0


def test_the_sinks_after_the_events_thread_see_track_ids_and_no_frames(
    tmp_path: Path, demo_model: Path, model: Model
) -> None:
    config = edge_config(tmp_path, demo_model, {"kitchen": "coffee.png"}, "http://127.0.0.1:9")
    config = config.model_copy(update={"cameras": [config.cameras[0].model_copy(update={"track": True})]})
    after = Recording("after")
    service = Service(config, model, camera_factory=PhotoCamera, extra_sinks=[after], shutdown_budget=10.0)
    service.start()
    try:
        wait_until(
            lambda: any(
                result.detections.tracker_id is not None and (result.detections.tracker_id >= 0).any()
                for result in list(after.results)
            ),
            30,
            message="a tracked object reaching the sinks after the events thread",
        )
        # the events thread keeps the newest frame for the live view and lets go of it in the result
        assert service.sinks.events.live.jpeg("kitchen") is not None
        assert all(result.image is None for result in list(after.results))
    finally:
        assert service.shutdown() == 0
