"""The real daemon against a failing disk and hostile clients: it keeps serving, says what is degraded, and
never exits 2 for anything but its config.

Disk faults are real: a corrupt file, a read-only bind mount and a full tmpfs, each made in a private mount
namespace of the daemon (`unshare -m`; the tests run as root, as the issue's reproduction did).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from daemon.pipeline.board import FrameBoard
from daemon.roboflow.spool import Spool
from daemon.web.api import MAX_STREAMS, ApiServer, ModelInfo
from tests.e2e.test_api import png_header
from tests.e2e.test_cli import camera_block, sample, scrape
from tests.support.browser import chromium
from tests.support.daemon import free_port, run_cli, wait_until
from tests.support.edge import PHOTOS, edge_config
from tests.support.holding import HoldingServer
from tests.support.roboflow_server import RoboflowServer
from tests.unit.test_spool import overwrite_root_page

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="mount namespaces need root and unshare"
)


def hardened_config(
    model: Path,
    clip: Path,
    state: Path,
    metrics_port: int,
    api_port: int,
    extra: str = "",
    api: str = "",
    api_host: str = "127.0.0.1",
) -> str:
    return f"""
[device]
id = "test-box"
[model]
path = "{model}"
providers = ["cpu"]
max_batch = 2
threads = 1
{camera_block("kitchen", clip, loop=True, fps=4)}
[roboflow]
enabled = true
frequency = 1
spool = "{state / "spool.db"}"
[mqtt]
enabled = false
[metrics]
host = "127.0.0.1"
port = {metrics_port}
[api]
enabled = true
host = "{api_host}"
port = {api_port}
{api}
[alerts]
camera_down_after = 60
{extra}"""


def healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:  # not listening yet
        return 0, {}


def in_namespace(script: str) -> list[str]:
    """A prefix running the daemon in a private mount namespace after `script` (sh) has set it up."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-ec", f'{script}\nexec "$@"', "sh"]


def wait_degraded(port: int, *parts: str, timeout: float = 60) -> dict[str, Any]:
    def degraded() -> dict[str, Any] | None:
        _, body = healthz(port)
        return body if all(part in body.get("degraded", {}) for part in parts) else None

    return wait_until(degraded, timeout, interval=0.2, message=f"/healthz to say {parts} degraded")


def inferred(port: int) -> float:
    return sample(scrape(port), "edgewatch_frames_inferred_total", 0, camera="kitchen")


def test_corrupt_spool_and_history_are_set_aside_and_the_cameras_keep_running(
    tmp_path, start_daemon, demo_model, demo_clips
):
    state = tmp_path / "state"
    state.mkdir()
    (state / "spool.db").write_bytes(os.urandom(64 * 1024))
    (state / "history.db").write_bytes(b"SQLite format 3\x00" + os.urandom(16 * 1024))
    port = free_port()
    daemon = start_daemon(hardened_config(demo_model, demo_clips["coffee"], state, port, free_port()))

    wait_degraded(port, "spool", "history")
    status, body = healthz(port)
    assert status == 200 and body["healthy"] is True, body  # degraded, still serving
    assert "spool.db.corrupt-" in body["degraded"]["spool"]
    assert len(list(state.glob("spool.db.corrupt-*"))) == 1
    assert len(list(state.glob("history.db.corrupt-*"))) == 1
    before = inferred(port)
    wait_until(lambda: inferred(port) > before, 30, message="inference to go on")
    text = scrape(port)
    assert sample(text, "edgewatch_degraded", part="spool") == 1
    assert sample(text, "edgewatch_degraded", part="history") == 1
    daemon.wait_for_output(r"alert degraded firing: degraded: history: .*spool: ", timeout=10)
    daemon.wait_for_output(r"Model Monitoring report, camera kitchen \(not sent", timeout=30)
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.output()


def test_a_spool_with_a_damaged_index_page_does_not_crash_loop(
    tmp_path, start_daemon, demo_model, demo_clips
):
    state = tmp_path / "state"
    state.mkdir()
    spool = Spool(state / "spool.db", max_bytes=10**6, max_age=10**9)
    for n in range(50):
        spool.put("report", "kitchen", {"n": n, "pad": "x" * 500})
    spool.close()
    overwrite_root_page(state / "spool.db", "requests_created")
    port = free_port()
    daemon = start_daemon(hardened_config(demo_model, demo_clips["coffee"], state, port, free_port()))
    body = wait_degraded(port, "spool")
    assert "was corrupt: set aside as spool.db.corrupt-" in body["degraded"]["spool"]
    daemon.wait_for_output(r"Model Monitoring report, camera kitchen \(not sent", timeout=30)
    assert daemon.proc.poll() is None and daemon.terminate() == 0
    assert "Traceback" not in daemon.output()


