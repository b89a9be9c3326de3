"""The per-stream aggregator: top prediction per class, order of first appearance, ties, empty windows."""

from __future__ import annotations

import random
import threading

import numpy as np
import supervision as sv

from daemon.roboflow.aggregator import Aggregator, Prediction, top_per_class


def detections(*found: tuple[str, float]) -> sv.Detections:
    names = [name for name, _ in found]
    return sv.Detections(
        xyxy=np.tile(np.array([[10.0, 10.0, 50.0, 50.0]]), (len(found), 1)).reshape(-1, 4),
        confidence=np.array([conf for _, conf in found], dtype=np.float32),
        class_id=np.arange(len(found)),
        data={"class_name": np.array(names, dtype=object)},
    )


def test_top_per_class_keeps_best_first_seen_order_and_first_of_ties() -> None:
    names = np.array(["cup", "person", "cup", "dog", "person", "cup"], dtype=object)
    conf = np.array([0.5, 0.6, 0.9, 0.3, 0.6, 0.9])
    assert top_per_class(names, conf).tolist() == [2, 1, 3]  # cup 0.9 (first of the tie), person, dog
    assert top_per_class(np.array([], dtype=object), np.array([])).tolist() == []


def test_top_per_class_matches_the_first_maximum_of_each_class_on_random_frames() -> None:
    rng = np.random.default_rng(7)
    for _ in range(50):
        n = int(rng.integers(1, 300))
        names = rng.choice(np.array(["a", "b", "c", "d", "e"], dtype=object), n)
        conf = rng.choice(np.array([0.1, 0.25, 0.5, 0.75, 0.9]), n)  # coarse, so ties happen
        # per class in order of first appearance: the first index holding that class's highest confidence
        classes = list(dict.fromkeys(names.tolist()))
        expected = [
            int(np.flatnonzero((names == name) & (conf == conf[names == name].max()))[0]) for name in classes
        ]
        assert top_per_class(names, conf).tolist() == expected


def test_window_reports_top_per_class_across_frames_in_first_seen_order() -> None:
    aggregator = Aggregator()
    aggregator.add(detections(("person", 0.4), ("cup", 0.7)), "frame-a", "coco/3")
    aggregator.add(sv.Detections.empty(), "frame-empty", "coco/3")
    aggregator.add(detections(("dog", 0.8), ("person", 0.9), ("cup", 0.7)), "frame-b", "coco/3")

    assert aggregator.flush() == [
        Prediction("coco/3", "person", 0.9, "frame-b", "object-detection"),
        Prediction("coco/3", "cup", 0.7, "frame-a", "object-detection"),  # the tie keeps the first seen
        Prediction("coco/3", "dog", 0.8, "frame-b", "object-detection"),
    ]
    assert aggregator.flush() == []  # a new window starts empty


def test_prediction_serialises_with_the_blocks_field_names() -> None:
    prediction = Prediction("coco/3", "cup", 0.8765, "id-1")
    assert prediction.as_dict() == {
        "model_id": "coco/3",
        "class_name": "cup",
        "confidence": 0.8765,
        "inference_id": "id-1",
        "model_type": "object-detection",
    }


def test_empty_window_reports_nothing() -> None:
    aggregator = Aggregator()
    aggregator.add(sv.Detections.empty(), "frame-a", "coco/3")
    assert aggregator.flush() == []


def test_memory_is_bounded_by_the_number_of_classes() -> None:
    aggregator = Aggregator()
    for i in range(5000):
        aggregator.add(detections(("cup", (i % 97) / 100), ("person", 0.5), ("cup", 0.1)), f"f{i}", "m/1")
    best = aggregator.flush()
    assert len(best) == 2
    assert [(p.class_name, p.confidence, p.inference_id) for p in best] == [
        ("cup", 0.96, "f96"),
        ("person", 0.5, "f0"),
    ]


def test_concurrent_adds_and_flushes_lose_no_class_maximum() -> None:
    aggregator = Aggregator()
    classes = ["cup", "person", "dog", "car"]
    best_seen: dict[str, float] = {}
    seen_lock = threading.Lock()
    flushed: list[Prediction] = []
    done = threading.Event()

    def producer(seed: int) -> None:
        rnd = random.Random(seed)
        for i in range(400):
            found = [(rnd.choice(classes), round(rnd.random(), 4)) for _ in range(rnd.randint(1, 6))]
            with seen_lock:
                for name, conf in found:
                    best_seen[name] = max(best_seen.get(name, 0.0), conf)
            aggregator.add(detections(*found), f"{seed}-{i}", "m/1")

    def flusher() -> None:
        while not done.is_set():
            flushed.extend(aggregator.flush())

    threads = [threading.Thread(target=producer, args=(seed,)) for seed in range(4)]
    drain = threading.Thread(target=flusher)
    drain.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    drain.join()
    flushed.extend(aggregator.flush())

    best_flushed: dict[str, float] = {}
    for prediction in flushed:
        name = prediction.class_name
        best_flushed[name] = max(best_flushed.get(name, 0.0), prediction.confidence)
    assert best_flushed == best_seen
