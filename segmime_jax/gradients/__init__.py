"""The gradient of the Dice loss and of its mimes, in closed form (paper §2.2) and through ``jax.grad``.

Closed forms (all with respect to the probabilities ``s``, same shape as ``probs``, float32, zero on the
classes that are not selected), matching the losses of :mod:`segmime_jax.losses` exactly, including their
``ε`` and their averaging:

- :func:`dice_gradient`: Eq. 5-6, two values per (image, class), bounded by :func:`dice_gradient_bound` (Eq. 7);
- :func:`cross_entropy_gradient`, :func:`mime_gradient` (Eq. 8), :func:`negative_mime_gradient` (Eq. 10),
  :func:`generalized_dice_gradient`;
- :func:`loss_gradient`: any loss differentiated by ``jax.grad`` (to check the closed forms);
- :func:`dynamic_range_db`: the dynamic range of a gradient map in decibels (paper §2.2: ≈1.5 dB for Dice
  vs ≈10 dB for cross-entropy on Figure 1);
- :func:`gradient_values`: a host-side summary of the distinct values a gradient map takes on the
  foreground and background of each class.

Modules: :mod:`~segmime_jax.gradients.dice`, :mod:`~segmime_jax.gradients.other_losses` and
:mod:`~segmime_jax.gradients.analysis`. No model or data
imports: the package only depends on :mod:`segmime_jax.losses`.

References:
  Kervadec & de Bruijne (2023), "On the dice loss gradient and the ways to mimic it", §2.2 (Eq. 5-7, Figure 1),
  §2.3-2.4 (Eq. 8-10).
"""

from segmime_jax.gradients.analysis import (
    DYNAMIC_RANGE_CONVENTIONS,
    ClassGradientSummary,
    dynamic_range_db,
    gradient_values,
    loss_gradient,
)
from segmime_jax.gradients.dice import dice_gradient, dice_gradient_bound, dice_gradient_values, intersection_union
from segmime_jax.gradients.other_losses import (
    cross_entropy_gradient,
    generalized_dice_gradient,
    mime_gradient,
    negative_mime_gradient,
)

__all__ = [
    "DYNAMIC_RANGE_CONVENTIONS",
    "ClassGradientSummary",
    "cross_entropy_gradient",
    "dice_gradient",
    "dice_gradient_bound",
    "dice_gradient_values",
    "dynamic_range_db",
    "generalized_dice_gradient",
    "gradient_values",
    "intersection_union",
    "loss_gradient",
    "mime_gradient",
    "negative_mime_gradient",
]
