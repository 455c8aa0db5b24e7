"""Where runs and batches live: a ``('runs', 'data')`` device mesh (:func:`make_mesh`); a stack of runs
(:mod:`segmime_jax.train.engine`) has its run axis split over ``'runs'`` and each run's batch over ``'data'``.

Everything runs under global-view ``jax.jit``: the batch arrays carry a ``NamedSharding(mesh, P('data'))``,
the state a replicated ``NamedSharding(mesh, P())``, and XLA inserts the gradient all-reduce. BatchNorm
statistics are therefore computed over the *global* batch, exactly as on one device, so a run gives the
same numbers (to float32 rounding) on 1 or on 8 devices.

The mesh spans the devices of every process (:mod:`segmime_jax.distributed`); a process builds only the rows
of a global batch that its own devices hold (:func:`~segmime_jax.data.placement.place`).

The runs of a stack carry a leading run axis on the state, the loss parameters and the batch, split over
``'runs'`` (:func:`runs_sharding`); each run's batch is further split over ``'data'`` where devices remain
(:func:`runs_batch_sharding`). Runs never exchange anything, so the ``'runs'`` axis needs no communication.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from segmime_jax.data.placement import fitting, place

DATA_AXIS = "data"
RUNS_AXIS = "runs"


def choose_num_devices(batch_sizes: Sequence[int], available: int | None = None) -> int:
    """The largest device count ≤ ``available`` (default: all devices) dividing every batch size."""
    available = jax.device_count() if available is None else available
    common = 0
    for size in batch_sizes:
        common = math.gcd(common, int(size))
    if common == 0:
        return available
    return max(n for n in range(1, available + 1) if common % n == 0)


def make_mesh(data: int | None = None, *, runs: int = 1, batch_sizes: Sequence[int] = ()) -> Mesh:
    """A ``('runs', 'data')`` mesh: ``runs`` groups of ``data`` devices, each group training its runs
    data-parallel (one run alone: ``runs=1``).

    Args:
      data: devices per group (``None``: of the devices available per group, the most that divide every size in
        ``batch_sizes``, :func:`choose_num_devices`; in a multi-process run, all of them).
      runs: device groups along ``'runs'``.
      batch_sizes: the global batch sizes of one run (``'data'`` must divide them: fixed-shape batches split
        evenly).

    Returns:
      A :class:`~jax.sharding.Mesh` of shape ``(runs, data)`` over the first ``runs * data`` devices of every
      process (:mod:`segmime_jax.distributed`). ``jax.make_mesh`` defaults to *explicit* axis types in recent JAX;
      the axes are declared ``Auto`` here so that plain ``jax.jit`` propagates the shardings.

    Raises:
      ValueError: more devices than available, a batch size ``data`` does not divide, or, over several
        processes, a mesh that leaves devices out (every process takes part in every step).
    """
    available, processes = jax.device_count(), jax.process_count()
    if not 1 <= runs <= available:
        raise ValueError(f"{runs} device group(s) for runs but {available} device(s) are available")
    if data is None:
        data = available // runs if processes > 1 else choose_num_devices(batch_sizes, available // runs)
    if not 1 <= data * runs <= available:
        raise ValueError(f"num_devices={data * runs} but {available} device(s) are available")
    if processes > 1 and data * runs != available:
        raise ValueError(
            f"num_devices={data * runs}: a run over {processes} processes uses all {available} of their devices"
        )
    for size in batch_sizes:
        if size % data:
            raise ValueError(f"batch size {size} is not divisible by the {data} devices of the mesh")
    return jax.make_mesh(
        (runs, data),
        (RUNS_AXIS, DATA_AXIS),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=jax.devices()[: runs * data],
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``'data'``, the other axes whole (and the array on every group of
    ``'runs'``: a batch the runs share, e.g. the validation batch)."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every array placed, whole, on every device of ``mesh`` (its values must be the same in
    every process of a multi-process run: each process places its own copy)."""
    sharding = replicated_sharding(mesh)
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)

    def put(x: Any) -> Any:
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return place(np.asarray(x), sharding)

    return jax.tree.map(put, tree)


def fitting_sharding(mesh: Mesh, size: int) -> NamedSharding:
    """The batch sharding for a leading axis of ``size``: split over ``'data'`` when the mesh divides it,
    replicated otherwise (a trimmed last batch: every device then computes the whole batch, the same result)."""
    return fitting(batch_sharding(mesh), size)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """``batch`` (host arrays, the same in every process) placed on ``mesh`` by :func:`fitting_sharding`."""

    def put(x: Any) -> Any:
        size = x.shape[0] if getattr(x, "ndim", 0) >= 1 else 0
        return place(np.asarray(x), fitting_sharding(mesh, size) if size else replicated_sharding(mesh))

    return jax.tree.map(put, batch)


def runs_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (run) axis split over ``'runs'``: each device holds its runs whole."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS))


def runs_batch_sharding(mesh: Mesh) -> NamedSharding:
    """The batches of a stack of runs, ``(R, B, ...)``: runs over ``'runs'``, each run's batch over ``'data'`` (the
    input pipeline keeps a batch axis that ``'data'`` does not divide whole: :func:`~segmime_jax.data.placement.
    fitting`)."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS, DATA_AXIS))


def shard_runs(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (every leaf with a leading run axis, the same values in every process) placed with that axis
    split over ``'runs'``."""
    return _stack_on(runs_sharding(mesh))(tree)


@functools.lru_cache(maxsize=16)
def _stack_on(sharding: NamedSharding) -> Any:
    return jax.jit(lambda tree: tree, out_shardings=sharding)


def stack_runs(trees: Sequence[Any]) -> Any:
    """One pytree whose leaves are those of ``trees`` (same structure) stacked on a new leading run axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def run_slice(tree: Any, index: int) -> Any:
    """Run ``index`` of a stacked pytree (the leading axis taken off)."""
    return jax.tree.map(lambda x: x[index], tree)
