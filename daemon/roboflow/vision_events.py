"""Roboflow Vision Events as a sink: edge alerts, zone and line events and per-camera counts, with images.

What becomes a Vision Event (`[vision_events] send`):
- `alerts`: an edge alert that fires -> `safety_alert` (`alertType`, `severity`, `description`);
- `zones` / `lines`: a zone `enter`/`exit`/`loiter` or a line `cross` -> `custom`, with the event's data and
  its best snapshot, the object's box on it;
- `counts`: every `counts_interval` seconds, each camera's objects per class -> `inventory_count`.
Nothing is dropped to rate-limit: a burst of one kind on one camera (the same zone and event, or the same
line and direction, or the same alert) within `coalesce` seconds becomes ONE Vision Event that carries the
burst's `count`, its classes and its best snapshot, under the eventId of its first edgewatch event.

Delivery goes through a durable spool like Model Monitoring's: each Vision Event is written (with its JPEG)
before any attempt; the image is uploaded first and its `sourceId` stored with the event, so a retry never
uploads it again and an event is never sent without it; events go in batches of up to 100, oldest first,
with the same `eventId` on every attempt.
"""

from __future__ import annotations

import logging
import struct
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from daemon.alerts.alert import Alert
from daemon.config import Config, ConfigError, VisionEventsConfig
from daemon.events.event import Event
from daemon.frames import FrameResult, class_counts
from daemon.health import NO_HEALTH, Health
from daemon.roboflow.spool import Spool, SpoolError, SpoolItem, created_utc, print_waiting
from daemon.roboflow.transport import Outcome, Response
from daemon.roboflow.uploader import ClientCourier, Delivery, Uploader, UploaderState
from daemon.roboflow.ve_client import BATCH_MAX, VisionEventsClient
from daemon.roboflow.ve_metrics import VisionEventsMetrics
from daemon.sink import Sink
from daemon.timefmt import iso_utc

log = logging.getLogger("edgewatch.vision_events")

SnapshotReader = Callable[[str], "bytes | None"]  # snapshot id -> the JPEG, None when it is gone

KIND = "event"  # the spool's one kind of row
ZONE_EVENTS = {"enter": "zone_enter", "exit": "zone_exit", "loiter": "zone_loiter"}
LINE_EVENTS = {"cross": "line_cross"}
IDS_LISTED = 20  # edgewatch event and tracker ids listed in one Vision Event's eventData
MAX_OPEN_BURSTS = 1000  # beyond this, new bursts are refused (counted as dropped)


# --- the bodies ----------------------------------------------------------------------------------------


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's start-of-frame header; None if it is not a JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 9 < len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + length
    return None


def object_detection(event: Event, image_size: tuple[int, int]) -> dict[str, Any]:
    """The event's box, by centre, in pixels of the image (scaled if it is not the frame's size)."""
    scale_x = image_size[0] / event.image_size[0] if event.image_size[0] else 1.0
    scale_y = image_size[1] / event.image_size[1] if event.image_size[1] else 1.0
    x1, y1, x2, y2 = event.box
    return {
        "class": event.class_name,
        "x": round((x1 + x2) / 2 * scale_x, 1),
        "y": round((y1 + y2) / 2 * scale_y, 1),
        "width": round((x2 - x1) * scale_x, 1),
        "height": round((y2 - y1) * scale_y, 1),
        "confidence": round(event.confidence, 4),
    }


def envelope(
    event_id: str,
    event_type: str,
    timestamp: float,
    *,
    settings: VisionEventsConfig,
    device_id: str,
    camera: str,
    metadata: dict[str, str],
    event_data: dict[str, Any],
) -> dict[str, Any]:
    """The fields every Vision Event has, in the order of Roboflow's reference."""
    body: dict[str, Any] = {
        "eventId": event_id,
        "eventType": event_type,
        "useCaseId": settings.use_case,
        "timestamp": iso_utc(timestamp),
        "eventData": event_data,
        "deviceId": device_id,
    }
    if camera:
        body["streamId"] = camera
    if metadata:
        body["customMetadata"] = dict(metadata)
    return body


