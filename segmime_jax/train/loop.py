"""The training loop: train for a fixed number of epochs, validate, checkpoint, then test the best model.

:func:`train_and_evaluate` reads top to bottom: set the run up (:func:`setup_run`), restore it or start it
(:func:`restore_or_start`), compile its programs (:func:`compile_programs`), then per epoch :func:`_train_epoch`,
:func:`_validate`, :func:`_measure_gradient`, :func:`_end_epoch` (plateau rule, checkpoint, ``metrics.jsonl``),
and at the end :func:`_test` on the best epoch's state.

Determinism: the model is initialised from ``seed``; every step draws its key as
``fold_in(fold_in(key(seed), 1), step)`` (dropout and augmentation), the epoch order comes from
``(seed, epoch)`` and the learning rate from the checkpointed plateau state, so a run resumed from its
latest checkpoint continues exactly as the uninterrupted run (bit for bit on CPU).

The last, partial training batch: the pipeline pads it to the batch size (mask False on the padding). The
loss already ignores masked images, but BatchNorm in train mode would still average its batch statistics
over the padding, so by default (``last_batch="trim"``) the padding is cut off and the real slices form a
smaller batch, as PyTorch's ``DataLoader(drop_last=False)`` does: exact, at the price of one more
compilation of the train step (for that batch size). ``last_batch="drop"`` skips it instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from segmime_jax.atomic_files import json_ready
from segmime_jax.distributed import barrier, is_primary
from segmime_jax.train.checkpoint import CheckpointStore, check_finite, check_packed_finite, pack, unpack
from segmime_jax.train.config import TrainConfig
from segmime_jax.train.evaluate import Evaluation, evaluate
from segmime_jax.train.optim import get_learning_rate, plateau_update, set_learning_rate
from segmime_jax.train.results import METRICS_FILE, RunResult, save_run_result
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
from segmime_jax.train.samples import collect_examples, example_slices
from segmime_jax.train.state import TrainState
from segmime_jax.train.surface import SurfaceEvaluator
from segmime_jax.train.telemetry import summarize_gradient
from segmime_jax.train.tensorboard import EpochEvents

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
      log line; ``None`` for the epoch a resumed run restarted from).

    Raises:
      NonFiniteLossError: the training loss or gradient (checked every step) or the state (checked before
        each checkpoint) became NaN/inf; the latest checkpoint on disk is the last good epoch.
      FileExistsError, ValueError: unusable run directory, data or configuration.
    """
    start_time = time.perf_counter()
    run = setup_run(
        config, data, pathlib.Path(run_dir), resume=resume, model_factory=model_factory, loss_terms=loss_terms, log=log
    )
    events: EpochEvents | None = None
    try:
        progress = restore_or_start(run, resume)
        if is_primary():
            events = EpochEvents(
                run.run_dir, data.train.class_names, first_epoch=progress.epoch + 1, log=run.reporter.message
            )
        compile_programs(run, progress.state)
        for epoch in run.reporter.epochs(progress.epoch + 1, config.epochs):
            epoch_start = time.perf_counter()
            record = _train_epoch(run, progress, epoch)
            evaluation, record["val_s"] = _timed(_validate, run, progress.state)
            record["grad_telemetry"], record["telemetry_s"] = _timed(_measure_gradient, run, progress.state)
            _end_epoch(run, progress, record, evaluation, epoch_start, start_time)
            if events is not None:
                events.write(progress.history[-1])  # the metrics.jsonl line, as TensorBoard scalars
        test_eval, examples, surface = _test(run, _best_state(run, progress))
    finally:
        if events is not None:
            events.close()
        if run.store is not None:
            run.store.close()
    result = _run_result(run, progress, test_eval, examples, surface, time.perf_counter() - start_time)
    if is_primary():
        save_run_result(result, run.run_dir)
    barrier(f"{run.run_dir}: result written")
    return result


def _run_result(
    run: Run,
    progress: Progress,
    test_eval: Evaluation,
    examples: dict[str, np.ndarray],
    surface: SurfaceEvaluator,
    wall_s: float,
) -> RunResult:
    return RunResult(
        config=run.config,
        class_names=tuple(run.data.train.class_names),
        history=progress.history,
        best_epoch=progress.best_epoch,
        test_volume_names=test_eval.volume_names,
        test_dsc=test_eval.dsc,
        test_clece=test_eval.calibration.clece(),
        reliability=test_eval.calibration.reliability(),
        examples=examples,
        wall_time_s=progress.elapsed_before + wall_s,
        data=run.fingerprint,
        test_hd95=surface.hd95,
        test_assd=surface.assd,
        surface=surface.info(),
    )


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------- epochs
@dataclasses.dataclass
class _Pending:
    """A dispatched step whose loss and gradient norm are fetched (and checked) one step later."""

    metrics: dict[str, jax.Array]
    step: int
    size: int


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
    pending: _Pending | None = None
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
            loss_sum += _checked_loss(pending, epoch, run.store) * pending.size
            loss_count += pending.size
        pending = _Pending(metrics, step, size)
        step += 1
    if pending is not None:
        loss_sum += _checked_loss(pending, epoch, run.store) * pending.size
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


