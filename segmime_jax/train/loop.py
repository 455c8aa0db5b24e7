"""The training loop: train for a fixed number of epochs, validate, checkpoint, then test the best model.

:func:`train_and_evaluate` is the entry point the experiments call. Per epoch: one shuffled pass over the
training slices (order from ``(seed, epoch)``), the 3D validation DSC per volume, gradient telemetry, the
plateau rule on the learning rate, the latest checkpoint (and the best one when the mean foreground
validation DSC improved), and one line in ``metrics.jsonl``. At the end the best checkpoint is evaluated on
the test volumes: DSC per volume and class, ClECE, reliability diagrams, NIfTI predictions, Figure 4
examples, ``result.json``.

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

import dataclasses
import json
import math
import os
import pathlib
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from segmime_jax.atomic_files import atomic_output
from segmime_jax.cli import config_to_dict
from segmime_jax.train import metrics as metrics_lib
from segmime_jax.train.checkpoint import CheckpointStore, check_finite, check_state_finite
from segmime_jax.train.evaluate import Evaluation, evaluate
from segmime_jax.train.optim import (
    OPTIMIZERS,
    PlateauState,
    default_learning_rate,
    get_learning_rate,
    make_optimizer,
    plateau_update,
    set_learning_rate,
)
from segmime_jax.train.sharding import batch_sharding, make_data_mesh, replicate, shard_batch
from segmime_jax.train.state import TrainState
from segmime_jax.train.step import make_eval_step, make_train_step

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
LAST_BATCH = ("trim", "drop")
# Fields that may differ between a run and its resumption (they do not change the computed numbers).
RESUMABLE_CHANGES = frozenset({"epochs", "progress", "write_predictions", "num_examples", "checkpoints"})
# Model factory: (num_classes, *, rngs, dtype) -> nnx.Module
ModelFactory = Callable[..., nnx.Module]


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run (paper §3.2 defaults)."""

    model: str = dataclasses.field(default="enet", metadata=_help("network: enet | residualunet"))
    loss: str = dataclasses.field(default="ce", metadata=_help(
        "loss spec (segmime_jax.losses.build_loss): ce, dsc, gdl, mime, nm, surrogate, or e.g. 1*ce+1*dsc"))
    loss_classes: tuple[int, ...] | None = dataclasses.field(default=None, metadata=_help(
        "classes the loss looks at, comma-separated (none: all, background included)"))
    optimizer: str = dataclasses.field(default="adam", metadata=_help("optimizer", choices=OPTIMIZERS))
    learning_rate: float | None = dataclasses.field(default=None, metadata=_help(
        "starting learning rate (none: 5e-4 for adam, 1e-2 for sgd)"))
    adam_b1: float = dataclasses.field(default=0.99, metadata=_help("Adam beta1"))
    adam_b2: float = dataclasses.field(default=0.999, metadata=_help("Adam beta2"))
    momentum: float = dataclasses.field(default=0.9, metadata=_help("SGD momentum"))
    weight_decay: float = dataclasses.field(default=5e-4, metadata=_help(
        "SGD weight decay, added to the gradient as PyTorch does"))
    epochs: int = dataclasses.field(default=100, metadata=_help("number of training epochs"))
    batch_size: int = dataclasses.field(default=8, metadata=_help("training batch size (global)"))
    eval_batch_size: int = dataclasses.field(default=16, metadata=_help("evaluation batch size (global)"))
    plateau_patience: int = dataclasses.field(default=20, metadata=_help(
        "epochs without validation DSC improvement before the learning rate is reduced"))
    plateau_factor: float = dataclasses.field(default=0.5, metadata=_help("learning-rate reduction factor"))
    plateau_min_delta: float = dataclasses.field(default=0.0, metadata=_help(
        "an improvement must exceed the best DSC by more than this"))
    augment: bool = dataclasses.field(default=False, metadata=_help(
        "on-device augmentation: flips and rotation in ±45°, each p=0.5"))
    precision: str = dataclasses.field(default="float32", metadata=_help(
        "compute dtype of the model (parameters stay float32)", choices=tuple(PRECISIONS)))
    seed: int = dataclasses.field(default=0, metadata=_help("seed of initialisation, shuffling, dropout"))
    checkpoints: bool = dataclasses.field(default=True, metadata=_help(
        "keep latest and best orbax checkpoints (needed for --resume)"))
    write_predictions: bool = dataclasses.field(default=True, metadata=_help("write NIfTI test predictions"))
    num_examples: int = dataclasses.field(default=4, metadata=_help("test slices kept for Figure 4"))
    progress: bool = dataclasses.field(default=True, metadata=_help("tqdm progress bars"))
    telemetry: bool = dataclasses.field(default=True, metadata=_help(
        "per-epoch gradient telemetry on a fixed validation batch"))
    last_batch: str = dataclasses.field(default="trim", metadata=_help(
        "last partial training batch: trim its padding (exact BatchNorm) or drop it", choices=LAST_BATCH))
    num_devices: int | None = dataclasses.field(default=None, metadata=_help(
        "devices for data parallelism (none: as many local devices as divide both batch sizes)"))
    data_on_device: bool = dataclasses.field(default=True, metadata=_help(
        "keep the uint8 slices on the device(s) and gather batches there"))

    def __post_init__(self) -> None:
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "plateau_patience": self.plateau_patience}
        for name, value in positive.items():
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {self.precision!r}")
        if self.last_batch not in LAST_BATCH:
            raise ValueError(f"last_batch must be one of {LAST_BATCH}, got {self.last_batch!r}")
        if not 0.0 < self.plateau_factor < 1.0:
            raise ValueError(f"plateau_factor must be in (0, 1), got {self.plateau_factor}")
        if self.learning_rate is not None and not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {self.num_examples}")
        if self.num_devices is not None and self.num_devices < 1:
            raise ValueError(f"num_devices must be >= 1, got {self.num_devices}")
        from segmime_jax.models import MODELS

        if self.model.lower() not in MODELS:
            raise ValueError(f"unknown model {self.model!r}; valid: {', '.join(MODELS)}")
        self.build_loss()  # a bad loss spec or class list fails here, before any data is loaded

    @property
    def base_learning_rate(self) -> float:
        """The starting learning rate (the paper's default for the optimiser when unset)."""
        return default_learning_rate(self.optimizer) if self.learning_rate is None else float(self.learning_rate)

    def build_loss(self) -> Callable[..., jax.Array]:
        """The loss function of ``loss`` (with ``classes=loss_classes`` when set)."""
        from segmime_jax.losses import build_loss

        options = {} if self.loss_classes is None else {"classes": tuple(self.loss_classes)}
        return build_loss(self.loss, **options)

    def build_optimizer(self):
        return make_optimizer(self.optimizer, learning_rate=self.base_learning_rate, adam_b1=self.adam_b1,
                              adam_b2=self.adam_b2, momentum=self.momentum, weight_decay=self.weight_decay)


