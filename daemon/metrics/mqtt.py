"""The MQTT connection: connected, and messages dropped when the outgoing queue is full."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class MqttMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.mqtt_connected = Gauge(
            "edgewatch_mqtt_connected", "1 while connected to the MQTT broker.", registry=registry
        )
        self.mqtt_dropped = Counter(
            "edgewatch_mqtt_messages_dropped",
            "MQTT messages dropped because the outgoing queue was full.",
            registry=registry,
        )
