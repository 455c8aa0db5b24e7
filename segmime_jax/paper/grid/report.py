"""The report of a grid (:mod:`segmime_jax.paper.grid`), every number from its two facts tables
(:mod:`segmime_jax.paper.grid.facts`): Table 1 (DSC, then HD95 and ASSD in mm) and the paired comparisons, the
figures, ``results.json``, ``test_metrics.csv`` (the test facts as written), and the printed summary."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segmime_jax.atomic_files import write_json_atomic, write_text_atomic
from segmime_jax.data import DatasetSplits
from segmime_jax.environment import environment
from segmime_jax.losses import canonical_name
from segmime_jax.losses import display_name as loss_display_name
from segmime_jax.paper.grid import boxplots, figures, statistics, tables
from segmime_jax.paper.grid.config import GridConfig, GridRun
from segmime_jax.paper.grid.facts import epoch_facts, volume_facts
from segmime_jax.train import RunResult
from segmime_jax.train.surface import CONVENTION


@dataclass
class GridResult:
    """What :func:`~segmime_jax.paper.grid.run_grid` produced: every run's result, the facts tables, Table 1 and
    its distance tables, the comparisons and the files written."""

    dataset: str
    class_names: tuple[str, ...]
    runs: dict[str, RunResult]  # by run name
    grid: tuple[GridRun, ...]
    test: pd.DataFrame  # the test facts
    epochs: pd.DataFrame  # the epoch facts
    speeds: pd.DataFrame  # per run: epochs_to_90, late_gain (statistics.run_speeds)
    tables: dict[str, tables.Table]  # "dsc" (Table 1), "hd95_mm", "assd_mm"
    paper: tables.Table
    comparisons: dict[str, dict[str, Any]]
    files: dict[str, Path]
    wall_time_s: float
    data_info: dict = field(default_factory=dict)


def _reference(config: GridConfig) -> str | None:
    """The loss of ``config.losses`` every other one is compared with (None when it is not run)."""
    wanted = canonical_name(config.reference_loss)
    return next((loss for loss in config.losses if canonical_name(loss) == wanted), None)


def _format_comparisons(comparisons: dict[str, dict]) -> list[str]:
    lines = []
    for c in comparisons.values():
        dsc, epochs = c["test_all_dsc"], c["epochs_to_90pct_best_val"]
        lines.append(
            f"  {tables.optimizer_display_name(c['optimizer'])}, {loss_display_name(c['loss'])} − "
            f"{loss_display_name(c['reference'])}: test All-DSC {dsc.format()}{_format_hd95(c)}; epochs to 90 % of "
            f"the best validation DSC {epochs.format(scale=1, unit='epochs')}"
        )
    return lines


def _format_hd95(comparison: dict[str, Any]) -> str:
    """``"; All-HD95 −1.2 mm [−2.0, −0.4]"`` (and the volumes left out) for a comparison line; ``""`` without."""
    if "test_all_hd95_volumes_left_out" not in comparison:
        return ""
    left_out = comparison["test_all_hd95_volumes_left_out"]
    if "test_all_hd95_mm" not in comparison:
        return "; All-HD95: no test volume where every class has one in both"
    text = f"; All-HD95 {comparison['test_all_hd95_mm'].format(scale=1, unit='mm')}"
    return text + (f" ({left_out} volumes without an HD95 left out)" if left_out else "")


def write_grid_report(
    config: GridConfig,
    data: DatasetSplits,
    grid: Sequence[GridRun],
    runs: dict[str, RunResult],
    *,
    model: str,
    info: dict,
    calibration_class: str | None,
    start: float,
    write_files: bool = True,
) -> GridResult:
    """Write Table 1 (with the comparisons), the figures and results.json into ``config.out``; return the
    :class:`GridResult`. ``write_files=False`` (the processes other than process 0 of a multi-process run)
    computes the same result and writes nothing."""
    out = Path(config.out)
    by_key = {(r.optimizer, r.loss, r.seed): runs[r.name] for r in grid}
    test, epochs = volume_facts(by_key), epoch_facts(by_key)
    speeds = statistics.run_speeds(epochs)
    over = "test volumes" if config.seeds == 1 else f"test volumes and {config.seeds} seeds"
    table = tables.tables_of(test, title=f"{data.name}: testing", over=over)
    paper = tables.paper_table1(data.name)
    reference = _reference(config)
    comparisons = {} if reference is None else statistics.compare_losses(test, epochs, reference, config.losses)
    files: dict[str, Path] = {}
    if write_files:
        files["table1.md"], files["table1.csv"] = tables.write_table1(
            table["dsc"],
            out,
            paper=paper,
            comparisons=_format_comparisons(comparisons),
            extra=(table["hd95_mm"], table["assd_mm"]),
        )
        csv = test.drop(columns="measured").to_csv(index=False, float_format="%.6g", lineterminator="\n")
        files["test_metrics.csv"] = write_text_atomic(out / "test_metrics.csv", csv)
        files.update(
            _write_figures(config, data.name, tuple(data.class_names), test, epochs, by_key, calibration_class)
        )
    wall = time.perf_counter() - start
    results = {
        "dataset": data.name,
        "model": model,
        "config": config,
        "environment": environment(),
        "data": info,
        "table1": table["dsc"].to_dict(),
        "table1_hd95": table["hd95_mm"].to_dict(),
        "table1_assd": table["assd_mm"].to_dict(),
        "paper_table1": paper.to_dict(),
        "comparisons": {key: _comparison_json(c) for key, c in comparisons.items()},
        "conventions": _conventions(table["dsc"]),
        "runs": {r.name: _run_json(r, runs[r.name], speeds.loc[(r.optimizer, r.loss, r.seed)]) for r in grid},
        "wall_time_s": wall,
        "runs_wall_time_s": sum(float(run.wall_time_s) for run in runs.values()),
    }
    if write_files:
        files["results.json"] = write_json_atomic(out / "results.json", results)
    return GridResult(
        dataset=data.name,
        class_names=tuple(data.class_names),
        runs=runs,
        grid=tuple(grid),
        test=test,
        epochs=epochs,
        speeds=speeds,
        tables=table,
        paper=paper,
        comparisons=comparisons,
        files=files,
        wall_time_s=wall,
        data_info=info,
    )


def _write_figures(
    config: GridConfig,
    dataset: str,
    class_names: tuple[str, ...],
    test: pd.DataFrame,
    epochs: pd.DataFrame,
    runs: dict[tuple[str, str, int], RunResult],
    calibration_class: str | None,
) -> dict[str, Path]:
    """The grid's figures: Figure 2 (validation curves), training loss, gradient range and the HD95 boxes from the
    facts; per optimiser Figures 3 (calibration) and 4 (test slices) from each loss's first seed (its reliability
    bins and slices, which no table holds)."""
    out = Path(config.out)
    files: dict[str, Path] = {}
    files["fig2.png"] = figures.plot_validation_curves(
        epochs, out / "fig2.png", title=f"{dataset}: validation DSC over epochs"
    )
    files["train_loss.png"] = figures.plot_training_loss(
        epochs, out / "train_loss.png", title=f"{dataset}: training loss over epochs"
    )
    if test["measured"].all():
        files["hd95.png"] = boxplots.plot_distance_boxes(
            test, out / "hd95.png", title=f"{dataset}: HD95 per test volume (mm, original grid)"
        )
    if config.train.telemetry:
        files["gradient_range.png"] = figures.plot_gradient_range(
            epochs,
            out / "gradient_range.png",
            title=f"{dataset}: dynamic range of ∂L/∂s per (image, class) during training",
        )
    k = _class_index(class_names, calibration_class)
    for j, optimizer in enumerate(config.optimizers):
        suffix = "" if j == 0 else f"-{optimizer}"
        label = tables.optimizer_display_name(optimizer)
        first = {l: runs[(optimizer, l, config.train.seed)] for l in config.losses}
        files[f"fig3{suffix}.png"] = figures.plot_calibration(
            {l: r.test_clece for l, r in first.items()},
            {l: r.reliability for l, r in first.items()},
            class_names,
            out / f"fig3{suffix}.png",
            class_index=k,
            title=f"{dataset}, {label}: test calibration (seed {config.train.seed})",
        )
        if config.train.num_examples > 0:
            files[f"fig4{suffix}.png"] = figures.plot_examples(
                {l: r.examples for l, r in first.items()},
                class_names,
                out / f"fig4{suffix}.png",
                max_rows=config.train.num_examples,
                title=f"{dataset}, {label}: test slices",
            )
    return files


def _comparison_json(comparison: dict) -> dict:
    plain = {k: v for k, v in comparison.items() if not isinstance(v, statistics.Difference)}
    differences = {k: v.to_json() for k, v in comparison.items() if isinstance(v, statistics.Difference)}
    return {**plain, **differences}


def _run_json(run: GridRun, result: RunResult, speed: pd.Series) -> dict:
    return {
        "optimizer": run.optimizer,
        "loss": run.loss,
        "seed": run.seed,
        "run_dir": str(run.directory),
        "epochs_to_90pct_best_val": int(speed["epochs_to_90"]),
        "late_gain": float(speed["late_gain"]),
        **result.to_json(include_examples=False),
    }


def _conventions(table: tables.Table) -> dict:
    """What each number in results.json means (written next to the numbers so the file stands alone)."""
    return {
        "test_dsc": "3D DSC per test volume (all slices stacked) and class, background at index 0, in [0, 1]",
        "table1": list(table.notes),
        "comparisons": "candidate − reference, paired by seed and test volume: mean of per-volume All-DSC "
        "differences (fraction, not %), 95 % BCa bootstrap interval resampling test volumes (and "
        "seeds, independently, when there are several); epochs_to_90pct_best_val: first epoch "
        "at which a run's validation DSC reaches 90 % of its best, paired by seed",
        "late_gain": "max validation DSC minus its max before the last quarter of the epochs (a flat curve: "
        "under 0.01)",
        "surface": f"test_hd95, test_assd (and table1_hd95, table1_assd, hd95.png, test_metrics.csv): {CONVENTION}; "
        "test_metrics.csv's dsc is the run's test DSC (working grid, as Table 1)",
        "comparisons_hd95": "test_all_hd95_mm: candidate − reference of the per-volume mean HD95 over foreground "
        "classes (mm), paired as the DSC, over the volumes where every class has one in both losses "
        "(test_all_hd95_volumes_left_out: how many did not)",
        "clece": "test_clece[k]: class-wise ECE of class k over every test pixel (background pixels included), "
        "15 equal-width bins, p = 0 in the first bin; the background class is at index 0",
    }


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
    lines = [
        f"== {result.dataset}: {len(result.runs)} runs, {run_time / 60:.1f} min of training "
        f"(this call {result.wall_time_s / 60:.1f} min), "
        f"{'synthetic' if result.data_info.get('synthetic') else 'real'} data ==",
        "",
        "Testing DSC (%), mean (std) over test volumes"
        + (f" and {seeds} seeds" if seeds > 1 else "")
        + " — ours / paper:",
        "",
        tables.format_side_by_side([result.tables["dsc"], result.paper], "(ours / paper)"),
    ]
    if result.test["measured"].any():
        lines += [
            "Testing HD95 / ASSD (mm, on the original voxel grid), mean (std) over the test volumes where they are "
            "defined ([n undefined]: a class missed or predicted where there is none):",
            "",
            tables.format_side_by_side([result.tables["hd95_mm"], result.tables["assd_mm"]], "HD95 / ASSD"),
        ]
    if result.comparisons:
        volumes = result.data_info.get("test_volumes")
        lines += [
            f"Each loss against the reference, paired by test volume ({volumes})"
            + (
                f" and seed ({seeds})"
                if seeds > 1
                else " (one seed: the interval covers the choice of test volumes, not training randomness)"
            )
            + "; mean difference [95 % bootstrap interval]:"
        ]
        lines += _format_comparisons(result.comparisons) + [""]
    lines.append(
        "Runs: best epoch (by validation DSC), first epoch at 90 % of the best, what the best rose by in the "
        "last quarter of the epochs (flat: under 1 point), ClECE, wall time:"
    )
    for run in result.grid:
        r, speed = result.runs[run.name], result.speeds.loc[(run.optimizer, run.loss, run.seed)]
        surface_s = f"  (HD95/ASSD {r.surface['time_s']:.1f} s)" if r.surface else ""
        lines.append(
            f"  {run.name:<24} best epoch {r.best_epoch:>4}/{len(r.history)}  90 % at {int(speed['epochs_to_90']):>4}  "
            f"late gain {100 * speed['late_gain']:4.1f} points  "
            f"ClECE {100 * float(np.mean(r.test_clece)):.2f}%  {r.wall_time_s:7.1f} s{surface_s}"
        )
    lines += ["", f"Outputs in {out_dir}/:"]
    lines += [f"  {name}" for name in sorted(result.files)]
    lines.append(
        "  runs/<optimizer>-<loss>-seed<S>/  (metrics.jsonl, TensorBoard events, checkpoints/, predictions/, "
        "result.json, test_metrics.csv)"
    )
    lines.append(f"TensorBoard: tensorboard --logdir {out_dir / 'runs'}")
    if result.data_info.get("synthetic"):
        lines += [
            "",
            "Synthetic data: the numbers show what the code does on data made to look like the real "
            "dataset; the paper's claim is tested on the real one (--data-root, --preset paper).",
        ]
    return "\n".join(lines)
