"""Adding a loss from outside the package: register_loss, and every path that names a loss then works for it.

The toy loss is L1: the mean over unmasked images, pixels and selected classes of ``|s − y|``, whose closed form
and gradient (``sign(s − y) / N`` on the selected channels of unmasked images, 0 elsewhere) are checked below.
"""

from __future__ import annotations

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from train_support import tiny_factory, tiny_splits

from segmime_jax.losses import (
    LOSS_ALIASES,
    LOSSES,
    TERMS,
    LossProgram,
    build_loss,
    canonical_name,
    cross_entropy,
    display_name,
    loss_from_spec,
    loss_params,
    register_loss,
)
from segmime_jax.paper.grid import tables
from segmime_jax.paper.grid.facts import volume_facts
from segmime_jax.train import TrainConfig, train_and_evaluate

K = 4


def l1_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array) -> jax.Array:
    """Mean of ``c_k |s − y|`` over unmasked images and pixels, normalised by ``Σ_b m_b · |Ω| · Σ_k c_k``."""
    per_image = jnp.sum(c * jnp.abs(s - y), axis=tuple(range(1, s.ndim)))
    count = jnp.sum(m) * math.prod(s.shape[1:-1]) * jnp.sum(c)
    return jnp.where(count > 0, jnp.sum(m * per_image) / jnp.where(count > 0, count, 1.0), 0.0)


def scaled_l1_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float) -> jax.Array:
    """L1 times the program's ``ε``: a loss that reads a static option."""
    return epsilon * l1_terms(s, y, m, c)


