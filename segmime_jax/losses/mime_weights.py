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

    ``frequencies``: one non-negative number per class (pixel counts or fractions; they are normalised).
    A class with frequency 0 has no finite weight: ValueError. Returns two float32 arrays of shape ``(K,)``,
    usable as ``mime_loss(..., a=a, b=b)``.
    """
    f = np.asarray(frequencies, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"frequencies must be a 1-D sequence with one entry per class; got shape {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"frequencies must be finite and non-negative; got {f.tolist()}")
    if np.any(f == 0):
        raise ValueError(f"class(es) {np.flatnonzero(f == 0).tolist()} have frequency 0: no finite mime weight; "
                         "drop them with classes=... or give them a small positive frequency")
    if not (a_mean > 0 and b_mean >= 0):
        raise ValueError(f"need a_mean > 0 and b_mean >= 0; got a_mean={a_mean}, b_mean={b_mean}")
    f = f / f.sum()
    r = f ** (-float(power))
    r = r / r.mean()
    return (a_mean * r).astype(np.float32), (b_mean * r).astype(np.float32)
