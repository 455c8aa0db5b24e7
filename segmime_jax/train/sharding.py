"""Data parallelism: a one-axis device mesh, the batch split on ``'data'``, the train state replicated.

Everything runs under global-view ``jax.jit``: the batch arrays carry a ``NamedSharding(mesh, P('data'))``,
the state a replicated ``NamedSharding(mesh, P())``, and XLA inserts the gradient all-reduce. BatchNorm
statistics are therefore computed over the *global* batch, exactly as on one device, so a run gives the
same numbers (to float32 rounding) on 1 or on 8 devices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def choose_num_devices(batch_sizes: Sequence[int], available: int | None = None) -> int:
    """The largest device count ≤ ``available`` (default: all local devices) dividing every batch size."""
    available = jax.local_device_count() if available is None else available
    common = 0
    for size in batch_sizes:
        common = math.gcd(common, int(size))
    if common == 0:
        return available
    return max(n for n in range(1, available + 1) if common % n == 0)


def make_data_mesh(num_devices: int | None = None, *, batch_sizes: Sequence[int] = ()) -> Mesh:
    """A mesh of ``num_devices`` local devices on the axis ``'data'`` (automatic sharding propagation).

    With ``num_devices=None`` it takes the most local devices that divide every size in ``batch_sizes``
    (a fixed-shape batch must split evenly). ``jax.make_mesh`` defaults to *explicit* axis types in recent
    JAX; the axis is declared ``Auto`` here so that plain ``jax.jit`` propagates the shardings.
    """
    available = jax.local_device_count()
    if num_devices is None:
        num_devices = choose_num_devices(batch_sizes, available)
    if not 1 <= num_devices <= available:
        raise ValueError(f"num_devices={num_devices} but {available} local device(s) are available")
    for size in batch_sizes:
        if size % num_devices:
            raise ValueError(f"batch size {size} is not divisible by the {num_devices} devices of the mesh")
    return jax.make_mesh(
        (num_devices,),
        (DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.local_devices()[:num_devices],
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``'data'``, the other axes whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every array placed, whole, on every device of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """``batch`` with its arrays split on the leading axis over ``'data'`` (replicated when it does not divide).

    A batch whose size the mesh does not divide (a trimmed last batch) is replicated instead: every device
    then computes the whole batch, which gives the same result.
    """
    n = mesh.devices.size

    def put(x: Any) -> Any:
        divisible = getattr(x, "ndim", 0) >= 1 and x.shape[0] % n == 0
        return jax.device_put(x, batch_sharding(mesh) if divisible else replicated_sharding(mesh))

    return jax.tree.map(put, batch)
