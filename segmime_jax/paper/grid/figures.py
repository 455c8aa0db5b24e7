"""Paper Figures 2-4 of a grid (matplotlib, Agg backend; nothing is shown on screen).

- Figure 2, :func:`plot_validation_curves`: validation DSC (mean over foreground classes, %) per epoch,
  one line per loss (the mean over seeds, their range shaded), one panel per optimiser; the same layout for
  the gradient's dynamic range during training (:func:`plot_gradient_range`), and the training loss per
  (optimiser, loss) panel (:func:`plot_training_loss`). All three read the grid's epoch facts
  (:func:`~segmime_jax.paper.grid.facts.epoch_facts`).
- Figure 3, :func:`plot_calibration`: class-wise expected calibration error (ClECE) per loss as bars (mean over
  classes and the chosen class), and the chosen class's reliability diagram (accuracy vs confidence per bin),
  one line per loss.
- Figure 4, :func:`plot_examples`: fixed test slices, columns image, ground truth and each loss's prediction,
  labels as a colour overlay on the image.

Every writer saves through a temporary file in the destination folder and renames it, so a figure is either
complete or absent, and returns the path written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from segmime_jax.losses import display_name as loss_display_name
from segmime_jax.paper.grid.facts import curves
from segmime_jax.paper.grid.tables import class_display_name, optimizer_display_name
from segmime_jax.paper.plotting import pyplot, save_figure

# Label colours: background transparent, then RV/prostate red, Myo green, LV blue, more classes from tab10.
_LABEL_COLOURS = (
    (0.0, 0.0, 0.0),
    (0.89, 0.10, 0.11),
    (0.30, 0.69, 0.29),
    (0.22, 0.49, 0.72),
    (1.0, 0.50, 0.0),
    (0.60, 0.31, 0.64),
    (1.0, 1.0, 0.2),
)


def _loss_colours(losses: Sequence[str]) -> dict[str, tuple]:
    cmap = matplotlib.colormaps["tab10"]
    return {loss: cmap(i % 10) for i, loss in enumerate(losses)}


Curves = Mapping[tuple[str, str], Sequence[np.ndarray]]


def _grid_of(epochs: pd.DataFrame, what: str) -> tuple[list[str], list[str], dict[str, tuple]]:
    """The optimisers and losses of the epoch facts in their order, and a colour per loss."""
    if epochs.empty:
        raise ValueError(f"{what} needs at least one run's history")
    losses = [str(loss) for loss in dict.fromkeys(epochs["loss"])]
    return [str(o) for o in dict.fromkeys(epochs["optimizer"])], losses, _loss_colours(losses)


def _seed_band(ax, runs: Sequence[np.ndarray], *, scale: float, colour, label: str) -> None:
    """The mean over seeds of ``scale`` × values per epoch as a line, the seeds' range as a band (one seed: the
    line). ``runs``: ``(2, epochs)`` arrays of (epoch, value), one per seed."""
    curves = [(run[0], scale * run[1]) for run in runs if run.shape[1]]
    if not curves:
        return
    length = min(len(epochs) for epochs, _ in curves)
    epochs = curves[0][0][:length]
    stacked = np.stack([values[:length] for _, values in curves])
    with np.errstate(all="ignore"):
        ax.plot(
            epochs,
            np.nanmean(stacked, axis=0),
            color=colour,
            linewidth=1.5,
            label=label if len(curves) == 1 else f"{label} (mean of {len(curves)} seeds, range shaded)",
            marker="o" if length <= 20 else None,
            markersize=3,
        )
        if len(curves) > 1:
            ax.fill_between(
                epochs, np.nanmin(stacked, axis=0), np.nanmax(stacked, axis=0), color=colour, alpha=0.2, linewidth=0
            )


def plot_epoch_curves(
    epochs: pd.DataFrame,
    path: Path,
    *,
    value: str,
    scale: float = 1.0,
    ylabel: str,
    title: str,
    ylim: tuple[float, float] | None = None,
    legend: str = "lower right",
    dpi: int = 120,
) -> Path:
    """One panel per optimiser, one line per loss: ``scale`` × the column ``value`` of the epoch facts per epoch,
    the mean over seeds, the seeds' range shaded.

    Args:
      epochs: the grid's epoch facts (:func:`~segmime_jax.paper.grid.facts.epoch_facts`).
      path: the image file to write.
      value: the plotted column (NaN: no point), e.g. ``"val_dsc_fg"``.
      scale: what it is multiplied by (100 for a percentage).
      ylabel, title, ylim, legend, dpi: the figure's labels, y range, legend place and resolution.

    Returns:
      ``path``.
    """
    optimizers, losses, colours = _grid_of(epochs, "plot_epoch_curves")
    runs = curves(epochs, value)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(optimizers), figsize=(5.0 * len(optimizers), 3.8), squeeze=False, sharey=True)
    for ax, optimizer in zip(axes[0], optimizers, strict=True):
        for loss in losses:
            _seed_band(
                ax, runs.get((optimizer, loss), ()), scale=scale, colour=colours[loss], label=loss_display_name(loss)
            )
        ax.set_title(optimizer_display_name(optimizer))
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(loc=legend, fontsize="small")
    axes[0][0].set_ylabel(ylabel)
    if ylim is not None:
        axes[0][0].set_ylim(*ylim)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_validation_curves(
    epochs: pd.DataFrame, path: Path, *, title: str = "Validation DSC over epochs", dpi: int = 120
) -> Path:
    """Figure 2: validation DSC (%, mean 3D DSC over the foreground classes, ``val_dsc_fg``) per epoch."""
    return plot_epoch_curves(
        epochs,
        path,
        value="val_dsc_fg",
        scale=100.0,
        ylabel="validation DSC (%), foreground mean",
        title=title,
        ylim=(0, 100),
        dpi=dpi,
    )


def plot_gradient_range(
    epochs: pd.DataFrame, path: Path, *, title: str = "Dynamic range of the loss gradient", dpi: int = 120
) -> Path:
    """The paper's dynamic-range argument (§2.2, Figure 1) watched during training: per epoch, the dynamic range
    of ``∂L/∂s`` over one (image, class) map in dB (median over the probe batch's images, then the mean over the
    foreground classes: the epoch facts' ``grad_range_db_fg``; see :mod:`segmime_jax.train.telemetry`)."""
    return plot_epoch_curves(
        epochs,
        path,
        value="grad_range_db_fg",
        legend="upper right",
        ylabel="dB per (image, class) map, foreground classes",
        title=title,
        dpi=dpi,
    )


def plot_training_loss(
    epochs: pd.DataFrame, path: Path, *, title: str = "Training loss over epochs", dpi: int = 120
) -> Path:
    """The mean training loss per epoch; one panel per (optimiser, loss), since the losses have different scales
    (the mimes are negative). Seeds as in :func:`plot_epoch_curves`."""
    optimizers, losses, colours = _grid_of(epochs, "plot_training_loss")
    runs = curves(epochs, "train_loss")
    plt = pyplot()
    fig, axes = plt.subplots(
        len(optimizers), len(losses), figsize=(3.4 * len(losses), 2.8 * len(optimizers)), squeeze=False
    )
    for i, optimizer in enumerate(optimizers):
        for j, loss in enumerate(losses):
            ax = axes[i][j]
            _seed_band(
                ax, runs.get((optimizer, loss), ()), scale=1.0, colour=colours[loss], label=loss_display_name(loss)
            )
            ax.set_title(f"{optimizer_display_name(optimizer)}, {loss_display_name(loss)}", fontsize="medium")
            ax.set_xlabel("epoch")
            ax.grid(True, alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def plot_calibration(
    clece: Mapping[str, np.ndarray],
    reliability: Mapping[str, Mapping[str, np.ndarray]],
    class_names: Sequence[str],
    path: Path,
    *,
    class_index: int | None = None,
    title: str = "Calibration on the test set",
    dpi: int = 120,
) -> Path:
    """Figure 3: ClECE per loss (bars) and the reliability diagram of one class (lines, one per loss).

    Args:
      clece: ``{loss: (K,) class-wise ECE per class}`` (``RunResult.test_clece``).
      reliability: ``{loss: {"confidence", "accuracy", "count": (K, bins)}}`` (``RunResult.reliability``):
        mean predicted probability of class k, fraction of pixels labelled k and pixel count in each bin.
      class_names: the K class names, background first.
      class_index: the class of the reliability diagram and the second bar; default: the last class
        (LV for ACDC, the prostate for PROMISE12).
    """
    if not clece:
        raise ValueError("plot_calibration needs at least one loss")
    plt = pyplot()
    losses = list(clece)
    k = len(class_names) - 1 if class_index is None else int(class_index)
    if not 0 <= k < len(class_names):
        raise ValueError(f"class_index {k} out of range for classes {tuple(class_names)}")
    class_label = class_display_name(class_names[k])
    colours = _loss_colours(losses)
    fig, (bars, diagram) = plt.subplots(1, 2, figsize=(10.0, 4.0))

    _ece_bars(bars, clece, losses, colours, k, class_label)
    _reliability_lines(diagram, reliability, losses, colours, k, class_label)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi)


def _ece_bars(bars, clece, losses, colours, k: int, class_label: str) -> None:
    """Figure 3, left: ClECE per loss, the mean over classes and class k side by side."""
    x = np.arange(len(losses))
    mean_ece = [float(np.mean(np.asarray(clece[loss], dtype=float))) * 100.0 for loss in losses]
    class_ece = [float(np.asarray(clece[loss], dtype=float)[k]) * 100.0 for loss in losses]
    width = 0.38
    bars.bar(
        x - width / 2,
        mean_ece,
        width,
        color=[colours[l] for l in losses],
        alpha=0.55,
        label="mean over classes (background incl.)",
        edgecolor="black",
    )
    bars.bar(
        x + width / 2,
        class_ece,
        width,
        color=[colours[l] for l in losses],
        label=class_label,
        edgecolor="black",
        hatch="//",
    )
    for xi, (m, c) in enumerate(zip(mean_ece, class_ece, strict=True)):
        bars.text(xi - width / 2, m, f"{m:.2f}", ha="center", va="bottom", fontsize="x-small")
        bars.text(xi + width / 2, c, f"{c:.2f}", ha="center", va="bottom", fontsize="x-small")
    bars.set_xticks(x, [loss_display_name(l) for l in losses])
    bars.set_ylabel("ClECE (%)")
    bars.set_title(f"ClECE: mean over all classes, background incl. (plain), {class_label} (hatched)")
    bars.grid(True, axis="y", alpha=0.3)


def _reliability_lines(diagram, reliability, losses, colours, k: int, class_label: str) -> None:
    """Figure 3, right: the reliability diagram of class k, one line per loss."""
    diagram.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for loss in losses:
        table = reliability.get(loss)
        if table is None:
            continue
        confidence = np.asarray(table["confidence"], dtype=float)[k]
        accuracy = np.asarray(table["accuracy"], dtype=float)[k]
        count = np.asarray(table["count"], dtype=float)[k]
        used = count > 0
        diagram.plot(
            confidence[used],
            accuracy[used],
            color=colours[loss],
            marker="o",
            markersize=3,
            linewidth=1.5,
            label=loss_display_name(loss),
        )
    diagram.set_xlim(0, 1)
    diagram.set_ylim(0, 1)
    diagram.set_xlabel(f"confidence (mean predicted p of {class_label} in the bin)")
    diagram.set_ylabel(f"accuracy (fraction of pixels labelled {class_label})")
    diagram.set_title(f"Reliability diagram, {class_label}")
    diagram.grid(True, alpha=0.3)
    diagram.legend(loc="upper left", fontsize="small")


def label_overlay(image: np.ndarray, label: np.ndarray, *, alpha: float = 0.45) -> np.ndarray:
    """An (H, W, 3) RGB float image: grey ``image`` (min-max scaled) with each class > 0 tinted in its colour."""
    image = np.asarray(image, dtype=np.float64)
    label = np.asarray(label)
    if image.shape != label.shape:
        raise ValueError(f"image {image.shape} and label {label.shape} must have the same shape")
    rgb = np.repeat(_unit(image)[..., None], 3, axis=-1)
    for value in np.unique(label):
        if value <= 0:
            continue
        colour = np.asarray(
            _LABEL_COLOURS[int(value)]
            if value < len(_LABEL_COLOURS)
            else matplotlib.colormaps["tab10"](int(value) % 10)[:3]
        )
        where = label == value
        rgb[where] = (1.0 - alpha) * rgb[where] + alpha * colour
    return rgb


def plot_examples(
    examples: Mapping[str, Mapping[str, np.ndarray]],
    class_names: Sequence[str],
    path: Path,
    *,
    max_rows: int = 4,
    title: str = "Test slices: ground truth and predictions",
    dpi: int = 120,
) -> Path:
    """Figure 4: rows are test slices; columns image, ground truth, then one prediction per loss.

    Args:
      examples: ``{loss: {"image": (n, H, W), "label": (n, H, W), "prediction": (n, H, W)}}``
        (``RunResult.examples``); every run must hold the same slices (image and label are taken from the
        first loss).
      class_names: the K class names (legend).
    """
    if not examples:
        raise ValueError("plot_examples needs at least one loss")
    plt = pyplot()
    losses = list(examples)
    first = examples[losses[0]]
    images = np.asarray(first["image"])
    labels = np.asarray(first["label"])
    if images.ndim != 3 or images.shape != labels.shape:
        raise ValueError(f"examples need image and label shaped (n, H, W), got {images.shape}, {labels.shape}")
    for loss in losses:
        prediction = np.asarray(examples[loss]["prediction"])
        if prediction.shape != labels.shape:
            raise ValueError(f"{loss}: prediction shape {prediction.shape} differs from label shape {labels.shape}")
    rows = min(max_rows, images.shape[0])
    if rows == 0:
        raise ValueError("plot_examples: no example slices")
    columns = 2 + len(losses)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.2 * rows + 0.6), squeeze=False)
    for r in range(rows):
        panels = [
            ("image", np.repeat(_unit(images[r])[..., None], 3, axis=-1)),
            ("ground truth", label_overlay(images[r], labels[r])),
        ]
        panels += [
            (loss_display_name(loss), label_overlay(images[r], np.asarray(examples[loss]["prediction"])[r]))
            for loss in losses
        ]
        for c, (name, rgb) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(rgb, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name)
    handles = [
        Patch(color=_LABEL_COLOURS[k] if k < len(_LABEL_COLOURS) else "black", label=class_display_name(name))
        for k, name in enumerate(class_names)
        if k > 0
    ]
    fig.legend(handles=handles, loc="lower center", ncol=max(1, len(handles)), fontsize="small", frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save_figure(fig, path, dpi)


def _unit(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)
