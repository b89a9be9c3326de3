"""MQTT: availability, per-camera status, detections and counts, edge alerts, tracked objects' events, zone
occupancy and line totals, Home Assistant discovery.

One paho client with its own network thread (loop_start). The broker may be down at start or go away at any
time: the client connects in the background and reconnects by itself, and nothing here ever waits for it.

Every outgoing queue is bounded by us (paho's own queue is left unlimited):
- per-frame detections (QoS 0) are published from the dispatcher thread, a burst of them (a batch) together
  once the dispatcher has no further result (`drained`; at most `PUBLISH_GROUP` wait for it); they are
  dropped (and counted) while the broker is away, and while `max_queued` of them still wait for the socket.
  Together, because each `publish` wakes paho's network thread, which in a VM costs the waking thread 30-50 us
  of CPU, about what building the message does: a batch of 8 wakes it about once instead of 8 times;
- alerts and events (QoS 1) and retained state (each camera's status, its latest counts, zone occupancy and
  line totals, Home Assistant discovery) are handed to one small thread of ours ("mqtt-publish"), so callers
  never block: alerts and events wait through an outage, at most `max_queued` of each (so that a burst of
  events never crowds out an alert), alerts sent first; retained
  state is a table, topic -> payload, published whenever it changes and in full after every (re)connect,
  with at most one message per topic in flight (newer values coalesce while one is).

Why the full republish waits for a barrier: on reconnect paho re-sends the QoS 1 messages left unacknowledged
by the lost connection, right after `on_connect` returns. Those can be older values of retained topics, so
our republish must reach the broker after them: `on_connect` publishes `online` to the availability topic
and the publishing thread republishes only once the broker has acknowledged it.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from daemon.alerts.alert import Alert
from daemon.config import ConfigError, MqttConfig
from daemon.events.event import Event
from daemon.events.lifecycle import LineTotals, Occupancy
from daemon.frames import FrameResult, class_counts, roboflow_predictions
from daemon.metrics.mqtt import MqttMetrics
from daemon.sink import Sink
from daemon.sinks.homeassistant import HomeAssistantDiscovery
from daemon.timefmt import iso_utc

log = logging.getLogger("edgewatch.mqtt")

ONLINE = b"online"
OFFLINE = b"offline"
RECONNECT_MIN_DELAY = 1  # seconds; paho doubles it after each failed attempt
RECONNECT_MAX_DELAY = 30
CLOSE_TIMEOUT = 3.0  # seconds a clean stop waits for the broker to acknowledge `offline`
IN_FLIGHT_RECHECK = 0.05  # seconds between looks at a retained topic whose previous value is in flight
PUBLISH_GROUP = 8  # detections messages collected at most before they go out (while the dispatcher is behind)


@dataclass(frozen=True)
class Topics:
    prefix: str
    device_id: str

    @property
    def availability(self) -> str:
        return f"{self.prefix}/{self.device_id}/availability"

    @property
    def alerts(self) -> str:
        return f"{self.prefix}/{self.device_id}/alerts"

    def status(self, camera_id: str) -> str:
        return f"{self.prefix}/{self.device_id}/{camera_id}/status"

    def detections(self, camera_id: str) -> str:
        return f"{self.prefix}/{self.device_id}/{camera_id}/detections"

    def counts(self, camera_id: str) -> str:
        return f"{self.prefix}/{self.device_id}/{camera_id}/counts"

    def events(self, camera_id: str) -> str:
        return f"{self.prefix}/{self.device_id}/{camera_id}/events"

    def zone(self, camera_id: str, zone: str) -> str:
        return f"{self.prefix}/{self.device_id}/{camera_id}/zones/{zone}"

    def line(self, camera_id: str, line: str) -> str:
        return f"{self.prefix}/{self.device_id}/{camera_id}/lines/{line}"


def detections_message(result: FrameResult) -> dict[str, Any]:
    predictions = roboflow_predictions(result.detections)
    tracker_ids = result.detections.tracker_id
    if tracker_ids is not None:  # a tracked camera: each prediction's track id, null while not (yet) tracked
        for prediction, tracker_id in zip(predictions, tracker_ids.tolist(), strict=True):
            prediction["tracker_id"] = tracker_id if tracker_id >= 0 else None
    return {
        "camera": result.camera_id,
        "frame_id": result.frame_id,
        "timestamp": iso_utc(result.captured_at),
        "inference_id": result.inference_id,
        "model_id": result.model_id,
        "image": {"width": result.width, "height": result.height},
        "predictions": predictions,
    }


def _compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _delivered(info: mqtt.MQTTMessageInfo) -> bool:
    """True once paho is done with the message: written (QoS 0) / acknowledged (QoS 1), or given up."""
    try:
        return info.is_published()
    except (ValueError, RuntimeError):  # refused, or lost with the connection it was queued on
        return True


def _has_room(in_flight: collections.deque[mqtt.MQTTMessageInfo], limit: int) -> bool:
    """Forget the messages paho is done with (oldest first); True if fewer than `limit` remain."""
    while in_flight and _delivered(in_flight[0]):
        in_flight.popleft()
    return len(in_flight) < limit


class _Held:
    """QoS 1 messages of one kind (alerts, or events) that wait for the publishing thread or are in flight."""

    def __init__(self) -> None:
        self.waiting: collections.deque[tuple[str, bytes]] = collections.deque()  # (topic, payload)
        self.in_flight: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()

    def offer(self, topic: str, payload: bytes, limit: int) -> bool:
        """Hold one more message; False (not held) when `limit` already wait or are in flight."""
        if not _has_room(self.in_flight, limit - len(self.waiting)):
            return False
        self.waiting.append((topic, payload))
        return True

    def take(self) -> list[tuple[str, bytes]]:
        taken = list(self.waiting)
        self.waiting.clear()
        return taken


class MqttPublisher(Sink):
    """The MQTT side of edgewatch; also a Sink (detections and counts of every inferred frame).

    Threads: `handle` runs on the dispatcher thread, `on_camera_status` on capture threads,
    `on_alert` on the alert thread; paho's network thread runs the callbacks. `_lock` guards the
    retained-state table and the connection flags, and is never held while calling into paho (paho holds
    its own locks while running our callbacks, which take `_lock`).
    """

    name = "mqtt"

    def __init__(
        self,
        config: MqttConfig,
        device_id: str,
        camera_ids: Iterable[str],
        metrics: MqttMetrics,
        *,
        discovery_state: Path | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self.topics = Topics(config.topic_prefix, device_id)
        self._lock = threading.Lock()
        self._connected = False  # CONNACK received: per-frame messages may go
        self._synced = False  # the broker acknowledged the reconnect barrier: retained state may go
        self._barrier_mid: int | None = None
        cameras = list(camera_ids)
        self._retained: dict[str, bytes] = {self.topics.status(camera): OFFLINE for camera in cameras}
        self._dirty: set[str] = set()
        self._problem: str | None = None  # the last connection problem logged, to log each one once
        self._counts: dict[str, dict[str, int]] = {}  # dispatcher thread only
        self._counts_changed = False  # dispatcher thread only: a camera's counts changed since `drained`
        self._collected: list[tuple[str, bytes]] = []  # dispatcher thread only: detections (topic, payload)
        # per tracked camera: the zones and lines whose retained state it published (guarded by `_lock`)
        self._geometry: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
        self._detections: collections.deque[mqtt.MQTTMessageInfo] = collections.deque()  # dispatcher only
        # alerts and events (QoS 1, not retained), each bounded apart (guarded by `_lock`)
        self._alerts = _Held()
        self._events = _Held()
        self._retained_in_flight: dict[str, mqtt.MQTTMessageInfo] = {}  # publishing thread only
        self._discovery: HomeAssistantDiscovery | None = None
        if config.homeassistant:
            self._discovery = HomeAssistantDiscovery(
                config.discovery_prefix, self.topics, cameras, state_file=discovery_state
            )
            self._retained.update(self._discovery.configs())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mqtt-publish", daemon=True)
        self._client = self._make_client(config.client_id or f"edgewatch-{device_id}")
        metrics.mqtt_connected.set(0)

    def _make_client(self, client_id: str) -> mqtt.Client:
        config = self._config
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        client.reconnect_delay_set(RECONNECT_MIN_DELAY, RECONNECT_MAX_DELAY)
        client.will_set(self.topics.availability, OFFLINE, qos=1, retain=True)
        if config.username:
            client.username_pw_set(config.username, config.password.get_secret_value() or None)
        elif config.password.get_secret_value():
            log.warning("mqtt.password is set but mqtt.username is empty: connecting without credentials")
        if config.tls:
            ca_file = str(config.ca_file) if config.ca_file else None
            try:
                client.tls_set(ca_certs=ca_file)
            except OSError as exc:  # ssl.SSLError is an OSError
                raise ConfigError(
                    f"mqtt.ca_file: cannot load CA certificates from {ca_file}: {exc}"
                ) from None
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        if self._discovery is not None:
            client.message_callback_add(self._discovery.status_topic, self._on_homeassistant_status)
        for pattern in self._geometry_filters:
            client.message_callback_add(pattern, self._on_geometry_retained)
        return client

    @property
    def _geometry_filters(self) -> tuple[str, str]:
        """Every camera's zone occupancy and line totals under this device (subscribed to at each connect)."""
        return self.topics.zone("+", "+"), self.topics.line("+", "+")

    # lifecycle

    def start(self) -> None:
        """Connect in the background; returns at once, whether or not the broker is there."""
        self._client.connect_async(self._config.host, self._config.port, keepalive=self._config.keepalive)
        self._client.loop_start()
        self._thread.start()
        log.info(
            "MQTT: publishing under %s/ to %s:%d%s",
            f"{self.topics.prefix}/{self.topics.device_id}",
            self._config.host,
            self._config.port,
            " (TLS)" if self._config.tls else "",
        )

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Send what is still waiting (alerts, state changes), then `offline`; wait (at most `timeout`) for
        the broker to acknowledge it, which, QoS 1 being in order, covers the rest; disconnect."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._connected:
            if not self._thread.is_alive():
                self._publish_pending()
            info = self._client.publish(self.topics.availability, OFFLINE, qos=1, retain=True)
            with contextlib.suppress(ValueError, RuntimeError):  # not queued: reported just below
                info.wait_for_publish(timeout)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS or not _delivered(info):
                log.warning("MQTT: the broker did not acknowledge 'offline' within %.0fs", timeout)
        self._client.disconnect()
        self._client.loop_stop()
        self._metrics.mqtt_connected.set(0)

    def threads(self) -> list[threading.Thread]:
        return [self._thread]

    # Sink

    def handle(self, result: FrameResult) -> None:
        camera = result.camera_id
        counts = class_counts(result.detections)
        if counts != self._counts.get(camera):
            self._counts[camera] = counts
            updates = {self.topics.counts(camera): _compact(counts)}
            if self._discovery is not None:
                updates.update(self._discovery.add_classes(camera, counts))
            self._counts_changed |= self._set_retained(updates, wake=False)
        if not self._connected:
            self._metrics.mqtt_dropped.inc()
            return
        self._collected.append((self.topics.detections(camera), _compact(detections_message(result))))
        if len(self._collected) >= PUBLISH_GROUP:
            self.drained()

    def drained(self) -> None:
        """Publish what `handle` collected: the detections, and the counts (woken once for all cameras)."""
        if self._counts_changed:
            self._counts_changed = False
            self._wake.set()
        collected, self._collected = self._collected, []
        for topic, payload in collected:
            if not self._connected or not _has_room(self._detections, self._config.max_queued):
                self._metrics.mqtt_dropped.inc()
                continue
            info = self._client.publish(topic, payload, qos=0)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                self._detections.append(info)
            else:
                self._metrics.mqtt_dropped.inc()

    # inputs from other stages

    def on_camera_status(self, camera_id: str, online: bool) -> None:
        """Record a camera's reachability; published (retained) by the publishing thread. Never blocks."""
        self._set_retained({self.topics.status(camera_id): ONLINE if online else OFFLINE})

    def on_alert(self, alert: Alert) -> None:
        """Send one alert change (QoS 1). Never blocks; at most `max_queued` wait or are in flight."""
        self._hold(self._alerts, self.topics.alerts, _compact(alert.payload()))

    def on_event(self, event: Event) -> None:
        """Send one tracked object's event (QoS 1, not retained), like an alert. Never blocks."""
        self._hold(self._events, self.topics.events(event.camera), _compact(event.payload()))

    def on_counts(self, camera_id: str, occupancy: Occupancy, lines: LineTotals) -> None:
        """A camera's zone occupancy and line totals, kept retained (and announced to Home Assistant). Zones
        and lines it no longer has (a config reload) are cleared from the broker and from Home Assistant."""
        topics = self.topics
        with self._lock:
            zones_before, lines_before = self._geometry.get(camera_id, ((), ()))
            self._geometry[camera_id] = (tuple(occupancy), tuple(lines))
        updates = self._clear_geometry(
            camera_id, set(zones_before) - occupancy.keys(), set(lines_before) - lines.keys()
        )
        updates.update({topics.zone(camera_id, zone): _compact(counts) for zone, counts in occupancy.items()})
        updates.update({topics.line(camera_id, name): _compact(totals) for name, totals in lines.items()})
        if self._discovery is not None:
            updates.update(self._discovery.add_zones_and_lines(camera_id, list(occupancy), list(lines)))
        self._set_retained(updates)

    def _clear_geometry(self, camera_id: str, zones: Iterable[str], lines: Iterable[str]) -> dict[str, bytes]:
        """Empty retained payloads for zones' occupancy, lines' totals and their Home Assistant entities."""
        gone_zones, gone_lines = sorted(zones), sorted(lines)
        updates = {self.topics.zone(camera_id, zone): b"" for zone in gone_zones}
        updates.update({self.topics.line(camera_id, line): b"" for line in gone_lines})
        if self._discovery is not None:
            updates.update(self._discovery.remove_zones_and_lines(camera_id, gone_zones, gone_lines))
        return updates

    def _hold(self, held: _Held, topic: str, payload: bytes) -> None:
        with self._lock:
            queued = held.offer(topic, payload, self._config.max_queued)
        if queued:
            self._wake.set()
        else:
            self._metrics.mqtt_dropped.inc()

    # live reconfiguration (a config reload)

    def add_camera(self, camera_id: str) -> None:
        """A camera added while running: its status (offline until it delivers) and its HA entities."""
        updates = {self.topics.status(camera_id): OFFLINE}
        if self._discovery is not None:
            updates.update(self._discovery.add_camera(camera_id))
        self._set_retained(updates)

    def remove_camera(self, camera_id: str) -> None:
        """A camera removed while running (its results all handled): its retained status, counts, zones and
        lines and its Home Assistant entities are cleared on the broker (empty retained payloads, sent once
        connected)."""
        updates = {self.topics.status(camera_id): b"", self.topics.counts(camera_id): b""}
        with self._lock:
            zones, lines = self._geometry.pop(camera_id, ((), ()))
        updates.update(self._clear_geometry(camera_id, zones, lines))
        if self._discovery is not None:
            updates.update(self._discovery.remove_camera(camera_id))
        self._counts.pop(camera_id, None)
        self._set_retained(updates)

    def show_connected(self) -> None:
        """Set `edgewatch_mqtt_connected` from this client's state (another client's close zeroed it)."""
        with self._lock:
            connected = self._connected
        self._metrics.mqtt_connected.set(1 if connected else 0)

    # retained state

    def _set_retained(self, updates: Mapping[str, bytes], wake: bool = True) -> bool:
        """Record new retained values; True if one changed. `wake=False`: the caller wakes the publishing
        thread later."""
        with self._lock:
            changed = False
            for topic, payload in updates.items():
                if self._retained.get(topic) != payload:
                    self._retained[topic] = payload
                    self._dirty.add(topic)
                    changed = True
        if changed and wake:
            self._wake.set()
        return changed

    def _run(self) -> None:
        held_back = False
        while True:
            # a topic held back waits for its previous message's acknowledgement: look again shortly
            self._wake.wait(IN_FLIGHT_RECHECK if held_back else None)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                held_back = self._publish_pending()
            except Exception:  # a bug here must not end alert and retained-state publishing for good
                log.exception("MQTT: publishing alerts or retained state failed")

    def _publish_pending(self) -> bool:
        """Publish waiting alerts, then events, and every changed topic whose previous message is
        acknowledged. True if a topic had to wait for that."""
        in_flight = self._retained_in_flight
        for topic in [topic for topic, info in in_flight.items() if _delivered(info)]:
            del in_flight[topic]
        with self._lock:
            if not self._synced:
                return False
            alerts, events = self._alerts.take(), self._events.take()
            ready = sorted(self._dirty - in_flight.keys())
            batch = [(topic, self._retained[topic]) for topic in ready if topic in self._retained]
            self._dirty.difference_update(ready)
            held_back = bool(self._dirty)
        sent_alerts = [self._client.publish(topic, payload, qos=1) for topic, payload in alerts]
        sent_events = [self._client.publish(topic, payload, qos=1) for topic, payload in events]
        with self._lock:
            self._alerts.in_flight.extend(sent_alerts)
            self._events.in_flight.extend(sent_events)
        for topic, payload in batch:
            info = self._client.publish(topic, payload, qos=1, retain=True)
            in_flight[topic] = info
            if not payload and info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                # a removal (empty retained payload) is on its way: stop republishing it
                with self._lock:
                    if self._retained.get(topic) == b"":
                        del self._retained[topic]
                if self._discovery is not None:
                    self._discovery.removed(topic)
        if self._discovery is not None:
            self._discovery.save()
        return held_back

    # paho callbacks (network thread)

    def _log_problem(self, problem: str) -> None:
        if problem != self._problem:
            self._problem = problem
            log.warning("MQTT: %s; retrying in the background", problem)
        else:
            log.debug("MQTT: %s", problem)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._log_problem(
                f"broker {self._config.host}:{self._config.port} refused the connection: {reason}"
            )
            return
        self._problem = None
        log.info("MQTT: connected to %s:%d", self._config.host, self._config.port)
        if self._discovery is not None:
            client.subscribe(self._discovery.status_topic, qos=1)
        # the broker answers with what it retained: zones and lines no longer configured are cleared
        client.subscribe([(pattern, 0) for pattern in self._geometry_filters])
        barrier = client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        with self._lock:
            self._connected = True
            self._barrier_mid = barrier.mid
        self._metrics.mqtt_connected.set(1)  # only now: a 1 means detections go out, not dropped

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        tls = " over TLS" if self._config.tls else ""
        self._log_problem(f"cannot connect to {self._config.host}:{self._config.port}{tls}")

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = self._synced = False
            self._barrier_mid = None
        self._metrics.mqtt_connected.set(0)
        if was_connected and not self._stop.is_set():
            self._problem = None
            self._log_problem(f"connection to {self._config.host}:{self._config.port} lost")

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            if mid == self._barrier_mid:
                self._barrier_mid = None
                self._synced = True
                self._dirty = set(self._retained)
            wake = bool(self._dirty or self._alerts.waiting or self._events.waiting)
        if wake:
            self._wake.set()

    def _on_geometry_retained(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        """A zone's occupancy or a line's totals the broker kept from before (a retained message; our own
        publishes come back unretained and are ignored): cleared, with its Home Assistant entity, when that
        zone or line is no longer configured (removed from config.toml while edgewatch was stopped)."""
        if not message.retain or not message.payload:
            return
        camera_id, kind, name = message.topic.rsplit("/", 3)[-3:]
        with self._lock:
            zones, lines = self._geometry.get(camera_id, ((), ()))
        if kind == "zones" and name not in zones:
            self._set_retained(self._clear_geometry(camera_id, [name], []))
        elif kind == "lines" and name not in lines:
            self._set_retained(self._clear_geometry(camera_id, [], [name]))

    def _on_homeassistant_status(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if message.payload != ONLINE or self._discovery is None:
            return
        prefix = self._discovery.topic_root
        with self._lock:
            self._dirty.update(topic for topic in self._retained if topic.startswith(prefix))
        self._wake.set()
