"""The spool's attachments (a Vision Event's image): counted in the bound until uploaded, then only their
reference is kept; a spool written by an older edgewatch gains the columns and keeps its requests."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from daemon.roboflow.spool import Spool, read_items


def test_an_attachment_counts_until_uploaded_then_only_its_reference_stays(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "ve.db", max_bytes=10_000, max_age=3600, name="Vision Events", kinds=("event",))
    image = b"\xff\xd8" + b"x" * 3000
    first = spool.put("event", "dock", {"eventId": "a"}, attachment=image)
    plain = spool.put("event", "dock", {"eventId": "b"})
    head = spool.head(10)
    assert [(item.id, item.attachment_size, item.attachment_ref) for item in head] == [
        (first, len(image), None), (plain, 0, None)
    ]
    assert spool.attachment(first) == image and spool.attachment(plain) is None

    spool.settle_attachment(first, "src-1")
    assert spool.attachment(first) is None
    assert [(item.attachment_size, item.attachment_ref) for item in spool.head(1)] == [(0, "src-1")]
    # the image's bytes left the bound: three more images fit where only two would have
    for n in range(3):
        spool.put("event", "dock", {"eventId": f"c{n}"}, attachment=image)
    assert spool.depth == 5
    spool.delete_many([first, plain])
    assert spool.depth == 3
    spool.close()
    assert [item.json()["eventId"] for item in read_items(tmp_path / "ve.db")] == ["c0", "c1", "c2"]


def test_a_kind_the_spool_does_not_hold_is_refused(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "ve.db", max_bytes=10_000, max_age=3600, kinds=("event",))
    with pytest.raises(ValueError, match="holds no 'report' requests"):
        spool.put("report", "dock", {})
    spool.close()


def test_a_spool_from_before_attachments_keeps_its_requests(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as db:
        db.executescript(
            "CREATE TABLE requests (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " kind TEXT NOT NULL CHECK (kind IN ('report', 'metadata')), camera TEXT NOT NULL,"
            " created REAL NOT NULL, size INTEGER NOT NULL, body TEXT NOT NULL);"
            "INSERT INTO requests (kind, camera, created, size, body)"
            " VALUES ('report', 'dock', 1e12, 2, '{}');"
        )
    assert [item.kind for item in read_items(path)] == ["report"]  # read before the upgrade
    spool = Spool(path, max_bytes=10_000, max_age=10**13)
    assert [(item.kind, item.attachment_size) for item in spool.head(5)] == [("report", 0)]
    spool.put("metadata", "dock", {"data": []})
    assert spool.depth == 2
    spool.close()
