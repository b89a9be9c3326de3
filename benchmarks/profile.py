"""Sampling profile of the benchmark's own process with py-spy (the `bench` extra), summarised per thread; and
which threads hold the GIL, and for what share of the time."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

SKIP = ("Thread._bootstrap", "Thread.run ", "Thread._bootstrap_inner")
RATE = 250  # samples a second


def _duration(seconds: float) -> int:
    """The whole seconds py-spy records for a window of `seconds`."""
    return max(1, round(seconds))


def start(out: Path, seconds: float, rate: int = RATE, gil: bool = False) -> subprocess.Popen[bytes]:
    """Record this process for `seconds` into `out` (py-spy's raw, collapsed-stack format). With `gil`, each
    sample is only the thread holding the GIL, if any."""
    py_spy = shutil.which(
        "py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if py_spy is None:
        raise RuntimeError("--profile needs py-spy: pip install -c constraints.txt -e '.[bench]'")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        py_spy,
        "record",
        "--pid",
        str(os.getpid()),
        "--duration",
        str(_duration(seconds)),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out),
        "--threads",
        "--nonblocking",
        *(["--gil"] if gil else []),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stacks(raw: Path, roles: dict[int, str]) -> Iterator[tuple[str, list[str], int]]:
    """A py-spy raw recording's lines (`thread (TID): NAME;frame;... COUNT`): (the thread's role by its native
    id in `roles` (`Service.threads_by_role`: the camera threads are `cameras`), else its name; its stack,
    outermost first; the samples of that stack)."""
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack:
            thread, *frames = stack.split(";")
            tid, _, name = thread.removeprefix("thread (").partition("): ")
            yield roles.get(int(tid), name), frames, int(count)


def summary(raw: Path, roles: dict[int, str], threads: tuple[str, ...], top: int = 12) -> str:
    """Per role of `threads`: its samples, and the functions most often on its stack (inclusive)."""
    samples: Counter[str] = Counter()
    functions: dict[str, Counter[str]] = {thread: Counter() for thread in threads}
    for thread, frames, count in _stacks(raw, roles):
        samples[thread] += count
        if thread in functions:
            for frame in set(frames):
                if not frame.startswith(SKIP):
                    functions[thread][frame] += count
    lines = []
    for thread in threads:
        total = samples[thread] or 1
        lines.append(f"{thread}: {samples[thread]} samples")
        lines += [f"  {n / total:6.1%}  {frame}" for frame, n in functions[thread].most_common(top)]
    return "\n".join(lines)


def gil_summary(
    raw: Path, roles: dict[int, str], seconds: float, rate: int = RATE, top: int = 3
) -> tuple[float, str]:
    """From a recording made with `gil`: the share of the window's samples in which a thread held the GIL, and
    the text: that share per role (as in `summary`), each with the lines where it most often held it (as
    shares of its own)."""
    held: Counter[str] = Counter()
    lines_of: dict[str, Counter[str]] = {}
    for role, frames, count in _stacks(raw, roles):
        held[role] += count
        # py-spy can catch a thread between two Python frames: it held the GIL all the same
        lines_of.setdefault(role, Counter())[frames[-1] if frames else "(no Python frame)"] += count
    ticks = _duration(seconds) * rate
    share = min(1.0, sum(held.values()) / ticks)
    text = [f"GIL held in {share:.0%} of {ticks} samples"]
    for role, count in held.most_common():
        where = ", ".join(f"{frame} {n / count:.0%}" for frame, n in lines_of[role].most_common(top))
        text.append(f"  {count / ticks:6.1%}  {role}: {where}")
    return share, "\n".join(text)
