"""MqttPublisher against a real Mosquitto: what subscribers see on the wire, across connects, outages,
broker restarts, a killed process, TLS and passwords."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from daemon.alerts.alert import Alert
from daemon.config import ConfigError, MqttConfig
from daemon.events.event import Event
from daemon.metrics import Metrics
from daemon.sinks.mqtt import MqttPublisher
from tests.support.daemon import REPO, wait_until
from tests.support.results import car, dispatch, frame_result, person

AVAILABILITY = "edgewatch/edge-01/availability"
STATUS = "edgewatch/edge-01/cam-1/status"
DETECTIONS = "edgewatch/edge-01/cam-1/detections"
COUNTS = "edgewatch/edge-01/cam-1/counts"
ALERTS = "edgewatch/edge-01/alerts"
EVENTS = "edgewatch/edge-01/cam-1/events"


def metric(metrics: Metrics, name: str) -> float:
    return metrics.registry.get_sample_value(name) or 0.0


def connected(metrics: Metrics) -> float:
    return metric(metrics, "edgewatch_mqtt_connected")


def dropped(metrics: Metrics) -> float:
    return metric(metrics, "edgewatch_mqtt_messages_dropped_total")


def changes(payloads: list[bytes]) -> list[bytes]:
    """`payloads` without consecutive repeats."""
    return [p for i, p in enumerate(payloads) if i == 0 or payloads[i - 1] != p]


def retained(broker, mqtt_subscriber, topic: str, timeout: float = 10):
    """What a subscriber arriving now gets on `topic`: the retained message, or None."""
    fresh = mqtt_subscriber(broker, topic)
    fresh.sync(timeout)
    messages = fresh.on(topic)
    assert all(m.retain for m in messages)
    return messages[-1] if messages else None


def test_availability_online_while_connected_offline_after_clean_close(
    mosquitto, mqtt_subscriber, mqtt_publisher
):
    metrics = Metrics()
    live = mqtt_subscriber(mosquitto)
    publisher = mqtt_publisher(mosquitto, metrics=metrics)

    assert live.wait_payload(AVAILABILITY, b"online").qos == 1
    wait_until(lambda: connected(metrics) == 1, 5, message="edgewatch_mqtt_connected 1")
    online = retained(mosquitto, mqtt_subscriber, AVAILABILITY)
    assert online is not None and online.payload == b"online" and online.qos == 1
    status = retained(mosquitto, mqtt_subscriber, STATUS)  # a camera is offline until capture says otherwise
    assert status is not None and status.payload == b"offline"

    publisher.on_camera_status("cam-1", True)  # both just before the stop: still delivered, before offline
    publisher.on_alert(Alert("test", "", "last words", "warning", "firing", 1_700_000_000.0))
    started = time.monotonic()
    publisher.close()
    assert time.monotonic() - started < 2
    live.sync()
    order = [(m.topic, m.payload) for m in live.messages if m.topic.startswith("edgewatch/")]
    assert order.index((STATUS, b"online")) < order.index((AVAILABILITY, b"offline"))
    assert [t for t, _ in order].index(ALERTS) < order.index((AVAILABILITY, b"offline"))
    # close() waited for the broker's acknowledgement: the retained value has already changed
    offline = retained(mosquitto, mqtt_subscriber, AVAILABILITY)
    assert offline is not None and offline.payload == b"offline"
    assert live.payloads(AVAILABILITY) == [b"online", b"offline"]
    assert connected(metrics) == 0
    assert "edgewatch-edge-01" in mosquitto.log()  # default client id


CHILD = """
import sys
from daemon.config import MqttConfig
from daemon.metrics import Metrics
from daemon.sinks.mqtt import MqttPublisher
config = MqttConfig(host=sys.argv[1], port=int(sys.argv[2]))
publisher = MqttPublisher(config, "edge-01", ["cam-1"], Metrics().mqtt)
publisher.start()
sys.stdin.read()
"""


def test_last_will_offline_when_the_process_is_killed(mosquitto, mqtt_subscriber):
    live = mqtt_subscriber(mosquitto)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mosquitto.host, str(mosquitto.port)], cwd=REPO, stdin=subprocess.PIPE
    )
    try:
        live.wait_payload(AVAILABILITY, b"online", timeout=20)
        child.kill()  # SIGKILL: no clean stop, no goodbye
        child.wait(10)
        live.wait_payload(AVAILABILITY, b"offline", timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(10)
    offline = retained(mosquitto, mqtt_subscriber, AVAILABILITY)
    assert offline is not None and offline.payload == b"offline"


def test_detections_counts_status_and_alert_payloads(mosquitto, mqtt_subscriber, mqtt_publisher):
    live = mqtt_subscriber(mosquitto)
    publisher = mqtt_publisher(mosquitto, cameras=("cam-1", "cam-2"))
    live.wait_payload(STATUS, b"offline")
    live.wait_payload("edgewatch/edge-01/cam-2/status", b"offline")

    publisher.on_camera_status("cam-1", True)
    live.wait_payload(STATUS, b"online")

    first = frame_result("cam-1", 7, [person(0.9), car(0.8), person(0.7, x=400)])
    dispatch(publisher, first)
    message = live.wait_for(lambda: live.on(DETECTIONS), what="detections")[0]
    assert message.qos == 0
    payload = json.loads(message.payload)
    detection_ids = list(first.detections.data["detection_id"])
    assert payload == {
        "camera": "cam-1",
        "frame_id": 7,
        "timestamp": "2023-11-14T22:13:20.250+00:00",
        "inference_id": first.inference_id,
        "model_id": "coco/3",
        "image": {"width": 640, "height": 480},
        "predictions": [
            {
                "x": 35.0,
                "y": 70.0,
                "width": 50.0,
                "height": 100.0,
                "confidence": 0.9,
                "class": "person",
                "class_id": 0,
                "detection_id": detection_ids[0],
            },
            {
                "x": 250.0,
                "y": 130.0,
                "width": 100.0,
                "height": 60.0,
                "confidence": 0.8,
                "class": "car",
                "class_id": 2,
                "detection_id": detection_ids[1],
            },
            {
                "x": 425.0,
                "y": 70.0,
                "width": 50.0,
                "height": 100.0,
                "confidence": 0.7,
                "class": "person",
                "class_id": 0,
                "detection_id": detection_ids[2],
            },
        ],
    }
    live.wait_payload(COUNTS, b'{"car":1,"person":2}')

    dispatch(publisher, frame_result("cam-1", 8, [car(0.6), person(0.5), person(0.4, x=300)]))  # same counts
    dispatch(publisher, frame_result("cam-1", 9, [person(0.9)]))
    live.wait_payload(COUNTS, b'{"person":1}')
    dispatch(publisher, frame_result("cam-1", 10, []))
    live.wait_payload(COUNTS, b"{}")
    assert live.payloads(COUNTS) == [b'{"car":1,"person":2}', b'{"person":1}', b"{}"]
    live.wait_for(lambda: len(live.on(DETECTIONS)) == 4, what="4 detection messages")
    assert json.loads(live.on(DETECTIONS)[-1].payload)["predictions"] == []

    publisher.on_camera_status("cam-1", False)
    live.wait_payload(STATUS, b"offline")
    publisher.on_alert(Alert("camera_down", "cam-1", "m", "critical", "firing", 1_700_000_000.0))
    alert = live.wait_for(lambda: live.on(ALERTS), what="alert")[0]
    assert alert.qos == 1 and json.loads(alert.payload)["type"] == "camera_down"

    # retained (QoS 1): status and counts; not retained: detections and alerts
    for topic, expected in ((STATUS, b"offline"), (COUNTS, b"{}")):
        message = retained(mosquitto, mqtt_subscriber, topic)
        assert message is not None and (message.payload, message.qos) == (expected, 1)
    assert retained(mosquitto, mqtt_subscriber, DETECTIONS) is None
    assert retained(mosquitto, mqtt_subscriber, ALERTS) is None


def test_a_batch_of_results_from_two_cameras_reaches_the_broker_whole_and_in_order(
    mosquitto, mqtt_subscriber, mqtt_publisher
):
    metrics = Metrics()
    live = mqtt_subscriber(mosquitto)
    publisher = mqtt_publisher(mosquitto, cameras=("cam-1", "cam-2"), metrics=metrics)
    wait_until(lambda: connected(metrics) == 1, 5, message="connected")
    other = "edgewatch/edge-01/cam-2/detections"
    burst = [
        frame_result(camera, frame_id, [person()] * (frame_id % 3))
        for frame_id in range(1, 12)
        for camera in ("cam-1", "cam-2")
    ]  # 22 results: more than the publisher collects before it sends
    dispatch(publisher, *burst)

    live.wait_for(lambda: len(live.on(DETECTIONS)) + len(live.on(other)) == 22, what="22 detections messages")
    for topic in (DETECTIONS, other):
        payloads = [json.loads(m.payload) for m in live.on(topic)]
        assert [p["frame_id"] for p in payloads] == list(range(1, 12))
        assert [len(p["predictions"]) for p in payloads] == [frame_id % 3 for frame_id in range(1, 12)]
    live.wait_payload("edgewatch/edge-01/cam-2/counts", b'{"person":2}')  # the last frame's: 11 % 3
    assert dropped(metrics) == 0


def test_broker_restart_reconnects_and_republishes_retained_state(mosquitto, mqtt_subscriber, mqtt_publisher):
    metrics = Metrics()
    publisher = mqtt_publisher(mosquitto, metrics=metrics)
    publisher.on_camera_status("cam-1", True)
    dispatch(publisher, frame_result("cam-1", 1, [person()]))
    live = mqtt_subscriber(mosquitto)
    live.wait_payload(COUNTS, b'{"person":1}')
    live.wait_payload(STATUS, b"online")

    mosquitto.stop()
    wait_until(lambda: connected(metrics) == 0, 5, message="edgewatch_mqtt_connected 0")
    dispatch(publisher, frame_result("cam-1", 2, [person(), car()]))  # changes while the broker is away
    mosquitto.start()  # persistence is off: the broker has forgotten every retained message

    after = mqtt_subscriber(mosquitto)
    after.wait_payload(COUNTS, b'{"car":1,"person":1}')
    assert connected(metrics) == 1
    for topic, payload in ((AVAILABILITY, b"online"), (STATUS, b"online"), (COUNTS, b'{"car":1,"person":1}')):
        message = retained(mosquitto, mqtt_subscriber, topic)
        assert message is not None and message.payload == payload


def behind_a_relay(mosquitto, tcp_relay, mqtt_subscriber, mqtt_publisher):
    """A publisher (max_queued 3) reaching the broker through a relay the test can cut; a subscriber on the
    broker itself; the publisher's metrics."""
    relay = tcp_relay(mosquitto)
    metrics = Metrics()
    live = mqtt_subscriber(mosquitto)
    publisher = mqtt_publisher(relay, metrics=metrics, max_queued=3)
    live.wait_payload(STATUS, b"offline")
    return relay, metrics, live, publisher


