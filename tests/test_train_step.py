"""The jitted train and eval steps on a tiny network: overfitting with each loss, BatchNorm, dropout, bf16."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_support import TinyNet, tiny_dataset

from segmime_jax.losses import build_loss
from segmime_jax.train import (
    TrainState,
    evaluate,
    make_data_mesh,
    make_eval_step,
    make_optimizer,
    make_train_step,
    mean_foreground,
    replicate,
    shard_batch,
)

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def setup():
    dataset = tiny_dataset(1, 4, size=32, num_classes=NUM_CLASSES, seed=5)
    batch = {"image": dataset.images[..., None].astype(np.float32) / 255.0,
             "label": dataset.labels.astype(np.int32), "mask": np.ones(4, bool)}
    mesh = make_data_mesh(batch_sizes=(4,))
    return dataset, mesh, shard_batch(batch, mesh)


def _fresh_state(mesh, tx, dtype=jnp.float32, seed=0):
    model = TinyNet(NUM_CLASSES, rngs=nnx.Rngs(params=seed, dropout=seed + 1), dtype=dtype)
    return replicate(TrainState.create(model, tx), mesh)


def _fg_dice(eval_step, state, batch):
    counts = jax.device_get(eval_step(state, batch)["dice"])
    total = {k: v.sum(0) for k, v in counts.items()}
    dsc = (2 * total["intersection"] + 1e-8) / (total["prediction"] + total["label"] + 1e-8)
    return float(mean_foreground(dsc))


@pytest.mark.parametrize("loss", ["ce", "dsc", "mime", "nm"])
def test_overfit_a_batch(setup, loss):
    _, mesh, batch = setup
    tx = make_optimizer("adam", learning_rate=3e-2)
    loss_fn = build_loss(loss)
    train_step = make_train_step(tx, loss_fn, NUM_CLASSES, mesh=mesh)
    eval_step = make_eval_step(loss_fn, NUM_CLASSES)
    state = _fresh_state(mesh, tx)
    dice_before = _fg_dice(eval_step, state, batch)
    losses = []
    for step in range(40):
        state, out = train_step(state, batch, jax.random.key(step))
        losses.append(float(out["loss"]))
    dice_after = _fg_dice(eval_step, state, batch)
    assert int(state.step) == 40
    assert np.mean(losses[-5:]) < losses[0] - 0.05 * abs(losses[0]), losses
    assert dice_after > dice_before + 0.2 and dice_after > 0.7, (dice_before, dice_after)


def test_batchnorm_statistics_and_dropout_keys(setup):
    _, mesh, batch = setup
    tx = make_optimizer("sgd", learning_rate=0.1)
    train_step = make_train_step(tx, build_loss("ce"), NUM_CLASSES, mesh=mesh)
    state0 = _fresh_state(mesh, tx)
    mean0 = np.asarray(state0.batch_stats["bn"]["mean"][...])
    state_a, out_a = train_step(_fresh_state(mesh, tx), batch, jax.random.key(7))
    state_b, out_b = train_step(_fresh_state(mesh, tx), batch, jax.random.key(7))
    state_c, out_c = train_step(_fresh_state(mesh, tx), batch, jax.random.key(8))
    # running mean moved by (1 − momentum) towards the batch mean
    assert not np.allclose(np.asarray(state_a.batch_stats["bn"]["mean"][...]), mean0)
    # same key: identical step; another key: another dropout mask
    chex.assert_trees_all_equal(state_a.params, state_b.params)
    assert float(out_a["loss"]) != float(out_c["loss"])
    assert int(state_a.step) == 1


def test_bfloat16_compute_keeps_float32_params(setup):
    _, mesh, batch = setup
    tx = make_optimizer("adam")
    train_step = make_train_step(tx, build_loss("dsc"), NUM_CLASSES, mesh=mesh)
    state = _fresh_state(mesh, tx, dtype=jnp.bfloat16)
    state, out = train_step(state, batch, jax.random.key(0))
    assert np.isfinite(float(out["loss"]))
    chex.assert_type(jax.tree.leaves(state.params), jnp.float32)


def test_augmented_step_runs(setup):
    _, mesh, batch = setup
    tx = make_optimizer("adam")
    plain = make_train_step(tx, build_loss("ce"), NUM_CLASSES, mesh=mesh)
    augmented = make_train_step(tx, build_loss("ce"), NUM_CLASSES, mesh=mesh, augment=True)
    _, out_plain = plain(_fresh_state(mesh, tx), batch, jax.random.key(3))
    _, out_aug = augmented(_fresh_state(mesh, tx), batch, jax.random.key(3))
    assert np.isfinite(float(out_aug["loss"])) and float(out_aug["loss"]) != float(out_plain["loss"])


def test_evaluate_matches_numpy_dice_per_volume(setup):
    _, mesh, _ = setup
    dataset = tiny_dataset(2, 3, size=32, num_classes=NUM_CLASSES, seed=9)
    tx = make_optimizer("adam")
    state = _fresh_state(mesh, tx)
    eval_step = make_eval_step(build_loss("ce"), NUM_CLASSES)
    predictions = {}
    result = evaluate(eval_step, state, dataset, 2, on_volume=lambda v, p: predictions.setdefault(v.name, p))
    assert result.volume_names == ["vol00", "vol01"]
    chex.assert_shape(result.dsc, (2, NUM_CLASSES))
    for v, name in enumerate(result.volume_names):
        labels = dataset.labels[dataset.slices_of(v)]
        pred = predictions[name]
        chex.assert_shape(pred, labels.shape)
        for k in range(NUM_CLASSES):
            p, g = pred == k, labels == k
            expected = (2 * (p & g).sum() + 1e-8) / (p.sum() + g.sum() + 1e-8)
            assert result.dsc[v, k] == pytest.approx(expected, rel=1e-9)
    assert result.calibration.count.sum() == len(dataset) * 32 * 32 * NUM_CLASSES  # padding excluded
    assert np.isfinite(result.loss)
