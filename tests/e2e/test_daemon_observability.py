"""The real daemon, as a broker subscriber and a Prometheus server see it: availability with Last Will, camera
status following a real RTSP camera, detections and counts payloads, the metrics page under promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.test_cli import camera_block, daemon_config, sample, scrape
from tests.support.daemon import free_port, wait_until
from tests.support.mosquitto import Subscriber

PREFIX = "edgewatch/test-box"


def mqtt_block(broker) -> str:
    return f'[mqtt]\nenabled = true\nhost = "{broker.host}"\nport = {broker.port}\nkeepalive = 5\n'


def config_with_mqtt(
    model: Path, cameras: str, tmp_path: Path, broker, port: int = 0, extra: str = ""
) -> str:
    text = daemon_config(model, cameras, tmp_path, metrics_port=port, extra=extra)
    return text.replace("[mqtt]\nenabled = false\n", mqtt_block(broker))


def test_mqtt_contract_through_the_daemon(
    tmp_path, start_daemon, demo_model, demo_clips, rtsp_server, mosquitto
):
    subscriber = Subscriber(mosquitto, f"{PREFIX}/#")
    cameras = camera_block("door", rtsp_server.url, fps=5, stall_timeout=2) + camera_block(
        "kitchen", demo_clips["coffee"], loop=True
    )
    text = config_with_mqtt(
        demo_model, cameras, tmp_path, mosquitto, extra="[alerts]\ncamera_down_after = 2\n"
    )
    daemon = start_daemon(text)

    subscriber.wait_payload(f"{PREFIX}/availability", b"online", timeout=60)
    subscriber.wait_payload(f"{PREFIX}/door/status", b"online", timeout=30)
    subscriber.wait_payload(f"{PREFIX}/kitchen/status", b"online", timeout=30)

    def cup_frame():
        for payload in subscriber.payloads(f"{PREFIX}/kitchen/detections"):
            message = json.loads(payload)
            if any(p["class"] == "cup" for p in message["predictions"]):
                return message
        return None

    message = subscriber.wait_for(cup_frame, timeout=30, what="a detections message with a cup")
    assert set(message) == {
        "camera",
        "frame_id",
        "timestamp",
        "inference_id",
        "model_id",
        "image",
        "predictions",
    }
    assert message["camera"] == "kitchen" and message["model_id"] == "coco/3"
    assert message["image"] == {"width": 640, "height": 480}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", message["timestamp"])
    cup = next(p for p in message["predictions"] if p["class"] == "cup")
    assert set(cup) == {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id"}
    assert 0 < cup["x"] < 640 and 0 < cup["y"] < 480 and cup["class_id"] == 41 and cup["confidence"] >= 0.25
    counts = subscriber.wait_for(lambda: subscriber.payloads(f"{PREFIX}/kitchen/counts"), what="counts")
    assert json.loads(counts[-1]).get("cup", 0) >= 1  # type: ignore[index]
    late = Subscriber(mosquitto, f"{PREFIX}/kitchen/counts")  # retained: a newcomer gets the latest at once
    late.wait_for(lambda: late.on(f"{PREFIX}/kitchen/counts"), timeout=10, what="retained counts")
    assert late.on(f"{PREFIX}/kitchen/counts")[0].retain
    late.close()
    assert not any(m.retain for m in subscriber.on(f"{PREFIX}/kitchen/detections"))

    rtsp_server.stop()
    subscriber.wait_payload(f"{PREFIX}/door/status", b"offline", timeout=20)

    def alert(state: str):
        for payload in subscriber.payloads(f"{PREFIX}/alerts"):
            body = json.loads(payload)
            if body["type"] == "camera_down" and body.get("camera") == "door" and body["state"] == state:
                return body
        return None

    firing = subscriber.wait_for(lambda: alert("firing"), timeout=20, what="the camera_down alert")
    assert firing["severity"] == "critical"  # type: ignore[index]
    rtsp_server.start()
    online = len([p for p in subscriber.payloads(f"{PREFIX}/door/status") if p == b"online"])
    subscriber.wait_for(
        lambda: len([p for p in subscriber.payloads(f"{PREFIX}/door/status") if p == b"online"]) > online,
        timeout=45,
        what="the door camera back online",
    )
    assert daemon.terminate() == 0
    subscriber.wait_payload(f"{PREFIX}/availability", b"offline", timeout=10)
    assert subscriber.payloads(f"{PREFIX}/availability")[-1] == b"offline"
    subscriber.close()


def test_last_will_when_the_daemon_is_killed(tmp_path, start_daemon, demo_model, demo_clips, mosquitto):
    subscriber = Subscriber(mosquitto, f"{PREFIX}/availability")
    text = config_with_mqtt(
        demo_model, camera_block("kitchen", demo_clips["coffee"], loop=True), tmp_path, mosquitto
    )
    daemon = start_daemon(text)
    subscriber.wait_payload(f"{PREFIX}/availability", b"online", timeout=60)
    daemon.kill()
    # keepalive 5 s: the broker notices within 1.5 x keepalive and publishes the will
    subscriber.wait_payload(f"{PREFIX}/availability", b"offline", timeout=20)
    late = Subscriber(mosquitto, f"{PREFIX}/availability")  # retained: a newcomer sees it too
    late.wait_payload(f"{PREFIX}/availability", b"offline", timeout=10)
    subscriber.close()
    late.close()


def test_metrics_page_passes_promtool_and_moves(tmp_path, start_daemon, demo_model, demo_clips) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/setup --test installs Debian's prometheus package")
    port = free_port()
    cameras = camera_block("kitchen", demo_clips["coffee"], loop=True) + camera_block(
        "gone", f"rtsp://127.0.0.1:{free_port()}/nothing", stall_timeout=1
    )
    daemon = start_daemon(daemon_config(demo_model, cameras, tmp_path, metrics_port=port))
    daemon.wait_for_output(r"edgewatch .* running", timeout=60)
    first = scrape(port)
    for metric in (
        "edgewatch_frames_captured_total",
        "edgewatch_frames_inferred_total",
        "edgewatch_camera_reconnects_total",
    ):
        assert sample(first, metric, camera="gone") == 0  # every camera's series exists from the start
    wait_until(
        lambda: (
            sample(scrape(port), "edgewatch_detections_total", 0, camera="kitchen", **{"class": "cup"}) > 0
        ),
        timeout=30,
        message="cup detections counted",
    )
    text = scrape(port)
    assert sample(text, "edgewatch_frames_inferred_total", camera="kitchen") > 0
    assert sample(text, "edgewatch_camera_up", camera="kitchen") == 1
    assert sample(text, "edgewatch_camera_up", camera="gone") == 0
    assert sample(text, "edgewatch_frame_latency_seconds_count", camera="kitchen") > 0
    assert sample(text, "edgewatch_inference_duration_seconds_count") > 0
    # where the CPU goes: the pipeline's threads by role (no session.run thread on a CPU), within the process
    wait_until(
        lambda: sample(scrape(port), "edgewatch_thread_cpu_seconds_total", thread="cameras") > 0,
        timeout=30,
        message="the camera threads' CPU time (10 ms clock ticks)",
    )
    text = scrape(port)
    threads = {
        role: sample(text, "edgewatch_thread_cpu_seconds_total", thread=role)
        for role in ("cameras", "inference", "inference-run", "events", "dispatcher")
    }
    assert threads["inference-run"] == 0 and threads["inference"] > 0, threads
    assert sum(threads.values()) <= sample(text, "process_cpu_seconds_total")
    assert sample(text, "process_resident_memory_bytes") > 100 * 2**20
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    labels = set(re.findall(r'(\w+)="([^"]*)"', text))
    values = {value for name, value in labels if name in ("camera", "class")}
    assert not any(
        "/" in value or "rtsp" in value or re.fullmatch(r"[0-9a-f-]{36}", value) for value in values
    )

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        health = json.loads(response.read())
    assert response.status == 200 and health["healthy"] is True
    assert health["cameras"] == {"kitchen": True, "gone": False}
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/nothing", timeout=5)
    assert missing.value.code == 404
    assert daemon.terminate() == 0
