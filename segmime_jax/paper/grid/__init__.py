"""The paper's experiment as a package: a grid of training runs (optimiser × loss × seed) and its report.

Modules, in the order of the data flow; each imports only those above it:

- :mod:`~segmime_jax.paper.grid.config`: the grid as data (:class:`GridConfig`, :class:`GridRun`, shards): the
  leaf, importing nothing of the package;
- :mod:`~segmime_jax.paper.grid.datasets`: where the data come from (a download, or a synthetic dataset);
- :mod:`~segmime_jax.paper.grid.training`: reuse, continue or train every run (one engine call per group);
- :mod:`~segmime_jax.paper.grid.facts`: the finished grid as two long tables, test values per (optimizer, loss,
  seed, volume, class) and history per (run, epoch);
- :mod:`~segmime_jax.paper.grid.tables`, :mod:`~segmime_jax.paper.grid.statistics`,
  :mod:`~segmime_jax.paper.grid.figures`, :mod:`~segmime_jax.paper.grid.boxplots`: Table 1, the paired
  comparisons and the figures, each a function of the facts;
- :mod:`~segmime_jax.paper.grid.report`: writes them all (``table1.md``, ``results.json``, ...);
- :mod:`~segmime_jax.paper.grid.experiment`: :func:`run_grid` and :func:`run_experiment`, what
  ``python -m experiments.acdc`` runs.
"""

from segmime_jax.paper.grid.config import (
    GRID_MODES,
    PER_RUN_FIELDS,
    GridConfig,
    GridRun,
    Shard,
    foreground_only,
    grid_runs,
    loss_terms,
    parse_shard,
    resolve_shard,
    run_name,
)
from segmime_jax.paper.grid.experiment import check_grid, enable_compilation_cache, run_experiment, run_grid
from segmime_jax.paper.grid.report import GridResult, format_summary, write_grid_report
from segmime_jax.paper.grid.training import DivergedRunsError, plan_run, train_grid

__all__ = [
    "GRID_MODES",
    "PER_RUN_FIELDS",
    "DivergedRunsError",
    "GridConfig",
    "GridResult",
    "GridRun",
    "Shard",
    "check_grid",
    "enable_compilation_cache",
    "foreground_only",
    "format_summary",
    "grid_runs",
    "loss_terms",
    "parse_shard",
    "plan_run",
    "resolve_shard",
    "run_experiment",
    "run_grid",
    "run_name",
    "train_grid",
    "write_grid_report",
]
