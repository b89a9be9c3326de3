"""Camera threads against real sources: a gst-rtsp-server stream, MP4 files, dead and silent URLs."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from daemon.backoff import backoff_delay
from daemon.config import CameraConfig
from daemon.frames import Frame
from daemon.metrics import Metrics
from daemon.pipeline.board import FrameBoard
from daemon.pipeline.capture import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    Camera,
    gstreamer_available,
    next_due,
    probe_source,
    redact_url,
)
from daemon.pipeline.video import cuda_unavailable
from tests.support.daemon import free_port, wait_until
from tests.support.holding import HoldingServer
from tests.support.media import CLIP_FPS, CLIP_SECONDS, STREAM_FPS


class Rig:
    """Real cameras on a real board and real metrics; a consumer takes frames as the inference worker does."""

    def __init__(
        self,
        *configs: CameraConfig,
        consume: bool = True,
        hold: tuple[str, ...] = (),
    ) -> None:
        ids = [config.id for config in configs]
        self.metrics = Metrics()
        self.metrics.init_cameras(ids)
        self.board = FrameBoard(ids, on_stale=self._count_stale)
        self.stop = threading.Event()
        self.status: list[tuple[str, bool]] = []
        self.frames: dict[str, list[Frame]] = {camera: [] for camera in ids}
        self.stale = 0
        self.cameras = {
            c.id: Camera(c, self.board, self.metrics.frames, self.metrics.cameras, self.stop, [self])
            for c in configs
        }
        self._consumer = threading.Thread(target=self._consume, daemon=True) if consume else None
        self._hold = hold  # cameras not started on enter

    def _count_stale(self, _frame: Frame) -> None:
        self.stale += 1

    def on_camera_status(self, camera: str, online: bool) -> None:
        self.status.append((camera, online))

    def _consume(self) -> None:
        while not self.stop.is_set():
            for frame in self.board.take_batch(8, 0, wait=0.2):
                self.frames[frame.camera_id].append(frame)

    def __enter__(self) -> Rig:
        if self._consumer:
            self._consumer.start()
        for camera_id, camera in self.cameras.items():
            if camera_id not in self._hold:
                camera.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> float:
        """Stop everything; returns how long the camera threads took to end."""
        started = time.monotonic()
        self.stop.set()
        for camera in self.cameras.values():
            if camera.ident is not None:
                camera.join(10)
        took = time.monotonic() - started
        self.board.close()
        assert not [name for name, camera in self.cameras.items() if camera.is_alive()]
        return took

    def value(self, name: str, camera: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"camera": camera, **labels}) or 0.0

    def online(self, camera: str) -> bool:
        transitions = [online for name, online in self.status if name == camera]
        return bool(transitions) and transitions[-1]


def camera(camera_id: str, url: Path | str, **keys: object) -> CameraConfig:
    return CameraConfig(id=camera_id, url=str(url), **keys)


def rate(frames: list[Frame]) -> float:
    return (len(frames) - 1) / (frames[-1].captured_mono - frames[0].captured_mono)


def clip_frames(path: Path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            return frames
        frames.append(image)


def closest(image: np.ndarray, clip: list[np.ndarray]) -> float:
    """Mean absolute pixel difference between `image` and the most similar frame of `clip`."""
    return min(float(cv2.absdiff(image, frame).mean()) for frame in clip)


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never says a word (a hung camera)."""
    with HoldingServer() as silent:
        yield silent.port


def test_rtsp_stream_delivers_real_frames_at_the_fps_cap(rtsp_server, mjpeg_clips) -> None:
    with Rig(camera("door", rtsp_server.url, fps=5)) as rig:
        wait_until(
            lambda: len(rig.frames["door"]) >= 12, timeout=20, message="12 frames from the RTSP camera"
        )
        frames = list(rig.frames["door"])
        assert rig.status == [("door", True)]
        assert [frame.frame_id for frame in frames] == list(range(1, len(frames) + 1))
        assert rig.stale == 0
        # the first frame may come from what the stream buffered while it was opened; pacing starts after it
        assert 4.0 < rate(frames[1:]) < 6.0, f"{rate(frames[1:]):.1f} fps with a cap of 5 on {STREAM_FPS} fps"
        image = frames[-1].image
        assert image.shape == (480, 640, 3) and image.dtype == np.uint8
        coffee, motorcycle = clip_frames(mjpeg_clips["coffee"]), clip_frames(mjpeg_clips["motorcycle"])
        assert closest(image, coffee) < 20 < 50 < closest(image, motorcycle)  # the coffee scene, not noise
        assert rig.value("edgewatch_camera_up", "door") == 1
        assert rig.value("edgewatch_frames_captured_total", "door") >= len(frames)
        assert abs(rig.value("edgewatch_camera_last_frame_timestamp_seconds", "door") - time.time()) < 2
        assert rig.cameras["door"].state.online


