"""How the losses read their inputs: float32 casting, shape checks, class selection, image masks, per-(image, class)
sums. Shared by the loss modules of :mod:`segmime_jax.losses` and by :mod:`segmime_jax.gradients` (whose closed
forms must read their inputs exactly as the losses do); not part of the public API."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def class_indices(num_classes: int, classes: Sequence[int] | None) -> tuple[int, ...]:
    """The selected class indices as a tuple of Python ints (validated, order kept)."""
    if classes is None:
        return tuple(range(num_classes))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(f"classes must be a static sequence of int class indices, got {classes!r}")
    selected = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"classes must hold Python ints (static indices), got {c!r} in {classes!r}")
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"class index {int(c)} out of range for {num_classes} classes (classes={list(classes)})")
        selected.append(int(c))
    if not selected:
        raise ValueError("classes must select at least one class")
    if len(set(selected)) != len(selected):
        raise ValueError(f"classes has duplicate indices: {list(classes)}")
    return tuple(selected)


def prepare(
    probs: jax.Array, target: jax.Array, classes: Sequence[int] | None
) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
    """Cast to float32, check shapes, select classes. Returns ``(s, y, idx)`` with ``s, y`` of shape
    ``(B, *spatial, |idx|)``."""
    probs = jnp.asarray(probs)
    target = jnp.asarray(target)
    if probs.shape != target.shape:
        raise ValueError(
            f"probs and target must have the same shape (B, *spatial, K); got {probs.shape} and {target.shape}"
        )
    if probs.ndim < 2:
        raise ValueError(f"probs must be shaped (B, *spatial, K) with at least 2 axes; got shape {probs.shape}")
    idx = class_indices(probs.shape[-1], classes)
    s = probs.astype(jnp.float32)
    y = target.astype(jnp.float32)
    if idx != tuple(range(probs.shape[-1])):
        s = s[..., list(idx)]
        y = y[..., list(idx)]
    return s, y, idx


def image_weights(mask: jax.Array | None, batch: int) -> jax.Array:
    """Per-image weights, float32 of shape ``(B,)`` (ones when ``mask`` is None)."""
    if mask is None:
        return jnp.ones((batch,), jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != (batch,):
        raise ValueError(f"mask must have shape (B,) = ({batch},); got {mask.shape}")
    return mask.astype(jnp.float32)


def prepare_masked(
    probs: jax.Array, target: jax.Array, classes: Sequence[int] | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[int, ...]]:
    """:func:`prepare` plus the image weights ``m`` ``(B,)``: ``(s, y, m, idx)``. With a ``mask``, the ``s`` and
    ``y`` of images with ``m_b = 0`` are replaced by zeros (a select, so whatever a padded image holds, NaN
    included, reaches neither the loss nor the gradient)."""
    s, y, idx = prepare(probs, target, classes)
    m = image_weights(mask, s.shape[0])
    if mask is not None:
        keep = (m > 0).reshape((-1,) + (1,) * (s.ndim - 1))
        s = jnp.where(keep, s, 0.0)
        y = jnp.where(keep, y, 0.0)
    return s, y, m, idx


def safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den != 0``, else 0 (grad-safe: no NaN flows through the unused branch)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def spatial_axes(x: jax.Array) -> tuple[int, ...]:
    """The spatial axes of a ``(B, *spatial, K)`` array: ``(1, ..., ndim - 2)``."""
    return tuple(range(1, x.ndim - 1))


def per_image_class_sums(s: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(I, Σ y, Σ s)`` per image and class, each ``(B, K)``."""
    axes = spatial_axes(s)
    return jnp.sum(y * s, axis=axes), jnp.sum(y, axis=axes), jnp.sum(s, axis=axes)


def per_class_weight(value: Any, name: str, num_classes: int, idx: tuple[int, ...]) -> jax.Array:
    """A scalar or a per-class array (one entry per class of ``probs``, indexed by class label), restricted
    to the selected classes; float32, shape ``()`` or ``(|idx|,)``."""
    arr = jnp.asarray(value, dtype=jnp.float32)
    if arr.ndim == 0:
        return arr
    if arr.ndim != 1 or arr.shape[0] != num_classes:
        raise ValueError(
            f"{name} must be a scalar or a per-class array of shape ({num_classes},) (one entry per "
            f"class of probs, indexed by class label); got shape {arr.shape}"
        )
    return arr[jnp.asarray(idx)]


def all_selected(s: jax.Array) -> jax.Array:
    """``c = 1`` for every channel of ``s`` (its classes are already the selected ones)."""
    return jnp.ones(s.shape[-1:], jnp.float32)


def image_axis(m: jax.Array, ndim: int) -> jax.Array:
    """``(B,)`` image weights shaped to broadcast against ``(B, *spatial, K)``."""
    return m.reshape((-1,) + (1,) * (ndim - 1))


def scatter_classes(values: jax.Array, shape: tuple[int, ...], idx: tuple[int, ...]) -> jax.Array:
    """Put the selected-class channels ``values`` (…, |idx|) back into a zero array of the full ``shape``."""
    if idx == tuple(range(shape[-1])):
        return values
    return jnp.zeros(shape, jnp.float32).at[..., list(idx)].set(values)


def per_image_class_shape(s: jax.Array) -> tuple[int, ...]:
    """Broadcast shape of a ``(B, K)`` quantity against ``(B, *spatial, K)``."""
    return (s.shape[0],) + (1,) * (s.ndim - 2) + (s.shape[-1],)
