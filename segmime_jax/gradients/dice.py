"""The Dice loss's gradient in closed form (paper §2.2, Eq. 5-7), with respect to the probabilities ``s``.

:func:`dice_gradient` (Eq. 5-6): two values per (image, class), ``−2(U−I)/U²`` on the ground truth and ``2I/U²``
elsewhere, times the loss's averaging; :func:`dice_gradient_values` gives the two values,
:func:`dice_gradient_bound` their bound ``2/U`` (Eq. 7), :func:`intersection_union` the ``(I, U)`` they come
from. Shapes as ``probs``, float32, zero on the classes that are not selected; equal to ``jax.grad`` of
:func:`segmime_jax.losses.dice_loss` with its ``ε`` and averaging.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from segmime_jax.losses._inputs import (
    per_image_class_shape,
    per_image_class_sums,
    prepare,
    prepare_masked,
    safe_div,
    scatter_classes,
)


def intersection_union(
    probs: jax.Array, target: jax.Array, *, classes: Sequence[int] | None = None
) -> tuple[jax.Array, jax.Array]:
    r"""The intersection ``I`` and union ``U`` of paper Eq. 5, per image and selected class.

    .. math:: I_{b,k} = \sum_{i \in \Omega} y^{(i,k)}_b s^{(i,k)}_b, \qquad
              U_{b,k} = \sum_{i \in \Omega} \left[y^{(i,k)}_b + s^{(i,k)}_b\right]   \quad\text{(paper Eq. 5)}

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.

    Returns:
      ``(I, U)``, each float32 ``(B, |classes|)``, with the classes in the given order (not scattered back
      to ``K``).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import intersection_union
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> inter, union = intersection_union(probs, target)
      >>> print(np.asarray(inter).round(4), np.asarray(union).round(4))
      [[1.2 0.8 0.6]] [[3.5 2.5 2. ]]
      >>> print(np.asarray(intersection_union(probs, target, classes=(2, 1))[0]).round(4))
      [[0.6 0.8]]

    References:
      Kervadec & de Bruijne (2023), §2.2, Eq. 5.
    """
    s, y, _ = prepare(probs, target, classes)
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    return inter, sum_y + sum_s


def _dice_terms(
    probs: jax.Array,
    target: jax.Array,
    *,
    epsilon: float,
    classes: Sequence[int] | None,
    batch: bool,
    mask: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array, tuple[int, ...]]:
    """``(s, y, I, U, scale, idx)``: I, U per (B, K) (summed over the batch when ``batch``), and the
    averaging factor ``scale`` per (B, K) of :func:`segmime_jax.losses.dice_loss`."""
    s, y, m, idx = prepare_masked(probs, target, classes, mask)
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    union = sum_y + sum_s
    num_classes = s.shape[-1]
    if batch:
        inter = jnp.broadcast_to(jnp.sum(m[:, None] * inter, axis=0), inter.shape)
        union = jnp.broadcast_to(jnp.sum(m[:, None] * union, axis=0), union.shape)
        scale = jnp.broadcast_to(m[:, None] / num_classes, inter.shape)
    else:
        scale = jnp.broadcast_to(safe_div(m, jnp.sum(m) * num_classes)[:, None], inter.shape)
    return s, y, inter, union, scale, idx


def dice_gradient_values(
    probs: jax.Array,
    target: jax.Array,
    *,
    epsilon: float = 1e-10,
    classes: Sequence[int] | None = None,
    batch: bool = False,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""The two values of the Dice gradient (paper Eq. 6), ``(on ground truth, elsewhere)``, per image and class.

    With the ``ε`` of :func:`segmime_jax.losses.dice_loss` and its averaging factor
    ``c_b = m_b / (|K| Σ_b m_b)``:

    .. math::
        g^{fg}_{b,k} = -c_b\,\frac{2(U + \epsilon) - (2I + \epsilon)}{(U+\epsilon)^2}
        \;\xrightarrow{\epsilon\to 0}\; -c_b\,\frac{2(U-I)}{U^2}, \qquad
        g^{bg}_{b,k} = c_b\,\frac{2I + \epsilon}{(U+\epsilon)^2} \;\xrightarrow{\epsilon\to 0}\; c_b\,\frac{2I}{U^2}

    (``batch=True``: ``I``, ``U`` summed over the unmasked images, ``c_b = m_b/|K|``).

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      epsilon: the ``ε`` of :func:`segmime_jax.losses.dice_loss`.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.
      batch: the batch Dice of ``dice_loss(batch=True)``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the loss.

    Returns:
      ``(foreground, background)``: the gradient on ground-truth pixels (``y = 1``) and on the others, each
      float32 ``(B, |classes|)`` with the classes in the given order.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import dice_gradient_values
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> foreground, background = dice_gradient_values(probs, target)
      >>> print(np.asarray(foreground).round(4), np.asarray(background).round(4))
      [[-0.1252 -0.1813 -0.2333]] [[0.0653 0.0853 0.1   ]]

    References:
      Kervadec & de Bruijne (2023), §2.2, Eq. 6 (``ε``: footnote 1).
    """
    _, _, inter, union, scale, _ = _dice_terms(probs, target, epsilon=epsilon, classes=classes, batch=batch, mask=mask)
    denom = (union + epsilon) ** 2
    background = scale * (2.0 * inter + epsilon) / denom
    foreground = -scale * 2.0 / (union + epsilon) + background
    return foreground, background


