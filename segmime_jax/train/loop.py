"""The training loop: train for a fixed number of epochs, validate, checkpoint, then test the best model.

:func:`train_and_evaluate` reads top to bottom: set the run up (:func:`_setup`), restore it or start it
(:func:`_restore_or_start`), compile its programs (:func:`_compile`), then per epoch :func:`_train_epoch`,
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
from flax import nnx

from segmime_jax.atomic_files import json_ready, write_text_atomic
from segmime_jax.data.dataset import fingerprint_differences
from segmime_jax.losses import LossProgram
from segmime_jax.train.checkpoint import CheckpointStore, check_finite, check_packed_finite, pack, unpack
from segmime_jax.train.config import PRECISIONS, RESUMABLE_CHANGES, TrainConfig
from segmime_jax.train.evaluate import Evaluation, evaluate
from segmime_jax.train.optim import PlateauState, get_learning_rate, plateau_update, set_learning_rate
from segmime_jax.train.programs import Programs, compile_announced, programs_for
from segmime_jax.train.progress import Reporter
from segmime_jax.train.results import METRICS_FILE, RESULT_FILE, RunResult, save_run_result
from segmime_jax.train.samples import collect_examples, example_slices, telemetry_batch
from segmime_jax.train.sharding import batch_sharding, make_data_mesh, replicate, shard_batch
from segmime_jax.train.state import TrainState
from segmime_jax.train.telemetry import summarize_gradient

# Model factory: (num_classes, *, rngs, dtype) -> nnx.Module
ModelFactory = Callable[..., nnx.Module]


def step_key(seed: int, step: int) -> jax.Array:
    """The key of optimiser step ``step``: ``fold_in(fold_in(key(seed), 1), step)``."""
    return jax.random.fold_in(_step_root(seed), step)


def _step_root(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), 1)


@dataclasses.dataclass
class _Run:
    """What stays fixed during a run."""

    config: TrainConfig
    data: Any
    run_dir: pathlib.Path
    fingerprint: dict[str, str]
    mesh: Any
    sharding: Any
    programs: Programs
    loss_params: Any
    train_data: Any
    val_data: Any
    probe_batch: dict[str, jax.Array] | None
    store: CheckpointStore | None
    reporter: Reporter
    model_factory: ModelFactory | None


@dataclasses.dataclass
class _Progress:
    """What changes from epoch to epoch, and what a checkpoint restores."""

    state: TrainState
    history: list[dict] = dataclasses.field(default_factory=list)
    plateau: PlateauState = dataclasses.field(default_factory=PlateauState)
    best_metric: float = -math.inf
    best_epoch: int = 0
    epoch: int = 0  # last completed epoch
    elapsed_before: float = 0.0  # seconds spent on this run by earlier (interrupted) calls
    best_packed: dict[str, jax.Array] | None = None  # in-memory copy of the best state when not checkpointing


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
        ``metrics.jsonl`` (one JSON line per epoch, the same dicts as ``RunResult.history``),
        ``predictions/<volume>.nii.gz`` (test predictions, when ``config.write_predictions``),
        ``result.json`` (:meth:`RunResult.to_json` without the examples) and ``examples.npz``.
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
    run = _setup(
        config, data, pathlib.Path(run_dir), resume=resume, model_factory=model_factory, loss_terms=loss_terms, log=log
    )
    try:
        progress = _restore_or_start(run, resume)
        _compile(run, progress.state)
        for epoch in run.reporter.epochs(progress.epoch + 1, config.epochs):
            epoch_start = time.perf_counter()
            record = _train_epoch(run, progress, epoch)
            evaluation, record["val_s"] = _timed(
                evaluate,
                run.programs.eval_step,
                progress.state,
                run.val_data,
                config.eval_batch_size,
                run.loss_params,
                sharding=run.sharding,
            )
            record["grad_telemetry"], record["telemetry_s"] = _timed(_measure_gradient, run, progress.state)
            _end_epoch(run, progress, record, evaluation, epoch_start, start_time)
        test_eval, examples = _test(run, _best_state(run, progress))
    finally:
        if run.store is not None:
            run.store.close()
    result = RunResult(
        config=config,
        class_names=tuple(data.train.class_names),
        history=progress.history,
        best_epoch=progress.best_epoch,
        test_volume_names=test_eval.volume_names,
        test_dsc=test_eval.dsc,
        test_clece=test_eval.calibration.clece(),
        reliability=test_eval.calibration.reliability(),
        examples=examples,
        wall_time_s=progress.elapsed_before + time.perf_counter() - start_time,
        data=run.fingerprint,
    )
    save_run_result(result, run.run_dir)
    return result


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


# -------------------------------------------------------------------------------------------------- set-up
def _setup(
    config: TrainConfig,
    data: Any,
    run_dir: pathlib.Path,
    *,
    resume: bool,
    model_factory: ModelFactory | None,
    loss_terms: Sequence[str] | None,
    log: Callable[[str], None] | None,
) -> _Run:
    """Check the run folder and the data, build the mesh, the programs and the device-side data."""
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_dir(run_dir, resume)
    if resume and not config.checkpoints:
        raise ValueError("resume=True needs checkpoints=True (there is nothing to resume from otherwise)")
    for split in ("train", "val", "test"):
        if len(getattr(data, split)) == 0:
            raise ValueError(f"the {split} split of dataset {getattr(data, 'name', '?')!r} is empty")
    num_classes = data.train.num_classes
    if data.val.num_classes != num_classes or data.test.num_classes != num_classes:
        raise ValueError("train, val and test splits have different class lists")
    if config.last_batch == "drop" and len(data.train) < config.batch_size:
        raise ValueError(
            f"last_batch='drop' with {len(data.train)} training slices and batch size "
            f"{config.batch_size} leaves no batch"
        )

    from segmime_jax.data.pipeline import to_device

    mesh = make_data_mesh(config.num_devices, batch_sizes=(config.batch_size, config.eval_batch_size))
    sharding = batch_sharding(mesh)
    params = config.loss_params(num_classes)
    loss = LossProgram(terms=tuple(loss_terms)) if loss_terms is not None else LossProgram.covering(params)
    loss.check(params)
    programs = programs_for(config.optimizer, loss, num_classes, augment=config.augment, mesh=mesh)
    train_data, val_data = data.train, data.val
    if config.data_on_device:
        train_data, val_data = to_device(data.train, sharding=sharding), to_device(data.val, sharding=sharding)
    probe_batch = shard_batch(telemetry_batch(data.val, config.batch_size), mesh) if config.telemetry else None
    store = CheckpointStore(run_dir / "checkpoints") if config.checkpoints else None
    label = f"{config.model}/{config.optimizer}-{config.loss}" + (f"/seed{config.seed}" if config.seed else "")
    return _Run(
        config=config,
        data=data,
        run_dir=run_dir,
        fingerprint=data.fingerprint(),
        mesh=mesh,
        sharding=sharding,
        programs=programs,
        loss_params=replicate(params, mesh),
        train_data=train_data,
        val_data=val_data,
        probe_batch=probe_batch,
        store=store,
        reporter=Reporter(enabled=config.progress, label=label, log=log),
        model_factory=model_factory,
    )


def _build_model(config: TrainConfig, num_classes: int, model_factory: ModelFactory | None) -> nnx.Module:
    root = jax.random.key(config.seed)
    rngs = nnx.Rngs(params=jax.random.fold_in(root, 0), dropout=jax.random.fold_in(root, 2))
    dtype = PRECISIONS[config.precision]
    if model_factory is not None:
        return model_factory(num_classes, rngs=rngs, dtype=dtype)
    from segmime_jax.models import build_model

    return build_model(config.model, num_classes, rngs=rngs, dtype=dtype)


def _check_run_dir(run_dir: pathlib.Path, resume: bool) -> None:
    used = [
        p.name
        for p in (run_dir / "checkpoints", run_dir / METRICS_FILE, run_dir / RESULT_FILE)
        if p.exists() and (not p.is_dir() or any(p.iterdir()))
    ]
    if used and not resume:
        raise FileExistsError(
            f"{run_dir} already holds a run ({', '.join(used)}); pass resume=True to continue "
            "it, or use a new run directory"
        )


def _restore_or_start(run: _Run, resume: bool) -> _Progress:
    """A new state from the seed, replaced by the latest checkpoint's when resuming; ``metrics.jsonl``
    rewritten to the history the run continues from."""
    config = run.config
    model = _build_model(config, run.data.train.num_classes, run.model_factory)
    progress = _Progress(state=replicate(TrainState.create(model, config.build_optimizer()), run.mesh))
    restored = run.store.restore(progress.state.checkpoint_tree()) if resume and run.store is not None else None
    if restored is not None:
        epoch, tree, meta = restored
        _check_resumable(run, epoch, meta)
        progress.state = progress.state.replace_from_checkpoint(tree)
        progress.history = list(meta["history"])
        progress.plateau = PlateauState.from_json(meta["plateau"])
        progress.best_metric, progress.best_epoch = float(meta["best_metric"]), int(meta["best_epoch"])
        progress.epoch = epoch
        progress.elapsed_before = float(meta["elapsed_s"])
        run.reporter.message(
            f"resuming {run.run_dir} from its epoch {epoch} of {config.epochs} (best so far: "
            f"epoch {progress.best_epoch}, validation DSC {100 * progress.best_metric:.1f}%)"
        )
    write_text_atomic(run.run_dir / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in progress.history))
    return progress


def _check_resumable(run: _Run, epoch: int, meta: dict[str, Any]) -> None:
    current = json_ready(run.config)
    changed = [
        f"{k}: {meta['config'].get(k)!r} -> {v!r}"
        for k, v in current.items()
        if k not in RESUMABLE_CHANGES and meta["config"].get(k) != v
    ]
    if changed:
        raise ValueError(f"cannot resume {run.run_dir}: the configuration changed ({'; '.join(changed)})")
    other_data = fingerprint_differences(meta.get("data"), run.fingerprint)
    if other_data:
        raise ValueError(
            f"cannot resume {run.run_dir}: it was trained on other data (different "
            f"{', '.join(other_data)}; did the image size, data root, number of cases, data seed or "
            "split change?)"
        )
    if epoch > run.config.epochs:
        raise ValueError(
            f"cannot resume {run.run_dir}: its checkpoint is at epoch {epoch}, past epochs={run.config.epochs}"
        )


def _compile(run: _Run, state: TrainState) -> None:
    """Compile every program the epochs will call, announcing each (none when another run compiled them)."""
    from segmime_jax.data.pipeline import eval_batches, train_batches

    config, log = run.config, run.reporter.message
    key = step_key(config.seed, 0)
    batch = next(
        iter(
            train_batches(
                run.train_data, config.batch_size, seed=config.seed, epoch=1, sharding=run.sharding, prefetch=0
            )
        )
    )
    compile_announced(
        run.programs.train_step, (state, batch, key, run.loss_params), f"batches of {config.batch_size}", log
    )
    remainder = len(run.data.train) % config.batch_size
    if remainder and config.last_batch == "trim":
        trimmed = shard_batch({k: v[:remainder] for k, v in batch.items()}, run.mesh)
        compile_announced(
            run.programs.train_step, (state, trimmed, key, run.loss_params), f"the last batch of {remainder}", log
        )
    _, eval_batch = next(iter(eval_batches(run.val_data, config.eval_batch_size, sharding=run.sharding, prefetch=0)))
    compile_announced(
        run.programs.eval_step, (state, eval_batch, run.loss_params), f"batches of {config.eval_batch_size}", log
    )
    if run.probe_batch is not None:
        compile_announced(
            run.programs.probe, (state, run.probe_batch, run.loss_params), f"a batch of {config.batch_size}", log
        )


# --------------------------------------------------------------------------------------------------- epochs
@dataclasses.dataclass
class _Pending:
    """A dispatched step whose loss and gradient norm are fetched (and checked) one step later."""

    metrics: dict[str, jax.Array]
    step: int
    size: int


def _train_epoch(run: _Run, progress: _Progress, epoch: int) -> dict[str, Any]:
    """One shuffled pass over the training slices at the plateau's learning rate; the start of the record."""
    from segmime_jax.data.pipeline import num_batches, train_batches

    config = run.config
    start = time.perf_counter()
    learning_rate = config.base_learning_rate * progress.plateau.scale
    state = progress.state.replace(opt_state=set_learning_rate(progress.state.opt_state, learning_rate))
    step = int(jax.device_get(state.step))
    step_root = _step_root(config.seed)
    remainder = len(run.data.train) % config.batch_size
    total = num_batches(run.data.train, config.batch_size)
    loss_sum, loss_count = 0.0, 0
    pending: _Pending | None = None
    batches = train_batches(run.train_data, config.batch_size, seed=config.seed, epoch=epoch, sharding=run.sharding)
    for index, batch in enumerate(run.reporter.steps(batches, total=total, epoch=epoch)):
        size = config.batch_size
        if remainder and index == total - 1:
            if config.last_batch == "drop":
                continue
            batch, size = _trim(batch, remainder, run.mesh), remainder
        state, metrics = run.programs.train_step(state, batch, jax.random.fold_in(step_root, step), run.loss_params)
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


