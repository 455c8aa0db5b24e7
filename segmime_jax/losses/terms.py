"""The arithmetic of each loss on prepared arrays, with a per-class weight vector ``c``.

Every loss is written once, here: the public losses of :mod:`segmime_jax.losses.functions` call these with their
``classes`` sliced out and ``c = 1``; :mod:`segmime_jax.losses.params` calls the same functions on all ``K``
channels with ``c`` a 0/1 class mask, so that the class selection is data instead of a static slice. Multiplying
by 1 and adding 0 are exact, so both give the same numbers up to float summation order.

Arguments, for every function: ``s``, ``y`` float32 ``(B, *spatial, K)`` (masked images already zeroed), image
weights ``m`` ``(B,)``, class weights ``c`` ``(K,)``. Each returns a float32 scalar.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from segmime_jax.losses.inputs import image_axis, per_image_class_sums, safe_div

#: The ``+1e-10`` inside ``log`` and in the normaliser of the cross-entropy (as in the reference code).
CE_EPSILON = 1e-10


def cross_entropy_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array) -> jax.Array:
    """:func:`cross_entropy` of prepared ``s, y`` ``(B, *spatial, K)``, image weights ``m`` ``(B,)`` and class
    weights ``c`` ``(K,)`` (1 selected, 0 not)."""
    weighted = image_axis(m, s.ndim) * c * y
    return -jnp.sum(weighted * jnp.log(s + CE_EPSILON)) / (jnp.sum(weighted) + CE_EPSILON)


def dice_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float, batch: bool) -> jax.Array:
    """:func:`dice_loss` of prepared arrays (see :func:`cross_entropy_terms`): the ``c``-weighted class mean."""
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    union = sum_y + sum_s
    if batch:
        inter_k = jnp.sum(m[:, None] * inter, axis=0)
        union_k = jnp.sum(m[:, None] * union, axis=0)
        per_class = 1.0 - (2.0 * inter_k + epsilon) / (union_k + epsilon)
        # Every image masked: I_k = U_k = 0 gives per_class = 0, the documented "all masked" loss.
        return safe_div(jnp.sum(c * per_class), jnp.sum(c))
    per_image_class = 1.0 - (2.0 * inter + epsilon) / (union + epsilon)
    return safe_div(jnp.sum(m[:, None] * c * per_image_class), jnp.sum(m) * jnp.sum(c))


#: The conventions of :func:`generalized_dice_loss` for classes absent from the ground truth (``absent=``).
GDL_ABSENT = ("reference", "max")


def generalized_dice_terms(
    s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float, absent: str = "reference"
) -> jax.Array:
    """:func:`generalized_dice_loss` of prepared arrays (see :func:`cross_entropy_terms`)."""
    if absent not in GDL_ABSENT:
        raise ValueError(f"absent must be one of {GDL_ABSENT}, got {absent!r}")
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    w = c / (sum_y + epsilon) ** 2
    present = (sum_y > 0) & (c > 0)
    if absent == "max":
        w_present = jnp.where(present, w, 0.0)
        w = jnp.where(present, w_present, c * jnp.max(w_present, axis=-1, keepdims=True))
    numerator = 2.0 * (jnp.sum(w * inter, axis=-1) + epsilon)
    denominator = jnp.sum(w * (sum_y + sum_s), axis=-1) + epsilon
    per_image = 1.0 - numerator / denominator
    if absent == "max":  # nothing present: MONAI's 1 - smooth_nr/smooth_dr = 0, no gradient
        per_image = jnp.where(jnp.any(present, axis=-1), per_image, 0.0)
    return safe_div(jnp.sum(m * per_image), jnp.sum(m))


def linear_terms(
    s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, a: jax.Array, b: jax.Array, *, normalize: bool
) -> jax.Array:
    """:func:`mime_loss` of prepared arrays (see :func:`cross_entropy_terms`), ``a``, ``b`` scalars or ``(K,)``;
    normalised by ``Σ_b m_b · |Ω| · Σ_k c_k``."""
    omega = c * (-a * y + b * (1.0 - y))
    total = jnp.sum(m * jnp.sum(omega * s, axis=tuple(range(1, s.ndim))))
    if not normalize:
        return total
    return safe_div(total, jnp.sum(m) * (math.prod(s.shape[1:-1]) * jnp.sum(c)))


def dice_surrogate_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float) -> jax.Array:
    """:func:`dice_surrogate_loss` of prepared arrays (see :func:`cross_entropy_terms`)."""
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    union = jax.lax.stop_gradient(sum_y + sum_s)
    inter = jax.lax.stop_gradient(inter)
    alpha = 2.0 / (union + epsilon)
    beta = (2.0 * inter + epsilon) / (union + epsilon) ** 2
    spatial_shape = (s.shape[0],) + (1,) * (s.ndim - 2) + (s.shape[-1],)
    omega = c * (-alpha.reshape(spatial_shape) * y + beta.reshape(spatial_shape))
    per_image = jnp.sum(omega * s, axis=tuple(range(1, s.ndim)))
    return safe_div(jnp.sum(m * per_image), jnp.sum(m) * jnp.sum(c))
