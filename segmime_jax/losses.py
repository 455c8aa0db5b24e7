"""Segmentation losses of Kervadec & de Bruijne (2023), §2, in pure JAX.

Conventions shared by every loss here:

- ``probs`` and ``target`` are channels-last arrays of the same shape ``(B, *spatial, K)``: softmax
  probabilities ``s`` and a one-hot ground truth ``y`` (any number of spatial axes, 2D or 3D).
- Everything is computed in float32 whatever the input dtype (inputs are cast first), and the loss is a
  float32 scalar. The functions are pure, jit/vmap/grad-safe (no Python branch on traced values).
- ``classes`` is a static Python sequence of class indices (``None``: all ``K`` classes); the loss only
  looks at those channels (e.g. ``classes=(1, 2, 3)`` drops the background).
- ``mask`` is an optional ``(B,)`` array of per-image weights (1 = real image, 0 = padding of a padded
  batch). A masked image contributes nothing: it is excluded from the sums *and* from the normalisers, so a
  batch with a masked image gives exactly the loss of the batch without that image, whatever it holds (its
  ``s`` and ``y`` are selected away, so even NaN does not leak into the loss or its gradient). When every
  image is masked the loss is 0.

Notation (paper §2.2), per image ``b`` and class ``k``: ``I = Σ_i y·s`` and ``U = Σ_i (y + s)`` over the
pixels ``i ∈ Ω`` of that image.

Besides the losses, :func:`build_loss` turns a small spec string such as ``"ce"``, ``"mime"`` or
``"1*ce+1*dsc"`` into a loss function, :data:`LOSSES` maps names to functions, and
:func:`mime_weights_from_frequencies` derives per-class mime weights from class frequencies.
"""

from __future__ import annotations

import inspect
import math
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "LOSSES",
    "LOSS_ALIASES",
    "LossFn",
    "build_loss",
    "cross_entropy",
    "dice_loss",
    "dice_surrogate_loss",
    "generalized_dice_loss",
    "mime_loss",
    "mime_weights_from_frequencies",
    "negative_mime_loss",
    "weighted_sum",
]

#: The ``+1e-10`` inside ``log`` and in the normaliser of the cross-entropy (as in the reference code).
CE_EPSILON = 1e-10


class LossFn(Protocol):
    """A configured loss: ``fn(probs, target, *, mask=None) -> float32 scalar``."""

    def __call__(self, probs: jax.Array, target: jax.Array, *, mask: jax.Array | None = None) -> jax.Array: ...


# ----------------------------------------------------------------------------------------------------------
# Shared helpers (private: one concept per module, these only serve the losses and gradients).
# ----------------------------------------------------------------------------------------------------------


def _class_indices(num_classes: int, classes: Sequence[int] | None) -> tuple[int, ...]:
    """The selected class indices as a tuple of Python ints (validated, order kept)."""
    if classes is None:
        return tuple(range(num_classes))
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence | np.ndarray):
        raise TypeError(f"classes must be a static sequence of int class indices, got {classes!r}")
    selected = []
    for c in classes:
        if isinstance(c, bool) or not isinstance(c, (int, np.integer)):
            raise TypeError(f"classes must hold Python ints (static indices), got {c!r} in {classes!r}")
        if not 0 <= int(c) < num_classes:
            raise ValueError(f"class index {int(c)} out of range for {num_classes} classes (classes={list(classes)})")
        selected.append(int(c))
    if not selected:
        raise ValueError("classes must select at least one class")
    if len(set(selected)) != len(selected):
        raise ValueError(f"classes has duplicate indices: {list(classes)}")
    return tuple(selected)