def test_network_outage_drops_detections_keeps_alerts_and_sends_latest_state(
    mosquitto, tcp_relay, mqtt_subscriber, mqtt_publisher
):
    relay, metrics, live, publisher = behind_a_relay(mosquitto, tcp_relay, mqtt_subscriber, mqtt_publisher)
    publisher.on_camera_status("cam-1", True)
    live.wait_payload(STATUS, b"online")

    relay.cut()
    live.wait_payload(AVAILABILITY, b"offline")  # the Last Will, sent by the broker
    wait_until(lambda: connected(metrics) == 0, 5, message="edgewatch_mqtt_connected 0")
    started = time.monotonic()
    for frame_id in range(1, 11):
        dispatch(publisher, frame_result("cam-1", frame_id, [person()]))
    for number in range(5):
        publisher.on_alert(Alert("test", "", str(number), "warning", "firing", 1_700_000_000.0))
    publisher.on_camera_status("cam-1", False)
    publisher.on_camera_status("cam-1", True)
    publisher.on_camera_status("cam-1", False)
    assert time.monotonic() - started < 1  # nothing waited for the broker
    assert dropped(metrics) == 10 + 2  # every detection; the alerts beyond max_queued

    relay.start()
    live.wait_payload(COUNTS, b'{"person":1}', timeout=10)
    live.wait_for(lambda: len(live.on(ALERTS)) == 3, what="the 3 queued alerts")
    assert [json.loads(m.payload)["message"] for m in live.on(ALERTS)] == ["0", "1", "2"]
    assert changes(live.payloads(AVAILABILITY)) == [b"online", b"offline", b"online"]
    live.wait_for(lambda: live.payloads(STATUS)[-1] == b"offline", what="the latest status")
    live.sync()
    # QoS 1 may repeat the message unacknowledged at the cut; what counts is that the latest value comes
    # last (after any re-sent older one) and that the flip-flops during the outage were never sent
    assert changes(live.payloads(STATUS)) == [b"offline", b"online", b"offline"]
    assert retained(mosquitto, mqtt_subscriber, STATUS).payload == b"offline"
    assert not live.on(DETECTIONS)

    dispatch(publisher, frame_result("cam-1", 11, [person()]))
    live.wait_for(lambda: live.on(DETECTIONS), what="detections after the outage")


