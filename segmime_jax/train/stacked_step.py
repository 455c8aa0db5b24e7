"""Steps of R runs at once: the train step, the evaluation step and the gradient probe over a leading run axis.

The run axis is mapped with ``jax.vmap`` inside a ``jax.shard_map`` that is manual over the mesh axis
``'runs'`` only (:func:`~segmime_jax.train.sharding.make_runs_mesh`): each device maps over *its* runs, and
each run's batch may still be split over ``'data'``, where XLA adds the gradient and BatchNorm all-reduces
within the run's devices as in the one-run step. Runs exchange nothing. (Plain sharding annotations on a
vmapped step were tried first: XLA's SPMD partitioner then splits the grouped convolutions that ``vmap``
makes of per-run weights, and fails on a convolution whose output channels do not split, e.g. 3 classes.)

Stacked train step ``(state, batch, key, loss_params, active) -> (state, metrics)``, state donated:
every argument has the leading run axis R (``batch["image"]`` is ``(R, B, H, W, 1)``: each run gets its own
batch, in its own seed's order); ``active`` is bool ``(R,)``. For run r the new state is
:func:`~segmime_jax.train.step.train_step_fn`'s where ``active[r]`` and its loss and gradient norm are finite,
and the old state otherwise: a diverging or finished run is frozen while the others go on. ``metrics`` holds
``loss`` and ``grad_norm`` ``(R,)`` and ``updated`` (R,) bool, which runs took the step.

Stacked evaluation step and probe ``(state, batch, loss_params) -> outputs``: the batch has no run axis (the
validation and test data are the same for every run); each output gets a leading run axis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, PartitionSpec

from segmime_jax.train.sharding import RUNS_AXIS, runs_sharding
from segmime_jax.train.state import TrainState
from segmime_jax.train.step import ParametricLoss, eval_step_fn, train_step_fn
from segmime_jax.train.telemetry import gradient_probe_fn

_RUNS = PartitionSpec(RUNS_AXIS)
_SHARED = PartitionSpec()


def stacked_train_step_fn(
    tx: optax.GradientTransformation, loss: ParametricLoss, num_classes: int, *, augment: bool = False
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The (un-jitted, unsharded) stacked train step: ``jax.vmap`` of the masked one-run step.

    Args:
      tx: the optimiser structure (its hyperparameters are per-run leaves of each run's state).
      loss: the loss program shared by the runs; each run's :class:`~segmime_jax.losses.LossParams` are data.
      num_classes: K.
      augment: on-device augmentation, drawn from each run's own step key.

    Returns:
      ``(state, batch, key, loss_params, active) -> (state, {"loss", "grad_norm", "updated"})``, every argument
      and output with a leading run axis (see the module docstring).
    """
    step = train_step_fn(tx, loss, num_classes, augment=augment)

    def masked_step(
        state: TrainState, batch: dict[str, jax.Array], key: jax.Array, loss_params: Any, active: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        new, metrics = step(state, batch, key, loss_params)
        keep = active & jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        kept = jax.tree.map(
            lambda n, o: jnp.where(keep, n, o),
            (new.params, new.batch_stats, new.opt_state, new.step),
            (state.params, state.batch_stats, state.opt_state, state.step),
        )
        params, batch_stats, opt_state, count = kept
        new = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, step=count)
        return new, {**metrics, "updated": keep}

    return jax.vmap(masked_step)


def make_stacked_train_step(
    tx: optax.GradientTransformation,
    loss: ParametricLoss,
    num_classes: int,
    *,
    augment: bool = False,
    mesh: Mesh,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """``jax.jit`` of :func:`stacked_train_step_fn` mapped over ``mesh``'s ``'runs'`` axis, state donated.

    Args:
      tx, loss, num_classes, augment: as :func:`stacked_train_step_fn`.
      mesh: a ``('runs', 'data')`` mesh (:func:`~segmime_jax.train.sharding.make_runs_mesh`); R must be a
        multiple of its ``'runs'`` size.

    Returns:
      The jitted step; its outputs are split over ``'runs'``.
    """
    fn = stacked_train_step_fn(tx, loss, num_classes, augment=augment)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(_RUNS,) * 5, out_specs=_RUNS, axis_names={RUNS_AXIS})
    return jax.jit(mapped, donate_argnums=(0,), out_shardings=runs_sharding(mesh))


def _shared_batch(fn: Callable[..., Any], mesh: Mesh) -> Callable[..., Any]:
    """``jax.jit`` of ``fn(state, batch, loss_params)`` mapped over the runs of ``state`` and ``loss_params``,
    the batch shared by every run."""
    mapped = jax.vmap(fn, in_axes=(0, None, 0))
    # check_vma=False: jnp.searchsorted (the calibration bins) fails to trace on values that vary over a
    # manual axis (jax 0.10.2: AssertionError in its eval_shape); nothing here reduces over 'runs'.
    sharded = jax.shard_map(
        mapped, mesh=mesh, in_specs=(_RUNS, _SHARED, _RUNS), out_specs=_RUNS, axis_names={RUNS_AXIS}, check_vma=False
    )
    return jax.jit(sharded)


def make_stacked_eval_step(loss: ParametricLoss, num_classes: int, *, mesh: Mesh) -> Callable[..., dict[str, Any]]:
    """The evaluation step (:func:`~segmime_jax.train.step.eval_step_fn`) of R runs on one shared batch.

    Returns:
      ``(state, batch, loss_params) -> stats``, each entry of ``stats`` with a leading run axis R.
    """
    return _shared_batch(eval_step_fn(loss, num_classes), mesh)


def make_stacked_probe(loss: ParametricLoss, num_classes: int, *, mesh: Mesh) -> Callable[..., dict[str, Any]]:
    """The gradient probe (:func:`~segmime_jax.train.telemetry.make_gradient_probe`) of R runs on one batch.

    Returns:
      ``(state, batch, loss_params) -> outputs``, each with a leading run axis R.
    """
    return _shared_batch(gradient_probe_fn(loss, num_classes), mesh)
