"""The original grid of a volume: predicted label volumes brought back to it and written there, viewable as an
overlay, and the ground truth read there (for metrics in millimetres).

Predictions are made on slices at the working size; :func:`prediction_to_original` resizes each slice back
to the original in-plane size (nearest neighbour: exact label values) and restacks the slices in the original
array layout; :func:`write_prediction_nifti` writes that as a uint8 NIfTI with the input's affine and voxel
spacing, which :func:`read_prediction_nifti` reads back; :func:`read_original_labels` reads the label file in
the same layout.

Both datasets are exported as NIfTI (one decision, one reader: nibabel, no SimpleITK needed):
- ACDC: the array and affine are the input file's own, so the file overlays ``patientNNN_frameFF.nii.gz``.
- PROMISE12: the ``(z, y, x)`` MetaImage array is transposed to ``(x, y, z)`` and the MetaImage
  origin/spacing/direction (ITK, LPS+) are converted to a RAS+ affine, exactly as SimpleITK does when it
  writes NIfTI: ITK-SNAP, 3D Slicer or SimpleITK (``ReadImage`` then ``GetOrigin``/``GetDirection``) place it
  on top of ``CaseNN.mhd``.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
from collections.abc import Callable, Iterator

import numpy as np

from segmime_jax.atomic_files import atomic_directory, atomic_output
from segmime_jax.data.dataset import VolumeInfo
from segmime_jax.data.errors import DataError
from segmime_jax.data.preprocess import resize_nearest, validate_labels


def prediction_to_original(volume: VolumeInfo, labels: np.ndarray) -> np.ndarray:
    """Resize ``(S, H, W)`` working-size labels back to ``volume.original_shape`` (nearest), as uint8."""
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.shape[0] != volume.num_slices:
        raise ValueError(f"labels for {volume.name} must be ({volume.num_slices}, H, W), got {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating) or labels.min(initial=0) < 0 or labels.max(initial=0) > 255:
        raise ValueError(f"labels for {volume.name} must be integer class indices in 0..255, got {labels.dtype}")
    resized = resize_nearest(labels.astype(np.uint8), volume.in_plane_shape)  # (S, h, w)
    return np.ascontiguousarray(np.moveaxis(resized, 0, volume.slice_axis))


def read_original_labels(volume: VolumeInfo, num_classes: int) -> np.ndarray | None:
    """The ground truth of ``volume`` as read from its label file: uint8, shape ``volume.original_shape`` (the
    layout :func:`prediction_to_original` returns), or ``None`` when the file does not exist (a dataset built in
    memory). :class:`DataError` naming the file when it exists but cannot be read or does not fit the volume."""
    path = pathlib.Path(volume.label_path)
    if not path.is_file():
        return None
    if volume.extra.get("axes", "xyz") == "zyx":
        from segmime_jax.data.promise12 import read_metaimage

        label = read_metaimage(path, labels=True)[0]
    else:
        from segmime_jax.data.acdc import read_nifti

        label = read_nifti(path, labels=True)[0]
    if label.shape != volume.original_shape:
        raise DataError(path, f"label shape {label.shape} is not the volume's {volume.original_shape}")
    return validate_labels(label, label_path=path, num_classes=num_classes)


def write_prediction_nifti(volume: VolumeInfo, labels: np.ndarray, path: str | os.PathLike) -> pathlib.Path:
    """Write one predicted volume as a uint8 NIfTI in the input's geometry; return the file written.

    Args:
        volume: the record of the input volume (from a :class:`~segmime_jax.data.SliceDataset`).
        labels: ``(S, H, W)`` integer class indices at the working size, slices in order.
        path: a ``.nii.gz`` / ``.nii`` file name, or an existing folder (the file is then
            ``<folder>/<volume.name>.nii.gz``). Written to a temporary file, then renamed.
    """
    from segmime_jax.data.acdc import import_nibabel

    nib = import_nibabel()
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / f"{volume.name}.nii.gz"
    if not (path.name.endswith(".nii.gz") or path.name.endswith(".nii")):
        raise ValueError(f"{path}: the prediction file name must end in .nii.gz or .nii")
    data = prediction_to_original(volume, labels)
    if volume.extra.get("axes", "xyz") == "zyx":
        data = np.ascontiguousarray(data.transpose(2, 1, 0))
    image = nib.Nifti1Image(data, volume.affine)
    image.set_data_dtype(np.uint8)
    image.set_qform(volume.affine, code=1)
    image.set_sform(volume.affine, code=1)
    image.header.set_zooms(volume.spacing[:3])
    image.header.set_xyzt_units("mm", "sec")
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_output(path, suffix=suffix) as tmp:
        nib.save(image, tmp)
    return path


def read_prediction_nifti(volume: VolumeInfo, path: str | os.PathLike) -> np.ndarray:
    """A prediction written by :func:`write_prediction_nifti`, back in the layout of ``volume.original_shape``
    (uint8); :class:`DataError` naming the file when it cannot be read or does not fit the volume."""
    from segmime_jax.data.acdc import read_nifti

    data = np.asarray(read_nifti(path, labels=True)[0])
    if volume.extra.get("axes", "xyz") == "zyx":
        data = data.transpose(2, 1, 0)
    if data.shape != volume.original_shape:
        raise DataError(path, f"prediction shape {data.shape} is not the volume's {volume.original_shape}")
    return np.ascontiguousarray(data, dtype=np.uint8)


@contextlib.contextmanager
def prediction_folder(path: str | os.PathLike) -> Iterator[Callable[[VolumeInfo, np.ndarray], pathlib.Path]]:
    """Yield ``write(volume, labels)``, which writes ``<volume.name>.nii.gz`` (:func:`write_prediction_nifti`)
    into a staging folder; when the block ends without error the folder replaces ``path`` as a whole (an
    earlier set of predictions there included), else it is deleted."""
    with atomic_directory(path, exists="replace") as staging:
        yield lambda volume, labels: write_prediction_nifti(volume, labels, staging / f"{volume.name}.nii.gz")
