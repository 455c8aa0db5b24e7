"""Evaluation over whole volumes: 3D DSC per volume and class, loss, and calibration statistics.

The jitted evaluation step (:func:`segmime_jax.train.step.make_eval_step`) turns each batch into small
per-slice counts; the host sums them per volume and over the whole set. Batches come from
:func:`segmime_jax.data.pipeline.eval_batches`: every slice once, volume after volume, packed into fixed-shape
batches (a batch may end one volume and start the next), so short volumes do not make batches of padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from segmime_jax.train import metrics as metrics_lib
from segmime_jax.train.state import TrainState


@dataclasses.dataclass
class Evaluation:
    """Metrics of one pass over a dataset.

    Attributes:
      volume_names: name of each volume, in dataset order.
      dsc: ``(V, K)`` 3D DSC per volume and class (background at index 0).
      loss: mean batch loss, each batch weighted by its number of real slices.
      calibration: summed calibration counts (ClECE and reliability diagrams).
    """

    volume_names: list[str]
    dsc: np.ndarray
    loss: float
    calibration: metrics_lib.CalibrationStats

    @property
    def mean_dsc(self) -> np.ndarray:
        """``(K,)`` mean over volumes."""
        return self.dsc.mean(0)

    @property
    def mean_dsc_fg(self) -> float:
        """Mean over volumes of the mean over foreground classes (the paper's "All")."""
        return float(metrics_lib.mean_foreground(self.dsc).mean())


class _VolumeAssembler:
    """Collects per-slice predictions and hands each volume over, slices in order, once it is complete."""

    def __init__(self, dataset: Any, on_volume: Callable[[Any, np.ndarray], None]):
        self.dataset = dataset
        self.on_volume = on_volume
        self.pending: dict[int, dict[int, np.ndarray]] = {}

    def add(self, index: np.ndarray, predictions: np.ndarray) -> None:
        host = getattr(self.dataset, "host", self.dataset)
        for position, prediction in zip(index, predictions, strict=True):
            volume_id = int(host.volume_ids[position])
            slices = self.pending.setdefault(volume_id, {})
            slices[int(position)] = prediction
            order = self.dataset.slices_of(volume_id)
            if len(slices) == len(order):
                del self.pending[volume_id]
                self.on_volume(self.dataset.volumes[volume_id], np.stack([slices[int(p)] for p in order]))


def evaluate(
    eval_step: Callable[..., dict[str, Any]],
    state: TrainState,
    dataset: Any,
    batch_size: int,
    loss_params: Any,
    *,
    sharding: jax.sharding.Sharding | None = None,
    on_volume: Callable[[Any, np.ndarray], None] | None = None,
    prefetch: int = 2,
) -> Evaluation:
    """Run ``eval_step`` over every slice of ``dataset`` (a :class:`~segmime_jax.data.dataset.SliceDataset` or
    its :class:`~segmime_jax.data.pipeline.DeviceDataset`) and reduce per volume.

    Args:
      eval_step: ``(state, batch, loss_params) -> stats``, from :func:`~segmime_jax.train.step.make_eval_step`.
      state: the train state to evaluate.
      dataset: the slices; volumes are read from ``dataset.volumes`` / ``slices_of``.
      batch_size: slices per (padded) batch.
      loss_params: the loss's :class:`~segmime_jax.losses.params.LossParams` (for the reported loss).
      sharding: where to put each batch (split on ``'data'``).
      on_volume: called as ``on_volume(volume_info, prediction)`` with the argmax labels ``(S, H, W)`` uint8
        of each volume, slices in order, as soon as the volume is complete (e.g. to write NIfTI files).

    Returns:
      The :class:`Evaluation`. Results do not depend on ``batch_size``, except the reported loss (a mean of
      batch losses) for losses that normalise per batch.
    """
    from segmime_jax.data.pipeline import eval_batches

    host = getattr(dataset, "host", dataset)
    num_volumes, num_classes = len(dataset.volumes), dataset.num_classes
    if num_volumes == 0:
        raise ValueError("cannot evaluate an empty dataset (no volumes)")
    counts = {k: np.zeros((num_volumes, num_classes), np.int64) for k in ("intersection", "prediction", "label")}
    calibration = metrics_lib.CalibrationStats.zeros(num_classes)
    loss_sum = loss_weight = 0.0
    assembler = _VolumeAssembler(dataset, on_volume) if on_volume is not None else None
    wanted = ("loss", "num_real", "dice", "calibration") + (("prediction",) if on_volume else ())

    def reduce(index: np.ndarray, out: dict[str, Any]) -> None:
        nonlocal loss_sum, loss_weight
        h = jax.device_get({k: out[k] for k in wanted})
        real = len(index)
        volume_ids = host.volume_ids[index]
        for k in counts:
            np.add.at(counts[k], volume_ids, np.asarray(h["dice"][k], np.int64)[:real])
        calibration.add(h["calibration"])
        loss_sum += float(h["loss"]) * float(h["num_real"])
        loss_weight += float(h["num_real"])
        if assembler is not None:
            assembler.add(index, np.asarray(h["prediction"])[:real])

    previous = None  # one batch in flight: the device computes the next while the host reduces this one
    for index, batch in eval_batches(dataset, batch_size, sharding=sharding, prefetch=prefetch):
        out = eval_step(state, batch, loss_params)
        if previous is not None:
            reduce(*previous)
        previous = (index, out)
    if previous is not None:
        reduce(*previous)
    dsc = metrics_lib.dice_from_counts(counts["intersection"], counts["prediction"], counts["label"])
    return Evaluation(
        volume_names=[v.name for v in dataset.volumes],
        dsc=dsc,
        loss=loss_sum / max(loss_weight, 1.0),
        calibration=calibration,
    )
