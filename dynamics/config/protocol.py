"""The scoring protocol of a run (``--protocol paper|strict``, overridden option by option) and the
budgets each protocol picks where an option is not given (docs/protocol.md has the table)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dynamics.config.parts import (
    NPI_RULES,
    POS_UNITS,
    PROTOCOLS,
    RANDOM_POOLS,
    REDUCTIONS,
    WINDOW_BOS,
    BudgetOptions,
    ScoringOptions,
)
from dynamics.errors import UserInputError

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
