"""The training loop: train for a fixed number of epochs, validate, checkpoint, then test the best model.

:func:`train_and_evaluate` reads top to bottom: set the run up (:func:`setup_run`), restore it or start it
(:func:`restore_or_start`), compile its programs (:func:`compile_programs`), then per epoch :func:`_train_epoch`,
:func:`~segmime_jax.train.evaluate.evaluate` (validation), :func:`_measure_gradient`,
:func:`~segmime_jax.train.epoch_end.end_epoch` (plateau rule, checkpoint, ``metrics.jsonl``), and at the end
:func:`_test` on the best epoch's state. What ends a step, an epoch and a run is shared with the stacked runs of
:mod:`segmime_jax.train.stacked` (:mod:`segmime_jax.train.epoch_end`).

Determinism: the model is initialised from ``seed``; every step draws its key as
``fold_in(fold_in(key(seed), 1), step)`` (dropout and augmentation), the epoch order comes from
``(seed, epoch)`` and the learning rate from the checkpointed plateau state, so a run resumed from its
latest checkpoint continues exactly as the uninterrupted run (bit for bit on CPU).

The last, partial training batch: BatchNorm in train mode would average its batch statistics over padding,
so by default (``last_batch="trim"``) the pipeline makes it of the real slices only, a smaller batch, as
PyTorch's ``DataLoader(drop_last=False)`` does: exact, at the price of one more compilation of the train step
(for that batch size). ``last_batch="drop"`` skips it instead.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from segmime_jax.distributed import barrier, is_primary
from segmime_jax.train.checkpoint import CheckpointStore
from segmime_jax.train.config import TrainConfig
from segmime_jax.train.epoch_end import (
    Pending,
    PredictionSink,
    best_tree,
    checked_loss,
    end_epoch,
    open_events,
    prediction_sink,
    run_result,
    timed,
)
from segmime_jax.train.evaluate import Evaluation, evaluate
from segmime_jax.train.optim import get_learning_rate, set_learning_rate
from segmime_jax.train.results import RunResult, save_run_result
from segmime_jax.train.run import (
    ModelFactory,
    Progress,
    Run,
    compile_programs,
    restore_or_start,
    setup_run,
    step_key,
    step_root,
)
from segmime_jax.train.state import TrainState
from segmime_jax.train.telemetry import summarize_gradient

__all__ = ["step_key", "train_and_evaluate"]


# ---------------------------------------------------------------------------------------------- entry point
def train_and_evaluate(
    config: TrainConfig,
    data: Any,
    run_dir: str | os.PathLike,
    *,
    resume: bool = False,
    model_factory: ModelFactory | None = None,
    loss_terms: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Train on ``data.train``, validate each epoch on ``data.val``, test the best epoch on ``data.test``.

    Args:
      config: the run's :class:`TrainConfig`.
      data: a :class:`~segmime_jax.data.dataset.DatasetSplits`.
      run_dir: output directory, created if missing. Receives ``checkpoints/`` (latest and best epoch),
        ``metrics.jsonl`` (one JSON line per epoch, the same dicts as ``RunResult.history``), TensorBoard
        event files of the same numbers (:mod:`segmime_jax.train.tensorboard`, when tensorboardX is installed),
        ``predictions/<volume>.nii.gz`` (test predictions, when ``config.write_predictions``),
        ``result.json`` (:meth:`RunResult.to_json` without the examples), ``examples.npz`` and
        ``test_metrics.csv`` (DSC, HD95 and ASSD per test volume and class).
      resume: continue from the latest checkpoint in ``run_dir`` (fresh start when there is none). Without
        it, a ``run_dir`` that already holds a run is refused (FileExistsError). Only ``epochs``,
        ``progress``, ``write_predictions``, ``num_examples`` and ``checkpoints`` may change on resumption.
      model_factory: build the network from ``(num_classes, *, rngs, dtype)`` instead of
        ``segmime_jax.models.build_model(config.model, ...)`` (custom models, tests).
      loss_terms: the loss terms the compiled programs evaluate (:data:`segmime_jax.losses.params.TERMS`; default:
        those of ``config.loss``). Runs given the same terms, optimiser kind, class count, augmentation and
        devices share one compiled train step, evaluation step and gradient probe: a grid passes the union
        of its losses' terms.
      log: where messages (compilations, resumption) and per-epoch lines go (default: ``print``).

    Returns:
      The :class:`RunResult`; per-epoch ``history`` entries hold ``epoch``, ``train_loss`` (mean over the
      epoch's slices), ``val_loss``, ``val_dsc`` (mean 3D DSC over validation volumes, per class, background
      first), ``val_dsc_fg`` (its foreground mean), ``learning_rate`` (used during the epoch), ``steps``
      (optimiser steps so far), ``best`` (this epoch became the best), ``grad_telemetry`` (see
      :mod:`segmime_jax.train.telemetry`; ``{}`` when off) and the epoch's wall time, ``time_s``, split into
      ``train_s``, ``val_s``, ``telemetry_s`` and ``checkpoint_s`` (the finiteness check, the checkpoint and the
      log line; ``None`` for an epoch whose ``metrics.jsonl`` line a killed run did not write).

    Raises:
      NonFiniteLossError: the training loss or gradient (checked every step) or the state (checked before
        each checkpoint) became NaN/inf; the latest checkpoint on disk is the last good epoch.
      FileExistsError, ValueError: unusable run directory, data or configuration.
    """
    start_time = time.perf_counter()
    run = setup_run(
        config, data, pathlib.Path(run_dir), resume=resume, model_factory=model_factory, loss_terms=loss_terms, log=log
    )
    try:
        progress = restore_or_start(run, resume)
        open_events(run, progress)
        compile_programs(run, progress.state)
        for epoch in run.reporter.epochs(progress.epoch + 1, config.epochs):
            _epoch(run, progress, epoch, start_time)
        best = best_tree(run, progress, progress.state.checkpoint_tree())
        test_eval, outputs = _test(run, progress.state.replace_from_checkpoint(best))
    finally:
        run.close()
    result = run_result(run, progress, test_eval, outputs, time.perf_counter() - start_time)
    if is_primary():
        save_run_result(result, run.run_dir)
    barrier(f"{run.run_dir}: result written")
    return result


