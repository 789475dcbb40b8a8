"""Frozen dataclass configs and the argparse options generated from them.

Each option is defined once, as a field made by :func:`option` in one option part
(:mod:`dynamics.config.parts`, :class:`dynamics.execution.executor.ExecutorSettings`) or in a
command's own config; a command's config inherits the parts it needs and adds its own fields
(a command that needs another default for a shared option says so with :func:`redefault`,
keeping the part's help text). A field's ``metadata`` carries its help text, whether it is part
of the cube's identity (``identity``), and optionally ``positional``, ``choices``, ``flag``. The
CLI flattens the parts into one option list, grouped by part in ``--help``, which shows every default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field
from typing import Any, TypeVar

from dynamics.errors import UserInputError

T = TypeVar("T")


def option(default: Any = MISSING, help: str = "", *, identity: bool | None = None, **extra: Any) -> Any:  # noqa: A002
    """A dataclass field with CLI metadata (``positional=True``, ``choices=[...]``, ``flag="-o"``).

    ``identity``: whether the option's value is part of the identity of the cube a command makes
    (its numbers depend on it; :func:`identity_settings`). Every option of a command that makes a
    cube says so (tests/test_identity.py), so a new option never stays out of the identity by
    accident.
    """
    meta = {"help": help, **extra}
    if identity is not None:
        meta["identity"] = identity
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def titled(title: str, lead: bool = False) -> Callable[[type[T]], type[T]]:
    """Name an option part (or a command's own options) for the groups of ``--help``.

    ``lead``: list the part before the command's own options (the model, the cube). Set as
    plain class attributes after the dataclass is made, so they are not config fields.
    """

    def mark(cls: type[T]) -> type[T]:
        cls.options_title = title  # type: ignore[attr-defined]
        cls.options_lead = lead  # type: ignore[attr-defined]
        return cls

    return mark


def redefault(part: type, name: str, default: Any, **metadata: Any) -> Any:
    """The option ``name`` of ``part`` with another default (and optionally help or choices) for one command."""
    (field,) = [f for f in dataclasses.fields(part) if f.name == name]
    return option(default, **{**field.metadata, **metadata})


def check_numbers(config: Any, checks: list[tuple[str, bool, str]]) -> None:
    """Raise the first failed check as one line: ``--name VALUE: expected ACCEPTED``."""
    for name, ok, accepted in checks:
        if not ok:
            raise UserInputError(f"--{name} {getattr(config, name.replace('-', '_'))!r}: expected {accepted}")


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]), False
    return annotation, False


def option_parts(cls: type) -> list[type]:
    """The option parts ``cls`` is composed of, in the order of its bases (a base that only combines
    parts, defining no option of its own, is not a part)."""
    return [base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) and base.__dict__.get("__annotations__")]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the dataclass ``cls`` to ``parser``, grouped by option part.

    Order: the leading parts (the model, the cube), the command's own options, then the
    other parts in the order of the config's bases.
    """
    hints = typing.get_type_hints(cls)
    parts = option_parts(cls)
    names = {part: {f.name for f in dataclasses.fields(part)} for part in parts}
    order: list[type | None] = [p for p in parts if p.__dict__.get("options_lead", False)]
    order += [None] + [p for p in parts if p not in order]
    fields: dict[type | None, list[Field]] = {part: [] for part in order}
    for f in dataclasses.fields(cls):
        fields[next((p for p in parts if f.name in names[p]), None)].append(f)
    for part in order:
        if not fields[part]:
            continue
        if part is None:  # the command's own options: a group of their own once the config has parts
            title = cls.__dict__.get("options_title", cls.__name__)
            group = parser.add_argument_group(f"{title} options") if parts else parser
        else:
            group = parser.add_argument_group(f"{part.__dict__.get('options_title', part.__name__)} options")
        for f in fields[part]:
            _add_field(group, f, hints)


def _add_field(parser: Any, f: Field, hints: dict[str, Any]) -> None:
    """One field as one option (or positional) of ``parser``."""
    meta = f.metadata
    kind, nullable = _base_type(hints[f.name])
    choices = meta.get("choices")
    if choices is None and typing.get_origin(hints[f.name]) is typing.Literal:
        choices = list(typing.get_args(hints[f.name]))
    help_text = meta.get("help", "")
    if meta.get("positional"):
        parser.add_argument(
            f.name,
            type=_converter(kind),
            help=help_text,
            metavar=meta.get("metavar", f.name.upper()),
            nargs=meta.get("nargs"),
        )
        return
    names = [f"--{f.name.replace('_', '-')}"] + ([meta["flag"]] if "flag" in meta else [])
    required = f.default is MISSING and f.default_factory is MISSING
    default = None if required else _default(f)
    if kind is bool:
        parser.add_argument(
            *names,
            action=argparse.BooleanOptionalAction,
            default=default,
            help=f"{help_text} (default: {'on' if default else 'off'})",
        )
        return
    shown = "required" if required else f"default: {default}"
    if "(default" in help_text:  # the help already says what the default means
        shown = shown if required else ""
    parser.add_argument(
        *names,
        type=_converter(kind),
        default=default,
        required=required,
        choices=choices,
        metavar=None if choices else f.name.upper(),
        help=f"{help_text} ({shown})" if shown else help_text,
    )
    del nullable  # None defaults are shown as "default: None"


def _default(f: Field) -> Any:
    if f.default is not MISSING:
        return f.default
    return f.default_factory()  # type: ignore[operator]  # not MISSING here


#: The largest whole number an option takes (steps, seeds and counts are stored as int64).
MAX_INT = 2**63 - 1


def _finite_float(text: str) -> float:
    """A float option: ``nan`` and ``inf`` are refused by argparse as one line, like any bad number."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _bounded_int(text: str) -> int:
    """An int option: ASCII digits (``²`` is not a number) within int64."""
    if not text.strip().lstrip("+-").isascii():
        raise ValueError(text)
    value = int(text)
    if abs(value) > MAX_INT:
        raise ValueError(text)
    return value


_finite_float.__name__ = "finite number"  # argparse names the type in its message: "invalid finite number value"

_bounded_int.__name__ = "whole number"


def _converter(kind: type) -> Any:
    if kind is float:
        return _finite_float
    if kind is int:
        return _bounded_int
    if kind is str:
        return str
    return str  # list[str] (a positional with nargs) too: argparse makes the list


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build the config ``cls`` from parsed arguments (fields not on the CLI keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return cls(**values)


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config, for provenance."""
    return {k: config_dict_value(v) for k, v in dataclasses.asdict(config).items()}


def identity_settings(config: Any) -> dict[str, Any]:
    """The options whose ``identity`` metadata is true, JSON-ready, by name (the cube's identity)."""
    values = config_dict(config)
    return {f.name: values[f.name] for f in dataclasses.fields(config) if f.metadata.get("identity")}


def identity_defaults(cls: type) -> dict[str, Any]:
    """The default of every identity option of ``cls`` (what a cube made before the option existed used)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("identity") and (f.default is not MISSING or f.default_factory is not MISSING):
            out[f.name] = config_dict_value(_default(f))
    return out


def config_dict_value(value: Any) -> Any:
    """One value as :func:`config_dict` stores it."""
    return str(value) if not isinstance(value, (int, float, str, bool, type(None))) else value
