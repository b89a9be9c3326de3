"""A smoke run of the benchmark harness (benchmarks/): a couple of seconds of the real daemon path.

The benchmark itself is not part of the suite (`scripts/bench`); this checks that its parts still fit the
daemon: in-memory cameras through `Service`, the drop accounting it relies on, the raw loop and the table.
"""

from __future__ import annotations

import re
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from benchmarks import pipeline
from benchmarks import profile as sampler
from benchmarks.clips import encode_h264
from benchmarks.events import event_cameras, events_thread_work
from benchmarks.harness import Bench, Report, bench_raw, float16_copy, memory_cameras
from benchmarks.pipeline import LatencyRecorder, LoopTimer, bench_config, run_pipeline
from benchmarks.run import OWN_CPU_PER_FRAME_MS, bench_decode, bench_unpaced, main, table
from benchmarks.scale import bench_cameras, bench_capacity, bench_frame_cost, bench_soak
from benchmarks.sources import camera_factory, demo_scenes
from daemon.config import CameraConfig, ModelConfig
from daemon.model.session import Model
from daemon.pipeline.video import cuda_unavailable
from tests.support.edge import photo
from tests.support.inference import infer
from tests.support.mosquitto import Mosquitto
from tests.support.results import frame_result


@pytest.fixture(scope="module")
def scenes() -> list:
    return demo_scenes((640, 480), count=6)


def short_bench(
    tmp_path: Path,
    model: Model,
    demo_model: Path,
    mosquitto: Mosquitto,
    scenes: list,
    report: Report | None = None,
    max_batch: int = 4,
    window: float = 1.0,
) -> Bench:
    """The benchmark's harness with windows of a second or so, on the shared model and the test broker."""
    return Bench(
        model, ModelConfig(path=demo_model, providers=["cpu"]), (mosquitto.host, mosquitto.port), tmp_path,
        scenes, max_batch=max_batch, batch_timeout_ms=10, warmup=0.5, window=window,
        report=report or Report(), bracket=0.3,
    )


@pytest.mark.parametrize("overlap", [False, True], ids=["in turn", "overlapped"])
def test_memory_cameras_through_the_daemon_every_frame_accounted(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list, overlap: bool
) -> None:
    cameras = [
        # live cameras faster than the CPU infers: drops, and frames still waiting when the daemon stops
        *(CameraConfig(id=f"paced-{i}", url="memory:paced", fps=60) for i in range(4)),
        CameraConfig(id="dead", url="memory:dead"),
    ]
    config = bench_config(
        ModelConfig(path=demo_model, providers=["cpu"]),
        cameras,
        tmp_path,
        (mosquitto.host, mosquitto.port),
        max_batch=4,
        batch_timeout_ms=10,
    )

    model.overlap_runs = overlap  # overlapped: as on a GPU (the benchmark's --overlap on)
    try:
        measured, totals = run_pipeline(config, model, camera_factory(scenes), warmup=0.5, seconds=1.5)
    finally:
        model.overlap_runs = False

    assert measured.inferred > 0 and measured.fps > 0
    # measured from the end of one batch to the end of another, within about a batch of the fixed window
    assert measured.batches_span is not None
    span = measured.batches_span
    assert abs(span.seconds - measured.seconds) < 0.5 and abs(span.frames - measured.inferred) <= 8
    assert measured.fps == span.frames / span.seconds
    assert measured.mean_batch == span.frames / span.batches
    assert ("inference-run" in measured.thread_cpu_ms) is overlap  # session.run's own thread, timed too
    assert all(measured.per_camera[f"paced-{i}"] > 0 for i in range(4))
    assert measured.per_camera["dead"] == 0
    assert len(measured.latencies_ms) > 0 and measured.latency(50) > 0
    # session.run time of the batches that ended in the window; the first may have begun before it
    assert 0 < measured.run_seconds < measured.seconds + 0.5
    assert measured.mqtt_dropped == 0  # every result went to the broker
    # each of the daemon's sinks timed on its own (the benchmark's recorder is not one of them)
    assert {"events", "metrics", "mqtt", "monitoring"} <= measured.sink_cpu_ms.keys()
    assert "bench-latency" not in measured.sink_cpu_ms
    assert measured.sink_cpu_ms["mqtt"] > 0 and measured.sink_cpu_ms["monitoring"] > 0
    # after a clean stop, every frame offered was inferred or counted as a stale drop: none lost
    assert totals.dropped["stale"] > 0
    assert totals.offered == totals.inferred + totals.dropped["stale"]
    assert totals.dropped["dispatch_full"] == 0


