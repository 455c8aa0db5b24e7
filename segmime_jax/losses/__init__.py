"""Segmentation losses of Kervadec & de Bruijne (2023), §2, in pure JAX.

Conventions shared by every loss here:

- ``probs`` and ``target`` are channels-last arrays of the same shape ``(B, *spatial, K)``: softmax
  probabilities ``s`` and a one-hot ground truth ``y`` (any number of spatial axes, 2D or 3D).
- Everything is computed in float32 whatever the input dtype (inputs are cast first), and the loss is a
  float32 scalar. The functions are pure, jit/vmap/grad-safe (no Python branch on traced values).
- ``classes`` is a static Python sequence of class indices (``None``: all ``K`` classes); the loss only
  looks at those channels (e.g. ``classes=(1, 2, 3)`` drops the background).
- ``mask`` is an optional ``(B,)`` array of per-image weights (1 = real image, 0 = padding of a padded
  batch). A masked image contributes nothing: it is excluded from the sums *and* from the normalisers, so a
  batch with a masked image gives exactly the loss of the batch without that image, whatever it holds (its
  ``s`` and ``y`` are selected away, so even NaN does not leak into the loss or its gradient). When every
  image is masked the loss is 0.

Notation (paper §2.2), per image ``b`` and class ``k``: ``I = Σ_i y·s`` and ``U = Σ_i (y + s)`` over the
pixels ``i ∈ Ω`` of that image.

Modules: :mod:`~segmime_jax.losses.functions` (the losses; their arithmetic, written once, in
:mod:`~segmime_jax.losses.terms`), :mod:`~segmime_jax.losses.spec` (:func:`build_loss`
turns a spec string such as ``"ce"``, ``"mime"`` or ``"1*ce+1*dsc"`` into a loss function; :data:`LOSSES` maps
names to functions), :mod:`~segmime_jax.losses.params` (the loss as data: one compiled program for every loss
of a grid), :mod:`~segmime_jax.losses.mime_weights` (per-class mime weights from class frequencies) and
:mod:`~segmime_jax.losses.inputs` (input handling shared with :mod:`segmime_jax.gradients`).

Example:
  >>> import jax
  >>> import jax.numpy as jnp
  >>> from segmime_jax.losses import build_loss, dice_loss, mime_loss
  >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
  >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)  # (B, *spatial, K) = (1, 4, 3)
  >>> print(f"{float(dice_loss(probs, target)):.4f} {float(mime_loss(probs, target)):.4f}")
  0.3581 -0.4000
  >>> print(f"{float(build_loss('1*ce+1*dsc')(probs, target)):.4f}")
  0.8040

References:
  Kervadec & de Bruijne (2023), "On the dice loss gradient and the ways to mimic it" (the paper: sections and
  equation numbers in these docstrings are its own). Reference code: LIVIAETS/boundary-loss (``losses.py``).
"""

from segmime_jax.losses.functions import (
    cross_entropy,
    dice_loss,
    dice_surrogate_loss,
    generalized_dice_loss,
    mime_loss,
    negative_mime_loss,
)
from segmime_jax.losses.mime_weights import mime_weights_from_frequencies
from segmime_jax.losses.params import TERMS, LossParams, LossProgram, loss_from_spec, loss_params
from segmime_jax.losses.spec import LOSS_ALIASES, LOSSES, LossFn, build_loss, weighted_sum
from segmime_jax.losses.terms import CE_EPSILON, GDL_ABSENT

__all__ = [
    "CE_EPSILON",
    "GDL_ABSENT",
    "LOSSES",
    "LOSS_ALIASES",
    "TERMS",
    "LossFn",
    "LossParams",
    "LossProgram",
    "build_loss",
    "cross_entropy",
    "dice_loss",
    "dice_surrogate_loss",
    "generalized_dice_loss",
    "loss_from_spec",
    "loss_params",
    "mime_loss",
    "mime_weights_from_frequencies",
    "negative_mime_loss",
    "weighted_sum",
]
