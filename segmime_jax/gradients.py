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

No model or data imports: this module only depends on :mod:`segmime_jax.losses`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from segmime_jax.losses.functions import CE_EPSILON
from segmime_jax.losses.inputs import per_class_weight, per_image_class_sums, prepare, prepare_masked, safe_div

__all__ = [
    "ClassGradientSummary",
    "DYNAMIC_RANGE_CONVENTIONS",
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

#: ``"power"``: ``10·log10(max/min)``; ``"amplitude"``: ``20·log10(max/min)``.
DYNAMIC_RANGE_CONVENTIONS = ("power", "amplitude")


def _scatter_classes(values: jax.Array, shape: tuple[int, ...], idx: tuple[int, ...]) -> jax.Array:
    """Put the selected-class channels ``values`` (…, |idx|) back into a zero array of the full ``shape``."""
    if idx == tuple(range(shape[-1])):
        return values
    return jnp.zeros(shape, jnp.float32).at[..., list(idx)].set(values)


def _per_image_class_shape(s: jax.Array) -> tuple[int, ...]:
    """Broadcast shape of a ``(B, K)`` quantity against ``(B, *spatial, K)``."""
    return (s.shape[0],) + (1,) * (s.ndim - 2) + (s.shape[-1],)


def intersection_union(
    probs: jax.Array, target: jax.Array, *, classes: Sequence[int] | None = None
) -> tuple[jax.Array, jax.Array]:
    r"""``(I, U)`` per image and selected class, each float32 ``(B, |classes|)`` (classes in the given order).

    .. math:: I_{b,k} = \sum_{i \in \Omega} y^{(i,k)}_b s^{(i,k)}_b, \qquad
              U_{b,k} = \sum_{i \in \Omega} \left[y^{(i,k)}_b + s^{(i,k)}_b\right]   \quad\text{(paper Eq. 5)}
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
    r"""The two values of the Dice gradient (paper Eq. 6), ``(on ground truth, elsewhere)``, each ``(B, |classes|)``.

    With the ``ε`` of :func:`segmime_jax.losses.dice_loss` and its averaging factor
    ``c_b = m_b / (|K| Σ_b m_b)``:

    .. math::
        g^{fg}_{b,k} = -c_b\,\frac{2(U + \epsilon) - (2I + \epsilon)}{(U+\epsilon)^2}
        \;\xrightarrow{\epsilon\to 0}\; -c_b\,\frac{2(U-I)}{U^2}, \qquad
        g^{bg}_{b,k} = c_b\,\frac{2I + \epsilon}{(U+\epsilon)^2} \;\xrightarrow{\epsilon\to 0}\; c_b\,\frac{2I}{U^2}

    (``batch=True``: ``I``, ``U`` summed over the unmasked images, ``c_b = m_b/|K|``).
    """
    _, _, inter, union, scale, _ = _dice_terms(
        probs, target, epsilon=epsilon, classes=classes, batch=batch, mask=mask
    )
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
    """
    s, y, inter, union, scale, idx = _dice_terms(
        probs, target, epsilon=epsilon, classes=classes, batch=batch, mask=mask
    )
    shape = _per_image_class_shape(s)
    background = (scale * (2.0 * inter + epsilon) / (union + epsilon) ** 2).reshape(shape)
    alpha = (scale * 2.0 / (union + epsilon)).reshape(shape)
    grad = background - alpha * y
    return _scatter_classes(grad, jnp.shape(probs), idx)


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
    """
    s, _, _, union, scale, idx = _dice_terms(
        probs, target, epsilon=epsilon, classes=classes, batch=batch, mask=mask
    )
    bound = scale * 2.0 / (union + epsilon)
    full_shape = (s.shape[0], jnp.shape(probs)[-1])
    return _scatter_classes(bound, full_shape, idx)


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
    """
    s, y, m, idx = prepare_masked(probs, target, classes, mask)
    m = m.reshape((-1,) + (1,) * (s.ndim - 1))
    normaliser = jnp.sum(m * y) + CE_EPSILON
    grad = -m * y / (s + CE_EPSILON) / normaliser
    return _scatter_classes(grad, jnp.shape(probs), idx)


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
    return _scatter_classes(grad, jnp.shape(probs), idx)


def negative_mime_gradient(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    normalize: bool = True,
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Closed-form ``∂L_NM/∂s`` (paper Eq. 10): ``−m_b/N`` on ground truth, 0 elsewhere."""
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
    1e21 and ``D_b²`` would overflow float32.
    """
    s, y, m, idx = prepare_masked(probs, target, classes, mask)
    inter, sum_y, sum_s = per_image_class_sums(s, y)
    w = 1.0 / (sum_y + epsilon) ** 2
    numerator = 2.0 * (jnp.sum(w * inter, axis=-1) + epsilon)
    denominator = jnp.sum(w * (sum_y + sum_s), axis=-1) + epsilon
    c = safe_div(m, jnp.sum(m))
    shape = _per_image_class_shape(s)
    per_bk = (c[:, None] * (w / denominator[:, None])).reshape(shape)
    per_b = (s.shape[0],) + (1,) * (s.ndim - 1)
    grad = per_bk * ((numerator / denominator).reshape(per_b) - 2.0 * y)
    return _scatter_classes(grad, jnp.shape(probs), idx)


def loss_gradient(
    loss_fn: Callable[..., jax.Array], probs: jax.Array, target: jax.Array, **kwargs: Any
) -> jax.Array:
    """``∂loss_fn(probs, target, **kwargs)/∂probs`` by ``jax.grad``, in float32 (``probs`` is cast first).

    ``loss_fn`` is any loss of :mod:`segmime_jax.losses` (or a :func:`~segmime_jax.losses.build_loss` result);
    ``kwargs`` are passed on (e.g. ``classes=``, ``mask=``). Differentiating with respect to the probabilities,
    not the logits, is what paper §2.2 and Figure 1 show.
    """
    probs = jnp.asarray(probs).astype(jnp.float32)
    return jax.grad(lambda p: loss_fn(p, target, **kwargs))(probs)


def dynamic_range_db(
    grad: jax.Array,
    *,
    mask: jax.Array | None = None,
    convention: str = "power",
    relative_floor: float = 0.0,
) -> jax.Array:
    r"""Dynamic range of a gradient map in decibels: largest over smallest non-zero magnitude (paper §2.2).

    .. math:: \mathrm{DR} = c \log_{10} \frac{\max_{i: g_i \neq 0} |g_i|}{\min_{i: g_i \neq 0} |g_i|}, \qquad
              c = 10 \text{ (``"power"``, default)} \text{ or } 20 \text{ (``"amplitude"``)}

    The paper quotes ≈1.5 dB for Dice and ≈10 dB for cross-entropy on its Figure 1 without saying which ``c``
    it uses (§2.2). Both ranges reduce to two numbers: Dice's is ``c·log10((U−I)/I) = c·log10(2/DSC − 1)``
    (soft DSC of the class), CE's is ``c·log10(max s / min s)`` over the ground-truth pixels. We default to
    ``"power"`` (``10·log10`` of the magnitude ratio) because under it both of the paper's numbers describe a
    plausible noisy prediction: 1.5 dB is a soft DSC of 0.83 and 10 dB ground-truth probabilities spanning a
    factor 10 (down to ≈0.1). Under ``"amplitude"`` they would mean a soft DSC of 0.91 and *no* ground-truth pixel
    below ≈0.32 of the most confident one, which a noisy softmax over thousands of pixels rarely gives (the
    CE range is set by the single least confident pixel). On the study's default phantom the power convention
    is also the closer one for both losses (Dice 1.27 dB, CE 20.6 dB; amplitude: 2.55 and 41.1 dB). The ratio of
    two ranges (Dice/CE, 0.15 in the paper) does not depend on the convention; the gradient study reports both
    (see :mod:`segmime_jax.report.gradient_study`).

    ``mask``: optional boolean array broadcastable to ``grad`` selecting the elements considered (e.g. one class).
    ``relative_floor``: magnitudes ``<= relative_floor · max`` count as zero (default 0: only exact zeros are
    ignored, so CE's zero background is excluded but Dice's tiny ``ε/U²`` background when ``I = 0`` is not).
    A map with no non-zero element has range 0 dB; a map with a NaN among the selected elements has range NaN.
    Returns a float32 scalar; jit-safe.
    """
    if convention not in DYNAMIC_RANGE_CONVENTIONS:
        raise ValueError(f"convention must be one of {DYNAMIC_RANGE_CONVENTIONS}; got {convention!r}")
    factor = 10.0 if convention == "power" else 20.0
    magnitude = jnp.abs(jnp.asarray(grad).astype(jnp.float32))
    selected = jnp.ones(magnitude.shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool),
                                                                                        magnitude.shape)
    largest = jnp.max(jnp.where(selected, magnitude, 0.0))
    counted = selected & (magnitude > 0) & (magnitude > relative_floor * largest)
    top = jnp.max(jnp.where(counted, magnitude, 0.0))
    bottom = jnp.min(jnp.where(counted, magnitude, jnp.inf))
    any_counted = jnp.any(counted)
    ratio = jnp.where(any_counted, top / jnp.where(any_counted, bottom, 1.0), 1.0)
    ratio = jnp.where(jnp.any(selected & jnp.isnan(magnitude)), jnp.nan, ratio)
    return (factor * jnp.log10(ratio)).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ClassGradientSummary:
    """Distinct values of a gradient map on the foreground (``y = 1``) and background (``y = 0``) of a class.

    ``*_values`` hold the sorted distinct values (at most ``max_values`` of them, the rest summarised by
    min/max/mean and the count ``*_distinct``).
    """

    class_index: int
    foreground_pixels: int
    foreground_distinct: int
    foreground_min: float
    foreground_max: float
    foreground_mean: float
    foreground_values: tuple[float, ...]
    background_pixels: int
    background_distinct: int
    background_min: float
    background_max: float
    background_mean: float
    background_values: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _describe_values(values: np.ndarray, max_values: int) -> tuple[int, float, float, float, tuple[float, ...]]:
    if values.size == 0:
        nan = float("nan")
        return 0, nan, nan, nan, ()
    distinct = np.unique(values)
    shown = tuple(float(v) for v in distinct[:max_values]) if distinct.size <= max_values else ()
    return int(distinct.size), float(values.min()), float(values.max()), float(values.mean()), shown


def gradient_values(
    grad: jax.Array | np.ndarray,
    target: jax.Array | np.ndarray,
    *,
    classes: Sequence[int] | None = None,
    max_values: int = 8,
) -> list[ClassGradientSummary]:
    """Summarise, per class, the values a gradient map takes on ground-truth and other pixels (host side).

    For the Dice gradient each (image, class) has exactly two distinct values (Eq. 6); the mime has ``−a``
    and ``b`` (Eq. 8), the negative mime ``−1`` and 0 (Eq. 10); the cross-entropy has as many values as there
    are distinct probabilities on the ground truth, and 0 elsewhere. Values are pooled over the batch; with
    more than ``max_values`` distinct values only the count, min, max and mean are kept (``*_values = ()``).
    Not jittable (uses ``np.unique``); returns one :class:`ClassGradientSummary` per selected class.
    """
    g = np.asarray(jax.device_get(grad), dtype=np.float32)
    y = np.asarray(jax.device_get(target), dtype=np.float32)
    if g.shape != y.shape:
        raise ValueError(f"grad and target must have the same shape; got {g.shape} and {y.shape}")
    indices = range(g.shape[-1]) if classes is None else classes
    summaries = []
    for k in indices:
        gk, yk = g[..., int(k)], y[..., int(k)] > 0.5
        fg = _describe_values(gk[yk], max_values)
        bg = _describe_values(gk[~yk], max_values)
        summaries.append(ClassGradientSummary(int(k), int(yk.sum()), *fg, int((~yk).sum()), *bg))
    return summaries