def test_a_killed_rtsp_server_takes_the_camera_offline_until_it_returns(rtsp_server) -> None:
    with Rig(camera("door", rtsp_server.url, fps=5, stall_timeout=2)) as rig:
        wait_until(lambda: rig.online("door"), timeout=20, message="the camera online")
        rtsp_server.stop()
        killed = time.monotonic()
        wait_until(lambda: not rig.online("door"), timeout=5, message="the camera offline")
        assert time.monotonic() - killed < 2 + 2
        assert rig.value("edgewatch_camera_up", "door") == 0
        assert not rig.cameras["door"].state.online
        down_at = len(rig.frames["door"])

        rtsp_server.start()
        wait_until(lambda: rig.online("door"), timeout=20, message="the camera back online")
        wait_until(lambda: len(rig.frames["door"]) > down_at + 2, timeout=10, message="frames after recovery")
        assert rig.status == [("door", True), ("door", False), ("door", True)]
        assert rig.value("edgewatch_camera_reconnects_total", "door") >= 1
        assert rig.cameras["door"].state.reconnects == rig.value("edgewatch_camera_reconnects_total", "door")
        ids = [frame.frame_id for frame in rig.frames["door"]]
        assert ids == sorted(set(ids))  # frame ids keep counting across the reconnect


def test_a_stalled_stream_is_reopened_after_stall_timeout(rtsp_server) -> None:
    with Rig(camera("door", rtsp_server.url, fps=5, stall_timeout=2)) as rig:
        wait_until(lambda: rig.online("door"), timeout=20, message="the camera online")
        rtsp_server.pause()  # connection open, not a byte more
        paused = time.monotonic()
        wait_until(lambda: not rig.online("door"), timeout=6, message="the stall to be noticed")
        assert 1.5 < time.monotonic() - paused < 2 + 2
        assert rig.cameras["door"].state.last_error == "no frame for 2 s"
        rtsp_server.resume()
        wait_until(lambda: rig.online("door"), timeout=20, message="the camera back after the stall")
        assert rig.value("edgewatch_camera_reconnects_total", "door") >= 1


def test_file_without_loop_delivers_every_frame_then_ends(demo_clips) -> None:
    with Rig(camera("file", demo_clips["coffee"], realtime=False, fps=1)) as rig:
        wait_until(lambda: rig.cameras["file"].finished, timeout=20, message="the end of the file")
        rig.cameras["file"].join(2)
        assert not rig.cameras["file"].is_alive()
        expected = len(clip_frames(demo_clips["coffee"]))
        assert expected == CLIP_SECONDS * CLIP_FPS
        wait_until(lambda: len(rig.frames["file"]) == expected, timeout=5, message=f"{expected} frames")
        assert [frame.frame_id for frame in rig.frames["file"]] == list(range(1, expected + 1))
        assert rig.stale == 0  # nothing dropped, and the fps cap (1) did not apply
        assert rig.value("edgewatch_frames_captured_total", "file") == expected
        assert rig.value("edgewatch_camera_up", "file") == 0
        assert rig.status == [("file", True), ("file", False)]
        assert rig.cameras["file"].state.last_error == "end of file"


def test_file_with_loop_keeps_going_past_the_end(demo_clips) -> None:
    with Rig(camera("loop", demo_clips["motorcycle"], realtime=False, loop=True)) as rig:
        expected = CLIP_SECONDS * CLIP_FPS
        wait_until(lambda: len(rig.frames["loop"]) > 2 * expected, timeout=20, message="frames past the end")
        assert not rig.cameras["loop"].finished
        assert rig.status == [("loop", True)]  # no flap at the loop point
        assert rig.stale == 0
        assert rig.value("edgewatch_camera_reconnects_total", "loop") == 0
        first, again = rig.frames["loop"][0].image, rig.frames["loop"][expected].image
        assert cv2.absdiff(first, again).mean() < 1  # after the end comes the first frame again


