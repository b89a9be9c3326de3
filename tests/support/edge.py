"""edgewatch in this process: the real Service (model, board, worker, dispatcher, sinks, API, history), with
photo cameras (the real Camera bookkeeping, one real photo as the stream) in place of capture threads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import skimage.data

from daemon.config import Config
from daemon.model.session import Model
from daemon.pipeline.capture import Camera
from daemon.service import Service

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
                {"id": camera, "url": name, "fps": 5, "metadata": {"location": "plant-a", "photo": name}}
                for camera, name in cameras.items()
            ],
            "roboflow": {
                "api_key": "rf_test_key",
                "api_url": roboflow_url,
                "frequency": 1,
                "spool": str(tmp_path / "spool.db"),
            },
            "mqtt": {"enabled": False},
            "metrics": {"enabled": False},
            "api": {"enabled": True, "host": "127.0.0.1", "port": 0, **api},
        }
    )


class PhotoCamera(Camera):
    """A camera whose stream is one real photo (its `url`), delivered at its `fps`."""

    def run(self) -> None:
        image = photo(self.config.url)
        while not self._halt.wait(1 / self.config.fps):
            self._deliver(image.copy())
        self._set_online(False, "stopped")


@pytest.fixture(scope="session")
def model(tmp_path_factory: pytest.TempPathFactory, demo_model: Path) -> Model:
    """The demo model, loaded and warmed up once for every in-process stack."""
    folder = tmp_path_factory.mktemp("model")
    loaded = Model.load(edge_config(folder, demo_model, {}, "http://127.0.0.1:9").model)
    loaded.warm_up()
    return loaded


class Edge:
    def __init__(self, config: Config, model: Model) -> None:
        self.service = Service(config, model, camera_factory=PhotoCamera)
        self.metrics = self.service.metrics
        self.history = self.service.sinks.history
        self.api = self.service.api
        self.worker = self.service.worker
        self.dispatcher = self.service.dispatcher

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    def start(self) -> Edge:
        self.service.start()
        return self

    def frames_inferred(self, camera: str) -> float:
        value = self.metrics.registry.get_sample_value("edgewatch_frames_inferred_total", {"camera": camera})
        return value or 0.0

    def close(self) -> None:
        self.service.shutdown()
