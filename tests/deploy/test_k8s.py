"""deploy/: the Kubernetes manifests against the API schemas (kubernetes-validate, strict), the pieces that
must agree with each other and with the daemon, and the Prometheus agent config forwarding real samples to a
real Prometheus through remote_write."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from daemon.config import load_config
from tests.support.daemon import REPO, free_port, wait_until

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")

K8S = REPO / "deploy" / "k8s"
PROMETHEUS = REPO / "deploy" / "prometheus"
# the newest API the validator knows, and an older one still common on edge clusters (k3s on JetPack)
KUBERNETES_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def generated_configmaps() -> list[dict[str, Any]]:
    """What kustomize's configMapGenerator makes: one key per file, named after the file."""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": generator["name"], "namespace": kustomization()["namespace"]},
            "data": {Path(f).name: (K8S / f).read_text() for f in generator["files"]},
        }
        for generator in kustomization().get("configMapGenerator", [])
    ]


def resources() -> list[dict[str, Any]]:
    docs = []
    for name in [*kustomization()["resources"], "secret.example.yaml"]:
        docs += [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]
    return docs + generated_configmaps()


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for doc in resources() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(name: str = "edgewatch") -> dict[str, Any]:
    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)


def env(name: str) -> dict[str, Any]:
    return next(item for item in container()["env"] if item["name"] == name)


def mount(volume: str) -> str:
    return next(m["mountPath"] for m in container()["volumeMounts"] if m["name"] == volume)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_resource_matches_the_api_schema(version: str) -> None:
    checked = []
    for doc in resources():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} against {version}: {error}")
        checked.append(doc["kind"])
    assert sorted(checked) == ["ConfigMap", "DaemonSet", "Namespace", "Secret", "Service"]


def test_kustomization_references_exist_and_name_the_image_in_use() -> None:
    config = kustomization()
    for name in config["resources"]:
        assert (K8S / name).is_file(), name
    images = {image["name"] for image in config["images"]}
    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert {c["image"] for c in spec["containers"] + spec["initContainers"]} <= images


