"""In-memory datasets of 2D slices cut from 3D volumes, and their per-volume records.

A :class:`SliceDataset` holds every slice of a set of volumes at the working size (e.g. 256×256):
images as ``uint8`` (the per-volume min-max normalised intensity in [0, 1], times 255, rounded) and
labels as ``uint8`` class indices. Each slice remembers its volume (``volume_ids``) and its position
along the volume's slice axis (``slice_indices``), so predictions reassemble into 3D volumes
(:meth:`SliceDataset.slices_of`, :meth:`SliceDataset.volume`).

Invariant: inside one dataset, ``volumes[v].volume_id == v``; volume ids are local to the dataset (a split
renumbers its volumes from 0), names (``"patient003_ED"``, ``"Case03"``) are global.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class VolumeInfo:
    """Where one 3D volume came from and how to put predictions back into its geometry.

    Attributes:
        volume_id: index of this volume in its dataset's ``volumes`` tuple.
        name: unique name, e.g. ``"patient003_ED"`` (ACDC) or ``"Case03"`` (PROMISE12).
        patient: the patient (ACDC) or case (PROMISE12) it belongs to; splits never separate a patient.
        image_path, label_path: source files.
        original_shape: shape of the array as read from disk: ``(X, Y, Z)`` for NIfTI (nibabel, slices
            along the last axis), ``(z, y, x)`` for MetaImage (SimpleITK, slices along the first axis).
        affine: 4×4 voxel-to-world matrix in the NIfTI (RAS+) convention for voxel indices in ``(x, y, z)``
            order: the file's own affine for NIfTI; for MetaImage, origin/spacing/direction converted from
            ITK's LPS (what SimpleITK does when it writes a NIfTI).
        spacing: voxel size in mm along ``(x, y, z)`` (nibabel zooms / SimpleITK spacing order).
        num_slices: number of 2D slices (size of the slice axis).
        extra: dataset-specific metadata: ``"axes"`` (``"xyz"`` or ``"zyx"``, the order of the array axes),
            ``"slice_axis"`` (2 or 0); for ACDC the parsed ``Info.cfg`` keys plus ``"phase"`` (``"ED"``/``"ES"``)
            and ``"frame"``.
    """

    volume_id: int
    name: str
    patient: str
    image_path: str
    label_path: str
    original_shape: tuple[int, ...]
    affine: np.ndarray = field(compare=False, repr=False)
    spacing: tuple[float, ...]
    num_slices: int
    extra: Mapping = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine of {self.name!r} must be 4x4, got {affine.shape}")
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "original_shape", tuple(int(s) for s in self.original_shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "extra", types.MappingProxyType(dict(self.extra)))

    @property
    def slice_axis(self) -> int:
        """Axis of ``original_shape`` along which the volume was sliced."""
        return int(self.extra.get("slice_axis", len(self.original_shape) - 1))

    @property
    def array_spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along the axes of ``original_shape`` (``spacing`` reversed for ``(z, y, x)`` arrays)."""
        spacing = self.spacing[: len(self.original_shape)]
        return tuple(reversed(spacing)) if self.extra.get("axes", "xyz") == "zyx" else spacing

    @property
    def in_plane_shape(self) -> tuple[int, int]:
        """Shape of one slice before resizing (the original shape without the slice axis)."""
        dims = [s for axis, s in enumerate(self.original_shape) if axis != self.slice_axis]
        return int(dims[0]), int(dims[1])

    def to_json(self) -> dict:
        """JSON-ready dict (the inverse of :meth:`from_json`)."""
        return {
            "volume_id": self.volume_id,
            "name": self.name,
            "patient": self.patient,
            "image_path": self.image_path,
            "label_path": self.label_path,
            "original_shape": list(self.original_shape),
            "affine": self.affine.tolist(),
            "spacing": list(self.spacing),
            "num_slices": self.num_slices,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping) -> VolumeInfo:
        return cls(
            volume_id=int(data["volume_id"]),
            name=str(data["name"]),
            patient=str(data["patient"]),
            image_path=str(data["image_path"]),
            label_path=str(data["label_path"]),
            original_shape=tuple(data["original_shape"]),
            affine=np.asarray(data["affine"], dtype=np.float64),
            spacing=tuple(data["spacing"]),
            num_slices=int(data["num_slices"]),
            extra=dict(data["extra"]),
        )