def test_decoder_cuda_decodes_on_the_gpu_or_says_once_why_on_the_cpu(demo_clips, rtsp_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="edgewatch")
    configs = (
        camera("file", demo_clips["coffee"], loop=True, decoder="cuda"),
        camera("stream", rtsp_server.url, decoder="cuda"),
        camera("plain", demo_clips["motorcycle"], loop=True),
    )
    with Rig(*configs) as rig:
        wait_until(
            lambda: all(len(frames) >= 5 for frames in rig.frames.values()), timeout=20, message="frames each"
        )
        problem = cuda_unavailable()
        on_gpu = problem is None
        assert rig.value("edgewatch_camera_gpu_decoding", "file") == rig.value(
            "edgewatch_camera_gpu_decoding", "stream"
        ) == (1 if on_gpu else 0)
        registry = rig.metrics.registry
        assert registry.get_sample_value("edgewatch_camera_gpu_decoding", {"camera": "plain"}) is None
        said = [record for record in caplog.records if "decoder = " in record.getMessage()]
        where = "on the GPU" if on_gpu else f"on the CPU: {problem}"
        assert sorted(record.getMessage() for record in said) == [
            f"camera file: decoder = 'cuda': decoding {where}",
            f"camera stream: decoder = 'cuda': decoding {where}",
        ]
        assert {record.levelno for record in said} == {logging.INFO if on_gpu else logging.WARNING}


def test_a_camera_reloaded_with_decoder_cpu_leaves_no_gpu_decoding_series(demo_clips) -> None:
    metrics = Metrics()
    board = FrameBoard(["door"], on_stale=lambda _frame: None)

    def make(decoder: str) -> Camera:
        config = camera("door", demo_clips["coffee"], decoder=decoder)
        return Camera(config, board, metrics.frames, metrics.cameras, threading.Event())

    make("cuda")
    assert metrics.registry.get_sample_value("edgewatch_camera_gpu_decoding", {"camera": "door"}) == 0
    make("cpu")  # what a reload that changes the key does: a new camera thread
    assert metrics.registry.get_sample_value("edgewatch_camera_gpu_decoding", {"camera": "door"}) is None
    board.close()


def test_realtime_file_plays_at_its_own_rate_capped_at_fps(demo_clips) -> None:
    with Rig(camera("paced", demo_clips["camera"], fps=5, loop=True)) as rig:
        wait_until(lambda: len(rig.frames["paced"]) >= 11, timeout=10, message="paced frames")
        assert 4.5 < rate(rig.frames["paced"]) < 5.5, (
            f"{rate(rig.frames['paced']):.1f} fps: 10 fps capped at 5"
        )
        assert rig.stale == 0


def test_realtime_file_under_the_cap_plays_at_the_file_rate(demo_clips) -> None:
    with Rig(camera("paced", demo_clips["coffee"], fps=30, loop=True)) as rig:
        wait_until(lambda: len(rig.frames["paced"]) >= 16, timeout=10, message="paced frames")
        assert 9.0 < rate(rig.frames["paced"]) < 11.0, f"{rate(rig.frames['paced']):.1f} fps: a 10 fps file"


def test_a_dead_camera_backs_off_beside_a_live_one_and_never_logs_its_password(demo_clips, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="edgewatch")
    dead_port = free_port()
    dead_url = f"rtsp://admin:hunter2@127.0.0.1:{dead_port}/nothing"
    with Rig(camera("live", demo_clips["coffee"], fps=10, loop=True), camera("dead", dead_url)) as rig:
        started = time.monotonic()
        wait_until(
            lambda: rig.value("edgewatch_camera_reconnects_total", "dead") >= 2,
            timeout=10,
            message="the dead camera to retry twice",
        )
        # reopens 0.75-1 s, then 1.5-2 s after the failures before them: no spin, no fixed interval
        assert 2.2 < time.monotonic() - started < 3.5
        wait_until(lambda: time.monotonic() - started > 4.5, timeout=5, message="4.5 s")
        assert rig.value("edgewatch_camera_reconnects_total", "dead") == 2
        assert rig.cameras["dead"].state.reconnects == 2
        assert rig.value("edgewatch_camera_up", "dead") == 0
        assert rig.cameras["dead"].state.last_error == f"connection refused by 127.0.0.1:{dead_port}"
        assert not rig.frames["dead"] and ("dead", True) not in rig.status
        assert 9 < rate(rig.frames["live"]) < 11, f"live camera at {rate(rig.frames['live']):.1f} fps"
    assert "rtsp://admin:***@127.0.0.1" in caplog.text
    assert "hunter2" not in caplog.text


