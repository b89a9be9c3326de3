"""The reload thread: serialised requests, outcomes, metrics, alert, status file and sd_notify messages."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from daemon.alerts.alert import Alert
from daemon.config import Config, load_config
from daemon.reload.diff import ConfigDiff
from daemon.reload.metrics import ReloadMetrics
from daemon.reload.reloader import Reloader, ReloadError
from tests.support.daemon import wait_until

GOOD = """
[device]
id = "edge-01"
[model]
path = "m.onnx"
[[cameras]]
id = "a"
url = "rtsp://h/a"
"""


class RecordingTarget:
    """A service stand-in that records what it is asked to apply; `gate` holds an apply until set."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.applied: list[ConfigDiff] = []
        self.active = 0
        self.overlapped = False
        self.gate = threading.Event()
        self.gate.set()
        self.refuse: str | None = None

    def apply(self, new: Config, change: ConfigDiff) -> None:
        self.active += 1
        self.overlapped |= self.active > 1
        self.gate.wait(10)
        self.active -= 1
        if self.refuse:
            raise ReloadError(self.refuse)
        self.applied.append(change)
        self.config = new


@pytest.fixture
def setup(tmp_path: Path):
    path = tmp_path / "config.toml"
    path.write_text(GOOD)
    registry = CollectorRegistry()
    target = RecordingTarget(load_config(path))
    alerts: list[Alert] = []

    class Listener:
        def on_alert(self, alert: Alert) -> None:
            alerts.append(alert)

    reloader = Reloader(path, target, ReloadMetrics(registry, loaded_at=1000.0),
                        listeners=lambda: [Listener()], status_file=tmp_path / "reload-status.json")
    reloader.start()
    yield path, registry, target, alerts, reloader
    reloader.close(5)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_a_valid_change_applies_and_is_recorded(setup) -> None:
    path, registry, target, alerts, reloader = setup
    path.write_text(GOOD + '[[cameras]]\nid = "b"\nurl = "rtsp://h/b"\n')
    before = time.time()
    outcome = reloader.wait(reloader.request(), 10)
    assert outcome is not None and outcome.successful and outcome.message == "cameras +b"
    assert [camera.id for camera in target.config.cameras] == ["a", "b"]
    assert sample(registry, "edgewatch_config_last_reload_successful") == 1
    assert sample(registry, "edgewatch_config_last_reload_success_timestamp_seconds") >= before
    assert sample(registry, "edgewatch_config_reloads_total", result="success") == 1
    status = json.loads((path.parent / "reload-status.json").read_text())
    assert status["successful"] and status["started"] >= before and status["message"] == "cameras +b"
    assert alerts == []


def test_an_invalid_file_changes_nothing_and_says_why_once(setup, caplog) -> None:
    path, registry, target, alerts, reloader = setup
    path.write_text(GOOD.replace('url = "rtsp://h/a"', 'url = "rtsp://h/a"\nfps = -1\nspeed = 2'))
    with caplog.at_level("INFO", logger="edgewatch.reload"):
        outcome = reloader.wait(reloader.request(), 10)
    assert outcome is not None and not outcome.successful
    assert outcome.message == (
        f"{path}: cameras[0].fps: Input should be greater than 0 (got -1); "
        f"{path}: cameras[0].speed: unknown key"
    )
    assert target.applied == []
    assert sample(registry, "edgewatch_config_last_reload_successful") == 0
    assert sample(registry, "edgewatch_config_last_reload_success_timestamp_seconds") == 1000.0
    assert [r.getMessage() for r in caplog.records] == [
        f"config reload failed, the running config stays: {outcome.message}"
    ]
    assert [(a.type, a.state, a.severity) for a in alerts] == [("config_reload_failed", "firing", "warning")]
    assert outcome.message in alerts[0].message
    assert not json.loads((path.parent / "reload-status.json").read_text())["successful"]

    path.write_text(GOOD)  # fixed: the next reload succeeds (no change) and resolves the alert
    assert reloader.wait(reloader.request(), 10).successful
    assert sample(registry, "edgewatch_config_last_reload_successful") == 1
    assert [(a.type, a.state) for a in alerts][-1] == ("config_reload_failed", "resolved")


def test_a_change_only_a_restart_applies_is_refused_whole(setup) -> None:
    path, _, target, _, reloader = setup
    path.write_text(GOOD.replace("edge-01", "edge-02") + '[[cameras]]\nid = "b"\nurl = "rtsp://h/b"\n')
    outcome = reloader.wait(reloader.request(), 10)
    assert not outcome.successful and "device.id: changed, which only a restart applies" in outcome.message
    assert target.applied == [] and len(target.config.cameras) == 1


def test_a_part_that_fails_to_apply_fails_the_reload(setup) -> None:
    path, registry, target, _, reloader = setup
    target.refuse = f"{path}: model.path: /n.onnx: no such model file"
    path.write_text(GOOD.replace("m.onnx", "n.onnx"))
    outcome = reloader.wait(reloader.request(), 10)
    assert not outcome.successful and outcome.message == target.refuse
    assert sample(registry, "edgewatch_config_reloads_total", result="failure") == 1


def test_requests_during_a_reload_are_queued_into_one_more_never_interleaved(setup) -> None:
    path, _, target, _, reloader = setup
    target.gate.clear()
    path.write_text(GOOD.replace("rtsp://h/a", "rtsp://h/a1"))
    first = reloader.request()
    wait_until(lambda: target.active == 1, 5, message="the first reload to start applying")
    path.write_text(GOOD.replace("rtsp://h/a", "rtsp://h/a2"))
    queued = [reloader.request() for _ in range(5)]
    assert set(queued) == {first + 1}
    target.gate.set()
    assert reloader.wait(first, 10).successful and reloader.wait(first + 1, 10).successful
    assert not target.overlapped and len(target.applied) == 2
    assert target.config.cameras[0].url == "rtsp://h/a2"


def test_close_waits_for_the_reload_in_progress_and_refuses_new_ones(setup) -> None:
    path, _, target, _, reloader = setup
    target.gate.clear()
    path.write_text(GOOD.replace("rtsp://h/a", "rtsp://h/a1"))
    ticket = reloader.request()
    wait_until(lambda: target.active == 1, 5, message="the reload to start applying")
    closing = threading.Thread(target=reloader.close, args=(10,))
    closing.start()
    closing.join(0.3)
    assert closing.is_alive()  # shutdown waits for the reload
    target.gate.set()
    closing.join(10)
    assert not closing.is_alive() and reloader.wait(ticket, 1).successful
    assert reloader.request() is None
    assert not (path.parent / "reload-status.json").exists()  # no pid left for `edgewatch reload`


def test_systemd_hears_reloading_with_a_monotonic_stamp_then_ready(setup, tmp_path, monkeypatch) -> None:
    path, _, _, _, reloader = setup
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(address)
        server.settimeout(10)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        path.write_text("[model\n")  # also on failure: systemd must leave the reloading state
        reloader.request()
        first = server.recv(4096).decode().split("\n")
        second = server.recv(4096).decode()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert first[0] == "RELOADING=1" and first[1].startswith("MONOTONIC_USEC=")
    assert before <= int(first[1].removeprefix("MONOTONIC_USEC=")) <= after
    assert second == "READY=1"
