"""2×2 max-pooling that records where each maximum came from, and the matching max-unpooling.

These are the JAX counterparts of PyTorch's ``nn.MaxPool2d(2, return_indices=True)`` and
``nn.MaxUnpool2d(2)`` used by ENet, for channels-last arrays ``(B, H, W, C)``.

Instead of PyTorch's flat indices into the ``H×W`` plane, the recorded position is the *window index*
``k = 2·dy + dx`` in ``{0, 1, 2, 3}`` (row-major order inside each 2×2 window), stored as ``int8``. The
flat PyTorch index of output pixel ``(i, j)`` is ``(2i + k // 2)·W + 2j + k % 2``.

Both operations are written with reshapes, comparisons and selects only (no gather, no scatter), so
XLA fuses each of them, and each one's backward pass, into a single elementwise loop on CPU and GPU:

* ``max_pool_with_argmax`` keeps the *first* maximum of each window in row-major order on ties (as
  PyTorch does) and its gradient flows only to that position (not split between tied entries, as
  ``jnp.max`` would do);
* ``max_unpool`` writes each value back at its recorded position and zeros elsewhere; its gradient
  with respect to the values is the upstream gradient read at the recorded positions.

A NaN in a window is its maximum, as in PyTorch (whose CPU kernel takes ``val > max || isnan(val)``, so the
*last* NaN of the window in row-major order): a diverging branch shows up as NaN, it is not pooled away.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["max_pool", "max_pool_with_argmax", "max_unpool"]

# Window offsets (dy, dx) in row-major order: k = 2*dy + dx.
_WINDOW = ((0, 0), (0, 1), (1, 0), (1, 1))


def _check_even(x: jax.Array, name: str) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} expects a (B, H, W, C) array, got shape {tuple(x.shape)}")
    if x.shape[1] % 2 or x.shape[2] % 2:
        raise ValueError(f"{name} needs even H and W for 2×2 windows, got shape {tuple(x.shape)} (B, H, W, C)")


def _windows(x: jax.Array) -> tuple[jax.Array, ...]:
    """The four members of every 2×2 window, each (B, H/2, W/2, C), in row-major window order."""
    b, h, w, c = x.shape
    x6 = x.reshape(b, h // 2, 2, w // 2, 2, c)
    return tuple(x6[:, :, dy, :, dx, :] for dy, dx in _WINDOW)


def _select_window(parts: tuple[jax.Array, ...], indices: jax.Array) -> jax.Array:
    """``parts[indices]`` element-wise, as a chain of selects (fused by XLA)."""
    out = parts[3]
    for k in (2, 1, 0):
        out = jnp.where(indices == k, parts[k], out)
    return out


def _unpool(values: jax.Array, indices: jax.Array) -> jax.Array:
    b, h, w, c = values.shape
    grid = jnp.arange(4, dtype=indices.dtype).reshape(1, 1, 2, 1, 2, 1)
    out = jnp.where(
        indices[:, :, None, :, None, :] == grid, values[:, :, None, :, None, :], jnp.zeros((), values.dtype)
    )
    return out.reshape(b, 2 * h, 2 * w, c)


def _argmax_window(parts: tuple[jax.Array, ...]) -> jax.Array:
    a, b, c, d = parts
    m = jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))
    idx = jnp.where(c == m, jnp.int8(2), jnp.int8(3))
    idx = jnp.where(b == m, jnp.int8(1), idx)
    idx = jnp.where(a == m, jnp.int8(0), idx)
    for position, part in enumerate(parts):  # NaN wins, the last one as in PyTorch (m is NaN there)
        idx = jnp.where(jnp.isnan(part), jnp.int8(position), idx)
    return idx


@jax.custom_vjp
def _pool(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    parts = _windows(x)
    indices = _argmax_window(parts)
    return _select_window(parts, indices), indices


def _pool_fwd(x):
    pooled, indices = _pool(x)
    return (pooled, indices), indices


def _pool_bwd(indices, cotangents):
    g_pooled, _ = cotangents  # the integer indices carry no gradient
    return (_unpool(g_pooled, indices),)


_pool.defvjp(_pool_fwd, _pool_bwd)


@jax.custom_vjp
def _unpool_vjp(values: jax.Array, indices: jax.Array) -> jax.Array:
    return _unpool(values, indices)


def _unpool_fwd(values, indices):
    return _unpool(values, indices), indices


def _unpool_bwd(indices, g):
    return _select_window(_windows(g), indices), None


_unpool_vjp.defvjp(_unpool_fwd, _unpool_bwd)


def max_pool_with_argmax(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """2×2, stride-2 max-pooling of ``x`` (B, H, W, C) that also returns where each maximum was.

    Returns ``(pooled, indices)``, both (B, H/2, W/2, C): ``pooled`` has the dtype of ``x``;
    ``indices`` is int8, the position ``2·dy + dx`` of the maximum inside its window, the first one in
    row-major order on ties (PyTorch's ``MaxPool2d(2, return_indices=True)`` rule). The gradient of
    ``pooled`` flows to that position only. H and W must be even (ValueError otherwise).
    """
    _check_even(x, "max_pool_with_argmax")
    return _pool(x)


def max_pool(x: jax.Array) -> jax.Array:
    """2×2, stride-2 max-pooling with PyTorch's gradient rule (all of it to the first maximum)."""
    return max_pool_with_argmax(x)[0]


def max_unpool(values: jax.Array, indices: jax.Array) -> jax.Array:
    """Inverse of :func:`max_pool_with_argmax`: (B, h, w, C) values → (B, 2h, 2w, C).

    Each value goes back to the window position recorded in ``indices`` (same shape, window index
    0..3 as returned by :func:`max_pool_with_argmax`); every other position is zero, as with
    PyTorch's ``MaxUnpool2d(2)``. The gradient with respect to ``values`` is the upstream gradient
    at the recorded positions; ``indices`` gets none.
    """
    if values.ndim != 4 or values.shape != indices.shape:
        raise ValueError(
            f"max_unpool expects values and indices of the same (B, h, w, C) shape, got "
            f"{tuple(values.shape)} and {tuple(indices.shape)}"
        )
    if not jnp.issubdtype(indices.dtype, jnp.integer):
        raise ValueError(f"max_unpool expects integer window indices, got dtype {indices.dtype}")
    return _unpool_vjp(values, indices)
