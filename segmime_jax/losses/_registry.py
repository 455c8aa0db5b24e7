"""The losses by name: one entry per loss, from which everything else that names a loss derives.

An entry (:class:`LossDefinition`) says, once, what a loss is: its spec name and aliases (for
:func:`~segmime_jax.losses.build_loss` and :func:`~segmime_jax.losses.loss_params`), its display name (for tables),
its arithmetic on prepared arrays (what :class:`~segmime_jax.losses.LossProgram` evaluates) and its public function
(what :data:`LOSSES` maps the name to). :data:`LOSSES`, :data:`LOSS_ALIASES`, :data:`TERMS`, the terms a
:class:`~segmime_jax.losses.LossProgram` can compute and :func:`display_name` all read this registry.
:func:`register_loss` adds an entry from outside the package.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax

from segmime_jax.losses._cross_entropy import cross_entropy, cross_entropy_terms
from segmime_jax.losses._dice import (
    dice_loss,
    dice_surrogate_loss,
    dice_surrogate_terms,
    dice_terms,
    generalized_dice_loss,
    generalized_dice_terms,
)
from segmime_jax.losses._inputs import all_selected, prepare_masked
from segmime_jax.losses._mime import mime_loss, negative_mime_loss


class StaticOption(NamedTuple):
    """An option that is code rather than data: the :class:`~segmime_jax.losses.LossProgram` field holding it, and
    its default there and in a registered loss's generated function."""

    field: str
    default: Any


#: The options a loss's arithmetic may take as keyword arguments, by the name the arithmetic and
#: :func:`~segmime_jax.losses.build_loss` use. A :class:`~segmime_jax.losses.LossProgram` holds one value of each
#: (they change the compiled code, so they are not per-run data) and passes a term the ones its arithmetic takes.
STATIC_OPTIONS: Mapping[str, StaticOption] = types.MappingProxyType(
    {
        "epsilon": StaticOption("epsilon", 1e-10),
        "batch": StaticOption("dice_batch", False),
        "normalize": StaticOption("normalize", True),
        "absent": StaticOption("gdl_absent", "reference"),
    }
)

_NAME = re.compile(r"[a-z_][a-z0-9_]*")


def _mime_coefficients(params: Any) -> tuple[Any, Any]:
    return params.a, params.b  # the run's per-class a, b (paper Eq. 9)


def _negative_mime_coefficients(params: Any) -> tuple[float, float]:
    return 1.0, 0.0  # paper Eq. 10: the mime with a = 1, b = 0


