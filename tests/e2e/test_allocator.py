"""The daemon's allocator setting, seen from inside a fresh process: whether a decoded frame's block is mapped
on its own (and goes back to the kernel when freed) or comes from the heap, which keeps its high water."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.allocator import MMAP_THRESHOLD, MMAP_THRESHOLD_VARIABLE, TRIM_THRESHOLD_VARIABLE
from tests.support.daemon import REPO

needs_glibc = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="glibc 2.33+ (mallinfo2) is needed to look inside"
)
FRAME_1080P = 1920 * 1080 * 3
FRAME_720P = 1280 * 720 * 3
# Frees a 1080p frame, as a camera does, then counts the blocks glibc maps on their own (mallinfo2's hblks)
# before and after allocating a 720p frame: 1 if that frame is mapped, 0 if it comes from the heap.
MALLINFO = """
import ctypes
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
"""
PROBE = MALLINFO + f"""
import sys
from daemon import allocator
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "daemon":
    allocator.tune_for_frames()
libc.free(libc.malloc({FRAME_1080P}))
before = libc.mallinfo2().hblks
frame = libc.malloc({FRAME_720P})
print(libc.mallinfo2().hblks - before)
"""
# With the demo model loaded and warmed up: the daemon's RSS and what its heaps hold free, in MiB; then its
# RSS once started on a photo camera
STARTED = MALLINFO + """
import pathlib, sys, tempfile
from benchmarks.pipeline import rss_mib
from daemon.model.session import Model
from daemon.service import Service
from tests.support.edge import PhotoCamera, edge_config
config = edge_config(pathlib.Path(tempfile.mkdtemp()), pathlib.Path(sys.argv[1]), {"kitchen": "coffee.png"},
                     "http://127.0.0.1:9")
model = Model.load(config.model)
model.warm_up()
loaded, free = int(rss_mib()), libc.mallinfo2().fordblks >> 20
service = Service(config, model, camera_factory=PhotoCamera)
service.start()
print(loaded, free, int(rss_mib()))
service.shutdown()
"""


def _python(script: str, *args: str, environment: dict[str, str] | None = None) -> list[int]:
    """Run `script` in a new interpreter without glibc's variables unless given; its last line's numbers."""
    env = {key: value for key, value in os.environ.items()
           if key not in (MMAP_THRESHOLD_VARIABLE, TRIM_THRESHOLD_VARIABLE)}
    done = subprocess.run([sys.executable, "-c", script, *args], cwd=REPO, env=env | (environment or {}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [int(number) for number in done.stdout.splitlines()[-1].split()]


def _blocks_mapped_for_a_720p_frame(setting: str, environment: dict[str, str]) -> int:
    return _python(PROBE, setting, environment=environment)[0]


@needs_glibc
def test_frames_stay_mapped_after_a_larger_one_was_freed_once_the_daemon_set_the_allocator() -> None:
    assert MMAP_THRESHOLD < FRAME_720P
    # glibc's default: freeing the 1080p frame raised the threshold above 720p, so the heap serves it
    assert _blocks_mapped_for_a_720p_frame("default", {}) == 0
    assert _blocks_mapped_for_a_720p_frame("daemon", {}) == 1


@needs_glibc
def test_an_operator_setting_in_the_environment_is_kept() -> None:
    larger = {MMAP_THRESHOLD_VARIABLE: str(8 * FRAME_1080P)}
    assert _blocks_mapped_for_a_720p_frame("daemon", larger) == 0
    assert _blocks_mapped_for_a_720p_frame("default", {MMAP_THRESHOLD_VARIABLE: str(MMAP_THRESHOLD)}) == 1


@needs_glibc
def test_the_daemon_gives_back_what_loading_the_model_freed_when_it_starts(demo_model: Path) -> None:
    loaded, free, started = _python(STARTED, str(demo_model))
    # loading leaves 80-90 MiB free in the heaps on onnxruntime 1.31, 45-60 on 1.20 (JetPack's); without the
    # daemon's trim RSS grows a little here
    assert free >= 20, f"loading the model left only {free} MiB free: nothing to give back here"
    assert loaded - started >= free / 2, (loaded, free, started)
