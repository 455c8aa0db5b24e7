"""Paper Table 1 from a grid's test facts (:func:`~segmime_jax.paper.grid.facts.volume_facts`): testing DSC (%) as
mean (std) over test volumes, one row per optimiser × loss; HD95 and ASSD in mm in the same layout (not in the
paper); the paper's own Table 1; and the markdown and CSV they are written as.

Conventions (the same as the reference code, LIVIAETS/boundary-loss ``report.py``, which computes
``data.mean(axis=(1, 2))`` and ``data.std(axis=(1, 2))`` over (sample, class) with numpy):

- the background is excluded (the facts hold foreground classes only);
- a class column is the mean and the population standard deviation (``numpy.std``, ``ddof=0``) over test
  volumes (and seeds) of that class's value;
- "All" pools every (volume, foreground class) value: its mean equals the mean over volumes of the per-volume
  foreground mean, and its std is the std of the pooled values (not the std of the per-volume means, which is
  smaller). The paper's rows follow this rule: e.g. Adam CE, RV 81.7 (10.8), Myo 80.0 (7.2), LV 89.4 (8.7)
  gives sqrt(mean of variances + variance of means) = 9.9, the paper's "All" std;
- "All" is only shown when there is more than one foreground class (ACDC); PROMISE12 has one (Prostate);
- HD95 and ASSD (:mod:`segmime_jax.train.surface`) follow the same rules over the values that are defined: a
  class missed, or predicted where there is none, has no surface distance (NaN); it is left out of the mean and
  std and counted next to them (``[n undefined]``). A run whose distances were not measured gives an empty row.

A table is a :class:`Table`: a DataFrame indexed by (optimizer, loss) display names with columns
``(column, "mean" | "std" | "undefined")``, and its title, notes and metric.

Example:
  >>> import pandas as pd
  >>> facts = pd.DataFrame({"optimizer": "adam", "loss": "dsc", "seed": 0, "volume": ["p1", "p1", "p2", "p2"],
  ...                       "class": ["rv", "lv"] * 2, "dsc": [0.8, 0.6, 0.9, 0.7]})
  >>> print(format_markdown(table1(facts, "dsc", title="Testing DSC (%)")).splitlines()[4])
  | Adam | DSC | 85.0 (5.0) | 65.0 (5.0) | 75.0 (11.2) |
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from segmime_jax.atomic_files import write_text_atomic
from segmime_jax.losses import display_name as loss_display_name
from segmime_jax.paper.grid.facts import run_keys

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
_OPTIMIZER_DISPLAY = {"adam": "Adam", "sgd": "SGD"}

#: The metrics of the facts that have a table, and what its title calls them.
METRICS = {"dsc": "DSC (%)", "hd95_mm": "HD95 (mm)", "assd_mm": "ASSD (mm)"}

_DSC_NOTES = (
    "Background excluded. Mean and population std (numpy ddof=0) over test volumes of the 3D DSC.",
    "All: mean (std) over every (volume, foreground class) value, as the reference code's report.py.",
)
_DISTANCE_NOTES = (
    "Background excluded. Mean and population std over test volumes of the values that are defined, in mm on "
    "the original voxel grid; [n undefined]: a class missed, or predicted where there is none (no surface "
    "distance), left out.",
)


def class_display_name(name: str) -> str:
    """``"right_ventricle"`` → ``"RV"``, ``"myocardium"`` → ``"Myo"``, ``"prostate"`` → ``"Prostate"``.

    Unknown names are returned unchanged.
    """
    key = "".join(ch for ch in name.lower() if ch.isalnum())
    return _CLASS_DISPLAY.get(key, name)


def optimizer_display_name(name: str) -> str:
    """``"adam"`` → ``"Adam"``, ``"sgd"`` → ``"SGD"``."""
    return _OPTIMIZER_DISPLAY.get(name.strip().lower(), name)


@dataclasses.dataclass(frozen=True)
class Table:
    """A table of Table 1's layout.

    Attributes:
      frame: indexed by (optimizer, loss) display names; columns ``(column, stat)`` with ``stat`` one of
        ``mean``, ``std`` (in % for DSC, mm for distances) and ``undefined`` (values left out); NaN cells: no
        value (not run, not reported, or not measured).
      title: the bold line above the markdown table.
      notes: the lines below it.
      metric: ``dsc``, ``hd95_mm`` or ``assd_mm`` (the CSV columns' infix).
    """

    frame: pd.DataFrame
    title: str
    notes: tuple[str, ...] = ()
    metric: str = "dsc"

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.frame.columns.get_level_values(0)))

    def cell(self, optimizer: str, loss: str, column: str) -> tuple[float, float] | None:
        """``(mean, std)`` of one cell (matched case-insensitively), ``None`` when it has no value (not run, not
        reported, or distances not measured); KeyError when the row or column is absent."""
        if column not in self.columns:
            raise KeyError(f"no column {column!r}; columns are {self.columns}")
        rows = [i for i in self.frame.index if (i[0].lower(), i[1].lower()) == (optimizer.lower(), loss.lower())]
        if not rows:
            raise KeyError(f"no row ({optimizer!r}, {loss!r})")
        mean, std = self.frame.loc[rows[0], [(column, "mean"), (column, "std")]]
        # a distance cell has a count of undefined values when measured (then a NaN mean: none defined)
        missing = pd.isna(self.frame.loc[rows[0], (column, "undefined")]) if self.metric != "dsc" else pd.isna(mean)
        return None if missing else (float(mean), float(std))

    def undefined(self, row: tuple[str, str], column: str) -> int:
        """How many values of a cell were left out as undefined (0 for DSC and for unmeasured cells)."""
        value = self.frame.loc[row, (column, "undefined")] if self.metric != "dsc" else 0
        return 0 if pd.isna(value) else int(value)

    def to_dict(self) -> dict:
        """JSON-ready: ``{"title", "columns", "rows": [{"optimizer", "loss", "<column>": [mean, std] | None,
        ("undefined": {column: n})}], "notes", "key"}``."""
        rows = []
        for row in self.frame.index:
            cells = {c: None if (v := self.cell(*row, c)) is None else list(v) for c in self.columns}
            undefined = {"undefined": {c: self.undefined(row, c) for c in self.columns}} if self.metric != "dsc" else {}
            rows.append({"optimizer": row[0], "loss": row[1], **cells, **undefined})
        return {
            "title": self.title,
            "columns": list(self.columns),
            "rows": rows,
            "notes": list(self.notes),
            "key": self.metric,
        }


def summarize(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, population std (``ddof=0``) and count of the defined (finite) ``values``; NaN, NaN, n when none is."""
    values = np.asarray(values, np.float64)
    defined = values[np.isfinite(values)]
    if defined.size == 0:
        return math.nan, math.nan, int(values.size)
    return float(defined.mean()), float(defined.std()), int(values.size - defined.size)


def table1(facts: pd.DataFrame, metric: str, *, title: str) -> Table:
    """Table 1's layout for one metric of the test facts: a row per (optimizer, loss) in the facts' order, a
    column per foreground class in the facts' order and "All" when there are several (module docstring).

    Args:
      facts: :func:`~segmime_jax.paper.grid.facts.volume_facts`, or a grid's ``test_metrics.csv`` read back
        (columns ``optimizer, loss, seed, volume, class``, the metric, and, optionally, ``measured``).
      metric: ``"dsc"`` (shown in %), ``"hd95_mm"`` or ``"assd_mm"``.
      title: the table's title.

    Returns:
      The :class:`Table`; a distance table carries the ``undefined`` counts.
    """
    distance = metric != "dsc"
    classes = list(dict.fromkeys(facts["class"]))
    values = facts.assign(value=facts[metric] * (1.0 if distance else 100.0))
    if len(classes) > 1:  # "All": every (volume, foreground class) value, in the order the runs hold them
        values = pd.concat([values, values.assign(**{"class": ALL})], ignore_index=True)
    keys = ["optimizer", "loss"]
    cells = values.groupby([*keys, "class"], observed=True, sort=False)["value"].agg(summarize)
    frame = pd.DataFrame(cells.tolist(), index=cells.index, columns=["mean", "std", "undefined"]).unstack("class")
    names = classes + ([ALL] if len(classes) > 1 else [])
    stats = ["mean", "std", "undefined"] if distance else ["mean", "std"]
    frame = frame.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([names, stats]))
    if distance:  # a run without distances: no values, no counts (facts read from a CSV: all measured)
        if "measured" in facts:
            unmeasured = ~facts.groupby(keys, observed=True, sort=False)["measured"].all()
            frame.loc[unmeasured[unmeasured].index] = math.nan
        for name in names:
            frame[(name, "undefined")] = frame[(name, "undefined")].astype("Int64")
    frame = frame.loc[list(run_keys(facts))]  # the facts' row order
    frame = frame.rename(columns=class_display_name, level=0)
    frame.index = pd.MultiIndex.from_tuples(
        [(optimizer_display_name(o), loss_display_name(l)) for o, l in frame.index], names=keys
    )
    notes = _DISTANCE_NOTES if distance else (_DSC_NOTES if len(classes) > 1 else _DSC_NOTES[:1])
    return Table(frame, title, notes, metric)


