"""Home Assistant MQTT discovery: one HA device per camera, with a connectivity binary_sensor, one count
sensor per class seen on that camera, and (tracked cameras) an occupancy sensor per zone and an in and an out
counter per line.

Config topics: `<discovery_prefix>/binary_sensor/edgewatch_<device>/<camera>_status/config` and
`<discovery_prefix>/sensor/edgewatch_<device>/<camera>_count_<class>/config` (class name reduced to
[A-Za-z0-9_-]). Every entity reads the daemon's availability topic, so HA greys them out when edgewatch is
offline.

What was published is remembered in a small JSON state file (camera -> classes). The file, not the broker, is
the record because MQTT gives no "end of retained messages" marker: reading our configs back at connect would
mean guessing how long to wait. With the file, a camera removed from the config gets its configs cleared
(empty retained payload) on the next connect, and count sensors survive restarts before their class is seen
again. Losing the file only means stale entities may stay in HA; nothing live is ever removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon import __version__

if TYPE_CHECKING:
    from daemon.sinks.mqtt import Topics

log = logging.getLogger("edgewatch.homeassistant")

ORIGIN = {"name": "edgewatch", "sw_version": __version__}


def slug(text: str) -> str:
    """`text` reduced to the characters HA allows in an object id."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "_"


def _node(device_id: str) -> str:
    return f"edgewatch_{device_id}"


def _camera_device(device_id: str, camera_id: str) -> dict[str, Any]:
    return {
        "identifiers": [f"{_node(device_id)}_{camera_id}"],
        "name": f"{camera_id} ({device_id})",
        "manufacturer": "edgewatch",
        "model": "edgewatch camera",
        "sw_version": __version__,
    }


def _availability(topics: Topics) -> list[dict[str, str]]:
    return [{"topic": topics.availability, "payload_available": "online", "payload_not_available": "offline"}]


def status_config(discovery_prefix: str, topics: Topics, camera_id: str) -> tuple[str, dict[str, Any]]:
    device = topics.device_id
    topic = f"{discovery_prefix}/binary_sensor/{_node(device)}/{camera_id}_status/config"
    return topic, {
        "name": "Connectivity",
        "unique_id": f"{_node(device)}_{camera_id}_status",
        "device_class": "connectivity",
        "state_topic": topics.status(camera_id),
        "payload_on": "online",
        "payload_off": "offline",
        "availability": _availability(topics),
        "device": _camera_device(device, camera_id),
        "origin": ORIGIN,
    }


def count_config(
    discovery_prefix: str, topics: Topics, camera_id: str, class_name: str
) -> tuple[str, dict[str, Any]]:
    device = topics.device_id
    object_id = f"{camera_id}_count_{slug(class_name)}"
    topic = f"{discovery_prefix}/sensor/{_node(device)}/{object_id}/config"
    return topic, {
        "name": f"{class_name} count",
        "unique_id": f"{_node(device)}_{object_id}",
        "state_topic": topics.counts(camera_id),
        # the counts JSON lists the classes present in the latest frame only
        "value_template": f"{{{{ value_json.get({json.dumps(class_name)}, 0) }}}}",
        "state_class": "measurement",
        "icon": "mdi:counter",
        "availability": _availability(topics),
        "device": _camera_device(device, camera_id),
        "origin": ORIGIN,
    }


def zone_config(
    discovery_prefix: str, topics: Topics, camera_id: str, zone: str
) -> tuple[str, dict[str, Any]]:
    """A sensor of the objects inside a zone now (all classes together)."""
    device = topics.device_id
    object_id = f"{camera_id}_zone_{zone}"
    return f"{discovery_prefix}/sensor/{_node(device)}/{object_id}/config", {
        "name": f"{zone} occupancy",
        "unique_id": f"{_node(device)}_{object_id}",
        "state_topic": topics.zone(camera_id, zone),
        "value_template": "{{ value_json.values() | sum }}",
        "json_attributes_topic": topics.zone(camera_id, zone),
        "state_class": "measurement",
        "icon": "mdi:account-group",
        "availability": _availability(topics),
        "device": _camera_device(device, camera_id),
        "origin": ORIGIN,
    }


def line_config(
    discovery_prefix: str, topics: Topics, camera_id: str, line: str, direction: str
) -> tuple[str, dict[str, Any]]:
    """A counter of the objects that crossed a line in one direction (since edgewatch started)."""
    device = topics.device_id
    object_id = f"{camera_id}_line_{line}_{direction}"
    return f"{discovery_prefix}/sensor/{_node(device)}/{object_id}/config", {
        "name": f"{line} {direction}",
        "unique_id": f"{_node(device)}_{object_id}",
        "state_topic": topics.line(camera_id, line),
        "value_template": f"{{{{ value_json.{direction} }}}}",
        "state_class": "total_increasing",  # starts again from 0 when edgewatch restarts
        "icon": "mdi:transfer-right" if direction == "in" else "mdi:transfer-left",
        "availability": _availability(topics),
        "device": _camera_device(device, camera_id),
        "origin": ORIGIN,
    }


def _payload(config: dict[str, Any]) -> bytes:
    return json.dumps(config, separators=(",", ":")).encode()


