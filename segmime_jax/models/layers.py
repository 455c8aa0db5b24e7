"""Building blocks shared by ENet and ResidualUNet (channels-last, Flax NNX).

* :class:`PReLU` — PyTorch ``nn.PReLU()``: ONE learnable slope per layer (initial 0.25).
* :class:`ConvBlock` — conv → BatchNorm → activation (PyTorch ``nn.Sequential(conv, bn, act)``).
* :class:`ConvTranspose` — PyTorch ``ConvTranspose2d(k, stride=2, padding=p, output_padding=op)``.
* :class:`LayerFactory` — builds convs / BatchNorms / PReLUs / dropouts with one model's
  initialisation scheme and dtypes, so the model definitions stay short.
* :class:`TorchNamed` — how a module's sub-modules are named in the reference PyTorch ``state_dict``
  (used by :mod:`segmime_jax.models.torch_weights`).

Conventions (PyTorch equivalents): BatchNorm ``epsilon=1e-5`` and Flax ``momentum=0.9`` (= PyTorch
``momentum=0.1``); the normalisation is computed in float32 even when the compute dtype is bfloat16, and
the BatchNorm statistics and all parameters stay in ``param_dtype``. One difference remains: PyTorch
updates ``running_var`` with the *unbiased* batch variance (factor n/(n−1), n = B·H·W per channel),
Flax with the biased one: a relative difference of 1/(n−1) in the running variance's update, 0.1 % at
n = 1024 (the U-Net's 16×16 deepest level at batch 4, ENet's 32×32 at batch 1) and less for larger batches.
Flax's default batch variance is E[x²] − E[x]² (PyTorch's is a two-pass/Welford one): the same to float32
rounding for activations whose mean is within a few standard deviations of 0, as in these networks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from segmime_jax.models.convolution import conv_general_dilated

__all__ = [
    "BN_EPSILON",
    "BN_MOMENTUM",
    "ConvBlock",
    "ConvTranspose",
    "LayerFactory",
    "PReLU",
    "TorchNamed",
    "make_activation",
    "dropout_stream",
    "normal_init",
    "torch_bias_init",
    "uniform_init",
    "upsample_nearest2",
    "xavier_normal_init",
]

BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9  # Flax convention: new = momentum·old + (1 − momentum)·batch; PyTorch momentum 0.1.

Initializer = Callable[..., jax.Array]


# ----------------------------------------------------------------------------------------------------
# Initialisers (PyTorch's distributions; shapes are Flax's: conv kernels HWIO)
# ----------------------------------------------------------------------------------------------------
def xavier_normal_init() -> Initializer:
    """Glorot/Xavier normal, NOT truncated: std = sqrt(2 / (fan_in + fan_out)), fans include kh·kw."""
    return jax.nn.initializers.variance_scaling(1.0, "fan_avg", "normal")


def normal_init(std: float, mean: float = 0.0) -> Initializer:
    """N(mean, std²) (untruncated)."""

    def init(key, shape, dtype=jnp.float32):
        return (mean + std * jax.random.normal(key, shape, jnp.float32)).astype(dtype)

    return init


def uniform_init(bound: float) -> Initializer:
    """U(−bound, bound)."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)

    return init


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default conv bias: U(±1/sqrt(fan_in)), fan_in = in_channels·kh·kw."""
    return uniform_init(1.0 / math.sqrt(fan_in))


# ----------------------------------------------------------------------------------------------------
# Small layers
# ----------------------------------------------------------------------------------------------------
class PReLU(nnx.Module):
    """PyTorch ``nn.PReLU()``: ``x`` if ``x > 0`` else ``a·x``, one learnable slope ``a`` (shape (1,))."""

    def __init__(self, *, init: float = 0.25, param_dtype: Any = jnp.float32):
        self.weight = nnx.Param(jnp.full((1,), init, param_dtype))

    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.weight[...].astype(x.dtype)
        return jnp.where(x > 0, x, a * x)


def make_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """Parameter-free activations with PyTorch's gradient at 0 (that of the negative side)."""
    if name == "relu":
        return lambda x: jnp.where(x > 0, x, jnp.zeros((), x.dtype))
    if name == "leaky_relu":  # nn.LeakyReLU(0.2)
        return lambda x: jnp.where(x > 0, x, jnp.asarray(0.2, x.dtype) * x)
    raise ValueError(f"unknown activation {name!r}; expected 'relu' or 'leaky_relu'")


