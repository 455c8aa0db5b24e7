"""A group of stacked runs: R runs at the same epoch, stacked on one ``('runs', 'data')`` mesh, and one training
pass of theirs (:mod:`segmime_jax.train.stacked` drives the epochs, validation, checkpoints and the test).

:func:`new_group` stacks the runs' states, loss parameters and step-key roots along a leading run axis split
over ``'runs'`` and places the shared data; :func:`compile_group` compiles the stacked programs
(:mod:`segmime_jax.train.stacked_step`); :func:`train_pass` is one epoch of every run over its own batches,
with its own plateau learning rate; a run whose loss or gradient norm is NaN/inf is frozen (:meth:`RunGroup.freeze`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from segmime_jax.losses import LossProgram
from segmime_jax.train.checkpoint import NonFiniteLossError, pack
from segmime_jax.train.config import TrainConfig
from segmime_jax.train.epoch_end import Pending, checked_loss
from segmime_jax.train.optim import learning_rates, set_learning_rate
from segmime_jax.train.programs import Programs, compile_announced, stacked_programs_for
from segmime_jax.train.progress import Reporter
from segmime_jax.train.run import Progress, Run, place_data, run_label, step_root
from segmime_jax.train.sharding import (
    batch_sharding,
    make_runs_mesh,
    runs_sharding,
    shard_runs,
    stack_runs,
    stacked_batch_sharding,
)
from segmime_jax.train.state import TrainState
from segmime_jax.train.telemetry import summarize_gradient


@dataclasses.dataclass
class RunGroup:
    """Runs at the same epoch, trained as one stack on one mesh."""

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
        return np.array([r not in self.errors for r in range(len(self.runs))])

    def freeze(self, index: int, error: NonFiniteLossError) -> None:
        self.errors[index] = error
        self.runs[index].reporter.message(f"{run_label(self.runs[index].config)}: {error} (the other runs go on)")


def new_group(
    runs: list[Run], progress: list[Progress], data: Any, loss_terms: Sequence[str], reporter: Reporter
) -> RunGroup:
    """Stack ``runs`` (all at the same epoch) on their mesh and place the shared data."""
    config = runs[0].config
    mesh = make_runs_mesh(len(runs), config.num_devices, batch_sizes=(config.batch_size, config.eval_batch_size))
    devices = jax.local_device_count() if config.num_devices is None else config.num_devices
    unused = devices - mesh.devices.size
    reporter.message(
        f"training {len(runs)} runs together on a ('runs', 'data') mesh of {mesh.shape['runs']} x "
        f"{mesh.shape['data']} devices"
        + (f" ({unused} of {devices} unused: 'runs' must divide the runs, 'data' the batch sizes)" if unused else "")
    )
    num_classes = data.train.num_classes
    programs = stacked_programs_for(
        config.optimizer, LossProgram(terms=tuple(loss_terms)), num_classes, augment=config.augment, mesh=mesh
    )
    train_data, val_data, probe_batch = place_data(config, data, mesh)
    state = shard_runs(stack_runs([p.state for p in progress]), mesh)
    for p in progress:
        p.state = None  # type: ignore[assignment]  (the stacked state holds it; frees the device memory)
    return RunGroup(
        runs=runs,
        progress=progress,
        mesh=mesh,
        programs=programs,
        train_data=train_data,
        val_data=val_data,
        probe_batch=probe_batch,
        loss_params=shard_runs(stack_runs([run.loss_params for run in runs]), mesh),
        roots=shard_runs(stack_runs([step_root(run.config.seed) for run in runs]), mesh),
        state=state,
        reporter=reporter,
    )


#: ``{dtype: (R, N)}``: :func:`~segmime_jax.train.checkpoint.pack` of each run of a stacked tree's leaves.
pack_runs = jax.jit(jax.vmap(pack))
_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def train_pass(group: RunGroup, epoch: int) -> list[dict[str, Any]]:
    """One pass of every run over its own shuffled batches, at each run's plateau rate; the runs' records."""
    from segmime_jax.data.pipeline import num_batches, stacked_train_batches

    config, mesh, start = group.config, group.mesh, time.perf_counter()
    rates = np.array(
        [c.base_learning_rate * p.plateau.scale for c, p in zip(_configs(group), group.progress, strict=True)]
    )
    state = group.state.replace(opt_state=set_learning_rate(group.state.opt_state, rates))
    step = int(np.asarray(jax.device_get(state.step))[group.active].max())
    total = num_batches(group.train_data, config.batch_size, config.last_batch)
    sums = np.zeros(len(group.runs))
    count, pending = 0, None
    active = jax.device_put(group.active, runs_sharding(mesh))
    batches = stacked_train_batches(
        group.train_data,
        config.batch_size,
        seeds=[c.seed for c in _configs(group)],
        epoch=epoch,
        mesh=mesh,
        sharding=stacked_batch_sharding(mesh),
        last_batch=config.last_batch,
    )
    for batch in group.reporter.steps(batches, total=total, epoch=epoch):
        size = int(batch["mask"].shape[1])  # the trimmed last batch is smaller
        keys = _fold_in(group.roots, step)
        state, metrics = group.programs.train_step(state, batch, keys, group.loss_params, active)
        if pending is not None:
            active = _account(group, pending, epoch, sums, active)
            count += pending.size
        pending, step = Pending(metrics, step, size), step + 1
    if pending is not None:
        _account(group, pending, epoch, sums, active)
        count += pending.size
    held = learning_rates(state.opt_state)  # the rates the optimiser state really used (float32)
    if not np.allclose(held, rates, rtol=1e-6, atol=0):
        raise RuntimeError(f"epoch {epoch} trained with learning rates {held}, expected {rates}")
    group.state = state
    train_s = time.perf_counter() - start
    return [
        {
            "epoch": epoch,
            "train_loss": sums[r] / max(count, 1),
            "learning_rate": float(rates[r]),
            "steps": step,
            "train_s": train_s,
        }
        for r in range(len(group.runs))
    ]


def _configs(group: RunGroup) -> list[TrainConfig]:
    return [run.config for run in group.runs]


def _account(group: RunGroup, pending: Pending, epoch: int, sums: np.ndarray, active: jax.Array) -> jax.Array:
    """Add a step's losses to ``sums``; freeze the runs whose loss or gradient was not finite. Returns the
    device-side ``active`` mask for the next steps."""
    metrics = jax.device_get({k: pending.metrics[k] for k in ("loss", "grad_norm")})
    frozen = len(group.errors)
    for r in np.flatnonzero(group.active):
        run_metrics = {k: v[r] for k, v in metrics.items()}
        try:
            sums[r] += (
                checked_loss(run_metrics, epoch=epoch, step=pending.step, store=group.runs[r].store) * pending.size
            )
        except NonFiniteLossError as error:
            group.freeze(r, error)
    return active if len(group.errors) == frozen else jax.device_put(group.active, runs_sharding(group.mesh))


def measure_gradients(group: RunGroup) -> list[dict[str, Any]]:
    """Each run's gradient telemetry on the fixed validation batch (``{}`` when off)."""
    if group.probe_batch is None:
        return [{} for _ in group.runs]
    out = jax.device_get(group.programs.probe(group.state, group.probe_batch, group.loss_params))
    return [summarize_gradient({k: v[r] for k, v in out.items()}) if on else {} for r, on in enumerate(group.active)]


