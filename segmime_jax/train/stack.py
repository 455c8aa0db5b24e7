"""A stack: runs at the same epoch trained together on one ``('runs', 'data')`` mesh, and its set-up.

:func:`new_stack` builds what the engine's epochs need (:mod:`segmime_jax.train.engine`): the mesh of the
stack's layout, the run-mapped programs, the data the runs share, and their states, loss parameters and
step-key roots stacked on a leading run axis split over ``'runs'``; :func:`compile_stack` compiles every program
before the first epoch, so compilation is announced and timed apart from training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from segmime_jax.distributed import is_primary
from segmime_jax.losses import LossProgram
from segmime_jax.train.checkpoint import NonFiniteLossError
from segmime_jax.train.config import TrainConfig
from segmime_jax.train.programs import Programs, compile_announced, programs_for
from segmime_jax.train.progress import Reporter
from segmime_jax.train.run import Progress, Run, initial_state, step_root
from segmime_jax.train.samples import telemetry_batch
from segmime_jax.train.sharding import (
    batch_sharding,
    make_mesh,
    runs_batch_sharding,
    shard_batch,
    shard_runs,
    stack_runs,
)
from segmime_jax.train.state import TrainState

_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


@dataclasses.dataclass
class Stack:
    """Runs at the same epoch, trained together on one ``('runs', 'data')`` mesh."""

    runs: list[Run]
    progress: list[Progress]
    mesh: Any
    programs: Programs
    train_data: Any
    val_data: Any
    probe_batch: dict[str, jax.Array] | None
    loss_params: Any  # stacked, split over 'runs'
    roots: jax.Array  # (R,) step-key roots, split over 'runs'
    state: TrainState  # stacked, split over 'runs'
    reporter: Reporter
    errors: dict[int, NonFiniteLossError] = dataclasses.field(default_factory=dict)

    @property
    def config(self) -> TrainConfig:
        return self.runs[0].config

    @property
    def active(self) -> np.ndarray:
        """``(R,)`` bool: the runs not frozen by a divergence."""
        return np.array([r not in self.errors for r in range(len(self.runs))])

    def active_on_device(self) -> jax.Array:
        """:attr:`active`, split over ``'runs'`` (the train step's mask)."""
        return shard_runs(self.active, self.mesh)

    def step_keys(self, step: int) -> jax.Array:
        """``(R,)`` the runs' keys of global step ``step`` (each run's ``fold_in(root, step)``)."""
        return _fold_in(self.roots, step)

    def freeze(self, index: int, error: NonFiniteLossError) -> None:
        """Leave run ``index`` out from now on: it diverged (``error``)."""
        self.errors[index] = error
        if len(self.runs) > 1:
            self.runs[index].reporter.message(f"{self.runs[index].reporter.label}: {error} (the other runs go on)")


def new_stack(
    runs: list[Run], progress: list[Progress], shape: tuple[int, int], loss_terms: Sequence[str], log: Any
) -> Stack:
    """Stack ``runs`` (all at the same epoch) on a mesh of ``shape`` (runs, data) and place the data they share."""
    from segmime_jax.data.pipeline import to_device

    config, num_classes = runs[0].config, runs[0].data.train.num_classes
    mesh = make_mesh(shape[1], runs=shape[0], batch_sizes=(config.batch_size, config.eval_batch_size))
    if len(runs) == 1:
        reporter = runs[0].reporter  # the run's own voice and bars
    else:
        reporter = Reporter(enabled=config.progress, label=f"{len(runs)} runs", log=log, quiet=not is_primary())
        for run in runs:
            run.reporter.follow(reporter)
    data = runs[0].data
    train_data, val_data = data.train, data.val
    # Several processes: each feeds its own rows of every batch from the host (process-local input).
    if config.data_on_device and jax.process_count() == 1:
        sharding = batch_sharding(mesh)
        train_data, val_data = to_device(data.train, sharding=sharding), to_device(data.val, sharding=sharding)
    probe = shard_batch(telemetry_batch(data.val, config.batch_size), mesh) if config.telemetry else None
    states = [initial_state(run, p, mesh) for run, p in zip(runs, progress, strict=True)]
    return Stack(
        runs=runs,
        progress=progress,
        mesh=mesh,
        programs=programs_for(
            config.optimizer, LossProgram(terms=tuple(loss_terms)), num_classes, augment=config.augment, mesh=mesh
        ),
        train_data=train_data,
        val_data=val_data,
        probe_batch=probe,
        loss_params=shard_runs(stack_runs([run.loss_params for run in runs]), mesh),
        roots=shard_runs(stack_runs([step_root(run.config.seed) for run in runs]), mesh),
        state=shard_runs(stack_runs(states), mesh),
        reporter=reporter,
    )


def compile_stack(stack: Stack) -> None:
    """Compile every program the epochs will call, announcing each (none when an earlier stack compiled them)."""
    from segmime_jax.data.pipeline import eval_batches, run_train_batches

    config, log, runs = stack.config, stack.reporter.message, len(stack.runs)
    what = f"{runs} runs, " if runs > 1 else ""

    def first_batch(batch_size: int) -> dict[str, jax.Array]:
        seeds = [run.config.seed for run in stack.runs]
        sharding = runs_batch_sharding(stack.mesh)
        return next(
            run_train_batches(stack.train_data, batch_size, seeds=seeds, epoch=1, sharding=sharding, prefetch=0)
        )

    rest = (stack.step_keys(0), stack.loss_params, stack.active_on_device())
    train_step = stack.programs.train_step
    compile_announced(
        train_step, (stack.state, first_batch(config.batch_size), *rest), f"{what}batches of {config.batch_size}", log
    )
    remainder = len(stack.runs[0].data.train) % config.batch_size
    if remainder and config.last_batch == "trim":
        compile_announced(
            train_step, (stack.state, first_batch(remainder), *rest), f"{what}the last batch of {remainder}", log
        )
    sharding = batch_sharding(stack.mesh)
    _, eval_batch = next(eval_batches(stack.val_data, config.eval_batch_size, sharding=sharding, prefetch=0))
    args = (stack.state, eval_batch, stack.loss_params)
    compile_announced(stack.programs.eval_step, args, f"{what}batches of {config.eval_batch_size}", log)
    if stack.probe_batch is not None:
        args = (stack.state, stack.probe_batch, stack.loss_params)
        compile_announced(stack.programs.probe, args, f"{what}a batch of {config.batch_size}", log)
