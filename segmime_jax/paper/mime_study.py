"""Why the mimes trail Dice in a small demo, and when they stop to (our study of paper §2.3-2.4 and §4).

It reads finished grids (folders written by ``python -m experiments.acdc`` / ``experiments.promise12``) and
summarises, per grid and loss: the test All-DSC, the paired difference against the reference loss (Dice) with its
95 % bootstrap interval (:mod:`segmime_jax.paper.grid.statistics`), the convergence speed (epochs to 90 % of the best
validation DSC) and whether the curve is flat (late gain), the epochs during which a foreground class was missed
altogether on validation (a "dead class"), and, for binary tasks, the halo (:mod:`segmime_jax.paper.halo`). Grids
that differ in one setting (image size, epochs, learning rate) then give that setting's effect.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from segmime_jax.data import DatasetSplits, VolumeInfo, load_acdc, load_promise12
from segmime_jax.data.export import read_original_labels, read_prediction_nifti
from segmime_jax.paper.grid import statistics
from segmime_jax.paper.grid.config import run_name
from segmime_jax.paper.halo import HaloMeasures, eroded_dsc, halo_measures, working_pixel_mm
from segmime_jax.paper.plotting import pyplot, save_figure
from segmime_jax.train import RunResult
from segmime_jax.train.metrics import mean_foreground
from segmime_jax.train.results import load_run_result

MISSED_CLASS_DSC = 0.05  # a foreground class under 5 % validation DSC is (all but) never predicted: "missed"
#: Widths (working pixels) of the rims peeled off a prediction by the rim measure (:func:`rim_table`).
RIM_WIDTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclasses.dataclass(frozen=True)
class LossSummary:
    """One loss of one grid, over its seeds.

    Attributes:
      loss: the loss name as in the grid.
      test_all_dsc: mean over seeds and test volumes of the per-volume All-DSC (mean over foreground classes).
      epochs_to_90: per seed, the first epoch reaching 90 % of the best validation DSC.
      late_gain: per seed, what the best validation DSC rose by in the last quarter of the epochs.
      missed_class_epochs: per seed, the epochs at whose end some foreground class had validation DSC under 5 %
        (a class the network has stopped predicting).
      val_curves: ``(seeds, epochs, K)`` validation DSC per class (background first).
      halo: per seed and test volume, the halo of the foreground class (binary tasks), else empty.
      rim_dsc: per seed and test volume, the foreground DSC on the original grid after peeling a rim of each
        width of :data:`RIM_WIDTHS` off the prediction (:func:`~segmime_jax.paper.halo.eroded_dsc`), with the halo.
    """

    loss: str
    test_all_dsc: float
    epochs_to_90: list[int]
    late_gain: list[float]
    missed_class_epochs: list[int]
    val_curves: np.ndarray
    halo: list[HaloMeasures]
    rim_dsc: list[list[float]] = dataclasses.field(default_factory=list)

    def halo_mean(self, field: str) -> float:
        """Mean of one :class:`HaloMeasures` field over seeds and volumes (NaN entries left out)."""
        values = [getattr(h, field) for h in self.halo]
        values = [v for v in values if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan


@dataclasses.dataclass(frozen=True)
class GridSummary:
    """One finished grid: its settings, a :class:`LossSummary` per loss, and each loss's paired difference of
    test All-DSC and of epochs to 90 % against the reference loss."""

    folder: Path
    dataset: str
    image_size: int
    epochs: int
    seeds: int
    test_volumes: int
    train_slices: int
    train_volumes: int
    plateau_patience: int
    adam_lr: float
    adam_b1: float
    wall_time_s: float
    reference: str
    class_names: tuple[str, ...]
    losses: dict[str, LossSummary]
    dsc_differences: dict[str, statistics.Difference]
    epoch_differences: dict[str, statistics.Difference]

    @property
    def label(self) -> str:
        """E.g. ``"promise12 48², 21 train vol., 6 ep, lr 1e-03, β1 0.9, patience 1"``."""
        return (
            f"{self.dataset} {self.image_size}², {self.train_volumes} train vol., {self.epochs} ep, "
            f"lr {self.adam_lr:.0e}, β1 {self.adam_b1:g}, patience {self.plateau_patience}"
        )


def summarize_grid(folder: str | Path, *, halo: bool = True) -> GridSummary:
    """Summarise the finished grid in ``folder`` (its ``results.json`` and ``runs/*/result.json``).

    Args:
      folder: the grid's ``--out`` folder.
      halo: measure the halo on the test predictions (binary tasks with predictions on disk; it reloads the
        grid's data, from the preprocessing cache when the grid made one).

    Returns:
      A :class:`GridSummary` of its Adam runs.
    """
    folder = Path(folder)
    info = json.loads((folder / "results.json").read_text())
    config = info["config"]
    names = info["data"]["class_names"]
    runs: dict[str, list[RunResult]] = {}
    for loss in config["losses"]:
        runs[loss] = [
            load_run_result(folder / "runs" / run_name("adam", loss, seed)) for seed in range(int(config["seeds"]))
        ]
    volumes = _test_volumes(info) if halo and len(names) == 2 else None
    size = (int(config["image_size"]),) * 2
    losses = {loss: _summarize_loss(loss, results, folder, volumes, size) for loss, results in runs.items()}
    reference = config["reference_loss"]
    dsc_differences, epoch_differences = {}, {}
    if reference in runs:
        base = np.stack([mean_foreground(r.test_dsc) for r in runs[reference]])
        for loss, results in runs.items():
            if loss == reference:
                continue
            dsc_differences[loss] = statistics.paired_difference(
                np.stack([mean_foreground(r.test_dsc) for r in results]), base
            )
            epoch_differences[loss] = statistics.paired_epoch_difference(
                losses[loss].epochs_to_90, losses[reference].epochs_to_90
            )
    train = config["train"]
    return GridSummary(
        folder=folder,
        dataset=info["dataset"],
        image_size=int(config["image_size"]),
        epochs=int(train["epochs"]),
        seeds=int(config["seeds"]),
        test_volumes=int(info["data"]["test_volumes"]),
        train_slices=int(info["data"]["train_slices"]),
        train_volumes=int(info["data"]["train_volumes"]),
        plateau_patience=int(train["plateau_patience"]),
        adam_lr=float(config["adam_lr"]),
        adam_b1=float(train["adam_b1"]),
        wall_time_s=float(info["wall_time_s"]),
        reference=reference,
        class_names=tuple(names),
        losses=losses,
        dsc_differences=dsc_differences,
        epoch_differences=epoch_differences,
    )


def _summarize_loss(
    loss: str,
    results: Sequence[RunResult],
    folder: Path,
    volumes: dict[str, VolumeInfo] | None,
    working_size: tuple[int, int],
) -> LossSummary:
    curves = np.stack([np.asarray([h["val_dsc"] for h in r.history], np.float64) for r in results])
    foreground = curves[..., 1:].mean(axis=-1)
    halos: list[HaloMeasures] = []
    rims: list[list[float]] = []
    if volumes is not None:
        for seed, result in enumerate(results):
            predictions = folder / "runs" / run_name("adam", loss, seed) / "predictions"
            for name in result.test_volume_names:
                path = predictions / f"{name}.nii.gz"
                if path.is_file():  # a grid run with --no-write-predictions has none
                    halo, rim = volume_halo(volumes[name], path, working_size)
                    halos.append(halo)
                    rims.append(rim)
    return LossSummary(
        loss=loss,
        test_all_dsc=float(np.mean([mean_foreground(r.test_dsc) for r in results])),
        epochs_to_90=[statistics.epochs_to_fraction(f, 0.9) for f in foreground],
        late_gain=[statistics.late_gain(f) for f in foreground],
        missed_class_epochs=[int((c[:, 1:].min(axis=-1) < MISSED_CLASS_DSC).sum()) for c in curves],
        val_curves=curves,
        halo=halos,
        rim_dsc=rims,
    )


def volume_halo(
    volume: VolumeInfo, prediction_path: Path, working_size: tuple[int, int], class_index: int = 1
) -> tuple[HaloMeasures, list[float]]:
    """The halo of class ``class_index`` in one written prediction against the volume's reference, on the original
    grid (:func:`segmime_jax.paper.halo.halo_measures`), and its DSC with a rim of each width of :data:`RIM_WIDTHS`
    working pixels peeled off (:func:`segmime_jax.paper.halo.eroded_dsc`, within slices)."""
    prediction = read_prediction_nifti(volume, prediction_path) == class_index
    reference = read_original_labels(volume, class_index + 1) == class_index
    spacing = volume.array_spacing
    in_plane = [s for axis, s in enumerate(spacing) if axis != volume.slice_axis]
    pixel = working_pixel_mm(in_plane, volume.in_plane_shape, working_size)
    halo = halo_measures(prediction, reference, spacing, working_pixel_mm=pixel)
    rim = eroded_dsc(
        prediction, reference, spacing, working_pixel_mm=pixel, pixels=RIM_WIDTHS, slice_axis=volume.slice_axis
    )
    return halo, rim


def rim_table(summaries: Sequence[GridSummary]) -> str:
    """One Markdown row per (grid, loss) with a measured halo: the mean foreground DSC (%) on the original grid
    after peeling a rim of each width of :data:`RIM_WIDTHS` working pixels off the predictions. The width that
    maximises it says how much of the loss's over-segmentation a uniform rim explains."""
    header = "| grid | loss | " + " | ".join(f"peel {w:g} px" for w in RIM_WIDTHS) + " |"
    lines = [header, "|" + "---|" * (len(RIM_WIDTHS) + 2)]
    for s in summaries:
        for loss in s.losses.values():
            if loss.rim_dsc:
                means = np.mean(np.asarray(loss.rim_dsc, np.float64), axis=0) * 100
                lines.append(f"| {s.label} | {loss.loss} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines)


_LOADERS: dict[str, Callable[..., DatasetSplits]] = {"acdc": load_acdc, "promise12": load_promise12}


def _test_volumes(info: dict) -> dict[str, VolumeInfo]:
    config = info["config"]
    size = (int(config["image_size"]),) * 2
    splits = _LOADERS[info["dataset"]](
        info["data"]["root"],
        size=size,
        seed=int(config["data_seed"]),
        cache_dir=Path(config["cache_dir"]) / "preprocessed",
    )
    return {v.name: v for v in splits.test.volumes}


def markdown_table(summaries: Sequence[GridSummary]) -> str:
    """One Markdown row per (grid, loss): settings, test All-DSC, paired difference to the reference, epochs to
    90 % (mean over seeds), the largest late gain, missed-class epochs (mean over seeds), and the halo's means
    (columns only when some grid has a measured halo)."""
    halo_fields = ("fp_ratio", "band_fp_ratio", "fp_median_px", "fn_ratio")
    with_halo = any(loss.halo for s in summaries for loss in s.losses.values())
    header = (
        "| grid | loss | seeds × test vol. | All-DSC | − Dice [95 % CI] | epochs to 90 % | late gain (max) "
        "| missed-class epochs |"
    )
    if with_halo:
        header += " FP / ref. | band FP / ref. | FP median distance (px) | FN / ref. |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for s in summaries:
        for loss, summary in s.losses.items():
            diff = s.dsc_differences.get(loss)
            versus = diff.format() if diff is not None else ("(reference)" if loss == s.reference else "–")
            row = (
                f"| {s.label} | {loss} | {s.seeds} × {s.test_volumes} | {100 * summary.test_all_dsc:.1f} | {versus} "
                f"| {np.mean(summary.epochs_to_90):.1f} / {s.epochs} | {100 * max(summary.late_gain):.1f} "
                f"| {np.mean(summary.missed_class_epochs):.1f} |"
            )
            if with_halo:
                values = [summary.halo_mean(f) for f in halo_fields]
                row += "".join(" – |" if math.isnan(v) else f" {v:.2f} |" for v in values)
            lines.append(row)
    return "\n".join(lines)


def plot_gap_against_size(summaries: Sequence[GridSummary], path: str | Path, *, loss: str = "mime") -> Path:
    """Left: the paired ``loss − Dice`` test All-DSC (points, 95 % interval) against the image size, one series
    per epoch budget, with what a halo of fixed width in pixels predicts (a gap ∝ 1/size through the smallest
    size's mean). Middle: false positives and false negatives over the reference volume, per loss. Right: the
    median distance of the false positives to the reference, in working pixels (about constant if the halo were
    a band of fixed width in pixels)."""
    plt = pyplot()
    grids = sorted((s for s in summaries if loss in s.dsc_differences), key=lambda s: (s.epochs, s.image_size))
    if not grids:
        raise ValueError(f"no grid compares {loss!r} with the reference loss")
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.8))
    for epochs in sorted({s.epochs for s in grids}):
        series = [s for s in grids if s.epochs == epochs]
        sizes = np.array([s.image_size for s in series], float)
        diffs = [s.dsc_differences[loss] for s in series]
        mean = np.array([100 * d.mean for d in diffs])
        errors = np.array([[100 * (d.mean - d.low), 100 * (d.high - d.mean)] for d in diffs]).T
        left.errorbar(sizes, mean, yerr=errors, marker="o", capsize=4, label=f"{epochs} epochs")
        if epochs == grids[0].epochs:
            grid = np.linspace(sizes.min(), max(sizes.max(), 128), 50)
            left.plot(grid, mean[0] * sizes[0] / grid, "k:", label="∝ 1/size (fixed halo in pixels)")
    left.axhline(0, color="grey", lw=0.8)
    left.set_xlabel("image size (pixels per side)")
    left.set_ylabel(f"{loss} − Dice, test All-DSC (points)")
    left.legend(fontsize=8)
    base = [s for s in grids if s.epochs == grids[0].epochs]
    sizes = [s.image_size for s in base]
    for name, style in ((loss, "-o"), (grids[0].reference, "--s")):
        for field, colour, text in (("fp_ratio", "C3", "FP"), ("fn_ratio", "C2", "FN")):
            middle.plot(
                sizes, [s.losses[name].halo_mean(field) for s in base], style, color=colour, label=f"{name}: {text}"
            )
        right.plot(sizes, [s.losses[name].halo_mean("fp_median_px") for s in base], style, color="C0", label=name)
    middle.set_ylabel("voxels / reference volume")
    right.set_ylabel("median FP distance to the reference (px)")
    for ax in (middle, right):
        ax.set_xlabel("image size (pixels per side)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=110)


def plot_class_curves(summary: GridSummary, path: str | Path) -> Path:
    """Validation DSC per foreground class and epoch, one panel per loss (each seed a line): a class that stays
    near 0 for epochs (a missed class) shows as a flat line at the bottom."""
    plt = pyplot()
    losses = list(summary.losses.values())
    fig, axes = plt.subplots(1, len(losses), figsize=(3.6 * len(losses), 3.2), sharey=True, squeeze=False)
    for ax, loss in zip(axes[0], losses, strict=True):
        epochs = np.arange(1, loss.val_curves.shape[1] + 1)
        for k in range(1, loss.val_curves.shape[2]):
            for seed, curve in enumerate(loss.val_curves[..., k]):
                label = summary.class_names[k] if seed == 0 else None
                ax.plot(epochs, 100 * curve, color=f"C{k - 1}", alpha=0.8, lw=1.2, label=label)
        ax.set_title(f"{loss.loss}, {summary.seeds} seeds ({summary.label})", fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("validation DSC (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi=110)
