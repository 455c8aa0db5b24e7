"""The loss as data: one compiled program for every loss of a grid.

A loss spec such as ``"ce"``, ``"mime"`` or ``"1*ce+1*dsc"`` (:func:`segmime_jax.losses.build_loss`) becomes a
:class:`LossParams` pytree of arrays — a weight per named term, the mime's per-class ``a`` and ``b``, and the
selected classes as a 0/1 mask — evaluated by a :class:`LossProgram`, a static description of which terms to
compute. A train step that takes the :class:`LossParams` as an argument is traced and compiled once and serves
the CE, Dice, Mime and NM runs of a grid alike; only the arrays differ between runs.

.. math::
    \\mathcal{L}(s, y; p) = w_{ce} \\mathcal{L}_{CE} + w_{dsc} \\mathcal{L}_{DSC} + w_{gdl} \\mathcal{L}_{GDL}
    + w_{sur} \\mathcal{L}_{sur} + \\frac{1}{N} \\left[-(w_{mime} a + w_{nm}) y + w_{mime} b (1 - y)\\right]^\\top s

Every term is the function of :mod:`segmime_jax.losses.functions` (the same arithmetic, its ``*_terms``),
restricted to the classes with ``classes[k] = 1``. The mime (paper Eq. 8-9) and the negative mime (Eq. 10,
``a = 1``, ``b = 0``) are linear in ``s``, so they are one term with per-class weights.

Example::

    program, params = loss_from_spec("mime", num_classes=4, classes=(1, 2, 3))
    value = program(params, probs, onehot, mask=mask)   # == build_loss("mime", classes=(1, 2, 3))(...)
    nm = loss_params("nm", num_classes=4)                # same program: LossProgram.covering(params, nm)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from segmime_jax.losses import functions as F
from segmime_jax.losses.inputs import class_indices, prepare_masked
from segmime_jax.losses.spec import parse_spec

__all__ = ["TERMS", "LossParams", "LossProgram", "loss_from_spec", "loss_params"]

#: The named terms, in the order of :attr:`LossParams.weights`.
TERMS: tuple[str, ...] = ("ce", "dsc", "gdl", "mime", "nm", "surrogate")
_LINEAR = ("mime", "nm")
# build_loss options that change the program (static) and those that are data (LossParams).
_STATIC_OPTIONS = {"epsilon": "epsilon", "batch": "dice_batch", "normalize": "normalize", "absent": "gdl_absent"}
_DATA_OPTIONS = ("classes", "a", "b")


@struct.dataclass
class LossParams:
    """The per-run arrays of a loss (a pytree: stack, shard or ``vmap`` it like any other).

    Attributes:
      weights: float32 ``(len(TERMS),)``, the weight of each term of :data:`TERMS`.
      a, b: float32 ``(K,)``, the mime's weights on and off the ground truth (paper Eq. 9), per class.
      classes: float32 ``(K,)``, 1 for the classes the loss looks at, 0 for the others.
    """

    weights: jax.Array
    a: jax.Array
    b: jax.Array
    classes: jax.Array

    def weight(self, term: str) -> Any:
        """The weight of ``term`` (an array of the leading shape of ``weights`` without its last axis)."""
        return self.weights[..., TERMS.index(term)]


def loss_params(spec: str, num_classes: int, *, classes: Sequence[int] | None = None,
                a: float | Sequence[float] | np.ndarray = 1.9,
                b: float | Sequence[float] | np.ndarray = 0.1) -> LossParams:
    """The :class:`LossParams` of a :func:`~segmime_jax.losses.build_loss` spec.

    Args:
      spec: ``"name"`` or ``"w*name+w*name..."`` with names of :data:`TERMS` (``dice`` = ``dsc``); a repeated
        name adds up its weights.
      num_classes: K, the number of channels of the probabilities (background included).
      classes: the class indices the loss looks at (``None``: all).
      a, b: the mime's weights (scalars or per-class arrays of shape ``(K,)``); the negative mime always uses
        ``a = 1``, ``b = 0``.

    Returns:
      Host (numpy) arrays; they become device arrays when passed to a jitted step.
    """
    weights = np.zeros(len(TERMS), np.float32)
    for weight, name in parse_spec(spec):
        weights[TERMS.index(name)] += weight
    selected = np.zeros(num_classes, np.float32)
    selected[list(class_indices(num_classes, classes))] = 1.0
    return LossParams(weights=weights, a=_per_class(a, "a", num_classes), b=_per_class(b, "b", num_classes),
                      classes=selected)


def _per_class(value: Any, name: str, num_classes: int) -> np.ndarray:
    array = np.asarray(value, np.float32)
    if array.ndim == 0:
        return np.full(num_classes, array, np.float32)
    if array.shape != (num_classes,):
        raise ValueError(f"{name} must be a scalar or a per-class array of shape ({num_classes},); got {array.shape}")
    return array


@dataclasses.dataclass(frozen=True)
class LossProgram:
    """Which terms to compute, and the options that are code rather than data (hashable, a jit static).

    Attributes:
      terms: the terms of :data:`TERMS` to evaluate; a :class:`LossParams` may only weight these.
      epsilon: the ``ε`` of the Dice-type terms (paper Eq. 3).
      dice_batch: nnU-Net's batch Dice (``dice_loss(batch=True)``).
      normalize: normalise the mime terms per element (``mime_loss(normalize=...)``).
      gdl_absent: the generalised Dice loss's convention for absent classes (``"reference"`` or ``"max"``).
    """

    terms: tuple[str, ...] = TERMS
    epsilon: float = 1e-10
    dice_batch: bool = False
    normalize: bool = True
    gdl_absent: str = "reference"

    def __post_init__(self) -> None:
        unknown = [t for t in self.terms if t not in TERMS]
        if unknown or not self.terms:
            raise ValueError(f"terms must be a non-empty subset of {TERMS}, got {self.terms}")
        if self.gdl_absent not in F.GDL_ABSENT:
            raise ValueError(f"gdl_absent must be one of {F.GDL_ABSENT}, got {self.gdl_absent!r}")
        object.__setattr__(self, "terms", tuple(t for t in TERMS if t in self.terms))  # canonical order

    @classmethod
    def covering(cls, *params: LossParams, **options: Any) -> LossProgram:
        """The program computing every term some ``params`` weights (host arrays), with ``options``."""
        used = np.zeros(len(TERMS), bool)
        for p in params:
            used |= np.asarray(p.weights).reshape(-1, len(TERMS)).any(0)
        return cls(terms=tuple(t for t, u in zip(TERMS, used, strict=True) if u), **options)

    def check(self, params: LossParams) -> None:
        """ValueError when ``params`` (host arrays) weights a term this program does not compute."""
        weights = np.asarray(params.weights).reshape(-1, len(TERMS))
        missing = [t for i, t in enumerate(TERMS) if t not in self.terms and weights[:, i].any()]
        if missing:
            raise ValueError(f"the loss weights terms {missing} that this program does not compute ({self.terms})")

    def __call__(self, params: LossParams, probs: jax.Array, target: jax.Array, *,
                 mask: jax.Array | None = None) -> jax.Array:
        """The loss: a float32 scalar (``probs``, ``target`` ``(B, *spatial, K)``, ``mask`` ``(B,)``)."""
        s, y, m, _ = prepare_masked(probs, target, None, mask)
        c = jnp.asarray(params.classes, jnp.float32)
        total = jnp.zeros((), jnp.float32)
        for term in self.terms:
            w = params.weight(term)
            if term == "ce":
                total = total + w * F.cross_entropy_terms(s, y, m, c)
            elif term == "dsc":
                total = total + w * F.dice_terms(s, y, m, c, epsilon=self.epsilon, batch=self.dice_batch)
            elif term == "gdl":
                total = total + w * F.generalized_dice_terms(s, y, m, c, epsilon=self.epsilon, absent=self.gdl_absent)
            elif term == "surrogate":
                total = total + w * F.dice_surrogate_terms(s, y, m, c, epsilon=self.epsilon)
        if any(t in self.terms for t in _LINEAR):
            w_mime = params.weight("mime") if "mime" in self.terms else 0.0
            w_nm = params.weight("nm") if "nm" in self.terms else 0.0
            a = w_mime * params.a + w_nm
            b = w_mime * params.b
            total = total + F.linear_terms(s, y, m, c, a, b, normalize=self.normalize)
        return total


def loss_from_spec(spec: str, num_classes: int, **options: Any) -> tuple[LossProgram, LossParams]:
    """``(program, params)`` of a spec with :func:`~segmime_jax.losses.build_loss`'s options: ``classes``, ``a``,
    ``b`` become data, ``epsilon``, ``batch``, ``normalize`` and ``absent`` the program's options."""
    unknown = sorted(set(options) - set(_STATIC_OPTIONS) - set(_DATA_OPTIONS))
    if unknown:
        valid = sorted(set(_STATIC_OPTIONS) | set(_DATA_OPTIONS))
        raise ValueError(f"unknown loss option(s) {unknown}; valid: {valid}")
    params = loss_params(spec, num_classes, **{k: v for k, v in options.items() if k in _DATA_OPTIONS})
    static = {_STATIC_OPTIONS[k]: v for k, v in options.items() if k in _STATIC_OPTIONS}
    return LossProgram.covering(params, **static), params
