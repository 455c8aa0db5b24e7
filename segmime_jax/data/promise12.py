"""PROMISE12 prostate MRI: ``CaseNN.mhd`` (+ ``.raw``) images and ``CaseNN_segmentation.mhd`` masks (0/1).

The cases are searched for anywhere under ``root`` (the challenge shipped them in several
``TrainingData_Part*`` folders), skipping hidden folders; a case without its segmentation is an error.
MetaImage files are read with SimpleITK (the optional ``promise12`` extra, imported only when files are
actually read: a cache hit does not need it). Arrays are ``(z, y, x)``; slices are cut along z.
Preprocessing as ACDC: per-volume min-max to [0, 1], each slice resized to ``size`` (bilinear images,
nearest labels), uint8. Split: seeded 70/10/20 by case (35/5/10 of the 50 training cases).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from segmime_jax.data import cache as _cache
from segmime_jax.data.dataset import DatasetSplits, SliceDataset, VolumeInfo
from segmime_jax.data.errors import DataError
from segmime_jax.data.preprocess import check_same_geometry, check_size, slices_to_working_size, validate_pair
from segmime_jax.data.splits import seeded_split

PROMISE12_CLASSES: tuple[str, ...] = ("background", "prostate")

_CASE = re.compile(r"^Case(\d+)\.mhd$")
#: NIfTI world coordinates are RAS+, ITK's are LPS+: flip x and y.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def import_simpleitk():
    """The SimpleITK module, or an ImportError that says how to install it."""
    try:
        import SimpleITK
    except ImportError as err:
        raise ImportError(
            "reading PROMISE12 (.mhd/.raw MetaImage) needs SimpleITK, an optional dependency: "
            "pip install 'segmime_jax[promise12]' (or pip install SimpleITK)"
        ) from err
    return SimpleITK


def affine_from_itk(origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """4×4 NIfTI (RAS+) affine of an ITK image, for voxel indices in ``(x, y, z)`` order."""
    direction = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(np.asarray(spacing, dtype=np.float64))
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(origin, dtype=np.float64)
    return affine


def _metaimage_data_file(header: pathlib.Path) -> pathlib.Path | None:
    """The ``ElementDataFile`` a ``.mhd`` header points to (``None`` for LOCAL data or file lists)."""
    try:
        text = header.read_text(errors="replace")
    except OSError as err:
        raise DataError(header, f"cannot read MetaImage header ({err})") from err
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ElementDataFile":
            value = value.strip()
            if value.upper() in ("LOCAL", "LIST") or "%" in value:
                return None
            return header.parent / value
    raise DataError(header, "not a MetaImage header (no ElementDataFile line)")


def find_promise12_cases(root: str | os.PathLike) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
    """``(name, image.mhd, segmentation.mhd)`` of every case under ``root``, sorted by name.

    Sub-folders whose name starts with ``test`` (the download's ``TestData/``: cases without segmentations,
    named Case00... like the training ones) are skipped, so ``root`` may be the whole download folder.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(root, "PROMISE12 folder does not exist")
    cases: dict[str, tuple[str, pathlib.Path, pathlib.Path]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not d.lower().startswith("test"))
        for filename in sorted(filenames):
            if not _CASE.match(filename):
                continue
            image = pathlib.Path(dirpath) / filename
            name = image.stem
            if name in cases:
                raise DataError(image, f"{name} appears twice (also {cases[name][1]})")
            segmentation = image.with_name(f"{name}_segmentation.mhd")
            if not segmentation.is_file():
                raise DataError(segmentation, f"missing segmentation of {name}")
            cases[name] = (name, image, segmentation)
    if not cases:
        raise DataError(root, "no PROMISE12 cases: expected CaseNN.mhd with CaseNN_segmentation.mhd")
    return [cases[name] for name in sorted(cases)]


def read_metaimage(path: str | os.PathLike, *, labels: bool = False):
    """``(array (z, y, x), image)`` of a 3D scalar MetaImage; :class:`DataError` naming the file on failure.

    Images come back as float32, labels with their stored dtype; ``image`` is the SimpleITK image (geometry).
    """
    sitk = import_simpleitk()
    data_file = _metaimage_data_file(pathlib.Path(path))
    if data_file is not None and not data_file.is_file():
        raise DataError(data_file, f"missing data file referenced by {os.fspath(path)}")
    try:
        image = sitk.ReadImage(os.fspath(path))
        array = sitk.GetArrayFromImage(image)
    except Exception as err:
        raise DataError(path, f"cannot read MetaImage ({type(err).__name__}: {str(err).strip()[-300:]})") from err
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            path,
            f"expected a 3D scalar image, got {image.GetDimension()}D with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s)",
        )
    return (array if labels else array.astype(np.float32)), image


def _load_cases(cases: Sequence[tuple[str, pathlib.Path, pathlib.Path]], size: tuple[int, int]) -> SliceDataset:
    volumes = []
    for volume_id, (name, image_path, label_path) in enumerate(cases):
        image, itk_image = read_metaimage(image_path)
        label, itk_label = read_metaimage(label_path, labels=True)
        label = validate_pair(
            image, label, image_path=image_path, label_path=label_path, num_classes=len(PROMISE12_CLASSES)
        )
        origin, spacing, direction = itk_image.GetOrigin(), itk_image.GetSpacing(), itk_image.GetDirection()
        affine = affine_from_itk(origin, spacing, direction)
        label_affine = affine_from_itk(itk_label.GetOrigin(), itk_label.GetSpacing(), itk_label.GetDirection())
        check_same_geometry(affine, label_affine, image_path=image_path, label_path=label_path)
        slice_images, slice_labels = slices_to_working_size(image, label, slice_axis=0, size=size)
        extra = {"axes": "zyx", "slice_axis": 0, "origin": list(origin), "direction": list(direction)}
        volumes.append(
            (
                slice_images,
                slice_labels,
                VolumeInfo(
                    volume_id=volume_id,
                    name=name,
                    patient=name,
                    image_path=os.fspath(image_path),
                    label_path=os.fspath(label_path),
                    original_shape=image.shape,
                    affine=affine,
                    spacing=spacing,
                    num_slices=slice_images.shape[0],
                    extra=extra,
                ),
            )
        )
    return SliceDataset.from_volumes(volumes, PROMISE12_CLASSES)


def load_promise12(
    root: str | os.PathLike,
    *,
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    cache_dir: _cache.CacheDir = None,
) -> DatasetSplits:
    """Load the PROMISE12 training cases as 2D slices with a seeded 70/10/20 case split (35/5/10 for 50).

    ``cache_dir`` as in :func:`segmime_jax.data.load_acdc`. Raises :class:`DataError` on bad input and
    ImportError (with the install command) when SimpleITK is needed but missing.
    """
    size = check_size(size)
    cases = find_promise12_cases(root)
    try:
        train, val, test = seeded_split([name for name, _, _ in cases], seed)
    except ValueError as err:
        raise DataError(root, str(err)) from None
    sources: list[pathlib.Path] = []
    for _, image_path, label_path in cases:
        for header in (image_path, label_path):
            sources.append(header)
            data_file = _metaimage_data_file(header)
            if data_file is not None:
                if not data_file.is_file():
                    raise DataError(data_file, f"missing data file referenced by {header}")
                sources.append(data_file)
    description = _cache.cache_key("promise12", root, {"size": list(size)}, sources)
    full = _cache.cached(cache_dir, description, lambda: _load_cases(cases, size))
    return DatasetSplits(
        train=full.select_patients(train),
        val=full.select_patients(val),
        test=full.select_patients(test),
        name="promise12",
    )
