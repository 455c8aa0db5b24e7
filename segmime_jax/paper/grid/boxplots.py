"""Box plots of per-volume surface distances (HD95, ASSD in mm) per loss: where the losses differ on boundaries.

A mean HD95 hides what HD95 is for: a few volumes with a spurious island far from the structure. Each box here
is one (optimiser, loss) over every test volume (and seed), one panel per foreground class and one for all
classes pooled; every value is drawn as a dot on its box, and the values left out (a class missed, or predicted
where there is none: no surface distance) are counted under the box.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from segmime_jax.losses import display_name as loss_display_name
from segmime_jax.paper.grid.facts import run_keys
from segmime_jax.paper.grid.figures import _loss_colours
from segmime_jax.paper.grid.tables import ALL, class_display_name, optimizer_display_name
from segmime_jax.paper.plotting import pyplot, save_figure


def plot_distance_boxes(
    facts: pd.DataFrame,
    path: str | Path,
    *,
    metric: str = "hd95_mm",
    ylabel: str = "HD95 (mm)",
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Write the box plots of one surface distance.

    Args:
      facts: the grid's test facts (:func:`~segmime_jax.paper.grid.facts.volume_facts`), NaN where undefined; the
        order of its (optimizer, loss) rows is the order of the boxes.
      path: the image file to write.
      metric: the column plotted, ``"hd95_mm"`` or ``"assd_mm"``.
      ylabel: the distance's name and unit.
      title: the figure's title.

    Returns:
      ``path``.
    """
    if facts.empty:
        raise ValueError("plot_distance_boxes needs at least one run's values")
    keys = run_keys(facts)
    colours = _loss_colours(list(dict.fromkeys(loss for _, loss in keys)))
    several = len({optimizer for optimizer, _ in keys}) > 1
    classes = list(dict.fromkeys(facts["class"]))
    panels: list[tuple[str, str | None]] = [(class_display_name(name), name) for name in classes]
    if len(panels) > 1:
        panels.append((ALL, None))
    rows = {key: facts[(facts["optimizer"] == key[0]) & (facts["loss"] == key[1])] for key in keys}
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(2.2 + 1.0 * len(keys) * len(panels), 3.6), squeeze=False)
    rng = np.random.default_rng(0)  # the dots' horizontal jitter only
    for ax, (label, k) in zip(axes[0], panels, strict=True):
        columns = [
            (rows[key] if k is None else rows[key][rows[key]["class"] == k])[metric].to_numpy(np.float64)
            for key in keys
        ]
        defined = [c[np.isfinite(c)] for c in columns]
        positions = np.arange(1, len(keys) + 1)
        boxes = ax.boxplot(
            [d if d.size else [np.nan] for d in defined],
            positions=positions,
            widths=0.6,
            showfliers=False,
            patch_artist=True,
            medianprops={"color": "black"},
        )
        for box, (_, loss) in zip(boxes["boxes"], keys, strict=True):
            box.set_facecolor((*colours[loss][:3], 0.35))
            box.set_edgecolor(colours[loss])
        for x, d, (_, loss) in zip(positions, defined, keys, strict=True):
            ax.scatter(x + rng.uniform(-0.15, 0.15, d.size), d, s=9, color=colours[loss], zorder=3, linewidths=0)
        ticks = []
        for (optimizer, loss), column, d in zip(keys, columns, defined, strict=True):
            name = loss_display_name(loss) + (f"\n{optimizer_display_name(optimizer)}" if several else "")
            left_out = column.size - d.size
            ticks.append(name + (f"\n({left_out} undef.)" if left_out else ""))
        ax.set_xticks(positions, ticks, fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi)
