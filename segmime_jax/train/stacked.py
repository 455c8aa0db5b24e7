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

Resumption: each run restores its own latest checkpoint; runs at different epochs (a kill between two runs'
checkpoint saves) are trained as separate stacks, one per epoch reached, which end the same.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from segmime_jax.losses import LossProgram
from segmime_jax.train.checkpoint import NonFiniteLossError, pack
from segmime_jax.train.config import RESUMABLE_CHANGES, TrainConfig
from segmime_jax.train.epoch_end import (
    Pending,
    best_tree,
    checked_loss,
    end_epoch,
    run_result,
    test_outputs,
    timed,
    trim_batch,
)
from segmime_jax.train.evaluate import evaluate_runs
from segmime_jax.train.optim import learning_rates, set_learning_rate
from segmime_jax.train.programs import Programs, compile_announced, stacked_programs_for
from segmime_jax.train.progress import Reporter
from segmime_jax.train.results import RunResult, save_run_result
from segmime_jax.train.run import (
    ModelFactory,
    Progress,
    Run,
    check_run,
    loss_program,
    place_data,
    restore_or_start,
    run_label,
    step_root,
)
from segmime_jax.train.sharding import (
    batch_sharding,
    make_data_mesh,
    make_runs_mesh,
    run_slice,
    runs_sharding,
    shard_runs,
    stack_runs,
    stacked_batch_sharding,
)
from segmime_jax.train.state import TrainState
from segmime_jax.train.telemetry import summarize_gradient

#: TrainConfig fields that may differ between runs trained together: per-run arrays in the stacked step, or
#: (the ``RESUMABLE_CHANGES`` but ``epochs``) fields that change no number.
PER_RUN_FIELDS = frozenset(
    {"loss", "loss_classes", "learning_rate", "adam_b1", "adam_b2", "momentum", "weight_decay", "seed"}
) | (RESUMABLE_CHANGES - {"epochs"})


def stack_key(config: TrainConfig) -> TrainConfig:
    """What runs trained together must share: ``config`` with its :data:`PER_RUN_FIELDS` set to the defaults
    (model, optimiser kind, batch sizes, epochs, augmentation, precision, devices, ...)."""
    defaults = TrainConfig()
    return dataclasses.replace(config, **{name: getattr(defaults, name) for name in PER_RUN_FIELDS})


def check_stackable(configs: Sequence[TrainConfig]) -> None:
    """ValueError naming the first field, other than :data:`PER_RUN_FIELDS`, in which the runs differ."""
    if not configs:
        raise ValueError("no runs to train")
    first = stack_key(configs[0])
    for config in configs[1:]:
        other = stack_key(config)
        if other != first:
            name = next(f.name for f in dataclasses.fields(first) if getattr(first, f.name) != getattr(other, f.name))
            raise ValueError(
                f"runs trained together must share {name} (got {getattr(first, name)!r} and {getattr(other, name)!r})"
            )


@dataclasses.dataclass
class _Group:
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
      configs: the R runs' configurations; they may differ only in :data:`PER_RUN_FIELDS` (ValueError otherwise).
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
    runs = [
        _new_run(c, data, pathlib.Path(d), resume, model_factory, loss_terms, mesh, group_reporter)
        for c, d in zip(configs, run_dirs, strict=True)
    ]
    out: list[RunResult | NonFiniteLossError | None] = [None] * len(runs)
    try:
        progress = [restore_or_start(run, resume) for run in runs]
        by_epoch = itertools.groupby(
            sorted(range(len(runs)), key=lambda i: progress[i].epoch), key=lambda i: progress[i].epoch
        )
        for _, members in by_epoch:
            members = list(members)
            group = _new_group(
                [runs[i] for i in members], [progress[i] for i in members], data, loss_terms, group_reporter
            )
            for i, result in zip(members, _train_group(group, start_time), strict=True):
                out[i] = result
    finally:
        for run in runs:
            if run.store is not None:
                run.store.close()
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

    check_run(config, data, run_dir, resume)
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
    )


def _new_group(
    runs: list[Run], progress: list[Progress], data: Any, loss_terms: Sequence[str], reporter: Reporter
) -> _Group:
    """Stack ``runs`` (all at the same epoch) on their mesh and place the shared data."""
    config = runs[0].config
    mesh = make_runs_mesh(len(runs), config.num_devices, batch_sizes=(config.batch_size, config.eval_batch_size))
    devices = jax.local_device_count() if config.num_devices is None else config.num_devices
    reporter.message(
        f"training {len(runs)} runs together on a ('runs', 'data') mesh of {mesh.shape['runs']} x "
        f"{mesh.shape['data']} devices"
        + (
            f" ({devices - mesh.devices.size} of {devices} unused: the 'runs' axis divides the {len(runs)} runs)"
            if mesh.devices.size < devices
            else ""
        )
    )
    num_classes = data.train.num_classes
    programs = stacked_programs_for(
        config.optimizer, LossProgram(terms=tuple(loss_terms)), num_classes, augment=config.augment, mesh=mesh
    )
    train_data, val_data, probe_batch = place_data(config, data, mesh)
    state = shard_runs(stack_runs([p.state for p in progress]), mesh)
    for p in progress:
        p.state = None  # type: ignore[assignment]  (the stacked state holds it; frees the device memory)
    return _Group(
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


# --------------------------------------------------------------------------------------------------- epochs
def _train_group(group: _Group, start_time: float) -> list[RunResult | NonFiniteLossError]:
    config = group.config
    _compile(group)
    for epoch in group.reporter.epochs(group.progress[0].epoch + 1, config.epochs):
        if not group.active.any():
            break
        epoch_start = time.perf_counter()
        records = _train_epoch(group, epoch)
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
        telemetry, telemetry_s = timed(_measure_gradients, group)
        tree = group.state.checkpoint_tree()
        template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
        packed = _pack_runs(jax.tree.leaves(tree))
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
                )
            except NonFiniteLossError as error:
                group.freeze(r, error)
    return _test(group, start_time)


