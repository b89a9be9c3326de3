"""Each camera's connection: up, reconnects, the time of its newest frame, where it is decoded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CameraMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.camera_up = Gauge(
            "edgewatch_camera_up",
            "1 while the camera is connected and delivering frames.",
            ["camera"],
            registry=registry,
        )
        self.camera_reconnects = Counter(
            "edgewatch_camera_reconnects",
            "Times the camera was reopened after a failure or stall.",
            ["camera"],
            registry=registry,
        )
        self.camera_last_frame = Gauge(
            "edgewatch_camera_last_frame_timestamp_seconds",
            "Unix time of the camera's newest frame.",
            ["camera"],
            registry=registry,
        )
        # only cameras with decoder = cuda have a series: 0 is then "asked for the GPU, decoding on the CPU"
        self.camera_gpu_decoding = Gauge(
            "edgewatch_camera_gpu_decoding",
            "For cameras with decoder = cuda: 1 while the stream is decoded on the GPU, 0 while on the CPU.",
            ["camera"],
            registry=registry,
        )

    def init_camera(self, camera: str) -> None:
        self.camera_up.labels(camera).set(0)
        self.camera_reconnects.labels(camera)
        self.camera_last_frame.labels(camera)
