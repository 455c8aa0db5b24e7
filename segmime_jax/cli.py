"""Command-line interfaces built from frozen dataclass configs.

Every experiment describes its options as a frozen :func:`dataclasses.dataclass`; :func:`parse_config`
turns the fields into ``--kebab-case`` options (help text from ``field(metadata={"help": ...})``), starts
from a named preset when the experiment has presets, and returns a new frozen config. Values are parsed
by type, never evaluated: ``int``, ``float``, ``str``, ``bool`` (``--flag`` / ``--no-flag``),
``pathlib.Path``, ``X | None`` (the word ``none`` gives ``None``) and ``tuple[X, ...]`` (comma-separated).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

C = TypeVar("C")

_SCALARS: dict[type, Callable[[str], Any]] = {int: int, float: float, str: str, pathlib.Path: pathlib.Path}


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
    """An :class:`argparse.ArgumentParser` with one option per field of ``config_cls``.

    Options default to ``argparse.SUPPRESS`` so that only what the user typed overrides the preset.
    """
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    hints = typing.get_type_hints(config_cls)
    parser = argparse.ArgumentParser(  # no abbreviations: a typo such as --over must not mean --overwrite
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    for f in dataclasses.fields(config_cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if reference is not None:
            shown = _describe(getattr(reference, f.name))
        elif f.default is not dataclasses.MISSING:
            shown = _describe(f.default)
        else:
            shown = None
        if shown is not None:
            help_text = f"{help_text} (default: {shown})".strip()
        tp = hints[f.name]
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            inner, _ = _unwrap_optional(tp)
            choices = f.metadata.get("choices")
            parser.add_argument(
                flag, dest=f.name, type=_parser_for(tp, f.name), default=argparse.SUPPRESS,
                choices=choices, help=help_text,
                metavar=f.metadata.get("metavar", getattr(inner, "__name__", "VALUE").upper()),
            )
    return parser


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
    ``--help`` text shows the defaults of the preset named on the command line."""
    if presets:
        default_preset = _preset_in(argv, presets) or default_preset
    parser = build_parser(config_cls, description=description, presets=presets,
                          default_preset=default_preset, prog=prog)
    namespace = vars(parser.parse_args(argv))
    preset_name = namespace.pop("preset", None)
    base = presets[preset_name] if presets and preset_name else None
    try:
        if base is not None:
            return dataclasses.replace(base, **namespace)
        return config_cls(**namespace)
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


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a (possibly nested) dataclass config: paths become strings, tuples lists."""

    def convert(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: convert(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, pathlib.PurePath):
            return str(value)
        if isinstance(value, tuple | list):
            return [convert(v) for v in value]
        if isinstance(value, Mapping):
            return {str(k): convert(v) for k, v in value.items()}
        return value

    return convert(config)
