"""Helpers for Vision Events tests: a config file, edgewatch Event values, snapshots of real photos, and a
feeder process (`python -m tests.support.vision_events CONFIG SNAPSHOTS N`) that runs the real sink, feeds it
N line-crossing events with snapshots, prints their ids, and keeps sending until killed."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from pathlib import Path

import cv2
import skimage.data

from daemon.events.event import Event

PHOTOS = Path(skimage.data.__file__).parent
FRAME_SIZE = (600, 400)  # coffee.png, width x height


def snapshot_jpeg(scale: float = 1.0, photo: str = "coffee.png") -> bytes:
    """A real photo as the snapshot store writes it: a JPEG, optionally scaled."""
    image = cv2.imread(str(PHOTOS / photo), cv2.IMREAD_COLOR)
    if scale != 1.0:
        image = cv2.resize(image, None, fx=scale, fy=scale)
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return data.tobytes()


def config_toml(tmp_path: Path, api_url: str, api_key: str, **vision_events: object) -> Path:
    settings = {
        "enabled": True, "api_key": api_key, "api_url": api_url, "use_case": "dock-safety",
        "coalesce": 0.3, "timeout": 3, **vision_events,
    }
    lines = "\n".join(f"{key} = {_toml(value)}" for key, value in settings.items())
    path = tmp_path / "config.toml"
    path.write_text(f"""
[device]
id = "edge-test"

[model]
path = "model.onnx"

[[cameras]]
id = "dock"
url = "dock.mp4"
metadata = {{ location = "plant-a", "line no" = "1" }}

[[cameras]]
id = "gate"
url = "gate.mp4"

[roboflow]
enabled = false
spool = "{tmp_path / "state" / "spool.db"}"

[mqtt]
enabled = false

[vision_events]
{lines}
""")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    return str(value)


def make_event(
    camera: str = "dock",
    kind: str = "enter",
    *,
    zone: str | None = "walkway",
    line: str | None = None,
    direction: str | None = None,
    class_name: str = "person",
    confidence: float = 0.8,
    tracker_id: int = 1,
    snapshot_id: str | None = None,
    box: tuple[float, float, float, float] = (100.0, 50.0, 300.0, 350.0),
    dwell: float | None = None,
) -> Event:
    now = time.time()
    return Event(
        id=str(uuid.uuid4()), type=kind, camera=camera, class_name=class_name,  # type: ignore[arg-type]
        tracker_id=tracker_id, timestamp=now, first_seen=now - 5, last_seen=now, confidence=confidence,
        box=box, image_size=FRAME_SIZE, zones=(zone,) if zone else (), zone=zone, line=line,
        direction=direction, dwell_seconds=dwell, snapshot_id=snapshot_id,  # type: ignore[arg-type]
    )


def _feed(config_path: Path, snapshots: Path, count: int) -> None:
    from prometheus_client import CollectorRegistry

    from daemon.config import load_config
    from daemon.roboflow.vision_events import VisionEventsSink

    def read(snapshot_id: str) -> bytes | None:
        path = snapshots / f"{snapshot_id}.jpg"
        return path.read_bytes() if path.is_file() else None

    config = load_config(config_path)
    sink = VisionEventsSink(config, CollectorRegistry(), read, backoff_base=0.1, backoff_max=0.5)
    for n in range(count):
        snapshot_id = str(uuid.uuid4())
        (snapshots / f"{snapshot_id}.jpg").write_bytes(snapshot_jpeg(scale=1 - n / 10))
        event = make_event(kind="cross", zone=None, line=f"door-{n}", direction="in", snapshot_id=snapshot_id)
        sink.on_event(event)
        print(f"fed {event.id}", flush=True)
    sink.flush()
    print("spooled", flush=True)
    sink.start()  # after spooling, so that the first batch holds every event fed
    threading.Event().wait()  # until killed


if __name__ == "__main__":
    _feed(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
