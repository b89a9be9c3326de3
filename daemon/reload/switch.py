"""The MQTT side as one stable object whose publisher a reload can replace (new broker, credentials, TLS,
prefix) while the dispatcher, the alert engine and the cameras keep calling the same sink and listener."""

from __future__ import annotations

import threading
from collections.abc import Callable

from daemon.alerts.alert import Alert
from daemon.events.event import Event
from daemon.events.lifecycle import LineTotals, Occupancy
from daemon.frames import FrameResult
from daemon.sink import Sink
from daemon.sinks.mqtt import CLOSE_TIMEOUT, MqttPublisher


class MqttSwitch(Sink):
    """Forwards every call to the current publisher; `replace` starts the new one, then closes the old one
    (which says `offline` to its broker as a clean stop does)."""

    name = "mqtt"

    def __init__(self, publisher: MqttPublisher) -> None:
        self.publisher = publisher
        self._collecting = publisher  # dispatcher thread: given the results since the last `drained`

    def start(self) -> None:
        self.publisher.start()

    def handle(self, result: FrameResult) -> None:
        if self._collecting is not self.publisher:  # replaced: what the old one collected goes, or is counted
            self._collecting.drained()
            self._collecting = self.publisher
        self._collecting.handle(result)

    def drained(self) -> None:
        self._collecting.drained()

    def flush(self) -> None:
        self.publisher.flush()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        self.publisher.close(timeout)

    def threads(self) -> list[threading.Thread]:
        return self.publisher.threads()

    def on_camera_status(self, camera_id: str, online: bool) -> None:
        self.publisher.on_camera_status(camera_id, online)

    def on_alert(self, alert: Alert) -> None:
        self.publisher.on_alert(alert)

    def on_event(self, event: Event) -> None:
        self.publisher.on_event(event)

    def on_counts(self, camera_id: str, occupancy: Occupancy, lines: LineTotals) -> None:
        self.publisher.on_counts(camera_id, occupancy, lines)

    def add_camera(self, camera_id: str) -> None:
        self.publisher.add_camera(camera_id)

    def remove_camera(self, camera_id: str) -> None:
        self.publisher.remove_camera(camera_id)

    def replace(self, publisher: MqttPublisher, statuses: Callable[[], dict[str, bool]]) -> None:
        """Hand over to `publisher` (not started yet), telling it the cameras' current reachability (again
        after the switch: a camera that changed meanwhile told the old publisher)."""
        for camera_id, online in statuses().items():
            publisher.on_camera_status(camera_id, online)
        publisher.start()
        old, self.publisher = self.publisher, publisher
        for camera_id, online in statuses().items():
            publisher.on_camera_status(camera_id, online)
        old.close(CLOSE_TIMEOUT)
        publisher.show_connected()
