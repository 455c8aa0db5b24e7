"""What ends a training step, an epoch and a run, per run of a stack (:mod:`segmime_jax.train.engine`): each run
writes the files it would write alone.

- :func:`checked_loss`: a dispatched step's loss, fetched one step later and checked (NaN/inf stop the run);
- :func:`end_epoch`: the best epoch and the plateau rule, the checkpoint (or in-memory best copy) and the
  ``metrics.jsonl`` line;
- :func:`best_tree`: the best epoch's state, from its checkpoint or the in-memory copy;
- :func:`open_events`: the run's TensorBoard event files (process 0), written by :func:`end_epoch`;
- :func:`prediction_sink`: where a run's test predictions go (NIfTI files, HD95/ASSD, the Figure 4 examples);
- :func:`run_result`: the :class:`~segmime_jax.train.results.RunResult`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from segmime_jax.atomic_files import json_ready
from segmime_jax.distributed import is_primary
from segmime_jax.train.checkpoint import CheckpointStore, check_finite, check_packed_finite, unpack
from segmime_jax.train.evaluate import Evaluation
from segmime_jax.train.optim import plateau_update
from segmime_jax.train.results import METRICS_FILE, RunResult
from segmime_jax.train.run import Progress, Run
from segmime_jax.train.samples import collect_examples, example_slices
from segmime_jax.train.surface import SurfaceEvaluator
from segmime_jax.train.tensorboard import EpochEvents


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``(fn(*args, **kwargs), seconds it took)``."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------- steps
@dataclasses.dataclass
class Pending:
    """A dispatched step whose loss and gradient norm are fetched (and checked) one step later."""

    metrics: dict[str, jax.Array]
    step: int
    size: int


def checked_loss(metrics: dict[str, Any], *, epoch: int, step: int, store: CheckpointStore | None) -> float:
    """A step's loss (``metrics["loss"]``, with ``metrics["grad_norm"]``, on the host); raises
    :class:`~segmime_jax.train.checkpoint.NonFiniteLossError` if either is NaN/inf. Returns the loss."""
    loss = float(metrics["loss"])
    check_finite(loss, epoch=epoch, step=step, store=store, grad_norm=float(metrics["grad_norm"]))
    return loss


# --------------------------------------------------------------------------------------------------- epochs
def end_epoch(
    run: Run,
    progress: Progress,
    record: dict[str, Any],
    evaluation: Evaluation,
    *,
    template: Any,
    packed: dict[str, jax.Array],
    epoch_start: float,
    start_time: float,
    checkpoint_start: float | None = None,
    time_share: float = 1.0,
) -> None:
    """Best epoch and plateau rule, then the checkpoint (or in-memory best copy) and the ``metrics.jsonl`` line.

    Args:
      run, progress: the run and its progress (updated: history, plateau, best, epoch).
      record: the epoch's record so far (``epoch``, ``train_loss``, ``learning_rate``, times ...).
      evaluation: the epoch's validation.
      template: the run's :meth:`~segmime_jax.train.state.TrainState.checkpoint_tree` as ``jax.ShapeDtypeStruct``
        leaves (structure, shapes and dtypes).
      packed: the run's state, :func:`~segmime_jax.train.checkpoint.pack`-ed.
      epoch_start, start_time: ``time.perf_counter()`` at the start of the epoch and of this call's training.
      checkpoint_start: ``time.perf_counter()`` when the checkpoint's work began (packing the state; default: now).
      time_share: the run's share of the time since ``start_time`` (``1/R`` for one of a stack of R runs),
        which the checkpoint records as the run's time so far.

    Raises:
      NonFiniteLossError: the state holds NaN/inf (nothing is saved or logged for this epoch).
    """
    config, epoch = run.config, record["epoch"]
    val_dsc_fg = evaluation.mean_dsc_fg
    improved = val_dsc_fg > progress.best_metric
    best_metric, best_epoch = (val_dsc_fg, epoch) if improved else (progress.best_metric, progress.best_epoch)
    checkpoint_start = time.perf_counter() if checkpoint_start is None else checkpoint_start
    check_packed_finite(packed, epoch=epoch, store=run.store)  # before anything of this epoch is kept
    progress.best_metric, progress.best_epoch = best_metric, best_epoch
    progress.plateau = plateau_update(
        progress.plateau,
        val_dsc_fg,
        patience=config.plateau_patience,
        factor=config.plateau_factor,
        min_delta=config.plateau_min_delta,
    )
    record.update(
        val_loss=evaluation.loss,
        val_dsc=[float(v) for v in evaluation.mean_dsc],
        val_dsc_fg=val_dsc_fg,
        best=improved,
        checkpoint_s=None,
    )
    record["time_s"] = checkpoint_start - epoch_start
    progress.history.append(json_ready(record))
    progress.epoch = epoch
    if run.store is not None:
        meta = {
            "epoch": epoch,
            "history": copy.deepcopy(progress.history),  # as now: the save may be written later
            "plateau": progress.plateau.to_json(),
            "best_metric": progress.best_metric,
            "best_epoch": progress.best_epoch,
            "config": json_ready(config),
            "data": run.fingerprint,
            "elapsed_s": progress.elapsed_before + time_share * (time.perf_counter() - start_time),
        }
        run.store.save(epoch, template, meta, improved=improved, packed=packed)
    elif improved:
        progress.best_packed = packed  # a fresh array: the next steps donate the state, not this copy
    checkpoint_s = time.perf_counter() - checkpoint_start
    progress.history[-1].update(checkpoint_s=checkpoint_s, time_s=record["time_s"] + checkpoint_s)
    if is_primary():
        with (run.run_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(progress.history[-1]) + "\n")
    if run.events is not None:
        run.events.write(progress.history[-1])  # the metrics.jsonl line, as TensorBoard scalars
    run.reporter.epoch_done(
        progress.history[-1], last=config.epochs, best_metric=progress.best_metric, best_epoch=progress.best_epoch
    )


def open_events(run: Run, progress: Progress) -> None:
    """Give ``run`` its TensorBoard event writer (process 0 only), continuing after ``progress.epoch``; close it
    with ``run.events.close()``."""
    if is_primary():
        run.events = EpochEvents(
            run.run_dir, run.data.train.class_names, first_epoch=progress.epoch + 1, log=run.reporter.message
        )


# ----------------------------------------------------------------------------------------------------- test
def best_tree(run: Run, progress: Progress, template: Any, *, sharding: Any = None) -> Any:
    """The checkpoint tree of the best epoch, in the structure of ``template`` (arrays or
    ``jax.ShapeDtypeStruct``; ``sharding`` as :meth:`CheckpointStore.restore`): from its checkpoint, or from
    the in-memory copy."""
    if run.store is not None:
        restored = run.store.restore(template, progress.best_epoch, sharding=sharding)
        if restored is None:
            raise RuntimeError(f"no checkpoint of the best epoch ({progress.best_epoch}) in {run.store.directory}")
        return restored[1]
    if progress.best_packed is None:
        raise RuntimeError("no best state: the run has no completed epoch")
    return unpack(template, progress.best_packed)


@dataclasses.dataclass
class PredictionSink:
    """Where one run's test predictions go: :meth:`on_volume` takes each predicted volume (NIfTI file, HD95 and
    ASSD on the original grid in ``surface``), :meth:`examples` returns the Figure 4 slices collected."""

    run: Run
    write: Callable[[Any, np.ndarray], None] | None
    wanted: dict[int, Any]
    surface: SurfaceEvaluator
    picked: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)

    def on_volume(self, volume: Any, prediction: np.ndarray) -> None:
        if volume.volume_id in self.wanted:
            self.picked[volume.volume_id] = prediction[self.wanted[volume.volume_id]]
        if self.write is not None:
            self.write(volume, prediction)
        self.surface(volume, prediction)

    def examples(self) -> dict[str, np.ndarray]:
        return collect_examples(self.run.data.test, self.wanted, self.picked)


@contextlib.contextmanager
def prediction_sink(run: Run) -> Iterator[PredictionSink]:
    """The :class:`PredictionSink` of ``run``; NIfTI predictions in ``run_dir/predictions`` (written whole: the
    folder appears when the context ends without error) when ``config.write_predictions``, by process 0."""
    config = run.config
    writer: Any = contextlib.nullcontext(None)
    if config.write_predictions and is_primary():
        try:
            import nibabel  # noqa: F401

            from segmime_jax.data.export import prediction_folder

            writer = prediction_folder(run.run_dir / "predictions")
        except ModuleNotFoundError as err:
            run.reporter.message(f"NIfTI predictions not written: {err} (install nibabel)")
    with writer as write:
        yield PredictionSink(
            run, write, example_slices(run.data.test, config.num_examples), SurfaceEvaluator(run.data.test)
        )


def run_result(
    run: Run, progress: Progress, test_eval: Evaluation, outputs: PredictionSink, wall_s: float
) -> RunResult:
    """The :class:`RunResult` of a finished run, from its test evaluation and prediction outputs (``wall_s``:
    this call's seconds, or its share of them; earlier calls' are added)."""
    return RunResult(
        config=run.config,
        class_names=tuple(run.data.train.class_names),
        history=progress.history,
        best_epoch=progress.best_epoch,
        test_volume_names=test_eval.volume_names,
        test_dsc=test_eval.dsc,
        test_clece=test_eval.calibration.clece(),
        reliability=test_eval.calibration.reliability(),
        examples=outputs.examples(),
        wall_time_s=progress.elapsed_before + wall_s,
        data=run.fingerprint,
        test_hd95=outputs.surface.hd95,
        test_assd=outputs.surface.assd,
        surface=outputs.surface.info(),
    )
