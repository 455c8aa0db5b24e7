"""The paper's experiment: a grid of training runs (optimiser × loss × seed) on one dataset, and its report.

The experiment scripts (``python -m experiments.acdc``, ``python -m experiments.promise12``) are thin: they
define presets of a :class:`GridConfig` and a loader, and call :func:`run_experiment`, which loads the dataset
(a real download with ``--data-root``, otherwise a synthetic dataset in the same on-disk format, generated once
into the cache folder: :func:`dataset_root`) and calls :func:`run_grid`:

1. every (optimiser, loss, seed) is trained with :func:`segmime_jax.train.train_and_evaluate` into
   ``<out>/runs/<optimizer>-<loss>-seed<S>/``. All runs share one set of compiled programs (the loss is a
   per-run argument, see :mod:`segmime_jax.loss_params`). A rerun reuses finished runs and continues
   unfinished ones from their checkpoints; ``overwrite`` retrains;
2. the report: ``table1.md`` / ``table1.csv`` (Table 1, and ours next to the paper's), the paired comparison
   of every loss with the reference loss (:mod:`segmime_jax.report.statistics`), ``results.json`` (everything
   behind them), ``fig2.png`` (validation DSC per epoch), ``train_loss.png``, ``gradient_range.png`` (the
   gradient's dynamic range during training), ``fig3.png`` (calibration) and ``fig4.png`` (test slices) for
   the first optimiser (``fig3-<optimizer>.png`` ... for the others);
3. :func:`format_summary` prints the tables, the differences with their intervals, and where everything is.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmime_jax.atomic_files import json_ready, write_json_atomic
from segmime_jax.cli import nested, option
from segmime_jax.data import DataError, DatasetSplits, fingerprint_differences
from segmime_jax.environment import environment
from segmime_jax.loss_params import LossProgram
from segmime_jax.losses import LOSS_ALIASES, build_loss
from segmime_jax.models import check_input_size
from segmime_jax.report import figures, statistics, tables
from segmime_jax.train import NonFiniteLossError, RunResult, TrainConfig, load_run_result, train_and_evaluate
from segmime_jax.train.config import RESUMABLE_CHANGES
from segmime_jax.train.metrics import mean_foreground

OPTIMIZERS = ("adam", "sgd")
#: TrainConfig fields a grid sets per run (not command-line options of the grid).
PER_RUN_FIELDS = ("model", "loss", "loss_classes", "optimizer", "learning_rate")


@dataclass(frozen=True)
class GridConfig:
    """Options of a paper experiment (one ``--kebab-case`` flag each); ``train`` holds the per-run options."""

    losses: tuple[str, ...] = option(
        ("ce", "dsc", "mime", "nm"), "comma-separated loss specs (segmime_jax.losses.build_loss: ce, dsc, mime, nm, "
        "gdl, surrogate, 1*ce+1*dsc)", metavar="LOSS,...")
    foreground_only: tuple[str, ...] = option(
        (), "losses of --losses computed on the foreground classes only (1..K-1); the binary mime of the paper acts "
        "on the foreground channel (§2.4: its b > 0 is what stops the all-foreground solution), while with the "
        "background channel too, the far more numerous background pixels dominate and the network can collapse "
        "to background everywhere; names not in --losses are ignored (aliases such as dice = dsc match); '' for "
        "none", metavar="LOSS,...")
    optimizers: tuple[str, ...] = option(("adam",), "comma-separated optimisers: adam, sgd", metavar="OPT,...")
    seeds: int = option(1, "runs per (optimiser, loss), with seeds --seed, --seed+1, ...; the losses are compared "
                           "paired by seed and test volume")
    reference_loss: str = option("dsc", "the loss every other one is compared with (paired differences)")
    data_root: Path | None = option(
        None, "folder of the real dataset download; none: a synthetic dataset in the same format, generated into "
        "<cache-dir>/synthetic/ on first use and reused")
    synthetic_cases: int = option(20, "number of patients/cases of the synthetic dataset (ignored with --data-root)")
    synthetic_zoom: float = option(
        1.0, "synthetic data only: field of view shrunk by this factor around the heart (ACDC) or the prostate "
        "(PROMISE12), at the same matrix size (1: as in the real datasets; see segmime_jax.data.synthetic)")
    data_seed: int = option(0, "seed of the synthetic dataset and of the seeded split")
    image_size: int = option(256, "working size: every slice is resized to SIZE x SIZE")
    adam_lr: float = option(5e-4, "Adam learning rate (paper: 5e-4, betas 0.99, 0.999)")
    sgd_lr: float = option(1e-2, "SGD learning rate (paper: 1e-2, momentum 0.9, weight decay 5e-4)")
    out: Path = option(Path("results"), "output folder")
    cache_dir: Path = option(
        Path(".cache"), "cache folder: synthetic datasets (synthetic/), preprocessed slices (preprocessed/) and "
        "compiled XLA programs (jax-compilation/)")
    compilation_cache: bool = option(
        True, "keep compiled programs in <cache-dir>/jax-compilation/ so that later runs skip compilation")
    overwrite: bool = option(
        False, "retrain this grid's runs found in --out (by default a rerun reuses finished runs and continues "
        "unfinished ones from their checkpoints)")
    train: TrainConfig = nested(TrainConfig(), exclude=PER_RUN_FIELDS)

    def __post_init__(self) -> None:
        if not self.losses:
            raise ValueError("--losses: give at least one loss")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"--losses: repeated loss in {','.join(self.losses)}")
        for spec in self.losses + self.foreground_only + (self.reference_loss,):
            build_loss(spec)  # ValueError naming the valid losses
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown or not self.optimizers:
            raise ValueError(f"--optimizers: expected a comma-separated subset of {','.join(OPTIMIZERS)}, "
                             f"got {','.join(self.optimizers) or 'nothing'}")
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"--optimizers: repeated optimiser in {','.join(self.optimizers)}")
        for name in ("image_size", "synthetic_cases", "seeds"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.synthetic_zoom >= 1:
            raise ValueError(f"--synthetic-zoom must be at least 1, got {self.synthetic_zoom}")
        if self.adam_lr <= 0 or self.sgd_lr <= 0:
            raise ValueError("learning rates must be positive")
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out}: is a file, not a folder")

    @property
    def size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)


@dataclass(frozen=True)
class GridRun:
    """One run of a grid."""

    optimizer: str
    loss: str
    seed: int
    name: str
    directory: Path
    config: TrainConfig


@dataclass
class GridResult:
    """What :func:`run_grid` produced: every run's result, Table 1, the comparisons and the files written."""

    dataset: str
    class_names: tuple[str, ...]
    runs: dict[str, RunResult]  # by run name
    grid: tuple[GridRun, ...]
    table: tables.Table1
    paper: tables.Table1
    comparisons: dict[str, dict[str, Any]]
    files: dict[str, Path]
    wall_time_s: float
    data_info: dict = field(default_factory=dict)

    def seeds_of(self, optimizer: str, loss: str) -> list[RunResult]:
        """The results of (optimizer, loss), in seed order."""
        return [self.runs[r.name] for r in self.grid if (r.optimizer, r.loss) == (optimizer, loss)]