def closed_form(probs: np.ndarray, onehot: np.ndarray, classes, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """The L1 loss and its gradient with respect to ``probs``, in numpy (0/1 mask)."""
    selected = list(range(K)) if classes is None else list(classes)
    keep = mask > 0
    diff = probs[keep][..., selected].astype(np.float64) - onehot[keep][..., selected]
    grad = np.zeros(probs.shape, np.float64)
    grad[np.ix_(keep, *[np.arange(n) for n in probs.shape[1:-1]], selected)] = np.sign(diff) / diff.size
    return float(np.abs(diff).mean()), grad


@pytest.fixture(scope="module")
def inputs():
    probs = jax.nn.softmax(2 * jax.random.normal(jax.random.key(0), (3, 6, 5, K)), -1)
    onehot = jax.nn.one_hot(jax.random.randint(jax.random.key(1), (3, 6, 5), 0, K), K)
    return np.asarray(probs), np.asarray(onehot), np.array([1.0, 0.0, 1.0], np.float32)


@pytest.fixture
def l1():
    with register_loss("l1", l1_terms, display="L1", aliases=("manhattan",)) as handle:
        yield handle


@pytest.mark.parametrize("classes", [None, (1, 2, 3), (2,)])
def test_build_loss_and_the_program_equal_the_closed_form(l1, inputs, classes):
    probs, onehot, mask = inputs
    expected, _ = closed_form(probs, onehot, classes, mask)
    options = {} if classes is None else {"classes": classes}
    value = build_loss("l1", **options)(probs, onehot, mask=mask)
    chex.assert_type(value, jnp.float32)
    chex.assert_shape(value, ())
    np.testing.assert_allclose(value, expected, rtol=1e-6)
    np.testing.assert_allclose(LOSSES["l1"](probs, onehot, mask=mask, **options), expected, rtol=1e-6)
    program, params = loss_from_spec("l1", K, **options)
    assert program.terms == ("l1",) and params.terms == (*TERMS, "l1")
    np.testing.assert_array_equal(params.weights, [0, 0, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(program(params, probs, onehot, mask=mask), expected, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(program)(params, probs, onehot, mask=mask), expected, rtol=1e-6)


@pytest.mark.parametrize("classes", [None, (1, 3)])
def test_the_gradient_equals_the_closed_form(l1, inputs, classes):
    probs, onehot, mask = inputs
    _, expected = closed_form(probs, onehot, classes, mask)
    options = {} if classes is None else {"classes": classes}
    loss_fn = build_loss("l1", **options)
    grad = jax.grad(lambda p: loss_fn(p, onehot, mask=mask))(jnp.asarray(probs))
    chex.assert_shape(grad, probs.shape)
    np.testing.assert_allclose(grad, expected, atol=1e-9)
    program, params = loss_from_spec("l1", K, **options)
    grad_program = jax.jit(jax.grad(lambda p: program(params, p, onehot, mask=mask)))(jnp.asarray(probs))
    np.testing.assert_allclose(grad_program, expected, atol=1e-9)


def test_a_compound_spec_and_a_grid_program(l1, inputs):
    probs, onehot, mask = inputs
    l1_value, _ = closed_form(probs, onehot, None, mask)
    expected = float(cross_entropy(probs, onehot, mask=mask)) + 0.5 * l1_value
    params = loss_params("1*ce+0.5*L1", K)
    np.testing.assert_array_equal(params.weights, [1, 0, 0, 0, 0, 0, 0.5])
    program = LossProgram.covering(params, loss_params("mime", K))  # one program for a grid of two runs
    assert program.terms == ("ce", "mime", "l1")
    np.testing.assert_allclose(jax.jit(program)(params, probs, onehot, mask=mask), expected, rtol=1e-6)
    np.testing.assert_allclose(build_loss("1*ce+0.5*manhattan")(probs, onehot, mask=mask), expected, rtol=1e-6)


def test_names_and_display_name(l1):
    assert display_name("l1") == display_name(" L1 ") == display_name("Manhattan") == "L1"
    assert canonical_name("Manhattan") == "l1" and LOSS_ALIASES["manhattan"] == "l1"
    assert tuple(LOSSES)[-1] == "l1" and TERMS == ("ce", "dsc", "gdl", "mime", "nm", "surrogate")
    assert display_name("1*ce+1*l1 ") == "1*ce+1*l1"
    assert [display_name(s) for s in ("ce", "dice", "mime", "nm", "gdl", "surrogate")] == [
        "CE",
        "DSC",
        "Mime",
        "NM",
        "GDL",
        "Surrogate",
    ]


def test_gone_after_the_context(inputs):
    probs, onehot, mask = inputs
    expected, _ = closed_form(probs, onehot, None, mask)
    with register_loss("l1", l1_terms, display="L1", aliases=("manhattan",)):
        program, params = loss_from_spec("l1", K)
    assert "l1" not in LOSSES and "manhattan" not in LOSS_ALIASES and tuple(LOSSES) == TERMS
    assert display_name("l1") == "l1"
    with pytest.raises(ValueError, match="unknown loss 'l1'"):
        build_loss("l1")
    with pytest.raises(ValueError, match="registered losses"):
        LossProgram(terms=("l1",))
    assert loss_params("ce", K).terms == TERMS
    # a program built while the loss was registered holds its definition, and still evaluates it
    np.testing.assert_allclose(program(params, probs, onehot, mask=mask), expected, rtol=1e-6)


def test_remove_without_a_context():
    handle = register_loss("l1", l1_terms, display="L1")
    try:
        assert "l1" in LOSSES
    finally:
        handle.remove()
    handle.remove()  # a second remove does nothing
    assert "l1" not in LOSSES


def test_bad_registrations_leave_the_registry_as_it_was():
    before = (dict(LOSSES), dict(LOSS_ALIASES))
    with pytest.raises(ValueError, match="'dsc' is taken"):
        register_loss("dsc", l1_terms, display="L1")
    with pytest.raises(ValueError, match="'dice' is taken"):
        register_loss("l1", l1_terms, display="L1", aliases=("dice",))
    with pytest.raises(ValueError, match="identifier"):
        register_loss("l 1", l1_terms, display="L1")
    with pytest.raises(ValueError, match="display name"):
        register_loss("l1", l1_terms, display=" ")
    with pytest.raises(ValueError, match=r"keyword argument\(s\) \['delta'\]"):
        register_loss("huber", lambda s, y, m, c, *, delta: l1_terms(s, y, m, c), display="Huber")
    assert (dict(LOSSES), dict(LOSS_ALIASES)) == before


def test_a_static_option_reaches_the_arithmetic(inputs):
    probs, onehot, mask = inputs
    l1_value, _ = closed_form(probs, onehot, None, mask)
    with register_loss("scaled_l1", scaled_l1_terms, display="εL1"):
        for options, factor in (({}, 1e-10), ({"epsilon": 0.5}, 0.5)):
            np.testing.assert_allclose(
                build_loss("scaled_l1", **options)(probs, onehot, mask=mask), factor * l1_value, rtol=1e-6
            )
            program, params = loss_from_spec("scaled_l1", K, **options)
            assert program.epsilon == factor
            np.testing.assert_allclose(program(params, probs, onehot, mask=mask), factor * l1_value, rtol=1e-6)
        with pytest.raises(ValueError, match="unknown option"):
            build_loss("scaled_l1", a=1.0)


def test_registering_again_with_other_arithmetic_compiles_anew(inputs):
    """Programs are jit statics and cache keys: the same name with other arithmetic must not reuse them."""
    probs, onehot, mask = inputs
    values, programs = [], []
    for factor in (1.0, 3.0):
        with register_loss("l1", lambda s, y, m, c, f=factor: f * l1_terms(s, y, m, c), display="L1"):
            program, params = loss_from_spec("l1", K)
        programs.append(program)
        values.append(float(jax.jit(program)(params, probs, onehot, mask=mask)))
    assert programs[0] != programs[1] and programs[0].terms == programs[1].terms
    np.testing.assert_allclose(values[1], 3 * values[0], rtol=1e-6)


def test_params_built_before_the_loss_weight_it_zero(inputs):
    probs, onehot, mask = inputs
    older = loss_params("ce", K)
    with register_loss("l1", l1_terms, display="L1"):
        everything = LossProgram()  # every registered term, l1 included
        assert everything.terms == (*TERMS, "l1")
        np.testing.assert_allclose(
            everything(older, probs, onehot, mask=mask), cross_entropy(probs, onehot, mask=mask), rtol=1e-6
        )
        assert LossProgram.covering(older, loss_params("l1", K)).terms == ("ce", "l1")


def test_one_training_step_and_its_row_in_table_1(l1, tmp_path):
    config = TrainConfig(
        loss="l1",
        epochs=1,
        batch_size=8,  # the 6 training slices: one step
        eval_batch_size=4,
        learning_rate=3e-2,
        progress=False,
        num_examples=0,
        write_predictions=False,
        checkpoints=False,
    )
    result = train_and_evaluate(config, tiny_splits(train_volumes=2, slices=3), tmp_path, model_factory=tiny_factory)
    assert [(h["epoch"], h["steps"]) for h in result.history] == [(1, 1)]
    assert all(np.isfinite(result.history[0][k]) for k in ("train_loss", "val_loss", "val_dsc_fg"))
    assert np.isfinite(result.test_dsc[:, 1:]).all()
    # Table 1 shows it under its display name, with the numbers of its test DSC
    table = tables.table1(volume_facts({("adam", "l1", 0): result}), "dsc", title="Testing DSC (%)")
    dsc = 100 * np.asarray(result.test_dsc)[:, 1:]
    assert list(table.frame.index) == [("Adam", "L1")]
    np.testing.assert_allclose(table.cell("adam", "L1", "All"), (dsc.mean(), dsc.std()))
    assert "| Adam | L1 | " in tables.format_markdown(table)


@pytest.mark.slow
def test_a_registered_loss_appears_in_table_1(tmp_path):
    from experiments import acdc

    with register_loss("l1", l1_terms, display="L1"):
        acdc.main(
            [
                *("--synthetic-cases", "5", "--synthetic-zoom", "1", "--image-size", "32", "--epochs", "1"),
                *("--losses", "dsc,l1", "--seeds", "1", "--num-examples", "1"),
                *("--no-compilation-cache", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")),
            ]
        )
    table = (tmp_path / "out" / "table1.md").read_text()
    assert "| Adam | L1 |" in table and "Adam, L1 − DSC: test All-DSC" in table
    facts = pd.read_csv(tmp_path / "out" / "test_metrics.csv")
    assert set(facts["loss"]) == {"dsc", "l1"}
