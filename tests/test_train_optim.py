"""Optimisers (PyTorch SGD formula, Adam settings) and the plateau halving rule."""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from segmime_jax.train.optim import (
    PlateauState,
    default_learning_rate,
    get_learning_rate,
    make_optimizer,
    plateau_update,
    set_learning_rate,
    sgd_pytorch,
)


def _run(tx, params, grads_seq):
    state = tx.init(params)
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def test_sgd_weight_decay_matches_pytorch_formula():
    # torch.optim.SGD(lr=0.1, momentum=0.9, weight_decay=0.01), by hand:
    # step 1: d = g1 + wd·p0 = [0.51, 0.23]; buf = d; p1 = p0 − lr·buf = [0.949, −2.023]
    # step 2: d = g2 + wd·p1 = [−0.99051, 0.47977]; buf = 0.9·buf + d = [−0.53151, 0.68677];
    #         p2 = p1 − lr·buf = [1.002151, −2.091677]
    params = {"w": jnp.array([1.0, -2.0])}
    grads = [{"w": jnp.array([0.5, 0.25])}, {"w": jnp.array([-1.0, 0.5])}]
    p1, _ = _run(sgd_pytorch(0.1, momentum=0.9, weight_decay=0.01), params, grads[:1])
    chex.assert_trees_all_close(p1, {"w": jnp.array([0.949, -2.023])}, atol=1e-6)
    p2, _ = _run(sgd_pytorch(0.1, momentum=0.9, weight_decay=0.01), params, grads)
    chex.assert_trees_all_close(p2, {"w": jnp.array([1.002151, -2.091677])}, atol=1e-6)
    # the injected version computes the same
    p2_injected, state = _run(make_optimizer("sgd", learning_rate=0.1, weight_decay=0.01), params, grads)
    chex.assert_trees_all_close(p2_injected, p2, atol=1e-7)
    assert state.hyperparams["momentum"] == pytest.approx(0.9)


def test_adam_settings_and_first_step():
    tx = make_optimizer("adam")
    params = {"w": jnp.array([1.0, -2.0, 0.5])}
    state = tx.init(params)
    hyper = {k: float(v) for k, v in state.hyperparams.items()}
    assert hyper["learning_rate"] == pytest.approx(5e-4)
    assert hyper["b1"] == pytest.approx(0.99) and hyper["b2"] == pytest.approx(0.999)
    # first Adam step: bias-corrected m/sqrt(v) = sign(g), so p1 = p0 − lr·sign(g) (up to eps)
    grads = {"w": jnp.array([0.3, -4.0, 1e-3])}
    updates, _ = tx.update(grads, state, params)
    np.testing.assert_allclose(np.asarray(updates["w"]), -5e-4 * np.sign(np.asarray(grads["w"])), rtol=1e-4)


def test_default_learning_rates_and_errors():
    assert default_learning_rate("adam") == 5e-4 and default_learning_rate("sgd") == 1e-2
    assert get_learning_rate(make_optimizer("sgd").init({"w": jnp.zeros(2)})) == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("rmsprop")


def test_set_learning_rate_changes_the_update_without_recompiling():
    tx = make_optimizer("sgd", learning_rate=0.2, weight_decay=0.0)
    params = {"w": jnp.array([1.0, 2.0])}
    grads = {"w": jnp.array([1.0, -1.0])}
    traces = []

    @jax.jit
    def update(state):
        traces.append(1)
        return tx.update(grads, state, params)[0]

    state = tx.init(params)
    full = update(state)
    half = update(set_learning_rate(state, 0.1))
    chex.assert_trees_all_close(half, jax.tree.map(lambda u: 0.5 * u, full), atol=1e-7)
    assert len(traces) == 1
    assert get_learning_rate(set_learning_rate(state, 0.1)) == pytest.approx(0.1)


def test_plateau_halves_exactly_after_patience_bad_epochs():
    metrics = [0.1, 0.2, 0.2, 0.15, 0.19, 0.19, 0.19, 0.19, 0.3, 0.3]
    state = PlateauState()
    scales, bad = [], []
    for m in metrics:
        state = plateau_update(state, m, patience=3, factor=0.5)
        scales.append(state.scale)
        bad.append(state.bad_epochs)
    # improvements at epochs 1, 2 and 9; 3 bad epochs (3, 4, 5) → halve after epoch 5; again after 8.
    assert scales == [1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]
    assert bad == [0, 0, 1, 2, 0, 1, 2, 0, 0, 1]
    assert state.best == 0.3 and state.num_reductions == 2


def test_plateau_min_delta_nan_and_json_roundtrip():
    state = plateau_update(PlateauState(), 0.5, patience=2, min_delta=0.01)
    state = plateau_update(state, 0.505, patience=2, min_delta=0.01)  # not enough
    assert state.bad_epochs == 1 and state.best == 0.5
    state = plateau_update(state, math.nan, patience=2, min_delta=0.01)  # NaN is no improvement
    assert state.scale == 0.5 and state.bad_epochs == 0
    assert PlateauState.from_json(state.to_json()) == state
    assert PlateauState.from_json(PlateauState().to_json()) == PlateauState()
    with pytest.raises(ValueError, match="patience"):
        plateau_update(state, 0.1, patience=0)