def run_name(optimizer: str, loss: str, seed: int) -> str:
    """Folder name of one run, ``<optimizer>-<loss>-seed<S>``, characters other than ``[A-Za-z0-9._-]`` as ``_``."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in loss)
    return f"{optimizer}-{safe}-seed{seed}"


def _canonical(spec: str) -> str:
    return LOSS_ALIASES.get(spec.strip().lower(), spec.strip().lower())


def foreground_only(config: GridConfig, loss: str) -> bool:
    """Whether ``loss`` (a spec of ``config.losses``) is computed on the foreground classes only."""
    return _canonical(loss) in {_canonical(name) for name in config.foreground_only}


def grid_runs(config: GridConfig, *, model: str, num_classes: int) -> tuple[GridRun, ...]:
    """The runs of the grid, optimiser by optimiser, loss by loss, seed by seed."""
    runs = []
    for optimizer in config.optimizers:
        for loss in config.losses:
            for i in range(config.seeds):
                seed = config.train.seed + i
                train = dataclasses.replace(
                    config.train, model=model, loss=loss, optimizer=optimizer, seed=seed,
                    loss_classes=tuple(range(1, num_classes)) if foreground_only(config, loss) else None,
                    learning_rate=config.adam_lr if optimizer == "adam" else config.sgd_lr)
                name = run_name(optimizer, loss, seed)
                runs.append(GridRun(optimizer, loss, seed, name, Path(config.out) / "runs" / name, train))
    return tuple(runs)


def loss_terms(runs: Sequence[GridRun], num_classes: int) -> tuple[str, ...]:
    """The union of the runs' loss terms: what the one compiled program of the grid evaluates."""
    return LossProgram.covering(*(run.config.loss_params(num_classes) for run in runs)).terms


