"""Data: ACDC and PROMISE12 loaders, synthetic look-alikes, preprocessing cache, input pipeline, augmentation.

Public names (see each module for details):

- :class:`DataError` (bad input, names the file);
- :class:`VolumeInfo`, :class:`SliceDataset`, :class:`DatasetSplits` (in-memory slices, uint8);
- :func:`load_acdc`, :func:`load_promise12` (preprocessed, cached, split by patient);
- :func:`write_synthetic_acdc`, :func:`write_synthetic_promise12` (and ``python -m segmime_jax.data.synthetic``);
- :func:`train_batches`, :func:`eval_batches`, :func:`num_batches`,
  :func:`to_device`, :class:`DeviceDataset`, :data:`Batch` (the input pipeline);
- :func:`augment_batch` (PROMISE12 augmentation, on device);
- :func:`write_prediction_nifti` (predictions back in the input geometry).

SimpleITK (PROMISE12 only) is imported when a MetaImage is read or written, never at import time. The
synthetic writers (the package :mod:`segmime_jax.data.synthetic`) are imported on first use: loading data does
not need them.
"""

from segmime_jax.data.acdc import ACDC_CLASSES, load_acdc, parse_info_cfg
from segmime_jax.data.augment import augment_batch, transform_batch
from segmime_jax.data.cache import default_cache_dir
from segmime_jax.data.dataset import DatasetSplits, SliceDataset, VolumeInfo, fingerprint_differences
from segmime_jax.data.errors import DataError
from segmime_jax.data.export import write_prediction_nifti
from segmime_jax.data.pipeline import (
    Batch,
    DeviceDataset,
    eval_batches,
    num_batches,
    to_device,
    train_batches,
)
from segmime_jax.data.promise12 import PROMISE12_CLASSES, load_promise12
from segmime_jax.data.splits import ACDC_TEST, ACDC_TRAIN, ACDC_VALIDATION

__all__ = [
    "ACDC_CLASSES",
    "ACDC_TEST",
    "ACDC_TRAIN",
    "ACDC_VALIDATION",
    "PROMISE12_CLASSES",
    "Batch",
    "DataError",
    "DatasetSplits",
    "DeviceDataset",
    "SliceDataset",
    "VolumeInfo",
    "augment_batch",
    "default_cache_dir",
    "eval_batches",
    "fingerprint_differences",
    "load_acdc",
    "load_promise12",
    "num_batches",
    "parse_info_cfg",
    "to_device",
    "train_batches",
    "transform_batch",
    "write_prediction_nifti",
    "write_synthetic_acdc",
    "write_synthetic_promise12",
]


def __getattr__(name: str):
    if name in ("write_synthetic_acdc", "write_synthetic_promise12"):
        from segmime_jax.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
