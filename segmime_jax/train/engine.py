"""The training engine: R ≥ 1 runs, each trained for a fixed number of epochs, validated, checkpointed, and
tested at its best epoch. One run (:func:`train_and_evaluate`) is a stack of one.

:func:`train_runs` reads top to bottom: open every run (folder, lock, checkpoints: :func:`~segmime_jax.train.run.
open_run`) and restore its progress; cut the runs into stacks (:mod:`segmime_jax.train.layout`: one run at a time
over all devices, whole runs to devices, or several runs vmapped on a device); then per stack its set-up (mesh,
programs, data, the runs' states stacked on a leading run axis: :mod:`segmime_jax.train.stack`) and
compilation, per epoch :func:`_train_pass`, validation, gradient telemetry and
:func:`~segmime_jax.train.epoch_end.end_epoch` for each run (plateau rule, checkpoint, ``metrics.jsonl``), and at
the end :func:`_test` of each run's best epoch.

The runs of a stack may differ in what the compiled step takes as data — the loss (its
:class:`~segmime_jax.losses.LossParams`), the optimiser's hyperparameters (leaves of each run's optimiser state),
the seed (:data:`~segmime_jax.train.config.STACKABLE_CHANGES`) — and each keeps everything of a run trained
alone: its folder and files, seed-determined initialisation, its own batch order (``(seed, epoch)``), dropout
and augmentation draws (``fold_in(fold_in(key(seed), 1), step)``), plateau halving, best epoch, checkpoints and
test. A stack of one run (every run of the ``sequential`` layout) computes bit for bit what the one-run program
computes; runs one per device (``parallel``) run that program inside a ``shard_map`` over ``'runs'``, which XLA
compiles with other rounding in places, and runs vmapped several per device (``stacked``) are another float
computation: both end as the runs alone to float32 rounding.

Determinism and resumption: the learning rate comes from the checkpointed plateau state, so a run resumed from
its latest checkpoint continues exactly as the uninterrupted run. Runs at different epochs (a kill between two
runs' checkpoint saves) train as separate stacks, one per epoch reached.

Divergence is isolated: a run whose loss or gradient norm becomes NaN/inf, or whose state does before a
checkpoint, is frozen (the step keeps its old state: the ``active`` mask of
:func:`~segmime_jax.train.step.masked_train_step_fn`) and left out of validation, checkpoints and the test; its
last good checkpoint stays on disk, and :func:`train_runs` returns the
:class:`~segmime_jax.train.checkpoint.NonFiniteLossError` (:func:`train_and_evaluate` raises it).

Time: each run's ``wall_time_s`` (and the time its checkpoints record) is its share of its stack's wall time,
so the runs of a grid add up to the grid's time.

The last, partial training batch: BatchNorm in train mode would average its batch statistics over padding, so
by default (``last_batch="trim"``) it holds the real slices only, a smaller batch, as PyTorch's
``DataLoader(drop_last=False)`` does: exact, at the price of one more compilation of the train step.
``last_batch="drop"`` skips it instead.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from segmime_jax.distributed import barrier, is_primary
from segmime_jax.losses import LossProgram
from segmime_jax.train.checkpoint import NonFiniteLossError, pack
from segmime_jax.train.config import TrainConfig, check_stackable
from segmime_jax.train.epoch_end import (
    Pending,
    best_tree,
    checked_loss,
    end_epoch,
    open_events,
    prediction_sink,
    run_result,
    timed,
)
from segmime_jax.train.evaluate import evaluate
from segmime_jax.train.layout import choose_layout
from segmime_jax.train.optim import learning_rates, set_learning_rate
from segmime_jax.train.progress import Reporter
from segmime_jax.train.results import RunResult, save_run_result
from segmime_jax.train.run import ModelFactory, Run, open_run, restore_progress
from segmime_jax.train.sharding import (
    batch_sharding,
    replicated_sharding,
    run_slice,
    runs_batch_sharding,
    shard_runs,
    stack_runs,
)
from segmime_jax.train.stack import Stack, compile_stack, new_stack
from segmime_jax.train.telemetry import summarize_gradient

__all__ = ["train_and_evaluate", "train_runs"]


# --------------------------------------------------------------------------------------------- entry points
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
    """Train one run on ``data.train``, validate each epoch on ``data.val``, test the best epoch on ``data.test``.

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
      loss_terms: the loss terms the compiled programs evaluate (names of :data:`segmime_jax.losses.LOSSES`; default:
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
    (result,) = train_runs(
        [config], data, [run_dir], resume=resume, model_factory=model_factory, loss_terms=loss_terms, log=log
    )
    if isinstance(result, NonFiniteLossError):
        raise result
    return result


def train_runs(
    configs: Sequence[TrainConfig],
    data: Any,
    run_dirs: Sequence[str | os.PathLike],
    *,
    resume: bool = False,
    layout: str = "auto",
    model_factory: ModelFactory | None = None,
    loss_terms: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[RunResult | NonFiniteLossError]:
    """Train R runs, each into its own folder exactly as :func:`train_and_evaluate` would.

    Args:
      configs: the R runs' configurations; they may differ only in
        :data:`~segmime_jax.train.config.STACKABLE_CHANGES` (ValueError otherwise). The devices are the first
        config's ``num_devices`` (``None``: every device).
      data: a :class:`~segmime_jax.data.dataset.DatasetSplits`.
      run_dirs: R output folders (the files of :func:`train_and_evaluate`).
      resume: continue each run from its latest checkpoint (fresh start for runs without one).
      layout: ``"auto"``, ``"sequential"``, ``"parallel"`` or ``"stacked"``: how runs share the devices
        (:func:`~segmime_jax.train.layout.choose_layout`; logged in one line when R > 1).
      model_factory, log: as in :func:`train_and_evaluate`.
      loss_terms: the loss terms of the compiled programs (default: those of every run's loss).

    Returns:
      R entries, in the order of ``configs``: the run's :class:`RunResult` (also saved in its folder), or the
      :class:`~segmime_jax.train.checkpoint.NonFiniteLossError` that froze it.
    """
    start_time = time.perf_counter()
    check_stackable(configs)
    if len(run_dirs) != len(configs):
        raise ValueError(f"{len(configs)} configurations but {len(run_dirs)} run folders")
    if loss_terms is None:
        loss_terms = LossProgram.covering(*(c.loss_params(data.train.num_classes) for c in configs)).terms
    runs: list[Run] = []
    out: list[RunResult | NonFiniteLossError | None] = [None] * len(configs)
    try:
        for config, run_dir in zip(configs, run_dirs, strict=True):
            run_dir = pathlib.Path(run_dir)
            runs.append(
                open_run(
                    config, data, run_dir, resume=resume, model_factory=model_factory, loss_terms=loss_terms, log=log
                )
            )
        progress = [restore_progress(run, resume) for run in runs]
        for run, run_progress in zip(runs, progress, strict=True):
            open_events(run, run_progress)
        order = sorted(range(len(runs)), key=lambda i: progress[i].epoch)
        for _, same_epoch in itertools.groupby(order, key=lambda i: progress[i].epoch):
            members = list(same_epoch)
            config = configs[members[0]]
            plan = choose_layout(
                len(members), config.num_devices, mode=layout, batch_sizes=(config.batch_size, config.eval_batch_size)
            )
            if len(configs) > 1:
                Reporter(log=log, quiet=not is_primary()).message(plan.describe())
            taken = 0
            for size, shape in zip(plan.stacks, plan.meshes, strict=True):
                stack_members, taken = members[taken : taken + size], taken + size
                stack_start = start_time if out.count(None) == len(out) else time.perf_counter()
                stack = new_stack(
                    [runs[i] for i in stack_members], [progress[i] for i in stack_members], shape, loss_terms, log
                )
                for i, result in zip(stack_members, _train_stack(stack, stack_start), strict=True):
                    out[i] = result
    finally:
        for run in runs:
            run.close()
    barrier("runs trained")
    return out  # type: ignore[return-value]


def _train_stack(stack: Stack, start_time: float) -> list[RunResult | NonFiniteLossError]:
    """Every epoch of the stack's runs (train, validate, telemetry, end of epoch per run), then their test."""
    config = stack.config
    compile_stack(stack)
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), stack.state.checkpoint_tree())
    for epoch in stack.reporter.epochs(stack.progress[0].epoch + 1, config.epochs):
        epoch_start = time.perf_counter()
        records = _train_pass(stack, epoch)
        if not stack.active.any():
            break
        evaluations, val_s = timed(
            evaluate,
            stack.programs.eval_step,
            stack.state,
            stack.val_data,
            config.eval_batch_size,
            stack.loss_params,
            runs=stack.active,
            sharding=batch_sharding(stack.mesh),
        )
        telemetry, telemetry_s = timed(_measure_gradients, stack)
        checkpoint_start = time.perf_counter()
        packed = _pack_runs(stack.mesh)(stack.state.checkpoint_tree())
        for r in np.flatnonzero(stack.active):
            records[r].update(val_s=val_s, grad_telemetry=telemetry[r], telemetry_s=telemetry_s)
            try:
                end_epoch(
                    stack.runs[r],
                    stack.progress[r],
                    records[r],
                    evaluations[r],
                    template=template,
                    packed={k: v[r] for k, v in packed.items()},
                    epoch_start=epoch_start,
                    start_time=start_time,
                    checkpoint_start=checkpoint_start if len(stack.runs) == 1 else None,
                    time_share=1 / len(stack.runs),
                )
            except NonFiniteLossError as error:
                stack.freeze(r, error)
        if not stack.active.any():
            break
    return _test(stack, template, start_time)


