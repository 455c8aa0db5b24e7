"""Paper Table 1: testing DSC (%) as mean (std) over test volumes, one row per optimiser × loss; and the same
layout for HD95 and ASSD in mm (:func:`build_distance_table`, not in the paper).

Input: for each run, the (V, K) array of 3D DSC per test volume and class (background at index 0, as
returned by :func:`segmime_jax.train.train_and_evaluate` in ``RunResult.test_dsc``), values in [0, 1].

Conventions (the same as the reference code, LIVIAETS/boundary-loss ``report.py``, which computes
``data.mean(axis=(1, 2))`` and ``data.std(axis=(1, 2))`` over (sample, class) with numpy):

- the background (index 0) is excluded from the table;
- a class column is the mean and the population standard deviation (``numpy.std``, ``ddof=0``) over test
  volumes of that class's DSC;
- "All" pools every (volume, foreground class) value: its mean equals the mean over volumes of the
  per-volume foreground mean, and its std is the std of the pooled values (not the std of the per-volume
  means, which is smaller). The paper's rows follow this rule: e.g. Adam CE, RV 81.7 (10.8), Myo 80.0 (7.2),
  LV 89.4 (8.7) gives sqrt(mean of variances + variance of means) = 9.9, the paper's "All" std;
  ``per_volume_all_std`` gives the other convention for completeness;
- "All" is only shown when there is more than one foreground class (ACDC); PROMISE12 has one (Prostate).

HD95 and ASSD (:mod:`segmime_jax.train.surface`) follow the same rules over the values that are defined: a class
missed, or predicted where there is none, has no surface distance (NaN); it is left out of the mean and std and
counted next to them (``[n undefined]``), out of the number of test volumes (times seeds) per class.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segmime_jax.atomic_files import write_text_atomic

ALL = "All"

#: Display names of classes, looked up case-insensitively with spaces/underscores/hyphens removed.
_CLASS_DISPLAY = {
    "rv": "RV",
    "rightventricle": "RV",
    "rightventricular": "RV",
    "rightventriclecavity": "RV",
    "myo": "Myo",
    "myocardium": "Myo",
    "lv": "LV",
    "leftventricle": "LV",
    "leftventriclecavity": "LV",
    "prostate": "Prostate",
}
_LOSS_DISPLAY = {
    "ce": "CE",
    "dsc": "DSC",
    "dice": "DSC",
    "mime": "Mime",
    "nm": "NM",
    "gdl": "GDL",
    "surrogate": "Surrogate",
}
_OPTIMIZER_DISPLAY = {"adam": "Adam", "sgd": "SGD"}


def class_display_name(name: str) -> str:
    """``"right_ventricle"`` → ``"RV"``, ``"myocardium"`` → ``"Myo"``, ``"prostate"`` → ``"Prostate"``.

    Unknown names are returned unchanged.
    """
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return _CLASS_DISPLAY.get(key, name)


def loss_display_name(spec: str) -> str:
    """``"ce"`` → ``"CE"``, ``"mime"`` → ``"Mime"``, ``"nm"`` → ``"NM"``; a compound spec is shown as given."""
    return _LOSS_DISPLAY.get(spec.strip().lower(), spec)


def optimizer_display_name(name: str) -> str:
    """``"adam"`` → ``"Adam"``, ``"sgd"`` → ``"SGD"``."""
    return _OPTIMIZER_DISPLAY.get(name.strip().lower(), name)


@dataclass(frozen=True)
class Table1Row:
    """One row: an optimiser × loss, with (mean, std) in percent per column (``None``: not run/reported)."""

    optimizer: str
    loss: str
    values: tuple[tuple[float, float] | None, ...]
    undefined: tuple[int, ...] = ()  # per column, values left out of the mean (distance tables)


@dataclass(frozen=True)
class Table1:
    """Testing DSC (%) as mean (std); ``columns`` are display names (e.g. RV, Myo, LV, All)."""

    columns: tuple[str, ...]
    rows: tuple[Table1Row, ...]
    title: str = "Testing DSC (%), mean (std) over test volumes"
    notes: tuple[str, ...] = field(default=())
    key: str = "dsc"  # what the values are: dsc (%), hd95_mm, assd_mm (CSV column names)

    def cell(self, optimizer: str, loss: str, column: str) -> tuple[float, float] | None:
        """The (mean, std) of one cell; KeyError when the row or column is absent."""
        if column not in self.columns:
            raise KeyError(f"no column {column!r}; columns are {self.columns}")
        j = self.columns.index(column)
        for row in self.rows:
            if row.optimizer.lower() == optimizer.lower() and row.loss.lower() == loss.lower():
                return row.values[j]
        raise KeyError(f"no row ({optimizer!r}, {loss!r})")

    def to_dict(self) -> dict:
        """JSON-ready: ``{"columns": [...], "rows": [{"optimizer", "loss", "<column>": [mean, std] | None}]}``."""
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": [
                {
                    "optimizer": r.optimizer,
                    "loss": r.loss,
                    **{c: (None if v is None else [v[0], v[1]]) for c, v in zip(self.columns, r.values, strict=True)},
                    **({"undefined": dict(zip(self.columns, r.undefined, strict=True))} if r.undefined else {}),
                }
                for r in self.rows
            ],
            "notes": list(self.notes),
            "key": self.key,
        }


def dsc_summary(test_dsc: np.ndarray, class_names: Sequence[str]) -> dict[str, tuple[float, float]]:
    """Mean and population std (in %) over test volumes, per foreground class and "All" (see module doc).

    Args:
      test_dsc: (V, K) DSC per test volume and class in [0, 1], background at index 0.
      class_names: the K class names, background first.

    Returns:
      ``{display name: (mean %, std %)}`` in class order, then ``"All"`` when K - 1 > 1.
    """
    dsc = np.asarray(test_dsc, dtype=np.float64)
    if dsc.ndim != 2 or dsc.shape[0] == 0:
        raise ValueError(f"test_dsc must be a non-empty (volumes, classes) array, got shape {dsc.shape}")
    if dsc.shape[1] != len(class_names):
        raise ValueError(
            f"test_dsc has {dsc.shape[1]} classes but class_names has {len(class_names)}: {tuple(class_names)}"
        )
    if dsc.shape[1] < 2:
        raise ValueError("test_dsc needs a background column and at least one foreground class")
    foreground = dsc[:, 1:] * 100.0
    out = {
        class_display_name(name): (float(foreground[:, j].mean()), float(foreground[:, j].std()))
        for j, name in enumerate(class_names[1:])
    }
    if foreground.shape[1] > 1:
        out[ALL] = (float(foreground.mean()), float(foreground.std()))
    return out


def distance_summary(values: np.ndarray, class_names: Sequence[str]) -> dict[str, tuple[float, float, int]]:
    """Mean, population std and number undefined of surface distances (mm) over test volumes, per foreground
    class and "All" (every defined (volume, foreground class) value pooled), as :func:`dsc_summary`.

    Args:
      values: ``(V, K)`` HD95 or ASSD per test volume and class, background at index 0 (ignored), NaN where
        undefined.
      class_names: the K class names, background first.

    Returns:
      ``{display name: (mean, std, undefined)}``; mean and std NaN when no value of the column is defined.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0 or values.shape[1] != len(class_names) or values.shape[1] < 2:
        raise ValueError(f"values must be (volumes, {len(class_names)} classes), got shape {values.shape}")

    def summary(column: np.ndarray) -> tuple[float, float, int]:
        defined = column[np.isfinite(column)]
        if defined.size == 0:
            return math.nan, math.nan, int(column.size)
        return float(defined.mean()), float(defined.std()), int(column.size - defined.size)

    foreground = values[:, 1:]
    out = {class_display_name(name): summary(foreground[:, j]) for j, name in enumerate(class_names[1:])}
    if foreground.shape[1] > 1:
        out[ALL] = summary(foreground.ravel())
    return out


