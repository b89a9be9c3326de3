"""Roboflow Vision Events over HTTP: the image upload, the event batch and the single event.

- `POST {api_url}/vision-events/upload`, multipart/form-data (`file`, `name`) -> `{"sourceId": ...}`
- `POST {api_url}/vision-events/batch`, `{"events": [...]}` with at most 100 events
- `POST {api_url}/vision-events`, one event
All with `Authorization: Bearer <key>`; the key is in no URL, and every text leaving here is redacted.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from daemon import __version__
from daemon.roboflow.transport import HttpClient, Outcome, Response

BATCH_MAX = 100  # events per batch request, Roboflow's limit


def multipart(fields: Mapping[str, str], file_field: str, filename: str, content: bytes,
              content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body and its Content-Type header."""
    boundary = f"edgewatch-{uuid.uuid4().hex}"
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


class VisionEventsClient:
    """Never raises for HTTP or network errors; one kept-alive connection (see transport.py)."""

    def __init__(self, api_url: str, api_key: str, *, timeout: float = 10.0,
                 environ: Mapping[str, str] | None = None) -> None:
        if not api_key:
            raise ValueError("VisionEventsClient needs an API key")
        self._http = HttpClient(
            api_url,
            timeout=timeout,
            secrets=[api_key],
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": f"edgewatch/{__version__}"},
            environ=environ,
        )

    def redact(self, text: str) -> str:
        return self._http.redact(text)

    def upload_image(self, image: bytes, name: str) -> tuple[Response, str | None]:
        """Upload one JPEG; its sourceId when Roboflow took it."""
        body, content_type = multipart({"name": name}, "file", name, image, "image/jpeg")
        response, payload = self._http.request(
            "POST", "/vision-events/upload", body=body, headers={"Content-Type": content_type}
        )
        if response.outcome is not Outcome.ACCEPTED:
            return response, None
        source_id = payload.get("sourceId") if isinstance(payload, dict) else None
        if not isinstance(source_id, str) or not source_id:
            return Response(Outcome.RETRY, response.status, "image upload answered without a sourceId"), None
        return response, source_id

    def send_batch(self, events: Sequence[dict[str, Any]]) -> Response:
        if not 1 <= len(events) <= BATCH_MAX:
            raise ValueError(f"a batch holds 1 to {BATCH_MAX} events")
        return self._post_json("/vision-events/batch", {"events": list(events)})

    def send_one(self, event: dict[str, Any]) -> Response:
        return self._post_json("/vision-events", event)

    def close(self) -> None:
        self._http.close()

    def _post_json(self, path: str, body: Any) -> Response:
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
        response, _ = self._http.request(
            "POST", path, body=data, headers={"Content-Type": "application/json"}
        )
        return response
