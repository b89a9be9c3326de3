"""Every Prometheus metric edgewatch exports, in one registry.

Names follow the design contract: prefix `edgewatch_`, base units, counters end in `_total`. Label values
come from the config (camera ids) and the model (class names) only, never ids, URLs or keys. Per-camera
series are created at start so that a scrape shows every camera at 0 before its first frame.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from daemon import __version__

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
INFERENCE_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
UPLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
DROP_REASONS = ("stale", "dispatch_full", "read_error")
REPORT_RESULTS = ("sent", "retried", "failed", "dropped")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        # per camera
        self.frames_captured = Counter(
            "edgewatch_frames_captured",
            "Frames read from the camera and offered to inference.",
            ["camera"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "edgewatch_frames_dropped",
            "Frames not inferred: stale (a newer frame replaced it before inference took it), "
            "dispatch_full (results queue full), read_error (undecodable frame).",
            ["camera", "reason"],
            registry=r,
        )
        self.frames_inferred = Counter(
            "edgewatch_frames_inferred", "Frames that went through the model.", ["camera"], registry=r
        )
        self.camera_up = Gauge(
            "edgewatch_camera_up",
            "1 while the camera is connected and delivering frames.",
            ["camera"],
            registry=r,
        )
        self.camera_reconnects = Counter(
            "edgewatch_camera_reconnects",
            "Times the camera was reopened after a failure or stall.",
            ["camera"],
            registry=r,
        )
        self.camera_last_frame = Gauge(
            "edgewatch_camera_last_frame_timestamp_seconds",
            "Unix time of the camera's newest frame.",
            ["camera"],
            registry=r,
        )
        self.frame_latency = Histogram(
            "edgewatch_frame_latency_seconds",
            "Time from frame capture until every sink has handled its result.",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.detections = Counter(
            "edgewatch_detections", "Objects detected, by class.", ["camera", "class"], registry=r
        )
        self.detection_confidence = Histogram(
            "edgewatch_detection_confidence",
            "Confidence of detected objects.",
            ["camera"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        # global
        self.inference_duration = Histogram(
            "edgewatch_inference_duration_seconds",
            "session.run time per batch.",
            buckets=INFERENCE_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "edgewatch_batch_size",
            "Frames per inference batch.",
            buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.dispatcher_queue_depth = Gauge(
            "edgewatch_dispatcher_queue_depth", "Results waiting for the sinks.", registry=r
        )
        self.reports = Counter(
            "edgewatch_monitoring_reports",
            "Model Monitoring requests by outcome: sent (accepted), retried (will be sent again), "
            "failed (refused: bad key or request), dropped (spool bound reached, oldest removed).",
            ["result"],
            registry=r,
        )
        self.spool_depth = Gauge(
            "edgewatch_spool_depth", "Monitoring requests waiting in the on-disk spool.", registry=r
        )
        self.spool_oldest_age = Gauge(
            "edgewatch_spool_oldest_age_seconds",
            "Age of the oldest request in the spool (0 when empty).",
            registry=r,
        )
        self.upload_duration = Histogram(
            "edgewatch_monitoring_upload_duration_seconds",
            "Duration of each Model Monitoring HTTP request.",
            buckets=UPLOAD_BUCKETS,
            registry=r,
        )
        self.last_upload = Gauge(
            "edgewatch_monitoring_last_success_timestamp_seconds",
            "Unix time of the last request Roboflow accepted (0: none yet).",
            registry=r,
        )
        self.monitoring_unauthorized = Gauge(
            "edgewatch_monitoring_unauthorized", "1 while Roboflow refuses the API key (401/403).", registry=r
        )
        self.mqtt_connected = Gauge(
            "edgewatch_mqtt_connected", "1 while connected to the MQTT broker.", registry=r
        )
        self.mqtt_dropped = Counter(
            "edgewatch_mqtt_messages_dropped",
            "MQTT messages dropped because the outgoing queue was full.",
            registry=r,
        )
        self.alert_active = Gauge(
            "edgewatch_alert_active", "1 while an alert condition holds.", ["type", "camera"], registry=r
        )
        self.api_requests = Counter(
            "edgewatch_api_requests",
            "HTTP API requests by endpoint (infer, model, info, monitoring, other) and response status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.build_info = Info(
            "edgewatch_build", "edgewatch version and the ONNX Runtime execution provider in use.", registry=r
        )
        self.build_info.info({"version": __version__, "provider": "none"})

    def set_provider(self, provider: str) -> None:
        self.build_info.info({"version": __version__, "provider": provider})

    def init_cameras(self, camera_ids: Iterable[str]) -> None:
        for camera in camera_ids:
            self.frames_captured.labels(camera)
            for reason in DROP_REASONS:
                self.frames_dropped.labels(camera, reason)
            self.frames_inferred.labels(camera)
            self.camera_up.labels(camera).set(0)
            self.camera_reconnects.labels(camera)
            self.camera_last_frame.labels(camera)
            self.frame_latency.labels(camera)
            self.detection_confidence.labels(camera)
        for result in REPORT_RESULTS:
            self.reports.labels(result)
