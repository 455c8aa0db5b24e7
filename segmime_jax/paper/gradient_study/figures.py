"""The gradient study's figures: paper Figure 1 (``figure1.png``), every loss's gradient map
(``gradient_maps.png``) and Eq. 7's bound against the measured Dice gradient (``bound.png``). Matplotlib's Agg
backend."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _symmetric_image(ax, fig, values: np.ndarray, title: str, *, log: bool = False) -> None:
    """A diverging map with limits ±max|values| (0 white); ``log``: symmetric log scale whose linear part ends at
    the smallest non-zero magnitude, so that a map spanning decades shows its variations."""
    from matplotlib.colors import Normalize, SymLogNorm

    magnitude = np.abs(values)
    limit = float(magnitude.max()) or 1.0
    nonzero = magnitude[magnitude > 0]
    if log and nonzero.size and nonzero.min() < limit:
        norm = SymLogNorm(linthresh=float(nonzero.min()), vmin=-limit, vmax=limit, base=10)
    else:
        norm = Normalize(vmin=-limit, vmax=limit)
    im = ax.imshow(values, cmap="RdBu_r", norm=norm, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, format="%.1e")
    cbar.ax.tick_params(labelsize=7)


def crop_box(labels: np.ndarray, margin: float = 0.25) -> tuple[slice, slice]:
    """The rows and columns around every non-background pixel, grown by ``margin`` of the box size on each side.

    Args:
      labels: ``(H, W)`` class indices, 0 being background.
      margin: growth on each side, as a fraction of the box's height (rows) and width (columns).

    Returns:
      ``(rows, cols)`` slices into ``(H, W)``, clipped to the image; the whole image when every pixel is
      background.
    """
    rows, cols = np.nonzero(labels > 0)
    if rows.size == 0:
        return slice(None), slice(None)
    h, w = labels.shape
    pad_r = int(margin * (rows.max() - rows.min() + 1))
    pad_c = int(margin * (cols.max() - cols.min() + 1))
    return (
        slice(max(0, rows.min() - pad_r), min(h, rows.max() + pad_r + 1)),
        slice(max(0, cols.min() - pad_c), min(w, cols.max() + pad_c + 1)),
    )


def plot_figure1(
    path: Path,
    y: np.ndarray,
    s: np.ndarray,
    dice: np.ndarray,
    ce: np.ndarray,
    *,
    class_name: str,
    dr_dice: float,
    dr_ce: float,
    convention: str,
    dpi: int,
) -> None:
    """Paper Figure 1 for one class ``k``: (a) ``y^(k)``, (b) ``s^(k)``, (c) ``∂L_DSC/∂s^(k)`` (Eq. 6: two
    values), (d) ``∂L_CE/∂s^(k)`` (Eq. 4, on a symmetric log scale), each gradient titled with its dynamic range.

    Args:
      path: the PNG to write.
      y: ``(h, w)`` one-hot ground truth of class ``k``.
      s: ``(h, w)`` predicted probability of class ``k``.
      dice: ``(h, w)`` Dice gradient of class ``k``.
      ce: ``(h, w)`` cross-entropy gradient of class ``k``.
      class_name: the name of class ``k``, for the titles.
      dr_dice: dynamic range of ``dice`` in dB.
      dr_ce: dynamic range of ``ce`` in dB.
      convention: the dB convention of both ranges, ``"power"`` or ``"amplitude"``.
      dpi: resolution.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    axes[0].imshow(y, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title(f"(a) ground truth $y^{{({class_name})}}$", fontsize=9)
    axes[0].axis("off")
    im = axes[1].imshow(s, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title(f"(b) prediction $s^{{({class_name})}}$", fontsize=9)
    axes[1].axis("off")
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
    unit = "dB" if convention == "power" else "dB (20 log10)"
    _symmetric_image(axes[2], fig, dice, f"(c) $\\partial L_{{DSC}}/\\partial s$: 2 values, range {dr_dice:.2f} {unit}")
    _symmetric_image(
        axes[3], fig, ce, f"(d) $\\partial L_{{CE}}/\\partial s$, symlog: range {dr_ce:.2f} {unit}", log=True
    )
    fig.suptitle(
        "Partial derivatives wrt. the prediction (paper Figure 1), cropped around the heart; "
        "blue < 0 pushes s up, red > 0 pushes it down",
        fontsize=10,
    )
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_gradient_maps(path: Path, maps: Sequence[tuple[str, np.ndarray, float]], *, class_name: str, dpi: int) -> None:
    """Every loss's gradient ``∂L/∂s^(k)`` of one class, three per row; CE's on a symmetric log scale.

    Args:
      path: the PNG to write.
      maps: ``(label, values, range)`` per loss: ``values`` is its ``(h, w)`` gradient map, ``range`` its dynamic
        range in dB (power convention, ``10·log10``). The map labelled ``"CE"`` is drawn on the log scale.
      class_name: the name of class ``k``, for the title.
      dpi: resolution.
    """
    plt = _pyplot()
    cols = 3
    rows = math.ceil(len(maps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    for ax, (label, values, dr) in zip(axes.ravel(), maps, strict=False):
        _symmetric_image(ax, fig, values, f"{label}: range {dr:.2f} dB", log=label == "CE")
    for ax in axes.ravel()[len(maps) :]:
        ax.axis("off")
    fig.suptitle(
        f"$\\partial L/\\partial s^{{({class_name})}}$ for each loss (dynamic range: 10 log10; CE on a symlog scale)",
        fontsize=10,
    )
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def plot_bound(path: Path, rows: Sequence[Mapping[str, float]], *, dpi: int) -> None:
    """Paper Eq. 7 as the object grows: the bound ``2/U`` (a line) against the measured largest and smallest
    ``|∂L_DSC/∂s|`` (markers), log-log over ``U``.

    Args:
      path: the PNG to write.
      rows: :func:`~segmime_jax.paper.gradient_study.bound_sweep`'s rows (``union``, ``max_abs_gradient``,
        ``min_abs_gradient`` are used).
      dpi: resolution.
    """
    plt = _pyplot()
    union = np.array([r["union"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    grid = np.geomspace(union.min(), union.max(), 200)
    ax.loglog(grid, 2.0 / grid, "k-", label="bound $2/U$ (Eq. 7)")
    ax.loglog(
        union,
        [r["max_abs_gradient"] for r in rows],
        "o",
        color="tab:blue",
        label="measured max $|\\partial L_{DSC}/\\partial s|$",
    )
    ax.loglog(
        union,
        [r["min_abs_gradient"] for r in rows],
        "s",
        color="tab:orange",
        markersize=4,
        label="measured min $|\\partial L_{DSC}/\\partial s|$",
    )
    ax.set_xlabel("$U = \\sum_i (y + s)$ (disc of growing radius)")
    ax.set_ylabel("gradient magnitude")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Dice gradient vanishes as $U$ grows", fontsize=10)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
