"""Vision Events: the sink, its spool and uploader, against a local server speaking the endpoints strictly."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import supervision as sv
from prometheus_client import CollectorRegistry, generate_latest

from daemon.alerts.alert import Alert
from daemon.config import load_config
from daemon.demo import STREET_PHOTO, photo_path, write_moving_clip
from daemon.frames import FrameResult
from daemon.roboflow.spool import read_items
from daemon.roboflow.vision_events import VisionEventsSink, jpeg_size
from tests.e2e.test_cli import camera_block, daemon_config
from tests.e2e.test_events import PATH as STREET_VISIT
from tests.e2e.test_events import ZONES as STREET_ZONES
from tests.support.daemon import REPO, free_port, run_cli, wait_until
from tests.support.proxy import ForwardProxy
from tests.support.vision_events import config_toml, make_event, snapshot_jpeg
from tests.support.vision_events_server import VisionEventsServer

KEY = "rf_VE_SECRET_9f8e7d"


@pytest.fixture
def server(vision_events_server: VisionEventsServer) -> VisionEventsServer:
    vision_events_server.api_key = KEY
    return vision_events_server


@pytest.fixture
def sinks():
    made: list[VisionEventsSink] = []

    def make(config_path: Path, snapshots: dict[str, bytes] | None = None, start: bool = True,
             **kwargs: Any) -> VisionEventsSink:
        """`start=False`: the test spools first and starts the sink itself, so that what is sent in one
        go does not depend on how fast the uploader is."""
        registry = CollectorRegistry()
        options = {"backoff_base": 0.05, "backoff_max": 0.2, **kwargs}
        sink = VisionEventsSink(load_config(config_path), registry, (snapshots or {}).get, **options)
        sink.registry = registry  # type: ignore[attr-defined]
        made.append(sink)
        if start:
            sink.start()
        return sink

    yield make
    for sink in made:
        sink.close(5)


def metric(sink: VisionEventsSink, name: str, **labels: str) -> float | None:
    return sink.registry.get_sample_value(name, labels)  # type: ignore[attr-defined]


def frame_result(camera: str, *classes: str) -> FrameResult:
    detections = sv.Detections(
        xyxy=np.tile(np.array([[1.0, 2.0, 30.0, 40.0]]), (len(classes), 1)),
        confidence=np.full(len(classes), 0.8, dtype=np.float32),
        class_id=np.arange(len(classes)),
        data={"class_name": np.array(classes, dtype=object)},
    )
    return FrameResult(camera, 1, time.time(), time.monotonic(), str(uuid.uuid4()), "coco/3", 640, 480,
                       detections, 0.02, 1)


def alert(kind: str = "camera_down", camera: str = "dock", state: str = "firing") -> Alert:
    message = f"camera {camera} offline for 31s" if camera else "Roboflow refuses the API key"
    return Alert(kind, camera, message, "critical", state, time.time())  # type: ignore[arg-type]


def test_zone_and_line_events_arrive_with_their_images_field_by_field(
    tmp_path: Path, server: VisionEventsServer, sinks
) -> None:
    full, half = snapshot_jpeg(), snapshot_jpeg(scale=0.5)
    sink = sinks(config_toml(tmp_path, server.url, KEY), {"s-full": full, "s-half": half}, start=False)
    enter = make_event(zone="walkway", snapshot_id="s-full", confidence=0.91, tracker_id=7)
    cross = make_event(kind="cross", zone=None, line="door", direction="in", snapshot_id="s-half",
                       class_name="car", box=(200.0, 100.0, 400.0, 300.0), tracker_id=8)
    sink.on_event(enter)
    sink.on_event(cross)
    sink.on_event(make_event(kind="start", snapshot_id="s-full"))  # object lifecycle: not a Vision Event
    sink.flush()
    sink.start()
    server.wait_for(lambda: len(server.events) == 2, message="both events")

    endpoints = [(r.endpoint, r.status) for r in server.requests]
    assert endpoints == [("upload", 201), ("upload", 201), ("batch", 201)]  # images first, one batch
    assert all(r.headers["Authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert server.recorded("upload")[0].body["name"] == f"{enter.id}.jpg"

    sent = server.events[enter.id]
    assert list(sent) == ["eventId", "eventType", "useCaseId", "timestamp", "eventData", "deviceId",
                          "streamId", "customMetadata", "images"]
    assert (sent["eventType"], sent["useCaseId"], sent["deviceId"], sent["streamId"]) == (
        "custom", "dock-safety", "edge-test", "dock")
    assert datetime.fromisoformat(sent["timestamp"]).timestamp() == pytest.approx(enter.timestamp, abs=0.001)
    assert sent["customMetadata"] == {"location": "plant-a", "line no": "1"}
    assert sent["eventData"] == {
        "source": "edgewatch", "kind": "zone_enter", "zone": "walkway", "count": 1, "classes": {"person": 1},
        "confidence": 0.91, "trackerIds": [7], "edgewatchEventIds": [enter.id],
    }
    (image,) = sent["images"]
    assert server.images[image["sourceId"]] == full  # the snapshot, byte for byte
    assert image["objectDetections"] == [  # the box by its centre, in the frame's pixels
        {"class": "person", "x": 200.0, "y": 200.0, "width": 200.0, "height": 300.0, "confidence": 0.91}
    ]

    crossed = server.events[cross.id]
    assert crossed["eventData"]["kind"] == "line_cross"
    assert (crossed["eventData"]["line"], crossed["eventData"]["direction"]) == ("door", "in")
    (image,) = crossed["images"]
    assert jpeg_size(server.images[image["sourceId"]]) == (300, 200)
    # the snapshot is half the frame's size: so is the box
    assert image["objectDetections"] == [
        {"class": "car", "x": 150.0, "y": 100.0, "width": 100.0, "height": 100.0, "confidence": 0.8}
    ]
    wait_until(lambda: sink.spool.depth == 0, 5, message="an empty spool")
    assert metric(sink, "edgewatch_vision_events_total", result="sent") == 2
    assert metric(sink, "edgewatch_vision_events_images_total", result="uploaded") == 2


def test_a_burst_becomes_one_event_with_its_count_and_best_snapshot(
    tmp_path: Path, server: VisionEventsServer, sinks
) -> None:
    snapshots = {"low": snapshot_jpeg(scale=0.25), "best": snapshot_jpeg(scale=0.5)}
    sink = sinks(config_toml(tmp_path, server.url, KEY, coalesce=1.0), snapshots)
    burst = [
        make_event(confidence=0.5, snapshot_id="low", tracker_id=1),
        make_event(confidence=0.95, snapshot_id=None, tracker_id=2),  # best, but no snapshot yet
        make_event(confidence=0.7, snapshot_id="best", tracker_id=3, class_name="forklift"),
        make_event(confidence=0.6, snapshot_id="low", tracker_id=4),
    ]
    for event in burst:
        sink.on_event(event)
    sink.on_event(make_event(kind="exit", dwell=12.5))  # another kind: its own event
    sink.on_event(make_event(camera="gate"))  # another camera: its own event
    server.wait_for(lambda: len(server.events) == 3, message="three events, after the coalescing window")

    sent = server.events[burst[0].id]  # the burst goes under its first event's id
    data = sent["eventData"]
    assert (data["count"], data["classes"]) == (4, {"forklift": 1, "person": 3})
    assert data["trackerIds"] == [1, 2, 3, 4]
    assert data["edgewatchEventIds"] == [event.id for event in burst]
    assert "until" in data
    assert server.images[sent["images"][0]["sourceId"]] == snapshots["best"]
    assert sent["images"][0]["objectDetections"][0]["class"] == "forklift"
    exits = [e for e in server.events.values() if e["eventData"]["kind"] == "zone_exit"]
    assert exits[0]["eventData"]["maxDwellSeconds"] == 12.5 and "images" not in exits[0]
    assert metric(sink, "edgewatch_vision_events_coalesced_total") == 3
    assert metric(sink, "edgewatch_vision_events_images_total", result="missing") == 0


def test_alerts_become_safety_alerts_and_counts_inventory_counts(
    tmp_path: Path, server: VisionEventsServer, sinks
) -> None:
    config = config_toml(tmp_path, server.url, KEY, send=["alerts", "counts"], counts_interval=1)
    sink = sinks(config)
    sink.on_alert(alert())
    sink.on_alert(alert())  # the same alert again within the window: one event, count 2
    sink.on_alert(alert(state="resolved"))
    sink.on_alert(alert("monitoring_unauthorized", camera=""))
    sink.on_event(make_event())  # zones not in `send`
    server.wait_for(lambda: sum(e["eventType"] == "safety_alert" for e in server.events.values()) == 2,
                    message="two safety alerts")
    alerts = {
        e["eventData"]["alertType"]: e for e in server.events.values() if e["eventType"] == "safety_alert"
    }
    assert alerts["camera_down"]["eventData"] == {
        "alertType": "camera_down", "severity": "critical", "description": "camera dock offline for 31s",
        "count": 2,
    }
    assert alerts["camera_down"]["streamId"] == "dock"
    assert "streamId" not in alerts["monitoring_unauthorized"]  # device-wide
    uuid.UUID(alerts["camera_down"]["eventId"], version=4)

    sink.handle(frame_result("dock", "cup", "cup", "person"))
    counts = server.wait_for(
        lambda: [e for e in server.events.values() if e["eventType"] == "inventory_count"],
        message="an inventory count",
    )
    assert counts[0]["streamId"] == "dock"
    assert counts[0]["eventData"] == {"itemCount": 3, "classes": {"cup": 2, "person": 1}}
    assert not [e for e in server.events.values() if e["eventType"] == "custom"]


def test_offline_for_a_while_then_caught_up_oldest_first_in_batches_of_100(
    tmp_path: Path, server: VisionEventsServer, sinks
) -> None:
    server.fail("batch", 503, times=None)
    sink = sinks(config_toml(tmp_path, server.url, KEY, images=False))
    fed = []
    for n in range(250):
        event = make_event(kind="cross", zone=None, line="door", direction="in", tracker_id=n)
        sink.on_event(event)
        sink.flush()
        fed.append(event.id)
    server.wait_for(lambda: len(server.recorded("batch", 503)) >= 2, message="failing attempts")
    assert sink.spool.depth == 250
    first_try = server.recorded("batch", 503)[0].body["events"]  # settled before the second try was made
    assert metric(sink, "edgewatch_vision_events_total", result="retried") >= len(first_try)
    server.clear()
    server.fail("batch", 429, times=1, retry_after="1")
    server.wait_for(lambda: len(server.events) == 250, message="all 250 events")

    accepted = server.recorded("batch", 201)
    assert [len(r.body["events"]) for r in accepted] == [100, 100, 50]
    assert server.arrivals == fed  # oldest first, each exactly once
    throttled = server.recorded("batch", 429)[0]
    assert accepted[0].at - throttled.at >= 1.0  # Retry-After, not the 0.05 s backoff
    wait_until(lambda: sink.spool.depth == 0, 5, message="an empty spool")
    assert metric(sink, "edgewatch_vision_events_total", result="sent") == 250
    assert metric(sink, "edgewatch_vision_events_spool_depth") == 0


def test_a_refused_event_is_found_and_dropped_the_rest_delivered(
    tmp_path: Path, server: VisionEventsServer, sinks, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail("batch", 400, times=1)
    server.fail("single", 422, times=1)
    server.fail("upload", 413, times=1)
    sink = sinks(config_toml(tmp_path, server.url, KEY), {"s": snapshot_jpeg()}, start=False)
    fed = []
    for line in ("a", "b", "c"):
        event = make_event(kind="cross", zone=None, line=line, direction="out", snapshot_id="s")
        sink.on_event(event)
        fed.append(event.id)
    sink.flush()
    sink.start()
    server.wait_for(lambda: len(server.events) == 2, message="the two good events")
    assert server.arrivals == fed[1:]
    assert [(r.endpoint, r.status) for r in server.requests] == [
        ("upload", 413), ("upload", 201), ("upload", 201),  # the first image refused: its event goes without
        ("batch", 400), ("single", 422), ("single", 201), ("single", 201),
    ]
    assert "images" in server.events[fed[1]]
    wait_until(lambda: sink.spool.depth == 0, 5, message="an empty spool")
    assert metric(sink, "edgewatch_vision_events_total", result="failed") == 1
    assert metric(sink, "edgewatch_vision_events_images_total", result="failed") == 1
    assert any(r.levelno == logging.ERROR and "HTTP 422" in r.getMessage() for r in caplog.records)


def test_a_refused_key_stops_sending_keeps_the_spool_and_never_shows_the_key(
    tmp_path: Path, server: VisionEventsServer, sinks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server.api_key = "another-key"
    sink = sinks(config_toml(tmp_path, server.url, KEY), {"s": snapshot_jpeg()}, unauthorized_retry=0.5)
    event = make_event(snapshot_id="s")
    sink.on_event(event)
    sink.flush()
    server.wait_for(lambda: server.recorded("upload", 401), message="a refused upload")
    wait_until(lambda: metric(sink, "edgewatch_vision_events_unauthorized") == 1, 5, message="the gauge")
    assert sink.uploader_state().unauthorized
    assert sink.spool.depth == 1
    assert any("refuses the API key" in r.getMessage() and "Vision Events" in r.getMessage()
               for r in caplog.records)
    server.api_key = KEY
    server.wait_for(lambda: event.id in server.events, message="the event once the key is accepted")
    wait_until(lambda: metric(sink, "edgewatch_vision_events_unauthorized") == 0, 5, message="gauge reset")

    spool_bytes = b"".join(p.read_bytes() for p in sink.spool.path.parent.glob("vision-events.db*"))
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    exposition = generate_latest(sink.registry).decode()  # type: ignore[attr-defined]
    for where, text in (("logs", logged), ("metrics", exposition), ("spool", spool_bytes.decode("latin-1"))):
        assert KEY not in text, where


def test_the_waiting_events_are_listed_exactly_as_they_are_sent(
    tmp_path: Path, server: VisionEventsServer, sinks
) -> None:
    server.fail("batch", 503, times=None)
    config = config_toml(tmp_path, server.url, KEY)
    sink = sinks(config, {"s": snapshot_jpeg()})
    event = make_event(snapshot_id="s")
    sink.on_event(event)
    sink.on_alert(alert())
    sink.flush()
    server.wait_for(lambda: server.recorded("batch", 503), message="a failed batch, after the upload")

    listed = run_cli(["vision-events", "-c", str(config), "--json"], cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [row["body"]["eventId"] for row in rows] == [event.id, rows[1]["body"]["eventId"]]
    assert rows[0]["image"]["state"] == "uploaded"
    text = run_cli(["vision-events", "-c", str(config)], cwd=tmp_path)
    assert f"custom {event.id}: zone_enter walkway x1 (person); image uploaded" in text.stdout
    assert "safety_alert" in text.stdout and "2 event(s) shown" in text.stdout

    server.clear()
    server.wait_for(lambda: len(server.events) == 2, message="both events")
    assert [server.events[row["body"]["eventId"]] for row in rows] == [row["body"] for row in rows]
    assert KEY not in listed.stdout + listed.stderr + text.stdout


def test_metadata_over_the_limits_is_a_config_error(tmp_path: Path) -> None:
    path = config_toml(tmp_path, "http://127.0.0.1:9", KEY)
    path.write_text(path.read_text().replace('"line no" = "1"', f'"line/no" = "1", note = "{"x" * 1001}"'))
    result = run_cli(["vision-events", "-c", str(path)], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any("cameras[0].metadata.line/no: a Vision Events metadata name" in line for line in lines)
    assert any("cameras[0].metadata.note: a Vision Events metadata value is at most 1000" in line
               for line in lines)
    assert "Traceback" not in result.stderr

    path.write_text(config_toml(tmp_path, "http://127.0.0.1:9", KEY).read_text().replace(
        'use_case = "dock-safety"', 'use_case = ""'))
    result = run_cli(["vision-events", "-c", str(path)], cwd=tmp_path)
    assert result.returncode == 2
    assert "vision_events: use_case is required when enabled" in result.stderr


def test_killed_between_image_upload_and_event_send_resends_the_same_event_and_image(
    tmp_path: Path, server: VisionEventsServer
) -> None:
    server.fail("batch", 503, times=None)
    config = config_toml(tmp_path, server.url, KEY)
    snapshots = tmp_path / "snapshots"
    snapshots.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "tests.support.vision_events", str(config), str(snapshots)]
    first = subprocess.Popen([*command, "3"], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    try:
        server.wait_for(lambda: len(server.recorded("upload", 201)) == 3 and server.recorded("batch", 503),
                        message="three images uploaded and a batch tried")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        fed = [line.split()[1] for line in first.stdout.read().splitlines() if line.startswith("fed ")]
    finally:
        if first.poll() is None:
            first.kill()
    tried = server.recorded("batch", 503)[-1].body["events"]
    assert [e["eventId"] for e in tried] == fed

    server.clear()
    second = subprocess.Popen([*command, "0"], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    try:
        server.wait_for(lambda: len(server.events) == 3, timeout=30, message="the three events after restart")
        spool = tmp_path / "state" / "vision-events.db"
        wait_until(lambda: read_items(spool) == [], 10, message="an empty spool")
    finally:
        second.kill()
        second.wait(10)
    assert len(server.recorded("upload")) == 3  # no image uploaded twice
    assert server.arrivals == fed  # each exactly once, under the eventId it was made with
    for before in tried:
        after = server.events[before["eventId"]]
        assert after == before  # same eventId, same sourceId, same everything
        assert jpeg_size(server.images[after["images"][0]["sourceId"]]) is not None


def test_the_daemon_sends_an_edge_alert_as_a_vision_event_through_the_proxy(
    tmp_path: Path, server: VisionEventsServer, start_daemon, demo_model: Path, forward_proxy: ForwardProxy
) -> None:
    metrics_port = free_port()
    config = config_toml(tmp_path, server.url, KEY).read_text()
    config = config.replace('path = "model.onnx"', f'path = "{demo_model}"\ncache_dir = "{tmp_path}"')
    config = config.replace('url = "dock.mp4"', f'url = "rtsp://127.0.0.1:{free_port()}/none"')
    config = config.replace(
        "[mqtt]", f"[alerts]\ncamera_down_after = 1\n\n[metrics]\nport = {metrics_port}\n\n[mqtt]"
    )
    daemon = start_daemon(config, "--log-level", "DEBUG", env={"HTTP_PROXY": forward_proxy.url()})
    server.wait_for(lambda: [e for e in server.events.values() if e["eventType"] == "safety_alert"],
                    timeout=60, message="the camera_down alert as a Vision Event")
    sent = next(e for e in server.events.values() if e["eventType"] == "safety_alert")
    assert (sent["eventData"]["alertType"], sent["streamId"]) == ("camera_down", "dock")
    assert sent["customMetadata"] == {"location": "plant-a", "line no": "1"}

    def sent_total() -> float:
        page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        found = re.search(r'^edgewatch_vision_events_total\{result="sent"\} (\S+)$', page, re.MULTILINE)
        assert found, "no edgewatch_vision_events_total on /metrics"
        return float(found.group(1))

    wait_until(lambda: sent_total() >= 1, 10, message="the sent counter on /metrics")
    assert daemon.terminate() == 0
    assert KEY not in daemon.output()
    assert {r.target for r in forward_proxy.requests} == {f"{server.url}/vision-events/batch"}


def test_the_metrics_pass_promtool(tmp_path: Path, server: VisionEventsServer, sinks) -> None:
    sink = sinks(config_toml(tmp_path, server.url, KEY))
    sink.on_alert(alert())
    server.wait_for(lambda: server.events, message="one event")
    exposition = generate_latest(sink.registry)  # type: ignore[attr-defined]
    checked = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_daemon_raises_the_refused_key_alert_for_vision_events(
    tmp_path: Path, server: VisionEventsServer, start_daemon, demo_model: Path
) -> None:
    server.api_key = "the-key-roboflow-knows"
    metrics_port = free_port()
    config = config_toml(tmp_path, server.url, KEY).read_text()
    config = config.replace('path = "model.onnx"', f'path = "{demo_model}"\ncache_dir = "{tmp_path}"')
    config = config.replace('url = "dock.mp4"', f'url = "rtsp://127.0.0.1:{free_port()}/none"')
    config = config.replace(
        "[mqtt]", f"[alerts]\ncamera_down_after = 1\n\n[metrics]\nport = {metrics_port}\n\n[mqtt]"
    )
    daemon = start_daemon(config)

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as answer:
                return answer.read().decode()
        except OSError:  # not listening yet
            return ""

    wait_until(lambda: 'edgewatch_alert_active{camera="",type="monitoring_unauthorized"} 1.0' in scrape(),
               30, message="the monitoring_unauthorized alert")
    page = scrape()
    assert "edgewatch_vision_events_unauthorized 1.0" in page
    assert re.search(r"^edgewatch_vision_events_spool_depth [1-9]", page, re.MULTILINE)  # kept
    assert daemon.terminate() == 0
    assert "Vision Events uploads stopped" in daemon.output() and KEY not in daemon.output()
    assert server.events == {}


# --- the real daemon: a tracked camera whose motorbike crosses a line into a zone --------------------------


def street_daemon_config(tmp_path: Path, demo_model: Path, server: VisionEventsServer) -> str:
    clip = write_moving_clip(photo_path(STREET_PHOTO), tmp_path / "street.mp4", STREET_VISIT, fps=10)
    cameras = camera_block("street", clip, fps=5) + 'metadata = { site = "north gate" }\n' + STREET_ZONES
    vision_events = (
        f'[vision_events]\nenabled = true\napi_key = "{KEY}"\napi_url = "{server.url}"\n'
        'use_case = "parking"\nsend = ["zones", "lines"]\ncoalesce = 0.5\ntimeout = 3\n'
    )
    return daemon_config(demo_model, cameras, tmp_path, extra=vision_events)


def custom_events(server: VisionEventsServer, kind: str) -> list[dict[str, Any]]:
    return [e for e in server.events.values() if e["eventData"].get("kind") == kind]


def test_zone_and_line_events_of_the_daemon_arrive_with_their_snapshots(
    tmp_path: Path, server: VisionEventsServer, start_daemon, demo_model: Path
) -> None:
    daemon = start_daemon(street_daemon_config(tmp_path, demo_model, server))
    server.wait_for(lambda: custom_events(server, "zone_loiter"), timeout=90, message="a loiter Vision Event")
    (cross,) = custom_events(server, "line_cross")
    (enter,) = custom_events(server, "zone_enter")
    assert (cross["eventData"]["line"], cross["eventData"]["direction"]) == ("gate", "in")
    assert cross["eventData"]["classes"] == {"motorbike": 1} and enter["eventData"]["zone"] == "parking"
    for event in (cross, enter):
        assert (event["eventType"], event["useCaseId"], event["deviceId"], event["streamId"]) == (
            "custom", "parking", "test-box", "street")
        assert event["customMetadata"] == {"site": "north gate"}
        assert event["eventData"]["edgewatchEventIds"] == [event["eventId"]]  # the edgewatch event's own id
        (image,) = event["images"]
        jpeg = server.images[image["sourceId"]]
        width, height = jpeg_size(jpeg)  # type: ignore[misc]
        (box,) = image["objectDetections"]
        assert box["class"] == "motorbike" and box["confidence"] > 0.5
        # the box (by its centre, in the snapshot's pixels) lies within the snapshot
        assert box["x"] - box["width"] / 2 > 0 and box["x"] + box["width"] / 2 <= width + 1
        assert box["y"] - box["height"] / 2 > 0 and box["y"] + box["height"] / 2 <= height + 1
    assert daemon.terminate() == 0


def test_the_daemon_killed_between_image_upload_and_event_send_resends_the_same_event(
    tmp_path: Path, server: VisionEventsServer, start_daemon, demo_model: Path
) -> None:
    server.fail("batch", 503, times=None)
    config = street_daemon_config(tmp_path, demo_model, server)
    first = start_daemon(config)
    tried = server.wait_for(
        lambda: [r for r in server.recorded("batch", 503) if any(e.get("images") for e in r.body["events"])],
        timeout=90, message="a batch carrying an uploaded image, refused",
    )[-1].body["events"]
    first.proc.send_signal(signal.SIGKILL)
    first.wait(10)
    uploaded_before = {r.body["name"] for r in server.recorded("upload", 201)}

    server.clear()
    second = start_daemon(config)
    server.wait_for(lambda: all(e["eventId"] in server.events for e in tried), timeout=60,
                    message="every event of the refused batch, after the restart")
    for before in tried:
        assert server.events[before["eventId"]] == before  # same eventId, same sourceId, same body
        if before.get("images"):
            assert f"{before['eventId']}.jpg" in uploaded_before
    names = [r.body["name"] for r in server.recorded("upload")]
    assert all(names.count(f"{e['eventId']}.jpg") == 1 for e in tried)  # no image uploaded twice
    assert second.terminate() == 0
