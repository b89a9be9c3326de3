"""Sampling profile of the benchmark's own process with py-spy (the `bench` extra), summarised per thread."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

SKIP = ("Thread._bootstrap", "Thread.run ", "Thread._bootstrap_inner")


def start(out: Path, seconds: float, rate: int = 250) -> subprocess.Popen[bytes]:
    """Record this process for `seconds` into `out` (py-spy's raw, collapsed-stack format)."""
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
        str(max(1, round(seconds))),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--output",
        str(out),
        "--threads",
        "--nonblocking",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summary(raw: Path, threads: tuple[str, ...] = ("inference", "dispatcher"), top: int = 12) -> str:
    """Per thread of `threads`: its samples, and the functions most often on its stack (inclusive)."""
    samples: Counter[str] = Counter()
    functions: dict[str, Counter[str]] = {thread: Counter() for thread in threads}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = stack.split(";")
        thread = frames[0].rpartition(": ")[2]
        samples[thread] += int(count)
        if thread in functions:
            for frame in set(frames[1:]):
                if not frame.startswith(SKIP):
                    functions[thread][frame] += int(count)
    lines = []
    for thread in threads:
        total = samples[thread] or 1
        lines.append(f"{thread}: {samples[thread]} samples")
        lines += [f"  {n / total:6.1%}  {frame}" for frame, n in functions[thread].most_common(top)]
    return "\n".join(lines)
