"""Input pipeline: shuffling, padding masks, volume batches, device-resident datasets, sharding."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmime_jax.data import (
    SliceDataset,
    VolumeInfo,
    eval_batches,
    num_batches,
    to_device,
    train_batches,
)


def make_dataset(slices=(3, 2, 4), size=(6, 5), seed=0) -> SliceDataset:
    rng = np.random.default_rng(seed)
    volumes, ids, positions = [], [], []
    for v, n in enumerate(slices):
        volumes.append(
            VolumeInfo(
                volume_id=v,
                name=f"vol{v}",
                patient=f"p{v}",
                image_path="",
                label_path="",
                original_shape=(*size, n),
                affine=np.eye(4),
                spacing=(1.0, 1.0, 1.0),
                num_slices=n,
            )
        )
        ids += [v] * n
        positions += list(range(n))
    count = len(ids)
    perm = rng.permutation(count)  # store slices scrambled
    images = rng.integers(1, 256, size=(count, *size)).astype(np.uint8)
    labels = rng.integers(0, 4, size=(count, *size)).astype(np.uint8)
    return SliceDataset(
        images=images,
        labels=labels,
        volume_ids=np.array(ids)[perm],
        slice_indices=np.array(positions)[perm],
        volumes=tuple(volumes),
        class_names=("background", "a", "b", "c"),
    )


def _identify(ds: SliceDataset, batch) -> list[int]:
    """Dataset index of each real slice of a batch (via volume id and slice index)."""
    out = []
    for v, s, m in zip(
        np.asarray(batch["volume_id"]), np.asarray(batch["slice_index"]), np.asarray(batch["mask"]), strict=True
    ):
        if m:
            out.append(int(np.flatnonzero((ds.volume_ids == v) & (ds.slice_indices == s))[0]))
    return out


@pytest.mark.parametrize("resident", [False, True])
def test_train_batches_cover_epoch_with_padding(resident):
    ds = make_dataset()
    source = to_device(ds) if resident else ds
    batches = list(train_batches(source, 4, seed=0, epoch=0))
    assert len(batches) == num_batches(ds, 4) == 3
    seen = []
    for batch in batches:
        assert set(batch) == {"image", "label", "mask", "volume_id", "slice_index"}
        chex.assert_shape(batch["image"], (4, 6, 5, 1))
        chex.assert_type(
            [batch["image"], batch["label"], batch["mask"], batch["volume_id"]],
            [jnp.float32, jnp.int32, jnp.bool_, jnp.int32],
        )
        idx = _identify(ds, batch)
        real = np.asarray(batch["mask"])
        np.testing.assert_allclose(np.asarray(batch["image"])[real, ..., 0], ds.images[idx] / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(batch["label"])[real], ds.labels[idx])
        seen += idx
    assert sorted(seen) == list(range(len(ds)))
    last = batches[-1]
    np.testing.assert_array_equal(np.asarray(last["mask"]), [True, False, False, False])
    np.testing.assert_array_equal(np.asarray(last["volume_id"])[1:], -1)
    assert float(jnp.abs(last["image"][1:]).sum()) == 0.0 and int(last["label"][1:].sum()) == 0
    assert float(batches[0]["image"].max()) <= 1.0 and float(batches[0]["image"].min()) >= 0.0


def test_shuffle_depends_on_seed_and_epoch_only():
    ds = make_dataset()

    def order(seed, epoch, resident=False):
        source = to_device(ds) if resident else ds
        return [i for b in train_batches(source, 4, seed=seed, epoch=epoch, prefetch=0) for i in _identify(ds, b)]

    assert order(0, 0) == order(0, 0) == order(0, 0, resident=True)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)


def test_eval_batches_pack_volumes_in_order():
    ds = make_dataset(slices=(5, 1, 3))
    for source in (ds, to_device(ds)):
        batches = list(eval_batches(source, 4, prefetch=0))
        assert len(batches) == 3  # 9 slices in batches of 4, the last one padded
        index = np.concatenate([i for i, _ in batches])
        np.testing.assert_array_equal(index, np.concatenate([ds.slices_of(v.volume_id) for v in ds.volumes]))
        for i, b in batches:
            chex.assert_shape(b["image"], (4, 6, 5, 1))
            real = np.asarray(b["mask"])
            assert real.sum() == len(i) and not real[len(i) :].any()
            np.testing.assert_allclose(np.asarray(b["image"])[: len(i), ..., 0], ds.images[i] / 255.0, rtol=1e-6)
            np.testing.assert_array_equal(np.asarray(b["label"])[: len(i)], ds.labels[i])
            np.testing.assert_array_equal(np.asarray(b["volume_id"])[: len(i)], ds.volume_ids[i])


@pytest.mark.parametrize("axis_type", ["Explicit", "Auto"])
def test_single_device_sharding_and_errors(axis_type):
    ds = make_dataset()
    mesh = jax.make_mesh((1,), ("data",), axis_types=(getattr(jax.sharding.AxisType, axis_type),))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    reference = next(iter(train_batches(ds, 3, seed=0, epoch=0)))
    for source in (ds, to_device(ds, sharding=sharding)):
        batch = next(iter(train_batches(source, 3, seed=0, epoch=0, sharding=sharding)))
        assert batch["image"].sharding.is_equivalent_to(sharding, 4)
        assert batch["mask"].sharding.is_equivalent_to(sharding, 1)
        for key in batch:
            np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(reference[key]))
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(ds, 0)
    empty = ds.select_volumes([])
    assert len(empty) == 0 and list(train_batches(empty, 2, seed=0, epoch=0)) == []


def test_eight_devices_same_batches():
    """Batches sharded over 8 host devices hold the same numbers as on one device; so do augmented ones."""
    script = textwrap.dedent("""
        import numpy as np, jax
        from jax.sharding import NamedSharding, PartitionSpec
        import sys; sys.path.insert(0, {!r})
        from test_data_pipeline import make_dataset
        from segmime_jax.data import train_batches, to_device
        assert jax.device_count() == 8
        ds = make_dataset(slices=(7, 6, 9))
        sharding = NamedSharding(jax.make_mesh((8,), ("data",)), PartitionSpec("data"))
        plain = list(train_batches(ds, 8, seed=1, epoch=2))
        for source in (ds, to_device(ds, sharding=sharding)):
            sharded = list(train_batches(source, 8, seed=1, epoch=2, sharding=sharding))
            assert len(sharded) == len(plain) == 3
            for a, b in zip(plain, sharded):
                assert len(b["image"].sharding.device_set) == 8
                assert b["image"].addressable_shards[0].data.shape == (1, 6, 5, 1)
                for key in a:
                    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
        # augmentation of a sharded batch (explicit and automatic meshes) equals that of an unsharded one
        from segmime_jax.data import augment_batch
        key = jax.random.key(1)
        reference = augment_batch(key, plain[0]["image"], plain[0]["label"])
        for axis_type in (jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto):
            mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
            batch = next(iter(train_batches(ds, 8, seed=1, epoch=2,
                                            sharding=NamedSharding(mesh, PartitionSpec("data")))))
            out = augment_batch(key, batch["image"], batch["label"])
            assert len(out[0].sharding.device_set) == 8
            for x, y in zip(reference, out):
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        print("ok")
    """).format(os.path.dirname(__file__))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


def test_run_train_batches_give_each_run_its_own_order():
    from segmime_jax.data.pipeline import BATCH_KEYS, run_train_batches
    from segmime_jax.train.sharding import make_mesh, runs_batch_sharding

    dataset = make_dataset()  # 9 slices: batches of 4, 4 and 1 (padded)
    mesh = make_mesh(1)
    stacked = list(
        run_train_batches(dataset, 4, seeds=[5, 7, 5], epoch=2, sharding=runs_batch_sharding(mesh), prefetch=0)
    )
    alone = {seed: list(train_batches(dataset, 4, seed=seed, epoch=2, prefetch=0)) for seed in (5, 7)}
    assert len(stacked) == 3
    for position, batch in enumerate(stacked):
        batch = jax.device_get(batch)
        assert batch["image"].shape == (3, 4, 6, 5, 1) and batch["mask"].shape == (3, 4)
        for run, seed in enumerate((5, 7, 5)):
            for key in BATCH_KEYS:
                np.testing.assert_array_equal(batch[key][run], np.asarray(alone[seed][position][key]))
    device = to_device(dataset)  # gathered on the device: the same batches
    again = next(run_train_batches(device, 4, seeds=[5, 7, 5], epoch=2, sharding=None, prefetch=0))
    np.testing.assert_array_equal(np.asarray(again["label"]), np.asarray(stacked[0]["label"]))
