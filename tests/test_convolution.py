"""segmime_jax.models.convolution: same forward values as lax, same gradients, and the kernel gradient in a
form XLA:GPU maps onto cuDNN's backward-filter convolution or a matrix product (no base-dilated or
whole-feature-map-window convolution).

The HLO checks read the StableHLO jax emits (before any backend's rewriting): what the GPU compiler then
does with it was measured on an H200 (docs/performance.md), not here.
"""

from __future__ import annotations

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from segmime_jax.models.convolution import conv_general_dilated
from segmime_jax.models.layers import ConvTranspose

NHWC = ("NHWC", "HWIO", "NHWC")

# (input shape, kernel shape, padding, lhs_dilation, rhs_dilation): transposed convolutions (input dilation)
# with even/odd sizes, asymmetric and non-square kernels, strides 2 and 3; atrous ones (kernel dilation)
# with padding larger than the feature map (ENet's dilation 16 on a small map) and negative padding (a crop).
CASES = [
    ((2, 5, 7, 3), (3, 3, 3, 4), ((1, 2), (1, 2)), (2, 2), None),  # ResidualUNet's ConvTranspose2d(3, 2, 1, 1)
    ((2, 5, 6, 3), (3, 3, 3, 4), ((2, 2), (2, 2)), (2, 2), None),
    ((1, 5, 6, 3), (4, 4, 3, 2), ((2, 3), (1, 2)), (2, 2), None),
    ((2, 4, 6, 3), (3, 3, 3, 2), ((0, 1), (1, 1)), (3, 3), None),
    ((2, 4, 5, 3), (2, 3, 3, 2), ((1, 1), (2, 0)), (2, 3), None),
    ((2, 9, 8, 3), (3, 3, 3, 4), ((2, 2), (2, 2)), None, (2, 2)),  # ENet's dilated bottleneck
    ((2, 8, 8, 3), (3, 3, 3, 4), ((16, 16), (16, 16)), None, (16, 16)),
    ((2, 9, 7, 3), (3, 2, 3, 4), ((1, 3), (-1, 2)), None, (2, 3)),
]


def _inputs(case, dtype=jnp.float32, seed=0):
    x_shape, k_shape = case[0], case[1]
    kx, kk = jax.random.split(jax.random.key(seed))
    return jax.random.normal(kx, x_shape, dtype), jax.random.normal(kk, k_shape, dtype)


def _conv(fn, case):
    _, _, padding, lhs_dilation, rhs_dilation = case

    def apply(x, k):
        return fn(x, k, (1, 1), padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=NHWC)

    return apply


def _loss(fn, case):
    conv = _conv(fn, case)

    def loss(x, k):
        y = conv(x, k).astype(jnp.float32)
        weights = jnp.sin(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)  # a fixed, non-trivial cotangent
        return jnp.sum(y * weights)

    return loss


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-lhs{c[3]}-rhs{c[4]}")
def test_forward_identical_and_gradients_agree_with_lax(case):
    x, k = _inputs(case)
    np.testing.assert_array_equal(_conv(conv_general_dilated, case)(x, k), _conv(lax.conv_general_dilated, case)(x, k))
    ours = jax.jit(jax.grad(_loss(conv_general_dilated, case), (0, 1)))(x, k)
    reference = jax.jit(jax.grad(_loss(lax.conv_general_dilated, case), (0, 1)))(x, k)
    for got, want in zip(ours, reference, strict=True):
        chex.assert_equal_shape((got, want))
        assert float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 1e-5


