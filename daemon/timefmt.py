"""Timestamps as every payload and store writes them: ISO 8601 in UTC, with its offset."""

from __future__ import annotations

from datetime import datetime, timezone


def iso_utc(timestamp: float, timespec: str = "milliseconds") -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec=timespec)