def test_each_node_gets_its_own_valid_config(tmp_path: Path) -> None:
    """The pod reads $(NODE_NAME).toml from the ConfigMap folder; each file is a config the daemon accepts
    and names the device after its node."""
    assert env("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env("EDGEWATCH_CONFIG")["value"] == f"{mount('config')}/$(NODE_NAME).toml"
    data = by_kind("ConfigMap")["data"]
    assert data, "no node config"
    for key, text in data.items():
        node = key.removesuffix(".toml")
        (tmp_path / key).write_text(text)
        config = load_config(tmp_path / key)
        assert config.device.id == node
        assert config.metrics.port == container()["ports"][0]["containerPort"]
        assert config.metrics.host == "0.0.0.0"  # reachable by probes and Prometheus
        assert config.roboflow.spool.is_relative_to(mount("state"))
        assert config.model.cache_dir.is_relative_to(mount("state"))


def test_secrets_reach_the_daemon_as_the_config_expects(tmp_path: Path, monkeypatch) -> None:
    """The Secret's keys, mounted and exported the way the DaemonSet does it, become the daemon's API key and
    MQTT password; the example Secret carries no value."""
    secret = by_kind("Secret")
    assert set(secret["stringData"]) == {"roboflow_api_key", "mqtt_password"}
    assert not any(secret["stringData"].values()), "the example Secret must not hold a secret"
    volumes = by_kind("DaemonSet")["spec"]["template"]["spec"]["volumes"]
    volume = next(v for v in volumes if v["name"] == "secrets")
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    assert env("CREDENTIALS_DIRECTORY")["value"] == mount("secrets")
    assert env("MQTT_PASSWORD")["valueFrom"]["secretKeyRef"] == {
        "name": secret["metadata"]["name"], "key": "mqtt_password", "optional": True}

    credentials = tmp_path / "secrets"
    credentials.mkdir()
    (credentials / "roboflow_api_key").write_text("rf-key-from-secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    monkeypatch.setenv("MQTT_PASSWORD", "broker-pass")
    key, text = next(iter(by_kind("ConfigMap")["data"].items()))
    (tmp_path / key).write_text(text)
    config = load_config(tmp_path / key)
    assert config.roboflow.api_key.get_secret_value() == "rf-key-from-secret"
    assert config.mqtt.password.get_secret_value() == "broker-pass"


def test_probes_and_scraping_use_the_metrics_port() -> None:
    port = container()["ports"][0]
    assert port == {"name": "metrics", "containerPort": 9108}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container()[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    startup = container()["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "engine builds take minutes"
    service = by_kind("Service")
    assert service["spec"]["clusterIP"] == "None"  # one scrape target per device
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    annotations = service["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert service["spec"]["selector"] == by_kind("DaemonSet")["spec"]["selector"]["matchLabels"]


def _dockerfile_uid() -> int:
    users = re.findall(r"^USER (\d+)", (REPO / "Dockerfile.jetson").read_text(), re.M)
    return int(users[-1])


def test_pod_runs_as_the_image_user_with_state_it_owns() -> None:
    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    uid = _dockerfile_uid()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    main = container()["securityContext"]
    assert main["allowPrivilegeEscalation"] is False and main["readOnlyRootFilesystem"] is True
    assert main["capabilities"]["drop"] == ["ALL"]
    init = spec["initContainers"][0]
    assert init["command"][:2] == ["chown", f"{uid}:{uid}"] and init["command"][2] == mount("state")
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["hostPath"]["path"] == mount("state")  # the spool outlives the pod
    assert spec["terminationGracePeriodSeconds"] >= 60  # time to flush windows into the spool
    assert container()["resources"]["limits"]["nvidia.com/gpu"] == 1


# --- deploy/prometheus/remote_write.yml with real Prometheus servers -----------------------------------

PROMTOOL = shutil.which("promtool")
PROMETHEUS_BIN = shutil.which("prometheus")
SAMPLE = (
    "# TYPE edgewatch_frames_inferred_total counter\n"
    'edgewatch_frames_inferred_total{camera="dock-1"} 42\n'
)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is missing: apt-get install prometheus")
def test_remote_write_config_passes_promtool_in_agent_mode() -> None:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, "check", "config", "--agent", "--syntax-only",
                           str(PROMETHEUS / "remote_write.yml")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


class _Metrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = SAMPLE.encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def device() -> Iterator[int]:
    """A stand-in edgewatch /metrics endpoint on localhost."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator:
    started: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> int:
        port = free_port()
        log = (tmp_path / f"{name}.log").open("w")
        started.append(subprocess.Popen(
            [PROMETHEUS_BIN, f"--web.listen-address=127.0.0.1:{port}", *args],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        ))
        log.close()
        wait_until(lambda: _ready(port), timeout=30, message=f"{name} Prometheus to be ready")
        return port

    yield start
    for proc in started:
        proc.terminate()
    for proc in started:
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _query(port: int, expression: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]


@pytest.mark.skipif(PROMETHEUS_BIN is None, reason="prometheus is missing: apt-get install prometheus")
def test_agent_forwards_device_samples_with_site_and_device_labels(
    tmp_path: Path, device: int, prometheus
) -> None:
    central = prometheus("central", "--web.enable-remote-write-receiver",
                         f"--config.file={_write(tmp_path / 'central.yml', {'scrape_configs': []})}",
                         f"--storage.tsdb.path={tmp_path / 'central-data'}")

    agent_config = yaml.safe_load((PROMETHEUS / "remote_write.yml").read_text())
    agent_config["global"].update(scrape_interval="1s", scrape_timeout="1s")
    agent_config["scrape_configs"][0]["static_configs"] = [{"targets": [f"localhost:{device}"]}]
    (tmp_path / "password").write_text("site-secret\n")
    remote = agent_config["remote_write"][0]
    remote["url"] = f"http://127.0.0.1:{central}/api/v1/write"
    remote["basic_auth"]["password_file"] = str(tmp_path / "password")
    remote["queue_config"]["batch_send_deadline"] = "1s"
    prometheus("agent", "--enable-feature=agent",
               f"--config.file={_write(tmp_path / 'agent.yml', agent_config)}",
               f"--storage.agent.path={tmp_path / 'agent-data'}")

    series = wait_until(lambda: _query(central, "edgewatch_frames_inferred_total"), timeout=45, interval=0.5,
                        message="the agent's samples at the central Prometheus")
    labels = series[0]["metric"]
    assert labels["site"] == "plant-a" and labels["device"] == "localhost", labels
    assert labels["camera"] == "dock-1" and labels["job"] == "edgewatch", labels
    assert float(series[0]["value"][1]) == 42


def _write(path: Path, config: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)
