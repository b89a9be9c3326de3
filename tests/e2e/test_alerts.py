"""Edge alerts: each condition fires once when it starts and resolves once after it has been clear for the
hold time; what comes out is the callback's dicts, the alert_active metric, the log and (through the real
publisher) the MQTT alerts topic."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from daemon.alerts.alert import Alert
from daemon.alerts.engine import AlertEngine, ConfidenceTracker, confidence_drops, inference_stalled
from daemon.config import AlertsConfig
from daemon.metrics import Metrics
from tests.support.results import car, frame_result, person

CONFIG = AlertsConfig(
    camera_down_after=30,
    confidence_window=10,
    confidence_baseline=60,
    confidence_drop_ratio=0.7,
    upload_failing_after=300,
    inference_stalled_after=30,
)
HOLD = 20.0  # clear_for used below


class Device:
    """The state the providers read, changed by the test as time (`now`, monotonic seconds) goes on."""

    def __init__(self, cameras: tuple[str, ...] = ("cam-1",)) -> None:
        self.cameras = {camera: (False, 0.0) for camera in cameras}
        self.progress: float | None = None
        self.failing_since: float | None = None
        self.unauthorized = False

    def camera(self, camera: str, online: bool, now: float) -> None:
        self.cameras[camera] = (online, now)


class Harness:
    def __init__(self, device: Device, tracker: ConfidenceTracker | None = None, **kwargs: Any) -> None:
        self.metrics = Metrics()
        self.alerts: list[dict[str, Any]] = []
        self.engine = AlertEngine(
            CONFIG,
            self.metrics.alerts,
            listeners=[self],
            cameras=lambda: dict(device.cameras),
            inference_progress=lambda: device.progress,
            upload_failing_since=lambda: device.failing_since,
            monitoring_unauthorized=lambda: device.unauthorized,
            confidence=tracker,
            clear_for=HOLD,
            wall_clock=lambda: 1_700_000_000.0,
            **kwargs,
        )


    def on_alert(self, alert: Alert) -> None:
        self.alerts.append(alert.payload())

    def tick(self, *times: float) -> list[tuple[str, str, str]]:
        """Tick at each time; the (type, camera, state) of the alerts sent meanwhile."""
        before = len(self.alerts)
        for now in times:
            self.engine.tick(now)
        return [(a["type"], a.get("camera", ""), a["state"]) for a in self.alerts[before:]]

    def active(self, kind: str, camera: str = "") -> float | None:
        return self.metrics.registry.get_sample_value(
            "edgewatch_alert_active", {"type": kind, "camera": camera}
        )


def test_camera_down_fires_once_and_resolves_once_after_the_hold(caplog):
    caplog.set_level(logging.INFO, logger="edgewatch.alerts")
    device = Device(("cam-1", "cam-2"))
    device.camera("cam-2", True, 0)
    device.progress = 1000.0  # inference keeps up throughout
    h = Harness(device)
    assert h.active("camera_down", "cam-1") == 0 and h.active("inference_stalled") == 0

    assert h.tick(10, 29) == []
    assert h.tick(31, 40, 50) == [("camera_down", "cam-1", "firing")]
    assert h.active("camera_down", "cam-1") == 1 and h.active("camera_down", "cam-2") == 0
    assert h.alerts[0] == {
        "type": "camera_down",
        "camera": "cam-1",
        "message": "camera cam-1 offline for 31s",
        "timestamp": "2023-11-14T22:13:20.000+00:00",
        "severity": "critical",
        "state": "firing",
    }
    assert h.engine.active()[0]["type"] == "camera_down"

    device.camera("cam-1", True, 60)
    assert h.tick(61, 70) == []
    device.camera("cam-1", False, 75)  # back for less than the hold, then down again: the same alert
    assert h.tick(75, 90, 120) == []
    device.camera("cam-1", True, 125)
    assert h.tick(126, 145) == []
    assert h.tick(146) == [("camera_down", "cam-1", "resolved")]
    assert h.active("camera_down", "cam-1") == 0 and h.engine.active() == []
    assert h.tick(200, 300) == []

    records = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "edgewatch.alerts"]
    assert records == [
        ("WARNING", "alert camera_down firing: camera cam-1 offline for 31s"),
        ("INFO", "alert camera_down resolved: camera cam-1 is delivering frames again"),
    ]


def test_inference_stalled_counts_only_while_a_camera_is_online():
    device = Device()
    h = Harness(device)
    assert h.tick(100) == [("camera_down", "cam-1", "firing")]  # offline cameras: no stall alert
    device.camera("cam-1", True, 100)  # comes online with no inference progress ever
    assert h.tick(101, 125) == [("camera_down", "cam-1", "resolved")]
    device.progress = 110.0
    assert h.tick(139) == []
    assert h.tick(141) == [("inference_stalled", "", "firing")]
    assert h.alerts[-1]["severity"] == "critical" and "camera" not in h.alerts[-1]
    assert h.active("inference_stalled") == 1
    device.progress = 150.0
    assert h.tick(150, 169) == []
    assert h.tick(170) == [("inference_stalled", "", "resolved")]
    assert h.active("inference_stalled") == 0


def test_upload_failing_and_monitoring_unauthorized():
    device = Device()
    device.camera("cam-1", True, 0)
    device.progress = 0.0
    h = Harness(device)
    device.failing_since = 100.0
    device.unauthorized = True
    assert h.tick(1) == [("monitoring_unauthorized", "", "firing")]
    assert h.alerts[-1]["severity"] == "critical"
    device.progress = 399.0
    assert h.tick(399) == []
    assert h.tick(401) == [("upload_failing", "", "firing")]
    assert h.alerts[-1]["severity"] == "warning"
    assert "uploads failing for 301s" in h.alerts[-1]["message"]
    assert h.active("upload_failing") == 1 and h.active("monitoring_unauthorized") == 1
    device.failing_since = None  # one upload went through...
    device.unauthorized = False
    device.progress = 500.0
    assert h.tick(402, 410) == []
    device.failing_since = 410.0  # ...and the next failed: the same streak of trouble, no new alert
    assert h.tick(411, 420) == []
    device.failing_since = None
    assert h.tick(421) == []
    assert h.tick(422) == [("monitoring_unauthorized", "", "resolved")]  # clear since 402
    assert h.tick(440) == []
    assert h.tick(441) == [("upload_failing", "", "resolved")]
    assert h.active("upload_failing") == 0 and h.active("monitoring_unauthorized") == 0


def feed(tracker: ConfidenceTracker, start: int, end: int, confidence: float, camera: str = "cam-1") -> None:
    """One frame per second in [start, end) with two people (and a car that keeps its confidence)."""
    for second in range(start, end):
        boxes = [person(confidence), person(confidence, x=300), car(0.8)]
        tracker.handle(frame_result(camera, second, boxes, captured_mono=second + 0.5))


def test_confidence_drop_fires_on_the_class_that_dropped_with_hysteresis():
    tracker = ConfidenceTracker(CONFIG.confidence_window, CONFIG.confidence_baseline)
    device = Device()
    device.camera("cam-1", True, 0)
    h = Harness(device, tracker, min_window_samples=10, min_baseline_samples=30)

    feed(tracker, 0, 60, 0.9)
    device.progress = 60.0
    assert h.tick(60) == []
    feed(tracker, 60, 70, 0.5)  # 0.5 / 0.9 = 0.56 < 0.7
    device.progress = 70.0
    assert h.tick(70) == [("confidence_drop", "cam-1", "firing")]
    # the car kept its confidence: only the person is named
    assert h.alerts[-1]["message"] == "confidence dropped on camera cam-1: person 0.50 vs baseline 0.89"
    assert h.active("confidence_drop", "cam-1") == 1

    feed(tracker, 70, 90, 0.65)  # 0.78-0.83 of a baseline lowered by the dip: above 0.7 but below 0.85
    device.progress = 90.0
    assert h.tick(80, 90) == []
    feed(tracker, 90, 130, 0.9)
    device.progress = 130.0
    assert h.tick(100, 119) == []  # clear since 100
    assert h.tick(120) == [("confidence_drop", "cam-1", "resolved")]
    assert h.active("confidence_drop", "cam-1") == 0


def test_confidence_drop_needs_enough_samples_in_window_and_baseline():
    tracker = ConfidenceTracker(CONFIG.confidence_window, CONFIG.confidence_baseline)
    feed(tracker, 0, 60, 0.9)
    feed(tracker, 60, 70, 0.3)
    stats = tracker.snapshot(70)
    person_stats = stats[("cam-1", "person")]
    # window: seconds 61-70 (70 has no frame yet); baseline: the 60 s before
    assert (person_stats.window_samples, person_stats.baseline_samples) == (18, 120)
    assert person_stats.window_mean == pytest.approx(0.3)
    assert person_stats.baseline_mean == pytest.approx((118 * 0.9 + 2 * 0.3) / 120)
    assert list(confidence_drops(stats, 0.7, min_window=18, min_baseline=120)) == ["cam-1"]
    assert confidence_drops(stats, 0.7, min_window=19, min_baseline=120) == {}
    assert confidence_drops(stats, 0.7, min_window=18, min_baseline=121) == {}


@pytest.mark.parametrize(
    ("cameras", "progress", "expected"),
    [
        ({"a": (False, 0.0)}, None, False),  # nothing online: nothing to infer
        ({"a": (True, 90.0)}, None, False),  # online for 10 s only
        ({"a": (True, 50.0)}, None, True),
        ({"a": (True, 0.0), "b": (True, 95.0)}, 80.0, False),  # progress 20 s ago
        ({"a": (True, 0.0)}, 60.0, True),
    ],
)
def test_inference_stalled_condition(cameras, progress, expected):
    assert bool(inference_stalled(cameras, progress, 100.0, 30.0)) is expected


def test_engine_thread_ticks_and_closes_promptly(mosquitto, mqtt_subscriber, mqtt_publisher):
    live = mqtt_subscriber(mosquitto)
    publisher = mqtt_publisher(mosquitto)
    metrics = Metrics()
    since = time.monotonic()
    engine = AlertEngine(
        AlertsConfig(camera_down_after=0.2),
        metrics.alerts,
        listeners=[publisher],
        cameras=lambda: {"cam-1": (False, since)},
        inference_progress=lambda: None,
        interval=0.05,
    )
    engine.start()
    try:
        message = live.wait_for(lambda: live.on("edgewatch/edge-01/alerts"), what="an alert")[0]
    finally:
        started = time.monotonic()
        engine.close()
        assert time.monotonic() - started < 1
    alert = json.loads(message.payload)
    assert message.qos == 1 and not message.retain
    assert set(alert) == {"type", "camera", "message", "timestamp", "severity", "state"}
    assert (alert["type"], alert["camera"], alert["severity"], alert["state"]) == (
        "camera_down", "cam-1", "critical", "firing"
    )  # fmt: skip
    assert (
        metrics.registry.get_sample_value(
            "edgewatch_alert_active", {"type": "camera_down", "camera": "cam-1"}
        )
        == 1
    )


def test_a_reload_changes_thresholds_and_a_removed_camera_s_alert_resolves_at_once():
    device = Device(("cam-1", "cam-2"))
    device.progress = 1000.0
    h = Harness(device)
    h.engine.set_config(CONFIG.model_copy(update={"camera_down_after": 5}))
    assert sorted(h.tick(6)) == [("camera_down", "cam-1", "firing"), ("camera_down", "cam-2", "firing")]
    del device.cameras["cam-2"]  # removed from the config by a reload
    h.engine.forget_camera("cam-2")
    assert h.alerts[-1]["message"] == "camera cam-2 was removed from the config"
    assert (h.alerts[-1]["type"], h.alerts[-1]["state"]) == ("camera_down", "resolved")
    assert h.tick(7, 60) == []  # no second resolution after the hold
    assert [a["type"] for a in h.engine.active()] == ["camera_down"]


def test_new_confidence_windows_start_a_fresh_history():
    tracker = ConfidenceTracker(window=10, baseline=60)
    tracker.handle(frame_result("cam-1", 1, [person(0.9)], captured_mono=100.0))
    assert tracker.snapshot(100.0)
    tracker.set_windows(20, 120)
    assert tracker.snapshot(100.0) == {}
    tracker.handle(frame_result("cam-1", 2, [person(0.8)], captured_mono=101.0))
    tracker.forget_camera("cam-1")
    assert tracker.snapshot(101.0) == {}
