"""Per-volume preprocessing shared by the loaders: validation, min-max normalisation, in-plane resizing.

Resizing stretches each slice to the working size (no crop, no padding, aspect ratio not kept), with
half-pixel-centre coordinates (``src = (dst + 0.5) * in / out - 0.5``, as PyTorch ``align_corners=False``
and ``jax.image.resize``):

- images: bilinear, coordinates clamped at the border, no anti-aliasing (a convex combination of input
  pixels, so [0, 1] stays [0, 1]); separable, with index gathers (no BLAS), in float32. The older reference
  scripts used ``skimage.transform.resize(mode="constant")``, which blends the outermost rows/columns with
  zero when upsampling (e.g. 216 -> 256); ours clamps there, and is otherwise the same interpolation;
- labels: nearest neighbour, ``src = floor((dst + 0.5) * in / out)``: every output value is a copy of an
  input value. Upsampling then downsampling back with the same rule returns the original exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from segmime_jax.data.errors import DataError


def linear_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For 1D linear resizing: per output position, the two source indices ``lo``, ``hi`` and the weight
    ``frac`` of ``hi`` (``out = (1 - frac) * in[lo] + frac * in[hi]``)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    dst = np.arange(out_size, dtype=np.float64)
    src = np.clip((dst + 0.5) * (in_size / out_size) - 0.5, 0.0, in_size - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, in_size - 1)
    return lo, hi, (src - lo).astype(np.float32)


def resize_linear_axis(array: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Linear resizing of one axis of a float array (gathers and a blend: no BLAS, any dtype kept)."""
    lo, hi, frac = linear_weights(array.shape[axis], size)
    shape = [1] * array.ndim
    shape[axis] = size
    frac = frac.reshape(shape).astype(array.dtype)
    low = np.take(array, lo, axis=axis)
    return low + frac * (np.take(array, hi, axis=axis) - low)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output position for nearest-neighbour resizing."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    dst = np.arange(out_size, dtype=np.float64)
    return np.minimum(np.floor((dst + 0.5) * (in_size / out_size)).astype(np.int64), in_size - 1)


def resize_bilinear(slices: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(..., H, W)`` float slices to ``(..., *size)`` float32 (bilinear, stretch)."""
    slices = np.asarray(slices, dtype=np.float32)
    height, width = slices.shape[-2:]
    if (height, width) == tuple(size):
        return slices.copy()
    return resize_linear_axis(resize_linear_axis(slices, size[0], slices.ndim - 2), size[1], slices.ndim - 1)


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``(..., H, W)`` label slices to ``(..., *size)`` by copying the nearest input value."""
    labels = np.asarray(labels)
    height, width = labels.shape[-2:]
    rows = nearest_indices(height, size[0])
    cols = nearest_indices(width, size[1])
    return labels[..., rows[:, None], cols[None, :]]


def check_size(size: tuple[int, int] | int) -> tuple[int, int]:
    """Normalise a working size option to ``(H, W)`` positive ints."""
    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive entries, got {size}")
    return size  # type: ignore[return-value]


def validate_pair(
    image: np.ndarray,
    label: np.ndarray,
    *,
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    num_classes: int,
) -> np.ndarray:
    """Check an image volume and its label volume; return the labels as uint8.

    Raises :class:`DataError` naming the file for: a shape mismatch, a volume that is not 3D, non-finite
    image voxels, a constant-intensity image, non-integer labels, or labels outside ``0..num_classes-1``.
    """
    if image.ndim != 3:
        raise DataError(image_path, f"expected a 3D volume, got an array of shape {image.shape}")
    if image.shape != label.shape:
        raise DataError(
            label_path, f"label shape {label.shape} does not match image shape {image.shape} ({os.fspath(image_path)})"
        )
    if min(image.shape) < 1:
        raise DataError(image_path, f"empty volume of shape {image.shape}")
    if not np.all(np.isfinite(image)):
        count = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
        raise DataError(image_path, f"{count} non-finite voxel(s) (NaN or inf)")
    lo, hi = float(np.min(image)), float(np.max(image))
    if not hi > lo:
        raise DataError(image_path, f"constant intensity ({lo}): cannot min-max normalise")
    return validate_labels(label, label_path=label_path, num_classes=num_classes)


def validate_labels(label: np.ndarray, *, label_path: str | os.PathLike, num_classes: int) -> np.ndarray:
    """The labels as uint8; :class:`DataError` naming the file for non-integer values or values outside
    ``0..num_classes-1``."""
    if np.issubdtype(label.dtype, np.floating):
        if not np.all(np.isfinite(label)):
            raise DataError(label_path, "non-finite label values")
        rounded = np.rint(label)
        if not np.array_equal(rounded, label):
            raise DataError(label_path, "label values are not integers")
        label = rounded
    values = np.unique(label)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        shown = ", ".join(str(v.item()) for v in bad[:10])
        raise DataError(label_path, f"label values outside 0..{num_classes - 1}: {shown}")
    return label.astype(np.uint8)


def check_same_geometry(
    image_affines: np.ndarray | Sequence[np.ndarray],
    label_affines: np.ndarray | Sequence[np.ndarray],
    *,
    image_path: str | os.PathLike,
    label_path: str | os.PathLike,
    voxel_fraction: float = 0.02,
) -> None:
    """Raise :class:`DataError` naming the label file when its voxel-to-world affine (spacing, orientation,
    origin) is not the image's: a label of the same shape but another geometry is almost always a
    mismatched pair of files.

    Each side may give several candidate affines (a NIfTI file's ``affine``, ``sform`` and ``qform``, which
    some tools set inconsistently); the pair is accepted when any image candidate matches any label
    candidate to within ``voxel_fraction`` of the smallest voxel size (at least 1e-3), in every entry, so
    that float rounding of headers (e.g. a float32 quaternion) is never an error.
    """
    images = [np.asarray(a, np.float64) for a in _as_list(image_affines)]
    labels = [np.asarray(a, np.float64) for a in _as_list(label_affines)]
    voxel = min(float(np.min(np.linalg.norm(a[:3, :3], axis=0))) for a in images)
    tolerance = max(1e-3, voxel_fraction * voxel)
    worst = min(float(np.max(np.abs(a - b))) for a in images for b in labels)
    if worst > tolerance:
        raise DataError(
            label_path,
            f"geometry (voxel-to-world affine) differs from the image's by up to {worst:.4g} "
            f"(tolerance {tolerance:.2g}; {os.fspath(image_path)})",
        )


def _as_list(affines: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(affines, np.ndarray) and affines.ndim == 2:
        return [affines]
    return [a for a in affines if a is not None]


def normalize_volume(image: np.ndarray) -> np.ndarray:
    """Per-volume min-max normalisation to [0, 1] (float32); the volume must not be constant."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = image.min(), image.max()
    return ((image - lo) / (hi - lo)).astype(np.float32)


def slices_to_working_size(
    image: np.ndarray, label: np.ndarray, *, slice_axis: int, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``image``, cut both volumes along ``slice_axis`` and resize each slice to ``size``.

    Returns ``(S, H, W)`` uint8 images (``round(255 * normalised)``) and uint8 labels.
    """
    normalized = np.moveaxis(normalize_volume(image), slice_axis, 0)
    labels = np.moveaxis(label, slice_axis, 0)
    resized = resize_bilinear(normalized, size)
    images = np.rint(np.clip(resized, 0.0, 1.0) * 255.0).astype(np.uint8)
    return images, np.ascontiguousarray(resize_nearest(labels, size).astype(np.uint8))
