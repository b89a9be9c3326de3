"""The real daemon with a tracked camera whose clip (made from a real photo) moves a motorbike across the
`gate` line into the `parking` zone, where it stays: what the broker, /metrics, the page's JSON and a real
browser show."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from daemon.demo import STREET_PATH, STREET_PHOTO, MovingPath, photo_path, write_moving_clip
from tests.e2e.test_cli import camera_block, check, daemon_config, sample, scrape
from tests.e2e.test_daemon_observability import mqtt_block
from tests.support.browser import ARTIFACTS, chromium
from tests.support.daemon import free_port, wait_until
from tests.support.mosquitto import Subscriber

PREFIX = "edgewatch/test-box"
EVENTS = f"{PREFIX}/street/events"
ZONE = f"{PREFIX}/street/zones/parking"
LINE = f"{PREFIX}/street/lines/gate"
# the motorbike rides for 4 s, then stays in the zone for the rest of the clip (the test is done by then)
PATH = MovingPath(start=STREET_PATH.start, end=STREET_PATH.end, travel=STREET_PATH.travel, rest=40)

ZONES = """
track = true
[[cameras.zones]]
name = "parking"
polygon = [[0.55, 0.5], [1.0, 0.5], [1.0, 1.0], [0.55, 1.0]]
classes = ["motorbike"]
loiter_after = 2
[[cameras.lines]]
name = "gate"
start = [0.5, 0.3]
end = [0.5, 1.0]
classes = ["motorbike"]
"""


def get_json(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{path}", timeout=10) as response:
        return json.loads(response.read())


def get_bytes(port: int, path: str) -> tuple[int, str, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/{path}", timeout=10) as response:
        return response.status, response.headers["Content-Type"], response.read()


def motorbike_events(subscriber: Subscriber) -> list[dict[str, Any]]:
    """The motorbike's events (the model also sees a faint 'person' in the photo now and then: its own
    short tracks start and end, but it is not a class of the zone or the line)."""
    return [event for event in map(json.loads, subscriber.payloads(EVENTS)) if event["class"] == "motorbike"]


def events_of(subscriber: Subscriber, kind: str) -> list[dict[str, Any]]:
    return [event for event in motorbike_events(subscriber) if event["type"] == kind]


def test_a_crossing_and_a_visit_reach_mqtt_metrics_the_page_and_the_browser(
    tmp_path: Path, start_daemon, demo_model: Path, mosquitto
) -> None:
    clip = write_moving_clip(photo_path(STREET_PHOTO), tmp_path / "street.mp4", PATH, fps=10)
    metrics_port, api_port = free_port(), free_port()
    cameras = camera_block("street", clip, fps=5) + ZONES
    extra = f'[api]\nenabled = true\nhost = "127.0.0.1"\nport = {api_port}\n'
    text = daemon_config(demo_model, cameras, tmp_path, metrics_port=metrics_port, extra=extra)
    text = text.replace("[mqtt]\nenabled = false\n", mqtt_block(mosquitto) + "homeassistant = true\n")
    subscriber = Subscriber(mosquitto, "#")
    daemon = start_daemon(text)

    # MQTT: the object's start, its crossing (in), its entering the zone, then loitering there
    subscriber.wait_for(lambda: events_of(subscriber, "loiter"), timeout=60, what="a loiter event")
    kinds = [event["type"] for event in motorbike_events(subscriber)]
    assert kinds[0] == "start" and kinds.index("cross") < kinds.index("enter") < kinds.index("loiter")
    (cross,) = events_of(subscriber, "cross")
    assert (cross["line"], cross["direction"], cross["class"], cross["camera"]) == (
        "gate",
        "in",
        "motorbike",
        "street",
    )
    assert {
        "id",
        "tracker_id",
        "timestamp",
        "first_seen",
        "last_seen",
        "confidence",
        "box",
        "image",
        "zones",
        "snapshot_id",
    } <= set(cross)
    assert cross["image"] == {"width": 640, "height": 480} and cross["confidence"] > 0.5
    (loiter,) = events_of(subscriber, "loiter")
    assert loiter["zone"] == "parking" and loiter["zones"] == ["parking"] and loiter["dwell_seconds"] >= 2
    assert all(m.qos == 1 and not m.retain for m in subscriber.on(EVENTS))
    assert {event["tracker_id"] for event in motorbike_events(subscriber)} == {cross["tracker_id"]}
    assert all(
        event["type"] in ("start", "update", "end")
        for event in map(json.loads, subscriber.payloads(EVENTS))
        if event["class"] != "motorbike"
    )
    # retained occupancy and line totals
    subscriber.wait_payload(ZONE, b'{"motorbike":1}')
    subscriber.wait_payload(LINE, b'{"in":1,"out":0}')
    late = Subscriber(mosquitto, f"{PREFIX}/street/+/+")
    late.wait_for(lambda: late.on(ZONE) and late.on(LINE), what="retained zone and line")
    assert late.on(ZONE)[-1].retain and late.on(ZONE)[-1].payload == b'{"motorbike":1}'
    assert late.on(LINE)[-1].payload == b'{"in":1,"out":0}'
    late.close()
    # the per-frame detections carry the track id
    detections = [json.loads(p) for p in subscriber.payloads(f"{PREFIX}/street/detections")]
    tracked = [p for message in detections for p in message["predictions"] if p["class"] == "motorbike"]
    assert tracked and tracked[-1]["tracker_id"] == cross["tracker_id"]
    # Home Assistant: a zone occupancy sensor and in/out counters of the line
    zone_config = json.loads(
        subscriber.payloads("homeassistant/sensor/edgewatch_test-box/street_zone_parking/config")[-1]
    )
    assert zone_config["state_topic"] == ZONE
    line_in = json.loads(
        subscriber.payloads("homeassistant/sensor/edgewatch_test-box/street_line_gate_in/config")[-1]
    )
    assert line_in["state_topic"] == LINE and line_in["state_class"] == "total_increasing"

    # Prometheus
    metrics = scrape(metrics_port)
    labels = {"camera": "street", "line": "gate", "class": "motorbike"}
    assert sample(metrics, "edgewatch_line_crossings_total", direction="in", **labels) == 1
    assert sample(metrics, "edgewatch_line_crossings_total", 0.0, direction="out", **labels) == 0
    assert (
        sample(metrics, "edgewatch_zone_occupancy", camera="street", zone="parking", **{"class": "motorbike"})
        == 1
    )
    assert sample(metrics, "edgewatch_active_tracks", camera="street") >= 1
    assert sample(metrics, "edgewatch_events_total", camera="street", type="loiter") == 1

    # the page's JSON: recent events, zones and lines, the snapshot and the live view
    wait_until(lambda: any(e["type"] == "loiter" for e in get_json(api_port, "events")), 10, message="events")
    events = get_json(api_port, "events?camera=street")
    assert [e["id"] for e in events if e["type"] == "cross"] == [cross["id"]]
    (street,) = [camera for camera in get_json(api_port, "zones") if camera["camera"] == "street"]
    assert street["zones"][0]["occupancy"] == {"motorbike": 1}
    assert (street["lines"][0]["in"], street["lines"][0]["out"]) == (1, 0)
    status, kind, jpeg = get_bytes(api_port, f"snapshots/{cross['snapshot_id']}.jpg")
    assert (status, kind) == (200, "image/jpeg")
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (480, 640, 3)
    status, kind, jpeg = get_bytes(api_port, "cameras/street/latest.jpg")
    assert (status, kind) == (200, "image/jpeg")
    for missing in (
        "cameras/nowhere/latest.jpg",
        "snapshots/..%2F..%2Fconfig.toml.jpg",
        "snapshots/x/crop.jpg",
    ):
        with pytest.raises(urllib.error.HTTPError) as refused:
            get_bytes(api_port, missing)
        assert refused.value.code == 404

    # a real browser: the live view shows, the events list has the crossing with its thumbnail
    with chromium(tmp_path / "profile") as browser:
        page = browser.page
        page.goto(f"http://127.0.0.1:{api_port}/")
        page.wait_for_selector("body[data-loaded=true]", timeout=15000)
        page.wait_for_function(
            "() => { const img = document.querySelector('#live figure[data-camera=street] img');"
            " return img && img.complete && img.naturalWidth === 640; }",
            timeout=15000,
        )
        caption = page.inner_text("#live figure[data-camera=street] figcaption")
        assert "zone parking: 1 motorbike" in caption and "line gate: 1 in · 0 out" in caption
        row = page.locator(f"#events tr[data-event-id='{cross['id']}']")
        assert "gate (in)" in row.inner_text()
        page.wait_for_function(
            f"() => {{ const img = document.querySelector(\"#events tr[data-event-id='{cross['id']}'] img\");"
            " return img && img.complete && img.naturalWidth > 0; }",
            timeout=10000,
        )
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "events-page.png"), full_page=True)
        row.click()
        page.wait_for_function(
            "() => { const img = document.querySelector('#snapshot-image');"
            " return document.querySelector('#snapshot').open && img.complete && img.naturalWidth === 640; }",
            timeout=10000,
        )
        assert browser.problems == []

    # a clean stop ends the open track: it leaves the zone, which is empty again
    assert daemon.terminate() == 0
    subscriber.wait_for(lambda: events_of(subscriber, "end"), what="the end event")
    (exit_,) = [
        event for event in events_of(subscriber, "exit") if event["tracker_id"] == cross["tracker_id"]
    ]
    assert exit_["zone"] == "parking" and exit_["dwell_seconds"] >= 2
    subscriber.wait_payload(ZONE, b"{}")
    assert "event cross camera=street motorbike" in daemon.output()


def test_a_zone_class_the_model_does_not_know_is_a_config_error(tmp_path: Path, demo_model: Path) -> None:
    cameras = camera_block("street", tmp_path / "street.mp4") + ZONES.replace(
        '["motorbike"]', '["forklift"]', 1
    )
    result = check(tmp_path, daemon_config(demo_model, cameras, tmp_path))
    assert result.returncode == 2
    where = tmp_path / "config.toml"
    problem = f"edgewatch: {where}: cameras[0].zones[0].classes: the model has no class 'forklift'"
    assert result.stderr.strip().splitlines()[-1] == problem  # after the model's own INFO line
    assert "Traceback" not in result.stdout + result.stderr
