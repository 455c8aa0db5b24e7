"""The losses of paper §2 as pure JAX functions (see :mod:`segmime_jax.losses` for the conventions).

Each loss is written once, as arithmetic on prepared arrays with a per-class weight vector ``c`` (the
``*_terms`` functions): the public losses prepare their inputs with their static ``classes`` sliced out and
``c = 1``; :mod:`segmime_jax.losses.params` calls the same functions on all ``K`` channels with ``c`` a 0/1 class
mask, so that the class selection is data instead of a static slice. Multiplying by 1 and adding 0 are exact,
so both give the same numbers up to float summation order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from segmime_jax.losses.inputs import (
    all_selected,
    image_axis,
    per_class_weight,
    per_image_class_sums,
    prepare_masked,
    safe_div,
)

#: The ``+1e-10`` inside ``log`` and in the normaliser of the cross-entropy (as in the reference code).
CE_EPSILON = 1e-10

# ----------------------------------------------------------------------------------------------------------
# The arithmetic of each loss on prepared arrays (see the module docstring).
# ----------------------------------------------------------------------------------------------------------


def cross_entropy_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array) -> jax.Array:
    """:func:`cross_entropy` of prepared ``s, y`` ``(B, *spatial, K)``, image weights ``m`` ``(B,)`` and class
    weights ``c`` ``(K,)`` (1 selected, 0 not)."""
    weighted = image_axis(m, s.ndim) * c * y
    return -jnp.sum(weighted * jnp.log(s + CE_EPSILON)) / (jnp.sum(weighted) + CE_EPSILON)


def dice_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float, batch: bool) -> jax.Array:
    """:func:`dice_loss` of prepared arrays (see :func:`cross_entropy_terms`): the ``c``-weighted class mean."""
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


GDL_ABSENT = ("reference", "max")


def generalized_dice_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float,
                           absent: str = "reference") -> jax.Array:
    """:func:`generalized_dice_loss` of prepared arrays (see :func:`cross_entropy_terms`)."""
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


def linear_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, a: jax.Array, b: jax.Array, *,
                 normalize: bool) -> jax.Array:
    """:func:`mime_loss` of prepared arrays (see :func:`cross_entropy_terms`), ``a``, ``b`` scalars or ``(K,)``;
    normalised by ``Σ_b m_b · |Ω| · Σ_k c_k``."""
    omega = c * (-a * y + b * (1.0 - y))
    total = jnp.sum(m * jnp.sum(omega * s, axis=tuple(range(1, s.ndim))))
    if not normalize:
        return total
    return safe_div(total, jnp.sum(m) * (math.prod(s.shape[1:-1]) * jnp.sum(c)))


def dice_surrogate_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float) -> jax.Array:
    """:func:`dice_surrogate_loss` of prepared arrays (see :func:`cross_entropy_terms`)."""
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    union = jax.lax.stop_gradient(sum_y + sum_s)
    inter = jax.lax.stop_gradient(inter)
    alpha = 2.0 / (union + epsilon)
    beta = (2.0 * inter + epsilon) / (union + epsilon) ** 2
    spatial_shape = (s.shape[0],) + (1,) * (s.ndim - 2) + (s.shape[-1],)
    omega = c * (-alpha.reshape(spatial_shape) * y + beta.reshape(spatial_shape))
    per_image = jnp.sum(omega * s, axis=tuple(range(1, s.ndim)))
    return safe_div(jnp.sum(m * per_image), jnp.sum(m) * jnp.sum(c))


# ----------------------------------------------------------------------------------------------------------
# Losses.
# ----------------------------------------------------------------------------------------------------------


def cross_entropy(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Cross-entropy on probabilities (paper Eq. 4), as in the reference code.

    .. math::
        \mathcal{L}_{CE} = \frac{-\sum_b m_b \sum_{k} \sum_{i} y^{(i,k)}_b \log(s^{(i,k)}_b + 10^{-10})}
                                {\sum_b m_b \sum_{k} \sum_{i} y^{(i,k)}_b + 10^{-10}}

    with ``k`` over the selected ``classes`` and ``m_b`` the image weights (``mask``). The normaliser is the
    number of labelled pixels of the selected classes; with all classes selected (one-hot target) it equals
    ``B·|Ω|``, the mean CE per pixel. Eq. 4 writes ``1/(|K||Ω|)``, which is the same up to the constant
    factor ``|K|``; we follow the reference implementation (LIVIAETS/boundary-loss).

    Gradient: ``∂L/∂s = −y / (s + 1e-10) / normaliser`` (zero where ``y = 0``).
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return cross_entropy_terms(s, y, m, all_selected(s))


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

    Per image ``b`` and class ``k``, with plain sums (no squares):

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
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return dice_terms(s, y, m, all_selected(s), epsilon=epsilon, batch=batch)


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
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return generalized_dice_terms(s, y, m, all_selected(s), epsilon=epsilon, absent=absent)


def mime_loss(
    probs: jax.Array,
    target: jax.Array,
    *,
    a: float | jax.Array = 1.9,
    b: float | jax.Array = 0.1,
    classes: Sequence[int] | None = None,
    normalize: bool = True,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Mime loss (paper Eq. 8-9): a fixed linear loss whose gradient has the sign pattern of Dice's.

    .. math::
        \mathcal{L}_{Mime} = \frac{1}{N}\, \omega_y^\top s, \qquad \omega_y = -a\, y + b\, (1 - y),
        \qquad \frac{\partial \mathcal{L}_{Mime}}{\partial s^{(i,k)}} =
        \begin{cases} -a_k / N & y^{(i,k)} = 1 \\ +b_k / N & \text{otherwise} \end{cases}

    The paper's experiments use ``ω = −2y + 0.1``, i.e. ``a = 1.9``, ``b = 0.1`` (the defaults). ``a`` and ``b``
    are scalars or per-class arrays of shape ``(K,)`` (one entry per class of ``probs``, indexed by class label,
    e.g. from :func:`mime_weights_from_frequencies`); they may be traced arrays.

    ``normalize=True`` (our default) divides by the number of elements ``N = Σ_b m_b · |Ω| · |K|`` (selected
    classes, unmasked images), which makes the loss a per-element mean, independent of image and batch size.
    The paper is silent on normalisation: Eq. 9 verbatim is ``normalize=False`` (``N = 1``, a plain sum over
    the unmasked images). Adam is insensitive to this constant factor; SGD is not (it rescales the learning
    rate by ``1/N``).
    """
    s, y, m, idx = prepare_masked(probs, target, classes, mask)
    a_k = per_class_weight(a, "a", jnp.shape(probs)[-1], idx)
    b_k = per_class_weight(b, "b", jnp.shape(probs)[-1], idx)
    return linear_terms(s, y, m, all_selected(s), a_k, b_k, normalize=normalize)


def negative_mime_loss(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    normalize: bool = True,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Negative mime (paper Eq. 10): the mime with ``a = 1``, ``b = 0``, for multi-class tasks.

    .. math::
        \mathcal{L}_{NM} = -\frac{1}{N}\, y^\top s, \qquad
        \frac{\partial \mathcal{L}_{NM}}{\partial s^{(i,k)}} = \begin{cases} -1/N & y^{(i,k)} = 1 \\
        0 & \text{otherwise} \end{cases}

    ``N`` as in :func:`mime_loss` (``normalize=False`` is Eq. 10 verbatim). Meant for multi-class tasks (paper
    §2.4): in a binary task with only the foreground selected (``classes=(1,)``), background pixels get no
    gradient at all, so nothing stops a network from the trivial solution of predicting everything as
    foreground. With the background channel included (the default) it is pushed up on its own ground truth.
    """
    return mime_loss(probs, target, a=1.0, b=0.0, classes=classes, normalize=normalize, mask=mask)


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
    """
    s, y, m, _ = prepare_masked(probs, target, classes, mask)
    return dice_surrogate_terms(s, y, m, all_selected(s), epsilon=epsilon)


