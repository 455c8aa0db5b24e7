"""The study's inputs (paper §2.2, Figure 1): a label map ``y`` (a drawn cardiac phantom or a real ACDC slice) and a
noisy prediction ``s`` of it, with one missed and one spurious blob of the displayed class."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from segmime_jax.data.filters import gaussian_blur

#: Class names of the phantom (ACDC's label convention: 0 background, 1 RV, 2 Myo, 3 LV).
PHANTOM_CLASSES = ("background", "RV", "Myo", "LV")


def cardiac_phantom(size: int = 256) -> np.ndarray:
    """A short-axis cardiac slice drawn with discs, in ACDC's label convention.

    LV cavity (3): a disc of radius ``0.12·size``; myocardium (2): the ring out to ``0.18·size`` around it;
    RV cavity (1): a crescent, the part of a disc of radius ``0.2·size`` centred ``0.2·size`` to the left of the
    LV that lies outside the myocardium grown by ``0.02·size``; background (0) elsewhere. At 256×256 the areas
    are 2964 (LV), 3703 (Myo) and 5018 (RV) pixels out of 65536 (4.5 %, 5.7 %, 7.7 %).

    Args:
      size: pixels per side, at least 16.

    Returns:
      ``(size, size)`` uint8 class indices in ``{0, 1, 2, 3}`` (:data:`PHANTOM_CLASSES`).
    """
    if size < 16:
        raise ValueError(f"phantom size must be at least 16 pixels, got {size}")
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    cy, cx = 0.52 * size, 0.56 * size
    r_lv, r_myo, r_rv = 0.12 * size, 0.18 * size, 0.2 * size
    d_lv = np.hypot(rows - cy, cols - cx)
    d_rv = np.hypot(rows - cy, cols - (cx - 0.2 * size))
    labels = np.zeros((size, size), np.uint8)
    labels[(d_rv < r_rv) & (d_lv >= r_myo + 0.02 * size)] = 1
    labels[(d_lv < r_myo) & (d_lv >= r_lv)] = 2
    labels[d_lv < r_lv] = 3
    return labels


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """The pixels whose centre ``(row + 0.5, col + 0.5)`` lies strictly within ``radius`` of ``centre``.

    Args:
      shape: ``(H, W)``.
      centre: ``(row, col)`` in pixel units, ``(0, 0)`` being the top-left corner of the image.
      radius: in pixels.

    Returns:
      ``(H, W)`` boolean mask.
    """
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64) + 0.5
    return np.hypot(rows - centre[0], cols - centre[1]) < radius


def _pixel_nearest_centroid(region: np.ndarray) -> tuple[float, float]:
    """Centre ``(row + 0.5, col + 0.5)`` of the pixel of ``region`` nearest to its centroid."""
    rows, cols = np.nonzero(region)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return rows[nearest] + 0.5, cols[nearest] + 0.5


def error_blobs(labels: np.ndarray, error_class: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The structured errors of :func:`noisy_prediction`: a missed and a spurious disc of one class.

    ``missed``: inside the class, centred on the class pixel nearest to its centroid (the centroid itself can
    fall outside a ring-shaped class). ``spurious``: on background, ``2.5·radius`` beyond the class's bounding
    box, to the right, left, bottom or top: the first side whose disc is at least half background (else the
    disc with the most background), restricted to background pixels. For ``error_class = 0`` the roles swap:
    the spurious blob goes on the other classes, centred on their pixel nearest to their centroid.

    Args:
      labels: ``(H, W)`` class indices.
      error_class: the class that gets the errors; must be present in ``labels``.
      radius: disc radius in pixels.

    Returns:
      ``(missed, spurious)``: two ``(H, W)`` boolean masks.

    Raises:
      ValueError: the class is absent, or no place leaves room for a spurious blob.
    """
    labels = np.asarray(labels)
    shape = labels.shape
    inside = labels == error_class
    if not inside.any():
        raise ValueError(f"class {error_class} is absent from the label map: no error blobs can be placed")
    centre = _pixel_nearest_centroid(inside)
    missed = disc(shape, centre, radius) & inside
    allowed = (labels != 0) if error_class == 0 else (labels == 0)
    if error_class == 0:
        candidates = [_pixel_nearest_centroid(allowed)] if allowed.any() else []
    else:
        rows, cols = np.nonzero(inside)
        gap = 2.5 * radius
        lo_r, hi_r = radius + 1, shape[0] - radius - 1
        lo_c, hi_c = radius + 1, shape[1] - radius - 1
        candidates = [
            (centre[0], min(hi_c, cols.max() + gap)),
            (centre[0], max(lo_c, cols.min() - gap)),
            (min(hi_r, rows.max() + gap), centre[1]),
            (max(lo_r, rows.min() - gap), centre[1]),
        ]
    discs = [disc(shape, c, radius) for c in candidates]
    coverage = [float((d & allowed).sum()) / max(int(d.sum()), 1) for d in discs]
    best = next((i for i, c in enumerate(coverage) if c >= 0.5), int(np.argmax(coverage)) if discs else None)
    spurious = discs[best] & allowed if best is not None else np.zeros(shape, bool)
    if not spurious.any():
        raise ValueError(f"no room outside class {error_class} for a spurious blob of radius {radius:.1f} px")
    return missed, spurious


