"""Events rather than frames: tracking, zones, lines, the event lifecycle and snapshots."""
