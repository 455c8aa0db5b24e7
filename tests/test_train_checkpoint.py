"""Orbax checkpoints: save/restore round trip, best tracking, the non-finite loss guard."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_support import TinyNet

from segmime_jax.losses import loss_from_spec
from segmime_jax.train import NonFiniteLossError, TrainState, make_optimizer, make_train_step
from segmime_jax.train.checkpoint import (
    CheckpointStore,
    check_finite,
    check_state_finite,
    leaf_names,
    pack,
    packing_table,
    unpack,
)
from segmime_jax.train.optim import get_learning_rate, set_learning_rate


def _state(seed: int, tx) -> TrainState:
    return TrainState.create(TinyNet(2, rngs=nnx.Rngs(params=seed, dropout=seed + 1), width=4), tx)


def test_round_trip_and_continuation(tmp_path):
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.random((2, 16, 16, 1), dtype=np.float32),
        "label": rng.integers(0, 2, (2, 16, 16)).astype(np.int32),
        "mask": np.ones(2, bool),
    }
    tx = make_optimizer("sgd", learning_rate=0.05)
    program, params = loss_from_spec("dsc", 2)
    step = make_train_step(tx, program, 2)
    state = _state(0, tx)
    for i in range(2):
        state, _ = step(state, batch, jax.random.key(i), params)
    state = state.replace(opt_state=set_learning_rate(state.opt_state, 0.025))
    saved = jax.tree.map(np.asarray, state.checkpoint_tree())
    meta = {"epoch": 2, "history": [{"loss": 0.5}, {"loss": 0.25}]}
    with CheckpointStore(tmp_path / "ckpt") as store:
        store.save(2, state.checkpoint_tree(), meta, improved=True)
    with CheckpointStore(tmp_path / "ckpt") as store:  # a new process would do this
        epoch, tree, restored_meta = store.restore(_state(5, tx).checkpoint_tree())
    assert epoch == 2 and {k: restored_meta[k] for k in meta} == meta
    assert [entry["name"] for entry in restored_meta["packing"]] == leaf_names(state.checkpoint_tree())
    restored = _state(5, tx).replace_from_checkpoint(tree)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.checkpoint_tree()), saved)
    assert get_learning_rate(restored.opt_state) == pytest.approx(0.025)
    assert int(restored.step) == 2
    # one more step from the original and from the restored state: identical
    cont_a, out_a = step(state, batch, jax.random.key(2), params)
    cont_b, out_b = step(restored, batch, jax.random.key(2), params)
    assert float(out_a["loss"]) == float(out_b["loss"])
    chex.assert_trees_all_equal(cont_a.params, cont_b.params)


def test_orbax_keeps_the_latest_and_the_best(tmp_path):
    tx = make_optimizer("adam")
    states = {e: _state(e, tx) for e in (1, 2, 3, 4, 5)}
    improved = {1: True, 2: True, 3: False, 4: True, 5: False}
    with CheckpointStore(tmp_path, async_save=False) as store:
        assert store.restore(states[1].checkpoint_tree()) is None and store.latest_epoch() is None
        for epoch, state in states.items():
            store.save(epoch, state.checkpoint_tree(), {"epoch": epoch}, improved=improved[epoch])
        assert store.epochs() == [4, 5] and store.latest_epoch() == 5
        epoch, tree, meta = store.restore(states[1].checkpoint_tree(), 4)
        assert epoch == 4 and meta["epoch"] == 4
        chex.assert_trees_all_equal(tree["params"], states[4].params)
        assert store.restore(states[1].checkpoint_tree(), 3) is None
        # a later tie of the best value is not an improvement: the first epoch that reached it stays
        store.save(6, states[1].checkpoint_tree(), {"epoch": 6}, improved=False)
        assert store.epochs() == [4, 6]
    with CheckpointStore(tmp_path) as store, pytest.raises(ValueError, match="another state structure"):
        other = TrainState.create(TinyNet(2, rngs=nnx.Rngs(0), width=8), make_optimizer("sgd"))
        store.restore(other.checkpoint_tree())


def test_packed_state_round_trip():
    tree = {
        "a": [np.zeros(2, np.float32), np.ones((3, 2), np.float32)],
        "b": {"c": np.arange(4, dtype=np.int32)},
        "d": np.float32(7),
    }
    packed = pack(tree)
    assert {k: v.shape for k, v in packed.items()} == {"float32": (9,), "int32": (4,)}
    assert [(e["name"], e["offset"]) for e in packing_table(tree)] == [("a/0", 0), ("a/1", 2), ("b/c", 0), ("d", 8)]
    chex.assert_trees_all_equal(unpack(tree, packed), tree)
    with pytest.raises(ValueError, match="float32 vector"):
        unpack({"a": np.zeros(10, np.float32)}, packed)


def test_non_finite_guard(tmp_path):
    check_finite(1.5, epoch=1, step=3)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss \\(nan\\) at epoch 2, step 7"):
        check_finite(float("nan"), epoch=2, step=7)
    tx = make_optimizer("adam")
    with CheckpointStore(tmp_path, async_save=False) as store:
        store.save(1, _state(0, tx).checkpoint_tree(), {"epoch": 1}, improved=True)
        with pytest.raises(NonFiniteLossError, match="last good checkpoint \\(epoch 1\\)") as info:
            check_finite(float("inf"), epoch=2, step=9, store=store)
    assert info.value.checkpoint_epoch == 1 and info.value.epoch == 2
    with pytest.raises(NonFiniteLossError, match="non-finite gradient \\(norm inf, loss 0.5\\) at epoch 3, step 4"):
        check_finite(0.5, epoch=3, step=4, grad_norm=float("inf"))
    state = _state(0, tx)
    check_state_finite(state.checkpoint_tree(), epoch=1)
    poisoned = jax.tree.map(lambda x: x * np.nan if jnp.issubdtype(x.dtype, jnp.floating) else x, state.params)
    with pytest.raises(NonFiniteLossError, match="non-finite parameters.* after epoch 4"):
        check_state_finite(state.replace(params=poisoned).checkpoint_tree(), epoch=4)