def _prepare(
    probs: jax.Array, target: jax.Array, classes: Sequence[int] | None
) -> tuple[jax.Array, jax.Array, tuple[int, ...]]:
    """Cast to float32, check shapes, select classes. Returns ``(s, y, idx)`` with ``s, y`` of shape
    ``(B, *spatial, |idx|)``."""
    probs = jnp.asarray(probs)
    target = jnp.asarray(target)
    if probs.shape != target.shape:
        raise ValueError(f"probs and target must have the same shape (B, *spatial, K); got {probs.shape} and "
                         f"{target.shape}")
    if probs.ndim < 2:
        raise ValueError(f"probs must be shaped (B, *spatial, K) with at least 2 axes; got shape {probs.shape}")
    idx = _class_indices(probs.shape[-1], classes)
    s = probs.astype(jnp.float32)
    y = target.astype(jnp.float32)
    if idx != tuple(range(probs.shape[-1])):
        s = s[..., list(idx)]
        y = y[..., list(idx)]
    return s, y, idx


def _image_weights(mask: jax.Array | None, batch: int) -> jax.Array:
    """Per-image weights, float32 of shape ``(B,)`` (ones when ``mask`` is None)."""
    if mask is None:
        return jnp.ones((batch,), jnp.float32)
    mask = jnp.asarray(mask)
    if mask.shape != (batch,):
        raise ValueError(f"mask must have shape (B,) = ({batch},); got {mask.shape}")
    return mask.astype(jnp.float32)


def _prepare_masked(
    probs: jax.Array, target: jax.Array, classes: Sequence[int] | None, mask: jax.Array | None
) -> tuple[jax.Array, jax.Array, jax.Array, tuple[int, ...]]:
    """:func:`_prepare` plus the image weights ``m`` ``(B,)``: ``(s, y, m, idx)``. With a ``mask``, the ``s`` and
    ``y`` of images with ``m_b = 0`` are replaced by zeros (a select, so whatever a padded image holds, NaN
    included, reaches neither the loss nor the gradient)."""
    s, y, idx = _prepare(probs, target, classes)
    m = _image_weights(mask, s.shape[0])
    if mask is not None:
        keep = (m > 0).reshape((-1,) + (1,) * (s.ndim - 1))
        s = jnp.where(keep, s, 0.0)
        y = jnp.where(keep, y, 0.0)
    return s, y, m, idx


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num / den`` where ``den != 0``, else 0 (grad-safe: no NaN flows through the unused branch)."""
    nonzero = den != 0
    return jnp.where(nonzero, num / jnp.where(nonzero, den, 1.0), 0.0)


def _spatial_axes(x: jax.Array) -> tuple[int, ...]:
    return tuple(range(1, x.ndim - 1))


def _per_image_class_sums(s: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(I, Σ y, Σ s)`` per image and class, each ``(B, K)``."""
    axes = _spatial_axes(s)
    return jnp.sum(y * s, axis=axes), jnp.sum(y, axis=axes), jnp.sum(s, axis=axes)


def _per_class_weight(value: Any, name: str, num_classes: int, idx: tuple[int, ...]) -> jax.Array:
    """A scalar or a per-class array (one entry per class of ``probs``, indexed by class label), restricted
    to the selected classes; float32, shape ``()`` or ``(|idx|,)``."""
    arr = jnp.asarray(value, dtype=jnp.float32)
    if arr.ndim == 0:
        return arr
    if arr.ndim != 1 or arr.shape[0] != num_classes:
        raise ValueError(f"{name} must be a scalar or a per-class array of shape ({num_classes},) (one entry per "
                         f"class of probs, indexed by class label); got shape {arr.shape}")
    return arr[jnp.asarray(idx)]


# ----------------------------------------------------------------------------------------------------------
# The losses' arithmetic on prepared arrays, with a per-class weight vector ``c``.
#
# Every public loss below prepares ``(s, y, m)`` (float32, masked images zeroed, its ``classes`` sliced out) and
# calls one of these with ``c = 1`` on each kept class. :mod:`segmime_jax.loss_params` calls the same functions
# on all ``K`` channels with ``c`` a 0/1 class mask, so that the class selection is data instead of a static
# slice. Multiplying by 1 and adding 0 are exact, so both ways give the same numbers up to float summation order.
# ----------------------------------------------------------------------------------------------------------


