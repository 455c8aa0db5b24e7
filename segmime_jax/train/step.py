"""The jitted train and evaluation steps: pure functions of the :class:`~segmime_jax.train.state.TrainState`.

Train step ``(state, batch, key, loss_params) -> (state, metrics)``: optional on-device augmentation, forward
pass in train mode (BatchNorm on batch statistics, dropout reseeded from ``key``), softmax of the logits in
float32, the loss ``loss(loss_params, probs, onehot, mask=batch["mask"])``, gradients with respect to the
parameters, optimiser update and the new BatchNorm running statistics. Compiled once with ``jax.jit``; the
input state is donated (its buffers are reused for the output).

The loss is data: ``loss`` is a :class:`~segmime_jax.losses.LossProgram` (which terms to compute) and
``loss_params`` its per-run :class:`~segmime_jax.losses.LossParams` (term weights, mime weights, classes),
so one compiled step trains every loss of a grid. Any callable ``loss(params, probs, target, *, mask)`` works.

Evaluation step ``(state, batch, loss_params) -> stats``: forward pass in eval mode (running statistics, no
dropout), per-slice Dice counts, calibration counts, the batch loss and the argmax prediction.

Batches are dicts as produced by :mod:`segmime_jax.data.pipeline`: ``image`` float32 ``(B, H, W, 1)``,
``label`` int32 ``(B, H, W)``, ``mask`` bool ``(B,)`` (False on padding).

A stack of R runs (:mod:`segmime_jax.train.engine`) trains with the same steps over a leading run axis on a
``('runs', 'data')`` mesh (:func:`make_runs_train_step`, :func:`make_runs_eval_step`, :func:`over_runs`): a
``jax.shard_map`` manual over ``'runs'`` only, so each device computes *its* runs, and each run's batch may
still be split over ``'data'``, where XLA adds the gradient and BatchNorm all-reduces within the run's devices.
Where a device holds one run, its program is the plain step above (the run axis taken off and put back: with
one group of devices, no ``shard_map``, the same computation bit for bit as the run alone; inside the
``shard_map``, to float32 rounding); where it holds several, ``jax.vmap`` maps the step over them (grouped
convolutions: another float computation). Runs exchange nothing. (Plain sharding
annotations on a vmapped step were tried first: XLA's SPMD partitioner then splits the grouped convolutions
that ``vmap`` makes of per-run weights, and fails on a convolution whose output channels do not split.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from segmime_jax.train import metrics as metrics_lib
from segmime_jax.train.sharding import RUNS_AXIS, replicated_sharding, runs_sharding
from segmime_jax.train.state import TrainState

Batch = dict[str, jax.Array]
#: ``loss(params, probs, target, *, mask) -> scalar``, e.g. a :class:`~segmime_jax.losses.LossProgram`.
ParametricLoss = Callable[..., jax.Array]


def probabilities(model: nnx.Module, image: jax.Array) -> jax.Array:
    """Softmax over the class axis of ``model(image)``, computed in float32 whatever the model's dtype."""
    logits = model(image)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)


def _reseed(model: nnx.Module, key: jax.Array) -> None:
    """Reseed the dropout streams (named ``dropout``, or ``default`` when built from ``nnx.Rngs(seed)``)."""
    dropout_key, default_key = jax.random.split(key)
    nnx.reseed(model, dropout=dropout_key, default=default_key)


