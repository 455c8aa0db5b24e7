"""The jitted train and eval steps on a tiny network: overfitting with each loss, BatchNorm, dropout, bf16."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_support import TinyNet, tiny_dataset

from segmime_jax.losses import LossProgram, build_loss, loss_from_spec, loss_params
from segmime_jax.train import TrainState, make_eval_step, make_mesh, make_optimizer, make_train_step
from segmime_jax.train.evaluate import evaluate
from segmime_jax.train.metrics import mean_foreground
from segmime_jax.train.sharding import replicate, shard_batch

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def setup():
    dataset = tiny_dataset(1, 4, size=32, num_classes=NUM_CLASSES, seed=5)
    batch = {
        "image": dataset.images[..., None].astype(np.float32) / 255.0,
        "label": dataset.labels.astype(np.int32),
        "mask": np.ones(4, bool),
    }
    mesh = make_mesh(batch_sizes=(4,))
    return dataset, mesh, shard_batch(batch, mesh)


def _fresh_state(mesh, tx, dtype=jnp.float32, seed=0):
    model = TinyNet(NUM_CLASSES, rngs=nnx.Rngs(params=seed, dropout=seed + 1), dtype=dtype)
    return replicate(TrainState.create(model, tx), mesh)


def _fg_dice(eval_step, state, batch, params):
    counts = jax.device_get(eval_step(state, batch, params)["dice"])
    total = {k: v.sum(0) for k, v in counts.items()}
    dsc = (2 * total["intersection"] + 1e-8) / (total["prediction"] + total["label"] + 1e-8)
    return float(mean_foreground(dsc))


@pytest.mark.parametrize("loss", ["ce", "dsc", "mime", "nm"])
def test_overfit_a_batch(setup, loss):
    _, mesh, batch = setup
    tx = make_optimizer("adam", learning_rate=3e-2)
    program, params = loss_from_spec(loss, NUM_CLASSES)
    train_step = make_train_step(tx, program, NUM_CLASSES, mesh=mesh)
    eval_step = make_eval_step(program, NUM_CLASSES)
    state = _fresh_state(mesh, tx)
    dice_before = _fg_dice(eval_step, state, batch, params)
    losses = []
    for step in range(40):
        state, out = train_step(state, batch, jax.random.key(step), params)
        losses.append(float(out["loss"]))
    dice_after = _fg_dice(eval_step, state, batch, params)
    assert int(state.step) == 40
    assert np.mean(losses[-5:]) < losses[0] - 0.05 * abs(losses[0]), losses
    assert dice_after > dice_before + 0.2 and dice_after > 0.7, (dice_before, dice_after)


def test_batchnorm_statistics_and_dropout_keys(setup):
    _, mesh, batch = setup
    tx = make_optimizer("sgd", learning_rate=0.1)
    program, params = loss_from_spec("ce", NUM_CLASSES)
    train_step = make_train_step(tx, program, NUM_CLASSES, mesh=mesh)
    state0 = _fresh_state(mesh, tx)
    mean0 = np.asarray(state0.batch_stats["bn"]["mean"][...])
    state_a, out_a = train_step(_fresh_state(mesh, tx), batch, jax.random.key(7), params)
    state_b, out_b = train_step(_fresh_state(mesh, tx), batch, jax.random.key(7), params)
    state_c, out_c = train_step(_fresh_state(mesh, tx), batch, jax.random.key(8), params)
    # running mean moved by (1 − momentum) towards the batch mean
    assert not np.allclose(np.asarray(state_a.batch_stats["bn"]["mean"][...]), mean0)
    # same key: identical step; another key: another dropout mask
    chex.assert_trees_all_equal(state_a.params, state_b.params)
    assert float(out_a["loss"]) != float(out_c["loss"])
    assert int(state_a.step) == 1


def test_bfloat16_compute_keeps_float32_params(setup):
    _, mesh, batch = setup
    tx = make_optimizer("adam")
    program, params = loss_from_spec("dsc", NUM_CLASSES)
    train_step = make_train_step(tx, program, NUM_CLASSES, mesh=mesh)
    state = _fresh_state(mesh, tx, dtype=jnp.bfloat16)
    state, out = train_step(state, batch, jax.random.key(0), params)
    assert np.isfinite(float(out["loss"]))
    chex.assert_type(jax.tree.leaves(state.params), jnp.float32)


def test_augmented_step_runs(setup):
    _, mesh, batch = setup
    tx = make_optimizer("adam")
    program, params = loss_from_spec("ce", NUM_CLASSES)
    plain = make_train_step(tx, program, NUM_CLASSES, mesh=mesh)
    augmented = make_train_step(tx, program, NUM_CLASSES, mesh=mesh, augment=True)
    _, out_plain = plain(_fresh_state(mesh, tx), batch, jax.random.key(3), params)
    _, out_aug = augmented(_fresh_state(mesh, tx), batch, jax.random.key(3), params)
    assert np.isfinite(float(out_aug["loss"])) and float(out_aug["loss"]) != float(out_plain["loss"])


def test_evaluate_matches_numpy_dice_per_volume(setup):
    _, mesh, _ = setup
    dataset = tiny_dataset(2, 3, size=32, num_classes=NUM_CLASSES, seed=9)
    tx = make_optimizer("adam")
    state = _fresh_state(mesh, tx)
    program, params = loss_from_spec("ce", NUM_CLASSES)
    eval_step = make_eval_step(program, NUM_CLASSES)
    predictions = {}
    result = evaluate(eval_step, state, dataset, 2, params, on_volume=lambda v, p: predictions.setdefault(v.name, p))
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


def _closure(spec, **options):
    """Today's loss as a per-run closure (the step before the loss became data)."""
    fn = build_loss(spec, **options)
    return lambda params, probs, target, *, mask=None: fn(probs, target, mask=mask)


