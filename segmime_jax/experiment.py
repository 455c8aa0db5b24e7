"""A paper experiment: the loss × optimiser grid of training runs on one dataset, and its report.

The experiment scripts (``python -m experiments.acdc``, ``python -m experiments.promise12``) are thin: they
define presets of :class:`GridConfig`, load the dataset (a real download with ``--data-root``, otherwise a
synthetic dataset in the same on-disk format, generated once into the cache folder, see
:func:`dataset_root`), and call :func:`run_grid`, which

1. trains one model per (optimiser, loss) with :func:`segmime_jax.train.train_and_evaluate` into
   ``<out>/runs/<optimizer>-<loss>/`` (metrics, checkpoints, NIfTI predictions, ``result.json``);
2. writes ``table1.md`` / ``table1.csv`` (Table 1, ours and ours next to the paper's), ``results.json``
   (everything behind the table: per-volume test DSC, ClECE, reliability bins, per-epoch histories, the
   configuration, library versions and the device), ``fig2.png`` (validation DSC per epoch), ``fig3.png``
   (calibration), ``fig4.png`` (test slices) — figures 3 and 4 for the first optimiser of the grid, with
   ``fig3-<optimizer>.png`` / ``fig4-<optimizer>.png`` for the others;
3. returns a :class:`GridResult`; :func:`format_summary` prints where everything is, with our table next to
   the paper's.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmime_jax.atomic_files import write_text_atomic
from segmime_jax.cli import config_to_dict
from segmime_jax.data import DatasetSplits, write_synthetic_acdc, write_synthetic_promise12
from segmime_jax.losses import LOSS_ALIASES, build_loss
from segmime_jax.models import check_input_size
from segmime_jax.report import figures, tables
from segmime_jax.train import RunResult, TrainConfig, load_run_result, train_and_evaluate
from segmime_jax.train.loop import data_differences, data_fingerprint

OPTIMIZERS = ("adam", "sgd")
_SYNTHETIC_WRITERS: dict[str, Callable[..., Path]] = {
    "acdc": write_synthetic_acdc,
    "promise12": write_synthetic_promise12,
}


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass(frozen=True)
class GridConfig:
    """Options shared by the paper's experiments (one ``--kebab-case`` flag each)."""

    losses: tuple[str, ...] = field(default=("ce", "dsc", "mime", "nm"), metadata=_help(
        "comma-separated loss specs (segmime_jax.losses.build_loss: ce, dsc, mime, nm, gdl, surrogate, 1*ce+1*dsc)",
        metavar="LOSS,..."))
    foreground_only: tuple[str, ...] = field(default=(), metadata=_help(
        "losses of --losses computed on the foreground classes only (1..K-1, TrainConfig.loss_classes); the "
        "binary mime of the paper acts on the foreground channel (§2.4: its b > 0 is what stops the all-foreground "
        "solution), while with the background channel too, the far more numerous background pixels dominate and "
        "the network can collapse to background everywhere; names not in --losses are ignored (aliases such as "
        "dice = dsc match); '' for none", metavar="LOSS,..."))
    optimizers: tuple[str, ...] = field(default=("adam",), metadata=_help(
        "comma-separated optimisers: adam, sgd", metavar="OPT,..."))
    data_root: Path | None = field(default=None, metadata=_help(
        "folder of the real dataset download; none: a synthetic dataset in the same format, generated into "
        "<cache-dir>/synthetic/ on first use and reused"))
    synthetic_cases: int = field(default=20, metadata=_help(
        "number of patients/cases of the synthetic dataset (ignored with --data-root)"))
    data_seed: int = field(default=0, metadata=_help("seed of the synthetic dataset and of the seeded split"))
    image_size: int = field(default=256, metadata=_help("working size: every slice is resized to SIZE x SIZE"))
    epochs: int = field(default=100, metadata=_help("training epochs per run"))
    batch_size: int = field(default=8, metadata=_help("training batch size"))
    eval_batch_size: int = field(default=16, metadata=_help("validation/test batch size"))
    adam_lr: float = field(default=5e-4, metadata=_help("Adam learning rate (paper: 5e-4, betas 0.99, 0.999)"))
    sgd_lr: float = field(default=1e-2, metadata=_help(
        "SGD learning rate (paper: 1e-2, momentum 0.9, weight decay 5e-4)"))
    plateau_patience: int = field(default=20, metadata=_help(
        "halve the learning rate after this many epochs without a better validation DSC"))
    augment: bool = field(default=False, metadata=_help(
        "on-device augmentation: vertical flip, mirror, rotation in +-45 degrees, each p=0.5"))
    precision: str = field(default="float32", metadata=_help("compute precision", choices=("float32", "bfloat16")))
    seed: int = field(default=0, metadata=_help("training seed (initialisation, shuffling, dropout)"))
    num_examples: int = field(default=4, metadata=_help("test slices shown in Figure 4"))
    checkpoints: bool = field(default=True, metadata=_help("keep latest and best orbax checkpoints per run"))
    write_predictions: bool = field(default=True, metadata=_help("write NIfTI test predictions per run"))
    progress: bool = field(default=True, metadata=_help("show progress bars"))
    out: Path = field(default=Path("results"), metadata=_help("output folder"))
    cache_dir: Path = field(default=Path(".cache"), metadata=_help(
        "cache folder: synthetic datasets (synthetic/), preprocessed slices (preprocessed/) and compiled XLA "
        "programs (jax-compilation/)"))
    compilation_cache: bool = field(default=True, metadata=_help(
        "keep compiled programs in <cache-dir>/jax-compilation/ so that later runs skip most compilation"))
    resume: bool = field(default=False, metadata=_help(
        "continue the runs found in --out from their latest checkpoints (finished runs are not retrained)"))
    overwrite: bool = field(default=False, metadata=_help(
        "delete this grid's runs already in --out and start over (other runs there are left alone)"))

    def __post_init__(self) -> None:
        if not self.losses:
            raise ValueError("--losses: give at least one loss")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"--losses: repeated loss in {','.join(self.losses)}")
        for spec in self.losses + self.foreground_only:
            build_loss(spec)  # ValueError naming the valid losses
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown or not self.optimizers:
            raise ValueError(f"--optimizers: expected a comma-separated subset of {','.join(OPTIMIZERS)}, "
                             f"got {','.join(self.optimizers) or 'nothing'}")
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"--optimizers: repeated optimiser in {','.join(self.optimizers)}")
        for name in ("image_size", "epochs", "batch_size", "eval_batch_size", "synthetic_cases", "plateau_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.adam_lr <= 0 or self.sgd_lr <= 0:
            raise ValueError("learning rates must be positive")
        if self.num_examples < 0:
            raise ValueError("--num-examples must be >= 0")
        if self.resume and self.overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        if self.resume and not self.checkpoints:
            raise ValueError("--resume needs checkpoints (drop --no-checkpoints)")

    @property
    def size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)


