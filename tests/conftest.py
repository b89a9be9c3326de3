"""Fixtures shared by the suite live in tests/support/; each module registers itself here.

Every test is marked by the folder it lives in, so each group runs alone (`scripts/test -m unit`):
unit (no service started, the real model allowed), e2e (the real daemon with real brokers, cameras, servers),
deploy (systemd, containers, Kubernetes and Prometheus files).
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins: list[str] = [
    "tests.support.daemon",
    "tests.support.edge",
    "tests.support.media",
    "tests.support.mosquitto",
    "tests.support.proxy",
    "tests.support.roboflow_server",
    "tests.support.rtsp",
    "tests.support.vision_events_server",
    "tests.support.worker",
]

GROUPS = ("unit", "e2e", "deploy")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        group = Path(str(item.fspath)).parent.name
        if group in GROUPS:
            item.add_marker(group)
