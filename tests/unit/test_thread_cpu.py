"""`edgewatch_thread_cpu_seconds_total`: real threads' CPU time, read from /proc at each scrape, by role."""

from __future__ import annotations

import hashlib
import threading

from prometheus_client import CollectorRegistry, generate_latest

from daemon.metrics.threads import ROLES, ThreadCpuCollector
from tests.e2e.test_cli import sample
from tests.support.daemon import wait_until


def hashing(stop: threading.Event) -> None:
    """Work for the CPU clock to count, until stopped."""
    block = bytes(1 << 20)
    while not stop.is_set():
        hashlib.sha256(block).digest()


def cpu(registry: CollectorRegistry, role: str) -> float:
    return sample(generate_latest(registry).decode(), "edgewatch_thread_cpu_seconds_total", thread=role)


def test_a_threads_cpu_counts_under_its_role_and_stays_counted_after_it_ends() -> None:
    registry = CollectorRegistry()
    stop = threading.Event()
    camera = threading.Thread(target=hashing, args=(stop,), name="camera-kitchen")
    idle = threading.Thread(target=stop.wait, name="dispatcher")
    never_started = threading.Thread(target=stop.wait, name="inference-run")  # a CPU model's run thread
    threads = [("cameras", camera), ("dispatcher", idle), ("inference-run", never_started)]
    ThreadCpuCollector(registry, lambda: threads)
    camera.start()
    idle.start()
    try:
        wait_until(lambda: cpu(registry, "cameras") >= 0.1, timeout=30, message="the camera thread's CPU")
        text = generate_latest(registry).decode()
    finally:
        stop.set()
        camera.join()
        idle.join()
    labels = [line.split('"')[1] for line in text.splitlines() if line.startswith("edgewatch_thread_cpu")]
    assert labels == list(ROLES)  # every role, always, and nothing else
    assert sample(text, "edgewatch_thread_cpu_seconds_total", thread="inference-run") == 0.0
    assert sample(text, "edgewatch_thread_cpu_seconds_total", thread="dispatcher") < 0.05  # it only waited

    # the camera ended and left the list (a reload removed it): its time as last read stays, so the counter
    # never goes back
    threads.pop(0)
    last = cpu(registry, "cameras")
    assert last >= sample(text, "edgewatch_thread_cpu_seconds_total", thread="cameras") >= 0.1
    assert cpu(registry, "cameras") == last