# --------------------------------------------------------------------------------------------------- epochs
def _epoch(run: Run, progress: Progress, epoch: int, start_time: float) -> None:
    """Train, validate, measure the gradient and end one epoch (best, plateau, checkpoint, log line)."""
    config = run.config
    epoch_start = time.perf_counter()
    record = _train_epoch(run, progress, epoch)
    evaluation, record["val_s"] = timed(
        evaluate,
        run.programs.eval_step,
        progress.state,
        run.val_data,
        config.eval_batch_size,
        run.loss_params,
        sharding=run.sharding,
    )
    record["grad_telemetry"], record["telemetry_s"] = timed(_measure_gradient, run, progress.state)
    tree = progress.state.checkpoint_tree()
    end_epoch(
        run,
        progress,
        record,
        evaluation,
        tree=tree,
        epoch_start=epoch_start,
        start_time=start_time,
    )


def _train_epoch(run: Run, progress: Progress, epoch: int) -> dict[str, Any]:
    """One shuffled pass over the training slices at the plateau's learning rate; the start of the record."""
    from segmime_jax.data.pipeline import num_batches, train_batches

    config = run.config
    start = time.perf_counter()
    learning_rate = config.base_learning_rate * progress.plateau.scale
    state = progress.state.replace(opt_state=set_learning_rate(progress.state.opt_state, learning_rate))
    step = int(jax.device_get(state.step))
    root = step_root(config.seed)
    total = num_batches(run.data.train, config.batch_size, config.last_batch)
    loss_sum, loss_count = 0.0, 0
    pending: Pending | None = None
    batches = train_batches(
        run.train_data,
        config.batch_size,
        seed=config.seed,
        epoch=epoch,
        sharding=run.sharding,
        last_batch=config.last_batch,
    )
    for batch in run.reporter.steps(batches, total=total, epoch=epoch):
        size = int(batch["mask"].shape[0])  # the trimmed last batch is smaller
        state, metrics = run.programs.train_step(state, batch, jax.random.fold_in(root, step), run.loss_params)
        if pending is not None:
            loss_sum += _pending_loss(pending, epoch, run.store) * pending.size
            loss_count += pending.size
        pending = Pending(metrics, step, size)
        step += 1
    if pending is not None:
        loss_sum += _pending_loss(pending, epoch, run.store) * pending.size
        loss_count += pending.size
    held = get_learning_rate(state.opt_state)  # the rate the optimiser state really used (float32)
    if not math.isclose(held, learning_rate, rel_tol=1e-6):
        raise RuntimeError(f"epoch {epoch} trained with learning rate {held}, expected {learning_rate}")
    progress.state = state
    return {
        "epoch": epoch,
        "train_loss": loss_sum / max(loss_count, 1),
        "learning_rate": learning_rate,
        "steps": step,
        "train_s": time.perf_counter() - start,
    }


def _pending_loss(pending: Pending, epoch: int, store: CheckpointStore | None) -> float:
    metrics = jax.device_get({k: pending.metrics[k] for k in ("loss", "grad_norm")})
    return checked_loss(metrics, epoch=epoch, step=pending.step, store=store)


def _measure_gradient(run: Run, state: TrainState) -> dict[str, Any]:
    """Gradient telemetry on the fixed validation batch (``{}`` when off)."""
    if run.probe_batch is None:
        return {}
    return summarize_gradient(run.programs.probe(state, run.probe_batch, run.loss_params))


# ----------------------------------------------------------------------------------------------------- test
def _test(run: Run, state: TrainState) -> tuple[Evaluation, PredictionSink]:
    """Evaluate ``state`` on the test split; write the NIfTI predictions; measure HD95 and ASSD on the original
    grid; collect the Figure 4 examples."""
    with prediction_sink(run) as outputs:
        evaluation = evaluate(
            run.programs.eval_step,
            state,
            run.data.test,
            run.config.eval_batch_size,
            run.loss_params,
            sharding=run.sharding,
            on_volume=outputs.on_volume,
        )
    return evaluation, outputs
