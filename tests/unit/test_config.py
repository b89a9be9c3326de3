"""config.toml -> Config: the keys of the contract, env expansion, and errors that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import ConfigError, find_config, load_config, unknown_event_classes

MINIMAL = """
[model]
path = "models/m.onnx"

[[cameras]]
id = "line-1"
url = "clips/a.mp4"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert config.model.path == tmp_path / "models/m.onnx"
    assert config.cameras[0].url == str(tmp_path / "clips/a.mp4")
    assert (config.model.confidence, config.model.iou, config.model.max_batch) == (0.25, 0.45, None)
    assert config.model.providers == ["tensorrt", "cuda", "cpu"]
    assert config.roboflow.frequency == 5 and config.metrics.port == 9108
    assert config.mqtt.topic_prefix == "edgewatch" and config.api.host == "127.0.0.1"
    assert config.cameras[0].stall_timeout == 10
    assert config.device.id  # hostname


def test_urls_and_absolute_paths_stay(tmp_path: Path) -> None:
    text = (
        MINIMAL.replace('"clips/a.mp4"', '"rtsp://10.0.0.5/stream1"')
        + """
[[cameras]]
id = "usb"
url = "0"
[[cameras]]
id = "abs"
url = "/srv/a.mp4"
"""
    )
    config = load_config(write(tmp_path, text))
    assert [c.url for c in config.cameras] == ["rtsp://10.0.0.5/stream1", "0", "/srv/a.mp4"]


def test_env_expansion_and_secret_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROBOFLOW_API_KEY", "rf_very_secret")
    monkeypatch.delenv("MQTT_PASSWORD", raising=False)
    text = (
        MINIMAL
        + """
[roboflow]
api_key = "${ROBOFLOW_API_KEY}"
workspace = "${WS:-acme}"
[mqtt]
password = "${MQTT_PASSWORD}"
"""
    )
    config = load_config(write(tmp_path, text))
    assert config.roboflow.api_key.get_secret_value() == "rf_very_secret"
    assert config.roboflow.workspace == "acme"
    assert config.mqtt.password.get_secret_value() == ""
    assert "rf_very_secret" not in repr(config) and "rf_very_secret" not in str(config.model_dump())


def test_credentials_directory_supplies_the_api_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "roboflow_api_key").write_text("rf_from_systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    config = load_config(write(tmp_path, MINIMAL))
    assert config.roboflow.api_key.get_secret_value() == "rf_from_systemd"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("[model]\npath='m.onnx'\ncolour = 1\n", "model.colour: unknown key"),
        ("[[cameras]]\nid='x'\nurl='a'\nfps='fast'\n", "cameras[1].fps: Input should be a valid number"),
        ("[[cameras]]\nid='bad id'\nurl='a'\n", "cameras[1].id: String should match pattern"),
        ("[[cameras]]\nid='line-1'\nurl='a'\n", "camera id 'line-1' is used twice"),
        (
            "[roboflow]\nfrequency = 0\n",
            "roboflow.frequency: Input should be greater than or equal to 1 (got 0)",
        ),
        ("[mqtt]\nport = 70000\n", "mqtt.port: Input should be less than or equal to 65535"),
        (
            "[[cameras]]\nid='y'\nurl='a'\nmetadata={camera='z'}\n",
            "cameras[1].metadata: 'camera' is set by edgewatch",
        ),
        ("[surprise]\na = 1\n", "surprise: unknown key"),
        ("[[cameras]]\nid='y'\nurl='a'\ndecoder='gpu'\n", "cameras[1].decoder: Input should be 'cpu' or"),
        (
            "[[cameras]]\nid='y'\nurl='gst:videotestsrc ! appsink'\ndecoder='cuda'\n",
            "cameras[1]: decoder = 'cuda' is for files and network streams; a gst: pipeline names its own",
        ),
        ("[[cameras]]\nid='y'\nurl='/dev/video0'\ndecoder='cuda'\n", "V4L2 devices are read by OpenCV"),
    ],
)
def test_errors_name_the_file_and_the_key(tmp_path: Path, extra: str, expected: str) -> None:
    base = (
        MINIMAL
        if not extra.startswith("[model]")
        else MINIMAL.replace('[model]\npath = "models/m.onnx"\n', "")
    )
    message = error_of(tmp_path, base + extra)
    assert message.startswith(str(tmp_path / "config.toml") + ": ")
    assert expected in message


def test_missing_model_section_and_bad_toml(tmp_path: Path) -> None:
    assert "model: required key is missing" in error_of(tmp_path, "[device]\nid = 'a'\n")
    assert "not valid TOML" in error_of(tmp_path, "[model\npath=1")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.toml")


