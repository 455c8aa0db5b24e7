"""On-device data augmentation for PROMISE12 (paper §3.2, as in the reference code): flips and rotation,
nearest resampling, zero fill.

Per sample, independently, each with probability 0.5: a vertical flip (rows reversed), a horizontal mirror
(columns reversed), and a rotation about the image centre by an angle drawn uniformly in [-45°, 45°].
The output is ``rotate(mirror(flip(x)))``, computed by inverse mapping: each output pixel takes the input
pixel nearest to its pre-image; pre-images outside the image give 0 (image) and 0 = background (label).
Image and label use the same index map, so they stay aligned exactly. Pure JAX, jitted, deterministic in
the key.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

MAX_ANGLE_DEGREES = 45.0
PROBABILITY = 0.5


def _transform_one(
    image: jax.Array, label: jax.Array, flip_v: jax.Array, flip_h: jax.Array, angle: jax.Array
) -> tuple[jax.Array, jax.Array]:
    height, width = label.shape
    rows = jnp.arange(height, dtype=jnp.float32)[:, None]
    cols = jnp.arange(width, dtype=jnp.float32)[None, :]
    centre_r, centre_c = (height - 1) / 2.0, (width - 1) / 2.0
    theta = jnp.deg2rad(angle.astype(jnp.float32))
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    dr, dc = rows - centre_r, cols - centre_c
    # Pre-image of each output pixel under the rotation (clockwise on screen, rows down, for angle > 0).
    src_r = cos * dr - sin * dc + centre_r
    src_c = sin * dr + cos * dc + centre_c
    # Then under the flips, which were applied first.
    src_r = jnp.where(flip_v, (height - 1) - src_r, src_r)
    src_c = jnp.where(flip_h, (width - 1) - src_c, src_c)
    near_r = jnp.floor(src_r + 0.5)
    near_c = jnp.floor(src_c + 0.5)
    inside = (near_r >= 0) & (near_r <= height - 1) & (near_c >= 0) & (near_c <= width - 1)
    index_r = jnp.clip(near_r, 0, height - 1).astype(jnp.int32)
    index_c = jnp.clip(near_c, 0, width - 1).astype(jnp.int32)
    out_image = jnp.where(inside[..., None], image[index_r, index_c], jnp.zeros((), image.dtype))
    out_label = jnp.where(inside, label[index_r, index_c], jnp.zeros((), label.dtype))
    return out_image, out_label


@jax.jit
def transform_batch(
    image: jax.Array, label: jax.Array, flip_v: jax.Array, flip_h: jax.Array, angle: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Apply given per-sample transforms: ``image`` (B, H, W, C), ``label`` (B, H, W), ``flip_v`` and
    ``flip_h`` bool (B,), ``angle`` float (B,) in degrees (0 = no rotation, exactly)."""
    return jax.vmap(_transform_one)(image, label, flip_v, flip_h, angle)


def sample_transforms(key: jax.Array, batch_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Draw ``(flip_v, flip_h, angle)`` for ``batch_size`` samples (angle 0 where no rotation is drawn)."""
    k_v, k_h, k_r, k_a = jax.random.split(key, 4)
    flip_v = jax.random.bernoulli(k_v, PROBABILITY, (batch_size,))
    flip_h = jax.random.bernoulli(k_h, PROBABILITY, (batch_size,))
    rotate = jax.random.bernoulli(k_r, PROBABILITY, (batch_size,))
    angle = jax.random.uniform(k_a, (batch_size,), minval=-MAX_ANGLE_DEGREES, maxval=MAX_ANGLE_DEGREES)
    return flip_v, flip_h, jnp.where(rotate, angle, 0.0)


def _match_batch_sharding(x: jax.Array, reference: jax.Array) -> jax.Array:
    """Under explicit sharding, split ``x`` (B, ...) over the mesh axis that splits ``reference``'s batch
    (vmap needs its mapped inputs sharded alike); a no-op otherwise."""
    sharding = getattr(jax.typeof(reference), "sharding", None)
    spec = getattr(sharding, "spec", None)
    if not spec or spec[0] is None:
        return x
    explicit = jax.sharding.AxisType.Explicit
    if not any(axis_type == explicit for axis_type in getattr(sharding.mesh, "axis_types", ())):
        return x
    target = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(spec[0]))
    return jax.sharding.reshard(x, target)


@jax.jit
def augment_batch(key: jax.Array, image: jax.Array, label: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Randomly flip, mirror and rotate each sample of ``image`` (B, H, W, C) and ``label`` (B, H, W) alike.

    Same key, same result, whatever the sharding of the batch. Padding samples (all zero) stay all zero.
    """
    draws = sample_transforms(key, label.shape[0])
    flip_v, flip_h, angle = (_match_batch_sharding(x, image) for x in draws)
    return transform_batch(image, label, flip_v, flip_h, angle)