def test_a_burst_of_events_in_an_outage_never_crowds_out_an_alert(
    mosquitto, tcp_relay, mqtt_subscriber, mqtt_publisher
):
    relay, metrics, live, publisher = behind_a_relay(mosquitto, tcp_relay, mqtt_subscriber, mqtt_publisher)

    relay.cut()
    wait_until(lambda: connected(metrics) == 0, 5, message="edgewatch_mqtt_connected 0")
    for number in range(6):  # a busy zone while the broker is away
        publisher.on_event(
            Event(f"event-{number}", "enter", "cam-1", "person", number, 1.7e9, 1.7e9, 1.7e9, 0.9,
                  (1.0, 2.0, 3.0, 4.0), (640, 480), zone="dock")
        )
    publisher.on_alert(Alert("camera_down", "cam-1", "camera cam-1 offline", "critical", "firing", 1.7e9))
    assert dropped(metrics) == 3  # the events beyond max_queued; the alert had room of its own

    relay.start()
    live.wait_for(lambda: live.on(ALERTS) and len(live.on(EVENTS)) >= 3, what="the alert and 3 events")
    assert json.loads(live.on(ALERTS)[0].payload)["message"] == "camera cam-1 offline"
    live.sync()
    assert sorted({json.loads(m.payload)["id"] for m in live.on(EVENTS)}) == ["event-0", "event-1", "event-2"]


