"""A removed camera's metric series go, from every metric group; the other cameras' stay."""

from __future__ import annotations

from prometheus_client import generate_latest

from daemon.metrics import Metrics
from daemon.reload.series import remove_camera_series


def test_every_series_of_the_removed_camera_goes_and_only_those() -> None:
    metrics = Metrics()
    metrics.init_cameras(["kitchen", "street"])
    metrics.detections.detections.labels("street", "car").inc()
    metrics.alerts.alert_active.labels("camera_down", "street").set(1)
    metrics.alerts.alert_active.labels("upload_failing", "").set(0)
    before = generate_latest(metrics.registry).decode()
    assert 'camera="street"' in before and 'camera="kitchen"' in before

    remove_camera_series(metrics.registry, "street")

    after = generate_latest(metrics.registry).decode()
    assert 'camera="street"' not in after
    kitchen = [line for line in before.splitlines() if 'camera="kitchen"' in line]
    assert kitchen and all(line in after.splitlines() for line in kitchen)
    assert 'alert_active{camera="",type="upload_failing"}' in after