def test_an_unexpected_error_is_logged_and_the_camera_restarts(demo_clips, caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="edgewatch")
    rig = Rig(camera("orphan", demo_clips["coffee"], loop=True), consume=False)

    def broken_put(frame: Frame) -> None:
        raise KeyError(frame.camera_id)

    monkeypatch.setattr(rig.board, "put", broken_put)  # every put raises inside the capture loop
    with rig:
        wait_until(
            lambda: rig.value("edgewatch_camera_reconnects_total", "orphan") >= 1,
            timeout=10,
            message="the camera to restart after the error",
        )
        assert rig.cameras["orphan"].is_alive()
        errors = [r for r in caplog.records if r.name == "edgewatch.capture" and r.levelno == logging.ERROR]
        assert errors and "Traceback" in errors[0].getMessage() and "KeyError" in errors[0].getMessage()
        assert rig.cameras["orphan"].state.last_error.startswith("unexpected error: KeyError")


def test_a_file_of_undecodable_frames_is_retried_with_backoff(tmp_path, demo_clips) -> None:
    data = bytearray(demo_clips["coffee"].read_bytes())
    frames_start, index_start = data.find(b"mdat") + 4, data.rfind(b"moov") - 4
    data[frames_start:index_start] = bytes(index_start - frames_start)  # the container stays, the frames go
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(bytes(data))
    assert probe_source(str(corrupt)).problem == "no frame could be decoded"
    with Rig(camera("broken", corrupt, loop=True)) as rig:
        wait_until(
            lambda: rig.value("edgewatch_camera_reconnects_total", "broken") >= 1,
            timeout=10,
            message="the corrupt file to be retried",
        )
        assert rig.value("edgewatch_camera_reconnects_total", "broken") == 1  # the next one 1.5-2 s later
        assert rig.cameras["broken"].is_alive() and not rig.cameras["broken"].finished
        assert rig.cameras["broken"].state.last_error == "no frame could be decoded"
        assert not rig.frames["broken"] and not rig.status


def test_a_gst_camera_without_gstreamer_in_opencv_ends_with_a_clear_error(caplog) -> None:
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer")
    with Rig(camera("jetson", "gst:videotestsrc ! videoconvert ! appsink")) as rig:
        wait_until(lambda: rig.cameras["jetson"].finished, timeout=5, message="the camera to give up")
        rig.cameras["jetson"].join(2)
        assert not rig.cameras["jetson"].is_alive()
        assert "no GStreamer support" in rig.cameras["jetson"].state.last_error
        assert "no GStreamer support" in caplog.text
        assert rig.value("edgewatch_camera_reconnects_total", "jetson") == 0


def test_stop_ends_every_camera_thread_promptly(demo_clips, rtsp_server, silent_port) -> None:
    rig = Rig(
        camera("rtsp", rtsp_server.url),
        camera("file", demo_clips["coffee"], realtime=False, loop=True),
        camera("paced", demo_clips["camera"], loop=True),
        camera("dead", f"rtsp://127.0.0.1:{free_port()}/x"),
        camera("silent", f"rtsp://127.0.0.1:{silent_port}/x"),  # its open hangs until the 10 s timeout
        consume=False,  # nobody takes frames: the unpaced file waits on the board
    )
    with rig:
        wait_until(
            lambda: all(rig.online(c) for c in ("rtsp", "file", "paced")),
            timeout=20,
            message="the live cameras online",
        )
        captured = rig.value("edgewatch_frames_captured_total", "paced")
        wait_until(
            lambda: rig.value("edgewatch_frames_captured_total", "paced") >= captured + 3,
            timeout=5,
            message="frames while the silent camera opens",
        )
        assert rig.cameras["silent"].state.reconnects == 0 and rig.cameras["silent"].is_alive()
        assert rig.close() < 2
    for camera_id in ("rtsp", "file", "paced"):
        assert not rig.online(camera_id) and rig.value("edgewatch_camera_up", camera_id) == 0