@functools.lru_cache(maxsize=16)
def _pack_runs(mesh: Any) -> Callable[[Any], dict[str, jax.Array]]:
    """``{dtype: (R, N)}``: :func:`~segmime_jax.train.checkpoint.pack` of each run of a stacked tree, on every
    device of ``mesh`` (every process saves its part of every run's checkpoint)."""
    return jax.jit(jax.vmap(pack), out_shardings=replicated_sharding(mesh))


def _train_pass(stack: Stack, epoch: int) -> list[dict[str, Any]]:
    """One pass of every run over its own shuffled batches, at each run's plateau rate; the runs' records."""
    from segmime_jax.data.pipeline import num_batches, run_train_batches

    config, start = stack.config, time.perf_counter()
    rates = np.array(
        [run.config.base_learning_rate * p.plateau.scale for run, p in zip(stack.runs, stack.progress, strict=True)]
    )
    state = stack.state.replace(opt_state=set_learning_rate(stack.state.opt_state, rates))
    history = stack.progress[int(np.flatnonzero(stack.active)[0])].history  # the runs of a stack share an epoch
    step = int(history[-1]["steps"]) if history else 0
    total = num_batches(stack.train_data, config.batch_size, config.last_batch)
    sums = np.zeros(len(stack.runs))
    count, pending = 0, None
    active = stack.active_on_device()
    batches = run_train_batches(
        stack.train_data,
        config.batch_size,
        seeds=[run.config.seed for run in stack.runs],
        epoch=epoch,
        sharding=runs_batch_sharding(stack.mesh),
        last_batch=config.last_batch,
    )
    for batch in stack.reporter.steps(batches, total=total, epoch=epoch):
        size = int(batch["mask"].shape[1])  # the trimmed last batch is smaller
        state, metrics = stack.programs.train_step(state, batch, stack.step_keys(step), stack.loss_params, active)
        if pending is not None:
            active = _account(stack, pending, epoch, sums, active)
            count += pending.size
            if not stack.active.any():
                break  # every run diverged
        pending, step = Pending(metrics, step, size), step + 1
    if pending is not None and stack.active.any():
        _account(stack, pending, epoch, sums, active)
        count += pending.size
    stack.state = state
    # the rates the optimiser state really used (float32; readable here unless the runs span processes)
    held = learning_rates(state.opt_state) if state.step.is_fully_addressable else rates
    if stack.active.any() and not np.allclose(held, rates, rtol=1e-6, atol=0):
        raise RuntimeError(f"epoch {epoch} trained with learning rates {held}, expected {rates}")
    train_s = time.perf_counter() - start
    return [
        {
            "epoch": epoch,
            "train_loss": sums[r] / max(count, 1),
            "learning_rate": float(rates[r]),
            "steps": step,
            "train_s": train_s,
        }
        for r in range(len(stack.runs))
    ]


