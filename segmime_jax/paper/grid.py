"""The paper's experiment: a grid of training runs (optimiser × loss × seed) on one dataset, and its report.

The experiment scripts (``python -m experiments.acdc``, ``python -m experiments.promise12``) are thin: they
define presets of a :class:`GridConfig` and a loader, and call :func:`run_experiment`, which loads the dataset
(a real download with ``--data-root``, otherwise a synthetic dataset in the same on-disk format, generated once
into the cache folder: :func:`segmime_jax.paper.datasets.dataset_root`) and calls :func:`run_grid`:

1. every (optimiser, loss, seed) is trained into ``<out>/runs/<optimizer>-<loss>-seed<S>/``
   (:mod:`segmime_jax.paper.grid_training`: one run after another with
   :func:`segmime_jax.train.train_and_evaluate`, or the runs of each optimiser stacked with
   :func:`segmime_jax.train.stacked.train_stacked`, ``--grid-mode``). All runs share one set of compiled
   programs (the loss is a per-run argument, see :mod:`segmime_jax.losses.params`). A rerun reuses finished
   runs and continues unfinished ones from their checkpoints; ``overwrite`` retrains;
2. the report: ``table1.md`` / ``table1.csv`` (Table 1, and ours next to the paper's; HD95 and ASSD in mm in
   its layout), the paired comparison of every loss with the reference loss (:mod:`segmime_jax.paper.statistics`),
   ``results.json`` (everything behind them), ``test_metrics.csv`` (per volume and class), ``hd95.png``,
   ``fig2.png`` (validation DSC per epoch), ``train_loss.png``, ``gradient_range.png`` (the gradient's dynamic
   range during training), ``fig3.png`` (calibration) and ``fig4.png`` (test slices) for the first optimiser
   (``fig3-<optimizer>.png`` ... for the others), written by :mod:`segmime_jax.paper.grid_report`;
3. :func:`~segmime_jax.paper.grid_report.format_summary` prints the tables, the differences with their
   intervals, and where everything is.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from segmime_jax.cli import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_options, nested, option
from segmime_jax.data import DataError, DatasetSplits
from segmime_jax.distributed import DistributedConfig, initialize, is_primary, primary_first, process_label
from segmime_jax.losses import LossProgram, build_loss
from segmime_jax.losses.spec import canonical_name
from segmime_jax.models import check_input_size
from segmime_jax.paper.datasets import data_info, dataset_root
from segmime_jax.paper.grid_report import GridResult, format_summary, write_grid_report
from segmime_jax.paper.grid_training import GRID_MODES, DivergedRunsError, plan_run, train_grid
from segmime_jax.paper.shards import Shard, parse_shard, resolve_shard
from segmime_jax.train import NonFiniteLossError, TrainConfig
from segmime_jax.train.optim import OPTIMIZERS

#: TrainConfig fields a grid sets per run (not command-line options of the grid).
PER_RUN_FIELDS = ("model", "loss", "loss_classes", "optimizer", "learning_rate")


@dataclass(frozen=True)
class GridConfig:
    """Options of a paper experiment (one ``--kebab-case`` flag each); ``train`` holds the per-run options."""

    losses: tuple[str, ...] = option(
        ("ce", "dsc", "mime", "nm"),
        "comma-separated loss specs (segmime_jax.losses.build_loss: ce, dsc, mime, nm, gdl, surrogate, 1*ce+1*dsc)",
        metavar="LOSS,...",
    )
    foreground_only: tuple[str, ...] = option(
        (),
        "losses of --losses computed on the foreground classes only (1..K-1); the binary mime of the paper acts "
        "on the foreground channel (§2.4: its b > 0 is what stops the all-foreground solution), while with the "
        "background channel too, the far more numerous background pixels dominate and the network can collapse "
        "to background everywhere; names not in --losses are ignored (aliases such as dice = dsc match); '' for "
        "none",
        metavar="LOSS,...",
    )
    optimizers: tuple[str, ...] = option(("adam",), "comma-separated optimisers: adam, sgd", metavar="OPT,...")
    seeds: int = option(
        1,
        "runs per (optimiser, loss), with seeds --seed, --seed+1, ...; the losses are compared "
        "paired by seed and test volume",
        within=AT_LEAST_ONE,
    )
    reference_loss: str = option(
        "dsc", "the loss every other one is compared with (paired differences); one of --losses"
    )
    data_root: Path | None = option(
        None,
        "folder of the real dataset download; none: a synthetic dataset in the same format, generated into "
        "<cache-dir>/synthetic/ on first use and reused",
    )
    synthetic_cases: int = option(
        20, "number of patients/cases of the synthetic dataset (ignored with --data-root)", within=AT_LEAST_ONE
    )
    synthetic_zoom: float = option(
        1.0,
        "synthetic data only: field of view shrunk by this factor around the heart (ACDC) or the prostate "
        "(PROMISE12), at the same matrix size (1: as in the real datasets; see segmime_jax.data.synthetic)",
        within=AT_LEAST_ONE,
    )
    data_seed: int = option(0, "seed of the synthetic dataset and of the seeded split", within=NON_NEGATIVE)
    image_size: int = option(256, "working size: every slice is resized to SIZE x SIZE", within=AT_LEAST_ONE)
    adam_lr: float = option(5e-4, "Adam learning rate (paper: 5e-4, betas 0.99, 0.999)", within=POSITIVE)
    sgd_lr: float = option(1e-2, "SGD learning rate (paper: 1e-2, momentum 0.9, weight decay 5e-4)", within=POSITIVE)
    out: Path = option(Path("results"), "output folder")
    cache_dir: Path = option(
        Path(".cache"),
        "cache folder: synthetic datasets (synthetic/), preprocessed slices (preprocessed/) and "
        "compiled XLA programs (jax-compilation/)",
    )
    compilation_cache: bool = option(
        True, "keep compiled programs in <cache-dir>/jax-compilation/ so that later runs skip compilation"
    )
    overwrite: bool = option(
        False,
        "retrain this grid's runs found in --out (by default a rerun reuses finished runs and continues "
        "unfinished ones from their checkpoints)",
    )
    grid_mode: str = option(
        "auto",
        "how the runs train: sequential (one after another), stacked (the runs of each optimiser together, one "
        "compiled step over a run axis, spread over the devices), auto (the mode measured faster on this backend: "
        "sequential on CPU; see docs/training.md)",
        choices=GRID_MODES,
    )
    shard: str | None = option(
        None,
        "train only the runs whose index in the grid (optimiser, loss, seed order) is K-1 modulo N, and write the "
        "report only once every run of the grid is finished (a plain command afterwards reuses them all); "
        "default: the task of the SLURM array that launched this process (ID - MIN + 1 of COUNT), else every run",
        metavar="K/N",
    )
    train: TrainConfig = nested(TrainConfig(), exclude=PER_RUN_FIELDS)
    distributed: DistributedConfig = nested(DistributedConfig())

    def __post_init__(self) -> None:
        check_options(self)
        if not self.losses:
            raise ValueError("--losses: give at least one loss")
        if len(set(self.losses)) != len(self.losses):
            raise ValueError(f"--losses: repeated loss in {','.join(self.losses)}")
        for spec in self.losses + self.foreground_only + (self.reference_loss,):
            build_loss(spec)  # ValueError naming the valid losses
        compared = {canonical_name(loss) for loss in self.losses}
        if len(self.losses) > 1 and canonical_name(self.reference_loss) not in compared:
            raise ValueError(
                f"--reference-loss {self.reference_loss} is not one of --losses {','.join(self.losses)}: every loss "
                "is compared with it; add it to --losses or name one of them"
            )
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown or not self.optimizers:
            raise ValueError(
                f"--optimizers: expected a comma-separated subset of {','.join(OPTIMIZERS)}, "
                f"got {','.join(self.optimizers) or 'nothing'}"
            )
        if len(set(self.optimizers)) != len(self.optimizers):
            raise ValueError(f"--optimizers: repeated optimiser in {','.join(self.optimizers)}")
        if self.grid_mode not in GRID_MODES:
            raise ValueError(f"--grid-mode must be one of {', '.join(GRID_MODES)}, got {self.grid_mode!r}")
        for flag, folder in (("--out", self.out), ("--cache-dir", self.cache_dir)):
            _check_folder(flag, folder)
        if self.shard is not None:
            parse_shard(self.shard)

    @property
    def size(self) -> tuple[int, int]:
        return (self.image_size, self.image_size)


def _check_folder(flag: str, folder: Path) -> None:
    """ValueError if ``folder``, or the nearest of its parents that exists, is a file: nothing could be written
    under it."""
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == folder else f"is under {existing}, a file"
        raise ValueError(f"{flag} {folder}: {where}, not a folder")


@dataclass(frozen=True)
class GridRun:
    """One run of a grid."""

    optimizer: str
    loss: str
    seed: int
    name: str
    directory: Path
    config: TrainConfig


def run_name(optimizer: str, loss: str, seed: int) -> str:
    """Folder name of one run, ``<optimizer>-<loss>-seed<S>``, characters other than ``[A-Za-z0-9._-]`` as ``_``."""
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in loss)
    return f"{optimizer}-{safe}-seed{seed}"


def foreground_only(config: GridConfig, loss: str) -> bool:
    """Whether ``loss`` (a spec of ``config.losses``) is computed on the foreground classes only."""
    return canonical_name(loss) in {canonical_name(name) for name in config.foreground_only}


def grid_runs(config: GridConfig, *, model: str, num_classes: int) -> tuple[GridRun, ...]:
    """The runs of the grid, optimiser by optimiser, loss by loss, seed by seed."""
    runs = []
    for optimizer in config.optimizers:
        for loss in config.losses:
            for i in range(config.seeds):
                seed = config.train.seed + i
                train = dataclasses.replace(
                    config.train,
                    model=model,
                    loss=loss,
                    optimizer=optimizer,
                    seed=seed,
                    loss_classes=tuple(range(1, num_classes)) if foreground_only(config, loss) else None,
                    learning_rate=config.adam_lr if optimizer == "adam" else config.sgd_lr,
                )
                name = run_name(optimizer, loss, seed)
                runs.append(GridRun(optimizer, loss, seed, name, Path(config.out) / "runs" / name, train))
    return tuple(runs)


def loss_terms(runs: Sequence[GridRun], num_classes: int) -> tuple[str, ...]:
    """The union of the runs' loss terms: what the one compiled program of the grid evaluates."""
    return LossProgram.covering(*(run.config.loss_params(num_classes) for run in runs)).terms


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


