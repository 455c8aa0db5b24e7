"""Evaluation over whole volumes: 3D DSC per volume and class, loss, and calibration statistics.

The jitted evaluation step of a stack of runs (:func:`segmime_jax.train.step.make_runs_eval_step`) turns each
batch into small per-slice counts for every run; the host sums them per run, per volume and over the whole set.
Batches come from :func:`segmime_jax.data.pipeline.eval_batches`: every slice once, volume after volume, packed
into fixed-shape batches (a batch may end one volume and start the next), so short volumes do not make batches of
padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
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


class _Sums:
    """One run's running sums over the batches of an evaluation."""

    def __init__(self, dataset: Any, on_volume: Callable[[Any, np.ndarray], None] | None):
        self.dataset = dataset
        self.host = getattr(dataset, "host", dataset)
        shape = (len(dataset.volumes), dataset.num_classes)
        self.counts = {k: np.zeros(shape, np.int64) for k in ("intersection", "prediction", "label")}
        self.calibration = metrics_lib.CalibrationStats.zeros(dataset.num_classes)
        self.loss_sum = self.loss_weight = 0.0
        self.assembler = _VolumeAssembler(dataset, on_volume) if on_volume is not None else None

    def add(self, index: np.ndarray, h: dict[str, Any]) -> None:
        """Add one batch's host outputs ``h`` (the real slices are the first ``len(index)``)."""
        real = len(index)
        volume_ids = self.host.volume_ids[index]
        for k in self.counts:
            np.add.at(self.counts[k], volume_ids, np.asarray(h["dice"][k], np.int64)[:real])
        self.calibration.add(h["calibration"])
        self.loss_sum += float(h["loss"]) * float(h["num_real"])
        self.loss_weight += float(h["num_real"])
        if self.assembler is not None:
            self.assembler.add(index, np.asarray(h["prediction"])[:real])

    def result(self) -> Evaluation:
        counts = self.counts
        return Evaluation(
            volume_names=[v.name for v in self.dataset.volumes],
            dsc=metrics_lib.dice_from_counts(counts["intersection"], counts["prediction"], counts["label"]),
            loss=self.loss_sum / max(self.loss_weight, 1.0),
            calibration=self.calibration,
        )


def _run_batches(
    eval_step: Callable[..., dict[str, Any]],
    state: TrainState,
    dataset: Any,
    batch_size: int,
    loss_params: Any,
    wanted: tuple[str, ...],
    reduce: Callable[[np.ndarray, dict[str, Any]], None],
    *,
    sharding: jax.sharding.Sharding | None,
    prefetch: int,
) -> None:
    """``reduce(index, host outputs)`` for every batch of ``dataset``, one batch in flight: the device computes
    the next while the host reduces this one."""
    from segmime_jax.data.pipeline import eval_batches

    if len(dataset.volumes) == 0:
        raise ValueError("cannot evaluate an empty dataset (no volumes)")
    previous = None
    for index, batch in eval_batches(dataset, batch_size, sharding=sharding, prefetch=prefetch):
        out = eval_step(state, batch, loss_params)
        if previous is not None:
            reduce(previous[0], jax.device_get({k: previous[1][k] for k in wanted}))
        previous = (index, out)
    if previous is not None:
        reduce(previous[0], jax.device_get({k: previous[1][k] for k in wanted}))


def _wanted(predictions: bool) -> tuple[str, ...]:
    return ("loss", "num_real", "dice", "calibration") + (("prediction",) if predictions else ())


def evaluate(
    eval_step: Callable[..., dict[str, Any]],
    state: TrainState,
    dataset: Any,
    batch_size: int,
    loss_params: Any,
    *,
    runs: Sequence[bool] | None = None,
    sharding: jax.sharding.Sharding | None = None,
    on_volume: Any = None,
    prefetch: int = 2,
) -> Any:
    """Run ``eval_step`` over every slice of ``dataset`` once, for one run or a stack of R runs, and reduce per run
    and volume.

    Args:
      eval_step: ``(state, batch, loss_params) -> stats``: one run's (:func:`~segmime_jax.train.step.make_eval_step`),
        or, with ``runs``, a stack's, with a leading run axis R on the state, the loss parameters and the stats
        (:func:`~segmime_jax.train.step.make_runs_eval_step`).
      state: the train state to evaluate (stacked with ``runs``).
      dataset: the slices (a :class:`~segmime_jax.data.dataset.SliceDataset` or its
        :class:`~segmime_jax.data.pipeline.DeviceDataset`); volumes are read from ``dataset.volumes`` /
        ``slices_of``.
      batch_size: slices per (padded) batch.
      loss_params: the runs' stacked :class:`~segmime_jax.losses.LossParams` (for the reported loss).
      runs: for a stack, R booleans: the runs to reduce (the others, e.g. frozen after a divergence, are computed
        with the rest but not reduced); ``None`` for one run.
      sharding: where to put each batch (split on ``'data'``).
      on_volume: ``on_volume(volume_info, prediction)`` with the argmax labels ``(S, H, W)`` uint8 of each
        volume, slices in order, as soon as the volume is complete (e.g. to write NIfTI files); for a stack, R
        such callbacks (or ``None`` entries), one per run.

    Returns:
      The :class:`Evaluation`; for a stack, R entries, ``None`` for runs not in ``runs``. Results do not depend on
      ``batch_size``, except the reported loss (a mean of batch losses) for losses that normalise per batch.
    """
    if runs is None:  # one run: a stack of one, without the run axis
        (one,) = evaluate(
            lambda *args: jax.tree.map(lambda x: x[None], eval_step(*args)),
            state,
            dataset,
            batch_size,
            loss_params,
            runs=[True],
            sharding=sharding,
            on_volume=[on_volume],
            prefetch=prefetch,
        )
        return one
    on_volume = [None] * len(runs) if on_volume is None else list(on_volume)
    if len(on_volume) != len(runs):
        raise ValueError(f"{len(runs)} runs but {len(on_volume)} on_volume callbacks")
    sums = [_Sums(dataset, callback) if wanted else None for wanted, callback in zip(runs, on_volume, strict=True)]

    def reduce(index: np.ndarray, h: dict[str, Any]) -> None:
        for r, run_sums in enumerate(sums):
            if run_sums is not None:
                run_sums.add(index, jax.tree.map(lambda x, r=r: x[r], h))

    predictions = any(callback is not None for callback in on_volume)
    _run_batches(
        eval_step,
        state,
        dataset,
        batch_size,
        loss_params,
        _wanted(predictions),
        reduce,
        sharding=sharding,
        prefetch=prefetch,
    )
    return [run_sums.result() if run_sums is not None else None for run_sums in sums]