@dataclasses.dataclass(frozen=True)
class LossDefinition:
    """One loss, defined once: the registry entry from which its spec name, display name and evaluation derive.

    Attributes:
      name: the spec name (lower case, a Python identifier), e.g. ``"dsc"``.
      display: the name in tables, e.g. ``"DSC"``.
      terms: the arithmetic, ``terms(s, y, m, c, **options) -> float32 scalar`` on prepared float32 arrays ``s, y``
        ``(B, *spatial, K)`` (masked images zeroed), image weights ``m`` ``(B,)`` and class weights ``c`` ``(K,)``;
        its keyword-only arguments must be names of :data:`STATIC_OPTIONS`. ``None`` for a linear term.
      function: the public function ``fn(probs, target, *, classes=None, mask=None, **options)``; ``None``: one is
        made from ``terms`` (inputs prepared, ``c = 1``, options defaulting as in :data:`STATIC_OPTIONS`).
      aliases: other accepted spellings in specs, e.g. ``("dice",)``.
      linear: for a term linear in ``s``, ``ω_yᵀ s`` with ``ω_y = −a·y + b·(1 − y)`` (paper Eq. 9): the ``(a, b)``
        it contributes, from a run's :class:`~segmime_jax.losses.LossParams` (scalars or ``(K,)``). A program adds
        up the weighted ``(a, b)`` of all its linear terms and evaluates the mime's arithmetic once, which is
        exact (a sum of linear losses is the linear loss of the summed weights) and costs one term, not several.
      options: (derived) the keyword options :func:`~segmime_jax.losses.build_loss` may pass to ``function``.
      static_options: (derived) the names of :data:`STATIC_OPTIONS` that ``terms`` takes.

    Raises:
      ValueError: if the name or an alias is not a lower-case identifier, the display name is empty, not exactly
        one of ``terms`` and ``linear`` is given, a linear term has no ``function``, or ``terms`` takes a
        keyword-only argument that is not a static option.
    """

    name: str
    display: str
    terms: Callable[..., jax.Array] | None = None
    function: Callable[..., jax.Array] | None = None
    aliases: tuple[str, ...] = ()
    linear: Callable[[Any], tuple[Any, Any]] | None = None
    options: frozenset[str] = dataclasses.field(init=False, default=frozenset())
    static_options: tuple[str, ...] = dataclasses.field(init=False, default=())

    def __post_init__(self) -> None:
        for spelling in (self.name, *self.aliases):
            if not isinstance(spelling, str) or not _NAME.fullmatch(spelling):
                raise ValueError(f"a loss name must be a lower-case Python identifier; got {spelling!r}")
        if not isinstance(self.display, str) or not self.display.strip():
            raise ValueError(f"loss {self.name!r} needs a non-empty display name; got {self.display!r}")
        if (self.terms is None) == (self.linear is None):
            raise ValueError(f"loss {self.name!r}: give exactly one of terms (its arithmetic) and linear")
        if self.linear is not None and self.function is None:
            raise ValueError(f"linear loss {self.name!r} needs its public function")
        static: tuple[str, ...] = ()
        if self.terms is not None:
            static = _keyword_only(self.terms)
            unknown = sorted(set(static) - set(STATIC_OPTIONS))
            if unknown:
                raise ValueError(
                    f"the arithmetic of loss {self.name!r} takes keyword argument(s) {unknown} that no LossProgram "
                    f"supplies; its keyword-only arguments must be among {sorted(STATIC_OPTIONS)}"
                )
        object.__setattr__(self, "aliases", tuple(self.aliases))
        object.__setattr__(self, "static_options", static)
        if self.function is None:
            object.__setattr__(self, "function", _FromTerms(self.name, self.terms, static))
            object.__setattr__(self, "options", frozenset({"classes", *static}))
        else:
            object.__setattr__(self, "options", frozenset(set(_keyword_only(self.function)) - {"mask"}))


def _keyword_only(fn: Callable[..., Any]) -> tuple[str, ...]:
    return tuple(p.name for p in inspect.signature(fn).parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY)


class _FromTerms:
    """The public function of a loss given by its arithmetic alone: ``fn(probs, target, *, classes=None, mask=None,
    **options)``, the arithmetic on the selected classes with ``c = 1``, as the built-in losses do."""

    def __init__(self, name: str, terms: Callable[..., jax.Array], static: tuple[str, ...]):
        self.name = name
        self.terms = terms
        self.static = static

    def __call__(
        self,
        probs: jax.Array,
        target: jax.Array,
        *,
        classes: Sequence[int] | None = None,
        mask: jax.Array | None = None,
        **options: Any,
    ) -> jax.Array:
        unknown = sorted(set(options) - set(self.static))
        if unknown:
            raise TypeError(f"loss {self.name!r} takes no option(s) {unknown}; its options: {list(self.static)}")
        s, y, m, _ = prepare_masked(probs, target, classes, mask)
        # The program's defaults, so that fn(...) and LossProgram agree when an option is not given.
        values = {k: options.get(k, STATIC_OPTIONS[k].default) for k in self.static}
        return self.terms(s, y, m, all_selected(s), **values)

    def __repr__(self) -> str:
        return f"<loss {self.name}>"


#: The paper's losses (§2, §3.1), in the order of :data:`TERMS` (the order of ``LossParams.weights``). A new loss
#: of the package is one more entry here (a new name goes last: earlier weights keep their positions).
_BUILTIN = (
    LossDefinition("ce", "CE", terms=cross_entropy_terms, function=cross_entropy),
    LossDefinition("dsc", "DSC", terms=dice_terms, function=dice_loss, aliases=("dice",)),
    LossDefinition("gdl", "GDL", terms=generalized_dice_terms, function=generalized_dice_loss),
    LossDefinition("mime", "Mime", function=mime_loss, linear=_mime_coefficients),
    LossDefinition("nm", "NM", function=negative_mime_loss, linear=_negative_mime_coefficients),
    LossDefinition("surrogate", "Surrogate", terms=dice_surrogate_terms, function=dice_surrogate_loss),
)