def _all_selected(s: jax.Array) -> jax.Array:
    """``c = 1`` for every channel of ``s`` (its classes are already the selected ones)."""
    return jnp.ones(s.shape[-1:], jnp.float32)


def _image_axis(m: jax.Array, ndim: int) -> jax.Array:
    """``(B,)`` image weights shaped to broadcast against ``(B, *spatial, K)``."""
    return m.reshape((-1,) + (1,) * (ndim - 1))


def cross_entropy_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array) -> jax.Array:
    """:func:`cross_entropy` of prepared ``s, y`` ``(B, *spatial, K)``, image weights ``m`` ``(B,)`` and class
    weights ``c`` ``(K,)`` (1 selected, 0 not)."""
    weighted = _image_axis(m, s.ndim) * c * y
    return -jnp.sum(weighted * jnp.log(s + CE_EPSILON)) / (jnp.sum(weighted) + CE_EPSILON)


def dice_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float, batch: bool) -> jax.Array:
    """:func:`dice_loss` of prepared arrays (see :func:`cross_entropy_terms`): the ``c``-weighted class mean."""
    inter, sum_y, sum_s = _per_image_class_sums(s, y)
    union = sum_y + sum_s
    if batch:
        inter_k = jnp.sum(m[:, None] * inter, axis=0)
        union_k = jnp.sum(m[:, None] * union, axis=0)
        per_class = 1.0 - (2.0 * inter_k + epsilon) / (union_k + epsilon)
        # Every image masked: I_k = U_k = 0 gives per_class = 0, the documented "all masked" loss.
        return _safe_div(jnp.sum(c * per_class), jnp.sum(c))
    per_image_class = 1.0 - (2.0 * inter + epsilon) / (union + epsilon)
    return _safe_div(jnp.sum(m[:, None] * c * per_image_class), jnp.sum(m) * jnp.sum(c))


GDL_ABSENT = ("reference", "max")


def generalized_dice_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float,
                           absent: str = "reference") -> jax.Array:
    """:func:`generalized_dice_loss` of prepared arrays (see :func:`cross_entropy_terms`)."""
    if absent not in GDL_ABSENT:
        raise ValueError(f"absent must be one of {GDL_ABSENT}, got {absent!r}")
    inter, sum_y, sum_s = _per_image_class_sums(s, y)
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
    return _safe_div(jnp.sum(m * per_image), jnp.sum(m))


def linear_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, a: jax.Array, b: jax.Array, *,
                 normalize: bool) -> jax.Array:
    """:func:`mime_loss` of prepared arrays (see :func:`cross_entropy_terms`), ``a``, ``b`` scalars or ``(K,)``;
    normalised by ``Σ_b m_b · |Ω| · Σ_k c_k``."""
    omega = c * (-a * y + b * (1.0 - y))
    total = jnp.sum(m * jnp.sum(omega * s, axis=tuple(range(1, s.ndim))))
    if not normalize:
        return total
    return _safe_div(total, jnp.sum(m) * (math.prod(s.shape[1:-1]) * jnp.sum(c)))


