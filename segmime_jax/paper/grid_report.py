"""The report of a grid (:mod:`segmime_jax.paper.grid`): Table 1 (DSC, then HD95 and ASSD in mm) and the paired
comparisons, the figures, ``results.json``, ``test_metrics.csv`` (every run's per-volume metrics), and the printed
summary."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segmime_jax.atomic_files import write_json_atomic, write_text_atomic
from segmime_jax.data import DatasetSplits
from segmime_jax.environment import environment
from segmime_jax.losses.spec import canonical_name
from segmime_jax.paper import distances, statistics
from segmime_jax.paper.grid_config import GridConfig, GridRun
from segmime_jax.report import boxplots, figures, tables
from segmime_jax.train import RunResult
from segmime_jax.train.metrics import mean_foreground
from segmime_jax.train.surface import CONVENTION


@dataclass
class GridResult:
    """What :func:`run_grid` produced: every run's result, Table 1, the comparisons and the files written."""

    dataset: str
    class_names: tuple[str, ...]
    runs: dict[str, RunResult]  # by run name
    grid: tuple[GridRun, ...]
    table: tables.Table1
    paper: tables.Table1
    distances: tuple[tables.Table1, ...]  # HD95 and ASSD (mm), Table 1's rows
    comparisons: dict[str, dict[str, Any]]
    files: dict[str, Path]
    wall_time_s: float
    data_info: dict = field(default_factory=dict)

    def seeds_of(self, optimizer: str, loss: str) -> list[RunResult]:
        """The results of (optimizer, loss), in seed order."""
        return [self.runs[r.name] for r in self.grid if (r.optimizer, r.loss) == (optimizer, loss)]


def _pooled_dsc(runs: Sequence[RunResult]) -> np.ndarray:
    return np.concatenate([np.asarray(r.test_dsc, np.float64) for r in runs], axis=0)


def _to_90(run: RunResult) -> int:
    """The first epoch at which the run's validation DSC reached 90 % of its best."""
    return statistics.epochs_to_fraction([h["val_dsc_fg"] for h in run.history], 0.9)


def compare_losses(config: GridConfig, result_of: Callable[[str, str], list[RunResult]]) -> dict[str, dict]:
    """For each optimiser and each loss other than the reference: the paired difference of per-volume All-DSC
    and All-HD95 (mm, mean over foreground classes; volumes where a class has no HD95 in either loss are left
    out and counted) on the test set, and of the epochs to 90 % of the best validation DSC, with 95 % bootstrap
    intervals (:mod:`segmime_jax.paper.statistics`). Keys ``"<optimizer>/<loss>"``."""
    reference = next((l for l in config.losses if canonical_name(l) == canonical_name(config.reference_loss)), None)
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
            comparisons[f"{optimizer}/{loss}"] = {
                "optimizer": optimizer,
                "loss": loss,
                "reference": reference,
                "test_all_dsc": dsc,
                **distances.paired_hd95(other, base),
                "epochs_to_90pct_best_val": epochs,
            }
    return comparisons


def _format_comparisons(comparisons: dict[str, dict]) -> list[str]:
    lines = []
    for c in comparisons.values():
        dsc, epochs = c["test_all_dsc"], c["epochs_to_90pct_best_val"]
        hd95 = distances.format_hd95_comparison(c)
        lines.append(
            f"  {tables.optimizer_display_name(c['optimizer'])}, {tables.loss_display_name(c['loss'])} − "
            f"{tables.loss_display_name(c['reference'])}: test All-DSC {dsc.format()}{hd95}; epochs to 90 % of "
            f"the best validation DSC {epochs.format(scale=1, unit='epochs')}"
        )
    return lines


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
    class_names = tuple(data.class_names)

    def result_of(optimizer: str, loss: str) -> list[RunResult]:
        return [runs[r.name] for r in grid if (r.optimizer, r.loss) == (optimizer, loss)]

    keys = [(o, l) for o in config.optimizers for l in config.losses]
    over = "test volumes" if config.seeds == 1 else f"test volumes and {config.seeds} seeds"
    table = tables.build_table1(
        [(o, l, _pooled_dsc(result_of(o, l))) for o, l in keys],
        class_names,
        title=f"{data.name}: testing DSC (%), mean (std) over {over}",
    )
    paper = tables.paper_table1(data.name)
    hd95_table, assd_table = distances.distance_tables(keys, result_of, class_names, f"{data.name}: testing", over)
    comparisons = compare_losses(config, result_of)
    files: dict[str, Path] = {}
    if write_files:
        files["table1.md"], files["table1.csv"] = tables.write_table1(
            table, out, paper=paper, comparisons=_format_comparisons(comparisons), extra=(hd95_table, assd_table)
        )
        files["test_metrics.csv"] = write_text_atomic(out / "test_metrics.csv", distances.volume_csv(grid, runs))
        files.update(_write_figures(config, data.name, class_names, keys, result_of, calibration_class))
    wall = time.perf_counter() - start
    results = {
        "dataset": data.name,
        "model": model,
        "config": config,
        "environment": environment(),
        "data": info,
        "table1": table.to_dict(),
        "table1_hd95": hd95_table.to_dict(),
        "table1_assd": assd_table.to_dict(),
        "paper_table1": paper.to_dict(),
        "comparisons": {key: _comparison_json(c) for key, c in comparisons.items()},
        "conventions": _conventions(table),
        "runs": {r.name: _run_json(r, runs[r.name]) for r in grid},
        "wall_time_s": wall,
        "runs_wall_time_s": sum(float(run.wall_time_s) for run in runs.values()),
    }
    if write_files:
        files["results.json"] = write_json_atomic(out / "results.json", results)
    return GridResult(
        dataset=data.name,
        class_names=class_names,
        runs=runs,
        grid=tuple(grid),
        table=table,
        paper=paper,
        distances=(hd95_table, assd_table),
        comparisons=comparisons,
        files=files,
        wall_time_s=wall,
        data_info=info,
    )