class TestVariants(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_bfloat16_gradients(self):
        """bfloat16 inputs give bfloat16 gradients, equal (to bfloat16 rounding) to lax's, with and without jit."""
        for case in (CASES[0], CASES[5]):  # transposed, atrous
            x, k = _inputs(case, jnp.bfloat16, seed=1)
            ours = self.variant(jax.grad(_loss(conv_general_dilated, case), (0, 1)))(x, k)
            reference = jax.grad(_loss(lax.conv_general_dilated, case), (0, 1))(x, k)
            for got, want in zip(ours, reference, strict=True):
                chex.assert_type(got, jnp.bfloat16)
                got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
                assert np.abs(got - want).max() / np.abs(want).max() < 2e-2


def _convolutions(text: str) -> list[str]:
    return [line for line in text.splitlines() if "stablehlo.convolution" in line]


def test_transposed_kernel_gradient_is_a_strided_convolution_backward_filter():
    """ResidualUNet's up-convolution: jax's own kernel gradient is a convolution of the base-dilated input
    (``lhs_dilate = [2, 2]`` on a gradient, a window as large as the feature map, which XLA:GPU ran as a slow
    forward convolution); ours has base dilation only in the forward pass and computes the kernel gradient
    as the backward filter of a stride-2 convolution (``rhs_dilate = [2, 2]``, stride 1)."""
    case = CASES[0]
    x, k = _inputs(case)
    ours = jax.jit(jax.value_and_grad(_loss(conv_general_dilated, case), (0, 1))).lower(x, k).as_text()
    plain = jax.jit(jax.value_and_grad(_loss(lax.conv_general_dilated, case), (0, 1))).lower(x, k).as_text()
    ours_convs, plain_convs = _convolutions(ours), _convolutions(plain)
    assert sum("lhs_dilate = [2, 2]" in c for c in plain_convs) == 2  # forward and kernel gradient
    assert sum("lhs_dilate = [2, 2]" in c for c in ours_convs) == 1  # the forward pass only
    assert sum("stride = [2, 2]" in c for c in ours_convs) == 1  # the input gradient
    assert sum("rhs_dilate = [2, 2]" in c for c in ours_convs) == 1  # the kernel gradient (backward filter)


def test_atrous_kernel_gradient_is_a_matrix_product():
    """ENet's dilated bottleneck: jax's kernel gradient is a convolution with a window the size of the
    output and stride = dilation (XLA:GPU: 0.2 ms each on an H200); ours is one dot_general over the shifted
    copies of the padded input."""
    case = CASES[6]
    x, k = _inputs(case)
    ours = jax.jit(jax.value_and_grad(_loss(conv_general_dilated, case), (0, 1))).lower(x, k).as_text()
    plain = jax.jit(jax.value_and_grad(_loss(lax.conv_general_dilated, case), (0, 1))).lower(x, k).as_text()
    assert any(re.search(r"stride = \[16, 16\]", c) for c in _convolutions(plain))
    assert not any(re.search(r"stride = \[16, 16\]", c) for c in _convolutions(ours))
    assert len(_convolutions(ours)) == 2  # forward and input gradient
    assert "stablehlo.dot_general" in ours


@pytest.mark.parametrize(
    "kwargs",
    [
        {"padding": "SAME", "rhs_dilation": (2, 2)},  # string padding
        {"padding": ((1, 1), (1, 1)), "rhs_dilation": (2, 2), "window_strides": (2, 2)},  # strided and dilated
        {"padding": ((1, 1), (1, 1))},  # nothing dilated
    ],
)
def test_other_convolutions_are_lax_unchanged(kwargs):
    kwargs = {"window_strides": (1, 1), **kwargs}
    x, k = _inputs(CASES[0])

    def summed(conv):
        return jax.jit(jax.grad(lambda x, k: conv(x, k, dimension_numbers=NHWC, **kwargs).sum(), (0, 1)))

    ours, plain = summed(conv_general_dilated), summed(lax.conv_general_dilated)
    assert "custom_vjp" not in str(jax.make_jaxpr(ours)(x, k))
    chex.assert_trees_all_equal(ours(x, k), plain(x, k))


def test_grouped_convolution_is_lax_unchanged():
    x = jax.random.normal(jax.random.key(0), (1, 6, 6, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 2, 4))
    args = ((1, 1), ((2, 2), (2, 2)))
    kwargs = {"rhs_dilation": (2, 2), "dimension_numbers": NHWC, "feature_group_count": 2}
    chex.assert_trees_all_equal(
        conv_general_dilated(x, k, *args, **kwargs), lax.conv_general_dilated(x, k, *args, **kwargs)
    )
    assert "custom_vjp" not in str(jax.make_jaxpr(lambda x, k: conv_general_dilated(x, k, *args, **kwargs))(x, k))


def test_conv_transpose_layer_gradients_match_plain_flax():
    """The layer (what ResidualUNet uses) against the same nnx.Conv built with lax.conv_general_dilated."""
    layer = ConvTranspose(3, 5, 3, padding=1, output_padding=1, rngs=nnx.Rngs(0))
    plain = nnx.Conv(3, 5, (3, 3), padding=((1, 2), (1, 2)), input_dilation=2, rngs=nnx.Rngs(1))
    plain.kernel.set_value(layer.conv.kernel[...])
    plain.bias.set_value(layer.conv.bias[...])
    x = jax.random.normal(jax.random.key(2), (2, 4, 3, 3))

    def loss(module, x):
        return jnp.sum(module(x) ** 2)

    got = nnx.grad(loss, argnums=(0, 1))(layer, x)
    want = nnx.grad(loss, argnums=(0, 1))(plain, x)
    np.testing.assert_allclose(got[0].conv.kernel[...], want[0].kernel[...], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[0].conv.bias[...], want[0].bias[...], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, base_dilated, whole_map_strides", [("residualunet", 4, ()), ("enet", 2, (4, 8, 16))])
def test_models_train_step_gradients_use_it(name, base_dilated, whole_map_strides):
    """Both models' gradients (lowered, not run: abstract weights). Input dilation only where it belongs:
    ResidualUNet's four forward up-convolutions (without the fix: four more, their kernel gradients), ENet's
    input gradients of its two stride-2 downsampling convolutions (cuDNN's backward-input form); and no kernel
    gradient of ENet's dilated convolutions as a convolution strided by the dilation (dilation 2 is left out
    here: ENet's downsampling convolutions are strided by 2 in earnest)."""
    from segmime_jax.models import build_model

    model = nnx.eval_shape(lambda: build_model(name, 2, rngs=nnx.Rngs(0)))
    model.eval()  # running statistics: nothing is mutated under jax.grad
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(params, rest, x):
        return jnp.sum(nnx.merge(graphdef, params, rest)(x) ** 2)

    x = jax.ShapeDtypeStruct((1, 32, 32, 1), jnp.float32)
    convs = _convolutions(jax.jit(jax.value_and_grad(loss)).lower(params, rest, x).as_text())
    assert sum("lhs_dilate = [2, 2]" in c for c in convs) == base_dilated
    for d in whole_map_strides:
        assert not any(f"stride = [{d}, {d}]" in c for c in convs)