def build_distance_table(
    runs: Iterable[tuple[str, str, np.ndarray | None]], class_names: Sequence[str], *, title: str, key: str
) -> Table1:
    """Table 1's layout for HD95 or ASSD (mm) from ``(optimizer, loss, values)`` triples (:func:`distance_summary`;
    ``values`` ``None``: not measured, an empty row). ``key`` names the values in CSV columns (``hd95_mm``)."""
    columns = tuple(class_display_name(n) for n in class_names[1:]) + ((ALL,) if len(class_names) > 2 else ())
    rows = []
    for optimizer, loss, values in runs:
        summary = distance_summary(values, class_names) if values is not None else {}
        cells = [summary.get(c) for c in columns]
        rows.append(
            Table1Row(
                optimizer_display_name(optimizer),
                loss_display_name(loss),
                tuple(None if c is None else (c[0], c[1]) for c in cells),
                tuple(0 if c is None else c[2] for c in cells),
            )
        )
    notes = (
        "Background excluded. Mean and population std over test volumes of the values that are defined, in mm on "
        "the original voxel grid; [n undefined]: a class missed, or predicted where there is none (no surface "
        "distance), left out.",
    )
    return Table1(columns=columns, rows=tuple(rows), title=title, notes=notes, key=key)


def per_volume_all_std(test_dsc: np.ndarray) -> float:
    """The other "All" convention: std (%, ddof=0) over volumes of each volume's foreground mean DSC."""
    dsc = np.asarray(test_dsc, dtype=np.float64)
    return float((dsc[:, 1:].mean(axis=1) * 100.0).std())


