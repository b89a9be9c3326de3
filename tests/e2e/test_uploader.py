"""Monitoring sink + spool + uploader + HTTP client against a local server speaking Roboflow's endpoints."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import supervision as sv
from prometheus_client import generate_latest

from daemon import __version__
from daemon.config import Config
from daemon.frames import FrameResult
from daemon.metrics import Metrics
from daemon.roboflow.client import Outcome, RoboflowClient, classify, parse_retry_after, redact
from daemon.roboflow.model_monitoring import MonitoringSink
from daemon.roboflow.spool import read_items
from tests.support.daemon import free_port
from tests.support.roboflow_server import RoboflowServer

KEY = "rf_SECRET_abc123"
REPORT_FIELDS = [  # Roboflow's aggregator block, in its order
    "timestamp", "source", "source_info", "inference_results", "device_id", "inference_server_version",
    "platform", "platform_release", "platform_version", "architecture", "hostname", "ip_address",
    "mac_address", "processor",
]


@pytest.fixture
def server(roboflow_server: RoboflowServer) -> RoboflowServer:
    roboflow_server.set_api_key(KEY)
    return roboflow_server


def make_config(tmp_path: Path, server: RoboflowServer, **roboflow: Any) -> Config:
    return Config.model_validate({
        "device": {"id": "edge-test"},
        "model": {"path": str(tmp_path / "model.onnx"), "id": "coco/3"},
        "cameras": [
            {"id": "dock", "url": "dock.mp4", "metadata": {"location": "plant-a", "line": "1"}},
            {"id": "gate", "url": "gate.mp4"},
        ],
        "roboflow": {
            "api_key": KEY, "api_url": server.url, "spool": str(tmp_path / "state" / "spool.db"),
            "frequency": 3600, "timeout": 2, **roboflow,
        },
    })


def frame(camera: str, *found: tuple[str, float], inference_id: str | None = None) -> FrameResult:
    detections = sv.Detections(
        xyxy=np.tile(np.array([[1.0, 2.0, 30.0, 40.0]]), (len(found), 1)).reshape(-1, 4),
        confidence=np.array([c for _, c in found], dtype=np.float32),
        class_id=np.arange(len(found)),
        data={"class_name": np.array([n for n, _ in found], dtype=object)},
    )
    now = time.time()
    return FrameResult(camera, 1, now, time.monotonic(), inference_id or str(uuid.uuid4()), "coco/3",
                       640, 480, detections, 0.02, 1)


def new_metrics() -> Metrics:
    metrics = Metrics()
    metrics.init_cameras(["dock", "gate"])  # as the service does: every report result series at 0
    return metrics


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


@pytest.fixture
def sinks():
    made: list[MonitoringSink] = []

    def make(config: Config, metrics: Metrics, **kwargs: Any) -> MonitoringSink:
        sink = MonitoringSink(config, metrics.monitoring, **kwargs)
        sink.start()
        made.append(sink)
        return sink

    yield make
    for sink in made:
        sink.close(30)


def test_report_and_metadata_bodies_field_by_field(tmp_path: Path, server: RoboflowServer, sinks) -> None:
    metrics = new_metrics()
    sink = sinks(make_config(tmp_path, server), metrics)
    sink.handle(frame("dock", ("person", 0.4), ("cup", 0.7), inference_id="id-a"))
    sink.handle(frame("dock", ("dog", 0.8), ("person", 0.9), inference_id="id-b"))
    sink.handle(frame("gate", ("car", 0.6), inference_id="id-c"))
    before = datetime.now().astimezone()
    sink.flush()
    server.wait_for(lambda: len(server.accepted("metadata")) == 2, message="2 reports and their metadata")

    assert len({r.peer for r in server.requests}) == 1  # one kept-alive connection for all of them
    lookups = server.recorded("workspace")
    assert [r.query for r in lookups] == [{"api_key": KEY, "nocache": "true"}]  # resolved once, cached
    posts = [r for r in server.requests if r.method == "POST"]
    assert [(r.endpoint, r.path) for r in posts] == [
        ("report", "/edge-tests/inference-stats"),
        ("metadata", "/edge-tests/inference-stats/metadata"),
        ("report", "/edge-tests/inference-stats"),
        ("metadata", "/edge-tests/inference-stats/metadata"),
    ]
    assert [r.query for r in posts] == [
        {"api_key": KEY}, {"api_key": KEY, "nocache": "true"},
        {"api_key": KEY}, {"api_key": KEY, "nocache": "true"},
    ]

    dock, gate = server.accepted("report")
    assert list(dock) == REPORT_FIELDS
    assert datetime.fromisoformat(dock["timestamp"]) >= before.replace(microsecond=0)
    assert datetime.fromisoformat(dock["timestamp"]).utcoffset() is not None
    assert (dock["source"], dock["source_info"], dock["device_id"]) == ("edge-test", "dock", "edge-test")
    assert dock["inference_server_version"] == __version__
    assert dock["inference_results"] == [
        {"model_id": "coco/3", "class_name": "person", "confidence": 0.9, "inference_id": "id-b",
         "model_type": "object-detection"},
        {"model_id": "coco/3", "class_name": "cup", "confidence": 0.7, "inference_id": "id-a",
         "model_type": "object-detection"},
        {"model_id": "coco/3", "class_name": "dog", "confidence": 0.8, "inference_id": "id-b",
         "model_type": "object-detection"},
    ]
    assert all(isinstance(dock[key], str) for key in REPORT_FIELDS[6:])
    assert dock["architecture"] and dock["hostname"]
    assert len(dock["mac_address"].split(":")) == 6
    assert (gate["source_info"], [r["class_name"] for r in gate["inference_results"]]) == ("gate", ["car"])

    dock_meta, gate_meta = server.accepted("metadata")
    assert dock_meta == {"data": [
        {"inference_ids": ["id-b", "id-a"], "field_name": "camera", "field_value": "dock"},
        {"inference_ids": ["id-b", "id-a"], "field_name": "location", "field_value": "plant-a"},
        {"inference_ids": ["id-b", "id-a"], "field_name": "line", "field_value": "1"},
    ]}
    assert gate_meta == {"data": [{"inference_ids": ["id-c"], "field_name": "camera", "field_value": "gate"}]}

    server.wait_for(lambda: sink.spool.depth == 0, message="an empty spool")
    assert sample(metrics, "edgewatch_monitoring_reports_total", result="sent") == 4
    assert sample(metrics, "edgewatch_monitoring_upload_duration_seconds_count") == 4
    assert sample(metrics, "edgewatch_monitoring_last_success_timestamp_seconds") >= before.timestamp() - 1
    state = sink.uploader_state()
    assert (state.unauthorized, state.failing_since, state.depth) == (False, None, 0)
    assert state.last_success is not None


def test_configured_workspace_skips_the_lookup(tmp_path: Path, server: RoboflowServer, sinks) -> None:
    server.workspace = "fixed-ws"
    sink = sinks(make_config(tmp_path, server, workspace="fixed-ws"), Metrics())
    sink.handle(frame("gate", ("car", 0.6)))
    sink.flush()
    server.wait_for(lambda: server.accepted("metadata"), message="the metadata request")
    assert server.recorded("workspace") == []
    assert [r.path for r in server.recorded("report")] == ["/fixed-ws/inference-stats"]


def test_outage_every_report_arrives_once_in_order(tmp_path: Path, server: RoboflowServer, sinks) -> None:
    server.fail("report", 503, times=3)
    metrics = new_metrics()
    sink = sinks(make_config(tmp_path, server), metrics, backoff_base=0.01, backoff_max=0.05)
    for k in range(3):
        sink.handle(frame("dock", ("cup", 0.5 + k / 10), inference_id=f"dock-{k}"))
        sink.handle(frame("gate", ("car", 0.5 + k / 10), inference_id=f"gate-{k}"))
        sink.flush()
    server.wait_for(lambda: len(server.accepted("metadata")) == 6, timeout=20, message="6 windows delivered")

    assert [r.status for r in server.recorded("report")] == [503, 503, 503, 200, 200, 200, 200, 200, 200]
    delivered = [
        (body["source_info"], [p["inference_id"] for p in body["inference_results"]])
        for body in server.accepted("report")
    ]
    assert delivered == [
        ("dock", ["dock-0"]), ("gate", ["gate-0"]),
        ("dock", ["dock-1"]), ("gate", ["gate-1"]),
        ("dock", ["dock-2"]), ("gate", ["gate-2"]),
    ]
    server.wait_for(lambda: sink.spool.depth == 0, message="an empty spool")
    assert sample(metrics, "edgewatch_spool_depth") == 0
    assert sample(metrics, "edgewatch_monitoring_reports_total", result="sent") == 12
    assert sample(metrics, "edgewatch_monitoring_reports_total", result="retried") == 3
    assert sample(metrics, "edgewatch_monitoring_reports_total", result="failed") == 0
    assert sink.uploader_state().failing_since is None


def test_retry_after_is_honoured(tmp_path: Path, server: RoboflowServer, sinks) -> None:
    server.fail("report", 429, times=1, retry_after="1")
    metrics = new_metrics()
    sink = sinks(make_config(tmp_path, server), metrics, backoff_base=0.01, backoff_max=0.05)
    sink.handle(frame("dock", ("cup", 0.5)))
    sink.flush()
    server.wait_for(lambda: server.accepted("report"), message="the report after the 429")
    first, second = server.recorded("report")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95  # the backoff alone would have been ~10 ms
    server.wait_for(lambda: sink.uploader_state().last_success is not None, message="a success")
    assert sink.uploader_state().failing_since is None


@pytest.mark.parametrize("workspace", ["", "edge-tests"], ids=["key-lookup", "configured-workspace"])
def test_refused_key_stops_sending_keeps_the_spool_and_recovers(
    tmp_path: Path, server: RoboflowServer, sinks, caplog: pytest.LogCaptureFixture, workspace: str
) -> None:
    caplog.set_level(logging.DEBUG)
    server.set_api_key("the-key-roboflow-knows")
    metrics = new_metrics()
    sink = sinks(make_config(tmp_path, server, workspace=workspace), metrics, unauthorized_retry=0.2)
    sink.handle(frame("dock", ("cup", 0.5), inference_id="kept-1"))
    sink.flush()
    server.wait_for(lambda: sink.uploader_state().unauthorized, message="the unauthorized state")
    assert sample(metrics, "edgewatch_monitoring_unauthorized") == 1
    endpoint = "report" if workspace else "workspace"
    server.wait_for(lambda: len(server.recorded(endpoint, 401)) >= 3, message="the key tried again, rarely")
    sink.handle(frame("dock", ("cup", 0.6), inference_id="kept-2"))
    sink.flush()
    state = sink.uploader_state()
    assert state.unauthorized and state.depth == 4 and state.failing_since is not None
    assert server.accepted("report") == [] and server.accepted("metadata") == []
    refusals = [r for r in caplog.records if "refuses the API key" in r.getMessage()]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR  # said once, clearly

    server.set_api_key(KEY)  # the key is fixed at Roboflow: no restart needed
    server.wait_for(lambda: len(server.accepted("metadata")) == 2, message="delivery after the fix")
    delivered = [b["inference_results"][0]["inference_id"] for b in server.accepted("report")]
    assert delivered == ["kept-1", "kept-2"]
    server.wait_for(lambda: sink.spool.depth == 0, message="an empty spool")
    state = sink.uploader_state()
    assert (state.unauthorized, state.failing_since) == (False, None)
    assert sample(metrics, "edgewatch_monitoring_unauthorized") == 0
    assert any("accepts the API key again" in r.getMessage() for r in caplog.records)

    exposition = generate_latest(metrics.registry).decode()
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert KEY not in exposition and KEY not in logged


def test_a_request_roboflow_calls_bad_is_dropped_and_counted(
    tmp_path: Path, server: RoboflowServer, sinks, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail("report", 422, times=1)
    metrics = new_metrics()
    sink = sinks(make_config(tmp_path, server), metrics)
    sink.handle(frame("dock", ("cup", 0.5), inference_id="bad"))
    sink.flush()
    sink.handle(frame("dock", ("cup", 0.6), inference_id="good"))
    sink.flush()
    server.wait_for(lambda: len(server.accepted("metadata")) == 2, message="both metadata requests")
    assert [b["inference_results"][0]["inference_id"] for b in server.accepted("report")] == ["good"]
    assert [r.status for r in server.recorded("report")] == [422, 200]
    server.wait_for(lambda: sink.spool.depth == 0, message="an empty spool")
    assert sample(metrics, "edgewatch_monitoring_reports_total", result="failed") == 1
    assert sample(metrics, "edgewatch_monitoring_reports_total", result="retried") == 0
    assert any(r.levelno == logging.ERROR and "HTTP 422" in r.getMessage() and "dock" in r.getMessage()
               for r in caplog.records)


def test_synchronous_mode_logs_each_outcome_when_the_window_closes(
    tmp_path: Path, server: RoboflowServer, sinks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server.fail("metadata", 503, times=1)
    sink = sinks(make_config(tmp_path, server, fire_and_forget=False), Metrics(), backoff_base=5)
    sink.handle(frame("dock", ("cup", 0.5)))
    sink.flush()  # returns once each request has been tried
    lines = [r.getMessage() for r in caplog.records if r.name == "edgewatch.monitoring"]
    assert "Model Monitoring report, camera dock: accepted (HTTP 200)" in lines
    assert any(line.startswith("Model Monitoring metadata, camera dock: retry (HTTP 503") for line in lines)


def test_without_a_key_reports_are_spooled_and_logged_not_sent(
    tmp_path: Path, server: RoboflowServer, sinks, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    config = make_config(tmp_path, server, api_key="")
    sink = sinks(config, Metrics())
    sink.handle(frame("yard"))  # a stream nobody configured (HTTP API), with nothing seen: no report
    sink.handle(frame("dock", ("cup", 0.73), ("person", 0.41)))
    sink.flush()
    assert sink.spool.depth == 2
    sink.close(30)
    assert server.requests == []
    assert "Model Monitoring report, camera dock (not sent, no API key): cup 0.73, person 0.41" in [
        r.getMessage() for r in caplog.records
    ]
    assert [(i.kind, i.camera) for i in read_items(config.roboflow.spool)] == [("report", "dock"),
                                                                               ("metadata", "dock")]


def test_the_window_timer_reports_each_stream_every_frequency(
    tmp_path: Path, server: RoboflowServer, sinks
) -> None:
    sink = sinks(make_config(tmp_path, server, frequency=1), Metrics())
    started = time.monotonic()
    sink.handle(frame("dock", ("cup", 0.5)))
    sink.handle(frame("yard", ("dog", 0.5)))  # a stream from the HTTP API: its own aggregator
    server.wait_for(lambda: len(server.accepted("metadata")) == 2, message="both windows closed by the timer")
    assert sorted(b["source_info"] for b in server.accepted("report")) == ["dock", "yard"]
    assert server.recorded("report")[0].at - started >= 0.95
    yard_meta = [b for b in server.accepted("metadata") if b["data"][0]["field_value"] == "yard"]
    assert [entry["field_name"] for entry in yard_meta[0]["data"]] == ["camera"]


def test_close_flushes_the_partial_window_and_sends_it_within_the_grace(
    tmp_path: Path, server: RoboflowServer
) -> None:
    sink = MonitoringSink(make_config(tmp_path, server), Metrics().monitoring)
    sink.start()
    sink.handle(frame("gate", ("car", 0.6)))
    sink.close(30)
    assert [b["source_info"] for b in server.accepted("report")] == ["gate"]
    assert len(server.accepted("metadata")) == 1
    assert read_items(tmp_path / "state" / "spool.db") == []


def test_close_is_prompt_during_an_outage_and_keeps_what_is_unsent(
    tmp_path: Path, server: RoboflowServer
) -> None:
    server.fail("report", 503, times=None)
    sink = MonitoringSink(make_config(tmp_path, server), Metrics().monitoring, backoff_base=60, close_grace=5)
    sink.start()
    sink.handle(frame("gate", ("car", 0.6)))
    sink.flush()
    server.wait_for(lambda: server.recorded("report"), message="the first attempt")
    sink.handle(frame("gate", ("car", 0.7)))
    started = time.monotonic()
    sink.close(30)
    assert time.monotonic() - started < 2  # in a backoff, the grace is not waited out
    kept = read_items(tmp_path / "state" / "spool.db")
    assert [(i.kind, i.camera) for i in kept] == [("report", "gate"), ("metadata", "gate")] * 2


# --- the client on its own -------------------------------------------------------------------------


def test_transport_failures_are_retryable_and_never_show_the_key(server: RoboflowServer) -> None:
    closed = RoboflowClient(f"http://127.0.0.1:{free_port()}", KEY, workspace="ws", timeout=2)
    refused = closed.send("report", "{}")
    assert (refused.outcome, refused.status) == (Outcome.RETRY, None)
    assert "refused" in refused.detail.lower()

    server.fail("report", 200, times=1, delay=1.5)
    slow = RoboflowClient(server.url, KEY, workspace="edge-tests", timeout=0.3).send("report", "{}")
    assert (slow.outcome, slow.status) == (Outcome.RETRY, None)
    assert "timed out" in slow.detail

    # http.client puts the whole URL, query string and key included, in this exception's text
    broken = RoboflowClient(server.url + "/a b", KEY, workspace="ws").send("report", "{}")
    assert broken.outcome is Outcome.RETRY
    assert "***" in broken.detail and KEY not in broken.detail

    server.fail("report", 302, times=1)  # a redirect must not pass for success
    moved = RoboflowClient(server.url, KEY, workspace="edge-tests").send("report", "{}")
    assert (moved.outcome, moved.status) == (Outcome.RETRY, 302)
    for response in (refused, slow, broken, moved):
        assert KEY not in response.detail


def test_a_connection_the_server_closed_while_idle_is_reopened(server: RoboflowServer) -> None:
    server.idle_timeout = 0.2
    client = RoboflowClient(server.url, KEY, workspace="edge-tests")
    assert client.send("report", "{}").outcome is Outcome.ACCEPTED
    server.wait_for(lambda: server.closed_connections == 1, message="the server closing the idle connection")
    assert client.send("report", "{}").outcome is Outcome.ACCEPTED
    assert len({r.peer for r in server.recorded("report", 200)}) == 2
    client.close()


def test_workspace_names_are_validated(server: RoboflowServer) -> None:
    server.workspace = "../evil?x="
    client = RoboflowClient(server.url, KEY)
    response = client.send("report", "{}")
    assert response.outcome is Outcome.RETRY and "no valid name" in response.detail
    assert server.recorded("report") == []


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, Outcome.ACCEPTED), (201, Outcome.ACCEPTED), (204, Outcome.ACCEPTED),
     (500, Outcome.RETRY), (502, Outcome.RETRY), (503, Outcome.RETRY), (429, Outcome.RETRY),
     (408, Outcome.RETRY), (301, Outcome.RETRY),
     (401, Outcome.UNAUTHORIZED), (403, Outcome.UNAUTHORIZED),
     (400, Outcome.REJECTED), (404, Outcome.REJECTED), (413, Outcome.REJECTED), (422, Outcome.REJECTED)],
)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("999999") == 3600
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412510.0) == 0


def test_redact_masks_plain_and_url_encoded_forms() -> None:
    secret = "k3y/with+odd&chars"
    text = f"GET /?api_key=k3y%2Fwith%2Bodd%26chars failed; key {secret}"
    assert redact(text, [secret, ""]) == "GET /?api_key=*** failed; key ***"
