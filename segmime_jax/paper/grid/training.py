"""Training the runs of a grid: reuse, continue or start each, then train the rest with one engine.

:func:`train_grid` first plans every run (:func:`plan_run`: reuse a finished run, continue it from its
checkpoints, start or restart it; a folder holding a run of another configuration or other data is refused
before anything trains), then trains what needs training with :func:`segmime_jax.train.train_runs`: the runs
that can share a step (same model, optimiser kind, batch sizes, epochs, ...:
:func:`segmime_jax.train.config.stack_key`; the loss, the seed and the optimiser's hyperparameters may differ)
as one call, laid out on the devices by ``--grid-mode`` (:mod:`segmime_jax.train.layout`: ``sequential``,
``parallel``, ``stacked`` or ``auto``); in ``sequential`` mode one run per call, so that each run's lines follow
its announcement. Every layout writes the same files, and any continues another's runs.

A diverged run (NaN/inf loss, gradient or state) does not stop the grid: the other runs finish and are kept,
then :class:`DivergedRunsError` names every diverged run and its last good checkpoint, and no report is
written (Table 1 and the paired comparisons need every run); rerunning with ``--overwrite`` and another
learning rate retrains.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from segmime_jax.atomic_files import json_ready
from segmime_jax.data import DatasetSplits, fingerprint_differences
from segmime_jax.distributed import barrier, is_primary
from segmime_jax.paper.grid.config import GridRun
from segmime_jax.train import NonFiniteLossError, RunResult, load_run_result, save_run_result, train_runs
from segmime_jax.train.config import RESUMABLE_CHANGES, stack_key
from segmime_jax.train.layout import choose_layout
from segmime_jax.train.metrics import mean_foreground
from segmime_jax.train.run_lock import RunLock, check_not_in_use
from segmime_jax.train.surface import surface_from_predictions


class DivergedRunsError(FloatingPointError):
    """Runs of a grid diverged; the others finished (see the module docstring). ``errors``: run name ->
    :class:`~segmime_jax.train.checkpoint.NonFiniteLossError`."""

    def __init__(self, errors: dict[str, NonFiniteLossError]):
        self.errors = dict(errors)
        lines = "; ".join(f"{name}: {error}" for name, error in self.errors.items())
        super().__init__(f"{len(self.errors)} run(s) diverged, the others finished; no report written. {lines}")


def plan_run(run: GridRun, data: DatasetSplits, overwrite: bool) -> str:
    """What to do with ``run``'s folder: ``"start"``, ``"reuse"`` (finished with this configuration),
    ``"continue"`` (from its checkpoints) or ``"restart"`` (unfinished, nothing to continue from). Raises
    ValueError when the folder holds a run of another configuration or other data (before anything trains).
    Reads the folder only (no lock): :func:`train_grid` checks the locks."""
    directory = run.directory
    if not directory.is_dir() or not any(directory.iterdir()):
        return "start"
    if overwrite:
        return "restart"
    if (directory / "result.json").is_file():
        stored = load_run_result(directory)
        other_data = fingerprint_differences(stored.data, data.fingerprint())
        if other_data:
            raise ValueError(
                f"{directory} was trained on other data (different {', '.join(other_data)}); pass "
                "--overwrite to retrain it, or choose another --out"
            )
        before, now = json_ready(stored.config), json_ready(run.config)
        changed = [k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k]]
        if changed:
            raise ValueError(
                f"{directory} was trained with another configuration (different "
                f"{', '.join(changed)}); pass --overwrite to retrain it, or choose another --out"
            )
        done = len(stored.history)
        if done == run.config.epochs:
            return "reuse"
        if done > run.config.epochs:
            raise ValueError(
                f"{directory} was trained for {done} epochs, more than --epochs {run.config.epochs}; "
                f"pass --epochs {done} to reuse it or --overwrite to retrain it"
            )
    has_checkpoint = (directory / "checkpoints").is_dir() and any(
        p.name.isdigit() for p in (directory / "checkpoints").iterdir()
    )
    return "continue" if has_checkpoint and run.config.checkpoints else "restart"


def train_grid(
    grid: Sequence[GridRun],
    data: DatasetSplits,
    terms: Sequence[str],
    *,
    mode: str,
    overwrite: bool,
    model: str,
    log: Callable[[str], None],
) -> dict[str, RunResult]:
    """Every run's result, in grid order: reused, or trained in ``mode`` (see the module docstring).

    Raises:
      ValueError: a run folder holds a run of another configuration or other data (before anything trains).
      RunInUseError: another process is training one of the runs (before anything trains).
      DivergedRunsError: runs diverged (after the others finished).
    """
    if is_primary():
        for run in grid:
            check_not_in_use(run.directory)  # another command trains it now: touch nothing of the grid
    actions = {run.name: plan_run(run, data, overwrite) for run in grid}
    barrier("grid planned")  # every process has read the run folders before any is written
    layout = choose_layout(max(1, sum(a != "reuse" for a in actions.values())), grid[0].config.num_devices, mode=mode)
    number = {run.name: i for i, run in enumerate(grid, start=1)}
    results: dict[str, RunResult | NonFiniteLossError] = {}
    for group in _groups(grid, actions, together=layout.mode != "sequential"):
        for run in group:
            _announce(run, number[run.name], len(grid), model, actions[run.name], overwrite, log)
        if len(group) == 1 and actions[group[0].name] == "reuse":
            results[group[0].name] = _reuse(group[0], data, log)
        else:
            results.update(_train(group, actions, data, terms, mode, log))
        for run in group:
            _report(run, results[run.name], log)
    errors = {name: r for name, r in results.items() if isinstance(r, NonFiniteLossError)}
    if errors:
        raise DivergedRunsError(errors)
    return {run.name: results[run.name] for run in grid}  # type: ignore[misc]


def _groups(grid: Sequence[GridRun], actions: dict[str, str], *, together: bool) -> list[list[GridRun]]:
    """The runs in training order: one per group, or the runs to train grouped by what they share (each reused
    run alone)."""
    if not together:
        return [[run] for run in grid]
    groups: dict[object, list[GridRun]] = {}
    for run in grid:
        key = run.name if actions[run.name] == "reuse" else stack_key(run.config)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def _announce(
    run: GridRun, number: int, total: int, model: str, action: str, overwrite: bool, log: Callable[[str], None]
) -> None:
    where = " (foreground classes only)" if run.config.loss_classes else ""
    log(
        f"[{number}/{total}] {model} {run.optimizer} {run.loss}{where} seed {run.seed}: {run.config.epochs} "
        f"epochs -> {run.directory}"
    )
    if action == "reuse":
        log(f"      finished earlier: reusing {run.directory / 'result.json'}")
    elif action == "restart":
        log(
            "      --overwrite: training it again"
            if overwrite
            else "      unfinished, with no checkpoint to continue from: training it again"
        )
        if is_primary():
            with RunLock(run.directory):  # the lock file lies beside the folder: it outlives the folder
                shutil.rmtree(run.directory)
        barrier(f"{run.directory}: cleared")


def _reuse(run: GridRun, data: DatasetSplits, log: Callable[[str], None]) -> RunResult:
    result = load_run_result(run.directory)
    return _add_surface_metrics(result, run.directory, data, log) if result.test_hd95 is None else result


def _add_surface_metrics(
    result: RunResult, directory: Path, data: DatasetSplits, log: Callable[[str], None]
) -> RunResult:
    """A run finished before HD95 and ASSD were measured: measure them from its NIfTI predictions (the same
    original-grid labels the test would have measured) and save them into its result.json."""
    test = data.test
    surface = None
    if list(result.test_volume_names) == [v.name for v in test.volumes]:
        surface = surface_from_predictions(test, directory / "predictions")
    if surface is None:
        log("      no HD95/ASSD in it and no predictions/ to measure them from (--overwrite retrains it)")
        return result
    info = {**surface.info(), "measured": "from predictions/ after the run"}
    result = dataclasses.replace(result, test_hd95=surface.hd95, test_assd=surface.assd, surface=info)
    if is_primary():
        save_run_result(result, directory)
    log(f"      HD95 and ASSD measured from its predictions/ in {surface.seconds:.1f} s")
    return result


def _train(
    group: list[GridRun], actions: dict[str, str], data: DatasetSplits, terms: Sequence[str], mode: str, log: Callable
) -> dict[str, RunResult | NonFiniteLossError]:
    out = train_runs(
        [run.config for run in group],
        data,
        [run.directory for run in group],
        resume=any(actions[run.name] == "continue" for run in group),
        layout=mode,
        loss_terms=terms,
        log=log,
    )
    return {run.name: result for run, result in zip(group, out, strict=True)}


def _report(run: GridRun, result: RunResult | NonFiniteLossError, log: Callable[[str], None]) -> None:
    if isinstance(result, NonFiniteLossError):
        log(f"      {run.name} diverged: {result}")
        return
    log(
        f"      {run.name}: test DSC (foreground mean) {100 * mean_foreground(result.test_dsc).mean():.1f}%, best "
        f"epoch {result.best_epoch}, {result.wall_time_s:.0f} s"
    )
