"""PROMISE12 augmentation: exact flips and right-angle rotations, alignment, determinism, probabilities."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np

from segmime_jax.data import augment_batch, transform_batch
from segmime_jax.data.augment import sample_transforms


def _batch(b=4, h=12, w=10, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.uniform(0.01, 1.0, size=(b, h, w, 2)).astype(np.float32)
    label = (image[..., 0] > 0.5).astype(np.int32) + (image[..., 0] > 0.8).astype(np.int32)
    return jnp.asarray(image), jnp.asarray(label)


def _apply(image, label, flip_v, flip_h, angle):
    b = image.shape[0]
    return transform_batch(
        image, label, jnp.full((b,), flip_v), jnp.full((b,), flip_h), jnp.full((b,), angle, jnp.float32)
    )


def test_identity_and_flips_are_exact():
    image, label = _batch()
    out_image, out_label = _apply(image, label, False, False, 0.0)
    np.testing.assert_array_equal(out_image, image)
    np.testing.assert_array_equal(out_label, label)
    out_image, out_label = _apply(image, label, True, False, 0.0)
    np.testing.assert_array_equal(out_image, image[:, ::-1])
    np.testing.assert_array_equal(out_label, label[:, ::-1])
    out_image, out_label = _apply(image, label, False, True, 0.0)
    np.testing.assert_array_equal(out_image, image[:, :, ::-1])
    out_image, out_label = _apply(image, label, True, True, 0.0)
    np.testing.assert_array_equal(out_label, label[:, ::-1, ::-1])


def test_right_angle_rotation_on_square_images():
    image, label = _batch(h=11, w=11)
    out_image, out_label = _apply(image, label, False, False, 90.0)
    # positive angles turn clockwise on screen (rows pointing down): np.rot90 with k=-1
    np.testing.assert_array_equal(out_image, np.rot90(np.asarray(image), k=-1, axes=(1, 2)))
    np.testing.assert_array_equal(out_label, np.rot90(np.asarray(label), k=-1, axes=(1, 2)))
    out_image, _ = _apply(image, label, False, False, 180.0)
    np.testing.assert_array_equal(out_image, np.asarray(image)[:, ::-1, ::-1])


def test_rotation_keeps_alignment_and_zero_fills():
    image, label = _batch(b=3, h=16, w=16)
    out_image, out_label = _apply(image, label, True, False, 33.0)
    # the label is a function of the first channel: it must still be, pixel by pixel
    first = np.asarray(out_image[..., 0])
    expected = (first > 0.5).astype(np.int32) + (first > 0.8).astype(np.int32)
    np.testing.assert_array_equal(np.asarray(out_label), expected)
    assert (first == 0).any()  # corners fall outside: zero fill
    assert set(np.unique(out_label)) <= {0, 1, 2}
    # nearest resampling: every output value is an input value or 0
    assert np.isin(first[first != 0], np.asarray(image[..., 0])).all()


def test_augment_batch_is_deterministic_jittable_and_per_sample():
    image, label = _batch(b=64, h=8, w=8)
    key = jax.random.key(3)
    a = augment_batch(key, image, label)
    b = augment_batch(key, image, label)
    chex.assert_trees_all_equal(a, b)
    chex.assert_shape(a[0], image.shape)
    chex.assert_type([a[0], a[1]], [jnp.float32, jnp.int32])
    c = augment_batch(jax.random.key(4), image, label)
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    flip_v, flip_h, angle = sample_transforms(key, 2000)
    for draws in (flip_v, flip_h, angle != 0):
        assert 0.45 < float(jnp.mean(draws)) < 0.55
    rotated = np.asarray(angle)[np.asarray(angle) != 0]
    assert rotated.min() >= -45.0 and rotated.max() <= 45.0 and rotated.min() < -40 and rotated.max() > 40
    # samples differ in their transforms: some images unchanged, some changed
    changed = [not np.array_equal(np.asarray(a[0][i]), np.asarray(image[i])) for i in range(64)]
    assert 0 < sum(changed) < 64


def test_padding_samples_stay_zero():
    image, label = _batch(b=2)
    image = image.at[1].set(0.0)
    label = label.at[1].set(0)
    out_image, out_label = augment_batch(jax.random.key(0), image, label)
    assert float(jnp.abs(out_image[1]).sum()) == 0.0 and int(out_label[1].sum()) == 0
