"""ACDC (Automated Cardiac Diagnosis Challenge) cine-MRI: end-diastole and end-systole volumes, 4 classes.

Layout (any of): ``<root>/training/patientNNN/``, ``<root>/database/training/patientNNN/`` (newer
downloads), or ``<root>`` itself holding the ``patientNNN/`` folders. Each patient folder holds
``Info.cfg`` (``Key: value`` lines: ED, ES, Group, Height, NbFrame, Weight) and, for the ED and ES frames
FF, ``patientNNN_frameFF.nii.gz`` and ``patientNNN_frameFF_gt.nii.gz`` (``.nii`` also accepted). The cine
``patientNNN_4d.nii.gz`` is not read. The unlabelled (or, in newer releases, labelled) ``testing/``
folder next to ``training/`` is read only with ``include_testing=True``; its patients join the test split.

Labels: 0 background, 1 right-ventricle cavity (RV), 2 myocardium (MYO), 3 left-ventricle cavity (LV).
Preprocessing (as the reference code): per-volume min-max to [0, 1], slices along the last array axis, each resized to
``size`` (bilinear images, nearest labels, stretched), stored as uint8 (see :mod:`segmime_jax.data.dataset`).
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from segmime_jax.data import cache as _cache
from segmime_jax.data.dataset import DatasetSplits, SliceDataset, VolumeInfo
from segmime_jax.data.errors import DataError
from segmime_jax.data.preprocess import check_same_geometry, check_size, slices_to_working_size, validate_pair
from segmime_jax.data.splits import ACDC_PATIENTS, ACDC_TEST, ACDC_TRAIN, ACDC_VALIDATION, seeded_split

ACDC_CLASSES: tuple[str, ...] = ("background", "RV", "MYO", "LV")
ACDC_GROUPS: tuple[str, ...] = ("NOR", "MINF", "DCM", "HCM", "RV")

_PATIENT_DIR = re.compile(r"^patient(\d{3})$")
_INFO_TYPES = {"ED": int, "ES": int, "Group": str, "Height": float, "NbFrame": int, "Weight": float}
_REQUIRED_INFO = ("ED", "ES")

Split = Literal["auto", "fixed", "seeded"]


def parse_info_cfg(path: str | os.PathLike) -> dict:
    """Parse an ACDC ``Info.cfg``: ``{"ED": int, "ES": int, "Group": str, "Height": float, "NbFrame": int,
    "Weight": float}`` (ED and ES required; the others are type-checked when present; unknown keys kept as
    strings). Raises :class:`DataError` naming the file when it is missing or malformed."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(path, "Info.cfg is missing")
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read Info.cfg ({err})") from err
    info: dict = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if ":" not in line:
            raise DataError(path, f"line {number} is not 'Key: value': {raw!r}")
        key, value = (part.strip() for part in line.split(":", 1))
        if not key or not value:
            raise DataError(path, f"line {number} has an empty key or value: {raw!r}")
        if key in info:
            raise DataError(path, f"key {key!r} appears twice")
        kind = _INFO_TYPES.get(key, str)
        try:
            info[key] = kind(value)
        except ValueError:
            raise DataError(path, f"{key} must be {kind.__name__}, got {value!r}") from None
    missing = [k for k in _REQUIRED_INFO if k not in info]
    if missing:
        raise DataError(path, f"missing key(s) {', '.join(missing)}")
    for key in ("ED", "ES"):
        if info[key] < 1 or ("NbFrame" in info and info[key] > info["NbFrame"]):
            raise DataError(path, f"{key} frame {info[key]} outside 1..{info.get('NbFrame', '?')}")
    if info["ED"] == info["ES"]:
        raise DataError(path, f"ED and ES are the same frame ({info['ED']})")
    return info


@dataclass(frozen=True)
class _Frame:
    name: str
    patient: str
    phase: str
    frame: int
    image_path: pathlib.Path
    label_path: pathlib.Path
    info: dict
    subset: str