@dataclass
class Burst:
    """Edgewatch events (or alerts) of one kind on one camera, gathered into one Vision Event."""

    key: tuple[str, ...]  # (source, camera, kind, zone/line/alert type, direction)
    event_id: str  # the first one's: a uuid4 made once
    first: float  # Unix time of the first
    last: float
    deadline: float  # time.monotonic() at which it is spooled
    count: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    edgewatch_ids: list[str] = field(default_factory=list)
    tracker_ids: list[int] = field(default_factory=list)
    best: Event | None = None  # the most confident event that has a snapshot
    first_event: Event | None = None
    alert: Alert | None = None
    max_dwell: float | None = None

    def add_event(self, event: Event) -> None:
        self.count += 1
        self.last = max(self.last, event.timestamp)
        self.classes[event.class_name] += 1
        if len(self.edgewatch_ids) < IDS_LISTED:
            self.edgewatch_ids.append(event.id)
        if event.tracker_id not in self.tracker_ids and len(self.tracker_ids) < IDS_LISTED:
            self.tracker_ids.append(event.tracker_id)
        if event.dwell_seconds is not None:
            self.max_dwell = max(self.max_dwell or 0.0, event.dwell_seconds)
        if event.snapshot_id and (self.best is None or event.confidence > self.best.confidence):
            self.best = event

    def event_data(self) -> dict[str, Any]:
        if self.alert is not None:
            return {
                "alertType": self.alert.type,
                "severity": self.alert.severity,
                "description": self.alert.message,
                "count": self.count,
            }
        first = self.first_event
        assert first is not None
        data: dict[str, Any] = {"source": "edgewatch", "kind": self.key[2]}
        if first.zone is not None:
            data["zone"] = first.zone
        if first.line is not None:
            data["line"] = first.line
        if first.direction is not None:
            data["direction"] = first.direction
        data.update(count=self.count, classes=dict(sorted(self.classes.items())))
        if self.max_dwell is not None:
            data["maxDwellSeconds"] = round(self.max_dwell, 1)
        best = self.best or first
        data["confidence"] = round(best.confidence, 4)
        if self.count > 1:
            data["until"] = iso_utc(self.last)
        data["trackerIds"] = list(self.tracker_ids)
        data["edgewatchEventIds"] = list(self.edgewatch_ids)
        return data


def burst_key(event: Event) -> tuple[str, ...] | None:
    """(source, camera, kind, zone or line, direction) of a zone or line event; None for the others."""
    if event.type in ZONE_EVENTS:
        return ("zones", event.camera, ZONE_EVENTS[event.type], event.zone or "", "")
    if event.type in LINE_EVENTS:
        return ("lines", event.camera, LINE_EVENTS[event.type], event.line or "", event.direction or "")
    return None


def ready_body(item: SpoolItem) -> dict[str, Any]:
    """The event exactly as it is sent: the uploaded image's sourceId in, a refused image out."""
    body = item.json()
    images = body.get("images")
    if images:
        if item.attachment_ref:
            images[0]["sourceId"] = item.attachment_ref
        elif not item.attachment_size:  # refused by Roboflow (or its bytes gone): the event goes without
            del body["images"]
    return body


# --- delivery ------------------------------------------------------------------------------------------


class _ImageUpload:
    def __init__(self, courier: VisionEventsCourier, item: SpoolItem) -> None:
        self._courier = courier
        self._item = item
        self.ids = (item.id,)
        self.what = f"image of the event on camera {item.camera}"
        self._source_id: str | None = None
        self._gone = False

    def send(self) -> Response:
        image = self._courier.spool.attachment(self._item.id)
        if image is None:  # the bounds dropped the event meanwhile
            self._gone = True
            return Response(Outcome.ACCEPTED, None, "the event left the spool")
        name = f"{self._item.json().get('eventId', 'event')}.jpg"
        response, self._source_id = self._courier.client.upload_image(image, name)
        return response

    def settle(self, response: Response) -> None:
        if self._gone:
            return
        images = self._courier.metrics.images
        if response.outcome is Outcome.ACCEPTED:
            self._courier.spool.settle_attachment(self._item.id, self._source_id)
            images.labels("uploaded").inc()
            self._courier.metrics.last_success.set(time.time())
        elif response.outcome is Outcome.REJECTED:
            self._courier.spool.settle_attachment(self._item.id, None)
            images.labels("failed").inc()
            log.warning("the event goes without its image, which Roboflow refused (%s)", response.detail)
        elif response.outcome is Outcome.RETRY:
            images.labels("retried").inc()