READ_ONLY = 'mount --bind "{state}" "{state}"\nmount -o remount,bind,ro "{state}"'
FULL = 'mount -t tmpfs -o size=1m tmpfs "{state}"\ndd if=/dev/zero of="{state}/fill" bs=64k 2>/dev/null || :'


@needs_root
@pytest.mark.parametrize("fault", [READ_ONLY, FULL], ids=["read-only", "full"])
def test_an_unwritable_state_folder_runs_the_spool_and_history_in_memory(
    tmp_path, start_daemon, demo_model, demo_clips, fault
):
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    daemon = start_daemon(
        hardened_config(demo_model, demo_clips["coffee"], state, port, free_port()),
        prefix=in_namespace(fault.format(state=state)),
    )
    body = wait_degraded(port, "spool", "history")
    assert "kept in memory only" in body["degraded"]["spool"]
    # the monitoring sink still aggregates and "spools" (in memory) every window
    daemon.wait_for_output(r"Model Monitoring report, camera kitchen \(not sent", timeout=30)
    assert healthz(port)[0] == 200
    assert daemon.terminate() == 0, daemon.output()[-4000:]
    assert list(state.iterdir()) == []  # nothing written through the fault (the tmpfs went with the daemon)
    assert "Traceback" not in daemon.output()


@needs_root
def test_a_daemon_that_may_only_read_another_daemons_state_folder_is_refused_it(
    tmp_path, start_daemon, demo_model, demo_clips
):
    """A second unit whose config still names the first daemon's folder sees it read-only (ProtectSystem=):
    it finds the lock taken through a read-only descriptor and stops, rather than running on in memory."""
    state = tmp_path / "state"
    state.mkdir()
    first = start_daemon(hardened_config(demo_model, demo_clips["coffee"], state, free_port(), free_port()))
    first.wait_for_output(r"edgewatch .* running", timeout=60)
    second = start_daemon(
        hardened_config(demo_model, demo_clips["coffee"], state, free_port(), free_port()),
        name="second.toml",
        prefix=in_namespace(READ_ONLY.format(state=state)),
    )
    assert second.wait(timeout=60) == 1
    assert second.lines == [
        f"edgewatch: cannot start: {tmp_path / 'second.toml'}: roboflow.spool: the folder {state} is in use "
        f"by another edgewatch (pid {first.proc.pid}); each daemon needs a folder of its own"
    ]
    assert first.proc.poll() is None and first.terminate() == 0


@needs_root
def test_a_disk_filling_while_running_counts_every_lost_window_and_recovers(
    tmp_path, start_daemon, demo_model, demo_clips
):
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    daemon = start_daemon(
        hardened_config(demo_model, demo_clips["coffee"], state, port, free_port()),
        prefix=in_namespace(f'mount -t tmpfs -o size=2m tmpfs "{state}"'),
    )
    daemon.wait_for_output(r"Model Monitoring report, camera kitchen \(not sent", timeout=60)
    assert sample(scrape(port), "edgewatch_monitoring_reports_total", result="dropped") == 0

    def in_daemon_mounts(*command: str) -> None:
        subprocess.run(["nsenter", "-t", str(daemon.proc.pid), "-m", *command], check=False,
                       capture_output=True, timeout=30)

    in_daemon_mounts("dd", "if=/dev/zero", f"of={state}/filler", "bs=64k")  # until the disk is full
    wait_until(
        lambda: sample(scrape(port), "edgewatch_monitoring_reports_total", result="dropped") >= 2,
        30, message="lost windows counted as dropped",
    )
    body = wait_degraded(port, "spool")
    assert "cannot store requests" in body["degraded"]["spool"]
    daemon.wait_for_output(r"alert degraded firing: .*spool: .*cannot store requests", timeout=10)
    daemon.wait_for_output(r"Model Monitoring report of camera kitchen is lost: .*full", timeout=10)

    in_daemon_mounts("rm", f"{state}/filler")
    wait_until(lambda: sample(scrape(port), "edgewatch_degraded", part="spool") == 0, 30,
               message="the spool to work again")

    in_daemon_mounts("dd", "if=/dev/zero", f"of={state}/filler", "bs=64k")  # full again, then stop
    wait_degraded(port, "spool")
    assert daemon.terminate() == 0
    output = daemon.output()
    problems = ("Traceback", "failed to flush", "failed to close")
    assert not any(problem in output for problem in problems), output[-3000:]