def _json_ready(value: Any) -> Any:
    """Arrays to lists, NaN/inf to None, recursively."""
    if isinstance(value, np.ndarray | jax.Array):
        return _json_ready(np.asarray(value).tolist())
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _array(value: Any, dtype: Any = np.float64) -> np.ndarray:
    """Inverse of :func:`_json_ready` for numeric arrays (None back to NaN)."""
    def fix(v: Any) -> Any:
        if isinstance(v, list):
            return [fix(x) for x in v]
        return np.nan if v is None else v

    return np.asarray(fix(value), dtype=dtype)


@dataclasses.dataclass
class RunResult:
    """What a run produced (see :func:`train_and_evaluate`)."""

    config: TrainConfig
    class_names: tuple[str, ...]
    history: list[dict]
    best_epoch: int
    test_volume_names: list[str]
    test_dsc: np.ndarray
    test_clece: np.ndarray
    reliability: dict[str, np.ndarray]
    examples: dict[str, np.ndarray]
    wall_time_s: float
    data: dict[str, str] | None = None  # data_fingerprint() of the data it was trained and tested on

    def summary(self) -> dict[str, Any]:
        """Test DSC mean and std over volumes per class and "All" (foreground mean per volume), ClECE means."""
        dsc = np.asarray(self.test_dsc, np.float64)
        fg = metrics_lib.mean_foreground(dsc)
        clece = np.asarray(self.test_clece, np.float64)
        return {
            "test_dsc_mean": dsc.mean(0).tolist(), "test_dsc_std": dsc.std(0).tolist(),
            "test_dsc_all_mean": float(fg.mean()), "test_dsc_all_std": float(fg.std()),
            "test_clece_mean_all_classes": float(np.nanmean(clece)),
            "test_clece_mean_foreground": float(np.nanmean(clece[1:] if clece.size > 1 else clece)),
        }

    def to_json(self, *, include_examples: bool = True) -> dict[str, Any]:
        """Everything JSON-ready (arrays as nested lists, NaN as null)."""
        out = {
            "config": config_to_dict(self.config), "class_names": list(self.class_names), "history": self.history,
            "best_epoch": self.best_epoch, "test_volume_names": list(self.test_volume_names),
            "test_dsc": self.test_dsc, "test_clece": self.test_clece, "reliability": self.reliability,
            "wall_time_s": self.wall_time_s, "summary": self.summary(), "data": self.data,
        }
        if include_examples:
            out["examples"] = self.examples
        return _json_ready(out)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], examples: Mapping[str, np.ndarray] | None = None) -> RunResult:
        """Inverse of :meth:`to_json` (``examples`` from the JSON when present, else from the argument)."""
        config_fields = {f.name for f in dataclasses.fields(TrainConfig)}
        config_data = {k: v for k, v in data["config"].items() if k in config_fields}
        if config_data.get("loss_classes") is not None:
            config_data["loss_classes"] = tuple(config_data["loss_classes"])
        stored = data.get("examples")
        if stored is not None:
            examples = {k: np.asarray(v) for k, v in stored.items()}
        return cls(
            config=TrainConfig(**config_data), class_names=tuple(data["class_names"]),
            history=list(data["history"]), best_epoch=int(data["best_epoch"]),
            test_volume_names=list(data["test_volume_names"]), test_dsc=_array(data["test_dsc"]),
            test_clece=_array(data["test_clece"]),
            reliability={k: _array(v) for k, v in data["reliability"].items()},
            examples=dict(examples or {}), wall_time_s=float(data["wall_time_s"]), data=data.get("data"),
        )