# The paper's Table 1 (testing DSC %, mean (std)). PROMISE12 has no NM row (NM collapses in the
# binary case, paper §2.4).
_PAPER = {
    "acdc": (
        "Paper Table 1, ACDC (ENet): testing DSC (%), mean (std)",
        ("RV", "Myo", "LV", ALL),
        {
            ("Adam", "CE"): ((81.7, 10.8), (80.0, 7.2), (89.4, 8.7), (83.7, 9.9)),
            ("Adam", "DSC"): ((77.2, 13.6), (79.2, 8.3), (90.3, 6.3), (82.2, 11.4)),
            ("Adam", "Mime"): ((82.6, 11.1), (78.5, 8.4), (87.8, 8.9), (83.0, 10.3)),
            ("Adam", "NM"): ((81.5, 12.3), (80.2, 7.3), (90.9, 6.6), (84.2, 10.3)),
            ("SGD", "CE"): ((75.8, 14.6), (76.6, 9.8), (89.2, 8.1), (80.6, 12.8)),
            ("SGD", "DSC"): ((76.3, 14.0), (78.4, 8.3), (90.2, 6.8), (81.6, 11.9)),
            ("SGD", "Mime"): ((78.3, 13.7), (77.8, 8.4), (88.6, 6.9), (81.6, 11.3)),
            ("SGD", "NM"): ((79.2, 14.3), (78.3, 8.9), (88.7, 7.4), (82.1, 11.6)),
        },
    ),
    "promise12": (
        "Paper Table 1, PROMISE12 (ResidualUNet): testing DSC (%), mean (std)",
        ("Prostate",),
        {
            ("Adam", "CE"): ((87.1, 5.0),),
            ("Adam", "DSC"): ((83.8, 7.2),),
            ("Adam", "Mime"): ((83.4, 3.7),),
            ("SGD", "CE"): ((84.9, 8.3),),
            ("SGD", "DSC"): ((84.8, 5.6),),
            ("SGD", "Mime"): ((84.0, 3.9),),
        },
    ),
}