#: The paper's loss terms, in the order of :attr:`LossParams.weights` when no loss is registered. A constant:
#: a loss added by :func:`register_loss` comes after these in :data:`LOSSES` (``tuple(LOSSES)`` is the live
#: list) and in the weights of the :class:`~segmime_jax.losses.LossParams` built while it is registered; a
#: :class:`~segmime_jax.losses.LossParams` names its own weights (``params.terms``), so nothing reads weights
#: by their position in this tuple.
TERMS: tuple[str, ...] = tuple(d.name for d in _BUILTIN)

# The registry, kept in step by _add and _remove; LOSSES and LOSS_ALIASES are read-only live views of two of them.
_DEFINITIONS: dict[str, LossDefinition] = {}
_FUNCTIONS: dict[str, Callable[..., jax.Array]] = {}
_ALIASES: dict[str, str] = {}

#: Loss functions by name (the names :func:`~segmime_jax.losses.build_loss` understands), in registration order:
#: the paper's, then the registered ones. A live read-only view: a registered loss appears here.
LOSSES: Mapping[str, Callable[..., jax.Array]] = types.MappingProxyType(_FUNCTIONS)

#: Other accepted spellings in specs (alias → name); a live read-only view, as :data:`LOSSES`.
LOSS_ALIASES: Mapping[str, str] = types.MappingProxyType(_ALIASES)


def _add(definition: LossDefinition) -> None:
    for spelling in (definition.name, *definition.aliases):
        if spelling in _DEFINITIONS or spelling in _ALIASES:
            raise ValueError(f"the loss name {spelling!r} is taken; taken names: {sorted({*_DEFINITIONS, *_ALIASES})}")
    _DEFINITIONS[definition.name] = definition
    _FUNCTIONS[definition.name] = definition.function
    _ALIASES.update(dict.fromkeys(definition.aliases, definition.name))


def _remove(definition: LossDefinition) -> None:
    if _DEFINITIONS.get(definition.name) is not definition:
        return  # removed already
    del _DEFINITIONS[definition.name], _FUNCTIONS[definition.name]
    for alias in definition.aliases:
        del _ALIASES[alias]


for _entry in _BUILTIN:
    _add(_entry)


def canonical_name(spec: str) -> str:
    """A loss name in its canonical spelling (``"Dice"`` → ``"dsc"``); other specs lower-cased and stripped.

    Args:
      spec: a loss name, an alias, or any spec string.

    Returns:
      The registered name an alias stands for, else ``spec`` lower-cased and stripped.

    Example:
      >>> from segmime_jax.losses import canonical_name
      >>> print(canonical_name(" Dice "), canonical_name("mime"), canonical_name("1*CE+1*DSC"))
      dsc mime 1*ce+1*dsc
    """
    name = spec.strip().lower()
    return _ALIASES.get(name, name)


def definition_of(name: str) -> LossDefinition:
    """The registered entry of ``name`` (a name or an alias, any case).

    Raises:
      ValueError: if no registered loss has that name.
    """
    found = _DEFINITIONS.get(canonical_name(name))
    if found is None:
        raise ValueError(f"unknown loss {name!r}; registered: {sorted({*_DEFINITIONS, *_ALIASES})}")
    return found


def display_name(spec: str) -> str:
    """The name of a loss in tables: ``"ce"`` → ``"CE"``, ``"dice"`` → ``"DSC"``, ``"mime"`` → ``"Mime"``.

    Args:
      spec: a loss spec, as given to :func:`~segmime_jax.losses.build_loss`.

    Returns:
      The display name of a registered loss (looked up by any of its spellings); a compound spec (one with a
      ``+`` or a ``*``) as given, stripped; anything else unchanged.

    Example:
      >>> from segmime_jax.losses import display_name
      >>> print([display_name(s) for s in ("ce", "Dice", "nm", "gdl", "surrogate", " 1*ce+1*dsc ", "unknown")])
      ['CE', 'DSC', 'NM', 'GDL', 'Surrogate', '1*ce+1*dsc', 'unknown']
    """
    found = _DEFINITIONS.get(canonical_name(spec))
    if found is not None:
        return found.display
    return spec.strip() if "+" in spec or "*" in spec else spec