_pack_runs = jax.jit(jax.vmap(pack))
_fold_in = jax.jit(jax.vmap(jax.random.fold_in, in_axes=(0, None)))


def _train_epoch(group: _Group, epoch: int) -> list[dict[str, Any]]:
    """One pass of every run over its own shuffled batches, at each run's plateau rate; the runs' records."""
    from segmime_jax.data.pipeline import num_batches, stacked_train_batches

    config, mesh, start = group.config, group.mesh, time.perf_counter()
    rates = np.array(
        [c.base_learning_rate * p.plateau.scale for c, p in zip(_configs(group), group.progress, strict=True)]
    )
    state = group.state.replace(opt_state=set_learning_rate(group.state.opt_state, rates))
    step = int(np.asarray(jax.device_get(state.step))[group.active].max())
    remainder, total = (
        len(group.runs[0].data.train) % config.batch_size,
        num_batches(group.train_data, config.batch_size),
    )
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
    )
    for index, batch in enumerate(group.reporter.steps(batches, total=total, epoch=epoch)):
        size = config.batch_size
        if remainder and index == total - 1:
            if config.last_batch == "drop":
                continue
            batch, size = _trim(batch, remainder, mesh), remainder
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


def _configs(group: _Group) -> list[TrainConfig]:
    return [run.config for run in group.runs]


def _trim(batch: dict[str, jax.Array], count: int, mesh: Any) -> dict[str, jax.Array]:
    sharding = stacked_batch_sharding(mesh, count)
    return trim_batch(batch, count, lambda b: jax.device_put(b, sharding), axis=1)


def _account(group: _Group, pending: Pending, epoch: int, sums: np.ndarray, active: jax.Array) -> jax.Array:
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


def _measure_gradients(group: _Group) -> list[dict[str, Any]]:
    """Each run's gradient telemetry on the fixed validation batch (``{}`` when off)."""
    if group.probe_batch is None:
        return [{} for _ in group.runs]
    out = jax.device_get(group.programs.probe(group.state, group.probe_batch, group.loss_params))
    return [summarize_gradient({k: v[r] for k, v in out.items()}) if on else {} for r, on in enumerate(group.active)]


def _compile(group: _Group) -> None:
    """Compile the group's programs, announcing each (none when an earlier group on this mesh did)."""
    from segmime_jax.data.pipeline import eval_batches, stacked_train_batches

    config, mesh, log, size = group.config, group.mesh, group.reporter.message, len(group.runs)
    batch = next(
        stacked_train_batches(
            group.train_data,
            config.batch_size,
            seeds=[c.seed for c in _configs(group)],
            epoch=1,
            mesh=mesh,
            sharding=stacked_batch_sharding(mesh),
            prefetch=0,
        )
    )
    rest = (_fold_in(group.roots, 0), group.loss_params, jax.device_put(group.active, runs_sharding(mesh)))
    train_step = group.programs.train_step
    compile_announced(train_step, (group.state, batch, *rest), f"{size} runs, batches of {config.batch_size}", log)
    remainder = len(group.runs[0].data.train) % config.batch_size
    if remainder and config.last_batch == "trim":
        trimmed = jax.device_put(
            {k: v[:, :remainder] for k, v in batch.items()}, stacked_batch_sharding(mesh, remainder)
        )
        compile_announced(train_step, (group.state, trimmed, *rest), f"{size} runs, the last batch of {remainder}", log)
    _, eval_batch = next(
        eval_batches(group.val_data, config.eval_batch_size, sharding=batch_sharding(mesh), prefetch=0)
    )
    args = (group.state, eval_batch, group.loss_params)
    compile_announced(group.programs.eval_step, args, f"{size} runs, batches of {config.eval_batch_size}", log)
    if group.probe_batch is not None:
        args = (group.state, group.probe_batch, group.loss_params)
        compile_announced(group.programs.probe, args, f"{size} runs, a batch of {config.batch_size}", log)


# ----------------------------------------------------------------------------------------------------- test
def _best_states(group: _Group) -> TrainState:
    """The stacked state of each active run's best epoch (a frozen run keeps its current state: not tested)."""
    tree = group.state.checkpoint_tree()
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), tree)
    replicated = jax.sharding.NamedSharding(group.mesh, jax.sharding.PartitionSpec())
    trees = [
        best_tree(run, progress, template, sharding=replicated) if on else run_slice(tree, r)
        for r, (run, progress, on) in enumerate(zip(group.runs, group.progress, group.active, strict=True))
    ]
    return group.state.replace_from_checkpoint(shard_runs(stack_runs(trees), group.mesh))


def _test(group: _Group, start_time: float) -> list[RunResult | NonFiniteLossError]:
    """Test every active run's best epoch in one pass over the test split; save and return the results."""
    active, test = group.active, group.runs[0].data.test
    state = _best_states(group)
    with contextlib.ExitStack() as stack:
        outputs = [
            stack.enter_context(test_outputs(run)) if on else None for run, on in zip(group.runs, active, strict=True)
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
    wall_s = time.perf_counter() - start_time
    results: list[RunResult | NonFiniteLossError] = []
    for r, (run, progress) in enumerate(zip(group.runs, group.progress, strict=True)):
        if r in group.errors:
            results.append(group.errors[r])
            continue
        result = run_result(run, progress, evaluations[r], outputs[r].examples(), wall_s)
        save_run_result(result, run.run_dir)
        results.append(result)
    return results