def dice_gradient(
    probs: jax.Array,
    target: jax.Array,
    *,
    epsilon: float = 1e-10,
    classes: Sequence[int] | None = None,
    batch: bool = False,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Closed-form ``∂L_DSC/∂s`` of :func:`segmime_jax.losses.dice_loss` (paper Eq. 5-6, with ε and averaging).

    .. math::
        \frac{\partial \mathcal{L}_{DSC}}{\partial s^{(i,k)}_b} = c_b \left(
        -\frac{2 y^{(i,k)}_b}{U_{b,k} + \epsilon} + \frac{2 I_{b,k} + \epsilon}{(U_{b,k}+\epsilon)^2}\right)
        \;\xrightarrow{\epsilon\to 0}\; c_b\,\frac{-2\left(y^{(i,k)}_b U_{b,k} - I_{b,k}\right)}{U_{b,k}^2}

    with ``c_b = m_b / (|K| Σ_b m_b)`` the averaging of the loss over images and selected classes (``batch=True``:
    ``I, U`` summed over the batch and ``c_b = m_b/|K|``). Two values only per (image, class): see
    :func:`dice_gradient_values`. Same shape as ``probs``, float32, zero on unselected classes and masked images.

    Degenerate case: a class absent from both ``y`` and ``s`` of an image (``U = 0``) has gradient
    ``c_b (2I+ε)/ε² = c_b/ε`` on every pixel (``1e10·c_b``): finite, exactly what ``jax.grad`` gives. Rare with
    softmax probabilities: only where float32 (or bfloat16) underflows them to exactly 0, and then the chain
    through the softmax multiplies it by ``s = 0``.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      epsilon: the ``ε`` of :func:`segmime_jax.losses.dice_loss`.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.
      batch: the batch Dice of ``dice_loss(batch=True)``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the loss.

    Returns:
      ``∂L_DSC/∂s``, float32, the shape of ``probs`` ``(B, *spatial, K)``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import dice_gradient, loss_gradient
      >>> from segmime_jax.losses import dice_loss
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> grad = dice_gradient(probs, target)
      >>> print(np.asarray(grad[0]).round(4))  # per class: one value on the ground truth, one elsewhere
      [[-0.1252  0.0853  0.1   ]
       [-0.1252  0.0853  0.1   ]
       [ 0.0653 -0.1813  0.1   ]
       [ 0.0653  0.0853 -0.2333]]
      >>> print(bool(jnp.allclose(grad, loss_gradient(dice_loss, probs, target), atol=1e-6)))
      True

    References:
      Kervadec & de Bruijne (2023), §2.2, Eq. 5-6 (``ε``: footnote 1).
    """
    s, y, inter, union, scale, idx = _dice_terms(
        probs, target, epsilon=epsilon, classes=classes, batch=batch, mask=mask
    )
    shape = per_image_class_shape(s)
    background = (scale * (2.0 * inter + epsilon) / (union + epsilon) ** 2).reshape(shape)
    alpha = (scale * 2.0 / (union + epsilon)).reshape(shape)
    grad = background - alpha * y
    return scatter_classes(grad, jnp.shape(probs), idx)


def dice_gradient_bound(
    probs: jax.Array,
    target: jax.Array,
    *,
    epsilon: float = 1e-10,
    classes: Sequence[int] | None = None,
    batch: bool = False,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""The upper bound of paper Eq. 7 on ``|∂L_DSC/∂s|``, per image and class: float32 ``(B, K)``.

    .. math:: \left|\frac{\partial \mathcal{L}_{DSC}}{\partial s^{(i,k)}_b}\right| \le c_b\,\frac{2}{U_{b,k} + \epsilon}

    Eq. 7 is ``2/U`` for one image and one class; here it is scaled by the same averaging factor
    ``c_b = m_b/(|K| Σ_b m_b)`` as :func:`dice_gradient` (``m_b/|K|`` with ``batch=True``), so that
    ``|dice_gradient| <= bound[b, k]`` holds element-wise for the gradient of the loss actually used. With ε the
    bound still holds exactly (foreground ``|g| = c_b(2(U−I)+ε)/(U+ε)² ≤ 2c_b/(U+ε)``; background
    ``c_b(2I+ε)/(U+ε)² ≤ c_b/(U+ε)`` since ``2I ≤ U``). The array is indexed by class label over all ``K`` classes
    of ``probs``; unselected classes get 0 (their gradient is 0).

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      epsilon: the ``ε`` of :func:`segmime_jax.losses.dice_loss`.
      classes: static sequence of class indices; ``None`` (default) for all ``K``.
      batch: the batch Dice of ``dice_loss(batch=True)``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the loss.

    Returns:
      The bound, float32 ``(B, K)``, indexed by class label.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import dice_gradient, dice_gradient_bound
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> bound = dice_gradient_bound(probs, target)
      >>> print(np.asarray(bound).round(4))  # 2 / (3 U), U = (3.5, 2.5, 2)
      [[0.1905 0.2667 0.3333]]
      >>> print(bool(jnp.all(jnp.abs(dice_gradient(probs, target)) <= bound[:, None, :])))
      True
      >>> print(np.asarray(dice_gradient_bound(probs, target, classes=(1, 2))).round(4))  # class 0 unselected
      [[0.  0.4 0.5]]

    References:
      Kervadec & de Bruijne (2023), §2.2, Eq. 7.
    """
    s, _, _, union, scale, idx = _dice_terms(probs, target, epsilon=epsilon, classes=classes, batch=batch, mask=mask)
    bound = scale * 2.0 / (union + epsilon)
    full_shape = (s.shape[0], jnp.shape(probs)[-1])
    return scatter_classes(bound, full_shape, idx)