class RegisteredLoss:
    """A loss added by :func:`register_loss`; :meth:`remove` takes it out again, and so does leaving a ``with``
    block on it.

    Attributes:
      definition: its :class:`LossDefinition`.
    """

    def __init__(self, definition: LossDefinition):
        self.definition = definition

    def remove(self) -> None:
        """Take the loss out of the registry (nothing happens if it is out already).

        Built :class:`~segmime_jax.losses.LossProgram` objects that compute it keep working (they hold its
        definition); specs that name it no longer parse.
        """
        _remove(self.definition)

    def __enter__(self) -> RegisteredLoss:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"RegisteredLoss({self.definition.name!r}, display={self.definition.display!r})"


def register_loss(
    name: str,
    terms: Callable[..., jax.Array],
    *,
    display: str,
    aliases: Sequence[str] = (),
    function: Callable[..., jax.Array] | None = None,
) -> RegisteredLoss:
    r"""Add a loss from outside the package: its specs, programs, jitted train steps and display name then work.

    The loss is given by its arithmetic ``terms(s, y, m, c, **options) -> float32 scalar``, on the prepared arrays
    every loss of the package sees (see :mod:`segmime_jax.losses`): ``s, y`` float32 ``(B, *spatial, K)`` with
    masked images zeroed, image weights ``m`` ``(B,)`` and class weights ``c`` ``(K,)``. ``c`` is 1 for a selected
    class and 0 for the others: a class with ``c_k = 0`` must count for nothing, in the sums and in the
    normalisers, since a :class:`~segmime_jax.losses.LossProgram` selects classes that way. Its keyword-only
    arguments, if any, are static options of :data:`STATIC_OPTIONS` (e.g. ``epsilon``), which the program passes.

    Registered, the name works in :func:`~segmime_jax.losses.build_loss` (with a function made from ``terms``, or
    ``function``), :func:`~segmime_jax.losses.loss_params`, :func:`~segmime_jax.losses.loss_from_spec`,
    :class:`~segmime_jax.losses.LossProgram` and so in a training run's ``loss=``; :func:`display_name` gives
    ``display``. It comes after the paper's losses in :data:`LOSSES` and in the weights of the
    :class:`~segmime_jax.losses.LossParams` built while it is registered.

    Args:
      name: the spec name, a Python identifier (lower-cased); not a name or alias already registered.
      terms: the loss's arithmetic, as above.
      display: its name in tables.
      aliases: other spellings accepted in specs.
      function: its public function ``fn(probs, target, *, classes=None, mask=None, **options)``, if it has one
        of its own (it should equal ``terms`` with ``c = 1`` on the selected classes); default: made from
        ``terms``, with the options' defaults of :data:`STATIC_OPTIONS`.

    Returns:
      A :class:`RegisteredLoss`: registered at once; ``remove()`` or the end of a ``with`` block on it takes the
      loss out again (so a test leaves nothing behind).

    Raises:
      ValueError: if the name or an alias is taken or not an identifier, ``display`` is empty, or ``terms`` takes
        a keyword-only argument that is not a static option.
      TypeError: if ``aliases`` is a string rather than a sequence of them.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from segmime_jax.losses import LOSSES, build_loss, display_name, register_loss
      >>> def l1_terms(s, y, m, c):  # mean over unmasked images, pixels and selected classes of |s - y|
      ...     per_image = jnp.sum(c * jnp.abs(s - y), axis=tuple(range(1, s.ndim)))
      ...     return jnp.sum(m * per_image) / (jnp.sum(m) * (s.size // s.shape[0] // s.shape[-1]) * jnp.sum(c))
      >>> probs = jnp.array([[[0.7, 0.2, 0.1], [0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]])  # (1, 4, 3)
      >>> target = jax.nn.one_hot(jnp.array([[0, 0, 1, 2]]), 3)
      >>> with register_loss("l1", l1_terms, display="L1"):
      ...     print(display_name("l1"), f"{float(build_loss('l1', classes=(1, 2))(probs, target)):.4f}")
      L1 0.2125
      >>> "l1" in LOSSES
      False
    """
    if isinstance(aliases, str):
        raise TypeError(f"aliases must be a sequence of names, e.g. ({aliases!r},); got the string {aliases!r}")
    definition = LossDefinition(
        name.lower(), display, terms=terms, function=function, aliases=tuple(a.lower() for a in aliases)
    )
    _add(definition)
    return RegisteredLoss(definition)
