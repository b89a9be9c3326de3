"""A local HTTP(S) server speaking Roboflow's three Vision Events write endpoints strictly; scriptable.

- `POST /vision-events/upload` (multipart/form-data: `file`, optional `name`) -> 201 `{"success", "sourceId"}`
- `POST /vision-events/batch` (`{"events": [...]}`, 1 to 100) -> 201 `{"created", "eventIds"}`
- `POST /vision-events` (one event) -> 201 `{"success", "eventId"}`

Refused with 401: a missing or wrong `Authorization: Bearer <key>`. Refused with 400 (the whole request): a
batch over 100, an unknown field, a bad `eventId` (not a UUID v4) or `eventType`, a timestamp outside a year
ago .. tomorrow, a `safety_alert` without `alertType`/`severity`/`description`, customMetadata over
Roboflow's limits, an image naming an unknown `sourceId`. `fail(...)` scripts answers per endpoint (503 for a
while, 429 with Retry-After, 401...), `trickle(...)` an answer that comes one byte at a time.
"""

from __future__ import annotations

import collections
import contextlib
import email.parser
import email.policy
import json
import re
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.served import Recording, Scripted, Served, next_scripted, read_body, send_json

ENDPOINTS = ("upload", "batch", "single")
EVENT_TYPES = {"quality_check", "inventory_count", "safety_alert", "custom", "operator_feedback"}
EVENT_FIELDS = {"eventId", "eventType", "useCaseId", "timestamp", "eventData", "deviceId", "streamId",
                "workflowId", "images", "customMetadata"}
IMAGE_FIELDS = {"sourceId", "label", "objectDetections"}
DETECTION_FIELDS = {"class", "x", "y", "width", "height", "confidence"}
METADATA_KEY = re.compile(r"[a-zA-Z0-9_ -]{1,100}")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")



@dataclass(frozen=True)
class Recorded:
    endpoint: str  # upload | batch | single | unknown
    headers: dict[str, str]
    body: Any  # parsed JSON (batch, single), {"name", "file"} (upload)
    raw: bytes
    status: int
    at: float


def _event_problem(event: Any, images: dict[str, bytes]) -> str | None:
    """Why Roboflow would refuse this event, or None."""
    if not isinstance(event, dict):
        return "an event must be an object"
    unknown = set(event) - EVENT_FIELDS
    if unknown:
        return f"unknown field(s) {sorted(unknown)}"
    for required in ("eventId", "eventType", "useCaseId", "timestamp"):
        if not isinstance(event.get(required), str) or not event[required]:
            return f"{required} is required"
    if not UUID4.match(event["eventId"]):
        return "eventId must be a UUID v4"
    if event["eventType"] not in EVENT_TYPES:
        return f"eventType must be one of {sorted(EVENT_TYPES)}"
    if len(event["useCaseId"]) > 256:
        return "useCaseId is at most 256 characters"
    try:
        when = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    except ValueError:
        return "timestamp must be ISO 8601"
    now = datetime.now(timezone.utc)
    if when.tzinfo is None or not now - timedelta(days=365) <= when <= now + timedelta(days=1):
        return "timestamp must be between one year ago and tomorrow, with its offset"
    data = event.get("eventData", {})
    if not isinstance(data, dict):
        return "eventData must be an object"
    if event["eventType"] == "safety_alert":
        for required in ("alertType", "severity", "description"):
            if not isinstance(data.get(required), str):
                return f"a safety_alert's eventData needs {required}"
    for name in ("deviceId", "streamId", "workflowId"):
        if name in event and (not isinstance(event[name], str) or len(event[name]) > 256):
            return f"{name} must be a string of at most 256 characters"
    for image in event.get("images", []):
        if not isinstance(image, dict) or set(image) - IMAGE_FIELDS:
            return "an image has sourceId, label and objectDetections only"
        if image.get("sourceId") not in images:
            return f"unknown sourceId {image.get('sourceId')!r}"
        for detection in image.get("objectDetections", []):
            if set(detection) != DETECTION_FIELDS:
                return f"an object detection has exactly {sorted(DETECTION_FIELDS)}"
            if not all(isinstance(detection[k], (int, float)) for k in DETECTION_FIELDS - {"class"}):
                return "object detection coordinates are numbers"
    metadata = event.get("customMetadata", {})
    if not isinstance(metadata, dict) or len(metadata) > 100:
        return "customMetadata holds at most 100 keys"
    for key, value in metadata.items():
        if not METADATA_KEY.fullmatch(key):
            return f"customMetadata key {key!r} is not allowed"
        if isinstance(value, str) and len(value) > 1000:
            return f"customMetadata value of {key!r} is over 1000 characters"
        if not isinstance(value, (str, int, float, bool)):
            return f"customMetadata value of {key!r} must be a string, number or boolean"
    return None


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw
    )
    if not message.is_multipart():
        return {}
    return {
        part.get_param("name", header="content-disposition"): part.get_payload(decode=True) or b""
        for part in message.iter_parts()
    }