def test_the_latency_recorder_keeps_an_hour_of_frames_without_a_python_object_each() -> None:
    recorder = LatencyRecorder()
    result = frame_result("cam", 1, [], captured_mono=time.monotonic() - 1)  # captured a second ago
    recorder.handle(result)  # before arm: not noted
    recorder.arm()
    tracemalloc.start()
    try:
        for _ in range(20_000):  # 15 minutes of a soak's frames
            recorder.handle(result)
        held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, pipeline.__file__)])
    finally:
        tracemalloc.stop()
    latencies = recorder.disarm()

    assert latencies.shape == (20_000,) and (latencies >= 1).all()
    # a soak's growth must be the daemon's: 8 bytes a frame in one buffer, not a float object a frame
    assert sum(stat.count for stat in held.statistics("filename")) < 10
    assert sum(stat.size for stat in held.statistics("filename")) < 20_000 * 8 * 1.2


def test_raw_loop_and_table(model: Model, scenes: list) -> None:
    report = Report()

    bench_raw(model, scenes[0], seconds=0.2, report=report)

    assert set(report.raw) == {1, 2, 4} and all(fps > 0 for fps in report.raw.values())  # max_batch 4
    assert report.ratio(report.raw[4], 3.8) == pytest.approx(1.0)  # compared at the nearest batch size
    text = table(report)
    assert text.splitlines()[0].startswith("| section | case |")
    assert "| raw | B=4 |" in text


def test_a_run_is_compared_with_raw_runs_just_before_and_after_it(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list
) -> None:
    bench = short_bench(tmp_path, model, demo_model, mosquitto, scenes, max_batch=1, window=1.5)

    measured, unaccounted = bench.pipeline(memory_cameras(2, "unpaced"))
    row = bench.row("memory", "N=2 unpaced", measured, 2)

    # the run's own max_batch, not that of the config the shared model was loaded with (4)
    assert unaccounted == 0 and measured.mean_batch == 1
    assert measured.raw_fps is not None and measured.raw_fps > 0
    assert row.ratio == pytest.approx(measured.fps / measured.raw_fps)  # no raw section ran: only this one


def test_the_daemons_own_cpu_per_frame_is_checked_as_the_sum_of_its_measured_parts(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list
) -> None:
    report = Report()
    bench = short_bench(tmp_path, model, demo_model, mosquitto, scenes, report, window=1.5)
    letterbox = bench_frame_cost(model, scenes[0], report)

    bench_unpaced(bench, (4,), letterbox)

    assert letterbox > 0
    after_run = {row.batch: row.overhead_ms for row in report.rows if "right after session.run" in row.case}
    assert after_run.keys() == {1, 4} and all(ms > 0 for ms in after_run.values()), after_run
    [(ok, text)] = [(ok, text) for ok, text in report.checks if "own CPU per frame" in text]
    found = re.search(
        r"own CPU per frame ([\d.]+) ms \(letterbox ([\d.]+) \+ decode ([\d.]+) \+ results and hand-over "
        r"([\d.]+) \+ events thread ([\d.]+) \+ dispatcher thread ([\d.]+)\) <= 0.5$",
        text,
    )
    assert found, text
    total, *parts = (float(value) for value in found.groups())
    assert parts[0] == round(letterbox, 2)
    assert all(part > 0 for part in parts[1:]), text  # measured on the run's own threads
    assert total == pytest.approx(sum(parts), abs=0.026)  # each part rounded
    if abs(total - OWN_CPU_PER_FRAME_MS) > 0.005:  # the printed total is rounded: at the limit, either
        assert ok == (total < OWN_CPU_PER_FRAME_MS)
    # the model the benchmark's runs share is itself again: the timing wrappers are gone
    assert not {"prepare", "run", "detections"} & vars(model).keys()


