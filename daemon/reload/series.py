"""Removing a camera's metric series when the camera leaves the config."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase


def remove_camera_series(registry: CollectorRegistry, camera_id: str) -> None:
    """Drop every series labelled `camera=<camera_id>`, whichever metric group made it."""
    # CollectorRegistry has no public list of its collectors; this is the mapping `register` fills.
    for collector in list(registry._collector_to_names):
        if not isinstance(collector, MetricWrapperBase):
            continue
        try:
            collector.remove_by_labels({"camera": camera_id})
        except ValueError:  # a metric without a `camera` label
            continue
