"""Evaluation metrics: 3D Dice per volume and class, class-wise expected calibration error (ClECE).

Both are computed from *sufficient statistics*: the jitted evaluation step reduces each batch to small
integer/float counts on the device (:func:`dice_counts`, :func:`calibration_counts`), and the host sums
them (per volume for Dice, over the whole set for calibration). Full probability maps never reach the host.

Conventions (paper §3.4, Eq. 1, and the reference code):
- DSC (paper Eq. 1) on argmax predictions, in 3D per volume (all its slices stacked):
  ``DSC_k = (2·|P_k ∩ G_k| + 1e-8) / (|P_k| + |G_k| + 1e-8)``; a class absent from both prediction and
  ground truth scores 1. Arrays keep every class, background at index 0; "All" is the mean over the
  foreground classes (1..K-1), computed separately (:func:`mean_foreground`).
- ClECE (Kull et al. 2019; Mukhoti et al. 2020): for each class k, the probability p_k of *every* pixel
  (background pixels included) goes into one of 15 equal-width bins of [0, 1], bin j covering
  ``(j/15, (j+1)/15]`` and p = 0 put in the first bin; ``ClECE_k = Σ_j (n_kj / N) · |conf_kj − acc_kj|`` with
  conf the mean p_k and acc the fraction of the bin's pixels labelled k, N the number of pixels. The
  per-class array includes the background class; the mean over classes is reported both with and
  without it by the caller. Padded slices (mask False) are excluded from every statistic.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools

import jax
import jax.numpy as jnp
import numpy as np

DICE_SMOOTH = 1e-8
NUM_BINS = 15


# --------------------------------------------------------------------------------------------- device side
def dice_counts(
    prediction: jax.Array, label: jax.Array, num_classes: int, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Per-slice Dice statistics.

    Args:
      prediction, label: integer class maps ``(B, H, W)``.
      num_classes: K.
      weights: optional ``(B,)`` mask (0 for padded slices, whose counts become 0).

    Returns:
      ``intersection`` |P_k ∩ G_k|, ``prediction`` |P_k|, ``label`` |G_k|: int32 arrays ``(B, K)``.
    """
    classes = jnp.arange(num_classes)
    p = prediction[..., None] == classes
    g = label[..., None] == classes
    axes = tuple(range(1, prediction.ndim))
    out = {
        "intersection": jnp.sum(p & g, axis=axes, dtype=jnp.int32),
        "prediction": jnp.sum(p, axis=axes, dtype=jnp.int32),
        "label": jnp.sum(g, axis=axes, dtype=jnp.int32),
    }
    if weights is not None:
        keep = (weights > 0)[:, None]
        out = {k: jnp.where(keep, v, 0) for k, v in out.items()}
    return out


@functools.cache
def bin_thresholds(num_bins: int = NUM_BINS) -> np.ndarray:
    """For each inner edge ``j/n`` (j = 1..n-1), the smallest float32 strictly greater than it (float32 ``(n-1,)``).

    A float32 probability ``p`` lies in ``(j/n, 1]`` exactly when ``p >= thresholds[j-1]``: comparing with these
    bins every float32 exactly, where ``ceil(p·n)`` in float32 rounds (``float32(1/15)`` is above 1/15, yet
    ``float32(1/15)·15`` rounds to 1 and would land in the first bin).
    """
    thresholds = []
    for j in range(1, num_bins):
        edge = fractions.Fraction(j, num_bins)
        t = np.float32(j / num_bins)
        while fractions.Fraction(float(t)) > edge:  # step down to the largest float32 <= edge ...
            t = np.nextafter(t, np.float32(0))
        while fractions.Fraction(float(t)) <= edge:  # ... then up to the smallest float32 > edge
            t = np.nextafter(t, np.float32(1))
        thresholds.append(t)
    return np.asarray(thresholds, np.float32)


def bin_index(probs: jax.Array, num_bins: int = NUM_BINS) -> jax.Array:
    """Bin of each probability: j for p in (j/n, (j+1)/n] (exactly, see :func:`bin_thresholds`), and 0 for p = 0
    (int32, same shape)."""
    thresholds = jnp.asarray(bin_thresholds(num_bins))
    return jnp.searchsorted(thresholds, probs.astype(jnp.float32), side="right", method="compare_all").astype(jnp.int32)


