"""Frozen dataclass configs composed of shared option parts, and the argparse options generated from them.

Each option is defined once, as a field of one part (:class:`ModelOptions`, :class:`CubeOptions`,
:class:`BudgetOptions`, :class:`ScoringOptions`, :class:`RuntimeOptions`, and
:class:`dynamics.execution.executor.ExecutorSettings`); a command's config inherits the parts it needs
and adds its own fields (a command that needs another default for a shared option says so
with :func:`redefault`, keeping the part's help text). A field's ``metadata`` carries its
help text (and optionally ``positional``, ``choices``, ``flag``). The CLI flattens the parts
into one option list, grouped by part in ``--help``, which shows every default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, dataclass
from typing import Any, Literal, TypeVar

from dynamics.errors import UserInputError

DTYPES = ("float32", "bfloat16", "float16")
MAX_THREADS = 1024  # torch takes a C int; more threads than this is a typo, not a machine
PROTOCOLS = ("paper", "strict")
REDUCTIONS = ("sum", "mean")
NPI_RULES = ("last", "intrusive")
RANDOM_POOLS = ("all", "non-top")
WINDOW_BOS = ("first", "every")
POS_UNITS = ("tokens", "words")

T = TypeVar("T")


def option(default: Any = MISSING, help: str = "", **extra: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A dataclass field with CLI metadata (``positional=True``, ``choices=[...]``, ``flag="-o"``)."""
    meta = {"help": help, **extra}
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


@titled("model", lead=True)
@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    """Options of the part "model" (one definition each, shared by every command that uses them)."""

    model: str = option(
        help="Pythia alias (pythia-1.4b), Hub id, toy (the built-in model organism, trained on "
        "first use), local suite directory, saved model directory or .gguf file",
        flag="-m",
    )


@titled("cube", lead=True)
@dataclass(frozen=True, kw_only=True)
class CubeOptions:
    """Options of the part "cube" (one definition each, shared by every command that uses them)."""

    out: str = option(help="the cube to create or resume (a .zarr directory)", flag="-o")
    overwrite: bool = option(False, help="recompute units (steps, conditions) that are already done in the cube")


@titled("corpus and budgets")
@dataclass(frozen=True, kw_only=True)
class BudgetOptions:
    """Options of the part "corpus and budgets" (one definition each, shared by every command that uses them)."""

    wd_corpus: str | None = option(
        None,
        help="text of the WD windows: wikitext2[:SPLIT] or a text file (default: "
        "--corpus; WikiText-2: its train split, as the official code)",
    )
    ppl_corpus: str | None = option(
        None,
        help="text of the perplexity windows: wikitext2[:SPLIT] or a text file "
        "(default: --corpus; WikiText-2: its validation split, as the official code; one "
        "file for both: perplexity from the windows after the WD ones)",
    )
    window: int | None = option(None, help="tokens per corpus window (default: min(2048, the model's context))")
    wd_tokens: int | None = option(
        None,
        help="corpus tokens (windows x window) whose pre-activations give each "
        "neuron's WD (default: the protocol's: paper 256 windows, strict 65536)",
    )
    wd_stride: int | None = option(
        None,
        help="tokens between the starts of consecutive WD windows (default: the "
        "protocol's: paper half a window, as the official code; strict a whole window)",
    )
    ppl_tokens: int | None = option(
        None,
        help="corpus tokens for perplexity under each condition (default: the "
        "protocol's: paper the whole split, strict 16384; 0: skip where allowed; the "
        "matched control needs them)",
    )
    tse_per_case: int = option(100, help="TSE pairs per case (stratified over sub-cases; 0: skip TSE)")
    mapping_difficulty: bool = option(
        False,
        help="also store each neuron's mapping difficulty (MD, on the WD "
        "tokens, 10,000 seeded token pairs per layer); the report gives its Spearman "
        "correlation with WD per layer",
    )


