"""The HTTP inference API (the one inference_sdk's InferenceHTTPClient speaks, v1) and the monitoring page.

Inference: `POST /infer/object_detection` decodes the request's images and queues them on the FrameBoard
beside the camera frames; the inference worker runs them in its shared batches and calls each frame's `reply`,
which wakes the waiting request. Every result then goes through the dispatcher like a camera frame, with the
request's `source_info` (default "http") as its stream, so Model Monitoring aggregates it per stream.
Model management (`/model/registry`, `/model/add`, `/model/remove`, `/model/clear`) and `/info` answer as
the inference server does, for the one model edgewatch serves.

Monitoring: `/` (the page, from daemon/web/static) and its JSON under `/api/...`, read from the History store.

Reload: `POST /api/reload` rereads config.toml and answers with the outcome (200 applied, 422 refused:
nothing changed); it needs one of `api.keys` and is refused (403) when none is set.

With `api.keys` set, every request but `/info` and the page's static files needs one of the keys: as
`Authorization: Bearer KEY`, the `api_key` query parameter, or `api_key` in the JSON body. Keys are compared
in constant time and never logged or echoed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import hmac
import io
import ipaddress
import itertools
import json
import logging
import re
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from daemon import __version__
from daemon.config import ApiConfig, Config
from daemon.events.sink import EventsSink
from daemon.frames import DecodeParams, Frame, FrameResult, roboflow_response
from daemon.metrics.api import ApiMetrics
from daemon.pipeline.board import FrameBoard
from daemon.sinks.history import RANGES, History
from daemon.web.server import BoundedHTTPServer, PrefixedHandler, ServerMetrics
from daemon.web.url_images import fetch_url

if TYPE_CHECKING:
    from daemon.model.session import Model

log = logging.getLogger("edgewatch.api")

SERVER_NAME = "edgewatch"
TASK_TYPE = "object-detection"
DEFAULT_STREAM = "http"
STREAM_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_STREAMS = 64  # distinct request streams per run: each one is a Model Monitoring aggregator and a series
MAX_PIXELS = 25_000_000  # per image (75 MB decoded), checked from its header before it is decoded
REPLY_TIMEOUT = 30.0  # seconds a request waits for its frames' results
RETRY_AFTER = "1"
HANDLER_TIMEOUT = 30.0  # seconds a connection may stay silent
DRAIN_SECONDS = 2.0  # after a 413, read (and discard) the rest of the body this long so the client sees it
BODY_DEADLINE = 60.0  # seconds for a whole request body, however slowly it trickles
NOT_AN_IMAGE = "not an image edgewatch can decode (JPEG, PNG, BMP, WebP, TIFF...)"
UNAUTHENTICATED_BODIES = 4  # bodies read at once to find a key in them (inference_sdk's default transport)
BODY_KEY = re.compile(rb'"api_key"\s*:\s*"([^"\\]{1,512})"')
STREAM_IDLE = 600.0  # seconds after which an API stream's slot (of MAX_STREAMS) can go to a new one
STATIC_DIR = Path(__file__).with_name("static")
STATIC_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
PAGE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class ApiError(Exception):
    """Answer the request with this status and `{"message": ...}`."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


def overloaded(message: str) -> ApiError:
    return ApiError(503, message, {"Retry-After": RETRY_AFTER})


@dataclass(frozen=True)
class ModelInfo:
    """What the API tells clients about the served model (it never touches the model itself)."""

    class_names: tuple[str, ...]
    input_size: tuple[int, int]  # (height, width)
    max_batch: int
    provider: str

    @classmethod
    def of(cls, model: Model) -> ModelInfo:
        return cls(tuple(model.class_names), tuple(model.input_size), model.max_batch, model.provider)


# --- request decoding: small pure functions ----------------------------------------------------------


