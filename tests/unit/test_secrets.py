"""Secrets fail closed: an empty API key refuses to start, a secret is never echoed in a config error or a
log line whatever its length, and settings that expose one are warned about."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from daemon.config import ConfigError, load_config
from daemon.logs import RedactingFormatter
from daemon.security import config_warnings

BASE = """
[model]
path = "m.onnx"
"""


def load(tmp_path: Path, text: str):
    path = tmp_path / "config.toml"
    path.write_text(BASE + text)
    return load_config(path)


def test_an_api_key_that_expands_to_nothing_is_a_config_error(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("EDGEWATCH_API_KEY", raising=False)
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, '[api]\nenabled = true\nkeys = ["good-key", "${EDGEWATCH_API_KEY}"]\n')
    assert str(caught.value) == (
        f"{tmp_path / 'config.toml'}: api.keys[1]: the key is empty "
        "(${EDGEWATCH_API_KEY} expands to nothing: is the variable set?)"
    )
    with pytest.raises(ConfigError, match=r"api.keys\[0\]: the key is empty$"):
        load(tmp_path, '[api]\nkeys = [""]\n')
    monkeypatch.setenv("EDGEWATCH_API_KEY", "from-env")
    config = load(tmp_path, '[api]\nkeys = ["${EDGEWATCH_API_KEY}"]\n')
    assert config.api.keys[0].get_secret_value() == "from-env"


@pytest.mark.parametrize(
    "text",
    [
        '[api]\nkeys = "Sup3rSecretKey"\n',
        '[roboflow]\napi_key = ["Sup3rSecretKey"]\n',
        '[mqtt]\npassword = {value = "Sup3rSecretKey"}\n',
    ],
)
def test_a_mistyped_secret_is_not_echoed_in_the_error(tmp_path, text) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert "Sup3rSecretKey" not in str(caught.value) and "config.toml: " in str(caught.value)


def test_secrets_of_any_length_are_masked_in_log_lines() -> None:
    formatter = RedactingFormatter(["k9", "", "longer-secret"])
    record = logging.LogRecord(
        "edgewatch", logging.INFO, __file__, 1, "key=%s pw=%s", ("k9", "longer-secret"), None
    )
    line = formatter.format(record)
    assert "k9" not in line and "longer-secret" not in line and line.endswith("key=*** pw=***")


def test_risky_settings_are_warned_about_and_safe_ones_are_not(tmp_path) -> None:
    risky = load(
        tmp_path,
        '[api]\nenabled = true\nhost = "0.0.0.0"\n'
        '[roboflow]\napi_key = "rf-secret"\napi_url = "http://roboflow.internal"\n'
        '[mqtt]\npassword = "mq-secret"\n',
    )
    warnings = config_warnings(risky)
    assert [line.split(" ", 1)[0] for line in warnings] == ["api.host", "roboflow.api_url", "mqtt.password"]
    assert not any("secret" in line for line in warnings)
    safe = load(
        tmp_path,
        '[api]\nenabled = true\nhost = "0.0.0.0"\nkeys = ["k"]\n'
        '[roboflow]\napi_key = "rf-secret"\n[mqtt]\npassword = "mq-secret"\ntls = true\n',
    )
    assert config_warnings(safe) == []
    assert config_warnings(load(tmp_path, "[api]\nenabled = true\n")) == []  # loopback without keys
