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

Example:
  >>> import jax
  >>> import jax.numpy as jnp
  >>> from segmime_jax.losses import LossProgram, build_loss, loss_from_spec, loss_params
  >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
  >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
  >>> program, mime = loss_from_spec("mime", num_classes=3, classes=(1, 2))
  >>> nm = loss_params("nm", num_classes=3, classes=(1, 2))
  >>> program = LossProgram.covering(mime, nm)  # one program for both runs
  >>> step = jax.jit(program)  # traced once; the params are arguments, not constants
  >>> mime_fn, nm_fn = build_loss("mime", classes=(1, 2)), build_loss("nm", classes=(1, 2))
  >>> print(f"{float(step(mime, probs, target)):.3f} {float(mime_fn(probs, target)):.3f}")
  -0.319 -0.319
  >>> print(f"{float(step(nm, probs, target)):.4f} {float(nm_fn(probs, target)):.4f}")
  -0.1750 -0.1750
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from segmime_jax.losses import terms as F
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

    Evaluated by a :class:`LossProgram`; built by :func:`loss_params` or :func:`loss_from_spec`. The arrays may
    carry leading axes (e.g. one row per run of a grid, stacked), which :meth:`weight` keeps.

    Attributes:
      weights: float32 ``(len(TERMS),)``, the weight of each term of :data:`TERMS`.
      a, b: float32 ``(K,)``, the mime's weights on and off the ground truth (paper Eq. 9), per class.
      classes: float32 ``(K,)``, 1 for the classes the loss looks at, 0 for the others.

    Example:
      >>> from segmime_jax.losses import loss_params
      >>> params = loss_params("1*ce+1*dsc", num_classes=3, classes=(1, 2))
      >>> print(params.weights, params.classes)
      [1. 1. 0. 0. 0. 0.] [0. 1. 1.]
      >>> print(float(params.weight("dsc")), float(params.weight("mime")))
      1.0 0.0

    References:
      Kervadec & de Bruijne (2023), Eq. 9 (``a``, ``b``).
    """

    weights: jax.Array
    a: jax.Array
    b: jax.Array
    classes: jax.Array

    def weight(self, term: str) -> Any:
        """The weight of ``term``, one of :data:`TERMS`.

        Args:
          term: a name of :data:`TERMS`.

        Returns:
          An array of the leading shape of ``weights`` without its last axis (a scalar for one run).
        """
        return self.weights[..., TERMS.index(term)]


def loss_params(
    spec: str,
    num_classes: int,
    *,
    classes: Sequence[int] | None = None,
    a: float | Sequence[float] | np.ndarray = 1.9,
    b: float | Sequence[float] | np.ndarray = 0.1,
) -> LossParams:
    """The :class:`LossParams` of a :func:`~segmime_jax.losses.build_loss` spec.

    Args:
      spec: ``"name"`` or ``"w*name+w*name..."`` with names of :data:`TERMS` (``dice`` = ``dsc``); a repeated
        name adds up its weights.
      num_classes: K, the number of channels of the probabilities (background included).
      classes: the class indices the loss looks at (``None``: all).
      a, b: the mime's weights (scalars or per-class arrays of shape ``(K,)``); the negative mime always uses
        ``a = 1``, ``b = 0``.

    Returns:
      A :class:`LossParams` of host (numpy) float32 arrays, ``weights`` ``(len(TERMS),)``, ``a``, ``b`` and
      ``classes`` ``(K,)``; they become device arrays when passed to a jitted step.

    Raises:
      ValueError: if the spec does not parse, a class index is out of range, or ``a``/``b`` has a shape other
        than ``()`` or ``(K,)``.

    Example:
      >>> from segmime_jax.losses import loss_params
      >>> params = loss_params("0.5*mime+2*nm+mime", num_classes=3, classes=(1, 2))
      >>> print(params.weights)  # the two mime terms add up
      [0.  0.  0.  1.5 2.  0. ]
      >>> print(params.a, params.b, params.classes)
      [1.9 1.9 1.9] [0.1 0.1 0.1] [0. 1. 1.]
    """
    weights = np.zeros(len(TERMS), np.float32)
    for weight, name in parse_spec(spec):
        weights[TERMS.index(name)] += weight
    selected = np.zeros(num_classes, np.float32)
    selected[list(class_indices(num_classes, classes))] = 1.0
    return LossParams(
        weights=weights, a=_per_class(a, "a", num_classes), b=_per_class(b, "b", num_classes), classes=selected
    )


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

    Calling the program, ``program(params, probs, target, mask=None)``, gives the loss of the module docstring's
    formula: each computed term restricted to the classes with ``params.classes[k] = 1``, times its weight.

    Raises:
      ValueError: if ``terms`` is empty or holds a name not in :data:`TERMS`, or ``gdl_absent`` is unknown.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import LossProgram, dice_loss, loss_params
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> program = LossProgram(terms=("dsc",), dice_batch=True)
      >>> value = program(loss_params("dsc", num_classes=3), probs, target)
      >>> print(f"{float(value):.4f} {float(dice_loss(probs, target, batch=True)):.4f}")
      0.3581 0.3581
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
        """The program computing every term some ``params`` weights, with ``options``.

        Args:
          *params: :class:`LossParams` of host arrays, each of any leading shape (e.g. stacked runs).
          **options: the other fields of :class:`LossProgram` (``epsilon``, ``dice_batch``, ``normalize``,
            ``gdl_absent``).

        Returns:
          A :class:`LossProgram` whose ``terms`` are the terms with a non-zero weight in some ``params``.

        Example:
          >>> from segmime_jax.losses import LossProgram, loss_params
          >>> grid = [loss_params(spec, num_classes=3) for spec in ("ce", "dsc", "1*ce+1*dsc", "mime")]
          >>> print(LossProgram.covering(*grid).terms)
          ('ce', 'dsc', 'mime')
        """
        used = np.zeros(len(TERMS), bool)
        for p in params:
            used |= np.asarray(p.weights).reshape(-1, len(TERMS)).any(0)
        return cls(terms=tuple(t for t, u in zip(TERMS, used, strict=True) if u), **options)

    def check(self, params: LossParams) -> None:
        """Check that this program computes every term ``params`` weights.

        Args:
          params: a :class:`LossParams` of host arrays, of any leading shape.

        Raises:
          ValueError: if ``params`` weights a term this program does not compute (its weight would be ignored).
        """
        weights = np.asarray(params.weights).reshape(-1, len(TERMS))
        missing = [t for i, t in enumerate(TERMS) if t not in self.terms and weights[:, i].any()]
        if missing:
            raise ValueError(f"the loss weights terms {missing} that this program does not compute ({self.terms})")

    def __call__(
        self, params: LossParams, probs: jax.Array, target: jax.Array, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """The loss of ``params`` for a batch.

        Args:
          params: the :class:`LossParams` of one run (``weights`` ``(len(TERMS),)``, ``a``, ``b``, ``classes``
            ``(K,)``); host or device arrays, traced under ``jit``.
          probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
          target: one-hot ground truth ``y``, same shape as ``probs``.
          mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the losses.

        Returns:
          The weighted sum of the terms, a float32 scalar (shape ``()``).
        """
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
    """The loss as ``(program, params)``: :func:`~segmime_jax.losses.build_loss`'s spec and options, split.

    ``classes``, ``a`` and ``b`` become data (:class:`LossParams`); ``epsilon``, ``batch``, ``normalize`` and
    ``absent`` become the program's options (:class:`LossProgram` ``epsilon``, ``dice_batch``, ``normalize``,
    ``gdl_absent``). ``program(params, probs, target, mask=mask)`` equals ``build_loss(spec, **options)(probs,
    target, mask=mask)`` up to float summation order.

    Args:
      spec: ``"name"`` or ``"w*name+w*name..."`` with names of :data:`TERMS` (``dice`` = ``dsc``).
      num_classes: K, the number of channels of the probabilities (background included).
      **options: ``classes``, ``a``, ``b``, ``epsilon``, ``batch``, ``normalize``, ``absent``.

    Returns:
      ``(program, params)``: the :class:`LossProgram` computing exactly the spec's terms, and its
      :class:`LossParams` (host float32 arrays).

    Raises:
      ValueError: for an unknown option, or anything :func:`loss_params` or :class:`LossProgram` rejects.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import build_loss, loss_from_spec
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> program, params = loss_from_spec("1*ce+1*dsc", num_classes=3, epsilon=1e-5)
      >>> print(program.terms, program.epsilon)
      ('ce', 'dsc') 1e-05
      >>> reference = build_loss("1*ce+1*dsc", epsilon=1e-5)(probs, target)
      >>> print(f"{float(program(params, probs, target)):.4f} {float(reference):.4f}")
      0.8040 0.8040
    """
    unknown = sorted(set(options) - set(_STATIC_OPTIONS) - set(_DATA_OPTIONS))
    if unknown:
        valid = sorted(set(_STATIC_OPTIONS) | set(_DATA_OPTIONS))
        raise ValueError(f"unknown loss option(s) {unknown}; valid: {valid}")
    params = loss_params(spec, num_classes, **{k: v for k, v in options.items() if k in _DATA_OPTIONS})
    static = {_STATIC_OPTIONS[k]: v for k, v in options.items() if k in _STATIC_OPTIONS}
    return LossProgram.covering(params, **static), params
