"""Is the difference real? Paired comparisons of a loss against the Dice loss, with bootstrap intervals.

The paper compares single runs. Here every loss of a grid is trained with the same seeds (same initial weights,
same data order and dropout draws per seed) and tested on the same volumes, so runs pair up: for a loss L and
the reference loss (Dice), the per-volume differences ``d[s, v] = DSC_L[s, v] − DSC_ref[s, v]`` (seed s, test
volume v) are what varies only with the loss.

- :func:`paired_difference`: the mean of ``d`` with a 95 % bootstrap confidence interval
  (:func:`scipy.stats.bootstrap`, BCa). Test volumes are resampled; with more than one seed, seeds are
  resampled too, independently of the volumes (a crossed bootstrap: the interval then covers both the choice of
  test volumes and the randomness of training). With one seed the interval says nothing of seed-to-seed
  variation: it is an interval over test volumes only.
- :func:`epochs_to_fraction`: the convergence speed of one run, the first epoch at which its validation DSC
  reaches a fraction (90 %) of its best; :func:`paired_epoch_difference` compares it across seeds the same way;
  :func:`late_gain`: whether a run's curve has flattened (what its best rose by in the last quarter of epochs).
- :func:`compare_losses`: every loss of a grid against the reference, from its facts tables
  (:mod:`segmime_jax.paper.grid.facts`): All-DSC and All-HD95 paired by (seed, volume), epochs to 90 % of the
  best validation DSC paired by seed.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
RESAMPLES = 9999


@dataclasses.dataclass(frozen=True)
class Difference:
    """A paired difference ``candidate − reference`` (in the unit of the inputs).

    Attributes:
      mean: mean of the paired differences.
      low, high: the 95 % bootstrap confidence interval (NaN when it cannot be estimated, e.g. one sample).
      n_seeds, n_units: how many seeds and units (test volumes, or 1 for per-run quantities) it pools.
      method: how the interval was made (``"bca"``, ``"percentile"`` or ``"none"``).
    """

    mean: float
    low: float
    high: float
    n_seeds: int
    n_units: int
    method: str

    @property
    def rough(self) -> bool:
        """Fewer than 5 units and 5 seeds: a bootstrap of 4 values has only 35 distinct resamples (3: 10), too few
        for its interval to mean much."""
        return max(self.n_units, self.n_seeds) < 5

    def format(self, *, scale: float = 100.0, unit: str = "points", digits: int = 1) -> str:
        """E.g. ``"-0.8 points [-2.1, +0.5]"`` (values times ``scale``; ASCII signs)."""
        value = f"{scale * self.mean:+.{digits}f} {unit}"
        if math.isnan(self.low) or math.isnan(self.high):
            return value + " (no interval: one sample)"
        interval = f"{value} [{scale * self.low:+.{digits}f}, {scale * self.high:+.{digits}f}]"
        return interval + (" (rough: few samples)" if self.rough else "")

    def to_json(self) -> dict[str, Any]:
        def finite(x: float) -> float | None:
            return float(x) if math.isfinite(x) else None

        return {
            "mean": finite(self.mean),
            "ci95": [finite(self.low), finite(self.high)],
            "n_seeds": self.n_seeds,
            "n_units": self.n_units,
            "method": self.method,
            "rough": self.rough,
        }


def paired_difference(
    candidate: np.ndarray, reference: np.ndarray, *, seed: int = 0, n_resamples: int = RESAMPLES
) -> Difference:
    """Mean paired difference ``candidate − reference`` and its 95 % bootstrap interval.

    Args:
      candidate, reference: ``(seeds, units)`` arrays (e.g. per-volume All-DSC per seed; a 1-D array is one
        seed), paired element by element.
      seed: of the bootstrap's random generator (the interval is reproducible).
      n_resamples: bootstrap resamples.

    Returns:
      A :class:`Difference`. Units are resampled; seeds too when there is more than one, independently (each
      resample is the mean over a resampled grid of seeds × units).
    """
    d = np.atleast_2d(np.asarray(candidate, np.float64)) - np.atleast_2d(np.asarray(reference, np.float64))
    if d.size == 0:
        raise ValueError("no paired values to compare")
    if not np.all(np.isfinite(d)):
        raise ValueError("paired values must be finite")
    n_seeds, n_units = d.shape
    mean = float(d.mean())
    if d.size < 2 or np.ptp(d) <= 1e-12 * max(1.0, abs(mean)):
        spread = 0.0 if d.size > 1 else math.nan  # all differences equal: the interval is that value
        return Difference(mean, mean + spread, mean + spread, n_seeds, n_units, "none")
    samples: list[np.ndarray] = []
    if n_units > 1:
        samples.append(np.arange(n_units))
    if n_seeds > 1:
        samples.append(np.arange(n_seeds))

    def statistic(*indices: np.ndarray, axis: int = -1) -> np.ndarray:
        # indices: resampled positions, (..., n) each; scipy broadcasts the samples' leading axes against each other
        units = indices[0] if n_units > 1 else np.zeros((1,), int)
        seeds = indices[-1] if n_seeds > 1 else np.zeros((1,), int)
        grid = d[seeds[..., :, None], units[..., None, :]]  # (..., seeds, units)
        return grid.mean(axis=(-2, -1))

    from scipy import stats

    rng = np.random.default_rng(seed)
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():  # a degenerate BCa interval is NaN: the percentile one is used then
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            result = stats.bootstrap(
                tuple(samples),
                statistic,
                n_resamples=n_resamples,
                vectorized=True,
                confidence_level=CONFIDENCE,
                method=method,
                rng=rng,
            )
        low, high = result.confidence_interval
        if math.isfinite(low) and math.isfinite(high):
            return Difference(mean, float(low), float(high), n_seeds, n_units, method.lower())
    return Difference(mean, math.nan, math.nan, n_seeds, n_units, "none")


def epochs_to_fraction(val_dsc: Sequence[float], fraction: float = 0.9) -> int:
    """The first epoch (1-based) at which ``val_dsc`` (one value per epoch) reaches ``fraction`` of its maximum."""
    values = np.asarray(val_dsc, np.float64)
    if values.size == 0:
        raise ValueError("no validation values")
    target = fraction * np.nanmax(values)
    return int(np.flatnonzero(values >= target)[0]) + 1


def late_gain(val_dsc: Sequence[float], fraction: float = 0.25) -> float:
    """How much the best value rose during the last ``fraction`` of the epochs: ``max(all) − max(before them)``
    (0 when the best came earlier). A flat curve gains little: the demo presets aim at under 0.01 (one point)."""
    values = np.asarray(val_dsc, np.float64)
    if values.size == 0:
        raise ValueError("no validation values")
    late = max(1, math.ceil(fraction * values.size))
    if late >= values.size:
        return float(np.nanmax(values) - values[0])
    return float(np.nanmax(values) - np.nanmax(values[:-late]))


def paired_epoch_difference(candidate: Sequence[int], reference: Sequence[int], *, seed: int = 0) -> Difference:
    """Mean over seeds of ``candidate − reference`` epochs (e.g. :func:`epochs_to_fraction` per seed), with a
    bootstrap interval over seeds when there are several."""
    c = np.asarray(candidate, np.float64).reshape(-1, 1)
    r = np.asarray(reference, np.float64).reshape(-1, 1)
    return paired_difference(c, r, seed=seed)


def per_volume(facts: pd.DataFrame, optimizer: str, loss: str, metric: str) -> np.ndarray:
    """``(seeds, volumes)``: the mean over foreground classes of ``metric`` per seed and test volume of one
    (optimizer, loss) of the test facts, in the runs' volume order (NaN where a class has no value)."""
    rows = facts[(facts["optimizer"] == optimizer) & (facts["loss"] == loss)]
    return rows[metric].to_numpy(np.float64).reshape(rows["seed"].nunique(), -1, rows["class"].nunique()).mean(-1)


