"""Model Monitoring through the real daemon: real model, clips of real photos, a local Roboflow server."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from daemon.demo import photo_path, write_demo_clip
from daemon.roboflow.spool import read_items
from tests.support.daemon import free_port, run_cli, wait_until
from tests.support.roboflow_server import RoboflowServer

KEY = "rf_SECRET_abc123"


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short looping clips: the coffee photo (a cup), the motorcycle photo (COCO's Darknet "motorbike")."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        name: write_demo_clip(photo_path(photo), folder / f"{name}.mp4", seconds=3, fps=5)
        for name, photo in (("coffee", "coffee.png"), ("motorcycle", "motorcycle_left.png"))
    }


def config_text(
    tmp_path: Path,
    model: Path,
    clips: dict[str, Path],
    server: RoboflowServer | None,
    metrics_port: int,
    api_key: str = KEY,
) -> str:
    api_url = server.url if server else "http://127.0.0.1:9"
    return f"""
[device]
id = "e2e-box"

[model]
path = "{model}"
cache_dir = "{tmp_path / "trt"}"

[[cameras]]
id = "kitchen"
url = "{clips["coffee"]}"
fps = 5
loop = true
metadata = {{ location = "plant-a", line = "1" }}

[[cameras]]
id = "street"
url = "{clips["motorcycle"]}"
fps = 5
loop = true

[roboflow]
api_key = "{api_key}"
api_url = "{api_url}"
frequency = 1
spool = "state/spool.db"

[mqtt]
enabled = false