@dataclass
class GridResult:
    """What :func:`run_grid` produced: every run's result, Table 1 and the files written."""

    dataset: str
    class_names: tuple[str, ...]
    runs: dict[tuple[str, str], RunResult]
    table: tables.Table1
    paper: tables.Table1
    files: dict[str, Path]
    wall_time_s: float
    data_info: dict = field(default_factory=dict)


def run_name(optimizer: str, loss: str) -> str:
    """Folder name of one run: ``<optimizer>-<loss>`` with characters other than ``[A-Za-z0-9._-]`` → ``_``."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in loss)
    return f"{optimizer}-{safe}"


def _canonical(spec: str) -> str:
    return LOSS_ALIASES.get(spec.strip().lower(), spec.strip().lower())


def foreground_only(config: GridConfig, loss: str) -> bool:
    """Whether ``loss`` (a spec of ``config.losses``) is computed on the foreground classes only: named in
    ``config.foreground_only``, aliases resolved (``dice`` = ``dsc``)."""
    return _canonical(loss) in {_canonical(name) for name in config.foreground_only}


def check_grid(config: GridConfig, model: str) -> None:
    """Checks that need to know the model, made before any data is loaded or run folder made (ValueError)."""
    check_input_size(model, config.image_size)


def dataset_root(dataset: str, config: GridConfig, *, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """The folder to load: ``config.data_root``, or the synthetic dataset in the cache, generated if missing.

    The synthetic dataset lives in ``<cache_dir>/synthetic/<dataset>-<cases>-<data_seed>/``; it is written into
    a temporary folder next to it and renamed into place, so an interrupted generation leaves nothing behind.
    Returns ``(root, synthetic)``.
    """
    if config.data_root is not None:
        root = Path(config.data_root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"--data-root {root}: no such folder")
        return root, False
    try:
        writer = _SYNTHETIC_WRITERS[dataset]
    except KeyError:
        raise ValueError(f"no synthetic generator for dataset {dataset!r}") from None
    parent = Path(config.cache_dir) / "synthetic"
    final = parent / f"{dataset}-{config.synthetic_cases}-{config.data_seed}"
    if final.is_dir():
        return final, True
    parent.mkdir(parents=True, exist_ok=True)
    log(f"Generating a synthetic {dataset} dataset ({config.synthetic_cases} cases, seed {config.data_seed}) "
        f"into {final} ...")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=parent))
    try:
        writer(tmp, cases=config.synthetic_cases, seed=config.data_seed)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():  # not a concurrent generation that won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final, True


def enable_compilation_cache(path: Path) -> None:
    """Use JAX's persistent compilation cache in ``path`` (every program, however fast it compiled)."""
    import jax

    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def train_config(config: GridConfig, *, model: str, optimizer: str, loss: str, num_classes: int) -> TrainConfig:
    """The :class:`TrainConfig` of one run of the grid (``num_classes`` K, background included)."""
    return TrainConfig(
        model=model, loss=loss, optimizer=optimizer,
        loss_classes=tuple(range(1, num_classes)) if foreground_only(config, loss) else None,
        learning_rate=config.adam_lr if optimizer == "adam" else config.sgd_lr,
        epochs=config.epochs, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
        plateau_patience=config.plateau_patience, augment=config.augment, precision=config.precision,
        seed=config.seed, checkpoints=config.checkpoints, write_predictions=config.write_predictions,
        num_examples=config.num_examples, progress=config.progress,
    )


