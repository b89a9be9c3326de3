"""The command line as an operator uses it: exit codes, one clear line per problem, a clean run and stop."""

from __future__ import annotations

import re
import subprocess
import sysconfig
import urllib.request
import venv
from pathlib import Path

import pytest

from daemon.pipeline.video import cuda_unavailable
from tests.support.daemon import REPO, free_port, run_cli, wait_until
from tests.support.models import failing_model


def camera_block(camera_id: str, url: Path | str, **keys: object) -> str:
    lines = [f'[[cameras]]\nid = "{camera_id}"\nurl = "{url}"']
    lines += [
        f"{key} = {str(value).lower() if isinstance(value, bool) else value}" for key, value in keys.items()
    ]
    return "\n".join(lines) + "\n"


def daemon_config(
    model: Path,
    cameras: str,
    tmp_path: Path,
    metrics_port: int = 0,
    extra: str = "",
    providers: str = '"cpu"',
) -> str:
    return f"""
[device]
id = "test-box"
[model]
path = "{model}"
providers = [{providers}]
max_batch = 4
batch_timeout_ms = 20
threads = 2
{cameras}
[roboflow]
enabled = false
spool = "{tmp_path / "spool.db"}"
[mqtt]
enabled = false
[metrics]
host = "127.0.0.1"
port = {metrics_port}
{extra}"""


def check(tmp_path: Path, text: str):
    config = tmp_path / "config.toml"
    config.write_text(text)
    return run_cli(["check", "-c", str(config)], cwd=tmp_path)


def test_check_passes_on_a_good_config(tmp_path, demo_model, demo_clips) -> None:
    cameras = camera_block("kitchen", demo_clips["coffee"]) + camera_block("street", demo_clips["motorcycle"])
    done = check(tmp_path, daemon_config(demo_model, cameras, tmp_path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(
        r"^ok: model .*yolov3-tiny-coco.onnx \(yolov8, 80 classes, input 416x416, provider cpu\)",
        done.stdout,
        re.M,
    )
    assert "ok: cameras.kitchen" in done.stdout and "ok: cameras.street" in done.stdout


def test_check_says_where_a_camera_with_decoder_cuda_decodes(tmp_path, demo_model, demo_clips) -> None:
    clip = demo_clips["coffee"]
    cameras = camera_block("gpu", clip, decoder='"cuda"') + camera_block("cpu", clip)
    # with onnxruntime-gpu the model's session holds a CUDA context too: the camera must decode beside it
    done = check(tmp_path, daemon_config(demo_model, cameras, tmp_path, providers='"cuda", "cpu"'))
    assert done.returncode == 0, done.stdout + done.stderr
    problem = cuda_unavailable()
    where = "on the GPU" if problem is None else f"on the CPU: {problem}"
    said = f"ok: cameras.gpu: {clip} (decoder = 'cuda': decoding {where})"
    assert said in done.stdout.splitlines(), done.stdout
    assert f"ok: cameras.cpu: {clip}" in done.stdout.splitlines()


def test_check_reports_a_dead_source_with_exit_1(tmp_path, demo_model, demo_clips) -> None:
    cameras = camera_block("good", demo_clips["coffee"]) + camera_block("gone", tmp_path / "missing.mp4")
    done = check(tmp_path, daemon_config(demo_model, cameras, tmp_path))
    assert done.returncode == 1
    assert "ok: cameras.good" in done.stdout
    assert re.search(r"^FAIL: cameras\.gone: .*missing\.mp4: ", done.stdout, re.M)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (
            lambda text: text.replace("[mqtt]", "[mqtt]\ncolour = 'red'"),
            r"config\.toml: mqtt\.colour: unknown key",
        ),
        (
            lambda text: text.replace("max_batch = 4", "max_batch = 'four'"),
            r"config\.toml: model\.max_batch: Input should be a valid integer",
        ),
    ],
)
def test_invalid_config_exits_2_with_one_line(tmp_path, demo_model, mutate, expected) -> None:
    done = check(tmp_path, mutate(daemon_config(demo_model, camera_block("a", "a.mp4"), tmp_path)))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expected, lines[0]), done.stderr
    assert "Traceback" not in done.stderr