def _checked_loss(pending: _Pending, epoch: int, store: CheckpointStore | None) -> float:
    """Fetch a step's loss and gradient norm; raise if either is NaN/inf. Returns the loss."""
    metrics = jax.device_get({k: pending.metrics[k] for k in ("loss", "grad_norm")})
    loss = float(metrics["loss"])
    check_finite(loss, epoch=epoch, step=pending.step, store=store, grad_norm=float(metrics["grad_norm"]))
    return loss


def _validate(run: Run, state: TrainState) -> Evaluation:
    """The validation split's 3D DSC per volume and class, and its loss."""
    return evaluate(
        run.programs.eval_step, state, run.val_data, run.config.eval_batch_size, run.loss_params, sharding=run.sharding
    )


def _measure_gradient(run: Run, state: TrainState) -> dict[str, Any]:
    """Gradient telemetry on the fixed validation batch (``{}`` when off)."""
    if run.probe_batch is None:
        return {}
    return summarize_gradient(run.programs.probe(state, run.probe_batch, run.loss_params))


def _end_epoch(
    run: Run,
    progress: Progress,
    record: dict[str, Any],
    evaluation: Evaluation,
    epoch_start: float,
    start_time: float,
) -> None:
    """Best epoch and plateau rule, then the checkpoint (or in-memory best copy) and the ``metrics.jsonl`` line."""
    config, epoch = run.config, record["epoch"]
    val_dsc_fg = evaluation.mean_dsc_fg
    improved = val_dsc_fg > progress.best_metric
    if improved:
        progress.best_metric, progress.best_epoch = val_dsc_fg, epoch
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
    checkpoint_start = time.perf_counter()
    record["time_s"] = checkpoint_start - epoch_start
    progress.history.append(json_ready(record))
    progress.epoch = epoch

    tree = progress.state.checkpoint_tree()
    packed = pack(tree)
    check_packed_finite(packed, epoch=epoch, store=run.store)
    if run.store is not None:
        meta = {
            "epoch": epoch,
            "history": progress.history,
            "plateau": progress.plateau.to_json(),
            "best_metric": progress.best_metric,
            "best_epoch": progress.best_epoch,
            "config": json_ready(config),
            "data": run.fingerprint,
            "elapsed_s": progress.elapsed_before + time.perf_counter() - start_time,
        }
        run.store.save(epoch, tree, meta, improved=improved, packed=packed)
    elif improved:
        progress.best_packed = packed  # a fresh array: the next steps donate the state, not this copy
    checkpoint_s = time.perf_counter() - checkpoint_start
    progress.history[-1].update(checkpoint_s=checkpoint_s, time_s=record["time_s"] + checkpoint_s)
    if is_primary():
        with (run.run_dir / METRICS_FILE).open("a") as handle:
            handle.write(json.dumps(progress.history[-1]) + "\n")
    run.reporter.epoch_done(
        progress.history[-1], last=config.epochs, best_metric=progress.best_metric, best_epoch=progress.best_epoch
    )


# ----------------------------------------------------------------------------------------------------- test
def _best_state(run: Run, progress: Progress) -> TrainState:
    """The state of the best epoch: from its checkpoint, or from the in-memory copy."""
    state = progress.state
    if run.store is not None:
        restored = run.store.restore(state.checkpoint_tree(), progress.best_epoch)
        if restored is None:
            raise RuntimeError(f"no checkpoint of the best epoch ({progress.best_epoch}) in {run.store.directory}")
        return state.replace_from_checkpoint(restored[1])
    if progress.best_packed is None:
        raise RuntimeError("no best state: the run has no completed epoch")
    return state.replace_from_checkpoint(unpack(state.checkpoint_tree(), progress.best_packed))


def _test(run: Run, state: TrainState) -> tuple[Evaluation, dict[str, np.ndarray], SurfaceEvaluator]:
    """Evaluate ``state`` on the test split; write the NIfTI predictions; measure HD95 and ASSD on the original
    grid; collect the Figure 4 examples."""
    config, test = run.config, run.data.test
    wanted = example_slices(test, config.num_examples)
    picked: dict[int, np.ndarray] = {}
    surface = SurfaceEvaluator(test)
    writer: Any = contextlib.nullcontext(None)
    if config.write_predictions and is_primary():
        try:
            import nibabel  # noqa: F401

            from segmime_jax.data.export import prediction_folder

            writer = prediction_folder(run.run_dir / "predictions")
        except ModuleNotFoundError as err:
            run.reporter.message(f"NIfTI predictions not written: {err} (install nibabel)")

    with writer as write:

        def on_volume(volume: Any, prediction: np.ndarray) -> None:
            if volume.volume_id in wanted:
                picked[volume.volume_id] = prediction[wanted[volume.volume_id]]
            if write is not None:
                write(volume, prediction)
            surface(volume, prediction)

        evaluation = evaluate(
            run.programs.eval_step,
            state,
            test,
            config.eval_batch_size,
            run.loss_params,
            sharding=run.sharding,
            on_volume=on_volume,
        )
    return evaluation, collect_examples(test, wanted, picked), surface