def compile_group(group: RunGroup) -> None:
    """Compile the group's programs, announcing each (none when an earlier group on this mesh did)."""
    from segmime_jax.data.pipeline import eval_batches, stacked_train_batches

    config, mesh, log, size = group.config, group.mesh, group.reporter.message, len(group.runs)

    def first_batch(batch_size: int) -> dict[str, jax.Array]:
        return next(
            stacked_train_batches(
                group.train_data,
                batch_size,
                seeds=[c.seed for c in _configs(group)],
                epoch=1,
                mesh=mesh,
                sharding=stacked_batch_sharding(mesh),
                prefetch=0,
            )
        )

    batch = first_batch(config.batch_size)
    rest = (_fold_in(group.roots, 0), group.loss_params, jax.device_put(group.active, runs_sharding(mesh)))
    train_step = group.programs.train_step
    compile_announced(train_step, (group.state, batch, *rest), f"{size} runs, batches of {config.batch_size}", log)
    remainder = len(group.runs[0].data.train) % config.batch_size
    if remainder and config.last_batch == "trim":
        trimmed = first_batch(remainder)
        compile_announced(train_step, (group.state, trimmed, *rest), f"{size} runs, the last batch of {remainder}", log)
    _, eval_batch = next(
        eval_batches(group.val_data, config.eval_batch_size, sharding=batch_sharding(mesh), prefetch=0)
    )
    args = (group.state, eval_batch, group.loss_params)
    compile_announced(group.programs.eval_step, args, f"{size} runs, batches of {config.eval_batch_size}", log)
    if group.probe_batch is not None:
        args = (group.state, group.probe_batch, group.loss_params)
        compile_announced(group.programs.probe, args, f"{size} runs, a batch of {config.batch_size}", log)
