"""`edgewatch run | check | reload | reports`: the command line.

Bad input gets one clear line, never a traceback."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import warnings

from daemon import __version__
from daemon.config import Config, ConfigError, find_config, load_config, unknown_event_classes

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

log = logging.getLogger("edgewatch")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgewatch", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edgewatch {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def with_config(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "-c",
            "--config",
            help="config file (default: $EDGEWATCH_CONFIG, ./config.toml, /etc/edgewatch/config.toml)",
        )
        sub.add_argument(
            "--log-level",
            default=os.environ.get("EDGEWATCH_LOG_LEVEL", "INFO"),
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            type=str.upper,
        )
        return sub

    run = with_config("run", "run until SIGTERM/SIGINT (or --duration)")
    run.add_argument("--duration", type=float, metavar="SECONDS", help="stop cleanly after this many seconds")
    with_config("check", "validate the config, load the model, try each source once")
    reload = with_config("reload", "check the config, have the daemon reload it, wait for the outcome")
    reload.add_argument("--pid", type=int, help="the daemon's pid (default: from its reload status file)")
    reload.add_argument("--timeout", type=float, default=300, metavar="SECONDS",
                        help="how long to wait for the outcome (a new TensorRT model may take minutes)")
    reports = with_config("reports", "list the Model Monitoring requests waiting in the spool")
    reports.add_argument("--json", action="store_true", help="print the exact request bodies")
    reports.add_argument("--limit", type=int, default=50, help="show at most this many (newest last)")
    vision = with_config("vision-events", "list the Vision Events waiting in their spool, as sent")
    vision.add_argument("--json", action="store_true", help="print each event's exact body")
    vision.add_argument("--limit", type=int, default=50, help="show at most this many (newest last)")
    return parser


def _secrets(config: Config) -> list[str]:
    return [
        config.roboflow.api_key.get_secret_value(),
        config.vision_events.api_key.get_secret_value(),
        config.mqtt.password.get_secret_value(),
        *(key.get_secret_value() for key in config.api.keys),
    ]


# The runtime modules come from an extra (pip wheels) or JetPack's own builds, never from the base package.
RUNTIME_MODULES = {"cv2": "OpenCV", "onnxruntime": "ONNX Runtime"}
RUNTIME_HINT = (
    "install edgewatch[cpu] (CPU), edgewatch[gpu] (NVIDIA GPU), "
    "or on a Jetson JetPack's own OpenCV and onnxruntime-gpu builds"
)


def missing_runtime() -> str | None:
    """One line naming the runtime modules that cannot be imported and how to install them, or None."""
    missing = []
    for module, name in RUNTIME_MODULES.items():
        try:
            importlib.import_module(module)
        except ImportError as exc:  # absent, or present but broken (e.g. a missing shared library)
            reason = "not installed" if isinstance(exc, ModuleNotFoundError) and exc.name == module else exc
            missing.append(f"{name} ({module}: {reason})")
    if not missing:
        return None
    return f"{' and '.join(missing)} cannot be imported: {RUNTIME_HINT}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("run", "check") and (problem := missing_runtime()):
        print(f"edgewatch: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from daemon.logs import setup_logging

    setup_logging(args.log_level)
    try:
        config = load_config(find_config(args.config))
    except ConfigError as exc:
        print(f"edgewatch: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    setup_logging(args.log_level, _secrets(config))
    if args.command == "run":
        return _run(config, args.duration)
    if args.command == "check":
        return _check(config)
    if args.command == "reload":
        from daemon.reload.command import request_reload, status_path

        return request_reload(status_path(config.roboflow.spool.parent), args.pid, args.timeout)
    # `reports` needs neither OpenCV nor ONNX Runtime; supervision warns when OpenCV is absent
    warnings.filterwarnings("ignore", message=r"OpenCV .* is not installed", module="supervision")
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `edgewatch reports | head` ends quietly
    if args.command == "vision-events":
        from daemon.roboflow.vision_events import list_vision_events

        return list_vision_events(config, as_json=args.json, limit=args.limit)
    from daemon.roboflow.model_monitoring import list_reports

    return list_reports(config, as_json=args.json, limit=args.limit)


def _load_model(config: Config):
    from daemon.model.session import Model, ModelError

    if any(camera.decoder == "cuda" for camera in config.cameras):
        from daemon.pipeline.video import cuda_unavailable

        cuda_unavailable()  # before the model's GPU session: FFmpeg makes the CUDA context, which both share
    try:
        model = Model.load(config.model)
        model.warm_up()
    except ModelError as exc:
        print(f"edgewatch: {config.source}: model.path: {exc}", file=sys.stderr)
        return None
    problems = unknown_event_classes(config, list(model.class_names))
    if problems:
        print("\n".join(f"edgewatch: {problem}" for problem in problems), file=sys.stderr)
        return None
    return model


def _run(config: Config, duration: float | None) -> int:
    if duration is not None and duration <= 0:
        print("edgewatch: --duration must be a positive number of seconds", file=sys.stderr)
        return EXIT_BAD_INPUT
    from daemon.security import config_warnings

    for warning in config_warnings(config):  # settings that work but expose something: said at every start
        log.warning("%s: %s", config.source, warning)
    from daemon.statelock import hold_state_folder

    try:  # before the model loads: a second daemon gives up at once, not after a load (minutes with TensorRT)
        state_lock = hold_state_folder(config.roboflow.spool.parent, f"{config.source}: roboflow.spool")
    except OSError as exc:
        print(f"edgewatch: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    model = _load_model(config)
    if model is None:
        return EXIT_BAD_INPUT
    from daemon.service import Service

    try:
        service = Service(config, model)
    except ConfigError as exc:
        print(f"edgewatch: {config.source}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:  # e.g. the metrics port is taken: a restart may find it free (state files degrade)
        print(f"edgewatch: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    service.install_signal_handlers()
    try:
        return service.run(duration)
    finally:
        if state_lock is not None:
            state_lock.release()


def _check(config: Config) -> int:
    from daemon.pipeline.capture import probe_source, redact_url

    model = _load_model(config)
    if model is None:
        return EXIT_BAD_INPUT
    print(
        f"ok: model {config.model.path} ({model.layout}, {len(model.class_names)} classes, "
        f"input {model.input_size[1]}x{model.input_size[0]}, provider {model.provider})"
    )
    failed = 0
    for camera in config.cameras:
        problem, decoding = probe_source(camera.url, decoder=camera.decoder)
        decoded = f" (decoder = {camera.decoder!r}: decoding {decoding})" if decoding else ""
        if problem:
            failed += 1
            print(f"FAIL: cameras.{camera.id}: {redact_url(camera.url)}: {problem}{decoded}")
        else:
            print(f"ok: cameras.{camera.id}: {redact_url(camera.url)}{decoded}")
    return EXIT_FAILED if failed else EXIT_OK