def run_speeds(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per run (optimizer, loss, seed): ``epochs_to_90`` (:func:`epochs_to_fraction` of its validation DSC) and
    ``late_gain`` (:func:`late_gain`), from the epoch facts."""
    return epochs.groupby(["optimizer", "loss", "seed"], observed=True, sort=False)["val_dsc_fg"].agg(
        epochs_to_90=lambda v: epochs_to_fraction(v.to_numpy(), 0.9), late_gain=lambda v: late_gain(v.to_numpy())
    )


def paired_metric(
    facts: pd.DataFrame, optimizer: str, loss: str, reference: str, metric: str
) -> tuple[Difference | None, int]:
    """``loss − reference`` of the per-volume mean over foreground classes of any ``metric`` of the test facts
    (``"dsc"``, ``"hd95_mm"``, ``"assd_mm"``), paired by seed and test volume (:func:`per_volume`), over the volumes
    where every class has a value in every seed of both losses.

    Returns:
      ``(difference, volumes left out)``; the difference is ``None`` when no volume is left.
    """
    candidate, base = (per_volume(facts, optimizer, name, metric) for name in (loss, reference))
    keep = np.isfinite(candidate).all(0) & np.isfinite(base).all(0)
    difference = paired_difference(candidate[:, keep], base[:, keep]) if keep.any() else None
    return difference, int((~keep).sum())


def compare_losses(
    test: pd.DataFrame, epochs: pd.DataFrame, reference: str, losses: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Each loss of ``losses`` other than ``reference`` against it, per optimiser of the facts.

    Args:
      test: the test facts (:func:`~segmime_jax.paper.grid.facts.volume_facts`).
      epochs: the epoch facts (:func:`~segmime_jax.paper.grid.facts.epoch_facts`).
      reference: the reference loss (one of ``losses``).
      losses: the grid's losses, in order.

    Returns:
      ``{"<optimizer>/<loss>": {"optimizer", "loss", "reference", "test_all_dsc": Difference,
      "test_all_hd95_mm": Difference, "test_all_hd95_volumes_left_out": int, "epochs_to_90pct_best_val":
      Difference}}``: per-volume All-DSC (fraction) and All-HD95 (mm, the volumes where a class has no HD95 in
      either loss left out and counted; neither key when a run's distances were not measured), paired by seed
      and test volume; the epochs to 90 % of the best validation DSC, paired by seed.
    """
    speeds = run_speeds(epochs)["epochs_to_90"]
    comparisons: dict[str, dict[str, Any]] = {}
    for optimizer in test["optimizer"].cat.categories:
        base_epochs = speeds.loc[(optimizer, reference)].to_numpy()
        for loss in losses:
            if loss == reference:
                continue
            hd95: dict[str, Any] = {}
            if test[(test["optimizer"] == optimizer) & test["loss"].isin([loss, reference])]["measured"].all():
                difference, left_out = paired_metric(test, optimizer, loss, reference, "hd95_mm")
                hd95 = {"test_all_hd95_volumes_left_out": left_out}
                if difference is not None:
                    hd95["test_all_hd95_mm"] = difference
            comparisons[f"{optimizer}/{loss}"] = {
                "optimizer": optimizer,
                "loss": loss,
                "reference": reference,
                "test_all_dsc": paired_metric(test, optimizer, loss, reference, "dsc")[0],
                **hd95,
                "epochs_to_90pct_best_val": paired_epoch_difference(
                    speeds.loc[(optimizer, loss)].to_numpy(), base_epochs
                ),
            }
    return comparisons