@titled("scoring protocol")
@dataclass(frozen=True, kw_only=True)
class ScoringOptions:
    """Options of the part "scoring protocol" (one definition each, shared by every command that uses them)."""

    protocol: Literal["paper", "strict"] = option(
        "paper",
        help="paper: every choice below as the official code "
        "(docs/protocol.md); strict: the variants this project prefers",
    )
    tse_reduction: str | None = option(
        None,
        help="TSE sentence score: sum or mean of token log-probabilities "
        "(default: the protocol's: paper mean, strict sum)",
        choices=list(REDUCTIONS),
    )
    blimp_reduction: str | None = option(
        None, help="BLiMP sentence score: sum or mean (default: the protocol's: sum)", choices=list(REDUCTIONS)
    )
    prefix: str | None = option(
        None,
        help="what precedes a sentence: auto (the tokenizer's own special tokens: Pythia "
        "none, so its first token is unscored; Llama-style BOS), none, bos (BOS, else EOS, "
        "always), or a token string (default: the protocol's: paper auto, strict bos)",
    )
    npi: str | None = option(
        None,
        help="NPI cases: last (good vs the tuple's last, ungrammatical sentence) or "
        "intrusive (good must beat the intrusive sentence too) (default: the protocol's: paper "
        "last, strict intrusive)",
        choices=list(NPI_RULES),
    )
    random_control: str | None = option(
        None,
        help="where the random control's neurons come from: all (every neuron "
        "of the layer) or non-top (the others) (default: the protocol's: paper all, "
        "strict non-top)",
        choices=list(RANDOM_POOLS),
    )
    window_bos: str | None = option(
        None,
        help="first: the text tokenized once, so only the first window starts with "
        "the tokenizer's BOS; every: each WD and perplexity window starts with it (where "
        "the tokenizer adds one) (default: the protocol's: paper first, strict every)",
        choices=list(WINDOW_BOS),
    )
    pos_unit: str | None = option(
        None,
        help="POS excess surprisal per model token inside the perplexity windows "
        "(tokens, as the official tagging) or per word of --pos-lines corpus lines (words) "
        "(default: the protocol's: paper tokens, strict words)",
        choices=list(POS_UNITS),
    )
    seed: int = option(0, help="seed of the random controls and the benchmark samples")


#: What each protocol chooses where an option is not given (docs/protocol.md has the table).
PROTOCOL_CHOICES: dict[str, dict[str, str]] = {
    "paper": {
        "tse_reduction": "mean",
        "blimp_reduction": "sum",
        "prefix": "auto",
        "npi": "last",
        "random_control": "all",
        "window_bos": "first",
        "pos_unit": "tokens",
    },
    "strict": {
        "tse_reduction": "sum",
        "blimp_reduction": "sum",
        "prefix": "bos",
        "npi": "intrusive",
        "random_control": "non-top",
        "window_bos": "every",
        "pos_unit": "words",
    },
}
#: The official WD text: 256 windows, consecutive windows half a window apart, the train split joined by spaces.
PAPER_WD_WINDOWS = 256
STRICT_WD_TOKENS = 65536
STRICT_PPL_TOKENS = 16384
WD_JOINERS = {"paper": " ", "strict": "\n\n"}


@dataclass(frozen=True)
class Protocol:
    """The concrete scoring and data choices of a run: the protocol's, overridden by any option given."""

    name: str
    tse_reduction: str
    blimp_reduction: str
    prefix: str  # auto | none | bos | a token string
    npi: str  # last | intrusive
    random_control: str  # all | non-top
    window_bos: str  # first | every
    pos_unit: str  # tokens | words
    wd_joiner: str  # how WikiText-2's WD split is joined (the perplexity split: always "\n\n")

    def record(self) -> dict[str, str]:
        """Every resolved choice, for the cube's provenance."""
        return dataclasses.asdict(self)