def find_acdc_folders(root: str | os.PathLike, *, include_testing: bool = False) -> tuple[pathlib.Path, ...]:
    """The ``training`` folder (and ``testing`` when asked) of an ACDC download at ``root``."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(root, "ACDC folder does not exist")
    training = None
    for candidate in (root / "training", root / "database" / "training"):
        if candidate.is_dir():
            training = candidate
            break
    if training is None and _patient_dirs(root):
        training = root
    if training is None:
        raise DataError(
            root,
            "not an ACDC folder: expected training/patientNNN/, database/training/patientNNN/ or patientNNN/ folders",
        )
    if not _patient_dirs(training):
        raise DataError(training, "no patientNNN folders")
    if not include_testing:
        return (training,)
    testing = training.parent / "testing"
    if not testing.is_dir() or not _patient_dirs(testing):
        raise DataError(testing, "include_testing=True but there is no testing folder with patientNNN folders")
    return training, testing


def _patient_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _PATIENT_DIR.match(p.name))


def _frame_file(folder: pathlib.Path, stem: str) -> pathlib.Path:
    for suffix in (".nii.gz", ".nii"):
        candidate = folder / (stem + suffix)
        if candidate.is_file():
            return candidate
    return folder / (stem + ".nii.gz")


def _patient_frames(folder: pathlib.Path, subset: str) -> list[_Frame]:
    info = parse_info_cfg(folder / "Info.cfg")
    frames = []
    for phase in ("ED", "ES"):
        stem = f"{folder.name}_frame{info[phase]:02d}"
        image = _frame_file(folder, stem)
        label = _frame_file(folder, stem + "_gt")
        if not image.is_file():
            raise DataError(image, f"missing image of the {phase} frame (Info.cfg {phase}: {info[phase]})")
        if not label.is_file():
            raise DataError(label, f"missing ground truth of the {phase} frame (Info.cfg {phase}: {info[phase]})")
        frames.append(_Frame(f"{folder.name}_{phase}", folder.name, phase, info[phase], image, label, info, subset))
    return frames


def import_nibabel():
    """The nibabel module, or an ImportError that says how to install it."""
    try:
        import nibabel
    except ImportError as err:
        raise ImportError("reading or writing NIfTI (.nii/.nii.gz) needs nibabel: pip install nibabel") from err
    return nibabel


def read_nifti(
    path: str | os.PathLike, *, labels: bool = False
) -> tuple[np.ndarray, list[np.ndarray], tuple[float, ...]]:
    """``(array, affines, zooms)`` of a NIfTI file; :class:`DataError` naming the file if it cannot be read.

    Images come back as float32, labels with their stored dtype. A trailing singleton 4th axis is dropped.
    ``affines`` are every voxel-to-world affine the header states: nibabel's ``affine`` first (sform if set,
    else qform), then the sform and the qform when their codes are set (ACDC files are known to carry
    inconsistent ones).
    """
    nib = import_nibabel()
    try:
        img = nib.load(os.fspath(path))
        data = np.asanyarray(img.dataobj) if labels else img.get_fdata(dtype=np.float32)
        affines = [np.asarray(img.affine, dtype=np.float64)]
        for form, code in (img.header.get_sform(coded=True), img.header.get_qform(coded=True)):
            if form is not None and code:
                affines.append(np.asarray(form, np.float64))
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except Exception as err:
        raise DataError(path, f"cannot read NIfTI file ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    return data, affines, zooms


def _load_frames(frames: Sequence[_Frame], size: tuple[int, int]) -> SliceDataset:
    volumes = []
    for volume_id, frame in enumerate(frames):
        image, image_affines, zooms = read_nifti(frame.image_path)
        label, label_affines, _ = read_nifti(frame.label_path, labels=True)
        label = validate_pair(
            image, label, image_path=frame.image_path, label_path=frame.label_path, num_classes=len(ACDC_CLASSES)
        )
        check_same_geometry(image_affines, label_affines, image_path=frame.image_path, label_path=frame.label_path)
        slice_images, slice_labels = slices_to_working_size(image, label, slice_axis=2, size=size)
        extra = dict(frame.info, phase=frame.phase, frame=frame.frame, axes="xyz", slice_axis=2, subset=frame.subset)
        volumes.append(
            (
                slice_images,
                slice_labels,
                VolumeInfo(
                    volume_id=volume_id,
                    name=frame.name,
                    patient=frame.patient,
                    image_path=os.fspath(frame.image_path),
                    label_path=os.fspath(frame.label_path),
                    original_shape=image.shape,
                    affine=image_affines[0],
                    spacing=zooms,
                    num_slices=slice_images.shape[0],
                    extra=extra,
                ),
            )
        )
    return SliceDataset.from_volumes(volumes, ACDC_CLASSES)


def resolve_acdc_split(
    patients: Sequence[str], split: Split, seed: int, *, folder: str | os.PathLike = "."
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Train/val/test patient names: ``"fixed"`` (the author's tutorial lists), ``"seeded"`` (70/10/20) or
    ``"auto"``."""
    present = set(patients)
    if split == "auto":
        split = "fixed" if present == set(ACDC_PATIENTS) else "seeded"
    if split == "fixed":
        missing = [p for p in ACDC_PATIENTS if p not in present]
        if missing:
            shown = ", ".join(missing[:12]) + (f" and {len(missing) - 12} more" if len(missing) > 12 else "")
            raise DataError(
                folder,
                f"split='fixed' lists patients absent from this dataset: {shown} "
                f"(use split='seeded' for other patient sets)",
            )
        extra = sorted(present - set(ACDC_PATIENTS))
        if extra:
            raise DataError(
                folder,
                f"split='fixed' covers patient001-patient100 only, but the folder also holds "
                f"{', '.join(extra[:12])} (use split='seeded')",
            )
        return ACDC_TRAIN, ACDC_VALIDATION, ACDC_TEST
    if split == "seeded":
        try:
            return seeded_split(patients, seed)
        except ValueError as err:
            raise DataError(folder, str(err)) from None
    raise ValueError(f"split must be 'auto', 'fixed' or 'seeded', got {split!r}")


