"""Per-class mime weights from class frequencies (our extension of paper §2.3)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


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