def resolve_protocol(options: ScoringOptions) -> Protocol:
    """The protocol's choices, each replaced by its option where that option was given.

    Raises:
        UserInputError: an unknown protocol or an empty ``--prefix``.
    """
    if options.protocol not in PROTOCOL_CHOICES:
        raise UserInputError(f"--protocol {options.protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    choices = dict(PROTOCOL_CHOICES[options.protocol])
    for name, accepted in (
        ("tse_reduction", REDUCTIONS),
        ("blimp_reduction", REDUCTIONS),
        ("npi", NPI_RULES),
        ("random_control", RANDOM_POOLS),
        ("window_bos", WINDOW_BOS),
        ("pos_unit", POS_UNITS),
    ):
        value = getattr(options, name)
        if value is not None and value not in accepted:
            raise UserInputError(f"--{name.replace('_', '-')} {value!r}: expected one of {', '.join(accepted)}")
    if options.prefix is not None and not options.prefix.strip():
        raise UserInputError("--prefix '': expected auto, none, bos or a token string")
    for name in choices:
        value = getattr(options, name)
        if value is not None:
            choices[name] = value
    return Protocol(name=options.protocol, wd_joiner=WD_JOINERS[options.protocol], **choices)


def wd_window_count(config: BudgetOptions, protocol: str, window: int) -> int:
    """WD windows to take: ``--wd-tokens // window`` when given, else the protocol's (at least one)."""
    if config.wd_tokens is not None:
        return max(1, config.wd_tokens // window)
    return PAPER_WD_WINDOWS if protocol == "paper" else max(1, STRICT_WD_TOKENS // window)


def wd_stride(config: BudgetOptions, protocol: str, window: int) -> int:
    """Tokens between WD window starts: ``--wd-stride`` when given, else the protocol's."""
    if config.wd_stride is not None:
        return config.wd_stride
    return max(1, window // 2) if protocol == "paper" else window


def ppl_token_budget(config: BudgetOptions, protocol: str) -> int | None:
    """Perplexity tokens: ``--ppl-tokens`` when given, else the protocol's (``None``: the whole split)."""
    if config.ppl_tokens is not None:
        return config.ppl_tokens
    return None if protocol == "paper" else STRICT_PPL_TOKENS


@titled("runtime")
@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    """Options of the part "runtime" (one definition each, shared by every command that uses them)."""

    device: str = option("auto", help="cuda, cuda:N, cpu or auto (CUDA when present)")
    dtype: str = option(
        "auto",
        help="model weights dtype; auto: on CUDA the checkpoint's own (float16 for Pythia; "
        "bfloat16 where float16 overflows), on the CPU float32 (statistics are float32 either way)",
        choices=["auto", *DTYPES],
    )
    threads: int = option(
        0,
        help="torch CPU threads; 0: auto (1 for models under 50M parameters, whose small "
        "ops stall on thread barriers, with batches run side by side on every core and a lone "
        "batch's vocabulary projection on whichever of 1 thread and every core is timed "
        "faster, numbers as on 1 thread; else torch's default)",
    )
    batch_size: int = option(4, help="corpus windows per forward pass")
    memory_budget_gib: float = option(
        0.0,
        help="GiB of pre-activations held at once (decides layers per pass); "
        "0: auto (on CUDA half the device memory free after loading, on the CPU 2)",
    )
    retries: int = option(4, help="attempts per checkpoint download (transient errors back off exponentially)")
    cache_dir: str | None = option(
        None, help="Hugging Face cache directory (default: the hub's own, ~/.cache/huggingface/hub)"
    )


def check_numbers(config: Any, checks: list[tuple[str, bool, str]]) -> None:
    """Raise the first failed check as one line: ``--name VALUE: expected ACCEPTED``."""
    for name, ok, accepted in checks:
        if not ok:
            raise UserInputError(f"--{name} {getattr(config, name.replace('-', '_'))!r}: expected {accepted}")


def shared_checks(config: BudgetOptions | RuntimeOptions | ScoringOptions) -> list[tuple[str, bool, str]]:
    """The range checks of the budget, scoring and runtime options a config carries (name, ok, what is accepted)."""
    checks: list[tuple[str, bool, str]] = []
    if isinstance(config, ScoringOptions):
        checks += [("seed", 0 <= config.seed < 2**32, "a whole number from 0 to 4294967295")]
    if isinstance(config, BudgetOptions):
        checks += [
            ("wd-tokens", config.wd_tokens is None or config.wd_tokens >= 2, "at least 2 tokens"),
            ("wd-stride", config.wd_stride is None or config.wd_stride >= 1, "at least 1 token"),
            ("window", config.window is None or config.window >= 2, "at least 2 tokens"),
            ("tse-per-case", config.tse_per_case >= 0, "0 or more pairs"),
        ]
    if isinstance(config, RuntimeOptions):
        checks += [
            ("retries", config.retries >= 1, "at least 1"),
            (
                "memory-budget-gib",
                math.isfinite(config.memory_budget_gib) and config.memory_budget_gib >= 0,
                "0 (auto) or a positive, finite number of GiB",
            ),
            ("batch-size", config.batch_size >= 1, "at least 1"),
            ("threads", 0 <= config.threads <= MAX_THREADS, f"0 (auto) or 1 to {MAX_THREADS}"),
        ]
    return checks


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
    """The option parts ``cls`` is composed of, in the order of its bases."""
    return [base for base in cls.__mro__[1:] if dataclasses.is_dataclass(base)]


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
    return {
        k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
        for k, v in dataclasses.asdict(config).items()
    }