def load_acdc(
    root: str | os.PathLike,
    *,
    size: tuple[int, int] = (256, 256),
    split: Split = "auto",
    seed: int = 0,
    cache_dir: _cache.CacheDir = None,
    include_testing: bool = False,
) -> DatasetSplits:
    """Load ACDC ED/ES volumes as 2D slices, split by patient.

    Args:
        root: the download folder (see the module docstring for the accepted layouts).
        size: working ``(H, W)`` every slice is resized to.
        split: ``"fixed"``: the author's ACDC tutorial lists (70/10/20 of patient001-patient100, all must be present);
            ``"seeded"``: a shuffle of the present patients with ``seed``, cut 70/10/20 (at least one each);
            ``"auto"``: ``"fixed"`` when exactly patient001-patient100 are present, else ``"seeded"``.
        seed: seed of the ``"seeded"`` split.
        cache_dir: preprocessing cache folder (``None``: the default, see :mod:`segmime_jax.data.cache`;
            ``False``: no cache).
        include_testing: also read ``testing/`` (next to ``training/``); those patients, which need ground
            truth files, are added to the test split.

    Raises:
        DataError: naming the file and the problem, for any bad input; nothing is cached then.
    """
    size = check_size(size)
    folders = find_acdc_folders(root, include_testing=include_testing)
    training = folders[0]
    frames = [f for folder in _patient_dirs(training) for f in _patient_frames(folder, "training")]
    patients = list(dict.fromkeys(f.patient for f in frames))
    train, val, test = resolve_acdc_split(patients, split, seed, folder=training)
    testing_patients: list[str] = []
    if include_testing:
        testing_frames = [f for folder in _patient_dirs(folders[1]) for f in _patient_frames(folder, "testing")]
        testing_patients = list(dict.fromkeys(f.patient for f in testing_frames))
        clash = sorted(set(testing_patients) & set(patients))
        if clash:
            raise DataError(folders[1], f"patients in both training and testing: {', '.join(clash)}")
        frames += testing_frames
    sources = [p for f in frames for p in (f.image_path, f.label_path)]
    sources += sorted({f.image_path.parent / "Info.cfg" for f in frames})
    description = _cache.cache_key("acdc", root, {"size": list(size), "include_testing": include_testing}, sources)
    full = _cache.cached(cache_dir, description, lambda: _load_frames(frames, size))
    return DatasetSplits(
        train=full.select_patients(train),
        val=full.select_patients(val),
        test=full.select_patients(tuple(test) + tuple(testing_patients)),
        name="acdc",
    )