def test_rtsp_cameras_report_when_all_were_online_and_every_one_delivered(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list
) -> None:
    report = Report()
    bench = short_bench(tmp_path, model, demo_model, mosquitto, scenes, report)

    bench_cameras(bench, tmp_path, (1, 3), seconds=2.0)

    rows = [row for row in report.rows if row.section == "cameras"]
    assert [row.case for row in rows] == ["N=1 RTSP 2 fps", "N=3 RTSP 2 fps"]
    for row in rows:
        online = re.match(r"all online after (\d+\.\d) s, RSS \d+ MiB", row.note)
        assert online and 0 < float(online[1]) < 60, row.note
    assert [ok for ok, text in report.checks if "every camera delivered" in text] == [True, True]


@pytest.fixture
def clip(tmp_path: Path, scenes: list) -> Path:
    """The scenes as the capacity section plays them: a 640x480 H.264 file at 15 fps."""
    return encode_h264([frame for scene in scenes for frame in scene], (640, 480), 15, tmp_path / "clip.mp4")


def test_capacity_adds_cameras_until_a_count_drops_frames_and_says_how_many_were_carried(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list, clip: Path
) -> None:
    report = Report()
    bench = short_bench(tmp_path, model, demo_model, mosquitto, scenes, report)

    # one camera at 15 fps is well within this CPU; 16 offer 240 frames/s, several times what it infers
    bench_capacity(bench, clip, (1, 16, 64), fps=15)

    rows = [row for row in report.rows if row.section == "capacity"]
    assert [row.case for row in rows] == ["N=1 at 15 fps", "N=16 at 15 fps"]  # 64 is never tried
    matches = [re.match(r"dropped (\d+\.\d)%, shares spread", row.note) for row in rows]
    dropped = [float(match[1]) for match in matches if match]
    assert dropped[0] < 1 <= dropped[1], dropped
    assert all(row.fps > 0 for row in rows)
    # decoding is the cameras' threads' work, a part of the process's CPU per frame
    pattern = r"process CPU (\d+\.\d+) ms per frame \(camera threads (\d+\.\d+)\)"
    cpu = [re.search(pattern, row.note) for row in rows]
    assert all(match and 0 < float(match[2]) < float(match[1]) for match in cpu), cpu
    assert (
        f"capacity: one daemon carried 1 camera of clip.mp4 at 15 fps with under 1% of frames dropped; "
        f"16 dropped {dropped[1]:.1f}%" in report.notes
    )