RESULT_FILE = "result.json"
EXAMPLES_FILE = "examples.npz"
METRICS_FILE = "metrics.jsonl"


def _write_atomic(path: pathlib.Path, write: Callable[[Any], None], *, binary: bool = False) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb" if binary else "w") as handle:
        write(handle)


def save_run_result(result: RunResult, run_dir: str | os.PathLike) -> pathlib.Path:
    """Write ``run_dir/result.json`` (examples in ``run_dir/examples.npz``); return the JSON path."""
    run_dir = pathlib.Path(run_dir)
    _write_atomic(run_dir / EXAMPLES_FILE, lambda f: np.savez_compressed(f, **result.examples), binary=True)
    data = result.to_json(include_examples=False)
    data["examples_file"] = EXAMPLES_FILE
    _write_atomic(run_dir / RESULT_FILE, lambda f: json.dump(data, f, indent=1))
    return run_dir / RESULT_FILE


def load_run_result(path: str | os.PathLike) -> RunResult:
    """Read a :class:`RunResult` from a run directory or its ``result.json``."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: cannot read the run result ({err})") from err
    examples = None
    if data.get("examples") is None and data.get("examples_file"):
        with np.load(path.parent / data["examples_file"]) as npz:
            examples = {k: npz[k] for k in npz.files}
    return RunResult.from_json(data, examples)


# ------------------------------------------------------------------------------------------------- helpers
def _build_model(config: TrainConfig, num_classes: int, model_factory: ModelFactory | None) -> nnx.Module:
    root = jax.random.key(config.seed)
    rngs = nnx.Rngs(params=jax.random.fold_in(root, 0), dropout=jax.random.fold_in(root, 2))
    dtype = PRECISIONS[config.precision]
    if model_factory is not None:
        return model_factory(num_classes, rngs=rngs, dtype=dtype)
    from segmime_jax.models import build_model

    return build_model(config.model, num_classes, rngs=rngs, dtype=dtype)


def step_key(seed: int, step: int) -> jax.Array:
    """The key of optimiser step ``step``: ``fold_in(fold_in(key(seed), 1), step)``."""
    return jax.random.fold_in(_step_root(seed), step)


def _step_root(seed: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(seed), 1)


def _fixed_batch(dataset: Any, batch_size: int) -> dict[str, np.ndarray]:
    """``batch_size`` validation slices chosen once: the most classes present, then the most foreground."""
    labels = np.asarray(dataset.labels)
    num_classes = dataset.num_classes
    present = np.stack([(labels == k).any(axis=(1, 2)) for k in range(num_classes)], -1).sum(-1)
    foreground = (labels > 0).sum(axis=(1, 2))
    order = np.lexsort((np.arange(len(labels)), -foreground, -present))
    chosen = np.sort(order[:batch_size])
    count = len(chosen)
    height, width = labels.shape[1:]
    image = np.zeros((batch_size, height, width, 1), np.float32)
    label = np.zeros((batch_size, height, width), np.int32)
    image[:count, ..., 0] = np.asarray(dataset.images)[chosen].astype(np.float32) / 255.0
    label[:count] = labels[chosen]
    return {"image": image, "label": label, "mask": np.arange(batch_size) < count}


def _example_slices(dataset: Any, count: int) -> dict[int, int]:
    """``{volume_id: slice position}``: evenly spaced test volumes, each at its slice with most foreground."""
    volumes = len(dataset.volumes)
    if count <= 0 or volumes == 0:
        return {}
    chosen = sorted({int(round(v)) for v in np.linspace(0, volumes - 1, min(count, volumes))})
    out = {}
    for v in chosen:
        labels = np.asarray(dataset.labels)[dataset.slices_of(v)]
        out[v] = int(np.argmax((labels > 0).sum(axis=(1, 2))))
    return out


def _check_run_dir(run_dir: pathlib.Path, resume: bool) -> None:
    used = [p.name for p in (run_dir / "checkpoints", run_dir / METRICS_FILE, run_dir / RESULT_FILE)
            if p.exists() and (not p.is_dir() or any(p.iterdir()))]
    if used and not resume:
        raise FileExistsError(f"{run_dir} already holds a run ({', '.join(used)}); pass resume=True to continue "
                              "it, or use a new run directory")


def data_fingerprint(data: Any) -> dict[str, str]:
    """``{"name", "image_size", "train", "val", "test"}``: which data a run saw (see
    ``SliceDataset.fingerprint``); stored in its checkpoints and ``result.json`` so that resuming or reusing it
    on other data is refused."""
    size = "x".join(str(n) for n in data.train.image_size)
    return {"name": str(getattr(data, "name", "")), "image_size": size,
            **{split: getattr(data, split).fingerprint() for split in ("train", "val", "test")}}


def data_differences(saved: Mapping[str, str] | None, current: Mapping[str, str]) -> list[str]:
    """The entries of two :func:`data_fingerprint` that differ, described (none when ``saved`` predates
    fingerprints)."""
    if not saved:
        return []
    changed = []
    for key in ("name", "image_size", "train", "val", "test"):
        if key in saved and saved.get(key) != current.get(key):
            changed.append(f"{key.replace('_', ' ')} {saved[key]} -> {current.get(key)}"
                           if key in ("name", "image_size") else key)
    return changed


def _config_differences(saved: Mapping[str, Any], config: TrainConfig) -> list[str]:
    current = config_to_dict(config)
    return [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items()
            if k not in RESUMABLE_CHANGES and saved.get(k) != v]


def _trim(batch: dict[str, jax.Array], count: int, mesh: Any) -> dict[str, jax.Array]:
    """The first ``count`` (real) slices of a padded batch, placed on ``mesh``."""
    mask = np.asarray(jax.device_get(batch["mask"]), bool)
    if mask[:count].sum() != count or mask[count:].any():
        raise RuntimeError(f"expected the padding of the last batch after its {count} real slices, got mask {mask}")
    return shard_batch({k: v[:count] for k, v in batch.items()}, mesh)


def _copy_tree(tree: Any) -> Any:
    return jax.tree.map(lambda x: x.copy(), tree)


def _progress(iterable: Any, *, enabled: bool, **kwargs: Any) -> Any:
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=not enabled, dynamic_ncols=True, **kwargs)


# ---------------------------------------------------------------------------------------------- entry point
def train_and_evaluate(config: TrainConfig, data: Any, run_dir: str | os.PathLike, *, resume: bool = False,
                       model_factory: ModelFactory | None = None) -> RunResult:
    """Train on ``data.train``, validate each epoch on ``data.val``, test the best epoch on ``data.test``.

    Args:
      config: the run's :class:`TrainConfig`.
      data: a :class:`~segmime_jax.data.dataset.DatasetSplits`.
      run_dir: output directory, created if missing. Receives ``checkpoints/{latest,best}/``,
        ``metrics.jsonl`` (one JSON line per epoch, the same dicts as ``RunResult.history``),
        ``predictions/<volume>.nii.gz`` (test predictions, when ``config.write_predictions``),
        ``result.json`` (:meth:`RunResult.to_json` without the examples) and ``examples.npz``.
      resume: continue from the latest checkpoint in ``run_dir`` (fresh start when there is none). Without
        it, a ``run_dir`` that already holds a run is refused (FileExistsError). Only ``epochs``,
        ``progress``, ``write_predictions``, ``num_examples`` and ``checkpoints`` may change on resumption.
      model_factory: build the network from ``(num_classes, *, rngs, dtype)`` instead of
        ``segmime_jax.models.build_model(config.model, ...)`` (custom models, tests).

    Returns:
      The :class:`RunResult`; per-epoch ``history`` entries hold ``epoch``, ``train_loss`` (mean over the
      epoch's slices), ``val_loss``, ``val_dsc`` (mean 3D DSC over validation volumes, per class, background
      first), ``val_dsc_fg`` (its foreground mean), ``learning_rate`` (used during the epoch),
      ``time_s`` (train + validation seconds), ``steps`` (optimiser steps so far), ``best`` (this epoch
      became the best) and ``grad_telemetry`` (see :mod:`segmime_jax.train.telemetry`; ``{}`` when off).

    Raises:
      NonFiniteLossError: the training loss or gradient (checked every step) or the state (checked before
        each checkpoint) became NaN/inf; the latest checkpoint on disk is the last good epoch.
      FileExistsError, ValueError: unusable run directory, data or configuration.
    """
    start_time = time.perf_counter()
    run_dir = pathlib.Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _check_run_dir(run_dir, resume)
    if resume and not config.checkpoints:
        raise ValueError("resume=True needs checkpoints=True (there is nothing to resume from otherwise)")
    for split in ("train", "val", "test"):
        if len(getattr(data, split)) == 0:
            raise ValueError(f"the {split} split of dataset {getattr(data, 'name', '?')!r} is empty")
    num_classes = data.train.num_classes
    fingerprint = data_fingerprint(data)
    class_names = tuple(data.train.class_names)
    if data.val.num_classes != num_classes or data.test.num_classes != num_classes:
        raise ValueError("train, val and test splits have different class lists")
    if config.last_batch == "drop" and len(data.train) < config.batch_size:
        raise ValueError(f"last_batch='drop' with {len(data.train)} training slices and batch size "
                         f"{config.batch_size} leaves no batch")

    from segmime_jax.data.pipeline import num_batches, to_device, train_batches

    mesh = make_data_mesh(config.num_devices, batch_sizes=(config.batch_size, config.eval_batch_size))
    sharding = batch_sharding(mesh)
    loss_fn = config.build_loss()
    tx = config.build_optimizer()
    model = _build_model(config, num_classes, model_factory)
    state = replicate(TrainState.create(model, tx), mesh)
    del model
    train_step = make_train_step(tx, loss_fn, num_classes, augment=config.augment, mesh=mesh)
    eval_step = make_eval_step(loss_fn, num_classes)
    probe = None
    if config.telemetry:
        from segmime_jax.train.telemetry import make_gradient_probe, summarize_gradient

        probe = make_gradient_probe(loss_fn, num_classes)
        probe_batch = shard_batch(_fixed_batch(data.val, config.batch_size), mesh)

    train_data, val_data = data.train, data.val
    if config.data_on_device:
        train_data, val_data = to_device(data.train, sharding=sharding), to_device(data.val, sharding=sharding)

    history: list[dict] = []
    plateau = PlateauState()
    best_metric, best_epoch, start_epoch = -math.inf, 0, 0
    elapsed_before = 0.0  # seconds spent on this run by earlier (interrupted) calls
    best_tree = None  # in-memory copy of the best state when there are no checkpoints
    store = CheckpointStore(run_dir / "checkpoints") if config.checkpoints else None
    metrics_path = run_dir / METRICS_FILE
    try:
        if resume and store is not None:
            restored = store.restore_latest(state.checkpoint_tree())
            if restored is not None:
                start_epoch, tree, meta = restored
                differences = _config_differences(meta["config"], config)
                if differences:
                    raise ValueError(f"cannot resume {run_dir}: the configuration changed ({'; '.join(differences)})")
                changed = data_differences(meta.get("data"), fingerprint)
                if changed:
                    raise ValueError(f"cannot resume {run_dir}: it was trained on other data (different "
                                     f"{', '.join(changed)}; did the image size, data root, number of cases, data "
                                     "seed or split change?)")
                if start_epoch > config.epochs:
                    raise ValueError(f"cannot resume {run_dir}: its checkpoint is at epoch {start_epoch}, past "
                                     f"epochs={config.epochs}")
                state = state.replace_from_checkpoint(tree)
                history = list(meta["history"])
                plateau = PlateauState.from_json(meta["plateau"])
                best_metric, best_epoch = float(meta["best_metric"]), int(meta["best_epoch"])
                elapsed_before = float(meta.get("elapsed_s", sum(h.get("time_s", 0.0) for h in history)))
            store.discard_best_after(start_epoch)
            if restored is not None and best_epoch == start_epoch and store.best_epoch() != start_epoch:
                # the latest checkpoint is the best one, but the best copy of it was lost (the two are written
                # asynchronously, in no set order): write it again from the restored state
                store.save_best(start_epoch, tree, meta, best_metric)
        # metrics.jsonl always mirrors the history of the state we continue from.
        _write_atomic(metrics_path, lambda f: f.writelines(json.dumps(h) + "\n" for h in history))

        n_train = len(data.train)
        remainder = n_train % config.batch_size
        batches_per_epoch = num_batches(data.train, config.batch_size)
        step = int(jax.device_get(state.step))
        step_root = _step_root(config.seed)
        epochs = _progress(range(start_epoch + 1, config.epochs + 1), enabled=config.progress,
                           desc=f"{config.model}/{config.loss}", unit="epoch", initial=start_epoch,
                           total=config.epochs)
        for epoch in epochs:
            epoch_start = time.perf_counter()
            learning_rate = config.base_learning_rate * plateau.scale
            state = state.replace(opt_state=set_learning_rate(state.opt_state, learning_rate))

            # ---- train
            # (metrics, step, size) of the last step, checked one step later
            pending: tuple[dict[str, jax.Array], int, int] | None = None
            loss_sum, loss_count = 0.0, 0
            batches = _progress(train_batches(train_data, config.batch_size, seed=config.seed, epoch=epoch,
                                              sharding=sharding),
                                enabled=config.progress, total=batches_per_epoch, leave=False, desc=f"epoch {epoch}")
            for index, batch in enumerate(batches):
                size = config.batch_size
                if remainder and index == batches_per_epoch - 1:
                    if config.last_batch == "drop":
                        continue
                    batch, size = _trim(batch, remainder, mesh), remainder
                state, out = train_step(state, batch, jax.random.fold_in(step_root, step))  # = step_key(seed, step)
                if pending is not None:  # fetch the previous loss: keeps one step in flight
                    value = _check_pending(pending, epoch, store)
                    loss_sum, loss_count = loss_sum + value * pending[2], loss_count + pending[2]
                    batches.set_postfix(loss=f"{value:.4f}", refresh=False)
                pending = (out, step, size)
                step += 1
            if pending is not None:
                value = _check_pending(pending, epoch, store)
                loss_sum, loss_count = loss_sum + value * pending[2], loss_count + pending[2]
            batches.close()

            # ---- validate
            val = evaluate(eval_step, state, val_data, config.eval_batch_size, sharding=sharding)
            val_dsc = val.mean_dsc
            val_dsc_fg = val.mean_dsc_fg
            telemetry = summarize_gradient(probe(state, probe_batch)) if probe is not None else {}
            improved = val_dsc_fg > best_metric
            if improved:
                best_metric, best_epoch = val_dsc_fg, epoch
            plateau = plateau_update(plateau, val_dsc_fg, patience=config.plateau_patience,
                                     factor=config.plateau_factor, min_delta=config.plateau_min_delta)
            held = get_learning_rate(state.opt_state)  # the rate the optimiser state really used (float32)
            if not math.isclose(held, learning_rate, rel_tol=1e-6):
                raise RuntimeError(f"epoch {epoch} trained with learning rate {held}, expected {learning_rate}")
            record = {
                "epoch": epoch, "train_loss": loss_sum / max(loss_count, 1), "val_loss": val.loss,
                "val_dsc": [float(v) for v in val_dsc], "val_dsc_fg": val_dsc_fg, "learning_rate": learning_rate,
                "time_s": time.perf_counter() - epoch_start, "steps": step, "best": improved,
                "grad_telemetry": telemetry,
            }
            history.append(_json_ready(record))

            # ---- checkpoint, then log (a resumed run rewrites the log from the checkpoint)
            tree = state.checkpoint_tree()
            check_state_finite(tree, epoch=epoch, store=store)
            if store is not None:
                meta = {"epoch": epoch, "history": history, "plateau": plateau.to_json(),
                        "best_metric": best_metric, "best_epoch": best_epoch, "config": config_to_dict(config),
                        "data": fingerprint, "elapsed_s": elapsed_before + time.perf_counter() - start_time}
                if improved:
                    store.save_best(epoch, tree, meta, val_dsc_fg)
                store.save_latest(epoch, tree, meta)
            elif improved:
                best_tree = _copy_tree(tree)
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(history[-1]) + "\n")
            epochs.set_postfix(loss=f"{record['train_loss']:.4f}", val_dsc=f"{val_dsc_fg:.4f}",
                               lr=f"{learning_rate:.2e}", refresh=False)
        epochs.close()

        # ---- test the best epoch
        if store is not None:
            restored = store.restore_best(state.checkpoint_tree())
            if restored is None:
                raise RuntimeError(f"no best checkpoint found in {store.best_dir}")
            best_epoch, tree, _ = restored
            best_state = state.replace_from_checkpoint(tree)
        else:
            best_state = state.replace_from_checkpoint(best_tree)
        result = _test(config, data, best_state, eval_step, sharding, run_dir)
    finally:
        if store is not None:
            store.close()
    test_eval, examples = result
    reliability = test_eval.calibration.reliability()
    run_result = RunResult(
        config=config, class_names=class_names, history=history, best_epoch=best_epoch,
        test_volume_names=test_eval.volume_names, test_dsc=test_eval.dsc, test_clece=test_eval.calibration.clece(),
        reliability=reliability, examples=examples,
        wall_time_s=elapsed_before + time.perf_counter() - start_time,  # earlier interrupted calls included
        data=fingerprint,
    )
    save_run_result(run_result, run_dir)
    return run_result


def _check_pending(pending: tuple[dict[str, jax.Array], int, int], epoch: int, store: CheckpointStore | None) -> float:
    """Fetch a step's loss and gradient norm; raise if either is NaN/inf. Returns the loss."""
    metrics = jax.device_get({k: pending[0][k] for k in ("loss", "grad_norm")})
    loss = float(metrics["loss"])
    check_finite(loss, epoch=epoch, step=pending[1], store=store, grad_norm=float(metrics["grad_norm"]))
    return loss