def test_config_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGEWATCH_CONFIG", raising=False)
    assert find_config("given.toml") == Path("given.toml")
    (tmp_path / "config.toml").write_text(MINIMAL)
    assert find_config(None) == Path("config.toml")
    monkeypatch.setenv("EDGEWATCH_CONFIG", "/elsewhere.toml")
    assert find_config(None) == Path("/elsewhere.toml")


def test_the_readme_config_reference_is_a_valid_config(tmp_path: Path) -> None:
    """Every key README.md documents is accepted, with the documented values."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1]
    block = section.split("```toml\n", 1)[1].split("```", 1)[0]
    config = load_config(write(tmp_path, block))
    assert config.cameras[0].metadata == {"location": "plant-a", "line": "1"}
    assert config.api.enabled is False and config.mqtt.homeassistant is False
    assert config.alerts.confidence_drop_ratio == 0.7


def test_the_embedded_default_config_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "config.toml")
    assert len(config.cameras) >= 2 and config.model.path.name == "yolov3-tiny-coco.onnx"
    assert config.mqtt.enabled is False  # the demo needs no broker


STREET = (
    MINIMAL
    + """
[[cameras.zones]]
name = "walkway"
polygon = [[0.10, 0.55], [0.60, 0.55], [0.70, 1.0], [0.05, 1.0]]
classes = ["person"]
loiter_after = 30

[[cameras.lines]]
name = "door"
start = [0.45, 0.20]
end = [0.45, 0.90]
"""
)


def test_zones_and_lines_load_and_turn_tracking_on(tmp_path: Path) -> None:
    camera = load_config(write(tmp_path, STREET)).cameras[0]
    assert camera.tracked and not camera.track
    assert camera.zones[0].polygon[2] == (0.70, 1.0) and camera.zones[0].loiter_after == 30
    assert camera.lines[0].start == (0.45, 0.20) and camera.lines[0].classes == []
    assert not load_config(write(tmp_path, MINIMAL)).cameras[0].tracked


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "[[0.10, 0.55], [0.60, 0.55], [0.70, 1.0], [0.05, 1.0]]",
            "[[0.10, 0.55], [0.60, 0.55]]",
            "cameras[0].zones[0].polygon: a polygon needs at least 3 points (got 2)",
        ),
        (
            "end = [0.45, 0.90]",
            "end = [0.45, 0.20]",
            "cameras[0].lines[0]: line 'door': start and end are the same",
        ),
        (
            "[0.70, 1.0]",
            "[0.70, 1.5]",
            "cameras[0].zones[0].polygon[2][1]: Input should be less than or equal to 1",
        ),
        (
            "start = [0.45, 0.20]",
            "start = [-0.1, 0.20]",
            "cameras[0].lines[0].start[0]: Input should be greater",
        ),
        (
            "end = [0.45, 0.90]",
            'end = [0.45, 0.90]\n[[cameras.lines]]\nname = "door"\nstart = [0, 0]\nend = [1, 1]',
            "cameras[0]: line name 'door' is used twice on this camera",
        ),
        ('name = "walkway"', 'name = "walk way"', "cameras[0].zones[0].name: String should match pattern"),
        (
            "loiter_after = 30",
            "loiter_after = 0",
            "cameras[0].zones[0].loiter_after: Input should be greater than 0",
        ),
    ],
)
def test_bad_zones_and_lines_are_one_clear_line_each(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in STREET
    message = error_of(tmp_path, STREET.replace(old, new, 1))
    lines = message.splitlines()
    assert len(lines) == 1, message
    assert lines[0].startswith(f"{tmp_path / 'config.toml'}: {expected}"), message


def test_duplicate_zone_names_are_refused(tmp_path: Path) -> None:
    twice = STREET + STREET[STREET.index("[[cameras.zones]]") : STREET.index("[[cameras.lines]]")]
    message = error_of(tmp_path, twice)
    where = tmp_path / "config.toml"
    expected = "cameras[0]: zone name 'walkway' is used twice on this camera; names must be unique"
    assert message == f"{where}: {expected}"


def test_unknown_classes_are_named_once_the_model_is_known(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, STREET.replace('classes = ["person"]', 'classes = ["person", "forklift"]'))
    )
    assert unknown_event_classes(config, ["person", "car"]) == [
        f"{tmp_path / 'config.toml'}: cameras[0].zones[0].classes: the model has no class 'forklift'"
    ]
    assert unknown_event_classes(config, ["person", "forklift"]) == []