class _EventBatch:
    def __init__(self, courier: VisionEventsCourier, items: Sequence[SpoolItem], single: bool) -> None:
        self._courier = courier
        self._items = list(items)
        self._single = single
        self.ids = tuple(item.id for item in items)
        cameras = ", ".join(sorted({item.camera for item in items}))
        self.what = (
            f"event (camera {cameras})" if single else f"batch of {len(items)} event(s) (cameras {cameras})"
        )

    def send(self) -> Response:
        bodies = [ready_body(item) for item in self._items]
        client = self._courier.client
        return client.send_one(bodies[0]) if self._single else client.send_batch(bodies)

    def settle(self, response: Response) -> None:
        courier = self._courier
        events = courier.metrics.events
        count = len(self.ids)
        if response.outcome is Outcome.ACCEPTED:
            courier.spool.delete_many(list(self.ids))
            courier.singles.difference_update(self.ids)
            events.labels("sent").inc(count)
            courier.metrics.last_success.set(time.time())
        elif response.outcome is Outcome.REJECTED:
            if count > 1:  # one bad event refuses the batch: send these one by one to find it
                courier.singles.update(self.ids)
                log.warning("sending the %d events of the refused batch one by one", count)
                return
            courier.spool.delete_many(list(self.ids))
            courier.singles.difference_update(self.ids)
            events.labels("failed").inc()
            log.error("dropped the refused event %s from the spool", self._items[0].json().get("eventId"))
        elif response.outcome is Outcome.UNAUTHORIZED:
            events.labels("failed").inc(count)
        else:
            events.labels("retried").inc(count)


class VisionEventsCourier(ClientCourier):
    """Images first (each event's, in order), then the events in batches of up to 100."""

    label = "Vision Events"

    def __init__(self, spool: Spool, client: VisionEventsClient, metrics: VisionEventsMetrics) -> None:
        super().__init__(spool, client, metrics.upload_duration, metrics.unauthorized)
        self.metrics = metrics
        self.singles: set[int] = set()  # rows of a refused batch, now sent one at a time

    def next(self) -> Delivery | None:
        items = self.spool.head(BATCH_MAX)
        if not items:
            return None
        head = items[0]
        if head.id in self.singles:
            if head.attachment_size:
                return _ImageUpload(self, head)
            return _EventBatch(self, [head], single=True)
        self.singles.clear()  # a refused batch's rows are always at the head: these left the spool
        for item in items:
            if item.attachment_size:
                return _ImageUpload(self, item)
        return _EventBatch(self, items, single=False)


# --- the sink ------------------------------------------------------------------------------------------