def decode_base64(value: Any) -> bytes:
    """Standard base64 (whitespace and a `data:...;base64,` prefix allowed) -> bytes; ValueError if not."""
    if not isinstance(value, str):
        raise ValueError("the value must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def image_size(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(width, height) of encoded image bytes, from the header only: a small file that would decode into
    gigabytes is refused before any pixel is decoded. ValueError if not an image or too large."""
    too_large = f"the image is larger than {max_pixels} pixels"
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:  # Pillow's own, far higher limit
        raise ValueError(too_large) from None
    except (OSError, ValueError):
        raise ValueError(NOT_AN_IMAGE) from None
    if width * height > max_pixels:
        raise ValueError(f"{too_large} ({width}x{height})")
    return width, height


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Encoded image bytes -> H x W x 3 uint8 BGR, the size checked from the header first (image_size)."""
    image_size(data, max_pixels)
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(NOT_AN_IMAGE)
    return image


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def request_images(
    field_value: Any, allow_urls: bool, limit: int, max_images: int, max_pixels: int
) -> tuple[list[EncodedImage], bool]:
    """The `image` field (one `{"type", "value"}` or a list of them) -> (encoded images with their size from
    the header, whether it was one). Nothing is decoded yet: the caller admits the request first.

    `limit` bounds the bytes fetched from a URL, `max_images` the length of a list, `max_pixels` the pixels
    of the whole request."""
    if field_value is None:
        raise ApiError(400, 'image: missing; send {"type": "base64", "value": ...} or a list of them')
    single = not isinstance(field_value, list)
    items = [field_value] if single else field_value
    if not items:
        raise ApiError(400, "image: the list is empty")
    if len(items) > max_images:
        raise ApiError(400, f"image: at most {max_images} images per request (api.max_pending)")
    images = []
    total = 0
    for index, item in enumerate(items):
        where = "image" if single else f"image {index}"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where}: expected an object with 'type' and 'value'")
        kind, value = item.get("type"), item.get("value")
        try:
            if kind == "base64":
                data = decode_base64(value)
            elif kind == "url":
                if not allow_urls:
                    raise ValueError("URL images are disabled on this device (api.allow_url_images)")
                data = fetch_url(value, limit)
            elif kind in ("numpy", "numpy_object", "pil"):
                raise ValueError(f"type {kind!r} (a pickled object) is refused; send 'base64'")
            else:
                raise ValueError(f"unsupported type {kind!r}; send 'base64'")
            width, height = image_size(data)
        except ValueError as exc:
            raise ApiError(400, f"{where}: {exc}") from None
        total += width * height
        if total > max_pixels:
            raise ApiError(
                413, f"image: the request holds more than {max_pixels} pixels (api.max_request_megapixels)"
            )
        images.append(EncodedImage(data, width, height))
    return images, single


def _number(body: Mapping[str, Any], key: str, default: float) -> float:
    value = body.get(key)
    if value is None or value in ("default", "best"):
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ApiError(400, f"{key}: must be a number from 0 to 1")
    return float(value)


def decode_params(
    body: Mapping[str, Any], defaults: DecodeParams, class_ids: Mapping[str, int]
) -> DecodeParams:
    """The request's thresholds and options over the config's. `class_filter` names unknown to the model
    match nothing; `max_detections` is capped at the config's."""
    max_detections = body.get("max_detections")
    if max_detections is None:
        max_detections = defaults.max_detections
    elif isinstance(max_detections, bool) or not isinstance(max_detections, int) or max_detections < 1:
        raise ApiError(400, "max_detections: must be a whole number of at least 1")
    agnostic = body.get("class_agnostic_nms")
    if agnostic is not None and not isinstance(agnostic, bool):
        raise ApiError(400, "class_agnostic_nms: must be true or false")
    wanted = body.get("class_filter")
    classes = None
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(name, str) for name in wanted):
            raise ApiError(400, "class_filter: must be a list of class names")
        if wanted:
            classes = tuple(sorted({class_ids[name] for name in wanted if name in class_ids}))
    return DecodeParams(
        confidence=_number(body, "confidence", defaults.confidence),
        iou=_number(body, "iou_threshold", defaults.iou),
        max_detections=min(max_detections, defaults.max_detections),  # model.max_detections caps it
        class_agnostic=bool(agnostic),
        classes=classes,
    )