def run_grid(
    config: GridConfig,
    data: DatasetSplits,
    *,
    model: str,
    data_root: Path,
    synthetic: bool,
    calibration_class: str | None = None,
    log: Callable[[str], None] = print,
) -> GridResult | None:
    """Train (or reuse) every run of ``config`` on ``data`` and write the report into ``config.out``.

    With a shard (``--shard K/N``, or a SLURM array's task: :mod:`segmime_jax.paper.shards`) only the shard's
    runs train, and the report is written only if every run of the grid is then finished; otherwise this
    returns None after saying which runs it waits for.

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
      DivergedRunsError: runs diverged; the others finished (no report is written).
    """
    check_grid(config, model)
    start = time.perf_counter()
    if config.compilation_cache:
        enable_compilation_cache(Path(config.cache_dir) / "jax-compilation")
    grid = grid_runs(config, model=model, num_classes=data.num_classes)
    terms = loss_terms(grid, data.num_classes)
    info = data_info(data, data_root, synthetic)
    log(
        f"{data.name}: {info['train_slices']} train / {info['val_slices']} val / {info['test_slices']} test slices "
        f"({info['train_volumes']}/{info['val_volumes']}/{info['test_volumes']} volumes) at "
        f"{config.image_size}x{config.image_size}, {'synthetic' if synthetic else 'real'} data from {data_root}"
    )
    shard = resolve_shard(config.shard, os.environ)
    if shard is not None and shard.count > 1:
        if not _train_shard(shard, grid, data, terms, config, model=model, log=log):
            return None
    runs = train_grid(grid, data, terms, mode=config.grid_mode, overwrite=config.overwrite, model=model, log=log)
    return write_grid_report(
        config,
        data,
        grid,
        runs,
        model=model,
        info=info,
        calibration_class=calibration_class,
        start=start,
        write_files=is_primary(),
    )