def noisy_prediction(
    labels: np.ndarray,
    num_classes: int,
    *,
    seed: int = 0,
    gain: float = 6.0,
    noise: float = 1.0,
    blur: float = 1.5,
    error_class: int | None = None,
    error_radius: float = 0.035,
) -> np.ndarray:
    """A plausible noisy network output ``s`` for ``labels``: a softmax over blurred one-hot logits plus noise.

    ``logits = gain · blur_σ(onehot(labels)) + noise · N(0, 1)`` (i.i.d. per pixel and class; ``σ = blur``
    pixels at 256×256, scaled with the image height), ``s = softmax(logits)``. With ``gain = 6`` and
    ``noise = 1`` an interior pixel has a median ``s ≈ 0.99`` but every pixel differs and a few fall far lower;
    the blur softens the borders. With ``error_class`` set (and present), two structured errors of that class
    are added (:func:`error_blobs`, disc radius ``error_radius·H``): a missed blob (its logit lowered by
    ``gain`` inside the class) and a spurious blob (its logit raised by ``gain`` on background beside the
    object): the false negative and false positive that the paper's Figure 1 shows CE treating differently.

    Args:
      labels: ``(H, W)`` class indices in ``[0, num_classes)``.
      num_classes: ``K``.
      seed: seed of the noise (``numpy.random.default_rng``).
      gain: logit margin of the true class.
      noise: standard deviation of the logit noise.
      blur: Gaussian blur of the one-hot logits, in pixels at 256×256.
      error_class: the class that gets one missed and one spurious blob; ``None``: no structured errors.
      error_radius: radius of the blobs as a fraction of ``H``.

    Returns:
      ``(H, W, K)`` float32 probabilities, summing to 1 over the last axis.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2D (H, W) label map, got shape {labels.shape}")
    h, w = labels.shape
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    rng = np.random.default_rng(seed)
    onehot = np.eye(num_classes)[labels]
    blurred = gaussian_blur(onehot.astype(np.float64), blur * h / 256.0, axes=(0, 1))
    logits = gain * blurred + noise * rng.standard_normal(onehot.shape)
    if error_class is not None and (labels == error_class).any():
        missed, spurious = error_blobs(labels, error_class, error_radius * h)
        logits[..., error_class] += gain * (spurious.astype(np.float64) - missed)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)


def acdc_slice(
    root: str | os.PathLike, *, size: int = 256, class_index: int = 3
) -> tuple[np.ndarray, tuple[str, ...], dict[str, Any]]:
    """A real ACDC label slice: the slice where every class is present and ``class_index`` is largest.

    Searches the training split (the test split if the training split is empty), loaded with
    :func:`segmime_jax.data.acdc.load_acdc` (imported here, lazily) and resized to ``size × size``.

    Args:
      root: the ACDC download folder.
      size: pixels per side of the loaded slices.
      class_index: the class whose area picks the slice.

    Returns:
      ``(labels, class_names, source)``: ``(size, size)`` uint8 class indices, the dataset's class names, and a
      dict naming the volume and slice (``kind``, ``root``, ``volume``, ``slice_index``).
    """
    try:
        from segmime_jax.data.acdc import load_acdc
    except ImportError as err:  # pragma: no cover - depends on the data package being installed
        raise RuntimeError(
            "--data-root needs the ACDC loader segmime_jax.data.acdc.load_acdc, which cannot be imported "
            f"({err}); run the study without --data-root to use the drawn phantom"
        ) from err
    splits = load_acdc(root, size=(size, size))
    data = splits.train if len(splits.train) else splits.test
    labels = np.asarray(data.labels)
    num_classes = len(data.class_names)
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class index {class_index} out of range for ACDC classes {data.class_names}")
    present = np.stack([(labels == k).any(axis=(1, 2)) for k in range(num_classes)], axis=-1).all(axis=-1)
    if not present.any():
        raise ValueError(f"no ACDC slice under {root} contains all classes {data.class_names}")
    area = np.where(present, (labels == class_index).sum(axis=(1, 2)), -1)
    i = int(np.argmax(area))
    volume = data.volumes[int(data.volume_ids[i])]
    source = {"kind": "acdc", "root": str(root), "volume": volume.name, "slice_index": int(data.slice_indices[i])}
    return labels[i].astype(np.uint8), tuple(data.class_names), source
