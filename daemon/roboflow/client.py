"""Roboflow Model Monitoring over HTTP: the request bodies, the client, and how each answer is classified.

The API key travels in the query string (that is how Roboflow's API takes it), so every URL holds a secret:
no URL is ever logged, and every error text leaving this module goes through `redact`. The connection, the
proxy and the deadline are daemon/roboflow/transport.py's.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from daemon import __version__
from daemon.roboflow.aggregator import Prediction
from daemon.roboflow.transport import (
    HttpClient,
    Outcome,
    Response,
    classify,
    parse_retry_after,
    redact,
)

__all__ = [  # the answer types live in transport; callers of this client find them here too
    "Outcome", "Response", "RoboflowClient", "classify", "metadata_body", "parse_retry_after", "redact",
    "report_body",
]

WORKSPACE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
WORKSPACE_TTL = 15 * 60.0  # seconds a resolved workspace name is reused, like Roboflow's own client


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


# --- client --------------------------------------------------------------------------------------------


class RoboflowClient:
    """Sends one spooled request and says what became of it. Never raises for HTTP or network errors.

    One kept-alive connection (a report every few seconds per camera would otherwise pay a TCP and TLS
    handshake each, several times the size of the request itself), through the proxy the environment names,
    with an overall deadline per request (daemon/roboflow/transport.py).
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
        environ: Mapping[str, str] | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("RoboflowClient needs an API key")
        self._http = HttpClient(
            api_url,
            timeout=timeout,
            secrets=[api_key],
            headers={"Content-Type": "application/json", "User-Agent": f"edgewatch/{__version__}"},
            environ=environ,
        )
        self._key = api_key
        self._fixed_workspace = workspace
        self._clock = clock
        self._lock = threading.Lock()  # the workspace cache
        self._workspace: tuple[str, float] | None = None  # (name, resolved at)

    def redact(self, text: str) -> str:
        return self._http.redact(text)

    def send(self, kind: str, body: str) -> Response:
        """POST one spooled body (`kind` report or metadata) to its endpoint."""
        workspace = self.workspace()
        if isinstance(workspace, Response):
            return workspace
        path = "inference-stats" if kind == "report" else "inference-stats/metadata"
        query = {"api_key": self._key} if kind == "report" else {"api_key": self._key, "nocache": "true"}
        response, _ = self._http.request("POST", f"/{workspace}/{path}", query=query, body=body.encode())
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
        response, payload = self._http.request("GET", "/", query={"api_key": self._key, "nocache": "true"})
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
        self._http.close()

    def _forget_workspace(self) -> None:
        with self._lock:
            self._workspace = None
