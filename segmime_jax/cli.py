"""Command-line interfaces built from frozen dataclass configs.

Every experiment describes its options as a frozen :func:`dataclasses.dataclass` whose fields are declared with
:func:`option` (default and help text); :func:`parse_config` turns the fields into ``--kebab-case`` options,
starts from a named preset when the experiment has presets, and returns a new frozen config. Values are parsed
by type, never evaluated: ``int``, ``float``, ``str``, ``bool`` (``--flag`` / ``--no-flag``),
``pathlib.Path``, ``X | None`` (the word ``none`` gives ``None``) and ``tuple[X, ...]`` (comma-separated).

A field whose value is itself a dataclass config (declared with :func:`nested`, e.g. a grid's ``train``
:class:`~segmime_jax.train.TrainConfig`) contributes its own fields as options of the same parser, except the
ones it names as set elsewhere; the result is built with :func:`dataclasses.replace`, so each config validates
itself once.

Errors in the options end the program with ``error: <message>`` on one line, after a one-line usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

C = TypeVar("C")

_SCALARS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str, pathlib.Path: pathlib.Path}


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric option accepts: ``low``/``high`` bounds (None: unbounded), each inclusive unless
    ``low_open``/``high_open``. Every numeric option must be finite whether or not it declares a range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}" if self.high is not None else "finite"


POSITIVE = Range(0, low_open=True)
AT_LEAST_ONE = Range(1)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)  # Adam's betas, SGD momentum: [0, 1)


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | None = None,
    metavar: str | None = None,
    within: Range | None = None,
) -> Any:
    """A dataclass field with a default and the help text of its command-line option.

    ``choices`` restricts the values (also checked by the config itself where it matters); ``metavar`` names
    the value in ``--help``; ``within`` is the :class:`Range` of a numeric option, shown in ``--help`` and
    enforced by :func:`check_options`. The default must be immutable (a tuple, not a list).
    """
    if isinstance(default, list | dict | set):
        raise TypeError(f"option defaults must be immutable, got {default!r}")
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    if metavar is not None:
        metadata["metavar"] = metavar
    if within is not None:
        metadata["within"] = within
    return dataclasses.field(default=default, metadata=metadata)


def check_options(config: Any) -> None:
    """ValueError naming the first numeric field of ``config`` (a dataclass of :func:`option` fields) that is not
    finite or lies outside its declared :class:`Range`, as its command-line flag. Configs call this first in
    their ``__post_init__``, so a bad value is refused the same way from the command line and from Python."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        within = f.metadata.get("within", Range())
        if not math.isfinite(value) or not within.contains(value):
            raise ValueError(f"--{f.name.replace('_', '-')} must be {within}, got {value!r}")


def nested(default: Any, *, exclude: Sequence[str] = ()) -> Any:
    """A dataclass field holding another config (``default``) whose fields become options of the same parser,
    except those in ``exclude`` (set by the outer config's own logic)."""
    return dataclasses.field(default=default, metadata={"nested": True, "exclude": tuple(exclude)})


def _option_fields(config_cls: type, reference: Any) -> list[tuple[str | None, dataclasses.Field, Any, Any]]:
    """``(outer field name or None, field, its type, its reference value)`` of every option of ``config_cls``,
    nested configs expanded; ``reference`` is an instance whose values are shown as defaults (or None)."""
    hints = typing.get_type_hints(config_cls)
    found = []
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        if f.metadata.get("nested"):
            inner_reference = getattr(reference, f.name) if reference is not None else f.default
            inner_hints = typing.get_type_hints(type(inner_reference))
            for g in dataclasses.fields(inner_reference):
                if g.init and g.name not in f.metadata["exclude"]:
                    found.append((f.name, g, inner_hints[g.name], getattr(inner_reference, g.name)))
            continue
        if reference is not None:
            value = getattr(reference, f.name)
        else:
            value = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        found.append((None, f, hints[f.name], value))
    names = [g.name for _, g, _, _ in found]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise TypeError(f"{config_cls.__name__}: option(s) {repeated} defined twice (outer and nested config)")
    return found


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported union type {tp!r}")
    return tp, False


