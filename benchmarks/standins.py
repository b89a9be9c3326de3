"""Roboflow's Model Monitoring and Vision Events endpoints, served locally for the soak by the test suite's
strict stand-ins, in a process of their own: the daemon uploads for hours as it would to Roboflow, and what
the stand-ins keep never counts in the daemon's memory.

    python -m benchmarks.standins   # one JSON line: the URLs and keys; once stdin closes, one more: the tally

The tally counts the requests by `service endpoint status` (e.g. `monitoring report 200`, `vision-events
batch 201`), and the Vision Events accepted (`vision-events events`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

FORGET_EVERY = 30.0  # seconds between tallies: the stand-ins record every request, bodies included


@dataclass(frozen=True)
class StandIns:
    monitoring_url: str
    monitoring_key: str
    vision_events_url: str
    vision_events_key: str


def serve() -> None:
    from tests.support.roboflow_server import RoboflowServer
    from tests.support.vision_events_server import VisionEventsServer

    monitoring, vision_events = RoboflowServer().start(), VisionEventsServer().start()
    tally: collections.Counter[str] = collections.Counter()
    done = threading.Event()

    def forget() -> None:  # on the forgetting thread, then (once it has ended) on this one
        for service, server in (("monitoring", monitoring), ("vision-events", vision_events)):
            tally.update({f"{service} {key}": count for key, count in server.forget().items()})

    def keep_forgetting() -> None:
        while not done.wait(FORGET_EVERY):
            forget()

    addresses = StandIns(monitoring.url, monitoring.api_key, vision_events.url, vision_events.api_key)
    print(json.dumps(dataclasses.asdict(addresses)), flush=True)
    forgetting = threading.Thread(target=keep_forgetting, name="forget", daemon=True)
    forgetting.start()
    sys.stdin.read()  # until the parent closes it, or ends
    done.set()
    forgetting.join()
    forget()
    monitoring.stop()
    vision_events.stop()
    print(json.dumps(dict(tally)), flush=True)


@contextlib.contextmanager
def stand_ins() -> Iterator[tuple[StandIns, collections.Counter[str]]]:
    """The stand-ins in a child process: their addresses, and a Counter that holds their tally once the
    block is left."""
    child = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.standins"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert child.stdin is not None and child.stdout is not None
    tally: collections.Counter[str] = collections.Counter()
    try:
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"the Roboflow stand-ins did not start (exit code {child.wait()})")
        yield StandIns(**json.loads(line)), tally
    finally:
        child.stdin.close()
        last = child.stdout.read()
        child.wait(30)
        if last.strip():
            tally.update(json.loads(last))


if __name__ == "__main__":
    serve()
