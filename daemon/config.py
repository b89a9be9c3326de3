"""config.toml -> validated pydantic models that mirror the file.

Unknown keys are errors, `${VAR}` (or `${VAR:-default}`) expands from the environment, relative paths are
taken relative to the config file's folder, and every error names the file, the key and the problem.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from daemon.pipeline.source import Decoder, parse_source

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib

SEARCH_PATHS = (Path("config.toml"), Path("/etc/edgewatch/config.toml"))
CAMERA_ID = r"^[A-Za-z0-9_-]+$"
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config problem, already phrased for the operator: `file: key: what is wrong`."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceConfig(_Section):
    id: Annotated[str, Field(pattern=CAMERA_ID)] = Field(default_factory=lambda: _hostname())


Provider = Literal["tensorrt", "cuda", "cpu"]


class ModelConfig(_Section):
    path: Path
    id: Annotated[str, Field(min_length=1)] = "coco/3"
    confidence: Annotated[float, Field(ge=0, le=1)] = 0.25
    iou: Annotated[float, Field(ge=0, le=1)] = 0.45
    providers: Annotated[list[Provider], Field(min_length=1)] = ["tensorrt", "cuda", "cpu"]
    max_batch: Annotated[int, Field(ge=1, le=64)] | None = Field(
        default=None,
        description="frames per batch, across cameras; unset: 8 on CUDA/TensorRT, 1 on CPU (best p95 there); "
        "CUDA pads each run to the largest batch run so far",
    )
    batch_timeout_ms: Annotated[float, Field(ge=0, le=1000)] | None = Field(
        default=None, description="how long a batch waits to fill; unset: 10 on TensorRT, 0 on CUDA and CPU"
    )
    labels: Path | None = None
    layout: Literal["auto", "yolov8", "yolov5", "rfdetr"] = "auto"
    max_detections: Annotated[int, Field(ge=1)] = 300
    threads: Annotated[int, Field(ge=0)] = 0  # intra-op threads on CPU; 0 = the physical cores allowed
    fp16: bool = True  # TensorRT only
    cache_dir: Path = Path("/var/lib/edgewatch/trt")  # TensorRT engine and timing caches



# --- events: tracking, zones and lines (per camera) ------------------------------------------------------

RelativeCoordinate = Annotated[float, Field(ge=0, le=1, description="relative to the frame: 0..1")]
RelativePoint = tuple[RelativeCoordinate, RelativeCoordinate]
EventName = Annotated[str, Field(pattern=CAMERA_ID, max_length=64)]


class ZoneConfig(_Section):
    name: EventName = Field(description="MQTT topic segment and metric label; unique per camera")
    polygon: list[RelativePoint] = Field(description="corners (x, y), relative to the frame")
    classes: list[str] = Field(default=[], description="classes counted in the zone; empty: every class")
    loiter_after: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="seconds inside before a `loiter` event; unset: none"
    )

    @field_validator("polygon")
    @classmethod
    def _is_polygon(cls, value: list[RelativePoint]) -> list[RelativePoint]:
        if len(value) < 3:
            raise ValueError(f"a polygon needs at least 3 points (got {len(value)})")
        return value


class LineConfig(_Section):
    name: EventName = Field(description="MQTT topic segment and metric label; unique per camera")
    start: RelativePoint = Field(description="(x, y) relative to the frame")
    end: RelativePoint = Field(description="(x, y) relative to the frame")
    classes: list[str] = Field(default=[], description="classes counted; empty: every class")

    @model_validator(mode="after")
    def _has_length(self) -> LineConfig:
        if self.start == self.end:
            raise ValueError(f"line {self.name!r}: start and end are the same point (a line of zero length)")
        return self


def unknown_event_classes(config: Config, class_names: list[str]) -> list[str]:
    """One line per zone or line class the model does not know (checked once the model is loaded)."""
    known = set(class_names)
    problems = []
    for index, camera in enumerate(config.cameras):
        for kind, items in (("zones", camera.zones), ("lines", camera.lines)):
            for position, item in enumerate(items):
                for name in item.classes:
                    if name not in known:
                        problems.append(
                            f"{config.source}: cameras[{index}].{kind}[{position}].classes: "
                            f"the model has no class {name!r}"
                        )
    return problems


def _unique_names(kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ValueError(f"{kind} name {name!r} is used twice on this camera; names must be unique")
        seen.add(name)


class CameraConfig(_Section):
    id: Annotated[str, Field(pattern=CAMERA_ID)]
    url: Annotated[str, Field(min_length=1)]
    fps: Annotated[float, Field(gt=0, le=240)] = 5
    loop: bool = False
    realtime: bool = True
    metadata: dict[str, str] = {}
    stall_timeout: Annotated[float, Field(gt=0)] = 10
    decoder: Decoder = Field(
        default="cpu",
        description="where a file or network stream is decoded: cpu, or cuda (the NVIDIA GPU's video "
        "decoder, through FFmpeg; a camera whose GPU or codec cannot falls back to the CPU and says so)",
    )
    track: bool = Field(default=False, description="track objects (on by itself with zones or lines)")
    zones: list[ZoneConfig] = []
    lines: list[LineConfig] = []

    @model_validator(mode="after")
    def _decoder_for_ffmpeg_sources(self) -> CameraConfig:
        if self.decoder != "cpu" and parse_source(self.url).kind in ("gst", "v4l2"):
            raise ValueError(
                f"decoder = {self.decoder!r} is for files and network streams; a gst: pipeline names its own "
                "decoder (e.g. nvv4l2decoder), and V4L2 devices are read by OpenCV"
            )
        return self

    @model_validator(mode="after")
    def _unique_zone_and_line_names(self) -> CameraConfig:
        _unique_names("zone", [zone.name for zone in self.zones])
        _unique_names("line", [line.name for line in self.lines])
        return self

    @property
    def tracked(self) -> bool:
        """Whether this camera's objects are tracked: asked for, or needed by its zones and lines."""
        return self.track or bool(self.zones or self.lines)

    @field_validator("metadata")
    @classmethod
    def _no_reserved_field(cls, value: dict[str, str]) -> dict[str, str]:
        if "camera" in value:
            raise ValueError("'camera' is set by edgewatch to the camera id; choose another field name")
        return value