@pytest.mark.parametrize(
    ("spec", "classes"),
    [("ce", None), ("dsc", None), ("mime", (1, 2)), ("nm", None), ("1*ce+1*dsc", (1, 2)), ("gdl", None)],
)
def test_loss_as_data_step_equals_the_per_loss_step(setup, spec, classes):
    """The one program of a grid (all terms computed, weights as data) trains exactly like a step compiled for
    one loss: five steps, parameters and losses equal to float rounding. (SGD: Adam's first steps are ±lr for a
    gradient that is rounding noise, such as a bias followed by BatchNorm, see test_train_sharding.)"""
    _, mesh, batch = setup
    tx = make_optimizer("sgd", learning_rate=0.1)
    options = {} if classes is None else {"classes": classes}
    grid_step = make_train_step(tx, LossProgram(), NUM_CLASSES, mesh=mesh)  # every term
    own_step = make_train_step(tx, _closure(spec, **options), NUM_CLASSES, mesh=mesh)
    params = loss_params(spec, NUM_CLASSES, **options)
    a, b = _fresh_state(mesh, tx), _fresh_state(mesh, tx)
    for step in range(5):
        a, out_a = grid_step(a, batch, jax.random.key(step), params)
        b, out_b = own_step(b, batch, jax.random.key(step), None)
        assert float(out_a["loss"]) == pytest.approx(float(out_b["loss"]), rel=1e-5, abs=1e-7)
    chex.assert_trees_all_close(a.params, b.params, rtol=1e-4, atol=1e-6)


def test_optimizer_hyperparameters_are_state_not_code(setup):
    """The steps of a grid are built from the optimiser kind only: the learning rate, betas, momentum and
    weight decay of each run live in its optimiser state, so a step built with other values gives the same
    update."""
    _, mesh, batch = setup
    program, params = loss_from_spec("dsc", NUM_CLASSES)
    for name, options in (
        ("adam", {"learning_rate": 0.02, "adam_b1": 0.5, "adam_b2": 0.9}),
        ("sgd", {"learning_rate": 0.3, "momentum": 0.5, "weight_decay": 1e-2}),
    ):
        own = make_optimizer(name, **options)
        shared_step = make_train_step(make_optimizer(name), program, NUM_CLASSES, mesh=mesh)
        own_step = make_train_step(own, program, NUM_CLASSES, mesh=mesh)
        a, b = _fresh_state(mesh, own), _fresh_state(mesh, own)
        for step in range(3):
            a, _ = shared_step(a, batch, jax.random.key(step), params)
            b, _ = own_step(b, batch, jax.random.key(step), params)
        chex.assert_trees_all_equal(a.params, b.params)


def test_a_long_compilation_reports_its_elapsed_time():
    """A compilation says so before, every tick while it lasts, and after, with whether the cache supplied it."""
    import time

    from segmime_jax.train.programs import compile_announced

    class SlowProgram:
        name = "train step"

        def is_compiled(self, state, batch):
            return False

        def compile(self, *args):
            time.sleep(0.35)
            return 0.4, False

    said: list[str] = []
    compile_announced(SlowProgram(), (None, None), "batches of 8", said.append, tick_s=0.1)
    assert said[0] == "compiling the train step (batches of 8) ..."
    ticks = said[1:-1]
    assert len(ticks) >= 2 and all(t.startswith("  ... still compiling the train step: ") for t in ticks)
    assert said[-1] == "compiled the train step (batches of 8) in 0.4 s"
