"""Numbers behind the mime study (docs/mime_study.md): why the mimes trail Dice in small demos."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_onehot

from segmime_jax import losses as L
from segmime_jax.paper.halo import eroded_dsc, halo_measures, working_pixel_mm
from segmime_jax.paper.mime_study import RIM_WIDTHS


def _logit_grad(loss, logits, target, **kwargs):
    return jax.grad(lambda z: loss(jax.nn.softmax(z, axis=-1), target, **kwargs))(logits)


def test_mime_on_every_channel_is_a_plus_b_times_nm_through_the_softmax():
    # Σ_k ω_k s_k = b − (a+b)·s_y per pixel: the multi-class mime is (a+b)·NM plus a constant, so with Adam
    # (invariant to a constant gradient scale, up to its ε) Mime and NM train the same network.
    shape = (2, 6, 6, 4)
    logits = jax.random.normal(jax.random.key(0), shape)
    target = random_onehot(jax.random.key(1), shape)
    mime = _logit_grad(L.mime_loss, logits, target, a=1.9, b=0.1)
    nm = _logit_grad(L.negative_mime_loss, logits, target)
    chex.assert_trees_all_close(mime, 2.0 * nm, rtol=1e-5, atol=1e-9)


def test_binary_foreground_mime_thresholds_at_b_over_a_plus_b():
    # On the foreground channel only, a pixel that is foreground with probability p contributes, in expectation,
    # (−a·p + b·(1−p))·s: the loss falls by predicting foreground wherever p > b/(a+b) (5 % for a=1.9, b=0.1).
    a, b = 1.9, 0.1
    for p, sign in ((0.04, 1.0), (0.06, -1.0), (0.5, -1.0)):
        probs = jnp.full((1, 1, 1, 2), 0.5)
        expected = p * jax.grad(lambda s: L.mime_loss(s, jnp.array([[[[0.0, 1.0]]]]), a=a, b=b, classes=(1,)))(
            probs
        ) + (1 - p) * jax.grad(lambda s: L.mime_loss(s, jnp.array([[[[1.0, 0.0]]]]), a=a, b=b, classes=(1,)))(probs)
        assert np.sign(float(expected[..., 1].squeeze())) == sign, p
    assert b / (a + b) == pytest.approx(0.05)


def test_missed_class_dice_pulls_it_up_nm_pushes_it_down():
    # A class the network has stopped predicting (its one pixel in 16 confidently called another class, so its
    # probability is equally small everywhere):
    # Dice's gradient off its ground truth is 2I/U² ≈ 0, so its logit bias is pulled up; NM (and so the mime)
    # pushes that logit down on every other pixel through the softmax, 15 pixels against 1.
    labels = np.zeros((1, 4, 4), np.int32)
    labels[0, 1, 1] = 3  # the missed class
    labels[0, 2:, :] = 1
    target = jax.nn.one_hot(labels, 4)
    called = jnp.where(labels == 3, 2, labels)  # the missed pixel is predicted as class 2
    logits = 4.0 * jax.nn.one_hot(called, 3)
    logits = jnp.concatenate([logits, jnp.full((1, 4, 4, 1), -4.0)], axis=-1)
    bias_grad = {
        name: float(_logit_grad(loss, logits, target)[..., 3].sum())
        for name, loss in (("dsc", L.dice_loss), ("nm", L.negative_mime_loss), ("mime", L.mime_loss))
    }
    assert bias_grad["dsc"] < 0  # descending the gradient raises the missed class's logits
    assert bias_grad["nm"] > 0 and bias_grad["mime"] > 0  # descending it lowers them further


def test_halo_of_a_one_pixel_dilation():
    reference = np.zeros((2, 12, 12), bool)
    reference[:, 4:8, 4:8] = True
    prediction = np.zeros_like(reference)
    prediction[:, 3:9, 3:9] = True
    m = halo_measures(prediction, reference, (4.0, 0.5, 0.5), working_pixel_mm=0.5)
    assert m.reference_voxels == 32
    assert m.fp_ratio == pytest.approx((36 - 16) / 16)
    assert m.fn_ratio == 0.0
    # 16 edge neighbours at one pixel and 4 corners at √2 pixels (the other slice is 4 mm away: farther)
    assert m.fp_distance_px == pytest.approx((16 + 4 * np.sqrt(2)) / 20)
    assert m.fp_distance_mm == pytest.approx(0.5 * m.fp_distance_px)
    assert (m.fp_median_px, m.band_fp_ratio) == (1.0, m.fp_ratio)
    far = prediction.copy()
    far[0, 11, 11] = True  # a lone false positive 4√2 pixels from the reference: outside the band
    m = halo_measures(far, reference, (4.0, 0.5, 0.5), working_pixel_mm=0.5)
    assert m.fp_ratio == pytest.approx(41 / 32) and m.band_fp_ratio == pytest.approx(40 / 32)


def test_peeling_a_one_pixel_rim_off_a_dilation_restores_the_reference():
    """An 8x8 square grown by two voxels all round, in two slices: peeling one working pixel (2 voxels of 0.5 mm at a
    1 mm working pixel) within each slice gives the reference back; half a pixel peels one voxel."""
    reference = np.zeros((2, 20, 20), bool)
    reference[:, 6:14, 6:14] = True
    prediction = np.zeros_like(reference)
    prediction[:, 4:16, 4:16] = True  # grown by 2 voxels = 1 working pixel all round
    dsc = eroded_dsc(prediction, reference, (4.0, 0.5, 0.5), working_pixel_mm=1.0, pixels=(0, 0.5, 1), slice_axis=0)
    assert dsc[0] == pytest.approx(2 * 64 / (144 + 64))
    assert dsc[1] == pytest.approx(2 * 64 / (100 + 64))  # one voxel peeled: 10x10 left
    assert dsc[2] == pytest.approx(1.0)


def test_halo_of_an_undersegmentation_and_of_nothing():
    reference = np.zeros((1, 8, 8), bool)
    reference[0, 2:6, 2:6] = True
    shrunk = np.zeros_like(reference)
    shrunk[0, 3:5, 3:5] = True
    m = halo_measures(shrunk, reference, (1.0, 1.0, 1.0), working_pixel_mm=1.0)
    assert (m.fp_ratio, m.fn_ratio) == (0.0, 0.75)
    assert np.isnan(m.fp_distance_px)
    empty = halo_measures(shrunk, np.zeros_like(reference), (1.0, 1.0, 1.0), working_pixel_mm=1.0)
    assert np.isnan(empty.fp_ratio) and empty.reference_voxels == 0
    with pytest.raises(ValueError, match="shape"):
        halo_measures(shrunk[0], reference, (1.0, 1.0), working_pixel_mm=1.0)


def test_working_pixel_size():
    # a 256×320 slice of 0.5 mm pixels stretched to 64×64: 2 mm and 2.5 mm, 2.25 mm on average
    assert working_pixel_mm((0.5, 0.5), (256, 320), (64, 64)) == pytest.approx(2.25)


@pytest.mark.slow
def test_mime_study_of_a_tiny_promise12_grid(tmp_path, capsys):
    """A two-loss PROMISE12 grid, then the study: a row per loss, the paired difference, a measured halo."""
    from segmime_jax.commands import mime_study, promise12

    out = tmp_path / "grid"
    common = ["--cache-dir", str(tmp_path / "cache"), "--no-compilation-cache", "--no-progress"]
    promise12.main(
        ["--synthetic-cases", "5", "--image-size", "32", "--epochs", "1", "--losses", "dsc,mime", "--out", str(out)]
        + ["--num-examples", "1"]
        + common
    )
    capsys.readouterr()
    (summary,) = mime_study.main(["--grids", str(out), "--figures", str(tmp_path / "figures")])
    printed = capsys.readouterr().out
    assert (summary.dataset, summary.image_size, summary.epochs, summary.seeds) == ("promise12", 32, 1, 1)
    assert set(summary.losses) == {"dsc", "mime"} and set(summary.dsc_differences) == {"mime"}
    mime = summary.losses["mime"]
    assert len(mime.halo) == summary.test_volumes and mime.epochs_to_90 == [1]
    assert len(mime.rim_dsc) == summary.test_volumes and all(len(r) == len(RIM_WIDTHS) for r in mime.rim_dsc)
    assert all(h.reference_voxels > 0 and np.isfinite(h.fp_ratio) for h in mime.halo)
    assert printed.count("| promise12 32², ") == 4  # a row per loss in the main table and in the rim table
    assert "| peel 0 px | peel 0.25 px |" in printed
    assert (tmp_path / "figures" / "gap_against_size.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not a finished grid"):
        mime_study.main(["--grids", str(tmp_path)])