def dice_surrogate_terms(s: jax.Array, y: jax.Array, m: jax.Array, c: jax.Array, *, epsilon: float) -> jax.Array:
    """:func:`dice_surrogate_loss` of prepared arrays (see :func:`cross_entropy_terms`)."""
    inter, sum_y, sum_s = _per_image_class_sums(s, y)
    union = jax.lax.stop_gradient(sum_y + sum_s)
    inter = jax.lax.stop_gradient(inter)
    alpha = 2.0 / (union + epsilon)
    beta = (2.0 * inter + epsilon) / (union + epsilon) ** 2
    spatial_shape = (s.shape[0],) + (1,) * (s.ndim - 2) + (s.shape[-1],)
    omega = c * (-alpha.reshape(spatial_shape) * y + beta.reshape(spatial_shape))
    per_image = jnp.sum(omega * s, axis=tuple(range(1, s.ndim)))
    return _safe_div(jnp.sum(m * per_image), jnp.sum(m) * jnp.sum(c))


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
    factor ``|K|``; we follow the reference implementation (SPEC §1).

    Gradient: ``∂L/∂s = −y / (s + 1e-10) / normaliser`` (zero where ``y = 0``).
    """
    s, y, m, _ = _prepare_masked(probs, target, classes, mask)
    return cross_entropy_terms(s, y, m, _all_selected(s))


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
    s, y, m, _ = _prepare_masked(probs, target, classes, mask)
    return dice_terms(s, y, m, _all_selected(s), epsilon=epsilon, batch=batch)


def generalized_dice_loss(
    probs: jax.Array,
    target: jax.Array,
    *,
    classes: Sequence[int] | None = None,
    epsilon: float = 1e-10,
    absent: str = "reference",
    mask: jax.Array | None = None,
) -> jax.Array:
    r"""Generalised Dice loss (Sudre et al. 2017, paper ref. [15]; SPEC §1), as in the reference code.

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
    s, y, m, _ = _prepare_masked(probs, target, classes, mask)
    return generalized_dice_terms(s, y, m, _all_selected(s), epsilon=epsilon, absent=absent)


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
    s, y, m, idx = _prepare_masked(probs, target, classes, mask)
    a_k = _per_class_weight(a, "a", jnp.shape(probs)[-1], idx)
    b_k = _per_class_weight(b, "b", jnp.shape(probs)[-1], idx)
    return linear_terms(s, y, m, _all_selected(s), a_k, b_k, normalize=normalize)


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
    s, y, m, _ = _prepare_masked(probs, target, classes, mask)
    return dice_surrogate_terms(s, y, m, _all_selected(s), epsilon=epsilon)


# ----------------------------------------------------------------------------------------------------------
# Registry, combinations and the spec parser.
# ----------------------------------------------------------------------------------------------------------

#: Loss functions by name (the names :func:`build_loss` understands).
LOSSES: Mapping[str, Callable[..., jax.Array]] = types.MappingProxyType(
    {
        "ce": cross_entropy,
        "dsc": dice_loss,
        "gdl": generalized_dice_loss,
        "mime": mime_loss,
        "nm": negative_mime_loss,
        "surrogate": dice_surrogate_loss,
    }
)

#: Other accepted spellings in :func:`build_loss` specs.
LOSS_ALIASES: Mapping[str, str] = types.MappingProxyType({"dice": "dsc"})


