"""The gradient study of paper §2.2 and Figure 1: what each loss's gradient looks like on one noisy slice.

:func:`run_gradient_study` takes a label map ``y`` (a drawn cardiac phantom, :func:`cardiac_phantom`, or a real
ACDC slice, :func:`acdc_slice`) and a noisy prediction ``s`` (:func:`noisy_prediction`: a softmax over blurred
one-hot logits plus i.i.d. noise and, optionally, one missed and one spurious blob of the displayed class), and
writes into its output folder:

- ``figure1.png``: paper Figure 1 for one class ``k``: (a) ``y^(k)``, (b) ``s^(k)``, (c) ``∂L_DSC/∂s^(k)``,
  (d) ``∂L_CE/∂s^(k)``; ``gradient_maps.png``: the same class's gradient of every loss (CE, Dice, GDL, mime,
  negative mime, Dice surrogate);
- ``gradient_table.md`` / ``gradient_table.json``: per loss, the values of ``∂L/∂s^(k)`` on the ground truth and
  elsewhere (distinct count, min, max), the dynamic range in dB in both conventions (paper: ≈1.5 dB Dice,
  ≈10 dB CE), and the largest difference between ``jax.grad`` and the closed form of
  :mod:`segmime_jax.gradients`; per class, the Dice and CE dynamic ranges;
- ``bound.png`` / ``bound.json``: Eq. 7: the bound ``2/U`` against the measured ``max |∂L_DSC/∂s|`` for a disc
  of growing radius (one image, one class, so the bound is exactly ``2/U``).

Every file is written into a staging folder next to the output folder and moved in at the end: a failed run
leaves no half-written study behind. Figures use matplotlib's Agg backend.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from segmime_jax import gradients as G
from segmime_jax import losses as L

__all__ = [
    "PHANTOM_CLASSES",
    "GradientStudyResult",
    "LossGradientRow",
    "StudyLoss",
    "acdc_slice",
    "bound_sweep",
    "cardiac_phantom",
    "format_summary",
    "noisy_prediction",
    "run_gradient_study",
    "study_losses",
]

#: Class names of the phantom (ACDC's label convention: 0 background, 1 RV, 2 Myo, 3 LV).
PHANTOM_CLASSES = ("background", "RV", "Myo", "LV")

#: The paper's Figure 1 numbers (§2.2), units not stated.
PAPER_DYNAMIC_RANGE_DB = {"dsc": 1.5, "ce": 10.0}


# ---------------------------------------------------------------------------------------------- inputs


def cardiac_phantom(size: int = 256) -> np.ndarray:
    """A short-axis cardiac slice drawn with discs: ``(size, size)`` uint8 labels, ACDC convention.

    LV cavity (3): a disc of radius ``0.12·size``; myocardium (2): the ring out to ``0.18·size`` around it;
    RV cavity (1): a crescent, the part of a disc of radius ``0.2·size`` centred ``0.2·size`` to the left of the
    LV that lies outside the myocardium grown by ``0.02·size``; background (0) elsewhere. At 256×256 the areas
    are 2964 (LV), 3703 (Myo) and 5018 (RV) pixels out of 65536 (4.5 %, 5.7 %, 7.7 %).
    """
    if size < 16:
        raise ValueError(f"phantom size must be at least 16 pixels, got {size}")
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    cy, cx = 0.52 * size, 0.56 * size
    r_lv, r_myo, r_rv = 0.12 * size, 0.18 * size, 0.2 * size
    d_lv = np.hypot(rows - cy, cols - cx)
    d_rv = np.hypot(rows - cy, cols - (cx - 0.2 * size))
    labels = np.zeros((size, size), np.uint8)
    labels[(d_rv < r_rv) & (d_lv >= r_myo + 0.02 * size)] = 1
    labels[(d_lv < r_myo) & (d_lv >= r_lv)] = 2
    labels[d_lv < r_lv] = 3
    return labels


def _gaussian_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of ``(H, W, C)`` over H and W, edges replicated."""
    if sigma <= 0:
        return x
    radius = max(1, int(math.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (t / sigma) ** 2)
    kernel /= kernel.sum()
    out = x.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        out = sum(kernel[j] * np.take(padded, np.arange(j, j + x.shape[axis]), axis=axis)
                  for j in range(kernel.size))
    return out


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64) + 0.5
    return np.hypot(rows - centre[0], cols - centre[1]) < radius


