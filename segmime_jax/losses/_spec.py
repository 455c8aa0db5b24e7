"""Weighted combinations of losses and :func:`build_loss`'s small spec language (``"1*ce+1*dsc"``; never ``eval``).

The names a spec may use are those of the registry (:mod:`segmime_jax.losses._registry`), read when the spec is
parsed, so a loss added by :func:`~segmime_jax.losses.register_loss` works here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jax
import jax.numpy as jnp

from segmime_jax.losses._registry import LOSS_ALIASES, LOSSES, canonical_name, definition_of


class LossFn(Protocol):
    """A configured loss: ``fn(probs, target, *, mask=None) -> float32 scalar``.

    What :func:`build_loss` and :func:`weighted_sum` return, and what :func:`weighted_sum` takes: a loss function
    of :data:`~segmime_jax.losses.LOSSES` with every option but ``mask`` bound.

    Args:
      probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``.
      target: one-hot ground truth ``y``, same shape as ``probs``.
      mask: optional ``(B,)`` image weights (1 real image, 0 padding).

    Returns:
      The loss, a float32 scalar (shape ``()``).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import LossFn, build_loss
      >>> loss_fn: LossFn = build_loss("dsc", classes=(1, 2))
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> print(f"{float(loss_fn(probs, target, mask=jnp.array([1.0]))):.4f}")
      0.3800
    """

    def __call__(self, probs: jax.Array, target: jax.Array, *, mask: jax.Array | None = None) -> jax.Array: ...


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

    .. math:: \mathcal{L}(s, y) = \sum_j \lambda_j \mathcal{L}_j(s, y)

    Each term is ``(weight, loss_fn)`` with ``loss_fn(probs, target, *, mask=None)``; the result has the
    same signature and passes ``mask`` on to every term.

    Args:
      *terms: one or more ``(weight, loss_fn)`` tuples; ``weight`` is converted to a Python float, ``loss_fn``
        is a :class:`LossFn` (e.g. a :func:`build_loss` result, or a loss with its options bound).

    Returns:
      A :class:`LossFn`, ``fn(probs, target, *, mask=None)`` returning a float32 scalar.

    Raises:
      ValueError: if no term is given.
      TypeError: if a term is not a ``(weight, callable)`` tuple.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import build_loss, weighted_sum
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> loss_fn = weighted_sum((1.0, build_loss("ce")), (0.5, build_loss("dsc")))
      >>> print(f"{float(loss_fn(probs, target)):.4f}")  # 0.4459 + 0.5 * 0.3581
      0.6250

    References:
      Kervadec & de Bruijne (2023), §2.1 (``λ_1 L_1 + λ_2 L_2``); nnU-Net's CE + Dice: Isensee et al. (2021).
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


def parse_spec(spec: str) -> list[tuple[float, str]]:
    """``"name"`` or ``"w*name+w*name..."`` → ``[(w, canonical name), ...]`` (weights default to 1)."""
    valid = sorted(set(LOSSES) | set(LOSS_ALIASES))
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty loss spec {spec!r}; expected 'name' or 'w*name+w*name...' with names {valid}")
    terms = []
    pos = 0
    while True:
        match = _TERM.match(spec, pos)
        if match is None or match.end() == pos:
            raise ValueError(
                f"cannot parse loss spec {spec!r} at position {pos}: expected 'name' or 'w*name' "
                f"(w a non-negative number) with names {valid}"
            )
        name = canonical_name(match.group("name"))
        if name not in LOSSES:
            raise ValueError(f"unknown loss {match.group('name')!r} in spec {spec!r}; valid names: {valid}")
        weight = float(match.group("weight")) if match.group("weight") is not None else 1.0
        terms.append((weight, name))
        pos = match.end()
        if pos == len(spec):
            return terms
        if spec[pos] != "+":
            raise ValueError(
                f"cannot parse loss spec {spec!r} at position {pos}: expected '+' between terms "
                f"(grammar 'name' or 'w*name+w*name...', names {valid})"
            )
        pos += 1


def build_loss(spec: str, **options: Any) -> LossFn:
    """A loss function from a spec string: ``"name"`` or ``"w*name+w*name..."`` (no eval: a tiny parser).

    Names: ``ce`` (:func:`cross_entropy`), ``dsc`` (alias ``dice``, :func:`dice_loss`), ``gdl``
    (:func:`generalized_dice_loss`), ``mime`` (:func:`mime_loss`), ``nm`` (:func:`negative_mime_loss`),
    ``surrogate`` (:func:`dice_surrogate_loss`), and those added by :func:`register_loss` (all in :data:`LOSSES`).
    Weights are non-negative decimal numbers (``0.5``, ``1e-2``); a bare name has weight 1. Examples: ``"ce"``,
    ``"mime"``, ``"1*ce+1*dsc"``, ``"ce + 0.5*dice"``.

    ``options`` are keyword options of the loss functions; each is passed to every term whose function
    accepts it (``classes=(1, 2, 3)`` to all; ``a=``, ``b=`` to the mime only; ``epsilon=`` to the Dice-type
    losses). An option no term accepts raises ValueError listing the valid ones; ``mask`` is not an option
    (it is given when calling the loss).

    Args:
      spec: ``"name"`` or ``"w*name+w*name..."`` with the names above (case-insensitive; spaces allowed).
      **options: keyword options of the loss functions, each passed to every term that accepts it.

    Returns:
      A :class:`LossFn`, ``fn(probs, target, *, mask=None)`` returning a float32 scalar: the configured loss
      itself for a bare name (or ``"1*name"``), else a weighted sum of the terms.

    Raises:
      ValueError: if the spec does not parse or names an unknown loss, if an option is accepted by no term, or if
        ``mask`` is given as an option.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import build_loss
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> loss_fn = build_loss("1*ce+1*dsc")
      >>> print(loss_fn, f"{float(loss_fn(probs, target)):.4f}")  # nnU-Net's CE + Dice
      <loss 1*ce+1*dsc> 0.8040
      >>> print(build_loss("mime", a=1.0, b=0.0))  # the options a mime accepts
      mime(a=1.0, b=0.0)
      >>> print(f"{float(build_loss('ce + 0.5*dice', classes=(1, 2))(probs, target)):.4f}")
      0.5570

    References:
      Kervadec & de Bruijne (2023), §2.1 (combinations ``λ_1 L_1 + λ_2 L_2``) and §3.1 (the compared losses).
    """
    terms = parse_spec(spec)
    if "mask" in options:
        raise ValueError("mask is not a build_loss option: pass it when calling the loss, fn(probs, target, mask=m)")
    accepted = {name: definition_of(name).options for _, name in terms}
    valid_options = sorted(set().union(*accepted.values()))
    unknown = sorted(set(options) - set(valid_options))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for loss spec {spec!r}; valid options for its terms: {valid_options}"
        )
    configured = [
        (weight, _Configured(name, LOSSES[name], {k: v for k, v in options.items() if k in accepted[name]}))
        for weight, name in terms
    ]
    if len(configured) == 1 and configured[0][0] == 1.0:
        return configured[0][1]
    return _WeightedSum(tuple(configured), name=spec.strip())
