"""Prometheus metrics: one group per stage, one file per group, all in one registry.

Names follow the design contract: prefix `edgewatch_`, base units, counters end in `_total`. Label values
come from the config (camera ids) and the model (class names) only, never ids, URLs or keys. Per-camera
series are created when a camera is added, so that a scrape shows it at 0 before its first frame. Each stage
is handed its own group and only writes to it; nothing reads values back to make decisions.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Info, ProcessCollector

from daemon import __version__
from daemon.metrics.alerts import AlertMetrics
from daemon.metrics.api import ApiMetrics
from daemon.metrics.cameras import CameraMetrics
from daemon.metrics.detections import DetectionMetrics
from daemon.metrics.frames import FrameMetrics
from daemon.metrics.inference import InferenceMetrics
from daemon.metrics.monitoring import MonitoringMetrics
from daemon.metrics.mqtt import MqttMetrics


class Metrics:
    """The registry and every group. The MQTT group exists only with a broker configured, so that no
    "disconnected" series is there to alert on."""

    def __init__(self, *, mqtt: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes
        self.frames = FrameMetrics(self.registry)
        self.cameras = CameraMetrics(self.registry)
        self.inference = InferenceMetrics(self.registry)
        self.detections = DetectionMetrics(self.registry)
        self.monitoring = MonitoringMetrics(self.registry)
        self.mqtt = MqttMetrics(self.registry) if mqtt else None
        self.alerts = AlertMetrics(self.registry)
        self.api = ApiMetrics(self.registry)
        self._build_info = Info(
            "edgewatch_build",
            "edgewatch version and the ONNX Runtime execution provider in use.",
            registry=self.registry,
        )
        self.set_provider("none")

    def set_provider(self, provider: str) -> None:
        self._build_info.info({"version": __version__, "provider": provider})

    def init_cameras(self, camera_ids: Iterable[str]) -> None:
        for camera in camera_ids:
            self.frames.init_camera(camera)
            self.cameras.init_camera(camera)
            self.detections.init_camera(camera)