def infer(api_port: int, image: Path, key: str | None = None, timeout: float = 30) -> tuple[int, Any]:
    value = base64.b64encode(image.read_bytes()).decode()
    body = {"model_id": "coco/3", "image": {"type": "base64", "value": value}}
    request = urllib.request.Request(
        f"http://127.0.0.1:{api_port}/infer/object_detection",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def idle_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never send a byte (those the kernel did not complete are skipped)."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            sock.close()
            continue
        sockets.append(sock)
    return sockets


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_2000_idle_connections_per_port_leave_health_metrics_and_inference_answering(
    tmp_path, start_daemon, demo_model, demo_clips
):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 5000:
        pytest.skip("this test opens 4000 client sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 5000), hard))
    state = tmp_path / "state"
    port, api_port = free_port(), free_port()
    daemon = start_daemon(
        hardened_config(demo_model, demo_clips["coffee"], state, port, api_port),
        prefix=["prlimit", "--nofile=1024:1024", "--"],  # the unit's LimitNOFILE
    )
    daemon.wait_for_output(r"HTTP inference API .* on http://", timeout=60)
    wait_until(lambda: healthz(port)[0] == 200, 30, message="/healthz")
    idle: list[socket.socket] = []
    try:
        for target in (port, api_port):
            idle += idle_connections(target, 2000)
        assert len(idle) >= 3000  # most got through the handshake (the listen backlog holds the rest)
        started = time.monotonic()
        assert healthz(port)[0] == 200
        assert "edgewatch_frames_inferred_total" in scrape(port)
        status, result = infer(api_port, PHOTOS / "coffee.png")
        assert status == 200 and any(p["class"] == "cup" for p in result["predictions"])
        assert time.monotonic() - started < 15
        threads = int(re.search(r"^Threads:\s+(\d+)", Path(f"/proc/{daemon.proc.pid}/status").read_text(),
                                 re.M).group(1))
        assert threads < 80, threads  # a fixed pool, not a thread per connection
        used = cpu_seconds(daemon.proc.pid)
        time.sleep(2)  # measuring CPU use over a period, not synchronising
        assert cpu_seconds(daemon.proc.pid) - used < 1.5  # no spinning on a listening socket
        dropped = sample(scrape(port), "edgewatch_http_connections_dropped_total", server="exporter",
                         reason="evicted")
        assert dropped > 0
    finally:
        for sock in idle:
            sock.close()
    assert daemon.terminate() == 0
    assert "Traceback" not in daemon.output()


KEY = "edge-key-7f3a91"


def rss_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1)) * 1024


