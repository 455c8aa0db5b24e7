"""Numbers for the losses of segmime_jax.losses (paper §2)."""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_onehot, random_probs

from segmime_jax import losses as L

# A tiny hand-computable case: one image, 4 pixels, K = 2; labels [0, 0, 1, 1].
S_HAND = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]], np.float32)[None]  # (1, 4, 2)
Y_HAND = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)[None]

ALL_LOSSES = ("ce", "dsc", "gdl", "mime", "nm", "surrogate")


def _inputs(seed: int = 0, shape=(3, 12, 12, 4), empty_classes=()):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return random_probs(k1, shape), random_onehot(k2, shape, empty_classes=empty_classes)


# ----------------------------------------------------------------------------------------------- hand values


def test_spec_numeric_case():
    """From MONAI's DiceLoss test table: loss 0.307577."""
    s = jnp.array([0.731059, 0.268941, 0.268941, 0.731059]).reshape(1, 4, 1)
    y = jnp.array([1.0, 0.0, 1.0, 1.0]).reshape(1, 4, 1)
    loss = L.dice_loss(s, y)
    chex.assert_type(loss, jnp.float32)
    chex.assert_shape(loss, ())
    np.testing.assert_allclose(loss, 0.307577, atol=1e-6)


def test_hand_values():
    ce = -(math.log(0.8) + math.log(0.6) + math.log(0.7) + math.log(0.9)) / 4
    np.testing.assert_allclose(L.cross_entropy(S_HAND, Y_HAND), ce, rtol=1e-6)
    np.testing.assert_allclose(ce, 0.2990011, rtol=1e-6)
    # Dice: class 0: I = 1.4, U = 3.8; class 1: I = 1.6, U = 4.2.
    np.testing.assert_allclose(L.dice_loss(S_HAND, Y_HAND), ((1 - 2.8 / 3.8) + (1 - 3.2 / 4.2)) / 2, rtol=1e-6)
    np.testing.assert_allclose(L.dice_loss(S_HAND, Y_HAND, classes=(1,)), 1 - 3.2 / 4.2, rtol=1e-6)
    # CE on class 1 only: -(log .7 + log .9) / 2.
    np.testing.assert_allclose(
        L.cross_entropy(S_HAND, Y_HAND, classes=(1,)), -(math.log(0.7) + math.log(0.9)) / 2, rtol=1e-6
    )
    # GDL: w = 1/4 for both classes: 1 - 2 (0.25 * 3.0) / (0.25 * 8.0) = 0.25.
    np.testing.assert_allclose(L.generalized_dice_loss(S_HAND, Y_HAND), 0.25, rtol=1e-6)
    # Mime: class 0: -1.9 * 1.4 + 0.1 * 0.4 = -2.62; class 1: -1.9 * 1.6 + 0.1 * 0.6 = -2.98; N = 8.
    np.testing.assert_allclose(L.mime_loss(S_HAND, Y_HAND), -5.6 / 8, rtol=1e-6)
    np.testing.assert_allclose(L.mime_loss(S_HAND, Y_HAND, normalize=False), -5.6, rtol=1e-6)
    np.testing.assert_allclose(
        L.mime_loss(S_HAND, Y_HAND, a=1.0, b=0.5, classes=(0,)), (-1.4 + 0.5 * 0.4) / 4, rtol=1e-6
    )
    np.testing.assert_allclose(L.negative_mime_loss(S_HAND, Y_HAND), -3.0 / 8, rtol=1e-6)
    np.testing.assert_allclose(L.negative_mime_loss(S_HAND, Y_HAND, normalize=False), -3.0, rtol=1e-6)
    # Surrogate value: per class -(2I/U)(Σy/U).
    sur = (-(2.8 / 3.8) * (2 / 3.8) - (3.2 / 4.2) * (2 / 4.2)) / 2
    np.testing.assert_allclose(L.dice_surrogate_loss(S_HAND, Y_HAND), sur, rtol=1e-6)
    np.testing.assert_allclose(sur, -0.3753117, rtol=1e-6)