# ----------------------------------------------------------------------------------------------------- data
def dataset_root(dataset: str, config: GridConfig, *, log: Callable[[str], None] = print) -> tuple[Path, bool]:
    """The folder to load: ``config.data_root``, or the synthetic dataset in the cache, generated if missing.

    The synthetic dataset lives in ``<cache_dir>/synthetic/<dataset>-<cases>-<data_seed>[-zoom<z>]/`` (written
    whole or not at all). Returns ``(root, synthetic)``.
    """
    from segmime_jax.data import synthetic as synthetic_data

    if config.data_root is not None:
        root = Path(config.data_root).expanduser()
        if not root.exists():
            raise FileNotFoundError(f"--data-root {root}: no such folder")
        if not root.is_dir():
            raise NotADirectoryError(f"--data-root {root}: is a file; give the folder of the dataset")
        return root, False
    writers = {"acdc": synthetic_data.write_synthetic_acdc, "promise12": synthetic_data.write_synthetic_promise12}
    if dataset not in writers:
        raise ValueError(f"no synthetic generator for dataset {dataset!r}")
    zoom = "" if config.synthetic_zoom == 1 else f"-zoom{config.synthetic_zoom:g}"
    final = Path(config.cache_dir) / "synthetic" / f"{dataset}-{config.synthetic_cases}-{config.data_seed}{zoom}"

    def write() -> None:
        writers[dataset](final, cases=config.synthetic_cases, seed=config.data_seed, zoom=config.synthetic_zoom)

    if not final.is_dir():
        log(f"generating a synthetic {dataset} dataset ({config.synthetic_cases} cases, seed {config.data_seed}) "
            f"into {final} ...")
        try:
            write()
        except FileExistsError:
            if not final.is_dir():  # not a concurrent generation that got there first
                raise
    return final, True


def data_info(data: DatasetSplits, root: Path, synthetic: bool) -> dict:
    """Where the data came from and how big each split is."""
    return {
        "name": data.name, "root": str(root), "synthetic": synthetic, "class_names": list(data.class_names),
        "image_size": list(data.train.images.shape[1:3]),
        **{f"{split}_{what}": value
           for split in ("train", "val", "test")
           for what, value in (("slices", len(getattr(data, split))),
                               ("volumes", len(getattr(data, split).volumes)),
                               ("patients", len(getattr(data, split).patients)))},
    }


