"""The slices a run looks at besides its training batches: the fixed validation batch of the gradient telemetry,
and the test slices shown in Figure 4."""

from __future__ import annotations

from typing import Any

import numpy as np


def collect_examples(test: Any, wanted: dict[int, int], picked: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """The Figure 4 examples: the ``wanted`` test slices (:func:`example_slices`) with their images, labels and the
    ``picked`` predictions (``{volume_id: (H, W)}``), stacked in volume order."""
    order = sorted(wanted)
    images, labels = [], []
    for v in order:
        index = test.slices_of(v)[wanted[v]]
        images.append(np.asarray(test.images[index], np.float32) / 255.0)
        labels.append(np.asarray(test.labels[index], np.uint8))
    height, width = test.image_size
    return {
        "image": np.stack(images) if images else np.zeros((0, height, width), np.float32),
        "label": np.stack(labels) if labels else np.zeros((0, height, width), np.uint8),
        "prediction": np.stack([picked[v] for v in order]) if order else np.zeros((0, height, width), np.uint8),
        "volume_names": np.asarray([test.volumes[v].name for v in order]),
        "slice_positions": np.asarray([wanted[v] for v in order], np.int32),
    }


def telemetry_batch(dataset: Any, batch_size: int) -> dict[str, np.ndarray]:
    """``batch_size`` validation slices chosen once: the most classes present, then the most foreground."""
    labels = np.asarray(dataset.labels)
    num_classes = dataset.num_classes
    present = np.stack([(labels == k).any(axis=(1, 2)) for k in range(num_classes)], -1).sum(-1)
    foreground = (labels > 0).sum(axis=(1, 2))
    order = np.lexsort((np.arange(len(labels)), -foreground, -present))
    chosen = np.sort(order[:batch_size])
    count = len(chosen)
    height, width = labels.shape[1:]
    image = np.zeros((batch_size, height, width, 1), np.float32)
    label = np.zeros((batch_size, height, width), np.int32)
    image[:count, ..., 0] = np.asarray(dataset.images)[chosen].astype(np.float32) / 255.0
    label[:count] = labels[chosen]
    return {"image": image, "label": label, "mask": np.arange(batch_size) < count}


def example_slices(dataset: Any, count: int) -> dict[int, int]:
    """``{volume_id: slice position}``: evenly spaced test volumes, each at its slice with most foreground."""
    volumes = len(dataset.volumes)
    if count <= 0 or volumes == 0:
        return {}
    chosen = sorted({int(round(v)) for v in np.linspace(0, volumes - 1, min(count, volumes))})
    out = {}
    for v in chosen:
        labels = np.asarray(dataset.labels)[dataset.slices_of(v)]
        out[v] = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    return out
