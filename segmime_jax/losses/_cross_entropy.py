"""The cross-entropy (paper §2.1, Eq. 4): its arithmetic and its public function.

Its arithmetic, :func:`cross_entropy_terms`, is what :class:`~segmime_jax.losses.LossProgram` evaluates; its
entry (name, display name) is in :mod:`segmime_jax.losses._registry`. The conventions of the ``*_terms``
functions are in :mod:`segmime_jax.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from segmime_jax.losses._inputs import all_selected, image_axis, prepare_masked

#: The ``+1e-10`` inside ``log`` and in the normaliser of the cross-entropy (as in the reference code).
CE_EPSILON = 1e-10


def cross_entropy_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array) -> jax.Array:
    """The arithmetic of :func:`cross_entropy` (Eq. 4) on prepared arrays.

    Args:
      s, y: float32 probabilities and one-hot target, ``(B, *spatial, K)``, masked images zeroed.
      m: float32 image weights, ``(B,)``.
      c: float32 class weights, ``(K,)`` (1 selected, 0 not).

    Returns:
      The loss, a float32 scalar.
    """
    weighted = image_axis(m, s.ndim) * c * y
    return -jnp.sum(weighted * jnp.log(s + CE_EPSILON)) / (jnp.sum(weighted) + CE_EPSILON)


def cross_entropy(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Cross-entropy of probabilities against a one-hot target (paper Eq. 4), as in the reference code.

    .. math::
        \mathcal{L}_{CE} = \frac{-\sum_b m_b \sum_{k} \sum_{i} y^{(i,k)}_b \log(s^{(i,k)}_b + 10^{-10})}
                                {\sum_b m_b \sum_{k} \sum_{i} y^{(i,k)}_b + 10^{-10}}

    with ``k`` over the selected ``classes`` and ``m_b`` the image weights (``mask``). The normaliser is the
    number of labelled pixels of the selected classes; with all classes selected (one-hot target) it equals
    ``B·|Ω|``, the mean CE per pixel. Eq. 4 writes ``1/(|K||Ω|)``, which is the same up to the constant
    factor ``|K|``; we follow the reference implementation. The ``10^{-10}`` is :data:`CE_EPSILON`.

    Gradient: ``∂L/∂s = −y / (s + 1e-10) / normaliser``, zero where ``y = 0``
    (:func:`segmime_jax.gradients.cross_entropy_gradient`).

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of the class indices the loss looks at; ``None`` (default) for all ``K``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding); a masked image is left out of the sum
        and of the normaliser, whatever it holds (NaN included). Every image masked: the loss is 0.

    Returns:
      The loss, a float32 scalar (shape ``()``).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import cross_entropy
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> print(f"{float(cross_entropy(probs, target)):.4f}")  # -(log .7 + log .5 + log .8 + log .6) / 4
      0.4459
      >>> print(f"{float(cross_entropy(probs, target, classes=(1, 2))):.4f}")  # -(log .8 + log .6) / 2
      0.3670

    References:
      Kervadec & de Bruijne (2023), §2.1, Eq. 4. Reference code: LIVIAETS/boundary-loss, ``losses.py``,
      ``CrossEntropy`` (the ``1e-10`` and the labelled-pixel normaliser).
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return cross_entropy_terms(s, y, m, all_selected(s))
