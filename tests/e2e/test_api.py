"""The HTTP inference API, driven by the real inference_sdk client against the real model on real photos.

Most tests use edgewatch's inference path in this process (tests/support/edge.py: the real Model, board,
inference worker, dispatcher, Model Monitoring sink, history and API server, with a camera feeding the board);
the last one runs the whole daemon.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import struct
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from inference_sdk import InferenceConfiguration, InferenceHTTPClient
from inference_sdk.http.errors import HTTPCallErrorError

from daemon.demo import photo_path, write_demo_clip
from daemon.metrics import Metrics
from daemon.model.session import Model
from daemon.pipeline.board import FrameBoard
from daemon.web.api import ApiServer, ModelInfo
from tests.support.daemon import free_port, wait_until
from tests.support.edge import PHOTOS, Edge, edge_config, photo
from tests.support.roboflow_server import RoboflowServer

KEY = "edge-key-7f3a91"
MODEL_ID = "coco/3"


@pytest.fixture(scope="module")
def roboflow() -> Iterator[RoboflowServer]:
    server = RoboflowServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, demo_model: Path, model: Model, roboflow: RoboflowServer):
    folder = tmp_path_factory.mktemp("edge")
    config = edge_config(folder, demo_model, {"kitchen": "coffee.png"}, roboflow.url, keys=[KEY])
    stack = Edge(config, model).start()
    yield stack
    stack.close()


def client(edge: Edge, key: str = KEY, **configuration: Any) -> InferenceHTTPClient:
    sdk = InferenceHTTPClient(api_url=edge.url, api_key=key)
    sdk.configure(
        InferenceConfiguration(
            api_key_transport=configuration.pop("api_key_transport", "legacy"), **configuration
        )
    )
    return sdk


def classes(result: dict) -> list[str]:
    return [prediction["class"] for prediction in result["predictions"]]


def post(
    edge: Edge, body: Any, path: str = "/infer/object_detection", key: str | None = KEY
) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return requests.post(edge.url + path, data=data, headers=headers, timeout=30)


def b64(data: bytes) -> dict[str, str]:
    return {"type": "base64", "value": base64.b64encode(data).decode()}


def png_header(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG claiming `width` x `height` RGB pixels: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 4096)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def infer_count(edge: Edge, status: int) -> float:
    value = edge.metrics.registry.get_sample_value(
        "edgewatch_api_requests_total", {"endpoint": "infer", "status": str(status)}
    )
    return value or 0.0


def test_infer_on_a_photo_file_a_numpy_image_and_a_list(edge: Edge) -> None:
    sdk = client(edge)
    cup = sdk.infer(str(PHOTOS / "coffee.png"), model_id=MODEL_ID)
    assert cup["image"] == {"width": 600, "height": 400}
    assert classes(cup) == ["cup"]
    (box,) = cup["predictions"]
    assert set(box) == {"x", "y", "width", "height", "confidence", "class", "class_id", "detection_id"}
    assert 200 < box["x"] < 380 and 100 < box["y"] < 240 and box["class_id"] == 41  # the cup, mid-photo
    assert 0.5 < box["confidence"] < 0.8
    assert len(cup["inference_id"]) == 36 and cup["time"] > 0

    motorbike = sdk.infer(photo("motorcycle_left.png"), model_id=MODEL_ID)  # sent as JPEG by the client
    assert motorbike["image"] == {"width": 741, "height": 500}
    assert classes(motorbike) == ["motorbike"]

    before = infer_count(edge, 200)
    with sdk.use_configuration(InferenceConfiguration(api_key_transport="legacy", max_batch_size=2)):
        both = sdk.infer([str(PHOTOS / "coffee.png"), photo("camera.png")], model_id=MODEL_ID)
    assert [classes(result) for result in both] == [["cup"], ["person", "person"]]
    assert infer_count(edge, 200) == before + 1  # the list went as one request and came back in order
    assert len({result["inference_id"] for result in both}) == 2


def test_request_options_thresholds_class_filter_and_class_agnostic_nms(edge: Edge) -> None:
    sdk = client(edge)
    coffee = str(PHOTOS / "coffee.png")

    def run(**options: Any) -> list[str]:
        with sdk.use_configuration(InferenceConfiguration(api_key_transport="legacy", **options)):
            return classes(sdk.infer(coffee, model_id=MODEL_ID))

    assert run(confidence_threshold=0.9) == []
    low = run(confidence_threshold=0.05)
    assert sorted(low) == ["cup", "diningtable", "fork"]
    # the dining table box lies over the cup: only NMS across classes removes it
    assert sorted(run(confidence_threshold=0.05, class_agnostic_nms=True)) == ["cup", "fork"]
    assert run(confidence_threshold=0.05, class_filter=["fork", "unicorn"]) == ["fork"]
    assert run(confidence_threshold=0.05, max_detections=1) == ["cup"]
    with sdk.use_configuration(InferenceConfiguration(api_key_transport="legacy", max_detections=1)):
        assert classes(sdk.infer(photo("camera.png"), model_id=MODEL_ID)) == ["person"]


def test_server_info_and_model_management(edge: Edge) -> None:
    sdk = client(edge)
    info = sdk.get_server_info()
    assert info.name == "edgewatch" and info.version and len(info.uuid) == 36

    (loaded,) = sdk.list_loaded_models().models
    assert (loaded.model_id, loaded.task_type, loaded.input_height, loaded.input_width) == (
        MODEL_ID,
        "object-detection",
        416,
        416,
    )
    assert loaded.batch_size == 4
    assert [m.model_id for m in sdk.load_model(MODEL_ID, set_as_default=True).models] == [MODEL_ID]
    assert classes(sdk.infer(str(PHOTOS / "coffee.png"))) == ["cup"]  # the default model set above

    with pytest.raises(HTTPCallErrorError) as unknown:
        sdk.load_model("someone-elses/7")
    assert unknown.value.status_code == 404 and "coco/3" in unknown.value.api_message

    # the client sends no key with these in its legacy mode; with header transport it does
    header = client(edge, api_key_transport="header")
    assert [m.model_id for m in header.unload_model(MODEL_ID).models] == [MODEL_ID]  # kept: it serves cameras
    assert [m.model_id for m in header.unload_all_models().models] == [MODEL_ID]
    assert classes(header.infer(str(PHOTOS / "coffee.png"), model_id=MODEL_ID)) == ["cup"]


def test_a_wrong_or_missing_key_is_refused_and_no_key_is_ever_logged(
    edge: Edge, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edgewatch")
    with pytest.raises(HTTPCallErrorError) as refused:
        client(edge, key="not-the-key").infer(str(PHOTOS / "coffee.png"), model_id=MODEL_ID)
    assert refused.value.status_code == 401

    coffee = b64((PHOTOS / "coffee.png").read_bytes())
    body = {"model_id": MODEL_ID, "image": coffee}
    assert post(edge, body, key=None).status_code == 401
    assert post(edge, {**body, "api_key": "not-the-key"}, key=None).status_code == 401
    assert post(edge, {**body, "api_key": KEY}, key=None).status_code == 200
    assert requests.get(f"{edge.url}/model/registry?api_key={KEY}", timeout=10).status_code == 200
    assert requests.get(f"{edge.url}/model/registry?api_key=nope", timeout=10).status_code == 401
    assert requests.get(f"{edge.url}/api/summary", timeout=10).status_code == 401
    page = requests.get(f"{edge.url}/", timeout=10)
    assert page.status_code == 200 and "Model Monitoring" in page.text  # the page itself holds no data
    assert (
        requests.get(
            f"{edge.url}/api/summary", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        ).status_code
        == 200
    )
    assert requests.get(f"{edge.url}/info", timeout=10).status_code == 200  # the client sends no key here
    ours = "\n".join(record.getMessage() for record in caplog.records if record.name.startswith("edgewatch"))
    assert KEY not in ours and "not-the-key" not in ours
    assert "GET /model/registry -> 401" in ours  # requests are logged, without their query strings


def test_bad_requests_get_clear_errors_while_the_camera_keeps_being_inferred(
    edge: Edge, tmp_path: Path
) -> None:
    wait_until(lambda: edge.frames_inferred("kitchen") > 0, 10, message="camera frames inferred")
    before = edge.frames_inferred("kitchen")

    def refused(body: Any, status: int, words: str) -> None:
        response = post(edge, body)
        assert response.status_code == status, response.text
        assert words in response.json()["message"]
        assert KEY not in response.text

    refused({"model_id": MODEL_ID, "image": {"type": "base64", "value": "%%% not base64 %%%"}}, 400, "base64")
    text = tmp_path / "notes.txt"
    text.write_text("these are meeting notes, not a photo\n" * 20)
    refused({"model_id": MODEL_ID, "image": b64(text.read_bytes())}, 400, "not an image")
    refused(
        {"model_id": MODEL_ID, "image": [b64((PHOTOS / "coffee.png").read_bytes()), b64(b"GIF89a broken")]},
        400,
        "image 1",
    )
    bomb = b64(png_header(100_000, 100_000))  # 30 GB once decoded
    refused({"model_id": MODEL_ID, "image": bomb}, 400, "pixels")
    refused({"model_id": MODEL_ID, "image": b64(png_header(6000, 5000))}, 400, "pixels")
    refused({"model_id": MODEL_ID, "image": [b64(b"x")] * 17}, 400, "at most 16 images")
    refused({"model_id": MODEL_ID, "image": {"type": "numpy", "value": "gASV"}}, 400, "pickled")
    refused(
        {"model_id": MODEL_ID, "image": {"type": "url", "value": "http://127.0.0.1:9/x.jpg"}},
        400,
        "allow_url_images",
    )
    refused({"model_id": MODEL_ID}, 400, "image")
    refused(b"{not json", 400, "JSON")
    refused({"model_id": MODEL_ID, "image": b64(b"x"), "confidence": 7}, 400, "confidence")
    refused({"model_id": MODEL_ID, "image": b64(b"x"), "source_info": "line A/1"}, 400, "source_info")
    refused(
        {"model_id": "someone-elses/7", "image": b64((PHOTOS / "coffee.png").read_bytes())}, 404, "coco/3"
    )
    assert post(edge, {"model_id": MODEL_ID}, path="/infer/classification").status_code == 404

    # a 50 MB body: refused from its Content-Length, whatever the client does next
    big = post(edge, b"x" * (50 * 1024 * 1024))
    assert big.status_code == 413 and "max_body_mb" in big.json()["message"]
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", edge.api.port), timeout=10) as sock:
        sock.sendall(
            f"POST /infer/object_detection HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n".encode()
            + b"x" * 65536
        )
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] == b"413"
    assert time.monotonic() - started < 2  # answered without waiting for (or reading) the other 49.9 MB

    good = post(edge, {"model_id": MODEL_ID, "image": b64((PHOTOS / "coffee.png").read_bytes())})
    assert good.status_code == 200 and classes(good.json()) == ["cup"]
    wait_until(
        lambda: edge.frames_inferred("kitchen") >= before + 5, 10, message="more camera frames inferred"
    )
    assert edge.worker.is_alive() and edge.dispatcher.is_alive()


def test_api_requests_are_monitored_per_stream(edge: Edge, roboflow: RoboflowServer) -> None:
    sdk = client(edge, source_info="lineA")
    result = sdk.infer(str(PHOTOS / "coffee.png"), model_id=MODEL_ID)

    def line_a_reports() -> list[dict]:
        return [body for body in roboflow.accepted("report") if body["source_info"] == "lineA"]

    (report,) = roboflow.wait_for(line_a_reports, timeout=10, message="a report for stream lineA")
    (entry,) = report["inference_results"]
    assert (entry["class_name"], entry["inference_id"], entry["model_id"]) == (
        "cup",
        result["inference_id"],
        MODEL_ID,
    )
    assert report["source"] == "edge-test"
    metadata = roboflow.wait_for(
        lambda: [
            body
            for body in roboflow.accepted("metadata")
            if result["inference_id"] in body["data"][0]["inference_ids"]
        ],
        timeout=10,
        message="the custom metadata of the lineA report",
    )
    assert {(d["field_name"], d["field_value"]) for d in metadata[0]["data"]} == {("camera", "lineA")}
    camera_reports = [body for body in roboflow.accepted("report") if body["source_info"] == "kitchen"]
    assert all(
        e["inference_id"] != result["inference_id"] for b in camera_reports for e in b["inference_results"]
    )

    streams = requests.get(
        f"{edge.url}/api/streams?range=hour", headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    ).json()
    (line_a,) = [stream for stream in streams if stream["stream"] == "lineA"]
    assert line_a["source"] == "api" and line_a["inferences"] >= 1


def test_overload_gets_503_with_retry_after_and_a_stop_answers_waiting_requests(
    tmp_path: Path, demo_model: Path, model: Model
) -> None:
    """No inference worker runs here: requests queue on the board until it is full."""
    config = edge_config(tmp_path, demo_model, {}, "http://127.0.0.1:9", max_pending=2)
    board = FrameBoard([], on_stale=lambda frame: None, max_requests=2)
    metrics = Metrics()
    api = ApiServer(config, ModelInfo.of(model), board, history=None, metrics=metrics.api)
    api.start()
    url = f"http://127.0.0.1:{api.port}/infer/object_detection"
    body = {"model_id": MODEL_ID, "image": b64((PHOTOS / "coffee.png").read_bytes())}
    answers: list[requests.Response] = []
    waiting = [
        threading.Thread(target=lambda: answers.append(requests.post(url, json=body, timeout=30)))
        for _ in range(2)
    ]
    try:
        for thread in waiting:
            thread.start()
        waiting_now = lambda: metrics.registry.get_sample_value("edgewatch_api_requests_waiting")  # noqa: E731
        wait_until(lambda: waiting_now() == 2, 10, message="two requests waiting for inference")
        busy = requests.post(url, json=body, timeout=10)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert "busy" in busy.json()["message"]
    finally:
        started = time.monotonic()
        board.close()
        api.close()
        for thread in waiting:
            thread.join(10)
    assert time.monotonic() - started < 3
    assert [(a.status_code, a.json()["message"]) for a in answers] == [(503, "edgewatch is stopping")] * 2
    with pytest.raises(requests.ConnectionError):
        requests.post(url, json=body, timeout=5)


def test_the_daemon_serves_the_api_and_reports_requests_as_their_own_stream(
    tmp_path: Path, start_daemon, demo_model: Path, roboflow_server: RoboflowServer
) -> None:
    """The whole daemon: a camera clip, the API on, reports to the local Roboflow server."""
    clip = write_demo_clip(photo_path("coffee.png"), tmp_path / "coffee.mp4", seconds=3, fps=5)
    api_port = free_port()
    daemon = start_daemon(f"""