def _account(stack: Stack, pending: Pending, epoch: int, sums: np.ndarray, active: jax.Array) -> jax.Array:
    """Add a step's losses to ``sums``; freeze the runs whose loss or gradient was not finite. Returns the
    device-side ``active`` mask for the next steps."""
    metrics = jax.device_get({k: pending.metrics[k] for k in ("loss", "grad_norm")})
    frozen = len(stack.errors)
    for r in np.flatnonzero(stack.active):
        run_metrics = {k: v[r] for k, v in metrics.items()}
        try:
            loss = checked_loss(run_metrics, epoch=epoch, step=pending.step, store=stack.runs[r].store)
            sums[r] += loss * pending.size
        except NonFiniteLossError as error:
            stack.freeze(r, error)
    return active if len(stack.errors) == frozen else stack.active_on_device()


def _measure_gradients(stack: Stack) -> list[dict[str, Any]]:
    """Each run's gradient telemetry on the fixed validation batch (``{}`` when off)."""
    if stack.probe_batch is None:
        return [{} for _ in stack.runs]
    out = jax.device_get(stack.programs.probe(stack.state, stack.probe_batch, stack.loss_params))
    return [summarize_gradient({k: v[r] for k, v in out.items()}) if on else {} for r, on in enumerate(stack.active)]