def test_mime_per_class_weights():
    a = np.array([1.0, 3.0], np.float32)
    b = np.array([0.2, 0.0], np.float32)
    expected = (-1.0 * 1.4 + 0.2 * 0.4) + (-3.0 * 1.6 + 0.0)
    np.testing.assert_allclose(L.mime_loss(S_HAND, Y_HAND, a=a, b=b, normalize=False), expected, rtol=1e-6)
    # Per-class arrays are indexed by class label, also with a class subset.
    np.testing.assert_allclose(L.mime_loss(S_HAND, Y_HAND, a=a, b=b, classes=(1,), normalize=False), -4.8, rtol=1e-6)
    # Traced weights work under jit.
    jitted = jax.jit(lambda p, t, a, b: L.mime_loss(p, t, a=a, b=b, normalize=False))
    np.testing.assert_allclose(jitted(S_HAND, Y_HAND, a, b), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="per-class array of shape"):
        L.mime_loss(S_HAND, Y_HAND, a=np.ones(3))


def test_batch_dice_sums_over_images():
    s2 = np.concatenate([S_HAND, S_HAND[:, ::-1]], axis=0)
    y2 = np.concatenate([Y_HAND, np.eye(2, dtype=np.float32)[[0, 1, 1, 1]][None]], axis=0)
    inter = (y2 * s2).sum(axis=(0, 1))
    union = (y2 + s2).sum(axis=(0, 1))
    np.testing.assert_allclose(L.dice_loss(s2, y2, batch=True), np.mean(1 - 2 * inter / union), rtol=1e-6)
    per_image = 1 - 2 * (y2 * s2).sum(1) / (y2 + s2).sum(1)
    np.testing.assert_allclose(L.dice_loss(s2, y2), per_image.mean(), rtol=1e-6)
    assert not np.isclose(per_image.mean(), np.mean(1 - 2 * inter / union))


@pytest.mark.parametrize("shape", [(2, 16, 16, 2), (1, 6, 6, 4, 3)])
def test_perfect_and_worst_predictions(shape):
    _, y = _inputs(1, shape)
    k = shape[-1]
    np.testing.assert_allclose(L.cross_entropy(y, y), 0.0, atol=1e-6)
    np.testing.assert_allclose(L.dice_loss(y, y), 0.0, atol=1e-6)
    np.testing.assert_allclose(L.dice_loss(y, y, batch=True), 0.0, atol=1e-6)
    np.testing.assert_allclose(L.generalized_dice_loss(y, y), 0.0, atol=1e-6)
    # A perfect prediction: mime = -a |Ω| / (|Ω| K) per image; NM = -1/K.
    np.testing.assert_allclose(L.mime_loss(y, y), -1.9 / k, rtol=1e-6)
    np.testing.assert_allclose(L.negative_mime_loss(y, y), -1.0 / k, rtol=1e-6)
    np.testing.assert_allclose(L.dice_surrogate_loss(y, y), -0.5, rtol=1e-6)
    # Worst: all mass on wrong classes (each pixel predicts the next class).
    worst = jnp.roll(y, 1, axis=-1)
    np.testing.assert_allclose(L.cross_entropy(worst, y), -math.log(1e-10), rtol=1e-5)
    np.testing.assert_allclose(L.dice_loss(worst, y), 1.0, atol=1e-6)
    np.testing.assert_allclose(L.mime_loss(worst, y), 0.1 / k, rtol=1e-5)  # b on |Ω| wrong pixels of |Ω|K
    np.testing.assert_allclose(L.negative_mime_loss(worst, y), 0.0, atol=1e-7)
    np.testing.assert_allclose(L.dice_surrogate_loss(worst, y), 0.0, atol=1e-7)


