"""The alert value the engine raises and resolves, and the contract of whoever receives it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

from daemon.timefmt import iso_utc

Severity = Literal["critical", "warning"]
AlertState = Literal["firing", "resolved"]


@dataclass(frozen=True, slots=True)
class Alert:
    type: str  # camera_down, confidence_drop, upload_failing, monitoring_unauthorized, inference_stalled, ...
    camera: str  # "" for a device-wide alert
    message: str
    severity: Severity
    state: AlertState
    timestamp: float  # Unix time of the change

    def payload(self) -> dict[str, Any]:
        """The JSON sent on MQTT `edgewatch/D/alerts` and kept by the page (`camera` only when set)."""
        body: dict[str, Any] = {"type": self.type}
        if self.camera:
            body["camera"] = self.camera
        body.update(
            message=self.message, timestamp=iso_utc(self.timestamp), severity=self.severity, state=self.state
        )
        return body


class AlertListener(Protocol):
    """Told of every alert change, on the alert engine's thread: must not block."""

    def on_alert(self, alert: Alert) -> None: ...
