"""What changed between the running config and a newly loaded one: a pure comparison, no side effects.

Cameras are matched by id. A section is named when any of its keys changed; each changed camera lists the
keys that changed, so that the service can apply a change in place where it can (metadata) and restart
only that camera where it must (url, fps...). Sections are found generically (every field of `Config`), so
a section added later is reported without touching this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel

from daemon.config import CameraConfig, Config

# Model keys that need a new ONNX session; the others (id, thresholds) apply to the running one.
MODEL_SESSION_KEYS = frozenset(
    {"path", "providers", "max_batch", "labels", "layout", "threads", "fp16", "cache_dir"}
)
# Sections that a running daemon cannot take over live: they name it (topics, Roboflow source) or its
# state on disk, or the socket Prometheus scrapes; the events' and Vision Events' own settings (their
# stores and spool) likewise. A change to them is refused with "needs a restart". Zones and lines are
# camera keys: they apply live.
RESTART_SECTIONS = ("device", "metrics", "events", "vision_events")
RESTART_KEYS = {
    "roboflow": frozenset({"enabled", "spool", "max_spool_mb", "max_spool_age"}),
    "mqtt": frozenset({"enabled"}),
    "api": frozenset({"enabled", "host", "port", "max_pending"}),
}
# Camera keys applied to the running camera; any other changed key restarts that camera alone.
CAMERA_IN_PLACE_KEYS = frozenset({"metadata"})


@dataclass(frozen=True)
class ConfigDiff:
    cameras_added: tuple[CameraConfig, ...] = ()
    cameras_removed: tuple[str, ...] = ()
    cameras_changed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # camera id -> changed keys
    sections_changed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # section -> changed keys

    @property
    def empty(self) -> bool:
        return not (
            self.cameras_added or self.cameras_removed or self.cameras_changed or self.sections_changed
        )

    @property
    def model_keys(self) -> tuple[str, ...]:
        return self.sections_changed.get("model", ())

    @property
    def needs_new_session(self) -> bool:
        return bool(MODEL_SESSION_KEYS.intersection(self.model_keys))

    def restart_needed(self) -> list[str]:
        """`section.key` of every change that only a restart can apply (empty: all apply live)."""
        keys = []
        for section, changed in self.sections_changed.items():
            if section in RESTART_SECTIONS:
                keys += [f"{section}.{key}" for key in changed]
            else:
                keys += [f"{section}.{key}" for key in changed if key in RESTART_KEYS.get(section, ())]
        return keys

    def summary(self) -> str:
        """One line for the log: `cameras +a -b ~c(fps); model (path, id); mqtt (host)`; 'no changes'."""
        parts = []
        cameras = [f"+{camera.id}" for camera in self.cameras_added]
        cameras += [f"-{camera}" for camera in self.cameras_removed]
        cameras += [f"~{camera}({', '.join(keys)})" for camera, keys in self.cameras_changed.items()]
        if cameras:
            parts.append("cameras " + " ".join(cameras))
        parts += [f"{section} ({', '.join(keys)})" for section, keys in self.sections_changed.items()]
        return "; ".join(parts) or "no changes"


def changed_keys(old: BaseModel, new: BaseModel) -> tuple[str, ...]:
    """The fields of two pydantic models of one type whose values differ, in declaration order."""
    names = type(old).model_fields
    return tuple(name for name in names if getattr(old, name) != getattr(new, name))


def diff(old: Config, new: Config) -> ConfigDiff:
    before = {camera.id: camera for camera in old.cameras}
    after = {camera.id: camera for camera in new.cameras}
    changed = {}
    for camera_id in before.keys() & after.keys():
        keys = changed_keys(before[camera_id], after[camera_id])
        if keys:
            changed[camera_id] = keys
    sections = {}
    for name in Config.model_fields:
        if name in ("cameras", "source"):
            continue
        old_section, new_section = getattr(old, name), getattr(new, name)
        if old_section == new_section:
            continue
        if name == "vision_events" and not (old_section.enabled or new_section.enabled):
            continue  # off before and after: its key follows roboflow.api_key, and nothing uses it
        keys = changed_keys(old_section, new_section) if isinstance(old_section, BaseModel) else (name,)
        sections[name] = keys
    return ConfigDiff(
        cameras_added=tuple(camera for camera_id, camera in after.items() if camera_id not in before),
        cameras_removed=tuple(camera_id for camera_id in before if camera_id not in after),
        cameras_changed={camera_id: changed[camera_id] for camera_id in after if camera_id in changed},
        sections_changed=sections,
    )
