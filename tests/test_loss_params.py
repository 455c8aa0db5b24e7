"""The loss as data: LossProgram(params) equals build_loss's function, value and gradient, for every term."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segmime_jax.losses import TERMS, LossProgram, build_loss, loss_from_spec, loss_params

SPECS = ["ce", "dsc", "gdl", "mime", "nm", "surrogate", "1*ce+1*dsc", "0.5*mime+2*nm+gdl"]


@pytest.fixture(scope="module")
def inputs():
    probs = jax.nn.softmax(3 * jax.random.normal(jax.random.key(0), (3, 8, 8, 4)), -1)
    labels = jax.random.randint(jax.random.key(1), (3, 8, 8), 0, 4)
    labels = labels.at[1].set(jnp.where(labels[1] == 2, 0, labels[1]))  # class 2 absent from image 1
    return probs, jax.nn.one_hot(labels, 4), jnp.array([1.0, 1.0, 0.0])


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("classes", [None, (1, 2, 3), (2,)])
def test_program_equals_build_loss(inputs, spec, classes):
    probs, onehot, mask = inputs
    options = {} if classes is None else {"classes": classes}
    reference = build_loss(spec, **options)
    program, params = loss_from_spec(spec, 4, **options)
    everything = LossProgram()  # all terms computed, the others weighted 0: what a grid's program does
    v0, g0 = jax.value_and_grad(lambda p: reference(p, onehot, mask=mask))(probs)
    scale = float(jnp.max(jnp.abs(g0)))
    for candidate in (program, everything):
        v, g = jax.value_and_grad(lambda p, c=candidate: c(params, p, onehot, mask=mask))(probs)
        assert float(v) == pytest.approx(float(v0), rel=1e-6, abs=1e-8)
        np.testing.assert_allclose(g, g0, rtol=0, atol=1e-6 * scale)


def test_options_split_into_data_and_program(inputs):
    probs, onehot, mask = inputs
    a = np.array([0.5, 1.0, 2.0, 3.0], np.float32)
    program, params = loss_from_spec("gdl+mime", 4, classes=(1, 3), a=a, b=0.2, absent="max", epsilon=1e-6)
    assert program.terms == ("gdl", "mime") and program.gdl_absent == "max" and program.epsilon == 1e-6
    np.testing.assert_array_equal(params.a, a)
    np.testing.assert_array_equal(params.classes, [0, 1, 0, 1])
    reference = build_loss("gdl+mime", classes=(1, 3), a=a, b=0.2, absent="max", epsilon=1e-6)
    assert float(program(params, probs, onehot, mask=mask)) == pytest.approx(
        float(reference(probs, onehot, mask=mask)), rel=1e-6
    )
    with pytest.raises(ValueError, match="unknown loss option"):
        loss_from_spec("ce", 4, gamma=2.0)


def test_a_grid_shares_one_program_and_stacks_its_params():
    params = [
        loss_params(spec, 4, classes=c) for spec, c in (("ce", None), ("dsc", None), ("mime", (1, 2, 3)), ("nm", None))
    ]
    program = LossProgram.covering(*params)
    assert program.terms == ("ce", "dsc", "mime", "nm")
    assert hash(program) == hash(LossProgram(terms=("nm", "mime", "dsc", "ce")))  # canonical order: one jit key
    stacked = jax.tree.map(lambda *x: np.stack(x), *params)  # a pytree: runs stack along a leading axis
    assert stacked.weights.shape == (4, len(TERMS)) and stacked.classes.shape == (4, 4)
    with pytest.raises(ValueError, match="does not compute"):
        LossProgram(terms=("ce",)).check(params[1])
    with pytest.raises(ValueError, match="per-class array"):
        loss_params("mime", 4, a=[1.0, 2.0])
