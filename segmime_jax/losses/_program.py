"""The loss as data: one compiled program for every loss of a grid.

A loss spec such as ``"ce"``, ``"mime"`` or ``"1*ce+1*dsc"`` (:func:`segmime_jax.losses.build_loss`) becomes a
:class:`LossParams` pytree of arrays — a weight per named term, the mime's per-class ``a`` and ``b``, and the
selected classes as a 0/1 mask — evaluated by a :class:`LossProgram`, a static description of which terms to
compute. A train step that takes the :class:`LossParams` as an argument is traced and compiled once and serves
the CE, Dice, Mime and NM runs of a grid alike; only the arrays differ between runs.

.. math::
    \\mathcal{L}(s, y; p) = \\sum_{t\\ \\text{not linear}} w_t \\mathcal{L}_t(s, y)
    + \\frac{1}{N} \\Big[-\\big(\\textstyle\\sum_{t\\ \\text{linear}} w_t a_t\\big) y
    + \\big(\\textstyle\\sum_{t\\ \\text{linear}} w_t b_t\\big) (1 - y)\\Big]^\\top s

e.g. ``w_ce L_CE + w_dsc L_DSC + w_gdl L_GDL + w_sur L_sur + (1/N)[−(w_mime a + w_nm) y + w_mime b (1 − y)]ᵀ s``
for the paper's losses. Every term is the arithmetic of its registry entry
(:mod:`segmime_jax.losses._registry`), the same as its public function's, restricted to the classes with
``classes[k] = 1``. The mime (paper Eq. 8-9) and the negative mime (Eq. 10, ``a = 1``, ``b = 0``) are linear in
``s``, so they are one term with per-class weights: exact (a sum of linear losses is the linear loss of the summed
weights), and one term's cost whatever the mix.

The terms are those of the registry when a program or a :class:`LossParams` is built, so a loss added by
:func:`~segmime_jax.losses.register_loss` works here too: a :class:`LossParams` names its weights
(``params.terms``) and a :class:`LossProgram` holds the definitions of its terms, so neither depends on the
registry staying as it was.

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

from segmime_jax.losses._dice import GDL_ABSENT
from segmime_jax.losses._inputs import class_indices, prepare_masked
from segmime_jax.losses._mime import linear_terms
from segmime_jax.losses._registry import LOSSES, STATIC_OPTIONS, TERMS, LossDefinition, definition_of
from segmime_jax.losses._spec import parse_spec

# The build_loss options that are data (LossParams); the others (STATIC_OPTIONS) are the program's.
_DATA_OPTIONS = ("classes", "a", "b")


@struct.dataclass
class LossParams:
    """The per-run arrays of a loss (a pytree: stack, shard or ``vmap`` it like any other).

    Evaluated by a :class:`LossProgram`; built by :func:`loss_params` or :func:`loss_from_spec`. The arrays may
    carry leading axes (e.g. one row per run of a grid, stacked), which :meth:`weight` keeps.

    Attributes:
      weights: float32 ``(len(terms),)``, the weight of each loss of ``terms``.
      a, b: float32 ``(K,)``, the mime's weights on and off the ground truth (paper Eq. 9), per class.
      classes: float32 ``(K,)``, 1 for the classes the loss looks at, 0 for the others.
      terms: the names of the weights (static: part of the pytree's structure, not a leaf), the registered losses
        when it was built (:data:`TERMS`, then any added by :func:`~segmime_jax.losses.register_loss`).

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
    terms: tuple[str, ...] = struct.field(pytree_node=False, default=TERMS)

    def weight(self, term: str) -> Any:
        """The weight of ``term``, one of :attr:`terms`.

        Args:
          term: a name of :attr:`terms`.

        Returns:
          An array of the leading shape of ``weights`` without its last axis (a scalar for one run).

        Raises:
          ValueError: if ``term`` is not one of :attr:`terms`.
        """
        if term not in self.terms:
            raise ValueError(f"these loss params have no weight for {term!r}; they weight {self.terms}")
        return self.weights[..., self.terms.index(term)]


def _host_weights(params: LossParams) -> np.ndarray:
    """``params.weights`` as a host array of shape ``(runs, len(params.terms))``, whatever its leading shape."""
    weights = np.asarray(params.weights)
    if weights.ndim == 0 or weights.shape[-1] != len(params.terms):
        raise ValueError(f"loss weights of shape {weights.shape} do not match the terms {params.terms}")
    return weights.reshape(-1, len(params.terms))


def _weighted_terms(params: LossParams) -> list[str]:
    """The terms some run of ``params`` weights (non-zero), in the order of ``params.terms``."""
    used = _host_weights(params).any(axis=0)
    return [term for term, u in zip(params.terms, used, strict=True) if u]


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
      spec: ``"name"`` or ``"w*name+w*name..."`` with names of :data:`~segmime_jax.losses.LOSSES` (``dice`` =
        ``dsc``); a repeated name adds up its weights.
      num_classes: K, the number of channels of the probabilities (background included).
      classes: the class indices the loss looks at (``None``: all).
      a, b: the mime's weights (scalars or per-class arrays of shape ``(K,)``); the negative mime always uses
        ``a = 1``, ``b = 0``.

    Returns:
      A :class:`LossParams` of host (numpy) float32 arrays, ``weights`` ``(len(LOSSES),)`` (one per registered
      loss, named by its ``terms``), ``a``, ``b`` and ``classes`` ``(K,)``; they become device arrays when passed
      to a jitted step.

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
    terms = tuple(LOSSES)  # the registered losses, now
    weights = np.zeros(len(terms), np.float32)
    for weight, name in parse_spec(spec):
        weights[terms.index(name)] += weight
    selected = np.zeros(num_classes, np.float32)
    selected[list(class_indices(num_classes, classes))] = 1.0
    a, b = _per_class(a, "a", num_classes), _per_class(b, "b", num_classes)
    return LossParams(weights=weights, a=a, b=b, classes=selected, terms=terms)


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
      terms: the names of the losses to evaluate, in registration order (default: every registered loss); a
        :class:`LossParams` may only weight these.
      epsilon: the ``ε`` of the Dice-type terms (paper Eq. 3).
      dice_batch: nnU-Net's batch Dice (``dice_loss(batch=True)``).
      normalize: normalise the mime terms per element (``mime_loss(normalize=...)``).
      gdl_absent: the generalised Dice loss's convention for absent classes (``"reference"`` or ``"max"``).
      definitions: (derived) the registry entries of ``terms`` when the program was built. They are part of the
        program's identity (equality, hash: the key of jit's and the train programs' caches), so a loss
        registered again under the same name with other arithmetic never reuses a compiled program of the old
        one, and a built program keeps working after its loss is unregistered.

    The options are the :data:`~segmime_jax.losses._registry.STATIC_OPTIONS`; each term gets those its
    arithmetic takes. Calling the program, ``program(params, probs, target, mask=None)``, gives the loss of the
    module docstring's formula: each computed term restricted to the classes with ``params.classes[k] = 1``,
    times its weight; a term ``params`` has no weight for (it was built before the loss was registered) counts 0.

    Raises:
      ValueError: if ``terms`` is empty or holds a name that is not a registered loss, or ``gdl_absent`` is
        unknown.

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

    terms: tuple[str, ...] | None = None
    epsilon: float = STATIC_OPTIONS["epsilon"].default
    dice_batch: bool = STATIC_OPTIONS["batch"].default
    normalize: bool = STATIC_OPTIONS["normalize"].default
    gdl_absent: str = STATIC_OPTIONS["absent"].default
    definitions: tuple[LossDefinition, ...] = dataclasses.field(init=False, repr=False, default=())

    def __post_init__(self) -> None:
        registered = tuple(LOSSES)
        terms = registered if self.terms is None else tuple(self.terms)
        unknown = [t for t in terms if t not in registered]
        if unknown or not terms:
            raise ValueError(f"terms must be a non-empty subset of the registered losses {registered}, got {terms}")
        if self.gdl_absent not in GDL_ABSENT:
            raise ValueError(f"gdl_absent must be one of {GDL_ABSENT}, got {self.gdl_absent!r}")
        ordered = tuple(t for t in registered if t in terms)  # canonical order
        object.__setattr__(self, "terms", ordered)
        object.__setattr__(self, "definitions", tuple(definition_of(t) for t in ordered))

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
        used = [term for p in params for term in _weighted_terms(p)]
        return cls(terms=tuple(dict.fromkeys(used)), **options)

    def check(self, params: LossParams) -> None:
        """Check that this program computes every term ``params`` weights.

        Args:
          params: a :class:`LossParams` of host arrays, of any leading shape.

        Raises:
          ValueError: if ``params`` weights a term this program does not compute (its weight would be ignored).
        """
        missing = [t for t in _weighted_terms(params) if t not in self.terms]
        if missing:
            raise ValueError(f"the loss weights terms {missing} that this program does not compute ({self.terms})")

    def __call__(
        self, params: LossParams, probs: jax.Array, target: jax.Array, *, mask: jax.Array | None = None
    ) -> jax.Array:
        """The loss of ``params`` for a batch.

        Args:
          params: the :class:`LossParams` of one run (``weights`` ``(len(params.terms),)``, ``a``, ``b``,
            ``classes`` ``(K,)``); host or device arrays, traced under ``jit``.
          probs: softmax probabilities ``s``, shape ``(B, *spatial, K)``, any float dtype (cast to float32).
          target: one-hot ground truth ``y``, same shape as ``probs``.
          mask: optional ``(B,)`` image weights (1 real image, 0 padding), as in the losses.

        Returns:
          The weighted sum of the terms, a float32 scalar (shape ``()``).
        """
        s, y, m, _ = prepare_masked(probs, target, None, mask)
        c = jnp.asarray(params.classes, jnp.float32)
        total = jnp.zeros((), jnp.float32)
        a = b = None  # the summed (a, b) of the linear terms
        for entry in self.definitions:
            if entry.name not in params.terms:
                continue
            w = params.weight(entry.name)
            if entry.linear is not None:
                a_t, b_t = entry.linear(params)
                a = w * a_t if a is None else a + w * a_t
                b = w * b_t if b is None else b + w * b_t
            else:
                options = {k: getattr(self, STATIC_OPTIONS[k].field) for k in entry.static_options}
                total = total + w * entry.terms(s, y, m, c, **options)
        if a is not None:
            total = total + linear_terms(s, y, m, c, a, b, normalize=self.normalize)
        return total


def loss_from_spec(spec: str, num_classes: int, **options: Any) -> tuple[LossProgram, LossParams]:
    """The loss as ``(program, params)``: :func:`~segmime_jax.losses.build_loss`'s spec and options, split.

    ``classes``, ``a`` and ``b`` become data (:class:`LossParams`); ``epsilon``, ``batch``, ``normalize`` and
    ``absent`` become the program's options (:class:`LossProgram` ``epsilon``, ``dice_batch``, ``normalize``,
    ``gdl_absent``). ``program(params, probs, target, mask=mask)`` equals ``build_loss(spec, **options)(probs,
    target, mask=mask)`` up to float summation order.

    Args:
      spec: ``"name"`` or ``"w*name+w*name..."`` with names of :data:`~segmime_jax.losses.LOSSES` (``dice`` =
        ``dsc``).
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
    unknown = sorted(set(options) - set(STATIC_OPTIONS) - set(_DATA_OPTIONS))
    if unknown:
        valid = sorted(set(STATIC_OPTIONS) | set(_DATA_OPTIONS))
        raise ValueError(f"unknown loss option(s) {unknown}; valid: {valid}")
    params = loss_params(spec, num_classes, **{k: v for k, v in options.items() if k in _DATA_OPTIONS})
    static = {STATIC_OPTIONS[k].field: v for k, v in options.items() if k in STATIC_OPTIONS}
    return LossProgram.covering(params, **static), params
