"""The linear losses of paper §2.3-2.4: the mime (Eq. 8-9), the negative mime (Eq. 10), and the per-class mime
weights from class frequencies (our extension of §2.3).

Both losses are ``ω_yᵀ s`` with ``ω_y = −a·y + b·(1 − y)`` (the negative mime: ``a = 1``, ``b = 0``), so they share
one arithmetic, :func:`linear_terms`: their entries in :mod:`segmime_jax.losses._registry` are marked linear, and
:class:`~segmime_jax.losses.LossProgram` adds up the ``(a, b)`` of every linear term of a loss and evaluates
:func:`linear_terms` once. The conventions of the ``*_terms`` functions are in :mod:`segmime_jax.losses`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from segmime_jax.losses._inputs import all_selected, per_class_weight, prepare_masked, safe_div


def linear_terms(
    s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, a: jax.Array, b: jax.Array, *, normalize: bool
) -> jax.Array:
    """The arithmetic of :func:`mime_loss` (Eq. 9) on prepared arrays, normalised by ``Σ_b m_b · |Ω| · Σ_k c_k``.

    Args:
      s, y: float32 probabilities and one-hot target, ``(B, *spatial, K)``, masked images zeroed.
      m: float32 image weights, ``(B,)``.
      c: float32 class weights, ``(K,)`` (1 selected, 0 not).
      a, b: float32 weights on and off the ground truth, scalars or ``(K,)``.
      normalize: divide by ``Σ_b m_b · |Ω| · Σ_k c_k`` (else the plain sum of Eq. 9).

    Returns:
      The loss, a float32 scalar.
    """
    omega = c * (-a * y + b * (1.0 - y))
    total = jnp.sum(m * jnp.sum(omega * s, axis=tuple(range(1, s.ndim))))
    if not normalize:
        return total
    return safe_div(total, jnp.sum(m) * (math.prod(s.shape[1:-1]) * jnp.sum(c)))


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


def mime_weights_from_frequencies(
    frequencies: Sequence[float] | np.ndarray,
    *,
    a_mean: float = 1.9,
    b_mean: float = 0.1,
    power: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-class mime weights ``(a, b)`` of Eq. 8-9 from class pixel frequencies (our extension of paper §2.3).

    The paper (§2.3) says ``a, b`` may be "pre-computed based on (for instance) the dataset
    classes-distribution" without giving a rule. Ours follows the Dice gradient: near a good prediction of
    class ``k`` (``I ≈ |Ω_y|``, ``U ≈ 2|Ω_y|``), both values of Eq. 6 are ``≈ 1/(2|Ω_y^{(k)}|)``, i.e. they scale
    like ``1/f_k``. So, with ``f_k`` the frequencies normalised to sum to 1:

    .. math::
        r_k = f_k^{-p} \Big/ \frac{1}{|\mathcal{K}|}\sum_j f_j^{-p}, \qquad a_k = \bar a\, r_k, \qquad
        b_k = \bar b\, r_k

    with ``p = power`` (1 by default; 0 gives the paper's uniform weights), ``ā = a_mean = 1.9``,
    ``b̄ = b_mean = 0.1`` (the paper's scale): the class means of ``a`` and ``b`` are exactly the paper's values
    and every class keeps the paper's ratio ``a_k/b_k = 19``.

    Args:
      frequencies: one non-negative number per class, shape ``(K,)`` (pixel counts or fractions; they are
        normalised). A class with frequency 0 has no finite weight.
      a_mean: the class mean ``ā`` of ``a`` (must be positive).
      b_mean: the class mean ``b̄`` of ``b`` (must be non-negative).
      power: the exponent ``p``.

    Returns:
      ``(a, b)``, two float32 numpy arrays of shape ``(K,)``, usable as ``mime_loss(..., a=a, b=b)``.

    Raises:
      ValueError: if ``frequencies`` is not a non-empty 1-D sequence of finite non-negative numbers, if a class
        has frequency 0, or if ``a_mean <= 0`` or ``b_mean < 0``.

    Example:
      >>> from segmime_jax.losses import mime_weights_from_frequencies
      >>> a, b = mime_weights_from_frequencies([600, 300, 100])  # pixel counts of 3 classes
      >>> print(a.round(4), b.round(4))  # the rarest class weighs most
      [0.6333 1.2667 3.8   ] [0.0333 0.0667 0.2   ]
      >>> print(f"{a.mean():.4f} {b.mean():.4f}")  # the paper's values on average
      1.9000 0.1000
      >>> print(*mime_weights_from_frequencies([600, 300, 100], power=0))  # the paper's uniform weights
      [1.9 1.9 1.9] [0.1 0.1 0.1]

    References:
      Kervadec & de Bruijne (2023), §2.3 (Eq. 8-9, and ``a, b`` "pre-computed based on ... the dataset
      classes-distribution"), Eq. 6 (the scaling), §3.1 (``ā = 1.9``, ``b̄ = 0.1``).
    """
    f = np.asarray(frequencies, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"frequencies must be a 1-D sequence with one entry per class; got shape {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"frequencies must be finite and non-negative; got {f.tolist()}")
    if np.any(f == 0):
        raise ValueError(
            f"class(es) {np.flatnonzero(f == 0).tolist()} have frequency 0: no finite mime weight; "
            "drop them with classes=... or give them a small positive frequency"
        )
    if not (a_mean > 0 and b_mean >= 0):
        raise ValueError(f"need a_mean > 0 and b_mean >= 0; got a_mean={a_mean}, b_mean={b_mean}")
    f = f / f.sum()
    r = f ** (-float(power))
    r = r / r.mean()
    return (a_mean * r).astype(np.float32), (b_mean * r).astype(np.float32)