# ------------------------------------------------------------------------------------------------------ test
def _test(stack: Stack, template: Any, start_time: float) -> list[RunResult | NonFiniteLossError]:
    """Test every active run's best epoch in one pass over the test split; save and return the results."""
    active = stack.active
    if not active.any():
        return [stack.errors[r] for r in range(len(stack.runs))]
    replicated = replicated_sharding(stack.mesh)
    current = stack.state.checkpoint_tree()
    trees = [
        best_tree(run, progress, template, sharding=replicated) if on else run_slice(current, r)
        for r, (run, progress, on) in enumerate(zip(stack.runs, stack.progress, active, strict=True))
    ]
    state = stack.state.replace_from_checkpoint(shard_runs(stack_runs(trees), stack.mesh))
    with contextlib.ExitStack() as sinks:
        outputs = [
            sinks.enter_context(prediction_sink(run)) if on else None
            for run, on in zip(stack.runs, active, strict=True)
        ]
        evaluations = evaluate(
            stack.programs.eval_step,
            state,
            stack.runs[0].data.test,
            stack.config.eval_batch_size,
            stack.loss_params,
            runs=active,
            sharding=batch_sharding(stack.mesh),
            on_volume=[None if o is None else o.on_volume for o in outputs],
        )
    wall_s = (time.perf_counter() - start_time) / len(stack.runs)  # each run's share of the stack's time
    results: list[RunResult | NonFiniteLossError] = []
    for r, (run, progress) in enumerate(zip(stack.runs, stack.progress, strict=True)):
        if r in stack.errors:
            results.append(stack.errors[r])
            continue
        result = run_result(run, progress, evaluations[r], outputs[r], wall_s)
        if is_primary():
            save_run_result(result, run.run_dir)
        results.append(result)
    return results
