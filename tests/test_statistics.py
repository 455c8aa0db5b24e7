"""Paired comparisons and convergence speed (segmime_jax.paper.grid.statistics) on constructed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from segmime_jax.paper.grid import statistics as S


def test_a_constant_shift_is_its_own_interval():
    reference = np.linspace(0.5, 0.9, 12)
    d = S.paired_difference(reference + 0.02, reference)
    assert d.mean == pytest.approx(0.02) and d.low == pytest.approx(0.02) and d.high == pytest.approx(0.02)
    assert d.format() == "+2.0 points [+2.0, +2.0]"
    few = S.paired_difference(np.array([0.8, 0.7, 0.9]), np.array([0.75, 0.72, 0.8]))
    assert few.rough and few.format().endswith("(rough: few samples)")


def test_volume_bootstrap_matches_the_normal_interval():
    """Differences of ±σ around 0.01 on many volumes: the interval is the mean ± 1.96 σ/√n (CLT)."""
    rng = np.random.default_rng(0)
    reference = rng.random(400)
    noise = rng.normal(0.0, 0.05, 400)
    d = S.paired_difference(reference + 0.01 + noise, reference)
    half = 1.96 * (0.01 + noise).std(ddof=1) / math.sqrt(400)
    assert d.mean == pytest.approx(0.01 + noise.mean(), abs=1e-12)
    assert d.low == pytest.approx(d.mean - half, abs=0.2 * half)
    assert d.high == pytest.approx(d.mean + half, abs=0.2 * half)
    assert (d.n_seeds, d.n_units, d.method) == (1, 400, "bca")


def test_seeds_widen_the_interval():
    """d[s, v] = seed effect + volume effect: resampling seeds too covers the seed-to-seed spread."""
    rng = np.random.default_rng(1)
    seed_effect = np.array([-0.03, 0.0, 0.03, 0.06, -0.06])[:, None]
    volume_effect = rng.normal(0.0, 0.005, (1, 16))
    d = 0.01 + seed_effect + volume_effect
    crossed = S.paired_difference(d, np.zeros_like(d))
    one_seed = S.paired_difference(d[2:3], np.zeros_like(d[2:3]))
    assert crossed.n_seeds == 5 and crossed.n_units == 16
    assert crossed.low < 0.01 < crossed.high
    assert crossed.high - crossed.low > 5 * (one_seed.high - one_seed.low)
    assert crossed.to_json()["ci95"] == [pytest.approx(crossed.low), pytest.approx(crossed.high)]


def test_one_value_has_no_interval_and_bad_input_is_refused():
    d = S.paired_epoch_difference([5], [8])
    assert d.mean == -3 and math.isnan(d.low) and "no interval" in d.format(scale=1, unit="epochs")
    assert d.to_json()["ci95"] == [None, None]
    with pytest.raises(ValueError, match="finite"):
        S.paired_difference(np.array([np.nan, 1.0]), np.zeros(2))


def test_epochs_to_fraction_and_late_gain():
    curve = [0.1, 0.5, 0.85, 0.9, 0.95, 0.93, 0.94, 0.955]
    assert S.epochs_to_fraction(curve) == 4  # first value >= 0.9 * 0.955
    assert S.epochs_to_fraction(curve, 0.5) == 2
    assert S.late_gain(curve) == pytest.approx(0.005)  # best 0.955 against 0.95 before the last two epochs
    assert S.late_gain([0.5, 0.6, 0.7, 0.8]) == pytest.approx(0.1)
    paired = S.paired_epoch_difference([5, 7, 6], [8, 9, 9])
    assert paired.mean == pytest.approx(-8 / 3) and paired.low <= paired.mean <= paired.high