def header_keys(headers: Mapping[str, str], query: Mapping[str, str]) -> list[str]:
    """The keys a request offers before its body: `Authorization: Bearer KEY` and the `api_key` query."""
    candidates = []
    scheme, _, token = (headers.get("Authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        candidates.append(token.strip())
    if query.get("api_key"):
        candidates.append(query["api_key"])
    return candidates


def body_keys(raw: bytes, limit: int = 4) -> list[str]:
    """`"api_key": "..."` values in a raw JSON body, found without parsing it (linear time, no allocation
    beyond the matches)."""
    found = []
    for match in itertools.islice(BODY_KEY.finditer(raw), limit):
        with contextlib.suppress(UnicodeDecodeError):
            found.append(match.group(1).decode())
    return found


def parse_json(raw: bytes) -> dict[str, Any]:
    """A request body -> its JSON object; a 400 for anything else, whatever its shape (deep nesting too)."""
    try:
        body = json.loads(raw) if raw.strip() else {}
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ApiError(400, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def host_allowed(host: str, names: frozenset[str]) -> bool:
    """Whether a Host header names this device: an IP address, localhost, or one of `names`."""
    if not host:
        return True  # HTTP/1.0 without Host: not a browser
    try:
        name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    except ValueError:
        return False
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return name == "localhost" or name in names


def local_names() -> list[str]:
    """This machine's own names, as a browser on the LAN would address it."""
    name = socket.gethostname().lower()
    return [name, f"{name}.local", name.split(".")[0]]


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_matches(candidates: Sequence[str], digests: Sequence[bytes]) -> bool:
    """Whether any candidate is one of the keys; every pair is compared, in constant time per pair."""
    found = False
    for candidate in candidates:
        digest = key_digest(candidate)
        for expected in digests:
            found |= hmac.compare_digest(digest, expected)
    return found


# --- waiting for the inference worker ------------------------------------------------------------------


class _Pending:
    """The results of one request's frames. `deliver` runs on the inference worker: it never blocks."""

    def __init__(self, count: int) -> None:
        self.results: list[FrameResult | None] = [None] * count
        self._left = count
        self._lock = threading.Lock()
        self._done = threading.Event()
        self.aborted = False

    def deliver(self, index: int, result: FrameResult) -> None:
        with self._lock:
            self.results[index] = result
            self._left -= 1
            if self._left == 0:
                self._done.set()

    def abort(self) -> None:
        self.aborted = True
        self._done.set()

    def wait(self, timeout: float) -> bool:
        """True once every result is in; False on timeout or abort."""
        return self._done.wait(timeout) and not self.aborted


# --- the server ----------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Reply(status, body, headers={"Cache-Control": "no-store", **(headers or {})})


RELOAD_PATH = "/api/reload"


def endpoint_label(path: str) -> str:
    """A bounded metric label for a request path."""
    if path.startswith("/infer/"):
        return "infer"
    if path.startswith("/model/"):
        return "model"
    if path == "/info":
        return "info"
    if path == RELOAD_PATH:
        return "reload"
    if path.startswith("/api/") or path in ("/", "/monitoring") or path.startswith("/static/"):
        return "monitoring"
    return "other"


class ApiServer:
    def __init__(
        self,
        config: Config,
        model: ModelInfo,
        board: FrameBoard,
        history: History | None,
        metrics: ApiMetrics | None = None,
        server_metrics: ServerMetrics | None = None,
        stream_idle: float = STREAM_IDLE,
        events: EventsSink | None = None,
    ) -> None:
        settings = config.api
        self._events = events
        self.config = config
        self.model = model
        self._board = board
        self._history = history
        self._metrics = metrics
        self._model_id = config.model.id
        self.max_body = int(settings.max_body_mb * 1024 * 1024)
        self._allow_urls = settings.allow_url_images
        self._max_images = settings.max_pending
        self._digests = [
            key_digest(key.get_secret_value()) for key in settings.keys if key.get_secret_value()
        ]
        self._defaults = DecodeParams(config.model.confidence, config.model.iou, config.model.max_detections)
        self._class_ids = {name: index for index, name in enumerate(model.class_names)}
        self._cameras = {camera.id: dict(camera.metadata) for camera in config.cameras}
        self._streams: dict[str, float] = {}  # API stream -> when a request last used it (monotonic)
        self._stream_idle = stream_idle
        self._in_flight = [0, 0]  # images, pixels admitted and not yet answered
        self._body_reads = threading.BoundedSemaphore(UNAUTHENTICATED_BODIES)
        self._device_id = config.device.id
        self._set_limits(settings)
        self._frame_ids = itertools.count(1)
        self._uuid = str(uuid.uuid4())
        self._pending: set[_Pending] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        # set by the service: runs a config reload and returns its outcome (None: shutting down)
        self.reload_handler: Callable[[], Mapping[str, Any] | None] | None = None
        self._static = {
            path.name: path.read_bytes() for path in STATIC_DIR.glob("*") if path.suffix in STATIC_TYPES
        }
        api = self

        class Handler(_Handler):
            server_api = api

        try:
            # a handler per request waiting for inference (max_pending) plus some for the page and /info
            self._httpd = BoundedHTTPServer(
                (settings.host, settings.port),
                Handler,
                name="api",
                handlers=settings.max_pending + 8,
                handler_timeout=HANDLER_TIMEOUT,
                metrics=server_metrics,
            )
        except OSError as exc:
            raise OSError(f"api: cannot listen on {settings.host}:{settings.port}: {exc.strerror}") from None

    @property
    def port(self) -> int:
        return self._httpd.port

    def threads(self) -> list[threading.Thread]:
        return self._httpd.threads()

    def start(self) -> None:
        self._httpd.start()
        log.info(
            "HTTP inference API and monitoring page on http://%s:%d/ (%s)",
            self.config.api.host,
            self.port,
            "API keys required" if self._digests else "no API keys set",
        )

    def close(self) -> None:
        """Stop serving. Requests still waiting for inference are answered 503 now: call this once the
        inference worker has stopped, so that nothing it already took is cut short."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._lock:
            waiting = list(self._pending)
        for pending in waiting:
            pending.abort()
        self._httpd.close(5.0)

    # --- routing -------------------------------------------------------------------------------------

    def count(self, path: str, status: int) -> None:
        if self._metrics is not None:
            self._metrics.api_requests.labels(endpoint_label(path), str(status)).inc()

    def authorized(self, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        """Whether the request carries a valid key in its Authorization header or `api_key` query."""
        return not self._digests or key_matches(header_keys(headers, query), self._digests)

    def check_host(self, headers: Mapping[str, str]) -> None:
        """Without keys, a browser must not become the client: answer only requests addressed to this device
        (DNS rebinding) and only from its own origin (cross-site requests)."""
        if self._digests:
            return
        host = headers.get("Host", "")
        if not host_allowed(host, self._host_names):
            raise ApiError(403, "this host name is not served here; add it to api.allowed_hosts")
        origin = headers.get("Origin")
        if origin is not None and urllib.parse.urlsplit(origin).netloc.lower() != host.lower():
            raise ApiError(403, "cross-origin requests are refused")

    def get(self, path: str, query: Mapping[str, str], headers: Mapping[str, str]) -> Reply:
        if path in ("/", "/monitoring", "/monitoring/"):
            return self._static_file("index.html")
        if path.startswith("/static/"):
            return self._static_file(path.removeprefix("/static/"))
        if path == "/info":
            return json_response({"name": SERVER_NAME, "version": __version__, "uuid": self._uuid})
        if not self.authorized(headers, query):
            raise ApiError(401, "a valid API key is required")
        if path == "/model/registry":
            return json_response(self._registry())
        if path.startswith(("/api/cameras/", "/api/snapshots/")):
            return self._image(path.removeprefix("/api/"))
        if path.startswith("/api/"):
            return json_response(self._monitoring(path.removeprefix("/api/"), query))
        raise ApiError(404, f"no such endpoint: GET {path}")

    def post(
        self, path: str, query: Mapping[str, str], headers: Mapping[str, str], read_body: Callable[[], bytes]
    ) -> Reply:
        """A key in the header or query is checked before the body is read. Without one, the key may be in
        the body (inference_sdk's default transport): the body is read (a few at once, bounded by
        api.max_body_mb) and searched for a valid key before it is parsed."""
        known = path in ("/infer/object_detection", "/model/add", "/model/remove", "/model/clear")
        offered = header_keys(headers, query)
        if self._digests and offered and not key_matches(offered, self._digests):
            raise ApiError(401, "a valid API key is required")
        if path == RELOAD_PATH:  # never reads a body: its key comes in the header or the query
            if self._digests and not offered:
                raise ApiError(401, "a valid API key is required")
            return self._reload()
        if self._digests and not offered:
            if not known:
                raise ApiError(401, "a valid API key is required")
            raw = self._read_for_key(read_body)
        else:
            if not known:
                if path.startswith("/infer/"):
                    only = f"edgewatch serves one {TASK_TYPE} model; use /infer/object_detection"
                    raise ApiError(404, only)
                raise ApiError(404, f"no such endpoint: POST {path}")
            raw = read_body()
        body = parse_json(raw)
        if path == "/model/add":
            self._check_model(body.get("model_id"))
            return json_response(self._registry())
        if path in ("/model/remove", "/model/clear"):
            return json_response(self._registry())  # the served model stays loaded
        return self._infer(body)

    def _read_for_key(self, read_body: Callable[[], bytes]) -> bytes:
        if not self._body_reads.acquire(blocking=False):
            raise overloaded("busy: send the API key in the Authorization header")
        try:
            raw = read_body()
        finally:
            self._body_reads.release()
        if not key_matches(body_keys(raw), self._digests):
            raise ApiError(401, "a valid API key is required")
        return raw

    def _reload(self) -> Reply:
        if not self._digests:
            raise ApiError(403, "set api.keys to use /api/reload: it is never open without a key")
        outcome = self.reload_handler() if self.reload_handler is not None else None
        if outcome is None:
            raise overloaded("edgewatch is stopping; no reload was done")
        return json_response(dict(outcome), 200 if outcome["successful"] else 422)

    # --- live reconfiguration (a config reload) ---------------------------------------------------------

    def set_settings(self, settings: ApiConfig) -> None:
        """New keys (required from the next request on), body limit, URL images, pixel budgets, host names."""
        self._digests = [
            key_digest(key.get_secret_value()) for key in settings.keys if key.get_secret_value()
        ]
        self.max_body = int(settings.max_body_mb * 1024 * 1024)
        self._allow_urls = settings.allow_url_images
        self._set_limits(settings)

    def _set_limits(self, settings: ApiConfig) -> None:
        """The pixel budgets and the host names a keyless API answers (at start and at each reload)."""
        self._max_request_pixels = int(settings.max_request_megapixels * 1_000_000)
        self._max_pixels_in_flight = int(settings.max_megapixels_in_flight * 1_000_000)
        self._host_names = frozenset(
            name.lower() for name in (*settings.allowed_hosts, settings.host, self._device_id, *local_names())
        )

    def set_cameras(self, config: Config) -> None:
        """The configured cameras and their metadata, as the page lists them."""
        with self._lock:
            self._cameras = {camera.id: dict(camera.metadata) for camera in config.cameras}

    def set_model(self, model: ModelInfo, config: Config) -> None:
        """The served model after a swap: its id, classes and default thresholds."""
        self.model = model
        self._model_id = config.model.id
        self._defaults = DecodeParams(config.model.confidence, config.model.iou, config.model.max_detections)
        self._class_ids = {name: index for index, name in enumerate(model.class_names)}

    def _registry(self) -> dict[str, Any]:
        height, width = self.model.input_size
        description = {
            "model_id": self._model_id,
            "task_type": TASK_TYPE,
            "batch_size": self.model.max_batch,
            "input_height": height,
            "input_width": width,
        }
        return {"models": [description]}

    def _check_model(self, model_id: Any) -> None:
        if model_id != self._model_id:
            raise ApiError(
                404, f"model {model_id!r} is not served here; this device serves {self._model_id!r}"
            )

    def _stream(self, body: Mapping[str, Any]) -> str:
        """The request's stream: never a camera's id (its reports would mix with the camera's); a stream
        idle for `stream_idle` seconds gives its slot of MAX_STREAMS to a new one."""
        stream = body.get("source_info") or DEFAULT_STREAM
        if not isinstance(stream, str) or not STREAM_ID.match(stream):
            raise ApiError(400, "source_info: 1 to 64 characters from A-Z, a-z, 0-9, '_' and '-'")
        if stream in self._cameras:
            raise ApiError(400, f"source_info: {stream!r} is a camera of this device; choose another name")
        now = time.monotonic()
        with self._lock:
            if stream not in self._streams and len(self._streams) >= MAX_STREAMS:
                for idle in [name for name, used in self._streams.items() if now - used >= self._stream_idle]:
                    del self._streams[idle]
                if len(self._streams) >= MAX_STREAMS:
                    raise ApiError(
                        400, f"source_info: {MAX_STREAMS} streams are in use; reuse one or retry later"
                    )
            self._streams[stream] = now
        return stream

    @contextlib.contextmanager
    def _admitted(self, images: int, pixels: int) -> Iterator[None]:
        """Hold `images` of api.max_pending and `pixels` of api.max_megapixels_in_flight while a request's
        images are decoded and inferred; 503 when either would go over."""
        with self._lock:
            if (
                self._in_flight[0] + images > self._max_images
                or self._in_flight[1] + pixels > self._max_pixels_in_flight
            ):
                raise overloaded("busy: too many images are being decoded or inferred; retry later")
            self._in_flight[0] += images
            self._in_flight[1] += pixels
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[0] -= images
                self._in_flight[1] -= pixels

    def _infer(self, body: Mapping[str, Any]) -> Reply:
        self._check_model(body.get("model_id"))
        params = decode_params(body, self._defaults, self._class_ids)
        stream = self._stream(body)
        encoded, single = request_images(
            body.get("image"), self._allow_urls, self.max_body, self._max_images, self._max_request_pixels
        )
        if self._closing.is_set():
            raise overloaded("edgewatch is stopping")
        with self._admitted(len(encoded), sum(image.pixels for image in encoded)):
            return self._run(encoded, params, stream, single)

    def _run(self, encoded: list[EncodedImage], params: DecodeParams, stream: str, single: bool) -> Reply:
        images = []
        for index, image in enumerate(encoded):
            try:
                images.append(decode_image(image.data))
            except ValueError as exc:
                raise ApiError(400, f"{'image' if single else f'image {index}'}: {exc}") from None
        del encoded
        pending = _Pending(len(images))
        with self._lock:
            self._pending.add(pending)
            self._count_waiting()
        try:
            for index, image in enumerate(images):
                frame = Frame(
                    camera_id=stream,
                    frame_id=next(self._frame_ids),
                    captured_at=time.time(),
                    captured_mono=time.monotonic(),
                    image=image,
                    reply=functools.partial(pending.deliver, index),
                    params=params,
                )
                if not self._board.put_request(frame):
                    raise overloaded(f"busy: {self._max_images} images are already waiting for inference")
            if not pending.wait(REPLY_TIMEOUT):
                if self._closing.is_set():
                    raise overloaded("edgewatch is stopping")
                raise overloaded(f"inference did not answer within {REPLY_TIMEOUT:.0f} s")
        finally:
            with self._lock:
                self._pending.discard(pending)
                self._count_waiting()
        responses = [roboflow_response(result) for result in pending.results if result is not None]
        return json_response(responses[0] if single else responses)

    def _count_waiting(self) -> None:
        if self._metrics is not None:
            self._metrics.api_requests_waiting.set(len(self._pending))

    def _static_file(self, name: str) -> Reply:
        content = self._static.get(name)
        if content is None:
            raise ApiError(404, f"no such file: {name}")
        headers = {"Cache-Control": "no-cache", "Content-Security-Policy": PAGE_POLICY}
        return Reply(200, content, STATIC_TYPES[Path(name).suffix], headers)

    def _monitoring(self, name: str, query: Mapping[str, str]) -> Any:
        history = self._history
        if name == "info":
            return {
                "device": self.config.device.id,
                "version": __version__,
                "model_id": self._model_id,
                "provider": self.model.provider,
                "cameras": [
                    {"id": camera.id, "metadata": dict(camera.metadata), "tracked": camera.tracked}
                    for camera in self.config.cameras
                ],
                "events": self._events is not None,
                "ranges": list(RANGES),
                "history": history is not None,
            }
        if name == "zones":
            return self._zones()
        if history is None:
            raise ApiError(404, "the monitoring history is off on this device")
        camera = query.get("camera") or None
        range_name = query.get("range", "hour")
        if range_name not in RANGES:
            raise ApiError(400, f"range: one of {', '.join(RANGES)}")
        if name == "summary":
            return history.summary(range_name, camera)
        if name == "streams":
            return self._with_cameras(history.streams(range_name))
        if name == "classes":
            return history.classes(range_name, camera)
        if name == "samples":
            try:
                limit = min(max(int(query.get("limit", "50")), 1), 500)
            except ValueError:
                raise ApiError(400, "limit: a whole number") from None
            return {
                "samples": history.samples(camera, query.get("class") or None, limit),
                "classes": history.sample_classes(),
            }
        if name.startswith("samples/"):
            sample = history.sample(urllib.parse.unquote(name.removeprefix("samples/")))
            if sample is None:
                raise ApiError(404, "no such sample (it may have been removed by retention)")
            return sample
        if name == "alerts":
            return history.alerts()
        if name == "events":
            try:
                limit = min(max(int(query.get("limit", "50")), 1), 500)
            except ValueError:
                raise ApiError(400, "limit: a whole number") from None
            return history.events(camera, limit)
        raise ApiError(404, f"no such endpoint: GET /api/{name}")

    def _image(self, name: str) -> Reply:
        """`cameras/<id>/latest.jpg` (the live view) and `snapshots/<id>.jpg` / `snapshots/<id>/crop.jpg`."""
        if self._events is None:
            raise ApiError(404, "events are off on this device")
        parts = name.split("/")
        jpeg = None
        if len(parts) == 3 and parts[0] == "cameras" and parts[2] == "latest.jpg":
            if parts[1] not in self._cameras:
                raise ApiError(404, f"no such camera: {parts[1]}")
            jpeg = self._events.live.jpeg(parts[1])
            if jpeg is None:  # a known camera without a frame yet (or offline): nothing to show, no error
                return Reply(204, b"", "image/jpeg", {"Cache-Control": "no-store"})
        elif parts[0] == "snapshots" and len(parts) in (2, 3):
            cropped = len(parts) == 3
            if (cropped and parts[2] != "crop.jpg") or (not cropped and not parts[1].endswith(".jpg")):
                raise ApiError(404, f"no such endpoint: GET /api/{name}")
            jpeg = self._events.read_snapshot(parts[1].removesuffix(".jpg"), cropped)
            if jpeg is None:
                raise ApiError(404, "no such snapshot (it may have been removed by its size or age bound)")
        else:
            raise ApiError(404, f"no such endpoint: GET /api/{name}")
        return Reply(200, jpeg, "image/jpeg", {"Cache-Control": "no-store"})

    def _zones(self) -> list[dict[str, Any]]:
        """Per camera: its zones (polygon, classes, occupancy now) and lines (ends, totals), if any."""
        cameras = []
        for camera in self.config.cameras:
            counts = self._events.counts(camera.id) if self._events is not None else None
            occupancy, totals = counts or ({}, {})
            cameras.append(
                {
                    "camera": camera.id,
                    "tracked": camera.tracked,
                    "zones": [
                        {
                            "name": zone.name,
                            "polygon": [list(point) for point in zone.polygon],
                            "classes": zone.classes,
                            "occupancy": occupancy.get(zone.name, {}),
                        }
                        for zone in camera.zones
                    ],
                    "lines": [
                        {
                            "name": line.name,
                            "start": list(line.start),
                            "end": list(line.end),
                            "classes": line.classes,
                            **totals.get(line.name, {"in": 0, "out": 0}),
                        }
                        for line in camera.lines
                    ],
                }
            )
        return cameras

    def _with_cameras(self, streams: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every configured camera appears (with its metadata), also before its first frame."""
        seen = {stream["stream"] for stream in streams}
        for camera in self._cameras:
            if camera not in seen:
                streams.append(
                    {
                        "stream": camera,
                        "source": "camera",
                        "inferences": 0,
                        "detections": 0,
                        "avg_confidence": None,
                        "avg_inference_time": None,
                        "last_seen": None,
                    }
                )
        for stream in streams:
            stream["metadata"] = self._cameras.get(stream["stream"], {})
        return sorted(streams, key=lambda stream: stream["stream"])


class _Handler(PrefixedHandler):
    server_api: ApiServer
    server_version = f"{SERVER_NAME}/{__version__}"
    sys_version = ""
    timeout = HANDLER_TIMEOUT
    _unread = 0  # bytes of a refused body still to come
    _body_read = False

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        api = self.server_api
        split = urllib.parse.urlsplit(self.path)
        path = split.path
        query = dict(urllib.parse.parse_qsl(split.query))
        headers = {name: value for name, value in self.headers.items()}
        started = time.perf_counter()
        try:
            api.check_host(headers)
            if method == "GET":
                response = api.get(path, query, headers)
            elif method == "POST":
                response = api.post(path, query, headers, functools.partial(self._read_body, api.max_body))
            else:
                raise ApiError(405, f"{method} is not supported")
        except ApiError as exc:
            response = json_response({"message": exc.message}, exc.status, exc.headers)
        except Exception:
            log.exception("API request %s %s failed", method, path)
            response = json_response({"message": "internal error; see the edgewatch log"}, 500)
        api.count(path, response.status)  # before the answer: a client that has it also sees it counted
        self._send(response)
        if method == "POST" and not self._body_read:  # refused before its body: let the client finish
            with contextlib.suppress(ValueError):
                self._unread = max(self._unread, int(self.headers.get("Content-Length") or 0))
        if self._unread:
            self._discard(self._unread)
        log.debug("%s %s -> %d in %.3f s", method, path, response.status, time.perf_counter() - started)

    def _read_body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() not in ("", "identity"):
            raise ApiError(411, "send the body with a Content-Length (no chunked transfer)")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if length < 0:
            raise ApiError(400, "Content-Length is negative")
        if length > limit:
            self._unread = length
            raise ApiError(413, f"the body is {length} bytes; at most {limit} are accepted (api.max_body_mb)")
        self._body_read = True
        chunks = []
        left = length
        deadline = time.monotonic() + BODY_DEADLINE
        while left > 0:
            if time.monotonic() > deadline:
                raise ApiError(408, f"the body did not arrive within {BODY_DEADLINE:.0f} s")
            chunk = self.rfile.read1(min(left, 1 << 16))
            if not chunk:
                raise ApiError(400, "the body ended before Content-Length bytes")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def _discard(self, length: int) -> None:
        """After a 413: read and drop what the client is still sending (bounded in time) before the
        connection closes, so that a client still sending sees the 413 rather than a reset connection."""
        deadline = time.monotonic() + DRAIN_SECONDS
        self.connection.settimeout(DRAIN_SECONDS)
        try:
            while length > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:
            pass

    def _send(self, response: Reply) -> None:
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(response.body)
        except OSError:  # the client went away
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """The stdlib logs the request line, whose query may hold an API key: say nothing here."""
