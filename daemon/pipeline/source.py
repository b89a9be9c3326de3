"""What a camera URL names: a network stream, a file, a V4L2 device or a GStreamer pipeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Decoder = Literal["cpu", "cuda"]  # where FFmpeg decodes a file or network stream


@dataclass(frozen=True)
class Source:
    kind: Literal["network", "file", "v4l2", "gst"]
    target: str | int  # what OpenCV opens: URL, path, V4L2 index or device, GStreamer pipeline

    @property
    def live(self) -> bool:
        return self.kind != "file"


def parse_source(url: str) -> Source:
    if url.startswith("gst:"):
        return Source("gst", url[len("gst:") :].strip())
    if url.isdigit():
        return Source("v4l2", int(url))
    if url.startswith("/dev/video"):
        return Source("v4l2", url)
    if url.startswith("file://"):
        return Source("file", url[len("file://") :])
    if "://" in url:
        return Source("network", url)
    return Source("file", url)
