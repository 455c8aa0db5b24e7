"""The paper's experiment, end to end: :func:`run_experiment` (what ``python -m experiments.acdc`` and
``python -m experiments.promise12`` call with their presets and loader) finds or makes the data and calls
:func:`run_grid`, which trains (or reuses) every run of the grid (:mod:`~segmime_jax.paper.grid.training`), writes
the report (:mod:`~segmime_jax.paper.grid.report`: ``table1.md``, ``results.json``, the figures ...), and prints
its summary. A rerun reuses finished runs and continues unfinished ones from their checkpoints.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from segmime_jax.data import DataError, DatasetSplits
from segmime_jax.distributed import initialize, is_primary, primary_first, process_label
from segmime_jax.models import check_input_size
from segmime_jax.paper.grid.config import GridConfig, GridRun, Shard, grid_runs, loss_terms, resolve_shard
from segmime_jax.paper.grid.datasets import data_info, dataset_root
from segmime_jax.paper.grid.report import GridResult, format_summary, write_grid_report
from segmime_jax.paper.grid.training import DivergedRunsError, plan_run, train_grid
from segmime_jax.train import NonFiniteLossError


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
