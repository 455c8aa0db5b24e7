"""Orbax checkpoints: save/restore round trip, best tracking, the non-finite loss guard."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_support import TinyNet

from segmime_jax.losses import build_loss
from segmime_jax.train import (
    CheckpointStore,
    NonFiniteLossError,
    TrainState,
    check_finite,
    check_state_finite,
    get_learning_rate,
    make_optimizer,
    make_train_step,
    set_learning_rate,
)
from segmime_jax.train.checkpoint import from_named_tree, to_named_tree


def _state(seed: int, tx) -> TrainState:
    return TrainState.create(TinyNet(2, rngs=nnx.Rngs(params=seed, dropout=seed + 1), width=4), tx)


def test_round_trip_and_continuation(tmp_path):
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((2, 16, 16, 1), dtype=np.float32),
             "label": rng.integers(0, 2, (2, 16, 16)).astype(np.int32), "mask": np.ones(2, bool)}
    tx = make_optimizer("sgd", learning_rate=0.05)
    step = make_train_step(tx, build_loss("dsc"), 2)
    state = _state(0, tx)
    for i in range(2):
        state, _ = step(state, batch, jax.random.key(i))
    state = state.replace(opt_state=set_learning_rate(state.opt_state, 0.025))
    saved = jax.tree.map(np.asarray, state.checkpoint_tree())
    meta = {"epoch": 2, "history": [{"loss": 0.5}, {"loss": 0.25}]}
    with CheckpointStore(tmp_path / "ckpt") as store:
        store.save_latest(2, state.checkpoint_tree(), meta)
    with CheckpointStore(tmp_path / "ckpt") as store:  # a new process would do this
        epoch, tree, restored_meta = store.restore_latest(_state(5, tx).checkpoint_tree())
    assert epoch == 2 and restored_meta == meta
    restored = _state(5, tx).replace_from_checkpoint(tree)
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, restored.checkpoint_tree()), saved)
    assert get_learning_rate(restored.opt_state) == pytest.approx(0.025)
    assert int(restored.step) == 2
    # one more step from the original and from the restored state: identical
    cont_a, out_a = step(state, batch, jax.random.key(2))
    cont_b, out_b = step(restored, batch, jax.random.key(2))
    assert float(out_a["loss"]) == float(out_b["loss"])
    chex.assert_trees_all_equal(cont_a.params, cont_b.params)


def test_best_checkpoint_tracking(tmp_path):
    tx = make_optimizer("adam")
    states = {e: _state(e, tx) for e in (1, 2, 3)}
    with CheckpointStore(tmp_path, async_save=False) as store:
        assert store.restore_latest(states[1].checkpoint_tree()) is None
        assert store.restore_best(states[1].checkpoint_tree()) is None
        store.save_best(1, states[1].checkpoint_tree(), {"epoch": 1}, 0.5)
        store.save_best(2, states[2].checkpoint_tree(), {"epoch": 2}, 0.6)
        store.save_best(3, states[3].checkpoint_tree(), {"epoch": 3}, 0.7)
        store.save_latest(4, states[1].checkpoint_tree(), {"epoch": 4})
        assert store.best_epoch() == 3 and store.latest_epoch() == 4
        epoch, tree, meta = store.restore_best(states[1].checkpoint_tree())
        assert epoch == 3 and meta == {"epoch": 3}
        chex.assert_trees_all_equal(tree["params"], states[3].params)
        # the two most recent improvements are kept (see discard_best_after)
        assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()) == ["2", "3"]
        # resuming from epoch 2 drops the best of epoch 3, and the best of epoch 2 is there again
        assert store.discard_best_after(2) == [3]
        assert store.best_epoch() == 2
    assert sorted(p.name for p in (tmp_path / "best").iterdir() if p.name.isdigit()) == ["2"]


def test_named_tree_round_trip():
    tree = {"a": [np.zeros(2), np.ones(3)], "b": {"c": np.arange(4)}}
    named = to_named_tree(tree)
    assert set(named) == {"a", "b"} and set(named["a"]) == {"0", "1"}
    chex.assert_trees_all_equal(from_named_tree(tree, named), tree)


def test_non_finite_guard(tmp_path):
    check_finite(1.5, epoch=1, step=3)
    with pytest.raises(NonFiniteLossError, match="non-finite training loss \\(nan\\) at epoch 2, step 7"):
        check_finite(float("nan"), epoch=2, step=7)
    tx = make_optimizer("adam")
    with CheckpointStore(tmp_path, async_save=False) as store:
        store.save_latest(1, _state(0, tx).checkpoint_tree(), {"epoch": 1})
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