# ----------------------------------------------------------------------------------------- reuse or train
def _plan(run: GridRun, data: DatasetSplits, overwrite: bool) -> str:
    """What to do with ``run``'s folder: ``"start"``, ``"reuse"`` (finished with this configuration),
    ``"continue"`` (from its checkpoints) or ``"restart"`` (unfinished, nothing to continue from). Raises
    ValueError when the folder holds a run of another configuration or other data (before anything trains)."""
    directory = run.directory
    if not directory.is_dir() or not any(directory.iterdir()):
        return "start"
    if overwrite:
        return "restart"
    if (directory / "result.json").is_file():
        stored = load_run_result(directory)
        other_data = fingerprint_differences(stored.data, data.fingerprint())
        if other_data:
            raise ValueError(f"{directory} was trained on other data (different {', '.join(other_data)}); pass "
                             "--overwrite to retrain it, or choose another --out")
        before, now = json_ready(stored.config), json_ready(run.config)
        changed = [k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k]]
        if changed:
            raise ValueError(f"{directory} was trained with another configuration (different "
                             f"{', '.join(changed)}); pass --overwrite to retrain it, or choose another --out")
        done = len(stored.history)
        if done == run.config.epochs:
            return "reuse"
        if done > run.config.epochs:
            raise ValueError(f"{directory} was trained for {done} epochs, more than --epochs {run.config.epochs}; "
                             f"pass --epochs {done} to reuse it or --overwrite to retrain it")
    has_checkpoint = (directory / "checkpoints").is_dir() and any(
        p.name.isdigit() for p in (directory / "checkpoints").iterdir())
    return "continue" if has_checkpoint and run.config.checkpoints else "restart"


def _train_or_reuse(run: GridRun, action: str, data: DatasetSplits, terms: Sequence[str], *, overwrite: bool,
                    log: Callable[[str], None]) -> RunResult:
    if action == "reuse":
        log(f"      finished earlier: reusing {run.directory / 'result.json'}")
        return load_run_result(run.directory)
    if action == "restart":
        log("      --overwrite: training it again" if overwrite else
            "      unfinished, with no checkpoint to continue from: training it again")
        shutil.rmtree(run.directory)
    return train_and_evaluate(run.config, data, run.directory, resume=action == "continue", loss_terms=terms, log=log)


# --------------------------------------------------------------------------------------------------- grid
def check_grid(config: GridConfig, model: str) -> None:
    """Checks that need to know the model, made before any data is loaded or run folder made (ValueError)."""
    check_input_size(model, config.image_size)


def enable_compilation_cache(path: Path) -> None:
    """Use JAX's persistent compilation cache in ``path`` (every program, however fast it compiled)."""
    import jax

    Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def run_grid(config: GridConfig, data: DatasetSplits, *, model: str, data_root: Path, synthetic: bool,
             calibration_class: str | None = None, log: Callable[[str], None] = print) -> GridResult:
    """Train (or reuse) every run of ``config`` on ``data`` and write the report into ``config.out``.

    Args:
      config: the grid and training options.
      data: the splits (``data.name`` is ``"acdc"`` or ``"promise12"``: it picks the paper's table).
      model: ``"enet"`` or ``"residualunet"``.
      data_root, synthetic: where the data came from (recorded in results.json).
      calibration_class: the class of the reliability diagram (Figure 3), e.g. ``"LV"``; default: the last.
      log: where progress messages go.

    Raises:
      ValueError: a run folder in ``config.out`` holds a run of another configuration or other data (checked
        before anything is trained).
    """
    check_grid(config, model)
    start = time.perf_counter()
    if config.compilation_cache:
        enable_compilation_cache(Path(config.cache_dir) / "jax-compilation")
    grid = grid_runs(config, model=model, num_classes=data.num_classes)
    actions = {run.name: _plan(run, data, config.overwrite) for run in grid}
    terms = loss_terms(grid, data.num_classes)
    info = data_info(data, data_root, synthetic)
    log(f"{data.name}: {info['train_slices']} train / {info['val_slices']} val / {info['test_slices']} test slices "
        f"({info['train_volumes']}/{info['val_volumes']}/{info['test_volumes']} volumes) at "
        f"{config.image_size}x{config.image_size}, {'synthetic' if synthetic else 'real'} data from {data_root}")
    runs: dict[str, RunResult] = {}
    for i, run in enumerate(grid, start=1):
        where = " (foreground classes only)" if run.config.loss_classes else ""
        log(f"[{i}/{len(grid)}] {model} {run.optimizer} {run.loss}{where} seed {run.seed}: {run.config.epochs} "
            f"epochs -> {run.directory}")
        result = _train_or_reuse(run, actions[run.name], data, terms, overwrite=config.overwrite, log=log)
        runs[run.name] = result
        log(f"      test DSC (foreground mean) {100 * mean_foreground(result.test_dsc).mean():.1f}%, best epoch "
            f"{result.best_epoch}, {result.wall_time_s:.0f} s")
    return _report(config, data, grid, runs, model=model, info=info, calibration_class=calibration_class,
                   start=start)


