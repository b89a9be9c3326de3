"""The on-device monitoring view: the History store behind it, and the page in a real headless browser."""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

from daemon.alerts.engine import AlertEngine
from daemon.config import AlertsConfig
from daemon.metrics import Metrics
from daemon.model.session import Model
from daemon.roboflow.aggregator import Prediction
from daemon.roboflow.client import report_body
from daemon.sinks.history import History
from tests.support.browser import ARTIFACTS, chromium
from tests.support.daemon import wait_until
from tests.support.edge import PHOTOS, Edge, edge_config
from tests.support.results import car, frame_result, person
from tests.support.roboflow_server import RoboflowServer

NOW = 1_800_000_000.0  # a fixed "now" for the store's clock
HOST = {"hostname": "edge-test"}


def report(stream: str, entries: list[tuple[str, float, str]], at: float = NOW) -> dict[str, Any]:
    """A report body as the monitoring sink spools it; entries are (class, confidence, inference id)."""
    predictions = [
        Prediction("coco/3", name, confidence, inference_id) for name, confidence, inference_id in entries
    ]
    when = datetime.fromtimestamp(at, timezone.utc)
    return report_body(predictions, device_id="edge-test", camera_id=stream, host=HOST, timestamp=when)


def test_rollups_give_totals_averages_and_the_change_against_the_previous_period(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db", clock=lambda: NOW)
    try:
        for minute in range(3):  # previous hour: 3 frames, one person at 0.5 each
            history.handle(
                frame_result("kitchen", minute, [person(0.5)], captured_at=NOW - 3600 - 600 - 60 * minute)
            )
        for frame in range(4):  # this hour: 4 kitchen frames with two people at 0.9 and 0.7, one car at 0.8
            history.handle(
                frame_result(
                    "kitchen",
                    10 + frame,
                    [person(0.9), person(0.7, x=90), car(0.8)],
                    captured_at=NOW - 300 + frame,
                )
            )
        history.handle(frame_result("street", 1, [], captured_at=NOW - 30))  # a frame with nothing in it

        summary = history.summary("hour")
        assert summary["current"] == {
            "inferences": 5,
            "detections": 12,
            "avg_confidence": 0.8,
            "avg_inference_time": 0.02,
        }
        assert summary["previous"] == {
            "inferences": 3,
            "detections": 3,
            "avg_confidence": 0.5,
            "avg_inference_time": 0.02,
        }
        assert summary["change"] == {
            "inferences": 66.7,
            "detections": 300.0,
            "avg_confidence": 60.0,
            "avg_inference_time": 0.0,
        }
        assert sum(point["inferences"] for point in summary["series"]) == 5
        assert len(summary["series"]) == 60 and summary["series"][-5]["detections"] == 12  # 5 minutes ago

        assert history.summary("hour", camera="street")["current"]["detections"] == 0
        assert history.summary("day")["current"]["inferences"] == 8
        assert [
            (c["class"], c["detections"], c["share"], c["avg_confidence"]) for c in history.classes("hour")
        ] == [("person", 8, 0.6667, 0.8), ("car", 4, 0.3333, 0.8)]
        assert [(s["stream"], s["inferences"], s["detections"]) for s in history.streams("hour")] == [
            ("kitchen", 4, 12),
            ("street", 1, 0),
        ]
        with pytest.raises(ValueError, match="unknown range"):
            history.summary("fortnight")
    finally:
        history.close(10)


def test_reports_become_samples_with_their_metadata_and_the_whole_frame(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db", clock=lambda: NOW)
    try:
        frame = frame_result("kitchen", 7, [person(0.9), person(0.4, x=90), car(0.8)], captured_at=NOW - 5)
        history.handle(frame)
        history.on_report(
            report("kitchen", [("person", 0.9, frame.inference_id), ("car", 0.8, frame.inference_id)]),
            {"camera": "kitchen", "line": "1"},
        )
        history.on_report(
            report("street", [("car", 0.6, "id-of-a-frame-long-gone")], at=NOW - 1), {"camera": "street"}
        )

        (kitchen,) = history.samples(camera="kitchen")
        assert kitchen["inference_id"] == frame.inference_id and kitchen["detections"] == 3
        assert kitchen["metadata"] == {"camera": "kitchen", "line": "1"}
        assert kitchen["reported"] == [
            {"class": "person", "confidence": 0.9},
            {"class": "car", "confidence": 0.8},
        ]
        detail = history.sample(frame.inference_id)
        assert [(p["class"], p["confidence"]) for p in detail["predictions"]] == [
            ("person", 0.9),
            ("person", 0.4),
            ("car", 0.8),
        ]
        assert detail["image"] == {"width": 640, "height": 480} and detail["source"] == "camera"

        street = history.sample("id-of-a-frame-long-gone")
        assert street["predictions"] == [{"class": "car", "confidence": 0.6}]  # what the report said
        assert [s["stream"] for s in history.samples()] == ["street", "kitchen"]  # newest first
        assert [s["stream"] for s in history.samples(class_name="person")] == ["kitchen"]
        assert [s["stream"] for s in history.samples(class_name="car")] == ["street", "kitchen"]
        assert history.samples(camera="street", class_name="person") == []
        assert history.sample_classes() == ["car", "person"]
    finally:
        history.close(10)


def test_alerts_active_and_recent(tmp_path: Path) -> None:
    history = History(tmp_path / "history.db", clock=lambda: NOW)
    cameras = {"street": (False, 0.0), "kitchen": (True, 0.0)}
    engine = AlertEngine(
        AlertsConfig(camera_down_after=30),
        Metrics().alerts,
        listeners=[history],
        cameras=lambda: cameras,
        inference_progress=lambda: 100.0,
        clear_for=10,
    )
    try:
        engine.tick(now=100.0)
        (active,) = history.alerts()["active"]
        assert (active["type"], active["camera"], active["state"]) == ("camera_down", "street", "firing")
        cameras["street"] = (True, 101.0)
        engine.tick(now=102.0)
        engine.tick(now=120.0)
        alerts = history.alerts()
        assert alerts["active"] == []
        assert [(a["state"], a["camera"]) for a in alerts["recent"]] == [
            ("resolved", "street"),
            ("firing", "street"),
        ]
    finally:
        history.close(10)


def test_retention_merges_old_minutes_drops_old_data_and_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    clock = {"now": NOW}
    history = History(path, retention_days=30, clock=lambda: clock["now"])
    for minute in range(30):  # three days ago: half an hour of frames, merged into hours later
        history.handle(
            frame_result("kitchen", minute, [person(0.6)], captured_at=NOW - 3 * 86400 + 60 * minute)
        )
    old = frame_result("kitchen", 99, [car(0.7)], captured_at=NOW - 31 * 86400)
    history.handle(old)
    history.on_report(report("kitchen", [("car", 0.7, old.inference_id)], at=old.captured_at), {})
    history.close(10)

    week_then = {"inferences": 30, "detections": 30, "avg_confidence": 0.6, "avg_inference_time": 0.02}
    history = History(path, retention_days=30, clock=lambda: clock["now"])  # opening runs the upkeep
    try:
        assert history.summary("week")["current"] == week_then  # the same totals from hour rows
        assert history.summary("hour", now=NOW - 3 * 86400 + 1800)["current"]["inferences"] == 30
        assert (
            history.summary("week", now=old.captured_at + 60)["current"]["inferences"] == 0
        )  # past retention
        assert history.sample(old.inference_id) is None
    finally:
        history.close(10)


def test_the_store_keeps_to_its_size_bound_dropping_the_oldest_samples(tmp_path: Path) -> None:
    path = tmp_path / "history.db"
    history = History(path, max_mb=0.25, clock=lambda: NOW)
    ids = []
    for index in range(400):
        frame = frame_result(
            "kitchen", index, [person(0.5 + i / 100, x=i) for i in range(20)], captured_at=NOW - 4000 + index
        )
        history.handle(frame)
        history.on_report(
            report("kitchen", [("person", 0.69, frame.inference_id)]), {"camera": "kitchen"}
        )
        ids.append(frame.inference_id)
    history.close(10)
    assert path.stat().st_size > 0.25 * 1024 * 1024  # over the bound before the upkeep

    history = History(path, max_mb=0.25, clock=lambda: NOW)
    try:
        assert path.stat().st_size <= 0.25 * 1024 * 1024
        assert history.sample(ids[-1]) is not None and history.sample(ids[0]) is None
        assert history.summary("day")["current"]["inferences"] == 400  # rollups go only after every sample
    finally:
        history.close(10)


# --- the page ------------------------------------------------------------------------------------------


def get(edge: Edge, path: str) -> Any:
    with urllib.request.urlopen(f"{edge.url}/api/{path}", timeout=10) as response:
        return json.load(response)


def cell_texts(page, selector: str, column: int) -> list[str]:
    return page.eval_on_selector_all(
        f"{selector} tbody tr", f"rows => rows.map(r => r.children[{column}].innerText)"
    )


def test_the_page_shows_the_edge_and_filters_by_camera(
    tmp_path: Path, demo_model: Path, model: Model, roboflow_server: RoboflowServer
) -> None:
    config = edge_config(
        tmp_path, demo_model, {"kitchen": "coffee.png", "street": "motorcycle_left.png"}, roboflow_server.url
    )
    edge = Edge(config, model).start()
    try:
        engine = AlertEngine(
            config.alerts,
            edge.metrics.alerts,
            listeners=[edge.history],
            cameras=lambda: {"street": (False, time.monotonic() - 120)},
            inference_progress=time.monotonic,
        )
        engine.tick()  # camera_down for street, as the service's engine would report it
        body = {
            "model_id": "coco/3",
            "source_info": "lineA",
            "confidence": 0.05,
            "image": {
                "type": "base64",
                "value": base64.b64encode((PHOTOS / "coffee.png").read_bytes()).decode(),
            },
        }
        line_a = requests.post(f"{edge.url}/infer/object_detection", json=body, timeout=30).json()
        assert sorted(p["class"] for p in line_a["predictions"]) == ["cup", "diningtable", "fork"]
        wait_until(
            lambda: {s["stream"] for s in get(edge, "samples")["samples"]} >= {"kitchen", "street", "lineA"},
            15,
            message="reported samples of both cameras and of the API stream",
        )

        with chromium(tmp_path / "profile") as browser:
            page = browser.page
            page.goto(edge.url + "/")
            page.wait_for_selector("body[data-loaded=true]", timeout=15000)
            total = int(page.inner_text("#stat-inferences .value").replace(",", ""))
            assert total > 0
            assert page.inner_text("#stat-confidence .value").endswith("%")
            assert page.inner_text("#stat-time .value").endswith("ms")
            assert set(cell_texts(page, "#streams", 0)) == {"kitchen", "street", "lineA"}
            assert {"cup", "motorbike"} <= set(cell_texts(page, "#classes", 0))
            assert {"kitchen", "street"} <= set(cell_texts(page, "#samples", 1))
            assert "camera_down" in page.inner_text("#alerts-active")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "monitoring-page.png"), full_page=True)

            page.select_option("#class-filter", "motorbike")
            page.wait_for_function(
                "() => { const cells = [...document.querySelectorAll('#samples tbody tr')]"
                ".map(r => r.children[1].innerText); "
                "return cells.length && cells.every(c => c === 'street'); }",
                timeout=10000,
            )
            page.select_option("#class-filter", "")

            page.select_option("#camera-filter", "kitchen")
            page.wait_for_function(
                "() => { const cells = [...document.querySelectorAll('#samples tbody tr')]"
                ".map(r => r.children[1].innerText); "
                "return cells.length && cells.every(c => c === 'kitchen'); }",
                timeout=10000,
            )
            page.wait_for_function(
                "() => !document.querySelector('#classes').innerText.includes('motorbike')", timeout=10000
            )
            assert cell_texts(page, "#classes", 0) == ["cup"]
            assert page.inner_text("#streams tr.selected td") == "kitchen"
            kitchen_total = int(page.inner_text("#stat-inferences .value").replace(",", ""))
            assert 0 < kitchen_total < get(edge, "summary?range=hour")["current"]["inferences"]  # street adds

            page.select_option("#camera-filter", "lineA")
            page.wait_for_function(
                "() => [...document.querySelectorAll('#samples tbody tr')].map(r => r.children[1].innerText)"
                ".join() === 'lineA'",
                timeout=10000,
            )
            page.click("#samples tbody tr")
            page.wait_for_selector("#detail[open]")
            assert line_a["inference_id"] in page.inner_text("#detail-fields")
            assert "camera: lineA" not in page.inner_text("#detail-metadata")  # fields, not chips
            assert "lineA" in page.inner_text("#detail-metadata")

            def detections() -> list[str]:
                return cell_texts(page, "#detail-detections", 0)

            assert detections() == ["cup", "fork", "diningtable"]  # most confident first
            page.click("#detail-detections [data-sort=class]")
            assert detections() == ["cup", "diningtable", "fork"]
            page.click("#detail-detections [data-sort=class]")
            assert detections() == ["fork", "diningtable", "cup"]
            page.click("#detail-detections [data-sort=confidence]")
            assert detections() == ["cup", "fork", "diningtable"]
            page.screenshot(path=str(ARTIFACTS / "monitoring-detail.png"))
            page.click("#detail-close")
            page.wait_for_selector("#detail", state="hidden")

            page.click("[data-range=week]")
            page.wait_for_selector("[data-range=week].active")
            assert browser.problems == []
    finally:
        edge.close()


def test_static_files_are_served_with_a_strict_policy(tmp_path: Path, demo_model: Path, model: Model) -> None:
    edge = Edge(edge_config(tmp_path, demo_model, {}, "http://127.0.0.1:9"), model).start()
    try:
        page = requests.get(edge.url + "/", timeout=10)
        assert page.headers["Content-Type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        for name in ("app.js", "style.css", "favicon.svg"):
            assert requests.get(f"{edge.url}/static/{name}", timeout=10).status_code == 200
        assert requests.get(f"{edge.url}/static/../api.py", timeout=10).status_code == 404
        assert requests.get(f"{edge.url}/api/summary?range=fortnight", timeout=10).status_code == 400
    finally:
        edge.close()
