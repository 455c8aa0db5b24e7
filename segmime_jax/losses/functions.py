"""The losses of paper §2 as pure JAX functions (see :mod:`segmime_jax.losses` for the conventions).

Each prepares its inputs (float32, masked images zeroed, its static ``classes`` sliced out) and calls the
loss's arithmetic in :mod:`segmime_jax.losses.terms` with the class weights ``c = 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from segmime_jax.losses.inputs import all_selected, per_class_weight, prepare_masked
from segmime_jax.losses.terms import (
    cross_entropy_terms,
    dice_surrogate_terms,
    dice_terms,
    generalized_dice_terms,
    linear_terms,
)


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

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      a: weight on the ground truth (the gradient there is ``−a``): a scalar or a ``(K,)`` array.
      b: weight off the ground truth (the gradient there is ``+b``): a scalar or a ``(K,)`` array.
      classes: static sequence of the class indices the loss looks at; ``None`` (default) for all ``K``.
      normalize: divide by ``N`` (default) rather than return the plain sum of Eq. 9.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding); a masked image is left out of the sum
        and of ``N``, whatever it holds (NaN included). Every image masked: the loss is 0.

    Returns:
      The loss, a float32 scalar (shape ``()``). It is negative for a good prediction: only its gradient matters.

    Raises:
      ValueError: if ``a`` or ``b`` is an array whose shape is not ``(K,)``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import mime_loss, mime_weights_from_frequencies
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> print(f"{float(mime_loss(probs, target)):.4f}")  # ω = -2y + 0.1, averaged over the 12 elements
      -0.4000
      >>> print(f"{float(mime_loss(probs, target, normalize=False)):.4f}")  # Eq. 9 verbatim
      -4.8000
      >>> a, b = mime_weights_from_frequencies([0.5, 0.25, 0.25])  # per-class weights, shape (3,)
      >>> print(f"{float(mime_loss(probs, target, a=a, b=b)):.4f}")
      -0.3675

    References:
      Kervadec & de Bruijne (2023), §2.3, Eq. 8-9; the defaults: §3.1 (``ω = −2y + 0.1``; §3.1 writes
      "a = −1.9", the value of the gradient on the ground truth, which is ``a = 1.9`` in Eq. 8's ``−a``).
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

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      classes: static sequence of the class indices the loss looks at; ``None`` (default) for all ``K``.
      normalize: divide by ``N`` (default) rather than return the plain sum of Eq. 10.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in :func:`mime_loss`.

    Returns:
      The loss, a float32 scalar (shape ``()``), never positive.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import negative_mime_loss
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> print(f"{float(negative_mime_loss(probs, target)):.4f}")  # -(.7 + .5 + .8 + .6) / 12
      -0.2167
      >>> print(f"{float(negative_mime_loss(probs, target, normalize=False)):.4f}")  # Eq. 10 verbatim
      -2.6000

    References:
      Kervadec & de Bruijne (2023), §2.4, Eq. 10.
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