def _pooled_dsc(runs: Sequence[RunResult]) -> np.ndarray:
    return np.concatenate([np.asarray(r.test_dsc, np.float64) for r in runs], axis=0)


def _to_90(run: RunResult) -> int:
    """The first epoch at which the run's validation DSC reached 90 % of its best."""
    return statistics.epochs_to_fraction([h["val_dsc_fg"] for h in run.history], 0.9)


def compare_losses(config: GridConfig, result_of: Callable[[str, str], list[RunResult]]) -> dict[str, dict]:
    """For each optimiser and each loss other than the reference: the paired difference of per-volume All-DSC
    (test) and of the epochs to 90 % of the best validation DSC, with 95 % bootstrap intervals
    (:mod:`segmime_jax.report.statistics`). Keys ``"<optimizer>/<loss>"``."""
    reference = next((l for l in config.losses if _canonical(l) == _canonical(config.reference_loss)), None)
    comparisons: dict[str, dict] = {}
    if reference is None:
        return comparisons
    for optimizer in config.optimizers:
        base = result_of(optimizer, reference)
        base_dsc = np.stack([mean_foreground(r.test_dsc) for r in base])
        base_epochs = [_to_90(r) for r in base]
        for loss in config.losses:
            if loss == reference:
                continue
            other = result_of(optimizer, loss)
            dsc = statistics.paired_difference(np.stack([mean_foreground(r.test_dsc) for r in other]), base_dsc)
            epochs = statistics.paired_epoch_difference([_to_90(r) for r in other], base_epochs)
            comparisons[f"{optimizer}/{loss}"] = {"optimizer": optimizer, "loss": loss, "reference": reference,
                                                  "test_all_dsc": dsc, "epochs_to_90pct_best_val": epochs}
    return comparisons


def _format_comparisons(comparisons: dict[str, dict]) -> list[str]:
    lines = []
    for c in comparisons.values():
        dsc, epochs = c["test_all_dsc"], c["epochs_to_90pct_best_val"]
        lines.append(f"  {tables.optimizer_display_name(c['optimizer'])}, {tables.loss_display_name(c['loss'])} − "
                     f"{tables.loss_display_name(c['reference'])}: test All-DSC {dsc.format()}; epochs to 90 % of "
                     f"the best validation DSC {epochs.format(scale=1, unit='epochs')}")
    return lines


