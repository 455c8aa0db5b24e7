"""One run's host side: what stays fixed (:class:`Run`: folder, lock, checkpoints, voice, loss parameters), what
an epoch advances and a checkpoint restores (:class:`Progress`), and how a run starts: check the folder and the
data (:func:`open_run`), restore the latest checkpoint's progress (:func:`restore_progress`) and its state or
initialise that from the seed (:func:`initial_state`).

The engine that trains runs, alone or many together, is :mod:`segmime_jax.train.engine`."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
from flax import nnx

from segmime_jax.atomic_files import json_ready, write_text_atomic
from segmime_jax.data.dataset import fingerprint_differences
from segmime_jax.distributed import barrier, is_primary
from segmime_jax.losses import LossParams, LossProgram
from segmime_jax.train.checkpoint import CheckpointStore
from segmime_jax.train.config import PRECISIONS, RESUMABLE_CHANGES, TrainConfig
from segmime_jax.train.optim import PlateauState
from segmime_jax.train.progress import Reporter
from segmime_jax.train.results import METRICS_FILE, RESULT_FILE
from segmime_jax.train.run_lock import RunLock
from segmime_jax.train.sharding import replicate
from segmime_jax.train.state import TrainState

# Model factory: (num_classes, *, rngs, dtype) -> nnx.Module
ModelFactory = Callable[..., nnx.Module]


def step_root(seed: int) -> jax.Array:
    """The root every step key folds its step number into."""
    return jax.random.fold_in(jax.random.key(seed), 1)


@dataclasses.dataclass
class Run:
    """What stays fixed during a run (its devices are those of its stack: :mod:`segmime_jax.train.engine`)."""

    config: TrainConfig
    data: Any
    run_dir: pathlib.Path
    fingerprint: dict[str, str]
    loss_params: LossParams  # host arrays
    store: CheckpointStore | None
    reporter: Reporter
    model_factory: ModelFactory | None
    events: Any = None  # the TensorBoard writer (segmime_jax.train.epoch_end.open_events), process 0 only
    lock: RunLock | None = None  # held while the run trains (process 0), released by close()

    def close(self) -> None:
        """Close the TensorBoard writer and the checkpoint store, and give the run's lock back."""
        if self.events is not None:
            self.events.close()
        if self.store is not None:
            self.store.close()
        if self.lock is not None:
            self.lock.release()


@dataclasses.dataclass
class Progress:
    """What changes from epoch to epoch, and what a checkpoint restores (the state itself lives in the stack)."""

    history: list[dict] = dataclasses.field(default_factory=list)
    plateau: PlateauState = dataclasses.field(default_factory=PlateauState)
    best_metric: float = -math.inf
    best_epoch: int = 0
    epoch: int = 0  # last completed epoch
    elapsed_before: float = 0.0  # seconds spent on this run by earlier (interrupted) calls
    best_packed: dict[str, jax.Array] | None = None  # in-memory copy of the best state when not checkpointing


# -------------------------------------------------------------------------------------------------- set-up
def open_run(
    config: TrainConfig,
    data: Any,
    run_dir: pathlib.Path,
    *,
    resume: bool,
    model_factory: ModelFactory | None,
    loss_terms: Sequence[str] | None,
    log: Callable[[str], None] | None,
) -> Run:
    """Check the run folder and the data (:func:`check_run`) and open the run; it holds its folder's lock
    (:mod:`segmime_jax.train.run_lock`) until :meth:`Run.close`."""
    lock = check_run(config, data, run_dir, resume)
    try:
        _, params = loss_program(config, data.train.num_classes, loss_terms)
        return Run(
            config=config,
            data=data,
            run_dir=run_dir,
            fingerprint=data.fingerprint(),
            loss_params=params,
            store=CheckpointStore(run_dir / "checkpoints") if config.checkpoints else None,
            reporter=Reporter(enabled=config.progress, label=run_label(config), log=log, quiet=not is_primary()),
            model_factory=model_factory,
            lock=lock,
        )
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def check_run(config: TrainConfig, data: Any, run_dir: pathlib.Path, resume: bool) -> RunLock | None:
    """Take ``run_dir``'s lock (process 0; :class:`~segmime_jax.train.run_lock.RunInUseError` if another process
    trains it) and make the folder; refuse a folder that holds a run unless resuming, empty splits, other class
    lists, and a batch size that leaves no batch (ValueError, FileExistsError). Returns the lock (None on the
    other processes), given back if a check fails."""
    lock = RunLock(run_dir).acquire() if is_primary() else None
    try:
        _check_run(config, data, run_dir, resume)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return lock


