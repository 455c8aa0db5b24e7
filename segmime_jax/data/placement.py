"""Placing host data on devices, in one process or several: each process builds and sends only the rows of a
global array that its own devices hold (the rest of the multi-process set-up is :mod:`segmime_jax.distributed`
and :mod:`segmime_jax.train.sharding`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec


def fitting(sharding: jax.sharding.Sharding | None, size: int, *, axis: int = 0) -> jax.sharding.Sharding | None:
    """``sharding`` for an array whose axis ``axis`` (the batch axis: 1 for stacked runs) has ``size`` entries,
    or that axis left whole when ``sharding`` splits it over more devices than divide ``size`` (a trimmed last
    batch: every device then computes all of it)."""
    spec = tuple(sharding.spec) if isinstance(sharding, NamedSharding) else ()
    if len(spec) <= axis or spec[axis] is None:
        return sharding
    axes = spec[axis] if isinstance(spec[axis], tuple) else (spec[axis],)
    parts = int(np.prod([sharding.mesh.shape[a] for a in axes]))
    if size % parts == 0:
        return sharding
    kept = spec[:axis]  # the axes before it stay split; it and the ones after it whole
    return NamedSharding(sharding.mesh, PartitionSpec(*kept))


def place(array: np.ndarray, sharding: jax.sharding.Sharding | None) -> jax.Array:
    """A global array on ``sharding`` built in each process from the rows its devices hold (``array``: the whole
    array, the same in every process; ``None``: on the default device). See :func:`place_blocks`."""
    array = np.asarray(array)
    return place_blocks(array.shape, sharding, lambda where: array[where])


def place_blocks(
    shape: tuple[int, ...], sharding: jax.sharding.Sharding | None, block: Callable[[tuple[slice, ...]], np.ndarray]
) -> jax.Array:
    """A global array of ``shape`` on ``sharding`` of which each process builds only the blocks its own devices
    hold: ``block(index)`` returns the values at ``index`` (a tuple of slices, one per axis), e.g. the rows of one
    process's runs of a stacked batch.

    Returns:
      A ``jax.Array`` of ``shape``, sharded as ``sharding`` (``None``: on the default device).
    """
    if sharding is None:
        return jax.device_put(block(tuple(slice(0, n) for n in shape)))
    return jax.make_array_from_callback(shape, sharding, block)