def _report(config: GridConfig, data: DatasetSplits, grid: Sequence[GridRun], runs: dict[str, RunResult], *,
            model: str, info: dict, calibration_class: str | None, start: float) -> GridResult:
    """Table 1, comparisons, figures and results.json."""
    out = Path(config.out)
    class_names = tuple(data.class_names)

    def result_of(optimizer: str, loss: str) -> list[RunResult]:
        return [runs[r.name] for r in grid if (r.optimizer, r.loss) == (optimizer, loss)]

    keys = [(o, l) for o in config.optimizers for l in config.losses]
    over = "test volumes" if config.seeds == 1 else f"test volumes and {config.seeds} seeds"
    table = tables.build_table1([(o, l, _pooled_dsc(result_of(o, l))) for o, l in keys], class_names,
                                title=f"{data.name}: testing DSC (%), mean (std) over {over}")
    paper = tables.paper_table1(data.name)
    comparisons = compare_losses(config, result_of)
    files: dict[str, Path] = {}
    files["table1.md"], files["table1.csv"] = tables.write_table1(table, out, paper=paper,
                                                                  comparisons=_format_comparisons(comparisons))
    histories = {key: [r.history for r in result_of(*key)] for key in keys}
    files["fig2.png"] = figures.plot_validation_curves(histories, out / "fig2.png",
                                                       title=f"{data.name}: validation DSC over epochs")
    files["train_loss.png"] = figures.plot_training_loss(histories, out / "train_loss.png",
                                                         title=f"{data.name}: training loss over epochs")
    if config.train.telemetry:
        files["gradient_range.png"] = figures.plot_gradient_range(
            histories, out / "gradient_range.png",
            title=f"{data.name}: dynamic range of ∂L/∂s per (image, class) during training")
    k = _class_index(class_names, calibration_class)
    for j, optimizer in enumerate(config.optimizers):
        suffix = "" if j == 0 else f"-{optimizer}"
        label = tables.optimizer_display_name(optimizer)
        first = {l: result_of(optimizer, l)[0] for l in config.losses}
        files[f"fig3{suffix}.png"] = figures.plot_calibration(
            {l: r.test_clece for l, r in first.items()}, {l: r.reliability for l, r in first.items()},
            class_names, out / f"fig3{suffix}.png", class_index=k,
            title=f"{data.name}, {label}: test calibration (seed {config.train.seed})")
        if config.train.num_examples > 0:
            files[f"fig4{suffix}.png"] = figures.plot_examples(
                {l: r.examples for l, r in first.items()}, class_names, out / f"fig4{suffix}.png",
                max_rows=config.train.num_examples, title=f"{data.name}, {label}: test slices")
    wall = time.perf_counter() - start
    results = {
        "dataset": data.name, "model": model, "config": config, "environment": environment(), "data": info,
        "table1": table.to_dict(), "paper_table1": paper.to_dict(),
        "comparisons": {key: {**{k: v for k, v in c.items() if not isinstance(v, statistics.Difference)},
                              "test_all_dsc": c["test_all_dsc"].to_json(),
                              "epochs_to_90pct_best_val": c["epochs_to_90pct_best_val"].to_json()}
                        for key, c in comparisons.items()},
        "conventions": {
            "test_dsc": "3D DSC per test volume (all slices stacked) and class, background at index 0, in [0, 1]",
            "table1": list(table.notes),
            "comparisons": "candidate − reference, paired by seed and test volume: mean of per-volume All-DSC "
                           "differences (fraction, not %), 95 % BCa bootstrap interval resampling test volumes (and "
                           "seeds, independently, when there are several); epochs_to_90pct_best_val: first epoch "
                           "at which a run's validation DSC reaches 90 % of its best, paired by seed",
            "late_gain": "max validation DSC minus its max before the last quarter of the epochs (a flat curve: "
                         "under 0.01)",
            "clece": "test_clece[k]: class-wise ECE of class k over every test pixel (background pixels included), "
                     "15 equal-width bins, p = 0 in the first bin; the background class is at index 0",
        },
        "runs": {r.name: {"optimizer": r.optimizer, "loss": r.loss, "seed": r.seed, "run_dir": str(r.directory),
                          "epochs_to_90pct_best_val": _to_90(runs[r.name]),
                          "late_gain": statistics.late_gain([h["val_dsc_fg"] for h in runs[r.name].history]),
                          **runs[r.name].to_json(include_examples=False)} for r in grid},
        "wall_time_s": wall,
        "runs_wall_time_s": sum(float(run.wall_time_s) for run in runs.values()),
    }
    files["results.json"] = write_json_atomic(out / "results.json", results)
    return GridResult(dataset=data.name, class_names=class_names, runs=runs, grid=tuple(grid), table=table,
                      paper=paper, comparisons=comparisons, files=files, wall_time_s=wall, data_info=info)


