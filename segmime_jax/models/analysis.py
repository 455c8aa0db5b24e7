"""Model size and cost: trainable parameters, XLA's FLOP count of the forward pass, analytic conv FLOPs."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["conv_flops", "count_params", "cpu_lowered_flops", "flops_from_cost_analysis", "forward_flops"]


def count_params(model: nnx.Module) -> int:
    """Number of trainable parameters (the ``nnx.Param`` leaves; BatchNorm statistics excluded)."""
    # math.prod(shape) also works for abstract models built with nnx.eval_shape.
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))))


def flops_from_cost_analysis(cost) -> float:
    """The ``"flops"`` entry of a ``Lowered``/``Compiled.cost_analysis()`` result, as a float.

    jax returns a dict in recent versions and a list of per-module dicts in older ones; both are
    accepted (the list is summed). Raises RuntimeError when the backend gives no cost analysis.
    """
    if cost is None:
        raise RuntimeError("XLA returned no cost analysis for this backend")
    if isinstance(cost, dict):
        cost = [cost]
    return float(sum(float(entry.get("flops", 0.0)) for entry in cost))


def _on_cpu(tree):
    """Abstract copies (``ShapeDtypeStruct``) of a pytree's arrays, placed on the first CPU device."""
    cpu = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=cpu), tree)


def cpu_lowered_flops(fn, *args) -> float | None:
    """XLA's FLOP count of ``jax.jit(fn)`` lowered (not compiled) for the CPU on abstract copies of ``args``
    (arrays or ``ShapeDtypeStruct``); ``None`` where even the CPU gives no cost analysis. The count is that of
    the unpartitioned program, the same on every backend; use it where the device's own cost analysis is
    missing (PJRT plugins such as CUDA) or blind to library calls (XLA:GPU counts cuDNN convolutions as 0)."""
    try:
        return flops_from_cost_analysis(jax.jit(fn).lower(*_on_cpu(args)).cost_analysis())
    except (RuntimeError, NotImplementedError):
        return None


def _forward_fn(model: nnx.Module, train: bool):
    graphdef, state = nnx.split(model)

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        if train:
            m.train()
        else:
            m.eval()
        return m(x)

    state_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)
    return forward, state_shapes


def forward_flops(model: nnx.Module, input_shape: Sequence[int], *, train: bool = False, dtype=jnp.float32) -> float:
    """FLOPs of one forward pass of ``model`` on an input of ``input_shape`` (B, H, W, C).

    Taken from XLA's cost analysis of the forward pass compiled for the CPU
    (``jax.jit(...).lower(...).compile().cost_analysis()["flops"]``; on the CPU whatever the default backend,
    because XLA:GPU counts cuDNN convolutions as no FLOPs), in eval
    mode unless ``train=True`` (batch statistics and dropout then add a few element-wise FLOPs).
    XLA counts a multiply-add as 2 FLOPs, skips kernel taps that fall on zero padding (and on the
    zeros a transposed convolution inserts), and adds the element-wise work (BatchNorm, activations,
    pooling); :func:`conv_flops` gives the plain analytic convolution count for comparison.
    Nothing is executed and ``model`` is left unchanged (its state is split and re-merged inside the
    trace).
    """
    forward, state_shapes = _forward_fn(model, train)
    x = jax.ShapeDtypeStruct(tuple(input_shape), dtype)
    compiled = jax.jit(forward).lower(*_on_cpu((state_shapes, x))).compile()
    return flops_from_cost_analysis(compiled.cost_analysis())


def _sub_jaxprs(value):
    if hasattr(value, "eqns"):  # Jaxpr
        yield value
    elif hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):  # ClosedJaxpr
        yield value.jaxpr
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def _conv_macs(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            out_shape = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out, in, *spatial) positions in rhs
            taps = math.prod(rhs[d] for d in spec[1:])  # in-channels per group × kernel window
            # With input dilation (transposed convs) only 1/prod(dilation) of the taps meet real inputs.
            total += math.prod(out_shape) * taps // math.prod(eqn.params["lhs_dilation"])
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                total += _conv_macs(sub)
    return total


def conv_flops(model: nnx.Module, input_shape: Sequence[int]) -> float:
    """Analytic convolution FLOPs of one eval-mode forward pass: 2 × multiply-accumulates.

    Counts every kernel tap, zero padding included, and for transposed convolutions only the taps
    that meet real (not inserted-zero) inputs; element-wise work is excluded. This is the convention of
    the usual figures (ENet 2.08 G, ResidualUNet 53.3 G per 256×256 image). Computed from the jaxpr,
    nothing is compiled or executed.
    """
    forward, state_shapes = _forward_fn(model, train=False)
    jaxpr = jax.make_jaxpr(forward)(state_shapes, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    return 2.0 * _conv_macs(jaxpr.jaxpr)