def _write_figures(
    config: GridConfig,
    dataset: str,
    class_names: tuple[str, ...],
    keys: Sequence[tuple[str, str]],
    result_of: Callable[[str, str], list[RunResult]],
    calibration_class: str | None,
) -> dict[str, Path]:
    """The grid's figures: Figure 2 (validation curves), training loss, gradient range, and per optimiser
    Figures 3 (calibration) and 4 (test slices) from each loss's first seed."""
    out = Path(config.out)
    files: dict[str, Path] = {}
    histories = {key: [r.history for r in result_of(*key)] for key in keys}
    files["fig2.png"] = figures.plot_validation_curves(
        histories, out / "fig2.png", title=f"{dataset}: validation DSC over epochs"
    )
    files["train_loss.png"] = figures.plot_training_loss(
        histories, out / "train_loss.png", title=f"{dataset}: training loss over epochs"
    )
    hd95 = {key: distances.pooled(result_of(*key), "test_hd95") for key in keys}
    if all(v is not None for v in hd95.values()):
        files["hd95.png"] = boxplots.plot_distance_boxes(
            hd95, class_names, out / "hd95.png", title=f"{dataset}: HD95 per test volume (mm, original grid)"
        )
    if config.train.telemetry:
        files["gradient_range.png"] = figures.plot_gradient_range(
            histories,
            out / "gradient_range.png",
            title=f"{dataset}: dynamic range of ∂L/∂s per (image, class) during training",
        )
    k = _class_index(class_names, calibration_class)
    for j, optimizer in enumerate(config.optimizers):
        suffix = "" if j == 0 else f"-{optimizer}"
        label = tables.optimizer_display_name(optimizer)
        first = {l: result_of(optimizer, l)[0] for l in config.losses}
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


def _run_json(run: GridRun, result: RunResult) -> dict:
    return {
        "optimizer": run.optimizer,
        "loss": run.loss,
        "seed": run.seed,
        "run_dir": str(run.directory),
        "epochs_to_90pct_best_val": _to_90(result),
        "late_gain": statistics.late_gain([h["val_dsc_fg"] for h in result.history]),
        **result.to_json(include_examples=False),
    }


def _conventions(table: tables.Table1) -> dict:
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
        tables.format_comparison(result.table, result.paper),
    ]
    if any(any(v is not None for v in row.values) for row in result.distances[0].rows):
        lines += [
            "Testing HD95 / ASSD (mm, on the original voxel grid), mean (std) over the test volumes where they are "
            "defined ([n undefined]: a class missed or predicted where there is none):",
            "",
            distances.format_distances(*result.distances),
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
        r = result.runs[run.name]
        curve = [h["val_dsc_fg"] for h in r.history]
        surface_s = f"  (HD95/ASSD {r.surface['time_s']:.1f} s)" if r.surface else ""
        lines.append(
            f"  {run.name:<24} best epoch {r.best_epoch:>4}/{len(curve)}  90 % at {_to_90(r):>4}  "
            f"late gain {100 * statistics.late_gain(curve):4.1f} points  "
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
