"""Home Assistant MQTT discovery through a real Mosquitto: the configs HA reads, their removal when a camera
leaves the config, and the republish when HA comes back online."""

from __future__ import annotations

import json

from tests.support.results import car, dispatch, frame_result, person

PREFIX = "homeassistant"
CAM1_STATUS = f"{PREFIX}/binary_sensor/edgewatch_edge-01/cam-1_status/config"
CAM1_PERSON = f"{PREFIX}/sensor/edgewatch_edge-01/cam-1_count_person/config"
CAM1_CAR = f"{PREFIX}/sensor/edgewatch_edge-01/cam-1_count_car/config"
CAM2_STATUS = f"{PREFIX}/binary_sensor/edgewatch_edge-01/cam-2_status/config"
CAM2_TRAFFIC_LIGHT = f"{PREFIX}/sensor/edgewatch_edge-01/cam-2_count_traffic_light/config"
AVAILABILITY = [{"topic": "edgewatch/edge-01/availability", "payload_available": "online",
                 "payload_not_available": "offline"}]  # fmt: skip


def config_of(subscriber, topic: str) -> dict:
    return json.loads(subscriber.wait_for(lambda: subscriber.on(topic), what=topic)[-1].payload)


def test_discovery_configs_for_camera_connectivity_and_each_class_seen(
    mosquitto, mqtt_subscriber, mqtt_publisher, tmp_path
):
    live = mqtt_subscriber(mosquitto)
    publisher = mqtt_publisher(
        mosquitto, cameras=("cam-1",), homeassistant=True, discovery_state=tmp_path / "ha.json"
    )
    status = config_of(live, CAM1_STATUS)
    device = {
        "identifiers": ["edgewatch_edge-01_cam-1"],
        "name": "cam-1 (edge-01)",
        "manufacturer": "edgewatch",
        "model": "edgewatch camera",
        "sw_version": status["device"]["sw_version"],
    }
    assert status == {
        "name": "Connectivity",
        "unique_id": "edgewatch_edge-01_cam-1_status",
        "device_class": "connectivity",
        "state_topic": "edgewatch/edge-01/cam-1/status",
        "payload_on": "online",
        "payload_off": "offline",
        "availability": AVAILABILITY,
        "device": device,
        "origin": status["origin"],
    }
    assert status["origin"]["name"] == "edgewatch"
    assert not live.on(CAM1_PERSON)  # no count sensor before the class is seen

    dispatch(publisher, frame_result("cam-1", 1, [person(), person(x=300)]))
    sensor = config_of(live, CAM1_PERSON)
    assert sensor["unique_id"] == "edgewatch_edge-01_cam-1_count_person"
    assert sensor["state_topic"] == "edgewatch/edge-01/cam-1/counts"
    assert sensor["value_template"] == '{{ value_json.get("person", 0) }}'
    assert sensor["state_class"] == "measurement"
    assert sensor["availability"] == AVAILABILITY and sensor["device"] == device
    dispatch(publisher, frame_result("cam-1", 2, [person()]))
    dispatch(publisher, frame_result("cam-1", 3, [car()]))
    config_of(live, CAM1_CAR)
    live.sync()
    assert len(live.on(CAM1_PERSON)) == 1 and len(live.on(CAM1_STATUS)) == 1

    fresh = mqtt_subscriber(mosquitto)
    fresh.sync()
    for topic in (CAM1_STATUS, CAM1_PERSON, CAM1_CAR):
        assert [m.retain for m in fresh.on(topic)] == [True]


def test_removed_camera_loses_its_configs_and_sensors_survive_restarts(
    mosquitto, mqtt_subscriber, mqtt_publisher, tmp_path
):
    state = tmp_path / "ha.json"
    first = mqtt_publisher(mosquitto, cameras=("cam-1", "cam-2"), homeassistant=True, discovery_state=state)
    dispatch(first, frame_result("cam-2", 1, [(0, 0, 10, 10, 0.9, 9, "traffic light")]))
    dispatch(first, frame_result("cam-1", 1, [person()]))
    live = mqtt_subscriber(mosquitto)
    for topic in (CAM1_STATUS, CAM1_PERSON, CAM2_STATUS, CAM2_TRAFFIC_LIGHT):
        config_of(live, topic)
    first.close()
    assert json.loads(state.read_text()) == {"cameras": {"cam-1": ["person"], "cam-2": ["traffic light"]}}

    # cam-2 leaves the config
    second = mqtt_publisher(mosquitto, cameras=("cam-1",), homeassistant=True, discovery_state=state)
    live.wait_payload(CAM2_STATUS, b"")
    live.wait_payload(CAM2_TRAFFIC_LIGHT, b"")
    fresh = mqtt_subscriber(mosquitto)
    fresh.sync()
    assert not fresh.on(CAM2_STATUS) and not fresh.on(CAM2_TRAFFIC_LIGHT)  # gone from the broker
    assert fresh.on(CAM1_STATUS) and fresh.on(CAM1_PERSON)  # cam-1's sensor kept without a new frame
    second.close()
    assert json.loads(state.read_text()) == {"cameras": {"cam-1": ["person"]}}

    # removed once: the next start has nothing left to remove
    removals = len(live.on(CAM2_STATUS))
    mqtt_publisher(mosquitto, cameras=("cam-1",), homeassistant=True, discovery_state=state)
    live.wait_for(lambda: len(live.on(CAM1_STATUS)) == 3, what="cam-1 status config from the third run")
    live.sync()
    assert len(live.on(CAM2_STATUS)) == removals


def test_configs_republished_when_home_assistant_comes_online(mosquitto, mqtt_subscriber, mqtt_publisher):
    live = mqtt_subscriber(mosquitto)
    publisher = mqtt_publisher(mosquitto, cameras=("cam-1",), homeassistant=True)
    config_of(live, CAM1_STATUS)
    dispatch(publisher, frame_result("cam-1", 1, [person()]))
    config_of(live, CAM1_PERSON)

    live.publish(f"{PREFIX}/status", b"offline")
    live.publish(f"{PREFIX}/status", b"online")
    live.wait_for(lambda: len(live.on(CAM1_PERSON)) == 2, what="the person sensor config again")
    live.wait_for(lambda: len(live.on(CAM1_STATUS)) == 2, what="the connectivity config again")
    live.sync()
    assert len(live.on(CAM1_STATUS)) == 2  # `offline` republished nothing