class VisionEventsSink(Sink):
    """Takes alerts (`on_alert`), events (`on_event`) and frame results (`handle`, for counts) on the threads
    that raise them, without I/O: a timer thread closes bursts into the spool, the uploader sends it."""

    name = "vision_events"

    def __init__(
        self,
        config: Config,
        registry: CollectorRegistry,
        read_snapshot: SnapshotReader | None = None,
        *,
        unauthorized_retry: float = 600.0,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        close_grace: float = 5.0,
        health: Health = NO_HEALTH,
    ) -> None:
        settings = config.vision_events.with_defaults(config.roboflow)
        assert settings.spool is not None
        self._settings = settings
        self._device_id = config.device.id
        self._metadata = {camera.id: dict(camera.metadata) for camera in config.cameras}
        self._send = frozenset(settings.send)
        self._read_snapshot = read_snapshot if settings.images else None
        self._close_grace = close_grace
        self.metrics = VisionEventsMetrics(registry)
        self.spool = Spool(
            settings.spool,
            int(settings.max_spool_mb * 1024 * 1024),
            settings.max_spool_age,
            self.metrics,
            name="Vision Events",
            kinds=(KIND,),
            health=health,
            part="vision_events_spool",
        )
        key = settings.api_key.get_secret_value()
        try:
            client = VisionEventsClient(settings.api_url, key, timeout=settings.timeout) if key else None
        except ValueError as exc:  # a proxy variable that is not a proxy URL
            raise ConfigError(f"vision_events: {exc}") from None
        self.sending = client is not None
        self.uploader = Uploader(
            self.spool,
            VisionEventsCourier(self.spool, client, self.metrics) if client else None,
            unauthorized_retry=unauthorized_retry, backoff_base=backoff_base, backoff_max=backoff_max,
            thread_name="vision-events-uploader",
            stalled_after=settings.timeout + 1,
        )
        if not self.sending:
            log.info("no Roboflow API key: Vision Events are kept in %s, not sent", settings.spool)
        self._bursts: dict[tuple[str, ...], Burst] = {}
        self._counts: dict[str, dict[str, int]] = {}  # camera -> its latest frame's objects per class
        self._counts_due = time.monotonic() + settings.counts_interval
        self._changed = threading.Condition()  # guards _bursts, _counts
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self._timer = threading.Thread(target=self._run_timer, name="vision-events-bursts", daemon=True)

    # --- inputs (no I/O) ---------------------------------------------------------------------------

    def handle(self, result: FrameResult) -> None:
        if "counts" in self._send:
            counts = class_counts(result.detections)
            with self._changed:
                self._counts[result.camera_id] = counts

    def on_alert(self, alert: Alert) -> None:
        if "alerts" not in self._send or alert.state != "firing":
            return
        key = ("alerts", alert.camera, "alert", alert.type, "")

        def fold(burst: Burst) -> None:
            burst.alert = burst.alert or alert
            burst.count += 1
            burst.last = max(burst.last, alert.timestamp)

        self._add(key, alert.timestamp, fold)

    def on_event(self, event: Event) -> None:
        key = burst_key(event)
        if key is None or key[0] not in self._send:
            return

        def fold(burst: Burst) -> None:
            if burst.first_event is None:
                burst.first_event = event
                burst.event_id = event.id  # the edgewatch event's own uuid4: one id on every retry
            burst.add_event(event)

        self._add(key, event.timestamp, fold)

    def _add(self, key: tuple[str, ...], timestamp: float, fold: Callable[[Burst], None]) -> None:
        with self._changed:
            burst = self._bursts.get(key)
            if burst is None:
                if len(self._bursts) >= MAX_OPEN_BURSTS:
                    self.metrics.events.labels("dropped").inc()
                    log.warning("Vision Events: %d bursts open, dropped one more (%s)", MAX_OPEN_BURSTS, key)
                    return
                deadline = time.monotonic() + self._settings.coalesce
                burst = self._bursts[key] = Burst(key, str(uuid.uuid4()), timestamp, timestamp, deadline)
                self._changed.notify_all()
            else:
                self.metrics.coalesced.inc()
            fold(burst)

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.uploader.start()
        self._timer.start()

    def uploader_state(self) -> UploaderState:
        return self.uploader.state()

    def threads(self) -> list[threading.Thread]:
        """The sink's long-lived threads, for /healthz and the watchdog."""
        return [self._timer, *self.uploader.threads()]

    def flush(self) -> None:
        """Every open burst goes to the spool now."""
        with self._changed:
            bursts = list(self._bursts.values())
            self._bursts.clear()
        for burst in bursts:
            self._spool_burst(burst)

    def close(self, timeout: float = 10.0) -> None:
        """Spool what is open, give the uploader a short grace, stop. Unsent events wait for the next run."""
        if self._closed:
            return
        self._closed = True
        started = time.monotonic()
        with self._changed:
            self._stop.set()
            self._changed.notify_all()
        if self._timer.is_alive():
            self._timer.join(timeout)
        self.flush()
        remaining = max(0.0, timeout - (time.monotonic() - started))
        self.uploader.close_with_spool(self._close_grace, remaining, "Vision Events", "Vision Event(s)")

    # --- the timer thread --------------------------------------------------------------------------

    def _run_timer(self) -> None:
        while True:
            with self._changed:
                while not self._stop.is_set():
                    now = time.monotonic()
                    due = [burst for burst in self._bursts.values() if burst.deadline <= now]
                    counts_due = "counts" in self._send and now >= self._counts_due
                    if due or counts_due:
                        break
                    deadlines = [burst.deadline for burst in self._bursts.values()]
                    if "counts" in self._send:
                        deadlines.append(self._counts_due)
                    self._changed.wait(min(deadlines) - now if deadlines else None)
                else:
                    return
                for burst in due:
                    del self._bursts[burst.key]
                counts: dict[str, dict[str, int]] = {}
                if counts_due:  # the cameras that delivered a frame since the last counts, as last seen
                    counts, self._counts = self._counts, {}
                    self._counts_due = now + self._settings.counts_interval
            try:
                for burst in due:
                    self._spool_burst(burst)
                for camera, per_class in sorted(counts.items()):
                    self._spool_counts(camera, per_class)
            except Exception:  # a spool write failed (disk full): logged; the timer must live on
                log.exception("cannot spool Vision Events")

    def _spool_burst(self, burst: Burst) -> None:
        camera = burst.key[1]
        event_type = "safety_alert" if burst.alert is not None else "custom"
        body = envelope(
            burst.event_id, event_type, burst.first,
            settings=self._settings, device_id=self._device_id, camera=camera,
            metadata=self._metadata.get(camera, {}), event_data=burst.event_data(),
        )
        image = self._image(burst.best) if burst.best is not None else None
        if image is not None and burst.best is not None:
            size = jpeg_size(image)
            if size is None:
                image = None
                self.metrics.images.labels("missing").inc()
            else:
                best = burst.best
                body["images"] = [{
                    "label": f"{camera} {best.class_name} #{best.tracker_id} {burst.key[2]}",
                    "objectDetections": [object_detection(best, size)],
                }]
        self._put(camera, body, burst.first, image)

    def _spool_counts(self, camera: str, per_class: dict[str, int]) -> None:
        now = time.time()
        data = {"itemCount": sum(per_class.values()), "classes": dict(sorted(per_class.items()))}
        body = envelope(
            str(uuid.uuid4()), "inventory_count", now,
            settings=self._settings, device_id=self._device_id, camera=camera,
            metadata=self._metadata.get(camera, {}), event_data=data,
        )
        self._put(camera, body, now, None)

    def _image(self, event: Event) -> bytes | None:
        if self._read_snapshot is None or not event.snapshot_id:
            return None
        try:
            image = self._read_snapshot(event.snapshot_id)
        except Exception:  # the store failed: the event goes without an image, said once per event
            log.exception("cannot read snapshot %s for a Vision Event", event.snapshot_id)
            image = None
        if image is None:
            self.metrics.images.labels("missing").inc()
        return image

    def _put(self, camera: str, body: dict[str, Any], created: float, image: bytes | None) -> None:
        try:
            self.spool.put(KIND, camera, body, created, image)
        except SpoolError as exc:  # counted as dropped and reported degraded by the spool
            log.warning("Vision Event %s of camera %s is lost: %s", body["eventType"], camera or "-", exc)
            return
        log.debug("Vision Event spooled: %s %s camera %s", body["eventType"], body["eventId"], camera or "-")
        if self.sending:
            self.uploader.wake()