def upsample_nearest2(x: jax.Array) -> jax.Array:
    """Nearest-neighbour ×2 upsampling of (B, H, W, C) (``F.interpolate(scale_factor=2)``), no gather."""
    b, h, w, c = x.shape
    return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


def _keep_dtypes(args, /, *, dtype=None, inexact=True):
    """BatchNorm ``promote_dtype`` hook: leave the float32 statistics and affine parameters as they are.

    With bfloat16 inputs the normalisation is then computed in float32 (inside the same fused loop) and
    only the result is cast to the compute dtype; Flax's default would round the running statistics to
    bfloat16 first.
    """
    del dtype, inexact
    return args


def dropout_stream(rngs: nnx.Rngs) -> nnx.RngStream:
    """An RNG stream tagged ``"dropout"``, from ``rngs.dropout`` (or ``default``/``params`` if absent).

    Every dropout layer forks this stream, so ``nnx.reseed(model, dropout=key)`` reseeds all of them,
    even when the model was built with ``nnx.Rngs(0)`` (a ``default`` stream only).
    """
    streams = {name for name, value in vars(rngs).items() if isinstance(value, nnx.RngStream)}
    for name in ("dropout", "default", "params"):
        if name in streams:
            return nnx.RngStream(rngs[name](), tag="dropout")
    raise ValueError(f"nnx.Rngs needs a 'dropout', 'default' or 'params' stream, found {sorted(streams)}")


# ----------------------------------------------------------------------------------------------------
# PyTorch naming
# ----------------------------------------------------------------------------------------------------
class TorchNamed:
    """Mixin: ``TORCH_NAMES`` maps attribute → name of that sub-module in the PyTorch state_dict.

    An empty name splices the sub-module's own entries into this module's namespace (used where a
    PyTorch module keeps ``conv0``, ``bn0``, ``PReLU0`` as siblings that we group into one block).
    """

    TORCH_NAMES: ClassVar[dict[str, str]] = {}

    def torch_children(self) -> Iterator[tuple[str, Any]]:
        for attr, torch_name in self.TORCH_NAMES.items():
            child = getattr(self, attr)
            if child is not None:
                yield torch_name, child


# ----------------------------------------------------------------------------------------------------
# Convolution blocks
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class LayerFactory:
    """Creates layers with one model's initialisation scheme and dtypes.

    ``kernel_init`` is applied to every conv kernel (HWIO), conv biases get PyTorch's default
    U(±1/sqrt(fan_in)), BatchNorm scales ``bn_scale_init`` and biases 0, PReLU slopes 0.25. Convolutions
    use :func:`segmime_jax.models.convolution.conv_general_dilated` (a dilated one's kernel gradient as a
    matrix product; the others are plain ``lax.conv_general_dilated``).
    """

    rngs: nnx.Rngs
    dropout_rngs: nnx.RngStream
    kernel_init: Initializer
    bn_scale_init: Initializer
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def conv(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int = 1,
        padding: int | Sequence[tuple[int, int]] = 0,
        dilation: int = 1,
        use_bias: bool = True,
    ) -> nnx.Conv:
        ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        if isinstance(padding, int):
            padding = ((padding, padding), (padding, padding))
        return nnx.Conv(
            in_ch,
            out_ch,
            ks,
            strides=strides,
            padding=tuple(tuple(p) for p in padding),
            kernel_dilation=dilation,
            use_bias=use_bias,
            conv_general_dilated=conv_general_dilated,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            kernel_init=self.kernel_init,
            bias_init=torch_bias_init(in_ch * ks[0] * ks[1]),
            rngs=self.rngs,
        )

    def batch_norm(self, ch: int) -> nnx.BatchNorm:
        return nnx.BatchNorm(
            ch,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            scale_init=self.bn_scale_init,
            promote_dtype=_keep_dtypes,
            rngs=self.rngs,
        )

    def prelu(self) -> PReLU:
        return PReLU(param_dtype=self.param_dtype)

    def dropout(self, rate: float) -> nnx.Dropout:
        return nnx.Dropout(rate, rngs=self.dropout_rngs)


