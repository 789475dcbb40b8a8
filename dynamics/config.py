"""Frozen dataclass configs and the argparse options generated from them.

One config class per command; each field's ``metadata`` carries its help text (and
optionally ``positional``, ``choices``, ``flag``). ``--help`` shows every default.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import MISSING, Field
from typing import Any, TypeVar

T = TypeVar("T")


def option(default: Any = MISSING, help: str = "", **extra: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with CLI metadata (``positional=True``, ``choices=[...]``, ``flag="-o"``)."""
    meta = {"help": help, **extra}
    if default is MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(annotation: Any) -> tuple[type, bool]:
    """(the non-None type, whether None is allowed) of a field annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], True
    if origin is typing.Literal:
        return type(typing.get_args(annotation)[0]), False
    return annotation, False


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per field of the dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        kind, nullable = _base_type(hints[f.name])
        choices = meta.get("choices")
        if choices is None and typing.get_origin(hints[f.name]) is typing.Literal:
            choices = list(typing.get_args(hints[f.name]))
        help_text = meta.get("help", "")
        if meta.get("positional"):
            parser.add_argument(f.name, type=_converter(kind), help=help_text, metavar=f.name.upper())
            continue
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
            continue
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


def _converter(kind: type) -> Any:
    if kind in (int, float, str):
        return kind
    return str


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build the config ``cls`` from parsed arguments (fields not on the CLI keep defaults)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return cls(**values)


def config_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config, for provenance."""
    return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v) for k, v in dataclasses.asdict(config).items()}
