"""Tracking, zones, lines, the event lifecycle, snapshots and the live view, on the real model's detections of
a clip made from a real photo: a motorbike that rides across a line into a zone and stays there."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from daemon.config import Config
from daemon.demo import STREET_PATH, STREET_PHOTO, MovingPath, moving_frame, photo_path, read_photo
from daemon.events.event import Event
from daemon.events.lifecycle import LineTotals, Occupancy, SnapshotRequest
from daemon.events.live import MIN_INTERVAL
from daemon.events.metrics import EventMetrics
from daemon.events.sink import EventsSink, build_events_sink
from daemon.events.snapshots import SnapshotStore
from daemon.frames import FrameResult
from daemon.model.session import Model
from tests.support.daemon import wait_until
from tests.support.inference import infer

FPS = 5
START = 1_700_000_000.0
SIZE = (640, 480)
REVERSED = MovingPath(start=STREET_PATH.end, end=STREET_PATH.start)


def street_config(tmp_path: Path, model: Path, **events: object) -> Config:
    """The embedded demo's street camera: the `parking` zone and the `gate` line, motorbikes only."""
    return Config.model_validate(
        {
            "model": {"path": str(model)},
            "cameras": [
                {
                    "id": "street",
                    "url": "street.mp4",
                    "zones": [
                        {
                            "name": "parking",
                            "polygon": [[0.55, 0.5], [1.0, 0.5], [1.0, 1.0], [0.55, 1.0]],
                            "classes": ["motorbike"],
                            "loiter_after": 2,
                        }
                    ],
                    "lines": [
                        {"name": "gate", "start": [0.5, 0.3], "end": [0.5, 1.0], "classes": ["motorbike"]}
                    ],
                },
                {"id": "kitchen", "url": "coffee.mp4"},
            ],
            "roboflow": {"spool": str(tmp_path / "spool.db")},
            "events": {"snapshot_dir": str(tmp_path / "snapshots"), **events},
        }
    )


