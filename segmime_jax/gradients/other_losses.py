"""The gradients of the other losses in closed form, with respect to the probabilities ``s``: cross-entropy (Eq. 4),
mime (Eq. 8-9), negative mime (Eq. 10) and the generalised Dice loss. Shapes as ``probs``, float32, zero on the
classes that are not selected; equal to ``jax.grad`` of the losses of :mod:`segmime_jax.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from segmime_jax.losses import CE_EPSILON
from segmime_jax.losses._inputs import (
    per_class_weight,
    per_image_class_shape,
    per_image_class_sums,
    prepare_masked,
    safe_div,
    scatter_classes,
)


def cross_entropy_gradient(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Closed-form ``∂L_CE/∂s`` of :func:`segmime_jax.losses.cross_entropy` (paper Eq. 4).

    .. math:: \frac{\partial \mathcal{L}_{CE}}{\partial s^{(i,k)}_b} =
              -\frac{m_b\, y^{(i,k)}_b}{(s^{(i,k)}_b + 10^{-10})\,
              \left(\sum_b m_b \sum_{k,i} y^{(i,k)}_b + 10^{-10}\right)}

    Zero wherever ``y = 0`` (false positives of class k are seen only through the class that is true there),
    and it grows like ``1/s`` on missed ground-truth pixels: it reflects every variation of the prediction.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the loss.

    Returns:
      ``∂L_CE/∂s``, float32, the shape of ``probs`` ``(B, *spatial, K)``; zero on unselected classes and
      masked images.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import cross_entropy_gradient
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> grad = cross_entropy_gradient(probs, target)
      >>> print(np.asarray(grad[target == 1]).round(4))  # -1 / (4 s) on the ground truth, s = .7, .5, .8, .6
      [-0.3571 -0.5    -0.3125 -0.4167]
      >>> print(float(jnp.abs(grad[target == 0]).max()))
      0.0

    References:
      Kervadec & de Bruijne (2023), §2.1, Eq. 4, and §2.2, Figure 1(d). Reference code: LIVIAETS/boundary-loss,
      ``losses.py``, ``CrossEntropy``.
    """
    s, y, m, idx = prepare_masked(probs, target, classes, mask)
    m = m.reshape((-1,) + (1,) * (s.ndim - 1))
    normaliser = jnp.sum(m * y) + CE_EPSILON
    grad = -m * y / (s + CE_EPSILON) / normaliser
    return scatter_classes(grad, jnp.shape(probs), idx)