def test_broker_down_at_start_does_not_block_and_connects_later(
    mosquitto_factory, mqtt_subscriber, mqtt_publisher
):
    broker = mosquitto_factory()
    metrics = Metrics()
    started = time.monotonic()
    publisher = mqtt_publisher(broker, metrics=metrics)
    publisher.on_camera_status("cam-1", True)
    dispatch(publisher, frame_result("cam-1", 1, [car()]))
    assert time.monotonic() - started < 1
    assert connected(metrics) == 0
    assert dropped(metrics) == 1

    broker.start()
    wait_until(lambda: connected(metrics) == 1, 10, message="connected once the broker is up")
    after = mqtt_subscriber(broker)
    after.wait_payload(AVAILABILITY, b"online")
    after.wait_payload(STATUS, b"online")
    after.wait_payload(COUNTS, b'{"car":1}')


def test_stalled_broker_drops_detections_instead_of_queueing_them(mosquitto, mqtt_publisher):
    metrics = Metrics()
    publisher = mqtt_publisher(mosquitto, metrics=metrics, max_queued=20)
    wait_until(lambda: connected(metrics) == 1, 5, message="connected")
    many = [person(0.5 + i / 1000, x=float(i)) for i in range(100)]  # about 14 kB of JSON per frame
    frames = 2000  # about 28 MB: far more than the kernel's socket buffers hold
    mosquitto.pause()
    try:
        started = time.monotonic()
        for frame_id in range(frames):
            dispatch(publisher, frame_result("cam-1", frame_id, many))
        elapsed = time.monotonic() - started
    finally:
        mosquitto.resume()
    assert connected(metrics) == 1  # the connection is up; the broker just does not read
    assert dropped(metrics) > frames / 2
    assert elapsed < 30


def test_tls_with_password_connects_and_never_logs_the_password(
    mosquitto_tls, tls_files, mqtt_subscriber, mqtt_publisher, caplog
):
    caplog.set_level(logging.DEBUG)
    password = mosquitto_tls.users["edge"]
    live = mqtt_subscriber(mosquitto_tls, username="edge", password=password)
    metrics = Metrics()
    publisher = mqtt_publisher(
        mosquitto_tls, metrics=metrics, tls=True, ca_file=tls_files.ca, username="edge", password=password
    )
    live.wait_payload(AVAILABILITY, b"online")
    dispatch(publisher, frame_result("cam-1", 1, [person()]))
    live.wait_for(lambda: live.on(DETECTIONS), what="detections over TLS")

    wrong = Metrics()
    mqtt_publisher(
        mosquitto_tls,
        metrics=wrong,
        tls=True,
        ca_file=tls_files.ca,
        username="edge",
        password="not-" + password,
        device="edge-02",
    )
    wait_until(lambda: "refused the connection" in caplog.text, 10, message="the refusal logged")
    untrusted = Metrics()
    mqtt_publisher(
        mosquitto_tls, metrics=untrusted, tls=True, username="edge", password=password, device="edge-03"
    )
    wait_until(
        lambda: "cannot connect" in caplog.text and "over TLS" in caplog.text, 10, message="TLS failure"
    )
    publisher.close()
    live.wait_payload(AVAILABILITY, b"offline")

    assert connected(wrong) == 0 and connected(untrusted) == 0
    assert "Not authorized" in caplog.text
    assert password not in caplog.text
    assert password not in mosquitto_tls.log()


def test_unreadable_ca_file_is_a_config_error(tmp_path):
    config = MqttConfig(tls=True, ca_file=tmp_path / "missing.pem", password="s3cret-value", username="u")
    with pytest.raises(ConfigError, match=r"mqtt\.ca_file") as raised:
        MqttPublisher(config, "edge-01", ["cam-1"], Metrics().mqtt)
    assert "s3cret-value" not in str(raised.value)
