"""R training runs trained together: one compiled step over a leading run axis, each run's files as if alone.

:func:`train_stacked` trains runs whose configurations differ only in per-run data — the loss (its
:class:`~segmime_jax.losses.LossParams`), the optimiser's hyperparameters (leaves of each run's optimiser state),
the seed — with the programs of :mod:`segmime_jax.train.stacked_step`: every kernel does R runs' work, and on a
``('runs', 'data')`` mesh (:func:`~segmime_jax.train.sharding.make_runs_mesh`) the runs are spread over the
devices without any communication between them.

Each run keeps everything of a run trained alone (:func:`~segmime_jax.train.loop.train_and_evaluate`): its
folder, seed-determined initialisation, data order (each run gets its own batch: ``(seed, epoch)`` order),
dropout and augmentation draws (``fold_in(fold_in(key(seed), 1), step)``), plateau halving, best epoch,
checkpoints, ``metrics.jsonl``, test predictions and ``result.json`` — the host-side code is the same
(:mod:`segmime_jax.train.epoch_end`). So a stacked run ends with the numbers of the run trained alone (to
float32 rounding: XLA computes R runs' convolutions as one grouped convolution), and either way of training
resumes the other's checkpoints.

Divergence is isolated: a run whose loss or gradient norm becomes NaN/inf, or whose state does before a
checkpoint, is frozen (the step keeps its old state, see the stacked step's ``active`` mask) and left out of
validation, checkpoints and the test; its last good checkpoint stays on disk, and :func:`train_stacked`
returns the :class:`~segmime_jax.train.checkpoint.NonFiniteLossError` the run alone would have raised.

Time: each run's ``wall_time_s`` (and the time its checkpoints record) is its share of the stack's wall time,
the stack's time over R, so the runs of a grid add up to the grid's time.

Resumption: each run restores its own latest checkpoint; runs at different epochs (a kill between two runs'
checkpoint saves) are trained as separate stacks, one per epoch reached, which end the same.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from segmime_jax.losses import LossProgram
from segmime_jax.train.checkpoint import NonFiniteLossError
from segmime_jax.train.config import TrainConfig, check_stackable
from segmime_jax.train.epoch_end import best_tree, end_epoch, open_events, prediction_sink, run_result, timed
from segmime_jax.train.evaluate import evaluate_runs
from segmime_jax.train.progress import Reporter
from segmime_jax.train.results import RunResult, save_run_result
from segmime_jax.train.run import ModelFactory, Run, check_run, loss_program, restore_or_start, run_label
from segmime_jax.train.sharding import batch_sharding, make_data_mesh, run_slice, shard_runs, stack_runs
from segmime_jax.train.stacked_group import RunGroup, compile_group, measure_gradients, new_group, pack_runs, train_pass
from segmime_jax.train.state import TrainState


# ---------------------------------------------------------------------------------------------- entry point
def train_stacked(
    configs: Sequence[TrainConfig],
    data: Any,
    run_dirs: Sequence[str | os.PathLike],
    *,
    resume: bool = False,
    model_factory: ModelFactory | None = None,
    loss_terms: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[RunResult | NonFiniteLossError]:
    """Train R runs together, each into its own folder exactly as ``train_and_evaluate`` would.

    Args:
      configs: the R runs' configurations; they may differ only in
        :data:`~segmime_jax.train.config.STACKABLE_CHANGES` (ValueError otherwise).
        The devices are the first config's ``num_devices`` (``None``: every local device), shared by a
        ``('runs', 'data')`` mesh (:func:`~segmime_jax.train.sharding.make_runs_mesh`).
      data: a :class:`~segmime_jax.data.dataset.DatasetSplits`.
      run_dirs: R output folders (the files of :func:`~segmime_jax.train.loop.train_and_evaluate`).
      resume: continue each run from its latest checkpoint (fresh start for runs without one).
      model_factory: as in ``train_and_evaluate``.
      loss_terms: the loss terms of the compiled programs (default: those of every run's loss).
      log: where messages and per-epoch lines go (default: ``print``).

    Returns:
      R entries, in the order of ``configs``: the run's :class:`RunResult` (also saved in its folder), or the
      :class:`~segmime_jax.train.checkpoint.NonFiniteLossError` that froze it.
    """
    start_time = time.perf_counter()
    check_stackable(configs)
    if len(run_dirs) != len(configs):
        raise ValueError(f"{len(configs)} configurations but {len(run_dirs)} run folders")
    num_classes = data.train.num_classes
    if loss_terms is None:
        loss = LossProgram.covering(*(config.loss_params(num_classes) for config in configs))
        loss_terms = loss.terms
    group_reporter = Reporter(enabled=configs[0].progress, label=f"{len(configs)} runs", log=log)
    mesh = make_data_mesh(1)  # where the runs are restored, before they are stacked
    runs: list[Run] = []
    out: list[RunResult | NonFiniteLossError | None] = [None] * len(configs)
    try:
        for config, run_dir in zip(configs, run_dirs, strict=True):
            runs.append(
                _new_run(config, data, pathlib.Path(run_dir), resume, model_factory, loss_terms, mesh, group_reporter)
            )
        progress = [restore_or_start(run, resume) for run in runs]
        for run, run_progress in zip(runs, progress, strict=True):
            open_events(run, run_progress)
        by_epoch = itertools.groupby(
            sorted(range(len(runs)), key=lambda i: progress[i].epoch), key=lambda i: progress[i].epoch
        )
        for _, members in by_epoch:
            members = list(members)
            group_start = start_time if out.count(None) == len(out) else time.perf_counter()
            group = new_group(
                [runs[i] for i in members], [progress[i] for i in members], data, loss_terms, group_reporter
            )
            for i, result in zip(members, _train_group(group, group_start), strict=True):
                out[i] = result
    finally:
        for run in runs:
            run.close()
    return out  # type: ignore[return-value]


def _new_run(
    config: TrainConfig,
    data: Any,
    run_dir: pathlib.Path,
    resume: bool,
    model_factory: ModelFactory | None,
    loss_terms: Sequence[str],
    mesh: Any,
    group_reporter: Reporter,
) -> Run:
    """One run's host side (folder, checkpoints, voice, loss parameters); the devices are its group's."""
    from segmime_jax.train.checkpoint import CheckpointStore

    lock = check_run(config, data, run_dir, resume)
    _, params = loss_program(config, data.train.num_classes, loss_terms)
    return Run(
        config=config,
        data=data,
        run_dir=run_dir,
        fingerprint=data.fingerprint(),
        mesh=mesh,
        sharding=None,
        programs=None,  # type: ignore[arg-type]  (the group's stacked programs)
        loss_params=params,
        train_data=None,
        val_data=None,
        probe_batch=None,
        store=CheckpointStore(run_dir / "checkpoints") if config.checkpoints else None,
        reporter=Reporter(enabled=config.progress, label=run_label(config), log=group_reporter.message, bars=False),
        model_factory=model_factory,
        lock=lock,
    )


# --------------------------------------------------------------------------------------------------- epochs
def _train_group(group: RunGroup, start_time: float) -> list[RunResult | NonFiniteLossError]:
    config = group.config
    compile_group(group)
    for epoch in group.reporter.epochs(group.progress[0].epoch + 1, config.epochs):
        if not group.active.any():
            break
        epoch_start = time.perf_counter()
        records = train_pass(group, epoch)
        evaluations, val_s = timed(
            evaluate_runs,
            group.programs.eval_step,
            group.state,
            group.val_data,
            config.eval_batch_size,
            group.loss_params,
            runs=group.active,
            sharding=batch_sharding(group.mesh),
        )
        telemetry, telemetry_s = timed(measure_gradients, group)
        tree = group.state.checkpoint_tree()
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
        packed = pack_runs(jax.tree.leaves(tree))
        for r in np.flatnonzero(group.active):
            records[r].update(val_s=val_s, grad_telemetry=telemetry[r], telemetry_s=telemetry_s)
            try:
                end_epoch(
                    group.runs[r],
                    group.progress[r],
                    records[r],
                    evaluations[r],
                    tree=template,
                    packed={k: v[r] for k, v in packed.items()},
                    epoch_start=epoch_start,
                    start_time=start_time,
                    time_share=1 / len(group.runs),
                )
            except NonFiniteLossError as error:
                group.freeze(r, error)
    return _test(group, start_time)


# ----------------------------------------------------------------------------------------------------- test
def _best_states(group: RunGroup) -> TrainState:
    """The stacked state of each active run's best epoch (a frozen run keeps its current state: not tested)."""
    tree = group.state.checkpoint_tree()
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
    replicated = jax.sharding.NamedSharding(group.mesh, jax.sharding.PartitionSpec())
    trees = [
        best_tree(run, progress, template, sharding=replicated) if on else run_slice(tree, r)
        for r, (run, progress, on) in enumerate(zip(group.runs, group.progress, group.active, strict=True))
    ]
    return group.state.replace_from_checkpoint(shard_runs(stack_runs(trees), group.mesh))


def _test(group: RunGroup, start_time: float) -> list[RunResult | NonFiniteLossError]:
    """Test every active run's best epoch in one pass over the test split; save and return the results."""
    active, test = group.active, group.runs[0].data.test
    state = _best_states(group)
    with contextlib.ExitStack() as stack:
        outputs = [
            stack.enter_context(prediction_sink(run)) if on else None
            for run, on in zip(group.runs, active, strict=True)
        ]
        evaluations = evaluate_runs(
            group.programs.eval_step,
            state,
            test,
            group.config.eval_batch_size,
            group.loss_params,
            runs=active,
            sharding=batch_sharding(group.mesh),
            on_volume=[None if o is None else o.on_volume for o in outputs],
        )
    wall_s = (time.perf_counter() - start_time) / len(group.runs)  # each run's share of the stack's time
    results: list[RunResult | NonFiniteLossError] = []
    for r, (run, progress) in enumerate(zip(group.runs, group.progress, strict=True)):
        if r in group.errors:
            results.append(group.errors[r])
            continue
        result = run_result(run, progress, evaluations[r], outputs[r], wall_s)
        save_run_result(result, run.run_dir)
        results.append(result)
    return results
