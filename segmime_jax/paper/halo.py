"""The halo of a segmentation: how much it over-segments around the reference, and how far out (our measurement).

Why: with ω = −a·y + b·(1−y) on the foreground channel only (the binary task of paper §3.1, PROMISE12), the mime
loss ωᵀs is linear in each probability, so per pixel it is smallest when the network says "foreground" wherever the
pixel is foreground with probability above b/(a+b) (5 % for the paper's a = 1.9, b = 0.1), where the Dice loss
stops at about DSC/2. Pixels that are foreground with a probability between the two (where the network is unsure,
along the boundary) are added by the mime and not by Dice: a halo. If that band had a fixed width in pixels, its
cost in DSC would shrink about as 1/size of the object in pixels; these measures test that (docs/mime_study.md: on
the synthetic PROMISE12 demo it does not, the halo keeps its size relative to the organ).

:func:`halo_measures` measures it on one volume, on the original grid against the reference read from disk:
the false-positive volume and the false-negative volume relative to the reference volume, and the distance of
the false-positive voxels to the reference (mean and median), in millimetres and in pixels of the working grid
the network saw (a one-pixel halo at 48×48 is several millimetres), and the false positives within a band of
``BAND_PX`` working pixels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

BAND_PX = 2.0  # a false positive this close to the reference (working pixels) belongs to the boundary band


@dataclasses.dataclass(frozen=True)
class HaloMeasures:
    """The halo of one predicted volume against its reference (one class).

    Attributes:
      reference_voxels: voxels of the class in the reference.
      fp_ratio: false-positive voxels over reference voxels (the halo's volume; 0.1 is 10 % of the organ).
      fn_ratio: false-negative voxels over reference voxels.
      fp_distance_mm: mean distance of the false-positive voxels to the nearest reference voxel, in mm
        (NaN without false positives or without a reference).
      fp_distance_px: the same in working-grid pixels (``fp_distance_mm`` over the working pixel size).
      fp_median_px: the median distance of the false positives, in working pixels (robust to a few far blobs).
      band_fp_ratio: the false positives within ``BAND_PX`` working pixels of the reference, over reference voxels:
        the halo proper (``fp_ratio`` minus false positives far from the organ).
    """

    reference_voxels: int
    fp_ratio: float
    fn_ratio: float
    fp_distance_mm: float
    fp_distance_px: float
    fp_median_px: float
    band_fp_ratio: float


def halo_measures(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], *, working_pixel_mm: float
) -> HaloMeasures:
    """False-positive and false-negative volumes of ``prediction`` relative to ``reference``, how far the false
    positives lie from the reference, and how many lie in the band along its boundary.

    The distance of a voxel to the reference is the Euclidean distance (:func:`scipy.ndimage.distance_transform_edt`
    with the voxel spacing) to the centre of the nearest reference voxel; a false positive touching the
    reference in-plane is one pixel (the in-plane spacing) away.

    Args:
      prediction, reference: boolean masks of one class, same shape (any number of dimensions).
      spacing: voxel size in mm along each axis of the masks.
      working_pixel_mm: the size in mm of one pixel of the grid the network worked on (e.g. in-plane spacing
        × original in-plane size / working size), to express the distance in the network's pixels.

    Returns:
      A :class:`HaloMeasures`. Ratios are NaN when the reference is empty.

    Example:
      >>> import numpy as np
      >>> reference = np.zeros((1, 9, 9), bool)
      >>> reference[0, 3:6, 3:6] = True
      >>> prediction = np.zeros_like(reference)
      >>> prediction[0, 2:7, 2:7] = True  # the reference grown by one pixel all round
      >>> m = halo_measures(prediction, reference, (3.0, 1.0, 1.0), working_pixel_mm=2.0)
      >>> round(m.fp_ratio, 3), m.fn_ratio, round(m.fp_distance_mm, 3), round(m.fp_distance_px, 3)
      (1.778, 0.0, 1.104, 0.552)
      >>> m.fp_median_px, round(m.band_fp_ratio, 3)  # every false positive within 2 working pixels
      (0.5, 1.778)
    """
    prediction, reference = _masks(prediction, reference)
    if len(spacing) != reference.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not have one value per axis of {reference.shape}")
    if not working_pixel_mm > 0:
        raise ValueError(f"working_pixel_mm must be positive, got {working_pixel_mm}")
    size = int(reference.sum())
    false_positive = prediction & ~reference
    false_negative = reference & ~prediction
    nan = math.nan
    fp_ratio = float(false_positive.sum()) / size if size else nan
    fn_ratio = float(false_negative.sum()) / size if size else nan
    distance_mm, median_px, band = nan, nan, (0.0 if size else nan)
    if size and false_positive.any():
        distance = ndimage.distance_transform_edt(~reference, sampling=tuple(float(s) for s in spacing))
        fp_px = distance[false_positive] / working_pixel_mm
        distance_mm = float(distance[false_positive].mean())
        median_px = float(np.median(fp_px))
        band = float((fp_px <= BAND_PX + 1e-9).sum()) / size
    return HaloMeasures(size, fp_ratio, fn_ratio, distance_mm, distance_mm / working_pixel_mm, median_px, band)


def eroded_dsc(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing: Sequence[float],
    *,
    working_pixel_mm: float,
    pixels: Sequence[float],
    slice_axis: int | None = None,
) -> list[float]:
    """The DSC of ``prediction`` against ``reference`` after peeling a rim of each width in ``pixels`` (working
    pixels) off the prediction: how much of an over-segmentation a uniform rim of that width explains.

    A voxel is kept when its distance to the prediction's background (:func:`scipy.ndimage.distance_transform_edt`
    with the voxel spacing) exceeds ``width × working_pixel_mm``; with ``slice_axis`` the distance is measured
    within each slice only (the network segmented slices).

    Args:
      prediction, reference: boolean masks of one class, same shape.
      spacing: voxel size in mm along each axis.
      working_pixel_mm: the size in mm of one pixel of the grid the network worked on.
      pixels: rim widths in working pixels (0: the prediction as it is).
      slice_axis: the axis of the slices, or None for a distance in every direction.

    Returns:
      One DSC (0-1) per width; NaN where both masks are empty.

    Example:
      >>> import numpy as np
      >>> reference = np.zeros((1, 9, 9), bool)
      >>> reference[0, 3:6, 3:6] = True
      >>> prediction = np.zeros_like(reference)
      >>> prediction[0, 2:7, 2:7] = True  # the reference grown by one pixel all round
      >>> [round(d, 3) for d in eroded_dsc(prediction, reference, (3.0, 1.0, 1.0), working_pixel_mm=1.0,
      ...                                  pixels=(0, 1), slice_axis=0)]
      [0.529, 1.0]
    """
    prediction, reference = _masks(prediction, reference)
    sampling = [1e9 if axis == slice_axis else float(s) for axis, s in enumerate(spacing)]  # 1e9: not across slices
    depth = ndimage.distance_transform_edt(prediction, sampling=sampling)
    out = []
    for width in pixels:
        kept = depth > width * working_pixel_mm
        total = kept.sum() + reference.sum()
        out.append(float(2 * (kept & reference).sum() / total) if total else math.nan)
    return out


def _masks(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as boolean arrays; ValueError if their shapes differ."""
    prediction = np.asarray(prediction, bool)
    reference = np.asarray(reference, bool)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction {prediction.shape} and reference {reference.shape} differ in shape")
    return prediction, reference


def working_pixel_mm(in_plane_spacing: Sequence[float], in_plane_shape: Sequence[int], working_size: Sequence[int]):
    """The size in mm of one working-grid pixel: each in-plane axis's extent (spacing × voxels) over the working
    size along it, averaged over the two axes (slices are stretched, not cropped, to the working size)."""
    sizes = [float(s) * int(n) / int(w) for s, n, w in zip(in_plane_spacing, in_plane_shape, working_size, strict=True)]
    return sum(sizes) / len(sizes)