def test_empty_classes_documented_values():
    p, y = _inputs(2, (2, 10, 10, 4), empty_classes=(3,))
    for name in ALL_LOSSES:
        value = L.LOSSES[name](p, y)
        assert np.isfinite(value), name
        grad = jax.grad(L.LOSSES[name])(p, y)
        assert np.all(np.isfinite(grad)), name
    # Empty in y but predicted by softmax: d = 1 - ε/(Σs + ε) ≈ 1.
    np.testing.assert_allclose(L.dice_loss(p, y, classes=(3,)), 1.0, atol=1e-6)
    # Empty in y and in s (one-hot prediction): d = 1 - ε/ε = 0; gradient finite (1/ε scaled).
    np.testing.assert_allclose(L.dice_loss(y, y, classes=(3,)), 0.0, atol=1e-7)
    assert np.all(np.isfinite(jax.grad(L.dice_loss)(y, y, classes=(3,))))
    # CE of a class nobody has: 0/1e-10 = 0.
    np.testing.assert_allclose(L.cross_entropy(p, y, classes=(3,)), 0.0, atol=1e-7)
    # GDL with all selected classes absent from y and s: 1 - 2ε/ε = -1 (reference behaviour).
    np.testing.assert_allclose(L.generalized_dice_loss(y, y, classes=(3,)), -1.0, atol=1e-6)


# --------------------------------------------------------------------------------------------------- masks


@pytest.mark.parametrize("name", ALL_LOSSES + ("dsc_batch",))
def test_mask_equals_dropping_images(name):
    p, y = _inputs(3, (3, 8, 8, 3))
    fn = functools.partial(L.dice_loss, batch=True) if name == "dsc_batch" else L.LOSSES[name]
    mask = jnp.array([1.0, 0.0, 1.0])
    kept = np.array([0, 2])
    np.testing.assert_allclose(fn(p, y, mask=mask), fn(p[kept], y[kept]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fn(p, y, mask=jnp.ones(3)), fn(p, y), rtol=1e-6, atol=1e-7)
    # Boolean masks work; garbage in a masked image, NaN included, does not leak in (value or gradient).
    for garbage in (p.at[1].set(0.5), p.at[1].set(jnp.nan)):
        np.testing.assert_allclose(fn(garbage, y, mask=mask.astype(bool)), fn(p[kept], y[kept]), rtol=1e-5, atol=1e-7)
        grad = jax.grad(lambda q, g=garbage: fn(g.at[0].set(q), y, mask=mask))(p[0])
        expected = jax.grad(lambda q: fn(p[kept].at[0].set(q), y[kept]))(p[0])
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-9)
    # Gradient on the masked image is zero.
    grad = jax.grad(lambda q: fn(q, y, mask=mask))(p)
    np.testing.assert_array_equal(grad[1], 0.0)
    # Everything masked: loss 0, no NaN.
    np.testing.assert_allclose(fn(p, y, mask=jnp.zeros(3)), 0.0, atol=1e-7)
    assert np.all(np.isfinite(jax.grad(lambda q: fn(q, y, mask=jnp.zeros(3)))(p)))


def test_mask_shape_checked():
    p, y = _inputs(3, (3, 8, 8, 3))
    with pytest.raises(ValueError, match=r"mask must have shape \(B,\)"):
        L.dice_loss(p, y, mask=jnp.ones(2))


# ----------------------------------------------------------------------------------------- jit, vmap, dtypes


class JitVmapTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_jit_equivalence(self):
        p, y = _inputs(4, (2, 8, 8, 4))
        mask = jnp.array([1.0, 0.0])
        for name in ALL_LOSSES:
            fn = functools.partial(L.LOSSES[name], classes=(1, 3))
            got = self.variant(fn)(p, y, mask=mask)
            chex.assert_type(got, jnp.float32)
            chex.assert_trees_all_close(got, fn(p[:1], y[:1]), rtol=1e-5, atol=1e-7)

    @chex.variants(with_jit=True, without_jit=True)
    def test_vmap_equivalence(self):
        p, y = _inputs(5, (3, 2, 6, 6, 3))  # 3 independent batches of 2 images
        for name in ALL_LOSSES:
            batched = self.variant(jax.vmap(L.LOSSES[name]))(p, y)
            looped = jnp.stack([L.LOSSES[name](p[i], y[i]) for i in range(3)])
            chex.assert_trees_all_close(batched, looped, rtol=1e-5, atol=1e-7)


