"""Numbers for segmime_jax.gradients: Eq. 5-7 (Dice), Eq. 8 (mime), Eq. 10 (NM), CE, dynamic range."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import random_onehot, random_probs

from segmime_jax import gradients as G
from segmime_jax import losses as L

# (shape, classes, empty_classes): 2D and 3D spatial, K = 2..5, class subsets, empty classes.
CASES = [
    ((2, 16, 16, 2), None, ()),
    ((2, 16, 16, 3), (1, 2), ()),
    ((2, 16, 16, 4), None, (2,)),
    ((1, 16, 16, 5), (0, 3, 4), (4,)),
    ((2, 6, 6, 4, 3), None, ()),
    ((1, 6, 6, 4, 4), (3, 1), (1,)),
]


def _inputs(seed, shape, empty_classes=(), temperature=1.0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    return random_probs(k1, shape, temperature=temperature), random_onehot(k2, shape, empty_classes=empty_classes)


def _reference_dice_values(p, y, classes, scale):
    """float64 numpy: the two values of Eq. 6 per (image, class), times the averaging."""
    p64, y64 = np.asarray(p, np.float64), np.asarray(y, np.float64)
    idx = list(range(p.shape[-1])) if classes is None else list(classes)
    axes = tuple(range(1, p.ndim - 1))
    inter = (p64 * y64).sum(axes)[:, idx]
    union = (p64 + y64).sum(axes)[:, idx]
    return -2 * (union - inter) / union**2 * scale, 2 * inter / union**2 * scale, union


@pytest.mark.parametrize("shape, classes, empty", CASES)
def test_autodiff_matches_closed_form_dice(shape, classes, empty):
    for seed in range(3):
        p, y = _inputs(seed, shape, empty, temperature=[0.3, 1.0, 3.0][seed])
        mask = jnp.ones(shape[0]).at[0].set(0.0) if shape[0] > 1 and seed == 1 else None
        for batch in (False, True):
            auto = G.loss_gradient(L.dice_loss, p, y, classes=classes, batch=batch, mask=mask)
            closed = G.dice_gradient(p, y, classes=classes, batch=batch, mask=mask)
            chex.assert_type(closed, jnp.float32)
            chex.assert_shape(closed, shape)
            scale = float(jnp.max(jnp.abs(auto)))
            np.testing.assert_allclose(closed, auto, rtol=1e-5, atol=1e-6 * scale)
        # The surrogate has exactly the Dice gradient.
        surrogate = G.loss_gradient(L.dice_surrogate_loss, p, y, classes=classes, mask=mask)
        np.testing.assert_allclose(
            surrogate,
            G.dice_gradient(p, y, classes=classes, mask=mask),
            rtol=1e-5,
            atol=1e-6 * float(jnp.max(jnp.abs(surrogate))),
        )
        # Unselected classes get exactly zero.
        if classes is not None:
            others = [k for k in range(shape[-1]) if k not in classes]
            np.testing.assert_array_equal(np.asarray(auto)[..., others], 0.0)
            np.testing.assert_array_equal(np.asarray(closed)[..., others], 0.0)


@pytest.mark.parametrize("shape, classes, empty", CASES[:4])
def test_two_values_and_bound(shape, classes, empty):
    p, y = _inputs(11, shape, empty)
    num_selected = shape[-1] if classes is None else len(classes)
    scale = 1.0 / (shape[0] * num_selected)
    fg_ref, bg_ref, union = _reference_dice_values(p, y, classes, scale)
    grad = np.asarray(G.loss_gradient(L.dice_loss, p, y, classes=classes))
    fg_val, bg_val = G.dice_gradient_values(p, y, classes=classes)
    np.testing.assert_allclose(fg_val, fg_ref, rtol=1e-5)
    np.testing.assert_allclose(bg_val, bg_ref, rtol=1e-5, atol=1e-12)
    idx = list(range(shape[-1])) if classes is None else list(classes)
    yn = np.asarray(y) > 0.5
    for b in range(shape[0]):
        for j, k in enumerate(idx):
            on, off = grad[b][..., k][yn[b][..., k]], grad[b][..., k][~yn[b][..., k]]
            # Exactly two values per (image, class): one on the ground truth, one elsewhere.
            assert np.unique(off).size == 1
            np.testing.assert_allclose(off, bg_ref[b, j], rtol=1e-5, atol=1e-12)
            if k in empty:
                assert on.size == 0
            else:
                assert np.unique(on).size == 1
                np.testing.assert_allclose(on, fg_ref[b, j], rtol=1e-5)
                assert np.all(on < 0) and np.all(off > 0)
    # Eq. 7: |grad| <= 2/U, scaled by the averaging, everywhere.
    bound = np.asarray(G.dice_gradient_bound(p, y, classes=classes))
    chex.assert_shape(bound, (shape[0], shape[-1]))
    np.testing.assert_allclose(bound[:, idx], 2 / union * scale, rtol=1e-5)
    broadcast = bound.reshape((shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],))
    assert np.all(np.abs(grad) <= broadcast * (1 + 1e-6))


def test_spec_numeric_gradient():
    s = jnp.array([0.731059, 0.268941, 0.268941, 0.731059]).reshape(1, 4, 1)
    y = jnp.array([1.0, 0.0, 1.0, 1.0]).reshape(1, 4, 1)
    expected = np.array([-0.261515, 0.138485, -0.261515, -0.261515])
    np.testing.assert_allclose(G.loss_gradient(L.dice_loss, s, y).ravel(), expected, atol=1e-6)
    np.testing.assert_allclose(G.dice_gradient(s, y).ravel(), expected, atol=1e-6)
    inter, union = G.intersection_union(s, y)
    np.testing.assert_allclose(inter, [[1.731059]], rtol=1e-6)
    np.testing.assert_allclose(union, [[5.0]], rtol=1e-6)
    np.testing.assert_allclose(G.dice_gradient_bound(s, y), [[0.4]], rtol=1e-6)


def test_intersection_union_classes_order():
    p, y = _inputs(3, (2, 8, 8, 4))
    inter, union = G.intersection_union(p, y, classes=(3, 1))
    np.testing.assert_allclose(inter, np.sum(np.asarray(p * y), axis=(1, 2))[:, [3, 1]], rtol=1e-6)
    np.testing.assert_allclose(union, np.sum(np.asarray(p + y), axis=(1, 2))[:, [3, 1]], rtol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_mime_and_negative_mime_gradients(normalize):
    shape = (2, 8, 8, 3)
    p, y = _inputs(4, shape)
    n = 2 * 8 * 8 * 3 if normalize else 1
    yn = np.asarray(y) > 0.5
    mime = np.asarray(G.loss_gradient(L.mime_loss, p, y, normalize=normalize))
    np.testing.assert_allclose(mime[yn], -1.9 / n, rtol=1e-6)
    np.testing.assert_allclose(mime[~yn], 0.1 / n, rtol=1e-6)
    np.testing.assert_allclose(mime, G.mime_gradient(p, y, normalize=normalize), rtol=1e-6)
    nm = np.asarray(G.loss_gradient(L.negative_mime_loss, p, y, normalize=normalize))
    np.testing.assert_allclose(nm[yn], -1.0 / n, rtol=1e-6)
    np.testing.assert_array_equal(nm[~yn], 0.0)
    np.testing.assert_allclose(nm, G.negative_mime_gradient(p, y, normalize=normalize), rtol=1e-6)
    # Per-class weights, class subset and mask: N counts selected classes of unmasked images.
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.25, 0.125])
    mask = jnp.array([0.0, 1.0])
    g = np.asarray(G.loss_gradient(L.mime_loss, p, y, a=a, b=b, classes=(0, 2), normalize=normalize, mask=mask))
    n_sub = 8 * 8 * 2 if normalize else 1
    np.testing.assert_array_equal(g[0], 0.0)
    np.testing.assert_array_equal(g[1][..., 1], 0.0)
    for k in (0, 2):
        np.testing.assert_allclose(g[1][..., k][yn[1][..., k]], -a[k] / n_sub, rtol=1e-6)
        np.testing.assert_allclose(g[1][..., k][~yn[1][..., k]], b[k] / n_sub, rtol=1e-6)
    np.testing.assert_allclose(
        g, G.mime_gradient(p, y, a=a, b=b, classes=(0, 2), normalize=normalize, mask=mask), rtol=1e-6
    )


def test_cross_entropy_gradient():
    p, y = _inputs(5, (2, 8, 8, 4), temperature=0.5)
    for classes, mask in [(None, None), ((1, 2), jnp.array([1.0, 0.0]))]:
        auto = np.asarray(G.loss_gradient(L.cross_entropy, p, y, classes=classes, mask=mask))
        idx = list(range(4)) if classes is None else list(classes)
        m = np.ones(2) if mask is None else np.asarray(mask)
        y64, p64 = np.asarray(y, np.float64), np.asarray(p, np.float64)
        normaliser = (m[:, None, None, None] * y64[..., idx]).sum() + 1e-10
        expected = np.zeros_like(y64)
        expected[..., idx] = -m[:, None, None, None] * y64[..., idx] / (p64[..., idx] + 1e-10) / normaliser
        np.testing.assert_allclose(auto, expected, rtol=1e-5)
        np.testing.assert_allclose(G.cross_entropy_gradient(p, y, classes=classes, mask=mask), expected, rtol=1e-5)
        np.testing.assert_array_equal(auto[np.asarray(y) == 0], 0.0)


def test_generalized_dice_gradient():
    p, y = _inputs(6, (2, 10, 10, 3))
    mask = jnp.array([1.0, 0.5])
    auto = G.loss_gradient(L.generalized_dice_loss, p, y, mask=mask)
    closed = G.generalized_dice_gradient(p, y, mask=mask)
    np.testing.assert_allclose(closed, auto, rtol=1e-5, atol=1e-6 * float(jnp.max(jnp.abs(auto))))
    summary = G.gradient_values(auto[:1], y[:1])
    assert all(s.foreground_distinct == 1 and s.background_distinct == 1 for s in summary)


def _reference_gdl_gradient(p, y, eps=1e-10):
    """float64 numpy: c_b w_k (A_b − 2y D_b)/D_b², one image weight each."""
    p64, y64 = np.asarray(p, np.float64), np.asarray(y, np.float64)
    axes = tuple(range(1, p.ndim - 1))
    w = 1.0 / (y64.sum(axes) + eps) ** 2
    a = 2.0 * ((w * (p64 * y64).sum(axes)).sum(-1) + eps)
    d = (w * (y64.sum(axes) + p64.sum(axes))).sum(-1) + eps
    c = 1.0 / p.shape[0]
    per_bk = (c * w / d[:, None] ** 2)[:, None, None, :]
    return per_bk * (a[:, None, None, None] - 2.0 * y64 * d[:, None, None, None])


def test_generalized_dice_gradient_empty_class():
    # A class absent from y has w = 1e20: D ~ 1e21 and D² would overflow float32.
    p, y = _inputs(16, (2, 10, 10, 4), empty_classes=(3,))
    closed = np.asarray(G.generalized_dice_gradient(p, y))
    reference = _reference_gdl_gradient(p, y)
    assert np.all(np.isfinite(closed))
    np.testing.assert_allclose(closed, reference, rtol=1e-4, atol=1e-6 * np.max(np.abs(reference)))
    # Selected class absent from both y and s: the gradient is huge (c/ε), finite, and what jax.grad gives.
    only_y = jnp.zeros_like(y).at[..., 0].set(1.0)
    auto = G.loss_gradient(L.generalized_dice_loss, only_y, only_y, classes=(3,))
    closed = G.generalized_dice_gradient(only_y, only_y, classes=(3,))
    assert np.all(np.isfinite(closed))
    np.testing.assert_allclose(closed, auto, rtol=1e-5)


def test_closed_forms_ignore_masked_nan():
    p, y = _inputs(17, (2, 8, 8, 3))
    bad = p.at[1].set(jnp.nan)
    mask = jnp.array([1.0, 0.0])
    for closed in (G.dice_gradient, G.cross_entropy_gradient, G.mime_gradient, G.generalized_dice_gradient):
        got = closed(bad, y, mask=mask)
        np.testing.assert_array_equal(got[1], 0.0)
        np.testing.assert_allclose(got[:1], closed(p[:1], y[:1]), rtol=1e-5, atol=1e-9)


class JitVmapTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_dice_gradient_variants(self):
        p, y = _inputs(7, (2, 8, 8, 4))
        fn = self.variant(functools.partial(G.dice_gradient, classes=(1, 3)))
        chex.assert_trees_all_close(fn(p, y), G.loss_gradient(L.dice_loss, p, y, classes=(1, 3)), rtol=1e-5, atol=1e-9)
        bound = self.variant(G.dice_gradient_bound)(p, y)
        chex.assert_trees_all_close(bound, G.dice_gradient_bound(p, y), rtol=1e-6)
        dr = self.variant(functools.partial(G.dynamic_range_db, convention="amplitude"))(fn(p, y))
        chex.assert_trees_all_close(dr, G.dynamic_range_db(fn(p, y), convention="amplitude"), rtol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    def test_vmap(self):
        p, y = _inputs(8, (3, 2, 6, 6, 3))
        batched = self.variant(jax.vmap(G.dice_gradient))(p, y)
        looped = jnp.stack([G.dice_gradient(p[i], y[i]) for i in range(3)])
        chex.assert_trees_all_close(batched, looped, rtol=1e-6, atol=1e-9)


def test_bfloat16_gradient_is_float32():
    p, y = _inputs(9, (2, 12, 12, 3))
    p16 = p.astype(jnp.bfloat16)
    closed = G.dice_gradient(p16, y.astype(jnp.bfloat16))
    chex.assert_type(closed, jnp.float32)
    auto = G.loss_gradient(L.dice_loss, p16, y)
    chex.assert_type(auto, jnp.float32)
    np.testing.assert_allclose(closed, auto, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(closed, G.dice_gradient(p, y), rtol=2e-2)


def test_dynamic_range_db():
    g = jnp.array([[-2.0, 1.0, 0.0, -0.0], [1.5, 1.0, 0.0, 0.0]])
    np.testing.assert_allclose(G.dynamic_range_db(g), 10 * np.log10(2.0), rtol=1e-6)  # 3.0103 dB
    np.testing.assert_allclose(G.dynamic_range_db(g, convention="amplitude"), 20 * np.log10(2.0), rtol=1e-6)
    np.testing.assert_allclose(G.dynamic_range_db(g, mask=jnp.array([[False], [True]])), 10 * np.log10(1.5), rtol=1e-6)
    np.testing.assert_allclose(G.dynamic_range_db(jnp.zeros((3, 3))), 0.0)
    np.testing.assert_allclose(G.dynamic_range_db(jnp.array([1.0, 1e-9])), 90.0, rtol=1e-5)
    np.testing.assert_allclose(
        G.dynamic_range_db(jnp.array([1.0, 0.5, 1e-9]), relative_floor=1e-6), 10 * np.log10(2.0), rtol=1e-6
    )
    with pytest.raises(ValueError, match="convention"):
        G.dynamic_range_db(g, convention="dB")
    # a NaN in the map is not silently a 0 dB range
    assert np.isnan(G.dynamic_range_db(jnp.array([1.0, 0.5, jnp.nan])))
    np.testing.assert_allclose(
        G.dynamic_range_db(jnp.array([1.0, 0.5, jnp.nan]), mask=jnp.array([1, 1, 0])), 10 * np.log10(2.0), rtol=1e-6
    )
    # Dice: the range is the fg/bg ratio (U - I)/I of Eq. 6, whatever the image.
    p, y = _inputs(10, (1, 16, 16, 2), temperature=0.3)
    inter, union = G.intersection_union(p, y, classes=(1,))
    expected = 10 * np.log10(float((union - inter)[0, 0] / inter[0, 0]))
    dr = G.dynamic_range_db(G.dice_gradient(p, y, classes=(1,)))
    np.testing.assert_allclose(dr, abs(expected), rtol=1e-4)


def test_gradient_values_summary():
    p, y = _inputs(12, (1, 8, 8, 3))
    summaries = G.gradient_values(G.dice_gradient(p, y), y)
    assert [s.class_index for s in summaries] == [0, 1, 2]
    fg, bg = G.dice_gradient_values(p, y)
    for s in summaries:
        assert s.foreground_distinct == 1 and s.background_distinct == 1
        assert s.foreground_pixels + s.background_pixels == 64
        np.testing.assert_allclose(s.foreground_values, [fg[0, s.class_index]], rtol=1e-6)
        np.testing.assert_allclose(s.background_values, [bg[0, s.class_index]], rtol=1e-6)
    ce = G.gradient_values(G.cross_entropy_gradient(p, y), y, classes=(1,), max_values=4)[0]
    assert ce.foreground_distinct == ce.foreground_pixels > 4 and ce.foreground_values == ()
    assert ce.background_distinct == 1 and ce.background_values == (0.0,)
    d = ce.to_dict()
    assert d["background_values"] == [0.0] and d["class_index"] == 1
