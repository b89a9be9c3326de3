"""One ONNX detection model: load and check it, then turn batches of BGR frames into `sv.Detections`.

Only the inference worker calls `infer`; the session, the input buffer and the decoders are not shared.
"""

from __future__ import annotations

import ast
import ctypes
import logging
import math
import os
import re
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import supervision as sv
from google.protobuf.message import DecodeError

from daemon.config import ModelConfig
from daemon.frames import DecodeParams
from daemon.model.decoders import (
    Decoded,
    UnsupportedModel,
    decode_rfdetr,
    decode_yolov5,
    decode_yolov8,
    describe,
    detect_layout,
    is_image_input,
    rfdetr_outputs,
)
from daemon.model.preprocess import LetterboxBuffer, unletterbox
from daemon.model.prologue import prepend_prologue

log = logging.getLogger("edgewatch.model")

ORT_PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_SHORT_NAMES = {ort_name: short for short, ort_name in ORT_PROVIDERS.items()}
_ORT_ERROR_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : ")


# RF-DETR's ONNX exports leave ImageNet normalisation to the caller (the prologue does it); YOLO exports take
# 0..1 RGB.
IMAGENET_NORMALISATION = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


class ModelError(Exception):
    """The model cannot be used; one line naming the file and the problem."""


def short_provider_name(ort_name: str) -> str:
    return _SHORT_NAMES.get(ort_name, ort_name.removesuffix("ExecutionProvider").lower())


# (max_batch, batch_timeout_ms) where the config leaves them unset, by the provider that runs the model.
# On a CPU a batch of B costs B single runs, so a frame batched with others only waits longer; on a GPU a
# batch of 8 costs about one run. CUDA pads every run to one size (see Model.full_batches), so waiting for a
# batch to fill saves nothing and only adds latency. Measurements: "Latency policy" in
# docs/performance-record.md.
BATCH_DEFAULTS = {"cpu": (1, 0.0), "cuda": (8, 0.0), "tensorrt": (8, 10.0)}


def batch_settings(config: ModelConfig, provider: str) -> tuple[int, float]:
    """`max_batch` and the batch timeout (seconds) on `provider`: as configured, else its default."""
    max_batch, timeout_ms = BATCH_DEFAULTS.get(provider, BATCH_DEFAULTS["cpu"])
    if config.max_batch is not None:
        max_batch = config.max_batch
    if config.batch_timeout_ms is not None:
        timeout_ms = config.batch_timeout_ms
    return max_batch, timeout_ms / 1000


def session_providers(
    config: ModelConfig, available: list[str], cache: bool = True
) -> list[tuple[str, dict[str, Any]]]:
    """The configured providers that this onnxruntime build has, in order, with their options. `cache`
    False: TensorRT keeps no engine or timing cache (its folder cannot be written)."""
    chosen: list[tuple[str, dict[str, Any]]] = []
    skipped: list[str] = []
    for name in config.providers:
        ort_name = ORT_PROVIDERS[name]
        if ort_name not in available:
            skipped.append(name)
        elif name == "tensorrt":
            folder = str(config.cache_dir)
            options: dict[str, Any] = {"trt_fp16_enable": config.fp16}
            if cache:
                options.update({
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": folder,
                    "trt_timing_cache_enable": True,
                    "trt_timing_cache_path": folder,  # default is the working directory, often not writable
                })
            chosen.append((ort_name, options))
        else:
            chosen.append((ort_name, {}))
    if skipped:
        log.info("execution providers not available in this onnxruntime, skipped: %s", ", ".join(skipped))
    return chosen