@dataclass
class VisionEventsServer(Served, Recording[Recorded]):
    api_key: str = "rf_ve_test_key"
    tls: tuple[Path, Path] | None = None  # (certificate, key): serve HTTPS
    requests: list[Recorded] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)  # sourceId -> bytes uploaded
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # eventId -> the last accepted body
    arrivals: list[str] = field(default_factory=list)  # eventIds in the order accepted (with repeats)

    def __post_init__(self) -> None:
        self._changed = threading.Condition()
        self._scripts: dict[str, list[Scripted]] = {name: [] for name in ENDPOINTS}
        self._trickle: dict[str, float] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                server._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._httpd.handle_error = lambda request, address: None  # a client that hung up (or was killed)
        scheme = "http"
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
            scheme = "https"
        self.port = self._httpd.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._run_server(self._httpd)

    # --- scripting ---------------------------------------------------------------------------------

    def fail(self, endpoint: str, status: int, times: int | None = 1, retry_after: str | None = None) -> None:
        """Answer the next `times` requests to `endpoint` (all until clear() if None) with `status`."""
        assert endpoint in ENDPOINTS
        with self._changed:
            self._scripts[endpoint].append(Scripted(status, times, retry_after))

    def trickle(self, endpoint: str, interval: float) -> None:
        """Answer `endpoint` one byte every `interval` seconds (until clear())."""
        with self._changed:
            self._trickle[endpoint] = interval

    def clear(self) -> None:
        with self._changed:
            for scripts in self._scripts.values():
                scripts.clear()
            self._trickle.clear()

    # --- what arrived ------------------------------------------------------------------------------

    def forget(self) -> collections.Counter[str]:
        """Forget the requests, events and image bytes recorded so far (a run of hours would pile them up;
        uploaded images stay known, so that later events may name them); returns how many requests there
        were, by `endpoint status`, and the events accepted (`events`)."""
        with self._changed:  # a reentrant lock: the requests and the events are forgotten together
            tally = super().forget()
            tally["events"] = len(self.arrivals)
            self.events.clear()
            self.arrivals.clear()
            self.images = dict.fromkeys(self.images, b"")
        return tally

    def wait_for(self, condition: Callable[[], Any], timeout: float = 15, message: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(r.endpoint, r.status) for r in self.requests]
                    raise AssertionError(f"timed out after {timeout}s waiting for {message}; got {seen}")
                self._changed.wait(min(remaining, 0.2))

    # --- serving -----------------------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        path = handler.path.split("?")[0]
        endpoint = {"/vision-events/upload": "upload", "/vision-events/batch": "batch",
                    "/vision-events": "single"}.get(path, "unknown")
        raw = read_body(handler)
        headers: dict[str, str] = {}
        body: Any = None
        with self._changed:
            script = next_scripted(self._scripts.get(endpoint, []))
            trickle = self._trickle.get(endpoint)
            if script is not None:
                status, answer = script.status, {"error": f"scripted {script.status}"}
                if endpoint in ("batch", "single"):
                    with contextlib.suppress(ValueError):
                        body = json.loads(raw)
                if script.retry_after is not None:
                    headers["Retry-After"] = script.retry_after
            elif endpoint == "unknown":
                status, answer = 404, {"error": "no such endpoint"}
            elif handler.headers.get("Authorization") != f"Bearer {self.api_key}":
                status, answer = 401, {"error": "missing or invalid API key"}
            else:
                status, answer, body = self._serve(endpoint, handler.headers.get("Content-Type", ""), raw)
            arrived = Recorded(endpoint, dict(handler.headers), body, raw, status, time.monotonic())
            self.requests.append(arrived)
            self._changed.notify_all()
        send_json(handler, status, answer, headers, trickle)

    def _serve(self, endpoint: str, content_type: str, raw: bytes) -> tuple[int, Any, Any]:
        """(status, answer, what was understood of the body); the caller holds the lock."""
        if endpoint == "upload":
            if not content_type.startswith("multipart/form-data"):
                return 400, {"error": "multipart/form-data expected"}, None
            parts = _multipart(content_type, raw)
            if not parts.get("file"):
                return 400, {"error": "file is required"}, None
            source_id = uuid.uuid4().hex
            self.images[source_id] = parts["file"]
            name = parts.get("name", b"").decode()
            return 201, {"success": True, "sourceId": source_id}, {"name": name, "file": parts["file"]}
        if content_type != "application/json":
            return 400, {"error": "application/json expected"}, None
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, {"error": "not JSON"}, None
        if endpoint == "batch":
            events = body.get("events") if isinstance(body, dict) else None
            if not isinstance(events, list) or not 1 <= len(events) <= 100 or set(body) != {"events"}:
                return 400, {"error": "events: 1 to 100 events"}, body
        else:
            events = [body]
        for index, event in enumerate(events):
            problem = _event_problem(event, self.images)
            if problem:
                return 400, {"error": f"events[{index}]: {problem}"}, body
        for event in events:
            self.events[event["eventId"]] = event
            self.arrivals.append(event["eventId"])
        ids = [event["eventId"] for event in events]
        if endpoint == "batch":
            return 201, {"created": len(ids), "eventIds": ids}, body
        return 201, {"success": True, "eventId": ids[0]}, body


@pytest.fixture
def vision_events_server() -> Iterator[VisionEventsServer]:
    server = VisionEventsServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def loopback_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl); trust it with SSL_CERT_FILE."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key
