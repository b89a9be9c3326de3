"""Roboflow Model Monitoring over HTTP: the request bodies, the client, and how each answer is classified.

The API key travels in the query string (that is how Roboflow's API takes it), so every URL holds a secret:
no URL is ever logged, and every error text leaving this module goes through `redact`.
"""

from __future__ import annotations

import email.utils
import enum
import http.client
import json
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from daemon import __version__
from daemon.roboflow.aggregator import Prediction

WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
WORKSPACE_TTL = 15 * 60.0  # seconds a resolved workspace name is reused, like Roboflow's own client
RETRY_AFTER_MAX = 3600.0  # a Retry-After longer than this is taken as this
_RESPONSE_LIMIT = 64 * 1024  # bytes read from any answer
_RETRY_STATUSES = frozenset({408, 429})  # 4xx that mean "later", not "never"


# --- request bodies ------------------------------------------------------------------------------------


def report_body(
    predictions: Sequence[Prediction],
    *,
    device_id: str,
    camera_id: str,
    host: dict[str, str],
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """`POST /{workspace}/inference-stats`: the fields and order of Roboflow's aggregator block.

    `source` is the device and `source_info` the camera, so the dashboard can filter per camera. The
    timestamp is when the window closed (not when the request finally goes out after an outage), in UTC
    with its offset.
    """
    return {
        "timestamp": (timestamp or datetime.now(timezone.utc)).isoformat(),
        "source": device_id,
        "source_info": camera_id,
        "inference_results": [prediction.as_dict() for prediction in predictions],
        "device_id": device_id,
        "inference_server_version": __version__,
        **host,
    }


def metadata_body(
    predictions: Sequence[Prediction], *, camera_id: str, metadata: dict[str, str]
) -> dict[str, Any]:
    """`POST /{workspace}/inference-stats/metadata`: `camera` plus the camera's own fields, on every id."""
    inference_ids = list(dict.fromkeys(prediction.inference_id for prediction in predictions))
    fields = {"camera": camera_id, **metadata}
    return {
        "data": [
            {"inference_ids": inference_ids, "field_name": name, "field_value": value}
            for name, value in fields.items()
        ]
    }


# --- outcomes ------------------------------------------------------------------------------------------


class Outcome(enum.Enum):
    ACCEPTED = "accepted"  # 2xx: delete it from the spool
    RETRY = "retry"  # 5xx, 408, 429, timeout, connection error, odd answer: keep it, try later
    UNAUTHORIZED = "unauthorized"  # 401/403: the key is refused; keep everything, stop sending
    REJECTED = "rejected"  # any other 4xx: this request will never be accepted as it is


@dataclass(frozen=True, slots=True)
class Response:
    outcome: Outcome
    status: int | None  # HTTP status; None when no answer came
    detail: str  # one line for logs, already redacted
    retry_after: float | None = None  # seconds, from Retry-After on 429/503


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.ACCEPTED
    if status in (401, 403):
        return Outcome.UNAUTHORIZED
    if 400 <= status < 500 and status not in _RETRY_STATUSES:
        return Outcome.REJECTED
    return Outcome.RETRY  # 5xx, 408, 429, and the unexpected (1xx/3xx): keep the data


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), capped; None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), RETRY_AFTER_MAX)


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret (as given and as URL-encoded) replaced by `***`."""
    for secret in secrets:
        if not secret:
            continue
        for form in {secret, urllib.parse.quote_plus(secret), urllib.parse.quote(secret, safe="")}:
            text = text.replace(form, "***")
    return text


# --- client --------------------------------------------------------------------------------------------


class RoboflowClient:
    """Sends one spooled request and says what became of it. Never raises for HTTP or network errors.

    One kept-alive connection (http.client): a report every few seconds per camera would otherwise pay a
    TCP and TLS handshake each, several times the size of the request itself. http.client never follows
    redirects, so a 3xx cannot pass for success. Proxy variables (HTTPS_PROXY...) are not used.
    Thread-safe, though edgewatch calls it from the uploader thread only.
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        workspace: str = "",
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not api_key:
            raise ValueError("RoboflowClient needs an API key")
        url = urllib.parse.urlsplit(api_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError("api_url must look like https://host[:port][/path]")
        self._connection_type = (
            http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        )
        self._host, self._port = url.hostname, url.port
        self._base_path = url.path.rstrip("/")
        self._key = api_key
        self._fixed_workspace = workspace
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()  # the workspace cache
        self._workspace: tuple[str, float] | None = None  # (name, resolved at)
        self._io = threading.Lock()  # one request at a time on the connection
        self._connection: http.client.HTTPConnection | None = None
        self._headers = {"Content-Type": "application/json", "User-Agent": f"edgewatch/{__version__}"}

    def redact(self, text: str) -> str:
        return redact(text, [self._key])

    def send(self, kind: str, body: str) -> Response:
        """POST one spooled body (`kind` report or metadata) to its endpoint."""
        workspace = self.workspace()
        if isinstance(workspace, Response):
            return workspace
        path = "inference-stats" if kind == "report" else "inference-stats/metadata"
        query = {"api_key": self._key} if kind == "report" else {"api_key": self._key, "nocache": "true"}
        response, _ = self._request("POST", f"/{workspace}/{path}", query, body.encode())
        if response.status == 404 or response.outcome is Outcome.UNAUTHORIZED:
            self._forget_workspace()  # renamed, or another key's: look it up again next time
        return response

    def workspace(self) -> str | Response:
        """The workspace name: from the config, else from the key (cached); a Response says why not."""
        if self._fixed_workspace:
            return self._fixed_workspace
        with self._lock:
            cached = self._workspace
        if cached and self._clock() - cached[1] < WORKSPACE_TTL:
            return cached[0]
        response, payload = self._request("GET", "/", {"api_key": self._key, "nocache": "true"})
        if response.outcome is not Outcome.ACCEPTED:
            # a lookup the server calls bad says nothing against the spooled request: keep it
            outcome = Outcome.RETRY if response.outcome is Outcome.REJECTED else response.outcome
            return Response(outcome, response.status, f"workspace lookup: {response.detail}")
        name = payload.get("workspace") if isinstance(payload, dict) else None
        if not isinstance(name, str) or not WORKSPACE_NAME.fullmatch(name):
            shown = self.redact(repr(name)[:80])
            detail = f"workspace lookup returned no valid name: {shown}"
            return Response(Outcome.RETRY, response.status, detail)
        with self._lock:
            self._workspace = (name, self._clock())
        return name

    def close(self) -> None:
        with self._io:
            self._disconnect()

    def _forget_workspace(self) -> None:
        with self._lock:
            self._workspace = None

    def _request(
        self, method: str, path: str, query: dict[str, str], data: bytes | None = None
    ) -> tuple[Response, Any]:
        target = f"{self._base_path}{path}?{urllib.parse.urlencode(query)}"
        with self._io:
            try:
                answer, raw = self._exchange(method, target, data)
            except (OSError, ValueError, http.client.HTTPException) as exc:
                # some of these messages quote the request line, key included: rephrase, never re-raise
                return Response(Outcome.RETRY, None, f"{type(exc).__name__}: {self.redact(str(exc))}"), None
        status = answer.status
        if not 200 <= status < 300:
            text = self.redact(raw[:300].decode("utf-8", "replace").replace("\n", " ").strip())
            reason = self.redact(answer.reason or "")
            retry_after = parse_retry_after(answer.getheader("Retry-After")) if status in (429, 503) else None
            detail = f"HTTP {status} {reason}".rstrip() + (f": {text}" if text else "")
            return Response(classify(status), status, detail, retry_after), None
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        return Response(Outcome.ACCEPTED, status, f"HTTP {status}"), payload

    def _exchange(
        self, method: str, target: str, data: bytes | None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """One request and its answer; a kept connection the server closed while idle is reopened once."""
        reused = self._connection is not None
        try:
            return self._exchange_once(method, target, data)
        except (ConnectionResetError, BrokenPipeError):  # RemoteDisconnected is a ConnectionResetError
            if not reused:
                raise
            return self._exchange_once(method, target, data)

    def _exchange_once(
        self, method: str, target: str, data: bytes | None
    ) -> tuple[http.client.HTTPResponse, bytes]:
        if self._connection is None:
            self._connection = self._connection_type(self._host, self._port, timeout=self._timeout)
        try:
            self._connection.request(method, target, body=data, headers=self._headers)
            answer = self._connection.getresponse()
            raw = answer.read(_RESPONSE_LIMIT)
        except BaseException:
            self._disconnect()
            raise
        if not answer.isclosed():  # an answer longer than we read: the connection cannot be reused
            self._disconnect()
        return answer, raw

    def _disconnect(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