def _pixel_nearest_centroid(region: np.ndarray) -> tuple[float, float]:
    """Centre ``(row + 0.5, col + 0.5)`` of the pixel of ``region`` nearest to its centroid."""
    rows, cols = np.nonzero(region)
    nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
    return rows[nearest] + 0.5, cols[nearest] + 0.5


def error_blobs(labels: np.ndarray, error_class: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """``(missed, spurious)`` boolean ``(H, W)`` discs of radius ``radius`` for the structured errors of
    :func:`noisy_prediction`.

    ``missed``: inside the class, centred on the class pixel nearest to its centroid (the centroid itself can
    fall outside a ring-shaped class). ``spurious``: on background, ``2.5·radius`` beyond the class's bounding
    box, to the right, left, bottom or top: the first side whose disc is at least half background (else the
    disc with the most background), restricted to background pixels. For ``error_class = 0`` the roles swap:
    the spurious blob goes on the other classes, centred on their pixel nearest to their centroid. Raises
    ``ValueError`` when the class is absent or no place leaves room for a spurious blob.
    """
    labels = np.asarray(labels)
    shape = labels.shape
    inside = labels == error_class
    if not inside.any():
        raise ValueError(f"class {error_class} is absent from the label map: no error blobs can be placed")
    centre = _pixel_nearest_centroid(inside)
    missed = _disc(shape, centre, radius) & inside
    allowed = (labels != 0) if error_class == 0 else (labels == 0)
    if error_class == 0:
        candidates = [_pixel_nearest_centroid(allowed)] if allowed.any() else []
    else:
        rows, cols = np.nonzero(inside)
        gap = 2.5 * radius
        lo_r, hi_r = radius + 1, shape[0] - radius - 1
        lo_c, hi_c = radius + 1, shape[1] - radius - 1
        candidates = [
            (centre[0], min(hi_c, cols.max() + gap)), (centre[0], max(lo_c, cols.min() - gap)),
            (min(hi_r, rows.max() + gap), centre[1]), (max(lo_r, rows.min() - gap), centre[1]),
        ]
    discs = [_disc(shape, c, radius) for c in candidates]
    coverage = [float((d & allowed).sum()) / max(int(d.sum()), 1) for d in discs]
    best = next((i for i, c in enumerate(coverage) if c >= 0.5), int(np.argmax(coverage)) if discs else None)
    spurious = discs[best] & allowed if best is not None else np.zeros(shape, bool)
    if not spurious.any():
        raise ValueError(f"no room outside class {error_class} for a spurious blob of radius {radius:.1f} px")
    return missed, spurious


def noisy_prediction(
    labels: np.ndarray,
    num_classes: int,
    *,
    seed: int = 0,
    gain: float = 6.0,
    noise: float = 1.0,
    blur: float = 1.5,
    error_class: int | None = None,
    error_radius: float = 0.035,
) -> np.ndarray:
    """A plausible noisy network output for ``labels``: ``(H, W, K)`` float32 softmax probabilities.

    ``logits = gain · blur_σ(onehot(labels)) + noise · N(0, 1)`` (i.i.d. per pixel and class; ``σ = blur``
    pixels at 256×256, scaled with the image size), ``s = softmax(logits)``. With ``gain = 6`` and ``noise = 1`` an
    interior pixel has a median ``s ≈ 0.99`` but every pixel differs and a few fall far lower; the blur softens
    the borders. With ``error_class``
    set, two structured errors of that class are added (disc radius ``error_radius·H``, see :func:`error_blobs`): a
    missed blob (its logit lowered by ``gain`` inside the class, around the class pixel nearest its centroid)
    and a spurious blob (its logit raised by ``gain`` on background beside the object): the false negative and
    false positive that the paper's Figure 1 shows CE treating differently.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2D (H, W) label map, got shape {labels.shape}")
    h, w = labels.shape
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    rng = np.random.default_rng(seed)
    onehot = np.eye(num_classes)[labels]
    logits = gain * _gaussian_blur(onehot, blur * h / 256.0) + noise * rng.standard_normal(onehot.shape)
    if error_class is not None and (labels == error_class).any():
        missed, spurious = error_blobs(labels, error_class, error_radius * h)
        logits[..., error_class] += gain * (spurious.astype(np.float64) - missed)
    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    return (probs / probs.sum(axis=-1, keepdims=True)).astype(np.float32)


def acdc_slice(root: str | os.PathLike, *, size: int = 256, class_index: int = 3) -> tuple[np.ndarray, tuple[str, ...],
                                                                                              dict[str, Any]]:
    """A real ACDC label slice: the training slice where every class is present and ``class_index`` is largest.

    Uses :func:`segmime_jax.data.acdc.load_acdc` (imported here, lazily). Returns ``(labels (size, size) uint8,
    class_names, source)`` with ``source`` naming the volume and slice.
    """
    try:
        from segmime_jax.data.acdc import load_acdc
    except ImportError as err:  # pragma: no cover - depends on the data package being installed
        raise RuntimeError(
            "--data-root needs the ACDC loader segmime_jax.data.acdc.load_acdc, which cannot be imported "
            f"({err}); run the study without --data-root to use the drawn phantom"
        ) from err
    splits = load_acdc(root, size=(size, size))
    data = splits.train if len(splits.train) else splits.test
    labels = np.asarray(data.labels)
    num_classes = len(data.class_names)
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class index {class_index} out of range for ACDC classes {data.class_names}")
    present = np.stack([(labels == k).any(axis=(1, 2)) for k in range(num_classes)], axis=-1).all(axis=-1)
    if not present.any():
        raise ValueError(f"no ACDC slice under {root} contains all classes {data.class_names}")
    area = np.where(present, (labels == class_index).sum(axis=(1, 2)), -1)
    i = int(np.argmax(area))
    volume = data.volumes[int(data.volume_ids[i])]
    source = {"kind": "acdc", "root": str(root), "volume": volume.name, "slice_index": int(data.slice_indices[i])}
    return labels[i].astype(np.uint8), tuple(data.class_names), source


# ---------------------------------------------------------------------------------------------- losses


@dataclasses.dataclass(frozen=True)
class StudyLoss:
    """A loss of the study: its display name, paper equation, loss function and closed-form gradient."""

    key: str
    label: str
    equation: str
    loss: Callable[..., jax.Array]
    closed_form: Callable[..., jax.Array]


def study_losses() -> tuple[StudyLoss, ...]:
    """The losses compared, with the closed form each ``jax.grad`` is checked against."""
    return (
        StudyLoss("ce", "CE", "Eq. 4", L.cross_entropy, G.cross_entropy_gradient),
        StudyLoss("dsc", "Dice", "Eq. 3, 6", L.dice_loss, G.dice_gradient),
        StudyLoss("gdl", "GDL", "Sudre 2017", L.generalized_dice_loss, G.generalized_dice_gradient),
        StudyLoss("mime", "Mime (a=1.9, b=0.1)", "Eq. 8-9", L.mime_loss, G.mime_gradient),
        StudyLoss("nm", "Negative mime", "Eq. 10", L.negative_mime_loss, G.negative_mime_gradient),
        StudyLoss("surrogate", "Dice surrogate", "Eq. 6 as Eq. 9", L.dice_surrogate_loss, G.dice_gradient),
    )


@dataclasses.dataclass(frozen=True)
class LossGradientRow:
    """One loss's gradient on the displayed class (one row of the table)."""

    key: str
    label: str
    equation: str
    foreground: dict[str, Any]
    background: dict[str, Any]
    dynamic_range_db: dict[str, float]  # convention -> dB, displayed class
    dynamic_range_db_per_class: dict[str, list[float]]  # convention -> dB for each class
    max_abs_diff_closed_form: float
    max_abs_gradient: float

    @property
    def relative_diff_closed_form(self) -> float:
        return self.max_abs_diff_closed_form / self.max_abs_gradient if self.max_abs_gradient else 0.0


@dataclasses.dataclass
class GradientStudyResult:
    """Everything :func:`run_gradient_study` measured, and where it wrote it."""

    class_names: tuple[str, ...]
    class_index: int
    convention: str
    source: dict[str, Any]
    intersection: float
    union: float
    soft_dice: float
    dice_value_foreground: float  # unscaled Eq. 6 values: −2(U−I)/U², 2I/U²
    dice_value_background: float
    dice_bound: float  # 2/U (Eq. 7), unscaled
    averaging: float  # 1/(B·|K|) of the loss actually differentiated
    foreground_prob_min: float  # min / max of s^(k) on the ground truth of the shown class
    foreground_prob_max: float
    rows: list[LossGradientRow]
    bound_rows: list[dict[str, float]]
    files: dict[str, Path]

    def row(self, key: str) -> LossGradientRow:
        for r in self.rows:
            if r.key == key:
                return r
        raise KeyError(key)

    @property
    def dice_range_from_dsc_db(self) -> float:
        """Dice range predicted from the soft DSC alone: ``10·log10((U−I)/I) = 10·log10(2/DSC − 1)`` (power)."""
        return 10 * math.log10(2 / self.soft_dice - 1) if self.soft_dice > 0 else float("inf")

    @property
    def ce_range_from_probs_db(self) -> float:
        """CE range predicted from the probabilities: ``10·log10(max s / min s)`` on the ground truth (power)."""
        return 10 * math.log10((self.foreground_prob_max + L.CE_EPSILON) / (self.foreground_prob_min + L.CE_EPSILON))

    @property
    def dice_to_ce_log_ratio(self) -> float:
        """``DR_Dice / DR_CE``: the same in both conventions (paper: 1.5/10 = 0.15)."""
        ce = self.row("ce").dynamic_range_db["power"]
        return self.row("dsc").dynamic_range_db["power"] / ce if ce else float("nan")

    def to_json(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "class_index": self.class_index,
            "class_name": self.class_names[self.class_index],
            "default_convention": self.convention,
            "conventions": {"power": "10*log10(max|g|/min|g|) over non-zero |g|",
                            "amplitude": "20*log10(max|g|/min|g|) over non-zero |g|"},
            "source": self.source,
            "intersection": self.intersection,
            "union": self.union,
            "soft_dice": self.soft_dice,
            "dice_eq6_foreground": self.dice_value_foreground,
            "dice_eq6_background": self.dice_value_background,
            "dice_eq7_bound": self.dice_bound,
            "averaging_factor": self.averaging,
            "foreground_prob_min": self.foreground_prob_min,
            "foreground_prob_max": self.foreground_prob_max,
            "dice_range_from_dsc_db_power": self.dice_range_from_dsc_db,
            "ce_range_from_probs_db_power": self.ce_range_from_probs_db,
            "paper_dynamic_range_db": PAPER_DYNAMIC_RANGE_DB,
            "dice_to_ce_log_ratio": self.dice_to_ce_log_ratio,
            "paper_dice_to_ce_log_ratio": PAPER_DYNAMIC_RANGE_DB["dsc"] / PAPER_DYNAMIC_RANGE_DB["ce"],
            "losses": [
                {**dataclasses.asdict(r), "relative_diff_closed_form": r.relative_diff_closed_form} for r in self.rows
            ],
            "files": {k: str(v) for k, v in self.files.items()},
        }


def _summary_dict(summary: G.ClassGradientSummary, side: str) -> dict[str, Any]:
    d = summary.to_dict()
    return {
        "pixels": d[f"{side}_pixels"],
        "distinct": d[f"{side}_distinct"],
        "min": d[f"{side}_min"],
        "max": d[f"{side}_max"],
        "mean": d[f"{side}_mean"],
        "values": d[f"{side}_values"],
    }


def bound_sweep(
    size: int = 256,
    *,
    points: int = 12,
    seed: int = 0,
    gain: float = 6.0,
    noise: float = 1.0,
    blur: float = 1.5,
) -> list[dict[str, float]]:
    """Eq. 7 as the object grows: a disc of radius 2 px to ``0.45·size`` (geometric steps) in a ``size²`` image,
    a noisy prediction of it (:func:`noisy_prediction`, two classes), and the Dice loss of the disc class alone
    (one image, one class: no averaging, the bound is exactly ``2/(U+ε)``). Per radius: ``U``, ``I``, the bound
    and the measured ``max |∂L/∂s|`` (``jax.grad``)."""
    rows = []
    radii = np.geomspace(2.0, 0.45 * size, points)
    for j, radius in enumerate(radii):
        labels = _disc((size, size), (size / 2, size / 2), radius).astype(np.uint8)
        probs = noisy_prediction(labels, 2, seed=seed + j, gain=gain, noise=noise, blur=blur)
        target = np.eye(2, dtype=np.float32)[labels]
        p, y = jnp.asarray(probs)[None], jnp.asarray(target)[None]
        grad = G.loss_gradient(L.dice_loss, p, y, classes=(1,))
        inter, union = G.intersection_union(p, y, classes=(1,))
        bound = G.dice_gradient_bound(p, y, classes=(1,))[0, 1]
        rows.append({
            "radius": float(radius),
            "object_pixels": int(labels.sum()),
            "union": float(union[0, 0]),
            "intersection": float(inter[0, 0]),
            "bound": float(bound),
            "max_abs_gradient": float(jnp.max(jnp.abs(grad[..., 1]))),
            "min_abs_gradient": float(jnp.min(jnp.abs(grad[..., 1]))),
        })
    return rows


# ---------------------------------------------------------------------------------------------- figures


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


def _crop_box(labels: np.ndarray, margin: float = 0.25) -> tuple[slice, slice]:
    """Rows and columns around every non-background pixel, grown by ``margin`` of the box size on each side."""
    rows, cols = np.nonzero(labels > 0)
    if rows.size == 0:
        return slice(None), slice(None)
    h, w = labels.shape
    pad_r = int(margin * (rows.max() - rows.min() + 1))
    pad_c = int(margin * (cols.max() - cols.min() + 1))
    return (slice(max(0, rows.min() - pad_r), min(h, rows.max() + pad_r + 1)),
            slice(max(0, cols.min() - pad_c), min(w, cols.max() + pad_c + 1)))


def _plot_figure1(path: Path, y: np.ndarray, s: np.ndarray, dice: np.ndarray, ce: np.ndarray, *, class_name: str,
                  dr_dice: float, dr_ce: float, convention: str, dpi: int) -> None:
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
    _symmetric_image(axes[3], fig, ce, f"(d) $\\partial L_{{CE}}/\\partial s$, symlog: range {dr_ce:.2f} {unit}",
                     log=True)
    fig.suptitle("Partial derivatives wrt. the prediction (paper Figure 1), cropped around the heart; "
                 "blue < 0 pushes s up, red > 0 pushes it down", fontsize=10)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _plot_gradient_maps(path: Path, maps: Sequence[tuple[str, np.ndarray, float]], *, class_name: str,
                        dpi: int) -> None:
    plt = _pyplot()
    cols = 3
    rows = math.ceil(len(maps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 4.0 * rows), squeeze=False)
    for ax, (label, values, dr) in zip(axes.ravel(), maps, strict=False):
        _symmetric_image(ax, fig, values, f"{label}: range {dr:.2f} dB", log=label == "CE")
    for ax in axes.ravel()[len(maps):]:
        ax.axis("off")
    fig.suptitle(f"$\\partial L/\\partial s^{{({class_name})}}$ for each loss (dynamic range: 10 log10; CE on a "
                 "symlog scale)", fontsize=10)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def _plot_bound(path: Path, rows: Sequence[Mapping[str, float]], *, dpi: int) -> None:
    plt = _pyplot()
    union = np.array([r["union"] for r in rows])
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    grid = np.geomspace(union.min(), union.max(), 200)
    ax.loglog(grid, 2.0 / grid, "k-", label="bound $2/U$ (Eq. 7)")
    ax.loglog(union, [r["max_abs_gradient"] for r in rows], "o", color="tab:blue",
              label="measured max $|\\partial L_{DSC}/\\partial s|$")
    ax.loglog(union, [r["min_abs_gradient"] for r in rows], "s", color="tab:orange", markersize=4,
              label="measured min $|\\partial L_{DSC}/\\partial s|$")
    ax.set_xlabel("$U = \\sum_i (y + s)$ (disc of growing radius)")
    ax.set_ylabel("gradient magnitude")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Dice gradient vanishes as $U$ grows", fontsize=10)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- table


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.3e}"


