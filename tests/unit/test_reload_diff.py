"""diff(old, new): which cameras were added, removed or changed (with which keys), which sections changed."""

from __future__ import annotations

from pathlib import Path

from daemon.config import Config
from daemon.reload.diff import diff


def config(cameras: list[dict] | None = None, **sections: dict) -> Config:
    body = {"model": {"path": "/m.onnx"}, "device": {"id": "edge-01"}, **sections}
    body["cameras"] = cameras if cameras is not None else [
        {"id": "a", "url": "rtsp://h/a"}, {"id": "b", "url": "rtsp://h/b", "fps": 5},
    ]
    return Config.model_validate(body)


def test_same_config_is_no_change() -> None:
    change = diff(config(), config())
    assert change.empty and change.summary() == "no changes" and change.restart_needed() == []


def test_source_path_alone_is_no_change() -> None:
    assert diff(config(), config().model_copy(update={"source": Path("/etc/x.toml")})).empty


def test_cameras_added_removed_and_changed_with_their_keys() -> None:
    new = config([
        {"id": "b", "url": "rtsp://h/b", "fps": 2, "metadata": {"line": "2"}},
        {"id": "c", "url": "rtsp://h/c"},
    ])
    change = diff(config(), new)
    assert [camera.id for camera in change.cameras_added] == ["c"]
    assert change.cameras_removed == ("a",)
    assert change.cameras_changed == {"b": ("fps", "metadata")}
    assert change.sections_changed == {}
    assert change.summary() == "cameras +c -a ~b(fps, metadata)"


def test_reordering_cameras_changes_nothing() -> None:
    old = config()
    assert diff(old, config(list(reversed([c.model_dump() for c in old.cameras])))).empty


def test_model_keys_say_whether_a_new_session_is_needed() -> None:
    only_id = diff(config(), config(model={"path": "/m.onnx", "id": "coco/4"}))
    assert only_id.model_keys == ("id",) and not only_id.needs_new_session
    thresholds = diff(config(), config(model={"path": "/m.onnx", "confidence": 0.5}))
    assert not thresholds.needs_new_session
    new_file = diff(config(), config(model={"path": "/n.onnx", "id": "coco/4"}))
    assert new_file.model_keys == ("path", "id") and new_file.needs_new_session
    providers = diff(config(), config(model={"path": "/m.onnx", "providers": ["cpu"]}))
    assert providers.needs_new_session


def test_sink_sections_apply_live_and_identity_sections_need_a_restart() -> None:
    change = diff(
        config(),
        config(
            mqtt={"host": "broker-2", "port": 1884},
            roboflow={"api_key": "k2", "frequency": 10, "workspace": "ws"},
            alerts={"camera_down_after": 5},
            api={"keys": ["new"]},
        ),
    )
    assert change.sections_changed == {
        "roboflow": ("api_key", "workspace", "frequency"),
        "mqtt": ("host", "port"),
        "alerts": ("camera_down_after",),
        "api": ("keys",),
    }
    assert change.restart_needed() == []
    assert "k2" not in change.summary() and "new" not in change.summary()  # names keys, never values

    identity = diff(config(), config(device={"id": "edge-02"}, metrics={"port": 9200},
                                     roboflow={"spool": "/x/spool.db"}, api={"port": 9002}))
    assert identity.restart_needed() == ["device.id", "roboflow.spool", "metrics.port", "api.port"]
