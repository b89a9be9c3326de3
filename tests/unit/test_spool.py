"""The SQLite spool: order, bounds (oldest dropped, counted, logged), crash safety, concurrent use."""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from daemon.health import Health
from daemon.metrics import Metrics
from daemon.roboflow.spool import Spool, read_items
from tests.support.daemon import REPO


def sample(n: int, size: int = 0) -> dict:
    return {"n": n, "pad": "x" * size}


def metric(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def held_bytes(path: Path) -> int:
    """Bytes of request bodies in the spool file, as its bound counts them."""
    return sum(len(item.body.encode()) for item in read_items(path))


def test_requests_come_back_oldest_first_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "spool.db"  # parents are created
    spool = Spool(path, max_bytes=10**6, max_age=3600)
    ids = [spool.put("report", "cam-a", sample(1)), spool.put("metadata", "cam-a", sample(2)),
           spool.put("report", "cam-b", {"text": "café ☕"})]
    assert ids == sorted(ids)
    assert spool.depth == 3
    first = spool.oldest()
    assert first is not None
    assert (first.id, first.kind, first.camera, first.json()) == (ids[0], "report", "cam-a", sample(1))
    spool.delete(first.id)
    spool.delete(first.id)  # already gone: no-op, depth not decremented twice
    assert spool.depth == 2
    second = spool.oldest()
    assert second is not None and second.id == ids[1]
    spool.close()

    items = read_items(path)
    assert [item.id for item in items] == ids[1:]
    assert items[-1].body == '{"text":"café ☕"}'  # compact JSON, UTF-8
    assert [item.id for item in read_items(path, limit=1)] == ids[2:]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_read_items_does_not_create_a_spool(tmp_path: Path) -> None:
    assert read_items(tmp_path / "none.db") == []
    assert not (tmp_path / "none.db").exists()


def test_over_max_bytes_the_oldest_are_dropped_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    metrics.init_cameras(["cam-a", "cam-b"])
    spool = Spool(tmp_path / "spool.db", max_bytes=1000, max_age=3600, metrics=metrics.monitoring)
    ids = []
    with caplog.at_level(logging.WARNING, logger="edgewatch.spool"):
        for n in range(10):
            ids.append(spool.put("report", "cam-a" if n < 6 else "cam-b", sample(n, 180)))
    body_size = len(json.dumps(sample(0, 180), separators=(",", ":")))
    kept = 1000 // body_size
    remaining = [item.id for item in read_items(spool.path)]
    assert remaining == ids[-kept:]  # the newest ones that fit
    assert held_bytes(spool.path) <= 1000 and spool.depth == kept
    assert metric(metrics, "edgewatch_monitoring_reports_total", result="dropped") == 10 - kept
    assert metric(metrics, "edgewatch_spool_depth") == kept
    dropped_lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped_lines and all("max_spool_mb" in line and "cam-a" in line for line in dropped_lines)


def test_older_than_max_age_are_dropped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [1_000_000.0]
    metrics = Metrics()
    spool = Spool(
        tmp_path / "spool.db", max_bytes=10**6, max_age=60, metrics=metrics.monitoring, clock=lambda: now[0]
    )
    old = spool.put("report", "cam-a", sample(1))
    now[0] += 30
    assert metric(metrics, "edgewatch_spool_oldest_age_seconds") == 30
    recent = spool.put("report", "cam-a", sample(2))
    now[0] += 45  # the first is 75 s old, the second 45 s
    with caplog.at_level(logging.WARNING, logger="edgewatch.spool"):
        assert spool.trim() == 1
    assert [item.id for item in read_items(spool.path)] == [recent]
    assert old != recent
    assert metric(metrics, "edgewatch_monitoring_reports_total", result="dropped") == 1
    assert metric(metrics, "edgewatch_spool_oldest_age_seconds") == 45
    assert any("max_spool_age" in r.getMessage() for r in caplog.records)


def test_reopening_restores_depth_and_size(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**6, max_age=3600)
    for n in range(5):
        spool.put("report", "cam-a", sample(n, 10))
    size = held_bytes(spool.path)
    spool.close()
    metrics = Metrics()
    again = Spool(tmp_path / "spool.db", max_bytes=10**6, max_age=3600, metrics=metrics.monitoring)
    assert again.depth == 5 and held_bytes(again.path) == size
    assert metric(metrics, "edgewatch_spool_depth") == 5


def test_a_file_that_is_not_a_spool_is_set_aside_and_a_fresh_one_made(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    health = Health(Metrics().registry)
    spool = Spool(path, max_bytes=10**6, max_age=3600, health=health)
    spool.put("report", "cam", sample(1))
    assert spool.durable and read_items(path)[0].json() == sample(1)
    (aside,) = tmp_path.glob("spool.db.corrupt-*")
    assert aside.read_bytes() == b"this is not a database" * 100
    assert aside.name in health.degraded()["spool"]


def overwrite_root_page(path: Path, name: str) -> None:
    """Fill the b-tree page that `name` (a table or index) starts at with garbage."""
    db = sqlite3.connect(path)
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    (page_size,) = db.execute("PRAGMA page_size").fetchone()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    with path.open("r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\xa5" * page_size)


def test_a_damaged_index_page_is_found_at_start_not_by_a_crash_later(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    metrics = Metrics()
    first = Spool(path, max_bytes=10**6, max_age=3600)
    for n in range(50):
        first.put("report", "cam", sample(n, 500))
    first.close()
    overwrite_root_page(path, "requests_created")
    health = Health(metrics.registry)
    spool = Spool(path, max_bytes=10**6, max_age=3600, metrics=metrics.monitoring, health=health)
    assert spool.trim() == 0  # the call that used to raise out of the constructor
    spool.put("report", "cam", sample(99))
    assert [item.json() for item in read_items(path)] == [sample(99)]
    assert list(tmp_path.glob("spool.db.corrupt-*")) and "spool" in health.degraded()


_WRITER = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from daemon.roboflow.spool import Spool
    spool = Spool(Path(sys.argv[1]), max_bytes=10**9, max_age=10**9)
    exit_after = int(sys.argv[2])
    n = 0
    while True:
        n += 1
        print(spool.put("report", "cam-a", {"n": n, "pad": "x" * 500}), flush=True)
        if n == exit_after:
            os._exit(0)  # no close(), no atexit, no flush of anything
    """
)


def _writer(path: Path, exit_after: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path), str(exit_after)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )


def _assert_intact(path: Path, confirmed: list[int]) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {item.id: item.json()["n"] for item in read_items(path)}
    assert set(confirmed) <= stored.keys()  # every put() that returned is on disk
    assert all(stored[i] == n for n, i in enumerate(confirmed, start=1))
    reopened = Spool(path, max_bytes=10**9, max_age=10**9)
    assert reopened.depth == len(stored)
    reopened.put("report", "cam-a", {"after": "restart"})  # and it is usable
    reopened.close()


def test_rows_survive_kill_9_mid_writing(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    child = _writer(path, exit_after=10**9)
    assert child.stdout is not None
    confirmed = [int(child.stdout.readline()) for _ in range(40)]
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    assert child.returncode == -signal.SIGKILL
    _assert_intact(path, confirmed)


def test_rows_survive_an_exit_without_close(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    child = _writer(path, exit_after=25)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0
    confirmed = [int(line) for line in out.split()]
    assert len(confirmed) == 25
    _assert_intact(path, confirmed)
    assert len(read_items(path)) == 26


def test_one_writer_and_one_deleter_at_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=10**9, max_age=10**9)
    written: list[int] = []
    taken: list[int] = []
    writing_done = threading.Event()

    def writer() -> None:
        for n in range(300):
            written.append(spool.put("report", f"cam-{n % 3}", sample(n)))
        writing_done.set()

    def deleter() -> None:
        while True:
            item = spool.oldest()
            if item is None:
                if writing_done.is_set() and spool.oldest() is None:
                    return
                continue
            taken.append(item.id)
            spool.delete(item.id)

    threads = [threading.Thread(target=writer), threading.Thread(target=deleter)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert taken == written  # each exactly once, in order
    assert spool.depth == 0 and held_bytes(spool.path) == 0
