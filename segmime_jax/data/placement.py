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


def local_rows(sharding: jax.sharding.Sharding | None, size: int) -> slice:
    """The rows of a ``size``-row array that this process's devices hold under ``sharding`` (all rows for
    ``None``, a single-process sharding or a replicated one): the rows a process must build and feed."""
    if sharding is None or sharding.is_fully_addressable:
        return slice(0, size)
    spans = sorted(
        {
            (index[0] if index else slice(None)).indices(size)[:2]
            for index in sharding.addressable_devices_indices_map((size,)).values()
        }
    )
    start, covered = spans[0][0], spans[0][0]
    for first, end in spans:
        if first > covered:
            raise ValueError(f"the rows of this process under {sharding} are not contiguous")
        covered = max(covered, end)
    stop = covered
    return slice(start, stop)


def place(array: np.ndarray, sharding: jax.sharding.Sharding | None, *, global_rows: int | None = None) -> jax.Array:
    """A global array on ``sharding`` built in each process from the rows its devices hold.

    Args:
      array: the whole array (the same in every process); or, with ``global_rows``, only this process's rows
        of it, ``whole[local_rows(sharding, global_rows)]``: the input pipeline builds just those.
      sharding: where the array goes (``None``: the default device).
      global_rows: the leading size of the global array when ``array`` holds only the local rows.

    Returns:
      A ``jax.Array`` of the global shape, sharded as ``sharding``.
    """
    if sharding is None:
        return jax.device_put(array)
    if global_rows is None:
        if sharding.is_fully_addressable:
            return jax.device_put(array, sharding)
        if array.ndim == 0:
            return jax.make_array_from_process_local_data(sharding, array, ())
        global_rows = array.shape[0]
        array = array[local_rows(sharding, global_rows)]
    elif sharding.is_fully_addressable:
        return jax.device_put(array, sharding)
    return jax.make_array_from_process_local_data(sharding, array, (global_rows, *array.shape[1:]))


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
