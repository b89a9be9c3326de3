"""CPU time of the pipeline's threads, by what they do: where each frame's cost goes on this host.

Divided by the rate of frames inferred, it is each stage's CPU per frame; beside `process_cpu_seconds_total`
it shows what the model's own threads (ONNX Runtime's, CUDA's) take. When a host drops frames with cores to
spare, the camera threads' share says whether decoding is what one daemon can no longer keep up with
(docs/operators.md, "Is this host at its limit?").
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# the label values: every camera's thread counts under `cameras`, so the set stays this size
ROLES = ("cameras", "inference", "inference-run", "events", "dispatcher")
NAME = "edgewatch_thread_cpu_seconds"
HELP = (
    "CPU time used by the pipeline's threads: cameras (reading and decoding, all together), inference "
    "(letterboxing, decoding outputs; on a CPU session.run too), inference-run (session.run on a GPU), "
    "events, dispatcher (the sinks)."
)
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

ThreadsByRole = Callable[[], Iterable[tuple[str, threading.Thread]]]


def thread_cpu_ticks(thread: threading.Thread) -> int | None:
    """Clock ticks of CPU `thread` has used (Linux), or None if it has not started or has ended. Read by its
    kernel id from /proc: a thread that ends meanwhile leaves a missing file, where its pthread handle would
    be unsafe to use."""
    native_id = thread.native_id
    if native_id is None or not thread.is_alive():
        return None
    try:
        with open(f"/proc/self/task/{native_id}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


class ThreadCpuCollector(Collector):
    """`edgewatch_thread_cpu_seconds_total{thread}`, read at each scrape. A thread that has ended (a camera a
    reload removed) keeps the time it was last read with, so that no counter goes back."""

    def __init__(self, registry: CollectorRegistry, threads: ThreadsByRole) -> None:
        self._threads = threads
        self._lock = threading.Lock()  # scrapes may overlap
        self._last: dict[threading.Thread, tuple[str, int]] = {}  # live threads: role, last reading (ticks)
        self._ended = dict.fromkeys(ROLES, 0)
        registry.register(self)

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(NAME, HELP, labels=["thread"])

    def collect(self) -> Iterator[CounterMetricFamily]:
        with self._lock:
            last: dict[threading.Thread, tuple[str, int]] = {}
            for role, thread in self._threads():
                used = thread_cpu_ticks(thread)
                if used is not None:
                    last[thread] = (role, used)
            for thread, (role, used) in self._last.items():
                if thread not in last:
                    self._ended[role] += used
            self._last = last
            totals = dict(self._ended)
            for role, used in last.values():
                totals[role] += used
        family = CounterMetricFamily(NAME, HELP, labels=["thread"])
        for role in ROLES:
            family.add_metric([role], totals[role] / TICKS_PER_SECOND)
        yield family