def test_bfloat16_inputs_give_float32():
    p, y = _inputs(6, (2, 12, 12, 3))
    p16, y16 = p.astype(jnp.bfloat16), y.astype(jnp.bfloat16)
    for name in ALL_LOSSES:
        fn = L.LOSSES[name]
        got = fn(p16, y16)
        chex.assert_type(got, jnp.float32)
        # Same as the float32 loss of the bf16-rounded probabilities, and close to the float32 loss.
        np.testing.assert_allclose(got, fn(p16.astype(jnp.float32), y), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got, fn(p, y), rtol=2e-2, atol=2e-3)


# ---------------------------------------------------------------------------------------------- build_loss


def test_build_loss_parsing():
    p, y = _inputs(7, (2, 8, 8, 4))
    np.testing.assert_allclose(L.build_loss("ce")(p, y), L.cross_entropy(p, y))
    np.testing.assert_allclose(L.build_loss("dice")(p, y), L.dice_loss(p, y))
    combo = L.build_loss(" 1*ce + 0.5 * DSC ", classes=(1, 2, 3))
    np.testing.assert_allclose(
        combo(p, y), L.cross_entropy(p, y, classes=(1, 2, 3)) + 0.5 * L.dice_loss(p, y, classes=(1, 2, 3)), rtol=1e-6
    )
    # a/b go only to the mime, epsilon only to the Dice-type terms.
    mixed = L.build_loss("2e-1*mime+nm+ce+0.5*dsc", a=1.0, b=0.3, epsilon=1e-6)
    expected = (
        0.2 * L.mime_loss(p, y, a=1.0, b=0.3)
        + L.negative_mime_loss(p, y)
        + L.cross_entropy(p, y)
        + 0.5 * L.dice_loss(p, y, epsilon=1e-6)
    )
    np.testing.assert_allclose(mixed(p, y), expected, rtol=1e-6)
    mask = jnp.array([0.0, 1.0])
    np.testing.assert_allclose(combo(p, y, mask=mask), combo(p[1:], y[1:]), rtol=1e-6)
    np.testing.assert_allclose(L.build_loss("dsc", batch=True)(p, y), L.dice_loss(p, y, batch=True))
    assert set(L.LOSSES) == {"ce", "dsc", "gdl", "mime", "nm", "surrogate"}
    ws = L.weighted_sum((1.0, L.cross_entropy), (2.0, L.negative_mime_loss))
    np.testing.assert_allclose(ws(p, y), L.cross_entropy(p, y) + 2 * L.negative_mime_loss(p, y), rtol=1e-6)
    np.testing.assert_allclose(jax.jit(combo)(p, y), combo(p, y), rtol=1e-6)


@pytest.mark.parametrize(
    "spec, options, match",
    [
        ("foo", {}, "unknown loss 'foo'.*valid names"),
        ("ce+dcs", {}, "unknown loss 'dcs'"),
        ("ce+", {}, "cannot parse"),
        ("", {}, "empty loss spec"),
        ("ce*2", {}, "expected '\\+'"),
        ("-1*ce", {}, "cannot parse"),
        ("1**ce", {}, "cannot parse"),
        ("ce", {"a": 1.0}, r"unknown option\(s\) \['a'\].*valid options.*classes"),
        ("dsc", {"normalize": True}, "unknown option"),
        ("ce", {"mask": None}, "mask is not a build_loss option"),
    ],
)
def test_build_loss_errors(spec, options, match):
    with pytest.raises(ValueError, match=match):
        L.build_loss(spec, **options)


def test_input_errors():
    with pytest.raises(ValueError, match="same shape"):
        L.dice_loss(S_HAND, Y_HAND[..., :1])
    with pytest.raises(ValueError, match="out of range"):
        L.dice_loss(S_HAND, Y_HAND, classes=(2,))
    with pytest.raises(ValueError, match="duplicate"):
        L.cross_entropy(S_HAND, Y_HAND, classes=(1, 1))
    with pytest.raises(TypeError, match="static"):
        L.cross_entropy(S_HAND, Y_HAND, classes=jnp.array([1]))


# ------------------------------------------------------------------------------ mime_weights_from_frequencies


