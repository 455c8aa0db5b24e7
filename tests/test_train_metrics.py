"""3D DSC and ClECE from sufficient statistics, against hand-computed cases."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_onehot, random_probs

from segmime_jax.train.metrics import (
    CalibrationStats,
    bin_index,
    calibration_counts,
    dice_counts,
    dice_from_counts,
    mean_foreground,
)


def test_dice_hand_case_with_absent_class():
    label = jnp.array([[[0, 1, 1], [0, 0, 1]]])
    pred = jnp.array([[[0, 1, 0], [0, 1, 1]]])
    counts = jax.device_get(dice_counts(pred, label, 3))
    chex.assert_shape(counts["intersection"], (1, 3))
    np.testing.assert_array_equal(counts["intersection"], [[2, 2, 0]])
    np.testing.assert_array_equal(counts["prediction"], [[3, 3, 0]])
    np.testing.assert_array_equal(counts["label"], [[3, 3, 0]])
    dsc = dice_from_counts(counts["intersection"][0], counts["prediction"][0], counts["label"][0])
    np.testing.assert_allclose(dsc, [4 / 6, 4 / 6, 1.0], rtol=1e-7)  # class 2 absent from both: 1
    assert mean_foreground(dsc) == pytest.approx((4 / 6 + 1) / 2)


def test_dice_is_3d_per_volume_and_ignores_padding():
    # one volume of two slices, plus a padded third slice (weight 0) full of wrong predictions
    label = jnp.array([[[1, 1], [0, 0]], [[0, 0], [0, 0]], [[1, 1], [1, 1]]])
    pred = jnp.array([[[1, 0], [0, 0]], [[0, 1], [0, 0]], [[0, 0], [0, 0]]])
    counts = jax.device_get(dice_counts(pred, label, 2, weights=jnp.array([1.0, 1.0, 0.0])))
    np.testing.assert_array_equal(counts["label"][2], [0, 0])
    volume = {k: v.sum(0) for k, v in counts.items()}
    # class 1: I = 1, |P| = 2, |G| = 2 over the volume → 0.5 (per-slice means would give (2/3 + 0)/2)
    dsc = dice_from_counts(volume["intersection"], volume["prediction"], volume["label"])
    np.testing.assert_allclose(dsc, [2 * 5 / (6 + 6), 0.5], rtol=1e-7)
    # a class predicted but absent from the ground truth scores ~0, not 1
    assert dice_from_counts(0, 5, 0) == pytest.approx(0.0, abs=1e-8)


def test_bin_index_edges():
    p = jnp.array([0.0, 1e-9, 0.05, 0.1, 0.5, 0.9, 0.99, 1.0])
    np.testing.assert_array_equal(bin_index(p), [0, 0, 0, 1, 7, 13, 14, 14])


def test_bin_index_is_exact_at_float32_edges():
    """Bin j is (j/15, (j+1)/15] for the float32 value itself: float32(j/15) lies above j/15 for some j (then
    it is in bin j) and below it for others (bin j-1); a float32 product p·15 would round them all to j."""
    from fractions import Fraction

    edges = np.array([np.float32(j / 15) for j in range(1, 15)])
    expected = [j if Fraction(float(e)) > Fraction(j, 15) else j - 1 for j, e in zip(range(1, 15), edges, strict=True)]
    np.testing.assert_array_equal(bin_index(jnp.asarray(edges)), expected)
    neighbours = np.concatenate([np.nextafter(edges, 0), np.nextafter(edges, 1)]).astype(np.float32)
    exact = [min(14, max(0, math.ceil(Fraction(float(p)) * 15) - 1)) for p in neighbours]
    np.testing.assert_array_equal(bin_index(jnp.asarray(neighbours)), exact)


def test_clece_of_a_probability_on_a_bin_edge():
    """Class-0 probabilities [float32(1/15), 0.05] with labels [0, 1]: the first is above 1/15 (bin 1), the
    second in bin 0, so ClECE_0 = (|0.0667 − 1| + |0.05 − 0|) / 2 = 0.49167 (0.44167 with both in bin 0)."""
    p0 = jnp.array([np.float32(1 / 15), 0.05], jnp.float32)
    probs = jnp.stack([p0, 1.0 - p0], -1)[None, None]
    onehot = jax.nn.one_hot(jnp.array([[[0, 1]]]), 2)
    stats = CalibrationStats.zeros(2)
    stats.add(jax.device_get(calibration_counts(probs, onehot)))
    assert stats.clece()[0] == pytest.approx((1 - float(np.float32(1 / 15)) + 0.05) / 2, rel=1e-6)


def test_clece_hand_case():
    # K = 2, one image of 4 pixels; p(class 1) = [0, 0.3, 0.3, 0.95], labels [0, 1, 0, 1]
    p1 = jnp.array([0.0, 0.3, 0.3, 0.95])
    probs = jnp.stack([1.0 - p1, p1], -1)[None, None]  # (1, 1, 4, 2)
    onehot = jax.nn.one_hot(jnp.array([[[0, 1, 0, 1]]]), 2)
    # a padded image of junk (weight 0) must not count
    probs = jnp.concatenate([probs, jnp.full_like(probs, 0.5)])
    onehot = jnp.concatenate([onehot, onehot[:, :, ::-1]])
    counts = jax.device_get(calibration_counts(probs, onehot, weights=jnp.array([1.0, 0.0])))
    chex.assert_shape(counts["count"], (2, 15))
    stats = CalibrationStats.zeros(2)
    stats.add(counts)
    assert stats.count.sum() == 8  # 4 pixels × 2 classes
    # class 1: bin 0 {0 | label 0}, bin 4 {0.3, 0.3 | 1 of 2}, bin 14 {0.95 | 1}
    #   ClECE = (|0.6 − 1| + |0.95 − 1|) / 4 = 0.1125
    # class 0: p = [1, 0.7, 0.7, 0.05] labels [1, 0, 1, 0]: bin 14 {1 | 1}, bin 10 {1.4 | 1}, bin 0 {0.05 | 0}
    np.testing.assert_allclose(stats.clece(), [0.1125, 0.1125], rtol=1e-6)
    rel = stats.reliability()
    assert rel["count"][1, 4] == 2 and rel["confidence"][1, 4] == pytest.approx(0.3)
    assert rel["accuracy"][1, 4] == pytest.approx(0.5)
    assert np.isnan(rel["confidence"][1, 3]) and np.isnan(rel["accuracy"][1, 3])


def test_calibration_counts_match_numpy(key):
    k1, k2 = jax.random.split(key)
    probs = random_probs(k1, (2, 8, 8, 3))
    onehot = random_onehot(k2, (2, 8, 8, 3), empty_classes=(2,))
    counts = jax.device_get(calibration_counts(probs, onehot))
    p, y = np.asarray(probs), np.asarray(onehot)
    bins = np.clip(np.ceil(p * 15).astype(int) - 1, 0, 14)
    for k in range(3):
        for j in range(15):
            sel = bins[..., k] == j
            assert counts["count"][k, j] == sel.sum()
            assert counts["label_sum"][k, j] == y[..., k][sel].sum()
            assert counts["prob_sum"][k, j] == pytest.approx(p[..., k][sel].sum(), rel=1e-5, abs=1e-6)
    stats = CalibrationStats.zeros(3)
    stats.add(counts)
    # class 2 never occurs: its ClECE is the mean probability it gets
    assert stats.clece()[2] == pytest.approx(p[..., 2].mean(), rel=1e-5)