def test_missing_and_non_onnx_model_exit_2_with_one_line(tmp_path) -> None:
    missing = tmp_path / "nowhere.onnx"
    done = check(tmp_path, daemon_config(missing, camera_block("a", "a.mp4"), tmp_path))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "model.path" in done.stderr and "nowhere.onnx" in done.stderr and "Traceback" not in done.stderr

    fake = tmp_path / "fake.onnx"
    fake.write_text("this is not a model\n")
    done = check(tmp_path, daemon_config(fake, camera_block("a", "a.mp4"), tmp_path))
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1
    assert "model.path" in done.stderr and "fake.onnx" in done.stderr and "Traceback" not in done.stderr

    done = run_cli(["run", "-c", str(tmp_path / "config.toml")], cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_run_on_the_embedded_demo_config_detects_real_objects_and_stops_by_itself(tmp_path) -> None:
    """The README's run command, minus set-up: the repo's own config.toml and demo clips."""
    if not (REPO / "demo" / "coffee.mp4").is_file():
        pytest.fail("demo clips missing: scripts/setup makes them")
    done = run_cli(
        ["run", "-c", str(REPO / "config.toml"), "--duration", "12"],
        cwd=REPO,
        env={"ROBOFLOW_API_KEY": ""},
        timeout=90,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert re.search(r"kitchen \(up\): \d+ frames in, [1-9]\d* inferred .* detected: .*cup", output), output
    assert re.search(r"street \(up\): .*detected: .*motorbike", output), output
    assert re.search(r"studio \(up\): .*detected: .*person", output), output
    assert "model coco/3 on cpu" in output
    assert "stopped cleanly" in output and "Traceback" not in output


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, default: float | None = None, **labels: str) -> float:
    """The value of one series in a scrape; `default` when absent (else the test fails)."""
    for line in text.splitlines():
        if line.startswith(name + ("{" if labels else " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    if default is not None:
        return default
    raise AssertionError(f"{name} {labels} not in the scrape")


def test_batches_across_cameras_and_stops_on_sigterm(tmp_path, start_daemon, demo_model, demo_clips) -> None:
    port = free_port()
    cameras = "".join(
        camera_block(f"cam{i}", demo_clips["coffee"], loop=True, realtime=False) for i in range(4)
    )
    daemon = start_daemon(daemon_config(demo_model, cameras, tmp_path, metrics_port=port))
    daemon.wait_for_output(r"edgewatch .* running", timeout=60)

    def batched() -> float:
        text = scrape(port)
        return sample(text, "edgewatch_batch_size_count") - sample(
            text, "edgewatch_batch_size_bucket", le="1.0"
        )

    wait_until(lambda: batched() >= 3, timeout=30, message="batches of more than one frame")
    text = scrape(port)
    for i in range(4):
        assert sample(text, "edgewatch_frames_inferred_total", camera=f"cam{i}") > 0
    assert sample(text, "edgewatch_build_info", provider="cpu") == 1
    assert daemon.terminate(timeout=15) == 0
    assert "stopped cleanly" in daemon.output()


def test_a_failing_inference_worker_ends_the_process_with_exit_1(tmp_path, start_daemon, demo_clips) -> None:
    model = failing_model(tmp_path / "fails.onnx")
    daemon = start_daemon(
        daemon_config(model, camera_block("kitchen", demo_clips["coffee"], loop=True), tmp_path)
    )
    assert daemon.wait(timeout=60) == 1
    output = daemon.output()
    assert "inference worker failed" in output and "exiting with code 1" in output


def test_a_second_daemon_on_the_same_state_folder_stops_with_one_line_until_the_first_is_gone(
    tmp_path, start_daemon, demo_model, demo_clips
) -> None:
    """Two daemons on one spool folder would send every report twice: the second is refused before it opens
    a store, the first runs on, and a first one killed with -9 leaves nothing that blocks the next start."""
    first_port, second_port = free_port(), free_port()
    camera = camera_block("kitchen", demo_clips["coffee"], loop=True)
    first = start_daemon(daemon_config(demo_model, camera, tmp_path, metrics_port=first_port))
    first.wait_for_output(r"edgewatch .* running", timeout=60)
    lock_file = tmp_path / "edgewatch.lock"
    assert lock_file.read_text() == f"{first.proc.pid}\n"

    second_config = daemon_config(demo_model, camera, tmp_path, metrics_port=second_port)
    second = start_daemon(second_config, name="second.toml")
    assert second.wait(timeout=60) == 1
    assert second.lines == [
        f"edgewatch: cannot start: {tmp_path / 'second.toml'}: roboflow.spool: the folder {tmp_path} is in "
        f"use by another edgewatch (pid {first.proc.pid}); each daemon needs a folder of its own"
    ]
    assert lock_file.read_text() == f"{first.proc.pid}\n"
    inferred = sample(scrape(first_port), "edgewatch_frames_inferred_total", camera="kitchen")
    wait_until(
        lambda: sample(scrape(first_port), "edgewatch_frames_inferred_total", camera="kitchen") > inferred,
        timeout=30,
        message="the first daemon inferring on",
    )

    first.kill()
    again = start_daemon(second_config, name="second.toml")
    again.wait_for_output(r"edgewatch .* running", timeout=60)
    assert lock_file.read_text() == f"{again.proc.pid}\n"
    assert again.terminate(timeout=15) == 0


def venv_without_runtime(tmp_path: Path, broken_cv2: bool = False) -> Path:
    """A virtualenv with every package of this one but OpenCV and ONNX Runtime (as after a bare
    `pip install edgewatch`); with `broken_cv2`, a cv2 that fails to import as when a library is missing."""
    env = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env)
    site = Path(sysconfig.get_paths(vars={"base": str(env), "platbase": str(env)})["purelib"])
    runtime = ("cv2", "onnxruntime", "opencv_python", "opencv-python", "__editable__", "edgewatch")
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(runtime):
            (site / entry.name).symlink_to(entry)
    if broken_cv2:
        (site / "cv2").mkdir()
        (site / "cv2" / "__init__.py").write_text(
            'raise ImportError("libGL.so.1: cannot open shared object file: No such file or directory")\n'
        )
    return env / "bin" / "python"


def run_in(python: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "daemon", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_without_opencv_or_onnxruntime_each_command_says_what_to_install(tmp_path, demo_model) -> None:
    python = venv_without_runtime(tmp_path)
    config = tmp_path / "config.toml"
    config.write_text(daemon_config(demo_model, camera_block("kitchen", tmp_path / "a.mp4"), tmp_path))
    for command in (["run", "--duration", "1"], ["check"]):
        done = run_in(python, *command, "-c", str(config))
        assert done.returncode == 2, done.stderr
        assert done.stdout == ""
        assert done.stderr.splitlines() == [
            "edgewatch: OpenCV (cv2: not installed) and ONNX Runtime (onnxruntime: not installed) "
            "cannot be imported: install edgewatch[cpu] (CPU), edgewatch[gpu] (NVIDIA GPU), "
            "or on a Jetson JetPack's own OpenCV and onnxruntime-gpu builds"
        ]
    # listing the spool needs neither: it works, and says nothing about them
    done = run_in(python, "reports", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "0 request(s)" in done.stdout or "no " in done.stdout.lower()


def test_a_runtime_that_fails_to_import_is_named_with_its_error(tmp_path, demo_model) -> None:
    python = venv_without_runtime(tmp_path, broken_cv2=True)
    config = tmp_path / "config.toml"
    config.write_text(daemon_config(demo_model, camera_block("kitchen", tmp_path / "a.mp4"), tmp_path))
    done = run_in(python, "check", "-c", str(config))
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith(
        "edgewatch: OpenCV (cv2: libGL.so.1: cannot open shared object file: No such file or directory) and "
        "ONNX Runtime (onnxruntime: not installed) cannot be imported: install edgewatch[cpu]"
    )