[device]
id = "api-box"

[model]
path = "{demo_model}"
cache_dir = "{tmp_path / "trt"}"

[[cameras]]
id = "kitchen"
url = "{clip}"
fps = 5
loop = true
metadata = {{ location = "plant-a" }}

[roboflow]
api_key = "{roboflow_server.api_key}"
api_url = "{roboflow_server.url}"
frequency = 1
spool = "state/spool.db"

[mqtt]
enabled = false

[metrics]
host = "127.0.0.1"
port = {free_port()}

[api]
enabled = true
port = {api_port}
keys = ["{KEY}"]
""")
    daemon.wait_for_output(r"HTTP inference API", timeout=60)
    sdk = InferenceHTTPClient(api_url=f"http://127.0.0.1:{api_port}", api_key=KEY)
    sdk.configure(InferenceConfiguration(api_key_transport="legacy", source_info="lineA"))
    result = sdk.infer(str(PHOTOS / "coffee.png"), model_id=MODEL_ID)
    assert classes(result) == ["cup"]

    def reported(stream: str) -> list[dict]:
        return [body for body in roboflow_server.accepted("report") if body["source_info"] == stream]

    roboflow_server.wait_for(
        lambda: reported("lineA") and reported("kitchen"),
        timeout=30,
        message="reports for the request stream and the camera",
    )
    assert [e["inference_id"] for e in reported("lineA")[0]["inference_results"]] == [result["inference_id"]]

    def api(path: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{api_port}/api/{path}", headers={"Authorization": f"Bearer {KEY}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    assert api("summary?range=hour")["current"]["inferences"] > 1
    samples = wait_until(lambda: api("samples?camera=kitchen")["samples"], 15, message="samples of kitchen")
    assert samples[0]["metadata"] == {"camera": "kitchen", "location": "plant-a"}
    assert daemon.terminate() == 0
    assert KEY not in daemon.output()