def build_table1(
    runs: Iterable[tuple[str, str, np.ndarray]],
    class_names: Sequence[str],
    *,
    title: str = "Testing DSC (%), mean (std) over test volumes",
) -> Table1:
    """Table 1 from ``(optimizer, loss, test_dsc)`` triples (one per run), in the given order.

    Rows are shown with display names (``Adam``, ``Mime`` ...); ``test_dsc`` is (V, K) as in :func:`dsc_summary`.
    """
    rows = []
    columns: tuple[str, ...] | None = None
    for optimizer, loss, test_dsc in runs:
        summary = dsc_summary(test_dsc, class_names)
        if columns is None:
            columns = tuple(summary)
        rows.append(
            Table1Row(optimizer_display_name(optimizer), loss_display_name(loss), tuple(summary[c] for c in columns))
        )
    if columns is None:
        columns = tuple(class_display_name(n) for n in class_names[1:])
        if len(columns) > 1:
            columns += (ALL,)
    notes = (
        (
            "Background excluded. Mean and population std (numpy ddof=0) over test volumes of the 3D DSC.",
            "All: mean (std) over every (volume, foreground class) value, as the reference code's report.py.",
        )
        if len(columns) > 1
        else ("Background excluded. Mean and population std (numpy ddof=0) over test volumes of the 3D DSC.",)
    )
    return Table1(columns=columns, rows=tuple(rows), title=title, notes=notes)


# The paper's Table 1 (testing DSC %, mean (std)). PROMISE12 has no NM row (NM collapses in the
# binary case, paper §2.4).
_PAPER_ACDC = {
    ("Adam", "CE"): ((81.7, 10.8), (80.0, 7.2), (89.4, 8.7), (83.7, 9.9)),
    ("Adam", "DSC"): ((77.2, 13.6), (79.2, 8.3), (90.3, 6.3), (82.2, 11.4)),
    ("Adam", "Mime"): ((82.6, 11.1), (78.5, 8.4), (87.8, 8.9), (83.0, 10.3)),
    ("Adam", "NM"): ((81.5, 12.3), (80.2, 7.3), (90.9, 6.6), (84.2, 10.3)),
    ("SGD", "CE"): ((75.8, 14.6), (76.6, 9.8), (89.2, 8.1), (80.6, 12.8)),
    ("SGD", "DSC"): ((76.3, 14.0), (78.4, 8.3), (90.2, 6.8), (81.6, 11.9)),
    ("SGD", "Mime"): ((78.3, 13.7), (77.8, 8.4), (88.6, 6.9), (81.6, 11.3)),
    ("SGD", "NM"): ((79.2, 14.3), (78.3, 8.9), (88.7, 7.4), (82.1, 11.6)),
}
_PAPER_PROMISE12 = {
    ("Adam", "CE"): ((87.1, 5.0),),
    ("Adam", "DSC"): ((83.8, 7.2),),
    ("Adam", "Mime"): ((83.4, 3.7),),
    ("SGD", "CE"): ((84.9, 8.3),),
    ("SGD", "DSC"): ((84.8, 5.6),),
    ("SGD", "Mime"): ((84.0, 3.9),),
}

PAPER_TABLE1: Mapping[str, Table1] = {
    "acdc": Table1(
        columns=("RV", "Myo", "LV", ALL),
        rows=tuple(Table1Row(o, l, v) for (o, l), v in _PAPER_ACDC.items()),
        title="Paper Table 1, ACDC (ENet): testing DSC (%), mean (std)",
    ),
    "promise12": Table1(
        columns=("Prostate",),
        rows=tuple(Table1Row(o, l, v) for (o, l), v in _PAPER_PROMISE12.items()),
        title="Paper Table 1, PROMISE12 (ResidualUNet): testing DSC (%), mean (std)",
    ),
}


def paper_table1(dataset: str) -> Table1:
    """The paper's Table 1 part for ``"acdc"`` or ``"promise12"``."""
    try:
        return PAPER_TABLE1[dataset.lower()]
    except KeyError:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(PAPER_TABLE1)}") from None


