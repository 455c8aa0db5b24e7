"""The jitted train and evaluation steps: pure functions of the :class:`~segmime_jax.train.state.TrainState`.

Train step ``(state, batch, key, loss_params) -> (state, metrics)``: optional on-device augmentation, forward
pass in train mode (BatchNorm on batch statistics, dropout reseeded from ``key``), softmax of the logits in
float32, the loss ``loss(loss_params, probs, onehot, mask=batch["mask"])``, gradients with respect to the
parameters, optimiser update and the new BatchNorm running statistics. Compiled once with ``jax.jit``; the
input state is donated (its buffers are reused for the output).

The loss is data: ``loss`` is a :class:`~segmime_jax.losses.params.LossProgram` (which terms to compute) and
``loss_params`` its per-run :class:`~segmime_jax.losses.params.LossParams` (term weights, mime weights, classes),
so one compiled step trains every loss of a grid. Any callable ``loss(params, probs, target, *, mask)`` works.

Evaluation step ``(state, batch, loss_params) -> stats``: forward pass in eval mode (running statistics, no
dropout), per-slice Dice counts, calibration counts, the batch loss and the argmax prediction.

Batches are dicts as produced by :mod:`segmime_jax.data.pipeline`: ``image`` float32 ``(B, H, W, 1)``,
``label`` int32 ``(B, H, W)``, ``mask`` bool ``(B,)`` (False on padding).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from segmime_jax.train import metrics as metrics_lib
from segmime_jax.train.sharding import replicated_sharding
from segmime_jax.train.state import TrainState

Batch = dict[str, jax.Array]
#: ``loss(params, probs, target, *, mask) -> scalar``, e.g. a :class:`~segmime_jax.losses.params.LossProgram`.
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