def _parser_for(tp: Any, name: str) -> Callable[[str], Any]:
    """A function that turns one command-line string into a value of type ``tp``."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        if len(args) != 2 or args[1] is not Ellipsis or args[0] not in _SCALARS:
            raise TypeError(f"field {name!r}: only tuple[X, ...] of int/float/str/Path is supported, got {tp!r}")
        item = _SCALARS[args[0]]

        def parse_tuple(text: str) -> tuple[Any, ...]:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())

        base: Callable[[str], Any] = parse_tuple
    elif inner in _SCALARS:
        base = _SCALARS[inner]
    else:
        raise TypeError(f"field {name!r}: unsupported type {tp!r}")
    if not optional:
        return base

    def parse_optional(text: str) -> Any:
        return None if text.strip().lower() == "none" else base(text)

    return parse_optional


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return str(value)


def build_parser(
    config_cls: type[C],
    *,
    description: str = "",
    presets: Mapping[str, C] | None = None,
    default_preset: str | None = None,
    prog: str | None = None,
) -> argparse.ArgumentParser:
    """An :class:`argparse.ArgumentParser` with one option per field of ``config_cls`` (nested configs expanded).

    Options default to ``argparse.SUPPRESS`` so that only what the user typed overrides the preset; the help
    shows the preset's values.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    parser = _Parser(  # no abbreviations: a typo such as --over must not mean --overwrite
        prog=prog,
        description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    if presets:
        parser.add_argument(
            "--preset",
            choices=sorted(presets),
            default=default_preset or next(iter(presets)),
            help="named starting configuration; options given on the command line override its fields",
        )
    reference = presets[default_preset or next(iter(presets))] if presets else None
    for outer, f, tp, value in _option_fields(config_cls, reference):
        flag = "--" + f.name.replace("_", "-")
        dest = f.name if outer is None else f"{outer}.{f.name}"
        help_text = f.metadata.get("help", "")
        if "within" in f.metadata:
            help_text = f"{help_text}; {f.metadata['within']}"
        if value is not dataclasses.MISSING:
            help_text = f"{help_text} (default: {_describe(value)})".strip()
        if tp is bool:
            parser.add_argument(
                flag, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            inner, _ = _unwrap_optional(tp)
            parser.add_argument(
                flag,
                dest=dest,
                type=_parser_for(tp, f.name),
                default=argparse.SUPPRESS,
                choices=f.metadata.get("choices"),
                help=help_text,
                metavar=f.metadata.get("metavar", getattr(inner, "__name__", "VALUE").upper()),
            )
    return parser


class _Parser(argparse.ArgumentParser):
    """Errors as one short usage line and one ``error:`` line (not the whole option list)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"usage: {self.prog} [options] (see --help)\nerror: {message}\n")


def parse_config(
    config_cls: type[C],
    argv: Sequence[str] | None = None,
    *,
    description: str = "",
    presets: Mapping[str, C] | None = None,
    default_preset: str | None = None,
    prog: str | None = None,
) -> C:
    """Parse ``argv`` into a frozen ``config_cls``: the preset (or the class defaults) plus overrides. The
    ``--help`` text shows the defaults of the preset named on the command line. A value the config refuses
    (its ``__post_init__`` raises ValueError or TypeError) ends the program like any other option error."""
    if presets:
        default_preset = _preset_in(argv, presets) or default_preset
    parser = build_parser(
        config_cls, description=description, presets=presets, default_preset=default_preset, prog=prog
    )
    namespace = vars(parser.parse_args(argv))
    preset_name = namespace.pop("preset", None)
    base = presets[preset_name] if presets and preset_name else None
    outer = {k: v for k, v in namespace.items() if "." not in k}
    inner: dict[str, dict[str, Any]] = {}
    for key, value in namespace.items():
        if "." in key:
            name, field_name = key.split(".", 1)
            inner.setdefault(name, {})[field_name] = value
    try:
        if base is None:
            base = config_cls()
        for name, values in inner.items():
            outer[name] = dataclasses.replace(getattr(base, name), **values)
        return dataclasses.replace(base, **outer)
    except (TypeError, ValueError) as err:  # a config's __post_init__ validation
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def _preset_in(argv: Sequence[str] | None, presets: Mapping[str, Any]) -> str | None:
    """The valid preset named by ``--preset NAME`` or ``--preset=NAME`` in ``argv`` (the last one), if any."""
    args = list(sys.argv[1:] if argv is None else argv)
    found = None
    for i, arg in enumerate(args):
        if arg == "--preset" and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith("--preset="):
            found = arg.split("=", 1)[1]
    return found if found in presets else None