@dataclass(frozen=True, eq=False)
class SliceDataset:
    """All 2D slices of some volumes, at the working size.

    Attributes:
        images: ``(N, H, W)`` uint8: per-volume min-max normalised intensities in [0, 1], resized (bilinear),
            times 255 and rounded. The input pipeline divides by 255 to get float32 in [0, 1].
        labels: ``(N, H, W)`` uint8 class indices (resized with nearest neighbour: exact label values).
        volume_ids: ``(N,)`` int32, index into ``volumes``.
        slice_indices: ``(N,)`` int32, position of the slice along its volume's slice axis.
        volumes: one :class:`VolumeInfo` per volume, ``volumes[v].volume_id == v``.
        class_names: ``class_names[k]`` names label value k; ``"background"`` first.
    """

    images: np.ndarray
    labels: np.ndarray
    volume_ids: np.ndarray
    slice_indices: np.ndarray
    volumes: tuple[VolumeInfo, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        labels = np.asarray(self.labels)
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise TypeError(f"images and labels must be uint8, got {images.dtype} and {labels.dtype}")
        if images.ndim != 3 or images.shape != labels.shape:
            raise ValueError(f"images {images.shape} and labels {labels.shape} must both be (N, H, W)")
        volume_ids = np.asarray(self.volume_ids, dtype=np.int32)
        slice_indices = np.asarray(self.slice_indices, dtype=np.int32)
        n = images.shape[0]
        if volume_ids.shape != (n,) or slice_indices.shape != (n,):
            raise ValueError(f"volume_ids {volume_ids.shape} and slice_indices {slice_indices.shape} must be ({n},)")
        volumes = tuple(self.volumes)
        for v, info in enumerate(volumes):
            if info.volume_id != v:
                raise ValueError(f"volumes[{v}] has volume_id {info.volume_id}; expected {v}")
        if n and (volume_ids.min() < 0 or volume_ids.max() >= len(volumes)):
            raise ValueError("volume_ids must index into volumes")
        for array in (images, labels, volume_ids, slice_indices):
            array.setflags(write=False)
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "volume_ids", volume_ids)
        object.__setattr__(self, "slice_indices", slice_indices)
        object.__setattr__(self, "volumes", volumes)
        object.__setattr__(self, "class_names", tuple(self.class_names))
        # Slice positions of each volume, in slice order (stable for equal indices).
        order = np.lexsort((slice_indices, volume_ids))
        bounds = np.searchsorted(volume_ids[order], np.arange(len(volumes) + 1))
        object.__setattr__(self, "_slices", tuple(order[bounds[v] : bounds[v + 1]] for v in range(len(volumes))))

    @classmethod
    def from_volumes(
        cls, volumes: Sequence[tuple[np.ndarray, np.ndarray, VolumeInfo]], class_names: Sequence[str]
    ) -> SliceDataset:
        """The dataset of ``(images, labels, info)`` per volume: ``(S, H, W)`` uint8 slices in slice order,
        ``info.volume_id`` the volume's position in ``volumes`` and ``info.num_slices == S`` (what the loaders
        build, one volume at a time)."""
        if not volumes:
            raise ValueError("no volumes to make a dataset of")
        for images, labels, info in volumes:
            if info.num_slices != images.shape[0] or images.shape != labels.shape:
                raise ValueError(
                    f"volume {info.name!r}: {info.num_slices} slices in its info, images "
                    f"{images.shape} and labels {labels.shape}"
                )
        return cls(
            images=np.concatenate([images for images, _, _ in volumes]),
            labels=np.concatenate([labels for _, labels, _ in volumes]),
            volume_ids=np.concatenate([np.full(info.num_slices, info.volume_id, np.int32) for *_, info in volumes]),
            slice_indices=np.concatenate([np.arange(info.num_slices, dtype=np.int32) for *_, info in volumes]),
            volumes=tuple(info for *_, info in volumes),
            class_names=class_names,
        )

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        """Working size ``(H, W)`` of every slice."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def slices_of(self, volume_id: int) -> np.ndarray:
        """Indices (into ``images``) of the slices of one volume, in slice order."""
        return self._slices[volume_id]  # type: ignore[attr-defined]

    def volume(self, volume_id: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``(S, H, W)`` uint8 images and labels of one volume, in slice order."""
        idx = self.slices_of(volume_id)
        return self.images[idx], self.labels[idx]

    def fingerprint(self) -> str:
        """SHA-256 (hex, first 16 digits) of the slices, labels, their volume/slice positions, the volume names and
        the class names: two datasets with the same fingerprint hold the same training data. Computed once
        (the arrays are read-only)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            digest = hashlib.sha256()
            header = {
                "names": [info.name for info in self.volumes],
                "classes": list(self.class_names),
                "shape": list(self.images.shape),
            }
            digest.update(json.dumps(header, sort_keys=True).encode())
            for array in (self.images, self.labels, self.volume_ids, self.slice_indices):
                digest.update(np.ascontiguousarray(array).data)
            cached = digest.hexdigest()[:16]
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    def volume_by_name(self, name: str) -> VolumeInfo:
        for info in self.volumes:
            if info.name == name:
                return info
        raise KeyError(name)

    @property
    def patients(self) -> tuple[str, ...]:
        """Patients (cases) in this dataset, in volume order, without repeats."""
        return tuple(dict.fromkeys(info.patient for info in self.volumes))

    def select_volumes(self, volume_ids: Sequence[int]) -> SliceDataset:
        """A new dataset with the given volumes (in that order), renumbered from 0."""
        volume_ids = [int(v) for v in volume_ids]
        pieces = [self.slices_of(v) for v in volume_ids]
        idx = np.concatenate(pieces) if pieces else np.zeros((0,), dtype=np.int64)
        new_ids = (
            np.concatenate([np.full(len(p), i, dtype=np.int32) for i, p in enumerate(pieces)])
            if pieces
            else np.zeros((0,), dtype=np.int32)
        )
        volumes = tuple(dataclasses.replace(self.volumes[v], volume_id=i) for i, v in enumerate(volume_ids))
        return SliceDataset(
            images=self.images[idx],
            labels=self.labels[idx],
            volume_ids=new_ids,
            slice_indices=self.slice_indices[idx],
            volumes=volumes,
            class_names=self.class_names,
        )

    def select_patients(self, patients: Sequence[str]) -> SliceDataset:
        """A new dataset with every volume of the given patients (patients in the given order)."""
        by_patient: dict[str, list[int]] = {}
        for info in self.volumes:
            by_patient.setdefault(info.patient, []).append(info.volume_id)
        missing = [p for p in patients if p not in by_patient]
        if missing:
            raise KeyError(f"patients not in the dataset: {', '.join(missing)}")
        return self.select_volumes([v for p in patients for v in by_patient[p]])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """Training, validation and test slices of one dataset; no patient is in two splits."""

    train: SliceDataset
    val: SliceDataset
    test: SliceDataset
    name: str

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    def fingerprint(self) -> dict[str, str]:
        """``{"name", "image_size", "train", "val", "test"}``: which data a run saw (each split's
        :meth:`SliceDataset.fingerprint`). Runs store it, so that resuming or reusing one on other data is refused
        (:func:`fingerprint_differences`)."""
        size = "x".join(str(n) for n in self.train.image_size)
        return {
            "name": str(self.name),
            "image_size": size,
            **{split: getattr(self, split).fingerprint() for split in ("train", "val", "test")},
        }


def fingerprint_differences(saved: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """The entries of two :meth:`DatasetSplits.fingerprint` that differ, described (none when ``saved`` is
    missing, as in runs made before fingerprints)."""
    if not saved:
        return []
    changed = []
    for key in ("name", "image_size", "train", "val", "test"):
        if key in saved and saved.get(key) != current.get(key):
            changed.append(
                f"{key.replace('_', ' ')} {saved[key]} -> {current.get(key)}" if key in ("name", "image_size") else key
            )
    return changed