class _WeightedSum:
    """``Σ_j w_j · fn_j(probs, target, mask=mask)``; what :func:`weighted_sum` returns."""

    def __init__(self, terms: tuple[tuple[float, Callable[..., jax.Array]], ...], name: str | None = None):
        self.terms = terms
        self.name = name

    def __call__(self, probs: jax.Array, target: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        total = jnp.zeros((), jnp.float32)
        for weight, fn in self.terms:
            total = total + jnp.float32(weight) * fn(probs, target, mask=mask)
        return total

    def __repr__(self) -> str:
        if self.name is not None:
            return f"<loss {self.name}>"
        return "weighted_sum(" + ", ".join(f"({w!r}, {fn!r})" for w, fn in self.terms) + ")"


def weighted_sum(*terms: tuple[float, LossFn]) -> LossFn:
    r"""Combine losses: ``λ_1 L_1 + λ_2 L_2 + ...`` (paper §2.1, e.g. nnU-Net's CE + Dice).

    Each term is ``(weight, loss_fn)`` with ``loss_fn(probs, target, *, mask=None)``; the result has the
    same signature and passes ``mask`` on to every term.
    """
    if not terms:
        raise ValueError("weighted_sum needs at least one (weight, loss_fn) term")
    checked = []
    for term in terms:
        if not (isinstance(term, tuple) and len(term) == 2 and callable(term[1])):
            raise TypeError(f"each term must be a (weight, loss_fn) tuple; got {term!r}")
        weight, fn = term
        checked.append((float(weight), fn))
    return _WeightedSum(tuple(checked))


class _Configured:
    """A registry loss with its options bound; ``fn(probs, target, *, mask=None)``."""

    def __init__(self, name: str, fn: Callable[..., jax.Array], options: Mapping[str, Any]):
        self.name = name
        self.fn = fn
        self.options = dict(options)

    def __call__(self, probs: jax.Array, target: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
        return self.fn(probs, target, mask=mask, **self.options)

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name


_NUMBER = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TERM = re.compile(rf"\s*(?:(?P<weight>{_NUMBER})\s*\*\s*)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*")


def _keyword_options(fn: Callable[..., Any]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "mask"
    }


def _parse_spec(spec: str) -> list[tuple[float, str]]:
    """``"name"`` or ``"w*name+w*name..."`` → ``[(w, canonical name), ...]`` (weights default to 1)."""
    valid = sorted(set(LOSSES) | set(LOSS_ALIASES))
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty loss spec {spec!r}; expected 'name' or 'w*name+w*name...' with names {valid}")
    terms = []
    pos = 0
    while True:
        match = _TERM.match(spec, pos)
        if match is None or match.end() == pos:
            raise ValueError(f"cannot parse loss spec {spec!r} at position {pos}: expected 'name' or 'w*name' "
                             f"(w a non-negative number) with names {valid}")
        name = match.group("name").lower()
        name = LOSS_ALIASES.get(name, name)
        if name not in LOSSES:
            raise ValueError(f"unknown loss {match.group('name')!r} in spec {spec!r}; valid names: {valid}")
        weight = float(match.group("weight")) if match.group("weight") is not None else 1.0
        terms.append((weight, name))
        pos = match.end()
        if pos == len(spec):
            return terms
        if spec[pos] != "+":
            raise ValueError(f"cannot parse loss spec {spec!r} at position {pos}: expected '+' between terms "
                             f"(grammar 'name' or 'w*name+w*name...', names {valid})")
        pos += 1


def build_loss(spec: str, **options: Any) -> LossFn:
    """A loss function from a spec string: ``"name"`` or ``"w*name+w*name..."`` (no eval: a tiny parser).

    Names: ``ce`` (:func:`cross_entropy`), ``dsc`` (alias ``dice``, :func:`dice_loss`), ``gdl``
    (:func:`generalized_dice_loss`), ``mime`` (:func:`mime_loss`), ``nm`` (:func:`negative_mime_loss`),
    ``surrogate`` (:func:`dice_surrogate_loss`). Weights are non-negative decimal numbers (``0.5``, ``1e-2``);
    a bare name has weight 1. Examples: ``"ce"``, ``"mime"``, ``"1*ce+1*dsc"``, ``"ce + 0.5*dice"``.

    ``options`` are keyword options of the loss functions; each is passed to every term whose function
    accepts it (``classes=(1, 2, 3)`` to all; ``a=``, ``b=`` to the mime only; ``epsilon=`` to the Dice-type
    losses). An option no term accepts raises ValueError listing the valid ones; ``mask`` is not an option
    (it is given when calling the loss). Returns ``fn(probs, target, *, mask=None) -> scalar``.
    """
    terms = _parse_spec(spec)
    if "mask" in options:
        raise ValueError("mask is not a build_loss option: pass it when calling the loss, fn(probs, target, mask=m)")
    accepted = {name: _keyword_options(LOSSES[name]) for _, name in terms}
    valid_options = sorted(set().union(*accepted.values()))
    unknown = sorted(set(options) - set(valid_options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for loss spec {spec!r}; valid options for its terms: "
                         f"{valid_options}")
    configured = [
        (weight, _Configured(name, LOSSES[name], {k: v for k, v in options.items() if k in accepted[name]}))
        for weight, name in terms
    ]
    if len(configured) == 1 and configured[0][0] == 1.0:
        return configured[0][1]
    return _WeightedSum(tuple(configured), name=spec.strip())


# ----------------------------------------------------------------------------------------------------------
# Per-class mime weights (our extension).
# ----------------------------------------------------------------------------------------------------------


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