def train_step_fn(
    tx: optax.GradientTransformation, loss: ParametricLoss, num_classes: int, *, augment: bool = False
) -> Callable[..., tuple[TrainState, dict]]:
    """The (un-jitted) train step; see the module docstring. Use :func:`make_train_step` to compile it."""
    if augment:
        from segmime_jax.data.augment import augment_batch
    else:
        augment_batch = None

    def train_step(
        state: TrainState, batch: Batch, key: jax.Array, loss_params: Any
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        model_key, augment_key = jax.random.split(key)
        image, label = batch["image"], batch["label"]
        if augment_batch is not None:
            image, label = augment_batch(augment_key, image, label)
        onehot = jax.nn.one_hot(label, num_classes, dtype=jnp.float32)
        mask = batch["mask"].astype(jnp.float32)

        def loss_of(params: nnx.State, batch_stats: nnx.State, rngs: nnx.State) -> tuple[jax.Array, nnx.State]:
            # Rebuild the non-differentiated states here (tree.map creates new variables) so that they belong
            # to the trace of jax.grad, where the forward pass updates them (BatchNorm statistics, RNG counts).
            batch_stats, rngs = jax.tree.map(lambda x: x, (batch_stats, rngs))
            model = nnx.merge(state.graphdef, params, batch_stats, rngs)
            model.train()
            _reseed(model, model_key)
            probs = probabilities(model, image)
            value = loss(loss_params, probs, onehot, mask=mask)
            return value.astype(jnp.float32), nnx.state(model, nnx.BatchStat)

        (value, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(
            state.params, state.batch_stats, state.rngs
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state, step=state.step + 1)
        # The loop stops the run when grad_norm is NaN/inf: a NaN gradient, or one so large (elements ~1e19) that
        # its norm overflows float32, i.e. a divergence. No separate isfinite pass: on a GPU each gradient
        # leaf's reduction would be a kernel of its own (~600 more launches per ENet step).
        return new_state, {"loss": value, "grad_norm": optax.tree.norm(grads)}

    return train_step


def make_train_step(
    tx: optax.GradientTransformation,
    loss: ParametricLoss,
    num_classes: int,
    *,
    augment: bool = False,
    mesh: Mesh | None = None,
) -> Callable[..., tuple[TrainState, dict]]:
    """``jax.jit`` of :func:`train_step_fn`, state donated; with ``mesh``, its outputs are replicated on it.

    The batch's own sharding (split on ``'data'``, see :mod:`segmime_jax.train.sharding`) drives the data
    parallelism; XLA adds the all-reduce of the gradients and of the BatchNorm batch statistics.
    """
    fn = train_step_fn(tx, loss, num_classes, augment=augment)
    if mesh is None:
        return jax.jit(fn, donate_argnums=(0,))
    replicated = replicated_sharding(mesh)
    return jax.jit(fn, donate_argnums=(0,), out_shardings=(replicated, replicated))


def eval_step_fn(
    loss: ParametricLoss, num_classes: int, *, num_bins: int = metrics_lib.NUM_BINS
) -> Callable[..., dict[str, Any]]:
    """The (un-jitted) evaluation step. Returns a dict of device arrays:

    ``loss`` the batch loss (padding excluded by the loss's mask), ``num_real`` the number of real slices,
    ``dice`` per-slice counts (:func:`~segmime_jax.train.metrics.dice_counts`, zero on padding),
    ``calibration`` per class and bin (:func:`~segmime_jax.train.metrics.calibration_counts`),
    ``prediction`` the argmax label map, uint8 ``(B, H, W)``.
    """

    def eval_step(state: TrainState, batch: Batch, loss_params: Any) -> dict[str, Any]:
        model = nnx.merge(state.graphdef, state.params, state.batch_stats, state.rngs)
        model.eval()
        probs = probabilities(model, batch["image"])
        onehot = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        prediction = jnp.argmax(probs, axis=-1)
        return {
            "loss": loss(loss_params, probs, onehot, mask=mask).astype(jnp.float32),
            "num_real": jnp.sum(mask),
            "dice": metrics_lib.dice_counts(prediction, batch["label"], num_classes, weights=mask),
            "calibration": metrics_lib.calibration_counts(probs, onehot, num_bins=num_bins, weights=mask),
            "prediction": prediction.astype(jnp.uint8),
        }

    return eval_step


def make_eval_step(
    loss: ParametricLoss, num_classes: int, *, num_bins: int = metrics_lib.NUM_BINS, mesh: Mesh | None = None
) -> Callable[..., dict[str, Any]]:
    """``jax.jit`` of :func:`eval_step_fn` (the state is not donated: it is reused); with ``mesh``, its outputs
    are replicated on it, so that every process of a multi-process run can read them whole."""
    fn = eval_step_fn(loss, num_classes, num_bins=num_bins)
    if mesh is None:
        return jax.jit(fn)
    return jax.jit(fn, out_shardings=replicated_sharding(mesh))


# --------------------------------------------------------------------------------------------- stacks of runs
def each_run(fn: Callable[..., Any], in_axes: tuple[int | None, ...]) -> Callable[..., Any]:
    """``fn`` over the leading run axis of the arguments whose ``in_axes`` entry is 0 (the others shared):
    ``fn`` itself on the run taken off the axis when there is one run, ``jax.vmap(fn)`` otherwise."""
    vmapped = jax.vmap(fn, in_axes=in_axes)

    def mapped(*args: Any) -> Any:
        runs = next(jax.tree.leaves(a)[0].shape[0] for a, axis in zip(args, in_axes, strict=True) if axis == 0)
        if runs > 1:
            return vmapped(*args)
        one = [jax.tree.map(lambda x: x[0], a) if axis == 0 else a for a, axis in zip(args, in_axes, strict=True)]
        return jax.tree.map(lambda x: x[None], fn(*one))

    return mapped


def over_runs(fn: Callable[..., Any], mesh: Mesh, in_axes: tuple[int | None, ...], *, donate: bool = False) -> Any:
    """``jax.jit`` of ``fn`` mapped over the runs of ``mesh``'s ``'runs'`` axis (see the module docstring).

    Args:
      fn: a one-run function; its outputs get the leading run axis.
      mesh: a ``('runs', 'data')`` mesh (:func:`~segmime_jax.train.sharding.make_mesh`); R must be a multiple of
        its ``'runs'`` size.
      in_axes: per argument, 0 (a leading run axis, split over ``'runs'``) or ``None`` (shared by the runs,
        e.g. the validation batch).
      donate: donate the first argument (the state) and return it split over ``'runs'``, the other outputs
        (small: losses, counts) on every device, for the host.

    Returns:
      The jitted function; outputs replicated on the mesh unless ``donate`` (see above).
    """
    specs = tuple(PartitionSpec(RUNS_AXIS) if axis == 0 else PartitionSpec() for axis in in_axes)
    # check_vma=False: jnp.searchsorted (the calibration bins) fails to trace on values that vary over a
    # manual axis (jax 0.10.2: AssertionError in its eval_shape); nothing here reduces over 'runs'.
    mapped = each_run(fn, in_axes)
    if mesh.shape[RUNS_AXIS] > 1:
        # (Not for one group of devices: there XLA compiles the step inside a shard_map with other float
        # rounding than the one-run program on some shapes, e.g. BatchNorm's mean over a trimmed batch of 3.)
        mapped = jax.shard_map(
            mapped,
            mesh=mesh,
            in_specs=specs,
            out_specs=PartitionSpec(RUNS_AXIS),
            axis_names={RUNS_AXIS},
            check_vma=False,
        )
    if donate:
        return jax.jit(mapped, donate_argnums=(0,), out_shardings=(runs_sharding(mesh), replicated_sharding(mesh)))
    return jax.jit(mapped, out_shardings=replicated_sharding(mesh))


def masked_train_step_fn(
    tx: optax.GradientTransformation, loss: ParametricLoss, num_classes: int, *, augment: bool = False
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """:func:`train_step_fn` with a fifth argument ``active`` (bool scalar): the new state where ``active`` and
    the loss and gradient norm are finite, the old one otherwise (a diverged or finished run of a stack is frozen
    while the others go on); ``metrics["updated"]`` says which."""
    step = train_step_fn(tx, loss, num_classes, augment=augment)

    def masked_step(
        state: TrainState, batch: Batch, key: jax.Array, loss_params: Any, active: jax.Array
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        new, metrics = step(state, batch, key, loss_params)
        keep = active & jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
        parts = ("params", "batch_stats", "opt_state", "step")
        # lax.cond, not jnp.where: a select fused into the update changes its float rounding (XLA:CPU, the
        # BatchNorm running mean); the conditional keeps the one-run step's arithmetic (under vmap it is a select).
        new_parts, old_parts = ({p: getattr(x, p) for p in parts} for x in (new, state))
        kept = jax.lax.cond(keep, lambda: new_parts, lambda: old_parts)
        return state.replace(**kept), {**metrics, "updated": keep}

    return masked_step


def make_runs_train_step(
    tx: optax.GradientTransformation, loss: ParametricLoss, num_classes: int, *, augment: bool = False, mesh: Mesh
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """The train step of a stack of runs: :func:`masked_train_step_fn` over the runs of ``mesh``.

    Returns:
      ``(state, batch, key, loss_params, active) -> (state, {"loss", "grad_norm", "updated"})``, state donated;
      every argument and output has the leading run axis R (``batch["image"]`` is ``(R, B, H, W, 1)``: each
      run gets its own batch, in its own seed's order; ``active`` is bool ``(R,)``).
    """
    return over_runs(masked_train_step_fn(tx, loss, num_classes, augment=augment), mesh, (0,) * 5, donate=True)


def make_runs_eval_step(loss: ParametricLoss, num_classes: int, *, mesh: Mesh) -> Callable[..., dict[str, Any]]:
    """The evaluation step (:func:`eval_step_fn`) of a stack of runs on one batch that the runs share.

    Returns:
      ``(state, batch, loss_params) -> stats``, each entry of ``stats`` with a leading run axis R.
    """
    return over_runs(eval_step_fn(loss, num_classes), mesh, (0, None, 0))
