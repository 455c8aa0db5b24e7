"""Looking at a gradient: ``jax.grad`` of any loss with respect to the probabilities, the dynamic range of a
gradient map in decibels (paper §2.2: ≈1.5 dB for Dice against ≈10 dB for cross-entropy on Figure 1), and a
host-side summary of the distinct values a map takes on the foreground and background of each class."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: ``"power"``: ``10·log10(max/min)``; ``"amplitude"``: ``20·log10(max/min)``.
DYNAMIC_RANGE_CONVENTIONS = ("power", "amplitude")


def loss_gradient(loss_fn: Callable[..., jax.Array], probs: jax.Array, target: jax.Array, **kwargs: Any) -> jax.Array:
    """``∂loss_fn(probs, target, **kwargs)/∂probs`` by ``jax.grad``, in float32 (``probs`` is cast first).

    ``loss_fn`` is any loss of :mod:`segmime_jax.losses` (or a :func:`~segmime_jax.losses.build_loss` result);
    ``kwargs`` are passed on (e.g. ``classes=``, ``mask=``). Differentiating with respect to the probabilities,
    not the logits, is what paper §2.2 and Figure 1 show.

    Args:
      loss_fn: a loss ``loss_fn(probs, target, **kwargs)`` returning a scalar.
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
      target: one-hot ground truth ``y``, same shape as ``probs``.
      **kwargs: keyword arguments passed on to ``loss_fn``.

    Returns:
      ``∂loss/∂probs``, float32, the shape of ``probs`` ``(B, *spatial, K)``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import cross_entropy_gradient, loss_gradient
      >>> from segmime_jax.losses import cross_entropy
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> grad = loss_gradient(cross_entropy, probs, target, classes=(1, 2))
      >>> print(np.asarray(grad[target == 1]).round(4))  # -1 / (2 s) on the ground truth of classes 1 and 2 only
      [ 0.      0.     -0.625  -0.8333]
      >>> closed_form = cross_entropy_gradient(probs, target, classes=(1, 2))
      >>> print(bool(jnp.allclose(grad, closed_form)))
      True

    References:
      Kervadec & de Bruijne (2023), §2.2 and Figure 1.
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
    (see :mod:`segmime_jax.paper.gradient_study`).

    ``mask``: optional boolean array broadcastable to ``grad`` selecting the elements considered (e.g. one class).
    ``relative_floor``: magnitudes ``<= relative_floor · max`` count as zero (default 0: only exact zeros are
    ignored, so CE's zero background is excluded but Dice's tiny ``ε/U²`` background when ``I = 0`` is not).
    A map with no non-zero element has range 0 dB; a map with a NaN among the selected elements has range NaN.
    Jit-safe.

    Args:
      grad: a gradient map of any shape, e.g. ``(B, *spatial, K)``.
      mask: optional boolean array broadcastable to ``grad``; ``None`` (default) considers every element.
      convention: one of :data:`DYNAMIC_RANGE_CONVENTIONS`: ``"power"`` (default) or ``"amplitude"``.
      relative_floor: magnitudes up to this fraction of the largest one are ignored.

    Returns:
      The dynamic range in dB, a float32 scalar (shape ``()``).

    Raises:
      ValueError: if ``convention`` is not one of :data:`DYNAMIC_RANGE_CONVENTIONS`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import cross_entropy_gradient, dice_gradient, dynamic_range_db
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> dice = dice_gradient(probs, target)
      >>> print(f"{float(dynamic_range_db(dice, mask=jnp.arange(3) == 0)):.4f}")  # class 0: 10 log10((U-I)/I)
      2.8255
      >>> print(f"{float(dynamic_range_db(dice, mask=jnp.arange(3) == 0, convention='amplitude')):.4f}")
      5.6509
      >>> ce = cross_entropy_gradient(probs, target)
      >>> print(f"{float(dynamic_range_db(ce)):.4f}")  # 10 log10(0.8 / 0.5): its zero background is excluded
      2.0412
      >>> print(f"{float(dynamic_range_db(jnp.array([1.0, 0.5, 1e-6]), relative_floor=1e-3)):.4f}")
      3.0103

    References:
      Kervadec & de Bruijne (2023), §2.2 ("Upper bound": 1.5 dB for Dice, 10 dB for cross-entropy, Figure 1).
    """
    if convention not in DYNAMIC_RANGE_CONVENTIONS:
        raise ValueError(f"convention must be one of {DYNAMIC_RANGE_CONVENTIONS}; got {convention!r}")
    factor = 10.0 if convention == "power" else 20.0
    magnitude = jnp.abs(jnp.asarray(grad).astype(jnp.float32))
    selected = (
        jnp.ones(magnitude.shape, bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask, bool), magnitude.shape)
    )
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

    Returned by :func:`gradient_values`, one per class; the same fields for the foreground and the background.
    ``*_values`` hold the sorted distinct values when there are at most ``max_values`` of them, else ``()``
    (the values are then only summarised by min/max/mean and the count ``*_distinct``).

    Attributes:
      class_index: the class label ``k``.
      foreground_pixels, background_pixels: the number of elements with ``y = 1`` / ``y = 0`` (whole batch).
      foreground_distinct, background_distinct: the number of distinct gradient values there.
      foreground_min, foreground_max, foreground_mean, background_min, background_max, background_mean:
        Python floats; NaN when there is no such element.
      foreground_values, background_values: the sorted distinct values (Python floats), or ``()``.

    Example:
      >>> import numpy as np
      >>> from segmime_jax.gradients import gradient_values
      >>> grad = np.array([[[-0.25, 0.125], [0.5, -0.5]]])  # (B, pixels, K) = (1, 2, 2)
      >>> target = np.array([[[1.0, 0.0], [0.0, 1.0]]])
      >>> summary = gradient_values(grad, target)[0]
      >>> print(summary.class_index, summary.foreground_values, summary.background_values)
      0 (-0.25,) (0.5,)
      >>> print(summary.to_dict()["background_values"], summary.to_dict()["background_mean"])
      [0.5] 0.5
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
        """The fields as a JSON-ready dict (tuples become lists)."""
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
    Not jittable (uses ``np.unique``).

    Args:
      grad: a gradient map, shape ``(B, *spatial, K)`` (JAX or numpy; read as float32 on the host).
      target: one-hot ground truth, same shape as ``grad``; ``y > 0.5`` counts as foreground.
      classes: the class indices to summarise; ``None`` (default) for all ``K``.
      max_values: the most distinct values listed in ``*_values``.

    Returns:
      A list with one :class:`ClassGradientSummary` per selected class, in the order of ``classes``.

    Raises:
      ValueError: if ``grad`` and ``target`` differ in shape.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> from segmime_jax.gradients import cross_entropy_gradient, dice_gradient, gradient_values
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> dice = gradient_values(dice_gradient(probs, target), target)[1]  # class 1: two values (Eq. 6)
      >>> print(dice.foreground_distinct, round(dice.foreground_min, 4), dice.background_distinct,
      ...       round(dice.background_min, 4))
      1 -0.1813 1 0.0853
      >>> ce = gradient_values(cross_entropy_gradient(probs, target), target, classes=(0,))[0]
      >>> print(ce.foreground_pixels, [round(v, 4) for v in ce.foreground_values])  # one value per probability
      2 [-0.5, -0.3571]

    References:
      Kervadec & de Bruijne (2023), §2.2 (Eq. 6, Figure 1), §2.3 (Eq. 8), §2.4 (Eq. 10).
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