def test_the_soak_runs_the_events_and_uploads_to_roboflow_stand_ins_that_accept_every_request(
    tmp_path: Path,
    model: Model,
    demo_model: Path,
    mosquitto: Mosquitto,
    scenes: list,
    clip: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    report = Report()
    bench = short_bench(tmp_path, model, demo_model, mosquitto, scenes, report)

    bench_soak(bench, clip, minutes=0.5)

    printed = capsys.readouterr().out
    assert len(report.rows) == 1 and report.rows[0].case.startswith("0.5 min, RSS ")
    uploads = [line for ok, line in report.checks if line.startswith("soak: uploads accepted")]
    found = re.fullmatch(
        r"soak: uploads accepted: (\d+) Model Monitoring reports, (\d+) Vision Events with (\d+) images; "
        r"(\d+) requests refused",
        uploads[0],
    )
    assert found, uploads
    reports, events, images, refused = (int(value) for value in found.groups())
    assert reports > 0 and events > 0 and images > 0 and refused == 0
    assert (True, uploads[0]) in report.checks
    # the stand-ins ran in a process of their own, and said what they answered
    assert f"monitoring report 200 x{reports}," in printed and f"vision-events events x{events}" in printed
    assert re.search(r"left on disk: spools and history \d+ KiB, snapshots [1-9]\d* files", printed), printed
    assert bench.uploads is None  # the next section uploads nothing


def test_a_run_with_decoder_cuda_says_how_many_cameras_decoded_on_the_gpu(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list, clip: Path
) -> None:
    report = Report()
    bench = short_bench(tmp_path, model, demo_model, mosquitto, scenes, report)
    bench.decoder = "cuda"

    bench_capacity(bench, clip, (2,), fps=5)

    on_gpu = 2 if cuda_unavailable() is None else 0
    [row] = [row for row in report.rows if row.section == "capacity"]
    assert row.note.endswith(f", decoding on the GPU: {on_gpu} of 2 cameras"), row.note


@pytest.mark.parametrize(
    ("counts", "fair", "text"),
    [
        ([8, 7, 8, 7], True, "spread 13.3%, 7-8 frames each"),  # a partial last turn: one frame either way
        ([100, 109, 104], True, "spread 8.6%, 100-109 frames each"),
        ([6, 8, 7], False, "spread 28.6%, 6-8 frames each"),
        ([100, 112, 106], False, "spread 11.3%, 100-112 frames each"),
        ([0, 0], True, "spread 0.0%, 0-0 frames each"),
    ],
)
def test_shares_count_as_fair_within_10_percent_or_one_frame(
    counts: list[int], fair: bool, text: str
) -> None:
    shares = pipeline.Shares(counts)
    assert shares.fair is fair
    assert str(shares) == text


def test_cpu_per_frame_folds_the_camera_threads_alive_at_both_readings_into_one_figure() -> None:
    before = {
        ("inference", "inference"): 1.0, ("dispatcher", "dispatcher"): 0.5, ("cameras", "camera-a"): 2.0,
        ("cameras", "camera-b"): 3.0, ("process", "process"): 10.0,
    }
    # camera-c started within the window: its time before it is unknown, so it is left out
    after = {
        ("inference", "inference"): 1.2, ("dispatcher", "dispatcher"): 0.6, ("cameras", "camera-a"): 2.3,
        ("cameras", "camera-b"): 3.1, ("cameras", "camera-c"): 0.4, ("process", "process"): 11.0,
    }
    per_frame = pipeline.cpu_per_frame(before, after, frames=100)
    assert list(per_frame) == ["inference", "dispatcher", "cameras", "process"]
    assert per_frame == pytest.approx({"inference": 2.0, "dispatcher": 1.0, "cameras": 4.0, "process": 10.0})
    assert pipeline.cpu_per_frame(before, after, frames=0)["cameras"] == 0.0


def test_the_gil_summary_gives_the_share_of_the_window_each_role_held_it_with_the_camera_threads_together(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "py-spy-gil.txt"  # py-spy's raw format: a thread and its stack, then the samples
    retrieve = "VideoStream.retrieve (daemon/pipeline/video.py:212)"
    raw.write_text(
        f"thread (101): camera-cam-1;Thread._bootstrap (threading.py:1002);{retrieve} 100\n"
        f"thread (102): camera-cam-2;Thread._bootstrap (threading.py:1002);{retrieve} 50\n"
        "thread (103): inference;InferenceWorker.run (daemon/pipeline/inference.py:147) 60\n"
        "thread (103): inference;Model.detections (daemon/model/session.py:540) 40\n"
        "thread (104): events 25\n"  # caught between two Python frames, as py-spy can
    )

    roles = {101: "cameras", 102: "cameras", 103: "inference", 104: "events"}  # as Service.threads_by_role

    share, text = sampler.gil_summary(raw, roles, seconds=2, rate=250)

    assert share == pytest.approx(0.55)
    assert text.splitlines() == [
        "GIL held in 55% of 500 samples",
        f"   30.0%  cameras: {retrieve} 100%",
        "   20.0%  inference: InferenceWorker.run (daemon/pipeline/inference.py:147) 60%, "
        "Model.detections (daemon/model/session.py:540) 40%",
        "    5.0%  events: (no Python frame) 100%",
    ]


def test_a_window_holds_whole_batches_only_when_one_ended_before_it_and_one_in_it() -> None:
    mark = pipeline.BatchMark
    assert pipeline.whole_batches(mark(10.0, 24, 6), mark(18.1, 292, 73)) == pytest.approx((8.1, 268, 67))
    assert pipeline.whole_batches(mark(10.0, 0, 0), mark(18.1, 268, 67)) is None  # opened before any ended
    assert pipeline.whole_batches(mark(10.0, 24, 6), mark(10.0, 24, 6)) is None  # none in it (a dead camera)


def test_the_h264_clips_are_4_2_0_as_cameras_send_them(tmp_path: Path, scenes: list) -> None:
    clip = encode_h264(scenes[0][:15], (640, 480), 15, tmp_path / "clip.mp4")
    data = clip.read_bytes()
    profile = data[data.index(b"avcC") + 5]  # AVCProfileIndication, after the box's version byte
    # Baseline, Main and High carry 4:2:0; x264 left to itself takes BGR as High 4:4:4 (244), which costs
    # twice as much to decode
    assert profile in (66, 77, 100), profile


def test_the_checked_decode_case_runs_repeatedly_and_is_judged_by_its_median(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list
) -> None:
    clip = encode_h264([frame for scene in scenes for frame in scene], (640, 480), 15, tmp_path / "clip.mp4")
    report = Report()
    bench_raw(model, scenes[0], seconds=0.2, report=report)
    bench = short_bench(tmp_path, model, demo_model, mosquitto, scenes, report)

    bench_decode(bench, {"640x480": clip}, (1, 4), quick=True, repeats=3)

    def ratios(case: str) -> list[float]:
        return [row.ratio or 0.0 for row in report.rows if row.section == "decode" and row.case == case]

    checked = ratios("640x480 N=4 realtime=false")
    assert len(checked) == 3 and all(ratio > 0 for ratio in checked)
    assert len(ratios("640x480 N=1 realtime=false")) == 1  # only the checked case repeats
    (check,) = [text for _, text in report.checks if "unpaced files" in text]
    assert check.startswith(f"640x480 N=4 unpaced files: pipeline/raw {sorted(checked)[1]:.3f} >= 0.96")
    assert "(median of 3: " in check
    # the ceiling decoding itself leaves the model: raw beside 4 decoding threads, no daemon
    (alone,) = [row for row in report.rows if row.case == "clip: raw B=4 beside 4 decoders, no daemon"]
    assert alone.fps > 0 and alone.ratio is not None and 0 < alone.ratio < 1.5
    assert f"decoding alone, no daemon, leaves the model {alone.ratio:.3f} of raw" in check
    decoding = re.fullmatch(r"decoding (\d+\.\d\d) ms CPU per frame", alone.note)
    assert decoding and float(decoding[1]) > 0  # the decoders' own CPU time was counted


def test_event_cameras_track_through_the_daemon_and_the_sink_work_is_timed(
    tmp_path: Path, model: Model, demo_model: Path, mosquitto: Mosquitto, scenes: list
) -> None:
    config = bench_config(
        ModelConfig(path=demo_model, providers=["cpu"]),
        event_cameras(2, "unpaced"),
        tmp_path,
        (mosquitto.host, mosquitto.port),
        max_batch=4,
        batch_timeout_ms=10,
    )
    service_metrics: list = []
    measured, totals = run_pipeline(
        config,
        model,
        camera_factory(scenes),
        warmup=0.5,
        seconds=1.5,
        on_window=lambda service: service_metrics.append(service.metrics.registry),
    )
    assert measured.inferred > 0 and totals.offered == totals.inferred + totals.dropped["stale"]
    # each pipeline thread's CPU time per frame: tracking runs on the events thread, the sinks on the other
    # (on a CPU the worker runs session.run itself: no inference-run thread); the cameras' threads together
    assert list(measured.thread_cpu_ms) == ["inference", "events", "dispatcher", "cameras", "process"]
    assert all(ms > 0 for ms in measured.thread_cpu_ms.values())
    assert sum(ms for name, ms in measured.thread_cpu_ms.items() if name != "process") <= (
        measured.thread_cpu_ms["process"]
    )
    registry = service_metrics[0]
    assert (
        sum(
            registry.get_sample_value("edgewatch_events_total", {"camera": c, "type": "start"}) or 0
            for c in ("cam-1", "cam-2")
        )
        > 0
    )  # the demo scenes' objects were tracked

    wall, cpu = events_thread_work(tmp_path / "work", objects=10, frames=60)
    assert len(wall) == len(cpu) == 60 and (cpu > 0).all() and (wall > 0).all()


def test_the_reload_benchmark_runs_both_reloads_and_prints_its_figures(
    demo_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from benchmarks.reload import main

    markdown = tmp_path / "reload.md"
    args = ["--model", str(demo_model), "--cameras", "2", "--warmup", "1", "--markdown", str(markdown)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "add a camera: " in printed and "(cameras +cam2)" in printed
    assert re.search(r"swap the model: \d+ frames lost .* the worker stopped [\d.]+ ms to swap", printed)
    assert "load average before: " in printed
    assert markdown.read_text().strip() == printed.strip()[printed.index("# edgewatch reload"):].strip()


def test_the_float16_copy_computes_in_half_precision_and_finds_what_the_model_finds(
    tmp_path: Path, model: Model, demo_model: Path
) -> None:
    source = tmp_path / demo_model.name
    shutil.copyfile(demo_model, source)

    half = float16_copy(source)

    assert half == tmp_path / f"{demo_model.stem}-fp16.onnx"
    graph = onnx.load(str(half)).graph
    weights = [initializer.data_type for initializer in graph.initializer]
    assert weights.count(TensorProto.FLOAT16) > weights.count(TensorProto.FLOAT)  # the convolutions' weights
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # what the daemon feeds, unchanged
    images = [photo("coffee.png"), photo("motorcycle_left.png")]
    expected, _ = infer(model, images)
    found, _ = infer(Model.load(ModelConfig(path=half, providers=["cpu"])), images)
    for one, other in zip(found, expected, strict=True):
        assert one.data["class_name"].tolist() == other.data["class_name"].tolist() != []
        np.testing.assert_allclose(one.xyxy, other.xyxy, atol=0.5)
        np.testing.assert_allclose(one.confidence, other.confidence, atol=0.005)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--fp16"], "--fp16 needs --provider cuda or tensorrt"),
        (["--latency-load", "16"], "--latency-load 16: expected CAMERASxFPS, e.g. 16x25"),
        (["--latency-load", "16xfast"], "--latency-load 16xfast: expected CAMERASxFPS, e.g. 16x25"),
        (["--provider", "rocm"], "argument --provider: invalid choice: 'rocm'"),
        (["--overlap", "maybe"], "argument --overlap: invalid choice: 'maybe'"),
        (["--capacity", "4,x"], "--capacity 4,x: expected camera counts, e.g. 1,4,16"),
        (["--cameras", "0,4"], "--cameras 0,4: expected camera counts, e.g. 1,4,16"),
    ],
)
def test_benchmark_options_that_cannot_run_are_refused_before_anything_starts(
    arguments: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_the_inference_threads_split_counts_the_frames_of_a_batch_not_the_rows_it_was_padded_to(
    demo_model: Path,
) -> None:
    model = Model.load(ModelConfig(path=demo_model, providers=["cpu"], max_batch=4))
    model.full_batches = True
    model.run_size = 4  # as on CUDA once a batch of 4 has run: every run is 4 frames
    timer = LoopTimer(model)
    timer.arm()
    try:
        infer(model, [photo("coffee.png")])
        first_batch_done = timer.decoded
        infer(model, [photo("coffee.png"), photo("motorcycle_left.png")])
    finally:
        timer.disarm()

    assert timer.frames == 3
    # when each batch's decoding ended, and the frames by then: a window between two such moments is whole
    assert first_batch_done[1:] == (1, 1) and timer.decoded[1:] == (3, 2)
    assert timer.decoded.at > first_batch_done.at
    assert timer.per_frame_ms()["run"] == pytest.approx(timer.used["run"] / 3 * 1000)
    assert "run" not in vars(model)  # the model's own methods again
