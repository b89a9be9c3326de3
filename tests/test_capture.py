"""Camera threads against real sources: a gst-rtsp-server stream, MP4 files, dead URLs."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from daemon.board import FrameBoard
from daemon.capture import Camera, probe_source, redact_url
from daemon.config import CameraConfig
from daemon.frames import Frame
from daemon.metrics import Metrics
from tests.support.daemon import free_port, wait_until
from tests.support.media import CLIP_FPS, CLIP_SECONDS


class Rig:
    """Real cameras on a real board; a consumer thread takes frames as the inference worker would."""

    def __init__(self, *configs: CameraConfig, consume: bool = True) -> None:
        self.metrics = Metrics()
        ids = [config.id for config in configs]
        self.metrics.init_cameras(ids)
        self.board = FrameBoard(ids, on_stale=self._stale)
        self.stop = threading.Event()
        self.status: list[tuple[str, bool]] = []
        self.frames: dict[str, list[Frame]] = {camera: [] for camera in ids}
        self.stale = 0
        self.cameras = {
            c.id: Camera(c, self.board, self.metrics, self.stop, self._on_status) for c in configs
        }
        self._consumer = threading.Thread(target=self._consume, daemon=True) if consume else None

    def _stale(self, _frame: Frame) -> None:
        self.stale += 1

    def _on_status(self, camera: str, online: bool) -> None:
        self.status.append((camera, online))

    def _consume(self) -> None:
        while not self.stop.is_set():
            for frame in self.board.take_batch(8, 0, wait=0.2):
                self.frames[frame.camera_id].append(frame)

    def __enter__(self) -> Rig:
        if self._consumer:
            self._consumer.start()
        for camera in self.cameras.values():
            camera.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> float:
        """Stop everything; returns how long the camera threads took to end."""
        started = time.monotonic()
        self.stop.set()
        self.board.close()
        for camera in self.cameras.values():
            camera.join(5)
        took = time.monotonic() - started
        assert not any(camera.is_alive() for camera in self.cameras.values())
        return took

    def value(self, name: str, camera: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"camera": camera, **labels}) or 0.0


def camera(camera_id: str, url: Path | str, **keys: object) -> CameraConfig:
    return CameraConfig(id=camera_id, url=str(url), **keys)


def test_rtsp_stream_delivers_capped_frames_and_recovers_after_the_server_dies(rtsp_server) -> None:
    with Rig(camera("door", rtsp_server.url, fps=4, stall_timeout=2)) as rig:
        wait_until(lambda: len(rig.frames["door"]) >= 8, timeout=30, message="frames from the RTSP camera")
        assert rig.status[0] == ("door", True)
        assert rig.value("edgewatch_camera_up", "door") == 1
        frames = rig.frames["door"]
        ids = [frame.frame_id for frame in frames]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert frames[0].image.shape == (480, 640, 3)
        span = frames[-1].captured_mono - frames[0].captured_mono
        rate = (len(frames) - 1) / span
        assert 2.5 < rate < 5.5, f"{rate:.1f} fps with an fps cap of 4 on a 10 fps stream"

        rtsp_server.stop()
        wait_until(lambda: ("door", False) in rig.status, timeout=15, message="the camera to go down")
        assert rig.value("edgewatch_camera_up", "door") == 0
        down_at = len(rig.frames["door"])

        rtsp_server.start()
        wait_until(lambda: rig.status[-1] == ("door", True), timeout=40, message="the camera to come back")
        wait_until(lambda: len(rig.frames["door"]) > down_at + 2, timeout=15, message="frames after recovery")
        assert rig.value("edgewatch_camera_reconnects_total", "door") >= 1
        assert rig.cameras["door"].state.reconnects >= 1


def test_file_without_loop_delivers_every_frame_then_ends(demo_clips) -> None:
    with Rig(camera("file", demo_clips["coffee"], realtime=False)) as rig:
        wait_until(lambda: rig.cameras["file"].finished, timeout=30, message="the end of the file")
        rig.cameras["file"].join(5)
        assert not rig.cameras["file"].is_alive()
        expected = CLIP_SECONDS * CLIP_FPS
        wait_until(lambda: len(rig.frames["file"]) == expected, timeout=5, message=f"{expected} frames")
        assert rig.stale == 0
        assert rig.value("edgewatch_frames_captured_total", "file") == expected
        assert rig.status == [("file", True), ("file", False)]


def test_file_with_loop_keeps_going_past_the_end(demo_clips) -> None:
    with Rig(camera("loop", demo_clips["motorcycle"], realtime=False, loop=True)) as rig:
        expected = CLIP_SECONDS * CLIP_FPS
        wait_until(lambda: len(rig.frames["loop"]) > expected + 5, timeout=30, message="frames past the end")
        assert not rig.cameras["loop"].finished
        assert rig.status == [("loop", True)]  # no flap at the loop point


def test_realtime_file_plays_at_its_own_rate_capped_at_fps(demo_clips) -> None:
    with Rig(camera("paced", demo_clips["camera"], fps=5, loop=True)) as rig:
        wait_until(lambda: len(rig.frames["paced"]) >= 11, timeout=30, message="paced frames")
        frames = rig.frames["paced"]
        rate = (len(frames) - 1) / (frames[-1].captured_mono - frames[0].captured_mono)
        assert 4.0 < rate < 6.0, f"{rate:.1f} fps from a 10 fps file capped at 5"


def test_a_dead_camera_beside_a_live_one_backs_off_and_costs_it_nothing(demo_clips) -> None:
    dead_url = f"rtsp://127.0.0.1:{free_port()}/nothing"
    configs = (
        camera("live", demo_clips["coffee"], fps=10, loop=True),
        camera("dead", dead_url, stall_timeout=1),
    )
    with Rig(*configs) as rig:
        wait_until(
            lambda: rig.value("edgewatch_camera_reconnects_total", "dead") >= 2,
            timeout=20,
            message="the dead camera to retry",
        )
        assert rig.value("edgewatch_camera_up", "dead") == 0
        assert "cannot open" in rig.cameras["dead"].state.last_error
        assert not rig.frames["dead"]
        live = rig.frames["live"]
        rate = (len(live) - 1) / (live[-1].captured_mono - live[0].captured_mono)
        assert rate > 8, f"live camera at {rate:.1f} fps beside a dead one"


def test_stop_ends_every_camera_thread_promptly(demo_clips, rtsp_server) -> None:
    rig = Rig(
        camera("rtsp", rtsp_server.url),
        camera("file", demo_clips["coffee"], realtime=False, loop=True),
        camera("paced", demo_clips["camera"], loop=True),
        camera("dead", f"rtsp://127.0.0.1:{free_port()}/x"),
        consume=False,  # nobody takes frames: the unpaced file waits on the board
    )
    with rig:
        wait_until(
            lambda: rig.value("edgewatch_frames_captured_total", "rtsp") > 0,
            timeout=30,
            message="the RTSP camera",
        )
        assert rig.close() < 3


def test_redact_url_hides_passwords_only() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://admin:***@10.0.0.5:554/s1"
    assert redact_url("rtsp://10.0.0.5/s1") == "rtsp://10.0.0.5/s1"
    assert redact_url("/srv/clip.mp4") == "/srv/clip.mp4"


def test_probe_source(demo_clips, tmp_path) -> None:
    assert probe_source(str(demo_clips["coffee"])) is None
    assert probe_source(str(tmp_path / "missing.mp4")) == "no such file"
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    assert probe_source(str(text)) in ("cannot decode the file", "opened, but no frame could be read")
    assert probe_source(f"rtsp://127.0.0.1:{free_port()}/x", timeout=3) == "cannot open the source"


@pytest.mark.parametrize("url", ["gst:videotestsrc ! appsink"])
def test_gstreamer_pipeline_without_gstreamer_build_is_a_clear_error(url) -> None:
    problem = probe_source(url)
    assert problem is None or "GStreamer" in problem


def test_a_corrupt_file_is_retried_with_backoff_not_spun_on(tmp_path, demo_clips) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    data = demo_clips["coffee"].read_bytes()
    corrupt.write_bytes(data[:48] + bytes(len(data) - 48))  # the header survives, every frame is gone
    with Rig(camera("broken", corrupt, loop=True), camera("fine", demo_clips["coffee"], loop=True)) as rig:
        wait_until(
            lambda: rig.value("edgewatch_camera_reconnects_total", "broken") >= 1,
            timeout=20,
            message="the corrupt file to be retried",
        )
        wait_until(lambda: len(rig.frames["fine"]) >= 10, timeout=20, message="the good camera's frames")
        assert rig.value("edgewatch_camera_reconnects_total", "broken") <= 3  # backoff, not a spin
        assert not rig.frames["broken"]
        assert rig.cameras["broken"].state.last_error in (
            "cannot decode the file",
            "no frame could be decoded",
        )
