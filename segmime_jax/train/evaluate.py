"""Evaluation over whole volumes: 3D DSC per volume and class, loss, and calibration statistics.

The jitted evaluation step (:func:`segmime_jax.train.step.make_eval_step`) turns each batch into small
per-slice counts; here the host sums them per volume (slices of a volume come in order, in padded
fixed-shape batches, from :func:`segmime_jax.data.pipeline.volume_batches`) and over the whole set.
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


def evaluate(
    eval_step: Callable[[TrainState, dict], dict[str, Any]],
    state: TrainState,
    dataset: Any,
    batch_size: int,
    *,
    sharding: jax.sharding.Sharding | None = None,
    on_volume: Callable[[Any, np.ndarray], None] | None = None,
    prefetch: int = 2,
) -> Evaluation:
    """Run ``eval_step`` over every volume of ``dataset`` (a :class:`~segmime_jax.data.dataset.SliceDataset`).

    Args:
      eval_step: from :func:`~segmime_jax.train.step.make_eval_step`.
      state: the train state to evaluate.
      dataset: the slices, grouped into volumes by :func:`~segmime_jax.data.pipeline.volume_batches`.
      batch_size: slices per (padded) batch.
      sharding: where to put each batch (split on ``'data'``).
      on_volume: called as ``on_volume(volume_info, prediction)`` with the argmax labels ``(S, H, W)`` uint8
        of each volume, slices in order (e.g. to write NIfTI files).
    """
    from segmime_jax.data.pipeline import volume_batches

    num_classes = dataset.num_classes
    calibration = metrics_lib.CalibrationStats.zeros(num_classes)
    names: list[str] = []
    dsc: list[np.ndarray] = []
    loss_sum, loss_weight = 0.0, 0.0
    for volume, batches in volume_batches(dataset, batch_size, sharding=sharding, prefetch=prefetch):
        outputs = [eval_step(state, batch) for batch in batches]
        wanted = ("loss", "num_real", "dice", "calibration") + (("prediction",) if on_volume else ())
        host = jax.device_get([{k: out[k] for k in wanted} for out in outputs])
        counts = {k: sum(np.asarray(h["dice"][k], np.int64).sum(0) for h in host)
                  for k in ("intersection", "prediction", "label")}
        dsc.append(metrics_lib.dice_from_counts(counts["intersection"], counts["prediction"], counts["label"]))
        names.append(volume.name)
        for h in host:
            calibration.add(h["calibration"])
            loss_sum += float(h["loss"]) * float(h["num_real"])
            loss_weight += float(h["num_real"])
        if on_volume is not None:
            masks = jax.device_get([batch["mask"] for batch in batches])
            prediction = np.concatenate([np.asarray(h["prediction"])[np.asarray(m, bool)]
                                         for h, m in zip(host, masks, strict=True)])
            on_volume(volume, prediction)
    if not names:
        raise ValueError("cannot evaluate an empty dataset (no volumes)")
    return Evaluation(volume_names=names, dsc=np.stack(dsc), loss=loss_sum / max(loss_weight, 1.0),
                      calibration=calibration)
