"""Fixtures shared by the suite live in tests/support/; each module registers itself here."""

pytest_plugins: list[str] = [
    "tests.support.daemon",
    "tests.support.edge",
    "tests.support.media",
    "tests.support.mosquitto",
    "tests.support.roboflow_server",
    "tests.support.rtsp",
]
