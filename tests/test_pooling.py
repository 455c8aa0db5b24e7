"""2×2 max-pooling with window indices and max-unpooling (segmime_jax.models.pooling)."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmime_jax.models.pooling import max_pool, max_pool_with_argmax, max_unpool

SHAPES = [(2, 8, 6, 3), (1, 4, 4, 1), (2, 2, 10, 5)]


def numpy_pool(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: scan each window in row-major order, keep the first strict maximum (PyTorch's rule)."""
    b, h, w, c = x.shape
    pooled = np.zeros((b, h // 2, w // 2, c), x.dtype)
    index = np.zeros((b, h // 2, w // 2, c), np.int64)
    for i in range(h // 2):
        for j in range(w // 2):
            window = [x[:, 2 * i + dy, 2 * j + dx, :] for dy in (0, 1) for dx in (0, 1)]
            best, arg = window[0].copy(), np.zeros((b, c), np.int64)
            for k in (1, 2, 3):
                better = window[k] > best
                best = np.where(better, window[k], best)
                arg = np.where(better, k, arg)
            pooled[:, i, j], index[:, i, j] = best, arg
    return pooled, index


def numpy_unpool(values: np.ndarray, index: np.ndarray) -> np.ndarray:
    b, h, w, c = values.shape
    out = np.zeros((b, 2 * h, 2 * w, c), values.dtype)
    for i in range(h):
        for j in range(w):
            for k in range(4):
                sel = index[:, i, j] == k
                out[:, 2 * i + k // 2, 2 * j + k % 2][sel] = values[:, i, j][sel]
    return out


def inputs(seed: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    """A continuous random input and an integer one in {0, 1, 2} (many ties inside the windows)."""
    key = jax.random.key(seed)
    return [
        np.asarray(jax.random.normal(key, shape)),
        np.asarray(jax.random.randint(key, shape, 0, 3)).astype(np.float32),
    ]


class PoolingVariantsTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_pool_first_maximum_and_unpool(self):
        pool = self.variant(max_pool_with_argmax)
        unpool = self.variant(max_unpool)
        for seed, shape in enumerate(SHAPES):
            for x in inputs(seed, shape):
                pooled, index = pool(jnp.asarray(x))
                expected_pooled, expected_index = numpy_pool(x)
                chex.assert_shape([pooled, index], (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))
                chex.assert_type([pooled, index], [jnp.float32, jnp.int8])
                np.testing.assert_array_equal(pooled, expected_pooled)
                np.testing.assert_array_equal(index, expected_index)
                values = np.asarray(pooled) * 3.0 - 1.0
                np.testing.assert_array_equal(unpool(jnp.asarray(values), index), numpy_unpool(values, expected_index))

    @chex.variants(with_jit=True, without_jit=True)
    def test_gradients_follow_the_recorded_positions(self):
        x = inputs(0, (2, 6, 4, 3))[1]  # heavily tied
        _, index = numpy_pool(x)
        weights = np.asarray(jax.random.normal(jax.random.key(1), (2, 3, 2, 3)))
        # d sum(w · pool(x)) / dx: w at the first maximum of each window, 0 elsewhere (no splitting on ties).
        grad_pool = self.variant(jax.grad(lambda x: jnp.sum(max_pool(x) * weights)))(jnp.asarray(x))
        np.testing.assert_array_equal(grad_pool, numpy_unpool(weights, index))
        # d sum(r · unpool(v, idx)) / dv: r read at the recorded positions.
        r = np.asarray(jax.random.normal(jax.random.key(2), x.shape))
        grad_unpool = self.variant(jax.grad(lambda v: jnp.sum(max_unpool(v, jnp.asarray(index, jnp.int8)) * r)))(
            jnp.asarray(weights)
        )
        expected = np.take_along_axis(
            r.reshape(2, 3, 2, 2, 2, 3).transpose(0, 1, 3, 5, 2, 4).reshape(2, 3, 2, 3, 4), index[..., None], axis=-1
        )[..., 0]
        np.testing.assert_allclose(grad_unpool, expected, rtol=0, atol=0)


def test_unpool_of_pool_keeps_each_window_maximum_only():
    x = inputs(3, (2, 8, 8, 4))[0]
    pooled, index = max_pool_with_argmax(jnp.asarray(x))
    back = np.asarray(max_unpool(pooled, index))
    assert (back != 0).sum() == pooled.size  # one non-zero per window
    np.testing.assert_array_equal(back[back != 0], x[back != 0])


def test_nan_is_the_window_maximum_as_in_pytorch():
    # windows (row-major a b / c d): NaN first, NaN last, two NaNs (the last one wins), none
    x = np.array([[np.nan, 1, 2, 3], [0, 1, 2, np.nan], [0, np.nan, np.nan, 5], [0, 1, 7, 3]], np.float32)
    image = x.reshape(4, 2, 2).transpose(1, 0, 2).reshape(1, 2, 8, 1)  # the four windows side by side
    pooled, index = max_pool_with_argmax(jnp.asarray(image))
    np.testing.assert_array_equal(np.asarray(index).ravel(), [0, 3, 2, 2])
    np.testing.assert_array_equal(np.isnan(np.asarray(pooled)).ravel(), [True, True, True, False])
    assert float(np.asarray(pooled).ravel()[3]) == 7.0


def test_pytorch_flat_index_formula():
    """The module docstring's conversion to PyTorch's flat indices: (2i + k//2)·W + 2j + k%2."""
    x = inputs(4, (1, 6, 8, 2))[0]
    _, index = max_pool_with_argmax(jnp.asarray(x))
    index = np.asarray(index).astype(np.int64)
    i, j = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    flat = (2 * i[None, :, :, None] + index // 2) * 8 + 2 * j[None, :, :, None] + index % 2
    planes = x.transpose(0, 3, 1, 2).reshape(1, 2, -1)  # (B, C, H·W)
    gathered = np.take_along_axis(planes, flat.transpose(0, 3, 1, 2).reshape(1, 2, -1), axis=-1)
    np.testing.assert_array_equal(gathered.reshape(1, 2, 3, 4).transpose(0, 2, 3, 1), numpy_pool(x)[0])


def test_vmap_and_bfloat16():
    x = jnp.asarray(inputs(5, (3, 2, 4, 4, 2))[0])
    pooled, index = jax.vmap(max_pool_with_argmax)(x)
    for n in range(3):
        p, i = max_pool_with_argmax(x[n])
        np.testing.assert_array_equal(pooled[n], p)
        np.testing.assert_array_equal(index[n], i)
    p16, _ = max_pool_with_argmax(x[0].astype(jnp.bfloat16))
    chex.assert_type(p16, jnp.bfloat16)
    chex.assert_type(max_unpool(p16, index[0]), jnp.bfloat16)


@pytest.mark.parametrize("shape", [(1, 5, 4, 1), (1, 4, 7, 2), (4, 4, 2)])
def test_pool_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)|even"):
        max_pool_with_argmax(jnp.zeros(shape))


def test_unpool_rejects_mismatched_or_float_indices():
    values = jnp.zeros((1, 2, 2, 3))
    with pytest.raises(ValueError, match="same"):
        max_unpool(values, jnp.zeros((1, 2, 3, 3), jnp.int8))
    with pytest.raises(ValueError, match="integer"):
        max_unpool(values, jnp.zeros((1, 2, 2, 3)))