def _check_run(config: TrainConfig, data: Any, run_dir: pathlib.Path, resume: bool) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_dir(run_dir, resume)
    barrier(f"checked {run_dir}")  # before process 0 writes into it
    if resume and not config.checkpoints:
        raise ValueError("continuing a run needs its checkpoints (--checkpoints, checkpoints=True from Python)")
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


def run_label(config: TrainConfig) -> str:
    """How a run names itself on progress lines, e.g. ``enet/adam-dsc/seed1``."""
    return f"{config.model}/{config.optimizer}-{config.loss}" + (f"/seed{config.seed}" if config.seed else "")


def loss_program(
    config: TrainConfig, num_classes: int, loss_terms: Sequence[str] | None
) -> tuple[LossProgram, LossParams]:
    """The compiled programs' :class:`LossProgram` (``loss_terms``, default those of ``config.loss``) and the
    run's :class:`LossParams` (host arrays)."""
    params = config.loss_params(num_classes)
    loss = LossProgram(terms=tuple(loss_terms)) if loss_terms is not None else LossProgram.covering(params)
    loss.check(params)
    return loss, params


def build_model_for(config: TrainConfig, num_classes: int, model_factory: ModelFactory | None) -> nnx.Module:
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
            f"{run_dir} already holds a run ({', '.join(used)}); rerunning the same experiment command continues "
            "it (resume=True from Python), --overwrite retrains it, or choose another --out"
        )


def restore_progress(run: Run, resume: bool) -> Progress:
    """The progress of the run's latest checkpoint when resuming (a fresh one otherwise); ``metrics.jsonl``
    rewritten to the history the run continues from."""
    progress = Progress()
    restored = run.store.restore_meta() if resume and run.store is not None else None
    if restored is not None:
        epoch, meta = restored
        _check_resumable(run, epoch, meta)
        progress.history = _with_logged_times(list(meta["history"]), run.run_dir / METRICS_FILE)
        progress.plateau = PlateauState.from_json(meta["plateau"])
        progress.best_metric, progress.best_epoch = float(meta["best_metric"]), int(meta["best_epoch"])
        progress.epoch = epoch
        progress.elapsed_before = float(meta["elapsed_s"])
        run.reporter.message(
            f"resuming {run.run_dir} from its epoch {epoch} of {run.config.epochs} (best so far: "
            f"epoch {progress.best_epoch}, validation DSC {100 * progress.best_metric:.1f}%)"
        )
    if is_primary():
        write_text_atomic(run.run_dir / METRICS_FILE, "".join(json.dumps(h) + "\n" for h in progress.history))
    return progress


def initial_state(run: Run, progress: Progress, mesh: Any) -> TrainState:
    """The run's state, whole on every device of ``mesh``: from the seed, then from the checkpoint of
    ``progress.epoch`` when there is one."""
    model = build_model_for(run.config, run.data.train.num_classes, run.model_factory)
    state = replicate(TrainState.create(model, run.config.build_optimizer()), mesh)
    if progress.epoch == 0:
        return state
    _, tree, _ = run.store.restore(state.checkpoint_tree(), progress.epoch)
    return state.replace_from_checkpoint(tree)


_TIMES = ("checkpoint_s", "time_s")


def _with_logged_times(history: list[dict], metrics_file: pathlib.Path) -> list[dict]:
    """The checkpoint's history with each epoch's whole time, as ``metrics.jsonl`` logged it: a checkpoint is
    written before its own duration is known, so its copy of the last epochs lacks ``checkpoint_s``."""
    logged: dict[int, dict] = {}
    if metrics_file.is_file():
        for line in metrics_file.read_text().splitlines():
            try:
                entry = json.loads(line)
                logged[int(entry["epoch"])] = entry
            except (ValueError, KeyError, TypeError):
                continue  # a line cut by the kill
    out = []
    for entry in history:
        line = logged.get(int(entry["epoch"]))
        same = line is not None and all(line.get(k) == v for k, v in entry.items() if k not in _TIMES)
        out.append({**entry, **{k: line[k] for k in _TIMES if k in line}} if same else entry)
    return out


def _check_resumable(run: Run, epoch: int, meta: dict[str, Any]) -> None:
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
