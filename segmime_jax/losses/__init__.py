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

The arithmetic of every loss is written once, as a ``*_terms`` function of prepared float32 arrays: ``s, y``
``(B, *spatial, K)`` with masked images zeroed, image weights ``m`` ``(B,)`` and class weights ``c`` ``(K,)`` (1 for
a selected class, 0 for the others), plus static options such as ``ε``. A public function slices out its
``classes`` and calls it with ``c = 1``; a :class:`LossProgram` calls it on all ``K`` channels with ``c`` the 0/1
class mask, so that the class selection is data. Multiplying by 1 and adding 0 are exact, so both give the same
numbers up to float summation order.

Modules (private, behind this package: import everything from ``segmime_jax.losses``; each is named for what it
holds, so that a reader finds a loss by its family and the machinery by its job):

- ``_cross_entropy``, ``_dice`` (the Dice-type losses, built on the overlap ``I`` and ``U``: Dice, generalised
  Dice, the Dice-gradient surrogate) and ``_mime`` (the linear losses: mime, negative mime, and per-class mime
  weights from class frequencies): each loss's arithmetic and its public function, grouped by family.
- ``_registry``: one entry per loss (name, aliases, display name, arithmetic, public function, whether it is
  linear), from which :data:`LOSSES`, :data:`LOSS_ALIASES`, :data:`TERMS`, :func:`display_name` and the
  programs' evaluation derive; :func:`register_loss` adds a loss from outside the package.
- ``_spec``: :func:`build_loss`'s spec language (``"ce"``, ``"mime"``, ``"1*ce+1*dsc"``) and :func:`weighted_sum`.
- ``_program``: the loss as data, :class:`LossParams` (a pytree of per-run arrays) and :class:`LossProgram` (which
  terms to compute): one compiled step for every loss of a grid. Not ``params``, which means a model's
  parameters everywhere else in JAX.
- ``_inputs``: how the losses read their inputs (casting, shape checks, class selection, masks), shared with
  :mod:`segmime_jax.gradients`, whose closed forms must read them the same way.

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

from segmime_jax.losses._cross_entropy import CE_EPSILON, cross_entropy
from segmime_jax.losses._dice import GDL_ABSENT, dice_loss, dice_surrogate_loss, generalized_dice_loss
from segmime_jax.losses._mime import mime_loss, mime_weights_from_frequencies, negative_mime_loss
from segmime_jax.losses._program import LossParams, LossProgram, loss_from_spec, loss_params
from segmime_jax.losses._registry import (
    LOSS_ALIASES,
    LOSSES,
    TERMS,
    RegisteredLoss,
    canonical_name,
    display_name,
    register_loss,
)
from segmime_jax.losses._spec import LossFn, build_loss, weighted_sum

__all__ = [
    "CE_EPSILON",
    "GDL_ABSENT",
    "LOSSES",
    "LOSS_ALIASES",
    "TERMS",
    "LossFn",
    "LossParams",
    "LossProgram",
    "RegisteredLoss",
    "build_loss",
    "canonical_name",
    "cross_entropy",
    "dice_loss",
    "dice_surrogate_loss",
    "display_name",
    "generalized_dice_loss",
    "loss_from_spec",
    "loss_params",
    "mime_loss",
    "mime_weights_from_frequencies",
    "negative_mime_loss",
    "register_loss",
    "weighted_sum",
]