def calibration_counts(
    probs: jax.Array, onehot: jax.Array, *, num_bins: int = NUM_BINS, weights: jax.Array | None = None
) -> dict[str, jax.Array]:
    """Reliability statistics of a batch, per class and bin, summed over the batch.

    Args:
      probs: ``(B, ..., K)`` class probabilities.
      onehot: ``(B, ..., K)`` one-hot labels.
      num_bins: number of equal-width bins on [0, 1].
      weights: optional ``(B,)`` mask; slices with weight 0 are left out.

    Returns:
      ``count`` pixels per bin (int32), ``prob_sum`` Σ p_k (float32) and ``label_sum`` pixels labelled k
      (int32) per bin: arrays ``(K, num_bins)``.
    """
    probs = probs.astype(jnp.float32)
    bins = bin_index(probs, num_bins)
    valid = jnp.ones(probs.shape[:1], bool) if weights is None else weights > 0
    valid = valid.reshape(valid.shape + (1,) * (probs.ndim - 1))
    labelled = (onehot > 0.5) & valid
    axes = tuple(range(probs.ndim - 1))
    count, prob_sum, label_sum = [], [], []
    for j in range(num_bins):  # one fused reduction per bin; no (..., K, bins) intermediate
        in_bin = (bins == j) & valid
        count.append(jnp.sum(in_bin, axis=axes, dtype=jnp.int32))
        prob_sum.append(jnp.sum(jnp.where(in_bin, probs, 0.0), axis=axes))
        label_sum.append(jnp.sum(in_bin & labelled, axis=axes, dtype=jnp.int32))
    return {"count": jnp.stack(count, -1), "prob_sum": jnp.stack(prob_sum, -1), "label_sum": jnp.stack(label_sum, -1)}


# ----------------------------------------------------------------------------------------------- host side
def dice_from_counts(
    intersection: np.ndarray, prediction: np.ndarray, label: np.ndarray, smooth: float = DICE_SMOOTH
) -> np.ndarray:
    """``(2·I + smooth) / (|P| + |G| + smooth)`` elementwise (float64); 1 where a class is absent from both."""
    intersection = np.asarray(intersection, np.float64)
    denominator = np.asarray(prediction, np.float64) + np.asarray(label, np.float64)
    return (2.0 * intersection + smooth) / (denominator + smooth)


def mean_foreground(dsc: np.ndarray) -> np.ndarray:
    """Mean over the foreground classes 1..K-1 (last axis); for K = 1 the only class."""
    dsc = np.asarray(dsc, np.float64)
    return dsc.mean(-1) if dsc.shape[-1] == 1 else dsc[..., 1:].mean(-1)


@dataclasses.dataclass
class CalibrationStats:
    """Running sums of :func:`calibration_counts` (float64/int64 on the host)."""

    count: np.ndarray
    prob_sum: np.ndarray
    label_sum: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int, num_bins: int = NUM_BINS) -> CalibrationStats:
        shape = (num_classes, num_bins)
        return cls(np.zeros(shape, np.int64), np.zeros(shape, np.float64), np.zeros(shape, np.int64))

    def add(self, counts: dict[str, np.ndarray]) -> None:
        """Add the statistics of one batch (the output of :func:`calibration_counts`, on host)."""
        self.count += np.asarray(counts["count"], np.int64)
        self.prob_sum += np.asarray(counts["prob_sum"], np.float64)
        self.label_sum += np.asarray(counts["label_sum"], np.int64)

    def reliability(self) -> dict[str, np.ndarray]:
        """``confidence`` (mean p_k), ``accuracy`` (fraction labelled k) and ``count`` per class and bin.

        Empty bins have NaN confidence and accuracy.
        """
        n = self.count.astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = np.where(n > 0, self.prob_sum / n, np.nan)
            accuracy = np.where(n > 0, self.label_sum / n, np.nan)
        return {"confidence": confidence, "accuracy": accuracy, "count": self.count.copy()}

    def clece(self) -> np.ndarray:
        """Class-wise expected calibration error per class, ``(K,)`` (NaN for a class with no pixels)."""
        n = self.count.astype(np.float64)
        total = n.sum(-1)
        gap = np.abs(self.prob_sum - self.label_sum)  # = n · |conf − acc|
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total > 0, gap.sum(-1) / total, np.nan)