def mime_gradient(
    probs: jax.Array,
    target: jax.Array,
    *,
    a: float | jax.Array = 1.9,
    b: float | jax.Array = 0.1,
    classes: Sequence[int] | None = None,
    normalize: bool = True,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Closed-form ``∂L_Mime/∂s`` of :func:`segmime_jax.losses.mime_loss` (paper Eq. 8).

    .. math:: \frac{\partial \mathcal{L}_{Mime}}{\partial s^{(i,k)}_b} = \frac{m_b}{N}
              \begin{cases} -a_k & y^{(i,k)}_b = 1 \\ b_k & \text{otherwise} \end{cases}

    ``N = Σ_b m_b · |Ω| · |K|`` with ``normalize=True``, else 1. Independent of ``s``.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      a: weight on the ground truth: a scalar or a ``(K,)`` array, as in the loss.
      b: weight off the ground truth: a scalar or a ``(K,)`` array, as in the loss.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.
      normalize: divide by ``N`` (default), as in the loss.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the loss.

    Returns:
      ``∂L_Mime/∂s``, float32, the shape of ``probs`` ``(B, *spatial, K)``; zero on unselected classes and
      masked images.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import mime_gradient
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> grad = mime_gradient(probs, target)  # -1.9/12 on the ground truth, 0.1/12 elsewhere
      >>> print(np.asarray(grad[0]).round(4))
      [[-0.1583  0.0083  0.0083]
       [-0.1583  0.0083  0.0083]
       [ 0.0083 -0.1583  0.0083]
       [ 0.0083  0.0083 -0.1583]]

    References:
      Kervadec & de Bruijne (2023), §2.3, Eq. 8-9.
    """
    s, y, m, idx = prepare_masked(probs, target, classes, mask)
    a_k = per_class_weight(a, "a", jnp.shape(probs)[-1], idx)
    b_k = per_class_weight(b, "b", jnp.shape(probs)[-1], idx)
    if normalize:
        factor = safe_div(m, jnp.sum(m) * math.prod(s.shape[1:]))
    else:
        factor = m
    omega = -a_k * y + b_k * (1.0 - y)
    grad = factor.reshape((-1,) + (1,) * (s.ndim - 1)) * omega
    return scatter_classes(grad, jnp.shape(probs), idx)


def negative_mime_gradient(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    normalize: bool = True,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Closed-form ``∂L_NM/∂s`` of :func:`segmime_jax.losses.negative_mime_loss` (paper Eq. 10).

    .. math:: \frac{\partial \mathcal{L}_{NM}}{\partial s^{(i,k)}_b} = \frac{m_b}{N}
              \begin{cases} -1 & y^{(i,k)}_b = 1 \\ 0 & \text{otherwise} \end{cases}

    :func:`mime_gradient` with ``a = 1``, ``b = 0``: ``−m_b/N`` on ground truth, 0 elsewhere.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.
      normalize: divide by ``N`` (default), as in the loss.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the loss.

    Returns:
      ``∂L_NM/∂s``, float32, the shape of ``probs`` ``(B, *spatial, K)``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import negative_mime_gradient
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> grad = negative_mime_gradient(probs, target)  # -1/12 on the ground truth
      >>> print(np.asarray(grad[target == 1]).round(4), float(jnp.abs(grad[target == 0]).max()))
      [-0.0833 -0.0833 -0.0833 -0.0833] 0.0

    References:
      Kervadec & de Bruijne (2023), §2.4, Eq. 10.
    """
    return mime_gradient(probs, target, a=1.0, b=0.0, classes=classes, normalize=normalize, mask=mask)


def generalized_dice_gradient(
    probs: jax.Array,
    target: jax.Array,
    *,
    epsilon: float = 1e-10,
    classes: Sequence[int] | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Closed-form gradient of :func:`segmime_jax.losses.generalized_dice_loss`.

    With ``w_k = 1/(Σ y_k + ε)²``, ``A_b = 2(Σ_k w_k I_{b,k} + ε)`` and ``D_b = Σ_k w_k U_{b,k} + ε``:

    .. math:: \frac{\partial \mathcal{L}_{GDL}}{\partial s^{(i,k)}_b} =
              \frac{m_b}{\sum_b m_b}\; w_k\, \frac{A_b - 2 y^{(i,k)}_b D_b}{D_b^2}

    Like Dice's, it takes two values per (image, class): a weighted negative of the ground truth. Computed as
    ``c_b (w_k/D_b)(A_b/D_b − 2y)``: a class absent from ``y`` has ``w_k = 1/ε² = 1e20``, so ``D_b`` can reach
    1e21 and ``D_b²`` would overflow float32. This is the gradient of the reference convention
    (``generalized_dice_loss(absent="reference")``, the default); there is no gradient here for ``absent="max"``.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      epsilon: the ``ε`` of the loss.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the loss.

    Returns:
      ``∂L_GDL/∂s``, float32, the shape of ``probs`` ``(B, *spatial, K)``; zero on unselected classes and
      masked images.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import generalized_dice_gradient, loss_gradient
      >>> from segmime_jax.losses import generalized_dice_loss
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> grad = generalized_dice_gradient(probs, target)
      >>> print(np.asarray(grad[0, :, 1]).round(4))  # class 1: two values
      [ 0.1177  0.1177 -0.2544  0.1177]
      >>> print(bool(jnp.allclose(grad, loss_gradient(generalized_dice_loss, probs, target), atol=1e-6)))
      True

    References:
      Sudre et al. (2017), "Generalised Dice overlap as a deep learning loss function for highly unbalanced
      segmentations" (paper ref. [15]). Reference code: LIVIAETS/boundary-loss, ``losses.py``,
      ``GeneralizedDice``.
    """
    s, y, m, idx = prepare_masked(probs, target, classes, mask)
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    w = 1.0 / (sum_y + epsilon) ** 2
    numerator = 2.0 * (jnp.sum(w * inter, axis=-1) + epsilon)
    denominator = jnp.sum(w * (sum_y + sum_s), axis=-1) + epsilon
    c = safe_div(m, jnp.sum(m))
    shape = per_image_class_shape(s)
    per_bk = (c[:, None] * (w / denominator[:, None])).reshape(shape)
    per_b = (s.shape[0],) + (1,) * (s.ndim - 1)
    grad = per_bk * ((numerator / denominator).reshape(per_b) - 2.0 * y)
    return scatter_classes(grad, jnp.shape(probs), idx)
