"""Surface distances in a grid's report (:mod:`segmime_jax.paper.grid_report`): HD95 and ASSD tables in Table 1's
layout, the paired All-HD95 comparison of each loss with the reference, and every run's per-volume metrics as
one CSV. The distances themselves are measured by :mod:`segmime_jax.train.surface` while each run is tested.

A loss that mimics Dice's gradient can match Dice on overlap and still differ on boundaries: a spurious island
far from the heart barely moves the DSC and sets the HD95. Runs finished before the distances were measured
have none (``None``): their rows are empty and no comparison is made (a rerun measures them from the runs'
NIfTI predictions, :func:`segmime_jax.paper.grid._add_surface_metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from segmime_jax.paper import statistics
from segmime_jax.paper.grid_config import GridRun
from segmime_jax.report import tables
from segmime_jax.train import RunResult
from segmime_jax.train.results import volume_metrics_csv


def pooled(runs: Sequence[RunResult], name: str) -> np.ndarray | None:
    """``(seeds × volumes, K)``: ``test_hd95`` or ``test_assd`` of every seed stacked; ``None`` when a run has
    none."""
    arrays = [getattr(r, name) for r in runs]
    return None if any(a is None for a in arrays) else np.concatenate([np.asarray(a, np.float64) for a in arrays])


def distance_tables(
    keys: Sequence[tuple[str, str]],
    result_of: Callable[[str, str], list[RunResult]],
    class_names: Sequence[str],
    title: str,
    over: str,
) -> tuple[tables.Table1, tables.Table1]:
    """The HD95 and ASSD tables (mm), one row per ``(optimizer, loss)`` of ``keys`` as Table 1.

    Args:
      keys: the rows' ``(optimizer, loss)``.
      result_of: the runs (seeds) of a row.
      class_names: background first.
      title: the start of each table's title (e.g. ``"acdc: testing"``).
      over: what the statistics are over (e.g. ``"test volumes"``).
    """
    return tuple(  # type: ignore[return-value]
        tables.build_distance_table(
            [(o, l, pooled(result_of(o, l), f"test_{name}")) for o, l in keys],
            class_names,
            title=f"{title} {label} (mm), mean (std) over {over}",
            key=f"{name}_mm",
        )
        for name, label in (("hd95", "HD95"), ("assd", "ASSD"))
    )


def _all_hd95(runs: Sequence[RunResult]) -> np.ndarray | None:
    """``(seeds, volumes)`` mean HD95 over the foreground classes; NaN where a class has none."""
    if any(r.test_hd95 is None for r in runs):
        return None
    return np.stack([np.asarray(r.test_hd95, np.float64)[:, 1:].mean(-1) for r in runs])


def paired_hd95(candidate_runs: Sequence[RunResult], reference_runs: Sequence[RunResult]) -> dict[str, Any]:
    """The paired difference ``candidate − reference`` of the per-volume All-HD95 (mm), over the test volumes
    where every class has an HD95 in every seed of both losses.

    Returns:
      ``{"test_all_hd95_mm": Difference, "test_all_hd95_volumes_left_out": int}`` (no difference when no volume
      is left; ``{}`` when a run has no HD95).
    """
    candidate, reference = _all_hd95(candidate_runs), _all_hd95(reference_runs)
    if candidate is None or reference is None:
        return {}
    keep = np.isfinite(candidate).all(0) & np.isfinite(reference).all(0)
    if not keep.any():
        return {"test_all_hd95_volumes_left_out": int(keep.size)}
    return {
        "test_all_hd95_mm": statistics.paired_difference(candidate[:, keep], reference[:, keep]),
        "test_all_hd95_volumes_left_out": int((~keep).sum()),
    }


def format_hd95_comparison(comparison: dict[str, Any]) -> str:
    """``"; All-HD95 −1.2 mm [−2.0, −0.4]"`` (and the volumes left out) for a comparison line; ``""`` without."""
    if "test_all_hd95_volumes_left_out" not in comparison:
        return ""
    left_out = comparison["test_all_hd95_volumes_left_out"]
    if "test_all_hd95_mm" not in comparison:
        return "; All-HD95: no test volume where every class has one in both"
    text = f"; All-HD95 {comparison['test_all_hd95_mm'].format(scale=1, unit='mm')}"
    return text + (f" ({left_out} volumes without an HD95 left out)" if left_out else "")


def format_distances(hd95: tables.Table1, assd: tables.Table1) -> str:
    """One markdown table with ``HD95 / ASSD`` cells (the HD95's undefined count in brackets)."""
    lines = [
        "| optimizer | loss | " + " | ".join(f"{c} HD95 / ASSD" for c in hd95.columns) + " |",
        "|---|---|" + "---|" * len(hd95.columns),
    ]
    for first, second in zip(hd95.rows, assd.rows, strict=True):
        cells = [
            f"{tables.format_cell(a, 1, n)} / {tables.format_cell(b, 1)}"
            for a, b, n in zip(first.values, second.values, first.undefined, strict=True)
        ]
        lines.append(f"| {first.optimizer} | {first.loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def volume_csv(grid: Sequence[GridRun], runs: dict[str, RunResult]) -> str:
    """Every run's per-volume metrics (:meth:`RunResult.volume_rows`) after its optimizer, loss and seed."""
    rows = [
        {"optimizer": r.optimizer, "loss": r.loss, "seed": r.seed, **row}
        for r in grid
        for row in runs[r.name].volume_rows()
    ]
    return volume_metrics_csv(rows)