def _class_index(class_names: Sequence[str], wanted: str | None) -> int:
    if wanted is not None:
        for k, name in enumerate(class_names):
            if tables.class_display_name(name).lower() == wanted.lower() or name.lower() == wanted.lower():
                return k
    return len(class_names) - 1


def format_summary(result: GridResult) -> str:
    """A short text: our Table 1 next to the paper's, the paired differences, per-run figures, the files."""
    out_dir = result.files["results.json"].parent
    run_time = sum(float(run.wall_time_s) for run in result.runs.values())
    seeds = len({r.seed for r in result.grid})
    lines = [f"== {result.dataset}: {len(result.runs)} runs, {run_time / 60:.1f} min of training "
             f"(this call {result.wall_time_s / 60:.1f} min), "
             f"{'synthetic' if result.data_info.get('synthetic') else 'real'} data ==", "",
             "Testing DSC (%), mean (std) over test volumes" + (f" and {seeds} seeds" if seeds > 1 else "")
             + " — ours / paper:", "", tables.format_comparison(result.table, result.paper)]
    if result.comparisons:
        volumes = result.data_info.get("test_volumes")
        lines += [f"Each loss against the reference, paired by test volume ({volumes})"
                  + (f" and seed ({seeds})" if seeds > 1 else " (one seed: the interval covers the choice of test "
                     "volumes, not training randomness)") + "; mean difference [95 % bootstrap interval]:"]
        lines += _format_comparisons(result.comparisons) + [""]
    lines.append("Runs: best epoch (by validation DSC), first epoch at 90 % of the best, what the best rose by in the "
                 "last quarter of the epochs (flat: under 1 point), ClECE, wall time:")
    for run in result.grid:
        r = result.runs[run.name]
        curve = [h["val_dsc_fg"] for h in r.history]
        lines.append(f"  {run.name:<24} best epoch {r.best_epoch:>4}/{len(curve)}  90 % at {_to_90(r):>4}  "
                     f"late gain {100 * statistics.late_gain(curve):4.1f} points  "
                     f"ClECE {100 * float(np.mean(r.test_clece)):.2f}%  {r.wall_time_s:7.1f} s")
    lines += ["", f"Outputs in {out_dir}/:"]
    lines += [f"  {name}" for name in sorted(result.files)]
    lines.append("  runs/<optimizer>-<loss>-seed<S>/  (metrics.jsonl, checkpoints/, predictions/, result.json)")
    if result.data_info.get("synthetic"):
        lines += ["", "Synthetic data: the numbers show what the code does on data made to look like the real "
                  "dataset; the paper's claim is tested on the real one (--data-root, --preset paper)."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ entry points
def run_experiment(config: GridConfig, *, dataset: str, model: str, load: Callable[[Path], DatasetSplits],
                   calibration_class: str | None = None, log: Callable[[str], None] = print) -> GridResult:
    """What ``python -m experiments.<dataset>`` does: find or make the data, run the grid, print the summary.

    A user's mistake (bad option value, data, run folder) ends the program with one ``error:`` line; so does a
    divergence (with the advice to rerun with ``--overwrite``) and an interruption (rerunning continues).
    """
    try:
        check_grid(config, model)  # before any data is prepared or run folder made
        root, synthetic = dataset_root(dataset, config, log=log)
        data = load(root)
        result = run_grid(config, data, model=model, data_root=root, synthetic=synthetic,
                          calibration_class=calibration_class, log=log)
    except (DataError, FileExistsError, FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    except NonFiniteLossError as err:
        raise SystemExit(f"error: {err} Rerun with --overwrite (and e.g. a lower learning rate).") from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted: run the same command again to continue from the last completed epochs") from None
    log(format_summary(result))
    return result