def test_a_hung_camera_does_not_hold_up_another_cameras_open(rtsp_server) -> None:
    """OpenCV's capture opened one FFmpeg source at a time, process-wide: a camera that connects and never
    answers held every other camera's open (or reopen) for its whole open timeout, and 64 cameras took
    minutes to come up one after the other."""
    with HoldingServer() as hung:  # connects, then never answers
        hung_url = f"rtsp://127.0.0.1:{hung.port}/x"
        rig = Rig(camera("hung", hung_url), camera("door", rtsp_server.url), hold=("door",))
        with rig:
            # the reachability check's connection, then FFmpeg's, which now waits out the open timeout
            wait_until(
                lambda: len(hung.connections) >= 2, timeout=10, message="the hung camera's open under way"
            )
            rig.cameras["door"].start()
            wait_until(lambda: rig.online("door"), timeout=20, message="the other camera online")
            hung_state = rig.cameras["hung"].state
            assert hung_state.last_error == "" and hung_state.reconnects == 0, hung_state


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://admin:***@10.0.0.5:554/s1"
    assert redact_url("rtsp://admin:p@ss:w0rd@cam/s1") == "rtsp://admin:***@cam/s1"
    assert redact_url("http://cam/video.mjpg?user=admin&pwd=secret&res=hd") == (
        "http://cam/video.mjpg?user=admin&pwd=***&res=hd"
    )
    assert redact_url("gst:rtspsrc location=rtsp://u:pw@cam/s user-pw=pw ! appsink") == (
        "gst:rtspsrc location=rtsp://u:***@cam/s user-pw=*** ! appsink"
    )
    for unchanged in ("rtsp://10.0.0.5/s1", "rtsp://viewer@10.0.0.5/s1", "/srv/clip.mp4", "0", "/dev/video0"):
        assert redact_url(unchanged) == unchanged


def test_probe_source(demo_clips, rtsp_server, tmp_path, silent_port) -> None:
    assert probe_source(str(demo_clips["coffee"])).problem is None
    assert probe_source(rtsp_server.url).problem is None
    assert probe_source(str(tmp_path / "missing.mp4")).problem == "no such file"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    problem = probe_source(str(text)).problem
    assert problem == "cannot read the file as video: Invalid data found when processing input"
    port = free_port()
    assert (
        probe_source(f"rtsp://u:pw@127.0.0.1:{port}/x", timeout=3).problem
        == f"connection refused by 127.0.0.1:{port}"
    )
    started = time.monotonic()
    problem = probe_source(f"rtsp://127.0.0.1:{silent_port}/x", timeout=2).problem
    assert problem == "cannot open the source: no answer within 2 s"
    assert time.monotonic() - started < 5
    problem = probe_source("gst:videotestsrc num-buffers=5 ! videoconvert ! appsink", timeout=3).problem
    if gstreamer_available():
        assert problem is None
    else:
        assert problem and "no GStreamer support" in problem


def test_fps_cap_schedule() -> None:
    def kept(times: list[float], fps: float) -> list[float]:
        due, out = times[0], []
        for now in times:
            following = next_due(due, now, 1 / fps)
            if following is not None:
                due = following
                out.append(now)
        return out

    rng = random.Random(1)
    jittered = [i / 10 + rng.uniform(-0.02, 0.02) for i in range(100)]  # 10 s of a 10 fps camera
    assert len(kept(jittered, 5)) == 50
    assert len(kept(jittered, 10)) == 100  # at the source's own rate nothing is lost to jitter
    assert len(kept(jittered, 4)) in (40, 41)
    assert kept([0.0, 5.0, 5.05, 5.1, 5.3], 5) == [0.0, 5.0, 5.3]  # after a gap: no burst to catch up


def test_backoff_doubles_to_30_s_with_jitter() -> None:
    rng = random.Random(7)
    for attempt, base in enumerate([1, 2, 4, 8, 16, 30, 30, 30]):
        delays = [backoff_delay(attempt, BACKOFF_FIRST, BACKOFF_MAX, rng) for _ in range(50)]
        assert all(0.75 * base <= delay <= base for delay in delays)
        assert max(delays) - min(delays) > 0.1 * base  # jittered, so cameras do not retry in step
    assert backoff_delay(10_000, BACKOFF_FIRST, BACKOFF_MAX, rng) <= 30