def paper_table1(dataset: str) -> Table:
    """The paper's Table 1 part for ``"acdc"`` or ``"promise12"``."""
    if dataset.lower() not in _PAPER:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {sorted(_PAPER)}")
    title, columns, rows = _PAPER[dataset.lower()]
    frame = pd.DataFrame(
        [[x for cell in cells for x in cell] for cells in rows.values()],
        index=pd.MultiIndex.from_tuples(list(rows), names=["optimizer", "loss"]),
        columns=pd.MultiIndex.from_product([columns, ("mean", "std")]),
    )
    return Table(frame, title)


def format_cell(value: tuple[float, float] | None, digits: int = 1, undefined: int = 0) -> str:
    """``"81.2 (9.8)"``, with ``" [2 undefined]"`` when values were left out; ``"–"`` for no value."""
    if value is None:
        return "–"
    mean, std = value
    note = f" [{undefined} undefined]" if undefined else ""
    if not (math.isfinite(mean) and math.isfinite(std)):
        return "nan" + note
    return f"{mean:.{digits}f} ({std:.{digits}f})" + note


def _cells(table: Table, row: tuple[str, str], digits: int) -> list[str]:
    return [format_cell(table.cell(*row, c), digits, table.undefined(row, c)) for c in table.columns]


def format_markdown(table: Table, *, digits: int = 1) -> str:
    """A markdown table: ``| optimizer | loss | RV | ... |`` with cells ``mean (std)``, then the notes."""
    lines = [
        f"**{table.title}**",
        "",
        "| optimizer | loss | " + " | ".join(table.columns) + " |",
        "|---|---|" + "---|" * len(table.columns),
    ]
    for row in table.frame.index:
        lines.append(f"| {row[0]} | {row[1]} | " + " | ".join(_cells(table, row, digits)) + " |")
    if table.notes:
        lines += ["", *table.notes]
    return "\n".join(lines) + "\n"