def _train_shard(
    shard: Shard,
    grid: Sequence[GridRun],
    data: DatasetSplits,
    terms: Sequence[str],
    config: GridConfig,
    *,
    model: str,
    log: Callable[[str], None],
) -> bool:
    """Train the shard's runs; whether every run of the grid is finished (then the report can be written)."""
    mine = shard.select(grid)
    log(f"shard {shard}: {len(mine)} of the grid's {len(grid)} runs ({', '.join(r.name for r in mine) or 'none'})")
    if mine and all(plan_run(run, data, overwrite=config.overwrite) == "reuse" for run in mine):
        log(f"shard {shard}: its runs are all finished already")
    if mine:
        train_grid(mine, data, terms, mode=config.grid_mode, overwrite=config.overwrite, model=model, log=log)
    unfinished = [run.name for run in grid if plan_run(run, data, overwrite=False) != "reuse"]
    if unfinished:
        log(
            f"shard {shard} done; the grid's report waits for {len(unfinished)} unfinished run(s) of other shards "
            f"({', '.join(unfinished)}): once they are finished, the same command without --shard writes it"
        )
        return False
    log(f"shard {shard}: every run of the grid is finished, writing the grid's report")
    return True


# ------------------------------------------------------------------------------------------ entry points
def run_experiment(
    config: GridConfig,
    *,
    dataset: str,
    model: str,
    load: Callable[[Path], DatasetSplits],
    calibration_class: str | None = None,
    log: Callable[[str], None] = print,
) -> GridResult | None:
    """What ``python -m experiments.<dataset>`` does: find or make the data, run the grid, print the summary.

    A user's mistake (bad option value, data, run folder) ends the program with one ``error:`` line; so does a
    divergence (with the advice to rerun with ``--overwrite``) and an interruption (rerunning continues).
    """
    try:
        initialize(config.distributed)  # before any JAX computation; nothing for a single process
        if not is_primary():
            log = _silent  # process 0 speaks for the run
        check_grid(config, model)  # before any data is prepared or run folder made
        root, synthetic = primary_first("data", lambda: dataset_root(dataset, config, log=log))
        data = primary_first("preprocessing", lambda: _load(load, root, synthetic))
        result = run_grid(
            config, data, model=model, data_root=root, synthetic=synthetic, calibration_class=calibration_class, log=log
        )
    except (DataError, FileExistsError, FileNotFoundError, NotADirectoryError, ValueError, ConnectionError) as err:
        raise SystemExit(f"error: {process_label()}{err}") from None
    except (NonFiniteLossError, DivergedRunsError) as err:
        raise SystemExit(
            f"error: {process_label()}{err} Rerun with --overwrite (and e.g. a lower learning rate)."
        ) from None
    except KeyboardInterrupt:
        raise SystemExit("interrupted: run the same command again to continue from the last completed epochs") from None
    if is_primary() and result is not None:
        log(format_summary(result))
    return result


def _load(load: Callable[[Path], DatasetSplits], root: Path, synthetic: bool) -> DatasetSplits:
    """``load(root)``; a bad file of a generated synthetic dataset says how to get a good one."""
    try:
        return load(root)
    except DataError as err:
        if not synthetic:
            raise
        raise DataError(
            f"{err} (a generated synthetic dataset: delete {root} and rerun to generate it again)"
        ) from None


def _silent(text: str) -> None:
    """The log of the processes other than process 0."""
