"""Import and export weights in the reference PyTorch ``state_dict`` key scheme.

Dump a PyTorch model (e.g. LIVIAETS/boundary-loss ``networks.ENet(1, 4)``) to an ``.npz`` file::

    import numpy as np, torch
    sd = torch_model.state_dict()
    np.savez("enet.npz", **{k: v.cpu().numpy() for k, v in sd.items()})

and load it into the Flax model::

    import numpy as np
    from flax import nnx
    from segmime_jax.models import ENet, load_torch_state_dict

    model = ENet(4, rngs=nnx.Rngs(0))
    with np.load("enet.npz") as sd:
        load_torch_state_dict(model, sd)
    model.eval()  # inference with the imported running statistics

Keys and layouts: conv weights ``out×in×kh×kw`` (OIHW) become HWIO kernels; transposed-conv weights
``in×out×kh×kw`` become the spatially flipped HWIO kernel of the equivalent dilated convolution;
BatchNorm ``weight``/``bias``/``running_mean``/``running_var`` become ``scale``/``bias``/``mean``/``var``;
PReLU ``weight`` (shape (1,)) is copied. ``num_batches_tracked`` entries are accepted and ignored (the
Flax BatchNorm uses a fixed momentum). The reference ENet's unused layers (``out_025``, ``out_05`` and
the ``PReLU3`` of the two up-sampling bottlenecks) are skipped on import and absent from the export.

Going back: ``export_torch_state_dict(model)`` returns the same keys (float32 numpy arrays in PyTorch
layout, in the reference's state-dict order) without the unused ENet layers and without
``num_batches_tracked``. Back in PyTorch::

    sd = {k: torch.from_numpy(v) for k, v in export_torch_state_dict(model).items()}
    torch_resunet.load_state_dict(sd)             # strict works: BatchNorm keeps its own num_batches_tracked
    torch_enet.load_state_dict(sd, strict=False)  # missing keys: exactly the unused out_025, out_05, PReLU3
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from segmime_jax.models.layers import ConvTranspose, PReLU

__all__ = ["export_torch_state_dict", "load_torch_state_dict", "torch_entries"]

# Layouts of a Flax variable relative to its PyTorch tensor.
PLAIN, CONV, CONV_TRANSPOSE = "plain", "conv", "conv_transpose"


def torch_entries(module: Any, prefix: str = "") -> Iterator[tuple[str, nnx.Variable, str]]:
    """Yield ``(torch_key, variable, layout)`` for every tensor of the reference state dict we hold.

    Leaves are ``nnx.Conv``, ``nnx.BatchNorm``, :class:`PReLU` and :class:`ConvTranspose`; composite
    modules describe their children through ``torch_children()`` (see ``layers.TorchNamed``).
    """
    if isinstance(module, ConvTranspose):
        yield prefix + "weight", module.conv.kernel, CONV_TRANSPOSE
        yield prefix + "bias", module.conv.bias, PLAIN
    elif isinstance(module, nnx.Conv):
        yield prefix + "weight", module.kernel, CONV
        if module.bias is not None:
            yield prefix + "bias", module.bias, PLAIN
    elif isinstance(module, nnx.BatchNorm):
        yield prefix + "weight", module.scale, PLAIN
        yield prefix + "bias", module.bias, PLAIN
        yield prefix + "running_mean", module.mean, PLAIN
        yield prefix + "running_var", module.var, PLAIN
    elif isinstance(module, PReLU):
        yield prefix + "weight", module.weight, PLAIN
    elif hasattr(module, "torch_children"):
        for name, child in module.torch_children():
            yield from torch_entries(child, prefix + name + "." if name else prefix)
    else:
        raise TypeError(f"no PyTorch naming for {type(module).__name__} at {prefix!r}")


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == PLAIN:
        return tuple(shape)
    kh, kw, i, o = shape
    return (o, i, kh, kw) if layout == CONV else (i, o, kh, kw)


def _from_torch(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == PLAIN:
        return value
    hwxx = value.transpose(2, 3, 1, 0) if layout == CONV else value.transpose(2, 3, 0, 1)
    return hwxx if layout == CONV else hwxx[::-1, ::-1]


def _to_torch(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == PLAIN:
        return value
    if layout == CONV:
        return value.transpose(3, 2, 0, 1)
    return value[::-1, ::-1].transpose(2, 3, 0, 1)


def _entries(model: nnx.Module) -> dict[str, tuple[nnx.Variable, str]]:
    entries: dict[str, tuple[nnx.Variable, str]] = {}
    for key, var, layout in torch_entries(model):
        if key in entries:
            raise RuntimeError(f"duplicate PyTorch key {key!r} in {type(model).__name__}")
        entries[key] = (var, layout)
    return entries


def load_torch_state_dict(model: nnx.Module, state_dict: Mapping[str, Any]) -> None:
    """Fill ``model`` (ENet or ResidualUNet) in place from a reference PyTorch ``state_dict``.

    ``state_dict`` maps the reference keys (e.g. ``bottleNeck1_0.conv0.weight``) to arrays in PyTorch
    layout: numpy arrays, an ``np.load("file.npz")`` object, or CPU torch tensors. Parameters and
    BatchNorm running statistics are set; values are cast to each variable's dtype. Nothing is
    changed unless the whole dict matches: missing keys, unexpected keys and shape mismatches are all
    reported in one ``ValueError``. Skipped silently: ``*.num_batches_tracked`` of our BatchNorm layers
    and the reference ENet's unused layers (``model.torch_dead_keys()``).

    See the module docstring for how to dump a PyTorch model to ``.npz``.
    """
    entries = _entries(model)
    dead = set(model.torch_dead_keys()) if hasattr(model, "torch_dead_keys") else set()
    counters = {key[: -len("running_mean")] + "num_batches_tracked" for key in entries if key.endswith(".running_mean")}
    given = list(state_dict.keys())

    missing = [key for key in entries if key not in state_dict]
    unexpected = [key for key in given if key not in entries and key not in dead and key not in counters]
    mismatched = []
    converted: dict[str, np.ndarray] = {}
    for key, (var, layout) in entries.items():
        if key not in state_dict:
            continue
        value = np.asarray(state_dict[key])
        expected = _torch_shape(var.shape, layout)
        if value.shape != expected:
            mismatched.append(f"{key}: expected {expected}, got {value.shape}")
            continue
        converted[key] = np.ascontiguousarray(_from_torch(value, layout))

    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s): {', '.join(missing)}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s): {', '.join(unexpected)}")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es) (PyTorch layout): {'; '.join(mismatched)}")
        raise ValueError(
            f"state_dict does not match {type(model).__name__}"
            f"({getattr(model, 'num_classes', '?')} classes): " + " | ".join(problems)
        )

    for key, (var, _) in entries.items():
        var.set_value(jnp.asarray(converted[key], dtype=var.get_value().dtype))


def export_torch_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
    """The model's parameters and BatchNorm statistics under the reference PyTorch keys.

    Returns float32 (or ``param_dtype``) numpy arrays in PyTorch layout, in the reference's state-dict
    order, without ``num_batches_tracked`` and without the reference ENet's unused layers
    (``out_025``, ``out_05``, ``bottleNeck_Up_*.PReLU3``): load it into PyTorch with ``strict=False``.
    ``load_torch_state_dict(model, export_torch_state_dict(model))`` is an exact round trip.
    """
    return {
        key: np.ascontiguousarray(_to_torch(np.asarray(var.get_value()), layout))
        for key, (var, layout) in _entries(model).items()
    }
