"""Residual U-Net as in the paper's precursor code (LIVIAETS/boundary-loss ``networks.ResidualUNet``).

Channels-last: input (B, H, W, in_channels), H and W divisible by 16 → logits (B, H, W, num_classes),
float32. Base width 32; encoder and bridge use LeakyReLU(0.2), the decoder ReLU.

* ``conv_block(i→o)``: 3×3 conv (bias), BN, activation.
* Residual block CRC(i→o) (reference ``Conv_residual_conv``): c1 = conv_block(i→o);
  c2 = conv_block(o→o) → conv_block(o→o) → 3×3 conv → BN (no activation); out = conv_block(c1 + c2).
* Encoder: CRC 1→32 at H; max-pool; CRC 32→64; pool; CRC 64→128; pool; CRC 128→256; pool;
  bridge CRC 256→512 at H/16.
* Decoder level: transposed conv (k3, stride 2, padding 1, output_padding 1, bias), BN, ReLU (doubles
  H and W); skip = (up + encoder feature) / 2; CRC with ReLU. Widths 512→256→128→64→32.
* Head: 3×3 conv 32→num_classes.

Initialisation (the reference's ``init_weights``): conv kernels N(0, sqrt(2/(k·k·out))), BN scale 1 and
bias 0, conv biases PyTorch's default U(±1/sqrt(fan_in)); transposed convs keep PyTorch's default
(kaiming-uniform a=√5, see :class:`~segmime_jax.models.layers.ConvTranspose`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from segmime_jax.models.layers import (
    ConvBlock,
    ConvTranspose,
    LayerFactory,
    TorchNamed,
    dropout_stream,
    make_activation,
)
from segmime_jax.models.pooling import max_pool

__all__ = ["ResidualUNet"]

BASE_WIDTH = 32


class ResidualCore(TorchNamed, nnx.Module):
    """Reference ``conv_block_3``: conv_block → conv_block → 3×3 conv → BN (no activation)."""

    TORCH_NAMES = {"block0": "0", "block1": "1", "conv": "2", "bn": "3"}

    def __init__(self, layers: LayerFactory, ch: int, act: str):
        self.block0 = ConvBlock(layers, ch, ch, 3, padding=1, activation=act)
        self.block1 = ConvBlock(layers, ch, ch, 3, padding=1, activation=act)
        self.conv = layers.conv(ch, ch, 3, padding=1)
        self.bn = layers.batch_norm(ch)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(self.block1(self.block0(x))))


class ResidualBlock(TorchNamed, nnx.Module):
    """Reference ``Conv_residual_conv`` (CRC): c1 = block(x); out = block(c1 + core(c1))."""

    TORCH_NAMES = {"conv_1": "conv_1", "conv_2": "conv_2", "conv_3": "conv_3"}

    def __init__(self, layers: LayerFactory, in_ch: int, out_ch: int, act: str):
        self.conv_1 = ConvBlock(layers, in_ch, out_ch, 3, padding=1, activation=act)
        self.conv_2 = ResidualCore(layers, out_ch, act)
        self.conv_3 = ConvBlock(layers, out_ch, out_ch, 3, padding=1, activation=act)

    def __call__(self, x: jax.Array) -> jax.Array:
        c1 = self.conv_1(x)
        return self.conv_3(c1 + self.conv_2(c1))


class DecoderUp(TorchNamed, nnx.Module):
    """Reference ``conv_decod_block``: ConvTranspose2d(k3, s2, p1, op1) → BN → ReLU."""

    TORCH_NAMES = {"deconv": "0", "bn": "1"}

    def __init__(self, layers: LayerFactory, in_ch: int, out_ch: int, *, rngs: nnx.Rngs):
        self.deconv = ConvTranspose(
            in_ch, out_ch, 3, padding=1, output_padding=1, rngs=rngs, dtype=layers.dtype, param_dtype=layers.param_dtype
        )
        self.bn = layers.batch_norm(out_ch)

    def __call__(self, x: jax.Array) -> jax.Array:
        return make_activation("relu")(self.bn(self.deconv(x)))


class ResidualUNet(TorchNamed, nnx.Module):
    """Residual U-Net: (B, H, W, in_channels) → logits (B, H, W, num_classes), float32; H, W divisible by 16.

    Args:
        num_classes: number of output classes.
        in_channels: input channels (1 for the MRI slices).
        rngs: ``nnx.Rngs`` for the parameters (stream ``params`` or ``default``).
        dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters and BatchNorm statistics stay in
            ``param_dtype`` and the logits are returned in float32.
        param_dtype: parameter dtype.

    The model has no dropout; ``model.train()`` / ``model.eval()`` switch its BatchNorm layers.
    """

    TORCH_NAMES = {
        "down_1": "down_1",
        "down_2": "down_2",
        "down_3": "down_3",
        "down_4": "down_4",
        "bridge": "bridge",
        "deconv_1": "deconv_1",
        "up_1": "up_1",
        "deconv_2": "deconv_2",
        "up_2": "up_2",
        "deconv_3": "deconv_3",
        "up_3": "up_3",
        "deconv_4": "deconv_4",
        "up_4": "up_4",
        "out": "out",
    }

    def __init__(
        self,
        num_classes: int = 2,
        in_channels: int = 1,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.dtype = dtype
        w = BASE_WIDTH
        layers = LayerFactory(
            rngs=rngs,
            dropout_rngs=dropout_stream(rngs),  # unused: the model has no dropout
            kernel_init=jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
            bn_scale_init=jax.nn.initializers.ones,
            dtype=dtype,
            param_dtype=param_dtype,
        )
        enc, dec = "leaky_relu", "relu"
        self.down_1 = ResidualBlock(layers, in_channels, w, enc)
        self.down_2 = ResidualBlock(layers, w, 2 * w, enc)
        self.down_3 = ResidualBlock(layers, 2 * w, 4 * w, enc)
        self.down_4 = ResidualBlock(layers, 4 * w, 8 * w, enc)
        self.bridge = ResidualBlock(layers, 8 * w, 16 * w, enc)

        self.deconv_1 = DecoderUp(layers, 16 * w, 8 * w, rngs=rngs)
        self.up_1 = ResidualBlock(layers, 8 * w, 8 * w, dec)
        self.deconv_2 = DecoderUp(layers, 8 * w, 4 * w, rngs=rngs)
        self.up_2 = ResidualBlock(layers, 4 * w, 4 * w, dec)
        self.deconv_3 = DecoderUp(layers, 4 * w, 2 * w, rngs=rngs)
        self.up_3 = ResidualBlock(layers, 2 * w, 2 * w, dec)
        self.deconv_4 = DecoderUp(layers, 2 * w, w, rngs=rngs)
        self.up_4 = ResidualBlock(layers, w, w, dec)

        self.out = layers.conv(w, num_classes, 3, padding=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_channels or x.shape[1] % 16 or x.shape[2] % 16:
            raise ValueError(
                f"ResidualUNet expects input of shape (B, H, W, {self.in_channels}) with H and W divisible by 16, "
                f"got {tuple(x.shape)}"
            )
        x = x.astype(self.dtype)
        down_1 = self.down_1(x)
        down_2 = self.down_2(max_pool(down_1))
        down_3 = self.down_3(max_pool(down_2))
        down_4 = self.down_4(max_pool(down_3))
        x = self.bridge(max_pool(down_4))

        half = jnp.asarray(0.5, x.dtype)
        for level, skip in ((1, down_4), (2, down_3), (3, down_2), (4, down_1)):
            up = getattr(self, f"deconv_{level}")(x)
            x = getattr(self, f"up_{level}")((up + skip) * half)
        return self.out(x).astype(jnp.float32)

    def torch_dead_keys(self) -> dict[str, tuple[int, ...]]:
        """The reference ResidualUNet has no unused layers."""
        return {}
