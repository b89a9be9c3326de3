"""edgewatch's inference path in this process: the real Model, FrameBoard, InferenceWorker, Dispatcher,
MonitoringSink, History and ApiServer, wired as daemon/service.py wires them, with camera feeders putting
real photos on the board at a steady rate in place of camera threads.

Stopped in the service's order: cameras, worker, board, API, dispatcher (which flushes and closes the sinks).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data

from daemon.api import ApiServer, ModelInfo
from daemon.board import FrameBoard
from daemon.config import Config
from daemon.dispatcher import Dispatcher
from daemon.frames import Frame, Sink
from daemon.history import History
from daemon.inference import InferenceWorker
from daemon.metrics import Metrics
from daemon.model import Model
from daemon.monitoring import MonitoringSink

PHOTOS = Path(skimage.data.__file__).parent


def photo(name: str) -> np.ndarray:
    """A scikit-image photo, BGR (coffee.png: a cup, motorcycle_left.png: a motorbike, camera.png: people)."""
    image = cv2.imread(str(PHOTOS / name), cv2.IMREAD_COLOR)
    assert image is not None, name
    return image


def edge_config(
    tmp_path: Path, model: Path, cameras: dict[str, str], roboflow_url: str, **api: Any
) -> Config:
    """A config for the stack: `cameras` maps camera id -> photo name; `api` overrides [api] keys."""
    return Config.model_validate(
        {
            "device": {"id": "edge-test"},
            "model": {"path": str(model), "providers": ["cpu"], "max_batch": 4, "cache_dir": str(tmp_path)},
            "cameras": [
                {"id": camera, "url": name, "metadata": {"location": "plant-a", "photo": name}}
                for camera, name in cameras.items()
            ],
            "roboflow": {
                "api_key": "rf_test_key",
                "api_url": roboflow_url,
                "frequency": 1,
                "spool": str(tmp_path / "spool.db"),
            },
            "mqtt": {"enabled": False},
            "api": {"enabled": True, "host": "127.0.0.1", "port": 0, **api},
        }
    )


class Feeder(threading.Thread):
    """Puts one camera's photo on the board `fps` times a second, as a camera thread does with frames."""

    def __init__(self, board: FrameBoard, camera: str, image, fps: float, stop: threading.Event) -> None:
        super().__init__(name=f"feeder-{camera}", daemon=True)
        self._board, self._camera, self._image, self._period, self._halt = board, camera, image, 1 / fps, stop

    def run(self) -> None:
        self._board.set_live(self._camera, True)
        frame_id = 0
        while not self._halt.wait(self._period):
            frame_id += 1
            self._board.put(Frame(self._camera, frame_id, time.time(), time.monotonic(), self._image.copy()))
        self._board.set_live(self._camera, False)


@dataclass
class Edge:
    config: Config
    model: Model
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        config = self.config
        self._feed_stop = threading.Event()
        self._worker_stop = threading.Event()
        self._dispatch_stop = threading.Event()
        self.board = FrameBoard(
            [camera.id for camera in config.cameras],
            on_stale=lambda frame: None,
            max_requests=config.api.max_pending,
        )
        self.history = History(config.roboflow.spool.with_name("history.db"), persist_interval=0.5)
        self.monitoring = MonitoringSink(config, self.metrics, on_report=self.history.record_report)
        # the history after the monitoring sink: its close must come after the last report is spooled
        sinks: list[Sink] = [self.monitoring, self.history]
        self.dispatcher = Dispatcher(sinks, self.metrics, self._dispatch_stop, api_sinks=tuple(sinks))
        self.worker = InferenceWorker(
            self.model,
            config.model.id,
            self.board,
            self.dispatcher.submit,
            self.metrics,
            config.model.max_batch,
            config.model.batch_timeout_ms / 1000,
            self._worker_stop,
        )
        self.api = ApiServer(config, ModelInfo.of(self.model), self.board, self.history, self.metrics)
        self.feeders = [
            Feeder(self.board, camera.id, photo(camera.url), 5, self._feed_stop) for camera in config.cameras
        ]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    def start(self) -> Edge:
        self.dispatcher.start()
        self.worker.start()
        self.api.start()
        for feeder in self.feeders:
            feeder.start()
        return self

    def frames_inferred(self, camera: str) -> float:
        value = self.metrics.registry.get_sample_value("edgewatch_frames_inferred_total", {"camera": camera})
        return value or 0.0

    def close(self) -> None:
        self._feed_stop.set()
        for feeder in self.feeders:
            feeder.join(5)
        self._worker_stop.set()
        self.board.close()
        self.worker.join(5)
        self.api.close()
        self._dispatch_stop.set()
        self.dispatcher.join(15)
