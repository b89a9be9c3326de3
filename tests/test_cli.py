"""The command line as an operator uses it: exit codes, one clear line per problem, a clean run and stop."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import pytest

from tests.support.daemon import REPO, free_port, run_cli, wait_until


def camera_block(camera_id: str, url: Path | str, **keys: object) -> str:
    lines = [f'[[cameras]]\nid = "{camera_id}"\nurl = "{url}"']
    lines += [
        f"{key} = {str(value).lower() if isinstance(value, bool) else value}" for key, value in keys.items()
    ]
    return "\n".join(lines) + "\n"


def daemon_config(model: Path, cameras: str, tmp_path: Path, metrics_port: int = 0, extra: str = "") -> str:
    return f"""
[device]
id = "test-box"
[model]
path = "{model}"
providers = ["cpu"]
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


def failing_model(path: Path) -> Path:
    """A model that loads and warms up (on zeros) but fails on any real frame: an impossible Reshape."""
    from onnx import TensorProto, helper, save

    grow = helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0)
    nodes = [
        grow,
        helper.make_node("Ceil", ["peak"], ["peak_up"]),
        helper.make_node("Cast", ["peak_up"], ["extra"], to=TensorProto.INT64),
        helper.make_node("Mul", ["extra", "last_axis"], ["grown"]),
        helper.make_node("Add", ["shape", "grown"], ["target"]),
        helper.make_node("Reshape", ["zeros", "target"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fails-on-frames",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 84, 100])],
        initializer=[
            helper.make_tensor("zeros", TensorProto.FLOAT, [8400], [0.0] * 8400),
            helper.make_tensor("shape", TensorProto.INT64, [3], [1, 84, 100]),
            helper.make_tensor("last_axis", TensorProto.INT64, [3], [0, 0, 1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    names = {i: f"class{i}" for i in range(80)}
    helper.set_model_props(model, {"names": str(names)})
    save(model, str(path))
    return path


def test_a_failing_inference_worker_ends_the_process_with_exit_1(tmp_path, start_daemon, demo_clips) -> None:
    model = failing_model(tmp_path / "fails.onnx")
    daemon = start_daemon(
        daemon_config(model, camera_block("kitchen", demo_clips["coffee"], loop=True), tmp_path)
    )
    assert daemon.wait(timeout=60) == 1
    output = daemon.output()
    assert "inference worker failed" in output and "exiting with code 1" in output