def test_mime_weights_from_frequencies():
    a, b = L.mime_weights_from_frequencies([0.25, 0.25, 0.25, 0.25])
    np.testing.assert_allclose(a, 1.9)
    np.testing.assert_allclose(b, 0.1)
    # Counts are normalised; a_k ∝ 1/f_k with mean 1.9, b_k = a_k / 19.
    a, b = L.mime_weights_from_frequencies([900, 50, 50])
    r = np.array([1 / 0.9, 20.0, 20.0])
    r = r / r.mean()
    np.testing.assert_allclose(a, 1.9 * r, rtol=1e-6)
    np.testing.assert_allclose(a, [0.15405, 2.77297, 2.77297], atol=1e-4)
    np.testing.assert_allclose(b, 0.1 * r, rtol=1e-6)
    np.testing.assert_allclose(a.mean(), 1.9, rtol=1e-6)
    assert a.dtype == np.float32 and a.shape == (3,)
    a0, b0 = L.mime_weights_from_frequencies([900, 50, 50], power=0.0)
    np.testing.assert_allclose(a0, 1.9)
    np.testing.assert_allclose(b0, 0.1)
    # Usable as mime weights.
    p, y = _inputs(8, (1, 6, 6, 3))
    assert np.isfinite(L.mime_loss(p, y, a=a, b=b))
    with pytest.raises(ValueError, match="frequency 0"):
        L.mime_weights_from_frequencies([0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        L.mime_weights_from_frequencies([0.5, -0.1])
    with pytest.raises(ValueError, match="1-D"):
        L.mime_weights_from_frequencies([[0.5, 0.5]])


def test_generalized_dice_absent_class_conventions():
    """Image 0 has classes 1 and 2, image 1 only class 1. The reference weight of an absent class is 1/ε² (its
    predicted mass dominates; alone, the image scores ≈1 with no useful gradient); MONAI's ("max") is the largest
    weight of the image's present classes; an image with no selected class present scores 0 (MONAI)."""
    y = jax.nn.one_hot(jnp.array([[[1, 1, 2, 0]], [[1, 1, 0, 0]]]), 3)
    s = jnp.array(
        [
            [[[0.2, 0.7, 0.1], [0.2, 0.6, 0.2], [0.1, 0.2, 0.7], [0.8, 0.1, 0.1]]],
            [[[0.1, 0.8, 0.1], [0.3, 0.5, 0.2], [0.6, 0.1, 0.3], [0.7, 0.1, 0.2]]],
        ]
    )
    sy, ss = y.sum((1, 2)), s.sum((1, 2))
    inter = (y * s).sum((1, 2))
    eps = 1e-10

    def gdl(w):
        return 1 - 2 * ((w * inter[:, 1:]).sum(-1) + eps) / ((w * (sy + ss)[:, 1:]).sum(-1) + eps)

    w_ref = 1 / (sy[:, 1:] + eps) ** 2
    w_max = jnp.where(sy[:, 1:] > 0, w_ref, jnp.max(jnp.where(sy[:, 1:] > 0, w_ref, 0), -1, keepdims=True))
    np.testing.assert_allclose(L.generalized_dice_loss(s, y, classes=(1, 2)), gdl(w_ref).mean(), rtol=1e-6)
    np.testing.assert_allclose(
        L.generalized_dice_loss(s, y, classes=(1, 2), absent="max"), gdl(w_max).mean(), rtol=1e-6
    )
    assert float(gdl(w_ref)[1]) == pytest.approx(1.0, abs=1e-6)  # the absent class's mass dominates image 1
    # classes=(2,): image 1 has no class 2 at all
    only_2 = L.generalized_dice_loss(s[1:], y[1:], classes=(2,))
    grad = jax.grad(lambda p: L.generalized_dice_loss(p, y[1:], classes=(2,)))(s[1:])
    assert float(only_2) == pytest.approx(1.0, abs=1e-6) and float(jnp.max(jnp.abs(grad))) < 1e-20
    assert float(L.generalized_dice_loss(s[1:], y[1:], classes=(2,), absent="max")) == 0.0
    with pytest.raises(ValueError, match="absent"):
        L.generalized_dice_loss(s, y, absent="monai")