def format_side_by_side(tables: Sequence[Table], header: str, *, digits: int = 1) -> str:
    """One markdown table whose cells are the ``tables``' cells (same rows and columns) joined by ``" / "``;
    a row or cell missing from a later table shows ``–``. ``header`` names a column's parts (``"ours / paper"``)."""
    first = tables[0]
    lines = [
        "| optimizer | loss | " + " | ".join(f"{c} {header}" for c in first.columns) + " |",
        "|---|---|" + "---|" * len(first.columns),
    ]
    for row in first.frame.index:
        cells = []
        for column in first.columns:
            parts = []
            for k, table in enumerate(tables):
                try:
                    value = table.cell(*row, column)
                except KeyError:
                    value = None
                parts.append(format_cell(value, digits, table.undefined(row, column) if k == 0 else 0))
            cells.append(" / ".join(parts))
        lines.append(f"| {row[0]} | {row[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_csv(table: Table, *, digits: int = 4, extra: Sequence[Table] = ()) -> str:
    """CSV with one row per optimiser × loss: ``<column>_mean``, ``<column>_std`` (percent), then for each
    ``extra`` table (same rows) ``<column>_<metric>_mean``, ``_std`` and ``_undefined`` (``RV_hd95_mm_mean``);
    empty cells where there is no value."""
    parts = [_flat(table.frame, "{0}_{1}")] + [_flat(t.frame, f"{{0}}_{t.metric}_{{1}}") for t in extra]
    frame = pd.concat(parts, axis=1).rename_axis(["optimizer", "loss"]).reset_index()
    return frame.to_csv(index=False, float_format=f"%.{digits}f", lineterminator="\n")


def _flat(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    flat = frame.copy()
    flat.columns = [name.format(*c) for c in frame.columns]
    return flat


def write_table1(
    table: Table,
    out_dir: Path,
    *,
    paper: Table | None = None,
    comparisons: Sequence[str] = (),
    extra: Sequence[Table] = (),
) -> tuple[Path, Path]:
    """Write ``table1.md`` (``table``, the ``extra`` tables (HD95, ASSD), ours next to ``paper`` when given, then
    the ``comparisons`` lines) and ``table1.csv``; return both paths."""
    out_dir = Path(out_dir)
    markdown = "\n".join(format_markdown(t) for t in (table, *extra))
    if paper is not None:
        markdown += "\n**Ours / paper**\n\n" + format_side_by_side([table, paper], "(ours / paper)")
    if comparisons:
        markdown += (
            "\n**Each loss against the reference** (paired by test volume and seed; mean difference "
            "[95 % bootstrap interval])\n\n" + "\n".join(f"- {line.strip()}" for line in comparisons) + "\n"
        )
    md = write_text_atomic(out_dir / "table1.md", markdown)
    csv_path = write_text_atomic(out_dir / "table1.csv", format_csv(table, extra=extra))
    return md, csv_path


def tables_of(facts: pd.DataFrame, *, title: str, over: str) -> Mapping[str, Table]:
    """Table 1 (DSC) and the HD95 and ASSD tables of the test facts, titled ``"<title> DSC (%), mean (std) over
    <over>"`` (``title``: e.g. ``"acdc: testing"``)."""
    return {
        metric: table1(facts, metric, title=f"{title} {label}, mean (std) over {over}")
        for metric, label in METRICS.items()
    }