def format_cell(value: tuple[float, float] | None, digits: int = 1, undefined: int = 0) -> str:
    """``"81.2 (9.8)"``, with ``" [2 undefined]"`` when values were left out; ``"–"`` for no value."""
    if value is None:
        return "–"
    mean, std = value
    note = f" [{undefined} undefined]" if undefined else ""
    if not (math.isfinite(mean) and math.isfinite(std)):
        return "nan" + note
    return f"{mean:.{digits}f} ({std:.{digits}f})" + note


def format_markdown(table: Table1, *, digits: int = 1) -> str:
    """A markdown table: ``| optimizer | loss | RV | ... |`` with cells ``mean (std)``."""
    lines = [
        f"**{table.title}**",
        "",
        "| optimizer | loss | " + " | ".join(table.columns) + " |",
        "|---|---|" + "---|" * len(table.columns),
    ]
    for row in table.rows:
        undefined = row.undefined or (0,) * len(row.values)
        cells = " | ".join(format_cell(v, digits, n) for v, n in zip(row.values, undefined, strict=True))
        lines.append(f"| {row.optimizer} | {row.loss} | {cells} |")
    if table.notes:
        lines.append("")
        lines.extend(table.notes)
    return "\n".join(lines) + "\n"


def format_comparison(ours: Table1, paper: Table1, *, digits: int = 1) -> str:
    """Markdown with our rows next to the paper's: each cell ``ours / paper`` (``–`` where one is missing)."""
    lines = [
        "| optimizer | loss | " + " | ".join(f"{c} (ours / paper)" for c in ours.columns) + " |",
        "|---|---|" + "---|" * len(ours.columns),
    ]
    for row in ours.rows:
        cells = []
        for column, value in zip(ours.columns, row.values, strict=True):
            try:
                reference = paper.cell(row.optimizer, row.loss, column)
            except KeyError:
                reference = None
            cells.append(f"{format_cell(value, digits)} / {format_cell(reference, digits)}")
        lines.append(f"| {row.optimizer} | {row.loss} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(table: Table1, *, digits: int = 4, extra: Sequence[Table1] = ()) -> str:
    """CSV with one row per optimiser × loss and ``<column>_mean``, ``<column>_std`` columns (percent), then for
    each ``extra`` table (same rows) ``<column>_<key>_mean``, ``_std`` and ``_undefined`` (e.g. ``RV_hd95_mm_mean``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    header = ["optimizer", "loss"]
    for c in table.columns:
        header += [f"{c}_mean", f"{c}_std"]
    for other in extra:
        for c in other.columns:
            header += [f"{c}_{other.key}_mean", f"{c}_{other.key}_std", f"{c}_{other.key}_undefined"]
    writer.writerow(header)
    for j, row in enumerate(table.rows):
        cells: list[str] = [row.optimizer, row.loss]
        for v in row.values:
            cells += ["", ""] if v is None else [f"{v[0]:.{digits}f}", f"{v[1]:.{digits}f}"]
        for other in extra:
            other_row = other.rows[j]
            undefined = other_row.undefined or (0,) * len(other_row.values)
            for v, n in zip(other_row.values, undefined, strict=True):  # no value defined: empty mean and std
                finite = v is not None and math.isfinite(v[0])
                cells += [f"{v[0]:.{digits}f}", f"{v[1]:.{digits}f}"] if finite else ["", ""]
                cells.append("" if v is None else str(n))
        writer.writerow(cells)
    return buffer.getvalue()


def write_table1(
    table: Table1,
    out_dir: Path,
    *,
    paper: Table1 | None = None,
    stem: str = "table1",
    comparisons: Sequence[str] = (),
    extra: Sequence[Table1] = (),
) -> tuple[Path, Path]:
    """Write ``<stem>.md`` (ours, the ``extra`` tables with the same rows (HD95, ASSD), ours next to ``paper``
    when given, then the ``comparisons`` lines) and ``<stem>.csv``; return both paths."""
    out_dir = Path(out_dir)
    markdown = "\n".join(format_markdown(t) for t in (table, *extra))
    if paper is not None:
        markdown += "\n**Ours / paper**\n\n" + format_comparison(table, paper)
    if comparisons:
        markdown += (
            "\n**Each loss against the reference** (paired by test volume and seed; mean difference "
            "[95 % bootstrap interval])\n\n" + "\n".join(f"- {line.strip()}" for line in comparisons) + "\n"
        )
    md = write_text_atomic(out_dir / f"{stem}.md", markdown)
    csv_path = write_text_atomic(out_dir / f"{stem}.csv", format_csv(table, extra=extra))
    return md, csv_path
