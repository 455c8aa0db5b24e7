"""The Dice-type losses, computed from the per-image, per-class overlap ``I = Σ y·s`` and ``U = Σ (y + s)``: the
soft Dice loss (paper Eq. 3), the generalised Dice loss (paper ref. [15]) and the linear surrogate with Dice's
gradient (Eq. 6 in the form of Eq. 8-9).

Each loss is two functions: its arithmetic (``*_terms``, evaluated by :class:`~segmime_jax.losses.LossProgram`)
and its public function; their entries (names, display names) are in :mod:`segmime_jax.losses._registry`. The
conventions of the ``*_terms`` functions are in :mod:`segmime_jax.losses`.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from segmime_jax.losses._inputs import (
    all_selected,
    per_image_class_shape,
    per_image_class_sums,
    prepare_masked,
    safe_div,
)


def dice_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float, batch: bool) -> jax.Array:
    """The arithmetic of :func:`dice_loss` (Eq. 3) on prepared arrays: the ``c``-weighted class mean.

    Args:
      s, y: float32 probabilities and one-hot target, ``(B, *spatial, K)``, masked images zeroed.
      m: float32 image weights, ``(B,)``.
      c: float32 class weights, ``(K,)`` (1 selected, 0 not).
      epsilon: the ``ε`` of numerator and denominator.
      batch: sum ``I`` and ``U`` over the images first (batch Dice).

    Returns:
      The loss, a float32 scalar.
    """
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    union = sum_y + sum_s
    if batch:
        inter_k = jnp.sum(m[:, None] * inter, axis=0)
        union_k = jnp.sum(m[:, None] * union, axis=0)
        per_class = 1.0 - (2.0 * inter_k + epsilon) / (union_k + epsilon)
        # Every image masked: I_k = U_k = 0 gives per_class = 0, the documented "all masked" loss.
        return safe_div(jnp.sum(c * per_class), jnp.sum(c))
    per_image_class = 1.0 - (2.0 * inter + epsilon) / (union + epsilon)
    return safe_div(jnp.sum(m[:, None] * c * per_image_class), jnp.sum(m) * jnp.sum(c))


def dice_loss(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    epsilon: float = 1e-10,
    batch: bool = False,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Soft Dice loss (paper Eq. 3), averaged over images and selected classes.

    Per image ``b`` and class ``k``, with plain sums (no squares), ``I = Σ_i y·s`` and ``U = Σ_i (y + s)``:

    .. math::
        d_{b,k} = 1 - \frac{2 I_{b,k} + \epsilon}{U_{b,k} + \epsilon}, \qquad
        \mathcal{L}_{DSC} = \frac{\sum_b m_b \sum_k d_{b,k}}{|\mathcal{K}| \sum_b m_b}

    ``batch=True`` is nnU-Net's "batch dice" (MONAI ``batch=True``): ``I`` and ``U`` are first summed over the
    (unmasked) images, ``I_k = Σ_b m_b I_{b,k}``, and the loss is the mean over classes of
    ``1 − (2 I_k + ε)/(U_k + ε)``.

    Empty classes: a class absent from both ``y`` and ``s`` (``I = U = 0``) scores ``d = 1 − ε/ε = 0`` (a perfect
    match); a class absent from ``y`` but predicted gives ``d = 1 − ε/(Σ s + ε) ≈ 1``. Never NaN.
    Gradient (Eq. 5-6 with ε): ``∂d/∂s = −2y/(U+ε) + (2I+ε)/(U+ε)²`` times the averaging factor
    ``m_b/(|K| Σ_b m_b)``; see :func:`segmime_jax.gradients.dice_gradient`.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of the class indices the loss looks at; ``None`` (default) for all ``K``.
      epsilon: the ``ε`` added to numerator and denominator, as in the reference code (the paper's footnote 1
        adds it to the denominator).
      batch: sum ``I`` and ``U`` over the batch before taking the ratio (batch Dice).
      mask: optional ``(B,)`` image weights (1 real image, 0 padding); a masked image is left out of the sums
        and of the normaliser, whatever it holds (NaN included). Every image masked: the loss is 0.

    Returns:
      The loss, a float32 scalar (shape ``()``).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import dice_loss
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> print(f"{float(dice_loss(probs, target)):.4f}")
      0.3581
      >>> print(f"{float(dice_loss(probs, target, classes=(1, 2))):.4f}")  # background dropped
      0.3800
      >>> padded = jnp.concatenate([probs, jnp.full_like(probs, jnp.nan)])  # a padding image full of NaN
      >>> loss = dice_loss(padded, jnp.concatenate([target, target]), mask=jnp.array([1.0, 0.0]))
      >>> print(f"{float(loss):.4f}")  # the loss of the real image alone
      0.3581

    References:
      Kervadec & de Bruijne (2023), §2.1, Eq. 3 (``ε``: §2.2, footnote 1). Reference code:
      LIVIAETS/boundary-loss, ``losses.py``, ``DiceLoss`` (plain sums, ``ε = 1e-10``, mean over images and
      classes). Batch Dice: nnU-Net (Isensee et al. 2021) and MONAI ``DiceLoss(batch=True)``.
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return dice_terms(s, y, m, all_selected(s), epsilon=epsilon, batch=batch)


#: The conventions of :func:`generalized_dice_loss` for classes absent from the ground truth (``absent=``).
GDL_ABSENT = ("reference", "max")


def generalized_dice_terms(
    s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float, absent: str = "reference"
) -> jax.Array:
    """The arithmetic of :func:`generalized_dice_loss` on prepared arrays.

    Args:
      s, y: float32 probabilities and one-hot target, ``(B, *spatial, K)``, masked images zeroed.
      m: float32 image weights, ``(B,)``.
      c: float32 class weights, ``(K,)`` (1 selected, 0 not).
      epsilon: the ``ε`` of the weights, the numerator and the denominator.
      absent: the convention for classes absent from ``y``, one of :data:`GDL_ABSENT`.

    Returns:
      The loss, a float32 scalar.

    Raises:
      ValueError: if ``absent`` is not one of :data:`GDL_ABSENT`.
    """
    if absent not in GDL_ABSENT:
        raise ValueError(f"absent must be one of {GDL_ABSENT}, got {absent!r}")
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    w = c / (sum_y + epsilon) ** 2
    present = (sum_y > 0) & (c > 0)
    if absent == "max":
        w_present = jnp.where(present, w, 0.0)
        w = jnp.where(present, w_present, c * jnp.max(w_present, axis=-1, keepdims=True))
    numerator = 2.0 * (jnp.sum(w * inter, axis=-1) + epsilon)
    denominator = jnp.sum(w * (sum_y + sum_s), axis=-1) + epsilon
    per_image = 1.0 - numerator / denominator
    if absent == "max":  # nothing present: MONAI's 1 - smooth_nr/smooth_dr = 0, no gradient
        per_image = jnp.where(jnp.any(present, axis=-1), per_image, 0.0)
    return safe_div(jnp.sum(m * per_image), jnp.sum(m))


def generalized_dice_loss(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    epsilon: float = 1e-10,
    absent: str = "reference",
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Generalised Dice loss (Sudre et al. 2017, paper ref. [15]), as in the reference code (LIVIAETS/boundary-loss).

    Per image ``b``, with class weights ``w_k = 1/(Σ_i y^{(i,k)} + ε)²`` treated as constants of ``y``:

    .. math::
        g_b = 1 - \frac{2\left(\sum_k w_k I_{b,k} + \epsilon\right)}{\sum_k w_k U_{b,k} + \epsilon}, \qquad
        \mathcal{L}_{GDL} = \frac{\sum_b m_b\, g_b}{\sum_b m_b}

    Note the ``2`` multiplies ``ε`` too (reference code), so an image where every selected class is absent from
    both ``y`` and ``s`` gives ``1 − 2ε/ε = −1``.

    Absent classes (``absent``). ``"reference"`` (the author's code, the default): a class absent from ``y`` gets
    the weight ``1/ε² = 1e20``, so any probability mass on it dominates the image's loss. In particular an image
    whose only selected class is absent (e.g. ``classes=(k,)`` on a slice without class ``k``) scores
    ``1 − 2ε/(1e20·Σs + ε) ≈ 1`` whatever the prediction, with a gradient of about ``1e-26``: such images teach
    nothing. ``"max"`` is MONAI's ``GeneralizedDiceLoss`` convention: the infinite weight of an absent class is
    replaced by the largest weight of the image's present selected classes, so predicting an absent class costs
    as much as missing the rarest present one; an image with no selected class present scores 0, with no
    gradient (MONAI: ``1 − smooth_nr/smooth_dr``). MONAI's own ``smooth_nr = smooth_dr = 1e-5`` (not doubled)
    are not copied: ``ε`` stays as above.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of the class indices the loss looks at; ``None`` (default) for all ``K``.
      epsilon: the ``ε`` of the weights, the numerator and the denominator.
      absent: the convention for classes absent from ``y``, one of :data:`GDL_ABSENT`: ``"reference"``
        (default) or ``"max"``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding); a masked image is left out of the mean,
        whatever it holds (NaN included). Every image masked: the loss is 0.

    Returns:
      The loss, a float32 scalar (shape ``()``).

    Raises:
      ValueError: if ``absent`` is not one of :data:`GDL_ABSENT`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import generalized_dice_loss
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> print(f"{float(generalized_dice_loss(probs, target)):.4f}")
      0.3674
      >>> no_class_2 = jax.nn.one_hot(jnp.array([[0, 0, 1, 1]]), 3)  # class 2 absent, but predicted
      >>> print(f"{float(generalized_dice_loss(probs, no_class_2)):.4f}")  # weight 1e20 on class 2
      1.0000
      >>> print(f"{float(generalized_dice_loss(probs, no_class_2, absent='max')):.4f}")
      0.4500

    References:
      Sudre et al. (2017), "Generalised Dice overlap as a deep learning loss function for highly unbalanced
      segmentations" (paper ref. [15]). Reference code: LIVIAETS/boundary-loss, ``losses.py``,
      ``GeneralizedDice``. ``absent="max"``: MONAI ``GeneralizedDiceLoss``.
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return generalized_dice_terms(s, y, m, all_selected(s), epsilon=epsilon, absent=absent)


def dice_surrogate_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float) -> jax.Array:
    """The arithmetic of :func:`dice_surrogate_loss` on prepared arrays.

    Args:
      s, y: float32 probabilities and one-hot target, ``(B, *spatial, K)``, masked images zeroed.
      m: float32 image weights, ``(B,)``.
      c: float32 class weights, ``(K,)`` (1 selected, 0 not).
      epsilon: the ``ε`` of the Dice loss whose gradient is reproduced.

    Returns:
      The loss, a float32 scalar.
    """
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    union = jax.lax.stop_gradient(sum_y + sum_s)
    inter = jax.lax.stop_gradient(inter)
    alpha = 2.0 / (union + epsilon)
    beta = (2.0 * inter + epsilon) / (union + epsilon) ** 2
    spatial_shape = per_image_class_shape(s)
    omega = c * (-alpha.reshape(spatial_shape) * y + beta.reshape(spatial_shape))
    per_image = jnp.sum(omega * s, axis=tuple(range(1, s.ndim)))
    return safe_div(jnp.sum(m * per_image), jnp.sum(m) * jnp.sum(c))


def dice_surrogate_loss(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    epsilon: float = 1e-10,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Linear surrogate with the Dice gradient: the bridge between Eq. 6 and the mime of Eq. 8-9.

    With stop-gradient weights computed from the current prediction, per image ``b`` and class ``k``:

    .. math::
        \alpha_{b,k} = \mathrm{sg}\!\left(\frac{2}{U_{b,k} + \epsilon}\right), \quad
        \beta_{b,k} = \mathrm{sg}\!\left(\frac{2 I_{b,k} + \epsilon}{(U_{b,k} + \epsilon)^2}\right), \quad
        \mathcal{L}_{sur} = \frac{\sum_b m_b \sum_k \sum_i s^{(i,k)}_b (-\alpha_{b,k} y^{(i,k)}_b
        + \beta_{b,k})}{|\mathcal{K}| \sum_b m_b}

    so that ``∂L_sur/∂s = −α y + β`` (times ``m_b / (|K| Σ m)``) equals the gradient of :func:`dice_loss`
    (``batch=False``, same ``ε``) exactly, at every point: it is Eq. 6 (``α = 2/U``, ``β = 2I/U²`` for ε → 0), a
    mime (Eq. 9) whose weights ``a = α − β``, ``b = β`` are re-computed at every step.

    Its *value* is not the Dice loss, only its gradient is meaningful: per image and class it is
    ``β Σs − α I``, which for ε → 0 is ``−(2I/U)·(Σy/U)`` (the soft Dice coefficient times ``−Σy/U``), a number
    in ``[−1/2, 0]`` (``I ≤ Σs`` and ``2·Σs·Σy ≤ U²/2``); it is 0 when ``I = 0`` and ``−1/2`` for a perfect
    prediction.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of the class indices the loss looks at; ``None`` (default) for all ``K``.
      epsilon: the ``ε`` of :func:`dice_loss` whose gradient is reproduced.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in :func:`dice_loss`.

    Returns:
      The surrogate's value, a float32 scalar (shape ``()``); its gradient is the Dice gradient.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import dice_loss, dice_surrogate_loss
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> print(f"{float(dice_surrogate_loss(probs, target)):.4f}")
      -0.3159
      >>> same = jnp.allclose(jax.grad(dice_surrogate_loss)(probs, target), jax.grad(dice_loss)(probs, target))
      >>> print(bool(same))
      True

    References:
      Kervadec & de Bruijne (2023), §2.2, Eq. 6 (the gradient) and §2.3, Eq. 8-9 (the linear form).
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return dice_surrogate_terms(s, y, m, all_selected(s), epsilon=epsilon)
