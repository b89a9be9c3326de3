"""One multi-object tracker per camera: the `trackers` package's ByteTrack, on the frames' capture times."""

from __future__ import annotations

import numpy as np
import supervision as sv
from trackers import ByteTrackTracker

MINIMUM_CONSECUTIVE_FRAMES = 2  # sightings before a track gets an id: one-frame false positives get none


class CameraTracker:
    """Tracks one camera's objects; `reset()` forgets every track (the camera reconnected)."""

    def __init__(self, activation_threshold: float, lost_after: float) -> None:
        self._activation_threshold = activation_threshold
        self._lost_after = lost_after
        self._tracker = self._new()

    def _new(self) -> ByteTrackTracker:
        return ByteTrackTracker(
            # counted in frames at 30 fps; with timestamps, ByteTrack keeps a lost track this many seconds:
            # as long as the lifecycle does, so that an object unseen for less keeps its id
            lost_track_buffer=max(1, round(self._lost_after * 30)),
            track_activation_threshold=self._activation_threshold,
            minimum_consecutive_frames=MINIMUM_CONSECUTIVE_FRAMES,
            # the model drops what is below its threshold: every detection it reports may start a track
            high_conf_det_threshold=self._activation_threshold,
        )

    def update(self, detections: sv.Detections, monotonic: float) -> sv.Detections:
        """The same detections (possibly reordered) with `tracker_id` set; -1 for those not (yet) tracked.

        `monotonic` is the capture time on the monotonic clock: a wall clock stepped back by NTP would make
        ByteTrack skip frames."""
        tracked = self._tracker.update(detections, timestamp=monotonic)
        if len(tracked) == 0:  # keep the frame's own (empty) detections, with their data keys
            detections.tracker_id = np.empty(0, dtype=int)
            return detections
        return tracked

    def reset(self) -> None:
        self._tracker = self._new()