def parse_names(text: str) -> list[str]:
    """Class names from ONNX metadata: Ultralytics' `{0: 'person', ...}` or a list; [] if unreadable."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return []
    if isinstance(value, (list, tuple)):
        return [str(name) for name in value]
    if isinstance(value, dict) and value:
        try:
            by_index = {int(index): str(name) for index, name in value.items()}
        except (TypeError, ValueError):
            return []
        if min(by_index) < 0:
            return []
        return [by_index.get(index, str(index)) for index in range(max(by_index) + 1)]
    return []


def read_labels(path: Path) -> list[str]:
    """A labels file: one class name per line; blank lines are ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ModelError(f"{path}: cannot read the labels file: {reason}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelError(f"{path}: the labels file has no class names")
    return names


def _fixed(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _input_size(shape: list[Any], metadata: dict[str, str]) -> tuple[int, int] | None:
    height, width = _fixed(shape[2]), _fixed(shape[3])
    if height and width:
        return height, width
    try:
        imgsz = ast.literal_eval(metadata.get("imgsz", ""))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if isinstance(imgsz, int) and imgsz > 0:
        return imgsz, imgsz
    if isinstance(imgsz, (list, tuple)) and len(imgsz) == 2 and all(_fixed(v) for v in imgsz):
        return int(imgsz[0]), int(imgsz[1])
    return None


def _class_count(layout: str, shapes: list[list[Any]]) -> int | None:
    """Number of classes the outputs encode, when their shapes fix it."""
    if layout == "yolov8":
        rows = _fixed(shapes[0][1])
        return rows - 4 if rows else None
    if layout == "yolov5":
        columns = _fixed(shapes[0][2])
        return columns - 5 if columns else None
    return _fixed(shapes[1][2])


def _check_class_count(config: ModelConfig, layout: str, shapes: list[list[Any]], names: list[str]) -> None:
    classes = _class_count(layout, shapes)
    if classes is not None and len(names) < classes:
        source = config.labels or "its metadata"
        raise ModelError(f"{config.path}: the model has {classes} classes but {source} names {len(names)}")


def _class_names(config: ModelConfig, metadata: dict[str, str]) -> list[str]:
    """A labels file wins over the model's own `names` metadata."""
    if config.labels is not None:
        return read_labels(config.labels)
    names = parse_names(metadata.get("names", ""))
    if not names:
        raise ModelError(
            f"{config.path}: no class names: the model has no readable 'names' metadata; "
            "set model.labels to a file with one class name per line"
        )
    return names


def physical_cores(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> int:
    """How many physical cores the logical `cpus` cover (SMT siblings count once); len(cpus) if unknown."""
    cores = set()
    for cpu in cpus:
        try:
            cores.add((sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return len(cores)


def cgroup_cpu_limit(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int | None:
    """The CPUs a cgroup v2 quota allows (`quota period` -> ceil(quota / period)); None when unlimited."""
    try:
        quota, period = cpu_max.read_text().split()[:2]
        return None if quota == "max" else max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        return None


def default_threads() -> int:
    """Intra-op threads for the CPU provider: the physical cores this process may run on, within its cgroup
    quota. ONNX Runtime's own default counts the host's cores, which oversubscribes a container limited to
    fewer (its threads then wait on each other at every operator)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    threads = physical_cores(cpus)
    limit = cgroup_cpu_limit()
    return min(threads, limit) if limit else threads


def _session_options(threads: int, optimise: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimise else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: ORT's warnings about graph details are noise to operators
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # sequential execution: no inter-op pool needed
    # Idle intra-op threads sleep instead of spinning: the daemon's other threads (decoding cameras, sinks)
    # need the cores between runs, and a spinning pool thread takes one from them.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _create_session(
    path: Path, model: str | bytes, providers: list[tuple[str, dict[str, Any]]], options: ort.SessionOptions
) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(model, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types, none of them documented
        lines = str(exc).strip().splitlines()
        reason = _ORT_ERROR_PREFIX.sub("", lines[0]) if lines else type(exc).__name__
        raise ModelError(f"{path}: not a loadable ONNX model: {reason}") from None


def _with_prologue(path: Path, layout: str, input_size: tuple[int, int]) -> bytes:
    """The model file with the uint8 prologue in front of its input, serialised for ONNX Runtime."""
    try:
        proto = onnx.load(str(path))
        normalise = IMAGENET_NORMALISATION if layout == "rfdetr" else {}
        return prepend_prologue(proto, *input_size, **normalise).SerializeToString()
    except (OSError, ValueError, DecodeError) as exc:  # PrologueError is a ValueError; >2 GB too
        raise ModelError(f"{path}: cannot put the uint8 input prologue in front: {exc}") from None


def _check_forced_layout(layout: str, inputs: list[Any], outputs: list[Any]) -> None:
    """A layout set in the config skips detection but must still fit the input and the outputs' ranks."""
    if layout == "rfdetr":
        fits = rfdetr_outputs(outputs) is not None
    else:
        fits = len(outputs) == 1 and len(outputs[0].shape) == 3
    if not fits or not is_image_input(inputs):
        raise UnsupportedModel(
            f"model.layout = {layout!r} does not fit the model: inputs {describe(inputs)}; "
            f"outputs {describe(outputs)}"
        )


CUDA_RUNTIMES = ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0")


def pin_host_memory(array: np.ndarray) -> bool:
    """Page-lock the memory of `array` (which owns it) with the CUDA runtime (`cudaHostRegister`), so that
    copies between it and the device go by DMA instead of through a staging buffer. False where there is no
    CUDA runtime or it refuses (the copies then work as before, only slower). The memory is unregistered when
    the array goes (a model replaced by a reload), before it is freed."""
    if array.base is not None:
        raise ValueError("pin_host_memory needs an array that owns its memory, not a view")
    for name in CUDA_RUNTIMES:
        try:
            runtime = ctypes.CDLL(name)
        except OSError:
            continue
        register = runtime.cudaHostRegister
        register.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
        register.restype = ctypes.c_int
        # cudaHostRegisterPortable (1): pinned for every CUDA context, whichever runtime ONNX Runtime loaded
        if register(array.ctypes.data, array.nbytes, 1) != 0:  # 0: cudaSuccess
            return False
        unregister = runtime.cudaHostUnregister
        unregister.argtypes = [ctypes.c_void_p]
        # Freed while still registered, the pages would stay locked for the process's life, and memory
        # allocated later at the same addresses would be taken for registered (undefined behaviour). The
        # callback runs as the array is deallocated, before numpy frees its memory; not at exit, when the
        # CUDA runtime may already be gone.
        weakref.finalize(array, unregister, array.ctypes.data).atexit = False
        return True
    return False


class BoundRunner:
    """`session.run` through an IO binding, for the GPU providers: the input is bound from the model's
    page-locked buffer, and each output is written straight into a preallocated page-locked host array, so
    each copy goes by DMA and nothing is allocated or copied again per run (a plain `session.run` allocates
    its outputs in pageable memory). The outputs returned are views of those arrays: valid until the next run.
    """

    def __init__(
        self, session: ort.InferenceSession, input_name: str, outputs: list[dict[str, np.ndarray]]
    ) -> None:
        self._session = session
        self._input_name = input_name
        # per slot (Model.SLOTS): one batch's outputs are decoded while the next batch runs
        self._outputs = outputs
        self._binding = session.io_binding()

    @classmethod
    def for_session(
        cls,
        session: ort.InferenceSession,
        input_name: str,
        output_names: list[str],
        max_batch: int,
        slots: int,
    ) -> BoundRunner | None:
        """A runner with host arrays for `max_batch` frames in each of `slots`; None where an output's size
        per frame is not fixed (symbolic dims past the batch, or a type other than float32/float16): a plain
        run then."""
        dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
        found = {output.name: output for output in session.get_outputs()}
        shapes: dict[str, tuple[int, ...]] = {}
        for name in output_names:
            per_frame = found[name].shape[1:]
            if found[name].type not in dtypes or not all(isinstance(dim, int) for dim in per_frame):
                return None
            shapes[name] = (max_batch, *per_frame)
        outputs = [
            {name: np.empty(shape, dtype=dtypes[found[name].type]) for name, shape in shapes.items()}
            for _ in range(slots)
        ]
        for arrays in outputs:
            for array in arrays.values():
                pin_host_memory(array)
        return cls(session, input_name, outputs)

    def __call__(self, batch: np.ndarray, slot: int = 0) -> list[np.ndarray]:
        batch = np.ascontiguousarray(batch)
        size = len(batch)
        binding = self._binding
        binding.bind_input(self._input_name, "cpu", 0, batch.dtype, list(batch.shape), batch.ctypes.data)
        for name, array in self._outputs[slot].items():
            binding.bind_output(name, "cpu", 0, array.dtype, [size, *array.shape[1:]], array.ctypes.data)
        self._session.run_with_iobinding(self._binding)
        return [array[:size] for array in self._outputs[slot].values()]


class Model:
    # input buffers (and bound outputs): the worker letterboxes one batch into one while the other runs
    SLOTS = 2

    def __init__(
        self,
        session: ort.InferenceSession,
        layout: str,
        output_names: list[str],
        class_names: list[str],
        input_size: tuple[int, int],
        fixed_batch: int | None,
        config: ModelConfig,
        threads: int = 0,
    ) -> None:
        self.path = config.path
        self.layout = layout
        self.class_names = class_names
        self.input_size = input_size  # (height, width)
        self.provider = short_provider_name(session.get_providers()[0])
        on_gpu = self.provider in ("cuda", "tensorrt")
        # every run is `run_size` frames, a smaller batch padded with the buffer's other rows as they were:
        # with a fixed batch dim, and on CUDA, which sets up its convolutions again whenever the batch size
        # changes from the last run (ONNX Runtime warns "Conv running in Fallback mode"; on an H200 runs of
        # alternating sizes took 70-120 ms each, against 1-2 ms at one size)
        self.full_batches = fixed_batch is not None or self.provider == "cuda"
        # the input buffer's size: the largest batch the worker may hand this model
        self.max_batch = fixed_batch if fixed_batch is not None else batch_settings(config, self.provider)[0]
        # frames per run where runs are full: a fixed batch dim's, or on CUDA the largest batch run so far
        # (one or two cameras then run 1 or 2 frames, not max_batch; each growth costs one slow run)
        self.run_size = fixed_batch if fixed_batch is not None else 1
        self.fixed_batch = fixed_batch
        # the inference worker letterboxes the next batch and decodes the last one while a batch runs: on a
        # GPU, where that CPU work takes about as long as the run. Not on a CPU: there it takes the cores the
        # run needs, and a frame taken a run early waits that run out (measured: docs/performance-record.md)
        self.overlap_runs = on_gpu
        self.threads = threads  # ONNX Runtime intra-op threads (CPU kernels)
        self._session = session
        self._input_name = session.get_inputs()[0].name
        self._output_names = output_names
        self._names = np.array(class_names, dtype=str)
        self._defaults = DecodeParams(config.confidence, config.iou, config.max_detections)
        self._config = config
        self._buffers = [LetterboxBuffer(*input_size, self.max_batch) for _ in range(self.SLOTS)]
        # None: a plain session.run (CPU); the benchmark sets it aside to time a plain run on a GPU
        self.bound: BoundRunner | None = None
        if on_gpu:
            self.bound = BoundRunner.for_session(
                session, self._input_name, output_names, self.max_batch, self.SLOTS
            )
            pinned = all([pin_host_memory(buffer.batch) for buffer in self._buffers])  # a list: pin every one
            how = "outputs bound to host arrays" if self.bound else "plain runs (outputs vary in size)"
            log.info("%s: %s, %s input buffer", self.provider, how, "pinned" if pinned else "pageable")

    @classmethod
    def load(cls, config: ModelConfig) -> Model:
        path = config.path
        if not path.is_file():
            raise ModelError(f"{path}: no such model file")
        cache = True
        if "tensorrt" in config.providers and ORT_PROVIDERS["tensorrt"] in ort.get_available_providers():
            try:
                config.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a read-only or full state folder must not stop the device
                cache = False
                log.warning(
                    "%s: cannot create the TensorRT cache (%s): engines are built at every start",
                    config.cache_dir, exc.strerror,
                )
        providers = session_providers(config, ort.get_available_providers(), cache)
        if not providers:
            raise ModelError(
                f"{path}: none of the configured providers ({', '.join(config.providers)}) is available; "
                f"this onnxruntime has {', '.join(ort.get_available_providers())}"
            )
        threads = config.threads or default_threads()
        # the file as it is, read by a plain CPU session that only lists its inputs, outputs and metadata
        inspected = _create_session(path, str(path), [(ORT_PROVIDERS["cpu"], {})], _session_options(1, False))
        inputs, outputs = inspected.get_inputs(), inspected.get_outputs()
        try:
            if config.layout == "auto":
                layout = detect_layout(inputs, outputs)
            else:
                _check_forced_layout(config.layout, inputs, outputs)
                layout = config.layout
        except UnsupportedModel as exc:
            raise ModelError(f"{path}: {exc}") from None
        if inputs[0].type not in ("tensor(float)", "tensor(float16)"):
            raise ModelError(
                f"{path}: input {inputs[0].name} is {inputs[0].type}; edgewatch feeds float32 or float16"
            )
        output_names = list(rfdetr_outputs(outputs) or ()) if layout == "rfdetr" else [outputs[0].name]

        metadata = inspected.get_modelmeta().custom_metadata_map
        class_names = _class_names(config, metadata)
        by_name = {output.name: list(output.shape) for output in outputs}
        _check_class_count(config, layout, [by_name[name] for name in output_names], class_names)

        input_size = _input_size(list(inputs[0].shape), metadata)
        if input_size is None:
            raise ModelError(
                f"{path}: input {inputs[0].name} {inputs[0].shape} has no fixed height/width "
                "and the metadata has no 'imgsz'"
            )
        batch = _fixed(inputs[0].shape[0])
        del inspected
        session = _create_session(
            path, _with_prologue(path, layout, input_size), providers, _session_options(threads)
        )
        model = cls(
            session,
            layout,
            output_names,
            class_names,
            input_size,
            fixed_batch=batch,
            config=config,
            threads=threads,
        )
        fill_wait = batch_settings(config, model.provider)[1]
        requested = short_provider_name(providers[0][0])
        if model.provider != requested:
            log.warning("model %s: asked for %s, onnxruntime runs it on %s", path, requested, model.provider)
        log.info(
            "model %s: %s layout, %d classes, input %dx%d, batch %s, provider %s, %d CPU thread(s)",
            path.name,
            layout,
            len(class_names),
            input_size[1],
            input_size[0],
            batch if batch is not None
            else f"dynamic (max {model.max_batch}, waits {fill_wait * 1000:g} ms to fill)",
            model.provider,
            threads,
        )
        return model

    def set_thresholds(self, config: ModelConfig) -> None:
        """New default confidence, IoU and detection cap (a config reload); used from the next batch on."""
        self._defaults = DecodeParams(config.confidence, config.iou, config.max_detections)
        self._config = config

    def warm_up(self) -> None:
        """Run a zero batch, so the first frames don't pay for lazy initialisation (TensorRT engine builds).

        A model that runs full batches runs its run size (a fixed batch dim's; on CUDA 1 at first). Otherwise,
        with a dynamic batch, it runs the largest batch and then a single frame: TensorRT sizes its engine's
        shape range from the shapes it has seen, so both ends are built before live frames arrive.
        """
        sizes = [self.run_size] if self.full_batches else sorted({self.max_batch, 1}, reverse=True)
        for size in sizes:
            outputs = self.run(np.zeros((size, *self.input_size, 3), dtype=np.uint8))
        # a symbolic class dim could not be checked at load; an unnamed class id would fail every frame
        shapes = [list(output.shape) for output in outputs]
        _check_class_count(self._config, self.layout, shapes, self.class_names)

    def run(self, batch: np.ndarray, slot: int = 0) -> list[np.ndarray]:
        """One `session.run` on a letterboxed batch [B, height, width, 3] uint8 BGR: the raw outputs (on a
        GPU, views of the model's host arrays for `slot`, valid until the next run in that slot)."""
        if self.bound is not None:
            return self.bound(batch, slot)
        return self._session.run(self._output_names, {self._input_name: batch})

    def prepare(self, images: list[np.ndarray], slot: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Letterbox at most `max_batch` images into the input buffer of `slot`: (the batch to run, their
        transforms). Both are views of that buffer, valid until the next `prepare` into it."""
        buffer = self._buffers[slot]
        batch, transforms = buffer.fill(images)
        if not self.full_batches:
            return batch, transforms
        self.run_size = max(self.run_size, len(images))
        return buffer.batch[: self.run_size], transforms

    def detections(
        self,
        outputs: list[np.ndarray],
        images: list[np.ndarray],
        transforms: np.ndarray,
        params: list[DecodeParams | None] | None = None,
    ) -> list[sv.Detections]:
        """The outputs of one run of `prepare(images)` decoded into detections in each image's pixels."""
        if params is None:
            decoded = self._decode(outputs, len(images), self._defaults)
        else:
            decoded = [
                self._decode([output[i : i + 1] for output in outputs], 1, p or self._defaults)[0]
                for i, p in enumerate(params)
            ]
        results = []
        for image, transform, (xyxy, confidence, class_id) in zip(images, transforms, decoded, strict=True):
            height, width = image.shape[:2]
            results.append(
                sv.Detections(
                    xyxy=unletterbox(xyxy, transform, width, height),
                    confidence=confidence,
                    class_id=class_id,
                    data={"class_name": self._names[class_id]},
                )
            )
        return results

    def _decode(self, outputs: list[np.ndarray], count: int, p: DecodeParams) -> list[Decoded]:
        classes = None if p.classes is None else np.array(p.classes, dtype=np.int64)
        if self.layout == "yolov8":
            return decode_yolov8(
                outputs[0][:count], p.confidence, p.iou, p.max_detections,
                agnostic=p.class_agnostic, classes=classes,
            )
        if self.layout == "yolov5":
            return decode_yolov5(
                outputs[0][:count], p.confidence, p.iou, p.max_detections,
                agnostic=p.class_agnostic, classes=classes,
            )
        return decode_rfdetr(
            outputs[0][:count], outputs[1][:count], self.input_size, p.confidence, p.max_detections,
            classes=classes,
        )