class HomeAssistantDiscovery:
    """Discovery configs to keep retained, and the state file recording them. Thread-safe."""

    def __init__(
        self, discovery_prefix: str, topics: Topics, camera_ids: Iterable[str], *, state_file: Path | None
    ) -> None:
        self._prefix = discovery_prefix
        self._topics = topics
        self._state_file = state_file
        self._lock = threading.Lock()
        saved = self._load()
        self._classes: dict[str, set[str]] = {camera: set(saved.get(camera, ())) for camera in camera_ids}
        # configs of cameras no longer configured: topic -> camera, until their removal has gone out
        self._removals: dict[str, str] = {}
        self._leaving: dict[str, set[str]] = {}
        for camera, classes in saved.items():
            if camera not in self._classes:
                self._leaving[camera] = set(classes)
                for topic in self._topics_of(camera, classes):
                    self._removals[topic] = camera
        self._changed = bool(self._removals) or set(saved) != set(self._classes)

    @property
    def status_topic(self) -> str:
        """Where Home Assistant announces `online` when it (re)starts."""
        return f"{self._prefix}/status"

    @property
    def topic_root(self) -> str:
        return f"{self._prefix}/"

    def _topics_of(self, camera: str, classes: Iterable[str]) -> list[str]:
        topics = [status_config(self._prefix, self._topics, camera)[0]]
        topics += [count_config(self._prefix, self._topics, camera, name)[0] for name in classes]
        return topics

    def configs(self) -> dict[str, bytes]:
        """Discovery messages to retain: configs of configured cameras, empty payloads for removed ones."""
        with self._lock:
            messages = dict.fromkeys(self._removals, b"")
            for camera, classes in self._classes.items():
                topic, config = status_config(self._prefix, self._topics, camera)
                messages[topic] = _payload(config)
                for name in sorted(classes):
                    topic, config = count_config(self._prefix, self._topics, camera, name)
                    messages[topic] = _payload(config)
        return messages

    def add_classes(self, camera_id: str, class_names: Iterable[str]) -> dict[str, bytes]:
        """Configs for the classes seen on the camera for the first time (usually none: cheap per frame)."""
        known = self._classes.get(camera_id)
        if known is None:
            return {}
        new = [name for name in class_names if name not in known]
        if not new:
            return {}
        messages = {}
        with self._lock:
            for name in new:
                known.add(name)
                topic, config = count_config(self._prefix, self._topics, camera_id, name)
                messages[topic] = _payload(config)
            self._changed = True
        return messages

    def add_zones_and_lines(self, camera_id: str, zones: list[str], lines: list[str]) -> dict[str, bytes]:
        """Configs of a camera's zone occupancy and line counters (names from the config: a bounded set)."""
        messages = {}
        for zone in zones:
            topic, config = zone_config(self._prefix, self._topics, camera_id, zone)
            messages[topic] = _payload(config)
        for line in lines:
            for direction in ("in", "out"):
                topic, config = line_config(self._prefix, self._topics, camera_id, line, direction)
                messages[topic] = _payload(config)
        return messages

    def remove_zones_and_lines(
        self, camera_id: str, zones: Iterable[str], lines: Iterable[str]
    ) -> dict[str, bytes]:
        """Empty retained payloads that delete the entities of zones and lines no longer configured."""
        topics = [zone_config(self._prefix, self._topics, camera_id, zone)[0] for zone in zones]
        topics += [
            line_config(self._prefix, self._topics, camera_id, line, direction)[0]
            for line in lines
            for direction in ("in", "out")
        ]
        return dict.fromkeys(topics, b"")

    def add_camera(self, camera_id: str) -> dict[str, bytes]:
        """A camera added while running: its configs (and those of the classes it had, if it is back)."""
        with self._lock:
            if camera_id in self._classes:
                return {}
            classes = self._leaving.pop(camera_id, set())
            for topic in [topic for topic, camera in self._removals.items() if camera == camera_id]:
                del self._removals[topic]
            self._classes[camera_id] = classes
            self._changed = True
        topic, config = status_config(self._prefix, self._topics, camera_id)
        messages = {topic: _payload(config)}
        for name in sorted(classes):
            topic, config = count_config(self._prefix, self._topics, camera_id, name)
            messages[topic] = _payload(config)
        return messages

    def remove_camera(self, camera_id: str) -> dict[str, bytes]:
        """A camera removed while running: empty retained payloads that delete its entities in HA."""
        with self._lock:
            classes = self._classes.pop(camera_id, None)
            if classes is None:
                return {}
            self._leaving[camera_id] = classes
            topics = self._topics_of(camera_id, classes)
            self._removals.update(dict.fromkeys(topics, camera_id))
            self._changed = True
        return dict.fromkeys(topics, b"")

    def removed(self, topic: str) -> None:
        """A removal (empty retained payload) has been handed to the broker."""
        with self._lock:
            camera = self._removals.pop(topic, None)
            if camera is not None and camera not in self._removals.values():
                del self._leaving[camera]
                self._changed = True

    def save(self) -> None:
        """Write the state file if anything changed since the last write (atomically: temp file + rename)."""
        if self._state_file is None:
            return
        with self._lock:
            if not self._changed:
                return
            state = {
                camera: sorted(classes) for camera, classes in {**self._leaving, **self._classes}.items()
            }
            self._changed = False
        temporary = self._state_file.with_name(self._state_file.name + ".tmp")
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps({"cameras": state}, indent=1, sort_keys=True))
            os.replace(temporary, self._state_file)
        except OSError as exc:
            log.warning("Home Assistant discovery: cannot write %s: %s", self._state_file, exc.strerror)
            with self._lock:
                self._changed = True

    def _load(self) -> dict[str, list[str]]:
        if self._state_file is None:
            return {}
        try:
            cameras = json.loads(self._state_file.read_text())["cameras"]
            return {str(camera): [str(name) for name in classes] for camera, classes in cameras.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("Home Assistant discovery: ignoring unreadable %s (%s)", self._state_file, exc)
            return {}