def failing_since(states: Sequence[Callable[[], UploaderState]]) -> float | None:
    """The earliest start of a failing streak among the Roboflow uploaders (for `upload_failing`)."""
    starts = [since for state in states if (since := state().failing_since) is not None]
    return min(starts, default=None)


def build_vision_events(
    config: Config,
    registry: CollectorRegistry,
    read_snapshot: SnapshotReader | None = None,
    health: Health = NO_HEALTH,
) -> VisionEventsSink | None:
    """The sink when `[vision_events] enabled`, else None."""
    if not config.vision_events.enabled:
        return None
    return VisionEventsSink(config, registry, read_snapshot, health=health)


# --- `edgewatch vision-events` -------------------------------------------------------------------------


def _image_state(item: SpoolItem) -> dict[str, Any] | None:
    if item.attachment_size:
        return {"state": "waiting for upload", "bytes": item.attachment_size}
    if item.attachment_ref:
        return {"state": "uploaded", "sourceId": item.attachment_ref}
    if item.json().get("images"):
        return {"state": "refused by Roboflow: the event goes without it"}
    return None


def _describe(item: SpoolItem) -> str:
    body = item.json()
    data = body.get("eventData", {})
    if body.get("eventType") == "safety_alert":
        what = f"{data.get('alertType')}: {data.get('description')}"
    elif body.get("eventType") == "inventory_count":
        what = ", ".join(f"{name} {count}" for name, count in data.get("classes", {}).items()) or "nothing"
    else:
        place = data.get("zone") or data.get("line") or ""
        what = f"{data.get('kind')} {place} {data.get('direction', '')}".rstrip()
        what += f" x{data.get('count')} ({', '.join(data.get('classes', {}))})"
    image = _image_state(item)
    suffix = f"; image {image['state']}" if image else ""
    return f"{body.get('eventType')} {body.get('eventId')}: {what}{suffix}"


def list_vision_events(config: Config, *, as_json: bool = False, limit: int | None = None,
                       out: TextIO | None = None) -> int:
    """`edgewatch vision-events`: the events waiting in the spool (newest `limit`, oldest first), each
    exactly as it will be sent (JSON: the body, its image's state). Returns the exit code."""
    settings = config.vision_events.with_defaults(config.roboflow)
    assert settings.spool is not None
    return print_waiting(
        settings.spool,
        what="Vision Events",
        noun="event(s)",
        limit=limit,
        as_json=as_json,
        json_row=lambda item: {
            "id": item.id, "camera": item.camera, "created": created_utc(item), "image": _image_state(item),
            "body": ready_body(item),
        },
        text_line=_describe,
        out=out or sys.stdout,
    )
