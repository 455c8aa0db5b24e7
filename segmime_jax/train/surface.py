"""Surface distances of a segmentation in millimetres: 95th-percentile Hausdorff distance (HD95) and average
symmetric surface distance (ASSD), per volume and class, on the volume's original voxel grid.

Definitions (those of MetricsReloaded, Maier-Hein et al. 2024, and of MONAI's ``compute_hausdorff_distance`` /
``compute_average_surface_distance(symmetric=True)``; nnU-Net v1 used MedPy's, which differ in both: MedPy's
``hd95`` is the 95th percentile of the two directed distance sets pooled, not the larger of the two directed
95th percentiles, and its ``assd`` averages the two directed means):

- the surface ∂A of a binary mask A is its voxels with at least one face neighbour (6-connectivity in 3D)
  outside A, the outside of the array counting as outside (``A & ~binary_erosion(A)``);
- ``d(a, ∂B)`` is the Euclidean distance in mm, with the voxel spacing, from the centre of surface voxel a to
  the nearest centre of a surface voxel of B (:func:`scipy.ndimage.distance_transform_edt` with
  ``sampling=spacing``, computed on the bounding box of both masks: exact, and small next to the volume);
- ``HD95 = max(P95{d(a, ∂B) : a ∈ ∂A}, P95{d(b, ∂A) : b ∈ ∂B})``, P95 the 95th percentile (numpy, linear);
- ``ASSD = (Σ_a d(a, ∂B) + Σ_b d(b, ∂A)) / (|∂A| + |∂B|)``, the mean over both surfaces pooled (MedPy's
  ``assd`` averages the two directed means instead).

Empty masks (MetricsReloaded's convention): prediction and ground truth both empty for a class: 0 mm (nothing
to find and nothing found, as the DSC of such a class is 1); exactly one of them empty (a missed structure, or
a structure predicted where there is none): no surface to measure from, NaN. NaN values are left out of every
mean and counted (the tables say how many); MetricsReloaded asks for the worst case there in an aggregate, which
a mean in mm has no value for.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

PERCENTILE = 95.0
CONVENTION = (
    "HD95 = max of the two directed 95th percentiles of surface-to-surface distances, ASSD = mean of both "
    "surfaces' distances pooled (MetricsReloaded, MONAI symmetric ASD), in mm on the original voxel grid with "
    "the header's spacing, surfaces by 6-connectivity; both masks empty: 0 mm; exactly one empty: NaN, left "
    "out of the means and counted"
)


def surface(mask: np.ndarray) -> np.ndarray:
    """The surface voxels of a boolean mask: those with a face neighbour outside it (or on the array's edge)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(
    mask_a: np.ndarray, mask_b: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances between two non-empty masks, in the unit of ``spacing``.

    Args:
      mask_a, mask_b: boolean masks of the same shape, ``(X, Y, Z)`` or any dimension, neither empty.
      spacing: voxel size along each axis of the masks.

    Returns:
      ``(d_ab, d_ba)``: for each surface voxel of A (in C order) its distance to the nearest surface voxel of B,
      and the other way round, float64.
    """
    mask_a, mask_b = np.asarray(mask_a, bool), np.asarray(mask_b, bool)
    if mask_a.shape != mask_b.shape or len(spacing) != mask_a.ndim:
        raise ValueError(f"masks {mask_a.shape} and {mask_b.shape} with spacing {tuple(spacing)} do not match")
    if not (mask_a.any() and mask_b.any()):
        raise ValueError("surface distances need two non-empty masks")
    # Every surface voxel of both masks lies in the bounding box of their union; one voxel of zero padding keeps
    # the voxels on the array's edge on the surface, as ``border_value=0`` does on the whole array.
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in np.nonzero(mask_a | mask_b))
    surface_a = surface(np.pad(mask_a[box], 1))
    surface_b = surface(np.pad(mask_b[box], 1))
    sampling = tuple(float(s) for s in spacing)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=sampling)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=sampling)
    return to_b[surface_a], to_a[surface_b]


def hd95_assd(prediction: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> tuple[float, float]:
    """HD95 and ASSD of one binary prediction against its ground truth (module docstring; empty masks included).

    Args:
      prediction, label: boolean masks of one class, same shape.
      spacing: voxel size along each axis, in mm.

    Returns:
      ``(hd95, assd)`` in mm: ``(0, 0)`` when both masks are empty, ``(nan, nan)`` when exactly one is.
    """
    has_prediction, has_label = bool(np.any(prediction)), bool(np.any(label))
    if not (has_prediction or has_label):
        return 0.0, 0.0
    if not (has_prediction and has_label):
        return math.nan, math.nan
    d_pl, d_lp = surface_distances(prediction, label, spacing)
    hd95 = max(float(np.percentile(d_pl, PERCENTILE)), float(np.percentile(d_lp, PERCENTILE)))
    assd = float((d_pl.sum() + d_lp.sum()) / (d_pl.size + d_lp.size))
    return hd95, assd


def class_surface_metrics(
    prediction: np.ndarray, label: np.ndarray, spacing: Sequence[float], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """HD95 and ASSD of every foreground class of a label volume.

    Args:
      prediction, label: integer class indices of one volume on the same grid, e.g. ``(X, Y, Z)``.
      spacing: voxel size along each axis of the arrays, in mm.
      num_classes: K, background (class 0) included.

    Returns:
      ``(hd95, assd)``, each ``(K,)`` float64 in mm; index 0 (background) is NaN (not computed).
    """
    prediction, label = np.asarray(prediction), np.asarray(label)
    if prediction.shape != label.shape:
        raise ValueError(f"prediction {prediction.shape} and ground truth {label.shape} are on different grids")
    hd95 = np.full(num_classes, math.nan)
    assd = np.full(num_classes, math.nan)
    for k in range(1, num_classes):
        hd95[k], assd[k] = hd95_assd(prediction == k, label == k, spacing)
    return hd95, assd


class SurfaceEvaluator:
    """Collects HD95 and ASSD per test volume, on each volume's original grid (``on_volume`` of an evaluation).

    Each working-size prediction is brought back to the original grid as the NIfTI export does
    (:func:`~segmime_jax.data.export.prediction_to_original`) and compared with the ground truth read from the
    volume's label file (:func:`~segmime_jax.data.export.read_original_labels`) with the header's spacing. A
    dataset built in memory, whose label files do not exist, is compared with its working-size labels
    brought back the same way (said in :attr:`ground_truth`).
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset
        shape = (len(dataset.volumes), dataset.num_classes)
        self.hd95 = np.full(shape, math.nan)
        self.assd = np.full(shape, math.nan)
        self.seconds = 0.0
        self.sources: set[str] = set()

    def __call__(self, volume: Any, prediction: np.ndarray) -> None:
        """Measure one volume from its ``(S, H, W)`` working-size prediction (slices in order)."""
        from segmime_jax.data.export import prediction_to_original

        start = time.perf_counter()
        self.add(volume, prediction_to_original(volume, prediction))
        self.seconds += time.perf_counter() - start

    def add(self, volume: Any, predicted: np.ndarray) -> None:
        """Measure one volume from its prediction on the original grid (shape ``volume.original_shape``)."""
        from segmime_jax.data.export import prediction_to_original, read_original_labels

        label = read_original_labels(volume, self.dataset.num_classes)
        if label is None:
            label = prediction_to_original(volume, self.dataset.volume(volume.volume_id)[1])
            self.sources.add("working-size labels brought back to the original grid (no label file)")
        else:
            self.sources.add("label files")
        self.hd95[volume.volume_id], self.assd[volume.volume_id] = class_surface_metrics(
            predicted, label, volume.array_spacing, self.dataset.num_classes
        )

    @property
    def ground_truth(self) -> str:
        """What the predictions were compared with."""
        return " and ".join(sorted(self.sources)) or "none"

    def info(self) -> dict[str, Any]:
        """JSON-ready: the ground truth used, the seconds spent, the convention."""
        return {"ground_truth": self.ground_truth, "time_s": self.seconds, "convention": CONVENTION}


def surface_from_predictions(dataset: Any, folder: str | os.PathLike) -> SurfaceEvaluator | None:
    """HD95 and ASSD of the NIfTI predictions a run wrote (``<folder>/<volume>.nii.gz``, on the original grid),
    for a run finished before they were measured; ``None`` when a volume's file is missing."""
    from segmime_jax.data.export import read_prediction_nifti

    folder = pathlib.Path(folder)
    paths = [folder / f"{volume.name}.nii.gz" for volume in dataset.volumes]
    if not all(path.is_file() for path in paths):
        return None
    evaluator = SurfaceEvaluator(dataset)
    start = time.perf_counter()
    for volume, path in zip(dataset.volumes, paths, strict=True):
        evaluator.add(volume, read_prediction_nifti(volume, path))
    evaluator.seconds = time.perf_counter() - start
    return evaluator


def nan_summary(values: np.ndarray) -> tuple[float, float, int]:
    """``(mean, population std, number left out)`` of the finite values of an array (NaN: undefined)."""
    values = np.asarray(values, np.float64).ravel()
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, int(values.size)
    return float(finite.mean()), float(finite.std()), int(values.size - finite.size)