class RoboflowConfig(_Section):
    enabled: bool = True
    api_key: SecretStr = SecretStr("")
    api_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.roboflow.com"
    workspace: Annotated[str, Field(pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_-]*$")] = ""
    frequency: Annotated[int, Field(ge=1)] = 5
    spool: Path = Path("/var/lib/edgewatch/spool.db")
    max_spool_mb: Annotated[float, Field(gt=0)] = 100
    max_spool_age: Annotated[float, Field(gt=0)] = 7 * 24 * 3600  # seconds
    fire_and_forget: bool = True
    timeout: Annotated[float, Field(gt=0)] = 10  # seconds per HTTP request


# --- Vision Events ([vision_events]) ---------------------------------------------------------------------

VisionEventSource = Literal["alerts", "zones", "lines", "counts"]
# Roboflow's limits on customMetadata
METADATA_MAX_KEYS = 100
METADATA_KEY = re.compile(r"[a-zA-Z0-9_ -]{1,100}")
METADATA_MAX_VALUE = 1000


class VisionEventsConfig(_Section):
    """Roboflow Vision Events: edge alerts, zone and line events and per-camera counts, with images."""

    enabled: bool = False
    api_key: SecretStr = SecretStr("")  # empty: roboflow.api_key
    api_url: Annotated[str, Field(pattern=r"^https?://")] = "https://api.roboflow.com"
    use_case: Annotated[str, Field(max_length=256)] = ""  # useCaseId
    send: list[VisionEventSource] = ["alerts", "zones", "lines"]
    images: bool = True  # attach each event's best snapshot
    coalesce: Annotated[float, Field(ge=0, le=60)] = 2.0  # seconds a burst of one kind is gathered into one
    counts_interval: Annotated[float, Field(ge=1)] = 60  # seconds between inventory_count events per camera
    spool: Path | None = None  # default: vision-events.db beside roboflow.spool
    max_spool_mb: Annotated[float, Field(gt=0)] = 500
    max_spool_age: Annotated[float, Field(gt=0)] = 7 * 24 * 3600  # seconds
    timeout: Annotated[float, Field(gt=0)] = 10  # seconds per HTTP request, first byte to last

    @model_validator(mode="after")
    def _use_case_when_enabled(self) -> VisionEventsConfig:
        if self.enabled and not self.use_case:
            raise ValueError("use_case is required when enabled (the useCaseId events are filed under)")
        return self

    def with_defaults(self, roboflow: RoboflowConfig) -> VisionEventsConfig:
        """The API key and the spool's folder default to [roboflow]'s."""
        key = self.api_key if self.api_key.get_secret_value() else roboflow.api_key
        return self.model_copy(
            update={"api_key": key, "spool": self.spool or roboflow.spool.parent / "vision-events.db"}
        )


def vision_metadata_problems(cameras: list[CameraConfig]) -> list[str]:
    """Each camera's metadata becomes customMetadata: `cameras[i].metadata...: problem` per breach."""
    problems = []
    for index, camera in enumerate(cameras):
        where = f"cameras[{index}].metadata"
        if len(camera.metadata) > METADATA_MAX_KEYS:
            problems.append(f"{where}: Vision Events take at most {METADATA_MAX_KEYS} fields")
        for key, value in camera.metadata.items():
            if not METADATA_KEY.fullmatch(key):
                problems.append(
                    f"{where}.{key}: a Vision Events metadata name is 1 to 100 letters, digits, '_', '-' or"
                    " spaces"
                )
            if len(value) > METADATA_MAX_VALUE:
                problems.append(
                    f"{where}.{key}: a Vision Events metadata value is at most {METADATA_MAX_VALUE}"
                    f" characters (got {len(value)})"
                )
    return problems


class MqttConfig(_Section):
    enabled: bool = True
    host: str = "localhost"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str = ""
    password: SecretStr = SecretStr("")
    tls: bool = False
    ca_file: Path | None = None
    client_id: str = ""  # default: edgewatch-<device id>
    keepalive: Annotated[int, Field(ge=5)] = 30
    topic_prefix: Annotated[str, Field(pattern=r"^[^#+]+$")] = "edgewatch"
    homeassistant: bool = False
    discovery_prefix: str = "homeassistant"
    # detections waiting for the socket; alerts, and events, each held through an outage
    max_queued: Annotated[int, Field(ge=1)] = 1000


class MetricsConfig(_Section):
    enabled: bool = True
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108


class AlertsConfig(_Section):
    camera_down_after: Annotated[float, Field(gt=0)] = 30
    confidence_window: Annotated[float, Field(gt=0)] = 300  # seconds of recent confidences compared
    confidence_baseline: Annotated[float, Field(gt=0)] = 3600  # seconds of history forming the baseline
    confidence_drop_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.7
    upload_failing_after: Annotated[float, Field(gt=0)] = 300
    inference_stalled_after: Annotated[float, Field(gt=0)] = 30


class ApiConfig(_Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9001
    keys: list[SecretStr] = []
    max_body_mb: Annotated[float, Field(gt=0)] = 20
    allow_url_images: bool = False
    max_pending: Annotated[int, Field(ge=1)] = 16
    max_request_megapixels: Annotated[float, Field(gt=0)] = 50  # all images of a request (headers)
    max_megapixels_in_flight: Annotated[float, Field(gt=0)] = 100  # all requests being decoded or inferred
    allowed_hosts: list[str] = []  # without keys: host names (besides IPs, localhost, this host's) served


class EventsConfig(_Section):
    lost_after: Annotated[float, Field(gt=0)] = Field(
        default=3.0, description="seconds an object may go unseen before its track ends (`end` event)"
    )
    max_tracks: Annotated[int, Field(ge=1, le=10000)] = Field(
        default=200, description="open tracks per camera; objects beyond it are not tracked (counted)"
    )
    snapshots: bool = Field(default=True, description="write each tracked object's best snapshot")
    snapshot_dir: Path | None = Field(default=None, description="default: snapshots/ beside the spool")
    max_snapshot_mb: Annotated[float, Field(gt=0)] = 200
    max_snapshot_age: Annotated[float, Field(gt=0)] = 7 * 24 * 3600  # seconds


class Config(_Section):
    device: DeviceConfig = Field(default_factory=DeviceConfig)
    model: ModelConfig
    cameras: list[CameraConfig] = []
    roboflow: RoboflowConfig = Field(default_factory=RoboflowConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    vision_events: VisionEventsConfig = Field(default_factory=VisionEventsConfig)
    source: Path | None = None  # the file this was loaded from; set by load_config

    @model_validator(mode="after")
    def _unique_camera_ids(self) -> Config:
        seen: set[str] = set()
        for camera in self.cameras:
            if camera.id in seen:
                raise ValueError(f"camera id {camera.id!r} is used twice; ids must be unique")
            seen.add(camera.id)
        return self


def _hostname() -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])
    return name or "edgewatch"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """`-c`, else $EDGEWATCH_CONFIG, else ./config.toml, else /etc/edgewatch/config.toml."""
    if explicit:
        return Path(explicit)
    if os.environ.get("EDGEWATCH_CONFIG"):
        return Path(os.environ["EDGEWATCH_CONFIG"])
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate
    return SEARCH_PATHS[0]


def expand_env(value: Any) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string; an unset variable becomes its default or ''."""
    if isinstance(value, str):
        return _ENV_REF.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)
    if isinstance(value, list):
        return [expand_env(item) for item in value]
    if isinstance(value, dict):
        return {key: expand_env(item) for key, item in value.items()}
    return value


def _key_path(location: tuple[int | str, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


# Keys whose values are secrets: an error about them never repeats what was given.
SECRET_KEYS = frozenset({"api_key", "password", "keys"})


def _describe(error: dict[str, Any]) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key"
    if error["type"] == "missing":
        return "required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    given = error.get("input")
    secret = any(part in SECRET_KEYS for part in error["loc"])
    if (
        not secret
        and error["type"] not in ("model_type", "dict_type")
        and isinstance(given, (str, int, float, bool))
    ):
        message += f" (got {given!r})"
    return message


def _written_keys(raw: dict[str, Any]) -> list[str]:
    """api.keys as written in the file (before ${VAR} expansion), for naming an unset variable."""
    keys = raw.get("api", {}).get("keys", [])
    return [key if isinstance(key, str) else "" for key in keys]


def _resolve(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path)


def _read_credential(name: str) -> str:
    """systemd's LoadCredential= puts secrets in files under $CREDENTIALS_DIRECTORY."""
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return ""
    try:
        return (Path(directory) / name).read_text().strip()
    except OSError:
        return ""


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if "source" in raw:
        raise ConfigError(f"{path}: source: unknown key")
    try:
        config = Config.model_validate(expand_env(raw))
    except ValidationError as exc:
        problems = [f"{path}: {_key_path(e['loc'])}: {_describe(e)}" for e in exc.errors()]
        raise ConfigError("\n".join(problems)) from None

    empty_keys = [
        f"{path}: api.keys[{index}]: the key is empty"
        + (f" ({written} expands to nothing: is the variable set?)" if _ENV_REF.search(written) else "")
        for index, (key, written) in enumerate(zip(config.api.keys, _written_keys(raw), strict=False))
        if not key.get_secret_value()
    ]
    if empty_keys:  # an empty key would leave the API open to anyone: refuse rather than guess
        raise ConfigError("\n".join(empty_keys))

    base = path.resolve().parent
    model = config.model.model_copy(
        update={
            "path": _resolve(base, config.model.path),
            "labels": _resolve(base, config.model.labels) if config.model.labels else None,
            "cache_dir": _resolve(base, config.model.cache_dir),
        }
    )
    roboflow = config.roboflow
    updates: dict[str, Any] = {"spool": _resolve(base, roboflow.spool)}
    if not roboflow.api_key.get_secret_value():
        updates["api_key"] = SecretStr(_read_credential("roboflow_api_key"))
    cameras = [
        camera.model_copy(update={"url": _resolve_file_url(base, camera.url)}) for camera in config.cameras
    ]
    roboflow = roboflow.model_copy(update=updates)
    events = config.events
    if events.snapshot_dir is not None:
        events = events.model_copy(update={"snapshot_dir": _resolve(base, events.snapshot_dir)})
    return config.model_copy(
        update={
            "events": events,
            "model": model,
            "cameras": cameras,
            "roboflow": roboflow,
            "vision_events": _resolve_vision_events(path, base, config, roboflow),
            "source": path,
        }
    )


def _resolve_vision_events(
    path: Path, base: Path, config: Config, roboflow: RoboflowConfig
) -> VisionEventsConfig:
    """The key and spool defaults from [roboflow]; the cameras' metadata checked against Roboflow's limits."""
    settings = config.vision_events
    if settings.enabled and (problems := vision_metadata_problems(config.cameras)):
        raise ConfigError("\n".join(f"{path}: {problem}" for problem in problems))
    if settings.spool:
        settings = settings.model_copy(update={"spool": _resolve(base, settings.spool)})
    return settings.with_defaults(roboflow)


def _resolve_file_url(base: Path, url: str) -> str:
    """A relative file path is relative to the config file; URLs, gst: pipelines and V4L2 indexes stay."""
    if "://" in url or url.startswith(("gst:", "/")) or url.isdigit():
        return url
    return str(base / url)