[metrics]
host = "127.0.0.1"
port = {metrics_port}
"""


def classes(report: dict) -> set[str]:
    return {result["class_name"] for result in report["inference_results"]}


def reports_of(server: RoboflowServer, camera: str) -> list[dict]:
    return [body for body in server.accepted("report") if body["source_info"] == camera]


def test_each_camera_reports_its_own_classes_and_the_key_never_leaks(
    tmp_path: Path, start_daemon, demo_model: Path, clips: dict[str, Path], roboflow_server: RoboflowServer
) -> None:
    server = roboflow_server
    server.set_api_key(KEY)
    server.fail("report", 503, times=2)  # a short outage: error lines are printed, with their details
    metrics_port = free_port()
    daemon = start_daemon(config_text(tmp_path, demo_model, clips, server, metrics_port))
    server.wait_for(
        lambda: len(reports_of(server, "kitchen")) >= 3 and len(reports_of(server, "street")) >= 3,
        timeout=90,
        message="3 reports from each camera",
    )
    page = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert daemon.terminate() == 0

    kitchen, street = reports_of(server, "kitchen"), reports_of(server, "street")
    assert all("cup" in classes(r) and "motorbike" not in classes(r) for r in kitchen)
    assert all("motorbike" in classes(r) and "cup" not in classes(r) for r in street)
    assert {r["source"] for r in kitchen + street} == {"e2e-box"}
    kitchen_ids = {p["inference_id"] for r in kitchen for p in r["inference_results"]}
    street_ids = {p["inference_id"] for r in street for p in r["inference_results"]}
    assert kitchen_ids and street_ids and not kitchen_ids & street_ids

    tagged: dict[str, dict[str, str]] = {}  # inference id -> metadata fields
    for body in server.accepted("metadata"):
        for entry in body["data"]:
            for inference_id in entry["inference_ids"]:
                tagged.setdefault(inference_id, {})[entry["field_name"]] = entry["field_value"]
    assert all(tagged[i] == {"camera": "kitchen", "location": "plant-a", "line": "1"} for i in kitchen_ids)
    assert all(tagged[i] == {"camera": "street"} for i in street_ids)

    assert 'edgewatch_monitoring_reports_total{result="retried"} 2.0' in page
    printed = daemon.output()
    assert "HTTP 503" in printed  # the retries were logged...
    spooled = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("spool.db*"))
    for where, text in (("output", printed), ("metrics", page), ("spool", spooled.decode("latin-1"))):
        assert KEY not in text, f"the API key appears in the daemon's {where}"  # ...without the key


def test_reports_spooled_before_kill_9_are_delivered_after_restart(
    tmp_path: Path, start_daemon, demo_model: Path, clips: dict[str, Path], roboflow_server: RoboflowServer
) -> None:
    server = roboflow_server
    server.set_api_key(KEY)
    server.fail("report", 503, times=None)  # Roboflow is down
    text = config_text(tmp_path, demo_model, clips, server, free_port())
    spool = tmp_path / "state" / "spool.db"
    first = start_daemon(text)
    wait_until(
        lambda: sum(i.kind == "report" for i in read_items(spool)) >= 4,
        timeout=90,
        message="4 reports spooled",
    )
    first.kill()  # SIGKILL: no flush, no clean close
    stranded = [i.json() for i in read_items(spool) if i.kind == "report"]
    assert {r["source_info"] for r in stranded} == {"kitchen", "street"}
    assert server.accepted("report") == []

    server.clear()  # Roboflow is back
    second = start_daemon(text)
    server.wait_for(
        lambda: all(r in server.accepted("report") for r in stranded),
        timeout=60,
        message="every report stranded by the kill delivered",
    )
    assert second.terminate() == 0
    delivered = server.accepted("report")
    assert all(delivered.count(r) == 1 for r in stranded)  # exactly once by content
    for camera in ("kitchen", "street"):  # and in order per camera
        timestamps = [r["timestamp"] for r in delivered if r["source_info"] == camera]
        assert timestamps == sorted(timestamps)
    assert read_items(spool) == []  # the clean stop sent the final windows too


def test_without_a_key_reports_are_logged_and_listed_by_the_cli(
    tmp_path: Path, start_daemon, demo_model: Path, clips: dict[str, Path]
) -> None:
    daemon = start_daemon(config_text(tmp_path, demo_model, clips, None, free_port(), api_key=""))
    shown = r"Model Monitoring report, camera {} \(not sent, no API key\): .*{} \d\.\d\d"
    daemon.wait_for_output(shown.format("kitchen", "cup"), timeout=90)
    daemon.wait_for_output(shown.format("street", "motorbike"), timeout=30)
    assert daemon.terminate() == 0

    config = str(tmp_path / "config.toml")
    listing = run_cli(["reports", "-c", config], cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()[:-1]]
    assert {(row[1], row[2]) for row in rows} >= {("kitchen", "report"), ("street", "metadata")}

    as_json = run_cli(["reports", "-c", config, "--json", "--limit", "4"], cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    listed = json.loads(as_json.stdout)
    on_disk = read_items(tmp_path / "state" / "spool.db")
    assert [entry["body"] for entry in listed] == [item.json() for item in on_disk[-4:]]
    assert [entry["kind"] for entry in listed] == ["report", "metadata"] * 2


def test_a_refused_key_stops_sending_keeps_the_spool_and_raises_the_alert_everywhere(
    tmp_path: Path,
    start_daemon,
    demo_model: Path,
    clips: dict[str, Path],
    roboflow_server: RoboflowServer,
    mosquitto,
) -> None:
    from tests.support.mosquitto import Subscriber

    server = roboflow_server
    server.set_api_key("rf_another_key")  # ours is refused: 401
    port = free_port()
    text = config_text(tmp_path, demo_model, clips, server, port).replace(
        "[mqtt]\nenabled = false\n",
        f'[mqtt]\nenabled = true\nhost = "{mosquitto.host}"\nport = {mosquitto.port}\n',
    )
    alerts = Subscriber(mosquitto, "edgewatch/e2e-box/alerts")
    daemon = start_daemon(text)

    def unauthorized():
        for payload in alerts.payloads("edgewatch/e2e-box/alerts"):
            body = json.loads(payload)
            if body["type"] == "monitoring_unauthorized" and body["state"] == "firing":
                return body
        return None

    alert = alerts.wait_for(unauthorized, timeout=60, what="the monitoring_unauthorized alert")
    assert alert["severity"] == "critical" and "camera" not in alert  # type: ignore[index]

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()

    wait_until(
        lambda: "edgewatch_spool_depth 0.0" not in scrape(), timeout=20, message="reports kept in the spool"
    )
    page = scrape()
    assert "edgewatch_monitoring_unauthorized 1.0" in page
    assert 'edgewatch_alert_active{camera="",type="monitoring_unauthorized"} 1.0' in page
    assert not server.accepted("report")
    refused = len(server.recorded(status=401))
    assert 1 <= refused <= 2  # stopped after the refusal: no retry storm against a bad key
    assert daemon.terminate() == 0
    assert KEY not in daemon.output()
    assert read_items(tmp_path / "state" / "spool.db"), "the spool was emptied although nothing was accepted"
    alerts.close()
