"""ENet (Paszke et al. 2016) as in the paper's precursor code (LIVIAETS/boundary-loss ``networks.ENet``).

Channels-last: input (B, H, W, 1), H and W divisible by 8 → logits (B, H, W, num_classes), float32.
K = 16 kernels, projection factor 4 (a bottleneck's middle width is in/4), every conv has a bias unless
said, BatchNorm eps 1e-5 / PyTorch momentum 0.1, every PReLU ONE learnable slope (0.25), element-wise
dropout (``nnx.Dropout``, rng stream ``"dropout"``).

Layer by layer (the reference code, LIVIAETS/boundary-loss ``networks.py``): initial block (3×3 stride-2 conv 1→15
‖ 2×2 max-pool of the input → 16 ch, H/2); stage 1: DownSampling 16→64 + 4 × Normal(64, p=0.01); stage 2:
DownSampling 64→128, Normal, Dilated 2, Asym, Dilated 4, Normal, Dilated 8, Asym, Dilated 16 (p=0.1 for
Normal/Asym, 0.01 for Dilated); stage 3: the same without the DownSampling and ending in DilatedLast 128→64 (d=16);
decoder: max-unpool with stage-2 indices, UpSampling(128→64) of [unpooled ‖ stage-1 output], PReLU(sum),
Normal(64,64), Normal(64,16) (1×1 shortcut), max-unpool with stage-1 indices, UpSampling(32→16) of [unpooled ‖
initial output], Normal(16,16), PReLU(sum), nearest ×2, two [3×3 conv (no bias), BN, PReLU] 16→16, 1×1 conv
16→num_classes.

Initialisation (the reference's ``random_weights_init``): conv kernels Xavier normal (untruncated),
BatchNorm scale N(1, 0.02) and bias 0, conv biases PyTorch's default U(±1/sqrt(fan_in)), PReLU 0.25.

The reference model also holds layers its forward pass never uses (``out_025``, ``out_05`` and the
``PReLU3`` of both ``BottleNeckUpSampling`` blocks); they are not built here (see
:data:`ENET_DEAD_TORCH_KEYS`), hence 458,281 trainable parameters for 4 classes instead of PyTorch's
463,475.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from segmime_jax.models.layers import (
    ConvBlock,
    LayerFactory,
    TorchNamed,
    dropout_stream,
    normal_init,
    upsample_nearest2,
    xavier_normal_init,
)
from segmime_jax.models.pooling import max_pool, max_pool_with_argmax, max_unpool

__all__ = ["ENet", "ENetEncoding", "enet_dead_torch_keys"]

PROJECTION = 4
KERNELS = 16


def enet_dead_torch_keys(num_classes: int) -> dict[str, tuple[int, ...]]:
    """State-dict entries of the reference ENet that its forward pass never uses (key → PyTorch shape)."""
    k = KERNELS
    return {
        "bottleNeck_Up_1_0.PReLU3.weight": (1,),
        "bottleNeck_Up_2_1.PReLU3.weight": (1,),
        "out_025.weight": (num_classes, 8 * k, 3, 3),
        "out_025.bias": (num_classes,),
        "out_05.weight": (num_classes, k, 3, 3),
        "out_05.bias": (num_classes,),
    }


class ENetEncoding(NamedTuple):
    """What the ENet decoder needs from the encoder (:meth:`ENet.encode`)."""

    features: jax.Array  # stage-3 output, (B, H/8, W/8, 64)
    initial: jax.Array  # initial-block output, (B, H/2, W/2, 16)
    stage1: jax.Array  # stage-1 output, (B, H/4, W/4, 64)
    indices1: jax.Array  # max-pool window indices of stage 1.0, (B, H/4, W/4, 16), int8
    indices2: jax.Array  # max-pool window indices of stage 2.0, (B, H/8, W/8, 64), int8


class InitialBlock(TorchNamed, nnx.Module):
    """3×3 stride-2 conv 1→15, concatenated with the 2×2 max-pool of the input → 16 channels at H/2."""

    TORCH_NAMES = {"conv": "conv0"}

    def __init__(self, layers: LayerFactory):
        self.conv = layers.conv(1, KERNELS - 1, 3, strides=2, padding=1)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([self.conv(x), max_pool(x)], axis=-1)


class DownSampling(TorchNamed, nnx.Module):
    """Reference ``BottleNeckDownSampling``: returns (output, max-pool window indices)."""

    TORCH_NAMES = {"block0": "", "block1": "", "block2": "block2", "prelu_out": "PReLU3"}

    def __init__(self, layers: LayerFactory, in_ch: int, out_ch: int):
        mid = in_ch // PROJECTION
        self.out_ch = out_ch
        self.block0 = ConvBlock(layers, in_ch, mid, 2, strides=2, torch_names=("conv0", "bn0", "PReLU0"))
        self.block1 = ConvBlock(layers, mid, mid, 3, padding=1, torch_names=("conv1", "bn1", "PReLU1"))
        self.block2 = ConvBlock(layers, mid, out_ch, 1)
        self.dropout = layers.dropout(0.01)
        self.prelu_out = layers.prelu()

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        main, indices = max_pool_with_argmax(x)
        side = self.dropout(self.block2(self.block1(self.block0(x))))
        main = jnp.pad(main, ((0, 0), (0, 0), (0, 0), (0, self.out_ch - x.shape[-1])))
        return self.prelu_out(main + side), indices


class AsymBlock(TorchNamed, nnx.Module):
    """Reference ``conv_block_Asym``: conv 5×1 (pad 2,0) → conv 1×5 (pad 0,2) → BN → PReLU."""

    TORCH_NAMES = {"conv_v": "0", "conv_h": "1", "bn": "2", "prelu": "3"}

    def __init__(self, layers: LayerFactory, ch: int):
        self.conv_v = layers.conv(ch, ch, (5, 1), padding=((2, 2), (0, 0)))
        self.conv_h = layers.conv(ch, ch, (1, 5), padding=((0, 0), (2, 2)))
        self.bn = layers.batch_norm(ch)
        self.prelu = layers.prelu()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.prelu(self.bn(self.conv_h(self.conv_v(x))))


class Normal(TorchNamed, nnx.Module):
    """Reference ``BottleNeckNormal`` (or ``BottleNeckNormal_Asym`` with ``asym=True``).

    1×1 in→mid, 3×3 (or 5×1/1×5) mid→mid, 1×1 mid→out blocks, dropout ``rate``; shortcut identity, or
    a 1×1 conv+BN+PReLU block when in > out; output PReLU(shortcut + branch).
    """

    TORCH_NAMES = {
        "block0": "block0",
        "block1": "block1",
        "block2": "block2",
        "prelu_out": "PReLU_out",
        "shortcut": "conv_out",
    }

    def __init__(self, layers: LayerFactory, in_ch: int, out_ch: int, rate: float, *, asym: bool = False):
        mid = in_ch // PROJECTION
        self.block0 = ConvBlock(layers, in_ch, mid, 1)
        self.block1 = AsymBlock(layers, mid) if asym else ConvBlock(layers, mid, mid, 3, padding=1)
        self.block2 = ConvBlock(layers, mid, out_ch, 1)
        self.dropout = layers.dropout(rate)
        self.prelu_out = layers.prelu()
        self.shortcut = ConvBlock(layers, in_ch, out_ch, 1) if in_ch > out_ch else None

    def __call__(self, x: jax.Array) -> jax.Array:
        branch = self.dropout(self.block2(self.block1(self.block0(x))))
        main = self.shortcut(x) if self.shortcut is not None else x
        return self.prelu_out(main + branch)


class Dilated(TorchNamed, nnx.Module):
    """Reference ``BottleNeckDownSamplingDilatedConv`` (``last=False``, in = out, identity shortcut) or
    ``BottleNeckDownSamplingDilatedConvLast`` (``last=True``: shortcut a plain 3×3 conv in→out).

    1×1 in→mid block; 3×3 conv with dilation d (padding d), BN, PReLU; 1×1 mid→out block; dropout 0.01;
    output PReLU(shortcut + branch).
    """

    TORCH_NAMES = {"block0": "block0", "block1": "", "block2": "block2", "shortcut": "conv_out", "prelu_out": "PReLU3"}

    def __init__(self, layers: LayerFactory, in_ch: int, out_ch: int, dilation: int, *, last: bool = False):
        if not last and in_ch != out_ch:
            raise ValueError(f"a non-final dilated bottleneck keeps its width, got {in_ch}→{out_ch}")
        mid = in_ch // PROJECTION
        self.block0 = ConvBlock(layers, in_ch, mid, 1)
        self.block1 = ConvBlock(
            layers, mid, mid, 3, padding=dilation, dilation=dilation, torch_names=("conv1", "bn1", "PReLU1")
        )
        self.block2 = ConvBlock(layers, mid, out_ch, 1)
        self.dropout = layers.dropout(0.01)
        self.shortcut = layers.conv(in_ch, out_ch, 3, padding=1) if last else None
        self.prelu_out = layers.prelu()

    def __call__(self, x: jax.Array) -> jax.Array:
        branch = self.dropout(self.block2(self.block1(self.block0(x))))
        main = self.shortcut(x) if self.shortcut is not None else x
        return self.prelu_out(main + branch)


class UpSampling(TorchNamed, nnx.Module):
    """Reference ``BottleNeckUpSampling``: 3×3 in→mid, 3×3 mid→mid, 1×1 mid→out blocks, dropout 0.01.

    No residual and no final activation here: the caller adds the unpooled tensor and applies a
    PReLU (the reference's own ``PReLU3`` is never called, so it is not built).
    """

    TORCH_NAMES = {"block0": "", "block1": "", "block2": "block2"}

    def __init__(self, layers: LayerFactory, in_ch: int, out_ch: int):
        mid = in_ch // PROJECTION
        self.block0 = ConvBlock(layers, in_ch, mid, 3, padding=1, torch_names=("conv0", "bn0", "PReLU0"))
        self.block1 = ConvBlock(layers, mid, mid, 3, padding=1, torch_names=("conv1", "bn1", "PReLU1"))
        self.block2 = ConvBlock(layers, mid, out_ch, 1)
        self.dropout = layers.dropout(0.01)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.dropout(self.block2(self.block1(self.block0(x))))


class UpsampleHead(TorchNamed, nnx.Module):
    """Reference ``upSampleConv(16, 16)``: nearest ×2, then two [3×3 conv (no bias), BN, PReLU]."""

    TORCH_NAMES = {"block1": "1", "block2": "2"}

    def __init__(self, layers: LayerFactory, ch: int):
        self.block1 = ConvBlock(layers, ch, ch, 3, padding=1, use_bias=False)
        self.block2 = ConvBlock(layers, ch, ch, 3, padding=1, use_bias=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.block2(self.block1(upsample_nearest2(x)))


class ENet(TorchNamed, nnx.Module):
    """ENet for single-channel 2D slices: (B, H, W, 1) → logits (B, H, W, num_classes), float32.

    Args:
        num_classes: number of output classes (4 for ACDC, 2 for PROMISE12).
        rngs: ``nnx.Rngs``; parameters come from its ``params`` (or ``default``) stream, dropout masks
            from a stream tagged ``"dropout"`` forked from ``rngs.dropout`` (or ``default``/``params``),
            so ``nnx.reseed(model, dropout=key)`` reseeds every dropout layer.
        dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters and BatchNorm statistics stay in
            ``param_dtype`` and the logits are returned in float32.
        param_dtype: parameter dtype.

    A new model is in training mode (batch statistics, dropout on), like a PyTorch module;
    ``model.eval()`` / ``model.train()`` switch BatchNorm and dropout together.
    """

    TORCH_NAMES = {
        "initial": "",
        "bottleneck1_0": "bottleNeck1_0",
        "bottleneck1_1": "bottleNeck1_1",
        "bottleneck1_2": "bottleNeck1_2",
        "bottleneck1_3": "bottleNeck1_3",
        "bottleneck1_4": "bottleNeck1_4",
        **{f"bottleneck2_{i}": f"bottleNeck2_{i}" for i in range(9)},
        **{f"bottleneck3_{i}": f"bottleNeck3_{i}" for i in range(1, 9)},
        "up1_0": "bottleNeck_Up_1_0",
        "prelu_up1": "PReLU_Up_1",
        "up1_1": "bottleNeck_Up_1_1",
        "up1_2": "bottleNeck_Up_1_2",
        "up2_1": "bottleNeck_Up_2_1",
        "up2_2": "bottleNeck_Up_2_2",
        "prelu_up2": "PReLU_Up_2",
        "head": "deconv3",
        "final": "final",
    }

    def __init__(
        self,
        num_classes: int = 4,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.dtype = dtype
        k = KERNELS
        layers = LayerFactory(
            rngs=rngs,
            dropout_rngs=dropout_stream(rngs),
            kernel_init=xavier_normal_init(),
            bn_scale_init=normal_init(0.02, mean=1.0),
            dtype=dtype,
            param_dtype=param_dtype,
        )
        self.initial = InitialBlock(layers)

        self.bottleneck1_0 = DownSampling(layers, k, 4 * k)
        self.bottleneck1_1 = Normal(layers, 4 * k, 4 * k, 0.01)
        self.bottleneck1_2 = Normal(layers, 4 * k, 4 * k, 0.01)
        self.bottleneck1_3 = Normal(layers, 4 * k, 4 * k, 0.01)
        self.bottleneck1_4 = Normal(layers, 4 * k, 4 * k, 0.01)

        self.bottleneck2_0 = DownSampling(layers, 4 * k, 8 * k)
        for stage in (2, 3):
            setattr(self, f"bottleneck{stage}_1", Normal(layers, 8 * k, 8 * k, 0.1))
            setattr(self, f"bottleneck{stage}_2", Dilated(layers, 8 * k, 8 * k, 2))
            setattr(self, f"bottleneck{stage}_3", Normal(layers, 8 * k, 8 * k, 0.1, asym=True))
            setattr(self, f"bottleneck{stage}_4", Dilated(layers, 8 * k, 8 * k, 4))
            setattr(self, f"bottleneck{stage}_5", Normal(layers, 8 * k, 8 * k, 0.1))
            setattr(self, f"bottleneck{stage}_6", Dilated(layers, 8 * k, 8 * k, 8))
            setattr(self, f"bottleneck{stage}_7", Normal(layers, 8 * k, 8 * k, 0.1, asym=True))
            last = stage == 3  # 3.8 is DilatedLast 128 → 64 with a 3×3 conv shortcut
            setattr(self, f"bottleneck{stage}_8", Dilated(layers, 8 * k, (4 if last else 8) * k, 16, last=last))

        self.up1_0 = UpSampling(layers, 8 * k, 4 * k)
        self.prelu_up1 = layers.prelu()
        self.up1_1 = Normal(layers, 4 * k, 4 * k, 0.1)
        self.up1_2 = Normal(layers, 4 * k, k, 0.1)

        self.up2_1 = UpSampling(layers, 2 * k, k)
        self.up2_2 = Normal(layers, k, k, 0.1)
        self.prelu_up2 = layers.prelu()

        self.head = UpsampleHead(layers, k)
        self.final = layers.conv(k, num_classes, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        """Logits (B, H, W, num_classes), float32, of an input (B, H, W, 1) with H, W divisible by 8."""
        return self.decode(self.encode(x))

    def encode(self, x: jax.Array) -> ENetEncoding:
        """Initial block and stages 1-3 (in the compute dtype)."""
        if x.ndim != 4 or x.shape[-1] != 1 or x.shape[1] % 8 or x.shape[2] % 8:
            raise ValueError(
                f"ENet expects input of shape (B, H, W, 1) with H and W divisible by 8, got {tuple(x.shape)}"
            )
        x = x.astype(self.dtype)
        initial = self.initial(x)

        x, indices1 = self.bottleneck1_0(initial)
        for i in range(1, 5):
            x = getattr(self, f"bottleneck1_{i}")(x)
        stage1 = x

        x, indices2 = self.bottleneck2_0(x)
        for i in range(1, 9):
            x = getattr(self, f"bottleneck2_{i}")(x)
        for i in range(1, 9):
            x = getattr(self, f"bottleneck3_{i}")(x)
        return ENetEncoding(x, initial, stage1, indices1, indices2)

    def decode(self, enc: ENetEncoding) -> jax.Array:
        """Decoder: max-unpooling with the encoder's indices, up-sampling bottlenecks, head → float32 logits."""
        unpooled = max_unpool(enc.features, enc.indices2)
        x = self.prelu_up1(unpooled + self.up1_0(jnp.concatenate([unpooled, enc.stage1], axis=-1)))
        x = self.up1_2(self.up1_1(x))

        unpooled = max_unpool(x, enc.indices1)
        x = self.up2_2(self.up2_1(jnp.concatenate([unpooled, enc.initial], axis=-1)))
        x = self.prelu_up2(unpooled + x)

        return self.final(self.head(x)).astype(jnp.float32)

    def torch_dead_keys(self) -> dict[str, tuple[int, ...]]:
        """Reference state-dict entries without a counterpart here (skipped on import, absent on export)."""
        return enet_dead_torch_keys(self.num_classes)