def post_raw(api_port: int, body: bytes, headers: dict[str, str], path: str = "/infer/object_detection"):
    request = urllib.request.Request(f"http://127.0.0.1:{api_port}{path}", body, headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_hostile_requests_cost_little_memory_and_get_one_line_answers(
    tmp_path, start_daemon, demo_model, demo_clips
):
    port, api_port = free_port(), free_port()
    daemon = start_daemon(
        hardened_config(
            demo_model, demo_clips["coffee"], tmp_path / "state", port, api_port, api=f'keys = ["{KEY}"]'
        ),
    )
    daemon.wait_for_output(r"HTTP inference API .* on http://", timeout=60)
    pid = daemon.proc.pid
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    assert infer(api_port, PHOTOS / "coffee.png", KEY)[0] == 200
    baseline = rss_bytes(pid)

    # 20 MB of small JSON numbers with a wrong key: refused before the body is read, let alone parsed
    numbers = b"[" + b"1," * (10 * 1024 * 1024 - 2) + b"1]"  # just under api.max_body_mb (20)
    for _ in range(3):
        status, answer = post_raw(api_port, numbers, {"Authorization": "Bearer wrong"})
        assert status == 401 and answer == {"message": "a valid API key is required"}
    # the same without any key: the body is searched for one, never parsed
    assert post_raw(api_port, numbers, {})[0] == 401
    assert rss_bytes(pid) - baseline < 120 * 1024 * 1024

    # malformed JSON of any shape: a 400, no traceback
    for raw in (b"[" * 200_000, b'{"image": ', b"\xff\xfe", b"[1, 2]", b'"text"', b"{" * 100_000):
        status, answer = post_raw(api_port, raw, auth)
        assert status == 400, (raw[:20], answer)

    # 16 PNGs of 5000x5000 in one 70 KB request: refused from their headers, none decoded
    bomb = {"type": "base64", "value": base64.b64encode(png_header(5000, 5000)).decode()}
    bombs = json.dumps({"model_id": "coco/3", "image": [bomb] * 16}).encode()
    status, answer = post_raw(api_port, bombs, auth)
    assert status == 413 and "max_request_megapixels" in answer["message"]
    assert rss_bytes(pid) - baseline < 120 * 1024 * 1024

    # any thresholds: the detections stay capped by model.max_detections (300)
    coffee = base64.b64encode((PHOTOS / "coffee.png").read_bytes()).decode()
    greedy = {"model_id": "coco/3", "image": {"type": "base64", "value": coffee}, "confidence": 0,
              "iou_threshold": 1, "max_detections": 10**9}
    status, answer = post_raw(api_port, json.dumps(greedy).encode(), auth)
    assert status == 200 and 0 < len(answer["predictions"]) <= 300

    # an API stream cannot pose as a camera
    status, answer = post_raw(
        api_port, json.dumps({**greedy, "source_info": "kitchen", "confidence": 0.5}).encode(), auth
    )
    assert status == 400 and "is a camera of this device" in answer["message"]

    assert infer(api_port, PHOTOS / "coffee.png", KEY)[0] == 200  # still serving
    assert daemon.terminate() == 0
    output = daemon.output()
    assert "Traceback" not in output and "API request" not in output and KEY not in output


def test_a_keyless_api_answers_only_its_own_host_and_origin(tmp_path, start_daemon, demo_model, demo_clips):
    port, api_port = free_port(), free_port()
    daemon = start_daemon(hardened_config(
        demo_model, demo_clips["coffee"], tmp_path / "state", port, api_port, api="allow_url_images = true"
    ))
    daemon.wait_for_output(r"HTTP inference API .* on http://", timeout=60)
    url = f"http://127.0.0.1:{api_port}/api/info"

    def get(headers: dict[str, str]) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    assert get({}) == 200
    assert get({"Host": f"localhost:{api_port}"}) == 200
    assert get({"Host": "rebound.attacker.example"}) == 403  # DNS rebinding
    assert get({"Origin": "http://attacker.example"}) == 403  # a cross-site page
    assert get({"Origin": f"http://127.0.0.1:{api_port}"}) == 200  # the page itself
    status, _ = post_raw(api_port, b'{"model_id": "coco/3"}',
                         {"Content-Type": "text/plain", "Origin": "http://attacker.example"})
    assert status == 403

    # URL images: the device's own ports, the cloud metadata address, another scheme: one answer for all
    answers = set()
    for target in (f"http://127.0.0.1:{port}/metrics", f"http://localhost:{api_port}/info",
                   "http://169.254.169.254/latest/meta-data/", "ftp://10.0.0.1/x.png"):
        body = json.dumps({"model_id": "coco/3", "image": {"type": "url", "value": target}}).encode()
        status, answer = post_raw(api_port, body, {"Content-Type": "application/json"})
        assert status == 400
        answers.add(answer["message"])
    assert answers == {"image: cannot fetch the image URL"}
    assert daemon.terminate() == 0


def test_an_unset_key_variable_refuses_to_start_and_a_keyless_public_api_is_warned_about(
    tmp_path, start_daemon, demo_model, demo_clips
):
    config = tmp_path / "unset.toml"
    config.write_text(hardened_config(
        demo_model, demo_clips["coffee"], tmp_path / "state", free_port(), free_port(),
        api='keys = ["${EDGEWATCH_TEST_UNSET_KEY}"]',
    ))
    env = {key: value for key, value in os.environ.items() if key != "EDGEWATCH_TEST_UNSET_KEY"}
    done = run_cli(["run", "-c", str(config)], cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stdout + done.stderr == (
        f"edgewatch: {config}: api.keys[0]: the key is empty "
        "(${EDGEWATCH_TEST_UNSET_KEY} expands to nothing: is the variable set?)\n"
    )

    port, api_port = free_port(), free_port()
    daemon = start_daemon(hardened_config(
        demo_model, demo_clips["coffee"], tmp_path / "state", port, api_port, api_host="0.0.0.0"
    ))
    daemon.wait_for_output(r"WARNING .*api.host is 0.0.0.0 and api.keys is empty: anyone who can reach", 60)
    daemon.wait_for_output(r"edgewatch \S+ running", 60)
    assert daemon.terminate() == 0


def test_the_page_takes_its_key_out_of_the_url(tmp_path, start_daemon, demo_model, demo_clips):
    api_port = free_port()
    daemon = start_daemon(hardened_config(
        demo_model, demo_clips["coffee"], tmp_path / "state", free_port(), api_port, api=f'keys = ["{KEY}"]'
    ))
    daemon.wait_for_output(r"HTTP inference API .* on http://", timeout=60)
    with chromium(tmp_path / "profile") as browser:
        page = browser.page
        page.goto(f"http://127.0.0.1:{api_port}/?range=day&api_key={KEY}")
        page.wait_for_selector("body[data-loaded=true]", timeout=15000)
        assert page.url == f"http://127.0.0.1:{api_port}/?range=day"
        page.reload()  # the key stays in this tab's session storage
        page.wait_for_selector("body[data-loaded=true]", timeout=15000)
        assert browser.problems == []
    assert daemon.terminate() == 0


class TricklingServer(HoldingServer):
    """Answers every HTTP request with a 200 whose body comes one byte every `every` seconds: no single read
    ever times out, the answer never completes."""

    def __init__(self, every: float = 0.5) -> None:
        self.every = every
        super().__init__(serve=self._trickle)

    def _trickle(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            while not self.stop.wait(self.every):
                connection.sendall(b" ")


def test_a_trickling_roboflow_answer_raises_upload_failing(tmp_path, start_daemon, demo_model, demo_clips):
    server = TricklingServer()
    port = free_port()
    try:
        text = hardened_config(
            demo_model, demo_clips["coffee"], tmp_path / "state", port, free_port(),
            extra="upload_failing_after = 3\n",
        ).replace(
            "[roboflow]\nenabled = true\n",
            f'[roboflow]\nenabled = true\napi_key = "rf-key"\nworkspace = "ws"\ntimeout = 1\n'
            f'api_url = "http://127.0.0.1:{server.port}"\n',
        )
        daemon = start_daemon(text)
        # the attempt never completes: after timeout * 2 + 1 s in flight it counts as failing, 3 s on it fires
        daemon.wait_for_output(r"alert upload_failing firing: Roboflow uploads failing for", 30)
        assert sample(scrape(port), "edgewatch_alert_active", type="upload_failing", camera="") == 1
        assert "rf-key" not in daemon.output()
    finally:
        server.close()  # ends the stalled request (bounding a stop is the shutdown budget's job)
    assert daemon.terminate() == 0


def test_idle_api_streams_free_their_slots(tmp_path, demo_model, model):
    """In process, no inference worker: a stream is taken by any request naming it, so requests with an
    image that is not one (400) are enough to fill the 64 slots."""
    config = edge_config(tmp_path, demo_model, {}, "http://127.0.0.1:9")
    board = FrameBoard([], on_stale=lambda frame: None)
    api = ApiServer(config, ModelInfo.of(model), board, history=None, stream_idle=1.0)
    api.start()
    try:
        def stream_request(name: str) -> str:
            body = {"model_id": "coco/3", "source_info": name, "image": {"type": "base64", "value": "AAAA"}}
            return post_raw(api.port, json.dumps(body).encode(), {"Content-Type": "application/json"})[1][
                "message"
            ]

        for n in range(MAX_STREAMS):
            assert stream_request(f"line{n}").startswith("image: ")
        assert "streams are in use" in stream_request("one-more")
        assert stream_request("line0").startswith("image: ")  # a known stream stays usable
        wait_until(lambda: stream_request("one-more").startswith("image: "), 5, interval=0.2,
                   message="an idle stream's slot to be freed")
    finally:
        api.close()


@needs_root
def test_a_spool_in_memory_goes_back_to_disk_once_the_folder_is_writable(
    tmp_path, start_daemon, demo_model, demo_clips
):
    roboflow = RoboflowServer().start()
    state = tmp_path / "state"
    state.mkdir()
    port = free_port()
    try:
        text = hardened_config(demo_model, demo_clips["coffee"], state, port, free_port()).replace(
            "[roboflow]\nenabled = true\n",
            f'[roboflow]\nenabled = true\napi_key = "{roboflow.api_key}"\napi_url = "{roboflow.url}"\n',
        )
        daemon = start_daemon(text, prefix=in_namespace(READ_ONLY.format(state=state)))
        assert "kept in memory only" in wait_degraded(port, "spool")["degraded"]["spool"]
        roboflow.wait_for(lambda: roboflow.accepted("report"), 30, "a report sent from the spool in memory")
        subprocess.run(["nsenter", "-t", str(daemon.proc.pid), "-m", "mount", "-o", "remount,bind,rw",
                        str(state)], check=True, timeout=30)
        wait_until(lambda: sample(scrape(port), "edgewatch_degraded", part="spool") == 0, 30,
                   message="the spool back on disk")
        daemon.wait_for_output(r"monitoring spool .* can be used again", timeout=5)
        assert (state / "spool.db").is_file()
        assert "history" in healthz(port)[1]["degraded"]  # the history stays in memory until a restart
        assert daemon.terminate() == 0
    finally:
        roboflow.stop()