def _test(config: TrainConfig, data: Any, state: TrainState, eval_step: Callable, sharding: Any,
          run_dir: pathlib.Path) -> tuple[Evaluation, dict[str, np.ndarray]]:
    """Evaluate ``state`` on the test split; write predictions; collect the Figure 4 examples."""
    test = data.test
    wanted = _example_slices(test, config.num_examples)
    picked: dict[int, np.ndarray] = {}
    predictions_dir = run_dir / "predictions"
    staging: pathlib.Path | None = None
    writer = None
    if config.write_predictions:
        try:
            import nibabel  # noqa: F401

            from segmime_jax.data.export import write_prediction_nifti

            staging = pathlib.Path(tempfile.mkdtemp(dir=run_dir, prefix=".predictions."))
            writer = write_prediction_nifti
        except ModuleNotFoundError as err:
            warnings.warn(f"NIfTI predictions not written: {err} (install nibabel)", stacklevel=2)

    def on_volume(volume: Any, prediction: np.ndarray) -> None:
        if volume.volume_id in wanted:
            picked[volume.volume_id] = prediction[wanted[volume.volume_id]]
        if writer is not None:
            writer(volume, prediction, staging / f"{volume.name}.nii.gz")

    try:
        test_eval = evaluate(eval_step, state, test, config.eval_batch_size, sharding=sharding, on_volume=on_volume)
        if staging is not None:
            if predictions_dir.exists():
                shutil.rmtree(predictions_dir)
            staging.rename(predictions_dir)
            staging = None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    order = sorted(wanted)
    images, labels = [], []
    for v in order:
        index = test.slices_of(v)[wanted[v]]
        images.append(np.asarray(test.images[index], np.float32) / 255.0)
        labels.append(np.asarray(test.labels[index], np.uint8))
    height, width = test.image_size
    examples = {
        "image": np.stack(images) if images else np.zeros((0, height, width), np.float32),
        "label": np.stack(labels) if labels else np.zeros((0, height, width), np.uint8),
        "prediction": np.stack([picked[v] for v in order]) if order else np.zeros((0, height, width), np.uint8),
        "volume_names": np.asarray([test.volumes[v].name for v in order]),
        "slice_positions": np.asarray([wanted[v] for v in order], np.int32),
    }
    return test_eval, examples
