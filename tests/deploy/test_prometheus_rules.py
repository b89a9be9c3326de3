"""deploy/prometheus: the real promtool checks the scrape config and the rules, and runs the rules against
synthetic series (`promtool test rules`), so each alert is shown to fire when it should and not before; a
real Prometheus scrapes an edgewatch metrics endpoint with the shipped scrape config."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest, start_http_server

from daemon.health import Health
from daemon.metrics import Metrics
from daemon.metrics.threads import ThreadCpuCollector
from daemon.reload.metrics import ReloadMetrics
from daemon.web.server import ServerMetrics
from tests.support.daemon import REPO, free_port, wait_until

DEPLOY = REPO / "deploy" / "prometheus"
RULES = DEPLOY / "edgewatch.rules.yml"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TARGET = 'job="edgewatch",instance="edge-01.plant-a.lan:9108",device="edge-01"'
TARGET_LABELS = {"job": "edgewatch", "instance": "edge-01.plant-a.lan:9108", "device": "edge-01"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_scrape_config_and_the_rules():
    config = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = promtool("check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_rules_use_only_metrics_edgewatch_exports():
    metrics = Metrics()
    metrics.init_cameras(["cam-1"])
    metrics.cameras.camera_gpu_decoding.labels("cam-1")  # as a camera with decoder = "cuda" makes it
    Health(metrics.registry)  # the groups the service adds beside Metrics
    ServerMetrics(metrics.registry).init("exporter")
    ReloadMetrics(metrics.registry)
    ThreadCpuCollector(metrics.registry, lambda: [])
    exported = set(re.findall(r"^(edgewatch_\w+?)(?:\{| )", generate_latest(metrics.registry).decode(), re.M))
    used = set(re.findall(r"\bedgewatch_\w+", RULES.read_text()))
    assert used and used <= exported, used - exported
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def alert(name: str, at: str, labels: dict[str, str] | None) -> dict[str, Any]:
    """One alert_rule_test entry: `name` firing at `at` with these labels (None: not firing)."""
    expected = [] if labels is None else [{"exp_labels": labels}]
    return {"eval_time": at, "alertname": name, "exp_alerts": expected}


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    extra = "".join(f',{key}="{value}"' for key, value in labels.items())
    return {"series": f"{name}{{{TARGET}{extra}}}", "values": values}


CAMERA = {**TARGET_LABELS, "camera": "cam-1"}

SCENARIOS = {
    "camera_down": (
        [series("edgewatch_camera_up", "1 1 0x20", camera="cam-1")],
        [
            alert("EdgewatchCameraDown", "2m", None),  # down for 1m30s
            alert("EdgewatchCameraDown", "3m", {**CAMERA, "severity": "critical"}),
        ],
    ),
    "inference_stalled": (
        [
            series("edgewatch_camera_up", "1x80", camera="cam-1"),
            series("edgewatch_frames_inferred_total", "0+15x20 300x60", camera="cam-1"),
        ],
        [
            alert("EdgewatchInferenceStalled", "12m", None),  # no progress since 5m, rate 0 since 10m
            alert("EdgewatchInferenceStalled", "16m", {**TARGET_LABELS, "severity": "critical"}),
        ],
    ),
    "inference_idle_without_cameras_is_fine": (
        [
            series("edgewatch_camera_up", "0x80", camera="cam-1"),
            series("edgewatch_frames_inferred_total", "300x80", camera="cam-1"),
        ],
        [alert("EdgewatchInferenceStalled", "19m", None)],
    ),
    "unauthorized": (
        [series("edgewatch_monitoring_unauthorized", "0 0 1x10")],
        [alert("EdgewatchMonitoringUnauthorized", "2m", {**TARGET_LABELS, "severity": "critical"})],
    ),
    "upload_failing": (
        [
            series("edgewatch_spool_depth", "3x120"),
            series("edgewatch_monitoring_last_success_timestamp_seconds", "0x120"),
        ],
        [
            alert("EdgewatchUploadFailing", "15m", None),
            alert("EdgewatchUploadFailing", "21m", {**TARGET_LABELS, "severity": "warning"}),
        ],
    ),
    "uploads_fine_with_a_small_spool": (
        [
            series("edgewatch_spool_depth", "2x120"),
            series("edgewatch_monitoring_last_success_timestamp_seconds", "0+15x120"),
        ],
        [alert("EdgewatchUploadFailing", "30m", None)],
    ),
    "spool_growing": (
        [
            series("edgewatch_spool_depth", "0+1x400"),
            series("edgewatch_spool_oldest_age_seconds", "0+15x400"),
        ],
        [
            alert("EdgewatchSpoolGrowing", "40m", None),
            alert("EdgewatchSpoolGrowing", "50m", {**TARGET_LABELS, "severity": "warning"}),
        ],
    ),
    "reports_dropped": (
        [series("edgewatch_monitoring_reports_total", "0x10 5x10", result="dropped")],
        [
            alert("EdgewatchMonitoringReportsDropped", "2m", None),
            alert(
                "EdgewatchMonitoringReportsDropped",
                "4m",
                {**TARGET_LABELS, "result": "dropped", "severity": "warning"},
            ),
        ],
    ),
    "degraded": (
        [series("edgewatch_degraded", "0 0 1x20", part="spool")],
        [
            alert("EdgewatchDegraded", "5m", None),  # degraded since 2m, for 5m
            alert("EdgewatchDegraded", "8m", {**TARGET_LABELS, "part": "spool", "severity": "warning"}),
        ],
    ),
    "frames_dropped": (
        [
            series("edgewatch_frames_captured_total", "0+75x80", camera="cam-1"),  # 5 frames/s
            series("edgewatch_frames_dropped_total", "0+30x80", camera="cam-1", reason="stale"),  # 40 %
            series("edgewatch_frames_dropped_total", "0x80", camera="cam-1", reason="read_error"),
        ],
        [
            alert("EdgewatchFramesDroppedHigh", "9m", None),
            alert("EdgewatchFramesDroppedHigh", "12m", {**CAMERA, "severity": "warning"}),
        ],
    ),
    "few_frames_dropped": (
        [
            series("edgewatch_frames_captured_total", "0+75x80", camera="cam-1"),
            series("edgewatch_frames_dropped_total", "0+3x80", camera="cam-1", reason="stale"),  # 4 %
        ],
        [alert("EdgewatchFramesDroppedHigh", "19m", None)],
    ),
    "gpu_decoding_unavailable": (
        [
            series("edgewatch_camera_gpu_decoding", "0x120", camera="cam-1"),
            series("edgewatch_camera_up", "0x20 1x100", camera="cam-1"),  # up from 5m15s on
        ],
        [
            alert("EdgewatchGpuDecodingUnavailable", "14m", None),
            alert("EdgewatchGpuDecodingUnavailable", "16m", {**CAMERA, "severity": "warning"}),
        ],
    ),
    "gpu_decoding_working_or_camera_down_is_not_this_alert": (
        [
            series("edgewatch_camera_gpu_decoding", "1x120", camera="cam-1"),
            series("edgewatch_camera_up", "1x120", camera="cam-1"),
            series("edgewatch_camera_gpu_decoding", "0x120", camera="cam-2"),
            series("edgewatch_camera_up", "0x120", camera="cam-2"),
        ],
        [alert("EdgewatchGpuDecodingUnavailable", "25m", None)],
    ),
    "mqtt_disconnected": (
        [series("edgewatch_mqtt_connected", "1x4 0x40")],
        [
            alert("EdgewatchMqttDisconnected", "5m", None),
            alert("EdgewatchMqttDisconnected", "7m", {**TARGET_LABELS, "severity": "warning"}),
        ],
    ),
    "config_reload_failed": (
        [series("edgewatch_config_last_reload_successful", "1x4 0x10 1x10")],
        [
            alert("EdgewatchConfigReloadFailed", "1m", None),
            alert("EdgewatchConfigReloadFailed", "2m30s", {**TARGET_LABELS, "severity": "warning"}),
            alert("EdgewatchConfigReloadFailed", "5m", None),
        ],
    ),
    "scrape_failing": (
        [{"series": f"up{{{TARGET}}}", "values": "1 0x40"}],
        [alert("EdgewatchDown", "6m", {**TARGET_LABELS, "severity": "critical"})],
    ),
}


@pytest.fixture(scope="module")
def rules_without_annotations(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rules as shipped, minus annotations, so that each scenario can state only the labels."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    path = tmp_path_factory.mktemp("rules") / "rules.json"
    path.write_text(json.dumps(rules))
    return path


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_alert_rule_scenario(scenario: str, rules_without_annotations: Path, tmp_path: Path):
    input_series, checks = SCENARIOS[scenario]
    test = {
        "rule_files": [str(rules_without_annotations)],
        "evaluation_interval": "15s",
        "tests": [{"interval": "15s", "input_series": input_series, "alert_rule_test": checks}],
    }
    path = tmp_path / "test.yml"  # JSON is YAML
    path.write_text(json.dumps(test))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_cpu_per_frame_is_recorded_by_thread_and_for_the_process(tmp_path: Path):
    record = "edgewatch:thread_cpu_seconds_per_frame:rate5m"
    process = "edgewatch:process_cpu_seconds_per_frame:rate5m"
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [
                # values a binary float holds exactly: promtool compares the results exactly
                series("edgewatch_frames_inferred_total", "0+960x40", camera="cam-1"),  # 64 frames/s
                series("edgewatch_frames_inferred_total", "0+960x40", camera="cam-2"),  # 128 in all
                series("edgewatch_thread_cpu_seconds_total", "0+7.5x40", thread="cameras"),  # 0.5 s/s
                series("edgewatch_thread_cpu_seconds_total", "0+3.75x40", thread="inference"),  # 0.25 s/s
                series("process_cpu_seconds_total", "0+15x40"),  # 1 s/s
                # another job's process: no frames inferred there, so nothing is recorded for it
                {"series": 'process_cpu_seconds_total{job="node",instance="edge-01:9100"}',
                 "values": "0+15x40"},
            ],
            "promql_expr_test": [
                {"expr": record, "eval_time": "10m", "exp_samples": [
                    {"labels": f'{record}{{{TARGET},thread="cameras"}}', "value": 0.00390625},
                    {"labels": f'{record}{{{TARGET},thread="inference"}}', "value": 0.001953125},
                ]},
                {"expr": process, "eval_time": "10m", "exp_samples": [
                    {"labels": f"{process}{{{TARGET}}}", "value": 0.0078125},
                ]},
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(test))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_annotations_render_with_the_labels(tmp_path: Path):
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [series("edgewatch_camera_up", "0x20", camera="cam-1")],
            "alert_rule_test": [{
                "eval_time": "3m",
                "alertname": "EdgewatchCameraDown",
                "exp_alerts": [{
                    "exp_labels": {**CAMERA, "severity": "critical"},
                    "exp_annotations": {
                        "summary": "Camera cam-1 on edge-01 is down",
                        "description": "No frames from camera cam-1 for 2 minutes; edgewatch keeps "
                        "reconnecting (see edgewatch_camera_reconnects_total).",
                    },
                }],
            }],
        }],
    }  # fmt: skip
    path = tmp_path / "test.yml"
    path.write_text(json.dumps(test))
    result = promtool("test", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_labels_each_target_with_its_device(tmp_path: Path):
    metrics = Metrics()
    metrics.init_cameras(["cam-1"])
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=metrics.registry)
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    config["rule_files"] = [str(RULES)]
    by_name, explicit = config["scrape_configs"][0]["static_configs"]
    by_name["targets"] = [f"localhost:{port}"]  # device from the host name
    explicit["targets"] = [f"127.0.0.1:{port}"]  # the same endpoint, with an explicit device label
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    web = free_port()
    log = tmp_path / "prometheus.log"
    with log.open("w") as stderr:
        prometheus = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )

    def devices() -> set[str] | None:
        assert prometheus.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
        url = f"http://127.0.0.1:{web}/api/v1/query?query=edgewatch_camera_up"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                results = json.load(response)["data"]["result"]
        except OSError:
            return None
        found = {(r["metric"].get("device"), r["metric"]["instance"], r["metric"]["camera"]) for r in results}
        return found if len(found) == 2 else None

    try:
        found = wait_until(devices, 30, interval=0.2, message="both targets scraped")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; prometheus said:\n{log.read_text()[-3000:]}") from None
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        server.shutdown()
    assert found == {("localhost", f"localhost:{port}", "cam-1"), ("dock-03", f"127.0.0.1:{port}", "cam-1")}
