"""Gradient telemetry (our extension): what the loss's gradient with respect to the probabilities looks like
during training.

Once per epoch, on a fixed validation batch, the model's eval-mode probabilities ``s`` are computed and the
gradient ``∂L/∂s`` of the training loss is taken (:func:`segmime_jax.gradients.loss_gradient`: paper §2.2,
Figure 1, looks at the gradient with respect to the probabilities, not the logits). Logged per epoch:

- ``dynamic_range_db``: largest over smallest non-zero gradient magnitude over the whole batch (all images and
  classes pooled), in dB (``10·log10``, the ``"power"`` convention of
  :func:`segmime_jax.gradients.dynamic_range_db`);
- ``image_dynamic_range_db_median`` / ``_max``, per class: the range of each (image, class) map, the paper's
  figure (Figure 1 is one image and one class), as median and maximum over the batch's images;
- per class k (background included, index 0): ``class_dynamic_range_db`` (the batch's images pooled), and on
  the pixels labelled k
  (``fg``) and the others (``bg``): the median value, the number of distinct values, min and max.
  For the Dice loss each (image, class) has two distinct values (Eq. 6); for the mime ``−a`` and ``b``;
  for the cross-entropy as many as there are probabilities on the ground truth, and 0 elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from segmime_jax.gradients import dynamic_range_db, loss_gradient
from segmime_jax.train.sharding import replicated_sharding
from segmime_jax.train.state import TrainState
from segmime_jax.train.step import ParametricLoss, probabilities


def make_gradient_probe(
    loss: ParametricLoss, num_classes: int, *, mesh: Mesh | None = None
) -> Callable[..., dict[str, jax.Array]]:
    """A jitted ``(state, batch, loss_params) -> {"grad", "onehot", "dynamic_range_db", ...}``.

    ``grad`` is ``∂loss/∂probs`` ``(B, H, W, K)`` at the eval-mode probabilities of ``batch``, for the loss
    ``loss(loss_params, ...)`` (see :mod:`segmime_jax.train.step`). With ``mesh``, the outputs are replicated
    on it (readable whole in every process).
    """
    probe = gradient_probe_fn(loss, num_classes)
    if mesh is None:
        return jax.jit(probe)
    return jax.jit(probe, out_shardings=replicated_sharding(mesh))


def gradient_probe_fn(loss: ParametricLoss, num_classes: int) -> Callable[..., dict[str, jax.Array]]:
    """The (un-jitted) probe of :func:`make_gradient_probe`."""

    def probe(state: TrainState, batch: dict, loss_params: Any) -> dict[str, jax.Array]:
        model = nnx.merge(state.graphdef, state.params, state.batch_stats, state.rngs)
        model.eval()
        probs = probabilities(model, batch["image"])
        onehot = jax.nn.one_hot(batch["label"], num_classes, dtype=jnp.float32)
        mask = batch["mask"].astype(jnp.float32)
        grad = loss_gradient(lambda p, t, mask: loss(loss_params, p, t, mask=mask), probs, onehot, mask=mask)
        real = (mask > 0).reshape((-1,) + (1,) * (grad.ndim - 1))
        per_class = jnp.stack(
            [
                dynamic_range_db(grad[..., k], mask=jnp.broadcast_to(real[..., 0], grad.shape[:-1]))
                for k in range(num_classes)
            ]
        )
        # (B, K): the range of each image's map of each class, as in the paper's Figure 1
        per_image = jax.vmap(jax.vmap(dynamic_range_db, in_axes=-1), in_axes=0)(grad)
        return {
            "grad": grad,
            "onehot": onehot,
            "mask": mask,
            "dynamic_range_db": dynamic_range_db(grad, mask=jnp.broadcast_to(real, grad.shape)),
            "class_dynamic_range_db": per_class,
            "image_class_dynamic_range_db": per_image,
        }

    return probe


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def summarize_gradient(probe_output: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready per-epoch telemetry from a :func:`make_gradient_probe` output (host side).

    Lists are per class (index = class label); values of empty sets are ``None``.
    """
    out = jax.device_get(probe_output)
    real = np.asarray(out["mask"]) > 0
    grad = np.asarray(out["grad"], np.float32)[real]
    fg_all = np.asarray(out["onehot"])[real] > 0.5
    per_image = np.asarray(out["image_class_dynamic_range_db"], np.float64)[real]  # (real images, K)
    summary: dict[str, Any] = {
        "dynamic_range_db": float(out["dynamic_range_db"]),
        "class_dynamic_range_db": [float(v) for v in np.asarray(out["class_dynamic_range_db"])],
        "image_dynamic_range_db_median": [
            _finite_or_none(float(np.median(v))) if v.size else None for v in per_image.T
        ],
        "image_dynamic_range_db_max": [_finite_or_none(float(np.max(v))) if v.size else None for v in per_image.T],
    }
    for name in ("fg_median", "bg_median", "fg_distinct", "bg_distinct", "fg_min", "fg_max", "bg_min", "bg_max"):
        summary[name] = []
    for k in range(grad.shape[-1]):
        for prefix, values in (("fg", grad[..., k][fg_all[..., k]]), ("bg", grad[..., k][~fg_all[..., k]])):
            if values.size:
                summary[f"{prefix}_median"].append(float(np.median(values)))
                summary[f"{prefix}_distinct"].append(int(np.unique(values).size))
                summary[f"{prefix}_min"].append(float(values.min()))
                summary[f"{prefix}_max"].append(float(values.max()))
            else:
                summary[f"{prefix}_median"].append(None)
                summary[f"{prefix}_distinct"].append(0)
                summary[f"{prefix}_min"].append(None)
                summary[f"{prefix}_max"].append(None)
    summary["dynamic_range_db"] = _finite_or_none(summary["dynamic_range_db"])
    summary["class_dynamic_range_db"] = [_finite_or_none(v) for v in summary["class_dynamic_range_db"]]
    return summary
