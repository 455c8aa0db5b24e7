"""Models by name: ``build_model("enet" | "residualunet", num_classes, rngs=...)``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx

from segmime_jax.models.enet import ENet
from segmime_jax.models.residualunet import ResidualUNet

__all__ = ["MODELS", "SIZE_MULTIPLES", "build_model", "check_input_size"]


def _enet(num_classes: int, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any, in_channels: int) -> ENet:
    if in_channels != 1:
        raise ValueError(
            f"ENet takes exactly one input channel (its initial block needs it), got in_channels={in_channels}"
        )
    return ENet(num_classes, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


def _residualunet(num_classes: int, *, rngs: nnx.Rngs, dtype: Any, param_dtype: Any, in_channels: int) -> ResidualUNet:
    return ResidualUNet(num_classes, in_channels, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


MODELS: Mapping[str, Callable[..., nnx.Module]] = MappingProxyType({"enet": _enet, "residualunet": _residualunet})
#: Input height and width must be multiples of these (ENet pools 3 times, the U-Net 4 times).
SIZE_MULTIPLES: Mapping[str, int] = MappingProxyType({"enet": 8, "residualunet": 16})


def check_input_size(name: str, size: int | tuple[int, int]) -> None:
    """Raise ValueError unless ``size`` (``H`` or ``(H, W)``) suits model ``name`` (see SIZE_MULTIPLES)."""
    multiple = SIZE_MULTIPLES[name.lower()]
    sizes = (size, size) if isinstance(size, int) else tuple(size)
    if any(s < multiple or s % multiple for s in sizes):
        shown = "x".join(map(str, sizes))
        raise ValueError(f"{name} needs an image size that is a multiple of {multiple}, got {shown}")


def build_model(
    name: str,
    num_classes: int,
    *,
    rngs: nnx.Rngs,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    in_channels: int = 1,
) -> nnx.Module:
    """Build ``"enet"`` or ``"residualunet"`` (case-insensitive) with ``num_classes`` output classes.

    ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``), ``param_dtype`` that of the parameters and
    BatchNorm statistics; the logits are float32 either way. Unknown names raise ValueError.
    """
    key = name.lower()
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODELS)}")
    return MODELS[key](num_classes, rngs=rngs, dtype=dtype, param_dtype=param_dtype, in_channels=in_channels)
