"""Data parallelism: a one-axis device mesh, the batch split on ``'data'``, the train state replicated; and
for stacked runs (:mod:`segmime_jax.train.stacked`) a two-axis mesh ``('runs', 'data')``.

Everything runs under global-view ``jax.jit``: the batch arrays carry a ``NamedSharding(mesh, P('data'))``,
the state a replicated ``NamedSharding(mesh, P())``, and XLA inserts the gradient all-reduce. BatchNorm
statistics are therefore computed over the *global* batch, exactly as on one device, so a run gives the
same numbers (to float32 rounding) on 1 or on 8 devices.

The mesh spans the devices of every process (:mod:`segmime_jax.distributed`); a process builds only the rows
of a global batch that its own devices hold (:func:`~segmime_jax.data.placement.place`).

Stacked runs carry a leading run axis on the state, the loss parameters and the batch, split over ``'runs'``
(:func:`runs_sharding`); each run's batch is further split over ``'data'`` where devices remain
(:func:`stacked_batch_sharding`). Runs never exchange anything, so the ``'runs'`` axis needs no communication.
"""

from __future__ import annotations

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


def make_data_mesh(num_devices: int | None = None, *, batch_sizes: Sequence[int] = ()) -> Mesh:
    """A mesh of ``num_devices`` devices on the axis ``'data'`` (automatic sharding propagation).

    With ``num_devices=None`` it takes the most devices that divide every size in ``batch_sizes`` (a
    fixed-shape batch must split evenly). In a multi-process run the mesh holds every process's devices, so
    ``num_devices`` must be all of them (``None`` or ``jax.device_count()``). ``jax.make_mesh`` defaults to
    *explicit* axis types in recent JAX; the axis is declared ``Auto`` here so that plain ``jax.jit``
    propagates the shardings.
    """
    available = jax.device_count()
    processes = jax.process_count()
    if num_devices is None:
        num_devices = available if processes > 1 else choose_num_devices(batch_sizes, available)
    if not 1 <= num_devices <= available:
        raise ValueError(f"num_devices={num_devices} but {available} device(s) are available")
    if processes > 1 and num_devices != available:
        raise ValueError(
            f"num_devices={num_devices}: a run over {processes} processes uses all {available} of their devices"
        )
    for size in batch_sizes:
        if size % num_devices:
            raise ValueError(f"batch size {size} is not divisible by the {num_devices} devices of the mesh")
    return jax.make_mesh(
        (num_devices,),
        (DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.devices()[:num_devices],
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``'data'``, the other axes whole."""
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


def make_runs_mesh(num_runs: int, num_devices: int | None = None, *, batch_sizes: Sequence[int] = ()) -> Mesh:
    """A ``('runs', 'data')`` mesh of ``num_devices`` local devices (default: all) for ``num_runs`` stacked runs.

    The ``'runs'`` axis takes the largest divisor of ``num_runs`` that fits in the devices (each device then holds
    ``num_runs / runs`` whole runs); ``'data'`` takes, of the devices left per run group, the most that divide
    every size in ``batch_sizes`` (:func:`choose_num_devices`). Devices left over after that stay unused.

    Args:
      num_runs: R, the length of the stacked run axis.
      num_devices: devices to spread over (``None``: every local device).
      batch_sizes: the global batch sizes one run's batches take (the ``'data'`` axis must divide them).

    Returns:
      A :class:`~jax.sharding.Mesh` with axes ``('runs', 'data')`` (``Auto`` axis types), of shape
      ``(runs, data)`` with ``runs`` dividing ``num_runs``.
    """
    available = jax.local_device_count()
    num_devices = available if num_devices is None else num_devices
    if not 1 <= num_devices <= available:
        raise ValueError(f"num_devices={num_devices} but {available} local device(s) are available")
    if num_runs < 1:
        raise ValueError(f"num_runs must be >= 1, got {num_runs}")
    runs = max(n for n in range(1, min(num_runs, num_devices) + 1) if num_runs % n == 0)
    data = choose_num_devices(batch_sizes, num_devices // runs)
    return jax.make_mesh(
        (runs, data),
        (RUNS_AXIS, DATA_AXIS),
        axis_types=(jax.sharding.AxisType.Auto,) * 2,
        devices=jax.local_devices()[: runs * data],
    )


def runs_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (run) axis split over ``'runs'``: each device holds its runs whole."""
    return NamedSharding(mesh, PartitionSpec(RUNS_AXIS))


def stacked_batch_sharding(mesh: Mesh, batch_size: int | None = None) -> NamedSharding:
    """A stacked batch ``(R, B, ...)``: runs over ``'runs'``, each run's batch over ``'data'`` (its batch axis
    whole when ``batch_size`` is given and ``'data'`` does not divide it, e.g. a trimmed last batch)."""
    sharding = NamedSharding(mesh, PartitionSpec(RUNS_AXIS, DATA_AXIS))
    return sharding if batch_size is None else fitting(sharding, batch_size, axis=1)


def shard_runs(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (every leaf with a leading run axis) placed with that axis split over ``'runs'``."""
    return jax.device_put(tree, runs_sharding(mesh))


def stack_runs(trees: Sequence[Any]) -> Any:
    """One pytree whose leaves are those of ``trees`` (same structure) stacked on a new leading run axis."""
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def run_slice(tree: Any, index: int) -> Any:
    """Run ``index`` of a stacked pytree (the leading axis taken off)."""
    return jax.tree.map(lambda x: x[index], tree)
