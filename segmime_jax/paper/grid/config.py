"""A grid of the paper's experiment as data: its options (:class:`GridConfig`, one command-line flag each), its
runs (:class:`GridRun`, :func:`grid_runs`) and its shards (:class:`Shard`). The leaf of
:mod:`segmime_jax.paper.grid`: the modules that train, measure and report a grid import these types from here,
and this module imports nothing of the package.

Shards, cluster jobs without a coordinator: shard K of N trains the grid's runs whose index is K - 1 modulo N.
Each shard is an independent command (a SLURM array task, a job on another machine) writing into the same
``--out`` on a shared file system; no process talks to another. A shard writes the grid's report only when every
run of the grid is finished; a final plain command (no shard) reuses every finished run and writes Table 1. Two
shards never take the same run, and a run is trained by one process at a time anyway (its lock:
:mod:`segmime_jax.train.run_lock`).

Without ``--shard``, a process that a SLURM array launched (``SLURM_ARRAY_TASK_ID``, ``SLURM_ARRAY_TASK_COUNT``,
``SLURM_ARRAY_TASK_MIN``) is shard ``ID - MIN + 1`` of ``COUNT``: ``sbatch --array=1-8`` makes 8 shards.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from segmime_jax.cli import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, check_options, nested, option
from segmime_jax.distributed import DistributedConfig
from segmime_jax.losses import LossProgram, build_loss, canonical_name
from segmime_jax.train.config import TrainConfig
from segmime_jax.train.optim import OPTIMIZERS

#: How a grid's runs train (:mod:`segmime_jax.paper.grid.training`).
GRID_MODES = ("auto", "sequential", "parallel", "stacked")  # segmime_jax.train.layout.LAYOUTS

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
        "how the runs share the devices: sequential (one run at a time over all devices), parallel (whole runs to "
        "devices: one run per device, or each run over devices/runs of them), stacked (several runs vmapped on "
        "each device), auto (parallel with several runs and devices, stacked where measured faster, else "
        "sequential; see docs/training.md)",
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


# ------------------------------------------------------------------------------------------------ shards
T = TypeVar("T")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.index <= self.count:
            raise ValueError(f"--shard must be K/N with 1 <= K <= N, got {self}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def select(self, runs: Sequence[T]) -> list[T]:
        """The runs of this shard: those whose 0-based index in ``runs`` is ``index - 1`` modulo ``count``.

        Example:
          >>> Shard(2, 3).select(["r1", "r2", "r3", "r4", "r5"])
          ['r2', 'r5']
        """
        return [run for i, run in enumerate(runs) if i % self.count == self.index - 1]


def parse_shard(text: str) -> Shard:
    """``"K/N"`` as a :class:`Shard`; ValueError (one line) for anything else, 0/2, 3/2 or 1/0."""
    match = _SHARD.match(text)
    if match is None:
        raise ValueError(f"--shard must be K/N with 1 <= K <= N, got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))


def shard_from_environment(env: Mapping[str, str]) -> Shard | None:
    """The shard of a process a SLURM array launched (see the module docstring), or None outside an array."""
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    except ValueError:
        raise ValueError("the SLURM_ARRAY_TASK_* variables are not integers; give --shard K/N") from None
    index = task - first + 1
    if not 1 <= index <= count:
        raise ValueError(
            f"SLURM array task {task} (min {first}, count {count}) is not a shard K/N: use a contiguous "
            "--array=1-N, or give --shard K/N"
        )
    return Shard(index, count)


def resolve_shard(option: str | None, env: Mapping[str, str]) -> Shard | None:
    """The shard of this command: ``--shard`` if given, else the SLURM array's, else None (every run)."""
    if option is not None:
        return parse_shard(option)
    return shard_from_environment(env)