def _trim(batch: dict[str, jax.Array], count: int, mesh: Any) -> dict[str, jax.Array]:
    """The first ``count`` (real) slices of a padded batch, placed on ``mesh``."""
    mask = np.asarray(jax.device_get(batch["mask"]), bool)
    if mask[:count].sum() != count or mask[count:].any():
        raise RuntimeError(f"expected the padding of the last batch after its {count} real slices, got mask {mask}")
    return shard_batch({k: v[:count] for k, v in batch.items()}, mesh)


def _measure_gradient(run: _Run, state: TrainState) -> dict[str, Any]:
    """Gradient telemetry on the fixed validation batch (``{}`` when off)."""
    if run.probe_batch is None:
        return {}
    return summarize_gradient(run.programs.probe(state, run.probe_batch, run.loss_params))


def _end_epoch(
    run: _Run,
    progress: _Progress,
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
    with (run.run_dir / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(progress.history[-1]) + "\n")
    run.reporter.epoch_done(
        progress.history[-1], last=config.epochs, best_metric=progress.best_metric, best_epoch=progress.best_epoch
    )


# ----------------------------------------------------------------------------------------------------- test
def _best_state(run: _Run, progress: _Progress) -> TrainState:
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


def _test(run: _Run, state: TrainState) -> tuple[Evaluation, dict[str, np.ndarray]]:
    """Evaluate ``state`` on the test split; write the NIfTI predictions; collect the Figure 4 examples."""
    config, test = run.config, run.data.test
    wanted = example_slices(test, config.num_examples)
    picked: dict[int, np.ndarray] = {}
    writer: Any = contextlib.nullcontext(None)
    if config.write_predictions:
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

        evaluation = evaluate(
            run.programs.eval_step,
            state,
            test,
            config.eval_batch_size,
            run.loss_params,
            sharding=run.sharding,
            on_volume=on_volume,
        )
    return evaluation, collect_examples(test, wanted, picked)
