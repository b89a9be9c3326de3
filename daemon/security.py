"""Settings that work but expose something: said once at start (and by `edgewatch check`), never refused."""

from __future__ import annotations

import ipaddress
import urllib.parse

from daemon.config import Config


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_warnings(config: Config) -> list[str]:
    """One line per risky setting, naming the key and what it exposes (never a secret's value)."""
    warnings = []
    api = config.api
    if api.enabled and not api.keys and not is_loopback(api.host):
        warnings.append(
            f"api.host is {api.host} and api.keys is empty: anyone who can reach port {api.port} can run "
            "inference and read the monitoring page; set api.keys or bind to 127.0.0.1"
        )
    roboflow = config.roboflow
    if (
        roboflow.enabled
        and roboflow.api_key.get_secret_value()
        and urllib.parse.urlsplit(roboflow.api_url).scheme == "http"
    ):
        warnings.append(
            "roboflow.api_url uses http://: the Roboflow API key travels in clear text; use https://"
        )
    mqtt = config.mqtt
    if mqtt.enabled and mqtt.password.get_secret_value() and not mqtt.tls:
        warnings.append(
            "mqtt.password is set but mqtt.tls is false: the password travels in clear text; "
            "set mqtt.tls = true (and a TLS port on the broker)"
        )
    return warnings