def environment_info() -> dict:
    """Versions of Python, numpy, jax, jaxlib, flax, optax, orbax-checkpoint and the devices used."""
    import importlib.metadata as metadata

    import jax

    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for package in ("numpy", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "matplotlib"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    devices = jax.devices()
    return {
        "versions": versions,
        "backend": jax.default_backend(),
        "device_count": len(devices),
        "devices": [str(getattr(d, "device_kind", d.platform)) for d in devices],
        "cpu_count": os.cpu_count(),
    }


def data_info(data: DatasetSplits, root: Path, synthetic: bool) -> dict:
    """Where the data came from and how big each split is."""
    return {
        "name": data.name,
        "root": str(root),
        "synthetic": synthetic,
        "class_names": list(data.class_names),
        "image_size": list(data.train.images.shape[1:3]),
        **{f"{split}_{what}": value
           for split in ("train", "val", "test")
           for what, value in (("slices", len(getattr(data, split))),
                               ("volumes", len(getattr(data, split).volumes)),
                               ("patients", len(getattr(data, split).patients)))},
    }


def _check_run_dirs(run_dirs: Sequence[Path], config: GridConfig) -> None:
    occupied = [d for d in run_dirs if d.exists() and any(d.iterdir())]
    if not occupied or config.resume:
        return
    if config.overwrite:
        for d in occupied:
            shutil.rmtree(d)
        return
    listing = ", ".join(str(d) for d in occupied)
    raise FileExistsError(f"runs already present in {config.out}: {listing}. Pass --resume to continue them, "
                          f"--overwrite to start over, or choose another --out")


def _class_index(class_names: Sequence[str], wanted: str | None) -> int:
    if wanted is not None:
        for k, name in enumerate(class_names):
            if tables.class_display_name(name).lower() == wanted.lower() or name.lower() == wanted.lower():
                return k
    return len(class_names) - 1


def _run_record(run: RunResult) -> dict:
    # Examples (images) stay in the run folder (examples.npz) and in Figure 4.
    record = run.to_json(include_examples=False)
    record["table1_cells_percent"] = {k: list(v) for k, v in tables.dsc_summary(run.test_dsc, run.class_names).items()}
    return record


def _finished_run(run_dir: Path, run_config: TrainConfig, data: DatasetSplits) -> RunResult | None:
    """The stored result of a finished run with the same configuration (progress bars aside), else None.

    Raises ValueError when that run was trained on other data (another image size, data root, number of
    synthetic cases, data seed or split): reusing it would put its numbers next to this data's.
    """
    if not (run_dir / "result.json").is_file():
        return None
    try:
        stored = load_run_result(run_dir)
    except ValueError:
        return None
    changed = data_differences(stored.data, data_fingerprint(data))
    if changed:
        raise ValueError(f"{run_dir} was trained on other data (different {', '.join(changed)}); use --overwrite "
                         "to retrain it, or another --out")
    ignore = {"progress"}
    same = {k: v for k, v in config_to_dict(stored.config).items() if k not in ignore} == {
        k: v for k, v in config_to_dict(run_config).items() if k not in ignore}
    return stored if same and len(stored.history) == run_config.epochs else None


def _train_or_load(run_config: TrainConfig, data: DatasetSplits, run_dir: Path, *, resume: bool,
                   log: Callable[[str], None]) -> RunResult:
    if resume:
        stored = _finished_run(run_dir, run_config, data)
        if stored is not None:
            log(f"      finished earlier: reusing {run_dir / 'result.json'}")
            return stored
    return train_and_evaluate(run_config, data, run_dir, resume=resume)


def write_json_atomic(path: Path, data: dict) -> Path:
    """``json.dump`` into a temporary file next to ``path``, then rename (NaN written as ``NaN``)."""
    return write_text_atomic(path, json.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def run_grid(
    config: GridConfig,
    data: DatasetSplits,
    *,
    model: str,
    data_root: Path,
    synthetic: bool,
    calibration_class: str | None = None,
    log: Callable[[str], None] = print,
) -> GridResult:
    """Train every (optimiser, loss) of ``config`` on ``data`` and write the report into ``config.out``.

    Args:
      config: the grid and training options.
      data: the splits (``data.name`` is ``"acdc"`` or ``"promise12"``: it picks the paper's table).
      model: ``"enet"`` or ``"residualunet"``.
      data_root, synthetic: where the data came from (recorded in results.json).
      calibration_class: the class of the reliability diagram (Figure 3), e.g. ``"LV"``; default: the last.

    Raises:
      FileExistsError: when ``config.out`` already holds runs and neither ``resume`` nor ``overwrite`` is set
        (checked before anything is trained).
    """
    check_grid(config, model)
    start = time.perf_counter()
    if config.compilation_cache:
        enable_compilation_cache(Path(config.cache_dir) / "jax-compilation")
    out = Path(config.out)
    grid = [(o, l) for o in config.optimizers for l in config.losses]
    run_dirs = {key: out / "runs" / run_name(*key) for key in grid}
    _check_run_dirs(list(run_dirs.values()), config)
    info = data_info(data, data_root, synthetic)
    log(f"{data.name}: {info['train_slices']} train / {info['val_slices']} val / {info['test_slices']} test slices "
        f"({info['train_volumes']}/{info['val_volumes']}/{info['test_volumes']} volumes) at "
        f"{config.image_size}x{config.image_size}, {'synthetic' if synthetic else 'real'} data from {data_root}")

    runs: dict[tuple[str, str], RunResult] = {}
    for i, (optimizer, loss) in enumerate(grid, start=1):
        where = " (foreground classes only)" if foreground_only(config, loss) else ""
        log(f"[{i}/{len(grid)}] {model} {optimizer} {loss}{where}: {config.epochs} epochs -> "
            f"{run_dirs[optimizer, loss]}")
        run_config = train_config(config, model=model, optimizer=optimizer, loss=loss, num_classes=data.num_classes)
        runs[optimizer, loss] = _train_or_load(run_config, data, run_dirs[optimizer, loss], resume=config.resume,
                                               log=log)
        run = runs[optimizer, loss]
        log(f"      test DSC (fg mean) {100 * np.asarray(run.test_dsc)[:, 1:].mean():.1f}%, best epoch "
            f"{run.best_epoch}, {run.wall_time_s:.0f} s")

    class_names = tuple(data.class_names)
    table = tables.build_table1([(o, l, runs[o, l].test_dsc) for o, l in grid], class_names,
                                title=f"{data.name}: testing DSC (%), mean (std) over test volumes")
    paper = tables.paper_table1(data.name)
    files: dict[str, Path] = {}
    files["table1.md"], files["table1.csv"] = tables.write_table1(table, out, paper=paper)

    files["fig2.png"] = figures.plot_validation_curves(
        {key: run.history for key, run in runs.items()}, out / "fig2.png",
        title=f"{data.name}: validation DSC over epochs")
    k = _class_index(class_names, calibration_class)
    for j, optimizer in enumerate(config.optimizers):
        suffix = "" if j == 0 else f"-{optimizer}"
        label = tables.optimizer_display_name(optimizer)
        files[f"fig3{suffix}.png"] = figures.plot_calibration(
            {l: runs[optimizer, l].test_clece for l in config.losses},
            {l: runs[optimizer, l].reliability for l in config.losses},
            class_names, out / f"fig3{suffix}.png", class_index=k,
            title=f"{data.name}, {label}: test calibration")
        if config.num_examples > 0:
            files[f"fig4{suffix}.png"] = figures.plot_examples(
                {l: runs[optimizer, l].examples for l in config.losses}, class_names, out / f"fig4{suffix}.png",
                max_rows=config.num_examples, title=f"{data.name}, {label}: test slices")

    wall = time.perf_counter() - start
    results = {
        "dataset": data.name,
        "model": model,
        "config": config_to_dict(config),
        "environment": environment_info(),
        "data": info,
        "table1": table.to_dict(),
        "paper_table1": paper.to_dict(),
        "conventions": {
            "test_dsc": "3D DSC per test volume (all slices stacked) and class, background at index 0, in [0, 1]",
            "table1": list(table.notes),
            "clece": "test_clece[k]: class-wise ECE of class k over every test pixel (background pixels included), "
                     "15 equal-width bins, p = 0 in the first bin; the background class is at index 0; "
                     "summary has the mean over all classes and over the foreground classes",
        },
        "runs": {run_name(o, l): {"optimizer": o, "loss": l, "run_dir": str(run_dirs[o, l]),
                                  **_run_record(runs[o, l])} for o, l in grid},
        "wall_time_s": wall,
        "runs_wall_time_s": sum(float(run.wall_time_s) for run in runs.values()),
    }
    files["results.json"] = write_json_atomic(out / "results.json", results)
    return GridResult(dataset=data.name, class_names=class_names, runs=runs, table=table, paper=paper,
                      files=files, wall_time_s=wall, data_info=info)


def format_summary(result: GridResult) -> str:
    """A short text: our Table 1 next to the paper's, per-run timings, and where every file is."""
    out_dir = result.files["results.json"].parent
    run_time = sum(float(run.wall_time_s) for run in result.runs.values())
    lines = [f"== {result.dataset}: {len(result.runs)} runs, {run_time / 60:.1f} min of training "
             f"(this call {result.wall_time_s / 60:.1f} min), "
             f"{'synthetic' if result.data_info.get('synthetic') else 'real'} data ==", "",
             "Testing DSC (%), mean (std) over test volumes — ours / paper:", "",
             tables.format_comparison(result.table, result.paper)]
    lines.append("Runs (best epoch by validation DSC, wall time):")
    for (optimizer, loss), run in result.runs.items():
        lines.append(f"  {run_name(optimizer, loss):<20} best epoch {run.best_epoch:>4}  "
                     f"ClECE {100 * float(np.mean(run.test_clece)):.2f}%  {run.wall_time_s:7.1f} s")
    lines += ["", f"Outputs in {out_dir}/:"]
    lines += [f"  {name}" for name in sorted(result.files)]
    lines.append("  runs/<optimizer>-<loss>/  (metrics.jsonl, checkpoints/, predictions/, result.json)")
    if result.data_info.get("synthetic"):
        lines += ["", "Synthetic data: the numbers only show that the pipeline works; compare with the paper "
                  "on the real dataset (--data-root, --preset paper)."]
    return "\n".join(lines)