def _fmt_side(side: Mapping[str, Any]) -> str:
    if side["pixels"] == 0:
        return "(no pixel)"
    if side["distinct"] == 1:
        return f"{_fmt(side['min'])} (1 value)"
    return f"{side['distinct']} values in [{_fmt(side['min'])}, {_fmt(side['max'])}]"


def format_table(result: GradientStudyResult) -> str:
    """The study's markdown report (what ``gradient_table.md`` holds)."""
    k = result.class_index
    name = result.class_names[k]
    lines = [
        f"# Gradient study (paper §2.2, Figure 1): class {k} ({name})",
        "",
        f"Source: {result.source.get('description', result.source.get('kind'))}. "
        f"Gradients of each loss wrt. the probabilities, all {len(result.class_names)} classes in the loss "
        f"(averaging factor 1/(B·|K|) = {result.averaging:g}); values shown for class {name}.",
        "",
        f"I = {result.intersection:.2f}, U = {result.union:.2f}, soft DSC 2I/U = {result.soft_dice:.4f}. "
        f"Eq. 6 (unscaled): −2(U−I)/U² = {_fmt(result.dice_value_foreground)} on the ground truth, "
        f"2I/U² = {_fmt(result.dice_value_background)} elsewhere; Eq. 7 bound 2/U = {_fmt(result.dice_bound)}.",
        "",
        "Dynamic range = max/min non-zero |∂L/∂s| over the class map; power: 10·log10, amplitude: 20·log10. "
        f"Default convention here: {result.convention}. Paper (Figure 1): ≈{PAPER_DYNAMIC_RANGE_DB['dsc']} dB Dice, "
        f"≈{PAPER_DYNAMIC_RANGE_DB['ce']} dB CE (convention not stated).",
        "",
        "Both ranges follow from two numbers (power convention; double them for amplitude): Dice's is "
        f"10·log10((U−I)/I) = 10·log10(2/DSC − 1) = {result.dice_range_from_dsc_db:.2f} dB from the soft DSC alone; "
        f"CE's is 10·log10(max s / min s) over the ground truth = {result.ce_range_from_probs_db:.2f} dB "
        f"(s from {result.foreground_prob_min:.4f} to {result.foreground_prob_max:.4f}). The paper's 1.5 dB / 10 dB "
        "thus mean a soft DSC of 0.83 and ground-truth probabilities spanning a factor 10 (power), or a soft DSC "
        "of 0.91 and a factor 3.2 (amplitude).",
        "",
        "| loss | paper | ∂L/∂s on ground truth | ∂L/∂s elsewhere | range (power) dB | range (amplitude) dB "
        "| max \\|jax.grad − closed form\\| (relative) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result.rows:
        lines.append(
            f"| {r.label} | {r.equation} | {_fmt_side(r.foreground)} | {_fmt_side(r.background)} "
            f"| {r.dynamic_range_db['power']:.2f} | {r.dynamic_range_db['amplitude']:.2f} "
            f"| {r.max_abs_diff_closed_form:.2e} ({r.relative_diff_closed_form:.1e}) |"
        )
    lines += [
        "",
        f"Dice/CE ratio of the ranges (independent of the convention): {result.dice_to_ce_log_ratio:.3f} "
        f"(paper: {PAPER_DYNAMIC_RANGE_DB['dsc'] / PAPER_DYNAMIC_RANGE_DB['ce']:.3f}).",
        "",
        f"Per class, dynamic range ({result.convention}, dB):",
        "",
        "| loss | " + " | ".join(result.class_names) + " |",
        "|---|" + "---|" * len(result.class_names),
    ]
    for r in result.rows:
        cells = " | ".join(f"{v:.2f}" for v in r.dynamic_range_db_per_class[result.convention])
        lines.append(f"| {r.label} | {cells} |")
    lines += [
        "",
        "Eq. 7 as the object grows (one image, one class; `bound.png`):",
        "",
        "| disc radius (px) | U | 2/U | max \\|∂L/∂s\\| | max/bound |",
        "|---|---|---|---|---|",
    ]
    for b in result.bound_rows:
        lines.append(f"| {b['radius']:.1f} | {b['union']:.1f} | {_fmt(b['bound'])} | {_fmt(b['max_abs_gradient'])} "
                     f"| {b['max_abs_gradient'] / b['bound']:.3f} |")
    return "\n".join(lines) + "\n"


def format_summary(result: GradientStudyResult) -> str:
    """A few lines for the terminal: the headline numbers and where the files are."""
    dsc, ce = result.row("dsc"), result.row("ce")
    lines = [
        f"Gradient study, class {result.class_index} ({result.class_names[result.class_index]}), "
        f"U = {result.union:.1f}, soft DSC {result.soft_dice:.3f}",
        f"  dynamic range Dice: {dsc.dynamic_range_db['power']:.2f} dB (power) / "
        f"{dsc.dynamic_range_db['amplitude']:.2f} dB (amplitude)   [paper ≈1.5 dB]",
        f"  dynamic range CE:   {ce.dynamic_range_db['power']:.2f} dB (power) / "
        f"{ce.dynamic_range_db['amplitude']:.2f} dB (amplitude)   [paper ≈10 dB]",
        f"  Dice gradient distinct values on class: {dsc.foreground['distinct']} on ground truth, "
        f"{dsc.background['distinct']} elsewhere; max |jax.grad - closed form| over losses: "
        f"{max(r.max_abs_diff_closed_form for r in result.rows):.2e}",
    ]
    for key, path in result.files.items():
        lines.append(f"  wrote {key}: {path}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the study


_OPTIONAL_FILES = frozenset({"bound.png", "bound.json"})


def run_gradient_study(
    out_dir: str | os.PathLike,
    labels: np.ndarray,
    probs: np.ndarray,
    *,
    class_names: Sequence[str] = PHANTOM_CLASSES,
    class_index: int = 3,
    convention: str = "power",
    bound_rows: Sequence[Mapping[str, float]] = (),
    source: Mapping[str, Any] | None = None,
    dpi: int = 110,
) -> GradientStudyResult:
    """Differentiate every loss of :func:`study_losses` on one slice and write the study into ``out_dir``.

    ``labels``: ``(H, W)`` class indices; ``probs``: ``(H, W, K)`` probabilities. The losses see one image and
    all ``K`` classes (as the paper's ACDC runs, background included); the figure and table show class
    ``class_index``. ``bound_rows`` come from :func:`bound_sweep`. Existing study files in ``out_dir`` are
    replaced; other files there are left alone.
    """
    if convention not in G.DYNAMIC_RANGE_CONVENTIONS:
        raise ValueError(f"convention must be one of {G.DYNAMIC_RANGE_CONVENTIONS}; got {convention!r}")
    labels = np.asarray(labels)
    probs = np.asarray(probs, np.float32)
    num_classes = probs.shape[-1]
    if probs.shape[:-1] != labels.shape or labels.ndim != 2:
        raise ValueError(f"labels (H, W) and probs (H, W, K) disagree: {labels.shape} vs {probs.shape}")
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    if not 0 <= class_index < num_classes:
        raise ValueError(f"class_index {class_index} out of range for classes {tuple(class_names)}")
    k = class_index
    y = jnp.asarray(np.eye(num_classes, dtype=np.float32)[labels])[None]
    s = jnp.asarray(probs)[None]

    rows, maps = [], {}
    for spec in study_losses():
        auto = G.loss_gradient(spec.loss, s, y)
        closed = spec.closed_form(s, y)
        maps[spec.key] = np.asarray(auto[0, ..., k])
        summary = G.gradient_values(auto, y, classes=(k,))[0]
        per_class = {
            conv: [float(G.dynamic_range_db(auto[..., j], convention=conv)) for j in range(num_classes)]
            for conv in G.DYNAMIC_RANGE_CONVENTIONS
        }
        rows.append(LossGradientRow(
            key=spec.key, label=spec.label, equation=spec.equation,
            foreground=_summary_dict(summary, "foreground"), background=_summary_dict(summary, "background"),
            dynamic_range_db={conv: per_class[conv][k] for conv in G.DYNAMIC_RANGE_CONVENTIONS},
            dynamic_range_db_per_class=per_class,
            max_abs_diff_closed_form=float(jnp.max(jnp.abs(auto - closed))),
            max_abs_gradient=float(jnp.max(jnp.abs(auto))),
        ))

    inter, union = (float(v[0, 0]) for v in G.intersection_union(s, y, classes=(k,)))
    fg_probs = probs[..., k][labels == k]
    result = GradientStudyResult(
        class_names=tuple(class_names), class_index=k, convention=convention,
        source=dict(source or {"kind": "array"}), intersection=inter, union=union, soft_dice=2 * inter / union,
        dice_value_foreground=-2 * (union - inter) / union**2, dice_value_background=2 * inter / union**2,
        dice_bound=2 / union, averaging=1.0 / num_classes,
        foreground_prob_min=float(fg_probs.min()) if fg_probs.size else float("nan"),
        foreground_prob_max=float(fg_probs.max()) if fg_probs.size else float("nan"),
        rows=rows, bound_rows=[dict(b) for b in bound_rows], files={},
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".gradient-study-", dir=out_dir))  # same file system: renames work
    try:
        name = class_names[k]
        box = _crop_box(labels)
        maps_shown = {key: m[box] for key, m in maps.items()}
        dr = {key: G.dynamic_range_db(jnp.asarray(m), convention=convention) for key, m in maps.items()}
        _plot_figure1(staging / "figure1.png", np.asarray(y[0, ..., k])[box], probs[..., k][box], maps_shown["dsc"],
                      maps_shown["ce"],
                      class_name=name, dr_dice=float(dr["dsc"]), dr_ce=float(dr["ce"]), convention=convention,
                      dpi=dpi)
        _plot_gradient_maps(
            staging / "gradient_maps.png",
            [(r.label, maps_shown[r.key], r.dynamic_range_db["power"]) for r in rows], class_name=name, dpi=dpi,
        )
        names = ["figure1.png", "gradient_maps.png", "gradient_table.md", "gradient_table.json"]
        if result.bound_rows:
            _plot_bound(staging / "bound.png", result.bound_rows, dpi=dpi)
            (staging / "bound.json").write_text(json.dumps(result.bound_rows, indent=2) + "\n", encoding="utf-8")
            names += ["bound.png", "bound.json"]
        result.files = {n.replace(".", "_"): out_dir / n for n in names}
        (staging / "gradient_table.md").write_text(format_table(result), encoding="utf-8")
        (staging / "gradient_table.json").write_text(json.dumps(result.to_json(), indent=2) + "\n",
                                                     encoding="utf-8")
        for n in names:
            os.replace(staging / n, out_dir / n)
        for n in _OPTIONAL_FILES.difference(names):  # a bound sweep of an earlier run must not stay beside this one
            (out_dir / n).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result