class ConvBlock(TorchNamed, nnx.Module):
    """conv → BatchNorm → activation; ``activation`` is "prelu", "relu" or "leaky_relu".

    PyTorch names of the three parts default to ``("0", "1", "2")`` (an ``nn.Sequential``).
    """

    def __init__(
        self,
        layers: LayerFactory,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int],
        *,
        activation: str = "prelu",
        torch_names: tuple[str, str, str] = ("0", "1", "2"),
        **conv_kwargs: Any,
    ):
        self.conv = layers.conv(in_ch, out_ch, kernel_size, **conv_kwargs)
        self.bn = layers.batch_norm(out_ch)
        self.act_name = activation
        self.prelu = layers.prelu() if activation == "prelu" else None
        self.torch_names = torch_names

    def torch_children(self) -> Iterator[tuple[str, Any]]:
        yield self.torch_names[0], self.conv
        yield self.torch_names[1], self.bn
        if self.prelu is not None:
            yield self.torch_names[2], self.prelu

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn(self.conv(x))
        if self.prelu is not None:
            return self.prelu(y)
        return make_activation(self.act_name)(y)


class ConvTranspose(nnx.Module):
    """PyTorch ``ConvTranspose2d(in, out, k, stride=2, padding=p, output_padding=op)`` on NHWC.

    Implemented as a convolution of the input dilated by 2 (``lhs_dilation``) with padding
    ``(k−1−p, k−1−p+op)`` on each spatial axis. A transposed convolution is the gradient of a
    convolution, so its PyTorch kernel ``w`` (layout ``in × out × kh × kw``) equals our HWIO kernel
    flipped in space: ``kernel[a, b, i, o] = w[i, o, k−1−a, k−1−b]`` (the importer does this).
    Its gradients go through :func:`segmime_jax.models.convolution.conv_general_dilated`, which gives the
    kernel gradient as the backward filter of the stride-2 convolution this layer is the adjoint of (jax's
    own form of it cost ResidualUNet 60 % of its float32 step on an H200).

    Initialisation is PyTorch's default for ``ConvTranspose2d``: kaiming-uniform with a=√5 on the
    ``in × out × kh × kw`` weight, whose fan_in PyTorch takes from dimension 1, i.e. ``out·kh·kw``:
    weight and bias both U(±1/sqrt(out·kh·kw)).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        *,
        padding: int = 1,
        output_padding: int = 1,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if output_padding >= 2:
            raise ValueError(f"output_padding must be smaller than the stride 2, got {output_padding}")
        lo = kernel_size - 1 - padding
        bound = 1.0 / math.sqrt(out_ch * kernel_size * kernel_size)
        self.conv = nnx.Conv(
            in_ch,
            out_ch,
            (kernel_size, kernel_size),
            strides=1,
            padding=((lo, lo + output_padding), (lo, lo + output_padding)),
            input_dilation=2,
            use_bias=True,
            conv_general_dilated=conv_general_dilated,
            dtype=dtype,
            param_dtype=param_dtype,
            kernel_init=uniform_init(bound),
            bias_init=uniform_init(bound),
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x)