class Recorder:
    """An event and counts listener that keeps what it is told."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.counts: list[tuple[str, Occupancy, LineTotals]] = []

    def on_event(self, event: Event) -> None:
        self.events.append(event)

    def on_counts(self, camera_id: str, occupancy: Occupancy, lines: LineTotals) -> None:
        self.counts.append((camera_id, occupancy, lines))

    def of(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.type == kind]


@pytest.fixture(scope="module")
def clips(model: Model) -> dict[str, list[FrameResult]]:
    """The street clip forwards and backwards at 5 fps, as the real model sees it (frames and detections)."""
    photo = read_photo(photo_path(STREET_PHOTO))
    clips = {}
    for name, path in (("forward", STREET_PATH), ("reversed", REVERSED)):
        seconds = path.travel + path.rest
        images = [moving_frame(photo, SIZE, path, index / FPS) for index in range(round(seconds * FPS))]
        found, _ = infer(model, images)
        clips[name] = [(image, detections) for image, detections in zip(images, found, strict=True)]
    return clips


def play(sink: EventsSink, frames, camera: str = "street", offset: float = 0.0) -> list[FrameResult]:
    """Hand every frame to the sink as the dispatcher would; the results as the later sinks see them."""
    results = []
    for index, (image, detections) in enumerate(frames):
        seconds = offset + index / FPS
        result = FrameResult(
            camera_id=camera,
            frame_id=index + 1,
            captured_at=START + seconds,
            captured_mono=1000.0 + seconds,
            inference_id=f"frame-{index}",
            model_id="coco/3",
            width=SIZE[0],
            height=SIZE[1],
            detections=detections[np.arange(len(detections))],  # a fresh copy: the sink tracks in place
            inference_seconds=0.02,
            batch_size=1,
            image=image,
        )
        sink.handle(result)
        results.append(result)
    return results


def make_sink(config: Config) -> tuple[EventsSink, Recorder, CollectorRegistry]:
    registry = CollectorRegistry()
    recorder = Recorder()
    sink = build_events_sink(config, registry, config.roboflow.spool.parent, [recorder], [recorder])
    sink.start()
    return sink, recorder, registry


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_motorbike_crosses_the_gate_into_the_parking_zone_and_stays(
    tmp_path: Path, demo_model: Path, clips
) -> None:
    sink, recorder, registry = make_sink(street_config(tmp_path, demo_model))
    results = play(sink, clips["forward"])

    # one object, one track: the tracker's id is on every later sink's detections
    assert {event.tracker_id for event in recorder.events} == {results[-1].detections.tracker_id[0]}
    assert all(result.detections.tracker_id is not None for result in results)
    motorbike = [r.detections.tracker_id[r.detections.data["class_name"] == "motorbike"] for r in results[2:]]
    assert all(len(ids) == 1 and ids[0] >= 0 for ids in motorbike)

    assert recorder.events[0].type == "start"
    (cross,) = recorder.of("cross")
    assert (cross.line, cross.direction, cross.class_name) == ("gate", "in", "motorbike")
    # the path's bottom centre passes x = 0.5 of the frame 2.1 s into the clip
    assert START + 2.0 <= cross.timestamp <= START + 2.6
    (enter,) = recorder.of("enter")
    assert enter.zone == "parking" and enter.timestamp > cross.timestamp
    (loiter,) = recorder.of("loiter")
    assert loiter.zone == "parking" and loiter.dwell_seconds is not None and loiter.dwell_seconds >= 2
    assert not recorder.of("exit") and not recorder.of("end")
    assert sink.counts("street") == ({"parking": {"motorbike": 1}}, {"gate": {"in": 1, "out": 0}})
    assert recorder.counts[-1] == ("street", {"parking": {"motorbike": 1}}, {"gate": {"in": 1, "out": 0}})
    line = {"camera": "street", "line": "gate", "class": "motorbike"}
    assert sample(registry, "edgewatch_line_crossings_total", direction="in", **line) == 1
    assert sample(registry, "edgewatch_line_crossings_total", direction="out", **line) == 0
    assert sample(registry, "edgewatch_zone_occupancy", camera="street", zone="parking", class_="x") == 0
    occupancy = registry.get_sample_value(
        "edgewatch_zone_occupancy", {"camera": "street", "zone": "parking", "class": "motorbike"}
    )
    assert occupancy == 1
    assert sample(registry, "edgewatch_active_tracks", camera="street") == 1

    sink.flush()  # the daemon stops: the open track ends, leaving the zone
    (exit_,) = recorder.of("exit")
    assert exit_.zone == "parking" and exit_.dwell_seconds == pytest.approx(exit_.last_seen - enter.timestamp)
    assert recorder.events[-1].type == "end"
    assert sink.counts("street") == ({"parking": {}}, {"gate": {"in": 1, "out": 0}})
    assert (
        registry.get_sample_value(
            "edgewatch_zone_occupancy", {"camera": "street", "zone": "parking", "class": "motorbike"}
        )
        == 0
    )
    assert sample(registry, "edgewatch_zone_dwell_seconds_count", camera="street", zone="parking") == 1
    assert sample(registry, "edgewatch_events_total", camera="street", type="cross") == 1
    sink.close(5)
    # every event names the snapshot of its object, written beside the spool: the frame, and the crop
    snapshot = sink.read_snapshot(cross.snapshot_id)
    crop = sink.read_snapshot(cross.snapshot_id, cropped=True)
    assert snapshot is not None and crop is not None
    whole = cv2.imdecode(np.frombuffer(snapshot, np.uint8), cv2.IMREAD_COLOR)
    part = cv2.imdecode(np.frombuffer(crop, np.uint8), cv2.IMREAD_COLOR)
    assert whole.shape == (480, 640, 3) and 100 < part.shape[1] < 400 and 100 < part.shape[0] < 300
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == sorted(
        [f"{cross.snapshot_id}.jpg", f"{cross.snapshot_id}-crop.jpg"]
    )


def test_the_other_way_is_out_and_leaves_the_zone(tmp_path: Path, demo_model: Path, clips) -> None:
    sink, recorder, _ = make_sink(street_config(tmp_path, demo_model, snapshots=False))
    play(sink, clips["reversed"])

    (cross,) = recorder.of("cross")
    assert cross.direction == "out"
    (enter,) = recorder.of("enter")
    (exit_,) = recorder.of("exit")
    assert enter.timestamp < exit_.timestamp < cross.timestamp + 1
    assert not recorder.of("loiter")  # 2 s inside, but it left before loiter_after
    assert sink.counts("street") == ({"parking": {}}, {"gate": {"in": 0, "out": 1}})
    assert sink.read_snapshot(cross.snapshot_id) is None  # snapshots are off


def test_an_object_lost_for_lost_after_ends_and_other_classes_do_not_count(
    tmp_path: Path, demo_model: Path, clips
) -> None:
    sink, recorder, _ = make_sink(street_config(tmp_path, demo_model, lost_after=1.0, snapshots=False))
    forward = clips["forward"]
    play(sink, forward)
    empty = [(image, detections[[]]) for image, detections in forward[:8]]
    play(sink, empty, offset=len(forward) / FPS)  # the motorbike is gone for 1.6 s

    ends = recorder.of("end")
    assert len(ends) == 1 and ends[0].class_name == "motorbike"
    # the low-confidence 'person' boxes the model sees in the photo are tracked, but cross and enter nothing
    assert {event.class_name for event in recorder.of("cross") + recorder.of("enter")} == {"motorbike"}


def test_a_camera_that_went_offline_ends_its_tracks_and_tracks_afresh(
    tmp_path: Path, demo_model: Path, clips
) -> None:
    sink, recorder, _ = make_sink(street_config(tmp_path, demo_model, snapshots=False))
    forward = clips["forward"]
    play(sink, forward[:10])
    first = recorder.of("start")[0]
    sink.camera_offline("street")
    # frames captured before it went offline still count; the first one after it ends the open tracks
    later = 10**6  # seconds: captured after the (wall clock) moment it went offline
    play(sink, forward[10:12], offset=later)
    ended = recorder.of("end")
    assert first.tracker_id in {event.tracker_id for event in ended}
    assert ended[0].timestamp == START + later  # the reconnected camera's first frame ended them


def test_tracks_beyond_max_tracks_are_counted_not_tracked(tmp_path: Path, demo_model: Path, clips) -> None:
    config = street_config(tmp_path, demo_model, max_tracks=1, snapshots=False)
    sink, recorder, registry = make_sink(config)
    forward = clips["forward"]
    # two copies of the motorbike side by side: two objects
    doubled = []
    for image, detections in forward[:10]:
        moved = detections[detections.data["class_name"] == "motorbike"]
        shifted = moved[np.arange(len(moved))]
        shifted.xyxy = shifted.xyxy - np.array([0, 180, 0, 180])
        doubled.append((image, type(moved).merge([moved, shifted])))
    play(sink, doubled)
    assert len({event.tracker_id for event in recorder.of("start")}) == 1
    assert sample(registry, "edgewatch_untracked_objects_total", camera="street") >= 1
    assert sample(registry, "edgewatch_active_tracks", camera="street") == 1


def test_live_view_draws_zones_lines_and_track_ids_at_most_every_quarter_second(
    tmp_path: Path, demo_model: Path, clips
) -> None:
    sink, _, _ = make_sink(street_config(tmp_path, demo_model, snapshots=False))
    assert sink.live.jpeg("street") is None  # no frame yet
    assert sink.live.jpeg("nowhere") is None
    forward = clips["forward"]
    play(sink, forward[:5])
    first = sink.live.jpeg("street")
    assert first is not None
    drawn = cv2.imdecode(np.frombuffer(first, np.uint8), cv2.IMREAD_COLOR)
    raw = forward[4][0]
    assert drawn.shape == raw.shape
    # the gate line (orange, x = 0.5) is drawn over the frame, which stays untouched itself
    column = drawn[200:470, 318:322].reshape(-1, 3).mean(axis=0)
    assert column[2] > 180 and column[0] < 120, column  # BGR: orange
    assert np.abs(raw[200:470, 318:322].astype(int) - column).mean() > 50
    play(sink, forward[5:6], offset=1.0)
    assert sink.live.jpeg("street") is first  # within MIN_INTERVAL: the same bytes, not encoded again
    wait_until(lambda: sink.live.jpeg("street") is not first, MIN_INTERVAL * 8, message="a newer live view")
    # an untracked camera's live view has its boxes without ids
    kitchen = [(image, detections) for image, detections in forward[:1]]
    play(sink, kitchen, camera="kitchen")
    assert sink.live.jpeg("kitchen") is not None


def test_snapshot_store_keeps_its_size_bound_and_counts_evictions(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry, [])
    photo = read_photo(photo_path(STREET_PHOTO))
    store = SnapshotStore(tmp_path / "snapshots", max_mb=0.5, max_age=3600, metrics=metrics)
    store.start()
    ids = [f"00000000-0000-4000-8000-{index:012d}" for index in range(12)]
    for snapshot_id in ids:
        request = SnapshotRequest(snapshot_id, (50.0, 50.0, 300.0, 250.0), "#1 motorbike 0.99")
        wait_until(lambda request=request: store.submit(photo, request), 10, message="room in the queue")
    wait_until(
        lambda: sample(registry, "edgewatch_snapshots_written_total") == len(ids), 20, message="all written"
    )
    store.close(5)
    on_disk = sum(path.stat().st_size for path in (tmp_path / "snapshots").iterdir())
    assert on_disk <= 0.5 * 1024 * 1024
    evicted = sample(registry, "edgewatch_snapshots_evicted_total", reason="size")
    assert evicted >= 1
    assert store.read(ids[0]) is None and store.read(ids[-1]) is not None
    assert len(list((tmp_path / "snapshots").iterdir())) == 2 * (len(ids) - int(evicted))
    assert store.read("../../etc/passwd") is None  # only snapshot ids are ever read
    # a restart indexes what is there and keeps the same bound
    again = SnapshotStore(tmp_path / "snapshots", max_mb=0.25, max_age=3600, metrics=metrics)
    again.start()
    again.close(5)
    assert sum(path.stat().st_size for path in (tmp_path / "snapshots").iterdir()) <= 0.25 * 1024 * 1024
    assert len(list((tmp_path / "snapshots").iterdir())) < 2 * (len(ids) - int(evicted))


def test_ids_keep_counting_per_camera(tmp_path: Path, demo_model: Path, clips) -> None:
    """Each camera has its own tracker: the same scene on two cameras gives each its own track."""
    config = street_config(tmp_path, demo_model, snapshots=False)
    data = config.model_dump()
    data["cameras"][1] = {**data["cameras"][0], "id": "street-2", "url": "street.mp4"}
    sink, recorder, _ = make_sink(Config.model_validate(data))
    forward = clips["forward"]
    for camera in ("street", "street-2"):
        play(sink, forward[:10], camera=camera)
    starts = [event for event in recorder.of("start") if event.class_name == "motorbike"]
    assert sorted(event.camera for event in starts) == ["street", "street-2"]
    assert starts[0].tracker_id == starts[1].tracker_id  # independent id sequences
    assert len({event.id for event in recorder.events}) == len(recorder.events)
