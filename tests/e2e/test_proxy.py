"""Every outbound Roboflow request honours HTTPS_PROXY / HTTP_PROXY / NO_PROXY, through a real local proxy,
and no request holds the uploader past its deadline."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.roboflow.client import Outcome, RoboflowClient
from daemon.roboflow.ve_client import VisionEventsClient
from tests.support.daemon import run_cli
from tests.support.proxy import ForwardProxy
from tests.support.roboflow_server import RoboflowServer
from tests.support.vision_events import config_toml, snapshot_jpeg
from tests.support.vision_events_server import VisionEventsServer

KEY = "rf_SECRET_abc123"
PROXY_PASSWORD = "pr0xy-S3CRET"


@pytest.fixture
def tls_server(loopback_certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[
    VisionEventsServer
]:
    """The Vision Events stand-in over HTTPS, its certificate trusted the standard way (SSL_CERT_FILE)."""
    monkeypatch.setenv("SSL_CERT_FILE", str(loopback_certificate[0]))
    server = VisionEventsServer(api_key=KEY, tls=loopback_certificate).start()
    yield server
    server.stop()


@pytest.fixture
def authenticated_proxy() -> Iterator[ForwardProxy]:
    proxy = ForwardProxy(user="edge@site", password=PROXY_PASSWORD).start()
    yield proxy
    proxy.stop()


def test_https_goes_through_a_connect_tunnel_with_the_proxy_credentials(
    tls_server: VisionEventsServer, authenticated_proxy: ForwardProxy
) -> None:
    client = VisionEventsClient(tls_server.url, KEY, environ={"HTTPS_PROXY": authenticated_proxy.url()})
    response, source_id = client.upload_image(snapshot_jpeg(), "a.jpg")
    assert response.outcome is Outcome.ACCEPTED and source_id in tls_server.images
    now = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    event = {"eventId": "0b6f7f3e-8f4e-4d2a-9c1b-2f3e4d5c6b7a", "eventType": "custom", "useCaseId": "u",
             "timestamp": now, "images": [{"sourceId": source_id}]}
    assert client.send_batch([event]).outcome is Outcome.ACCEPTED
    client.close()

    # one tunnel for both requests (kept alive), opened with the credentials; TLS end to end through it
    assert [(r.method, r.target) for r in authenticated_proxy.requests] == [
        ("CONNECT", f"127.0.0.1:{tls_server.port}")
    ]
    assert authenticated_proxy.requests[0].authorization.startswith("Basic ")
    assert [r.endpoint for r in tls_server.recorded(status=201)] == ["upload", "batch"]


def test_a_proxy_refusing_the_credentials_is_retried_and_never_shows_them(
    tls_server: VisionEventsServer, authenticated_proxy: ForwardProxy
) -> None:
    wrong = authenticated_proxy.url().replace(PROXY_PASSWORD, "wrong-Pa55")
    client = VisionEventsClient(tls_server.url, KEY, environ={"https_proxy": wrong})
    response, _ = client.upload_image(snapshot_jpeg(), "a.jpg")
    assert (response.outcome, response.status) == (Outcome.RETRY, None)
    assert "407" in response.detail and f"proxy 127.0.0.1:{authenticated_proxy.port}" in response.detail
    assert "wrong-Pa55" not in response.detail and "edge@site" not in response.detail
    assert tls_server.requests == []


def test_model_monitoring_goes_through_an_http_proxy_with_the_absolute_uri(
    roboflow_server: RoboflowServer, forward_proxy: ForwardProxy
) -> None:
    roboflow_server.set_api_key(KEY)
    client = RoboflowClient(roboflow_server.url, KEY, environ={"http_proxy": forward_proxy.url()})
    assert client.send("report", "{}").outcome is Outcome.ACCEPTED
    assert client.send("metadata", "{}").outcome is Outcome.ACCEPTED
    client.close()
    targets = [r.target.split("?")[0] for r in forward_proxy.requests]
    assert targets == [
        f"{roboflow_server.url}/",
        f"{roboflow_server.url}/edge-tests/inference-stats",
        f"{roboflow_server.url}/edge-tests/inference-stats/metadata",
    ]
    assert [r.endpoint for r in roboflow_server.recorded(status=200)] == ["workspace", "report", "metadata"]


def test_no_proxy_reaches_the_server_directly(
    roboflow_server: RoboflowServer, forward_proxy: ForwardProxy
) -> None:
    roboflow_server.set_api_key(KEY)
    environ = {"HTTP_PROXY": forward_proxy.url(), "NO_PROXY": "localhost,127.0.0.0/8"}
    client = RoboflowClient(roboflow_server.url, KEY, workspace="edge-tests", environ=environ)
    assert client.send("report", "{}").outcome is Outcome.ACCEPTED
    assert forward_proxy.requests == []


def test_a_trickling_answer_is_cut_off_at_the_deadline(vision_events_server: VisionEventsServer) -> None:
    vision_events_server.api_key = KEY
    vision_events_server.trickle("upload", 0.3)  # a byte every 0.3 s: each read alone would never time out
    client = VisionEventsClient(vision_events_server.url, KEY, timeout=1.0)
    started = time.monotonic()
    response, source_id = client.upload_image(snapshot_jpeg(), "a.jpg")
    elapsed = time.monotonic() - started
    assert (response.outcome, source_id) == (Outcome.RETRY, None)
    assert "timed out" in response.detail and KEY not in response.detail
    assert elapsed < 2.0, elapsed
    vision_events_server.clear()
    response, source_id = client.upload_image(snapshot_jpeg(), "a.jpg")  # the next request starts afresh
    assert response.outcome is Outcome.ACCEPTED and source_id


def test_a_proxy_variable_that_is_not_a_proxy_url_is_a_config_error(tmp_path: Path, demo_model: Path) -> None:
    config = config_toml(tmp_path, "https://api.roboflow.com", KEY)
    config.write_text(config.read_text().replace('path = "model.onnx"', f'path = "{demo_model}"'))
    result = run_cli(["run", "-c", str(config), "--duration", "1"], cwd=tmp_path,
                     env={"HTTPS_PROXY": "socks5://127.0.0.1:1080"})
    assert result.returncode == 2, result.stderr
    assert "vision_events: the environment's https_proxy must look like http://" in result.stderr
    assert "Traceback" not in result.stderr
